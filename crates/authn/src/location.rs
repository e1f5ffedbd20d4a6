//! Where tokens are in a request: finding every token at a configured location, and removing
//! them before the request goes to the app.
//!
//! The rule both halves keep: every occurrence of a configured location counts. A token Ward
//! finds is verified or the request is refused; a token Ward strips is removed in every spelling
//! Ward would have read it in. So the app never gets, at a configured location, a token Ward did
//! not verify (docs/threats.md, "JWT and JWKS": an app that trusts "the proxy checked it"
//! must be right).
//!
//! - Header, with a prefix (`Authorization` / `Bearer `): the prefix is matched ASCII
//!   case-insensitively (the auth scheme is case-insensitive, RFC 9110 §11.1), anywhere in the
//!   value as Envoy does; the token is the rest of the value, spaces trimmed, so
//!   `Bearer  <t>` is `<t>` and `Bearer <t> junk` is refused, never read as `<t>`. A value
//!   without the prefix (`Basic ...`) holds no token for this location.
//! - Header without a prefix: the whole value, trimmed.
//! - Query parameter: the query is split on `&`; a field whose name, percent-decoded (`+` is a
//!   space, as in HTML form encoding), equals the parameter is a token, so `access%5Ftoken` is
//!   `access_token`; its value is percent-decoded too (Envoy decodes both). Each field is its
//!   own token: two copies, however spelled, are two tokens.
//! - Cookie: every `cookie` header, split on `;`; the name compared after trimming spaces
//!   (lenient cookie parsers trim it), the value without surrounding spaces and quotes.
//!
//! An empty value (`access_token=`, `x-jwt:`) is no token: it cannot be mistaken for one.

use std::borrow::Cow;
use std::fmt;

/// A place a token was read from, to remove before the request goes upstream.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TokenLocation {
    /// A request header (lower-case name); remove the header.
    Header(String),
    /// A query parameter; remove it from the query string.
    QueryParam(String),
    /// A cookie in the `cookie` header; remove that cookie.
    Cookie(String),
}

/// The parts of a request tokens can be in. Cookies are read from the `cookie` headers.
#[derive(Clone, Copy)]
pub struct TokenSources<'a> {
    /// Request headers, names lower-case, repeated headers as repeated entries.
    pub headers: &'a [(String, String)],
    /// The raw query string (after `?`), if any.
    pub query: Option<&'a str>,
}

impl fmt::Debug for TokenSources<'_> {
    // Values may be tokens: print names only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("TokenSources")
            .field("headers", &names)
            .field("query", &self.query.map(|_| "<redacted>"))
            .finish()
    }
}

/// What the proxy changes in a request to remove the tokens at one [`TokenLocation`]
/// ([`TokenLocation::removal`]).
#[derive(Clone, PartialEq, Eq)]
pub enum TokenRemoval<'a> {
    /// Remove every value of this header (lower-case name).
    Header(&'a str),
    /// Replace the query string with this one; `None`: drop the query.
    Query(Option<String>),
    /// Replace all `cookie` headers with this one value; `None`: drop them.
    Cookie(Option<String>),
}

impl fmt::Debug for TokenRemoval<'_> {
    // The rest of a query or cookie header may hold other secrets: print the kind only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenRemoval::Header(name) => f.debug_tuple("Header").field(name).finish(),
            TokenRemoval::Query(q) => {
                write!(f, "Query({})", if q.is_some() { "..." } else { "None" })
            }
            TokenRemoval::Cookie(c) => {
                write!(f, "Cookie({})", if c.is_some() { "..." } else { "None" })
            }
        }
    }
}

impl TokenLocation {
    /// How to remove every token at this location from a request with this raw `query` and
    /// these `cookie` header values: all fields whose decoded name is the parameter, all
    /// cookies of that name, or the whole header.
    pub fn removal(&self, query: Option<&str>, cookie_headers: &[&str]) -> TokenRemoval<'_> {
        match self {
            TokenLocation::Header(name) => TokenRemoval::Header(name),
            TokenLocation::QueryParam(param) => TokenRemoval::Query(query.and_then(|q| {
                let kept: Vec<&str> = q
                    .split('&')
                    .filter(|field| !names_param(field, param))
                    .collect();
                (!kept.is_empty()).then(|| kept.join("&"))
            })),
            TokenLocation::Cookie(cookie) => {
                let kept: Vec<&str> = cookie_headers
                    .iter()
                    .flat_map(|v| v.split(';'))
                    .map(str::trim)
                    .filter(|pair| !pair.is_empty() && cookie_name(pair) != Some(cookie.as_str()))
                    .collect();
                TokenRemoval::Cookie((!kept.is_empty()).then(|| kept.join("; ")))
            }
        }
    }
}

