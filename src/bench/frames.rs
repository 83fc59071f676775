//! `colony bench frames`: binary `echo` frames of `--size` payload bytes against a node's
//! data plane, `--depth` in flight on each of `--connections`. The payload crosses the
//! connection both ways, so the byte rate counts it twice (sent and received); two results:
//! frames/s and MB/s, each with the round-trip percentiles.

use clap::Args;
use dataplane::loadgen::frames;

use super::report::print;
use super::runner::{measure, summaries, Target};
use super::{locate, operator_token, BenchError, CommonArgs, Listener, ShapeArgs};
use crate::cli::TokenArgs;

/// Flags of `colony bench frames`.
#[derive(Debug, Args)]
pub struct FramesArgs {
    /// The data-plane address to load, `host:port` [default: the first backend in the
    /// registry].
    #[arg(long)]
    pub target: Option<String>,
    /// Connections, and frames in flight on each.
    #[command(flatten)]
    pub shape: ShapeArgs,
    /// Payload bytes per frame (the data plane's frame limit bounds it).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(0..=8 * 1024 * 1024))]
    pub size: u32,
    /// The pid of the server behind --target (on this machine), for its CPU time per frame.
    #[arg(long)]
    pub pid: Option<u32>,
    /// On a node with --protect-reads, echo is answered only after the operator token.
    #[command(flatten)]
    pub token: TokenArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Runs `colony bench frames`.
///
/// # Errors
/// A refused or unresolvable target, an unreadable token, or a failed load.
pub async fn run(args: FramesArgs) -> Result<(), BenchError> {
    let addr = locate(args.target.as_deref(), Listener::BackendData, &args.common).await?;
    let token = operator_token(&args.token, &args.common.registry)?;
    let (connections, depth, size) = (
        args.shape.connections as usize,
        args.shape.depth as usize,
        args.size as usize,
    );
    let mut targets = [Target::load(
        "colony",
        addr.to_string(),
        args.pid,
        move || {
            let token = token.clone();
            async move { frames(addr, connections, depth, size, token.as_deref()).await }
        },
    )];
    let outcomes = measure("frames", &mut targets, &args.common).await?;
    let load = format!("{connections}x{depth}x{size}B");
    // Sent and received: the payload crosses twice per frame.
    let bytes = 2.0 * f64::from(args.size) / 1e6;
    let summaries = summaries(
        &outcomes,
        "frames",
        &load,
        &[("frames/s", 1.0), ("MB/s", bytes)],
    );
    print(&summaries, &[], args.common.json);
    Ok(())
}
