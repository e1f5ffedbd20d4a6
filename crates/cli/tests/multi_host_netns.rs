//! Several hosts for real (docs/multi-host.md): network namespaces on one bridge (10.232.0.0/16)
//! stand for a control-plane host and three workload hosts. `ward control-plane` runs in one;
//! each other runs `ward proxy --bootstrap … --capture --capture-dns` and an app that knows
//! nothing of the mesh. The apps dial service names (answered by the proxy's DNS) and
//! addresses; everything between the hosts is mTLS (checked on the wire); a policy edit on the
//! control plane reaches the proxies; with the control plane SIGKILLed they keep serving and
//! enforcing, and a restarted one resyncs them.
//!
//! Needs root, `ip netns`, iptables, python3 and tcpdump; otherwise prints `SKIPPED` (a failure
//! under CI's `WARD_E2E_REQUIRE_ALL=1`).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ward_test_support::netns::{wait_for_file, ward_in, Topology, CLIENT, ECHO_SERVER};
use ward_test_support::{have, http_get, is_root, skip_or_fail, Proc};

const TEST: &str = "multi_host_netns";
const BIN: &str = env!("CARGO_BIN_EXE_ward");
const WAIT: Duration = Duration::from_secs(30);

fn mesh(topo: &Topology) -> String {
    format!(
        r#"apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec: {{mtls: {{mode: STRICT}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: cli, namespace: app}}
spec: {{address: {cli}, serviceAccount: cli, labels: {{app: cli}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: srv, namespace: app}}
spec: {{address: {srv}, serviceAccount: srv, labels: {{app: srv}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: oth, namespace: other}}
spec: {{address: {oth}, serviceAccount: oth, labels: {{app: oth}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: srv, namespace: app}}
spec:
  hosts: [srv.app.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9000, name: tcp-echo, protocol: TCP}}]
  workloadSelector: {{labels: {{app: srv}}}}
---
# oth's traffic outside the mesh is the capture's plaintext control: passed through (Ward's
# default would refuse it).
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: oth, namespace: other}}
spec:
  workloadSelector: {{labels: {{app: oth}}}}
  outboundTrafficPolicy: {{mode: ALLOW_ANY}}
"#,
        cli = topo.ip("h1"),
        srv = topo.ip("h2"),
        oth = topo.ip("h3"),
    )
}

fn deny_other() -> &'static str {
    r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-other, namespace: app}
spec:
  selector: {matchLabels: {app: srv}}
  action: DENY
  rules: [{from: [{source: {namespaces: [other]}}]}]
"#
}

/// `/etc/netns/<ns>/resolv.conf`, which `ip netns exec` mounts over /etc/resolv.conf: the
/// search list a pod in `namespace` has, and a nameserver the capture rules send to the proxy.
struct ResolvConfs(Vec<PathBuf>);

impl ResolvConfs {
    fn write(topo: &Topology, hosts: &[(&str, &str)], nameserver: &str) -> ResolvConfs {
        let mut dirs = Vec::new();
        for (host, namespace) in hosts {
            let dir = PathBuf::from("/etc/netns").join(topo.ns(host));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(
                dir.join("resolv.conf"),
                format!(
                    "search {namespace}.svc.cluster.local svc.cluster.local cluster.local\nnameserver {nameserver}\n"
                ),
            )
            .unwrap();
            dirs.push(dir);
        }
        ResolvConfs(dirs)
    }
}

impl Drop for ResolvConfs {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

struct World {
    topo: Topology,
    dir: PathBuf,
    listen: String,
    admin: SocketAddr,
}

impl World {
    fn control_plane(&self, run: u32) -> Proc {
        let bin = ward_in(BIN, &self.dir, &self.topo.ns("cp"));
        let config = self.dir.join("config");
        let state = self.dir.join("state");
        let mut cp = Proc::spawn(
            bin.to_str().unwrap(),
            &[
                "control-plane",
                "-f",
                config.to_str().unwrap(),
                "--state-dir",
                state.to_str().unwrap(),
                "--listen",
                &self.listen,
                "--admin",
                &self.admin.to_string(),
                "--poll-interval",
                "100ms",
                "--reload-settle",
                "200ms",
            ],
            &self.dir.join(format!("cp-{run}.log")),
        );
        cp.wait_ready(self.admin, WAIT).unwrap();
        cp
    }

