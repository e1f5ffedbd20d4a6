//! `ward check --cases FILE`: a list of what-if queries with the outcome each must have, for a
//! CI gate (docs/check.md, "Cases: a CI gate").
//!
//! [`parse_cases`] reads the file with the loader's located YAML, so every error names the
//! file, the line, the case (its name, else its index) and the field. [`run_cases`] decides
//! each case with [`check`](super::check) and compares: `expect` must hold for every workload
//! behind the destination, and `policy` / `rule`, when given, must be what decided for each.
//!
//! Pure: the caller reads the file.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{check, check_namespace, namespace_of_source, Query, Target};
use crate::decode::decode;
use crate::decode::unknown_name_message;
use crate::load::ConfigSet;
use crate::snapshot::MeshSnapshot;
use crate::yaml::{parse_documents, push_index, Node, Value};

/// The outcome a case expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    /// Every workload behind the destination allows.
    Allow,
    /// Every workload behind the destination refuses.
    Deny,
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Expect::Allow => "allow",
            Expect::Deny => "deny",
        })
    }
}

/// One case as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseSpec {
    name: Option<String>,
    from: String,
    to: String,
    #[serde(default)]
    request: RequestSpec,
    expect: Expect,
    policy: Option<String>,
    rule: Option<usize>,
}

/// `request:` of a case: the HTTP flags.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestSpec {
    method: Option<String>,
    path: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    claims: Option<serde_json::Value>,
}

/// A parsed case.
#[derive(Clone, Debug)]
pub struct Case {
    /// Its name, or `cases[i]` when it has none.
    pub name: String,
    /// The line the case starts on.
    pub line: usize,
    /// The query it runs.
    pub query: Query,
    /// The outcome it expects.
    pub expect: Expect,
    /// `ns/name` of the policy that must decide, for every workload.
    pub policy: Option<String>,
    /// The index of the rule that must decide, for every workload.
    pub rule: Option<usize>,
    /// Lines of `from`, `to` and `request`, for query errors.
    lines: FieldLinesOfCase,
}

#[derive(Clone, Debug, Default)]
struct FieldLinesOfCase {
    from: usize,
    to: usize,
    request: usize,
}

/// A problem with the cases file: file, line, case and field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {place}{message}")]
pub struct CasesError {
    /// The file as given.
    pub file: String,
    /// The 1-based line.
    pub line: usize,
    /// `case "NAME" (cases[i]): field: `, or empty for the file itself.
    pub place: String,
    /// What is wrong.
    pub message: String,
}

/// Parses a cases file; `file` names it in errors. Every problem is returned, not only the
/// first.
pub fn parse_cases(file: &str, text: &str) -> Result<Vec<Case>, Vec<CasesError>> {
    let error = |line: usize, place: String, message: String| CasesError {
        file: file.to_owned(),
        line,
        place,
        message,
    };
    let docs = parse_documents(text).map_err(|e| {
        vec![error(
            e.line.unwrap_or(1),
            String::new(),
            format!("invalid YAML: {}", e.message),
        )]
    })?;
    let root = match docs.as_slice() {
        [root] => root,
        [] => {
            return Err(vec![error(
                1,
                String::new(),
                "the file is empty; expected a mapping with `cases:`, a list".to_owned(),
            )])
        }
        [_, second, ..] => {
            return Err(vec![error(
                second.line,
                String::new(),
                "expected one YAML document".to_owned(),
            )])
        }
    };
    let items = top_level_cases(root)
        .map_err(|(line, message)| vec![error(line, String::new(), message)])?;
    let mut cases = Vec::new();
    let mut errors = Vec::new();
    for (i, node) in items.iter().enumerate() {
        let path = push_index("cases", i);
        let label = match node.get("name").and_then(Node::as_str) {
            Some(name) => format!("case {name:?} ({path})"),
            None => format!("case {path}"),
        };
        match decode::<CaseSpec>(node, &path) {
            Ok(spec) => cases.push(case_of(spec, node, &path)),
            Err(e) => {
                let (line, field) = e
                    .at()
                    .map_or((node.line, String::new()), |at| (at.line, at.path.clone()));
                let field = field
                    .strip_prefix(&path)
                    .map(|f| f.trim_start_matches('.'))
                    .filter(|f| !f.is_empty())
                    .map(|f| format!("{f}: "))
                    .unwrap_or_default();
                errors.push(error(line, format!("{label}: {field}"), e.to_string()));
            }
        }
    }
    if errors.is_empty() {
        Ok(cases)
    } else {
        Err(errors)
    }
}

