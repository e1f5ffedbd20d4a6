//! End to end: DestinationRule `connectionPool` and `outlierDetection` (docs/routing.md,
//! "Connection pool and outlier detection"), carried out by a client sidecar's outbound HTTP
//! side and by an ingress gateway, with `ward up`, real curl processes and small HTTP/1.1 apps
//! on real sockets. Needs curl; skips visibly without it (CI requires it).
//!
//! Addresses, in 127.1.<180 + block>.x: .1 the gateway (`istio: ingressgateway`, server 8080
//! HTTP `*`), .2 the client `cli` (egress listener :8080 for namespace `app`), .10 `slow`
//! (holds `/hold` for two seconds; the services `pool` and `capped` select it), .11 `good`
//! (answers 200) and .12 `bad` (answers 503; both are the service `picky`, and `bad` alone is
//! `broken`), .60 a listener that never accepts (`stuck.example.com`, external). The apps
//! listen on free 127.0.0.1 ports.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use ward_test_support::{free_port, have, skip_or_fail, UpOptions, Ward};

/// A small HTTP/1.1 app (keep-alive, no request bodies): answers `status` with `app=<name>`;
/// `/hold…` is answered after two seconds.
fn start_app(name: &'static str, status: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || serve_app(name, status, conn));
        }
    });
    port
}

fn serve_app(name: &str, status: &str, conn: TcpStream) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let target = request_line.split(' ').nth(1).unwrap_or("").to_owned();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
        }
        if target.starts_with("/hold") {
            std::thread::sleep(Duration::from_secs(2));
        }
        let body = format!("app={name}\n");
        let head = format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        if out.write_all(head.as_bytes()).is_err() || out.write_all(body.as_bytes()).is_err() {
            return;
        }
    }
}

fn entry(name: &str, ns: &str, ip: &str, labels: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec:\n  address: {ip}\n  serviceAccount: {name}\n  labels: {{{labels}, wl: {name}}}\n---\n"
    )
}

fn app_workload(name: &str, ip: &str, labels: &str, app_port: u16) -> String {
    format!(
        "{}apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: {name}, namespace: app}}\n\
         spec:\n  workloadSelector: {{labels: {{wl: {name}}}}}\n  ingress:\n  - port: {{number: 8080, protocol: HTTP, name: http}}\n    defaultEndpoint: 127.0.0.1:{app_port}\n---\n",
        entry(name, "app", ip, labels)
    )
}

fn service(name: &str, selector: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: app}}\n\
         spec:\n  hosts: [{name}.app.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  \
         ports: [{{number: 8080, name: http, protocol: HTTP}}]\n  workloadSelector: {{labels: {{{selector}}}}}\n---\n"
    )
}

const POLICY: &str = r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge, namespace: app}
spec:
  hosts: [pool.example.com, picky.example.com]
  gateways: [istio-system/edge]
  http:
  - match: [{authority: {exact: pool.example.com}}]
    route: [{destination: {host: pool, port: {number: 8080}}}]
  - retries: {attempts: 0}
    route: [{destination: {host: picky, port: {number: 8080}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: picky, namespace: app}
spec:
  hosts: [picky]
  http:
  - retries: {attempts: 0}
    route: [{destination: {host: picky}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: pool, namespace: app}
spec:
  host: pool
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1, connectTimeout: 2s}
      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 10, idleTimeout: 30s}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: capped, namespace: app}
spec:
  host: capped
  trafficPolicy:
    connectionPool:
      http: {http2MaxRequests: 1}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: once, namespace: app}
spec:
  host: once
  trafficPolicy:
    connectionPool:
      http: {maxRequestsPerConnection: 1}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: idle, namespace: app}
spec:
  host: idle
  trafficPolicy:
    connectionPool:
      http: {idleTimeout: 1s}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: picky, namespace: app}
spec:
  host: picky
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection: {consecutive5xxErrors: 2, interval: 2s, baseEjectionTime: 3s, maxEjectionPercent: 100}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: broken, namespace: app}
spec:
  host: broken
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100}
"#;

struct Mesh {
    ward: Ward,
    block: u8,
    /// The never-accepting listener of `stuck.example.com` and the connections filling it.
    _stuck: Vec<socket2::Socket>,
}

