//! Outbound: the Sidecar egress listeners the app dials, and the outbound capture port (15001)
//! where iptables sends what the app dials when its traffic is captured (docs/capture.md). Each
//! connection picks an endpoint of the service and goes over HBONE
//! (mTLS, the endpoint's SPIFFE id verified), or plaintext where the destination port is
//! PeerAuthentication DISABLE (auto-mTLS: the client knows the server's mode). A listener that
//! several HTTP services share is served request by request instead (`egress_http.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use ward_config::istio::Resolution;
use ward_config::origination::TlsOrigination;
use ward_config::traffic_policy::{ConnectionPool, DestinationPolicy};
use ward_config::{
    CapturedDestination, Endpoint, OutboundListener, ProxyConfig, ServiceMeta, Transport,
};
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
    /// Resolves external hosts (`resolution: DNS`, the forward proxy), caching by TTL.
    pub(crate) resolvers: crate::resolve::Resolvers,
    /// TLS clients for DestinationRule TLS origination.
    pub(crate) originator: crate::originate::Originator,
    /// The sidecar's audit trail: blocked egress is recorded there.
    pub(crate) audit: crate::audit::AuditSink,
    /// The workload's span export (`crate::trace`), shared with its inbound side.
    pub(crate) tracer: Arc<crate::trace::Tracer>,
    /// The TCP connections open to each destination (`connectionPool.tcp.maxConnections`).
    pub(crate) tcp_pools: crate::tcp_pool::TcpPools,
}

/// The plan for one outbound connection: where to go and how. Pure.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Route {
    /// The service host, for logs.
    pub service: String,
    /// Endpoints to try, in order.
    pub endpoints: Vec<Endpoint>,
    /// TLS to originate to the endpoints reached in plaintext, and whether the port is HTTP.
    pub tls: Option<(Arc<TlsOrigination>, bool)>,
    /// The destination's DestinationRule `connectionPool` (`crate::tcp_pool`), and the key its
    /// connections are counted under.
    pub pool: TcpPolicy,
}

/// A destination's `connectionPool`, for whole TCP connections.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct TcpPolicy {
    /// `host|subset|port`.
    pub key: String,
    /// The pool; `None`: Istio's defaults.
    pub pool: Option<Arc<ConnectionPool>>,
}

impl TcpPolicy {
    /// The DestinationRule `connectionPool` of `host` (its `subset`) on service port `port`
    /// (Istio's precedence, `DestinationPolicy::resilience`). Pure.
    pub(crate) fn of(cfg: &ProxyConfig, host: &str, subset: Option<&str>, port: u16) -> TcpPolicy {
        let rule = cfg.mesh_routes.destination(host);
        TcpPolicy {
            key: format!("{host}|{}|{port}", subset.unwrap_or("")),
            pool: DestinationPolicy::resilience(rule, subset, port)
                .pool
                .map(Arc::new),
        }
    }
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
        tls: l.tls.clone().map(|t| (t, l.protocol.is_http())),
        pool: TcpPolicy::of(cfg, &l.service, None, l.service_port),
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

/// Serve the outbound capture port (15001): connections the iptables rules redirected, each
/// routed by its original destination (docs/capture.md, "Outbound").
pub(crate) async fn run_capture_listener(
    listener: TcpListener,
    ctx: Arc<OutboundCtx>,
    gate: Arc<Gate>,
    shutdown: watch::Receiver<bool>,
) {
    crate::listener::accept_loop(listener, gate, shutdown, move |tcp, src, permit| {
        let ctx = ctx.clone();
        async move {
            serve_captured(ctx, tcp, src).await;
            drop(permit);
        }
    })
    .await
}

/// How a captured outbound connection is served. Pure.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum CapturedPlan {
    /// Like an egress listener's connection: to the endpoints of a service or a workload.
    Route(Route),
    /// A service port without endpoints (an entry with `resolution: NONE` and its own
    /// `addresses`): straight to the original destination, as Istio forwards such a service.
    Original {
        /// The service host.
        service: String,
    },
    /// A service port without endpoints whose entry says `resolution: DNS` (or
    /// `DNS_ROUND_ROBIN`): its host resolved (cached for the answer's TTL) and dialed at the
    /// port's `targetPort`, else the port dialed. The address the app dialed is only the
    /// service's (auto-allocated) address, nothing listens there (docs/egress.md).
    Resolve {
        /// The service host, the name resolved.
        service: String,
        /// The port to dial the resolved address at.
        port: u16,
    },
    /// ALLOW_ANY: straight to the original destination (Istio's `PassthroughCluster`).
    Passthrough,
    /// REGISTRY_ONLY: refused (Istio's `BlackHoleCluster`).
    BlackHole,
}

