//! Turning rounds into results: the figure catalog, the targets (met / not met, never a
//! failure), `results.json` (schema `ward-bench/1`) and `results.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::measure::{Plan, Workloads};
use crate::paths::PathKind;
use crate::stats::Summary;

/// The JSON schema name; bump when a field changes meaning.
pub(crate) const SCHEMA: &str = "ward-bench/1";

/// Which direction is better for a figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Better {
    /// Latency, CPU, memory.
    Lower,
    /// Rates and throughput.
    Higher,
    /// Informational (the achieved fixed rate): never compared.
    Neither,
}

impl Figure {
    /// Whether `a` is better than `b` for this figure; None when the figure is not compared.
    pub(crate) fn is_better(&self, a: f64, b: f64) -> Option<bool> {
        match self.better {
            Better::Lower => Some(a < b),
            Better::Higher => Some(a > b),
            Better::Neither => None,
        }
    }
}

/// One reported figure.
#[derive(Debug)]
pub(crate) struct Figure {
    /// JSON key.
    pub(crate) key: &'static str,
    /// Table label.
    pub(crate) label: &'static str,
    /// Unit.
    pub(crate) unit: &'static str,
    /// Which way is better.
    pub(crate) better: Better,
}

const fn fig(key: &'static str, label: &'static str, unit: &'static str, better: Better) -> Figure {
    Figure {
        key,
        label,
        unit,
        better,
    }
}

/// Every figure, in table order.
pub(crate) const FIGURES: &[Figure] = &[
    fig(
        "fixed4_p50_ms",
        "1000 rps / 4 conns: p50",
        "ms",
        Better::Lower,
    ),
    fig(
        "fixed4_p90_ms",
        "1000 rps / 4 conns: p90",
        "ms",
        Better::Lower,
    ),
    fig(
        "fixed4_p99_ms",
        "1000 rps / 4 conns: p99",
        "ms",
        Better::Lower,
    ),
    fig(
        "fixed4_max_ms",
        "1000 rps / 4 conns: max",
        "ms",
        Better::Lower,
    ),
    fig(
        "fixed4_rps",
        "1000 rps / 4 conns: achieved",
        "rps",
        Better::Neither,
    ),
    fig(
        "fixed16_p50_ms",
        "1000 rps / 16 conns: p50",
        "ms",
        Better::Lower,
    ),
    fig(
        "fixed16_p90_ms",
        "1000 rps / 16 conns: p90",
        "ms",
        Better::Lower,
    ),
    fig(
        "fixed16_p99_ms",
        "1000 rps / 16 conns: p99",
        "ms",
        Better::Lower,
    ),
    fig(
        "fixed16_max_ms",
        "1000 rps / 16 conns: max",
        "ms",
        Better::Lower,
    ),
    fig(
        "fixed16_rps",
        "1000 rps / 16 conns: achieved",
        "rps",
        Better::Neither,
    ),
    fig(
        "proxy_vcpu_per_krps",
        "proxy pair CPU per 1000 rps",
        "vCPU",
        Better::Lower,
    ),
    fig(
        "proxy_rss_idle_mib",
        "proxy pair VmRSS, idle",
        "MiB",
        Better::Lower,
    ),
    fig(
        "proxy_hwm_idle_mib",
        "proxy pair VmHWM, idle",
        "MiB",
        Better::Lower,
    ),
    fig(
        "proxy_rss_load_mib",
        "proxy pair VmRSS, after load",
        "MiB",
        Better::Lower,
    ),
    fig(
        "proxy_hwm_load_mib",
        "proxy pair VmHWM, after load",
        "MiB",
        Better::Lower,
    ),
    fig(
        "proxy_anon_load_mib",
        "proxy pair RssAnon (private), after load",
        "MiB",
        Better::Lower,
    ),
    fig(
        "saturation_rps",
        "saturation, 16 conns closed loop",
        "rps",
        Better::Higher,
    ),
    fig(
        "conn_per_s",
        "new connection per request",
        "conn/s",
        Better::Higher,
    ),
    fig(
        "ttfb_p50_ms",
        "fresh connection TTFB p50",
        "ms",
        Better::Lower,
    ),
    fig(
        "ttfb_p99_ms",
        "fresh connection TTFB p99",
        "ms",
        Better::Lower,
    ),
    fig(
        "echo_p50_us",
        "1-byte echo round trip p50",
        "us",
        Better::Lower,
    ),
    fig(
        "echo_p99_us",
        "1-byte echo round trip p99",
        "us",
        Better::Lower,
    ),
    fig(
        "iperf_gbps",
        "single-stream throughput (iperf3)",
        "Gbit/s",
        Better::Higher,
    ),
    fig(
        "iperf4_gbps",
        "4-stream throughput (iperf3 -P 4)",
        "Gbit/s",
        Better::Higher,
    ),
    fig(
        "iperf16_gbps",
        "16-stream throughput (iperf3 -P 16)",
        "Gbit/s",
        Better::Higher,
    ),
    fig(
        "bulk_cpu_s_per_gb",
        "proxy pair CPU per GB, single stream",
        "CPU-s",
        Better::Lower,
    ),
    fig(
        "bulk4_cpu_s_per_gb",
        "proxy pair CPU per GB, 4 streams",
        "CPU-s",
        Better::Lower,
    ),
    fig(
        "bulk16_cpu_s_per_gb",
        "proxy pair CPU per GB, 16 streams",
        "CPU-s",
        Better::Lower,
    ),
    fig(
        "bulk_faults_per_gb",
        "proxy pair page faults per GB, single stream",
        "faults",
        Better::Lower,
    ),
    fig(
        "bulk4_faults_per_gb",
        "proxy pair page faults per GB, 4 streams",
        "faults",
        Better::Lower,
    ),
    fig(
        "bulk16_faults_per_gb",
        "proxy pair page faults per GB, 16 streams",
        "faults",
        Better::Lower,
    ),
    fig(
        "proxy_anon_bulk_mib",
        "proxy pair RssAnon (private), after bulk",
        "MiB",
        Better::Lower,
    ),
];

