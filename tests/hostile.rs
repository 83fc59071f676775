//! Hostile clients against a real colony (issue 14): on the data plane of the backend that
//! holds shard (0, 0), at once,
//! - 10 connections each pipelining `SHARD 0 0` × 10 000 and never reading an answer;
//! - 40 connections each sending most of an 8 MiB frame and then nothing;
//! - one connection trickling a byte a second into a request it never finishes;
//!
//! while a healthy client PINGs it and the colony runs. The colony keeps running and equals
//! the single-process reference, every PING answers within a 5 s liveness bound, no backend
//! goes STALE at the default thresholds, the backend's RSS grows by no more than its partial-
//! request budget plus a 64 MiB allowance, and each offender is cut with its reason.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use codec::Message;
use common::*;
use dataplane::Client;
use serde_json::{json, Value};
use shared::sim::{run_reference, WorldParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The backends' budget for partly received requests in this test.
const BUDGET: u64 = 32 * 1024 * 1024;
/// What the backend's RSS may grow by beyond [`BUDGET`]: pending answers (10 × 1 MiB),
/// each connection's free 8 KiB, allocator slack.
const ALLOWANCE: u64 = 64 * 1024 * 1024;
/// A PING slower than this under attack fails the test (generous for 2 loaded cores).
const LIVENESS: Duration = Duration::from_secs(5);

fn world() -> Value {
    json!({
        "width_in_shards": 2, "height_in_shards": 1,
        "shard_width": 100, "shard_height": 40,
        "rule": "B3/S23", "seed": 7, "density": 0.35,
    })
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

/// Runs `ticks` more ticks and checks the colony against the reference at `total`.
async fn run_and_check(cluster: &Cluster, control: &str, ticks: u64, total: u64) {
    let answer = cluster
        .post_ok(
            format!("{control}/colony/run"),
            json!({"ticks": ticks, "wait": true}),
        )
        .await;
    let params: WorldParams = serde_json::from_value(world()).unwrap();
    let expected = run_reference(&params, total).unwrap();
    assert_eq!(answer["state"], "idle", "{answer}");
    assert_eq!(answer["tick"], total, "{answer}");
    assert_eq!(answer["population"], expected.population, "{answer}");
    assert_eq!(
        answer["fingerprint"],
        expected.fingerprint.to_string(),
        "{answer}"
    );
}

/// True if `addr` answers `SHARD 0 0` with the shard rather than an error.
async fn holds_shard_0_0(addr: SocketAddr) -> bool {
    let mut c = LineClient::connect(addr).await;
    c.send(b"SHARD 0 0\n").await;
    let first = c.line().await.unwrap();
    !first.contains("\"error\"")
}

/// Reads what the server sends until it closes (or resets); false if it is still open after
/// 30 s.
async fn closed_by_server(mut socket: TcpStream) -> bool {
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), socket.read_to_end(&mut all))
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_cannot_stop_the_colony_or_starve_a_healthy_client() {
    let budget = BUDGET.to_string();
    let mut cluster = Cluster::new();
    cluster.start_coordinator(&[]);
    let flags = [
        "--heartbeat-interval",
        "100ms",
        "--output-timeout",
        "2s",
        "--incomplete-timeout",
        "3s",
        "--partial-budget",
        &budget,
    ];
    for _ in 0..2 {
        cluster.start_backend(&flags);
    }
    let a = cluster.coordinator_address().await;
    let control = format!("http://{}:{}", a["ip"].as_str().unwrap(), a["http_port"]);
    eventually(DEADLINE, "backends ACTIVE", || async {
        let h = cluster.health().await;
        let n = h["components"]
            .as_array()?
            .iter()
            .filter(|c| c["type"] == "backend" && c["status"] == "ACTIVE")
            .count();
        (n == 2).then_some(())
    })
    .await;
    cluster
        .post_ok(format!("{control}/colony-start"), world())
        .await;
    run_and_check(&cluster, &control, 10, 10).await;

    let mut target = None;
    for k in 0..2 {
        let (_, internal) = cluster.backend_identity(k).await;
        let addr: SocketAddr = internal.parse().unwrap();
        if holds_shard_0_0(addr).await {
            target = Some((k, addr));
        }
    }
    let (k, addr) = target.expect("a backend holds shard (0, 0)");
    let pid = cluster.backends[k].pid();
    let rss_before = rss_bytes(pid);

    // Watchers: the backend's RSS, a healthy PING client, and every backend's health.
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(rss_before));
    let rss_watch = tokio::spawn({
        let (stop, peak) = (stop.clone(), peak.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_bytes(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let pinger = tokio::spawn({
        let stop = stop.clone();
        async move {
            let (mut pings, mut slowest) = (0u32, Duration::ZERO);
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let pong = tokio::time::timeout(LIVENESS, async {
                    let mut c = Client::connect(addr).await.unwrap();
                    c.request(&Message::Ping).await.unwrap()
                })
                .await
                .expect("a healthy PING answered within the liveness bound");
                assert_eq!(pong, Message::Pong);
                slowest = slowest.max(started.elapsed());
                pings += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (pings, slowest)
        }
    });
    let health_url = cluster.mgmt_url("/health/status").await;
    let health_watch = tokio::spawn({
        let (stop, http) = (stop.clone(), cluster.http.clone());
        async move {
            let mut not_active = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let h: Value = http
                    .get(&health_url)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                for c in h["components"].as_array().unwrap() {
                    if c["type"] == "backend" && c["status"] != "ACTIVE" {
                        not_active.push(c.clone());
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            not_active
        }
    });

    // The attacks.
    let mut pipeliners = Vec::new();
    let (look, _) = tokio::sync::watch::channel(false);
    for _ in 0..10 {
        let mut socket = TcpStream::connect(addr).await.unwrap();
        let mut looked = look.subscribe();
        pipeliners.push(tokio::spawn(async move {
            let burst = b"SHARD 0 0\n".repeat(10_000);
            // Reads nothing until the backend says it cut a slow reader: the server must
            // stop answering, then cut it.
            let _ = socket.write_all(&burst).await;
            let _ = looked.wait_for(|&l| l).await;
            closed_by_server(socket).await
        }));
    }
    let frame_len: u32 = 8 * 1024 * 1024 - 64;
    let body = Arc::new(vec![0x91u8; frame_len as usize - 1024]);
    let mut half_senders = Vec::new();
    for _ in 0..40 {
        let mut socket = TcpStream::connect(addr).await.unwrap();
        let body = body.clone();
        half_senders.push(tokio::spawn(async move {
            let _ = socket.write_all(&frame_len.to_be_bytes()).await;
            let _ = socket.write_all(&body).await;
            let mut all = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(30), socket.read_to_end(&mut all)).await;
            all
        }));
    }
    let trickler = tokio::spawn(async move {
        let mut socket = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 256];
        loop {
            if socket.write_all(b"x").await.is_err() {
                break;
            }
            match tokio::time::timeout(Duration::from_secs(1), socket.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => break,
                Ok(Ok(n)) => {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    assert!(text.contains("request_timeout"), "{text}");
                    break;
                }
                Err(_) => assert!(started.elapsed() < Duration::from_secs(20), "never cut"),
            }
        }
        started.elapsed()
    });

    // The colony runs under attack, and again once the offenders are cut.
    run_and_check(&cluster, &control, 300, 310).await;
    let trickled_for = trickler.await.unwrap();
    assert!(
        trickled_for < Duration::from_secs(15),
        "the trickling client was cut after {trickled_for:?}"
    );
    cluster.backends[k].wait_for("slow_reader").await;
    look.send_replace(true);
    for p in pipeliners {
        assert!(
            p.await.unwrap(),
            "a pipelining client that never read was not cut"
        );
    }
    let mut over_budget = 0;
    for h in half_senders {
        let answer = h.await.unwrap();
        if String::from_utf8_lossy(&answer).contains("memory_budget") {
            over_budget += 1;
        }
    }
    assert!(
        over_budget > 0,
        "some half-sent frames must be refused for the budget"
    );
    run_and_check(&cluster, &control, 300, 610).await;

    stop.store(true, Ordering::Relaxed);
    rss_watch.await.unwrap();
    let (pings, slowest) = pinger.await.unwrap();
    let not_active = health_watch.await.unwrap();
    let growth = peak.load(Ordering::Relaxed).saturating_sub(rss_before);
    eprintln!(
        "[hostile] {pings} pings, slowest {slowest:?}; RSS grew {} MiB; {over_budget} of 40 \
         half-sent frames refused for the budget",
        growth >> 20
    );
    assert!(pings > 0);
    assert!(not_active.is_empty(), "backends not ACTIVE: {not_active:?}");
    assert!(
        growth <= BUDGET + ALLOWANCE,
        "RSS grew {growth} bytes, more than the budget {BUDGET} plus {ALLOWANCE}"
    );
    // Each offender was cut with its reason in the backend's log.
    for reason in ["slow_reader", "memory_budget", "request_timeout"] {
        cluster.backends[k].wait_for(reason).await;
    }
}
