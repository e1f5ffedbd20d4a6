//! One compact JWS: split, decode and check (RFC 7515 §7.1, RFC 7519 §7.2).
//!
//! Only `alg`, `kid` and `crit` are read from the header. `jku`, `x5u`, `jwk` and `x5c` are
//! ignored: keys come from the configured JWKS only, never from the token (docs/threats.md,
//! "JWT and JWKS"). Ward implements no JWS extension, so a header with `crit` is refused
//! whatever it holds.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;

use crate::json;
use crate::jwks::{Alg, Jwks, KeyCheck};

/// Largest token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;

/// Clock skew allowed on `exp` and `nbf`, in seconds (Envoy jwt_authn `clock_skew_seconds`
/// default 60).
pub const CLOCK_SKEW_SECONDS: u64 = 60;

/// Why a token was refused. `Display` is the jwt_verify_lib status string Envoy puts in the
/// 401/403 body, so users see what they would see with Istio.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub enum JwtError {
    /// Longer than [`MAX_TOKEN_BYTES`].
    TooLarge,
    /// Not three dot-separated segments.
    BadFormat,
    /// Header segment is not base64url.
    HeaderNotBase64,
    /// Header is not a strict JSON object (bad JSON, duplicate keys, too deep).
    HeaderBadJson,
    /// Header `alg` is missing or not a string.
    AlgMissing,
    /// Header `alg` is not one Ward verifies (`none`, HS*, ES512 ...).
    AlgNotSupported,
    /// Header `kid` is not a string.
    KidNotString,
    /// Header `crit` is present: it names extensions Ward does not implement (or is malformed).
    CritNotSupported,
    /// Payload segment is not base64url.
    PayloadNotBase64,
    /// Payload is not a strict JSON object.
    PayloadBadJson,
    /// `iss` is not a string.
    IssNotString,
    /// `sub` is not a string.
    SubNotString,
    /// `aud` is neither a string nor a list of strings.
    AudBadType,
    /// `exp` is not a non-negative number.
    ExpBadType,
    /// `nbf` is not a non-negative number.
    NbfBadType,
    /// Signature segment is not base64url.
    SignatureNotBase64,
    /// No rule for this token's location has the token's `iss`.
    UnknownIssuer,
    /// The issuer's keys were never fetched.
    JwksFetchFailed,
    /// No key in the set fits the token's (`kid`, `alg`).
    NoMatchingKey,
    /// A key fits, the signature does not verify.
    BadSignature,
    /// `exp` is more than the skew in the past.
    Expired,
    /// `nbf` is more than the skew in the future.
    NotYetValid,
    /// `aud` holds none of the configured audiences.
    AudienceNotAllowed,
}

impl JwtError {
    /// The jwt_verify_lib status string (google/jwt_verify_lib `src/status.cc`).
    pub fn message(self) -> &'static str {
        match self {
            JwtError::TooLarge | JwtError::BadSignature => "Jwt verification fails",
            JwtError::BadFormat => "Jwt is not in the form of Header.Payload.Signature",
            JwtError::HeaderNotBase64 => "Jwt header is not base64url encoded",
            JwtError::HeaderBadJson => "Jwt header is an invalid JSON",
            JwtError::AlgMissing => "Jwt header [alg] field is required and must be a string",
            JwtError::AlgNotSupported => "Jwt header [alg] is not supported",
            JwtError::KidNotString => "Jwt header [kid] field is not a string",
            // jwt_verify_lib has no status for `crit`; the wording follows its style.
            JwtError::CritNotSupported => "Jwt header [crit] field is not supported",
            JwtError::PayloadNotBase64 => "Jwt payload is not base64url encoded",
            JwtError::PayloadBadJson => "Jwt payload is an invalid JSON",
            JwtError::IssNotString => "Jwt payload [iss] field is not a string",
            JwtError::SubNotString => "Jwt payload [sub] field is not a string",
            JwtError::AudBadType => "Jwt payload [aud] field is not a string or string list",
            JwtError::ExpBadType => "Jwt payload [exp] field is not an integer",
            JwtError::NbfBadType => "Jwt payload [nbf] field is not an integer",
            JwtError::SignatureNotBase64 => "Jwt signature is not base64url encoded",
            JwtError::UnknownIssuer => "Jwt issuer is not configured",
            JwtError::JwksFetchFailed => "Jwks remote fetch is failed",
            JwtError::NoMatchingKey => "Jwks doesn't have key to match kid or alg from Jwt",
            JwtError::Expired => "Jwt is expired",
            JwtError::NotYetValid => "Jwt not yet valid",
            JwtError::AudienceNotAllowed => "Audiences in Jwt are not allowed",
        }
    }

    /// HTTP status: 403 for a wrong audience, 401 for everything else.
    ///
    /// Istio: a wrong audience is 403 `Audiences in Jwt are not allowed`, the only verification
    /// failure answered with 403; all others are 401 (docs/istio-semantics.md, "Audiences").
    pub fn status(self) -> u16 {
        match self {
            JwtError::AudienceNotAllowed => 403,
            _ => 401,
        }
    }
}

