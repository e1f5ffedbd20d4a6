//! Inbound HTTP: on ports whose protocol is HTTP, HTTP2 or GRPC (Istio protocol selection), the
//! destination sidecar parses each request out of the tunnel (or the plaintext socket), decides
//! it with the pure policy engine, and forwards it to the app. Many requests on one kept-alive
//! connection are each decided on their own, against the config current at that request.
//!
//! What the app receives is exactly what was decided on: the normalized path
//! ([`ward_policy::normalize`]) with the original query, never the raw path.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ward_authn::{AuthnOutcome, TokenLocation, TokenSources};
use ward_config::{InboundPort, ProxyConfig};
use ward_policy::{Decision, HttpAttributes, L4Attributes, Peer, RequestAuth};

use crate::inbound::{deciding_rule, InboundCtx};

/// Response bodies: the app's streamed body, or a small local one.
pub(crate) type RespBody = BoxBody<Bytes, hyper::Error>;

/// Headers a client must never be able to set: identity and internal headers are the
/// sidecar's alone (threats.md §C, Envoy header sanitizing).
const SPOOFABLE: &[&str] = &[
    "x-forwarded-client-cert",
    "x-ward-peer",
    "x-envoy-internal",
    "x-envoy-original-path",
    "l5d-client-id",
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
];

/// The connection a request arrived on.
pub(crate) struct HttpConn {
    /// The verified peer, `None` for plaintext.
    pub(crate) peer: Option<Peer>,
    /// The peer's SPIFFE URI, for XFCC and logs.
    pub(crate) peer_id: Option<String>,
    /// SHA-256 of the peer's certificate, hex (XFCC `Hash=`).
    pub(crate) peer_cert_hash: Option<String>,
    /// Socket peer.
    pub(crate) src: SocketAddr,
    /// Workload address and port the connection was for.
    pub(crate) dst: SocketAddr,
}

/// HTTP clients toward the apps of one sidecar; cheap to clone.
#[derive(Clone)]
pub struct Upstreams {
    h1: Client<HttpConnector, Incoming>,
    h2: Client<HttpConnector, Incoming>,
}

impl Default for Upstreams {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Upstreams {
            h1: Client::builder(TokioExecutor::new()).build(connector.clone()),
            h2: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(connector),
        }
    }
}

fn local(status: StatusCode, body: &'static str) -> Response<RespBody> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    r
}

/// Serve HTTP on an accepted connection until it closes.
pub(crate) async fn serve<S>(io: S, ctx: Arc<InboundCtx>, conn: Arc<HttpConn>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(handle(&ctx, &conn, req).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // Bounded header sizes (CVE-2019-15226, HPACK bombs): hyper's limits, set explicitly.
    builder.http1().max_buf_size(64 * 1024);
    builder
        .http2()
        .max_header_list_size(16 * 1024)
        .max_concurrent_streams(256);
    if let Err(e) = builder
        .serve_connection_with_upgrades(TokioIo::new(io), svc)
        .await
    {
        tracing::debug!(error = %e, "http connection ended with an error");
    }
}

/// One request's record, with Envoy's access-log key names (conventions.md §2.3).
struct RequestLog<'a> {
    conn: &'a HttpConn,
    workload: String,
    method: String,
    path: String,
    authority: String,
    protocol: &'static str,
    request_id: String,
    /// `iss/sub` of a verified token (never the token itself).
    request_principal: Option<String>,
    started: Instant,
}

impl RequestLog<'_> {
    fn emit(&self, code: u16, flags: &str, details: &str, decision: Option<&Decision>) {
        let (policy, rule) = decision.map(deciding_rule).unwrap_or((None, None));
        tracing::info!(
            target: "access",
            direction = "inbound",
            method = %self.method,
            path = %self.path,
            protocol = self.protocol,
            authority = %self.authority,
            response_code = code,
            response_flags = flags,
            response_code_details = details,
            request_id = %self.request_id,
            src.addr = %self.conn.src,
            src.identity = self.conn.peer_id.as_deref(),
            request.auth.principal = self.request_principal.as_deref(),
            dst.addr = %self.conn.dst,
            dst.workload = %self.workload,
            authz.decision = decision.map(|d| if d.is_allowed() { "allow" } else { "deny" }),
            authz.policy = policy.as_deref(),
            authz.rule = rule.map(|r| r as u64),
            duration_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            "request complete"
        );
    }
}

