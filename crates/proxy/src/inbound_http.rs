//! Inbound HTTP: on ports whose protocol is HTTP, HTTP2 or GRPC (Istio protocol selection), the
//! destination sidecar parses each request out of the tunnel (or the plaintext socket), decides
//! it with the pure policy engine, and forwards it to the app. Many requests on one kept-alive
//! connection are each decided on their own, against the config current at that request.
//!
//! A request goes through its phases, each a function that returns a value or a [`Refusal`]:
//! [`route`] (the port is still served) → [`admit`] (pure: one method, one authority, the
//! normalized path) → [`authenticate`] (JWT, RequestAuthentication) → [`authorize`] (pure:
//! AuthorizationPolicy) → [`forward`] (to the app). A refusal is answered by one local reply
//! ([`local_reply`]) and logged by one line ([`RequestLog`]), whatever phase refused.
//!
//! What the app receives is exactly what was decided on: the normalized path
//! ([`ward_policy::normalize`]) with the original query, never the raw path.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
use ward_authn::{Authenticator, AuthnOutcome, Jwks, TokenLocation, TokenSources};
use ward_config::{InboundPort, ProxyConfig};
use ward_policy::{Decision, RequestAuth};

use crate::admission::{self, admit, upstream_parts, Admitted, HeaderRules, RequestHead};
use crate::audit::{AuditEvent, Verdict as AuditVerdict};
use crate::connection::InboundConn;
use crate::conntrack::{Authorized, UpgradeRequest};
use crate::http_metrics::{self, CountingBody, RequestMeter};
use crate::inbound::InboundCtx;
use crate::metrics::{Parties, Reporter};
use crate::refusal::{deciding_rule, Refusal, ResponseFlag};
use crate::splice::{splice, Abort, SpliceEnd};

/// Response bodies: the app's streamed body, or a small local one.
pub(crate) type RespBody = BoxBody<Bytes, hyper::Error>;

/// The one local reply (inbound and outbound): the refusal's status and body (plain text),
/// `Connection: close` when the refusal closes the connection, and Envoy's `WWW-Authenticate`
/// challenge for a rejected token.
pub(crate) fn local_reply(refusal: &Refusal, challenge: Option<String>) -> Response<RespBody> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(refusal.body.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = refusal.status.unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    if let Some(v) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
    }
    if refusal.close {
        r.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

/// How long a client of a gateway server may take to send a request's headers (docs/http.md,
/// "Limits").
pub(crate) const EDGE_HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The HTTP server of every connection Ward serves HTTP on (inbound HTTP ports, shared egress
/// listeners, gateway servers): HTTP/1.1 and h2c, with bounded header sizes (CVE-2019-15226,
/// HPACK bombs) and HTTP/2 reset limits (CVE-2023-44487, rapid reset): hyper's and h2's
/// limits, set explicitly (docs/http.md lists them).
pub(crate) fn server() -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().max_buf_size(64 * 1024);
    builder
        .http2()
        .max_header_list_size(16 * 1024)
        .max_concurrent_streams(256)
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(256);
    builder
}

/// [`server`] for a gateway server, whose clients are outside the mesh: a client that has not
/// sent a request's headers within [`EDGE_HEADER_READ_TIMEOUT`] is disconnected (slowloris).
/// hyper runs that timer while it waits for the next request too, so an idle HTTP/1.1
/// connection is closed after it as well (docs/ingress.md). Sidecar listeners do not get it:
/// their clients are the workload's own app and other sidecars, whose idle pooled
/// connections it would close.
pub(crate) fn edge_server() -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut builder = server();
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(EDGE_HEADER_READ_TIMEOUT);
    builder
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
pub(crate) async fn serve<S>(
    io: S,
    ctx: Arc<InboundCtx>,
    conn: Arc<InboundConn>,
) -> Option<SpliceEnd>
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
            async move { Ok::<_, Infallible>(serve_request(&ctx, &conn, &slot, req).await) }
        })
    };
    if let Err(e) = server()
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
    conn: &'a InboundConn,
    workload: String,
    method: String,
    path: String,
    authority: String,
    protocol: &'static str,
    request_id: String,
    /// `iss/sub` of a verified token (never the token itself).
    request_principal: Option<String>,
    /// The authorization decision, once one was made.
    decision: Option<(bool, Option<String>, Option<usize>)>,
    /// The break-glass grant that lifted a denial of this request.
    break_glass: Option<String>,
    started: Instant,
    /// Which records are written (Telemetry `accessLogging`, the SERVER side).
    logging: Arc<ward_config::access_log_policy::AccessLogPolicy>,
    /// The request headers the filter reads, kept from the request (docs/http.md).
    filter_headers: Vec<(String, String)>,
}

