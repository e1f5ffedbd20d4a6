//! End to end: DestinationRule `outlierDetection` `splitExternalLocalOriginErrors` /
//! `consecutiveLocalOriginFailures` and `minHealthPercent` (docs/routing.md, "Connection pool
//! and outlier detection"), at a client sidecar's HTTP egress listener, with `ward up`, curl
//! and small HTTP/1.1 apps on real sockets. Needs curl; skips visibly without it.
//!
//! Addresses, in 127.1.220.x: .3 and .4 the client `cli` of each test (egress listener :8080
//! for namespace `app`),
//! .30 `good` (answers 200), .31 `bad` (answers 503), .32 nothing (connections refused), .33
//! `slow` (answers 503 after a second); all on the same port, as endpoints of external
//! services.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use ward_test_support::{free_port, have, skip_or_fail, UpOptions, Ward};

/// An HTTP/1.1 app on `ip:port` answering every request with `status` and `app=<name>`
/// (`slow`: after a second).
fn start_app(name: &'static str, status: &'static str, ip: &str, port: u16) -> u16 {
    let listener = TcpListener::bind(format!("{ip}:{port}")).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || serve(name, status, conn));
        }
    });
    port
}

fn serve(name: &str, status: &str, conn: TcpStream) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" {
                break;
            }
        }
        if name == "slow" {
            std::thread::sleep(Duration::from_secs(1));
        }
        let body = format!("app={name}\n");
        let reply = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if out.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// An external HTTP service `host` on `endpoints` (port `port`), routed round robin without
/// retries, with this `outlierDetection`.
fn service(name: &str, endpoints: &[&str], port: u16, outlier: &str) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|a| format!("{{address: {a}}}"))
        .collect();
    format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: app}}
spec:
  hosts: [{name}.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 8080, name: http, protocol: HTTP, targetPort: {port}}}]
  endpoints: [{eps}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: app}}
spec:
  hosts: [{name}.example.com]
  http:
  - retries: {{attempts: 0}}
    route: [{{destination: {{host: {name}.example.com}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: app}}
spec:
  host: {name}.example.com
  trafficPolicy:
    loadBalancer: {{simple: ROUND_ROBIN}}
    outlierDetection: {outlier}
"#,
        eps = eps.join(", ")
    )
}

struct Mesh {
    ward: Ward,
    client: &'static str,
}

impl Mesh {
    /// `n` requests to `host`, one after the other: how many were answered 503 by `bad`.
    fn failures(&self, n: usize, host: &str) -> usize {
        (0..n)
            .filter(|i| {
                let url = format!("http://{}:8080/r{i}", self.client);
                let header = format!("Host: {host}");
                let (code, body) = ward_test_support::curl(&["-H", &header, &url]);
                assert!(
                    code == 200 || (code == 503 && body.contains("app=bad")),
                    "{host}: {code} {body}: {}",
                    self.ward.logs()
                );
                code == 503
            })
            .count()
    }
}

/// The mesh, with the client sidecar on `client` (one per test: tests run at once).
fn up(client: &'static str) -> Option<Mesh> {
    if !have("curl") {
        skip_or_fail("outlier_origin", "curl is needed (apt-get install curl)");
        return None;
    }
    let port = start_app("good", "200 OK", "127.1.220.30", 0);
    start_app("bad", "503 Service Unavailable", "127.1.220.31", port);
    start_app("slow", "503 Service Unavailable", "127.1.220.33", port);
    let mut yaml = format!(
        r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: cli, namespace: app}}
spec: {{address: {client}, serviceAccount: cli, labels: {{app: cli}}}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: cli, namespace: app}}
spec:
  workloadSelector: {{labels: {{app: cli}}}}
  egress:
  - port: {{number: 8080, protocol: HTTP, name: http}}
    bind: {client}
    hosts: ["./*"]
"#
    );
    let every_5xx =
        "{consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 100";
    // Plain: `bad` is ejected at its first 503.
    yaml += &service(
        "plain",
        &["127.1.220.30", "127.1.220.31"],
        port,
        &format!("{every_5xx}}}"),
    );
    // The same, with minHealthPercent 60: one of two ejected leaves 50%, so the balancer
    // ignores the ejection (Envoy's panic threshold).
    yaml += &service(
        "panicky",
        &["127.1.220.30", "127.1.220.31"],
        port,
        &format!("{every_5xx}, minHealthPercent: 60}}"),
    );
    // Local-origin failures split off: the refusing endpoint is ejected after two refused
    // connections, and 5xx answers do not count.
    yaml += &service(
        "refusing",
        &["127.1.220.30", "127.1.220.32"],
        port,
        "{splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 2, consecutive5xxErrors: 0, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 100}",
    );
    // One retry on 5xx, at most one retry in flight to the destination.
    yaml += &format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: retrying, namespace: app}}
