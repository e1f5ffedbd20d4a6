//! End to end: spans of a request across two sidecars, exported over OTLP/gRPC and OTLP/HTTP to
//! a real OTLP receiver (`apps/otlp_receiver.py`: PyPI `opentelemetry-proto` + `grpcio`), with
//! `ward up`, mTLS between the sidecars and an app on a real socket that records the trace
//! headers it gets. Needs python3 with those packages; skips visibly without them (CI requires
//! them).
//!
//! Addresses, in 127.1.231.x: .1 (client `cli`, egress listener :8080 for `srv` alone and no
//! VirtualService: served per request because the workload reports CLIENT spans), .10 (`srv`, inbound HTTP :8080 to the app),
//! .20 (an ingress gateway, HTTP :8080 for `srv.example.local`), .200 (the receiver: gRPC and
//! HTTP ports). The mesh's tracing: the mesh default provider is
//! the gRPC one, a mesh-wide Telemetry samples 100% and adds custom tags, and a Telemetry
//! selecting `srv` sends its spans to the HTTP provider (Istio's merge order).
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use ward_test_support::{free_port, http_get, skip_or_fail, UpOptions, Ward};

/// The header lines each request to the app carried, lower-cased names.
type Seen = Arc<Mutex<Vec<Vec<(String, String)>>>>;

