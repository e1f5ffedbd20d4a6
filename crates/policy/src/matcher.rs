//! Istio value matching, shared by the L4 evaluator and the (later) HTTP evaluator.
//!
//! istio/api `security/v1beta1/authorization_policy.proto` (message `Rule`): "Any string field in
//! the rule supports Exact, Prefix, Suffix and Presence match: Exact match: "abc" will match on
//! value "abc". Prefix match: "abc*" ... Suffix match: "*abc" ... Presence match: "*" will match
//! when value is not empty."
//!
//! Matching is LITERAL. Istio compiled some fields to Envoy regexes without escaping the user's
//! text, so `app.v1` also matched `appXv1` (CVE-2026-39350); Ward never builds a regex.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Why a policy value is not a valid pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// Istio `CheckEmptyValues`: "empty value not allowed".
    #[error("empty value is not allowed")]
    Empty,
    /// Neither an IP address nor a CIDR block.
    #[error("bad IP address or CIDR block {0:?}")]
    BadIpBlock(String),
    /// Not a decimal port in 1..=65535.
    #[error("bad port {0:?}: must be a number in 1..=65535")]
    BadPort(String),
    /// Not `sa` or `ns/sa`, or contains a wildcard.
    #[error("bad service account {value:?}: {reason}")]
    BadServiceAccount {
        /// The value as written.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A path whose `{*}`/`{**}` template is malformed.
    #[error("bad path template {value:?}: {reason}")]
    BadPathTemplate {
        /// The value as written.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// An Istio string pattern: `abc` exact, `abc*` prefix, `*abc` suffix, `*` non-empty.
///
/// Serialized back in the Istio form, so `/config_dump` reads like the policy that was written.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum StringMatch {
    /// The value must equal this string.
    Exact(String),
    /// The value must start with this non-empty string.
    Prefix(String),
    /// The value must end with this non-empty string.
    Suffix(String),
    /// The value must be present and non-empty (`*`; Istio generates the regex `.+`).
    Presence,
}

impl StringMatch {
    /// Parses one Istio value, in the order Istio uses (istio/istio
    /// `pilot/pkg/security/authz/matcher/string.go`, `StringMatcherWithPrefix`): `*` first, then
    /// a leading `*` (suffix), then a trailing `*` (prefix), else exact. A `*` anywhere else is a
    /// literal character.
    pub fn parse(value: &str) -> Result<StringMatch, PatternError> {
        if value.is_empty() {
            return Err(PatternError::Empty);
        }
        Ok(if value == "*" {
            StringMatch::Presence
        } else if let Some(suffix) = value.strip_prefix('*') {
            StringMatch::Suffix(suffix.to_string())
        } else if let Some(prefix) = value.strip_suffix('*') {
            StringMatch::Prefix(prefix.to_string())
        } else {
            StringMatch::Exact(value.to_string())
        })
    }

    /// Whether `candidate` matches, comparing bytes exactly.
    pub fn matches(&self, candidate: &str) -> bool {
        match self {
            StringMatch::Exact(exact) => candidate == exact,
            StringMatch::Prefix(prefix) => candidate.starts_with(prefix.as_str()),
            StringMatch::Suffix(suffix) => candidate.ends_with(suffix.as_str()),
            StringMatch::Presence => !candidate.is_empty(),
        }
    }

    /// Whether `candidate` matches ignoring ASCII case. For `hosts`: "The match is
    /// case-insensitive" (istio/api authorization_policy.proto, `Operation.hosts`).
    pub fn matches_ignore_ascii_case(&self, candidate: &str) -> bool {
        let candidate = candidate.as_bytes();
        match self {
            StringMatch::Exact(exact) => candidate.eq_ignore_ascii_case(exact.as_bytes()),
            StringMatch::Prefix(prefix) => candidate
                .get(..prefix.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes())),
            StringMatch::Suffix(suffix) => candidate
                .len()
                .checked_sub(suffix.len())
                .and_then(|start| candidate.get(start..))
                .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix.as_bytes())),
            StringMatch::Presence => !candidate.is_empty(),
        }
    }
}