/// Decide a captured connection to `dst`, starting at endpoint `start`. Pure.
pub(crate) fn plan_captured(cfg: &ProxyConfig, dst: SocketAddr, start: usize) -> CapturedPlan {
    match cfg.captured_destination(dst) {
        CapturedDestination::Service { host, port } if port.endpoints.is_empty() => {
            let dns = cfg.services.get(host).is_some_and(|s| {
                matches!(s.resolution, Resolution::Dns | Resolution::DnsRoundRobin)
            });
            if dns && !host.starts_with('*') {
                CapturedPlan::Resolve {
                    service: host.to_owned(),
                    port: port.target_port.unwrap_or(dst.port()),
                }
            } else {
                CapturedPlan::Original {
                    service: host.to_owned(),
                }
            }
        }
        CapturedDestination::Service { host, port } => {
            let mut endpoints = port.endpoints.clone();
            if !endpoints.is_empty() {
                let n = start % endpoints.len();
                endpoints.rotate_left(n);
            }
            CapturedPlan::Route(Route {
                service: host.to_owned(),
                endpoints,
                tls: port.tls.clone().map(|t| (t, port.protocol.is_http())),
                pool: TcpPolicy::of(cfg, host, None, port.number),
            })
        }
        CapturedDestination::Workload(ep) => CapturedPlan::Route(Route {
            service: ep.workload.clone().unwrap_or_default(),
            endpoints: vec![ep],
            tls: None,
            pool: TcpPolicy::default(),
        }),
        CapturedDestination::Unknown if cfg.outbound_traffic_policy == "REGISTRY_ONLY" => {
            CapturedPlan::BlackHole
        }
        CapturedDestination::Unknown => CapturedPlan::Passthrough,
    }
}

/// One captured app connection: find where it was going, then serve it as its plan says.
async fn serve_captured(ctx: Arc<OutboundCtx>, app: TcpStream, src: SocketAddr) {
    let _ = app.set_nodelay(true);
    let cfg = ctx.config.borrow().clone();
    let local = app.local_addr().unwrap_or(src);
    let original = crate::capture::original_dst(&app);
    let mut rec = ConnRecord::new(
        Direction::Outbound,
        src,
        *original.as_ref().unwrap_or(&local),
    );
    rec.src_workload = Some(format!("{}/{}", cfg.workload.namespace, cfg.workload.name));
    rec.src_namespace = Some(cfg.workload.namespace.clone());
    rec.src_identity = Some(ctx.identity.clone());
    rec.telemetry(&cfg);
    let mut result = ConnResult::new(rec, ctx.metrics.clone());
    let upstream = match original {
        Err(e) => Err(Refusal::internal(
            ResponseFlag::NoRoute,
            format!("no original destination (SO_ORIGINAL_DST): {e}"),
        )),
        // A connection made to the capture port itself has no other destination.
        Ok(dst) if dst == local => Err(Refusal::downstream(
            ResponseFlag::NoRoute,
            "connection to the outbound capture port itself",
        )),
        Ok(dst) => match plan_captured(&cfg, dst, fastrand::usize(..)) {
            CapturedPlan::Route(route) => {
                let workload_only = route.endpoints.len() == 1
                    && route.endpoints.first().and_then(|e| e.workload.as_ref())
                        == Some(&route.service);
                let up = connect_any(&ctx, &cfg, &route, &mut result).await;
                if workload_only {
                    result.record().dst_service = None;
                }
                up
            }
            CapturedPlan::Original { service } => {
                result.record().dst_service = Some(service);
                passthrough(dst).await
            }
            CapturedPlan::Resolve { service, port } => {
                let rec = result.record();
                rec.dst_service = Some(service.clone());
                rec.service = service_meta(&cfg, &service);
                crate::forward_proxy::dial_resolved(&ctx, &cfg, &service, port, &mut result).await
            }
            CapturedPlan::Passthrough => {
                let rec = result.record();
                rec.upstream_cluster = Some("PassthroughCluster");
                rec.dst_service = Some("PassthroughCluster".to_owned());
                passthrough(dst).await
            }
            CapturedPlan::BlackHole => {
                let mut app = app;
                let refusal =
                    crate::blackhole::refuse_captured(&mut app, result.record(), &ctx, &cfg, dst)
                        .await;
                drop(app);
                return result.finish(End::Refused(refusal));
            }
        },
    };
    finish_spliced(app, upstream, result).await;
}

