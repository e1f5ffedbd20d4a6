//! `ward analyze` on good and bad directories.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn analyze(dir: &std::path::Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ward"))
        .arg("analyze")
        .arg("-f")
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn quickstart_is_clean() {
    let dir = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/quickstart"
    ));
    let (code, out) = analyze(dir);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 error(s)"), "{out}");
}

const PA_HEADER: &str = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n";

#[test]
fn findings_carry_codes_locations_and_exit_status() {
    let two_mesh_pa = format!(
        "{PA_HEADER}  name: a\n  namespace: istio-system\nspec:\n  mtls:\n    mode: STRICT\n---\n{PA_HEADER}  name: b\n  namespace: istio-system\nspec:\n  mtls:\n    mode: PERMISSIVE\n"
    );
    // (file, contents, expected exit code, strings the output must contain)
    let cases: Vec<(&str, String, i32, Vec<&str>)> = vec![
        (
            "unknown-field.yaml",
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: ns\nspec:\n  rules:\n  - from:\n    - sorce:\n        principals: [\"a\"]\n".into(),
            1,
            vec!["WARD0101", "unknown-field.yaml:9", "AuthorizationPolicy ns/p", "sorce"],
        ),
        ("two-mesh-pa.yaml", two_mesh_pa, 1, vec!["WARD0204", "WARD0203", "two-mesh-pa.yaml:"]),
        (
            "selector-matches-nothing.yaml",
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: ns\nspec:\n  selector:\n    matchLabels:\n      app: nothing\n  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/ns/ghost/sa/nobody\"]\n".into(),
            0,
            vec!["WARD0201", "WARD0202", "AuthorizationPolicy ns/p"],
        ),
        (
            "unknown-kind.yaml",
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolic\nmetadata:\n  name: w\n".into(),
            1,
            vec!["unknown-kind.yaml:2", "WARD0106", "did you mean `AuthorizationPolicy`?"],
        ),
        (
            "kubernetes-kind.yaml",
            "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n".into(),
            0,
            vec!["kubernetes-kind.yaml:1: info[WARD0115] Widget w:"],
        ),
    ];
    for (name, body, want_code, expect) in cases {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(name), body).unwrap();
        let (code, out) = analyze(dir.path());
        assert_eq!(code, want_code, "{name}: exit code; output:\n{out}");
        for e in expect {
            assert!(out.contains(e), "{name}: expected {e:?} in:\n{out}");
        }
    }
}

/// One workload, `app/srv`, whose Sidecar serves port 9000 and forwards it to the app's
/// `defaultEndpoint` 127.0.0.1:9001; mesh-wide STRICT. Clean on its own.
const SRV: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: srv, namespace: app}
spec: {address: 127.0.0.10, serviceAccount: srv, labels: {app: srv}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: srv, namespace: app}
spec:
  workloadSelector: {labels: {app: srv}}
  ingress:
  - port: {number: 9000, name: http, protocol: HTTP}
    defaultEndpoint: 127.0.0.1:9001
";

/// `ward analyze` on SRV plus `policy.yaml`: (exit code, output).
fn analyze_with_srv(policy: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), SRV).unwrap();
    std::fs::write(dir.path().join("policy.yaml"), policy).unwrap();
    analyze(dir.path())
}

#[test]
fn the_srv_mesh_is_clean() {
    let (code, out) = analyze_with_srv("");
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("WARD"), "{out}");
}

