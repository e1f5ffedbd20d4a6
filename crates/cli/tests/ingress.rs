//! End to end: the ingress gateway (docs/ingress.md). `ward up` runs the WorkloadEntry that a
//! Gateway selects (`istio: ingressgateway`) as a gateway on 127.140.<block>.1; real curl and
//! `openssl s_client` reach it by SNI with `--resolve`, and it forwards into the mesh over HBONE
//! to `web` (127.140.<block>.10, an app that echoes what it received) and `tlsapp`
//! (127.140.<block>.11, an `openssl s_server` doing its own TLS, for PASSTHROUGH).
//!
//! Servers of the Gateway `istio-system/edge`:
//! - 8080 HTTP `*`; 8081 HTTP `*` with `httpsRedirect`;
//! - 8443 HTTPS SIMPLE: `a.example.com` (credentialName, a Secret) and `b.example.com`
//!   (serverCertificate/privateKey files, rewritten to test reload);
//! - 9443 HTTPS MUTUAL `m.example.com` (credentialName with `ca.crt`);
//! - 9444 TLS PASSTHROUGH `pass.example.com`;
//! - 9445 HTTPS SIMPLE `bad.example.com` whose Secret does not exist.
//!
//! Needs curl and openssl; otherwise prints `SKIPPED` (a failure under `WARD_E2E_REQUIRE_ALL=1`).
#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose};
mod edge_common;
use edge_common::{backend, gateway_mesh, start_app, GATEWAY_HEAD};
use ward_test_support::ca::{indent, write_file, Ca};
use ward_test_support::{free_port, have, skip_or_fail, UpOptions, Ward};

const ISS: &str = "https://idp.example.test/realms/ward";

fn tls_secret(name: &str, cert: &str, key: &str, ca: Option<&str>) -> String {
    let ca = ca
        .map(|c| format!("  ca.crt: |\n    {}\n", indent(c)))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: istio-system}}\ntype: kubernetes.io/tls\n\
         stringData:\n  tls.crt: |\n    {}\n  tls.key: |\n    {}\n{ca}---\n",
        indent(cert),
        indent(key),
    )
}

/// An ES256 signing key and its JWK.
struct Signer(EcdsaKeyPair);

impl Signer {
    fn new() -> Signer {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        Signer(EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap())
    }
    fn jwks(&self) -> String {
        let p = self.0.public_key().as_ref();
        serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "alg": "ES256", "kid": "k1",
            "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..65])}]})
        .to_string()
    }
    fn token(&self, sub: &str) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": "k1"});
        let claims = serde_json::json!({"iss": ISS, "sub": sub, "iat": now, "exp": now + 300});
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = self.0.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        format!("{input}.{}", B64.encode(sig.as_ref()))
    }
}

/// `openssl s_server -www` with the certificate of `pass.example.com`: the backend of the
/// PASSTHROUGH server, doing its own TLS.
struct TlsBackend(Child);

impl Drop for TlsBackend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_tls_backend(port: u16, cert: &str, key: &str) -> TlsBackend {
    let child = Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-cert", cert, "-key", key])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "openssl s_server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    TlsBackend(child)
}

struct Edge {
    ward: Ward,
    gw: String,
    certs: PathBuf,
    ca: Ca,
    client: (String, String),
    signer: Signer,
    _tls_backend: TlsBackend,
    _dir: tempfile::TempDir,
}

