//! The upstream resolvers and search domains of `/etc/resolv.conf` (resolv.conf(5)): pure
//! parsing, and one function that reads the file.
//!
//! - `nameserver <ip>`: an upstream, on port 53, in file order; IPv6 with a numeric zone
//!   (`fe80::1%2`) is accepted, a named zone (`%eth0`) is an error (naming it needs a lookup of
//!   the interface);
//! - `search <domain>...` and `domain <domain>`: the search list; the last such line wins, as
//!   in glibc;
//! - `#` and `;` start comments (at the start of a line or after the values); other keywords
//!   (`options`, `sortlist`) are ignored.
//!
//! A file without a `nameserver` line is an error: glibc would fall back to the local host,
//! where the capture would send the proxy's own queries back to it.

use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::path::{Path, PathBuf};

/// The port of every `nameserver`.
pub const DNS_PORT: u16 = 53;

/// What the proxy takes from resolv.conf.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvConf {
    /// The upstream resolvers, in the order to try them.
    pub nameservers: Vec<SocketAddr>,
    /// The search domains, in order (without trailing dots).
    pub search: Vec<String>,
}

/// A resolv.conf that cannot be used, with the file and the line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolvConfError {
    /// The file could not be read.
    #[error("{path}: cannot read the resolver configuration: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// A line could not be parsed.
    #[error("{path}:{line}: {reason}")]
    Line {
        /// The file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// No `nameserver` line.
    #[error("{path}: no `nameserver` line: the DNS proxy has no upstream resolver to forward to")]
    NoNameserver {
        /// The file.
        path: PathBuf,
    },
}

/// Reads and parses the resolver configuration at `path` (usually `/etc/resolv.conf`).
pub fn read_resolv_conf(path: &Path) -> Result<ResolvConf, ResolvConfError> {
    let text = std::fs::read_to_string(path).map_err(|e| ResolvConfError::Read {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    parse_resolv_conf(&text, path)
}

/// Parses resolv.conf `text`; `path` only names the file in errors.
pub fn parse_resolv_conf(text: &str, path: &Path) -> Result<ResolvConf, ResolvConfError> {
    let mut conf = ResolvConf::default();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.split(['#', ';']).next().unwrap_or_default();
        let mut words = line.split_whitespace();
        let Some(keyword) = words.next() else {
            continue;
        };
        let values: Vec<&str> = words.collect();
        let fail = |reason: String| ResolvConfError::Line {
            path: path.to_owned(),
            line: index + 1,
            reason,
        };
        match keyword {
            "nameserver" => {
                let [value] = values.as_slice() else {
                    return Err(fail(format!(
                        "`nameserver` takes one address, found {}",
                        values.len()
                    )));
                };
                let addr = parse_nameserver(value).map_err(fail)?;
                conf.nameservers.push(addr);
            }
            "search" | "domain" => {
                if values.is_empty() {
                    return Err(fail(format!("`{keyword}` without a domain")));
                }
                conf.search = values
                    .iter()
                    .map(|d| d.trim_end_matches('.').to_owned())
                    .filter(|d| !d.is_empty())
                    .collect();
            }
            _ => {}
        }
    }
    if conf.nameservers.is_empty() {
        return Err(ResolvConfError::NoNameserver {
            path: path.to_owned(),
        });
    }
    Ok(conf)
}

fn parse_nameserver(value: &str) -> Result<SocketAddr, String> {
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DNS_PORT));
    }
    if let Some((ip, zone)) = value.split_once('%') {
        let ip: Ipv6Addr = ip
            .parse()
            .map_err(|_| format!("`nameserver {value}`: not an IPv6 address before `%`"))?;
        let scope: u32 = zone.parse().map_err(|_| {
            format!("`nameserver {value}`: only a numeric IPv6 zone is supported (not `{zone}`)")
        })?;
        return Ok(SocketAddr::V6(SocketAddrV6::new(ip, DNS_PORT, 0, scope)));
    }
    Err(format!("`nameserver {value}`: not an IP address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ResolvConf, ResolvConfError> {
        parse_resolv_conf(text, Path::new("/etc/resolv.conf"))
    }

    #[test]
    fn kubernetes_pod_resolv_conf() {
        let conf = parse(
            "search clinic.svc.cluster.local svc.cluster.local cluster.local\n\
             nameserver 10.96.0.10\n\
             options ndots:5\n",
        )
        .unwrap();
        assert_eq!(conf.nameservers, ["10.96.0.10:53".parse().unwrap()]);
        assert_eq!(
            conf.search,
            [
                "clinic.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local"
            ]
        );
    }

    #[test]
    fn nameservers_in_order_ipv6_and_comments() {
        let conf = parse(
            "# generated\n\
             ; also a comment\n\
             nameserver 192.0.2.1 # first\n\
             \tnameserver   2001:db8::53\n\
             nameserver fe80::1%2\n\
             domain example.org.\n",
        )
        .unwrap();
        assert_eq!(
            conf.nameservers,
            [
                "192.0.2.1:53".parse().unwrap(),
                "[2001:db8::53]:53".parse().unwrap(),
                SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 53, 0, 2)),
            ]
        );
        assert_eq!(conf.search, ["example.org"]);
    }

    #[test]
    fn the_last_search_or_domain_line_wins() {
        let conf =
            parse("search a.example b.example\nnameserver 192.0.2.1\ndomain c.example\n").unwrap();
        assert_eq!(conf.search, ["c.example"]);
        let conf =
            parse("domain c.example\nsearch a.example b.example\nnameserver 192.0.2.1\n").unwrap();
        assert_eq!(conf.search, ["a.example", "b.example"]);
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let err = parse("nameserver 192.0.2.1\nnameserver dns.example\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/resolv.conf:2: `nameserver dns.example`: not an IP address"
        );
        let err = parse("\n\nnameserver\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/resolv.conf:3: `nameserver` takes one address, found 0"
        );
        let err = parse("nameserver fe80::1%eth0\n").unwrap_err();
        assert!(
            err.to_string().starts_with("/etc/resolv.conf:1: ")
                && err.to_string().contains("`eth0`"),
            "{err}"
        );
        let err = parse("search\nnameserver 192.0.2.1\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/resolv.conf:1: `search` without a domain"
        );
    }

    #[test]
    fn no_nameserver_is_an_error() {
        let err = parse("search example.org\noptions ndots:2\n").unwrap_err();
        assert_eq!(
            err,
            ResolvConfError::NoNameserver {
                path: PathBuf::from("/etc/resolv.conf")
            }
        );
        assert!(err.to_string().contains("no `nameserver` line"));
    }

    #[test]
    fn reading_a_missing_file_names_it() {
        let err = read_resolv_conf(Path::new("/nonexistent/resolv.conf")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/nonexistent/resolv.conf: cannot read"),
            "{err}"
        );
    }
}