/// DENY policies that silently apply to nothing: each is a warning (exit 0) naming the file,
/// line, object and field.
#[test]
fn deny_policies_that_do_nothing_are_warned_about() {
    // (what, policy.yaml, lines the output must contain)
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "a namespace-wide policy in a namespace without workloads (typo)",
            "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-admin
  namespace: ap
spec:
  action: DENY
  rules:
  - to:
    - operation: {paths: [\"/admin*\"]}
",
            &["policy.yaml:5: warning[WARD0219] AuthorizationPolicy ap/deny-admin: metadata.namespace: namespace `ap` has no WorkloadEntry"],
        ),
        (
            "a port the workload does not serve: the app's defaultEndpoint port",
            "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-delete, namespace: app}
spec:
  selector: {matchLabels: {app: srv}}
  action: DENY
  rules:
  - to:
    - operation:
        methods: [DELETE]
        ports: [\"9000\", \"9001\"]
  - when:
    - key: destination.port
      values: [\"9001\"]
",
            &[
                "policy.yaml:11: warning[WARD0220] AuthorizationPolicy app/deny-delete: spec.rules[0].to[0].operation.ports[1]: port 9001 is not served by app/srv",
                "9001 is the app's defaultEndpoint port (127.0.0.1:9001) for port 9000",
                "policy.yaml:14: warning[WARD0220] AuthorizationPolicy app/deny-delete: spec.rules[1].when[0].values[0]: port 9001",
            ],
        ),
        (
            "an exact DENY path",
            "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: app}
spec:
  action: DENY
  rules:
  - to:
    - operation:
        paths: [/admin, \"/api/*\", \"/v1/{*}/secret\"]
",
            &[
                "policy.yaml:9: warning[WARD0221] AuthorizationPolicy app/deny-admin: spec.rules[0].to[0].operation.paths[0]: the exact path `/admin` does not deny `/admin/`, `/admin/x` or `/admin;x`: write `/admin*`",
                "policy.yaml:9: warning[WARD0221] AuthorizationPolicy app/deny-admin: spec.rules[0].to[0].operation.paths[2]: the template `/v1/{*}/secret` does not deny `/v1/a/secret/`, `/v1/a/secret/x` or `/v1/a/secret;x`: also list `/v1/{*}/secret/{**}`",
            ],
        ),
    ];
    let mut failures = Vec::new();
    for (what, policy, expect) in cases {
        let (code, out) = analyze_with_srv(policy);
        let findings = out.lines().filter(|l| l.contains("[WARD")).count();
        let want_findings = expect.iter().filter(|e| e.contains("[WARD")).count();
        let missing: Vec<_> = expect.iter().filter(|e| !out.contains(**e)).collect();
        if code != 0 || findings != want_findings || !missing.is_empty() {
            failures.push(format!(
                "{what}: exit {code}, {findings} finding(s) (want {want_findings}), missing \
                 {missing:#?}\noutput:\n{out}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// One file that does not load must not hide the findings of the others: the load error and the
/// analysis of what loaded come in one run, which still fails.
#[test]
fn a_file_that_does_not_load_hides_no_other_finding() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("broken.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: ns\nspec:\n  rules:\n  - from:\n    - sorce: {}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("selector.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: q\n  namespace: ns\nspec:\n  selector:\n    matchLabels:\n      app: nothing\n  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/ns/ghost/sa/nobody\"]\n",
    )
    .unwrap();
    let (code, out) = analyze(dir.path());
    assert_eq!(code, 1, "a load error still fails the run:\n{out}");
    for want in [
        "WARD0101",
        "broken.yaml:9",
        "WARD0201",
        "AuthorizationPolicy ns/q",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
}

/// Istio parity findings through the binary: a Sidecar for a workload of an ambient namespace
/// (info, with the label's file:line in the message), and an egress port no matched service has, which is
/// a warning (exit 0) since Istio accepts it.
#[test]
fn ambient_sidecars_are_noted_and_unserved_egress_ports_are_warnings() {
    let ambient_namespace =
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: app\n  labels: {istio.io/dataplane-mode: ambient}\n";
    let (code, out) = analyze_with_srv(ambient_namespace);
    assert_eq!(code, 0, "{out}");
    for want in [
        "mesh.yaml:15: info[WARD0223] Sidecar app/srv: spec.workloadSelector: workload app/srv is in ambient mode (`istio.io/dataplane-mode: ambient` on Namespace app (",
        "policy.yaml:5)): under Istio it has no sidecar proxy",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }

    let client = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: srv, namespace: app}
spec:
  hosts: [srv.app.svc]
  location: MESH_INTERNAL
  ports: [{number: 9000, name: http}]
  workloadSelector: {labels: {app: srv}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: cli, namespace: app}
spec: {address: 127.0.0.11, serviceAccount: cli, labels: {app: cli}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: cli, namespace: app}
spec:
  workloadSelector: {labels: {app: cli}}
  egress:
  - port: {number: 9999}
    bind: 127.0.0.12
    hosts: [./srv.app.svc]
";
    let (code, out) = analyze_with_srv(client);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("policy.yaml:21: warning[WARD0211] Sidecar app/cli: spec.egress[0].port.number: no service this listener's hosts match for namespace `app` has port 9999 (srv.app.svc (ports 9000))"),
        "{out}"
    );
}

/// An object that loads with an error is still translated and analyzed with the rest; a stage
/// that finds the same problem again does not print it a second time.
#[test]
fn each_problem_is_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("vm.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: vm\n  namespace: legacy\nspec:\n  address: vm1.legacy.example\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: ports\n  namespace: legacy\nspec:\n  portLevelMtls:\n    8080:\n      mode: STRICT\n",
    )
    .unwrap();
    let (code, out) = analyze(dir.path());
    assert_eq!(code, 1, "{out}");
    for place in ["vm.yaml:7: error[WARD0105]", "vm.yaml:15: error[WARD0207]"] {
        assert_eq!(out.matches(place).count(), 1, "{place} once in:\n{out}");
    }
}
