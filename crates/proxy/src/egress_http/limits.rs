//! A destination's DestinationRule `connectionPool` and `outlierDetection`, carried out for
//! the requests this proxy sends (docs/routing.md, "Connection pool and outlier detection").
//! The decisions are the pure `crate::breaker` and `crate::outlier`; this module keeps their
//! state per destination (service host, subset, port: Envoy's cluster) for one config, waits
//! for a connection when the breaker says so, and releases a request's place when its response
//! has been read to the end.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use hyper::body::{Frame, SizeHint};
use tokio::sync::Notify;
use ward_config::traffic_policy::{ConnectionPool, Outlier, Resilience};
use ward_config::Endpoint;

use super::Body;
use crate::breaker::{Admission, Breaker, Limits};
use crate::outlier::{Detector, Outcome};
use crate::refusal::{Refusal, ResponseFlag};

/// The breaker and detector state of one config's destinations. Locks are held for the map or
/// counter operation only, never across an await.
#[derive(Default)]
pub(super) struct Destinations {
    /// Breakers by destination key: added by the first request to a destination with a
    /// `connectionPool`; a request's [`Permit`] holds its gate until the response ends.
    gates: Mutex<HashMap<String, Arc<Gate>>>,
    /// Outlier detectors by destination key: added by the first outcome recorded.
    detectors: Mutex<HashMap<String, Detector>>,
    /// Retries in flight by destination key (`connectionPool.http.maxRetries`).
    retries: crate::tcp_pool::TcpPools,
}

/// One destination's breaker, and the signal that a request in flight ended.
struct Gate {
    breaker: Mutex<Breaker>,
    /// Notified (all waiters) each time a request finishes; queued requests then try again.
    freed: Notify,
}

/// A request's place in its destination's breaker, released when dropped.
pub(super) struct Permit {
    gate: Arc<Gate>,
    http1: bool,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Ok(mut b) = self.gate.breaker.lock() {
            b.finish(self.http1);
        }
        self.gate.freed.notify_waiters();
    }
}

/// A queued request; gives its place in the queue back if dropped before it starts (its
/// deadline passed, or the client went away).
struct Queued {
    gate: Arc<Gate>,
    done: bool,
}

impl Drop for Queued {
    fn drop(&mut self) {
        if !self.done {
            if let Ok(mut b) = self.gate.breaker.lock() {
                b.give_up();
            }
        }
    }
}

/// What one request must respect at one destination.
#[derive(Clone, Debug)]
pub(super) struct Policy {
    /// `host|subset|port`.
    pub(super) key: String,
    /// The DestinationRule's `connectionPool` and `outlierDetection` for it.
    pub(super) resilience: Resilience,
    /// How many endpoints the destination has (for `maxEjectionPercent`).
    pub(super) endpoints: usize,
}

impl Policy {
    /// The connection pool settings, if any.
    pub(super) fn pool(&self) -> Option<&ConnectionPool> {
        self.resilience.pool.as_ref()
    }

    fn outlier(&self) -> Option<&Outlier> {
        self.resilience.outlier.as_ref()
    }
}

fn overflow(field: &str) -> (Refusal, String) {
    (
        Refusal::upstream(
            ResponseFlag::UpstreamOverflow,
            "upstream_reset_before_response_started{overflow}",
        )
        .with_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream connect error or disconnect/reset before headers. reset reason: overflow",
        ),
        format!("circuit breaker open: {field}"),
    )
}

impl Destinations {
    /// Take a place in the destination's breaker: at once, after waiting for a connection
    /// (until `deadline`), or 503 `UO`. `None` when the destination has no `connectionPool`.
    pub(super) async fn admit(
        &self,
        policy: &Policy,
        http1: bool,
        deadline: Option<Instant>,
    ) -> Result<Option<Permit>, (Refusal, String)> {
        let Some(pool) = policy.pool() else {
            return Ok(None);
        };
        let limits = Limits::of(pool);
        let gate = {
            let Ok(mut gates) = self.gates.lock() else {
                return Ok(None);
            };
            gates
                .entry(policy.key.clone())
                .or_insert_with(|| {
                    Arc::new(Gate {
                        breaker: Mutex::new(Breaker::new(limits)),
                        freed: Notify::new(),
                    })
                })
                .clone()
        };
        let admission = match gate.breaker.lock() {
            Ok(mut b) => {
                b.set_limits(limits);
                b.arrive(http1)
            }
            Err(_) => return Ok(None),
        };
        match admission {
            Admission::Go => Ok(Some(Permit { gate, http1 })),
            Admission::Overflow(which) => Err(overflow(which.field())),
            Admission::Wait => {
                let mut queued = Queued {
                    gate: gate.clone(),
                    done: false,
                };
                loop {
                    // Made before the check, so a request finishing in between still wakes it.
                    let freed = gate.freed.notified();
                    let started = match gate.breaker.lock() {
                        Ok(mut b) => b.dequeue(http1),
                        Err(_) => true,
                    };
                    if started {
                        queued.done = true;
                        break;
                    }
                    match deadline {
                        Some(d) => {
                            let left = d.saturating_duration_since(Instant::now());
                            if tokio::time::timeout(left, freed).await.is_err() {
                                // The route's timeout passed while queued.
                                return Err((
                                    Refusal::upstream(
                                        ResponseFlag::UpstreamRequestTimeout,
                                        "response_timeout",
                                    )
                                    .with_reply(
                                        StatusCode::GATEWAY_TIMEOUT,
                                        "upstream request timeout",
                                    ),
                                    "timed out waiting for a connection (connectionPool)"
                                        .to_owned(),
                                ));
                            }
                        }
                        None => freed.await,
                    }
                }
                drop(queued);
                Ok(Some(Permit { gate, http1 }))
            }
        }
    }