/// A token whose format and claims were read but whose signature is not yet checked.
pub(crate) struct Decoded<'t> {
    pub(crate) alg: Alg,
    pub(crate) kid: Option<String>,
    /// `header.payload`, the signed bytes.
    signing_input: &'t str,
    /// The payload segment, still base64url (for `outputPayloadToHeader`).
    pub(crate) payload_b64: &'t str,
    signature: Vec<u8>,
    pub(crate) claims: Claims,
}

/// The registered claims Ward reads, and the whole payload.
pub(crate) struct Claims {
    pub(crate) iss: Option<String>,
    pub(crate) sub: Option<String>,
    pub(crate) aud: Vec<String>,
    pub(crate) azp: Option<String>,
    /// `exp` and `nbf`, checked against the clock on every use.
    pub(crate) validity: Validity,
    pub(crate) payload: Value,
}

/// The time claims of a token: the only part of a verification that changes while the token
/// and the key set stay the same, so a cached verification re-checks them on every use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Validity {
    exp: Option<u64>,
    nbf: Option<u64>,
}

impl Validity {
    #[cfg(test)]
    pub(crate) fn new(exp: Option<u64>, nbf: Option<u64>) -> Validity {
        Validity { exp, nbf }
    }

    /// `exp` and `nbf` against `now_unix`, each with [`CLOCK_SKEW_SECONDS`] of leeway.
    pub(crate) fn check(self, now_unix: u64) -> Result<(), JwtError> {
        // Istio allows a token without `exp` (Envoy `require_expiration` is not set) and
        // without `nbf`.
        if let Some(exp) = self.exp {
            if now_unix > exp.saturating_add(CLOCK_SKEW_SECONDS) {
                return Err(JwtError::Expired);
            }
        }
        if let Some(nbf) = self.nbf {
            if nbf > now_unix.saturating_add(CLOCK_SKEW_SECONDS) {
                return Err(JwtError::NotYetValid);
            }
        }
        Ok(())
    }
}

/// Splits and decodes `token`; checks nothing that needs a key or a clock.
pub(crate) fn decode(token: &str) -> Result<Decoded<'_>, JwtError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::BadFormat);
    };
    let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];

    let header_bytes = URL_SAFE_NO_PAD
        .decode(header_b64)
        .map_err(|_| JwtError::HeaderNotBase64)?;
    let header = json::parse(&header_bytes).map_err(|_| JwtError::HeaderBadJson)?;
    if !header.is_object() {
        return Err(JwtError::HeaderBadJson);
    }
    let alg_name = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(JwtError::AlgMissing)?;
    let alg = Alg::from_name(alg_name).ok_or(JwtError::AlgNotSupported)?;
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(JwtError::KidNotString),
    };
    // RFC 7515 §4.1.11: "If any of the listed extension Header Parameters are not understood
    // and supported by the recipient, then the JWS is invalid", and "Producers MUST NOT use the
    // empty list "[]" as the "crit" value." Ward understands no extension, so any `crit` (a
    // list of names, an empty list, or a malformed value) makes the token invalid.
    if header.get("crit").is_some() {
        return Err(JwtError::CritNotSupported);
    }

    let payload_bytes = URL_SAFE_NO_PAD
        .decode(payload_b64)
        .map_err(|_| JwtError::PayloadNotBase64)?;
    let payload = json::parse(&payload_bytes).map_err(|_| JwtError::PayloadBadJson)?;
    let claims = Claims::read(payload)?;

    let signature = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .map_err(|_| JwtError::SignatureNotBase64)?;
    Ok(Decoded {
        alg,
        kid,
        signing_input,
        payload_b64,
        signature,
        claims,
    })
}

