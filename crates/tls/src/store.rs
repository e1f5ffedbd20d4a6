//! [`CertStore`]: a workload's current certificate and trust bundle, swapped atomically on
//! rotation.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use serde::Serialize;

use ward_identity::{identity_from_cert, SpiffeId, WorkloadCert};

use crate::{provider, TlsError};

/// What the admin API shows about the installed certificate (`/certs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CertSummary {
    /// The workload identity.
    pub id: SpiffeId,
    /// Serial number of the leaf, lowercase hex.
    pub serial: String,
    /// NotBefore of the leaf.
    pub not_before: SystemTime,
    /// NotAfter of the leaf.
    pub not_after: SystemTime,
}

/// The roots a workload trusts, with the verifier built from them. Built once per distinct set
/// of roots and shared by every handshake until the roots change.
pub(crate) struct TrustBundle {
    /// The DER roots, to tell whether an install changes them.
    roots_der: Vec<Vec<u8>>,
    /// Trust anchors for verifying servers.
    pub(crate) roots: Arc<RootCertStore>,
    /// webpki verifier for client certificates (chain, validity, EKU clientAuth) over `roots`.
    pub(crate) client_verifier: Arc<dyn ClientCertVerifier>,
}

impl TrustBundle {
    /// A bundle of `roots_der` (at least one) with its client verifier.
    pub(crate) fn build(
        roots_der: &[Vec<u8>],
        provider: &Arc<CryptoProvider>,
    ) -> Result<Arc<TrustBundle>, TlsError> {
        if roots_der.is_empty() {
            return Err(TlsError::NoRoots);
        }
        let mut roots = RootCertStore::empty();
        for der in roots_der {
            roots
                .add(CertificateDer::from(der.as_slice()))
                .map_err(TlsError::Root)?;
        }
        let roots = Arc::new(roots);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
        Ok(Arc::new(TrustBundle {
            roots_der: roots_der.to_vec(),
            roots,
            client_verifier,
        }))
    }
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustBundle")
            .field("roots", &self.roots_der.len())
            .finish_non_exhaustive()
    }
}

/// One installed certificate: what a handshake reads, all from the same install.
struct Installed {
    key: Arc<CertifiedKey>,
    summary: CertSummary,
    bundle: Arc<TrustBundle>,
}

/// A workload's current certificate and trust bundle.
///
/// [`CertStore::install`] swaps both in one atomic step. Each handshake reads the current value
/// once at its start; connections already open keep the keys they negotiated and are never
/// touched by a rotation.
pub struct CertStore {
    id: SpiffeId,
    provider: Arc<CryptoProvider>,
    /// Written by `install` (the rotation task); read lock-free by the certificate resolvers
    /// and verifiers on every handshake. `None` until the first install: handshakes then fail.
    current: ArcSwapOption<Installed>,
}

impl CertStore {
    /// An empty store for workload `id`; not ready until a certificate is installed.
    pub fn new(id: SpiffeId) -> Arc<CertStore> {
        Arc::new(CertStore {
            id,
            provider: provider(),
            current: ArcSwapOption::empty(),
        })
    }

    /// Installs a certificate, its key and its trust bundle for new handshakes.
    ///
    /// Checks first, and keeps the previous certificate on any error: the chain is not empty,
    /// the leaf's URI SAN is this store's identity, the key loads and matches the leaf, and the
    /// leaf chains to the new roots at the current time.
    pub fn install(&self, cert: &WorkloadCert) -> Result<(), TlsError> {
        if cert.id != self.id {
            return Err(TlsError::WrongIdentity {
                expected: Box::new(self.id.clone()),
                found: Box::new(cert.id.clone()),
            });
        }
        let chain: Vec<CertificateDer<'static>> = cert
            .issued
            .chain_der
            .iter()
            .map(|der| CertificateDer::from(der.clone()))
            .collect();
        let leaf = chain.first().ok_or(TlsError::EmptyChain)?;
        let found = identity_from_cert(leaf)?;
        if found != self.id {
            return Err(TlsError::WrongIdentity {
                expected: Box::new(self.id.clone()),
                found: Box::new(found),
            });
        }

        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pkcs8_der.clone()));
        let signing_key = self
            .provider
            .key_provider
            .load_private_key(key_der)
            .map_err(TlsError::Key)?;
        let key = CertifiedKey::new(chain.clone(), signing_key);
        key.keys_match().map_err(|_| TlsError::KeyMismatch)?;

        let bundle = self.bundle_for(&cert.issued.roots_der)?;
        // Ward leaves carry serverAuth and clientAuth; checking the server use here proves the
        // chain, validity window and anchor before any peer sees the certificate.
        let parsed = ParsedCertificate::try_from(leaf).map_err(TlsError::Untrusted)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &bundle.roots,
            &chain[1..],
            UnixTime::now(),
            self.provider.signature_verification_algorithms.all,
        )
        .map_err(TlsError::Untrusted)?;

        let summary = CertSummary {
            id: self.id.clone(),
            serial: cert.issued.serial.clone(),
            not_before: cert.issued.not_before,
            not_after: cert.issued.not_after,
        };
        self.current.store(Some(Arc::new(Installed {
            key: Arc::new(key),
            summary,
            bundle,
        })));
        Ok(())
    }

    /// The current bundle if `roots_der` is unchanged (so its verifier is reused), else a new one.
    fn bundle_for(&self, roots_der: &[Vec<u8>]) -> Result<Arc<TrustBundle>, TlsError> {
        if let Some(current) = self.current.load().as_ref() {
            if current.bundle.roots_der == roots_der {
                return Ok(current.bundle.clone());
            }
        }
        TrustBundle::build(roots_der, &self.provider)
    }

    /// True when a certificate is installed and has not expired.
    pub fn is_ready(&self) -> bool {
        self.current
            .load()
            .as_ref()
            .is_some_and(|c| c.summary.not_after > SystemTime::now())
    }

    /// The installed certificate's identity, serial and validity, if any.
    pub fn current(&self) -> Option<CertSummary> {
        self.current.load().as_ref().map(|c| c.summary.clone())
    }

    /// The workload identity this store holds certificates for.
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// The certificate and key for a handshake starting now.
    pub(crate) fn certified_key(&self) -> Option<Arc<CertifiedKey>> {
        self.current.load().as_ref().map(|c| c.key.clone())
    }

    /// The trust bundle for a handshake starting now.
    pub(crate) fn bundle(&self) -> Option<Arc<TrustBundle>> {
        self.current.load().as_ref().map(|c| c.bundle.clone())
    }

    /// The crypto provider (its signature algorithms are what verifiers accept).
    pub(crate) fn crypto(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }
}

