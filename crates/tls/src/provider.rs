//! The one crypto provider every Ward TLS configuration uses.

use std::sync::Arc;

use rustls::crypto::aws_lc_rs::{self, cipher_suite, kx_group};
use rustls::crypto::CryptoProvider;

/// The crypto provider: aws-lc-rs, TLS 1.3 cipher suites only, key exchange groups in
/// preference order X25519MLKEM768 (post-quantum hybrid), X25519, secp256r1.
///
/// HBONE is TLS 1.3 only (istio/ztunnel src/tls/lib.rs: `TLS_VERSIONS = &[&TLS13]`), so no
/// TLS 1.2 suite is even offered.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        kx_groups: vec![
            kx_group::X25519MLKEM768,
            kx_group::X25519,
            kx_group::SECP256R1,
        ],
        ..aws_lc_rs::default_provider()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{NamedGroup, ProtocolVersion};

    #[test]
    fn only_tls13_and_the_chosen_groups() {
        let p = provider();
        assert!(!p.cipher_suites.is_empty());
        for suite in &p.cipher_suites {
            assert_eq!(
                suite.version().version,
                ProtocolVersion::TLSv1_3,
                "{suite:?}"
            );
        }
        let groups: Vec<NamedGroup> = p.kx_groups.iter().map(|g| g.name()).collect();
        assert_eq!(
            groups,
            [
                NamedGroup::X25519MLKEM768,
                NamedGroup::X25519,
                NamedGroup::secp256r1
            ]
        );
    }
}
