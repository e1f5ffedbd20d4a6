//! Why a connection or request got its decision: every policy of a workload, every rule, and for
//! each rule that did not match the first part that failed.
//!
//! The walk is the linear one (every rule of every policy, in order, into the shared `Tally`),
//! and whether a rule matches is asked of the very functions `evaluate_l4` and `evaluate_http`
//! use, so the [`Explanation::decision`] is the decision the proxy takes (a property test checks
//! it against the indexed evaluation). Only the reason a rule failed is worked out here: its
//! `from` entries, `to` entries and `when` conditions are tried one field at a time, each field
//! on its own with the same matchers (an empty field matches anything, so a source with one
//! field set matches exactly when that field does).
//!
//! Policies are listed in Istio's order of evaluation: CUSTOM, DENY, ALLOW, then AUDIT
//! (istio/api `security/v1beta1/authorization_policy.proto`), each group in the workload's
//! policy order.

use serde::{Deserialize, Serialize};

use crate::authz::{
    AuthzPolicy, AuthzRule, ConditionMatch, OperationMatch, SourceMatch, WorkloadPolicies,
};
use crate::decision::{Decision, PolicyRef, Tally};
use crate::http::HttpAttributes;
use crate::l4::{L4Attributes, Unknown};
use crate::matcher::ValueMatch;
use crate::spec::Action;

/// A decision and how every policy came to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// The decision: the same as `evaluate_l4` / `evaluate_http` give.
    pub decision: Decision,
    /// Every policy of the workload, CUSTOM first, then DENY, ALLOW and AUDIT.
    pub policies: Vec<PolicyTrace>,
}

/// What one policy's rules did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTrace {
    /// The policy.
    pub policy: PolicyRef,
    /// Its action.
    pub action: Action,
    /// `istio.io/dry-run`: reported, never enforced.
    pub dry_run: bool,
    /// Its rules, in `spec.rules` order. Empty: the policy has no rules and matches nothing.
    pub rules: Vec<RuleTrace>,
}

/// What one rule did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleTrace {
    /// Index in `spec.rules`.
    pub rule: usize,
    /// Matched, or why not.
    pub outcome: RuleOutcome,
}

/// The outcome of one rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "outcome")]
pub enum RuleOutcome {
    /// Every part matched.
    Matched,
    /// The first part that did not match, e.g. `from[0].source.principals (peer: none, plaintext)`.
    Failed {
        /// What failed, with the attribute it was matched against.
        reason: String,
    },
    /// An earlier rule of the same policy matched; this one is not tried.
    NotTried,
}

/// What is being decided.
#[derive(Clone, Copy)]
enum Subject<'r, 'a> {
    L4(&'r L4Attributes<'a>),
    Http(&'r HttpAttributes<'a>),
}

