//! When to fetch each issuer's JWKS, and the last good key set: a pure state machine.
//!
//! The proxy owns the HTTP fetch. It asks [`JwksCache::due`], calls
//! [`JwksCache::on_fetch_started`], fetches (at most [`crate::MAX_JWKS_BYTES`], with the rule's
//! timeout), and reports with [`JwksCache::on_fetched`]. Time is passed in as milliseconds on
//! a monotonic clock; nothing here reads a clock.
//!
//! Policy:
//! - periodic refresh every 20 min (Istio `PILOT_JWT_PUB_KEY_REFRESH_INTERVAL` default);
//! - after a failure, retry with exponential backoff 1 s → 60 s (Istio's istiod backs off from
//!   1 min to 60 min; Ward fetches in the proxy, so it retries sooner);
//! - a token with an unknown `kid` asks for a refetch, at most once per 30 s per issuer, so a
//!   key rotation at the IdP is picked up without letting tokens drive a fetch storm;
//! - a failed fetch keeps the previous keys (stale-while-error); an issuer never fetched has
//!   no keys, so its tokens fail closed;
//! - the cache follows the rules in force ([`JwksCache::follow`]): a config change that leaves
//!   an issuer's `jwksUri` alone keeps its keys and timings (nothing is refetched); an issuer
//!   whose rule names another `jwksUri` starts over, and a removed issuer is forgotten.

use std::collections::HashMap;
use std::sync::Arc;

use crate::authenticator::RemoteJwks;
use crate::jwks::Jwks;
use crate::jwks_uri::JwksUri;

/// Timings of the cache, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JwksCachePolicy {
    /// Refetch a healthy set this often.
    pub refresh_ms: u64,
    /// First retry delay after a failure.
    pub min_backoff_ms: u64,
    /// Longest retry delay after repeated failures.
    pub max_backoff_ms: u64,
    /// Least time between two unknown-`kid` refetches of one issuer.
    pub unknown_kid_interval_ms: u64,
}

impl Default for JwksCachePolicy {
    fn default() -> Self {
        JwksCachePolicy {
            refresh_ms: 20 * 60 * 1000,
            min_backoff_ms: 1000,
            max_backoff_ms: 60 * 1000,
            unknown_kid_interval_ms: 30 * 1000,
        }
    }
}

/// One issuer's state.
#[derive(Debug, Default)]
struct IssuerState {
    /// The `jwksUri` the keys come from (`None`: OpenID discovery).
    source: Option<JwksUri>,
    keys: Option<Arc<Jwks>>,
    last_success: Option<u64>,
    last_attempt: Option<u64>,
    /// Consecutive failures since the last success.
    failures: u32,
    /// A fetch is running (started, not yet reported).
    in_flight: bool,
    /// A token named a `kid` the current set lacks.
    kid_refetch_wanted: bool,
    /// When the last unknown-`kid` refetch started.
    last_kid_refetch: Option<u64>,
    /// Last failure text, for `ward` status output.
    last_error: Option<String>,
}

/// Per-issuer key sets and fetch timing.
#[derive(Debug, Default)]
pub struct JwksCache {
    policy: JwksCachePolicy,
    issuers: HashMap<String, IssuerState>,
}

impl JwksCache {
    /// An empty cache with the default policy.
    pub fn new() -> JwksCache {
        JwksCache::default()
    }

    /// An empty cache with `policy`.
    pub fn with_policy(policy: JwksCachePolicy) -> JwksCache {
        JwksCache {
            policy,
            issuers: HashMap::new(),
        }
    }

    /// The current keys of `issuer`; `None` if no fetch ever succeeded.
    pub fn keys(&self, issuer: &str) -> Option<Arc<Jwks>> {
        self.issuers.get(issuer).and_then(|s| s.keys.clone())
    }

    /// Should the proxy fetch `issuer`'s JWKS now? False while a fetch is in flight.
    pub fn due(&self, issuer: &str, now_ms: u64) -> bool {
        let Some(state) = self.issuers.get(issuer) else {
            return true;
        };
        if state.in_flight {
            return false;
        }
        let Some(last_attempt) = state.last_attempt else {
            return true;
        };
        if state.failures > 0 {
            return now_ms >= last_attempt.saturating_add(self.backoff_ms(state.failures));
        }
        let refresh_due = state
            .last_success
            .is_none_or(|t| now_ms >= t.saturating_add(self.policy.refresh_ms));
        let kid_due = state.kid_refetch_wanted
            && state
                .last_kid_refetch
                .is_none_or(|t| now_ms >= t.saturating_add(self.policy.unknown_kid_interval_ms));
        refresh_due || kid_due
    }

