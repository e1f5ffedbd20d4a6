//! [`SpiffeId`]: the name of a workload, `spiffe://<trust-domain>/ns/<namespace>/sa/<sa>`.
//!
//! Parsing is strict and never normalizes: an input either is exactly the canonical spelling of
//! one identity or is rejected. Two spellings of one identity (case, `%2F`, `..`) would let a
//! policy written for one be bypassed by the other (docs/threats.md, "Identities and
//! certificate chains").

use std::fmt;
use std::str::FromStr;

use crate::IdentityError;

/// The only accepted scheme and separator.
const SCHEME: &str = "spiffe://";

/// spiffe/spiffe standards/SPIFFE-ID.md §2.3: "SPIFFE implementations MUST support SPIFFE URIs
/// up to 2048 bytes in length and SHOULD NOT generate URIs of length greater than 2048 bytes."
pub(crate) const MAX_ID_LEN: usize = 2048;

/// spiffe/spiffe standards/SPIFFE-ID.md §2.3: "a maximum length of a trust domain name is 255
/// bytes".
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// A SPIFFE id of a workload: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
///
/// Only valid ids can be built, so holding one proves its parts are canonical.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

impl SpiffeId {
    /// Builds the id of `service_account` in `namespace` of `trust_domain`, validating each part
    /// with the same rules as [`SpiffeId::parse`].
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        check_trust_domain(trust_domain)?;
        check_segment("namespace", namespace)?;
        check_segment("service account", service_account)?;
        let len = SCHEME.len() + trust_domain.len() + namespace.len() + service_account.len() + 8;
        if len > MAX_ID_LEN {
            return Err(IdentityError::TooLong { len });
        }
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        })
    }

    /// Strict parse of `spiffe://<td>/ns/<ns>/sa/<sa>`.
    ///
    /// Rejects: another scheme or any case variant of it, an upper-case or otherwise invalid
    /// trust domain, userinfo or port, any other path shape, empty or dot segments,
    /// percent-encoding, query or fragment, NUL or control characters, more than 2048 bytes.
    pub fn parse(uri: &str) -> Result<Self, IdentityError> {
        if uri.len() > MAX_ID_LEN {
            return Err(IdentityError::TooLong { len: uri.len() });
        }
        // These three are checked on the whole input first so that the error names the attack
        // (CVE-2025-66220: NUL in a SAN) rather than the segment it happened to land in.
        if uri.chars().any(char::is_control) {
            return Err(IdentityError::ControlChar);
        }
        if uri.contains('%') {
            return Err(IdentityError::PercentEncoded);
        }
        // spiffe/spiffe standards/SPIFFE-ID.md §2: "Valid SPIFFE IDs MUST use the `spiffe`
        // scheme, include a non-zero trust domain name, and MUST NOT include a query or fragment
        // component."
        if uri.contains(['?', '#']) {
            return Err(IdentityError::QueryOrFragment);
        }
        let rest = uri.strip_prefix(SCHEME).ok_or(IdentityError::Scheme)?;
        let (trust_domain, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        check_trust_domain(trust_domain)?;

        // Istio pkg/spiffe/spiffe.go: identities are "spiffe://<trust-domain>/ns/<ns>/sa/<sa>".
        let mut segments = path.split('/');
        let shape = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        );
        let (namespace, service_account) = match shape {
            (Some(""), Some("ns"), Some(ns), Some("sa"), Some(sa), None) => (ns, sa),
            _ => return Err(IdentityError::PathShape),
        };
        check_segment("namespace", namespace)?;
        check_segment("service account", service_account)?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        })
    }

    /// The trust domain, e.g. `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The Kubernetes-style namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The service account.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The AuthorizationPolicy form, without scheme: `td/ns/x/sa/y`.
    ///
    /// istio/api security/v1beta1/authorization.proto, `Source.principals`: "A list of peer
    /// identities derived from the peer certificate. The peer identity is in the format of
    /// `"<TRUST_DOMAIN>/ns/<NAMESPACE>/sa/<SERVICE_ACCOUNT>"`".
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

/// spiffe/spiffe standards/SPIFFE-ID.md §2.1: "Trust domain names MUST contain only lowercase
/// letters, numbers, dots, dashes, and underscores ([a-z0-9.-_])" and "The `userinfo` and `port`
/// parts of the authority component MUST NOT be set, and the `:` delimiter MUST NOT be present."
fn check_trust_domain(td: &str) -> Result<(), IdentityError> {
    let reason = if td.is_empty() {
        "empty"
    } else if td.len() > MAX_TRUST_DOMAIN_LEN {
        "longer than 255 bytes"
    } else if td.contains('@') {
        "userinfo is not allowed"
    } else if td.contains(':') {
        "a port is not allowed"
    } else if td.bytes().any(|b| b.is_ascii_uppercase()) {
        "must be lower case"
    } else if !td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        "only [a-z0-9.-_] is allowed"
    } else {
        return Ok(());
    };
    Err(IdentityError::TrustDomain { reason })
}

