//! `ward analyze` findings about objects that contradict each other or say less than they
//! seem to: a DestinationRule that turns TLS off toward a STRICT workload (WARD0225), an ALLOW
//! rule every request of which an earlier DENY refuses (WARD0226), an ALLOW rule that allows
//! everything (WARD0227), plaintext accepted by a workload that serves patient data (WARD0228),
//! and OpenShift Service Mesh 2's `dataPlane.mtls: false`, which means PERMISSIVE (WARD0229).

use ward_policy::spec::{Action, Condition, Operation, Rule, Source};
use ward_policy::MtlsMode;

use super::{served_ports, Context, Workload};
use crate::diag::{code, Diagnostic, Severity};
use crate::istio::{ClientTlsMode, ClientTlsSettings, DestinationRuleSpec, Location};
use crate::load::Resource;
use crate::yaml::{push_index, push_key};

/// The label that marks a workload, or a ServiceEntry and the workloads it selects, as serving
/// protected health information (docs/analyze.md, WARD0228).
pub const PHI_LABEL: &str = "ward.dev/phi";

/// WARD0225: a DestinationRule whose `tls.mode` is DISABLE for a service with a workload whose
/// port is STRICT. Istio sidecars calling the service send plaintext, which the workload
/// refuses.
pub(super) fn disable_toward_strict(context: &Context<'_>, out: &mut Vec<Diagnostic>) {
    for dr in &context.set.destination_rules {
        let Some(policy) = &dr.spec.traffic_policy else {
            continue;
        };
        let mut settings: Vec<(String, Option<u32>, &ClientTlsSettings)> = Vec::new();
        if let Some(tls) = &policy.tls {
            settings.push(("spec.trafficPolicy.tls.mode".into(), None, tls));
        }
        for (i, port) in policy.port_level_settings.iter().flatten().enumerate() {
            if let (Some(tls), Some(number)) =
                (&port.tls, port.port.as_ref().and_then(|p| p.number))
            {
                let path = push_index("spec.trafficPolicy.portLevelSettings", i);
                settings.push((push_key(&path, "tls.mode"), Some(number), tls));
            }
        }
        for (field, only_port, tls) in settings {
            if tls.mode != Some(ClientTlsMode::Disable) {
                continue;
            }
            let strict = strict_endpoints(context, dr, only_port);
            if strict.is_empty() {
                continue;
            }
            out.push(dr.diagnostic(
                Severity::Warning,
                code::DR_DISABLE_TO_STRICT,
                &field,
                format!(
                    "DISABLE makes Istio sidecars call {} in plaintext, but {}: every such \
                     connection is refused. Ward applies DestinationRule TLS only toward \
                     endpoints outside the mesh (its proxies keep mTLS toward STRICT ports); \
                     under Istio this breaks the service",
                    dr.spec.host.as_deref().unwrap_or_default(),
                    strict.join("; ")
                ),
            ));
        }
    }
}

/// The STRICT workload ports behind the DestinationRule's host, described; `only_port` limits
/// them to one service port.
fn strict_endpoints(
    context: &Context<'_>,
    dr: &Resource<DestinationRuleSpec>,
    only_port: Option<u32>,
) -> Vec<String> {
    let Some(host) = dr.spec.host.as_deref() else {
        return Vec::new();
    };
    let host = qualify(host, &dr.meta.namespace);
    let mut found = Vec::new();
    for se in &context.set.service_entries {
        if se.spec.location.unwrap_or_default() != Location::MeshInternal
            || !se
                .spec
                .hosts
                .iter()
                .flatten()
                .any(|h| host_matches(&host, h))
        {
            continue;
        }
        for se_port in se.spec.ports.iter().flatten() {
            if only_port.is_some_and(|p| p != se_port.number) {
                continue;
            }
            for endpoint in context.endpoints(se, se_port, &mut Vec::new()) {
                let Some(workload) = endpoint
                    .workload
                    .as_deref()
                    .and_then(|key| context.workloads.iter().find(|w| w.resource.key() == key))
                else {
                    continue;
                };
                let port = endpoint.address.port();
                let (mode, by) = context.mtls_of(workload, port);
                if mode != MtlsMode::Strict {
                    continue;
                }
                let by = by.map_or_else(
                    || "Ward's default (no PeerAuthentication)".to_owned(),
                    |p| format!("PeerAuthentication {}/{}", p.namespace, p.name),
                );
                let text = format!(
                    "workload {} port {port} is STRICT ({by})",
                    workload.resource.key()
                );
                if !found.contains(&text) {
                    found.push(text);
                }
            }
        }
    }
    found
}

