//! TLS origination (DestinationRule `tls` SIMPLE / MUTUAL) toward real nginx servers on loopback
//! (docs/egress-tls.md). The app speaks plain HTTP to its egress listener on
//! 127.132.0.1; the sidecar opens TLS to nginx on 127.132.0.10 (server certificate for
//! `api.example.com`) or 127.132.0.11 (client certificate required, checked against a CRL).
//!
//! Needs nginx and curl (and root and tcpdump for the wire capture); otherwise prints
//! `SKIPPED` (a failure under `WARD_E2E_REQUIRE_ALL=1`).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::ExtendedKeyUsagePurpose;
use ward_test_support::ca::{write_file, Ca};
use ward_test_support::{curl, free_port, have, is_root, skip_or_fail, Nginx, UpOptions, Ward};

const APP: &str = "127.132.0.1";
const SERVER: &str = "127.132.0.10";
const MTLS_SERVER: &str = "127.132.0.11";

/// One external service: host, the port the app dials, the nginx it reaches, its protocol.
fn service_entry(name: &str, host: &str, port: u16, address: &str, protocol: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec:\n  hosts: [{host}]\n  location: MESH_EXTERNAL\n  resolution: STATIC\n  \
         ports: [{{number: {port}, name: p{port}, protocol: {protocol}, targetPort: 8443}}]\n  \
         endpoints: [{{address: {address}}}]\n---\n"
    )
}

fn destination_rule(name: &str, host: &str, tls: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec:\n  host: {host}\n  trafficPolicy:\n    tls: {tls}\n---\n"
    )
}

fn tls_secret(cert: &str, key: &str, ca: &str) -> String {
    let indent = |s: &str| s.trim_end().replace('\n', "\n    ");
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: client-cred, namespace: shop}}\ntype: kubernetes.io/tls\n\
         stringData:\n  tls.crt: |\n    {}\n  tls.key: |\n    {}\n  ca.crt: |\n    {}\n",
        indent(cert),
        indent(key),
        indent(ca)
    )
}

fn url(port: u16, path: &str) -> String {
    format!("http://{APP}:{port}{path}")
}

