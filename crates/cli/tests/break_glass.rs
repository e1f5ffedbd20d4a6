//! End to end: `ward break-glass` on a running `ward up --audit-dir` (real sidecars, real mTLS,
//! on 127.1.151.x). srv's HTTP port allows only namespace `other`, so cli's requests get 403.
//! A grant for srv lets them through, each such request's access record names the grant, a
//! plaintext request is still refused (STRICT stays), the grant ends by itself at its ttl (an
//! upgraded connection it let in is closed then) and can be revoked early, bad input is
//! refused, and `ward audit verify` proves the trail of it all (granted, used, expired,
//! revoked) complete and signed.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::time::Duration;

use common::{docs, mesh_pa, srv_policy, Mesh};

/// A tiny HTTP app on `port`: answers every request `200 hello`, and an `Upgrade: demo-proto`
/// request with 101, then echoes raw bytes (a WebSocket stand-in).
fn serve_app(port: u16) {
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                if String::from_utf8_lossy(&got)
                    .to_ascii_lowercase()
                    .contains("upgrade: demo-proto")
                {
                    let _ = s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: demo-proto\r\n\r\n");
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    return;
                }
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
                );
            });
        }
    });
}

fn ward(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ward"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn grant(admin: SocketAddr, ttl: &str, reason: &str) -> (i32, serde_json::Value, String) {
    let (code, out, err) = ward(&[
        "break-glass",
        "--admin",
        &admin.to_string(),
        "--workload",
        "app/srv",
        "--ttl",
        ttl,
        "--reason",
        reason,
        "--by",
        "alice",
        "--json",
    ]);
    (
        code,
        serde_json::from_str(&out).unwrap_or(serde_json::Value::Null),
        err,
    )
}

fn status(via: SocketAddr) -> u16 {
    ward_test_support::http_get(via, "/fhir/Patient?name=x")
        .map(|(s, _)| s)
        .unwrap_or(0)
}

const WHY: &str = "INC-7: cli blocked by the new srv policy";