/// The machine the run was on.
#[derive(Debug, Serialize)]
pub(crate) struct Machine {
    /// Online CPUs.
    pub(crate) nproc: usize,
    /// `model name` from /proc/cpuinfo.
    pub(crate) cpu_model: String,
    /// `uname -r`-like kernel release.
    pub(crate) kernel: String,
}

/// One path's results.
#[derive(Debug, Serialize)]
pub(crate) struct PathResult {
    /// What the path is.
    pub(crate) description: &'static str,
    /// `ok`, `failed`, or why it is not available.
    pub(crate) status: String,
    /// What did not carry traffic.
    pub(crate) failures: Vec<String>,
    /// Non-fatal remarks.
    pub(crate) notes: Vec<String>,
    /// Figures by key, over rounds.
    pub(crate) figures: BTreeMap<&'static str, Summary>,
    /// ward-l7-traced: what the OTLP sink received and the sidecar counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) otlp: Option<OtlpResult>,
}

/// The traced path's export, over the whole run (setup probe included).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct OtlpResult {
    /// Export requests the sink received.
    pub(crate) requests: u64,
    /// Spans in them.
    pub(crate) spans: u64,
    /// Their body bytes (protobuf).
    pub(crate) bytes: u64,
    /// Requests that did not decode as OTLP.
    pub(crate) bad: u64,
    /// The server sidecar's `ward_spans_total` by outcome (`exported`, `queue_full`, ...).
    pub(crate) outcomes: BTreeMap<String, f64>,
}

/// One figure of a cost variant against the path it varies (ward-l7), in the same run.
#[derive(Debug, Serialize, PartialEq)]
pub(crate) struct Cost {
    /// The variant (`ward-l7-traced`, `ward-l7-audit-off`) or the control (`ward-l7-twin`).
    pub(crate) path: &'static str,
    /// The path it is compared with.
    pub(crate) against: &'static str,
    /// The figure's key.
    pub(crate) figure: &'static str,
    /// The variant's median.
    pub(crate) value: f64,
    /// The other path's median.
    pub(crate) base: f64,
    /// value − base.
    pub(crate) delta: f64,
    /// value ÷ base (None when base is 0).
    pub(crate) ratio: Option<f64>,
    /// The ratio round by round (the variant's round ÷ the base's round of the same index),
    /// summarised: each round measures both paths minutes apart, so machine drift between
    /// rounds cancels. None unless both have every round.
    pub(crate) paired: Option<Summary>,
}

