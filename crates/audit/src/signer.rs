//! Checkpoints: a record whose signature covers the hash of the record before it, and through
//! the chain every record before that. The signature is ECDSA P-256 with SHA-256 (ASN.1) by a
//! key whose certificate chains to the mesh CA (the proxy's own workload certificate), over
//! `ward-audit-checkpoint/v1\n<seq>\n<time>\n<prev>\n`. The record carries the signer's chain,
//! so a verifier needs only the mesh root.

use std::time::SystemTime;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING,
};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{Map, Value};
use ward_identity::WorkloadCert;

use crate::record::Record;

/// Signs checkpoints.
pub trait CheckpointSigner: Send + Sync {
    /// The signer's certificate chain, leaf first (DER).
    fn chain_der(&self) -> Vec<Vec<u8>>;
    /// An ECDSA P-256 SHA-256 signature (ASN.1 DER) of `message`.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String>;
}

/// A signer holding one workload's key and chain.
pub struct KeySigner {
    key: EcdsaKeyPair,
    chain: Vec<Vec<u8>>,
}

impl KeySigner {
    /// The signer of `cert` (its PKCS#8 P-256 key and its chain, leaf first).
    pub fn new(cert: &WorkloadCert) -> Result<KeySigner, String> {
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &cert.key_pkcs8_der)
            .map_err(|e| format!("the workload key is not a P-256 PKCS#8 key: {e}"))?;
        Ok(KeySigner {
            key,
            chain: cert.issued.chain_der.clone(),
        })
    }
}

impl CheckpointSigner for KeySigner {
    fn chain_der(&self) -> Vec<Vec<u8>> {
        self.chain.clone()
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        self.key
            .sign(&SystemRandom::new(), message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|e| format!("signing failed: {e}"))
    }
}

/// The bytes a checkpoint at `seq` signs.
pub fn message(seq: u64, time: &str, prev: &str) -> Vec<u8> {
    format!("ward-audit-checkpoint/v1\n{seq}\n{time}\n{prev}\n").into_bytes()
}

/// The fields of a checkpoint record at `seq` after the record hashed `prev`.
pub fn fields(
    signer: &dyn CheckpointSigner,
    seq: u64,
    time: &str,
    prev: &str,
) -> Result<Map<String, Value>, String> {
    let chain = signer.chain_der();
    let sig = signer.sign(&message(seq, time, prev))?;
    let mut map = Map::new();
    map.insert(
        "chain".into(),
        Value::Array(chain.iter().map(|c| STANDARD.encode(c).into()).collect()),
    );
    map.insert("sig".into(), STANDARD.encode(sig).into());
    Ok(map)
}

/// Checks a checkpoint record: its chain verifies against `roots_der` at the checkpoint's time,
/// and its signature by the leaf's key covers its `seq`, `time` and `prev`. Returns the
/// signer's SPIFFE id.
pub fn check(record: &Record, roots_der: &[Vec<u8>]) -> Result<String, String> {
    let chain: Vec<Vec<u8>> = record
        .fields
        .get("chain")
        .and_then(Value::as_array)
        .ok_or("no `chain`")?
        .iter()
        .map(|c| {
            c.as_str()
                .and_then(|s| STANDARD.decode(s).ok())
                .ok_or("a `chain` entry is not base64")
        })
        .collect::<Result<_, _>>()?;
    let sig = record
        .fields
        .get("sig")
        .and_then(Value::as_str)
        .and_then(|s| STANDARD.decode(s).ok())
        .ok_or("no base64 `sig`")?;
    let at =
        time::OffsetDateTime::parse(&record.time, &time::format_description::well_known::Rfc3339)
            .map_err(|e| format!("`time` is not RFC 3339: {e}"))?;
    let at = SystemTime::from(at);
    let id = ward_tls::verify_identity_chain(&chain, roots_der, at).map_err(|e| e.to_string())?;
    let leaf = chain.first().ok_or("empty `chain`")?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("the signer's certificate does not parse: {e}"))?;
    let key = cert.public_key().subject_public_key.data.to_vec();
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key)
        .verify(&message(record.seq, &record.time, &record.prev), &sig)
        .map_err(|_| "the signature does not verify".to_owned())?;
    Ok(id.to_string())
}
