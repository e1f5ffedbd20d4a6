//! The circuit breaker of one destination (Envoy's per-cluster circuit breakers, as Istio sets
//! them from a DestinationRule's `connectionPool`; docs/routing.md, "Connection pool and
//! outlier detection"). Pure: counts in, a decision out; the socket code
//! (`egress_http/limits.rs`) waits, answers 503 `UO`, and reports each request's end.
//!
//! Envoy's rules (envoyproxy.io `intro/arch_overview/upstream/circuit_breaking`):
//! - "Cluster maximum connections: the maximum number of connections that Envoy will establish
//!   to all hosts in an upstream cluster". An HTTP/1.1 connection carries one request at a
//!   time, so for HTTP/1.1 this bounds the requests being carried at once; the next ones wait
//!   for a connection.
//! - "Cluster maximum pending requests: the maximum number of requests that will be queued
//!   while waiting for a ready connection pool connection"; beyond it the request overflows.
//! - "Cluster maximum requests: the maximum number of requests that can be outstanding to all
//!   hosts in a cluster at any given time" (Istio's `http2MaxRequests`, for both protocols).
//!
//! Ward's HTTP/2 client connections are multiplexed and kept per downstream connection, so for
//! an HTTP/2 destination only the request limit applies.

/// The limits of one destination; `u32::MAX` where the config sets none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// HTTP/1.1 connections carrying a request at once (`tcp.maxConnections`).
    pub(crate) connections: u32,
    /// Requests waiting for a connection (`http.http1MaxPendingRequests`).
    pub(crate) pending: u32,
    /// Requests in flight (`http.http2MaxRequests`).
    pub(crate) requests: u32,
}

impl Limits {
    /// From a DestinationRule's connection pool (unset: no limit).
    pub(crate) fn of(pool: &ward_config::traffic_policy::ConnectionPool) -> Limits {
        Limits {
            connections: pool.max_connections.unwrap_or(u32::MAX),
            pending: pool.max_pending_requests.unwrap_or(u32::MAX),
            requests: pool.max_requests.unwrap_or(u32::MAX),
        }
    }
}

/// Which limit a refused request met (the access log's `error` names it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Overflow {
    /// `http2MaxRequests`.
    Requests,
    /// `http1MaxPendingRequests` (with `maxConnections` busy).
    Pending,
}

impl Overflow {
    /// The field, for the access log.
    pub(crate) fn field(self) -> &'static str {
        match self {
            Overflow::Requests => "connectionPool.http.http2MaxRequests",
            Overflow::Pending => "connectionPool.http.http1MaxPendingRequests",
        }
    }
}

/// What happens to a request that arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Send it now (it counts until [`Breaker::finish`]).
    Go,
    /// Queue it: call [`Breaker::dequeue`] when a request finishes, or [`Breaker::give_up`].
    Wait,
    /// Answer 503 `UO`.
    Overflow(Overflow),
}

/// The counts of one destination against its limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Breaker {
    limits: Limits,
    /// Requests in flight.
    active: u32,
    /// HTTP/1.1 requests in flight (each holds a connection).
    busy: u32,
    /// Requests queued for a connection.
    pending: u32,
}

impl Breaker {
    /// A destination with nothing in flight.
    pub(crate) fn new(limits: Limits) -> Breaker {
        Breaker {
            limits,
            active: 0,
            busy: 0,
            pending: 0,
        }
    }

    /// New limits (a new config) for the same counts.
    pub(crate) fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    fn can_start(&self, http1: bool) -> bool {
        self.active < self.limits.requests && (!http1 || self.busy < self.limits.connections)
    }

    fn start(&mut self, http1: bool) {
        self.active += 1;
        if http1 {
            self.busy += 1;
        }
    }

    /// A request arrives.
    pub(crate) fn arrive(&mut self, http1: bool) -> Admission {
        if self.active >= self.limits.requests {
            return Admission::Overflow(Overflow::Requests);
        }
        if self.can_start(http1) {
            self.start(http1);
            return Admission::Go;
        }
        if self.pending < self.limits.pending {
            self.pending += 1;
            return Admission::Wait;
        }
        Admission::Overflow(Overflow::Pending)
    }

    /// A queued request tries to start (after a request finished): `true` when it may, and it
    /// then counts as in flight.
    pub(crate) fn dequeue(&mut self, http1: bool) -> bool {
        if !self.can_start(http1) {
            return false;
        }
        self.pending = self.pending.saturating_sub(1);
        self.start(http1);
        true
    }

    /// A queued request stops waiting (its deadline passed, or the client left).
    pub(crate) fn give_up(&mut self) {
        self.pending = self.pending.saturating_sub(1);
    }

