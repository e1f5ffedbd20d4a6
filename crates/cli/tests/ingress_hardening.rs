//! End to end: the ingress gateway's edge (docs/ingress.md, "The client's address" and
//! "Hardening"). `ward up` runs two gateways that one Gateway selects (plain HTTP on 8080):
//! `.1` trusts one proxy in front of it (`proxy.istio.io/config` annotation,
//! `gatewayTopology.numTrustedProxies: 1`), `.3` trusts none (the default). Behind them `web`
//! (.10), an app that echoes the request line and its `X-Forwarded-For`. Clients are real curl
//! (from the source address .50, `--interface`), raw sockets for what curl will not send, and
//! an h2 client for rapid reset. Addresses are 127.1.<182 + block>.x.
//!
//! Needs curl; otherwise prints `SKIPPED` (a failure under `WARD_E2E_REQUIRE_ALL=1`).
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

mod edge_common;
use edge_common::{backend, header_in, start_app, workload, Seen};
use ward_test_support::{free_port, have, skip_or_fail, UpOptions, Ward};

fn mesh(block: u8, app_port: u16) -> String {
    let ip = |n: u8| format!("127.1.{}.{n}", 182 + block);
    format!(
        r#"apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec: {{mtls: {{mode: STRICT}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: trusting
  namespace: istio-system
  annotations:
    proxy.istio.io/config: |
      gatewayTopology:
        numTrustedProxies: 1
spec:
  address: {gw}
  serviceAccount: istio-ingressgateway
  labels: {{istio: ingressgateway}}
---
{plain}{web}apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 8080, name: http, protocol: HTTP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: app}}
spec:
  hosts: ["*"]
  gateways: [istio-system/edge]
  http:
  - route: [{{destination: {{host: web, port: {{number: 8080}}}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: edge-ip, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  action: ALLOW
  rules:
  - to: [{{operation: {{paths: ["/open/*"]}}}}]
  - from: [{{source: {{remoteIpBlocks: ["203.0.113.0/24"]}}}}]
    to: [{{operation: {{paths: ["/remote/*"]}}}}]
  - from: [{{source: {{ipBlocks: ["{client}/32"]}}}}]
    to: [{{operation: {{paths: ["/peer/*"]}}}}]
  - to: [{{operation: {{paths: ["/cond/*"]}}}}]
    when: [{{key: remote.ip, values: ["203.0.113.7"]}}]
"#,
        gw = ip(1),
        plain = workload(
            "plain",
            "istio-system",
            &ip(3),
            "istio-ingressgateway",
            "istio: ingressgateway"
        ),
        web = backend("web", &ip(10), 8080, "HTTP", app_port),
        client = ip(50),
    )
}

struct Edge {
    ward: Ward,
    block: u8,
    seen: Seen,
}

fn up(block: u8) -> Option<Edge> {
    if !have("curl") {
        skip_or_fail("ingress_hardening", "curl is needed (apt-get install curl)");
        return None;
    }
    let (app_port, seen) = start_app();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let ward = Ward::up(UpOptions {
        bin: env!("CARGO_BIN_EXE_ward"),
        admin,
        files: vec![("mesh.yaml", mesh(block, app_port))],
        extra_args: vec![],
        env: vec![],
    })
    .unwrap();
    Some(Edge { ward, block, seen })
}

impl Edge {
    fn ip(&self, n: u8) -> String {
        format!("127.1.{}.{n}", 182 + self.block)
    }

    fn addr(&self, n: u8) -> SocketAddr {
        format!("{}:8080", self.ip(n)).parse().unwrap()
    }

    /// curl from .50 to gateway `.gw` with these `X-Forwarded-For` values: (status, body).
    fn get(&self, gw: u8, path: &str, xff: &[&str]) -> (u16, String) {
        let url = format!("http://{}:8080{path}", self.ip(gw));
        let from = self.ip(50);
        let headers: Vec<String> = xff
            .iter()
            .map(|v| format!("X-Forwarded-For: {v}"))
            .collect();
        let mut args = vec!["--interface", &from];
        for h in &headers {
            args.extend(["-H", h.as_str()]);
        }
        args.push(&url);
        ward_test_support::curl(&args)
    }

    /// Send raw bytes to gateway `.1` and read until it closes or `wait` passes: what came
    /// back, and whether the gateway closed the connection.
    fn raw(&self, bytes: &[u8], wait: Duration) -> (String, bool) {
        let mut s = TcpStream::connect(self.addr(1)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        s.write_all(bytes).unwrap();
        let deadline = Instant::now() + wait;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let closed = loop {
            match s.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if Instant::now() >= deadline {
                        break false;
                    }
                }
                Err(_) => break true,
            }
        };
        (String::from_utf8_lossy(&got).into_owned(), closed)
    }

    fn saw(&self, path: &str) -> bool {
        self.seen.lock().unwrap().iter().any(|p| p.contains(path))
    }
}

fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[test]
fn the_client_address_follows_num_trusted_proxies_and_cannot_be_forged() {
    let Some(e) = up(0) else {
        return;
    };
    let logs = || e.ward.logs();
    let client = e.ip(50);

    // One trusted proxy: the rightmost X-Forwarded-For entry is the client.
    let (code, body) = e.get(1, "/remote/a", &["203.0.113.7"]);
    assert_eq!(code, 200, "{}", logs());
    // The gateway appends its peer to the header it sends on.
    assert!(body.contains(" path=/remote/a "), "{body}");
    assert_eq!(
        header_in(&body, "x-forwarded-for"),
        Some(format!("203.0.113.7, {client}")),
        "{body}"
    );
    assert_eq!(e.get(1, "/cond/a", &["203.0.113.7"]).0, 200, "{}", logs());
    // A client's own entry further left is not trusted: the proxy's (rightmost) one counts.
    assert_eq!(e.get(1, "/remote/b", &["203.0.113.7, 198.51.100.1"]).0, 403);
    // Several headers are one list.
    assert_eq!(
        e.get(1, "/remote/c", &["198.51.100.1", "203.0.113.9"]).0,
        200
    );
    // No header: the peer is the client.
    assert_eq!(e.get(1, "/remote/d", &[]).0, 403);
    // ipBlocks is the socket peer whatever the header says.
    assert_eq!(e.get(1, "/peer/a", &["203.0.113.7"]).0, 200, "{}", logs());
    assert_eq!(e.get(3, "/peer/b", &["198.51.100.1"]).0, 200);

    // No trusted proxy: a forged header changes nothing.
    assert_eq!(e.get(3, "/remote/e", &["203.0.113.7"]).0, 403);
    assert_eq!(e.get(3, "/cond/b", &["203.0.113.7"]).0, 403);
    let (code, body) = e.get(3, "/open/a", &["203.0.113.7"]);
    assert_eq!(code, 200);
    assert!(body.contains(" path=/open/a "), "{body}");
    assert_eq!(
        header_in(&body, "x-forwarded-for"),
        Some(format!("203.0.113.7, {client}")),
        "{body}"
    );
    assert!(!e.saw("/remote/e"));
}

#[test]
fn smuggling_and_oversized_requests_are_refused_and_slow_clients_dropped() {
    let Some(e) = up(1) else {
        return;
    };
    let logs = || e.ward.logs();
    let short = Duration::from_secs(3);

    // Content-Length and Transfer-Encoding together: 400, as Envoy answers, before the request
    // reaches the router, and the connection closed, so neither it nor what hides behind its
    // chunked body reaches the app. The access log says DPE.
    let (resp, closed) = e.raw(
        b"POST /open/cl-te HTTP/1.1\r\nHost: a\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /open/smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        short,
    );
    assert_eq!(status_of(&resp), 400, "{resp}: {}", logs());
    assert!(closed, "{resp}: {}", logs());
    assert!(
        resp.to_ascii_lowercase().contains("connection: close"),
        "{resp}"
    );
    assert_eq!(resp.matches("HTTP/1.1 ").count(), 1, "{resp}");
    assert!(!e.saw("/open/cl-te") && !e.saw("/open/smuggled"), "{resp}");
    // The same head after a good request on the connection: the first is answered, then 400.
    let (resp, closed) = e.raw(
        b"GET /open/first HTTP/1.1\r\nHost: a\r\n\r\nPOST /open/te-cl HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        short,
    );
    assert!(closed, "{resp}");
    assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
    assert!(resp.contains("HTTP/1.1 400 Bad Request"), "{resp}");
    assert!(e.saw("/open/first") && !e.saw("/open/te-cl"), "{resp}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !logs().contains("http1.content_length_and_chunked_not_allowed") {
        assert!(Instant::now() < deadline, "no access log line: {}", logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    let line = logs()
        .lines()
        .find(|l| l.contains("http1.content_length_and_chunked_not_allowed"))
        .unwrap_or_default()
        .to_owned();
    assert!(
        line.contains("DPE") && line.contains("400") && line.contains("/open/cl-te"),
        "{line}"
    );

    // Two different Content-Lengths.
    let (resp, closed) = e.raw(
        b"POST /open/dup-cl HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
        short,
    );
    assert_eq!(status_of(&resp), 400, "{resp}");
    assert!(closed);
    assert!(!e.saw("/open/dup-cl"));

    // obs-fold (a header line continued on the next line).
    let (resp, _) = e.raw(
        b"GET /open/fold HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n",
        short,
    );
    assert_eq!(status_of(&resp), 400, "{resp}");
    assert!(!e.saw("/open/fold"));

    // A bad chunk size.
    let (resp, _) = e.raw(
        b"POST /open/chunk HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        short,
    );
    assert_eq!(status_of(&resp), 400, "{resp}");

    // Headers beyond the limits: 431.
    let big = format!(
        "GET /open/big HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(80 * 1024)
    );
    let (resp, _) = e.raw(big.as_bytes(), short);
    assert_eq!(status_of(&resp), 431, "{resp}");
    let mut many = String::from("GET /open/many HTTP/1.1\r\nHost: a\r\n");
    for i in 0..200 {
        many += &format!("X-H{i}: v\r\n");
    }
    many += "\r\n";
    let (resp, _) = e.raw(many.as_bytes(), short);
    assert_eq!(status_of(&resp), 431, "{resp}");
    assert!(!e.saw("/open/big") && !e.saw("/open/many"));

    // An h2c upgrade is not taken: the request is served as HTTP/1.1 (or refused), never 101.
    let (resp, _) = e.raw(
        b"GET /open/h2c HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        short,
    );
    let code = status_of(&resp);
    assert!(code == 200 || code == 400, "{resp}");
    assert!(!resp.contains("101"), "{resp}");

    // A client that sends half its headers and stops is closed at the header read timeout
    // (10s), without an answer from the app.
    let started = Instant::now();
    let (resp, closed) = e.raw(
        b"GET /open/slow HTTP/1.1\r\nHost: a\r\n",
        Duration::from_secs(20),
    );
    assert!(closed, "still open after {:?}: {resp}", started.elapsed());
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );
    assert!(!e.saw("/open/slow"));

    // And the gateway still serves.
    assert_eq!(e.get(1, "/open/after", &[]).0, 200, "{}", logs());
}

#[test]
fn http2_rapid_reset_is_bounded_and_the_gateway_stays_up() {
    let Some(e) = up(2) else {
        return;
    };
    let addr = e.addr(1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Open streams and reset each at once, many times over (CVE-2023-44487).
    const STREAMS: usize = 5000;
    let (sent, ended) = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        let driver = tokio::spawn(conn);
        let mut sent = 0;
        for i in 0..STREAMS {
            let Ok(mut c) = client.clone().ready().await else {
                break;
            };
            sent += 1;
            let req = http::Request::get(format!("http://{addr}/open/reset{i}"))
                .body(())
                .unwrap();
            let Ok((_, mut stream)) = c.send_request(req, true) else {
                break;
            };
            // Let the connection task write the HEADERS before the reset (else the client
            // library drops both).
            tokio::task::yield_now().await;
            stream.send_reset(h2::Reason::CANCEL);
        }
        drop(client);
        let ended = tokio::time::timeout(Duration::from_secs(20), driver).await;
        (sent, ended)
    });
    // The gateway ends the connection (h2's reset limits: a GOAWAY, then the socket closes
    // under the client's writes) long before the client has reset them all, and no reset
    // stream costs the app a request.
    let outcome = format!("{ended:?}");
    std::thread::sleep(Duration::from_secs(1));
    let reached = e.seen.lock().unwrap().len();
    eprintln!(
        "rapid reset: {sent} of {STREAMS} streams opened and reset before the connection ended \
         ({outcome}); {reached} reached the app"
    );
    assert!(sent < STREAMS, "all {sent} resets were taken: {outcome}");
    assert!(matches!(ended, Ok(Ok(Err(_)))), "{outcome}");
    assert!(
        reached < STREAMS / 10,
        "{reached} of {sent} streams were served"
    );
    // And a new connection is served.
    assert_eq!(
        e.get(1, "/open/after-reset", &[]).0,
        200,
        "{}",
        e.ward.logs()
    );
}
