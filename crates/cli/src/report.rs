//! `ward report`: the evidence pack (docs/report.md). It collects (I/O: the config files, a
//! running `ward up`'s admin port, the audit trail), then [`build`] decides every check from
//! what was collected (pure), and the report is written as `report.json` and one
//! self-contained `report.html` (no script, no external resource).
//!
//! The engines are the ones the other commands use: `ward analyze`
//! ([`ward_config::all_findings`]), `ward access-matrix` ([`ward_config::matrix`]),
//! `ward verify coverage` (`GET /coverage`), `ward audit verify` (`ward_audit::verify`), and
//! the admin port's `/certs` and `/break-glass`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use serde::Serialize;
use serde_json::{json, Value};
use ward_config::matrix::{access_matrix, Access, Matrix};
use ward_config::{Diagnostic, Severity};
use ward_proxy::breakglass::Grant;
use ward_proxy::coverage::CoverageReport;

use crate::access_matrix::{esc, render_html_tables, STYLE};
use crate::verify::{percent, utc};

/// `ward report` flags.
#[derive(clap::Args)]
pub(crate) struct ReportArgs {
    /// The mesh's config: files or directories of Istio YAML (the same `ward up` serves).
    #[arg(short = 'f', long = "filename", required = true)]
    paths: Vec<PathBuf>,
    /// The admin address of the running `ward up`.
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// The directory to write `report.html` and `report.json` into (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// The window of observed traffic for mTLS coverage (at most 24h).
    #[arg(long, default_value = "24h", value_parser = crate::verify::since)]
    since: Duration,
    /// The audit trail's directory (`ward up --audit-dir`), verified with `--root`.
    #[arg(long, value_name = "DIR", requires = "root")]
    audit_dir: Option<PathBuf>,
    /// The mesh root certificate (PEM) the trail's checkpoints must chain to:
    /// `<state-dir>/ca/root-cert.pem`.
    #[arg(long, value_name = "PEM", requires = "audit_dir")]
    root: Option<PathBuf>,
}

/// A check's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Status {
    /// The evidence shows the control in place.
    Pass,
    /// The evidence shows a gap.
    Fail,
    /// Nothing to check (no HTTP port, no traffic in the window).
    NotApplicable,
    /// The evidence could not be collected (no audit trail given, the admin port does not
    /// serve it).
    NotAvailable,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::NotApplicable => "not applicable",
            Status::NotAvailable => "not available",
        }
    }

    fn class(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::NotApplicable | Status::NotAvailable => "na",
        }
    }
}

/// One check, with its evidence.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Check {
    pub(crate) id: &'static str,
    pub(crate) title: &'static str,
    pub(crate) status: Status,
    /// One sentence: what the evidence shows.
    pub(crate) summary: String,
    /// `config` (the YAML, decided offline), `live` (the admin port) or `audit trail`.
    pub(crate) source: &'static str,
    /// When the evidence was collected (RFC 3339 UTC).
    pub(crate) collected_at: String,
    /// The numbers and lists.
    pub(crate) evidence: Value,
}

/// A control of a framework and the checks that give its evidence.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Control {
    pub(crate) framework: &'static str,
    pub(crate) id: &'static str,
    pub(crate) title: &'static str,
    pub(crate) checks: Vec<&'static str>,
    /// Fail if any check fails; pass if any passes and none fails; else the first's status.
    pub(crate) status: Status,
}

/// What was collected, with when.
pub(crate) struct Inputs {
    pub(crate) config_paths: Vec<String>,
    pub(crate) config_at: SystemTime,
    pub(crate) findings: Vec<Diagnostic>,
    pub(crate) matrix: Matrix,
    pub(crate) admin: String,
    pub(crate) live_at: SystemTime,
    /// `/config_dump`: the trust domain and the serving generation.
    pub(crate) config_dump: Option<Value>,
    /// `/certs`.
    pub(crate) certs: Result<Vec<Value>, String>,
    /// `/coverage`.
    pub(crate) coverage: Result<CoverageReport, String>,
    /// `/break-glass`.
    pub(crate) grants: Result<Vec<Grant>, String>,
    /// The trail's verification (`None`: no `--audit-dir`).
    pub(crate) audit: Option<Result<(ward_audit::Report, bool), String>>,
    pub(crate) audit_at: SystemTime,
}

