//! The conformance corpus runner: YAML tables of {policies, workload, connection, expected
//! decision}, run by this crate's tests (tests/conformance.rs). Compiled only with the `testing`
//! feature, so builds of the `ward` binary contain no file I/O in this crate.
//!
//! A corpus file holds `cases` (authorization) and/or `mtlsCases` (PeerAuthentication):
//!
//! ```yaml
//! cases:
//! - name: deny plaintext from foo
//!   mesh: {rootNamespace: istio-system, trustDomain: cluster.local}  # optional, these defaults
//!   policies:
//!   - {name: deny-foo, namespace: app, annotations: {istio.io/dry-run: "false"}, spec: {...}}
//!   workload: {namespace: app, labels: {app: web}}
//!   connection: {peer: null, sourceIp: 10.0.0.2, destinationPort: 80}
//!   # remoteIp defaults to sourceIp; sourceIp to 10.1.0.2; destinationIp to 10.1.0.1.
//!   expect: {decision: deny, policy: app/deny-foo, rule: 0}
//!   # optional: reason, detail, audit: [ns/name], dryRun: [{policy, rule, would}]
//!   # or, for a policy Ward must reject: expect: {compileError: spec.rules[0].when[0].key}
//! - name: an HTTP request (evaluated by evaluate_http instead of evaluate_l4)
//!   policies: [...]
//!   workload: {namespace: app}
//!   connection: {peer: cluster.local/ns/client/sa/curl, destinationPort: 8080}
//!   request:
//!     method: GET                      # default GET
//!     host: web.app:8080               # default web.app
//!     path: /a/../admin?x=1            # raw target, normalized by the runner; default /
//!     headers: [[x-role, user], [x-role, admin]]
//!     auth: {principal: iss/sub, audiences: [a], presenter: p, claims: {groups: [g]}}
//!   expect: {decision: deny, path: /admin}   # path: the normalized path (optional)
//!   # a target that `path::normalize` refuses: expect: {decision: reject}
//! mtlsCases:
//! - name: namespace beats mesh
//!   policies: [{name: default, namespace: app, order: 1, spec: {mtls: {mode: PERMISSIVE}}}]
//!   workload: {namespace: app, labels: {}}
//!   port: 8080
//!   expect: {mode: PERMISSIVE, policy: app/default}   # policy: null = Ward default
//! ```
//!
//! [`run_file`] is the crate's only I/O; [`run_str`] is pure.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use serde::Deserialize;

use crate::authz::{parse_dry_run, AuthzPolicy, MeshContext, WorkloadPolicies, DRY_RUN_ANNOTATION};
use crate::decision::{AllowedBy, Decision, DeniedBy, DryRunOutcome, PolicyRef};
use crate::http::{HttpAttributes, RequestAuth};
use crate::l4::{L4Attributes, Peer};
use crate::path::normalize;
use crate::peer_authn::{effective_mtls, MtlsMode, PeerAuthnPolicy};
use crate::spec::{AuthorizationPolicySpec, PeerAuthenticationSpec};

