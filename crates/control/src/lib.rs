//! The control plane: reads Istio YAML, keeps the last good config, and pushes one
//! [`ProxyConfig`] snapshot to each proxy; and the CA service that turns CSRs into certificates.
//!
//! The boundary with proxies is two calls, so that proxies can later live in other processes fed
//! over gRPC without a redesign:
//! - [`ControlPlane::subscribe`]: the per-proxy config snapshot (a `watch` channel here);
//! - [`CaService::sign`]: CSR in, certificate out.
//!
//! Proxies on other hosts reach the CA over gRPC (Istio's CA API, crates/wire): [`ca_grpc`]
//! serves it over Ward's TLS, authenticating each call with a bootstrap token or a client
//! certificate ([`bootstrap`]), and [`ca_client`] is the proxy's side. Config push over gRPC is
//! not built yet.
//!
//! It must not open data-path sockets. Layout: [`source`] (files → validated snapshot, hot
//! reload), [`ca_service`], [`bootstrap`] (tokens and bootstrap files), [`ca_grpc`] (the gRPC
//! CA server), [`ca_client`].
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod bootstrap;
pub mod ca_client;
pub mod ca_grpc;
pub mod ca_service;
pub mod source;

pub use ca_service::CaService;
pub use source::{ConfigStatus, ControlPlane, ReloadError, ReloadTiming};
