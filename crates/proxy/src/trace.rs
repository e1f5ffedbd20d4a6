//! Spans: each proxy hop of an HTTP request (inbound SERVER, outbound CLIENT, and the gateway's
//! SERVER span) continues the caller's trace, tells the next hop where it came from, and, when
//! sampled, reports a span over OTLP (docs/tracing.md).
//!
//! Decide, then do: [`parent`] reads the incoming trace context (W3C `traceparent`/`tracestate`,
//! else B3 single `b3`, else B3 multi `X-B3-*`), [`decide`] makes the hop's [`Hop`] from it, the
//! proxy's [`TracingPolicy`] and a random draw (pure); [`Hop::propagate`] writes the next hop's
//! headers; [`Tracer::open`] builds the span when the response head is sent and
//! [`OpenSpan::end`] hands it to the workload's exporter when the response body ends.
//!
//! The exporter is bounded: spans go through a queue of [`QUEUE`] spans to a task that sends
//! them in batches; when the queue is full (a slow or dead collector) the span is dropped and
//! counted (`ward_spans_total{outcome="queue_full"}`). The data path never waits for it.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use tokio::sync::mpsc;
use ward_config::tracing_policy::{Collector, SpanReporting, TagValue, TracingPolicy};

use crate::metrics::Metrics;

/// Spans waiting for export, per workload: beyond this they are dropped.
const QUEUE: usize = 2048;
/// Spans sent in one export request at most.
const MAX_BATCH: usize = 512;
/// How long the first span of a batch waits for others.
const BATCH_DELAY: Duration = Duration::from_millis(500);

/// Where the incoming trace context was read from: the next hop gets the same form back
/// (W3C is always written).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// `traceparent` (https://www.w3.org/TR/trace-context/).
    W3c,
    /// `b3: {traceid}-{spanid}[-{sampled}[-{parentspanid}]]` (openzipkin/b3-propagation).
    B3Single,
    /// `X-B3-TraceId`, `X-B3-SpanId`, `X-B3-Sampled`, `X-B3-Flags`.
    B3Multi,
}

/// The caller's trace context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Parent {
    pub(crate) trace_id: u128,
    pub(crate) span_id: u64,
    /// The caller's sampling decision; `None`: deferred to this hop.
    pub(crate) sampled: Option<bool>,
    pub(crate) format: Format,
}

fn hex_u128(s: &str) -> Option<u128> {
    let ok = (s.len() == 16 || s.len() == 32)
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    u128::from_str_radix(s, 16).ok().filter(|v| ok && *v != 0)
}

fn hex_u64(s: &str) -> Option<u64> {
    let ok = s.len() == 16
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    u64::from_str_radix(s, 16).ok().filter(|v| ok && *v != 0)
}

