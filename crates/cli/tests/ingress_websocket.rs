//! WebSocket through the ingress gateway, end to end (docs/ingress.md, "WebSocket"): a real
//! client and server (PyPI `websockets`, `tests/apps/ws_echo.py`); the gateway routes the
//! upgrade request by a VirtualService over HBONE to the server's sidecar and splices the two
//! upgraded connections after the server's `101`. Checked: messages both ways and a clean
//! close; an upgrade the gateway's AuthorizationPolicy denies is answered 403 and never reaches
//! the app; the gateway reports the 101 in `istio_requests_total`. Addresses: 127.1.215.x.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ward_test_support::{free_port, skip_or_fail, UpOptions, Ward};

mod edge_common;
use edge_common::{backend, gateway_mesh, GATEWAY_HEAD};

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

/// One WebSocket session with the `websockets` client.
fn call(url: &str, message: &str) -> serde_json::Value {
    let out = Command::new("python3")
        .args([SCRIPT, "call", url, message])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("{e}: {text}\n{}", String::from_utf8_lossy(&out.stderr)))
}

fn mesh(app_port: u16) -> String {
    let mut yaml = gateway_mesh(GATEWAY);
    yaml += &backend("echo", ECHO, 9000, "HTTP", app_port);
    yaml += GATEWAY_HEAD;
    yaml += r#"  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: app}
spec:
  hosts: ["*"]
  gateways: [istio-system/edge]
  http:
  - match: [{uri: {prefix: /ws/}}]
    route: [{destination: {host: echo, port: {number: 9000}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-denied, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/ws/denied"]}}]
"#;
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
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let ward = Ward::up(UpOptions {
        bin: env!("CARGO_BIN_EXE_ward"),
        admin,
        files: vec![("mesh.yaml", mesh(app_port))],
        extra_args: vec![],
        env: vec![],
    })
    .unwrap();
    let logs = || ward.logs();

    // Messages both ways, twice on fresh connections, and a clean close (1000).
    for message in ["hello", "again"] {
        let r = call(&format!("ws://{GATEWAY}:8080/ws/chat"), message);
        assert_eq!(r["welcome"], "welcome", "{r}\n{}", logs());
        assert_eq!(r["echo"], format!("echo:{message}"), "{r}");
        assert_eq!(r["close_code"], 1000, "{r}");
    }

    // The gateway's AuthorizationPolicy refuses the upgrade before it is forwarded.
    let r = call(&format!("ws://{GATEWAY}:8080/ws/denied"), "x");
    assert_eq!(r["status"], 403, "{r}\n{}", logs());
    // No route: 404, as for any request.
    let r = call(&format!("ws://{GATEWAY}:8080/other"), "x");
    assert_eq!(r["status"], 404, "{r}\n{}", logs());
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
