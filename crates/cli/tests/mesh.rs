//! End to end: the real `ward up` binary, real sockets, real mTLS between sidecars.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{docs, mesh_pa, srv_policy, Mesh};
use ward_test_support::{echo_ok, echo_roundtrip, Ward};

/// Replace security.yaml and wait until the control plane applied it (generation bumped).
fn apply(ward: &Ward, security: &str) {
    let before = ward.admin_json("/config_dump").unwrap()["status"]["reloads"]
        .as_u64()
        .unwrap();
    ward.write_config("security.yaml", security).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let g = ward.admin_json("/config_dump").unwrap()["status"]["reloads"]
            .as_u64()
            .unwrap();
        if g > before {
            // The proxies get the new snapshot through their watch channel right after.
            std::thread::sleep(Duration::from_millis(200));
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("config not applied; log:\n{}", ward.logs());
}

#[test]
fn quickstart_example_allows_web_and_denies_batch() {
    let admin = format!("127.0.0.1:{}", ward_test_support::free_port())
        .parse()
        .unwrap();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/quickstart");
    let files = ward_test_support::yaml_files(dir);
    let ward = Ward::up(ward_test_support::UpOptions {
        bin: env!("CARGO_BIN_EXE_ward"),
        admin,
        files: files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect(),
        extra_args: vec![],
        env: vec![],
    })
    .unwrap();
    assert!(
        echo_ok("127.0.10.1:9000".parse().unwrap(), "hello from web"),
        "web → echo must work; log:\n{}",
        ward.logs()
    );
    assert!(
        !echo_ok("127.0.10.3:9000".parse().unwrap(), "hello from batch"),
        "batch → echo must be denied"
    );
    assert!(
        !echo_ok("127.0.10.2:9000".parse().unwrap(), "plaintext"),
        "plaintext to a STRICT port must fail"
    );

    // The allowed connection is recorded with both identities, TLS 1.3 and the PQ group, and the
    // policy that allowed it.
    let allowed = ward
        .wait_for_log(
            &[
                ("direction", "inbound"),
                ("authz.decision", "allow"),
                ("src.identity", "spiffe://cluster.local/ns/demo/sa/web"),
            ],
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(allowed["tls.version"], "TLSv1.3");
    assert_eq!(allowed["tls.kx_group"], "X25519MLKEM768");
    assert_eq!(allowed["authz.policy"], "demo/echo-allow-web");
    assert_eq!(
        allowed["dst.identity"],
        "spiffe://cluster.local/ns/demo/sa/echo"
    );
    // The denial names the reason: no ALLOW rule matched.
    let denied = ward
        .wait_for_log(
            &[
                ("direction", "inbound"),
                ("authz.decision", "deny"),
                ("src.identity", "ns/jobs/sa/batch"),
            ],
            Duration::from_secs(5),
        )
        .unwrap();
    assert!(
        denied["authz.detail"]
            .as_str()
            .unwrap()
            .contains("rbac_access_denied_matched_policy[none]"),
        "{denied}"
    );
    // Plaintext under STRICT is logged as such.
    ward.wait_for_log(
        &[("authz.detail", "peer_authentication_strict")],
        Duration::from_secs(5),
    )
    .unwrap();

    // Admin API: certificates carry SPIFFE ids; metrics carry Istio names.
    let certs = ward.admin_json("/certs").unwrap();
    let ids: Vec<String> = certs["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["spiffeId"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        ids.contains(&"spiffe://cluster.local/ns/demo/sa/echo".to_owned()),
        "{certs}"
    );
    let (status, metrics) = ward_test_support::http_get(ward.admin, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains("istio_tcp_connections_opened_total{"),
        "{metrics}"
    );
    assert!(
        metrics.contains("connection_security_policy=\"mutual_tls\""),
        "{metrics}"
    );
}

#[test]
fn strict_rejects_plaintext_permissive_accepts_disable_uses_plaintext() {
    let mesh = Mesh::new(1);
    let ward = mesh.up(&mesh_pa("STRICT"), &[]);
    assert!(echo_ok(mesh.via_cli(), "mtls works"));
    // Istio resets the connection; an empty reply would also mean nothing was served.
    if let Ok(v) = echo_roundtrip(mesh.srv_plain(), b"plaintext") {
        assert!(v.is_empty(), "STRICT must not serve plaintext, got {v:?}");
    }

    apply(&ward, &mesh_pa("PERMISSIVE"));
    assert!(
        echo_ok(mesh.srv_plain(), "plaintext now ok"),
        "PERMISSIVE accepts plaintext; log:\n{}",
        ward.logs()
    );
    assert!(echo_ok(mesh.via_cli(), "mtls still ok"));

    apply(&ward, &mesh_pa("DISABLE"));
    assert!(
        echo_ok(mesh.via_cli(), "auto-mtls sends plaintext"),
        "DISABLE + auto-mTLS; log:\n{}",
        ward.logs()
    );
    // The client sidecar knew the server is DISABLE and did not use HBONE for this connection.
    let out = ward
        .wait_for_log(
            &[
                ("direction", "outbound"),
                ("src.identity", "sa/cli"),
                ("bytes_sent", ""),
            ],
            Duration::from_secs(5),
        )
        .unwrap();
    // The record is written when the sidecar finishes the connection, just after the client
    // saw the end of it: poll for it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let plain = loop {
        let found = ward
            .log_lines_matching(&[("direction", "outbound"), ("src.identity", "sa/cli")])
            .into_iter()
            .any(|v| v.get("tls.version").is_none() && v.get("dst.hbone_addr").is_none());
        if found || Instant::now() > deadline {
            break found;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        plain,
        "expected a plaintext outbound record, first was {out}"
    );
    assert!(
        plain,
        "expected a plaintext outbound record, first was {out}"
    );
    assert!(echo_ok(
        mesh.srv_plain(),
        "plaintext client ok under DISABLE"
    ));
}

#[test]
fn authorization_at_l4() {
    let mesh = Mesh::new(2);
    let pa = mesh_pa("PERMISSIVE");
    let ward = mesh.up(&pa, &[]);
    let cases: Vec<(&str, String, bool, bool, bool)> = vec![
        // (name, policy spec, cli allowed, oth allowed, plaintext allowed)
        ("no policy", String::new(), true, true, true),
        ("allow-nothing (no rules)", String::new(), false, false, false),
        ("allow principal cli", "  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/ns/app/sa/cli\"]\n".into(), true, false, false),
        ("allow namespace other", "  rules:\n  - from:\n    - source:\n        namespaces: [\"other\"]\n".into(), false, true, false),
        ("deny namespace other", "  action: DENY\n  rules:\n  - from:\n    - source:\n        namespaces: [\"other\"]\n".into(), true, false, false),
        ("allow port 9001 only", "  rules:\n  - to:\n    - operation:\n        ports: [\"9001\"]\n".into(), false, false, false),
        ("allow port 9000", "  rules:\n  - to:\n    - operation:\n        ports: [\"9000\"]\n".into(), true, true, true),
        ("allow ipBlocks cli", format!("  rules:\n  - from:\n    - source:\n        ipBlocks: [\"{}/32\"]\n", mesh.ip(1)), true, false, false),
        ("deny notIpBlocks cli", format!("  action: DENY\n  rules:\n  - from:\n    - source:\n        notIpBlocks: [\"{}\"]\n", mesh.ip(1)), true, false, false),
        ("deny plaintext", "  action: DENY\n  rules:\n  - from:\n    - source:\n        notPrincipals: [\"*\"]\n".into(), true, true, false),
        ("allow L7-only rule on TCP fails closed", "  rules:\n  - to:\n    - operation:\n        methods: [\"GET\"]\n".into(), false, false, false),
        ("allow notNamespaces app", "  rules:\n  - from:\n    - source:\n        notNamespaces: [\"app\"]\n".into(), false, true, false),
    ];
    for (name, spec, cli_ok, oth_ok, plain_ok) in cases {
        let security = if name == "no policy" {
            pa.clone()
        } else {
            docs(&[pa.clone(), srv_policy("p", &spec)])
        };
        apply(&ward, &format!("{security}\n# case: {name}\n"));
        assert_eq!(echo_ok(mesh.via_cli(), "x"), cli_ok, "case {name:?}: cli");
        assert_eq!(echo_ok(mesh.via_oth(), "x"), oth_ok, "case {name:?}: oth");
        assert_eq!(
            echo_ok(mesh.srv_plain(), "x"),
            plain_ok,
            "case {name:?}: plaintext"
        );
    }
}

#[test]
fn hot_reload_closes_open_connections_and_rejects_bad_edits_whole() {
    let mesh = Mesh::new(3);
    let ward = mesh.up(&mesh_pa("STRICT"), &[]);
    let mut open = TcpStream::connect(mesh.via_cli()).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    open.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    open.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");

    // An invalid edit: unknown field. Rejected whole, with file and line; old config keeps serving.
    let bad = docs(&[
        mesh_pa("STRICT"),
        srv_policy("deny-cli", "  action: DENY\n  rules:\n  - from:\n    - source:\n        principal: [\"cluster.local/ns/app/sa/cli\"]\n"),
    ]);
    ward.write_config("security.yaml", &bad).unwrap();
    let rejected = ward
        .wait_for_log(&[("message", "config rejected")], Duration::from_secs(10))
        .unwrap();
    let msg = rejected["message"].as_str().unwrap();
    assert!(
        msg.contains("security.yaml:"),
        "the rejection names the file and line: {msg}"
    );
    assert!(
        msg.contains("principal"),
        "the rejection names the field: {msg}"
    );
    assert!(
        echo_ok(mesh.via_cli(), "still served"),
        "last good config keeps serving"
    );
    open.write_all(b"pong").unwrap();
    open.read_exact(&mut buf).unwrap();
    assert_eq!(
        &buf, b"pong",
        "the open connection survives a rejected edit"
    );

    // A valid DENY: new connections are denied and the open one is closed.
    let deny = docs(&[
        mesh_pa("STRICT"),
        srv_policy("deny-cli", "  action: DENY\n  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/ns/app/sa/cli\"]\n"),
    ]);
    apply(&ward, &deny);
    assert!(!echo_ok(mesh.via_cli(), "denied now"));
    let closed = match open.write_all(b"more").and_then(|_| open.read(&mut buf)) {
        Ok(0) | Err(_) => true,
        Ok(_) => false,
    };
    assert!(
        closed,
        "an open connection must be closed when policy now denies it"
    );
    let rec = ward
        .wait_for_log(
            &[("error", "closed by policy change")],
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(rec["authz.policy"], "app/deny-cli");
}

#[test]
fn certificate_rotation_under_traffic_drops_nothing() {
    let mesh = Mesh::new(4);
    let ward = mesh.up(&mesh_pa("STRICT"), &["--cert-ttl", "4s"]);
    let serial = |w: &Ward| -> Vec<String> {
        let c = w.admin_json("/certs").unwrap();
        c["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["serial"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    let first = serial(&ward);
    // One long-lived connection across several rotations, plus new connections all along.
    let mut long = TcpStream::connect(mesh.via_cli()).unwrap();
    long.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let start = Instant::now();
    let (mut ok, mut failed) = (0, 0);
    let mut buf = [0u8; 5];
    while start.elapsed() < Duration::from_secs(10) {
        if echo_ok(mesh.via_cli(), "rotate") {
            ok += 1;
        } else {
            failed += 1;
        }
        long.write_all(b"alive").unwrap();
        long.read_exact(&mut buf).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let last = serial(&ward);
    assert_eq!(
        failed,
        0,
        "{ok} ok, {failed} failed during rotation; log:\n{}",
        ward.logs()
    );
    assert!(ok > 50);
    for (a, b) in first.iter().zip(&last) {
        assert_ne!(
            a, b,
            "every certificate must have rotated in 10 s with a 4 s TTL"
        );
    }
    let installs = ward
        .log_lines_matching(&[
            ("message", "workload certificate installed"),
            ("identity", "sa/srv"),
        ])
        .len();
    assert!(
        installs >= 3,
        "srv's certificate was renewed {installs} times"
    );
}

#[test]
fn peer_authentication_scopes_and_port_level_mtls() {
    let mesh = Mesh::new(8);
    let ns_permissive = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: ns-wide\n  namespace: app\nspec:\n  mtls:\n    mode: PERMISSIVE\n".to_owned();
    let workload = |body: &str| {
        format!("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: srv-only\n  namespace: app\nspec:\n  selector:\n    matchLabels:\n      app: srv\n{body}")
    };
    // Mesh STRICT, namespace PERMISSIVE: the namespace wins for srv.
    let ward = mesh.up(&docs(&[mesh_pa("STRICT"), ns_permissive.clone()]), &[]);
    assert!(echo_ok(mesh.srv_plain(), "namespace says permissive"));
    // A workload PA whose mode is UNSET inherits PERMISSIVE; its port 9000 is STRICT.
    apply(
        &ward,
        &docs(&[
            mesh_pa("STRICT"),
            ns_permissive.clone(),
            workload("  portLevelMtls:\n    9000:\n      mode: STRICT\n"),
        ]),
    );
    assert!(
        !echo_ok(mesh.srv_plain(), "port-level strict"),
        "portLevelMtls STRICT must refuse plaintext"
    );
    assert!(echo_ok(mesh.via_cli(), "mtls ok"));
    let rec = ward.wait_for_log(
        &[
            ("authz.detail", "peer_authentication_strict"),
            ("authz.policy", "app/srv-only"),
        ],
        Duration::from_secs(5),
    );
    assert!(
        rec.is_ok(),
        "the refusal names the workload PeerAuthentication"
    );
    // Workload-level DISABLE beats the namespace; port 9000 UNSET inherits it.
    apply(
        &ward,
        &docs(&[
            mesh_pa("STRICT"),
            ns_permissive,
            workload(
                "  mtls:\n    mode: DISABLE\n  portLevelMtls:\n    9000:\n      mode: UNSET\n",
            ),
        ]),
    );
    assert!(echo_ok(mesh.srv_plain(), "disable"));
    assert!(echo_ok(mesh.via_cli(), "auto-mtls plaintext"));
}

#[test]
fn an_app_dying_mid_stream_is_a_reset_never_a_clean_end() {
    let app = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let mut mesh = Mesh::with_own_app(9);
    mesh.app_port = app.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in app.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 16];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"partial");
            std::thread::sleep(Duration::from_millis(100));
            // Die abruptly: RST instead of FIN.
            let _ = socket2::SockRef::from(&conn).set_linger(Some(Duration::ZERO));
            drop(conn);
        }
    });
    let _ward = mesh.up(&mesh_pa("STRICT"), &[]);
    let mut client = TcpStream::connect(mesh.via_cli()).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client.write_all(b"request").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    let end = loop {
        match client.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break Err(e),
        }
    };
    let err = end.expect_err("the client must see a reset, not a clean end of stream");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    assert!(got.is_empty() || got == b"partial", "{got:?}");
}

