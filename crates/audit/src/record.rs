//! The record format: one JSON object per line.
//!
//! Every record has `seq` (1, 2, 3 ... across every file of the trail), `time` (RFC 3339, UTC),
//! `prev` (the SHA-256, hex, of the previous record's line, without its newline; [`GENESIS`] for
//! the first record) and `type`:
//! - `file`: the first record of each file, with `file` (0, 1, 2 ...);
//! - `checkpoint`: a signature over everything before it ([`crate::signer`]);
//! - anything else is an event, e.g. `decision`, with its own fields.
//!
//! A record's hash is the hash of its exact bytes, so a verifier never re-serializes.

use std::fmt::Write as _;

use aws_lc_rs::digest::{digest, SHA256};
use serde_json::{Map, Value};

/// The `prev` of the first record of a trail.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The record type that opens each file.
pub const FILE: &str = "file";
/// The record type of a signed checkpoint.
pub const CHECKPOINT: &str = "checkpoint";

/// A parsed record.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// Its sequence number.
    pub seq: u64,
    /// The hash of the previous record.
    pub prev: String,
    /// Its type.
    pub kind: String,
    /// RFC 3339 time.
    pub time: String,
    /// Every field, as written.
    pub fields: Map<String, Value>,
}

impl Record {
    /// Parses one line; `None` if it is not a record (not JSON, or a required field is missing
    /// or of the wrong type).
    pub fn parse(line: &[u8]) -> Option<Record> {
        let Value::Object(fields) = serde_json::from_slice(line).ok()? else {
            return None;
        };
        Some(Record {
            seq: fields.get("seq")?.as_u64()?,
            prev: fields.get("prev")?.as_str()?.to_owned(),
            kind: fields.get("type")?.as_str()?.to_owned(),
            time: fields.get("time")?.as_str()?.to_owned(),
            fields,
        })
    }
}

/// SHA-256 of `line`, lowercase hex.
pub fn hash(line: &[u8]) -> String {
    let d = digest(&SHA256, line);
    let mut out = String::with_capacity(64);
    for b in d.as_ref() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// One record's line (no newline): `seq`, `time`, `prev`, `type` and `fields`, keys in
/// alphabetical order (a verifier hashes the bytes as written and never needs the order).
/// Fields named like the four are ignored.
pub fn line(seq: u64, time: &str, prev: &str, kind: &str, fields: &Map<String, Value>) -> String {
    let mut map = Map::new();
    map.insert("seq".into(), seq.into());
    map.insert("time".into(), time.into());
    map.insert("prev".into(), prev.into());
    map.insert("type".into(), kind.into());
    for (k, v) in fields {
        if !matches!(k.as_str(), "seq" | "time" | "prev" | "type") {
            map.insert(k.clone(), v.clone());
        }
    }
    Value::Object(map).to_string()
}
