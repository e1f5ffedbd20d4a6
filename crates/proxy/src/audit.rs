//! The sidecar's audit trail (docs/audit.md): one record per authorization decision, written
//! by a task of its own into the tamper-evident trail of `ward-audit`.
//!
//! The data path never waits for the disk. It builds an [`AuditEvent`] and puts it in a bounded
//! channel ([`QUEUE`] records); the writer task takes batches off it and appends them on
//! tokio's blocking pool. What cannot be kept is never silent:
//! - the channel is full (the disk is slower than the traffic): the record is dropped,
//!   counted in `ward_audit_records_dropped_total`, an error is logged once per burst, and
//!   the next record written is a `gap` record that says how many were dropped;
//! - a write fails (a full disk, an unwritable directory, a lock held by another writer): the
//!   records are counted in `ward_audit_write_failures_total`, an error is logged (again every
//!   [`REPEAT_ERROR`] while it lasts), `ward_audit_trail_up` drops to 0, `/ready` says the trail
//!   is failing, and the first record written after recovery is a `gap` record with the count.
//!
//! A workload annotated `ward.dev/audit-on-failure: fail-closed` refuses what cannot be
//! recorded instead: while the trail is failing, or when its record could not be queued, a
//! connection or request that policy allowed is refused ([`AuditSink::admit`]).
//!
//! Checkpoints are signed with the workload's current key and certificate: the certificate
//! task stores each new one in [`LatestCert`], and the writer picks it up before each batch.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use ward_audit::record::Fields;
use ward_audit::{CheckpointSigner, KeySigner, Rotation, Writer};
use ward_identity::IssuedCert;
use ward_policy::Decision;

use crate::refusal::deciding_rule;

/// Records the channel holds before the data path starts dropping them: a full window
/// ([`LINGER`]) of records arriving at 80,000 per second.
pub(crate) const QUEUE: usize = 16384;
/// Records the writer appends per trip to the blocking pool.
const BATCH: usize = 512;
/// How often the writer wakes without records: checkpoints due, a failing trail retried.
const TICK: Duration = Duration::from_secs(1);
/// The longest the writer lets records gather after the first of a batch before it takes them
/// to the disk: one trip to the blocking pool and one `write` per batch rather than per
/// request. A record reaches the file at most this much later; it was already decided and
/// enforced, and it is synced at the next checkpoint anyway. Each trip costs the sidecar a few
/// context switches: at 1000 requests per second, a 50 ms window cost about one point more of
/// the proxies' CPU per request than this one (docs/audit.md, "Cost").
const LINGER: Duration = Duration::from_millis(200);
/// The shortest window, when records come fast.
const MIN_LINGER: Duration = Duration::from_millis(1);
/// How often a failure that lasts is logged again.
const REPEAT_ERROR: Duration = Duration::from_secs(30);

/// One authorization decision, as the data path saw it, borrowed from the request or
/// connection it is about: the sink serializes it at once ([`AuditSink::admit`]), so the data
/// path copies no string into the trail's queue but the record itself.
#[derive(Debug)]
pub(crate) struct AuditEvent<'a> {
    /// When the decision was made.
    pub(crate) time: SystemTime,
    /// `inbound`, `outbound` or `gateway` (a request decided at an ingress gateway).
    pub(crate) direction: &'static str,
    /// `tcp` (a connection, decided at L4) or `http` (a request).
    pub(crate) protocol: &'static str,
    /// What decided.
    pub(crate) verdict: Verdict<'a>,
    /// The peer that opened the connection.
    pub(crate) src_addr: SocketAddr,
    /// Its SPIFFE id, when mTLS proved it.
    pub(crate) src_identity: Option<&'a str>,
    /// Where the connection or request was going.
    pub(crate) dst_addr: SocketAddr,
    /// The destination's SPIFFE id (ours, inbound).
    pub(crate) dst_identity: Option<&'a str>,
    /// The host asked for (egress: SNI, `Host` or CONNECT authority).
    pub(crate) dst_host: Option<&'a str>,
    /// `iss/sub` of a verified JWT, never the token.
    pub(crate) request_principal: Option<&'a str>,
    /// The HTTP method.
    pub(crate) method: Option<&'a str>,
    /// The normalized path, without its query string.
    pub(crate) path: Option<&'a str>,
    /// `x-request-id`.
    pub(crate) request_id: Option<&'a str>,
    /// The break-glass grant that lifted the policy's denial (docs/break-glass.md): the
    /// decision was served, so the record says `allow`, by `BREAK_GLASS`, and names the
    /// grant beside the policy that denied.
    pub(crate) break_glass: Option<&'a str>,
}