impl Claims {
    fn read(payload: Value) -> Result<Claims, JwtError> {
        if !payload.is_object() {
            return Err(JwtError::PayloadBadJson);
        }
        let string = |name: &str, err: JwtError| match payload.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(err),
        };
        let iss = string("iss", JwtError::IssNotString)?;
        let sub = string("sub", JwtError::SubNotString)?;
        // RFC 7519 §4.1.3: "the "aud" value MAY be a single case-sensitive string".
        let aud = match payload.get("aud") {
            None => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned).ok_or(JwtError::AudBadType))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(JwtError::AudBadType),
        };
        let azp = payload
            .get("azp")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let exp = numeric_date(payload.get("exp"), JwtError::ExpBadType)?;
        let nbf = numeric_date(payload.get("nbf"), JwtError::NbfBadType)?;
        Ok(Claims {
            iss,
            sub,
            aud,
            azp,
            validity: Validity { exp, nbf },
            payload,
        })
    }
}

/// RFC 7519 §2 NumericDate: seconds, possibly fractional. Negative values are refused.
fn numeric_date(value: Option<&Value>, err: JwtError) -> Result<Option<u64>, JwtError> {
    let Some(value) = value else {
        return Ok(None);
    };
    if let Some(n) = value.as_u64() {
        return Ok(Some(n));
    }
    match value.as_f64() {
        // Truncation is the intent: a fractional second does not change the skew check.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Some(f) if f.is_finite() && f >= 0.0 => Ok(Some(f.min(u64::MAX as f64) as u64)),
        _ => Err(err),
    }
}