/// The report.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Report {
    pub(crate) generated_at: String,
    pub(crate) config: Vec<String>,
    pub(crate) admin: String,
    pub(crate) trust_domain: Option<String>,
    pub(crate) config_generation: Option<u64>,
    /// Checks by status.
    pub(crate) summary: Value,
    pub(crate) controls: Vec<Control>,
    pub(crate) checks: Vec<Check>,
    /// Break-glass grants, ports that accept plaintext, and analyzer findings.
    pub(crate) security_exceptions: Value,
    pub(crate) certificates: Value,
    pub(crate) jwt_by_route: Vec<Value>,
    pub(crate) egress: Value,
    pub(crate) coverage: Value,
    pub(crate) access_matrix: Value,
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn at(t: SystemTime) -> String {
    utc(secs(t))
}

fn finding_json(f: &Diagnostic) -> Value {
    json!({
        "severity": format!("{:?}", f.severity).to_lowercase(),
        "code": f.code, "file": f.file, "line": f.line,
        "object": f.object, "field": f.field, "message": f.message,
    })
}

/// Seconds left of a certificate whose `notAfter` is `not_after` (RFC 3339) at `now`.
fn seconds_left(not_after: &str, now: SystemTime) -> Option<i64> {
    let t = time::OffsetDateTime::parse(not_after, &time::format_description::well_known::Rfc3339)
        .ok()?;
    let now = time::OffsetDateTime::from(now);
    Some((t - now).whole_seconds())
}

/// Least time left a workload certificate must have: Istio workload certificates live 24 h and
/// are renewed at half their life, so less than an hour left means renewal is failing.
const CERT_MIN_LEFT: i64 = 3600;