/// Two `ward up` processes on the same YAML, as on two hosts: each runs only its own
/// workloads' sidecars (`--workloads`) and they share one CA (the second reads the first's
/// `--state-dir`). The control: a process with a CA of its own cannot reach the server.
#[test]
fn two_processes_split_the_workloads_and_share_one_ca() {
    let mesh = Mesh::new(10);
    let security = docs(&[
        mesh_pa("STRICT"),
        srv_policy(
            "allow-cli",
            "  action: ALLOW\n  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/ns/app/sa/cli\"]\n",
        ),
    ]);
    let server = mesh.up(&security, &["--workloads", "app/srv"]);
    let state = server.dir().join("../state").to_string_lossy().into_owned();
    assert!(
        !echo_ok(mesh.via_cli(), "nobody runs cli yet"),
        "the server process must not run cli's egress listener"
    );
    let client = mesh.up(
        &security,
        &["--workloads", "app/cli", "--state-dir", &state],
    );
    assert!(
        echo_ok(mesh.via_cli(), "across processes"),
        "server log:\n{}\nclient log:\n{}",
        server.logs(),
        client.logs()
    );
    assert!(
        !echo_ok(mesh.via_oth(), "oth is hosted nowhere"),
        "no process runs oth's sidecar"
    );
    // Each side logged its half of the connection, with the other's verified identity.
    server
        .wait_for_log(
            &[
                ("direction", "inbound"),
                ("src.identity", "spiffe://cluster.local/ns/app/sa/cli"),
            ],
            Duration::from_secs(5),
        )
        .unwrap();
    client
        .wait_for_log(
            &[
                ("direction", "outbound"),
                ("dst.identity", "spiffe://cluster.local/ns/app/sa/srv"),
            ],
            Duration::from_secs(5),
        )
        .unwrap();
    drop(client);

    // The same client with a root of its own: the server refuses its certificate.
    let stranger = mesh.up(&security, &["--workloads", "app/cli"]);
    assert!(
        !echo_ok(mesh.via_cli(), "other CA"),
        "a sidecar whose certificate chains to another root must not get through"
    );
    stranger
        .wait_for_log(
            &[
                ("direction", "outbound"),
                ("error", "invalid peer certificate"),
            ],
            Duration::from_secs(5),
        )
        .unwrap();
    drop(stranger);

    // A name that is no WorkloadEntry is an error at start, naming it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ward"))
        .args(["up", "-f"])
        .arg(server.dir())
        .args(["--state-dir", &state, "--admin", "127.0.0.1:0"])
        .args(["--workloads", "app/nope"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no WorkloadEntry app/nope"),
        "stderr: {stderr}"
    );
}
