//! Compiling an Istio `AuthorizationPolicy` into Ward's checked form, and choosing the policies
//! that apply to a workload.
//!
//! The compiled form ([`AuthzPolicy`]) keeps Istio's shape (`rules` → `from`/`to`/`when` →
//! fields with their `not` forms) with every value parsed and validated, including the HTTP-only
//! fields, so the L4 evaluator (`l4.rs`) and the later HTTP evaluator read the same structure.
//!
//! Validation is stricter than Istio: where istiod logs and skips an invalid rule, Ward rejects
//! the whole policy with a [`CompileError`] naming the field, so a typo never silently widens or
//! narrows access.

use std::collections::BTreeMap;
use std::fmt;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::decision::PolicyRef;
use crate::index::PolicyIndex;
use crate::matcher::{
    parse_ip_block, parse_port, PathMatch, PatternError, ServiceAccountMatch, StringMatch,
    ValueMatch,
};
use crate::spec::{
    Action, AuthorizationPolicySpec, Condition, Operation, PolicyTargetReference, Rule, Source,
};

/// The annotation that turns a policy into a dry run (istio/api `annotation`,
/// `istio.io/dry-run`).
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// Parses the value of [`DRY_RUN_ANNOTATION`] as Istio does (Go `strconv.ParseBool`, istio/istio
/// `pilot/pkg/security/authz/builder/builder.go` `isDryRun`). `None` for anything else.
pub fn parse_dry_run(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// The trust domain Istio treats as "the local trust domain, whatever it is called"
/// (istio/istio `pilot/pkg/security/trustdomain/bundle.go`).
const CLUSTER_LOCAL: &str = "cluster.local";

/// Mesh facts the compiler needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshContext {
    /// Policies here apply mesh-wide (Istio default `istio-system`).
    pub root_namespace: String,
    /// The mesh's trust domain (Istio default `cluster.local`).
    pub trust_domain: String,
    /// Other trust domains treated as the same mesh.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust_domain_aliases: Vec<String>,
}

impl Default for MeshContext {
    fn default() -> Self {
        MeshContext {
            root_namespace: "istio-system".to_string(),
            trust_domain: CLUSTER_LOCAL.to_string(),
            trust_domain_aliases: Vec::new(),
        }
    }
}

impl MeshContext {
    /// The trust domain then its aliases, without duplicates or empty names.
    pub fn trust_domains(&self) -> Vec<&str> {
        let mut domains: Vec<&str> = Vec::new();
        for td in std::iter::once(&self.trust_domain).chain(&self.trust_domain_aliases) {
            if !td.is_empty() && !domains.contains(&td.as_str()) {
                domains.push(td);
            }
        }
        domains
    }

    /// docs/istio-semantics.md, "Trust-domain aliases"; istio/istio `trustdomain/bundle.go`
    /// `ReplaceTrustDomainAliases`:
    /// "Only generate configuration if the extracted trust domain from the policy is part of the
    /// trust domain list, or if the extracted/existing trust domain is "cluster.local"", in which
    /// case the principal is repeated for every trust domain of the mesh. Principals that are not
    /// `td/ns/x/sa/y`, or whose trust domain is a wildcard or foreign, are kept as written.
    fn expand_principal(&self, principal: &str) -> Vec<String> {
        let Some((td, rest)) = principal.split_once('/') else {
            return vec![principal.to_string()];
        };
        let domains = self.trust_domains();
        let enforced = principal.split('/').count() == 5 && !td.contains('*');
        if !enforced || !(domains.contains(&td) || td == CLUSTER_LOCAL) {
            return vec![principal.to_string()];
        }
        let mut expanded: Vec<String> = Vec::new();
        for domain in domains {
            let candidate = format!("{domain}/{rest}");
            if !expanded.contains(&candidate) {
                expanded.push(candidate);
            }
        }
        expanded
    }

    /// istio/istio `trustdomain/bundle.go` `ExpandTrustDomainAliases`: a value naming one of the
    /// mesh's trust domains stands for all of them.
    fn expand_trust_domain(&self, value: &str) -> Vec<String> {
        let domains = self.trust_domains();
        if domains.contains(&value) {
            domains.into_iter().map(str::to_string).collect()
        } else {
            vec![value.to_string()]
        }
    }
}

/// A policy Ward rejects, with the path of the offending field. Displays as `field: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct CompileError {
    /// Where, e.g. `spec.rules[1].when[0].key`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl CompileError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> CompileError {
        CompileError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// One compiled Istio `AuthorizationPolicy`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthzPolicy {
    /// Which policy this is.
    pub policy: PolicyRef,
    /// What a match does.
    pub action: Action,
    /// Evaluated and reported, never enforced (`istio.io/dry-run: "true"`).
    pub dry_run: bool,
    /// `selector.matchLabels`; `None` (also for an empty selector) selects every workload in scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<BTreeMap<String, String>>,
    /// `targetRef`/`targetRefs`: the policy binds to gateways or waypoints, not to workloads.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// The provider of a CUSTOM policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The rules, OR-ed. Empty: the policy matches nothing.
    pub rules: Vec<AuthzRule>,
}

/// A compiled rule: "A match occurs when at least one source, one operation and all conditions
/// matches the request. An empty rule is always matched." (istio/api
/// authorization_policy.proto, `Rule`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthzRule {
    /// Sources, OR-ed; empty matches any source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<SourceMatch>,
    /// Operations, OR-ed; empty matches any operation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<OperationMatch>,
    /// Conditions, AND-ed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<ConditionMatch>,
}

