//! End to end at L7: curl through the mesh to a real nginx, with HTTP AuthorizationPolicies.
//! Skips visibly without nginx/curl; CI installs them and requires every test.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{docs, mesh_pa, srv_policy, Mesh};
use ward_test_support::{curl, have, skip_or_fail, Nginx};

/// nginx as srv's app: every response body says what nginx received.
fn start_nginx(port: u16) -> Nginx {
    Nginx::start(port, "method=$request_method uri=$request_uri xfcc=$http_x_forwarded_client_cert rid=$http_x_request_id tp=$http_traceparent").unwrap()
}

/// The mesh with srv's port 9000 declared HTTP, nginx behind it.
fn http_mesh(block: u8) -> (Mesh, Nginx) {
    if !have("nginx") || !have("curl") {
        skip_or_fail(
            "http",
            "nginx and curl are needed (apt-get install nginx curl)",
        );
    }
    let mesh = Mesh::with_own_app(block).http();
    let nginx = start_nginx(mesh.app_port);
    (mesh, nginx)
}

fn tools_missing() -> bool {
    !have("nginx") || !have("curl")
}

fn url(mesh: &Mesh, path: &str) -> String {
    format!("http://{}{path}", mesh.via_cli())
}

#[test]
fn l7_methods_paths_and_identity_headers() {
    if tools_missing() {
        return skip_or_fail("l7_methods_paths", "nginx and curl are needed");
    }
    let (mesh, nginx) = http_mesh(20);
    let policy = docs(&[
        mesh_pa("STRICT"),
        srv_policy(
            "get-only",
            "  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/ns/app/sa/cli\"]\n    to:\n    - operation:\n        methods: [\"GET\", \"HEAD\"]\n",
        ),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: no-admin\n  namespace: app\nspec:\n  action: DENY\n  rules:\n  - to:\n    - operation:\n        paths: [\"/admin*\", \"/secret\"]\n".to_owned(),
    ]);
    let ward = mesh.up(&policy, &[]);

    let (code, body) = curl(&[
        &url(&mesh, "/fhir/Patient?name=x"),
        "-H",
        "x-forwarded-client-cert: By=spoof;URI=spiffe://cluster.local/ns/admin/sa/root",
    ]);
    assert_eq!(code, 200, "{body}\n{}", ward.logs());
    assert!(
        body.contains("method=GET uri=/fhir/Patient?name=x"),
        "{body}"
    );
    assert!(
        body.contains("URI=spiffe://cluster.local/ns/app/sa/cli"),
        "the app sees the caller's SPIFFE id: {body}"
    );
    assert!(
        body.contains("By=spiffe://cluster.local/ns/app/sa/srv"),
        "{body}"
    );
    // Envoy's XFCC shape: By, then the SHA-256 of the caller's certificate, Subject, URI.
    let xfcc = body
        .split("xfcc=")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    let hash = xfcc
        .split("Hash=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap();
    assert_eq!(hash.len(), 64, "{xfcc}");
    assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()), "{xfcc}");
    assert!(
        xfcc.contains(";Subject=\"\";URI=spiffe://cluster.local/ns/app/sa/cli"),
        "{xfcc}"
    );
    assert!(
        !body.contains("ns/admin/sa/root"),
        "a spoofed XFCC must be replaced: {body}"
    );
    assert!(
        body.contains("rid=") && !body.contains("rid= "),
        "x-request-id is set: {body}"
    );
    assert!(body.contains("tp=00-"), "traceparent is set: {body}");

    // Method not allowed → 403 with Envoy's body, naming no policy to the client.
    let (code, body) = curl(&["-X", "POST", &url(&mesh, "/fhir/Patient")]);
    assert_eq!((code, body.as_str()), (403, "RBAC: access denied"));
    let denied = ward
        .wait_for_log(
            &[("method", "POST"), ("response_code", "403")],
            Duration::from_secs(5),
        )
        .unwrap();
    assert!(
        denied["response_code_details"]
            .as_str()
            .unwrap()
            .contains("rbac_access_denied_matched_policy[none]"),
        "{denied}"
    );

    // Path bypass attempts against the DENY: each is denied (403) or refused (400), and nginx
    // never serves /admin or /secret.
    for (path, want) in [
        ("/admin", 403),
        ("/admin/users", 403),
        ("//admin", 403),
        ("/public/../admin", 403),
        ("/./admin", 403),
        ("/%61dmin", 403),
        ("/secret", 403),
        ("/secret#x", 403),
        ("/secret?x=1", 403),
        ("/admin%2F", 400),
        ("/%2Fadmin", 400),
        ("/public%2F..%2Fadmin", 400),
        ("/public%5C..%5Cadmin", 400),
        ("/%252e%252e/admin", 200),
    ] {
        let (code, body) = curl(&["--path-as-is", &url(&mesh, path)]);
        assert_eq!(code, want, "{path}: {body}");
    }
    let log = nginx.access_log();
    for line in log.lines() {
        assert!(
            !line.contains("\"GET /admin") && !line.contains("\"GET /secret"),
            "nginx served a protected path: {line}"
        );
    }

    // Repeated headers: every value is matched (CVE-2021-32777, CVE-2026-26308).
    let deny_role = docs(&[
        policy,
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: no-admin-role\n  namespace: app\nspec:\n  action: DENY\n  rules:\n  - when:\n    - key: request.headers[x-role]\n      values: [\"admin\"]\n".to_owned(),
    ]);
    ward.write_config("security.yaml", &deny_role).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while curl(&["-H", "x-role: admin", &url(&mesh, "/x")]).0 != 403 {
        assert!(Instant::now() < deadline, "policy not applied");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        curl(&[
            "-H",
            "x-role: user",
            "-H",
            "x-role: admin",
            &url(&mesh, "/x")
        ])
        .0,
        403
    );
    assert_eq!(curl(&["-H", "x-role: user", &url(&mesh, "/x")]).0, 200);
    assert_eq!(
        curl(&["-H", "x_role: admin", &url(&mesh, "/x")]).0,
        400,
        "underscore header names are refused"
    );

    // HTTP/2 with prior knowledge from the app (curl 7.88 cannot reuse an h2c connection for a
    // second URL, even against nginx, so curl makes one request and the h2 crate makes several
    // on one connection).
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
        ])
        .arg(url(&mesh, "/a"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200 2");
    let statuses = h2_requests(mesh.via_cli(), &["/a", "/admin", "/b", "/%2F"]);
    assert_eq!(
        statuses,
        [200, 403, 200, 400],
        "one HTTP/2 connection, each request decided on its own"
    );
    // HTTP/1.1 keep-alive: one connection, three decisions.
    let mut args = vec![
        "-sS".to_owned(),
        "--max-time".into(),
        "10".into(),
        "-w".into(),
        "%{http_code} %{num_connects}\n".into(),
    ];
    for p in ["/a", "/admin", "/b"] {
        args.extend(["-o".to_owned(), "/dev/null".to_owned(), url(&mesh, p)]);
    }
    let out = Command::new("curl").args(&args).output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["200 1", "403 0", "200 0"],
        "one connection, three decisions: {out}"
    );
}

