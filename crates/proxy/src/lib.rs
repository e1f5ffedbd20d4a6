//! The data plane: one [`Sidecar`] per workload, serving that workload's address.
//!
//! A sidecar holds the workload's certificate (renewed on a timer, see `certs`), and carries out
//! the per-proxy [`ProxyConfig`] the control plane pushes to it:
//! - `inbound`: HBONE (mTLS + HTTP/2 `CONNECT`) on `<workload-ip>:15008`, and the plaintext
//!   service ports, where PeerAuthentication allows plaintext. Authorization is decided by the pure
//!   `ward-policy` engine; this crate only carries the [`ward_policy::Decision`] out.
//! - `outbound`: the Sidecar egress listeners the app dials; each connection is tunnelled over
//!   a pooled HBONE connection (`pool`) to a chosen endpoint, or sent plaintext where the
//!   destination's PeerAuthentication is DISABLE (auto-mTLS). A listener that several HTTP
//!   services share is served by `egress_http`: each request goes to the service its `Host`
//!   names. `forward_proxy`: the explicit forward proxy (HTTP CONNECT, absolute-form) of a
//!   Sidecar egress listener with `port.protocol: HTTP_PROXY`; `blackhole`: what an
//!   unregistered destination gets under REGISTRY_ONLY (a reset, or a 502 on HTTP ports),
//!   recorded; `sniff`: the SNI or `Host` of a connection's first bytes; `resolve`: DNS for
//!   external hosts (docs/egress.md).
//! - `breaker` and `outlier`: the pure state of a destination's DestinationRule
//!   `connectionPool` (circuit breaker) and `outlierDetection` (ejections), carried out by
//!   `egress_http` (docs/routing.md).
//! - `inbound_http`: on HTTP ports, each request goes through its phases (route, `admission`,
//!   authenticate with the keys `jwks_fetch` keeps, authorize, forward over `upstream`).
//! - `connection`: one inbound connection's facts, and the result every connection finishes
//!   with (one access record, counted once); `refusal`: the one value for "no".
//! - [`breakglass`]: time-limited, recorded exceptions that lift a workload's AuthorizationPolicy
//!   denials (`ward break-glass`).
//! - `conntrack`: open inbound connections, re-checked when policy changes.
//! - [`coverage`]: what each destination served over mTLS and in plaintext, per flow and minute
//!   (`ward verify coverage`).
//! - [`listener`]: the one accept loop of every listener, with its admission caps and the
//!   process-wide connection budget, so a flood on one listener cannot exhaust the descriptors.
//! - [`capture`]: transparent capture (iptables rules, socket marks, `SO_ORIGINAL_DST`); with it,
//!   the sidecar also serves the outbound (15001) and inbound (15006) capture ports.
//! - `access_log` and [`metrics`]: one record per connection, Istio/ztunnel names.
//! - `trace`: the span of each HTTP hop (inbound, outbound, gateway), W3C and B3 trace context,
//!   exported over OTLP through a bounded queue (docs/tracing.md).
//! - `gateway`: the server ports of a workload that Gateways select (docs/ingress.md): HTTP
//!   routed by `egress_http`'s edge path, TLS terminated by SNI or passed through, TCP.
//! - `audit`: one record per authorization decision in the workload's tamper-evident audit
//!   trail (`ward-audit`), written off the data path by a task of its own (docs/audit.md).
//! - [`dns`]: the DNS proxy (mesh names answered from a table, other queries forwarded to the
//!   resolvers of resolv.conf), self-contained: fed a table, not yet started by a sidecar.
//! - [`heap`]: start-up settling of glibc's heap, so received DATA frames are not faulted in
//!   again for every 4 KiB (docs/performance.md).
//!
//! It must not: parse YAML, sign certificates, or decide policy itself.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod access_log;
mod admission;
mod audit;
mod blackhole;
mod breaker;
pub mod breakglass;
pub mod capture;
mod certs;
mod connection;
mod conntrack;
pub mod coverage;
pub mod dns;
mod egress_http;
mod forward_proxy;
mod framing;
mod gateway;
pub mod heap;
mod http_metrics;
mod inbound;
mod inbound_http;
mod jwks_fetch;
pub mod listener;
pub mod metrics;
mod originate;
mod outbound;
mod outlier;
mod pool;
pub mod probe;
mod refusal;
mod resolve;
mod sidecar;
mod slab;
mod sniff;
mod splice;
mod tcp_pool;
mod trace;
mod upstream;
mod xff;

pub use audit::{AuditHealth, AuditMetrics, LatestCert};
pub use certs::{humantime_utc, CertificateProvider, SignError};
pub use metrics::Metrics;
pub use refusal::{Fault, ResponseFlag};
pub use sidecar::{MeshIdentity, Sidecar, SidecarError, SidecarHandle};
pub use ward_authn::jwks_uri::OwnListener;
pub use ward_config::ProxyConfig;

/// The TCP stream under an HBONE connection's TLS, buffered for reads only. Reads: rustls
/// asks for at most 4 KiB at a time, so without a buffer a 16 KiB record costs four syscalls;
/// 256 KiB per read syscall measured best for bulk transfer (its pages are touched only as a
/// transfer fills them).
/// Writes go straight through: rustls hands over its queued records in one vectored write,
/// and h2's frame header travels with its payload in that write, so a write buffer would only
/// add a copy of every byte (docs/performance.md, "Bulk transfer").
pub(crate) fn hbone_io(tcp: tokio::net::TcpStream) -> tokio::io::BufReader<tokio::net::TcpStream> {
    tokio::io::BufReader::with_capacity(256 * 1024, tcp)
}

/// How much encrypted data rustls may queue on an HBONE connection before a write waits for the
/// socket. rustls' default is 64 KiB, 9 bytes short of a full DATA frame: h2 hands over a
/// frame's 9-byte header and its 64 KiB payload in one vectored write, rustls took the first
/// 64 KiB, and the frame's last 9 bytes became a record and a `writev` of their own.
/// Twice the 64 KiB frame (`ward_hbone::H2Settings`) lets each frame go out in one write, with
/// room for the window updates and pings queued beside it (docs/performance.md, "Bulk
/// transfer").
pub(crate) const HBONE_TLS_QUEUE: usize = 2 * 64 * 1024 + 4096;

/// After a failed handshake, sends what is still unwritten of rustls' alert (e.g.
/// `protocol_version` to a TLS 1.2 client), so the peer learns why instead of seeing a bare
/// close. Bounded: a peer that does not read gets one second.
pub(crate) async fn send_buffered_alert(io: &mut tokio::io::BufReader<tokio::net::TcpStream>) {
    use tokio::io::AsyncWriteExt;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), io.flush()).await;
}

/// Resolves once the stop switch is set (or its sender is gone).
pub(crate) async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Make the coming close a reset (RST) rather than a clean FIN, so a refused client sees the
/// refusal at once (curl: exit 56), as Istio's sidecar does for plaintext on a STRICT port.
/// SO_LINGER of zero never blocks on close.
pub(crate) fn reset_on_close(tcp: &tokio::net::TcpStream) {
    let _ = socket2::SockRef::from(tcp).set_linger(Some(std::time::Duration::ZERO));
}
