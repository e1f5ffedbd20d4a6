//! `ward analyze`: findings about a config that loads, in the spirit of `istioctl analyze`.
//!
//! Pure: a [`ConfigSet`] in, diagnostics out. Load and translation errors are reported by the
//! caller; this adds what is legal but likely wrong (a selector that selects nothing, a
//! PERMISSIVE port, an HTTP-only rule on a TCP port ...). The codes are stable and documented
//! in `docs/analyze.md`; an `Error` makes `ward analyze` exit non-zero.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use ward_policy::matcher::{
    parse_port, PathMatch, StringMatch, MATCH_ANY_SEGMENTS, MATCH_ONE_SEGMENT,
};
use ward_policy::spec::{Action, MtlsModeSpec, Rule};
use ward_policy::{
    lint, AuthzPolicy, AuthzRule, ConditionMatch, PeerAuthnLevel, PeerAuthnLint, PolicyRef,
};

use ward_policy::spec::WorkloadSelector;

use crate::diag::{code, Diagnostic, Diagnostics, Severity};
use crate::istio::{parse_default_endpoint, AppEndpoint, HostNamespace, SidecarHost};
use crate::istio::{SidecarSpec, WorkloadEntrySpec};
use crate::load::{ConfigSet, NamespaceObject, Resource};
use crate::request_authn;
use crate::routes::EgressRoutes;
use crate::snapshot::{MeshSnapshot, Transport};
use crate::translate::{translate, unmatched_host_message, Context, Workload};
use crate::yaml::{push_index, push_key};

mod conflicts;

pub use conflicts::PHI_LABEL;

/// Everything `ward analyze` reports about files loaded with
/// [`load_paths_partial`](crate::load_paths_partial): the load diagnostics (`loaded`), then the
/// translation errors and the [`analyze`] findings of the objects that loaded, each problem
/// once. Objects that loaded with errors are translated and analyzed too, and those stages find
/// some of the same problems again (in their own words): a finding with the code, severity,
/// place, object and field of one an earlier stage reported is that problem again, and is left
/// out.
pub fn all_findings(set: &ConfigSet, loaded: Diagnostics) -> Vec<Diagnostic> {
    let mut findings = loaded.0;
    let translated = match translate(set) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.0,
    };
    for stage in [translated, analyze(set)] {
        let earlier = findings.len();
        for f in stage {
            let again = findings[..earlier].iter().any(|e| same_problem(e, &f));
            if !again && !findings[earlier..].contains(&f) {
                findings.push(f);
            }
        }
    }
    findings
}

/// Whether two findings are one problem: the same code and severity at the same place, object
/// and field (their messages may differ).
fn same_problem(a: &Diagnostic, b: &Diagnostic) -> bool {
    (a.code, a.severity, &a.file, a.line, &a.object, &a.field)
        == (b.code, b.severity, &b.file, b.line, &b.object, &b.field)
}

/// Everything `ward analyze` reports beyond load and translation errors, in file and line
/// order.
pub fn analyze(set: &ConfigSet) -> Vec<Diagnostic> {
    let (context, _) = Context::build(set);
    let mut out = Vec::new();
    selectors(&context, &mut out);
    policy_sources(&context, &mut out);
    peer_authentications(&context, &mut out);
    http_fields_on_tcp(&context, &mut out);
    custom_actions(set, &mut out);
    egress_hosts(&context, &mut out);
    request_authn::selectors_matching_nothing(&context, &mut out);
    request_authn::token_not_required(&context, &mut out);
    request_authn::plain_http_jwks(&context, &mut out);
    namespaces_without_workloads(&context, &mut out);
    ports_not_served(&context, &mut out);
    exact_deny_paths(&context, &mut out);
    gateway_selectors(set, &mut out);
    sidecars_in_ambient(&context, &mut out);
    conflicts::disable_toward_strict(&context, &mut out);
    conflicts::allow_rules(&context, &mut out);
    conflicts::phi_plaintext(&context, &mut out);
    conflicts::ossm_mtls_false(&context, &mut out);
    crate::origination::analyze(context.set, &mut out);
    if let Ok(snapshot) = translate(set) {
        snapshot_checks(&context, &snapshot, &mut out);
    }
    out.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    out.dedup();
    out
}

/// WARD0201: a selector that selects no WorkloadEntry.
fn selectors(context: &Context<'_>, out: &mut Vec<Diagnostic>) {
    let set = context.set;
    let none_in = |namespace: &str, labels: &BTreeMap<String, String>| {
        !context.workloads.iter().any(|w| {
            w.namespace() == namespace && labels.iter().all(|(k, v)| w.labels.get(k) == Some(v))
        })
    };
    for pa in &set.peer_authentications {
        let Some(selector) = &pa.spec.selector else {
            continue;
        };
        // Root-namespace selector PAs get WARD0206 instead.
        if pa.meta.namespace != set.mesh.root_namespace
            && none_in(&pa.meta.namespace, &selector.match_labels)
        {
            out.push(pa.diagnostic(
                Severity::Warning,
                code::SELECTOR_MATCHES_NOTHING,
                "spec.selector",
                "this selector matches no WorkloadEntry in the namespace: the policy applies to nothing",
            ));
        }
    }
    for (ap, compiled) in set.authorization_policies.iter().zip(&context.compiled) {
        let Some(policy) = compiled.and_then(|i| context.policies.get(i)) else {
            continue;
        };
        if !policy.target_refs.is_empty() {
            // On the field that binds the policy (a `targetRef` and `targetRefs` together do not
            // compile, so only one is set here).
            let field = if ap.spec.target_ref.is_some() {
                "spec.targetRef"
            } else {
                "spec.targetRefs"
            };
            out.push(ap.diagnostic(
                Severity::Warning,
                code::SELECTOR_MATCHES_NOTHING,
                field,
                "targetRef(s) bind the policy to gateways or waypoints, which Ward does not run: \
                 it applies to no workload",
            ));
        } else if policy.selector.is_some() && applies_to_nothing(context, policy) {
            out.push(ap.diagnostic(
                Severity::Warning,
                code::SELECTOR_MATCHES_NOTHING,
                "spec.selector",
                "this selector matches no WorkloadEntry in scope: the policy applies to nothing",
            ));
        }
    }
    for sidecar in &set.sidecars {
        let Some(selector) = &sidecar.spec.workload_selector else {
            continue;
        };
        if none_in(
            &sidecar.meta.namespace,
            &selector.labels.clone().unwrap_or_default(),
        ) {
            out.push(sidecar.diagnostic(
                Severity::Warning,
                code::SELECTOR_MATCHES_NOTHING,
                "spec.workloadSelector",
                "this workloadSelector matches no WorkloadEntry in the namespace",
            ));
        }
    }
    for se in &set.service_entries {
        let Some(selector) = &se.spec.workload_selector else {
            continue;
        };
        if none_in(
            &se.meta.namespace,
            &selector.labels.clone().unwrap_or_default(),
        ) {
            out.push(se.diagnostic(
                Severity::Warning,
                code::SELECTOR_MATCHES_NOTHING,
                "spec.workloadSelector",
                "this workloadSelector matches no WorkloadEntry in the namespace: the service \
                 has no endpoints",
            ));
        }
    }
}

fn applies_to_nothing(context: &Context<'_>, policy: &AuthzPolicy) -> bool {
    let root = &context.set.mesh.root_namespace;
    !context
        .workloads
        .iter()
        .any(|w| policy.applies_to(w.namespace(), &w.labels, root))
}

/// WARD0202: an exact principal, namespace or service account that names no workload, or an
/// exact trust domain that is neither the mesh's trust domain nor one of its aliases.
fn policy_sources(context: &Context<'_>, out: &mut Vec<Diagnostic>) {
    let known = KnownSources::new(context);
    for ap in &context.set.authorization_policies {
        for (i, rule) in ap.spec.rules.iter().flatten().enumerate() {
            for (path, value, kind) in rule_sources(rule, &push_index("spec.rules", i)) {
                // Patterns (prefix, suffix, `*`) are skipped: only exact values can be checked.
                // An empty value is a load error (WARD0108) already.
                if value.is_empty()
                    || value.contains('*')
                    || known.names_a_workload(kind, value, &ap.meta.namespace)
                {
                    continue;
                }
                let message = match kind {
                    SourceKind::TrustDomain => known.foreign_trust_domain_message(value),
                    _ => format!(
                        "{} `{value}` names no WorkloadEntry; check for a typo",
                        kind.noun()
                    ),
                };
                out.push(ap.diagnostic(
                    Severity::Warning,
                    code::SOURCE_MATCHES_NOTHING,
                    &path,
                    message,
                ));
            }
        }
    }
}

/// What an identity value in a rule names.
#[derive(Clone, Copy)]
enum SourceKind {
    Principal,
    Namespace,
    ServiceAccount,
    TrustDomain,
}

impl SourceKind {
    fn noun(self) -> &'static str {
        match self {
            SourceKind::Principal => "principal",
            SourceKind::Namespace => "namespace",
            SourceKind::ServiceAccount => "service account",
            SourceKind::TrustDomain => "trust domain",
        }
    }
}

/// Every identity value of a rule, with its field path.
fn rule_sources<'r>(rule: &'r Rule, rule_path: &str) -> Vec<(String, &'r str, SourceKind)> {
    let mut found = Vec::new();
    let mut add = |base: &str, field: &str, values: &'r Option<Vec<String>>, kind: SourceKind| {
        for (k, value) in values.iter().flatten().enumerate() {
            found.push((push_index(&push_key(base, field), k), value.as_str(), kind));
        }
    };
    for (j, from) in rule.from.iter().flatten().enumerate() {
        let s = &from.source;
        let base = push_key(&push_index(&push_key(rule_path, "from"), j), "source");
        add(&base, "principals", &s.principals, SourceKind::Principal);
        add(
            &base,
            "notPrincipals",
            &s.not_principals,
            SourceKind::Principal,
        );
        add(&base, "namespaces", &s.namespaces, SourceKind::Namespace);
        add(
            &base,
            "notNamespaces",
            &s.not_namespaces,
            SourceKind::Namespace,
        );
        add(
            &base,
            "serviceAccounts",
            &s.service_accounts,
            SourceKind::ServiceAccount,
        );
        add(
            &base,
            "notServiceAccounts",
            &s.not_service_accounts,
            SourceKind::ServiceAccount,
        );
        add(
            &base,
            "trustDomains",
            &s.trust_domains,
            SourceKind::TrustDomain,
        );
        add(
            &base,
            "notTrustDomains",
            &s.not_trust_domains,
            SourceKind::TrustDomain,
        );
    }
    for (j, condition) in rule.when.iter().flatten().enumerate() {
        let kind = match condition.key.as_str() {
            "source.principal" => SourceKind::Principal,
            "source.namespace" => SourceKind::Namespace,
            "source.trustDomain" => SourceKind::TrustDomain,
            _ => continue,
        };
        let base = push_index(&push_key(rule_path, "when"), j);
        add(&base, "values", &condition.values, kind);
        add(&base, "notValues", &condition.not_values, kind);
    }
    found
}

/// The identities the mesh's workloads have.
struct KnownSources<'a> {
    /// The mesh's trust domain and its aliases.
    mesh_trust_domains: BTreeSet<&'a str>,
    /// The trust domains a principal may name: the mesh's, and `cluster.local`.
    principal_trust_domains: BTreeSet<&'a str>,
    /// (namespace, service account) of each workload.
    accounts: Vec<(&'a str, &'a str)>,
}

impl<'a> KnownSources<'a> {
    fn new(context: &'a Context<'_>) -> Self {
        let mesh = &context.set.mesh;
        let mut mesh_trust_domains: BTreeSet<&str> = mesh
            .trust_domain_aliases
            .iter()
            .map(String::as_str)
            .collect();
        mesh_trust_domains.insert(&mesh.trust_domain);
        // Istio treats the literal `cluster.local` in a principal as the local trust domain
        // (docs/istio-semantics.md, "Trust-domain aliases"); not in a trust-domain field.
        let mut principal_trust_domains = mesh_trust_domains.clone();
        principal_trust_domains.insert(crate::mesh::DEFAULT_TRUST_DOMAIN);
        let accounts = context
            .workloads
            .iter()
            .map(|w| (w.namespace(), w.resource.spec.service_account()))
            .collect();
        KnownSources {
            mesh_trust_domains,
            principal_trust_domains,
            accounts,
        }
    }

