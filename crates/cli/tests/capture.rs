//! Transparent capture end to end (docs/capture.md): four network namespaces on one bridge
//! (subnet 10.231.0.0/16), one `ward up --workloads X --capture` in each of three of them on the
//! same YAML and a shared `--state-dir` (one CA), and apps that know nothing of the mesh: they
//! dial a service's virtual IP or a workload's address, and the iptables rules bring the
//! connection through the proxies, over HBONE/mTLS, under policy.
//!
//! Needs root and `ip netns`, `iptables`, `python3` and `tcpdump`; otherwise prints `SKIPPED`
//! (and fails under CI's `WARD_E2E_REQUIRE_ALL=1`).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

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
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: other, namespace: jobs}
spec:
  workloadSelector: {labels: {app: other}}
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
"#;

/// A client that knows nothing of the mesh: connect (optionally from `src`), send the message,
/// print `REPLY <bytes>` when they come back, `RESET` when the connection is reset.
const CLIENT: &str = r#"
import socket, sys
host, port, msg = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
src = sys.argv[4] if len(sys.argv) > 4 else None
try:
    s = socket.create_connection((host, port), 10, (src, 0) if src else None)
    s.sendall(msg)
    data = b""
    while len(data) < len(msg):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    print("REPLY " + data.decode(errors="replace") if data else "CLOSED")
except ConnectionResetError:
    print("RESET")
except Exception as e:
    print("ERROR %s %s" % (type(e).__name__, e))
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

/// A plain TCP echo server on `[::]:port`, IPv4 and IPv6.
const ECHO_SERVER: &str = r#"
import socket, sys, threading
srv = socket.socket(socket.AF_INET6)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
srv.bind(("::", int(sys.argv[1])))
srv.listen(64)
def serve(c):
    with c:
        while True:
            d = c.recv(65536)
            if not d:
                return
            c.sendall(d)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"))
}

