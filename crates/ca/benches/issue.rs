//! Certificates issued per second (one of the micro-benchmarks in README.md, "Benchmarks"):
//! `Ca::sign` on a ready CSR (the CA's own cost: CSR check + leaf signing), and the
//! whole round a workload makes (generate a P-256 key and its CSR, then sign).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ward_ca::{Ca, CaOptions};
use ward_identity::SpiffeId;

fn issue(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let ca = Ca::load_or_create(dir.path(), CaOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let id = SpiffeId::new("cluster.local", "default", "sleep").unwrap_or_else(|e| panic!("{e}"));
    let csr = ward_identity::generate_csr(&id)
        .unwrap_or_else(|e| panic!("{e}"))
        .csr_der
        .clone();
    assert!(ca.sign(&id, &csr, None).is_ok(), "the CSR must be signed");

    let mut group = c.benchmark_group("ca_issue");
    group.throughput(Throughput::Elements(1));
    group.bench_function("sign (CSR generation excluded)", |b| {
        b.iter(|| ca.sign(black_box(&id), black_box(&csr), None))
    });
    group.bench_function("generate CSR + sign", |b| {
        b.iter(|| {
            let csr = ward_identity::generate_csr(black_box(&id)).unwrap_or_else(|e| panic!("{e}"));
            ca.sign(&id, &csr.csr_der, None)
        })
    });
    group.finish();
}

criterion_group!(benches, issue);
criterion_main!(benches);