    /// WARD0202's message for a trust domain that is not the mesh's.
    fn foreign_trust_domain_message(&self, value: &str) -> String {
        let domains: Vec<String> = self
            .mesh_trust_domains
            .iter()
            .map(|td| format!("`{td}`"))
            .collect();
        let cluster_local = if value == crate::mesh::DEFAULT_TRUST_DOMAIN {
            " (`cluster.local` stands for the mesh's trust domain only inside a principal)"
        } else {
            ""
        };
        format!(
            "trust domain `{value}` is neither the mesh's trust domain nor one of its \
             trustDomainAliases ({}), so no workload of this mesh has it{cluster_local}; check \
             for a typo, or add it to the mesh's trustDomainAliases if it is a former name of \
             this mesh's trust domain",
            domains.join(", ")
        )
    }

    /// `policy_namespace` completes a bare service account (`sa` = `<policy ns>/sa`).
    fn names_a_workload(&self, kind: SourceKind, value: &str, policy_namespace: &str) -> bool {
        let has_account = |ns: &str, sa: &str| self.accounts.contains(&(ns, sa));
        match kind {
            SourceKind::Namespace => self.accounts.iter().any(|(ns, _)| *ns == value),
            SourceKind::ServiceAccount => {
                let (ns, sa) = value.split_once('/').unwrap_or((policy_namespace, value));
                has_account(ns, sa)
            }
            SourceKind::Principal => match value.split('/').collect::<Vec<_>>().as_slice() {
                [td, "ns", ns, "sa", sa] => {
                    self.principal_trust_domains.contains(td) && has_account(ns, sa)
                }
                _ => false,
            },
            SourceKind::TrustDomain => self.mesh_trust_domains.contains(value),
        }
    }
}

/// WARD0208, one per Sidecar ingress port, when no PeerAuthentication exists: the port also
/// listens for plaintext clients outside the mesh (a router, a load balancer), which Istio's
/// PERMISSIVE default lets in and Ward's STRICT default refuses. The message carries the one
/// PeerAuthentication that restores Istio's behaviour for that port alone. A port whose
/// AuthorizationPolicies deny every plaintext client anyway gets none
/// ([`plaintext_could_pass`]).
fn plaintext_refused_by_default(context: &Context<'_>) -> Vec<Diagnostic> {
    let set = context.set;
    let mut out = Vec::new();
    for sidecar in &set.sidecars {
        let labels = sidecar
            .spec
            .workload_selector
            .as_ref()
            .and_then(|s| s.labels.as_ref())
            .filter(|l| !l.is_empty());
        for (i, listener) in sidecar.spec.ingress.iter().flatten().enumerate() {
            let Some(sidecar_port) = listener.port.as_ref() else {
                continue;
            };
            let Some(port) = sidecar_port.number else {
                continue;
            };
            if !plaintext_could_pass(context, sidecar, port, sidecar_port.protocol().is_http()) {
                continue;
            }
            let namespace = &sidecar.meta.namespace;
            // portLevelMtls needs a selector (Istio ignores it otherwise); without one, the
            // namespace-wide form is the narrowest that works.
            let fix = match labels {
                Some(labels) => {
                    let match_labels: Vec<String> =
                        labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                    format!(
                        "{{apiVersion: security.istio.io/v1, kind: PeerAuthentication, metadata: \
                         {{name: {name}-{port}-permissive, namespace: {namespace}}}, spec: \
                         {{selector: {{matchLabels: {{{labels}}}}}, portLevelMtls: {{{port}: \
                         {{mode: PERMISSIVE}}}}}}}}",
                        name = sidecar.meta.name,
                        labels = match_labels.join(", "),
                    )
                }
                None => format!(
                    "{{apiVersion: security.istio.io/v1, kind: PeerAuthentication, metadata: \
                     {{name: permissive, namespace: {namespace}}}, spec: {{mtls: {{mode: \
                     PERMISSIVE}}}}}}"
                ),
            };
            out.push(sidecar.diagnostic(
                Severity::Warning,
                code::NO_PEER_AUTHN,
                &format!("spec.ingress[{i}].port.number"),
                format!(
                    "port {port} refuses plaintext clients outside the mesh (a router, a load \
                     balancer): with no PeerAuthentication, Ward's default is STRICT where \
                     Istio's is PERMISSIVE; if plaintext clients must reach this port, add {fix}"
                ),
            ));
        }
    }
    out
}

/// Whether a plaintext client could pass the AuthorizationPolicies of some workload `sidecar`
/// configures at `port`, were the port PERMISSIVE ([`crate::plaintext`]). True when the Sidecar
/// configures no workload (nothing to decide with) or the port number is out of range.
fn plaintext_could_pass(
    context: &Context<'_>,
    sidecar: &Resource<SidecarSpec>,
    port: u32,
    http: bool,
) -> bool {
    let Ok(port) = u16::try_from(port) else {
        return true;
    };
    let mut configured = context
        .workloads
        .iter()
        .filter(|w| matches!(context.sidecar_for(w), Ok(Some(s)) if std::ptr::eq(s, sidecar)))
        .peekable();
    if configured.peek().is_none() {
        return true;
    }
    configured.any(|w| {
        crate::plaintext::may_allow_plaintext(&context.authz_for(w), w.address, port, http)
    })
}

/// WARD0203/0213 (PERMISSIVE/DISABLE), WARD0204-0207 (ward_policy lint), WARD0208 (none).
fn peer_authentications(context: &Context<'_>, out: &mut Vec<Diagnostic>) {
    let set = context.set;
    if set.peer_authentications.is_empty() {
        out.push(Diagnostic::new(
            Severity::Info,
            code::NO_PEER_AUTHN,
            "no PeerAuthentication: Ward defaults every port to STRICT mTLS (Istio defaults to \
             PERMISSIVE); add a mesh-wide PeerAuthentication in the root namespace to make the \
             choice explicit",
        ));
        out.extend(plaintext_refused_by_default(context));
    }
    for pa in &set.peer_authentications {
        let mut modes: Vec<(String, MtlsModeSpec)> = Vec::new();
        if let Some(mode) = pa.spec.mtls.as_ref().and_then(|m| m.mode) {
            modes.push(("spec.mtls.mode".to_owned(), mode));
        }
        for (port, mtls) in pa.spec.port_level_mtls.iter().flatten() {
            if let Some(mode) = mtls.mode {
                let field = push_key(&push_key("spec.portLevelMtls", &port.to_string()), "mode");
                modes.push((field, mode));
            }
        }
        for (field, mode) in modes {
            match mode {
                MtlsModeSpec::Permissive => out.push(pa.diagnostic(
                    Severity::Warning,
                    code::PERMISSIVE,
                    &field,
                    "PERMISSIVE accepts plaintext without identity: \"no authentication or \
                     authorization checks will be performed for plaintext traffic by default\" \
                     (istio.io mTLS migration); identity-based ALLOW rules never match it",
                )),
                MtlsModeSpec::Disable => out.push(pa.diagnostic(
                    Severity::Warning,
                    code::MTLS_DISABLED,
                    &field,
                    "DISABLE accepts plaintext only: peers are not authenticated and \
                     identity-based rules never match (ambient ztunnel ignores DISABLE)",
                )),
                MtlsModeSpec::Unset | MtlsModeSpec::Strict => {}
            }
        }
    }
    let find = |policy: &PolicyRef| {
        set.peer_authentications
            .iter()
            .find(|r| r.meta.namespace == policy.namespace && r.meta.name == policy.name)
    };
    for finding in lint(&context.peer_authn, &set.mesh.root_namespace) {
        match finding {
            PeerAuthnLint::Conflict {
                level,
                used,
                ignored,
            } => {
                let (severity, code) = match level {
                    PeerAuthnLevel::Mesh => (Severity::Error, code::MESH_PEER_AUTHN_CONFLICT),
                    PeerAuthnLevel::Namespace | PeerAuthnLevel::Workload => {
                        (Severity::Warning, code::PEER_AUTHN_SHADOWED)
                    }
                };
                for policy in &ignored {
                    let Some(r) = find(policy) else { continue };
                    out.push(r.diagnostic(
                        severity,
                        code,
                        "metadata.name",
                        format!(
                            "several {level}-level PeerAuthentications apply to the same \
                             workloads; the oldest ({used}) wins and this one is ignored"
                        ),
                    ));
                }
            }
            PeerAuthnLint::RootSelectorIgnored(policy) => {
                if let Some(r) = find(&policy) {
                    out.push(r.diagnostic(
                        Severity::Warning,
                        code::ROOT_SELECTOR_PEER_AUTHN,
                        "spec.selector",
                        "a PeerAuthentication with a selector in the root namespace is ignored \
                         (Istio ignores it too); move it to the workloads' namespace",
                    ));
                }
            }
            PeerAuthnLint::PortLevelWithoutSelector(policy) => {
                if let Some(r) = find(&policy) {
                    out.push(r.diagnostic(
                        Severity::Error,
                        code::PORT_LEVEL_WITHOUT_SELECTOR,
                        "spec.portLevelMtls",
                        "portLevelMtls requires a selector",
                    ));
                }
            }
            PeerAuthnLint::InvalidPort { policy, port } => {
                if let Some(r) = find(&policy) {
                    out.push(r.diagnostic(
                        Severity::Error,
                        code::INVALID,
                        &push_key("spec.portLevelMtls", &port.to_string()),
                        format!("port {port} is out of range 1-65535"),
                    ));
                }
            }
        }
    }
}

/// WARD0209: a rule with HTTP-only attributes applying to a TCP port. istio/api
/// authorization_policy.proto: for TCP traffic, an ALLOW rule with HTTP-only fields is
/// dropped ("narrower"), while in DENY/AUDIT only those fields are dropped ("broader").
fn http_fields_on_tcp(context: &Context<'_>, out: &mut Vec<Diagnostic>) {
    let set = context.set;
    for (ap, compiled) in set.authorization_policies.iter().zip(&context.compiled) {
        let Some(policy) = compiled.and_then(|i| context.policies.get(i)) else {
            continue;
        };
        if policy.action == Action::Custom {
            continue;
        }
        for (i, rule) in policy.rules.iter().enumerate() {
            if !rule.uses_http_attributes() {
                continue;
            }
            let mut hits: Vec<String> = Vec::new();
            for workload in &context.workloads {
                if !policy.applies_to(
                    workload.namespace(),
                    &workload.labels,
                    &set.mesh.root_namespace,
                ) {
                    continue;
                }
                for port in tcp_ports(context, workload) {
                    if rule_may_apply_to_port(rule, port) {
                        hits.push(format!("{}:{port}", workload.resource.key()));
                    }
                }
            }
            if hits.is_empty() {
                continue;
            }
            let fields = rule.http_attributes().join(", ");
            let effect = match policy.action {
                Action::Allow => {
                    "in an ALLOW policy the whole rule is dropped there, so it never \
                                  matches (narrower than written: connections it meant to allow \
                                  are denied)"
                }
                _ => {
                    "in a DENY or AUDIT policy only those fields are dropped there, so the rule \
                      matches every connection its other fields match (broader than written); \
                      scope it with `to.ports`"
                }
            };
            out.push(ap.diagnostic(
                Severity::Warning,
                code::HTTP_FIELDS_ON_TCP,
                &push_index("spec.rules", i),
                format!(
                    "rule {i} uses HTTP-only fields ({fields}) and applies to TCP ports ({}): {effect}",
                    hits.join(", ")
                ),
            ));
        }
    }
}