impl Subject<'_, '_> {
    fn l4(&self) -> &L4Attributes<'_> {
        match self {
            Subject::L4(conn) => conn,
            Subject::Http(req) => &req.l4,
        }
    }

    /// Whether `rule` matches: the evaluators' own test.
    fn rule_matches(&self, policy: &AuthzPolicy, rule: &AuthzRule) -> bool {
        match self {
            Subject::L4(conn) => policy.rule_matches_l4(rule, conn),
            Subject::Http(req) => rule.matches_http(req, Unknown::for_action(policy.action)),
        }
    }

    fn source_matches(&self, source: &SourceMatch, unknown: Unknown) -> bool {
        match self {
            Subject::L4(conn) => source.matches_l4(conn, unknown),
            Subject::Http(req) => source.matches_http(req, unknown),
        }
    }

    fn operation_matches(&self, operation: &OperationMatch, unknown: Unknown) -> bool {
        match self {
            Subject::L4(conn) => operation.matches_l4(conn, unknown),
            Subject::Http(req) => operation.matches_http(req, unknown),
        }
    }

    fn condition_matches(&self, condition: &ConditionMatch, unknown: Unknown) -> bool {
        match self {
            Subject::L4(conn) => condition.matches_l4(conn, unknown),
            Subject::Http(req) => condition.matches_http(req, unknown),
        }
    }

    /// The value a field was matched against, for the trace.
    fn attribute(&self, field: &str) -> String {
        let l4 = self.l4();
        let peer = || match l4.peer {
            Some(p) => format!("peer: {}", p.principal),
            None => "peer: none, plaintext".to_owned(),
        };
        let http = |value: fn(&HttpAttributes<'_>) -> String| match self {
            Subject::L4(_) => "not HTTP: a TCP port".to_owned(),
            Subject::Http(req) => value(req),
        };
        match field {
            "principals" | "namespaces" | "serviceAccounts" | "trustDomains" => peer(),
            "ipBlocks" => format!("source ip: {}", l4.source_ip),
            "remoteIpBlocks" => format!("remote ip: {}", l4.remote_ip),
            "ports" => format!("port: {}", l4.destination_port),
            "requestPrincipals" => http(|r| match r.auth {
                Some(a) => format!("request principal: {}", a.principal),
                None => "no valid token".to_owned(),
            }),
            "hosts" => http(|r| format!("host: {}", r.host)),
            "methods" => http(|r| format!("method: {}", r.method)),
            "paths" => http(|r| format!("path: {}", r.path)),
            _ => String::new(),
        }
    }

    /// Why `rule` (which did not match) failed: the first part that did not.
    fn why_not(&self, policy: &AuthzPolicy, rule: &AuthzRule) -> String {
        if matches!(self, Subject::L4(_)) && policy.drops_at_l4(rule) {
            return format!(
                "uses HTTP attributes ({}) on a TCP port: an ALLOW rule with them is ignored",
                rule.http_attributes().join(", ")
            );
        }
        let unknown = Unknown::for_action(policy.action);
        if !rule.from.is_empty() && !rule.from.iter().any(|s| self.source_matches(s, unknown)) {
            let each: Vec<String> = rule
                .from
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    self.first_failed(&format!("from[{i}].source"), source_fields(s, unknown))
                })
                .collect();
            return each.join("; ");
        }
        if !rule.to.is_empty() && !rule.to.iter().any(|o| self.operation_matches(o, unknown)) {
            let each: Vec<String> = rule
                .to
                .iter()
                .enumerate()
                .map(|(i, o)| {
                    self.first_failed(&format!("to[{i}].operation"), operation_fields(o, unknown))
                })
                .collect();
            return each.join("; ");
        }
        match rule
            .when
            .iter()
            .position(|c| !self.condition_matches(c, unknown))
        {
            Some(i) => format!(
                "when[{i}] {}{}",
                rule.when
                    .get(i)
                    .map(ConditionMatch::key)
                    .unwrap_or_default(),
                self.condition_value(rule.when.get(i))
            ),
            None => "did not match".to_owned(),
        }
    }

    /// The first single-field part (from [`source_fields`] / [`operation_fields`]) that fails.
    fn first_failed(&self, at: &str, fields: Vec<(String, Part)>) -> String {
        let matches = |part: &Part| match part {
            Part::Source(s, u) => self.source_matches(s, *u),
            Part::Operation(o, u) => self.operation_matches(o, *u),
        };
        fields
            .into_iter()
            .find(|(_, part)| !matches(part))
            .map(|(name, _)| {
                let first = name.split('/').next().unwrap_or_default();
                let base = lower_first(first.strip_prefix("not").unwrap_or(first));
                format!("{at}.{name} ({})", self.attribute(&base))
            })
            .unwrap_or_else(|| format!("{at} did not match"))
    }

    fn condition_value(&self, condition: Option<&ConditionMatch>) -> String {
        let l4 = self.l4();
        match condition {
            Some(ConditionMatch::SourceIp(_)) => format!(" (source ip: {})", l4.source_ip),
            Some(ConditionMatch::DestinationPort(_)) => format!(" (port: {})", l4.destination_port),
            Some(ConditionMatch::RequestHeader { name, .. }) => match self {
                Subject::Http(req) => {
                    let values: Vec<&str> = req
                        .headers
                        .iter()
                        .filter(|(n, _)| n == name)
                        .map(|(_, v)| v.as_str())
                        .collect();
                    format!(" (values: {values:?})")
                }
                Subject::L4(_) => " (not HTTP: a TCP port)".to_owned(),
            },
            Some(
                ConditionMatch::RequestAuthClaim { .. }
                | ConditionMatch::RequestAuthPrincipal(_)
                | ConditionMatch::RequestAuthAudiences(_)
                | ConditionMatch::RequestAuthPresenter(_),
            ) => match self {
                Subject::Http(req) if req.auth.is_none() => " (no valid token)".to_owned(),
                Subject::Http(_) => String::new(),
                Subject::L4(_) => " (not HTTP: a TCP port)".to_owned(),
            },
            Some(
                ConditionMatch::SourceNamespace(_)
                | ConditionMatch::SourcePrincipal(_)
                | ConditionMatch::SourceServiceAccount(_)
                | ConditionMatch::SourceTrustDomain(_),
            ) => format!(" ({})", self.attribute("principals")),
            _ => String::new(),
        }
    }
}

