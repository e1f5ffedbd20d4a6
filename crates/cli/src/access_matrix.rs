//! `ward access-matrix`: load and translate the config, build the matrix
//! ([`ward_config::matrix::access_matrix`]) and print it as a table, CSV, JSON or one
//! self-contained HTML page (docs/access.md).
//!
//! Exit codes: 0 printed, 2 the config does not load or translate, or the output cannot be
//! written.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use ward_config::matrix::{access_matrix, Access, Cell, Matrix};

/// `ward access-matrix` flags.
#[derive(Args)]
pub(crate) struct MatrixArgs {
    /// Files or directories of Istio YAML.
    #[arg(short = 'f', long = "filename", required = true)]
    paths: Vec<PathBuf>,
    /// `table` (for people), `csv` (one line per cell), `json` (everything), or `html` (one
    /// self-contained page).
    #[arg(long, default_value = "table", value_parser = ["table", "csv", "json", "html"])]
    format: String,
    /// Write to this file instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Build and print the matrix.
pub(crate) fn run(args: MatrixArgs) -> ExitCode {
    let set = match ward_config::load_paths(&args.paths) {
        Ok(set) => set,
        Err(e) => return bad(&format!("the config does not load:\n{e}")),
    };
    let snapshot = match ward_config::translate(&set) {
        Ok(snapshot) => snapshot,
        Err(e) => return bad(&format!("the config does not translate:\n{e}")),
    };
    let matrix = access_matrix(&set, &snapshot);
    let text = match args.format.as_str() {
        "csv" => render_csv(&matrix),
        "json" => match serde_json::to_string_pretty(&matrix) {
            Ok(text) => text + "\n",
            Err(e) => return bad(&format!("cannot print the matrix: {e}")),
        },
        "html" => render_html(&matrix),
        _ => render_table(&matrix),
    };
    match &args.out {
        Some(path) => {
            if let Err(e) = std::fs::write(path, text) {
                return bad(&format!("cannot write {}: {e}", path.display()));
            }
        }
        None => print!("{text}"),
    }
    ExitCode::SUCCESS
}

fn bad(message: &str) -> ExitCode {
    eprintln!("ward access-matrix: {message}");
    ExitCode::from(2)
}

/// The mark of a cell in the grid.
fn mark(access: Access) -> &'static str {
    match access {
        Access::Allowed => "ALLOW",
        Access::Conditional => "COND",
        Access::Denied => "-",
    }
}

