//! Kubernetes object metadata: names, namespaces, labels and creation timestamps.
//!
//! Ward reads the standard `metadata` of every object and tolerates the fields a cluster adds
//! (`uid`, `resourceVersion`, `managedFields` ...) so that `kubectl get -o yaml` output loads
//! unchanged. Anything else is rejected. Names must be what Kubernetes would accept: they end up
//! in SPIFFE ids and in `namespace/name` keys, where a `/` or a space would be ambiguous.

use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde::Deserialize;
use time::{Date, Month};

use crate::decode::{decode, DecodeError};
use crate::diag::{code, Finding};
use crate::yaml::{push_key, Node};

/// The namespace of an object that names none (as `kubectl apply` without `-n`).
pub const DEFAULT_NAMESPACE: &str = "default";

/// An object's `metadata`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectMeta {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`, `default` when absent.
    pub namespace: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
    /// `metadata.creationTimestamp` (RFC 3339), which orders competing PeerAuthentications.
    pub creation_timestamp: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // the fields a cluster sets are read only so that they are accepted
struct RawMeta {
    name: Option<String>,
    namespace: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
    creation_timestamp: Option<String>,
    // Set by a cluster; present in `kubectl get -o yaml` output. Accepted and ignored.
    uid: Option<IgnoredAny>,
    resource_version: Option<IgnoredAny>,
    generation: Option<IgnoredAny>,
    managed_fields: Option<IgnoredAny>,
    owner_references: Option<IgnoredAny>,
    finalizers: Option<IgnoredAny>,
    generate_name: Option<IgnoredAny>,
}

/// Metadata as read, before validation: what the loader needs to name the object in messages
/// even when some of it is invalid.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ParsedMeta {
    pub(crate) meta: ObjectMeta,
    /// Whether `metadata.namespace` was written (the mesh ConfigMap's namespace matters).
    pub(crate) namespace_given: bool,
}

/// Reads and validates `metadata`. Returns what could be read and the problems found.
pub(crate) fn parse(node: Option<&Node>) -> (ParsedMeta, Vec<Finding>) {
    let mut findings = Vec::new();
    let Some(node) = node else {
        findings.push(Finding::error(
            code::INVALID,
            "metadata",
            "missing required field `metadata` (with `name`)",
        ));
        return (ParsedMeta::default(), findings);
    };
    let raw: RawMeta = match decode(node, "metadata") {
        Ok(raw) => raw,
        Err(err) => {
            findings.push(decode_finding(&err));
            // Still name the object in messages, as well as can be read.
            let text = |key: &str| node.get(key).and_then(Node::as_str).map(str::to_owned);
            let meta = ObjectMeta {
                name: text("name").unwrap_or_default(),
                namespace: text("namespace").unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
                ..ObjectMeta::default()
            };
            return (
                ParsedMeta {
                    meta,
                    namespace_given: false,
                },
                findings,
            );
        }
    };
    let namespace_given = raw.namespace.is_some();
    let meta = ObjectMeta {
        name: raw.name.unwrap_or_default(),
        namespace: raw
            .namespace
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
        labels: raw.labels.unwrap_or_default(),
        annotations: raw.annotations.unwrap_or_default(),
        creation_timestamp: raw.creation_timestamp,
    };
    if meta.name.is_empty() {
        findings.push(Finding::error(
            code::INVALID,
            "metadata.name",
            "missing required field `name`",
        ));
    } else if let Err(why) = check_subdomain(&meta.name) {
        findings.push(Finding::error(code::INVALID, "metadata.name", why));
    }
    if let Err(why) = check_label_name(&meta.namespace) {
        findings.push(Finding::error(code::INVALID, "metadata.namespace", why));
    }
    findings.extend(check_labels(&meta.labels, "metadata.labels"));
    if let Some(ts) = &meta.creation_timestamp {
        if parse_timestamp(ts).is_none() {
            findings.push(Finding::error(
                code::INVALID,
                "metadata.creationTimestamp",
                format!("`{ts}` is not an RFC 3339 timestamp such as 2024-05-01T12:00:00Z"),
            ));
        }
    }
    (
        ParsedMeta {
            meta,
            namespace_given,
        },
        findings,
    )
}

/// A decode error as a finding on its exact line.
pub(crate) fn decode_finding(err: &DecodeError) -> Finding {
    let code = match err {
        DecodeError::UnknownField { .. } => code::UNKNOWN_FIELD,
        DecodeError::Invalid { .. } => code::INVALID,
    };
    let mut finding = Finding::error(code, "", err.to_string());
    if let Some(at) = err.at() {
        finding.field = at.path.clone();
        finding.line = Some(at.line);
    }
    finding
}

