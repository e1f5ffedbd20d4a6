//! The outcome of authorization: [`Decision`], and the names it uses for policies and rules.
//!
//! A denial is a value, not an error: it records which policy and rule decided, what AUDIT
//! policies matched and what dry-run policies would have done, so the proxy can map it to a
//! reset or a 403, a metric label and an access-log record.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::authz::AuthzPolicy;
use crate::spec::Action;

/// Names a policy in decisions and logs. Displays as `ns/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PolicyRef {
    /// Namespace of the policy object.
    pub namespace: String,
    /// Name of the policy object.
    pub name: String,
}

impl PolicyRef {
    /// Names the policy `namespace/name`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> PolicyRef {
        PolicyRef {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Names one rule of a policy (0-based, in `spec.rules` order).
///
/// Displays as the Envoy RBAC policy id Istio generates, `ns[<ns>]-policy[<name>]-rule[<i>]`
/// (istio/istio `pilot/pkg/security/authz/builder/builder.go`, `policyName`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RuleRef {
    /// The policy.
    pub policy: PolicyRef,
    /// Index of the rule in `spec.rules`.
    pub rule: usize,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ns[{}]-policy[{}]-rule[{}]",
            self.policy.namespace, self.policy.name, self.rule
        )
    }
}

/// Why a connection or request was allowed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AllowedBy {
    /// "If there are no ALLOW policies for the workload, allow the request."
    NoAllowPolicies,
    /// This ALLOW rule matched.
    Rule(RuleRef),
}

/// Why a connection or request was denied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DeniedBy {
    /// This DENY rule matched.
    DenyRule(RuleRef),
    /// ALLOW policies apply but none matched.
    NoAllowMatch,
    /// A CUSTOM policy matched; Ward has no external authorizer yet, so it fails closed.
    CustomUnsupported(PolicyRef),
}

/// What a dry-run policy would have done had it been enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DryRunOutcome {
    /// A DENY (or CUSTOM) rule matched: it would have denied.
    Deny,
    /// An ALLOW rule matched: it would have allowed.
    Allow,
    /// No dry-run ALLOW policy matched: enforced alone, they would have denied.
    NoAllowMatch,
}

/// A dry-run (`istio.io/dry-run`) policy's would-be effect; never enforced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DryRunNote {
    /// The dry-run policy.
    pub policy: PolicyRef,
    /// The rule that matched, if one did.
    pub rule: Option<usize>,
    /// What enforcing it would have done.
    pub would: DryRunOutcome,
}

/// The authorization decision for one connection (or, later, one request).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "decision",
    rename_all = "lowercase",
    rename_all_fields = "camelCase"
)]
pub enum Decision {
    /// Let it through.
    Allow {
        /// Why.
        by: AllowedBy,
        /// AUDIT policy rules that matched, first matching rule per policy.
        audit: Vec<RuleRef>,
        /// What dry-run policies would have done.
        dry_run: Vec<DryRunNote>,
    },
    /// Reset the connection (or answer 403).
    Deny {
        /// Why.
        by: DeniedBy,
        /// AUDIT policy rules that matched, first matching rule per policy.
        audit: Vec<RuleRef>,
        /// What dry-run policies would have done.
        dry_run: Vec<DryRunNote>,
    },
}

/// Envoy's RBAC deny detail prefix (envoyproxy/envoy RBAC filter,
/// `rbac_access_denied_matched_policy[<policy id>]`).
const RBAC_DENIED: &str = "rbac_access_denied_matched_policy";

/// The policy id Istio puts in the deny detail when a CUSTOM action cannot be served
/// (istio/istio `pilot/pkg/security/authz/builder/extauthz.go`, `rbacDefaultDenyAll`).
const BAD_CUSTOM_ACTION: &str = "default-deny-all-due-to-bad-CUSTOM-action";

impl Decision {
    /// Whether the connection may proceed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }

    /// Envoy-style `response_code_details` of a denial:
    /// `rbac_access_denied_matched_policy[ns[foo]-policy[bar]-rule[0]]`, or `...[none]` when no
    /// ALLOW rule matched. Empty for an allowed decision (Envoy's RBAC filter sets no detail).
    pub fn response_detail(&self) -> String {
        match self {
            Decision::Allow { .. } => String::new(),
            Decision::Deny { by, .. } => match by {
                DeniedBy::DenyRule(rule) => format!("{RBAC_DENIED}[{rule}]"),
                DeniedBy::NoAllowMatch => format!("{RBAC_DENIED}[none]"),
                DeniedBy::CustomUnsupported(_) => format!("{RBAC_DENIED}[{BAD_CUSTOM_ACTION}]"),
            },
        }
    }

