//! Whole-cluster tick rate against the single-process reference, measured side by side.
//!
//! Starts a coordinator and `CLUSTER_BACKENDS` backends (default 4) as real processes with the
//! file registry, starts the default world (8×5 shards of 250×250, or `CLUSTER_WORLD` as a
//! colony-start JSON body), runs ticks and times them; then runs `colony reference` for the
//! same world and ticks in one process (all cores) and compares cell-update rates. The runs
//! alternate `CLUSTER_ROUNDS` times (default 3); the best of each is reported.
//! `CLUSTER_CHECKPOINT_EVERY` (default 100, the coordinator's default) sets how often the
//! backends take a checkpoint and send its copies (DESIGN §14); a large value shows what the
//! copies cost.
//!
//! Run: `cargo bench --bench cluster`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

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

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let env = |k: &str, d: f64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let backends = env("CLUSTER_BACKENDS", 4.0) as usize;
    let rounds = if benching {
        env("CLUSTER_ROUNDS", 3.0) as usize
    } else {
        1
    };
    let secs = if benching {
        env("CLUSTER_SECS", 4.0)
    } else {
        0.3
    };
    let checkpoint_every = (env("CLUSTER_CHECKPOINT_EVERY", 100.0) as u64).to_string();
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

    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().display().to_string();
    let mut procs = Procs(Vec::new());
    procs.0.push(
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
            .args([
                "--registry-dir",
                &registry,
                "--checkpoint-every",
                &checkpoint_every,
            ])
            .spawn()
            .unwrap(),
    );
    for _ in 0..backends {
        procs.0.push(
            colony()
                .args([
                    "backend",
                    "--registry-dir",
                    &registry,
                    "--heartbeat-interval",
                    "200ms",
                ])
                .spawn()
                .unwrap(),
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let http = shared::tls::http_client(None).no_proxy().timeout(Duration::from_secs(120)).build().unwrap();
        let coordinator_file = dir.path().join("output/ssm/coordinator.json");
        let deadline = Instant::now() + Duration::from_secs(30);
        let address: Value = loop {
            if let Some(a) = std::fs::read_to_string(&coordinator_file).ok().and_then(|t| serde_json::from_str(&t).ok()) {
                break a;
            }
            assert!(Instant::now() < deadline, "coordinator did not register");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let ip = address["ip"].as_str().unwrap().to_owned();
        let control = format!("http://{ip}:{}", address["http_port"]);
        let mgmt = format!("http://{ip}:{}", address["mgmt_port"]);
        loop {
            let active = match http.get(format!("{mgmt}/health/status")).send().await {
                Ok(r) => r.json::<Value>().await.map_or(0, |h| {
                    h["components"].as_array().map_or(0, |c| {
                        c.iter().filter(|c| c["type"] == "backend" && c["status"] == "ACTIVE").count()
                    })
                }),
                Err(_) => 0,
            };
            if active == backends {
                break;
            }
            assert!(Instant::now() < deadline, "backends did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let topology: Value = http.post(format!("{control}/colony-start")).json(&world).send().await.unwrap().json().await.unwrap();
        let cells = topology["width_in_shards"].as_u64().unwrap()
            * topology["height_in_shards"].as_u64().unwrap()
            * topology["shard_width"].as_u64().unwrap()
            * topology["shard_height"].as_u64().unwrap();
        let run = |ticks: u64| {
            let http = http.clone();
            let control = control.clone();
            async move {
                let started = Instant::now();
                let answer: Value = http
                    .post(format!("{control}/colony/run"))
                    .json(&json!({"ticks": ticks, "wait": true}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                assert_eq!(answer["state"], "idle", "{answer}");
                (started.elapsed().as_secs_f64(), answer)
            }
        };
        // Warm up (the first run also opens every link), then size the runs to about `secs`
        // each from a second run long enough to time.
        run(50).await;
        let (t, _) = run(500).await;
        let ticks = ((secs / (t / 500.0)) as u64).clamp(50, 200_000);
        let mut best_cluster = 0f64;
        let mut best_reference = 0f64;
        let mut done = 550;
        for _ in 0..rounds {
            let (t, answer) = run(ticks).await;
            done += ticks;
            best_cluster = best_cluster.max(ticks as f64 / t);
            // The same world, the same total ticks, in one process.
            let out = Command::new(env!("CARGO_BIN_EXE_colony"))
                .arg("reference")
                .args(reference_args(&topology, done))
                .output()
                .unwrap();
            let reference: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(reference["fingerprint"], answer["fingerprint"], "cluster and reference disagree");
            best_reference = best_reference.max(reference["ticks_per_second"].as_f64().unwrap());
        }
        println!(
            "world {}x{} shards of {}x{} ({cells} cells), {backends} backends, {ticks} ticks per run, best of {rounds}",
            topology["width_in_shards"], topology["height_in_shards"], topology["shard_width"], topology["shard_height"]
        );
        println!(
            "cluster:   {best_cluster:>10.1} ticks/s = {:.3e} cell updates/s",
            best_cluster * cells as f64
        );
        println!(
            "reference: {best_reference:>10.1} ticks/s = {:.3e} cell updates/s",
            best_reference * cells as f64
        );
        println!("cluster / reference = {:.2}", best_cluster / best_reference);
    });
}

fn reference_args(t: &Value, ticks: u64) -> Vec<String> {
    let s = |k: &str| t[k].to_string();
    vec![
        "--width-in-shards".into(),
        s("width_in_shards"),
        "--height-in-shards".into(),
        s("height_in_shards"),
        "--shard-width".into(),
        s("shard_width"),
        "--shard-height".into(),
        s("shard_height"),
        "--rule".into(),
        t["simulation"]["rule"].as_str().unwrap().to_owned(),
        "--seed".into(),
        t["simulation"]["seed"].to_string(),
        "--density".into(),
        t["simulation"]["density"].to_string(),
        "--ticks".into(),
        ticks.to_string(),
    ]
}
