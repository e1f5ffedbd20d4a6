//! Why a certificate could not be installed or a configuration could not be built.

use ward_identity::{IdentityError, SpiffeId};

/// Every way [`crate::CertStore::install`], [`crate::server_config`] and
/// [`crate::client_config`] can fail.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The issued chain holds no certificate.
    #[error("certificate chain is empty")]
    EmptyChain,
    /// The leaf carries no valid SPIFFE identity.
    #[error("leaf certificate has no valid identity: {0}")]
    LeafIdentity(#[from] IdentityError),
    /// The leaf (or the [`ward_identity::WorkloadCert`]) names another workload than the store.
    #[error("certificate is for {found}, this store holds {expected}")]
    WrongIdentity {
        /// The store's identity.
        expected: Box<SpiffeId>,
        /// The identity found.
        found: Box<SpiffeId>,
    },
    /// The private key cannot be loaded by the crypto provider.
    #[error("private key is unusable: {0}")]
    Key(rustls::Error),
    /// The private key is not the key of the leaf certificate.
    #[error("private key does not match the leaf certificate")]
    KeyMismatch,
    /// The trust bundle is empty.
    #[error("trust bundle holds no root")]
    NoRoots,
    /// A root of the trust bundle is not a usable trust anchor.
    #[error("trust bundle root is unusable: {0}")]
    Root(rustls::Error),
    /// The leaf does not verify against the new trust bundle now (other CA, expired, or not
    /// yet valid).
    #[error("certificate does not verify against its trust bundle: {0}")]
    Untrusted(rustls::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration refused: {0}")]
    Config(rustls::Error),
    /// The webpki client verifier could not be built from the roots.
    #[error("cannot build client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}
