//! One workload's compiled `jwtRules` and the per-request decision.
//!
//! [`Authenticator::authenticate`] finds every token in the request, verifies each one, and
//! returns an [`AuthnOutcome`] the proxy carries out (401/403, or strip and add headers). It
//! never logs: tokens must never appear in logs, so the caller logs `iss`/`sub` and the outcome.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use ward_policy::duration::{self, Grammar};

use crate::jwks::{Jwks, JwksError};
use crate::jwks_uri::{self, JwksUri, JwksUriError};
use crate::location::{Place, TokenLocation, TokenSources};
use crate::spec::{ClaimToHeader, JwtRule};
use crate::token::{self, JwtError, Validity};
use crate::verified_cache::{self, VerifiedCache, VERIFIED_TOKEN_CACHE_CAPACITY};

/// Default JWKS fetch timeout (Envoy remote JWKS default; docs/istio-semantics.md, "JWKS fetch
/// timeout").
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a set of `jwtRules` was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthnConfigError {
    /// A rule has an empty `issuer` (istio/api: `issuer` is REQUIRED).
    #[error("jwtRules[{rule}]: issuer is required")]
    MissingIssuer {
        /// Index of the rule.
        rule: usize,
    },
    /// `jwksUri` failed the SSRF checks.
    #[error("jwtRules[{rule}] ({issuer}): jwksUri {uri:?} refused: {source}")]
    JwksUri {
        /// Index of the rule.
        rule: usize,
        /// The rule's issuer.
        issuer: String,
        /// The refused URI.
        uri: String,
        /// Which check failed.
        source: JwksUriError,
    },
    /// The inline `jwks` is not a JWKS document.
    #[error("jwtRules[{rule}] ({issuer}): inline jwks refused: {source}")]
    InlineJwks {
        /// Index of the rule.
        rule: usize,
        /// The rule's issuer.
        issuer: String,
        /// What was wrong with it.
        source: JwksError,
    },
    /// A header name (`fromHeaders`, `outputPayloadToHeader`, `outputClaimToHeaders`) is empty
    /// or not an HTTP token.
    #[error("jwtRules[{rule}] ({issuer}): invalid header name {name:?}")]
    HeaderName {
        /// Index of the rule.
        rule: usize,
        /// The rule's issuer.
        issuer: String,
        /// The refused name.
        name: String,
    },
    /// A `fromParams` / `fromCookies` entry or an `outputClaimToHeaders` claim is empty.
    #[error("jwtRules[{rule}] ({issuer}): empty parameter, cookie or claim name")]
    EmptyName {
        /// Index of the rule.
        rule: usize,
        /// The rule's issuer.
        issuer: String,
    },
    /// `timeout` is not a duration such as `5s`, `500ms` or `1m30s`.
    #[error("jwtRules[{rule}] ({issuer}): invalid timeout {value:?}")]
    Timeout {
        /// Index of the rule.
        rule: usize,
        /// The rule's issuer.
        issuer: String,
        /// The refused value.
        value: String,
    },
}

/// Where the verified identity of a request comes from.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifiedToken {
    /// `iss + "/" + sub` (AuthorizationPolicy `requestPrincipals`, `request.auth.principal`).
    pub principal: String,
    /// The token's `aud`, as a list (`request.auth.audiences`).
    pub audiences: Vec<String>,
    /// The token's `azp` (`request.auth.presenter`).
    pub presenter: Option<String>,
    /// The whole payload (`request.auth.claims[...]`).
    pub claims: Value,
}

/// What the proxy must do with a request after authentication.
#[derive(Clone, PartialEq)]
pub enum AuthnOutcome {
    /// No token anywhere: the request passes with no principal.
    ///
    /// Istio: no token passes authentication with no principal (docs/istio-semantics.md, "No
    /// token"). Only an AuthorizationPolicy requiring `requestPrincipals` turns that into 403.
    NoToken,
    /// Every token found verified.
    Authenticated {
        /// The identity, from the first token found (Istio: with several tokens "the output
        /// principal is nondeterministic"; Ward picks the first in extraction order).
        auth: VerifiedToken,
        /// Where to remove tokens from (rules without `forwardOriginalToken`).
        strip: Vec<TokenLocation>,
        /// Headers to set, overwriting (`outputPayloadToHeader`, `outputClaimToHeaders`).
        add_headers: Vec<(String, String)>,
    },
    /// A token was present and invalid: answer `status` with body `message`.
    Rejected {
        /// 401, or 403 for a wrong audience.
        status: u16,
        /// The jwt_verify_lib status string, e.g. `Jwt is expired`.
        message: &'static str,
        /// The typed reason (for metrics and logs).
        reason: JwtError,
        /// `(issuer, kid)` when a remote key set has no key for the token's `kid`: the caller
        /// should call `JwksCache::note_unknown_kid` so a rotation is picked up.
        unknown_kid: Option<(String, String)>,
    },
}

impl fmt::Debug for AuthnOutcome {
    // `add_headers` may hold the payload; print header names only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthnOutcome::NoToken => f.write_str("NoToken"),
            AuthnOutcome::Authenticated {
                auth,
                strip,
                add_headers,
            } => {
                let names: Vec<&str> = add_headers.iter().map(|(n, _)| n.as_str()).collect();
                f.debug_struct("Authenticated")
                    .field("principal", &auth.principal)
                    .field("strip", strip)
                    .field("add_headers", &names)
                    .finish()
            }
            AuthnOutcome::Rejected {
                status,
                message,
                unknown_kid,
                ..
            } => f
                .debug_struct("Rejected")
                .field("status", status)
                .field("message", message)
                .field("unknown_kid", unknown_kid)
                .finish(),
        }
    }
}

/// Why one token failed, before it becomes an [`AuthnOutcome::Rejected`].
struct Rejection {
    reason: JwtError,
    unknown_kid: Option<(String, String)>,
}

/// What one token's check yields: the rule that verified it, its payload segment (base64url)
/// and the identity; or why it was refused.
type TokenResult<'a, 't> = Result<(&'a CompiledRule, &'t str, VerifiedToken), Rejection>;

/// One token that verified.
struct Verified<'a, 't> {
    /// Index of the rule that verified it, and the rule.
    rule_index: usize,
    rule: &'a CompiledRule,
    /// The payload segment of the token, still base64url.
    payload_b64: &'t str,
    token: VerifiedToken,
    /// Its `exp` / `nbf`.
    validity: Validity,
    /// The key set it verified with.
    jwks: Arc<Jwks>,
}

/// Where a rule's keys come from.
enum KeySource {
    /// Inline `jwks`, parsed once.
    Inline(Arc<Jwks>),
    /// Fetched by the proxy from `jwksUri`, or discovered from the issuer when `None`.
    Remote(Option<JwksUri>),
}

struct CompiledRule {
    issuer: String,
    audiences: Vec<String>,
    keys: KeySource,
    forward_original_token: bool,
    output_payload_to_header: Option<String>,
    output_claim_to_headers: Vec<ClaimToHeader>,
    timeout: Duration,
}

/// A token location and the rules (by index) that read it.
struct LocationRules {
    place: Place,
    rules: Vec<usize>,
}

