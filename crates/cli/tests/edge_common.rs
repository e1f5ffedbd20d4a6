//! What the ingress gateway tests (`ingress.rs`, `ingress_hardening.rs`, `ingress_grpc.rs`,
//! `ingress_websocket.rs` and others) share: the backend app behind the gateway, the YAML of the
//! workloads around it, and running a Python client script.
// Shared by several test binaries, each using a different subset: hence dead_code and the
// pub items that are unreachable from any one of them.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

/// The request targets the app received, in order.
pub type Seen = Arc<Mutex<Vec<String>>>;

/// An HTTP/1.1 app (keep-alive) on a free 127.0.0.1 port, answering 200 with
/// `app=web path=<target> host=<Host> h[x-...]=...` (every `x-` header it received, in order).
pub fn start_app() -> (u16, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let s = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let s = s.clone();
            std::thread::spawn(move || serve_app(conn, &s));
        }
    });
    (port, seen)
}

fn serve_app(conn: TcpStream, seen: &Seen) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let target = line.split(' ').nth(1).unwrap_or("").to_owned();
        let (mut host, mut length, mut extra) = (String::new(), 0usize, String::new());
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                match k.as_str() {
                    "host" => host = v.to_owned(),
                    "content-length" => length = v.parse().unwrap_or(0),
                    _ if k.starts_with("x-") => extra.push_str(&format!(" h[{k}]={v}")),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        seen.lock().unwrap().push(target.clone());
        let body = format!("app=web path={target} host={host}{extra}\n");
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        if out.write_all(head.as_bytes()).is_err() || out.write_all(body.as_bytes()).is_err() {
            return;
        }
    }
}

/// The value of header `name` (lowercase, `x-` prefixed) in an answer of [`start_app`].
pub fn header_in(answer: &str, name: &str) -> Option<String> {
    let start = format!(" h[{name}]=");
    let at = answer.find(&start)? + start.len();
    let rest = &answer[at..];
    let end = rest.find(" h[").unwrap_or(rest.len());
    Some(rest[..end].trim_end().to_owned())
}

/// A WorkloadEntry.
pub fn workload(name: &str, ns: &str, ip: &str, sa: &str, labels: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec:\n  address: {ip}\n  serviceAccount: {sa}\n  labels: {{{labels}}}\n---\n"
    )
}

/// A mesh workload `name` in namespace `app` at `ip`, whose sidecar serves `port` and sends it
/// to the app on 127.0.0.1:`app_port`, and its service `name.app.svc.cluster.local`.
pub fn backend(name: &str, ip: &str, port: u16, protocol: &str, app_port: u16) -> String {
    format!(
        "{}apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: {name}, namespace: app}}\n\
         spec:\n  workloadSelector: {{labels: {{app: {name}}}}}\n  ingress:\n  - port: {{number: {port}, protocol: {protocol}, name: p}}\n    defaultEndpoint: 127.0.0.1:{app_port}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: app}}\n\
         spec:\n  hosts: [{name}.app.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  \
         ports: [{{number: {port}, name: p, protocol: {protocol}}}]\n  workloadSelector: {{labels: {{app: {name}}}}}\n---\n",
        workload(name, "app", ip, name, &format!("app: {name}"))
    )
}

/// The start of a gateway test's mesh: STRICT mTLS, the ingress gateway workload `ingress`
/// (`istio: ingressgateway`, service account `istio-ingressgateway`) at `ip`, and the head of
/// its Gateway `istio-system/edge`, to be followed by the `servers` list.
pub fn gateway_mesh(ip: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: istio-system}}\n\
         spec: {{mtls: {{mode: STRICT}}}}\n---\n{}",
        workload(
            "ingress",
            "istio-system",
            ip,
            "istio-ingressgateway",
            "istio: ingressgateway"
        )
    )
}

/// The head of the Gateway `istio-system/edge` (selector `istio: ingressgateway`), to be
/// followed by its `servers` items.
pub const GATEWAY_HEAD: &str = "apiVersion: networking.istio.io/v1\nkind: Gateway\n\
    metadata: {name: edge, namespace: istio-system}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n";

/// Runs `python3 ARGS` (a test's client script) and parses the one JSON object it prints.
pub fn python_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new("python3")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("{e}: {text}\n{}", String::from_utf8_lossy(&out.stderr)))
}
