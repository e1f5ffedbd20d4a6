//! The ward-l7-traced path's collector: an OTLP/HTTP endpoint (`POST /v1/traces`, protobuf
//! bodies, https://opentelemetry.io/docs/specs/otlp/#otlphttp) that decodes every export with
//! the `opentelemetry-proto` types, counts the spans and answers 200 with an empty
//! `ExportTraceServiceResponse`. `GET /stats` answers `requests=N spans=N bytes=N bad=N`, which
//! the harness reads at the end of the run. It is its own process (`ward-bench serve-otlp`) on
//! the server side's address of the path's block, which both sides' sidecars reach (as a
//! collector Service in the cluster), pinned with the load generator, so that decoding is not
//! counted as the proxies' CPU.

use std::io::{BufRead, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use crate::net::{Net, Side};
use crate::process::{Proc, SpawnError};

/// The largest export body accepted (the exporter's batches are 512 spans at most).
const MAX_BODY: usize = 16 << 20;

/// What the sink received so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SinkStats {
    /// POST /v1/traces requests.
    pub(crate) requests: u64,
    /// Spans in the requests that decoded.
    pub(crate) spans: u64,
    /// Body bytes.
    pub(crate) bytes: u64,
    /// Requests that were not a valid `ExportTraceServiceRequest` (answered 400).
    pub(crate) bad: u64,
}

impl SinkStats {
    /// The `/stats` line.
    fn line(self) -> String {
        format!(
            "requests={} spans={} bytes={} bad={}",
            self.requests, self.spans, self.bytes, self.bad
        )
    }

    /// Parses a `/stats` line.
    pub(crate) fn parse(line: &str) -> Option<SinkStats> {
        let mut s = SinkStats::default();
        let mut seen = 0;
        for field in line.split_whitespace() {
            let (k, v) = field.split_once('=')?;
            let v: u64 = v.parse().ok()?;
            match k {
                "requests" => s.requests = v,
                "spans" => s.spans = v,
                "bytes" => s.bytes = v,
                "bad" => s.bad = v,
                _ => return None,
            }
            seen += 1;
        }
        (seen == 4).then_some(s)
    }
}

/// Why the sink could not be started or read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SinkError {
    /// The process could not start.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// Its announcement or `/stats` could not be read.
    #[error("OTLP sink: {0}")]
    Io(#[from] std::io::Error),
}

/// A running sink; stops on drop.
pub(crate) struct OtlpSink {
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    _proc: Proc,
}

impl OtlpSink {
    /// Starts `exe serve-otlp` on `bind` on the server side of `net`, pinned to `cpu`.
    pub(crate) fn start(
        exe: &Path,
        net: Net,
        bind: IpAddr,
        cpu: Option<usize>,
    ) -> Result<OtlpSink, SinkError> {
        let mut proc = Proc::spawn(
            "ward-bench serve-otlp",
            net.command(Side::Server, cpu, exe)
                .arg("serve-otlp")
                .arg("--bind")
                .arg(bind.to_string())
                .stdout(Stdio::piped()),
        )?;
        let stdout = proc
            .take_stdout()
            .ok_or_else(|| std::io::Error::other("no stdout"))?;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("ready otlp=")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("serve-otlp said {line:?}")))?;
        Ok(OtlpSink { addr, _proc: proc })
    }

    /// What it received so far.
    pub(crate) fn stats(&self) -> Result<SinkStats, SinkError> {
        let text = get_stats(self.addr)?;
        SinkStats::parse(text.trim())
            .ok_or_else(|| std::io::Error::other(format!("sink stats {text:?}")).into())
    }
}

/// `GET /stats` from the sink at `addr`: its body.
fn get_stats(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET /stats HTTP/1.1\r\nHost: sink\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    text.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .ok_or_else(|| std::io::Error::other("no body in the sink's answer"))
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    spans: AtomicU64,
    bytes: AtomicU64,
    bad: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> SinkStats {
        SinkStats {
            requests: self.requests.load(Ordering::Relaxed),
            spans: self.spans.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            bad: self.bad.load(Ordering::Relaxed),
        }
    }
}

/// The number of spans in one OTLP/HTTP protobuf body, or None when it does not decode.
pub(crate) fn count_spans(body: &[u8]) -> Option<u64> {
    let req = ExportTraceServiceRequest::decode(body).ok()?;
    Some(
        req.resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len() as u64)
            .sum(),
    )
}