/// W3C `traceparent`: version `00` exactly as specified; a later version is read by its first
/// four fields (trace-context §3.2.4: "parse trace-id and parent-id... and flags").
fn traceparent(v: &str) -> Option<Parent> {
    let mut parts = v.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let rest = parts.next();
    let version_ok = version.len() == 2
        && version != "ff"
        && version.bytes().all(|b| b.is_ascii_hexdigit())
        && (version != "00" || rest.is_none());
    if !version_ok || trace.len() != 32 || flags.len() != 2 {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(Parent {
        trace_id: hex_u128(trace)?,
        span_id: hex_u64(span)?,
        sampled: Some(flags & 1 == 1),
        format: Format::W3c,
    })
}

/// B3 single header. `b3: 0` (only a decision, no context) is not a parent.
fn b3_single(v: &str) -> Option<Parent> {
    let mut parts = v.trim().split('-');
    let trace = hex_u128(parts.next()?)?;
    let span = hex_u64(parts.next()?)?;
    let sampled = match parts.next() {
        None => None,
        Some("1" | "d") => Some(true),
        Some("0") => Some(false),
        Some(_) => return None,
    };
    if let Some(p) = parts.next() {
        hex_u64(p)?;
    }
    Some(Parent {
        trace_id: trace,
        span_id: span,
        sampled,
        format: Format::B3Single,
    })
}

fn b3_multi(headers: &HeaderMap) -> Option<Parent> {
    let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
    let trace = hex_u128(&get("x-b3-traceid")?.to_ascii_lowercase())?;
    let span = hex_u64(&get("x-b3-spanid")?.to_ascii_lowercase())?;
    let sampled = if get("x-b3-flags") == Some("1") {
        Some(true)
    } else {
        match get("x-b3-sampled") {
            Some("1" | "true") => Some(true),
            Some("0" | "false") => Some(false),
            _ => None,
        }
    };
    Some(Parent {
        trace_id: trace,
        span_id: span,
        sampled,
        format: Format::B3Multi,
    })
}

/// The incoming trace context: a valid `traceparent` first, then `b3`, then `X-B3-*`. Invalid
/// values are ignored (a new trace starts), never an error.
pub(crate) fn parent(headers: &HeaderMap) -> Option<Parent> {
    let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    get("traceparent")
        .and_then(traceparent)
        .or_else(|| get("b3").and_then(b3_single))
        .or_else(|| b3_multi(headers))
}

/// One hop of a request through a proxy: its place in the trace and whether it is reported.
#[derive(Clone, Debug)]
pub(crate) struct Hop {
    pub(crate) trace_id: u128,
    pub(crate) span_id: u64,
    pub(crate) parent: Option<Parent>,
    pub(crate) sampled: bool,
    /// Where the span goes, when it is reported.
    pub(crate) report: Option<Report>,
    started: SystemTime,
}

/// What a reported span needs at its end.
#[derive(Clone, Debug)]
pub(crate) struct Report {
    collector: Collector,
    /// The custom tags, resolved when the request came in.
    tags: Vec<KeyValue>,
}

/// The hop of a request with `parent`, in a direction whose span reporting is `reporting`
/// (`fallback` is the sampling percentage when nothing is reported). `draw` is uniform in
/// [0, 100); `ids` are fresh random ids (trace, span). Pure. An incoming sampling decision is
/// honoured (Envoy and the W3C spec: the caller decided); without one, `draw` decides.
pub(crate) fn decide(
    parent: Option<Parent>,
    reporting: Option<&SpanReporting>,
    fallback: f64,
    draw: f64,
    ids: (u128, u64),
    headers: &HeaderMap,
) -> Hop {
    let percentage = reporting.map_or(fallback, |r| r.sampling);
    let sampled = parent
        .as_ref()
        .and_then(|p| p.sampled)
        .unwrap_or(draw < percentage);
    let report = reporting.filter(|_| sampled).map(|r| Report {
        collector: r.collector.clone(),
        tags: custom_tags(&r.custom_tags, headers),
    });
    Hop {
        trace_id: parent.as_ref().map_or(ids.0, |p| p.trace_id),
        span_id: ids.1,
        parent,
        sampled,
        report,
        started: SystemTime::now(),
    }
}

/// The values of `customTags` for a request with `headers`: a header's value (or its
/// default), a literal, an environment variable of the proxy (or its default).
fn custom_tags(
    tags: &std::collections::BTreeMap<String, TagValue>,
    headers: &HeaderMap,
) -> Vec<KeyValue> {
    tags.iter()
        .filter_map(|(name, value)| {
            let v = match value {
                TagValue::Literal(v) => Some(v.clone()),
                TagValue::Header { name, default } => headers
                    .get(name.as_str())
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .or_else(|| default.clone()),
                TagValue::Environment { name, default } => {
                    std::env::var(name).ok().or_else(|| default.clone())
                }
            }?;
            Some(KeyValue::new(name.clone(), v))
        })
        .collect()
}

impl Hop {
    /// Start the hop of a request: read its context, decide, and rewrite its trace headers
    /// for the next hop.
    pub(crate) fn start(policy: &TracingPolicy, server: bool, headers: &mut HeaderMap) -> Hop {
        let reporting = if server {
            policy.server.as_ref()
        } else {
            policy.client.as_ref()
        };
        let hop = decide(
            parent(headers),
            reporting,
            policy.sampling_without_reporting,
            fastrand::f64() * 100.0,
            (fastrand::u128(1..), fastrand::u64(1..)),
            headers,
        );
        hop.propagate(headers);
        hop
    }

    /// The `traceparent` the next hop gets: this hop's span as its parent.
    pub(crate) fn traceparent(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{}",
            self.trace_id,
            self.span_id,
            if self.sampled { "01" } else { "00" }
        )
    }

    /// Write the next hop's trace context: `traceparent` always (an incoming `tracestate` is
    /// kept as it is: this hop adds no entry), and every B3 form the request carries, rewritten,
    /// so that an app that copies only B3 headers keeps the trace and no stale span id travels
    /// on next to the new `traceparent`.
    pub(crate) fn propagate(&self, headers: &mut HeaderMap) {
        let single = headers.contains_key("b3");
        let multi = headers.contains_key("x-b3-traceid") || headers.contains_key("x-b3-spanid");
        let parent = self.parent.as_ref().map(|p| p.span_id);
        let mut set = |name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), v);
            }
        };
        set("traceparent", self.traceparent());
        let sampled = if self.sampled { "1" } else { "0" };
        if single {
            let parent = parent.map(|p| format!("-{p:016x}")).unwrap_or_default();
            set(
                "b3",
                format!(
                    "{:032x}-{:016x}-{sampled}{parent}",
                    self.trace_id, self.span_id
                ),
            );
        }
        if multi {
            set("x-b3-traceid", format!("{:032x}", self.trace_id));
            set("x-b3-spanid", format!("{:016x}", self.span_id));
            set("x-b3-sampled", sampled.to_owned());
            match parent {
                Some(p) => set("x-b3-parentspanid", format!("{p:016x}")),
                None => {
                    headers.remove("x-b3-parentspanid");
                }
            }
            headers.remove("x-b3-flags");
        }
        if self
            .parent
            .as_ref()
            .is_some_and(|p| p.format != Format::W3c)
        {
            // A `tracestate` belongs to the `traceparent` it came with, which was not used.
            headers.remove("tracestate");
        }
    }
}

