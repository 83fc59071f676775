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

fn measure(addr: SocketAddr, conns: usize, depth: usize, secs: f64) -> f64 {
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
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        let count = done.load(Ordering::Relaxed) - start_count;
        let elapsed = started.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        count as f64 / elapsed
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
    println!("pingpong: {secs}s per run, best of {rounds} alternating rounds");
    println!(
        "{:>12} {:>14} {:>14} {:>8}",
        "conns×depth", "colony req/s", "redis req/s", "ratio"
    );
    for (conns, depth) in CONFIGS {
        let mut best = vec![0f64; servers.len()];
        for _ in 0..rounds {
            for (i, server) in servers.iter().enumerate() {
                best[i] = best[i].max(measure(server.addr, conns, depth, secs));
            }
        }
        let redis = best.get(1).copied();
        println!(
            "{:>12} {:>14.0} {:>14} {:>8}",
            format!("{conns}×{depth}"),
            best[0],
            redis.map_or("-".into(), |r| format!("{r:.0}")),
            redis.map_or("-".into(), |r| format!("{:.2}", best[0] / r)),
        );
    }
    for s in &servers {
        let _ = s.name;
    }
}
