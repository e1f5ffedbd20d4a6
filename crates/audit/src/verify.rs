//! Verification of a trail (pure): its files and its seal file in, a [`Report`] out.
//!
//! What each kind of tampering breaks:
//! - an edited record: the next record's `prev` (or, for the last record, the seal's copy of a
//!   checkpoint, or the checkpoint's signature);
//! - a deleted record: the sequence numbers jump;
//! - an inserted or moved record: the sequence numbers go back, or `prev` does not follow;
//! - a file cut short: the seal file holds a checkpoint the trail no longer reaches;
//! - a missing rotated file: the file numbers have a gap, or do not start at 0;
//! - a forged checkpoint: its signature or its chain to the mesh root does not verify.
//!
//! Records after the last checkpoint are reported as unsealed: nothing proves they were not
//! cut off after them. The writer checkpoints at intervals to keep that tail short.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::record::{hash, Record, CHECKPOINT, FILE, GENESIS};
use crate::signer;

/// One file of a trail.
#[derive(Clone, Debug)]
pub struct TrailFile {
    /// Its name, for the report.
    pub name: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// The first thing wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The file.
    pub file: String,
    /// The line (1-based), 0 for the whole file.
    pub line: usize,
    /// The record's sequence number, when it has one.
    pub seq: Option<u64>,
    /// What is wrong.
    pub what: String,
}

/// What verification found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Complete and unaltered up to the last checkpoint.
    pub ok: bool,
    /// Files read.
    pub files: usize,
    /// Records read.
    pub records: u64,
    /// Checkpoints that verified.
    pub checkpoints: usize,
    /// Who signed them.
    pub signers: BTreeSet<String>,
    /// The sequence number of the last checkpoint.
    pub last_checkpoint: Option<u64>,
    /// Records after the last checkpoint (not sealed yet).
    pub unsealed: u64,
    /// The first problem found.
    pub problem: Option<Problem>,
}

/// One parsed line and where it is.
struct Line<'a> {
    file: &'a str,
    number: usize,
    bytes: &'a [u8],
    record: Record,
}

/// Verifies `files` (any order) and, when given, the seal file, against the mesh `roots_der`.
pub fn verify(files: &[TrailFile], seal: Option<&[u8]>, roots_der: &[Vec<u8>]) -> Report {
    let mut report = Report {
        files: files.len(),
        ..Report::default()
    };
    match check(files, seal, roots_der, &mut report) {
        Ok(()) => report.ok = true,
        Err(problem) => report.problem = Some(problem),
    }
    report
}

fn problem(file: &str, line: usize, seq: Option<u64>, what: impl Into<String>) -> Problem {
    Problem {
        file: file.to_owned(),
        line,
        seq,
        what: what.into(),
    }
}

