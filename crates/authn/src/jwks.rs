//! JSON Web Key Sets: parsing an issuer's public keys into ready-to-verify keys.
//!
//! Only asymmetric signature keys are kept. A key never carries a symmetric secret (`kty: oct`
//! is skipped), so an HS256 token can never verify, whatever bytes it was signed with.
//! Unsupported or malformed keys are skipped rather than failing the set: one odd key at an
//! IdP must not lock out tokens signed by its other keys. A set with no usable key verifies
//! nothing (fail closed).

use std::fmt;

use aws_lc_rs::signature::{self, ParsedPublicKey, RsaParameters, RsaPublicKeyComponents};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;

use crate::json;

/// Largest JWKS document accepted, in bytes (CVE-2025-64527: junk JWKS bodies must stay
/// bounded). The fetcher should stop reading at this size.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Most keys accepted in one set.
pub const MAX_JWKS_KEYS: usize = 64;

/// Why a JWKS document was refused as a whole.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The document is larger than [`MAX_JWKS_BYTES`].
    #[error("JWKS is {0} bytes, the limit is {MAX_JWKS_BYTES}")]
    TooLarge(usize),
    /// The document is not strict JSON (bad syntax, duplicate keys, too deep).
    #[error("JWKS is not valid JSON")]
    NotJson,
    /// The document is not an object with a `keys` array.
    #[error("JWKS has no \"keys\" array")]
    NoKeysArray,
    /// The `keys` array has more than [`MAX_JWKS_KEYS`] entries.
    #[error("JWKS has {0} keys, the limit is {MAX_JWKS_KEYS}")]
    TooManyKeys(usize),
}

/// A JWS algorithm Ward verifies. `none` and the HMAC family are deliberately absent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    Rs512,
    /// RSASSA-PSS with SHA-256.
    Ps256,
    /// RSASSA-PSS with SHA-384.
    Ps384,
    /// RSASSA-PSS with SHA-512.
    Ps512,
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// ECDSA P-384 with SHA-384.
    Es384,
    /// Ed25519.
    EdDsa,
}

impl Alg {
    const RSA: [Alg; 6] = [
        Alg::Rs256,
        Alg::Rs384,
        Alg::Rs512,
        Alg::Ps256,
        Alg::Ps384,
        Alg::Ps512,
    ];

    /// The algorithm named `name` (RFC 7518 §3.1, case-sensitive), if Ward supports it.
    /// `"none"`, `"None"`, `"HS256"` ... are `None`.
    pub fn from_name(name: &str) -> Option<Alg> {
        Some(match name {
            "RS256" => Alg::Rs256,
            "RS384" => Alg::Rs384,
            "RS512" => Alg::Rs512,
            "PS256" => Alg::Ps256,
            "PS384" => Alg::Ps384,
            "PS512" => Alg::Ps512,
            "ES256" => Alg::Es256,
            "ES384" => Alg::Es384,
            "EdDSA" => Alg::EdDsa,
            _ => return None,
        })
    }

    /// The RFC 7518 name.
    pub fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Rs384 => "RS384",
            Alg::Rs512 => "RS512",
            Alg::Ps256 => "PS256",
            Alg::Ps384 => "PS384",
            Alg::Ps512 => "PS512",
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
            Alg::EdDsa => "EdDSA",
        }
    }

    /// aws-lc-rs parameters for an RSA algorithm (2048..=8192-bit moduli only).
    fn rsa_params(self) -> Option<&'static RsaParameters> {
        Some(match self {
            Alg::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Alg::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            Alg::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            Alg::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
            Alg::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
            Alg::Ps512 => &signature::RSA_PSS_2048_8192_SHA512,
            Alg::Es256 | Alg::Es384 | Alg::EdDsa => return None,
        })
    }
}

/// One public key, parsed for exactly one algorithm.
struct VerifyingKey {
    kid: Option<String>,
    alg: Alg,
    key: ParsedPublicKey,
}

/// A parsed key set: the keys an issuer signs with, each bound to the algorithm it may verify.
pub struct Jwks {
    keys: Vec<VerifyingKey>,
}

impl Jwks {
    /// Parses a JWKS document (RFC 7517 §5).
    ///
    /// Keys with an unsupported `kty`/`crv`/`alg`, `use` other than `sig`, bad encodings or
    /// weak RSA moduli are skipped; `{"keys":[{}]}` parses to a set with no usable key.
    pub fn parse(document: &[u8]) -> Result<Jwks, JwksError> {
        if document.len() > MAX_JWKS_BYTES {
            return Err(JwksError::TooLarge(document.len()));
        }
        let value = json::parse(document).map_err(|_| JwksError::NotJson)?;
        let entries = value
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(JwksError::NoKeysArray)?;
        if entries.len() > MAX_JWKS_KEYS {
            return Err(JwksError::TooManyKeys(entries.len()));
        }
        let mut keys = Vec::new();
        for entry in entries {
            if let Some(object) = entry.as_object() {
                keys.extend(parse_jwk(object));
            }
        }
        Ok(Jwks { keys })
    }