/// The figures a cost compares: CPU per request, latency at the fixed rate, saturation, and
/// the bulk workloads' throughput and CPU per byte (each only when both paths measured it).
pub(crate) const COST_FIGURES: [&str; 12] = [
    "proxy_vcpu_per_krps",
    "fixed4_p50_ms",
    "fixed4_p99_ms",
    "fixed16_p50_ms",
    "fixed16_p99_ms",
    "saturation_rps",
    "iperf_gbps",
    "iperf4_gbps",
    "iperf16_gbps",
    "bulk_cpu_s_per_gb",
    "bulk4_cpu_s_per_gb",
    "bulk16_cpu_s_per_gb",
];

/// The cost of each variant present against its base path, figure by figure (both `ok`).
pub(crate) fn costs(paths: &BTreeMap<&'static str, PathResult>) -> Vec<Cost> {
    let mut out = Vec::new();
    for kind in PathKind::ALL {
        let Some(base) = kind.cost_of() else { continue };
        let (Some(v), Some(b)) = (paths.get(kind.name()), paths.get(base.name())) else {
            continue;
        };
        for figure in COST_FIGURES {
            if let (Some(value), Some(basev)) = (v.median(figure), b.median(figure)) {
                let paired = match (v.figures.get(figure), b.figures.get(figure)) {
                    (Some(vs), Some(bs)) if vs.rounds.len() == bs.rounds.len() => {
                        let ratios: Vec<f64> = vs
                            .rounds
                            .iter()
                            .zip(&bs.rounds)
                            .filter(|(_, b)| **b != 0.0)
                            .map(|(v, b)| v / b)
                            .collect();
                        Summary::of(&ratios)
                    }
                    _ => None,
                };
                out.push(Cost {
                    path: kind.name(),
                    against: base.name(),
                    figure,
                    value,
                    base: basev,
                    delta: value - basev,
                    ratio: (basev != 0.0).then(|| value / basev),
                    paired,
                });
            }
        }
    }
    out
}

impl PathResult {
    fn median(&self, key: &str) -> Option<f64> {
        (self.status == "ok")
            .then(|| self.figures.get(key).map(|s| s.median))
            .flatten()
    }
}

/// One of Ward's performance targets ([`targets`]), checked against this run.
#[derive(Debug, Serialize)]
pub(crate) struct TargetCheck {
    /// The figure it judges, when it is one figure of one path.
    pub(crate) figure: Option<&'static str>,
    /// The path whose figure it judges (`ward-l4`, `ward-l7`), when it is one path's.
    pub(crate) path: Option<&'static str>,
    /// The target, in words.
    pub(crate) target: String,
    /// What this run measured.
    pub(crate) measured: String,
    /// Met, not met, or not measurable in this run (None).
    pub(crate) met: Option<bool>,
}

/// Everything `results.json` holds.
#[derive(Debug, Serialize)]
pub(crate) struct Results {
    /// [`SCHEMA`].
    pub(crate) schema: &'static str,
    /// `smoke` or `full`.
    pub(crate) mode: &'static str,
    /// UTC date and time of the run.
    pub(crate) date: String,
    /// `git rev-parse` of the ward tree the binary came from (best effort).
    pub(crate) ward_rev: String,
    /// The ward binary measured.
    pub(crate) ward_binary: String,
    /// The binary the twin paths ran instead (`--twin-ward`), if another.
    pub(crate) twin_ward_binary: Option<String>,
    /// The machine.
    pub(crate) machine: Machine,
    /// `netns+veth` or `loopback`.
    pub(crate) network: &'static str,
    /// What the network is, in a sentence.
    pub(crate) network_detail: String,
    /// CPU placement, e.g. "load generator, server, iperf3 on CPU 0; proxies on CPU 1".
    pub(crate) pinning: String,
    /// How much of each workload ran.
    pub(crate) plan: Plan,
    /// Paths by name.
    pub(crate) paths: BTreeMap<&'static str, PathResult>,
    /// Ward's performance targets.
    pub(crate) targets: Vec<TargetCheck>,
    /// What tracing and the audit trail cost, when their variants ran ([`costs`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) costs: Vec<Cost>,
}

