//! `colony bench`: load generators an operator runs against a cluster, printing a table (or
//! one JSON object per result) with throughput over repeats and latency percentiles. Every
//! load stops by itself, and targets must be loopback unless `--allow-remote`.
//!
//! | file | owns |
//! |---|---|
//! | [`ping`] | `colony bench ping`: inline `PING` round trips, `--compare` |
//! | [`frames`] | `colony bench frames`: binary echo frames of a given size |
//! | [`heartbeats`] | `colony bench heartbeats`: signed heartbeats, channel and POST |
//! | [`ticks`] | `colony bench ticks`: ticks/s and cell updates/s, checked against the kernel |
//! | [`registry`] | `colony bench registry`: register and discover latency |
//! | [`runner`] | the one measuring loop and the progress bar |
//! | [`report`] | results, their summary, the table and the JSON |
//!
//! This module holds what they share: the flags, where targets are found, the credentials,
//! and the one place an HTTP client is built ([`http_client`]; load connections are made in
//! `shared::loadgen::connect`).

pub mod frames;
pub mod heartbeats;
pub mod ping;
pub mod registry;
pub mod report;
pub mod runner;
pub mod ticks;

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Subcommand};
use controlplane::metrics::process::ProcessStats;
use shared::operator::{OperatorToken, OperatorTokenError};
use shared::registry::{RegistryError, RegistryKind};
use shared::secret::{ClusterSecret, SecretError};