impl RequestLog<'_> {
    /// The request was answered by the app with `code`.
    fn served(&self, code: StatusCode) {
        self.emit(code.as_u16(), ResponseFlag::None, "via_upstream");
    }

    /// The request was refused: by a phase before the app, or by the app's failure.
    fn refused(&mut self, refusal: &Refusal) {
        if refusal.by_policy() {
            self.decision = Some((false, refusal.policy.clone(), refusal.rule));
        }
        let code = refusal.status.map_or(500, |s| s.as_u16());
        self.emit(code, refusal.flag, &refusal.detail);
    }

    /// This hop's span, if it is reported: what the access log says, as span attributes. It
    /// ends with the response body.
    fn span(
        &self,
        ctx: &InboundCtx,
        cfg: &ProxyConfig,
        hop: &crate::trace::Hop,
        code: u16,
        flag: ResponseFlag,
    ) -> Option<crate::trace::OpenSpan> {
        hop.report.as_ref()?;
        ctx.tracer.open(
            cfg,
            hop,
            crate::trace::Finished {
                kind: opentelemetry::trace::SpanKind::Server,
                method: self.method.clone(),
                path: self.path.clone(),
                status: code,
                response_flags: flag.as_str().to_owned(),
                authority: self.authority.clone(),
                peer: Some(self.conn.src),
                peer_identity: self.conn.peer_id.clone(),
                authz: self.decision.as_ref().map(|(allowed, policy, _)| {
                    (if *allowed { "allow" } else { "deny" }, policy.clone())
                }),
                request_id: self.request_id.clone(),
                protocol: self.protocol,
            },
        )
    }

    fn emit(&self, code: u16, flag: ResponseFlag, details: &str) {
        let headers = crate::access_log::FilterHeaders(&self.filter_headers);
        let record = ward_config::access_log_policy::Record {
            code: Some(code),
            duration: Some(self.started.elapsed()),
            method: Some(&self.method),
            url_path: Some(&self.path),
            host: Some(&self.authority),
            headers: Some(&headers),
            mtls: Some(self.conn.peer_id.is_some()),
            source_principal: self.conn.peer_id.as_deref(),
        };
        if !self.logging.server.logs_record(&record) {
            return;
        }
        let (decision, policy, rule) = match &self.decision {
            Some((allowed, policy, rule)) => (
                Some(if *allowed { "allow" } else { "deny" }),
                policy.as_deref(),
                *rule,
            ),
            None => (None, None, None),
        };
        tracing::info!(
            target: "access",
            direction = "inbound",
            method = %self.method,
            path = %self.path,
            protocol = self.protocol,
            authority = %self.authority,
            response_code = code,
            response_flags = flag.as_str(),
            response_code_details = details,
            request_id = %self.request_id,
            src.addr = %self.conn.src,
            src.identity = self.conn.peer_id.as_deref(),
            request.auth.principal = self.request_principal.as_deref(),
            dst.addr = %self.conn.dst,
            dst.workload = %self.workload,
            authz.decision = decision,
            authz.policy = policy,
            authz.rule = rule.map(|r| r as u64),
            ward.break_glass = self.break_glass.as_deref(),
            duration_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            "request complete"
        );
    }
}

/// The access log's spelling of an HTTP version (Envoy's `protocol`).
pub(crate) fn protocol_name(v: http::Version) -> &'static str {
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

