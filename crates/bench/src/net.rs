//! Where each side of a path lives. Two topologies:
//! - **netns** (root, with `ip`): a client namespace and a server namespace joined by a veth
//!   pair, as on two nodes. The harness re-runs itself inside the client namespace
//!   ([`run_in_client_namespace`]); everything on the server side (bench server, iperf3 -s, the
//!   server's ward, nginx B) is started with `ip netns exec` in the server namespace. Every byte
//!   between the sides crosses the veth, with the kernel's whole TCP/IP path on each end.
//! - **loopback**: both sides on 127.0.0.0/8 in the current namespace.
//!
//! Addresses are per "block" (one block per proxied path, so the paths can all run at once):
//! client side `<net>.<block>.1`, server side `<net>.<block>.10`, with `<net>` 127.77 on loopback
//! and 10.77 in the namespaces. Block [`APP_BLOCK`] holds the bench server and iperf3.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

use crate::process::pinned;

/// The client-side namespace (the load generator, client sidecars, nginx A).
pub(crate) const CLIENT_NS: &str = "ward-bench-client";
/// The server-side namespace (the bench server, iperf3, server sidecars, nginx B).
pub(crate) const SERVER_NS: &str = "ward-bench-server";

/// A pair of namespace names and their veth ends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Names {
    client: &'static str,
    server: &'static str,
    client_veth: &'static str,
    server_veth: &'static str,
}

/// The names a run uses.
pub(crate) const RUN: Names = Names {
    client: CLIENT_NS,
    server: SERVER_NS,
    client_veth: "wbench-c",
    server_veth: "wbench-s",
};
/// The bench server's and iperf3's block.
pub(crate) const APP_BLOCK: u8 = 2;
/// Every block a run uses: ward-l4 (0), nginx (1), the apps (2), ward-l7-traced (3),
/// ward-l7-audit-off (4), ward-l7-twin (5), ward-l4-twin (6), ward-l7 (7), ward-gateway (8).
const BLOCKS: [u8; 9] = [0, 1, APP_BLOCK, 3, 4, 5, 6, 7, 8];

/// The environment variable moving the loopback blocks: `A.B.C` puts block `n` at
/// `A.B.(C+n)` instead of 127.77.n (so two runs on one host, or a host where 127.77/16 is
/// taken, keep apart). Blocks go up to 8, so C must be at most 247.
pub(crate) const LOOPBACK_ENV: &str = "WARD_BENCH_LOOPBACK";

/// The loopback base from [`LOOPBACK_ENV`], read once; 127.77.0 when unset or invalid (an
/// invalid value is reported once on stderr).
fn loopback_base() -> [u8; 3] {
    static BASE: std::sync::OnceLock<[u8; 3]> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| match std::env::var(LOOPBACK_ENV) {
        Ok(v) => parse_loopback_base(&v).unwrap_or_else(|| {
            eprintln!(
                "ward-bench: {LOOPBACK_ENV}={v:?} is not A.B.C within 127.0.0.0/8 with C <= 247; \
                 using 127.77.0"
            );
            [127, 77, 0]
        }),
        Err(_) => [127, 77, 0],
    })
}

/// `A.B.C` with A = 127 and C + 8 (the highest block) still an octet.
fn parse_loopback_base(v: &str) -> Option<[u8; 3]> {
    let mut it = v.trim().split('.').map(|o| o.parse::<u8>().ok());
    let base = [it.next()??, it.next()??, it.next()??];
    (it.next().is_none() && base[0] == 127 && base[2] <= 247).then_some(base)
}

/// Which end of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The load generator's side.
    Client,
    /// The server's side.
    Server,
}

/// The topology of this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Net {
    /// Both sides on loopback in this namespace.
    Loopback,
    /// This process runs in [`CLIENT_NS`]; the server side goes in [`SERVER_NS`].
    Namespaces,
}

impl Net {
    /// The address of `side` in `block`.
    pub(crate) fn ip(self, side: Side, block: u8) -> Ipv4Addr {
        let host = match side {
            Side::Client => 1,
            Side::Server => 10,
        };
        match self {
            Net::Loopback => {
                let [a, b, c] = loopback_base();
                Ipv4Addr::new(a, b, c.saturating_add(block), host)
            }
            Net::Namespaces => Ipv4Addr::new(10, 77, block, host),
        }
    }

