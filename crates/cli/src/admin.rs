//! The admin HTTP API (`--admin`, default 127.0.0.1:15000): `/ready`, `/config_dump`, `/certs`,
//! `/metrics`, `/coverage` (`ward verify coverage`: what was served over mTLS, docs/verify.md) and
//! `POST /verify/mtls` (`ward verify mtls`: one probe connection, docs/verify.md).
//! `ward up` also serves `/break-glass` (docs/break-glass.md): the one endpoint that changes
//! state, answered only to loopback clients, only with an audit trail, and only for a bounded
//! time. Nothing else changes state: there is no endpoint that edits config, policy or
//! certificates (Linkerd CVE-2024-40632).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use ward_control::{ConfigStatus, ControlPlane};
use ward_proxy::breakglass::{BreakGlass, BreakGlassError, GrantRequest};
use ward_proxy::humantime_utc;
use ward_proxy::listener::{accept_loop, Caps, Gate, Kind};
use ward_proxy::{Metrics, SidecarHandle};

/// What the admin API reads.
pub(crate) struct AdminState {
    pub(crate) control: Arc<ControlPlane>,
    /// Running sidecars by `ns/name`; written by the supervisor.
    pub(crate) sidecars: Arc<Mutex<BTreeMap<String, SidecarHandle>>>,
    /// Metrics registry; only encoded here.
    pub(crate) registry: Mutex<Registry>,
    /// `--workloads`: readiness covers only these.
    pub(crate) hosted: crate::up::Hosted,
    /// `ward_config_*`, refreshed from the control plane's status at each scrape.
    pub(crate) config_metrics: Arc<ConfigMetrics>,
    /// Break-glass grants (`/break-glass`), shared with the sidecars.
    pub(crate) break_glass: Arc<BreakGlass>,
}

/// The config's metrics (`ward_config_*`, docs/metrics.md), read from the control plane's
/// [`ConfigStatus`] whenever `/metrics` is scraped.
#[derive(Default)]
pub(crate) struct ConfigMetrics {
    generation: Gauge,
    reload_errors: Counter,
    last_success: Gauge,
}

impl ConfigMetrics {
    /// Create the metrics and register them.
    pub(crate) fn register(registry: &mut Registry) -> Arc<ConfigMetrics> {
        let m = ConfigMetrics::default();
        registry.register(
            "ward_config_generation",
            "The serving config's generation: 1 at start, one more for each change applied",
            m.generation.clone(),
        );
        registry.register(
            "ward_config_reload_errors",
            "Config changes rejected (the last good config kept serving)",
            m.reload_errors.clone(),
        );
        registry.register(
            "ward_config_last_reload_success_timestamp_seconds",
            "When the config files last loaded cleanly (seconds since the epoch)",
            m.last_success.clone(),
        );
        Arc::new(m)
    }

    /// Bring the metrics up to `status`.
    pub(crate) fn update(&self, status: &ConfigStatus) {
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.generation.set(gauge(status.generation));
        self.last_success.set(gauge(status.last_success_at));
        let counted = self.reload_errors.get();
        if status.rejections > counted {
            self.reload_errors.inc_by(status.rejections - counted);
        }
    }
}

/// Ready when every WorkloadEntry this process hosts (`--workloads`) has a running sidecar with its certificate, config and
/// listeners. Returns the verdict and what is missing.
pub(crate) fn mesh_ready(state: &AdminState) -> (bool, Vec<String>) {
    let snap = state.control.snapshot().borrow().clone();
    let sidecars = state.sidecars.lock().map(|s| s.clone()).unwrap_or_default();
    let mut missing = Vec::new();
    for key in snap.proxies.keys().filter(|k| state.hosted.contains(k)) {
        match sidecars.get(key) {
            None => missing.push(format!("{key}: sidecar not started")),
            Some(h) if h.cert().is_none() => missing.push(format!("{key}: no certificate yet")),
            Some(h) if !h.is_ready() => {
                let p = h.problems();
                missing.push(format!("{key}: listeners not ready {p:?}"));
            }
            Some(h) => {
                // A fail-closed workload refuses what its trail cannot record: not ready.
                if let Some(p) = h.audit_problem().filter(|_| h.audit_fail_closed()) {
                    missing.push(format!("{key}: {p} (fail-closed)"));
                }
            }
        }
    }
    (missing.is_empty(), missing)
}

