//! Leader election among control plane replicas, on a `coordination.k8s.io/v1` Lease in the
//! control plane's namespace (the protocol of client-go's `leaderelection` package, described
//! at <https://kubernetes.io/docs/concepts/architecture/leases/>): the holder renews
//! `spec.renewTime` every retry period; a candidate takes the Lease over once the record has not
//! changed for `leaseDurationSeconds` (measured on its own clock from when it saw the record
//! change, so clock skew between replicas does not matter); a write that lost a race gets 409
//! Conflict (the update carries the resourceVersion it read) and changes nothing. A leader that
//! could not renew for the renew deadline stops leading before its Lease can expire, so two
//! replicas never both believe they lead (given clocks that run at the same rate).
//!
//! Every replica serves proxies, the CA and the webhooks; only the leader writes to the API
//! server (Events, the webhooks' `caBundle`, the root ConfigMaps). The decision is
//! [`decide`], pure; [`Elector::run`] carries it out.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::watch;
use tokio::time::Instant;

/// The Lease's name (in the control plane's namespace).
pub const LEASE_NAME: &str = "ward-control-plane";

/// The timings, client-go's defaults unless set (`--leader-*` flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long a record must stay unchanged before a candidate takes the Lease over; written
    /// into the Lease (whole seconds, at least 1).
    pub lease_duration: Duration,
    /// How long the leader keeps leading without a successful renewal.
    pub renew_deadline: Duration,
    /// How often every replica looks at (and the leader renews) the Lease.
    pub retry_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl Timing {
    /// Checks `lease_duration > renew_deadline > retry_period > 0` (client-go's rule) and
    /// `renew_deadline + retry_period <= lease_duration`; the error names the flag.
    pub fn check(&self) -> Result<(), String> {
        if self.lease_duration.as_secs() < 1 || self.lease_duration.subsec_nanos() != 0 {
            return Err("--leader-lease-duration must be whole seconds, at least 1s".into());
        }
        if self.renew_deadline >= self.lease_duration {
            return Err(
                "--leader-renew-deadline must be shorter than --leader-lease-duration".into(),
            );
        }
        if self.retry_period.is_zero() || self.retry_period >= self.renew_deadline {
            return Err(
                "--leader-retry-period must be above zero and shorter than --leader-renew-deadline"
                    .into(),
            );
        }
        // A leader sleeps one retry period at most between rounds: kept within the lease
        // duration with the renew deadline, as a margin for its clock and the API server's
        // latency.
        if self.renew_deadline + self.retry_period > self.lease_duration {
            return Err(
                "--leader-renew-deadline plus --leader-retry-period must not exceed \
                        --leader-lease-duration"
                    .into(),
            );
        }
        Ok(())
    }
}

/// What a replica knows of the Lease when it decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// `spec.holderIdentity` (empty or absent: released).
    pub holder: Option<String>,
    /// `spec.leaseDurationSeconds`, else this replica's own.
    pub lease_duration: Option<Duration>,
    /// How long ago, on this replica's clock, it first saw the record as it is now.
    pub unchanged_for: Duration,
}

/// What to do with the Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// There is none: create it, held by us.
    Create,
    /// We hold it: renew it.
    Renew,
    /// Released or expired: take it over (one more transition).
    Acquire,
    /// Someone else holds it and it has not expired: follow, and look again.
    Follow {
        /// Who leads.
        holder: String,
    },
}

/// The decision of replica `me` about the Lease it observed (`None`: no Lease), with its own
/// lease duration for a Lease that names none.
pub fn decide(me: &str, lease: Option<&Observed>, own_duration: Duration) -> Decision {
    let Some(lease) = lease else {
        return Decision::Create;
    };
    match lease.holder.as_deref() {
        None | Some("") => Decision::Acquire,
        Some(h) if h == me => Decision::Renew,
        Some(h) => {
            let duration = lease.lease_duration.unwrap_or(own_duration);
            if lease.unchanged_for >= duration {
                Decision::Acquire
            } else {
                Decision::Follow {
                    holder: h.to_owned(),
                }
            }
        }
    }
}

/// Whether a leader whose last successful renewal was `since_renewal` ago still leads.
pub fn still_leading(since_renewal: Duration, timing: &Timing) -> bool {
    since_renewal < timing.renew_deadline
}

/// The identity of a replica: `POD_NAME` where set (the Deployment sets it), else the host name
/// and process id.
pub fn default_identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME") {
        if !pod.is_empty() {
            return pod;
        }
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "ward".into());
    format!("{host}_{}", std::process::id())
}

/// One replica's elector.
pub struct Elector {
    api: Api<Lease>,
    identity: String,
    timing: Timing,
    /// The record last seen (holder, renewTime, resourceVersion) and when it was first seen so.
    seen: Option<(String, Instant)>,
    /// When this replica last wrote the Lease successfully as its holder.
    renewed: Option<Instant>,
}

