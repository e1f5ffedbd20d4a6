//! Admission at every listener: one accept loop for all of a process's listeners (HBONE, the
//! plaintext service ports, the egress listeners, the admin port, the DNS proxy's TCP port),
//! which refuses a connection that would take more than its share of the process's file
//! descriptors.
//!
//! The descriptor budget is process-wide, derived from the open-file limit (`RLIMIT_NOFILE`,
//! raised to the hard limit by `ward` at start):
//! - a **reserve** of `limit / 4` (at least 64, at most 4096) is never handed to accepted
//!   connections: it is left for the admin port, the control plane, the CA, listener sockets,
//!   JWKS fetches and outbound dials (HBONE pool, connections toward the apps);
//! - the rest is the **connection budget**, counted in connections at two descriptors each (the
//!   accepted socket and the one connection it usually opens toward an app or the next hop);
//! - every listener draws from that budget, and no listener may hold more than **half** of it,
//!   so a flood on one listener always leaves the other half to the others.
//!
//! Within its share, each listener caps open connections, and open connections per source
//! address (inbound listeners only: an egress listener's clients are the local app). A TLS
//! listener (HBONE) also caps connections still in their handshake, per listener and per source:
//! those are the ones anybody can open without a certificate, held for up to the handshake
//! timeout.
//!
//! A refused connection is reset at once (RST), counted in `ward_connections_refused_total`
//! and logged at most once per listener every [`LOG_EVERY`].
//!
//! Decide, then do: [`admit`] is pure; [`Gate::try_admit`] applies it under the listener's lock
//! and hands out a [`Permit`] that gives everything back when dropped.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::metrics::Metrics;

/// Refusals of one listener are logged at most this often; every one is counted.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Caps of one listener, set by `ward up` flags; the same for every listener of its kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open connections (including those in their handshake) on one listener.
    pub connections_per_listener: usize,
    /// Open connections from one source address on one inbound listener.
    pub connections_per_source: usize,
    /// Connections in their TLS handshake on one HBONE listener.
    pub handshakes_per_listener: usize,
    /// Connections in their TLS handshake from one source address on one HBONE listener.
    pub handshakes_per_source: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections_per_listener: 4096,
            connections_per_source: 512,
            handshakes_per_listener: 512,
            handshakes_per_source: 64,
        }
    }
}

/// The process-wide connection budget, derived from the open-file limit (see the module docs).
#[derive(Debug)]
pub struct FdBudget {
    limit: u64,
    reserve: u64,
    capacity: usize,
    /// Connections admitted and not yet closed; taken and given back by [`Permit`]s.
    used: AtomicUsize,
}

impl FdBudget {
    /// The budget of a process whose open-file limit is `limit`.
    pub fn from_limit(limit: u64) -> FdBudget {
        let reserve = (limit / 4).clamp(64, 4096).min(limit);
        let capacity = usize::try_from((limit - reserve) / 2).unwrap_or(usize::MAX);
        FdBudget {
            limit,
            reserve,
            capacity,
            used: AtomicUsize::new(0),
        }
    }

    /// The open-file limit it was derived from.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Descriptors kept back from accepted connections.
    pub fn reserve(&self) -> u64 {
        self.reserve
    }

    /// Connections the accepting listeners may hold together.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The most one listener may hold: half of the budget.
    pub fn listener_share(&self) -> usize {
        (self.capacity / 2).max(1)
    }

    /// Connections held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn try_take(&self) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u < self.capacity).then_some(u + 1)
            })
            .is_ok()
    }

    fn give_back(&self) {
        self.used.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the listeners of one process share: the caps and the budget.
#[derive(Clone, Debug)]
pub struct Admission {
    /// The per-listener caps.
    pub limits: Limits,
    /// The process-wide budget.
    pub budget: Arc<FdBudget>,
}

/// What a listener serves; the `listener` label of the refusal metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `<workload-ip>:15008`, mTLS then HTTP/2 CONNECT.
    Hbone,
    /// A workload port, plaintext.
    Plaintext,
    /// An egress listener the app dials.
    Outbound,
    /// The admin HTTP port.
    Admin,
    /// The DNS proxy's TCP port (`crate::dns`).
    Dns,
}

impl Kind {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Hbone => "hbone",
            Kind::Plaintext => "plaintext",
            Kind::Outbound => "outbound",
            Kind::Admin => "admin",
            Kind::Dns => "dns",
        }
    }
}

