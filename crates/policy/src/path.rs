//! Request-target normalization: the ONE canonical path that is both matched by `paths` rules
//! and forwarded to the application, so the two can never disagree (CVE-2019-9901,
//! CVE-2021-31920).
//!
//! [`normalize`] accepts an origin-form target (`/a/b?q`) or an absolute-form one
//! (`http://host/a/b?q`, RFC 9112 §3.2.2; the authority is dropped here: the proxy chooses one
//! authority for routing and `hosts` matching). Ward's rules, in order:
//!
//! 1. The whole target is checked first: longer than [`MAX_TARGET_LEN`] (8 KiB) → `TooLong`;
//!    a control character, NUL or DEL → `ControlChar`; a space or tab → `Whitespace`; a
//!    non-ASCII byte → `NonAscii`. RFC 9112 §3.2 allows none of them in a request-target.
//! 2. `#fragment` is split off and dropped: never matched, never forwarded (CVE-2021-39156,
//!    CVE-2021-32779). Then `?query` is split off: forwarded verbatim, never matched ("paths are
//!    matched without the query string", istio tests/integration/security/authz_test.go).
//! 3. Percent-escapes in the path are decoded ONCE, and only for unreserved characters
//!    (RFC 3986 §2.3: `ALPHA / DIGIT / "-" / "." / "_" / "~"`), which RFC 3986 §6.2.2.2 says are
//!    equivalent decoded or not: `/%61dmin` is `/admin`, `/%2e%2e/admin` is `/../admin`. Every
//!    other escape stays encoded with upper-case hex (§6.2.2.1). Decoding once means
//!    `%252e` stays `%252e`, never `.` (no double decoding).
//! 4. Ward REJECTS, rather than rewrites: `%2F`/`%2f` (an encoded `/`), `%5C`/`%5c` (an encoded
//!    `\`), a raw `\`, an escape of a control character (`%00`-`%1F`, `%7F`), and a malformed
//!    escape. Rewriting `%2F` to `/` would change what the application sees (many treat `%2F`
//!    as data), and keeping it would let `/public%2F..%2Fadmin` reach an application that
//!    decodes it into `/admin` after authorization passed. A backslash is a separator for some
//!    servers and a character for others. Refusing them (the proxy answers 400) is the only
//!    choice that is safe for every application behind Ward; Envoy offers the same as
//!    `path_with_escaped_slashes_action: REJECT_REQUEST`.
//! 5. Duplicate slashes are merged (`//admin` → `/admin`, Istio's `MERGE_SLASHES`), then dot
//!    segments are removed as RFC 3986 §5.2.4 `remove_dot_segments` does (`/a/./b/../c` →
//!    `/a/c`; `..` never climbs above `/`). A path ending in `/`, `/.` or `/..` keeps a trailing
//!    `/`.
//!
//! Case is preserved: paths are case-sensitive (RFC 3986 §6.2.2.1, and so in Istio and Envoy),
//! so `/ADMIN` and `/admin` are different paths. Protect both, or use a prefix the application
//! cannot case-fold around.
//!
//! Matrix parameters (`;`): KEPT as part of the path, as in Istio and Envoy. `;` is a legal
//! path character that real applications use (JAX-RS matrix parameters, `;jsessionid`), so
//! rejecting it would break them. The consequence: `/admin;jsessionid=1` is a different path
//! from `/admin`, while a servlet container strips the parameter and serves `/admin`. An exact
//! or suffix DENY can therefore be bypassed; ALLOW rules only fail closed. **DENY rules on
//! paths must use prefix matches (`/admin*`)**, which cover `/admin;x`, `/admin/` and
//! `/admin/x` alike; ALLOW rules may be exact.
//!
//! The result is idempotent: normalizing an already normalized path returns it unchanged.

/// The longest request-target Ward accepts, in bytes (8 KiB).
pub const MAX_TARGET_LEN: usize = 8 * 1024;

/// A request-target in Ward's canonical form: what `paths` rules match and what is forwarded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NormalizedPath {
    /// The normalized path: starts with `/`, no query, no fragment, no `//`, no dot segments.
    pub path: String,
    /// The query after `?`, verbatim and without the `?`; forwarded, never matched.
    pub query: Option<String>,
}

impl NormalizedPath {
    /// The origin-form target to forward: the path, then `?query` if there was one.
    pub fn to_origin_form(&self) -> String {
        match &self.query {
            Some(query) => format!("{}?{query}", self.path),
            None => self.path.clone(),
        }
    }
}