/// One request through its phases (see the module docs). Every refusal is answered and
/// logged here, once; every answer is measured (`http_metrics`).
async fn serve_request(
    ctx: &InboundCtx,
    conn: &Arc<InboundConn>,
    upgrade_slot: &UpgradeSlot,
    req: Request<Incoming>,
) -> Response<RespBody> {
    let cfg: Arc<ProxyConfig> = ctx.config.borrow().clone();
    let mut log = RequestLog {
        conn,
        workload: format!("{}/{}", cfg.workload.namespace, cfg.workload.name),
        method: req.method().as_str().to_owned(),
        path: "-".to_owned(),
        authority: String::new(),
        protocol: protocol_name(req.version()),
        request_id: request_id(req.headers()),
        request_principal: None,
        decision: None,
        break_glass: None,
        started: Instant::now(),
        filter_headers: crate::access_log::filter_headers(&cfg.access_logging, req.headers()),
        logging: cfg.access_logging.clone(),
    };
    let request_body = Arc::new(AtomicU64::new(0));
    let request_head = http_metrics::request_head_size(&req);
    let grpc = http_metrics::is_grpc(req.headers());
    let mut req = req.map(|b| CountingBody::new(b, request_body.clone()));
    // This hop's span (SERVER): the app gets it as its caller (docs/tracing.md).
    let hop = crate::trace::Hop::start(&cfg.tracing, true, req.headers_mut());
    let mut challenge = None;
    ctx.metrics
        .coverage()
        .request(crate::inbound::flow(&cfg, conn));
    let answered = phases(ctx, &cfg, conn, upgrade_slot, req, &mut log, &mut challenge).await;
    let meter = |log: &RequestLog<'_>| {
        let source = conn.source_meta(&cfg);
        let destination = crate::inbound::own_meta(&cfg);
        let authority = Some(log.authority.as_str()).filter(|a| !a.is_empty());
        let parties = Parties {
            reporter: Reporter::Destination,
            source: source.as_deref(),
            source_principal: conn.peer_id.as_deref(),
            source_namespace: conn.peer.as_ref().map(|p| p.namespace.as_str()),
            destination: Some(&destination),
            destination_principal: Some(&ctx.identity),
            destination_namespace: None,
            service: cfg
                .directory
                .inbound_service(&log.workload, conn.dst.port(), authority)
                .map(|s| &**s),
        };
        RequestMeter {
            metrics: ctx.metrics.clone(),
            peers: parties.labels(),
            security_policy: parties.security_policy(conn.tls.is_some()),
            grpc,
            started: log.started,
            request_head,
            request_body,
            overrides: Some(cfg.metrics.clone()),
        }
    };
    match answered {
        Ok(resp) => {
            log.served(resp.status());
            let span = log.span(ctx, &cfg, &hop, resp.status().as_u16(), ResponseFlag::None);
            meter(&log).attach_with_span(resp, ResponseFlag::None.as_str(), span)
        }
        Err(refusal) => {
            log.refused(&refusal);
            let code = refusal.status.map_or(500, |s| s.as_u16());
            let span = log.span(ctx, &cfg, &hop, code, refusal.flag);
            meter(&log).attach_with_span(
                local_reply(&refusal, challenge),
                refusal.flag.as_str(),
                span,
            )
        }
    }
}

/// The phases in order; the first refusal ends the request. `log` learns what each phase
/// found; `challenge` is set when a token is rejected.
async fn phases(
    ctx: &InboundCtx,
    cfg: &ProxyConfig,
    conn: &Arc<InboundConn>,
    upgrade_slot: &UpgradeSlot,
    mut req: Request<CountingBody>,
    log: &mut RequestLog<'_>,
    challenge: &mut Option<String>,
) -> Result<Response<RespBody>, Refusal> {
    let port = route(cfg, conn)?.clone();
    let admitted = admit(&RequestHead {
        method: req.method(),
        uri: req.uri(),
        version: req.version(),
        headers: req.headers(),
    })?;
    log.authority.clone_from(&admitted.authority);
    log.path.clone_from(&admitted.target.path);
    let rules = HeaderRules {
        keep_overrides: cfg.workload.keep_override_headers,
    };
    admission::sanitize(req.headers_mut(), &admitted, rules);
    let mut query = admitted.target.query.clone();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let auth = authenticate(
        cfg.jwt_rules.authenticator().map(|a| &**a),
        req.headers_mut(),
        &mut query,
        now,
        &|issuer| ctx.authn.keys(issuer),
        &|issuer| ctx.authn.note_unknown_kid(issuer),
        &|result| ctx.metrics.jwt_validation(&log.workload, result),
    )
    .inspect_err(|_| {
        // Envoy: `Bearer realm="<uri>"`, plus `error="invalid_token"` for a bad token.
        *challenge = Some(format!(
            "Bearer realm=\"http://{}{}\", error=\"invalid_token\"",
            admitted.authority.replace('"', ""),
            admitted.target.path
        ));
    })?;
    log.request_principal = auth.as_ref().map(|a| a.principal.clone());
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
    let decision = authorize(cfg, conn, &request);
    crate::inbound::log_dry_run_and_audit(&decision, conn.src, conn.peer_id.as_deref(), conn.dst);
    let (policy, rule) = deciding_rule(&decision);
    ctx.metrics.authz_decision(&log.workload, &decision);
    // A denial lifted by a break-glass grant (its use recorded in the control plane's trail
    // first): served, and the sidecar's record says so.
    let mut until = None;
    if !decision.is_allowed() {
        if let Some(l) = lift_denial(ctx, conn, &decision, &log.workload, &request) {
            until = Some(l.expires_at);
            log.break_glass = Some(l.grant);
        }
    }
    let event = AuditEvent {
        time: std::time::SystemTime::now(),
        direction: "inbound",
        protocol: "http",
        verdict: AuditVerdict::Policy(&decision),
        src_addr: conn.src,
        src_identity: conn.peer_id.as_deref(),
        dst_addr: conn.dst,
        dst_identity: Some(&ctx.identity),
        dst_host: Some(&admitted.authority),
        request_principal: log.request_principal.as_deref(),
        method: Some(&log.method),
        path: Some(&admitted.target.path),
        request_id: Some(&log.request_id),
        break_glass: log.break_glass.as_deref(),
    };
    if let Some(detail) = ctx.audit.admit(cfg.workload.audit_fail_closed, &event) {
        // Fail-closed: what the trail cannot record is not served (docs/audit.md).
        return Err(Refusal::internal(ResponseFlag::None, detail)
            .with_reply(StatusCode::SERVICE_UNAVAILABLE, "audit trail unavailable\n"));
    }
    if !decision.is_allowed() && log.break_glass.is_none() {
        // Envoy RBAC: 403 with the body `RBAC: access denied`, and no response flag (`-`).
        return Err(Refusal {
            flag: ResponseFlag::None,
            ..Refusal::denied_by(&decision).with_reply(StatusCode::FORBIDDEN, "RBAC: access denied")
        });
    }
    log.decision = Some((true, policy, rule));
    let upgrade = (!admitted.upgrade.is_empty()).then(|| UpgradeCtx {
        downstream: hyper::upgrade::on(&mut req),
        request,
        slot: upgrade_slot.clone(),
        until,
    });
    forward(ctx, conn, &port, req, &admitted, &log.request_id, upgrade).await
}

