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

#[test]
fn bad_directories_fail_with_codes_and_locations() {
    let cases: Vec<(&str, &str, &[&str])> = vec![
        (
            "unknown-field.yaml",
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: ns\nspec:\n  rules:\n  - from:\n    - sorce:\n        principals: [\"a\"]\n",
            &["WARD0101", "unknown-field.yaml:9", "AuthorizationPolicy ns/p", "sorce"],
        ),
        (
            "two-mesh-pa.yaml",
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: a\n  namespace: istio-system\nspec:\n  mtls:\n    mode: STRICT\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: b\n  namespace: istio-system\nspec:\n  mtls:\n    mode: PERMISSIVE\n",
            &["WARD0204", "WARD0203"],
        ),
        (
            "selector-nothing.yaml",
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: ns\nspec:\n  selector:\n    matchLabels:\n      app: nothing\n  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/ns/ghost/sa/nobody\"]\n---\napiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n",
            &["WARD0201", "Widget"],
        ),
    ];
    for (name, body, expect) in cases {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(name), body).unwrap();
        let (code, out) = analyze(dir.path());
        assert_ne!(code, 0, "{name} must fail: {out}");
        for e in expect {
            assert!(out.contains(e), "{name}: expected {e:?} in:\n{out}");
        }
    }
}