fn lower_first(name: &str) -> String {
    let mut chars = name.chars();
    match chars.next() {
        Some(first) => first.to_ascii_lowercase().to_string() + chars.as_str(),
        None => String::new(),
    }
}

/// One field of a source or operation, alone, with how a missing attribute counts.
enum Part {
    Source(SourceMatch, Unknown),
    Operation(OperationMatch, Unknown),
}

/// `principals`, `notPrincipals` or `principals/notPrincipals`, as the field is set.
fn field_name<T>(field: &ValueMatch<T>, name: &str) -> String {
    let mut chars = name.chars();
    let upper: String = chars
        .next()
        .map(|c| c.to_ascii_uppercase())
        .into_iter()
        .collect();
    let not = format!("not{upper}{}", chars.as_str());
    match (field.values.is_empty(), field.not_values.is_empty()) {
        (false, true) => name.to_owned(),
        (true, false) => not,
        _ => format!("{name}/{not}"),
    }
}

/// Each set field of `s` as a source with only that field, judged under `unknown` (the rule of
/// the policy's action for missing attributes).
fn source_fields(s: &SourceMatch, unknown: Unknown) -> Vec<(String, Part)> {
    let mut out = Vec::new();
    let mut add = |name: String, part: SourceMatch| out.push((name, Part::Source(part, unknown)));
    let empty = SourceMatch::default;
    if !s.principals.is_empty() {
        let part = SourceMatch {
            principals: s.principals.clone(),
            ..empty()
        };
        add(field_name(&s.principals, "principals"), part);
    }
    if !s.request_principals.is_empty() {
        let part = SourceMatch {
            request_principals: s.request_principals.clone(),
            ..empty()
        };
        add(field_name(&s.request_principals, "requestPrincipals"), part);
    }
    if !s.namespaces.is_empty() {
        let part = SourceMatch {
            namespaces: s.namespaces.clone(),
            ..empty()
        };
        add(field_name(&s.namespaces, "namespaces"), part);
    }
    if !s.service_accounts.is_empty() {
        let part = SourceMatch {
            service_accounts: s.service_accounts.clone(),
            ..empty()
        };
        add(field_name(&s.service_accounts, "serviceAccounts"), part);
    }
    if !s.trust_domains.is_empty() {
        let part = SourceMatch {
            trust_domains: s.trust_domains.clone(),
            ..empty()
        };
        add(field_name(&s.trust_domains, "trustDomains"), part);
    }
    if !s.ip_blocks.is_empty() {
        let part = SourceMatch {
            ip_blocks: s.ip_blocks.clone(),
            ..empty()
        };
        add(field_name(&s.ip_blocks, "ipBlocks"), part);
    }
    if !s.remote_ip_blocks.is_empty() {
        let part = SourceMatch {
            remote_ip_blocks: s.remote_ip_blocks.clone(),
            ..empty()
        };
        add(field_name(&s.remote_ip_blocks, "remoteIpBlocks"), part);
    }
    out
}

/// Each set field of `o` as an operation with only that field, judged under `unknown`.
fn operation_fields(o: &OperationMatch, unknown: Unknown) -> Vec<(String, Part)> {
    let mut out = Vec::new();
    let mut add = |name: String, part: OperationMatch| {
        out.push((name, Part::Operation(part, unknown)));
    };
    let empty = OperationMatch::default;
    if !o.hosts.is_empty() {
        let part = OperationMatch {
            hosts: o.hosts.clone(),
            ..empty()
        };
        add(field_name(&o.hosts, "hosts"), part);
    }
    if !o.ports.is_empty() {
        let part = OperationMatch {
            ports: o.ports.clone(),
            ..empty()
        };
        add(field_name(&o.ports, "ports"), part);
    }
    if !o.methods.is_empty() {
        let part = OperationMatch {
            methods: o.methods.clone(),
            ..empty()
        };
        add(field_name(&o.methods, "methods"), part);
    }
    if !o.paths.is_empty() {
        let part = OperationMatch {
            paths: o.paths.clone(),
            ..empty()
        };
        add(field_name(&o.paths, "paths"), part);
    }
    out
}