/// A denied request served anyway under the workload's active break-glass grant, if it has
/// one and the use is recorded (`crate::breakglass`): the grant. The record holds the
/// method and the normalized path without its query, never a token or a body.
fn lift_denial(
    ctx: &InboundCtx,
    conn: &InboundConn,
    decision: &Decision,
    workload: &str,
    request: &UpgradeRequest,
) -> Option<crate::breakglass::Lifted> {
    ctx.break_glass
        .lift(workload, crate::breakglass::now_secs(), || {
            let mut f = serde_json::Map::new();
            f.insert("srcAddr".into(), conn.src.to_string().into());
            if let Some(id) = &conn.peer_id {
                f.insert("srcIdentity".into(), id.clone().into());
            }
            f.insert("dstPort".into(), conn.dst.port().into());
            f.insert("method".into(), request.method.clone().into());
            f.insert("path".into(), request.path.clone().into());
            f.insert("deniedBy".into(), decision.response_detail().into());
            f
        })
}

/// The gateway's own checks of a request at the edge (docs/ingress.md): admitted as on an
/// inbound port (one method, one authority, the normalized path, spoofable headers removed),
/// its JWT verified with the RequestAuthentications that select the gateway workload, and
/// decided by the AuthorizationPolicies that select it (a client outside the mesh has no
/// principal; a mesh workload that came over HBONE, `peer`, has its verified SPIFFE id, so
/// `principals` and `namespaces` match it; `remoteIpBlocks` see the socket peer). The request
/// goes on with the normalized path and an `x-request-id`. `Ok`: the verified request
/// principal, if any;
/// `Err`: the refusal, with the `WWW-Authenticate` challenge of a rejected token.
pub(crate) fn check_at_edge(
    ctx: &InboundCtx,
    cfg: &ProxyConfig,
    src: std::net::SocketAddr,
    dst: std::net::SocketAddr,
    parts: &mut http::request::Parts,
    peer: Option<&InboundConn>,
) -> Result<Option<String>, (Refusal, Option<String>)> {
    let admitted = admit(&RequestHead {
        method: &parts.method,
        uri: &parts.uri,
        version: parts.version,
        headers: &parts.headers,
    })
    .map_err(|r| (r, None))?;
    let rules = HeaderRules {
        keep_overrides: cfg.workload.keep_override_headers,
    };
    admission::sanitize(&mut parts.headers, &admitted, rules);
    let workload = format!("{}/{}", cfg.workload.namespace, cfg.workload.name);
    let mut query = admitted.target.query.clone();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let auth = authenticate(
        cfg.jwt_rules.authenticator().map(|a| &**a),
        &mut parts.headers,
        &mut query,
        now,
        &|issuer| ctx.authn.keys(issuer),
        &|issuer| ctx.authn.note_unknown_kid(issuer),
        &|result| ctx.metrics.jwt_validation(&workload, result),
    )
    .map_err(|r| {
        let challenge = format!(
            "Bearer realm=\"https://{}{}\", error=\"invalid_token\"",
            admitted.authority.replace('"', ""),
            admitted.target.path
        );
        (r, Some(challenge))
    })?;
    let principal = auth.as_ref().map(|a| a.principal.clone());
    let mut conn = peer
        .cloned()
        .unwrap_or_else(|| InboundConn::plaintext(src, dst));
    // `remoteIpBlocks` and `remote.ip` see the client the trusted proxies name in
    // `X-Forwarded-For`; `ipBlocks` keeps the socket peer (crates/proxy/src/xff.rs).
    conn.remote = Some(crate::xff::client_address(
        src.ip(),
        &parts.headers,
        cfg.workload.num_trusted_proxies,
    ));
    let request = UpgradeRequest {
        method: admitted.method.as_str().to_owned(),
        host: admitted.authority.clone(),
        path: admitted.target.path.clone(),
        headers: header_list(&parts.headers),
        auth,
    };
    let decision = authorize(cfg, &conn, &request);
    crate::inbound::log_dry_run_and_audit(&decision, src, conn.peer_id.as_deref(), dst);
    ctx.metrics.authz_decision(&workload, &decision);
    let id = request_id(&parts.headers);
    let event = AuditEvent {
        time: std::time::SystemTime::now(),
        direction: "gateway",
        protocol: "http",
        verdict: AuditVerdict::Policy(&decision),
        src_addr: src,
        src_identity: conn.peer_id.as_deref(),
        dst_addr: dst,
        dst_identity: Some(&ctx.identity),
        dst_host: Some(&admitted.authority),
        request_principal: principal.as_deref(),
        method: Some(admitted.method.as_str()),
        path: Some(&admitted.target.path),
        request_id: Some(&id),
        break_glass: None,
    };
    if let Some(detail) = ctx.audit.admit(cfg.workload.audit_fail_closed, &event) {
        // Fail-closed: what the trail cannot record is not served (docs/audit.md).
        return Err((
            Refusal::internal(ResponseFlag::None, detail)
                .with_reply(StatusCode::SERVICE_UNAVAILABLE, "audit trail unavailable\n"),
            None,
        ));
    }
    if !decision.is_allowed() {
        return Err((
            Refusal {
                flag: ResponseFlag::None,
                ..Refusal::denied_by(&decision)
                    .with_reply(StatusCode::FORBIDDEN, "RBAC: access denied")
            },
            None,
        ));
    }
    let target = match &query {
        Some(q) => format!("{}?{q}", admitted.target.path),
        None => admitted.target.path.clone(),
    };
    if let Ok(uri) = target.parse() {
        parts.uri = uri;
    }
    // The trace context was written by the gateway's span (`crate::trace`).
    if let Ok(v) = HeaderValue::from_str(&id) {
        parts.headers.insert("x-request-id", v);
    }
    crate::xff::append_peer(&mut parts.headers, src.ip());
    Ok(principal)
}

