//! SPIFFE peer verification: chain first (webpki, against the store's current roots), then the
//! identity in the one URI SAN.
//!
//! Both verifiers load the trust bundle from the [`CertStore`] on every handshake, so a root
//! rotation applies to the next handshake without rebuilding any configuration.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};

use ward_identity::{identity_from_cert, IdentityError, SpiffeId};

use crate::store::{CertStore, TrustBundle};

/// Most certificates a peer may present (leaf included). Ward chains are 1–3 long; a longer one
/// is refused before any path building (RUSTSEC-2023-0052/0053; docs/threats.md, "Identities
/// and certificate chains").
pub(crate) const MAX_CHAIN_LEN: usize = 8;

/// Why a peer's certificate was refused after (or instead of) webpki's checks. Carried inside
/// `rustls::Error::InvalidCertificate(CertificateError::Other(..))`, so logs show the reason.
#[derive(Debug, thiserror::Error)]
pub enum PeerVerifyError {
    /// No certificate is installed yet, so there is no trust bundle to verify against.
    #[error("no trust bundle installed yet")]
    NoTrustBundle,
    /// The peer sent more than 8 certificates.
    #[error("peer sent {len} certificates, at most {MAX_CHAIN_LEN} are accepted")]
    ChainTooLong {
        /// Certificates sent, leaf included.
        len: usize,
    },
    /// The peer's leaf carries no valid SPIFFE identity (none, two, or malformed URI SANs).
    #[error("peer certificate has no valid identity: {0}")]
    Identity(#[from] IdentityError),
    /// The client's identity is in a trust domain this server does not accept.
    #[error("peer {found} is outside the accepted trust domains")]
    TrustDomain {
        /// The client's identity.
        found: SpiffeId,
    },
    /// The server's identity is not one the client expected (secure naming).
    #[error("server {found} is not one of the expected identities")]
    UnexpectedIdentity {
        /// The server's identity.
        found: SpiffeId,
    },
    /// A chain checked offline ([`verify_identity_chain`]) does not verify.
    #[error("certificate chain does not verify: {0}")]
    Chain(String),
}

impl From<PeerVerifyError> for rustls::Error {
    fn from(e: PeerVerifyError) -> Self {
        match e {
            // Our own state, not the peer's fault: an internal_error alert.
            PeerVerifyError::NoTrustBundle => rustls::Error::General(e.to_string()),
            _ => {
                rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
            }
        }
    }
}

/// Where a verifier takes its trust anchors from.
#[derive(Debug)]
pub(crate) enum Roots {
    /// The store's current bundle, read at each handshake (rotates with the store).
    Store(Arc<CertStore>),
    /// A fixed bundle, e.g. the root a bootstrap file carries before any certificate exists.
    Fixed(Arc<TrustBundle>),
}

impl Roots {
    fn bundle(&self) -> Option<Arc<TrustBundle>> {
        match self {
            Roots::Store(store) => store.bundle(),
            Roots::Fixed(bundle) => Some(bundle.clone()),
        }
    }
}

/// Shared first steps: bound the chain length and load the current bundle.
fn start(
    bundle: Option<Arc<TrustBundle>>,
    intermediates: &[CertificateDer<'_>],
) -> Result<Arc<TrustBundle>, PeerVerifyError> {
    let len = intermediates.len() + 1;
    if len > MAX_CHAIN_LEN {
        return Err(PeerVerifyError::ChainTooLong { len });
    }
    bundle.ok_or(PeerVerifyError::NoTrustBundle)
}

/// Server side of HBONE: requires a client certificate that chains to the current roots, has
/// EKU clientAuth (CVE-2022-21657), and names a SPIFFE identity in an accepted trust domain.
/// The control plane's variant ([`TrustDomainVerifier::optional`]) lets a client present no
/// certificate, but checks one that is presented the same way.
#[derive(Debug)]
pub(crate) struct TrustDomainVerifier {
    store: Arc<CertStore>,
    /// The local trust domain followed by its aliases.
    trust_domains: Vec<String>,
    algorithms: WebPkiSupportedAlgorithms,
    /// Whether a client without a certificate is refused.
    mandatory: bool,
}

impl TrustDomainVerifier {
    pub(crate) fn new(store: Arc<CertStore>, trust_domains: Vec<String>) -> Self {
        let algorithms = store.crypto().signature_verification_algorithms;
        Self {
            store,
            trust_domains,
            algorithms,
            mandatory: true,
        }
    }

    /// The same checks for a certificate that is presented, but a client may present none.
    pub(crate) fn optional(store: Arc<CertStore>, trust_domains: Vec<String>) -> Self {
        Self {
            mandatory: false,
            ..Self::new(store, trust_domains)
        }
    }
}

impl ClientCertVerifier for TrustDomainVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    /// No hints: the roots change at run time and a Ward client has one certificate anyway.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let bundle = start(self.store.bundle(), intermediates)?;
        bundle
            .client_verifier
            .verify_client_cert(end_entity, intermediates, now)?;
        let found = identity_from_cert(end_entity).map_err(PeerVerifyError::from)?;
        // istio/ztunnel src/tls/workload.rs `TrustDomainVerifier`: after the chain, a client
        // whose SPIFFE trust domain is not the local one is rejected. Ward also accepts the
        // aliases of istio/api mesh/v1alpha1/config.proto `trustDomainAliases`.
        if !self
            .trust_domains
            .iter()
            .any(|td| td == found.trust_domain())
        {
            return Err(PeerVerifyError::TrustDomain { found }.into());
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Client side of HBONE: the server's chain must verify against the current roots (EKU
/// serverAuth) and its SPIFFE identity must be one of `expected`. The DNS name passed to
/// `connect` is ignored: identity, not DNS, is what secure naming checks.
#[derive(Debug)]
pub(crate) struct IdentityVerifier {
    roots: Roots,
    expected: Vec<SpiffeId>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl IdentityVerifier {
    pub(crate) fn new(store: Arc<CertStore>, expected: Vec<SpiffeId>) -> Self {
        let algorithms = store.crypto().signature_verification_algorithms;
        Self {
            roots: Roots::Store(store),
            expected,
            algorithms,
        }
    }

    /// A verifier over a fixed bundle instead of a store's.
    pub(crate) fn with_roots(
        bundle: Arc<TrustBundle>,
        expected: Vec<SpiffeId>,
        algorithms: WebPkiSupportedAlgorithms,
    ) -> Self {
        Self {
            roots: Roots::Fixed(bundle),
            expected,
            algorithms,
        }
    }
}

impl ServerCertVerifier for IdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let bundle = start(self.roots.bundle(), intermediates)?;
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &bundle.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let found = identity_from_cert(end_entity).map_err(PeerVerifyError::from)?;
        // Secure naming. istio/api networking/v1alpha3/destination_rule.proto,
        // ClientTLSSettings.subject_alt_names: "If specified, the proxy will verify that the
        // server certificate's subject alt name matches one of the specified values."
        if !self.expected.contains(&found) {
            return Err(PeerVerifyError::UnexpectedIdentity { found }.into());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Verifies `chain_der` (leaf first) against `roots_der` at `now` the way a workload's client
/// certificate is verified in a handshake (chain, validity, EKU clientAuth), and returns the
/// leaf's SPIFFE id. For checking offline who signed something, such as an audit checkpoint.
pub fn verify_identity_chain(
    chain_der: &[Vec<u8>],
    roots_der: &[Vec<u8>],
    now: std::time::SystemTime,
) -> Result<SpiffeId, PeerVerifyError> {
    let Some((leaf, intermediates)) = chain_der.split_first() else {
        return Err(PeerVerifyError::Chain("empty certificate chain".into()));
    };
    let bundle = crate::store::TrustBundle::build(roots_der, &crate::provider())
        .map_err(|e| PeerVerifyError::Chain(e.to_string()))?;
    let intermediates: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let leaf = CertificateDer::from(leaf.as_slice());
    let bundle = start(Some(bundle), &intermediates)?;
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| PeerVerifyError::Chain("time before 1970".into()))?;
    bundle
        .client_verifier
        .verify_client_cert(&leaf, &intermediates, UnixTime::since_unix_epoch(secs))
        .map_err(|e| PeerVerifyError::Chain(e.to_string()))?;
    Ok(identity_from_cert(&leaf)?)
}
