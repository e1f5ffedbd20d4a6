//! Checking a `jwksUri` before anyone fetches it (SSRF, GHSA-fgw5-hp8f-xfhc).
//!
//! Rules:
//! - `https://` is required. Plain `http://` is allowed only to a loopback host (`localhost`,
//!   127.0.0.0/8, `::1`): local IdPs in development and Ward's own tests. This is looser than
//!   refusing loopback outright (docs/threats.md, "JWT and JWKS") and is why the next rule
//!   exists.
//! - The default admin port on loopback (15000: Ward's `--admin` default, and ztunnel/Envoy
//!   admin) is refused, whatever the scheme: an IdP never lives there, an attacker pointing the
//!   fetcher at it does.
//! - Ward's own listeners are refused: [`own_listener`] tells whether an address reaches one
//!   of them. Its callers supply the set: translation checks every workload's HBONE, inbound
//!   and egress listeners against [`literal_addrs`] (a config error naming the field), and the
//!   fetcher checks the addresses a host resolves to against its sidecar's listeners and the
//!   actual `--admin` address, which only the running process knows.
//! - Link-local hosts (169.254.0.0/16, which holds cloud metadata at 169.254.169.254, and
//!   fe80::/10, IPv4-mapped forms included) and unspecified addresses (0.0.0.0, `::`, which
//!   reach loopback) are refused.
//! - Hosts must be a dotted-quad IPv4, a bracketed IPv6 or a DNS name whose last label is not
//!   all digits: `http://2852039166/` or `http://0xa9.254.169.254/` would be read as IPv4 by
//!   some resolvers, so they are refused rather than guessed at.
//! - No user-info (`user@host`), no fragment.
//!
//! A DNS name can still resolve to a forbidden address; the fetcher must check the resolved
//! address with [`forbidden_ip`] and [`own_listener`] before connecting.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The admin port refused on loopback hosts (Ward's `--admin` default, and ztunnel's and
/// Envoy's admin port), whatever Ward's actual admin address is.
const ADMIN_PORT: u16 = 15000;

/// One of Ward's own listening sockets, which a `jwksUri` must never reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnListener {
    /// The bound address; an unspecified IP (`0.0.0.0`, `::`) listens on every local address.
    pub addr: SocketAddr,
    /// What it is, for messages: `the admin API`, `the HBONE listener of app/srv` ...
    pub what: String,
}

/// Why a `jwksUri` was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwksUriError {
    /// Neither `https://` nor `http://`.
    #[error("scheme must be https (or http to a loopback host)")]
    Scheme,
    /// `http://` to a host that is not loopback.
    #[error("plain http is only allowed to a loopback host")]
    PlainHttp,
    /// No host, or a host that is not a valid name or address.
    #[error("host is missing or malformed")]
    BadHost,
    /// `user@host` or a fragment.
    #[error("user-info and fragments are not allowed")]
    BadSyntax,
    /// The port is not a number in 1..=65535.
    #[error("port is malformed")]
    BadPort,
    /// A link-local or unspecified address.
    #[error("link-local and unspecified addresses are not allowed")]
    ForbiddenAddress,
    /// The proxy admin port on loopback.
    #[error("the proxy admin port is not a JWKS endpoint")]
    AdminPort,
}

/// A checked `jwksUri`, split into the parts a fetcher needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwksUri {
    /// The URI as written.
    pub uri: String,
    /// True for `https`.
    pub tls: bool,
    /// Host name or address, without brackets.
    pub host: String,
    /// Port (explicit, or 443/80 by scheme).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path_and_query: String,
}

/// Checks `uri` against the rules in the module doc.
pub fn parse(uri: &str) -> Result<JwksUri, JwksUriError> {
    let (tls, rest) = if let Some(rest) = strip_prefix_ignore_case(uri, "https://") {
        (true, rest)
    } else if let Some(rest) = strip_prefix_ignore_case(uri, "http://") {
        (false, rest)
    } else {
        return Err(JwksUriError::Scheme);
    };
    if rest.contains('#') {
        return Err(JwksUriError::BadSyntax);
    }
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    if authority.contains('@') {
        return Err(JwksUriError::BadSyntax);
    }
    let (host, port) = split_host_port(authority)?;
    let port = match port {
        Some(p) => p,
        None if tls => 443,
        None => 80,
    };
    let (ip, loopback_name) = classify_host(host)?;
    if let Some(ip) = ip {
        if forbidden_ip(ip) {
            return Err(JwksUriError::ForbiddenAddress);
        }
    }
    let loopback = loopback_name || ip.is_some_and(|ip| ip.to_canonical().is_loopback());
    if loopback && port == ADMIN_PORT {
        return Err(JwksUriError::AdminPort);
    }
    if !tls && !loopback {
        return Err(JwksUriError::PlainHttp);
    }
    let path_and_query = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    Ok(JwksUri {
        uri: uri.to_owned(),
        tls,
        host: host.to_ascii_lowercase(),
        port,
        path_and_query,
    })
}