/// Why a request-target is refused (the proxy answers 400 Bad Request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The target is empty.
    #[error("empty request-target")]
    Empty,
    /// Longer than [`MAX_TARGET_LEN`].
    #[error("request-target longer than {MAX_TARGET_LEN} bytes")]
    TooLong,
    /// Neither origin-form (`/path`) nor absolute-form (`http://host/path`): `*`, an authority,
    /// a relative path, another scheme or an empty authority.
    #[error("request-target is neither origin-form nor http(s) absolute-form")]
    NotOriginForm,
    /// `%2F` or `%2f`: an encoded slash.
    #[error("encoded slash (%2F) in path")]
    EncodedSlash,
    /// `%5C` or `%5c`: an encoded backslash.
    #[error("encoded backslash (%5C) in path")]
    EncodedBackslash,
    /// A raw backslash in the path.
    #[error("backslash in path")]
    Backslash,
    /// A `%` not followed by two hexadecimal digits.
    #[error("malformed percent-escape in path")]
    BadPercent,
    /// A control character, NUL or DEL, raw anywhere in the target or percent-encoded in the
    /// path.
    #[error("control character in request-target")]
    ControlChar,
    /// A space or another whitespace character.
    #[error("whitespace in request-target")]
    Whitespace,
    /// A byte outside ASCII (it must be percent-encoded).
    #[error("non-ASCII byte in request-target")]
    NonAscii,
}

/// Normalize a request-target (origin-form "/a/b?q" or absolute-form "http://h/a"), the single
/// canonical form used both for policy matching AND forwarded to the app. Rules: module doc.
pub fn normalize(target: &str) -> Result<NormalizedPath, PathError> {
    check_characters(target)?;
    let path_and_rest = origin_part(target)?;
    // RFC 3986 §3: "path [ "?" query ] [ "#" fragment ]": the first '#' ends the query too.
    let without_fragment = match path_and_rest.split_once('#') {
        Some((before, _fragment)) => before,
        None => path_and_rest,
    };
    let (raw_path, query) = match without_fragment.split_once('?') {
        Some((path, query)) => (path, Some(query.to_string())),
        None => (without_fragment, None),
    };
    let decoded = decode_unreserved(raw_path)?;
    Ok(NormalizedPath {
        path: remove_dot_segments(&decoded),
        query,
    })
}

/// Step 1 of the module doc, over the whole target.
fn check_characters(target: &str) -> Result<(), PathError> {
    if target.is_empty() {
        return Err(PathError::Empty);
    }
    if target.len() > MAX_TARGET_LEN {
        return Err(PathError::TooLong);
    }
    for byte in target.bytes() {
        match byte {
            b' ' | b'\t' => return Err(PathError::Whitespace),
            0x00..=0x1f | 0x7f => return Err(PathError::ControlChar),
            0x80..=0xff => return Err(PathError::NonAscii),
            _ => {}
        }
    }
    Ok(())
}

/// The part of the target from the path on: the target itself in origin-form, or what follows
/// the authority of an `http`/`https` absolute-form target (an empty path there means `/`,
/// RFC 9112 §3.2.2 and §3.3).
fn origin_part(target: &str) -> Result<&str, PathError> {
    if target.starts_with('/') {
        return Ok(target);
    }
    let scheme_len = ["http://", "https://"]
        .iter()
        .find(|scheme| {
            target
                .get(..scheme.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(scheme))
        })
        .map(|scheme| scheme.len())
        .ok_or(PathError::NotOriginForm)?;
    let after_scheme = target.get(scheme_len..).unwrap_or_default();
    let authority_end = after_scheme
        .find(['/', '?', '#'])
        .unwrap_or(after_scheme.len());
    if authority_end == 0 {
        return Err(PathError::NotOriginForm);
    }
    // Empty or starting with '/', '?' or '#'. An empty path ("http://h", "http://h?q") comes
    // out of `remove_dot_segments` as "/", as RFC 9112 §3.3 wants.
    Ok(after_scheme.get(authority_end..).unwrap_or_default())
}