fn check(
    files: &[TrailFile],
    seal: Option<&[u8]>,
    roots_der: &[Vec<u8>],
    report: &mut Report,
) -> Result<(), Problem> {
    if files.is_empty() {
        return Err(problem("-", 0, None, "no files given"));
    }
    // Each file's lines, by the file number its first record gives.
    let mut by_index: BTreeMap<u64, Vec<Line<'_>>> = BTreeMap::new();
    for f in files {
        let lines = parse_file(f)?;
        let first = lines
            .first()
            .ok_or_else(|| problem(&f.name, 0, None, "the file is empty"))?;
        let index = file_index(&first.record)
            .filter(|_| first.record.kind == FILE)
            .ok_or_else(|| {
                problem(
                    &f.name,
                    1,
                    Some(first.record.seq),
                    "the first record is not a `file` record: the start of the file was removed",
                )
            })?;
        if by_index.insert(index, lines).is_some() {
            return Err(problem(
                &f.name,
                1,
                None,
                format!("file {index} is given twice"),
            ));
        }
    }
    for (expected_index, (index, lines)) in (0u64..).zip(&by_index) {
        if *index != expected_index {
            let name = lines.first().map_or("-", |l| l.file);
            return Err(problem(
                name,
                0,
                None,
                format!(
                    "file {expected_index} of the trail is missing (the next one given is file {index})"
                ),
            ));
        }
    }

    let mut expected_seq = 1;
    let mut prev = GENESIS.to_owned();
    let mut by_seq: BTreeMap<u64, &[u8]> = BTreeMap::new();
    for (index, lines) in &by_index {
        for (i, line) in lines.iter().enumerate() {
            let r = &line.record;
            let at = |what: String| problem(line.file, line.number, Some(r.seq), what);
            if r.seq > expected_seq {
                return Err(at(format!(
                    "records {expected_seq} to {} are missing: deleted",
                    r.seq - 1
                )));
            }
            if r.seq < expected_seq {
                return Err(at(format!(
                    "record {} comes after record {}: inserted or moved",
                    r.seq,
                    expected_seq - 1
                )));
            }
            if r.prev != prev {
                return Err(at(
                    "the record does not follow the one before it (its `prev` is not that \
                     record's hash): the previous record was edited, or this one was altered"
                        .to_owned(),
                ));
            }
            match r.kind.as_str() {
                FILE if i != 0 || file_index(r) != Some(*index) => {
                    return Err(at("a `file` record out of place".to_owned()));
                }
                CHECKPOINT => {
                    let signer = signer::check(r, roots_der).map_err(|e| {
                        at(format!(
                            "checkpoint does not verify: {e}: forged or altered"
                        ))
                    })?;
                    report.signers.insert(signer);
                    report.checkpoints += 1;
                    report.last_checkpoint = Some(r.seq);
                }
                _ => {}
            }
            by_seq.insert(r.seq, line.bytes);
            prev = hash(line.bytes);
            expected_seq += 1;
            report.records += 1;
        }
    }
    let last = expected_seq - 1;
    report.unsealed = last - report.last_checkpoint.unwrap_or(0);

    if let Some(seal) = seal {
        check_seal(seal, &by_seq, last, roots_der)?;
    }
    Ok(())
}

/// The seal file holds a copy of every checkpoint; each must be in the trail, byte for byte.
fn check_seal(
    seal: &[u8],
    by_seq: &BTreeMap<u64, &[u8]>,
    last: u64,
    roots_der: &[Vec<u8>],
) -> Result<(), Problem> {
    for (i, bytes) in seal
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        let at = |seq: Option<u64>, what: String| problem("seal", i + 1, seq, what);
        let record = Record::parse(bytes)
            .filter(|r| r.kind == CHECKPOINT)
            .ok_or_else(|| at(None, "not a checkpoint record".into()))?;
        signer::check(&record, roots_der).map_err(|e| {
            at(
                Some(record.seq),
                format!("sealed checkpoint does not verify: {e}"),
            )
        })?;
        match by_seq.get(&record.seq) {
            None if record.seq > last => {
                return Err(at(
                    Some(record.seq),
                    format!(
                        "the trail ends at record {last}, but a checkpoint at record {} was \
                         sealed: the trail was cut short",
                        record.seq
                    ),
                ))
            }
            Some(found) if *found == bytes => {}
            _ => {
                return Err(at(
                    Some(record.seq),
                    format!(
                        "the trail's record {} is not the sealed checkpoint: altered",
                        record.seq
                    ),
                ))
            }
        }
    }
    Ok(())
}

fn file_index(record: &Record) -> Option<u64> {
    record
        .fields
        .get("file")
        .and_then(serde_json::Value::as_u64)
}

fn parse_file(f: &TrailFile) -> Result<Vec<Line<'_>>, Problem> {
    let mut out = Vec::new();
    let bytes = f.bytes.as_slice();
    if !bytes.is_empty() && !bytes.ends_with(b"\n") {
        let number = bytes.split(|b| *b == b'\n').count();
        return Err(problem(
            &f.name,
            number,
            None,
            "the file ends inside a record: cut short",
        ));
    }
    for (i, bytes) in bytes.split(|b| *b == b'\n').enumerate() {
        if bytes.is_empty() {
            continue;
        }
        let record = Record::parse(bytes).ok_or_else(|| {
            problem(
                &f.name,
                i + 1,
                None,
                "not a record (JSON with seq, time, prev and type)",
            )
        })?;
        out.push(Line {
            file: &f.name,
            number: i + 1,
            bytes,
            record,
        });
    }
    Ok(out)
}