    /// Where the client side dials the bench server and iperf3 directly (the baseline).
    pub(crate) fn app_ip(self) -> Ipv4Addr {
        match self {
            Net::Loopback => Ipv4Addr::LOCALHOST,
            Net::Namespaces => self.ip(Side::Server, APP_BLOCK),
        }
    }

    /// What the bench server and iperf3 bind: in the server namespace every address, so the
    /// server-side proxies reach them on 127.0.0.1 (an Istio Sidecar's `defaultEndpoint` must
    /// be loopback) and the baseline client on [`Net::app_ip`]; on loopback, 127.0.0.1.
    pub(crate) fn app_bind(self) -> Ipv4Addr {
        match self {
            Net::Loopback => Ipv4Addr::LOCALHOST,
            Net::Namespaces => Ipv4Addr::UNSPECIFIED,
        }
    }

    /// `server` (as the server side sees it, on 127.0.0.1) as the client side dials it.
    pub(crate) fn client_view(self, server: SocketAddr) -> SocketAddr {
        SocketAddr::from((self.app_ip(), server.port()))
    }

    /// A command running `program` on `side`, pinned to `cpu` (the pid stays the program's:
    /// taskset and `ip netns exec` both exec).
    pub(crate) fn command(self, side: Side, cpu: Option<usize>, program: &Path) -> Command {
        match (self, side) {
            (Net::Namespaces, Side::Server) => {
                let mut c = pinned(cpu, "ip");
                c.args(["netns", "exec", SERVER_NS]).arg(program);
                c
            }
            _ => pinned(cpu, program),
        }
    }

    /// The name in results.json.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Net::Loopback => "loopback",
            Net::Namespaces => "netns+veth",
        }
    }

    /// One line for results.md.
    pub(crate) fn description(self) -> String {
        match self {
            Net::Loopback => "loopback (127.0.0.0/8), one network namespace".into(),
            Net::Namespaces => format!(
                "two network namespaces ({CLIENT_NS}, {SERVER_NS}) joined by a veth pair \
                 (10.77.0.0/16), as on two nodes: load generator and client-side proxies in \
                 one, bench server, iperf3 and server-side proxies in the other"
            ),
        }
    }
}

/// Why the namespaces could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NetnsError {
    /// Not root, or no `ip`.
    #[error("network namespaces need root and iproute2's `ip`")]
    Unavailable,
    /// An `ip` command failed.
    #[error("`ip {args}` failed: {stderr}")]
    Ip {
        /// The arguments.
        args: String,
        /// What it printed.
        stderr: String,
    },
}

/// Whether namespaces can be tried: root, and `ip` runs.
pub(crate) fn namespaces_available() -> bool {
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            == Some("0")
    });
    root && Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The two namespaces and their veth; deleted on drop (which also removes the veth).
pub(crate) struct Namespaces(Names);

impl Namespaces {
    /// Creates both namespaces (replacing leftovers of an interrupted run), the veth pair and
    /// the addresses of every block.
    pub(crate) fn create(names: Names) -> Result<Namespaces, NetnsError> {
        if !namespaces_available() {
            return Err(NetnsError::Unavailable);
        }
        delete_namespaces(names);
        let ns = Namespaces(names);
        ip(&["netns", "add", names.client])?;
        ip(&["netns", "add", names.server])?;
        ip(&[
            "link",
            "add",
            names.client_veth,
            "netns",
            names.client,
            "type",
            "veth",
            "peer",
            "name",
            names.server_veth,
            "netns",
            names.server,
        ])?;
        for (netns, veth, side) in [
            (names.client, names.client_veth, Side::Client),
            (names.server, names.server_veth, Side::Server),
        ] {
            ip(&["-n", netns, "link", "set", "lo", "up"])?;
            for block in BLOCKS {
                let addr = format!("{}/16", Net::Namespaces.ip(side, block));
                ip(&["-n", netns, "addr", "add", &addr, "dev", veth])?;
            }
            ip(&["-n", netns, "link", "set", veth, "up"])?;
        }
        Ok(ns)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        delete_namespaces(self.0);
    }
}

