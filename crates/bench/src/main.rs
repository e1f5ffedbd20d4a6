//! `ward-bench`: Ward's benchmark harness (README.md, "Benchmarks"). One run sets up every path
//! (no proxy, a ward sidecar pair on a TCP port, the same on an HTTP port with L7 policy and JWT,
//! an nginx mTLS pair), alternates the workloads over them round by round, and writes
//! `results.json`, `results.md` and `latency.svg`.
//!
//! It must not: send traffic anywhere but loopback; run a load without a time and count bound;
//! treat a missed target as a failure (only a path that carries no traffic fails the run).
//!
//! Layout, following a run:
//! - `server`: the HTTP/1.1 1 KB + echo server, run as `ward-bench serve` in its own process;
//! - `paths`: the paths compared; `ward_pair`, `nginx_pair` set up the proxies; `jwt`: the
//!   ward-l7 path's JWKS endpoint and token; `otlp_sink`: the ward-l7-traced path's collector;
//! - `load`, `http1`: the open-loop / closed-loop generators and their HTTP/1.1 client;
//! - `iperf`: bulk throughput with iperf3; `procstat`: CPU and memory from /proc;
//! - `measure`: one round of every workload on one path → named figures;
//! - `stats`, `report`, `svg`: medians and spread, targets, JSON, markdown, the plot;
//! - `process`: child processes, CPU pinning with taskset, cleanup on drop;
//! - `net`: the topology: two network namespaces joined by a veth pair where root allows,
//!   else loopback.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod http1;
mod iperf;
mod jwt;
mod k8s_scale;
mod load;
mod measure;
mod net;
mod nginx_pair;
mod originate;
mod otlp_sink;
mod paths;
mod process;
mod procstat;
mod push;
mod report;
mod server;
mod stats;
mod svg;
mod ward_pair;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Instant;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

use crate::measure::{Context, Plan, Round, Workloads};
use crate::net::{Namespaces, Net, Side};
use crate::paths::{Endpoints, PathKind, RunningPath, Wards};
use crate::process::{Pinning, Proc};
use crate::report::{PathResult, Results};
use crate::stats::Summary;

