//! `ward control-plane` and `ward bootstrap`, end to end: the real binary serves Istio's CA API
//! over TLS 1.3 on 127.1.115–118.x; an independent gRPC client (Python grpcio, BoringSSL) and
//! Ward's own client (`ward_control::ca_client`) ask it for certificates; every refusal is
//! checked in the control plane's log.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use ward_control::bootstrap::BootstrapFile;
use ward_control::ca_client::{request_certificate, ClientError, Credential};
use ward_identity::{SpiffeId, WorkloadCert};
use ward_test_support::{have, have_grpcio, http_get, skip_or_fail};

const BIN: &str = env!("CARGO_BIN_EXE_ward");
const A: &str = "spiffe://cluster.local/ns/app/sa/a";
const B: &str = "spiffe://cluster.local/ns/app/sa/b";

/// The mesh: workloads app/a (service account a) and app/b (service account b).
fn mesh_yaml(block: u8) -> String {
    format!(
        r#"apiVersion: sailoperator.io/v1
kind: Istio
metadata:
  name: default
spec:
  namespace: istio-system
  values:
    meshConfig:
      trustDomain: cluster.local
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: a
  namespace: app
spec:
  address: 127.1.{block}.10
  serviceAccount: a
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: b
  namespace: app
spec:
  address: 127.1.{block}.11
  serviceAccount: b
"#
    )
}

/// A running `ward control-plane` on 127.1.<block>.1:15012 (admin :15014); killed on drop.
struct ControlPlaneProc {
    child: Child,
    listen: SocketAddr,
    log_path: PathBuf,
    config: PathBuf,
    state: PathBuf,
    tmp: tempfile::TempDir,
}

