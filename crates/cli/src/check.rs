//! `ward check`: load and translate the config, run one what-if query
//! ([`ward_config::check::check`]), print the decision and its trace (docs/check.md); or, with
//! `--cases FILE`, run every case of a file and compare each with its expected outcome
//! ([`ward_config::check::cases`]).
//!
//! Exit codes: 0 allowed (every workload behind the destination), 1 denied, 2 when the config
//! or the query is bad. With `--cases`: 0 every case passed, 1 one failed, 2 the config or the
//! cases file is bad.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use ward_config::check::cases::{parse_cases, render_line, render_summary, run_cases};
use ward_config::check::{
    check, check_namespace, namespace_of_source, NamespaceReport, Query, Report, Target,
};
use ward_config::{ConfigSet, MeshSnapshot};
use ward_policy::{Decision, Explanation, RuleOutcome};

/// `ward check` flags.
#[derive(Args)]
pub(crate) struct CheckArgs {
    /// Files or directories of Istio YAML.
    #[arg(short = 'f', long = "filename", required = true)]
    paths: Vec<PathBuf>,
    /// The source: `ns/name` of a WorkloadEntry, `spiffe://td/ns/NS/sa/SA` (or `td/ns/NS/sa/SA`),
    /// `ns/NAMESPACE` (or `ns:NAMESPACE`) for every identity of a namespace, or `plaintext:IP`
    /// for a client outside the mesh.
    #[arg(long, required_unless_present = "cases")]
    from: Option<String>,
    /// The destination: `host:port` of a ServiceEntry, or `ns/name:port` of a WorkloadEntry.
    #[arg(long, required_unless_present = "cases")]
    to: Option<String>,
    /// HTTP ports: the method (default GET).
    #[arg(long)]
    method: Option<String>,
    /// HTTP ports: the path (default /), normalized as the proxy does.
    #[arg(long)]
    path: Option<String>,
    /// HTTP ports: a request header `name:value`; repeatable.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// HTTP ports: the JSON payload of a token, taken as verified (no signature is checked).
    #[arg(long)]
    claims: Option<String>,
    /// A YAML file of cases, each a query with its expected outcome (`expect: allow|deny`,
    /// optionally the deciding `policy` and `rule`): a CI gate (docs/check.md).
    #[arg(long, conflicts_with_all = ["from", "to", "method", "path", "headers", "claims"])]
    cases: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Run the query; the exit code is the decision.
pub(crate) fn run(args: CheckArgs) -> ExitCode {
    let set = match ward_config::load_paths(&args.paths) {
        Ok(set) => set,
        Err(e) => return bad(&format!("the config does not load:\n{e}")),
    };
    let snapshot = match ward_config::translate(&set) {
        Ok(snapshot) => snapshot,
        Err(e) => return bad(&format!("the config does not translate:\n{e}")),
    };
    if let Some(file) = &args.cases {
        return run_case_file(&set, &snapshot, file, args.json);
    }
    let query = Query {
        from: args.from.unwrap_or_default(),
        to: args.to.unwrap_or_default(),
        method: args.method,
        path: args.path,
        headers: args.headers,
        claims: args.claims,
    };
    if namespace_of_source(&snapshot, &query.from).is_some() {
        return run_namespace(&set, &snapshot, &query, args.json);
    }
    let report = match check(&set, &snapshot, &query) {
        Ok(report) => report,
        Err(e) => return bad(&e.to_string()),
    };
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => return bad(&format!("cannot print the report: {e}")),
        }
    } else {
        print!("{}", render(&report));
    }
    if report.allowed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A namespace source: one report per identity of the namespace, then the verdict. Exits 0
/// when every identity is allowed.
fn run_namespace(set: &ConfigSet, snapshot: &MeshSnapshot, query: &Query, json: bool) -> ExitCode {
    let report = match check_namespace(set, snapshot, query) {
        Ok(report) => report,
        Err(e) => return bad(&e.to_string()),
    };
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => return bad(&format!("cannot print the report: {e}")),
        }
    } else {
        print!("{}", render_namespace(&report));
    }
    if report.allowed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Each member's report, then one line per member and the verdict.