/// ALLOW_ANY: a plain TCP connection to the original destination, from a marked socket.
pub(crate) async fn passthrough(dst: SocketAddr) -> Result<Upstream, Refusal> {
    let unreachable = |why: String| Refusal::upstream(ResponseFlag::Connect, why);
    match tokio::time::timeout(Duration::from_secs(10), crate::capture::connect(dst, None)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(Upstream::Plain(s))
        }
        Ok(Err(e)) => Err(unreachable(format!("connect to {dst} failed: {e}"))),
        Err(_) => Err(unreachable(format!("connect to {dst} timed out"))),
    }
}

/// Splice `app` to its upstream, or reset it with the refusal; then finish its result.
pub(crate) async fn finish_spliced(
    mut app: TcpStream,
    upstream: Result<Upstream, Refusal>,
    mut result: ConnResult,
) {
    let close = result.max_duration().map(close_after);
    let end = match upstream {
        Ok(Upstream::Tunnel(mut t)) => {
            result.opened();
            End::from_splice(splice(&mut app, &mut t, close).await)
        }
        Ok(Upstream::Plain(mut s)) => {
            result.opened();
            End::from_splice(splice(&mut app, &mut s, close).await)
        }
        Ok(Upstream::Tls(mut s)) => {
            result.opened();
            End::from_splice(splice(&mut app, &mut *s, close).await)
        }
        Err(refusal) if !refusal.body.is_empty() => {
            // An HTTP port whose upstream failed before any byte: a local reply, as Envoy's.
            crate::originate::reply(&mut app, &refusal).await;
            End::Refused(refusal)
        }
        Err(refusal) => {
            crate::reset_on_close(&app);
            End::Refused(refusal)
        }
    };
    drop(app);
    result.finish(end);
}

/// The close order of `connectionPool.tcp.maxConnectionDuration`, sent `limit` from now; the
/// timer ends with the connection (its receiver dropped) if that comes first.
fn close_after(limit: Duration) -> tokio::sync::oneshot::Receiver<Refusal> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut tx = tx;
        tokio::select! {
            () = tokio::time::sleep(limit) => {
                let _ = tx.send(crate::tcp_pool::duration_reached(limit));
            }
            () = tx.closed() => {}
        }
    });
    rx
}

/// What an outbound connection goes over: an HBONE tunnel, or a plaintext socket.
pub(crate) enum Upstream {
    Tunnel(ward_hbone::H2Stream),
    Plain(TcpStream),
    /// TLS the sidecar originated (a DestinationRule SIMPLE or MUTUAL `tls`).
    Tls(Box<crate::originate::Originated>),
}

/// One app connection: route it, connect it to an endpoint (the next one while an endpoint
/// fails for a reason another may not share), splice, and finish its result. A refused
/// connection is reset, so the app never mistakes it for a clean empty reply.
async fn serve_connection(
    ctx: Arc<OutboundCtx>,
    app: TcpStream,
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
    rec.telemetry(&cfg);
    rec.src_meta = Some(crate::inbound::own_meta(&cfg));
    let mut result = ConnResult::new(rec, ctx.metrics.clone());
    let upstream = match route(&cfg, bind, fastrand::usize(..)) {
        Some(route) => connect_any(&ctx, &cfg, &route, &mut result).await,
        None => Err(Refusal::internal(
            ResponseFlag::NoRoute,
            "no egress listener configured here any more",
        )),
    };
    finish_spliced(app, upstream, result).await;
}