impl ControlPlaneProc {
    fn start(block: u8) -> ControlPlaneProc {
        let tmp = tempfile::tempdir().unwrap();
        let config = tmp.path().join("config");
        std::fs::create_dir_all(&config).unwrap();
        std::fs::write(config.join("mesh.yaml"), mesh_yaml(block)).unwrap();
        let state = tmp.path().join("state");
        let log_path = tmp.path().join("control-plane.log");
        let listen: SocketAddr = format!("127.1.{block}.1:15012").parse().unwrap();
        let admin: SocketAddr = format!("127.1.{block}.1:15014").parse().unwrap();
        let child = Command::new(BIN)
            .args(["--log-format", "json", "control-plane", "-f"])
            .arg(&config)
            .arg("--state-dir")
            .arg(&state)
            .args([
                "--listen",
                &listen.to_string(),
                "--admin",
                &admin.to_string(),
            ])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap();
        let mut cp = ControlPlaneProc {
            child,
            listen,
            log_path,
            config,
            state,
            tmp,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = cp.child.try_wait() {
                panic!("ward control-plane exited with {status}:\n{}", cp.logs());
            }
            if matches!(http_get(admin, "/ready"), Ok((200, _))) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not ready after 30s:\n{}",
                cp.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let (status, metrics) = http_get(admin, "/metrics").unwrap();
        assert_eq!(status, 200);
        assert!(metrics.contains("ward_ca_handshake_failures"), "{metrics}");
        cp
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// JSON log lines whose fields contain all of `pairs` (key, substring).
    fn lines(&self, pairs: &[(&str, &str)]) -> Vec<serde_json::Value> {
        self.logs()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| {
                pairs.iter().all(|(k, want)| {
                    v.get(*k).is_some_and(|got| match got {
                        serde_json::Value::String(s) => s.contains(want),
                        other => other.to_string().contains(want),
                    })
                })
            })
            .collect()
    }

    /// Waits until a log line matches `pairs` (the server logs after it answers).
    fn expect_log(&self, pairs: &[(&str, &str)]) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(v) = self.lines(pairs).into_iter().next() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {pairs:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `ward bootstrap` for `workload` against `state` and reads the file it wrote.
    fn bootstrap_with(&self, state: &Path, workload: &str, ttl: &str) -> BootstrapFile {
        let out = self.tmp.path().join(format!(
            "{}-{ttl}-{}.json",
            workload.replace('/', "-"),
            nonce()
        ));
        let status = Command::new(BIN)
            .arg("bootstrap")
            .arg("-f")
            .arg(&self.config)
            .arg("--state-dir")
            .arg(state)
            .args(["--workload", workload, "--ttl", ttl])
            .args(["--control-plane", &self.listen.to_string()])
            .arg("--out")
            .arg(&out)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "ward bootstrap {workload} failed");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "bootstrap file mode");
        }
        BootstrapFile::read(&out).unwrap()
    }

    fn bootstrap(&self, workload: &str, ttl: &str) -> BootstrapFile {
        self.bootstrap_with(&self.state.clone(), workload, ttl)
    }

    /// `ward bootstrap --check` on `file`: success and output.
    fn check(&self, file: &BootstrapFile) -> (bool, String) {
        let path = self.tmp.path().join(format!("check-{}.json", nonce()));
        file.write(&path).unwrap();
        let out = Command::new(BIN)
            .arg("bootstrap")
            .arg("--check")
            .arg(&path)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

impl Drop for ControlPlaneProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nonce() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn refused(result: Result<WorkloadCert, ClientError>) -> (tonic::Code, String) {
    match result {
        Err(ClientError::Refused { code, message }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn rust_client_bootstraps_with_its_token_then_renews_with_its_certificate() {
    let cp = ControlPlaneProc::start(116);
    let bundle = cp.bootstrap("app/a", "1h");
    assert_eq!(bundle.identity, A);
    assert_eq!(
        bundle.control_plane_identity,
        "spiffe://cluster.local/ns/istio-system/sa/ward-control-plane"
    );

    // What a person runs on the proxy's host to try the file.
    let (ok, text) = cp.check(&bundle);
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!("issued a certificate for {A}")),
        "{text}"
    );

    let first = block_on(request_certificate(&bundle, Credential::Token, None)).unwrap();
    assert_eq!(first.id, SpiffeId::parse(A).unwrap());
    let line = cp.expect_log(&[
        ("message", "certificate issued"),
        ("serial", &first.issued.serial),
    ]);
    assert_eq!(line["via"], "token");
    assert_eq!(line["workload"], "app/a");
    assert_eq!(line["identity"], A);

    // The token is reusable until it expires: a proxy that restarts bootstraps again.
    let again = block_on(request_certificate(&bundle, Credential::Token, None)).unwrap();
    assert_ne!(again.issued.serial, first.issued.serial);

    // Renewal: the current certificate is the credential; the token is not sent.
    let mut no_token = bundle;
    no_token.token = "not-a-token".into();
    let renewed = block_on(request_certificate(
        &no_token,
        Credential::Certificate(&first),
        Some(Duration::from_secs(600)),
    ))
    .unwrap();
    assert_eq!(renewed.id, first.id);
    let line = cp.expect_log(&[
        ("message", "certificate issued"),
        ("serial", &renewed.issued.serial),
    ]);
    assert_eq!(line["via"], "certificate");
    // validity_duration is honoured: 600 s after the CA's 2-minute backdate.
    let life = renewed
        .issued
        .not_after
        .duration_since(renewed.issued.not_before)
        .unwrap();
    assert_eq!(life, Duration::from_secs(600 + 120));
}

#[test]
fn refusals_are_answered_and_logged_with_their_reason() {
    let cp = ControlPlaneProc::start(117);
    let bundle = cp.bootstrap("app/a", "1h");

    // A token for a, a CSR for b.
    let mut asks_for_b = bundle.clone();
    asks_for_b.identity = B.into();
    let (code, message) = refused(block_on(request_certificate(
        &asks_for_b,
        Credential::Token,
        None,
    )));
    assert_eq!(code, tonic::Code::PermissionDenied, "{message}");
    cp.expect_log(&[
        ("message", "certificate request refused"),
        ("code", "PermissionDenied"),
        ("reason", &format!("must ask for exactly {A}")),
    ]);

    // A token of another control plane (another state directory, so another key and root).
    let other_state = cp.tmp.path().join("other-state");
    let foreign = cp.bootstrap_with(&other_state, "app/a", "1h");
    let mut with_foreign_token = bundle.clone();
    with_foreign_token.token = foreign.token.clone();
    let (code, _) = refused(block_on(request_certificate(
        &with_foreign_token,
        Credential::Token,
        None,
    )));
    assert_eq!(code, tonic::Code::Unauthenticated);
    let line = cp.expect_log(&[
        ("message", "certificate request refused"),
        ("reason", "signature does not verify"),
    ]);
    assert!(
        !line.to_string().contains(&foreign.token),
        "the token was logged"
    );

    // A flipped byte in the token's claims.
    let mut tampered = bundle.clone();
    let at = tampered.token.find('.').unwrap() + 8;
    let mut bytes = tampered.token.into_bytes();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    tampered.token = String::from_utf8(bytes).unwrap();
    let (code, _) = refused(block_on(request_certificate(
        &tampered,
        Credential::Token,
        None,
    )));
    assert_eq!(code, tonic::Code::Unauthenticated);
    let lines = cp.lines(&[("reason", "signature does not verify")]);
    assert_eq!(lines.len(), 2, "{}", cp.logs());

    // An expired token: wait past its one second.
    let short = cp.bootstrap("app/a", "1s");
    std::thread::sleep(Duration::from_millis(2500));
    let (code, message) = refused(block_on(request_certificate(
        &short,
        Credential::Token,
        None,
    )));
    assert_eq!(code, tonic::Code::Unauthenticated, "{message}");
    assert!(message.contains("expired"), "{message}");
    let (ok, text) = cp.check(&short);
    assert!(!ok && text.contains("token expired"), "{text}");
    cp.expect_log(&[
        ("message", "certificate request refused"),
        ("code", "Unauthenticated"),
        ("reason", "token expired"),
    ]);

    // The config is read at each call: b's token stops working once b is gone from it.
    let b_bundle = cp.bootstrap("app/b", "1h");
    block_on(request_certificate(&b_bundle, Credential::Token, None)).unwrap();
    let without_b = mesh_yaml(117);
    let without_b = &without_b[..without_b.rfind("---").unwrap()];
    std::fs::write(cp.config.join(".mesh.yaml.tmp"), without_b).unwrap();
    std::fs::rename(
        cp.config.join(".mesh.yaml.tmp"),
        cp.config.join("mesh.yaml"),
    )
    .unwrap();
    cp.expect_log(&[("message", "config change applied")]);
    let (code, message) = refused(block_on(request_certificate(
        &b_bundle,
        Credential::Token,
        None,
    )));
    assert_eq!(code, tonic::Code::PermissionDenied, "{message}");
    cp.expect_log(&[
        ("message", "certificate request refused"),
        ("reason", "app/b, which is not a WorkloadEntry"),
    ]);

    // A client certificate for a from another CA: the handshake fails.
    let other_ca =
        ward_ca::Ca::load_or_create(&other_state, ward_ca::CaOptions::default()).unwrap();
    let a = SpiffeId::parse(A).unwrap();
    let key = ward_identity::generate_csr(&a).unwrap();
    let stranger = WorkloadCert {
        id: a.clone(),
        key_pkcs8_der: key.key_pkcs8_der.clone(),
        issued: other_ca.sign(&a, &key.csr_der, None).unwrap(),
    };
    let result = block_on(request_certificate(
        &bundle,
        Credential::Certificate(&stranger),
        None,
    ));
    assert!(result.is_err(), "a certificate from another CA was served");
    cp.expect_log(&[("message", "control plane TLS handshake refused")]);
    assert_eq!(
        cp.lines(&[("message", "certificate issued")]).len(),
        1,
        "only b's certificate, before b was removed:\n{}",
        cp.logs()
    );
}

#[test]
fn plaintext_and_tls12_clients_fail_at_the_handshake() {
    let cp = ControlPlaneProc::start(118);

    // gRPC in cleartext (the HTTP/2 preface and a SETTINGS frame): the connection is closed.
    let mut plain = TcpStream::connect(cp.listen).unwrap();
    let local = plain.local_addr().unwrap().to_string();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    plain
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    let mut buf = [0u8; 256];
    let n = plain.read(&mut buf).unwrap_or(0);
    assert!(
        !String::from_utf8_lossy(&buf[..n]).contains("HTTP"),
        "plaintext was answered"
    );
    cp.expect_log(&[
        ("message", "control plane TLS handshake refused"),
        ("peer", &local),
    ]);

    if !have("openssl") {
        skip_or_fail("tls12 client", "openssl is not installed");
        return;
    }
    let before = cp
        .lines(&[("message", "control plane TLS handshake refused")])
        .len();
    let out = Command::new("openssl")
        .args(["s_client", "-tls1_2", "-connect", &cp.listen.to_string()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() || !text.contains("TLSv1.2"),
        "TLS 1.2 was negotiated:\n{text}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while cp
        .lines(&[("message", "control plane TLS handshake refused")])
        .len()
        == before
    {
        assert!(Instant::now() < deadline, "not logged:\n{}", cp.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `openssl req`: a P-256 key and a CSR whose one SAN is `uri`, in `dir`.
fn openssl_csr(dir: &Path, name: &str, uri: &str) -> PathBuf {
    let csr = dir.join(format!("{name}.csr.pem"));
    let out = Command::new("openssl")
        .args(["req", "-new", "-newkey", "ec", "-pkeyopt"])
        .args([
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=test",
        ])
        .arg("-keyout")
        .arg(dir.join(format!("{name}.key.pem")))
        .arg("-out")
        .arg(&csr)
        .args(["-addext", &format!("subjectAltName=URI:{uri}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    csr
}

/// Runs the Python grpcio client; returns its exit code and output.
fn python_client(bootstrap: &Path, csr: &Path, out: &Path, extra: &[&str]) -> (i32, String) {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let result = Command::new("python3")
        .arg(manifest.join("tests/apps/istio_ca_client.py"))
        .arg(manifest.join("../wire/proto"))
        .arg(bootstrap)
        .arg(csr)
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    (result.status.code().unwrap_or(-1), text)
}

#[test]
fn grpcio_client_gets_a_certificate_with_a_bootstrap_token() {
    if !have_grpcio() {
        skip_or_fail(
            "grpcio_client_gets_a_certificate_with_a_bootstrap_token",
            "python3 cannot import grpc and grpc_tools (pip install grpcio grpcio-tools)",
        );
        return;
    }
    if !have("openssl") {
        skip_or_fail(
            "grpcio_client_gets_a_certificate_with_a_bootstrap_token",
            "openssl is not installed",
        );
        return;
    }
    let cp = ControlPlaneProc::start(115);
    let dir = tempfile::tempdir().unwrap();
    let bundle_path = dir.path().join("a.json");
    cp.bootstrap("app/a", "1h").write(&bundle_path).unwrap();
    let bundle = BootstrapFile::read(&bundle_path).unwrap();
    let csr_a = openssl_csr(dir.path(), "a", A);

    let out = dir.path().join("issued");
    std::fs::create_dir_all(&out).unwrap();
    let (code, text) = python_client(&bundle_path, &csr_a, &out, &[]);
    assert_eq!(code, 0, "{text}\n{}", cp.logs());
    let leaf = out.join("cert-0.pem");
    let san = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(&leaf)
        .output()
        .unwrap();
    let san = String::from_utf8_lossy(&san.stdout);
    assert!(san.contains(&format!("URI:{A}")), "{san}");
    // Istio's order: the leaf first, the root last.
    let last = std::fs::read_to_string(out.join("cert-1.pem")).unwrap();
    assert_eq!(last.trim(), bundle.root_cert.trim());
    let root = dir.path().join("root.pem");
    std::fs::write(&root, &bundle.root_cert).unwrap();
    let verify = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&root)
        .arg(&leaf)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let line = cp.expect_log(&[("message", "certificate issued"), ("via", "token")]);
    assert_eq!(line["workload"], "app/a");

    // The same token with a CSR for b.
    let csr_b = openssl_csr(dir.path(), "b", B);
    let (code, text) = python_client(&bundle_path, &csr_b, &out, &[]);
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("REFUSED PERMISSION_DENIED"), "{text}");
    cp.expect_log(&[
        ("message", "certificate request refused"),
        ("code", "PermissionDenied"),
    ]);

    // No credentials at all.
    let (code, text) = python_client(&bundle_path, &csr_a, &out, &["--no-token"]);
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("REFUSED UNAUTHENTICATED"), "{text}");
    cp.expect_log(&[
        ("message", "certificate request refused"),
        ("reason", "no credentials"),
    ]);
}