/// The non-HTTP inbound ports of a workload.
fn tcp_ports(context: &Context<'_>, workload: &Workload<'_>) -> Vec<u16> {
    let Ok(Some(sidecar)) = context.sidecar_for(workload) else {
        return Vec::new();
    };
    sidecar
        .spec
        .ingress()
        .iter()
        .filter_map(|l| l.port.as_ref())
        .filter(|p| !p.protocol().is_http())
        .filter_map(|p| p.number.and_then(crate::istio::port_number))
        .collect()
}

/// Whether a rule's `to.ports` and `destination.port` conditions allow `port`.
fn rule_may_apply_to_port(rule: &AuthzRule, port: u16) -> bool {
    let to_ok = rule.to.is_empty()
        || rule
            .to
            .iter()
            .any(|op| op.ports.matches_with(|p| *p == port));
    let when_ok = rule.when.iter().all(|c| match c {
        ConditionMatch::DestinationPort(ports) => ports.matches_with(|p| *p == port),
        _ => true,
    });
    to_ok && when_ok
}

/// WARD0210: CUSTOM is not supported.
fn custom_actions(set: &ConfigSet, out: &mut Vec<Diagnostic>) {
    for ap in &set.authorization_policies {
        if ap.spec.action == Some(Action::Custom) {
            out.push(ap.diagnostic(
                Severity::Error,
                code::CUSTOM_ACTION,
                "spec.action",
                "CUSTOM (external authorization) is not supported by Ward: where it applies, \
                 Ward denies every connection (fail closed)",
            ));
        }
    }
}

/// WARD0219: a namespace-wide object (no selector) in a namespace that has no WorkloadEntry,
/// e.g. a DENY policy whose `metadata.namespace` has a typo: it applies to nothing. The root
/// namespace is mesh-wide and never reported; objects with a selector get WARD0201 instead.
fn namespaces_without_workloads(context: &Context<'_>, out: &mut Vec<Diagnostic>) {
    let set = context.set;
    let root = set.mesh.root_namespace.as_str();
    let populated: BTreeSet<&str> = context.workloads.iter().map(Workload::namespace).collect();
    let empty = |namespace: &str| namespace != root && !populated.contains(namespace);
    let message = |namespace: &str, what: &str, effect: &str| {
        format!(
            "namespace `{namespace}` has no WorkloadEntry, so this namespace-wide {what} applies \
             to no workload{effect}; check `metadata.namespace` for a typo"
        )
    };
    for (ap, compiled) in set.authorization_policies.iter().zip(&context.compiled) {
        let Some(policy) = compiled.and_then(|i| context.policies.get(i)) else {
            continue;
        };
        if policy.selector.is_some() || !policy.target_refs.is_empty() || !empty(&ap.meta.namespace)
        {
            continue;
        }
        let (what, effect) = match policy.action {
            Action::Allow => ("ALLOW policy", ""),
            Action::Deny => ("DENY policy", " (it denies nothing)"),
            Action::Audit => ("AUDIT policy", ""),
            Action::Custom => ("CUSTOM policy", ""),
        };
        out.push(ap.diagnostic(
            Severity::Warning,
            code::NAMESPACE_WITHOUT_WORKLOADS,
            "metadata.namespace",
            message(&ap.meta.namespace, what, effect),
        ));
    }
    for pa in &set.peer_authentications {
        if pa.spec.selector.is_none() && empty(&pa.meta.namespace) {
            out.push(pa.diagnostic(
                Severity::Warning,
                code::NAMESPACE_WITHOUT_WORKLOADS,
                "metadata.namespace",
                message(&pa.meta.namespace, "PeerAuthentication", ""),
            ));
        }
    }
    for r in &set.request_authentications {
        let spec = &r.spec;
        if spec.selector.is_none()
            && spec.target_ref.is_none()
            && spec.target_refs.is_empty()
            && empty(&r.meta.namespace)
        {
            out.push(r.diagnostic(
                Severity::Warning,
                code::NAMESPACE_WITHOUT_WORKLOADS,
                "metadata.namespace",
                message(&r.meta.namespace, "RequestAuthentication", ""),
            ));
        }
    }
    for sidecar in &set.sidecars {
        if sidecar.spec.workload_selector.is_none() && empty(&sidecar.meta.namespace) {
            out.push(sidecar.diagnostic(
                Severity::Warning,
                code::NAMESPACE_WITHOUT_WORKLOADS,
                "metadata.namespace",
                message(&sidecar.meta.namespace, "Sidecar", ""),
            ));
        }
    }
}

/// A port a workload's Sidecar serves, and where the app behind it listens.
struct ServedPort {
    port: u16,
    app: Option<SocketAddr>,
}

/// The ingress ports of a workload (what `to.ports` and `destination.port` are matched on).
fn served_ports(context: &Context<'_>, workload: &Workload<'_>) -> Vec<ServedPort> {
    let Ok(Some(sidecar)) = context.sidecar_for(workload) else {
        return Vec::new();
    };
    sidecar
        .spec
        .ingress()
        .iter()
        .filter_map(|listener| {
            let port = listener
                .port
                .as_ref()
                .and_then(|p| p.number)
                .and_then(crate::istio::port_number)?;
            let app = match listener
                .default_endpoint
                .as_deref()
                .map(parse_default_endpoint)
            {
                Some(Ok(AppEndpoint::Local(addr))) => Some(addr),
                Some(Ok(AppEndpoint::WorkloadAddress(app_port))) => {
                    Some(SocketAddr::new(workload.address, app_port))
                }
                _ => None,
            };
            Some(ServedPort { port, app })
        })
        .collect()
}

/// WARD0220: a port in a rule (`to.operation.ports`, `destination.port` `values`) that no
/// workload the policy applies to serves: the value never matches. The classic case is the app's
/// `defaultEndpoint` port written instead of the Sidecar's ingress port, which is the port
/// policies see. Policies that apply to nothing, or only to workloads that serve no port at
/// all, are left to WARD0201/0219/0212.
fn ports_not_served(context: &Context<'_>, out: &mut Vec<Diagnostic>) {
    let set = context.set;
    let root = set.mesh.root_namespace.as_str();
    for (ap, compiled) in set.authorization_policies.iter().zip(&context.compiled) {
        let Some(policy) = compiled.and_then(|i| context.policies.get(i)) else {
            continue;
        };
        if policy.action == Action::Custom {
            continue;
        }
        let scope: Vec<(String, Vec<ServedPort>)> = context
            .workloads
            .iter()
            .filter(|w| policy.applies_to(w.namespace(), &w.labels, root))
            .map(|w| (w.resource.key(), served_ports(context, w)))
            .collect();
        let served: BTreeSet<u16> = scope
            .iter()
            .flat_map(|(_, ports)| ports.iter().map(|p| p.port))
            .collect();
        if served.is_empty() {
            continue;
        }
        let who = match scope.as_slice() {
            [(key, _)] => key.clone(),
            _ => format!("any of the {} workloads the policy applies to", scope.len()),
        };
        let list = |ports: &BTreeSet<u16>| {
            ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let message = |port: u16| {
            let served_by = if scope.len() == 1 {
                format!("its Sidecar serves {}", list(&served))
            } else {
                format!("their Sidecars serve {}", list(&served))
            };
            let app_port = scope
                .iter()
                .flat_map(|(_, ports)| ports)
                .find(|p| p.app.is_some_and(|app| app.port() == port));
            let hint = match app_port {
                Some(ServedPort {
                    port: ingress,
                    app: Some(app),
                }) => format!(
                    ": {port} is the app's defaultEndpoint port ({app}) for port {ingress}, and \
                     policies see the port the Sidecar serves ({ingress})"
                ),
                _ => "; use the port of an ingress listener".to_owned(),
            };
            format!(
                "port {port} is not served by {who} ({served_by}), so this value never \
                 matches{hint}"
            )
        };
        for (i, rule) in ap.spec.rules.iter().flatten().enumerate() {
            let rule_path = push_index("spec.rules", i);
            let mut values: Vec<(String, &str)> = Vec::new();
            for (j, to) in rule.to.iter().flatten().enumerate() {
                let base = push_key(
                    &push_key(&push_index(&push_key(&rule_path, "to"), j), "operation"),
                    "ports",
                );
                for (k, value) in to.operation.ports.iter().flatten().enumerate() {
                    values.push((push_index(&base, k), value));
                }
            }
            for (j, condition) in rule.when.iter().flatten().enumerate() {
                if condition.key != "destination.port" {
                    continue;
                }
                let base = push_key(&push_index(&push_key(&rule_path, "when"), j), "values");
                for (k, value) in condition.values.iter().flatten().enumerate() {
                    values.push((push_index(&base, k), value));
                }
            }
            for (path, value) in values {
                let Ok(port) = parse_port(value) else {
                    continue;
                };
                if !served.contains(&port) {
                    out.push(ap.diagnostic(
                        Severity::Warning,
                        code::PORT_NOT_SERVED,
                        &path,
                        message(port),
                    ));
                }
            }
        }
    }
}

/// WARD0221: a path in a DENY rule's `paths` (or an ALLOW rule's `notPaths`) that stops at an
/// exact end: an exact path, or a `{*}`/`{**}` template whose last segment is not `{**}`. The
/// normalized path keeps a trailing `/` and `;` parameters (docs/http.md), so DENY `/admin`
/// does not deny `/admin/`, `/admin/x` or `/admin;x`, which an app may serve as `/admin`.
/// Suffix patterns (`*.php`, or a template with `{**}` before a literal tail) have the same gap
/// but no prefix form: they are not reported.
fn exact_deny_paths(context: &Context<'_>, out: &mut Vec<Diagnostic>) {
    let set = context.set;
    for (ap, compiled) in set.authorization_policies.iter().zip(&context.compiled) {
        let Some(policy) = compiled.and_then(|i| context.policies.get(i)) else {
            continue;
        };
        let (field, verb) = match policy.action {
            Action::Deny => ("paths", "deny"),
            Action::Allow => ("notPaths", "exclude"),
            Action::Audit | Action::Custom => continue,
        };
        for (i, rule) in ap.spec.rules.iter().flatten().enumerate() {
            for (j, to) in rule.to.iter().flatten().enumerate() {
                let op = &to.operation;
                let paths = if field == "paths" {
                    &op.paths
                } else {
                    &op.not_paths
                };
                let base = push_key(
                    &push_key(
                        &push_index(&push_key(&push_index("spec.rules", i), "to"), j),
                        "operation",
                    ),
                    field,
                );
                for (k, value) in paths.iter().flatten().enumerate() {
                    if let Some(message) = exact_path_message(value, verb) {
                        out.push(ap.diagnostic(
                            Severity::Warning,
                            code::EXACT_DENY_PATH,
                            &push_index(&base, k),
                            message,
                        ));
                    }
                }
            }
        }
    }
}

/// What an exact path or closed template misses, and the fix; `None` for a prefix, suffix,
/// presence or `{**}`-terminated path. `verb`: what the field does (`deny`, `exclude`).
fn exact_path_message(value: &str, verb: &str) -> Option<String> {
    match PathMatch::parse(value).ok()? {
        // `/*` would be every path: an exact `/` is taken as meant.
        PathMatch::String(StringMatch::Exact(path)) if path != "/" => {
            let misses = misses(&path, true);
            Some(format!(
                "the exact path `{path}` does not {verb} {misses}: write `{path}*` (a prefix; \
                 `;` parameters and a trailing `/` stay part of the path)"
            ))
        }
        // A `{**}` before a literal tail is a suffix match: no template or prefix form
        // closes it, as for `*.php`.
        PathMatch::Template(template)
            if !template.ends_with(MATCH_ANY_SEGMENTS)
                && !template.contains(MATCH_ANY_SEGMENTS) =>
        {
            // `{*}` matches a whole segment, `;x` included; a literal last segment does not.
            let literal_end = !template.ends_with(MATCH_ONE_SEGMENT);
            let misses = misses(&template.replace(MATCH_ONE_SEGMENT, "a"), literal_end);
            let open = format!("{}/{MATCH_ANY_SEGMENTS}", template.trim_end_matches('/'));
            let head = template
                .split_once('{')
                .map_or(template.as_str(), |(head, _)| head);
            let params = if literal_end && head != "/" {
                format!(
                    "; a template cannot match `;` parameters, so if the app strips them \
                     {verb} a prefix such as `{head}*`"
                )
            } else {
                String::new()
            };
            Some(format!(
                "the template `{template}` does not {verb} {misses}: also list `{open}`{params}"
            ))
        }
        PathMatch::String(_) | PathMatch::Template(_) => None,
    }
}

/// Paths that `path` (matched exactly) does not match although an app may serve them as `path`;
/// `params`: whether `path;x` is one of them.
fn misses(path: &str, params: bool) -> String {
    let mut found = Vec::new();
    if !path.ends_with('/') {
        found.push(format!("`{path}/`"));
    }
    found.push(format!(
        "`{}x`",
        path.trim_end_matches('/').to_owned() + "/"
    ));
    if params {
        found.push(format!("`{path};x`"));
    }
    match found.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// The label Kubernetes Gateway API deployments put on a Gateway's pods (its value is the
/// Gateway's name).
const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// WARD0222, Istio's IST0166 (istio.io/latest/docs/reference/config/analysis/ist0166/): an
/// AuthorizationPolicy or RequestAuthentication without `targetRef(s)` whose selector uses the
/// label of a Kubernetes Gateway's pods. Istio applies no selector to those pods; the policy
/// must name the Gateway with `targetRefs`, which Ward does not run either.
fn gateway_selectors(set: &ConfigSet, out: &mut Vec<Diagnostic>) {
    for ap in &set.authorization_policies {
        let spec = &ap.spec;
        let bound = spec.target_ref.is_some() || spec.target_refs.iter().flatten().next().is_some();
        if let Some((field, message)) = gateway_selector(spec.selector.as_ref(), bound, "policy") {
            out.push(ap.diagnostic(Severity::Warning, code::GATEWAY_SELECTOR, &field, message));
        }
    }
    for ra in &set.request_authentications {
        let spec = &ra.spec;
        let bound = spec.target_ref.is_some() || !spec.target_refs.is_empty();
        let what = "RequestAuthentication";
        if let Some((field, message)) = gateway_selector(spec.selector.as_ref(), bound, what) {
            out.push(ra.diagnostic(Severity::Warning, code::GATEWAY_SELECTOR, &field, message));
        }
    }
}

/// The field and message of WARD0222 for a selector, if it uses the Gateway label and the
/// object has no `targetRef(s)` (`bound`); `what` names the object in the message.
fn gateway_selector(
    selector: Option<&WorkloadSelector>,
    bound: bool,
    what: &str,
) -> Option<(String, String)> {
    let gateway = selector?.match_labels.get(GATEWAY_NAME_LABEL)?;
    if bound {
        return None;
    }
    let field = push_key("spec.selector.matchLabels", GATEWAY_NAME_LABEL);
    let message = format!(
        "`{GATEWAY_NAME_LABEL}` is the label of the pods of the Kubernetes Gateway `{gateway}`, \
         and in Istio a selector has no effect on a Kubernetes Gateway's pods (IST0166): to \
         apply this {what} to that Gateway, replace the selector with `targetRefs: [{{group: \
         gateway.networking.k8s.io, kind: Gateway, name: {gateway}}}]`. Ward runs no \
         Kubernetes Gateways or waypoints, so in Ward a targetRef applies the {what} to no \
         workload, and this selector only to WorkloadEntries carrying that label"
    );
    Some((field, message))
}

/// The label that puts a workload or a namespace in ambient mode (or, `none` on a workload,
/// keeps it out).
const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";

/// Why Istio would run a workload in ambient mode.
enum AmbientBy<'a> {
    /// `istio.io/dataplane-mode: ambient` on its WorkloadEntry.
    Workload,
    /// `istio.io/dataplane-mode: ambient` on its Namespace object.
    Namespace(&'a str, &'a NamespaceObject),
}

impl AmbientBy<'_> {
    fn describe(&self, workload: &str) -> String {
        match self {
            AmbientBy::Workload => {
                format!("`{DATAPLANE_MODE_LABEL}: ambient` on WorkloadEntry {workload}")
            }
            AmbientBy::Namespace(name, ns) => format!(
                "`{DATAPLANE_MODE_LABEL}: ambient` on Namespace {name} ({})",
                ns.label_location(DATAPLANE_MODE_LABEL)
            ),
        }
    }
}