impl Elector {
    /// An elector for Lease [`LEASE_NAME`] in `namespace`.
    pub fn new(client: Client, namespace: &str, identity: String, timing: Timing) -> Elector {
        Elector {
            api: Api::namespaced(client, namespace),
            identity,
            timing,
            seen: None,
            renewed: None,
        }
    }

    /// This replica's identity (the Lease's `holderIdentity` while it leads).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Takes part in the election until `shutdown`, telling `leading` whether this replica
    /// leads. On shutdown a leader releases the Lease, so another replica takes over at once.
    pub async fn run(mut self, leading: watch::Sender<bool>, mut shutdown: watch::Receiver<bool>) {
        loop {
            // A round that hangs (an API server that accepts and never answers, or a loaded
            // one) ends at the leader's renew deadline, or after a renew deadline for a follower.
            let limit = match self.renewed {
                Some(r) if self.leading_still() => self
                    .timing
                    .renew_deadline
                    .saturating_sub(r.elapsed())
                    .max(Duration::from_millis(1)),
                _ => self.timing.renew_deadline,
            };
            let now_leading = match tokio::time::timeout(limit, self.round()).await {
                Ok(l) => l,
                Err(_) => {
                    tracing::warn!(target: "leader", "the API server did not answer in time");
                    self.leading_still()
                }
            };
            leading.send_if_modified(|l| {
                let changed = *l != now_leading;
                if changed {
                    tracing::info!(target: "leader", identity = %self.identity, leading = now_leading, "leadership changed");
                }
                *l = now_leading;
                changed
            });
            // A leader looks again no later than its renew deadline.
            let mut wait = self.timing.retry_period;
            if let (true, Some(r)) = (now_leading, self.renewed) {
                wait = wait.min(self.timing.renew_deadline.saturating_sub(r.elapsed()));
            }
            let stop = tokio::select! {
                _ = tokio::time::sleep(wait) => false,
                _ = shutdown.wait_for(|s| *s) => true,
            };
            if stop {
                let was_leading = *leading.borrow();
                if was_leading {
                    self.release().await;
                    leading.send_replace(false);
                }
                return;
            }
        }
    }

    /// Whether the last renewal is recent enough to keep leading.
    fn leading_still(&self) -> bool {
        self.renewed
            .is_some_and(|r| still_leading(r.elapsed(), &self.timing))
    }

