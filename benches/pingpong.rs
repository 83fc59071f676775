//! Loopback PING round trips against the real `colony backend` process, side by side with
//! Redis (if `redis-server` is installed), driven by one load generator that speaks both:
//! it sends the inline `PING\r\n` and counts answer lines (`PONG\n` from Colony, `+PONG\r\n`
//! from Redis).
//!
//! Configurations: connections × requests in flight per connection = 1×1, 1×64, 16×16, 50×1.
//! Each runs `PINGPONG_SECS` seconds (default 2) per server per round, alternating servers
//! for `PINGPONG_ROUNDS` rounds (default 3); the best round of each is reported, with the
//! ratio Colony / Redis. Only the ratio means anything on a shared machine.
//!
//! Run: `cargo bench --bench pingpong` (needs `apt-get install redis-server` for the
//! comparison; without it only Colony's figures are printed).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dataplane::loadgen::{ping, Handshake};
use shared::test_support::free_port;
use shared::test_support::proc_cpu::cpu_seconds;

const CONFIGS: [(usize, usize); 4] = [(1, 1), (1, 64), (16, 16), (50, 1)];

struct Server {
    name: &'static str,
    addr: SocketAddr,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_ready(addr: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(addr).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn start_colony() -> Server {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_colony"))
        .args(["backend", "--internal-port", &port.to_string()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start colony backend");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    assert!(wait_ready(addr), "colony did not start");
    Server {
        name: "colony",
        addr,
        child,
    }
}

fn start_redis() -> Option<Server> {
    let port = free_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .ok()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_ready(addr).then_some(Server {
        name: "redis",
        addr,
        child,
    })
}

/// User plus system CPU seconds of process `pid`.
fn total_cpu_seconds(pid: &str) -> f64 {
    let (user, system) = cpu_seconds(pid);
    user + system
}

/// One measured window.
struct Run {
    rate: f64,
    /// The server's CPU microseconds per request.
    server_us: f64,
    /// The load generator's CPU share of one core (1.0: it was the bottleneck).
    loadgen_share: f64,
}

/// Requests/s, the server's CPU per request and the load generator's CPU share over one window.
fn measure(server: &Server, conns: usize, depth: usize, secs: f64) -> Run {
    let addr = server.addr;
    let pid = server.child.id().to_string();
    // The load generator gets one thread, whatever the server uses, for both servers alike.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // The same load generator as `colony bench ping`.
        let load = ping(addr, conns, depth, Handshake::None)
            .await
            .expect("connect");
        // Warm up, then count over the window.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let start_count = load.completed();
        let started = Instant::now();
        let cpu_before = total_cpu_seconds(&pid);
        let own_before = total_cpu_seconds("self");
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        let count = load.completed() - start_count;
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = total_cpu_seconds(&pid) - cpu_before;
        let own = total_cpu_seconds("self") - own_before;
        load.stop().await.expect("load");
        let per_request_us = if count > 0 {
            cpu * 1e6 / count as f64
        } else {
            0.0
        };
        Run {
            rate: count as f64 / elapsed,
            server_us: per_request_us,
            loadgen_share: own / elapsed,
        }
    })
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run briefly then.
    let benching = std::env::args().any(|a| a == "--bench");
    let env = |k: &str, d: f64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let secs = if benching {
        env("PINGPONG_SECS", 2.0)
    } else {
        0.2
    };
    let rounds = if benching {
        env("PINGPONG_ROUNDS", 3.0) as usize
    } else {
        1
    };

    let mut servers = vec![start_colony()];
    match start_redis() {
        Some(redis) => servers.push(redis),
        None => println!("redis-server not found: printing Colony's figures only"),
    }
    // `PINGPONG_CONFIGS=50x1,1x1` runs only those.
    let configs: Vec<(usize, usize)> = match std::env::var("PINGPONG_CONFIGS") {
        Ok(list) => list
            .split(',')
            .filter_map(|c| {
                let (a, b) = c.trim().split_once('x')?;
                Some((a.parse().ok()?, b.parse().ok()?))
            })
            .collect(),
        Err(_) => CONFIGS.to_vec(),
    };
    println!("pingpong: {secs}s per run, best of {rounds} alternating rounds");
    println!("cpu µs/req: the server process's user + system time per request (best round);");
    println!("loadgen: the load generator's share of one core in the fastest round (1.00: it was");
    println!("the bottleneck, and the ratio cannot exceed what it can drive)");
    println!(
        "{:>12} {:>13} {:>13} {:>6} {:>11} {:>10} {:>15}",
        "conns×depth",
        "colony req/s",
        "redis req/s",
        "ratio",
        "colony cpu",
        "redis cpu",
        "loadgen c / r"
    );
    for (conns, depth) in configs {
        let mut best: Vec<Option<Run>> = servers.iter().map(|_| None).collect();
        let mut cpu = vec![f64::INFINITY; servers.len()];
        for _ in 0..rounds {
            for (i, server) in servers.iter().enumerate() {
                let run = measure(server, conns, depth, secs);
                cpu[i] = cpu[i].min(run.server_us);
                if best[i].as_ref().is_none_or(|b| run.rate > b.rate) {
                    best[i] = Some(run);
                }
            }
        }
        let rate = |i: usize| best.get(i).and_then(Option::as_ref).map(|r| r.rate);
        let share = |i: usize| {
            best.get(i)
                .and_then(Option::as_ref)
                .map_or("-".into(), |r| format!("{:.2}", r.loadgen_share))
        };
        let (colony, redis) = (rate(0).unwrap_or(0.0), rate(1));
        println!(
            "{:>12} {:>13.0} {:>13} {:>6} {:>11.2} {:>10} {:>15}",
            format!("{conns}×{depth}"),
            colony,
            redis.map_or("-".into(), |r| format!("{r:.0}")),
            redis.map_or("-".into(), |r| format!("{:.2}", colony / r)),
            cpu[0],
            cpu.get(1).map_or("-".into(), |c| format!("{c:.2}")),
            format!("{} / {}", share(0), share(1)),
        );
    }
    for s in &servers {
        let _ = s.name;
    }
}
