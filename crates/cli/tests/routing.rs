//! End to end: VirtualService and DestinationRule routing served by the client sidecar on its
//! outbound HTTP side (the `mesh` gateway), with `ward up`, real curl, and backends on real
//! sockets that echo what they received. Needs curl; skips visibly without it (CI requires it).
//!
//! Addresses, in 127.133.<block>.x: .1 (client `cli`, egress listener :8080 for every service
//! of namespace `app`), .10 (`web-v1`, labels version=v1), .11 (`web-v2`, version=v2),
//! .12 (`flaky`), .13 (`shadow`, the mirror). The apps listen on free 127.0.0.1 ports.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ward_test_support::{free_port, have, skip_or_fail, UpOptions, Ward};

/// What one app received: one line per request.
type Seen = Arc<Mutex<Vec<String>>>;

/// A small HTTP/1.1 app. Every answer says who answered and what it received:
/// `app=<name> method=<m> path=<target> host=<Host> body=<n> h[<name>]=<value>...` (the
/// headers whose name starts with `x-`). `/slow…` answers after 3 s; `/fail2…` answers 503 to
/// the first two requests for that path, then 200. Keep-alive.
fn start_app(name: &'static str) -> (u16, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let failures: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let s = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let (s, f) = (s.clone(), failures.clone());
            std::thread::spawn(move || serve_app(name, conn, &s, &f));
        }
    });
    (port, seen)
}

fn serve_app(name: &str, conn: TcpStream, seen: &Seen, failures: &Mutex<HashMap<String, u32>>) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = request_line.split(' ');
        let method = parts.next().unwrap_or("").to_owned();
        let target = parts.next().unwrap_or("").to_owned();
        let (mut host, mut length, mut extra) = (String::new(), 0usize, String::new());
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "host" {
                    host = v.to_owned();
                } else if k == "content-length" {
                    length = v.parse().unwrap_or(0);
                } else if k.starts_with("x-") {
                    extra.push_str(&format!(" h[{k}]={v}"));
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let line =
            format!("app={name} method={method} path={target} host={host} body={length}{extra}");
        seen.lock().unwrap().push(line.clone());
        if target.starts_with("/slow") {
            std::thread::sleep(Duration::from_secs(3));
        }
        let status = if target.starts_with("/fail2") {
            let mut f = failures.lock().unwrap();
            let n = f.entry(target.clone()).or_default();
            *n += 1;
            if *n <= 2 {
                "503 Service Unavailable"
            } else {
                "200 OK"
            }
        } else {
            "200 OK"
        };
        let body = format!("{line}\n");
        let head = format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        if out.write_all(head.as_bytes()).is_err() || out.write_all(body.as_bytes()).is_err() {
            return;
        }
    }
}

fn workload(name: &str, ip: &str, labels: &str, app_port: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: {name}
  namespace: app
spec:
  address: {ip}
  serviceAccount: {name}
  labels: {{{labels}, wl: {name}}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: {name}
  namespace: app
spec:
  workloadSelector:
    labels:
      wl: {name}
  ingress:
  - port:
      number: 8080
      protocol: HTTP
      name: http
    defaultEndpoint: 127.0.0.1:{app_port}
"#
    )
}

fn service(name: &str, app_label: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: {name}
  namespace: app
spec:
  hosts: [{name}.app.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - number: 8080
    name: http
    protocol: HTTP
  workloadSelector:
    labels:
      app: {app_label}
"#
    )
}

const ROUTES: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: web
  namespace: app
spec:
  hosts: [web]
  http:
  - name: moved
    match: [{uri: {exact: /old}}]
    redirect: {uri: /new, redirectCode: 301}
  - name: hello
    match: [{uri: {exact: /hello}}]
    directResponse: {status: 200, body: {string: "hello from the route"}}
  - name: teapot
    match: [{uri: {prefix: /abort}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: web}}]
  - name: slow
    match: [{uri: {prefix: /slow}}]
    timeout: 1s
    retries: {attempts: 0}
    route: [{destination: {host: web, subset: v1}}]
  - name: api
    match: [{uri: {prefix: /api/}}]
    rewrite: {uri: /v1/, authority: rewritten.example}
    headers:
      request: {set: {x-route: api}, remove: [x-secret]}
      response: {add: {x-served-by: ward}}
    route: [{destination: {host: web, subset: v2}}]
  - name: mirrored
    match: [{uri: {prefix: /mirror}}]
    mirror: {host: shadow}
    mirrorPercentage: {value: 100}
    route: [{destination: {host: web, subset: v1}}]
  - name: flaky
    match: [{uri: {prefix: /fail2}}]
    retries: {attempts: 3, retryOn: 5xx}
    route: [{destination: {host: flaky}}]
  - name: nowhere
    match: [{uri: {prefix: /nowhere}}]
    route: [{destination: {host: nowhere.example.com}}]
  - name: split
    match: [{uri: {prefix: /split}}]
    corsPolicy:
      allowOrigins: [{exact: "https://app.example.com"}]
      allowMethods: [GET]
      maxAge: 1m
    route:
    - destination: {host: web, subset: v1}
      weight: 90
    - destination: {host: web, subset: v2}
      weight: 10
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: web
  namespace: app