/// The port the connection is for, if the config still serves it.
fn route<'c>(cfg: &'c ProxyConfig, conn: &InboundConn) -> Result<&'c InboundPort, Refusal> {
    cfg.inbound
        .iter()
        .find(|p| p.port == conn.dst.port())
        .ok_or_else(|| {
            Refusal::internal(ResponseFlag::NoRoute, "port_no_longer_served")
                .with_reply(StatusCode::SERVICE_UNAVAILABLE, "no such port\n")
        })
}

/// Verify the request's JWT, if the workload has jwtRules: `Ok(None)` without a token, the
/// verified identity with one; the token is removed from where it was found (unless
/// `forwardOriginalToken`) and claims are copied to headers as the rules say. Incoming copies of
/// those output headers are removed first: they are the client's forgeries (docs/http.md).
fn authenticate(
    authenticator: Option<&Authenticator>,
    headers: &mut HeaderMap,
    query: &mut Option<String>,
    now: u64,
    keys: &dyn Fn(&str) -> Option<Arc<Jwks>>,
    unknown_kid: &dyn Fn(&str),
    outcome: &dyn Fn(&'static str),
) -> Result<Option<RequestAuth>, Refusal> {
    let Some(authenticator) = authenticator else {
        return Ok(None);
    };
    for h in authenticator.output_headers() {
        headers.remove(h);
    }
    let list = header_list(headers);
    let sources = TokenSources {
        headers: &list,
        query: query.as_deref(),
    };
    match authenticator.authenticate(&sources, now, keys) {
        AuthnOutcome::NoToken => {
            outcome("no_token");
            Ok(None)
        }
        AuthnOutcome::Authenticated {
            auth,
            strip,
            add_headers,
        } => {
            outcome("valid");
            for loc in &strip {
                remove_token(headers, query, loc);
            }
            for (name, value) in add_headers {
                if let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(&value),
                ) {
                    headers.insert(n, v);
                }
            }
            Ok(Some(RequestAuth {
                principal: auth.principal,
                audiences: auth.audiences,
                presenter: auth.presenter,
                claims: auth.claims,
            }))
        }
        AuthnOutcome::Rejected {
            status,
            message,
            reason,
            unknown_kid: missing,
        } => {
            outcome(crate::metrics::jwt_result(reason));
            if let Some((issuer, _kid)) = missing {
                unknown_kid(&issuer);
            }
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::UNAUTHORIZED);
            let detail = format!("jwt_authn_access_denied{{{}}}", message.replace(' ', "_"));
            Err(Refusal::downstream(ResponseFlag::None, detail).with_reply(status, message))
        }
    }
}

