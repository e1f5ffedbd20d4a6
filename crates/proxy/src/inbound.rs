//! Inbound: connections arriving at the workload.
//!
//! - HBONE on `<workload-ip>:15008`: mTLS (client certificate required), then one HTTP/2
//!   `CONNECT` per application connection, `:authority` = `<workload-ip>:<port>`.
//! - Plaintext on `<workload-ip>:<port>` for each Sidecar ingress port: served only where the
//!   port's effective PeerAuthentication is PERMISSIVE or DISABLE; under STRICT the connection is
//!   reset at once (Istio: "plaintext → connection reset").
//!
//! Both paths decide with [`authorize`] (pure) and then act. The same function re-checks open
//! connections when the config changes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use ward_config::{InboundPort, ProxyConfig};
use ward_hbone::{parse_authority, ConnectRequest, H2Settings};
use ward_policy::{Decision, MtlsMode, Peer};
use ward_tls::PeerInfo;

use crate::access_log::{ConnRecord, Direction, Fault};
use crate::conntrack::{CloseOrder, ConnFacts, ConnTracker};
use crate::http::HttpConn;
use crate::listener::{Gate, Permit};
use crate::metrics::Metrics;
use crate::splice::{splice, Abort, SpliceEnd};
use crate::upstream::Upstreams;

/// Time allowed for the TLS handshake of an inbound connection.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed to connect to the app.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The outcome of authorizing one inbound connection.
#[derive(Debug)]
pub enum Verdict {
    /// Serve it; the decision says which policy allowed it.
    Allow(Decision),
    /// An HTTP port: the connection is accepted and each request is decided on its own.
    PerRequest,
    /// The port is not one this workload serves.
    UnknownPort,
    /// Plaintext on a STRICT port.
    PlaintextRefused {
        /// The PeerAuthentication that made the port STRICT, if any (else Ward's default).
        policy: Option<String>,
    },
    /// mTLS on a DISABLE port ("DISABLE means plaintext only").
    MtlsRefused {
        /// The PeerAuthentication that made the port DISABLE.
        policy: Option<String>,
    },
    /// An AuthorizationPolicy denied it.
    Denied(Decision),
}

impl Verdict {
    /// The close order to give an open connection that this verdict now refuses.
    pub fn close_order(&self) -> Option<CloseOrder> {
        let (policy, rule, detail) = match self {
            Verdict::Allow(_) | Verdict::PerRequest => return None,
            Verdict::UnknownPort => (None, None, "port no longer served".to_owned()),
            Verdict::PlaintextRefused { policy } => (
                policy.clone(),
                None,
                "peer_authentication_strict".to_owned(),
            ),
            Verdict::MtlsRefused { policy } => (
                policy.clone(),
                None,
                "peer_authentication_disable".to_owned(),
            ),
            Verdict::Denied(d) => {
                let (policy, rule) = deciding_rule(d);
                (policy, rule, d.response_detail())
            }
        };
        Some(CloseOrder {
            policy,
            rule,
            detail,
        })
    }
}

/// The policy and rule that decided, for logs.
pub fn deciding_rule(d: &Decision) -> (Option<String>, Option<usize>) {
    match d.deciding_rule() {
        Some(r) => (Some(r.policy.to_string()), Some(r.rule)),
        None => (d.deciding_policy().map(|p| p.to_string()), None),
    }
}

fn find_port(cfg: &ProxyConfig, port: u16) -> Option<&InboundPort> {
    cfg.inbound.iter().find(|p| p.port == port)
}

/// Decide an inbound connection against a config. Pure: no sockets, no clock.
pub fn authorize(cfg: &ProxyConfig, facts: &ConnFacts) -> Verdict {
    let Some(port) = find_port(cfg, facts.destination_port) else {
        return Verdict::UnknownPort;
    };
    if facts.destination_ip != cfg.workload.address {
        return Verdict::UnknownPort;
    }
    let pa = port.mtls_policy.as_ref().map(|p| p.to_string());
    match (port.mtls, facts.peer.is_some()) {
        (MtlsMode::Strict, false) => return Verdict::PlaintextRefused { policy: pa },
        (MtlsMode::Disable, true) => return Verdict::MtlsRefused { policy: pa },
        _ => {}
    }
    if port.protocol.is_http() {
        return Verdict::PerRequest;
    }
    let decision = cfg.authz.evaluate_l4(&facts.l4());
    if decision.is_allowed() {
        Verdict::Allow(decision)
    } else {
        Verdict::Denied(decision)
    }
}

