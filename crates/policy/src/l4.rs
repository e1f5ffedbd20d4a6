//! Deciding a TCP connection (L4) against the policies of one workload.
//!
//! Order, from istio/api `security/v1beta1/authorization_policy.proto`:
//! "1. If there are any CUSTOM policies that match the request, evaluate and deny the request if
//! the evaluation result is deny. 2. If there are any DENY policies that match the request, deny
//! the request. 3. If there are no ALLOW policies for the workload, allow the request. 4. If any
//! of the ALLOW policies match the request, allow the request. 5. Deny the request."
//! "AUDIT policies do not affect whether requests are allowed or denied".
//!
//! Attributes a TCP connection does not have are resolved so that not knowing never widens
//! access ([`Unknown`]):
//! - HTTP-only fields (`hosts`, `methods`, `paths`, `requestPrincipals`, `request.*` keys):
//!   as Istio (istio/istio `pilot/pkg/security/authz/model/model.go`, `checkError`), an ALLOW
//!   rule using one is dropped whole; in DENY, AUDIT (and CUSTOM) only that field is dropped.
//! - Identity fields without an authenticated peer (plaintext): DELIBERATELY STRICTER THAN ISTIO.
//!   In DENY/AUDIT/CUSTOM the field counts as matched, positive and `not` forms alike, so
//!   `DENY namespaces: [foo]` also denies identity-less plaintext (ISTIO-SECURITY-2021-004);
//!   in ALLOW it counts as not matched, `not` forms included (Istio lets `notPrincipals` match
//!   plaintext in an ALLOW).

use std::net::IpAddr;

use crate::authz::{
    AuthzPolicy, AuthzRule, ConditionMatch, OperationMatch, SourceMatch, WorkloadPolicies,
};
use crate::decision::Decision;
use crate::index::Keys;
use crate::matcher::ValueMatch;
use crate::spec::Action;

/// An authenticated peer. principal is Istio form without `spiffe://`: `td/ns/<ns>/sa/<sa>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// `td/ns/<ns>/sa/<sa>`.
    pub principal: String,
    /// The trust domain of the peer's SPIFFE id.
    pub trust_domain: String,
    /// The namespace in the peer's SPIFFE id.
    pub namespace: String,
    /// The service account in the peer's SPIFFE id.
    pub service_account: String,
}

impl Peer {
    /// The peer `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`.
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Peer {
        let (trust_domain, namespace, service_account) = (
            trust_domain.into(),
            namespace.into(),
            service_account.into(),
        );
        Peer {
            principal: format!("{trust_domain}/ns/{namespace}/sa/{service_account}"),
            trust_domain,
            namespace,
            service_account,
        }
    }
}

/// What is known about a connection at L4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L4Attributes<'a> {
    /// The mTLS peer; `None` = plaintext, no identity.
    pub peer: Option<&'a Peer>,
    /// Source address of the connection (`ipBlocks`, `source.ip`).
    pub source_ip: IpAddr,
    /// Original client address (`remoteIpBlocks`, `remote.ip`); the source address when no
    /// trusted proxy reported another.
    pub remote_ip: IpAddr,
    /// Address the connection was made to (`destination.ip`).
    pub destination_ip: IpAddr,
    /// Workload (target) port (`ports`, `destination.port`).
    pub destination_port: u16,
    /// TLS SNI (`connection.sni`).
    pub sni: Option<&'a str>,
}

/// How an attribute the connection does not carry counts, chosen per action to fail closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unknown {
    /// ALLOW: a missing attribute never grants access.
    NoMatch,
    /// DENY, AUDIT, CUSTOM: a missing attribute never escapes a denial.
    Match,
}

impl Unknown {
    pub(crate) fn for_action(action: Action) -> Unknown {
        match action {
            Action::Allow => Unknown::NoMatch,
            Action::Deny | Action::Audit | Action::Custom => Unknown::Match,
        }
    }

    /// A field whose attribute is missing: unset fields match, others count as chosen.
    pub(crate) fn field<T>(self, field: &ValueMatch<T>) -> bool {
        field.is_empty() || self == Unknown::Match
    }
}

/// A field over an attribute that may be missing (an identity without a peer).
fn known<T, A: ?Sized>(
    field: &ValueMatch<T>,
    attribute: Option<&A>,
    unknown: Unknown,
    matches_one: impl Fn(&T, &A) -> bool,
) -> bool {
    match attribute {
        _ if field.is_empty() => true,
        Some(value) => field.matches_with(|pattern| matches_one(pattern, value)),
        None => unknown.field(field),
    }
}

