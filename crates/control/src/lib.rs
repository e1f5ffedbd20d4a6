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
//! certificate ([`bootstrap`]), and [`ca_client`] is the proxy's side. Their config comes over
//! the same port: [`config_grpc`] streams each proxy its configuration as sections
//! ([`push`], pure), only what changed, and records each proxy's ACK or NACK
//! ([`proxies`]); [`config_client`] is the proxy's side.
//!
//! It must not open data-path sockets. Layout: [`source`] (files → validated snapshot, hot
//! reload), [`ca_service`], [`bootstrap`] (tokens and bootstrap files), [`ca_grpc`] (the gRPC
//! server on 15012 and the CA service), [`ca_client`], [`push`], [`config_grpc`],
//! [`config_client`], [`proxies`].
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod bootstrap;
pub mod ca_client;
pub mod ca_grpc;
pub mod ca_service;
pub mod config_client;
pub mod config_grpc;
mod grpc_frames;
pub mod proxies;
pub mod push;
pub mod source;

pub use ca_service::CaService;
pub use source::{ConfigStatus, ControlPlane, ReloadError, ReloadTiming};