/// What the data path knows when a reported hop ends.
pub(crate) struct Finished {
    pub(crate) kind: SpanKind,
    pub(crate) method: String,
    /// The normalized path, without its query (a query may hold a token).
    pub(crate) path: String,
    pub(crate) status: u16,
    /// Envoy's response flags (`-` when none).
    pub(crate) response_flags: String,
    /// `server.address` and `server.port`: the authority the request named.
    pub(crate) authority: String,
    /// `network.peer.address` and `.port`: the other end of this hop's connection.
    pub(crate) peer: Option<std::net::SocketAddr>,
    /// The peer's SPIFFE id, verified by mTLS.
    pub(crate) peer_identity: Option<String>,
    /// `allow` or `deny`, when this hop authorized the request, and the deciding policy.
    pub(crate) authz: Option<(&'static str, Option<String>)>,
    pub(crate) request_id: String,
    /// `HTTP/1.1`, `HTTP/2`...
    pub(crate) protocol: &'static str,
}

/// The span of a finished hop, as OpenTelemetry's HTTP semantic conventions name its
/// attributes (https://opentelemetry.io/docs/specs/semconv/http/http-spans/), plus Istio's
/// (`istio.canonical_service`, `istio.namespace`, `guid:x-request-id`, `response_flags`) and
/// Ward's (`ward.peer.identity`, `ward.authz.*`).
fn span_data(hop: &Hop, report: &Report, f: Finished, meta: &WorkloadNames) -> SpanData {
    let mut attributes = vec![
        KeyValue::new("http.request.method", f.method.clone()),
        KeyValue::new("url.path", f.path),
        KeyValue::new("http.response.status_code", i64::from(f.status)),
        KeyValue::new(
            "network.protocol.version",
            f.protocol.trim_start_matches("HTTP/").to_owned(),
        ),
        KeyValue::new("guid:x-request-id", f.request_id),
        KeyValue::new("response_flags", f.response_flags),
        KeyValue::new("istio.canonical_service", meta.canonical_service.clone()),
        KeyValue::new("istio.namespace", meta.namespace.clone()),
        KeyValue::new("component", "proxy"),
    ];
    let (host, port) = split_authority(&f.authority);
    if !host.is_empty() {
        attributes.push(KeyValue::new("server.address", host.to_owned()));
    }
    if let Some(port) = port {
        attributes.push(KeyValue::new("server.port", i64::from(port)));
    }
    if let Some(peer) = f.peer {
        attributes.push(KeyValue::new("network.peer.address", peer.ip().to_string()));
        attributes.push(KeyValue::new("network.peer.port", i64::from(peer.port())));
    }
    if let Some(id) = f.peer_identity {
        attributes.push(KeyValue::new("ward.peer.identity", id));
    }
    if let Some((decision, policy)) = f.authz {
        attributes.push(KeyValue::new("ward.authz.decision", decision));
        if let Some(p) = policy {
            attributes.push(KeyValue::new("ward.authz.policy", p));
        }
    }
    attributes.extend(report.tags.iter().cloned());
    // Semantic conventions: a server span is an error for 5xx; a client span for 4xx too.
    let error = match f.kind {
        SpanKind::Client => f.status >= 400,
        _ => f.status >= 500,
    };
    let status = if error {
        attributes.push(KeyValue::new("error.type", f.status.to_string()));
        Status::error("")
    } else {
        Status::Unset
    };
    let flags = if hop.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    SpanData {
        span_context: SpanContext::new(
            TraceId::from(hop.trace_id),
            SpanId::from(hop.span_id),
            flags,
            false,
            TraceState::default(),
        ),
        parent_span_id: hop
            .parent
            .as_ref()
            .map_or(SpanId::INVALID, |p| SpanId::from(p.span_id)),
        parent_span_is_remote: hop.parent.is_some(),
        span_kind: f.kind,
        // Semantic conventions: `{method}` when there is no route template.
        name: Cow::Owned(f.method),
        start_time: hop.started,
        // Set again by `OpenSpan::end` when the response body ends.
        end_time: SystemTime::now(),
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: InstrumentationScope::builder("ward").build(),
    }
}

/// `host[:port]`, `[v6][:port]`.
fn split_authority(authority: &str) -> (&str, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[') {
        if let Some((host, tail)) = rest.split_once(']') {
            return (host, tail.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, port.parse().ok()),
        _ => (authority, None),
    }
}

/// The names a workload's spans carry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct WorkloadNames {
    /// `ns/name`, for the span counters.
    pub(crate) key: String,
    /// Istio's `service.name` of a proxy's spans: `{canonical service}.{namespace}`.
    pub(crate) service_name: String,
    pub(crate) canonical_service: String,
    pub(crate) namespace: String,
}

impl WorkloadNames {
    pub(crate) fn of(cfg: &ward_config::ProxyConfig) -> WorkloadNames {
        let meta = ward_config::WorkloadMeta::of(&cfg.workload);
        WorkloadNames {
            key: format!("{}/{}", cfg.workload.namespace, cfg.workload.name),
            service_name: format!("{}.{}", meta.canonical_service, meta.namespace),
            canonical_service: meta.canonical_service,
            namespace: meta.namespace,
        }
    }
}

/// One workload's span export: a bounded queue to an export task, rebuilt when the collector
/// or the workload's names change with the config.
pub(crate) struct Tracer {
    metrics: Arc<Metrics>,
    /// The running exporter. Locked to hand a span over (never across an await).
    running: Mutex<Option<Running>>,
}

struct Running {
    collector: Collector,
    names: WorkloadNames,
    /// Sender: the data path (`try_send` only); receiver: the export task, which ends when
    /// this is dropped. `None` when no exporter could be built for this collector (logged
    /// once; its spans are counted `no_exporter`).
    queue: Option<mpsc::Sender<SpanData>>,
}

impl Tracer {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Tracer {
        Tracer {
            metrics,
            running: Mutex::new(None),
        }
    }