/// `ward-bench serve-otlp`: listens on `bind`, prints `ready otlp=<addr>`, serves until
/// killed.
pub(crate) async fn serve(bind: IpAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind((bind, 0)).await?;
    println!("ready otlp={}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let counters = Arc::new(Counters::default());
    loop {
        let (stream, _) = listener.accept().await?;
        let counters = counters.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(req, counters.clone()));
            // A broken connection from the exporter only ends that connection.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    counters: Arc<Counters>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let reply = |status: StatusCode, ctype: &'static str, body: Vec<u8>| {
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        resp.headers_mut()
            .insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static(ctype));
        Ok(resp)
    };
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/v1/traces") => {
            counters.requests.fetch_add(1, Ordering::Relaxed);
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    counters.bad.fetch_add(1, Ordering::Relaxed);
                    return reply(StatusCode::BAD_REQUEST, "text/plain", b"body".to_vec());
                }
            };
            counters
                .bytes
                .fetch_add(body.len() as u64, Ordering::Relaxed);
            match count_spans(&body) {
                Some(n) => {
                    counters.spans.fetch_add(n, Ordering::Relaxed);
                    // An empty ExportTraceServiceResponse: zero bytes of protobuf.
                    reply(StatusCode::OK, "application/x-protobuf", Vec::new())
                }
                None => {
                    counters.bad.fetch_add(1, Ordering::Relaxed);
                    reply(StatusCode::BAD_REQUEST, "text/plain", b"not OTLP".to_vec())
                }
            }
        }
        (&Method::GET, "/stats") => reply(
            StatusCode::OK,
            "text/plain",
            counters.snapshot().line().into_bytes(),
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    #[test]
    fn stats_lines_round_trip() {
        let s = SinkStats {
            requests: 3,
            spans: 1500,
            bytes: 123_456,
            bad: 1,
        };
        assert_eq!(SinkStats::parse(&s.line()), Some(s));
        assert_eq!(SinkStats::parse("requests=1 spans=2"), None);
        assert_eq!(SinkStats::parse("requests=1 spans=x bytes=1 bad=0"), None);
    }

    #[test]
    fn spans_are_counted_across_resources_and_scopes() {
        let scope = |n| ScopeSpans {
            spans: vec![Span::default(); n],
            ..Default::default()
        };
        let req = ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    scope_spans: vec![scope(2), scope(3)],
                    ..Default::default()
                },
                ResourceSpans {
                    scope_spans: vec![scope(4)],
                    ..Default::default()
                },
            ],
        };
        assert_eq!(count_spans(&req.encode_to_vec()), Some(9));
        assert_eq!(count_spans(&[]), Some(0));
        assert_eq!(count_spans(&[0xff, 0xff, 0xff]), None);
    }

    /// The real server on loopback: one export of 5 spans, one garbage body, then /stats.
    #[test]
    fn serves_exports_and_stats() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind((
                std::net::Ipv4Addr::LOCALHOST,
                0,
            )))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let c = Arc::new(Counters::default());
        let server = std::thread::spawn(move || {
            rt.block_on(async move {
                for _ in 0..3 {
                    let (stream, _) = listener.accept().await.unwrap();
                    let c = c.clone();
                    let service = hyper::service::service_fn(move |req| handle(req, c.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                }
            });
        });
        let body = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span::default(); 5],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec();
        let post = |body: &[u8]| {
            let mut s = TcpStream::connect(addr).unwrap();
            write!(
                s,
                "POST /v1/traces HTTP/1.1\r\nHost: sink\r\nContent-Type: application/x-protobuf\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .unwrap();
            s.write_all(body).unwrap();
            let mut text = String::new();
            s.read_to_string(&mut text).unwrap();
            text
        };
        assert!(post(&body).starts_with("HTTP/1.1 200"));
        assert!(post(&[0xff, 0xff, 0xff]).starts_with("HTTP/1.1 400"));
        let stats = SinkStats::parse(get_stats(addr).unwrap().trim()).unwrap();
        server.join().unwrap();
        assert_eq!(
            stats,
            SinkStats {
                requests: 2,
                spans: 5,
                bytes: body.len() as u64 + 3,
                bad: 1,
            }
        );
    }
}
