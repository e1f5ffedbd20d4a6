//! `ward audit verify` and `ward audit export` on a real trail: written by the audit writer with
//! a workload certificate from a real CA, checked by the binary, then tampered with.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};
use ward_audit::writer::file_path;
use ward_audit::{KeySigner, Rotation, Writer};
use ward_identity::{generate_csr, SpiffeId, WorkloadCert};

const BIN: &str = env!("CARGO_BIN_EXE_ward");

/// A CA under `state`, and a trail in `trail` signed by one of its workloads: 12 decisions at
/// one-minute steps from 10:00, a checkpoint every 5 records, a rotation after the 6th.
fn trail(state: &Path, trail: &Path) {
    let ca = ward_ca::Ca::load_or_create(
        state,
        ward_ca::CaOptions {
            trust_domain: "cluster.local".into(),
            default_ttl: Duration::from_secs(10 * 365 * 86_400),
            max_ttl: Duration::from_secs(10 * 365 * 86_400),
        },
    )
    .unwrap();
    let id = SpiffeId::new("cluster.local", "datamesh", "fhir").unwrap();
    let key = generate_csr(&id).unwrap();
    let issued = ca.sign(&id, &key.csr_der, None).unwrap();
    let cert = WorkloadCert {
        id,
        key_pkcs8_der: key.key_pkcs8_der.clone(),
        issued,
    };
    // The times are the certificate's: checkpoints are verified at their own time.
    let start = SystemTime::now();
    let rotation = Rotation {
        checkpoint_every: 5,
        ..Rotation::default()
    };
    let mut w = Writer::open(
        trail,
        Arc::new(KeySigner::new(&cert).unwrap()),
        rotation,
        start,
    )
    .unwrap();
    for i in 0..12u64 {
        let mut f = Map::new();
        f.insert("decision".into(), "allow".into());
        f.insert("path".into(), format!("/fhir/Patient/{i}").into());
        w.append("decision", &f, start + Duration::from_secs(60 * i))
            .unwrap();
        if i == 5 {
            w.rotate(start + Duration::from_secs(60 * i)).unwrap();
        }
    }
    w.checkpoint(start + Duration::from_secs(60 * 12)).unwrap();
}

fn ward(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn verify_and_export_a_trail_and_catch_an_edit() {
    let tmp = tempfile::tempdir().unwrap();
    let (state, dir) = (tmp.path().join("state"), tmp.path().join("audit"));
    trail(&state, &dir);
    let root = state.join("ca/root-cert.pem");
    let (root, dir) = (root.to_str().unwrap(), dir.to_str().unwrap());

    let (code, out, err) = ward(&["audit", "verify", "--root", root, dir]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("OK: 18 records in 2 files"), "{out}");
    assert!(
        out.contains("spiffe://cluster.local/ns/datamesh/sa/fhir"),
        "{out}"
    );
    assert!(out.contains("the seal file matches"), "{out}");

    let (code, out, _) = ward(&["audit", "export", "--root", root, "--format", "csv", dir]);
    assert_eq!(code, 0);
    let rows: Vec<&str> = out.lines().collect();
    assert_eq!(rows[0], "seq,time,type,decision,path");
    assert_eq!(rows.len(), 13, "{out}");
    let (code, out, _) = ward(&["audit", "export", "--root", root, dir]);
    assert_eq!(code, 0);
    let first: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(first["report"]["ok"], true);

    // Edit one path in the first file: verify names the record after it.
    let f0 = file_path(Path::new(dir), 0);
    let text = std::fs::read_to_string(&f0).unwrap();
    std::fs::write(&f0, text.replacen("/fhir/Patient/2", "/fhir/Patient/9", 1)).unwrap();
    let (code, out, _) = ward(&["audit", "verify", "--root", root, dir]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with("FAILED: ") && out.contains("audit-000000.jsonl:5 (record 5)"),
        "{out}"
    );
    let (code, out, _) = ward(&["audit", "verify", "--root", root, "--json", dir]);
    assert_eq!(code, 1);
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["problem"]["seq"], 5);

    // Bad input: exit 2 with the file named.
    let (code, _, err) = ward(&["audit", "verify", "--root", "/nonexistent.pem", dir]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent.pem"), "{err}");
}
