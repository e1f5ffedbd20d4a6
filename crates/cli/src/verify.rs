//! `ward verify mtls`: asks a running sidecar's admin port for one probe connection
//! (`POST /verify/mtls`, crates/cli/src/admin.rs; the probe is `ward_proxy::probe`) and prints
//! what it proved (docs/verify.md).

use std::net::SocketAddr;
use std::process::ExitCode;

use http::StatusCode;
use ward_proxy::probe::{ProbeCert, ProbeReport};

use crate::proxy::admin_request;

#[derive(clap::Subcommand)]
pub(crate) enum VerifyCommand {
    /// Open one connection from a workload's sidecar to a service port, as the workload's
    /// own connection would go, and report the peer SPIFFE id, TLS version, key exchange,
    /// both certificates and the destination's decision.
    Mtls(MtlsArgs),
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
    let VerifyCommand::Mtls(args) = command;
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