/// Checks Ward's performance targets. They are stated per proxy; a ward pair is one process
/// holding both sidecars (and the control plane), so per-proxy limits are doubled for the pair.
pub(crate) fn targets(paths: &BTreeMap<&'static str, PathResult>) -> Vec<TargetCheck> {
    let get = |path: &str, key: &str| paths.get(path).and_then(|p| p.median(key));
    let ratio = |path: &str, key: &str| {
        get(path, key)
            .zip(get("baseline", key))
            .filter(|(_, b)| *b > 0.0)
            .map(|(w, b)| (w / b, format!("{:.3}x baseline", w / b)))
    };
    let mut out = Vec::new();
    let mut check = |path: &'static str,
                     figure: &'static str,
                     target: &str,
                     measured: Option<(f64, String)>,
                     ok: &dyn Fn(f64) -> bool| {
        out.push(TargetCheck {
            figure: Some(figure),
            path: Some(path),
            target: target.into(),
            met: measured.as_ref().map(|(v, _)| ok(*v)),
            measured: measured.map_or("not measured".into(), |(_, text)| text),
        });
    };
    // (path, label, added p99 ms, vCPU per 1000 rps per proxy, MB per proxy, saturation ratio)
    let limits = [
        ("ward-l4", "L4", 0.15, 0.045, 10.0, 0.97),
        (
            "ward-l7",
            "L7 (authz 10 rules + cached JWT)",
            0.24,
            0.12,
            16.0,
            0.93,
        ),
    ];
    for (path, label, p99, vcpu, mb, saturation) in limits {
        for (key, conns) in [("fixed4_p99_ms", 4), ("fixed16_p99_ms", 16)] {
            let added = get(path, key)
                .zip(get("baseline", key))
                .map(|(w, b)| (w - b, format!("{:+.3} ms", w - b)));
            check(
                path,
                key,
                &format!("{label} pair: added p99 <= {p99} ms at 1000 rps ({conns} conns)"),
                added,
                &|v| v <= p99,
            );
        }
        let cpu = get(path, "proxy_vcpu_per_krps").map(|v| (v, format!("{v:.4} vCPU (pair)")));
        check(
            path,
            "proxy_vcpu_per_krps",
            &format!(
                "{label} proxy CPU <= {vcpu} vCPU per 1000 rps (pair <= {})",
                2.0 * vcpu
            ),
            cpu,
            &|v| v <= 2.0 * vcpu,
        );
        // The MB are 10^6 bytes; /proc reports KiB, stored as MiB.
        let rss = get(path, "proxy_hwm_load_mib").map(|mib| {
            let mb = mib * 1.048_576;
            (mb, format!("{mb:.1} MB VmHWM (pair)"))
        });
        check(
            path,
            "proxy_hwm_load_mib",
            &format!("{label} RSS <= {mb} MB per proxy (pair <= {} MB)", 2.0 * mb),
            rss,
            &|v| v <= 2.0 * mb,
        );
        check(
            path,
            "saturation_rps",
            &format!("{label} saturation >= {saturation}x baseline rps"),
            ratio(path, "saturation_rps"),
            &|v| v >= saturation,
        );
    }
    check(
        "ward-l4",
        "iperf_gbps",
        "Single-stream throughput through the L4 pair >= 0.6x baseline",
        ratio("ward-l4", "iperf_gbps"),
        &|v| v >= 0.6,
    );
    // Bulk cost (issue 17's goal): against the nginx mTLS pair of the same run.
    let vs_reference = |path: &str, key: &str| {
        get(path, key)
            .zip(get("reference", key))
            .filter(|(_, n)| *n > 0.0)
            .map(|(w, n)| (w / n, format!("{w:.3} CPU-s, {:.3}x the nginx pair", w / n)))
    };
    check(
        "ward-l4",
        "bulk_cpu_s_per_gb",
        "L4 pair CPU per GB (single stream) <= 0.65x the nginx mTLS pair",
        vs_reference("ward-l4", "bulk_cpu_s_per_gb"),
        &|v| v <= 0.65,
    );
    let (mut better, mut total) = (0, 0);
    for f in FIGURES {
        let (Some(w), Some(r)) = (get("ward-l4", f.key), get("reference", f.key)) else {
            continue;
        };
        if let Some(b) = f.is_better(w, r) {
            total += 1;
            better += usize::from(b);
        }
    }
    out.push(TargetCheck {
        figure: None,
        path: None,
        target: "Every Ward figure better than the nginx reference's".into(),
        measured: format!("{better} of {total} figures better"),
        met: (total > 0).then_some(better == total),
    });
    out
}