/// Whether Istio would run `workload` in ambient mode, and why. docs/istio-semantics.md,
/// "Ambient mode": the label `istio.io/dataplane-mode: ambient` on the workload or its
/// namespace, unless the workload has `istio.io/dataplane-mode: none` or gets a sidecar.
fn ambient_mode<'a>(set: &'a ConfigSet, workload: &Workload<'_>) -> Option<AmbientBy<'a>> {
    let (name, namespace) = set.namespaces.get_key_value(workload.namespace()).unzip();
    let no_labels = BTreeMap::new();
    let ns_labels = namespace.map_or(&no_labels, |n| &n.labels);
    let injected = match workload
        .labels
        .get("sidecar.istio.io/inject")
        .map(String::as_str)
    {
        Some("true") => true,
        Some("false") => false,
        _ => injects_sidecars(ns_labels),
    };
    if injected {
        return None;
    }
    match workload
        .labels
        .get(DATAPLANE_MODE_LABEL)
        .map(String::as_str)
    {
        Some("none") => None,
        Some("ambient") => Some(AmbientBy::Workload),
        _ => match (name, namespace) {
            (Some(name), Some(ns)) if namespace_is_ambient(&ns.labels) => {
                Some(AmbientBy::Namespace(name, ns))
            }
            _ => None,
        },
    }
}

/// Whether a namespace's labels turn on sidecar injection (`istio-injection: enabled`, or a
/// revision label), which takes precedence over ambient mode.
fn injects_sidecars(labels: &BTreeMap<String, String>) -> bool {
    labels.get("istio-injection").map(String::as_str) == Some("enabled")
        || labels
            .get("istio.io/rev")
            .is_some_and(|rev| !rev.is_empty())
}

/// Whether a namespace's labels put its workloads in ambient mode.
fn namespace_is_ambient(labels: &BTreeMap<String, String>) -> bool {
    labels.get(DATAPLANE_MODE_LABEL).map(String::as_str) == Some("ambient")
        && !injects_sidecars(labels)
}

/// WARD0223, Istio's IST0167 (istio.io/latest/docs/reference/config/analysis/ist0167/): a
/// Sidecar that configures workloads Istio would run in ambient mode, which have no sidecar
/// proxy, so Istio ignores the Sidecar for them; or a Sidecar without a selector, configuring
/// no workload, in a namespace in ambient mode. Ward runs a proxy per workload and applies it.
fn sidecars_in_ambient(context: &Context<'_>, out: &mut Vec<Diagnostic>) {
    let set = context.set;
    for sidecar in &set.sidecars {
        let configured = configured_workloads(context, sidecar);
        let field = if sidecar.spec.workload_selector.is_some() {
            "spec.workloadSelector"
        } else {
            "metadata.namespace"
        };
        let message = if configured.is_empty() {
            let name = sidecar.meta.namespace.as_str();
            match set.namespaces.get(name) {
                Some(ns) if field == "metadata.namespace" && namespace_is_ambient(&ns.labels) => {
                    format!(
                        "namespace `{name}` is in ambient mode ({}): under Istio its workloads \
                         have no sidecar proxy, so this Sidecar would have no effect (IST0167); \
                         Ward runs a proxy for every workload and would apply it",
                        AmbientBy::Namespace(name, ns).describe("")
                    )
                }
                _ => continue,
            }
        } else {
            let ambient: Vec<(String, AmbientBy<'_>)> = configured
                .iter()
                .filter_map(|w| Some((w.resource.key(), ambient_mode(set, w)?)))
                .collect();
            if ambient.is_empty() {
                continue;
            }
            let keys: Vec<&str> = ambient.iter().map(|(key, _)| key.as_str()).collect();
            let mut reasons: Vec<String> = Vec::new();
            for (key, why) in &ambient {
                let reason = why.describe(key);
                if !reasons.contains(&reason) {
                    reasons.push(reason);
                }
            }
            let (who, has, them) = match keys.as_slice() {
                [one] => (format!("workload {one} is"), "it has", "it"),
                _ => (
                    format!("workloads {} are", keys.join(", ")),
                    "they have",
                    "them",
                ),
            };
            format!(
                "{who} in ambient mode ({}): under Istio {has} no sidecar proxy, so this Sidecar \
                 would have no effect on {them} (IST0167); Ward runs a proxy for every workload \
                 and applies it: check that its listeners and egress hosts are still wanted",
                reasons.join("; ")
            )
        };
        // Info, not Istio's warning: in Ward the Sidecar does take effect (it is how a local
        // workload's listeners are declared), so the finding is about portability only.
        out.push(sidecar.diagnostic(Severity::Info, code::SIDECAR_IN_AMBIENT, field, message));
    }
}

/// WARD0211: an egress host that matches no ServiceEntry, for each namespace the Sidecar
/// applies to. A warning for a named host (likely a typo or a missing ServiceEntry); only info
/// for a wildcard (`./*`, `istio-system/*`, `*/*.example.com`), which matching nothing is a
/// normal state (docs/analyze.md). Also a warning: an egress `port` that none of the services
/// its hosts match has (Ward builds no listener for it, as Istio accepts it).
///
/// WARD0224, instead of WARD0211: a host whose namespace no object of the config is in.
fn egress_hosts(context: &Context<'_>, out: &mut Vec<Diagnostic>) {
    let known = known_namespaces(context.set);
    for sidecar in &context.set.sidecars {
        let namespaces = sidecar_namespaces(context, sidecar);
        for (i, egress) in sidecar.spec.egress().iter().enumerate() {
            let listener_path = push_index("spec.egress", i);
            for (j, host) in egress.hosts().iter().enumerate() {
                let Ok(pattern) = SidecarHost::parse(host) else {
                    continue;
                };
                let field = push_index(&push_key(&listener_path, "hosts"), j);
                match &pattern.namespace {
                    HostNamespace::Nothing => continue,
                    HostNamespace::Named(ns) if !known.contains(ns.as_str()) => {
                        out.push(sidecar.diagnostic(
                            Severity::Warning,
                            code::EGRESS_NAMESPACE_UNKNOWN,
                            &field,
                            unknown_namespace_message(host, ns, &context.set.mesh.root_namespace),
                        ));
                        continue;
                    }
                    _ => {}
                }
                let severity = if pattern.is_wildcard() {
                    Severity::Info
                } else {
                    Severity::Warning
                };
                for ns in &namespaces {
                    if context.services_matching(&pattern, ns).is_empty() {
                        out.push(sidecar.diagnostic(
                            severity,
                            code::EGRESS_HOST_UNMATCHED,
                            &field,
                            unmatched_host_message(host, ns),
                        ));
                    }
                }
            }
            egress_port_unserved(context, sidecar, i, &namespaces, out);
        }
    }
}

/// The namespaces of the workloads a Sidecar configures, or its own when it configures none.
fn sidecar_namespaces<'a>(
    context: &'a Context<'_>,
    sidecar: &'a Resource<SidecarSpec>,
) -> BTreeSet<&'a str> {
    let mut namespaces: BTreeSet<&str> = configured_workloads(context, sidecar)
        .into_iter()
        .map(Workload::namespace)
        .collect();
    if namespaces.is_empty() {
        namespaces.insert(&sidecar.meta.namespace);
    }
    namespaces
}

/// The workloads whose Sidecar is `sidecar` (translate's choice, `Context::sidecar_for`).
fn configured_workloads<'a>(
    context: &'a Context<'_>,
    sidecar: &Resource<SidecarSpec>,
) -> Vec<&'a Workload<'a>> {
    context
        .workloads
        .iter()
        .filter(|w| matches!(context.sidecar_for(w), Ok(Some(s)) if std::ptr::eq(s, sidecar)))
        .collect()
}

