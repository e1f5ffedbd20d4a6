//! The control plane: reads Istio YAML, keeps the last good config, and pushes one
//! [`ProxyConfig`] snapshot to each proxy; and the CA service that turns CSRs into certificates.
//!
//! The boundary with proxies is two calls, so that proxies can later live in other processes fed
//! over gRPC without a redesign:
//! - [`ControlPlane::subscribe`]: the per-proxy config snapshot (a `watch` channel here);
//! - [`CaService::sign`]: CSR in, certificate out.
//!
//! It must not open data-path sockets. Layout: [`source`] (files → validated snapshot, hot
//! reload), [`ca_service`].
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod ca_service;
pub mod source;

pub use ca_service::CaService;
pub use source::{ConfigStatus, ControlPlane, ReloadError, ReloadTiming};