/// An external HTTP service whose one endpoint never completes a TCP handshake
/// (`stuck_endpoint`), with a DestinationRule `connectTimeout` of 1s.
fn stuck_yaml(ip: &str, port: u16) -> String {
    format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: stuck, namespace: app}}
spec:
  hosts: [stuck.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 8080, name: http, protocol: HTTP, targetPort: {port}}}]
  endpoints: [{{address: {ip}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: stuck, namespace: app}}
spec:
  host: stuck.example.com
  trafficPolicy:
    connectionPool:
      tcp: {{connectTimeout: 1s}}
"#
    )
}

/// A listener on `ip` that never accepts, its queue filled, so that the next connection's
/// handshake is never completed (Linux drops the SYN while the accept queue is full).
fn stuck_endpoint(ip: &str) -> (u16, Vec<socket2::Socket>) {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let addr: SocketAddr = format!("{ip}:0").parse().unwrap();
    listener.bind(&addr.into()).unwrap();
    listener.listen(1).unwrap();
    let bound = listener.local_addr().unwrap().as_socket().unwrap();
    let mut held = vec![listener];
    for _ in 0..4 {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        // Some complete into the queue; the rest stay half-open. Either way the queue is full.
        let _ = s.connect_timeout(&bound.into(), Duration::from_millis(300));
        held.push(s);
    }
    (bound.port(), held)
}

fn up(block: u8) -> Option<Mesh> {
    if !have("curl") {
        skip_or_fail("traffic_policy", "curl is needed (apt-get install curl)");
        return None;
    }
    let ip = |n: u8| format!("127.1.{}.{n}", 180 + block);
    let slow = start_app("slow", "200 OK");
    let good = start_app("good", "200 OK");
    let bad = start_app("bad", "503 Service Unavailable");
    let (stuck_port, stuck) = stuck_endpoint(&ip(60));
    let mut yaml = String::from(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\n\
         spec: {mtls: {mode: STRICT}}\n---\n",
    );
    yaml += &entry("ingress", "istio-system", &ip(1), "istio: ingressgateway");
    yaml += &entry("cli", "app", &ip(2), "app: cli");
    yaml += &format!(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: cli, namespace: app}}\n\
         spec:\n  workloadSelector: {{labels: {{wl: cli}}}}\n  egress:\n  - port: {{number: 8080, protocol: HTTP, name: http}}\n    bind: {}\n    hosts: [\"./*\"]\n---\n",
        ip(2)
    );
    yaml += &app_workload("slow", &ip(10), "app: slow", slow);
    yaml += &app_workload("good", &ip(11), "app: picky", good);
    yaml += &app_workload("bad", &ip(12), "app: picky, broken: \"yes\"", bad);
    yaml += &service("pool", "app: slow");
    yaml += &service("capped", "app: slow");
    yaml += &service("picky", "app: picky");
    yaml += &service("once", "app: slow");
    yaml += &service("idle", "app: slow");
    yaml += &service("broken", "broken: \"yes\"");
    yaml += POLICY;
    yaml += &stuck_yaml(&ip(60), stuck_port);
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let ward = Ward::up(UpOptions {
        bin: env!("CARGO_BIN_EXE_ward"),
        admin,
        files: vec![("mesh.yaml", yaml)],
        extra_args: vec![],
        env: vec![],
    })
    .unwrap();
    Some(Mesh {
        ward,
        block,
        _stuck: stuck,
    })
}

/// The status of a finished curl (`-w %{http_code}` last on its output).
fn status(out: &Output) -> u16 {
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0)
}

impl Mesh {
    fn ip(&self, n: u8) -> String {
        format!("127.1.{}.{n}", 180 + self.block)
    }

