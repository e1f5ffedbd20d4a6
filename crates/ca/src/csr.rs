//! Checking a workload's CSR (untrusted input) before anything from it is used.
//!
//! Only the public key is taken from a CSR; every other field of the leaf comes from the CA.
//! The requested SANs are checked only to refuse a requester that asks for the wrong name.

use rcgen::SubjectPublicKeyInfo;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::OID_X509_EXT_SUBJECT_ALT_NAME;
use x509_parser::prelude::FromDer;

use ward_identity::SpiffeId;

/// Why a CSR is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    /// Not a well-formed DER PKCS#10 request.
    #[error("malformed CSR: {reason}")]
    Malformed {
        /// What could not be parsed.
        reason: &'static str,
    },
    /// The self-signature does not verify (or uses an unsupported algorithm): the requester
    /// has not proven it holds the private key.
    #[error("CSR signature does not verify")]
    Signature,
    /// The CSR asks for names other than exactly the URI SAN of the requested identity.
    #[error("CSR names refused: {reason}")]
    San {
        /// What is wrong with the requested names.
        reason: &'static str,
    },
    /// The public key type cannot be put in a certificate by this CA.
    #[error("CSR public key type is not supported")]
    UnsupportedKey,
}

/// Verifies `der` as a CSR for `id` and returns its public key.
///
/// The CSR must be self-signed by its key and request exactly one SAN: the URI of `id`.
/// Ward is stricter than Istio here (Istio's CA ignores the CSR's SANs and uses the caller's
/// authenticated identity); a CSR asking for anything else points at a bug or an attack.
pub(crate) fn check(id: &SpiffeId, der: &[u8]) -> Result<SubjectPublicKeyInfo, CsrError> {
    let (rest, csr) = X509CertificationRequest::from_der(der).map_err(|_| CsrError::Malformed {
        reason: "not a DER PKCS#10 request",
    })?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed {
            reason: "trailing bytes after the request",
        });
    }
    csr.verify_signature().map_err(|_| CsrError::Signature)?;

    let mut san_extensions = 0usize;
    let mut names: Vec<&GeneralName<'_>> = Vec::new();
    let info = &csr.certification_request_info;
    for attribute in info.iter_attributes() {
        let ParsedCriAttribute::ExtensionRequest(request) = attribute.parsed_attribute() else {
            continue;
        };
        for extension in &request.extensions {
            if extension.oid != OID_X509_EXT_SUBJECT_ALT_NAME {
                continue;
            }
            san_extensions += 1;
            let ParsedExtension::SubjectAlternativeName(san) = extension.parsed_extension() else {
                return Err(CsrError::San {
                    reason: "malformed subjectAltName extension",
                });
            };
            names.extend(san.general_names.iter());
        }
    }
    if san_extensions > 1 {
        return Err(CsrError::San {
            reason: "more than one subjectAltName extension",
        });
    }
    let wanted = id.to_string();
    match names.as_slice() {
        [] => Err(CsrError::San {
            reason: "no SAN; the URI SAN of the identity is required",
        }),
        [GeneralName::URI(uri)] if *uri == wanted => Ok(()),
        [GeneralName::URI(_)] => Err(CsrError::San {
            reason: "the URI SAN is not the requested identity",
        }),
        [_] => Err(CsrError::San {
            reason: "the only SAN is not a URI",
        }),
        _ => Err(CsrError::San {
            reason: "more than one SAN",
        }),
    }?;

    SubjectPublicKeyInfo::from_der(info.subject_pki.raw).map_err(|_| CsrError::UnsupportedKey)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};

    const ID: &str = "spiffe://cluster.local/ns/default/sa/sleep";

    fn csr_with(sans: Vec<SanType>) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = sans;
        params.serialize_request(&key).unwrap().der().to_vec()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    #[test]
    fn check_table() {
        let id = SpiffeId::parse(ID).unwrap();
        let san = |reason| Err(CsrError::San { reason });
        let good = ward_identity::generate_csr(&id).unwrap();
        let mut bad_sig = good.csr_der.clone();
        let last = bad_sig.len() - 3;
        bad_sig[last] ^= 0x55;
        let mut trailing = good.csr_der.clone();
        trailing.push(0);
        let cases: Vec<(&str, Vec<u8>, Result<(), CsrError>)> = vec![
            ("ward_identity CSR", good.csr_der.clone(), Ok(())),
            ("rcgen CSR, same URI", csr_with(vec![uri(ID)]), Ok(())),
            (
                "no SAN",
                csr_with(vec![]),
                san("no SAN; the URI SAN of the identity is required"),
            ),
            (
                "other identity",
                csr_with(vec![uri("spiffe://cluster.local/ns/default/sa/admin")]),
                san("the URI SAN is not the requested identity"),
            ),
            (
                "other trust domain",
                csr_with(vec![uri("spiffe://evil.local/ns/default/sa/sleep")]),
                san("the URI SAN is not the requested identity"),
            ),
            (
                "extra DNS SAN",
                csr_with(vec![uri(ID), SanType::DnsName("sleep".try_into().unwrap())]),
                san("more than one SAN"),
            ),
            (
                "two URI SANs",
                csr_with(vec![uri(ID), uri(ID)]),
                san("more than one SAN"),
            ),
            (
                "identity as DNS SAN",
                csr_with(vec![SanType::DnsName(ID.try_into().unwrap())]),
                san("the only SAN is not a URI"),
            ),
            ("bad signature", bad_sig, Err(CsrError::Signature)),
            (
                "trailing bytes",
                trailing,
                Err(CsrError::Malformed {
                    reason: "trailing bytes after the request",
                }),
            ),
            (
                "garbage",
                b"\x30\x00".to_vec(),
                Err(CsrError::Malformed {
                    reason: "not a DER PKCS#10 request",
                }),
            ),
        ];
        for (name, der, want) in cases {
            assert_eq!(check(&id, &der).map(|_| ()), want, "{name}");
        }
    }

    proptest::proptest! {
        #[test]
        fn check_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let id = SpiffeId::parse(ID).unwrap();
            let _ = check(&id, &bytes);
        }
    }

    #[test]
    fn corrupting_a_real_csr_never_panics_or_passes_with_other_content() {
        let id = SpiffeId::parse(ID).unwrap();
        let der = ward_identity::generate_csr(&id).unwrap().csr_der.clone();
        for i in 0..der.len() {
            let mut bad = der.clone();
            bad[i] ^= 0x01;
            // Any accepted mutation can only be in the signature's DER padding; never in the
            // signed body or the names.
            if check(&id, &bad).is_ok() {
                let (_, parsed) = X509CertificationRequest::from_der(&bad).unwrap();
                assert_eq!(
                    parsed.certification_request_info.raw,
                    X509CertificationRequest::from_der(&der)
                        .unwrap()
                        .1
                        .certification_request_info
                        .raw,
                    "byte {i}"
                );
            }
            let _ = check(&id, &der[..i]);
        }
    }
}
