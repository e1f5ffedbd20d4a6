//! `ward verify mtls`: asks a running sidecar's admin port for one probe connection
//! (`POST /verify/mtls`, crates/cli/src/admin.rs; the probe is `ward_proxy::probe`) and prints
//! what it proved (docs/verify.md).
//!
//! `ward verify coverage`: reads `GET /coverage` (what the destination sidecars served over mTLS
//! and in plaintext, `ward_proxy::coverage`) and prints the share per workload pair and every
//! plaintext flow with the PeerAuthentication that allowed it; exit 1 if there is any.

use std::net::SocketAddr;
use std::process::ExitCode;

use http::StatusCode;
use ward_proxy::coverage::CoverageReport;
use ward_proxy::probe::{ProbeCert, ProbeReport};

use crate::proxy::admin_request;

#[derive(clap::Subcommand)]
pub(crate) enum VerifyCommand {
    /// Open one connection from a workload's sidecar to a service port, as the workload's
    /// own connection would go, and report the peer SPIFFE id, TLS version, key exchange,
    /// both certificates and the destination's decision.
    Mtls(MtlsArgs),
    /// From observed traffic: the share of connections and requests that were mTLS per
    /// workload pair, and every plaintext flow with its port and the PeerAuthentication that
    /// allowed it. Exits 1 when there was any plaintext flow.
    Coverage(CoverageArgs),
}

#[derive(clap::Args)]
pub(crate) struct CoverageArgs {
    /// The admin address of `ward up` or `ward proxy` running the destinations' sidecars.
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// The window: traffic in the last `1h`, `15m`, `90s`... (at most `24h`, what the sidecars
    /// keep).
    #[arg(long, default_value = "1h", value_parser = since)]
    since: std::time::Duration,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// `--since`: a positive duration of at most the sidecars' retention.
pub(crate) fn since(s: &str) -> Result<std::time::Duration, String> {
    let d = crate::up::parse_duration(s)?;
    if d.as_secs() > ward_proxy::coverage::RETENTION {
        return Err(format!(
            "{s:?}: the sidecars keep {}h of traffic at most",
            ward_proxy::coverage::RETENTION / 3600
        ));
    }
    Ok(d)
}

#[derive(clap::Args)]
pub(crate) struct MtlsArgs {
    /// The admin address of `ward up` or `ward proxy` running the source's sidecar.
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// The source workload, NAMESPACE/NAME (may be left out for `ward proxy`, which runs one).
    #[arg(long, default_value = "")]
    from: String,
    /// The destination: a service host or address, and its port (HOST:PORT).
    #[arg(long)]
    to: String,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(command: VerifyCommand) -> ExitCode {
    let args = match command {
        VerifyCommand::Mtls(args) => args,
        VerifyCommand::Coverage(args) => return run_coverage(args).await,
    };
    let path = format!(
        "/verify/mtls?from={}&to={}",
        query_value(&args.from),
        query_value(&args.to)
    );
    let (status, body) = match admin_request(args.admin, http::Method::POST, &path).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ward verify mtls: --admin {}: {e:#}", args.admin);
            return ExitCode::from(2);
        }
    };
    if status != StatusCode::OK {
        eprintln!(
            "ward verify mtls: --admin {}: HTTP {status}: {}",
            args.admin,
            String::from_utf8_lossy(&body).trim()
        );
        return ExitCode::from(2);
    }
    let report: ProbeReport = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "ward verify mtls: --admin {}: not a probe report: {e}",
                args.admin
            );
            return ExitCode::from(2);
        }
    };
    if args.json {
        println!("{}", String::from_utf8_lossy(&body));
    } else {
        print!("{}", render(&report));
    }
    if report.mutual_tls13 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Fetch the coverage report of the last `window` from an admin port.
pub(crate) async fn fetch_coverage(
    admin: SocketAddr,
    window: std::time::Duration,
) -> anyhow::Result<CoverageReport> {
    let path = format!("/coverage?since={}", window.as_secs().max(1));
    let (status, body) = admin_request(admin, http::Method::GET, &path).await?;
    if status != StatusCode::OK {
        anyhow::bail!("HTTP {status}: {}", String::from_utf8_lossy(&body).trim());
    }
    serde_json::from_slice(&body).map_err(|e| anyhow::anyhow!("not a coverage report: {e}"))
}