    /// `n` curl processes at once to `http://<at>:8080<path>` with `Host: host`; their
    /// statuses, sorted.
    fn concurrently(&self, n: usize, at: u8, host: &str, path: &str) -> Vec<u16> {
        let children: Vec<_> = (0..n)
            .map(|_| {
                Command::new("curl")
                    .args([
                        "-sS",
                        "--max-time",
                        "15",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code}\n",
                    ])
                    .args(["-H", &format!("Host: {host}")])
                    .arg(format!("http://{}:8080{path}", self.ip(at)))
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut codes: Vec<u16> = children
            .into_iter()
            .map(|c| status(&c.wait_with_output().unwrap()))
            .collect();
        codes.sort_unstable();
        codes
    }

    /// One request: (status, body).
    fn get(&self, at: u8, host: &str, path: &str) -> (u16, String) {
        let url = format!("http://{}:8080{path}", self.ip(at));
        let header = format!("Host: {host}");
        ward_test_support::curl(&["-H", &header, &url])
    }

    /// `n` requests one after the other: how many were answered by `bad` (503).
    fn failures(&self, n: usize, at: u8, host: &str) -> usize {
        (0..n)
            .filter(|i| {
                let (code, body) = self.get(at, host, &format!("/r{i}"));
                assert!(
                    code == 200 || (code == 503 && body.contains("app=bad")),
                    "{code} {body}: {}",
                    self.ward.logs()
                );
                code == 503
            })
            .count()
    }

    fn logged(&self, fields: &[(&str, &str)]) -> serde_json::Value {
        self.ward
            .wait_for_log(fields, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("no log line with {fields:?} ({e}): {}", self.ward.logs()))
    }
}

#[test]
fn connection_pool_overflow_is_503_uo_at_the_sidecar_and_the_gateway() {
    let Some(m) = up(0) else {
        return;
    };
    let logs = || m.ward.logs();

    // maxConnections 1, http1MaxPendingRequests 1: of four requests at once, one is carried,
    // one waits for the connection and is then carried, two overflow (Istio's
    // circuit-breaking task, with curl instead of fortio).
    let codes = m.concurrently(4, 2, "pool", "/hold");
    assert_eq!(codes, [200, 200, 503, 503], "{}", logs());
    let line = m.logged(&[
        ("direction", "outbound"),
        ("response_flags", "UO"),
        ("path", "/hold"),
    ]);
    assert_eq!(line["response_code"], 503, "{line}");
    assert!(
        line["error"]
            .as_str()
            .unwrap_or("")
            .contains("http1MaxPendingRequests"),
        "{line}"
    );
    // The limits are on requests in flight, not on requests over time.
    assert_eq!(m.get(2, "pool", "/after").0, 200, "{}", logs());

    // http2MaxRequests 1: one of three in flight, the others overflow at once.
    let started = Instant::now();
    let codes = m.concurrently(3, 2, "capped", "/hold");
    assert_eq!(codes, [200, 503, 503], "{}", logs());
    assert!(started.elapsed() < Duration::from_secs(10));

    // The same DestinationRule at the ingress gateway, through a VirtualService.
    let codes = m.concurrently(4, 1, "pool.example.com", "/hold");
    assert_eq!(codes, [200, 200, 503, 503], "{}", logs());
    m.logged(&[("direction", "gateway"), ("response_flags", "UO")]);

    // istio_requests_total counts the overflows with their flag.
    let (code, text) = ward_test_support::http_get(m.ward.admin, "/metrics").unwrap();
    assert_eq!(code, 200);
    let overflowed = text.lines().find(|l| {
        l.starts_with("istio_requests_total{")
            && l.contains("response_flags=\"UO\"")
            && l.contains("response_code=\"503\"")
    });
    assert!(overflowed.is_some(), "no UO in the metrics:\n{text}");
}

#[test]
fn outlier_detection_ejects_a_failing_endpoint_and_brings_it_back() {
    let Some(m) = up(1) else {
        return;
    };
    let logs = || m.ward.logs();

    // Round robin over good and bad: bad answers 503 twice in a row, is ejected, and every
    // request after that goes to good.
    // At the gateway, then at the client's sidecar (each proxy has its own detector).
    assert_eq!(m.failures(4, 1, "picky.example.com"), 2, "{}", logs());
    let ejected = Instant::now();
    assert_eq!(m.failures(6, 1, "picky.example.com"), 0, "{}", logs());
    assert_eq!(m.failures(4, 2, "picky"), 2, "{}", logs());
    assert_eq!(m.failures(6, 2, "picky"), 0, "{}", logs());
    assert!(
        logs().contains("outlier detection ejected an endpoint"),
        "{}",
        logs()
    );

    // Back after baseEjectionTime (3s), at the next sweep (every 2s): it fails twice more and
    // is ejected again, now for twice as long (6s), so 4.5s later it is still out.
    let mut failed = 0;
    let mut i = 0;
    while failed < 2 {
        assert!(
            ejected.elapsed() < Duration::from_secs(9),
            "never back: {}",
            logs()
        );
        i += 1;
        let (code, _) = m.get(1, "picky.example.com", &format!("/back{i}"));
        if code == 503 {
            failed += 1;
        } else if failed == 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert!(
        ejected.elapsed() >= Duration::from_millis(2900),
        "back after {:?}",
        ejected.elapsed()
    );
    std::thread::sleep(Duration::from_millis(4500));
    assert_eq!(m.failures(6, 1, "picky.example.com"), 0, "{}", logs());

    // A destination whose only endpoint is ejected: 503 UH from the proxy itself.
    let (code, body) = m.get(2, "broken", "/first");
    assert_eq!((code, body.trim()), (503, "app=bad"), "{}", logs());
    let (code, _) = m.get(2, "broken", "/second");
    assert_eq!(code, 503);
    let line = m.logged(&[("direction", "outbound"), ("path", "/second")]);
    assert_eq!(line["response_flags"], "UH", "{line}");
    assert!(
        line["error"]
            .as_str()
            .unwrap_or("")
            .contains("ejected by outlier detection"),
        "{line}"
    );
}

#[test]
fn connect_timeout_bounds_a_connection_that_never_completes() {
    let Some(m) = up(5) else {
        return;
    };
    // Istio's default would wait 10s; the DestinationRule says 1s: 503 UF soon after.
    let started = Instant::now();
    let (code, _) = m.get(2, "stuck.example.com", "/stuck");
    let took = started.elapsed();
    assert_eq!(code, 503, "{}", m.ward.logs());
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(8),
        "answered after {took:?}"
    );
    let line = m.logged(&[("direction", "outbound"), ("path", "/stuck")]);
    assert_eq!(line["response_flags"], "UF", "{line}");
    assert!(
        line["error"]
            .as_str()
            .unwrap_or("")
            .contains("connectTimeout"),
        "{line}"
    );
}

/// Requests on one kept-alive connection to the client's egress listener, `pause` between
/// them; then the connection is closed. Their statuses.
fn keepalive(m: &Mesh, host: &str, n: usize, pause: Duration) -> Vec<u16> {
    let mut s = TcpStream::connect(format!("{}:8080", m.ip(2))).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut codes = Vec::new();
    for i in 0..n {
        if i > 0 {
            std::thread::sleep(pause);
        }
        write!(s, "GET /k{i} HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; length];
        std::io::Read::read_exact(&mut reader, &mut body).unwrap();
        codes.push(status.split(' ').nth(1).unwrap().parse().unwrap());
    }
    codes
}

/// The client sidecar's connections to `service` that have ended.
fn connections_to(m: &Mesh, service: &str) -> usize {
    let dst = format!("\"dst.service\":\"{service}.app.svc.cluster.local\"");
    m.ward
        .logs()
        .lines()
        .filter(|l| l.contains("connection complete") && l.contains("\"direction\":\"outbound\""))
        .filter(|l| l.contains(&dst))
        .count()
}

#[test]
fn connections_are_not_reused_past_max_requests_or_idle_timeout() {
    let Some(m) = up(6) else {
        return;
    };
    let logs = || m.ward.logs();
    // Four requests on one client connection: one connection to the service without a limit,
    // one per request with maxRequestsPerConnection 1.
    assert_eq!(keepalive(&m, "capped", 4, Duration::ZERO), [200; 4]);
    assert_eq!(keepalive(&m, "once", 4, Duration::ZERO), [200; 4]);
    // Two requests 1.5s apart: the first connection was closed at idleTimeout (1s).
    assert_eq!(
        keepalive(&m, "idle", 2, Duration::from_millis(1500)),
        [200; 2]
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let counts = loop {
        let counts = (
            connections_to(&m, "capped"),
            connections_to(&m, "once"),
            connections_to(&m, "idle"),
        );
        if counts == (1, 4, 2) || Instant::now() > deadline {
            break counts;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(counts, (1, 4, 2), "{}", logs());
}
