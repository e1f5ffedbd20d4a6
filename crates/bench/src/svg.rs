//! `latency.svg`, written by hand: one panel per fixed-rate connection count, latency (ms) at
//! each percentile per path, on the usual log "nines" axis (50%, 90%, 99%, 99.9%, 99.99%).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::stats::percentile;

const PANEL_W: f64 = 460.0;
const PANEL_H: f64 = 300.0;
const MARGIN: f64 = 55.0;
/// The x axis ends at 99.99% (four nines).
const NINES: f64 = 4.0;
const COLORS: [&str; 4] = ["#444444", "#1f77b4", "#2ca02c", "#d62728"];

/// Latencies (ns, pooled over rounds) per path name, per connection count.
pub(crate) type Pools = BTreeMap<usize, Vec<(&'static str, Vec<u64>)>>;

/// Renders the plot; paths without samples are left out of a panel.
pub(crate) fn latency_plot(pools: &Pools, rate: u32) -> String {
    let width = MARGIN + pools.len().max(1) as f64 * (PANEL_W + MARGIN);
    let height = PANEL_H + 2.0 * MARGIN + 30.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for (i, (conns, paths)) in pools.iter().enumerate() {
        let x0 = MARGIN + i as f64 * (PANEL_W + MARGIN);
        panel(&mut svg, x0, MARGIN, *conns, rate, paths);
    }
    svg.push_str("</svg>\n");
    svg
}

/// The percentile (0–100) at position `x` in [0, NINES] nines.
fn quantile_at(nines: f64) -> f64 {
    100.0 * (1.0 - 10f64.powf(-nines))
}

fn panel(svg: &mut String, x0: f64, y0: f64, conns: usize, rate: u32, paths: &[(&str, Vec<u64>)]) {
    let steps = 200;
    let curves: Vec<(&str, Vec<(f64, f64)>)> = paths
        .iter()
        .filter_map(|(name, sorted)| {
            let pts: Option<Vec<(f64, f64)>> = (0..=steps)
                .map(|s| {
                    let n = NINES * f64::from(s) / f64::from(steps);
                    percentile(sorted, quantile_at(n)).map(|ns| (n, ns as f64 / 1e6))
                })
                .collect();
            pts.map(|p| (*name, p))
        })
        .collect();
    let ymax = curves
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(0.0f64, f64::max)
        .max(0.001)
        * 1.1;
    let px = |n: f64| x0 + n / NINES * PANEL_W;
    let py = |ms: f64| y0 + PANEL_H - ms / ymax * PANEL_H;
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" font-weight=\"bold\">{rate} rps, {conns} keep-alive connections: latency by percentile</text>",
        x0,
        y0 - 20.0
    );
    let _ = writeln!(
        svg,
        "<rect x=\"{x0:.1}\" y=\"{y0:.1}\" width=\"{PANEL_W}\" height=\"{PANEL_H}\" fill=\"none\" stroke=\"#999\"/>"
    );
    for (n, label) in [
        (0.0, "0%"),
        (1.0, "90%"),
        (2.0, "99%"),
        (3.0, "99.9%"),
        (4.0, "99.99%"),
    ] {
        let x = px(n);
        let _ = writeln!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"{y0:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#eee\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>",
            y0 + PANEL_H,
            y0 + PANEL_H + 16.0
        );
    }
    for t in 0..=4 {
        let ms = ymax * f64::from(t) / 4.0;
        let y = py(ms);
        let _ = writeln!(
            svg,
            "<line x1=\"{x0:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{ms:.2}</text>",
            x0 + PANEL_W,
            x0 - 4.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 {:.1} {:.1})\">ms</text>",
        x0 - 40.0,
        y0 + PANEL_H / 2.0,
        x0 - 40.0,
        y0 + PANEL_H / 2.0
    );
    for (i, (name, pts)) in curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<String> = pts
            .iter()
            .map(|(n, ms)| format!("{:.1},{:.1}", px(*n), py(*ms)))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>",
            points.join(" ")
        );
        let ly = y0 + 14.0 + i as f64 * 16.0;
        let _ = writeln!(
            svg,
            "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"{color}\" stroke-width=\"3\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{name}</text>",
            x0 + 10.0,
            ly - 4.0,
            x0 + 30.0,
            ly - 4.0,
            x0 + 35.0,
            ly
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_each_path_with_samples() {
        let samples: Vec<u64> = (1..=1000).map(|i| i * 1000).collect();
        let mut pools = Pools::new();
        pools.insert(4, vec![("baseline", samples.clone()), ("ward-l4", samples)]);
        pools.insert(16, vec![("baseline", Vec::new())]);
        let svg = latency_plot(&pools, 1000);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains(">ward-l4</text>"));
    }

    #[test]
    fn nines_axis() {
        let cases = [(0.0, 0.0), (1.0, 90.0), (2.0, 99.0), (4.0, 99.99)];
        for (n, q) in cases {
            assert!((quantile_at(n) - q).abs() < 1e-9, "{n}");
        }
    }
}