/// What an [`AuditEvent`] records as decided.
#[derive(Debug)]
pub(crate) enum Verdict<'a> {
    /// An AuthorizationPolicy decision, with its AUDIT and dry-run results.
    Policy(&'a Decision),
    /// Refused by the port's PeerAuthentication (`policy`: the deciding one, `None` for the
    /// mesh default).
    PeerAuthentication(Option<&'a str>),
    /// Egress to an unregistered destination, refused under `REGISTRY_ONLY`.
    RegistryOnly,
}

/// The fields of one decision record, serialized as they are read off the event.
fn fields(ev: &AuditEvent<'_>, proxy: &str, refused: Option<&str>) -> Fields {
    let mut f = Fields::with_capacity(512);
    f.str("direction", ev.direction)
        .str("protocol", ev.protocol);
    let (decision, action, policy, rule) = match &ev.verdict {
        Verdict::Policy(d) => {
            let (policy, rule) = deciding_rule(d);
            let action = match d.deciding_rule() {
                Some(_) if d.is_allowed() => "ALLOW",
                Some(_) => "DENY",
                None => "none",
            };
            let decision = if d.is_allowed() { "allow" } else { "deny" };
            (decision, action, policy, rule)
        }
        Verdict::PeerAuthentication(p) => {
            ("deny", "PEER_AUTHENTICATION", p.map(str::to_owned), None)
        }
        Verdict::RegistryOnly => ("deny", "REGISTRY_ONLY", None, None),
    };
    let (decision, action) = match &ev.break_glass {
        Some(_) => ("allow", "BREAK_GLASS"),
        None => (decision, action),
    };
    // A decision the audit trail itself turned into a refusal (fail-closed).
    let decision = if refused.is_some() { "deny" } else { decision };
    f.str("decision", decision).str("action", action);
    match &policy {
        Some(p) => f.str("policy", p),
        None => f.null("policy"),
    };
    match rule {
        Some(r) => f.u64("rule", r as u64),
        None => f.null("rule"),
    };
    f.opt_str("reason", refused)
        .opt_str("break_glass", ev.break_glass);
    if let Verdict::Policy(d) = &ev.verdict {
        if !d.audit().is_empty() {
            let audit = d
                .audit()
                .iter()
                .map(|r| serde_json::json!({"policy": r.policy.to_string(), "rule": r.rule}))
                .collect();
            f.value("audit", &Value::Array(audit));
        }
        if !d.dry_run().is_empty() {
            let notes = d
                .dry_run()
                .iter()
                .map(|n| {
                    serde_json::json!({
                        "policy": n.policy.to_string(),
                        "rule": n.rule,
                        "would": serde_json::to_value(n.would).unwrap_or(Value::Null),
                    })
                })
                .collect();
            f.value("dry_run", &Value::Array(notes));
        }
    }
    f.socket_addr("src_addr", &ev.src_addr)
        .socket_addr("dst_addr", &ev.dst_addr);
    f.opt_str("src_identity", ev.src_identity)
        .opt_str("dst_identity", ev.dst_identity)
        .opt_str("dst_host", ev.dst_host)
        .opt_str("request_principal", ev.request_principal)
        .opt_str("method", ev.method)
        .opt_str("path", ev.path)
        .opt_str("request_id", ev.request_id)
        .str("proxy", proxy);
    f
}

/// The certificate the certificate task installed last: the audit writer signs checkpoints
/// with it, `/certs` shows its chain and roots. Written by the certificate task, read by the
/// writer and the admin API.
#[derive(Default)]
pub struct LatestCert {
    signer: ArcSwapOption<KeySigner>,
    issued: ArcSwapOption<IssuedCert>,
}

impl LatestCert {
    /// Keeps what was just installed.
    pub(crate) fn store(&self, cert: &ward_identity::WorkloadCert) {
        match KeySigner::new(cert) {
            Ok(s) => self.signer.store(Some(Arc::new(s))),
            Err(e) => {
                tracing::error!(target: "audit", identity = %cert.id, error = %e, "the workload key cannot sign audit checkpoints")
            }
        }
        self.issued.store(Some(Arc::new(cert.issued.clone())));
    }

    /// The installed certificate: its chain, roots, serial and validity.
    pub fn issued(&self) -> Option<Arc<IssuedCert>> {
        self.issued.load_full()
    }
}

/// Signs nothing: the writer's signer until the first certificate is installed.
struct NoCertificate;

impl CheckpointSigner for NoCertificate {
    fn chain_der(&self) -> Vec<Vec<u8>> {
        Vec::new()
    }
    fn sign(&self, _: &[u8]) -> Result<Vec<u8>, String> {
        Err("no workload certificate installed yet".into())
    }
}

/// Labels of the audit metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct AuditLabels {
    /// The workload `ns/name`.
    pub(crate) workload: String,
}

