//! Transparent capture: the iptables rules that send a workload's TCP traffic through its proxy,
//! in the style of istio-init (istio/istio `tools/istio-iptables`), and the socket options the
//! proxy needs under them (docs/capture.md).
//!
//! Decide, then do: [`Plan`] is the exact rule text (pure, tested line by line); [`install`] and
//! [`remove`] carry it out with `iptables-save` / `iptables-restore` (one atomic restore per
//! install). Every socket the proxy opens toward the network carries [`SOCKET_MARK`] (set with
//! `SO_MARK` by [`mark_socket`]) once capture is on, and the rules let marked packets through,
//! so the proxy never captures itself.
//!
//! Both families: the same rules go into `iptables` and `ip6tables` (nat table), each with its
//! family's loopback range and CIDRs.

use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use ipnet::IpNet;

/// Where captured outbound TCP is redirected (Istio: 15001).
pub const OUTBOUND_CAPTURE_PORT: u16 = 15001;
/// Where captured inbound TCP is redirected (Istio: 15006).
pub const INBOUND_CAPTURE_PORT: u16 = 15006;
/// Where captured DNS (UDP and TCP port 53) is redirected (Istio's DNS proxy: 15053).
pub const DNS_CAPTURE_PORT: u16 = 15053;
/// The mark on every socket the proxy opens (`SO_MARK`): 1337 (`0x539`), the number Istio uses
/// for its proxy's uid and ambient's packet mark. Packets carrying it are never captured.
pub const SOCKET_MARK: u32 = 0x539;
/// The prefix of every chain Ward creates; [`remove`] deletes exactly those chains and the jumps
/// to them.
pub const CHAIN_PREFIX: &str = "WARD_";

const INBOUND: &str = "WARD_INBOUND";
const IN_REDIRECT: &str = "WARD_IN_REDIRECT";
const OUTPUT: &str = "WARD_OUTPUT";
const REDIRECT: &str = "WARD_REDIRECT";
const DNS: &str = "WARD_DNS";

/// An address family, and the programs that manage its rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// `iptables`.
    V4,
    /// `ip6tables`.
    V6,
}

impl Family {
    fn save(self) -> &'static str {
        match self {
            Family::V4 => "iptables-save",
            Family::V6 => "ip6tables-save",
        }
    }

    fn restore(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }

    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }

    fn has(self, ip: IpAddr) -> bool {
        ip.is_ipv4() == (self == Family::V4)
    }
}

/// The mark this process puts on its sockets; 0 until capture is installed.
static ACTIVE_MARK: AtomicU32 = AtomicU32::new(0);

/// From now on, every socket the proxy opens carries `mark` (0: none).
pub fn set_socket_mark(mark: u32) {
    ACTIVE_MARK.store(mark, Ordering::Release);
}

/// Puts the process's mark on `socket` before it connects; nothing when capture is off.
pub fn mark_socket<S: std::os::fd::AsFd>(socket: &S) -> io::Result<()> {
    let mark = ACTIVE_MARK.load(Ordering::Acquire);
    if mark == 0 {
        return Ok(());
    }
    socket2::SockRef::from(socket).set_mark(mark)
}

/// A TCP connection to `addr` from a marked socket (optionally bound to `local`).
pub async fn connect(addr: SocketAddr, local: Option<IpAddr>) -> io::Result<tokio::net::TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }?;
    mark_socket(&socket)?;
    if let Some(local) = local.filter(|l| l.is_ipv4() == addr.is_ipv4()) {
        socket.bind(SocketAddr::new(local, 0))?;
    }
    socket.connect(addr).await
}

/// An IPv6-only listener on `addr` (so `[::]` does not also take the IPv4 port).
pub(crate) fn bind_v6_only(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)?;
    socket.set_only_v6(true)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    tokio::net::TcpListener::from_std(socket.into())
}