/// A Kubernetes DNS-1123 subdomain (object names, service accounts): lowercase letters,
/// digits, `-` and `.`, starting and ending with a letter or digit, at most 253 characters.
pub(crate) fn check_subdomain(name: &str) -> Result<(), String> {
    let ok =
        !name.is_empty() && name.len() <= 253 && name.split('.').all(|part| is_label(part, 253));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid name: use lowercase letters, digits, `-` and `.`, \
             starting and ending with a letter or digit (RFC 1123 subdomain)"
        ))
    }
}

/// A Kubernetes DNS-1123 label (namespaces): lowercase letters, digits and `-`, starting and
/// ending with a letter or digit, at most 63 characters.
pub(crate) fn check_label_name(name: &str) -> Result<(), String> {
    if is_label(name, 63) {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid namespace: use at most 63 lowercase letters, digits and \
             `-`, starting and ending with a letter or digit (RFC 1123 label)"
        ))
    }
}

fn is_label(part: &str, max: usize) -> bool {
    let bytes = part.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= max
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

/// Kubernetes label syntax: key `[prefix/]name`, prefix a DNS subdomain, name and value at
/// most 63 characters of `[A-Za-z0-9._-]` starting and ending alphanumeric (value may be empty).
pub(crate) fn check_labels(labels: &BTreeMap<String, String>, path: &str) -> Vec<Finding> {
    let mut findings = Vec::new();
    for (key, value) in labels {
        let field = push_key(path, key);
        let (prefix, name) = match key.rsplit_once('/') {
            Some((prefix, name)) => (Some(prefix), name),
            None => (None, key.as_str()),
        };
        let prefix_ok = prefix.is_none_or(|p| check_subdomain(p).is_ok());
        if !prefix_ok || !is_label_value(name) || name.is_empty() {
            findings.push(Finding::error(
                code::INVALID,
                field.clone(),
                format!(
                    "`{key}` is not a valid label key: `[prefix/]name` with a name of at most 63 \
                     letters, digits, `-`, `_` or `.`"
                ),
            ));
        }
        if !is_label_value(value) {
            findings.push(Finding::error(
                code::INVALID,
                field,
                format!(
                    "`{value}` is not a valid label value: at most 63 letters, digits, `-`, `_` \
                     or `.`, starting and ending with a letter or digit"
                ),
            ));
        }
    }
    findings
}

fn is_label_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    bytes.is_empty()
        || (bytes.len() <= 63
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
            && bytes.last().is_some_and(u8::is_ascii_alphanumeric))
}