/// Decide the request with the AuthorizationPolicies of `cfg`. Pure.
fn authorize(cfg: &ProxyConfig, conn: &InboundConn, request: &UpgradeRequest) -> Decision {
    cfg.authz.evaluate_http(&request.attributes(conn))
}

/// What an upgrade request brings to [`forward`]: the client's side of the connection once the
/// 101 is sent, the request as authorized (to re-check it when policy changes), and where the
/// connection's splice is handed over.
struct UpgradeCtx {
    downstream: hyper::upgrade::OnUpgrade,
    request: UpgradeRequest,
    slot: UpgradeSlot,
    /// The end of the break-glass grant that let the request in, if one did.
    until: Option<u64>,
}

/// Send the admitted request to the app and stream the response back. The method, authority
/// and path the app receives are [`upstream_parts`] of the authorized [`Admitted`].
async fn forward(
    ctx: &InboundCtx,
    conn: &Arc<InboundConn>,
    port: &InboundPort,
    req: Request<CountingBody>,
    admitted: &Admitted,
    request_id: &str,
    upgrade: Option<UpgradeCtx>,
) -> Result<Response<RespBody>, Refusal> {
    // The app's protocol is the port's, whatever the client spoke to us (h2c in, HTTP/1.1 out
    // is normal when the client side multiplexes). An upgrade needs HTTP/1.1 on both sides.
    let version = if port.protocol.is_http2() {
        http::Version::HTTP_2
    } else {
        http::Version::HTTP_11
    };
    let (mut parts, body) = req.into_parts();
    add_mesh_headers(&mut parts.headers, ctx, conn, request_id);
    if version == http::Version::HTTP_2 {
        parts.headers.remove(http::header::UPGRADE);
        parts.headers.remove(http::header::CONNECTION);
    }
    parts.uri = upstream_parts(admitted, version, &mut parts.headers);
    parts.version = version;
    let req = Request::from_parts(parts, body.boxed());
    let sent = if version == http::Version::HTTP_2 {
        ctx.upstreams.send_h2(port.target, req).await
    } else {
        ctx.upstreams.send_h1(port.target, req).await
    };
    let mut resp = sent.map_err(|e| {
        tracing::debug!(error = %e, "upstream request failed");
        Refusal::upstream(
            ResponseFlag::UpstreamFailure,
            "upstream_reset_before_response_started",
        )
        .with_reply(StatusCode::SERVICE_UNAVAILABLE, "upstream connect error\n")
    })?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(up) = upgrade.filter(|_| admission::upgrade_accepted(admitted, resp.headers()))
        else {
            // Never splice a connection the request did not ask to switch, or to a protocol
            // Ward parses (RFC 9110 §7.8); the app's side is dropped.
            return Err(Refusal::upstream(
                ResponseFlag::UpstreamProtocolError,
                "upgrade_protocol_mismatch",
            )
            .with_reply(
                StatusCode::BAD_GATEWAY,
                "upstream switched to an unexpected protocol\n",
            ));
        };
        hand_over_upgrade(ctx, conn, up, hyper::upgrade::on(&mut resp));
        return Ok(resp.map(|b| b.boxed()));
    }
    admission::strip_hop_by_hop(resp.headers_mut());
    Ok(resp.map(|b| b.boxed()))
}