/// Several requests on one HTTP/2 (prior knowledge) connection; their status codes.
fn h2_requests(addr: std::net::SocketAddr, paths: &[&str]) -> Vec<u16> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        let mut out = Vec::new();
        for p in paths {
            let mut client = client.clone().ready().await.unwrap();
            let req = http::Request::get(format!("http://{addr}{p}"))
                .body(())
                .unwrap();
            let (resp, _) = client.send_request(req, true).unwrap();
            out.push(resp.await.unwrap().status().as_u16());
        }
        out
    })
}

/// A server that answers an HTTP/1.1 `Upgrade` with 101, then echoes raw bytes (a WebSocket
/// stand-in: after 101 the proxy must carry opaque bytes both ways).
fn start_upgrade_echo(port: u16) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if c.read(&mut b).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                if !head.contains("upgrade: demo-proto") {
                    let _ = c.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
                    return;
                }
                let _ = c.write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: demo-proto\r\n\r\n");
                let mut buf = [0u8; 1024];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

#[test]
fn upgrade_carries_raw_bytes_after_101() {
    use std::io::{Read, Write};
    let mesh = Mesh::with_own_app(21).http();
    start_upgrade_echo(mesh.app_port);
    let _ward = mesh.up(&mesh_pa("STRICT"), &[]);
    let mut s = std::net::TcpStream::connect(mesh.via_cli()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nhost: srv\r\nconnection: upgrade\r\nupgrade: demo-proto\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut b).unwrap(),
            1,
            "connection closed before the 101: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    for msg in [
        &b"hello"[..],
        b"\x00\x01binary\xff",
        b"GET /admin HTTP/1.1\r\n\r\n",
    ] {
        s.write_all(msg).unwrap();
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(
            got, msg,
            "bytes after the upgrade are carried, never parsed as requests"
        );
    }
}

