//! Inbound: connections arriving at the workload.
//!
//! - HBONE on `<workload-ip>:15008`: mTLS (client certificate required), then one HTTP/2
//!   `CONNECT` per application connection, `:authority` = `<workload-ip>:<port>`.
//! - Plaintext on `<workload-ip>:<port>` for each Sidecar ingress port, and on the inbound
//!   capture port (15006) for captured connections to any inbound port (docs/capture.md): served
//!   only where the port's effective PeerAuthentication is PERMISSIVE or DISABLE; under STRICT
//!   the connection is reset at once (Istio: "plaintext → connection reset").
//!
//! Every connection goes the same way: accept, describe it ([`InboundConn`]), decide it with
//! [`authorize`] (pure), then carry the decision out (refuse, splice to the app, or serve HTTP
//! per request in [`crate::inbound_http`]) and finish its [`ConnResult`]. The same pure
//! functions re-check open connections when the config changes ([`recheck`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use ward_config::{InboundPort, ProxyConfig, WorkloadMeta};
use ward_hbone::{parse_authority, ConnectRequest, H2Settings};
use ward_policy::Decision;
use ward_tls::PeerInfo;

use crate::access_log::{ConnRecord, Direction};
use crate::audit::{AuditEvent, AuditSink, Verdict as AuditVerdict};
use crate::connection::{ConnResult, End, InboundConn};
use crate::conntrack::{Authorized, ConnTracker};
use crate::listener::{Gate, Permit};
use crate::metrics::Metrics;
use crate::refusal::{deciding_rule, Refusal, ResponseFlag};
use crate::splice::{splice, Abort, Chunked};
use crate::upstream::Upstreams;

/// Time allowed for the TLS handshake of an inbound connection.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed to connect to the app.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The outcome of authorizing one inbound connection.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Serve it; the decision says which policy allowed it.
    Allow(Decision),
    /// An HTTP port: the connection is accepted and each request is decided on its own.
    PerRequest,
    /// Refuse it. `decision` is the AuthorizationPolicy decision when one was made (its AUDIT
    /// and dry-run results are logged either way).
    Refuse {
        /// Why, and the status an HBONE `CONNECT` is answered with.
        refusal: Refusal,
        /// The authorization decision, when it was one.
        decision: Option<Decision>,
    },
}

fn find_port(cfg: &ProxyConfig, port: u16) -> Option<&InboundPort> {
    cfg.inbound.iter().find(|p| p.port == port)
}

/// Decide an inbound connection against a config. Pure: no sockets, no clock.
///
/// The answers to an HBONE `CONNECT` are ztunnel's: 400 for an authority that is not this
/// workload's port, 401 for a refusal by policy.
pub(crate) fn authorize(cfg: &ProxyConfig, conn: &InboundConn) -> Verdict {
    let refuse = |refusal: Refusal| Verdict::Refuse {
        refusal,
        decision: None,
    };
    let port = match find_port(cfg, conn.dst.port()) {
        Some(port) if conn.dst.ip() == cfg.workload.address => port,
        _ => {
            return refuse(
                Refusal::downstream(
                    ResponseFlag::Connect,
                    format!("{} is not served by this workload", conn.dst),
                )
                .with_status(StatusCode::BAD_REQUEST),
            )
        }
    };
    let pa = port.mtls_policy.as_ref().map(|p| p.to_string());
    if let Some(detail) = port.mtls.refusal(conn.peer.is_some()) {
        return refuse(Refusal::policy(pa, None, detail).with_status(StatusCode::UNAUTHORIZED));
    }
    if port.protocol.is_http() {
        return Verdict::PerRequest;
    }
    let decision = cfg.authz.evaluate_l4(&conn.l4());
    if decision.is_allowed() {
        Verdict::Allow(decision)
    } else {
        Verdict::Refuse {
            refusal: Refusal::denied_by(&decision).with_status(StatusCode::UNAUTHORIZED),
            decision: Some(decision),
        }
    }
}

