//! The command line: every flag, its `COLONY_*` environment twin and its default.
//!
//! Parsing and validation happen here, before anything binds; the subcommands receive typed
//! configuration.

use std::net::IpAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use codec::Limits;
use dataplane::DataPlaneConfig;

/// Colony: a cluster runtime for a sharded cellular simulation.
#[derive(Debug, Parser)]
#[command(name = "colony", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a backend node: a data plane that holds and ticks shards.
    ///
    /// Each listener binds port 0 (any free port) unless a port is given.
    Backend(BackendArgs),
}

/// Flags of `colony backend`.
#[derive(Debug, Args)]
pub struct BackendArgs {
    /// IP address the listeners bind to.
    #[arg(long, env = "COLONY_BIND_IP", default_value = "127.0.0.1")]
    pub bind_ip: IpAddr,

    /// Data-plane (framed TCP) port; 0 picks a free port.
    #[arg(long, env = "COLONY_INTERNAL_PORT", default_value_t = 0)]
    pub internal_port: u16,

    #[command(flatten)]
    pub data_plane: DataPlaneArgs,
}

/// Limits of the data-plane listener, shared by every node command.
#[derive(Debug, Args, Clone)]
pub struct DataPlaneArgs {
    /// Longest text line accepted on the data plane, in bytes; longer lines are discarded
    /// with an error and the connection is kept.
    #[arg(long, env = "COLONY_MAX_LINE", default_value_t = codec::DEFAULT_MAX_LINE)]
    pub max_line: usize,

    /// Largest binary frame accepted on the data plane, in bytes (below 16 MiB); a larger
    /// frame gets an error frame and the connection is closed.
    #[arg(long, env = "COLONY_MAX_FRAME", default_value_t = codec::DEFAULT_MAX_FRAME)]
    pub max_frame: usize,

    /// Close a data-plane connection that sends no complete request for this long
    /// (e.g. 300s, 1m, 500ms).
    #[arg(long, env = "COLONY_IDLE_TIMEOUT", default_value = "300s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// Data-plane connections served at once; more are refused with an error line.
    #[arg(long, env = "COLONY_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// On shutdown, how long open connections get to finish before the process exits.
    #[arg(long, env = "COLONY_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub grace: Duration,
}

impl DataPlaneArgs {
    /// The validated data-plane configuration.
    ///
    /// # Errors
    /// Names the flag that is out of range.
    pub fn config(&self) -> Result<DataPlaneConfig, dataplane::ConfigError> {
        let config = DataPlaneConfig {
            limits: Limits {
                max_line: self.max_line,
                max_frame: self.max_frame,
            },
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections,
            grace: self.grace,
        };
        config.validate()?;
        Ok(config)
    }
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
