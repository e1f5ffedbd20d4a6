//! One round of every workload on one path, in the brief's priority order, turned into named
//! figures. Decide-then-do: [`Plan`] says how long and how much; this module only carries it out.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;

use crate::load::{self, FixedRate, Outcome};
use crate::paths::RunningPath;
use crate::process::Pinning;
use crate::procstat::{self, Memory};
use crate::stats::percentile;

/// How much of each workload a run does.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct Plan {
    /// Rounds; paths alternate inside each round (A/B/A/B).
    pub(crate) rounds: usize,
    /// Fixed-rate requests per second.
    pub(crate) rate: u32,
    /// Connection counts of the fixed-rate phases.
    pub(crate) fixed_conns: [usize; 2],
    /// Length of each fixed-rate phase.
    pub(crate) fixed_secs: u64,
    /// Closed-loop connections.
    pub(crate) saturation_conns: usize,
    /// Length of the saturation phase.
    pub(crate) saturation_secs: u64,
    /// Concurrent connect-request-close workers.
    pub(crate) setup_workers: usize,
    /// Length of the connection-setup phase.
    pub(crate) setup_secs: u64,
    /// At most this many fresh connections (TIME_WAIT bounds the ephemeral ports).
    pub(crate) setup_max_conns: usize,
    /// 1-byte echo round trips.
    pub(crate) echo_count: usize,
    /// iperf3 `-t`.
    pub(crate) iperf_secs: u32,
    /// Which workloads run.
    pub(crate) workloads: Workloads,
    /// Every path's processes start anew for each round (`--fresh-each-round`).
    pub(crate) fresh_each_round: bool,
    /// Every path is loaded at once (`--side-by-side`, with `Cost` or `Bulk`).
    pub(crate) side_by_side: bool,
}

impl Plan {
    /// The full run, for humans: ~17 minutes with three paths.
    pub(crate) fn full() -> Plan {
        Plan {
            rounds: 5,
            rate: 1000,
            fixed_conns: [4, 16],
            fixed_secs: 20,
            saturation_conns: 16,
            saturation_secs: 10,
            setup_workers: 4,
            setup_secs: 5,
            // Loopback TIME_WAIT entries block a 4-tuple for 60 s, and the proxied paths reach the
            // server from the same host: stay well under the ~28k ephemeral ports.
            setup_max_conns: 15_000,
            echo_count: 10_000,
            iperf_secs: 10,
            workloads: Workloads::All,
            fresh_each_round: false,
            side_by_side: false,
        }
    }

    /// The CI smoke run: every workload once, a few seconds each.
    pub(crate) fn smoke() -> Plan {
        Plan {
            rounds: 1,
            fixed_secs: 2,
            saturation_secs: 1,
            setup_secs: 1,
            setup_max_conns: 2_000,
            echo_count: 500,
            iperf_secs: 1,
            ..Plan::full()
        }
    }
}

/// Which workloads a round runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Workloads {
    /// Every workload.
    All,
    /// Only the bulk workloads (`--bulk-only`): throughput and CPU per byte.
    Bulk,
    /// Only the two fixed-rate phases (`--cost-only`): CPU per request, latency and memory
    /// under load. A round takes under a minute per path, so a cost comparison gets several
    /// times the rounds of a full run in the same time.
    Cost,
}

/// What one round on one path produced.
#[derive(Debug, Default)]
pub(crate) struct Round {
    /// Figures by key (see `report::FIGURES`).
    pub(crate) figures: BTreeMap<&'static str, f64>,
    /// Fixed-rate latencies (ns) by connection count, for the plot.
    pub(crate) latencies: BTreeMap<usize, Vec<u64>>,
    /// Workloads that did not carry traffic, with why.
    pub(crate) failures: Vec<String>,
    /// Workloads skipped for a reason that is not the path's fault (iperf3 missing).
    pub(crate) notes: Vec<String>,
}

/// Whether an outcome counts as carrying traffic: something succeeded and under 1% failed.
fn carried(o: &Outcome) -> bool {
    let ok = o.latencies_ns.len() as u64;
    ok > 0 && o.errors * 100 <= ok + o.errors
}

