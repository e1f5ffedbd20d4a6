//! Ward's gRPC wire types: the `.proto` files under `proto/` and the prost messages and tonic
//! client and server generated from them at build time. No logic lives here.
//!
//! It must not hold logic, open sockets or do TLS: callers serve the generated servers over
//! Ward's own TLS streams (crates/tls) and dial the clients with their own connector.
//!
//! - [`istio::v1::auth`]: Istio's CA API, `istio.v1.auth.IstioCertificateService`
//!   (istio/api security/v1alpha1/ca.proto).
//! - [`ward::config::v1`]: Ward's config stream, `ward.config.v1.ProxyConfigService`
//!   (docs/multi-host.md).

/// Protobuf packages, one module per package segment.
pub mod istio {
    /// `istio.v1`.
    pub mod v1 {
        /// `istio.v1.auth`: the CA API.
        #[allow(
            missing_docs,
            unreachable_pub,
            clippy::all,
            clippy::pedantic,
            rust_2018_idioms
        )]
        pub mod auth {
            tonic::include_proto!("istio.v1.auth");
        }
    }
}

/// Ward's own packages.
pub mod ward {
    /// `ward.config`.
    pub mod config {
        /// `ward.config.v1`: the config stream.
        #[allow(
            missing_docs,
            unreachable_pub,
            clippy::all,
            clippy::pedantic,
            rust_2018_idioms
        )]
        pub mod v1 {
            tonic::include_proto!("ward.config.v1");
        }
    }
}