/// Decide every check from what was collected. Pure.
pub(crate) fn build(i: &Inputs, now: SystemTime) -> Report {
    let config_at = at(i.config_at);
    let live_at = at(i.live_at);
    let mut checks = Vec::new();
    let m = &i.matrix;

    // (a)(1) / A.9: every workload port is covered by an AuthorizationPolicy.
    let open: Vec<Value> = m
        .sources
        .iter()
        .filter(|s| s.kind == "mesh")
        .flat_map(|s| m.cells.iter().filter(move |c| c.from == s.from))
        .filter(|c| c.access == Access::Allowed && c.no_allow_policy)
        .map(|c| json!({ "destination": c.to, "from": c.from, "condition": c.condition }))
        .collect();
    checks.push(Check {
        id: "authz-coverage",
        title: "Every service port is governed by an ALLOW AuthorizationPolicy (least privilege)",
        status: if open.is_empty() {
            Status::Pass
        } else {
            Status::Fail
        },
        summary: if open.is_empty() {
            format!(
                "none of the {} destinations is open to any mesh identity without an ALLOW policy",
                m.destinations.len()
            )
        } else {
            format!(
                "{} of {} destinations accept any mesh identity: no ALLOW policy applies",
                open.len(),
                m.destinations.len()
            )
        },
        source: "config",
        collected_at: config_at.clone(),
        evidence: json!({ "openToAnyMeshIdentity": open, "destinations": m.destinations.len() }),
    });

    // Analyzer findings that weaken access control or transport.
    let serious: Vec<&Diagnostic> = i
        .findings
        .iter()
        .filter(|f| f.severity != Severity::Info)
        .collect();
    checks.push(Check {
        id: "config-analysis",
        title: "The config analysis (ward analyze) finds no error or warning",
        status: if serious.is_empty() {
            Status::Pass
        } else {
            Status::Fail
        },
        summary: format!(
            "{} errors or warnings, {} informational findings",
            serious.len(),
            i.findings.len() - serious.len()
        ),
        source: "config",
        collected_at: config_at.clone(),
        evidence: Value::Array(i.findings.iter().map(finding_json).collect()),
    });

    // Security exceptions: active break-glass grants.
    let (exc_status, exc_summary, grants_json) = match &i.grants {
        Ok(grants) => {
            let active: Vec<&Grant> = grants.iter().filter(|g| g.status == "active").collect();
            (
                if active.is_empty() {
                    Status::Pass
                } else {
                    Status::Fail
                },
                format!(
                    "{} break-glass grants active, {} in total since the process started",
                    active.len(),
                    grants.len()
                ),
                serde_json::to_value(grants).unwrap_or_default(),
            )
        }
        Err(e) => (
            Status::NotAvailable,
            format!("break-glass state not available: {e}"),
            Value::Null,
        ),
    };
    checks.push(Check {
        id: "no-active-exception",
        title: "No security exception (break-glass) is in force",
        status: exc_status,
        summary: exc_summary,
        source: "live",
        collected_at: live_at.clone(),
        evidence: grants_json.clone(),
    });

    // (b) / A.12.4: the audit trail verifies.
    let audit_at = at(i.audit_at);
    let audit_check = match &i.audit {
        None => Check {
            id: "audit-trail",
            title: "The audit trail is complete and unaltered (ward audit verify)",
            status: Status::NotAvailable,
            summary: "not available: no audit trail given (--audit-dir and --root)".into(),
            source: "audit trail",
            collected_at: audit_at,
            evidence: Value::Null,
        },
        Some(Err(e)) => Check {
            id: "audit-trail",
            title: "The audit trail is complete and unaltered (ward audit verify)",
            status: Status::Fail,
            summary: format!("the trail could not be read: {e}"),
            source: "audit trail",
            collected_at: audit_at,
            evidence: Value::Null,
        },
        Some(Ok((r, sealed))) => Check {
            id: "audit-trail",
            title: "The audit trail is complete and unaltered (ward audit verify)",
            status: if r.ok { Status::Pass } else { Status::Fail },
            summary: match &r.problem {
                None => format!(
                    "{} records in {} files, {} signed checkpoints verified{}{}",
                    r.records,
                    r.files,
                    r.checkpoints,
                    if *sealed {
                        "; the seal file matches"
                    } else {
                        "; no seal file"
                    },
                    if r.unsealed > 0 {
                        format!("; {} records after the last checkpoint", r.unsealed)
                    } else {
                        String::new()
                    }
                ),
                Some(p) => format!("FAILED at {}:{}: {}", p.file, p.line, p.what),
            },
            source: "audit trail",
            collected_at: audit_at,
            evidence: serde_json::to_value(r).unwrap_or_default(),
        },
    };
    checks.push(audit_check);

    // (c)(1) / A.13: no port accepts plaintext.
    let plain_ports: Vec<Value> = m
        .ports
        .iter()
        .filter(|p| p.plaintext_accepted)
        .map(|p| json!({ "port": p.port, "mode": p.mode.to_string(), "setBy": p.policy, "level": p.level }))
        .collect();
    checks.push(Check {
        id: "strict-mtls",
        title: "Every workload port requires mutual TLS (PeerAuthentication STRICT)",
        status: if plain_ports.is_empty() {
            Status::Pass
        } else {
            Status::Fail
        },
        summary: format!(
            "{} of {} workload ports accept plaintext",
            plain_ports.len(),
            m.ports.len()
        ),
        source: "config",
        collected_at: config_at.clone(),
        evidence: json!({ "plaintextPorts": plain_ports, "ports": m.ports.len() }),
    });

    // (d): every workload holds a valid mesh certificate.
    let certs_check = match &i.certs {
        Ok(certs) => {
            let mut bad = Vec::new();
            let mut least: Option<i64> = None;
            for c in certs {
                let left = c["notAfter"].as_str().and_then(|t| seconds_left(t, now));
                if c["status"] != "ACTIVE" || left.is_none_or(|l| l < CERT_MIN_LEFT) {
                    bad.push(c.clone());
                }
                if let Some(l) = left {
                    least = Some(least.map_or(l, |x: i64| x.min(l)));
                }
            }
            Check {
                id: "workload-identity",
                title: "Every workload holds a valid SPIFFE certificate from the mesh CA",
                status: if certs.is_empty() || !bad.is_empty() {
                    Status::Fail
                } else {
                    Status::Pass
                },
                summary: format!(
                    "{} workload certificates, {} pending, expired or with less than 1h left; least time left {}",
                    certs.len(),
                    bad.len(),
                    least.map_or("-".to_owned(), |l| format!("{}h{:02}m", l / 3600, (l % 3600) / 60))
                ),
                source: "live",
                collected_at: live_at.clone(),
                evidence: json!({ "problems": bad, "leastSecondsLeft": least }),
            }
        }
        Err(e) => Check {
            id: "workload-identity",
            title: "Every workload holds a valid SPIFFE certificate from the mesh CA",
            status: Status::NotAvailable,
            summary: format!("certificates not available: {e}"),
            source: "live",
            collected_at: live_at.clone(),
            evidence: Value::Null,
        },
    };
    checks.push(certs_check);

    // (d): JWT enforcement per HTTP route.
    let mut jwt_by_route = Vec::new();
    for d in m.destinations.iter().filter(|d| {
        d.protocol.is_some_and(|p| {
            matches!(
                p,
                ward_config::Protocol::Http
                    | ward_config::Protocol::Http2
                    | ward_config::Protocol::Grpc
            )
        })
    }) {
        let cells: Vec<_> = m
            .cells
            .iter()
            .filter(|c| c.to == d.to && c.access != Access::Denied)
            .collect();
        let without: Vec<&str> = cells
            .iter()
            .filter(|c| !c.requires_token)
            .map(|c| c.from.as_str())
            .collect();
        jwt_by_route.push(json!({
            "route": d.to,
            "workloads": d.workloads,
            "reachableFrom": cells.len(),
            "tokenRequiredForAll": !cells.is_empty() && without.is_empty(),
            "reachableWithoutToken": without,
        }));
    }
    let jwt_not_required: Vec<Value> = i
        .findings
        .iter()
        .filter(|f| f.code == ward_config::code::JWT_NOT_REQUIRED)
        .map(finding_json)
        .collect();
    checks.push(Check {
        id: "jwt-enforced",
        title: "Where a RequestAuthentication applies, a policy requires a valid token",
        status: if jwt_by_route.is_empty() {
            Status::NotApplicable
        } else if jwt_not_required.is_empty() {
            Status::Pass
        } else {
            Status::Fail
        },
        summary: if jwt_by_route.is_empty() {
            "no HTTP route in the mesh".to_owned()
        } else {
            format!(
                "{} HTTP routes, {} require a token from every caller; {} RequestAuthentications let tokenless requests through",
                jwt_by_route.len(),
                jwt_by_route
                    .iter()
                    .filter(|r| r["tokenRequiredForAll"] == true)
                    .count(),
                jwt_not_required.len()
            )
        },
        source: "config",
        collected_at: config_at.clone(),
        evidence: json!({ "routes": jwt_by_route, "tokenlessAllowed": jwt_not_required }),
    });

    // (e)(1) / A.13: observed traffic was mTLS, with the post-quantum key exchange.
    let (cov_check, pq_check, coverage_json) = match &i.coverage {
        Ok(c) => {
            let flows = c.plaintext.len();
            let cov = Check {
                id: "mtls-coverage",
                title: "All traffic served in the window arrived over mutual TLS (observed)",
                status: if c.connections == 0 {
                    Status::NotApplicable
                } else if flows == 0 {
                    Status::Pass
                } else {
                    Status::Fail
                },
                summary: format!(
                    "{} of {} connections ({}) and {} of {} requests ({}) over mTLS since {}; {} plaintext flows",
                    c.mtls_connections,
                    c.connections,
                    percent(c.mtls_connection_share),
                    c.mtls_requests,
                    c.requests,
                    percent(c.mtls_request_share),
                    utc(c.complete_since),
                    flows
                ),
                source: "live",
                collected_at: live_at.clone(),
                evidence: json!({ "pairs": c.pairs, "plaintext": c.plaintext }),
            };
            let pq = c.key_exchange.get("X25519MLKEM768").copied().unwrap_or(0);
            let pq_check = Check {
                id: "pq-key-exchange",
                title:
                    "mTLS connections used the post-quantum hybrid key exchange (X25519MLKEM768)",
                status: if c.mtls_connections == 0 {
                    Status::NotApplicable
                } else if pq == c.mtls_connections {
                    Status::Pass
                } else {
                    Status::Fail
                },
                summary: format!(
                    "{pq} of {} mTLS connections used X25519MLKEM768",
                    c.mtls_connections
                ),
                source: "live",
                collected_at: live_at,
                evidence: json!({ "keyExchange": c.key_exchange }),
            };
            (cov, pq_check, serde_json::to_value(c).unwrap_or_default())
        }
        Err(e) => {
            let na = |id, title| Check {
                id,
                title,
                status: Status::NotAvailable,
                summary: format!("coverage not available: {e}"),
                source: "live",
                collected_at: live_at.clone(),
                evidence: Value::Null,
            };
            (
                na(
                    "mtls-coverage",
                    "All traffic served in the window arrived over mutual TLS (observed)",
                ),
                na(
                    "pq-key-exchange",
                    "mTLS connections used the post-quantum hybrid key exchange (X25519MLKEM768)",
                ),
                Value::Null,
            )
        }
    };
    checks.push(cov_check);
    checks.push(pq_check);

    // A.13: the egress allow-list is declared.
    let unlisted: Vec<&str> = m
        .egress
        .iter()
        .filter(|e| e.outbound_traffic_policy != "REGISTRY_ONLY")
        .map(|e| e.workload.as_str())
        .collect();
    checks.push(Check {
        id: "egress-allow-list",
        title: "Every workload's egress is limited to declared external hosts (REGISTRY_ONLY)",
        status: if m.egress.is_empty() {
            Status::NotApplicable
        } else if unlisted.is_empty() {
            Status::Pass
        } else {
            Status::Fail
        },
        summary: format!(
            "{} of {} workloads may call any external host (outboundTrafficPolicy ALLOW_ANY)",
            unlisted.len(),
            m.egress.len()
        ),
        source: "config",
        collected_at: config_at,
        evidence: json!({ "allowAny": unlisted }),
    });

    let controls = controls(&checks);
    let count = |s: Status| checks.iter().filter(|c| c.status == s).count();
    let summary = json!({
        "pass": count(Status::Pass), "fail": count(Status::Fail),
        "notApplicable": count(Status::NotApplicable), "notAvailable": count(Status::NotAvailable),
    });
    let certificates = match &i.certs {
        Ok(certs) => {
            let mut certs = certs.clone();
            for c in &mut certs {
                let left = c["notAfter"].as_str().and_then(|t| seconds_left(t, now));
                c["secondsLeft"] = json!(left);
            }
            Value::Array(certs)
        }
        Err(_) => Value::Null,
    };
    let dump = i.config_dump.as_ref();
    Report {
        generated_at: at(now),
        config: i.config_paths.clone(),
        admin: i.admin.clone(),
        trust_domain: dump
            .and_then(|d| d["mesh"]["trustDomain"].as_str())
            .map(str::to_owned),
        config_generation: dump.and_then(|d| d["status"]["generation"].as_u64()),
        summary,
        controls,
        checks,
        security_exceptions: json!({
            "breakGlass": grants_json,
            "plaintextPorts": m.ports.iter().filter(|p| p.plaintext_accepted).collect::<Vec<_>>(),
            "findings": i.findings.iter().filter(|f| f.severity != Severity::Info).map(finding_json).collect::<Vec<_>>(),
        }),
        certificates,
        jwt_by_route,
        egress: serde_json::to_value(&m.egress).unwrap_or_default(),
        coverage: coverage_json,
        access_matrix: serde_json::to_value(m).unwrap_or_default(),
    }
}