/// The destination a captured connection was sent to before the REDIRECT rule
/// (`getsockopt(SOL_IP, SO_ORIGINAL_DST)`).
pub(crate) fn original_dst(tcp: &tokio::net::TcpStream) -> io::Result<SocketAddr> {
    let sock = socket2::SockRef::from(tcp);
    let addr = match tcp.local_addr()? {
        SocketAddr::V4(_) => sock.original_dst_v4()?,
        SocketAddr::V6(_) => sock.original_dst_v6()?,
    };
    addr.as_socket()
        .ok_or_else(|| io::Error::other("the original destination is not an IP address"))
}

/// The capture ports, as listeners a `jwksUri` must never reach.
pub fn listeners() -> Vec<ward_authn::jwks_uri::OwnListener> {
    use ward_authn::jwks_uri::OwnListener;
    vec![
        OwnListener {
            addr: SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), OUTBOUND_CAPTURE_PORT),
            what: "the outbound capture port".to_owned(),
        },
        OwnListener {
            addr: SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), INBOUND_CAPTURE_PORT),
            what: "the inbound capture port".to_owned(),
        },
        OwnListener {
            addr: SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), OUTBOUND_CAPTURE_PORT),
            what: "the outbound capture port (IPv6)".to_owned(),
        },
        OwnListener {
            addr: SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), INBOUND_CAPTURE_PORT),
            what: "the inbound capture port (IPv6)".to_owned(),
        },
    ]
}

/// What to capture (the `--capture-*` flags of `ward up`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CaptureOptions {
    /// Ports never captured, in either direction.
    pub exclude_ports: Vec<u16>,
    /// Inbound destination ports never captured (Istio's `excludeInboundPorts`).
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ports never captured (Istio's `excludeOutboundPorts`).
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound destinations never captured.
    pub exclude_cidrs: Vec<IpNet>,
    /// Outbound destinations captured; empty: all.
    pub include_cidrs: Vec<IpNet>,
    /// Redirect the workload's DNS (UDP and TCP port 53) to `127.0.0.1:15053`.
    pub dns: bool,
    /// The admin port, never captured inbound.
    pub admin_port: Option<u16>,
    /// A user whose outbound traffic is never captured, besides the marked sockets: the
    /// proxy's, when it runs without `CAP_NET_ADMIN` (which `SO_MARK` needs) beside rules an
    /// init container installed (Istio's `--uid-owner 1337` rule).
    pub proxy_uid: Option<u32>,
    /// A source address whose inbound TCP goes straight to the app, uncaptured: the address
    /// health probes come from (docs/capture.md, "Health probes").
    pub probe_source: Option<IpAddr>,
}

/// Why capture could not be installed or removed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// `iptables-save` / `iptables-restore` / `iptables` could not run or failed.
    #[error("{command}: {reason}")]
    Command {
        /// What was run.
        command: String,
        /// Why it failed (its stderr).
        reason: String,
    },
}

/// The rules of one capture, as iptables rule specifications (`-A CHAIN ...`) in the nat
/// table: the jumps from the built-in chains first, then Ward's chains. Pure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Whose rules: `iptables` or `ip6tables`.
    pub family: Family,
    /// Ward's chains, in creation order.
    pub chains: Vec<&'static str>,
    /// Every rule, in order.
    pub rules: Vec<String>,
}

impl Plan {
    /// The IPv4 rules for `opts`, with `mark` as the proxy's socket mark.
    pub fn new(opts: &CaptureOptions, mark: u32) -> Plan {
        Plan::for_family(opts, mark, Family::V4)
    }

