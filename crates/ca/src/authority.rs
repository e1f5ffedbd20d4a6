//! [`Ca`]: a loaded signing key and certificate, and [`Ca::sign`], CSR in, leaf out.

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use ward_identity::{IssuedCert, SpiffeId};

use crate::chain::{self, system_time, ChainError};
use crate::files::{self, Layout, CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT, ROOT_KEY};
use crate::{csr, CaError};

/// istio/istio security/pkg/pki/util/generate_cert.go backdates NotBefore to absorb clock
/// skew between the CA and the peers that verify the certificate ("now - 2 minutes").
const BACKDATE: Duration = Duration::from_secs(2 * 60);

/// Lifetime of a self-signed root: istio/istio security/pkg/cmd/constants.go
/// `DefaultSelfSignedCACertTTL = 3650 * 24 * time.Hour`.
const ROOT_TTL: Duration = Duration::from_secs(3650 * 24 * 3600);

/// How the CA issues certificates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaOptions {
    /// The trust domain the CA signs for, e.g. `cluster.local`.
    pub trust_domain: String,
    /// Leaf lifetime when the requester names none (Istio: 24h).
    pub default_ttl: Duration,
    /// Longest leaf lifetime granted (Istio: 90 days).
    pub max_ttl: Duration,
}

impl Default for CaOptions {
    /// Istio's defaults: `cluster.local`, 24h, 90 days (security/pkg/cmd/constants.go).
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".to_owned(),
            default_ttl: Duration::from_secs(24 * 3600),
            max_ttl: Duration::from_secs(90 * 24 * 3600),
        }
    }
}

/// A certificate authority: a signing key, its certificate, the intermediates up to a root,
/// and the roots workloads trust. It signs CSRs; it never sees a workload's private key.
pub struct Ca {
    opts: CaOptions,
    /// Signing key plus the signer's subject and key identifier.
    issuer: Issuer<'static, KeyPair>,
    /// The signer's subject, DER, exactly as in its certificate.
    signer_subject: Vec<u8>,
    /// No leaf outlives this: the earliest NotAfter from the signer up to its root.
    not_after: SystemTime,
    /// Sent after each leaf: the signer and intermediates, or nothing when the signer is a root.
    intermediates: Vec<Vec<u8>>,
    /// The trust bundle handed to workloads.
    roots: Vec<Vec<u8>>,
}

impl Ca {
    /// Loads the CA from `<state_dir>/ca/`: Istio's `cacerts` layout (ca-cert.pem, ca-key.pem,
    /// cert-chain.pem, root-cert.pem) as a plugged-in intermediate; else Ward's self-signed root
    /// (root-cert.pem + root-key.pem); else creates that root. A partial layout is an error.
    pub fn load_or_create(state_dir: &Path, opts: CaOptions) -> Result<Ca, CaError> {
        check_options(&opts)?;
        let dir = state_dir.join("ca");
        match files::detect(&dir)? {
            Layout::Cacerts => Self::from_cacerts(&dir, opts),
            Layout::WardRoot => {
                let root = files::read_one_cert(&dir.join(ROOT_CERT))?;
                let key_path = dir.join(ROOT_KEY);
                let key = files::read_key(&key_path)?;
                Self::assemble(opts, root.clone(), key, &key_path, &[], vec![root])
            }
            Layout::Empty => Self::create_root(&dir, opts),
        }
    }

    /// Plugs in Istio's `cacerts` layout from `dir`. All four files are required
    /// (cert-chain.pem may be empty when ca-cert.pem is the root); ca-cert must chain through
    /// cert-chain up to root-cert, every link must be a CA valid now, and ca-key must be the
    /// key of ca-cert.
    pub fn from_cacerts(dir: &Path, opts: CaOptions) -> Result<Ca, CaError> {
        check_options(&opts)?;
        let signer = files::read_one_cert(&dir.join(CA_CERT))?;
        let key_path = dir.join(CA_KEY);
        let key = files::read_key(&key_path)?;
        let pool = files::read_certs(&dir.join(CERT_CHAIN))?;
        let roots_path = dir.join(ROOT_CERT);
        let roots = files::read_certs(&roots_path)?;
        if roots.is_empty() {
            return Err(CaError::Pem {
                path: roots_path,
                reason: "holds no certificate",
            });
        }
        Self::assemble(opts, signer, key, &key_path, &pool, roots)
    }

