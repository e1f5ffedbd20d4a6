//! Request admission on an inbound HTTP port: the pure first phase of a request. It decides
//! which method, authority and path the request *is*, refuses requests whose meaning a server
//! behind the sidecar could read differently, and cleans the headers. Policy is decided on what
//! [`admit`] returns, and [`upstream_parts`] builds what the app receives from the same value, so
//! the request the app receives is the request that was authorized (docs/http.md, "Admission").
//!
//! No sockets, no clock: every rule here is table- and property-tested.

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Uri, Version};
use ward_policy::NormalizedPath;

use crate::refusal::{Refusal, ResponseFlag};

/// Headers a client must never be able to set: identity and internal headers are the sidecar's
/// alone (Envoy sanitizes the same set at the edge of the mesh).
const SPOOFABLE: &[&str] = &[
    "x-forwarded-client-cert",
    "x-ward-peer",
    "x-envoy-internal",
    "x-envoy-original-path",
    "l5d-client-id",
];

/// Headers with which some frameworks serve another path or method than the request line's
/// (IIS/Symfony/Laravel `X-Original-URL` and `X-Rewrite-URL`; Rails, Express and ASP.NET method
/// overrides). They would let a caller allowed `GET /public` be served `DELETE /admin`, so they
/// are removed unless the workload keeps them (annotation [`ward_config::KEEP_OVERRIDE_HEADERS_ANNOTATION`]).
pub(crate) const OVERRIDE_HEADERS: &[&str] = &[
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// HTTP/1.1 hop-by-hop headers (RFC 9110 §7.6.1), never forwarded as such.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "trailer",
    "http2-settings",
];

/// The longest authority accepted (a DNS name is at most 253 bytes, plus `:port`).
const MAX_AUTHORITY_LEN: usize = 261;

/// A request Ward answers itself, before policy: a status, a short body for the client and the
/// access log's `response_code_details`.
fn refused(status: StatusCode, body: &'static str, detail: &'static str) -> Refusal {
    Refusal::downstream(ResponseFlag::None, detail).with_reply(status, body)
}

/// What a request is, as authorized and as forwarded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Admitted {
    /// The method, exactly as the policy sees it.
    pub(crate) method: Method,
    /// The one authority: the request-target's (absolute form, HTTP/2 `:authority`), else
    /// `Host`. Never empty.
    pub(crate) authority: String,
    /// The normalized path and the query.
    pub(crate) target: NormalizedPath,
    /// The protocols of an `Upgrade` Ward may splice (never an HTTP version: those are removed
    /// from the request). Empty: not an upgrade.
    pub(crate) upgrade: Vec<String>,
}

/// What [`admit`] reads of a request.
pub(crate) struct RequestHead<'a> {
    pub(crate) method: &'a Method,
    pub(crate) uri: &'a Uri,
    pub(crate) version: Version,
    pub(crate) headers: &'a HeaderMap,
}

/// How the workload's config asks headers to be treated.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct HeaderRules {
    /// Keep [`OVERRIDE_HEADERS`] (annotation [`ward_config::KEEP_OVERRIDE_HEADERS_ANNOTATION`]).
    pub(crate) keep_overrides: bool,
}

