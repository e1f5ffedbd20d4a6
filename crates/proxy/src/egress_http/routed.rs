//! VirtualService routing on the sidecar's outbound HTTP side (the `mesh` gateway): a request
//! for a service a VirtualService covers is decided by the compiled table
//! (`ward_config::http_routing`, pure), then carried out here: a local answer (no route,
//! redirect, `directResponse`, fault abort, CORS preflight), or a forward to the route's
//! destination (its subset and load balancer from the DestinationRule,
//! `ward_config::traffic_policy`) with rewrites, header changes, the fault delay, mirrors,
//! the route's timeout and its retries. docs/routing.md says what is served and how.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Body as _;
use ward_config::http_routing::{
    CorsAnswer, Decision, HeaderOps, HttpRoutes, RequestFacts, Retries, Rolls, WeightedDestination,
};
use ward_config::istio::MESH_GATEWAY;
use ward_config::origination::TlsOrigination;
use ward_config::traffic_policy::{self, DestinationPolicy, LoadBalancer, Pick};
use ward_config::{Endpoint, ProxyConfig};

use super::limits::{Held, Policy};
use super::{
    finish_response, no_route, upstream_head, Body, Built, Clients, Downstream, RequestLog, Target,
    UpgradeEnd,
};
use crate::admission;
use crate::http_metrics::CountingBody;
use crate::outlier::Outcome;
use crate::refusal::{Refusal, ResponseFlag};
use crate::splice::{splice, Abort, SpliceEnd};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::oneshot;

/// The largest request body kept in memory so that a retry or a mirror can send it again. A
/// larger body, or one of unknown length, is streamed once: no retry, no mirror.
pub(super) const REPLAY_LIMIT: u64 = 64 * 1024;

/// Envoy's default base interval between retries.
const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);

/// Load-balancing state of one config: round-robin turns per destination, requests in flight
/// per endpoint. Locks are held for the map operation only.
#[derive(Default)]
pub(super) struct Balance {
    turns: Mutex<HashMap<String, u64>>,
    active: Arc<Mutex<HashMap<SocketAddr, u64>>>,
}

/// One request in flight to an endpoint, counted for `LEAST_REQUEST` until dropped.
struct InFlight {
    active: Arc<Mutex<HashMap<SocketAddr, u64>>>,
    addr: SocketAddr,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut active) = self.active.lock() {
            if let Some(n) = active.get_mut(&self.addr) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

impl Balance {
    fn turn(&self, key: &str) -> u64 {
        let Ok(mut turns) = self.turns.lock() else {
            return 0;
        };
        let n = turns.entry(key.to_owned()).or_default();
        *n = n.wrapping_add(1);
        *n
    }

    fn active(&self, addr: SocketAddr) -> u64 {
        self.active
            .lock()
            .ok()
            .and_then(|a| a.get(&addr).copied())
            .unwrap_or(0)
    }

    fn start(&self, addr: SocketAddr) -> InFlight {
        if let Ok(mut active) = self.active.lock() {
            *active.entry(addr).or_default() += 1;
        }
        InFlight {
            active: self.active.clone(),
            addr,
        }
    }
}

/// A destination that cannot be resolved: the answer, and why (for the access log's `error`).
pub(super) type Unresolved = (Refusal, String);

fn no_cluster(why: String) -> Unresolved {
    (
        Refusal::internal(ResponseFlag::NoClusterFound, "cluster_not_found")
            .with_reply(StatusCode::SERVICE_UNAVAILABLE, "no cluster found\n"),
        why,
    )
}

fn timed_out(details: &'static str) -> Refusal {
    Refusal::upstream(ResponseFlag::UpstreamRequestTimeout, details)
        .with_reply(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")
}

/// Where a destination's requests may go: the service, the endpoints of its port (and subset),
/// how to pick one, and the protocol. Pure. A host that is no service the proxy sees, a port
/// the service does not have, or an unknown subset: 503 `NC`; no endpoint: 503 `UH`.
/// A destination's endpoints (in the subset), load balancer, HTTP/2, the TLS the proxy
/// originates toward them, and the service port.
pub(super) type Resolved<'c> = (
    Vec<&'c Endpoint>,
    LoadBalancer,
    bool,
    Option<Arc<TlsOrigination>>,
    u16,
);

pub(super) fn resolve<'c>(
    config: &'c ProxyConfig,
    destination: &WeightedDestination,
    request_port: u16,
) -> Result<Resolved<'c>, Unresolved> {
    let host = destination.host.as_str();
    let Some(service) = config.services.get(host) else {
        return Err(no_cluster(format!(
            "destination host {host} is not a service this workload sees"
        )));
    };
    let number = match (destination.port, service.ports.as_slice()) {
        (Some(p), _) => p,
        (None, [only]) => only.number,
        (None, _) => request_port,
    };
    let Some(port) = service.ports.iter().find(|p| p.number == number) else {
        return Err(no_cluster(format!(
            "destination port {number} is not a port of {host}"
        )));
    };
    let policy: Option<&DestinationPolicy> = config.mesh_routes.destination(host);
    let (endpoints, lb) =
        DestinationPolicy::endpoints(policy, host, destination.subset.as_deref(), &port.endpoints)
            .map_err(|e| no_cluster(e.to_string()))?;
    if endpoints.is_empty() {
        return Err((
            super::no_endpoints(),
            format!(
                "no endpoint of {host}{}",
                destination
                    .subset
                    .as_deref()
                    .map(|s| format!(" in subset {s}"))
                    .unwrap_or_default()
            ),
        ));
    }
    // A subset's own `tls` for this port overrides the port's (crates/config/src/origination.rs,
    // `subset_origination`).
    let tls = destination
        .subset
        .as_deref()
        .and_then(|s| policy?.subsets.get(s)?.tls.get(&number).cloned())
        .unwrap_or_else(|| port.tls.clone());
    Ok((endpoints, lb, port.protocol.is_http2(), tls, number))
}