/// Re-decide an open connection after a config change: `Some` says why it must close now.
/// An upgraded HTTP connection (WebSocket…) is decided again as the request that upgraded it;
/// other connections on HTTP ports are decided per request and stay open.
pub(crate) fn recheck(cfg: &ProxyConfig, open: &Authorized) -> Option<Refusal> {
    match (authorize(cfg, &open.conn), &open.request) {
        (Verdict::PerRequest, Some(request)) => {
            let decision = cfg.authz.evaluate_http(&request.attributes(&open.conn));
            (!decision.is_allowed()).then(|| Refusal::denied_by(&decision))
        }
        (Verdict::Allow(_) | Verdict::PerRequest, _) => None,
        (Verdict::Refuse { refusal, .. }, _) => Some(refusal),
    }
}

/// What every inbound task of one sidecar shares.
pub(crate) struct InboundCtx {
    /// The sidecar's current config (sender: the sidecar's config task).
    pub(crate) config: watch::Receiver<Arc<ProxyConfig>>,
    /// Open connections, for re-checks.
    pub(crate) tracker: Arc<ConnTracker>,
    /// Process-wide metrics.
    pub(crate) metrics: Arc<Metrics>,
    /// Our own SPIFFE id, for logs and XFCC `By=`.
    pub(crate) identity: String,
    /// HTTP clients toward the apps, for HTTP ports.
    pub(crate) upstreams: Upstreams,
    /// End-user authentication (RequestAuthentication) state.
    pub(crate) authn: Arc<crate::jwks_fetch::AuthnState>,
    /// Break-glass grants (`crate::breakglass`).
    pub(crate) break_glass: Arc<crate::breakglass::BreakGlass>,
    /// The sidecar's audit trail: every decision is recorded there.
    pub(crate) audit: AuditSink,
    /// The workload's span export (`crate::trace`), shared with its outbound side.
    pub(crate) tracer: Arc<crate::trace::Tracer>,
}

impl InboundCtx {
    fn workload_key(cfg: &ProxyConfig) -> String {
        format!("{}/{}", cfg.workload.namespace, cfg.workload.name)
    }

    /// The result of a connection accepted at `started`, from `src` to `dst`, with this
    /// workload as the destination.
    fn result(
        &self,
        cfg: &ProxyConfig,
        src: SocketAddr,
        dst: SocketAddr,
        started: Instant,
    ) -> ConnResult {
        let mut rec = ConnRecord::new(Direction::Inbound, src, dst);
        rec.dst_meta = Some(own_meta(cfg));
        rec.dst_workload = Some(Self::workload_key(cfg));
        rec.dst_namespace = Some(cfg.workload.namespace.clone());
        rec.dst_identity = Some(self.identity.clone());
        rec.telemetry(cfg);
        ConnResult::new_at(rec, self.metrics.clone(), started)
    }

    /// An AuthorizationPolicy denial, lifted when the workload has an active break-glass grant
    /// and its use is recorded: the connection is served, its record names the grant and what
    /// denied it. Refusals by PeerAuthentication or the address are never lifted.
    fn lift_denial(
        &self,
        cfg: &ProxyConfig,
        conn: &InboundConn,
        verdict: Verdict,
        result: &mut ConnResult,
    ) -> (Verdict, Option<u64>) {
        let Verdict::Refuse {
            refusal,
            decision: Some(decision),
        } = verdict
        else {
            return (verdict, None);
        };
        let lifted = self.break_glass.lift(
            &Self::workload_key(cfg),
            crate::breakglass::now_secs(),
            || {
                let mut f = serde_json::Map::new();
                f.insert("srcAddr".into(), conn.src.to_string().into());
                if let Some(id) = &conn.peer_id {
                    f.insert("srcIdentity".into(), id.clone().into());
                }
                f.insert("dstPort".into(), conn.dst.port().into());
                f.insert("deniedBy".into(), refusal.detail.clone().into());
                f
            },
        );
        match lifted {
            Some(l) => {
                let rec = result.record();
                rec.authz_detail = Some(format!("break_glass[{}]: {}", l.grant, refusal.detail));
                rec.break_glass = Some(l.grant);
                (Verdict::Allow(decision), Some(l.expires_at))
            }
            None => (
                Verdict::Refuse {
                    refusal,
                    decision: Some(decision),
                },
                None,
            ),
        }
    }

