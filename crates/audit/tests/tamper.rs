//! The audit trail against every kind of tampering: a real CA signs the workload certificate
//! whose key signs the checkpoints; a writer writes a trail over three files; each test alters
//! a copy of it and `verify` must name the first bad record and what is wrong.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};
use ward_audit::record::Fields;
use ward_audit::writer::{file_path, SEAL_FILE};
use ward_audit::{verify, KeySigner, Report, Rotation, TrailFile, Writer};
use ward_identity::{generate_csr, SpiffeId, WorkloadCert};

struct Mesh {
    _dir: tempfile::TempDir,
    roots: Vec<Vec<u8>>,
    cert: WorkloadCert,
}

fn mesh() -> Mesh {
    let dir = tempfile::tempdir().unwrap();
    let ca = ward_ca::Ca::load_or_create(
        dir.path(),
        ward_ca::CaOptions {
            trust_domain: "cluster.local".into(),
            default_ttl: Duration::from_secs(3600),
            max_ttl: Duration::from_secs(3600),
        },
    )
    .unwrap();
    let id = SpiffeId::new("cluster.local", "ehr", "records").unwrap();
    let key = generate_csr(&id).unwrap();
    let issued = ca.sign(&id, &key.csr_der, None).unwrap();
    Mesh {
        roots: ca.roots_der(),
        cert: WorkloadCert {
            id,
            key_pkcs8_der: key.key_pkcs8_der.clone(),
            issued,
        },
        _dir: dir,
    }
}

fn decision(i: u64) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(
        "decision".into(),
        if i.is_multiple_of(3) { "deny" } else { "allow" }.into(),
    );
    m.insert("policy".into(), "ehr/readers".into());
    m.insert("path".into(), format!("/fhir/Patient/{i}").into());
    m
}

/// A trail of 3 files: 25 decisions, a checkpoint every 4 records, rotation every 10 events.
fn write_trail(mesh: &Mesh, dir: &Path) {
    let rotation = Rotation {
        max_bytes: u64::MAX,
        max_age: Duration::from_secs(3600),
        checkpoint_every: 4,
        checkpoint_interval: Duration::from_secs(3600),
    };
    let now = SystemTime::now();
    let signer = Arc::new(KeySigner::new(&mesh.cert).unwrap());
    let mut w = Writer::open(dir, signer, rotation, now).unwrap();
    for i in 1..=25 {
        w.append("decision", &decision(i), now).unwrap();
        if i.is_multiple_of(10) {
            w.rotate(now).unwrap();
        }
    }
    w.checkpoint(now).unwrap();
    // Two more after the last checkpoint: unsealed.
    w.append("decision", &decision(26), now).unwrap();
    w.append("decision", &decision(27), now).unwrap();
}

struct Trail {
    files: Vec<TrailFile>,
    seal: Vec<u8>,
}

fn read(dir: &Path) -> Trail {
    let mut files = Vec::new();
    for i in 0.. {
        let path = file_path(dir, i);
        let Ok(bytes) = std::fs::read(&path) else {
            break;
        };
        files.push(TrailFile {
            name: path.file_name().unwrap().to_string_lossy().into_owned(),
            bytes,
        });
    }
    Trail {
        files,
        seal: std::fs::read(dir.join(SEAL_FILE)).unwrap(),
    }
}

fn check(mesh: &Mesh, t: &Trail) -> Report {
    verify(&t.files, Some(&t.seal), &mesh.roots)
}

