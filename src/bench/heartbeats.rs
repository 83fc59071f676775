//! `colony bench heartbeats`: `--nodes` simulated nodes send heartbeats signed with the
//! cluster secret to a coordinator's management port, as fast as it answers (or once per
//! `--pace` each), over the heartbeat channel and over `POST /heartbeat`, interleaved run by
//! run and reported side by side with their ratio. The simulated nodes say goodbye when each
//! run ends, so the cluster shows them `LEFT`, without alerts.

use std::time::Duration;

use clap::{Args, ValueEnum};
use controlplane::loadgen::{heartbeats, Nodes, Transport};
use controlplane::wire::heartbeat::new_boot_id;
use shared::signing::RequestSigner;

use super::report::{print, ratio};
use super::runner::{measure, Target};
use super::{cluster_secret, locate, BenchError, CommonArgs, Listener};
use crate::cli::SecretArgs;

/// Which transports to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Transports {
    /// Both, side by side.
    Both,
    /// The heartbeat channel only.
    Channel,
    /// `POST /heartbeat` only.
    Post,
}

/// Flags of `colony bench heartbeats`.
#[derive(Debug, Args)]
pub struct HeartbeatsArgs {
    /// The coordinator's management port, `host:port` [default: from the registry].
    #[arg(long)]
    pub target: Option<String>,
    /// Simulated nodes.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub nodes: u32,
    /// Nodes sharing one keep-alive connection over POST (a channel carries one node).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub nodes_per_connection: u32,
    /// Each node heartbeats once per this interval [default: as fast as answered].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub pace: Option<Duration>,
    /// The transports measured.
    #[arg(long, value_enum, default_value_t = Transports::Both)]
    pub transport: Transports,
    /// The coordinator's pid (on this machine), for its CPU time per heartbeat.
    #[arg(long)]
    pub pid: Option<u32>,
    /// The secret heartbeats are signed with, found as the nodes find it.
    #[command(flatten)]
    pub secret: SecretArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Runs `colony bench heartbeats`.
///
/// # Errors
/// A refused or unresolvable target, no usable secret, or a failed load (a refused
/// heartbeat among them).
pub async fn run(args: HeartbeatsArgs) -> Result<(), BenchError> {
    let addr = locate(
        args.target.as_deref(),
        Listener::CoordinatorMgmt,
        &args.common,
    )
    .await?;
    let signer = RequestSigner::new(&cluster_secret(&args.secret, &args.common.registry)?);
    let transports: &[Transport] = match args.transport {
        Transports::Both => &[Transport::Channel, Transport::Post],
        Transports::Channel => &[Transport::Channel],
        Transports::Post => &[Transport::Post],
    };
    let nodes = Nodes {
        // Ours alone: two benches at once do not share nodes.
        prefix: format!("bench_{}", std::process::id()),
        count: args.nodes as usize,
        per_connection: args.nodes_per_connection as usize,
        pace: args.pace,
        boot: String::new(),
    };
    let mut targets: Vec<Target> = transports
        .iter()
        .map(|&transport| {
            let (signer, nodes) = (signer.clone(), nodes.clone());
            Target::load(transport.name(), addr.to_string(), args.pid, move || {
                let (signer, mut nodes) = (signer.clone(), nodes.clone());
                async move {
                    // Each run is a new boot of the nodes: their seqs start again.
                    nodes.boot = new_boot_id().map_err(std::io::Error::other)?;
                    heartbeats(addr, signer, transport, &nodes).await
                }
            })
        })
        .collect();
    let outcomes = measure("heartbeats", &mut targets, &args.common).await?;
    let per = args.nodes_per_connection.max(1);
    let summaries: Vec<_> = outcomes
        .iter()
        .map(|o| {
            // Nodes and connections: a channel carries one node.
            let conns = if o.name == Transport::Post.name() {
                args.nodes.div_ceil(per)
            } else {
                args.nodes
            };
            let load = format!("{}n/{conns}c", args.nodes);
            o.summary("heartbeats", &load, "hb/s", 1.0)
        })
        .collect();
    let notes: Vec<_> = ratio("heartbeats", &summaries).into_iter().collect();
    print(&summaries, &notes, args.common.json);
    Ok(())
}