/// Every namespace the config shows to exist: the root namespace, the namespace of every object
/// (kept or not) and every Namespace object.
fn known_namespaces(set: &ConfigSet) -> BTreeSet<&str> {
    let mut known: BTreeSet<&str> = set.object_namespaces.iter().map(String::as_str).collect();
    known.insert(&set.mesh.root_namespace);
    let metas = set
        .workload_entries
        .iter()
        .map(|r| &r.meta)
        .chain(set.service_entries.iter().map(|r| &r.meta))
        .chain(set.sidecars.iter().map(|r| &r.meta))
        .chain(set.peer_authentications.iter().map(|r| &r.meta))
        .chain(set.authorization_policies.iter().map(|r| &r.meta))
        .chain(set.request_authentications.iter().map(|r| &r.meta));
    known.extend(metas.map(|meta| meta.namespace.as_str()));
    known
}

/// WARD0224's message. Istio checks only the form of an egress host (istio.io Sidecar reference,
/// `IstioEgressListener.hosts`): a namespace that does not exist imports nothing.
fn unknown_namespace_message(host: &str, namespace: &str, root: &str) -> String {
    format!(
        "egress host `{host}` names namespace `{namespace}`, which no object of this config is \
         in (no WorkloadEntry, ServiceEntry, Sidecar, policy or Namespace object) and which is \
         not the root namespace `{root}`: likely a typo. Istio accepts the host and imports \
         nothing from a namespace that does not exist, and Ward builds no listener for it; fix \
         the namespace, or if it exists, add its ServiceEntries (or its Namespace object) to the \
         config"
    )
}

/// WARD0211, port case: an egress listener with a `port` whose hosts match services, none of
/// which has that port, for a workload in one of `namespaces`. Translation builds no listener
/// for it (Istio accepts such a Sidecar).
fn egress_port_unserved(
    context: &Context<'_>,
    sidecar: &Resource<SidecarSpec>,
    index: usize,
    namespaces: &BTreeSet<&str>,
    out: &mut Vec<Diagnostic>,
) {
    let Some(egress) = sidecar.spec.egress().get(index) else {
        return;
    };
    let Some(number) = egress.port.as_ref().and_then(|p| p.number) else {
        return;
    };
    for ns in namespaces {
        let Some(services) = context.services_without_egress_port(egress, ns) else {
            continue;
        };
        let listed: Vec<String> = services
            .iter()
            .map(|(se, host)| {
                let ports: Vec<String> = se
                    .spec
                    .ports()
                    .iter()
                    .map(|p| p.number.to_string())
                    .collect();
                format!("{host} (ports {})", ports.join(", "))
            })
            .collect();
        out.push(sidecar.diagnostic(
            Severity::Warning,
            code::EGRESS_HOST_UNMATCHED,
            &push_key(
                &push_key(&push_index("spec.egress", index), "port"),
                "number",
            ),
            format!(
                "no service this listener's hosts match for namespace `{ns}` has port {number} \
                 ({}), so Ward builds no listener for this egress entry and the app cannot call \
                 through it (Istio accepts the Sidecar too); use one of the services' ports, or \
                 remove `port` to get one listener per service port",
                listed.join("; ")
            ),
        ));
    }
}

/// Checks on the translated snapshot: WARD0212 (no listener), WARD0214 (shared binds),
/// WARD0215 (no endpoints), WARD0216 (endpoint port not served).
fn snapshot_checks(context: &Context<'_>, snapshot: &MeshSnapshot, out: &mut Vec<Diagnostic>) {
    let set = context.set;
    let workloads: BTreeMap<String, &Workload<'_>> = context
        .workloads
        .iter()
        .map(|w| (w.resource.key(), w))
        .collect();
    let we_by_key: BTreeMap<String, &Resource<WorkloadEntrySpec>> = set
        .workload_entries
        .iter()
        .map(|we| (we.key(), we))
        .collect();
    let mut binds: BTreeMap<SocketAddr, Vec<(String, String)>> = BTreeMap::new();
    for (key, proxy) in &snapshot.proxies {
        let Some(we) = we_by_key.get(key) else {
            continue;
        };
        // A gateway workload serves its Gateway servers (docs/ingress.md, docs/egress.md).
        if proxy.inbound.is_empty() && proxy.outbound.is_empty() && proxy.gateway.is_empty() {
            let why = workloads
                .get(key)
                .map(|w| no_listener_reason(context, w))
                .unwrap_or_else(|| "no Sidecar configures this workload".to_owned());
            out.push(we.diagnostic(
                Severity::Warning,
                code::NO_SIDECAR,
                "metadata.name",
                format!("{why}: its proxy serves no port and the app can call nothing through it"),
            ));
        }
        for port in &proxy.inbound {
            binds
                .entry(port.target)
                .or_default()
                .push((key.clone(), format!("app endpoint of port {}", port.port)));
        }
        let mut own = BTreeSet::new();
        let routes = EgressRoutes::new(proxy);
        for listener in &proxy.outbound {
            if own.insert(listener.bind) {
                binds.entry(listener.bind).or_default().push((
                    key.clone(),
                    format!("egress listener for {}", listener.service),
                ));
            }
            if listener.endpoints.is_empty() {
                let what = if routes.is_shared(listener.bind) {
                    "requests it routes there will fail (503)"
                } else {
                    "connections to it will fail"
                };
                out.push(we.diagnostic(
                    Severity::Warning,
                    code::NO_ENDPOINTS,
                    "metadata.name",
                    format!(
                        "the egress listener {} for {}:{} has no endpoints: {what} (give the \
                         ServiceEntry endpoints or a workloadSelector)",
                        listener.bind, listener.service, listener.service_port
                    ),
                ));
            }
            for endpoint in &listener.endpoints {
                let Some(destination) = endpoint
                    .workload
                    .as_ref()
                    .and_then(|w| snapshot.proxies.get(w))
                else {
                    continue;
                };
                // A Gateway server port is served too: over HBONE, by the gateway itself
                // (crates/proxy/src/gateway.rs, `serve_tunnel`).
                let served = destination
                    .inbound
                    .iter()
                    .any(|p| p.port == endpoint.address.port())
                    || (endpoint.transport == Transport::Hbone
                        && !destination
                            .gateway
                            .on_port(endpoint.address.port())
                            .is_empty());
                if !served {
                    let how = match endpoint.transport {
                        Transport::Hbone => "over HBONE",
                        Transport::Plaintext => "in plaintext",
                    };
                    out.push(we.diagnostic(
                        Severity::Warning,
                        code::ENDPOINT_PORT_NOT_SERVED,
                        "metadata.name",
                        format!(
                            "{}:{} sends {how} to {} at port {}, which its Sidecar does not \
                             serve (no ingress listener with that port): connections will fail",
                            listener.service,
                            listener.service_port,
                            endpoint.workload.as_deref().unwrap_or_default(),
                            endpoint.address.port()
                        ),
                    ));
                }
            }
        }
    }
    shared_binds(&we_by_key, binds, out);
}

/// WARD0212's explanation for a workload whose proxy has no listener: no Sidecar applies, or
/// which one does and why each of its listeners yields nothing for this workload.
fn no_listener_reason(context: &Context<'_>, workload: &Workload<'_>) -> String {
    let Ok(Some(sidecar)) = context.sidecar_for(workload) else {
        return "no Sidecar configures this workload".to_owned();
    };
    let namespace = workload.namespace();
    let mut reasons = Vec::new();
    if sidecar.spec.ingress().is_empty() {
        reasons.push("it has no ingress listener".to_owned());
    }
    if sidecar.spec.egress().is_empty() {
        reasons.push("it has no egress listener".to_owned());
    }
    for (i, egress) in sidecar.spec.egress().iter().enumerate() {
        let at = push_index("spec.egress", i);
        let port = egress.port.as_ref().and_then(|p| p.number);
        let reason = match (
            port,
            context.services_without_egress_port(egress, namespace),
        ) {
            (Some(port), Some(services)) => {
                let hosts: Vec<&str> = services.iter().map(|(_, host)| *host).collect();
                format!(
                    "{at} has port {port}, which the services its hosts match ({}) do not have",
                    hosts.join(", ")
                )
            }
            _ => {
                let hosts: Vec<String> = egress.hosts().iter().map(|h| format!("`{h}`")).collect();
                format!(
                    "{at} hosts {} match no ServiceEntry visible to namespace `{namespace}`",
                    hosts.join(", ")
                )
            }
        };
        reasons.push(reason);
    }
    format!(
        "{} configures this workload but gives it no listener ({})",
        sidecar.object(),
        reasons.join("; ")
    )
}