    /// The rules of one family: the CIDRs and the probe source of that family only. With
    /// `include_cidrs` given but none of this family, nothing of it is captured outbound.
    pub fn for_family(opts: &CaptureOptions, mark: u32, family: Family) -> Plan {
        let of_family = |nets: &[IpNet]| -> Vec<IpNet> {
            nets.iter()
                .filter(|n| family.has(n.addr()))
                .copied()
                .collect()
        };
        let exclude_cidrs = of_family(&opts.exclude_cidrs);
        let include_cidrs = of_family(&opts.include_cidrs);
        let mut chains = vec![INBOUND, IN_REDIRECT, OUTPUT, REDIRECT];
        let mut r = Vec::new();
        r.push(format!("-A PREROUTING -p tcp -j {INBOUND}"));
        r.push(format!("-A OUTPUT -p tcp -j {OUTPUT}"));
        if opts.dns {
            chains.push(DNS);
            r.push(format!("-A OUTPUT -p udp --dport 53 -j {DNS}"));
        }
        // Inbound: everything to the workload but the proxy's own ports and the exclusions.
        let mut inbound_excluded = vec![ward_hbone::HBONE_PORT];
        inbound_excluded.extend(opts.admin_port);
        inbound_excluded.extend(&opts.exclude_ports);
        inbound_excluded.extend(&opts.exclude_inbound_ports);
        dedup_keep_order(&mut inbound_excluded);
        for port in &inbound_excluded {
            r.push(format!("-A {INBOUND} -p tcp --dport {port} -j RETURN"));
        }
        if let Some(src) = opts.probe_source.filter(|s| family.has(*s)) {
            r.push(format!(
                "-A {INBOUND} -s {} -p tcp -j RETURN",
                IpNet::from(src)
            ));
        }
        r.push(format!("-A {INBOUND} -p tcp -j {IN_REDIRECT}"));
        r.push(format!(
            "-A {IN_REDIRECT} -p tcp -j REDIRECT --to-ports {INBOUND_CAPTURE_PORT}"
        ));
        // Outbound: the proxy's own sockets and loopback first, then the exclusions.
        r.push(format!("-A {OUTPUT} -m mark --mark {mark:#x} -j RETURN"));
        if let Some(uid) = opts.proxy_uid {
            r.push(format!("-A {OUTPUT} -m owner --uid-owner {uid} -j RETURN"));
        }
        r.push(format!("-A {OUTPUT} -d {} -j RETURN", family.loopback()));
        if opts.dns {
            r.push(format!(
                "-A {OUTPUT} -p tcp --dport 53 -j REDIRECT --to-ports {DNS_CAPTURE_PORT}"
            ));
        }
        let mut outbound_excluded = opts.exclude_ports.clone();
        outbound_excluded.extend(&opts.exclude_outbound_ports);
        dedup_keep_order(&mut outbound_excluded);
        for port in &outbound_excluded {
            r.push(format!("-A {OUTPUT} -p tcp --dport {port} -j RETURN"));
        }
        for net in &exclude_cidrs {
            r.push(format!("-A {OUTPUT} -d {net} -j RETURN"));
        }
        if opts.include_cidrs.is_empty() {
            r.push(format!("-A {OUTPUT} -j {REDIRECT}"));
        } else {
            for net in &include_cidrs {
                r.push(format!("-A {OUTPUT} -d {net} -j {REDIRECT}"));
            }
        }
        r.push(format!(
            "-A {REDIRECT} -p tcp -j REDIRECT --to-ports {OUTBOUND_CAPTURE_PORT}"
        ));
        if opts.dns {
            r.push(format!("-A {DNS} -m mark --mark {mark:#x} -j RETURN"));
            if let Some(uid) = opts.proxy_uid {
                r.push(format!("-A {DNS} -m owner --uid-owner {uid} -j RETURN"));
            }
            r.push(format!(
                "-A {DNS} -p udp -j REDIRECT --to-ports {DNS_CAPTURE_PORT}"
            ));
        }
        Plan {
            family,
            chains,
            rules: r,
        }
    }