/// Istio's order of evaluation.
fn action_rank(action: Action) -> u8 {
    match action {
        Action::Custom => 0,
        Action::Deny => 1,
        Action::Allow => 2,
        Action::Audit => 3,
    }
}

impl WorkloadPolicies {
    /// [`WorkloadPolicies::evaluate_l4`] with the reasons: the same decision, and what every
    /// rule did.
    pub fn explain_l4(&self, conn: &L4Attributes<'_>) -> Explanation {
        self.explain(Subject::L4(conn))
    }

    /// [`WorkloadPolicies::evaluate_http`] with the reasons: the same decision, and what every
    /// rule did.
    pub fn explain_http(&self, req: &HttpAttributes<'_>) -> Explanation {
        self.explain(Subject::Http(req))
    }

    fn explain(&self, subject: Subject<'_, '_>) -> Explanation {
        let mut tally = Tally::default();
        let mut policies = Vec::with_capacity(self.policies.len());
        for policy in &self.policies {
            let mut matched = None;
            let mut rules = Vec::with_capacity(policy.rules.len());
            for (i, rule) in policy.rules.iter().enumerate() {
                let outcome = if matched.is_some() {
                    RuleOutcome::NotTried
                } else if subject.rule_matches(policy, rule) {
                    matched = Some(i);
                    RuleOutcome::Matched
                } else {
                    RuleOutcome::Failed {
                        reason: subject.why_not(policy, rule),
                    }
                };
                rules.push(RuleTrace { rule: i, outcome });
            }
            tally.record(policy, matched);
            policies.push(PolicyTrace {
                policy: policy.policy.clone(),
                action: policy.action,
                dry_run: policy.dry_run,
                rules,
            });
        }
        policies.sort_by_key(|p| action_rank(p.action));
        Explanation {
            decision: tally.decide(),
            policies,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::MeshContext;
    use crate::l4::Peer;
    use crate::spec::AuthorizationPolicySpec;

    fn policy(name: &str, yaml: &str) -> AuthzPolicy {
        let spec: AuthorizationPolicySpec = serde_saphyr::from_str(yaml).unwrap();
        let mesh = MeshContext::default();
        AuthzPolicy::compile(PolicyRef::new("foo", name), &spec, false, &mesh).unwrap()
    }

    fn reasons(explanation: &Explanation) -> Vec<(String, Vec<String>)> {
        explanation
            .policies
            .iter()
            .map(|p| {
                let rules = p
                    .rules
                    .iter()
                    .map(|r| match &r.outcome {
                        RuleOutcome::Matched => "matched".to_owned(),
                        RuleOutcome::Failed { reason } => reason.clone(),
                        RuleOutcome::NotTried => "not tried".to_owned(),
                    })
                    .collect();
                (p.policy.name.clone(), rules)
            })
            .collect()
    }

    #[test]
    fn l4_trace_names_the_first_failing_part_in_istio_order() {
        let workload = WorkloadPolicies::new(vec![
            policy(
                "allow-db",
                "rules:\n- from: [{source: {principals: [cluster.local/ns/a/sa/app]}}]\n  to: [{operation: {ports: [\"3306\"]}}]\n- to: [{operation: {methods: [GET]}}]\n- {}\n- {}",
            ),
            policy(
                "deny-ns",
                "action: DENY\nrules: [{from: [{source: {notNamespaces: [foo]}}], when: [{key: destination.port, values: [\"1\"]}]}]",
            ),
        ]);
        let peer = Peer::new("cluster.local", "b", "web");
        let conn = L4Attributes {
            peer: Some(&peer),
            source_ip: "10.0.0.5".parse().unwrap(),
            remote_ip: "10.0.0.5".parse().unwrap(),
            destination_ip: "10.0.0.9".parse().unwrap(),
            destination_port: 3306,
            sni: None,
        };
        let explanation = workload.explain_l4(&conn);
        assert_eq!(explanation.decision, workload.evaluate_l4(&conn));
        assert_eq!(
            reasons(&explanation),
            [
                (
                    "deny-ns".to_owned(),
                    vec!["when[0] destination.port (port: 3306)".to_owned()]
                ),
                (
                    "allow-db".to_owned(),
                    vec![
                        "from[0].source.principals (peer: cluster.local/ns/b/sa/web)".to_owned(),
                        "uses HTTP attributes (methods) on a TCP port: an ALLOW rule with them \
                         is ignored"
                            .to_owned(),
                        "matched".to_owned(),
                        "not tried".to_owned(),
                    ]
                ),
            ]
        );
    }
}
