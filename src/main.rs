//! `colony`: the one binary. Parses the command line, starts tracing, and hands typed
//! configuration to the subcommand; everything else lives in the library crates.

mod bench;
mod certs;
mod claim;
mod cli;
mod command;
mod liveness;
mod node;
mod reference;
mod status;
mod up;

use clap::Parser;

use crate::command::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    shared::telemetry::init_tracing();
    // First, before the runtime's threads: whoever started us as a child that must not
    // outlive it says so in the environment, and a parent already gone means we must not run.
    if let Err(e) = shared::lifeline::die_with_parent_from_env() {
        eprintln!("colony: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = cli.worker_threads {
        builder.worker_threads(usize::from(threads));
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("colony: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Coordinator(args) => node::run_coordinator(args).await,
            Command::Backend(args) => node::run_backend(args).await,
            Command::Up(args) => up::run(args).await,
            Command::Status(args) => status::run(args).await,
            Command::Reference(args) => reference::run(args),
            Command::Certs(args) => certs::run(args),
            Command::Bench(args) => bench::run(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("colony: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