    /// The `iptables-restore --noflush` input that replaces whatever Ward installed before
    /// (`existing`: the output of `iptables-save -t nat`) with this plan, in one commit.
    pub fn restore_input(&self, existing: &str) -> String {
        let old = installed(existing);
        let mut out = String::from("*nat\n");
        for jump in &old.jumps {
            let _ = writeln!(out, "-D {jump}");
        }
        // Declaring a chain flushes it when it exists.
        for chain in self.chains.iter().copied().chain(
            old.chains
                .iter()
                .map(String::as_str)
                .filter(|c| !self.chains.contains(c)),
        ) {
            let _ = writeln!(out, ":{chain} - [0:0]");
        }
        for chain in old
            .chains
            .iter()
            .filter(|c| !self.chains.contains(&c.as_str()))
        {
            let _ = writeln!(out, "-X {chain}");
        }
        for rule in &self.rules {
            out.push_str(rule);
            out.push('\n');
        }
        out.push_str("COMMIT\n");
        out
    }
}

fn dedup_keep_order(ports: &mut Vec<u16>) {
    let mut seen = std::collections::BTreeSet::new();
    ports.retain(|p| seen.insert(*p));
}

/// What Ward has installed, read from `iptables-save -t nat`.
#[derive(Debug, Default, PartialEq, Eq)]
struct Installed {
    /// Rules in built-in chains that jump to a Ward chain, without their `-A `.
    jumps: Vec<String>,
    /// Ward's chains.
    chains: Vec<String>,
}

fn installed(save: &str) -> Installed {
    let mut found = Installed::default();
    for line in save.lines() {
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or_default();
            if name.starts_with(CHAIN_PREFIX) {
                found.chains.push(name.to_owned());
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let chain = rule.split_whitespace().next().unwrap_or_default();
            let target = rule
                .split_whitespace()
                .skip_while(|w| *w != "-j")
                .nth(1)
                .unwrap_or_default();
            if !chain.starts_with(CHAIN_PREFIX) && target.starts_with(CHAIN_PREFIX) {
                found.jumps.push(rule.to_owned());
            }
        }
    }
    found
}

