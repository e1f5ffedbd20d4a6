//! Why the CA could not start or refused to sign.

use std::path::PathBuf;

use crate::chain::ChainError;
use crate::csr::CsrError;

/// Every way loading the CA's key material or signing a CSR can fail.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The options are unusable (empty TTL, invalid trust domain).
    #[error("invalid CA options: {reason}")]
    Options {
        /// What is wrong.
        reason: &'static str,
    },
    /// A file could not be read, written or created.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating-system error.
        source: std::io::Error,
    },
    /// A PEM file is malformed, empty, or holds the wrong kind of block.
    #[error("{}: {reason}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A private key file does not hold a key rcgen/aws-lc can sign with.
    #[error("{}: unusable private key: {source}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// Why the key was refused.
        source: rcgen::Error,
    },
    /// The private key is not the key of the signing certificate.
    #[error("{}: private key does not match the CA certificate", path.display())]
    KeyMismatch {
        /// The key file.
        path: PathBuf,
    },
    /// The directory holds part of a layout; refusing to guess (and never overwriting a key).
    #[error("{}: incomplete CA layout, missing {missing:?}; restore the files or remove the directory", dir.display())]
    PartialLayout {
        /// The CA directory.
        dir: PathBuf,
        /// Files that should be there.
        missing: Vec<&'static str>,
    },
    /// The signing certificate does not chain to the roots, or is not a usable CA.
    #[error("CA certificate chain rejected: {0}")]
    Chain(#[from] ChainError),
    /// The requested identity is in another trust domain than the CA's.
    #[error("identity is in trust domain {requested:?}, this CA signs for {ca:?}")]
    WrongTrustDomain {
        /// The trust domain of the CA.
        ca: String,
        /// The trust domain asked for.
        requested: String,
    },
    /// The CSR was refused.
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// A TTL of zero was requested.
    #[error("requested TTL is zero")]
    ZeroTtl,
    /// The signing certificate (or one above it) has expired: nothing valid can be issued.
    #[error("the CA signing certificate chain has expired")]
    SignerExpired,
    /// The system random number generator failed (serial numbers need it).
    #[error("system random number generator failed")]
    Random,
    /// rcgen could not encode or sign the certificate.
    #[error("cannot sign certificate: {0}")]
    Signing(rcgen::Error),
    /// The issued leaf's issuer name differs from the signer's subject bytes (a DN rcgen cannot
    /// re-encode exactly); such a leaf would not chain, so it is never handed out.
    #[error("issued certificate's issuer name does not match the CA subject; re-issue the CA certificate with a simpler subject")]
    IssuerEncoding,
}
