//! `ward`: one binary for the control plane, the data-plane proxies and the operator CLI.
//!
//! - `ward up -f DIR`: CA + control plane + one sidecar per WorkloadEntry, in this process.
//! - `ward control-plane -f DIR`: the config and the CA for proxies on other hosts; the CA is
//!   served over gRPC (Istio's CA API) on TLS 1.3.
//! - `ward bootstrap -f DIR --workload NS/NAME …`: a bootstrap file (root, address, token) for
//!   one workload's proxy.
//! - `ward proxy --bootstrap FILE`: one workload's sidecar, fed by a control plane over gRPC.
//! - `ward proxy-status`: every proxy a control plane serves, SYNCED / STALE / NOT SENT.
//! - `ward analyze -f DIR`: validate Istio YAML and report problems with stable codes.
//! - `ward check -f DIR --from … --to …`: a what-if query, decided offline by the proxy's own
//!   functions, with a trace; exits 0 allowed, 1 denied.
//!   `--cases FILE`: many queries with their expected outcomes, a CI gate (exits 1 on a
//!   mismatch).
//! - `ward audit verify|export`: prove an audit trail complete and unaltered; export it.
//! - `ward verify mtls|coverage`: live evidence from a running mesh (a probe; observed traffic).
//! - `ward break-glass`: a time-limited, recorded exception for one workload.
//! - `ward report -f DIR --admin ADDR --out DIR`: the compliance evidence pack (HTML + JSON).
//! - `ward certs`: every workload's chain and roots with the time left, from the admin API.
//! - `ward access-matrix -f DIR`: who can reach what (every source class × service and workload
//!   port, with conditions, plaintext per port, external hosts), as a table, CSV, JSON or HTML.
//! - `ward diff OLD NEW` / `ward diff --git REV1 REV2`: what a change opens or closes; exits 1
//!   when access opened, 3 when it only narrowed.
//! - `ward install` / `ward uninstall`: the manifests of Ward on Kubernetes, for kubectl.
//! - `ward echo --listen ADDR`: a tiny TCP echo app, for demos and tests.
//! - `ward dev-idp`: a development-only token issuer for the JWT examples.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod access_matrix;
mod admin;
mod analyze;
mod audit;
mod breakglass;
mod certs;
mod check;
mod control_plane;
mod demo_apps;
mod devidp;
mod diff;
mod echo;
mod fdlimit;
mod kubernetes;
mod logging;
mod probes;
mod proxy;
mod report;
mod trail;
mod up;
mod verify;
mod webhook;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ward",
    version,
    about = "A zero-trust service mesh that speaks the Istio API"
)]
struct Cli {
    /// Log format: `text` for people, `json` for machines.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the CA, the control plane and one sidecar per WorkloadEntry.
    Up(up::UpArgs),
    /// Run the control plane for proxies on other hosts: load the config (hot reload), serve
    /// the CA over gRPC (Istio's IstioCertificateService) and stream each proxy its config, on
    /// TLS 1.3.
    ControlPlane(control_plane::ControlPlaneArgs),
    /// Run one workload's sidecar from a bootstrap file (or, on Kubernetes, its ServiceAccount
    /// token): certificates and config come from the control plane over gRPC; with the control plane gone it keeps serving its last config.
    Proxy(proxy::ProxyArgs),
    /// Show every proxy connected to a control plane, and whether it serves the latest config
    /// (SYNCED, STALE, NOT SENT).
    ProxyStatus(proxy::ProxyStatusArgs),
    /// Write a bootstrap file for one workload's proxy: the CA root, the control plane's address
    /// and identity, and a signed token that lets that workload, and only it, get certificates
    /// until the token expires.
    Bootstrap(control_plane::BootstrapArgs),
    /// Validate Istio YAML and report problems; exits 1 on errors.
    Analyze {
        /// Files or directories of Istio YAML.
        #[arg(short = 'f', long = "filename", required = true)]
        paths: Vec<PathBuf>,
        /// Print findings as JSON.
        #[arg(long)]
        json: bool,
    },
    /// What if SOURCE connected to DESTINATION (and sent this request)? The decision and its
    /// trace, offline, from the functions the proxies decide with; exits 0 allowed, 1 denied,
    /// 2 for a bad config or query.
    Check(check::CheckArgs),
    /// Check or export an audit trail: `verify` proves it complete and unaltered (or names the
    /// first bad record); `export` prints records between two times with that result.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Every workload's certificate chain and trusted roots from a running `ward up` or `ward
    /// proxy` (`--admin`), with serials, validity and time left; flags what expires within
    /// `--warn` (7 days). Exits 0 nothing flagged, 1 something is, 2 the admin API could not be
    /// asked.
    Certs(certs::CertsArgs),
    /// Live evidence from a running mesh: `mtls` opens one probe connection through a
    /// workload's sidecar and reports the peer identity, TLS version, key exchange,
    /// certificates and the destination's decision; exits 0 for mutual TLS 1.3, 1 otherwise,
    /// 2 when the probe could not be asked for. `coverage` reports the share of traffic served
    /// over mTLS per workload pair and every plaintext flow; exits 1 when there was any.
    Verify {
        #[command(subcommand)]
        command: verify::VerifyCommand,
    },
    /// A time-limited, recorded exception on a running `ward up`: lifts one workload's
    /// AuthorizationPolicy denials until the ttl (at most 4h) ends; `--list`, `--revoke ID`.
    /// Needs `ward up --audit-dir`. Exits 0 done, 1 refused, 2 the admin port unreachable.
    BreakGlass(breakglass::BreakGlassArgs),
    /// The evidence pack: `report.html` (self-contained) and `report.json` from the config and
    /// a running `ward up`: one section per HIPAA §164.312 control and ISO 27001 A.9, A.12.4,
    /// A.13, each check pass / fail / not applicable / not available with its evidence.
    /// Exits 0 when no check fails, 1 when one does, 2 when the report cannot be made.
    Report(report::ReportArgs),
    /// Who can reach what: every workload, named identity, namespace, other mesh identity and
    /// plaintext client against every service and workload port, with the conditions (methods,
    /// paths, JWT), the deciding policies, plaintext per port and external hosts. Offline, from
    /// the functions the proxies decide with.
    AccessMatrix(access_matrix::MatrixArgs),
    /// What a config change opens or closes (two files or directories, or --git REV1 REV2);
    /// exits 0 no change, 1 access opened, 3 access only narrowed, 2 bad input.
    Diff(diff::DiffArgs),
    /// A DEVELOPMENT-ONLY OpenID Connect token issuer (password grant), for examples and tests.
    DevIdp(devidp::DevIdpArgs),
    /// Print every manifest of Ward on Kubernetes (`ward install | kubectl apply --server-side
    /// -f -`): the Istio CRDs the cluster lacks, the namespace, RBAC, the control plane's
    /// Deployment and Service, the webhook configurations and the mesh ConfigMap.
    /// `ward install crds` prints the CRDs only.
    Install(kubernetes::InstallArgs),
    /// Print what `ward install` created, for `ward uninstall | kubectl delete -f -`.
    Uninstall(kubernetes::UninstallArgs),
    /// Run a TCP echo server (a demo app).
    Echo {
        /// Address to listen on.
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
}

fn main() -> ExitCode {
    ward_proxy::heap::settle();
    let cli = Cli::parse();
    logging::init(&cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ward: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Up(args) => {
            let nofile = fdlimit::raise();
            rt.block_on(up::run(args, nofile))
        }
        Command::ControlPlane(args) => {
            fdlimit::raise();
            rt.block_on(control_plane::run(args))
        }
        Command::Proxy(args) => {
            let nofile = fdlimit::raise();
            rt.block_on(proxy::run(args, nofile))
        }
        Command::ProxyStatus(args) => rt.block_on(proxy::status(args)),
        Command::Bootstrap(args) => control_plane::bootstrap(args, &rt),
        Command::Analyze { paths, json } => return analyze::run(&paths, json),
        Command::Check(args) => return check::run(args),
        Command::Audit { command } => return audit::run(command),
        Command::Verify { command } => return rt.block_on(verify::run(command)),
        Command::BreakGlass(args) => return rt.block_on(breakglass::run(args)),
        Command::Report(args) => return rt.block_on(report::run(args)),
        Command::Certs(args) => return rt.block_on(certs::run(args)),
        Command::AccessMatrix(args) => return access_matrix::run(args),
        Command::Diff(args) => return diff::run(args),
        Command::Install(args) => rt.block_on(kubernetes::install(args)),
        Command::Uninstall(args) => rt.block_on(kubernetes::uninstall(args)),
        Command::Echo { listen } => rt.block_on(echo::run_forever(listen)),
        Command::DevIdp(args) => rt.block_on(devidp::run(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ward: {e:#}");
            ExitCode::FAILURE
        }
    }
}