    /// Follows the rules in force: `remotes` are the key sets they name
    /// ([`crate::Authenticator::remote_jwks`]). An issuer whose `jwksUri` is unchanged keeps its
    /// keys and fetch timings, so a config change that leaves its rule alone fetches nothing. An
    /// issuer whose rule now names another `jwksUri` starts over: its old keys are dropped (they
    /// came from a source no longer trusted), it is due at once, and its tokens fail closed until
    /// the new source answers. An issuer no rule names any more is forgotten.
    pub fn follow(&mut self, remotes: &[RemoteJwks]) {
        self.issuers.retain(|issuer, state| {
            remotes
                .iter()
                .any(|r| r.issuer == *issuer && r.jwks_uri == state.source)
        });
        for remote in remotes {
            self.issuers
                .entry(remote.issuer.clone())
                .or_insert_with(|| IssuerState {
                    source: remote.jwks_uri.clone(),
                    ..IssuerState::default()
                });
        }
    }

    /// Records that a token for `issuer` named a `kid` its keys lack
    /// ([`crate::AuthnOutcome::Rejected::unknown_kid`]). An issuer without state is due anyway.
    pub fn note_unknown_kid(&mut self, issuer: &str, _now_ms: u64) {
        if let Some(state) = self.issuers.get_mut(issuer) {
            state.kid_refetch_wanted = true;
        }
    }

    /// Records that the proxy started a fetch for `issuer` (so [`JwksCache::due`] says no
    /// until [`JwksCache::on_fetched`]).
    pub fn on_fetch_started(&mut self, issuer: &str, now_ms: u64) {
        let state = self.issuers.entry(issuer.to_owned()).or_default();
        state.in_flight = true;
        if state.kid_refetch_wanted {
            state.last_kid_refetch = Some(now_ms);
        }
    }

    /// Records a fetch result. A failure keeps the previous keys (stale-while-error).
    pub fn on_fetched(&mut self, issuer: &str, now_ms: u64, result: Result<Jwks, String>) {
        let state = self.issuers.entry(issuer.to_owned()).or_default();
        state.in_flight = false;
        state.last_attempt = Some(now_ms);
        if state.kid_refetch_wanted && state.last_kid_refetch.is_none() {
            state.last_kid_refetch = Some(now_ms);
        }
        state.kid_refetch_wanted = false;
        match result {
            Ok(jwks) => {
                state.keys = Some(Arc::new(jwks));
                state.last_success = Some(now_ms);
                state.failures = 0;
                state.last_error = None;
            }
            Err(error) => {
                state.failures = state.failures.saturating_add(1);
                state.last_error = Some(error);
            }
        }
    }

    /// Seconds since `issuer`'s keys were last fetched successfully (for the cache-age
    /// metric); `None` if never.
    pub fn age_seconds(&self, issuer: &str, now_ms: u64) -> Option<u64> {
        let last = self.issuers.get(issuer)?.last_success?;
        Some(now_ms.saturating_sub(last) / 1000)
    }

    /// The last fetch error of `issuer`, if the last fetch failed.
    pub fn last_error(&self, issuer: &str) -> Option<&str> {
        self.issuers.get(issuer)?.last_error.as_deref()
    }