/// A DestinationRule host as Istio resolves it: a short name is in the rule's namespace.
fn qualify(host: &str, namespace: &str) -> String {
    if host.contains('.') || host.contains('*') {
        host.to_ascii_lowercase()
    } else {
        format!("{host}.{namespace}.svc.cluster.local").to_ascii_lowercase()
    }
}

/// Whether a DestinationRule host (possibly `*.suffix`) names the service host `service`.
fn host_matches(rule: &str, service: &str) -> bool {
    let service = service.to_ascii_lowercase();
    match rule.strip_prefix('*') {
        Some(suffix) => service.ends_with(suffix),
        None => rule == service,
    }
}

/// WARD0226 and WARD0227: per ALLOW rule of an enforced policy, whether a DENY rule refuses
/// every request it matches on every workload it applies to, and whether it matches everything.
pub(super) fn allow_rules(context: &Context<'_>, out: &mut Vec<Diagnostic>) {
    let root = context.set.mesh.root_namespace.as_str();
    let enforced = |i: usize| {
        context.compiled[i]
            .and_then(|c| context.policies.get(c))
            .filter(|p| !p.dry_run && p.target_refs.is_empty())
    };
    for (a, ap) in context.set.authorization_policies.iter().enumerate() {
        let Some(policy) = enforced(a) else { continue };
        if policy.action != Action::Allow {
            continue;
        }
        let workloads: Vec<&Workload<'_>> = context
            .workloads
            .iter()
            .filter(|w| policy.applies_to(w.namespace(), &w.labels, root))
            .collect();
        if workloads.is_empty() {
            // WARD0201 / WARD0219 say so already.
            continue;
        }
        for (r, rule) in ap.spec.rules.iter().flatten().enumerate() {
            let field = push_index("spec.rules", r);
            if is_empty(rule) {
                out.push(ap.diagnostic(
                    Severity::Warning,
                    code::ALLOW_EVERYTHING,
                    &field,
                    "this rule has no `from`, `to` or `when`: it allows every request from any \
                     source (plaintext ones too, where mTLS is PERMISSIVE) to the workloads the \
                     policy applies to, so no other ALLOW policy narrows what reaches them; an \
                     empty `spec: {}` is what denies everything",
                ));
                continue;
            }
            // The DENY rule that refuses everything this rule allows, for every workload.
            let mut shadow: Option<(String, usize)> = None;
            let all = workloads.iter().all(|w| {
                let found = context
                    .set
                    .authorization_policies
                    .iter()
                    .enumerate()
                    .filter_map(|(d, dp)| {
                        let policy = enforced(d)?;
                        (policy.action == Action::Deny
                            && policy.applies_to(w.namespace(), &w.labels, root))
                        .then_some(dp)
                    })
                    .find_map(|dp| {
                        let i = dp
                            .spec
                            .rules
                            .iter()
                            .flatten()
                            .position(|d| covers(d, rule))?;
                        Some((dp.key(), i))
                    });
                if shadow.is_none() {
                    shadow.clone_from(&found);
                }
                found.is_some()
            });
            if let (true, Some((deny, i))) = (all, shadow) {
                out.push(ap.diagnostic(
                    Severity::Warning,
                    code::ALLOW_SHADOWED,
                    &field,
                    format!(
                        "this ALLOW rule can never allow anything: every request it matches is \
                         denied first by rule {i} of DENY policy {deny} (DENY is decided before \
                         ALLOW), on every workload the policy applies to"
                    ),
                ));
            }
        }
    }
}

fn is_empty(rule: &Rule) -> bool {
    rule.from.as_ref().is_none_or(Vec::is_empty)
        && rule.to.as_ref().is_none_or(Vec::is_empty)
        && rule.when.as_ref().is_none_or(Vec::is_empty)
}