/// The `connectionPool` and `outlierDetection` that apply to requests to `host` (its `subset`)
/// on service port `port`, and the state key of that destination (Envoy's cluster).
pub(super) fn destination_policy(
    config: &ProxyConfig,
    host: &str,
    subset: Option<&str>,
    port: u16,
    endpoints: usize,
) -> Policy {
    let rule = config.mesh_routes.destination(host);
    Policy {
        key: format!("{host}|{}|{port}", subset.unwrap_or("")),
        resilience: DestinationPolicy::resilience(rule, subset, port),
        endpoints,
    }
}

/// Apply one direction's header changes: remove, then set, then add (Envoy's order).
pub(super) fn apply(headers: &mut HeaderMap, ops: &HeaderOps) {
    for name in &ops.remove {
        if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
            headers.remove(n);
        }
    }
    let pairs = |list: &[(String, String)]| -> Vec<(HeaderName, HeaderValue)> {
        list.iter()
            .filter_map(|(n, v)| {
                Some((
                    HeaderName::from_bytes(n.as_bytes()).ok()?,
                    HeaderValue::from_str(v).ok()?,
                ))
            })
            .collect()
    };
    for (n, v) in pairs(&ops.set) {
        headers.insert(n, v);
    }
    for (n, v) in pairs(&ops.add) {
        headers.append(n, v);
    }
}

/// Whether a retry condition list asks to retry a response with this status and headers.
pub(super) fn retries_response(retries: &Retries, status: StatusCode, headers: &HeaderMap) -> bool {
    let code = status.as_u16();
    let on = |c: &str| retries.retry_on.iter().any(|r| r == c);
    let grpc = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok());
    (on("5xx") && code >= 500)
        || (on("gateway-error") && matches!(code, 502..=504))
        || (on("retriable-4xx") && code == 409)
        || (on("retriable-status-codes") && retries.retriable_status_codes.contains(&code))
        || grpc.is_some_and(|g| {
            (on("cancelled") && g == 1)
                || (on("deadline-exceeded") && g == 4)
                || (on("resource-exhausted") && g == 8)
                || (on("internal") && g == 13)
                || (on("unavailable") && g == 14)
        })
}

