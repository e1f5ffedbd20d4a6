//! Istio's HTTP metrics for one request (`istio_requests_total`,
//! `istio_request_duration_milliseconds`, `istio_request_bytes`, `istio_response_bytes`),
//! recorded when the response ends, as Envoy's Istio stats filter records them: the request's
//! bytes are counted as its body is read ([`CountingBody`]), the response's as it is sent
//! ([`Metered`]), and the metrics are recorded once, when the response's last frame has gone or
//! the response is dropped (the client went away), whichever comes first.
//!
//! Sizes are the head (request or status line and header lines, as HTTP/1.1 writes them) plus
//! the body: the bytes of the message, whatever the wire protocol.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::metrics::{Metrics, PeerLabels, RequestOutcome};

/// The size of a header block as HTTP/1.1 writes it: `name: value\r\n` per line.
pub(crate) fn headers_size(headers: &HeaderMap) -> u64 {
    headers
        .iter()
        .map(|(n, v)| (n.as_str().len() + v.len() + 4) as u64)
        .sum()
}

/// The size of a request head: the request line (`METHOD target HTTP/1.1\r\n`), the header
/// lines and the blank line.
pub(crate) fn request_head_size<B>(req: &http::Request<B>) -> u64 {
    let target = req.uri().path_and_query().map_or(1, |p| p.as_str().len());
    (req.method().as_str().len() + target + 12) as u64 + headers_size(req.headers()) + 2
}

/// The size of a response head: the status line (`HTTP/1.1 200 OK\r\n`), header lines and the
/// blank line.
pub(crate) fn response_head_size<B>(resp: &http::Response<B>) -> u64 {
    let reason = resp.status().canonical_reason().map_or(0, str::len);
    (reason + 15) as u64 + headers_size(resp.headers()) + 2
}

/// Whether a request is gRPC (`content-type: application/grpc…`), Istio's `request_protocol`
/// `grpc`.
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// A gRPC status from a header block (`grpc-status`), when it is a number.
fn grpc_status(headers: &HeaderMap) -> Option<String> {
    let v = headers.get("grpc-status")?.to_str().ok()?;
    v.parse::<u16>().ok().map(|n| n.to_string())
}

/// A request body that counts its bytes as they are read.
pub(crate) struct CountingBody {
    inner: Incoming,
    count: Arc<AtomicU64>,
}

impl CountingBody {
    /// `inner`, adding what is read of it to `count`.
    pub(crate) fn new(inner: Incoming, count: Arc<AtomicU64>) -> CountingBody {
        CountingBody { inner, count }
    }
}

