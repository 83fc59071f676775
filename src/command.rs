//! The command line's top: `colony` and its subcommands. Each subcommand's flags live with
//! the code that owns them ([`crate::cli`] for the nodes and the shared groups,
//! [`crate::certs`], [`crate::bench`]), so the benches can reuse the nodes' flag groups
//! without the flag module depending on them in turn.

use clap::{Parser, Subcommand};

/// Colony: a cluster runtime for a sharded cellular simulation.
///
/// Every node runs three listeners: a framed TCP data plane, an HTTP control plane and an
/// HTTP management port. Nodes find each other through the cluster registry (files under
/// --registry-dir by default).
#[derive(Debug, Parser)]
#[command(name = "colony", version, about, long_about, propagate_version = true)]
pub struct Cli {
    /// Async worker threads [default: one per CPU core].
    #[arg(long, global = true, env = "COLONY_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the coordinator: owns the topology, tracks node health from heartbeats.
    ///
    /// Listens on 8082 (data), 8083 (control) and 8084 (management) unless told otherwise,
    /// and registers itself in the cluster registry.
    Coordinator(crate::cli::CoordinatorArgs),
    /// Run a backend: holds and ticks shards, sends heartbeats to the coordinator.
    ///
    /// Each listener binds port 0 (any free port) unless a port is given; the ports actually
    /// bound are registered. Start order does not matter: a backend waits for the coordinator.
    Backend(crate::cli::BackendArgs),
    /// Run a whole cluster here: the coordinator plus N backends as managed child processes,
    /// the colony started, the dashboard URL printed. Ctrl-C, SIGTERM or SIGHUP stops
    /// everything cleanly; the backends die with it whatever kills it, and a backend that
    /// fails is restarted (see --restart).
    ///
    /// Backend k listens on base+10k (data), base+10k+1 (control) and base+10k+2 (mgmt).
    /// Backend logs go to DIR/output/logs/.
    Up(crate::cli::UpArgs),
    /// Show every node: what the registry lists and what the coordinator's health says.
    Status(crate::cli::StatusArgs),
    /// Run a world in this process (all cores) and print what GET /colony would show after
    /// the same ticks on a cluster: tick, population and fingerprint, to check any run.
    Reference(crate::cli::ReferenceArgs),
    /// Make a cluster CA and one certificate per node for TLS between nodes (DESIGN §15):
    /// DIR/ca.pem, DIR/ca-key.pem, and DIR/NAME.pem, DIR/NAME-key.pem per
    /// --node NAME:IP (keys mode 0600). For a test bed or a small cluster.
    Certs(crate::certs::CertsArgs),
    /// Load generators to run against a cluster: a table (or --json) of throughput over
    /// repeats and p50/p99 latency. Loads stop by themselves; targets must be loopback
    /// unless --allow-remote.
    Bench(crate::bench::BenchArgs),
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