    fn backoff_ms(&self, failures: u32) -> u64 {
        let doublings = failures.saturating_sub(1).min(32);
        self.policy
            .min_backoff_ms
            .saturating_mul(1u64 << doublings)
            .min(self.policy.max_backoff_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISS: &str = "https://idp";

    fn keys() -> Jwks {
        Jwks::parse(br#"{"keys":[]}"#).unwrap()
    }

    #[test]
    fn first_fetch_then_periodic_refresh() {
        let mut cache = JwksCache::new();
        assert!(cache.due(ISS, 0));
        assert!(cache.keys(ISS).is_none());
        assert_eq!(cache.age_seconds(ISS, 0), None);
        cache.on_fetch_started(ISS, 0);
        assert!(!cache.due(ISS, 0), "in flight");
        cache.on_fetched(ISS, 10, Ok(keys()));
        assert!(cache.keys(ISS).is_some());
        let cases = [
            (11, false),
            (20 * 60 * 1000, false),
            (20 * 60 * 1000 + 10, true),
        ];
        for (now, want) in cases {
            assert_eq!(cache.due(ISS, now), want, "now={now}");
        }
        assert_eq!(cache.age_seconds(ISS, 5_010), Some(5));
    }

    #[test]
    fn failure_backoff_doubles_to_a_minute_and_keeps_keys() {
        let mut cache = JwksCache::new();
        cache.on_fetched(ISS, 0, Ok(keys()));
        let mut now = 0;
        let expected = [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000];
        for wait in expected {
            cache.on_fetched(ISS, now, Err("HTTP 500".into()));
            assert!(cache.keys(ISS).is_some(), "stale-while-error");
            assert_eq!(cache.last_error(ISS), Some("HTTP 500"));
            assert!(!cache.due(ISS, now + wait - 1), "wait {wait}");
            assert!(cache.due(ISS, now + wait), "wait {wait}");
            now += wait;
        }
        assert_eq!(cache.age_seconds(ISS, now), Some(now / 1000));
        cache.on_fetched(ISS, now, Ok(keys()));
        assert_eq!(cache.last_error(ISS), None);
        assert!(
            !cache.due(ISS, now + 1000),
            "healthy again: back to periodic"
        );
    }

    #[test]
    fn never_fetched_failure_has_no_keys() {
        let mut cache = JwksCache::new();
        cache.on_fetched(ISS, 0, Err("connect refused".into()));
        assert!(cache.keys(ISS).is_none());
        assert!(cache.due(ISS, 1000));
    }

    fn remote(issuer: &str, uri: &str) -> RemoteJwks {
        RemoteJwks {
            issuer: issuer.to_owned(),
            jwks_uri: Some(crate::jwks_uri::parse(uri).unwrap()),
            timeout: crate::DEFAULT_FETCH_TIMEOUT,
        }
    }

    #[test]
    fn following_unchanged_rules_keeps_keys_and_timings_a_new_source_starts_over() {
        const OTHER: &str = "https://other";
        let mut cache = JwksCache::new();
        let rules = [
            remote(ISS, "https://idp/keys"),
            remote(OTHER, "https://other/keys"),
        ];
        cache.follow(&rules);
        for issuer in [ISS, OTHER] {
            assert!(cache.due(issuer, 0));
            cache.on_fetch_started(issuer, 0);
            cache.on_fetched(issuer, 10, Ok(keys()));
        }
        let fetched = cache.keys(ISS).unwrap();

        // The same rules again (a config change elsewhere): nothing is due, the keys stay.
        cache.follow(&rules);
        assert!(!cache.due(ISS, 1000));
        assert!(Arc::ptr_eq(&fetched, &cache.keys(ISS).unwrap()));

        // ISS now names another jwksUri, OTHER is removed.
        cache.follow(&[remote(ISS, "https://idp/rotated-keys")]);
        assert!(
            cache.keys(ISS).is_none(),
            "keys of the old source are dropped"
        );
        assert!(cache.due(ISS, 1000), "the new source is fetched at once");
        assert!(cache.keys(OTHER).is_none());
        assert_eq!(cache.age_seconds(OTHER, 1000), None);
    }

    #[test]
    fn an_unknown_kid_for_an_issuer_without_state_adds_none() {
        let mut cache = JwksCache::new();
        cache.note_unknown_kid(ISS, 0);
        assert!(cache.issuers.is_empty());
        assert!(cache.due(ISS, 0));
    }

    #[test]
    fn unknown_kid_refetch_is_rate_limited() {
        let mut cache = JwksCache::new();
        cache.on_fetched(ISS, 0, Ok(keys()));
        assert!(!cache.due(ISS, 1000));
        cache.note_unknown_kid(ISS, 1000);
        assert!(cache.due(ISS, 1000), "first unknown kid fetches at once");
        cache.on_fetch_started(ISS, 1000);
        cache.on_fetched(ISS, 1100, Ok(keys()));
        // Another unknown kid soon after: wait until 30 s after the last kid refetch.
        cache.note_unknown_kid(ISS, 2000);
        let cases = [(2000, false), (30_999, false), (31_000, true)];
        for (now, want) in cases {
            assert_eq!(cache.due(ISS, now), want, "now={now}");
        }
    }
}