/// The headers the mesh adds for the app: XFCC and `x-request-id`.
fn add_mesh_headers(
    headers: &mut HeaderMap,
    ctx: &InboundCtx,
    conn: &InboundConn,
    request_id: &str,
) {
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
    // `traceparent` (and B3) were written for the app by this hop's span (`crate::trace`).
}

/// After the app's 101, splice the client's side to the app's on a task of its own, registered
/// with the tracker as the request that upgraded it (so a policy change re-checks it), and hand
/// the task to [`serve`] through the connection's upgrade slot.
fn hand_over_upgrade(
    ctx: &InboundCtx,
    conn: &Arc<InboundConn>,
    up: UpgradeCtx,
    upstream: hyper::upgrade::OnUpgrade,
) {
    let authorized = Authorized {
        conn: conn.clone(),
        request: Some(Arc::new(up.request)),
    };
    let tracker = ctx.tracker.clone();
    let abort = up.slot.abort.clone();
    let task = tokio::spawn(async move {
        let (Ok(down), Ok(upstream)) = (up.downstream.await, upstream.await) else {
            return None;
        };
        let mut d = UpgradedIo(TokioIo::new(down), abort);
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
        let (guard, close) = tracker.register(authorized);
        let close = match up.until {
            Some(expires_at) => crate::inbound::close_at_expiry(close, expires_at),
            None => close,
        };
        let end = splice(&mut d, &mut u, Some(close)).await;
        drop(guard);
        Some(end)
    });
    if let Ok(mut t) = up.slot.task.lock() {
        *t = Some(task);
    }
}

/// One side of an upgraded connection. Aborting sets the connection's abort switch, so the
/// underlying streams are reset, not cleanly closed, when they are dropped.
struct UpgradedIo(TokioIo<hyper::upgrade::Upgraded>, Arc<AtomicBool>);

