//! gRPC through the ingress gateway, end to end (docs/ingress.md, "gRPC"): gRPC's own C-core
//! client (PyPI `grpcio`) calls a `GRPC` server of the gateway in h2c (prior knowledge) and an
//! `HTTPS` server over TLS (SIMPLE, ALPN h2); the gateway routes by a VirtualService over HBONE
//! to a sidecar, whose app is a grpcio server (`tests/apps/grpc_echo.py`). Checked: an OK
//! status with the reply and the server's trailing metadata, an error status and its message
//! passed through, an AuthorizationPolicy deny at the gateway as the client sees it, and
//! `grpc_response_status` in `istio_requests_total`. Addresses: 127.1.210.x.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use rcgen::ExtendedKeyUsagePurpose;
use ward_test_support::ca::{write_file, Ca};
use ward_test_support::{free_port, have_grpcio, skip_or_fail, UpOptions, Ward};

mod edge_common;
use edge_common::{backend, gateway_mesh, python_json, GATEWAY_HEAD};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/apps/grpc_echo.py");
const GATEWAY: &str = "127.1.210.1";
const ECHO: &str = "127.1.210.10";

/// The grpcio echo server; killed on drop.
struct EchoServer(Child);

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_echo(port: u16) -> EchoServer {
    let mut child = Command::new("python3")
        .args([SCRIPT, "serve", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "the grpcio server did not start");
    EchoServer(child)
}

/// One call with grpcio's client: (status code name, details, reply, trailers).
fn call(target: &str, method: &str, message: &str, tls: Option<(&str, &str)>) -> serde_json::Value {
    let mut args = vec![SCRIPT, "call", target, method, message];
    if let Some((ca, authority)) = tls {
        args.extend([ca, authority]);
    }
    python_json(&args)
}

fn mesh(app_port: u16, cert: &str, key: &str) -> String {
    let mut yaml = gateway_mesh(GATEWAY);
    yaml += &backend("echo", ECHO, 9000, "GRPC", app_port);
    yaml += GATEWAY_HEAD;
    yaml += &format!(
        r#"  - port: {{number: 8080, name: grpc, protocol: GRPC}}
    hosts: ["*"]
  - port: {{number: 8443, name: https, protocol: HTTPS}}
    hosts: [grpc.example.com]
    tls: {{mode: SIMPLE, serverCertificate: {cert}, privateKey: {key}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo, namespace: app}}
spec:
  hosts: ["*"]
  gateways: [istio-system/edge]
  http:
  - match: [{{uri: {{prefix: /demo.Echo/}}}}]
    route: [{{destination: {{host: echo, port: {{number: 9000}}}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-denied, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  action: DENY
  rules:
  - to: [{{operation: {{paths: ["/demo.Echo/Denied"]}}}}]
"#
    );
    yaml
}

#[test]
fn grpc_calls_through_the_gateway_in_h2c_and_over_tls() {
    if !have_grpcio() {
        skip_or_fail(
            "ingress_grpc",
            "grpcio is needed (pip install grpcio grpcio-tools)",
        );
        return;
    }
    let app_port = free_port();
    let _echo = start_echo(app_port);
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("grpc edge test CA");
    let (cert, key) = ca.issue("grpc.example.com", 1, ExtendedKeyUsagePurpose::ServerAuth);
    let ca_file = write_file(dir.path(), "ca.pem", &ca.pem);
    let cert = write_file(dir.path(), "grpc.pem", &cert);
    let key = write_file(dir.path(), "grpc-key.pem", &key);
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let ward = Ward::up(UpOptions {
        bin: env!("CARGO_BIN_EXE_ward"),
        admin,
        files: vec![("mesh.yaml", mesh(app_port, &cert, &key))],
        extra_args: vec![],
        env: vec![],
    })
    .unwrap();
    let logs = || ward.logs();
    let plain = format!("{GATEWAY}:8080");
    let tls_target = format!("{GATEWAY}:8443");
    let tls = Some((ca_file.as_str(), "grpc.example.com"));

    // h2c with prior knowledge, then TLS: the reply and the server's trailers come back.
    for (target, tls, msg) in [
        (plain.as_str(), None, "over h2c"),
        (tls_target.as_str(), tls, "over tls"),
    ] {
        let r = call(target, "/demo.Echo/Say", msg, tls);
        assert_eq!(r["code"], "OK", "{r}\n{}", logs());
        assert_eq!(r["reply"], msg, "{r}");
        assert_eq!(r["trailers"]["x-echo"], msg, "{r}");
    }

    // An error status and its message pass through unchanged.
    for (target, tls) in [(plain.as_str(), None), (tls_target.as_str(), tls)] {
        let r = call(target, "/demo.Echo/Fail", "x", tls);
        assert_eq!(r["code"], "NOT_FOUND", "{r}\n{}", logs());
        assert_eq!(r["details"], "no such thing", "{r}");
    }

    // The gateway's AuthorizationPolicy: the client sees PERMISSION_DENIED.
    let r = call(&plain, "/demo.Echo/Denied", "x", None);
    assert_eq!(r["code"], "PERMISSION_DENIED", "{r}\n{}", logs());

    // The gateway reports the gRPC status of each call.
    let (status, text) = ward_test_support::http_get(ward.admin, "/metrics").unwrap();
    assert_eq!(status, 200);
    let gateway_lines: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains("reporter=\"source\"")
                && l.contains("source_workload=\"ingress\"")
                && l.contains("destination_workload=\"echo\"")
        })
        .collect();
    for grpc in ["0", "5"] {
        assert!(
            gateway_lines
                .iter()
                .any(|l| l.contains(&format!("grpc_response_status=\"{grpc}\""))),
            "no gateway request with grpc_response_status {grpc}:\n{}",
            gateway_lines.join("\n")
        );
    }
}