/// Whether a retry condition list asks to retry after this failure (no response): a connect
/// failure under `connect-failure`; any failure to get a response under `reset`, `5xx` or
/// `gateway-error` (Envoy counts connect failures among resets). A policy refusal is final.
pub(super) fn retries_failure(retries: &Retries, refusal: &Refusal) -> bool {
    if refusal.by_policy() {
        return false;
    }
    let on = |c: &str| retries.retry_on.iter().any(|r| r == c);
    let connect = matches!(
        refusal.flag,
        ResponseFlag::UpstreamFailure | ResponseFlag::Connect | ResponseFlag::NoHealthyUpstream
    );
    (connect && on("connect-failure")) || on("reset") || on("5xx") || on("gateway-error")
}

/// Whether a per-try timeout is retried: `5xx`, `gateway-error` and `reset` cover an upstream
/// that does not answer in time.
fn retries_timeout(retries: &Retries) -> bool {
    retries
        .retry_on
        .iter()
        .any(|r| matches!(r.as_str(), "5xx" | "gateway-error" | "reset"))
}

/// Where and how long the attempts of one request may go.
#[derive(Clone, Copy)]
struct Tries<'a> {
    target: &'a Target,
    policy: &'a Policy,
    retries: &'a Retries,
    /// The route's `timeout`, from when the request was routed.
    deadline: Option<Instant>,
}

/// The request body, kept whole when small enough to send again.
enum Payload {
    Kept(Bytes),
    Streamed(Option<CountingBody>),
}

impl Payload {
    async fn read(body: CountingBody) -> Result<Payload, Unresolved> {
        let size = body.size_hint();
        let small = size.upper().is_some_and(|u| u <= REPLAY_LIMIT);
        if !small {
            return Ok(Payload::Streamed(Some(body)));
        }
        match body.collect().await {
            Ok(all) => Ok(Payload::Kept(all.to_bytes())),
            Err(e) => Err((
                Refusal::downstream(ResponseFlag::None, "downstream_body_error")
                    .with_reply(StatusCode::BAD_REQUEST, "request body could not be read\n"),
                e.to_string(),
            )),
        }
    }

    /// The body for one more attempt; `None` when a streamed body was sent already.
    fn next(&mut self) -> Option<Body> {
        match self {
            Payload::Kept(b) => Some(Full::new(b.clone()).map_err(|never| match never {}).boxed()),
            Payload::Streamed(b) => b.take().map(|b| b.boxed()),
        }
    }
}

/// A request head to send, possibly several times.
#[derive(Clone)]
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Head {
    fn request(&self, body: Body) -> Request<Body> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// An empty body.
pub(super) fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

fn local(status: u16, headers: &[(&str, String)], body: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body).map_err(|never| match never {}).boxed());
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (n, v) in headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(n.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            r.headers_mut().append(n, v);
        }
    }
    r
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Which routing table decides a request and what it knows of where the request came in.
pub(super) struct Scope<'a> {
    /// The compiled routes.
    pub(super) table: &'a HttpRoutes,
    /// On a sidecar, the service whose virtual host decides (Istio attaches a VirtualService
    /// to the service's virtual host); at a gateway, `None`: the authority picks the host.
    pub(super) service: Option<&'a str>,
    /// The request's authority as admitted.
    pub(super) authority: &'a str,
    /// The port the request arrived on (the service port, or the gateway server's port).
    pub(super) port: u16,
    /// `mesh`, or the deciding Gateway's `ns/name`.
    pub(super) gateway: &'a str,
    /// `http` or `https`.
    pub(super) scheme: &'a str,
}

/// The answer to an upgrade that cannot be carried to its destination (Envoy's detail).
fn upgrade_failed() -> Refusal {
    Refusal::downstream(ResponseFlag::None, "upgrade_failed")
        .with_reply(
            StatusCode::FORBIDDEN,
            "upgrades are not served for this destination\n",
        )
        .closing(Version::HTTP_11)
}