    /// The span of a hop whose response head is sent, if it is reported: it is built now and
    /// handed to the exporter by [`OpenSpan::end`] when the response body ends (or is
    /// dropped), so the span covers the whole exchange. Never waits.
    pub(crate) fn open(
        &self,
        cfg: &ward_config::ProxyConfig,
        hop: &Hop,
        f: Finished,
    ) -> Option<OpenSpan> {
        let report = hop.report.as_ref()?;
        let Ok(mut running) = self.running.lock() else {
            return None;
        };
        let names = WorkloadNames::of(cfg);
        let current = running
            .as_ref()
            .is_some_and(|r| r.collector == report.collector && r.names == names);
        if !current {
            let queue = match start_exporter(&report.collector, &names, self.metrics.clone()) {
                Ok(q) => Some(q),
                Err(e) => {
                    tracing::warn!(collector = %report.collector.service, error = %e, "cannot build the span exporter: no span is sent");
                    None
                }
            };
            *running = Some(Running {
                collector: report.collector.clone(),
                names: names.clone(),
                queue,
            });
        }
        let Some((r, queue)) = running
            .as_ref()
            .and_then(|r| r.queue.as_ref().map(|q| (r, q)))
        else {
            self.metrics.spans(&names.key, "no_exporter", 1);
            return None;
        };
        Some(OpenSpan {
            span: span_data(hop, report, f, &r.names),
            queue: queue.clone(),
            metrics: self.metrics.clone(),
            workload: r.names.key.clone(),
        })
    }
}

/// A reported span whose response is still being sent (see [`Tracer::open`]).
pub(crate) struct OpenSpan {
    span: SpanData,
    queue: mpsc::Sender<SpanData>,
    metrics: Arc<Metrics>,
    workload: String,
}

impl std::fmt::Debug for OpenSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenSpan")
            .field("span_id", &self.span.span_context.span_id())
            .finish_non_exhaustive()
    }
}

