//! Outbound: the Sidecar egress listeners the app dials (`captureMode: NONE`; Ward does not
//! intercept with iptables). Each connection picks an endpoint of the service and goes over HBONE
//! (mTLS, the endpoint's SPIFFE id verified), or plaintext where the destination port is
//! PeerAuthentication DISABLE (auto-mTLS: the client knows the server's mode). A listener that
//! several HTTP services share is served request by request instead (`egress_http.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use ward_config::{Endpoint, OutboundListener, ProxyConfig, ServiceMeta, Transport};
use ward_hbone::{OpenError, HBONE_PORT};
use ward_identity::SpiffeId;

use crate::access_log::{ConnRecord, Direction};
use crate::connection::{ConnResult, End};
use crate::listener::Gate;
use crate::metrics::Metrics;
use crate::pool::{HbonePool, PoolError};
use crate::refusal::{Refusal, ResponseFlag};
use crate::splice::splice;

/// What every outbound task of one sidecar shares.
pub(crate) struct OutboundCtx {
    /// The sidecar's current config (sender: the sidecar's config task).
    pub config: watch::Receiver<Arc<ProxyConfig>>,
    /// Pooled HBONE connections.
    pub pool: Arc<HbonePool>,
    /// Process-wide metrics.
    pub metrics: Arc<Metrics>,
    /// Our own SPIFFE id.
    pub identity: String,
    /// Routing tables of the egress listeners that several HTTP services share.
    pub(crate) routes: crate::egress_http::RouteCache,
}

/// The plan for one outbound connection: where to go and how. Pure.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Route {
    /// The service host, for logs.
    pub service: String,
    /// Endpoints to try, in order.
    pub endpoints: Vec<Endpoint>,
}

/// Choose the endpoints for a connection that arrived at `bind`, starting at `start` (rotated so
/// load spreads); `None` when no listener is configured there any more.
pub(crate) fn route(cfg: &ProxyConfig, bind: SocketAddr, start: usize) -> Option<Route> {
    let l: &OutboundListener = cfg.outbound.iter().find(|l| l.bind == bind)?;
    let mut endpoints = l.endpoints.clone();
    if !endpoints.is_empty() {
        let n = start % endpoints.len();
        endpoints.rotate_left(n);
    }
    Some(Route {
        service: l.service.clone(),
        endpoints,
    })
}

/// Serve one egress listener, as `gate` admits connections, until `shutdown` flips to true.
pub(crate) async fn run_listener(
    listener: TcpListener,
    ctx: Arc<OutboundCtx>,
    gate: Arc<Gate>,
    shutdown: watch::Receiver<bool>,
) {
    let Ok(bind) = listener.local_addr() else {
        return;
    };
    crate::listener::accept_loop(listener, gate, shutdown, move |tcp, src, permit| {
        let ctx = ctx.clone();
        async move {
            serve_connection(ctx, tcp, src, bind).await;
            drop(permit);
        }
    })
    .await
}

/// What an outbound connection goes over: an HBONE tunnel, or a plaintext socket.
pub(crate) enum Upstream {
    Tunnel(ward_hbone::H2Stream),
    Plain(TcpStream),
}

/// One app connection: route it, connect it to an endpoint (the next one while an endpoint
/// fails for a reason another may not share), splice, and finish its result. A refused
/// connection is reset, so the app never mistakes it for a clean empty reply.
async fn serve_connection(
    ctx: Arc<OutboundCtx>,
    mut app: TcpStream,
    src: SocketAddr,
    bind: SocketAddr,
) {
    let _ = app.set_nodelay(true);
    let cfg = ctx.config.borrow().clone();
    if crate::egress_http::routes_by_host(&ctx, &cfg, bind) {
        return crate::egress_http::serve(ctx, app, src, bind).await;
    }
    let mut rec = ConnRecord::new(Direction::Outbound, src, bind);
    rec.src_workload = Some(format!("{}/{}", cfg.workload.namespace, cfg.workload.name));
    rec.src_namespace = Some(cfg.workload.namespace.clone());
    rec.src_identity = Some(ctx.identity.clone());
    rec.src_meta = Some(crate::inbound::own_meta(&cfg));
    let mut result = ConnResult::new(rec, ctx.metrics.clone());
    let upstream = match route(&cfg, bind, fastrand::usize(..)) {
        Some(route) => connect_any(&ctx, &cfg, &route, &mut result).await,
        None => Err(Refusal::internal(
            ResponseFlag::NoRoute,
            "no egress listener configured here any more",
        )),
    };
    let end = match upstream {
        Ok(Upstream::Tunnel(mut t)) => {
            result.opened();
            End::from_splice(splice(&mut app, &mut t, None).await)
        }
        Ok(Upstream::Plain(mut s)) => {
            result.opened();
            End::from_splice(splice(&mut app, &mut s, None).await)
        }
        Err(refusal) => {
            crate::reset_on_close(&app);
            End::Refused(refusal)
        }
    };
    drop(app);
    result.finish(end);
}

/// Connect to the first endpoint of `route` that can be reached. A policy refusal stops the
/// search (another endpoint of the same service applies the same policy); any other failure
/// tries the next endpoint. The result's record names the endpoint tried last.
async fn connect_any(
    ctx: &OutboundCtx,
    cfg: &ProxyConfig,
    route: &Route,
    result: &mut ConnResult,
) -> Result<Upstream, Refusal> {
    let rec = result.record();
    rec.dst_service = Some(route.service.clone());
    rec.service = service_meta(cfg, &route.service);
    let mut last = Refusal::upstream(
        ResponseFlag::NoHealthyUpstream,
        format!("service {} has no endpoints", route.service),
    );
    for ep in &route.endpoints {
        let rec = result.record();
        note_endpoint(rec, ep, cfg);
        match connect(ctx, cfg, ep, rec).await {
            Ok(up) => return Ok(up),
            Err(refusal) if refusal.by_policy() => return Err(refusal),
            Err(refusal) => last = refusal,
        }
    }
    Err(last)
}