/// True for addresses a JWKS fetch must never reach: link-local (169.254.0.0/16, fe80::/10)
/// and unspecified (0.0.0.0, `::`), IPv4-mapped forms included.
pub fn forbidden_ip(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.is_link_local() || v4.is_unspecified(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80 || v6.is_unspecified(),
    }
}

/// The addresses a checked `jwksUri` names before any DNS lookup: its IP literal, or the
/// loopback addresses for `localhost` and `*.localhost` (RFC 6761 §6.3: they resolve to
/// loopback). Empty for other names: check what they resolve to.
pub fn literal_addrs(uri: &JwksUri) -> Vec<SocketAddr> {
    if let Ok(ip) = uri.host.parse::<IpAddr>() {
        return vec![SocketAddr::new(ip, uri.port)];
    }
    let name = uri.host.strip_suffix('.').unwrap_or(&uri.host);
    if name.eq_ignore_ascii_case("localhost") || name.to_ascii_lowercase().ends_with(".localhost") {
        return vec![
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), uri.port),
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), uri.port),
        ];
    }
    Vec::new()
}

/// The listener in `own` that a connection to `target` would reach, if any.
///
/// A listener on a specific address is reached at that address and port. One on an
/// unspecified address (`0.0.0.0`; `::`, which also takes IPv4 unless `IPV6_V6ONLY`) is reached
/// at that port on any address of this host: loopback, the address of any other own listener,
/// or `target` when the caller knows it is local (`target_is_local`: the fetcher's connected
/// socket has `target`'s IP as its own).
pub fn own_listener(
    target: SocketAddr,
    own: &[OwnListener],
    target_is_local: bool,
) -> Option<&OwnListener> {
    let ip = target.ip().to_canonical();
    let local = target_is_local
        || ip.is_loopback()
        || ip.is_unspecified()
        || own
            .iter()
            .any(|l| !l.addr.ip().is_unspecified() && l.addr.ip().to_canonical() == ip);
    own.iter().find(|l| {
        if l.addr.port() != target.port() {
            return false;
        }
        match l.addr.ip().to_canonical() {
            IpAddr::V4(any) if any.is_unspecified() => local && ip.is_ipv4(),
            IpAddr::V6(any) if any.is_unspecified() => local,
            bound => bound == ip,
        }
    })
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), JwksUriError> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or(JwksUriError::BadHost)?;
        match after {
            "" => (host, None),
            _ => (
                host,
                Some(after.strip_prefix(':').ok_or(JwksUriError::BadHost)?),
            ),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => None,
        // `u16::from_str` accepts a leading `+`; a URI port is digits only.
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            match p.parse::<u16>() {
                Ok(p) if p != 0 => Some(p),
                _ => return Err(JwksUriError::BadPort),
            }
        }
        Some(_) => return Err(JwksUriError::BadPort),
    };
    if host.is_empty() {
        return Err(JwksUriError::BadHost);
    }
    Ok((host, port))
}

