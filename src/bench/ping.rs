//! `colony bench ping`: inline `PING` round trips against a node's data plane, optionally
//! interleaved run by run with the same load against another server (`--compare`), so both
//! see the same machine conditions; the ratio of their median throughputs is printed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Args;
use controlplane::metrics::process::ProcessStats;
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

/// One target of the run.
struct Target {
    name: String,
    addr: SocketAddr,
    /// The server's process, for its CPU time.
    pid: Option<u32>,
    rates: Vec<f64>,
    samples: Vec<Duration>,
    /// Server CPU seconds and requests over the measured windows.
    cpu: Option<(f64, u64)>,
}

/// User plus system CPU seconds of process `pid`, from /proc.
fn cpu_seconds(pid: u32) -> std::io::Result<f64> {
    let dir = std::path::PathBuf::from(format!("/proc/{pid}"));
    ProcessStats::read_from(&dir)
        .map(|p| p.cpu_seconds)
        .ok_or_else(|| std::io::Error::other(format!("cannot read {}", dir.display())))
}

/// One measured run.
struct Window {
    rate: f64,
    requests: u64,
    samples: Vec<Duration>,
    /// The server's CPU seconds over the window, when its pid is known.
    cpu: Option<f64>,
}

/// One measured run against `addr`: requests per second and round-trip samples.
async fn measure(
    addr: SocketAddr,
    pid: Option<u32>,
    args: &PingArgs,
) -> Result<Window, std::io::Error> {
    let load = PingLoad::start(addr, args.connections as usize, args.depth as usize).await?;
    tokio::time::sleep(args.common.warmup).await;
    load.record_latencies();
    let before = load.answered();
    let cpu_before = pid.map(cpu_seconds).transpose()?;
    let started = Instant::now();
    tokio::time::sleep(args.common.duration).await;
    let requests = load.answered() - before;
    let cpu_after = pid.map(cpu_seconds).transpose()?;
    let elapsed = started.elapsed().as_secs_f64();
    let samples = load.stop().await?;
    Ok(Window {
        rate: requests as f64 / elapsed.max(f64::MIN_POSITIVE),
        requests,
        samples,
        cpu: cpu_before.zip(cpu_after).map(|(b, a)| a - b),
    })
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
        pid: args.pid,
        rates: Vec::new(),
        samples: Vec::new(),
        cpu: None,
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
            // The echo runs in this process, beside the load: its CPU is not told apart.
            targets.push(Target {
                name: "raw".into(),
                addr,
                pid: None,
                rates: Vec::new(),
                samples: Vec::new(),
                cpu: None,
            });
        }
        Some(other) => match other.strip_prefix("redis://") {
            Some(hostport) => targets.push(Target {
                name: "redis".into(),
                addr: resolve(hostport.trim_end_matches('/'), allow).await?,
                pid: args.compare_pid,
                rates: Vec::new(),
                samples: Vec::new(),
                cpu: None,
            }),
            None => return Err(BenchError::Compare(other.to_owned())),
        },
    }
    for _ in 0..args.common.repeat {
        for t in &mut targets {
            let w = measure(t.addr, t.pid, &args)
                .await
                .map_err(|source| BenchError::Load {
                    target: t.name.clone(),
                    source,
                })?;
            t.rates.push(w.rate);
            t.samples.extend(w.samples);
            if let Some(cpu) = w.cpu {
                let (sum, n) = t.cpu.get_or_insert((0.0, 0));
                *sum += cpu;
                *n += w.requests;
            }
        }
    }
    if let Some(task) = echo {
        task.abort();
    }
    let load = format!("{}x{}", args.connections, args.depth);
    let summaries: Vec<Summary> = targets
        .into_iter()
        .map(|t| {
            let mut s = Summary::new(
                "ping",
                &t.name,
                t.addr.to_string(),
                (load.clone(), "req/s"),
                &t.rates,
                t.samples,
            );
            s.server_cpu_us_per_request = t
                .cpu
                .filter(|(_, n)| *n > 0)
                .map(|(cpu, n)| cpu * 1e6 / n as f64);
            s
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