/// The items of `cases:`, the only top-level field.
fn top_level_cases(root: &Node) -> Result<&[Node], (usize, String)> {
    let Value::Map(entries) = &root.value else {
        return Err((
            root.line,
            format!(
                "expected a mapping with `cases:`, found {}",
                root.describe()
            ),
        ));
    };
    if let Some((key, _)) = entries
        .iter()
        .find(|(k, _)| k.text().as_deref() != Some("cases"))
    {
        let name = key.text().unwrap_or_default();
        return Err((key.line, unknown_name_message("field", &name, &["cases"])));
    }
    match root.get("cases") {
        Some(Node {
            value: Value::Seq(items),
            ..
        }) => Ok(items),
        Some(other) => Err((
            other.line,
            format!("cases: expected a list, found {}", other.describe()),
        )),
        None => Err((root.line, "missing required field `cases`".to_owned())),
    }
}

fn case_of(spec: CaseSpec, node: &Node, path: &str) -> Case {
    let line_of = |key: &str| node.get(key).map_or(node.line, |n| n.line);
    let request = spec.request;
    Case {
        name: spec.name.unwrap_or_else(|| path.to_owned()),
        line: node.line,
        query: Query {
            from: spec.from,
            to: spec.to,
            method: request.method,
            path: request.path,
            headers: request
                .headers
                .iter()
                .map(|(k, v)| format!("{k}:{v}"))
                .collect(),
            claims: request.claims.map(|c| c.to_string()),
        },
        expect: spec.expect,
        policy: spec.policy,
        rule: spec.rule,
        lines: FieldLinesOfCase {
            from: line_of("from"),
            to: line_of("to"),
            request: line_of("request"),
        },
    }
}

/// What one destination workload did in a case.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Got {
    /// The WorkloadEntry, `ns/name`.
    pub workload: String,
    /// For a namespace source (`from: ns/NAME`), the identity of the namespace this is for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// `allow` or `deny`.
    pub outcome: Expect,
    /// Why: `decided by ns/policy rule[i]`, `refused by peerAuthentication STRICT`, `no ALLOW
    /// matched`, ...
    pub why: String,
    /// The deciding policy, `ns/name`, when one decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The deciding rule's index, when a rule decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<usize>,
    /// Whether this workload meets the case.
    pub passed: bool,
}

/// The result of one case.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CaseResult {
    /// The case's name.
    pub name: String,
    /// `file:line` of the case.
    pub at: String,
    /// What it expects.
    pub expect: Expect,
    /// `policy` of the case, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// `rule` of the case, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<usize>,
    /// One entry per destination workload (empty on a query error).
    pub got: Vec<Got>,
    /// The query error, `file:line: --from "x": ...`; a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether the case holds.
    pub passed: bool,
}

/// Every case's result and the counts.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CasesReport {
    /// The results, in file order.
    pub cases: Vec<CaseResult>,
    /// How many passed.
    pub passed: usize,
    /// How many failed.
    pub failed: usize,
}

impl CasesReport {
    /// Whether every case passed: `ward check --cases` exits 0 then, 1 otherwise.
    pub fn all_passed(&self) -> bool {
        self.failed == 0
    }
}

/// Decides every case against the config; `file` names the cases file in locations.
pub fn run_cases(
    set: &ConfigSet,
    snapshot: &MeshSnapshot,
    file: &str,
    cases: &[Case],
) -> CasesReport {
    let cases: Vec<CaseResult> = cases
        .iter()
        .map(|case| run_case(set, snapshot, file, case))
        .collect();
    let passed = cases.iter().filter(|c| c.passed).count();
    CasesReport {
        failed: cases.len() - passed,
        passed,
        cases,
    }
}

fn run_case(set: &ConfigSet, snapshot: &MeshSnapshot, file: &str, case: &Case) -> CaseResult {
    let mut result = CaseResult {
        name: case.name.clone(),
        at: format!("{file}:{}", case.line),
        expect: case.expect,
        policy: case.policy.clone(),
        rule: case.rule,
        got: Vec::new(),
        error: None,
        passed: false,
    };
    let namespace = namespace_of_source(snapshot, &case.query.from).is_some();
    let reports = if namespace {
        check_namespace(set, snapshot, &case.query).map(|r| r.members)
    } else {
        check(set, snapshot, &case.query).map(|r| vec![r])
    };
    match reports {
        Ok(reports) => {
            for report in &reports {
                for target in &report.targets {
                    let mut got = judge(case, target);
                    if namespace {
                        got.source.clone_from(&report.source.identity);
                    }
                    result.got.push(got);
                }
            }
            result.passed = !result.got.is_empty() && result.got.iter().all(|g| g.passed);
        }
        Err(e) => {
            let line = match e.flag {
                "from" => case.lines.from,
                "to" => case.lines.to,
                _ => case.lines.request,
            };
            result.error = Some(format!("{file}:{line}: {e}"));
        }
    }
    result
}