/// spiffe/spiffe standards/SPIFFE-ID.md §2.2: path segments use "letters, numbers, dots, dashes,
/// and underscores ([a-zA-Z0-9.-_])", are not empty, and are not the dot segments `.` or `..`.
fn check_segment(part: &'static str, segment: &str) -> Result<(), IdentityError> {
    let reason = if segment.is_empty() {
        "empty"
    } else if segment == "." || segment == ".." {
        "dot segments are not allowed"
    } else if !segment
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        "only [A-Za-z0-9.-_] is allowed"
    } else {
        return Ok(());
    };
    Err(IdentityError::Segment { part, reason })
}

impl fmt::Display for SpiffeId {
    /// `spiffe://td/ns/x/sa/y`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for SpiffeId {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_canonical_ids() {
        let cases = [
            (
                "spiffe://cluster.local/ns/default/sa/sleep",
                "cluster.local",
                "default",
                "sleep",
            ),
            (
                "spiffe://td-1_x.example/ns/A.b-c_D/sa/x",
                "td-1_x.example",
                "A.b-c_D",
                "x",
            ),
            ("spiffe://a/ns/.../sa/..a", "a", "...", "..a"),
            (
                "spiffe://cluster.local/ns/ns/sa/sa",
                "cluster.local",
                "ns",
                "sa",
            ),
        ];
        for (uri, td, ns, sa) in cases {
            let id = SpiffeId::parse(uri).unwrap_or_else(|e| panic!("{uri}: {e}"));
            assert_eq!(
                (id.trust_domain(), id.namespace(), id.service_account()),
                (td, ns, sa),
                "{uri}"
            );
            assert_eq!(id.to_string(), uri);
            assert_eq!(id, SpiffeId::new(td, ns, sa).unwrap());
            assert_eq!(uri.parse::<SpiffeId>().unwrap(), id);
        }
    }

    #[test]
    fn rejects_every_non_canonical_spelling() {
        use IdentityError as E;
        let td = |reason| E::TrustDomain { reason };
        let seg = |part, reason| E::Segment { part, reason };
        let long = format!("spiffe://cluster.local/ns/default/sa/{}", "a".repeat(2048));
        let cases: Vec<(&str, IdentityError)> = vec![
            ("", E::Scheme),
            ("cluster.local/ns/a/sa/b", E::Scheme),
            ("SPIFFE://cluster.local/ns/a/sa/b", E::Scheme),
            ("Spiffe://cluster.local/ns/a/sa/b", E::Scheme),
            ("https://cluster.local/ns/a/sa/b", E::Scheme),
            ("spiffe:/cluster.local/ns/a/sa/b", E::Scheme),
            (" spiffe://cluster.local/ns/a/sa/b", E::Scheme),
            ("spiffe://Cluster.Local/ns/a/sa/b", td("must be lower case")),
            ("spiffe:///ns/a/sa/b", td("empty")),
            ("spiffe://", td("empty")),
            (
                "spiffe://user@cluster.local/ns/a/sa/b",
                td("userinfo is not allowed"),
            ),
            (
                "spiffe://cluster.local:443/ns/a/sa/b",
                td("a port is not allowed"),
            ),
            (
                "spiffe://clüster.local/ns/a/sa/b",
                td("only [a-z0-9.-_] is allowed"),
            ),
            (
                "spiffe://cluster local/ns/a/sa/b",
                td("only [a-z0-9.-_] is allowed"),
            ),
            ("spiffe://cluster.local", E::PathShape),
            ("spiffe://cluster.local/", E::PathShape),
            ("spiffe://cluster.local/ns/a/sa/b/", E::PathShape),
            ("spiffe://cluster.local/ns/a/sa", E::PathShape),
            ("spiffe://cluster.local/ns/a/sa/b/c", E::PathShape),
            ("spiffe://cluster.local//ns/a/sa/b", E::PathShape),
            ("spiffe://cluster.local/NS/a/sa/b", E::PathShape),
            ("spiffe://cluster.local/sa/b/ns/a", E::PathShape),
            (
                "spiffe://cluster.local/ns/a/sa/a/../../ns/admin/sa/x",
                E::PathShape,
            ),
            ("spiffe://cluster.local/ns//sa/b", seg("namespace", "empty")),
            (
                "spiffe://cluster.local/ns/a/sa/",
                seg("service account", "empty"),
            ),
            (
                "spiffe://cluster.local/ns/../sa/b",
                seg("namespace", "dot segments are not allowed"),
            ),
            (
                "spiffe://cluster.local/ns/a/sa/.",
                seg("service account", "dot segments are not allowed"),
            ),
            (
                "spiffe://cluster.local/ns/a b/sa/b",
                seg("namespace", "only [A-Za-z0-9.-_] is allowed"),
            ),
            (
                "spiffe://cluster.local/ns/a/sa/b\\c",
                seg("service account", "only [A-Za-z0-9.-_] is allowed"),
            ),
            (
                "spiffe://cluster.local/ns/a/sa/é",
                seg("service account", "only [A-Za-z0-9.-_] is allowed"),
            ),
            (
                "spiffe://cluster.local/ns/a/sa/b;c",
                seg("service account", "only [A-Za-z0-9.-_] is allowed"),
            ),
            ("spiffe://cluster.local/ns/a%2Fsa/sa/b", E::PercentEncoded),
            ("spiffe://cluster.local/ns/a/sa/%61", E::PercentEncoded),
            ("spiffe://cluster.local/ns/a/sa/b?x=1", E::QueryOrFragment),
            ("spiffe://cluster.local/ns/a/sa/b#frag", E::QueryOrFragment),
            (
                "spiffe://cluster.local/ns/a/sa/admin\0.evil",
                E::ControlChar,
            ),
            ("spiffe://cluster.local/ns/a/sa/b\n", E::ControlChar),
            ("spiffe://cluster.local/ns/a/sa/b\u{7f}", E::ControlChar),
            ("spiffe://cluster.local/ns/a/sa/b\u{85}", E::ControlChar),
            (long.as_str(), E::TooLong { len: long.len() }),
        ];
        for (uri, want) in cases {
            assert_eq!(SpiffeId::parse(uri), Err(want), "{uri:?}");
        }
    }

    #[test]
    fn new_validates_parts() {
        let cases = [
            ("Cluster.local", "a", "b"),
            ("", "a", "b"),
            ("cluster.local", "..", "b"),
            ("cluster.local", "a", "b/sa/c"),
            ("cluster.local", "a", ""),
            ("cluster.local", "a\0", "b"),
        ];
        for (td, ns, sa) in cases {
            assert!(SpiffeId::new(td, ns, sa).is_err(), "{td:?} {ns:?} {sa:?}");
        }
        let sa = "a".repeat(2030);
        assert!(matches!(
            SpiffeId::new("cluster.local", "ns", &sa),
            Err(IdentityError::TooLong { .. })
        ));
    }

    #[test]
    fn length_limit_is_inclusive() {
        let prefix = "spiffe://cluster.local/ns/a/sa/";
        let exact = format!("{prefix}{}", "b".repeat(MAX_ID_LEN - prefix.len()));
        assert_eq!(exact.len(), MAX_ID_LEN);
        let id = SpiffeId::parse(&exact).unwrap();
        assert_eq!(
            SpiffeId::new("cluster.local", "a", id.service_account()),
            Ok(id)
        );
        let over = format!("{exact}b");
        assert!(SpiffeId::parse(&over).is_err());
    }

    #[test]
    fn principal_has_no_scheme() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/sleep").unwrap();
        assert_eq!(id.principal(), "cluster.local/ns/default/sa/sleep");
    }

    #[test]
    fn serde_is_the_uri_string() {
        let id = SpiffeId::new("cluster.local", "foo", "bar").unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, r#""spiffe://cluster.local/ns/foo/sa/bar""#);
        assert_eq!(serde_json::from_str::<SpiffeId>(&json).unwrap(), id);
        let bad = serde_json::from_str::<SpiffeId>("\"spiffe://Cluster.local/ns/a/sa/b\"");
        assert!(bad.is_err());
    }

    fn segment() -> impl Strategy<Value = String> {
        "[A-Za-z0-9._-]{1,20}".prop_filter("dot segment", |s| s != "." && s != "..")
    }

    proptest! {
        #[test]
        fn parse_never_panics(input in any::<String>()) {
            let _ = SpiffeId::parse(&input);
        }

        #[test]
        fn parse_never_panics_near_valid(suffix in any::<String>()) {
            let _ = SpiffeId::parse(&format!("spiffe://cluster.local/ns/{suffix}"));
            let _ = SpiffeId::parse(&format!("spiffe://{suffix}"));
        }

        #[test]
        fn valid_parts_round_trip(td in "[a-z0-9._-]{1,30}", ns in segment(), sa in segment()) {
            let id = SpiffeId::new(&td, &ns, &sa).unwrap();
            let text = id.to_string();
            prop_assert_eq!(SpiffeId::parse(&text).unwrap(), id);
            prop_assert_eq!(text, format!("spiffe://{td}/ns/{ns}/sa/{sa}"));
        }

        #[test]
        fn whatever_parses_prints_back_identically(input in "spiffe://[a-zA-Z0-9.:@/%_-]{0,40}") {
            if let Ok(id) = SpiffeId::parse(&input) {
                prop_assert_eq!(id.to_string(), input);
            }
        }

        #[test]
        fn one_bad_byte_is_rejected(
            ns in segment(),
            sa in segment(),
            at in any::<prop::sample::Index>(),
            bad in prop::sample::select(vec!['\0', '%', '?', '#', '/', ' ', '\\', '\n', 'é', ':']),
        ) {
            let mut sa = sa;
            let i = at.index(sa.len() + 1);
            sa.insert(i, bad);
            let uri = format!("spiffe://cluster.local/ns/{ns}/sa/{sa}");
            prop_assert!(SpiffeId::parse(&uri).is_err(), "{:?}", uri);
        }
    }
}