/// Measure Ward's data path against no proxy and an nginx mTLS pair, in one run.
#[derive(Debug, Parser)]
#[command(name = "ward-bench")]
struct Cli {
    /// A few seconds per workload and one round (CI): exits non-zero only if a path carried
    /// no traffic.
    #[arg(long)]
    smoke: bool,
    /// Results folder (default: bench/results/<YYYY-MM-DD>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The ward binary (default: `ward` next to this binary).
    #[arg(long)]
    ward: Option<PathBuf>,
    /// Where client and server sides live: `netns` (two network namespaces joined by a veth
    /// pair; needs root and `ip`), `loopback`, or `auto` (netns where possible).
    #[arg(long, value_enum, default_value_t = Network::Auto)]
    network: Network,
    /// Rounds (default: 5, or 1 with --smoke).
    #[arg(long)]
    rounds: Option<usize>,
    /// Only the bulk workloads (iperf3 with 1, 4 and 16 streams), for data-path work on
    /// throughput and CPU per byte.
    #[arg(long, conflicts_with = "cost_only")]
    bulk_only: bool,
    /// Only the two 1000 rps phases: the proxies' CPU per request, latency and memory under
    /// load. Under a minute per path and round, so a cost comparison (`ward-l7-audit-off`,
    /// `ward-l7-traced`, with `ward-l7-twin` and `--fresh-each-round`) can run several times
    /// the rounds of a full run in the same time.
    #[arg(long)]
    cost_only: bool,
    /// Start every path's processes anew for each round, and stop them after it: a path's
    /// rounds then run on different processes, so a difference that belongs to one set of
    /// processes (where its memory landed, which CPU its threads favour) averages out instead
    /// of weighing on every round. For cost comparisons (with `ward-l7-twin`).
    #[arg(long)]
    fresh_each_round: bool,
    /// With --cost-only: load every path at the same time instead of one after another, each
    /// at the plan's rate over its own connections; with --bulk-only: run each iperf3 workload
    /// through every path at once. A change in the machine during a round (another tenant, the
    /// clock) then falls on every path alike, and the CPU per request or per byte of two paths
    /// is compared within the round. The figures are taken under that shared load, so compare
    /// them with each other, not with a run that loads one path at a time.
    #[arg(long)]
    side_by_side: bool,
    /// The ward binary the twins (`ward-l4-twin`, `ward-l7-twin`) run instead of --ward: an
    /// A/B comparison of two builds, each round measuring both (best with --side-by-side).
    #[arg(long)]
    twin_ward: Option<PathBuf>,
    /// Internal: this process already runs inside the client namespace.
    #[arg(long, hide = true)]
    inside_netns: bool,
    /// The paths to measure, comma-separated (default: baseline, ward-l4, ward-l7,
    /// ward-gateway, reference). Opt-in: `ward-l7-traced` (every request traced and exported
    /// over OTLP) and `ward-l7-audit-off` (`--no-audit`), each compared with ward-l7 of the
    /// same run (added when not named).
    #[arg(long, value_delimiter = ',')]
    paths: Vec<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Network {
    Auto,
    Netns,
    Loopback,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Internal: run the bench server (HTTP 1 KB + echo) and print its ports.
    #[command(hide = true)]
    Serve {
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        bind: std::net::IpAddr,
    },
    /// Config push: one `ward control-plane` and simulated proxies (real config stream
    /// clients) on loopback; memory per proxy, push latency and bytes per one-policy change.
    /// Writes push.json and push.md (default: bench/results/<YYYY-MM-DD>-push).
    Push {
        /// Fleet sizes, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1000,2000")]
        proxies: Vec<usize>,
        /// Changes per fleet, in turn: one namespace's policy, a mesh-wide policy, a workload added.
        #[arg(long, default_value_t = 10)]
        changes: usize,
    },
    /// Kubernetes scale simulation: the real API server (../shared/k8s) filled with Pods,
    /// Services with EndpointSlices and AuthorizationPolicies; `ward control-plane --kubernetes`
    /// memory, time to first ready, and push latency of one mesh-wide policy change to
    /// simulated proxies. Writes k8s-scale.json and k8s-scale.md (default:
    /// bench/results/<YYYY-MM-DD>-k8s-scale).
    K8sScale {
        /// Pods (Running, bound to fake Nodes).
        #[arg(long, default_value_t = 10_000)]
        pods: usize,
        /// Services, each with an EndpointSlice (a multiple of 10).
        #[arg(long, default_value_t = 2_000)]
        services: usize,
        /// AuthorizationPolicies (one per service at most).
        #[arg(long, default_value_t = 1_000)]
        policies: usize,
        /// Simulated proxies connected (for the first pods).
        #[arg(long, default_value_t = 1_000)]
        proxies: usize,
        /// Mesh-wide policy changes measured.
        #[arg(long, default_value_t = 5)]
        changes: usize,
    },
    /// TLS origination: what a sidecar originating TLS (DestinationRule `tls: SIMPLE`) adds
    /// per request against a client speaking TLS itself, to one nginx on loopback. Writes
    /// originate.json and originate.md (default: bench/results/<YYYY-MM-DD>-originate).
    Originate {
        /// Requests per series and round (5 rounds).
        #[arg(long, default_value_t = 400)]
        requests: usize,
    },
    /// Internal: serve a JWKS file on 127.0.0.1 and print the address.
    #[command(hide = true)]
    ServeJwks {
        /// The JWKS document.
        #[arg(long)]
        file: PathBuf,
    },
    /// Internal: the OTLP/HTTP sink of ward-l7-traced; prints the address.
    #[command(hide = true)]
    ServeOtlp {
        /// The address to listen on.
        #[arg(long)]
        bind: std::net::IpAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Serve { bind }) => {
            return match runtime().map(|rt| rt.block_on(server::serve(*bind))) {
                Ok(Ok(())) => ExitCode::SUCCESS,
                Ok(Err(e)) => fail(&anyhow::Error::from(e)),
                Err(e) => fail(&e),
            };
        }
        Some(Command::ServeOtlp { bind }) => {
            return match runtime().map(|rt| rt.block_on(otlp_sink::serve(*bind))) {
                Ok(Ok(())) => ExitCode::SUCCESS,
                Ok(Err(e)) => fail(&anyhow::Error::from(e)),
                Err(e) => fail(&e),
            };
        }
        Some(Command::ServeJwks { file }) => {
            return match jwt::serve_jwks(file) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&anyhow::Error::from(e)),
            };
        }
        Some(Command::Originate { requests }) => {
            return match run_originate(&cli, *requests) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            };
        }
        Some(Command::K8sScale {
            pods,
            services,
            policies,
            proxies,
            changes,
        }) => {
            let sizes = k8s_scale::Sizes {
                pods: *pods,
                services: *services,
                policies: *policies,
                proxies: *proxies,
                changes: *changes,
            };
            return match ward_binary(&cli).and_then(|(ward, day)| {
                let out = cli
                    .out
                    .clone()
                    .unwrap_or_else(|| k8s_scale::default_out(&day));
                k8s_scale::run(&ward, sizes, &out)
            }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            };
        }
        Some(Command::Push { proxies, changes }) => {
            return match run_push(&cli, proxies, *changes) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            };
        }
        None => {}
    }
    let net = if cli.inside_netns {
        Net::Namespaces
    } else if cli.network == Network::Loopback {
        Net::Loopback
    } else {
        match Namespaces::create(net::RUN) {
            Ok(namespaces) => return rerun_in_client_namespace(namespaces),
            Err(e) if cli.network == Network::Netns => return fail(&e.into()),
            Err(e) => {
                eprintln!("ward-bench: NOTE: no network namespaces ({e}); measuring on loopback");
                Net::Loopback
            }
        }
    };
    match run(&cli, net) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("ward-bench: a path failed to carry traffic (see above)");
            ExitCode::FAILURE
        }
        Err(e) => fail(&e),
    }
}

