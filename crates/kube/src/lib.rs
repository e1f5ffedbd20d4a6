//! The Kubernetes config source of `ward control-plane --kubernetes`.
//!
//! It watches the API server (kube-runtime reflectors: relist with backoff after errors, API
//! server loss and 410 Gone) and renders what it sees into config documents that
//! `ward_config::load_files` loads exactly as it loads files, so Kubernetes objects get the
//! files' diagnostics and semantics. Translation is pure ([`translate`]); this crate does no
//! policy and serves nothing: the control plane (crates/control) loads, publishes and pushes.
//!
//! Layout: [`translate`] (objects → documents, pure), [`source`] (the watches),
//! [`tokens`] (ServiceAccount tokens checked with the TokenReview API), [`crds`] (the Istio
//! CRDs `ward install crds` prints), [`events`] (Kubernetes Events on invalid objects),
//! [`webhook`] (the admission webhooks' decisions, pure), [`install`] (the manifests `ward
//! install` prints, pure), [`publish`] (the webhooks' `caBundle` and the root ConfigMaps),
//! [`status`] (`status.validationMessages` on Istio objects with findings) and [`leader`]
//! (leader election on a Lease: only the leading replica writes).

// Tests may unwrap; the library may not (workspace lints).
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod crds;
pub mod events;
pub mod install;
pub mod leader;
pub mod publish;
pub mod source;
pub mod status;
pub mod tokens;
pub mod translate;
pub mod webhook;

use std::path::Path;

pub use kube::Client;
pub use source::{Cluster, SourceError};
pub use translate::{render, Objects, RenderStats, Renderer};

/// A client from `kubeconfig` if given; else from `KUBECONFIG` (or `~/.kube/config`); else the
/// in-cluster service account.
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, SourceError> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| SourceError::Config(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| SourceError::Config(format!("{}: {e}", path.display())))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| SourceError::Config(e.to_string()))?,
    };
    kube::Client::try_from(config).map_err(|e| SourceError::Config(e.to_string()))
}