fn delete_namespaces(names: Names) {
    for netns in [names.client, names.server] {
        let _ = Command::new("ip")
            .args(["netns", "delete", netns])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn ip(args: &[&str]) -> Result<(), NetnsError> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| NetnsError::Ip {
            args: args.join(" "),
            stderr: e.to_string(),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetnsError::Ip {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Runs this binary again with `args` inside [`CLIENT_NS`] and waits for it.
pub(crate) fn run_in_client_namespace(
    exe: &Path,
    args: &[std::ffi::OsString],
) -> std::io::Result<ExitStatus> {
    Command::new("ip")
        .args(["netns", "exec", CLIENT_NS])
        .arg(exe)
        .args(args)
        .status()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_distinct_per_side_and_block() {
        for net in [Net::Loopback, Net::Namespaces] {
            let mut seen = std::collections::BTreeSet::new();
            for block in BLOCKS {
                for side in [Side::Client, Side::Server] {
                    assert!(seen.insert(net.ip(side, block)), "{net:?} {side:?} {block}");
                }
            }
        }
        assert_eq!(Net::Loopback.app_ip(), Ipv4Addr::LOCALHOST);
        assert_eq!(
            Net::Namespaces.app_ip(),
            Net::Namespaces.ip(Side::Server, APP_BLOCK)
        );
    }

    #[test]
    fn loopback_bases() {
        let cases = [
            ("127.1.230", Some([127, 1, 230])),
            (" 127.77.0 ", Some([127, 77, 0])),
            ("127.1.248", None),
            ("10.1.2", None),
            ("127.1", None),
            ("127.1.2.3", None),
            ("127.x.2", None),
        ];
        for (v, want) in cases {
            assert_eq!(parse_loopback_base(v), want, "{v}");
        }
    }

    #[test]
    fn server_side_commands_enter_the_server_namespace() {
        let exe = Path::new("/bin/true");
        let c = Net::Namespaces.command(Side::Server, None, exe);
        let args: Vec<_> = c.get_args().collect();
        assert_eq!(c.get_program(), "ip");
        assert_eq!(args, ["netns", "exec", SERVER_NS, "/bin/true"]);
        for (net, side) in [
            (Net::Namespaces, Side::Client),
            (Net::Loopback, Side::Server),
        ] {
            assert_eq!(net.command(side, None, exe).get_program(), "/bin/true");
        }
    }

    /// The real thing, where root allows: a listener in the server namespace is reachable
    /// from the client namespace over the veth, and not on loopback.
    #[test]
    fn namespaces_connect_over_the_veth() {
        if !namespaces_available() {
            eprintln!("SKIP namespaces_connect_over_the_veth: needs root and `ip`");
            return;
        }
        // Names of its own, so a bench running meanwhile keeps its namespaces.
        let names = Names {
            client: "ward-bench-test-c",
            server: "ward-bench-test-s",
            client_veth: "wbtest-c",
            server_veth: "wbtest-s",
        };
        let _ns = Namespaces::create(names).unwrap();
        let server = Net::Namespaces.ip(Side::Server, APP_BLOCK);
        let _listener = crate::process::Proc::spawn(
            "listener",
            Command::new("ip")
                .args(["netns", "exec", names.server, "python3"])
                .args([
                    "-c",
                    &format!(
                        "import socket;s=socket.socket();s.bind(('{server}',7777));s.listen();\
                         c,_=s.accept();c.sendall(b'over-veth');c.close()"
                    ),
                ]),
        )
        .unwrap();
        let out = Command::new("ip")
            .args(["netns", "exec", names.client, "python3", "-c"])
            .arg(format!(
                "import socket,time\nfor i in range(100):\n  try:\n    \
                 s=socket.create_connection(('{server}',7777),1);break\n  \
                 except OSError: time.sleep(0.05)\nprint(s.recv(64).decode())"
            ))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "over-veth",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
