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

use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
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

/// One connection keeping `depth` PINGs in flight until `stop`; counts answers.
async fn drive(addr: SocketAddr, depth: usize, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) {
    let mut socket = TcpStream::connect(addr).await.expect("connect");
    socket.set_nodelay(true).expect("nodelay");
    let burst = b"PING\r\n".repeat(depth);
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        socket.write_all(&burst).await.expect("write");
        let mut answers = 0;
        while answers < depth {
            let n = socket.read(&mut buf).await.expect("read");
            assert!(n > 0, "server closed");
            answers += buf[..n].iter().filter(|&&b| b == b'\n').count();
        }
        done.fetch_add(depth as u64, Ordering::Relaxed);
    }
}

/// CPU time (user + system) the process `pid` has used so far, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Clock ticks are 1/100 s on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

/// Requests/s, and the server's CPU microseconds per request over the same window.
fn measure(server: &Server, conns: usize, depth: usize, secs: f64) -> (f64, f64) {
    let addr = server.addr;
    let pid = server.child.id();
    // The load generator gets one thread, whatever the server uses, for both servers alike.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..conns)
            .map(|_| tokio::spawn(drive(addr, depth, stop.clone(), done.clone())))
            .collect();
        // Warm up, then count over the window.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let start_count = done.load(Ordering::Relaxed);
        let started = Instant::now();
        let cpu_before = cpu_seconds(pid);
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        let count = done.load(Ordering::Relaxed) - start_count;
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds(pid) - cpu_before;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        let per_request_us = if count > 0 {
            cpu * 1e6 / count as f64
        } else {
            0.0
        };
        (count as f64 / elapsed, per_request_us)
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
    println!("(cpu µs/req: the server process's user + system time per request, best round)");
    println!(
        "{:>12} {:>14} {:>14} {:>8} {:>11} {:>11}",
        "conns×depth", "colony req/s", "redis req/s", "ratio", "colony cpu", "redis cpu"
    );
    for (conns, depth) in configs {
        let mut best = vec![0f64; servers.len()];
        let mut cpu = vec![f64::INFINITY; servers.len()];
        for _ in 0..rounds {
            for (i, server) in servers.iter().enumerate() {
                let (rate, us) = measure(server, conns, depth, secs);
                best[i] = best[i].max(rate);
                cpu[i] = cpu[i].min(us);
            }
        }
        let redis = best.get(1).copied();
        println!(
            "{:>12} {:>14.0} {:>14} {:>8} {:>11.2} {:>11}",
            format!("{conns}×{depth}"),
            best[0],
            redis.map_or("-".into(), |r| format!("{r:.0}")),
            redis.map_or("-".into(), |r| format!("{:.2}", best[0] / r)),
            cpu[0],
            cpu.get(1).map_or("-".into(), |c| format!("{c:.2}")),
        );
    }
    for s in &servers {
        let _ = s.name;
    }
}
