//! Outlier detection of one destination (Envoy's per-cluster outlier detector, as Istio sets it
//! from a DestinationRule's `outlierDetection`; docs/routing.md, "Connection pool and outlier
//! detection"). Pure: each attempt's outcome and the time are passed in; the detector says
//! which endpoints are ejected. The socket code (`egress_http/limits.rs`) leaves them out of
//! the load balancer's choice.
//!
//! Envoy's rules (envoyproxy.io `intro/arch_overview/upstream/outlier`):
//! - consecutive 5xx and consecutive gateway failures (502, 503, 504) eject inline, the moment
//!   the count is reached; a failure to get any response (connect failure, reset, timeout) is a
//!   local-origin error that counts as both when `splitExternalLocalOriginErrors` is off;
//! - "If no hosts have been ejected, Envoy will eject the host immediately. Otherwise, it
//!   checks to make sure the number of ejected hosts is below the allowed threshold"
//!   (`max_ejection_percent`);
//! - the ejection lasts `base_ejection_time` times the number of times the host was ejected in
//!   a row, at most `max_ejection_time` (300s); the host returns at the first sweep
//!   (`interval`) after that;
//! - "If the host is healthy during that check, the ejection time multiplier is decremented";
//! - with `split_external_local_origin_errors` (Istio's `splitExternalLocalOriginErrors`),
//!   local-origin errors no longer count as 5xx or gateway errors: they have their own counter,
//!   `consecutive_local_origin_failure` (default 5), which any response from the host resets
//!   (the connection succeeded);
//! - Istio sets the cluster's `healthy_panic_threshold` from `minHealthPercent`: when the share
//!   of hosts not ejected falls below it, the load balancer uses every host ([`panics`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ward_config::traffic_policy::{Outlier, MAX_EJECTION_TIME};

/// What one attempt to an endpoint gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A response with this status.
    Status(u16),
    /// No response: the connection failed, was reset, or the attempt timed out.
    LocalFailure,
}

/// An ejection that just happened (to log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ejection {
    /// How long, at least (the next sweep after it brings the endpoint back).
    pub(crate) duration: Duration,
    /// Which counter reached its threshold.
    pub(crate) cause: &'static str,
}

#[derive(Clone, Copy, Debug, Default)]
struct Host {
    five_xx: u32,
    gateway: u32,
    /// Consecutive local-origin failures (counted only when they are split from the others).
    local: u32,
    /// When it was ejected, while it is.
    ejected_at: Option<Instant>,
    /// Ejections in a row (the ejection time's multiplier).
    ejections: u32,
}

/// The detector of one destination: per-endpoint counters and ejections.
#[derive(Clone, Debug)]
pub(crate) struct Detector {
    policy: Outlier,
    hosts: HashMap<SocketAddr, Host>,
    /// The last sweep (sweeps happen every `interval` after the detector was made).
    swept: Instant,
}

impl Detector {
    /// A detector with no history, its first sweep one interval after `now`.
    pub(crate) fn new(policy: Outlier, now: Instant) -> Detector {
        Detector {
            policy,
            hosts: HashMap::new(),
            swept: now,
        }
    }

    /// New settings (a new config) for the same history.
    pub(crate) fn set_policy(&mut self, policy: Outlier) {
        self.policy = policy;
    }

    fn ejection_time(&self, ejections: u32) -> Duration {
        let base = self.policy.base_ejection_time;
        base.saturating_mul(ejections.max(1))
            .min(MAX_EJECTION_TIME.max(base))
    }