/// What the harness needs besides the path.
pub(crate) struct Context<'a> {
    /// Runs the async workloads (current-thread, on the load CPU).
    pub(crate) rt: &'a Runtime,
    /// CPU placement.
    pub(crate) pinning: Pinning,
    /// `getconf CLK_TCK`.
    pub(crate) clock_ticks: u64,
    /// Whether iperf3 serves behind the paths.
    pub(crate) iperf: bool,
    /// The iperf3 servers (pid, port), each waited for before a bulk workload starts.
    pub(crate) iperf_servers: Vec<(u32, u16)>,
}

/// Runs every workload once on `path`.
pub(crate) fn round(path: &RunningPath, plan: &Plan, ctx: &Context<'_>) -> Round {
    let mut r = Round::default();
    match plan.workloads {
        Workloads::Bulk => {
            if ctx.iperf {
                bulk(path, plan, ctx, &mut r);
            } else {
                r.failures
                    .push("--bulk-only needs iperf3, which is not installed".into());
            }
            return r;
        }
        Workloads::Cost => {
            fixed_rate_phases(path, plan, ctx, &mut r);
            return r;
        }
        Workloads::All => fixed_rate_phases(path, plan, ctx, &mut r),
    }

    let work = ctx.rt.block_on(load::saturate(
        path.entry.http,
        plan.saturation_conns,
        Duration::from_secs(plan.saturation_secs),
        &path.requests,
    ));
    if let Some(o) = r.check("saturation", work) {
        r.figures.insert("saturation_rps", o.rate());
    }

    let work = ctx.rt.block_on(load::connection_setup(
        path.entry.http,
        plan.setup_workers,
        Duration::from_secs(plan.setup_secs),
        plan.setup_max_conns,
        &path.requests,
    ));
    if let Some(mut o) = r.check("connection setup", work) {
        o.latencies_ns.sort_unstable();
        r.figures.insert("conn_per_s", o.rate());
        r.insert_ms("ttfb_p50_ms", percentile(&o.latencies_ns, 50.0));
        r.insert_ms("ttfb_p99_ms", percentile(&o.latencies_ns, 99.0));
    }

    let work = ctx.rt.block_on(load::echo_rtt(
        path.entry.echo,
        plan.echo_count,
        Duration::from_secs(10),
    ));
    if let Some(mut o) = r.check("echo round trip", work) {
        o.latencies_ns.sort_unstable();
        let us = |v: Option<u64>| v.map(|n| n as f64 / 1e3);
        if let Some(v) = us(percentile(&o.latencies_ns, 50.0)) {
            r.figures.insert("echo_p50_us", v);
        }
        if let Some(v) = us(percentile(&o.latencies_ns, 99.0)) {
            r.figures.insert("echo_p99_us", v);
        }
    }

    if ctx.iperf {
        bulk(path, plan, ctx, &mut r);
    } else {
        r.notes
            .push("iperf3 not installed: no throughput figure".into());
    }
    r
}

/// The bulk workloads (iperf3 with 1, 4 and 16 parallel streams): throughput, the proxies'
/// CPU per GB moved, and their private memory after it (the copy buffers a transfer grew).
fn bulk(path: &RunningPath, plan: &Plan, ctx: &Context<'_>, r: &mut Round) {
    bulk_at_once(&[path], plan, ctx, std::slice::from_mut(r));
}