/// Whether every request `allow` matches is matched by `deny`: each part `deny` constrains,
/// `allow` constrains at least as narrowly. Conservative: a `false` may hide a cover that needs
/// reasoning across fields (a namespace against a principal), IP ranges or path templates.
fn covers(deny: &Rule, allow: &Rule) -> bool {
    let sources = list_covers(deny.from.as_deref(), allow.from.as_deref(), |d, a| {
        source_covers(&d.source, &a.source)
    });
    let operations = list_covers(deny.to.as_deref(), allow.to.as_deref(), |d, a| {
        operation_covers(&d.operation, &a.operation)
    });
    let conditions = deny.when.iter().flatten().all(|d| {
        allow
            .when
            .iter()
            .flatten()
            .any(|a| a.key == d.key && condition_covers(d, a))
    });
    sources && operations && conditions
}

/// OR-ed lists (`from`, `to`): an absent or empty deny list constrains nothing; otherwise each
/// allow entry must be covered by one deny entry, and an absent allow list is not covered.
fn list_covers<T>(deny: Option<&[T]>, allow: Option<&[T]>, each: impl Fn(&T, &T) -> bool) -> bool {
    match deny.filter(|d| !d.is_empty()) {
        None => true,
        Some(d) => allow
            .filter(|a| !a.is_empty())
            .is_some_and(|a| a.iter().all(|a| d.iter().any(|d| each(d, a)))),
    }
}

fn source_covers(d: &Source, a: &Source) -> bool {
    let pairs = [
        (
            &d.principals,
            &d.not_principals,
            &a.principals,
            &a.not_principals,
        ),
        (
            &d.request_principals,
            &d.not_request_principals,
            &a.request_principals,
            &a.not_request_principals,
        ),
        (
            &d.namespaces,
            &d.not_namespaces,
            &a.namespaces,
            &a.not_namespaces,
        ),
        (
            &d.service_accounts,
            &d.not_service_accounts,
            &a.service_accounts,
            &a.not_service_accounts,
        ),
        (
            &d.trust_domains,
            &d.not_trust_domains,
            &a.trust_domains,
            &a.not_trust_domains,
        ),
    ];
    let exact = [
        (
            &d.ip_blocks,
            &d.not_ip_blocks,
            &a.ip_blocks,
            &a.not_ip_blocks,
        ),
        (
            &d.remote_ip_blocks,
            &d.not_remote_ip_blocks,
            &a.remote_ip_blocks,
            &a.not_remote_ip_blocks,
        ),
    ];
    pairs
        .iter()
        .all(|(dp, dn, ap, an)| field_covers(dp, dn, ap, an, pattern_covers))
        && exact
            .iter()
            .all(|(dp, dn, ap, an)| field_covers(dp, dn, ap, an, |d, a| d == a))
}

fn operation_covers(d: &Operation, a: &Operation) -> bool {
    let host = |d: &str, a: &str| pattern_covers(&d.to_ascii_lowercase(), &a.to_ascii_lowercase());
    let path = |d: &str, a: &str| {
        if d.contains('{') || a.contains('{') {
            d == a
        } else {
            pattern_covers(d, a)
        }
    };
    field_covers(&d.hosts, &d.not_hosts, &a.hosts, &a.not_hosts, host)
        && field_covers(&d.ports, &d.not_ports, &a.ports, &a.not_ports, |d, a| {
            d == a
        })
        && field_covers(
            &d.methods,
            &d.not_methods,
            &a.methods,
            &a.not_methods,
            |d, a| d == a || d == "*",
        )
        && field_covers(&d.paths, &d.not_paths, &a.paths, &a.not_paths, path)
}

fn condition_covers(d: &Condition, a: &Condition) -> bool {
    field_covers(
        &d.values,
        &d.not_values,
        &a.values,
        &a.not_values,
        pattern_covers,
    )
}

