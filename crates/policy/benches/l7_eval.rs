//! L7 policy evaluation time at 1, 100 and 10,000 rules (criterion; README.md, "Benchmarks").
//!
//! Each rule is an ALLOW rule on a method, a path prefix and a header value; the request matches
//! only the LAST rule (the worst case for a linear walk). A DENY policy on `/admin*` and a JWT
//! claim condition are evaluated too. `WorkloadPolicies::evaluate_http` does not try every rule:
//! the index built by `WorkloadPolicies::new` files each ALLOW rule under its exact
//! `request.headers[x-tenant]` value, and the DENY rule (a path prefix, no exact key) among the
//! rules always tried. The request's header lines are looked up, so it tries two rules whatever
//! the count, and time should stay about flat.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ward_policy::spec::AuthorizationPolicySpec;
use ward_policy::{
    normalize, AuthzPolicy, HttpAttributes, L4Attributes, MeshContext, Peer, PolicyRef,
    RequestAuth, WorkloadPolicies,
};

/// `rules` ALLOW rules spread over policies of at most 100 rules, plus one DENY policy.
fn policies(rules: usize) -> WorkloadPolicies {
    let mesh = MeshContext::default();
    let mut compiled = Vec::new();
    let deny = "action: DENY\nrules: [{to: [{operation: {paths: [\"/admin*\"]}}]}]";
    let spec: AuthorizationPolicySpec =
        serde_saphyr::from_str(deny).unwrap_or_else(|e| panic!("{e}"));
    compiled.push(
        AuthzPolicy::compile(PolicyRef::new("app", "deny-admin"), &spec, false, &mesh)
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let mut start = 0;
    while start < rules {
        let end = (start + 100).min(rules);
        let mut yaml = String::from("rules:\n");
        for i in start..end {
            yaml.push_str(&format!(
                "- to: [{{operation: {{methods: [POST], paths: [\"/svc{i}/*\"]}}}}]\n  when: [{{key: \"request.headers[x-tenant]\", values: [t{i}]}}, {{key: \"request.auth.claims[realm][roles]\", values: [Medic]}}]\n"
            ));
        }
        let spec: AuthorizationPolicySpec =
            serde_saphyr::from_str(&yaml).unwrap_or_else(|e| panic!("{e}"));
        let name = format!("allow-{start}");
        compiled.push(
            AuthzPolicy::compile(PolicyRef::new("app", name), &spec, false, &mesh)
                .unwrap_or_else(|e| panic!("{e}")),
        );
        start = end;
    }
    WorkloadPolicies::new(compiled)
}

fn l7_eval(c: &mut Criterion) {
    let peer = Peer::new("cluster.local", "frontend", "web");
    let auth = RequestAuth {
        principal: "https://idp.example/bob".into(),
        audiences: vec!["fhir".into()],
        presenter: None,
        claims: serde_json::json!({"realm": {"roles": ["offline", "Medic"]}}),
    };
    let mut group = c.benchmark_group("l7_eval");
    for rules in [1usize, 100, 10_000] {
        let workload = policies(rules);
        let last = rules - 1;
        let path = normalize(&format!("/svc{last}/x/../records?id=1"))
            .unwrap_or_else(|e| panic!("{e}"))
            .path;
        let headers = vec![
            ("x-tenant".to_string(), "other".to_string()),
            ("x-tenant".to_string(), format!("t{last}")),
            ("accept".to_string(), "*/*".to_string()),
        ];
        let req = HttpAttributes {
            l4: L4Attributes {
                peer: Some(&peer),
                source_ip: "10.0.0.5".parse().unwrap_or_else(|e| panic!("{e}")),
                remote_ip: "10.0.0.5".parse().unwrap_or_else(|e| panic!("{e}")),
                destination_ip: "10.0.0.9".parse().unwrap_or_else(|e| panic!("{e}")),
                destination_port: 8080,
                sni: None,
            },
            method: "POST",
            host: "fhir.app:8080",
            path: &path,
            headers: &headers,
            auth: Some(&auth),
        };
        assert!(
            workload.evaluate_http(&req).is_allowed(),
            "the last rule must match"
        );
        group.throughput(Throughput::Elements(rules as u64));
        group.bench_with_input(BenchmarkId::new("rules", rules), &req, |b, req| {
            b.iter(|| black_box(workload.evaluate_http(black_box(req))))
        });
    }
    group.finish();

    c.bench_function("normalize", |b| {
        b.iter(|| {
            normalize(black_box(
                "/fhir//Patient/./1/../%31/_history?_count=10#frag",
            ))
        })
    });
}

criterion_group!(benches, l7_eval);
criterion_main!(benches);