/// The bulk workloads on every path of `paths` at the same time (one iperf3 client per path
/// for each stream count), each path's figures into its slot of `rounds`. With one path this
/// is the sequential run's bulk phase.
fn bulk_at_once(paths: &[&RunningPath], plan: &Plan, ctx: &Context<'_>, rounds: &mut [Round]) {
    let pids: Vec<Vec<u32>> = paths.iter().map(|p| p.proxy_pids()).collect();
    let runs = [
        (1, "iperf_gbps", "bulk_cpu_s_per_gb", "bulk_faults_per_gb"),
        (
            4,
            "iperf4_gbps",
            "bulk4_cpu_s_per_gb",
            "bulk4_faults_per_gb",
        ),
        (
            16,
            "iperf16_gbps",
            "bulk16_cpu_s_per_gb",
            "bulk16_faults_per_gb",
        ),
    ];
    for (streams, gbps_key, cpu_key, faults_key) in runs {
        if !crate::iperf::wait_listening(&ctx.iperf_servers) {
            for r in rounds.iter_mut() {
                r.failures.push(format!(
                    "iperf3 -P {streams}: the iperf3 server did not listen again"
                ));
            }
            continue;
        }
        let before: Vec<_> = pids.iter().map(|p| proc_stats(p)).collect();
        let runs: Vec<_> = std::thread::scope(|s| {
            let clients: Vec<_> = paths
                .iter()
                .map(|p| {
                    let addr = p.entry.iperf;
                    s.spawn(move || {
                        crate::iperf::run_client(addr, plan.iperf_secs, streams, ctx.pinning.load)
                    })
                })
                .collect();
            clients.into_iter().map(|c| c.join()).collect()
        });
        let after: Vec<_> = pids.iter().map(|p| proc_stats(p)).collect();
        for (i, run) in runs.into_iter().enumerate() {
            let (Some(r), Some(pids)) = (rounds.get_mut(i), pids.get(i)) else {
                continue;
            };
            let stats = before
                .get(i)
                .copied()
                .flatten()
                .zip(after.get(i).copied().flatten());
            match run {
                Ok(Ok(b)) => {
                    r.figures.insert(gbps_key, b.gbps);
                    if let (Some((before, after)), false) = (stats, pids.is_empty()) {
                        let gb = b.bytes / 1e9;
                        let cpu_s =
                            after.0.saturating_sub(before.0) as f64 / ctx.clock_ticks as f64;
                        r.figures.insert(cpu_key, cpu_s / gb);
                        r.figures
                            .insert(faults_key, after.1.saturating_sub(before.1) as f64 / gb);
                    }
                }
                Ok(Err(e)) => r.failures.push(format!("iperf3 -P {streams}: {e}")),
                Err(_) => r
                    .failures
                    .push(format!("iperf3 -P {streams}: the client thread failed")),
            }
        }
    }
    for (r, pids) in rounds.iter_mut().zip(&pids) {
        if let Some(m) = memory(pids) {
            r.figures
                .insert("proxy_anon_bulk_mib", m.anon_kib as f64 / 1024.0);
        }
    }
}

/// The 1000 rps phases, with the proxies' CPU and memory read around them.
fn fixed_rate_phases(path: &RunningPath, plan: &Plan, ctx: &Context<'_>, r: &mut Round) {
    let start = PhaseStart::read(path);
    let mut served = 0usize;
    for (which, conns) in plan.fixed_conns.into_iter().enumerate() {
        let work = ctx.rt.block_on(load::fixed_rate(
            path.entry.http,
            plan.fixed(conns),
            &path.requests,
        ));
        served += r.fixed_rate_figures(which, conns, work);
    }
    r.fixed_rate_cost(path, &start, served, ctx);
}

/// `--side-by-side`: the two fixed-rate phases on every path at the same time, each path
/// loaded at the plan's rate over its own connections (with `--bulk-only`: each bulk workload
/// through every path at once, the paths then sharing the proxies' CPU). Whatever the machine
/// does meanwhile (another tenant, a frequency change) falls on every path alike, so the
/// paths' CPU per request or per byte can be compared within the round. Returns one round per
/// path, in `paths`' order.
pub(crate) fn side_by_side(paths: &[&RunningPath], plan: &Plan, ctx: &Context<'_>) -> Vec<Round> {
    let mut rounds: Vec<Round> = paths.iter().map(|_| Round::default()).collect();
    if plan.workloads == Workloads::Bulk {
        if ctx.iperf {
            bulk_at_once(paths, plan, ctx, &mut rounds);
        } else {
            for r in &mut rounds {
                r.failures
                    .push("--bulk-only needs iperf3, which is not installed".into());
            }
        }
        return rounds;
    }
    let starts: Vec<PhaseStart> = paths.iter().map(|p| PhaseStart::read(p)).collect();
    let mut served = vec![0usize; paths.len()];
    for (which, conns) in plan.fixed_conns.into_iter().enumerate() {
        let fixed = plan.fixed(conns);
        let mut work: Vec<Option<Result<Outcome, load::LoadError>>> =
            paths.iter().map(|_| None).collect();
        ctx.rt.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for (i, p) in paths.iter().enumerate() {
                let (addr, reqs) = (p.entry.http, p.requests.clone());
                set.spawn(async move { (i, load::fixed_rate(addr, fixed, &reqs).await) });
            }
            while let Some(joined) = set.join_next().await {
                if let Ok((i, w)) = joined {
                    if let Some(slot) = work.get_mut(i) {
                        *slot = Some(w);
                    }
                }
            }
        });
        for ((r, w), n) in rounds.iter_mut().zip(work).zip(served.iter_mut()) {
            match w {
                Some(w) => *n += r.fixed_rate_figures(which, conns, w),
                None => r.failures.push(format!(
                    "fixed rate, {conns} connections: the load task failed"
                )),
            }
        }
    }
    for (((r, p), start), n) in rounds.iter_mut().zip(paths).zip(&starts).zip(served) {
        r.fixed_rate_cost(p, start, n, ctx);
    }
    rounds
}