    /// Record and count the verdict's authorization decision, with what AUDIT and dry-run
    /// policies said, and write it to the audit trail. Returns the verdict to carry out: a
    /// fail-closed workload refuses a connection its trail cannot record.
    fn note_decision(
        &self,
        cfg: &ProxyConfig,
        result: &mut ConnResult,
        verdict: Verdict,
    ) -> Verdict {
        let workload = Self::workload_key(cfg);
        let decision = match &verdict {
            Verdict::PerRequest => return verdict, // decided per request (see `inbound_http`)
            Verdict::Allow(d) => {
                let (policy, rule) = deciding_rule(d);
                let rec = result.record();
                rec.authz_decision = Some("allow");
                rec.authz_policy = policy;
                rec.authz_rule = rule;
                d
            }
            Verdict::Refuse {
                decision: Some(d), ..
            } => d,
            Verdict::Refuse { refusal, .. } => {
                if refusal.by_policy() {
                    self.metrics
                        .peer_authn_refusal(&workload, refusal.policy.as_deref());
                    self.audit.record(&self.event(
                        result.record(),
                        AuditVerdict::PeerAuthentication(refusal.policy.as_deref()),
                    ));
                }
                return verdict;
            }
        };
        let rec = result.record();
        log_dry_run_and_audit(
            decision,
            rec.src_addr,
            rec.src_identity.as_deref(),
            rec.dst_addr,
        );
        self.metrics.authz_decision(&workload, decision);
        let event = self.event(result.record(), AuditVerdict::Policy(decision));
        match self.audit.admit(cfg.workload.audit_fail_closed, &event) {
            Some(detail) => Verdict::Refuse {
                refusal: Refusal::internal(ResponseFlag::None, detail)
                    .with_status(StatusCode::SERVICE_UNAVAILABLE),
                decision: None,
            },
            None => verdict,
        }
    }

    /// The audit event of a connection decided at L4.
    fn event<'a>(&'a self, rec: &'a ConnRecord, verdict: AuditVerdict<'a>) -> AuditEvent<'a> {
        AuditEvent {
            time: std::time::SystemTime::now(),
            direction: "inbound",
            protocol: "tcp",
            verdict,
            src_addr: rec.src_addr,
            src_identity: rec.src_identity.as_deref(),
            dst_addr: rec.dst_addr,
            dst_identity: Some(&self.identity),
            dst_host: None,
            request_principal: None,
            method: None,
            path: None,
            request_id: None,
            break_glass: rec.break_glass.as_deref(),
        }
    }

    /// Fill `result`'s record with what is known of `conn`: the source (and its workload, if
    /// the config says which it is) and the service it came for.
    fn describe(&self, cfg: &ProxyConfig, conn: &InboundConn, result: &mut ConnResult) {
        let rec = result.record();
        conn.describe(rec);
        rec.src_meta = conn.source_meta(cfg);
        rec.service = cfg
            .directory
            .inbound_service(&Self::workload_key(cfg), conn.dst.port(), None)
            .cloned();
    }

    /// Serve an HTTP connection (tunnel or plaintext socket), tracked so that a PeerAuthentication
    /// change can still close it; its requests are decided one by one in
    /// [`crate::inbound_http`].
    async fn serve_http<S>(self: &Arc<Self>, conn: Arc<InboundConn>, io: S, mut result: ConnResult)
    where
        S: Chunked + Abort + Send + 'static,
    {
        let (guard, close) = self.tracker.register(Authorized {
            conn: conn.clone(),
            request: None,
        });
        result.opened();
        let cfg = self.config.borrow().clone();
        self.metrics.coverage().connection(flow(&cfg, &conn));
        let end = tokio::select! {
            upgraded = crate::inbound_http::serve(io, self.clone(), conn) => match upgraded {
                Some(end) => End::from_splice(end),
                None => End::Served { sent: 0, recv: 0 },
            },
            order = close => match order {
                Ok(refusal) => End::Refused(refusal),
                Err(_) => End::Served { sent: 0, recv: 0 },
            },
        };
        drop(guard);
        result.finish(end);
    }

    /// Splice an authorized connection to the app, tracked so that a policy change can close
    /// it.
    async fn serve_spliced<S>(
        &self,
        conn: Arc<InboundConn>,
        mut downstream: S,
        mut upstream: TcpStream,
        mut result: ConnResult,
        until: Option<u64>,
    ) where
        S: Chunked + Abort,
    {
        let _ = upstream.set_nodelay(true);
        let cfg = self.config.borrow().clone();
        self.metrics.coverage().connection(flow(&cfg, &conn));
        let (guard, close) = self.tracker.register(Authorized {
            conn,
            request: None,
        });
        result.opened();
        let close = match until {
            Some(expires_at) => close_at_expiry(close, expires_at),
            None => close,
        };
        let end = splice(&mut downstream, &mut upstream, Some(close)).await;
        drop(guard);
        result.finish(End::from_splice(end));
    }
}

