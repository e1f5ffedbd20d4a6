//! The Istio security API, field for field: `AuthorizationPolicy` and `PeerAuthentication` specs.
//!
//! These mirror istio/api `security/v1beta1/authorization_policy.proto`,
//! `security/v1beta1/peer_authentication.proto` and `type/v1beta1/selector.proto` (served as
//! `security.istio.io/v1` and `v1beta1`, which share one schema). Field names are the proto JSON
//! names (camelCase). Unknown fields are rejected: Ward is stricter than Istio, which only warns.
//!
//! Nothing here interprets a value; [`crate::AuthzPolicy::compile`] and
//! [`crate::effective_mtls`] do.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Selects workloads by labels; every listed label must be present with an equal value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    /// Labels a workload must carry, all of them, with these exact values.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// A Kubernetes object an Istio policy attaches to (Gateway, Service, ServiceEntry ...).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetReference {
    /// API group of the target, e.g. `gateway.networking.k8s.io`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Kind of the target, e.g. `Gateway`.
    pub kind: String,
    /// Name of the target.
    pub name: String,
    /// Namespace of the target; Istio requires it to be the policy's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// `spec` of an Istio `AuthorizationPolicy`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// Workloads the policy applies to, within its namespace (or the mesh, in the root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// Gateway or waypoint attachment. Parsed; sidecar-style workloads ignore such policies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    /// Several attachments; same treatment as `target_ref`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_refs: Option<Vec<PolicyTargetReference>>,
    /// Rules, OR-ed. Absent or empty: the policy matches nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<Rule>>,
    /// What a match does. Istio's default is `ALLOW`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// The external authorizer of a `CUSTOM` policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ExtensionProvider>,
}

/// The action of an `AuthorizationPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    /// Allow a request only if it matches the rules (the default).
    #[default]
    #[serde(rename = "ALLOW")]
    Allow,
    /// Deny a request if it matches any rule.
    #[serde(rename = "DENY")]
    Deny,
    /// Mark a matching request for audit; never changes the decision.
    #[serde(rename = "AUDIT")]
    Audit,
    /// Delegate a matching request to an external authorizer.
    #[serde(rename = "CUSTOM")]
    Custom,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
            Action::Custom => "CUSTOM",
        })
    }
}

/// Names the MeshConfig extension provider of a `CUSTOM` policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionProvider {
    /// Provider name as declared in MeshConfig `extensionProviders`.
    pub name: String,
}

/// One rule: a source in `from` AND an operation in `to` AND every `when` condition.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// Sources, OR-ed. Absent: any source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<RuleFrom>>,
    /// Operations, OR-ed. Absent: any operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<RuleTo>>,
    /// Conditions, AND-ed. Absent: no condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<Vec<Condition>>,
}

/// One entry of `rule.from`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleFrom {
    /// The source to match.
    #[serde(default)]
    pub source: Source,
}

/// One entry of `rule.to`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleTo {
    /// The operation to match.
    #[serde(default)]
    pub operation: Operation,
}

/// Where a request comes from. Fields AND-ed; values inside one field OR-ed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// Peer identities `<trust-domain>/ns/<ns>/sa/<sa>` (no `spiffe://`). Needs mTLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principals: Option<Vec<String>>,
    /// Peer identities that must not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_principals: Option<Vec<String>>,
    /// JWT identities `<iss>/<sub>`. HTTP only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_principals: Option<Vec<String>>,
    /// JWT identities that must not match. HTTP only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_request_principals: Option<Vec<String>>,
    /// Peer namespaces, from the peer certificate. Needs mTLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<String>>,
    /// Peer namespaces that must not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_namespaces: Option<Vec<String>>,
    /// Peer service accounts `ns/sa` or `sa` (the policy's namespace). Needs mTLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_accounts: Option<Vec<String>>,
    /// Peer service accounts that must not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_service_accounts: Option<Vec<String>>,
    /// Trust domains of the peer identity (exact, prefix, suffix or `*`); a value naming the
    /// mesh's trust domain or one of its aliases stands for all of them. Needs mTLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domains: Option<Vec<String>>,
    /// Peer trust domains that must not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_trust_domains: Option<Vec<String>>,
    /// Source address of the connection: single IPs or CIDRs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_blocks: Option<Vec<String>>,
    /// Source addresses that must not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_ip_blocks: Option<Vec<String>>,
    /// Original client address (X-Forwarded-For or PROXY protocol): single IPs or CIDRs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_ip_blocks: Option<Vec<String>>,
    /// Original client addresses that must not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_remote_ip_blocks: Option<Vec<String>>,
}

