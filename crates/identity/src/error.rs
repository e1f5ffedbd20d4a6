//! Why an identity could not be parsed, extracted from a certificate, or requested.

/// Every way turning text, a certificate or a fresh key into a [`crate::SpiffeId`] can fail.
///
/// The variants never echo the offending input: ids arrive from the network and end up in logs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The id is longer than the 2048 bytes SPIFFE allows.
    #[error("SPIFFE id is {len} bytes long, the limit is 2048")]
    TooLong {
        /// Length of the rejected input in bytes.
        len: usize,
    },
    /// The id does not start with exactly `spiffe://`.
    #[error("SPIFFE id must start with \"spiffe://\"")]
    Scheme,
    /// The id holds a NUL or another control character.
    #[error("SPIFFE id contains a NUL or control character")]
    ControlChar,
    /// The id holds a `%`: percent-encoding would let two spellings name one identity.
    #[error("SPIFFE id must not be percent-encoded")]
    PercentEncoded,
    /// The id carries a `?query` or `#fragment`.
    #[error("SPIFFE id must not have a query or fragment")]
    QueryOrFragment,
    /// The trust domain is empty, too long, or holds a character outside `[a-z0-9.-_]`.
    #[error("invalid trust domain: {reason}")]
    TrustDomain {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The path is not exactly `/ns/<namespace>/sa/<service-account>`.
    #[error("SPIFFE id path must be exactly /ns/<namespace>/sa/<service-account>")]
    PathShape,
    /// The namespace or service account segment is empty, a dot segment, or holds a character
    /// outside `[A-Za-z0-9.-_]`.
    #[error("invalid {part}: {reason}")]
    Segment {
        /// `"namespace"` or `"service account"`.
        part: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The certificate is not one well-formed DER X.509 certificate, or its SAN extension is
    /// malformed or repeated.
    #[error("certificate is not valid X.509 DER: {reason}")]
    Certificate {
        /// What could not be parsed.
        reason: &'static str,
    },
    /// The certificate has no URI SAN (a SPIFFE id in a DNS or email SAN does not count).
    #[error("certificate has no URI SAN")]
    NoUriSan,
    /// The certificate has more than one URI SAN, so it names more than one identity.
    #[error("certificate has {count} URI SANs, exactly one is allowed")]
    ManyUriSans {
        /// How many URI SANs were found.
        count: usize,
    },
    /// A SAN of the certificate contains a NUL byte.
    #[error("certificate SAN contains a NUL byte")]
    NulInSan,
    /// The single URI SAN is not a valid SPIFFE id.
    #[error("certificate URI SAN is not a valid SPIFFE id: {0}")]
    UriSan(Box<IdentityError>),
    /// Generating the key pair or encoding the CSR failed.
    #[error("cannot generate key or CSR: {0}")]
    Csr(#[from] rcgen::Error),
}
