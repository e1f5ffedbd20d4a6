# The `ward` image: one static binary (musl), nothing else.
#
#   docker build -t ward .                          # control plane and sidecars (scratch)
#   docker build --target capture -t ward-capture . # the injected capture init container
#
# The capture init container (`istio-init` in injected pods) runs `ward proxy --capture-init`,
# which installs the capture rules with `iptables-restore`: its image adds iptables, the
# others have nothing but the binary and CA certificates. Not built by the tests
# (docs/kubernetes.md, "Install").

FROM rust:1.89-alpine AS build
RUN apk add --no-cache musl-dev cmake make perl clang git
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ward --target x86_64-unknown-linux-musl \
 && cp target/x86_64-unknown-linux-musl/release/ward /ward

# The capture init container: the same binary with iptables (nf_tables and legacy).
FROM alpine:3.22 AS capture
RUN apk add --no-cache iptables ip6tables
COPY --from=build /ward /usr/local/bin/ward
USER 0
ENTRYPOINT ["/usr/local/bin/ward"]

# Control plane and sidecars: the binary, CA certificates for the API server and JWKS, no shell.
FROM scratch AS ward
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /ward /ward
# Istio's proxy user; the control plane's Deployment runs as it too.
USER 1337:1337
ENTRYPOINT ["/ward"]
