//! `ward`: one binary for the control plane, the data-plane proxies and the operator CLI.
//!
//! - `ward up -f DIR`: CA + control plane + one sidecar per WorkloadEntry, in this process.
//! - `ward analyze -f DIR`: validate Istio YAML and report problems with stable codes.
//! - `ward echo --listen ADDR`: a tiny TCP echo app, for demos and tests.
//! - `ward dev-idp`: a development-only token issuer for the JWT examples.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod admin;
mod analyze;
mod demo_apps;
mod devidp;
mod echo;
mod fdlimit;
mod logging;
mod up;

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
    /// Validate Istio YAML and report problems; exits 1 on errors.
    Analyze {
        /// Files or directories of Istio YAML.
        #[arg(short = 'f', long = "filename", required = true)]
        paths: Vec<PathBuf>,
        /// Print findings as JSON.
        #[arg(long)]
        json: bool,
    },
    /// A DEVELOPMENT-ONLY OpenID Connect token issuer (password grant), for examples and tests.
    DevIdp(devidp::DevIdpArgs),
    /// Run a TCP echo server (a demo app).
    Echo {
        /// Address to listen on.
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
}

fn main() -> ExitCode {
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
        Command::Analyze { paths, json } => return analyze::run(&paths, json),
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