fn up(block: u8) -> Option<Edge> {
    for tool in ["curl", "openssl"] {
        if !have(tool) {
            skip_or_fail(
                "ingress",
                &format!("{tool} is needed (apt-get install {tool})"),
            );
            return None;
        }
    }
    let ip = |n: u8| format!("127.140.{block}.{n}");
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().to_path_buf();
    let ca = Ca::new("edge test CA");
    let client_ca = Ca::new("client CA");
    let (a_cert, a_key) = ca.issue("a.example.com", 1, ExtendedKeyUsagePurpose::ServerAuth);
    let (b_cert, b_key) = ca.issue("b.example.com", 2, ExtendedKeyUsagePurpose::ServerAuth);
    let (m_cert, m_key) = ca.issue("m.example.com", 3, ExtendedKeyUsagePurpose::ServerAuth);
    let (p_cert, p_key) = ca.issue("pass.example.com", 4, ExtendedKeyUsagePurpose::ServerAuth);
    let client = client_ca.issue("edge-client", 5, ExtendedKeyUsagePurpose::ClientAuth);
    write_file(&certs, "ca.pem", &ca.pem);
    let client = (
        write_file(&certs, "client.pem", &client.0),
        write_file(&certs, "client-key.pem", &client.1),
    );
    let b_cert_file = write_file(&certs, "b.pem", &b_cert);
    let b_key_file = write_file(&certs, "b-key.pem", &b_key);
    let p_cert_file = write_file(&certs, "pass.pem", &p_cert);
    let p_key_file = write_file(&certs, "pass-key.pem", &p_key);
    let (app_port, _) = start_app();
    let tls_port = free_port();
    let tls_backend = start_tls_backend(tls_port, &p_cert_file, &p_key_file);
    let signer = Signer::new();

    let mut yaml = gateway_mesh(&ip(1));
    yaml += &backend("web", &ip(10), 8080, "HTTP", app_port);
    yaml += &backend("tlsapp", &ip(11), 8443, "TCP", tls_port);
    yaml += &tls_secret("a-cred", &a_cert, &a_key, None);
    yaml += &tls_secret("m-cred", &m_cert, &m_key, Some(&client_ca.pem));
    yaml += GATEWAY_HEAD;
    yaml += &format!(
        r#"  - port: {{number: 8080, name: http, protocol: HTTP}}
    hosts: ["*"]
  - port: {{number: 8081, name: http-redirect, protocol: HTTP}}
    hosts: ["*"]
    tls: {{httpsRedirect: true}}
  - port: {{number: 8443, name: https-a, protocol: HTTPS}}
    hosts: [app/a.example.com]
    tls: {{mode: SIMPLE, credentialName: a-cred}}
  - port: {{number: 8443, name: https-b, protocol: HTTPS}}
    hosts: [b.example.com]
    tls: {{mode: SIMPLE, serverCertificate: {b_cert_file}, privateKey: {b_key_file}, minProtocolVersion: TLSV1_2}}
  - port: {{number: 9443, name: https-m, protocol: HTTPS}}
    hosts: [m.example.com]
    tls: {{mode: MUTUAL, credentialName: m-cred}}
  - port: {{number: 9444, name: tls-pass, protocol: TLS}}
    hosts: [pass.example.com]
    tls: {{mode: PASSTHROUGH}}
  - port: {{number: 9445, name: https-bad, protocol: HTTPS}}
    hosts: [bad.example.com]
    tls: {{mode: SIMPLE, credentialName: no-such-secret}}
  - port: {{number: 9446, name: tcp, protocol: TCP}}
    hosts: ["*"]
  - port: {{number: 9447, name: https-optional, protocol: HTTPS}}
    hosts: [m.example.com]
    tls: {{mode: OPTIONAL_MUTUAL, credentialName: m-cred}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: raw, namespace: app}}
spec:
  hosts: ["*"]
  gateways: [istio-system/edge]
  tcp:
  - match: [{{port: 9446}}]
    route: [{{destination: {{host: web, port: {{number: 8080}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: app}}
spec:
  hosts: [a.example.com, b.example.com, m.example.com, bad.example.com, plain.example.com]
  gateways: [istio-system/edge]
  http:
  - match: [{{uri: {{prefix: /}}}}]
    route: [{{destination: {{host: web, port: {{number: 8080}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: pass, namespace: app}}
spec:
  hosts: [pass.example.com]
  gateways: [istio-system/edge]
  tls:
  - match: [{{sniHosts: [pass.example.com]}}]
    route: [{{destination: {{host: tlsapp.app.svc.cluster.local, port: {{number: 8443}}}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: only-the-gateway, namespace: app}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/istio-system/sa/istio-ingressgateway]}}}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: edge-jwt, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  jwtRules:
  - issuer: {ISS}
    jwks: '{jwks}'
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: edge-jwt, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  action: ALLOW
  rules:
  - to: [{{operation: {{notPaths: ["/secure/*"]}}}}]
  - from: [{{source: {{requestPrincipals: ["{ISS}/alice"]}}}}]
    to: [{{operation: {{paths: ["/secure/*"]}}}}]
"#,
        jwks = signer.jwks(),
    );
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let ward = Ward::up(UpOptions {
        bin: env!("CARGO_BIN_EXE_ward"),
        admin,
        files: vec![("mesh.yaml", yaml)],
        extra_args: vec![],
        env: vec![],
    })
    .unwrap();
    Some(Edge {
        ward,
        gw: ip(1),
        certs,
        ca,
        client,
        signer,
        _tls_backend: tls_backend,
        _dir: dir,
    })
}

impl Edge {
    /// curl `https://<host>:<port><path>` resolved to the gateway, trusting the test CA:
    /// (status, body); status 0 when curl failed (TLS included).
    fn https(&self, host: &str, port: u16, path: &str, args: &[&str]) -> (u16, String) {
        let resolve = format!("{host}:{port}:{}", self.gw);
        let ca = self.certs.join("ca.pem").display().to_string();
        let url = format!("https://{host}:{port}{path}");
        let mut all = vec!["--resolve", &resolve, "--cacert", &ca];
        all.extend_from_slice(args);
        all.push(&url);
        ward_test_support::curl(&all)
    }

    /// curl `http://<gateway>:<port><path>` with `Host: host`: (status, response head, body).
    fn http(&self, host: &str, port: u16, path: &str) -> (u16, String) {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "-D",
                "-",
                "-o",
                "/dev/null",
                "-H",
            ])
            .arg(format!("Host: {host}"))
            .arg(format!("http://{}:{port}{path}", self.gw))
            .output()
            .unwrap();
        let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, head)
    }

    /// The subject of the certificate the gateway presents for `sni` on `port`, as
    /// `openssl s_client` prints it.
    fn served_subject(&self, sni: &str, port: u16) -> String {
        let out = Command::new("openssl")
            .args(["s_client", "-connect"])
            .arg(format!("{}:{port}", self.gw))
            .args(["-servername", sni])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find(|l| l.starts_with("subject="))
            .unwrap_or("")
            .to_owned()
    }
}

#[test]
fn ingress_gateway_terminates_routes_and_forwards_as_itself() {
    let Some(e) = up(1) else {
        return;
    };
    let logs = || e.ward.logs();

    // SIMPLE, two hosts on one port, each with its own certificate chosen by SNI: one from a
    // Secret, one from files. The destination only admits the gateway's principal.
    let (code, body) = e.https("a.example.com", 8443, "/hello?x=1", &[]);
    assert_eq!(code, 200, "{body}\n{}", logs());
    assert!(
        body.starts_with("app=web path=/hello?x=1 host=a.example.com:8443"),
        "{body}"
    );
    assert!(body.contains("h[x-request-id]="), "{body}");
    let (code, body) = e.https("b.example.com", 8443, "/b", &[]);
    assert_eq!(code, 200, "{body}\n{}", logs());
    assert!(e
        .served_subject("a.example.com", 8443)
        .contains("a.example.com"));
    assert!(e
        .served_subject("b.example.com", 8443)
        .contains("b.example.com"));
    let inbound = e
        .ward
        .wait_for_log(
            &[("direction", "inbound"), ("path", "/b")],
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(
        inbound["src.identity"], "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway",
        "{inbound}"
    );
    let edge_log = e
        .ward
        .wait_for_log(
            &[("direction", "gateway"), ("path", "/b")],
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(edge_log["gateway"], "istio-system/edge", "{edge_log}");

    // No route for the host: 404 NR.
    let (code, _) = e.http("nobody.example.com", 8080, "/");
    assert_eq!(code, 404, "{}", logs());
    let nr = e
        .ward
        .wait_for_log(
            &[
                ("direction", "gateway"),
                ("authority", "nobody.example.com"),
            ],
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(nr["response_flags"], "NR", "{nr}");
    // Plain HTTP on a routed host: 200.
    let (code, _) = e.http("plain.example.com", 8080, "/p");
    assert_eq!(code, 200, "{}", logs());

    // httpsRedirect: 301 to https, same host and path.
    let (code, head) = e.http("a.example.com", 8081, "/x?y=1");
    assert_eq!(code, 301, "{head}");
    assert!(
        head.contains("location: https://a.example.com/x?y=1"),
        "{head}"
    );

    // MUTUAL: no client certificate, no request; with one, 200.
    let (code, _) = e.https("m.example.com", 9443, "/m", &[]);
    assert_eq!(code, 0, "a request without a client certificate must fail");
    let (code, body) = e.https(
        "m.example.com",
        9443,
        "/m",
        &["--cert", &e.client.0, "--key", &e.client.1],
    );
    assert_eq!(code, 200, "{body}\n{}", logs());

    // OPTIONAL_MUTUAL: both ways in; a certificate from another CA is refused.
    assert_eq!(
        e.https("m.example.com", 9447, "/o", &[]).0,
        200,
        "{}",
        logs()
    );
    let client = ["--cert", e.client.0.as_str(), "--key", e.client.1.as_str()];
    assert_eq!(e.https("m.example.com", 9447, "/o", &client).0, 200);
    let (stranger_cert, stranger_key) =
        e.ca.issue("stranger", 6, ExtendedKeyUsagePurpose::ClientAuth);
    let stranger = [
        write_file(&e.certs, "stranger.pem", &stranger_cert),
        write_file(&e.certs, "stranger-key.pem", &stranger_key),
    ];
    let args = [
        "--cert",
        stranger[0].as_str(),
        "--key",
        stranger[1].as_str(),
    ];
    assert_eq!(e.https("m.example.com", 9447, "/o", &args).0, 0);

    // HTTP/2 by ALPN at the edge.
    let (code, body) = e.https("a.example.com", 8443, "/h2", &["--http2"]);
    assert_eq!(code, 200, "{body}");
    let h2 = e
        .ward
        .wait_for_log(
            &[("direction", "gateway"), ("path", "/h2")],
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(h2["protocol"], "HTTP/2", "{h2}");

    // PASSTHROUGH: the backend's own certificate reaches the client, through the gateway.
    assert!(
        e.served_subject("pass.example.com", 9444)
            .contains("pass.example.com"),
        "{}",
        logs()
    );
    let (code, body) = e.https("pass.example.com", 9444, "/", &[]);
    assert_eq!(code, 200, "{body}\n{}", logs());

    // A missing credential keeps its server off, named, while the others serve.
    let (code, _) = e.https("bad.example.com", 9445, "/", &[]);
    assert_eq!(code, 0);
    assert!(
        logs().contains("spec.servers[6].tls.credentialName: Secret istio-system/no-such-secret"),
        "{}",
        logs()
    );
    assert_eq!(e.https("a.example.com", 8443, "/still", &[]).0, 200);

    // TCP: a `tcp[]` route; the bytes (here an HTTP request) reach web as they were sent.
    let (code, _) = e.http("raw.example.com", 9446, "/raw");
    assert_eq!(code, 200, "{}", logs());

    // Metrics: the gateway reports its requests as Istio's gateways do (reporter source, the
    // gateway workload as the source).
    let (status, text) = ward_test_support::http_get(e.ward.admin, "/metrics").unwrap();
    assert_eq!(status, 200);
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains("reporter=\"source\"")
                && l.contains("source_workload=\"ingress\"")
                && l.contains("destination_workload=\"web\"")
        })
        .unwrap_or_else(|| panic!("no gateway request metric:\n{text}"));
    assert!(line.contains("response_code=\"200\""), "{line}");
}

#[test]
fn jwt_is_checked_at_the_edge() {
    let Some(e) = up(2) else {
        return;
    };
    let bearer = |t: &str| format!("Authorization: Bearer {t}");
    let alice = bearer(&e.signer.token("alice"));
    let bob = bearer(&e.signer.token("bob"));
    let forged = {
        let t = e.signer.token("alice");
        let mut b = t.into_bytes();
        let at = b.len() - 10;
        b[at] = if b[at] == b'A' { b'B' } else { b'A' };
        bearer(&String::from_utf8(b).unwrap())
    };
    let get = |h: &str| e.https("a.example.com", 8443, "/secure/data", &["-H", h]).0;
    assert_eq!(e.https("a.example.com", 8443, "/secure/data", &[]).0, 403);
    assert_eq!(get(&forged), 401);
    assert_eq!(get(&bob), 403);
    assert_eq!(get(&alice), 200, "{}", e.ward.logs());
    // Open paths need no token.
    assert_eq!(e.https("a.example.com", 8443, "/open", &[]).0, 200);
    let ok = e
        .ward
        .wait_for_log(
            &[("direction", "gateway"), ("response_code", "200")],
            Duration::from_secs(5),
        )
        .unwrap();
    assert!(
        ok["request_principal"].is_string() || ok["path"] == "/open",
        "{ok}"
    );
    assert!(!e.ward.logs().contains(&e.signer.token("alice")[..40]));
}

#[test]
fn server_certificates_reload_when_their_files_change() {
    let Some(e) = up(3) else {
        return;
    };
    let before = e.served_subject("b.example.com", 8443);
    assert!(before.contains("b.example.com"), "{before}");
    // A new certificate for the same host, from the same CA, with another organization.
    let mut params = CertificateParams::new(vec!["b.example.com".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "b.example.com");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Reloaded");
    let (cert, key) = e.ca.sign(&params);
    // Key first, then the certificate: both change before the next handshake reads them.
    write_file(&e.certs, "b-key.pem", &key);
    write_file(&e.certs, "b.pem", &cert);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = e.served_subject("b.example.com", 8443);
        if now.contains("Reloaded") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not reloaded: {now}\n{}",
            e.ward.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(e.https("b.example.com", 8443, "/after", &[]).0, 200);
}
