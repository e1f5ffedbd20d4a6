#!/usr/bin/env bash
# The egress gateway example, against `ward up -f examples/egress-gateway/` running in another
# terminal. Makes a throwaway CA, the lab's server certificate and the gateway's client
# certificate in /tmp/ward-egress-gateway-example, starts the "lab" (Debian's nginx on
# 127.1.175.10:8443, requiring a client certificate from that CA), then prints what each app
# gets for http://lab.example.com/ and stops nginx.
set -u
DIR=/tmp/ward-egress-gateway-example
LAB=127.1.175.10

mkdir -p "$DIR"
if [ ! -s "$DIR/client.crt" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=ward-example-lab-ca \
    -keyout "$DIR/ca.key" -out "$DIR/ca.crt" 2>/dev/null
  issue() { # name, extensions → $DIR/<name>.{key,crt}
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
      -keyout "$DIR/$1.key" -out "$DIR/$1.csr" 2>/dev/null
    openssl x509 -req -in "$DIR/$1.csr" -CA "$DIR/ca.crt" -CAkey "$DIR/ca.key" -days 30 \
      -extfile <(printf '%s\n' "$2") -out "$DIR/$1.crt" 2>/dev/null
  }
  issue lab.example.com $'subjectAltName=DNS:lab.example.com\nextendedKeyUsage=serverAuth'
  issue client 'extendedKeyUsage=clientAuth'
fi

cat > "$DIR/nginx.conf" <<CONF
daemon off; master_process off; pid $DIR/nginx.pid; error_log $DIR/error.log;
events { worker_connections 64; }
http {
  access_log $DIR/access.log;
  client_body_temp_path $DIR/body; proxy_temp_path $DIR/proxy; fastcgi_temp_path $DIR/fcgi;
  uwsgi_temp_path $DIR/uwsgi; scgi_temp_path $DIR/scgi;
  server {
    listen $LAB:8443 ssl; ssl_protocols TLSv1.2 TLSv1.3;
    ssl_certificate $DIR/lab.example.com.crt; ssl_certificate_key $DIR/lab.example.com.key;
    ssl_client_certificate $DIR/ca.crt; ssl_verify_client on;
    location / { default_type text/plain; return 200 "lab: \$ssl_protocol, client \$ssl_client_s_dn\n"; }
  }
}
CONF
nginx -c "$DIR/nginx.conf" -p "$DIR" &
NGINX=$!
trap 'kill $NGINX 2>/dev/null' EXIT
for _ in $(seq 50); do (exec 3<>/dev/tcp/$LAB/8443) 2>/dev/null && break; sleep 0.1; done

get() { # app address, host → "<status> <body>"
  local code
  code=$(curl -s -o "$DIR/answer" -w '%{http_code}' --max-time 10 --resolve "$2:80:$1" "http://$2/results")
  echo "$code $(tr -d '\n' < "$DIR/answer")"
}
echo "records (clinic) -> lab.example.com: $(get 127.1.175.1 lab.example.com)"        # 200 lab: TLSv1.3, client CN=client
echo "analytics (research) -> lab.example.com: $(get 127.1.175.2 lab.example.com)"    # 403 RBAC: access denied
echo "records (clinic) -> other.example.com: $(get 127.1.175.1 other.example.com)"    # 404: no such host for the sidecar