impl SourceMatch {
    pub(crate) fn matches_l4(&self, conn: &L4Attributes<'_>, unknown: Unknown) -> bool {
        self.matches_connection(conn, unknown) && unknown.field(&self.request_principals)
    }

    /// Every field but `requestPrincipals`: what the connection alone decides (shared with the
    /// HTTP evaluator).
    pub(crate) fn matches_connection(&self, conn: &L4Attributes<'_>, unknown: Unknown) -> bool {
        let peer = conn.peer;
        known(
            &self.principals,
            peer.map(|p| p.principal.as_str()),
            unknown,
            |m, v| m.matches(v),
        ) && known(
            &self.namespaces,
            peer.map(|p| p.namespace.as_str()),
            unknown,
            |m, v| m.matches(v),
        ) && known(&self.service_accounts, peer, unknown, |m, p| {
            m.matches(&p.namespace, &p.service_account)
        }) && known(
            &self.trust_domains,
            peer.map(|p| p.trust_domain.as_str()),
            unknown,
            |m, v| m.matches(v),
        ) && self
            .ip_blocks
            .matches_with(|net| net.contains(&conn.source_ip))
            && self
                .remote_ip_blocks
                .matches_with(|net| net.contains(&conn.remote_ip))
    }
}

impl OperationMatch {
    pub(crate) fn matches_l4(&self, conn: &L4Attributes<'_>, unknown: Unknown) -> bool {
        self.ports
            .matches_with(|port| *port == conn.destination_port)
            && unknown.field(&self.hosts)
            && unknown.field(&self.methods)
            && unknown.field(&self.paths)
    }
}

impl ConditionMatch {
    /// Connection attributes are matched as such; HTTP-only ones count as `unknown` (the HTTP
    /// evaluator matches those itself and delegates the others here).
    pub(crate) fn matches_l4(&self, conn: &L4Attributes<'_>, unknown: Unknown) -> bool {
        let peer = conn.peer;
        match self {
            ConditionMatch::SourceIp(f) => f.matches_with(|net| net.contains(&conn.source_ip)),
            ConditionMatch::RemoteIp(f) => f.matches_with(|net| net.contains(&conn.remote_ip)),
            ConditionMatch::DestinationIp(f) => {
                f.matches_with(|net| net.contains(&conn.destination_ip))
            }
            ConditionMatch::DestinationPort(f) => f.matches_with(|p| *p == conn.destination_port),
            // Envoy matches `requested_server_name`, which is empty without SNI.
            ConditionMatch::ConnectionSni(f) => {
                f.matches_with(|m| m.matches(conn.sni.unwrap_or("")))
            }
            ConditionMatch::SourceNamespace(f) => {
                known(f, peer.map(|p| p.namespace.as_str()), unknown, |m, v| {
                    m.matches(v)
                })
            }
            ConditionMatch::SourcePrincipal(f) => {
                known(f, peer.map(|p| p.principal.as_str()), unknown, |m, v| {
                    m.matches(v)
                })
            }
            ConditionMatch::SourceServiceAccount(f) => known(f, peer, unknown, |m, p| {
                m.matches(&p.namespace, &p.service_account)
            }),
            ConditionMatch::SourceTrustDomain(f) => {
                known(f, peer.map(|p| p.trust_domain.as_str()), unknown, |m, v| {
                    m.matches(v)
                })
            }
            ConditionMatch::RequestHeader { values: f, .. }
            | ConditionMatch::RequestAuthClaim { values: f, .. }
            | ConditionMatch::RequestAuthPrincipal(f)
            | ConditionMatch::RequestAuthAudiences(f)
            | ConditionMatch::RequestAuthPresenter(f) => unknown.field(f),
        }
    }
}

impl AuthzRule {
    pub(crate) fn matches_l4(&self, conn: &L4Attributes<'_>, unknown: Unknown) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.matches_l4(conn, unknown)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches_l4(conn, unknown)))
            && self.when.iter().all(|c| c.matches_l4(conn, unknown))
    }
}

