//! The recovery targets of issue 13, measured on real processes (a driver, not a timed test):
//!
//! - **backend loss**: from `kill -9` of one of four backends mid-run to the colony running
//!   again (a new placement in force and its slowest backend past the tick it went back to);
//! - **re-adoption**: from starting a coordinator again after `kill -9` of the old one to
//!   `GET /colony` showing the same colony running again.
//!
//! Each round starts a fresh coordinator and `CLUSTER_BACKENDS` backends (default 4) with
//! the file registry on the default world (8×5 shards of 250×250, or `CLUSTER_WORLD`),
//! checkpoints every 100 ticks. `RECOVERY_ROUNDS` rounds (default 3); each figure is printed
//! with the median. The throughput cost of the checkpoint copies is `cargo bench --bench
//! cluster`'s ratio, compared before and after.
//!
//! Run: `cargo bench --bench recovery`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Child processes, killed when dropped.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn colony() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_colony"));
    c.env("RUST_LOG", "warn").stdout(Stdio::null());
    c
}

fn coordinator(registry: &str) -> Child {
    colony()
        .args([
            "coordinator",
            "--internal-port",
            "0",
            "--http-port",
            "0",
            "--mgmt-port",
            "0",
        ])
        .args(["--registry-dir", registry, "--checkpoint-every", "100"])
        .spawn()
        .unwrap()
}

fn env_or(k: &str, d: f64) -> f64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

struct Cluster {
    dir: tempfile::TempDir,
    procs: Procs,
    http: reqwest::Client,
}

impl Cluster {
    async fn address(&self, other_than: Option<&Value>) -> Value {
        let file = self.dir.path().join("output/ssm/coordinator.json");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let read = std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok());
            if let Some(a) = read.filter(|a| Some(a) != other_than) {
                return a;
            }
            assert!(Instant::now() < deadline, "coordinator did not register");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn get(&self, url: &str) -> Option<Value> {
        self.http.get(url).send().await.ok()?.json().await.ok()
    }
}

/// Polls `GET {control}/colony` every 5 ms until `check` holds; returns when it did.
async fn until(
    cluster: &Cluster,
    control: &str,
    check: impl Fn(&Value) -> bool,
) -> (Instant, Value) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(c) = cluster.get(&format!("{control}/colony")).await {
            if check(&c) {
                return (Instant::now(), c);
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting on GET /colony"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Running again: a placement newer than `epoch`, and its slowest backend past the tick it
/// went back to.
fn running_again(epoch: u64) -> impl Fn(&Value) -> bool {
    move |c: &Value| {
        c["epoch"].as_u64().is_some_and(|e| e > epoch)
            && c["state"] == "running"
            && c["front_tick"].as_u64() > c["tick"].as_u64()
    }
}

/// One round: a fresh cluster; kill -9 a backend, then the coordinator. Returns the two
/// times.
async fn round(backends: usize, world: &Value) -> (Duration, Duration, Value) {
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().display().to_string();
    let mut procs = Procs(vec![coordinator(&registry)]);
    for _ in 0..backends {
        procs.0.push(
            colony()
                .args(["backend", "--registry-dir", &registry])
                .args(["--heartbeat-interval", "200ms"])
                .spawn()
                .unwrap(),
        );
    }
    let http = shared::tls::http_client(None)
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let cluster = Cluster { dir, procs, http };
    let address = cluster.address(None).await;
    let ip = address["ip"].as_str().unwrap().to_owned();
    let control = format!("http://{ip}:{}", address["http_port"]);
    let mgmt = format!("http://{ip}:{}", address["mgmt_port"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let active = cluster
            .get(&format!("{mgmt}/health/status"))
            .await
            .map_or(0, |h| {
                h["components"].as_array().map_or(0, |c| {
                    c.iter()
                        .filter(|c| c["type"] == "backend" && c["status"] == "ACTIVE")
                        .count()
                })
            });
        if active == backends {
            break;
        }
        assert!(Instant::now() < deadline, "backends did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = cluster
        .http
        .post(format!("{control}/colony-start"))
        .json(world)
        .send()
        .await
        .unwrap();
    assert!(started.status().is_success());
    let ran = cluster
        .http
        .post(format!("{control}/colony/run"))
        .json(&json!({"ticks": 100_000_000}))
        .send()
        .await
        .unwrap();
    assert!(ran.status().is_success());
    let (_, c) = until(&cluster, &control, |c| {
        c["tick"].as_u64().is_some_and(|t| t >= 1000)
    })
    .await;

    // 1. kill -9 a backend.
    let mut cluster = cluster;
    let epoch = c["epoch"].as_u64().unwrap_or(0);
    let killed = Instant::now();
    cluster.procs.0[2].kill().unwrap();
    let (back, after) = until(&cluster, &control, running_again(epoch)).await;
    let loss = back - killed;
    let alerts = cluster
        .get(&format!("{mgmt}/alerts"))
        .await
        .unwrap_or(Value::Null);

    // 2. kill -9 the coordinator, start another on the same registry.
    let old = cluster.address(None).await;
    let epoch = after["epoch"].as_u64().unwrap_or(0);
    cluster.procs.0[0].kill().unwrap();
    let _ = cluster.procs.0[0].wait();
    let restarted = Instant::now();
    cluster.procs.0[0] = coordinator(&registry);
    let address = cluster.address(Some(&old)).await;
    let control = format!("http://{ip}:{}", address["http_port"]);
    let colony_id = c["colony_id"].clone();
    let (adopted, _) = until(&cluster, &control, move |c| {
        c["colony_id"] == colony_id && running_again(epoch)(c)
    })
    .await;
    (loss, adopted - restarted, alerts)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let backends = env_or("CLUSTER_BACKENDS", 4.0) as usize;
    let rounds = if benching {
        env_or("RECOVERY_ROUNDS", 3.0) as usize
    } else {
        1
    };
    let world: Value = std::env::var("CLUSTER_WORLD")
        .ok()
        .and_then(|w| serde_json::from_str(&w).ok())
        .unwrap_or_else(|| {
            if benching {
                json!({})
            } else {
                json!({"width_in_shards": 4, "height_in_shards": 2, "shard_width": 32, "shard_height": 32})
            }
        });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut losses = Vec::new();
    let mut adoptions = Vec::new();
    for r in 1..=rounds {
        let (loss, adoption, alerts) = rt.block_on(round(backends, &world));
        let lost = alerts["open"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["kind"] == "backend_lost"))
            .map(|a| a["message"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_default();
        println!(
            "round {r}: backend kill -9 -> running again {:.0} ms; coordinator restart -> colony running again {:.0} ms",
            loss.as_secs_f64() * 1e3,
            adoption.as_secs_f64() * 1e3
        );
        println!("  alert: {lost}");
        losses.push(loss);
        adoptions.push(adoption);
    }
    println!(
        "world {world}, {backends} backends, {rounds} rounds (medians): backend loss {:.0} ms (target < 2000 ms), re-adoption {:.0} ms (target < 5000 ms)",
        median(losses).as_secs_f64() * 1e3,
        median(adoptions).as_secs_f64() * 1e3,
    );
}