impl fmt::Display for StringMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StringMatch::Exact(exact) => f.write_str(exact),
            StringMatch::Prefix(prefix) => write!(f, "{prefix}*"),
            StringMatch::Suffix(suffix) => write!(f, "*{suffix}"),
            StringMatch::Presence => f.write_str("*"),
        }
    }
}

impl TryFrom<String> for StringMatch {
    type Error = PatternError;

    fn try_from(value: String) -> Result<StringMatch, PatternError> {
        StringMatch::parse(&value)
    }
}

impl From<StringMatch> for String {
    fn from(m: StringMatch) -> String {
        m.to_string()
    }
}

/// One Istio field with its `not` form, e.g. `principals` + `notPrincipals`.
///
/// Istio: values in one field are OR-ed; "`notX`: a list of negative match" — the attribute must
/// match none of them. Both parts empty means the field is not set and matches anything.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", bound(deserialize = "T: Deserialize<'de>"))]
pub struct ValueMatch<T> {
    /// The attribute must match at least one of these (if any are given).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<T>,
    /// The attribute must match none of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<T>,
}

impl<T> Default for ValueMatch<T> {
    fn default() -> Self {
        ValueMatch {
            values: Vec::new(),
            not_values: Vec::new(),
        }
    }
}

impl<T> ValueMatch<T> {
    /// Neither the field nor its `not` form was set.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty() && self.not_values.is_empty()
    }

    /// Whether an attribute matches, given how to match it against one pattern.
    pub fn matches_with(&self, mut matches_one: impl FnMut(&T) -> bool) -> bool {
        (self.values.is_empty() || self.values.iter().any(&mut matches_one))
            && !self.not_values.iter().any(matches_one)
    }
}

/// Parses an IP block: "Single IP (e.g. "203.0.113.4") and CIDR (e.g. "203.0.113.0/24") are
/// supported" (istio/api authorization_policy.proto, `Source.ip_blocks`). A single address is a
/// /32 or /128.
pub fn parse_ip_block(value: &str) -> Result<IpNet, PatternError> {
    if value.is_empty() {
        return Err(PatternError::Empty);
    }
    let bad = || PatternError::BadIpBlock(value.to_string());
    if value.contains('/') {
        IpNet::from_str(value)
            .map(|net| net.trunc())
            .map_err(|_| bad())
    } else {
        IpAddr::from_str(value).map(IpNet::from).map_err(|_| bad())
    }
}

/// Parses a port in 1..=65535. Istio accepts 0 as well; no connection has port 0, so Ward
/// rejects it as a likely mistake.
pub fn parse_port(value: &str) -> Result<u16, PatternError> {
    if value.is_empty() {
        return Err(PatternError::Empty);
    }
    // `u16::from_str` would accept a leading '+'; Istio's ParseUint does not.
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PatternError::BadPort(value.to_string()));
    }
    match value.parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(PatternError::BadPort(value.to_string())),
    }
}

/// A `serviceAccounts` value: the peer's namespace and service account, compared literally.
///
/// Istio compiles `ns/sa` to `spiffe://.+/ns/<ns>/(.+/|)sa/<sa>(/.+)?`; Ward compares the
/// peer's parsed namespace and service account, which is the same for Istio identities and
/// cannot be fooled by regex metacharacters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServiceAccountMatch {
    /// Namespace of the service account.
    pub namespace: String,
    /// Name of the service account.
    pub name: String,
}