    /// Run the sweeps due by `now`: ejected endpoints whose time is up come back; endpoints
    /// healthy at a sweep have their multiplier decremented.
    fn sweep(&mut self, now: Instant) {
        let interval = self.policy.interval.max(Duration::from_millis(1));
        let elapsed = now.saturating_duration_since(self.swept);
        let due = elapsed.as_nanos() / interval.as_nanos();
        if due == 0 {
            return;
        }
        let due = u32::try_from(due).unwrap_or(u32::MAX);
        let first = self.swept + interval;
        let last = self.swept + interval.saturating_mul(due);
        let times: HashMap<SocketAddr, Duration> = self
            .hosts
            .iter()
            .map(|(a, h)| (*a, self.ejection_time(h.ejections)))
            .collect();
        for (addr, host) in &mut self.hosts {
            // Healthy sweeps since `from` (inclusive) up to `last`.
            let healthy_since = |from: Instant| -> u32 {
                if from > last {
                    return 0;
                }
                let n = last.saturating_duration_since(from).as_nanos() / interval.as_nanos();
                u32::try_from(n + 1).unwrap_or(u32::MAX)
            };
            match host.ejected_at {
                Some(at) => {
                    let until = at + times.get(addr).copied().unwrap_or_default();
                    if until > last {
                        continue;
                    }
                    // It returns at the first sweep at or after `until`; later sweeps find it
                    // healthy.
                    let wait = until.saturating_duration_since(first).as_nanos();
                    let k = wait.div_ceil(interval.as_nanos());
                    let back = first + interval.saturating_mul(u32::try_from(k).unwrap_or(0));
                    host.ejected_at = None;
                    host.five_xx = 0;
                    host.gateway = 0;
                    host.local = 0;
                    let later = healthy_since(back + interval);
                    host.ejections = host.ejections.saturating_sub(later);
                }
                None => {
                    host.ejections = host.ejections.saturating_sub(healthy_since(first));
                }
            }
        }
        self.swept = last;
    }

    /// The endpoints ejected at `now`.
    pub(crate) fn ejected(&mut self, now: Instant) -> Vec<SocketAddr> {
        self.sweep(now);
        self.hosts
            .iter()
            .filter(|(_, h)| h.ejected_at.is_some())
            .map(|(a, _)| *a)
            .collect()
    }

    /// Record an attempt's outcome at `endpoint`, one of `endpoints` endpoints of the
    /// destination; an ejection it causes is returned.
    pub(crate) fn record(
        &mut self,
        endpoint: SocketAddr,
        outcome: Outcome,
        endpoints: usize,
        now: Instant,
    ) -> Option<Ejection> {
        self.sweep(now);
        let ejected_now = self
            .hosts
            .values()
            .filter(|h| h.ejected_at.is_some())
            .count();
        let host = self.hosts.entry(endpoint).or_default();
        if host.ejected_at.is_some() {
            // An answer from before the ejection, arriving late.
            return None;
        }
        let split = self.policy.split_local_origin;
        match outcome {
            Outcome::LocalFailure if split => {
                host.local = host.local.saturating_add(1);
            }
            Outcome::LocalFailure => {
                host.five_xx = host.five_xx.saturating_add(1);
                host.gateway = host.gateway.saturating_add(1);
            }
            Outcome::Status(s) => {
                // A response: the connection to the host worked.
                host.local = 0;
                if (500..600).contains(&s) {
                    host.five_xx = host.five_xx.saturating_add(1);
                    host.gateway = if matches!(s, 502..=504) {
                        host.gateway.saturating_add(1)
                    } else {
                        0
                    };
                } else {
                    host.five_xx = 0;
                    host.gateway = 0;
                }
            }
        }
        let reached = |threshold: Option<u32>, count: u32| threshold.is_some_and(|t| count >= t);
        let local = split.then_some(self.policy.consecutive_local_origin);
        let cause = if reached(self.policy.consecutive_5xx, host.five_xx) {
            "consecutive5xxErrors"
        } else if reached(self.policy.consecutive_gateway, host.gateway) {
            "consecutiveGatewayErrors"
        } else if reached(local, host.local) {
            "consecutiveLocalOriginFailures"
        } else {
            return None;
        };
        let allowed = ejected_now == 0
            || (ejected_now + 1) * 100
                <= usize::try_from(self.policy.max_ejection_percent).unwrap_or(100) * endpoints;
        // Counted again from zero either way (Envoy resets a host's counter when it reaches
        // the threshold).
        host.five_xx = 0;
        host.gateway = 0;
        host.local = 0;
        if !allowed {
            return None;
        }
        host.ejected_at = Some(now);
        host.ejections = host.ejections.saturating_add(1);
        let ejections = host.ejections;
        Some(Ejection {
            duration: self.ejection_time(ejections),
            cause,
        })
    }
}

