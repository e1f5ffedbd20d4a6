//! [`JwtRuleSet`]: a workload's `jwtRules` with the [`Authenticator`] compiled from them, built
//! once per configuration (like `ward_policy::WorkloadPolicies` for authorization), so a request
//! reads the authenticator from its config without a lock or a comparison.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize, Serializer};

use crate::authenticator::{Authenticator, AuthnConfigError};
use crate::spec::JwtRule;

/// The `jwtRules` that apply to one workload, in order, and the [`Authenticator`] compiled
/// from them (none when there are no rules).
///
/// Build it with [`JwtRuleSet::new`] (or deserialize it: the authenticator is compiled again,
/// and rules that do not compile are refused). It serializes as the list of rules; equality
/// compares the rules only. The rules can be read ([`JwtRuleSet::rules`]) but not changed: to
/// change them, build a new value, so the authenticator beside them can never go stale.
///
/// Clones share the authenticator, and with it the tokens it already verified. A new value
/// starts with an empty verified-token cache; [`JwtRuleSet::keep_compiled`] carries the
/// previous authenticator over when a new configuration has the same rules.
#[derive(Clone, Default, Deserialize)]
#[serde(try_from = "Vec<JwtRule>")]
pub struct JwtRuleSet {
    rules: Vec<JwtRule>,
    /// Compiled from `rules`; `None` exactly when `rules` is empty.
    authenticator: Option<Arc<Authenticator>>,
}

impl JwtRuleSet {
    /// Checks and compiles `rules` (the `jwtRules` of every RequestAuthentication that selects
    /// the workload, in order). Costs a compilation: once per configuration, not per request.
    pub fn new(rules: Vec<JwtRule>) -> Result<JwtRuleSet, AuthnConfigError> {
        let authenticator = if rules.is_empty() {
            None
        } else {
            Some(Arc::new(Authenticator::new(rules.clone())?))
        };
        Ok(JwtRuleSet {
            rules,
            authenticator,
        })
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[JwtRule] {
        &self.rules
    }

    /// The compiled rules; `None` when there are none (no JWT authentication).
    pub fn authenticator(&self) -> Option<&Arc<Authenticator>> {
        self.authenticator.as_ref()
    }

    /// When `previous` has the same rules, use its authenticator instead of this one, so the
    /// tokens it verified stay verified across a configuration change that leaves the rules
    /// alone. Returns whether it did. Sound because an authenticator is a function of its rules
    /// alone; its cached verifications check the key set they were made with on every use (see
    /// `verified_cache`), so a rotated key set is honoured either way.
    pub fn keep_compiled(&mut self, previous: &JwtRuleSet) -> bool {
        if self.rules != previous.rules {
            return false;
        }
        self.authenticator = previous.authenticator.clone();
        true
    }
}

impl TryFrom<Vec<JwtRule>> for JwtRuleSet {
    type Error = AuthnConfigError;

    fn try_from(rules: Vec<JwtRule>) -> Result<JwtRuleSet, AuthnConfigError> {
        JwtRuleSet::new(rules)
    }
}

impl Serialize for JwtRuleSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.rules.serialize(serializer)
    }
}

impl PartialEq for JwtRuleSet {
    fn eq(&self, other: &JwtRuleSet) -> bool {
        self.rules == other.rules
    }
}

impl Eq for JwtRuleSet {}

impl fmt::Debug for JwtRuleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.rules).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(issuer: &str, audience: &str) -> JwtRule {
        JwtRule {
            issuer: issuer.to_owned(),
            jwks_uri: Some(format!("https://{issuer}/jwks")),
            audiences: vec![audience.to_owned()],
            ..JwtRule::default()
        }
    }

    fn same(a: &JwtRuleSet, b: &JwtRuleSet) -> bool {
        match (a.authenticator(), b.authenticator()) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    #[test]
    fn no_rules_no_authenticator() {
        assert!(JwtRuleSet::new(Vec::new())
            .unwrap()
            .authenticator()
            .is_none());
        assert!(JwtRuleSet::default().authenticator().is_none());
    }

    #[test]
    fn clones_share_the_authenticator() {
        let set = JwtRuleSet::new(vec![rule("idp.example.com", "api")]).unwrap();
        let served = set.clone();
        assert!(same(&set, &served));
    }

    #[test]
    fn equal_rules_keep_the_previous_authenticator_other_rules_do_not() {
        let previous = JwtRuleSet::new(vec![rule("idp.example.com", "api")]).unwrap();

        let mut unchanged = JwtRuleSet::new(vec![rule("idp.example.com", "api")]).unwrap();
        assert!(!same(&unchanged, &previous), "a new set compiles its own");
        assert!(unchanged.keep_compiled(&previous));
        assert!(same(&unchanged, &previous));

        let mut changed = JwtRuleSet::new(vec![rule("idp.example.com", "other")]).unwrap();
        assert!(!changed.keep_compiled(&previous));
        assert!(!same(&changed, &previous));

        let mut removed = JwtRuleSet::default();
        assert!(!removed.keep_compiled(&previous));
        assert!(removed.authenticator().is_none());
    }

    #[test]
    fn serializes_as_the_rules_and_compiles_again_when_read() {
        let set = JwtRuleSet::new(vec![rule("idp.example.com", "api")]).unwrap();
        let json = serde_json::to_value(&set).unwrap();
        assert_eq!(json, serde_json::to_value(set.rules()).unwrap());
        let back: JwtRuleSet = serde_json::from_value(json).unwrap();
        assert_eq!(back, set);
        assert!(back.authenticator().is_some());

        let bad = serde_json::json!([{"issuer": ""}]);
        assert!(serde_json::from_value::<JwtRuleSet>(bad).is_err());
    }
}