/// An HTTP/1.1 app that records each request's headers and answers 200 `ok` (keep-alive).
fn start_app() -> (u16, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let s = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let s = s.clone();
            std::thread::spawn(move || {
                let Ok(mut out) = conn.try_clone() else {
                    return;
                };
                let mut reader = BufReader::new(conn);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut headers = Vec::new();
                    let mut length = 0usize;
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        if h == "\r\n" {
                            break;
                        }
                        if let Some((n, v)) = h.trim_end().split_once(':') {
                            let n = n.trim().to_ascii_lowercase();
                            if n == "content-length" {
                                length = v.trim().parse().unwrap_or(0);
                            }
                            headers.push((n, v.trim().to_owned()));
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    s.lock().unwrap().push(headers);
                    let reply = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if out.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, seen)
}

const IP: &str = "127.1.231";
const RECEIVER: &str = "127.1.231.200";

fn config(app_port: u16, grpc_port: u16, http_port: u16) -> String {
    format!(
        r#"apiVersion: sailoperator.io/v1
kind: Istio
metadata:
  name: default
spec:
  namespace: istio-system
  values:
    meshConfig:
      extensionProviders:
      - name: otel-grpc
        opentelemetry: {{service: {RECEIVER}, port: {grpc_port}, grpc: {{timeout: 2s}}}}
      - name: otel-http
        opentelemetry:
          service: {RECEIVER}
          port: {http_port}
          http: {{path: /v1/traces, timeout: 2s}}
      defaultProviders:
        tracing: [otel-grpc]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata:
  name: mesh-default
  namespace: istio-system
spec:
  tracing:
  - randomSamplingPercentage: 100
    customTags:
      env: {{literal: {{value: e2e}}}}
      tenant: {{header: {{name: x-tenant, defaultValue: none}}}}
      region: {{environment: {{name: WARD_E2E_REGION, defaultValue: nowhere}}}}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata:
  name: srv-over-http
  namespace: app
spec:
  selector: {{matchLabels: {{app: srv}}}}
  tracing:
  - providers: [{{name: otel-http}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: istio-system
spec:
  mtls: {{mode: STRICT}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: srv
  namespace: app
spec:
  address: {IP}.10
  serviceAccount: srv
  labels: {{app: srv}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: cli
  namespace: app
spec:
  address: {IP}.1
  serviceAccount: cli
  labels: {{app: cli}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: srv
  namespace: app
spec:
  hosts: [srv.app.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {{number: 8080, name: http, protocol: HTTP}}
  workloadSelector:
    labels: {{app: srv}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: ingressgateway
  namespace: istio-system
spec:
  address: {IP}.20
  serviceAccount: istio-ingressgateway
  labels: {{istio: ingressgateway}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: edge
  namespace: istio-system
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 8080, name: http, protocol: HTTP}}
    hosts: [srv.example.local]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: edge
  namespace: app
spec:
  hosts: [srv.example.local]
  gateways: [istio-system/edge]
  http:
  - route: [{{destination: {{host: srv.app.svc.cluster.local, port: {{number: 8080}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: srv
  namespace: app
spec:
  workloadSelector:
    labels: {{app: srv}}
  ingress:
  - port: {{number: 8080, protocol: HTTP, name: http}}
    defaultEndpoint: 127.0.0.1:{app_port}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: cli
  namespace: app
spec:
  workloadSelector:
    labels: {{app: cli}}
  egress:
  - port: {{number: 8080, protocol: HTTP, name: http}}
    bind: {IP}.1
    hosts: ["app/srv.app.svc.cluster.local"]
"#
    )
}

/// The OTLP receiver, killed when dropped.
struct Receiver {
    child: Child,
    out: std::path::PathBuf,
}

impl Receiver {
    fn start(dir: &std::path::Path, grpc_port: u16, http_port: u16) -> Receiver {
        let out = dir.join("spans.jsonl");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/apps/otlp_receiver.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args([RECEIVER, &grpc_port.to_string(), &http_port.to_string()])
            .arg(&out)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the OTLP receiver did not start");
        Receiver { child, out }
    }

    fn spans(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The spans of `trace_id`, once `n` of them arrived (the exporter batches for up to half a
    /// second).
    fn wait_for(&self, trace_id: &str, n: usize) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let spans: Vec<Value> = self
                .spans()
                .into_iter()
                .filter(|s| s["trace_id"] == trace_id)
                .collect();
            if spans.len() >= n || start.elapsed() > Duration::from_secs(20) {
                return spans;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One GET through cli's egress listener to srv, with extra header lines; the status.
fn get(path: &str, extra: &[(&str, &str)]) -> u16 {
    get_at(
        &format!("{IP}.1:8080"),
        "srv.app.svc.cluster.local:8080",
        path,
        extra,
    )
}

/// One GET to `addr` with `Host: host`.
fn get_at(addr: &str, host: &str, path: &str, extra: &[(&str, &str)]) -> u16 {
    let addr: SocketAddr = addr.parse().unwrap();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    // A liveness bound, not a speed check: a stalled data path fails here instead of hanging.
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (n, v) in extra {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn by_kind<'a>(spans: &'a [Value], kind: &str) -> &'a Value {
    spans
        .iter()
        .find(|s| s["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} span in {spans:#?}"))
}

fn have_receiver_deps() -> bool {
    Command::new("python3")
        .args([
            "-c",
            "import grpc, opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The value of the first `/metrics` series starting with `series`.
fn metric(ward: &Ward, series: &str) -> Option<f64> {
    let (_, text) = http_get(ward.admin, "/metrics").ok()?;
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn spans_of_two_hops_share_the_trace_and_survive_a_dead_collector() {
    if !have_receiver_deps() {
        skip_or_fail(
            "tracing",
            "python3 with opentelemetry-proto and grpcio is needed (pip install opentelemetry-proto grpcio)",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (grpc_port, http_port) = (free_port(), free_port());
    let receiver = Receiver::start(dir.path(), grpc_port, http_port);
    let (app_port, seen) = start_app();
    let ward = Ward::up(UpOptions {
        bin: env!("CARGO_BIN_EXE_ward"),
        admin: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        files: vec![("mesh.yaml", config(app_port, grpc_port, http_port))],
        extra_args: vec![],
        env: vec![("WARD_E2E_REGION".into(), "eu-west".into())],
    })
    .unwrap();

    // 1. A new trace: the client sidecar's CLIENT span is its root, the server sidecar's
    // SERVER span its child, and the app's caller is the SERVER span.
    assert_eq!(get("/hello?token=secret", &[("x-tenant", "acme")]), 200);
    let app_headers = seen.lock().unwrap().last().cloned().unwrap();
    let tp = header(&app_headers, "traceparent").expect("the app gets a traceparent");
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!((parts.len(), parts[0], parts[3]), (4, "00", "01"), "{tp}");
    let trace = parts[1];
    let spans = receiver.wait_for(trace, 2);
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let client = by_kind(&spans, "SPAN_KIND_CLIENT");
    let server = by_kind(&spans, "SPAN_KIND_SERVER");
    assert_eq!(
        client["parent_span_id"], "",
        "a new trace starts at the client sidecar"
    );
    assert_eq!(server["parent_span_id"], client["span_id"]);
    assert_eq!(
        server["span_id"], parts[2],
        "the app's parent is the server span"
    );
    // Both transports: the mesh default (gRPC) for cli, the workload Telemetry's (HTTP) for srv.
    assert_eq!(
        (&client["transport"], &client["service"]),
        (&Value::from("grpc"), &Value::from("cli.app"))
    );
    assert_eq!(
        (&server["transport"], &server["service"]),
        (&Value::from("http"), &Value::from("srv.app"))
    );
    for span in [client, server] {
        let a = &span["attributes"];
        assert_eq!(span["name"], "GET");
        assert_eq!(a["http.request.method"], "GET");
        assert_eq!(a["url.path"], "/hello", "no query string in a span");
        assert_eq!(a["http.response.status_code"], 200);
        assert_eq!(a["server.address"], "srv.app.svc.cluster.local");
        assert_eq!(a["env"], "e2e");
        assert_eq!(a["tenant"], "acme");
        assert_eq!(
            a["region"], "eu-west",
            "an environment tag of the ward process"
        );
        assert!(!span.to_string().contains("secret"), "{span}");
    }
    assert_eq!(
        server["attributes"]["ward.peer.identity"],
        "spiffe://cluster.local/ns/app/sa/cli"
    );
    assert_eq!(server["attributes"]["ward.authz.decision"], "allow");
    assert_eq!(
        client["attributes"]["ward.peer.identity"],
        "spiffe://cluster.local/ns/app/sa/srv"
    );

    // 1b. Through the ingress gateway: its SERVER span is the root, srv's SERVER span its child.
    assert_eq!(
        get_at(
            &format!("{IP}.20:8080"),
            "srv.example.local",
            "/edge?q=1",
            &[]
        ),
        200
    );
    let app_headers = seen.lock().unwrap().last().cloned().unwrap();
    let tp = header(&app_headers, "traceparent").unwrap().to_owned();
    let edge_trace = tp.split('-').nth(1).unwrap().to_owned();
    let spans = receiver.wait_for(&edge_trace, 2);
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let gateway = spans
        .iter()
        .find(|s| s["service"] == "ingressgateway.istio-system")
        .unwrap_or_else(|| panic!("no gateway span in {spans:#?}"));
    let server = spans.iter().find(|s| s["service"] == "srv.app").unwrap();
    assert_eq!(
        (&gateway["kind"], &gateway["parent_span_id"]),
        (&Value::from("SPAN_KIND_SERVER"), &Value::from(""))
    );
    assert_eq!(server["parent_span_id"], gateway["span_id"]);
    assert_eq!(gateway["attributes"]["url.path"], "/edge");
    assert_eq!(
        server["attributes"]["ward.peer.identity"],
        "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway"
    );

    // 2. B3 (multi-header) in: the trace is continued, and the app gets B3 back.
    let b3_trace = "463ac35c9f6413ad48485a3953bb6124";
    assert_eq!(
        get(
            "/b3",
            &[
                ("X-B3-TraceId", b3_trace),
                ("X-B3-SpanId", "a2fb4a1d1a96d312"),
                ("X-B3-Sampled", "1"),
            ]
        ),
        200
    );
    let spans = receiver.wait_for(b3_trace, 2);
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let client = by_kind(&spans, "SPAN_KIND_CLIENT");
    let server = by_kind(&spans, "SPAN_KIND_SERVER");
    assert_eq!(client["parent_span_id"], "a2fb4a1d1a96d312");
    assert_eq!(server["parent_span_id"], client["span_id"]);
    let app_headers = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(header(&app_headers, "x-b3-traceid"), Some(b3_trace));
    assert_eq!(
        header(&app_headers, "x-b3-spanid"),
        server["span_id"].as_str()
    );
    assert!(header(&app_headers, "traceparent")
        .unwrap()
        .contains(b3_trace));

    // 3. B3 single, not sampled by the caller: propagated, never reported.
    let unsampled = "5b8efff798038103d269b633813fc60c";
    assert_eq!(
        get(
            "/quiet",
            &[("b3", &format!("{unsampled}-e457b5a2e4d86bd1-0"))]
        ),
        200
    );
    let app_headers = seen.lock().unwrap().last().cloned().unwrap();
    let tp = header(&app_headers, "traceparent").unwrap();
    assert!(tp.contains(unsampled) && tp.ends_with("-00"), "{tp}");
    // A sampled request after it: once its spans are in, the unsampled ones would be too (each
    // workload's exporter sends in order).
    let after = "0af7651916cd43dd8448eb211c80319c";
    let tp = format!("00-{after}-b7ad6b7169203331-01");
    assert_eq!(get("/after-quiet", &[("traceparent", &tp)]), 200);
    assert_eq!(receiver.wait_for(after, 2).len(), 2);
    assert!(receiver.spans().iter().all(|s| s["trace_id"] != unsampled));

    // 4. The collector dies: requests are still served, and the lost spans are counted.
    drop(receiver);
    for i in 0..20 {
        assert_eq!(get(&format!("/after/{i}"), &[]), 200, "request {i}");
    }
    let start = Instant::now();
    let failed = loop {
        let failed = metric(
            &ward,
            "ward_spans_total{workload=\"app/cli\",outcome=\"export_failed\"}",
        )
        .unwrap_or(0.0);
        if failed > 0.0 || start.elapsed() > Duration::from_secs(20) {
            break failed;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(failed > 0.0, "spans lost to a dead collector are counted");
    let exported = metric(
        &ward,
        "ward_spans_total{workload=\"app/cli\",outcome=\"exported\"}",
    )
    .unwrap_or(0.0);
    assert!(exported >= 3.0, "{exported}");
}