impl AuthzPolicy {
    /// The index of the first rule that matches the connection, if any, under the L4 rules
    /// described in this module (HTTP-only ALLOW rules dropped, missing identities fail closed).
    pub fn matching_rule_l4(&self, conn: &L4Attributes<'_>) -> Option<usize> {
        self.rules
            .iter()
            .position(|rule| self.rule_matches_l4(rule, conn))
    }

    /// Whether `rule`, one of this policy's, matches the connection at L4.
    pub(crate) fn rule_matches_l4(&self, rule: &AuthzRule, conn: &L4Attributes<'_>) -> bool {
        !self.drops_at_l4(rule) && rule.matches_l4(conn, Unknown::for_action(self.action))
    }

    /// Whether `rule` is ignored at L4: istio/istio model.go `checkError`, for ALLOW, "This will
    /// make all rules in the current permission ignored, effectively result in a smaller allow
    /// policy".
    pub(crate) fn drops_at_l4(&self, rule: &AuthzRule) -> bool {
        self.action == Action::Allow && rule.uses_http_attributes()
    }
}

impl WorkloadPolicies {
    /// Decide a connection at L4 (a TCP port). Only the rules the index files under the peer's
    /// principal and the destination port, plus the unindexed ones, are tried (module `index`);
    /// the decision is the one the linear walk of every rule gives.
    pub fn evaluate_l4(&self, conn: &L4Attributes<'_>) -> Decision {
        let keys = Keys {
            principal: conn.peer.map(|p| p.principal.as_str()),
            port: conn.destination_port,
            headers: &[],
        };
        self.decide_indexed(&self.index.l4, &keys, |policy, rule| {
            policy.rule_matches_l4(rule, conn)
        })
    }

    /// [`WorkloadPolicies::evaluate_l4`] without the index: every rule of every policy, in
    /// order. The reference the indexed evaluation must agree with.
    #[cfg(test)]
    pub(crate) fn evaluate_l4_linear(&self, conn: &L4Attributes<'_>) -> Decision {
        let mut tally = crate::decision::Tally::default();
        for policy in &self.policies {
            tally.record(policy, policy.matching_rule_l4(conn));
        }
        tally.decide()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::MeshContext;
    use crate::decision::{AllowedBy, DeniedBy, DryRunNote, DryRunOutcome, PolicyRef, RuleRef};
    use crate::spec::AuthorizationPolicySpec;

    const SRC: &str = "10.0.0.5";

    fn policy(name: &str, yaml: &str) -> AuthzPolicy {
        policy_in("foo", name, yaml, false)
    }

    fn policy_in(ns: &str, name: &str, yaml: &str, dry_run: bool) -> AuthzPolicy {
        let spec: AuthorizationPolicySpec = serde_saphyr::from_str(yaml).unwrap();
        let mesh = MeshContext::default();
        AuthzPolicy::compile(PolicyRef::new(ns, name), &spec, dry_run, &mesh).unwrap()
    }

    fn conn(peer: Option<&Peer>, port: u16) -> L4Attributes<'_> {
        L4Attributes {
            peer,
            source_ip: SRC.parse().unwrap(),
            remote_ip: "192.0.2.7".parse().unwrap(),
            destination_ip: "10.0.0.9".parse().unwrap(),
            destination_port: port,
            sni: None,
        }
    }

    /// (name, policy yaml, peer, port, matches) for one policy's `matching_rule_l4`.
    type MatchCase = (
        &'static str,
        &'static str,
        Option<(&'static str, &'static str)>,
        u16,
        bool,
    );