/// A compiled `source`. Fields AND-ed; an empty field matches anything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceMatch {
    /// `principals`/`notPrincipals`, trust-domain aliases expanded, matched on the peer principal.
    /// Istio prefixes both sides with `spiffe://` (a suffix `*x` becomes `spiffe://.*x`), so
    /// matching the scheme-less forms gives the same result.
    #[serde(default, skip_serializing_if = "ValueMatch::is_empty")]
    pub principals: ValueMatch<StringMatch>,
    /// `requestPrincipals`/`notRequestPrincipals` (`iss/sub`). HTTP only.
    #[serde(default, skip_serializing_if = "ValueMatch::is_empty")]
    pub request_principals: ValueMatch<StringMatch>,
    /// `namespaces`/`notNamespaces`, matched on the peer's namespace. Istio compiles them to the
    /// regex `.*/ns/<ns>/.*` over the principal; matching the parsed namespace is equivalent for
    /// Istio identities and immune to regex metacharacters.
    #[serde(default, skip_serializing_if = "ValueMatch::is_empty")]
    pub namespaces: ValueMatch<StringMatch>,
    /// `serviceAccounts`/`notServiceAccounts`.
    #[serde(default, skip_serializing_if = "ValueMatch::is_empty")]
    pub service_accounts: ValueMatch<ServiceAccountMatch>,
    /// `trustDomains`/`notTrustDomains`, trust-domain aliases expanded, matched on the peer's
    /// trust domain (as the `source.trustDomain` condition).
    #[serde(default, skip_serializing_if = "ValueMatch::is_empty")]
    pub trust_domains: ValueMatch<StringMatch>,
    /// `ipBlocks`/`notIpBlocks`, matched on the connection's source address.
    #[serde(default, skip_serializing_if = "ValueMatch::is_empty")]
    pub ip_blocks: ValueMatch<IpNet>,
    /// `remoteIpBlocks`/`notRemoteIpBlocks`, matched on the original client address.
    #[serde(default, skip_serializing_if = "ValueMatch::is_empty")]
    pub remote_ip_blocks: ValueMatch<IpNet>,
}

/// A compiled `operation`. Fields AND-ed; an empty field matches anything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationMatch {
    /// `hosts`/`notHosts`, compared ignoring ASCII case. HTTP only.
    #[serde(default, skip_serializing_if = "ValueMatch::is_empty")]
    pub hosts: ValueMatch<StringMatch>,
    /// `ports`/`notPorts`: the workload (target) port.
    #[serde(default, skip_serializing_if = "ValueMatch::is_empty")]
    pub ports: ValueMatch<u16>,
    /// `methods`/`notMethods`. HTTP only.
    #[serde(default, skip_serializing_if = "ValueMatch::is_empty")]
    pub methods: ValueMatch<StringMatch>,
    /// `paths`/`notPaths`. HTTP only.
    #[serde(default, skip_serializing_if = "ValueMatch::is_empty")]
    pub paths: ValueMatch<PathMatch>,
}

/// A compiled `when` condition, one variant per supported Istio attribute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ConditionMatch {
    /// `source.ip`: the connection's source address.
    SourceIp(ValueMatch<IpNet>),
    /// `remote.ip`: the original client address.
    RemoteIp(ValueMatch<IpNet>),
    /// `source.namespace`: the peer's namespace.
    SourceNamespace(ValueMatch<StringMatch>),
    /// `source.principal`: the peer principal, trust-domain aliases expanded.
    SourcePrincipal(ValueMatch<StringMatch>),
    /// `source.serviceAccount`: the peer's `ns/sa`.
    SourceServiceAccount(ValueMatch<ServiceAccountMatch>),
    /// `source.trustDomain`: the peer's trust domain, aliases expanded.
    SourceTrustDomain(ValueMatch<StringMatch>),
    /// `destination.ip`: the address the connection was made to.
    DestinationIp(ValueMatch<IpNet>),
    /// `destination.port`: the workload (target) port.
    DestinationPort(ValueMatch<u16>),
    /// `connection.sni`: the TLS server name (empty when none was sent).
    ConnectionSni(ValueMatch<StringMatch>),
    /// `request.headers[<name>]` (name lower-cased). HTTP only.
    RequestHeader {
        /// Header name, lower case.
        name: String,
        /// Patterns for its values.
        values: ValueMatch<StringMatch>,
    },
    /// `request.auth.principal`. HTTP only.
    RequestAuthPrincipal(ValueMatch<StringMatch>),
    /// `request.auth.audiences`. HTTP only.
    RequestAuthAudiences(ValueMatch<StringMatch>),
    /// `request.auth.presenter`. HTTP only.
    RequestAuthPresenter(ValueMatch<StringMatch>),
    /// `request.auth.claims[a][b]...` (nested claim path). HTTP only.
    RequestAuthClaim {
        /// The claim path, outermost first.
        claim: Vec<String>,
        /// Patterns for its values.
        values: ValueMatch<StringMatch>,
    },
}

impl ConditionMatch {
    /// The Istio attribute name, e.g. `request.headers[x-user]`.
    pub fn key(&self) -> String {
        match self {
            ConditionMatch::SourceIp(_) => "source.ip".into(),
            ConditionMatch::RemoteIp(_) => "remote.ip".into(),
            ConditionMatch::SourceNamespace(_) => "source.namespace".into(),
            ConditionMatch::SourcePrincipal(_) => "source.principal".into(),
            ConditionMatch::SourceServiceAccount(_) => "source.serviceAccount".into(),
            ConditionMatch::SourceTrustDomain(_) => "source.trustDomain".into(),
            ConditionMatch::DestinationIp(_) => "destination.ip".into(),
            ConditionMatch::DestinationPort(_) => "destination.port".into(),
            ConditionMatch::ConnectionSni(_) => "connection.sni".into(),
            ConditionMatch::RequestHeader { name, .. } => format!("request.headers[{name}]"),
            ConditionMatch::RequestAuthPrincipal(_) => "request.auth.principal".into(),
            ConditionMatch::RequestAuthAudiences(_) => "request.auth.audiences".into(),
            ConditionMatch::RequestAuthPresenter(_) => "request.auth.presenter".into(),
            ConditionMatch::RequestAuthClaim { claim, .. } => {
                let path: String = claim.iter().map(|c| format!("[{c}]")).collect();
                format!("request.auth.claims{path}")
            }
        }
    }