/// A path's state when its fixed-rate phases began.
struct PhaseStart {
    idle: Option<Memory>,
    ticks: Option<u64>,
    at: Instant,
}

impl PhaseStart {
    fn read(path: &RunningPath) -> PhaseStart {
        let pids = path.proxy_pids();
        PhaseStart {
            idle: memory(&pids),
            ticks: cpu_ticks(&pids),
            at: Instant::now(),
        }
    }
}

impl Plan {
    /// The fixed-rate phase over `conns` connections.
    fn fixed(&self, conns: usize) -> FixedRate {
        FixedRate {
            rate: self.rate,
            conns,
            duration: Duration::from_secs(self.fixed_secs),
        }
    }
}

impl Round {
    /// Latency figures of fixed-rate phase `which` (0 writes the fixed4_* figures, 1 the
    /// fixed16_* ones); returns the requests served.
    fn fixed_rate_figures(
        &mut self,
        which: usize,
        conns: usize,
        work: Result<Outcome, load::LoadError>,
    ) -> usize {
        let Some(mut o) = self.check(&format!("fixed rate, {conns} connections"), work) else {
            return 0;
        };
        let served = o.latencies_ns.len();
        o.latencies_ns.sort_unstable();
        let p = |q| percentile(&o.latencies_ns, q);
        let figures = [
            (50.0, ["fixed4_p50_ms", "fixed16_p50_ms"]),
            (90.0, ["fixed4_p90_ms", "fixed16_p90_ms"]),
            (99.0, ["fixed4_p99_ms", "fixed16_p99_ms"]),
            (100.0, ["fixed4_max_ms", "fixed16_max_ms"]),
        ];
        for (q, keys) in figures {
            self.insert_ms(keys[which.min(1)], p(q));
        }
        self.figures
            .insert(["fixed4_rps", "fixed16_rps"][which.min(1)], o.rate());
        self.latencies.insert(conns, o.latencies_ns);
        served
    }

    /// The proxies' CPU per request over the fixed-rate phases since `start`, and their
    /// memory idle and under load.
    fn fixed_rate_cost(
        &mut self,
        path: &RunningPath,
        start: &PhaseStart,
        served: usize,
        ctx: &Context<'_>,
    ) {
        let wall = start.at.elapsed().as_secs_f64();
        let pids = path.proxy_pids();
        if pids.is_empty() {
            return;
        }
        if let (Some(before), Some(after)) = (start.ticks, cpu_ticks(&pids)) {
            let vcpu = after.saturating_sub(before) as f64 / ctx.clock_ticks as f64 / wall;
            let krps = served as f64 / wall / 1000.0;
            if krps > 0.0 {
                self.figures.insert("proxy_vcpu_per_krps", vcpu / krps);
            }
        }
        let mib = |kib: u64| kib as f64 / 1024.0;
        if let Some(m) = start.idle {
            self.figures.insert("proxy_rss_idle_mib", mib(m.rss_kib));
            self.figures.insert("proxy_hwm_idle_mib", mib(m.hwm_kib));
        }
        if let Some(m) = memory(&pids) {
            self.figures.insert("proxy_rss_load_mib", mib(m.rss_kib));
            self.figures.insert("proxy_hwm_load_mib", mib(m.hwm_kib));
            self.figures.insert("proxy_anon_load_mib", mib(m.anon_kib));
        }
    }
}