/// What a request does. Fields AND-ed; values inside one field OR-ed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    /// HTTP hosts (`:authority`), case-insensitive. HTTP only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Vec<String>>,
    /// Hosts that must not match. HTTP only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_hosts: Option<Vec<String>>,
    /// Workload (target) ports, as decimal strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<String>>,
    /// Ports that must not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_ports: Option<Vec<String>>,
    /// HTTP methods. HTTP only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// Methods that must not match. HTTP only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_methods: Option<Vec<String>>,
    /// Normalized request paths, query excluded; `{*}`/`{**}` templates allowed. HTTP only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    /// Paths that must not match. HTTP only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_paths: Option<Vec<String>>,
}

/// An extra condition on an Istio attribute such as `source.ip` or `request.headers[x]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// The attribute name.
    pub key: String,
    /// Values, OR-ed. At least one of `values` and `not_values` must be set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
    /// Values that must not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_values: Option<Vec<String>>,
}

/// `spec` of an Istio `PeerAuthentication`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    /// Workloads the policy applies to. Absent or empty: namespace (or mesh) wide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// The mode for every port of the selected workloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<PeerMtls>,
    /// Per workload (target) port overrides; only valid with a selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_level_mtls: Option<BTreeMap<u32, PeerMtls>>,
}

/// The mutual TLS setting of a `PeerAuthentication`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerMtls {
    /// The mode; absent means `UNSET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<MtlsModeSpec>,
}

/// The mTLS mode as written in a `PeerAuthentication`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsModeSpec {
    /// Inherit from the parent scope.
    #[default]
    Unset,
    /// Plaintext only.
    Disable,
    /// Both mTLS and plaintext.
    Permissive,
    /// mTLS only.
    Strict,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_policy_spec_reads_istio_yaml() {
        let yaml = r#"
selector:
  matchLabels: {app: httpbin}
action: DENY
rules:
- from:
  - source:
      principals: ["cluster.local/ns/default/sa/sleep"]
      notIpBlocks: ["10.0.0.0/8"]
  to:
  - operation:
      ports: ["8080"]
      methods: ["GET"]
  when:
  - key: request.headers[x-token]
    notValues: ["abc"]
"#;
        let spec: AuthorizationPolicySpec = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(spec.action, Some(Action::Deny));
        let rules = spec.rules.as_ref().unwrap();
        let from = rules[0].from.as_ref().unwrap();
        assert_eq!(
            from[0].source.not_ip_blocks.as_deref(),
            Some(&["10.0.0.0/8".to_string()][..])
        );
        let when = rules[0].when.as_ref().unwrap();
        assert_eq!(
            when[0].not_values.as_deref(),
            Some(&["abc".to_string()][..])
        );
        assert_eq!(
            spec.selector
                .unwrap()
                .match_labels
                .get("app")
                .map(String::as_str),
            Some("httpbin")
        );
    }

    #[test]
    fn specs_reject_unknown_fields_and_bad_enums() {
        let cases: &[(&str, &str)] = &[
            ("misspelled source", "rules:\n- from:\n  - sorce: {}\n"),
            ("unknown top-level field", "actions: DENY\n"),
            ("lower-case action", "action: deny\n"),
            (
                "unknown operation field",
                "rules:\n- to:\n  - operation: {verbs: [GET]}\n",
            ),
        ];
        for (name, yaml) in cases {
            let parsed: Result<AuthorizationPolicySpec, _> = serde_saphyr::from_str(yaml);
            assert!(parsed.is_err(), "{name} must be rejected");
        }
    }

    #[test]
    fn peer_authentication_spec_reads_port_level_mtls() {
        let yaml = "selector:\n  matchLabels: {app: db}\nmtls: {mode: STRICT}\nportLevelMtls:\n  8080: {mode: DISABLE}\n  9090: {}\n";
        let spec: PeerAuthenticationSpec = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(spec.mtls.unwrap().mode, Some(MtlsModeSpec::Strict));
        let ports = spec.port_level_mtls.unwrap();
        assert_eq!(ports[&8080].mode, Some(MtlsModeSpec::Disable));
        assert_eq!(ports[&9090].mode, None);
    }

    #[test]
    fn action_serializes_upper_case() {
        let table = [
            (Action::Allow, "\"ALLOW\""),
            (Action::Deny, "\"DENY\""),
            (Action::Audit, "\"AUDIT\""),
            (Action::Custom, "\"CUSTOM\""),
        ];
        for (action, json) in table {
            assert_eq!(serde_json::to_string(&action).unwrap(), json);
            assert_eq!(action.to_string(), json.trim_matches('"'));
        }
    }
}