/// Connect to the first endpoint of `route` that can be reached. A policy refusal stops the
/// search (another endpoint of the same service applies the same policy); any other failure
/// tries the next endpoint. The result's record names the endpoint tried last.
pub(crate) async fn connect_any(
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
    // `connectionPool.tcp.maxConnections`: over it the connection is refused at once (`UO`).
    let pool = route.pool.pool.as_deref();
    let slot = ctx.tcp_pools.take(&route.pool.key, pool)?;
    let connect_timeout = crate::tcp_pool::connect_timeout(pool);
    for ep in &route.endpoints {
        let rec = result.record();
        note_endpoint(rec, ep, cfg);
        let connecting = async {
            let up = connect(ctx, cfg, ep, rec).await?;
            if let Upstream::Plain(s) = &up {
                crate::tcp_pool::keepalive(s, pool);
            }
            crate::originate::wrap(ctx, route.tls.as_ref(), up, rec).await
        };
        let connected = match tokio::time::timeout(connect_timeout, connecting).await {
            Ok(c) => c,
            Err(_) => Err(Refusal::upstream(
                ResponseFlag::UpstreamFailure,
                format!(
                    "connect to {} timed out after {connect_timeout:?} (connectTimeout)",
                    ep.address
                ),
            )),
        };
        match connected {
            Ok(up) => {
                result.hold(slot, pool.and_then(|p| p.max_connection_duration));
                return Ok(up);
            }
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
            crate::capture::mark_socket(&socket).map_err(|e| unreachable(e.to_string()))?;
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
                audit_fail_closed: false,
                num_trusted_proxies: 0,
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
                tls: None,
            }],
            authz: Default::default(),
            outbound_traffic_policy: "ALLOW_ANY".into(),
            services: Default::default(),
            service_inbound: Vec::new(),
            jwt_rules: Default::default(),
            directory: Default::default(),
            egress: Default::default(),
            mesh_routes: Default::default(),
            gateway: Default::default(),
            tracing: Default::default(),
            access_logging: Default::default(),
            metrics: Default::default(),
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

    fn captured_config(mode: &str) -> ProxyConfig {
        let yaml = format!(
            r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: cli, namespace: app}}
spec: {{address: 10.9.0.1, serviceAccount: cli, labels: {{app: cli}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: srv, namespace: app}}
spec: {{address: 10.9.0.2, serviceAccount: srv, labels: {{app: srv}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: srv, namespace: app}}
spec:
  hosts: [srv.app.svc.cluster.local]
  addresses: [10.96.0.10]
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector: {{labels: {{app: srv}}}}
  ports: [{{number: 80, name: http, targetPort: 8080}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: legacy, namespace: app}}
spec:
  hosts: [legacy.example.com]
  addresses: [192.0.2.0/24]
  ports: [{{number: 5432, name: tcp}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: registry, namespace: app}}
spec:
  hosts: [registry.example.org]
  addresses: [203.0.113.5]
  resolution: DNS
  ports: [{{number: 443, name: tls, targetPort: 8443}}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: cli, namespace: app}}
spec:
  workloadSelector: {{labels: {{app: cli}}}}
  outboundTrafficPolicy: {{mode: {mode}}}
"#
        );
        let set = ward_config::load_str("test.yaml", &yaml).unwrap();
        ward_config::translate(&set).unwrap().proxies["app/cli"].clone()
    }

    #[test]
    fn captured_connections_follow_vip_workload_then_outbound_traffic_policy() {
        let cfg = captured_config("REGISTRY_ONLY");
        let plan = |dst: &str| plan_captured(&cfg, dst.parse().unwrap(), 0);
        match plan("10.96.0.10:80") {
            CapturedPlan::Route(route) => {
                assert_eq!(route.service, "srv.app.svc.cluster.local");
                assert_eq!(route.endpoints[0].address.to_string(), "10.9.0.2:8080");
                assert_eq!(route.endpoints[0].transport, Transport::Hbone);
            }
            other => panic!("service route expected, got {other:?}"),
        }
        match plan("10.9.0.2:5555") {
            CapturedPlan::Route(route) => {
                assert_eq!(route.service, "app/srv");
                assert_eq!(route.endpoints.len(), 1);
                assert_eq!(route.endpoints[0].address.to_string(), "10.9.0.2:5555");
                assert_eq!(
                    route.endpoints[0].identity.as_deref(),
                    Some("spiffe://cluster.local/ns/app/sa/srv")
                );
            }
            other => panic!("workload route expected, got {other:?}"),
        }
        assert_eq!(
            plan("10.96.0.10:81"),
            CapturedPlan::BlackHole,
            "a VIP without that port"
        );
        assert_eq!(
            plan("192.0.2.7:5432"),
            CapturedPlan::Original {
                service: "legacy.example.com".into()
            },
            "resolution NONE: a registered service, to the address dialed"
        );
        assert_eq!(
            plan("203.0.113.5:443"),
            CapturedPlan::Resolve {
                service: "registry.example.org".into(),
                port: 8443
            },
            "resolution DNS: the host resolved, at targetPort"
        );
        assert_eq!(plan("198.51.100.1:443"), CapturedPlan::BlackHole);
        let open = captured_config("ALLOW_ANY");
        assert_eq!(
            plan_captured(&open, "198.51.100.1:443".parse().unwrap(), 0),
            CapturedPlan::Passthrough
        );
    }
}
