//! Config load and translate time for 10,000 objects (one of the micro-benchmarks in README.md,
//! "Benchmarks").
//!
//! 2,000 workloads in 200 namespaces, each with its WorkloadEntry, ServiceEntry (two ports),
//! Sidecar (ingress on one port, egress to the next workload's service on the other), PeerAuthentication and AuthorizationPolicy: 10,000 YAML
//! documents in 10 files of 1,000, as `ward up -f dir/` would read them (one text may hold at
//! most 1,024 documents, the loader's budget against YAML bombs). `load_str` is timed on the 10
//! texts one after another (parsing and validation only: separate texts give separate
//! `ConfigSet`s); `load_paths` + `translate` is the whole pipeline on the 10 files (read from
//! the page cache).

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ward_config::{load_paths, load_str, translate};

const WORKLOADS: usize = 2_000;
const NAMESPACES: usize = 200;
/// Files the documents are split over: 1,000 documents each.
const FILES: usize = 10;

/// The five documents of workload `i`.
fn workload(out: &mut String, i: usize) {
    let ns = format!("ns{}", i % NAMESPACES);
    let next = (i + 1) % WORKLOADS;
    let next_ns = format!("ns{}", next % NAMESPACES);
    let (a, b) = (i / 250, i % 250 + 1);
    let _ = write!(
        out,
        r#"---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: w{i}, namespace: {ns}}}
spec: {{address: 10.1.{a}.{b}, serviceAccount: sa{i}, labels: {{app: w{i}}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: svc{i}, namespace: {ns}}}
spec:
  hosts: [svc{i}.{ns}.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {{number: 8080, name: http-web, protocol: HTTP}}
  - {{number: 9080, name: http-out, protocol: HTTP}}
  workloadSelector: {{labels: {{app: w{i}}}}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: w{i}, namespace: {ns}}}
spec:
  workloadSelector: {{labels: {{app: w{i}}}}}
  ingress:
  - port: {{number: 8080, name: http-web, protocol: HTTP}}
    defaultEndpoint: 127.0.0.1:9000
  egress:
  - port: {{number: 9080, name: http-out, protocol: HTTP}}
    bind: 10.1.{a}.{b}
    hosts: ["{next_ns}/svc{next}.{next_ns}.svc.cluster.local"]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: w{i}, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: w{i}}}}}
  mtls: {{mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: w{i}, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: w{i}}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: ["cluster.local/ns/{ns}/sa/sa{i}"]}}}}]
    to: [{{operation: {{methods: [GET, POST], paths: ["/api/*"]}}}}]
"#
    );
}

fn config_load(c: &mut Criterion) {
    let per_file = WORKLOADS / FILES;
    let texts: Vec<String> = (0..FILES)
        .map(|f| {
            let mut yaml = String::new();
            for i in f * per_file..(f + 1) * per_file {
                workload(&mut yaml, i);
            }
            yaml
        })
        .collect();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let paths: Vec<_> = texts
        .iter()
        .enumerate()
        .map(|(f, text)| {
            let path = dir.path().join(format!("{f:02}.yaml"));
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
            path
        })
        .collect();
    let set = load_paths(&paths).unwrap_or_else(|d| panic!("{d}"));
    let snapshot = translate(&set).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(snapshot.proxies.len(), WORKLOADS, "one proxy per workload");

    let mut group = c.benchmark_group("config_10k_objects");
    group.sample_size(10);
    group.throughput(Throughput::Elements(5 * WORKLOADS as u64));
    group.bench_function("load_str x10", |b| {
        b.iter(|| {
            for text in &texts {
                black_box(load_str("bench.yaml", black_box(text)).is_ok());
            }
        })
    });
    group.bench_function("translate", |b| b.iter(|| translate(black_box(&set))));
    group.bench_function("load_paths+translate", |b| {
        b.iter(|| {
            let set = load_paths(black_box(&paths)).unwrap_or_else(|d| panic!("{d}"));
            translate(&set)
        })
    });
    group.finish();
}

criterion_group!(benches, config_load);
criterion_main!(benches);
