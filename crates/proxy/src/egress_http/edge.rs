//! HTTP at a gateway server (docs/ingress.md): a request that arrived on a Gateway server's
//! port (plaintext, or after the TLS the gateway terminated) is admitted like any other
//! (`crate::admission`), checked against the server's `hosts`, redirected to `https` when the
//! server says `httpsRedirect`, checked by the gateway workload's RequestAuthentication and
//! AuthorizationPolicy (`crate::inbound_http::check_at_edge`), then decided by the server's
//! VirtualService table (the same pure `ward_config::http_routing` as the `mesh` gateway) and
//! carried out by `routed.rs`: forwarded into the mesh over HBONE with the gateway's own
//! identity, so the destination's AuthorizationPolicy sees the gateway's principal.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use ward_config::ProxyConfig;

use super::routed::Scope;
use super::{Body, Built, Clients, Downstream, RequestLog};
use crate::admission::RequestHead;
use crate::audit::{AuditEvent, Verdict as AuditVerdict};
use crate::connection::InboundConn;
use crate::http_metrics::CountingBody;
use crate::outbound::OutboundCtx;
use crate::refusal::{Refusal, ResponseFlag};

/// Where a gateway connection came in.
#[derive(Clone, Debug)]
pub(crate) struct Edge {
    /// The server port.
    pub(crate) port: u16,
    /// The gateway terminated TLS on the connection (`https`), or it came over HBONE.
    pub(crate) tls: bool,
    /// The server the TLS handshake chose by SNI; `None`: chosen per request by `Host`.
    pub(crate) server: Option<usize>,
    /// A connection from a mesh workload over HBONE (an egress gateway's usual client): the
    /// verified peer, whose SPIFFE id the gateway's AuthorizationPolicy sees. `None`: a client
    /// outside the mesh, on the gateway's own port.
    pub(crate) peer: Option<Arc<InboundConn>>,
}

/// Serve HTTP on one gateway connection until it closes.
pub(crate) async fn serve<I>(
    ctx: Arc<OutboundCtx>,
    inbound: Arc<crate::inbound::InboundCtx>,
    io: I,
    src: SocketAddr,
    bind: SocketAddr,
    edge: Edge,
) where
    I: AsyncRead + AsyncWrite + crate::splice::Abort + Unpin + Send + 'static,
{
    let abort = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let down = Arc::new(Downstream {
        ctx,
        src,
        bind,
        clients: Clients::default(),
        edge: Some((edge, inbound)),
        abort: abort.clone(),
    });
    // Reset, not closed, when an upgraded connection's splice failed (`routed.rs`).
    let io = crate::inbound_http::Abortable::new(io, abort);
    let svc = {
        let down = down.clone();
        hyper::service::service_fn(move |req| {
            let down = down.clone();
            async move { Ok::<_, Infallible>(down.serve_request(req).await) }
        })
    };
    // A head with both Content-Length and Transfer-Encoding never reaches hyper whole: hyper
    // answers 400 in its place (crate::framing).
    let io = crate::framing::Guarded::new(io);
    let verdict = io.verdict();
    // An upgrade (WebSocket) the backend accepts is spliced (`routed.rs`).
    if let Err(e) = crate::inbound_http::edge_server()
        .serve_connection_with_upgrades(TokioIo::new(io), svc)
        .await
    {
        tracing::debug!(error = %e, "gateway http connection ended with an error");
    }
    if let Some(refused) = verdict.get() {
        log_refused(&down, refused);
    }
}

/// The access log record of a head the framing guard refused: Envoy's `DPE` and its detail.
fn log_refused(down: &Downstream, refused: &crate::framing::Refused) {
    let config = down.ctx.config.borrow().clone();
    let mut log = RequestLog::detached(down, &config);
    log.logging = Some(config.access_logging.clone());
    log.method.clone_from(&refused.method);
    log.path.clone_from(&refused.path);
    if let Some((edge, _)) = &down.edge {
        let gw = &config.gateway;
        let index = edge
            .server
            .or_else(|| gw.on_port(edge.port).first().copied());
        log.gateway = Some(
            index
                .and_then(|i| gw.servers().get(i))
                .map_or_else(String::new, |s| s.gateway.clone()),
        );
    }
    log.emit(
        StatusCode::BAD_REQUEST.as_u16(),
        ResponseFlag::DownstreamProtocolError.as_str(),
        refused.detail,
        None,
    );
}

/// The host of an authority, lowercase, without its port.
fn host_of(authority: &str) -> String {
    crate::sniff::host_of_authority(authority).to_ascii_lowercase()
}

