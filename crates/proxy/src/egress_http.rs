//! Outbound HTTP routed by `Host`: an egress listener that several HTTP services share (a
//! Sidecar egress listener whose `hosts` match more than one HTTP service on its port) serves
//! HTTP/1.1 and h2c to the app, and sends each request to the service its authority names
//! ([`ward_config::routes`]), over an HBONE tunnel to one of that service's endpoints (or in
//! plaintext where auto-mTLS says so). A listener with one service is not served here: its
//! connections go through whole (`outbound.rs`).
//!
//! Each downstream connection keeps its own client connections, per service, so kept-alive
//! requests to one service reuse a tunnel, and the next request on the same connection may go
//! to another service. Status codes and response flags: docs/http.md, "Outbound: routing by
//! Host".

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, HOST, TE};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use ward_config::{EgressRoutes, Endpoint, OutboundListener, ProxyConfig};

use crate::access_log::{ConnRecord, Direction};
use crate::admission::{self, RequestHead};
use crate::connection::{ConnResult, End};
use crate::http_metrics::{self, CountingBody, RequestMeter};
use crate::metrics::{Parties, PeerLabels, Reporter};
use crate::outbound::{connect, OutboundCtx, Upstream};
use crate::refusal::{Refusal, ResponseFlag};

/// Bodies both ways: the peer's streamed body, or a small local one.
type Body = BoxBody<Bytes, hyper::Error>;

/// Idle HTTP/1.1 connections kept per service by one downstream connection.
const MAX_IDLE_PER_SERVICE: usize = 8;

/// The egress routing of one config.
struct Built {
    config: Arc<ProxyConfig>,
    routes: EgressRoutes,
    /// Load-balancing state for the destinations VirtualServices route to.
    balance: Arc<routed::Balance>,
    /// Circuit breakers and outlier detectors of the destinations (DestinationRule
    /// `connectionPool`, `outlierDetection`).
    destinations: Arc<limits::Destinations>,
}

/// The routing tables of the sidecar's current config: built when a connection or request
/// first sees a new config, then shared, never rebuilt per request.
///
/// The balancing, breaker and detector state is carried from one config to the next, as
/// Envoy keeps a cluster's circuit breakers and outlier state across updates: requests in
/// flight when a config arrives still count against its limits.
#[derive(Default)]
pub(crate) struct RouteCache {
    current: ArcSwapOption<Built>,
    /// Held while a new config's tables are built, so requests that see it at once share one
    /// build (and one set of breaker counts) instead of each making its own.
    building: Mutex<()>,
}

impl RouteCache {
    fn get(&self, config: &Arc<ProxyConfig>) -> Arc<Built> {
        let fresh = |built: &Option<Arc<Built>>| {
            built
                .as_ref()
                .filter(|b| Arc::ptr_eq(&b.config, config))
                .cloned()
        };
        if let Some(built) = fresh(&self.current.load_full()) {
            return built;
        }
        // A poisoned lock only means another build panicked; building again is still right.
        let _building = self.building.lock().unwrap_or_else(|e| e.into_inner());
        let previous = self.current.load_full();
        if let Some(built) = fresh(&previous) {
            return built;
        }
        let built = Arc::new(Built {
            config: config.clone(),
            routes: EgressRoutes::new(config),
            balance: previous
                .as_ref()
                .map(|p| p.balance.clone())
                .unwrap_or_default(),
            destinations: previous
                .as_ref()
                .map(|p| p.destinations.clone())
                .unwrap_or_default(),
        });
        self.current.store(Some(built.clone()));
        built
    }
}

/// Whether the connections the listener at `bind` accepts are served here, request by request
/// (several HTTP services share it, or a VirtualService covers one of its HTTP services, or a
/// DestinationRule sets a `connectionPool` or `outlierDetection` for one, or the workload
/// reports CLIENT spans), rather than forwarded whole.
pub(crate) fn routes_by_host(
    ctx: &OutboundCtx,
    config: &Arc<ProxyConfig>,
    bind: SocketAddr,
) -> bool {
    let built = ctx.routes.get(config);
    built.routes.is_shared(bind)
        // An HTTP listener of a workload that reports CLIENT spans: each request gets its own
        // span, as Envoy's outbound HTTP listener makes one per request (docs/tracing.md).
        || (config.tracing.client.is_some() && built.routes.table(bind).is_some())
        || built.routes.table(bind).is_some_and(|t| {
            t.hosts().iter().any(|h| {
                config.mesh_routes.table().covers(&h.name)
                    || config.mesh_routes.destination(&h.name).is_some_and(
                        ward_config::traffic_policy::DestinationPolicy::limits_requests,
                    )
            })
        })
}

/// Serve HTTP on an app's connection to a shared egress listener until it closes.
pub(crate) async fn serve(
    ctx: Arc<OutboundCtx>,
    app: TcpStream,
    src: SocketAddr,
    bind: SocketAddr,
) {
    let down = Arc::new(Downstream {
        ctx,
        src,
        bind,
        clients: Clients::default(),
        edge: None,
        abort: Arc::default(),
    });
    let svc = hyper::service::service_fn(move |req| {
        let down = down.clone();
        async move { Ok::<_, Infallible>(down.serve_request(req).await) }
    });
    if let Err(e) = crate::inbound_http::server()
        .serve_connection(TokioIo::new(app), svc)
        .await
    {
        tracing::debug!(error = %e, "outbound http connection ended with an error");
    }
}

fn no_route() -> Refusal {
    Refusal::downstream(ResponseFlag::NoRoute, "route_not_found")
        .with_reply(StatusCode::NOT_FOUND, "")
}

fn no_endpoints() -> Refusal {
    Refusal::upstream(ResponseFlag::NoHealthyUpstream, "no_healthy_upstream")
        .with_reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream")
}

fn connect_failed() -> Refusal {
    Refusal::upstream(
        ResponseFlag::UpstreamFailure,
        "upstream_reset_before_response_started{connection_failure}",
    )
    .with_reply(StatusCode::SERVICE_UNAVAILABLE, "upstream connect error")
}

fn denied() -> Refusal {
    Refusal::policy(None, None, "upstream_denied_connection")
        .with_reply(StatusCode::FORBIDDEN, "upstream denied the connection")
}

fn reset() -> Refusal {
    Refusal::upstream(
        ResponseFlag::UpstreamConnectionTermination,
        "upstream_reset_before_response_started{connection_termination}",
    )
    .with_reply(
        StatusCode::SERVICE_UNAVAILABLE,
        "upstream connect error or disconnect/reset before headers",
    )
}