    fn bootstrap(&self, workload: &str) -> PathBuf {
        let out = self
            .dir
            .join(format!("{}.bootstrap", workload.replace('/', "-")));
        let status = Command::new(BIN)
            .args(["bootstrap", "-f"])
            .arg(self.dir.join("config"))
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .args(["--workload", workload, "--control-plane", &self.listen])
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(status.status.success(), "{status:?}");
        out
    }

    fn proxy(&self, host: &str, bootstrap: &Path) -> (Proc, SocketAddr) {
        let admin: SocketAddr = format!("{}:15000", self.topo.ip(host)).parse().unwrap();
        let bin = ward_in(BIN, &self.dir, &self.topo.ns(host));
        let audit = self.dir.join(format!("audit-{host}"));
        let mut proc = Proc::spawn(
            bin.to_str().unwrap(),
            &[
                "proxy",
                "--bootstrap",
                bootstrap.to_str().unwrap(),
                "--admin",
                &admin.to_string(),
                "--audit-dir",
                audit.to_str().unwrap(),
                "--capture",
                "--capture-dns",
            ],
            &self.dir.join(format!("proxy-{host}.log")),
        );
        proc.wait_ready(admin, WAIT).unwrap();
        (proc, admin)
    }

    /// The app in `host` connects to `target:port`, sends `msg`: `REPLY …`, `RESET`, `CLOSED`
    /// or `ERROR …`.
    fn dial(&self, host: &str, target: &str, port: u16, msg: &str) -> String {
        self.topo
            .python(host, CLIENT, &[target, &port.to_string(), msg])
    }

    fn proxies(&self) -> serde_json::Value {
        let (status, body) = http_get(self.admin, "/debug/proxies").unwrap();
        assert_eq!(status, 200);
        serde_json::from_str(&body).unwrap()
    }

