//! The proxies' audit trail end to end: real `ward up`, real traffic (curl to nginx at L7, TCP
//! through the mesh at L4), then `ward audit verify` on what the sidecars wrote; and a trail
//! that cannot be written (a full tmpfs, a directory that cannot exist) is loud: a metric, an
//! error log, `/ready` degraded, and a fail-closed workload refuses (docs/audit.md).
//! Addresses: 127.1.145.x - 127.1.149.x.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{docs, mesh_pa, srv_policy, Mesh};
use serde_json::Value;
use ward_test_support::{curl, echo_ok, have, http_get, is_root, skip_or_fail, Nginx, Ward};

const BIN: &str = env!("CARGO_BIN_EXE_ward");

/// The mesh root `ward up` created under its state dir.
fn root_cert(ward: &Ward) -> PathBuf {
    let state = ward.state_dir();
    [state.join("ca/root-cert.pem"), state.join("root-cert.pem")]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no root-cert.pem under {}", state.display()))
}

/// `ward audit verify --json` on a trail directory: exit code and report.
fn verify(root: &Path, trail: &Path) -> (i32, Value) {
    let out = Command::new(BIN)
        .args(["audit", "verify", "--json", "--root"])
        .arg(root)
        .arg(trail)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "not a report ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), report)
}

/// Every record of a trail directory, in file order.
fn records(trail: &Path) -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(trail)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The value of one metric series in `/metrics` (the first line starting with `series`).
fn metric(ward: &Ward, series: &str) -> Option<f64> {
    let (_, text) = http_get(ward.admin, "/metrics").ok()?;
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Retry `f` every 100 ms until it is true or `limit` passes.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn every_decision_is_in_a_trail_that_verifies() {
    if !have("nginx") || !have("curl") {
        return skip_or_fail(
            "audit_trail",
            "nginx and curl are needed (apt-get install nginx curl)",
        );
    }
    let mesh = Mesh::with_own_app(145).http();
    let _nginx = Nginx::start(mesh.app_port, "ok").unwrap();
    let policy = docs(&[
        mesh_pa("STRICT"),
        srv_policy(
            "readers",
            "  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/ns/app/sa/cli\"]\n    to:\n    - operation:\n        methods: [\"GET\"]\n",
        ),
        srv_policy(
            "no-admin",
            "  action: DENY\n  rules:\n  - to:\n    - operation:\n        paths: [\"/admin*\"]\n",
        ),
        srv_policy(
            "phi-reads",
            "  action: AUDIT\n  rules:\n  - to:\n    - operation:\n        paths: [\"/fhir/*\"]\n",
        ),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: trial\n  namespace: app\n  annotations:\n    istio.io/dry-run: \"true\"\nspec:\n  selector:\n    matchLabels:\n      app: srv\n  action: DENY\n  rules:\n  - to:\n    - operation:\n        paths: [\"/fhir/Patient/*\"]\n".to_owned(),
    ]);
    let mut ward = mesh.up(&policy, &[]);
    let url = |via: std::net::SocketAddr, path: &str| format!("http://{via}{path}");

    let (code, body) = curl(&[
        &url(mesh.via_cli(), "/fhir/Patient/7?name=Jane-Secret"),
        "-H",
        "x-request-id: rid-allowed",
    ]);
    assert_eq!(code, 200, "{body}\n{}", ward.logs());
    let (code, _) = curl(&["-X", "POST", &url(mesh.via_cli(), "/fhir/Patient")]);
    assert_eq!(code, 403);
    let (code, _) = curl(&[&url(mesh.via_cli(), "/admin/users")]);
    assert_eq!(code, 403);
    let (code, _) = curl(&[&url(mesh.via_oth(), "/fhir/Patient/7")]);
    assert_eq!(code, 403);
    // Plaintext to srv's port under STRICT: refused by the PeerAuthentication.
    let _ = echo_ok(mesh.srv_plain(), "GET / HTTP/1.0\r\n\r\n");

    // A clean stop seals the trail with a last checkpoint.
    assert!(
        ward.stop(Duration::from_secs(15)).is_some(),
        "ward did not stop"
    );
    let trail = ward.state_dir().join("audit/app/srv");
    let (code, report) = verify(&root_cert(&ward), &trail);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["unsealed"], 0, "every record sealed: {report:#}");
    assert!(
        report["signers"]
            .to_string()
            .contains("spiffe://cluster.local/ns/app/sa/srv"),
        "signed by srv's workload certificate: {report:#}"
    );
    // The other sidecars' trails verify too.
    for other in ["audit/app/cli", "audit/other/oth"] {
        let (code, report) = verify(&root_cert(&ward), &ward.state_dir().join(other));
        assert_eq!(code, 0, "{other}: {report:#}");
    }

    let all = records(&trail);
    let text = all
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        !text.contains("Jane-Secret"),
        "no query string in the trail:\n{text}"
    );
    let decisions: Vec<&Value> = all.iter().filter(|r| r["type"] == "decision").collect();
    let find = |f: &dyn Fn(&Value) -> bool| decisions.iter().find(|r| f(r)).copied();
    let allowed = find(&|r| r["request_id"] == "rid-allowed").unwrap_or_else(|| panic!("{text}"));
    assert_eq!(allowed["decision"], "allow");
    assert_eq!(allowed["action"], "ALLOW");
    assert_eq!(allowed["policy"], "app/readers");
    assert_eq!(allowed["rule"], 0);
    assert_eq!(allowed["method"], "GET");
    assert_eq!(allowed["path"], "/fhir/Patient/7");
    assert_eq!(allowed["protocol"], "http");
    assert_eq!(
        allowed["src_identity"],
        "spiffe://cluster.local/ns/app/sa/cli"
    );
    assert_eq!(
        allowed["dst_identity"],
        "spiffe://cluster.local/ns/app/sa/srv"
    );
    assert_eq!(allowed["proxy"], "spiffe://cluster.local/ns/app/sa/srv");
    assert!(
        allowed["src_addr"].as_str().unwrap().starts_with("127."),
        "{allowed}"
    );
    assert_eq!(allowed["dst_addr"], "127.1.145.10:9000");
    assert_eq!(allowed["audit"][0]["policy"], "app/phi-reads", "{allowed}");
    assert_eq!(allowed["dry_run"][0]["policy"], "app/trial", "{allowed}");
    assert_eq!(allowed["dry_run"][0]["would"], "deny", "{allowed}");

    let post = find(&|r| r["method"] == "POST").unwrap_or_else(|| panic!("{text}"));
    assert_eq!(post["decision"], "deny");
    let admin = find(&|r| r["path"] == "/admin/users").unwrap_or_else(|| panic!("{text}"));
    assert_eq!(
        (&admin["decision"], &admin["action"], &admin["policy"]),
        (&"deny".into(), &"DENY".into(), &"app/no-admin".into())
    );
    let oth = find(&|r| r["src_identity"] == "spiffe://cluster.local/ns/other/sa/oth")
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(oth["decision"], "deny");
    let plain = find(&|r| r["action"] == "PEER_AUTHENTICATION").unwrap_or_else(|| panic!("{text}"));
    assert_eq!(
        (&plain["decision"], &plain["protocol"]),
        (&"deny".into(), &"tcp".into())
    );
    assert!(plain.get("src_identity").is_none(), "{plain}");
}