/// After the backend's `101`, splice the client's upgraded connection to the backend's on a
/// task of its own; how it ended goes to `end` (the request's access-log record). When a side
/// fails, both are reset: the client's through `abort` (its connection's switch), the
/// backend's tunnel directly.
fn splice_upgrade(
    down: OnUpgrade,
    up: OnUpgrade,
    abort: Arc<AtomicBool>,
    end: oneshot::Sender<UpgradeEnd>,
) {
    tokio::spawn(async move {
        let (down, up) = match (down.await, up.await) {
            (Ok(d), Ok(u)) => (d, u),
            (d, _) => {
                let side = if d.is_err() { "client" } else { "backend" };
                let _ = end.send(UpgradeEnd {
                    bytes: None,
                    error: Some(format!(
                        "the {side}'s upgraded connection went before the splice"
                    )),
                });
                return;
            }
        };
        let mut d = Upgraded(TokioIo::new(down), abort);
        // The backend's side is the client connection's own stream (`super::Counted`), so it
        // can be reset; bytes the backend sent right after its 101 go first.
        let ended = match up.downcast::<TokioIo<super::Counted>>() {
            Ok(parts) => {
                if !parts.read_buf.is_empty() && d.write_all(&parts.read_buf).await.is_err() {
                    d.abort();
                    let _ = end.send(UpgradeEnd {
                        bytes: None,
                        error: Some("the client's upgraded connection failed".to_owned()),
                    });
                    return;
                }
                let mut u = parts.io.into_inner();
                splice(&mut d, &mut u, None).await
            }
            Err(up) => {
                let mut u = Upgraded(TokioIo::new(up), Arc::default());
                splice(&mut d, &mut u, None).await
            }
        };
        let ended = match ended {
            SpliceEnd::Done(received, sent) => UpgradeEnd {
                bytes: Some((received, sent)),
                error: None,
            },
            SpliceEnd::Failed(side, e) => UpgradeEnd {
                bytes: None,
                error: Some(format!("{side:?} side of the upgraded connection: {e}")),
            },
            SpliceEnd::Closed(r) => UpgradeEnd {
                bytes: None,
                error: Some(r.detail),
            },
        };
        let _ = end.send(ended);
    });
}

/// One side of a gateway's upgraded connection, and the switch that makes the connection under
/// it reset when it is dropped.
struct Upgraded(TokioIo<hyper::upgrade::Upgraded>, Arc<AtomicBool>);

impl crate::splice::Chunked for Upgraded {}

impl Abort for Upgraded {
    fn abort(&mut self) {
        self.1.store(true, Ordering::Relaxed);
    }
}

impl AsyncRead for Upgraded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
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

/// The source labels of a request at a gateway: none (the client is outside the mesh).
static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