    /// AUDIT rules that matched.
    pub fn audit(&self) -> &[RuleRef] {
        match self {
            Decision::Allow { audit, .. } | Decision::Deny { audit, .. } => audit,
        }
    }

    /// What dry-run policies would have done.
    pub fn dry_run(&self) -> &[DryRunNote] {
        match self {
            Decision::Allow { dry_run, .. } | Decision::Deny { dry_run, .. } => dry_run,
        }
    }

    /// The rule that decided, if a single rule did (an ALLOW or DENY match).
    pub fn deciding_rule(&self) -> Option<&RuleRef> {
        match self {
            Decision::Allow {
                by: AllowedBy::Rule(rule),
                ..
            }
            | Decision::Deny {
                by: DeniedBy::DenyRule(rule),
                ..
            } => Some(rule),
            _ => None,
        }
    }

    /// The policy that decided, if one did.
    pub fn deciding_policy(&self) -> Option<&PolicyRef> {
        match self {
            Decision::Deny {
                by: DeniedBy::CustomUnsupported(policy),
                ..
            } => Some(policy),
            _ => self.deciding_rule().map(|rule| &rule.policy),
        }
    }
}

/// What the policies of one workload said about one connection or request, folded into a
/// [`Decision`] in Istio's order. Shared by the L4 and (later) HTTP evaluators, which differ only
/// in how a rule matches.
///
/// istio/api authorization_policy.proto: "1. If there are any CUSTOM policies that match the
/// request, evaluate and deny the request if the evaluation result is deny. 2. If there are any
/// DENY policies that match the request, deny the request. 3. If there are no ALLOW policies for
/// the workload, allow the request. 4. If any of the ALLOW policies match the request, allow the
/// request. 5. Deny the request." AUDIT policies "do not affect whether requests are allowed or
/// denied".
#[derive(Default)]
pub(crate) struct Tally {
    /// First matching enforced CUSTOM policy.
    custom: Option<PolicyRef>,
    /// First matching enforced DENY rule.
    deny: Option<RuleRef>,
    /// First matching enforced ALLOW rule.
    allow: Option<RuleRef>,
    /// Whether any enforced ALLOW policy applies, matching or not (`spec: {}` counts).
    has_allow_policies: bool,
    audit: Vec<RuleRef>,
    dry_run: Vec<DryRunNote>,
    /// Dry-run ALLOW policies form their own shadow engine (istio/istio
    /// `pilot/pkg/security/authz/builder/builder.go` puts them in `ShadowRules`), which "denies"
    /// when none of them matches.
    dry_run_allow_unmatched: Vec<PolicyRef>,
    dry_run_allow_matched: bool,
}

impl Tally {
    /// Records `policy`, whose first matching rule (if any) is `matched`.
    pub(crate) fn record(&mut self, policy: &AuthzPolicy, matched: Option<usize>) {
        let rule_ref = |rule| RuleRef {
            policy: policy.policy.clone(),
            rule,
        };
        if policy.dry_run {
            self.record_dry_run(policy, matched);
            return;
        }
        match (policy.action, matched) {
            (Action::Custom, Some(_)) => {
                self.custom.get_or_insert_with(|| policy.policy.clone());
            }
            (Action::Deny, Some(rule)) => {
                self.deny.get_or_insert_with(|| rule_ref(rule));
            }
            (Action::Allow, matched) => {
                self.has_allow_policies = true;
                if let (Some(rule), None) = (matched, &self.allow) {
                    self.allow = Some(rule_ref(rule));
                }
            }
            (Action::Audit, Some(rule)) => self.audit.push(rule_ref(rule)),
            (Action::Custom | Action::Deny | Action::Audit, None) => {}
        }
    }

    fn record_dry_run(&mut self, policy: &AuthzPolicy, matched: Option<usize>) {
        let note = |would| DryRunNote {
            policy: policy.policy.clone(),
            rule: matched,
            would,
        };
        match (policy.action, matched) {
            (Action::Deny | Action::Custom, Some(_)) => {
                self.dry_run.push(note(DryRunOutcome::Deny))
            }
            (Action::Allow, Some(_)) => {
                self.dry_run_allow_matched = true;
                self.dry_run.push(note(DryRunOutcome::Allow));
            }
            (Action::Allow, None) => self.dry_run_allow_unmatched.push(policy.policy.clone()),
            // AUDIT never enforces, so a dry-run AUDIT has nothing to report.
            (Action::Deny | Action::Custom | Action::Audit, _) => {}
        }
    }

