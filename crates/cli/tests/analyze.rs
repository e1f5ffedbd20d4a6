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
            "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n".into(),
            1,
            vec!["unknown-kind.yaml:", "Widget"],
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