/// A grid (rows: sources, columns: destinations by number), the key of the columns, then the
/// condition of every cell that is not denied, the ports' PeerAuthentication and the egress.
pub(crate) fn render_table(m: &Matrix) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "destinations:");
    for (i, d) in m.destinations.iter().enumerate() {
        let protocol = d.protocol.map_or_else(|| "-".to_owned(), |p| p.to_string());
        let _ = writeln!(out, "  [{}] {} ({}, {protocol})", i + 1, d.to, d.kind);
    }
    let width = m
        .sources
        .iter()
        .map(|s| s.from.len())
        .max()
        .unwrap_or(4)
        .max(6);
    let _ = write!(out, "\n{:width$}", "source");
    for i in 0..m.destinations.len() {
        let _ = write!(out, " {:>6}", format!("[{}]", i + 1));
    }
    let _ = writeln!(out);
    for (i, s) in m.sources.iter().enumerate() {
        let _ = write!(out, "{:width$}", s.from);
        for j in 0..m.destinations.len() {
            let access = m.cell_at(i, j).map_or(Access::Denied, |c| c.access);
            let _ = write!(out, " {:>6}", mark(access));
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(
        out,
        "\nALLOW: every request tried is allowed; COND: some are (see below); -: denied"
    );
    let _ = writeln!(out, "\nsources:");
    for s in &m.sources {
        let _ = writeln!(out, "  {} ({}): {}", s.from, s.kind, s.description);
    }
    let _ = writeln!(
        out,
        "\nconditions (cells not denied, sources with the same answer together):"
    );
    for (to, access, condition, sources) in grouped(m) {
        let _ = writeln!(out, "  -> {to}: {access} for {}", sources.join(", "));
        let _ = writeln!(out, "     {condition}");
    }
    let _ = writeln!(out, "\nplaintext per port:");
    for p in &m.ports {
        let by = p
            .policy
            .clone()
            .unwrap_or_else(|| "no PeerAuthentication: Ward's default".to_owned());
        let accepted = if p.plaintext_accepted {
            format!(
                "plaintext ACCEPTED, {} past the policies",
                p.plaintext_access.as_str()
            )
        } else {
            "plaintext refused".to_owned()
        };
        let _ = writeln!(
            out,
            "  {} ({}): {} ({} level, {by}): {accepted}",
            p.port, p.protocol, p.mode, p.level
        );
    }
    let _ = writeln!(out, "\nexternal hosts per workload:");
    for e in &m.egress {
        let hosts: Vec<String> = e
            .external_hosts
            .iter()
            .map(|h| {
                let via = if h.listeners.is_empty() {
                    String::new()
                } else {
                    format!(" via {}", h.listeners.join(", "))
                };
                format!("{} ({}){via}", h.host, h.service_entry)
            })
            .collect();
        let list = if hosts.is_empty() {
            "none declared".to_owned()
        } else {
            hosts.join(", ")
        };
        let _ = writeln!(out, "  {}: {list}", e.workload);
        let _ = writeln!(out, "    {}", e.note);
    }
    out
}

/// The cells that are not denied, grouped by destination, answer and condition, with their
/// sources in row order.
fn grouped(m: &Matrix) -> Vec<(&str, &'static str, &str, Vec<&str>)> {
    let mut groups: Vec<(&str, &'static str, &str, Vec<&str>)> = Vec::new();
    for d in &m.destinations {
        for c in m
            .cells
            .iter()
            .filter(|c| c.to == d.to && c.access != Access::Denied)
        {
            let key = (c.to.as_str(), c.access.as_str(), c.condition.as_str());
            match groups.iter_mut().find(|g| (g.0, g.1, g.2) == key) {
                Some(group) => group.3.push(c.from.as_str()),
                None => groups.push((key.0, key.1, key.2, vec![c.from.as_str()])),
            }
        }
    }
    groups
}

/// The CSV header.
const CSV_HEADER: &str = "from,to,access,transport,condition,policies,requires_token,refused_by";

/// One line per cell (RFC 4180 quoting).
pub(crate) fn render_csv(m: &Matrix) -> String {
    let mut out = String::from(CSV_HEADER);
    out.push_str("\r\n");
    for c in &m.cells {
        let fields = [
            c.from.clone(),
            c.to.clone(),
            c.access.as_str().to_owned(),
            c.transport.to_owned(),
            c.condition.clone(),
            c.policies.join(" "),
            c.requires_token.to_string(),
            c.refused_by.clone().unwrap_or_default(),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    out
}

fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

/// Text for HTML: `&`, `<`, `>`, `"` and `'` escaped.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub(crate) const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin:0.5em 0 1.5em}\
th,td{border:1px solid #bbb;padding:0.3em 0.5em;text-align:left;vertical-align:top;font-size:0.9em}\
th{background:#f0f0f0}\
td.allowed{background:#c8ecc8}td.conditional{background:#fbe7a6}td.denied{background:#f4f4f4;color:#888}\
code{font-size:0.95em}.note{color:#555}";

/// One page, no script, no external resource.
pub(crate) fn render_html(m: &Matrix) -> String {
    let mut out = String::new();
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    out.push_str("<title>Ward access matrix</title>");
    let _ = write!(out, "<style>{STYLE}</style></head><body>");
    out.push_str("<h1>Ward access matrix</h1>");
    out.push_str(
        "<p class=\"note\">Decided offline by the proxies' own functions (the same as \
         <code>ward check</code>). <b>allowed</b>: every request tried is allowed; \
         <b>conditional</b>: some are, see the condition; <b>denied</b>: none is.</p>",
    );
    out.push_str(&render_html_tables(m));
    out.push_str("</body></html>\n");
    out
}

/// The matrix's tables (who can reach what, conditions, plaintext per port, external hosts),
/// for a page of their own or a section of `ward report`'s.
pub(crate) fn render_html_tables(m: &Matrix) -> String {
    let mut out = String::new();
    out.push_str("<h2>Who can reach what</h2><table><tr><th>source</th>");
    for d in &m.destinations {
        let _ = write!(
            out,
            "<th title=\"{}\">{}</th>",
            esc(&d.workloads.join(", ")),
            esc(&d.to)
        );
    }
    out.push_str("</tr>");
    for (i, s) in m.sources.iter().enumerate() {
        let _ = write!(
            out,
            "<tr><th title=\"{}\">{}</th>",
            esc(&s.description),
            esc(&s.from)
        );
        for j in 0..m.destinations.len() {
            match m.cell_at(i, j) {
                Some(c) => html_cell(&mut out, c),
                None => out.push_str("<td></td>"),
            }
        }
        out.push_str("</tr>");
    }
    out.push_str("</table><h2>Conditions</h2><table><tr><th>source</th><th>destination</th>");
    out.push_str("<th>access</th><th>condition</th><th>policies</th><th>example</th></tr>");
    for c in m.cells.iter().filter(|c| c.access != Access::Denied) {
        let example = c
            .example_allowed
            .as_ref()
            .and_then(|e| serde_json::to_string(e).ok())
            .unwrap_or_default();
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"{a}\">{a}</td><td>{}</td><td>{}</td>\
             <td><code>{}</code></td></tr>",
            esc(&c.from),
            esc(&c.to),
            esc(&c.condition),
            esc(&c.policies.join(", ")),
            esc(&example),
            a = c.access.as_str(),
        );
    }
    out.push_str("</table><h2>Plaintext per port</h2><table><tr><th>port</th><th>protocol</th>");
    out.push_str("<th>mode</th><th>set by</th><th>plaintext</th><th>past the policies</th></tr>");
    for p in &m.ports {
        let by = p.policy.clone().map_or_else(
            || format!("{} (Ward's default)", p.level),
            |x| format!("{x} ({})", p.level),
        );
        let accepted = if p.plaintext_accepted {
            "accepted"
        } else {
            "refused"
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{accepted}</td><td>{}</td></tr>",
            esc(&p.port),
            p.protocol,
            p.mode,
            esc(&by),
            p.plaintext_access.as_str()
        );
    }
    out.push_str("</table><h2>External hosts per workload</h2><table><tr><th>workload</th>");
    out.push_str("<th>external hosts</th><th>note</th></tr>");
    for e in &m.egress {
        let hosts: Vec<String> = e
            .external_hosts
            .iter()
            .map(|h| format!("{} ({})", h.host, h.service_entry))
            .collect();
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&e.workload),
            esc(&if hosts.is_empty() {
                "none declared".to_owned()
            } else {
                hosts.join(", ")
            }),
            esc(&e.note)
        );
    }
    out.push_str("</table>");
    out
}

fn html_cell(out: &mut String, c: &Cell) {
    let class = c.access.as_str();
    let policies = if c.policies.is_empty() {
        String::new()
    } else {
        format!("<br><small>{}</small>", esc(&c.policies.join(", ")))
    };
    let _ = write!(
        out,
        "<td class=\"{class}\" title=\"{}\">{class}{policies}</td>",
        esc(&c.condition)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_and_csv_escape_what_they_must() {
        assert_eq!(
            esc("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a, \"b\""), "\"a, \"\"b\"\"\"");
    }
}