/// A key set the proxy must fetch and keep fresh for one issuer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteJwks {
    /// The issuer (the `JwksCache` key).
    pub issuer: String,
    /// The checked `jwksUri`; `None` means discover it from the issuer (OpenID Connect
    /// Discovery, `<issuer>/.well-known/openid-configuration`), then check it with
    /// `jwks_uri::parse` before fetching.
    pub jwks_uri: Option<JwksUri>,
    /// Fetch timeout.
    pub timeout: Duration,
}

/// One compiled RequestAuthentication rule set for a workload.
///
/// It remembers the tokens it verified (see [`crate::VERIFIED_TOKEN_CACHE_CAPACITY`]): a token
/// seen again, at the same location and with the same key set, skips the signature check; its
/// `exp` and `nbf` are checked again on every request.
pub struct Authenticator {
    rules: Vec<CompiledRule>,
    locations: Vec<LocationRules>,
    verified: VerifiedCache,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let issuers: Vec<&str> = self.rules.iter().map(|r| r.issuer.as_str()).collect();
        f.debug_struct("Authenticator")
            .field("issuers", &issuers)
            .field("verified", &self.verified)
            .finish()
    }
}

impl Authenticator {
    /// Checks and compiles `rules` (the `jwtRules` of every RequestAuthentication that selects
    /// the workload, in order).
    pub fn new(rules: Vec<JwtRule>) -> Result<Authenticator, AuthnConfigError> {
        let mut compiled = Vec::with_capacity(rules.len());
        let mut locations: Vec<LocationRules> = Vec::new();
        for (index, rule) in rules.into_iter().enumerate() {
            let (rule, places) = compile_rule(index, rule)?;
            for place in places {
                match locations.iter_mut().find(|l| l.place == place) {
                    Some(existing) => existing.rules.push(index),
                    None => locations.push(LocationRules {
                        place,
                        rules: vec![index],
                    }),
                }
            }
            compiled.push(rule);
        }
        Ok(Authenticator {
            rules: compiled,
            locations,
            verified: VerifiedCache::new(VERIFIED_TOKEN_CACHE_CAPACITY),
        })
    }

    /// The same authenticator remembering at most `capacity` verified tokens instead of
    /// [`crate::VERIFIED_TOKEN_CACHE_CAPACITY`]; 0 verifies every token every time.
    #[must_use]
    pub fn with_verified_token_cache(self, capacity: usize) -> Authenticator {
        Authenticator {
            verified: VerifiedCache::new(capacity),
            ..self
        }
    }

    /// The key sets the proxy must fetch (rules without inline `jwks`), one per issuer.
    pub fn remote_jwks(&self) -> Vec<RemoteJwks> {
        let mut out: Vec<RemoteJwks> = Vec::new();
        for rule in &self.rules {
            if let KeySource::Remote(uri) = &rule.keys {
                if !out.iter().any(|r| r.issuer == rule.issuer) {
                    out.push(RemoteJwks {
                        issuer: rule.issuer.clone(),
                        jwks_uri: uri.clone(),
                        timeout: rule.timeout,
                    });
                }
            }
        }
        out
    }

    /// Output header names. The proxy removes incoming copies of these before authenticating,
    /// so a client can never forge them (docs/istio-semantics.md, "Output headers").
    pub fn output_headers(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for rule in &self.rules {
            let names = rule
                .output_payload_to_header
                .iter()
                .map(String::as_str)
                .chain(
                    rule.output_claim_to_headers
                        .iter()
                        .map(|c| c.header.as_str()),
                );
            for name in names {
                if !out.contains(&name) {
                    out.push(name);
                }
            }
        }
        out
    }

    /// Authenticate one request. `keys(issuer)` gives the current key set of that rule's issuer
    /// (`None` = never fetched → fail closed: any token of that issuer → 401).
    pub fn authenticate(
        &self,
        req: &TokenSources<'_>,
        now_unix: u64,
        keys: &dyn Fn(&str) -> Option<Arc<Jwks>>,
    ) -> AuthnOutcome {
        let mut first: Option<VerifiedToken> = None;
        let mut strip: Vec<TokenLocation> = Vec::new();
        let mut add_headers: Vec<(String, String)> = Vec::new();
        for (location_index, location) in self.locations.iter().enumerate() {
            for raw in location.place.extract(req) {
                let verified = match self.verify_cached(location_index, &raw, now_unix, keys) {
                    Ok(verified) => verified,
                    Err(Rejection {
                        reason,
                        unknown_kid,
                    }) => {
                        return AuthnOutcome::Rejected {
                            status: reason.status(),
                            message: reason.message(),
                            reason,
                            unknown_kid,
                        }
                    }
                };
                let (rule, decoded_payload_b64, token) = verified;
                if !rule.forward_original_token {
                    let at = location.place.token_location();
                    if !strip.contains(&at) {
                        strip.push(at);
                    }
                }
                if let Some(header) = &rule.output_payload_to_header {
                    set_header(&mut add_headers, header, decoded_payload_b64.to_owned());
                }
                for copy in &rule.output_claim_to_headers {
                    if let Some(value) = claim_header_value(&token.claims, &copy.claim) {
                        set_header(&mut add_headers, &copy.header, value);
                    }
                }
                first.get_or_insert(token);
            }
        }
        match first {
            None => AuthnOutcome::NoToken,
            Some(auth) => AuthnOutcome::Authenticated {
                auth,
                strip,
                add_headers,
            },
        }
    }