/// The caps one listener enforces; `None` means that cap does not apply to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// Open connections on the listener.
    pub connections: usize,
    /// Open connections from one source.
    pub connections_per_source: Option<usize>,
    /// Connections in their handshake (TLS listeners).
    pub handshakes: Option<usize>,
    /// Connections in their handshake from one source (TLS listeners).
    pub handshakes_per_source: Option<usize>,
}

impl Caps {
    /// The caps of a sidecar listener of `kind`, within its share of `budget`.
    pub fn for_kind(kind: Kind, limits: &Limits, budget: &FdBudget) -> Caps {
        let connections = limits.connections_per_listener.min(budget.listener_share());
        let inbound = matches!(kind, Kind::Hbone | Kind::Plaintext);
        let tls = kind == Kind::Hbone;
        Caps {
            connections,
            connections_per_source: inbound.then_some(limits.connections_per_source),
            handshakes: tls.then_some(limits.handshakes_per_listener),
            handshakes_per_source: tls.then_some(limits.handshakes_per_source),
        }
    }
}

/// What one listener holds when a connection arrives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    /// Open connections on the listener (handshaking ones included).
    pub connections: usize,
    /// Of those, still in their handshake.
    pub handshakes: usize,
    /// Open connections from the new connection's source.
    pub source_connections: usize,
    /// Of those, still in their handshake.
    pub source_handshakes: usize,
    /// Connections the process-wide budget can still give out; `None` when the listener does not
    /// draw from it (the admin port lives on the reserve).
    pub budget_left: Option<usize>,
}

/// Why a connection was refused; the `reason` label of the refusal metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Its source already has the most handshakes in progress it may have.
    SourceHandshakes,
    /// The listener already has the most handshakes in progress it may have.
    ListenerHandshakes,
    /// Its source already has the most connections it may have.
    SourceConnections,
    /// The listener is full.
    ListenerConnections,
    /// The process-wide connection budget is spent.
    Budget,
    /// `accept` itself failed (out of descriptors or memory): the connection stays queued in the
    /// kernel until a retry.
    AcceptError,
}

impl Refusal {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::SourceHandshakes => "source_handshakes",
            Refusal::ListenerHandshakes => "listener_handshakes",
            Refusal::SourceConnections => "source_connections",
            Refusal::ListenerConnections => "listener_connections",
            Refusal::Budget => "budget",
            Refusal::AcceptError => "accept_error",
        }
    }
}

/// May a listener with `caps`, holding `load`, accept one more connection? Pure. A new connection
/// on a TLS listener starts in its handshake, so the handshake caps apply to it too. The narrowest
/// cap is checked first, so the reason names the source when the source is the cause.
pub fn admit(caps: &Caps, load: &Load) -> Result<(), Refusal> {
    let over = |cap: Option<usize>, held: usize| cap.is_some_and(|c| held >= c);
    if over(caps.handshakes_per_source, load.source_handshakes) {
        return Err(Refusal::SourceHandshakes);
    }
    if over(caps.handshakes, load.handshakes) {
        return Err(Refusal::ListenerHandshakes);
    }
    if over(caps.connections_per_source, load.source_connections) {
        return Err(Refusal::SourceConnections);
    }
    if load.connections >= caps.connections {
        return Err(Refusal::ListenerConnections);
    }
    if load.budget_left == Some(0) {
        return Err(Refusal::Budget);
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, Default)]
struct Held {
    connections: usize,
    handshakes: usize,
}

#[derive(Debug, Default)]
struct GateState {
    total: Held,
    /// Only sources with an open connection have an entry.
    by_source: HashMap<IpAddr, Held>,
}

/// One listener's admission: its caps, what it holds, and its refusal log.
pub struct Gate {
    kind: Kind,
    /// `ns/name` of the workload, or `none` (admin).
    workload: String,
    caps: Caps,
    /// `None`: the listener lives on the reserve (admin), with its own cap.
    budget: Option<Arc<FdBudget>>,
    metrics: Arc<Metrics>,
    /// Written by the accept loop (admit) and by [`Permit`]s (handshake done, drop).
    state: Mutex<GateState>,
    log: RefusalLog,
}

