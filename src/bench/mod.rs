//! `colony bench`: load generators an operator runs against a cluster, printing a table (or
//! one JSON object per result) with throughput over repeats and latency percentiles. Every
//! load stops by itself, and targets must be loopback unless `--allow-remote`.
//!
//! | file | owns |
//! |---|---|
//! | [`ping`] | `colony bench ping`: inline `PING` round trips, `--compare` |
//! | [`ticks`] | `colony bench ticks`: ticks/s and cell updates/s, checked against the kernel |
//! | [`report`] | results, their summary, the table and the JSON |

pub mod ping;
pub mod report;
pub mod ticks;

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Subcommand};

/// `colony bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// PING round trips against a data plane (text framing): connections × requests in
    /// flight per connection, optionally interleaved with the same load against another
    /// server (--compare), printing the ratio.
    Ping(ping::PingArgs),
    /// Start a colony of the given size on a running cluster (replacing its colony), run it,
    /// print ticks/s and cell updates/s, then pause it and check it against the same world
    /// run in this process.
    Ticks(ticks::TicksArgs),
}

/// Flags every benchmark shares.
#[derive(Debug, Args, Clone)]
pub struct CommonArgs {
    /// How long each measured run lasts.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Load before each run that is not measured.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Measured runs per target; the table shows their median and range.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub repeat: u32,
    /// One JSON object per result on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Allow targets that are not loopback addresses (the load goes over a real network).
    #[arg(long)]
    pub allow_remote: bool,
}

/// Why a benchmark did not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A target is not on this machine and `--allow-remote` was not given.
    #[error("{addr} is not a loopback address: pass --allow-remote to load a remote server")]
    Remote {
        /// The target.
        addr: SocketAddr,
    },
    /// A target address does not resolve.
    #[error("cannot resolve {target}")]
    Resolve {
        /// What was given.
        target: String,
        /// Why.
        source: std::io::Error,
    },
    /// A `--compare` value is not one this build knows.
    #[error("--compare {0}: expected raw or redis://HOST:PORT")]
    Compare(String),
    /// The load failed.
    #[error("the load against {target} failed")]
    Load {
        /// The target's name.
        target: String,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// Resolves `target` (`host:port`) and refuses it unless it is loopback or `allow_remote`.
///
/// # Errors
/// [`BenchError::Resolve`] or [`BenchError::Remote`].
pub async fn resolve(target: &str, allow_remote: bool) -> Result<SocketAddr, BenchError> {
    let addr = tokio::net::lookup_host(target)
        .await
        .and_then(|mut addrs| {
            addrs
                .next()
                .ok_or_else(|| std::io::Error::other("no address"))
        })
        .map_err(|source| BenchError::Resolve {
            target: target.to_owned(),
            source,
        })?;
    if !addr.ip().is_loopback() && !allow_remote {
        return Err(BenchError::Remote { addr });
    }
    Ok(addr)
}

/// Runs `colony bench`.
///
/// # Errors
/// The benchmark's error.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Ping(args) => ping::run(args).await?,
        BenchCommand::Ticks(args) => ticks::run(args).await?,
    }
    Ok(())
}