/// Decide what a request is, or refuse it. Rules, each with its reason:
/// - **Method**: a method with a lower-case letter is refused (400). Methods are case-sensitive
///   (RFC 9110 §9.1) and every registered one is upper case, but many servers upper-case what
///   they receive, so `delete` would pass a DENY on `DELETE` and be served as one.
/// - **CONNECT** on an HTTP port is refused (405): it would turn the request into a raw tunnel
///   that no later request on it is checked against.
/// - **Authority**: the request-target's authority (HTTP/1.1 absolute form, HTTP/2 `:authority`)
///   if present, else `Host`. RFC 9112 §3.2.2 says the absolute form overrides `Host`; Ward
///   refuses (400) a `Host` that differs from it (ASCII case aside), since a server that reads
///   `Host` anyway would serve another virtual host than the one authorized. More than one
///   `Host`, no authority at all (RFC 9112 §3.2: a client MUST send `Host`), userinfo, spaces or
///   control characters: 400.
/// - **Path**: [`ward_policy::normalize`]; refused forms are 400.
/// - **Header names** with `_`: 400 (`x_user` vs `x-user` ambiguity in CGI-style servers).
pub(crate) fn admit(head: &RequestHead<'_>) -> Result<Admitted, Refusal> {
    let method = head.method;
    if method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(refused(
            StatusCode::BAD_REQUEST,
            "invalid method: methods are upper case\n",
            "invalid_method_case",
        ));
    }
    if method == Method::CONNECT {
        return Err(refused(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not served on this port\n",
            "connect_not_allowed",
        ));
    }
    let authority = authority(head)?;
    let raw_target = head.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let target = ward_policy::normalize(raw_target).map_err(|e| {
        tracing::debug!(error = %e, "request path refused");
        refused(
            StatusCode::BAD_REQUEST,
            "invalid request path\n",
            "invalid_path",
        )
    })?;
    if head.headers.keys().any(|k| k.as_str().contains('_')) {
        return Err(refused(
            StatusCode::BAD_REQUEST,
            "header names must not contain underscores\n",
            "underscore_in_header_name",
        ));
    }
    Ok(Admitted {
        method: method.clone(),
        authority,
        target,
        upgrade: upgrade_protocols(head.version, head.headers),
    })
}

/// The one authority of a request (the rules of [`admit`]), or why it has none.
pub(crate) fn authority(head: &RequestHead<'_>) -> Result<String, Refusal> {
    let bad_host = refused(
        StatusCode::BAD_REQUEST,
        "invalid Host header\n",
        "invalid_host",
    );
    let mut hosts = head.headers.get_all(http::header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (None, _) => None,
        (Some(h), None) => Some(h.to_str().map_err(|_| bad_host.clone())?),
        (Some(_), Some(_)) => {
            return Err(refused(
                StatusCode::BAD_REQUEST,
                "more than one Host header\n",
                "multiple_host_headers",
            ))
        }
    };
    let from_target = head.uri.authority().map(|a| a.as_str());
    let authority = match (from_target, host) {
        (Some(t), Some(h)) if !t.eq_ignore_ascii_case(h) => {
            return Err(refused(
                StatusCode::BAD_REQUEST,
                "Host differs from the request-target's authority\n",
                "host_authority_mismatch",
            ))
        }
        (Some(t), _) => t,
        (None, Some(h)) => h,
        (None, None) => {
            return Err(refused(
                StatusCode::BAD_REQUEST,
                "missing Host header\n",
                "missing_host",
            ))
        }
    };
    let valid = !authority.is_empty()
        && authority.len() <= MAX_AUTHORITY_LEN
        && !authority.contains('@')
        && authority.parse::<http::uri::Authority>().is_ok()
        && authority
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"\"<>\\^`{|}".contains(&b));
    if !valid {
        return Err(refused(
            StatusCode::BAD_REQUEST,
            "invalid authority\n",
            "invalid_authority",
        ));
    }
    Ok(authority.to_owned())
}

/// True for an `Upgrade` token that names an HTTP version (`h2c`, `h2`, `HTTP/2.0`, `HTTP`):
/// a protocol Ward parses itself, so never one it splices unparsed (RFC 9110 §7.8, RFC 7540
/// §3.2; RFC 9113 §3.1 retires h2c upgrades).
fn is_http_protocol(token: &str) -> bool {
    let name = token.split('/').next().unwrap_or(token).trim();
    name.eq_ignore_ascii_case("h2c")
        || name.eq_ignore_ascii_case("h2")
        || name.eq_ignore_ascii_case("http")
}

