//! Outbound: the Sidecar egress listeners the app dials (`captureMode: NONE`; Ward does not
//! intercept with iptables). Each connection picks an endpoint of the service and goes over HBONE
//! (mTLS, the endpoint's SPIFFE id verified), or plaintext where the destination port is
//! PeerAuthentication DISABLE (auto-mTLS: the client knows the server's mode). A listener that
//! several HTTP services share is served request by request instead (`egress_http.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderMap;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use ward_config::{Endpoint, OutboundListener, ProxyConfig, Transport};
use ward_hbone::{OpenError, HBONE_PORT};
use ward_identity::SpiffeId;

use crate::access_log::{ConnRecord, Direction, Fault};
use crate::listener::Gate;
use crate::metrics::Metrics;
use crate::pool::{HbonePool, PoolError};
use crate::splice::{splice, SpliceEnd};

/// What every outbound task of one sidecar shares.
pub struct OutboundCtx {
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
pub struct Route {
    /// The service host, for logs.
    pub service: String,
    /// Endpoints to try, in order.
    pub endpoints: Vec<Endpoint>,
}

/// Choose the endpoints for a connection that arrived at `bind`, starting at `start` (rotated so
/// load spreads); `None` when no listener is configured there any more.
pub fn route(cfg: &ProxyConfig, bind: SocketAddr, start: usize) -> Option<Route> {
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
pub async fn run_listener(
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
            handle(ctx, tcp, src, bind).await;
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

async fn handle(ctx: Arc<OutboundCtx>, mut app: TcpStream, src: SocketAddr, bind: SocketAddr) {
    let started = Instant::now();
    let _ = app.set_nodelay(true);
    let cfg = ctx.config.borrow().clone();
    if crate::egress_http::routes_by_host(&ctx, &cfg, bind) {
        return crate::egress_http::serve(ctx, app, src, bind).await;
    }
    let mut rec = ConnRecord::new(Direction::Outbound, src, bind);
    rec.src_workload = Some(format!("{}/{}", cfg.workload.namespace, cfg.workload.name));
    rec.src_namespace = Some(cfg.workload.namespace.clone());
    rec.src_identity = Some(ctx.identity.clone());
    let Some(route) = route(&cfg, bind, fastrand::usize(..)) else {
        rec.fail(
            Fault::Internal,
            "NR",
            "no egress listener configured here any more",
        );
        rec.emit();
        return;
    };
    rec.dst_service = Some(route.service.clone());
    if route.endpoints.is_empty() {
        rec.fail(
            Fault::Upstream,
            "UH",
            format_args!("service {} has no endpoints", route.service),
        );
        rec.emit();
        ctx.metrics.record(&rec, false);
        return;
    }
    let mut last_err = String::new();
    let mut flags = "CONNECT";
    for ep in &route.endpoints {
        rec.dst_addr = ep.address;
        rec.dst_workload = ep.workload.clone();
        rec.dst_namespace = ep
            .workload
            .as_deref()
            .and_then(|w| w.split_once('/'))
            .map(|(ns, _)| ns.to_owned());
        match connect(&ctx, &cfg, ep, &mut rec).await {
            Ok(up) => {
                ctx.metrics.conn_open(&rec);
                let end = match up {
                    Upstream::Tunnel(mut t) => splice(&mut app, &mut t, None).await,
                    Upstream::Plain(mut s) => splice(&mut app, &mut s, None).await,
                };
                match end {
                    SpliceEnd::Done(sent_up, recv_down) => {
                        rec.bytes_recv = sent_up;
                        rec.bytes_sent = recv_down;
                    }
                    SpliceEnd::Failed(e) => rec.fail(Fault::Upstream, "-", e),
                    SpliceEnd::Closed(o) => rec.fail(Fault::Policy, "DENY", o.detail),
                }
                rec.duration = started.elapsed();
                rec.emit();
                ctx.metrics.record(&rec, true);
                return;
            }
            Err((e, f, retry)) => {
                last_err = e;
                flags = f;
                if !retry {
                    break;
                }
            }
        }
    }
    let fault = if flags == "DENY" {
        Fault::Policy
    } else {
        Fault::Upstream
    };
    rec.fail(fault, flags, last_err);
    rec.duration = started.elapsed();
    rec.emit();
    ctx.metrics.record(&rec, false);
    // Reset the app's connection: a refused upstream must never look like a clean empty reply.
    crate::reset_on_close(&app);
}

/// Open the upstream for one endpoint. Errors carry the message, the response flag, and whether
/// trying another endpoint makes sense.
pub(crate) async fn connect(
    ctx: &OutboundCtx,
    cfg: &ProxyConfig,
    ep: &Endpoint,
    rec: &mut ConnRecord,
) -> Result<Upstream, (String, &'static str, bool)> {
    match ep.transport {
        Transport::Hbone => {
            let Some(expected) = ep.identity.as_deref().and_then(|i| SpiffeId::parse(i).ok())
            else {
                return Err((
                    format!("endpoint {} has no valid identity", ep.address),
                    "IDENTITY_ERROR",
                    true,
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
                    Err((
                        format!("{} denied the connection (HBONE 401)", expected),
                        "DENY",
                        false,
                    ))
                }
                Err(e @ PoolError::Tls { .. }) => Err((e.to_string(), "TLS_FAILURE", true)),
                Err(e) => Err((e.to_string(), "CONNECT", true)),
            }
        }
        Transport::Plaintext => {
            rec.dst_identity = None;
            let socket = match ep.address {
                SocketAddr::V4(_) => TcpSocket::new_v4(),
                SocketAddr::V6(_) => TcpSocket::new_v6(),
            }
            .map_err(|e| (e.to_string(), "CONNECT", true))?;
            if cfg.workload.address.is_ipv4() == ep.address.is_ipv4() {
                socket
                    .bind(SocketAddr::new(cfg.workload.address, 0))
                    .map_err(|e| (e.to_string(), "CONNECT", true))?;
            }
            match tokio::time::timeout(Duration::from_secs(10), socket.connect(ep.address)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    Ok(Upstream::Plain(s))
                }
                Ok(Err(e)) => Err((
                    format!("connect to {} failed: {e}", ep.address),
                    "CONNECT",
                    true,
                )),
                Err(_) => Err((
                    format!("connect to {} timed out", ep.address),
                    "CONNECT",
                    true,
                )),
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
            jwt_rules: vec![],
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
