//! `colony bench ping`: inline `PING` round trips against a node's data plane, optionally
//! interleaved run by run with the same load against another server (`--compare`: a
//! built-in line echo, Redis or NATS), so both see the same machine conditions; the ratio
//! of their median throughputs is printed.

use clap::Args;
use dataplane::loadgen::{ping, spawn_echo, Handshake};

use super::report::{print, ratio};
use super::runner::summaries;
use super::runner::{measure, Target};
use super::{locate, resolve, BenchError, CommonArgs, Listener, ShapeArgs};

/// Flags of `colony bench ping`.
#[derive(Debug, Args)]
pub struct PingArgs {
    /// The data-plane address to load, `host:port` (a backend's or the coordinator's
    /// internal port) [default: the first backend in the registry].
    #[arg(long)]
    pub target: Option<String>,
    #[command(flatten)]
    pub shape: ShapeArgs,
    /// Run the same load against another server too, interleaved: `raw` (a built-in line
    /// echo on loopback: this machine's loopback limit), `redis://HOST:PORT` or
    /// `nats://HOST:PORT` (PING/PONG after NATS's INFO/CONNECT handshake).
    #[arg(long)]
    pub compare: Option<String>,
    /// The pid of the server behind --target (on this machine): its CPU time per request
    /// is read from /proc and shown.
    #[arg(long)]
    pub pid: Option<u32>,
    /// The pid of the --compare server (on this machine), for its CPU time per request.
    #[arg(long)]
    pub compare_pid: Option<u32>,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// The ping target `name` at `addr`.
fn target(
    name: &str,
    addr: std::net::SocketAddr,
    pid: Option<u32>,
    args: &PingArgs,
    handshake: Handshake,
) -> Target {
    let (connections, depth) = (args.shape.connections as usize, args.shape.depth as usize);
    Target::load(name, addr.to_string(), pid, move || {
        ping(addr, connections, depth, handshake)
    })
}

/// Runs `colony bench ping`.
///
/// # Errors
/// A refused or unresolvable target, an unknown `--compare`, or a failed load.
pub async fn run(args: PingArgs) -> Result<(), BenchError> {
    let allow = args.common.allow_remote;
    let addr = locate(args.target.as_deref(), Listener::BackendData, &args.common).await?;
    let mut targets = vec![target("colony", addr, args.pid, &args, Handshake::None)];
    let mut echo = None;
    match args.compare.as_deref() {
        None => {}
        Some("raw") => {
            let (addr, task) = spawn_echo().await.map_err(|source| BenchError::Load {
                target: "raw".into(),
                source,
            })?;
            echo = Some(task);
            // The echo runs in this process, beside the load: its CPU is not told apart.
            targets.push(target("raw", addr, None, &args, Handshake::None));
        }
        Some(other) => {
            let (name, handshake, hostport) = if let Some(h) = other.strip_prefix("redis://") {
                ("redis", Handshake::None, h)
            } else if let Some(h) = other.strip_prefix("nats://") {
                ("nats", Handshake::Nats, h)
            } else {
                return Err(BenchError::Compare(other.to_owned()));
            };
            let addr = resolve(hostport.trim_end_matches('/'), allow).await?;
            targets.push(target(name, addr, args.compare_pid, &args, handshake));
        }
    }
    let outcomes = measure("ping", &mut targets, &args.common).await;
    if let Some(task) = echo {
        task.abort();
    }
    let load = format!("{}x{}", args.shape.connections, args.shape.depth);
    let summaries = summaries(&outcomes?, "ping", &load, &[("req/s", 1.0)]);
    let notes: Vec<_> = ratio("ping", &summaries).into_iter().collect();
    print(&summaries, &notes, args.common.json);
    Ok(())
}