fn render_namespace(report: &NamespaceReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "source: namespace {} ({} identities: its workloads, the identities policies name in it, \
         and sa/* for any other service account)",
        report.namespace,
        report.members.len()
    );
    for member in &report.members {
        let _ = writeln!(out);
        out.push_str(&render(member));
    }
    let _ = writeln!(out, "\nper identity:");
    for member in &report.members {
        let who = member.source.identity.as_deref().unwrap_or("plaintext");
        let workload = member
            .source
            .workload
            .as_deref()
            .map(|w| format!(" (workload {w})"))
            .unwrap_or_default();
        let verdict = if member.allowed() {
            "ALLOWED"
        } else {
            "DENIED"
        };
        let _ = writeln!(out, "  {who}{workload}: {verdict}");
    }
    let allowed = report.members.iter().filter(|m| m.allowed()).count();
    let _ = writeln!(
        out,
        "result: {} ({allowed} of {} allowed)",
        report.verdict(),
        report.members.len()
    );
    out
}

/// `--cases FILE`: one line per case and a summary, or the JSON report.
fn run_case_file(
    set: &ConfigSet,
    snapshot: &MeshSnapshot,
    file: &std::path::Path,
    json: bool,
) -> ExitCode {
    let name = file.display().to_string();
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) => return bad(&format!("cannot read the cases file {name}: {e}")),
    };
    let cases = match parse_cases(&name, &text) {
        Ok(cases) => cases,
        Err(errors) => {
            let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
            return bad(&format!("the cases file is bad:\n{}", list.join("\n")));
        }
    };
    let report = run_cases(set, snapshot, &name, &cases);
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => return bad(&format!("cannot print the report: {e}")),
        }
    } else {
        for case in &report.cases {
            println!("{}", render_line(case));
        }
        println!("{}", render_summary(&report));
    }
    if report.all_passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn bad(message: &str) -> ExitCode {
    eprintln!("ward check: {message}");
    ExitCode::from(2)
}

/// The report as text, one block per target.
fn render(report: &Report) -> String {
    let mut out = String::new();
    let s = &report.source;
    let who = match (&s.workload, &s.identity) {
        (Some(w), Some(id)) => format!("workload {w} ({id})"),
        (None, Some(id)) => format!("identity {id}"),
        _ => "a plaintext client".to_owned(),
    };
    let from = s.address.map_or_else(
        || " (address unknown: 0.0.0.0)".to_owned(),
        |a| format!(" from {a}"),
    );
    let _ = writeln!(out, "source: {who}{from}");
    let _ = writeln!(out, "destination: {}", report.destination);
    for addr in &report.outside_mesh {
        let _ = writeln!(
            out,
            "  endpoint {addr}: outside the mesh, no Ward proxy decides"
        );
    }
    for target in &report.targets {
        render_target(&mut out, target);
    }
    let verdict = if report.allowed() {
        "ALLOWED"
    } else {
        "DENIED"
    };
    let _ = writeln!(out, "result: {verdict}");
    out
}

fn render_target(out: &mut String, t: &Target) {
    let protocol = t.protocol.map_or_else(|| "-".to_owned(), |p| p.to_string());
    let _ = writeln!(
        out,
        "\n{} at {} ({protocol}): {}",
        t.workload,
        t.address,
        if t.allowed { "ALLOWED" } else { "DENIED" }
    );
    let _ = writeln!(out, "  transport: {}", t.transport);
    if let Some(pa) = &t.peer_authentication {
        let by = pa.policy.as_ref().map_or_else(
            || "no PeerAuthentication: Ward's default".to_owned(),
            |p| p.to_string(),
        );
        let accepted = if pa.accepted { "accepted" } else { "REFUSED" };
        let _ = writeln!(
            out,
            "  peer authentication: {} ({} level, {by}): {} {accepted}",
            pa.mode, pa.level, t.transport
        );
    }
    if let Some(r) = &t.request {
        let normalized = r.normalized_path.as_deref().unwrap_or("(refused)");
        let _ = writeln!(
            out,
            "  request: {} {} host {} (normalized path {normalized})",
            r.method, r.path, r.host
        );
        let principal = r.request_principal.as_deref().unwrap_or("none");
        let _ = writeln!(
            out,
            "  authentication: {} [request principal: {principal}]",
            r.authentication
        );
    }
    if let Some(explanation) = &t.authorization {
        render_authz(out, explanation);
    }
    let by = t
        .refused_by
        .map(|b| format!(" (refused by {b})"))
        .unwrap_or_default();
    let _ = writeln!(out, "  outcome: {}{by}", t.outcome);
}