/// Re-decide an open connection after a config change: `Some` says why it must close now.
/// An upgraded HTTP connection (WebSocket…) is decided again as the request that upgraded it;
/// other connections on HTTP ports are decided per request and stay open.
pub fn recheck(cfg: &ProxyConfig, facts: &ConnFacts) -> Option<CloseOrder> {
    match (authorize(cfg, facts), &facts.request) {
        (Verdict::PerRequest, Some(request)) => {
            let decision = cfg.authz.evaluate_http(&request.attributes(facts));
            if decision.is_allowed() {
                return None;
            }
            let (policy, rule) = deciding_rule(&decision);
            Some(CloseOrder {
                policy,
                rule,
                detail: decision.response_detail(),
            })
        }
        (verdict, _) => verdict.close_order(),
    }
}

/// Turn a verified TLS peer into the policy engine's `Peer`.
pub fn policy_peer(info: &PeerInfo) -> Option<Peer> {
    info.identity.as_ref().map(|id| Peer {
        principal: id.principal(),
        trust_domain: id.trust_domain().to_owned(),
        namespace: id.namespace().to_owned(),
        service_account: id.service_account().to_owned(),
    })
}

/// What every inbound task of one sidecar shares.
pub struct InboundCtx {
    /// The sidecar's current config (sender: the sidecar's config task).
    pub config: watch::Receiver<Arc<ProxyConfig>>,
    /// Open connections, for re-checks.
    pub tracker: Arc<ConnTracker>,
    /// Process-wide metrics.
    pub metrics: Arc<Metrics>,
    /// Our own SPIFFE id, for logs and XFCC `By=`.
    pub identity: String,
    /// HTTP clients toward the apps, for HTTP ports.
    pub upstreams: Upstreams,
    /// End-user authentication (RequestAuthentication) state.
    pub authn: Arc<crate::authn::AuthnState>,
}

impl InboundCtx {
    fn workload_key(cfg: &ProxyConfig) -> String {
        format!("{}/{}", cfg.workload.namespace, cfg.workload.name)
    }

    fn base_record(&self, cfg: &ProxyConfig, src: SocketAddr, dst: SocketAddr) -> ConnRecord {
        let mut rec = ConnRecord::new(Direction::Inbound, src, dst);
        rec.dst_workload = Some(Self::workload_key(cfg));
        rec.dst_namespace = Some(cfg.workload.namespace.clone());
        rec.dst_identity = Some(self.identity.clone());
        rec
    }

    fn note_decision(&self, cfg: &ProxyConfig, rec: &mut ConnRecord, verdict: &Verdict) {
        if let Verdict::PerRequest = verdict {
            // Decided per request (see `http`); the connection record carries no decision.
            return;
        }
        let (allowed, policy, rule, detail) = match verdict {
            Verdict::Allow(d) => {
                let (p, r) = deciding_rule(d);
                (true, p, r, None)
            }
            other => {
                let order = other.close_order();
                let (p, r, det) = order
                    .map(|o| (o.policy, o.rule, Some(o.detail)))
                    .unwrap_or((None, None, None));
                (false, p, r, det)
            }
        };
        rec.authz_decision = Some(if allowed { "allow" } else { "deny" });
        rec.authz_policy = policy.clone();
        rec.authz_rule = rule;
        rec.authz_detail = detail;
        if let Verdict::Allow(d) | Verdict::Denied(d) = verdict {
            log_dry_run_and_audit(d, rec.src_addr, rec.src_identity.as_deref(), rec.dst_addr);
        }
        self.metrics
            .decision(allowed, policy.as_deref(), &Self::workload_key(cfg));
    }

