//! Ward's certificate authority: a CSR and an authenticated identity in, a signed SPIFFE leaf
//! certificate out.
//!
//! It loads (or creates) the signing key from a state directory, accepting Istio's `cacerts`
//! plug-in layout, and signs short-lived workload certificates. It must not open sockets,
//! run async tasks, authenticate callers (the control plane decides who may ask for which
//! identity) or ever receive a workload's private key.
//!
//! Layout:
//! - `authority`: [`Ca`], [`CaOptions`], loading and [`Ca::sign`];
//! - `csr`: checking an untrusted CSR ([`CsrError`]);
//! - `chain`: verifying a plugged-in signer up to its roots ([`ChainError`]);
//! - `files`: the on-disk layouts, PEM reading and safe writing of new key material;
//! - `error`: [`CaError`].
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod authority;
mod chain;
mod csr;
mod error;
mod files;

pub use authority::{Ca, CaOptions};
pub use chain::ChainError;
pub use csr::CsrError;
pub use error::CaError;