/// The controls, HIPAA §164.312 then ISO/IEC 27001 Annex A, and the checks that evidence them.
fn controls(checks: &[Check]) -> Vec<Control> {
    let table: [(&str, &str, &str, &[&str]); 8] = [
        (
            "HIPAA",
            "§164.312(a)(1)",
            "Access control",
            &["authz-coverage", "config-analysis", "no-active-exception"],
        ),
        ("HIPAA", "§164.312(b)", "Audit controls", &["audit-trail"]),
        (
            "HIPAA",
            "§164.312(c)(1)",
            "Integrity",
            &["strict-mtls", "mtls-coverage"],
        ),
        (
            "HIPAA",
            "§164.312(d)",
            "Person or entity authentication",
            &["workload-identity", "jwt-enforced"],
        ),
        (
            "HIPAA",
            "§164.312(e)(1)",
            "Transmission security",
            &["mtls-coverage", "pq-key-exchange", "strict-mtls"],
        ),
        (
            "ISO 27001",
            "A.9",
            "Access control",
            &[
                "authz-coverage",
                "workload-identity",
                "jwt-enforced",
                "no-active-exception",
            ],
        ),
        (
            "ISO 27001",
            "A.12.4",
            "Logging and monitoring",
            &["audit-trail"],
        ),
        (
            "ISO 27001",
            "A.13",
            "Communications security",
            &["strict-mtls", "mtls-coverage", "egress-allow-list"],
        ),
    ];
    table
        .iter()
        .map(|(framework, id, title, ids)| {
            let statuses: Vec<Status> = ids
                .iter()
                .filter_map(|id| checks.iter().find(|c| c.id == *id).map(|c| c.status))
                .collect();
            let status = if statuses.contains(&Status::Fail) {
                Status::Fail
            } else if statuses.contains(&Status::Pass) {
                Status::Pass
            } else {
                statuses.first().copied().unwrap_or(Status::NotAvailable)
            };
            Control {
                framework,
                id,
                title,
                checks: ids.to_vec(),
                status,
            }
        })
        .collect()
}

