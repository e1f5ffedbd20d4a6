//! The `CONNECT` authority of an HBONE request: the destination workload's `ip:port`.
//!
//! Untrusted input: a peer chooses it. Only literal IP addresses are accepted (ztunnel answers a
//! bad authority with 400), so no name resolution can ever be triggered from the network.

use std::net::{IpAddr, SocketAddr};

/// Why an authority was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthorityError {
    /// Empty, too long, or with characters that never appear in `ip:port`.
    #[error("authority is not of the form ip:port")]
    Malformed,
    /// The port is missing, zero or out of range.
    #[error("authority has no valid port")]
    BadPort,
    /// The host part is not a literal IPv4 or bracketed IPv6 address.
    #[error("authority host is not an IP address")]
    NotAnIp,
}

/// Parse `1.2.3.4:80` or `[::1]:80`. Zone ids, names, userinfo and trailing junk are refused.
pub fn parse_authority(s: &str) -> Result<SocketAddr, AuthorityError> {
    if s.is_empty()
        || s.len() > 64
        || !s
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b"[]:.".contains(&b))
    {
        return Err(AuthorityError::Malformed);
    }
    let (host, port) = s.rsplit_once(':').ok_or(AuthorityError::Malformed)?;
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AuthorityError::BadPort);
    }
    let port: u16 = port.parse().map_err(|_| AuthorityError::BadPort)?;
    if port == 0 {
        return Err(AuthorityError::BadPort);
    }
    let ip: IpAddr = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => IpAddr::V6(v6.parse().map_err(|_| AuthorityError::NotAnIp)?),
        None => IpAddr::V4(host.parse().map_err(|_| AuthorityError::NotAnIp)?),
    };
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let ok = [
            ("127.0.0.2:9080", "127.0.0.2:9080"),
            ("[::1]:443", "[::1]:443"),
        ];
        for (input, want) in ok {
            assert_eq!(parse_authority(input).unwrap().to_string(), want, "{input}");
        }
        let bad = [
            ("", AuthorityError::Malformed),
            ("localhost:80", AuthorityError::Malformed),
            ("127.0.0.1", AuthorityError::Malformed),
            ("127.0.0.1:", AuthorityError::BadPort),
            ("127.0.0.1:0", AuthorityError::BadPort),
            ("127.0.0.1:65536", AuthorityError::BadPort),
            ("127.0.0.1:+80", AuthorityError::Malformed),
            ("::1:80", AuthorityError::NotAnIp),
            ("[::1%eth0]:80", AuthorityError::Malformed),
            ("1.2.3.4.5:80", AuthorityError::NotAnIp),
            ("user@1.2.3.4:80", AuthorityError::Malformed),
            ("1.2.3.4:80/x", AuthorityError::Malformed),
        ];
        for (input, want) in bad {
            assert_eq!(parse_authority(input), Err(want), "{input:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,80}") {
            let _ = parse_authority(&s);
        }

        #[test]
        fn round_trips(a in proptest::prelude::any::<std::net::SocketAddr>()) {
            let a = SocketAddr::new(a.ip(), a.port().max(1));
            let a = match a { SocketAddr::V6(v6) => SocketAddr::new(IpAddr::V6(*v6.ip()), v6.port()), v4 => v4 };
            proptest::prop_assert_eq!(parse_authority(&a.to_string()), Ok(a));
        }
    }
}
