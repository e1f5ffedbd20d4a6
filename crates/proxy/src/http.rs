//! Inbound HTTP: on ports whose protocol is HTTP, HTTP2 or GRPC (Istio protocol selection), the
//! destination sidecar parses each request out of the tunnel (or the plaintext socket), decides
//! it with the pure policy engine, and forwards it to the app. Many requests on one kept-alive
//! connection are each decided on their own, against the config current at that request.
//!
//! What the app receives is exactly what was decided on: the normalized path
//! ([`ward_policy::normalize`]) with the original query, never the raw path.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use ward_authn::{AuthnOutcome, TokenLocation, TokenSources};
use ward_config::{InboundPort, ProxyConfig};
use ward_policy::{Decision, Peer, RequestAuth};

use crate::admission::{self, admit, upstream_parts, Admitted, HeaderRules, RequestHead};
use crate::conntrack::{ConnFacts, UpgradeRequest};
use crate::inbound::{deciding_rule, InboundCtx};
use crate::splice::{splice, Abort, SpliceEnd};

/// Response bodies: the app's streamed body, or a small local one.
pub(crate) type RespBody = BoxBody<Bytes, hyper::Error>;

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

impl HttpConn {
    /// The connection's facts, for policy and re-checks.
    fn facts(&self) -> ConnFacts {
        ConnFacts {
            peer: self.peer.clone(),
            source_ip: self.src.ip(),
            destination_ip: self.dst.ip(),
            destination_port: self.dst.port(),
            request: None,
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

/// Where an HTTP/1.1 connection's one upgrade (if any) is handed over: the splice task, and the
/// switch that makes the connection's streams reset when they are dropped.
#[derive(Clone, Default)]
struct UpgradeSlot {
    /// Set by the request that was upgraded; taken by [`serve`] once hyper lets go of the
    /// connection.
    task: Arc<Mutex<Option<tokio::task::JoinHandle<Option<SpliceEnd>>>>>,
    /// Set when the splice ends by a failure or a policy close.
    abort: Arc<AtomicBool>,
}

/// Serve HTTP on an accepted connection until it closes, an upgraded connection included.
/// Returns how the upgraded connection ended, if the connection was upgraded.
pub(crate) async fn serve<S>(io: S, ctx: Arc<InboundCtx>, conn: Arc<HttpConn>) -> Option<SpliceEnd>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Abort + Unpin + Send + 'static,
{
    let slot = UpgradeSlot::default();
    let io = Abortable::new(io, slot.abort.clone());
    let svc = {
        let slot = slot.clone();
        hyper::service::service_fn(move |req| {
            let ctx = ctx.clone();
            let conn = conn.clone();
            let slot = slot.clone();
            async move { Ok::<_, Infallible>(handle(&ctx, &conn, &slot, req).await) }
        })
    };
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
    let task = slot.task.lock().ok().and_then(|mut t| t.take())?;
    // If this future is dropped (the connection was closed by policy), the splice goes too,
    // with a reset.
    let mut running = SpliceTask(task, slot.abort.clone());
    (&mut running.0).await.ok().flatten()
}

/// The splice task of an upgraded connection, ended (with a reset) when dropped.
struct SpliceTask(tokio::task::JoinHandle<Option<SpliceEnd>>, Arc<AtomicBool>);

impl Drop for SpliceTask {
    fn drop(&mut self) {
        if !self.0.is_finished() {
            self.1.store(true, Ordering::Relaxed);
            self.0.abort();
        }
    }
}

/// One request's record, with Envoy's access-log key names (docs/http.md, "Access log").
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

/// One request through its phases: admit (pure), authenticate, authorize (pure), forward.
/// Every refusal is answered and logged here, once.
async fn handle(
    ctx: &InboundCtx,
    conn: &HttpConn,
    upgrade_slot: &UpgradeSlot,
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
    let head = RequestHead {
        method: req.method(),
        uri: req.uri(),
        version: req.version(),
        headers: req.headers(),
    };
    let admitted = match admit(&head) {
        Ok(a) => a,
        Err(refused) => {
            log.emit(refused.status.as_u16(), "-", refused.detail, None);
            return local(refused.status, refused.body);
        }
    };
    log.authority = admitted.authority.clone();
    log.path = admitted.target.path.clone();
    let rules = HeaderRules {
        keep_overrides: cfg.workload.keep_override_headers,
    };
    admission::sanitize(req.headers_mut(), &admitted, rules);
    let authority = admitted.authority.clone();
    let target = &admitted.target;
    let mut query = target.query.clone();
    let auth = match cfg.jwt_rules.authenticator() {
        None => None,
        Some(authenticator) => {
            // Incoming copies of output headers are the client's forgeries (docs/http.md).
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
    let admitted = Admitted {
        target: ward_policy::NormalizedPath {
            path: admitted.target.path.clone(),
            query,
        },
        ..admitted
    };
    let request = UpgradeRequest {
        method: admitted.method.as_str().to_owned(),
        host: admitted.authority.clone(),
        path: admitted.target.path.clone(),
        headers: header_list(req.headers()),
        auth,
    };
    let decision = cfg.authz.evaluate_http(&request.attributes(&conn.facts()));
    crate::inbound::log_dry_run_and_audit(&decision, conn.src, conn.peer_id.as_deref(), conn.dst);
    let (policy, _) = deciding_rule(&decision);
    ctx.metrics
        .decision(decision.is_allowed(), policy.as_deref(), &log.workload);
    if !decision.is_allowed() {
        // Envoy RBAC: 403 with the body `RBAC: access denied`.
        log.emit(403, "-", &decision.response_detail(), Some(&decision));
        return local(StatusCode::FORBIDDEN, "RBAC: access denied");
    }
    let upgrade = (!admitted.upgrade.is_empty()).then(|| UpgradeCtx {
        downstream: hyper::upgrade::on(&mut req),
        request,
        slot: upgrade_slot.clone(),
    });
    match forward(ctx, conn, &port, req, &admitted, &request_id, upgrade).await {
        Ok(resp) => {
            log.emit(resp.status().as_u16(), "-", "via_upstream", Some(&decision));
            resp
        }
        Err(Forwarded::BadUpgrade) => {
            log.emit(502, "UPE", "upgrade_protocol_mismatch", Some(&decision));
            local(
                StatusCode::BAD_GATEWAY,
                "upstream switched to an unexpected protocol\n",
            )
        }
        Err(Forwarded::Failed(e)) => {
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

/// What an upgrade request brings to [`forward`]: the client's side of the connection once the
/// 101 is sent, the request as authorized (to re-check it when policy changes), and where the
/// connection's splice is handed over.
struct UpgradeCtx {
    downstream: hyper::upgrade::OnUpgrade,
    request: UpgradeRequest,
    slot: UpgradeSlot,
}

/// Why forwarding produced no response from the app.
enum Forwarded {
    /// The app could not be reached or failed before answering.
    Failed(crate::upstream::UpstreamError),
    /// The app answered 101 with a protocol that was not asked for, or an HTTP version.
    BadUpgrade,
}

/// Send the admitted request to the app and stream the response back. The method, authority
/// and path the app receives are [`upstream_parts`] of the authorized [`Admitted`].
async fn forward(
    ctx: &InboundCtx,
    conn: &HttpConn,
    port: &InboundPort,
    req: Request<Incoming>,
    admitted: &Admitted,
    request_id: &str,
    upgrade: Option<UpgradeCtx>,
) -> Result<Response<RespBody>, Forwarded> {
    let (mut parts, body) = req.into_parts();
    let headers = &mut parts.headers;
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
    // is normal when the client side multiplexes). An upgrade needs HTTP/1.1 on both sides.
    let version = if port.protocol.is_http2() {
        http::Version::HTTP_2
    } else {
        http::Version::HTTP_11
    };
    if version == http::Version::HTTP_2 {
        headers.remove(http::header::UPGRADE);
        headers.remove(http::header::CONNECTION);
    }
    parts.uri = upstream_parts(admitted, version, headers);
    parts.version = version;
    let req = Request::from_parts(parts, body.boxed());
    let sent = if version == http::Version::HTTP_2 {
        ctx.upstreams.send_h2(port.target, req).await
    } else {
        ctx.upstreams.send_h1(port.target, req).await
    };
    let mut resp = sent.map_err(Forwarded::Failed)?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(up) = upgrade.filter(|_| admission::upgrade_accepted(admitted, resp.headers()))
        else {
            // Never splice a connection the request did not ask to switch, or to a protocol
            // Ward parses (RFC 9110 §7.8); the app's side is dropped.
            return Err(Forwarded::BadUpgrade);
        };
        let upstream = hyper::upgrade::on(&mut resp);
        let facts = ConnFacts {
            request: Some(Arc::new(up.request)),
            ..conn.facts()
        };
        let tracker = ctx.tracker.clone();
        let task = tokio::spawn(async move {
            let (Ok(down), Ok(upstream)) = (up.downstream.await, upstream.await) else {
                return None;
            };
            let mut d = UpgradedIo(TokioIo::new(down), up.slot.abort.clone());
            // The app's side is the pool's own TCP stream (`upstream::Upstreams::send_h1`), so
            // it can be reset too; bytes the app sent right after its 101 go first.
            let Ok(app) = upstream.downcast::<TokioIo<TcpStream>>() else {
                d.abort();
                return None;
            };
            if !app.read_buf.is_empty() && d.write_all(&app.read_buf).await.is_err() {
                d.abort();
                return None;
            }
            let mut u = app.io.into_inner();
            let (guard, close) = tracker.register(facts);
            let end = splice(&mut d, &mut u, Some(close)).await;
            drop(guard);
            Some(end)
        });
        if let Ok(mut t) = up.slot.task.lock() {
            *t = Some(task);
        }
        return Ok(resp.map(|b| b.boxed()));
    }
    admission::strip_hop_by_hop(resp.headers_mut());
    Ok(resp.map(|b| b.boxed()))
}

/// One side of an upgraded connection. Aborting sets the connection's abort switch, so the
/// underlying streams are reset, not cleanly closed, when they are dropped.
struct UpgradedIo(TokioIo<hyper::upgrade::Upgraded>, Arc<AtomicBool>);

impl Abort for UpgradedIo {
    fn abort(&mut self) {
        self.1.store(true, Ordering::Relaxed);
    }
}

impl tokio::io::AsyncRead for UpgradedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for UpgradedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A stream whose drop is a reset once its abort switch is set (by a policy close or a failed
/// side of an upgraded connection that runs over it).
pub(crate) struct Abortable<S: Abort> {
    inner: S,
    abort: Arc<AtomicBool>,
}

impl<S: Abort> Abortable<S> {
    pub(crate) fn new(inner: S, abort: Arc<AtomicBool>) -> Self {
        Abortable { inner, abort }
    }
}

impl<S: Abort> Drop for Abortable<S> {
    fn drop(&mut self) {
        if self.abort.load(Ordering::Relaxed) {
            self.inner.abort();
        }
    }
}

impl<S: Abort + tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Abortable<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: Abort + tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Abortable<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
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
