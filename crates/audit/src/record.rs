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
use std::net::SocketAddr;

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
    let mut out = String::with_capacity(64);
    hash_into(line, &mut out);
    out
}

/// [`hash`], written over `out` (the writer keeps one string for the chain's last hash).
pub fn hash_into(line: &[u8], out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let d = digest(&SHA256, line);
    out.clear();
    for b in d.as_ref() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
}

/// The four keys every record starts with; an event's fields never use them.
const RESERVED: [&str; 4] = ["seq", "time", "prev", "type"];

/// An event's fields, serialized once as they are added: the members of a JSON object,
/// without its braces, in the order added. The data path builds one per decision, so it is
/// one string, not a map (docs/audit.md, "Cost").
///
/// Fields named like the four every record starts with (`seq`, `time`, `prev`, `type`) are
/// ignored, so a line always has exactly one of each.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fields(String);

impl Fields {
    /// No fields, with room for `bytes` of them.
    pub fn with_capacity(bytes: usize) -> Fields {
        Fields(String::with_capacity(bytes))
    }

    /// Starts member `k`; `false` (and nothing written) when `k` is reserved.
    fn key(&mut self, k: &str) -> bool {
        if RESERVED.contains(&k) {
            return false;
        }
        if !self.0.is_empty() {
            self.0.push(',');
        }
        escape_into(&mut self.0, k);
        self.0.push(':');
        true
    }

    /// A string field.
    pub fn str(&mut self, k: &str, v: &str) -> &mut Fields {
        if self.key(k) {
            escape_into(&mut self.0, v);
        }
        self
    }

    /// A string field, when there is a value.
    pub fn opt_str(&mut self, k: &str, v: Option<&str>) -> &mut Fields {
        match v {
            Some(v) => self.str(k, v),
            None => self,
        }
    }

    /// A number field.
    pub fn u64(&mut self, k: &str, v: u64) -> &mut Fields {
        if self.key(k) {
            push_u64(&mut self.0, v);
        }
        self
    }

    /// A socket address, as a string field in its `Display` form.
    pub fn socket_addr(&mut self, k: &str, v: &SocketAddr) -> &mut Fields {
        if self.key(k) {
            // Never needs an escape: digits, dots, colons, brackets, hex and `%` scope ids.
            self.0.push('"');
            push_socket_addr(&mut self.0, v);
            self.0.push('"');
        }
        self
    }

    /// A `null` field.
    pub fn null(&mut self, k: &str) -> &mut Fields {
        if self.key(k) {
            self.0.push_str("null");
        }
        self
    }

    /// Any JSON value (for the rare structured ones).
    pub fn value(&mut self, k: &str, v: &Value) -> &mut Fields {
        if self.key(k) {
            let _ = write!(self.0, "{v}");
        }
        self
    }

    /// The fields of `map`, in its order.
    pub fn from_map(map: &Map<String, Value>) -> Fields {
        let mut f = Fields::default();
        for (k, v) in map {
            f.value(k, v);
        }
        f
    }

    /// The serialized members.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Appends `s` as a JSON string (RFC 8259 section 7: quote, backslash and control characters
/// escaped; everything else as is, since the line is UTF-8).
fn escape_into(out: &mut String, s: &str) {
    out.push('"');
    // Almost every string in a record (keys, names, identities, addresses, paths) needs no
    // escape: one check over all its bytes, with no branch per byte, then one copy.
    let plain = !s.bytes().fold(false, |acc, b| {
        acc | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if plain {
        out.push_str(s);
        out.push('"');
        return;
    }
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let short = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        // `i` is at an ASCII byte, so both slices end on character boundaries.
        out.push_str(s.get(start..i).unwrap_or_default());
        if short.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(short);
        }
        start = i + 1;
    }
    out.push_str(s.get(start..).unwrap_or_default());
    out.push('"');
}

/// Appends `v` in decimal, without the formatting machinery (two numbers per record).
pub fn push_u64(out: &mut String, v: u64) {
    push_padded(out, v, 1);
}

/// Appends `v` in decimal, with leading zeros up to `width` digits (at most 20).
pub fn push_padded(out: &mut String, mut v: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let from = at.min(digits.len().saturating_sub(width));
    for &d in &digits[from..] {
        out.push(char::from(d));
    }
}

/// Appends `addr` as its `Display` form (`1.2.3.4:80`, `[::1]:80`); IPv4 without the
/// formatting machinery, since every decision record carries two addresses.
fn push_socket_addr(out: &mut String, addr: &SocketAddr) {
    match addr {
        SocketAddr::V4(a) => {
            for (i, o) in a.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_u64(out, u64::from(o));
            }
            out.push(':');
            push_u64(out, u64::from(a.port()));
        }
        SocketAddr::V6(a) => {
            let _ = write!(out, "{a}");
        }
    }
}

