//! Workload identity for Ward: SPIFFE ids, the identity inside a certificate, workload keys and
//! CSRs, and the certificate a workload holds with its renewal time.
//!
//! This crate is pure data and parsing. It must not open sockets, spawn tasks, read files or
//! sign certificates (that is `ward-ca`); it never logs or prints private keys.
//!
//! Layout:
//! - `spiffe`: [`SpiffeId`] and its strict `spiffe://<td>/ns/<ns>/sa/<sa>` parser;
//! - `cert`: [`identity_from_cert`], [`IssuedCert`] (the CA's answer) and [`WorkloadCert`];
//! - `csr`: [`generate_csr`] (P-256 key + CSR) and [`KeyAndCsr`];
//! - `error`: [`IdentityError`], the one error type of the crate (its API returns it everywhere).
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod cert;
mod csr;
mod error;
mod spiffe;

pub use cert::{cert_info, cert_not_after, identity_from_cert, CertInfo, IssuedCert, WorkloadCert};
pub use csr::{generate_csr, KeyAndCsr};
pub use error::IdentityError;
pub use spiffe::SpiffeId;
