//! End to end: `ward check` answers what the real mesh does. The same config is decided
//! offline by `ward check` and on the wire by `ward up` (real sidecars, real mTLS, on
//! 127.1.120.x), and each what-if decision must equal what happens to real bytes: an echo
//! round trip when allowed, a closed or reset connection when denied.
//!
//! `ward check --cases FILE` runs the example cases files (examples/checks) offline: every case
//! passes; one expectation flipped fails with its line and exit 1; a bad file exits 2.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{docs, mesh_pa, srv_policy, Mesh};
use ward_test_support::echo_ok;

/// `ward check -f DIR --from FROM --to TO --json`: the exit code and the report.
fn check(dir: &Path, from: &str, to: &str) -> (i32, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_ward"))
        .arg("check")
        .arg("-f")
        .arg(dir)
        .args(["--from", from, "--to", to, "--json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap(), report)
}

#[test]
fn what_if_decisions_equal_the_wire() {
    let mesh = Mesh::new(120);
    let security = docs(&[
        mesh_pa("STRICT"),
        srv_policy(
            "allow-cli",
            "  rules:\n  - from:\n    - source:\n        principals: [cluster.local/ns/app/sa/cli]\n",
        ),
        srv_policy(
            "deny-other",
            "  action: DENY\n  rules:\n  - from:\n    - source:\n        namespaces: [other]\n",
        ),
    ]);
    let ward = mesh.up(&security, &[]);
    let service = "srv.app.svc.cluster.local:9000";

    // (what-if source, destination, where a real client connects, allowed, refused by,
    // deciding rule).
    let cases = [
        (
            "app/cli",
            service,
            mesh.via_cli(),
            true,
            None,
            Some("ns[app]-policy[allow-cli]-rule[0]"),
        ),
        (
            "other/oth",
            service,
            mesh.via_oth(),
            false,
            Some("authorizationPolicy"),
            Some("ns[app]-policy[deny-other]-rule[0]"),
        ),
        // The identity form and a workload destination: the same denial as through the service.
        (
            "spiffe://cluster.local/ns/other/sa/oth",
            "app/srv:9000",
            mesh.via_oth(),
            false,
            Some("authorizationPolicy"),
            Some("ns[app]-policy[deny-other]-rule[0]"),
        ),
        (
            "plaintext:127.0.0.1",
            "app/srv:9000",
            mesh.srv_plain(),
            false,
            Some("peerAuthentication"),
            None,
        ),
    ];
    for (from, to, wire, allowed, refused_by, rule) in cases {
        let (code, report) = check(ward.dir(), from, to);
        let target = &report["targets"][0];
        assert_eq!(code, if allowed { 0 } else { 1 }, "{from}: {report:#}");
        assert_eq!(target["allowed"], allowed, "{from}: {report:#}");
        assert_eq!(
            target["refusedBy"].as_str(),
            refused_by,
            "{from}: {report:#}"
        );
        let by = &target["authorization"]["decision"]["by"];
        let deciding = by["rule"]
            .as_object()
            .or(by["denyRule"].as_object())
            .map(|r| {
                format!(
                    "ns[{}]-policy[{}]-rule[{}]",
                    r["policy"]["namespace"].as_str().unwrap(),
                    r["policy"]["name"].as_str().unwrap(),
                    r["rule"]
                )
            });
        assert_eq!(deciding.as_deref(), rule, "{from}: {report:#}");
        assert_eq!(
            echo_ok(wire, &format!("hello from {from}")),
            allowed,
            "{from} on the wire through {wire}; what-if said {report:#}\nlog:\n{}",
            ward.logs()
        );
    }
}

/// `examples/<rel>` of the repository.
fn example(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(rel)
}

/// `ward check -f DIR --cases FILE`.
fn check_cases(dir: &Path, cases: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ward"))
        .arg("check")
        .arg("-f")
        .arg(dir)
        .arg("--cases")
        .arg(cases)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_example_cases_files_pass() {
    for (dir, cases, summary) in [
        (
            "openemr-ossm3",
            "checks/openemr-ossm3.yaml",
            "6 cases, 6 passed, 0 failed",
        ),
        ("fhir", "checks/fhir.yaml", "7 cases, 7 passed, 0 failed"),
        (
            "egress-gateway",
            "checks/egress-gateway.yaml",
            "3 cases, 3 passed, 0 failed",
        ),
    ] {
        let out = check_cases(&example(dir), &example(cases));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert_eq!(stdout.lines().last(), Some(summary), "{}", text(&out));
        assert!(
            stdout.lines().filter(|l| l.starts_with("PASS ")).count() > 2,
            "{}",
            text(&out)
        );
    }
}

#[test]
fn a_flipped_expectation_fails_the_gate() {
    let original = std::fs::read_to_string(example("checks/openemr-ossm3.yaml")).unwrap();
    let case = "- name: another identity of the namespace cannot reach MariaDB\n  from: openemr/other\n  to: mariadb.openemr.svc.cluster.local:3306\n  expect: deny\n";
    assert!(original.contains(case));
    let flipped = original.replace(case, &case.replace("expect: deny", "expect: allow"));
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("cases.yaml");
    std::fs::write(&file, flipped).unwrap();

    let out = check_cases(&example("openemr-ossm3"), &file);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stdout.lines().any(|l| l
            == "FAIL another identity of the namespace cannot reach MariaDB: expected allow, got \
                deny (no ALLOW matched)"),
        "{}",
        text(&out)
    );
    assert_eq!(
        stdout.lines().last(),
        Some("6 cases, 5 passed, 1 failed"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_bad_cases_file_is_an_error_with_its_line() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("cases.yaml");
    std::fs::write(
        &file,
        "cases:\n- name: typo\n  from: openemr/openemr\n  to: openemr/mariadb:3306\n  expected: allow\n",
    )
    .unwrap();
    let out = check_cases(&example("openemr-ossm3"), &file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let want = format!(
        "{}:5: case \"typo\" (cases[0]): unknown field `expected`",
        file.display()
    );
    assert!(stderr.contains(&want), "want {want:?} in {}", text(&out));
}