/// One record's line (no newline): `seq`, `time`, `prev` and `type`, then the event's
/// `fields` in their order (a verifier hashes the bytes as written and never needs an order).
pub fn line(seq: u64, time: &str, prev: &str, kind: &str, fields: &Fields) -> String {
    let mut out = String::with_capacity(fields.0.len() + prev.len() + 80);
    line_into(&mut out, seq, time, prev, kind, fields);
    out
}

/// [`line`], appended to `out` (the writer builds a batch's lines in one buffer).
pub fn line_into(out: &mut String, seq: u64, time: &str, prev: &str, kind: &str, fields: &Fields) {
    out.push_str("{\"seq\":");
    push_u64(out, seq);
    out.push_str(",\"time\":");
    escape_into(out, time);
    out.push_str(",\"prev\":");
    escape_into(out, prev);
    out.push_str(",\"type\":");
    escape_into(out, kind);
    if !fields.0.is_empty() {
        out.push(',');
        out.push_str(&fields.0);
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_lowercase_hex_sha256() {
        // FIPS 180-2 test vectors.
        assert_eq!(
            hash(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hash(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_line_is_the_json_it_claims_to_be_whatever_the_strings_hold() {
        let tricky = [
            "",
            "plain",
            "quote \" and backslash \\",
            "newline\n tab\t cr\r",
            "\u{0}\u{1}\u{1f}\u{7f}",
            "utf-8: é ∑ 🦀",
            "\\u0041 is not unescaped",
        ];
        for (i, s) in tricky.iter().enumerate() {
            let mut f = Fields::default();
            f.str("value", s)
                .u64("n", i as u64)
                .null("none")
                .opt_str("absent", None);
            f.opt_str("key \"quoted\"", Some(s));
            let l = line(7, "2026-12-04T00:00:00.000Z", GENESIS, "decision", &f);
            let r = Record::parse(l.as_bytes()).unwrap_or_else(|| panic!("{l}"));
            assert_eq!(
                (r.seq, r.kind.as_str(), r.prev.as_str()),
                (7, "decision", GENESIS)
            );
            assert_eq!(r.fields["value"], Value::from(*s), "{l}");
            assert_eq!(r.fields["key \"quoted\""], Value::from(*s), "{l}");
            assert_eq!(r.fields["n"], Value::from(i as u64));
            assert_eq!(r.fields["none"], Value::Null);
            assert!(!r.fields.contains_key("absent"));
        }
    }

    #[test]
    fn reserved_keys_are_never_written_twice() {
        let mut f = Fields::default();
        f.u64("seq", 99)
            .str("type", "forged")
            .str("time", "x")
            .str("prev", "y");
        f.str("ok", "yes");
        let mut m = Map::new();
        m.insert("seq".into(), 5.into());
        m.insert("kept".into(), true.into());
        let l = line(1, "t", GENESIS, "decision", &f);
        assert_eq!(l.matches("\"seq\"").count(), 1, "{l}");
        assert_eq!(l.matches("\"type\"").count(), 1, "{l}");
        let r = Record::parse(l.as_bytes()).unwrap();
        assert_eq!((r.seq, r.kind.as_str()), (1, "decision"));
        let from_map = Fields::from_map(&m);
        assert_eq!(from_map.as_str(), "\"kept\":true");
    }

    #[test]
    fn numbers_and_addresses_are_written_as_display_writes_them() {
        for v in [0, 7, 10, 99, 100, 65_535, 1_000_000_007, u64::MAX] {
            let mut out = String::new();
            push_u64(&mut out, v);
            assert_eq!(out, v.to_string());
        }
        let addrs = [
            "0.0.0.0:0",
            "10.0.0.1:8080",
            "255.255.255.255:65535",
            "127.0.0.1:15008",
            "[::1]:443",
            "[fe80::1%2]:80",
            "[2001:db8::ff00:42:8329]:5432",
        ];
        for a in addrs {
            let addr: SocketAddr = a.parse().expect(a);
            let mut f = Fields::default();
            f.socket_addr("a", &addr);
            assert_eq!(f.as_str(), format!("\"a\":\"{addr}\""));
            let l = line(1, "t", GENESIS, "decision", &f);
            let r = Record::parse(l.as_bytes()).expect(a);
            assert_eq!(r.fields["a"], Value::from(addr.to_string()));
        }
    }
}
