//! `ward analyze`: findings about a config that loads, in the spirit of `istioctl analyze`.
//!
//! Pure: a [`ConfigSet`] in, diagnostics out. Load and translation errors are reported by the
//! caller; this adds what is legal but likely wrong (a selector that selects nothing, a
//! PERMISSIVE port, an HTTP-only rule on a TCP port ...). The codes are stable and documented
//! in `docs/analyze.md`; an `Error` makes `ward analyze` exit non-zero.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use ward_policy::spec::{Action, MtlsModeSpec, Rule};
use ward_policy::{
    lint, AuthzPolicy, AuthzRule, ConditionMatch, PeerAuthnLevel, PeerAuthnLint, PolicyRef,
};

use crate::diag::{code, Diagnostic, Severity};
use crate::istio::WorkloadEntrySpec;
use crate::istio::{HostNamespace, SidecarHost};
use crate::load::{ConfigSet, Resource};
use crate::request_authn;
use crate::snapshot::{MeshSnapshot, Transport};
use crate::translate::{translate, unmatched_host_message, Context, Workload};
use crate::yaml::{push_index, push_key};

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
    if let Ok(snapshot) = translate(set) {
        snapshot_checks(set, &snapshot, &mut out);
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
            out.push(ap.diagnostic(
                Severity::Warning,
                code::SELECTOR_MATCHES_NOTHING,
                "spec",
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

/// WARD0202: an exact principal, namespace or service account that names no workload.
fn policy_sources(context: &Context<'_>, out: &mut Vec<Diagnostic>) {
    let known = KnownSources::new(context);
    for ap in &context.set.authorization_policies {
        for (i, rule) in ap.spec.rules.iter().flatten().enumerate() {
            for (path, value, kind) in rule_sources(rule, &push_index("spec.rules", i)) {
                // Patterns (prefix, suffix, `*`) are skipped: only exact values can be checked.
                if value.contains('*') || known.names_a_workload(kind, value, &ap.meta.namespace) {
                    continue;
                }
                out.push(ap.diagnostic(
                    Severity::Warning,
                    code::SOURCE_MATCHES_NOTHING,
                    &path,
                    format!(
                        "{} `{value}` names no WorkloadEntry; check for a typo",
                        kind.noun()
                    ),
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
}

impl SourceKind {
    fn noun(self) -> &'static str {
        match self {
            SourceKind::Principal => "principal",
            SourceKind::Namespace => "namespace",
            SourceKind::ServiceAccount => "service account",
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
    }
    for (j, condition) in rule.when.iter().flatten().enumerate() {
        let kind = match condition.key.as_str() {
            "source.principal" => SourceKind::Principal,
            "source.namespace" => SourceKind::Namespace,
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
    trust_domains: BTreeSet<&'a str>,
    /// (namespace, service account) of each workload.
    accounts: Vec<(&'a str, &'a str)>,
}

impl<'a> KnownSources<'a> {
    fn new(context: &'a Context<'_>) -> Self {
        let mesh = &context.set.mesh;
        let mut trust_domains: BTreeSet<&str> = mesh
            .trust_domain_aliases
            .iter()
            .map(String::as_str)
            .collect();
        trust_domains.insert(&mesh.trust_domain);
        // Istio treats the literal `cluster.local` in a policy as the local trust domain.
        trust_domains.insert(crate::mesh::DEFAULT_TRUST_DOMAIN);
        let accounts = context
            .workloads
            .iter()
            .map(|w| (w.namespace(), w.resource.spec.service_account()))
            .collect();
        KnownSources {
            trust_domains,
            accounts,
        }
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
                [td, "ns", ns, "sa", sa] => self.trust_domains.contains(td) && has_account(ns, sa),
                _ => false,
            },
        }
    }
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

/// WARD0211: an egress host that matches no ServiceEntry, for each namespace the Sidecar
/// applies to.
fn egress_hosts(context: &Context<'_>, out: &mut Vec<Diagnostic>) {
    for sidecar in &context.set.sidecars {
        let mut namespaces: BTreeSet<&str> = context
            .workloads
            .iter()
            .filter(|w| matches!(context.sidecar_for(w), Ok(Some(s)) if std::ptr::eq(s, sidecar)))
            .map(Workload::namespace)
            .collect();
        if namespaces.is_empty() {
            namespaces.insert(&sidecar.meta.namespace);
        }
        for (i, egress) in sidecar.spec.egress().iter().enumerate() {
            for (j, host) in egress.hosts().iter().enumerate() {
                let Ok(pattern) = SidecarHost::parse(host) else {
                    continue;
                };
                if pattern.namespace == HostNamespace::Nothing {
                    continue;
                }
                for ns in &namespaces {
                    if context.services_matching(&pattern, ns).is_empty() {
                        out.push(sidecar.diagnostic(
                            Severity::Error,
                            code::EGRESS_HOST_UNMATCHED,
                            &push_index(&push_key(&push_index("spec.egress", i), "hosts"), j),
                            unmatched_host_message(host, ns),
                        ));
                    }
                }
            }
        }
    }
}

/// Checks on the translated snapshot: WARD0212 (no Sidecar), WARD0214 (shared binds),
/// WARD0215 (no endpoints), WARD0216 (endpoint port not served).
fn snapshot_checks(set: &ConfigSet, snapshot: &MeshSnapshot, out: &mut Vec<Diagnostic>) {
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
        if proxy.inbound.is_empty() && proxy.outbound.is_empty() {
            out.push(we.diagnostic(
                Severity::Warning,
                code::NO_SIDECAR,
                "metadata.name",
                "no Sidecar with ingress or egress listeners configures this workload: its proxy \
                 serves no port and the app can call nothing through it",
            ));
        }
        for port in &proxy.inbound {
            binds
                .entry(port.target)
                .or_default()
                .push((key.clone(), format!("app endpoint of port {}", port.port)));
        }
        let mut own = BTreeSet::new();
        for listener in &proxy.outbound {
            if own.insert(listener.bind) {
                binds.entry(listener.bind).or_default().push((
                    key.clone(),
                    format!("egress listener for {}", listener.service),
                ));
            }
            if listener.endpoints.is_empty() {
                out.push(we.diagnostic(
                    Severity::Warning,
                    code::NO_ENDPOINTS,
                    "metadata.name",
                    format!(
                        "the egress listener {} for {}:{} has no endpoints: connections to it \
                         will fail (give the ServiceEntry endpoints or a workloadSelector)",
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
                let served = destination
                    .inbound
                    .iter()
                    .any(|p| p.port == endpoint.address.port());
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
            "PeerAuthentication" | "AuthorizationPolicy" => "security.istio.io",
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
        use Severity::{Error, Warning};
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
                vec![f(code::SELECTOR_MATCHES_NOTHING, Warning, ap, "spec")],
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
                ],
            ),
            (
                doc("AuthorizationPolicy", "a", "p", "{action: CUSTOM, provider: {name: ext}, rules: [{}]}"),
                vec![f(code::CUSTOM_ACTION, Error, ap, "spec.action")],
            ),
            (
                doc("Sidecar", "istio-system", "mesh", "{egress: [{hosts: [\"*/nothing.example.com\"]}]}"),
                vec![f(code::EGRESS_HOST_UNMATCHED, Error, "Sidecar istio-system/mesh", "spec.egress[0].hosts[0]")],
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
    fn no_peer_authentication_is_an_info() {
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
            vec![f(code::NO_PEER_AUTHN, Severity::Info, "", "")]
        );
    }
}
