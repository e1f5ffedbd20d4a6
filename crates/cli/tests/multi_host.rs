//! `ward control-plane` + `ward proxy`, end to end: three proxies, each its own process with
//! its own admin port, get their certificates and config from one control plane over gRPC
//! (TLS 1.3) on 127.1.119.x and 127.1.129.x. A policy edit reaches the one proxy it concerns,
//! and only it; with the control plane SIGKILLed the proxies keep serving and enforcing; a
//! restarted control plane resyncs them without resending anything; a restarted proxy comes
//! back with a new certificate. Refused bootstrap tokens stop `ward proxy` with the reason, and
//! the control plane logs it.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{docs, mesh_pa, srv_policy, Mesh};
use ward_test_support::{echo_ok, http_get, Proc};

const BIN: &str = env!("CARGO_BIN_EXE_ward");
const WAIT: Duration = Duration::from_secs(30);

/// A mesh on 127.1.<block>.x whose control plane runs on .100.
struct World {
    mesh: Mesh,
    tmp: tempfile::TempDir,
    listen: SocketAddr,
    admin: SocketAddr,
}

impl World {
    fn new(block: u8, security: &str) -> World {
        let mesh = Mesh::with_own_app(block);
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("config")).unwrap();
        let world = World {
            listen: format!("127.1.{block}.100:15012").parse().unwrap(),
            admin: format!("127.1.{block}.100:15014").parse().unwrap(),
            mesh,
            tmp,
        };
        world.write("workloads.yaml", &world.mesh.workloads());
        world.write("security.yaml", security);
        world
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Replaces a config file the way editors do (write, then rename).
    fn write(&self, name: &str, body: &str) {
        let tmp = self.path(&format!("config/.{name}.tmp"));
        std::fs::write(&tmp, body).unwrap();
        std::fs::rename(&tmp, self.path(&format!("config/{name}"))).unwrap();
    }

    fn control_plane(&self, run: u32) -> Proc {
        let mut cp = Proc::spawn(
            BIN,
            &[
                "control-plane".to_owned(),
                "-f".into(),
                self.path("config").display().to_string(),
                "--state-dir".into(),
                self.path("state").display().to_string(),
                "--listen".into(),
                self.listen.to_string(),
                "--admin".into(),
                self.admin.to_string(),
                "--poll-interval".into(),
                "100ms".into(),
                "--reload-settle".into(),
                "200ms".into(),
            ],
            &self.path(&format!("control-plane-{run}.log")),
        );
        cp.wait_ready(self.admin, WAIT).unwrap();
        cp
    }

