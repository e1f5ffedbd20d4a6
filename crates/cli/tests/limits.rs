//! End to end: connection floods against a real `ward up` whose open-file limit the test sets
//! (a `sh` wrapper runs `ulimit`, then `exec`s ward, so the limits are ward's own).
//!
//! The mesh, on 127.1.<block>.x: `srv` (.10, port 9000, echo app; egress .10:9100 → oth), `oth`
//! (.20, port 9100, echo app), `cli` (.1, egress .1:9000 → srv and .1:9100 → oth). Flood
//! sockets come from .50, .51 and .52, which are no workload's.
#![allow(clippy::unwrap_used)]

use std::io::{ErrorKind, Read};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use ward_test_support::{echo_ok, free_port, http_get, skip_or_fail, UpOptions, Ward};

fn ip(block: u8, host: u8) -> String {
    format!("127.1.{block}.{host}")
}

fn addr(block: u8, host: u8, port: u16) -> SocketAddr {
    format!("{}:{port}", ip(block, host)).parse().unwrap()
}

fn workloads(block: u8) -> String {
    let (srv_app, oth_app) = (free_port(), free_port());
    let we = |name: &str, host: u8, demo: bool| {
        let ann = if demo {
            "\n  annotations:\n    ward.dev/demo-app: echo"
        } else {
            ""
        };
        format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: {name}\n  namespace: app{ann}\nspec:\n  address: {}\n  serviceAccount: {name}\n  labels:\n    app: {name}\n",
            ip(block, host)
        )
    };
    let se = |name: &str, port: u16| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: {name}\n  namespace: app\nspec:\n  hosts: [{name}.app.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports:\n  - {{number: {port}, name: tcp-{name}, protocol: TCP}}\n  workloadSelector:\n    labels:\n      app: {name}\n"
        )
    };
    let egress = |bind: u8, host: &str, port: u16| {
        format!(
            "  - port: {{number: {port}, name: tcp-{host}, protocol: TCP}}\n    bind: {}\n    hosts: [\"app/{host}.app.svc.cluster.local\"]\n",
            ip(block, bind)
        )
    };
    let sidecar = |name: &str, ingress: Option<(u16, u16)>, egress: &str| {
        let ingress = ingress
            .map(|(port, app)| {
                format!(
                    "  ingress:\n  - port: {{number: {port}, name: tcp-{name}, protocol: TCP}}\n    defaultEndpoint: 127.0.0.1:{app}\n"
                )
            })
            .unwrap_or_default();
        let egress = if egress.is_empty() {
            String::new()
        } else {
            format!("  egress:\n{egress}")
        };
        format!(
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata:\n  name: {name}\n  namespace: app\nspec:\n  workloadSelector:\n    labels:\n      app: {name}\n{ingress}{egress}"
        )
    };
    [
        "apiVersion: sailoperator.io/v1\nkind: Istio\nmetadata:\n  name: default\nspec:\n  namespace: istio-system\n  values:\n    meshConfig:\n      trustDomain: cluster.local\n".to_owned(),
        we("srv", 10, true),
        we("oth", 20, true),
        we("cli", 1, false),
        se("srv", 9000),
        se("oth", 9100),
        sidecar("srv", Some((9000, srv_app)), &egress(10, "oth", 9100)),
        sidecar("oth", Some((9100, oth_app)), ""),
        sidecar(
            "cli",
            None,
            &format!("{}{}", egress(1, "srv", 9000), egress(1, "oth", 9100)),
        ),
    ]
    .join("---\n")
}