impl crate::splice::Chunked for UpgradedIo {}

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
    use crate::inbound::tests::{config, conn};

    /// The request `request` names, on the HTTP port 9002 of the test workload.
    fn request(method: &str, path: &str) -> UpgradeRequest {
        UpgradeRequest {
            method: method.into(),
            host: "srv.app".into(),
            path: path.into(),
            headers: vec![],
            auth: None,
        }
    }

    #[test]
    fn route_refuses_a_port_no_longer_served() {
        let cfg = config("");
        assert_eq!(
            route(&cfg, &conn(None, "127.9.0.10", 9002)).unwrap().port,
            9002
        );
        let r = route(&cfg, &conn(None, "127.9.0.10", 9003)).unwrap_err();
        assert_eq!(
            (r.status, r.flag, r.detail.as_str(), r.body),
            (
                Some(StatusCode::SERVICE_UNAVAILABLE),
                ResponseFlag::NoRoute,
                "port_no_longer_served",
                "no such port\n"
            )
        );
    }

    #[test]
    fn authorize_table() {
        let public_only = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: public, namespace: app}\nspec:\n  selector: {matchLabels: {app: srv}}\n  rules: [{from: [{source: {principals: [cluster.local/ns/app/sa/cli]}}], to: [{operation: {methods: [GET], paths: [/public/*]}}]}]\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-admin, namespace: app}\nspec:\n  action: DENY\n  rules: [{to: [{operation: {paths: [/admin*]}}]}]\n";
        let cfg = config(public_only);
        let cli = conn(Some(("app", "cli")), "127.9.0.10", 9002);
        let other = conn(Some(("other", "x")), "127.9.0.10", 9002);
        // (name, connection, method, path, allowed, deciding policy)
        let cases = [
            (
                "allowed read",
                &cli,
                "GET",
                "/public/a",
                true,
                Some("app/public"),
            ),
            (
                "method not allowed",
                &cli,
                "DELETE",
                "/public/a",
                false,
                None,
            ),
            ("path not allowed", &cli, "GET", "/private", false, None),
            ("other caller", &other, "GET", "/public/a", false, None),
            (
                "deny wins",
                &cli,
                "GET",
                "/admin/x",
                false,
                Some("app/no-admin"),
            ),
        ];
        for (name, c, method, path, allowed, policy) in cases {
            let decision = authorize(&cfg, c, &request(method, path));
            assert_eq!(decision.is_allowed(), allowed, "{name}");
            if allowed {
                assert_eq!(deciding_rule(&decision).0.as_deref(), policy, "{name}");
            } else {
                let r = Refusal::denied_by(&decision);
                assert_eq!(r.flag, ResponseFlag::Deny, "{name}");
                assert_eq!(r.policy.as_deref(), policy, "{name}");
                assert!(
                    r.detail.starts_with("rbac_access_denied"),
                    "{name}: {}",
                    r.detail
                );
            }
        }
    }

    /// A RequestAuthentication for the test workload with an inline Ed25519 key set (the public
    /// key of RFC 8037 appendix A).
    const REQUEST_AUTHN: &str = "---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: app}\nspec:\n  selector: {matchLabels: {app: srv}}\n  jwtRules:\n  - issuer: https://idp.example\n    jwks: '{\"keys\":[{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"kid\":\"k\",\"x\":\"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo\"}]}'\n    outputClaimToHeaders: [{header: x-jwt-sub, claim: sub}]\n";

    #[test]
    fn authenticate_table() {
        let cfg = config(REQUEST_AUTHN);
        let authenticator = cfg.jwt_rules.authenticator().unwrap().clone();
        let no_keys = |_: &str| None;
        let noted = std::cell::RefCell::new(Vec::<String>::new());
        let note = |issuer: &str| noted.borrow_mut().push(issuer.to_owned());
        let outcomes = std::cell::RefCell::new(Vec::<&str>::new());
        // (name, jwtRules?, headers, outcome: "none" | status of the refusal)
        type Case<'a> = (&'a str, bool, &'a [(&'a str, &'a str)], &'a str);
        let cases: [Case<'_>; 5] = [
            ("no rules, no token", false, &[], "none"),
            (
                "no rules, a token is not read",
                false,
                &[("authorization", "Bearer x.y.z")],
                "none",
            ),
            ("rules, no token", true, &[], "none"),
            (
                "rules, malformed token",
                true,
                &[("authorization", "Bearer not-a-jwt")],
                "401",
            ),
            (
                "rules, forged output header, no token",
                true,
                &[("x-jwt-sub", "admin")],
                "none",
            ),
        ];
        for (name, with_rules, headers, want) in cases {
            let mut map = HeaderMap::new();
            for (n, v) in headers {
                map.append(
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            let mut query = None;
            let got = authenticate(
                with_rules.then_some(&authenticator),
                &mut map,
                &mut query,
                1_700_000_000,
                &no_keys,
                &note,
                &|result| outcomes.borrow_mut().push(result),
            );
            match (got, want) {
                (Ok(None), "none") => {}
                (Err(r), status)
                    if r.status.map(|s| s.as_u16().to_string()).as_deref() == Some(status) =>
                {
                    assert!(
                        r.detail.starts_with("jwt_authn_access_denied{"),
                        "{name}: {}",
                        r.detail
                    );
                    assert!(!r.body.is_empty(), "{name}: a refusal says why");
                    assert!(!r.by_policy(), "{name}");
                }
                (got, want) => panic!("{name}: want {want}, got {got:?}"),
            }
            if with_rules {
                assert!(
                    map.get("x-jwt-sub").is_none(),
                    "{name}: output headers are Ward's alone"
                );
            }
        }
        // Each request with rules is counted once, by outcome (`ward_jwt_validations_total`).
        assert_eq!(*outcomes.borrow(), ["no_token", "malformed", "no_token"]);
    }

    #[test]
    fn local_reply_is_the_refusals() {
        let r = Refusal::downstream(
            ResponseFlag::None,
            "jwt_authn_access_denied{Jwt_is_expired}",
        )
        .with_reply(StatusCode::UNAUTHORIZED, "Jwt is expired");
        let resp = local_reply(&r, Some("Bearer realm=\"http://a/b\"".into()));
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(resp.headers()["content-type"], "text/plain");
        assert_eq!(
            resp.headers()["www-authenticate"],
            "Bearer realm=\"http://a/b\""
        );
        let denied = local_reply(
            &Refusal::policy(None, None, "x")
                .with_reply(StatusCode::FORBIDDEN, "RBAC: access denied"),
            None,
        );
        assert_eq!(denied.status(), StatusCode::FORBIDDEN);
        assert!(denied.headers().get("www-authenticate").is_none());
    }

    #[test]
    fn traceparent_keeps_the_trace_and_replaces_the_parent() {
        let policy = ward_config::tracing_policy::TracingPolicy::default();
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        crate::trace::Hop::start(&policy, true, &mut h);
        let t = h["traceparent"].to_str().unwrap().to_owned();
        assert!(t.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{t}");
        assert!(t.ends_with("-01"));
        assert!(!t.contains("00f067aa0ba902b7"));
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "zz-x",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ] {
            h.insert("traceparent", HeaderValue::from_static(bad));
            crate::trace::Hop::start(&policy, true, &mut h);
            let t = h["traceparent"].to_str().unwrap();
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
