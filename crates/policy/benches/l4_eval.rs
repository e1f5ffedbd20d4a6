//! L4 decision time with 1, 100 and 10,000 AuthorizationPolicies applying to one workload
//! (criterion; README.md, "Benchmarks").
//!
//! Each policy is an ALLOW policy of one rule naming a source principal and two ports; the
//! connection matches only the LAST policy (the worst case for a linear walk). A DENY policy on
//! an IP block comes first. `WorkloadPolicies::evaluate_l4` does not walk every policy: the index
//! built by `WorkloadPolicies::new` files each ALLOW rule under its exact principal (rarer than
//! the port all of them share) and the DENY rule, which has no exact key, among the rules always
//! tried. So the connection tries two rules whatever the count, and time should stay about flat
//! (one hash lookup per key, plus what the linear walk also pays to build the `Decision`).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ward_policy::spec::AuthorizationPolicySpec;
use ward_policy::{AuthzPolicy, L4Attributes, MeshContext, Peer, PolicyRef, WorkloadPolicies};

fn compile(mesh: &MeshContext, name: String, yaml: &str) -> AuthzPolicy {
    let spec: AuthorizationPolicySpec =
        serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("{e}"));
    AuthzPolicy::compile(PolicyRef::new("app", name), &spec, false, mesh)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// One DENY policy, then `count` ALLOW policies, the i-th for `ns{i}/sa{i}` on port 8080.
fn policies(count: usize) -> WorkloadPolicies {
    let mesh = MeshContext::default();
    let mut compiled = vec![compile(
        &mesh,
        "deny-blocked".into(),
        "action: DENY\nrules: [{from: [{source: {ipBlocks: [\"192.0.2.0/24\"]}}]}]",
    )];
    for i in 0..count {
        let yaml = format!(
            "rules:\n- from: [{{source: {{principals: [\"cluster.local/ns/ns{i}/sa/sa{i}\"]}}}}]\n  \
             to: [{{operation: {{ports: [\"8080\", \"9090\"]}}}}]\n"
        );
        compiled.push(compile(&mesh, format!("allow-{i}"), &yaml));
    }
    WorkloadPolicies::new(compiled)
}

fn l4_eval(c: &mut Criterion) {
    let mut group = c.benchmark_group("l4_eval");
    for count in [1usize, 100, 10_000] {
        let workload = policies(count);
        let last = count - 1;
        let peer = Peer::new("cluster.local", format!("ns{last}"), format!("sa{last}"));
        let conn = L4Attributes {
            peer: Some(&peer),
            source_ip: "10.0.0.5".parse().unwrap_or_else(|e| panic!("{e}")),
            remote_ip: "10.0.0.5".parse().unwrap_or_else(|e| panic!("{e}")),
            destination_ip: "10.0.0.9".parse().unwrap_or_else(|e| panic!("{e}")),
            destination_port: 8080,
            sni: None,
        };
        assert!(
            workload.evaluate_l4(&conn).is_allowed(),
            "the last policy must match"
        );
        group.throughput(Throughput::Elements(count as u64));
        group.bench_with_input(BenchmarkId::new("policies", count), &conn, |b, conn| {
            b.iter(|| black_box(workload.evaluate_l4(black_box(conn))))
        });
    }
    group.finish();
}

criterion_group!(benches, l4_eval);
criterion_main!(benches);