/// The audit trail's metrics, shared by every sidecar of the process.
#[derive(Default)]
pub struct AuditMetrics {
    written: Family<AuditLabels, Counter>,
    failures: Family<AuditLabels, Counter>,
    dropped: Family<AuditLabels, Counter>,
    up: Family<AuditLabels, Gauge>,
}

impl AuditMetrics {
    pub(crate) fn register(&self, r: &mut Registry) {
        r.register(
            "ward_audit_records",
            "Decision records written to the workload's audit trail",
            self.written.clone(),
        );
        r.register(
            "ward_audit_write_failures",
            "Decision records that could not be written to the audit trail (full disk, unwritable file, no signing key)",
            self.failures.clone(),
        );
        r.register(
            "ward_audit_records_dropped",
            "Decision records dropped because the audit writer's queue was full",
            self.dropped.clone(),
        );
        r.register(
            "ward_audit_trail_up",
            "1 when the workload's audit trail is being written, 0 while writes fail",
            self.up.clone(),
        );
    }
}

/// What `/ready` and the data path know of a trail's health. Written by the writer task.
#[derive(Default)]
pub struct AuditHealth {
    /// A trail is configured.
    enabled: AtomicBool,
    /// The last write failed.
    failing: AtomicBool,
    /// Why, for `/ready` and logs.
    problem: Mutex<Option<String>>,
}

impl AuditHealth {
    /// Why the trail is not being written, if it is not.
    pub fn problem(&self) -> Option<String> {
        if !self.enabled.load(Ordering::Acquire) || !self.failing.load(Ordering::Acquire) {
            return None;
        }
        self.problem.lock().ok().and_then(|p| p.clone())
    }

    fn set(&self, problem: Option<String>) {
        self.failing.store(problem.is_some(), Ordering::Release);
        if let Ok(mut p) = self.problem.lock() {
            *p = problem;
        }
    }
}

/// The data path's end of a trail. Cheap to clone; a sink without a trail records nothing.
#[derive(Clone, Default)]
pub(crate) struct AuditSink {
    inner: Option<Arc<SinkInner>>,
}

/// A decision record's fields (already saying whether the trail's own failure refused it),
/// and when it was decided.
type Queued = (Fields, SystemTime);

struct SinkInner {
    /// Receiver: the writer task. Full: the record is dropped and counted.
    tx: mpsc::Sender<Queued>,
    health: Arc<AuditHealth>,
    /// Records dropped since the writer last wrote a gap record.
    dropped: Arc<AtomicU64>,
    dropped_metric: Counter,
    workload: String,
    /// The sidecar's SPIFFE id, which every record names.
    proxy: String,
}

/// The detail of a refusal by the audit trail (fail-closed), in the access log.
pub(crate) const AUDIT_UNAVAILABLE: &str = "audit_trail_unavailable";

