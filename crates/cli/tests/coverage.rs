//! End to end: `ward verify coverage` reads what a running `ward up` (real sidecars, real mTLS,
//! on 127.1.150.x) served. Under a mesh-wide PERMISSIVE PeerAuthentication, requests through
//! the client's sidecar arrive over mTLS (X25519MLKEM768) and requests sent straight to the
//! workload's port arrive in plaintext; the report gives the share per workload pair and lists
//! the plaintext flow with its port and the PeerAuthentication that allowed it, and the command
//! exits 1 (a CI gate). Bad input and an unreachable admin port exit 2. Without an audit trail
//! (`--no-audit`) a break-glass grant is refused.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;

use common::{mesh_pa, Mesh};

/// A tiny HTTP/1.0 app on `port`: answers every request `200 hello`.
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
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
                );
            });
        }
    });
}

/// `ward verify coverage --admin A ARGS`: the exit code, stdout and stderr.
fn coverage(admin: SocketAddr, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ward"))
        .args(["verify", "coverage", "--admin", &admin.to_string()])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(admin: SocketAddr) -> (i32, serde_json::Value) {
    let (code, out, err) = coverage(admin, &["--since", "10m", "--json"]);
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    (code, v)
}

#[test]
fn coverage_shows_the_mtls_share_and_every_plaintext_flow() {
    let mesh = Mesh::with_own_app(150).http();
    serve_app(mesh.app_port);
    let ward = mesh.up(&mesh_pa("PERMISSIVE"), &["--no-audit"]);
    let admin = ward.admin;

    // Nothing served yet: nothing to fail on, and no share (not 0 %).
    let (code, r) = json(admin);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["connections"], 0, "{r:#}");
    assert!(r["mtlsConnectionShare"].is_null(), "{r:#}");

    // Three requests through cli's sidecar: mTLS all the way.
    for _ in 0..3 {
        let (status, body) = ward_test_support::http_get(mesh.via_cli(), "/").unwrap();
        assert_eq!((status, body.as_str()), (200, "hello"), "{}", ward.logs());
    }
    let (code, r) = json(admin);
    assert_eq!(code, 0, "{r:#}\n{}", ward.logs());
    let pairs = r["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 1, "{r:#}");
    assert_eq!(pairs[0]["source"], "app/cli");
    assert_eq!(pairs[0]["destination"], "app/srv");
    assert_eq!(pairs[0]["mtlsConnectionShare"], 1.0, "{r:#}");
    assert_eq!(pairs[0]["requests"], 3, "{r:#}");
    assert_eq!(pairs[0]["mtlsRequests"], 3, "{r:#}");
    assert!(
        r["keyExchange"]["X25519MLKEM768"].as_u64().unwrap() >= 1,
        "{r:#}"
    );

    // Two requests straight to srv's port, no sidecar on the client: PERMISSIVE lets them in.
    for _ in 0..2 {
        let (status, _) = ward_test_support::http_get(mesh.srv_plain(), "/").unwrap();
        assert_eq!(status, 200);
    }
    let (code, r) = json(admin);
    assert_eq!(code, 1, "plaintext seen: the gate fails\n{r:#}");
    assert_eq!(r["requests"], 5, "{r:#}");
    assert_eq!(r["mtlsRequests"], 3, "{r:#}");
    assert_eq!(r["mtlsRequestShare"], 0.6, "{r:#}");
    let plain = r["plaintext"].as_array().unwrap();
    assert_eq!(plain.len(), 1, "{r:#}");
    assert_eq!(plain[0]["destination"], "app/srv");
    assert_eq!(plain[0]["port"], 9000);
    assert_eq!(plain[0]["peerAuthentication"], "istio-system/default");
    assert_eq!(plain[0]["mode"], "PERMISSIVE");
    assert_eq!(plain[0]["connections"], 2);
    assert_eq!(plain[0]["requests"], 2);
    assert!(plain[0]["sourceAddress"]
        .as_str()
        .unwrap()
        .starts_with("127."));
    let unknown = r["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["source"] == "unknown")
        .unwrap();
    assert_eq!(unknown["mtlsRequestShare"], 0.0, "{r:#}");

    // The human form says the same.
    let (code, text, _) = coverage(admin, &[]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("3 of 5 requests (60.0%)"), "{text}");
    assert!(text.contains("FAIL: 1 plaintext flows"), "{text}");
    assert!(
        text.contains("-> app/srv port 9000: 2 connections, 2 requests, allowed by istio-system/default (PERMISSIVE)"),
        "{text}"
    );

    // No audit trail (--no-audit): a break-glass grant is refused, nothing is lifted.
    let out = Command::new(env!("CARGO_BIN_EXE_ward"))
        .args([
            "break-glass",
            "--admin",
            &admin.to_string(),
            "--workload",
            "app/srv",
        ])
        .args([
            "--ttl",
            "10m",
            "--reason",
            "INC-3: testing the refusal",
            "--by",
            "ci",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("503") && err.contains("--no-audit"), "{err}");

    // Bad input and no admin port: exit 2 with the reason.
    let (code, _, err) = coverage(admin, &["--since", "2d"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("24h"), "{err}");
    let (status, body) = ward_test_support::http_get(admin, "/coverage?since=x").unwrap();
    assert_eq!(status, 400, "{body}");
    let closed: SocketAddr = format!("127.0.0.1:{}", ward_test_support::free_port())
        .parse()
        .unwrap();
    let (code, _, err) = coverage(closed, &[]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot connect"), "{err}");
}
