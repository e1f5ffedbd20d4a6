//! Key generation and the certificate signing request a workload sends to the CA.
//!
//! The private key is created here and never leaves the workload: the CA only sees the CSR.

use std::fmt;

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType, PKCS_ECDSA_P256_SHA256};

use crate::{IdentityError, SpiffeId};

/// A freshly generated ECDSA P-256 key and a CSR (DER) carrying the URI SAN of the identity.
pub struct KeyAndCsr {
    /// PKCS#8 DER private key. Never logged; zeroed when dropped.
    pub key_pkcs8_der: Vec<u8>,
    /// PKCS#10 DER certificate signing request, signed by the key.
    pub csr_der: Vec<u8>,
}

/// Generates a P-256 key and a CSR whose only SAN is the URI of `id`, with an empty subject
/// (Istio's workload CSRs carry no subject either; the CA ignores it).
pub fn generate_csr(id: &SpiffeId) -> Result<KeyAndCsr, IdentityError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
    let csr = params.serialize_request(&key)?;
    Ok(KeyAndCsr {
        key_pkcs8_der: key.serialize_der(),
        csr_der: csr.der().to_vec(),
    })
}

impl fmt::Debug for KeyAndCsr {
    /// Never prints the private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyAndCsr")
            .field("key_pkcs8_der", &"<redacted>")
            .field("csr_der_len", &self.csr_der.len())
            .finish()
    }
}

impl Drop for KeyAndCsr {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key_pkcs8_der);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::FromDer;

    #[test]
    fn csr_carries_exactly_the_uri_san_and_the_key() {
        let id = SpiffeId::new("cluster.local", "default", "sleep").unwrap();
        let kc = generate_csr(&id).unwrap();
        let (rest, csr) = X509CertificationRequest::from_der(&kc.csr_der).unwrap();
        assert!(rest.is_empty());
        let sans: Vec<String> = csr
            .requested_extensions()
            .unwrap()
            .filter_map(|ext| match ext {
                ParsedExtension::SubjectAlternativeName(san) => Some(san),
                _ => None,
            })
            .flat_map(|san| san.general_names.iter())
            .map(|name| match name {
                GeneralName::URI(u) => format!("URI:{u}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(sans, vec![format!("URI:{id}")]);
        assert!(csr
            .certification_request_info
            .subject
            .iter()
            .next()
            .is_none());

        // The PKCS#8 key is the one whose public half is in the CSR.
        let key = KeyPair::try_from(kc.key_pkcs8_der.as_slice()).unwrap();
        assert_eq!(
            key.public_key_raw(),
            &*csr
                .certification_request_info
                .subject_pki
                .subject_public_key
                .data
        );
        assert_eq!(key.algorithm(), &PKCS_ECDSA_P256_SHA256);
    }

    #[test]
    fn each_call_makes_a_new_key() {
        let id = SpiffeId::new("cluster.local", "default", "sleep").unwrap();
        let a = generate_csr(&id).unwrap();
        let b = generate_csr(&id).unwrap();
        assert_ne!(a.key_pkcs8_der, b.key_pkcs8_der);
    }

    #[test]
    fn debug_never_prints_the_key() {
        let id = SpiffeId::new("cluster.local", "default", "sleep").unwrap();
        let kc = generate_csr(&id).unwrap();
        let text = format!("{kc:?}");
        assert!(text.contains("redacted"));
        let first_bytes = format!("{:?}", &kc.key_pkcs8_der[..4]);
        assert!(
            !text.contains(first_bytes.trim_matches(['[', ']'])),
            "{text}"
        );
    }
}