const REPORT_STYLE: &str = "h1{margin-bottom:0.2em}.meta{color:#555;margin-top:0}\
.pass{background:#c8ecc8}.fail{background:#f6c4c4}.na{background:#eee;color:#666}\
section{margin-bottom:2em}pre{white-space:pre-wrap;font-size:0.85em;background:#f7f7f7;padding:0.5em}\
details{margin:0.3em 0 0.8em}";

fn status_cell(s: Status) -> String {
    format!("<td class=\"{}\">{}</td>", s.class(), s.as_str())
}

/// A value as an HTML table when it is a list of flat objects, else pretty JSON.
fn evidence_html(v: &Value) -> String {
    match v {
        Value::Null => "<p class=\"note\">no evidence collected</p>".to_owned(),
        Value::Array(items) if items.is_empty() => "<p class=\"note\">none</p>".to_owned(),
        Value::Array(items) if items.iter().all(Value::is_object) => {
            let mut keys: Vec<&String> = Vec::new();
            for it in items {
                for k in it.as_object().into_iter().flat_map(|o| o.keys()) {
                    if !keys.contains(&k) {
                        keys.push(k);
                    }
                }
            }
            let mut out = String::from("<table><tr>");
            for k in &keys {
                let _ = write!(out, "<th>{}</th>", esc(k));
            }
            out.push_str("</tr>");
            for it in items {
                out.push_str("<tr>");
                for k in &keys {
                    let cell = match &it[k.as_str()] {
                        Value::String(s) => s.clone(),
                        Value::Null => String::new(),
                        other => other.to_string(),
                    };
                    let _ = write!(out, "<td>{}</td>", esc(&cell));
                }
                out.push_str("</tr>");
            }
            out.push_str("</table>");
            out
        }
        other => format!(
            "<pre>{}</pre>",
            esc(&serde_json::to_string_pretty(other).unwrap_or_default())
        ),
    }
}

