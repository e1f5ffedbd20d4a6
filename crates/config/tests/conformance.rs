//! The conformance corpus: Istio YAML shaped like what users bring (manifests next to policies,
//! operator resources, Istio's own defaults), under `tests/conformance/<point>/<case>`, each case
//! with its expected findings written inline as comments (the syntax is in
//! `tests/conformance/README.md`).
//!
//! Each case goes through the pipeline of `ward analyze` (crates/cli/src/analyze.rs): load what
//! loads (`load_paths_partial`), then translate and analyze it (`all_findings`). The
//! findings must be exactly the expected ones: same severity, code, file, line and field, none
//! missing and none extra. A case runs as written and once per served apiVersion of its kinds
//! (the `apiVersion:` lines rewritten in temporary copies, `served_api_versions`), and the same
//! expectations must hold in every variant.

#![allow(clippy::unwrap_used)] // tests

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use ward_config::{served_api_versions, ConfigSet, Diagnostic, Severity};

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/conformance")
}

/// One case: a directory of YAML files, or a single YAML file.
struct Case {
    /// `<point>/<case>`, as failures name it.
    name: String,
    /// Whether the case is a directory (else one file).
    is_dir: bool,
    /// (path relative to the case, text), sorted by path.
    files: Vec<(String, String)>,
}

/// What a case expects, read from its comments.
#[derive(Debug, Default)]
struct Expectations {
    findings: Vec<Expected>,
    /// `# expect: loads`: no error (`ward up` would accept the configuration).
    loads: bool,
    /// `# conformance: as-written`: run only with the apiVersions as written.
    as_written: bool,
}

/// One expected finding.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Expected {
    severity: String,
    code: String,
    /// The file relative to the case; `None` for a finding about the whole mesh.
    file: Option<String>,
    line: Option<usize>,
    field: Option<String>,
}

impl Expected {
    fn of(d: &Diagnostic, prefix: &str) -> Expected {
        let file = (!d.file.is_empty()).then(|| relative(&d.file, prefix));
        Expected {
            severity: d.severity.to_string(),
            code: d.code.to_owned(),
            file,
            line: d.line,
            field: d.field.clone(),
        }
    }
}

/// As the expectation would be written.
impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{file}: # expect: {} {}", self.severity, self.code)?,
            None => write!(f, "# expect-mesh: {} {}", self.severity, self.code)?,
        }
        if let Some(line) = self.line {
            write!(f, " line {line}")?;
        }
        if let Some(field) = &self.field {
            write!(f, " {field}")?;
        }
        Ok(())
    }
}

fn relative(file: &str, prefix: &str) -> String {
    file.strip_prefix(prefix).unwrap_or(file).to_owned()
}

/// Reads every expectation of a case; an `expect` comment that does not parse is an error.
fn expectations(case: &Case) -> Result<Expectations, String> {
    let mut out = Expectations::default();
    for (file, text) in &case.files {
        for (i, line) in text.lines().enumerate() {
            let here = i + 1;
            read_line(file, here, line, &mut out).map_err(|why| format!("{file}:{here}: {why}"))?;
        }
    }
    if out.findings.is_empty() && !out.loads {
        return Err("the case expects nothing: add `# expect: loads` or findings".into());
    }
    if out.loads && out.findings.iter().any(|e| e.severity == "error") {
        return Err("`# expect: loads` next to an expected error".into());
    }
    Ok(out)
}

fn read_line(file: &str, here: usize, line: &str, out: &mut Expectations) -> Result<(), String> {
    let Some((_, comment)) = line.split_once('#') else {
        return Ok(());
    };
    let comment = comment.trim();
    if comment == "conformance: as-written" {
        out.as_written = true;
        return Ok(());
    }
    if !comment.starts_with("expect") {
        return Ok(());
    }
    let (form, rest) = comment
        .split_once(':')
        .ok_or("an `expect` comment needs a `:`")?;
    let words: Vec<&str> = rest.split_whitespace().collect();
    match (form, words.as_slice()) {
        ("expect", ["loads"]) => out.loads = true,
        ("expect", [severity, code, "line", n, field @ ..]) => {
            let line = n
                .parse()
                .map_err(|_| format!("`{n}` is not a line number"))?;
            out.findings
                .push(expected(severity, code, Some(file), Some(line), field)?);
        }
        ("expect-here", [severity, code, field @ ..]) => {
            if line.trim_start().starts_with('#') {
                return Err("`expect-here` goes at the end of the line it is about".into());
            }
            out.findings
                .push(expected(severity, code, Some(file), Some(here), field)?);
        }
        ("expect-mesh", [severity, code, field @ ..]) => {
            out.findings
                .push(expected(severity, code, None, None, field)?);
        }
        _ => return Err(format!("cannot read the expectation `{comment}`")),
    }
    Ok(())
}

