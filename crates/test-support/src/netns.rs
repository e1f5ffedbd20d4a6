//! Network namespaces for end-to-end tests: a bridge namespace and one namespace per "host",
//! each with an address on the bridge's subnet, IPv6 inside, and a default route; everything
//! removed on drop, pass or fail. Needs root and `ip netns`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// Runs `program args…` and returns its output.
pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"))
}

/// Runs `program args…` and fails the test unless it succeeds.
pub fn must(program: &str, args: &[&str]) {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The namespaces, the bridge and the host's link into it; all deleted on drop, pass or fail.
pub struct Topology {
    prefix: String,
    host_if: String,
    names: Vec<String>,
    subnet: u8,
}

impl Topology {
    /// The namespace's full name.
    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// The IPv4 address of the namespace `name` (one of the names given to [`Topology::build`]).
    pub fn ip(&self, name: &str) -> String {
        let k = self.names.iter().position(|n| n == name).unwrap_or(253);
        format!("10.{}.0.{}", self.subnet, k + 1)
    }

    /// One namespace per name in `names`, the k-th at `10.<subnet>.0.<k+1>`, and `br` holding
    /// the bridge; the host reaches them at `10.<subnet>.0.254` (for the admin ports). Every
    /// namespace routes by default to the host, as every pod has a default route: a service
    /// address must be routable before iptables rewrites it. `tag` (a few letters) and
    /// `subnet` keep tests that run at once apart; IPv6 is `fd00:<subnet>::<k+1>/64`, inside
    /// the namespaces only.
    pub fn build(tag: &str, subnet: u8, names: &[&str]) -> Topology {
        let pid = std::process::id();
        let topo = Topology {
            prefix: format!("w{tag}-{pid}"),
            host_if: format!("w{tag}{pid}h"),
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            subnet,
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
        must(
            "ip",
            &["addr", "add", &format!("10.{subnet}.0.254/16"), "dev", host],
        );
        must("ip", &["link", "set", host, "up"]);
        must(
            "ip",
            &["-n", &br, "link", "set", "host", "master", "br0", "up"],
        );
        for (i, name) in names.iter().enumerate() {
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
                    &format!("10.{subnet}.0.{}/16", i + 1),
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
                &[
                    "-n",
                    &ns,
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("10.{subnet}.0.254"),
                ],
            );
            // IPv6 inside the namespaces only (a unique local prefix; no duplicate detection).
            let v6 = format!("fd00:{subnet}::{}/64", i + 1);
            must(
                "ip",
                &["-n", &ns, "-6", "addr", "add", &v6, "dev", "veth0", "nodad"],
            );
        }
        topo
    }

    /// `program args…` inside namespace `name`.
    pub fn exec(&self, name: &str, program: &str, args: &[&str]) -> Output {
        let ns = self.ns(name);
        let mut all = vec!["netns", "exec", ns.as_str(), program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// A long-running process inside namespace `name`, killed on drop.
    pub fn spawn(&self, name: &str, program: &str, args: &[&str], log: &Path) -> NsProc {
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(name), program])
            .args(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        NsProc(child)
    }

    /// Runs a Python client script inside namespace `name`; its one line of output.
    pub fn python(&self, name: &str, script: &str, args: &[&str]) -> String {
        let mut all = vec!["-c", script];
        all.extend_from_slice(args);
        let out = self.exec(name, "python3", &all);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The nat tables of namespace `name`, as `iptables-save` and `ip6tables-save` print them.
    pub fn nat(&self, name: &str) -> String {
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
        for name in self.names.iter().map(String::as_str).chain(["br"]) {
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
/// A child process in a namespace, killed on drop.
pub struct NsProc(Child);

impl Drop for NsProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A script that runs the `ward` binary inside a namespace (`ip netns exec` keeps the pid).
pub fn ward_in(bin: &str, dir: &Path, ns: &str) -> PathBuf {
    let path = dir.join(format!("ward-in-{ns}"));
    std::fs::write(
        &path,
        format!("#!/bin/sh\nexec ip netns exec {ns} {} \"$@\"\n", bin),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Waits until `path` has content (tcpdump writes its header once it captures).
pub fn wait_for_file(path: &Path) {
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
pub fn kill_and_wait(pid: u32) {
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

/// print `REPLY <bytes>` when they come back, `RESET` when the connection is reset.
pub const CLIENT: &str = r#"
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

/// A plain TCP echo server on `[::]:port`, IPv4 and IPv6.
pub const ECHO_SERVER: &str = r#"
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