impl Downstream {
    /// Serve a request a VirtualService table decides (the module doc says how).
    pub(super) async fn serve_routed(
        &self,
        config: &Arc<ProxyConfig>,
        built: &Built,
        scope: &Scope<'_>,
        req: Request<CountingBody>,
        log: &mut RequestLog,
    ) -> Result<Response<Body>, Refusal> {
        let mut req = req;
        // An upgrade at a gateway server (WebSocket): routed and checked like any request,
        // sent over HTTP/1.1 with its `Upgrade`, and spliced when the backend answers `101`.
        let upgrade = match self.edge {
            Some(_) => admission::upgrade_protocols(req.version(), req.headers()),
            None => Vec::new(),
        };
        let downstream_upgrade = (!upgrade.is_empty()).then(|| hyper::upgrade::on(&mut req));
        let headers: Vec<(String, String)> = req
            .headers()
            .iter()
            .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        let method = req.method().as_str().to_owned();
        let path_and_query = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let mesh = scope.gateway == MESH_GATEWAY;
        let facts = RequestFacts {
            method: &method,
            scheme: scope.scheme,
            authority: scope.authority,
            path_and_query: &path_and_query,
            headers: &headers,
            port: scope.port,
            gateway: scope.gateway,
            source_labels: if mesh {
                &config.workload.labels
            } else {
                &NO_LABELS
            },
            source_namespace: mesh.then_some(config.workload.namespace.as_str()),
        };
        let rolls = Rolls {
            weight: fastrand::u32(..),
            delay: fastrand::f64() * 100.0,
            abort: fastrand::f64() * 100.0,
            mirror: fastrand::f64() * 100.0,
        };
        let decision = match scope.service {
            Some(service) => scope.table.decide_for(service, &facts, rolls),
            None => scope.table.decide(&facts, rolls),
        };
        let forward = match decision {
            Decision::NoRoute => return Err(no_route()),
            Decision::Redirect {
                status, location, ..
            } => {
                log.answer = Some((ResponseFlag::None, "redirect"));
                return Ok(local(status, &[("location", location)], Bytes::new()));
            }
            Decision::Respond {
                abort,
                status,
                body,
                ..
            } => {
                log.answer = Some(if abort {
                    (ResponseFlag::FaultInjected, "fault_filter_abort")
                } else {
                    (ResponseFlag::None, "direct_response")
                });
                return Ok(local(status, &[], Bytes::from(body)));
            }
            Decision::Forward(forward) => forward,
        };
        let cors = forward.route.cors.as_ref().map_or(CorsAnswer::Pass, |c| {
            c.answer(
                &method,
                header(&headers, "origin"),
                header(&headers, "access-control-request-method"),
            )
        });
        let cors_headers = match cors {
            CorsAnswer::Preflight(h) => {
                log.answer = Some((ResponseFlag::None, "cors_preflight"));
                let h: Vec<(&str, String)> = h.into_iter().collect();
                return Ok(local(200, &h, Bytes::new()));
            }
            CorsAnswer::Decorate(h) => h,
            CorsAnswer::Pass => Vec::new(),
        };
        let destination = forward.destination;
        log.service = Some(destination.host.clone());
        if self.edge.is_some() && !config.services.contains_key(&destination.host) {
            // A gateway reaches registered services only (REGISTRY_ONLY holds there too).
            self.note_unregistered(config, &destination.host, scope.port, log);
        }
        let (target, policy) = {
            let (endpoints, lb, http2, tls, number) =
                resolve(config, destination, scope.port).map_err(|(r, why)| log.failed(r, why))?;
            let policy = destination_policy(
                config,
                &destination.host,
                destination.subset.as_deref(),
                number,
                endpoints.len(),
            );
            let endpoints = built.destinations.healthy(&policy, endpoints);
            if endpoints.is_empty() {
                return Err(log.failed(
                    super::no_endpoints(),
                    format!(
                        "every endpoint of {} is ejected by outlier detection",
                        policy.key
                    ),
                ));
            }
            let hash = match &lb {
                LoadBalancer::HeaderHash(name) => {
                    header(&headers, name).map(|v| traffic_policy::hash_key(v.as_bytes()))
                }
                LoadBalancer::SourceIpHash => Some(traffic_policy::hash_key(
                    self.src.ip().to_string().as_bytes(),
                )),
                _ => None,
            };
            let key = format!(
                "{}|{}",
                destination.host,
                destination.subset.as_deref().unwrap_or("")
            );
            let pick = Pick {
                turn: built.balance.turn(&key),
                rolls: (fastrand::u64(..), fastrand::u64(..)),
                hash,
            };
            let ordered = traffic_policy::order(&endpoints, &lb, pick, |a| built.balance.active(a));
            let target = Target {
                service: destination.host.clone(),
                endpoints: ordered.into_iter().cloned().collect(),
                http2,
                pinned: true,
                tls,
                pool: policy.pool().cloned(),
            };
            (target, policy)
        };
        if let Some(delay) = forward.delay {
            log.answer = Some((ResponseFlag::DelayInjected, "via_upstream"));
            tokio::time::sleep(delay).await;
        }
        let (mut parts, body) = req.into_parts();
        parts.uri = forward
            .path_and_query
            .parse()
            .map_err(|_| super::bad_target())?;
        apply(&mut parts.headers, &forward.route.headers.request);
        apply(&mut parts.headers, &destination.headers.request);
        upstream_head(&mut parts, &forward.authority, target.version())?;
        if !upgrade.is_empty() {
            if target.http2 {
                // An HTTP/2 (or gRPC) service port has no HTTP/1.1 upgrade to splice.
                return Err(upgrade_failed());
            }
            let value = HeaderValue::from_str(&upgrade.join(", ")).map_err(|_| upgrade_failed())?;
            parts.headers.insert(http::header::UPGRADE, value);
            parts.headers.insert(
                http::header::CONNECTION,
                HeaderValue::from_static("upgrade"),
            );
        }
        let mut payload = Payload::read(body)
            .await
            .map_err(|(r, why)| log.failed(r, why))?;
        let head = Head {
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers: parts.headers,
        };
        if let (Payload::Kept(bytes), true) = (&payload, upgrade.is_empty()) {
            for mirror in &forward.mirrors {
                self.mirror(
                    config,
                    mirror,
                    scope.port,
                    &head,
                    &forward.authority,
                    bytes.clone(),
                );
            }
        }
        let retries = &forward.route.retries;
        // The route's timeout runs from here (after a fault delay, as in Envoy), waiting for a
        // connection included.
        let deadline = forward
            .route
            .timeout
            .filter(|t| !t.is_zero())
            .map(|t| Instant::now() + t);
        // DestinationRule `connectionPool`: a place in the destination's breaker, held until
        // the response has been read (503 `UO` when it overflows).
        let permit = built
            .destinations
            .admit(&policy, !target.http2, deadline)
            .await
            .map_err(|(r, why)| log.failed(r, why))?;
        let tries = Tries {
            target: &target,
            policy: &policy,
            retries,
            deadline,
        };
        let mut resp = self
            .attempts(config, built, &tries, &head, &mut payload, log)
            .await?;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(down) = downstream_upgrade {
                if admission::switches_to_asked(&upgrade, resp.headers()) {
                    let up = hyper::upgrade::on(&mut resp);
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    log.upgraded = Some(rx);
                    splice_upgrade(down, up, self.abort.clone(), tx);
                    drop(permit);
                    let mut resp = resp.map(|b| b.boxed());
                    apply(resp.headers_mut(), &forward.route.headers.response);
                    apply(resp.headers_mut(), &destination.headers.response);
                    return Ok(resp);
                }
            }
        }
        let resp = finish_response(resp)?;
        let mut resp = resp.map(|b| Held::new(b, permit).boxed());
        apply(resp.headers_mut(), &forward.route.headers.response);
        apply(resp.headers_mut(), &destination.headers.response);
        for (n, v) in cors_headers {
            if let Ok(v) = HeaderValue::from_str(&v) {
                resp.headers_mut().insert(n, v);
            }
        }
        Ok(resp)
    }

    /// Send `head` (and the payload) until an attempt gives an answer the retry policy keeps,
    /// within the route's timeout. Each attempt's outcome goes to the destination's outlier
    /// detector.
    async fn attempts(
        &self,
        config: &ProxyConfig,
        built: &Built,
        tries: &Tries<'_>,
        head: &Head,
        payload: &mut Payload,
        log: &mut RequestLog,
    ) -> Result<Response<hyper::body::Incoming>, Refusal> {
        let Tries {
            target,
            policy,
            retries,
            deadline,
        } = *tries;
        let replayable = matches!(payload, Payload::Kept(_));
        let tries = if replayable { 1 + retries.attempts } else { 1 };
        let mut attempt = 0;
        // The place of the retry in flight under `maxRetries`, held until the next try.
        let mut _retry = None;
        loop {
            attempt += 1;
            let last = attempt >= tries;
            let Some(body) = payload.next() else {
                return Err(timed_out("upstream_per_try_timeout"));
            };
            let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let per_try = retries.per_try_timeout.filter(|t| !t.is_zero());
            let (limit, global) = match (remaining, per_try) {
                (Some(r), Some(p)) if p < r => (Some(p), false),
                (Some(r), _) => (Some(r), true),
                (None, p) => (p, false),
            };
            let _in_flight = target
                .endpoints
                .first()
                .map(|e| built.balance.start(e.address));
            let sent = self.send(config, target, head.request(body), log);
            let outcome = match limit {
                Some(limit) => tokio::time::timeout(limit, sent).await.ok(),
                None => Some(sent.await),
            };
            let seen = match &outcome {
                Some(Ok(resp)) => Some(Outcome::Status(resp.status().as_u16())),
                // A refusal by policy, or no endpoint at all, says nothing of an endpoint.
                Some(Err(r))
                    if r.by_policy()
                        || r.flag == ResponseFlag::NoHealthyUpstream
                        || r.fault == crate::refusal::Fault::Downstream =>
                {
                    None
                }
                Some(Err(_)) | None => Some(Outcome::LocalFailure),
            };
            built.destinations.record_try(policy, seen, log);
            // `connectionPool.http.maxRetries` (Envoy's `max_retries` breaker): a retry the
            // policy wants is not made while that many are in flight; the answer in hand is
            // the answer, flagged `UO` (Envoy's router on retry overflow).
            let mut retry_slot = || match built.destinations.retry(policy) {
                Ok(slot) => Some(slot),
                Err(why) => {
                    log.answer = Some((ResponseFlag::UpstreamOverflow, "via_upstream"));
                    log.error = Some(why);
                    None
                }
            };
            match outcome {
                Some(Ok(resp)) => {
                    if last || !retries_response(retries, resp.status(), resp.headers()) {
                        return Ok(resp);
                    }
                    let Some(slot) = retry_slot() else {
                        return Ok(resp);
                    };
                    _retry = Some(slot);
                }
                Some(Err(refusal)) => {
                    if last || !retries_failure(retries, &refusal) {
                        return Err(refusal);
                    }
                    let Some(slot) = retry_slot() else {
                        let detail = format!(
                            "{}; {}",
                            refusal.detail,
                            log.error.take().unwrap_or_default()
                        );
                        return Err(Refusal {
                            flag: ResponseFlag::UpstreamOverflow,
                            detail,
                            ..refusal
                        });
                    };
                    _retry = Some(slot);
                }
                None if global => return Err(timed_out("response_timeout")),
                None => {
                    if last || !retries_timeout(retries) {
                        return Err(timed_out("upstream_per_try_timeout"));
                    }
                    let Some(slot) = retry_slot() else {
                        let mut r = timed_out("upstream_per_try_timeout");
                        r.flag = ResponseFlag::UpstreamOverflow;
                        return Err(r);
                    };
                    _retry = Some(slot);
                }
            }
            // Envoy's backoff: a random wait below base × 2^(n-1), at most 10 × base.
            let base = retries.backoff.unwrap_or(DEFAULT_BACKOFF);
            let cap = base.saturating_mul(10);
            let ceiling = base.saturating_mul(1 << (attempt - 1).min(10)).min(cap);
            let wait = ceiling.mul_f64(fastrand::f64());
            if deadline.is_some_and(|d| Instant::now() + wait >= d) {
                return Err(timed_out("response_timeout"));
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Send a copy of the request to a mirror destination, on a connection of its own, and
    /// forget it: its response is read and dropped, its failure only logged at debug. The
    /// copy's authority gets `-shadow` (Envoy's shadow host).
    fn mirror(
        &self,
        config: &Arc<ProxyConfig>,
        destination: &WeightedDestination,
        port: u16,
        head: &Head,
        authority: &str,
        body: Bytes,
    ) {
        let target = match resolve(config, destination, port) {
            Ok((endpoints, _, http2, tls, _)) => {
                let mut endpoints: Vec<Endpoint> = endpoints.into_iter().cloned().collect();
                let n = endpoints.len();
                endpoints.rotate_left(fastrand::usize(..n.max(1)).min(n));
                Target {
                    service: destination.host.clone(),
                    endpoints,
                    http2,
                    pinned: false,
                    tls,
                    pool: None,
                }
            }
            Err((_, why)) => {
                tracing::debug!(mirror = %destination.host, %why, "mirror not sent");
                return;
            }
        };
        let shadow = shadow_authority(authority);
        let mut parts = Request::new(()).into_parts().0;
        parts.method = head.method.clone();
        parts.uri = head.uri.clone();
        parts.version = head.version;
        parts.headers = head.headers.clone();
        if upstream_head(&mut parts, &shadow, target.version()).is_err() {
            return;
        }
        if !body.is_empty() {
            parts
                .headers
                .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        let copy = Head {
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers: parts.headers,
        };
        let down = Downstream {
            ctx: self.ctx.clone(),
            src: self.src,
            bind: self.bind,
            clients: Clients::default(),
            edge: self.edge.clone(),
            abort: Arc::default(),
        };
        let config = config.clone();
        let mut log = RequestLog::detached(&down, &config);
        tokio::spawn(async move {
            let req = copy.request(Full::new(body).map_err(|never| match never {}).boxed());
            match down.send(&config, &target, req, &mut log).await {
                Ok(resp) => {
                    let _ = resp.into_body().collect().await;
                }
                Err(refusal) => {
                    tracing::debug!(mirror = %target.service, detail = %refusal.detail, "mirror failed");
                }
            }
        });
    }
}

/// The authority of a mirrored request: the host with `-shadow` appended, the port kept.
fn shadow_authority(authority: &str) -> String {
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
            if port.bytes().all(|b| b.is_ascii_digit()) && !host.is_empty() {
                return format!("{host}-shadow:{port}");
            }
            format!("{authority}-shadow")
        }
        _ => format!("{authority}-shadow"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retries(on: &[&str], codes: &[u16]) -> Retries {
        Retries {
            attempts: 2,
            per_try_timeout: None,
            retry_on: on.iter().map(|s| (*s).to_owned()).collect(),
            retriable_status_codes: codes.to_vec(),
            backoff: None,
        }
    }

    #[test]
    fn retry_conditions_follow_envoys_names() {
        let h = HeaderMap::new();
        let mut grpc = HeaderMap::new();
        grpc.insert("grpc-status", HeaderValue::from_static("14"));
        let s = |c: u16| StatusCode::from_u16(c).unwrap();
        let cases: Vec<(Retries, StatusCode, &HeaderMap, bool)> = vec![
            (retries(&["5xx"], &[]), s(500), &h, true),
            (retries(&["5xx"], &[]), s(404), &h, false),
            (retries(&["gateway-error"], &[]), s(503), &h, true),
            (retries(&["gateway-error"], &[]), s(500), &h, false),
            (retries(&["retriable-4xx"], &[]), s(409), &h, true),
            (
                retries(&["retriable-status-codes"], &[503]),
                s(503),
                &h,
                true,
            ),
            (
                retries(&["retriable-status-codes"], &[503]),
                s(502),
                &h,
                false,
            ),
            (retries(&["connect-failure"], &[]), s(503), &h, false),
            (retries(&["unavailable"], &[]), s(200), &grpc, true),
            (retries(&["cancelled"], &[]), s(200), &grpc, false),
        ];
        for (r, status, headers, want) in cases {
            assert_eq!(
                retries_response(&r, status, headers),
                want,
                "{:?} {status}",
                r.retry_on
            );
        }
        let connect = Refusal::upstream(ResponseFlag::UpstreamFailure, "x");
        let reset = Refusal::upstream(ResponseFlag::UpstreamConnectionTermination, "x");
        let denied = Refusal::policy(None, None, "x");
        assert!(retries_failure(
            &retries(&["connect-failure"], &[]),
            &connect
        ));
        assert!(!retries_failure(
            &retries(&["connect-failure"], &[]),
            &reset
        ));
        assert!(retries_failure(&retries(&["reset"], &[]), &reset));
        assert!(retries_failure(&retries(&["5xx"], &[]), &connect));
        assert!(!retries_failure(&retries(&["5xx"], &[]), &denied));
    }

    #[test]
    fn header_changes_remove_then_set_then_add() {
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-gone", HeaderValue::from_static("1"));
        apply(
            &mut h,
            &HeaderOps {
                set: vec![("x-a".into(), "2".into())],
                add: vec![("x-a".into(), "3".into()), ("x-new".into(), "n".into())],
                remove: vec!["x-gone".into()],
            },
        );
        let all: Vec<&str> = h
            .get_all("x-a")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(all, ["2", "3"]);
        assert_eq!(h["x-new"], "n");
        assert!(h.get("x-gone").is_none());
    }

    #[test]
    fn shadow_authorities_keep_the_port() {
        assert_eq!(shadow_authority("a.b:8080"), "a.b-shadow:8080");
        assert_eq!(shadow_authority("a.b"), "a.b-shadow");
    }
}
