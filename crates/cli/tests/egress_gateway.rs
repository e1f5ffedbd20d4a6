//! The egress gateway (docs/egress.md, "Egress gateway"), as Istio's "Egress Gateways with TLS
//! Origination" task and the seed's option 1b lay it out: two apps behind sidecars (namespaces
//! `team-a` and `team-b`), an egress gateway workload (`istio: egressgateway`), and real nginx
//! servers on loopback with certificates from a test CA, one of them requiring a client
//! certificate. The app speaks plain HTTP to `api.example.com`; its sidecar sends the request to
//! the gateway over HBONE (mTLS, the app's SPIFFE id); the gateway's AuthorizationPolicy admits
//! namespace `team-a` only; the gateway originates TLS to nginx as the DestinationRule it sees
//! says (SIMPLE, or MUTUAL with a `credentialName` Secret in the gateway's namespace).
//!
//! Also a `TCP` server on the gateway reached over HBONE (allowed and denied at L4), the
//! forward proxy's origination for absolute-form requests (`curl -x`), and the hot switch from
//! STRICT to PERMISSIVE, under which the path works the same.
//!
//! Needs nginx and curl; otherwise prints `SKIPPED` (a failure under `WARD_E2E_REQUIRE_ALL=1`).
//! Addresses: 127.1.170.0/24.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rcgen::ExtendedKeyUsagePurpose;
use ward_test_support::ca::{indent, write_file, Ca};
use ward_test_support::{curl, free_port, have, skip_or_fail, Nginx, UpOptions, Ward};

const APP_A: &str = "127.1.170.1";
const APP_B: &str = "127.1.170.2";
const GATEWAY: &str = "127.1.170.3";
const SERVER: &str = "127.1.170.10";
const MTLS_SERVER: &str = "127.1.170.11";
const TCP_SERVER: &str = "127.1.170.12";

fn peer_authentication(mode: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
         metadata: {{name: default, namespace: istio-system}}\nspec: {{mtls: {{mode: {mode}}}}}\n"
    )
}

/// An app workload whose Sidecar gives it an HTTP listener on `<ip>:80` for every service on
/// port 80 and the forward proxy on `<ip>:15080`.
fn app(name: &str, ns: &str, ip: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec: {{address: {ip}, serviceAccount: {name}, labels: {{app: {name}}}}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec:\n  workloadSelector: {{labels: {{app: {name}}}}}\n  egress:\n  \
         - port: {{number: 80, name: http, protocol: HTTP}}\n    bind: {ip}\n    hosts: [\"*/*\"]\n  \
         - port: {{number: 15080, name: http-proxy, protocol: HTTP_PROXY}}\n    bind: {ip}\n    hosts: [\"*/*\"]\n  \
         - port: {{number: 9000, name: tcp, protocol: TCP}}\n    bind: {ip}\n    hosts: [\"istio-system/*\"]\n---\n"
    )
}

/// The layout of Istio's egress-gateway TLS-origination task, in `istio-system`.
fn mesh(ca_file: &str, client_cert: &str, client_key: &str, ca_pem: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: istio-egressgateway, namespace: istio-system}}
spec: {{address: {GATEWAY}, serviceAccount: istio-egressgateway, labels: {{istio: egressgateway}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: istio-egressgateway, namespace: istio-system}}
spec:
  hosts: [istio-egressgateway.istio-system.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}, {{number: 9000, name: tcp, protocol: TCP}}]
  workloadSelector: {{labels: {{istio: egressgateway}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: istio-system}}
spec:
  hosts: [api.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports:
  - {{number: 80, name: http, protocol: HTTP}}
  - {{number: 443, name: https, protocol: HTTPS, targetPort: 8443}}
  endpoints: [{{address: {SERVER}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: mtls, namespace: istio-system}}
spec:
  hosts: [mtls.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports:
  - {{number: 80, name: http, protocol: HTTP}}
  - {{number: 443, name: https, protocol: HTTPS, targetPort: 8443}}
  endpoints: [{{address: {MTLS_SERVER}}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: istio-egressgateway, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 80, name: https-port-for-tls-origination, protocol: HTTPS}}
    hosts: [api.example.com, mtls.example.com]
    tls: {{mode: ISTIO_MUTUAL}}
---
# A TCP server on the gateway: an opaque stream to a registered TCP service.
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: tcp-egress, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 9000, name: tcp, protocol: TCP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: tcp-ext, namespace: istio-system}}
spec:
  hosts: [tcp.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: tcp, protocol: TCP}}]
  endpoints: [{{address: {TCP_SERVER}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: tcp-ext, namespace: istio-system}}
spec:
  hosts: ["*"]
  gateways: [tcp-egress]
  tcp: [{{route: [{{destination: {{host: tcp.example.com, port: {{number: 9080}}}}}}]}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: egressgateway-for-api, namespace: istio-system}}
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  subsets:
  - name: api
    trafficPolicy:
      portLevelSettings:
      - port: {{number: 80}}
        tls: {{mode: ISTIO_MUTUAL, sni: api.example.com}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: direct-api-through-egress-gateway, namespace: istio-system}}