impl Gate {
    /// The gate of a sidecar listener of `kind` for `workload`.
    pub fn sidecar(
        kind: Kind,
        workload: &str,
        admission: &Admission,
        metrics: Arc<Metrics>,
    ) -> Arc<Gate> {
        let caps = Caps::for_kind(kind, &admission.limits, &admission.budget);
        Gate::new(
            kind,
            workload,
            caps,
            Some(admission.budget.clone()),
            metrics,
        )
    }

    /// A gate with explicit caps; `budget: None` for a listener that lives on the reserve.
    pub fn new(
        kind: Kind,
        workload: &str,
        caps: Caps,
        budget: Option<Arc<FdBudget>>,
        metrics: Arc<Metrics>,
    ) -> Arc<Gate> {
        Arc::new(Gate {
            kind,
            workload: workload.to_owned(),
            caps,
            budget,
            metrics,
            state: Mutex::new(GateState::default()),
            log: RefusalLog::default(),
        })
    }

    /// Admit a connection from `source`, or say why not. The permit gives its share back on drop.
    pub fn try_admit(self: &Arc<Self>, source: IpAddr) -> Result<Permit, Refusal> {
        let tls = self.caps.handshakes.is_some();
        let mut state = self.lock();
        let from = state.by_source.get(&source).copied().unwrap_or_default();
        let load = Load {
            connections: state.total.connections,
            handshakes: state.total.handshakes,
            source_connections: from.connections,
            source_handshakes: from.handshakes,
            budget_left: self
                .budget
                .as_ref()
                .map(|b| b.capacity().saturating_sub(b.used())),
        };
        admit(&self.caps, &load)?;
        // The budget is shared with other listeners: take it atomically, after the decision.
        if let Some(b) = &self.budget {
            if !b.try_take() {
                return Err(Refusal::Budget);
            }
        }
        let hs = usize::from(tls);
        state.total.connections += 1;
        state.total.handshakes += hs;
        let entry = state.by_source.entry(source).or_default();
        entry.connections += 1;
        entry.handshakes += hs;
        drop(state);
        if self.budget.is_some() {
            self.metrics.connection_budget_in_use(1);
        }
        Ok(Permit {
            gate: self.clone(),
            source,
            handshaking: tls,
        })
    }

    /// Count a refusal and log it, at most once every [`LOG_EVERY`].
    fn refused(&self, reason: Refusal, source: Option<SocketAddr>, detail: Option<&str>) {
        self.metrics
            .connection_refused(self.kind.as_str(), &self.workload, reason.as_str());
        if let Some(count) = self.log.note(Instant::now()) {
            tracing::warn!(
                listener = self.kind.as_str(),
                workload = %self.workload,
                reason = reason.as_str(),
                src.addr = source.map(|s| s.to_string()),
                error = detail,
                refused = count,
                "connections refused (logged at most every {}s; each is counted in ward_connections_refused_total)",
                LOG_EVERY.as_secs()
            );
        }
    }

    fn release(&self, source: IpAddr, handshaking: bool) {
        let hs = usize::from(handshaking);
        let mut state = self.lock();
        state.total.connections = state.total.connections.saturating_sub(1);
        state.total.handshakes = state.total.handshakes.saturating_sub(hs);
        if let Some(h) = state.by_source.get_mut(&source) {
            h.connections = h.connections.saturating_sub(1);
            h.handshakes = h.handshakes.saturating_sub(hs);
            if h.connections == 0 {
                state.by_source.remove(&source);
            }
        }
        drop(state);
        if let Some(b) = &self.budget {
            b.give_back();
            self.metrics.connection_budget_in_use(-1);
        }
    }

    fn handshake_done(&self, source: IpAddr) {
        let mut state = self.lock();
        state.total.handshakes = state.total.handshakes.saturating_sub(1);
        if let Some(h) = state.by_source.get_mut(&source) {
            h.handshakes = h.handshakes.saturating_sub(1);
        }
    }