fn must(program: &str, args: &[&str]) {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The namespaces, the bridge and the host's link into it; all deleted on drop, pass or fail.
struct Topology {
    prefix: String,
    host_if: String,
}

impl Topology {
    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Namespaces a..d at 10.231.0.1..4 and `br` holding the bridge; the host reaches them at
    /// 10.231.0.254 (for the admin ports). Every namespace routes by default to the host, as
    /// every pod has a default route: a service address must be routable before iptables
    /// rewrites it.
    fn build() -> Topology {
        let pid = std::process::id();
        let topo = Topology {
            prefix: format!("wcap-{pid}"),
            host_if: format!("wcap{pid}h"),
        };
        let br = topo.ns("br");
        must("ip", &["netns", "add", &br]);
        must("ip", &["-n", &br, "link", "set", "lo", "up"]);
        must("ip", &["-n", &br, "link", "add", "br0", "type", "bridge"]);
        must("ip", &["-n", &br, "link", "set", "br0", "up"]);
        let host = topo.host_if.as_str();
        must(
            "ip",
            &[
                "link", "add", host, "type", "veth", "peer", "name", "host", "netns", &br,
            ],
        );
        must("ip", &["addr", "add", "10.231.0.254/16", "dev", host]);
        must("ip", &["link", "set", host, "up"]);
        must(
            "ip",
            &["-n", &br, "link", "set", "host", "master", "br0", "up"],
        );
        for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
            let ns = topo.ns(name);
            let port = format!("p-{name}");
            must("ip", &["netns", "add", &ns]);
            must("ip", &["-n", &ns, "link", "set", "lo", "up"]);
            must(
                "ip",
                &[
                    "link", "add", "veth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                    "netns", &br,
                ],
            );
            must(
                "ip",
                &[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("10.231.0.{}/16", i + 1),
                    "dev",
                    "veth0",
                ],
            );
            must("ip", &["-n", &ns, "link", "set", "veth0", "up"]);
            must(
                "ip",
                &["-n", &br, "link", "set", &port, "master", "br0", "up"],
            );
            must(
                "ip",
                &["-n", &ns, "route", "add", "default", "via", "10.231.0.254"],
            );
            // IPv6 inside the namespaces only (a unique local prefix; no duplicate detection).
            let v6 = format!("fd00:231::{}/64", i + 1);
            must(
                "ip",
                &["-n", &ns, "-6", "addr", "add", &v6, "dev", "veth0", "nodad"],
            );
        }
        topo
    }

    /// `program args…` inside namespace `name`.
    fn exec(&self, name: &str, program: &str, args: &[&str]) -> Output {
        let ns = self.ns(name);
        let mut all = vec!["netns", "exec", ns.as_str(), program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// A long-running process inside namespace `name`, killed on drop.
    fn spawn(&self, name: &str, program: &str, args: &[&str], log: &Path) -> Proc {
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(name), program])
            .args(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Proc(child)
    }

    /// Runs a Python client script inside namespace `name`; its one line of output.
    fn python(&self, name: &str, script: &str, args: &[&str]) -> String {
        let mut all = vec!["-c", script];
        all.extend_from_slice(args);
        let out = self.exec(name, "python3", &all);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The nat tables of namespace `name`, as `iptables-save` and `ip6tables-save` print them.
    fn nat(&self, name: &str) -> String {
        ["iptables-save", "ip6tables-save"]
            .iter()
            .map(|p| {
                String::from_utf8_lossy(&self.exec(name, p, &["-t", "nat"]).stdout).into_owned()
            })
            .collect()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for name in ["a", "b", "c", "d", "br"] {
            let ns = self.ns(name);
            // Anything still running in the namespace (the processes are the test's own).
            let pids = run("ip", &["netns", "pids", &ns]);
            for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                let _ = run("kill", &["-KILL", pid]);
            }
            let _ = run("ip", &["netns", "del", &ns]);
        }
        let _ = run("ip", &["link", "del", &self.host_if]);
    }
}

/// A child process, killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A script that runs the `ward` binary inside a namespace (`ip netns exec` keeps the pid).
fn ward_in(dir: &Path, ns: &str) -> PathBuf {
    let path = dir.join(format!("ward-in-{ns}"));
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nexec ip netns exec {ns} {} \"$@\"\n",
            env!("CARGO_BIN_EXE_ward")
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// `ward up --capture` for `workload` in namespace `name`, admin on its workload address.
fn start(
    topo: &Topology,
    dir: &Path,
    name: &str,
    ip: &str,
    workload: &str,
    extra: &[&str],
) -> Ward {
    let bin = ward_in(dir, &topo.ns(name));
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

/// Waits until `path` has content (tcpdump writes its header once it captures).
fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{} stayed empty", path.display());
}

/// SIGKILL `pid` and wait until it is gone (it stays a zombie until its `Ward` is dropped).
fn kill_and_wait(pid: u32) {
    must("kill", &["-KILL", &pid.to_string()]);
    let stat = format!("/proc/{pid}/stat");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let state = std::fs::read_to_string(&stat).unwrap_or_default();
        // Gone, or a zombie (`Z` after the command name): its sockets and rules are what it left.
        if state.is_empty()
            || state
                .rsplit(')')
                .next()
                .is_some_and(|s| s.trim_start().starts_with('Z'))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{pid} still running after SIGKILL");
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
    let topo = Topology::build();
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

    // 5. REGISTRY_ONLY: an address that is no service and no workload is refused.
    assert_eq!(
        topo.python("c", CLIENT, &["10.231.0.4", "7000", "unknown"]),
        "RESET"
    );
    let blackhole = record(&other, &[("upstream_cluster", "BlackHoleCluster")]);
    assert_eq!(blackhole["dst.addr"], "10.231.0.4:7000");
    assert_eq!(blackhole["response_flags"], "NR");

    // 6. ALLOW_ANY (the default): the same destination from cli goes straight there, plaintext.
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
    std::thread::sleep(Duration::from_millis(300));
    let pcap = std::fs::read(&wire).unwrap();
    let seen = |needle: &str| pcap.windows(needle.len()).any(|w| w == needle.as_bytes());
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