impl OpenSpan {
    /// A span going to `queue`, for tests of what ends it.
    #[cfg(test)]
    pub(crate) fn for_test(queue: mpsc::Sender<SpanData>, metrics: Arc<Metrics>) -> OpenSpan {
        let hop = Hop {
            trace_id: 1,
            span_id: 2,
            parent: None,
            sampled: true,
            report: None,
            started: SystemTime::now(),
        };
        let report = Report {
            collector: Collector {
                service: "collector".into(),
                port: 4318,
                http_path: Some("/v1/traces".into()),
                timeout_ms: 1000,
                tls_rule: None,
            },
            tags: Vec::new(),
        };
        let f = Finished {
            kind: SpanKind::Server,
            method: "GET".into(),
            path: "/".into(),
            status: 200,
            response_flags: "-".into(),
            authority: "srv".into(),
            peer: None,
            peer_identity: None,
            authz: None,
            request_id: "r".into(),
            protocol: "HTTP/1.1",
        };
        let names = WorkloadNames {
            key: "ns/w".into(),
            service_name: "w.ns".into(),
            canonical_service: "w".into(),
            namespace: "ns".into(),
        };
        OpenSpan {
            span: span_data(&hop, &report, f, &names),
            queue,
            metrics,
            workload: names.key,
        }
    }

    /// The response ended (its last frame was sent, or it was abandoned): the span ends now
    /// and goes to the export queue, or is counted as dropped when the queue is full.
    pub(crate) fn end(mut self) {
        self.span.end_time = SystemTime::now();
        if self.queue.try_send(self.span).is_err() {
            self.metrics.spans(&self.workload, "queue_full", 1);
        }
    }
}

/// Why no exporter runs for a collector.
#[derive(Debug, thiserror::Error)]
enum ExporterError {
    #[error(transparent)]
    Build(#[from] opentelemetry_otlp::ExporterBuildError),
    /// Spans would leave in plain text where the config asks for TLS: fail closed.
    #[error(
        "{0} asks for TLS to the collector, and Ward's span exporter speaks plain text only \
         (docs/tracing.md)"
    )]
    TlsRequired(String),
}

/// Starts the export task for `collector`; its queue's sender.
fn start_exporter(
    collector: &Collector,
    names: &WorkloadNames,
    metrics: Arc<Metrics>,
) -> Result<mpsc::Sender<SpanData>, ExporterError> {
    use opentelemetry_otlp::{RetryPolicy, WithExportConfig, WithHttpConfig, WithTonicConfig};
    if let Some(rule) = &collector.tls_rule {
        return Err(ExporterError::TlsRequired(rule.clone()));
    }
    let host = if collector.service.contains(':') {
        format!("[{}]", collector.service)
    } else {
        collector.service.clone()
    };
    let timeout = Duration::from_millis(collector.timeout_ms);
    // No retries: a span that cannot be sent now is dropped and counted, so a dead collector
    // costs one failed request per batch, not a growing backlog.
    let mut exporter = match &collector.http_path {
        Some(path) => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(format!("http://{host}:{}{path}", collector.port))
            .with_timeout(timeout)
            .with_retry_policy(RetryPolicy::disabled())
            .build()?,
        None => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(format!("http://{host}:{}", collector.port))
            .with_timeout(timeout)
            .with_retry_policy(RetryPolicy::disabled())
            .build()?,
    };
    exporter.set_resource(
        &opentelemetry_sdk::Resource::builder_empty()
            .with_service_name(names.service_name.clone())
            .build(),
    );
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(export(exporter, rx, metrics, names.key.clone(), timeout));
    Ok(tx)
}