/// The answer to a request that could not be sent: the client's fault when its own body
/// failed (a bad chunk size, a reset): 400; else the upstream's: 503 `UC`.
fn send_failed(e: &hyper::Error) -> Refusal {
    if e.is_user() {
        return Refusal::downstream(ResponseFlag::None, "downstream_body_error")
            .with_reply(StatusCode::BAD_REQUEST, "request body could not be read\n");
    }
    reset()
}

/// What a request is for, decided before any I/O.
#[derive(Debug)]
struct Plan<'c> {
    /// The service's listener entry.
    listener: &'c OutboundListener,
    /// The request's authority, forwarded as it came.
    authority: String,
}

/// Decide where a request goes, or the response Ward gives instead. Pure. Rules:
/// - `CONNECT` is refused (405): a tunnel through the listener would bypass routing.
/// - The authority is the request-target's, else `Host`; none, several `Host` lines, a `Host`
///   that differs from the target's, or a malformed one: 400 (crates/proxy/src/admission.rs).
/// - An `Upgrade` to anything but an HTTP version (WebSocket, …) is refused (403,
///   `upgrade_failed`, as Envoy answers an upgrade its route does not enable): the upgraded
///   bytes could not be routed. (A gateway server serves them: `edge.rs`.) `h2c` upgrades are
///   ignored: the request is served as the HTTP/1.1 request it also is. After refusing
///   `CONNECT` or an upgrade, an HTTP/1.1 connection is closed.
/// - No virtual host for the authority: 404 `NR` on a listener shared by several services; a
///   listener for one service sends it there whatever its authority; a service with no endpoints (and no
///   VirtualService to route it elsewhere): 503 `UH`.
fn plan<'c>(
    config: &'c ProxyConfig,
    routes: &EgressRoutes,
    bind: SocketAddr,
    head: &RequestHead<'_>,
) -> Result<Plan<'c>, Refusal> {
    let authority = admit_head(head, false)?;
    let table = routes.table(bind);
    let listener = table
        .and_then(|t| t.lookup(&authority))
        // A listener for one service takes any authority, as when it forwards connections
        // whole: serving it request by request (for CLIENT spans, a connection pool) must not
        // change where a request goes.
        .or_else(|| {
            table
                .filter(|_| !routes.is_shared(bind))
                .and_then(|t| t.hosts().first())
        })
        .and_then(|host| config.outbound.get(host.target))
        .ok_or_else(no_route)?;
    // A service a VirtualService covers is routed by it (`routed.rs`); another one needs
    // endpoints of its own.
    if listener.endpoints.is_empty() && !config.mesh_routes.table().covers(&listener.service) {
        return Err(no_endpoints());
    }
    Ok(Plan {
        listener,
        authority,
    })
}

/// The authority of a request routing may take ([`plan`]'s first three rules; a gateway's
/// requests too, where `upgrades` lets an upgrade through to be routed). Pure.
fn admit_head(head: &RequestHead<'_>, upgrades: bool) -> Result<String, Refusal> {
    if head.method == Method::CONNECT {
        return Err(
            Refusal::downstream(ResponseFlag::None, "connect_not_allowed")
                .with_reply(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "CONNECT is not served on this listener\n",
                )
                .closing(head.version),
        );
    }
    let authority = admission::authority(head)?;
    if !upgrades && !admission::upgrade_protocols(head.version, head.headers).is_empty() {
        return Err(Refusal::downstream(ResponseFlag::None, "upgrade_failed")
            .with_reply(
                StatusCode::FORBIDDEN,
                "upgrades are not served on this listener\n",
            )
            .closing(head.version));
    }
    Ok(authority)
}

/// Turn the app's request head into the one sent to the service. Pure. Hop-by-hop headers go
/// (RFC 9110 §7.6.1), `TE: trailers` stays when the app sent it (trailers are passed through).
/// HTTP/1.1 gets the origin form and `Host: <authority>`; HTTP/2 gets `:authority` and no
/// `Host`. The path and query go as the app sent them: the destination sidecar admits them.
fn upstream_head(
    parts: &mut http::request::Parts,
    authority: &str,
    version: Version,
) -> Result<(), Refusal> {
    let bad_target = bad_target();
    let trailers = admission::lists_trailers(&parts.headers);
    admission::strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(HOST);
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    parts.uri = if version == Version::HTTP_2 {
        Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(path)
            .build()
            .map_err(|_| bad_target.clone())?
    } else {
        let value = HeaderValue::from_str(authority).map_err(|_| bad_target.clone())?;
        parts.headers.insert(HOST, value);
        path.parse().map_err(|_| bad_target)?
    };
    if trailers {
        parts
            .headers
            .insert(TE, HeaderValue::from_static("trailers"));
    }
    parts.version = version;
    Ok(())
}

fn bad_target() -> Refusal {
    Refusal::downstream(ResponseFlag::None, "invalid_target")
        .with_reply(StatusCode::BAD_REQUEST, "invalid request target\n")
}

/// One app connection to a shared listener.
struct Downstream {
    ctx: Arc<OutboundCtx>,
    src: SocketAddr,
    bind: SocketAddr,
    clients: Clients,
    /// At a gateway server: where the connection came in, and the gateway workload's inbound
    /// state (its JWT keys) for the checks at the edge. `None`: a sidecar's egress listener.
    edge: Option<(edge::Edge, Arc<crate::inbound::InboundCtx>)>,
    /// Set when an upgraded connection's splice fails: the client's connection is then reset
    /// when dropped (a gateway's; `crate::inbound_http::Abortable`).
    abort: Arc<AtomicBool>,
}

/// The client connections of one downstream connection, by [`Target::pool_key`] (the service
/// host, or the host and the endpoint a load balancer picked). Locks are held for the map
/// operation only.
#[derive(Default)]
struct Clients {
    /// Idle HTTP/1.1 connections: a request takes one, the end of its response gives it back.
    h1: Arc<Mutex<HashMap<String, Vec<H1Client>>>>,
    /// One HTTP/2 connection per service, shared by concurrent requests.
    h2: Mutex<HashMap<String, H2Client>>,
}

type H1Client = Client<http1::SendRequest<Body>>;
type H2Client = Client<http2::SendRequest<Body>>;

/// A client connection to a service, and where it goes.
#[derive(Clone)]
struct Client<S> {
    sender: S,
    far: Arc<FarEnd>,
    /// Requests sent on it (for `maxRequestsPerConnection`).
    uses: Arc<AtomicU32>,
    /// Since when it has been idle (HTTP/1.1, while kept in the idle list).
    idle_since: Instant,
}

impl<S> Client<S> {
    fn new(sender: S, far: Arc<FarEnd>) -> Client<S> {
        Client {
            sender,
            far,
            uses: Arc::default(),
            idle_since: Instant::now(),
        }
    }

    /// Count one more request on the connection; whether it may carry another after it.
    fn used(&self, target: &Target) -> bool {
        let n = self.uses.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        target
            .pool
            .as_ref()
            .and_then(|p| p.max_requests_per_connection)
            .is_none_or(|max| n < max)
    }

