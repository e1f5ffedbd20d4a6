//! End to end, offline: `ward access-matrix` on the examples (fhir, openemr-ossm3, the
//! quickstart mesh) in every format, `ward diff` exit codes for opening and closing changes
//! (directories and `--git` revisions of a temporary repository), and `ward check --from
//! ns/NAME`. No sockets: everything is decided from the config.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ward_test_support::{have, skip_or_fail, yaml_files};

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

fn ward(args: &[&str], dir: Option<&Path>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ward"));
    command.args(args);
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    command.output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn matrix_json(dir: &Path) -> serde_json::Value {
    let out = ward(
        &[
            "access-matrix",
            "-f",
            dir.to_str().unwrap(),
            "--format",
            "json",
        ],
        None,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout(&out)).unwrap()
}

fn cell<'a>(m: &'a serde_json::Value, from: &str, to: &str) -> &'a serde_json::Value {
    m["cells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["from"] == from && c["to"] == to)
        .unwrap_or_else(|| panic!("no cell {from} -> {to}"))
}

#[test]
fn json_matrix_of_the_examples_has_the_key_cells() {
    let fhir = matrix_json(&example("fhir"));
    let api = cell(
        &fhir,
        "default/client",
        "fhir-server.datamesh.svc.cluster.local:8080",
    );
    assert_eq!(api["access"], "conditional", "{api:#}");
    assert_eq!(api["requiresToken"], true);
    assert_eq!(
        api["policies"],
        serde_json::json!(["datamesh/medic-post", "datamesh/patient-get"])
    );
    let condition = api["condition"].as_str().unwrap();
    assert!(
        condition.contains("methods POST, paths /fhir/*")
            && condition.contains("request.auth.claims[realm_access][roles] in Medic"),
        "{condition}"
    );
    let db = "postgres-db.datamesh.svc.cluster.local:5432";
    assert_eq!(cell(&fhir, "datamesh/fhir-server", db)["access"], "allowed");
    assert_eq!(cell(&fhir, "default/client", db)["access"], "denied");
    let plain = cell(&fhir, "plaintext:0.0.0.0", db);
    assert_eq!(plain["refusedBy"], "peerAuthentication STRICT");
    let port = fhir["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == "datamesh/postgres-db:5432")
        .unwrap();
    assert_eq!(port["mode"], "STRICT");
    assert_eq!(port["policy"], "istio-system/default");
    assert_eq!(port["plaintextAccepted"], false);
    // REGISTRY_ONLY, Ward's default: enforced on the paths the proxies see.
    assert!(fhir["egress"].as_array().unwrap().iter().all(|e| {
        e["enforced"] == (e["outboundTrafficPolicy"] == "REGISTRY_ONLY")
            && e["note"].as_str().unwrap().contains("deployment fact")
    }));

    let openemr = matrix_json(&example("openemr-ossm3"));
    let mariadb = "mariadb.openemr.svc.cluster.local:3306";
    let allowed = cell(&openemr, "openemr/openemr", mariadb);
    assert_eq!(allowed["access"], "allowed");
    assert_eq!(
        allowed["policies"],
        serde_json::json!(["openemr/allow-openemr-to-mariadb"])
    );
    assert_eq!(cell(&openemr, "openemr/other", mariadb)["access"], "denied");
    assert_eq!(
        cell(&openemr, "cluster.local/ns/openemr/sa/*", mariadb)["access"],
        "denied"
    );

    let mesh = matrix_json(&example("quickstart"));
    let echo = "echo.demo.svc.cluster.local:9000";
    assert_eq!(cell(&mesh, "demo/web", echo)["access"], "allowed");
    assert_eq!(cell(&mesh, "jobs/batch", echo)["access"], "denied");
    assert_eq!(
        cell(&mesh, "cluster.local/ns/*/sa/*", echo)["access"],
        "denied"
    );
}

/// RFC 4180 fields of one line (quotes doubled inside quoted fields).
fn csv_line(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                fields.last_mut().unwrap().push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(String::new()),
            (c, _) => fields.last_mut().unwrap().push(c),
        }
    }
    fields
}