    /// A set with no key: every token fails to verify.
    pub fn empty() -> Jwks {
        Jwks { keys: Vec::new() }
    }

    /// Number of usable (key, algorithm) pairs.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no key can verify anything.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks `signature` over `message` with the keys that fit `alg` and `kid`.
    ///
    /// The algorithm is chosen by the key, never by the token alone (McLean 2015,
    /// CVE-2015-9235): a key only answers for the algorithm it was parsed for, so an ES256
    /// token against an RSA set finds no key (CVE-2019-12995). A token without `kid` is tried
    /// against every key of its algorithm, as jwt_verify_lib does.
    pub(crate) fn verify(
        &self,
        alg: Alg,
        kid: Option<&str>,
        message: &[u8],
        signature: &[u8],
    ) -> KeyCheck {
        let mut found = false;
        for key in self.keys.iter().filter(|k| k.alg == alg) {
            if kid.is_some() && key.kid.as_deref() != kid {
                continue;
            }
            found = true;
            if key.key.verify_sig(message, signature).is_ok() {
                return KeyCheck::Verified;
            }
        }
        if found {
            KeyCheck::BadSignature
        } else {
            KeyCheck::NoMatchingKey
        }
    }
}

/// The result of checking a signature against a key set.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum KeyCheck {
    /// A key for (kid, alg) verified the signature.
    Verified,
    /// Keys for (kid, alg) exist; none verified the signature.
    BadSignature,
    /// No key fits (kid, alg).
    NoMatchingKey,
}

impl fmt::Debug for Jwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<(Option<&str>, &str)> = self
            .keys
            .iter()
            .map(|k| (k.kid.as_deref(), k.alg.name()))
            .collect();
        f.debug_struct("Jwks").field("keys", &keys).finish()
    }
}