/// The protocols an HTTP/1.1 `Upgrade` asks for, other than HTTP versions, lower-cased.
pub(crate) fn upgrade_protocols(version: Version, headers: &HeaderMap) -> Vec<String> {
    if version != Version::HTTP_11 {
        return Vec::new();
    }
    let connection_says_upgrade = tokens(headers, http::header::CONNECTION)
        .iter()
        .any(|t| t == "upgrade");
    if !connection_says_upgrade {
        return Vec::new();
    }
    tokens(headers, http::header::UPGRADE)
        .into_iter()
        .filter(|t| !is_http_protocol(t))
        .collect()
}

/// The comma-separated, trimmed, lower-cased tokens of every line of a header.
fn tokens(headers: &HeaderMap, name: HeaderName) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Clean a request's headers for the rest of its way: remove what a client must not set
/// ([`SPOOFABLE`], [`OVERRIDE_HEADERS`] unless kept), every hop-by-hop header and each header
/// `Connection` names (RFC 9110 §7.6.1), and `Host` (the authority travels in
/// [`Admitted::authority`] and is written back by [`upstream_parts`]). `TE: trailers` stays
/// when the client sent it: trailers pass through, and a gRPC server refuses a request without
/// it (gRPC's HTTP/2 protocol, `te: trailers`). An upgrade Ward splices
/// keeps `Connection: upgrade` and an `Upgrade` naming only [`Admitted::upgrade`], so an
/// `h2c` upgrade never reaches the app: the request is served as the plain HTTP/1.1 request it
/// also is, as Envoy and Linkerd do.
pub(crate) fn sanitize(headers: &mut HeaderMap, admitted: &Admitted, rules: HeaderRules) {
    for h in SPOOFABLE {
        headers.remove(*h);
    }
    if !rules.keep_overrides {
        for h in OVERRIDE_HEADERS {
            headers.remove(*h);
        }
    }
    let trailers = lists_trailers(headers);
    strip_hop_by_hop(headers);
    if trailers {
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
    headers.remove(http::header::HOST);
    if !admitted.upgrade.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&admitted.upgrade.join(", ")) {
            headers.insert(http::header::UPGRADE, v);
            headers.insert(
                http::header::CONNECTION,
                HeaderValue::from_static("upgrade"),
            );
        }
    }
}

/// Whether a `TE` line lists `trailers`.
pub(crate) fn lists_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
}

/// Remove hop-by-hop headers and the headers `Connection` lists (RFC 9110 §7.6.1); they are
/// also illegal in HTTP/2 (RFC 9113 §8.2.2).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed = tokens(headers, http::header::CONNECTION);
    for h in HOP_BY_HOP.iter().map(|s| s.to_string()).chain(listed) {
        if let Ok(name) = HeaderName::from_bytes(h.as_bytes()) {
            headers.remove(name);
        }
    }
}

/// Whether a `101 Switching Protocols` from the app may be spliced: it must switch to one of
/// the protocols the (sanitized) request asked for (RFC 9110 §7.8), and never to an HTTP
/// version.
pub(crate) fn upgrade_accepted(admitted: &Admitted, response: &HeaderMap) -> bool {
    switches_to_asked(&admitted.upgrade, response)
}

/// Whether a `101` response's `Upgrade` names only protocols of `asked` (the request's
/// [`upgrade_protocols`]), and never an HTTP version.
pub(crate) fn switches_to_asked(asked: &[String], response: &HeaderMap) -> bool {
    let offered = tokens(response, http::header::UPGRADE);
    !offered.is_empty()
        && offered
            .iter()
            .all(|p| !is_http_protocol(p) && asked.contains(p))
}