/// The coverage flow of a connection served on `conn`'s port (`crate::coverage`).
pub(crate) fn flow(cfg: &ProxyConfig, conn: &InboundConn) -> crate::coverage::Flow {
    let port = find_port(cfg, conn.dst.port());
    let source = match (conn.source_meta(cfg), &conn.peer_id) {
        (Some(m), _) => format!("{}/{}", m.namespace, m.name),
        (None, Some(id)) => id.clone(),
        (None, None) => "unknown".to_owned(),
    };
    crate::coverage::Flow {
        source,
        source_address: conn.peer.is_none().then(|| conn.src.ip().to_string()),
        destination: InboundCtx::workload_key(cfg),
        port: conn.dst.port(),
        mtls: conn.tls.is_some(),
        kx_group: conn.tls.as_ref().map(|(_, g)| g.clone()),
        peer_authentication: port.and_then(|p| p.mtls_policy.as_ref().map(|r| r.to_string())),
        mode: port.map_or_else(|| "STRICT".to_owned(), |p| p.mtls.to_string()),
    }
}

/// `close`, or a refusal when the break-glass grant that let the connection in ends at
/// `expires_at` (seconds since the epoch), whichever comes first.
pub(crate) fn close_at_expiry(
    close: tokio::sync::oneshot::Receiver<Refusal>,
    expires_at: u64,
) -> tokio::sync::oneshot::Receiver<Refusal> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let left = expires_at.saturating_sub(crate::breakglass::now_secs());
    tokio::spawn(async move {
        let mut tx = tx;
        let order = tokio::select! {
            order = close => order.ok(),
            () = tokio::time::sleep(Duration::from_secs(left)) => {
                Some(Refusal::policy(None, None, "break_glass_expired"))
            }
            () = tx.closed() => None,
        };
        if let Some(refusal) = order {
            let _ = tx.send(refusal);
        }
    });
    rx
}

/// This sidecar's own workload, as the metrics label it.
pub(crate) fn own_meta(cfg: &ProxyConfig) -> Arc<WorkloadMeta> {
    let key = format!("{}/{}", cfg.workload.namespace, cfg.workload.name);
    match cfg.directory.workload(&key) {
        Some(meta) => meta.clone(),
        None => Arc::new(WorkloadMeta::of(&cfg.workload)),
    }
}

/// Connect to the app behind the sidecar.
async fn connect_app(target: SocketAddr) -> Result<TcpStream, Refusal> {
    let failed = |why: String| {
        Refusal::upstream(ResponseFlag::Connect, why).with_status(StatusCode::SERVICE_UNAVAILABLE)
    };
    match tokio::time::timeout(
        UPSTREAM_CONNECT_TIMEOUT,
        crate::capture::connect(target, None),
    )
    .await
    {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(failed(format!("connect to app at {target} failed: {e}"))),
        Err(_) => Err(failed(format!("connect to app at {target} timed out"))),
    }
}

/// Log what AUDIT and dry-run policies said about a connection or request (target `audit`);
/// they never change the decision.
pub(crate) fn log_dry_run_and_audit(
    d: &Decision,
    src: SocketAddr,
    src_identity: Option<&str>,
    dst: SocketAddr,
) {
    for a in d.audit() {
        tracing::info!(target: "audit", policy = %a.policy, rule = a.rule, src.addr = %src, src.identity = src_identity, dst.addr = %dst, "AUDIT policy matched");
    }
    for n in d.dry_run() {
        tracing::info!(target: "audit", policy = %n.policy, rule = n.rule.map(|r| r as u64), would = ?n.would, src.addr = %src, src.identity = src_identity, dst.addr = %dst, "dry-run policy evaluated, not enforced");
    }
}

