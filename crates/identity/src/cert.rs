//! Workload certificates: reading the identity out of a peer's leaf, the CA's answer
//! ([`IssuedCert`]), and a workload's key plus that answer ([`WorkloadCert`]) with its renewal
//! time.

use std::fmt;
use std::time::{Duration, SystemTime};

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::{IdentityError, SpiffeId};

/// The identity a certificate proves: its one URI SAN, parsed strictly as a [`SpiffeId`].
///
/// Only URI SANs count; DNS and email SANs are never read as identities (CVE-2022-21656, SAN
/// type confusion). This function does not verify the chain: call it on a leaf that a verifier
/// has already accepted.
pub fn identity_from_cert(cert_der: &[u8]) -> Result<SpiffeId, IdentityError> {
    let (rest, cert) =
        X509Certificate::from_der(cert_der).map_err(|_| IdentityError::Certificate {
            reason: "not a DER certificate",
        })?;
    if !rest.is_empty() {
        return Err(IdentityError::Certificate {
            reason: "trailing bytes after the certificate",
        });
    }
    // x509-parser fails here when the SAN extension is present twice or does not parse, so an
    // attacker cannot hide a second identity in a second extension.
    let san = cert
        .subject_alternative_name()
        .map_err(|_| IdentityError::Certificate {
            reason: "malformed or repeated subjectAltName extension",
        })?
        .ok_or(IdentityError::NoUriSan)?;

    let mut uris = Vec::new();
    for name in &san.value.general_names {
        match name {
            GeneralName::URI(uri) => {
                if uri.contains('\0') {
                    return Err(IdentityError::NulInSan);
                }
                uris.push(*uri);
            }
            // Never identities, but a NUL in any textual SAN marks a forged certificate
            // (CVE-2025-66220): refuse it outright rather than ignoring the name.
            GeneralName::DNSName(text) | GeneralName::RFC822Name(text) if text.contains('\0') => {
                return Err(IdentityError::NulInSan);
            }
            _ => {}
        }
    }
    // spiffe/spiffe standards/X509-SVID.md §2: "An X.509 SVID MUST contain exactly one URI SAN,
    // and by extension, exactly one SPIFFE ID."
    match uris.as_slice() {
        [] => Err(IdentityError::NoUriSan),
        [uri] => SpiffeId::parse(uri).map_err(|e| IdentityError::UriSan(Box::new(e))),
        many => Err(IdentityError::ManyUriSans { count: many.len() }),
    }
}

/// What the CA returns for a CSR. Serializable: it crosses the control-plane RPC.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IssuedCert {
    /// The leaf first, then the intermediates up to (not including) a root.
    pub chain_der: Vec<Vec<u8>>,
    /// The trust bundle: every root the mesh currently trusts.
    pub roots_der: Vec<Vec<u8>>,
    /// The leaf's serial number, lowercase hex without leading zero bytes.
    pub serial: String,
    /// The leaf's NotBefore.
    pub not_before: SystemTime,
    /// The leaf's NotAfter.
    pub not_after: SystemTime,
}

/// A DER certificate's NotAfter (for expiry metrics of the roots a workload trusts).
pub fn cert_not_after(cert_der: &[u8]) -> Result<SystemTime, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(cert_der).map_err(|_| IdentityError::Certificate {
            reason: "not a DER certificate",
        })?;
    let secs = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// What `ward certs` shows of one certificate of a chain or trust bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject, as x509-parser prints it (`O=cluster.local`, or empty for a workload leaf).
    pub subject: String,
    /// The serial, lowercase hex without leading zero bytes.
    pub serial: String,
    /// NotBefore.
    pub not_before: SystemTime,
    /// NotAfter.
    pub not_after: SystemTime,
}

/// A DER certificate's subject, serial and validity (not verified: for display).
pub fn cert_info(cert_der: &[u8]) -> Result<CertInfo, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(cert_der).map_err(|_| IdentityError::Certificate {
            reason: "not a DER certificate",
        })?;
    let time = |t: x509_parser::time::ASN1Time| {
        let secs = u64::try_from(t.timestamp()).unwrap_or(0);
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    };
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        serial: hex_serial(cert.raw_serial()),
        not_before: time(cert.validity().not_before),
        not_after: time(cert.validity().not_after),
    })
}