/// "met", "NOT met" or "n/a".
pub(crate) fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "NOT met",
        None => "n/a",
    }
}

fn cell(p: &PathResult, key: &str) -> String {
    if p.status != "ok" {
        return p.status.clone();
    }
    match p.figures.get(key) {
        Some(s) if s.rounds.len() > 1 => {
            format!("{} ({}–{})", num(s.median), num(s.min), num(s.max))
        }
        Some(s) => num(s.median),
        None => "—".into(),
    }
}

fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// What the header says about how the paths shared each round, and about the workloads and
/// processes of a run that is not the default.
fn mode_note(plan: &Plan) -> String {
    let mut note = if plan.side_by_side {
        String::from(
            " (every path loaded at the same time within each round, `--side-by-side`: the \
             figures are under that shared load)",
        )
    } else {
        String::from(
            " (paths take turns within each round, in an order that rotates from round to round)",
        )
    };
    match plan.workloads {
        Workloads::All => {}
        Workloads::Bulk => note.push_str("; bulk workloads only (`--bulk-only`)"),
        Workloads::Cost => note.push_str("; the 1000 rps phases only (`--cost-only`)"),
    }
    if plan.fresh_each_round {
        note.push_str(
            "; every path's processes started anew for each round (`--fresh-each-round`)",
        );
    }
    note
}

/// `results.md`: the run's description, a table of every figure per path, comparisons with
/// the baseline and the reference, and the targets.
pub(crate) fn markdown(r: &Results) -> String {
    let mut md = String::new();
    // The paths this run measured (or tried), in round order.
    let names: Vec<&str> = PathKind::ALL
        .iter()
        .map(|k| k.name())
        .filter(|n| r.paths.contains_key(n))
        .collect();
    let _ = writeln!(md, "# ward-bench results ({} run, {})\n", r.mode, r.date);
    let _ = writeln!(
        md,
        "- machine: {} x {}, kernel {}\n- ward: {} (`{}`){}\n- network: {}; {}\n- rounds: {}{}; cells are median (min–max over rounds)\n",
        r.machine.nproc,
        r.machine.cpu_model,
        r.machine.kernel,
        r.ward_rev,
        r.ward_binary,
        r.twin_ward_binary
            .as_ref()
            .map_or(String::new(), |t| format!("; the twin paths run `{t}`")),
        r.network_detail,
        r.pinning,
        r.plan.rounds,
        mode_note(&r.plan)
    );
    for name in &names {
        if let Some(p) = r.paths.get(name) {
            let _ = writeln!(md, "- **{name}**: {}", p.description);
            for f in &p.failures {
                let _ = writeln!(md, "  - FAILED: {f}");
            }
            for n in &p.notes {
                let _ = writeln!(md, "  - note: {n}");
            }
            if let Some(o) = &p.otlp {
                let outcomes: Vec<String> =
                    o.outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
                let _ = writeln!(
                    md,
                    "  - OTLP sink: {} spans in {} exports ({} bytes, {} undecodable); the \
                     sidecar's ward_spans_total: {}",
                    o.spans,
                    o.requests,
                    o.bytes,
                    o.bad,
                    if outcomes.is_empty() {
                        "not read".into()
                    } else {
                        outcomes.join(", ")
                    }
                );
            }
        }
    }
    let _ = writeln!(md, "\n## Figures\n");
    let _ = writeln!(md, "| figure | unit | {} | targets |", names.join(" | "));
    let _ = writeln!(md, "|---|---|{}---|", "---:|".repeat(names.len()));
    for f in FIGURES {
        let cells: Vec<String> = names
            .iter()
            .map(|n| r.paths.get(n).map_or("—".into(), |p| cell(p, f.key)))
            .collect();
        let target = r
            .targets
            .iter()
            .filter(|t| t.figure == Some(f.key))
            .map(|t| format!("{}: {}", t.target, verdict(t.met)))
            .collect::<Vec<_>>()
            .join("; ");
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            f.label,
            f.unit,
            cells.join(" | "),
            target
        );
    }
    let get = |p: &str, k: &str| r.paths.get(p).and_then(|p| p.median(k));
    for ward in ["ward-l4", "ward-l7", "ward-gateway"] {
        if r.paths.contains_key(ward) {
            compared(&mut md, ward, &get);
        }
    }
    if !r.costs.is_empty() {
        let _ = writeln!(
            md,
            "\n## Variants against their base path (medians, same run)\n\n\
             `ward-l7-twin` and `ward-l4-twin`, when they ran, are ward-l7 and ward-l4 in a second \
             pair of processes: with one binary, a twin's row is how far two identical pairs \
             differ, the yardstick for the others; with `--twin-ward`, it compares two builds.\n\n\
             | path | against | figure | value | against | difference | ratio | ratio by round, \
             median (min–max) |\n\
             |---|---|---|---:|---:|---:|---:|---:|"
        );
        for c in &r.costs {
            let (label, unit) = FIGURES
                .iter()
                .find(|f| f.key == c.figure)
                .map_or((c.figure, ""), |f| (f.label, f.unit));
            let _ = writeln!(
                md,
                "| {} | {} | {label} | {} {unit} | {} {unit} | {}{} {unit} | {} | {} |",
                c.path,
                c.against,
                num(c.value),
                num(c.base),
                if c.delta >= 0.0 { "+" } else { "" },
                num(c.delta),
                c.ratio.map_or("—".into(), |r| format!("{r:.3}x")),
                c.paired.as_ref().map_or("—".into(), |s| format!(
                    "{:.3}x ({:.3}–{:.3})",
                    s.median, s.min, s.max
                )),
            );
        }
    }
    let _ = writeln!(md, "\n## Targets (reported, never a failure)\n");
    let _ = writeln!(md, "| target | measured | |\n|---|---|---|");
    for t in &r.targets {
        let _ = writeln!(md, "| {} | {} | {} |", t.target, t.measured, verdict(t.met));
    }
    let _ = writeln!(md, "\n![latency](latency.svg)");
    md
}