    /// Verifies one token read from `self.locations[location]`, from the cache when this exact
    /// token verified there before with the issuer's current key set. The result is the one
    /// [`Authenticator::verify_one`] would give.
    fn verify_cached<'t>(
        &self,
        location: usize,
        raw: &'t str,
        now_unix: u64,
        keys: &dyn Fn(&str) -> Option<Arc<Jwks>>,
    ) -> TokenResult<'_, 't> {
        let key = self
            .verified
            .accepts(raw)
            .then(|| verified_cache::key(location, raw));
        if let Some(key) = &key {
            if let Some(hit) = self.cached(key, raw, now_unix, keys) {
                return hit;
            }
        }
        let rules = self
            .locations
            .get(location)
            .map_or(&[][..], |l| l.rules.as_slice());
        let verified = self.verify_one(raw, rules, now_unix, keys)?;
        if let Some(key) = key {
            self.verified.insert(
                key,
                verified_cache::Entry::new(
                    raw,
                    &verified.jwks,
                    verified.rule_index,
                    verified.validity,
                    verified.token.clone(),
                ),
            );
        }
        Ok((verified.rule, verified.payload_b64, verified.token))
    }

    /// The answer for a cached token, or `None` to verify it afresh: not cached, or its key
    /// set is no longer the issuer's current one (rotated, removed, refetched, or none).
    ///
    /// Everything [`Authenticator::verify_one`] checks is a function of the token bytes, the
    /// location's rules and the key set, except `exp` / `nbf`: those are checked here, in the
    /// same order and with the same skew (the signature, checked first, would pass again).
    fn cached<'t>(
        &self,
        key: &verified_cache::Key,
        raw: &'t str,
        now_unix: u64,
        keys: &dyn Fn(&str) -> Option<Arc<Jwks>>,
    ) -> Option<TokenResult<'_, 't>> {
        let entry = self.verified.get(key, raw)?;
        let rule = self.rules.get(entry.rule)?;
        let current = current_keys(rule, keys)?;
        if !entry.verified_with(&current) {
            return None;
        }
        // A cached token has exactly three segments (it was decoded).
        let payload_b64 = raw.split('.').nth(1)?;
        self.verified.note_hit();
        Some(match entry.validity.check(now_unix) {
            Ok(()) => Ok((rule, payload_b64, entry.verified.clone())),
            Err(reason) => Err(Rejection {
                reason,
                unknown_kid: None,
            }),
        })
    }

    /// Verifies one token read from a place served by `rule_indices`.
    fn verify_one<'t>(
        &self,
        raw: &'t str,
        rule_indices: &[usize],
        now_unix: u64,
        keys: &dyn Fn(&str) -> Option<Arc<Jwks>>,
    ) -> Result<Verified<'_, 't>, Rejection> {
        let reject = |reason: JwtError, unknown_kid: Option<(String, String)>| Rejection {
            reason,
            unknown_kid,
        };
        let decoded = token::decode(raw).map_err(|e| reject(e, None))?;
        // "A JWT with different `iss` claim will be rejected" (istio/api JWTRule.issuer), and a
        // token at a location only counts for the rules that read that location (Envoy
        // jwt_authn extractor: issuer must be allowed for the header it came from).
        // CVE-2021-21378: an unknown issuer is never let through.
        let (rule_index, rule) = decoded
            .claims
            .iss
            .as_deref()
            .and_then(|iss| {
                rule_indices
                    .iter()
                    .filter_map(|i| Some((*i, self.rules.get(*i)?)))
                    .find(|(_, r)| r.issuer == iss)
            })
            .ok_or_else(|| reject(JwtError::UnknownIssuer, None))?;
        let jwks =
            current_keys(rule, keys).ok_or_else(|| reject(JwtError::JwksFetchFailed, None))?;
        decoded
            .verify(&jwks, now_unix, &rule.audiences)
            .map_err(|e| {
                let unknown_kid = match (e, &rule.keys, &decoded.kid) {
                    (JwtError::NoMatchingKey, KeySource::Remote(_), Some(kid)) => {
                        Some((rule.issuer.clone(), kid.clone()))
                    }
                    _ => None,
                };
                reject(e, unknown_kid)
            })?;
        let claims = decoded.claims;
        let validity = claims.validity;
        let iss = claims.iss.unwrap_or_default();
        let token = VerifiedToken {
            // The request principal is `iss/sub` (docs/istio-semantics.md, "Request
            // principal"). A token without `sub` yields `iss/`.
            principal: format!("{iss}/{}", claims.sub.unwrap_or_default()),
            audiences: claims.aud,
            presenter: claims.azp,
            claims: claims.payload,
        };
        Ok(Verified {
            rule_index,
            rule,
            payload_b64: decoded.payload_b64,
            token,
            validity,
            jwks,
        })
    }
}

/// The key set `rule` verifies with now; `None` when its remote keys were never fetched.
fn current_keys(
    rule: &CompiledRule,
    keys: &dyn Fn(&str) -> Option<Arc<Jwks>>,
) -> Option<Arc<Jwks>> {
    match &rule.keys {
        KeySource::Inline(jwks) => Some(Arc::clone(jwks)),
        // Fail closed: never fall back to any default key (CVE-2026-31837).
        KeySource::Remote(_) => keys(&rule.issuer),
    }
}

fn compile_rule(
    index: usize,
    rule: JwtRule,
) -> Result<(CompiledRule, Vec<Place>), AuthnConfigError> {
    if rule.issuer.is_empty() {
        return Err(AuthnConfigError::MissingIssuer { rule: index });
    }
    let issuer = rule.issuer;
    let header_name = |name: &str| -> Result<String, AuthnConfigError> {
        if is_header_token(name) {
            Ok(name.to_ascii_lowercase())
        } else {
            Err(AuthnConfigError::HeaderName {
                rule: index,
                issuer: issuer.clone(),
                name: name.to_owned(),
            })
        }
    };
    let empty_name = || AuthnConfigError::EmptyName {
        rule: index,
        issuer: issuer.clone(),
    };

    // istio/api JWTRule.jwks: "Only one of jwks_uri and jwks should be used. jwks_uri will be
    // ignored if it does."
    let keys = match (&rule.jwks, &rule.jwks_uri) {
        (Some(inline), _) => {
            let jwks =
                Jwks::parse(inline.as_bytes()).map_err(|source| AuthnConfigError::InlineJwks {
                    rule: index,
                    issuer: issuer.clone(),
                    source,
                })?;
            KeySource::Inline(Arc::new(jwks))
        }
        (None, Some(uri)) => {
            let checked = jwks_uri::parse(uri).map_err(|source| AuthnConfigError::JwksUri {
                rule: index,
                issuer: issuer.clone(),
                uri: uri.clone(),
                source,
            })?;
            KeySource::Remote(Some(checked))
        }
        (None, None) => KeySource::Remote(None),
    };

    let mut places = Vec::new();
    for header in &rule.from_headers {
        places.push(Place::header(header_name(&header.name)?, &header.prefix));
    }
    for param in &rule.from_params {
        if param.is_empty() {
            return Err(empty_name());
        }
        places.push(Place::Param(param.clone()));
    }
    for cookie in &rule.from_cookies {
        if cookie.is_empty() {
            return Err(empty_name());
        }
        places.push(Place::Cookie(cookie.clone()));
    }
    if places.is_empty() {
        // istio/api JWTRule: "If no explicit location is specified the following default
        // locations are tried in order: 1) The Authorization header using the Bearer schema
        // ... 2) The `access_token` query parameter".
        places.push(Place::header("authorization".into(), "Bearer "));
        places.push(Place::Param("access_token".into()));
    }

    let output_payload_to_header = match &rule.output_payload_to_header {
        Some(name) if !name.is_empty() => Some(header_name(name)?),
        _ => None,
    };
    let mut output_claim_to_headers = Vec::new();
    for copy in &rule.output_claim_to_headers {
        if copy.claim.is_empty() {
            return Err(empty_name());
        }
        output_claim_to_headers.push(ClaimToHeader {
            header: header_name(&copy.header)?,
            claim: copy.claim.clone(),
        });
    }
    let timeout = match &rule.timeout {
        None => DEFAULT_FETCH_TIMEOUT,
        Some(value) => {
            duration::parse(value, Grammar::ISTIO).map_err(|_| AuthnConfigError::Timeout {
                rule: index,
                issuer: issuer.clone(),
                value: value.clone(),
            })?
        }
    };
    Ok((
        CompiledRule {
            issuer,
            audiences: rule.audiences,
            keys,
            forward_original_token: rule.forward_original_token,
            output_payload_to_header,
            output_claim_to_headers,
            timeout,
        },
        places,
    ))
}

/// RFC 9110 §5.1 field name: a `token`.
fn is_header_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Overwrites or appends `name: value`.
fn set_header(headers: &mut Vec<(String, String)>, name: &str, value: String) {
    match headers.iter_mut().find(|(n, _)| n == name) {
        Some(existing) => existing.1 = value,
        None => headers.push((name.to_owned(), value)),
    }
}