impl AuditSink {
    /// Queue `ev`; `Err` when it could not be (the channel is full or the writer is gone).
    fn queue(&self, inner: &SinkInner, ev: Queued) -> Result<(), ()> {
        match inner.tx.try_send(ev) {
            Ok(()) => Ok(()),
            Err(_) => {
                if inner.dropped.fetch_add(1, Ordering::AcqRel) == 0 {
                    tracing::error!(target: "audit", workload = %inner.workload, queue = QUEUE, "audit records dropped: the writer cannot keep up (counted in ward_audit_records_dropped_total; a gap record will say how many)");
                }
                inner.dropped_metric.inc();
                Err(())
            }
        }
    }

    /// Record a decision. Returns `Some(detail)` when the caller must refuse what it was about
    /// to allow: the workload is fail-closed and the decision cannot be recorded. The record
    /// then says `deny` with that reason.
    pub(crate) fn admit(&self, fail_closed: bool, ev: &AuditEvent<'_>) -> Option<&'static str> {
        let inner = self.inner.as_ref()?;
        let allowed =
            ev.break_glass.is_some() || matches!(&ev.verdict, Verdict::Policy(d) if d.is_allowed());
        let refuse = fail_closed && allowed && inner.health.failing.load(Ordering::Acquire);
        let record = fields(ev, &inner.proxy, refuse.then_some(AUDIT_UNAVAILABLE));
        let queued = self.queue(inner, (record, ev.time));
        (fail_closed && allowed && (refuse || queued.is_err())).then_some(AUDIT_UNAVAILABLE)
    }

    /// Record a refusal (nothing to admit).
    pub(crate) fn record(&self, ev: &AuditEvent<'_>) {
        if let Some(inner) = &self.inner {
            let _ = self.queue(inner, (fields(ev, &inner.proxy, None), ev.time));
        }
    }
}

/// Where a sidecar's trail lives: `<audit dir>/<namespace>/<name>/`.
pub(crate) fn trail_dir(audit_dir: &std::path::Path, workload: &str) -> PathBuf {
    let mut dir = audit_dir.to_owned();
    for part in workload.split('/') {
        dir.push(part);
    }
    dir
}

/// Start the writer of `workload`'s trail in `dir`; its records name `proxy` (the sidecar's
/// SPIFFE id). It stops, with a last checkpoint, when `stop` flips; the task ends then.
pub(crate) fn start(
    dir: PathBuf,
    workload: &str,
    proxy: String,
    cert: Arc<LatestCert>,
    health: Arc<AuditHealth>,
    metrics: &AuditMetrics,
    stop: watch::Receiver<bool>,
) -> (AuditSink, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let labels = AuditLabels {
        workload: workload.to_owned(),
    };
    let dropped = Arc::new(AtomicU64::new(0));
    health.enabled.store(true, Ordering::Release);
    metrics.up.get_or_create(&labels).set(1);
    let state = WriterState {
        dir,
        workload: workload.to_owned(),
        proxy: proxy.clone(),
        cert,
        health: health.clone(),
        writer: None,
        unwritten: 0,
        written: metrics.written.get_or_create(&labels).clone(),
        failures: metrics.failures.get_or_create(&labels).clone(),
        up: metrics.up.get_or_create(&labels).clone(),
        last_error_log: None,
    };
    let task = tokio::spawn(run_writer(state, rx, dropped.clone(), stop));
    let sink = AuditSink {
        inner: Some(Arc::new(SinkInner {
            tx,
            health,
            dropped,
            dropped_metric: metrics.dropped.get_or_create(&labels).clone(),
            workload: workload.to_owned(),
            proxy,
        })),
    };
    (sink, task)
}

/// The writer task's state, moved to the blocking pool and back for each batch.
struct WriterState {
    dir: PathBuf,
    workload: String,
    proxy: String,
    cert: Arc<LatestCert>,
    health: Arc<AuditHealth>,
    /// `None` until opened, and again after a failure (reopening resumes the trail cleanly).
    writer: Option<Writer>,
    /// Records that could not be written since the last gap record.
    unwritten: u64,
    written: Counter,
    failures: Counter,
    up: Gauge,
    last_error_log: Option<Instant>,
}

async fn run_writer(
    mut state: WriterState,
    mut rx: mpsc::Receiver<Queued>,
    dropped: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Records per second in the last window.
    let mut rate = 0.0;
    loop {
        let mut batch = Vec::with_capacity(BATCH);
        let mut last = tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => n == 0,
            _ = tick.tick() => false,
            () = crate::stopped(&mut stop) => true,
        };
        if !last && !batch.is_empty() && batch.len() < BATCH {
            // Group commit: let the batch fill for a moment, then take what came. The writer
            // sleeps rather than waiting on the channel meanwhile, so the records sent during
            // the window wake nobody: one wake-up per batch, not one per request.
            let opened = Instant::now();
            tokio::select! {
                () = tokio::time::sleep(linger(rate)) => {}
                () = crate::stopped(&mut stop) => last = true,
            }
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(ev) => batch.push(ev),
                    Err(_) => break,
                }
            }
            rate = batch.len() as f64 / opened.elapsed().as_secs_f64().max(1e-3);
        }
        if last {
            // Stopping: what is queued goes in before the last checkpoint.
            while let Ok(ev) = rx.try_recv() {
                batch.push(ev);
            }
        }
        let dropped_now = dropped.swap(0, Ordering::AcqRel);
        if batch.is_empty() && dropped_now == 0 && !last && state.idle(SystemTime::now()) {
            // Nothing to write and nothing due: no trip to the blocking pool (a process may
            // run a thousand sidecars).
            continue;
        }
        let job = tokio::task::spawn_blocking(move || {
            state.write(batch, dropped_now, last);
            state
        });
        match job.await {
            Ok(s) => state = s,
            Err(e) => {
                tracing::error!(target: "audit", error = %e, "the audit writer stopped");
                return;
            }
        }
        if last {
            return;
        }
    }
}