    /// Whether the attribute only exists on HTTP requests.
    pub fn is_http_only(&self) -> bool {
        matches!(
            self,
            ConditionMatch::RequestHeader { .. }
                | ConditionMatch::RequestAuthPrincipal(_)
                | ConditionMatch::RequestAuthAudiences(_)
                | ConditionMatch::RequestAuthPresenter(_)
                | ConditionMatch::RequestAuthClaim { .. }
        )
    }
}

impl AuthzRule {
    /// Whether the rule uses any HTTP-only attribute (which a TCP connection does not have).
    pub fn uses_http_attributes(&self) -> bool {
        self.from.iter().any(|s| !s.request_principals.is_empty())
            || self
                .to
                .iter()
                .any(|o| !o.hosts.is_empty() || !o.methods.is_empty() || !o.paths.is_empty())
            || self.when.iter().any(ConditionMatch::is_http_only)
    }

    /// The HTTP-only attributes the rule uses, for diagnostics (like Istio's ambient status
    /// "ztunnel does not support HTTP attributes (found: ...)").
    pub fn http_attributes(&self) -> Vec<String> {
        let mut found: Vec<String> = Vec::new();
        let mut add = |name: String| {
            if !found.contains(&name) {
                found.push(name);
            }
        };
        for source in &self.from {
            if !source.request_principals.is_empty() {
                add("requestPrincipals".into());
            }
        }
        for op in &self.to {
            for (set, name) in [
                (!op.hosts.is_empty(), "hosts"),
                (!op.methods.is_empty(), "methods"),
                (!op.paths.is_empty(), "paths"),
            ] {
                if set {
                    add(name.into());
                }
            }
        }
        for condition in self.when.iter().filter(|c| c.is_http_only()) {
            add(condition.key());
        }
        found
    }
}

impl AuthzPolicy {
    /// Compile one Istio policy. Errors carry a field path like `spec.rules[1].when[0].key`.
    pub fn compile(
        policy: PolicyRef,
        spec: &AuthorizationPolicySpec,
        dry_run: bool,
        mesh: &MeshContext,
    ) -> Result<AuthzPolicy, CompileError> {
        let action = spec.action.unwrap_or_default();
        // istio/api authorization_policy.proto: `provider` "Must be used only with CUSTOM
        // action"; a CUSTOM policy without one cannot be served (Istio denies, Ward rejects).
        let provider = match (action, &spec.provider) {
            (Action::Custom, Some(p)) if !p.name.is_empty() => Some(p.name.clone()),
            (Action::Custom, Some(_)) => {
                return Err(CompileError::new("spec.provider.name", "must not be empty"))
            }
            (Action::Custom, None) => {
                return Err(CompileError::new(
                    "spec.provider",
                    "a CUSTOM policy must name an extension provider",
                ))
            }
            (_, Some(_)) => {
                return Err(CompileError::new(
                    "spec.provider",
                    format!("only a CUSTOM policy may name a provider, this one is {action}"),
                ))
            }
            (_, None) => None,
        };
        let target_refs = target_refs(spec)?;
        let selector = spec
            .selector
            .as_ref()
            .map(|s| s.match_labels.clone())
            .filter(|labels| !labels.is_empty());
        // istio/api: "At most one of the selector and targetRef can be set."
        if selector.is_some() && !target_refs.is_empty() {
            return Err(CompileError::new(
                "spec.selector",
                "cannot be set together with targetRef or targetRefs",
            ));
        }
        let compiler = RuleCompiler {
            mesh,
            namespace: &policy.namespace,
        };
        let rules = spec
            .rules
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, rule)| compiler.rule(&format!("spec.rules[{i}]"), rule))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AuthzPolicy {
            policy,
            action,
            dry_run,
            selector,
            target_refs,
            provider,
            rules,
        })
    }

    /// Istio scope: root namespace without selector = every workload; otherwise the policy's
    /// namespace, narrowed by selector.matchLabels (all must be equal).
    ///
    /// istio/api authorization_policy.proto, `selector`: "If the authorization policy is in the
    /// root namespace, the selector will additionally match with workloads in all namespaces."
    /// So a root-namespace policy with a selector applies to matching workloads everywhere.
    /// A policy with `targetRef(s)` binds to a gateway or waypoint and applies to no workload.
    pub fn applies_to(
        &self,
        workload_namespace: &str,
        labels: &BTreeMap<String, String>,
        root_namespace: &str,
    ) -> bool {
        if !self.target_refs.is_empty() {
            return false;
        }
        let in_scope =
            self.policy.namespace == root_namespace || self.policy.namespace == workload_namespace;
        in_scope
            && self.selector.as_ref().is_none_or(|selector| {
                selector
                    .iter()
                    .all(|(key, value)| labels.get(key) == Some(value))
            })
    }
}

/// `targetRef` and `targetRefs` as one list; Istio allows one form or the other.
fn target_refs(spec: &AuthorizationPolicySpec) -> Result<Vec<PolicyTargetReference>, CompileError> {
    if spec.target_ref.is_some() && spec.target_refs.is_some() {
        return Err(CompileError::new(
            "spec.targetRefs",
            "cannot be set together with targetRef",
        ));
    }
    let (base, refs): (&str, Vec<PolicyTargetReference>) =
        match (&spec.target_ref, &spec.target_refs) {
            (Some(one), _) => ("spec.targetRef", vec![one.clone()]),
            (None, Some(many)) => ("spec.targetRefs", many.clone()),
            (None, None) => return Ok(Vec::new()),
        };
    for (i, target) in refs.iter().enumerate() {
        let at = if spec.target_ref.is_some() {
            base.to_string()
        } else {
            format!("{base}[{i}]")
        };
        if target.kind.is_empty() {
            return Err(CompileError::new(format!("{at}.kind"), "must not be empty"));
        }
        if target.name.is_empty() {
            return Err(CompileError::new(format!("{at}.name"), "must not be empty"));
        }
    }
    Ok(refs)
}