/// One self-contained page: no script, no external resource.
pub(crate) fn render_html(r: &Report, matrix: &Matrix) -> String {
    let mut out = String::new();
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    // Nothing but the inline style may load or run: a report that tried would show it in the
    // browser's console.
    out.push_str("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">");
    out.push_str("<title>Ward compliance evidence</title>");
    let _ = write!(
        out,
        "<style>{STYLE}{REPORT_STYLE}</style></head><body><h1>Ward compliance evidence</h1>"
    );
    let _ = write!(
        out,
        "<p class=\"meta\">Generated {} from the running mesh at <code>{}</code> (trust domain {}, config generation {}) and the config <code>{}</code>. Each check names its source and when its evidence was collected.</p>",
        esc(&r.generated_at),
        esc(&r.admin),
        esc(r.trust_domain.as_deref().unwrap_or("unknown")),
        r.config_generation.map_or("unknown".to_owned(), |g| g.to_string()),
        esc(&r.config.join(", "))
    );
    let _ = write!(
        out,
        "<p><b>{}</b> pass, <b>{}</b> fail, <b>{}</b> not applicable, <b>{}</b> not available.</p>",
        r.summary["pass"], r.summary["fail"], r.summary["notApplicable"], r.summary["notAvailable"]
    );
    out.push_str("<section><h2>Controls</h2><table><tr><th>framework</th><th>control</th><th>title</th><th>status</th><th>checks</th></tr>");
    for c in &r.controls {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td>{}<td>{}</td></tr>",
            esc(c.framework),
            esc(c.id),
            esc(c.title),
            status_cell(c.status),
            c.checks
                .iter()
                .map(|id| format!("<a href=\"#{id}\">{id}</a>"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    out.push_str("</table></section>");
    for framework in ["HIPAA", "ISO 27001"] {
        for c in r.controls.iter().filter(|c| c.framework == framework) {
            let _ = write!(
                out,
                "<section><h2>{} {} {}</h2><table><tr><th>check</th><th>status</th><th>evidence</th><th>source</th><th>collected</th></tr>",
                esc(c.framework),
                esc(c.id),
                esc(c.title)
            );
            for id in &c.checks {
                if let Some(k) = r.checks.iter().find(|k| k.id == *id) {
                    let _ = write!(
                        out,
                        "<tr><td><a href=\"#{}\">{}</a></td>{}<td>{}</td><td>{}</td><td>{}</td></tr>",
                        k.id,
                        esc(k.title),
                        status_cell(k.status),
                        esc(&k.summary),
                        k.source,
                        esc(&k.collected_at)
                    );
                }
            }
            out.push_str("</table></section>");
        }
    }
    out.push_str("<section><h2>Checks and their evidence</h2>");
    for k in &r.checks {
        let _ = write!(
            out,
            "<h3 id=\"{}\">{} <span class=\"{}\">&nbsp;{}&nbsp;</span></h3><p>{}</p><p class=\"note\">source: {}, collected {}</p><details><summary>evidence</summary>{}</details>",
            k.id,
            esc(k.title),
            k.status.class(),
            k.status.as_str(),
            esc(&k.summary),
            k.source,
            esc(&k.collected_at),
            evidence_html(&k.evidence)
        );
    }
    out.push_str("</section>");
    out.push_str("<section><h2>Security exceptions and bypasses</h2><h3>Break-glass grants</h3>");
    out.push_str(&evidence_html(&r.security_exceptions["breakGlass"]));
    out.push_str("<h3>Ports that accept plaintext</h3>");
    out.push_str(&evidence_html(&r.security_exceptions["plaintextPorts"]));
    out.push_str("<h3>Analyzer warnings and errors</h3>");
    out.push_str(&evidence_html(&r.security_exceptions["findings"]));
    out.push_str("</section>");
    out.push_str("<section><h2>Certificate validity window</h2>");
    out.push_str(&evidence_html(&r.certificates));
    out.push_str("</section><section><h2>JWT enforcement per HTTP route</h2>");
    out.push_str(&evidence_html(&Value::Array(r.jwt_by_route.clone())));
    out.push_str("</section><section><h2>mTLS coverage (observed)</h2>");
    out.push_str(&evidence_html(&r.coverage["pairs"]));
    out.push_str("<h3>Plaintext flows</h3>");
    out.push_str(&evidence_html(&r.coverage["plaintext"]));
    out.push_str("</section><section><h2>Access matrix</h2>");
    out.push_str(&render_html_tables(matrix));
    out.push_str("</section></body></html>\n");
    out
}

/// `GET path` on the admin port as JSON.
async fn admin_json(admin: SocketAddr, path: &str) -> Result<Value, String> {
    let (status, body) = crate::proxy::admin_request(admin, http::Method::GET, path)
        .await
        .map_err(|e| format!("{e:#}"))?;
    if status != http::StatusCode::OK {
        return Err(format!(
            "{path}: HTTP {status}: {}",
            String::from_utf8_lossy(&body).trim()
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("{path}: not JSON: {e}"))
}

async fn collect(args: &ReportArgs) -> anyhow::Result<(Inputs, Matrix)> {
    let set = ward_config::load_paths(&args.paths)
        .map_err(|e| anyhow::anyhow!("the config does not load:\n{e}"))?;
    let snapshot = ward_config::translate(&set)
        .map_err(|e| anyhow::anyhow!("the config does not translate:\n{e}"))?;
    let config_at = SystemTime::now();
    let matrix = access_matrix(&set, &snapshot);
    let findings = ward_config::all_findings(&set, ward_config::Diagnostics::default());
    // The admin port must answer: a report of a mesh that is not running is no evidence.
    let config_dump = admin_json(args.admin, "/config_dump")
        .await
        .map_err(|e| anyhow::anyhow!("--admin {}: {e}", args.admin))?;
    let live_at = SystemTime::now();
    let certs = admin_json(args.admin, "/certs").await.and_then(|v| {
        serde_json::from_value::<Vec<Value>>(v["certificates"].clone()).map_err(|e| e.to_string())
    });
    let coverage = crate::verify::fetch_coverage(args.admin, args.since)
        .await
        .map_err(|e| format!("{e:#}"));
    let grants = admin_json(args.admin, "/break-glass").await.and_then(|v| {
        serde_json::from_value::<Vec<Grant>>(v["grants"].clone()).map_err(|e| e.to_string())
    });
    let audit_at = SystemTime::now();
    let audit = match (&args.audit_dir, &args.root) {
        (Some(dir), Some(root)) => {
            Some(crate::audit::verify_dir(dir, root).map_err(|e| format!("{e:#}")))
        }
        _ => None,
    };
    let inputs = Inputs {
        config_paths: args.paths.iter().map(|p| p.display().to_string()).collect(),
        config_at,
        findings,
        matrix: matrix.clone(),
        admin: args.admin.to_string(),
        live_at,
        config_dump: Some(config_dump),
        certs,
        coverage,
        grants,
        audit,
        audit_at,
    };
    Ok((inputs, matrix))
}

/// Write the report; exit 0 when no check fails, 1 when one does, 2 when it cannot be made.
pub(crate) async fn run(args: ReportArgs) -> ExitCode {
    let result = async {
        let (inputs, matrix) = collect(&args).await?;
        let report = build(&inputs, SystemTime::now());
        std::fs::create_dir_all(&args.out)
            .with_context(|| format!("--out {}", args.out.display()))?;
        let json_path = args.out.join("report.json");
        std::fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", json_path.display()))?;
        let html_path = args.out.join("report.html");
        std::fs::write(&html_path, render_html(&report, &matrix))
            .with_context(|| format!("writing {}", html_path.display()))?;
        anyhow::Ok((report, html_path, json_path))
    }
    .await;
    match result {
        Ok((report, html, json)) => {
            for c in &report.controls {
                println!(
                    "{:<10} {:<15} {:<32} {}",
                    c.framework,
                    c.id,
                    c.title,
                    c.status.as_str()
                );
            }
            println!(
                "wrote {} and {}: {} pass, {} fail, {} not applicable, {} not available",
                html.display(),
                json.display(),
                report.summary["pass"],
                report.summary["fail"],
                report.summary["notApplicable"],
                report.summary["notAvailable"]
            );
            if report.summary["fail"] == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("ward report: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ward_proxy::coverage::PlaintextFlow;

    /// srv (PERMISSIVE, no AuthorizationPolicy) and cli, on TCP.
    const MESH: &str = "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: srv, namespace: app}
spec: {address: 127.9.0.10, serviceAccount: srv, labels: {app: srv}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: srv, namespace: app}
spec:
  workloadSelector: {labels: {app: srv}}
  ingress:
  - port: {number: 9000, name: tcp-a, protocol: TCP}
    defaultEndpoint: 127.0.0.1:19000
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: PERMISSIVE}}
";

    fn inputs() -> Inputs {
        let set = ward_config::load_str("mesh.yaml", MESH).unwrap();
        let snapshot = ward_config::translate(&set).unwrap();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        Inputs {
            config_paths: vec!["mesh/<dir>".into()],
            config_at: t,
            findings: ward_config::all_findings(&set, ward_config::Diagnostics::default()),
            matrix: access_matrix(&set, &snapshot),
            admin: "127.0.0.1:15000".into(),
            live_at: t,
            config_dump: None,
            certs: Err("HTTP 404".into()),
            coverage: Ok(CoverageReport {
                connections: 3,
                mtls_connections: 2,
                key_exchange: [("X25519MLKEM768".to_owned(), 2)].into(),
                plaintext: vec![PlaintextFlow {
                    source: "unknown".into(),
                    source_address: Some("127.0.0.1".into()),
                    destination: "app/srv".into(),
                    port: 9000,
                    peer_authentication: Some("istio-system/default".into()),
                    mode: "PERMISSIVE".into(),
                    connections: 1,
                    requests: 0,
                    first_seen: 0,
                    last_seen: 60,
                }],
                ..CoverageReport::default()
            }),
            grants: Err("break-glass is served by `ward up` only".into()),
            audit: None,
            audit_at: t,
        }
    }

    #[test]
    fn gaps_fail_their_controls_and_missing_evidence_says_so() {
        let i = inputs();
        let r = build(&i, i.live_at);
        let status = |id: &str| r.checks.iter().find(|c| c.id == id).unwrap().status;
        // PERMISSIVE and no ALLOW policy: the port takes plaintext, any mesh identity gets in,
        // and plaintext was seen.
        assert_eq!(status("strict-mtls"), Status::Fail);
        assert_eq!(status("authz-coverage"), Status::Fail);
        assert_eq!(status("mtls-coverage"), Status::Fail);
        assert_eq!(status("pq-key-exchange"), Status::Pass);
        // Evidence that could not be collected is not a pass.
        assert_eq!(status("audit-trail"), Status::NotAvailable);
        assert_eq!(status("workload-identity"), Status::NotAvailable);
        assert_eq!(status("no-active-exception"), Status::NotAvailable);
        assert_eq!(status("jwt-enforced"), Status::NotApplicable);
        let control = |id: &str| r.controls.iter().find(|c| c.id == id).unwrap().status;
        assert_eq!(control("§164.312(e)(1)"), Status::Fail);
        assert_eq!(control("§164.312(b)"), Status::NotAvailable);
        assert_eq!(control("A.12.4"), Status::NotAvailable);
        let flow = &r.checks.iter().find(|c| c.id == "mtls-coverage").unwrap();
        assert!(
            flow.summary.contains("1 plaintext flows"),
            "{}",
            flow.summary
        );
        assert_eq!(
            flow.evidence["plaintext"][0]["peerAuthentication"],
            "istio-system/default"
        );
        assert_eq!(flow.collected_at, "2027-01-15T08:00:00Z");
        // The page escapes what it shows.
        let html = render_html(&r, &i.matrix);
        assert!(html.contains("mesh/&lt;dir&gt;"), "{html}");
        assert!(!html.contains("mesh/<dir>"));
        assert!(html.contains("class=\"fail\">fail</td>"));
    }
}