/// The metric labels of a configured service `host`.
pub(crate) fn service_meta(cfg: &ProxyConfig, host: &str) -> Option<Arc<ServiceMeta>> {
    cfg.directory.service(host).cloned()
}

/// Record `ep` as the connection's destination.
pub(crate) fn note_endpoint(rec: &mut ConnRecord, ep: &Endpoint, cfg: &ProxyConfig) {
    rec.dst_addr = ep.address;
    rec.dst_meta = ep
        .workload
        .as_deref()
        .and_then(|w| cfg.directory.workload(w))
        .cloned();
    rec.dst_workload = ep.workload.clone();
    rec.dst_namespace = ep
        .workload
        .as_deref()
        .and_then(|w| w.split_once('/'))
        .map(|(ns, _)| ns.to_owned());
}

/// Open the upstream for one endpoint.
pub(crate) async fn connect(
    ctx: &OutboundCtx,
    cfg: &ProxyConfig,
    ep: &Endpoint,
    rec: &mut ConnRecord,
) -> Result<Upstream, Refusal> {
    let unreachable = |why: String| Refusal::upstream(ResponseFlag::Connect, why);
    match ep.transport {
        Transport::Hbone => {
            let Some(expected) = ep.identity.as_deref().and_then(|i| SpiffeId::parse(i).ok())
            else {
                return Err(Refusal::upstream(
                    ResponseFlag::IdentityError,
                    format!("endpoint {} has no valid identity", ep.address),
                ));
            };
            let hbone = SocketAddr::new(ep.address.ip(), HBONE_PORT);
            rec.dst_hbone_addr = Some(hbone);
            match ctx
                .pool
                .open(hbone, &expected, ep.address, HeaderMap::new())
                .await
            {
                Ok((tunnel, peer)) => {
                    rec.dst_identity = peer.identity.map(|i| i.to_string());
                    rec.tls_version = Some(peer.tls_version.to_owned());
                    rec.tls_kx_group = Some(peer.kx_group);
                    Ok(Upstream::Tunnel(tunnel))
                }
                Err(PoolError::Open(OpenError::Status(s)))
                    if s == http::StatusCode::UNAUTHORIZED =>
                {
                    Err(Refusal::policy(
                        None,
                        None,
                        format!("{expected} denied the connection (HBONE 401)"),
                    ))
                }
                Err(e @ PoolError::Tls { .. }) => {
                    Err(Refusal::upstream(ResponseFlag::TlsFailure, e.to_string()))
                }
                Err(e) => Err(unreachable(e.to_string())),
            }
        }
        Transport::Plaintext => {
            rec.dst_identity = None;
            let socket = match ep.address {
                SocketAddr::V4(_) => TcpSocket::new_v4(),
                SocketAddr::V6(_) => TcpSocket::new_v6(),
            }
            .map_err(|e| unreachable(e.to_string()))?;
            if cfg.workload.address.is_ipv4() == ep.address.is_ipv4() {
                socket
                    .bind(SocketAddr::new(cfg.workload.address, 0))
                    .map_err(|e| unreachable(e.to_string()))?;
            }
            match tokio::time::timeout(Duration::from_secs(10), socket.connect(ep.address)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    Ok(Upstream::Plain(s))
                }
                Ok(Err(e)) => Err(unreachable(format!(
                    "connect to {} failed: {e}",
                    ep.address
                ))),
                Err(_) => Err(unreachable(format!("connect to {} timed out", ep.address))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(ip: &str) -> Endpoint {
        Endpoint {
            address: format!("{ip}:9000").parse().unwrap(),
            workload: None,
            identity: None,
            transport: Transport::Hbone,
        }
    }

    #[test]
    fn route_rotates_endpoints_and_misses_unknown_binds() {
        let bind: SocketAddr = "127.9.0.1:9000".parse().unwrap();
        let cfg = ProxyConfig {
            workload: ward_config::WorkloadInfo {
                name: "cli".into(),
                namespace: "app".into(),
                service_account: "cli".into(),
                address: "127.9.0.1".parse().unwrap(),
                labels: Default::default(),
                identity: "spiffe://cluster.local/ns/app/sa/cli".into(),
                demo_app: None,
                keep_override_headers: false,
            },
            inbound: vec![],
            outbound: vec![OutboundListener {
                bind,
                service: "srv.app.svc.cluster.local".into(),
                service_port: 9000,
                protocol: ward_config::Protocol::Tcp,
                endpoints: vec![
                    endpoint("127.9.0.10"),
                    endpoint("127.9.0.11"),
                    endpoint("127.9.0.12"),
                ],
            }],
            authz: Default::default(),
            outbound_traffic_policy: "ALLOW_ANY".into(),
            jwt_rules: Default::default(),
            directory: Default::default(),
        };
        let firsts: Vec<String> = (0..4)
            .map(|i| {
                route(&cfg, bind, i).unwrap().endpoints[0]
                    .address
                    .ip()
                    .to_string()
            })
            .collect();
        assert_eq!(
            firsts,
            ["127.9.0.10", "127.9.0.11", "127.9.0.12", "127.9.0.10"]
        );
        // Every endpoint stays in the list, so a failed one can be skipped.
        assert_eq!(route(&cfg, bind, 1).unwrap().endpoints.len(), 3);
        assert!(route(&cfg, "127.9.0.1:9001".parse().unwrap(), 0).is_none());
    }
}