    /// Creates a self-signed root in `dir` and writes root-key.pem (0600) and root-cert.pem
    /// (0644). Existing files are never overwritten.
    fn create_root(dir: &Path, opts: CaOptions) -> Result<Ca, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CaError::Signing)?;
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, opts.trust_domain.as_str());
        params
            .distinguished_name
            .push(DnType::CommonName, "ward root CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial()?);
        params.not_before = OffsetDateTime::from(now - BACKDATE);
        params.not_after = OffsetDateTime::from(now + ROOT_TTL);
        let cert = params.self_signed(&key).map_err(CaError::Signing)?;

        files::create_dir(dir)?;
        // Key first: a crash between the two writes leaves a partial layout, which start-up
        // refuses loudly instead of silently minting a second root.
        files::write_new(dir, ROOT_KEY, &key.serialize_pem(), 0o600)?;
        files::write_new(dir, ROOT_CERT, &cert.pem(), 0o644)?;
        tracing::info!(dir = %dir.display(), trust_domain = %opts.trust_domain, "created self-signed root CA");

        let der = cert.der().to_vec();
        Self::assemble(opts, der.clone(), key, &dir.join(ROOT_KEY), &[], vec![der])
    }

    /// Checks the signer's path and key, then proves the whole thing by signing a probe CSR.
    fn assemble(
        opts: CaOptions,
        signer: Vec<u8>,
        key: KeyPair,
        key_path: &Path,
        pool: &[Vec<u8>],
        roots: Vec<Vec<u8>>,
    ) -> Result<Ca, CaError> {
        let verified = chain::verify_signer(&signer, pool, &roots, SystemTime::now())?;
        let (_, cert) =
            X509Certificate::from_der(&signer).map_err(|_| ChainError::Parse { what: "signer" })?;
        if *cert.public_key().subject_public_key.data != *key.public_key_raw() {
            return Err(CaError::KeyMismatch {
                path: key_path.to_owned(),
            });
        }
        let signer_subject = cert.subject().as_raw().to_vec();
        let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(signer.as_slice()), key)
            .map_err(CaError::Signing)?;
        let ca = Ca {
            opts,
            issuer,
            signer_subject,
            not_after: verified.not_after,
            intermediates: verified.intermediates,
            roots,
        };
        ca.self_test(&cert)?;
        Ok(ca)
    }

    /// Signs a throw-away CSR and verifies the leaf with the signer's key, so that a CA that
    /// cannot produce chaining certificates fails at start-up, not at the first workload.
    fn self_test(&self, signer: &X509Certificate<'_>) -> Result<(), CaError> {
        let probe = SpiffeId::new(&self.opts.trust_domain, "ward-system", "ca-self-test").map_err(
            |_| CaError::Options {
                reason: "trust domain is not a valid SPIFFE trust domain",
            },
        )?;
        let request = ward_identity::generate_csr(&probe).map_err(|_| CaError::Options {
            reason: "cannot generate the self-test key",
        })?;
        let issued = self.sign(&probe, &request.csr_der, Some(Duration::from_secs(60)))?;
        let leaf = issued.chain_der.first().ok_or(CaError::IssuerEncoding)?;
        let (_, leaf) = X509Certificate::from_der(leaf).map_err(|_| CaError::IssuerEncoding)?;
        leaf.verify_signature(Some(signer.public_key()))
            .map_err(|_| CaError::IssuerEncoding)
    }

    /// Signs a CSR for `id`.
    ///
    /// The CSR's self-signature must verify and it must request exactly the URI SAN of `id`;
    /// `id` must be in this CA's trust domain. The leaf carries only that URI SAN, EKU
    /// serverAuth + clientAuth, keyUsage digitalSignature, `CA:FALSE`, a random positive 128-bit
    /// serial, NotBefore = now − 2 min and NotAfter = min(now + ttl, signer chain NotAfter),
    /// where ttl defaults to `default_ttl` and is capped at `max_ttl`.
    pub fn sign(
        &self,
        id: &SpiffeId,
        csr_der: &[u8],
        ttl: Option<Duration>,
    ) -> Result<IssuedCert, CaError> {
        self.sign_with_dns_names(id, &[], csr_der, ttl)
    }

    /// [`Ca::sign`], with DNS SANs beside the URI SAN: for the control plane's own serving
    /// certificate, so that standard gRPC clients, which check a host name, can reach it (Istio's
    /// istiod certificate carries `istiod.<namespace>.svc` the same way). The names come from the
    /// caller, never from the CSR; workload certificates carry none. A name that is an IP
    /// address becomes an IP SAN.
    pub fn sign_with_dns_names(
        &self,
        id: &SpiffeId,
        dns_names: &[String],
        csr_der: &[u8],
        ttl: Option<Duration>,
    ) -> Result<IssuedCert, CaError> {
        if id.trust_domain() != self.opts.trust_domain {
            return Err(CaError::WrongTrustDomain {
                ca: self.opts.trust_domain.clone(),
                requested: id.trust_domain().to_owned(),
            });
        }
        let public_key = csr::check(id, csr_der)?;
        let ttl = ttl.unwrap_or(self.opts.default_ttl).min(self.opts.max_ttl);
        if ttl.is_zero() {
            return Err(CaError::ZeroTtl);
        }
        let now = SystemTime::now();
        if self.not_after <= now {
            return Err(CaError::SignerExpired);
        }
        // A leaf never outlives its signer (Istio fixed this in 1.28.7; docs/threats.md,
        // "Identities and certificate chains"): clamp NotAfter to the earliest NotAfter of the
        // signing chain.
        let not_after = now
            .checked_add(ttl)
            .unwrap_or(self.not_after)
            .min(self.not_after);

        let mut params = CertificateParams::default();
        // RFC 5280 §4.2.1.6: "If the subject field contains an empty sequence, then the issuing
        // CA MUST include a subjectAltName extension that is marked as critical." rcgen marks
        // it critical because the subject is empty; Istio leaves look the same.
        params.distinguished_name = DistinguishedName::new();
        let uri = id.to_string().try_into().map_err(CaError::Signing)?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        for name in dns_names {
            // An address is an IP SAN (RFC 5280 §4.2.1.6): for a control plane that clients
            // reach by address, like the API server calling a webhook at `https://IP:port`.
            if let Ok(ip) = name.parse::<std::net::IpAddr>() {
                params.subject_alt_names.push(SanType::IpAddress(ip));
                continue;
            }
            let name = name.clone().try_into().map_err(CaError::Signing)?;
            params.subject_alt_names.push(SanType::DnsName(name));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        // spiffe/spiffe standards/X509-SVID.md §4.3: "Leaf SVIDs MUST set digitalSignature."
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.serial_number = Some(random_serial()?);
        params.use_authority_key_identifier_extension = true;
        params.not_before = OffsetDateTime::from(now - BACKDATE);
        params.not_after = OffsetDateTime::from(not_after);
        let leaf = params
            .signed_by(&public_key, &self.issuer)
            .map_err(CaError::Signing)?;
        let leaf_der = leaf.der().to_vec();

        let (_, parsed) =
            X509Certificate::from_der(&leaf_der).map_err(|_| CaError::IssuerEncoding)?;
        if parsed.issuer().as_raw() != self.signer_subject.as_slice() {
            return Err(CaError::IssuerEncoding);
        }
        let serial = serial_hex(parsed.raw_serial());
        let not_before = system_time(parsed.validity().not_before);
        let not_after = system_time(parsed.validity().not_after);

        let mut chain_der = Vec::with_capacity(1 + self.intermediates.len());
        chain_der.push(leaf_der);
        chain_der.extend(self.intermediates.iter().cloned());
        tracing::debug!(identity = %id, serial = %serial, "signed workload certificate");
        Ok(IssuedCert {
            chain_der,
            roots_der: self.roots.clone(),
            serial,
            not_before,
            not_after,
        })
    }

    /// The roots workloads must trust (DER).
    pub fn roots_der(&self) -> Vec<Vec<u8>> {
        self.roots.clone()
    }

    /// The roots as PEM, concatenated (what Istio publishes as `istio-ca-root-cert`).
    pub fn root_pem(&self) -> String {
        self.roots
            .iter()
            .map(|der| {
                let block = pem::Pem::new("CERTIFICATE", der.clone());
                pem::encode_config(
                    &block,
                    pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
                )
            })
            .collect()
    }

    /// The trust domain this CA signs for.
    pub fn trust_domain(&self) -> &str {
        &self.opts.trust_domain
    }
}