/// Serve HBONE connections accepted on `listener`, as `gate` admits them, until `shutdown` flips
/// to true.
pub(crate) async fn run_hbone(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    ctx: Arc<InboundCtx>,
    gateway: Arc<crate::gateway::GatewayCtx>,
    gate: Arc<Gate>,
    shutdown: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let stop = shutdown.clone();
    crate::listener::accept_loop(listener, gate, stop, move |tcp, src, permit| {
        let _ = tcp.set_nodelay(true);
        serve_hbone_connection(
            acceptor.clone(),
            tcp,
            src,
            permit,
            (ctx.clone(), gateway.clone()),
            shutdown.clone(),
        )
    })
    .await
}

/// One HBONE connection: the TLS handshake, then its `CONNECT` streams until it closes.
/// `permit` holds the connection's place at the listener until it ends; it counts as a handshake
/// until the TLS handshake completes.
async fn serve_hbone_connection(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    src: SocketAddr,
    mut permit: Permit,
    (ctx, gateway): (Arc<InboundCtx>, Arc<crate::gateway::GatewayCtx>),
    mut shutdown: watch::Receiver<bool>,
) {
    let accepted = Instant::now();
    let local = tcp.local_addr().unwrap_or(src);
    let tcp = crate::hbone_io(tcp);
    let accept = acceptor.accept(tcp).into_fallible();
    let handshake_failed = |error: String| {
        let cfg = ctx.config.borrow().clone();
        ctx.result(&cfg, src, local, accepted)
            .finish(End::Refused(Refusal::downstream(
                ResponseFlag::TlsFailure,
                error,
            )));
    };
    let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, accept).await {
        Ok(Ok(mut tls)) => {
            permit.handshake_done();
            tls.get_mut()
                .1
                .set_buffer_limit(Some(crate::HBONE_TLS_QUEUE));
            tls
        }
        Ok(Err((e, mut io))) => {
            crate::send_buffered_alert(&mut io).await;
            return handshake_failed(e.to_string());
        }
        Err(_) => return handshake_failed("TLS handshake timed out".to_owned()),
    };
    let info = ward_tls::peer_info(tls.get_ref().1);
    let streams = {
        let ctx = ctx.clone();
        move |req: ConnectRequest| {
            let ctx = ctx.clone();
            let gateway = gateway.clone();
            let info = info.clone();
            async move { serve_connect(ctx, gateway, req, src, info).await }
        }
    };
    let shutdown = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    if let Err(e) = ward_hbone::serve(tls, H2Settings::default(), streams, shutdown).await {
        tracing::debug!(src.addr = %src, error = %e, "hbone connection ended with an error");
    }
}

/// One HBONE `CONNECT` stream: decide it, answer it (a refusal's status, or 200 once the app is
/// reached), and serve it.
async fn serve_connect(
    ctx: Arc<InboundCtx>,
    gateway: Arc<crate::gateway::GatewayCtx>,
    req: ConnectRequest,
    src: SocketAddr,
    info: PeerInfo,
) {
    let cfg = ctx.config.borrow().clone();
    let unparsed = SocketAddr::new(cfg.workload.address, 0);
    let mut result = ctx.result(&cfg, src, unparsed, Instant::now());
    let refuse = |req: ConnectRequest, result: ConnResult, refusal: Refusal| {
        req.reject(refusal.status.unwrap_or(StatusCode::UNAUTHORIZED));
        result.finish(End::Refused(refusal));
    };
    let dst = match parse_authority(req.authority()) {
        Ok(a) => a,
        Err(e) => {
            // ztunnel: a bad authority → 400.
            let why = format!("bad CONNECT authority: {e}");
            return refuse(
                req,
                result,
                Refusal::downstream(ResponseFlag::Connect, why)
                    .with_status(StatusCode::BAD_REQUEST),
            );
        }
    };
    let conn = Arc::new(InboundConn::mtls(&info, src, dst));
    ctx.describe(&cfg, &conn, &mut result);
    if conn.peer.is_none() {
        // The server config requires a client certificate; no identity here is a bug upstream.
        let refusal = Refusal::internal(
            ResponseFlag::IdentityError,
            "mTLS peer without a SPIFFE identity",
        );
        return refuse(req, result, refusal);
    }
    if is_gateway_port(&cfg, conn.dst) {
        // A server port of a gateway workload (an egress gateway's clients come this way):
        // the gateway serves it, its AuthorizationPolicy decides per request or connection.
        return crate::gateway::serve_tunnel(gateway, req, conn, result).await;
    }
    let verdict = authorize(&cfg, &conn);
    let (verdict, until) = ctx.lift_denial(&cfg, &conn, verdict, &mut result);
    let verdict = ctx.note_decision(&cfg, &mut result, verdict);
    match verdict {
        Verdict::Refuse { refusal, .. } => refuse(req, result, refusal),
        Verdict::PerRequest => match req.accept() {
            Ok(tunnel) => ctx.serve_http(conn, tunnel, result).await,
            Err(e) => result.finish(End::Refused(Refusal::downstream(
                ResponseFlag::None,
                e.to_string(),
            ))),
        },
        Verdict::Allow(_) => {
            // Connect to the app before answering 200, so a dead app is a 503, not an empty
            // tunnel.
            let upstream = match app_target(&cfg, &conn) {
                Ok(target) => connect_app(target).await,
                Err(refusal) => Err(refusal),
            };
            let upstream = match upstream {
                Ok(s) => s,
                Err(refusal) => return refuse(req, result, refusal),
            };
            match req.accept() {
                Ok(tunnel) => {
                    ctx.serve_spliced(conn, tunnel, upstream, result, until)
                        .await
                }
                Err(e) => result.finish(End::Refused(Refusal::downstream(
                    ResponseFlag::None,
                    e.to_string(),
                ))),
            }
        }
    }
}

