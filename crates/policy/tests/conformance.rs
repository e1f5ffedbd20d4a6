//! Runs the YAML conformance corpus (`tests/corpus/*.yaml`) through `ward_policy::corpus`
//! (feature `testing`, enabled by this crate's dev-dependency on itself).

use std::path::PathBuf;

fn corpus_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    files.retain(|p| p.extension().is_some_and(|ext| ext == "yaml"));
    files.sort();
    files
}

#[test]
fn corpus_passes() {
    let files = corpus_files();
    assert!(files.len() >= 5, "corpus files missing: {files:?}");
    let mut total = 0;
    let mut failures = Vec::new();
    for file in &files {
        match ward_policy::corpus::run_file(file) {
            Ok(0) => failures.push(format!("{}: no cases", file.display())),
            Ok(cases) => total += cases,
            Err(report) => failures.push(report),
        }
    }
    assert!(
        failures.is_empty(),
        "corpus failures:\n{}",
        failures.join("\n")
    );
    assert!(total >= 60, "only {total} corpus cases");
}

#[test]
fn corpus_runner_catches_a_wrong_expectation() {
    // Flip one expectation of a real corpus file: the runner must notice.
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/basics.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
    let flipped = yaml.replacen(
        "expect: {decision: allow, reason: noAllowPolicies, detail: \"\"}",
        "expect: {decision: deny, reason: noAllowPolicies, detail: \"\"}",
        1,
    );
    assert_ne!(
        flipped, yaml,
        "the first case of basics.yaml changed; update this test"
    );
    let report = ward_policy::corpus::run_str("basics.yaml", &flipped)
        .expect_err("a flipped expectation must fail");
    assert!(report.contains("no policies allows"), "{report}");
}

#[test]
fn l7_corpus_has_the_http_cases() {
    let files: Vec<PathBuf> = corpus_files()
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("l7_"))
        })
        .collect();
    let mut total = 0;
    for file in &files {
        let yaml = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{e}"));
        let cases = ward_policy::corpus::run_file(file).unwrap_or_else(|e| panic!("{e}"));
        // Every case of an l7_ file is an HTTP case.
        assert_eq!(
            yaml.matches("\n  request:").count(),
            cases,
            "{}: a case without request",
            file.display()
        );
        total += cases;
    }
    assert!(total >= 60, "only {total} HTTP corpus cases");
}

#[test]
fn corpus_runner_catches_a_wrong_http_expectation() {
    // A case that reuses policies through a YAML alias: flipping it must fail, so aliased
    // policies are really evaluated.
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/l7_paths.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
    let table = [
        (
            "expect: {decision: deny, path: \"/admin\", policy: app/deny-admin}",
            "expect: {decision: allow, path: \"/admin\", policy: app/deny-admin}",
        ),
        ("expect: {decision: reject}", "expect: {decision: deny}"),
    ];
    for (from, to) in table {
        let flipped = yaml.replacen(from, to, 2);
        assert_ne!(flipped, yaml, "l7_paths.yaml changed; update this test");
        let report = ward_policy::corpus::run_str("l7_paths.yaml", &flipped)
            .expect_err("a flipped expectation must fail");
        assert_eq!(report.lines().count(), 2, "{report}");
    }
}