impl fmt::Debug for Ca {
    /// Never prints the signing key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("opts", &self.opts)
            .field("not_after", &self.not_after)
            .field("intermediates", &self.intermediates.len())
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

fn check_options(opts: &CaOptions) -> Result<(), CaError> {
    if opts.default_ttl.is_zero() || opts.max_ttl.is_zero() {
        return Err(CaError::Options {
            reason: "default_ttl and max_ttl must be positive",
        });
    }
    // The id syntax check is the trust-domain check: no other public validator exists.
    SpiffeId::new(&opts.trust_domain, "ns", "sa").map_err(|_| CaError::Options {
        reason: "trust domain is not a valid SPIFFE trust domain",
    })?;
    Ok(())
}

/// 16 random bytes, top bit clear (positive) and next bit set (always 16 bytes long, never
/// zero): 126 bits of entropy, within RFC 5280's 20-octet limit.
fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| CaError::Random)?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// Lowercase hex of a DER serial, without the sign-padding zero bytes.
fn serial_hex(raw: &[u8]) -> String {
    let start = raw
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    raw.get(start..)
        .unwrap_or_default()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::fs;

    use crate::CsrError;
    use rcgen::CertifiedIssuer;
    use rustls_pki_types::UnixTime;
    use x509_parser::extensions::{GeneralName, ParsedExtension};

    const TD: &str = "cluster.local";

    fn sleep() -> SpiffeId {
        SpiffeId::new(TD, "default", "sleep").unwrap()
    }

    fn csr_for(id: &SpiffeId) -> Vec<u8> {
        ward_identity::generate_csr(id).unwrap().csr_der.clone()
    }

    /// Chain-verifies `issued` with webpki against `root`, for both client and server use.
    fn webpki_verify(issued: &IssuedCert, root: &[u8]) -> Result<(), webpki::Error> {
        let root = CertificateDer::from(root);
        let anchor = webpki::anchor_from_trusted_cert(&root)?;
        let leaf = CertificateDer::from(issued.chain_der[0].as_slice());
        let leaf = webpki::EndEntityCert::try_from(&leaf)?;
        let intermediates: Vec<CertificateDer<'_>> = issued.chain_der[1..]
            .iter()
            .map(|d| CertificateDer::from(d.as_slice()))
            .collect();
        for usage in [
            webpki::KeyUsage::client_auth(),
            webpki::KeyUsage::server_auth(),
        ] {
            leaf.verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                std::slice::from_ref(&anchor),
                &intermediates,
                UnixTime::now(),
                usage,
                None,
                None,
            )?;
        }
        Ok(())
    }

    fn ca_params(cn: &str, not_after: OffsetDateTime) -> CertificateParams {
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::OrganizationName, "Istio");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.not_before = OffsetDateTime::now_utc() - time::Duration::hours(1);
        p.not_after = not_after;
        p
    }

    /// An operator's offline root and an intermediate for Ward, as Istio's
    /// tools/certs/Makefile.selfsigned.mk makes them.
    struct Cacerts {
        root: CertifiedIssuer<'static, KeyPair>,
        inter: CertifiedIssuer<'static, KeyPair>,
    }

    impl Cacerts {
        fn new(inter_not_after: OffsetDateTime) -> Self {
            let far = OffsetDateTime::now_utc() + time::Duration::days(3650);
            let root = CertifiedIssuer::self_signed(
                ca_params("Root CA", far),
                KeyPair::generate().unwrap(),
            )
            .unwrap();
            let inter = CertifiedIssuer::signed_by(
                ca_params("Intermediate CA", inter_not_after),
                KeyPair::generate().unwrap(),
                &root,
            )
            .unwrap();
            Self { root, inter }
        }

        /// Writes the four files; `cert-chain.pem` = intermediate + root, as Istio's Makefile.
        fn write(&self, dir: &Path) {
            fs::create_dir_all(dir).unwrap();
            fs::write(dir.join(CA_CERT), self.inter.pem()).unwrap();
            fs::write(dir.join(CA_KEY), self.inter.key().serialize_pem()).unwrap();
            fs::write(
                dir.join(CERT_CHAIN),
                format!("{}{}", self.inter.pem(), self.root.pem()),
            )
            .unwrap();
            fs::write(dir.join(ROOT_CERT), self.root.pem()).unwrap();
        }
    }

    #[test]
    fn create_then_reload_keeps_the_same_root() {
        let state = tempfile::tempdir().unwrap();
        let first = Ca::load_or_create(state.path(), CaOptions::default()).unwrap();
        let dir = state.path().join("ca");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |f: &str| fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(ROOT_KEY), 0o600);
            assert_eq!(mode(ROOT_CERT), 0o644);
        }
        let roots = first.roots_der();
        assert_eq!(roots.len(), 1);
        assert_eq!(
            first.root_pem(),
            fs::read_to_string(dir.join(ROOT_CERT)).unwrap()
        );

        let (_, root) = X509Certificate::from_der(&roots[0]).unwrap();
        assert_eq!(
            root.subject().to_string(),
            "O=cluster.local, CN=ward root CA"
        );
        assert!(root.is_ca());
        let ku = root.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
        let life = system_time(root.validity().not_after)
            .duration_since(system_time(root.validity().not_before))
            .unwrap();
        assert_eq!(life, ROOT_TTL + BACKDATE);

        let again = Ca::load_or_create(state.path(), CaOptions::default()).unwrap();
        assert_eq!(again.roots_der(), roots);
        let issued = again.sign(&sleep(), &csr_for(&sleep()), None).unwrap();
        assert_eq!(
            issued.chain_der.len(),
            1,
            "a root signer sends no intermediates"
        );
        webpki_verify(&issued, &roots[0]).unwrap();
    }

    #[test]
    fn partial_or_corrupt_state_is_refused() {
        let state = tempfile::tempdir().unwrap();
        Ca::load_or_create(state.path(), CaOptions::default()).unwrap();
        let dir = state.path().join("ca");
        let root_pem = fs::read_to_string(dir.join(ROOT_CERT)).unwrap();

        fs::remove_file(dir.join(ROOT_CERT)).unwrap();
        let err = Ca::load_or_create(state.path(), CaOptions::default()).unwrap_err();
        assert!(matches!(err, CaError::PartialLayout { .. }), "{err}");
        assert!(
            dir.join(ROOT_KEY).exists(),
            "the key must never be replaced"
        );

        // The certificate of another key beside our key.
        let other = tempfile::tempdir().unwrap();
        let other_ca = Ca::load_or_create(other.path(), CaOptions::default()).unwrap();
        fs::write(dir.join(ROOT_CERT), other_ca.root_pem()).unwrap();
        let err = Ca::load_or_create(state.path(), CaOptions::default()).unwrap_err();
        assert!(matches!(err, CaError::KeyMismatch { .. }), "{err}");

        fs::write(dir.join(ROOT_CERT), root_pem).unwrap();
        assert!(Ca::load_or_create(state.path(), CaOptions::default()).is_ok());
    }

    #[test]
    fn cacerts_plug_in() {
        let far = OffsetDateTime::now_utc() + time::Duration::days(365);
        let plugged = Cacerts::new(far);
        let state = tempfile::tempdir().unwrap();
        plugged.write(&state.path().join("ca"));

        for ca in [
            Ca::load_or_create(state.path(), CaOptions::default()).unwrap(),
            Ca::from_cacerts(&state.path().join("ca"), CaOptions::default()).unwrap(),
        ] {
            assert_eq!(ca.roots_der(), vec![plugged.root.der().to_vec()]);
            let issued = ca.sign(&sleep(), &csr_for(&sleep()), None).unwrap();
            assert_eq!(issued.chain_der[1..], [plugged.inter.der().to_vec()]);
            assert_eq!(issued.roots_der, vec![plugged.root.der().to_vec()]);
            webpki_verify(&issued, plugged.root.der()).unwrap();
        }
        assert!(
            !state.path().join("ca").join(ROOT_KEY).exists(),
            "no Ward root was minted"
        );
    }

    #[test]
    fn cacerts_with_the_root_as_signer_and_an_empty_chain() {
        let plugged = Cacerts::new(OffsetDateTime::now_utc() + time::Duration::days(30));
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(CA_CERT), plugged.root.pem()).unwrap();
        fs::write(dir.path().join(CA_KEY), plugged.root.key().serialize_pem()).unwrap();
        fs::write(dir.path().join(CERT_CHAIN), "").unwrap();
        fs::write(dir.path().join(ROOT_CERT), plugged.root.pem()).unwrap();
        let ca = Ca::from_cacerts(dir.path(), CaOptions::default()).unwrap();
        let issued = ca.sign(&sleep(), &csr_for(&sleep()), None).unwrap();
        assert_eq!(issued.chain_der.len(), 1);
        webpki_verify(&issued, plugged.root.der()).unwrap();
    }

    #[test]
    fn cacerts_that_do_not_verify_are_refused() {
        let far = OffsetDateTime::now_utc() + time::Duration::days(365);
        let good = Cacerts::new(far);
        let stranger = Cacerts::new(far);
        type Check = fn(&CaError) -> bool;
        type Damage<'a> = Box<dyn Fn(&Path) + 'a>;
        let cases: Vec<(&str, Damage<'_>, Check)> = vec![
            (
                "key of another CA",
                Box::new(|d: &Path| {
                    fs::write(d.join(CA_KEY), stranger.inter.key().serialize_pem()).unwrap()
                }),
                |e| matches!(e, CaError::KeyMismatch { .. }),
            ),
            (
                "root of another mesh",
                Box::new(|d: &Path| fs::write(d.join(ROOT_CERT), stranger.root.pem()).unwrap()),
                |e| matches!(e, CaError::Chain(ChainError::Unanchored { .. })),
            ),
            (
                "missing cert-chain.pem",
                Box::new(|d: &Path| fs::remove_file(d.join(CERT_CHAIN)).unwrap()),
                |e| matches!(e, CaError::Io { .. }),
            ),
            (
                "empty root-cert.pem",
                Box::new(|d: &Path| fs::write(d.join(ROOT_CERT), "").unwrap()),
                |e| matches!(e, CaError::Pem { .. }),
            ),
            (
                "two certificates in ca-cert.pem",
                Box::new(|d: &Path| {
                    fs::write(
                        d.join(CA_CERT),
                        format!("{}{}", good.inter.pem(), good.root.pem()),
                    )
                    .unwrap()
                }),
                |e| matches!(e, CaError::Pem { .. }),
            ),
        ];
        for (name, damage, check) in cases {
            let dir = tempfile::tempdir().unwrap();
            good.write(dir.path());
            damage(dir.path());
            match Ca::from_cacerts(dir.path(), CaOptions::default()) {
                Err(e) => assert!(check(&e), "{name}: wrong error {e}"),
                Ok(_) => panic!("{name}: accepted"),
            }
        }
    }

    #[test]
    fn expired_intermediate_is_refused_at_load() {
        let past = OffsetDateTime::now_utc() - time::Duration::minutes(5);
        let dir = tempfile::tempdir().unwrap();
        Cacerts::new(past).write(dir.path());
        let err = Ca::from_cacerts(dir.path(), CaOptions::default()).unwrap_err();
        assert!(
            matches!(err, CaError::Chain(ChainError::NotValidNow { .. })),
            "{err}"
        );
    }

    #[test]
    fn csr_must_name_exactly_the_identity() {
        let state = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(state.path(), CaOptions::default()).unwrap();
        let admin = SpiffeId::new(TD, "default", "admin").unwrap();
        let foreign = SpiffeId::new("evil.local", "default", "sleep").unwrap();
        let mut bad_sig = csr_for(&sleep());
        let at = bad_sig.len() - 2;
        bad_sig[at] ^= 0x01;
        type Check = fn(&CaError) -> bool;
        let cases: Vec<(&str, SpiffeId, Vec<u8>, Check)> = vec![
            ("CSR for another identity", sleep(), csr_for(&admin), |e| {
                matches!(e, CaError::Csr(CsrError::San { .. }))
            }),
            (
                "identity in another trust domain",
                foreign.clone(),
                csr_for(&foreign),
                |e| matches!(e, CaError::WrongTrustDomain { .. }),
            ),
            ("CSR with a bad signature", sleep(), bad_sig, |e| {
                matches!(e, CaError::Csr(CsrError::Signature))
            }),
            ("not a CSR", sleep(), b"hello".to_vec(), |e| {
                matches!(e, CaError::Csr(CsrError::Malformed { .. }))
            }),
        ];
        for (name, id, csr, check) in cases {
            match ca.sign(&id, &csr, None) {
                Err(e) => assert!(check(&e), "{name}: wrong error {e}"),
                Ok(_) => panic!("{name}: signed"),
            }
        }
        assert!(matches!(
            ca.sign(&sleep(), &csr_for(&sleep()), Some(Duration::ZERO)),
            Err(CaError::ZeroTtl)
        ));
    }

    #[test]
    fn leaf_has_exactly_the_expected_contents() {
        let state = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(state.path(), CaOptions::default()).unwrap();
        let before = SystemTime::now();
        let issued = ca.sign(&sleep(), &csr_for(&sleep()), None).unwrap();
        let after = SystemTime::now();
        let (_, leaf) = X509Certificate::from_der(&issued.chain_der[0]).unwrap();

        assert_eq!(
            ward_identity::identity_from_cert(&issued.chain_der[0]).unwrap(),
            sleep()
        );
        assert!(leaf.subject().as_raw().len() <= 2, "empty subject");
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        assert!(
            san.critical,
            "RFC 5280: SAN is critical when the subject is empty"
        );
        assert_eq!(
            san.value.general_names,
            vec![GeneralName::URI(
                "spiffe://cluster.local/ns/default/sa/sleep"
            )]
        );
        assert!(!leaf.is_ca());
        assert!(
            leaf.basic_constraints().unwrap().is_some(),
            "CA:FALSE is explicit"
        );
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth && !eku.any && eku.other.is_empty());
        let ku = leaf.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_cert_sign() && !ku.crl_sign());
        let unexpected: Vec<_> = leaf
            .extensions()
            .iter()
            .filter(|e| {
                !matches!(
                    e.parsed_extension(),
                    ParsedExtension::SubjectAlternativeName(_)
                        | ParsedExtension::BasicConstraints(_)
                        | ParsedExtension::KeyUsage(_)
                        | ParsedExtension::ExtendedKeyUsage(_)
                        | ParsedExtension::AuthorityKeyIdentifier(_)
                        | ParsedExtension::SubjectKeyIdentifier(_)
                )
            })
            .map(|e| e.oid.to_id_string())
            .collect();
        assert!(unexpected.is_empty(), "{unexpected:?}");

        // NotBefore is backdated by two minutes (certificates carry whole seconds).
        let secs = Duration::from_secs(1);
        assert!(
            issued.not_before >= before - BACKDATE - secs && issued.not_before <= after - BACKDATE
        );
        // Default TTL: 24h from now.
        let day = Duration::from_secs(86_400);
        assert!(issued.not_after >= before + day - secs && issued.not_after <= after + day);
        assert_eq!(issued.not_before, system_time(leaf.validity().not_before));
        assert_eq!(issued.serial, serial_hex(leaf.raw_serial()));
    }

    #[test]
    fn ttl_is_capped_and_clamped_to_the_signer() {
        let hour = Duration::from_secs(3600);
        let secs = Duration::from_secs(1);
        // An intermediate with one hour left: a 24h request gets one hour (Istio 1.28.7 fix).
        let short = Cacerts::new(OffsetDateTime::now_utc() + time::Duration::hours(1));
        let dir = tempfile::tempdir().unwrap();
        short.write(dir.path());
        let ca = Ca::from_cacerts(dir.path(), CaOptions::default()).unwrap();
        let issued = ca
            .sign(&sleep(), &csr_for(&sleep()), Some(24 * hour))
            .unwrap();
        let (_, inter) = X509Certificate::from_der(short.inter.der()).unwrap();
        assert_eq!(issued.not_after, system_time(inter.validity().not_after));
        webpki_verify(&issued, short.root.der()).unwrap();

        // max_ttl caps a longer request; a shorter one is honoured.
        let state = tempfile::tempdir().unwrap();
        let opts = CaOptions {
            max_ttl: 48 * hour,
            ..CaOptions::default()
        };
        let ca = Ca::load_or_create(state.path(), opts).unwrap();
        let cases = [
            (Some(1000 * hour), 48 * hour),
            (Some(hour), hour),
            (None, 24 * hour),
        ];
        for (asked, granted) in cases {
            let now = SystemTime::now();
            let issued = ca.sign(&sleep(), &csr_for(&sleep()), asked).unwrap();
            let want = now + granted;
            assert!(
                issued.not_after >= want - secs && issued.not_after <= want + secs,
                "{asked:?}: {:?} vs {want:?}",
                issued.not_after
            );
        }
    }

    #[test]
    fn serials_are_unique_positive_128_bit() {
        let state = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(state.path(), CaOptions::default()).unwrap();
        let csr = csr_for(&sleep());
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let issued = ca.sign(&sleep(), &csr, None).unwrap();
            assert_eq!(issued.serial.len(), 32, "{}", issued.serial);
            assert!(
                matches!(issued.serial.as_bytes()[0], b'4'..=b'7'),
                "{}",
                issued.serial
            );
            assert!(issued
                .serial
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            assert!(
                seen.insert(issued.serial.clone()),
                "duplicate serial {}",
                issued.serial
            );
        }
    }

    #[test]
    fn ca_can_be_shared_across_tasks() {
        fn shared<T: Send + Sync + 'static>() {}
        shared::<Ca>();
    }

    #[test]
    fn serial_hex_table() {
        let cases: &[(&[u8], &str)] = &[
            (&[0x00, 0x80, 0x01], "8001"),
            (&[0x7f, 0xff], "7fff"),
            (&[0x00], "00"),
            (&[0x00, 0x00, 0x0a], "0a"),
            (&[], ""),
        ];
        for (raw, want) in cases {
            assert_eq!(serial_hex(raw), *want, "{raw:?}");
        }
    }

    #[test]
    fn options_are_checked() {
        let bad = [
            CaOptions {
                default_ttl: Duration::ZERO,
                ..CaOptions::default()
            },
            CaOptions {
                max_ttl: Duration::ZERO,
                ..CaOptions::default()
            },
            CaOptions {
                trust_domain: "Cluster.Local".into(),
                ..CaOptions::default()
            },
            CaOptions {
                trust_domain: String::new(),
                ..CaOptions::default()
            },
        ];
        for opts in bad {
            assert!(
                matches!(check_options(&opts), Err(CaError::Options { .. })),
                "{opts:?}"
            );
        }
        assert!(check_options(&CaOptions::default()).is_ok());
    }

    #[test]
    fn dns_names_come_from_the_caller_beside_the_one_uri() {
        let state = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(state.path(), CaOptions::default()).unwrap();
        let names = [
            "ward-control-plane.istio-system.svc".to_owned(),
            "127.1.155.1".to_owned(),
        ];
        let issued = ca
            .sign_with_dns_names(&sleep(), &names, &csr_for(&sleep()), None)
            .unwrap();
        let (_, leaf) = X509Certificate::from_der(&issued.chain_der[0]).unwrap();
        let san = leaf.subject_alternative_name().unwrap().unwrap().value;
        let found: Vec<String> = san
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::URI(u) => format!("URI:{u}"),
                GeneralName::DNSName(d) => format!("DNS:{d}"),
                GeneralName::IPAddress(ip) => format!("IP:{ip:?}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            found,
            [
                "URI:spiffe://cluster.local/ns/default/sa/sleep",
                "DNS:ward-control-plane.istio-system.svc",
                "IP:[127, 1, 155, 1]"
            ]
        );
        assert_eq!(
            ward_identity::identity_from_cert(&issued.chain_der[0]).unwrap(),
            sleep()
        );
        webpki_verify(&issued, &ca.roots_der()[0]).unwrap();
    }
}