    #[test]
    fn rule_matching_table() {
        let table: &[MatchCase] = &[
            ("empty rule", "rules: [{}]", None, 80, true),
            ("no rules", "{}", None, 80, false),
            ("port", "rules: [{to: [{operation: {ports: [\"80\"]}}]}]", None, 80, true),
            ("other port", "rules: [{to: [{operation: {ports: [\"81\"]}}]}]", None, 80, false),
            ("notPorts", "rules: [{to: [{operation: {notPorts: [\"80\"]}}]}]", None, 80, false),
            ("principal", "rules: [{from: [{source: {principals: [\"cluster.local/ns/a/sa/b\"]}}]}]", Some(("a", "b")), 80, true),
            ("principal other", "rules: [{from: [{source: {principals: [\"cluster.local/ns/a/sa/b\"]}}]}]", Some(("a", "c")), 80, false),
            ("principal prefix", "rules: [{from: [{source: {principals: [\"cluster.local/ns/a/*\"]}}]}]", Some(("a", "c")), 80, true),
            ("principal suffix", "rules: [{from: [{source: {principals: [\"*/sa/b\"]}}]}]", Some(("z", "b")), 80, true),
            ("principal presence plaintext", "rules: [{from: [{source: {principals: [\"*\"]}}]}]", None, 80, false),
            ("notPrincipals plaintext ALLOW", "rules: [{from: [{source: {notPrincipals: [\"*\"]}}]}]", None, 80, false),
            ("notPrincipals plaintext DENY", "action: DENY\nrules: [{from: [{source: {notPrincipals: [\"*\"]}}]}]", None, 80, true),
            ("notPrincipals mtls DENY", "action: DENY\nrules: [{from: [{source: {notPrincipals: [\"*\"]}}]}]", Some(("a", "b")), 80, false),
            ("namespaces plaintext DENY", "action: DENY\nrules: [{from: [{source: {namespaces: [foo]}}]}]", None, 80, true),
            ("namespaces plaintext AUDIT", "action: AUDIT\nrules: [{from: [{source: {namespaces: [foo]}}]}]", None, 80, true),
            ("namespace regex meta", "rules: [{from: [{source: {namespaces: [\"a.b\"]}}]}]", Some(("aXb", "s")), 80, false),
            ("serviceAccounts policy ns", "rules: [{from: [{source: {serviceAccounts: [s]}}]}]", Some(("foo", "s")), 80, true),
            ("serviceAccounts other ns", "rules: [{from: [{source: {serviceAccounts: [s]}}]}]", Some(("bar", "s")), 80, false),
            ("ipBlocks", "rules: [{from: [{source: {ipBlocks: [10.0.0.0/24]}}]}]", None, 80, true),
            ("notIpBlocks", "rules: [{from: [{source: {notIpBlocks: [10.0.0.5]}}]}]", None, 80, false),
            ("remoteIpBlocks uses remote ip", "rules: [{from: [{source: {remoteIpBlocks: [192.0.2.0/24]}}]}]", None, 80, true),
            ("remoteIpBlocks not source ip", "rules: [{from: [{source: {remoteIpBlocks: [10.0.0.5]}}]}]", None, 80, false),
            ("from OR", "rules: [{from: [{source: {ipBlocks: [1.1.1.1]}}, {source: {ipBlocks: [10.0.0.5]}}]}]", None, 80, true),
            ("fields AND", "rules: [{from: [{source: {ipBlocks: [10.0.0.5], namespaces: [x]}}]}]", Some(("y", "s")), 80, false),
            ("HTTP field drops ALLOW rule", "rules: [{to: [{operation: {ports: [\"80\"]}}, {operation: {methods: [GET]}}]}]", None, 80, false),
            ("HTTP field dropped in DENY", "action: DENY\nrules: [{to: [{operation: {ports: [\"80\"], methods: [GET]}}]}]", None, 80, true),
            ("HTTP field DENY keeps port", "action: DENY\nrules: [{to: [{operation: {ports: [\"81\"], methods: [GET]}}]}]", None, 80, false),
            ("HTTP when dropped in DENY", "action: DENY\nrules: [{when: [{key: \"request.headers[x]\", values: [y]}]}]", None, 80, true),
            ("HTTP when drops ALLOW rule", "rules: [{when: [{key: \"request.auth.claims[iss]\", values: [y]}]}]", Some(("a", "b")), 80, false),
            ("second rule matches", "rules: [{to: [{operation: {ports: [\"81\"]}}]}, {to: [{operation: {ports: [\"80\"]}}]}]", None, 80, true),
            ("when destination.port", "rules: [{when: [{key: destination.port, values: [\"80\"]}]}]", None, 80, true),
            ("when destination.ip", "rules: [{when: [{key: destination.ip, notValues: [10.0.0.9]}]}]", None, 80, false),
            ("when source.ip", "rules: [{when: [{key: source.ip, values: [10.0.0.0/8]}]}]", None, 80, true),
            ("when remote.ip", "rules: [{when: [{key: remote.ip, values: [10.0.0.0/8]}]}]", None, 80, false),
            ("when sni absent", "rules: [{when: [{key: connection.sni, values: [\"*\"]}]}]", None, 80, false),
            ("when sni notValues absent", "rules: [{when: [{key: connection.sni, notValues: [\"*\"]}]}]", None, 80, true),
            ("when trustDomain", "rules: [{when: [{key: source.trustDomain, values: [cluster.local]}]}]", Some(("a", "b")), 80, true),
            ("when source.namespace plaintext ALLOW", "rules: [{when: [{key: source.namespace, notValues: [x]}]}]", None, 80, false),
            ("when source.principal plaintext DENY", "action: DENY\nrules: [{when: [{key: source.principal, values: [x]}]}]", None, 80, true),
            ("trustDomains", "rules: [{from: [{source: {trustDomains: [cluster.local]}}]}]", Some(("a", "b")), 80, true),
            ("trustDomains other", "rules: [{from: [{source: {trustDomains: [other.td]}}]}]", Some(("a", "b")), 80, false),
            ("trustDomains suffix", "rules: [{from: [{source: {trustDomains: [\"*.local\"]}}]}]", Some(("a", "b")), 80, true),
            ("trustDomains plaintext ALLOW", "rules: [{from: [{source: {trustDomains: [\"*\"]}}]}]", None, 80, false),
            ("trustDomains plaintext DENY", "action: DENY\nrules: [{from: [{source: {trustDomains: [other.td]}}]}]", None, 80, true),
            ("notTrustDomains mtls", "rules: [{from: [{source: {notTrustDomains: [other.td]}}]}]", Some(("a", "b")), 80, true),
            ("notTrustDomains own", "rules: [{from: [{source: {notTrustDomains: [cluster.local]}}]}]", Some(("a", "b")), 80, false),
            ("notTrustDomains plaintext ALLOW", "rules: [{from: [{source: {notTrustDomains: [other.td]}}]}]", None, 80, false),
            ("notTrustDomains plaintext DENY", "action: DENY\nrules: [{from: [{source: {notTrustDomains: [cluster.local]}}]}]", None, 80, true),
            ("notTrustDomains mtls DENY", "action: DENY\nrules: [{from: [{source: {notTrustDomains: [cluster.local]}}]}]", Some(("a", "b")), 80, false),
            ("trustDomains AND namespaces", "rules: [{from: [{source: {trustDomains: [cluster.local], namespaces: [x]}}]}]", Some(("a", "b")), 80, false),
            ("when serviceAccount", "rules: [{when: [{key: source.serviceAccount, values: [a/b]}]}]", Some(("a", "b")), 80, true),
        ];
        for (name, yaml, peer, port, want) in table {
            let peer = peer.map(|(ns, sa)| Peer::new("cluster.local", ns, sa));
            let p = policy("p", yaml);
            let got = p.matching_rule_l4(&conn(peer.as_ref(), *port)).is_some();
            assert_eq!(got, *want, "{name}");
        }
    }

