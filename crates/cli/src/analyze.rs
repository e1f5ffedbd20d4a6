//! `ward analyze`: load, translate and analyze; print findings with stable codes.

use std::path::PathBuf;
use std::process::ExitCode;

use ward_config::{Diagnostic, Severity};

/// Run the analysis; exit 1 when any finding is an error.
pub(crate) fn run(paths: &[PathBuf], json: bool) -> ExitCode {
    // Everything that loaded is translated and analyzed, even when other files failed to load:
    // one run shows the load errors and every finding (`ward up` refuses any error instead).
    let (set, loaded) = ward_config::load_paths_partial(paths);
    let findings: Vec<Diagnostic> = ward_config::all_findings(&set, loaded);
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    if json {
        let items: Vec<serde_json::Value> = findings
            .iter()
            .map(|f| {
                serde_json::json!({
                    "severity": format!("{:?}", f.severity).to_lowercase(),
                    "code": f.code, "file": f.file, "line": f.line,
                    "object": f.object, "field": f.field, "message": f.message,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(items));
    } else {
        for f in &findings {
            println!("{f}");
        }
        let warnings = findings.len() - errors;
        println!("{errors} error(s), {warnings} other finding(s)");
    }
    if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