    /// Connect to the app, then splice and record. `downstream` is the plaintext socket.
    async fn serve_allowed<S>(
        &self,
        cfg: &ProxyConfig,
        facts: ConnFacts,
        downstream: S,
        mut rec: ConnRecord,
        started: Instant,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Abort,
    {
        let Some(port) = find_port(cfg, facts.destination_port) else {
            return;
        };
        match connect_app(port.target).await {
            Ok(upstream) => {
                self.serve_connected(facts, downstream, upstream, rec, started)
                    .await
            }
            Err(e) => {
                rec.fail(Fault::Upstream, "CONNECT", e);
                rec.duration = started.elapsed();
                rec.emit();
                self.metrics.record(&rec, false);
            }
        }
    }
}

impl InboundCtx {
    /// Serve an HTTP connection (tunnel or plaintext socket), tracked so that a PeerAuthentication
    /// change can still close it; its requests are decided one by one in [`crate::http`].
    async fn serve_http<S>(
        self: &Arc<Self>,
        facts: ConnFacts,
        io: S,
        conn: HttpConn,
        mut rec: ConnRecord,
        started: Instant,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Abort + Unpin + Send + 'static,
    {
        let (guard, close) = self.tracker.register(facts);
        self.metrics.conn_open(&rec);
        tokio::select! {
            upgraded = crate::http::serve(io, self.clone(), Arc::new(conn)) => match upgraded {
                Some(SpliceEnd::Done(recv, sent)) => {
                    rec.bytes_recv = recv;
                    rec.bytes_sent = sent;
                }
                Some(SpliceEnd::Failed(e)) => rec.fail(Fault::Downstream, "-", e),
                Some(SpliceEnd::Closed(order)) => self.closed_by_policy(&mut rec, order),
                None => {}
            },
            order = close => if let Ok(order) = order {
                rec.fail(Fault::Policy, "DENY", format_args!("closed by policy change: {}", order.detail));
            },
        }
        drop(guard);
        rec.duration = started.elapsed();
        rec.emit();
        self.metrics.record(&rec, true);
    }
}

/// Connect to the app behind the sidecar.
async fn connect_app(target: SocketAddr) -> Result<TcpStream, String> {
    match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!("connect to app at {target} failed: {e}")),
        Err(_) => Err(format!("connect to app at {target} timed out")),
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
pub async fn run_hbone(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    ctx: Arc<InboundCtx>,
    gate: Arc<Gate>,
    shutdown: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let stop = shutdown.clone();
    crate::listener::accept_loop(listener, gate, stop, move |tcp, src, permit| {
        let _ = tcp.set_nodelay(true);
        handle_hbone_conn(
            acceptor.clone(),
            tcp,
            src,
            permit,
            ctx.clone(),
            shutdown.clone(),
        )
    })
    .await
}

/// `permit` holds the connection's place at the listener until it ends; it counts as a handshake
/// until the TLS handshake completes.
async fn handle_hbone_conn(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    src: SocketAddr,
    mut permit: Permit,
    ctx: Arc<InboundCtx>,
    mut shutdown: watch::Receiver<bool>,
) {
    let local = tcp.local_addr().unwrap_or(src);
    let tcp = crate::hbone_io(tcp);
    let accept = acceptor.accept(tcp).into_fallible();
    let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, accept).await {
        Ok(Ok(tls)) => {
            permit.handshake_done();
            tls
        }
        Ok(Err((e, mut io))) => {
            crate::send_buffered_alert(&mut io).await;
            return tls_failure(&ctx, src, local, e.to_string());
        }
        Err(_) => return tls_failure(&ctx, src, local, "TLS handshake timed out".to_owned()),
    };
    let info = ward_tls::peer_info(tls.get_ref().1);
    let handler = {
        let ctx = ctx.clone();
        move |req: ConnectRequest| {
            let ctx = ctx.clone();
            let info = info.clone();
            async move { handle_connect(ctx, req, src, info).await }
        }
    };
    let shutdown = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    if let Err(e) = ward_hbone::serve(tls, H2Settings::default(), handler, shutdown).await {
        tracing::debug!(src.addr = %src, error = %e, "hbone connection ended with an error");
    }
}

fn tls_failure(ctx: &InboundCtx, src: SocketAddr, local: SocketAddr, error: String) {
    let cfg = ctx.config.borrow().clone();
    let mut rec = ctx.base_record(&cfg, src, local);
    rec.fail(Fault::Downstream, "TLS_FAILURE", error);
    rec.emit();
    ctx.metrics.record(&rec, false);
}

async fn handle_connect(
    ctx: Arc<InboundCtx>,
    req: ConnectRequest,
    src: SocketAddr,
    info: PeerInfo,
) {
    let started = Instant::now();
    let cfg = ctx.config.borrow().clone();
    let dst = match parse_authority(req.authority()) {
        Ok(a) => a,
        Err(e) => {
            let mut rec = ctx.base_record(&cfg, src, SocketAddr::new(cfg.workload.address, 0));
            rec.fail(
                Fault::Downstream,
                "CONNECT",
                format_args!("bad CONNECT authority: {e}"),
            );
            rec.emit();
            req.reject(StatusCode::BAD_REQUEST);
            return;
        }
    };
    let mut rec = ctx.base_record(&cfg, src, dst);
    rec.src_identity = info.identity.as_ref().map(|i| i.to_string());
    rec.src_namespace = info.identity.as_ref().map(|i| i.namespace().to_owned());
    rec.tls_version = Some(info.tls_version.to_owned());
    rec.tls_kx_group = Some(info.kx_group.clone());
    let facts = ConnFacts {
        peer: policy_peer(&info),
        source_ip: src.ip(),
        destination_ip: dst.ip(),
        destination_port: dst.port(),
        request: None,
    };
    if facts.peer.is_none() {
        // The server config requires a client certificate; no identity here is a bug upstream.
        rec.fail(
            Fault::Internal,
            "IDENTITY_ERROR",
            "mTLS peer without a SPIFFE identity",
        );
        rec.emit();
        req.reject(StatusCode::UNAUTHORIZED);
        return;
    }
    let verdict = authorize(&cfg, &facts);
    ctx.note_decision(&cfg, &mut rec, &verdict);
    let per_request = matches!(verdict, Verdict::PerRequest);
    match verdict {
        Verdict::Allow(_) | Verdict::PerRequest => {}
        Verdict::UnknownPort => {
            // ztunnel: a bad authority or an address that is not the local workload → 400.
            rec.fail(
                Fault::Downstream,
                "CONNECT",
                format_args!("{dst} is not served by this workload"),
            );
            rec.emit();
            ctx.metrics.record(&rec, false);
            req.reject(StatusCode::BAD_REQUEST);
            return;
        }
        refused => {
            // ztunnel: authorization deny → 401.
            let why = refused.close_order().map(|o| o.detail).unwrap_or_default();
            rec.fail(Fault::Policy, "DENY", format_args!("denied: {why}"));
            rec.duration = started.elapsed();
            rec.emit();
            ctx.metrics.record(&rec, false);
            req.reject(StatusCode::UNAUTHORIZED);
            return;
        }
    }
    if per_request {
        let Ok(tunnel) = req.accept() else { return };
        let conn = HttpConn {
            peer: facts.peer.clone(),
            peer_id: rec.src_identity.clone(),
            peer_cert_hash: info.cert_sha256.clone(),
            src,
            dst,
        };
        return ctx.serve_http(facts, tunnel, conn, rec, started).await;
    }
    // Connect to the app before answering 200, so a dead app is a 503, not an empty tunnel.
    let Some(port) = find_port(&cfg, dst.port()) else {
        return;
    };
    let upstream = match connect_app(port.target).await {
        Ok(s) => s,
        Err(e) => {
            rec.fail(Fault::Upstream, "CONNECT", e);
            rec.emit();
            ctx.metrics.record(&rec, false);
            req.reject(StatusCode::SERVICE_UNAVAILABLE);
            return;
        }
    };
    let tunnel = match req.accept() {
        Ok(t) => t,
        Err(e) => {
            rec.fail(Fault::Downstream, "-", e);
            rec.emit();
            ctx.metrics.record(&rec, false);
            return;
        }
    };
    ctx.serve_connected(facts, tunnel, upstream, rec, started)
        .await;
}

impl InboundCtx {
    async fn serve_connected<S>(
        &self,
        facts: ConnFacts,
        mut downstream: S,
        mut upstream: TcpStream,
        mut rec: ConnRecord,
        started: Instant,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Abort,
    {
        let _ = upstream.set_nodelay(true);
        let (guard, close) = self.tracker.register(facts);
        self.metrics.conn_open(&rec);
        match splice(&mut downstream, &mut upstream, Some(close)).await {
            SpliceEnd::Done(recv, sent) => {
                rec.bytes_recv = recv;
                rec.bytes_sent = sent;
            }
            SpliceEnd::Failed(e) => rec.fail(Fault::Downstream, "-", e),
            SpliceEnd::Closed(order) => self.closed_by_policy(&mut rec, order),
        }
        drop(guard);
        rec.duration = started.elapsed();
        rec.emit();
        self.metrics.record(&rec, true);
    }

    fn closed_by_policy(&self, rec: &mut ConnRecord, order: CloseOrder) {
        rec.authz_decision = Some("deny");
        rec.authz_policy = order.policy;
        rec.authz_rule = order.rule;
        rec.authz_detail = Some(order.detail.clone());
        rec.fail(
            Fault::Policy,
            "DENY",
            format_args!("closed by policy change: {}", order.detail),
        );
    }
}

/// Serve the plaintext side of one workload port, as `gate` admits connections, until `shutdown`
/// flips to true.
pub async fn run_plaintext(
    listener: TcpListener,
    ctx: Arc<InboundCtx>,
    gate: Arc<Gate>,
    shutdown: watch::Receiver<bool>,
) {
    crate::listener::accept_loop(listener, gate, shutdown, move |tcp, src, permit| {
        let ctx = ctx.clone();
        async move {
            handle_plaintext(ctx, tcp, src).await;
            drop(permit);
        }
    })
    .await
}

async fn handle_plaintext(ctx: Arc<InboundCtx>, tcp: TcpStream, src: SocketAddr) {
    let started = Instant::now();
    let cfg = ctx.config.borrow().clone();
    let Ok(dst) = tcp.local_addr() else { return };
    let mut rec = ctx.base_record(&cfg, src, dst);
    let facts = ConnFacts {
        peer: None,
        source_ip: src.ip(),
        destination_ip: dst.ip(),
        destination_port: dst.port(),
        request: None,
    };
    let verdict = authorize(&cfg, &facts);
    ctx.note_decision(&cfg, &mut rec, &verdict);
    if let Verdict::PerRequest = verdict {
        let conn = HttpConn {
            peer: None,
            peer_id: None,
            peer_cert_hash: None,
            src,
            dst,
        };
        return ctx.serve_http(facts, tcp, conn, rec, started).await;
    }
    if let Verdict::Allow(_) = verdict {
        let _ = tcp.set_nodelay(true);
        return ctx.serve_allowed(&cfg, facts, tcp, rec, started).await;
    }
    let why = verdict.close_order().map(|o| o.detail).unwrap_or_default();
    rec.fail(
        Fault::Policy,
        "DENY",
        format_args!("plaintext refused: {why}"),
    );
    rec.duration = started.elapsed();
    rec.emit();
    ctx.metrics.record(&rec, false);
    // Reset rather than close: the client sees the connection refused at once (curl: exit 56).
    crate::reset_on_close(&tcp);
    drop(tcp);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// srv at 127.9.0.10 serving 9000 (STRICT by a mesh policy unless `extra` says otherwise)
    /// and 9001 (PERMISSIVE by port), with `extra` documents appended.
    fn config(extra: &str) -> ProxyConfig {
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

    fn facts(peer: Option<(&str, &str)>, dst: &str, port: u16) -> ConnFacts {
        ConnFacts {
            peer: peer.map(|(ns, sa)| Peer {
                principal: format!("cluster.local/ns/{ns}/sa/{sa}"),
                trust_domain: "cluster.local".into(),
                namespace: ns.into(),
                service_account: sa.into(),
            }),
            source_ip: "127.9.0.1".parse().unwrap(),
            destination_ip: dst.parse().unwrap(),
            destination_port: port,
            request: None,
        }
    }

    #[test]
    fn authorize_table() {
        let deny_other = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-other, namespace: app}\nspec:\n  action: DENY\n  rules: [{from: [{source: {namespaces: [other]}}]}]\n";
        let open = config("");
        let denying = config(deny_other);
        let cases: Vec<(&str, &ProxyConfig, ConnFacts, &str)> = vec![
            (
                "mTLS to a served port",
                &open,
                facts(Some(("app", "cli")), "127.9.0.10", 9000),
                "allow",
            ),
            (
                "HTTP port: decided per request",
                &open,
                facts(Some(("app", "cli")), "127.9.0.10", 9002),
                "per-request",
            ),
            (
                "HTTP port still enforces STRICT",
                &open,
                facts(None, "127.9.0.10", 9002),
                "plaintext-refused",
            ),
            (
                "unknown port",
                &open,
                facts(Some(("app", "cli")), "127.9.0.10", 9999),
                "unknown-port",
            ),
            // ztunnel hbone_ip_mismatch: the authority must be this workload's address.
            (
                "authority is another IP",
                &open,
                facts(Some(("app", "cli")), "127.9.0.1", 9000),
                "unknown-port",
            ),
            (
                "plaintext on STRICT",
                &open,
                facts(None, "127.9.0.10", 9000),
                "plaintext-refused",
            ),
            (
                "plaintext on port-level PERMISSIVE",
                &open,
                facts(None, "127.9.0.10", 9001),
                "allow",
            ),
            (
                "DENY namespace matches",
                &denying,
                facts(Some(("other", "x")), "127.9.0.10", 9000),
                "denied",
            ),
            (
                "DENY namespace, other caller",
                &denying,
                facts(Some(("app", "cli")), "127.9.0.10", 9000),
                "allow",
            ),
            // Stricter than Istio: identity-less plaintext cannot dodge a DENY on namespaces.
            (
                "DENY namespace vs plaintext",
                &denying,
                facts(None, "127.9.0.10", 9001),
                "denied",
            ),
        ];
        for (name, cfg, f, want) in cases {
            let got = match authorize(cfg, &f) {
                Verdict::Allow(_) => "allow",
                Verdict::PerRequest => "per-request",
                Verdict::UnknownPort => "unknown-port",
                Verdict::PlaintextRefused { .. } => "plaintext-refused",
                Verdict::MtlsRefused { .. } => "mtls-refused",
                Verdict::Denied(_) => "denied",
            };
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn disable_refuses_mtls_and_close_orders_name_the_policy() {
        let off = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: off, namespace: app}\nspec:\n  selector: {matchLabels: {app: srv}}\n  mtls: {mode: DISABLE}\n";
        let cfg = config_with_pa(off, "");
        match authorize(&cfg, &facts(Some(("app", "cli")), "127.9.0.10", 9000)) {
            Verdict::MtlsRefused { policy } => assert_eq!(policy.as_deref(), Some("app/off")),
            other => panic!("DISABLE must refuse mTLS, got {other:?}"),
        }
        assert!(matches!(
            authorize(&cfg, &facts(None, "127.9.0.10", 9000)),
            Verdict::Allow(_)
        ));
        let strict = authorize(&config(""), &facts(None, "127.9.0.10", 9000));
        let order = strict.close_order().unwrap();
        assert_eq!(order.policy.as_deref(), Some("app/port-b"));
        assert_eq!(order.detail, "peer_authentication_strict");
        assert!(
            authorize(&config(""), &facts(Some(("a", "b")), "127.9.0.10", 9000))
                .close_order()
                .is_none()
        );
    }
}