fn expected(
    severity: &str,
    code: &str,
    file: Option<&str>,
    line: Option<usize>,
    field: &[&str],
) -> Result<Expected, String> {
    if !["error", "warning", "info"].contains(&severity) {
        return Err(format!(
            "`{severity}` is not a severity (error, warning, info)"
        ));
    }
    let number = code.strip_prefix("WARD").unwrap_or_default();
    if number.len() != 4 || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{code}` is not a code (WARD0000)"));
    }
    let field = match field {
        [] => None,
        [field] => Some((*field).to_owned()),
        _ => return Err(format!("more than one field: {field:?}")),
    };
    Ok(Expected {
        severity: severity.to_owned(),
        code: code.to_owned(),
        file: file.map(str::to_owned),
        line,
        field,
    })
}

/// A top-level `apiVersion:` line and the kind of its document.
struct ApiVersionLine {
    file: usize,
    /// 0-based.
    line: usize,
    written: String,
    /// The versions Ward serves for the kind, when the written one is among them.
    served: Vec<String>,
}

/// The value of a top-level `key: value` line (comment cut off).
fn top_level_value<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(key)?.strip_prefix(':')?;
    let value = rest.split('#').next().unwrap_or_default().trim();
    (!value.is_empty()).then_some(value)
}

/// The rewritable `apiVersion:` lines: top-level (column 0) in a document whose top-level
/// `kind:` Ward serves under the written apiVersion and under at least one other.
fn api_version_lines(case: &Case) -> Vec<ApiVersionLine> {
    let mut out = Vec::new();
    for (f, (_, text)) in case.files.iter().enumerate() {
        let lines: Vec<&str> = text.lines().collect();
        let mut start = 0;
        while start < lines.len() {
            let end = (start + 1..lines.len())
                .find(|&i| lines[i].starts_with("---"))
                .unwrap_or(lines.len());
            let document = start..end;
            let api = document
                .clone()
                .find_map(|i| top_level_value(lines[i], "apiVersion").map(|v| (i, v)));
            let kind = document
                .clone()
                .find_map(|i| top_level_value(lines[i], "kind"));
            if let (Some((line, written)), Some(kind)) = (api, kind) {
                let served = served_api_versions(kind);
                if served.len() > 1 && served.iter().any(|v| v == written) {
                    out.push(ApiVersionLine {
                        file: f,
                        line,
                        written: written.to_owned(),
                        served,
                    });
                }
            }
            start = end.max(start + 1);
        }
    }
    out
}

/// The files of one run of a case.
struct Variant {
    /// How failures name it: `as written`, or the apiVersions it uses.
    label: String,
    files: Vec<(String, String)>,
}

/// The case as written, then once per served apiVersion: the k-th variant gives each object
/// the k-th version its kind is served under (cycling through shorter lists), so that every
/// served version of every kind in the case is loaded at least once.
fn variants(case: &Case, expect: &Expectations) -> Vec<Variant> {
    let mut out = vec![Variant {
        label: "as written".into(),
        files: case.files.clone(),
    }];
    if expect.as_written {
        return out;
    }
    let lines = api_version_lines(case);
    let count = lines.iter().map(|l| l.served.len()).max().unwrap_or(0);
    for k in 0..count {
        let mut files = case.files.clone();
        let mut used = BTreeSet::new();
        for l in &lines {
            let version = &l.served[k % l.served.len()];
            used.insert(version.clone());
            let text = &mut files[l.file].1;
            let rewritten: Vec<String> = text
                .lines()
                .enumerate()
                .map(|(i, line)| {
                    if i == l.line {
                        line.replacen(&l.written, version, 1)
                    } else {
                        line.to_owned()
                    }
                })
                .collect();
            let mut joined = rewritten.join("\n");
            if text.ends_with('\n') {
                joined.push('\n');
            }
            *text = joined;
        }
        if out.iter().all(|v| v.files != files) {
            let used: Vec<String> = used.into_iter().collect();
            out.push(Variant {
                label: used.join(", "),
                files,
            });
        }
    }
    out
}

/// What `ward analyze` reports on `path` (the calls of crates/cli/src/analyze.rs), and the
/// config that loaded.
fn analyze(path: &Path) -> (ConfigSet, Vec<Diagnostic>) {
    let (set, loaded) = ward_config::load_paths_partial(&[path.to_path_buf()]);
    let findings = ward_config::all_findings(&set, loaded);
    (set, findings)
}

/// A check a case needs beyond its findings, by case name.
type Hook = fn(&ConfigSet) -> Result<(), String>;

fn hooks() -> Vec<(&'static str, Hook)> {
    vec![
        (
            "02-istio-operator/unnamed-with-trust-domain.yaml",
            trust_domain_reached_the_mesh,
        ),
        (
            "02-istio-operator/bookinfo-demo-profile.yaml",
            defaults_with_an_operator,
        ),
    ]
}

fn trust_domain_reached_the_mesh(set: &ConfigSet) -> Result<(), String> {
    let got = (
        set.mesh.trust_domain.as_str(),
        set.mesh.trust_domain_aliases.clone(),
    );
    let want = (
        "corp.example",
        vec!["old.corp.example".to_owned(), "cluster.local".to_owned()],
    );
    if got != want {
        return Err(format!(
            "mesh trust domain and aliases: got {got:?}, want {want:?}"
        ));
    }
    let snapshot = ward_config::translate(set).map_err(|e| e.to_string())?;
    let identity = snapshot
        .proxies
        .get("billing/ledger")
        .map(|p| p.workload.identity.as_str());
    match identity {
        Some("spiffe://corp.example/ns/billing/sa/ledger") => Ok(()),
        other => Err(format!("billing/ledger identity: {other:?}")),
    }
}

fn defaults_with_an_operator(set: &ConfigSet) -> Result<(), String> {
    let mesh = &set.mesh;
    let got = (
        mesh.trust_domain.as_str(),
        mesh.root_namespace.as_str(),
        mesh.source.as_ref().map(|s| s.line),
    );
    if got != ("cluster.local", "istio-system", Some(5)) {
        return Err(format!(
            "(trust domain, root namespace, source line): {got:?}"
        ));
    }
    Ok(())
}

/// Reads every case under the corpus. A point directory without cases must say why in a
/// README.md (a point whose cases come later).
fn cases() -> Result<Vec<Case>, String> {
    let mut out = Vec::new();
    for point in sorted_entries(&corpus()) {
        if !point.is_dir() {
            continue;
        }
        let point_name = file_name(&point);
        let before = out.len();
        for entry in sorted_entries(&point) {
            let name = format!("{point_name}/{}", file_name(&entry));
            if entry.is_dir() {
                let files = yaml_files(&entry, &entry);
                if files.is_empty() {
                    return Err(format!("{name}: a case directory without YAML files"));
                }
                out.push(Case {
                    name,
                    is_dir: true,
                    files,
                });
            } else if is_yaml(&entry) {
                out.push(Case {
                    name,
                    is_dir: false,
                    files: vec![(file_name(&entry), fs::read_to_string(&entry).unwrap())],
                });
            }
        }
        if out.len() == before && !point.join("README.md").is_file() {
            return Err(format!(
                "{point_name}: no cases and no README.md saying why"
            ));
        }
    }
    Ok(out)
}

fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !file_name(p).starts_with('.'))
        .collect();
    entries.sort();
    entries
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

fn is_yaml(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "yaml" || e == "yml")
}

fn yaml_files(root: &Path, dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in sorted_entries(dir) {
        if entry.is_dir() {
            out.extend(yaml_files(root, &entry));
        } else if is_yaml(&entry) {
            let rel = entry.strip_prefix(root).unwrap().display().to_string();
            out.push((rel, fs::read_to_string(&entry).unwrap()));
        }
    }
    out
}

/// Runs one variant of a case: the differences from what it expects, as text (empty when it
/// conforms).
fn run(case: &Case, expect: &Expectations, variant: &Variant, hook: Option<Hook>) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("case");
    for (rel, text) in &variant.files {
        let path = base.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, text).unwrap();
    }
    let target = if case.is_dir {
        base.clone()
    } else {
        base.join(&variant.files[0].0)
    };
    let prefix = format!("{}/", base.display());
    let (set, findings) = analyze(&target);

    let mut missing = expect.findings.clone();
    let mut unexpected = Vec::new();
    for d in &findings {
        let got = Expected::of(d, &prefix);
        match missing.iter().position(|e| *e == got) {
            Some(i) => {
                missing.remove(i);
            }
            None => unexpected.push(d),
        }
    }
    let mut report = String::new();
    for e in &missing {
        report.push_str(&format!("  missing:    {e}\n"));
    }
    for d in &unexpected {
        report.push_str(&format!(
            "  unexpected: {}\n              {}\n",
            Expected::of(d, &prefix),
            d.to_string().replace(&prefix, "")
        ));
    }
    if expect.loads && findings.iter().any(|d| d.severity == Severity::Error) {
        report.push_str("  expected to load, but there are errors\n");
    }
    if let Some(hook) = hook {
        if let Err(why) = hook(&set) {
            report.push_str(&format!("  check failed: {why}\n"));
        }
    }
    report
}

#[test]
fn every_case_reports_exactly_what_it_expects_under_every_served_api_version() {
    let cases = cases().unwrap_or_else(|e| panic!("{e}"));
    let hooks = hooks();
    for (name, _) in &hooks {
        assert!(
            cases.iter().any(|c| c.name == *name),
            "a check names a case that does not exist: {name}"
        );
    }
    let mut failures = Vec::new();
    let mut runs = 0;
    for case in &cases {
        let expect = match expectations(case) {
            Ok(e) => e,
            Err(why) => {
                failures.push(format!("{}: {why}", case.name));
                continue;
            }
        };
        let hook = hooks
            .iter()
            .find(|(name, _)| *name == case.name)
            .map(|(_, h)| *h);
        for variant in variants(case, &expect) {
            runs += 1;
            let report = run(case, &expect, &variant, hook);
            if !report.is_empty() {
                failures.push(format!("{} ({}):\n{report}", case.name, variant.label));
            }
        }
    }
    eprintln!("conformance: {} cases, {runs} runs", cases.len());
    assert!(
        failures.is_empty(),
        "{} of {runs} runs differ from their expectations:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The runner itself: the syntax is read as documented, and a variant per served version
/// rewrites exactly the `apiVersion:` lines of served kinds.
#[test]
fn expectations_and_variants_are_read_as_documented() {
    let case = Case {
        name: "t/t".into(),
        is_dir: true,
        files: vec![(
            "a.yaml".into(),
            "# expect: warning WARD0211 line 9 spec.egress[0].hosts[1]\n\
             # expect-mesh: info WARD0208\n\
             apiVersion: networking.istio.io/v1alpha3\n\
             kind: Sidecar\n\
             metadata: {name: s}\n\
             ---\n\
             apiVersion: v1\n\
             kind: Service\n\
             metadata: {name: x}  # expect-here: info WARD0115\n\
             ---\n\
             apiVersion: security.istio.io/v1\n\
             kind: AuthorizationPolicy\n"
                .into(),
        )],
    };
    let expect = expectations(&case).unwrap();
    let e = |severity: &str, code: &str, file: Option<&str>, line, field: Option<&str>| Expected {
        severity: severity.into(),
        code: code.into(),
        file: file.map(Into::into),
        line,
        field: field.map(Into::into),
    };
    assert_eq!(
        expect.findings,
        vec![
            e(
                "warning",
                "WARD0211",
                Some("a.yaml"),
                Some(9),
                Some("spec.egress[0].hosts[1]")
            ),
            e("info", "WARD0208", None, None, None),
            e("info", "WARD0115", Some("a.yaml"), Some(9), None),
        ]
    );
    let versions: Vec<Vec<String>> = variants(&case, &expect)
        .iter()
        .map(|v| {
            v.files[0]
                .1
                .lines()
                .filter(|l| l.starts_with("apiVersion:"))
                .map(str::to_owned)
                .collect()
        })
        .collect();
    let sidecar = |v: &str| format!("apiVersion: networking.istio.io/{v}");
    let ap = |v: &str| format!("apiVersion: security.istio.io/{v}");
    let service = "apiVersion: v1".to_owned();
    assert_eq!(
        versions,
        vec![
            vec![sidecar("v1alpha3"), service.clone(), ap("v1")],
            vec![sidecar("v1"), service.clone(), ap("v1")],
            vec![sidecar("v1beta1"), service, ap("v1beta1")],
        ],
        "as written, then every object at its first served version, then at its second; the \
         third (v1alpha3 + v1) is the case as written again and is not run twice"
    );

    for bad in [
        "# expect: warn WARD0211 line 3",
        "# expect: warning W211 line 3",
        "# expect: warning WARD0211 line x",
        "# expect: warning WARD0211 3",
        "# expect-here: info WARD0115",
        "# expect-there: info WARD0115",
        "# expect: loads\n# expect: error WARD0101 line 1",
        "# nothing expected here",
    ] {
        let case = Case {
            name: "t/bad".into(),
            is_dir: false,
            files: vec![("b.yaml".into(), bad.into())],
        };
        assert!(expectations(&case).is_err(), "{bad}");
    }
}