    #[test]
    fn sni_is_matched_when_present() {
        let p = policy(
            "p",
            "rules: [{when: [{key: connection.sni, values: [\"*.example.com\"]}]}]",
        );
        let mut c = conn(None, 443);
        c.sni = Some("api.example.com");
        assert_eq!(p.matching_rule_l4(&c), Some(0));
        c.sni = Some("example.com");
        assert_eq!(p.matching_rule_l4(&c), None);
    }

    fn decide(policies: Vec<AuthzPolicy>, peer: Option<&Peer>, port: u16) -> Decision {
        WorkloadPolicies::new(policies).evaluate_l4(&conn(peer, port))
    }

    #[test]
    fn evaluation_order_table() {
        let allow_80 = || {
            policy(
                "allow-80",
                "rules: [{to: [{operation: {ports: [\"80\"]}}]}]",
            )
        };
        let deny_80 = || {
            policy(
                "deny-80",
                "action: DENY\nrules: [{to: [{operation: {ports: [\"80\"]}}]}]",
            )
        };
        let nothing = || policy("nothing", "{}");
        let custom = || {
            policy("ext", "action: CUSTOM\nprovider: {name: x}\nrules: [{to: [{operation: {ports: [\"80\"]}}]}]")
        };
        let audit = || policy("audit", "action: AUDIT\nrules: [{}]");
        let rule = |name: &str, rule| RuleRef {
            policy: PolicyRef::new("foo", name),
            rule,
        };
        // (name, policies, port, expected)
        let table: Vec<(&str, Vec<AuthzPolicy>, u16, Decision)> = vec![
            (
                "no policies",
                vec![],
                80,
                Decision::Allow {
                    by: AllowedBy::NoAllowPolicies,
                    audit: vec![],
                    dry_run: vec![],
                },
            ),
            (
                "allow-nothing",
                vec![nothing()],
                80,
                Decision::Deny {
                    by: DeniedBy::NoAllowMatch,
                    audit: vec![],
                    dry_run: vec![],
                },
            ),
            (
                "allow match",
                vec![allow_80()],
                80,
                Decision::Allow {
                    by: AllowedBy::Rule(rule("allow-80", 0)),
                    audit: vec![],
                    dry_run: vec![],
                },
            ),
            (
                "allow miss",
                vec![allow_80()],
                81,
                Decision::Deny {
                    by: DeniedBy::NoAllowMatch,
                    audit: vec![],
                    dry_run: vec![],
                },
            ),
            (
                "deny beats allow",
                vec![allow_80(), deny_80()],
                80,
                Decision::Deny {
                    by: DeniedBy::DenyRule(rule("deny-80", 0)),
                    audit: vec![],
                    dry_run: vec![],
                },
            ),
            (
                "deny miss, no allow",
                vec![deny_80()],
                81,
                Decision::Allow {
                    by: AllowedBy::NoAllowPolicies,
                    audit: vec![],
                    dry_run: vec![],
                },
            ),
            (
                "custom first",
                vec![deny_80(), custom()],
                80,
                Decision::Deny {
                    by: DeniedBy::CustomUnsupported(PolicyRef::new("foo", "ext")),
                    audit: vec![],
                    dry_run: vec![],
                },
            ),
            (
                "custom miss",
                vec![custom()],
                81,
                Decision::Allow {
                    by: AllowedBy::NoAllowPolicies,
                    audit: vec![],
                    dry_run: vec![],
                },
            ),
            (
                "audit reported",
                vec![audit(), allow_80()],
                81,
                Decision::Deny {
                    by: DeniedBy::NoAllowMatch,
                    audit: vec![rule("audit", 0)],
                    dry_run: vec![],
                },
            ),
        ];
        for (name, policies, port, want) in table {
            assert_eq!(decide(policies, None, port), want, "{name}");
        }
    }