/// The group-commit window after the first record of a batch, given the records per second
/// of the last window: long enough for half a batch at that rate, between [`MIN_LINGER`] and
/// [`LINGER`]. Up to about 1,300 records per second a window is the whole `LINGER`; faster,
/// it shrinks, so the queue never fills while the writer waits. A window that filled its batch
/// measured less than the true rate, so the next one is at most half as long: it converges.
fn linger(rate: f64) -> Duration {
    let half = (BATCH / 2) as f64;
    if rate.is_nan() || rate <= 0.0 {
        return LINGER;
    }
    Duration::from_secs_f64((half / rate).min(LINGER.as_secs_f64())).max(MIN_LINGER)
}

impl WriterState {
    /// Append `batch` (after a gap record for what was dropped or unwritten), checkpoint if
    /// due (or now, when `last`), and update the health signals.
    fn write(&mut self, batch: Vec<Queued>, dropped: u64, last: bool) {
        let now = SystemTime::now();
        let result = self.try_write(batch, dropped, last, now);
        match result {
            Ok(()) => {
                if self.health.failing.load(Ordering::Acquire) {
                    tracing::warn!(target: "audit", workload = %self.workload, dir = %self.dir.display(), "audit trail writable again");
                }
                self.health.set(None);
                self.up.set(1);
                self.last_error_log = None;
            }
            Err((e, lost)) => {
                self.writer = None;
                self.unwritten += lost;
                self.failures.inc_by(lost);
                self.up.set(0);
                let problem = format!("audit trail {}: {e}", self.dir.display());
                let due = self
                    .last_error_log
                    .is_none_or(|t| t.elapsed() >= REPEAT_ERROR);
                if due {
                    tracing::error!(target: "audit", workload = %self.workload, error = %e, unwritten = self.unwritten, "audit trail cannot be written (ward_audit_write_failures_total)");
                    self.last_error_log = Some(Instant::now());
                }
                self.health.set(Some(problem));
            }
        }
    }

