//! End to end: one Sidecar egress listener shared by two HTTP services. The client sidecar routes
//! each request by its `Host` / `:authority`, so requests on one kept-alive connection reach
//! different services. Needs curl; skips visibly without it (CI requires it).
//!
//! Addresses, in each test's own block 127.1.<block>.x (80, 81): .1 (client `cli`, egress
//! listener :8080), .10 (`srv-a`), .11 (`srv-b`); the apps listen on free 127.0.0.1 ports.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use ward_test_support::{free_port, have, skip_or_fail, UpOptions, Ward};

/// A small HTTP/1.1 app that says who it is and what it was asked: `i am <name> host=<Host>
/// path=<target>`. Keep-alive; answers every request on a connection until the peer closes.
fn start_app(name: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || serve_app(name, conn));
        }
    });
    port
}

fn serve_app(name: &str, conn: TcpStream) {
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
        let mut host = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("host") {
                    host = v.trim().to_owned();
                }
            }
        }
        let body = format!("i am {name} host={host} path={target}\n");
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        if out.write_all(head.as_bytes()).is_err() || out.write_all(body.as_bytes()).is_err() {
            return;
        }
    }
}

fn server(name: &str, ip: &str, app_port: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: srv-{name}
  namespace: app
spec:
  address: {ip}
  serviceAccount: srv-{name}
  labels:
    app: srv-{name}
---
apiVersion: networking.istio.io/v1
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
      app: srv-{name}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: srv-{name}
  namespace: app
spec:
  workloadSelector:
    labels:
      app: srv-{name}
  ingress:
  - port:
      number: 8080
      protocol: HTTP
      name: http
    defaultEndpoint: 127.0.0.1:{app_port}
"#
    )
}

/// The mesh: STRICT mTLS, `cli` with one egress listener on :8080 for every service of its
/// namespace (`./*`), and the two servers.
fn mesh(block: u8, app_a: u16, app_b: u16) -> String {
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
  address: 127.1.{block}.1
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
    bind: 127.1.{block}.1
    hosts: ["./*"]
"#
    );
    [
        client,
        server("a", &format!("127.1.{block}.10"), app_a),
        server("b", &format!("127.1.{block}.11"), app_b),
    ]
    .join("---\n")
}

fn up(block: u8) -> Option<Ward> {
    if !have("curl") {
        skip_or_fail("host_routing", "curl is needed (apt-get install curl)");
        return None;
    }
    let (app_a, app_b) = (start_app("A"), start_app("B"));
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let ward = Ward::up(UpOptions {
        bin: env!("CARGO_BIN_EXE_ward"),
        admin,
        files: vec![("mesh.yaml", mesh(block, app_a, app_b))],
        extra_args: vec![],
        env: vec![],
    })
    .unwrap();
    Some(ward)
}