/// One workload's outcome, and whether it meets the case.
fn judge(case: &Case, target: &Target) -> Got {
    let outcome = if target.allowed {
        Expect::Allow
    } else {
        Expect::Deny
    };
    let decision = target.authorization.as_ref().map(|a| &a.decision);
    let policy = decision
        .and_then(|d| d.deciding_policy())
        .map(ToString::to_string);
    let rule = decision.and_then(|d| d.deciding_rule()).map(|r| r.rule);
    let why = match (target.refused_by, decision) {
        (Some("authorizationPolicy") | None, Some(d)) => {
            match (d.deciding_policy(), d.deciding_rule()) {
                (Some(p), Some(r)) => format!("decided by {p} rule[{}]", r.rule),
                (Some(p), None) => format!("decided by {p}"),
                (None, _) if d.is_allowed() => "no ALLOW policy applies".to_owned(),
                (None, _) => "no ALLOW matched".to_owned(),
            }
        }
        (Some("peerAuthentication"), _) => {
            let mode = target
                .peer_authentication
                .as_ref()
                .map(|p| format!(" {}", p.mode))
                .unwrap_or_default();
            format!("refused by peerAuthentication{mode}")
        }
        (Some(by), _) => format!("refused by {by}: {}", target.outcome),
        (None, None) => target.outcome.clone(),
    };
    let passed = outcome == case.expect
        && case
            .policy
            .as_ref()
            .is_none_or(|p| policy.as_ref() == Some(p))
        && case.rule.is_none_or(|r| rule == Some(r));
    Got {
        source: None,
        workload: target.workload.clone(),
        outcome,
        why,
        policy,
        rule,
        passed,
    }
}

/// `PASS name: expected X, got Y (why)` or `FAIL ...`, with every workload when they differ.
pub fn render_line(result: &CaseResult) -> String {
    let verdict = if result.passed { "PASS" } else { "FAIL" };
    let mut expected = result.expect.to_string();
    if let Some(p) = &result.policy {
        expected.push_str(&format!(" by {p}"));
    }
    if let Some(r) = result.rule {
        expected.push_str(&format!(" rule[{r}]"));
    }
    let got = match (&result.error, result.got.as_slice()) {
        (Some(e), _) => format!("got an error: {e}"),
        (None, []) => "got nothing: no workload decides".to_owned(),
        (None, [first, rest @ ..])
            if rest
                .iter()
                .all(|g| g.outcome == first.outcome && g.why == first.why) =>
        {
            let every = match (rest.is_empty(), first.source.is_some()) {
                (true, _) => String::new(),
                (false, false) => format!(" on all {} workloads", rest.len() + 1),
                (false, true) => format!(" for all {} identities and workloads", rest.len() + 1),
            };
            format!("got {} ({}){every}", first.outcome, first.why)
        }
        (None, all) => {
            let each: Vec<String> = all
                .iter()
                .map(|g| match &g.source {
                    Some(source) => {
                        format!("{source} to {}: {} ({})", g.workload, g.outcome, g.why)
                    }
                    None => format!("{}: {} ({})", g.workload, g.outcome, g.why),
                })
                .collect();
            format!("the workloads differ: {}", each.join("; "))
        }
    };
    format!("{verdict} {}: expected {expected}, {got}", result.name)
}