spec:
  host: web
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
"#;

fn mesh(block: u8, ports: &[u16; 4]) -> String {
    let ip = |n: u8| format!("127.133.{block}.{n}");
    let client = format!(
        r#"apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: istio-system
spec:
  mtls:
    mode: STRICT
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: cli
  namespace: app
spec:
  address: {}
  serviceAccount: cli
  labels:
    app: cli
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: cli
  namespace: app
spec:
  workloadSelector:
    labels:
      app: cli
  egress:
  - port:
      number: 8080
      protocol: HTTP
      name: http
    bind: {}
    hosts: ["./*"]
"#,
        ip(1),
        ip(1)
    );
    [
        client,
        workload("web-v1", &ip(10), "app: web, version: v1", ports[0]),
        workload("web-v2", &ip(11), "app: web, version: v2", ports[1]),
        workload("flaky", &ip(12), "app: flaky", ports[2]),
        workload("shadow", &ip(13), "app: shadow", ports[3]),
        service("web", "web"),
        service("flaky", "flaky"),
        service("shadow", "shadow"),
        ROUTES.to_owned(),
    ]
    .join("---\n")
}

struct Mesh {
    ward: Ward,
    block: u8,
    web_v1: Seen,
    web_v2: Seen,
    flaky: Seen,
    shadow: Seen,
}

fn up(block: u8) -> Option<Mesh> {
    if !have("curl") {
        skip_or_fail("routing", "curl is needed (apt-get install curl)");
        return None;
    }
    let (p1, web_v1) = start_app("web-v1");
    let (p2, web_v2) = start_app("web-v2");
    let (p3, flaky) = start_app("flaky");
    let (p4, shadow) = start_app("shadow");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let ward = Ward::up(UpOptions {
        bin: env!("CARGO_BIN_EXE_ward"),
        admin,
        files: vec![("mesh.yaml", mesh(block, &[p1, p2, p3, p4]))],
        extra_args: vec![],
        env: vec![],
    })
    .unwrap();
    Some(Mesh {
        ward,
        block,
        web_v1,
        web_v2,
        flaky,
        shadow,
    })
}

impl Mesh {
    /// One curl request to `web` through the client's egress listener: (status, headers,
    /// body).
    fn get(&self, path: &str, args: &[&str]) -> (u16, String, String) {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "-D", "-", "-H", "Host: web"])
            .args(args)
            .arg(format!("http://127.133.{}.1:8080{path}", self.block))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, head.to_ascii_lowercase(), body.trim().to_owned())
    }

    /// The outbound access-log line of the request for `path`.
    fn logged(&self, path: &str) -> serde_json::Value {
        self.ward
            .wait_for_log(
                &[("direction", "outbound"), ("path", path)],
                Duration::from_secs(5),
            )
            .unwrap()
    }
}