/// The header value for `claim`: strings, integers and booleans only (istio/api
/// ClaimToHeader: "Only claim of type string/int/bool is supported"). `a.b` walks nested
/// objects when no top-level claim has that exact name. A string with control characters
/// (CR/LF header injection) is not copied.
fn claim_header_value(claims: &Value, claim: &str) -> Option<String> {
    let value = claims.get(claim).or_else(|| {
        claim
            .split('.')
            .try_fold(claims, |current, key| current.get(key))
    })?;
    match value {
        Value::String(s) if !s.chars().any(char::is_control) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwks_cache::JwksCache;
    use crate::spec::JwtHeader;
    use crate::test_signer::{KeyKind, Signer};
    use crate::token::CLOCK_SKEW_SECONDS;
    use crate::verified_cache::MAX_CACHED_TOKEN_BYTES;
    use proptest::prelude::*;
    use serde_json::json;

    const NOW: u64 = 1_700_000_000;
    const ISS: &str = "https://idp.example.com";

    fn rule(issuer: &str) -> JwtRule {
        JwtRule {
            issuer: issuer.into(),
            jwks_uri: Some(format!("{issuer}/jwks")),
            ..JwtRule::default()
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn run(
        auth: &Authenticator,
        hdrs: &[(&str, &str)],
        query: Option<&str>,
        keys: &dyn Fn(&str) -> Option<Arc<Jwks>>,
    ) -> AuthnOutcome {
        let hdrs = headers(hdrs);
        let sources = TokenSources {
            headers: &hdrs,
            query,
        };
        auth.authenticate(&sources, NOW, keys)
    }

    fn message(outcome: &AuthnOutcome) -> Option<(u16, &'static str)> {
        match outcome {
            AuthnOutcome::Rejected {
                status, message, ..
            } => Some((*status, *message)),
            _ => None,
        }
    }

    fn principal(outcome: &AuthnOutcome) -> Option<&str> {
        match outcome {
            AuthnOutcome::Authenticated { auth, .. } => Some(&auth.principal),
            _ => None,
        }
    }

    #[test]
    fn locations_issuers_and_claims() {
        let signer = Signer::new(KeyKind::Rsa2048, "k1");
        let other = Signer::new(KeyKind::P256, "k9");
        let jwks = Arc::new(Jwks::parse(signer.jwks().as_bytes()).unwrap());
        let keys = |iss: &str| (iss == ISS).then(|| Arc::clone(&jwks));
        let good = signer.token(&json!({"iss": ISS, "sub": "alice", "exp": NOW + 60}));
        let expired = signer.token(&json!({"iss": ISS, "sub": "alice", "exp": NOW - 120}));
        let evil = other.token(&json!({"iss": "https://evil", "sub": "admin"}));
        let aud = signer.token(&json!({"iss": ISS, "sub": "alice", "aud": "other"}));
        let bearer = format!("Bearer {good}");
        let bearer_expired = format!("Bearer {expired}");
        let lower_bearer = bearer.replace("Bearer", "bearer");
        let upper_bearer_evil = format!("BEARER {evil}");
        let bearer_junk = format!("Bearer {good} x");
        let encoded_query = format!("access%5Ftoken={good}");
        let encoded_second = format!("access_token={good}&access%5ftoken={expired}");
        let bearer_aud = format!("Bearer {aud}");
        let bearer_evil = format!("Bearer {evil}");
        let query = format!("a=1&access_token={good}");
        let query_expired = format!("access_token={expired}");

        let default = Authenticator::new(vec![rule(ISS)]).unwrap();
        let with_aud = Authenticator::new(vec![JwtRule {
            audiences: vec!["svc".into()],
            ..rule(ISS)
        }])
        .unwrap();
        let header_only = Authenticator::new(vec![JwtRule {
            from_headers: vec![JwtHeader {
                name: "X-Jwt".into(),
                prefix: String::new(),
            }],
            ..rule(ISS)
        }])
        .unwrap();
        let unauthorized = Some((401, "Jwt issuer is not configured"));
        type Case<'a> = (
            &'a str,
            &'a Authenticator,
            Vec<(&'a str, &'a str)>,
            Option<&'a str>,
            Result<&'a str, Option<(u16, &'static str)>>,
        );
        let cases: Vec<Case<'_>> = vec![
            ("no token", &default, vec![], None, Err(None)),
            (
                "bearer",
                &default,
                vec![("authorization", &bearer)],
                None,
                Ok("https://idp.example.com/alice"),
            ),
            (
                "query access_token",
                &default,
                vec![],
                Some(&query),
                Ok("https://idp.example.com/alice"),
            ),
            (
                "scheme is case-insensitive",
                &default,
                vec![("authorization", &lower_bearer)],
                None,
                Ok("https://idp.example.com/alice"),
            ),
            (
                "forged token after BEARER",
                &default,
                vec![("authorization", &upper_bearer_evil)],
                None,
                Err(unauthorized),
            ),
            (
                "junk after the token",
                &default,
                vec![("authorization", &bearer_junk)],
                None,
                Err(Some((401, "Jwt signature is not base64url encoded"))),
            ),
            (
                "percent-encoded parameter name",
                &default,
                vec![],
                Some(&encoded_query),
                Ok("https://idp.example.com/alice"),
            ),
            (
                "second, encoded copy of the parameter",
                &default,
                vec![],
                Some(&encoded_second),
                Err(Some((401, "Jwt is expired"))),
            ),
            (
                "wrong issuer",
                &default,
                vec![("authorization", &bearer_evil)],
                None,
                Err(unauthorized),
            ),
            (
                "two tokens, second expired",
                &default,
                vec![("authorization", &bearer)],
                Some(&query_expired),
                Err(Some((401, "Jwt is expired"))),
            ),
            (
                "two authorization headers, one expired",
                &default,
                vec![
                    ("authorization", &bearer),
                    ("authorization", &bearer_expired),
                ],
                None,
                Err(Some((401, "Jwt is expired"))),
            ),
            (
                "garbage after prefix",
                &default,
                vec![("authorization", "Bearer a.b")],
                None,
                Err(Some((
                    401,
                    "Jwt is not in the form of Header.Payload.Signature",
                ))),
            ),
            (
                "audience",
                &with_aud,
                vec![("authorization", &bearer)],
                None,
                Err(Some((403, "Audiences in Jwt are not allowed"))),
            ),
            (
                "wrong audience",
                &with_aud,
                vec![("authorization", &bearer_aud)],
                None,
                Err(Some((403, "Audiences in Jwt are not allowed"))),
            ),
            (
                "configured header",
                &header_only,
                vec![("x-jwt", &good)],
                None,
                Ok("https://idp.example.com/alice"),
            ),
            (
                "query when only headers configured",
                &header_only,
                vec![],
                Some(&query),
                Err(None),
            ),
            (
                "unconfigured header",
                &header_only,
                vec![("auth-header-param", &good)],
                None,
                Err(None),
            ),
            (
                "authorization when only x-jwt configured",
                &header_only,
                vec![("authorization", &bearer)],
                None,
                Err(None),
            ),
        ];
        for (name, auth, hdrs, query, want) in cases {
            let outcome = run(auth, &hdrs, query, &keys);
            match want {
                Ok(p) => assert_eq!(principal(&outcome), Some(p), "{name}: {outcome:?}"),
                Err(None) => assert_eq!(outcome, AuthnOutcome::NoToken, "{name}"),
                Err(Some(m)) => assert_eq!(message(&outcome), Some(m), "{name}: {outcome:?}"),
            }
        }
    }

    /// Issuer `iss-a` read from header `x-a` and `iss-b` from `x-b` (inline keys), and a token
    /// of `iss-a`.
    fn two_issuers() -> (Authenticator, String) {
        let a = Signer::new(KeyKind::Ed25519, "a");
        let b = Signer::new(KeyKind::Ed25519, "b");
        let inline = |s: &Signer, iss: &str, header: &str| JwtRule {
            issuer: iss.into(),
            jwks: Some(s.jwks()),
            from_headers: vec![JwtHeader {
                name: header.into(),
                prefix: String::new(),
            }],
            ..JwtRule::default()
        };
        let auth = Authenticator::new(vec![inline(&a, "iss-a", "x-a"), inline(&b, "iss-b", "x-b")])
            .unwrap();
        (auth, a.token(&json!({"iss": "iss-a", "sub": "u"})))
    }

    #[test]
    fn issuer_must_be_configured_for_the_location() {
        let (auth, token_a) = two_issuers();
        let none = |_: &str| None;
        assert_eq!(
            principal(&run(&auth, &[("x-a", &token_a)], None, &none)),
            Some("iss-a/u")
        );
        assert_eq!(
            message(&run(&auth, &[("x-b", &token_a)], None, &none)),
            Some((401, "Jwt issuer is not configured"))
        );
    }

    /// The prefix is matched case-insensitively, so prefixes differing only in case are one
    /// location: a token of either rule's issuer verifies there.
    #[test]
    fn prefixes_differing_in_case_are_one_location() {
        let a = Signer::new(KeyKind::Ed25519, "a");
        let b = Signer::new(KeyKind::Ed25519, "b");
        let inline = |s: &Signer, iss: &str, prefix: &str| JwtRule {
            issuer: iss.into(),
            jwks: Some(s.jwks()),
            from_headers: vec![JwtHeader {
                name: "authorization".into(),
                prefix: prefix.into(),
            }],
            ..JwtRule::default()
        };
        let auth = Authenticator::new(vec![
            inline(&a, "iss-a", "Bearer "),
            inline(&b, "iss-b", "bearer "),
        ])
        .unwrap();
        let none = |_: &str| None;
        for (signer, iss) in [(&a, "iss-a"), (&b, "iss-b")] {
            let value = format!("Bearer {}", signer.token(&json!({"iss": iss, "sub": "u"})));
            let outcome = run(&auth, &[("authorization", &value)], None, &none);
            assert_eq!(principal(&outcome), Some(format!("{iss}/u").as_str()));
        }
    }

    #[test]
    fn strip_and_output_headers() {
        let signer = Signer::new(KeyKind::P384, "k");
        let claims = json!({
            "iss": ISS, "sub": "bob", "azp": "web", "aud": ["a", "b"], "n": 7, "admin": true,
            "f": 1.5, "list": ["x"], "nested": {"k": "v"}, "crlf": "a\r\nx-evil: 1"
        });
        let token = signer.token(&claims);
        let payload_b64 = token.split('.').nth(1).unwrap().to_owned();
        let copies = [
            "sub", "n", "admin", "f", "list", "nested.k", "crlf", "missing",
        ];
        let auth = Authenticator::new(vec![JwtRule {
            issuer: ISS.into(),
            jwks: Some(signer.jwks()),
            from_headers: vec![JwtHeader {
                name: "authorization".into(),
                prefix: "Bearer ".into(),
            }],
            from_params: vec!["token".into()],
            output_payload_to_header: Some("X-Payload".into()),
            output_claim_to_headers: copies
                .iter()
                .map(|c| ClaimToHeader {
                    header: format!("x-{}", c.replace('.', "-")),
                    claim: (*c).into(),
                })
                .collect(),
            ..JwtRule::default()
        }])
        .unwrap();
        let query = format!("token={token}");
        let outcome = run(&auth, &[], Some(&query), &|_| None);
        let AuthnOutcome::Authenticated {
            auth: verified,
            strip,
            add_headers,
        } = outcome
        else {
            panic!("not authenticated: {outcome:?}");
        };
        assert_eq!(verified.principal, "https://idp.example.com/bob");
        assert_eq!(verified.audiences, ["a", "b"]);
        assert_eq!(verified.presenter.as_deref(), Some("web"));
        assert_eq!(verified.claims, claims);
        assert_eq!(strip, [TokenLocation::QueryParam("token".into())]);
        let want: Vec<(String, String)> = [
            ("x-payload", payload_b64.as_str()),
            ("x-sub", "bob"),
            ("x-n", "7"),
            ("x-admin", "true"),
            ("x-nested-k", "v"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        assert_eq!(add_headers, want);
        assert_eq!(
            auth.output_headers(),
            [
                "x-payload",
                "x-sub",
                "x-n",
                "x-admin",
                "x-f",
                "x-list",
                "x-nested-k",
                "x-crlf",
                "x-missing"
            ]
        );
    }

    #[test]
    fn forward_original_token_and_cookies() {
        let signer = Signer::new(KeyKind::Ed25519, "k");
        let token = signer.token(&json!({"iss": ISS, "sub": "c"}));
        let auth = Authenticator::new(vec![JwtRule {
            jwks: Some(signer.jwks()),
            from_cookies: vec!["session".into()],
            forward_original_token: true,
            ..rule(ISS)
        }])
        .unwrap();
        let cookie = format!("a=b; session={token}; c=d");
        let outcome = run(&auth, &[("cookie", &cookie)], None, &|_| None);
        let AuthnOutcome::Authenticated { strip, .. } = &outcome else {
            panic!("{outcome:?}");
        };
        assert!(strip.is_empty());
        let bearer = format!("Bearer {token}");
        assert_eq!(
            run(&auth, &[("authorization", &bearer)], None, &|_| None),
            AuthnOutcome::NoToken
        );
    }

    #[test]
    fn remote_keys_fail_closed_and_rotate_through_the_cache() {
        let old = Signer::new(KeyKind::Rsa2048, "old");
        let new = Signer::new(KeyKind::Rsa2048, "new");
        let auth = Authenticator::new(vec![rule(ISS)]).unwrap();
        let token = new.token(&json!({"iss": ISS, "sub": "s"}));
        let bearer = format!("Bearer {token}");
        let hdrs = [("authorization", bearer.as_str())];
        let mut cache = JwksCache::new();
        let mut now_ms = 0;

        // Never fetched: 401, no default keys.
        let outcome = run(&auth, &hdrs, None, &|iss| cache.keys(iss));
        assert_eq!(
            message(&outcome),
            Some((401, "Jwks remote fetch is failed"))
        );

        // The IdP served junk (1 MB, not JSON): the fetch fails, still no keys.
        for junk in [vec![b'x'; 1 << 20], b"<html>".to_vec()] {
            let result = Jwks::parse(&junk).map_err(|e| e.to_string());
            cache.on_fetched(ISS, now_ms, result);
            let outcome = run(&auth, &hdrs, None, &|iss| cache.keys(iss));
            assert_eq!(
                message(&outcome),
                Some((401, "Jwks remote fetch is failed"))
            );
        }

        // `{"keys":[{}]}`: a set with no usable key.
        cache.on_fetched(
            ISS,
            now_ms,
            Jwks::parse(br#"{"keys":[{}]}"#).map_err(|e| e.to_string()),
        );
        let outcome = run(&auth, &hdrs, None, &|iss| cache.keys(iss));
        assert_eq!(
            message(&outcome),
            Some((401, "Jwks doesn't have key to match kid or alg from Jwt"))
        );

        // The old key only: unknown kid, asks for a refetch.
        now_ms += 1000;
        cache.on_fetched(ISS, now_ms, Ok(Jwks::parse(old.jwks().as_bytes()).unwrap()));
        assert!(!cache.due(ISS, now_ms));
        let outcome = run(&auth, &hdrs, None, &|iss| cache.keys(iss));
        let AuthnOutcome::Rejected {
            unknown_kid: Some((issuer, kid)),
            ..
        } = outcome
        else {
            panic!("{outcome:?}");
        };
        assert_eq!((issuer.as_str(), kid.as_str()), (ISS, "new"));
        cache.note_unknown_kid(&issuer, now_ms);
        assert!(cache.due(ISS, now_ms));

        // The IdP rotated: refetch brings the new key, the token verifies.
        cache.on_fetch_started(ISS, now_ms);
        let rotated = format!(r#"{{"keys":[{},{}]}}"#, old.jwk(), new.jwk());
        cache.on_fetched(
            ISS,
            now_ms + 5,
            Ok(Jwks::parse(rotated.as_bytes()).unwrap()),
        );
        let outcome = run(&auth, &hdrs, None, &|iss| cache.keys(iss));
        assert_eq!(principal(&outcome), Some("https://idp.example.com/s"));

        // IdP down afterwards: stale keys keep working.
        cache.on_fetched(ISS, now_ms + 10, Err("HTTP 503".into()));
        let outcome = run(&auth, &hdrs, None, &|iss| cache.keys(iss));
        assert_eq!(principal(&outcome), Some("https://idp.example.com/s"));
    }

    #[test]
    fn config_validation() {
        let ok = |r: JwtRule| {
            Authenticator::new(vec![r])
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let cases: Vec<(&str, JwtRule, bool)> = vec![
            ("plain", rule(ISS), true),
            ("no issuer", JwtRule::default(), false),
            (
                "discovery (no jwksUri)",
                JwtRule {
                    jwks_uri: None,
                    ..rule(ISS)
                },
                true,
            ),
            (
                "metadata uri",
                JwtRule {
                    jwks_uri: Some("http://169.254.169.254/".into()),
                    ..rule(ISS)
                },
                false,
            ),
            (
                "admin port",
                JwtRule {
                    jwks_uri: Some("http://127.0.0.1:15000/".into()),
                    ..rule(ISS)
                },
                false,
            ),
            (
                "loopback http",
                JwtRule {
                    jwks_uri: Some("http://127.0.0.1:8080/jwks".into()),
                    ..rule(ISS)
                },
                true,
            ),
            (
                "remote http",
                JwtRule {
                    jwks_uri: Some("http://idp/jwks".into()),
                    ..rule(ISS)
                },
                false,
            ),
            (
                "inline wins over uri",
                JwtRule {
                    jwks: Some(r#"{"keys":[]}"#.into()),
                    jwks_uri: Some("ftp://x".into()),
                    ..rule(ISS)
                },
                true,
            ),
            (
                "inline not json",
                JwtRule {
                    jwks: Some("nope".into()),
                    ..rule(ISS)
                },
                false,
            ),
            (
                "bad header",
                JwtRule {
                    from_headers: vec![JwtHeader {
                        name: "a b".into(),
                        prefix: String::new(),
                    }],
                    ..rule(ISS)
                },
                false,
            ),
            (
                "empty param",
                JwtRule {
                    from_params: vec![String::new()],
                    ..rule(ISS)
                },
                false,
            ),
            (
                "bad output header",
                JwtRule {
                    output_payload_to_header: Some("x:y".into()),
                    ..rule(ISS)
                },
                false,
            ),
            (
                "empty claim",
                JwtRule {
                    output_claim_to_headers: vec![ClaimToHeader {
                        header: "x".into(),
                        claim: String::new(),
                    }],
                    ..rule(ISS)
                },
                false,
            ),
            (
                "timeout",
                JwtRule {
                    timeout: Some("1m30s".into()),
                    ..rule(ISS)
                },
                true,
            ),
            (
                "bad timeout",
                JwtRule {
                    timeout: Some("5 seconds".into()),
                    ..rule(ISS)
                },
                false,
            ),
        ];
        for (name, r, want) in cases {
            assert_eq!(ok(r).is_ok(), want, "{name}");
        }
    }

    #[test]
    fn remote_jwks_listing() {
        let auth = Authenticator::new(vec![
            JwtRule {
                timeout: Some("250ms".into()),
                ..rule(ISS)
            },
            rule(ISS),
            JwtRule {
                jwks: Some(r#"{"keys":[]}"#.into()),
                ..rule("inline")
            },
            JwtRule {
                jwks_uri: None,
                ..rule("https://disc")
            },
        ])
        .unwrap();
        let listed: Vec<(String, Option<u16>, Duration)> = auth
            .remote_jwks()
            .into_iter()
            .map(|r| (r.issuer, r.jwks_uri.map(|u| u.port), r.timeout))
            .collect();
        assert_eq!(
            listed,
            [
                (ISS.to_owned(), Some(443), Duration::from_millis(250)),
                ("https://disc".to_owned(), None, DEFAULT_FETCH_TIMEOUT),
            ]
        );
    }

    #[test]
    fn debug_never_prints_tokens() {
        let signer = Signer::new(KeyKind::Ed25519, "k");
        let token = signer.token(&json!({"iss": ISS, "sub": "s"}));
        let auth = Authenticator::new(vec![JwtRule {
            jwks: Some(signer.jwks()),
            output_payload_to_header: Some("x-payload".into()),
            ..rule(ISS)
        }])
        .unwrap();
        let bearer = format!("Bearer {token}");
        let hdrs = headers(&[("authorization", &bearer)]);
        let query = format!("access_token={token}");
        let sources = TokenSources {
            headers: &hdrs,
            query: Some(&query),
        };
        let outcome = auth.authenticate(&sources, NOW, &|_| None);
        let payload = token.split('.').nth(1).unwrap();
        for printed in [
            format!("{sources:?}"),
            format!("{outcome:?}"),
            format!("{auth:?}"),
        ] {
            assert!(!printed.contains(payload), "{printed}");
        }
    }

    // --- Verified-token cache -------------------------------------------------------------

    fn run_at(
        auth: &Authenticator,
        hdrs: &[(&str, &str)],
        query: Option<&str>,
        now: u64,
        keys: &dyn Fn(&str) -> Option<Arc<Jwks>>,
    ) -> AuthnOutcome {
        let hdrs = headers(hdrs);
        let sources = TokenSources {
            headers: &hdrs,
            query,
        };
        auth.authenticate(&sources, now, keys)
    }

    /// `rules` compiled twice: with the default cache, and with none (the reference).
    fn cached_and_uncached(rules: Vec<JwtRule>) -> (Authenticator, Authenticator) {
        let cached = Authenticator::new(rules.clone()).unwrap();
        let uncached = Authenticator::new(rules)
            .unwrap()
            .with_verified_token_cache(0);
        (cached, uncached)
    }

    fn parsed(signer: &Signer) -> Arc<Jwks> {
        Arc::new(Jwks::parse(signer.jwks().as_bytes()).unwrap())
    }

    /// `token` with one character of its signature segment replaced (still base64url).
    fn tamper_signature(token: &str) -> String {
        let signature_start = token.rfind('.').unwrap() + 1;
        let at = signature_start + (token.len() - signature_start) / 2;
        let mut bytes = token.as_bytes().to_vec();
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn cache_hit_equals_first_outcome() {
        let signer = Signer::new(KeyKind::P256, "k1");
        let jwks = parsed(&signer);
        let keys = |iss: &str| (iss == ISS).then(|| Arc::clone(&jwks));
        let rules = vec![JwtRule {
            audiences: vec!["svc".into()],
            from_headers: vec![JwtHeader {
                name: "authorization".into(),
                prefix: "Bearer ".into(),
            }],
            from_params: vec!["token".into()],
            output_payload_to_header: Some("x-payload".into()),
            output_claim_to_headers: vec![
                ClaimToHeader {
                    header: "x-sub".into(),
                    claim: "sub".into(),
                },
                ClaimToHeader {
                    header: "x-n".into(),
                    claim: "n".into(),
                },
            ],
            ..rule(ISS)
        }];
        let (auth, reference) = cached_and_uncached(rules);
        let in_header = signer.token(&json!({
            "iss": ISS, "sub": "alice", "aud": "svc", "azp": "web", "n": 1, "exp": NOW + 600
        }));
        let in_query = signer.token(&json!({"iss": ISS, "sub": "bob", "aud": ["svc"], "n": 2}));
        let bearer = format!("Bearer {in_header}");
        let query = format!("a=1&token={in_query}");
        let hdrs = [("authorization", bearer.as_str())];

        let first = run(&auth, &hdrs, Some(&query), &keys);
        assert!(
            matches!(first, AuthnOutcome::Authenticated { .. }),
            "{first:?}"
        );
        assert_eq!(auth.verified.len(), 2);
        assert_eq!(auth.verified.hits(), 0);
        for round in 1..=3 {
            let again = run(&auth, &hdrs, Some(&query), &keys);
            assert_eq!(
                auth.verified.hits(),
                2 * round,
                "both tokens from the cache"
            );
            assert_eq!(again, first);
        }
        assert_eq!(run(&reference, &hdrs, Some(&query), &keys), first);
        assert_eq!(reference.verified.len(), 0);
    }

    #[test]
    fn cached_token_still_expires_and_honours_nbf() {
        let signer = Signer::new(KeyKind::Ed25519, "k1");
        let jwks = parsed(&signer);
        let keys = |_: &str| Some(Arc::clone(&jwks));
        let (auth, reference) = cached_and_uncached(vec![rule(ISS)]);
        let same = |hdrs: &[(&str, &str)], now: u64| {
            let got = run_at(&auth, hdrs, None, now, &keys);
            assert_eq!(got, run_at(&reference, hdrs, None, now, &keys), "at {now}");
            got
        };

        let exp = NOW + 100;
        let token = signer.token(&json!({"iss": ISS, "sub": "s", "exp": exp}));
        let bearer = format!("Bearer {token}");
        let hdrs = [("authorization", bearer.as_str())];
        assert!(principal(&same(&hdrs, NOW)).is_some());
        assert_eq!(auth.verified.len(), 1);
        // Within the skew: still good, from the cache.
        assert!(principal(&same(&hdrs, exp + CLOCK_SKEW_SECONDS)).is_some());
        assert_eq!(auth.verified.hits(), 1);
        // Past it: rejected exactly as without the cache.
        let expired = same(&hdrs, exp + CLOCK_SKEW_SECONDS + 1);
        assert_eq!(message(&expired), Some((401, "Jwt is expired")));
        assert_eq!(
            auth.verified.hits(),
            2,
            "the expiry came from the cached entry"
        );

        // Not yet valid at first use: rejected, not cached; valid later.
        let nbf = NOW + 1000;
        let early = signer.token(&json!({"iss": ISS, "sub": "e", "nbf": nbf}));
        let bearer = format!("Bearer {early}");
        let hdrs = [("authorization", bearer.as_str())];
        let too_early = same(&hdrs, NOW);
        assert_eq!(message(&too_early), Some((401, "Jwt not yet valid")));
        assert_eq!(auth.verified.len(), 1);
        assert_eq!(
            principal(&same(&hdrs, nbf - CLOCK_SKEW_SECONDS)),
            Some("https://idp.example.com/e")
        );
        assert_eq!(auth.verified.len(), 2);
        assert!(principal(&same(&hdrs, nbf)).is_some());
        assert_eq!(auth.verified.hits(), 3);
        // A cached token is checked against the clock it is given, not the one it was cached
        // under: an earlier `now` (another caller's clock) is rejected again.
        let hits = auth.verified.hits();
        assert_eq!(message(&same(&hdrs, NOW)), Some((401, "Jwt not yet valid")));
        assert_eq!(auth.verified.hits(), hits + 1);
    }

    #[test]
    fn key_set_change_invalidates_cached_tokens() {
        let signer = Signer::new(KeyKind::Rsa2048, "k1");
        let other = Signer::new(KeyKind::Rsa2048, "k2");
        let same_kid = Signer::new(KeyKind::Rsa2048, "k1");
        let (auth, reference) = cached_and_uncached(vec![rule(ISS)]);
        let token = signer.token(&json!({"iss": ISS, "sub": "s"}));
        let bearer = format!("Bearer {token}");
        let hdrs = [("authorization", bearer.as_str())];
        let current: std::cell::RefCell<Option<Arc<Jwks>>> = std::cell::RefCell::new(None);
        let keys = |_: &str| current.borrow().clone();
        let same = || {
            let got = run(&auth, &hdrs, None, &keys);
            assert_eq!(got, run(&reference, &hdrs, None, &keys));
            got
        };

        let original = parsed(&signer);
        *current.borrow_mut() = Some(Arc::clone(&original));
        assert!(principal(&same()).is_some());
        assert!(principal(&same()).is_some());
        assert_eq!(auth.verified.hits(), 1);

        // The signing key was removed from the set: rejected at once, with the refetch hint.
        *current.borrow_mut() = Some(parsed(&other));
        let AuthnOutcome::Rejected {
            message: text,
            unknown_kid,
            ..
        } = same()
        else {
            panic!("a removed key still verified");
        };
        assert_eq!(text, "Jwks doesn't have key to match kid or alg from Jwt");
        assert_eq!(unknown_kid, Some((ISS.to_owned(), "k1".to_owned())));

        // The `kid` now names another key.
        *current.borrow_mut() = Some(parsed(&same_kid));
        assert_eq!(message(&same()), Some((401, "Jwt verification fails")));

        // Keys gone entirely.
        *current.borrow_mut() = None;
        assert_eq!(message(&same()), Some((401, "Jwks remote fetch is failed")));

        // A refresh with the same content is a new `Arc`: one miss, then hits again.
        *current.borrow_mut() = Some(parsed(&signer));
        assert!(principal(&same()).is_some());
        let hits = auth.verified.hits();
        assert!(principal(&same()).is_some());
        assert_eq!(auth.verified.hits(), hits + 1);
        assert_eq!(auth.verified.len(), 1);
        drop(original);
    }

    #[test]
    fn rejections_are_not_cached() {
        let signer = Signer::new(KeyKind::P256, "k1");
        let jwks = parsed(&signer);
        let calls = std::cell::Cell::new(0);
        let keys = |_: &str| {
            calls.set(calls.get() + 1);
            Some(Arc::clone(&jwks))
        };
        let auth = Authenticator::new(vec![JwtRule {
            audiences: vec!["svc".into()],
            ..rule(ISS)
        }])
        .unwrap();
        let good = signer.token(&json!({"iss": ISS, "sub": "s", "aud": "svc"}));
        let rejected = [
            (tamper_signature(&good), (401, "Jwt verification fails")),
            (
                signer.token(&json!({"iss": ISS, "aud": "svc", "exp": NOW - 61})),
                (401, "Jwt is expired"),
            ),
            (
                signer.token(&json!({"iss": ISS, "aud": "other"})),
                (403, "Audiences in Jwt are not allowed"),
            ),
            (
                Signer::new(KeyKind::P256, "k9").token(&json!({"iss": ISS, "aud": "svc"})),
                (401, "Jwks doesn't have key to match kid or alg from Jwt"),
            ),
            (
                signer.token(&json!({"iss": "https://evil", "aud": "svc"})),
                (401, "Jwt issuer is not configured"),
            ),
        ];
        for (token, want) in &rejected {
            let bearer = format!("Bearer {token}");
            for _ in 0..2 {
                let outcome = run(&auth, &[("authorization", &bearer)], None, &keys);
                assert_eq!(message(&outcome), Some(*want));
            }
        }
        assert_eq!(auth.verified.len(), 0);
        assert_eq!(auth.verified.hits(), 0);
        // Every attempt went to the key set (the unknown issuer never gets that far).
        assert_eq!(calls.get(), 2 * (rejected.len() - 1));
    }

    #[test]
    fn cache_capacity_is_bounded() {
        let signer = Signer::new(KeyKind::Ed25519, "k1");
        let auth = Authenticator::new(vec![JwtRule {
            jwks: Some(signer.jwks()),
            ..rule(ISS)
        }])
        .unwrap();
        let none = |_: &str| None;
        let tokens: Vec<String> = (0..VERIFIED_TOKEN_CACHE_CAPACITY + 10)
            .map(|i| signer.token(&json!({"iss": ISS, "sub": format!("u{i}")})))
            .collect();
        for token in &tokens {
            let bearer = format!("Bearer {token}");
            assert!(principal(&run(&auth, &[("authorization", &bearer)], None, &none)).is_some());
            assert!(auth.verified.len() <= VERIFIED_TOKEN_CACHE_CAPACITY);
        }
        assert_eq!(auth.verified.len(), VERIFIED_TOKEN_CACHE_CAPACITY);
        assert_eq!(auth.verified.hits(), 0);
        // The newest is still there, the oldest was evicted (and still verifies).
        let newest = format!("Bearer {}", tokens[tokens.len() - 1]);
        assert!(principal(&run(&auth, &[("authorization", &newest)], None, &none)).is_some());
        assert_eq!(auth.verified.hits(), 1);
        let oldest = format!("Bearer {}", tokens[0]);
        assert!(principal(&run(&auth, &[("authorization", &oldest)], None, &none)).is_some());
        assert_eq!(auth.verified.hits(), 1);
        assert_eq!(auth.verified.len(), VERIFIED_TOKEN_CACHE_CAPACITY);

        // Oversized tokens are verified every time, never stored.
        let big = signer.token(&json!({"iss": ISS, "sub": "big", "pad": "x".repeat(9000)}));
        assert!(big.len() > MAX_CACHED_TOKEN_BYTES);
        let small = Authenticator::new(vec![JwtRule {
            jwks: Some(signer.jwks()),
            ..rule(ISS)
        }])
        .unwrap();
        let bearer = format!("Bearer {big}");
        for _ in 0..2 {
            assert!(principal(&run(&small, &[("authorization", &bearer)], None, &none)).is_some());
        }
        assert_eq!(small.verified.len(), 0);
    }

    #[test]
    fn altered_copies_of_a_cached_token_are_rejected() {
        let signer = Signer::new(KeyKind::P256, "k1");
        let jwks = parsed(&signer);
        let keys = |_: &str| Some(Arc::clone(&jwks));
        let auth = Authenticator::new(vec![rule(ISS)]).unwrap();
        let token = signer.token(&json!({"iss": ISS, "sub": "user"}));
        let bearer = format!("Bearer {token}");
        assert!(principal(&run(&auth, &[("authorization", &bearer)], None, &keys)).is_some());
        assert_eq!(auth.verified.len(), 1);

        let forged_payload = {
            let (header, rest) = token.split_once('.').unwrap();
            let (_, signature) = rest.split_once('.').unwrap();
            let payload =
                crate::test_signer::b64(br#"{"iss":"https://idp.example.com","sub":"admin"}"#);
            format!("{header}.{payload}.{signature}")
        };
        let cases = [
            (tamper_signature(&token), (401, "Jwt verification fails")),
            (forged_payload, (401, "Jwt verification fails")),
            (
                format!("{token}.x"),
                (401, "Jwt is not in the form of Header.Payload.Signature"),
            ),
        ];
        for (forged, want) in cases {
            assert_ne!(forged, token);
            let bearer = format!("Bearer {forged}");
            let outcome = run(&auth, &[("authorization", &bearer)], None, &keys);
            assert_eq!(message(&outcome), Some(want), "{outcome:?}");
        }
        assert_eq!(auth.verified.hits(), 0);
        assert_eq!(auth.verified.len(), 1);
    }

    #[test]
    fn cached_token_only_counts_where_it_was_verified() {
        let (auth, token_a) = two_issuers();
        let none = |_: &str| None;
        assert!(principal(&run(&auth, &[("x-a", &token_a)], None, &none)).is_some());
        assert_eq!(auth.verified.len(), 1);
        assert_eq!(
            message(&run(&auth, &[("x-b", &token_a)], None, &none)),
            Some((401, "Jwt issuer is not configured"))
        );
        assert_eq!(auth.verified.hits(), 0);
    }

    #[test]
    fn shared_across_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Authenticator>();
        let signer = Signer::new(KeyKind::P256, "k1");
        let jwks = parsed(&signer);
        let auth = Arc::new(Authenticator::new(vec![rule(ISS)]).unwrap());
        let token = signer.token(&json!({"iss": ISS, "sub": "t"}));
        let bearer = format!("Bearer {token}");
        let want = run(&auth, &[("authorization", &bearer)], None, &|_| {
            Some(Arc::clone(&jwks))
        });
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..50 {
                        let got = run(&auth, &[("authorization", &bearer)], None, &|_| {
                            Some(Arc::clone(&jwks))
                        });
                        assert_eq!(got, want);
                    }
                });
            }
        });
        assert_eq!(auth.verified.hits(), 200);
    }

    proptest! {
        #[test]
        fn authenticate_never_panics(
            name in prop::sample::select(vec!["authorization", "x-jwt", "cookie", "other"]),
            value in ".{0,300}",
            query in proptest::option::of(".{0,100}"),
        ) {
            let auth = Authenticator::new(vec![
                rule(ISS),
                JwtRule {
                    from_headers: vec![JwtHeader { name: "x-jwt".into(), prefix: "Bearer ".into() }],
                    from_cookies: vec!["s".into()],
                    ..rule("https://other")
                },
            ]).unwrap();
            let hdrs = vec![(name.to_owned(), value)];
            let sources = TokenSources { headers: &hdrs, query: query.as_deref() };
            let empty = Arc::new(Jwks::empty());
            let _ = auth.authenticate(&sources, NOW, &|_| Some(Arc::clone(&empty)));
        }
    }
}