/// A serial as lowercase hex without leading zero bytes (one zero byte for zero).
fn hex_serial(raw: &[u8]) -> String {
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

impl IssuedCert {
    /// An [`IssuedCert`] from a chain received over the wire (leaf first, then intermediates)
    /// and the roots the receiver trusts: the serial and validity are read from the leaf. Does
    /// not verify the chain (installing it in a `ward_tls::CertStore` does).
    pub fn from_chain(
        chain_der: Vec<Vec<u8>>,
        roots_der: Vec<Vec<u8>>,
    ) -> Result<IssuedCert, IdentityError> {
        let leaf = chain_der.first().ok_or(IdentityError::Certificate {
            reason: "empty certificate chain",
        })?;
        let (_, cert) =
            X509Certificate::from_der(leaf).map_err(|_| IdentityError::Certificate {
                reason: "not a DER certificate",
            })?;
        let raw = cert.raw_serial();
        let start = raw
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(raw.len().saturating_sub(1));
        let serial = raw
            .get(start..)
            .unwrap_or_default()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let time = |t: x509_parser::time::ASN1Time| {
            let secs = u64::try_from(t.timestamp()).unwrap_or(0);
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
        };
        let not_before = time(cert.validity().not_before);
        let not_after = time(cert.validity().not_after);
        Ok(IssuedCert {
            chain_der,
            roots_der,
            serial,
            not_before,
            not_after,
        })
    }
}

impl fmt::Debug for IssuedCert {
    /// Sizes and validity only: the DER bytes are noise in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("serial", &self.serial)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("chain_len", &self.chain_der.len())
            .field("roots_len", &self.roots_der.len())
            .finish()
    }
}

/// A workload's private key plus the certificate issued for it.
#[derive(Clone)]
pub struct WorkloadCert {
    /// The identity the certificate was requested for.
    pub id: SpiffeId,
    /// PKCS#8 DER private key. Never logged; zeroed when dropped.
    pub key_pkcs8_der: Vec<u8>,
    /// The CA's answer.
    pub issued: IssuedCert,
}

/// istio/istio pilot/cmd/pilot-agent/options/options.go renews at
/// `SECRET_GRACE_PERIOD_RATIO` 0.5 of the lifetime; Ward spreads renewals by ±5 % around it so
/// that proxies started together do not hit the CA together.
const RENEW_FRACTION: f64 = 0.5;
/// Half-width of the renewal window, as a fraction of the lifetime.
const RENEW_JITTER: f64 = 0.05;

impl WorkloadCert {
    /// When to renew: `not_before + lifetime * (0.5 ± 0.05)`.
    ///
    /// `jitter_unit` is a caller-supplied random number in `[0, 1)` (so this stays pure): 0 maps
    /// to 45 % of the lifetime, 1 to 55 %. Out-of-range values are clamped; NaN means 50 %.
    pub fn renew_at(&self, jitter_unit: f64) -> SystemTime {
        let unit = if jitter_unit.is_nan() {
            0.5
        } else {
            jitter_unit.clamp(0.0, 1.0)
        };
        let fraction = RENEW_FRACTION - RENEW_JITTER + 2.0 * RENEW_JITTER * unit;
        let lifetime = self
            .issued
            .not_after
            .duration_since(self.issued.not_before)
            .unwrap_or(Duration::ZERO);
        self.issued.not_before + lifetime.mul_f64(fraction)
    }
}

impl fmt::Debug for WorkloadCert {
    /// Never prints the private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("id", &self.id)
            .field("key_pkcs8_der", &"<redacted>")
            .field("issued", &self.issued)
            .finish()
    }
}