/// Parses an RFC 3339 timestamp (`2024-05-01T12:00:00Z`, `2024-05-01T14:00:00.5+02:00`) into
/// seconds and nanoseconds since the Unix epoch, UTC.
pub(crate) fn parse_timestamp(ts: &str) -> Option<(i64, u32)> {
    let b = ts.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(range)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let year = digits(0..4)?;
    let month = digits(5..7)?;
    let day = digits(8..10)?;
    let hour = digits(11..13)?;
    let minute = digits(14..16)?;
    let second = digits(17..19)?;
    if b.get(4) != Some(&b'-')
        || b.get(7) != Some(&b'-')
        || !matches!(b.get(10), Some(b'T' | b't' | b' '))
        || b.get(13) != Some(&b':')
        || b.get(16) != Some(&b':')
    {
        return None;
    }
    let mut i = 19;
    let mut nanos: u32 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            if i - start < 9 {
                nanos = nanos * 10 + u32::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start).min(9)..9 {
            nanos *= 10;
        }
    }
    let offset_seconds = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if i + 6 == b.len() && b.get(i + 3) == Some(&b':') => {
            let hours = digits(i + 1..i + 3)?;
            let minutes = digits(i + 4..i + 6)?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset = hours * 3600 + minutes * 60;
            if *sign == b'+' {
                offset
            } else {
                -offset
            }
        }
        _ => return None,
    };
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    // `time` checks the calendar (month 1-12, the month's days, leap years) and counts the days;
    // the clock is added by hand so that a leap second (`:60`) is the next minute's `:00`.
    let month = Month::try_from(u8::try_from(month).ok()?).ok()?;
    let date =
        Date::from_calendar_date(i32::try_from(year).ok()?, month, u8::try_from(day).ok()?).ok()?;
    let midnight = date.midnight().assume_utc().unix_timestamp();
    Some((
        midnight + hour * 3600 + minute * 60 + second - offset_seconds,
        nanos,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::parse_documents;
    use proptest::prelude::*;
    use time::OffsetDateTime;

    fn meta_of(yaml: &str) -> (ParsedMeta, Vec<Finding>) {
        let docs = parse_documents(yaml).unwrap();
        parse(docs[0].get("metadata"))
    }

    #[test]
    fn metadata_tolerates_cluster_fields_and_rejects_others() {
        let (parsed, findings) = meta_of(
            "metadata:\n  name: a\n  uid: 1\n  resourceVersion: \"2\"\n  generation: 3\n  managedFields: [{}]\n  ownerReferences: []\n  finalizers: [x]\n  generateName: a-\n  creationTimestamp: null\n",
        );
        assert_eq!(findings, vec![]);
        assert_eq!(parsed.meta.name, "a");
        assert_eq!(parsed.meta.namespace, "default");
        assert!(!parsed.namespace_given);

        let (_, findings) = meta_of("metadata:\n  name: a\n  namspace: b\n");
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].code, code::UNKNOWN_FIELD);
        assert_eq!(
            (findings[0].field.as_str(), findings[0].line),
            ("metadata", Some(3))
        );
        assert!(
            findings[0].message.contains("did you mean `namespace`?"),
            "{}",
            findings[0].message
        );
    }

    #[test]
    fn metadata_values_are_validated() {
        let cases = [
            ("metadata:\n  namespace: a\n", "metadata.name"),
            ("metadata:\n  name: Bad_Name\n", "metadata.name"),
            (
                "metadata:\n  name: a\n  namespace: a.b\n",
                "metadata.namespace",
            ),
            (
                "metadata:\n  name: a\n  labels: {\"bad key\": x}\n",
                "metadata.labels[\"bad key\"]",
            ),
            (
                "metadata:\n  name: a\n  labels: {app: \"a b\"}\n",
                "metadata.labels.app",
            ),
            (
                "metadata:\n  name: a\n  creationTimestamp: yesterday\n",
                "metadata.creationTimestamp",
            ),
            ("kind: X\n", "metadata"),
        ];
        for (yaml, field) in cases {
            let (_, findings) = meta_of(yaml);
            assert_eq!(
                findings
                    .iter()
                    .map(|f| f.field.as_str())
                    .collect::<Vec<_>>(),
                vec![field],
                "{yaml}"
            );
        }
    }

    #[test]
    fn names_follow_kubernetes_rules() {
        for ok in ["a", "a-b", "a.b-c", "0a", &"a".repeat(253)] {
            assert!(check_subdomain(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a..b", "a/b", &"a".repeat(254)] {
            assert!(check_subdomain(bad).is_err(), "{bad}");
        }
        for ok in ["default", "istio-system", &"a".repeat(63)] {
            assert!(check_label_name(ok).is_ok(), "{ok}");
        }
        for bad in ["a.b", "", &"a".repeat(64), "x/y"] {
            assert!(check_label_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timestamps_parse_to_utc() {
        let cases = [
            ("1970-01-01T00:00:00Z", Some((0, 0))),
            ("2024-05-01T12:00:00Z", Some((1_714_564_800, 0))),
            ("2024-05-01T14:00:00+02:00", Some((1_714_564_800, 0))),
            ("2024-05-01T12:00:00.5Z", Some((1_714_564_800, 500_000_000))),
            ("2024-02-29T00:00:00Z", Some((1_709_164_800, 0))),
            ("2000-02-29T00:00:00Z", Some((951_782_400, 0))),
            ("2100-02-28T23:59:59Z", Some((4_107_542_399, 0))),
            ("2100-03-01T00:00:00Z", Some((4_107_542_400, 0))),
            ("1969-12-31T23:59:59Z", Some((-1, 0))),
            ("2016-12-31T23:59:60Z", Some((1_483_228_800, 0))),
            ("2023-02-29T00:00:00Z", None),
            ("2100-02-29T00:00:00Z", None),
            ("1900-02-29T00:00:00Z", None),
            ("2024-04-31T00:00:00Z", None),
            ("2024-05-00T00:00:00Z", None),
            ("2024-00-01T00:00:00Z", None),
            ("2024-05-01", None),
            ("2024-05-01T12:00:00", None),
            ("2024-05-01T12:00:00.Z", None),
            ("2024-13-01T12:00:00Z", None),
            ("2024-05-01T12:00:00+2:00", None),
        ];
        for (ts, want) in cases {
            assert_eq!(parse_timestamp(ts), want, "{ts}");
        }
    }

    proptest! {
        #[test]
        fn timestamp_parser_never_panics(s in "\\PC{0,40}") {
            let _ = parse_timestamp(&s);
        }

        #[test]
        fn timestamp_order_matches_time_order(a in 0i64..4_000_000_000, b in 0i64..4_000_000_000) {
            let fmt = |t: i64| {
                let at = OffsetDateTime::from_unix_timestamp(t).unwrap();
                format!(
                    "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
                    at.year(),
                    u8::from(at.month()),
                    at.day(),
                    at.hour(),
                    at.minute(),
                    at.second()
                )
            };
            prop_assert_eq!(parse_timestamp(&fmt(a)), Some((a, 0)));
            prop_assert_eq!(parse_timestamp(&fmt(a)) < parse_timestamp(&fmt(b)), a < b);
        }
    }
}