/// The export task: batches of up to [`MAX_BATCH`] spans, sent one at a time, each bounded by
/// the collector's timeout. Ends when the queue's sender is dropped.
async fn export(
    exporter: opentelemetry_otlp::SpanExporter,
    mut rx: mpsc::Receiver<SpanData>,
    metrics: Arc<Metrics>,
    workload: String,
    timeout: Duration,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::sleep(BATCH_DELAY);
        tokio::pin!(deadline);
        while batch.len() < MAX_BATCH {
            tokio::select! {
                _ = &mut deadline => break,
                next = rx.recv() => match next {
                    Some(span) => batch.push(span),
                    None => break,
                },
            }
        }
        let n = batch.len() as u64;
        match tokio::time::timeout(timeout, exporter.export(batch)).await {
            Ok(Ok(())) => metrics.spans(&workload, "exported", n),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, spans = n, "span export failed");
                metrics.spans(&workload, "export_failed", n);
            }
            Err(_) => metrics.spans(&workload, "export_timeout", n),
        }
    }
    let _ = exporter.shutdown();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(list: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in list {
            h.insert(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    const TRACE: u128 = 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736;

    #[test]
    fn incoming_context_table() {
        // (name, headers, expected (trace, span, sampled, format))
        type Want = Option<(u128, u64, Option<bool>, Format)>;
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Want);
        let cases: [Case<'_>; 12] = [
            (
                "w3c sampled",
                &[(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                )],
                Some((TRACE, 0x00f0_67aa_0ba9_02b7, Some(true), Format::W3c)),
            ),
            (
                "w3c not sampled",
                &[(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
                )],
                Some((TRACE, 0x00f0_67aa_0ba9_02b7, Some(false), Format::W3c)),
            ),
            (
                "w3c upper case is invalid",
                &[(
                    "traceparent",
                    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                )],
                None,
            ),
            (
                "w3c zero trace id",
                &[(
                    "traceparent",
                    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                )],
                None,
            ),
            (
                "w3c zero parent",
                &[(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                )],
                None,
            ),
            (
                "w3c version ff",
                &[(
                    "traceparent",
                    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                )],
                None,
            ),
            (
                "w3c future version with more fields",
                &[(
                    "traceparent",
                    "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz",
                )],
                Some((TRACE, 0x00f0_67aa_0ba9_02b7, Some(true), Format::W3c)),
            ),
            (
                "b3 single",
                &[("b3", "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1")],
                Some((TRACE, 0x00f0_67aa_0ba9_02b7, Some(true), Format::B3Single)),
            ),
            (
                "b3 single, 64-bit trace, deferred",
                &[("b3", "a3ce929d0e0e4736-00f067aa0ba902b7")],
                Some((
                    0xa3ce_929d_0e0e_4736,
                    0x00f0_67aa_0ba9_02b7,
                    None,
                    Format::B3Single,
                )),
            ),
            ("b3 decision only", &[("b3", "0")], None),
            (
                "b3 multi",
                &[
                    ("x-b3-traceid", "4bf92f3577b34da6a3ce929d0e0e4736"),
                    ("x-b3-spanid", "00f067aa0ba902b7"),
                    ("x-b3-sampled", "0"),
                ],
                Some((TRACE, 0x00f0_67aa_0ba9_02b7, Some(false), Format::B3Multi)),
            ),
            (
                "w3c wins over b3",
                &[
                    (
                        "traceparent",
                        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                    ),
                    ("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-0"),
                ],
                Some((TRACE, 0x00f0_67aa_0ba9_02b7, Some(true), Format::W3c)),
            ),
        ];
        for (name, list, want) in cases {
            let got = parent(&headers(list)).map(|p| (p.trace_id, p.span_id, p.sampled, p.format));
            assert_eq!(got, want, "{name}");
        }
    }

    fn reporting(sampling: f64) -> SpanReporting {
        SpanReporting {
            provider: "otel".into(),
            collector: Collector {
                service: "127.1.190.1".into(),
                port: 4317,
                http_path: None,
                timeout_ms: 1000,
                tls_rule: None,
            },
            sampling,
            custom_tags: [
                ("env".to_owned(), TagValue::Literal("prod".into())),
                (
                    "tenant".to_owned(),
                    TagValue::Header {
                        name: "x-tenant".into(),
                        default: Some("none".into()),
                    },
                ),
            ]
            .into(),
        }
    }

    #[test]
    fn no_plain_text_export_where_the_config_asks_for_tls() {
        let mut collector = reporting(100.0).collector;
        collector.tls_rule = Some("DestinationRule obs/otel spec.trafficPolicy.tls".into());
        let names = WorkloadNames {
            key: "app/a".into(),
            service_name: "a.app".into(),
            canonical_service: "a".into(),
            namespace: "app".into(),
        };
        match start_exporter(&collector, &names, Arc::new(Metrics::default())) {
            Err(ExporterError::TlsRequired(rule)) => assert!(rule.contains("obs/otel"), "{rule}"),
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("an exporter was built for a collector the config wants TLS to"),
        }
    }

    #[test]
    fn sampling_honours_the_callers_decision_else_the_percentage() {
        let r = reporting(10.0);
        let h = HeaderMap::new();
        let p = |sampled| {
            Some(Parent {
                trace_id: TRACE,
                span_id: 7,
                sampled,
                format: Format::W3c,
            })
        };
        // (name, parent, draw, sampled)
        let cases = [
            ("caller sampled, draw says no", p(Some(true)), 99.0, true),
            (
                "caller did not sample, draw says yes",
                p(Some(false)),
                0.0,
                false,
            ),
            ("deferred, draw under", p(None), 9.9, true),
            ("deferred, draw over", p(None), 10.0, false),
            ("new trace, draw under", None, 5.0, true),
            ("new trace, draw over", None, 50.0, false),
        ];
        for (name, parent, draw, sampled) in cases {
            let hop = decide(parent.clone(), Some(&r), 0.0, draw, (99, 5), &h);
            assert_eq!(hop.sampled, sampled, "{name}");
            assert_eq!(hop.report.is_some(), sampled, "{name}");
            assert_eq!(
                hop.trace_id,
                if parent.is_some() { TRACE } else { 99 },
                "{name}"
            );
            assert_eq!(hop.span_id, 5, "{name}");
        }
        let off = decide(p(Some(true)), None, 0.0, 0.0, (1, 2), &h);
        assert!(
            off.sampled && off.report.is_none(),
            "no provider: propagated, not reported"
        );
    }

    #[test]
    fn the_next_hop_gets_this_span_as_parent_in_the_callers_format() {
        let mut h = headers(&[
            ("b3", "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1"),
            ("tracestate", "vendor=x"),
            ("x-tenant", "acme"),
        ]);
        let hop = decide(parent(&h), Some(&reporting(0.0)), 0.0, 50.0, (1, 0xabc), &h);
        hop.propagate(&mut h);
        assert_eq!(
            h["traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000abc-01"
        );
        assert_eq!(
            h["b3"],
            "4bf92f3577b34da6a3ce929d0e0e4736-0000000000000abc-1-00f067aa0ba902b7"
        );
        assert!(h.get("tracestate").is_none());
        let tags = &hop.report.as_ref().unwrap().tags;
        assert!(tags.contains(&KeyValue::new("env", "prod")));
        assert!(tags.contains(&KeyValue::new("tenant", "acme")));

        let mut h = headers(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            ),
            ("tracestate", "vendor=x"),
        ]);
        let hop = decide(parent(&h), None, 100.0, 0.0, (1, 0xabc), &h);
        hop.propagate(&mut h);
        assert_eq!(
            h["traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000abc-00"
        );
        assert_eq!(h["tracestate"], "vendor=x");
    }

    #[test]
    fn authorities_split_into_host_and_port() {
        assert_eq!(split_authority("srv.app:8080"), ("srv.app", Some(8080)));
        assert_eq!(split_authority("srv.app"), ("srv.app", None));
        assert_eq!(split_authority("[::1]:80"), ("::1", Some(80)));
        assert_eq!(split_authority("::1"), ("::1", None));
    }
}
