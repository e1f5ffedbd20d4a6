//! Runs the YAML conformance corpus (`tests/corpus/*.yaml`) through `ward_policy::corpus`, the
//! same runner the `ward` CLI uses.

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