    /// Idle for longer than the destination's `idleTimeout`.
    fn stale(&self, target: &Target) -> bool {
        target
            .pool
            .as_ref()
            .and_then(|p| p.idle_timeout)
            .is_some_and(|t| self.idle_since.elapsed() >= t)
    }
}

/// What the access log says about the far end of a client connection.
#[derive(Debug)]
struct FarEnd {
    endpoint: SocketAddr,
    hbone: Option<SocketAddr>,
    workload: Option<String>,
    identity: Option<String>,
}

impl FarEnd {
    /// Still where the target may go (the config may have changed since it was opened).
    fn serves(&self, target: &Target) -> bool {
        if target.pinned {
            return target
                .endpoints
                .first()
                .is_some_and(|e| e.address == self.endpoint);
        }
        target.endpoints.iter().any(|e| e.address == self.endpoint)
    }
}

/// Where one request (or one attempt of it) goes: a service's endpoints in the order to try
/// them, and the protocol it speaks.
#[derive(Clone, Debug)]
struct Target {
    /// The service host: the access log's `dst.service` and the metrics' service labels.
    service: String,
    /// In the order to try; never empty when a request is sent.
    endpoints: Vec<Endpoint>,
    /// HTTP/2 with prior knowledge.
    http2: bool,
    /// The first endpoint was chosen by a load balancer: a kept connection is reused only if
    /// it goes there.
    pinned: bool,
    /// The TLS the proxy originates toward the endpoints (a DestinationRule's `tls` for the
    /// service port: docs/egress-tls.md).
    tls: Option<Arc<ward_config::origination::TlsOrigination>>,
    /// The DestinationRule's `connectionPool` for the destination: connect timeout, requests
    /// per connection, idle timeout.
    pool: Option<ward_config::traffic_policy::ConnectionPool>,
}

impl Target {
    /// Today's choice for a service no VirtualService covers: any endpoint, from a random
    /// start, a kept connection to any of them reused.
    fn any(listener: &OutboundListener) -> Target {
        let mut endpoints = listener.endpoints.clone();
        if !endpoints.is_empty() {
            let start = fastrand::usize(..endpoints.len());
            endpoints.rotate_left(start);
        }
        Target {
            service: listener.service.clone(),
            endpoints,
            http2: listener.protocol.is_http2(),
            pinned: false,
            tls: listener.tls.clone(),
            pool: None,
        }
    }

    fn pool_key(&self) -> String {
        match (self.pinned, self.endpoints.first()) {
            (true, Some(e)) => format!("{}@{}", self.service, e.address),
            _ => self.service.clone(),
        }
    }
}

impl Clients {
    fn take_h1(&self, target: &Target) -> Option<H1Client> {
        let mut idle = self.h1.lock().ok()?;
        let list = idle.get_mut(&target.pool_key())?;
        while let Some(c) = list.pop() {
            if c.sender.is_ready() && c.far.serves(target) && !c.stale(target) {
                return Some(c);
            }
        }
        None
    }

    /// Give an HTTP/1.1 connection back once its response has been read to the end (unless it
    /// closed meanwhile, or may carry no more requests). With an `idleTimeout`, a connection
    /// still idle that long later is dropped, which closes it.
    fn give_back_h1(&self, target: &Target, mut client: H1Client) {
        if !client.used(target) {
            return;
        }
        let idle = self.h1.clone();
        let service = target.pool_key();
        let idle_timeout = target.pool.as_ref().and_then(|p| p.idle_timeout);
        tokio::spawn(async move {
            if client.sender.ready().await.is_err() {
                return;
            }
            client.idle_since = Instant::now();
            let (uses, since) = (client.uses.clone(), client.idle_since);
            if let Ok(mut idle) = idle.lock() {
                let list = idle.entry(service.clone()).or_default();
                if list.len() >= MAX_IDLE_PER_SERVICE {
                    return;
                }
                list.push(client);
            }
            let Some(after) = idle_timeout else { return };
            tokio::time::sleep(after).await;
            if let Ok(mut idle) = idle.lock() {
                if let Some(list) = idle.get_mut(&service) {
                    list.retain(|c| !(Arc::ptr_eq(&c.uses, &uses) && c.idle_since == since));
                }
            }
        });
    }

    fn h2(&self, target: &Target) -> Option<H2Client> {
        let mut shared = self.h2.lock().ok()?;
        let key = target.pool_key();
        let client = shared
            .get(&key)
            .filter(|c| !c.sender.is_closed() && c.far.serves(target))
            .cloned()?;
        if !client.used(target) {
            // Its last request: later ones open another connection.
            shared.remove(&key);
        }
        Some(client)
    }
}

impl Downstream {
    async fn serve_request(&self, req: Request<Incoming>) -> Response<Body> {
        let config = self.ctx.config.borrow().clone();
        let mut log = RequestLog::new(self, &config, &req);
        let request_body = Arc::new(AtomicU64::new(0));
        let request_head = http_metrics::request_head_size(&req);
        let grpc = http_metrics::is_grpc(req.headers());
        let mut req = req.map(|b| CountingBody::new(b, request_body.clone()));
        // This hop's span: SERVER at a gateway, CLIENT for the app's outbound call.
        let hop = crate::trace::Hop::start(&config.tracing, self.edge.is_some(), req.headers_mut());
        let request_id = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        // A gateway connection that asked for an upgrade and is not switched closes after the
        // answer: its framing guard stopped following it at the upgrade head (`framing.rs`).
        let upgrade_asked = self.edge.is_some()
            && !admission::upgrade_protocols(req.version(), req.headers()).is_empty();
        let mut challenge = None;
        let answered = if self.edge.is_some() {
            let built = self.ctx.routes.get(&config);
            self.serve_at_edge(&config, &built, req, &mut log, &mut challenge)
                .await
        } else {
            self.route_and_send(&config, req, &mut log).await
        };
        let meter = RequestMeter {
            metrics: self.ctx.metrics.clone(),
            peers: self.parties(&config, &log),
            security_policy: "unknown".to_owned(),
            grpc,
            started: log.started,
            request_head,
            request_body,
            overrides: Some(config.metrics.clone()),
        };
        let mut resp = match answered {
            Ok(resp) => {
                let (flag, details) = log.answer.unwrap_or((ResponseFlag::None, "via_upstream"));
                if let Some(end) = log.upgraded.take() {
                    let code = resp.status().as_u16();
                    let span = self.span(&config, &hop, &log, code, flag, request_id);
                    tokio::spawn(async move {
                        if let Ok(end) = end.await {
                            log.upgrade_bytes = end.bytes;
                            log.error = end.error;
                        }
                        log.emit(code, flag.as_str(), details, log.error.as_deref());
                    });
                    return meter.attach_with_span(resp, flag.as_str(), span);
                }
                log.emit(
                    resp.status().as_u16(),
                    flag.as_str(),
                    details,
                    log.error.as_deref(),
                );
                let span = self.span(
                    &config,
                    &hop,
                    &log,
                    resp.status().as_u16(),
                    flag,
                    request_id,
                );
                meter.attach_with_span(resp, flag.as_str(), span)
            }
            Err(refusal) => {
                let code = refusal.status.map_or(500, |s| s.as_u16());
                log.emit(
                    code,
                    refusal.flag.as_str(),
                    &refusal.detail,
                    log.error.as_deref(),
                );
                let span = self.span(&config, &hop, &log, code, refusal.flag, request_id);
                let reply = crate::inbound_http::local_reply(&refusal, challenge);
                meter.attach_with_span(reply, refusal.flag.as_str(), span)
            }
        };
        if upgrade_asked && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            resp.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }

