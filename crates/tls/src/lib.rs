//! TLS for Ward's HBONE tunnels: the rustls configurations of both ends, SPIFFE peer
//! verification, and the store that holds a workload's rotating certificate.
//!
//! This crate builds configurations and verifies peers. It must not open sockets, accept
//! connections, decide authorization (it only reports the peer identity, see [`PeerInfo`]) or
//! fetch certificates (the proxy's rotation task calls [`CertStore::install`]). Crypto is
//! aws-lc-rs only; only TLS 1.3 is ever negotiated; session resumption is disabled.
//!
//! Layout:
//! - `provider`: [`provider`], the one crypto provider (TLS 1.3 suites, X25519MLKEM768 first);
//! - `store`: [`CertStore`], the atomically swapped certificate and trust bundle;
//! - `verify`: the SPIFFE verifiers (trust domain on the server, expected ids on the client);
//! - `config`: [`server_config`] and [`client_config`];
//! - `control`: the control plane's gRPC port ([`control_plane_server_config`], client
//!   certificate optional) and its clients ([`control_plane_client_config`], fixed roots);
//! - `peer`: [`PeerInfo`] and [`peer_info`];
//! - `error`: [`TlsError`] (building and installing); [`PeerVerifyError`] is in `verify`.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod config;
mod control;
mod error;
mod peer;
mod provider;
mod store;
mod verify;

#[cfg(test)]
mod testing;

pub use config::{client_config, server_config};
pub use control::{
    control_plane_client_config, control_plane_server_config, webhook_server_config,
};
pub use error::TlsError;
pub use peer::{peer_info, PeerInfo};
pub use provider::provider;
pub use store::{CertStore, CertSummary};
pub use verify::{verify_identity_chain, PeerVerifyError};