/// Compiles the rules of one policy.
struct RuleCompiler<'a> {
    mesh: &'a MeshContext,
    /// The policy's namespace: the default namespace of `serviceAccounts` values.
    namespace: &'a str,
}

/// istio/istio `pkg/config/security/security.go` `CheckServiceAccount`: "may not have more
/// than 16 values".
const MAX_SERVICE_ACCOUNTS: usize = 16;

impl RuleCompiler<'_> {
    fn rule(&self, at: &str, rule: &Rule) -> Result<AuthzRule, CompileError> {
        let from = rule
            .from
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, from)| self.source(&format!("{at}.from[{i}].source"), &from.source))
            .collect::<Result<Vec<_>, _>>()?;
        let to = rule
            .to
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, to)| self.operation(&format!("{at}.to[{i}].operation"), &to.operation))
            .collect::<Result<Vec<_>, _>>()?;
        let when = rule
            .when
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, condition)| self.condition(&format!("{at}.when[{i}]"), condition))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AuthzRule { from, to, when })
    }

    fn source(&self, at: &str, s: &Source) -> Result<SourceMatch, CompileError> {
        let set = |v: &Option<Vec<String>>| v.as_ref().is_some_and(|v| !v.is_empty());
        // istio/api: serviceAccounts "Cannot be set with principals or namespaces."
        if (set(&s.service_accounts) || set(&s.not_service_accounts))
            && (set(&s.principals)
                || set(&s.not_principals)
                || set(&s.namespaces)
                || set(&s.not_namespaces))
        {
            return Err(CompileError::new(
                format!("{at}.serviceAccounts"),
                "cannot be combined with principals or namespaces in one source",
            ));
        }
        for (name, values) in [
            ("serviceAccounts", &s.service_accounts),
            ("notServiceAccounts", &s.not_service_accounts),
        ] {
            if values
                .as_ref()
                .is_some_and(|v| v.len() > MAX_SERVICE_ACCOUNTS)
            {
                return Err(CompileError::new(
                    format!("{at}.{name}"),
                    format!("may not have more than {MAX_SERVICE_ACCOUNTS} values"),
                ));
            }
        }
        let principal = |v: &str| self.principal(v);
        let sa = |v: &str| self.service_account(v);
        let trust_domain = |v: &str| self.trust_domain(v);
        let string = string_pattern;
        let ip = ip_pattern;
        Ok(SourceMatch {
            principals: field(
                at,
                "principals",
                &s.principals,
                &s.not_principals,
                principal,
            )?,
            request_principals: field(
                at,
                "requestPrincipals",
                &s.request_principals,
                &s.not_request_principals,
                string,
            )?,
            namespaces: field(at, "namespaces", &s.namespaces, &s.not_namespaces, string)?,
            service_accounts: field(
                at,
                "serviceAccounts",
                &s.service_accounts,
                &s.not_service_accounts,
                sa,
            )?,
            trust_domains: field(
                at,
                "trustDomains",
                &s.trust_domains,
                &s.not_trust_domains,
                trust_domain,
            )?,
            ip_blocks: field(at, "ipBlocks", &s.ip_blocks, &s.not_ip_blocks, ip)?,
            remote_ip_blocks: field(
                at,
                "remoteIpBlocks",
                &s.remote_ip_blocks,
                &s.not_remote_ip_blocks,
                ip,
            )?,
        })
    }

    fn operation(&self, at: &str, o: &Operation) -> Result<OperationMatch, CompileError> {
        let (string, port, path) = (string_pattern, port_pattern, path_pattern);
        Ok(OperationMatch {
            hosts: field(at, "hosts", &o.hosts, &o.not_hosts, string)?,
            ports: field(at, "ports", &o.ports, &o.not_ports, port)?,
            methods: field(at, "methods", &o.methods, &o.not_methods, string)?,
            paths: field(at, "paths", &o.paths, &o.not_paths, path)?,
        })
    }

    fn condition(&self, at: &str, c: &Condition) -> Result<ConditionMatch, CompileError> {
        let has = |v: &Option<Vec<String>>| v.as_ref().is_some_and(|v| !v.is_empty());
        // istio/api: "Note: at least one of values or not_values must be set."
        if !has(&c.values) && !has(&c.not_values) {
            return Err(CompileError::new(
                format!("{at}.values"),
                "at least one of values or notValues must be set",
            ));
        }
        use ConditionMatch as C;
        // Supported keys: istio/istio `pilot/pkg/security/authz/model/model.go` (`New`) and
        // istio.io "Authorization Policy Conditions". Istio skips a rule with an unknown key;
        // Ward rejects the policy.
        Ok(match c.key.as_str() {
            "source.ip" => C::SourceIp(when(at, c, ip_pattern)?),
            "remote.ip" => C::RemoteIp(when(at, c, ip_pattern)?),
            "destination.ip" => C::DestinationIp(when(at, c, ip_pattern)?),
            "destination.port" => C::DestinationPort(when(at, c, port_pattern)?),
            "source.namespace" => C::SourceNamespace(when(at, c, string_pattern)?),
            "source.principal" => C::SourcePrincipal(when(at, c, |v| self.principal(v))?),
            "source.serviceAccount" => {
                C::SourceServiceAccount(when(at, c, |v| self.service_account(v))?)
            }
            "source.trustDomain" => C::SourceTrustDomain(when(at, c, |v| self.trust_domain(v))?),
            "connection.sni" => C::ConnectionSni(when(at, c, string_pattern)?),
            "request.auth.principal" => C::RequestAuthPrincipal(when(at, c, string_pattern)?),
            "request.auth.audiences" => C::RequestAuthAudiences(when(at, c, string_pattern)?),
            "request.auth.presenter" => C::RequestAuthPresenter(when(at, c, string_pattern)?),
            key => bracketed_condition(at, c, key)?,
        })
    }

    /// A `principals` or `source.principal` value: validated, then expanded over the trust
    /// domain aliases.
    fn principal(&self, value: &str) -> Result<Vec<StringMatch>, String> {
        if value.is_empty() {
            return Err(PatternError::Empty.to_string());
        }
        if value
            .get(..SPIFFE_SCHEME.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(SPIFFE_SCHEME))
        {
            // istio/api: principals are "in the format of "<TRUST_DOMAIN>/ns/<NAMESPACE>/sa/
            // <SERVICE_ACCOUNT>""; a scheme here would never match anything.
            let rest = value.get(SPIFFE_SCHEME.len()..).unwrap_or_default();
            return Err(format!("Istio principals have no scheme: write {rest:?}"));
        }
        self.mesh
            .expand_principal(value)
            .iter()
            .map(|p| StringMatch::parse(p).map_err(|e| e.to_string()))
            .collect()
    }

    fn service_account(&self, value: &str) -> Result<Vec<ServiceAccountMatch>, String> {
        one(ServiceAccountMatch::parse(value, self.namespace))
    }

    fn trust_domain(&self, value: &str) -> Result<Vec<StringMatch>, String> {
        if value.is_empty() {
            return Err(PatternError::Empty.to_string());
        }
        self.mesh
            .expand_trust_domain(value)
            .iter()
            .map(|td| StringMatch::parse(td).map_err(|e| e.to_string()))
            .collect()
    }
}