/// Whether `dst` is a Gateway server port of this workload that no inbound port claims.
fn is_gateway_port(cfg: &ProxyConfig, dst: SocketAddr) -> bool {
    dst.ip() == cfg.workload.address
        && find_port(cfg, dst.port()).is_none()
        && !cfg.gateway.on_port(dst.port()).is_empty()
}

/// The app address behind the port `conn` is for.
fn app_target(cfg: &ProxyConfig, conn: &InboundConn) -> Result<SocketAddr, Refusal> {
    find_port(cfg, conn.dst.port())
        .map(|p| p.target)
        .ok_or_else(|| {
            Refusal::internal(ResponseFlag::NoRoute, "port no longer served")
                .with_status(StatusCode::SERVICE_UNAVAILABLE)
        })
}

/// Serve the plaintext side of one workload port, as `gate` admits connections, until `shutdown`
/// flips to true.
pub(crate) async fn run_plaintext(
    listener: TcpListener,
    ctx: Arc<InboundCtx>,
    gate: Arc<Gate>,
    shutdown: watch::Receiver<bool>,
) {
    crate::listener::accept_loop(listener, gate, shutdown, move |tcp, src, permit| {
        let ctx = ctx.clone();
        async move {
            serve_plaintext(ctx, tcp, src).await;
            drop(permit);
        }
    })
    .await
}

/// Serve the inbound capture port (15006): connections the iptables rules redirected, each
/// served as a plaintext connection to its original destination (docs/capture.md, "Inbound").
pub(crate) async fn run_capture_listener(
    listener: TcpListener,
    ctx: Arc<InboundCtx>,
    gate: Arc<Gate>,
    shutdown: watch::Receiver<bool>,
) {
    crate::listener::accept_loop(listener, gate, shutdown, move |tcp, src, permit| {
        let ctx = ctx.clone();
        async move {
            match crate::capture::original_dst(&tcp) {
                Ok(dst) => serve_plaintext_at(ctx, tcp, src, dst).await,
                Err(e) => {
                    let cfg = ctx.config.borrow().clone();
                    let local = tcp.local_addr().unwrap_or(src);
                    let result = ctx.result(&cfg, src, local, Instant::now());
                    crate::reset_on_close(&tcp);
                    drop(tcp);
                    result.finish(End::Refused(Refusal::internal(
                        ResponseFlag::NoRoute,
                        format!("no original destination (SO_ORIGINAL_DST): {e}"),
                    )));
                }
            }
            drop(permit);
        }
    })
    .await
}