    /// This hop's span, if it is reported (`crate::trace`); it ends with the response body.
    fn span(
        &self,
        config: &ProxyConfig,
        hop: &crate::trace::Hop,
        log: &RequestLog,
        code: u16,
        flag: ResponseFlag,
        request_id: String,
    ) -> Option<crate::trace::OpenSpan> {
        hop.report.as_ref()?;
        let far = log.far.as_deref();
        let (kind, peer, peer_identity) = if self.edge.is_some() {
            (opentelemetry::trace::SpanKind::Server, Some(self.src), None)
        } else {
            (
                opentelemetry::trace::SpanKind::Client,
                far.map(|f| f.hbone.unwrap_or(f.endpoint)),
                far.and_then(|f| f.identity.clone()),
            )
        };
        self.ctx.tracer.open(
            config,
            hop,
            crate::trace::Finished {
                kind,
                method: log.method.clone(),
                path: log.path.clone(),
                status: code,
                response_flags: flag.as_str().to_owned(),
                authority: log.authority.clone(),
                peer,
                peer_identity,
                authz: None,
                request_id,
                protocol: log.protocol,
            },
        )
    }

    /// The metric labels of a request as the source reports it: this workload, and the
    /// service and endpoint the request went to, as far as the config names them (a `Host`
    /// that names no service is `unknown`).
    fn parties(&self, config: &ProxyConfig, log: &RequestLog) -> PeerLabels {
        let source = crate::inbound::own_meta(config);
        let far = log.far.as_deref();
        let destination = far
            .and_then(|f| f.workload.as_deref())
            .and_then(|w| config.directory.workload(w));
        let service = log
            .service
            .as_deref()
            .and_then(|h| config.directory.service(h));
        Parties {
            reporter: Reporter::Source,
            source: Some(&source),
            source_principal: Some(&self.ctx.identity),
            source_namespace: None,
            destination: destination.map(|d| &**d),
            destination_principal: far.and_then(|f| f.identity.as_deref()),
            destination_namespace: None,
            service: service.map(|s| &**s),
        }
        .labels()
    }

    async fn route_and_send(
        &self,
        config: &Arc<ProxyConfig>,
        req: Request<CountingBody>,
        log: &mut RequestLog,
    ) -> Result<Response<Body>, Refusal> {
        let built = self.ctx.routes.get(config);
        let head = RequestHead {
            method: req.method(),
            uri: req.uri(),
            version: req.version(),
            headers: req.headers(),
        };
        let plan = plan(config, &built.routes, self.bind, &head)?;
        log.authority.clone_from(&plan.authority);
        log.service = Some(plan.listener.service.clone());
        if config.mesh_routes.table().covers(&plan.listener.service) {
            let scope = routed::Scope {
                table: config.mesh_routes.table(),
                service: Some(&plan.listener.service),
                authority: &plan.authority,
                port: plan.listener.service_port,
                gateway: ward_config::istio::MESH_GATEWAY,
                scheme: "http",
            };
            return self.serve_routed(config, &built, &scope, req, log).await;
        }
        let mut target = Target::any(plan.listener);
        // The service's DestinationRule `connectionPool` and `outlierDetection` apply without a
        // VirtualService too (Envoy's cluster is the service port).
        let policy = routed::destination_policy(
            config,
            &plan.listener.service,
            None,
            plan.listener.service_port,
            target.endpoints.len(),
        );
        let healthy: Vec<Endpoint> = built
            .destinations
            .healthy(&policy, target.endpoints.iter().collect())
            .into_iter()
            .cloned()
            .collect();
        if healthy.is_empty() && !target.endpoints.is_empty() {
            return Err(log.failed(
                no_endpoints(),
                format!(
                    "every endpoint of {} is ejected by outlier detection",
                    policy.key
                ),
            ));
        }
        target.endpoints = healthy;
        target.pool = policy.pool().cloned();
        let permit = built
            .destinations
            .admit(&policy, !target.http2, None)
            .await
            .map_err(|(r, why)| log.failed(r, why))?;
        let (mut parts, body) = req.into_parts();
        upstream_head(&mut parts, &plan.authority, target.version())?;
        let req = Request::from_parts(parts, body.boxed());
        let sent = self.send(config, &target, req, log).await;
        let seen = match &sent {
            Ok(resp) => Some(crate::outlier::Outcome::Status(resp.status().as_u16())),
            Err(r)
                if r.by_policy()
                    || r.flag == ResponseFlag::NoHealthyUpstream
                    || r.fault == crate::refusal::Fault::Downstream =>
            {
                None
            }
            Err(_) => Some(crate::outlier::Outcome::LocalFailure),
        };
        built.destinations.record_try(&policy, seen, log);
        let resp = finish_response(sent?)?;
        Ok(resp.map(|b| limits::Held::new(b, permit).boxed()))
    }

    /// Send one request to `target` over a kept connection or a new one.
    async fn send(
        &self,
        config: &ProxyConfig,
        target: &Target,
        req: Request<Body>,
        log: &mut RequestLog,
    ) -> Result<Response<Incoming>, Refusal> {
        if target.http2 {
            self.send_h2(config, target, req, log).await
        } else {
            self.send_h1(config, target, req, log).await
        }
    }
}

impl Target {
    fn version(&self) -> Version {
        if self.http2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        }
    }
}

/// The service's response as the app gets it: an unasked `101` is refused, hop-by-hop headers
/// stay on their hop.
fn finish_response(mut resp: Response<Incoming>) -> Result<Response<Body>, Refusal> {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        // No upgrade was asked for (`plan` refuses them).
        return Err(Refusal::upstream(
            ResponseFlag::UpstreamProtocolError,
            "upgrade_protocol_mismatch",
        )
        .with_reply(
            StatusCode::BAD_GATEWAY,
            "upstream switched protocols unasked\n",
        ));
    }
    admission::strip_hop_by_hop(resp.headers_mut());
    Ok(resp.map(|b| b.boxed()))
}