/// The first access-log line of an outbound connection to `service` (waiting for it: a
/// connection is logged when it ends, which may be just after curl returns).
fn access(ward: &Ward, service: &str) -> serde_json::Value {
    ward.wait_for_log(
        &[("dst.service", service), ("direction", "outbound")],
        Duration::from_secs(5),
    )
    .unwrap()
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

#[test]
fn destination_rule_tls_origination_against_nginx() {
    for program in ["nginx", "curl"] {
        if !have(program) {
            return skip_or_fail("egress_tls", &format!("{program} is not installed"));
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ca = Ca::new("egress test CA");
    let other_ca = Ca::new("some other CA");
    let (server_cert, server_key) =
        ca.issue("api.example.com", 10, ExtendedKeyUsagePurpose::ServerAuth);
    let (mtls_cert, mtls_key) =
        ca.issue("mtls.example.com", 11, ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) = ca.issue("client-one", 20, ExtendedKeyUsagePurpose::ClientAuth);
    let (revoked_cert, revoked_key) =
        ca.issue("client-revoked", 21, ExtendedKeyUsagePurpose::ClientAuth);
    let (rotated_cert, rotated_key) =
        ca.issue("client-two", 22, ExtendedKeyUsagePurpose::ClientAuth);
    let ca_file = write_file(dir, "ca.pem", &ca.pem);
    let other_ca_file = write_file(dir, "other-ca.pem", &other_ca.pem);
    let crl_file = write_file(dir, "crl.pem", &ca.crl(&[21]));
    let s_cert = write_file(dir, "server.pem", &server_cert);
    let s_key = write_file(dir, "server.key", &server_key);
    let m_cert = write_file(dir, "mtls.pem", &mtls_cert);
    let m_key = write_file(dir, "mtls.key", &mtls_key);
    let revoked_cert_file = write_file(dir, "revoked.pem", &revoked_cert);
    let revoked_key_file = write_file(dir, "revoked.key", &revoked_key);

    let servers = format!(
        "server {{\n    listen {SERVER}:8443 ssl;\n    ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_certificate {s_cert};\n    ssl_certificate_key {s_key};\n    \
         location / {{ default_type text/plain; return 200 \"simple $ssl_protocol $request_uri\\n\"; }}\n  }}\n  \
         server {{\n    listen {MTLS_SERVER}:8443 ssl;\n    ssl_protocols TLSv1.2;\n    ssl_certificate {m_cert};\n    ssl_certificate_key {m_key};\n    \
         ssl_client_certificate {ca_file};\n    ssl_verify_client on;\n    ssl_crl {crl_file};\n    \
         location / {{ default_type text/plain; return 200 \"mtls client=$ssl_client_s_dn\\n\"; }}\n  }}\n"
    );
    let nginx = Nginx::start_servers(&servers, format!("{SERVER}:8443").parse().unwrap()).unwrap();

    // (service entry name, host, app port, nginx, protocol, DestinationRule tls)
    let cases: Vec<(&str, &str, u16, &str, &str, String)> = vec![
        // The classic pattern: plain HTTP to port 80, TLS to 8443 (`targetPort`).
        ("api", "api.example.com", 80, SERVER, "HTTP",
         format!("{{mode: SIMPLE, caCertificates: {ca_file}}}")),
        ("wrongca", "wrongca.example.com", 8001, SERVER, "HTTP",
         format!("{{mode: SIMPLE, caCertificates: {other_ca_file}, sni: api.example.com}}")),
        ("san-ok", "san-ok.example.com", 8002, SERVER, "HTTP",
         format!("{{mode: SIMPLE, caCertificates: {ca_file}, subjectAltNames: [api.example.com]}}")),
        ("san-bad", "san-bad.example.com", 8003, SERVER, "HTTP",
         format!("{{mode: SIMPLE, caCertificates: {ca_file}, sni: api.example.com, subjectAltNames: [other.example.com]}}")),
        ("insecure", "insecure.example.com", 8004, SERVER, "HTTP",
         "{mode: SIMPLE, insecureSkipVerify: true}".to_owned()),
        ("os-bundle", "os-bundle.example.com", 8005, SERVER, "HTTP",
         "{mode: SIMPLE}".to_owned()),
        ("mtls", "mtls.example.com", 8006, MTLS_SERVER, "HTTP",
         "{mode: MUTUAL, credentialName: client-cred}".to_owned()),
        ("mtls-nocert", "mtls-nocert.example.com", 8007, MTLS_SERVER, "HTTP",
         format!("{{mode: SIMPLE, caCertificates: {ca_file}, sni: mtls.example.com}}")),
        ("mtls-revoked", "mtls-revoked.example.com", 8008, MTLS_SERVER, "HTTP",
         format!("{{mode: MUTUAL, caCertificates: {ca_file}, sni: mtls.example.com, clientCertificate: {revoked_cert_file}, privateKey: {revoked_key_file}}}")),
        ("mtls-nosecret", "mtls-nosecret.example.com", 8009, MTLS_SERVER, "HTTP",
         "{mode: MUTUAL, credentialName: not-there}".to_owned()),
        ("tcp-wrongca", "tcp-wrongca.example.com", 8010, SERVER, "TCP",
         format!("{{mode: SIMPLE, caCertificates: {other_ca_file}, sni: api.example.com}}")),
        ("plain", "plain.example.com", 8011, SERVER, "HTTP", "{mode: DISABLE}".to_owned()),
    ];
    let mut services = String::new();
    for (name, host, port, address, protocol, tls) in &cases {
        services.push_str(&service_entry(name, host, *port, address, protocol));
        services.push_str(&destination_rule(name, host, tls));
    }
    // Subsets: the rule originates nothing; a VirtualService sends /secure to a subset whose
    // own `tls` is SIMPLE, and the rest to one without.
    services.push_str(&service_entry(
        "subset",
        "subset.example.com",
        8012,
        SERVER,
        "HTTP",
    ));
    services.push_str(&format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: subset, namespace: shop}}\n\
         spec:\n  host: subset.example.com\n  subsets:\n  - name: secure\n    trafficPolicy:\n      \
         tls: {{mode: SIMPLE, caCertificates: {ca_file}, sni: api.example.com}}\n  - name: plain\n---\n\
         apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: subset, namespace: shop}}\n\
         spec:\n  hosts: [subset.example.com]\n  http:\n  - match: [{{uri: {{prefix: /secure}}}}]\n    \
         route: [{{destination: {{host: subset.example.com, subset: secure}}}}]\n  \
         - route: [{{destination: {{host: subset.example.com, subset: plain}}}}]\n---\n"
    ));
    let workloads = format!(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: web, namespace: shop}}\n\
         spec: {{address: {APP}, serviceAccount: web, labels: {{app: web}}}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: web, namespace: shop}}\n\
         spec:\n  workloadSelector: {{labels: {{app: web}}}}\n  egress:\n  - bind: {APP}\n    hosts: [\"./*\"]\n"
    );
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let ward = Ward::up(UpOptions {
        bin: env!("CARGO_BIN_EXE_ward"),
        admin,
        files: vec![
            ("10-workloads.yaml", workloads),
            ("20-services.yaml", services),
            (
                "30-secret.yaml",
                tls_secret(&client_cert, &client_key, &ca.pem),
            ),
        ],
        extra_args: vec![],
        env: vec![],
    })
    .unwrap();

    // SIMPLE, right CA, app → port 80, sidecar → TLS on 8443.
    let (status, body) = curl(&[&url(80, "/hello")]);
    assert_eq!(
        (status, body.trim()),
        (200, "simple TLSv1.3 /hello"),
        "{}",
        ward.logs()
    );
    let line = access(&ward, "api.example.com");
    assert_eq!(line["ward.reason"], "tls_originated", "{line}");
    assert_eq!(line["tls.version"], "TLSv1.3", "{line}");
    assert_eq!(line["message"], "connection complete", "{line}");

    // SIMPLE, wrong CA: 503, UF, the reason in the access log.
    let (status, body) = curl(&[&url(8001, "/")]);
    assert_eq!(status, 503, "{body}");
    let line = access(&ward, "wrongca.example.com");
    assert_eq!(line["response_flags"], "UF", "{line}");
    assert_eq!(line["ward.reason"], "tls_origination_handshake", "{line}");
    let error = line["error"].as_str().unwrap();
    assert!(error.contains("UnknownIssuer"), "{error}");
    assert!(error.contains("DestinationRule shop/wrongca"), "{error}");

    // subjectAltNames: the right one passes, a wrong one fails.
    assert_eq!(curl(&[&url(8002, "/")]).0, 200);
    assert_eq!(curl(&[&url(8003, "/")]).0, 503);
    let line = access(&ward, "san-bad.example.com");
    assert!(
        line["error"]
            .as_str()
            .unwrap()
            .contains("not valid for name"),
        "{line}"
    );

    // insecureSkipVerify accepts a certificate the OS bundle does not (and the name differs).
    assert_eq!(curl(&[&url(8004, "/")]).0, 200);
    assert_eq!(curl(&[&url(8005, "/")]).0, 503);

    // MUTUAL with the Secret's client certificate.
    let (status, body) = curl(&[&url(8006, "/")]);
    assert_eq!(status, 200, "{body}\n{}", ward.logs());
    assert!(body.contains("CN=client-one"), "{body}");
    // TLS 1.2 toward a server that speaks nothing newer.
    let line = access(&ward, "mtls.example.com");
    assert_eq!(line["tls.version"], "TLSv1.2", "{line}");
    assert_eq!(line["message"], "connection complete", "{line}");
    // No client certificate: nginx refuses the request (400).
    let (status, body) = curl(&[&url(8007, "/")]);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("No required SSL certificate"), "{body}");
    // A revoked client certificate: nginx's CRL refuses it.
    let (status, body) = curl(&[&url(8008, "/")]);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("certificate error"), "{body}");
    // A credential that is not there: fail closed, with a log line naming the rule and field.
    assert_eq!(curl(&[&url(8009, "/")]).0, 503);
    let line = access(&ward, "mtls-nosecret.example.com");
    assert_eq!(line["ward.reason"], "tls_origination_credential", "{line}");
    ward.wait_for_log(
        &[
            ("rule", "DestinationRule shop/mtls-nosecret"),
            ("field", "spec.trafficPolicy.tls"),
        ],
        Duration::from_secs(5),
    )
    .unwrap();

    // A TCP port: the failed origination resets the app's connection.
    let (status, _) = curl(&[&url(8010, "/")]);
    assert_eq!(status, 0);
    let line = access(&ward, "tcp-wrongca.example.com");
    assert_eq!(line["response_flags"], "UF", "{line}");

    // DISABLE: plaintext to a TLS port; nginx answers 400 to plain HTTP on its TLS port.
    let (status, body) = curl(&[&url(8011, "/")]);
    assert_eq!(status, 400, "{body}");

    // A subset's own `tls`: routed to `secure`, TLS is originated; to `plain`, it is not.
    let host = "Host: subset.example.com";
    let (status, body) = curl(&["-H", host, &url(8012, "/secure/x")]);
    assert_eq!(
        (status, body.trim()),
        (200, "simple TLSv1.3 /secure/x"),
        "{}",
        ward.logs()
    );
    let (status, body) = curl(&["-H", host, &url(8012, "/other")]);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("plain HTTP request"), "{body}");

    // The credential rotated on disk: the Secret is rewritten, the next connection presents
    // the new certificate, without a restart.
    let pid = ward.pid();
    ward.write_config(
        "30-secret.yaml",
        &tls_secret(&rotated_cert, &rotated_key, &ca.pem),
    )
    .unwrap();
    let rotated = wait_for(Duration::from_secs(10), || {
        let (status, body) = curl(&[&url(8006, "/")]);
        (status == 200 && body.contains("CN=client-two")).then_some(())
    });
    assert!(rotated.is_some(), "{}", ward.logs());
    assert_eq!(ward.pid(), pid);

    // A CA file rewritten in place is read again too: the wrong CA becomes the right one.
    std::fs::write(&other_ca_file, &ca.pem).unwrap();
    let fixed = wait_for(Duration::from_secs(5), || {
        (curl(&[&url(8001, "/")]).0 == 200).then_some(())
    });
    assert!(fixed.is_some(), "{}", ward.logs());

    // No private key in any log line or in the config dump.
    let logs = ward.logs();
    for key in [&client_key, &rotated_key] {
        let body = key.lines().nth(1).unwrap();
        assert!(!logs.contains(body), "a private key was logged");
    }
    let (_, dump) = ward_test_support::http_get(admin, "/config_dump").unwrap();
    assert!(
        dump.contains("CN=") || dump.contains("BEGIN CERTIFICATE"),
        "no credential in dump"
    );
    assert!(
        !dump.contains(rotated_key.lines().nth(1).unwrap()),
        "the config dump shows a key"
    );

    wire_capture(&ward, &nginx);
}

