//! `ward certs`: every workload's certificate chain and the roots it trusts, from a running
//! `ward up` or `ward proxy` (its admin `/certs`), with the time each has left; what is close
//! to expiry is flagged (docs/certs.md).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use http::StatusCode;
use serde_json::Value;

/// Options of `ward certs`.
#[derive(clap::Args)]
pub(crate) struct CertsArgs {
    /// The admin address of `ward up` or `ward proxy`.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// Print the admin API's JSON, unchanged.
    #[arg(long)]
    json: bool,
    /// Flag what has less than this left, e.g. `7d`, `48h`. A workload leaf, renewed at half
    /// its lifetime, is flagged only once it is also past that point: renewal is late.
    #[arg(long, default_value = "7d", value_parser = crate::up::parse_duration)]
    warn: Duration,
}

/// One certificate as `ward certs` prints it.
#[derive(Debug, PartialEq)]
struct Row {
    workload: String,
    kind: &'static str,
    name: String,
    serial: String,
    not_before: String,
    not_after: String,
    left: i64,
    flagged: bool,
}

/// The rows of a `/certs` answer; `warn` in seconds.
fn rows(certs: &Value, warn: i64) -> Vec<Row> {
    let mut out = Vec::new();
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
    for w in certs
        .get("certificates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let workload = text(w, "workload");
        if w.get("status").and_then(Value::as_str) != Some("ACTIVE") {
            out.push(Row {
                workload,
                kind: "leaf",
                name: "no certificate yet".into(),
                serial: "-".into(),
                not_before: "-".into(),
                not_after: "-".into(),
                left: 0,
                flagged: true,
            });
            continue;
        }
        let chain = w.get("chain").and_then(Value::as_array);
        let roots = w.get("roots").and_then(Value::as_array);
        let lists = [("chain", chain), ("root", roots)];
        for (list, certs) in lists {
            for (i, c) in certs.into_iter().flatten().enumerate() {
                let left = c.get("secondsLeft").and_then(Value::as_i64).unwrap_or(0);
                let kind = match (list, i) {
                    ("chain", 0) => "leaf",
                    ("chain", _) => "intermediate",
                    _ => "root",
                };
                let name = if kind == "leaf" {
                    text(w, "spiffeId")
                } else {
                    text(c, "subject")
                };
                let flagged = left < warn && (kind != "leaf" || past_half(c, left));
                out.push(Row {
                    workload: workload.clone(),
                    kind,
                    name,
                    serial: text(c, "serial"),
                    not_before: text(c, "notBefore"),
                    not_after: text(c, "notAfter"),
                    left,
                    flagged,
                });
            }
        }
    }
    out
}

/// Whether a leaf with `left` seconds left is past half its lifetime (its renewal is due).
fn past_half(c: &Value, left: i64) -> bool {
    let at = |k: &str| {
        c.get(k)
            .and_then(Value::as_str)
            .and_then(|t| {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            })
            .map(|t| t.unix_timestamp())
    };
    match (at("notBefore"), at("notAfter")) {
        (Some(b), Some(a)) => left * 2 < a - b,
        _ => true,
    }
}

/// `3d04h`, `5h07m`, `expired 2h ago`.
fn left(seconds: i64) -> String {
    let s = seconds.unsigned_abs();
    let (d, h, m) = (s / 86_400, (s % 86_400) / 3600, (s % 3600) / 60);
    let text = if d > 0 {
        format!("{d}d{h:02}h")
    } else {
        format!("{h}h{m:02}m")
    };
    if seconds < 0 {
        format!("expired {text} ago")
    } else {
        text
    }
}