impl Downstream {
    async fn send_h1(
        &self,
        config: &ProxyConfig,
        target: &Target,
        req: Request<Body>,
        log: &mut RequestLog,
    ) -> Result<Response<Incoming>, Refusal> {
        // A kept-alive connection the far side closed a moment ago fails before the request is
        // written; the request then goes on a new connection. A request that was (even partly)
        // written is never sent twice.
        let req = match self.clients.take_h1(target) {
            Some(mut client) => {
                log.far = Some(client.far.clone());
                match client.sender.try_send_request(req).await {
                    Ok(resp) => {
                        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                            self.clients.give_back_h1(target, client);
                        }
                        return Ok(resp);
                    }
                    Err(mut e) => match e.take_message() {
                        Some(req) => req,
                        None => return Err(log.failed(reset(), e.into_error())),
                    },
                }
            }
            None => req,
        };
        let tunnel = self.open(config, target, log).await?;
        let mut client = tunnel.http1(log).await?;
        let resp = client
            .sender
            .send_request(req)
            .await
            .map_err(|e| log.failed(send_failed(&e), e))?;
        // A switched connection is the upgrade's now, never a pooled one.
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            self.clients.give_back_h1(target, client);
        }
        Ok(resp)
    }

    async fn send_h2(
        &self,
        config: &ProxyConfig,
        target: &Target,
        req: Request<Body>,
        log: &mut RequestLog,
    ) -> Result<Response<Incoming>, Refusal> {
        let mut client = match self.clients.h2(target) {
            Some(c) => c,
            None => {
                let tunnel = self.open(config, target, log).await?;
                let client = tunnel.http2(target.pool.as_ref(), log).await?;
                if client.used(target) {
                    if let Ok(mut shared) = self.clients.h2.lock() {
                        shared.insert(target.pool_key(), client.clone());
                    }
                }
                client
            }
        };
        log.far = Some(client.far.clone());
        client
            .sender
            .ready()
            .await
            .map_err(|e| log.failed(reset(), e))?;
        client
            .sender
            .send_request(req)
            .await
            .map_err(|e| log.failed(send_failed(&e), e))
    }

    /// Open a tunnel (or a plaintext socket) to one of the target's endpoints, in its order,
    /// trying the next where that makes sense, as `outbound.rs` does for whole connections.
    /// When none can be reached, that finishes a failed outbound connection.
    async fn open(
        &self,
        config: &ProxyConfig,
        target: &Target,
        log: &mut RequestLog,
    ) -> Result<Tunnel, Refusal> {
        let endpoints: Vec<&Endpoint> = target.endpoints.iter().collect();
        let tls = target.tls.clone().map(|t| (t, true));
        let mut rec = ConnRecord::new(Direction::Outbound, self.src, self.bind);
        rec.src_workload = Some(format!(
            "{}/{}",
            config.workload.namespace, config.workload.name
        ));
        rec.src_namespace = Some(config.workload.namespace.clone());
        rec.src_identity = Some(self.ctx.identity.clone());
        rec.telemetry(config);
        rec.src_meta = Some(crate::inbound::own_meta(config));
        rec.dst_service = Some(target.service.clone());
        rec.service = crate::outbound::service_meta(config, &target.service);
        let mut result = ConnResult::new(rec, self.ctx.metrics.clone());
        let mut last = Refusal::upstream(
            ResponseFlag::NoHealthyUpstream,
            format!("service {} has no endpoints", target.service),
        );
        for ep in endpoints {
            let rec = result.record();
            crate::outbound::note_endpoint(rec, ep, config);
            let connect_timeout = target
                .pool
                .as_ref()
                .and_then(|p| p.connect_timeout)
                .unwrap_or(limits::DEFAULT_CONNECT_TIMEOUT);
            let connecting = async {
                match connect(&self.ctx, config, ep, rec).await {
                    Ok(up) => {
                        if let Upstream::Plain(s) = &up {
                            crate::tcp_pool::keepalive(s, target.pool.as_ref());
                        }
                        crate::originate::wrap(&self.ctx, tls.as_ref(), up, rec).await
                    }
                    Err(refusal) => Err(refusal),
                }
            };
            // DestinationRule `connectTimeout` (Istio's default 10s): the connection and the
            // TLS the proxy originates on it.
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
            let far = Arc::new(FarEnd {
                endpoint: ep.address,
                hbone: rec.dst_hbone_addr,
                workload: ep.workload.clone(),
                identity: rec.dst_identity.clone(),
            });
            log.far = Some(far.clone());
            match connected {
                Ok(upstream) => {
                    let counts = Counts::default();
                    let io = match upstream {
                        Upstream::Tunnel(t) => Either::Tunnel(t),
                        Upstream::Plain(s) => Either::Plain(s),
                        Upstream::Tls(s) => Either::Tls(s),
                    };
                    return Ok(Tunnel {
                        io: Counted {
                            inner: io,
                            counts: counts.clone(),
                        },
                        counts,
                        result,
                        far,
                    });
                }
                Err(refusal) => {
                    let stop = refusal.by_policy();
                    if !stop {
                        log.connect_failures.push(ep.address);
                    }
                    last = refusal;
                    if stop {
                        break;
                    }
                }
            }
        }
        let answer = if last.by_policy() {
            denied()
        } else if last.flag == ResponseFlag::NoHealthyUpstream {
            no_endpoints()
        } else {
            connect_failed()
        };
        log.error = Some(format!("{}: {}", last.flag, last.detail));
        result.finish(End::Refused(last));
        Err(answer)
    }
}

/// A tunnel (or socket) just opened to an endpoint of a service, with its connection result.
/// An HTTP handshake on it makes a [`Client`]; the connection then counts as open until the
/// task that drives it ends, when it finishes with its bytes.
struct Tunnel {
    io: Counted,
    counts: Counts,
    result: ConnResult,
    far: Arc<FarEnd>,
}

impl Tunnel {
    async fn http1(self, log: &mut RequestLog) -> Result<H1Client, Refusal> {
        let Tunnel {
            io,
            counts,
            result,
            far,
        } = self;
        match http1::Builder::new().handshake(TokioIo::new(io)).await {
            Ok((sender, conn)) => {
                // A `101` hands the connection to the upgrade (a gateway's WebSocket).
                drive(conn.with_upgrades(), result, counts);
                Ok(Client::new(sender, far))
            }
            Err(e) => Err(handshake_failed(result, e, log)),
        }
    }

