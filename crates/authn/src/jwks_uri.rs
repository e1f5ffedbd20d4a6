//! Checking a `jwksUri` before anyone fetches it (SSRF, GHSA-fgw5-hp8f-xfhc).
//!
//! Rules:
//! - `https://` is required. Plain `http://` is allowed only to a loopback host (`localhost`,
//!   127.0.0.0/8, `::1`): local IdPs in development and Ward's own tests. This is looser than
//!   threats §D (which rejects loopback outright) and is why the next rule exists.
//! - The proxies' admin port on loopback (15000, ztunnel/Envoy admin) is refused, whatever the
//!   scheme: an IdP never lives there, an attacker pointing the fetcher at it does.
//! - Link-local hosts (169.254.0.0/16, which holds cloud metadata at 169.254.169.254, and
//!   fe80::/10, IPv4-mapped forms included) and unspecified addresses (0.0.0.0, `::`, which
//!   reach loopback) are refused.
//! - Hosts must be a dotted-quad IPv4, a bracketed IPv6 or a DNS name whose last label is not
//!   all digits: `http://2852039166/` or `http://0xa9.254.169.254/` would be read as IPv4 by
//!   some resolvers, so they are refused rather than guessed at.
//! - No user-info (`user@host`), no fragment.
//!
//! A DNS name can still resolve to a forbidden address; the fetcher must check the resolved
//! address with [`forbidden_ip`] before connecting.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The admin port refused on loopback hosts.
const ADMIN_PORT: u16 = 15000;

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

    proptest! {
        #[test]
        fn never_panics(uri in "(https?://)?[a-z0-9.:\\[\\]@/?#%-]{0,40}") {
            let _ = parse(&uri);
        }
    }
}