/// Whether the allow side's values of one field (`a`, `a_not`) lie inside what the deny side's
/// (`d`, `d_not`) match: every positive allow value covered by a deny value; every value the
/// deny side excludes excluded by the allow side too, or never among the allow side's exact
/// values.
fn field_covers(
    d: &Option<Vec<String>>,
    d_not: &Option<Vec<String>>,
    a: &Option<Vec<String>>,
    a_not: &Option<Vec<String>>,
    value_covers: impl Fn(&str, &str) -> bool,
) -> bool {
    let positive = match d.as_ref().filter(|d| !d.is_empty()) {
        None => true,
        Some(d) => a
            .as_ref()
            .filter(|a| !a.is_empty())
            .is_some_and(|a| a.iter().all(|av| d.iter().any(|dv| value_covers(dv, av)))),
    };
    let negative = match d_not.as_ref().filter(|d| !d.is_empty()) {
        None => true,
        Some(dn) => {
            let excluded_too = a_not
                .as_ref()
                .is_some_and(|an| dn.iter().all(|dv| an.iter().any(|av| value_covers(av, dv))));
            let never_among = a.as_ref().filter(|a| !a.is_empty()).is_some_and(|a| {
                a.iter()
                    .all(|av| !av.contains('*') && !dn.iter().any(|dv| value_covers(dv, av)))
            });
            excluded_too || never_among
        }
    };
    positive && negative
}

/// Istio's string match: `*` anything, `x*` a prefix, `*x` a suffix, else exact. Whether the
/// deny pattern `d` matches every value the allow pattern `a` matches.
fn pattern_covers(d: &str, a: &str) -> bool {
    if d == a || d == "*" {
        return true;
    }
    if let Some(prefix) = d.strip_suffix('*') {
        return a.starts_with(prefix) && !a.starts_with('*');
    }
    if let Some(suffix) = d.strip_prefix('*') {
        return a.ends_with(suffix) && (!a.ends_with('*') || a.len() == 1 && suffix.is_empty());
    }
    false
}

/// WARD0228: a workload that serves patient data (label [`PHI_LABEL`]: `"true"` on its
/// WorkloadEntry, or on a ServiceEntry that selects it) with a port that accepts plaintext
/// (PERMISSIVE or DISABLE).
pub(super) fn phi_plaintext(context: &Context<'_>, out: &mut Vec<Diagnostic>) {
    let set = context.set;
    for workload in &context.workloads {
        let via_service = set.service_entries.iter().find(|se| {
            se.meta.labels.get(PHI_LABEL).map(String::as_str) == Some("true")
                && se.meta.namespace == workload.namespace()
                && se
                    .spec
                    .workload_selector
                    .as_ref()
                    .is_some_and(|s| s.matches(&workload.labels))
        });
        let direct = workload.labels.get(PHI_LABEL).map(String::as_str) == Some("true");
        if !direct && via_service.is_none() {
            continue;
        }
        let why = match via_service {
            Some(se) if !direct => format!("ServiceEntry {} is labelled {PHI_LABEL}", se.key()),
            _ => format!("it is labelled {PHI_LABEL}"),
        };
        for served in served_ports(context, workload) {
            let (mode, by) = context.mtls_of(workload, served.port);
            if mode == MtlsMode::Strict {
                continue;
            }
            let by = by.map_or_else(String::new, |p| {
                format!(" (PeerAuthentication {}/{})", p.namespace, p.name)
            });
            out.push(workload.resource.diagnostic(
                Severity::Warning,
                code::PHI_PLAINTEXT,
                "metadata.name",
                format!(
                    "workload {} serves patient data ({why}) and its port {} is {mode:?}{by}: \
                     clients without mTLS are accepted there, so data can cross the network \
                     unencrypted and unauthenticated (HIPAA §164.312(e)(1))",
                    workload.resource.key(),
                    served.port
                ),
            ));
        }
    }
}