/// One curl run to the egress listener of block `block`, several requests (`--next`), each
/// `(path, Host)`; curl keeps one connection when it can. Returns each response as (status,
/// new connections curl made, body).
fn curl_requests(block: u8, extra: &[&str], requests: &[(&str, &str)]) -> Vec<(u16, u32, String)> {
    let mut cmd = Command::new("curl");
    for (i, (path, host)) in requests.iter().enumerate() {
        if i > 0 {
            cmd.arg("--next");
        }
        cmd.args(["-sS", "--max-time", "10"])
            .args(extra)
            .args(["-H", &format!("Host: {host}")])
            .args(["-w", "\n#%{http_code} %{num_connects}#\n"])
            .arg(format!("http://127.1.{block}.1:8080{path}"));
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut responses = Vec::new();
    let mut body = String::new();
    for line in text.lines() {
        match line.strip_prefix('#').and_then(|l| l.strip_suffix('#')) {
            Some(codes) => {
                let (code, connects) = codes.split_once(' ').unwrap();
                responses.push((
                    code.parse().unwrap(),
                    connects.parse().unwrap(),
                    std::mem::take(&mut body).trim().to_owned(),
                ));
            }
            None => {
                body.push_str(line);
                body.push('\n');
            }
        }
    }
    assert_eq!(
        responses.len(),
        requests.len(),
        "curl: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    responses
}

/// The outbound access-log line of the request for `path`.
fn logged(ward: &Ward, path: &str) -> serde_json::Value {
    ward.wait_for_log(
        &[("direction", "outbound"), ("path", path)],
        Duration::from_secs(5),
    )
    .unwrap()
}

#[test]
fn each_request_on_one_connection_goes_to_the_service_its_host_names() {
    let Some(ward) = up(80) else {
        return;
    };
    let responses = curl_requests(
        80,
        &[],
        &[
            ("/one", "a.app.svc.cluster.local"),
            ("/two", "b.app.svc.cluster.local"),
            ("/three", "a"),
            ("/four", "nope.example.com"),
            ("/five", "B.App:8080"),
        ],
    );
    let logs = ward.logs();
    assert_eq!(
        responses[0],
        (
            200,
            1,
            "i am A host=a.app.svc.cluster.local path=/one".to_owned()
        ),
        "{logs}"
    );
    // The same connection (no new connect), another service.
    assert_eq!(
        responses[1],
        (
            200,
            0,
            "i am B host=b.app.svc.cluster.local path=/two".to_owned()
        ),
        "{logs}"
    );
    // Kubernetes short names from the client's namespace, any case, with the port.
    assert_eq!(
        responses[2],
        (200, 0, "i am A host=a path=/three".to_owned())
    );
    // A name no service has: Envoy's 404 "no route", and the connection stays usable.
    assert_eq!(responses[3].0, 404, "{logs}");
    assert_eq!(responses[3].1, 0);
    assert_eq!(
        responses[4],
        (200, 0, "i am B host=B.App:8080 path=/five".to_owned())
    );

    let one = logged(&ward, "/one");
    let two = logged(&ward, "/two");
    let four = logged(&ward, "/four");
    assert_eq!(one["dst.service"], "a.app.svc.cluster.local", "{one}");
    assert_eq!(one["dst.workload"], "app/srv-a", "{one}");
    assert_eq!(one["response_code"], 200, "{one}");
    assert_eq!(
        one["dst.identity"], "spiffe://cluster.local/ns/app/sa/srv-a",
        "{one}"
    );
    assert_eq!(two["dst.service"], "b.app.svc.cluster.local", "{two}");
    assert_eq!(two["dst.workload"], "app/srv-b", "{two}");
    // One downstream connection carried them all.
    assert_eq!(one["src.addr"], two["src.addr"], "{one}\n{two}");
    assert_eq!(one["src.addr"], four["src.addr"], "{one}\n{four}");
    assert_eq!(four["response_code"], 404, "{four}");
    assert_eq!(four["response_flags"], "NR", "{four}");
    assert_eq!(four["authority"], "nope.example.com", "{four}");
    assert!(four.get("dst.service").is_none(), "{four}");

    // A WebSocket upgrade cannot be routed request by request: refused as Envoy does.
    let ws = curl_requests(
        80,
        &["-H", "Connection: Upgrade", "-H", "Upgrade: websocket"],
        &[("/ws", "a")],
    );
    assert_eq!(ws[0].0, 403, "{}", ward.logs());
    assert_eq!(
        logged(&ward, "/ws")["response_code_details"],
        "upgrade_failed"
    );
}

/// Requests `(path, authority)` on one HTTP/2 connection with prior knowledge (h2c) to the
/// egress listener of block `block`; each response's status and body.
fn h2c_requests(block: u8, requests: &[(&str, &str)]) -> Vec<(u16, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(format!("127.1.{block}.1:8080"))
            .await
            .unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        let mut out = Vec::new();
        for (path, authority) in requests {
            let mut client = client.clone().ready().await.unwrap();
            let req = http::Request::get(format!("http://{authority}{path}"))
                .body(())
                .unwrap();
            let (resp, _) = client.send_request(req, true).unwrap();
            let resp = resp.await.unwrap();
            let status = resp.status().as_u16();
            let mut body = resp.into_body();
            let mut bytes = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                let _ = body.flow_control().release_capacity(chunk.len());
                bytes.extend_from_slice(&chunk);
            }
            out.push((status, String::from_utf8_lossy(&bytes).trim().to_owned()));
        }
        out
    })
}

#[test]
fn h2c_streams_on_one_connection_are_routed_on_their_own() {
    let Some(ward) = up(81) else {
        return;
    };
    let responses = h2c_requests(
        81,
        &[
            ("/h2-one", "b.app.svc.cluster.local"),
            ("/h2-two", "a.app:8080"),
            ("/h2-three", "nope.example.com"),
            ("/h2-four", "b.app.svc"),
        ],
    );
    let logs = ward.logs();
    assert_eq!(
        responses,
        [
            (
                200,
                "i am B host=b.app.svc.cluster.local path=/h2-one".to_owned()
            ),
            (200, "i am A host=a.app:8080 path=/h2-two".to_owned()),
            (404, String::new()),
            (200, "i am B host=b.app.svc path=/h2-four".to_owned()),
        ],
        "{logs}"
    );
    let one = logged(&ward, "/h2-one");
    let two = logged(&ward, "/h2-two");
    assert_eq!(one["protocol"], "HTTP/2", "{one}");
    assert_eq!(one["dst.service"], "b.app.svc.cluster.local", "{one}");
    assert_eq!(two["dst.service"], "a.app.svc.cluster.local", "{two}");
    assert_eq!(one["src.addr"], two["src.addr"], "{one}\n{two}");
    assert_eq!(logged(&ward, "/h2-three")["response_flags"], "NR");
}