impl fmt::Debug for CertStore {
    /// Identity and summary only; never the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("id", &self.id)
            .field("current", &self.current())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use time::OffsetDateTime;

    #[test]
    fn install_checks_then_swaps() {
        let mesh = MeshCa::new();
        let other_mesh = MeshCa::new();
        let rogue = RogueCa::new();
        let me = id("me");
        let store = CertStore::new(me.clone());
        assert!(!store.is_ready());
        assert_eq!(store.current(), None);

        let good = mesh.workload(&me);
        store.install(&good).unwrap();
        assert!(store.is_ready());
        let summary = store.current().unwrap();
        assert_eq!(
            (
                summary.id.clone(),
                summary.serial.clone(),
                summary.not_after
            ),
            (
                me.clone(),
                good.issued.serial.clone(),
                good.issued.not_after
            )
        );

        let expired = {
            let mut leaf = Leaf::for_id(&me.to_string());
            leaf.not_before = OffsetDateTime::now_utc() - time::Duration::days(2);
            leaf.not_after = OffsetDateTime::now_utc() - time::Duration::days(1);
            let (der, key) = rogue.leaf(leaf);
            let mut cert = rogue.workload(&me);
            cert.issued.chain_der = vec![der];
            cert.key_pkcs8_der = key;
            cert
        };
        type Check = fn(&TlsError) -> bool;
        let mut cases: Vec<(&str, WorkloadCert, Check)> = Vec::new();
        let mut c = mesh.workload(&id("someone-else"));
        c.id = me.clone();
        cases.push(("leaf of another identity", c, |e| {
            matches!(e, TlsError::WrongIdentity { .. })
        }));
        cases.push((
            "WorkloadCert of another identity",
            mesh.workload(&id("x")),
            |e| matches!(e, TlsError::WrongIdentity { .. }),
        ));
        let mut c = mesh.workload(&me);
        c.key_pkcs8_der = mesh.workload(&me).key_pkcs8_der.clone();
        cases.push(("key of another certificate", c, |e| {
            matches!(e, TlsError::KeyMismatch)
        }));
        let mut c = mesh.workload(&me);
        c.key_pkcs8_der = vec![0x30, 0x00];
        cases.push(("garbage key", c, |e| matches!(e, TlsError::Key(_))));
        let mut c = mesh.workload(&me);
        c.issued.chain_der.clear();
        cases.push(("empty chain", c, |e| matches!(e, TlsError::EmptyChain)));
        let mut c = mesh.workload(&me);
        c.issued.roots_der.clear();
        cases.push(("no roots", c, |e| matches!(e, TlsError::NoRoots)));
        let mut c = mesh.workload(&me);
        c.issued.roots_der = other_mesh.ca.roots_der();
        cases.push(("roots of another mesh", c, |e| {
            matches!(e, TlsError::Untrusted(_))
        }));
        let mut c = mesh.workload(&me);
        c.issued.roots_der = vec![b"not a certificate".to_vec()];
        cases.push(("garbage root", c, |e| matches!(e, TlsError::Root(_))));
        cases.push(("expired", expired, |e| matches!(e, TlsError::Untrusted(_))));

        for (name, cert, check) in cases {
            match store.install(&cert) {
                Err(e) => assert!(check(&e), "{name}: wrong error {e}"),
                Ok(()) => panic!("{name}: installed"),
            }
            assert_eq!(
                store.current().as_ref(),
                Some(&summary),
                "{name}: previous cert kept"
            );
        }
    }

    #[test]
    fn verifier_is_rebuilt_only_when_roots_change() {
        let mesh = MeshCa::new();
        let other = MeshCa::new();
        let me = id("me");
        let store = mesh.store(&me);
        let first = store.bundle().unwrap();
        store.install(&mesh.workload(&me)).unwrap();
        assert!(
            Arc::ptr_eq(&first, &store.bundle().unwrap()),
            "same roots, same bundle"
        );
        store.install(&other.workload(&me)).unwrap();
        assert!(
            !Arc::ptr_eq(&first, &store.bundle().unwrap()),
            "new roots, new bundle"
        );
    }

    #[test]
    fn debug_never_shows_the_key() {
        let mesh = MeshCa::new();
        let cert = mesh.workload(&id("me"));
        let store = CertStore::new(id("me"));
        store.install(&cert).unwrap();
        let text = format!("{store:?}");
        assert!(text.contains("service_account: \"me\""), "{text}");
        assert!(!text.to_lowercase().contains("key"), "{text}");
    }
}
