//! Test-only token minting with real keys (aws-lc-rs), so every test verifies real signatures.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};

/// Which key to generate.
#[derive(Clone, Copy, Debug)]
pub(crate) enum KeyKind {
    Rsa2048,
    P256,
    P384,
    Ed25519,
}

enum Private {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

/// A freshly generated key pair with a `kid`.
pub(crate) struct Signer {
    pub(crate) kid: String,
    key: Private,
}

pub(crate) fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl Signer {
    pub(crate) fn new(kind: KeyKind, kid: &str) -> Signer {
        let key = match kind {
            KeyKind::Rsa2048 => Private::Rsa(RsaKeyPair::generate(KeySize::Rsa2048).unwrap()),
            KeyKind::P256 => Private::Ec(
                EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap(),
            ),
            KeyKind::P384 => Private::Ec(
                EcdsaKeyPair::generate(&signature::ECDSA_P384_SHA384_FIXED_SIGNING).unwrap(),
            ),
            KeyKind::Ed25519 => Private::Ed(Ed25519KeyPair::generate().unwrap()),
        };
        Signer {
            kid: kid.to_owned(),
            key,
        }
    }

    /// The public JWK, without `alg`.
    pub(crate) fn jwk(&self) -> Value {
        match &self.key {
            Private::Rsa(k) => json!({
                "kty": "RSA", "kid": self.kid,
                "n": b64(k.public_key().modulus().big_endian_without_leading_zero()),
                "e": b64(k.public_key().exponent().big_endian_without_leading_zero()),
            }),
            Private::Ec(k) => {
                let point = k.public_key().as_ref();
                let len = (point.len() - 1) / 2;
                let crv = if len == 32 { "P-256" } else { "P-384" };
                json!({
                    "kty": "EC", "crv": crv, "kid": self.kid,
                    "x": b64(&point[1..1 + len]), "y": b64(&point[1 + len..]),
                })
            }
            Private::Ed(k) => json!({
                "kty": "OKP", "crv": "Ed25519", "kid": self.kid,
                "x": b64(k.public_key().as_ref()),
            }),
        }
    }

    /// `{"keys":[<jwk>]}`.
    pub(crate) fn jwks(&self) -> String {
        json!({ "keys": [self.jwk()] }).to_string()
    }

    /// The RSA modulus bytes (for the HS256-with-public-key attack).
    pub(crate) fn public_bytes(&self) -> Vec<u8> {
        match &self.key {
            Private::Rsa(k) => k.public_key().as_ref().to_vec(),
            Private::Ec(k) => k.public_key().as_ref().to_vec(),
            Private::Ed(k) => k.public_key().as_ref().to_vec(),
        }
    }

    /// Signs `header_b64.payload_b64` with the algorithm named `alg`.
    pub(crate) fn signature(&self, alg: &str, input: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &self.key {
            Private::Rsa(k) => {
                let padding: &'static dyn signature::RsaEncoding = match alg {
                    "RS256" => &signature::RSA_PKCS1_SHA256,
                    "RS384" => &signature::RSA_PKCS1_SHA384,
                    "RS512" => &signature::RSA_PKCS1_SHA512,
                    "PS256" => &signature::RSA_PSS_SHA256,
                    "PS384" => &signature::RSA_PSS_SHA384,
                    _ => &signature::RSA_PSS_SHA512,
                };
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(padding, &rng, input, &mut sig).unwrap();
                sig
            }
            Private::Ec(k) => k.sign(&rng, input).unwrap().as_ref().to_vec(),
            Private::Ed(k) => k.sign(input).as_ref().to_vec(),
        }
    }

    /// A compact JWS with header `{"alg", "kid"}` plus `extra_header`, and `claims`.
    pub(crate) fn token_with(&self, alg: &str, extra_header: Value, claims: &Value) -> String {
        let mut header = json!({ "alg": alg, "typ": "JWT", "kid": self.kid });
        if let (Some(h), Some(extra)) = (header.as_object_mut(), extra_header.as_object()) {
            for (k, v) in extra {
                h.insert(k.clone(), v.clone());
            }
        }
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self.signature(alg, input.as_bytes());
        format!("{input}.{}", b64(&sig))
    }

    /// A token for `claims` with this key's natural algorithm.
    pub(crate) fn token(&self, claims: &Value) -> String {
        self.token_with(self.default_alg(), json!({}), claims)
    }

    pub(crate) fn default_alg(&self) -> &'static str {
        match &self.key {
            Private::Rsa(_) => "RS256",
            Private::Ec(k) if k.public_key().as_ref().len() == 65 => "ES256",
            Private::Ec(_) => "ES384",
            Private::Ed(_) => "EdDSA",
        }
    }
}

/// Signs an arbitrary raw header and payload with HMAC-SHA256 under `secret`.
pub(crate) fn hs256_token(header: &str, payload: &str, secret: &[u8]) -> String {
    let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64(tag.as_ref()))
}