/// A tmpfs of `size` mounted at `dir`; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs at {}", dir.display());
        Tmpfs(dir.to_owned())
    }

    /// Fill what is left with one file; returns its path.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = [0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        // Single bytes too, so not even a short record fits.
        while f.write_all(&[0]).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A TCP mesh on `block` whose srv allows cli, with srv's `ward.dev/audit-on-failure`, its
/// trails under `audit_dir`.
fn tcp_mesh(block: u8, on_failure: &str, audit_dir: &Path) -> (Mesh, Ward) {
    let mut mesh = Mesh::new(block);
    mesh.srv_annotations = vec![format!("ward.dev/audit-on-failure: {on_failure}")];
    let policy = docs(&[
        mesh_pa("STRICT"),
        srv_policy(
            "from-cli",
            "  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/ns/app/sa/cli\"]\n",
        ),
    ]);
    let ward = mesh.up(&policy, &["--audit-dir", audit_dir.to_str().unwrap()]);
    (mesh, ward)
}

#[test]
fn a_full_disk_is_loud_and_fail_closed_refuses_until_it_is_fixed() {
    if !is_root() {
        return skip_or_fail("audit_full_disk", "mounting a tmpfs needs root");
    }
    let tmp = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&tmp.path().join("audit"), "256k");
    let (mesh, mut ward) = tcp_mesh(146, "fail-closed", &disk.0);
    assert!(echo_ok(mesh.via_cli(), "before"), "{}", ward.logs());

    let filler = disk.fill();
    // The trail file's last page still takes a few records; the first decision whose record
    // does not fit makes the trail fail, and from then on srv refuses what it cannot record.
    assert!(
        eventually(Duration::from_secs(20), || !echo_ok(mesh.via_cli(), "full")),
        "a fail-closed workload keeps serving on a full disk\n{}",
        ward.logs()
    );
    // A short record (a gap record) may still fit the page's slack for a moment; with traffic
    // (each refusal is a record that does not fit) the trail is failing.
    let mut last = (0, String::new());
    assert!(
        eventually(Duration::from_secs(10), || {
            let _ = echo_ok(mesh.via_cli(), "full");
            last = http_get(ward.admin, "/ready").unwrap();
            last.0 == 503 && metric(&ward, "ward_audit_trail_up{workload=\"app/srv\"}") == Some(0.0)
        }),
        "{last:?}"
    );
    assert!(
        last.1.contains("app/srv: audit trail") && last.1.contains("fail-closed"),
        "{last:?}"
    );
    // The write that failed first may have held no decision (a checkpoint due on the timer);
    // the refusals that follow are records that cannot be written, counted once their batch
    // is tried (within the writer's group-commit window).
    assert!(
        eventually(Duration::from_secs(10), || {
            let _ = echo_ok(mesh.via_cli(), "full");
            metric(
                &ward,
                "ward_audit_write_failures_total{workload=\"app/srv\"}",
            )
            .is_some_and(|n| n >= 1.0)
        }),
        "{}",
        ward.logs()
    );
    assert!(
        !ward
            .log_lines_matching(&[("target", "audit"), ("message", "cannot be written")])
            .is_empty(),
        "an error log: {}",
        ward.logs()
    );
    assert!(
        !ward
            .log_lines_matching(&[("response_code_details", "audit_trail_unavailable")])
            .is_empty()
            || ward.logs().contains("audit_trail_unavailable"),
        "the refusal's reason is in the access log: {}",
        ward.logs()
    );

    // Space again: the trail recovers, says what it lost, and srv serves.
    std::fs::remove_file(filler).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || echo_ok(mesh.via_cli(), "again")),
        "{}",
        ward.logs()
    );
    assert!(eventually(Duration::from_secs(5), || {
        http_get(ward.admin, "/ready").is_ok_and(|(c, b)| c == 200 && b == "ready\n")
    }));
    assert_eq!(
        metric(&ward, "ward_audit_trail_up{workload=\"app/srv\"}"),
        Some(1.0)
    );
    assert!(ward.stop(Duration::from_secs(15)).is_some());
    let trail = disk.0.join("app/srv");
    let (code, report) = verify(&root_cert(&ward), &trail);
    assert_eq!(code, 0, "{report:#}");
    let all = records(&trail);
    let gap = all
        .iter()
        .find(|r| r["type"] == "gap")
        .unwrap_or_else(|| panic!("{all:#?}"));
    assert!(gap["records"].as_u64().unwrap() >= 1, "{gap}");
}

