//! End to end: `ward verify mtls` asks a running `ward up` (real sidecars, real mTLS, on
//! 127.1.134.x) for a probe connection and reports what the handshake proved: the peer's
//! SPIFFE id and certificate serial (the same the peer's `/certs` shows), TLS 1.3 with
//! X25519MLKEM768, and the destination's decision. A plaintext destination, an unknown one and
//! an unreachable admin port each fail with their own exit code.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{SocketAddr, TcpListener};
use std::process::Command;

use common::{docs, mesh_pa, srv_policy, Mesh};

/// `ward verify mtls --admin A --from F --to T --json`: the exit code and the report.
fn verify(admin: SocketAddr, from: &str, to: &str) -> (i32, serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ward"))
        .args(["verify", "mtls", "--admin", &admin.to_string()])
        .args(["--from", from, "--to", to, "--json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap(), report, stderr)
}

/// The serial `/certs` shows for `workload`.
fn serial_of(admin: SocketAddr, workload: &str) -> String {
    let (_, body) = ward_test_support::http_get(admin, "/certs").unwrap();
    let certs: serde_json::Value = serde_json::from_str(&body).unwrap();
    certs["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["workload"] == workload)
        .unwrap()["serial"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn verify_mtls_reports_what_the_handshake_proved() {
    let mesh = Mesh::new(134);
    // A plaintext destination outside the mesh, with a real listener.
    let legacy = TcpListener::bind((mesh.ip(50).as_str(), 0)).unwrap();
    let legacy_port = legacy.local_addr().unwrap().port();
    let external = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: legacy\n  namespace: app\nspec:\n  hosts: [legacy.example.com]\n  location: MESH_EXTERNAL\n  resolution: STATIC\n  ports: [{{number: {legacy_port}, name: tcp-legacy, protocol: TCP}}]\n  endpoints: [{{address: {}}}]\n",
        mesh.ip(50)
    );
    let security = docs(&[
        mesh_pa("STRICT"),
        srv_policy(
            "deny-other",
            "  action: DENY\n  rules:\n  - from:\n    - source:\n        namespaces: [other]\n",
        ),
        external,
    ]);
    let ward = mesh.up(&security, &[]);
    let admin = ward.admin;

    // Allowed, mutual TLS 1.3: the exact certificates both sides hold.
    let (code, r, err) = verify(admin, "app/cli", "srv.app.svc.cluster.local:9000");
    assert_eq!(code, 0, "{r:#}\n{err}\nlog:\n{}", ward.logs());
    assert_eq!(r["mutualTls13"], true, "{r:#}");
    assert_eq!(r["transport"], "HBONE");
    assert_eq!(r["tlsVersion"], "TLSv1.3");
    assert_eq!(r["kxGroup"], "X25519MLKEM768");
    assert_eq!(r["decision"], "ALLOW");
    assert_eq!(r["connectStatus"], 200);
    assert_eq!(r["endpoint"], format!("{}:15008", mesh.ip(10)));
    assert_eq!(
        r["expectedIdentity"],
        "spiffe://cluster.local/ns/app/sa/srv"
    );
    assert_eq!(r["serverCert"]["identity"], r["expectedIdentity"]);
    assert_eq!(r["serverCert"]["serial"], serial_of(admin, "app/srv"));
    assert_eq!(
        r["clientCert"]["identity"],
        "spiffe://cluster.local/ns/app/sa/cli"
    );
    assert_eq!(r["clientCert"]["serial"], serial_of(admin, "app/cli"));
    assert!(
        r["serverCert"]["secondsLeft"].as_i64().unwrap() > 60,
        "{r:#}"
    );
    assert!(r["problems"].as_array().unwrap().is_empty(), "{r:#}");
    // The probe is logged.
    ward.wait_for_log(
        &[
            ("message", "verify: probe connection"),
            ("decision", "ALLOW"),
        ],
        std::time::Duration::from_secs(5),
    )
    .unwrap();

    // The same through the workload's address, and the human form.
    let (code, r, _) = verify(admin, "app/cli", &format!("{}:9000", mesh.ip(10)));
    assert_eq!(
        (code, &r["decision"]),
        (0, &serde_json::json!("ALLOW")),
        "{r:#}"
    );
    let text = Command::new(env!("CARGO_BIN_EXE_ward"))
        .args(["verify", "mtls", "--admin", &admin.to_string()])
        .args([
            "--from",
            "app/cli",
            "--to",
            "srv.app.svc.cluster.local:9000",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("PASS: mutual TLS 1.3 with the expected peer"),
        "{text}"
    );
    assert!(text.contains("TLSv1.3, X25519MLKEM768"), "{text}");

    // Denied by the destination's policy: still mutual TLS, the decision says DENY.
    let (code, r, _) = verify(admin, "other/oth", "srv.app.svc.cluster.local:9000");
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["decision"], "DENY", "{r:#}");
    assert_eq!(r["connectStatus"], 401, "{r:#}");
    assert_eq!(r["mutualTls13"], true, "{r:#}");

    // Plaintext: the sidecar would send these bytes unencrypted. Exit 1, and why.
    let (code, r, _) = verify(
        admin,
        "app/cli",
        &format!("legacy.example.com:{legacy_port}"),
    );
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(r["transport"], "PLAINTEXT", "{r:#}");
    assert_eq!(r["mutualTls13"], false);
    assert!(
        r["problems"][0].as_str().unwrap().contains("in plaintext"),
        "{r:#}"
    );
    drop(legacy);

    // Nothing the workload can reach by that name: exit 1.
    let (code, r, _) = verify(admin, "app/cli", "nowhere.example.com:443");
    assert_eq!(code, 1, "{r:#}");
    assert!(
        r["problems"][0].as_str().unwrap().contains("not a service"),
        "{r:#}"
    );

    // No such workload here, a bad target, and no admin port: exit 2 with the reason.
    let (code, _, err) = verify(admin, "app/ghost", "srv.app.svc.cluster.local:9000");
    assert_eq!(code, 2);
    assert!(err.contains("404") && err.contains("app/ghost"), "{err}");
    let (code, _, err) = verify(admin, "app/cli", "srv app");
    assert_eq!(code, 2);
    assert!(err.contains("400"), "{err}");
    let closed: SocketAddr = format!("127.0.0.1:{}", ward_test_support::free_port())
        .parse()
        .unwrap();
    let (code, _, err) = verify(closed, "app/cli", "srv.app.svc.cluster.local:9000");
    assert_eq!(code, 2);
    assert!(err.contains("cannot connect"), "{err}");
}