    async fn http2(
        self,
        pool: Option<&ward_config::traffic_policy::ConnectionPool>,
        log: &mut RequestLog,
    ) -> Result<H2Client, Refusal> {
        let Tunnel {
            io,
            counts,
            result,
            far,
        } = self;
        let mut builder = http2::Builder::new(TokioExecutor::new());
        // `http.http2KeepAlive`: a PING every `interval`; no answer within `timeout` closes the
        // connection (Envoy's `connection_keepalive`).
        if let Some(k) = pool.and_then(|p| p.http2_keep_alive.as_ref()) {
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .keep_alive_interval(k.interval)
                .keep_alive_timeout(k.timeout)
                .keep_alive_while_idle(true);
        }
        match builder.handshake(TokioIo::new(io)).await {
            Ok((sender, conn)) => {
                drive(conn, result, counts);
                Ok(Client::new(sender, far))
            }
            Err(e) => Err(handshake_failed(result, e, log)),
        }
    }
}

fn handshake_failed(result: ConnResult, e: hyper::Error, log: &mut RequestLog) -> Refusal {
    result.finish(End::Refused(Refusal::upstream(
        ResponseFlag::UpstreamFailure,
        e.to_string(),
    )));
    log.failed(connect_failed(), e)
}

/// Count a client connection open and drive it on its own task; when it ends, finish it with
/// its bytes.
fn drive<C>(conn: C, mut result: ConnResult, counts: Counts)
where
    C: std::future::Future<Output = Result<(), hyper::Error>> + Send + 'static,
{
    result.opened();
    tokio::spawn(async move {
        let _ = conn.await;
        result.finish(End::Served {
            sent: counts.read.load(Ordering::Relaxed),
            recv: counts.written.load(Ordering::Relaxed),
        });
    });
}

/// Bytes through a client connection, both ways.
#[derive(Clone, Default)]
struct Counts {
    read: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
}

/// A tunnel or a plaintext socket.
enum Either {
    Tunnel(ward_hbone::H2Stream),
    Plain(TcpStream),
    Tls(Box<crate::originate::Originated>),
}

impl crate::splice::Abort for Counted {
    fn abort(&mut self) {
        match &mut self.inner {
            Either::Tunnel(t) => t.abort(),
            Either::Plain(s) => s.abort(),
            Either::Tls(s) => s.abort(),
        }
    }
}

impl crate::splice::Chunked for Counted {}