/// One plaintext connection: decide it, then reset it, splice it to the app, or serve HTTP.
async fn serve_plaintext(ctx: Arc<InboundCtx>, tcp: TcpStream, src: SocketAddr) {
    let dst = tcp.local_addr().unwrap_or(src);
    serve_plaintext_at(ctx, tcp, src, dst).await
}

/// A plaintext connection made to `dst` (the listener's address, or a captured connection's
/// original destination).
async fn serve_plaintext_at(
    ctx: Arc<InboundCtx>,
    tcp: TcpStream,
    src: SocketAddr,
    dst: SocketAddr,
) {
    let cfg = ctx.config.borrow().clone();
    let mut result = ctx.result(&cfg, src, dst, Instant::now());
    let conn = Arc::new(InboundConn::plaintext(src, dst));
    ctx.describe(&cfg, &conn, &mut result);
    let verdict = authorize(&cfg, &conn);
    let (verdict, until) = ctx.lift_denial(&cfg, &conn, verdict, &mut result);
    let verdict = ctx.note_decision(&cfg, &mut result, verdict);
    let refusal = match verdict {
        Verdict::PerRequest => return ctx.serve_http(conn, tcp, result).await,
        Verdict::Allow(_) => {
            let _ = tcp.set_nodelay(true);
            let upstream = match app_target(&cfg, &conn) {
                Ok(target) => connect_app(target).await,
                Err(refusal) => Err(refusal),
            };
            match upstream {
                Ok(upstream) => return ctx.serve_spliced(conn, tcp, upstream, result, until).await,
                Err(refusal) => refusal,
            }
        }
        Verdict::Refuse { refusal, .. } => refusal,
    };
    // Reset rather than close: the client sees the connection refused at once (curl: exit 56).
    crate::reset_on_close(&tcp);
    drop(tcp);
    result.finish(End::Refused(refusal));
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// srv at 127.9.0.10 serving 9000 (STRICT by a mesh policy unless `extra` says otherwise)
    /// and 9001 (PERMISSIVE by port), with `extra` documents appended.
    pub(crate) fn config(extra: &str) -> ProxyConfig {
        config_with_pa(PORT_B_PERMISSIVE, extra)
    }

    const PORT_B_PERMISSIVE: &str = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: port-b, namespace: app}\nspec:\n  selector: {matchLabels: {app: srv}}\n  mtls: {mode: STRICT}\n  portLevelMtls: {9001: {mode: PERMISSIVE}}\n";

    fn config_with_pa(pa: &str, extra: &str) -> ProxyConfig {
        let yaml = format!(
            r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: srv, namespace: app}}
spec: {{address: 127.9.0.10, serviceAccount: srv, labels: {{app: srv}}}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: srv, namespace: app}}
spec:
  workloadSelector: {{labels: {{app: srv}}}}
  ingress:
  - port: {{number: 9000, name: tcp-a, protocol: TCP}}
    defaultEndpoint: 127.0.0.1:19000
  - port: {{number: 9001, name: tcp-b, protocol: TCP}}
    defaultEndpoint: 127.0.0.1:19001
  - port: {{number: 9002, name: http-c, protocol: HTTP}}
    defaultEndpoint: 127.0.0.1:19002