#[test]
fn grpc_trailers_reach_the_client() {
    // A gRPC-style h2c app: answers every POST with a body and `grpc-status` trailers.
    let mut mesh = Mesh::with_own_app(22);
    mesh.protocol = "GRPC";
    let app_port = mesh.app_port;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.spawn(async move {
        let l = tokio::net::TcpListener::bind(("127.0.0.1", app_port))
            .await
            .unwrap();
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let mut conn = h2::server::handshake(tcp).await.unwrap();
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let path = req.uri().path().to_owned();
                    let resp = http::Response::builder()
                        .header("content-type", "application/grpc")
                        .body(())
                        .unwrap();
                    let mut send = respond.send_response(resp, false).unwrap();
                    send.send_data(bytes::Bytes::from_static(b"\x00\x00\x00\x00\x02hi"), false)
                        .unwrap();
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", "0".parse().unwrap());
                    trailers.insert("grpc-message", path.parse().unwrap());
                    send.send_trailers(trailers).unwrap();
                }
            });
        }
    });
    let _ward = mesh.up(&mesh_pa("STRICT"), &[]);
    let addr = mesh.via_cli();
    let trailers = rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        let mut client = client.ready().await.unwrap();
        let req = http::Request::post(format!("http://{addr}/demo.Echo/Say"))
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        let (resp, mut body) = client.send_request(req, false).unwrap();
        body.send_data(bytes::Bytes::from_static(b"\x00\x00\x00\x00\x02yo"), true)
            .unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut data = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        assert_eq!(data, b"\x00\x00\x00\x00\x02hi");
        body.trailers().await.unwrap().unwrap()
    });
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "/demo.Echo/Say");
}

#[test]
fn large_and_chunked_bodies_stream_through() {
    use std::io::{Read, Write};
    // An app that counts the request body bytes (reading until the end of the chunked body)
    // and answers with a large body of its own.
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let mut mesh = Mesh::with_own_app(24).http();
    mesh.app_port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(c) = conn else { continue };
            std::thread::spawn(move || {
                let mut r = std::io::BufReader::new(c.try_clone().unwrap());
                let mut w = c;
                let mut line = String::new();
                let mut chunked = false;
                loop {
                    line.clear();
                    if std::io::BufRead::read_line(&mut r, &mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line
                        .to_ascii_lowercase()
                        .starts_with("transfer-encoding: chunked")
                    {
                        chunked = true;
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                assert!(
                    chunked,
                    "the sidecar must stream the upload, not buffer it into a Content-Length"
                );
                let mut total = 0usize;
                loop {
                    line.clear();
                    std::io::BufRead::read_line(&mut r, &mut line).unwrap();
                    let size = usize::from_str_radix(line.trim(), 16).unwrap();
                    let mut chunk = vec![0u8; size + 2];
                    r.read_exact(&mut chunk).unwrap();
                    total += size;
                    if size == 0 {
                        break;
                    }
                }
                let body = vec![b'z'; 8 * 1024 * 1024];
                write!(
                    w,
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-received: {total}\r\n\r\n",
                    body.len()
                )
                .unwrap();
                w.write_all(&body).unwrap();
            });
        }
    });
    let _ward = mesh.up(&mesh_pa("STRICT"), &[]);
    let dir = tempfile::tempdir().unwrap();
    let upload = dir.path().join("upload.bin");
    std::fs::write(&upload, vec![b'u'; 32 * 1024 * 1024 + 7]).unwrap();
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "60",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
        ])
        .arg(format!("@{}", upload.display()))
        .args([
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}\n",
        ])
        .arg(format!("http://{}/upload", mesh.via_cli()))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.to_ascii_lowercase().contains("x-received: 33554439"),
        "the app got every uploaded byte: {out}"
    );
    assert!(
        out.trim_end().ends_with("200 8388608"),
        "the 8 MiB response arrived whole: {out}"
    );
}