/// WARD0214: local addresses that two proxies would both bind.
fn shared_binds(
    we_by_key: &BTreeMap<String, &Resource<WorkloadEntrySpec>>,
    binds: BTreeMap<SocketAddr, Vec<(String, String)>>,
    out: &mut Vec<Diagnostic>,
) {
    for (bind, users) in binds {
        let proxies: BTreeSet<&str> = users.iter().map(|(k, _)| k.as_str()).collect();
        let [(first_key, first_what), others @ ..] = users.as_slice() else {
            continue;
        };
        if proxies.len() < 2 {
            continue;
        }
        for (key, what) in others.iter().filter(|(key, _)| key != first_key) {
            let Some(we) = we_by_key.get(key) else {
                continue;
            };
            out.push(we.diagnostic(
                Severity::Warning,
                code::SHARED_BIND,
                "metadata.name",
                format!(
                    "{what} uses {bind}, as does {} of {}: the two proxies cannot run on one \
                     host (use different ports or loopback addresses)",
                    first_what, first_key
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::load_str;

    fn we(ns: &str, name: &str, address: &str, extra: &str) -> String {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{address: \"{address}\", serviceAccount: {name}, labels: {{app: {name}}}{extra}}}\n"
        )
    }

    fn doc(kind: &str, ns: &str, name: &str, spec: &str) -> String {
        let group = match kind {
            "PeerAuthentication" | "AuthorizationPolicy" | "RequestAuthentication" => {
                "security.istio.io"
            }
            _ => "networking.istio.io",
        };
        format!("---\napiVersion: {group}/v1\nkind: {kind}\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n")
    }

    /// A clean two-workload mesh: `a/x` serves 9000 and calls `a/y` on 5432.
    fn base() -> String {
        [
            doc("PeerAuthentication", "istio-system", "default", "{mtls: {mode: STRICT}}"),
            we("a", "x", "10.0.0.1", ""),
            we("a", "y", "10.0.0.2", ", ports: {tcp: 5432}"),
            doc("ServiceEntry", "a", "y", "{hosts: [y.a], location: MESH_INTERNAL, ports: [{number: 5432, name: tcp}], workloadSelector: {labels: {app: y}}}"),
            doc("Sidecar", "a", "x", "{workloadSelector: {labels: {app: x}}, ingress: [{port: {number: 9000, name: tcp}, defaultEndpoint: \"127.0.0.1:9001\"}], egress: [{hosts: [\"./y.a\"]}]}"),
            doc("Sidecar", "a", "y", "{workloadSelector: {labels: {app: y}}, ingress: [{port: {number: 5432, name: tcp}, defaultEndpoint: \"127.0.0.1:15432\"}]}"),
        ]
        .concat()
    }

    /// (code, severity, object, field) of each finding.
    fn findings(yaml: &str) -> Vec<(&'static str, Severity, String, String)> {
        let set = load_str("t.yaml", yaml).unwrap_or_else(|e| panic!("{e}"));
        analyze(&set)
            .into_iter()
            .map(|d| {
                (
                    d.code,
                    d.severity,
                    d.object.unwrap_or_default(),
                    d.field.unwrap_or_default(),
                )
            })
            .collect()
    }

    fn f(
        code: &'static str,
        severity: Severity,
        object: &str,
        field: &str,
    ) -> (&'static str, Severity, String, String) {
        (code, severity, object.to_owned(), field.to_owned())
    }

    #[test]
    fn a_clean_mesh_has_no_findings() {
        assert_eq!(findings(&base()), vec![]);
    }

    #[test]
    fn each_check_reports_its_code() {
        use Severity::{Error, Info, Warning};
        let ap = "AuthorizationPolicy a/p";
        let cases: Vec<(String, Vec<_>)> = vec![
            (
                doc("PeerAuthentication", "a", "p", "{selector: {matchLabels: {app: nobody}}}"),
                vec![f(code::SELECTOR_MATCHES_NOTHING, Warning, "PeerAuthentication a/p", "spec.selector")],
            ),
            (
                doc("AuthorizationPolicy", "a", "p", "{selector: {matchLabels: {app: nobody}}}"),
                vec![f(code::SELECTOR_MATCHES_NOTHING, Warning, ap, "spec.selector")],
            ),
            (
                doc("AuthorizationPolicy", "a", "p", "{targetRefs: [{kind: Service, group: \"\", name: y}]}"),
                vec![f(code::SELECTOR_MATCHES_NOTHING, Warning, ap, "spec.targetRefs")],
            ),
            (
                doc("AuthorizationPolicy", "a", "p", "{targetRef: {kind: Service, group: \"\", name: y}}"),
                vec![f(code::SELECTOR_MATCHES_NOTHING, Warning, ap, "spec.targetRef")],
            ),
            (
                doc("ServiceEntry", "a", "z", "{hosts: [z.a], ports: [{number: 1, name: tcp}], workloadSelector: {labels: {app: z}}}"),
                vec![f(code::SELECTOR_MATCHES_NOTHING, Warning, "ServiceEntry a/z", "spec.workloadSelector")],
            ),
            (
                doc("AuthorizationPolicy", "a", "p", "{rules: [{from: [{source: {principals: [cluster.local/ns/a/sa/x, cluster.local/ns/a/sa/typo, \"cluster.local/ns/a/*\", other.td/ns/a/sa/x], namespaces: [a, nope], notServiceAccounts: [ghost, a/x, b/x]}}], when: [{key: source.namespace, values: [zzz]}]}]}"),
                vec![
                    f(code::SOURCE_MATCHES_NOTHING, Warning, ap, "spec.rules[0].from[0].source.principals[1]"),
                    f(code::SOURCE_MATCHES_NOTHING, Warning, ap, "spec.rules[0].from[0].source.principals[3]"),
                    f(code::SOURCE_MATCHES_NOTHING, Warning, ap, "spec.rules[0].from[0].source.namespaces[1]"),
                    f(code::SOURCE_MATCHES_NOTHING, Warning, ap, "spec.rules[0].from[0].source.notServiceAccounts[0]"),
                    f(code::SOURCE_MATCHES_NOTHING, Warning, ap, "spec.rules[0].from[0].source.notServiceAccounts[2]"),
                    f(code::SOURCE_MATCHES_NOTHING, Warning, ap, "spec.rules[0].when[0].values[0]"),
                ],
            ),
            (
                doc("PeerAuthentication", "a", "p", "{mtls: {mode: PERMISSIVE}}")
                    + &doc("PeerAuthentication", "a", "q", "{selector: {matchLabels: {app: y}}, portLevelMtls: {5432: {mode: DISABLE}}}"),
                vec![
                    f(code::PERMISSIVE, Warning, "PeerAuthentication a/p", "spec.mtls.mode"),
                    f(code::MTLS_DISABLED, Warning, "PeerAuthentication a/q", "spec.portLevelMtls[5432].mode"),
                ],
            ),
            (
                doc("PeerAuthentication", "istio-system", "second", "{}")
                    + &doc("PeerAuthentication", "istio-system", "by-label", "{selector: {matchLabels: {app: x}}}")
                    + &doc("PeerAuthentication", "a", "n1", "{}")
                    + &doc("PeerAuthentication", "a", "n2", "{}"),
                vec![
                    f(code::MESH_PEER_AUTHN_CONFLICT, Error, "PeerAuthentication istio-system/second", "metadata.name"),
                    f(code::ROOT_SELECTOR_PEER_AUTHN, Warning, "PeerAuthentication istio-system/by-label", "spec.selector"),
                    f(code::PEER_AUTHN_SHADOWED, Warning, "PeerAuthentication a/n2", "metadata.name"),
                ],
            ),
            (
                doc("AuthorizationPolicy", "a", "p", "{rules: [{to: [{operation: {methods: [GET], ports: [\"5432\"]}}]}, {to: [{operation: {paths: [/x], ports: [\"80\"]}}]}]}")
                    + &doc("AuthorizationPolicy", "a", "d", "{action: DENY, rules: [{when: [{key: \"request.headers[x-a]\", values: [b]}]}]}"),
                vec![
                    f(code::HTTP_FIELDS_ON_TCP, Warning, "AuthorizationPolicy a/d", "spec.rules[0]"),
                    f(code::HTTP_FIELDS_ON_TCP, Warning, ap, "spec.rules[0]"),
                    // No workload of namespace `a` serves port 80.
                    f(code::PORT_NOT_SERVED, Warning, ap, "spec.rules[1].to[0].operation.ports[0]"),
                ],
            ),
            (
                doc("AuthorizationPolicy", "a", "p", "{action: CUSTOM, provider: {name: ext}, rules: [{}]}"),
                vec![f(code::CUSTOM_ACTION, Error, ap, "spec.action")],
            ),
            (
                doc("Sidecar", "istio-system", "mesh", "{egress: [{hosts: [\"*/nothing.example.com\"]}]}"),
                vec![f(code::EGRESS_HOST_UNMATCHED, Warning, "Sidecar istio-system/mesh", "spec.egress[0].hosts[0]")],
            ),
            (
                // Istio's default Sidecar: wildcards that match nothing yet are only info.
                doc("Sidecar", "istio-system", "mesh", "{egress: [{hosts: [\"./*\", \"istio-system/*\"]}]}"),
                vec![
                    f(code::EGRESS_HOST_UNMATCHED, Info, "Sidecar istio-system/mesh", "spec.egress[0].hosts[0]"),
                    f(code::EGRESS_HOST_UNMATCHED, Info, "Sidecar istio-system/mesh", "spec.egress[0].hosts[1]"),
                ],
            ),
            (
                we("b", "lonely", "10.0.0.3", ""),
                vec![f(code::NO_SIDECAR, Warning, "WorkloadEntry b/lonely", "metadata.name")],
            ),
            (
                we("b", "twin", "10.0.0.3", "")
                    + &doc("Sidecar", "b", "twin", "{egress: [{hosts: [\"a/y.a\"]}]}"),
                vec![f(code::SHARED_BIND, Warning, "WorkloadEntry b/twin", "metadata.name")],
            ),
            (
                we("b", "c", "10.0.0.3", "")
                    + &doc("ServiceEntry", "b", "empty", "{hosts: [e.b], ports: [{number: 7, name: tcp}]}")
                    + &doc("ServiceEntry", "b", "y-wrong-port", "{hosts: [w.b], location: MESH_INTERNAL, ports: [{number: 6, name: tcp}], resolution: STATIC, endpoints: [{address: 10.0.0.2}]}")
                    + &doc("Sidecar", "b", "c", "{egress: [{hosts: [\"./*\"], bind: 127.0.0.9}]}"),
                vec![
                    f(code::NO_ENDPOINTS, Warning, "WorkloadEntry b/c", "metadata.name"),
                    f(code::ENDPOINT_PORT_NOT_SERVED, Warning, "WorkloadEntry b/c", "metadata.name"),
                ],
            ),
        ];
        for (extra, mut want) in cases {
            let mut got = findings(&format!("{}{extra}", base()));
            got.sort();
            want.sort();
            assert_eq!(got, want, "{extra}");
        }
    }

    #[test]
    fn policies_that_apply_to_nothing_or_never_match() {
        use Severity::Warning;
        let deny = |ns: &str, name: &str, rest: &str| {
            doc(
                "AuthorizationPolicy",
                ns,
                name,
                &format!("{{action: DENY, {rest}}}"),
            )
        };
        let cases: Vec<(String, Vec<_>)> = vec![
            (
                // WARD0219: namespace-wide objects in a namespace without workloads.
                deny("typo", "p", "rules: [{}]")
                    + &doc("AuthorizationPolicy", "typo", "allow", "{rules: [{}]}")
                    + &doc("PeerAuthentication", "typo", "pa", "{mtls: {mode: STRICT}}")
                    + &doc("Sidecar", "typo", "default", "{outboundTrafficPolicy: {mode: REGISTRY_ONLY}}")
                    + &doc("RequestAuthentication", "typo", "ra", "{jwtRules: [{issuer: \"https://idp.example\", jwksUri: \"https://idp.example/keys\"}]}"),
                vec![
                    f(code::NAMESPACE_WITHOUT_WORKLOADS, Warning, "AuthorizationPolicy typo/p", "metadata.namespace"),
                    f(code::NAMESPACE_WITHOUT_WORKLOADS, Warning, "AuthorizationPolicy typo/allow", "metadata.namespace"),
                    f(code::NAMESPACE_WITHOUT_WORKLOADS, Warning, "PeerAuthentication typo/pa", "metadata.namespace"),
                    f(code::NAMESPACE_WITHOUT_WORKLOADS, Warning, "Sidecar typo/default", "metadata.namespace"),
                    f(code::NAMESPACE_WITHOUT_WORKLOADS, Warning, "RequestAuthentication typo/ra", "metadata.namespace"),
                ],
            ),
            (
                // A selector in an empty namespace is WARD0201's alone; the root namespace is
                // mesh-wide.
                deny("typo", "p", "selector: {matchLabels: {app: x}}, rules: [{}]")
                    + &deny("istio-system", "mesh", "rules: [{from: [{source: {notNamespaces: [a]}}]}]"),
                vec![f(code::SELECTOR_MATCHES_NOTHING, Warning, "AuthorizationPolicy typo/p", "spec.selector")],
            ),
            (
                // WARD0220: x serves 9000 (app at 127.0.0.1:9001); the namespace serves 9000
                // and 5432. `notPorts` are not checked.
                deny("a", "x-ports", "selector: {matchLabels: {app: x}}, rules: [{to: [{operation: {ports: [\"9000\", \"9001\"]}}, {operation: {notPorts: [\"7\"]}}]}, {when: [{key: destination.port, values: [\"9000\", \"9002\"]}, {key: destination.port, notValues: [\"8\"]}]}]")
                    + &doc("AuthorizationPolicy", "a", "ns-ports", "{rules: [{to: [{operation: {ports: [\"5432\", \"1234\"]}}]}]}"),
                vec![
                    f(code::PORT_NOT_SERVED, Warning, "AuthorizationPolicy a/x-ports", "spec.rules[0].to[0].operation.ports[1]"),
                    f(code::PORT_NOT_SERVED, Warning, "AuthorizationPolicy a/x-ports", "spec.rules[1].when[0].values[1]"),
                    f(code::PORT_NOT_SERVED, Warning, "AuthorizationPolicy a/ns-ports", "spec.rules[0].to[0].operation.ports[1]"),
                ],
            ),
            (
                // WARD0221: exact DENY paths and ALLOW notPaths; never prefixes, suffixes,
                // `{**}` templates, ALLOW paths or DENY notPaths. `to.ports` keeps the rules off
                // the TCP ports (WARD0209).
                deny("a", "paths", "rules: [{to: [{operation: {ports: [\"9000\"], paths: [/admin, \"/admin*\", \"*.php\", \"/v1/{*}/x\", \"/v1/{**}\", /, \"/api/{*}\"], notPaths: [/public]}}]}]")
                    + &doc("AuthorizationPolicy", "a", "allow", "{rules: [{to: [{operation: {ports: [\"9000\"], paths: [/ok], notPaths: [/ok/secret, \"/ok/x*\"]}}]}]}"),
                vec![
                    f(code::EXACT_DENY_PATH, Warning, "AuthorizationPolicy a/paths", "spec.rules[0].to[0].operation.paths[0]"),
                    f(code::EXACT_DENY_PATH, Warning, "AuthorizationPolicy a/paths", "spec.rules[0].to[0].operation.paths[3]"),
                    f(code::EXACT_DENY_PATH, Warning, "AuthorizationPolicy a/paths", "spec.rules[0].to[0].operation.paths[6]"),
                    f(code::EXACT_DENY_PATH, Warning, "AuthorizationPolicy a/allow", "spec.rules[0].to[0].operation.notPaths[0]"),
                    f(code::HTTP_FIELDS_ON_TCP, Warning, "AuthorizationPolicy a/paths", "spec.rules[0]"),
                    f(code::HTTP_FIELDS_ON_TCP, Warning, "AuthorizationPolicy a/allow", "spec.rules[0]"),
                ],
            ),
        ];
        for (extra, mut want) in cases {
            let mut got = findings(&format!("{}{extra}", base()));
            got.sort();
            want.sort();
            assert_eq!(got, want, "{extra}");
        }
    }

    /// A `v1` Namespace object with labels.
    fn namespace(name: &str, labels: &str) -> String {
        format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{{labels}}}}}\n")
    }

    /// A workload `ns/name` with extra labels, and the Sidecar that selects it (ingress port
    /// 8080 to the app at 127.0.0.1:`app_port`).
    fn served(ns: &str, name: &str, address: &str, labels: &str, app_port: u16) -> String {
        doc("WorkloadEntry", ns, name, &format!("{{address: \"{address}\", labels: {{app: {name}{labels}}}}}"))
            + &doc("Sidecar", ns, name, &format!("{{workloadSelector: {{labels: {{app: {name}}}}}, ingress: [{{port: {{number: 8080, name: tcp}}, defaultEndpoint: \"127.0.0.1:{app_port}\"}}]}}"))
    }

    #[test]
    fn gateway_selectors_ambient_sidecars_namespaces_and_trust_domains() {
        use Severity::{Info, Warning};
        let gateway_label = "spec.selector.matchLabels[\"gateway.networking.k8s.io/gateway-name\"]";
        let ambient = "istio.io/dataplane-mode: ambient";
        let cases: Vec<(String, Vec<_>)> = vec![
            (
                // WARD0222: a selector on a Kubernetes Gateway's pods, without targetRef(s).
                doc("AuthorizationPolicy", "a", "gw", "{selector: {matchLabels: {gateway.networking.k8s.io/gateway-name: bookinfo-gateway}}, action: DENY, rules: [{}]}")
                    + &doc("RequestAuthentication", "a", "gw-jwt", "{selector: {matchLabels: {gateway.networking.k8s.io/gateway-name: bookinfo-gateway}}, jwtRules: [{issuer: \"https://idp.example\", jwksUri: \"https://idp.example/keys\"}]}"),
                vec![
                    f(code::GATEWAY_SELECTOR, Warning, "AuthorizationPolicy a/gw", gateway_label),
                    f(code::GATEWAY_SELECTOR, Warning, "RequestAuthentication a/gw-jwt", gateway_label),
                    f(code::SELECTOR_MATCHES_NOTHING, Warning, "AuthorizationPolicy a/gw", "spec.selector"),
                    f(code::SELECTOR_MATCHES_NOTHING, Warning, "RequestAuthentication a/gw-jwt", "spec.selector"),
                ],
            ),
            (
                // Not with a targetRef (that policy does not compile: translate reports it), nor
                // for other labels.
                doc("AuthorizationPolicy", "a", "both", "{selector: {matchLabels: {gateway.networking.k8s.io/gateway-name: gw}}, targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: gw}]}")
                    + &doc("AuthorizationPolicy", "a", "app", "{selector: {matchLabels: {app: x}}, action: DENY, rules: [{}]}"),
                vec![],
            ),
            (
                // WARD0223: amb/p is ambient through its namespace, b/r through its own label;
                // amb/q opts out (`none`); a sidecar wins: amb/u asks for one, and inj's
                // namespace injects them (inj/v's own ambient label included).
                namespace("amb", ambient)
                    + &served("amb", "p", "10.0.1.1", "", 18001)
                    + &served("amb", "q", "10.0.1.2", ", istio.io/dataplane-mode: none", 18002)
                    + &served("b", "r", "10.0.1.3", &format!(", {ambient}"), 18003)
                    + &namespace("inj", &format!("{ambient}, istio-injection: enabled"))
                    + &served("inj", "s", "10.0.1.4", "", 18004)
                    + &served("amb", "u", "10.0.1.7", ", sidecar.istio.io/inject: \"true\"", 18007)
                    + &served("inj", "v", "10.0.1.8", &format!(", {ambient}"), 18008),
                vec![
                    f(code::SIDECAR_IN_AMBIENT, Info, "Sidecar amb/p", "spec.workloadSelector"),
                    f(code::SIDECAR_IN_AMBIENT, Info, "Sidecar b/r", "spec.workloadSelector"),
                ],
            ),
            (
                // A namespace-wide Sidecar in an ambient namespace: reported even without
                // workloads (which WARD0219 reports); not in a namespace that is not ambient.
                namespace("amb", ambient)
                    + &doc("Sidecar", "amb", "default", "{outboundTrafficPolicy: {mode: REGISTRY_ONLY}}")
                    + &namespace("plain", "team: x")
                    + &served("plain", "t", "10.0.1.5", "", 18005),
                vec![
                    f(code::SIDECAR_IN_AMBIENT, Info, "Sidecar amb/default", "metadata.namespace"),
                    f(code::NAMESPACE_WITHOUT_WORKLOADS, Warning, "Sidecar amb/default", "metadata.namespace"),
                ],
            ),
            (
                // WARD0224 instead of WARD0211: a namespace no object is in. Namespaces known
                // from a Namespace object, a Kubernetes object, the root namespace, `.` and `*`
                // are not reported.
                doc("Sidecar", "a", "default", "{egress: [{hosts: [\"typo/*\", \"tyop/y.a\", \"./*\", \"*/y.a\", \"istio-system/*\", \"ns-only/*\", \"svc-only/*\", \"~/*\"]}]}")
                    + &namespace("ns-only", "")
                    + "---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: svc-only}\n",
                vec![
                    f(code::EGRESS_NAMESPACE_UNKNOWN, Warning, "Sidecar a/default", "spec.egress[0].hosts[0]"),
                    f(code::EGRESS_NAMESPACE_UNKNOWN, Warning, "Sidecar a/default", "spec.egress[0].hosts[1]"),
                    f(code::EGRESS_HOST_UNMATCHED, Info, "Sidecar a/default", "spec.egress[0].hosts[4]"),
                    f(code::EGRESS_HOST_UNMATCHED, Info, "Sidecar a/default", "spec.egress[0].hosts[5]"),
                    f(code::EGRESS_HOST_UNMATCHED, Info, "Sidecar a/default", "spec.egress[0].hosts[6]"),
                ],
            ),
            (
                // WARD0202 on trust domains: the mesh's (`cluster.local` by default) passes;
                // patterns are not checked.
                doc("AuthorizationPolicy", "a", "td", "{rules: [{from: [{source: {trustDomains: [cluster.local, typo.td, \"*.td\"], notTrustDomains: [old.td]}}], when: [{key: source.trustDomain, values: [cluster.local, other.td]}]}]}"),
                vec![
                    f(code::SOURCE_MATCHES_NOTHING, Warning, "AuthorizationPolicy a/td", "spec.rules[0].from[0].source.trustDomains[1]"),
                    f(code::SOURCE_MATCHES_NOTHING, Warning, "AuthorizationPolicy a/td", "spec.rules[0].from[0].source.notTrustDomains[0]"),
                    f(code::SOURCE_MATCHES_NOTHING, Warning, "AuthorizationPolicy a/td", "spec.rules[0].when[0].values[1]"),
                ],
            ),
            (
                // With trustDomain new.td and alias old.td, both pass and `cluster.local` does not
                // (it stands for the mesh's trust domain only in principals).
                "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\ndata:\n  mesh: |\n    trustDomain: new.td\n    trustDomainAliases: [old.td]\n".to_owned()
                    + &doc("AuthorizationPolicy", "a", "td", "{rules: [{from: [{source: {trustDomains: [new.td, old.td, cluster.local], principals: [cluster.local/ns/a/sa/y]}}]}]}"),
                vec![f(code::SOURCE_MATCHES_NOTHING, Warning, "AuthorizationPolicy a/td", "spec.rules[0].from[0].source.trustDomains[2]")],
            ),
            (
                // WARD0211, port case: a/y.a has no port 7777 (a warning, no longer an error).
                served("c", "z", "10.0.1.6", "", 18006).replace(
                    "ingress:",
                    "egress: [{port: {number: 7777}, bind: 127.0.0.6, hosts: [\"a/y.a\", \"a/nothing.a\"]}], ingress:",
                ),
                vec![
                    f(code::EGRESS_HOST_UNMATCHED, Warning, "Sidecar c/z", "spec.egress[0].port.number"),
                    f(code::EGRESS_HOST_UNMATCHED, Warning, "Sidecar c/z", "spec.egress[0].hosts[1]"),
                ],
            ),
        ];
        for (extra, mut want) in cases {
            let mut got = findings(&format!("{}{extra}", base()));
            got.sort();
            want.sort();
            assert_eq!(got, want, "{extra}");
        }
    }

    #[test]
    fn new_messages_name_the_fix() {
        let message = |extra: &str, code: &str| {
            let yaml = format!("{}{extra}", base());
            let set = load_str("t.yaml", &yaml).unwrap_or_else(|e| panic!("{e}"));
            analyze(&set)
                .into_iter()
                .find(|d| d.code == code)
                .map(|d| d.to_string())
                .unwrap_or_else(|| panic!("no {code} in {yaml}"))
        };
        let gateway = message(
            &doc(
                "AuthorizationPolicy",
                "a",
                "gw",
                "{selector: {matchLabels: {gateway.networking.k8s.io/gateway-name: edge}}}",
            ),
            code::GATEWAY_SELECTOR,
        );
        assert!(
            gateway.contains(
                "targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: edge}]"
            ),
            "{gateway}"
        );
        assert!(
            gateway.contains("Ward runs no Kubernetes Gateways or waypoints"),
            "{gateway}"
        );

        let ambient = message(
            &(namespace("a", "istio.io/dataplane-mode: ambient")),
            code::SIDECAR_IN_AMBIENT,
        );
        // The Namespace object follows base(); its labels are on its fourth line.
        let label_line = base().lines().count() + 4;
        assert!(
            ambient.contains(&format!("workload a/x is in ambient mode (`istio.io/dataplane-mode: ambient` on Namespace a (t.yaml:{label_line}))")),
            "{ambient}"
        );
        assert!(
            ambient.contains("Ward runs a proxy for every workload and applies it"),
            "{ambient}"
        );

        let typo = message(
            &doc(
                "Sidecar",
                "a",
                "default",
                "{egress: [{hosts: [\"typo/*\"]}]}",
            ),
            code::EGRESS_NAMESPACE_UNKNOWN,
        );
        assert!(typo.contains("names namespace `typo`"), "{typo}");
        assert!(
            typo.contains("not the root namespace `istio-system`"),
            "{typo}"
        );

        let port = message(
            &served("c", "z", "10.0.1.6", "", 18006).replace(
                "ingress:",
                "egress: [{port: {number: 7777}, bind: 127.0.0.6, hosts: [\"a/y.a\"]}], ingress:",
            ),
            code::EGRESS_HOST_UNMATCHED,
        );
        assert!(port.contains("has port 7777 (y.a (ports 5432))"), "{port}");

        let td = message(
            &doc(
                "AuthorizationPolicy",
                "a",
                "td",
                "{rules: [{from: [{source: {trustDomains: [typo.td]}}]}]}",
            ),
            code::SOURCE_MATCHES_NOTHING,
        );
        assert!(td.contains("trust domain `typo.td` is neither the mesh's trust domain nor one of its trustDomainAliases (`cluster.local`)"), "{td}");
    }

    #[test]
    fn services_may_share_an_http_egress_listener_but_not_a_tcp_one() {
        // Client `w` calls h1 and h2 through one egress listener (`./*` on port 8080).
        let shared = |name: &str| {
            let servers = ["h1", "h2"].iter().enumerate().map(|(i, h)| {
                [
                    we("a", h, &format!("10.0.0.{}", i + 3), &format!(", ports: {{{name}: 8080}}")),
                    doc("ServiceEntry", "a", h, &format!("{{hosts: [{h}.a.svc.cluster.local], location: MESH_INTERNAL, ports: [{{number: 8080, name: {name}}}], workloadSelector: {{labels: {{app: {h}}}}}}}")),
                    doc("Sidecar", "a", h, &format!("{{workloadSelector: {{labels: {{app: {h}}}}}, ingress: [{{port: {{number: 8080, name: {name}}}, defaultEndpoint: \"127.0.0.1:1808{i}\"}}]}}")),
                ]
                .concat()
            });
            let client = we("a", "w", "10.0.0.9", "")
                + &doc("Sidecar", "a", "w", &format!("{{workloadSelector: {{labels: {{app: w}}}}, egress: [{{port: {{number: 8080, name: {name}}}, bind: 127.0.0.9, hosts: [\"./*\"]}}]}}"));
            format!("{}{}{client}", base(), servers.collect::<String>())
        };
        let translated = |yaml: &str| {
            translate(&load_str("t.yaml", yaml).unwrap_or_else(|e| panic!("{e}")))
                .map(|_| ())
                .map_err(|e| e.0.iter().map(|d| d.code).collect::<Vec<_>>())
        };
        assert_eq!(translated(&shared("http")), Ok(()));
        assert_eq!(findings(&shared("http")), vec![]);
        // `ward analyze` reports translation errors first (crates/cli/src/analyze.rs).
        assert_eq!(
            translated(&shared("tcp")),
            Err(vec![code::LISTENER_CONFLICT])
        );
    }

    #[test]
    fn port_messages_point_at_the_default_endpoint() {
        let yaml = base()
            + &doc("AuthorizationPolicy", "a", "p", "{selector: {matchLabels: {app: x}}, action: DENY, rules: [{to: [{operation: {ports: [\"9001\", \"9002\"]}}]}]}");
        let set = load_str("t.yaml", &yaml).unwrap_or_else(|e| panic!("{e}"));
        let messages: Vec<String> = analyze(&set)
            .into_iter()
            .filter(|d| d.code == code::PORT_NOT_SERVED)
            .map(|d| d.message)
            .collect();
        assert_eq!(
            messages,
            [
                "port 9001 is not served by a/x (its Sidecar serves 9000), so this value never \
                 matches: 9001 is the app's defaultEndpoint port (127.0.0.1:9001) for port 9000, \
                 and policies see the port the Sidecar serves (9000)",
                "port 9002 is not served by a/x (its Sidecar serves 9000), so this value never \
                 matches; use the port of an ingress listener",
            ]
        );
    }

    #[test]
    fn exact_path_messages() {
        let table: &[(&str, &str, Option<&str>)] = &[
            ("/admin", "deny", Some("the exact path `/admin` does not deny `/admin/`, `/admin/x` or `/admin;x`: write `/admin*` (a prefix; `;` parameters and a trailing `/` stay part of the path)")),
            ("/admin/", "exclude", Some("the exact path `/admin/` does not exclude `/admin/x` or `/admin/;x`: write `/admin/*` (a prefix; `;` parameters and a trailing `/` stay part of the path)")),
            ("/v1/{*}/secret", "deny", Some("the template `/v1/{*}/secret` does not deny `/v1/a/secret/`, `/v1/a/secret/x` or `/v1/a/secret;x`: also list `/v1/{*}/secret/{**}`; a template cannot match `;` parameters, so if the app strips them deny a prefix such as `/v1/*`")),
            ("/api/{*}", "deny", Some("the template `/api/{*}` does not deny `/api/a/` or `/api/a/x`: also list `/api/{*}/{**}`")),
            ("/{*}/admin", "deny", Some("the template `/{*}/admin` does not deny `/a/admin/`, `/a/admin/x` or `/a/admin;x`: also list `/{*}/admin/{**}`")),
            ("/", "deny", None),
            ("/admin*", "deny", None),
            ("*.php", "deny", None),
            ("*", "deny", None),
            ("/v1/{**}", "deny", None),
            ("/v1/{**}/x", "deny", None),
        ];
        for (value, verb, want) in table {
            let got = exact_path_message(value, verb);
            match (want, &got) {
                (None, None) => {}
                (Some(want), Some(got)) if got.starts_with(want) => {}
                _ => panic!("{value}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn no_peer_authentication_is_an_info_and_each_plaintext_port_gets_its_fix() {
        let yaml = base().replacen(
            &doc(
                "PeerAuthentication",
                "istio-system",
                "default",
                "{mtls: {mode: STRICT}}",
            ),
            "",
            1,
        );
        assert_eq!(
            findings(&yaml),
            vec![
                f(code::NO_PEER_AUTHN, Severity::Info, "", ""),
                f(
                    code::NO_PEER_AUTHN,
                    Severity::Warning,
                    "Sidecar a/x",
                    "spec.ingress[0].port.number"
                ),
                f(
                    code::NO_PEER_AUTHN,
                    Severity::Warning,
                    "Sidecar a/y",
                    "spec.ingress[0].port.number"
                ),
            ]
        );
        // The PeerAuthentication each message offers, added as it is written, makes exactly
        // that port PERMISSIVE and leaves the others STRICT.
        let set = load_str("t.yaml", &yaml).unwrap();
        let message = analyze(&set)
            .into_iter()
            .find(|d| d.object.as_deref() == Some("Sidecar a/y"))
            .unwrap()
            .message;
        let fix = message.split("add ").nth(1).unwrap();
        let fixed = format!("{yaml}---\n{fix}\n");
        let snapshot = crate::translate(&load_str("t.yaml", &fixed).unwrap()).unwrap();
        let mode = |proxy: &str, port: u16| {
            snapshot.proxies[proxy]
                .inbound
                .iter()
                .find(|p| p.port == port)
                .unwrap()
                .mtls
        };
        assert_eq!(mode("a/y", 5432), ward_policy::MtlsMode::Permissive);
        assert_eq!(mode("a/x", 9000), ward_policy::MtlsMode::Strict);
    }

    /// The Sidecars whose ingress port gets WARD0208's warning, for `base()` without its
    /// PeerAuthentication (`a/x` serves 9000, HTTP when `x_http`; `a/y` serves 5432 over TCP)
    /// plus one AuthorizationPolicy `a/p` with `spec`.
    fn plaintext_warnings(x_http: bool, spec: &str) -> Vec<String> {
        let mut yaml = base().replacen(
            &doc(
                "PeerAuthentication",
                "istio-system",
                "default",
                "{mtls: {mode: STRICT}}",
            ),
            "",
            1,
        );
        if x_http {
            yaml = yaml.replacen(
                "{number: 9000, name: tcp}",
                "{number: 9000, name: http, protocol: HTTP}",
                1,
            );
        }
        yaml += &doc("AuthorizationPolicy", "a", "p", spec);
        findings(&yaml)
            .into_iter()
            .filter(|(c, severity, _, _)| {
                *c == code::NO_PEER_AUTHN && *severity == Severity::Warning
            })
            .map(|(_, _, object, _)| object)
            .collect()
    }

    #[test]
    fn no_plaintext_warning_where_the_policies_deny_plaintext_anyway() {
        let (x, y) = ("Sidecar a/x", "Sidecar a/y");
        // (x serves HTTP, policy spec, the Sidecars warned)
        let table: &[(bool, &str, &[&str])] = &[
            // No rule names a source: any client, plaintext included, passes 9000 only.
            (false, "{rules: [{to: [{operation: {ports: [\"9000\"]}}]}]}", &[x]),
            // Only an mTLS identity passes: plaintext is denied with or without STRICT.
            (false, "{rules: [{from: [{source: {principals: [\"cluster.local/ns/a/sa/x\"]}}]}]}", &[]),
            (false, "{rules: [{from: [{source: {namespaces: [a]}}]}]}", &[]),
            (false, "{rules: [{when: [{key: source.principal, values: [\"*\"]}]}]}", &[]),
            // Istio's own recipe for refusing plaintext.
            (false, "{action: DENY, rules: [{from: [{source: {notPrincipals: [\"*\"]}}]}]}", &[]),
            // ... unless it also depends on the client's address, which is unknown.
            (false, "{action: DENY, rules: [{from: [{source: {notPrincipals: [\"*\"], ipBlocks: [10.0.0.0/8]}}]}]}", &[x, y]),
            (false, "{rules: [{from: [{source: {ipBlocks: [10.0.0.0/8]}}]}]}", &[x, y]),
            // A path-only rule: some plaintext request can match on an HTTP port ...
            (true, "{selector: {matchLabels: {app: x}}, rules: [{to: [{operation: {paths: [\"/public/*\"]}}]}]}", &[x, y]),
            // ... and a DENY of some paths leaves others open, while on a TCP port the
            // engine drops the path and the DENY matches every connection (as Istio).
            (true, "{action: DENY, rules: [{to: [{operation: {paths: [\"/admin/*\"]}}]}]}", &[x]),
            // ... but on a TCP port an ALLOW rule with HTTP fields matches nothing.
            (false, "{selector: {matchLabels: {app: x}}, rules: [{to: [{operation: {paths: [\"/public/*\"]}}]}]}", &[y]),
            // A plaintext client can carry a JWT.
            (true, "{selector: {matchLabels: {app: x}}, rules: [{from: [{source: {requestPrincipals: [\"*\"]}}]}]}", &[x, y]),
            (true, "{selector: {matchLabels: {app: x}}, rules: [{when: [{key: \"request.auth.claims[role]\", values: [admin]}]}]}", &[x, y]),
        ];
        for (x_http, spec, want) in table {
            assert_eq!(plaintext_warnings(*x_http, spec), *want, "{spec}");
        }
        // No AuthorizationPolicy at all: every port.
        let none = base().replacen(
            &doc(
                "PeerAuthentication",
                "istio-system",
                "default",
                "{mtls: {mode: STRICT}}",
            ),
            "",
            1,
        );
        let warned: Vec<String> = findings(&none)
            .into_iter()
            .filter(|(c, severity, _, _)| {
                *c == code::NO_PEER_AUTHN && *severity == Severity::Warning
            })
            .map(|(_, _, object, _)| object)
            .collect();
        assert_eq!(warned, [x, y]);
    }

    #[test]
    fn a_proxy_without_listeners_names_its_sidecar_and_why() {
        let message = |yaml: &str| {
            let set = load_str("t.yaml", yaml).unwrap_or_else(|e| panic!("{e}"));
            let found: Vec<String> = analyze(&set)
                .into_iter()
                .filter(|d| d.code == code::NO_SIDECAR)
                .map(|d| d.message)
                .collect();
            assert_eq!(found.len(), 1, "{found:?}");
            found.concat()
        };
        let lonely = we("b", "lonely", "10.0.0.3", "");
        assert!(message(&(base() + &lonely)).starts_with("no Sidecar configures this workload:"));
        // Istio's default Sidecar, with nothing for its wildcards to match in namespace b.
        let default = doc(
            "Sidecar",
            "istio-system",
            "default",
            "{egress: [{hosts: [\"./*\", \"istio-system/*\"]}]}",
        );
        assert_eq!(
            message(&(base() + &lonely + &default)),
            "Sidecar istio-system/default configures this workload but gives it no listener (it \
             has no ingress listener; spec.egress[0] hosts `./*`, `istio-system/*` match no \
             ServiceEntry visible to namespace `b`): its proxy serves no port and the app can \
             call nothing through it"
        );
        // An egress port the matched service does not have.
        let wrong_port = doc(
            "Sidecar",
            "b",
            "lonely",
            "{egress: [{port: {number: 6000, name: tcp}, hosts: [\"a/y.a\"]}]}",
        );
        assert!(
            message(&(base() + &lonely + &wrong_port)).starts_with(
                "Sidecar b/lonely configures this workload but gives it no listener (it has no \
                 ingress listener; spec.egress[0] has port 6000, which the services its hosts \
                 match (y.a) do not have)"
            ),
            "{}",
            message(&(base() + &lonely + &wrong_port))
        );
    }
}
