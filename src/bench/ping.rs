//! `colony bench ping`: inline `PING` round trips against a node's data plane, optionally
//! interleaved run by run with the same load against another server (`--compare`), so both
//! see the same machine conditions; the ratio of their median throughputs is printed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Args;
use dataplane::loadgen::{spawn_echo, PingLoad};

use super::report::{table, Summary};
use super::{resolve, BenchError, CommonArgs};

/// Flags of `colony bench ping`.
#[derive(Debug, Args)]
pub struct PingArgs {
    /// The data-plane address to load, `host:port` (a backend's or the coordinator's
    /// internal port).
    #[arg(long)]
    pub target: String,
    /// Connections.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub connections: u32,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub depth: u32,
    /// Run the same load against another server too, interleaved: `raw` (a built-in line
    /// echo on loopback: this machine's loopback limit) or `redis://HOST:PORT`.
    #[arg(long)]
    pub compare: Option<String>,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// One target of the run.
struct Target {
    name: String,
    addr: SocketAddr,
    rates: Vec<f64>,
    samples: Vec<Duration>,
}

/// One measured run against `addr`: requests per second and round-trip samples.
async fn measure(
    addr: SocketAddr,
    args: &PingArgs,
) -> Result<(f64, Vec<Duration>), std::io::Error> {
    let load = PingLoad::start(addr, args.connections as usize, args.depth as usize).await?;
    tokio::time::sleep(args.common.warmup).await;
    load.record_latencies();
    let before = load.answered();
    let started = Instant::now();
    tokio::time::sleep(args.common.duration).await;
    let count = load.answered() - before;
    let elapsed = started.elapsed().as_secs_f64();
    let samples = load.stop().await?;
    Ok((count as f64 / elapsed.max(f64::MIN_POSITIVE), samples))
}

/// Runs `colony bench ping`.
///
/// # Errors
/// A refused or unresolvable target, an unknown `--compare`, or a failed load.
pub async fn run(args: PingArgs) -> Result<(), BenchError> {
    let allow = args.common.allow_remote;
    let mut targets = vec![Target {
        name: "colony".into(),
        addr: resolve(&args.target, allow).await?,
        rates: Vec::new(),
        samples: Vec::new(),
    }];
    let mut echo = None;
    match args.compare.as_deref() {
        None => {}
        Some("raw") => {
            let (addr, task) = spawn_echo().await.map_err(|source| BenchError::Load {
                target: "raw".into(),
                source,
            })?;
            echo = Some(task);
            targets.push(Target {
                name: "raw".into(),
                addr,
                rates: Vec::new(),
                samples: Vec::new(),
            });
        }
        Some(other) => match other.strip_prefix("redis://") {
            Some(hostport) => targets.push(Target {
                name: "redis".into(),
                addr: resolve(hostport.trim_end_matches('/'), allow).await?,
                rates: Vec::new(),
                samples: Vec::new(),
            }),
            None => return Err(BenchError::Compare(other.to_owned())),
        },
    }
    for _ in 0..args.common.repeat {
        for t in &mut targets {
            let (rate, samples) =
                measure(t.addr, &args)
                    .await
                    .map_err(|source| BenchError::Load {
                        target: t.name.clone(),
                        source,
                    })?;
            t.rates.push(rate);
            t.samples.extend(samples);
        }
    }
    if let Some(task) = echo {
        task.abort();
    }
    let load = format!("{}x{}", args.connections, args.depth);
    let summaries: Vec<Summary> = targets
        .into_iter()
        .map(|t| {
            Summary::new(
                "ping",
                &t.name,
                t.addr.to_string(),
                load.clone(),
                &t.rates,
                t.samples,
            )
        })
        .collect();
    let ratio = match summaries.as_slice() {
        [colony, other] if other.throughput_median > 0.0 => Some((
            other.target.clone(),
            colony.throughput_median / other.throughput_median,
        )),
        _ => None,
    };
    if args.common.json {
        for s in &summaries {
            println!("{}", serde_json::to_string(s).unwrap_or_default());
        }
        if let Some((against, ratio)) = &ratio {
            println!(
                "{}",
                serde_json::json!({"bench": "ping", "ratio": ratio, "of": "colony", "to": against})
            );
        }
    } else {
        print!("{}", table(&summaries));
        if let Some((against, ratio)) = ratio {
            println!("ratio colony / {against}: {ratio:.2} (median throughput)");
        }
    }
    Ok(())
}