#[test]
fn break_glass_lifts_denials_for_its_ttl_and_is_on_the_record() {
    let mesh = Mesh::with_own_app(151).http();
    serve_app(mesh.app_port);
    let audit = tempfile::tempdir().unwrap();
    let security = docs(&[
        mesh_pa("STRICT"),
        srv_policy(
            "only-other",
            "  action: ALLOW\n  rules:\n  - from:\n    - source:\n        namespaces: [other]\n",
        ),
    ]);
    let w = mesh.up(&security, &["--audit-dir", audit.path().to_str().unwrap()]);
    let admin = w.admin;
    assert_eq!(status(mesh.via_cli()), 403, "{}", w.logs());

    // Bad input grants nothing: over the cap (flag check), a short reason, no such workload.
    let (code, _, err) = grant(admin, "5h", WHY);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("at most 4h"), "{err}");
    let (code, _, err) = grant(admin, "1h", "because");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("400") && err.contains("reason"), "{err}");
    let (code, _, err) = ward(&[
        "break-glass",
        "--admin",
        &admin.to_string(),
        "--workload",
        "app/ghost",
        "--ttl",
        "1h",
        "--reason",
        WHY,
        "--by",
        "alice",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("404"), "{err}");
    assert_eq!(status(mesh.via_cli()), 403);

    // A 5 s grant: cli's requests pass, and each says so in the access log.
    let (code, g, err) = grant(admin, "5s", WHY);
    assert_eq!(code, 0, "{err}\n{}", w.logs());
    let id = g["id"].as_str().unwrap().to_owned();
    assert_eq!(g["status"], "active");
    assert_eq!(g["requestedBy"], "alice");
    assert!(g["requestedFrom"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert_eq!(
        g["expiresAt"].as_u64().unwrap() - g["grantedAt"].as_u64().unwrap(),
        5
    );
    assert_eq!(status(mesh.via_cli()), 200, "{}", w.logs());
    let line = w
        .wait_for_log(
            &[("message", "request complete"), ("ward.break_glass", &id)],
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(line["authz.decision"], "allow", "{line}");
    assert_eq!(line["response_code"], 200, "{line}");
    // An upgraded connection (WebSocket-like) let in by the grant carries bytes until it ends.
    let mut ws = std::net::TcpStream::connect(mesh.via_cli()).unwrap();
    ws.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    ws.write_all(
        b"GET /ws HTTP/1.1\r\nhost: srv\r\nconnection: upgrade\r\nupgrade: demo-proto\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            ws.read(&mut b).unwrap(),
            1,
            "{}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    ws.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    ws.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    // A second grant while one is active: 409.
    let (code, _, err) = grant(admin, "1h", WHY);
    assert_eq!(code, 1);
    assert!(err.contains("409"), "{err}");
    // PeerAuthentication is not lifted: plaintext to srv is still refused.
    assert!(ward_test_support::http_get(mesh.srv_plain(), "/").is_err());

    // The upgraded connection still works just before the grant ends...
    ws.write_all(b"pong").unwrap();
    ws.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong");

    // It ends by itself.
    let expires = std::time::UNIX_EPOCH + Duration::from_secs(g["expiresAt"].as_u64().unwrap());
    if let Ok(left) = expires.duration_since(std::time::SystemTime::now()) {
        std::thread::sleep(left + Duration::from_millis(300));
    }
    // ...and is closed at the expiry (EOF or reset, not a timeout).
    let mut rest = Vec::new();
    if let Err(e) = ws.read_to_end(&mut rest) {
        assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the upgraded connection outlived its grant"
        );
    }
    assert!(rest.is_empty());
    assert_eq!(status(mesh.via_cli()), 403);
    w.wait_for_log(
        &[("message", "break-glass expired"), ("grant", &id)],
        Duration::from_secs(5),
    )
    .unwrap();

    // Granted again and revoked early.
    let (code, g2, err) = grant(admin, "1h", WHY);
    assert_eq!(code, 0, "{err}");
    let id2 = g2["id"].as_str().unwrap().to_owned();
    assert_eq!(status(mesh.via_cli()), 200);
    let (code, out, err) = ward(&[
        "break-glass",
        "--admin",
        &admin.to_string(),
        "--revoke",
        &id2,
        "--by",
        "bob",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("revoked"), "{out}");
    assert_eq!(status(mesh.via_cli()), 403);

    // The list says what happened.
    let (code, out, _) = ward(&[
        "break-glass",
        "--admin",
        &admin.to_string(),
        "--list",
        "--json",
    ]);
    assert_eq!(code, 0);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let grants = list["grants"].as_array().unwrap();
    assert_eq!(grants.len(), 2, "{list:#}");
    assert_eq!(grants[0]["status"], "expired");
    assert_eq!(grants[0]["uses"], 2, "the request and the upgrade");
    assert_eq!(grants[1]["status"], "revoked");
    assert_eq!(grants[1]["revokedBy"], "bob");

    // The trail holds all of it and verifies against the mesh root.
    let root = w.dir().parent().unwrap().join("state/ca/root-cert.pem");
    // The control plane's own trail; the sidecars' are beside it (`<ns>/<name>/`).
    let cp_trail = audit.path().join("istio-system/ward-control-plane");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (code, out, err) = ward(&[
            "audit",
            "verify",
            "--root",
            root.to_str().unwrap(),
            cp_trail.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{out}{err}");
        if !out.contains("not sealed") || std::time::Instant::now() > deadline {
            assert!(out.starts_with("OK:"), "{out}");
            assert!(out.contains("ward-control-plane"), "{out}");
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let trail = std::fs::read_to_string(cp_trail.join("audit-000000.jsonl")).unwrap();
    let kinds: Vec<String> = trail
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| v["type"].as_str().unwrap().to_owned())
        .filter(|t| t.starts_with("break_glass"))
        .collect();
    assert_eq!(
        kinds,
        [
            "break_glass_granted",
            "break_glass_use",
            "break_glass_use",
            "break_glass_expired",
            "break_glass_granted",
            "break_glass_use",
            "break_glass_revoked"
        ],
        "{trail}"
    );
    assert!(trail.contains(WHY));
    // The use record names the request without its query string.
    assert!(trail.contains("\"path\":\"/fhir/Patient\""), "{trail}");
    assert!(!trail.contains("name=x"), "{trail}");

    // The server sidecar's own trail says what it served under a grant: allowed, by
    // BREAK_GLASS, naming the grant; what it refused outside one stays a denial.
    // The sidecar writes its trail in batches, off the data path: wait for the last one.
    let srv_trail = audit.path().join("app/srv/audit-000000.jsonl");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (srv, decisions) = loop {
        let srv = std::fs::read_to_string(&srv_trail).unwrap();
        let decisions: Vec<serde_json::Value> = srv
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["type"] == "decision")
            .collect();
        let lifted = decisions
            .iter()
            .filter(|v| v["action"] == "BREAK_GLASS")
            .count();
        if lifted >= 3 || std::time::Instant::now() > deadline {
            break (srv, decisions);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let lifted: Vec<&serde_json::Value> = decisions
        .iter()
        .filter(|v| v["action"] == "BREAK_GLASS")
        .collect();
    assert_eq!(lifted.len(), 3, "one per break_glass_use: {srv}");
    for v in &lifted {
        assert_eq!(v["decision"], "allow", "{v}");
        assert!(
            v["break_glass"].as_str().is_some_and(|g| !g.is_empty()),
            "{v}"
        );
    }
    assert!(
        decisions
            .iter()
            .any(|v| v["decision"] == "deny" && v.get("break_glass").is_none()),
        "{srv}"
    );
}