/// WARD0229: an OpenShift Service Mesh 2 control plane whose `security.dataPlane.mtls` is false
/// or absent (OSSM's default): the operator writes a mesh-wide PERMISSIVE PeerAuthentication,
/// not "mTLS off".
pub(super) fn ossm_mtls_false(context: &Context<'_>, out: &mut Vec<Diagnostic>) {
    for smcp in &context.set.control_planes {
        let data_plane = smcp
            .spec
            .security
            .as_ref()
            .and_then(|s| s.data_plane.as_ref());
        let mtls = data_plane.and_then(|d| d.mtls);
        if mtls == Some(true) {
            continue;
        }
        let auto = data_plane.and_then(|d| d.auto_mtls);
        let field = if mtls.is_some() {
            "spec.security.dataPlane.mtls"
        } else {
            "spec"
        };
        let written = if mtls.is_some() {
            "`mtls: false`"
        } else {
            "no `mtls` (false by default)"
        };
        let clients = if auto == Some(false) {
            " With `automtls: false` too, sidecars call each other in plaintext unless a \
             DestinationRule sets ISTIO_MUTUAL."
        } else {
            " Sidecars still use mTLS with each other (auto mTLS)."
        };
        out.push(smcp.diagnostic(
            Severity::Warning,
            code::OSSM_MTLS_FALSE,
            field,
            format!(
                "{written} does not turn mTLS off: OpenShift Service Mesh 2 makes it a mesh-wide \
                 PERMISSIVE PeerAuthentication, so workloads accept mTLS and plaintext alike.\
                 {clients} Ward does not read ServiceMeshControlPlane: write the \
                 PeerAuthentication you mean (without one, Ward is STRICT)"
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_cover_what_they_match() {
        for (d, a) in [
            ("*", "anything"),
            ("*", "x*"),
            ("ns/*", "ns/a"),
            ("ns/*", "ns/a*"),
            ("*.example.com", "api.example.com"),
            ("*.com", "*.example.com"),
            ("x", "x"),
        ] {
            assert!(pattern_covers(d, a), "{d} covers {a}");
        }
        for (d, a) in [
            ("x", "x*"),
            ("ns/a", "ns/*"),
            ("ns/*", "*"),
            ("ns/*", "*/a"),
            ("*.example.com", "*"),
            ("*.com", "x.com*"),
        ] {
            assert!(!pattern_covers(d, a), "{d} does not cover {a}");
        }
    }

    fn rule(yaml: &str) -> Rule {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn a_deny_rule_covers_an_allow_rule_only_when_it_matches_all_of_it() {
        let covered = [
            // Deny everything from namespace x; allow some of x's requests.
            ("from: [{source: {namespaces: [x]}}]", "from: [{source: {namespaces: [x]}}]\nto: [{operation: {methods: [GET]}}]"),
            ("from: [{source: {namespaces: [x, y]}}]", "from: [{source: {namespaces: [y]}}]"),
            ("to: [{operation: {paths: [/admin*]}}]", "to: [{operation: {paths: [/admin/users]}}]"),
            ("to: [{operation: {methods: [DELETE]}}]", "from: [{source: {principals: [a]}}]\nto: [{operation: {methods: [DELETE]}}]"),
            ("from: [{source: {notNamespaces: [x]}}]", "from: [{source: {namespaces: [y]}}]"),
            ("when: [{key: \"request.auth.claims[role]\", values: [guest]}]", "when: [{key: \"request.auth.claims[role]\", values: [guest]}, {key: source.ip, values: [10.0.0.1]}]"),
        ];
        for (d, a) in covered {
            assert!(covers(&rule(d), &rule(a)), "{d}\n covers\n{a}");
        }
        let not_covered = [
            // The allow side reaches sources the deny side does not name.
            (
                "from: [{source: {namespaces: [x]}}]",
                "to: [{operation: {methods: [GET]}}]",
            ),
            (
                "from: [{source: {namespaces: [x]}}]",
                "from: [{source: {namespaces: [x]}}, {source: {namespaces: [y]}}]",
            ),
            (
                "to: [{operation: {paths: [/admin]}}]",
                "to: [{operation: {paths: [/admin*]}}]",
            ),
            (
                "from: [{source: {notNamespaces: [x]}}]",
                "from: [{source: {namespaces: [x]}}]",
            ),
            (
                "from: [{source: {notNamespaces: [x]}}]",
                "from: [{source: {principals: [a]}}]",
            ),
            (
                "when: [{key: source.ip, values: [10.0.0.1]}]",
                "to: [{operation: {methods: [GET]}}]",
            ),
            // Across fields Ward does not reason: conservative.
            (
                "from: [{source: {namespaces: [x]}}]",
                "from: [{source: {principals: [cluster.local/ns/x/sa/a]}}]",
            ),
        ];
        for (d, a) in not_covered {
            assert!(!covers(&rule(d), &rule(a)), "{d}\n does not cover\n{a}");
        }
    }
}
