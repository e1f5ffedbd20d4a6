//! The sidecar's DNS proxy (Istio's on `127.0.0.1:15053`): names of mesh services answered from
//! a table, every other query forwarded to the upstream resolvers of `/etc/resolv.conf`.
//! See docs/dns.md.
//!
//! Decide, then do: [`DnsTable`] and [`answer`] are pure (what to answer, what to forward),
//! and so are [`parse_resolv_conf`], [`reply_limit`] and [`encode_within`]; [`serve`] carries
//! the decisions out on UDP and TCP sockets.

mod answer;
mod resolv_conf;
mod server;
mod table;
mod upstream;

pub use answer::{
    answer, encode_within, fit_relayed, malformed_reply, reply_limit, server_failure, Answer,
    EncodeError, Transport, CLASSIC_UDP_PAYLOAD, MAX_UDP_PAYLOAD,
};
pub use resolv_conf::{parse_resolv_conf, read_resolv_conf, ResolvConf, ResolvConfError, DNS_PORT};
pub use server::{serve, DnsError, DnsServer, Limits, Settings};
pub use table::{Addresses, DnsTable, Lookup, Scope, TTL};
pub use upstream::ExchangeError;

/// The port the DNS proxy listens on, UDP and TCP, on `127.0.0.1` (Istio's `localhost:15053`);
/// capture redirects the app's port-53 traffic there.
pub const PROXY_PORT: u16 = 15053;