/// Returns the host's IP if it is a literal, and whether it is the name `localhost`.
fn classify_host(host: &str) -> Result<(Option<IpAddr>, bool), JwksUriError> {
    if host.contains(':') {
        // Only reachable through brackets: `split_host_port` splits unbracketed colons.
        let v6: Ipv6Addr = host.parse().map_err(|_| JwksUriError::BadHost)?;
        return Ok((Some(IpAddr::V6(v6)), false));
    }
    if let Ok(v4) = host.parse::<Ipv4Addr>() {
        return Ok((Some(IpAddr::V4(v4)), false));
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let labels_ok = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    let last_is_numeric = name
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()) || l.starts_with("0x"));
    if !labels_ok || last_is_numeric || name.starts_with("0x") {
        return Err(JwksUriError::BadHost);
    }
    Ok((None, name.eq_ignore_ascii_case("localhost")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn table() {
        use JwksUriError::*;
        type Case<'a> = (&'a str, Result<(bool, &'a str, u16, &'a str), JwksUriError>);
        let cases: Vec<Case<'_>> = vec![
            (
                "https://idp.example.com/.well-known/jwks.json",
                Ok((true, "idp.example.com", 443, "/.well-known/jwks.json")),
            ),
            (
                "HTTPS://IdP.example.com:8443?x=1",
                Ok((true, "idp.example.com", 8443, "/?x=1")),
            ),
            (
                "http://127.0.0.1:8080/jwks",
                Ok((false, "127.0.0.1", 8080, "/jwks")),
            ),
            (
                "http://localhost:9000/jwks",
                Ok((false, "localhost", 9000, "/jwks")),
            ),
            ("http://[::1]:9000/jwks", Ok((false, "::1", 9000, "/jwks"))),
            (
                "https://[2001:db8::1]/k",
                Ok((true, "2001:db8::1", 443, "/k")),
            ),
            ("http://idp.example.com/jwks", Err(PlainHttp)),
            ("http://10.0.0.1/jwks", Err(PlainHttp)),
            ("ftp://idp/jwks", Err(Scheme)),
            ("idp.example.com/jwks", Err(Scheme)),
            (
                "http://169.254.169.254/latest/meta-data",
                Err(ForbiddenAddress),
            ),
            ("https://169.254.169.254/", Err(ForbiddenAddress)),
            ("https://[fe80::1]/", Err(ForbiddenAddress)),
            ("https://[febf::1]/", Err(ForbiddenAddress)),
            ("https://[::ffff:169.254.169.254]/", Err(ForbiddenAddress)),
            ("http://0.0.0.0:8080/", Err(ForbiddenAddress)),
            ("https://[::]/", Err(ForbiddenAddress)),
            ("http://127.0.0.1:15000/", Err(AdminPort)),
            ("https://localhost:15000/config_dump", Err(AdminPort)),
            ("http://[::1]:15000/", Err(AdminPort)),
            ("http://2852039166/", Err(BadHost)),
            ("http://0xa9.254.169.254/", Err(BadHost)),
            ("http://127.1/", Err(BadHost)),
            ("https://user@idp.example.com/", Err(BadSyntax)),
            ("https://idp.example.com/#frag", Err(BadSyntax)),
            ("https://idp.example.com:0/", Err(BadPort)),
            ("https://idp.example.com:99999/", Err(BadPort)),
            ("https://idp.example.com:/", Err(BadPort)),
            ("https://idp.example.com:+443/", Err(BadPort)),
            ("https:///jwks", Err(BadHost)),
            ("https://[::1/", Err(BadHost)),
            ("https://bad host/", Err(BadHost)),
        ];
        for (uri, want) in cases {
            let got = parse(uri).map(|u| (u.tls, u.host.clone(), u.port, u.path_and_query));
            let want = want.map(|(t, h, p, q)| (t, h.to_owned(), p, q.to_owned()));
            assert_eq!(got, want, "{uri}");
        }
    }

    #[test]
    fn forbidden_ips() {
        let cases = [
            ("169.254.0.1", true),
            ("169.255.0.1", false),
            ("fe80::1", true),
            ("fec0::1", false),
            ("::ffff:169.254.1.1", true),
            ("0.0.0.0", true),
            ("127.0.0.1", false),
        ];
        for (ip, want) in cases {
            assert_eq!(forbidden_ip(ip.parse().unwrap()), want, "{ip}");
        }
    }

    #[test]
    fn literal_addresses() {
        let addrs = |uri: &str| {
            literal_addrs(&parse(uri).unwrap())
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(addrs("http://127.0.0.1:9/k"), ["127.0.0.1:9"]);
        assert_eq!(addrs("https://[::1]/k"), ["[::1]:443"]);
        assert_eq!(addrs("http://LOCALHOST:9/k"), ["127.0.0.1:9", "[::1]:9"]);
        assert_eq!(
            addrs("https://idp.localhost:9/k"),
            ["127.0.0.1:9", "[::1]:9"]
        );
        assert!(addrs("https://idp.example.com/k").is_empty());
    }

    #[test]
    fn own_listeners() {
        let l = |addr: &str, what: &str| OwnListener {
            addr: addr.parse().unwrap(),
            what: what.into(),
        };
        let own = [
            l("127.0.0.1:15001", "admin"),
            l("10.0.0.5:15008", "hbone"),
            l("0.0.0.0:9000", "egress any v4"),
            l("[::]:9100", "egress any"),
        ];
        let hit = |target: &str, local: bool| {
            own_listener(target.parse().unwrap(), &own, local).map(|l| l.what.as_str())
        };
        let cases = [
            ("127.0.0.1:15001", false, Some("admin")),
            ("[::ffff:127.0.0.1]:15001", false, Some("admin")),
            ("127.0.0.2:15001", false, None),
            ("127.0.0.1:15002", false, None),
            ("10.0.0.5:15008", false, Some("hbone")),
            ("10.0.0.6:15008", false, None),
            // Unspecified binds: reached on loopback, on the host's other listener addresses,
            // and on an address the caller found to be local.
            ("127.0.0.9:9000", false, Some("egress any v4")),
            ("10.0.0.5:9000", false, Some("egress any v4")),
            ("192.0.2.1:9000", false, None),
            ("192.0.2.1:9000", true, Some("egress any v4")),
            ("[::1]:9000", false, None),
            ("[::1]:9100", false, Some("egress any")),
            ("127.0.0.1:9100", false, Some("egress any")),
            ("[2001:db8::1]:9100", true, Some("egress any")),
            ("[2001:db8::1]:9100", false, None),
        ];
        for (target, local, want) in cases {
            assert_eq!(hit(target, local), want, "{target} local={local}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(uri in "(https?://)?[a-z0-9.:\\[\\]@/?#%-]{0,40}") {
            let _ = parse(&uri);
        }
    }
}