/// Parses one JWK into zero or more verifying keys (an RSA key without `alg` serves all six
/// RSA algorithms).
fn parse_jwk(jwk: &serde_json::Map<String, Value>) -> Vec<VerifyingKey> {
    let text = |name: &str| jwk.get(name).and_then(Value::as_str);
    // RFC 7517 §4.2: "sig" (signature) or "enc" (encryption). Only signing keys verify JWTs.
    if jwk.get("use").is_some() && text("use") != Some("sig") {
        return Vec::new();
    }
    let kid = match jwk.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Vec::new(),
    };
    let declared = match jwk.get("alg") {
        None => None,
        Some(value) => match value.as_str().and_then(Alg::from_name) {
            Some(alg) => Some(alg),
            None => return Vec::new(),
        },
    };
    let bytes = |name: &str| text(name).and_then(|v| URL_SAFE_NO_PAD.decode(v).ok());
    let parsed: Vec<(Alg, ParsedPublicKey)> = match (text("kty"), text("crv")) {
        (Some("RSA"), _) => {
            let (Some(n), Some(e)) = (bytes("n"), bytes("e")) else {
                return Vec::new();
            };
            let components = RsaPublicKeyComponents {
                n: strip_leading_zeros(&n),
                e: strip_leading_zeros(&e),
            };
            let modulus_bits = components.n.len() * 8;
            if !(2048..=8192).contains(&modulus_bits) {
                return Vec::new();
            }
            let algs: Vec<Alg> = match declared {
                Some(alg) if Alg::RSA.contains(&alg) => vec![alg],
                Some(_) => return Vec::new(),
                None => Alg::RSA.to_vec(),
            };
            algs.iter()
                .filter_map(|alg| {
                    let params = alg.rsa_params()?;
                    let key = components.to_parsed_public_key(params).ok()?;
                    Some((*alg, key))
                })
                .collect()
        }
        (Some("EC"), Some(crv)) => {
            let (alg, algorithm, coord_len) = match crv {
                "P-256" => (Alg::Es256, &signature::ECDSA_P256_SHA256_FIXED, 32),
                "P-384" => (Alg::Es384, &signature::ECDSA_P384_SHA384_FIXED, 48),
                _ => return Vec::new(),
            };
            let (Some(x), Some(y)) = (bytes("x"), bytes("y")) else {
                return Vec::new();
            };
            if declared.is_some_and(|d| d != alg) || x.len() != coord_len || y.len() != coord_len {
                return Vec::new();
            }
            // SEC 1 §2.3.3 uncompressed point: 0x04 || X || Y. Parsing checks it is on the curve.
            let mut point = Vec::with_capacity(1 + 2 * coord_len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            ParsedPublicKey::new(algorithm, &point)
                .ok()
                .map(|key| (alg, key))
                .into_iter()
                .collect()
        }
        // RFC 8037 §2: OKP keys; only Ed25519 signs (X25519 is key agreement).
        (Some("OKP"), Some("Ed25519")) => {
            let Some(x) = bytes("x") else {
                return Vec::new();
            };
            if declared.is_some_and(|d| d != Alg::EdDsa) || x.len() != 32 {
                return Vec::new();
            }
            ParsedPublicKey::new(&signature::ED25519, &x)
                .ok()
                .map(|key| (Alg::EdDsa, key))
                .into_iter()
                .collect()
        }
        _ => Vec::new(),
    };
    parsed
        .into_iter()
        .map(|(alg, key)| VerifyingKey {
            kid: kid.clone(),
            alg,
            key,
        })
        .collect()
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_signer::{KeyKind, Signer};
    use proptest::prelude::*;

    #[test]
    fn document_level_errors() {
        let big = vec![b' '; MAX_JWKS_BYTES + 1];
        let many = format!(
            r#"{{"keys":[{}]}}"#,
            vec!["{}"; MAX_JWKS_KEYS + 1].join(",")
        );
        let cases: Vec<(&str, &[u8], &str)> = vec![
            ("1 MB", &big, "TooLarge"),
            ("not json", b"<html>500</html>", "NotJson"),
            ("duplicate keys", br#"{"keys":[],"keys":[]}"#, "NotJson"),
            ("no keys array", br#"{"k":[]}"#, "NoKeysArray"),
            ("keys not array", br#"{"keys":{}}"#, "NoKeysArray"),
            ("too many keys", many.as_bytes(), "TooManyKeys"),
        ];
        for (name, doc, want) in cases {
            let err = Jwks::parse(doc).unwrap_err();
            assert!(format!("{err:?}").starts_with(want), "{name}: {err:?}");
        }
    }

    #[test]
    fn unusable_keys_are_skipped() {
        let rsa = Signer::new(KeyKind::Rsa2048, "r");
        let ec = Signer::new(KeyKind::P256, "e");
        let rsa_jwk = rsa.jwk();
        let with = |extra: &str| {
            let mut jwk: serde_json::Map<String, Value> =
                serde_json::from_value(rsa_jwk.clone()).unwrap();
            let extra: serde_json::Map<String, Value> = serde_json::from_str(extra).unwrap();
            jwk.extend(extra);
            format!(r#"{{"keys":[{}]}}"#, Value::Object(jwk))
        };
        let cases: Vec<(&str, String, usize)> = vec![
            ("empty key", r#"{"keys":[{}]}"#.into(), 0),
            ("empty set", r#"{"keys":[]}"#.into(), 0),
            ("non-object key", r#"{"keys":[1,"x",null]}"#.into(), 0),
            ("oct key", r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#.into(), 0),
            ("rsa no alg serves six algs", with("{}"), 6),
            ("rsa with alg", with(r#"{"alg":"PS384"}"#), 1),
            ("rsa with HS256 alg", with(r#"{"alg":"HS256"}"#), 0),
            ("rsa with ES256 alg", with(r#"{"alg":"ES256"}"#), 0),
            ("rsa use enc", with(r#"{"use":"enc"}"#), 0),
            ("rsa use sig", with(r#"{"use":"sig"}"#), 6),
            ("rsa kid not string", with(r#"{"kid":7}"#), 0),
            ("rsa bad base64", with(r#"{"n":"***"}"#), 0),
            ("rsa 1024-bit", with(r#"{"n":"AQAB"}"#), 0),
            ("ec", format!(r#"{{"keys":[{}]}}"#, ec.jwk()), 1),
            (
                "ec wrong curve length",
                r#"{"keys":[{"kty":"EC","crv":"P-256","x":"AQAB","y":"AQAB"}]}"#.into(),
                0,
            ),
            (
                "ec P-521 unsupported",
                r#"{"keys":[{"kty":"EC","crv":"P-521","x":"AQAB","y":"AQAB"}]}"#.into(),
                0,
            ),
            (
                "okp x25519",
                r#"{"keys":[{"kty":"OKP","crv":"X25519","x":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]}"#.into(),
                0,
            ),
        ];
        for (name, doc, want) in cases {
            let jwks = Jwks::parse(doc.as_bytes()).unwrap();
            assert_eq!(jwks.len(), want, "{name}");
        }
    }

    #[test]
    fn ec_point_off_curve_is_skipped() {
        let zeros = URL_SAFE_NO_PAD.encode([0u8; 32]);
        let doc =
            format!(r#"{{"keys":[{{"kty":"EC","crv":"P-256","x":"{zeros}","y":"{zeros}"}}]}}"#);
        assert!(Jwks::parse(doc.as_bytes()).unwrap().is_empty());
    }

    #[test]
    fn debug_lists_kids_and_algs_only() {
        let signer = Signer::new(KeyKind::Ed25519, "k1");
        let jwks = Jwks::parse(signer.jwks().as_bytes()).unwrap();
        assert_eq!(
            format!("{jwks:?}"),
            r#"Jwks { keys: [(Some("k1"), "EdDSA")] }"#
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(doc in "\\{\"keys\":\\[\\{(\"(kty|crv|x|y|n|e|alg|kid|use)\":\"[A-Za-z0-9_-]{0,12}\",?){0,6}\\}\\]\\}") {
            let _ = Jwks::parse(doc.as_bytes());
        }
    }
}