/// The "Compared" table of one ward path against the baseline and the reference.
fn compared(md: &mut String, ward: &str, get: &dyn Fn(&str, &str) -> Option<f64>) {
    let _ = writeln!(md, "\n## Compared: {ward} (medians)\n");
    let _ = writeln!(
        md,
        "| figure | {ward} − baseline | {ward} ÷ baseline | {ward} ÷ reference | \
         reference − baseline | {ward} better than reference |\n|---|---:|---:|---:|---:|:-:|"
    );
    for f in FIGURES {
        let (w, b, n) = (
            get(ward, f.key),
            get("baseline", f.key),
            get("reference", f.key),
        );
        let diff = |x: Option<f64>, y: Option<f64>| {
            x.zip(y).map_or("—".into(), |(x, y)| {
                format!("{}{} {}", if x >= y { "+" } else { "" }, num(x - y), f.unit)
            })
        };
        let ratio = |x: Option<f64>, y: Option<f64>| {
            x.zip(y)
                .filter(|(_, y)| *y != 0.0)
                .map_or("—".into(), |(x, y)| format!("{:.2}x", x / y))
        };
        let better = match w.zip(n).and_then(|(w, n)| f.is_better(w, n)) {
            Some(true) => "yes",
            Some(false) => "no",
            None => "—",
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            f.label,
            diff(w, b),
            ratio(w, b),
            ratio(w, n),
            diff(n, b),
            better
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(status: &str, figs: &[(&'static str, f64)]) -> PathResult {
        PathResult {
            description: "",
            status: status.into(),
            failures: vec![],
            notes: vec![],
            figures: figs
                .iter()
                .map(|(k, v)| (*k, Summary::of(&[*v]).unwrap()))
                .collect(),
            otlp: None,
        }
    }

    #[test]
    fn costs_compare_each_variant_with_ward_l7() {
        let mut traced = path(
            "ok",
            &[("proxy_vcpu_per_krps", 0.15), ("fixed4_p99_ms", 0.5)],
        );
        traced.otlp = Some(OtlpResult {
            requests: 4,
            spans: 2000,
            bytes: 90_000,
            bad: 0,
            outcomes: [("exported".to_owned(), 2000.0)].into_iter().collect(),
        });
        let paths: BTreeMap<_, _> = [
            (
                "ward-l7",
                path(
                    "ok",
                    &[("proxy_vcpu_per_krps", 0.10), ("fixed4_p99_ms", 0.4)],
                ),
            ),
            ("ward-l7-traced", traced),
            (
                "ward-l7-audit-off",
                path("failed", &[("proxy_vcpu_per_krps", 0.05)]),
            ),
        ]
        .into_iter()
        .collect();
        let c = costs(&paths);
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c[0].path, "ward-l7-traced");
        assert_eq!(c[0].figure, "proxy_vcpu_per_krps");
        assert!((c[0].delta - 0.05).abs() < 1e-9);
        assert!((c[0].ratio.unwrap() - 1.5).abs() < 1e-9);
        assert!((c[0].paired.as_ref().unwrap().median - 1.5).abs() < 1e-9);
        assert_eq!(c[1].figure, "fixed4_p99_ms");
        let results = Results {
            schema: SCHEMA,
            mode: "smoke",
            date: "2026-01-01T00:00:00Z".into(),
            ward_rev: "abc".into(),
            ward_binary: "ward".into(),
            twin_ward_binary: None,
            machine: Machine {
                nproc: 2,
                cpu_model: "cpu".into(),
                kernel: "6".into(),
            },
            network: "loopback",
            network_detail: "loopback".into(),
            pinning: "none".into(),
            plan: Plan::smoke(),
            targets: targets(&paths),
            costs: c,
            paths,
        };
        let md = markdown(&results);
        assert!(md.contains(
            "| ward-l7-traced | ward-l7 | proxy pair CPU per 1000 rps | 0.150 vCPU | 0.100 vCPU | +0.050 vCPU | 1.500x | 1.500x (1.500–1.500) |"
        ), "{md}");
        assert!(md.contains("OTLP sink: 2000 spans in 4 exports"), "{md}");
        // Only the paths of the run get a column.
        assert!(
            md.contains(
                "| figure | unit | ward-l7 | ward-l7-traced | ward-l7-audit-off | targets |"
            ),
            "{md}"
        );
        let json = serde_json::to_value(&results).unwrap();
        assert_eq!(json["paths"]["ward-l7-traced"]["otlp"]["spans"], 2000);
        assert_eq!(json["costs"][0]["against"], "ward-l7");
    }

    #[test]
    fn paired_ratios_follow_the_rounds_and_need_every_round() {
        let with = |rounds: &[f64]| {
            let mut p = path("ok", &[]);
            p.figures
                .insert("proxy_vcpu_per_krps", Summary::of(rounds).unwrap());
            p
        };
        // Round by round the twin is 1.1x, 0.9x and 1.0x of ward-l7, although their medians
        // (0.20 and 0.20) are equal.
        let paths: BTreeMap<_, _> = [
            ("ward-l7", with(&[0.20, 0.30, 0.10])),
            ("ward-l7-twin", with(&[0.22, 0.27, 0.10])),
            ("ward-l7-audit-off", with(&[0.19, 0.18])),
        ]
        .into_iter()
        .collect();
        let c = costs(&paths);
        let twin = c.iter().find(|c| c.path == "ward-l7-twin").unwrap();
        let paired = twin.paired.as_ref().unwrap();
        assert!((paired.median - 1.0).abs() < 1e-9, "{paired:?}");
        assert!((paired.min - 0.9).abs() < 1e-9 && (paired.max - 1.1).abs() < 1e-9);
        // A round missing: no pairing.
        let off = c.iter().find(|c| c.path == "ward-l7-audit-off").unwrap();
        assert!(off.paired.is_none());
    }

    #[test]
    fn figure_keys_are_unique() {
        let mut keys: Vec<_> = FIGURES.iter().map(|f| f.key).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), FIGURES.len());
    }

    #[test]
    fn targets_are_judged_from_medians() {
        let paths: BTreeMap<_, _> = [
            (
                "baseline",
                path(
                    "ok",
                    &[("fixed16_p99_ms", 0.30), ("saturation_rps", 10_000.0)],
                ),
            ),
            (
                "ward-l4",
                path(
                    "ok",
                    &[("fixed16_p99_ms", 0.40), ("saturation_rps", 9_000.0)],
                ),
            ),
            (
                "reference",
                path(
                    "ok",
                    &[("fixed16_p99_ms", 0.50), ("saturation_rps", 8_000.0)],
                ),
            ),
        ]
        .into_iter()
        .collect();
        let checks = targets(&paths);
        let by = |prefix: &str| {
            checks
                .iter()
                .find(|t| t.target.starts_with(prefix))
                .map(|t| t.met)
                .unwrap()
        };
        let cases = [
            ("L4 pair: added p99 <= 0.15 ms at 1000 rps (16", Some(true)),
            ("L4 pair: added p99 <= 0.15 ms at 1000 rps (4 ", None),
            ("L4 saturation >= 0.97x", Some(false)),
            ("Every Ward figure", Some(true)),
            ("L7 (authz 10 rules + cached JWT) pair", None),
        ];
        for (prefix, want) in cases {
            assert_eq!(by(prefix), want, "{prefix}");
        }
    }

    #[test]
    fn markdown_shows_every_figure_and_judges_targets_beside_them() {
        let paths: BTreeMap<_, _> = [
            ("baseline", path("ok", &[("fixed4_p99_ms", 0.10)])),
            ("ward-l4", path("ok", &[("fixed4_p99_ms", 0.30)])),
            ("ward-l7", path("ok", &[("fixed4_p99_ms", 0.20)])),
            ("reference", path("failed", &[])),
        ]
        .into_iter()
        .collect();
        let results = Results {
            schema: SCHEMA,
            mode: "smoke",
            date: "2026-01-01T00:00:00Z".into(),
            ward_rev: "abc".into(),
            ward_binary: "ward".into(),
            twin_ward_binary: None,
            machine: Machine {
                nproc: 2,
                cpu_model: "cpu".into(),
                kernel: "6".into(),
            },
            network: "loopback",
            network_detail: "loopback".into(),
            pinning: "none".into(),
            plan: Plan::smoke(),
            targets: targets(&paths),
            costs: Vec::new(),
            paths,
        };
        let md = markdown(&results);
        for f in FIGURES {
            assert!(
                md.contains(&format!("| {} | {} |", f.label, f.unit)),
                "{}",
                f.key
            );
        }
        let row = md
            .lines()
            .find(|l| l.starts_with("| 1000 rps / 4 conns: p99 | ms |"))
            .unwrap();
        for want in [
            "| 0.100 |",
            "| 0.300 |",
            "| 0.200 |",
            "failed",
            "L4 pair: added p99 <= 0.15 ms at 1000 rps (4 conns): NOT met",
            "L7 (authz 10 rules + cached JWT) pair: added p99 <= 0.24 ms at 1000 rps (4 conns): met",
        ] {
            assert!(row.contains(want), "{want} in {row}");
        }
        let json = serde_json::to_value(&results).unwrap();
        assert_eq!(json["schema"], "ward-bench/1");
        assert_eq!(
            json["paths"]["ward-l4"]["figures"]["fixed4_p99_ms"]["median"],
            0.3
        );
    }

    #[test]
    fn the_header_says_which_workloads_ran_and_on_which_processes() {
        let note = |workloads, fresh_each_round, side_by_side| {
            mode_note(&Plan {
                workloads,
                fresh_each_round,
                side_by_side,
                ..Plan::smoke()
            })
        };
        let all = note(Workloads::All, false, false);
        assert!(all.contains("take turns") && !all.contains(';'), "{all}");
        let cost = note(Workloads::Cost, true, false);
        assert!(
            cost.contains("1000 rps phases only (`--cost-only`)"),
            "{cost}"
        );
        assert!(cost.contains("(`--fresh-each-round`)"), "{cost}");
        let bulk = note(Workloads::Bulk, false, false);
        assert!(
            bulk.contains("(`--bulk-only`)") && !bulk.contains("fresh"),
            "{bulk}"
        );
        let side = note(Workloads::Cost, true, true);
        assert!(
            side.contains("`--side-by-side`") && !side.contains("take turns"),
            "{side}"
        );
        let plan = Plan {
            workloads: Workloads::Cost,
            side_by_side: true,
            ..Plan::smoke()
        };
        assert_eq!(serde_json::to_value(plan).unwrap()["side_by_side"], true);
        assert_eq!(serde_json::to_value(plan).unwrap()["workloads"], "cost");
    }

    #[test]
    fn failed_paths_are_not_judged() {
        let paths: BTreeMap<_, _> = [
            ("baseline", path("ok", &[("saturation_rps", 10_000.0)])),
            ("ward-l4", path("failed", &[("saturation_rps", 10_000.0)])),
        ]
        .into_iter()
        .collect();
        let sat = targets(&paths)
            .into_iter()
            .find(|t| t.target.starts_with("L4 saturation >= 0.97x"))
            .unwrap();
        assert_eq!(sat.met, None);
    }
}