const SPIFFE_SCHEME: &str = "spiffe://";

/// Adapts a single-valued parser to [`field`].
fn one<T>(parsed: Result<T, PatternError>) -> Result<Vec<T>, String> {
    parsed.map(|v| vec![v]).map_err(|e| e.to_string())
}

fn string_pattern(value: &str) -> Result<Vec<StringMatch>, String> {
    one(StringMatch::parse(value))
}

fn ip_pattern(value: &str) -> Result<Vec<IpNet>, String> {
    one(parse_ip_block(value))
}

fn port_pattern(value: &str) -> Result<Vec<u16>, String> {
    one(parse_port(value))
}

fn path_pattern(value: &str) -> Result<Vec<PathMatch>, String> {
    one(PathMatch::parse(value))
}

/// Compiles the `values`/`notValues` of a `when` condition.
fn when<T>(
    at: &str,
    c: &Condition,
    parse: impl Fn(&str) -> Result<Vec<T>, String>,
) -> Result<ValueMatch<T>, CompileError> {
    field(at, "values", &c.values, &c.not_values, parse)
}

/// The `when` keys that carry a name in brackets, and the unsupported ones.
fn bracketed_condition(at: &str, c: &Condition, key: &str) -> Result<ConditionMatch, CompileError> {
    let bad_key = |message: String| CompileError::new(format!("{at}.key"), message);
    if let Some(rest) = key.strip_prefix("request.headers") {
        let name = header_name(rest).ok_or_else(|| {
            bad_key(format!(
                "{key:?} must have the form request.headers[<name>]"
            ))
        })?;
        let values = when(at, c, string_pattern)?;
        Ok(ConditionMatch::RequestHeader { name, values })
    } else if let Some(rest) = key.strip_prefix("request.auth.claims") {
        let claim = claim_path(rest).ok_or_else(|| {
            bad_key(format!(
                "{key:?} must have the form request.auth.claims[<claim>] (nested: [a][b])"
            ))
        })?;
        let values = when(at, c, string_pattern)?;
        Ok(ConditionMatch::RequestAuthClaim { claim, values })
    } else if key.starts_with("experimental.envoy.filters.") {
        Err(bad_key(format!(
            "{key:?}: Envoy filter metadata attributes are not supported by Ward"
        )))
    } else {
        Err(bad_key(format!("unknown attribute {key:?}")))
    }
}

/// Compiles a field and its `not` form (`<name>`/`not<Name>`). Errors name the value's index.
fn field<T>(
    at: &str,
    name: &str,
    values: &Option<Vec<String>>,
    not_values: &Option<Vec<String>>,
    parse: impl Fn(&str) -> Result<Vec<T>, String>,
) -> Result<ValueMatch<T>, CompileError> {
    let not_name = not_form(name);
    let list = |name: &str, values: &Option<Vec<String>>| -> Result<Vec<T>, CompileError> {
        let mut out = Vec::new();
        for (i, value) in values.iter().flatten().enumerate() {
            let parsed = parse(value)
                .map_err(|message| CompileError::new(format!("{at}.{name}[{i}]"), message))?;
            out.extend(parsed);
        }
        Ok(out)
    };
    Ok(ValueMatch {
        values: list(name, values)?,
        not_values: list(&not_name, not_values)?,
    })
}

/// `principals` → `notPrincipals`; `values` → `notValues`.
fn not_form(name: &str) -> String {
    let mut chars = name.chars();
    match chars.next() {
        Some(first) => format!("not{}{}", first.to_ascii_uppercase(), chars.as_str()),
        None => String::new(),
    }
}

/// `[<name>]` → the header name, lower-cased (istio `security.go` `validateMapKey`: the name
/// must be non-empty).
fn header_name(brackets: &str) -> Option<String> {
    let name = brackets.strip_prefix('[')?.strip_suffix(']')?;
    if name.is_empty() || name.contains(['[', ']']) {
        return None;
    }
    Some(name.to_ascii_lowercase())
}

/// `[a][b]` → `["a", "b"]`: a nested claim is written one bracket per level,
/// `request.auth.claims[a][b]` (docs/istio-semantics.md, "AuthorizationPolicy `when` keys").
fn claim_path(brackets: &str) -> Option<Vec<String>> {
    let inner = brackets.strip_prefix('[')?.strip_suffix(']')?;
    let path: Vec<String> = inner.split("][").map(str::to_string).collect();
    if path.iter().any(|c| c.is_empty() || c.contains(['[', ']'])) {
        return None;
    }
    Some(path)
}