/// Hosted sidecars that serve although their audit trail is failing (fail-open, the default):
/// `/ready` says so, with status 200 (docs/audit.md).
pub(crate) fn mesh_degraded(state: &AdminState) -> Vec<String> {
    let sidecars = state.sidecars.lock().map(|s| s.clone()).unwrap_or_default();
    sidecars
        .iter()
        .filter(|(k, h)| state.hosted.contains(k) && !h.audit_fail_closed())
        .filter_map(|(k, h)| h.audit_problem().map(|p| format!("{k}: {p} (fail-open)")))
        .collect()
}

/// One workload's entry in `/certs`: the installed leaf (as before), and with `chain` and
/// `roots` every certificate of its chain and trust bundle with its serial, validity and
/// seconds left (`ward certs`).
pub(crate) fn cert_entry(key: &str, h: &SidecarHandle) -> serde_json::Value {
    let Some(c) = h.cert() else {
        return serde_json::json!({ "workload": key, "status": "PENDING" });
    };
    let now = std::time::SystemTime::now();
    let describe = |der: &Vec<u8>| match ward_identity::cert_info(der) {
        Ok(i) => serde_json::json!({
            "subject": i.subject,
            "serial": i.serial,
            "notBefore": humantime_utc(i.not_before),
            "notAfter": humantime_utc(i.not_after),
            "secondsLeft": seconds_left(i.not_after, now),
        }),
        Err(e) => serde_json::json!({ "error": e.to_string() }),
    };
    let issued = h.issued();
    let chain: Vec<_> = issued
        .iter()
        .flat_map(|i| i.chain_der.iter().map(describe))
        .collect();
    let roots: Vec<_> = issued
        .iter()
        .flat_map(|i| i.roots_der.iter().map(describe))
        .collect();
    serde_json::json!({
        "workload": key, "spiffeId": c.id.to_string(), "serial": c.serial,
        "notBefore": humantime_utc(c.not_before), "notAfter": humantime_utc(c.not_after),
        "secondsLeft": seconds_left(c.not_after, now), "status": "ACTIVE",
        "chain": chain, "roots": roots,
    })
}

/// Seconds from `now` to `at`, negative once past.
fn seconds_left(at: std::time::SystemTime, now: std::time::SystemTime) -> i64 {
    match at.duration_since(now) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

pub(crate) fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

fn json(value: &serde_json::Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    respond(StatusCode::OK, "application/json", body)
}

fn route(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n");
    }
    match req.uri().path() {
        "/ready" | "/healthz/ready" => {
            let (ready, missing) = mesh_ready(state);
            let degraded = mesh_degraded(state);
            if ready && !degraded.is_empty() {
                respond(
                    StatusCode::OK,
                    "text/plain",
                    format!("ready, degraded:\n{}\n", degraded.join("\n")),
                )
            } else if ready {
                respond(StatusCode::OK, "text/plain", "ready\n")
            } else {
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready:\n{}\n", missing.join("\n")),
                )
            }
        }
        "/config_dump" => {
            let snap = state.control.snapshot().borrow().clone();
            let status = state.control.status();
            let mut dump = serde_json::json!({
                "mesh": { "trustDomain": state.control.mesh().trust_domain, "rootNamespace": state.control.mesh().root_namespace,
                          "trustDomainAliases": state.control.mesh().trust_domain_aliases },
                "status": status,
                "snapshot": &*snap,
            });
            // Private keys from Secrets (DestinationRule `credentialName`) are not shown.
            ward_config::origination::redact_keys(&mut dump);
            json(&dump)
        }
        "/certs" => {
            let sidecars = state.sidecars.lock().map(|s| s.clone()).unwrap_or_default();
            let certs: Vec<serde_json::Value> =
                sidecars.iter().map(|(k, h)| cert_entry(k, h)).collect();
            json(&serde_json::json!({ "certificates": certs }))
        }
        "/metrics" => {
            state.config_metrics.update(&state.control.status());
            metrics_response(&state.registry)
        }
        "/" => respond(
            StatusCode::OK,
            "text/plain",
            "ward admin: /ready /config_dump /certs /metrics /coverage /break-glass, POST /verify/mtls\n",
        ),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// `/metrics`: the registry in Prometheus's text exposition format (version 0.0.4), the format
/// Istio's proxies serve and `promtool check metrics` reads (docs/metrics.md).
pub(crate) fn metrics_response(registry: &Mutex<Registry>) -> Response<Full<Bytes>> {
    let mut out = String::new();
    let encoded = registry
        .lock()
        .map_err(|_| ())
        .and_then(|r| prometheus_client::encoding::text::encode(&mut out, &r).map_err(|_| ()));
    match encoded {
        Ok(()) => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            prometheus_text(&out),
        ),
        Err(()) => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            "metrics encoding failed\n",
        ),
    }
}

