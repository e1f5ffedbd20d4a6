//! JWT validation with keys already parsed (the steady state): RS256 and ES256.
//!
//! Rows per algorithm:
//! - `cached_keys`: keys parsed once, every token fully verified (verified-token cache off);
//! - `uncached_keys`: the key set parsed on every request too (cache off);
//! - `cached_token`: the same token again, answered by the verified-token cache (the hit path);
//! - `distinct_tokens`: a different token every time, cache off (the baseline of the next row);
//! - `token_cache_miss`: a different token every time (more than the cache holds), so every
//!   request is a full verification plus the cache's lookup, insert and eviction.

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
use ward_authn::{Authenticator, AuthnOutcome, Jwks, TokenSources, VERIFIED_TOKEN_CACHE_CAPACITY};

const ISS: &str = "https://idp.example.com";
const NOW: u64 = 1_700_000_000;

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn signing_input(alg: &str, jti: usize) -> String {
    let header = json!({"alg": alg, "typ": "JWT", "kid": "k1"});
    let claims = json!({"iss": ISS, "sub": "alice", "aud": "svc", "exp": NOW + 3600,
                        "groups": ["patients"], "scope": "read write", "jti": jti});
    format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// (JWKS document, `n` distinct tokens) for RS256 with a 2048-bit key.
fn rs256(n: usize) -> (String, Vec<String>) {
    let key = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
    let jwk = json!({"kty": "RSA", "kid": "k1", "alg": "RS256",
        "n": b64(key.public_key().modulus().big_endian_without_leading_zero()),
        "e": b64(key.public_key().exponent().big_endian_without_leading_zero())});
    let tokens = (0..n)
        .map(|jti| {
            let input = signing_input("RS256", jti);
            let mut sig = vec![0; key.public_modulus_len()];
            key.sign(
                &signature::RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                input.as_bytes(),
                &mut sig,
            )
            .unwrap();
            format!("{input}.{}", b64(&sig))
        })
        .collect();
    (json!({"keys": [jwk]}).to_string(), tokens)
}

/// (JWKS document, `n` distinct tokens) for ES256.
fn es256(n: usize) -> (String, Vec<String>) {
    let key = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let point = key.public_key().as_ref();
    let jwk = json!({"kty": "EC", "crv": "P-256", "kid": "k1",
        "x": b64(&point[1..33]), "y": b64(&point[33..])});
    let tokens = (0..n)
        .map(|jti| {
            let input = signing_input("ES256", jti);
            let sig = key.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
            format!("{input}.{}", b64(sig.as_ref()))
        })
        .collect();
    (json!({"keys": [jwk]}).to_string(), tokens)
}

fn bearer(token: &str) -> Vec<(String, String)> {
    vec![("authorization".to_owned(), format!("Bearer {token}"))]
}

fn bench(c: &mut Criterion) {
    let rules = vec![JwtRule {
        issuer: ISS.into(),
        jwks_uri: Some(format!("{ISS}/jwks")),
        audiences: vec!["svc".into()],
        ..JwtRule::default()
    }];
    // Every token verified in full, as before the verified-token cache.
    let auth = Authenticator::new(rules.clone())
        .unwrap()
        .with_verified_token_cache(0);
    // More distinct tokens than the cache holds, so cycling through them never hits.
    let distinct = 2 * VERIFIED_TOKEN_CACHE_CAPACITY;
    for (name, (jwks_json, tokens)) in [("rs256", rs256(distinct)), ("es256", es256(distinct))] {
        let jwks = Arc::new(Jwks::parse(jwks_json.as_bytes()).unwrap());
        let headers = bearer(&tokens[0]);
        let sources = TokenSources {
            headers: &headers,
            query: None,
        };
        let keys = |_: &str| Some(Arc::clone(&jwks));
        let first = auth.authenticate(&sources, NOW, &keys);
        assert!(matches!(first, AuthnOutcome::Authenticated { .. }));
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
        // The verified-token cache: the same token again (after the first request).
        let cached = Authenticator::new(rules.clone()).unwrap();
        assert_eq!(cached.authenticate(&sources, NOW, &keys), first);
        c.bench_function(&format!("authenticate_{name}_cached_token"), |b| {
            b.iter(|| cached.authenticate(std::hint::black_box(&sources), NOW, &keys))
        });
        // The verified-token cache missing every time: its overhead on a full verification,
        // against the same token sequence with the cache off.
        let missing = Authenticator::new(rules.clone()).unwrap();
        let all: Vec<Vec<(String, String)>> = tokens.iter().map(|t| bearer(t)).collect();
        for (row, authenticator) in [("distinct_tokens", &auth), ("token_cache_miss", &missing)] {
            let mut next = 0;
            c.bench_function(&format!("authenticate_{name}_{row}"), |b| {
                b.iter(|| {
                    let sources = TokenSources {
                        headers: &all[next],
                        query: None,
                    };
                    next = (next + 1) % all.len();
                    authenticator.authenticate(std::hint::black_box(&sources), NOW, &keys)
                })
            });
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
