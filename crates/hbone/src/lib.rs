//! HBONE: the HTTP/2 `CONNECT` tunnel that carries one application connection per stream over a
//! secured (mTLS) transport, as Istio ambient's ztunnel speaks it on port 15008.
//!
//! This crate knows nothing of identities, TLS or policy: it takes any byte stream that the
//! caller already secured, and gives back tunnels. Deciding whether a tunnel may open is the
//! caller's job (the `handler` of [`server::serve`]).
//!
//! Layout:
//! - [`stream`]: [`H2Stream`], one tunnel as `AsyncRead + AsyncWrite`.
//! - [`server`]: accept `CONNECT` requests on a connection and answer them.
//! - [`client`]: open tunnels on a connection, many per connection.
//! - [`authority`]: the strict parser of the `CONNECT` authority (`ip:port`).
//!
//! Wire facts (ztunnel `src/proxy/inbound.rs`, istio.io "HBONE"): TLS with ALPN `h2`, then one
//! HTTP/2 `CONNECT` stream per application connection whose `:authority` is the destination
//! workload's `ip:port`; `200` opens the tunnel, then bytes are spliced both ways.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod authority;
pub mod client;
pub mod server;
pub mod stream;

pub use authority::{parse_authority, AuthorityError};
pub use client::{HboneClient, OpenError};
pub use server::{serve, ConnectRequest, ServeError};
pub use stream::H2Stream;

/// The port HBONE servers listen on (istio.io "HBONE": "port 15008").
pub const HBONE_PORT: u16 = 15008;

/// HTTP/2 settings shared by both ends. Windows larger than the 64 KiB default keep one bulk
/// stream from stalling on flow control (one window per round trip); they are also what a peer
/// may make us buffer when the app reads slowly, so they stay modest: 1 MiB per stream, 4 MiB
/// per connection. Measured on loopback, 4/16 MiB gave no more single-stream throughput and
/// ~4 MiB more peak memory per sidecar.
///
/// DATA frames are at most 64 KiB. h2 reads each frame into a buffer of its own size, and a
/// received frame stays alive until the splice has written it to the app; 256 KiB frames
/// made every one a fresh allocation that glibc handed back to the kernel when freed, so its
/// pages were faulted in again for each frame. 64 KiB buffers are reused from the heap
/// (docs/performance.md, "Page faults").
#[derive(Clone, Copy, Debug)]
pub struct H2Settings {
    /// Per-stream receive window.
    pub stream_window: u32,
    /// Per-connection receive window.
    pub connection_window: u32,
    /// Largest DATA frame we accept.
    pub max_frame_size: u32,
    /// Streams a peer may have open on one connection.
    pub max_concurrent_streams: u32,
    /// Bound on the decoded header block, against HPACK bombs and CONTINUATION floods.
    pub max_header_list_size: u32,
}

impl Default for H2Settings {
    fn default() -> Self {
        H2Settings {
            stream_window: 1024 * 1024,
            connection_window: 4 * 1024 * 1024,
            max_frame_size: 64 * 1024,
            max_concurrent_streams: 1000,
            max_header_list_size: 16 * 1024,
        }
    }
}