impl ServiceAccountMatch {
    /// Parses `sa` (in `default_namespace`) or `ns/sa`. istio/istio
    /// `pkg/config/security/security.go` `CheckServiceAccount`: no wildcards, at most one `/`,
    /// no empty part, at most 320 characters.
    pub fn parse(
        value: &str,
        default_namespace: &str,
    ) -> Result<ServiceAccountMatch, PatternError> {
        let bad = |reason| PatternError::BadServiceAccount {
            value: value.to_string(),
            reason,
        };
        if value.is_empty() {
            return Err(PatternError::Empty);
        }
        if value.contains('*') {
            return Err(bad("wildcards are not allowed"));
        }
        if value.len() > 320 {
            return Err(bad("longer than 320 characters"));
        }
        let (namespace, name) = match value.split_once('/') {
            Some((ns, sa)) => (ns, sa),
            None => (default_namespace, value),
        };
        if name.contains('/') {
            return Err(bad(
                "expected 'serviceAccount' or 'namespace/serviceAccount'",
            ));
        }
        if namespace.is_empty() || name.is_empty() {
            return Err(bad("empty namespace or service account"));
        }
        Ok(ServiceAccountMatch {
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
    }

    /// Whether a peer in `namespace` running as `service_account` matches.
    pub fn matches(&self, namespace: &str, service_account: &str) -> bool {
        self.namespace == namespace && self.name == service_account
    }
}

impl fmt::Display for ServiceAccountMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Istio `{*}` path template operator: exactly one path segment.
pub const MATCH_ONE_SEGMENT: &str = "{*}";
/// Istio `{**}` path template operator: any number of segments; must be the last operator.
pub const MATCH_ANY_SEGMENTS: &str = "{**}";

/// A `paths` value: an Istio string pattern, or a `{*}`/`{**}` template (kept validated, as
/// written, for the HTTP evaluator).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum PathMatch {
    /// Exact, prefix, suffix or presence on the normalized path.
    String(StringMatch),
    /// A path template such as `/api/{*}/items/{**}`.
    Template(String),
}

impl PathMatch {
    /// Parses a path, applying istio/istio `pkg/config/security/security.go`
    /// `CheckValidPathTemplate`: `{*}` and `{**}` must be whole segments, "{**} is not the last
    /// operator" is an error, any other `{` or `}` is an error, and the other segments of a
    /// template must be RFC 3986 pchar literals (so no `*` and no empty segment).
    pub fn parse(value: &str) -> Result<PathMatch, PatternError> {
        if value.is_empty() {
            return Err(PatternError::Empty);
        }
        let bad = |reason| PatternError::BadPathTemplate {
            value: value.to_string(),
            reason,
        };
        let is_template = value.contains(MATCH_ONE_SEGMENT) || value.contains(MATCH_ANY_SEGMENTS);
        let mut seen_match_any = false;
        for segment in value.trim_matches('/').split('/') {
            let is_operator = segment == MATCH_ONE_SEGMENT || segment == MATCH_ANY_SEGMENTS;
            if is_operator && seen_match_any {
                return Err(bad("{**} is not the last operator"));
            }
            if is_operator {
                seen_match_any = segment == MATCH_ANY_SEGMENTS;
                continue;
            }
            if segment.contains(['{', '}']) {
                return Err(bad("'{' or '}' outside a whole {*} or {**} segment"));
            }
            if is_template && !is_pchar_literal(segment) {
                return Err(bad(
                    "a template segment is empty or not an RFC 3986 literal",
                ));
            }
        }
        if is_template {
            Ok(PathMatch::Template(value.to_string()))
        } else {
            StringMatch::parse(value).map(PathMatch::String)
        }
    }
}

impl PathMatch {
    /// Whether a NORMALIZED path ([`crate::path::normalize`], query excluded) matches.
    ///
    /// Istio string forms compare bytes (case-sensitive). Templates follow istio/api
    /// authorization_policy.proto, `Operation.paths`: "`{*}` matches a single path segment" (at
    /// least one character) and "`{**}` matches zero or more path segments"; like Envoy's
    /// `uri_template`, `{**}` stands for any run of characters, `/` included, so `/a/{**}`
    /// matches `/a/` and `/a/b/c` but not `/a`, and `/a/{**}/z` needs a `/z` after `/a/`.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::String(m) => m.matches(path),
            PathMatch::Template(template) => template_matches(template, path),
        }
    }
}

/// `{*}`/`{**}` template matching; see [`PathMatch::matches`].
fn template_matches(template: &str, path: &str) -> bool {
    let Some((head, tail)) = template.split_once(MATCH_ANY_SEGMENTS) else {
        return segments_match(template, path);
    };
    // `head` ends with the '/' before `{**}` (compile-time check: operators are whole
    // segments). The path must have as many '/' up to where `{**}` starts.
    let slashes = head.matches('/').count();
    let start = if slashes == 0 {
        Some(0)
    } else {
        path.match_indices('/').nth(slashes - 1).map(|(i, _)| i + 1)
    };
    let Some(start) = start else {
        return false;
    };
    let (path_head, rest) = path.split_at(start);
    // Only literal segments follow the last operator, so `tail` is compared as text.
    segments_match(head, path_head) && rest.len() >= tail.len() && rest.ends_with(tail)
}

