#!/usr/bin/env bash
# OpenEMR's egress allow-list, against `ward up -f examples/egress/` running in another
# terminal (admin on $ADMIN, default 127.0.0.1:15000). Starts local stand-ins for quay.io
# (TLS), docker.io and open-emr.org (HTTP), then asks for allowed and unapproved hosts through
# OpenEMR's sidecar forward proxy and prints what Ward answered, then the blocked-egress
# counter. Each refusal is also an access-log line in Ward's terminal (BlackHoleCluster).
set -u
PROXY=http://127.131.10.1:15080
ADMIN=${ADMIN:-127.0.0.1:15000}
tmp=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

# Stand-ins: a TLS server with a certificate for quay.io, and two HTTP servers.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=quay.io \
  -addext subjectAltName=DNS:quay.io -keyout "$tmp/quay.key" -out "$tmp/quay.crt" 2>/dev/null
openssl s_server -quiet -www -accept 127.131.10.2:8443 -cert "$tmp/quay.crt" -key "$tmp/quay.key" \
  </dev/null >/dev/null 2>&1 & pids+=($!)
mkdir -p "$tmp/docker/v2" "$tmp/open-emr"
echo "docker.io stand-in" >"$tmp/docker/v2/index.html"
echo "open-emr.org stand-in" >"$tmp/open-emr/index.html"
python3 -m http.server 8080 --bind 127.131.10.3 -d "$tmp/docker" >/dev/null 2>&1 & pids+=($!)
python3 -m http.server 8080 --bind 127.131.10.4 -d "$tmp/open-emr" >/dev/null 2>&1 & pids+=($!)
for addr in 127.131.10.2/8443 127.131.10.3/8080 127.131.10.4/8080; do
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/${addr%/*}/${addr#*/}") 2>/dev/null && break; sleep 0.1; done
done

code() { curl -s -o /dev/null --max-time 10 -x "$PROXY" -w '%{http_code}' "$@"; }
tunnel() { curl -s -o /dev/null --max-time 10 -x "$PROXY" -w '%{http_connect}' "$@"; }

echo "allowed  https://quay.io/                 : $(code --cacert "$tmp/quay.crt" https://quay.io/)"
echo "allowed  http://registry-1.docker.io/v2/  : $(code http://registry-1.docker.io/v2/)"
echo "allowed  http://open-emr.org/             : $(code http://open-emr.org/)"
echo "blocked  https://exfil.example.net/ (CONNECT): $(tunnel https://exfil.example.net/)"
echo "blocked  http://pastebin.com/             : $(code http://pastebin.com/)"
echo "blocked  open-emr.org with Host: pastebin.com: $(code -H 'Host: pastebin.com' http://open-emr.org/)"
echo
echo "blocked attempts on record (ward_egress_blocked_total):"
curl -s "http://$ADMIN/metrics" | grep '^ward_egress_blocked_total'
