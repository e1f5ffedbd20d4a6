//! Break-glass: a time-limited, recorded exception for one workload (`ward break-glass`,
//! docs/break-glass.md).
//!
//! What a grant does, and nothing more: while it is active, the AuthorizationPolicy denials of
//! the workload's inbound traffic (a DENY rule matched, or no ALLOW rule did) are lifted: the
//! connection or request is served, and its access record says `allow` with the grant's id and
//! what would have denied it. PeerAuthentication (STRICT still refuses plaintext), token
//! validation (a bad JWT is still a 401), request admission and egress are unchanged: the
//! traffic stays encrypted, authenticated and logged.
//!
//! Fail closed: a grant is refused when it cannot be written to the audit trail first; a lifted
//! decision is not lifted when its use cannot be written; a grant ends at its expiry without
//! anyone acting (every check compares with the clock), and its expiry is written to the trail
//! by [`BreakGlass::sweep`].

use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The longest grant: 4 hours. Longer outages need a reviewed config change, not an exception.
pub const MAX_TTL: Duration = Duration::from_secs(4 * 3600);
/// A reason is 10 to 500 characters.
pub const REASON_MIN: usize = 10;
/// See [`REASON_MIN`].
pub const REASON_MAX: usize = 500;
/// Grants kept for listing (active, expired and revoked); the oldest ended one goes first.
const KEPT: usize = 256;

/// Where grants, revocations, expiries and uses are recorded (the audit trail's writer).
pub trait AuditSink: Send + Sync {
    /// Append one record of type `kind`.
    fn append(&self, kind: &str, fields: Map<String, Value>) -> Result<(), String>;
    /// Checkpoint when due (called about once a second).
    fn tick(&self) {}
}

/// A grant as listed and recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Grant {
    /// `bg-<granted at>-<n>`: the n-th grant of this process.
    pub id: String,
    /// The workload, `namespace/name`.
    pub workload: String,
    /// What the exception lifts.
    pub grants: String,
    /// Why, as given.
    pub reason: String,
    /// Who asked, as the operator named themselves.
    pub requested_by: String,
    /// The admin client's address.
    pub requested_from: String,
    /// Seconds since the epoch.
    pub granted_at: u64,
    /// Seconds since the epoch.
    pub expires_at: u64,
    /// When it was revoked, if it was.
    pub revoked_at: Option<u64>,
    /// Who revoked it.
    pub revoked_by: Option<String>,
    /// `active`, `expired` or `revoked` when listed.
    #[serde(default)]
    pub status: String,
    /// Decisions it lifted.
    #[serde(default)]
    pub uses: u64,
    /// Whether its expiry has been recorded.
    #[serde(skip)]
    expiry_recorded: bool,
}

/// The scope of every grant, as recorded.
pub const GRANTS: &str = "AuthorizationPolicy denials of the workload's inbound traffic are lifted (PeerAuthentication, JWT validation and egress unchanged)";

impl Grant {
    fn status_at(&self, now: u64) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if now >= self.expires_at {
            "expired"
        } else {
            "active"
        }
    }

    fn record(&self) -> Map<String, Value> {
        let mut f = Map::new();
        f.insert("grant".into(), self.id.clone().into());
        f.insert("workload".into(), self.workload.clone().into());
        f.insert("grants".into(), self.grants.clone().into());
        f.insert("reason".into(), self.reason.clone().into());
        f.insert("requestedBy".into(), self.requested_by.clone().into());
        f.insert("requestedFrom".into(), self.requested_from.clone().into());
        f.insert("grantedAt".into(), self.granted_at.into());
        f.insert("expiresAt".into(), self.expires_at.into());
        f
    }
}

/// A request for a grant, as the admin API receives it.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrantRequest {
    /// `namespace/name`.
    pub workload: String,
    /// The grant's lifetime, seconds.
    pub ttl_seconds: u64,
    /// Why.
    pub reason: String,
    /// Who asks.
    pub requested_by: String,
}

/// Why a grant or a revocation was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BreakGlassError {
    /// Bad input: which field and why.
    #[error("{0}")]
    Invalid(String),
    /// No such workload here, or no such grant.
    #[error("{0}")]
    NotFound(String),
    /// The workload already has an active grant.
    #[error("{0}")]
    Conflict(String),
    /// No audit trail, or it could not be written: nothing is granted unrecorded.
    #[error("{0}")]
    Unrecorded(String),
}

