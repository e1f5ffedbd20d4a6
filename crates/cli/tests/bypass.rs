//! The request the app receives is the request that was authorized. End to end, with hypercorn
//! (a production ASGI server that accepts h2c upgrades and upper-cases methods, as many servers
//! do) as srv's app, curl, a Python HTTP/2 client (the `h2` package hypercorn brings) and raw
//! sockets, through a real `ward up`:
//! - h2c upgrade smuggling: the upgrade is stripped, so every later request is authorized;
//! - an app switching to a protocol that was not asked for is never spliced;
//! - Host / absolute-form / `:authority` confusion, both ways between HTTP/1.1 and HTTP/2;
//! - method case (`delete` vs a DENY on `DELETE`);
//! - path and method override headers;
//! - upgraded connections (WebSocket) re-checked when policy changes.
//!
//! Skips visibly without hypercorn/curl; CI installs them and requires every test.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{docs, mesh_pa, srv_policy, Mesh};
use ward_test_support::{curl, have, have_hypercorn, skip_or_fail, Hypercorn, Ward};

fn tools_missing(test: &str) -> bool {
    if !have("curl") || !have_hypercorn() {
        skip_or_fail(
            test,
            "curl and hypercorn are needed (apt-get install curl; pip install hypercorn)",
        );
        return true;
    }
    false
}

fn apps_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/apps"))
}

/// The mesh with srv's port declared `protocol`, hypercorn behind it, and `security` applied.
fn mesh_with_hypercorn(
    block: u8,
    protocol: &'static str,
    security: &str,
) -> (Mesh, Hypercorn, Ward) {
    let mut mesh = Mesh::with_own_app(block);
    mesh.protocol = protocol;
    let app = Hypercorn::start(mesh.app_port, apps_dir(), "asgi_echo:app").unwrap();
    let ward = mesh.up(security, &[]);
    (mesh, app, ward)
}

/// Allows cli only `GET /public/*`; nothing else reaches srv.
fn public_only() -> String {
    docs(&[
        mesh_pa("STRICT"),
        srv_policy(
            "public-only",
            "  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/ns/app/sa/cli\"]\n    to:\n    - operation:\n        methods: [\"GET\"]\n        paths: [\"/public/*\"]\n",
        ),
    ])
}

/// Send raw bytes, read until the peer closes or `limit` passes; returns what came back.
fn raw(addr: SocketAddr, bytes: &[u8], limit: Duration) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s.write_all(bytes).unwrap();
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of the first response in `text`.
fn status(text: &str) -> u16 {
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The JSON body of a single response `text` from the echo app.
fn app_view(text: &str) -> serde_json::Value {
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

fn app_header(view: &serde_json::Value, name: &str) -> Option<String> {
    view["headers"]
        .as_array()?
        .iter()
        .find_map(|h| (h[0].as_str()? == name).then(|| h[1].as_str().unwrap_or("").to_owned()))
}

/// Run a Python HTTP/2 (prior knowledge) client over `addr`: one request with the given
/// pseudo-headers and headers. Prints `status=<code>` and the body.
fn h2_request(addr: SocketAddr, headers: &[(&str, &str)]) -> (u16, String) {
    let script = r#"
import json, socket, sys
import h2.connection, h2.config, h2.events
addr, port, hdrs = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
s = socket.create_connection((addr, port), timeout=10)
c = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False))
c.initiate_connection()
c.send_headers(1, [(k, v) for k, v in hdrs], end_stream=True)
s.sendall(c.data_to_send())
code, body, done = 0, b"", False
while not done:
    data = s.recv(65536)
    if not data:
        break
    for ev in c.receive_data(data):
        if isinstance(ev, h2.events.ResponseReceived):
            code = int(dict(ev.headers)[b":status"])
        elif isinstance(ev, h2.events.DataReceived):
            body += ev.data
            c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset, h2.events.ConnectionTerminated)):
            done = True
    s.sendall(c.data_to_send())