spec:
  hosts: [api.example.com]
  gateways: [istio-egressgateway, mesh]
  http:
  - match: [{{gateways: [mesh], port: 80}}]
    route:
    - destination: {{host: istio-egressgateway.istio-system.svc.cluster.local, subset: api, port: {{number: 80}}}}
      weight: 100
  - match: [{{gateways: [istio-egressgateway], port: 80, uri: {{prefix: /legacy}}}}]
    route: [{{destination: {{host: legacy.example.com, port: {{number: 443}}}}}}]
  - match: [{{gateways: [istio-egressgateway], port: 80}}]
    route:
    - destination: {{host: api.example.com, port: {{number: 443}}}}
      weight: 100
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: direct-mtls-through-egress-gateway, namespace: istio-system}}
spec:
  hosts: [mtls.example.com]
  gateways: [istio-egressgateway, mesh]
  http:
  - match: [{{gateways: [mesh], port: 80}}]
    route: [{{destination: {{host: istio-egressgateway.istio-system.svc.cluster.local, port: {{number: 80}}}}}}]
  - match: [{{gateways: [istio-egressgateway], port: 80}}]
    route: [{{destination: {{host: mtls.example.com, port: {{number: 443}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: originate-tls-for-api, namespace: istio-system}}
spec:
  host: api.example.com
  trafficPolicy:
    portLevelSettings:
    - port: {{number: 443}}
      tls: {{mode: SIMPLE, caCertificates: {ca_file}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: originate-mtls-for-mtls, namespace: istio-system}}
spec:
  host: mtls.example.com
  trafficPolicy:
    portLevelSettings:
    - port: {{number: 443}}
      tls: {{mode: MUTUAL, credentialName: client-credential, sni: mtls.example.com}}
---
apiVersion: v1
kind: Secret
metadata: {{name: client-credential, namespace: istio-system}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
    {}
  tls.key: |
    {}
  ca.crt: |
    {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: egress-team-a-only, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: egressgateway}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{namespaces: [team-a]}}}}]
    to: [{{operation: {{hosts: [api.example.com, "api.example.com:*", mtls.example.com, "mtls.example.com:*"]}}}}]
  - from: [{{source: {{namespaces: [team-a]}}}}]
    to: [{{operation: {{ports: ["9000"]}}}}]
---
# Forward-proxy origination: plain HTTP to port 80 through `curl -x`, TLS to nginx on 8443.
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: direct, namespace: team-a}}
spec:
  hosts: [direct.example.com]
  exportTo: ["."]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8443}}]
  endpoints: [{{address: {SERVER}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: direct, namespace: team-a}}
spec:
  host: direct.example.com
  trafficPolicy:
    tls: {{mode: SIMPLE, caCertificates: {ca_file}, sni: api.example.com}}
"#,
        indent(client_cert),
        indent(client_key),
        indent(ca_pem),
    )
}

fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// `curl http://<host><path>` from an app, through its sidecar's listener on `<app>:80`.
fn get(app: &str, host: &str, path: &str) -> (u16, String) {
    curl(&[
        "--resolve",
        &format!("{host}:80:{app}"),
        &format!("http://{host}{path}"),
    ])
}

fn metrics(ward: &Ward) -> String {
    ward_test_support::http_get(ward.admin, "/metrics")
        .unwrap()
        .1
}

#[test]
fn egress_gateway_originates_tls_and_admits_by_namespace() {
    for program in ["nginx", "curl"] {
        if !have(program) {
            return skip_or_fail("egress_gateway", &format!("{program} is not installed"));
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ca = Ca::new("egress gateway test CA");
    let (server_cert, server_key) =
        ca.issue("api.example.com", 10, ExtendedKeyUsagePurpose::ServerAuth);
    let (mtls_cert, mtls_key) =
        ca.issue("mtls.example.com", 11, ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) = ca.issue(
        "egress-gateway-client",
        20,
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let ca_file = write_file(dir, "ca.pem", &ca.pem);
    let s_cert = write_file(dir, "server.pem", &server_cert);
    let s_key = write_file(dir, "server.key", &server_key);
    let m_cert = write_file(dir, "mtls.pem", &mtls_cert);
    let m_key = write_file(dir, "mtls.key", &mtls_key);
    let servers = format!(
        "server {{\n    listen {SERVER}:8443 ssl;\n    ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_certificate {s_cert};\n    ssl_certificate_key {s_key};\n    \
         location / {{ default_type text/plain; return 200 \"simple $ssl_protocol $request_uri\\n\"; }}\n  }}\n  \
         server {{\n    listen {MTLS_SERVER}:8443 ssl;\n    ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_certificate {m_cert};\n    ssl_certificate_key {m_key};\n    \
         ssl_client_certificate {ca_file};\n    ssl_verify_client on;\n    \
         location / {{ default_type text/plain; return 200 \"mtls $ssl_protocol client=$ssl_client_s_dn\\n\"; }}\n  }}\n  \
         server {{\n    listen {TCP_SERVER}:9080;\n    location / {{ default_type text/plain; return 200 \"tcp $request_uri\\n\"; }}\n  }}\n"
    );
    let nginx = Nginx::start_servers(&servers, format!("{SERVER}:8443").parse().unwrap()).unwrap();

    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let ward = Ward::up(UpOptions {
        bin: env!("CARGO_BIN_EXE_ward"),
        admin,
        files: vec![
            ("00-peer-authentication.yaml", peer_authentication("STRICT")),
            (
                "10-apps.yaml",
                format!(
                    "{}{}",
                    app("app-a", "team-a", APP_A),
                    app("app-b", "team-b", APP_B)
                ),
            ),
            (
                "20-egress.yaml",
                mesh(&ca_file, &client_cert, &client_key, &ca.pem),
            ),
        ],
        extra_args: vec![],
        env: vec![],
    })
    .unwrap();

    // app-a -> sidecar -> (HBONE) gateway -> (TLS originated) nginx.
    let (status, body) = get(APP_A, "api.example.com", "/hello");
    assert_eq!(
        (status, body.trim()),
        (200, "simple TLSv1.3 /hello"),
        "{}",
        ward.logs()
    );
    // The gateway's access line names the source principal, carried over mTLS.
    let line = ward
        .wait_for_log(
            &[
                ("direction", "gateway"),
                (
                    "source.principal",
                    "spiffe://cluster.local/ns/team-a/sa/app-a",
                ),
                ("response_code", "200"),
            ],
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(
        line["gateway"], "istio-system/istio-egressgateway",
        "{line}"
    );
    assert_eq!(line["source.namespace"], "team-a", "{line}");
    assert_eq!(line["dst.service"], "api.example.com", "{line}");
    // The gateway's upstream connection originated TLS.
    let conn = ward
        .wait_for_log(
            &[
                ("dst.service", "api.example.com"),
                ("direction", "outbound"),
                ("ward.reason", "tls_originated"),
            ],
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(
        conn["src.identity"], "spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway",
        "{conn}"
    );
    // The sidecar reached the gateway over HBONE as itself.
    let hop = ward
        .wait_for_log(
            &[
                ("direction", "outbound"),
                (
                    "dst.service",
                    "istio-egressgateway.istio-system.svc.cluster.local",
                ),
            ],
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(
        hop["src.identity"], "spiffe://cluster.local/ns/team-a/sa/app-a",
        "{hop}"
    );
    assert_eq!(
        hop["dst.identity"], "spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway",
        "{hop}"
    );

    // MUTUAL at the gateway, with the Secret in the gateway's namespace: nginx saw the client
    // certificate.
    let (status, body) = get(APP_A, "mtls.example.com", "/");
    assert_eq!(status, 200, "{body}\n{}", ward.logs());
    assert!(body.contains("CN=egress-gateway-client"), "{body}");

    // team-b is not admitted by the gateway's policy: 403, recorded as blocked egress.
    let (status, body) = get(APP_B, "api.example.com", "/hello");
    assert_eq!(
        (status, body.trim()),
        (403, "RBAC: access denied"),
        "{}",
        ward.logs()
    );
    let denied = ward
        .wait_for_log(
            &[
                ("direction", "gateway"),
                (
                    "source.principal",
                    "spiffe://cluster.local/ns/team-b/sa/app-b",
                ),
                ("response_code", "403"),
            ],
            Duration::from_secs(5),
        )
        .unwrap();
    let details = denied["response_code_details"].as_str().unwrap();
    assert!(details.starts_with("rbac_access_denied"), "{denied}");
    let text = metrics(&ward);
    let blocked = "ward_egress_blocked_total{source_workload=\"team-b/app-b\",source_namespace=\"team-b\",host=\"api.example.com\",port=\"80\",protocol=\"http\"} 1";
    assert!(text.contains(blocked), "{blocked}\n{text}");
    assert!(
        nginx.access_log().lines().all(|l| !l.contains("team-b")),
        "nothing of team-b's reached the server"
    );
    // And in the gateway's audit trail, with the caller's identity.
    let trail = ward
        .state_dir()
        .join("audit/istio-system/istio-egressgateway");
    let audited = wait_for(Duration::from_secs(5), || {
        let text: String = std::fs::read_dir(&trail)
            .ok()?
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .collect();
        text.lines()
            .any(|l| l.contains("spiffe://cluster.local/ns/team-b/sa/app-b") && l.contains("deny"))
            .then_some(())
    });
    assert!(
        audited.is_some(),
        "no audit record of the denial in {trail:?}"
    );

    // A gateway route to a host no ServiceEntry declares: refused and recorded.
    let (status, _) = get(APP_A, "api.example.com", "/legacy");
    assert_eq!(status, 503);
    let line = ward
        .wait_for_log(
            &[
                ("direction", "gateway"),
                ("requested.host", "legacy.example.com"),
            ],
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(line["dst.service"], "BlackHoleCluster", "{line}");
    assert_eq!(line["response_flags"], "NC", "{line}");
    let text = metrics(&ward);
    // (The sidecar retried the 503, as Istio's default retry policy does: each attempt counts.)
    assert!(
        text.contains("ward_egress_blocked_total{source_workload=\"team-a/app-a\",source_namespace=\"team-a\",host=\"legacy.example.com\",port=\"80\",protocol=\"http\"}"),
        "{text}"
    );

    // The sidecar's own REGISTRY_ONLY: an unregistered host through the forward proxy is 502.
    let proxy = format!("http://{APP_A}:15080");
    let (status, _) = curl(&["-x", &proxy, "http://unknown.example.com/"]);
    assert_eq!(status, 502);

    // The forward proxy originates TLS for an absolute-form request, as the egress listener
    // does (DestinationRule `tls` on the port the URI names).
    let (status, body) = curl(&["-x", &proxy, "http://direct.example.com/via-proxy"]);
    assert_eq!(
        (status, body.trim()),
        (200, "simple TLSv1.3 /via-proxy"),
        "{}",
        ward.logs()
    );
    let line = ward
        .wait_for_log(
            &[
                ("dst.service", "direct.example.com"),
                ("ward.reason", "tls_originated"),
            ],
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(line["requested.from"], "uri", "{line}");

    // A TCP server on the gateway, over HBONE: team-a's stream reaches the TCP service, team-b's
    // is refused at the connection (the gateway's policy at L4).
    let (status, body) = curl(&[&format!("http://{APP_A}:9000/tcp")]);
    assert_eq!((status, body.trim()), (200, "tcp /tcp"), "{}", ward.logs());
    let (status, _) = curl(&[&format!("http://{APP_B}:9000/tcp")]);
    assert_eq!(status, 0, "team-b's TCP stream must not get through");
    let refused = ward
        .wait_for_log(
            &[
                ("direction", "inbound"),
                ("src.identity", "spiffe://cluster.local/ns/team-b/sa/app-b"),
                ("dst.addr", "127.1.170.3:9000"),
            ],
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(refused["response_flags"], "DENY", "{refused}");

    // PERMISSIVE (the seed's other mode): the same path, the same decisions.
    ward.write_config(
        "00-peer-authentication.yaml",
        &peer_authentication("PERMISSIVE"),
    )
    .unwrap();
    ward.wait_for_log(
        &[("message", "config change applied")],
        Duration::from_secs(15),
    )
    .unwrap();
    let ok = wait_for(Duration::from_secs(10), || {
        let (status, body) = get(APP_A, "api.example.com", "/permissive");
        (status == 200 && body.contains("/permissive")).then_some(())
    });
    assert!(ok.is_some(), "{}", ward.logs());
    assert_eq!(get(APP_B, "api.example.com", "/").0, 403);
}

/// `examples/egress-gateway/`, run as the README shows it: `ward up -f examples/egress-gateway/`,
/// then `examples/egress-gateway/try.sh` (which starts the lab's nginx itself).
#[test]
fn the_egress_gateway_example_admits_the_clinic_only() {
    for program in ["nginx", "curl", "openssl"] {
        if !have(program) {
            return skip_or_fail("egress_gateway_example", &format!("needs {program}"));
        }
    }
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let dir = format!("{root}/examples/egress-gateway");
    // The analyzer knows the gateway serves its Gateway server over HBONE: no finding (a
    // sidecar "sending to a port nobody serves", a workload "serving no port").
    let analyzed = std::process::Command::new(env!("CARGO_BIN_EXE_ward"))
        .args(["analyze", "-f", &dir])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&analyzed.stdout);
    assert_eq!(
        report.trim(),
        "0 error(s), 0 other finding(s)",
        "{}",
        String::from_utf8_lossy(&analyzed.stderr)
    );
    let files = ward_test_support::yaml_files(&dir);
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let ward = Ward::up(UpOptions {
        bin: env!("CARGO_BIN_EXE_ward"),
        admin,
        files: files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect(),
        extra_args: vec![],
        env: vec![],
    })
    .unwrap();
    let out = std::process::Command::new("bash")
        .arg(format!("{dir}/try.sh"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let want = [
        (
            "records (clinic) -> lab.example.com: ",
            "200 lab: TLSv1.3, client CN=client",
        ),
        (
            "analytics (research) -> lab.example.com: ",
            "403 RBAC: access denied",
        ),
        ("records (clinic) -> other.example.com: ", "404"),
    ];
    for (prefix, answer) in want {
        let line = text
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` line:\n{text}"));
        assert!(
            line[prefix.len()..].starts_with(answer),
            "{line}\n{}",
            ward.logs()
        );
    }
    ward.wait_for_log(
        &[
            ("direction", "gateway"),
            (
                "source.principal",
                "spiffe://cluster.local/ns/research/sa/analytics",
            ),
            ("response_code", "403"),
        ],
        Duration::from_secs(5),
    )
    .unwrap();
}