/// The policies that apply to one workload, in the order given, with the index that picks the
/// rules a connection or request can match (module `index`), so evaluation does not walk every
/// policy.
///
/// Build it with [`WorkloadPolicies::new`] (or [`WorkloadPolicies::select`], or deserialize it:
/// the index is rebuilt). It serializes as `{"policies": [...]}`; equality compares the policies
/// only. The policies can be read ([`WorkloadPolicies::policies`]) but not changed from
/// outside this crate: to change them, build a new value.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(from = "PolicyList")]
pub struct WorkloadPolicies {
    /// The applicable policies (outside this crate read-only, through
    /// [`WorkloadPolicies::policies`], so the index built beside them can never go stale).
    pub(crate) policies: Vec<AuthzPolicy>,
    /// Built from `policies` by [`WorkloadPolicies::new`].
    #[serde(skip)]
    pub(crate) index: PolicyIndex,
}

/// The serialized form of [`WorkloadPolicies`].
#[derive(Deserialize)]
struct PolicyList {
    policies: Vec<AuthzPolicy>,
}

impl From<PolicyList> for WorkloadPolicies {
    fn from(list: PolicyList) -> WorkloadPolicies {
        WorkloadPolicies::new(list.policies)
    }
}

impl PartialEq for WorkloadPolicies {
    fn eq(&self, other: &WorkloadPolicies) -> bool {
        self.policies == other.policies
    }
}

impl Eq for WorkloadPolicies {}

impl fmt::Debug for WorkloadPolicies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadPolicies")
            .field("policies", &self.policies)
            .finish_non_exhaustive()
    }
}

impl WorkloadPolicies {
    /// The policies of one workload, in evaluation order, indexed. Costs about as much as
    /// compiling them; do it once per configuration, not per connection.
    pub fn new(policies: Vec<AuthzPolicy>) -> WorkloadPolicies {
        let index = PolicyIndex::build(&policies);
        WorkloadPolicies { policies, index }
    }

    /// The policies, in evaluation order.
    pub fn policies(&self) -> &[AuthzPolicy] {
        &self.policies
    }

