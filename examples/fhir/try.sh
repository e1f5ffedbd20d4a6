#!/usr/bin/env bash
# The seed's Alice/Bob flow, against `ward up -f examples/fhir/` and `ward dev-idp` running in
# two other terminals. Prints one line per step with the HTTP status Ward answered.
set -u
IDP=http://127.0.0.1:8180/realms/ward-dev/protocol/openid-connect/token
FHIR=http://127.0.20.1:8080/fhir/Patient   # the client workload's egress listener

token() { # user password → access token (Keycloak's password grant)
  curl -s "$IDP" -d grant_type=password -d client_id=fhir -d "username=$1" --data-urlencode "password=$2" \
    | sed -E 's/.*"access_token":"([^"]+)".*/\1/'
}
status() { curl -s -o /dev/null -w '%{http_code}' "$@"; }

ALICE=$(token alice 'alice1234!')   # role Patient
BOB=$(token bob 'bob1234!')         # role Medic
TAMPERED=$(printf '%s' "$ALICE" | sed -E 's/\.[^.]*$/.AAAA/')   # same claims, forged signature
PATIENT='{"resourceType":"Patient","name":[{"family":"Doe"}]}'

echo "GET  as Alice (Patient): $(status -H "Authorization: Bearer $ALICE" "$FHIR")"
echo "POST as Alice (Patient): $(status -X POST -H "Authorization: Bearer $ALICE" -H 'Content-Type: application/fhir+json' -d "$PATIENT" "$FHIR")"
echo "POST as Bob (Medic):     $(status -X POST -H "Authorization: Bearer $BOB" -H 'Content-Type: application/fhir+json' -d "$PATIENT" "$FHIR")"
echo "GET  without a token:    $(status "$FHIR")"
echo "GET  with a forged token: $(status -H "Authorization: Bearer $TAMPERED" "$FHIR")"