/// A configured token location, compiled.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Place {
    /// A header (lower-case name) and the value prefix, ASCII-lower-cased (it is matched
    /// case-insensitively, so `Bearer ` and `bearer ` are one place).
    Header { name: String, prefix: String },
    /// A query parameter, by decoded name.
    Param(String),
    /// A cookie, by name.
    Cookie(String),
}

impl Place {
    /// A header place; `name` is already lower-case.
    pub(crate) fn header(name: String, prefix: &str) -> Place {
        Place::Header {
            name,
            prefix: prefix.to_ascii_lowercase(),
        }
    }

    pub(crate) fn token_location(&self) -> TokenLocation {
        match self {
            Place::Header { name, .. } => TokenLocation::Header(name.clone()),
            Place::Param(name) => TokenLocation::QueryParam(name.clone()),
            Place::Cookie(name) => TokenLocation::Cookie(name.clone()),
        }
    }

    /// The token(s) at this place: one per header value holding the prefix, per query field,
    /// per cookie.
    pub(crate) fn extract<'a>(&self, req: &TokenSources<'a>) -> Vec<Cow<'a, str>> {
        match self {
            Place::Header { name, prefix } => req
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .filter_map(|(_, value)| header_token(value, prefix))
                .map(Cow::Borrowed)
                .collect(),
            Place::Param(name) => req
                .query
                .into_iter()
                .flat_map(|q| q.split('&'))
                .filter(|field| names_param(field, name))
                .filter_map(|field| field.split_once('=').map(|(_, v)| v))
                .filter(|v| !v.is_empty())
                .map(|v| match percent_decode(v) {
                    Cow::Borrowed(_) => Cow::Borrowed(v),
                    Cow::Owned(bytes) => Cow::Owned(String::from_utf8_lossy(&bytes).into_owned()),
                })
                .collect(),
            Place::Cookie(name) => req
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
                .flat_map(|(_, value)| value.split(';'))
                .filter(|pair| cookie_name(pair.trim()) == Some(name.as_str()))
                .filter_map(|pair| pair.split_once('='))
                .map(|(_, v)| v.trim().trim_matches('"'))
                .filter(|v| !v.is_empty())
                .map(Cow::Borrowed)
                .collect(),
        }
    }
}

/// The token in one header value; `prefix` is lower-case (see the module doc).
fn header_token<'v>(value: &'v str, prefix: &str) -> Option<&'v str> {
    let rest = if prefix.is_empty() {
        value
    } else {
        let at = value
            .as_bytes()
            .windows(prefix.len())
            .position(|w| w.eq_ignore_ascii_case(prefix.as_bytes()))?;
        // `prefix` is valid UTF-8 matched byte for byte (ASCII letters up to case), so the match
        // ends on a character boundary; `get` keeps that from ever panicking regardless.
        value.get(at + prefix.len()..)?
    };
    let token = rest.trim_matches([' ', '\t']);
    (!token.is_empty()).then_some(token)
}

/// Whether the query field `field` (`name=value` or `name`) has the decoded name `param`.
fn names_param(field: &str, param: &str) -> bool {
    let name = field.split_once('=').map_or(field, |(n, _)| n);
    percent_decode(name).as_ref() == param.as_bytes()
}

/// The name of a trimmed cookie pair (`name=value`), spaces around it trimmed; `None` without
/// `=` (a nameless cookie, RFC 6265bis §5.6).
fn cookie_name(pair: &str) -> Option<&str> {
    pair.split_once('=').map(|(n, _)| n.trim())
}