---
{pa}{extra}"#
        );
        let set = ward_config::load_str("test.yaml", &yaml).unwrap();
        let snap = ward_config::translate(&set).unwrap();
        snap.proxies["app/srv"].clone()
    }

    pub(crate) fn conn(peer: Option<(&str, &str)>, dst: &str, port: u16) -> InboundConn {
        let src: SocketAddr = "127.9.0.1:40000".parse().unwrap();
        let dst = SocketAddr::new(dst.parse().unwrap(), port);
        let mut conn = InboundConn::plaintext(src, dst);
        conn.peer = peer.map(|(ns, sa)| ward_policy::Peer {
            principal: format!("cluster.local/ns/{ns}/sa/{sa}"),
            trust_domain: "cluster.local".into(),
            namespace: ns.into(),
            service_account: sa.into(),
        });
        conn
    }

    /// The verdict's kind, as the table names it.
    fn kind(v: &Verdict) -> &'static str {
        match v {
            Verdict::Allow(_) => "allow",
            Verdict::PerRequest => "per-request",
            Verdict::Refuse { refusal, decision } => {
                match (refusal.flag, refusal.detail.as_str()) {
                    (ResponseFlag::Connect, _) => "unknown-port",
                    (_, "peer_authentication_strict") => "plaintext-refused",
                    (_, "peer_authentication_disable") => "mtls-refused",
                    _ if decision.is_some() => "denied",
                    _ => "other",
                }
            }
        }
    }

    #[test]
    fn authorize_table() {
        let deny_other = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-other, namespace: app}\nspec:\n  action: DENY\n  rules: [{from: [{source: {namespaces: [other]}}]}]\n";
        let open = config("");
        let denying = config(deny_other);
        let cases: Vec<(&str, &ProxyConfig, InboundConn, &str)> = vec![
            (
                "mTLS to a served port",
                &open,
                conn(Some(("app", "cli")), "127.9.0.10", 9000),
                "allow",
            ),
            (
                "HTTP port: decided per request",
                &open,
                conn(Some(("app", "cli")), "127.9.0.10", 9002),
                "per-request",
            ),
            (
                "HTTP port still enforces STRICT",
                &open,
                conn(None, "127.9.0.10", 9002),
                "plaintext-refused",
            ),
            (
                "unknown port",
                &open,
                conn(Some(("app", "cli")), "127.9.0.10", 9999),
                "unknown-port",
            ),
            // ztunnel hbone_ip_mismatch: the authority must be this workload's address.
            (
                "authority is another IP",
                &open,
                conn(Some(("app", "cli")), "127.9.0.1", 9000),
                "unknown-port",
            ),
            (
                "plaintext on STRICT",
                &open,
                conn(None, "127.9.0.10", 9000),
                "plaintext-refused",
            ),
            (
                "plaintext on port-level PERMISSIVE",
                &open,
                conn(None, "127.9.0.10", 9001),
                "allow",
            ),
            (
                "DENY namespace matches",
                &denying,
                conn(Some(("other", "x")), "127.9.0.10", 9000),
                "denied",
            ),
            (
                "DENY namespace, other caller",
                &denying,
                conn(Some(("app", "cli")), "127.9.0.10", 9000),
                "allow",
            ),
            // Stricter than Istio: identity-less plaintext cannot dodge a DENY on namespaces.
            (
                "DENY namespace vs plaintext",
                &denying,
                conn(None, "127.9.0.10", 9001),
                "denied",
            ),
        ];
        for (name, cfg, c, want) in cases {
            let verdict = authorize(cfg, &c);
            assert_eq!(kind(&verdict), want, "{name}");
            // Refusals answer a CONNECT as ztunnel does: 400 for the address, 401 for policy.
            if let Verdict::Refuse { refusal, .. } = verdict {
                let status = if want == "unknown-port" { 400 } else { 401 };
                assert_eq!(refusal.status.map(|s| s.as_u16()), Some(status), "{name}");
                assert_eq!(refusal.by_policy(), want != "unknown-port", "{name}");
            }
        }
    }

    #[test]
    fn disable_refuses_mtls_and_refusals_name_the_policy() {
        let off = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: off, namespace: app}\nspec:\n  selector: {matchLabels: {app: srv}}\n  mtls: {mode: DISABLE}\n";
        let cfg = config_with_pa(off, "");
        match authorize(&cfg, &conn(Some(("app", "cli")), "127.9.0.10", 9000)) {
            Verdict::Refuse { refusal, .. } => {
                assert_eq!(refusal.detail, "peer_authentication_disable");
                assert_eq!(refusal.policy.as_deref(), Some("app/off"));
            }
            other => panic!("DISABLE must refuse mTLS, got {other:?}"),
        }
        assert!(matches!(
            authorize(&cfg, &conn(None, "127.9.0.10", 9000)),
            Verdict::Allow(_)
        ));
        let open = |c: InboundConn| Authorized {
            conn: Arc::new(c),
            request: None,
        };
        let closed = recheck(&config(""), &open(conn(None, "127.9.0.10", 9000))).unwrap();
        assert_eq!(closed.policy.as_deref(), Some("app/port-b"));
        assert_eq!(closed.detail, "peer_authentication_strict");
        assert_eq!(closed.flag, ResponseFlag::Deny);
        assert!(recheck(
            &config(""),
            &open(conn(Some(("a", "b")), "127.9.0.10", 9000))
        )
        .is_none());
    }
}