fn render_authz(out: &mut String, e: &Explanation) {
    if e.policies.is_empty() {
        let _ = writeln!(out, "  authorization: no AuthorizationPolicy applies");
    } else {
        let _ = writeln!(
            out,
            "  authorization policies (CUSTOM, DENY, ALLOW, AUDIT):"
        );
    }
    for p in &e.policies {
        let dry = if p.dry_run { ", dry-run" } else { "" };
        let _ = writeln!(out, "    {} {}{dry}", p.action, p.policy);
        if p.rules.is_empty() {
            let _ = writeln!(out, "      no rules: matches nothing");
        }
        for r in &p.rules {
            let what = match &r.outcome {
                RuleOutcome::Matched => "all matched".to_owned(),
                RuleOutcome::Failed { reason } => format!("failed: {reason}"),
                RuleOutcome::NotTried => "not tried (an earlier rule matched)".to_owned(),
            };
            let _ = writeln!(out, "      rule[{}]: {what}", r.rule);
        }
    }
    let decision = match &e.decision {
        Decision::Allow { .. } => "allow",
        Decision::Deny { .. } => "deny",
    };
    let why = match (e.decision.deciding_rule(), e.decision.deciding_policy()) {
        (Some(rule), _) => format!("by {rule}"),
        (None, Some(policy)) => format!("by {policy}"),
        (None, None) if e.decision.is_allowed() => "no ALLOW policy applies".to_owned(),
        (None, None) => "no ALLOW rule matched".to_owned(),
    };
    let _ = writeln!(out, "  decision: {decision}, {why}");
    let detail = e.decision.response_detail();
    if !detail.is_empty() {
        let _ = writeln!(out, "  detail: {detail}");
    }
    for rule in e.decision.audit() {
        let _ = writeln!(out, "  audit: {rule}");
    }
    for note in e.decision.dry_run() {
        let _ = writeln!(out, "  dry-run: {} would {:?}", note.policy, note.would);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(example: &str, query: Query) -> Report {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples")
            .join(example);
        let set = ward_config::load_paths(&[dir]).unwrap();
        let snapshot = ward_config::translate(&set).unwrap();
        check(&set, &snapshot, &query).unwrap()
    }

    #[test]
    fn text_trace_names_every_step() {
        let text = render(&report(
            "openemr-ossm3",
            Query {
                from: "openemr/other".into(),
                to: "mariadb.openemr.svc.cluster.local:3306".into(),
                ..Query::default()
            },
        ));
        for line in [
            "source: workload openemr/other (spiffe://cluster.local/ns/openemr/sa/other) from 127.1.110.4",
            "openemr/mariadb at 127.1.110.2:3306 (TCP): DENIED",
            "  peer authentication: STRICT (default level, no PeerAuthentication: Ward's default): mTLS accepted",
            "    ALLOW openemr/allow-openemr-to-mariadb",
            "      rule[0]: failed: from[0].source.principals (peer: cluster.local/ns/openemr/sa/other)",
            "  decision: deny, no ALLOW rule matched",
            "  detail: rbac_access_denied_matched_policy[none]",
            "result: DENIED",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn text_trace_shows_the_request_and_the_deciding_rule() {
        let text = render(&report(
            "fhir",
            Query {
                from: "default/client".into(),
                to: "fhir-server.datamesh.svc.cluster.local:8080".into(),
                method: Some("POST".into()),
                path: Some("/fhir/./Patient".into()),
                claims: Some(
                    r#"{"iss":"http://127.0.0.1:8180/realms/ward-dev","sub":"bob","aud":"fhir","realm_access":{"roles":["Medic"]}}"#
                        .into(),
                ),
                ..Query::default()
            },
        ));
        for line in [
            "  request: POST /fhir/./Patient host fhir-server.datamesh.svc.cluster.local:8080 (normalized path /fhir/Patient)",
            "      rule[0]: failed: to[0].operation.methods (method: POST)",
            "  decision: allow, by ns[datamesh]-policy[medic-post]-rule[0]",
            "result: ALLOWED",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }
}