    /// `ward bootstrap` for `workload`, from `state` (the control plane's, or another).
    fn bootstrap_from(&self, state: &Path, workload: &str, ttl: &str) -> PathBuf {
        let out = self.path(&format!("{}-{ttl}.bootstrap", workload.replace('/', "-")));
        let status = Command::new(BIN)
            .args(["bootstrap", "-f"])
            .arg(self.path("config"))
            .arg("--state-dir")
            .arg(state)
            .args(["--workload", workload, "--control-plane"])
            .arg(self.listen.to_string())
            .args(["--ttl", ttl, "--out"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(status.status.success(), "{status:?}");
        out
    }

    fn bootstrap(&self, workload: &str) -> PathBuf {
        self.bootstrap_from(&self.path("state"), workload, "1h")
    }

    /// `ward proxy` for the workload whose sidecar listens on `ip` (its admin on `ip`:15000).
    fn proxy(&self, bootstrap: &Path, ip: &str, run: u32) -> (Proc, SocketAddr) {
        let admin: SocketAddr = format!("{ip}:15000").parse().unwrap();
        let name = bootstrap.file_stem().unwrap().to_string_lossy().to_string();
        let proc = Proc::spawn(
            BIN,
            &[
                "proxy".to_owned(),
                "--bootstrap".into(),
                bootstrap.display().to_string(),
                "--admin".into(),
                admin.to_string(),
                "--audit-dir".into(),
                self.path("audit").display().to_string(),
            ],
            &self.path(&format!("proxy-{name}-{run}.log")),
        );
        (proc, admin)
    }

    /// The control plane's `/debug/proxies`.
    fn proxies(&self) -> serde_json::Value {
        let (status, body) = http_get(self.admin, "/debug/proxies").unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The control plane's metric `name` (summed over its label sets).
    fn metric(&self, name: &str) -> f64 {
        let (_, body) = http_get(self.admin, "/metrics").unwrap();
        body.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until every workload in `want` is connected and SYNCED and `ok` holds for its
    /// record; returns the records by workload.
    fn wait_synced(
        &self,
        want: &[&str],
        ok: impl Fn(&serde_json::Value) -> bool,
        logs: &dyn Fn() -> String,
    ) -> std::collections::BTreeMap<String, serde_json::Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let all = self.proxies();
            let by: std::collections::BTreeMap<String, serde_json::Value> = all["proxies"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p["workload"].as_str().unwrap().to_owned(), p.clone()))
                .collect();
            let done = want
                .iter()
                .all(|w| by.get(*w).is_some_and(|p| p["state"] == "SYNCED" && ok(p)));
            if done && by.len() == want.len() {
                return by;
            }
            assert!(Instant::now() < deadline, "not synced: {all:#}\n{}", logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A connection through an egress listener that stays open, echoing on demand.
struct Held(TcpStream);

impl Held {
    fn open(addr: SocketAddr) -> Held {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Held(s)
    }

    fn echoes(&mut self, msg: &str) -> bool {
        if self.0.write_all(msg.as_bytes()).is_err() {
            return false;
        }
        let mut buf = vec![0; msg.len()];
        self.0.read_exact(&mut buf).is_ok() && buf == msg.as_bytes()
    }
}

fn serial(admin: SocketAddr) -> String {
    let (_, body) = http_get(admin, "/certs").unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["certificates"][0]["serial"].as_str().unwrap().to_owned()
}

fn deny_other() -> String {
    srv_policy(
        "deny-other",
        "  action: DENY\n  rules:\n  - from:\n    - source:\n        namespaces: [\"other\"]\n",
    )
}

#[test]
fn proxies_follow_the_control_plane_and_keep_serving_without_it() {
    let world = World::new(119, &mesh_pa("STRICT"));
    let mesh = &world.mesh;
    let mut cp = world.control_plane(1);
    let _app = Proc::spawn(
        BIN,
        &["echo", "--listen", &format!("127.0.0.1:{}", mesh.app_port)],
        &world.path("app.log"),
    );
    let boot = |w: &str| world.bootstrap(w);
    let (srv_boot, cli_boot, oth_boot) = (boot("app/srv"), boot("app/cli"), boot("other/oth"));
    let (mut srv, srv_admin) = world.proxy(&srv_boot, &mesh.ip(10), 1);
    let (mut cli, cli_admin) = world.proxy(&cli_boot, &mesh.ip(1), 1);
    let (mut oth, oth_admin) = world.proxy(&oth_boot, &mesh.ip(2), 1);
    for (p, admin) in [
        (&mut srv, srv_admin),
        (&mut cli, cli_admin),
        (&mut oth, oth_admin),
    ] {
        p.wait_ready(admin, WAIT).unwrap();
    }
    let all = ["app/cli", "app/srv", "other/oth"];
    let logs = || format!("control plane:\n{}\nsrv:\n{}", cp_logs(&world), srv.logs());
    let first = world.wait_synced(&all, |_| true, &logs);
    for (w, p) in &first {
        assert_eq!(p["responses"], 1, "{w}: one full response on connect: {p}");
    }
    assert!(echo_ok(mesh.via_cli(), "cli before"), "{}", logs());
    assert!(echo_ok(mesh.via_oth(), "oth before"), "{}", logs());

    // `ward proxy-status` prints the same records as a table.
    let out = Command::new(BIN)
        .args(["proxy-status", "--control-plane", &world.admin.to_string()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(table.starts_with("WORKLOAD"), "{table}");
    for w in all {
        let row = table.lines().find(|l| l.starts_with(w)).unwrap();
        assert!(row.contains("SYNCED"), "{table}");
    }

    // A policy edit reaches srv, the one proxy it concerns; the others are sent nothing.
    let mut held = Held::open(mesh.via_cli());
    assert!(held.echoes("held open"));
    let bytes_before = world.metric("ward_config_response_bytes_total");
    let edited = Instant::now();
    world.write("security.yaml", &docs(&[mesh_pa("STRICT"), deny_other()]));
    let srv_acked = first["app/srv"]["ackedVersion"].clone();
    let after = world.wait_synced(
        &all,
        |p| p["workload"] != "app/srv" || p["ackedVersion"] != srv_acked,
        &logs,
    );
    let push = edited.elapsed();
    let bytes = world.metric("ward_config_response_bytes_total") - bytes_before;
    eprintln!(
        "policy edit → srv ACKed in {} ms (includes the 100 ms poll and 200 ms settle); {bytes} bytes sent",
        push.as_millis()
    );
    assert_eq!(after["app/srv"]["responses"], 2, "{:#}", after["app/srv"]);
    for w in ["app/cli", "other/oth"] {
        assert_eq!(
            after[w]["responses"], 1,
            "{w} was sent the change: {:#}",
            after[w]
        );
    }
    assert!(
        bytes > 0.0 && bytes < 4096.0,
        "{bytes} bytes for one policy"
    );
    assert!(!echo_ok(mesh.via_oth(), "oth denied"), "{}", logs());
    assert!(echo_ok(mesh.via_cli(), "cli allowed"), "{}", logs());

    // The control plane dies: traffic keeps flowing, new connections work, policy holds.
    cp.kill();
    assert!(held.echoes("after the control plane died"));
    assert!(echo_ok(mesh.via_cli(), "cli without cp"), "{}", logs());
    assert!(!echo_ok(mesh.via_oth(), "oth still denied"), "{}", logs());
    for admin in [srv_admin, cli_admin, oth_admin] {
        assert_eq!(http_get(admin, "/ready").unwrap().0, 200);
    }
    // `ward verify mtls` against a `ward proxy` (one workload: no --from), with the control
    // plane gone: mutual TLS 1.3 to srv, with srv's current certificate.
    let verify = Command::new(env!("CARGO_BIN_EXE_ward"))
        .args([
            "verify",
            "mtls",
            "--admin",
            &cli_admin.to_string(),
            "--json",
        ])
        .args(["--to", &format!("{}:9000", mesh.ip(10))])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert_eq!(verify.status.code(), Some(0), "{report:#}");
    assert_eq!(report["from"], "app/cli");
    assert_eq!(report["decision"], "ALLOW");
    assert_eq!(report["serverCert"]["serial"], serial(srv_admin));
    // `ward verify coverage` against srv's `ward proxy`: everything it served was mTLS, with
    // the post-quantum key exchange, and the sources are named.
    let coverage = Command::new(env!("CARGO_BIN_EXE_ward"))
        .args(["verify", "coverage", "--admin", &srv_admin.to_string()])
        .args(["--since", "10m", "--json"])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&coverage.stdout).unwrap();
    assert_eq!(coverage.status.code(), Some(0), "{report:#}");
    assert!(report["connections"].as_u64().unwrap() >= 4, "{report:#}");
    assert_eq!(report["mtlsConnectionShare"], 1.0, "{report:#}");
    assert_eq!(
        report["keyExchange"]["X25519MLKEM768"], report["connections"],
        "{report:#}"
    );
    let sources: Vec<&str> = report["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, ["app/cli", "other/oth"], "{report:#}");
    std::thread::sleep(Duration::from_secs(1));

    // It comes back: every proxy reconnects with its certificate and is sent nothing, since
    // it already holds the current config. No proxy restarted.
    let pids = [srv.pid(), cli.pid(), oth.pid()];
    let cp2 = world.control_plane(2);
    let logs2 = || format!("control plane:\n{}\nsrv:\n{}", cp2.logs(), srv.logs());
    let resynced = world.wait_synced(&all, |p| p["via"] == "certificate", &logs2);
    for (w, p) in &resynced {
        assert_eq!(p["responses"], 0, "{w} was resent its config: {p}");
        assert_eq!(p["ackedVersion"], after[w.as_str()]["ackedVersion"], "{w}");
    }
    assert_eq!(world.metric("ward_config_response_bytes_total"), 0.0);
    assert_eq!(
        world.metric("ward_config_generation"),
        1.0,
        "a new process starts at 1"
    );
    assert!(srv.exited().is_none() && cli.exited().is_none() && oth.exited().is_none());
    assert_eq!(pids, [srv.pid(), cli.pid(), oth.pid()]);
    assert!(held.echoes("after the control plane came back"));

    // A proxy restart: back to ready with a new certificate, no change for the app.
    let old_serial = serial(srv_admin);
    srv.kill();
    let (mut srv2, _) = world.proxy(&srv_boot, &mesh.ip(10), 2);
    srv2.wait_ready(srv_admin, WAIT).unwrap();
    assert_ne!(serial(srv_admin), old_serial);
    assert!(
        echo_ok(mesh.via_cli(), "cli to the restarted srv"),
        "{}",
        srv2.logs()
    );
    assert!(!echo_ok(
        mesh.via_oth(),
        "oth still denied by the restarted srv"
    ));
}

fn cp_logs(world: &World) -> String {
    std::fs::read_to_string(world.path("control-plane-1.log")).unwrap_or_default()
}

#[test]
fn refused_tokens_stop_the_proxy_with_the_reason_and_are_logged() {
    let world = World::new(129, &mesh_pa("STRICT"));
    let cp = world.control_plane(1);

    // cli's token presented for srv's workload.
    let cli_boot = world.bootstrap("app/cli");
    let mut forged: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cli_boot).unwrap()).unwrap();
    forged["workload"] = "app/srv".into();
    forged["identity"] = "spiffe://cluster.local/ns/app/sa/srv".into();
    let forged_path = world.path("forged.bootstrap");
    std::fs::write(&forged_path, forged.to_string()).unwrap();

    // A token from another control plane's key (the same CA, another token key).
    let other_state = world.path("other-state");
    std::fs::create_dir_all(other_state.join("ca")).unwrap();
    for entry in std::fs::read_dir(world.path("state/ca")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), other_state.join("ca").join(entry.file_name())).unwrap();
    }
    let foreign = world.bootstrap_from(&other_state, "app/srv", "1h");

    let short = world.bootstrap_from(&world.path("state"), "app/srv", "1s");
    std::thread::sleep(Duration::from_millis(2100));

    let cases = [
        (&forged_path, "is for workload app/cli, not app/srv"),
        (&foreign, "bootstrap token refused"),
        (&short, "expired"),
    ];
    for (i, (file, why)) in cases.into_iter().enumerate() {
        let (mut proxy, _) = world.proxy(file, &world.mesh.ip(10), i as u32);
        let status = proxy.wait_exit(WAIT).unwrap_or_else(|| {
            panic!(
                "ward proxy kept running with a refused token; log:\n{}",
                proxy.logs()
            )
        });
        assert!(!status.success());
        let stderr = proxy.logs();
        assert!(stderr.contains(why), "{why}: {stderr}");
        cp.wait_for_log(
            &[("message", "config stream refused"), ("reason", why)],
            WAIT,
        )
        .unwrap();
    }
}