async fn run_coverage(args: CoverageArgs) -> ExitCode {
    let report = match fetch_coverage(args.admin, args.since).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ward verify coverage: --admin {}: {e:#}", args.admin);
            return ExitCode::from(2);
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", render_coverage(&report));
    }
    if report.plaintext.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Seconds since the epoch as RFC 3339 UTC.
pub(crate) fn utc(secs: u64) -> String {
    ward_proxy::humantime_utc(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

/// A share as a percentage, `-` when nothing was seen.
pub(crate) fn percent(share: Option<f64>) -> String {
    share.map_or_else(|| "-".to_owned(), |s| format!("{:.1}%", s * 100.0))
}

/// The coverage report as `ward verify coverage` prints it.
fn render_coverage(r: &CoverageReport) -> String {
    let mut out = format!("traffic from {} to {}\n", utc(r.since), utc(r.until));
    if r.complete_since > r.since {
        out.push_str(&format!(
            "  (counts complete only from {}: older buckets were not kept)\n",
            utc(r.complete_since)
        ));
    }
    out.push_str(&format!(
        "mTLS: {} of {} connections ({}), {} of {} requests ({})\n",
        r.mtls_connections,
        r.connections,
        percent(r.mtls_connection_share),
        r.mtls_requests,
        r.requests,
        percent(r.mtls_request_share)
    ));
    for (group, n) in &r.key_exchange {
        out.push_str(&format!("  key exchange {group}: {n} connections\n"));
    }
    if !r.pairs.is_empty() {
        out.push_str(&format!(
            "\n{:<28} {:<28} {:>12} {:>8} {:>12} {:>8}\n",
            "SOURCE", "DESTINATION", "CONNECTIONS", "MTLS", "REQUESTS", "MTLS"
        ));
    }
    for p in &r.pairs {
        out.push_str(&format!(
            "{:<28} {:<28} {:>12} {:>8} {:>12} {:>8}\n",
            p.source,
            p.destination,
            p.connections,
            percent(p.mtls_connection_share),
            p.requests,
            percent(p.mtls_request_share)
        ));
    }
    if r.plaintext.is_empty() {
        out.push_str("\nPASS: no plaintext flow\n");
    } else {
        out.push_str(&format!("\nFAIL: {} plaintext flows\n", r.plaintext.len()));
        for f in &r.plaintext {
            out.push_str(&format!(
                "  {} -> {} port {}: {} connections, {} requests, allowed by {} ({}), last seen {}\n",
                f.source_address.as_deref().unwrap_or(&f.source),
                f.destination,
                f.port,
                f.connections,
                f.requests,
                f.peer_authentication.as_deref().unwrap_or("Ward's default"),
                f.mode,
                utc(f.last_seen)
            ));
        }
    }
    out
}

/// `value` percent-encoded for a query string (RFC 3986: unreserved characters, `/` and `:`
/// kept).
fn query_value(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~/:[]".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn cert_line(c: &Option<ProbeCert>) -> String {
    match c {
        Some(c) => format!(
            "{}  serial {}  valid until {} ({})",
            c.identity,
            c.serial,
            c.not_after,
            left(c.seconds_left)
        ),
        None => "-".to_owned(),
    }
}

fn left(seconds: i64) -> String {
    if seconds < 0 {
        return format!("expired {}s ago", -seconds);
    }
    let (h, m) = (seconds / 3600, (seconds % 3600) / 60);
    format!("{h}h{m:02}m left")
}

/// The report as the lines `ward verify mtls` prints.
fn render(r: &ProbeReport) -> String {
    let mut out = format!("{} -> {}\n", r.from, r.to);
    let row = |out: &mut String, k: &str, v: &str| {
        out.push_str(&format!(
            "  {k:<18}{}\n",
            if v.is_empty() { "-" } else { v }
        ));
    };
    row(&mut out, "service", &r.service);
    row(
        &mut out,
        "endpoint",
        format!("{} {}", r.endpoint, r.transport).trim(),
    );
    if r.transport == "HBONE" {
        row(
            &mut out,
            "tls",
            &[&r.tls_version, &r.kx_group, &r.cipher_suite]
                .iter()
                .filter(|s| !s.is_empty())
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        );
        row(&mut out, "expected peer", &r.expected_identity);
        row(&mut out, "server cert", &cert_line(&r.server_cert));
        row(&mut out, "client cert", &cert_line(&r.client_cert));
    }
    let decision = match r.connect_status {
        Some(s) => format!("{} (CONNECT {s})", r.decision),
        None => r.decision.clone(),
    };
    row(&mut out, "decision", &decision);
    if r.mutual_tls13 {
        row(
            &mut out,
            "result",
            "PASS: mutual TLS 1.3 with the expected peer",
        );
    } else {
        row(&mut out, "result", "FAIL: not mutual TLS 1.3");
    }
    for p in &r.problems {
        row(&mut out, "problem", p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plaintext_report_fails_and_says_why() {
        let r = ProbeReport {
            from: "app/web".into(),
            to: "legacy:80".into(),
            service: "legacy.app.svc.cluster.local".into(),
            endpoint: "127.0.0.9:80".into(),
            transport: "PLAINTEXT".into(),
            decision: "ALLOW".into(),
            problems: vec!["the sidecar sends connections to legacy in plaintext".into()],
            ..ProbeReport::default()
        };
        let text = render(&r);
        assert!(text.contains("FAIL: not mutual TLS 1.3"), "{text}");
        assert!(
            text.contains("problem           the sidecar sends"),
            "{text}"
        );
        assert!(!text.contains("server cert"), "{text}");
        assert_eq!(left(3 * 3600 + 5 * 60 + 9), "3h05m left");
        assert_eq!(left(-4), "expired 4s ago");
        assert_eq!(query_value("app/cli"), "app/cli");
        assert_eq!(query_value("a b&to=x"), "a%20b%26to%3Dx");
    }
}