/// The ward binary (`--ward`, else next to this one) and today's date.
fn ward_binary(cli: &Cli) -> anyhow::Result<(PathBuf, String)> {
    let exe = std::env::current_exe().context("locating ward-bench")?;
    let ward = cli
        .ward
        .clone()
        .unwrap_or_else(|| exe.with_file_name("ward"));
    if !ward.is_file() {
        bail!("no ward binary at {} (pass --ward)", ward.display());
    }
    Ok((ward, day(time::OffsetDateTime::now_utc())))
}

/// `YYYY-MM-DD`, the default results folder's date.
fn day(now: time::OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}",
        now.year(),
        u8::from(now.month()),
        now.day()
    )
}

/// `ward-bench push`.
fn run_push(cli: &Cli, proxies: &[usize], changes: usize) -> anyhow::Result<()> {
    let (ward, day) = ward_binary(cli)?;
    let out = cli.out.clone().unwrap_or_else(|| push::default_out(&day));
    push::run(&ward, proxies, changes, &out)
}

fn run_originate(cli: &Cli, requests: usize) -> anyhow::Result<()> {
    let (ward, day) = ward_binary(cli)?;
    let out = cli
        .out
        .clone()
        .unwrap_or_else(|| originate::default_out(&day));
    originate::run(&ward, requests, &out)
}

/// Runs this same command inside the client namespace, then deletes the namespaces.
fn rerun_in_client_namespace(namespaces: Namespaces) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return fail(&anyhow::Error::from(e).context("locating ward-bench")),
    };
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    args.push("--inside-netns".into());
    eprintln!(
        "ward-bench: client side in network namespace {}, server side in {}, joined by a veth pair",
        net::CLIENT_NS,
        net::SERVER_NS
    );
    let status = net::run_in_client_namespace(&exe, &args);
    drop(namespaces);
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => fail(&anyhow::Error::from(e).context("ip netns exec")),
    }
}

fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("ward-bench: {e:#}");
    ExitCode::FAILURE
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")
}

/// The whole run; Ok(false) when a path did not carry traffic.
fn run(cli: &Cli, net: Net) -> anyhow::Result<bool> {
    let started = Instant::now();
    // Read now: the tree may change while a long run goes on.
    let ward_rev = git_rev();
    let kinds = selected_paths(&cli.paths)?;
    let mut plan = if cli.smoke {
        Plan::smoke()
    } else {
        Plan::full()
    };
    if let Some(rounds) = cli.rounds {
        plan.rounds = rounds.max(1);
    }
    plan.workloads = match (cli.bulk_only, cli.cost_only) {
        (true, _) => Workloads::Bulk,
        (false, true) => Workloads::Cost,
        (false, false) => Workloads::All,
    };
    plan.fresh_each_round = cli.fresh_each_round;
    if cli.side_by_side && plan.workloads == Workloads::All {
        bail!("--side-by-side needs --cost-only or --bulk-only");
    }
    plan.side_by_side = cli.side_by_side;
    let now = time::OffsetDateTime::now_utc();
    let day = day(now);
    let out = cli
        .out
        .clone()
        .unwrap_or_else(|| Path::new("bench/results").join(&day));
    let exe = std::env::current_exe().context("locating ward-bench")?;
    let ward = match &cli.ward {
        Some(w) => w.clone(),
        None => exe.with_file_name("ward"),
    };
    if !ward.is_file() {
        bail!(
            "no ward binary at {} (build it with `cargo build --release -p ward`, or pass --ward)",
            ward.display()
        );
    }
    if let Some(twin) = &cli.twin_ward {
        if !twin.is_file() {
            bail!("--twin-ward: no ward binary at {}", twin.display());
        }
        if !kinds.iter().any(|k| k.is_twin()) {
            bail!("--twin-ward needs a twin path: --paths ward-l4-twin or ward-l7-twin");
        }
    }
    let wards = Wards {
        main: ward.clone(),
        twin: cli.twin_ward.clone(),
    };
    let pinning = Pinning::detect();
    // Before the runtime exists, so every thread of the generator inherits the mask.
    pinning.pin_self();
    let rt = runtime()?;

    let (_server, server) = start_server(&exe, pinning, net)?;
    // An iperf3 server runs one test at a time: side by side, every path gets its own.
    let iperf_count = if plan.side_by_side && plan.workloads == Workloads::Bulk {
        kinds.len()
    } else {
        1
    };
    let mut iperfs = Vec::new();
    let mut iperf_note = None;
    for _ in 0..iperf_count {
        match iperf::start_server(pinning.load, net) {
            Ok(started) => iperfs.push(started),
            Err(e) => {
                iperf_note = Some(e.to_string());
                break;
            }
        }
    }
    let iperf_addr = iperf_note
        .is_none()
        .then(|| iperfs.first().map(|(_, addr)| *addr))
        .flatten();
    let server = Servers {
        shared: Endpoints {
            // Unused when iperf3 is missing (no throughput workload runs); any address will do.
            iperf: iperf_addr.unwrap_or(server.echo),
            ..server
        },
        iperf: kinds
            .iter()
            .copied()
            .zip(iperfs.iter().map(|(_, addr)| *addr))
            .collect(),
    };
    let ctx = Context {
        rt: &rt,
        pinning,
        clock_ticks: procstat::clock_ticks_per_second(),
        iperf: iperf_addr.is_some(),
        iperf_servers: iperfs
            .iter()
            .map(|(proc, addr)| (proc.pid(), addr.port()))
            .collect(),
    };

    let (running, rounds, mut results) = if plan.fresh_each_round {
        fresh_rounds(&kinds, &plan, &ctx, &server, &wards, net)
    } else {
        let (running, results) = start_paths(&kinds, &rt, &server, &wards, pinning, net);
        let rounds = run_rounds(&running, &plan, &ctx);
        (running, rounds, results)
    };
    let pools = latency_pools(&rounds);
    for (kind, rs) in rounds {
        let mut result = summarise(kind, &rs);
        // A path that could not be set up in some round (`--fresh-each-round`) failed.
        if let Some(setup) = results.remove(kind.name()) {
            result.status = "failed".into();
            result.failures.extend(setup.failures);
        }
        if let Some(note) = &iperf_note {
            result.notes.push(note.clone());
        }
        if let Some(path) = running.iter().find(|p| p.kind == kind) {
            otlp_result(path, &mut result);
        }
        results.insert(kind.name(), result);
    }
    drop(running);

    let all_ok = results.values().all(|p| p.status != "failed");
    let results = Results {
        schema: report::SCHEMA,
        mode: if cli.smoke { "smoke" } else { "full" },
        date: format!(
            "{day}T{:02}:{:02}:{:02}Z",
            now.hour(),
            now.minute(),
            now.second()
        ),
        ward_rev,
        ward_binary: ward.display().to_string(),
        twin_ward_binary: cli.twin_ward.as_ref().map(|t| t.display().to_string()),
        machine: machine(),
        network: net.name(),
        network_detail: net.description(),
        pinning: match (pinning.load, pinning.proxies) {
            (Some(l), Some(p)) => format!(
                "load generator, bench server and iperf3 pinned to CPU {l}; proxies to CPU {p}"
            ),
            _ => "not pinned (one CPU or no taskset)".into(),
        },
        targets: report::targets(&results),
        costs: report::costs(&results),
        paths: results,
        plan,
    };
    write_outputs(&out, &results, &pools, plan.rate)?;
    println!("{}", report::markdown(&results));
    eprintln!(
        "ward-bench: wrote {} in {:.0} s",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(all_ok)
}

/// The paths `--paths` names, in round order: the default set when none; a cost variant
/// brings ward-l7, which it is compared with.
fn selected_paths(names: &[String]) -> anyhow::Result<Vec<PathKind>> {
    if names.is_empty() {
        return Ok(PathKind::DEFAULT.to_vec());
    }
    let mut kinds = Vec::new();
    for name in names {
        let Some(kind) = PathKind::from_name(name.trim()) else {
            let known: Vec<&str> = PathKind::ALL.iter().map(|k| k.name()).collect();
            bail!("--paths: no path {name:?} (known: {})", known.join(", "));
        };
        kinds.push(kind);
        if let Some(base) = kind.cost_of() {
            if !names.iter().any(|n| n.trim() == base.name()) {
                eprintln!(
                    "ward-bench: adding {} to compare {} with",
                    base.name(),
                    kind.name()
                );
                kinds.push(base);
            }
        }
    }
    kinds.sort();
    kinds.dedup();
    Ok(kinds)
}

/// ward-l7-traced: what the sink received and the sidecar counted; a run that exported no
/// span failed (the path did not measure tracing).
fn otlp_result(path: &RunningPath, result: &mut PathResult) {
    let paths::Proxies::Ward(pair) = &path.proxies else {
        return;
    };
    let Some(sink) = &pair.sink else { return };
    // The exporter sends a batch at least every 0.5 s (docs/tracing.md).
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let outcomes = match pair.span_outcomes() {
        Ok(o) => o.into_iter().collect(),
        Err(e) => {
            result
                .notes
                .push(format!("server sidecar /metrics not read: {e}"));
            BTreeMap::new()
        }
    };
    match sink.stats() {
        Ok(s) => {
            if s.spans == 0 {
                result.status = "failed".into();
                result
                    .failures
                    .push("tracing: the OTLP sink received no span".into());
            }
            result.otlp = Some(report::OtlpResult {
                requests: s.requests,
                spans: s.spans,
                bytes: s.bytes,
                bad: s.bad,
                outcomes,
            });
        }
        Err(e) => {
            result.status = "failed".into();
            result
                .failures
                .push(format!("tracing: the OTLP sink could not be read: {e}"));
        }
    }
}

/// What the paths front: the bench server, and each path's iperf3 server (one per path when
/// the bulk workloads run side by side, as an iperf3 server runs one test at a time).
struct Servers {
    /// The bench server, and the iperf3 server of a path without one of its own.
    shared: Endpoints,
    /// The paths' own iperf3 servers.
    iperf: BTreeMap<PathKind, std::net::SocketAddr>,
}

impl Servers {
    /// What `kind` fronts.
    fn for_path(&self, kind: PathKind) -> Endpoints {
        Endpoints {
            iperf: self.iperf.get(&kind).copied().unwrap_or(self.shared.iperf),
            ..self.shared
        }
    }
}

/// Sets up every path of `kinds` and checks it carries a few requests; the ones that do are
/// returned running, the others as failed results.
fn start_paths(
    kinds: &[PathKind],
    rt: &tokio::runtime::Runtime,
    server: &Servers,
    wards: &Wards,
    pinning: Pinning,
    net: Net,
) -> (Vec<RunningPath>, BTreeMap<&'static str, PathResult>) {
    let mut running = Vec::new();
    let mut results = BTreeMap::new();
    for &kind in kinds {
        eprintln!("ward-bench: setting up {}", kind.name());
        match paths::start(kind, &server.for_path(kind), wards, pinning.proxies, net) {
            Ok(path) => match rt.block_on(load::probe(path.entry.http, 50, &path.requests)) {
                Ok(()) => running.push(path),
                Err(e) => {
                    results.insert(kind.name(), failed(kind, format!("probe: {e}")));
                }
            },
            Err(e) => {
                results.insert(kind.name(), failed(kind, format!("setup: {e}")));
            }
        }
    }
    (running, results)
}

/// Every round visits every path in turn, each round in another order ([`round_order`]):
/// drift on the machine hits all paths alike, and no path always runs first, last, or right
/// after the same other path.
fn run_rounds(
    running: &[RunningPath],
    plan: &Plan,
    ctx: &Context<'_>,
) -> BTreeMap<PathKind, Vec<Round>> {
    let mut rounds: BTreeMap<PathKind, Vec<Round>> = BTreeMap::new();
    for round in 0..plan.rounds {
        run_round(running, round, plan, ctx, &mut rounds);
    }
    rounds
}

/// One round over `running`, in that round's order, appended to `rounds`.
fn run_round(
    running: &[RunningPath],
    round: usize,
    plan: &Plan,
    ctx: &Context<'_>,
    rounds: &mut BTreeMap<PathKind, Vec<Round>>,
) {
    let order = round_order(running, round);
    if plan.side_by_side {
        eprintln!(
            "ward-bench: round {}/{}: side by side: {}",
            round + 1,
            plan.rounds,
            order
                .iter()
                .map(|p| p.kind.name())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let done = measure::side_by_side(&order, plan, ctx);
        for (path, r) in order.into_iter().zip(done) {
            record_round(path, r, rounds);
        }
        return;
    }
    for path in order {
        eprintln!(
            "ward-bench: round {}/{}: {}",
            round + 1,
            plan.rounds,
            path.kind.name()
        );
        let r = measure::round(path, plan, ctx);
        record_round(path, r, rounds);
    }
}

/// Appends `path`'s round `r` to `rounds`, and says what failed.
fn record_round(path: &RunningPath, r: Round, rounds: &mut BTreeMap<PathKind, Vec<Round>>) {
    for f in &r.failures {
        eprintln!("ward-bench:   {} FAILED: {f}", path.kind.name());
    }
    rounds.entry(path.kind).or_default().push(r);
}

/// `--fresh-each-round`: each round sets every path up anew, in the round's order, and stops
/// the previous round's processes first. Returns the last round's paths (still running, for
/// what is read after the rounds), the rounds, and the paths that could not be set up in some
/// round (the first failure of each, named with its round).
#[allow(clippy::type_complexity)]
fn fresh_rounds(
    kinds: &[PathKind],
    plan: &Plan,
    ctx: &Context<'_>,
    server: &Servers,
    wards: &Wards,
    net: Net,
) -> (
    Vec<RunningPath>,
    BTreeMap<PathKind, Vec<Round>>,
    BTreeMap<&'static str, PathResult>,
) {
    let mut rounds = BTreeMap::new();
    let mut failed: BTreeMap<&'static str, PathResult> = BTreeMap::new();
    let mut running: Vec<RunningPath> = Vec::new();
    for round in 0..plan.rounds {
        // The previous round's processes are gone before this round's start on their addresses.
        drop(std::mem::take(&mut running));
        // Set up in the round's order too: a pair started first (or last) is not always the
        // same path's.
        let order: Vec<PathKind> = round_order(kinds, round).into_iter().copied().collect();
        let (mut started, setup) = start_paths(&order, ctx.rt, server, wards, ctx.pinning, net);
        started.sort_by_key(|p| kinds.iter().position(|k| *k == p.kind));
        for (name, mut r) in setup {
            for f in &mut r.failures {
                *f = format!("round {}: {f}", round + 1);
            }
            failed.entry(name).or_insert(r);
        }
        run_round(&started, round, plan, ctx, &mut rounds);
        running = started;
    }
    (running, rounds, failed)
}

/// The order of the paths in round `round` (0-based). The first `n` rounds (`n` paths) rotate
/// the list by one each round, so every path takes every position once; the next `n` rounds
/// are the same rotations reversed, so every path also follows each other path equally often.
/// Two paths: A/B, B/A, B/A, A/B. Three: every one of the six orders in six rounds.
///
/// Alternating a list with its reverse (as before) left the middle of three paths in the middle
/// in every round: its place, not only its path, separated it from the other two.
fn round_order<T>(paths: &[T], round: usize) -> Vec<&T> {
    let n = paths.len().max(1);
    let mut order: Vec<&T> = paths.iter().collect();
    order.rotate_left(round % n);
    if (round / n) % 2 == 1 {
        order.reverse();
    }
    order
}

/// Fixed-rate latencies pooled over rounds, sorted, per connection count and path.
fn latency_pools(rounds: &BTreeMap<PathKind, Vec<Round>>) -> svg::Pools {
    let mut pools = svg::Pools::new();
    for (kind, rs) in rounds {
        for r in rs {
            for (conns, lat) in &r.latencies {
                let pool = pools.entry(*conns).or_default();
                match pool.iter_mut().find(|(n, _)| *n == kind.name()) {
                    Some((_, v)) => v.extend_from_slice(lat),
                    None => pool.push((kind.name(), lat.clone())),
                }
            }
        }
    }
    for pool in pools.values_mut() {
        for (_, v) in pool.iter_mut() {
            v.sort_unstable();
        }
    }
    pools
}

/// Starts `ward-bench serve` on the load CPU and reads the ports it announces.
fn start_server(exe: &Path, pinning: Pinning, net: Net) -> anyhow::Result<(Proc, Endpoints)> {
    let mut proc = Proc::spawn(
        "bench server",
        net.command(Side::Server, pinning.load, exe)
            .arg("serve")
            .arg("--bind")
            .arg(net.app_bind().to_string())
            .stdout(Stdio::piped()),
    )?;
    let stdout = proc.take_stdout().context("bench server stdout")?;
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .context("reading the bench server's ports")?;
    let (http, echo) =
        server::parse_ready(&line).with_context(|| format!("bench server said {line:?}"))?;
    // As the server side's proxies reach it.
    let local = |a: std::net::SocketAddr| std::net::SocketAddr::from(([127, 0, 0, 1], a.port()));
    let (http, echo) = (local(http), local(echo));
    Ok((
        proc,
        Endpoints {
            http,
            echo,
            iperf: echo,
        },
    ))
}

fn summarise(kind: PathKind, rounds: &[Round]) -> PathResult {
    let mut figures = BTreeMap::new();
    for f in report::FIGURES {
        let values: Vec<f64> = rounds
            .iter()
            .filter_map(|r| r.figures.get(f.key).copied())
            .collect();
        if let Some(s) = Summary::of(&values) {
            figures.insert(f.key, s);
        }
    }
    let failures: Vec<String> = rounds.iter().flat_map(|r| r.failures.clone()).collect();
    let mut notes: Vec<String> = rounds.iter().flat_map(|r| r.notes.clone()).collect();
    notes.dedup();
    PathResult {
        description: kind.description(),
        status: if failures.is_empty() { "ok" } else { "failed" }.into(),
        failures,
        notes,
        figures,
        otlp: None,
    }
}

fn failed(kind: PathKind, why: String) -> PathResult {
    eprintln!("ward-bench: {} FAILED: {why}", kind.name());
    PathResult {
        description: kind.description(),
        status: "failed".into(),
        failures: vec![why],
        notes: Vec::new(),
        figures: BTreeMap::new(),
        otlp: None,
    }
}

fn write_outputs(
    out: &Path,
    results: &Results,
    pools: &svg::Pools,
    rate: u32,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let json = serde_json::to_string_pretty(results).context("serialising results")?;
    std::fs::write(out.join("results.json"), json + "\n")?;
    std::fs::write(out.join("results.md"), report::markdown(results))?;
    std::fs::write(out.join("latency.svg"), svg::latency_plot(pools, rate))?;
    Ok(())
}

fn machine() -> report::Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map_or("unknown".into(), |(_, m)| m.trim().to_owned());
    report::Machine {
        // Counted from cpuinfo: this process is pinned, so available_parallelism() says 1.
        nproc: cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count(),
        cpu_model,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or("unknown".into(), |k| k.trim().to_owned()),
    }
}

/// The commit of the tree this harness was built from, marked when it had local changes.
fn git_rev() -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(rev) if git(&["status", "--porcelain"]).is_some_and(|s| !s.is_empty()) => {
            format!("{rev} (with uncommitted changes)")
        }
        Some(rev) => rev,
        None => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_takes_every_place_and_follows_every_other_path() {
        let paths = ["a", "b", "c"];
        let orders: Vec<String> = (0..6)
            .map(|r| round_order(&paths, r).into_iter().copied().collect())
            .collect();
        assert_eq!(orders, ["abc", "bca", "cab", "cba", "acb", "bac"]);
        // Six rounds of three: each path twice in each place, each ordered pair twice adjacent.
        let mut places = BTreeMap::new();
        let mut after = BTreeMap::new();
        for o in &orders {
            for (i, c) in o.chars().enumerate() {
                *places.entry((c, i)).or_insert(0) += 1;
            }
            for w in o.as_bytes().windows(2) {
                *after.entry((w[0], w[1])).or_insert(0) += 1;
            }
        }
        assert!(
            places.len() == 9 && places.values().all(|&n| n == 2),
            "{places:?}"
        );
        assert!(
            after.len() == 6 && after.values().all(|&n| n == 2),
            "{after:?}"
        );
        let two: Vec<String> = (0..4)
            .map(|r| round_order(&["a", "b"], r).into_iter().copied().collect())
            .collect();
        assert_eq!(two, ["ab", "ba", "ba", "ab"]);
        assert_eq!(round_order::<&str>(&[], 3).len(), 0);
    }

    #[test]
    fn paths_are_selected_by_name() {
        let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(selected_paths(&[]).unwrap(), PathKind::DEFAULT.to_vec());
        assert_eq!(
            selected_paths(&names(&["ward-l7-traced"])).unwrap(),
            vec![PathKind::WardL7, PathKind::WardL7Traced]
        );
        assert_eq!(
            selected_paths(&names(&["ward-l7-audit-off", "baseline", "ward-l7"])).unwrap(),
            vec![
                PathKind::Baseline,
                PathKind::WardL7,
                PathKind::WardL7AuditOff
            ]
        );
        let err = selected_paths(&names(&["ward-l9"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ward-l9") && err.contains("ward-l7-traced"),
            "{err}"
        );
    }
}