    /// Keeps the policies of `all` that [`AuthzPolicy::applies_to`] the workload.
    pub fn select(
        all: &[AuthzPolicy],
        workload_namespace: &str,
        labels: &BTreeMap<String, String>,
        root_namespace: &str,
    ) -> WorkloadPolicies {
        WorkloadPolicies::new(
            all.iter()
                .filter(|p| p.applies_to(workload_namespace, labels, root_namespace))
                .cloned()
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{ExtensionProvider, WorkloadSelector};

    fn mesh() -> MeshContext {
        MeshContext {
            root_namespace: "istio-system".into(),
            trust_domain: "td1".into(),
            trust_domain_aliases: vec!["td2".into()],
        }
    }

    fn compile_yaml(yaml: &str) -> Result<AuthzPolicy, CompileError> {
        let spec: AuthorizationPolicySpec = serde_saphyr::from_str(yaml).unwrap();
        AuthzPolicy::compile(PolicyRef::new("foo", "p"), &spec, false, &mesh())
    }

    #[test]
    fn compile_errors_name_the_field() {
        // (policy yaml, expected field)
        let table: &[(&str, &str)] = &[
            ("rules:\n- when:\n  - key: source.ip\n", "spec.rules[0].when[0].values"),
            (
                "rules:\n- {}\n- when:\n  - key: source.bogus\n    values: [x]\n",
                "spec.rules[1].when[0].key",
            ),
            (
                "rules:\n- when:\n  - key: experimental.envoy.filters.a[b]\n    values: [x]\n",
                "spec.rules[0].when[0].key",
            ),
            (
                "rules:\n- when:\n  - key: request.headers[]\n    values: [x]\n",
                "spec.rules[0].when[0].key",
            ),
            (
                "rules:\n- when:\n  - key: request.auth.claims[a][]\n    values: [x]\n",
                "spec.rules[0].when[0].key",
            ),
            (
                "rules:\n- from:\n  - source: {ipBlocks: [10.0.0.0/8, 300.0.0.1]}\n",
                "spec.rules[0].from[0].source.ipBlocks[1]",
            ),
            (
                "rules:\n- from:\n  - source: {notRemoteIpBlocks: [nope]}\n",
                "spec.rules[0].from[0].source.notRemoteIpBlocks[0]",
            ),
            (
                "rules:\n- to:\n  - operation: {ports: [\"0\"]}\n",
                "spec.rules[0].to[0].operation.ports[0]",
            ),
            (
                "rules:\n- to:\n  - operation: {notPorts: [\"70000\"]}\n",
                "spec.rules[0].to[0].operation.notPorts[0]",
            ),
            (
                "rules:\n- when:\n  - key: destination.port\n    notValues: [http]\n",
                "spec.rules[0].when[0].notValues[0]",
            ),
            (
                "rules:\n- to:\n  - operation: {paths: [\"/a/{**}/{*}\"]}\n",
                "spec.rules[0].to[0].operation.paths[0]",
            ),
            (
                "rules:\n- to:\n  - operation: {notPaths: [\"/a/{*}.txt\"]}\n",
                "spec.rules[0].to[0].operation.notPaths[0]",
            ),
            (
                "rules:\n- from:\n  - source: {principals: [\"spiffe://td1/ns/a/sa/b\"]}\n",
                "spec.rules[0].from[0].source.principals[0]",
            ),
            (
                "rules:\n- when:\n  - key: source.principal\n    values: [\"SPIFFE://td1/ns/a/sa/b\"]\n",
                "spec.rules[0].when[0].values[0]",
            ),
            (
                "rules:\n- from:\n  - source: {namespaces: [a, \"\"]}\n",
                "spec.rules[0].from[0].source.namespaces[1]",
            ),
            (
                "rules:\n- to:\n  - operation: {methods: [\"\"]}\n",
                "spec.rules[0].to[0].operation.methods[0]",
            ),
            (
                "rules:\n- from:\n  - source: {serviceAccounts: [a], principals: [b]}\n",
                "spec.rules[0].from[0].source.serviceAccounts",
            ),
            (
                "rules:\n- from:\n  - source: {notServiceAccounts: [a], namespaces: [b]}\n",
                "spec.rules[0].from[0].source.serviceAccounts",
            ),
            (
                "rules:\n- from:\n  - source: {serviceAccounts: [\"ns/*\"]}\n",
                "spec.rules[0].from[0].source.serviceAccounts[0]",
            ),
            ("action: CUSTOM\n", "spec.provider"),
            ("action: CUSTOM\nprovider: {name: \"\"}\n", "spec.provider.name"),
            ("action: DENY\nprovider: {name: ext}\n", "spec.provider"),
            (
                "selector: {matchLabels: {app: a}}\ntargetRef: {kind: Gateway, name: gw}\n",
                "spec.selector",
            ),
            (
                "targetRef: {kind: Gateway, name: gw}\ntargetRefs: [{kind: Gateway, name: gw}]\n",
                "spec.targetRefs",
            ),
            ("targetRefs: [{kind: Gateway, name: \"\"}]\n", "spec.targetRefs[0].name"),
        ];
        for (yaml, want) in table {
            let err = compile_yaml(yaml).expect_err(yaml);
            assert_eq!(err.field, *want, "{yaml}");
            assert!(err.to_string().starts_with(&format!("{want}: ")));
        }
    }

    #[test]
    fn too_many_service_accounts_is_an_error() {
        let names: Vec<String> = (0..17).map(|i| format!("sa{i}")).collect();
        let yaml = format!(
            "rules:\n- from:\n  - source: {{serviceAccounts: [{}]}}\n",
            names.join(", ")
        );
        let err = compile_yaml(&yaml).unwrap_err();
        assert_eq!(err.field, "spec.rules[0].from[0].source.serviceAccounts");
    }

    #[test]
    fn valid_policies_compile() {
        let table: &[&str] = &[
            "{}",
            "rules: []\n",
            "rules:\n- {}\n",
            "action: AUDIT\nrules:\n- to:\n  - operation: {paths: [\"/a/{*}/b/{**}\"], hosts: [\"*.example.com\"]}\n",
            "action: CUSTOM\nprovider: {name: ext}\nrules:\n- {}\n",
            "rules:\n- when:\n  - key: request.auth.claims[groups][admin]\n    values: [x]\n  - key: request.headers[X-User]\n    notValues: [\"*\"]\n",
            "rules:\n- from:\n  - source: {serviceAccounts: [sleep, other/api]}\n",
            "rules:\n- when:\n  - key: source.serviceAccount\n    values: [sleep]\n  - key: connection.sni\n    values: [\"*.local\"]\n",
            "targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: gw}]\n",
        ];
        for yaml in table {
            compile_yaml(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"));
        }
    }

    #[test]
    fn trust_domains_expand_aliases_and_match_the_peer_trust_domain() {
        let policy = compile_yaml(
            "rules: [{from: [{source: {trustDomains: [td2, \"*.example\"], notTrustDomains: [foreign]}}]}]",
        )
        .unwrap();
        let source = &policy.rules[0].from[0];
        let values: Vec<String> = source
            .trust_domains
            .values
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(values, ["td1", "td2", "*.example"]);
        let not: Vec<String> = source
            .trust_domains
            .not_values
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(not, ["foreign"]);
        // (peer trust domain, matches): the mesh's domain answers to its alias.
        for (td, want) in [
            ("td1", true),
            ("td2", true),
            ("a.example", true),
            ("foreign", false),
            ("td3", false),
        ] {
            let peer = crate::l4::Peer::new(td, "ns", "sa");
            let conn = crate::l4::L4Attributes {
                peer: Some(&peer),
                source_ip: "10.0.0.1".parse().unwrap(),
                remote_ip: "10.0.0.1".parse().unwrap(),
                destination_ip: "10.0.0.2".parse().unwrap(),
                destination_port: 80,
                sni: None,
            };
            assert_eq!(policy.matching_rule_l4(&conn).is_some(), want, "{td}");
        }
    }

    #[test]
    fn empty_trust_domain_is_rejected_with_its_field() {
        let err =
            compile_yaml("rules: [{from: [{source: {notTrustDomains: [\"\"]}}]}]").unwrap_err();
        assert_eq!(err.field, "spec.rules[0].from[0].source.notTrustDomains[0]");
    }

    #[test]
    fn compiled_values_table() {
        let policy = compile_yaml(
            r#"
rules:
- from:
  - source:
      principals: ["cluster.local/ns/a/sa/b", "td2/ns/c/sa/d", "other/ns/e/sa/f", "*/ns/g/sa/h", "td1/ns/i/*"]
      serviceAccounts: []
  - source:
      serviceAccounts: [sleep, x/api]
  when:
  - key: source.trustDomain
    values: [td2, foreign]
  - key: request.headers[X-Token]
    values: [abc]
  - key: request.auth.claims[realm][role]
    notValues: [admin]
"#,
        )
        .unwrap();
        let rule = &policy.rules[0];
        let principals: Vec<String> = rule.from[0]
            .principals
            .values
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            principals,
            [
                "td1/ns/a/sa/b",
                "td2/ns/a/sa/b",
                "td1/ns/c/sa/d",
                "td2/ns/c/sa/d",
                "other/ns/e/sa/f",
                "*/ns/g/sa/h",
                // Not `td/ns/x/sa/y`: Istio keeps it as written.
                "td1/ns/i/*",
            ]
        );
        let sas: Vec<String> = rule.from[1]
            .service_accounts
            .values
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(sas, ["foo/sleep", "x/api"]);
        let keys: Vec<String> = rule.when.iter().map(ConditionMatch::key).collect();
        assert_eq!(
            keys,
            [
                "source.trustDomain",
                "request.headers[x-token]",
                "request.auth.claims[realm][role]"
            ]
        );
        match &rule.when[0] {
            ConditionMatch::SourceTrustDomain(v) => {
                let tds: Vec<String> = v.values.iter().map(ToString::to_string).collect();
                assert_eq!(tds, ["td1", "td2", "foreign"]);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(rule.uses_http_attributes());
        assert_eq!(
            rule.http_attributes(),
            [
                "request.headers[x-token]",
                "request.auth.claims[realm][role]"
            ]
        );
    }

    #[test]
    fn http_attributes_table() {
        let table: &[(&str, &[&str])] = &[
            ("rules:\n- {}\n", &[]),
            (
                "rules:\n- to:\n  - operation: {ports: [\"80\"]}\n",
                &[],
            ),
            (
                "rules:\n- from:\n  - source: {notRequestPrincipals: [\"*\"]}\n  to:\n  - operation: {methods: [GET], notPaths: [/x]}\n  - operation: {notHosts: [a]}\n",
                &["requestPrincipals", "methods", "paths", "hosts"],
            ),
        ];
        for (yaml, want) in table {
            let policy = compile_yaml(yaml).unwrap();
            let rule = &policy.rules[0];
            assert_eq!(rule.http_attributes(), *want, "{yaml}");
            assert_eq!(rule.uses_http_attributes(), !want.is_empty());
        }
    }

    /// `"k=v,k2=v2"` → labels.
    fn labels(pairs: &str) -> BTreeMap<String, String> {
        pairs
            .split(',')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// (policy namespace, selector labels, has targetRef, workload namespace, workload labels,
    /// applies)
    type ScopeCase = (
        &'static str,
        Option<&'static str>,
        bool,
        &'static str,
        &'static str,
        bool,
    );

    #[test]
    fn applies_to_table() {
        let policy = |ns: &str, selector: Option<&str>, target: bool| {
            let spec = AuthorizationPolicySpec {
                selector: selector.map(|s| WorkloadSelector {
                    match_labels: labels(s),
                }),
                target_ref: target.then(|| PolicyTargetReference {
                    group: None,
                    kind: "Gateway".into(),
                    name: "gw".into(),
                    namespace: None,
                }),
                ..Default::default()
            };
            AuthzPolicy::compile(PolicyRef::new(ns, "p"), &spec, false, &mesh()).unwrap()
        };
        let root = "istio-system";
        let table: &[ScopeCase] = &[
            (root, None, false, "foo", "", true),
            (root, Some(""), false, "bar", "", true),
            (root, Some("app=a"), false, "bar", "app=a", true),
            (root, Some("app=a"), false, "bar", "app=b", false),
            ("foo", None, false, "foo", "", true),
            ("foo", None, false, "bar", "", false),
            ("foo", Some("app=a"), false, "foo", "app=a,v=1", true),
            ("foo", Some("app=a"), false, "foo", "v=1", false),
            ("foo", Some("app=a,v=1"), false, "foo", "app=a", false),
            ("foo", Some("app=a"), false, "bar", "app=a", false),
            ("foo", None, true, "foo", "", false),
            (root, None, true, "foo", "", false),
        ];
        for (ns, selector, target, wl_ns, wl_labels, want) in table {
            let p = policy(ns, *selector, *target);
            assert_eq!(
                p.applies_to(wl_ns, &labels(wl_labels), root),
                *want,
                "{ns} {selector:?} target={target} -> {wl_ns} {wl_labels:?}"
            );
        }
        let all = vec![
            policy("foo", None, false),
            policy("bar", None, false),
            policy(root, None, false),
        ];
        let selected = WorkloadPolicies::select(&all, "foo", &labels(""), root);
        let names: Vec<String> = selected
            .policies
            .iter()
            .map(|p| p.policy.to_string())
            .collect();
        assert_eq!(names, ["foo/p", "istio-system/p"]);
    }

    #[test]
    fn dry_run_annotation_table() {
        let table = [
            ("true", Some(true)),
            ("True", Some(true)),
            ("1", Some(true)),
            ("false", Some(false)),
            ("0", Some(false)),
            ("yes", None),
            ("", None),
        ];
        for (value, want) in table {
            assert_eq!(parse_dry_run(value), want, "{value:?}");
        }
    }

    #[test]
    fn compiled_policy_round_trips_through_json() {
        let mut policy = compile_yaml(
            "action: DENY\nrules:\n- from:\n  - source: {principals: [\"cluster.local/ns/a/sa/*\"], notIpBlocks: [10.0.0.1]}\n  to:\n  - operation: {ports: [\"80\"], paths: [\"/x/{*}\"]}\n  when:\n  - key: request.headers[a]\n    values: [b]\n",
        )
        .unwrap();
        policy.provider = None;
        let json = serde_json::to_string(&policy).unwrap();
        let back: AuthzPolicy = serde_json::from_str(&json).unwrap();
        assert_eq!(back, policy);
        assert!(
            json.contains("[\"td1/ns/a/sa/*\",\"td2/ns/a/sa/*\"]"),
            "{json}"
        );
        assert!(json.contains("\"10.0.0.1/32\""), "{json}");
        let custom = AuthorizationPolicySpec {
            action: Some(Action::Custom),
            provider: Some(ExtensionProvider { name: "ext".into() }),
            ..Default::default()
        };
        let compiled =
            AuthzPolicy::compile(PolicyRef::new("a", "b"), &custom, true, &mesh()).unwrap();
        assert_eq!(compiled.provider.as_deref(), Some("ext"));
        assert!(compiled.dry_run);
    }
}