    /// `Err` carries the error and how many decision records were lost with it.
    fn try_write(
        &mut self,
        batch: Vec<Queued>,
        dropped: u64,
        last: bool,
        now: SystemTime,
    ) -> Result<(), (ward_audit::AuditError, u64)> {
        let records = batch.len() as u64;
        // Dropped records are lost whatever happens next; they are reported in a gap record.
        self.unwritten += dropped;
        let writer = match self.writer.take() {
            Some(w) => w,
            None => Writer::open(&self.dir, self.signer(), Rotation::default(), now)
                .map_err(|e| (e, records))?,
        };
        let writer = self.writer.insert(writer);
        if let Some(s) = self.cert.signer.load_full() {
            writer.set_signer(s);
        }
        let mut events = Vec::with_capacity(batch.len() + 1);
        if self.unwritten > 0 {
            let mut gap = Fields::default();
            gap.u64("records", self.unwritten).str("proxy", &self.proxy);
            events.push(("gap", gap, now));
        }
        for (record, time) in batch {
            events.push(("decision", record, time));
        }
        if !events.is_empty() {
            // One write for the batch; all or nothing. A checkpoint that fails after it does
            // not lose the records: the chain has moved past them.
            let before = writer.seq();
            let result = writer.append_all(&events, now);
            if writer.seq() > before {
                self.unwritten = 0;
                self.written.inc_by(records);
            }
            result.map_err(|e| (e, if writer.seq() > before { 0 } else { records }))?;
        }
        if last {
            writer.checkpoint(now).map_err(|e| (e, 0))?;
        } else {
            writer.tick(now).map_err(|e| (e, 0))?;
        }
        Ok(())
    }

    /// Open, healthy, nothing unwritten and no checkpoint due.
    fn idle(&self, now: SystemTime) -> bool {
        self.unwritten == 0
            && !self.health.failing.load(Ordering::Acquire)
            && self.writer.as_ref().is_some_and(|w| !w.checkpoint_due(now))
    }

