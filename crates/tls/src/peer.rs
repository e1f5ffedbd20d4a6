//! [`PeerInfo`]: what a finished handshake proves, for access logs and authorization.

use rustls::{CommonState, ProtocolVersion};
use serde::Serialize;

use ward_identity::{identity_from_cert, SpiffeId};

/// What a finished handshake proves about the peer and the session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerInfo {
    /// The peer's SPIFFE identity (`None` if it presented no usable certificate).
    pub identity: Option<SpiffeId>,
    /// `"TLSv1.3"` (or `"TLSv1.2"`, `"unknown"`, `"none"` before negotiation).
    pub tls_version: &'static str,
    /// Negotiated key exchange group, e.g. `"X25519MLKEM768"`; empty if none yet.
    pub kx_group: String,
    /// Negotiated cipher suite, e.g. `"TLS13_AES_256_GCM_SHA384"`; empty if none yet.
    pub cipher_suite: String,
    /// SHA-256 of the peer's leaf certificate (DER), lower-case hex: Envoy's XFCC `Hash=`.
    pub cert_sha256: Option<String>,
}

/// Reads [`PeerInfo`] from a connection (client or server side) after its handshake.
pub fn peer_info(conn: &CommonState) -> PeerInfo {
    let identity = conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| identity_from_cert(leaf).ok());
    let tls_version = match conn.protocol_version() {
        Some(ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(ProtocolVersion::TLSv1_2) => "TLSv1.2",
        Some(_) => "unknown",
        None => "none",
    };
    let kx_group = conn
        .negotiated_key_exchange_group()
        .map(|group| {
            let name = group.name();
            name.as_str()
                .map_or_else(|| format!("{name:?}"), str::to_owned)
        })
        .unwrap_or_default();
    let cipher_suite = conn
        .negotiated_cipher_suite()
        .map(|suite| {
            let suite = suite.suite();
            suite
                .as_str()
                .map_or_else(|| format!("{suite:?}"), str::to_owned)
        })
        .unwrap_or_default();
    let cert_sha256 = conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| {
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, leaf.as_ref());
            digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
        });
    PeerInfo {
        identity,
        tls_version,
        kx_group,
        cipher_suite,
        cert_sha256,
    }
}