print(f"status={code}")
print(body.decode("latin-1"))
"#;
    let hdrs = serde_json::to_string(headers).unwrap();
    let out = Command::new("python3")
        .args([
            "-c",
            script,
            &addr.ip().to_string(),
            &addr.port().to_string(),
            &hdrs,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (first, body) = text.split_once('\n').unwrap_or((&text, ""));
    let code = first
        .strip_prefix("status=")
        .and_then(|c| c.trim().parse().ok())
        .unwrap_or(0);
    (code, body.trim().to_owned())
}

#[test]
fn h2c_upgrade_is_stripped_so_every_request_is_authorized() {
    if tools_missing("h2c_upgrade_smuggling") {
        return;
    }
    let (mesh, app, ward) = mesh_with_hypercorn(60, "HTTP", &public_only());
    let via = mesh.via_cli();

    // curl asks for h2c on the first request, then sends the second on the same connection:
    // had the upgrade gone through, `/admin` would travel as an HTTP/2 stream nobody checks.
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "--http2",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-w",
        ])
        .arg("%{http_code} %{http_version}\n")
        .arg(format!("http://{via}/public/a"))
        .arg(format!("http://{via}/admin"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out, "200 1.1\n403 1.1\n", "{}", ward.logs());

    // Raw variants of the upgrade request: never a 101, the app sees no upgrade, and the HTTP/2
    // bytes that follow are never served.
    let preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    for (upgrade, connection) in [
        ("h2c", "Upgrade, HTTP2-Settings"),
        ("H2C", "upgrade,http2-settings"),
        ("h2c, foo/1", "Upgrade"),
        ("HTTP/2.0", "Upgrade"),
    ] {
        let req = format!(
            "GET /public/up HTTP/1.1\r\nHost: srv\r\nUpgrade: {upgrade}\r\nConnection: {connection}\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
        );
        let text = raw(via, req.as_bytes(), Duration::from_secs(2));
        assert_eq!(status(&text), 200, "{upgrade}: {text}");
        let view = app_view(&text);
        let kept = app_header(&view, "upgrade")
            .unwrap_or_default()
            .to_ascii_lowercase();
        assert!(
            !kept.contains("h2") && !kept.contains("http/"),
            "{upgrade}: {view}"
        );
        assert_eq!(
            app_header(&view, "http2-settings"),
            None,
            "{upgrade}: {view}"
        );
        let then = format!("{req}{preface}");
        let text = raw(via, then.as_bytes(), Duration::from_secs(2));
        assert!(!text.contains("HTTP/1.1 101"), "{upgrade}: {text}");
    }
    assert!(
        !app.app_log().contains("/admin"),
        "the app never serves /admin: {}",
        app.app_log()
    );
}

#[test]
fn an_app_switching_to_an_unrequested_protocol_is_not_spliced() {
    // A raw app that answers any upgrade with `101 upgrade: h2c` and then serves whatever
    // follows: splicing it would hand the client an unchecked channel.
    // The app's port is bound before the mesh names it, so no other socket can take it first.
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let mut mesh = Mesh::with_own_app(61).http();
    mesh.app_port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if c.read(&mut b).unwrap_or(0) != 1 {
                        return;
                    }
                    head.push(b[0]);
                }
                let _ = c.write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\nSECRET-AFTER-101",
                );
                let mut buf = [0u8; 256];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(b"SECRET").is_err() {
                        break;
                    }
                }
            });
        }
    });
    let ward = mesh.up(&mesh_pa("STRICT"), &[]);
    let text = raw(
        mesh.via_cli(),
        b"GET /ws HTTP/1.1\r\nHost: srv\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nmore",
        Duration::from_secs(2),
    );
    assert_eq!(status(&text), 502, "{text}\n{}", ward.logs());
    assert!(!text.contains("SECRET"), "{text}");
    ward.wait_for_log(
        &[("response_code_details", "upgrade_protocol_mismatch")],
        Duration::from_secs(5),
    )
    .unwrap();
}