/// `Max open files` of a process: (soft, hard).
fn nofile(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

/// Start ward with its open-file limits set to `soft`/`hard`; `None` when this process's own
/// hard limit is too low to hand `hard` down and it may not raise it (not root): the test skips.
fn ward_with_nofile(
    block: u8,
    soft: u64,
    hard: u64,
    args: &[&str],
) -> Option<(Ward, tempfile::TempDir)> {
    let (_, our_hard) = nofile(std::process::id());
    if our_hard < hard && !ward_test_support::is_root() {
        skip_or_fail(
            "limits",
            &format!("the test's hard open-file limit {our_hard} is below {hard}"),
        );
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("ward-nofile.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nulimit -S -n {soft} && ulimit -H -n {hard} && exec '{}' \"$@\"\n",
            env!("CARGO_BIN_EXE_ward")
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ward = Ward::up(UpOptions {
        bin: wrapper.to_str().unwrap(),
        admin: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        files: vec![("mesh.yaml", workloads(block))],
        extra_args: args.iter().map(|s| s.to_string()).collect(),
        env: vec![],
    })
    .unwrap();
    Some((ward, dir))
}

/// Idle TCP connections from one source: they never send a byte, like a client that never
/// starts its TLS handshake.
struct Flood {
    socks: Vec<Socket>,
    /// Reset so early that `connect` itself reported it.
    reset_at_connect: usize,
}

/// `n` connections from `src` to `dst`.
fn open_from(src: &str, dst: SocketAddr, n: usize) -> Flood {
    let bind: SocketAddr = format!("{src}:0").parse().unwrap();
    let mut flood = Flood {
        socks: Vec::new(),
        reset_at_connect: 0,
    };
    for _ in 0..n {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.bind(&bind.into()).unwrap();
        match s.connect_timeout(&dst.into(), Duration::from_secs(3)) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                flood.reset_at_connect += 1;
                continue;
            }
            Err(e) => panic!("connect {src} → {dst}: {e}"),
        }
        s.set_nonblocking(true).unwrap();
        flood.socks.push(s);
    }
    flood
}

#[derive(Debug, Default, PartialEq)]
struct States {
    /// Still open: the server is waiting for the handshake.
    alive: usize,
    /// Reset by the server.
    reset: usize,
    /// Closed cleanly (or anything else).
    closed: usize,
}

fn states(flood: &Flood) -> States {
    let mut st = States {
        reset: flood.reset_at_connect,
        ..States::default()
    };
    for s in &flood.socks {
        let mut buf = [0u8; 1];
        let mut r: &Socket = s;
        match r.read(&mut buf) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => st.alive += 1,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => st.reset += 1,
            _ => st.closed += 1,
        }
    }
    st
}