    /// A place for one more retry to the destination, held while the retry is in flight; the
    /// error names `maxRetries` when that many are in flight already.
    pub(super) fn retry(&self, policy: &Policy) -> Result<crate::tcp_pool::Slot, String> {
        let max = policy.pool().and_then(|p| p.max_retries);
        self.retries.count(&policy.key, max).map_err(|n| {
            format!(
                "retry not made: {n} retries in flight to {}, connectionPool.http.maxRetries \
                 reached (overflow)",
                policy.key
            )
        })
    }

    /// The destination's endpoints without those its outlier detector has ejected; all of
    /// them when too few would be left (`minHealthPercent`, Envoy's panic threshold).
    pub(super) fn healthy<'e>(
        &self,
        policy: &Policy,
        endpoints: Vec<&'e Endpoint>,
    ) -> Vec<&'e Endpoint> {
        let Some(outlier) = policy.outlier() else {
            return endpoints;
        };
        let ejected = match self.detectors.lock() {
            Ok(mut d) => match d.get_mut(&policy.key) {
                Some(det) => det.ejected(Instant::now()),
                None => return endpoints,
            },
            Err(_) => return endpoints,
        };
        let out = endpoints
            .iter()
            .filter(|e| ejected.contains(&e.address))
            .count();
        if crate::outlier::panics(outlier.min_health_percent, endpoints.len(), out) {
            tracing::debug!(
                destination = %policy.key,
                ejected = out,
                endpoints = endpoints.len(),
                "below minHealthPercent: ejections ignored"
            );
            return endpoints;
        }
        endpoints
            .into_iter()
            .filter(|e| !ejected.contains(&e.address))
            .collect()
    }

    /// Record one try for the destination's outlier detector: a local-origin failure for
    /// each endpoint that could not be connected to, then `seen` (if the try says anything of
    /// an endpoint) for the endpoint that was reached last, unless that one failed to connect
    /// (already counted).
    pub(super) fn record_try(
        &self,
        policy: &Policy,
        seen: Option<Outcome>,
        log: &mut super::RequestLog,
    ) {
        let failed = std::mem::take(&mut log.connect_failures);
        for endpoint in &failed {
            self.record(policy, *endpoint, Outcome::LocalFailure);
        }
        if let (Some(seen), Some(far)) = (seen, log.far.as_ref()) {
            if !failed.contains(&far.endpoint) {
                self.record(policy, far.endpoint, seen);
            }
        }
    }

    /// Record one attempt's outcome at `endpoint` for the destination's outlier detector.
    fn record(&self, policy: &Policy, endpoint: SocketAddr, outcome: Outcome) {
        let Some(outlier) = policy.outlier() else {
            return;
        };
        let now = Instant::now();
        let Ok(mut detectors) = self.detectors.lock() else {
            return;
        };
        let det = detectors
            .entry(policy.key.clone())
            .or_insert_with(|| Detector::new(outlier.clone(), now));
        det.set_policy(outlier.clone());
        if let Some(e) = det.record(endpoint, outcome, policy.endpoints, now) {
            tracing::info!(
                destination = %policy.key,
                %endpoint,
                cause = e.cause,
                ejected_for = ?e.duration,
                "outlier detection ejected an endpoint"
            );
        }
    }
}

/// A response body that holds its request's [`Permit`] until it has been read to the end (or
/// dropped): an HTTP/1.1 connection is busy, and a request in flight, until then.
pub(super) struct Held {
    inner: Body,
    permit: Option<Permit>,
}

impl Held {
    /// `body`, holding `permit`.
    pub(super) fn new(inner: Body, permit: Option<Permit>) -> Held {
        Held { inner, permit }
    }
}

impl hyper::body::Body for Held {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.permit = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Istio's default `connectTimeout`.
pub(super) const DEFAULT_CONNECT_TIMEOUT: Duration = crate::tcp_pool::DEFAULT_CONNECT_TIMEOUT;
