#!/usr/bin/env bash
# The FHIR API through the ingress gateway, against `ward up -f examples/ingress/` and
# `ward dev-idp` running in two other terminals. Makes the gateway's certificate (a throwaway CA
# in /tmp/ward-ingress-example; the gateway picks the files up at the next connection), then
# prints one line per step with the HTTP status Ward answered.
set -u
DIR=/tmp/ward-ingress-example
IDP=http://127.0.0.1:8180/realms/ward-dev/protocol/openid-connect/token
GW=127.140.100.1
HOST=fhir.example.local
FHIR=https://$HOST:8443/fhir/Patient

mkdir -p "$DIR"
if [ ! -s "$DIR/fhir.crt" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=ward-example-ca \
    -keyout "$DIR/ca.key" -out "$DIR/ca.crt" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$HOST" \
    -keyout "$DIR/fhir.key.new" -out "$DIR/fhir.csr" 2>/dev/null
  openssl x509 -req -in "$DIR/fhir.csr" -CA "$DIR/ca.crt" -CAkey "$DIR/ca.key" -days 30 \
    -extfile <(printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth\n' "$HOST") \
    -out "$DIR/fhir.crt.new" 2>/dev/null
  mv "$DIR/fhir.key.new" "$DIR/fhir.key"
  mv "$DIR/fhir.crt.new" "$DIR/fhir.crt"
fi

token() { # user password → access token (Keycloak's password grant)
  curl -s "$IDP" -d grant_type=password -d client_id=fhir -d "username=$1" --data-urlencode "password=$2" \
    | sed -E 's/.*"access_token":"([^"]+)".*/\1/'
}
status() { curl -s -o /dev/null -w '%{http_code}' --resolve "$HOST:8443:$GW" --resolve "$HOST:8080:$GW" \
  --cacert "$DIR/ca.crt" "$@"; }

ALICE=$(token alice 'alice1234!')   # role Patient
BOB=$(token bob 'bob1234!')         # role Medic
TAMPERED=$(printf '%s' "$ALICE" | sed -E 's/\.[^.]*$/.AAAA/')   # same claims, forged signature
PATIENT='{"resourceType":"Patient","name":[{"family":"Doe"}]}'

echo "served certificate:       $(openssl s_client -connect $GW:8443 -servername $HOST </dev/null 2>/dev/null | grep '^subject=')"
echo "http:// (httpsRedirect):  $(status "http://$HOST:8080/fhir/Patient")"
echo "GET  as Alice (Patient):  $(status -H "Authorization: Bearer $ALICE" "$FHIR")"
echo "POST as Alice (Patient):  $(status -X POST -H "Authorization: Bearer $ALICE" -H 'Content-Type: application/fhir+json' -d "$PATIENT" "$FHIR")"
echo "POST as Bob (Medic):      $(status -X POST -H "Authorization: Bearer $BOB" -H 'Content-Type: application/fhir+json' -d "$PATIENT" "$FHIR")"
echo "GET  without a token:     $(status "$FHIR")"
echo "GET  with a forged token: $(status -H "Authorization: Bearer $TAMPERED" "$FHIR")"
echo "GET  an unrouted path:    $(status -H "Authorization: Bearer $BOB" "https://$HOST:8443/admin")"