fn protocol_name(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2",
        _ => "HTTP/other",
    }
}

/// A request id: the caller's when it is a sane token, else a new random UUID-shaped one.
fn request_id(headers: &HeaderMap) -> String {
    if let Some(v) = headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
        if !v.is_empty()
            && v.len() <= 128
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return v.to_owned();
        }
    }
    let (a, b) = (fastrand::u64(..), fastrand::u64(..));
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0x0fff,
        ((b >> 48) & 0x3fff) | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

/// W3C trace context: keep the trace id of a valid incoming `traceparent` and give this hop a new
/// parent id; start a new trace otherwise (https://www.w3.org/TR/trace-context/).
fn traceparent(headers: &HeaderMap) -> String {
    let span = format!("{:016x}", fastrand::u64(1..));
    if let Some(v) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        let parts: Vec<&str> = v.split('-').collect();
        let hex = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if parts.len() == 4
            && parts[0] == "00"
            && hex(parts[1], 32)
            && parts[1] != "0".repeat(32)
            && hex(parts[2], 16)
            && parts[2] != "0".repeat(16)
            && hex(parts[3], 2)
        {
            return format!("00-{}-{span}-{}", parts[1], parts[3]);
        }
    }
    format!(
        "00-{:016x}{:016x}-{span}-00",
        fastrand::u64(1..),
        fastrand::u64(..)
    )
}

/// Every header line as (lower-case name, value); repeated names stay repeated.
fn header_list(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// Remove a verified token from where it was found, so the app never sees it unless
/// `forwardOriginalToken` asks for it (Istio's default is to strip). What to remove, in every
/// spelling Ward reads a token in, is decided by `ward_authn` ([`TokenLocation::removal`]).
fn remove_token(headers: &mut HeaderMap, query: &mut Option<String>, loc: &TokenLocation) {
    use ward_authn::TokenRemoval;
    let removal = {
        // A cookie header that is not visible ASCII is dropped with the token's cookie.
        let cookies: Vec<&str> = headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        loc.removal(query.as_deref(), &cookies)
    };
    match removal {
        TokenRemoval::Header(name) => {
            if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
                headers.remove(n);
            }
        }
        TokenRemoval::Query(rest) => *query = rest,
        TokenRemoval::Cookie(rest) => {
            headers.remove(http::header::COOKIE);
            if let Some(v) = rest.and_then(|c| HeaderValue::from_str(&c).ok()) {
                headers.insert(http::header::COOKIE, v);
            }
        }
    }
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == http::Version::HTTP_11 && req.headers().contains_key(http::header::UPGRADE)
}

