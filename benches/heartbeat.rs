//! Heartbeat ingest on a real coordinator process, and the cost of tracking many nodes.
//!
//! 1. Ingest: `HB_CONNS` keep-alive connections (default 8) post heartbeats for 1 000
//!    distinct nodes as fast as the coordinator answers, for `HB_SECS` (default 3): the
//!    figure is heartbeats/s accepted.
//! 2. Tracking: 10 000 simulated nodes, each heartbeating once a second (paced), for
//!    `HB_SECS`: the figure is the coordinator's CPU time over wall time (share of one core),
//!    read from /proc.
//!
//! Run: `cargo bench --bench heartbeat`. The load generator runs on the same machine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Coordinator {
    child: Child,
    mgmt: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start() -> Coordinator {
    let dir = tempfile::tempdir().unwrap();
    let mgmt = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_colony"))
        .args([
            "coordinator",
            "--internal-port",
            "0",
            "--http-port",
            "0",
            "--mgmt-port",
            &mgmt.to_string(),
            "--registry-dir",
            &dir.path().display().to_string(),
            "--stale-after",
            "3s",
            "--down-after",
            "10s",
        ])
        .env("RUST_LOG", "warn")
        .envs(
            std::env::var("HB_WORKERS")
                .ok()
                .map(|w| ("COLONY_WORKER_THREADS", w)),
        )
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", mgmt)).is_err() {
        assert!(Instant::now() < deadline, "coordinator did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Coordinator {
        child,
        mgmt,
        _dir: dir,
    }
}

fn body(node: usize, seq: u64) -> String {
    format!(
        r#"{{"instance_id":"sim_{node}","node_type":"backend","address":{{"ip":"127.0.0.1","internal_port":{p},"http_port":{p},"mgmt_port":{p}}},"seq":{seq},"metrics":{{"connections":1,"frames_in":{seq}}}}}"#,
        p = 10000 + node % 50000
    )
}

/// CPU seconds (user, system) the process has used, from /proc/<pid>/stat.
fn cpu_seconds(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // USER_HZ is 100 on Linux.
    (field(11) / 100.0, field(12) / 100.0)
}

async fn ingest(
    client: reqwest::Client,
    url: String,
    conn: usize,
    until: Instant,
    done: Arc<AtomicU64>,
) {
    let mut seq = 0u64;
    while Instant::now() < until {
        seq += 1;
        let node = conn * 125 + (seq as usize % 125);
        let ok = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body(node, seq))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            done.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let env = |k: &str, d: f64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let secs = if benching { env("HB_SECS", 3.0) } else { 0.3 };
    let conns = env("HB_CONNS", 8.0) as usize;
    let nodes = if benching { 10_000 } else { 500 };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let coordinator = start();
    let url = format!("http://127.0.0.1:{}/heartbeat", coordinator.mgmt);

    // 1. Ingest.
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(secs);
    rt.block_on(async {
        let tasks: Vec<_> = (0..conns)
            .map(|c| {
                let client = reqwest::Client::builder()
                    .no_proxy()
                    .pool_max_idle_per_host(1)
                    .build()
                    .unwrap();
                tokio::spawn(ingest(client, url.clone(), c, until, done.clone()))
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    let rate = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    println!(
        "heartbeat ingest: {rate:.0} heartbeats/s over {conns} keep-alive connections ({secs}s)"
    );

    // 2. Tracking many nodes at 1 heartbeat/s each.
    let pid = coordinator.child.id();
    let sent = Arc::new(AtomicU64::new(0));
    rt.block_on(async {
        // Register every node once, then measure steady state.
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let senders = 20usize;
        let per_sender = nodes / senders;
        let run = |measure: Duration| {
            let sent = sent.clone();
            let client = client.clone();
            let url = url.clone();
            async move {
                let tasks: Vec<_> = (0..senders)
                    .map(|s| {
                        let (client, url, sent) = (client.clone(), url.clone(), sent.clone());
                        tokio::spawn(async move {
                            let pace = Duration::from_secs(1) / per_sender as u32;
                            let mut tick = tokio::time::interval(pace);
                            let end = Instant::now() + measure;
                            let mut seq = 0u64;
                            while Instant::now() < end {
                                tick.tick().await;
                                seq += 1;
                                let node = s * per_sender + (seq as usize % per_sender);
                                if client
                                    .post(&url)
                                    .header("content-type", "application/json")
                                    .body(body(100_000 + node, seq))
                                    .send()
                                    .await
                                    .is_ok()
                                {
                                    sent.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
            }
        };
        run(Duration::from_secs(1)).await;
        sent.store(0, Ordering::Relaxed);
        let cpu0 = cpu_seconds(pid);
        let wall0 = Instant::now();
        run(Duration::from_secs_f64(secs.max(1.0))).await;
        let cpu1 = cpu_seconds(pid);
        let (user, system) = (cpu1.0 - cpu0.0, cpu1.1 - cpu0.1);
        let cpu = user + system;
        let wall = wall0.elapsed().as_secs_f64();
        let status: serde_json::Value = client
            .get(format!("http://127.0.0.1:{}/health/status", coordinator.mgmt))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        println!(
            "tracking {nodes} nodes at 1 heartbeat/s: {:.0} heartbeats/s received, coordinator CPU {:.1}% of one core (user {:.1}%, kernel {:.1}%; {} components, {} active)",
            sent.load(Ordering::Relaxed) as f64 / wall,
            100.0 * cpu / wall,
            100.0 * user / wall,
            100.0 * system / wall,
            status["total_components"],
            status["active"],
        );
    });
}