/// The `iptables-restore --noflush` input that deletes exactly Ward's jumps and chains; `None`
/// when nothing is installed.
pub fn removal_input(existing: &str) -> Option<String> {
    let old = installed(existing);
    if old.jumps.is_empty() && old.chains.is_empty() {
        return None;
    }
    let mut out = String::from("*nat\n");
    for jump in &old.jumps {
        let _ = writeln!(out, "-D {jump}");
    }
    for chain in &old.chains {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    for chain in &old.chains {
        let _ = writeln!(out, "-X {chain}");
    }
    out.push_str("COMMIT\n");
    Some(out)
}

fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<String, CaptureError> {
    let command = format!("{program} {}", args.join(" "));
    let fail = |reason: String| CaptureError::Command {
        command: command.clone(),
        reason,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        use std::io::Write as _;
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| fail(e.to_string()))?;
    }
    let output = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !output.status.success() {
        return Err(fail(
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Installs `plan` in the current network namespace, replacing any earlier install (one left
/// by a killed proxy included), in one `iptables-restore` (`ip6tables-restore`) commit. Needs
/// root (`CAP_NET_ADMIN`).
pub fn install(plan: &Plan) -> Result<(), CaptureError> {
    let existing = run(plan.family.save(), &["-t", "nat"], None)?;
    let input = plan.restore_input(&existing);
    run(plan.family.restore(), &["--noflush"], Some(&input))?;
    Ok(())
}

/// Removes Ward's chains and the jumps to them of one family from the current network
/// namespace; other rules are untouched. Returns whether anything was installed.
pub fn remove(family: Family) -> Result<bool, CaptureError> {
    let existing = run(family.save(), &["-t", "nat"], None)?;
    match removal_input(&existing) {
        Some(input) => {
            run(family.restore(), &["--noflush"], Some(&input))?;
            Ok(true)
        }
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_plan_is_exactly_these_rules() {
        let opts = CaptureOptions {
            admin_port: Some(15000),
            ..Default::default()
        };
        let plan = Plan::new(&opts, SOCKET_MARK);
        assert_eq!(
            plan.rules,
            [
                "-A PREROUTING -p tcp -j WARD_INBOUND",
                "-A OUTPUT -p tcp -j WARD_OUTPUT",
                "-A WARD_INBOUND -p tcp --dport 15008 -j RETURN",
                "-A WARD_INBOUND -p tcp --dport 15000 -j RETURN",
                "-A WARD_INBOUND -p tcp -j WARD_IN_REDIRECT",
                "-A WARD_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
                "-A WARD_OUTPUT -m mark --mark 0x539 -j RETURN",
                "-A WARD_OUTPUT -d 127.0.0.0/8 -j RETURN",
                "-A WARD_OUTPUT -j WARD_REDIRECT",
                "-A WARD_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
            ]
        );
        assert_eq!(
            plan.chains,
            [
                "WARD_INBOUND",
                "WARD_IN_REDIRECT",
                "WARD_OUTPUT",
                "WARD_REDIRECT"
            ]
        );
    }

    #[test]
    fn exclusions_inclusions_probes_and_dns() {
        let opts = CaptureOptions {
            exclude_ports: vec![22, 15008, 22],
            exclude_inbound_ports: vec![9090],
            exclude_outbound_ports: vec![5432],
            exclude_cidrs: vec![
                "10.9.0.0/16".parse().unwrap(),
                "fd00:9::/32".parse().unwrap(),
            ],
            include_cidrs: vec![
                "10.0.0.0/8".parse().unwrap(),
                "192.0.2.0/24".parse().unwrap(),
                "fd00::/8".parse().unwrap(),
            ],
            dns: true,
            admin_port: None,
            proxy_uid: None,
            probe_source: Some("169.254.7.127".parse().unwrap()),
        };
        let plan = Plan::new(&opts, 0x539);
        assert_eq!(
            plan.rules,
            [
                "-A PREROUTING -p tcp -j WARD_INBOUND",
                "-A OUTPUT -p tcp -j WARD_OUTPUT",
                "-A OUTPUT -p udp --dport 53 -j WARD_DNS",
                "-A WARD_INBOUND -p tcp --dport 15008 -j RETURN",
                "-A WARD_INBOUND -p tcp --dport 22 -j RETURN",
                "-A WARD_INBOUND -p tcp --dport 9090 -j RETURN",
                "-A WARD_INBOUND -s 169.254.7.127/32 -p tcp -j RETURN",
                "-A WARD_INBOUND -p tcp -j WARD_IN_REDIRECT",
                "-A WARD_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
                "-A WARD_OUTPUT -m mark --mark 0x539 -j RETURN",
                "-A WARD_OUTPUT -d 127.0.0.0/8 -j RETURN",
                "-A WARD_OUTPUT -p tcp --dport 53 -j REDIRECT --to-ports 15053",
                "-A WARD_OUTPUT -p tcp --dport 22 -j RETURN",
                "-A WARD_OUTPUT -p tcp --dport 15008 -j RETURN",
                "-A WARD_OUTPUT -p tcp --dport 5432 -j RETURN",
                "-A WARD_OUTPUT -d 10.9.0.0/16 -j RETURN",
                "-A WARD_OUTPUT -d 10.0.0.0/8 -j WARD_REDIRECT",
                "-A WARD_OUTPUT -d 192.0.2.0/24 -j WARD_REDIRECT",
                "-A WARD_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
                "-A WARD_DNS -m mark --mark 0x539 -j RETURN",
                "-A WARD_DNS -p udp -j REDIRECT --to-ports 15053",
            ]
        );
        let v6 = Plan::for_family(&opts, 0x539, Family::V6);
        assert_eq!(v6.family, Family::V6);
        let outbound: Vec<&str> = v6
            .rules
            .iter()
            .map(String::as_str)
            .filter(|r| r.starts_with("-A WARD_OUTPUT") || r.starts_with("-A WARD_INBOUND -s"))
            .collect();
        assert_eq!(
            outbound,
            [
                "-A WARD_OUTPUT -m mark --mark 0x539 -j RETURN",
                "-A WARD_OUTPUT -d ::1/128 -j RETURN",
                "-A WARD_OUTPUT -p tcp --dport 53 -j REDIRECT --to-ports 15053",
                "-A WARD_OUTPUT -p tcp --dport 22 -j RETURN",
                "-A WARD_OUTPUT -p tcp --dport 15008 -j RETURN",
                "-A WARD_OUTPUT -p tcp --dport 5432 -j RETURN",
                "-A WARD_OUTPUT -d fd00:9::/32 -j RETURN",
                "-A WARD_OUTPUT -d fd00::/8 -j WARD_REDIRECT",
            ],
            "IPv6: its own loopback and CIDRs, no IPv4 probe source"
        );
        let only_v4 = CaptureOptions {
            include_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
            ..Default::default()
        };
        assert!(
            !Plan::for_family(&only_v4, 1, Family::V6)
                .rules
                .iter()
                .any(|r| r.contains("-j WARD_REDIRECT")),
            "IPv4 CIDRs only: no IPv6 destination is captured outbound"
        );
    }

    /// `iptables-save -t nat` after an install with DNS, plus a rule of someone else's.
    const SAVED: &str = "# Generated by iptables-save\n*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:WARD_DNS - [0:0]\n:WARD_INBOUND - [0:0]\n:OTHER - [0:0]\n-A PREROUTING -p tcp -j WARD_INBOUND\n-A OUTPUT -p udp -m udp --dport 53 -j WARD_DNS\n-A OUTPUT -p tcp -j OTHER\n-A POSTROUTING -j MASQUERADE\n-A WARD_INBOUND -p tcp -j RETURN\nCOMMIT\n";

    #[test]
    fn reinstall_replaces_the_old_install_in_one_commit() {
        let plan = Plan::new(&CaptureOptions::default(), 0x539);
        let input = plan.restore_input(SAVED);
        let head: Vec<&str> = input.lines().take(9).collect();
        assert_eq!(
            head,
            [
                "*nat",
                "-D PREROUTING -p tcp -j WARD_INBOUND",
                "-D OUTPUT -p udp -m udp --dport 53 -j WARD_DNS",
                ":WARD_INBOUND - [0:0]",
                ":WARD_IN_REDIRECT - [0:0]",
                ":WARD_OUTPUT - [0:0]",
                ":WARD_REDIRECT - [0:0]",
                ":WARD_DNS - [0:0]",
                "-X WARD_DNS",
            ]
        );
        assert!(input.ends_with("-A WARD_REDIRECT -p tcp -j REDIRECT --to-ports 15001\nCOMMIT\n"));
        assert!(!input.contains("OTHER"), "other chains are left alone");
        // On a clean table: no deletions.
        let clean = plan.restore_input("*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n");
        assert!(!clean.contains("-D ") && !clean.contains("-X "));
    }

    #[test]
    fn removal_deletes_exactly_wards_jumps_and_chains() {
        assert_eq!(
            removal_input(SAVED).unwrap(),
            "*nat\n-D PREROUTING -p tcp -j WARD_INBOUND\n-D OUTPUT -p udp -m udp --dport 53 -j WARD_DNS\n:WARD_DNS - [0:0]\n:WARD_INBOUND - [0:0]\n-X WARD_DNS\n-X WARD_INBOUND\nCOMMIT\n"
        );
        assert_eq!(
            removal_input("*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j OTHER\nCOMMIT\n"),
            None
        );
    }

    #[test]
    fn the_proxy_user_is_let_out_after_the_mark() {
        let opts = CaptureOptions {
            proxy_uid: Some(1337),
            dns: true,
            ..Default::default()
        };
        let rules = Plan::new(&opts, SOCKET_MARK).rules;
        let at = |rule: &str| rules.iter().position(|r| r == rule).unwrap();
        assert_eq!(
            at("-A WARD_OUTPUT -m owner --uid-owner 1337 -j RETURN"),
            at("-A WARD_OUTPUT -m mark --mark 0x539 -j RETURN") + 1
        );
        assert!(rules.contains(&"-A WARD_DNS -m owner --uid-owner 1337 -j RETURN".to_owned()));
    }
}
