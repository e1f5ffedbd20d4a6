//! Ward's end-user authentication: Istio `RequestAuthentication` JWT verification as pure
//! functions.
//!
//! Role: compile a workload's `jwtRules` ([`Authenticator::new`]), then answer "who is this
//! request from, or must it get 401/403?" ([`Authenticator::authenticate`] →
//! [`AuthnOutcome`]). The proxy carries the answer out (strip the token, add output headers,
//! or reply with the jwt_verify_lib message) and feeds [`VerifiedToken`] to authorization.
//! [`JwksCache`] decides when the proxy fetches each issuer's keys.
//!
//! Must not: open sockets, depend on tokio, read clocks (time is passed in), read files, or
//! log. A token is never logged or `Debug`-printed (manual `Debug` impls redact it). Untrusted
//! input (tokens, JWKS documents, headers) never panics.
//!
//! Security rules (docs/threats.md, "JWT and JWKS"), all fail closed:
//! - the algorithm comes from the key, never from the token: `none` and HS* never verify, an
//!   ES256 token never meets an RSA key; header `jku`/`x5u`/`jwk`/`x5c` are ignored;
//! - duplicate JSON keys in header, payload or JWKS are refused; nesting and sizes are capped
//!   (token 64 KiB, JWKS 256 KiB and 64 keys);
//! - an issuer with no fetched keys rejects all its tokens; there are no default keys;
//! - `jwksUri` must be https (plain http to loopback only, for development) and never
//!   link-local, the proxy admin port or another of Ward's own listeners;
//! - a header with `crit` is refused (Ward implements no JWS extension);
//! - every spelling of a configured token location is read (prefix in any case, parameter
//!   name percent-decoded, every copy), so no unverified token reaches the app there.
//!
//! Layout:
//! - [`spec`]: the Istio API types, field for field.
//! - `authenticator`: [`Authenticator`], the per-request decision, the outcome.
//! - `rule_set`: [`JwtRuleSet`], a workload's rules with their authenticator, compiled once per
//!   configuration.
//! - `location`: where tokens are in a request ([`TokenSources`]), finding every one at a
//!   configured location and removing them ([`TokenLocation::removal`]).
//! - `token`: decoding and checking one JWT ([`JwtError`] carries Istio's messages).
//! - `verified_cache`: tokens already verified, so a repeated token skips the signature check
//!   (bounded; keyed by the whole token; invalidated when the key set changes; `exp`/`nbf`
//!   checked on every use).
//! - `jwks`: [`Jwks`] key sets and the supported [`Alg`]s.
//! - [`jwks_uri`]: SSRF checks on `jwksUri`.
//! - [`jwks_cache`]: fetch timing and stale-while-error keys.
//! - `json`: strict JSON (no duplicate keys, bounded depth).

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod authenticator;
mod json;
mod jwks;
pub mod jwks_cache;
pub mod jwks_uri;
mod location;
mod rule_set;
pub mod spec;
#[cfg(test)]
mod test_signer;
mod token;
mod verified_cache;

pub use authenticator::{
    Authenticator, AuthnConfigError, AuthnOutcome, RemoteJwks, VerifiedToken, DEFAULT_FETCH_TIMEOUT,
};
pub use jwks::{Alg, Jwks, JwksError, MAX_JWKS_BYTES, MAX_JWKS_KEYS};
pub use jwks_cache::{JwksCache, JwksCachePolicy};
pub use location::{TokenLocation, TokenRemoval, TokenSources};
pub use rule_set::JwtRuleSet;
pub use token::{JwtError, CLOCK_SKEW_SECONDS, MAX_TOKEN_BYTES};
pub use verified_cache::{MAX_CACHED_TOKEN_BYTES, VERIFIED_TOKEN_CACHE_CAPACITY};