#[test]
fn virtual_service_routes_are_served_by_the_client_sidecar() {
    let Some(m) = up(1) else {
        return;
    };
    let logs = || m.ward.logs();

    // No route in a VirtualService that covers the host: 404 NR.
    let (status, _, _) = m.get("/unrouted", &[]);
    assert_eq!(status, 404, "{}", logs());
    assert_eq!(m.logged("/unrouted")["response_flags"], "NR");

    // Redirect and direct response, answered by the sidecar.
    let (status, head, _) = m.get("/old?q=1", &[]);
    assert_eq!(status, 301, "{}", logs());
    assert!(head.contains("location: http://web/new?q=1"), "{head}");
    let (status, _, body) = m.get("/hello", &[]);
    assert_eq!((status, body.as_str()), (200, "hello from the route"));
    assert_eq!(
        m.logged("/hello")["response_code_details"],
        "direct_response"
    );

    // Fault abort: the app never sees it.
    let (status, _, _) = m.get("/abort", &[]);
    assert_eq!(status, 418);
    assert_eq!(m.logged("/abort")["response_flags"], "FI");

    // Rewrite, authority, header changes both ways, subset v2.
    let (status, head, body) = m.get(
        "/api/items?x=1",
        &["-H", "x-secret: s3cret", "-H", "x-keep: yes"],
    );
    assert_eq!(status, 200, "{}", logs());
    assert!(
        body.starts_with("app=web-v2 method=GET path=/v1/items?x=1 host=rewritten.example"),
        "{body}"
    );
    assert!(body.contains("h[x-route]=api"), "{body}");
    assert!(body.contains("h[x-keep]=yes"), "{body}");
    assert!(!body.contains("x-secret"), "{body}");
    assert!(head.contains("x-served-by: ward"), "{head}");

    // Timeout: 504 UT after the route's 1 s, not the app's 3 s.
    let started = std::time::Instant::now();
    let (status, _, _) = m.get("/slow", &[]);
    assert_eq!(status, 504, "{}", logs());
    assert!(started.elapsed() < Duration::from_millis(2900));
    assert_eq!(m.logged("/slow")["response_flags"], "UT");

    // Retries: the backend fails twice, the third attempt answers.
    let (status, _, body) = m.get("/fail2/a", &[]);
    assert_eq!(status, 200, "{}", logs());
    assert!(body.starts_with("app=flaky"), "{body}");
    let attempts = m
        .flaky
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("/fail2/a"))
        .count();
    assert_eq!(attempts, 3);

    // A destination that is no known service: 503 NC, with the reason in the log.
    let (status, _, _) = m.get("/nowhere", &[]);
    assert_eq!(status, 503);
    let nowhere = m.logged("/nowhere");
    assert_eq!(nowhere["response_flags"], "NC", "{nowhere}");
    assert!(
        nowhere["error"]
            .as_str()
            .unwrap()
            .contains("nowhere.example.com"),
        "{nowhere}"
    );

    // Mirror: the copy reaches the shadow with `-shadow` on its authority; the answer is v1's.
    let (status, _, body) = m.get("/mirror", &["-X", "POST", "--data", "payload"]);
    assert_eq!(status, 200);
    assert!(
        body.starts_with("app=web-v1 method=POST path=/mirror"),
        "{body}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let copy = loop {
        let copy = m.shadow.lock().unwrap().first().cloned();
        if let Some(c) = copy {
            break c;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no mirrored copy: {}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        copy.starts_with("app=shadow method=POST path=/mirror host=web-shadow body=7"),
        "{copy}"
    );

    // CORS preflight answered by the sidecar.
    let (status, head, _) = m.get(
        "/split",
        &[
            "-X",
            "OPTIONS",
            "-H",
            "Origin: https://app.example.com",
            "-H",
            "Access-Control-Request-Method: GET",
        ],
    );
    assert_eq!(status, 200);
    assert!(
        head.contains("access-control-allow-origin: https://app.example.com"),
        "{head}"
    );
    assert!(head.contains("access-control-max-age: 60"), "{head}");
}

#[test]
fn weights_split_requests_between_subsets_selected_by_labels() {
    let Some(m) = up(2) else {
        return;
    };
    const N: usize = 1000;
    let mut cmd = Command::new("curl");
    for i in 0..N {
        if i > 0 {
            cmd.arg("--next");
        }
        cmd.args(["-sS", "--max-time", "10", "-H", "Host: web"])
            .arg(format!("http://127.133.{}.1:8080/split/{i}", m.block));
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v1 = text.lines().filter(|l| l.starts_with("app=web-v1")).count();
    let v2 = text.lines().filter(|l| l.starts_with("app=web-v2")).count();
    assert_eq!(v1 + v2, N, "{}", m.ward.logs());
    // 10 % of 1,000: the standard deviation is 9.5; 50..150 is more than five of them.
    assert!((50..=150).contains(&v2), "v1 {v1} v2 {v2}");
    eprintln!("weights 90/10 over {N} requests: v1 {v1}, v2 {v2}");
    // Each subset reached only the workloads its labels select.
    assert_eq!(m.web_v1.lock().unwrap().len(), v1);
    assert_eq!(m.web_v2.lock().unwrap().len(), v2);
}