/// The table `ward certs` prints.
fn render(rows: &[Row], warn: Duration) -> String {
    let mut out = format!(
        "{:<2}{:<24} {:<13} {:<52} {:<34} {:<21} {:<21} {}\n",
        "", "WORKLOAD", "KIND", "IDENTITY/SUBJECT", "SERIAL", "NOT BEFORE", "NOT AFTER", "LEFT"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<2}{:<24} {:<13} {:<52} {:<34} {:<21} {:<21} {}\n",
            if r.flagged { "!" } else { "" },
            r.workload,
            r.kind,
            r.name,
            r.serial,
            r.not_before,
            r.not_after,
            if r.name == "no certificate yet" {
                "-".to_owned()
            } else {
                left(r.left)
            }
        ));
    }
    let flagged = rows.iter().filter(|r| r.flagged).count();
    if flagged > 0 {
        out.push_str(&format!(
            "! {flagged} certificate(s) expire within {} (a leaf: also past its renewal time)\n",
            left(i64::try_from(warn.as_secs()).unwrap_or(i64::MAX))
        ));
    }
    out
}

/// Exit status: 0 nothing flagged, 1 something is, 2 the admin API could not be asked.
pub(crate) async fn run(args: CertsArgs) -> ExitCode {
    let answer = crate::proxy::admin_request(args.admin, http::Method::GET, "/certs").await;
    let body = match answer {
        Ok((StatusCode::OK, body)) => body,
        Ok((status, body)) => {
            eprintln!(
                "ward certs: --admin {}: HTTP {status}: {}",
                args.admin,
                String::from_utf8_lossy(&body).trim()
            );
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("ward certs: --admin {}: {e:#}", args.admin);
            return ExitCode::from(2);
        }
    };
    let certs: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            eprintln!(
                "ward certs: --admin {}: not a /certs answer: {e}",
                args.admin
            );
            return ExitCode::from(2);
        }
    };
    let warn = i64::try_from(args.warn.as_secs()).unwrap_or(i64::MAX);
    let rows = rows(&certs, warn);
    if args.json {
        println!("{}", String::from_utf8_lossy(&body));
    } else {
        print!("{}", render(&rows, args.warn));
    }
    if rows.iter().any(|r| r.flagged) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_roots_under_the_threshold_and_late_leaves_only() {
        let day = 86_400;
        let certs = serde_json::json!({"certificates": [
            {"workload": "a/ok", "status": "ACTIVE", "spiffeId": "spiffe://td/ns/a/sa/ok",
             "chain": [{"serial": "01", "notBefore": "2026-12-04T00:00:00Z", "notAfter": "2026-12-05T00:00:00Z", "secondsLeft": 20 * 3600}],
             "roots": [{"subject": "O=td", "serial": "02", "notBefore": "2026-01-01T00:00:00Z", "notAfter": "2036-01-01T00:00:00Z", "secondsLeft": 3000 * day}]},
            {"workload": "a/late", "status": "ACTIVE", "spiffeId": "spiffe://td/ns/a/sa/late",
             "chain": [{"serial": "03", "notBefore": "2026-12-04T00:00:00Z", "notAfter": "2026-12-05T00:00:00Z", "secondsLeft": 2 * 3600},
                       {"subject": "O=inter", "serial": "04", "notBefore": "2026-01-01T00:00:00Z", "notAfter": "2026-12-10T00:00:00Z", "secondsLeft": 6 * day}],
             "roots": [{"subject": "O=td", "serial": "05", "notBefore": "2026-01-01T00:00:00Z", "notAfter": "2026-12-01T00:00:00Z", "secondsLeft": -3 * day}]},
            {"workload": "a/new", "status": "PENDING"},
        ]});
        let rows = rows(&certs, 7 * day);
        let flags: Vec<(&str, &str, bool)> = rows
            .iter()
            .map(|r| (r.workload.as_str(), r.kind, r.flagged))
            .collect();
        assert_eq!(
            flags,
            vec![
                ("a/ok", "leaf", false),
                ("a/ok", "root", false),
                ("a/late", "leaf", true),
                ("a/late", "intermediate", true),
                ("a/late", "root", true),
                ("a/new", "leaf", true),
            ]
        );
        let text = render(&rows, Duration::from_secs(7 * 86_400));
        assert!(text.contains("expired 3d00h ago"), "{text}");
        assert!(
            text.contains("4 certificate(s) expire within 7d00h"),
            "{text}"
        );
        assert_eq!(left(20 * 3600 + 61), "20h01m");
    }
}