/// Why a corpus file did not pass.
#[derive(Debug, thiserror::Error)]
enum CorpusError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{file}: not a corpus file: {message}")]
    Yaml { file: String, message: String },
    #[error("{file}: case {case:?}: {message}")]
    Case {
        file: String,
        case: String,
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CorpusFile {
    #[serde(default)]
    cases: Vec<AuthzCase>,
    #[serde(default)]
    mtls_cases: Vec<MtlsCase>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AuthzCase {
    name: String,
    #[serde(default)]
    mesh: MeshContext,
    #[serde(default)]
    policies: Vec<PolicyObject>,
    workload: Workload,
    connection: Connection,
    #[serde(default)]
    request: Option<HttpRequest>,
    expect: AuthzExpect,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HttpRequest {
    #[serde(default = "default_method")]
    method: String,
    #[serde(default = "default_host")]
    host: String,
    /// The raw request-target, normalized by the runner.
    #[serde(default = "default_path")]
    path: String,
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default)]
    auth: Option<RequestAuth>,
}

fn default_method() -> String {
    "GET".to_string()
}

fn default_host() -> String {
    "web.app".to_string()
}

fn default_path() -> String {
    "/".to_string()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PolicyObject {
    name: String,
    namespace: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    spec: AuthorizationPolicySpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Workload {
    namespace: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Connection {
    #[serde(default)]
    peer: Option<String>,
    #[serde(default)]
    source_ip: Option<IpAddr>,
    #[serde(default)]
    remote_ip: Option<IpAddr>,
    #[serde(default)]
    destination_ip: Option<IpAddr>,
    destination_port: u16,
    #[serde(default)]
    sni: Option<String>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
enum Verdict {
    Allow,
    Deny,
    /// The request-target is refused before authorization (`path::normalize` fails: 400).
    Reject,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "camelCase")]
enum Reason {
    NoAllowPolicies,
    Rule,
    DenyRule,
    NoAllowMatch,
    CustomUnsupported,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AuthzExpect {
    #[serde(default)]
    decision: Option<Verdict>,
    #[serde(default)]
    reason: Option<Reason>,
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    rule: Option<usize>,
    #[serde(default)]
    detail: Option<String>,
    #[serde(default)]
    audit: Option<Vec<String>>,
    #[serde(default)]
    dry_run: Option<Vec<DryRunExpect>>,
    #[serde(default)]
    compile_error: Option<String>,
    /// The normalized path of an HTTP case.
    #[serde(default)]
    path: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DryRunExpect {
    policy: String,
    #[serde(default)]
    rule: Option<usize>,
    would: DryRunOutcome,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MtlsCase {
    name: String,
    #[serde(default = "default_root_namespace")]
    root_namespace: String,
    #[serde(default)]
    policies: Vec<PeerAuthnObject>,
    workload: Workload,
    port: u16,
    expect: MtlsExpect,
}

fn default_root_namespace() -> String {
    MeshContext::default().root_namespace
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PeerAuthnObject {
    name: String,
    namespace: String,
    #[serde(default)]
    order: Option<u64>,
    #[serde(default)]
    spec: PeerAuthenticationSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MtlsExpect {
    mode: MtlsMode,
    #[serde(default)]
    policy: Option<String>,
}

/// Runs every case of a corpus file; `Ok(number of cases)` when all pass, else one line per
/// failing case.
pub fn run_file(path: impl AsRef<Path>) -> Result<usize, String> {
    let path = path.as_ref();
    let yaml = std::fs::read_to_string(path).map_err(|source| {
        CorpusError::Read {
            path: path.display().to_string(),
            source,
        }
        .to_string()
    })?;
    run_str(&path.display().to_string(), &yaml)
}

/// Runs every case of corpus text; `file` names it in messages.
pub fn run_str(file: &str, yaml: &str) -> Result<usize, String> {
    let corpus: CorpusFile = serde_saphyr::from_str(yaml).map_err(|e| {
        CorpusError::Yaml {
            file: file.to_string(),
            message: e.to_string(),
        }
        .to_string()
    })?;
    let fail = |case: &str, message: String| CorpusError::Case {
        file: file.to_string(),
        case: case.to_string(),
        message,
    };
    let mut failures: Vec<String> = Vec::new();
    for case in &corpus.cases {
        if let Err(message) = run_authz_case(case) {
            failures.push(fail(&case.name, message).to_string());
        }
    }
    for case in &corpus.mtls_cases {
        if let Err(message) = run_mtls_case(case) {
            failures.push(fail(&case.name, message).to_string());
        }
    }
    if failures.is_empty() {
        Ok(corpus.cases.len() + corpus.mtls_cases.len())
    } else {
        Err(failures.join("\n"))
    }
}

fn run_authz_case(case: &AuthzCase) -> Result<(), String> {
    let compiled: Result<Vec<AuthzPolicy>, String> = case
        .policies
        .iter()
        .map(|object| {
            let dry_run = match object.annotations.get(DRY_RUN_ANNOTATION) {
                None => false,
                Some(value) => parse_dry_run(value)
                    .ok_or_else(|| format!("{DRY_RUN_ANNOTATION}: bad value {value:?}"))?,
            };
            let policy = PolicyRef::new(&object.namespace, &object.name);
            AuthzPolicy::compile(policy, &object.spec, dry_run, &case.mesh)
                .map_err(|e| format!("{}/{}: {e}", object.namespace, object.name))
        })
        .collect();
    let expect = &case.expect;
    let policies = match (compiled, &expect.compile_error) {
        (Err(message), Some(field)) => {
            let wanted = format!(": {field}: ");
            return if message.contains(&wanted) {
                Ok(())
            } else {
                Err(format!(
                    "expected a compile error at {field}, got {message:?}"
                ))
            };
        }
        (Ok(_), Some(field)) => {
            return Err(format!(
                "expected a compile error at {field}, but it compiled"
            ))
        }
        (Err(message), None) => return Err(format!("does not compile: {message}")),
        (Ok(policies), None) => policies,
    };

    let peer = case
        .connection
        .peer
        .as_deref()
        .map(parse_peer)
        .transpose()?;
    let source_ip = case.connection.source_ip.unwrap_or(DEFAULT_SOURCE_IP);
    let conn = L4Attributes {
        peer: peer.as_ref(),
        source_ip,
        remote_ip: case.connection.remote_ip.unwrap_or(source_ip),
        destination_ip: case
            .connection
            .destination_ip
            .unwrap_or(DEFAULT_DESTINATION_IP),
        destination_port: case.connection.destination_port,
        sni: case.connection.sni.as_deref(),
    };
    let selected = WorkloadPolicies::select(
        &policies,
        &case.workload.namespace,
        &case.workload.labels,
        &case.mesh.root_namespace,
    );
    let decision = match &case.request {
        None => selected.evaluate_l4(&conn),
        Some(request) => {
            let normalized = match normalize(&request.path) {
                Ok(normalized) => normalized,
                Err(e) if expect.decision == Some(Verdict::Reject) => {
                    return match &expect.path {
                        None => Ok(()),
                        Some(_) => Err(format!("rejected ({e}), so expect.path cannot hold")),
                    };
                }
                Err(e) => return Err(format!("path {:?} rejected: {e}", request.path)),
            };
            if let Some(want) = expect.path.as_ref().filter(|w| **w != normalized.path) {
                return Err(format!(
                    "expected normalized path {want:?}, got {:?}",
                    normalized.path
                ));
            }
            let headers: Vec<(String, String)> = request
                .headers
                .iter()
                .map(|(name, value)| (name.to_ascii_lowercase(), value.clone()))
                .collect();
            selected.evaluate_http(&HttpAttributes {
                l4: conn,
                method: &request.method,
                host: &request.host,
                path: &normalized.path,
                headers: &headers,
                auth: request.auth.as_ref(),
            })
        }
    };
    if case.request.is_none() && expect.path.is_some() {
        return Err("expect.path needs a request".to_string());
    }
    check_decision(expect, &decision).map_err(|message| format!("{message}; got {decision:?}"))
}

const DEFAULT_SOURCE_IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 0, 2));
const DEFAULT_DESTINATION_IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 0, 1));

fn check_decision(expect: &AuthzExpect, decision: &Decision) -> Result<(), String> {
    let verdict = if decision.is_allowed() {
        Verdict::Allow
    } else {
        Verdict::Deny
    };
    if let Some(want) = expect.decision {
        if want != verdict {
            return Err(format!("expected {want:?}"));
        }
    } else {
        return Err("expect.decision is required".to_string());
    }
    if let Some(want) = expect.reason {
        let got = match decision {
            Decision::Allow {
                by: AllowedBy::NoAllowPolicies,
                ..
            } => Reason::NoAllowPolicies,
            Decision::Allow {
                by: AllowedBy::Rule(_),
                ..
            } => Reason::Rule,
            Decision::Deny {
                by: DeniedBy::DenyRule(_),
                ..
            } => Reason::DenyRule,
            Decision::Deny {
                by: DeniedBy::NoAllowMatch,
                ..
            } => Reason::NoAllowMatch,
            Decision::Deny {
                by: DeniedBy::CustomUnsupported(_),
                ..
            } => Reason::CustomUnsupported,
        };
        if want != got {
            return Err(format!("expected reason {want:?}"));
        }
    }
    if let Some(want) = &expect.policy {
        let got = decision.deciding_policy().map(ToString::to_string);
        if got.as_deref() != Some(want.as_str()) {
            return Err(format!("expected policy {want}"));
        }
    }
    if let Some(want) = expect.rule {
        if decision.deciding_rule().map(|r| r.rule) != Some(want) {
            return Err(format!("expected rule {want}"));
        }
    }
    if let Some(want) = &expect.detail {
        if &decision.response_detail() != want {
            return Err(format!("expected detail {want:?}"));
        }
    }
    if let Some(want) = &expect.audit {
        let got: Vec<String> = decision
            .audit()
            .iter()
            .map(|r| r.policy.to_string())
            .collect();
        if &got != want {
            return Err(format!("expected audit {want:?}"));
        }
    }
    if let Some(want) = &expect.dry_run {
        let got = decision.dry_run();
        let same = got.len() == want.len()
            && got.iter().zip(want).all(|(g, w)| {
                g.policy.to_string() == w.policy && g.rule == w.rule && g.would == w.would
            });
        if !same {
            return Err("dry-run notes differ from expect.dryRun".to_string());
        }
    }
    Ok(())
}

/// `td/ns/<ns>/sa/<sa>` → a [`Peer`].
fn parse_peer(principal: &str) -> Result<Peer, String> {
    match principal.split('/').collect::<Vec<_>>()[..] {
        [td, "ns", ns, "sa", sa] if !td.is_empty() && !ns.is_empty() && !sa.is_empty() => {
            Ok(Peer::new(td, ns, sa))
        }
        _ => Err(format!("peer {principal:?} is not td/ns/<ns>/sa/<sa>")),
    }
}

fn run_mtls_case(case: &MtlsCase) -> Result<(), String> {
    let policies: Vec<PeerAuthnPolicy> = case
        .policies
        .iter()
        .zip(0u64..)
        .map(|(object, index)| PeerAuthnPolicy {
            policy: PolicyRef::new(&object.namespace, &object.name),
            spec: object.spec.clone(),
            order: object.order.unwrap_or(index),
        })
        .collect();
    let got = effective_mtls(
        &policies,
        &case.root_namespace,
        &case.workload.namespace,
        &case.workload.labels,
        case.port,
    );
    let got_policy = got.policy.as_ref().map(ToString::to_string);
    if got.mode != case.expect.mode || got_policy != case.expect.policy {
        return Err(format!(
            "expected {} by {:?}, got {} by {:?}",
            case.expect.mode, case.expect.policy, got.mode, got_policy
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runner_reports_each_failing_case() {
        let yaml = r#"
cases:
- name: passes
  workload: {namespace: a}
  connection: {destinationPort: 80}
  expect: {decision: allow, reason: noAllowPolicies}
- name: wrong decision
  workload: {namespace: a}
  connection: {destinationPort: 80}
  expect: {decision: deny}
- name: missing compile error
  policies: [{name: p, namespace: a, spec: {}}]
  workload: {namespace: a}
  connection: {destinationPort: 80}
  expect: {compileError: spec.rules}
mtlsCases:
- name: default
  workload: {namespace: a}
  port: 80
  expect: {mode: PERMISSIVE}
"#;
        let err = run_str("t.yaml", yaml).unwrap_err();
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 3, "{err}");
        assert!(lines[0].starts_with("t.yaml: case \"wrong decision\": expected Deny"));
        assert!(lines[1].contains("missing compile error"));
        assert!(lines[2].contains("expected PERMISSIVE by None, got STRICT by None"));
    }

    #[test]
    fn runner_rejects_malformed_files() {
        let table = [
            "cases: [{name: x}]\n",
            "cases: []\nextra: 1\n",
            "cases:\n- name: bad peer\n  workload: {namespace: a}\n  connection: {peer: spiffe://x, destinationPort: 1}\n  expect: {decision: allow}\n",
            "cases:\n- name: bad annotation\n  policies: [{name: p, namespace: a, annotations: {istio.io/dry-run: maybe}}]\n  workload: {namespace: a}\n  connection: {destinationPort: 1}\n  expect: {decision: allow}\n",
        ];
        for yaml in table {
            assert!(run_str("t.yaml", yaml).is_err(), "{yaml}");
        }
        assert_eq!(run_str("t.yaml", "{}"), Ok(0));
    }

    #[test]
    fn runner_checks_http_cases() {
        let case = |request: &str, expect: &str| {
            format!(
                "cases:\n- name: c\n  policies: [{{name: p, namespace: a, spec: {{action: DENY, rules: [{{to: [{{operation: {{paths: [\"/admin*\"]}}}}]}}]}}}}]\n  workload: {{namespace: a}}\n  connection: {{destinationPort: 80}}\n  request: {request}\n  expect: {expect}\n"
            )
        };
        // (request, expect, passes)
        let table = [
            (
                "{path: /a/../admin}",
                "{decision: deny, path: /admin}",
                true,
            ),
            (
                "{path: /a/../admin}",
                "{decision: deny, path: /a/../admin}",
                false,
            ),
            ("{path: /public}", "{decision: allow}", true),
            ("{path: /public}", "{decision: deny}", false),
            ("{path: \"/%2Fadmin\"}", "{decision: reject}", true),
            ("{path: \"/%2Fadmin\"}", "{decision: deny}", false),
            (
                "{path: \"/%2Fadmin\"}",
                "{decision: reject, path: /admin}",
                false,
            ),
            ("{path: /admin}", "{decision: reject}", false),
            (
                "{path: /admin, headers: [[X-A, b]], auth: {principal: i/s, claims: {g: [1]}}}",
                "{decision: deny}",
                true,
            ),
            (
                "{path: /admin, auth: {principal: i/s, bogus: 1}}",
                "{decision: deny}",
                false,
            ),
        ];
        for (request, expect, passes) in table {
            let yaml = case(request, expect);
            assert_eq!(
                run_str("t.yaml", &yaml).is_ok(),
                passes,
                "{request} {expect}"
            );
        }
        let l4_with_path = "cases:\n- name: c\n  workload: {namespace: a}\n  connection: {destinationPort: 80}\n  expect: {decision: allow, path: /}\n";
        assert!(run_str("t.yaml", l4_with_path).is_err());
    }

    #[test]
    fn peer_parse_table() {
        let table = [
            ("cluster.local/ns/a/sa/b", true),
            ("td/ns/a/sa/b/c", false),
            ("td/sa/a/ns/b", false),
            ("td/ns//sa/b", false),
            ("", false),
        ];
        for (text, ok) in table {
            assert_eq!(parse_peer(text).is_ok(), ok, "{text}");
        }
    }
}
