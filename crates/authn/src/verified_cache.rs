//! Tokens already verified, so a repeated token skips the signature check (the equivalent of
//! Envoy jwt_authn `jwt_cache_config`).
//!
//! What a verification depends on, and how the cache honours each:
//! - the token bytes: the key is the SHA-256 of the whole token and the entry keeps the token,
//!   compared in full on every lookup (a hash match alone is never a hit);
//! - the rules that read the token's location: the key includes the location's index in its
//!   [`crate::Authenticator`], and the rules are fixed for an authenticator's lifetime (new
//!   rules build a new authenticator, with an empty cache; a config change that keeps the rules
//!   keeps the authenticator: [`crate::JwtRuleSet::keep_compiled`]);
//! - the key set: the entry remembers which `Arc<Jwks>` it verified with (a `Weak` to it), and
//!   is a hit only while the issuer's current set is that same allocation (pointer equality),
//!   so a rotation or a removed key is honoured at once. The proxy's `JwksCache` makes a new
//!   `Arc` on every successful fetch, even of identical keys, so each periodic refresh costs
//!   one full verification per cached token, then hits resume;
//! - the clock: `exp` and `nbf` are kept and checked on every hit, with the same skew.
//!
//! Only successful verifications are stored: a rejected token is verified again each time, so
//! garbage cannot fill the cache and a newly published key is never masked by a stale "no".
//!
//! The cache is bounded: at most [`VERIFIED_TOKEN_CACHE_CAPACITY`] entries, the oldest evicted
//! first, and tokens longer than [`MAX_CACHED_TOKEN_BYTES`] are never stored. The lock is held
//! only to look up, insert or evict; hashing, comparing and verifying happen outside it.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use aws_lc_rs::digest;

use crate::authenticator::VerifiedToken;
use crate::jwks::Jwks;
use crate::token::Validity;

/// Default number of verified tokens one [`crate::Authenticator`] remembers.
///
/// Memory: each entry holds the token (at most [`MAX_CACHED_TOKEN_BYTES`]) and its decoded
/// claims: a few MiB for a full cache of typical (~1 KiB) tokens. Only tokens signed by a
/// configured issuer get in, so clients cannot fill it with junk.
pub const VERIFIED_TOKEN_CACHE_CAPACITY: usize = 1024;

/// Longest token stored in the cache, in bytes; longer tokens (up to
/// [`crate::MAX_TOKEN_BYTES`]) are still accepted, just verified every time. Bounds the memory
/// of one entry.
pub const MAX_CACHED_TOKEN_BYTES: usize = 8 * 1024;

/// Which location read the token, and the SHA-256 of the token.
pub(crate) type Key = (usize, [u8; 32]);

/// The key of `token` read from location `location`.
pub(crate) fn key(location: usize, token: &str) -> Key {
    let mut hash = [0u8; 32];
    hash.copy_from_slice(digest::digest(&digest::SHA256, token.as_bytes()).as_ref());
    (location, hash)
}

/// One successful verification. Never `Debug`: it holds a token.
pub(crate) struct Entry {
    /// The whole token, compared on every hit.
    token: Box<str>,
    /// The key set it verified with. `Weak`, so a replaced key set is freed even while entries
    /// verified with it remain; its allocation stays reserved while the `Weak` lives, so no
    /// later set can reuse the address and pass for it.
    jwks: Weak<Jwks>,
    /// Index of the rule that verified it.
    pub(crate) rule: usize,
    /// `exp` / `nbf`, checked on every hit.
    pub(crate) validity: Validity,
    /// The verified identity and claims.
    pub(crate) verified: VerifiedToken,
}

impl Entry {
    pub(crate) fn new(
        token: &str,
        jwks: &Arc<Jwks>,
        rule: usize,
        validity: Validity,
        verified: VerifiedToken,
    ) -> Entry {
        Entry {
            token: token.into(),
            jwks: Arc::downgrade(jwks),
            rule,
            validity,
            verified,
        }
    }

    /// True when `current` is the very key set this entry was verified with.
    pub(crate) fn verified_with(&self, current: &Arc<Jwks>) -> bool {
        std::ptr::eq(self.jwks.as_ptr(), Arc::as_ptr(current))
    }
}

/// A bounded map from (location, token) to its successful verification.
pub(crate) struct VerifiedCache {
    capacity: usize,
    inner: Mutex<Inner>,
    #[cfg(test)]
    hits: std::sync::atomic::AtomicUsize,
}

#[derive(Default)]
struct Inner {
    map: HashMap<Key, Arc<Entry>>,
    /// Every key of `map`, once, oldest first.
    order: VecDeque<Key>,
}

impl fmt::Debug for VerifiedCache {
    // Entries hold tokens: print the size only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedCache")
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish()
    }
}