impl Round {
    /// Records a failed or empty workload; returns the outcome when it carried traffic.
    fn check<E: std::fmt::Display>(
        &mut self,
        what: &str,
        work: Result<Outcome, E>,
    ) -> Option<Outcome> {
        match work {
            Ok(o) if carried(&o) => {
                if o.errors > 0 {
                    self.notes.push(format!("{what}: {} errors", o.errors));
                }
                Some(o)
            }
            Ok(o) => {
                self.failures.push(format!(
                    "{what}: {} ok, {} errors",
                    o.latencies_ns.len(),
                    o.errors
                ));
                None
            }
            Err(e) => {
                self.failures.push(format!("{what}: {e}"));
                None
            }
        }
    }

    fn insert_ms(&mut self, key: &'static str, ns: Option<u64>) {
        if let Some(ns) = ns {
            self.figures.insert(key, ns as f64 / 1e6);
        }
    }
}

/// Summed utime+stime of `pids`; None if any could not be read.
fn cpu_ticks(pids: &[u32]) -> Option<u64> {
    proc_stats(pids).map(|(ticks, _)| ticks)
}

/// Summed CPU ticks and minor page faults of `pids`; None if any could not be read.
fn proc_stats(pids: &[u32]) -> Option<(u64, u64)> {
    pids.iter()
        .map(|p| procstat::stat(*p).ok().map(|s| (s.cpu_ticks, s.minflt)))
        .try_fold((0, 0), |acc, s| s.map(|(t, f)| (acc.0 + t, acc.1 + f)))
}

/// Summed memory of `pids`; None if any could not be read or there are none.
fn memory(pids: &[u32]) -> Option<Memory> {
    if pids.is_empty() {
        return None;
    }
    pids.iter()
        .map(|p| procstat::memory(*p).ok())
        .try_fold(Memory::default(), |acc, m| Some(acc + m?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carrying_traffic() {
        let o = |ok: usize, errors| Outcome {
            latencies_ns: vec![1; ok],
            errors,
            elapsed: Duration::from_secs(1),
        };
        let cases = [
            (o(1000, 0), true),
            (o(1000, 10), true),
            (o(1000, 11), false),
            (o(0, 0), false),
            (o(0, 5), false),
        ];
        for (outcome, want) in cases {
            assert_eq!(
                carried(&outcome),
                want,
                "{} ok {} errors",
                outcome.latencies_ns.len(),
                outcome.errors
            );
        }
    }

    /// A real round on the baseline path: every figure it produces is one the report knows.
    #[test]
    fn a_baseline_round_yields_known_figures() {
        let (server, _thread) = crate::load::tests::server_in_thread();
        let path = crate::paths::start(
            crate::paths::PathKind::Baseline,
            &server,
            &crate::paths::Wards::one(std::path::Path::new("/nonexistent")),
            None,
            crate::net::Net::Loopback,
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let ctx = Context {
            rt: &rt,
            pinning: Pinning {
                load: None,
                proxies: None,
            },
            clock_ticks: 100,
            iperf: false,
            iperf_servers: Vec::new(),
        };
        let plan = Plan {
            rate: 100,
            fixed_secs: 1,
            saturation_conns: 2,
            setup_workers: 1,
            setup_max_conns: 20,
            echo_count: 20,
            ..Plan::smoke()
        };
        let r = round(&path, &plan, &ctx);
        assert!(r.failures.is_empty(), "{:?}", r.failures);
        assert_eq!(r.latencies.keys().copied().collect::<Vec<_>>(), [4, 16]);
        for key in r.figures.keys() {
            assert!(
                crate::report::FIGURES.iter().any(|f| f.key == *key),
                "{key} is not in the report's catalog"
            );
        }
        for key in [
            "fixed4_p99_ms",
            "fixed16_p99_ms",
            "saturation_rps",
            "conn_per_s",
            "echo_p99_us",
        ] {
            assert!(r.figures.contains_key(key), "{key} missing");
        }
    }

    #[test]
    fn smoke_is_short_and_full_is_the_brief() {
        let s = Plan::smoke();
        assert_eq!((s.rounds, s.fixed_secs, s.rate), (1, 2, 1000));
        let f = Plan::full();
        assert_eq!((f.rounds, f.fixed_secs, f.fixed_conns), (5, 20, [4, 16]));
    }
}