async fn handle(
    ctx: &InboundCtx,
    conn: &HttpConn,
    mut req: Request<Incoming>,
) -> Response<RespBody> {
    let started = Instant::now();
    let cfg: Arc<ProxyConfig> = ctx.config.borrow().clone();
    let request_id = request_id(req.headers());
    let mut log = RequestLog {
        conn,
        workload: format!("{}/{}", cfg.workload.namespace, cfg.workload.name),
        method: req.method().as_str().to_owned(),
        path: "-".to_owned(),
        authority: String::new(),
        protocol: protocol_name(req.version()),
        request_id: request_id.clone(),
        request_principal: None,
        started,
    };
    let Some(port) = cfg
        .inbound
        .iter()
        .find(|p| p.port == conn.dst.port())
        .cloned()
    else {
        log.emit(503, "NR", "port_no_longer_served", None);
        return local(StatusCode::SERVICE_UNAVAILABLE, "no such port\n");
    };
    // One authority, used for both the decision and the app (threats.md §B: absolute-form URI
    // vs Host): the URI's when the request carries one (absolute-form, h2 :authority), else Host.
    let authority = match req.uri().authority() {
        Some(a) => a.as_str().to_owned(),
        None => match req.headers().get(http::header::HOST).map(|h| h.to_str()) {
            Some(Ok(h)) => h.to_owned(),
            Some(Err(_)) => {
                log.emit(400, "-", "invalid_host", None);
                return local(StatusCode::BAD_REQUEST, "invalid Host header\n");
            }
            None => String::new(),
        },
    };
    log.authority = authority.clone();
    if authority.len() > 255
        || authority
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        log.emit(400, "-", "invalid_authority", None);
        return local(StatusCode::BAD_REQUEST, "invalid authority\n");
    }
    let raw_target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let target = match ward_policy::normalize(raw_target) {
        Ok(t) => t,
        Err(e) => {
            log.emit(400, "-", "invalid_path", None);
            tracing::debug!(error = %e, "request path refused");
            return local(StatusCode::BAD_REQUEST, "invalid request path\n");
        }
    };
    log.path = target.path.clone();
    // Header names with `_` are refused (Envoy edge guidance: `x_user` vs `x-user` smuggling).
    if req.headers().keys().any(|k| k.as_str().contains('_')) {
        log.emit(400, "-", "underscore_in_header_name", None);
        return local(
            StatusCode::BAD_REQUEST,
            "header names must not contain underscores\n",
        );
    }
    for h in SPOOFABLE {
        req.headers_mut().remove(*h);
    }
    let mut query = target.query.clone();
    let auth = match ctx.authn.authenticator(&cfg.jwt_rules) {
        None => None,
        Some(authenticator) => {
            // Incoming copies of output headers are the client's forgeries (istio-semantics §2.5).
            for h in authenticator.output_headers() {
                req.headers_mut().remove(h);
            }
            let headers = header_list(req.headers());
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let sources = TokenSources {
                headers: &headers,
                query: query.as_deref(),
            };
            match authenticator.authenticate(&sources, now, &|issuer: &str| ctx.authn.keys(issuer))
            {
                AuthnOutcome::NoToken => None,
                AuthnOutcome::Authenticated {
                    auth,
                    strip,
                    add_headers,
                } => {
                    for loc in &strip {
                        remove_token(req.headers_mut(), &mut query, loc);
                    }
                    for (name, value) in add_headers {
                        if let (Ok(n), Ok(v)) = (
                            HeaderName::from_bytes(name.as_bytes()),
                            HeaderValue::from_str(&value),
                        ) {
                            req.headers_mut().insert(n, v);
                        }
                    }
                    Some(RequestAuth {
                        principal: auth.principal,
                        audiences: auth.audiences,
                        presenter: auth.presenter,
                        claims: auth.claims,
                    })
                }
                AuthnOutcome::Rejected {
                    status,
                    message,
                    unknown_kid,
                    ..
                } => {
                    if let Some((issuer, _kid)) = unknown_kid {
                        ctx.authn.note_unknown_kid(&issuer);
                    }
                    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::UNAUTHORIZED);
                    let detail =
                        format!("jwt_authn_access_denied{{{}}}", message.replace(' ', "_"));
                    log.emit(code.as_u16(), "-", &detail, None);
                    let mut resp = local(code, message);
                    // Envoy: `Bearer realm="<uri>"`, plus `error="invalid_token"` for a bad token.
                    let realm = format!(
                        "Bearer realm=\"http://{}{}\", error=\"invalid_token\"",
                        authority.replace('"', ""),
                        target.path
                    );
                    if let Ok(v) = HeaderValue::from_str(&realm) {
                        resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
                    }
                    return resp;
                }
            }
        }
    };
    if let Some(a) = &auth {
        log.request_principal = Some(a.principal.clone());
    }
    let target = ward_policy::NormalizedPath {
        path: target.path.clone(),
        query,
    };
    let headers = header_list(req.headers());
    let attrs = HttpAttributes {
        l4: L4Attributes {
            peer: conn.peer.as_ref(),
            source_ip: conn.src.ip(),
            remote_ip: conn.src.ip(),
            destination_ip: conn.dst.ip(),
            destination_port: conn.dst.port(),
            sni: None,
        },
        method: req.method().as_str(),
        host: &authority,
        path: &target.path,
        headers: &headers,
        auth: auth.as_ref(),
    };
    let decision = cfg.authz.evaluate_http(&attrs);
    crate::inbound::log_dry_run_and_audit(&decision, conn.src, conn.peer_id.as_deref(), conn.dst);
    let (policy, _) = deciding_rule(&decision);
    ctx.metrics
        .decision(decision.is_allowed(), policy.as_deref(), &log.workload);
    if !decision.is_allowed() {
        // Envoy RBAC: 403 with the body `RBAC: access denied`.
        log.emit(403, "-", &decision.response_detail(), Some(&decision));
        return local(StatusCode::FORBIDDEN, "RBAC: access denied");
    }
    match forward(ctx, conn, &port, req, &target, &request_id).await {
        Ok(resp) => {
            log.emit(resp.status().as_u16(), "-", "via_upstream", Some(&decision));
            resp
        }
        Err(e) => {
            log.emit(
                503,
                "UF",
                "upstream_reset_before_response_started",
                Some(&decision),
            );
            tracing::debug!(error = %e, "upstream request failed");
            local(StatusCode::SERVICE_UNAVAILABLE, "upstream connect error\n")
        }
    }
}