/// A stream that counts its bytes.
struct Counted {
    inner: Either,
    counts: Counts,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = match &mut self.inner {
            Either::Tunnel(t) => Pin::new(t).poll_read(cx, buf),
            Either::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Either::Tls(s) => Pin::new(s).poll_read(cx, buf),
        };
        let n = buf.filled().len().saturating_sub(before);
        self.counts.read.fetch_add(n as u64, Ordering::Relaxed);
        polled
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = match &mut self.inner {
            Either::Tunnel(t) => Pin::new(t).poll_write(cx, buf),
            Either::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Either::Tls(s) => Pin::new(s).poll_write(cx, buf),
        };
        if let Poll::Ready(Ok(n)) = &polled {
            self.counts.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Either::Tunnel(t) => Pin::new(t).poll_flush(cx),
            Either::Plain(s) => Pin::new(s).poll_flush(cx),
            Either::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Either::Tunnel(t) => Pin::new(t).poll_shutdown(cx),
            Either::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Either::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// One request's access-log record: Envoy's key names for the request, ztunnel's for the two
/// ends (docs/http.md, "Access log").
struct RequestLog {
    src: SocketAddr,
    workload: String,
    identity: String,
    method: String,
    path: String,
    protocol: &'static str,
    authority: String,
    service: Option<String>,
    far: Option<Arc<FarEnd>>,
    /// What failed, when the answer is a refusal for a failure.
    error: Option<String>,
    /// The flag and details of an answer that is not the upstream's own (a redirect, a direct
    /// response, a fault); `None`: `-` and `via_upstream`.
    answer: Option<(ResponseFlag, &'static str)>,
    /// Endpoints that could not be connected to (another was then tried): local-origin
    /// failures for their outlier detector, taken when the try's outcome is recorded.
    connect_failures: Vec<SocketAddr>,
    /// The Gateway (`ns/name`) whose server took the request.
    gateway: Option<String>,
    /// The JWT principal the gateway verified.
    request_principal: Option<String>,
    /// At a gateway, a mesh client's verified SPIFFE id (the request came over HBONE).
    source_principal: Option<String>,
    /// Its namespace.
    source_namespace: Option<String>,
    /// A gateway route's destination that is no registered service: logged as
    /// `BlackHoleCluster`, with the host in `requested.host`.
    blocked_host: Option<String>,
    started: Instant,
    /// Which records are written (Telemetry `accessLogging`); `None`: never (a mirror's copy).
    logging: Option<Arc<ward_config::access_log_policy::AccessLogPolicy>>,
    /// The request headers the filter reads, kept from the request (docs/http.md).
    filter_headers: Vec<(String, String)>,
    /// A gateway's upgraded (spliced) request: its record is written when the splice ends,
    /// with the bytes it carried, as Envoy logs an upgraded stream at its end.
    upgraded: Option<tokio::sync::oneshot::Receiver<UpgradeEnd>>,
    /// The bytes an upgraded connection carried: (from the client, to the client).
    upgrade_bytes: Option<(u64, u64)>,
}

/// How a gateway's upgraded connection ended: bytes from and to the client (`None` when a side
/// failed), and the failure.
struct UpgradeEnd {
    bytes: Option<(u64, u64)>,
    error: Option<String>,
}

impl RequestLog {
    /// Note `error` as the cause of `refusal`.
    fn failed(&mut self, refusal: Refusal, error: impl std::fmt::Display) -> Refusal {
        self.error = Some(error.to_string());
        refusal
    }

    /// A record for a request Ward makes itself (a mirror's copy), never emitted.
    fn detached(down: &Downstream, config: &ProxyConfig) -> RequestLog {
        RequestLog {
            src: down.src,
            workload: format!("{}/{}", config.workload.namespace, config.workload.name),
            identity: down.ctx.identity.clone(),
            method: String::new(),
            path: String::new(),
            protocol: "HTTP/1.1",
            authority: String::new(),
            service: None,
            far: None,
            error: None,
            answer: None,
            connect_failures: Vec::new(),
            gateway: None,
            request_principal: None,
            source_principal: None,
            source_namespace: None,
            blocked_host: None,
            started: Instant::now(),
            logging: None,
            filter_headers: Vec::new(),
            upgraded: None,
            upgrade_bytes: None,
        }
    }

    fn new(down: &Downstream, config: &ProxyConfig, req: &Request<Incoming>) -> RequestLog {
        RequestLog {
            src: down.src,
            workload: format!("{}/{}", config.workload.namespace, config.workload.name),
            identity: down.ctx.identity.clone(),
            method: req.method().as_str().to_owned(),
            // The path only: a query may hold a token.
            path: req.uri().path().to_owned(),
            protocol: crate::inbound_http::protocol_name(req.version()),
            // What the app sent, until admission says what it is.
            authority: req
                .uri()
                .authority()
                .map(|a| a.as_str().to_owned())
                .or_else(|| {
                    req.headers()
                        .get(HOST)
                        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
                })
                .unwrap_or_default(),
            service: None,
            far: None,
            error: None,
            answer: None,
            connect_failures: Vec::new(),
            gateway: None,
            request_principal: None,
            source_principal: None,
            source_namespace: None,
            blocked_host: None,
            started: Instant::now(),
            filter_headers: crate::access_log::filter_headers(
                &config.access_logging,
                req.headers(),
            ),
            logging: Some(config.access_logging.clone()),
            upgraded: None,
            upgrade_bytes: None,
        }
    }

    fn emit(&self, code: u16, flags: &str, details: &str, error: Option<&str>) {
        // A gateway's requests are its SERVER side; a sidecar's outbound ones its CLIENT side.
        let logged = self.logging.as_ref().is_some_and(|l| {
            let rule = if self.gateway.is_some() {
                &l.server
            } else {
                &l.client
            };
            let headers = crate::access_log::FilterHeaders(&self.filter_headers);
            rule.logs_record(&ward_config::access_log_policy::Record {
                code: Some(code),
                duration: Some(self.started.elapsed()),
                method: Some(&self.method),
                url_path: Some(&self.path),
                host: Some(&self.authority),
                headers: Some(&headers),
                // The downstream's mTLS: a gateway's caller, verified by its listener's TLS
                // (`source_principal`); a sidecar's own app never speaks mTLS to it.
                mtls: Some(self.source_principal.is_some()),
                source_principal: self.source_principal.as_deref(),
            })
        });
        if !logged {
            return;
        }
        let far = self.far.as_deref();
        tracing::info!(
            target: "access",
            direction = if self.gateway.is_some() { "gateway" } else { "outbound" },
            gateway = self.gateway.as_deref(),
            request_principal = self.request_principal.as_deref(),
            source.principal = self.source_principal.as_deref(),
            source.namespace = self.source_namespace.as_deref(),
            method = %self.method,
            path = %self.path,
            protocol = self.protocol,
            authority = (!self.authority.is_empty()).then_some(self.authority.as_str()),
            response_code = code,
            response_flags = flags,
            response_code_details = details,
            src.addr = %self.src,
            src.workload = %self.workload,
            src.identity = %self.identity,
            dst.service = if self.blocked_host.is_some() {
                Some("BlackHoleCluster")
            } else {
                self.service.as_deref()
            },
            upstream_cluster = self.blocked_host.as_ref().map(|_| "BlackHoleCluster"),
            requested.host = self.blocked_host.as_deref(),
            dst.addr = far.map(|f| f.endpoint.to_string()).as_deref(),
            dst.hbone_addr = far.and_then(|f| f.hbone).map(|a| a.to_string()).as_deref(),
            dst.workload = far.and_then(|f| f.workload.as_deref()),
            dst.identity = far.and_then(|f| f.identity.as_deref()),
            error,
            bytes_received = self.upgrade_bytes.map(|b| b.0),
            bytes_sent = self.upgrade_bytes.map(|b| b.1),
            duration_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            "request complete"
        );
    }
}

mod edge;
mod limits;
mod routed;

pub(crate) use edge::{serve as serve_edge, Edge};

#[cfg(test)]
mod tests {
    use super::*;
    use ward_config::{Protocol, Transport, WorkloadInfo};

    const BIND: &str = "127.9.0.1:8080";

    fn listener(service: &str, protocol: Protocol, endpoints: &[&str]) -> OutboundListener {
        OutboundListener {
            bind: BIND.parse().unwrap(),
            service: service.to_owned(),
            service_port: 8080,
            protocol,
            endpoints: endpoints
                .iter()
                .map(|a| Endpoint {
                    address: a.parse().unwrap(),
                    workload: None,
                    identity: None,
                    transport: Transport::Hbone,
                })
                .collect(),
            tls: None,
        }
    }

    /// A client in namespace `app` whose listener :8080 serves `a` (HTTP, one endpoint) and
    /// `b` (HTTP2, no endpoints).
    fn config() -> ProxyConfig {
        ProxyConfig {
            workload: WorkloadInfo {
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
            outbound: vec![
                listener(
                    "a.app.svc.cluster.local",
                    Protocol::Http,
                    &["127.9.0.10:8080"],
                ),
                listener("b.app.svc.cluster.local", Protocol::Http2, &[]),
            ],
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
        }
    }

    fn request(
        method: &str,
        target: &str,
        version: Version,
        headers: &[(&str, &str)],
    ) -> Request<()> {
        let mut b = Request::builder()
            .method(method)
            .uri(target)
            .version(version);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn requests_that_see_a_config_at_once_share_its_breakers_and_the_next_config_keeps_them() {
        // A burst's first requests all meet an empty cache: they must share one build, or
        // each gets its own circuit-breaker counts and the limits let the whole burst through.
        let cache = Arc::new(RouteCache::default());
        let first = Arc::new(config());
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let builds: Vec<Arc<Built>> = (0..8)
            .map(|_| {
                let (cache, first, barrier) = (cache.clone(), first.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    cache.get(&first)
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        for b in &builds[1..] {
            assert!(Arc::ptr_eq(b, &builds[0]));
        }
        // A pushed config gets new tables and the same breaker and balancing state.
        let second = Arc::new(config());
        let next = cache.get(&second);
        assert!(!Arc::ptr_eq(&next, &builds[0]));
        assert!(Arc::ptr_eq(&next.config, &second));
        assert!(Arc::ptr_eq(&next.destinations, &builds[0].destinations));
        assert!(Arc::ptr_eq(&next.balance, &builds[0].balance));
        assert!(Arc::ptr_eq(&cache.get(&second), &next));
    }

    #[test]
    fn a_gateway_admits_upgrades_a_sidecar_listener_refuses_them() {
        let admit = |req: &Request<()>, upgrades: bool| {
            admit_head(
                &RequestHead {
                    method: req.method(),
                    uri: req.uri(),
                    version: req.version(),
                    headers: req.headers(),
                },
                upgrades,
            )
            .map_err(|r| (r.status.map(|s| s.as_u16()), r.detail))
        };
        let ws = request(
            "GET",
            "/chat",
            Version::HTTP_11,
            &[
                ("host", "a.example"),
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
            ],
        );
        assert_eq!(admit(&ws, true), Ok("a.example".to_owned()));
        assert_eq!(
            admit(&ws, false),
            Err((Some(403), "upgrade_failed".to_owned()))
        );
        // CONNECT and a bad authority stay refused at a gateway.
        let connect = request("CONNECT", "a.example:443", Version::HTTP_11, &[]);
        assert_eq!(
            admit(&connect, true),
            Err((Some(405), "connect_not_allowed".to_owned()))
        );
        let two_hosts = request(
            "GET",
            "/",
            Version::HTTP_11,
            &[
                ("host", "a"),
                ("host", "b"),
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
            ],
        );
        assert_eq!(admit(&two_hosts, true).map_err(|e| e.0), Err(Some(400)));
    }

    #[test]
    fn requests_go_where_their_authority_says_or_get_a_local_answer() {
        const HTTP_11: Version = Version::HTTP_11;
        const HTTP_2: Version = Version::HTTP_2;
        let cfg = config();
        let routes = EgressRoutes::new(&cfg);
        let ok = |service: &str| Ok(service.to_owned());
        let local = |status: u16, flags: &str, details: &str| {
            Err((status, flags.to_owned(), details.to_owned()))
        };
        let cases = [
            (
                request("GET", "/", HTTP_11, &[("host", "a.app.svc.cluster.local")]),
                ok("a.app.svc.cluster.local"),
            ),
            (
                request("GET", "/", HTTP_11, &[("host", "A:8080")]),
                ok("a.app.svc.cluster.local"),
            ),
            (
                request("GET", "http://a.app/x", HTTP_11, &[("host", "a.app")]),
                ok("a.app.svc.cluster.local"),
            ),
            (
                request("GET", "http://a.app.svc/x", HTTP_2, &[]),
                ok("a.app.svc.cluster.local"),
            ),
            // An h2c upgrade is served as the plain HTTP/1.1 request it also is.
            (
                request(
                    "GET",
                    "/",
                    HTTP_11,
                    &[
                        ("host", "a"),
                        ("connection", "Upgrade, HTTP2-Settings"),
                        ("upgrade", "h2c"),
                        ("http2-settings", "AAMAAABkAAQAAP__"),
                    ],
                ),
                ok("a.app.svc.cluster.local"),
            ),
            (
                request("GET", "/", HTTP_11, &[]),
                local(400, "-", "missing_host"),
            ),
            (
                request("GET", "/", HTTP_11, &[("host", "a"), ("host", "b")]),
                local(400, "-", "multiple_host_headers"),
            ),
            (
                request("GET", "http://a.app/", HTTP_11, &[("host", "b.app")]),
                local(400, "-", "host_authority_mismatch"),
            ),
            (
                request("GET", "/", HTTP_11, &[("host", "a b")]),
                local(400, "-", "invalid_authority"),
            ),
            (
                request("GET", "/", HTTP_11, &[("host", "nope.example.com")]),
                local(404, "NR", "route_not_found"),
            ),
            (
                request("GET", "/", HTTP_11, &[("host", "a:9090")]),
                local(404, "NR", "route_not_found"),
            ),
            (
                request("GET", "/", HTTP_11, &[("host", "127.9.0.1:8080")]),
                local(404, "NR", "route_not_found"),
            ),
            (
                request("GET", "/", HTTP_11, &[("host", "b")]),
                local(503, "UH", "no_healthy_upstream"),
            ),
            (
                request("CONNECT", "a:8080", HTTP_11, &[("host", "a:8080")]),
                local(405, "-", "connect_not_allowed"),
            ),
            (
                request(
                    "GET",
                    "/chat",
                    HTTP_11,
                    &[
                        ("host", "a"),
                        ("connection", "upgrade"),
                        ("upgrade", "websocket"),
                    ],
                ),
                local(403, "-", "upgrade_failed"),
            ),
        ];
        for (req, want) in cases {
            let head = RequestHead {
                method: req.method(),
                uri: req.uri(),
                version: req.version(),
                headers: req.headers(),
            };
            let got = plan(&cfg, &routes, BIND.parse().unwrap(), &head)
                .map(|p| p.listener.service.clone())
                .map_err(|l| {
                    (
                        l.status.map_or(0, |s| s.as_u16()),
                        l.flag.as_str().to_owned(),
                        l.detail,
                    )
                });
            assert_eq!(got, want, "{req:?}");
        }
    }

    #[test]
    fn planned_authority_is_forwarded_as_it_came() {
        let cfg = config();
        let routes = EgressRoutes::new(&cfg);
        let req = request("GET", "/", Version::HTTP_11, &[("host", "A.App:8080")]);
        let head = RequestHead {
            method: req.method(),
            uri: req.uri(),
            version: req.version(),
            headers: req.headers(),
        };
        let plan = plan(&cfg, &routes, BIND.parse().unwrap(), &head).unwrap();
        assert_eq!(plan.authority, "A.App:8080");
    }

    fn upstream(
        target: &str,
        from: Version,
        headers: &[(&str, &str)],
        to: Version,
    ) -> http::request::Parts {
        let (mut parts, ()) = request("POST", target, from, headers).into_parts();
        upstream_head(&mut parts, "a.app:8080", to).unwrap();
        parts
    }

    #[test]
    fn upstream_heads_carry_the_authority_for_the_services_protocol() {
        // h2c from the app, HTTP/1.1 to the service: origin form and `Host`.
        let p = upstream(
            "http://a.app:8080/x?y=1",
            Version::HTTP_2,
            &[],
            Version::HTTP_11,
        );
        assert_eq!(p.uri, "/x?y=1");
        assert_eq!(p.headers[HOST], "a.app:8080");
        assert_eq!(p.version, Version::HTTP_11);
        // HTTP/1.1 from the app, HTTP/2 to the service: `:authority`, no `Host`.
        let p = upstream(
            "/x?y=1",
            Version::HTTP_11,
            &[("host", "a.app:8080")],
            Version::HTTP_2,
        );
        assert_eq!(p.uri, "http://a.app:8080/x?y=1");
        assert!(p.headers.get(HOST).is_none());
        assert_eq!(p.version, Version::HTTP_2);
    }

    #[test]
    fn hop_by_hop_headers_stay_on_their_hop_but_trailers_are_still_wanted() {
        let p = upstream(
            "/",
            Version::HTTP_11,
            &[
                ("host", "a.app:8080"),
                ("connection", "keep-alive, x-private"),
                ("x-private", "1"),
                ("keep-alive", "timeout=5"),
                ("te", "gzip, trailers"),
                ("upgrade", "h2c"),
                ("x-kept", "2"),
            ],
            Version::HTTP_11,
        );
        let names: Vec<&str> = p.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept", "host", "te"], "{:?}", p.headers);
        assert_eq!(p.headers[TE], "trailers");
        let p = upstream("/", Version::HTTP_11, &[("te", "gzip")], Version::HTTP_2);
        assert!(p.headers.get(TE).is_none());
    }
}