#[test]
fn csv_has_one_line_per_cell() {
    let dir = example("fhir");
    let json = matrix_json(&dir);
    let out = ward(
        &[
            "access-matrix",
            "-f",
            dir.to_str().unwrap(),
            "--format",
            "csv",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    let lines: Vec<Vec<String>> = text.lines().map(csv_line).collect();
    assert_eq!(
        lines[0],
        [
            "from",
            "to",
            "access",
            "transport",
            "condition",
            "policies",
            "requires_token",
            "refused_by"
        ]
    );
    assert_eq!(lines.len() - 1, json["cells"].as_array().unwrap().len());
    assert!(lines.iter().all(|l| l.len() == 8), "{text}");
    let row = lines
        .iter()
        .find(|l| l[0] == "default/client" && l[1] == "fhir-server.datamesh.svc.cluster.local:8080")
        .unwrap();
    assert_eq!(row[2], "conditional");
    assert_eq!(row[5], "datamesh/medic-post datamesh/patient-get");
    assert_eq!(row[6], "true");
    assert!(row[4].contains("methods GET, paths /fhir/*"), "{row:?}");
}

#[test]
fn table_lists_destinations_grid_ports_and_egress() {
    let dir = example("quickstart");
    let out = ward(&["access-matrix", "-f", dir.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    for line in [
        "  [1] echo.demo.svc.cluster.local:9000 (service, TCP)",
        "  demo/echo:9000 (TCP): STRICT (mesh level, istio-system/default): plaintext refused",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    let web = text.lines().find(|l| l.starts_with("demo/web ")).unwrap();
    assert_eq!(
        web.split_whitespace().collect::<Vec<_>>(),
        ["demo/web", "ALLOW", "ALLOW"]
    );
    assert!(
        text.contains("Ward refuses and records every other host")
            && text.contains("deployment fact"),
        "{text}"
    );
    assert!(!text.contains("not enforced"), "{text}");
}

/// The quickstart config with `security` as its policies, in a temporary directory.
fn quickstart_with(security: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_quickstart(dir.path(), security);
    dir
}

fn write_quickstart(dir: &Path, security: &str) {
    for (name, text) in yaml_files(example("quickstart")) {
        if name != "40-security.yaml" {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }
    std::fs::write(dir.join("40-security.yaml"), security).unwrap();
}

fn security(mode: &str, allow: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: istio-system}}\n\
         spec: {{mtls: {{mode: {mode}}}}}\n---\n\
         apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: echo-allow, namespace: demo}}\n\
         spec:\n  selector: {{matchLabels: {{app: echo}}}}\n  rules:\n  - from: [{{source: {{principals: [{allow}]}}}}]\n"
    )
}

#[test]
fn html_is_one_self_contained_escaped_page() {
    let dir = quickstart_with(&format!(
        "{}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: deny-odd, namespace: demo}}\n\
         spec:\n  action: DENY\n  rules:\n  - to: [{{operation: {{paths: [\"/<script>alert(1)</script>\"]}}}}]\n",
        security("STRICT", "\"cluster.local/ns/demo/sa/web\"")
    ));
    let page = dir.path().join("matrix.html");
    let out = ward(
        &[
            "access-matrix",
            "-f",
            dir.path().to_str().unwrap(),
            "--format",
            "html",
            "--out",
            page.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout(&out).is_empty());
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("<style>") && html.trim_end().ends_with("</html>"));
    for external in ["<script", "<link", "src=", "href=", "@import", "url("] {
        assert!(!html.contains(external), "{external} in the page");
    }
    assert!(html.contains("demo/web"));
    // On a TCP port a DENY rule with HTTP fields denies every connection (as in Istio): every
    // identity's cell is denied by it, and its path shows escaped in the cell's title.
    assert!(
        html.contains(
            "<td class=\"denied\" title=\"denied by demo/deny-odd rule[0] \
             (paths /&lt;script&gt;alert(1)&lt;/script&gt;)\">denied"
        ),
        "{html}"
    );
    assert!(!html.contains("<script>alert"));
}

fn diff_dirs(old: &Path, new: &Path, extra: &[&str]) -> (i32, serde_json::Value) {
    let mut args = vec![
        "diff",
        old.to_str().unwrap(),
        new.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = ward(&args, None);
    let json = serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            stdout(&out),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap(), json)
}

fn pairs(changes: &serde_json::Value) -> Vec<(String, String)> {
    changes
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["from"].as_str().unwrap().to_owned(),
                c["to"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn diff_exit_codes_tell_opened_from_narrowed() {
    let web = "\"cluster.local/ns/demo/sa/web\"";
    let both = "\"cluster.local/ns/demo/sa/web\", \"cluster.local/ns/jobs/sa/batch\"";
    let base = quickstart_with(&security("STRICT", web));
    let opened = quickstart_with(&security("STRICT", both));
    let plaintext = quickstart_with(&security("PERMISSIVE", web));

    let (code, same) = diff_dirs(base.path(), base.path(), &[]);
    assert_eq!(code, 0, "{same:#}");
    assert!(same["opened"].as_array().unwrap().is_empty());

    let (code, d) = diff_dirs(base.path(), opened.path(), &[]);
    assert_eq!(code, 1, "{d:#}");
    let echo = "echo.demo.svc.cluster.local:9000";
    assert!(pairs(&d["opened"]).contains(&("jobs/batch".to_owned(), echo.to_owned())));
    assert!(d["closed"].as_array().unwrap().is_empty());

    let (code, d) = diff_dirs(opened.path(), base.path(), &[]);
    assert_eq!(code, 3, "{d:#}");
    assert!(pairs(&d["closed"]).contains(&("jobs/batch".to_owned(), echo.to_owned())));
    let (code, _) = diff_dirs(opened.path(), base.path(), &["--fail-on", "opened"]);
    assert_eq!(code, 0);

    let (code, d) = diff_dirs(base.path(), plaintext.path(), &[]);
    assert_eq!(code, 1, "{d:#}");
    let ports = d["plaintextAllowed"].as_array().unwrap();
    assert_eq!(ports.len(), 1, "{d:#}");
    assert_eq!(ports[0]["port"], "demo/echo:9000");
    assert_eq!(ports[0]["newMode"], "PERMISSIVE");

    let text = stdout(&ward(
        &[
            "diff",
            base.path().to_str().unwrap(),
            opened.path().to_str().unwrap(),
        ],
        None,
    ));
    assert!(
        text.lines()
            .any(|l| l == format!("  + jobs/batch -> {echo}: denied -> allowed")),
        "{text}"
    );
    assert!(text.contains("result: access opened"), "{text}");

    let egress = quickstart_with(&security("STRICT", web));
    std::fs::write(
        egress.path().join("50-external.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: api, namespace: demo}\n\
         spec:\n  hosts: [api.example.com]\n  location: MESH_EXTERNAL\n  resolution: DNS\n  exportTo: [\".\"]\n  ports: [{number: 443, name: tls, protocol: TLS}]\n",
    )
    .unwrap();
    let (code, d) = diff_dirs(base.path(), egress.path(), &[]);
    assert_eq!(code, 1, "{d:#}");
    let added: Vec<(&str, &str)> = d["egressAdded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["workload"].as_str().unwrap(), e["host"].as_str().unwrap()))
        .collect();
    assert_eq!(
        added,
        [
            ("demo/echo", "api.example.com"),
            ("demo/web", "api.example.com")
        ]
    );
    assert!(d["opened"].as_array().unwrap().is_empty());
    let (code, _) = diff_dirs(egress.path(), base.path(), &[]);
    assert_eq!(code, 3);

    let missing = base.path().join("nothing-here");
    let out = ward(
        &[
            "diff",
            base.path().to_str().unwrap(),
            missing.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing-here"));
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=ward",
            "-c",
            "user.email=ward@example.invalid",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn diff_reads_two_git_revisions() {
    if !have("git") {
        skip_or_fail("diff_reads_two_git_revisions", "git is not installed");
        return;
    }
    let repo = tempfile::tempdir().unwrap();
    let config = repo.path().join("mesh");
    std::fs::create_dir(&config).unwrap();
    std::fs::write(repo.path().join("README.md"), "not config\n").unwrap();
    write_quickstart(
        &config,
        &security("STRICT", "\"cluster.local/ns/demo/sa/web\""),
    );
    git(repo.path(), &["init", "-q"]);
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "base"]);
    write_quickstart(&config, &security("STRICT", "\"*\""));
    git(
        repo.path(),
        &["commit", "-q", "-a", "-m", "open echo to everyone"],
    );

    let out = ward(
        &["diff", "--git", "HEAD~1", "HEAD", "--json", "--", "mesh"],
        Some(repo.path()),
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let opened = pairs(&d["opened"]);
    let echo = "echo.demo.svc.cluster.local:9000";
    for from in ["jobs/batch", "cluster.local/ns/*/sa/*"] {
        assert!(
            opened.contains(&(from.to_owned(), echo.to_owned())),
            "{d:#}"
        );
    }

    let out = ward(&["diff", "--git", "HEAD", "HEAD"], Some(repo.path()));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout(&out).contains("result: no change in access"));

    let out = ward(&["diff", "--git", "HEAD", "no-such-rev"], Some(repo.path()));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-rev"));
}

#[test]
fn check_from_a_namespace_answers_per_identity() {
    let dir = example("openemr-ossm3");
    let out = ward(
        &[
            "check",
            "-f",
            dir.to_str().unwrap(),
            "--from",
            "ns/openemr",
            "--to",
            "mariadb.openemr.svc.cluster.local:3306",
            "--json",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["namespace"], "openemr");
    let allowed: Vec<(&str, bool)> = report["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["source"]["identity"].as_str().unwrap(),
                m["targets"][0]["allowed"].as_bool().unwrap(),
            )
        })
        .collect();
    assert!(allowed.contains(&("spiffe://cluster.local/ns/openemr/sa/default", true)));
    assert!(allowed.contains(&("spiffe://cluster.local/ns/openemr/sa/*", false)));
    let text = stdout(&ward(
        &[
            "check",
            "-f",
            dir.to_str().unwrap(),
            "--from",
            "ns/openemr",
            "--to",
            "mariadb.openemr.svc.cluster.local:3306",
        ],
        None,
    ));
    assert!(
        text.contains("result: some identities in ns openemr (1 of 5 allowed)"),
        "{text}"
    );
}