#[test]
fn the_app_serves_the_authority_that_was_authorized() {
    if tools_missing("host_confusion") {
        return;
    }
    let security = docs(&[
        mesh_pa("STRICT"),
        srv_policy(
            "no-admin-host",
            "  action: DENY\n  rules:\n  - to:\n    - operation:\n        hosts: [\"admin.internal\"]\n",
        ),
        srv_policy("no-delete", "  action: DENY\n  rules:\n  - to:\n    - operation:\n        methods: [\"DELETE\"]\n"),
    ]);
    let (mesh, app, ward) = mesh_with_hypercorn(62, "HTTP", &security);
    let via = mesh.via_cli();
    let limit = Duration::from_secs(2);

    // HTTP/1.1, absolute form: policy sees the target's authority, so a different Host would
    // reach the app unchecked. Refused.
    for req in [
        "GET http://public.example/x HTTP/1.1\r\nHost: admin.internal\r\n\r\n",
        "GET http://public.example/x HTTP/1.1\r\nHost: admin.internal:80\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: public.example\r\nHost: admin.internal\r\n\r\n",
        "GET /x HTTP/1.1\r\n\r\n",
    ] {
        let text = raw(via, req.as_bytes(), limit);
        assert_eq!(status(&text), 400, "{req:?}: {text}");
    }
    // The denied authority in the target is denied whatever the Host says.
    let text = raw(
        via,
        b"GET http://admin.internal/x HTTP/1.1\r\nHost: admin.internal\r\n\r\n",
        limit,
    );
    assert_eq!(status(&text), 403, "{text}");
    // Absolute form with a matching Host: the app gets that authority as Host.
    let text = raw(
        via,
        b"GET http://public.example/x HTTP/1.1\r\nHost: PUBLIC.example\r\n\r\n",
        limit,
    );
    assert_eq!(status(&text), 200, "{text}");
    assert_eq!(app_view(&text)["host"], "public.example", "{text}");

    // HTTP/2 client, HTTP/1.1 app: the app's Host is the client's :authority (it used to be
    // the app's own endpoint).
    let (code, body) = curl(&[
        "--http2-prior-knowledge",
        &format!("http://{via}/x"),
        "-H",
        "Host: public.example",
    ]);
    assert_eq!(code, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(view["host"], "public.example", "{view}");
    assert_eq!(view["http_version"], "1.1", "{view}");
    // HTTP/2 with a `host` header that differs from :authority: refused.
    let (code, body) = h2_request(
        via,
        &[
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "public.example"),
            (":path", "/x"),
            ("host", "admin.internal"),
        ],
    );
    assert_eq!(code, 400, "{body}\n{}", ward.logs());
    let (code, _) = h2_request(
        via,
        &[
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "admin.internal"),
            (":path", "/x"),
        ],
    );
    assert_eq!(code, 403);

    // Method case: `delete` would pass a DENY on DELETE and be served as DELETE.
    for m in ["delete", "DeLeTe", "Delete"] {
        let (code, body) = curl(&["-X", m, &format!("http://{via}/x")]);
        assert_eq!(code, 400, "{m}: {body}");
        let (code, _) = h2_request(
            via,
            &[
                (":method", m),
                (":scheme", "http"),
                (":authority", "public.example"),
                (":path", "/x"),
            ],
        );
        assert!(code == 400 || code == 0, "{m} over HTTP/2: {code}");
    }
    let (code, _) = curl(&["-X", "DELETE", &format!("http://{via}/x")]);
    assert_eq!(code, 403);

    let log = app.app_log();
    assert!(!log.contains("host=admin.internal"), "{log}");
    assert!(!log.contains("DELETE"), "{log}");
}