impl Drop for WorkloadCert {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key_pkcs8_der);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};

    /// A self-signed certificate whose SAN extension holds exactly `sans`.
    fn cert_with_sans(sans: Vec<SanType>) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    fn dns(s: &str) -> SanType {
        SanType::DnsName(s.try_into().unwrap())
    }

    const SLEEP: &str = "spiffe://cluster.local/ns/default/sa/sleep";

    #[test]
    fn identity_from_cert_table() {
        use IdentityError as E;
        let sleep = SpiffeId::parse(SLEEP).unwrap();
        let cases: Vec<(&str, Vec<SanType>, Result<SpiffeId, IdentityError>)> = vec![
            ("one URI SAN", vec![uri(SLEEP)], Ok(sleep.clone())),
            (
                "URI SAN beside a DNS SAN",
                vec![dns("sleep.default"), uri(SLEEP)],
                Ok(sleep),
            ),
            ("no SAN at all", vec![], Err(E::NoUriSan)),
            // CVE-2022-21656: the SPIFFE string in a DNS or email SAN is not an identity.
            (
                "SPIFFE id only in a DNS SAN",
                vec![dns(SLEEP)],
                Err(E::NoUriSan),
            ),
            (
                "SPIFFE id only in an email SAN",
                vec![SanType::Rfc822Name(SLEEP.try_into().unwrap())],
                Err(E::NoUriSan),
            ),
            (
                "two URI SANs",
                vec![
                    uri(SLEEP),
                    uri("spiffe://cluster.local/ns/default/sa/admin"),
                ],
                Err(E::ManyUriSans { count: 2 }),
            ),
            (
                "NUL in the URI SAN",
                vec![uri("spiffe://cluster.local/ns/a/sa/admin\0.evil")],
                Err(E::NulInSan),
            ),
            (
                "NUL in a DNS SAN",
                vec![dns("a\0b"), uri(SLEEP)],
                Err(E::NulInSan),
            ),
            (
                "URI SAN with upper-case trust domain",
                vec![uri("spiffe://Cluster.Local/ns/a/sa/b")],
                Err(E::UriSan(Box::new(E::TrustDomain {
                    reason: "must be lower case",
                }))),
            ),
            (
                "URI SAN with another scheme",
                vec![uri("https://cluster.local/ns/a/sa/b")],
                Err(E::UriSan(Box::new(E::Scheme))),
            ),
        ];
        for (name, sans, want) in cases {
            assert_eq!(identity_from_cert(&cert_with_sans(sans)), want, "{name}");
        }
    }

    #[test]
    fn garbage_and_trailing_bytes_are_rejected() {
        assert!(matches!(
            identity_from_cert(b""),
            Err(IdentityError::Certificate { .. })
        ));
        assert!(matches!(
            identity_from_cert(b"\x30\x03abc"),
            Err(IdentityError::Certificate { .. })
        ));
        let mut der = cert_with_sans(vec![uri(SLEEP)]);
        der.push(0);
        assert!(matches!(
            identity_from_cert(&der),
            Err(IdentityError::Certificate { .. })
        ));
    }

    #[test]
    fn duplicate_san_extension_is_rejected() {
        // A second subjectAltName extension smuggled in as a custom extension.
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![uri(SLEEP)];
        let second = yasna_san("spiffe://cluster.local/ns/default/sa/admin");
        params
            .custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(
                &[2, 5, 29, 17],
                second,
            ));
        let key = KeyPair::generate().unwrap();
        let der = params.self_signed(&key).unwrap().der().to_vec();
        assert!(matches!(
            identity_from_cert(&der),
            Err(IdentityError::Certificate { .. })
        ));
    }

    /// DER of `GeneralNames ::= SEQUENCE { [6] IA5String }` for one URI.
    fn yasna_san(uri: &str) -> Vec<u8> {
        let mut inner = vec![0x86, u8::try_from(uri.len()).unwrap()];
        inner.extend_from_slice(uri.as_bytes());
        let mut out = vec![0x30, u8::try_from(inner.len()).unwrap()];
        out.extend(inner);
        out
    }

    proptest::proptest! {
        #[test]
        fn identity_from_cert_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = identity_from_cert(&bytes);
        }
    }

    #[test]
    fn corrupting_a_real_certificate_never_panics() {
        let der = cert_with_sans(vec![uri(SLEEP)]);
        for i in 0..der.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = der.clone();
                bad[i] ^= flip;
                let _ = identity_from_cert(&bad);
            }
            let _ = identity_from_cert(&der[..i]);
        }
    }

    fn workload_cert(not_before: SystemTime, lifetime: Duration) -> WorkloadCert {
        WorkloadCert {
            id: SpiffeId::parse(SLEEP).unwrap(),
            key_pkcs8_der: vec![1, 2, 3],
            issued: IssuedCert {
                chain_der: vec![],
                roots_der: vec![],
                serial: "01".into(),
                not_before,
                not_after: not_before + lifetime,
            },
        }
    }

    #[test]
    fn renew_at_table() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let day = Duration::from_secs(86_400);
        let cert = workload_cert(t0, day);
        let cases = [
            (0.0, day.mul_f64(0.45)),
            (0.5, day.mul_f64(0.50)),
            (0.999_999, day.mul_f64(0.549_999_9)),
            (-3.0, day.mul_f64(0.45)),
            (7.0, day.mul_f64(0.55)),
            (f64::NAN, day.mul_f64(0.50)),
            (f64::INFINITY, day.mul_f64(0.55)),
        ];
        for (jitter, want) in cases {
            let got = cert.renew_at(jitter).duration_since(t0).unwrap();
            let diff = got.abs_diff(want);
            assert!(
                diff < Duration::from_millis(1),
                "jitter {jitter}: {got:?} vs {want:?}"
            );
        }
        // A certificate whose NotAfter precedes NotBefore renews immediately.
        let mut broken = workload_cert(t0, day);
        broken.issued.not_after = t0 - day;
        assert_eq!(broken.renew_at(0.3), t0);
    }

    #[test]
    fn debug_never_prints_the_key() {
        let mut cert = workload_cert(SystemTime::UNIX_EPOCH, Duration::from_secs(60));
        cert.key_pkcs8_der = b"SECRET-KEY-BYTES".to_vec();
        let text = format!("{cert:?} {cert:#?}");
        assert!(!text.contains("SECRET"), "{text}");
        assert!(!text.contains("83, 69, 67"), "{text}");
        assert!(text.contains("redacted"));
    }

    #[test]
    fn issued_cert_serde_round_trip() {
        let cert = workload_cert(
            SystemTime::UNIX_EPOCH + Duration::from_secs(5),
            Duration::from_secs(60),
        );
        let mut issued = cert.issued.clone();
        issued.chain_der = vec![vec![1, 2], vec![3]];
        issued.roots_der = vec![vec![4]];
        let json = serde_json::to_string(&issued).unwrap();
        assert_eq!(serde_json::from_str::<IssuedCert>(&json).unwrap(), issued);
    }
}
