//! Transparent capture end to end (docs/capture.md): four network namespaces on one bridge
//! (subnet 10.231.0.0/16), one `ward up --workloads X --capture` in each of three of them on the
//! same YAML and a shared `--state-dir` (one CA), and apps that know nothing of the mesh: they
//! dial a service's virtual IP or a workload's address, and the iptables rules bring the
//! connection through the proxies, over HBONE/mTLS, under policy.
//!
//! Needs root and `ip netns`, `iptables`, `python3` and `tcpdump`; otherwise prints `SKIPPED`
//! (and fails under CI's `WARD_E2E_REQUIRE_ALL=1`).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use ward_test_support::netns::{
    kill_and_wait, must, run, wait_for_file, Topology, CLIENT, ECHO_SERVER,
};
use ward_test_support::{have, is_root, skip_or_fail, UpOptions, Ward};

const TEST: &str = "capture";

const MESH: &str = r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: cli, namespace: app}
spec: {address: 10.231.0.1, serviceAccount: cli, labels: {app: cli}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: srv, namespace: app}
spec: {address: 10.231.0.2, serviceAccount: srv, labels: {app: srv}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: other, namespace: jobs}
spec: {address: 10.231.0.3, serviceAccount: other, labels: {app: other}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: srv, namespace: app}
spec:
  hosts: [srv.app.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector: {labels: {app: srv}}
  ports:
  - {number: 9000, name: tcp-echo}
  - {number: 80, name: http-web, targetPort: 8080}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-jobs, namespace: app}
spec:
  selector: {matchLabels: {app: srv}}
  action: DENY
  rules: [{from: [{source: {namespaces: [jobs]}}]}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: cli, namespace: app}
spec:
  workloadSelector: {labels: {app: cli}}
  egress:
  - port: {number: 9000}
    bind: 127.0.0.1
    hosts: [app/srv.app.svc.cluster.local]
  outboundTrafficPolicy: {mode: ALLOW_ANY}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: other, namespace: jobs}
spec:
  workloadSelector: {labels: {app: other}}
"#;

/// A TLS client from inside a namespace: sends a ClientHello for `sni` to `host:port`; prints
/// `RESET`, `CLOSED` or `HANDSHAKE` (it must never complete).
const TLS_HELLO: &str = r#"
import socket, ssl, sys
host, port, sni = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context()
s = socket.create_connection((host, port), timeout=10)
try:
    ctx.wrap_socket(s, server_hostname=sni)
    print("HANDSHAKE")
except ConnectionResetError:
    print("RESET")
except (ssl.SSLError, OSError) as e:
    print("CLOSED %s" % type(e).__name__)
"#;

/// An HTTP/1.1 GET from inside a namespace (optionally from `src`): prints the status or `RESET`.
const HTTP_GET: &str = r#"
import socket, sys
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
src = sys.argv[4] if len(sys.argv) > 4 else None
s = socket.socket()
s.settimeout(10)
try:
    if src:
        s.bind((src, 0))
    s.connect((host, port))
    s.sendall(("GET %s HTTP/1.1\r\nHost: srv.app.svc.cluster.local\r\nConnection: close\r\n\r\n" % path).encode())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    line = data.split(b"\r\n", 1)[0].decode(errors="replace")
    print("STATUS " + (line.split(" ")[1] if " " in line else line) if data else "CLOSED")
except ConnectionResetError:
    print("RESET")
except Exception as e:
    print("ERROR %s %s" % (type(e).__name__, e))
"#;

