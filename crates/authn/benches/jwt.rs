//! JWT validation with keys already parsed (the steady state): RS256 and ES256.

#![allow(clippy::unwrap_used)] // benchmark setup: a failure should abort loudly

use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;
use ward_authn::spec::JwtRule;
use ward_authn::{Authenticator, AuthnOutcome, Jwks, TokenSources};

const ISS: &str = "https://idp.example.com";
const NOW: u64 = 1_700_000_000;

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn signing_input(alg: &str) -> String {
    let header = json!({"alg": alg, "typ": "JWT", "kid": "k1"});
    let claims = json!({"iss": ISS, "sub": "alice", "aud": "svc", "exp": NOW + 3600,
                        "groups": ["patients"], "scope": "read write"});
    format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// (JWKS document, token) for RS256 with a 2048-bit key.
fn rs256() -> (String, String) {
    let key = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
    let jwk = json!({"kty": "RSA", "kid": "k1", "alg": "RS256",
        "n": b64(key.public_key().modulus().big_endian_without_leading_zero()),
        "e": b64(key.public_key().exponent().big_endian_without_leading_zero())});
    let input = signing_input("RS256");
    let mut sig = vec![0; key.public_modulus_len()];
    key.sign(
        &signature::RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        input.as_bytes(),
        &mut sig,
    )
    .unwrap();
    (
        json!({"keys": [jwk]}).to_string(),
        format!("{input}.{}", b64(&sig)),
    )
}

/// (JWKS document, token) for ES256.
fn es256() -> (String, String) {
    let key = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let point = key.public_key().as_ref();
    let jwk = json!({"kty": "EC", "crv": "P-256", "kid": "k1",
        "x": b64(&point[1..33]), "y": b64(&point[33..])});
    let input = signing_input("ES256");
    let sig = key.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
    (
        json!({"keys": [jwk]}).to_string(),
        format!("{input}.{}", b64(sig.as_ref())),
    )
}

fn bench(c: &mut Criterion) {
    let auth = Authenticator::new(vec![JwtRule {
        issuer: ISS.into(),
        jwks_uri: Some(format!("{ISS}/jwks")),
        audiences: vec!["svc".into()],
        ..JwtRule::default()
    }])
    .unwrap();
    for (name, (jwks_json, token)) in [("rs256", rs256()), ("es256", es256())] {
        let jwks = Arc::new(Jwks::parse(jwks_json.as_bytes()).unwrap());
        let headers = vec![("authorization".to_owned(), format!("Bearer {token}"))];
        let sources = TokenSources {
            headers: &headers,
            query: None,
        };
        let keys = |_: &str| Some(Arc::clone(&jwks));
        assert!(matches!(
            auth.authenticate(&sources, NOW, &keys),
            AuthnOutcome::Authenticated { .. }
        ));
        c.bench_function(&format!("authenticate_{name}_cached_keys"), |b| {
            b.iter(|| auth.authenticate(std::hint::black_box(&sources), NOW, &keys))
        });
        // Uncached: the key set is parsed (and its public keys decoded) for every request, the
        // cost a proxy would pay without a key cache.
        c.bench_function(&format!("authenticate_{name}_uncached_keys"), |b| {
            b.iter(|| {
                let parsed =
                    Arc::new(Jwks::parse(std::hint::black_box(jwks_json.as_bytes())).unwrap());
                let keys = |_: &str| Some(Arc::clone(&parsed));
                auth.authenticate(std::hint::black_box(&sources), NOW, &keys)
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