impl Decoded<'_> {
    /// Checks the signature against `jwks`, then the time claims and the audience.
    ///
    /// The signature comes first, so a forged token learns nothing about claim checks.
    pub(crate) fn verify(
        &self,
        jwks: &Jwks,
        now_unix: u64,
        audiences: &[String],
    ) -> Result<(), JwtError> {
        match jwks.verify(
            self.alg,
            self.kid.as_deref(),
            self.signing_input.as_bytes(),
            &self.signature,
        ) {
            KeyCheck::Verified => {}
            KeyCheck::BadSignature => return Err(JwtError::BadSignature),
            KeyCheck::NoMatchingKey => return Err(JwtError::NoMatchingKey),
        }
        self.claims.validity.check(now_unix)?;
        // istio/api security/v1beta1/request_authentication.proto, JWTRule.audiences: "A JWT
        // containing any of these audiences will be accepted." Empty list: no check.
        if !audiences.is_empty() && !self.claims.aud.iter().any(|a| audiences.contains(a)) {
            return Err(JwtError::AudienceNotAllowed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_signer::{b64, hs256_token, KeyKind, Signer};
    use proptest::prelude::*;
    use serde_json::json;

    const NOW: u64 = 1_700_000_000;

    fn check(token: &str, jwks: &Jwks, audiences: &[&str]) -> Result<(), JwtError> {
        let audiences: Vec<String> = audiences.iter().map(|a| (*a).to_owned()).collect();
        decode(token)?.verify(jwks, NOW, &audiences)
    }

    #[test]
    fn every_algorithm_verifies() {
        let rsa = Signer::new(KeyKind::Rsa2048, "rsa");
        let p256 = Signer::new(KeyKind::P256, "p256");
        let p384 = Signer::new(KeyKind::P384, "p384");
        let ed = Signer::new(KeyKind::Ed25519, "ed");
        let claims = json!({"iss": "i", "sub": "s", "exp": NOW + 10});
        let cases: Vec<(&Signer, &str)> = vec![
            (&rsa, "RS256"),
            (&rsa, "RS384"),
            (&rsa, "RS512"),
            (&rsa, "PS256"),
            (&rsa, "PS384"),
            (&rsa, "PS512"),
            (&p256, "ES256"),
            (&p384, "ES384"),
            (&ed, "EdDSA"),
        ];
        for (signer, alg) in cases {
            let jwks = Jwks::parse(signer.jwks().as_bytes()).unwrap();
            let token = signer.token_with(alg, json!({}), &claims);
            assert_eq!(check(&token, &jwks, &[]), Ok(()), "{alg}");
            // Flip one signature bit: must fail.
            let mut bad = token.into_bytes();
            let last = bad.len() - 2;
            bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
            let bad = String::from_utf8(bad).unwrap();
            assert_eq!(
                check(&bad, &jwks, &[]),
                Err(JwtError::BadSignature),
                "{alg} tampered"
            );
        }
    }

    #[test]
    fn attacks_and_claims() {
        let rsa = Signer::new(KeyKind::Rsa2048, "rsa");
        let jwks = Jwks::parse(rsa.jwks().as_bytes()).unwrap();
        let ec = Signer::new(KeyKind::P256, "rsa");
        let claims = |extra: Value| {
            let mut c = json!({"iss": "i", "sub": "s"});
            c.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            c
        };
        let ok = |extra: Value| rsa.token(&claims(extra));
        let header = |h: &str| format!("{}.{}.", b64(h.as_bytes()), b64(br#"{"iss":"i"}"#));
        let evil = Signer::new(KeyKind::Rsa2048, "evil");
        let zero_sig = format!(
            "{}.{}.{}",
            b64(br#"{"alg":"ES256","kid":"p"}"#),
            b64(br#"{"iss":"i"}"#),
            b64(&[0u8; 64])
        );
        let p256 = Signer::new(KeyKind::P256, "p");
        let p256_jwks = Jwks::parse(p256.jwks().as_bytes()).unwrap();
        let two_segments = ok(json!({})).rsplit_once('.').unwrap().0.to_owned();
        let huge = ok(json!({"pad": "x".repeat(70 * 1024)}));
        let dup_payload = {
            let input = format!(
                "{}.{}",
                b64(br#"{"alg":"RS256","kid":"rsa"}"#),
                b64(br#"{"iss":"i","sub":"u","sub":"admin"}"#)
            );
            format!("{input}.{}", b64(&rsa.signature("RS256", input.as_bytes())))
        };
        let dup_header = {
            let input = format!(
                "{}.{}",
                b64(br#"{"alg":"RS256","alg":"none","kid":"rsa"}"#),
                b64(br#"{"iss":"i"}"#)
            );
            format!("{input}.{}", b64(&rsa.signature("RS256", input.as_bytes())))
        };
        type Case<'a> = (&'a str, String, &'a [&'a str], Result<(), JwtError>);
        let cases: Vec<Case<'_>> = vec![
            ("valid", ok(json!({})), &[], Ok(())),
            (
                "alg none",
                header(r#"{"alg":"none"}"#),
                &[],
                Err(JwtError::AlgNotSupported),
            ),
            (
                "alg None",
                header(r#"{"alg":"None"}"#),
                &[],
                Err(JwtError::AlgNotSupported),
            ),
            (
                "alg NONE",
                header(r#"{"alg":"NONE"}"#),
                &[],
                Err(JwtError::AlgNotSupported),
            ),
            (
                "alg missing",
                header(r#"{"kid":"rsa"}"#),
                &[],
                Err(JwtError::AlgMissing),
            ),
            (
                "alg not string",
                header(r#"{"alg":1}"#),
                &[],
                Err(JwtError::AlgMissing),
            ),
            (
                "HS256 with the RSA public key as secret",
                hs256_token(
                    r#"{"alg":"HS256","kid":"rsa"}"#,
                    r#"{"iss":"i"}"#,
                    &rsa.public_bytes(),
                ),
                &[],
                Err(JwtError::AlgNotSupported),
            ),
            (
                "HS256 with the JWK n as secret",
                hs256_token(
                    r#"{"alg":"HS256"}"#,
                    r#"{"iss":"i"}"#,
                    rsa.jwk()["n"].as_str().unwrap().as_bytes(),
                ),
                &[],
                Err(JwtError::AlgNotSupported),
            ),
            (
                "ES256 token vs RSA set",
                ec.token(&claims(json!({}))),
                &[],
                Err(JwtError::NoMatchingKey),
            ),
            (
                "jku/jwk/x5u header ignored",
                evil.token_with(
                    "RS256",
                    json!({"kid": "rsa", "jku": "https://evil/jwks", "x5u": "https://evil/x",
                           "jwk": evil.jwk()}),
                    &claims(json!({})),
                ),
                &[],
                Err(JwtError::BadSignature),
            ),
            (
                "unknown kid",
                evil.token(&claims(json!({}))),
                &[],
                Err(JwtError::NoMatchingKey),
            ),
            (
                "kid not string",
                header(r#"{"alg":"RS256","kid":5}"#),
                &[],
                Err(JwtError::KidNotString),
            ),
            ("two segments", two_segments, &[], Err(JwtError::BadFormat)),
            (
                "four segments",
                format!("{}.x", ok(json!({}))),
                &[],
                Err(JwtError::BadFormat),
            ),
            ("70 KiB", huge, &[], Err(JwtError::TooLarge)),
            (
                "duplicate payload keys",
                dup_payload,
                &[],
                Err(JwtError::PayloadBadJson),
            ),
            (
                "duplicate header keys",
                dup_header,
                &[],
                Err(JwtError::HeaderBadJson),
            ),
            (
                "header not base64",
                "!!.e30.".into(),
                &[],
                Err(JwtError::HeaderNotBase64),
            ),
            (
                "header array",
                header("[1]"),
                &[],
                Err(JwtError::HeaderBadJson),
            ),
            (
                "expired",
                ok(json!({"exp": NOW - 61})),
                &[],
                Err(JwtError::Expired),
            ),
            (
                "expired within skew",
                ok(json!({"exp": NOW - 60})),
                &[],
                Ok(()),
            ),
            (
                "nbf future",
                ok(json!({"nbf": NOW + 61})),
                &[],
                Err(JwtError::NotYetValid),
            ),
            ("nbf within skew", ok(json!({"nbf": NOW + 60})), &[], Ok(())),
            (
                "fractional exp",
                ok(json!({"exp": (NOW + 5) as f64 + 0.5})),
                &[],
                Ok(()),
            ),
            (
                "negative exp",
                ok(json!({"exp": -1})),
                &[],
                Err(JwtError::ExpBadType),
            ),
            (
                "string nbf",
                ok(json!({"nbf": "soon"})),
                &[],
                Err(JwtError::NbfBadType),
            ),
            (
                "iss not string",
                ok(json!({"iss": 1})),
                &[],
                Err(JwtError::IssNotString),
            ),
            (
                "sub not string",
                ok(json!({"sub": []})),
                &[],
                Err(JwtError::SubNotString),
            ),
            (
                "aud bad type",
                ok(json!({"aud": [1]})),
                &[],
                Err(JwtError::AudBadType),
            ),
            (
                "aud string match",
                ok(json!({"aud": "a"})),
                &["b", "a"],
                Ok(()),
            ),
            (
                "aud list match",
                ok(json!({"aud": ["x", "b"]})),
                &["b"],
                Ok(()),
            ),
            (
                "aud mismatch",
                ok(json!({"aud": ["x"]})),
                &["b"],
                Err(JwtError::AudienceNotAllowed),
            ),
            (
                "aud missing",
                ok(json!({})),
                &["b"],
                Err(JwtError::AudienceNotAllowed),
            ),
        ];
        for (name, token, audiences, want) in cases {
            assert_eq!(check(&token, &jwks, audiences), want, "{name}");
        }
        // CVE-2022-21449: r = s = 0 must not verify against a P-256 key.
        assert_eq!(
            check(&zero_sig, &p256_jwks, &[]),
            Err(JwtError::BadSignature)
        );
    }

    /// RFC 7515 §4.1.11: any `crit` makes a correctly signed token invalid, since Ward
    /// implements no extension; a malformed `crit` too. Without `crit`, the same token verifies.
    #[test]
    fn crit_is_refused() {
        let signer = Signer::new(KeyKind::P256, "k");
        let jwks = Jwks::parse(signer.jwks().as_bytes()).unwrap();
        let claims = json!({"iss": "i", "sub": "s", "exp": NOW + 60});
        let alg = signer.default_alg();
        assert_eq!(
            check(&signer.token_with(alg, json!({}), &claims), &jwks, &[]),
            Ok(())
        );
        let crits = [
            json!({"crit": ["exp"], "exp": NOW + 60}),
            json!({"crit": ["b64"], "b64": false}),
            json!({"crit": ["http://example.com/ext"]}),
            json!({"crit": []}),
            json!({"crit": "b64"}),
            json!({"crit": [1]}),
            json!({"crit": null}),
            json!({"crit": {"b64": true}}),
        ];
        for header in crits {
            let token = signer.token_with(alg, header.clone(), &claims);
            assert_eq!(
                check(&token, &jwks, &[]),
                Err(JwtError::CritNotSupported),
                "{header}"
            );
        }
        assert_eq!(JwtError::CritNotSupported.status(), 401);
    }

    #[test]
    fn statuses_and_messages() {
        assert_eq!(JwtError::AudienceNotAllowed.status(), 403);
        assert_eq!(JwtError::Expired.status(), 401);
        assert_eq!(JwtError::Expired.to_string(), "Jwt is expired");
        assert_eq!(JwtError::TooLarge.to_string(), "Jwt verification fails");
        assert_eq!(
            JwtError::NoMatchingKey.to_string(),
            "Jwks doesn't have key to match kid or alg from Jwt"
        );
    }

    proptest! {
        #[test]
        fn decode_never_panics(token in "[A-Za-z0-9_.=-]{0,200}") {
            let _ = decode(&token);
        }

        #[test]
        fn decode_never_panics_on_json_segments(h in ".{0,60}", p in ".{0,60}", s in "[A-Za-z0-9_-]{0,90}") {
            let token = format!("{}.{}.{s}", b64(h.as_bytes()), b64(p.as_bytes()));
            let _ = decode(&token);
        }
    }
}