/// A lifted decision: which grant lifted it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Lifted {
    pub(crate) grant: String,
    /// When the grant ends (seconds since the epoch).
    pub(crate) expires_at: u64,
}

/// The grants of one process.
#[derive(Default)]
pub struct BreakGlass {
    grants: Mutex<Vec<Grant>>,
    /// Grants made so far (ids are `bg-<time>-<n>`).
    made: std::sync::atomic::AtomicU64,
    audit: Option<Box<dyn AuditSink>>,
}

/// Now, in seconds since the epoch.
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn printable(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

impl BreakGlass {
    /// A registry that records to `audit`. Without one, every grant is refused.
    pub fn new(audit: Option<Box<dyn AuditSink>>) -> BreakGlass {
        BreakGlass {
            audit,
            ..BreakGlass::default()
        }
    }

    fn append(&self, kind: &str, fields: Map<String, Value>) -> Result<(), BreakGlassError> {
        let Some(audit) = &self.audit else {
            return Err(BreakGlassError::Unrecorded(
                "no audit trail: break-glass needs one (ward up runs without --no-audit)".into(),
            ));
        };
        audit
            .append(kind, fields)
            .map_err(|e| BreakGlassError::Unrecorded(format!("audit trail not written: {e}")))
    }

    /// Grant `req` at `now` (seconds since the epoch) if it is valid, `known` says the workload
    /// runs here, and it is recorded first.
    pub fn grant(
        &self,
        req: &GrantRequest,
        from: &str,
        known: &dyn Fn(&str) -> bool,
        now: u64,
    ) -> Result<Grant, BreakGlassError> {
        let invalid = |s: String| Err(BreakGlassError::Invalid(s));
        if req.ttl_seconds == 0 || req.ttl_seconds > MAX_TTL.as_secs() {
            return invalid(format!(
                "ttl: {}s is not between 1s and {}h (the cap)",
                req.ttl_seconds,
                MAX_TTL.as_secs() / 3600
            ));
        }
        let reason = req.reason.trim();
        let n = reason.chars().count();
        if !(REASON_MIN..=REASON_MAX).contains(&n) || !printable(reason) {
            return invalid(format!(
                "reason: want {REASON_MIN} to {REASON_MAX} printable characters, got {n}"
            ));
        }
        let by = req.requested_by.trim();
        if by.is_empty() || by.len() > 100 || !printable(by) {
            return invalid("by: want who asks, 1 to 100 printable characters".into());
        }
        if !known(&req.workload) {
            return Err(BreakGlassError::NotFound(format!(
                "workload {:?}: no sidecar for it here",
                req.workload
            )));
        }
        let mut grants = self
            .grants
            .lock()
            .map_err(|_| BreakGlassError::Unrecorded("break-glass state unavailable".to_owned()))?;
        if let Some(g) = grants
            .iter()
            .find(|g| g.workload == req.workload && g.status_at(now) == "active")
        {
            return Err(BreakGlassError::Conflict(format!(
                "workload {}: grant {} is active until {}; revoke it first",
                g.workload, g.id, g.expires_at
            )));
        }
        let grant = Grant {
            id: format!(
                "bg-{now}-{}",
                self.made.load(std::sync::atomic::Ordering::Relaxed) + 1
            ),
            workload: req.workload.clone(),
            grants: GRANTS.to_owned(),
            reason: reason.to_owned(),
            requested_by: by.to_owned(),
            requested_from: from.to_owned(),
            granted_at: now,
            expires_at: now + req.ttl_seconds,
            revoked_at: None,
            revoked_by: None,
            status: "active".into(),
            uses: 0,
            expiry_recorded: false,
        };
        self.append("break_glass_granted", grant.record())?;
        self.made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(target: "audit", grant = %grant.id, workload = %grant.workload,
            reason = %grant.reason, requested_by = %grant.requested_by, expires_at = grant.expires_at,
            "break-glass granted");
        if grants.len() >= KEPT {
            if let Some(i) = grants.iter().position(|g| g.status_at(now) != "active") {
                grants.remove(i);
            }
        }
        grants.push(grant.clone());
        Ok(grant)
    }

    /// Revoke grant `id`, recorded first.
    pub fn revoke(&self, id: &str, by: &str, now: u64) -> Result<Grant, BreakGlassError> {
        let by = by.trim();
        if by.is_empty() || by.len() > 100 || !printable(by) {
            return Err(BreakGlassError::Invalid(
                "by: want who revokes, 1 to 100 printable characters".into(),
            ));
        }
        let mut grants = self
            .grants
            .lock()
            .map_err(|_| BreakGlassError::Unrecorded("break-glass state unavailable".to_owned()))?;
        let Some(g) = grants
            .iter_mut()
            .find(|g| g.id == id && g.status_at(now) == "active")
        else {
            return Err(BreakGlassError::NotFound(format!("no active grant {id:?}")));
        };
        let mut f = g.record();
        f.insert("revokedBy".into(), by.into());
        f.insert("uses".into(), g.uses.into());
        self.append("break_glass_revoked", f)?;
        g.revoked_at = Some(now);
        g.revoked_by = Some(by.to_owned());
        g.expiry_recorded = true;
        tracing::warn!(target: "audit", grant = %g.id, workload = %g.workload, revoked_by = by, "break-glass revoked");
        let mut out = g.clone();
        out.status = "revoked".into();
        Ok(out)
    }

    /// Every grant kept, with its status at `now`.
    pub fn list(&self, now: u64) -> Vec<Grant> {
        let grants = self.grants.lock().map(|g| g.clone()).unwrap_or_default();
        grants
            .into_iter()
            .map(|mut g| {
                g.status = g.status_at(now).to_owned();
                g
            })
            .collect()
    }

    /// Record the expiry of grants that ended by themselves since the last sweep, and let the
    /// trail checkpoint. Called about once a second.
    pub fn sweep(&self, now: u64) {
        let Ok(mut grants) = self.grants.lock() else {
            return;
        };
        for g in grants
            .iter_mut()
            .filter(|g| !g.expiry_recorded && g.status_at(now) == "expired")
        {
            let mut f = g.record();
            f.insert("uses".into(), g.uses.into());
            match self.append("break_glass_expired", f) {
                Ok(()) => {
                    g.expiry_recorded = true;
                    tracing::warn!(target: "audit", grant = %g.id, workload = %g.workload, uses = g.uses, "break-glass expired");
                }
                Err(e) => {
                    tracing::error!(grant = %g.id, error = %e, "break-glass expiry not recorded")
                }
            }
        }
        drop(grants);
        if let Some(a) = &self.audit {
            a.tick();
        }
    }

    /// Lift a denial of `workload`'s inbound traffic, if it has an active grant and the use is
    /// recorded. `what` describes the decision (never a token, a query string or a body).
    pub(crate) fn lift(
        &self,
        workload: &str,
        now: u64,
        what: impl FnOnce() -> Map<String, Value>,
    ) -> Option<Lifted> {
        let mut grants = self.grants.lock().ok()?;
        let g = grants
            .iter_mut()
            .find(|g| g.workload == workload && g.status_at(now) == "active")?;
        let mut f = what();
        f.insert("grant".into(), g.id.clone().into());
        f.insert("workload".into(), workload.into());
        match self.append("break_glass_use", f) {
            Ok(()) => {
                g.uses += 1;
                Some(Lifted {
                    grant: g.id.clone(),
                    expires_at: g.expires_at,
                })
            }
            Err(e) => {
                tracing::error!(grant = %g.id, error = %e, "break-glass use not recorded: the denial stands");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Default)]
    struct Trail(Mutex<Vec<(String, Map<String, Value>)>>, Mutex<bool>);

    impl AuditSink for Arc<Trail> {
        fn append(&self, kind: &str, fields: Map<String, Value>) -> Result<(), String> {
            if *self.1.lock().unwrap() {
                return Err("disk full".into());
            }
            self.0.lock().unwrap().push((kind.to_owned(), fields));
            Ok(())
        }
    }

    fn req(workload: &str, ttl: u64, reason: &str) -> GrantRequest {
        GrantRequest {
            workload: workload.into(),
            ttl_seconds: ttl,
            reason: reason.into(),
            requested_by: "alice".into(),
        }
    }

    const WHY: &str = "INC-42: EHR sync blocked by a bad policy";

    #[test]
    fn a_grant_is_recorded_lifts_denials_and_ends_by_itself() {
        let trail = Arc::new(Trail::default());
        let bg = BreakGlass::new(Some(Box::new(trail.clone())));
        let known = |w: &str| w == "app/srv";
        let g = bg
            .grant(&req("app/srv", 60, WHY), "127.0.0.1", &known, 1000)
            .unwrap();
        assert_eq!((g.expires_at, g.status.as_str()), (1060, "active"));
        let kinds = |t: &Trail| {
            t.0.lock()
                .unwrap()
                .iter()
                .map(|(k, _)| k.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(kinds(&trail), ["break_glass_granted"]);
        assert_eq!(trail.0.lock().unwrap()[0].1["reason"], WHY);
        // Active: lifted, and the use recorded; another workload: not.
        assert!(bg.lift("app/srv", 1059, Map::new).is_some());
        assert!(bg.lift("app/cli", 1059, Map::new).is_none());
        // A second grant for the same workload is refused while one is active.
        assert!(matches!(
            bg.grant(&req("app/srv", 60, WHY), "127.0.0.1", &known, 1001),
            Err(BreakGlassError::Conflict(_))
        ));
        // At expiry it ends, and the sweep records it once.
        assert!(bg.lift("app/srv", 1060, Map::new).is_none());
        bg.sweep(1061);
        bg.sweep(1062);
        assert_eq!(
            kinds(&trail),
            [
                "break_glass_granted",
                "break_glass_use",
                "break_glass_expired"
            ]
        );
        assert_eq!(bg.list(1062)[0].status, "expired");
        assert_eq!(bg.list(1062)[0].uses, 1);
        // Revoked early: ends at once.
        let g = bg
            .grant(&req("app/srv", 60, WHY), "127.0.0.1", &known, 2000)
            .unwrap();
        assert!(bg.revoke(&g.id, "", 2001).is_err());
        assert_eq!(bg.revoke(&g.id, "bob", 2001).unwrap().status, "revoked");
        assert!(bg.lift("app/srv", 2002, Map::new).is_none());
        assert!(matches!(
            bg.revoke(&g.id, "bob", 2002),
            Err(BreakGlassError::NotFound(_))
        ));
    }

    #[test]
    fn bad_input_and_an_unwritable_trail_grant_nothing() {
        let known = |w: &str| w == "app/srv";
        let none = BreakGlass::default();
        assert!(matches!(
            none.grant(&req("app/srv", 60, WHY), "x", &known, 0),
            Err(BreakGlassError::Unrecorded(_))
        ));
        let trail = Arc::new(Trail::default());
        let bg = BreakGlass::new(Some(Box::new(trail.clone())));
        for (r, want) in [
            (req("app/srv", 0, WHY), "ttl"),
            (req("app/srv", 4 * 3600 + 1, WHY), "cap"),
            (req("app/srv", 60, "because"), "reason"),
            (req("app/srv", 60, "line one\nline two"), "reason"),
            (req("app/srv", 60, &"x".repeat(501)), "reason"),
        ] {
            let e = bg.grant(&r, "x", &known, 0).unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
        }
        assert!(matches!(
            bg.grant(&req("app/ghost", 60, WHY), "x", &known, 0),
            Err(BreakGlassError::NotFound(_))
        ));
        let mut anon = req("app/srv", 60, WHY);
        anon.requested_by = " ".into();
        assert!(bg.grant(&anon, "x", &known, 0).is_err());
        assert!(trail.0.lock().unwrap().is_empty());
        // The trail fails: no grant; a grant whose use cannot be written lifts nothing.
        *trail.1.lock().unwrap() = true;
        assert!(matches!(
            bg.grant(&req("app/srv", 60, WHY), "x", &known, 0),
            Err(BreakGlassError::Unrecorded(_))
        ));
        *trail.1.lock().unwrap() = false;
        bg.grant(&req("app/srv", 60, WHY), "x", &known, 0).unwrap();
        *trail.1.lock().unwrap() = true;
        assert!(bg.lift("app/srv", 1, Map::new).is_none());
        assert_eq!(bg.list(1)[0].uses, 0);
    }
}