/// Whether the load balancer ignores ejections (Envoy's panic mode): fewer than
/// `min_health_percent` of the destination's `endpoints` are not ejected. 0 turns it off.
pub(crate) fn panics(min_health_percent: u32, endpoints: usize, ejected: usize) -> bool {
    if min_health_percent == 0 || endpoints == 0 {
        return false;
    }
    let healthy = endpoints.saturating_sub(ejected);
    let threshold = usize::try_from(min_health_percent.min(100)).unwrap_or(100);
    healthy.saturating_mul(100) < threshold.saturating_mul(endpoints)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(five_xx: Option<u32>, gateway: Option<u32>, percent: u32) -> Outlier {
        Outlier {
            consecutive_5xx: five_xx,
            consecutive_gateway: gateway,
            interval: Duration::from_secs(1),
            base_ejection_time: Duration::from_secs(10),
            max_ejection_percent: percent,
            ..Outlier::default()
        }
    }

    /// `policy`, with local-origin failures split off and ejecting at `local`.
    fn split(five_xx: Option<u32>, local: u32) -> Outlier {
        Outlier {
            split_local_origin: true,
            consecutive_local_origin: local,
            ..policy(five_xx, None, 100)
        }
    }

    fn a(n: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, n], 80))
    }

    #[derive(Clone, Copy, Debug)]
    enum Step {
        /// At this many seconds, this endpoint gave this outcome: ejected or not.
        Record(u64, u8, Outcome, bool),
        /// At this many seconds, these endpoints are ejected.
        Ejected(u64, &'static [u8]),
    }

    use Outcome::{LocalFailure, Status};
    use Step::{Ejected, Record};

    #[test]
    fn endpoints_are_ejected_and_come_back_as_envoy_does() {
        /// (policy, endpoints in the destination, steps).
        type Case = (Outlier, usize, Vec<Step>);
        let cases: Vec<Case> = vec![
            // Three 5xx in a row eject; a success in between starts the count again.
            (
                policy(Some(3), None, 100),
                2,
                vec![
                    Record(0, 1, Status(500), false),
                    Record(0, 1, Status(503), false),
                    Record(0, 1, Status(200), false),
                    Record(0, 1, Status(500), false),
                    Record(0, 1, Status(500), false),
                    Record(0, 1, LocalFailure, true),
                    Ejected(0, &[1]),
                    // Back at the first sweep at or after 10s.
                    Ejected(9, &[1]),
                    Ejected(10, &[]),
                ],
            ),
            // Gateway errors: a 500 breaks the run, 502/503/504 and failures count.
            (
                policy(None, Some(2), 100),
                2,
                vec![
                    Record(0, 1, Status(502), false),
                    Record(0, 1, Status(500), false),
                    Record(0, 1, Status(504), false),
                    Record(0, 1, LocalFailure, true),
                    Ejected(1, &[1]),
                ],
            ),
            // 4xx are not errors.
            (
                policy(Some(1), Some(1), 100),
                1,
                vec![
                    Record(0, 1, Status(404), false),
                    Record(0, 1, Status(403), false),
                    Ejected(0, &[]),
                ],
            ),
            // The ejection grows with ejections in a row: 10s, then 20s.
            (
                policy(Some(1), None, 100),
                1,
                vec![
                    Record(0, 1, Status(500), true),
                    Ejected(10, &[]),
                    Record(10, 1, Status(500), true),
                    Ejected(29, &[1]),
                    Ejected(30, &[]),
                ],
            ),
            // Healthy sweeps bring the multiplier down: after a long healthy time the next
            // ejection is the base time again.
            (
                policy(Some(1), None, 100),
                1,
                vec![
                    Record(0, 1, Status(500), true),
                    Ejected(10, &[]),
                    Record(10, 1, Status(500), true),
                    Ejected(30, &[]),
                    Record(100, 1, Status(500), true),
                    Ejected(109, &[1]),
                    Ejected(110, &[]),
                ],
            ),
            // maxEjectionPercent: one is always allowed; a second needs the share.
            (
                policy(Some(1), None, 10),
                3,
                vec![
                    Record(0, 1, Status(500), true),
                    Record(0, 2, Status(500), false),
                    Ejected(0, &[1]),
                ],
            ),
            (
                policy(Some(1), None, 100),
                2,
                vec![
                    Record(0, 1, Status(500), true),
                    Record(0, 2, Status(500), true),
                    Ejected(0, &[1, 2]),
                ],
            ),
            (
                policy(Some(1), None, 50),
                4,
                vec![
                    Record(0, 1, Status(500), true),
                    Record(0, 2, Status(500), true),
                    Record(0, 3, Status(500), false),
                    Ejected(0, &[1, 2]),
                ],
            ),
            // Late answers from an ejected endpoint change nothing.
            (
                policy(Some(1), None, 100),
                2,
                vec![
                    Record(0, 1, Status(500), true),
                    Record(5, 1, Status(500), false),
                    Ejected(10, &[]),
                ],
            ),
            // Not split: connect failures count as 5xx (and gateway) errors.
            (
                policy(Some(2), None, 100),
                2,
                vec![
                    Record(0, 1, LocalFailure, false),
                    Record(0, 1, Status(503), true),
                ],
            ),
            // Split: local-origin failures have their own count; they neither count as nor
            // reset the 5xx one.
            (
                split(Some(2), 3),
                2,
                vec![
                    Record(0, 1, Status(500), false),
                    Record(0, 1, LocalFailure, false),
                    Record(0, 1, LocalFailure, false),
                    Record(0, 1, Status(500), true),
                    Ejected(0, &[1]),
                ],
            ),
            (
                split(None, 3),
                2,
                vec![
                    Record(0, 1, LocalFailure, false),
                    Record(0, 1, LocalFailure, false),
                    Record(0, 1, LocalFailure, true),
                    Ejected(0, &[1]),
                ],
            ),
            // Any response (even a 5xx) means the connection worked: the local count restarts.
            (
                split(None, 2),
                2,
                vec![
                    Record(0, 1, LocalFailure, false),
                    Record(0, 1, Status(500), false),
                    Record(0, 1, LocalFailure, false),
                    Record(0, 1, LocalFailure, true),
                ],
            ),
            // Neither counter set: nothing is ever ejected.
            (
                policy(None, None, 100),
                1,
                vec![
                    Record(0, 1, Status(500), false),
                    Record(0, 1, LocalFailure, false),
                    Ejected(0, &[]),
                ],
            ),
        ];
        let t0 = Instant::now();
        for (i, (policy, endpoints, steps)) in cases.into_iter().enumerate() {
            let mut d = Detector::new(policy, t0);
            for (n, step) in steps.into_iter().enumerate() {
                match step {
                    Record(s, ep, outcome, want) => {
                        let got = d.record(a(ep), outcome, endpoints, t0 + Duration::from_secs(s));
                        assert_eq!(got.is_some(), want, "case {i} step {n} {step:?}");
                    }
                    Ejected(s, want) => {
                        let mut got = d.ejected(t0 + Duration::from_secs(s));
                        got.sort();
                        let want: Vec<SocketAddr> = want.iter().map(|n| a(*n)).collect();
                        assert_eq!(got, want, "case {i} step {n} {step:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn below_min_health_percent_the_balancer_ignores_ejections() {
        // (minHealthPercent, endpoints, ejected, panics)
        let cases = [
            (0, 4, 4, false),
            (50, 4, 2, false),
            (50, 4, 3, true),
            (51, 4, 2, true),
            (100, 4, 0, false),
            (100, 4, 1, true),
            (10, 1, 1, true),
            (10, 0, 0, false),
            (150, 2, 0, false),
        ];
        for (percent, endpoints, ejected, want) in cases {
            assert_eq!(
                panics(percent, endpoints, ejected),
                want,
                "{percent}% of {endpoints} with {ejected} ejected"
            );
        }
    }

    #[test]
    fn ejection_time_is_capped() {
        let mut d = Detector::new(policy(Some(1), None, 100), Instant::now());
        assert_eq!(d.ejection_time(1), Duration::from_secs(10));
        assert_eq!(d.ejection_time(100), MAX_EJECTION_TIME);
        d.set_policy(Outlier {
            base_ejection_time: Duration::from_secs(600),
            ..policy(Some(1), None, 100)
        });
        assert_eq!(d.ejection_time(3), Duration::from_secs(600));
    }
}