/// Rewrite the request for the app and send it; stream the response back.
async fn forward(
    ctx: &InboundCtx,
    conn: &HttpConn,
    port: &InboundPort,
    mut req: Request<Incoming>,
    target: &ward_policy::NormalizedPath,
    request_id: &str,
) -> Result<Response<RespBody>, hyper_util::client::legacy::Error> {
    let upgrade = is_upgrade(&req);
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let pq = match &target.query {
        Some(q) => format!("{}?{q}", target.path),
        None => target.path.clone(),
    };
    let uri: Uri = format!("http://{}{pq}", port.target)
        .parse()
        .unwrap_or_else(|_| Uri::from_static("/"));
    *req.uri_mut() = uri;
    strip_hop_by_hop(req.headers_mut(), upgrade);
    let headers = req.headers_mut();
    // Istio/Envoy XFCC (Envoy `SANITIZE_SET`, the sidecar default for inbound): the server sees
    // who called it, only when that was proven by mTLS, in Envoy's format
    // `By=<server URI>;Hash=<sha256 of the client cert>;Subject="";URI=<client URI>`.
    if let Some(peer) = &conn.peer_id {
        let hash = conn.peer_cert_hash.as_deref().unwrap_or("");
        let xfcc = format!("By={};Hash={hash};Subject=\"\";URI={peer}", ctx.identity);
        if let Ok(v) = HeaderValue::from_str(&xfcc) {
            headers.insert("x-forwarded-client-cert", v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert("x-request-id", v);
    }
    if let Ok(v) = HeaderValue::from_str(&traceparent(headers)) {
        headers.insert("traceparent", v);
    }
    // The app's protocol is the port's, whatever the client spoke to us (h2c in, HTTP/1.1 out
    // is normal when the client side multiplexes).
    let (client, version) = if port.protocol.is_http2() {
        (&ctx.upstreams.h2, http::Version::HTTP_2)
    } else {
        (&ctx.upstreams.h1, http::Version::HTTP_11)
    };
    *req.version_mut() = version;
    let mut resp = client.request(req).await?;
    if let (Some(down), true) = (
        downstream_upgrade,
        resp.status() == StatusCode::SWITCHING_PROTOCOLS,
    ) {
        let up = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            if let (Ok(down), Ok(up)) = (down.await, up.await) {
                let (mut d, mut u) = (TokioIo::new(down), TokioIo::new(up));
                let _ = tokio::io::copy_bidirectional(&mut d, &mut u).await;
            }
        });
    }
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        strip_hop_by_hop(resp.headers_mut(), false);
    }
    Ok(resp.map(|b| b.boxed()))
}

/// Remove hop-by-hop headers and the headers `Connection` lists (RFC 9110 §7.6.1); they are
/// also illegal in HTTP/2 (RFC 9113 §8.2.2). An upgrade keeps `Connection` and `Upgrade`.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let listed: Vec<String> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    for h in HOP_BY_HOP.iter().map(|s| s.to_string()).chain(listed) {
        if upgrade && (h == "connection" || h == "upgrade") {
            continue;
        }
        if let Ok(name) = HeaderName::from_bytes(h.as_bytes()) {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_keeps_the_trace_and_replaces_the_parent() {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let t = traceparent(&h);
        assert!(t.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{t}");
        assert!(t.ends_with("-01"));
        assert!(!t.contains("00f067aa0ba902b7"));
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "zz-x",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ] {
            h.insert("traceparent", HeaderValue::from_static(bad));
            let t = traceparent(&h);
            assert!(
                !t.contains(bad.get(3..35).unwrap_or(bad)),
                "{bad} must start a new trace, got {t}"
            );
            assert_eq!(t.len(), 55);
        }
    }

    #[test]
    fn request_ids_are_kept_when_sane_and_made_otherwise() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert("x-request-id", HeaderValue::from_static("a b\"c"));
        let id = request_id(&h);
        assert_eq!(id.len(), 36, "{id}");
        assert_ne!(request_id(&HeaderMap::new()), request_id(&HeaderMap::new()));
    }
}