/// RFC 3986 §2.3 unreserved characters: safe to decode, equivalent either way (§6.2.2.2).
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// Steps 3 and 4 of the module doc: decode unreserved escapes once, upper-case the others,
/// refuse encoded separators, encoded control characters and raw backslashes.
fn decode_unreserved(raw: &str) -> Result<String, PathError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        match byte {
            b'\\' => return Err(PathError::Backslash),
            b'%' => {
                let high = bytes.get(i + 1).copied().and_then(hex_value);
                let low = bytes.get(i + 2).copied().and_then(hex_value);
                let (Some(high), Some(low)) = (high, low) else {
                    return Err(PathError::BadPercent);
                };
                let value = high * 16 + low;
                match value {
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::EncodedBackslash),
                    0x00..=0x1f | 0x7f => return Err(PathError::ControlChar),
                    v if is_unreserved(v) => out.push(char::from(v)),
                    _ => {
                        out.push('%');
                        out.push(char::from(HEX[usize::from(high)]));
                        out.push(char::from(HEX[usize::from(low)]));
                    }
                }
                i += 3;
            }
            _ => {
                out.push(char::from(byte));
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Step 5 of the module doc: merge slashes, then RFC 3986 §5.2.4 `remove_dot_segments` over
/// an absolute path. Empty segments are dropped (merging `//`); `.` is dropped; `..` drops the
/// previous segment if any. A final empty, `.` or `..` segment leaves a trailing `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    // The first piece is what precedes the leading '/': empty for every accepted target.
    for segment in path.split('/').skip(1) {
        trailing_slash = matches!(segment, "" | "." | "..");
        match segment {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            name => kept.push(name),
        }
    }
    let mut out = String::with_capacity(path.len() + 1);
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Expected outcome: the normalized path and query, or the error.
    type Want = Result<(&'static str, Option<&'static str>), PathError>;

    #[test]
    fn normalize_table() {
        use PathError as E;
        // (input, expected) — every input of docs/threats.md, "Path bypasses", then the rules
        // one by one.
        let table: &[(&str, Want)] = &[
            // CVE-2019-9901: no normalization.
            ("/info/../private", Ok(("/private", None))),
            // CVE-2021-31920 / Envoy CVE-2021-29492.
            ("//admin", Ok(("/admin", None))),
            ("/admin%2F", Err(E::EncodedSlash)),
            ("/%2Fadmin", Err(E::EncodedSlash)),
            ("/%2fadmin", Err(E::EncodedSlash)),
            ("/public%2F..%2Fadmin", Err(E::EncodedSlash)),
            ("/public%5C..%5Cadmin", Err(E::EncodedBackslash)),
            ("/public%5c..%5cadmin", Err(E::EncodedBackslash)),
            // CVE-2021-39156 / CVE-2021-32779: fragments.
            ("/user/profile#section1", Ok(("/user/profile", None))),
            ("/admin#/../public", Ok(("/admin", None))),
            ("/a?x=1#frag", Ok(("/a", Some("x=1")))),
            ("/a#frag?x=1", Ok(("/a", None))),
            // CVE-2020-8595: `?`/`#` are never part of the path.
            ("/secure?x", Ok(("/secure", Some("x")))),
            ("/secure#x", Ok(("/secure", None))),
            // Istio best practices: BASE normalization.
            ("/a/./admin", Ok(("/a/admin", None))),
            ("\\admin", Err(E::NotOriginForm)),
            ("/\\admin", Err(E::Backslash)),
            ("/a\\..\\admin", Err(E::Backslash)),
            ("/%61dmin", Ok(("/admin", None))),
            ("/admin;jsessionid=1", Ok(("/admin;jsessionid=1", None))),
            ("/admin/", Ok(("/admin/", None))),
            ("/ADMIN", Ok(("/ADMIN", None))),
            // Double encoding: decoded once only.
            ("/%252e%252e/admin", Ok(("/%252e%252e/admin", None))),
            ("/%252F", Ok(("/%252F", None))),
            // Dot segments, also when percent-encoded.
            ("/%2e%2e/admin", Ok(("/admin", None))),
            ("/%2E%2E/admin", Ok(("/admin", None))),
            ("/.%2e/admin", Ok(("/admin", None))),
            ("/a/b/../../..", Ok(("/", None))),
            ("/a/b/..", Ok(("/a/", None))),
            ("/a/b/.", Ok(("/a/b/", None))),
            ("/..", Ok(("/", None))),
            ("/.", Ok(("/", None))),
            ("/...", Ok(("/...", None))),
            ("/a/.b/..c", Ok(("/a/.b/..c", None))),
            ("/a//../b", Ok(("/b", None))),
            ("///", Ok(("/", None))),
            ("/", Ok(("/", None))),
            // Other escapes: kept, upper-cased.
            ("/a%3fb", Ok(("/a%3Fb", None))),
            ("/%c3%a9", Ok(("/%C3%A9", None))),
            ("/%25", Ok(("/%25", None))),
            ("/%7e%41", Ok(("/~A", None))),
            ("/%", Err(E::BadPercent)),
            ("/%4", Err(E::BadPercent)),
            ("/%zz", Err(E::BadPercent)),
            ("/%00", Err(E::ControlChar)),
            ("/%0a", Err(E::ControlChar)),
            ("/%7F", Err(E::ControlChar)),
            // Queries are forwarded as received, escapes included.
            ("/a?b=%2F&c=\\", Ok(("/a", Some("b=%2F&c=\\")))),
            ("/a?b=%2F", Ok(("/a", Some("b=%2F")))),
            ("/a?", Ok(("/a", Some("")))),
            ("/a?b?c", Ok(("/a", Some("b?c")))),
            // Characters.
            ("/a\0", Err(E::ControlChar)),
            ("/a\r\nx: y", Err(E::ControlChar)),
            ("/a b", Err(E::Whitespace)),
            ("/a\tb", Err(E::Whitespace)),
            ("/é", Err(E::NonAscii)),
            ("/a?é", Err(E::NonAscii)),
            ("/a\u{7f}", Err(E::ControlChar)),
            // Forms.
            ("", Err(E::Empty)),
            ("*", Err(E::NotOriginForm)),
            ("admin", Err(E::NotOriginForm)),
            ("example.com:443", Err(E::NotOriginForm)),
            ("ftp://h/a", Err(E::NotOriginForm)),
            ("http:///a", Err(E::NotOriginForm)),
            ("http://h/a/../b?q", Ok(("/b", Some("q")))),
            ("HTTPS://h:8443//x", Ok(("/x", None))),
            ("http://h", Ok(("/", None))),
            ("http://h?q", Ok(("/", Some("q")))),
            ("http://h#f", Ok(("/", None))),
        ];
        for (input, want) in table {
            let got = normalize(input);
            let want = want.map(|(path, query)| NormalizedPath {
                path: path.to_string(),
                query: query.map(str::to_string),
            });
            assert_eq!(got, want, "{input:?}");
        }
    }

    #[test]
    fn length_cap() {
        let at_cap = format!("/{}", "a".repeat(MAX_TARGET_LEN - 1));
        assert_eq!(normalize(&at_cap).unwrap().path, at_cap);
        let over = format!("{at_cap}a");
        assert_eq!(normalize(&over), Err(PathError::TooLong));
    }

    #[test]
    fn origin_form_round_trip() {
        let table = [
            ("/a/../b?x=%2F", "/b?x=%2F"),
            ("/a#f", "/a"),
            ("/a?", "/a?"),
        ];
        for (input, want) in table {
            assert_eq!(normalize(input).unwrap().to_origin_form(), want, "{input}");
        }
    }

    /// Targets made mostly of the characters that matter to normalization.
    fn tricky_target() -> impl Strategy<Value = String> {
        let piece = prop::sample::select(vec![
            "/", "//", ".", "..", "/./", "/../", "%2e", "%2E", "%2f", "%5c", "%25", "%61", "%",
            "a", "A", "admin", ";", "?", "#", "\\", "~", "%c3", "%0", "é", " ", "\0", "http://h",
        ]);
        prop::collection::vec(piece, 0..16).prop_map(|pieces| pieces.concat())
    }

    fn check_output(input: &str) -> Result<(), TestCaseError> {
        let Ok(normalized) = normalize(input) else {
            return Ok(());
        };
        let path = &normalized.path;
        prop_assert!(path.starts_with('/'), "{input:?} -> {path:?}");
        for bad in ["//", "/./", "/../", "\\", "%2F", "%2f", "%5C", "#", "?"] {
            prop_assert!(
                !path.contains(bad),
                "{input:?} -> {path:?} contains {bad:?}"
            );
        }
        prop_assert!(!path.ends_with("/.") && !path.ends_with("/.."), "{path:?}");
        // Idempotent: the canonical form is its own canonical form.
        let again = normalize(path);
        prop_assert_eq!(
            again,
            Ok(NormalizedPath {
                path: path.clone(),
                query: None
            }),
            "not idempotent for {:?}",
            input
        );
        Ok(())
    }

    proptest! {
        #[test]
        fn arbitrary_targets_never_panic_and_normalize_to_a_fixed_point(input in ".{0,64}") {
            check_output(&input)?;
        }

        #[test]
        fn tricky_targets_normalize_to_a_fixed_point(input in tricky_target()) {
            check_output(&input)?;
        }

        #[test]
        fn path_prefixed_targets_normalize_to_a_fixed_point(input in "/[a-z./%2eEfF5cC;~?#]{0,40}") {
            check_output(&input)?;
        }
    }
}
