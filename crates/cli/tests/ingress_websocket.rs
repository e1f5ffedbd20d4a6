//! WebSocket through the ingress gateway, end to end (docs/ingress.md, "WebSocket"): a real
//! client and server (PyPI `websockets`, `tests/apps/ws_echo.py`); the gateway routes the
//! upgrade request by a VirtualService over HBONE to the server's sidecar and splices the two
//! upgraded connections after the server's `101`. Checked, on an `HTTP` server and an `HTTPS`
//! (SIMPLE) one: messages both ways and a clean close; an upgrade the gateway's
//! AuthorizationPolicy denies is answered 403, closes its connection and never reaches the app;
//! the access record (101, bytes) and the 101 in `istio_requests_total`. Addresses: 127.1.215.x.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rcgen::ExtendedKeyUsagePurpose;
use ward_test_support::ca::{write_file, Ca};
use ward_test_support::{free_port, skip_or_fail, UpOptions, Ward};

mod edge_common;
use edge_common::{backend, gateway_mesh, python_json, GATEWAY_HEAD};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/apps/ws_echo.py");
const GATEWAY: &str = "127.1.215.1";
const ECHO: &str = "127.1.215.10";

fn have_websockets() -> bool {
    Command::new("python3")
        .args(["-c", "import websockets.asyncio.server"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The WebSocket echo server; killed on drop.
struct EchoServer(Child);

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_echo(port: u16, seen: &Path) -> EchoServer {
    let mut child = Command::new("python3")
        .args([SCRIPT, "serve", &port.to_string(), seen.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "the websockets server did not start");
    EchoServer(child)
}

/// One WebSocket session with the `websockets` client (`wss`: trusting `tls`'s CA file, for
/// its server name).
fn call(url: &str, message: &str, tls: Option<(&str, &str)>) -> serde_json::Value {
    let mut args = vec![SCRIPT, "call", url, message];
    if let Some((ca, name)) = tls {
        args.extend([ca, name]);
    }
    python_json(&args)
}

fn mesh(app_port: u16, cert: &str, key: &str) -> String {
    let mut yaml = gateway_mesh(GATEWAY);
    yaml += &backend("echo", ECHO, 9000, "HTTP", app_port);
    yaml += GATEWAY_HEAD;
    yaml += &format!(
        r#"  - port: {{number: 8080, name: http, protocol: HTTP}}
    hosts: ["*"]
  - port: {{number: 8443, name: https, protocol: HTTPS}}
    hosts: [ws.example.com]
    tls: {{mode: SIMPLE, serverCertificate: {cert}, privateKey: {key}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo, namespace: app}}
spec:
  hosts: ["*"]
  gateways: [istio-system/edge]
  http:
  - match: [{{uri: {{prefix: /ws/}}}}]
    route: [{{destination: {{host: echo, port: {{number: 9000}}}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-denied, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  action: DENY
  rules:
  - to: [{{operation: {{paths: ["/ws/denied"]}}}}]
"#
    );
    yaml
}

#[test]
fn websocket_sessions_cross_the_gateway_and_denied_upgrades_do_not() {
    if !have_websockets() {
        skip_or_fail(
            "ingress_websocket",
            "the websockets Python package is needed (pip install websockets)",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("seen");
    let app_port = free_port();
    let _echo = start_echo(app_port, &seen);
    let ca = Ca::new("websocket edge test CA");
    let (cert, key) = ca.issue("ws.example.com", 1, ExtendedKeyUsagePurpose::ServerAuth);
    let ca_file = write_file(dir.path(), "ca.pem", &ca.pem);
    let cert = write_file(dir.path(), "ws.pem", &cert);
    let key = write_file(dir.path(), "ws-key.pem", &key);
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

    // Messages both ways, in plaintext and over TLS terminated at the gateway, and a clean
    // close (1000).
    let tls = Some((ca_file.as_str(), "ws.example.com"));
    for (url, tls, message) in [
        (format!("ws://{GATEWAY}:8080/ws/chat"), None, "hello"),
        (format!("wss://{GATEWAY}:8443/ws/chat"), tls, "over tls"),
    ] {
        let r = call(&url, message, tls);
        assert_eq!(r["welcome"], "welcome", "{r}\n{}", logs());
        assert_eq!(r["echo"], format!("echo:{message}"), "{r}");
        assert_eq!(r["close_code"], 1000, "{r}");
    }

    // The gateway's AuthorizationPolicy refuses the upgrade before it is forwarded.
    let r = call(&format!("ws://{GATEWAY}:8080/ws/denied"), "x", None);
    assert_eq!(r["status"], 403, "{r}\n{}", logs());
    // No route: 404, as for any request.
    let r = call(&format!("ws://{GATEWAY}:8080/other"), "x", None);
    assert_eq!(r["status"], 404, "{r}\n{}", logs());
    // An upgrade answered without a switch closes its connection (the framing guard stopped
    // following it at the upgrade head).
    let mut raw = TcpStream::connect(format!("{GATEWAY}:8080")).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(
        b"GET /ws/denied HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .unwrap();
    let mut answer = String::new();
    raw.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    let reached = std::fs::read_to_string(&seen).unwrap_or_default();
    assert_eq!(
        reached.lines().collect::<Vec<_>>(),
        ["/ws/chat", "/ws/chat"],
        "what reached the app"
    );

    // The access record of an upgraded request is written when its connection ends: the 101
    // and the bytes both ways.
    let line = ward
        .wait_for_log(
            &[
                ("direction", "gateway"),
                ("path", "/ws/chat"),
                ("response_code", "101"),
            ],
            Duration::from_secs(5),
        )
        .unwrap_or_else(|e| panic!("no access record of the upgrade: {e}\n{}", logs()));
    for bytes in ["bytes_received", "bytes_sent"] {
        assert!(line[bytes].as_u64().is_some_and(|n| n > 0), "{line}");
    }
    assert_eq!(line["gateway"], "istio-system/edge", "{line}");
    let denied = ward
        .wait_for_log(
            &[("direction", "gateway"), ("path", "/ws/denied")],
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(denied["response_code"], 403, "{denied}");

    // The gateway reports the switch.
    let (status, text) = ward_test_support::http_get(ward.admin, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(
        text.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains("source_workload=\"ingress\"")
            && l.contains("destination_workload=\"echo\"")
            && l.contains("response_code=\"101\"")),
        "no gateway request with response_code 101:\n{text}"
    );
}