impl Body for CountingBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            let n = match (frame.data_ref(), frame.trailers_ref()) {
                (Some(d), _) => d.len() as u64,
                (None, Some(t)) => headers_size(t),
                (None, None) => 0,
            };
            self.count.fetch_add(n, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// One request's metrics, waiting for the end of its response.
pub(crate) struct RequestMeter {
    /// Where to record.
    pub(crate) metrics: Arc<Metrics>,
    /// Both ends.
    pub(crate) peers: PeerLabels,
    /// `connection_security_policy`.
    pub(crate) security_policy: String,
    /// Whether the request is gRPC.
    pub(crate) grpc: bool,
    /// When the request arrived.
    pub(crate) started: Instant,
    /// The request head's size.
    pub(crate) request_head: u64,
    /// The request body's bytes read so far.
    pub(crate) request_body: Arc<AtomicU64>,
    /// The workload's Telemetry metric overrides for this reporter; `None`: none.
    pub(crate) overrides: Option<Arc<ward_config::metrics_policy::MetricsPolicy>>,
}

/// The request's outcome as known when its response head is sent.
struct Pending {
    meter: RequestMeter,
    code: u16,
    flags: &'static str,
    grpc_status: Option<String>,
    response_bytes: u64,
    /// The hop's span, ended with the response (docs/tracing.md).
    span: Option<crate::trace::OpenSpan>,
}

impl Pending {
    fn record(mut self) {
        if let Some(span) = self.span.take() {
            span.end();
        }
        let m = &self.meter;
        let outcome = RequestOutcome {
            protocol: if m.grpc { "grpc" } else { "http" },
            code: self.code,
            flags: self.flags,
            // Istio: empty for a request that is not gRPC, or a gRPC response without a status.
            grpc_status: self.grpc_status.as_deref().filter(|_| m.grpc),
            duration_ms: m.started.elapsed().as_secs_f64() * 1000.0,
            request_bytes: m.request_head + m.request_body.load(Ordering::Relaxed),
            response_bytes: self.response_bytes,
        };
        // The reporter label says which side of the workload this is (Telemetry `mode`).
        let rules = m.overrides.as_deref().map(|p| {
            if m.peers.reporter == "destination" {
                &p.server
            } else {
                &p.client
            }
        });
        m.metrics
            .http_request(m.peers.clone(), m.security_policy.clone(), &outcome, rules);
    }
}

type RespBody = BoxBody<Bytes, hyper::Error>;

impl RequestMeter {
    /// Measure `resp` (flag `flags`) as it is sent; the metrics are recorded when it ends.
    #[cfg(test)]
    pub(crate) fn attach(
        self,
        resp: http::Response<RespBody>,
        flags: &'static str,
    ) -> http::Response<RespBody> {
        self.attach_with_span(resp, flags, None)
    }

    /// [`RequestMeter::attach`], also ending `span` when the response ends: its last frame
    /// was polled, or the body was dropped (the client went away).
    pub(crate) fn attach_with_span(
        self,
        resp: http::Response<RespBody>,
        flags: &'static str,
        span: Option<crate::trace::OpenSpan>,
    ) -> http::Response<RespBody> {
        let pending = Pending {
            span,
            code: resp.status().as_u16(),
            flags,
            grpc_status: grpc_status(resp.headers()),
            response_bytes: response_head_size(&resp),
            meter: self,
        };
        resp.map(|inner| {
            Metered {
                inner,
                pending: Some(pending),
            }
            .boxed()
        })
    }
}

/// A response body that records its request's metrics when it ends or is dropped.
struct Metered {
    inner: RespBody,
    pending: Option<Pending>,
}

impl Metered {
    fn finish(&mut self) {
        if let Some(p) = self.pending.take() {
            p.record();
        }
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Body for Metered {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(p) = this.pending.as_mut() {
                    if let Some(d) = frame.data_ref() {
                        p.response_bytes += d.len() as u64;
                    }
                    if let Some(t) = frame.trailers_ref() {
                        p.response_bytes += headers_size(t);
                        if let Some(status) = grpc_status(t) {
                            p.grpc_status = Some(status);
                        }
                    }
                }
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(_) => this.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use prometheus_client::registry::Registry;

    fn peers() -> PeerLabels {
        let p = crate::metrics::Parties {
            reporter: crate::metrics::Reporter::Destination,
            source: None,
            source_principal: None,
            source_namespace: None,
            destination: None,
            destination_principal: None,
            destination_namespace: None,
            service: None,
        };
        p.labels()
    }

    fn sample(text: &str, name: &str) -> Option<String> {
        text.lines()
            .find(|l| l.starts_with(&format!("{name}{{")))
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_owned)
    }

    #[tokio::test]
    async fn a_response_is_recorded_once_when_its_body_ends_with_its_size_and_grpc_status() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let body_read = Arc::new(AtomicU64::new(7));
        let meter = RequestMeter {
            metrics: metrics.clone(),
            peers: peers(),
            security_policy: "mutual_tls".into(),
            grpc: true,
            started: Instant::now(),
            request_head: 100,
            request_body: body_read,
            overrides: None,
        };
        let mut resp = http::Response::new(
            Full::new(Bytes::from_static(b"0123456789"))
                .map_err(|never| match never {})
                .boxed(),
        );
        resp.headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static("5"));
        let head = response_head_size(&resp);
        let resp = meter.attach(resp, "-");
        let encode = || {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
            text
        };
        assert_eq!(
            sample(&encode(), "istio_requests_total"),
            None,
            "not before the end"
        );
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 10);
        let text = encode();
        assert_eq!(sample(&text, "istio_requests_total").as_deref(), Some("1"));
        let line = text
            .lines()
            .find(|l| l.starts_with("istio_requests_total{"))
            .unwrap();
        assert!(line.contains("request_protocol=\"grpc\""), "{line}");
        assert!(line.contains("grpc_response_status=\"5\""), "{line}");
        assert_eq!(
            sample(&text, "istio_response_bytes_sum").as_deref(),
            Some(format!("{}.0", head + 10).as_str())
        );
        assert_eq!(
            sample(&text, "istio_request_bytes_sum").as_deref(),
            Some("107.0")
        );
    }

    /// A body whose frames come from a channel, ending when it closes.
    struct Chunks(tokio::sync::mpsc::Receiver<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = hyper::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
            self.0.poll_recv(cx).map(|c| c.map(|c| Ok(Frame::data(c))))
        }
    }

    /// docs/tracing.md: a span ends when the response body does, not at the response head.
    #[tokio::test]
    async fn the_span_ends_with_the_response_body() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let meter = RequestMeter {
            metrics: metrics.clone(),
            peers: peers(),
            security_policy: "none".into(),
            grpc: false,
            started: Instant::now(),
            request_head: 0,
            request_body: Arc::default(),
            overrides: None,
        };
        let (spans_tx, mut spans) = tokio::sync::mpsc::channel(4);
        let span = crate::trace::OpenSpan::for_test(spans_tx, metrics);
        let (chunks, rx) = tokio::sync::mpsc::channel(4);
        let resp = meter.attach_with_span(http::Response::new(Chunks(rx).boxed()), "-", Some(span));
        let mut body = resp.into_body();
        chunks.send(Bytes::from_static(b"first")).await.unwrap();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "first");
        assert!(spans.try_recv().is_err(), "no span while the body streams");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let last_sent = std::time::SystemTime::now();
        chunks.send(Bytes::from_static(b"last")).await.unwrap();
        drop(chunks);
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(rest, "last");
        let span = spans.try_recv().expect("the span, at the body's end");
        assert!(span.end_time >= last_sent, "ended after the last frame");
        assert!(
            span.end_time.duration_since(span.start_time).unwrap()
                >= std::time::Duration::from_millis(50)
        );

        // A response abandoned half-way (the client went away) still ends its span.
        let meter = RequestMeter {
            metrics: Metrics::register(&mut Registry::default()),
            peers: peers(),
            security_policy: "none".into(),
            grpc: false,
            started: Instant::now(),
            request_head: 0,
            request_body: Arc::default(),
            overrides: None,
        };
        let (spans_tx, mut spans) = tokio::sync::mpsc::channel(4);
        let span = crate::trace::OpenSpan::for_test(spans_tx, meter.metrics.clone());
        let (_chunks, rx) = tokio::sync::mpsc::channel(4);
        let resp = meter.attach_with_span(http::Response::new(Chunks(rx).boxed()), "-", Some(span));
        assert!(spans.try_recv().is_err());
        drop(resp);
        assert!(spans.try_recv().is_ok(), "ended on drop");
    }

    #[test]
    fn a_dropped_response_is_recorded_and_plain_http_has_no_grpc_status() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let meter = RequestMeter {
            metrics,
            peers: peers(),
            security_policy: "none".into(),
            grpc: false,
            started: Instant::now(),
            request_head: 0,
            request_body: Arc::default(),
            overrides: None,
        };
        let mut resp = http::Response::new(
            Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed(),
        );
        resp.headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static("0"));
        drop(meter.attach(resp, "UF"));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("istio_requests_total{"))
            .expect("recorded on drop");
        assert!(line.contains("grpc_response_status=\"\""), "{line}");
        assert!(line.contains("response_flags=\"UF\""), "{line}");
        assert!(line.contains("request_protocol=\"http\""), "{line}");
        assert!(line.ends_with(" 1"), "{line}");
    }
}