/// `ward_connections_refused_total` for srv's HBONE listener, summed over `reason` (or all).
fn refused(ward: &Ward, reason: Option<&str>) -> u64 {
    let (status, body) = http_get(ward.admin, "/metrics").unwrap();
    assert_eq!(status, 200);
    body.lines()
        .filter(|l| l.starts_with("ward_connections_refused_total{"))
        .filter(|l| l.contains("listener=\"hbone\"") && l.contains("workload=\"app/srv\""))
        .filter(|l| reason.is_none_or(|r| l.contains(&format!("reason=\"{r}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn wait_refused(ward: &Ward, reason: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while refused(ward, Some(reason)) < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        refused(ward, Some(reason)),
        want,
        "refusals for {reason}; log:\n{}",
        ward.logs()
    );
}

fn ready(ward: &Ward) -> bool {
    matches!(http_get(ward.admin, "/ready"), Ok((200, _)))
}

#[test]
fn one_source_cannot_take_an_hbone_listener_and_the_soft_limit_is_raised() {
    let b = 40;
    let Some((ward, _wrapper)) = ward_with_nofile(
        b,
        128,
        1024,
        &[
            "--max-connections-per-source",
            "50",
            "--max-connections-per-listener",
            "100",
        ],
    ) else {
        return;
    };
    // The soft limit was raised to the hard one, and the old and new values were logged.
    assert_eq!(nofile(ward.pid()), (1024, 1024), "/proc/<ward>/limits");
    let raised = ward
        .wait_for_log(
            &[("message", "raised the soft open-file limit")],
            Duration::from_secs(1),
        )
        .unwrap();
    assert_eq!(
        (raised["from"].as_str(), raised["to"].as_u64()),
        (Some("128"), Some(1024))
    );

    // 120 idle connections from one source: 50 are held (waiting for a handshake that never
    // comes), 70 are reset at once and counted.
    let hbone = addr(b, 10, 15008);
    let flood = open_from(&ip(b, 50), hbone, 120);
    wait_refused(&ward, "source_connections", 70);
    std::thread::sleep(Duration::from_millis(100));
    let st = states(&flood);
    assert_eq!(
        st,
        States {
            alive: 50,
            reset: 70,
            closed: 0
        }
    );

    // Another source address is not held back by the first one's flood.
    let other = open_from(&ip(b, 51), hbone, 30);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(states(&other).alive, 30, "a second source must be admitted");
    assert_eq!(refused(&ward, None), 70);

    // The mesh still works: into the flooded sidecar (cli → srv, a new HBONE connection from
    // cli's address), out of it (srv's egress → oth), and the admin port answers.
    assert!(
        echo_ok(addr(b, 1, 9000), "cli to srv"),
        "cli → srv during the flood; log:\n{}",
        ward.logs()
    );
    assert!(
        echo_ok(addr(b, 10, 9100), "srv to oth"),
        "srv's own outbound during the flood; log:\n{}",
        ward.logs()
    );
    assert!(ready(&ward), "/ready during the flood");

    // A third source fills the listener up to its cap of 100; the rest is refused as such.
    let third = open_from(&ip(b, 52), hbone, 40);
    let deadline = Instant::now() + Duration::from_secs(5);
    while refused(&ward, Some("listener_connections")) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    let held = states(&flood).alive + states(&other).alive + states(&third).alive;
    assert!(held <= 100, "{held} connections held past the listener cap");
    assert_eq!(
        refused(&ward, Some("listener_connections")),
        40 - states(&third).alive as u64
    );
    assert!(refused(&ward, Some("listener_connections")) > 0);
    // The other listeners of the process are untouched.
    assert!(
        echo_ok(addr(b, 10, 9100), "srv to oth again"),
        "srv's egress with its HBONE listener full; log:\n{}",
        ward.logs()
    );
    assert!(echo_ok(addr(b, 1, 9100), "cli to oth"));
    assert!(ready(&ward), "/ready with the HBONE listener full");

    // Over 90 refusals, logged in a line or two (at most one per listener every 10 s).
    let lines = ward.log_lines_matching(&[("listener", "hbone"), ("workload", "app/srv")]);
    assert!(
        (1..=2).contains(&lines.len()),
        "refusal log lines: {lines:#?}"
    );
    assert!(lines[0]["message"]
        .as_str()
        .unwrap()
        .contains("connections refused"));
}

/// With hard and soft limits of 256 the limit cannot be raised; a flood of 300 idle connections
/// from one source at one sidecar's HBONE port (more than the process has descriptors) must still
/// leave the other listeners, the outbound dials and the admin port working. Default caps.
#[test]
fn a_flood_beyond_the_open_file_limit_starves_no_other_listener() {
    let b = 41;
    let Some((ward, _wrapper)) = ward_with_nofile(b, 256, 256, &[]) else {
        return;
    };
    let flood = open_from(&ip(b, 50), addr(b, 10, 15008), 300);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        echo_ok(addr(b, 1, 9100), "cli to oth"),
        "another sidecar's egress during the flood; log:\n{}",
        ward.logs()
    );
    assert!(
        echo_ok(addr(b, 10, 9100), "srv to oth"),
        "the flooded sidecar's own egress during the flood; log:\n{}",
        ward.logs()
    );
    assert!(ready(&ward), "/ready during the flood");
    // The flood was cut at the listener's share of the budget: with 256 descriptors, 64 are
    // kept back and the rest is 96 connections, 48 of them for one listener.
    let st = states(&flood);
    assert_eq!(st.alive, 48, "{st:?}");
    assert_eq!(refused(&ward, Some("listener_connections")), 252);
}
