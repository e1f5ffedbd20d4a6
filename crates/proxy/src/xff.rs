//! `X-Forwarded-For` at a gateway (docs/ingress.md, "The client's address"): which address is
//! the client's, given how many proxies in front of the gateway are trusted
//! (`gatewayTopology.numTrustedProxies`), and the header the gateway sends on. Pure.
//!
//! Envoy's rules for an edge proxy (`use_remote_address: true`, which Istio sets on gateways;
//! envoyproxy.io `configuration/http/http_conn_man/headers`, `x-forwarded-for`):
//! - with `xff_num_trusted_hops` 0 the client is the connection's peer, whatever the header
//!   says, so a client cannot choose its own address;
//! - with N > 0 the client is the Nth address from the right of the header as received (each
//!   trusted proxy appended one); a header with fewer addresses, or a value there that is no IP
//!   address, leaves the peer as the client;
//! - the gateway appends the peer's address to the header it forwards.

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderValue};

/// The header's name.
pub(crate) const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// The addresses of the request's `X-Forwarded-For` headers, left to right (several headers are
/// one list, in order).
fn hops(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|h| h.trim().to_owned())
        .collect()
}

/// An address as a hop writes it: an IP, maybe with a port (`[v6]:p`, `v4:p`).
fn address(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = hop.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    let bare = hop.strip_prefix('[').and_then(|h| h.strip_suffix(']'))?;
    bare.parse().ok()
}

/// The client's address: the peer with no trusted proxy, else the `trusted`th hop from the
/// right of the header as received (the peer when that hop is missing or no address).
pub(crate) fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: u32) -> IpAddr {
    if trusted == 0 {
        return peer;
    }
    let hops = hops(headers);
    let Ok(n) = usize::try_from(trusted) else {
        return peer;
    };
    let Some(index) = hops.len().checked_sub(n) else {
        return peer;
    };
    hops.get(index).and_then(|h| address(h)).unwrap_or(peer)
}

/// Append the peer to the request's `X-Forwarded-For` (one header, the list kept in order).
pub(crate) fn append_peer(headers: &mut HeaderMap, peer: IpAddr) {
    let mut list = hops(headers);
    list.retain(|h| !h.is_empty());
    list.push(peer.to_string());
    headers.remove(X_FORWARDED_FOR);
    if let Ok(v) = HeaderValue::from_str(&list.join(", ")) {
        headers.insert(X_FORWARDED_FOR, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(X_FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_client_is_the_hop_the_trusted_proxies_name() {
        let peer: IpAddr = "192.0.2.5".parse().unwrap();
        // (headers, numTrustedProxies, client).
        let cases: &[(&[&str], u32, &str)] = &[
            // No trusted proxy: the header is the client's to write, and ignored.
            (&["10.0.0.1"], 0, "192.0.2.5"),
            (&[], 0, "192.0.2.5"),
            // Envoy's example: one trusted hop, the rightmost address.
            (
                &["203.0.113.128, 203.0.113.10, 203.0.113.1"],
                1,
                "203.0.113.1",
            ),
            (
                &["203.0.113.128, 203.0.113.10, 203.0.113.1"],
                2,
                "203.0.113.10",
            ),
            (
                &["203.0.113.128, 203.0.113.10, 203.0.113.1"],
                3,
                "203.0.113.128",
            ),
            // Fewer hops than trusted proxies: the peer.
            (
                &["203.0.113.128, 203.0.113.10, 203.0.113.1"],
                4,
                "192.0.2.5",
            ),
            (&[], 1, "192.0.2.5"),
            // Several headers are one list.
            (&["198.51.100.1", "198.51.100.2"], 1, "198.51.100.2"),
            (&["198.51.100.1", "198.51.100.2"], 2, "198.51.100.1"),
            // Not an address there: the peer. Ports and brackets are read.
            (&["unknown"], 1, "192.0.2.5"),
            (&["198.51.100.1:4711"], 1, "198.51.100.1"),
            (&["[2001:db8::1]:443"], 1, "2001:db8::1"),
            (&["[2001:db8::2]"], 1, "2001:db8::2"),
            (&["2001:db8::3"], 1, "2001:db8::3"),
        ];
        for (values, trusted, want) in cases {
            let got = client_address(peer, &headers(values), *trusted);
            assert_eq!(got.to_string(), *want, "{values:?} trusted {trusted}");
        }
    }

    #[test]
    fn the_peer_is_appended() {
        let peer: IpAddr = "192.0.2.5".parse().unwrap();
        let mut h = headers(&["203.0.113.1", "203.0.113.2"]);
        append_peer(&mut h, peer);
        assert_eq!(h[X_FORWARDED_FOR], "203.0.113.1, 203.0.113.2, 192.0.2.5");
        let mut h = HeaderMap::new();
        append_peer(&mut h, peer);
        assert_eq!(h[X_FORWARDED_FOR], "192.0.2.5");
    }
}