/// RFC 3986 §2.1 percent-decoding, with `+` as a space (HTML form encoding, which is how query
/// strings are read by the frameworks apps use). A `%` not followed by two hex digits stays as
/// it is.
fn percent_decode(s: &str) -> Cow<'_, [u8]> {
    if !s.contains(['%', '+']) {
        return Cow::Borrowed(s.as_bytes());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = |at: usize| bytes.get(at).and_then(|h| (*h as char).to_digit(16));
        match (b, hex(i + 1), hex(i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                // Two hex digits: at most 0xff, so the cast is exact.
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Request headers as (name, value).
    type Headers<'a> = Vec<(&'a str, &'a str)>;

    fn sources(headers: &[(&str, &str)]) -> Vec<(String, String)> {
        headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn found(place: &Place, headers: &[(&str, &str)], query: Option<&str>) -> Vec<String> {
        let headers = sources(headers);
        let req = TokenSources {
            headers: &headers,
            query,
        };
        place
            .extract(&req)
            .into_iter()
            .map(Cow::into_owned)
            .collect()
    }

    #[test]
    fn header_tokens() {
        let bearer = Place::header("authorization".into(), "Bearer ");
        let bare = Place::header("x-jwt".into(), "");
        let cases: Vec<(&Place, Headers<'_>, Vec<&str>)> = vec![
            (
                &bearer,
                vec![("authorization", "Bearer a.b.c")],
                vec!["a.b.c"],
            ),
            // RFC 9110 §11.1: "It uses a case-insensitive token to identify the
            // authentication scheme".
            (
                &bearer,
                vec![("authorization", "bearer a.b.c")],
                vec!["a.b.c"],
            ),
            (
                &bearer,
                vec![("authorization", "BEARER a.b.c")],
                vec!["a.b.c"],
            ),
            (
                &bearer,
                vec![("authorization", "bEaReR a.b.c")],
                vec!["a.b.c"],
            ),
            // RFC 9110 §11.4: `credentials = auth-scheme [ 1*SP ...`: more spaces are legal.
            (
                &bearer,
                vec![("authorization", "Bearer   a.b.c")],
                vec!["a.b.c"],
            ),
            // The rest of the value is the token: junk makes it fail, never ignored.
            (
                &bearer,
                vec![("authorization", "Bearer a.b.c junk")],
                vec!["a.b.c junk"],
            ),
            (
                &bearer,
                vec![("authorization", "Bearer a.b.c, Bearer x.y.z")],
                vec!["a.b.c, Bearer x.y.z"],
            ),
            (
                &bearer,
                vec![("authorization", "Bearer \"a.b.c\"")],
                vec!["\"a.b.c\""],
            ),
            (
                &bearer,
                vec![("authorization", "Basic dXNlcjpwdw==")],
                vec![],
            ),
            (&bearer, vec![("authorization", "Bearer")], vec![]),
            (
                &bearer,
                vec![
                    ("Authorization", "Bearer a.b.c"),
                    ("authorization", "bearer d.e.f"),
                ],
                vec!["a.b.c", "d.e.f"],
            ),
            (&bearer, vec![("x-other", "Bearer a.b.c")], vec![]),
            (&bare, vec![("x-jwt", " a.b.c ")], vec!["a.b.c"]),
            (&bare, vec![("x-jwt", "")], vec![]),
            (&bare, vec![("x-jwt", "Bearer a.b.c")], vec!["Bearer a.b.c"]),
        ];
        for (place, headers, want) in cases {
            assert_eq!(found(place, &headers, None), want, "{headers:?}");
        }
        assert!(Place::header("a".into(), "Bearer ") == Place::header("a".into(), "BEARER "));
    }

    #[test]
    fn query_tokens() {
        let place = Place::Param("access_token".into());
        let cases: Vec<(&str, Vec<&str>)> = vec![
            ("access_token=a.b.c", vec!["a.b.c"]),
            ("x=1&access_token=a.b.c&y=2", vec!["a.b.c"]),
            ("access%5Ftoken=a.b.c", vec!["a.b.c"]),
            ("access%5ftoken=a.b.c", vec!["a.b.c"]),
            ("%61ccess_token=a.b.c", vec!["a.b.c"]),
            (
                "access_token=a.b.c&access%5Ftoken=d.e.f",
                vec!["a.b.c", "d.e.f"],
            ),
            ("access_token=a%2Eb.c", vec!["a.b.c"]),
            ("access_token=", vec![]),
            ("access_token", vec![]),
            ("access_token%3Da.b.c", vec![]),
            ("Access_Token=a.b.c", vec![]),
            ("access_token2=a.b.c", vec![]),
            ("access+token=a.b.c", vec![]),
            ("access_token=a%zz", vec!["a%zz"]),
        ];
        for (query, want) in cases {
            assert_eq!(found(&place, &[], Some(query)), want, "{query}");
        }
        let spaced = Place::Param("access token".into());
        assert_eq!(found(&spaced, &[], Some("access+token=t")), ["t"]);
    }

    #[test]
    fn cookie_tokens() {
        let place = Place::Cookie("session".into());
        let cases: Vec<(Headers<'_>, Vec<&str>)> = vec![
            (vec![("cookie", "session=a.b.c")], vec!["a.b.c"]),
            (
                vec![("cookie", "a=1; session=\"a.b.c\"; b=2")],
                vec!["a.b.c"],
            ),
            (vec![("cookie", "session =a.b.c")], vec!["a.b.c"]),
            (
                vec![("cookie", "a=1"), ("cookie", "session=d.e.f")],
                vec!["d.e.f"],
            ),
            (vec![("cookie", "session=")], vec![]),
            (vec![("cookie", "session")], vec![]),
            (vec![("cookie", "Session=a.b.c")], vec![]),
        ];
        for (headers, want) in cases {
            assert_eq!(found(&place, &headers, None), want, "{headers:?}");
        }
    }

    #[test]
    fn removal_takes_every_spelling() {
        let param = TokenLocation::QueryParam("access_token".into());
        let query = |q: &str| match param.removal(Some(q), &[]) {
            TokenRemoval::Query(q) => q,
            other => panic!("{other:?}"),
        };
        assert_eq!(query("access_token=t"), None);
        assert_eq!(query("a=1&access%5Ftoken=t&b=2"), Some("a=1&b=2".into()));
        assert_eq!(
            query("access_token=t&x=access_token&access%5ftoken=u"),
            Some("x=access_token".into())
        );
        assert_eq!(query("a&&b=1"), Some("a&&b=1".into()));
        assert_eq!(param.removal(None, &[]), TokenRemoval::Query(None));

        let cookie = TokenLocation::Cookie("session".into());
        assert_eq!(
            cookie.removal(None, &["a=1; session=t", "session =u;b=2", "c"]),
            TokenRemoval::Cookie(Some("a=1; b=2; c".into()))
        );
        assert_eq!(
            cookie.removal(None, &["session=t"]),
            TokenRemoval::Cookie(None)
        );
        let header = TokenLocation::Header("authorization".into());
        assert_eq!(
            header.removal(Some("q"), &[]),
            TokenRemoval::Header("authorization")
        );
    }

    proptest! {
        /// Whatever the query, no field Ward reads as a token survives the removal, and every
        /// other field does, in order.
        #[test]
        fn removal_leaves_no_token(fields in prop::collection::vec(prop::sample::select(vec![
            "access_token=t", "access%5Ftoken=u", "access%5ftoken=", "%61ccess%5Ftoken=v",
            "access_token", "a=1", "x=access_token", "access_token2=w", "access+token=z", "",
        ]), 0..8)) {
            let query = fields.join("&");
            let place = Place::Param("access_token".into());
            let loc = place.token_location();
            let TokenRemoval::Query(rest) = loc.removal(Some(&query), &[]) else {
                panic!("not a query removal");
            };
            let rest = rest.unwrap_or_default();
            prop_assert!(found(&place, &[], Some(&rest)).is_empty(), "{query} -> {rest}");
            let kept: Vec<&str> = fields
                .iter()
                .copied()
                .filter(|f| !names_param(f, "access_token"))
                .collect();
            prop_assert_eq!(rest, kept.join("&"));
        }

        #[test]
        fn extraction_never_panics(value in ".{0,80}", prefix in ".{0,8}") {
            let place = Place::header("x".into(), &prefix);
            let _ = found(&place, &[("x", &value), ("cookie", &value)], Some(&value));
            let _ = found(&Place::Param(prefix.clone()), &[], Some(&value));
            let _ = found(&Place::Cookie(prefix), &[("cookie", &value)], None);
        }
    }
}