/// `N cases, P passed, F failed`.
pub fn render_summary(report: &CasesReport) -> String {
    format!(
        "{} cases, {} passed, {} failed",
        report.cases.len(),
        report.passed,
        report.failed
    )
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn errors(text: &str) -> Vec<String> {
        parse_cases("cases.yaml", text)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn run(example: &str, text: &str) -> CasesReport {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples")
            .join(example);
        let set = crate::load_paths(&[dir]).unwrap();
        let snapshot = crate::translate(&set).unwrap();
        let cases = parse_cases("cases.yaml", text).unwrap();
        run_cases(&set, &snapshot, "cases.yaml", &cases)
    }

    fn lines(report: &CasesReport) -> Vec<String> {
        report.cases.iter().map(render_line).collect()
    }

    #[test]
    fn an_unknown_field_names_the_file_line_case_and_field() {
        let text = "cases:\n- name: ok\n  from: a/b\n  to: c:1\n  expect: allow\n- name: typo\n  from: a/b\n  to: c:1\n  request:\n    metod: GET\n  expect: deny\n- from: a/b\n  to: c:1\n  expct: deny\n";
        assert_eq!(
            errors(text),
            [
                "cases.yaml:10: case \"typo\" (cases[1]): request: unknown field `metod`, expected \
                 one of `method`, `path`, `headers`, `claims` (did you mean `method`?)",
                "cases.yaml:14: case cases[2]: unknown field `expct`, expected one of `name`, \
                 `from`, `to`, `request`, `expect`, `policy`, `rule` (did you mean `expect`?)",
            ]
        );
    }

    #[test]
    fn expect_is_required_and_is_allow_or_deny() {
        let missing = errors("cases:\n- name: no expect\n  from: a/b\n  to: c:1\n");
        assert_eq!(missing.len(), 1, "{missing:?}");
        assert!(
            missing[0].starts_with("cases.yaml:2: case \"no expect\" (cases[0]): ")
                && missing[0].ends_with("missing required field `expect`"),
            "{missing:?}"
        );
        let bad = errors("cases:\n- name: bad\n  from: a/b\n  to: c:1\n  expect: allowed\n");
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert!(
            bad[0].starts_with(
                "cases.yaml:5: case \"bad\" (cases[0]): expect: unknown value \
                 `allowed`"
            ),
            "{bad:?}"
        );
    }

    #[test]
    fn the_top_level_is_cases_only() {
        assert_eq!(
            errors("case:\n- {from: a/b, to: c:1, expect: allow}\n"),
            ["cases.yaml:1: unknown field `case`, expected `cases`"]
        );
        assert_eq!(
            errors("cases: {}\n"),
            ["cases.yaml:1: cases: expected a list, found a mapping"]
        );
    }

    #[test]
    fn a_namespace_source_must_hold_for_every_identity_of_it() {
        let report = run(
            "openemr-ossm3",
            "cases:
- name: nothing of openemr reaches redis but openemr
  from: ns/openemr
  to: redis.openemr.svc.cluster.local:6379
  expect: deny
- name: every identity of openemr reaches the app
  from: ns:openemr
  to: openemr/openemr:8080
  expect: allow
",
        );
        let got = lines(&report);
        assert!(
            got[0].starts_with(
                "FAIL nothing of openemr reaches redis but openemr: expected deny, the workloads \
                 differ: spiffe://cluster.local/ns/openemr/sa/mariadb to openemr/redis: deny (no \
                 ALLOW matched); spiffe://cluster.local/ns/openemr/sa/default to openemr/redis: \
                 allow (decided by openemr/allow-openemr-to-redis rule[0]);"
            ),
            "{got:#?}"
        );
        assert_eq!(
            got[1],
            "PASS every identity of openemr reaches the app: expected allow, got allow (decided \
             by openemr/allow-ingress-to-openemr rule[0]) for all 5 identities and workloads"
        );
        let sources: Vec<&str> = report.cases[1]
            .got
            .iter()
            .filter_map(|g| g.source.as_deref())
            .collect();
        assert_eq!(sources.len(), 5);
        assert!(sources.contains(&"spiffe://cluster.local/ns/openemr/sa/*"));
    }

    #[test]
    fn openemr_cases_pass_and_fail_with_the_reason() {
        let report = run(
            "openemr-ossm3",
            "cases:
- name: OpenEMR reaches MariaDB
  from: openemr/openemr
  to: mariadb.openemr.svc.cluster.local:3306
  expect: allow
  policy: openemr/allow-openemr-to-mariadb
  rule: 0
- name: plaintext to MariaDB
  from: plaintext:10.0.0.9
  to: openemr/mariadb:3306
  expect: deny
- name: other reaches MariaDB (wrong)
  from: openemr/other
  to: mariadb.openemr.svc.cluster.local:3306
  expect: allow
- name: wrong deciding policy
  from: openemr/openemr
  to: mariadb.openemr.svc.cluster.local:3306
  expect: allow
  policy: openemr/allow-openemr-to-redis
- name: a typo in from
  from: openemr/opnemr
  to: mariadb.openemr.svc.cluster.local:3306
  expect: deny
",
        );
        let got = lines(&report);
        assert_eq!(
            got[..4],
            [
                "PASS OpenEMR reaches MariaDB: expected allow by openemr/allow-openemr-to-mariadb \
                 rule[0], got allow (decided by openemr/allow-openemr-to-mariadb rule[0])",
                "PASS plaintext to MariaDB: expected deny, got deny (refused by \
                 peerAuthentication STRICT)",
                "FAIL other reaches MariaDB (wrong): expected allow, got deny (no ALLOW matched)",
                "FAIL wrong deciding policy: expected allow by openemr/allow-openemr-to-redis, got \
                 allow (decided by openemr/allow-openemr-to-mariadb rule[0])",
            ],
            "{got:#?}"
        );
        assert!(
            got[4].starts_with(
                "FAIL a typo in from: expected deny, got an error: cases.yaml:22: --from \
                 \"openemr/opnemr\": no WorkloadEntry"
            ),
            "{got:#?}"
        );
        assert_eq!((report.passed, report.failed), (2, 3));
        assert!(!report.all_passed());
        assert_eq!(render_summary(&report), "5 cases, 2 passed, 3 failed");
    }

    #[test]
    fn fhir_cases_carry_the_request_and_claims() {
        let report = run(
            "fhir",
            r#"cases:
- name: a Medic may create patients
  from: default/client
  to: fhir-server.datamesh.svc.cluster.local:8080
  request:
    method: POST
    path: /fhir/Patient
    headers: {x-a: b}
    claims: {iss: "http://127.0.0.1:8180/realms/ward-dev", sub: bob, aud: fhir, realm_access: {roles: [Medic]}}
  expect: allow
  policy: datamesh/medic-post
- name: a Patient may not create patients
  from: default/client
  to: fhir-server.datamesh.svc.cluster.local:8080
  request:
    method: POST
    path: /fhir/Patient
    claims: {iss: "http://127.0.0.1:8180/realms/ward-dev", sub: ann, aud: fhir, realm_access: {roles: [Patient]}}
  expect: allow
"#,
        );
        assert_eq!(
            lines(&report),
            [
                "PASS a Medic may create patients: expected allow by datamesh/medic-post, got \
                 allow (decided by datamesh/medic-post rule[0])",
                "FAIL a Patient may not create patients: expected allow, got deny (no ALLOW \
                 matched)",
            ]
        );
    }

    #[test]
    fn the_example_cases_files_pass() {
        for (example, file) in [
            ("openemr-ossm3", "openemr-ossm3.yaml"),
            ("fhir", "fhir.yaml"),
        ] {
            let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../examples/checks")
                .join(file);
            let report = run(example, &std::fs::read_to_string(path).unwrap());
            let got = lines(&report);
            assert!(report.all_passed(), "{file}: {got:#?}");
            assert!(got.len() >= 6, "{file}: {got:#?}");
        }
    }

    /// Two workloads behind one service, an ALLOW policy on one of them only.
    const TWO_WORKLOADS: &str = "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: client, namespace: app}
spec: {address: 127.0.0.1, serviceAccount: client}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: db-a, namespace: app}
spec: {address: 127.0.0.2, serviceAccount: db, labels: {app: db, replica: a}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: db-b, namespace: app}
spec: {address: 127.0.0.3, serviceAccount: db, labels: {app: db, replica: b}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: app}
spec:
  hosts: [db.app.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 5432, name: tcp-db, protocol: TCP}]
  workloadSelector: {labels: {app: db}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: db, namespace: app}
spec:
  workloadSelector: {labels: {app: db}}
  ingress:
  - port: {number: 5432, name: tcp-db, protocol: TCP}
    defaultEndpoint: 127.0.0.1:15432
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: replica-a-only, namespace: app}
spec:
  selector: {matchLabels: {replica: a}}
  rules:
  - from:
    - source: {principals: [cluster.local/ns/app/sa/nobody]}
";

    #[test]
    fn expect_holds_for_every_workload_behind_a_service() {
        let set = crate::load_str("mesh.yaml", TWO_WORKLOADS).unwrap();
        let snapshot = crate::translate(&set).unwrap();
        let text = "cases:
- name: client reaches the db
  from: app/client
  to: db.app.svc.cluster.local:5432
  expect: allow
";
        let cases = parse_cases("cases.yaml", text).unwrap();
        let report = run_cases(&set, &snapshot, "cases.yaml", &cases);
        assert_eq!(
            lines(&report),
            [
                "FAIL client reaches the db: expected allow, the workloads differ: app/db-a: deny \
              (no ALLOW matched); app/db-b: allow (no ALLOW policy applies)"
            ]
        );
    }
}
