//! `ward diff OLD NEW` / `ward diff --git REV1 REV2 [-- PATHS]`: what a config change opens or
//! closes ([`ward_config::matrix::diff`]), for people or as JSON, with an exit code CI can gate
//! on (docs/access.md).
//!
//! Exit codes: 0 no change in access; 1 access opened (a pair opened or widened, a token no
//! longer required, plaintext newly accepted, an external host newly visible), whether or not
//! something was also closed; 3
//! access only narrowed (with `--fail-on opened`: 0); 2 a config does not load or translate,
//! or git fails.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{bail, Context as _};
use clap::Args;
use ward_config::matrix::diff::{diff, Change, Diff, EgressChange, PortChange, Side};
use ward_config::{ConfigFiles, ConfigSet, MeshSnapshot};

/// `ward diff` flags.
#[derive(Args)]
pub(crate) struct DiffArgs {
    /// OLD and NEW, each a file or a directory of Istio YAML. With `--git`: the paths to read in
    /// both revisions (default: the whole tree under the current directory).
    paths: Vec<PathBuf>,
    /// Compare two git revisions (read with the `git` binary, in the current directory's
    /// repository).
    #[arg(long, num_args = 2, value_names = ["REV1", "REV2"])]
    git: Option<Vec<String>>,
    /// Print the changes as JSON.
    #[arg(long)]
    json: bool,
    /// `any`: exit 1 when access opened, 3 when it only narrowed; `opened`: exit 1 when access
    /// opened, 0 otherwise.
    #[arg(long, default_value = "any", value_parser = ["any", "opened"])]
    fail_on: String,
}

/// Exit code: access opened.
const OPENED: u8 = 1;
/// Exit code: bad input.
const BAD: u8 = 2;
/// Exit code: access only narrowed.
const NARROWED: u8 = 3;

/// Compare and print; the exit code says what changed.
pub(crate) fn run(args: DiffArgs) -> ExitCode {
    let (old, new) = match load_both(&args) {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("ward diff: {e:#}");
            return ExitCode::from(BAD);
        }
    };
    let changes = diff(
        Side {
            set: &old.0,
            snapshot: &old.1,
        },
        Side {
            set: &new.0,
            snapshot: &new.1,
        },
    );
    if args.json {
        match serde_json::to_string_pretty(&changes) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("ward diff: cannot print the changes: {e}");
                return ExitCode::from(BAD);
            }
        }
    } else {
        print!("{}", render(&changes));
    }
    ExitCode::from(exit_code(&changes, &args.fail_on))
}

/// 0, 1 or 3 as the module doc says.
fn exit_code(changes: &Diff, fail_on: &str) -> u8 {
    match (changes.opens(), changes.narrows(), fail_on) {
        (true, _, _) => OPENED,
        (false, true, "any") => NARROWED,
        _ => 0,
    }
}

type Loaded = (ConfigSet, MeshSnapshot);

fn load_both(args: &DiffArgs) -> anyhow::Result<(Loaded, Loaded)> {
    match &args.git {
        Some(revs) => {
            let [rev1, rev2] = revs.as_slice() else {
                bail!("--git takes two revisions");
            };
            Ok((
                load(rev1, git_files(rev1, &args.paths)?)?,
                load(rev2, git_files(rev2, &args.paths)?)?,
            ))
        }
        None => {
            let [old, new] = args.paths.as_slice() else {
                bail!("expected OLD and NEW (files or directories), or --git REV1 REV2");
            };
            let read = |p: &PathBuf| ward_config::read_paths(std::slice::from_ref(p));
            Ok((
                load(&old.display().to_string(), read(old))?,
                load(&new.display().to_string(), read(new))?,
            ))
        }
    }
}

fn load(what: &str, files: ConfigFiles) -> anyhow::Result<Loaded> {
    let set = ward_config::load_files(&files)
        .map_err(|e| anyhow::anyhow!("{what}: the config does not load:\n{e}"))?;
    let snapshot = ward_config::translate(&set)
        .map_err(|e| anyhow::anyhow!("{what}: the config does not translate:\n{e}"))?;
    Ok((set, snapshot))
}

/// The `*.yaml` / `*.yml` files of `rev` under `paths`, named `REV:path` in diagnostics, read
/// with `git ls-tree` and `git show`.
fn git_files(rev: &str, paths: &[PathBuf]) -> anyhow::Result<ConfigFiles> {
    let mut ls = Command::new("git");
    ls.args([
        "ls-tree",
        "-r",
        "--full-name",
        "--name-only",
        "-z",
        rev,
        "--",
    ]);
    ls.args(paths);
    let listing = run_git(&mut ls).with_context(|| format!("listing the files of {rev}"))?;
    let names: Vec<&str> = listing
        .split(|b| *b == 0)
        .filter_map(|n| std::str::from_utf8(n).ok())
        .filter(|n| is_yaml(n))
        .collect();
    if names.is_empty() {
        bail!("{rev}: no *.yaml or *.yml files under the given paths");
    }
    let mut files = Vec::with_capacity(names.len());
    for name in names {
        let mut show = Command::new("git");
        show.args(["show", &format!("{rev}:{name}")]);
        let content = run_git(&mut show).with_context(|| format!("reading {rev}:{name}"))?;
        files.push((format!("{rev}:{name}"), content));
    }
    Ok(ConfigFiles::from_contents(files))
}