impl VerifiedCache {
    /// An empty cache of `capacity` entries; 0 disables caching.
    pub(crate) fn new(capacity: usize) -> VerifiedCache {
        VerifiedCache {
            capacity,
            inner: Mutex::new(Inner::default()),
            #[cfg(test)]
            hits: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Whether `token` may be cached at all.
    pub(crate) fn accepts(&self, token: &str) -> bool {
        self.capacity > 0 && token.len() <= MAX_CACHED_TOKEN_BYTES
    }

    /// The entry for exactly `token` under `key` (= [`key`] of `token`), if any. The caller
    /// still checks the key set and the clock.
    pub(crate) fn get(&self, key: &Key, token: &str) -> Option<Arc<Entry>> {
        let entry = self.lock().map.get(key).cloned()?;
        // Outside the lock. Not constant-time, and needs not be: the hashes already matched,
        // so this only guards against a SHA-256 collision.
        (*entry.token == *token).then_some(entry)
    }

    /// Stores (or replaces) the verification of `key`, evicting the oldest entries when full.
    pub(crate) fn insert(&self, key: Key, entry: Entry) {
        if self.capacity == 0 {
            return;
        }
        let mut entry = Arc::new(entry);
        // Entries leaving the cache, dropped (and their claims freed) after the lock.
        let mut evicted = None;
        {
            let mut inner = self.lock();
            if let Some(existing) = inner.map.get_mut(&key) {
                // Same token verified again (a newer key set, or a concurrent miss): keep its
                // place in the eviction order.
                std::mem::swap(existing, &mut entry);
                drop(inner);
                return;
            }
            while inner.map.len() >= self.capacity {
                let Some(oldest) = inner.order.pop_front() else {
                    // Cannot happen (`order` holds every key of `map`); start afresh rather
                    // than loop forever.
                    inner.map.clear();
                    break;
                };
                // One per insert in practice (the cache only ever grows by one).
                evicted = inner.map.remove(&oldest);
            }
            inner.order.push_back(key);
            inner.map.insert(key, entry);
        }
        drop(evicted);
    }

    /// The state, recovering from a poisoned lock by emptying the cache (a panic elsewhere
    /// while holding it may have left `map` and `order` out of step). Never panics.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(inner) => inner,
            Err(poisoned) => {
                let mut inner = poisoned.into_inner();
                inner.map.clear();
                inner.order.clear();
                self.inner.clear_poison();
                inner
            }
        }
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        self.lock().map.len()
    }

    #[cfg(test)]
    pub(crate) fn note_hit(&self) {
        self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    #[cfg(not(test))]
    pub(crate) fn note_hit(&self) {}

    /// Hits so far (tests only).
    #[cfg(test)]
    pub(crate) fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(token: &str, jwks: &Arc<Jwks>) -> Entry {
        let verified = VerifiedToken {
            principal: "i/s".into(),
            audiences: Vec::new(),
            presenter: None,
            claims: json!({}),
        };
        let validity = Validity::new(None, None);
        Entry::new(token, jwks, 0, validity, verified)
    }

    #[test]
    fn eviction_keeps_order_and_bound() {
        let jwks = Arc::new(Jwks::empty());
        let cache = VerifiedCache::new(3);
        for t in ["a", "b", "c", "d"] {
            cache.insert(key(0, t), entry(t, &jwks));
        }
        assert_eq!(cache.len(), 3);
        assert!(cache.get(&key(0, "a"), "a").is_none(), "oldest evicted");
        // Replacing keeps the place: "b" is still the oldest.
        cache.insert(key(0, "b"), entry("b", &jwks));
        cache.insert(key(0, "e"), entry("e", &jwks));
        assert_eq!(cache.len(), 3);
        assert!(cache.get(&key(0, "b"), "b").is_none());
        for t in ["c", "d", "e"] {
            assert!(cache.get(&key(0, t), t).is_some(), "{t}");
        }
        // A different location is a different key.
        assert!(cache.get(&key(1, "e"), "e").is_none());
        // A key whose stored token differs (a stand-in for a hash collision) is no hit.
        assert!(cache.get(&key(0, "e"), "E").is_none());
    }

    #[test]
    fn disabled_and_oversized() {
        let jwks = Arc::new(Jwks::empty());
        let off = VerifiedCache::new(0);
        assert!(!off.accepts("a"));
        off.insert(key(0, "a"), entry("a", &jwks));
        assert_eq!(off.len(), 0);
        let on = VerifiedCache::new(1);
        assert!(on.accepts(&"x".repeat(MAX_CACHED_TOKEN_BYTES)));
        assert!(!on.accepts(&"x".repeat(MAX_CACHED_TOKEN_BYTES + 1)));
    }

    #[test]
    fn key_set_identity() {
        let a = Arc::new(Jwks::empty());
        let b = Arc::new(Jwks::empty());
        let e = entry("t", &a);
        assert!(e.verified_with(&a));
        assert!(e.verified_with(&Arc::clone(&a)));
        assert!(!e.verified_with(&b), "same content, another allocation");
        drop(a);
        let c = Arc::new(Jwks::empty());
        assert!(
            !e.verified_with(&c),
            "a dropped set's address is not reused"
        );
    }

    #[test]
    fn poisoned_lock_recovers_empty() {
        let jwks = Arc::new(Jwks::empty());
        let cache = Arc::new(VerifiedCache::new(4));
        cache.insert(key(0, "a"), entry("a", &jwks));
        let poisoner = Arc::clone(&cache);
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.inner.lock();
            panic!("poison the cache lock");
        })
        .join();
        assert!(cache.inner.is_poisoned());
        assert_eq!(cache.len(), 0);
        assert!(!cache.inner.is_poisoned());
        cache.insert(key(0, "b"), entry("b", &jwks));
        assert!(cache.get(&key(0, "b"), "b").is_some());
    }
}