#[test]
fn a_full_disk_on_a_fail_open_workload_serves_with_loud_signals() {
    if !is_root() {
        return skip_or_fail("audit_full_disk_open", "mounting a tmpfs needs root");
    }
    let tmp = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&tmp.path().join("audit"), "256k");
    let (mesh, mut ward) = tcp_mesh(147, "fail-open", &disk.0);
    let filler = disk.fill();
    // The trail file's last page still takes a few records; every connection is served while
    // they fill it and after.
    let mut served = 0;
    assert!(
        eventually(Duration::from_secs(20), || {
            assert!(echo_ok(mesh.via_cli(), "open"), "{}", ward.logs());
            served += 1;
            http_get(ward.admin, "/ready")
                .is_ok_and(|(c, b)| c == 200 && b.contains("degraded") && b.contains("app/srv"))
        }),
        "{:?}",
        http_get(ward.admin, "/ready")
    );
    for _ in 0..3 {
        assert!(echo_ok(mesh.via_cli(), "still open"), "{}", ward.logs());
    }
    assert!(
        metric(
            &ward,
            "ward_audit_write_failures_total{workload=\"app/srv\"}"
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        metric(&ward, "ward_audit_trail_up{workload=\"app/srv\"}"),
        Some(0.0)
    );
    std::fs::remove_file(filler).unwrap();
    assert!(eventually(Duration::from_secs(5), || {
        http_get(ward.admin, "/ready").is_ok_and(|(c, b)| c == 200 && b == "ready\n")
    }));
    assert!(ward.stop(Duration::from_secs(15)).is_some());
    let trail = disk.0.join("app/srv");
    let (code, report) = verify(&root_cert(&ward), &trail);
    assert_eq!(code, 0, "{report:#}");
    // Every decision that did not fit is counted in a gap record.
    let lost: u64 = records(&trail)
        .iter()
        .filter(|r| r["type"] == "gap")
        .map(|r| r["records"].as_u64().unwrap())
        .sum();
    assert!(lost >= 1, "no gap recorded after {served} served");
}

#[test]
fn an_unwritable_audit_dir_is_loud_and_fail_open_keeps_serving() {
    // A path under a regular file can never be a directory, for root too.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let (mesh, ward) = tcp_mesh(148, "fail-open", &file.join("audit"));
    assert!(echo_ok(mesh.via_cli(), "served"), "{}", ward.logs());
    assert!(
        eventually(Duration::from_secs(5), || {
            metric(
                &ward,
                "ward_audit_write_failures_total{workload=\"app/srv\"}",
            )
            .is_some_and(|v| v >= 1.0)
        }),
        "{}",
        http_get(ward.admin, "/metrics").unwrap().1
    );
    assert_eq!(
        metric(&ward, "ward_audit_trail_up{workload=\"app/srv\"}"),
        Some(0.0)
    );
    let (code, body) = http_get(ward.admin, "/ready").unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(
        body.starts_with("ready, degraded:") && body.contains("not-a-dir"),
        "{body}"
    );
    assert!(
        !ward
            .log_lines_matching(&[("target", "audit"), ("message", "cannot be written")])
            .is_empty(),
        "{}",
        ward.logs()
    );
}