    fn signer(&self) -> Arc<dyn CheckpointSigner> {
        match self.cert.signer.load_full() {
            Some(s) => s,
            None => Arc::new(NoCertificate),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ward_identity::{generate_csr, SpiffeId, WorkloadCert};
    use ward_policy::{AllowedBy, DeniedBy, DryRunNote, DryRunOutcome, PolicyRef, RuleRef};

    /// A CA in `dir` and a workload certificate it issued: (roots, cert).
    fn workload(dir: &std::path::Path) -> (Vec<Vec<u8>>, WorkloadCert) {
        let ca = ward_ca::Ca::load_or_create(
            dir,
            ward_ca::CaOptions {
                trust_domain: "cluster.local".into(),
                default_ttl: Duration::from_secs(3600),
                max_ttl: Duration::from_secs(3600),
            },
        )
        .unwrap();
        let id = SpiffeId::new("cluster.local", "ehr", "records").unwrap();
        let key = generate_csr(&id).unwrap();
        let issued = ca.sign(&id, &key.csr_der, None).unwrap();
        let cert = WorkloadCert {
            id,
            key_pkcs8_der: key.key_pkcs8_der.clone(),
            issued,
        };
        (ca.roots_der(), cert)
    }

    fn event(decision: &Decision) -> AuditEvent<'_> {
        AuditEvent {
            time: SystemTime::now(),
            direction: "inbound",
            protocol: "http",
            verdict: Verdict::Policy(decision),
            src_addr: "10.0.0.1:40000".parse().unwrap(),
            src_identity: Some("spiffe://cluster.local/ns/ehr/sa/web"),
            dst_addr: "10.0.0.2:8080".parse().unwrap(),
            dst_identity: Some("spiffe://cluster.local/ns/ehr/sa/records"),
            dst_host: None,
            request_principal: Some("https://idp/alice"),
            method: Some("GET"),
            path: Some("/fhir/Patient/7"),
            request_id: Some("rid-1"),
            break_glass: None,
        }
    }

    fn allow() -> Decision {
        Decision::Allow {
            by: AllowedBy::Rule(RuleRef {
                policy: PolicyRef::new("ehr", "readers"),
                rule: 1,
            }),
            audit: vec![RuleRef {
                policy: PolicyRef::new("ehr", "phi"),
                rule: 0,
            }],
            dry_run: vec![DryRunNote {
                policy: PolicyRef::new("ehr", "trial"),
                rule: None,
                would: DryRunOutcome::NoAllowMatch,
            }],
        }
    }

    fn object(f: &Fields) -> Value {
        serde_json::from_str(&format!("{{{}}}", f.as_str())).unwrap()
    }

    #[test]
    fn a_decision_record_names_who_what_and_why() {
        let f = fields(
            &event(&allow()),
            "spiffe://cluster.local/ns/ehr/sa/records",
            None,
        );
        let v = object(&f);
        assert_eq!(v["decision"], "allow");
        assert_eq!(v["action"], "ALLOW");
        assert_eq!(v["policy"], "ehr/readers");
        assert_eq!(v["rule"], 1);
        assert_eq!(v["audit"][0]["policy"], "ehr/phi");
        assert_eq!(v["dry_run"][0]["would"], "noAllowMatch");
        assert_eq!(v["request_principal"], "https://idp/alice");
        assert_eq!(v["path"], "/fhir/Patient/7");
        assert_eq!(v["proxy"], "spiffe://cluster.local/ns/ehr/sa/records");
        assert!(v.get("dst_host").is_none() && v.get("reason").is_none());
        let refused = object(&fields(&event(&allow()), "p", Some(AUDIT_UNAVAILABLE)));
        assert_eq!(refused["decision"], "deny");
        assert_eq!(refused["reason"], "audit_trail_unavailable");
        // A denial lifted by break-glass was served: the record says so, and what it lifted.
        let lockdown = Decision::Deny {
            by: DeniedBy::DenyRule(RuleRef {
                policy: PolicyRef::new("ehr", "lockdown"),
                rule: 0,
            }),
            audit: vec![],
            dry_run: vec![],
        };
        let mut lifted = event(&lockdown);
        lifted.break_glass = Some("bg-7");
        let v = object(&fields(&lifted, "p", None));
        assert_eq!(
            (
                &v["decision"],
                &v["action"],
                &v["policy"],
                &v["break_glass"]
            ),
            (
                &Value::from("allow"),
                &Value::from("BREAK_GLASS"),
                &Value::from("ehr/lockdown"),
                &Value::from("bg-7")
            )
        );
    }

    fn state(dir: PathBuf, cert: &WorkloadCert) -> (WriterState, Arc<AuditHealth>) {
        let latest = Arc::new(LatestCert::default());
        latest.store(cert);
        let health = Arc::new(AuditHealth::default());
        health.enabled.store(true, Ordering::Release);
        let state = WriterState {
            dir,
            workload: "ehr/records".into(),
            proxy: "spiffe://cluster.local/ns/ehr/sa/records".into(),
            cert: latest,
            health: health.clone(),
            writer: None,
            unwritten: 0,
            written: Counter::default(),
            failures: Counter::default(),
            up: Gauge::default(),
            last_error_log: None,
        };
        (state, health)
    }

    fn verified(roots: &[Vec<u8>], dir: &std::path::Path) -> Vec<Value> {
        let path = ward_audit::writer::file_path(dir, 0);
        let bytes = std::fs::read(&path).unwrap();
        let seal = std::fs::read(dir.join(ward_audit::writer::SEAL_FILE)).unwrap();
        let files = [ward_audit::TrailFile {
            name: "audit-000000.jsonl".into(),
            bytes: bytes.clone(),
        }];
        let report = ward_audit::verify(&files, Some(&seal), roots);
        assert!(report.ok, "{report:?}");
        assert_eq!(report.unsealed, 0, "{report:?}");
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn a_full_queue_is_counted_refused_when_fail_closed_and_recorded_as_a_gap() {
        let tmp = tempfile::tempdir().unwrap();
        let (roots, cert) = workload(&tmp.path().join("ca"));
        let (tx, mut rx) = mpsc::channel(2);
        let dropped = Arc::new(AtomicU64::new(0));
        let dropped_metric = Counter::default();
        let sink = AuditSink {
            inner: Some(Arc::new(SinkInner {
                tx,
                health: Arc::default(),
                dropped: dropped.clone(),
                dropped_metric: dropped_metric.clone(),
                workload: "ehr/records".into(),
                proxy: "p".into(),
            })),
        };
        assert_eq!(sink.admit(true, &event(&allow())), None);
        assert_eq!(sink.admit(false, &event(&allow())), None);
        // Full: fail-open serves, fail-closed refuses; both are counted.
        assert_eq!(sink.admit(false, &event(&allow())), None);
        assert_eq!(sink.admit(true, &event(&allow())), Some(AUDIT_UNAVAILABLE));
        assert_eq!(dropped_metric.get(), 2);
        let mut batch = Vec::new();
        while let Ok(q) = rx.try_recv() {
            batch.push(q);
        }
        let dir = tmp.path().join("trail");
        let (mut st, health) = state(dir.clone(), &cert);
        st.write(batch, dropped.swap(0, Ordering::AcqRel), true);
        assert_eq!(health.problem(), None);
        let records = verified(&roots, &dir);
        let kinds: Vec<&str> = records
            .iter()
            .map(|r| r["type"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["file", "gap", "decision", "decision", "checkpoint"]);
        assert_eq!(records[1]["records"], 2);
        assert_eq!(st.written.get(), 2);
    }

    #[test]
    fn a_failing_trail_is_reported_and_recovers_with_a_gap_record() {
        let tmp = tempfile::tempdir().unwrap();
        let (roots, cert) = workload(&tmp.path().join("ca"));
        // The trail's directory is a file: nothing can be written.
        let dir = tmp.path().join("trail");
        std::fs::write(&dir, "not a directory").unwrap();
        let (mut st, health) = state(dir.clone(), &cert);
        st.write(
            vec![
                (fields(&event(&allow()), "p", None), SystemTime::now()),
                (fields(&event(&allow()), "p", None), SystemTime::now()),
            ],
            0,
            false,
        );
        let problem = health.problem().unwrap();
        assert!(problem.contains("trail"), "{problem}");
        assert_eq!((st.failures.get(), st.up.get()), (2, 0));
        // A fail-closed sink refuses an allowed decision while the trail fails.
        let (tx, _rx) = mpsc::channel(8);
        let sink = AuditSink {
            inner: Some(Arc::new(SinkInner {
                tx,
                health: health.clone(),
                dropped: Arc::default(),
                dropped_metric: Counter::default(),
                workload: "ehr/records".into(),
                proxy: "p".into(),
            })),
        };
        assert_eq!(sink.admit(true, &event(&allow())), Some(AUDIT_UNAVAILABLE));
        assert_eq!(sink.admit(false, &event(&allow())), None);

        std::fs::remove_file(&dir).unwrap();
        let refused = fields(&event(&allow()), "p", Some(AUDIT_UNAVAILABLE));
        st.write(vec![(refused, SystemTime::now())], 0, true);
        assert_eq!(health.problem(), None);
        assert_eq!(st.up.get(), 1);
        let records = verified(&roots, &dir);
        assert_eq!(records[1]["type"], "gap");
        assert_eq!(records[1]["records"], 2);
        assert_eq!(records[2]["reason"], "audit_trail_unavailable");
    }

    #[test]
    fn the_window_is_long_when_records_are_few_and_shrinks_with_the_rate() {
        assert_eq!(linger(0.0), LINGER);
        assert_eq!(linger(f64::NAN), LINGER);
        assert_eq!(linger(-1.0), LINGER);
        assert_eq!(linger(1000.0), LINGER);
        // 256 records (half a batch) at 40,000 per second: 6.4 ms.
        let fast = linger(40_000.0);
        assert!(
            fast > Duration::from_millis(6) && fast < Duration::from_millis(7),
            "{fast:?}"
        );
        assert_eq!(linger(f64::INFINITY), MIN_LINGER);
        assert_eq!(linger(1e12), MIN_LINGER);
        // A full window at the longest linger never overflows the queue below 80,000/s.
        assert!(LINGER.as_secs_f64() * 80_000.0 <= QUEUE as f64);
    }
}