/// The bytes between the sidecar and nginx are TLS: the request path the app sent in
/// plaintext is in nginx's access log, and not on the wire.
fn wire_capture(ward: &Ward, nginx: &Nginx) {
    if !is_root() || !have("tcpdump") {
        return skip_or_fail("egress_tls wire capture", "needs root and tcpdump");
    }
    let tmp = tempfile::tempdir().unwrap();
    let pcap = tmp.path().join("wire.pcap");
    let log = tmp.path().join("tcpdump.log");
    let mut tcpdump = Command::new("tcpdump")
        .args(["-i", "lo", "-U", "-s", "0", "-w"])
        .arg(&pcap)
        .args(["tcp and host", SERVER, "and port 8443"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let listening = wait_for(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("listening on").then_some(())
    });
    assert!(listening.is_some(), "tcpdump did not start");
    std::thread::sleep(Duration::from_millis(500));
    let marker = "/wire-marker-7f3a9c";
    let (status, _) = curl(&[&url(80, marker)]);
    assert_eq!(status, 200, "{}", ward.logs());
    std::thread::sleep(Duration::from_millis(1000));
    // SIGINT: tcpdump writes out what it holds and exits.
    let _ = Command::new("kill")
        .args(["-INT", &tcpdump.id().to_string()])
        .status();
    if wait_for(Duration::from_secs(5), || tcpdump.try_wait().ok().flatten()).is_none() {
        let _ = tcpdump.kill();
        let _ = tcpdump.wait();
    }
    let wire = std::fs::read(&pcap).unwrap();
    assert!(
        nginx.access_log().contains(marker),
        "the request did not reach nginx"
    );
    // The capture holds the handshake (TLS records to port 8443) but never the marker.
    assert!(wire.len() > 500, "nothing captured ({} bytes)", wire.len());
    assert!(
        !wire.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "the request left the sidecar in plaintext"
    );
    assert!(
        wire.windows(3).any(|w| w == [0x16, 0x03, 0x01]),
        "no TLS handshake record on the wire"
    );
}

#[test]
fn analyze_reports_os_bundle_and_missing_credential() {
    let tmp = tempfile::tempdir().unwrap();
    let text = [
        service_entry("api", "api.example.com", 443, SERVER, "TLS"),
        destination_rule("os", "api.example.com", "{mode: SIMPLE}"),
        destination_rule(
            "cred",
            "other.example.com",
            "{mode: MUTUAL, credentialName: gone}",
        ),
    ]
    .concat();
    std::fs::write(tmp.path().join("dr.yaml"), text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ward"))
        .arg("analyze")
        .arg("-f")
        .arg(tmp.path())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("WARD0250"), "{text}");
    assert!(text.contains("IST0128"), "{text}");
    assert!(text.contains("WARD0251"), "{text}");
    assert!(text.contains("Secret shop/gone"), "{text}");
    assert!(
        text.contains("spec.trafficPolicy.tls.credentialName"),
        "{text}"
    );
}