/// The request line and authority the app receives, for the app's protocol: HTTP/1.1 gets the
/// origin form and `Host: <authority>`; HTTP/2 gets `:authority` and no `Host`. Both carry the
/// authorized method, authority and normalized path, and nothing else decides them.
pub(crate) fn upstream_parts(
    admitted: &Admitted,
    version: Version,
    headers: &mut HeaderMap,
) -> Uri {
    let pq = admitted.target.to_origin_form();
    headers.remove(http::header::HOST);
    if version == Version::HTTP_2 {
        let built = Uri::builder()
            .scheme("http")
            .authority(admitted.authority.as_str())
            .path_and_query(pq.as_str())
            .build();
        // `admit` parsed the authority and `normalize` produced the path, so building cannot
        // fail; the origin form is the safe fallback regardless.
        return built.unwrap_or_else(|_| origin_uri(&pq));
    }
    if let Ok(v) = HeaderValue::from_str(&admitted.authority) {
        headers.insert(http::header::HOST, v);
    }
    origin_uri(&pq)
}

fn origin_uri(pq: &str) -> Uri {
    pq.parse().unwrap_or_else(|_| Uri::from_static("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn head(method: &str, target: &str, version: Version, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(target)
            .version(version);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    type Parts = http::request::Parts;

    fn run(p: &Parts) -> Result<Admitted, Refusal> {
        admit(&RequestHead {
            method: &p.method,
            uri: &p.uri,
            version: p.version,
            headers: &p.headers,
        })
    }

    fn detail(p: &Parts) -> String {
        match run(p) {
            Ok(_) => "ok".to_owned(),
            Err(r) => r.detail,
        }
    }

    #[test]
    fn admission_table() {
        use Version as V;
        let h11 = V::HTTP_11;
        let cases: Vec<(&str, Parts, &str)> = vec![
            ("plain", head("GET", "/a", h11, &[("host", "svc")]), "ok"),
            (
                "lower-case standard method",
                head("delete", "/a", h11, &[("host", "svc")]),
                "invalid_method_case",
            ),
            (
                "mixed-case standard method",
                head("DeLeTe", "/a", h11, &[("host", "svc")]),
                "invalid_method_case",
            ),
            (
                "lower-case extension method",
                head("purge", "/a", h11, &[("host", "svc")]),
                "invalid_method_case",
            ),
            (
                "upper-case extension method",
                head("PROPFIND", "/a", h11, &[("host", "svc")]),
                "ok",
            ),
            (
                "CONNECT",
                head("CONNECT", "svc:443", h11, &[("host", "svc:443")]),
                "connect_not_allowed",
            ),
            (
                "absolute form with a different Host",
                head("GET", "http://public/a", h11, &[("host", "admin")]),
                "host_authority_mismatch",
            ),
            (
                "absolute form with the same Host in other case",
                head("GET", "http://Public/a", h11, &[("host", "public")]),
                "ok",
            ),
            (
                "absolute form without Host",
                head("GET", "http://public/a", h11, &[]),
                "ok",
            ),
            (
                "two Host lines",
                head("GET", "/a", h11, &[("host", "a"), ("host", "b")]),
                "multiple_host_headers",
            ),
            ("no Host", head("GET", "/a", h11, &[]), "missing_host"),
            (
                "HTTP/1.0 without Host",
                head("GET", "/a", V::HTTP_10, &[]),
                "missing_host",
            ),
            (
                "userinfo",
                head("GET", "/a", h11, &[("host", "evil@svc")]),
                "invalid_authority",
            ),
            (
                "empty Host",
                head("GET", "/a", h11, &[("host", "")]),
                "invalid_authority",
            ),
            (
                "encoded slash",
                head("GET", "/a%2Fb", h11, &[("host", "svc")]),
                "invalid_path",
            ),
            (
                "underscore header",
                head("GET", "/a", h11, &[("host", "svc"), ("x_user", "1")]),
                "underscore_in_header_name",
            ),
        ];
        for (name, parts, want) in cases {
            assert_eq!(detail(&parts), want, "{name}");
        }
    }

    #[test]
    fn h2c_is_never_an_upgrade_and_other_protocols_are() {
        let up = |upgrade: &str, connection: &str| {
            let p = head(
                "GET",
                "/a",
                Version::HTTP_11,
                &[
                    ("host", "svc"),
                    ("upgrade", upgrade),
                    ("connection", connection),
                    ("http2-settings", "AAMAAABkAAQAAP__"),
                ],
            );
            let a = run(&p).unwrap();
            let mut h = p.headers;
            sanitize(&mut h, &a, HeaderRules::default());
            (a.upgrade, h)
        };
        for (upgrade, connection) in [
            ("h2c", "Upgrade, HTTP2-Settings"),
            ("H2C", "upgrade"),
            ("h2c, HTTP/2.0", "upgrade"),
            ("HTTP/1.1", "upgrade"),
        ] {
            let (protocols, h) = up(upgrade, connection);
            assert!(protocols.is_empty(), "{upgrade}");
            for name in ["upgrade", "connection", "http2-settings", "host"] {
                assert!(!h.contains_key(name), "{upgrade}: {name} must go");
            }
        }
        let (protocols, h) = up("websocket, h2c", "keep-alive, Upgrade");
        assert_eq!(protocols, ["websocket"]);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert!(!h.contains_key("http2-settings"));
        // Without `Connection: upgrade` nothing is an upgrade.
        let (protocols, h) = up("websocket", "close");
        assert!(protocols.is_empty());
        assert!(!h.contains_key("upgrade"));
    }

    #[test]
    fn a_101_is_spliced_only_for_a_requested_non_http_protocol() {
        let p = head(
            "GET",
            "/ws",
            Version::HTTP_11,
            &[
                ("host", "svc"),
                ("upgrade", "websocket"),
                ("connection", "upgrade"),
            ],
        );
        let a = run(&p).unwrap();
        let resp = |u: &str| {
            let mut h = HeaderMap::new();
            h.insert("upgrade", HeaderValue::from_str(u).unwrap());
            h
        };
        assert!(upgrade_accepted(&a, &resp("WebSocket")));
        assert!(!upgrade_accepted(&a, &resp("h2c")));
        assert!(!upgrade_accepted(&a, &resp("websocket, h2c")));
        assert!(!upgrade_accepted(&a, &resp("other")));
        assert!(!upgrade_accepted(&a, &HeaderMap::new()));
    }

    #[test]
    fn override_headers_go_unless_kept() {
        let p = head(
            "GET",
            "/public",
            Version::HTTP_11,
            &[
                ("host", "svc"),
                ("x-original-url", "/admin"),
                ("X-Rewrite-URL", "/admin"),
                ("x-http-method-override", "DELETE"),
                ("x-forwarded-client-cert", "By=x"),
            ],
        );
        let a = run(&p).unwrap();
        let mut h = p.headers.clone();
        sanitize(&mut h, &a, HeaderRules::default());
        assert!(h.is_empty(), "{h:?}");
        let mut h = p.headers;
        sanitize(
            &mut h,
            &a,
            HeaderRules {
                keep_overrides: true,
            },
        );
        assert_eq!(h.len(), 3, "{h:?}");
    }

    #[test]
    fn te_trailers_stays_and_other_te_goes() {
        for (te, kept) in [
            ("trailers", Some("trailers")),
            ("gzip, Trailers", Some("trailers")),
            ("gzip", None),
        ] {
            let p = head(
                "POST",
                "/demo.Echo/Say",
                Version::HTTP_2,
                &[("host", "svc"), ("te", te)],
            );
            let a = run(&p).unwrap();
            let mut h = p.headers;
            sanitize(&mut h, &a, HeaderRules::default());
            assert_eq!(
                h.get("te").and_then(|v| v.to_str().ok()),
                kept,
                "{te}: {h:?}"
            );
        }
    }

    /// What an app reads from the request it receives: (method, authority, path and query).
    fn as_the_app_reads_it(
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> (String, String, String) {
        let authority = match uri.authority() {
            Some(a) => a.as_str().to_owned(),
            None => headers
                .get(http::header::HOST)
                .map(|h| h.to_str().unwrap().to_owned())
                .unwrap_or_default(),
        };
        (
            method.as_str().to_ascii_uppercase(),
            authority.to_ascii_lowercase(),
            uri.path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default(),
        )
    }

    fn method_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("GET".to_owned()),
            Just("DELETE".to_owned()),
            Just("CONNECT".to_owned()),
            "[A-Z]{1,8}",
            "[A-Za-z]{1,8}",
        ]
    }

    fn host_strategy() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(prop_oneof![
            Just("public".to_owned()),
            Just("ADMIN".to_owned()),
            Just("admin:80".to_owned()),
            "[a-zA-Z0-9.:@_-]{0,12}",
        ])
    }

    fn target_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            "(/[a-z.%2F5Cc;]{0,6}){1,4}(\\?[a-z=&]{0,6})?",
            Just("http://public/a".to_owned()),
            Just("http://admin:80/../admin".to_owned()),
            Just("http://ADMIN/x?y".to_owned()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]
        /// The one invariant: whatever arrives, if it is admitted, the app reads from the
        /// forwarded request exactly the method, authority and path that policy saw, on either
        /// upstream protocol, and no header that could change them survives.
        #[test]
        fn the_app_receives_what_was_authorized(
            method in method_strategy(),
            target in target_strategy(),
            host in host_strategy(),
            second_host in proptest::option::of("[a-z]{1,5}"),
            extra in proptest::collection::vec(
                (prop_oneof![
                    Just("x-original-url"), Just("x-rewrite-url"), Just("x-http-method-override"),
                    Just("upgrade"), Just("connection"), Just("http2-settings"), Just("x-role"),
                ], "[a-zA-Z0-9/ ,-]{0,10}"),
                0..4,
            ),
            h2_in in any::<bool>(),
            h2_out in any::<bool>(),
        ) {
            let Ok(uri) = target.parse::<Uri>() else { return Ok(()) };
            let Ok(m) = Method::from_bytes(method.as_bytes()) else { return Ok(()) };
            let mut headers = HeaderMap::new();
            for h in host.iter().chain(second_host.iter()) {
                if let Ok(v) = HeaderValue::from_str(h) {
                    headers.append(http::header::HOST, v);
                }
            }
            for (n, v) in &extra {
                if let Ok(v) = HeaderValue::from_str(v) {
                    headers.append(*n, v);
                }
            }
            let version_in = if h2_in { Version::HTTP_2 } else { Version::HTTP_11 };
            let head = RequestHead { method: &m, uri: &uri, version: version_in, headers: &headers };
            let Ok(admitted) = admit(&head) else { return Ok(()) };
            // What policy saw.
            let seen = (
                admitted.method.as_str().to_owned(),
                admitted.authority.to_ascii_lowercase(),
                admitted.target.to_origin_form(),
            );
            prop_assert!(!admitted.authority.is_empty());
            prop_assert!(!seen.0.bytes().any(|b| b.is_ascii_lowercase()));
            // What the app gets.
            let mut out = headers.clone();
            sanitize(&mut out, &admitted, HeaderRules::default());
            let version_out = if h2_out { Version::HTTP_2 } else { Version::HTTP_11 };
            let up = upstream_parts(&admitted, version_out, &mut out);
            prop_assert_eq!(as_the_app_reads_it(&admitted.method, &up, &out), seen);
            prop_assert!(out.get_all(http::header::HOST).iter().count() <= 1);
            if version_out == Version::HTTP_2 {
                prop_assert!(!out.contains_key(http::header::HOST));
            }
            for h in OVERRIDE_HEADERS.iter().chain(["http2-settings"].iter()) {
                prop_assert!(!out.contains_key(*h), "{} survived", h);
            }
            for t in tokens(&out, http::header::UPGRADE) {
                prop_assert!(!is_http_protocol(&t), "upgrade to {} survived", t);
            }
        }
    }
}