spec:
  hosts: [retrying.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 8080, name: http, protocol: HTTP, targetPort: {port}}}]
  endpoints: [{{address: 127.1.220.33}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: retrying, namespace: app}}
spec:
  hosts: [retrying.example.com]
  http:
  - retries: {{attempts: 1, retryOn: 5xx}}
    route: [{{destination: {{host: retrying.example.com}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: retrying, namespace: app}}
spec:
  host: retrying.example.com
  trafficPolicy:
    connectionPool:
      http: {{maxRetries: 1}}
"#
    );
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let ward = Ward::up(UpOptions {
        bin: env!("CARGO_BIN_EXE_ward"),
        admin,
        files: vec![("mesh.yaml", yaml)],
        extra_args: vec![],
        env: vec![],
    })
    .unwrap();
    Some(Mesh { ward, client })
}

#[test]
fn local_origin_failures_eject_and_min_health_percent_stops_ejection() {
    let Some(m) = up("127.1.220.3") else {
        return;
    };
    let logs = || m.ward.logs();

    // Without minHealthPercent: bad's first 503 ejects it; then only good answers.
    assert_eq!(m.failures(2, "plain.example.com"), 1, "{}", logs());
    assert_eq!(m.failures(6, "plain.example.com"), 0, "{}", logs());

    // minHealthPercent 60: bad is ejected as well, but with half the endpoints left the
    // balancer uses both, and bad keeps answering its share.
    assert_eq!(m.failures(2, "panicky.example.com"), 1, "{}", logs());
    assert_eq!(m.failures(6, "panicky.example.com"), 3, "{}", logs());

    // Refused connections: the proxy falls over to good (every request answered), and counts
    // each refusal against .32, which is ejected at the second.
    assert_eq!(m.failures(6, "refusing.example.com"), 0, "{}", logs());
    let line = m
        .ward
        .wait_for_log(
            &[("cause", "consecutiveLocalOriginFailures")],
            Duration::from_secs(5),
        )
        .unwrap_or_else(|e| panic!("no local-origin ejection ({e}): {}", logs()));
    assert!(
        line["endpoint"]
            .as_str()
            .unwrap_or("")
            .starts_with("127.1.220.32:"),
        "{line}"
    );
    assert!(
        line["destination"]
            .as_str()
            .unwrap_or("")
            .starts_with("refusing.example.com"),
        "{line}"
    );
}

#[test]
fn a_retry_over_max_retries_is_not_made() {
    let Some(m) = up("127.1.220.4") else {
        return;
    };
    let logs = || m.ward.logs();
    let client = m.client;
    // Two requests at once; each first try is answered 503 after a second, and each wants a
    // retry. One retry may be in flight: the other request gets its 503 at once, flagged UO.
    let get = |path: &'static str| {
        std::thread::spawn(move || {
            let url = format!("http://{client}:8080{path}");
            ward_test_support::curl(&["-H", "Host: retrying.example.com", &url])
        })
    };
    let (a, b) = (get("/a"), get("/b"));
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    assert_eq!((a.0, b.0), (503, 503), "{}", logs());
    assert!(
        a.1.contains("app=slow") && b.1.contains("app=slow"),
        "{a:?} {b:?}"
    );
    let line = m
        .ward
        .wait_for_log(
            &[("direction", "outbound"), ("response_flags", "UO")],
            Duration::from_secs(5),
        )
        .unwrap_or_else(|e| panic!("no UO line ({e}): {}", logs()));
    assert_eq!(line["response_code"], 503, "{line}");
    assert!(
        line["error"].as_str().unwrap_or("").contains("maxRetries"),
        "{line}"
    );
    // The other request was retried: exactly one overflow.
    let overflowed = m
        .ward
        .log_lines_matching(&[("direction", "outbound"), ("response_flags", "UO")]);
    assert_eq!(overflowed.len(), 1, "{}", logs());
}