/// Segment by segment: equal literals, or `{*}` against a non-empty segment.
fn segments_match(template: &str, path: &str) -> bool {
    let mut template_segments = template.split('/');
    let mut path_segments = path.split('/');
    loop {
        match (template_segments.next(), path_segments.next()) {
            (None, None) => return true,
            (Some(MATCH_ONE_SEGMENT), Some(segment)) if !segment.is_empty() => {}
            (Some(literal), Some(segment))
                if literal != MATCH_ONE_SEGMENT && literal == segment => {}
            _ => return false,
        }
    }
}

/// `^[a-zA-Z0-9-._~%!$&'()+,;:@=]+$` (istio `security.go`, `validLiteral`).
fn is_pchar_literal(segment: &str) -> bool {
    !segment.is_empty()
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()+,;:@=".contains(&b))
}

impl fmt::Display for PathMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathMatch::String(m) => m.fmt(f),
            PathMatch::Template(t) => f.write_str(t),
        }
    }
}

impl TryFrom<String> for PathMatch {
    type Error = PatternError;

    fn try_from(value: String) -> Result<PathMatch, PatternError> {
        PathMatch::parse(&value)
    }
}

impl From<PathMatch> for String {
    fn from(m: PathMatch) -> String {
        m.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn string_match_table() {
        // (pattern, candidate, matches)
        let table: &[(&str, &str, bool)] = &[
            ("abc", "abc", true),
            ("abc", "abcd", false),
            ("abc", "ABC", false),
            ("abc*", "abc", true),
            ("abc*", "abcd", true),
            ("abc*", "xabc", false),
            ("*abc", "abc", true),
            ("*abc", "xabc", true),
            ("*abc", "abcx", false),
            ("*", "x", true),
            ("*", "", false),
            // A '*' in the middle is literal, never a glob.
            ("a*c", "abc", false),
            ("a*c", "a*c", true),
            // "**" is a suffix match on a literal '*'.
            ("**", "a*", true),
            ("**", "ab", false),
            // Regex metacharacters are literal (CVE-2026-39350).
            ("app.v1", "appXv1", false),
            ("app.v1", "app.v1", true),
            ("a[b", "a[b", true),
            ("a[b", "ab", false),
            (".*", "anything", false),
            ("cluster.local/ns/*", "cluster.local/ns/foo/sa/bar", true),
            ("cluster.local/ns/*", "clusterXlocal/ns/foo/sa/bar", false),
            ("*/ns/foo/sa/bar", "td/ns/foo/sa/bar", true),
            ("*/ns/foo/sa/bar", "td/ns/foo/sa/barx", false),
        ];
        for (pattern, candidate, want) in table {
            let m = StringMatch::parse(pattern).unwrap();
            assert_eq!(m.matches(candidate), *want, "{pattern:?} vs {candidate:?}");
        }
    }

    #[test]
    fn string_match_ignore_case_table() {
        let table: &[(&str, &str, bool)] = &[
            ("Example.com", "example.COM", true),
            ("example.com", "example.org", false),
            ("*.Example.com", "api.EXAMPLE.com", true),
            ("*.example.com", "example.com", false),
            ("API.*", "api.example.com", true),
            ("api.*", "ap", false),
            ("*", "x", true),
            ("*", "", false),
            // Multi-byte candidates must not panic on a byte slice.
            ("é*", "éa", true),
            ("*é", "aé", true),
            ("ab*", "é", false),
        ];
        for (pattern, candidate, want) in table {
            let m = StringMatch::parse(pattern).unwrap();
            assert_eq!(
                m.matches_ignore_ascii_case(candidate),
                *want,
                "{pattern:?} vs {candidate:?}"
            );
        }
    }

    #[test]
    fn string_match_parse_and_display_round_trip() {
        let table: &[(&str, StringMatch)] = &[
            ("abc", StringMatch::Exact("abc".into())),
            ("abc*", StringMatch::Prefix("abc".into())),
            ("*abc", StringMatch::Suffix("abc".into())),
            ("*", StringMatch::Presence),
            ("**", StringMatch::Suffix("*".into())),
            ("*a*", StringMatch::Suffix("a*".into())),
        ];
        for (text, want) in table {
            let parsed = StringMatch::parse(text).unwrap();
            assert_eq!(&parsed, want);
            assert_eq!(parsed.to_string(), *text);
            let json = serde_json::to_string(&parsed).unwrap();
            assert_eq!(serde_json::from_str::<StringMatch>(&json).unwrap(), parsed);
        }
        assert_eq!(StringMatch::parse(""), Err(PatternError::Empty));
        assert!(serde_json::from_str::<StringMatch>("\"\"").is_err());
    }

    #[test]
    fn value_match_table() {
        let vm = |values: &[&str], not_values: &[&str]| ValueMatch {
            values: values
                .iter()
                .map(|v| StringMatch::parse(v).unwrap())
                .collect(),
            not_values: not_values
                .iter()
                .map(|v| StringMatch::parse(v).unwrap())
                .collect(),
        };
        // (values, not_values, candidate, matches)
        let table: &[(&[&str], &[&str], &str, bool)] = &[
            (&[], &[], "x", true),
            (&["a", "b"], &[], "b", true),
            (&["a", "b"], &[], "c", false),
            (&[], &["a"], "a", false),
            (&[], &["a"], "b", true),
            (&["a*"], &["ab"], "ab", false),
            (&["a*"], &["ab"], "ac", true),
            (&["*"], &[], "", false),
        ];
        for (values, not_values, candidate, want) in table {
            let m = vm(values, not_values);
            assert_eq!(
                m.matches_with(|p| p.matches(candidate)),
                *want,
                "{values:?}/{not_values:?} vs {candidate:?}"
            );
        }
    }

    #[test]
    fn ip_block_table() {
        let table: &[(&str, Option<&str>)] = &[
            ("10.0.0.1", Some("10.0.0.1/32")),
            ("10.0.0.0/8", Some("10.0.0.0/8")),
            ("10.1.2.3/8", Some("10.0.0.0/8")),
            ("::1", Some("::1/128")),
            ("fd00::/8", Some("fd00::/8")),
            ("10.0.0.0/33", None),
            ("10.0.0", None),
            ("host.example", None),
            (" 10.0.0.1", None),
            ("", None),
        ];
        for (text, want) in table {
            let got = parse_ip_block(text).ok().map(|net| net.to_string());
            assert_eq!(got.as_deref(), *want, "{text:?}");
        }
    }

    #[test]
    fn port_table() {
        let table: &[(&str, Option<u16>)] = &[
            ("80", Some(80)),
            ("65535", Some(65535)),
            ("1", Some(1)),
            ("0", None),
            ("65536", None),
            ("+80", None),
            ("-1", None),
            ("8o", None),
            ("", None),
            ("99999999999999999999", None),
        ];
        for (text, want) in table {
            assert_eq!(parse_port(text).ok(), *want, "{text:?}");
        }
    }

    #[test]
    fn service_account_table() {
        let table: &[(&str, Option<(&str, &str)>)] = &[
            ("sleep", Some(("policy-ns", "sleep"))),
            ("other/sleep", Some(("other", "sleep"))),
            ("a/b/c", None),
            ("ns/*", None),
            ("*", None),
            ("/sleep", None),
            ("ns/", None),
            ("", None),
        ];
        for (text, want) in table {
            let got = ServiceAccountMatch::parse(text, "policy-ns").ok();
            let want = want.map(|(ns, sa)| ServiceAccountMatch {
                namespace: ns.into(),
                name: sa.into(),
            });
            assert_eq!(got, want, "{text:?}");
        }
        let sa = ServiceAccountMatch::parse("app.v1", "ns").unwrap();
        assert!(sa.matches("ns", "app.v1"));
        assert!(!sa.matches("ns", "appXv1"));
        assert!(!sa.matches("nsx", "app.v1"));
    }

    #[test]
    fn path_table() {
        // (path, Ok(is_template) or Err)
        let table: &[(&str, Option<bool>)] = &[
            ("/foo", Some(false)),
            ("/foo*", Some(false)),
            ("*.txt", Some(false)),
            ("/foo/{*}/bar", Some(true)),
            ("/foo/{**}", Some(true)),
            ("/{*}/{**}", Some(true)),
            ("/foo/{**}/bar", Some(true)),
            ("/foo/{**}/{*}", None),
            ("/foo/{**}/{**}", None),
            ("/foo/{*}.txt", None),
            ("/foo/{bar}", None),
            ("/foo/{*}/b*r", None),
            ("/foo//{*}", None),
            ("", None),
        ];
        for (text, want) in table {
            let got = PathMatch::parse(text)
                .ok()
                .map(|p| matches!(p, PathMatch::Template(_)));
            assert_eq!(got, *want, "{text:?}");
        }
    }

    #[test]
    fn path_match_table() {
        // (pattern, normalized path, matches)
        let table: &[(&str, &str, bool)] = &[
            ("/admin", "/admin", true),
            ("/admin", "/admin/", false),
            ("/admin", "/ADMIN", false),
            ("/admin", "/admin;jsessionid=1", false),
            ("/admin*", "/admin;jsessionid=1", true),
            ("/admin*", "/admin/x", true),
            ("/admin*", "/administrator", true),
            ("/admin*", "/Admin", false),
            ("*.txt", "/a/b.txt", true),
            ("*.txt", "/a/b.txt/", false),
            ("*", "/", true),
            ("/a/{*}", "/a/b", true),
            ("/a/{*}", "/a/", false),
            ("/a/{*}", "/a/b/c", false),
            ("/a/{*}", "/a", false),
            ("/a/{*}/c", "/a/b/c", true),
            ("/a/{*}/c", "/a/b/d", false),
            ("/{*}/{*}", "/x/y", true),
            ("/{*}/{*}", "/x", false),
            ("/a/{**}", "/a/", true),
            ("/a/{**}", "/a/b", true),
            ("/a/{**}", "/a/b/c/d", true),
            ("/a/{**}", "/a", false),
            ("/a/{**}", "/ab/c", false),
            ("/a/{**}", "/b/a/c", false),
            ("/a/{**}/z", "/a/b/c/z", true),
            ("/a/{**}/z", "/a/z", false),
            ("/a/{**}/z", "/a/b/z/y", false),
            ("/a/{**}/y/z", "/a/b/y/z", true),
            ("/{*}/b/{**}", "/x/b/c/d", true),
            ("/{*}/b/{**}", "/x/c/c/d", false),
            ("/{*}/b/{**}", "/x/b", false),
            ("/{**}", "/", true),
            ("/{**}", "/anything/at/all", true),
            ("/a/{*}/{**}", "/a/b/", true),
            ("/a/{*}/{**}", "/a//", false),
        ];
        for (pattern, path, want) in table {
            let m = PathMatch::parse(pattern).unwrap();
            assert_eq!(m.matches(path), *want, "{pattern:?} vs {path:?}");
        }
    }

    proptest! {
        #[test]
        fn exact_patterns_match_only_themselves(value in "[^*]{1,20}", other in ".{0,20}") {
            let m = StringMatch::parse(&value).unwrap();
            prop_assert!(m.matches(&value));
            prop_assert_eq!(m.matches(&other), other == value);
        }

        #[test]
        fn path_templates_never_panic(
            template in "(/(\\{\\*\\}|\\{\\*\\*\\}|[a-c]{1,2})){1,5}",
            path in "[/a-c]{0,12}",
        ) {
            if let Ok(m) = PathMatch::parse(&template) {
                let _ = m.matches(&path);
                // `{**}` as the last operator matches at least what `{*}` does.
                let wider = template.replacen("{*}", "{**}", 1);
                if let (Ok(w), false) = (PathMatch::parse(&wider), template.contains("{**}")) {
                    if wider.ends_with("{**}") && m.matches(&path) {
                        prop_assert!(w.matches(&path), "{} vs {}", wider, path);
                    }
                }
            }
        }

        #[test]
        fn parse_never_panics_and_round_trips(value in ".{0,40}") {
            if let Ok(m) = StringMatch::parse(&value) {
                prop_assert_eq!(m.to_string(), value.clone());
                let _ = m.matches_ignore_ascii_case(&value);
            }
            let _ = parse_ip_block(&value);
            let _ = parse_port(&value);
            let _ = ServiceAccountMatch::parse(&value, "ns");
            if let Ok(p) = PathMatch::parse(&value) {
                prop_assert_eq!(p.to_string(), value);
            }
        }
    }
}