    /// Records, in one step, every policy that had NO matching rule, when only the matching ones
    /// were passed to [`Tally::record`] (the indexed evaluation). Of an unmatched policy,
    /// `record(policy, None)` only keeps two things, which do not depend on the request and are
    /// precomputed per workload: that an enforced ALLOW policy exists (`has_allow_policies`),
    /// and the dry-run ALLOW policies (`dry_run_allow`, in policy order), which all went
    /// unmatched when none matched. Call it after the last `record`.
    pub(crate) fn record_unmatched(
        &mut self,
        has_allow_policies: bool,
        dry_run_allow: &[PolicyRef],
    ) {
        self.has_allow_policies |= has_allow_policies;
        if !self.dry_run_allow_matched {
            self.dry_run_allow_unmatched
                .extend(dry_run_allow.iter().cloned());
        }
    }

    /// The decision, in Istio's order.
    pub(crate) fn decide(mut self) -> Decision {
        if !self.dry_run_allow_matched {
            let unmatched = std::mem::take(&mut self.dry_run_allow_unmatched);
            self.dry_run
                .extend(unmatched.into_iter().map(|policy| DryRunNote {
                    policy,
                    rule: None,
                    would: DryRunOutcome::NoAllowMatch,
                }));
        }
        let Tally {
            custom,
            deny,
            allow,
            has_allow_policies,
            audit,
            dry_run,
            ..
        } = self;
        // Ward has no ext-authz client yet: a CUSTOM policy that would consult its provider
        // denies instead (fail closed, as Istio does when the provider is unusable).
        let denied = match (custom, deny) {
            (Some(policy), _) => Some(DeniedBy::CustomUnsupported(policy)),
            (None, Some(rule)) => Some(DeniedBy::DenyRule(rule)),
            (None, None) if has_allow_policies && allow.is_none() => Some(DeniedBy::NoAllowMatch),
            (None, None) => None,
        };
        match (denied, allow) {
            (Some(by), _) => Decision::Deny { by, audit, dry_run },
            (None, Some(rule)) => Decision::Allow {
                by: AllowedBy::Rule(rule),
                audit,
                dry_run,
            },
            (None, None) => Decision::Allow {
                by: AllowedBy::NoAllowPolicies,
                audit,
                dry_run,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(ns: &str, name: &str, rule: usize) -> RuleRef {
        RuleRef {
            policy: PolicyRef::new(ns, name),
            rule,
        }
    }

    fn deny(by: DeniedBy) -> Decision {
        Decision::Deny {
            by,
            audit: vec![],
            dry_run: vec![],
        }
    }

    #[test]
    fn response_detail_table() {
        let table = [
            (
                deny(DeniedBy::DenyRule(rule("foo", "bar", 0))),
                "rbac_access_denied_matched_policy[ns[foo]-policy[bar]-rule[0]]",
            ),
            (
                deny(DeniedBy::NoAllowMatch),
                "rbac_access_denied_matched_policy[none]",
            ),
            (
                deny(DeniedBy::CustomUnsupported(PolicyRef::new("a", "b"))),
                "rbac_access_denied_matched_policy[default-deny-all-due-to-bad-CUSTOM-action]",
            ),
            (
                Decision::Allow {
                    by: AllowedBy::NoAllowPolicies,
                    audit: vec![],
                    dry_run: vec![],
                },
                "",
            ),
        ];
        for (decision, want) in table {
            assert_eq!(decision.response_detail(), want);
        }
    }

    #[test]
    fn deciding_policy_table() {
        let table = [
            (deny(DeniedBy::DenyRule(rule("n", "d", 2))), Some("n/d")),
            (deny(DeniedBy::NoAllowMatch), None),
            (
                deny(DeniedBy::CustomUnsupported(PolicyRef::new("n", "c"))),
                Some("n/c"),
            ),
            (
                Decision::Allow {
                    by: AllowedBy::Rule(rule("n", "a", 1)),
                    audit: vec![],
                    dry_run: vec![],
                },
                Some("n/a"),
            ),
        ];
        for (decision, want) in table {
            let got = decision.deciding_policy().map(ToString::to_string);
            assert_eq!(got.as_deref(), want);
        }
    }

    #[test]
    fn decision_serializes_with_a_tag_and_round_trips() {
        let decision = Decision::Deny {
            by: DeniedBy::DenyRule(rule("foo", "bar", 1)),
            audit: vec![rule("foo", "audit", 0)],
            dry_run: vec![DryRunNote {
                policy: PolicyRef::new("foo", "dry"),
                rule: None,
                would: DryRunOutcome::NoAllowMatch,
            }],
        };
        let json = serde_json::to_value(&decision).unwrap();
        assert_eq!(json["decision"], "deny");
        assert_eq!(json["by"]["denyRule"]["rule"], 1);
        assert_eq!(json["dryRun"][0]["would"], "noAllowMatch");
        let back: Decision = serde_json::from_value(json).unwrap();
        assert_eq!(back, decision);
        assert!(!decision.is_allowed());
    }
}