    #[test]
    fn dry_run_policies_are_reported_not_enforced() {
        let dry = |name: &str, yaml: &str| policy_in("foo", name, yaml, true);
        let note = |name: &str, rule, would| DryRunNote {
            policy: PolicyRef::new("foo", name),
            rule,
            would,
        };
        // A dry-run DENY that matches, a dry-run ALLOW that does not: the connection is still
        // allowed (no enforced policy), and both would-be outcomes are reported.
        let decision = decide(
            vec![
                dry("dry-deny", "action: DENY\nrules: [{}]"),
                dry(
                    "dry-allow",
                    "rules: [{to: [{operation: {ports: [\"81\"]}}]}]",
                ),
                dry("dry-audit", "action: AUDIT\nrules: [{}]"),
            ],
            None,
            80,
        );
        assert_eq!(
            decision,
            Decision::Allow {
                by: AllowedBy::NoAllowPolicies,
                audit: vec![],
                dry_run: vec![
                    note("dry-deny", Some(0), DryRunOutcome::Deny),
                    note("dry-allow", None, DryRunOutcome::NoAllowMatch),
                ],
            }
        );
        // One dry-run ALLOW matching silences the others' NoAllowMatch, and a dry-run ALLOW
        // does not count as an ALLOW policy.
        let decision = decide(
            vec![
                dry("a", "rules: [{to: [{operation: {ports: [\"81\"]}}]}]"),
                dry("b", "rules: [{}]"),
                policy(
                    "deny",
                    "action: DENY\nrules: [{to: [{operation: {ports: [\"9\"]}}]}]",
                ),
            ],
            None,
            80,
        );
        assert_eq!(
            decision.dry_run(),
            [note("b", Some(0), DryRunOutcome::Allow)]
        );
        assert!(decision.is_allowed());
    }

    #[test]
    fn first_matching_rule_and_policy_win() {
        let decision = decide(
            vec![
                policy(
                    "d1",
                    "action: DENY\nrules: [{to: [{operation: {ports: [\"1\"]}}]}, {}]",
                ),
                policy("d2", "action: DENY\nrules: [{}]"),
            ],
            None,
            80,
        );
        assert_eq!(
            decision.response_detail(),
            "rbac_access_denied_matched_policy[ns[foo]-policy[d1]-rule[1]]"
        );
    }
}