    /// Waits until all three proxies are on the stream, SYNCED, and `ok` holds for each.
    fn wait_synced(&self, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let all = self.proxies();
            let list = all["proxies"].as_array().unwrap();
            if list.len() == 3 && list.iter().all(|p| p["state"] == "SYNCED" && ok(p)) {
                return all;
            }
            assert!(Instant::now() < deadline, "not synced: {all:#}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn apps_on_three_hosts_reach_each_other_by_name_over_mtls_without_the_control_plane() {
    if !is_root() {
        return skip_or_fail(TEST, "needs root (network namespaces, iptables)");
    }
    for program in ["ip", "iptables-restore", "python3", "tcpdump"] {
        if !have(program) {
            return skip_or_fail(TEST, &format!("needs {program}"));
        }
    }
    if !Command::new("ip")
        .args(["netns", "list"])
        .status()
        .is_ok_and(|s| s.success())
    {
        return skip_or_fail(TEST, "`ip netns` is not available");
    }
    let topo = Topology::build("mh", 232, &["cp", "h1", "h2", "h3"]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    std::fs::create_dir_all(dir.join("config")).unwrap();
    std::fs::write(dir.join("config/mesh.yaml"), mesh(&topo)).unwrap();
    let _resolv = ResolvConfs::write(
        &topo,
        &[("h1", "app"), ("h2", "app"), ("h3", "other")],
        &topo.ip("cp"),
    );
    let world = World {
        listen: format!("{}:15012", topo.ip("cp")),
        admin: format!("{}:15014", topo.ip("cp")).parse().unwrap(),
        topo,
        dir,
    };
    let topo = &world.topo;

    // The wire between the hosts, and the apps: an echo server on srv's host, and one outside
    // the mesh (on the control-plane host) as the wire capture's positive control.
    let wire = world.dir.join("bridge.pcap");
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
        &world.dir.join("tcpdump.log"),
    );
    wait_for_file(&wire);
    let _srv_app = topo.spawn(
        "h2",
        "python3",
        &["-c", ECHO_SERVER, "9000"],
        &world.dir.join("srv-app.log"),
    );
    let _outside = topo.spawn(
        "cp",
        "python3",
        &["-c", ECHO_SERVER, "7000"],
        &world.dir.join("outside.log"),
    );

    let mut cp = world.control_plane(1);
    let boots: Vec<PathBuf> = ["app/cli", "app/srv", "other/oth"]
        .iter()
        .map(|w| world.bootstrap(w))
        .collect();
    let (_srv, _) = world.proxy("h2", &boots[1]);
    let (cli, cli_admin) = world.proxy("h1", &boots[0]);
    let (_oth, _) = world.proxy("h3", &boots[2]);
    world.wait_synced(|_| true);

    // By name (the proxy's DNS answers with the service address; capture takes it from there),
    // by the short name through the search list, and by the workload's own address.
    let secret = "ward-multi-host-secret-5d2a";
    let srv_ip = topo.ip("h2");
    for target in ["srv.app.svc.cluster.local", "srv", srv_ip.as_str()] {
        let got = world.dial("h1", target, 9000, secret);
        assert_eq!(
            got,
            format!("REPLY {secret}"),
            "h1 → {target}:\n{}",
            cli.logs()
        );
    }
    assert_eq!(
        world.dial("h3", "srv.app.svc.cluster.local", 9000, "oth"),
        "REPLY oth"
    );
    // Outside the mesh: passed through in plaintext (oth's Sidecar: ALLOW_ANY), the capture's
    // control.
    let control = "ward-plaintext-control-91f3";
    assert_eq!(
        world.dial("h3", &topo.ip("cp"), 7000, control),
        format!("REPLY {control}")
    );
    // A client without a proxy (the control-plane host) is refused: STRICT.
    let plain = world.dial("cp", &srv_ip, 9000, "plain");
    assert!(
        plain == "RESET" || plain == "CLOSED",
        "plaintext reached srv: {plain}"
    );

    // The destination proxy saw the caller's identity over TLS 1.3.
    let srv_log = std::fs::read_to_string(world.dir.join("proxy-h2.log")).unwrap();
    assert!(
        srv_log.contains("spiffe://cluster.local/ns/app/sa/cli") && srv_log.contains("TLSv1.3"),
        "{srv_log}"
    );

    // A policy edit on the control plane reaches srv's proxy: oth is denied, cli is not.
    let before = world.proxies();
    let srv_acked = before["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["workload"] == "app/srv")
        .unwrap()["ackedVersion"]
        .clone();
    let edited = Instant::now();
    std::fs::write(
        world.dir.join("config/.mesh.tmp"),
        format!("{}{}", mesh(topo), deny_other()),
    )
    .unwrap();
    std::fs::rename(
        world.dir.join("config/.mesh.tmp"),
        world.dir.join("config/mesh.yaml"),
    )
    .unwrap();
    world.wait_synced(|p| p["workload"] != "app/srv" || p["ackedVersion"] != srv_acked);
    eprintln!(
        "policy edit → every proxy SYNCED in {} ms",
        edited.elapsed().as_millis()
    );
    let denied = world.dial("h3", "srv.app.svc.cluster.local", 9000, "oth again");
    assert!(
        denied == "RESET" || denied == "CLOSED",
        "oth was not denied: {denied}"
    );
    assert_eq!(
        world.dial("h1", "srv", 9000, "cli again"),
        "REPLY cli again"
    );

    // The control plane dies: names still resolve, traffic flows, policy holds.
    cp.kill();
    assert_eq!(world.dial("h1", "srv", 9000, "no cp"), "REPLY no cp");
    // From another namespace the short name is not srv's (as in Kubernetes); `srv.app` is.
    let elsewhere = world.dial("h3", "srv", 9000, "no cp");
    assert!(elsewhere.starts_with("ERROR gaierror"), "{elsewhere}");
    let denied = world.dial("h3", "srv.app", 9000, "no cp");
    assert!(
        denied == "RESET" || denied == "CLOSED",
        "oth was not denied: {denied}"
    );
    assert_eq!(http_get(cli_admin, "/ready").unwrap().0, 200);

    // It comes back: the proxies reconnect with their certificates and resync.
    let _cp2 = world.control_plane(2);
    world.wait_synced(|p| p["via"] == "certificate");
    assert_eq!(world.dial("h1", "srv", 9000, "cp back"), "REPLY cp back");

    // The wire: the service payload never crossed in clear; the passthrough control did.
    std::thread::sleep(Duration::from_millis(500));
    let bytes = std::fs::read(&wire).unwrap();
    let contains = |needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(
        contains(control),
        "the capture saw no plaintext at all: it proves nothing"
    );
    assert!(
        !contains(secret),
        "the service payload crossed the bridge in clear"
    );
}
