//! End to end: DestinationRule `connectionPool.tcp` on whole TCP connections (docs/routing.md,
//! "Connection pool and outlier detection"): a client sidecar's TCP egress listener forwards to
//! an external TCP echo service, with `ward up`, real sockets and the kernel's own view of the
//! proxy's upstream socket (`/proc/net/tcp`).
//!
//! Addresses, in 127.1.220.x: .2 the client `cli` (egress listener :9000 for namespace `app`),
//! .20 the echo server (`echo.example.com`, MESH_EXTERNAL, plaintext).
#![allow(clippy::unwrap_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use ward_test_support::{free_port, UpOptions, Ward};

const CLIENT: &str = "127.1.220.2";
const ECHO: &str = "127.1.220.20";

/// A TCP echo server on `ECHO`; its port.
fn start_echo() -> u16 {
    let listener = TcpListener::bind(format!("{ECHO}:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = [0u8; 1024];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

fn config(echo_port: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: cli, namespace: app}}
spec: {{address: {CLIENT}, serviceAccount: cli, labels: {{app: cli}}}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: cli, namespace: app}}
spec:
  workloadSelector: {{labels: {{app: cli}}}}
  egress:
  - port: {{number: 9000, protocol: TCP, name: tcp}}
    bind: {CLIENT}
    hosts: ["./*"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo, namespace: app}}
spec:
  hosts: [echo.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 9000, name: tcp, protocol: TCP, targetPort: {echo_port}}}]
  endpoints: [{{address: {ECHO}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: echo, namespace: app}}
spec:
  host: echo.example.com
  trafficPolicy:
    connectionPool:
      tcp:
        maxConnections: 1
        connectTimeout: 2s
        maxConnectionDuration: 3s
        tcpKeepalive: {{time: 7s, interval: 3s, probes: 4}}
"#
    )
}

/// A connection through the client's egress listener that echoes `hello`.
fn echoing() -> TcpStream {
    let mut s = TcpStream::connect(format!("{CLIENT}:9000")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"hello").unwrap();
    let mut got = [0u8; 5];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");
    s
}

/// Whether the proxy closed `s`: a read ends (end of data or reset) within `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 16];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    }
}

/// `ip:port` as `/proc/net/tcp` spells it (little-endian hex address on x86).
fn proc_addr(addr: SocketAddr) -> String {
    let SocketAddr::V4(v4) = addr else {
        panic!("IPv4 only")
    };
    let ip = u32::from_ne_bytes(v4.ip().octets());
    format!("{ip:08X}:{:04X}", v4.port())
}

/// The kernel's timer of the proxy's socket to `remote`, from `/proc/net/tcp`: (timer kind,
/// ticks until it fires). Kind 2 is the keepalive timer.
fn upstream_timer(remote: SocketAddr) -> Option<(u8, u64)> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let rem = proc_addr(remote);
    let local_ip = proc_addr(SocketAddr::new(CLIENT.parse().unwrap(), 0));
    let local_ip = local_ip.split(':').next().unwrap_or_default().to_owned();
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (local, remote_f, timer) = (f.get(1)?, f.get(2)?, f.get(5)?);
        if *remote_f != rem || !local.starts_with(&local_ip) {
            return None;
        }
        let (kind, when) = timer.split_once(':')?;
        Some((
            u8::from_str_radix(kind, 16).ok()?,
            u64::from_str_radix(when, 16).ok()?,
        ))
    })
}

#[test]
fn tcp_connection_pool_limits_whole_connections() {
    let echo_port = start_echo();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let ward = Ward::up(UpOptions {
        bin: env!("CARGO_BIN_EXE_ward"),
        admin,
        files: vec![("mesh.yaml", config(echo_port))],
        extra_args: vec![],
        env: vec![],
    })
    .unwrap();
    let logs = || ward.logs();

    // maxConnections 1: the first connection is carried...
    let mut first = echoing();
    let opened = Instant::now();

    // ...with tcpKeepalive on the proxy's socket to the echo server: the kernel runs its
    // keepalive timer (kind 2), due within `time` (7s, in USER_HZ ticks of 1/100s).
    let remote: SocketAddr = format!("{ECHO}:{echo_port}").parse().unwrap();
    // (A retransmission timer may still be pending for an instant after the echo.)
    let mut timer = upstream_timer(remote);
    for _ in 0..20 {
        if matches!(timer, Some((2, _))) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        timer = upstream_timer(remote);
    }
    match timer {
        Some((2, when)) => assert!(when <= 700, "keepalive due in {when} ticks"),
        other => panic!("no keepalive timer on the upstream socket: {other:?}"),
    }

    // ...and a second one at the same time overflows: closed at once, logged `UO`.
    let mut second = TcpStream::connect(format!("{CLIENT}:9000")).unwrap();
    let _ = second.write_all(b"hello");
    assert!(
        closed_within(&mut second, Duration::from_secs(3)),
        "{}",
        logs()
    );
    let line = ward
        .wait_for_log(
            &[("direction", "outbound"), ("response_flags", "UO")],
            Duration::from_secs(5),
        )
        .unwrap_or_else(|e| panic!("no UO line ({e}): {}", logs()));
    assert!(
        line["error"]
            .as_str()
            .unwrap_or("")
            .contains("maxConnections"),
        "{line}"
    );

    // maxConnectionDuration 3s: the first connection is closed by the proxy, not before.
    assert!(
        closed_within(&mut first, Duration::from_secs(8)),
        "{}",
        logs()
    );
    let lived = opened.elapsed();
    assert!(
        lived >= Duration::from_millis(2500) && lived < Duration::from_secs(8),
        "closed after {lived:?}"
    );
    ward.wait_for_log(
        &[("direction", "outbound"), ("response_flags", "DT")],
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("no DT line ({e}): {}", logs()));

    // Its place is free again.
    drop(first);
    let _third = echoing();

    // The overflow is counted as Envoy's would be: a failed TCP connection with flag UO.
    let (code, text) = ward_test_support::http_get(ward.admin, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        text.lines()
            .any(|l| l.starts_with("istio_tcp_connections_failed")
                && l.contains("response_flags=\"UO\"")),
        "no UO in the metrics:\n{text}"
    );
}