/// The Prometheus text format of an OpenMetrics exposition (what `prometheus_client` writes).
/// The two differ, for what Ward writes, only in counters' metadata and the end marker:
/// OpenMetrics names a counter family without `_total` (`# TYPE istio_requests counter`) and its
/// samples with it; the text format names both `istio_requests_total`. So the `# HELP` and
/// `# TYPE` lines of counters get the `_total` suffix, and `# EOF` and `# UNIT` lines go. Sample
/// lines are the same in both (https://prometheus.io/docs/instrumenting/exposition_formats/).
pub(crate) fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|rest| ("# HELP ", rest))
            .or_else(|| line.strip_prefix("# TYPE ").map(|rest| ("# TYPE ", rest)));
        match meta {
            Some((kind, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{kind}{name}_total {tail}\n"));
                } else {
                    out.push_str(line);
                    out.push('\n');
                }
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// Connections the admin port may hold at once. It does not draw from the connection budget: it
/// lives on the descriptors the budget keeps in reserve, so a flood on a sidecar listener cannot
/// take `/ready` and `/metrics` away, and this cap keeps a flood on the admin port from taking
/// the reserve.
const ADMIN_CONNECTIONS: usize = 64;
/// Time a client has to send its request headers; an idle connection is closed after it.
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers one admin request.
pub(crate) type Router = Arc<dyn Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync>;

/// Serve the admin API until `shutdown` flips to true.
pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) {
    let sidecars = state.sidecars.clone();
    let break_glass = state.break_glass.clone();
    let router: Router = Arc::new(move |req| route(&state, req));
    let verify: Verifier =
        Arc::new(move |from: &str| sidecars.lock().ok().and_then(|s| s.get(from).cloned()));
    let sweeping = break_glass.clone();
    let mut stop = shutdown.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(crate::trail::SWEEP);
        loop {
            tokio::select! {
                _ = every.tick() => sweeping.sweep(now_secs()),
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        // A last sweep on the way out: expiries due, a checkpoint if one is due.
        sweeping.sweep(now_secs());
    });
    serve_routes(
        listener,
        router,
        Some(verify),
        Some(break_glass),
        metrics,
        shutdown,
    )
    .await
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Largest break-glass request body.
const BREAK_GLASS_BODY: usize = 4096;

/// `/break-glass` (docs/break-glass.md): `GET` lists the grants; `POST` with a JSON
/// [`GrantRequest`] grants one; `POST /break-glass/revoke` with `{"id", "by"}` revokes one. Only
/// loopback clients are answered.
async fn break_glass(
    req: Request<Incoming>,
    client: std::net::SocketAddr,
    grants: &BreakGlass,
    verify: &Verifier,
) -> Response<Full<Bytes>> {
    use http_body_util::BodyExt as _;
    if !client.ip().is_loopback() {
        return respond(
            StatusCode::FORBIDDEN,
            "text/plain",
            "break-glass is answered to loopback clients only\n",
        );
    }
    let revoke = match (req.method(), req.uri().path()) {
        (&Method::GET, "/break-glass") => {
            return json(&serde_json::json!({ "grants": grants.list(now_secs()) }))
        }
        (&Method::POST, "/break-glass") => false,
        (&Method::POST, "/break-glass/revoke") => true,
        _ => {
            return respond(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "GET /break-glass, POST /break-glass, POST /break-glass/revoke\n",
            )
        }
    };
    let body = match http_body_util::Limited::new(req.into_body(), BREAK_GLASS_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return respond(
                StatusCode::PAYLOAD_TOO_LARGE,
                "text/plain",
                "body: at most 4096 bytes\n",
            )
        }
    };
    let bad = |e: serde_json::Error| {
        respond(
            StatusCode::BAD_REQUEST,
            "text/plain",
            format!("body: {e}\n"),
        )
    };
    let result = if revoke {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Revoke {
            id: String,
            by: String,
        }
        match serde_json::from_slice::<Revoke>(&body) {
            Ok(r) => grants.revoke(&r.id, &r.by, now_secs()),
            Err(e) => return bad(e),
        }
    } else {
        match serde_json::from_slice::<GrantRequest>(&body) {
            Ok(r) => grants.grant(
                &r,
                &client.to_string(),
                &|w| verify(w).is_some(),
                now_secs(),
            ),
            Err(e) => return bad(e),
        }
    };
    match result {
        Ok(grant) => json(&serde_json::to_value(&grant).unwrap_or_default()),
        Err(e) => {
            let status = match e {
                BreakGlassError::Invalid(_) => StatusCode::BAD_REQUEST,
                BreakGlassError::NotFound(_) => StatusCode::NOT_FOUND,
                BreakGlassError::Conflict(_) => StatusCode::CONFLICT,
                BreakGlassError::Unrecorded(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            respond(status, "text/plain", format!("{e}\n"))
        }
    }
}

/// Finds the sidecar of workload `ns/name` (empty: the only one) for `/verify/mtls`.
pub(crate) type Verifier = Arc<dyn Fn(&str) -> Option<SidecarHandle> + Send + Sync>;

/// Probes at once, per admin port: `/verify/mtls` opens connections, so it is bounded.
const PROBES: usize = 4;

/// `POST /verify/mtls?from=NS/NAME&to=HOST:PORT`: the report of one probe connection from that
/// workload's sidecar (`ward_proxy::probe`), as JSON.
async fn verify_mtls(
    req: &Request<Incoming>,
    verify: &Verifier,
    slots: &tokio::sync::Semaphore,
) -> Response<Full<Bytes>> {
    if req.method() != Method::POST {
        return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only POST\n");
    }
    let (mut from, mut to) = ("", "");
    for pair in req.uri().query().unwrap_or_default().split('&') {
        match pair.split_once('=') {
            Some(("from", v)) => from = v,
            Some(("to", v)) => to = v,
            _ => {}
        }
    }
    let plain = |v: &str| {
        v.len() <= 300
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-./:[]_".contains(&b))
    };
    if to.is_empty() || !plain(to) || !plain(from) {
        return respond(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "want ?from=NAMESPACE/NAME&to=HOST:PORT\n",
        );
    }
    let Some(handle) = verify(from) else {
        return respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            format!("no sidecar for workload {from:?} here\n"),
        );
    };
    let Ok(_slot) = slots.try_acquire() else {
        return respond(
            StatusCode::TOO_MANY_REQUESTS,
            "text/plain",
            "too many probes at once\n",
        );
    };
    let report = handle.probe(to).await;
    tracing::info!(
        from = %report.from, to = %report.to, decision = %report.decision,
        mutual_tls13 = report.mutual_tls13, "verify: probe connection"
    );
    json(&serde_json::to_value(&report).unwrap_or_default())
}

/// `GET /coverage?since=SECONDS`: what this process's sidecars served over mTLS and in
/// plaintext in the last SECONDS (default 3600, at most a day), as JSON
/// (`ward_proxy::coverage`, docs/verify.md).
fn coverage(req: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n");
    }
    let mut window = 3600;
    for pair in req.uri().query().unwrap_or_default().split('&') {
        if let Some(("since", v)) = pair.split_once('=') {
            match v.parse::<u64>() {
                Ok(s) if s <= ward_proxy::coverage::RETENTION => window = s,
                _ => {
                    return respond(
                        StatusCode::BAD_REQUEST,
                        "text/plain",
                        format!(
                            "since: want seconds, at most {}\n",
                            ward_proxy::coverage::RETENTION
                        ),
                    )
                }
            }
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let report = metrics.coverage().report(now.saturating_sub(window));
    json(&serde_json::to_value(&report).unwrap_or_default())
}

/// Serve `router` on an admin port (read-only, HTTP/1.1, capped, off the connection budget)
/// until `shutdown` flips to true.
pub(crate) async fn serve_routes(
    listener: TcpListener,
    router: Router,
    verify: Option<Verifier>,
    grants: Option<Arc<BreakGlass>>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) {
    let caps = Caps {
        connections: ADMIN_CONNECTIONS,
        connections_per_source: None,
        handshakes: None,
        handshakes_per_source: None,
    };
    let seen = metrics.clone();
    let gate = Gate::new(Kind::Admin, "none", caps, None, metrics);
    let slots = Arc::new(tokio::sync::Semaphore::new(PROBES));
    accept_loop(listener, gate, shutdown, move |tcp, client, permit| {
        let (router, verify, slots) = (router.clone(), verify.clone(), slots.clone());
        let (seen, grants) = (seen.clone(), grants.clone());
        async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let (router, verify, slots) = (router.clone(), verify.clone(), slots.clone());
                let (seen, grants) = (seen.clone(), grants.clone());
                async move {
                    let path = req.uri().path().to_owned();
                    let response = match (&verify, &grants) {
                        (Some(v), Some(g))
                            if path == "/break-glass" || path == "/break-glass/revoke" =>
                        {
                            break_glass(req, client, g, v).await
                        }
                        (Some(_), None) if path.starts_with("/break-glass") => respond(
                            StatusCode::NOT_IMPLEMENTED,
                            "text/plain",
                            "break-glass is served by `ward up` only\n",
                        ),
                        (Some(v), _) if path == "/verify/mtls" => {
                            verify_mtls(&req, v, &slots).await
                        }
                        (Some(_), _) if path == "/coverage" => coverage(&req, &seen),
                        _ => router(&req),
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(ADMIN_HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
            drop(permit);
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(generation: u64, rejections: u64, last_success_at: u64) -> ConfigStatus {
        ConfigStatus {
            generation,
            applied_at: 0,
            last_success_at,
            last_rejection: None,
            rejections,
            reloads: 0,
            warnings: vec![],
        }
    }

    #[test]
    fn config_metrics_follow_the_status_and_count_each_rejection_once() {
        let mut registry = Registry::default();
        let m = ConfigMetrics::register(&mut registry);
        m.update(&status(1, 0, 100));
        m.update(&status(2, 2, 160));
        m.update(&status(2, 2, 160));
        m.update(&status(3, 3, 200));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let text = prometheus_text(&text);
        for line in [
            "ward_config_generation 3",
            "ward_config_reload_errors_total 3",
            "ward_config_last_reload_success_timestamp_seconds 200",
            "# TYPE ward_config_reload_errors_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    #[test]
    fn counters_metadata_gets_total_and_the_end_marker_goes() {
        let open = "# HELP istio_requests HTTP requests.\n# TYPE istio_requests counter\nistio_requests_total{reporter=\"source\"} 3\n# HELP ward_connection_budget Budget.\n# TYPE ward_connection_budget gauge\nward_connection_budget 10\n# HELP d Duration.\n# TYPE d histogram\nd_bucket{le=\"0.5\"} 1\nd_sum 0.2\nd_count 1\n# EOF\n";
        assert_eq!(
            prometheus_text(open),
            "# HELP istio_requests_total HTTP requests.\n# TYPE istio_requests_total counter\nistio_requests_total{reporter=\"source\"} 3\n# HELP ward_connection_budget Budget.\n# TYPE ward_connection_budget gauge\nward_connection_budget 10\n# HELP d Duration.\n# TYPE d histogram\nd_bucket{le=\"0.5\"} 1\nd_sum 0.2\nd_count 1\n"
        );
    }
}