    /// The counts stay consistent whatever a panicking holder did: every update is a whole
    /// increment or decrement under the lock, so a poisoned lock is taken over as it is.
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One admitted connection's place at its listener; dropping it gives the place back.
pub struct Permit {
    gate: Arc<Gate>,
    source: IpAddr,
    /// Counted among the listener's handshakes until [`Permit::handshake_done`].
    handshaking: bool,
}

impl Permit {
    /// The TLS handshake completed: the connection no longer counts as a handshake.
    pub fn handshake_done(&mut self) {
        if std::mem::take(&mut self.handshaking) {
            self.gate.handshake_done(self.source);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.release(self.source, self.handshaking);
    }
}

/// Rate limit for refusal logs: at most one line per [`LOG_EVERY`], carrying how many refusals
/// it stands for.
#[derive(Default)]
pub(crate) struct RefusalLog {
    /// Refusals not yet logged.
    pending: AtomicU64,
    /// When the last line was written.
    last: Mutex<Option<Instant>>,
}

impl RefusalLog {
    /// Note one refusal at `now`; `Some(n)` when a line is due, standing for `n` refusals.
    pub(crate) fn note(&self, now: Instant) -> Option<u64> {
        self.pending.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last.lock().ok()?;
        if last.is_some_and(|t| now.saturating_duration_since(t) < LOG_EVERY) {
            return None;
        }
        *last = Some(now);
        Some(self.pending.swap(0, Ordering::Relaxed))
    }
}

/// Accept connections on `listener` until `shutdown` flips to true. Each admitted connection is
/// handed to `serve` on its own task with its [`Permit`], which it must keep for as long as the
/// connection is open; a refused one is reset at once.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    gate: Arc<Gate>,
    mut shutdown: watch::Receiver<bool>,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr, Permit) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let (tcp, src) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors (EMFILE/ENFILE) or memory: the connection stays queued.
                    // Back off rather than spin; the budget is meant to make this unreachable.
                    gate.refused(Refusal::AcceptError, None, Some(&e.to_string()));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = crate::stopped(&mut shutdown) => return,
        };
        match gate.try_admit(src.ip()) {
            Ok(permit) => {
                tokio::spawn(serve(tcp, src, permit));
            }
            Err(reason) => {
                crate::reset_on_close(&tcp);
                drop(tcp);
                gate.refused(reason, Some(src), None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps_tls() -> Caps {
        Caps {
            connections: 10,
            connections_per_source: Some(5),
            handshakes: Some(4),
            handshakes_per_source: Some(2),
        }
    }

    #[test]
    fn admit_table() {
        let plain = Caps {
            handshakes: None,
            handshakes_per_source: None,
            ..caps_tls()
        };
        let outbound = Caps {
            connections_per_source: None,
            ..plain
        };
        let load = |c, h, sc, sh, b| Load {
            connections: c,
            handshakes: h,
            source_connections: sc,
            source_handshakes: sh,
            budget_left: b,
        };
        let cases: Vec<(&str, Caps, Load, Result<(), Refusal>)> = vec![
            ("empty", caps_tls(), Load::default(), Ok(())),
            (
                "source at its handshake cap",
                caps_tls(),
                load(2, 2, 2, 2, Some(9)),
                Err(Refusal::SourceHandshakes),
            ),
            (
                "listener at its handshake cap, new source",
                caps_tls(),
                load(4, 4, 0, 0, Some(9)),
                Err(Refusal::ListenerHandshakes),
            ),
            (
                "source handshakes done, source at its connection cap",
                caps_tls(),
                load(5, 0, 5, 0, Some(9)),
                Err(Refusal::SourceConnections),
            ),
            (
                "listener full",
                caps_tls(),
                load(10, 0, 1, 0, Some(9)),
                Err(Refusal::ListenerConnections),
            ),
            (
                "budget spent",
                caps_tls(),
                load(1, 0, 0, 0, Some(0)),
                Err(Refusal::Budget),
            ),
            (
                "plaintext: no handshake caps",
                plain,
                load(4, 4, 2, 2, Some(9)),
                Ok(()),
            ),
            (
                "plaintext: source cap",
                plain,
                load(5, 0, 5, 0, Some(9)),
                Err(Refusal::SourceConnections),
            ),
            (
                "outbound: no source cap",
                outbound,
                load(9, 0, 9, 0, Some(9)),
                Ok(()),
            ),
            (
                "off-budget listener (admin)",
                outbound,
                load(9, 0, 9, 0, None),
                Ok(()),
            ),
        ];
        for (name, caps, load, want) in cases {
            assert_eq!(admit(&caps, &load), want, "{name}");
        }
    }

    #[test]
    fn budget_from_limit() {
        // systemd's default soft limit: a quarter kept back, the rest at two per connection.
        let b = FdBudget::from_limit(1024);
        assert_eq!(
            (b.reserve(), b.capacity(), b.listener_share()),
            (256, 384, 192)
        );
        // Its default hard limit: the reserve stops growing at 4096.
        let b = FdBudget::from_limit(524_288);
        assert_eq!((b.reserve(), b.capacity()), (4096, 260_096));
        // Tiny limits keep at least 64 back, and never underflow.
        let b = FdBudget::from_limit(128);
        assert_eq!(
            (b.reserve(), b.capacity(), b.listener_share()),
            (64, 32, 16)
        );
        let b = FdBudget::from_limit(10);
        assert_eq!((b.reserve(), b.capacity(), b.listener_share()), (10, 0, 1));
    }

    #[test]
    fn caps_stay_within_the_listener_share() {
        let b = FdBudget::from_limit(1024);
        let limits = Limits::default();
        let hbone = Caps::for_kind(Kind::Hbone, &limits, &b);
        assert_eq!(hbone.connections, 192, "4096 is more than half the budget");
        assert_eq!(hbone.handshakes_per_source, Some(64));
        let out = Caps::for_kind(Kind::Outbound, &limits, &b);
        assert_eq!((out.connections_per_source, out.handshakes), (None, None));
        let plain = Caps::for_kind(Kind::Plaintext, &limits, &b);
        assert_eq!(
            (plain.connections_per_source, plain.handshakes),
            (Some(512), None)
        );
    }

    fn gate(caps: Caps, budget: &Arc<FdBudget>) -> Arc<Gate> {
        Gate::new(
            Kind::Hbone,
            "app/srv",
            caps,
            Some(budget.clone()),
            Arc::new(Metrics::default()),
        )
    }

    #[test]
    fn permits_count_and_give_back() {
        let budget = Arc::new(FdBudget::from_limit(1024));
        let g = gate(caps_tls(), &budget);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let mut p1 = g.try_admit(a).unwrap();
        let _p2 = g.try_admit(a).unwrap();
        assert_eq!(g.try_admit(a).err(), Some(Refusal::SourceHandshakes));
        // Another source is not held back by the first.
        let _p3 = g.try_admit(b).unwrap();
        assert_eq!(budget.used(), 3);
        // A finished handshake frees a handshake place, not a connection place.
        p1.handshake_done();
        p1.handshake_done();
        let p4 = g.try_admit(a).unwrap();
        assert_eq!(g.lock().total.handshakes, 3);
        drop(p4);
        drop(p1);
        assert_eq!(budget.used(), 2);
        let state = g.lock();
        assert_eq!((state.total.connections, state.total.handshakes), (2, 2));
        assert_eq!(state.by_source[&a].connections, 1);
    }

    #[test]
    fn sources_leave_the_map_when_their_last_connection_closes() {
        let budget = Arc::new(FdBudget::from_limit(1024));
        let g = gate(caps_tls(), &budget);
        let p = g.try_admit("127.0.0.1".parse().unwrap()).unwrap();
        drop(p);
        assert!(g.lock().by_source.is_empty());
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn the_budget_is_shared_by_every_listener() {
        let budget = Arc::new(FdBudget::from_limit(128)); // 32 connections, 16 per listener
        let open = Caps {
            connections: 100,
            connections_per_source: None,
            handshakes: None,
            handshakes_per_source: None,
        };
        let g1 = gate(open, &budget);
        let g2 = gate(open, &budget);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let held: Vec<Permit> = (0..20)
            .map(|_| g1.try_admit(ip).unwrap())
            .chain((0..12).map(|_| g2.try_admit(ip).unwrap()))
            .collect();
        assert_eq!(g2.try_admit(ip).err(), Some(Refusal::Budget));
        drop(held);
        assert_eq!(budget.used(), 0);
        assert!(g2.try_admit(ip).is_ok());
    }

    #[test]
    fn refusal_log_is_rate_limited_and_counts_what_it_skipped() {
        let log = RefusalLog::default();
        let t0 = Instant::now();
        assert_eq!(log.note(t0), Some(1));
        for i in 1..=99 {
            assert_eq!(log.note(t0 + Duration::from_millis(i * 10)), None);
        }
        assert_eq!(log.note(t0 + LOG_EVERY), Some(100));
        assert_eq!(log.note(t0 + LOG_EVERY + Duration::from_secs(1)), None);
    }
}