/// A YAML file the directory loader would read (not hidden, `.yaml`/`.yml`).
fn is_yaml(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    let hidden = path.split('/').any(|part| part.starts_with('.'));
    !hidden && (lower.ends_with(".yaml") || lower.ends_with(".yml"))
}

fn run_git(command: &mut Command) -> anyhow::Result<Vec<u8>> {
    let output = command
        .output()
        .context("cannot run git (is it installed?)")?;
    if !output.status.success() {
        bail!(
            "git failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output.stdout)
}

/// The changes for people, one section per kind, then the verdict.
fn render(d: &Diff) -> String {
    let mut out = String::new();
    section(&mut out, "opened", '+', &d.opened);
    section(&mut out, "closed", '-', &d.closed);
    section(&mut out, "widened", '+', &d.widened);
    section(&mut out, "narrowed", '-', &d.narrowed);
    section(&mut out, "JWT requirement removed", '+', &d.jwt_removed);
    section(&mut out, "JWT requirement added", '-', &d.jwt_added);
    ports(
        &mut out,
        "plaintext newly allowed",
        '+',
        &d.plaintext_allowed,
    );
    ports(
        &mut out,
        "plaintext newly refused",
        '-',
        &d.plaintext_refused,
    );
    egress(
        &mut out,
        "external hosts newly visible",
        '+',
        &d.egress_added,
    );
    egress(
        &mut out,
        "external hosts no longer visible",
        '-',
        &d.egress_removed,
    );
    let verdict = match (d.opens(), d.narrows()) {
        (false, false) => "no change in access",
        (true, false) => "access opened",
        (true, true) => "access opened and narrowed",
        (false, true) => "access only narrowed",
    };
    let _ = writeln!(
        out,
        "result: {verdict} ({} opened, {} closed, {} widened, {} narrowed, {} JWT removed, {} \
         JWT added, {} plaintext allowed, {} plaintext refused, {} external hosts added, {} \
         removed)",
        d.opened.len(),
        d.closed.len(),
        d.widened.len(),
        d.narrowed.len(),
        d.jwt_removed.len(),
        d.jwt_added.len(),
        d.plaintext_allowed.len(),
        d.plaintext_refused.len(),
        d.egress_added.len(),
        d.egress_removed.len()
    );
    out
}

fn access(a: Option<ward_config::matrix::Access>) -> &'static str {
    a.map_or("absent", |a| a.as_str())
}

fn section(out: &mut String, title: &str, sign: char, changes: &[Change]) {
    if changes.is_empty() {
        return;
    }
    let _ = writeln!(out, "{title} ({}):", changes.len());
    for c in changes {
        let _ = writeln!(
            out,
            "  {sign} {} -> {}: {} -> {}",
            c.from,
            c.to,
            access(c.old),
            access(c.new)
        );
        for detail in &c.details {
            let _ = writeln!(out, "      {detail}");
        }
        let _ = writeln!(out, "      before: {}", c.old_condition);
        let _ = writeln!(out, "      after:  {}", c.new_condition);
        if let Some(e) = &c.example {
            let claims = e
                .claims
                .as_ref()
                .map(|c| format!(" --claims '{c}'"))
                .unwrap_or_default();
            let headers: String = e
                .headers
                .iter()
                .map(|h| format!(" --header '{h}'"))
                .collect();
            let _ = writeln!(
                out,
                "      e.g. --method {} --path {}{headers}{claims}",
                e.method, e.path
            );
        }
    }
}

fn egress(out: &mut String, title: &str, sign: char, changes: &[EgressChange]) {
    if changes.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "{title} ({}; the declared egress allow-list):",
        changes.len()
    );
    for e in changes {
        let _ = writeln!(
            out,
            "  {sign} {} -> {} ({})",
            e.workload, e.host, e.service_entry
        );
    }
}

fn ports(out: &mut String, title: &str, sign: char, changes: &[PortChange]) {
    if changes.is_empty() {
        return;
    }
    let _ = writeln!(out, "{title} ({}):", changes.len());
    for p in changes {
        let mode =
            |m: Option<ward_policy::MtlsMode>| m.map_or("absent".to_owned(), |m| m.to_string());
        let by = p
            .policy
            .as_ref()
            .map(|p| format!(" (set by {p})"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {sign} {}: {} -> {}{by}",
            p.port,
            mode(p.old_mode),
            mode(p.new_mode)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_files_are_those_the_loader_reads() {
        assert!(is_yaml("a/b.yaml"));
        assert!(is_yaml("B.YML"));
        assert!(!is_yaml("a/.hidden/b.yaml"));
        assert!(!is_yaml("README.md"));
    }

    #[test]
    fn exit_codes_follow_what_changed() {
        let mut d = Diff::default();
        assert_eq!(exit_code(&d, "any"), 0);
        d.plaintext_refused.push(PortChange {
            port: "a/b:1".into(),
            old_mode: None,
            new_mode: None,
            policy: None,
        });
        assert_eq!(exit_code(&d, "any"), NARROWED);
        assert_eq!(exit_code(&d, "opened"), 0);
        d.plaintext_allowed = d.plaintext_refused.clone();
        assert_eq!(exit_code(&d, "any"), OPENED);
        assert_eq!(exit_code(&d, "opened"), OPENED);
    }
}