use crate::cli::{RegistryArgs, SecretArgs, TokenArgs};

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
    /// Binary echo frames of a given size against a data plane, both ways: frames/s, MB/s
    /// (payload bytes sent plus received) and round trips.
    Frames(frames::FramesArgs),
    /// Signed heartbeats/s from simulated nodes against a coordinator, over the heartbeat
    /// channel and over POST /heartbeat, side by side.
    Heartbeats(heartbeats::HeartbeatsArgs),
    /// Start a colony of the given size on a running cluster (replacing its colony), run it,
    /// print ticks/s and cell updates/s, then pause it and check it against the same world
    /// run in this process.
    Ticks(ticks::TicksArgs),
    /// Register and discover latency of the cluster registry the nodes use (fake backends,
    /// removed again).
    Registry(registry::RegistryBenchArgs),
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
    /// Where targets not given by a flag are found, as the nodes find each other.
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Connections and requests in flight on each: the shape of a data-plane load.
#[derive(Debug, Args, Clone, Copy)]
pub struct ShapeArgs {
    /// Connections.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub connections: u32,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub depth: u32,
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
    /// The SSM registry's endpoint is not loopback and `--allow-remote` was not given.
    #[error("the SSM registry is not on loopback (AWS_ENDPOINT_URL_SSM or AWS_ENDPOINT_URL): pass --allow-remote to load it")]
    RemoteRegistry,
    /// A `--compare` value is not one this build knows.
    #[error("--compare {0}: expected raw, redis://HOST:PORT or nats://HOST:PORT")]
    Compare(String),
    /// No target was given and the registry lists none.
    #[error("no {0} given and none in the registry")]
    NotFound(&'static str),
    /// The registry could not be opened or read.
    #[error("the cluster registry")]
    Registry(#[from] RegistryError),
    /// No usable cluster secret.
    #[error(
        "no usable cluster secret: set {} or --secret-file",
        ClusterSecret::ENV_VAR
    )]
    Secret(#[source] SecretError),
    /// The operator token could not be read.
    #[error("the operator token")]
    Token(#[from] OperatorTokenError),
    /// The HTTP client could not be built.
    #[error("the HTTP client")]
    Http(#[source] reqwest::Error),
    /// Reading a server's CPU time, or a load, failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
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

/// Which listener of which node a subcommand loads when no address is given.
#[derive(Debug, Clone, Copy)]
pub enum Listener {
    /// The first backend's data plane.
    BackendData,
    /// The coordinator's management port.
    CoordinatorMgmt,
    /// The coordinator's control plane.
    CoordinatorControl,
}

/// `given` resolved, or else the `listener` the registry names; refused unless loopback or
/// `--allow-remote`.
///
/// # Errors
/// As [`resolve`], a registry that cannot be read, or [`BenchError::NotFound`].
pub async fn locate(
    given: Option<&str>,
    listener: Listener,
    common: &CommonArgs,
) -> Result<SocketAddr, BenchError> {
    if let Some(given) = given {
        return resolve(given, common.allow_remote).await;
    }
    let registry = common.registry.open().await?;
    let found = match listener {
        Listener::BackendData => registry
            .discover_backends()
            .await?
            .into_iter()
            .next()
            .map(|(_, a)| a.to_internal_address()),
        Listener::CoordinatorMgmt => registry
            .discover_coordinator()
            .await?
            .map(|a| a.to_mgmt_address()),
        Listener::CoordinatorControl => registry
            .discover_coordinator()
            .await?
            .map(|a| a.to_http_address()),
    };
    let what = match listener {
        Listener::BackendData => "--target (a backend's data plane)",
        Listener::CoordinatorMgmt => "--target (the coordinator's management port)",
        Listener::CoordinatorControl => "--control (the coordinator's control plane)",
    };
    resolve(
        &found.ok_or(BenchError::NotFound(what))?,
        common.allow_remote,
    )
    .await
}

/// The cluster secret as the nodes take it: COLONY_CLUSTER_SECRET, else --secret-file, else
/// (file registry) DIR/output/cluster.key. Unlike a node, the bench never creates one.
///
/// # Errors
/// [`BenchError::Secret`].
pub fn cluster_secret(
    secret: &SecretArgs,
    registry: &RegistryArgs,
) -> Result<ClusterSecret, BenchError> {
    let env = std::env::var(ClusterSecret::ENV_VAR).ok();
    let (kind, config) = registry.resolve()?;
    let localhost = (kind == RegistryKind::File)
        .then(|| config.registry_dir.join("output").join("cluster.key"));
    let file = secret.secret_file.as_deref().or(localhost.as_deref());
    ClusterSecret::resolve(env.as_deref(), file, None).map_err(BenchError::Secret)
}

/// The operator token as the nodes take it (see [`crate::node::load_operator_token`]).
///
/// # Errors
/// [`BenchError::Token`] or a registry flag that does not parse.
pub fn operator_token(
    token: &TokenArgs,
    registry: &RegistryArgs,
) -> Result<Option<std::sync::Arc<OperatorToken>>, BenchError> {
    crate::node::load_operator_token(token, registry).map_err(|e| match e.downcast() {
        Ok(token) => BenchError::Token(token),
        Err(other) => BenchError::Io(std::io::Error::other(format!("{other:#}"))),
    })
}

/// The HTTP client of every bench that speaks HTTP through a client (the control plane of
/// `ticks`): no proxy, bounded calls, and the operator token on every request if there is
/// one. The one place a bench builds a reqwest client (TLS flags, when `colony bench` gets
/// them, give `shared::tls::http_client` its configuration here).
///
/// # Errors
/// [`BenchError::Http`].
pub fn http_client(token: Option<&OperatorToken>) -> Result<reqwest::Client, BenchError> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        let mut value =
            reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                .map_err(|e| BenchError::Io(std::io::Error::other(e)))?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    shared::tls::http_client(None)
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .default_headers(headers)
        .build()
        .map_err(BenchError::Http)
}

/// User plus system CPU seconds of process `pid`, from /proc.
///
/// # Errors
/// The process's /proc entry cannot be read.
pub fn cpu_seconds(pid: u32) -> Result<f64, BenchError> {
    let dir = std::path::PathBuf::from(format!("/proc/{pid}"));
    ProcessStats::read_from(&dir)
        .map(|p| p.cpu_seconds)
        .ok_or_else(|| {
            BenchError::Io(std::io::Error::other(format!(
                "cannot read {}",
                dir.display()
            )))
        })
}

/// Runs `colony bench`.
///
/// # Errors
/// The benchmark's error.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Ping(args) => ping::run(args).await?,
        BenchCommand::Frames(args) => frames::run(args).await?,
        BenchCommand::Heartbeats(args) => heartbeats::run(args).await?,
        BenchCommand::Ticks(args) => ticks::run(args).await?,
        BenchCommand::Registry(args) => registry::run(args).await?,
    }
    Ok(())
}