    /// A request in flight ended (its response was read to the end, or it failed).
    pub(crate) fn finish(&mut self, http1: bool) {
        self.active = self.active.saturating_sub(1);
        if http1 {
            self.busy = self.busy.saturating_sub(1);
        }
    }

    /// Requests in flight and queued (for tests and debugging).
    #[cfg(test)]
    fn counts(&self) -> (u32, u32, u32) {
        (self.active, self.busy, self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Debug)]
    enum Step {
        Arrive(bool),
        Dequeue(bool),
        GiveUp,
        Finish(bool),
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Got {
        Admit(Admission),
        Started(bool),
        Done,
    }

    const H1: bool = true;
    const H2: bool = false;

    fn limits(connections: u32, pending: u32, requests: u32) -> Limits {
        Limits {
            connections,
            pending,
            requests,
        }
    }

    #[test]
    fn requests_go_wait_or_overflow_as_envoys_breakers_say() {
        use Admission::*;
        use Step::*;
        let go = Got::Admit(Go);
        let wait = Got::Admit(Wait);
        let pending = Got::Admit(Overflow(super::Overflow::Pending));
        let requests = Got::Admit(Overflow(super::Overflow::Requests));
        /// (limits, steps with what each must give, counts at the end).
        type Case = (Limits, Vec<(Step, Got)>, (u32, u32, u32));
        let cases: Vec<Case> = vec![
            // The Istio circuit-breaking task: 1 connection, 1 pending: the third overflows.
            (
                limits(1, 1, u32::MAX),
                vec![(Arrive(H1), go), (Arrive(H1), wait), (Arrive(H1), pending)],
                (1, 1, 1),
            ),
            // The queued one starts when the first finishes, not before.
            (
                limits(1, 1, u32::MAX),
                vec![
                    (Arrive(H1), go),
                    (Arrive(H1), wait),
                    (Dequeue(H1), Got::Started(false)),
                    (Finish(H1), Got::Done),
                    (Dequeue(H1), Got::Started(true)),
                    (Arrive(H1), wait),
                ],
                (1, 1, 1),
            ),
            // A queued request that gives up frees its place in the queue.
            (
                limits(1, 1, u32::MAX),
                vec![
                    (Arrive(H1), go),
                    (Arrive(H1), wait),
                    (GiveUp, Got::Done),
                    (Arrive(H1), wait),
                ],
                (1, 1, 1),
            ),
            // No pending allowed beyond the default: u32::MAX.
            (
                limits(2, u32::MAX, u32::MAX),
                vec![(Arrive(H1), go), (Arrive(H1), go), (Arrive(H1), wait)],
                (2, 2, 1),
            ),
            // The request limit overflows at once, whatever the protocol.
            (
                limits(u32::MAX, u32::MAX, 2),
                vec![(Arrive(H2), go), (Arrive(H1), go), (Arrive(H2), requests)],
                (2, 1, 0),
            ),
            // HTTP/2 is multiplexed: the connection limit does not queue it.
            (
                limits(1, 0, u32::MAX),
                vec![(Arrive(H2), go), (Arrive(H2), go), (Arrive(H1), go)],
                (3, 1, 0),
            ),
            // No queue at all: pending 0 would be "unset" in the config, but a Limits of 0
            // overflows the second HTTP/1.1 request at once.
            (
                limits(1, 0, u32::MAX),
                vec![(Arrive(H1), go), (Arrive(H1), pending)],
                (1, 1, 0),
            ),
            // Finishing more than started never wraps.
            (
                limits(1, 1, 1),
                vec![(Finish(H1), Got::Done), (Arrive(H1), go)],
                (1, 1, 0),
            ),
        ];
        for (i, (limits, steps, end)) in cases.into_iter().enumerate() {
            let mut b = Breaker::new(limits);
            for (n, (step, want)) in steps.into_iter().enumerate() {
                let got = match step {
                    Arrive(h) => Got::Admit(b.arrive(h)),
                    Dequeue(h) => Got::Started(b.dequeue(h)),
                    GiveUp => {
                        b.give_up();
                        Got::Done
                    }
                    Finish(h) => {
                        b.finish(h);
                        Got::Done
                    }
                };
                assert_eq!(got, want, "case {i} step {n} {step:?}");
            }
            assert_eq!(b.counts(), end, "case {i} counts");
        }
    }

    #[test]
    fn unset_fields_are_no_limit() {
        let pool = ward_config::traffic_policy::ConnectionPool {
            max_connections: Some(3),
            ..Default::default()
        };
        assert_eq!(Limits::of(&pool), limits(3, u32::MAX, u32::MAX));
    }
}