fn lines(bytes: &[u8]) -> Vec<String> {
    String::from_utf8(bytes.to_vec())
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn join(lines: &[String]) -> Vec<u8> {
    let mut s = lines.join("\n");
    s.push('\n');
    s.into_bytes()
}

fn setup() -> (Mesh, Trail, tempfile::TempDir) {
    let mesh = mesh();
    let dir = tempfile::tempdir().unwrap();
    write_trail(&mesh, dir.path());
    let trail = read(dir.path());
    (mesh, trail, dir)
}

fn problem(report: &Report) -> String {
    let p = report.problem.as_ref().expect("a problem");
    format!("{}:{} {}", p.file, p.line, p.what)
}

#[test]
fn an_untouched_trail_verifies_with_its_unsealed_tail() {
    let (mesh, trail, _dir) = setup();
    assert_eq!(trail.files.len(), 3);
    let r = check(&mesh, &trail);
    assert!(r.ok, "{r:?}");
    assert_eq!(r.files, 3);
    assert!(r.checkpoints >= 6, "{r:?}");
    assert_eq!(r.unsealed, 2);
    assert_eq!(
        r.signers.iter().collect::<Vec<_>>(),
        ["spiffe://cluster.local/ns/ehr/sa/records"]
    );
}

#[test]
fn an_edited_record_is_found() {
    let (mesh, mut trail, _dir) = setup();
    let mut l = lines(&trail.files[1].bytes);
    // Record 4 (line 4 of file 1) gets another path; the record after it no longer follows.
    l[3] = l[3].replace("Patient/", "Patient/x");
    trail.files[1].bytes = join(&l);
    let r = check(&mesh, &trail);
    assert!(!r.ok);
    assert!(
        problem(&r).starts_with("audit-000001.jsonl:5 "),
        "{}",
        problem(&r)
    );
    assert!(
        problem(&r).contains("previous record was edited"),
        "{}",
        problem(&r)
    );
}

#[test]
fn a_deleted_record_is_found() {
    let (mesh, mut trail, _dir) = setup();
    let mut l = lines(&trail.files[0].bytes);
    l.remove(2);
    trail.files[0].bytes = join(&l);
    let r = check(&mesh, &trail);
    assert!(
        problem(&r).contains("are missing: deleted"),
        "{}",
        problem(&r)
    );
}

#[test]
fn an_inserted_record_is_found() {
    let (mesh, mut trail, _dir) = setup();
    let mut l = lines(&trail.files[0].bytes);
    let copy = l[2].clone();
    l.insert(3, copy);
    trail.files[0].bytes = join(&l);
    let r = check(&mesh, &trail);
    assert!(problem(&r).contains("inserted or moved"), "{}", problem(&r));
}

#[test]
fn reordered_records_are_found() {
    let (mesh, mut trail, _dir) = setup();
    let mut l = lines(&trail.files[0].bytes);
    l.swap(2, 3);
    trail.files[0].bytes = join(&l);
    let r = check(&mesh, &trail);
    assert!(
        problem(&r).starts_with("audit-000000.jsonl:3 "),
        "{}",
        problem(&r)
    );
}

#[test]
fn a_trail_cut_after_a_sealed_checkpoint_is_found() {
    let (mesh, mut trail, _dir) = setup();
    let l = lines(&trail.files[2].bytes);
    // Drop the last checkpoint and everything after it.
    let cut = l
        .iter()
        .rposition(|x| x.contains("\"checkpoint\""))
        .unwrap();
    trail.files[2].bytes = join(&l[..cut]);
    let r = check(&mesh, &trail);
    assert!(problem(&r).contains("was cut short"), "{}", problem(&r));
    // Without the seal file the cut is invisible: only the seal proves the end.
    let r = verify(&trail.files, None, &mesh.roots);
    assert!(r.ok, "{r:?}");
}

#[test]
fn a_record_cut_in_the_middle_is_found() {
    let (mesh, mut trail, _dir) = setup();
    let n = trail.files[2].bytes.len();
    trail.files[2].bytes.truncate(n - 5);
    let r = check(&mesh, &trail);
    assert!(
        problem(&r).contains("ends inside a record"),
        "{}",
        problem(&r)
    );
}

#[test]
fn a_missing_rotated_file_is_found() {
    let (mesh, mut trail, _dir) = setup();
    trail.files.remove(1);
    let r = check(&mesh, &trail);
    assert!(
        problem(&r).contains("file 1 of the trail is missing"),
        "{}",
        problem(&r)
    );
    let (mesh, mut trail, _dir) = setup();
    trail.files.remove(0);
    let r = check(&mesh, &trail);
    assert!(
        problem(&r).contains("file 0 of the trail is missing"),
        "{}",
        problem(&r)
    );
}

#[test]
fn a_forged_checkpoint_is_found() {
    let (mesh, mut trail, _dir) = setup();
    // Re-sign the chain after editing a record, with a key from another CA: the hashes all
    // line up, but the checkpoint's chain does not lead to the mesh root.
    let other = self::mesh();
    let dir = tempfile::tempdir().unwrap();
    write_trail(&other, dir.path());
    let forged = read(dir.path());
    let r = verify(&forged.files, Some(&forged.seal), &mesh.roots);
    assert!(
        problem(&r).contains("checkpoint does not verify"),
        "{}",
        problem(&r)
    );
    // A checkpoint whose signature was altered.
    let mut l = lines(&trail.files[0].bytes);
    let at = l.iter().position(|x| x.contains("\"checkpoint\"")).unwrap();
    let mut v: Value = serde_json::from_str(&l[at]).unwrap();
    let sig = v["sig"].as_str().unwrap().to_owned();
    let flipped = if sig.starts_with('M') {
        sig.replacen('M', "N", 1)
    } else {
        sig.replacen(&sig[..1], "M", 1)
    };
    v["sig"] = flipped.into();
    l[at] = v.to_string();
    trail.files[0].bytes = join(&l);
    let r = check(&mesh, &trail);
    assert!(
        problem(&r).contains("checkpoint does not verify"),
        "{}",
        problem(&r)
    );
}

#[test]
fn a_writer_resumes_after_a_crash_mid_record() {
    let mesh = mesh();
    let dir = tempfile::tempdir().unwrap();
    write_trail(&mesh, dir.path());
    // A crash left half a line.
    let last = file_path(dir.path(), 2);
    let mut bytes = std::fs::read(&last).unwrap();
    bytes.extend_from_slice(b"{\"seq\":30,\"ti");
    std::fs::write(&last, bytes).unwrap();
    let signer = Arc::new(KeySigner::new(&mesh.cert).unwrap());
    let now = SystemTime::now();
    let mut w = Writer::open(dir.path(), signer, Rotation::default(), now).unwrap();
    w.append("decision", &decision(28), now).unwrap();
    w.checkpoint(now).unwrap();
    let r = check(&mesh, &read(dir.path()));
    assert!(r.ok, "{r:?}");
    assert_eq!(r.unsealed, 0);
}

#[test]
fn a_batch_is_appended_as_one_chain_and_a_second_writer_is_locked_out() {
    let mesh = mesh();
    let dir = tempfile::tempdir().unwrap();
    let signer = Arc::new(KeySigner::new(&mesh.cert).unwrap());
    let now = SystemTime::now();
    let mut w = Writer::open(dir.path(), signer.clone(), Rotation::default(), now).unwrap();
    let batch: Vec<(&str, Fields, SystemTime)> = (0..5)
        .map(|i| ("decision", Fields::from_map(&decision(i)), now))
        .collect();
    assert_eq!(
        w.append_all(&batch, now).unwrap(),
        6,
        "the file record, then 5"
    );
    w.append("decision", &decision(5), now).unwrap();
    // One writer per trail: a second one is refused while the first holds it.
    assert!(matches!(
        Writer::open(dir.path(), signer.clone(), Rotation::default(), now),
        Err(ward_audit::AuditError::Locked { .. })
    ));
    w.checkpoint(now).unwrap();
    drop(w);
    let r = check(&mesh, &read(dir.path()));
    assert!(r.ok, "{r:?}");
    assert_eq!((r.records, r.unsealed), (8, 0), "{r:?}");
    assert!(Writer::open(dir.path(), signer, Rotation::default(), now).is_ok());
}