#[test]
fn an_http2_app_gets_the_authorized_authority() {
    if tools_missing("host_confusion_h2_app") {
        return;
    }
    let security = docs(&[mesh_pa("STRICT")]);
    let (mesh, _app, _ward) = mesh_with_hypercorn(63, "HTTP2", &security);
    let via = mesh.via_cli();
    // HTTP/1.1 client, HTTP/2 app: the app's :authority is the client's Host.
    let (code, body) = curl(&[&format!("http://{via}/x?q=1"), "-H", "Host: public.example"]);
    assert_eq!(code, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(view["http_version"], "2", "{view}");
    assert_eq!(view["host"], "public.example", "{view}");
    assert_eq!(view["path"], "/x", "{view}");
    assert_eq!(view["query"], "q=1", "{view}");
    // Absolute form: the target's authority.
    let text = raw(
        via,
        b"GET http://other.example/y HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    );
    assert_eq!(app_view(&text)["host"], "other.example", "{text}");
}

#[test]
fn path_and_method_override_headers_never_reach_the_app_unless_kept() {
    if tools_missing("override_headers") {
        return;
    }
    let headers = [
        "X-Original-URL: /admin",
        "X-Rewrite-URL: /admin",
        "X-HTTP-Method-Override: DELETE",
        "X-HTTP-Method: DELETE",
        "X-Method-Override: DELETE",
    ];
    let request = |via: SocketAddr| {
        let mut args = vec![format!("http://{via}/public/a")];
        for h in headers {
            args.push("-H".to_owned());
            args.push(h.to_owned());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, body) = curl(&args);
        assert_eq!(code, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    let (mesh, _app, ward) = mesh_with_hypercorn(64, "HTTP", &public_only());
    let view = request(mesh.via_cli());
    for h in headers {
        let name = h.split(':').next().unwrap().to_ascii_lowercase();
        assert_eq!(app_header(&view, &name), None, "{name}: {view}");
    }
    drop(ward);

    // The workload that needs them says so with an annotation.
    let mut mesh = Mesh::with_own_app(65);
    mesh.protocol = "HTTP";
    mesh.srv_annotations = vec!["ward.dev/keep-override-headers: \"true\"".to_owned()];
    let _app = Hypercorn::start(mesh.app_port, apps_dir(), "asgi_echo:app").unwrap();
    let _ward = mesh.up(&public_only(), &[]);
    let view = request(mesh.via_cli());
    assert_eq!(
        app_header(&view, "x-original-url").as_deref(),
        Some("/admin"),
        "{view}"
    );
    assert_eq!(
        app_header(&view, "x-http-method-override").as_deref(),
        Some("DELETE")
    );
}

/// A minimal WebSocket client over a raw stream (RFC 6455): handshake, masked text frames out,
/// unmasked small text frames in.
struct WebSocket(TcpStream);

impl WebSocket {
    fn open(addr: SocketAddr, path: &str) -> Result<WebSocket, String> {
        let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: srv\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut b).map_err(|e| e.to_string())? != 1 {
                return Err(format!("closed: {}", String::from_utf8_lossy(&head)));
            }
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        if !head.starts_with("HTTP/1.1 101") {
            return Err(head);
        }
        Ok(WebSocket(s))
    }

    fn send(&mut self, text: &str) -> std::io::Result<()> {
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![0x81, 0x80 | text.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.0.write_all(&frame)
    }

    fn recv(&mut self) -> std::io::Result<String> {
        let mut h = [0u8; 2];
        self.0.read_exact(&mut h)?;
        let mut payload = vec![0u8; (h[1] & 0x7f) as usize];
        self.0.read_exact(&mut payload)?;
        Ok(String::from_utf8_lossy(&payload).into_owned())
    }
}

#[test]
fn an_upgraded_connection_is_closed_when_policy_comes_to_deny_it() {
    if tools_missing("upgraded_recheck") {
        return;
    }
    let allow = docs(&[
        mesh_pa("STRICT"),
        srv_policy(
            "ws",
            "  rules:\n  - to:\n    - operation:\n        paths: [\"/ws\", \"/other\"]\n",
        ),
    ]);
    let (mesh, _app, ward) = mesh_with_hypercorn(66, "HTTP", &allow);
    let mut ws = WebSocket::open(mesh.via_cli(), "/ws").unwrap();
    ws.send("hello").unwrap();
    assert_eq!(ws.recv().unwrap(), "hello");
    // A second WebSocket that the new policy still allows stays open.
    let mut other = WebSocket::open(mesh.via_cli(), "/other").unwrap();

    let deny = docs(&[
        mesh_pa("STRICT"),
        srv_policy(
            "ws",
            "  rules:\n  - to:\n    - operation:\n        paths: [\"/other\"]\n",
        ),
    ]);
    ward.write_config("security.yaml", &deny).unwrap();
    let closed = ward.wait_for_log(
        &[("error", "closed by policy change")],
        Duration::from_secs(10),
    );
    assert!(closed.is_ok(), "no close logged:\n{}", ward.logs());
    // The denied WebSocket is gone: a send may still be buffered, but nothing comes back.
    let _ = ws.send("after");
    assert!(ws.recv().is_err(), "the denied WebSocket still echoes");
    // The allowed one still works.
    other.send("still").unwrap();
    assert_eq!(other.recv().unwrap(), "still");
    // And a new upgrade to the denied path is refused.
    let refused = WebSocket::open(mesh.via_cli(), "/ws")
        .err()
        .unwrap_or_default();
    assert!(refused.contains("403"), "{refused}");
}
