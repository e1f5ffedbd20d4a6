//! Property: compiling and evaluating any policy, with arbitrary strings in every string field,
//! never panics; it either compiles or returns a `CompileError` naming a `spec` field.

use std::collections::BTreeMap;

use proptest::prelude::*;
use ward_policy::spec::{
    Action, AuthorizationPolicySpec, Condition, ExtensionProvider, Operation,
    PolicyTargetReference, Rule, RuleFrom, RuleTo, Source, WorkloadSelector,
};
use ward_policy::{AuthzPolicy, L4Attributes, MeshContext, Peer, PolicyRef, WorkloadPolicies};

/// Arbitrary text, biased toward the characters Istio patterns give meaning to.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,16}",
        "[*/.:\\[\\]{}a-c0-9-]{0,16}",
        Just("*".to_string()),
        Just(String::new()),
        Just("spiffe://td/ns/a/sa/b".to_string()),
        Just("cluster.local/ns/a/sa/*".to_string()),
        Just("/a/{**}/{*}".to_string()),
        Just("request.headers[".to_string()),
        Just("request.auth.claims[a][b]".to_string()),
        Just("10.0.0.0/8".to_string()),
        Just("65535".to_string()),
    ]
}

/// A field: usually absent, so that most generated policies get past the first invalid value
/// and exercise the later fields and evaluation.
fn list() -> impl Strategy<Value = Option<Vec<String>>> {
    prop::option::weighted(0.2, prop::collection::vec(text(), 0..3))
}

fn source() -> impl Strategy<Value = Source> {
    (
        (list(), list(), list(), list(), list(), list()),
        (list(), list(), list(), list(), list(), list()),
        (list(), list()),
    )
        .prop_map(|((a, b, c, d, e, f), (g, h, i, j, k, l), (m, n))| Source {
            principals: a,
            not_principals: b,
            request_principals: c,
            not_request_principals: d,
            namespaces: e,
            not_namespaces: f,
            service_accounts: g,
            not_service_accounts: h,
            ip_blocks: i,
            not_ip_blocks: j,
            remote_ip_blocks: k,
            not_remote_ip_blocks: l,
            trust_domains: m,
            not_trust_domains: n,
        })
}

fn operation() -> impl Strategy<Value = Operation> {
    (
        list(),
        list(),
        list(),
        list(),
        list(),
        list(),
        list(),
        list(),
    )
        .prop_map(|(a, b, c, d, e, f, g, h)| Operation {
            hosts: a,
            not_hosts: b,
            ports: c,
            not_ports: d,
            methods: e,
            not_methods: f,
            paths: g,
            not_paths: h,
        })
}

fn condition() -> impl Strategy<Value = Condition> {
    let key = prop_oneof![
        text(),
        prop::sample::select(vec![
            "source.ip",
            "remote.ip",
            "source.namespace",
            "source.principal",
            "source.serviceAccount",
            "source.trustDomain",
            "destination.ip",
            "destination.port",
            "connection.sni",
            "request.auth.principal",
        ])
        .prop_map(str::to_string),
    ];
    (key, list(), list()).prop_map(|(key, values, not_values)| Condition {
        key,
        values,
        not_values,
    })
}

fn rule() -> impl Strategy<Value = Rule> {
    (
        prop::option::of(prop::collection::vec(
            source().prop_map(|source| RuleFrom { source }),
            0..2,
        )),
        prop::option::of(prop::collection::vec(
            operation().prop_map(|operation| RuleTo { operation }),
            0..2,
        )),
        prop::option::of(prop::collection::vec(condition(), 0..3)),
    )
        .prop_map(|(from, to, when)| Rule { from, to, when })
}

fn target() -> impl Strategy<Value = PolicyTargetReference> {
    (
        prop::option::of(text()),
        text(),
        text(),
        prop::option::of(text()),
    )
        .prop_map(|(group, kind, name, namespace)| PolicyTargetReference {
            group,
            kind,
            name,
            namespace,
        })
}

fn spec() -> impl Strategy<Value = AuthorizationPolicySpec> {
    (
        prop::option::weighted(0.3, prop::collection::btree_map(text(), text(), 0..2)),
        prop::option::weighted(0.1, target()),
        prop::option::weighted(0.1, prop::collection::vec(target(), 0..2)),
        prop::option::weighted(0.9, prop::collection::vec(rule(), 1..3)),
        prop::option::of(prop::sample::select(vec![
            Action::Allow,
            Action::Deny,
            Action::Audit,
            Action::Custom,
        ])),
        prop::option::weighted(0.1, text()),
    )
        .prop_map(
            |(labels, target_ref, target_refs, rules, action, odd_provider)| {
                // A CUSTOM policy needs a provider and no other action may have one; mostly follow
                // that rule, sometimes break it.
                let provider = match (action, odd_provider) {
                    (_, Some(name)) => Some(ExtensionProvider { name }),
                    (Some(Action::Custom), None) => Some(ExtensionProvider { name: "ext".into() }),
                    (_, None) => None,
                };
                AuthorizationPolicySpec {
                    selector: labels.map(|match_labels: BTreeMap<String, String>| {
                        WorkloadSelector { match_labels }
                    }),
                    target_ref,
                    target_refs,
                    rules,
                    action,
                    provider,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn compile_never_panics(
        spec in spec(),
        namespace in text(),
        trust_domain in text(),
        aliases in prop::collection::vec(text(), 0..2),
        dry_run in any::<bool>(),
        peer_parts in prop::option::of((text(), text(), text())),
        port in any::<u16>(),
    ) {
        let mesh = MeshContext {
            root_namespace: "istio-system".into(),
            trust_domain,
            trust_domain_aliases: aliases,
        };
        match AuthzPolicy::compile(PolicyRef::new(namespace.clone(), "p"), &spec, dry_run, &mesh) {
            Ok(policy) => {
                let peer = peer_parts.map(|(td, ns, sa)| Peer::new(td, ns, sa));
                let conn = L4Attributes {
                    peer: peer.as_ref(),
                    source_ip: "10.0.0.1".parse().unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
                    remote_ip: "::1".parse().unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
                    destination_ip: std::net::Ipv4Addr::LOCALHOST.into(),
                    destination_port: port,
                    sni: Some(namespace.as_str()),
                };
                let policies = WorkloadPolicies::new(vec![policy]);
                let decision = policies.evaluate_l4(&conn);
                let _ = decision.response_detail();
            }
            Err(err) => prop_assert!(err.field.starts_with("spec."), "{err}"),
        }
    }
}