    /// One look at the Lease, and the write it calls for; whether this replica leads after it.
    async fn round(&mut self) -> bool {
        // A renewal counts from before its request: the others measure the Lease's age from
        // when they see the write, which is later.
        let started = Instant::now();
        let leading_before = self.leading_still();
        let current = match self.api.get_opt(LEASE_NAME).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(target: "leader", error = %e, "cannot read the Lease");
                return leading_before;
            }
        };
        let observed = current.as_ref().map(|l| self.observe(l));
        let decision = decide(
            &self.identity,
            observed.as_ref(),
            self.timing.lease_duration,
        );
        let written = match &decision {
            Decision::Follow { .. } => {
                self.renewed = None;
                return false;
            }
            Decision::Create => self.create().await,
            Decision::Renew | Decision::Acquire => match current {
                Some(lease) => self.update(lease, decision == Decision::Acquire).await,
                None => false,
            },
        };
        if written {
            if !leading_before && decision != Decision::Renew {
                tracing::info!(target: "leader", identity = %self.identity, ?decision, "took the Lease");
            }
            self.renewed = Some(started);
            return true;
        }
        self.leading_still()
    }

    /// The record as this replica sees it, and for how long it has been so.
    fn observe(&mut self, lease: &Lease) -> Observed {
        let spec = lease.spec.clone().unwrap_or_default();
        let key = format!(
            "{}|{}|{}",
            spec.holder_identity.as_deref().unwrap_or(""),
            spec.renew_time
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default(),
            lease.metadata.resource_version.as_deref().unwrap_or("")
        );
        let since = match &self.seen {
            Some((k, at)) if *k == key => *at,
            _ => {
                let now = Instant::now();
                self.seen = Some((key, now));
                now
            }
        };
        Observed {
            holder: spec.holder_identity,
            lease_duration: spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs),
            unchanged_for: since.elapsed(),
        }
    }

    fn spec(&self, transitions: i32, acquired: Option<MicroTime>) -> LeaseSpec {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.timing.lease_duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    async fn create(&mut self) -> bool {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(LEASE_NAME.into()),
                labels: Some(
                    [(
                        crate::install::MANAGED_BY.0.to_owned(),
                        crate::install::MANAGED_BY.1.to_owned(),
                    )]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(self.spec(0, None)),
        };
        match self.api.create(&PostParams::default(), &lease).await {
            Ok(_) => true,
            Err(e) => {
                if !is_conflict(&e) {
                    tracing::warn!(target: "leader", error = %e, "cannot create the Lease");
                }
                false
            }
        }
    }

    /// Renews (or, with `acquire`, takes over) `lease`, conditional on its resourceVersion.
    async fn update(&mut self, mut lease: Lease, acquire: bool) -> bool {
        let old = lease.spec.clone().unwrap_or_default();
        let transitions = old.lease_transitions.unwrap_or(0);
        lease.spec = Some(if acquire {
            self.spec(transitions.saturating_add(1), None)
        } else {
            self.spec(transitions, old.acquire_time)
        });
        match self
            .api
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => true,
            Err(e) => {
                if !is_conflict(&e) {
                    tracing::warn!(target: "leader", error = %e, "cannot write the Lease");
                }
                false
            }
        }
    }

    /// Gives the Lease up (holder cleared, expiring at once), if this replica still holds it.
    async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(LEASE_NAME).await else {
            return;
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
        lease.spec = Some(spec);
        match self
            .api
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                tracing::info!(target: "leader", identity = %self.identity, "released the Lease")
            }
            Err(e) => tracing::warn!(target: "leader", error = %e, "cannot release the Lease"),
        }
        self.renewed = None;
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, duration: Option<u64>, unchanged: u64) -> Observed {
        Observed {
            holder: holder.map(str::to_owned),
            lease_duration: duration.map(Duration::from_secs),
            unchanged_for: Duration::from_secs(unchanged),
        }
    }

    #[test]
    fn decisions() {
        let own = Duration::from_secs(15);
        let follow = |h: &str| Decision::Follow { holder: h.into() };
        let cases: Vec<(&str, Option<Observed>, Decision)> = vec![
            ("no lease", None, Decision::Create),
            (
                "ours, fresh",
                Some(lease(Some("a"), Some(15), 0)),
                Decision::Renew,
            ),
            // Ours even if we missed renewals: renew (nobody else could have taken it without
            // changing the record).
            (
                "ours, stale",
                Some(lease(Some("a"), Some(15), 60)),
                Decision::Renew,
            ),
            (
                "released",
                Some(lease(None, Some(15), 0)),
                Decision::Acquire,
            ),
            (
                "released, empty",
                Some(lease(Some(""), Some(15), 0)),
                Decision::Acquire,
            ),
            (
                "other's, fresh",
                Some(lease(Some("b"), Some(15), 3)),
                follow("b"),
            ),
            (
                "other's, just short",
                Some(lease(Some("b"), Some(15), 14)),
                follow("b"),
            ),
            (
                "other's, expired",
                Some(lease(Some("b"), Some(15), 15)),
                Decision::Acquire,
            ),
            // The Lease's own duration wins over ours.
            (
                "other's, its duration",
                Some(lease(Some("b"), Some(4), 5)),
                Decision::Acquire,
            ),
            (
                "other's, longer duration",
                Some(lease(Some("b"), Some(60), 20)),
                follow("b"),
            ),
            // No duration in the Lease: ours.
            (
                "other's, no duration",
                Some(lease(Some("b"), None, 16)),
                Decision::Acquire,
            ),
            (
                "other's, no duration, fresh",
                Some(lease(Some("b"), None, 10)),
                follow("b"),
            ),
        ];
        for (what, observed, want) in cases {
            assert_eq!(decide("a", observed.as_ref(), own), want, "{what}");
        }
    }

    #[test]
    fn a_leader_that_cannot_renew_stops_before_its_lease_expires() {
        let t = Timing::default();
        assert!(still_leading(Duration::from_secs(0), &t));
        assert!(still_leading(Duration::from_secs(9), &t));
        assert!(!still_leading(Duration::from_secs(10), &t));
        // Stepping down (renew deadline) comes before anyone may take over (lease duration).
        assert!(t.renew_deadline < t.lease_duration);
    }

    #[test]
    fn timings_are_checked() {
        assert!(Timing::default().check().is_ok());
        let bad = |l: u64, r: u64, p: u64| Timing {
            lease_duration: Duration::from_millis(l),
            renew_deadline: Duration::from_millis(r),
            retry_period: Duration::from_millis(p),
        };
        assert!(bad(4000, 3000, 500).check().is_ok());
        assert!(bad(4000, 4000, 500)
            .check()
            .unwrap_err()
            .contains("--leader-renew-deadline"));
        assert!(bad(4000, 3000, 3000)
            .check()
            .unwrap_err()
            .contains("--leader-retry-period"));
        assert!(bad(500, 300, 100)
            .check()
            .unwrap_err()
            .contains("--leader-lease-duration"));
        assert!(bad(4500, 3000, 500)
            .check()
            .unwrap_err()
            .contains("whole seconds"));
        assert!(bad(4000, 3800, 500)
            .check()
            .unwrap_err()
            .contains("must not exceed"));
    }
}
