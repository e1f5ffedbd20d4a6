//! `ward audit verify` and `ward audit export`: check an audit trail (docs/audit.md) and hand
//! it over for compliance, with its verification result.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde_json::Value;
use ward_audit::record::Record;
use ward_audit::writer::SEAL_FILE;
use ward_audit::{verify, Report, TrailFile};

/// `ward audit …`.
#[derive(clap::Subcommand)]
pub(crate) enum AuditCommand {
    /// Prove a trail complete and unaltered, or name the first bad record; exits 0 when it
    /// verifies, 1 when it does not, 2 on bad input.
    Verify(Trail),
    /// Print the records between two times as JSON lines or CSV, after verifying the trail;
    /// exits 1 (having printed the records) when the trail does not verify.
    Export(ExportArgs),
}

/// Where the trail is and what it must chain to.
#[derive(clap::Args)]
pub(crate) struct Trail {
    /// Trail files (`audit-NNNNNN.jsonl`) or directories holding them.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The mesh's root certificate (PEM), which every checkpoint's signer must chain to:
    /// `<state-dir>/ca/root-cert.pem`, or the `root-cert.pem` of Istio's `cacerts`.
    #[arg(long, value_name = "PEM")]
    root: PathBuf,
    /// The seal file (default: `audit.seal` beside the first file, if it exists). Without it a
    /// trail cut short after a checkpoint cannot be told from a complete one.
    #[arg(long, value_name = "FILE")]
    seal: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Options of `ward audit export`.
#[derive(clap::Args)]
pub(crate) struct ExportArgs {
    #[command(flatten)]
    trail: Trail,
    /// Only records at or after this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Only records before this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// `jsonl` (the first line is the verification report) or `csv` (the report goes to
    /// stderr).
    #[arg(long, default_value = "jsonl", value_parser = ["jsonl", "csv"])]
    format: String,
}

/// Runs `ward audit`.
pub(crate) fn run(command: AuditCommand) -> ExitCode {
    let result = match command {
        AuditCommand::Verify(trail) => run_verify(&trail),
        AuditCommand::Export(args) => run_export(&args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("ward: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// A trail as read from disk.
struct Loaded {
    files: Vec<TrailFile>,
    seal: Option<Vec<u8>>,
    roots: Vec<Vec<u8>>,
}

/// The trail's files, its seal and the roots, read.
fn load(trail: &Trail) -> anyhow::Result<Loaded> {
    let mut paths = Vec::new();
    for p in &trail.files {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|e| e.extension().is_some_and(|x| x == "jsonl"))
                .collect();
            found.sort();
            paths.extend(found);
        } else {
            paths.push(p.clone());
        }
    }
    let files = paths
        .iter()
        .map(|p| {
            Ok(TrailFile {
                name: p.display().to_string(),
                bytes: std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let seal_path = trail.seal.clone().or_else(|| {
        let first = trail.files.first()?;
        let dir = if first.is_dir() {
            first.as_path()
        } else {
            first.parent()?
        };
        Some(dir.join(SEAL_FILE)).filter(|p| p.exists())
    });
    let seal = seal_path
        .as_deref()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .transpose()?;
    let roots = read_roots(&trail.root)?;
    Ok(Loaded { files, seal, roots })
}

/// Verify the trail in `dir` against the root certificates in `root` (PEM), with the seal file
/// beside it if there is one (for `ward report`): the report, and whether a seal was read.
pub(crate) fn verify_dir(dir: &Path, root: &Path) -> anyhow::Result<(Report, bool)> {
    let trails = trail_dirs(dir)?;
    if trails.is_empty() {
        anyhow::bail!("{}: no trail files (audit-NNNNNN.jsonl)", dir.display());
    }
    // Several trails (`ward up --audit-dir`: one per sidecar, `<dir>/<namespace>/<name>/`, and
    // the control plane's): each verified on its own, the figures summed; the first problem
    // is the report's, and every trail must have its seal file for the whole to count as sealed.
    let mut total = Report {
        ok: true,
        ..Report::default()
    };
    let mut all_sealed = true;
    for trail_dir in trails {
        let trail = Trail {
            files: vec![trail_dir],
            root: root.to_owned(),
            seal: None,
            json: false,
        };
        let Loaded { files, seal, roots } = load(&trail)?;
        let r = verify(&files, seal.as_deref(), &roots);
        all_sealed &= seal.is_some();
        total.ok &= r.ok;
        total.files += r.files;
        total.records += r.records;
        total.checkpoints += r.checkpoints;
        total.unsealed += r.unsealed;
        total.signers.extend(r.signers);
        total.last_checkpoint = total.last_checkpoint.max(r.last_checkpoint);
        if total.problem.is_none() {
            total.problem = r.problem;
        }
    }
    Ok((total, all_sealed))
}

/// The directories under `dir` (itself included, three levels down at most) that hold trail
/// files, sorted.
fn trail_dirs(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![(dir.to_owned(), 0)];
    while let Some((d, depth)) = todo.pop() {
        let mut has_trail = false;
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let path = entry
                .with_context(|| format!("reading {}", d.display()))?
                .path();
            if path.is_dir() {
                if depth < 3 {
                    todo.push((path, depth + 1));
                }
            } else if path.extension().is_some_and(|x| x == "jsonl") {
                has_trail = true;
            }
        }
        if has_trail {
            out.push(d);
        }
    }
    out.sort();
    Ok(out)
}

fn read_roots(path: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let roots: Vec<Vec<u8>> = pem::parse_many(&text)
        .with_context(|| format!("{}: not PEM", path.display()))?
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect();
    if roots.is_empty() {
        anyhow::bail!("{}: no CERTIFICATE", path.display());
    }
    Ok(roots)
}

fn run_verify(trail: &Trail) -> anyhow::Result<bool> {
    let Loaded { files, seal, roots } = load(trail)?;
    let report = verify(&files, seal.as_deref(), &roots);
    if trail.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", summary(&report, seal.is_some()));
    }
    Ok(report.ok)
}

/// The report for people.
fn summary(r: &Report, sealed: bool) -> String {
    let mut out = String::new();
    match &r.problem {
        None => out.push_str(&format!(
            "OK: {} records in {} files, {} checkpoints verified (signed by {}){}\n",
            r.records,
            r.files,
            r.checkpoints,
            if r.signers.is_empty() {
                "nobody".to_owned()
            } else {
                r.signers.iter().cloned().collect::<Vec<_>>().join(", ")
            },
            if sealed {
                "; the seal file matches"
            } else {
                "; no seal file: a trail cut short after a checkpoint would not be seen"
            },
        )),
        Some(p) => out.push_str(&format!(
            "FAILED: {}:{}{}: {}\n",
            p.file,
            p.line,
            p.seq.map(|s| format!(" (record {s})")).unwrap_or_default(),
            p.what
        )),
    }
    if r.ok && r.unsealed > 0 {
        out.push_str(&format!(
            "note: the last {} records come after the last checkpoint: not sealed yet\n",
            r.unsealed
        ));
    }
    out
}

fn parse_time(t: &str, flag: &str) -> anyhow::Result<time::OffsetDateTime> {
    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .with_context(|| format!("{flag} {t:?}: not an RFC 3339 time (2026-12-04T10:00:00Z)"))
}

fn run_export(args: &ExportArgs) -> anyhow::Result<bool> {
    let since = args
        .since
        .as_deref()
        .map(|t| parse_time(t, "--since"))
        .transpose()?;
    let until = args
        .until
        .as_deref()
        .map(|t| parse_time(t, "--until"))
        .transpose()?;
    let Loaded { files, seal, roots } = load(&args.trail)?;
    let report = verify(&files, seal.as_deref(), &roots);
    let mut records = Vec::new();
    for f in &files {
        for line in f.bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let Some(r) = Record::parse(line) else {
                continue;
            };
            if matches!(r.kind.as_str(), "file" | "checkpoint") {
                continue;
            }
            let Ok(at) = time::OffsetDateTime::parse(
                &r.time,
                &time::format_description::well_known::Rfc3339,
            ) else {
                continue;
            };
            if since.is_some_and(|s| at < s) || until.is_some_and(|u| at >= u) {
                continue;
            }
            records.push(r);
        }
    }
    records.sort_by_key(|r| r.seq);
    match args.format.as_str() {
        "csv" => {
            eprint!("{}", summary(&report, seal.is_some()));
            print!("{}", csv(&records));
        }
        _ => {
            println!(
                "{}",
                serde_json::json!({ "type": "verification", "report": report })
            );
            for r in &records {
                println!("{}", Value::Object(r.fields.clone()));
            }
        }
    }
    Ok(report.ok)
}

/// Records as CSV: `seq,time,type`, then every other field name in the records, sorted
/// (`prev` left out); strings as they are, other values as JSON; RFC 4180 quoting.
fn csv(records: &[Record]) -> String {
    let mut names: Vec<String> = records
        .iter()
        .flat_map(|r| r.fields.keys().cloned())
        .filter(|k| !matches!(k.as_str(), "seq" | "time" | "type" | "prev"))
        .collect();
    names.sort();
    names.dedup();
    let mut header = vec!["seq".to_owned(), "time".to_owned(), "type".to_owned()];
    header.extend(names.iter().cloned());
    let mut out = row(&header);
    for r in records {
        let mut cells = vec![r.seq.to_string(), r.time.clone(), r.kind.clone()];
        for n in &names {
            cells.push(match r.fields.get(n) {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
            });
        }
        out.push_str(&row(&cells));
    }
    out
}

fn row(cells: &[String]) -> String {
    let quoted: Vec<String> = cells
        .iter()
        .map(|c| {
            if c.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", c.replace('"', "\"\""))
            } else {
                c.clone()
            }
        })
        .collect();
    format!("{}\r\n", quoted.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let r = Record::parse(
            br#"{"seq":3,"time":"2026-12-04T10:00:00.000Z","prev":"x","type":"decision","path":"/a,b","note":"say \"hi\"","n":2}"#,
        )
        .unwrap();
        assert_eq!(
            csv(&[r]),
            "seq,time,type,n,note,path\r\n3,2026-12-04T10:00:00.000Z,decision,2,\"say \"\"hi\"\"\",\"/a,b\"\r\n"
        );
    }
}