impl Downstream {
    /// One request at a gateway server (the module doc says the order).
    pub(super) async fn serve_at_edge(
        &self,
        config: &Arc<ProxyConfig>,
        built: &Built,
        req: Request<CountingBody>,
        log: &mut RequestLog,
        challenge: &mut Option<String>,
    ) -> Result<Response<Body>, Refusal> {
        let Some((edge, inbound)) = &self.edge else {
            return Err(super::no_route());
        };
        let head = RequestHead {
            method: req.method(),
            uri: req.uri(),
            version: req.version(),
            headers: req.headers(),
        };
        let authority = super::admit_head(&head, true)?;
        log.authority.clone_from(&authority);
        let host = host_of(&authority);
        let gw = &config.gateway;
        if let Some(peer) = &edge.peer {
            log.source_principal.clone_from(&peer.peer_id);
            log.source_namespace = peer.peer.as_ref().map(|p| p.namespace.clone());
        }
        let index = match edge.server {
            Some(i) => Some(i),
            None => gw.server_for_host(edge.port, &host),
        };
        let Some(index) = index else {
            return Err(super::no_route());
        };
        let Some(server) = gw.servers().get(index) else {
            return Err(super::no_route());
        };
        log.gateway = Some(server.gateway.clone());
        if server.https_redirect && !edge.tls {
            // Envoy's `https_redirect`: the same host and path, scheme `https`, its default port.
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            log.answer = Some((ResponseFlag::None, "https_redirect"));
            let location = format!("https://{host}{path}");
            let mut resp = Response::new(super::routed::empty());
            *resp.status_mut() = StatusCode::MOVED_PERMANENTLY;
            if let Ok(v) = http::HeaderValue::from_str(&location) {
                resp.headers_mut().insert(http::header::LOCATION, v);
            }
            return Ok(resp);
        }
        let (mut parts, body) = req.into_parts();
        let checked = crate::inbound_http::check_at_edge(
            inbound,
            config,
            self.src,
            SocketAddr::new(self.bind.ip(), edge.port),
            &mut parts,
            edge.peer.as_deref(),
        );
        let principal = match checked {
            Ok(p) => p,
            Err((refusal, c)) => {
                *challenge = c;
                if let Some(peer) = &edge.peer {
                    if refusal.by_policy() {
                        // A mesh workload refused at the gateway: egress that was blocked.
                        self.note_egress_blocked(config, peer, &host, edge.port);
                    }
                }
                return Err(refusal);
            }
        };
        log.request_principal = principal;
        let req = Request::from_parts(parts, body);
        let Some(table) = gw.table(index) else {
            return Err(super::no_route());
        };
        let scope = Scope {
            table,
            service: None,
            authority: &authority,
            port: edge.port,
            gateway: &server.gateway,
            scheme: if edge.tls { "https" } else { "http" },
        };
        self.serve_routed(config, built, &scope, req, log).await
    }

    /// A gateway route whose destination is no registered service (no ServiceEntry the gateway
    /// sees): the request is refused (`503 NC`, as Istio's gateway has no cluster for it), and
    /// it is kept as evidence like any blocked egress: `dst.service="BlackHoleCluster"` in the
    /// access line, `ward_egress_blocked_total`, and a `registry_only` audit record.
    pub(super) fn note_unregistered(
        &self,
        config: &ProxyConfig,
        host: &str,
        port: u16,
        log: &mut RequestLog,
    ) {
        log.blocked_host = Some(host.to_owned());
        let peer = self.edge.as_ref().and_then(|(e, _)| e.peer.clone());
        match &peer {
            Some(peer) => self.note_egress_blocked(config, peer, host, port),
            None => self.ctx.metrics.egress_blocked(
                &format!("{}/{}", config.workload.namespace, config.workload.name),
                &config.workload.namespace,
                Some(host),
                port,
                "http",
            ),
        }
        self.ctx.audit.record(&AuditEvent {
            time: std::time::SystemTime::now(),
            direction: "gateway",
            protocol: "http",
            verdict: AuditVerdict::RegistryOnly,
            src_addr: self.src,
            src_identity: peer.as_ref().and_then(|p| p.peer_id.as_deref()),
            dst_addr: self.bind,
            dst_identity: None,
            dst_host: Some(host),
            request_principal: None,
            method: None,
            path: None,
            request_id: None,
            break_glass: None,
        });
    }

    /// Count a mesh workload's request that the gateway refused (its AuthorizationPolicy, or a
    /// destination that is no registered service) as blocked egress,
    /// `ward_egress_blocked_total` with the source as the labels name it (docs/egress.md).
    /// The access line and the audit record are written where the decision is made.
    pub(super) fn note_egress_blocked(
        &self,
        config: &ProxyConfig,
        peer: &InboundConn,
        host: &str,
        port: u16,
    ) {
        let (workload, namespace) = match peer.source_meta(config) {
            Some(m) => (format!("{}/{}", m.namespace, m.name), m.namespace.clone()),
            None => (
                peer.peer_id.clone().unwrap_or_default(),
                peer.peer
                    .as_ref()
                    .map(|p| p.namespace.clone())
                    .unwrap_or_default(),
            ),
        };
        self.ctx
            .metrics
            .egress_blocked(&workload, &namespace, Some(host), port, "http");
    }
}