/// `ward up --capture` for `workload` in namespace `name`, admin on its workload address.
fn start(
    topo: &Topology,
    dir: &Path,
    name: &str,
    ip: &str,
    workload: &str,
    extra: &[&str],
) -> Ward {
    let bin = ward_test_support::netns::ward_in(env!("CARGO_BIN_EXE_ward"), dir, &topo.ns(name));
    let mut args: Vec<String> = [
        "--state-dir",
        dir.join("state").to_str().unwrap(),
        "--workloads",
        workload,
        "--capture",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    Ward::up(UpOptions {
        bin: bin.to_str().unwrap(),
        admin: format!("{ip}:15000").parse().unwrap(),
        files: vec![("mesh.yaml", MESH.to_owned())],
        extra_args: args,
        env: vec![],
    })
    .unwrap()
}

/// The access record of `ward` matching `pairs`, waited for.
fn record(ward: &Ward, pairs: &[(&str, &str)]) -> serde_json::Value {
    ward.wait_for_log(pairs, Duration::from_secs(10)).unwrap()
}

/// Ward's rules in both families' nat tables.
fn ward_rules(nat: &str) -> usize {
    nat.lines().filter(|l| l.contains("WARD_")).count()
}

#[test]
fn captured_apps_reach_services_over_mtls_under_policy() {
    if !is_root() {
        return skip_or_fail(TEST, "needs root (network namespaces, iptables)");
    }
    for program in [
        "ip",
        "iptables-save",
        "iptables-restore",
        "ip6tables-save",
        "ip6tables-restore",
        "python3",
        "tcpdump",
    ] {
        if !have(program) {
            return skip_or_fail(TEST, &format!("needs {program}"));
        }
    }
    if !run("ip", &["netns", "list"]).status.success() {
        return skip_or_fail(TEST, "`ip netns` is not available");
    }
    let topo = Topology::build("cap", 231, &["a", "b", "c", "d"]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    // The apps of srv (namespace b) and of a host outside the mesh (d).
    let _echo = topo.spawn(
        "b",
        "python3",
        &["-c", ECHO_SERVER, "9000"],
        &dir.join("echo.log"),
    );
    let _web = topo.spawn(
        "b",
        "python3",
        &["-m", "http.server", "8080", "--bind", "0.0.0.0"],
        &dir.join("web.log"),
    );
    let _outside = topo.spawn(
        "d",
        "python3",
        &["-c", ECHO_SERVER, "7000"],
        &dir.join("outside.log"),
    );
    let wire = dir.join("bridge.pcap");
    let _tcpdump = topo.spawn(
        "br",
        "tcpdump",
        &[
            "-i",
            "br0",
            "-U",
            // Deliver each packet at once (without it libpcap holds packets in a kernel ring
            // block for up to a second, and the pcap read below may not hold them yet).
            "--immediate-mode",
            "-s",
            "0",
            "-w",
            wire.to_str().unwrap(),
            "tcp",
        ],
        &dir.join("tcpdump.log"),
    );
    wait_for_file(&wire);

    // srv first: it creates the CA the others share.
    let srv = start(
        &topo,
        dir,
        "b",
        "10.231.0.2",
        "app/srv",
        &["--capture-probe-source", "169.254.7.127"],
    );
    let cli = start(&topo, dir, "a", "10.231.0.1", "app/cli", &[]);
    let other = start(&topo, dir, "c", "10.231.0.3", "jobs/other", &[]);

    let dump = cli.admin_json("/config_dump").unwrap();
    let services = &dump["snapshot"]["proxies"]["app/cli"]["services"];
    let vip_net = services["srv.app.svc.cluster.local"]["addresses"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let vip = vip_net.trim_end_matches("/32");
    assert!(
        vip.starts_with("240.240."),
        "auto-allocated from 240.240.0.0/16: {vip}"
    );

    // 1. The app dials the service address: captured, carried over HBONE with mTLS.
    let secret = "ward-capture-secret-payload-7c1e";
    assert_eq!(
        topo.python("a", CLIENT, &[vip, "9000", secret]),
        format!("REPLY {secret}"),
        "cli log:\n{}",
        cli.logs()
    );
    let inbound = record(
        &srv,
        &[
            ("direction", "inbound"),
            ("message", "connection complete"),
            ("dst.addr", "10.231.0.2:9000"),
        ],
    );
    assert_eq!(
        inbound["src.identity"],
        "spiffe://cluster.local/ns/app/sa/cli"
    );
    assert_eq!(inbound["tls.version"], "TLSv1.3");
    let outbound = record(
        &cli,
        &[
            ("direction", "outbound"),
            ("message", "connection complete"),
        ],
    );
    assert_eq!(outbound["dst.service"], "srv.app.svc.cluster.local");
    assert_eq!(
        outbound["dst.identity"],
        "spiffe://cluster.local/ns/app/sa/srv"
    );

    // 2. The app dials the workload's address directly: the same, to that workload.
    assert_eq!(
        topo.python("a", CLIENT, &["10.231.0.2", "9000", "direct"]),
        "REPLY direct"
    );

    // 2b. The app's explicit Sidecar egress listener keeps working under capture.
    assert_eq!(
        topo.python("a", CLIENT, &["127.0.0.1", "9000", "explicit"]),
        "REPLY explicit"
    );
    record(
        &cli,
        &[
            ("direction", "outbound"),
            ("dst.service", "srv.app.svc.cluster.local"),
            ("src.addr", "127.0.0.1:"),
        ],
    );

    // 3. An HTTP port: served on the HTTP path (a request record) behind the service port.
    assert_eq!(topo.python("a", HTTP_GET, &[vip, "80", "/"]), "STATUS 200");
    let request = record(
        &srv,
        &[
            ("message", "request complete"),
            ("dst.addr", "10.231.0.2:8080"),
        ],
    );
    assert_eq!(
        request["src.identity"],
        "spiffe://cluster.local/ns/app/sa/cli"
    );

    // 4. The AuthorizationPolicy DENY applies to captured traffic.
    assert_eq!(
        topo.python("c", CLIENT, &[vip, "9000", "from-jobs"]),
        "RESET"
    );
    let denied = record(
        &srv,
        &[
            ("src.identity", "spiffe://cluster.local/ns/jobs/sa/other"),
            ("authz.decision", "deny"),
        ],
    );
    assert!(
        denied["authz.detail"].as_str().unwrap().contains("no-jobs"),
        "{denied}"
    );

    // 5. REGISTRY_ONLY (Ward's default: `other`'s Sidecar says nothing): an address that is
    // no service and no workload is refused.
    assert_eq!(
        topo.python("c", CLIENT, &["10.231.0.4", "7000", "unknown"]),
        "RESET"
    );
    let blackhole = record(&other, &[("upstream_cluster", "BlackHoleCluster")]);
    assert_eq!(blackhole["dst.addr"], "10.231.0.4:7000");
    assert_eq!(blackhole["response_flags"], "NR");
    assert_eq!(
        blackhole["src.identity"],
        "spiffe://cluster.local/ns/jobs/sa/other"
    );

    // 5b. TLS to an unknown address: closed, and the SNI it asked for is recorded.
    let tls = topo.python("c", TLS_HELLO, &["10.231.0.4", "7443", "exfil.example.net"]);
    assert!(tls == "RESET" || tls.starts_with("CLOSED"), "{tls}");
    let rec = record(
        &other,
        &[
            ("upstream_cluster", "BlackHoleCluster"),
            ("requested.host", "exfil.example.net"),
        ],
    );
    assert_eq!(rec["requested.from"], "sni");
    assert_eq!(rec["dst.addr"], "10.231.0.4:7443");

    // 5c. HTTP on an HTTP port of the mesh (80: srv's `http-web`) to an unknown address: a
    // direct 502 from the proxy, as Istio answers.
    assert_eq!(
        topo.python("c", HTTP_GET, &["10.231.0.4", "80", "/export"]),
        "STATUS 502"
    );
    record(
        &other,
        &[
            ("upstream_cluster", "BlackHoleCluster"),
            ("dst.addr", "10.231.0.4:80"),
            ("requested.from", "host"),
        ],
    );
    let metrics = ward_test_support::http_get(other.admin, "/metrics")
        .unwrap()
        .1;
    for series in [
        r#"ward_egress_blocked_total{source_workload="jobs/other",source_namespace="jobs",host="exfil.example.net",port="7443",protocol="tls"} 1"#,
        r#"ward_egress_blocked_total{source_workload="jobs/other",source_namespace="jobs",host="srv.app.svc.cluster.local",port="80",protocol="http"} 1"#,
    ] {
        assert!(metrics.contains(series), "{series}\n{metrics}");
    }

    // 6. ALLOW_ANY (cli's Sidecar): the same destination from cli goes straight there, plaintext.
    let outside = "ward-capture-passthrough-payload-3f9a";
    assert_eq!(
        topo.python("a", CLIENT, &["10.231.0.4", "7000", outside]),
        format!("REPLY {outside}")
    );
    record(
        &cli,
        &[
            ("upstream_cluster", "PassthroughCluster"),
            ("dst.addr", "10.231.0.4:7000"),
        ],
    );

    // 6b. IPv6 is captured too: REGISTRY_ONLY refuses it, ALLOW_ANY passes it through.
    assert_eq!(
        topo.python("c", CLIENT, &["fd00:231::4", "7000", "unknown6"]),
        "RESET"
    );
    record(
        &other,
        &[
            ("upstream_cluster", "BlackHoleCluster"),
            ("dst.addr", "[fd00:231::4]:7000"),
        ],
    );
    assert_eq!(
        topo.python("a", CLIENT, &["fd00:231::4", "7000", "six"]),
        "REPLY six"
    );
    record(
        &cli,
        &[
            ("upstream_cluster", "PassthroughCluster"),
            ("dst.addr", "[fd00:231::4]:7000"),
        ],
    );

    // 7. STRICT: a plaintext client from a host outside the mesh is refused at the inbound
    // capture port, and so is its HTTP probe from its own address.
    assert_eq!(
        topo.python("d", CLIENT, &["10.231.0.2", "9000", "plaintext"]),
        "RESET"
    );
    let strict = record(
        &srv,
        &[
            ("src.addr", "10.231.0.4:"),
            ("authz.detail", "peer_authentication_strict"),
        ],
    );
    assert_eq!(strict["dst.addr"], "10.231.0.2:9000");
    assert_eq!(
        topo.python("d", HTTP_GET, &["10.231.0.2", "8080", "/"]),
        "RESET"
    );

    // 8. Health probes: from the probe source address, plaintext HTTP reaches the app.
    must(
        "ip",
        &[
            "-n",
            &topo.ns("d"),
            "addr",
            "add",
            "169.254.7.127/32",
            "dev",
            "veth0",
        ],
    );
    must(
        "ip",
        &[
            "-n",
            &topo.ns("b"),
            "route",
            "add",
            "169.254.7.127/32",
            "dev",
            "veth0",
        ],
    );
    assert_eq!(
        topo.python("d", HTTP_GET, &["10.231.0.2", "8080", "/", "169.254.7.127"]),
        "STATUS 200"
    );

    // A probe from inside the namespace to the workload's own address is captured outbound and
    // comes back over HBONE as the workload itself.
    assert_eq!(
        topo.python("b", HTTP_GET, &["10.231.0.2", "8080", "/"]),
        "STATUS 200"
    );
    record(
        &srv,
        &[
            ("src.identity", "spiffe://cluster.local/ns/app/sa/srv"),
            ("message", "request complete"),
        ],
    );

    // 9. The wire: the passthrough payload crossed the bridge in the clear (so the capture
    // sees payloads), the one sent to the service never did.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut pcap = std::fs::read(&wire).unwrap();
    let holds =
        |pcap: &[u8], needle: &str| pcap.windows(needle.len()).any(|w| w == needle.as_bytes());
    while !holds(&pcap, outside) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        pcap = std::fs::read(&wire).unwrap();
    }
    let seen = |needle: &str| holds(&pcap, needle);
    assert!(seen(outside), "the capture holds plaintext payloads");
    assert!(
        !seen(secret),
        "the service payload crossed the bridge in plaintext"
    );

    // 10. SIGTERM: the rules are removed on a clean exit.
    assert!(ward_rules(&topo.nat("a")) > 0);
    must("kill", &["-TERM", &cli.pid().to_string()]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ward_rules(&topo.nat("a")) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(ward_rules(&topo.nat("a")), 0, "{}", topo.nat("a"));

    // 11. A killed proxy leaves its rules; the next start replaces them (never duplicates), and
    // `--uninstall-capture` removes them.
    kill_and_wait(other.pid());
    let left = topo.nat("c");
    assert!(ward_rules(&left) > 0);
    drop(other);
    let again = start(&topo, dir, "c", "10.231.0.3", "jobs/other", &[]);
    assert_eq!(
        topo.nat("c")
            .matches("-A PREROUTING -p tcp -j WARD_INBOUND")
            .count(),
        2,
        "one per family"
    );
    assert_eq!(ward_rules(&topo.nat("c")), ward_rules(&left));
    kill_and_wait(again.pid());
    drop(again);
    let uninstall = topo.exec(
        "c",
        env!("CARGO_BIN_EXE_ward"),
        &["up", "--uninstall-capture"],
    );
    assert!(
        uninstall.status.success(),
        "{}",
        String::from_utf8_lossy(&uninstall.stderr)
    );
    assert_eq!(ward_rules(&topo.nat("c")), 0, "{}", topo.nat("c"));
    drop(srv);
}
