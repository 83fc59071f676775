//! A real Prometheus (Debian's `prometheus`, see `scripts/setup.sh`) scrapes a running
//! cluster (coordinator + 2 backends, a colony ticking) on loopback; a few series are queried
//! through its HTTP API, and every PromQL expression of `docs/grafana-colony.json` must
//! return data.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Long enough for several 1 s scrapes, so every `rate(...[1m])` has two samples.
const SCRAPES: Duration = Duration::from_secs(40);

/// A Prometheus server on a loopback port with its own config and storage. It is started
/// under `setpriv --pdeathsig KILL`, so it dies with this test process however that ends,
/// and is killed on drop.
struct Prometheus {
    _child: tokio::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(targets: &[String]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let quoted: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: colony\n    static_configs:\n      - targets: [{}]\n",
            quoted.join(", ")
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let child = tokio::process::Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "prometheus"])
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("prometheus is not installed: run scripts/setup.sh");
        Prometheus {
            _child: child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// The result vector of an instant query, `None` on any failure.
    async fn query(&self, http: &reqwest::Client, promql: &str) -> Option<Vec<Value>> {
        let r = http
            .get(format!(
                "{}/api/v1/query?query={}",
                self.url,
                encode(promql)
            ))
            .send()
            .await
            .ok()?;
        let body: Value = r.json().await.ok()?;
        if body["status"] != "success" {
            return None;
        }
        body["data"]["result"].as_array().cloned()
    }

    /// Waits until `promql` returns at least one series.
    async fn data(&self, http: &reqwest::Client, promql: &str) -> Vec<Value> {
        eventually(SCRAPES, &format!("data for {promql}"), || async {
            self.query(http, promql).await.filter(|r| !r.is_empty())
        })
        .await
    }
}

/// `text` percent-encoded for a URL query (every byte but the unreserved ones).
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `ip:mgmt_port` of every node in the registry (coordinator and backends).
fn mgmt_targets(cluster: &Cluster) -> Vec<String> {
    let ssm = cluster.ssm_dir();
    let mut files = vec![ssm.join("coordinator.json")];
    for entry in std::fs::read_dir(ssm.join("backends")).unwrap() {
        files.push(entry.unwrap().path());
    }
    files
        .iter()
        .map(|f| {
            let a: Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
            format!("{}:{}", a["ip"].as_str().unwrap(), a["mgmt_port"])
        })
        .collect()
}

/// Every `expr` of the dashboard's panels.
fn dashboard_expressions() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/grafana-colony.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    exprs
}

#[tokio::test]
async fn prometheus_scrapes_a_ticking_cluster_and_every_dashboard_query_has_data() {
    let mut cluster = Cluster::new();
    cluster.start_coordinator(&["--checkpoint-every", "50"]);
    for _ in 0..2 {
        cluster.start_backend(&["--heartbeat-interval", "100ms"]);
    }
    let a = cluster.coordinator_address().await;
    let control = format!("http://{}:{}", a["ip"].as_str().unwrap(), a["http_port"]);
    cluster.backends_active(2).await;
    let post = |path: &str, body: Value| {
        cluster
            .http
            .post(format!("{control}{path}"))
            .json(&body)
            .timeout(Duration::from_secs(30))
            .send()
    };
    let world = json!({"width_in_shards": 4, "height_in_shards": 2, "shard_width": 32,
                       "shard_height": 32, "rule": "B3/S23", "seed": 3, "density": 0.4});
    let r = post("/colony-start", world).await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    // Runs until the cluster stops with the test.
    let r = post("/colony/run", json!({"ticks": 100_000_000u64}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let targets = mgmt_targets(&cluster);
    assert_eq!(targets.len(), 3, "{targets:?}");
    let prometheus = Prometheus::start(&targets);
    let http = &cluster.http;

    // Every node is scraped.
    eventually(SCRAPES, "3 targets up", || async {
        let up = prometheus.query(http, "up == 1").await?;
        (up.len() == 3).then_some(())
    })
    .await;
    // The colony moves: its tick grows between two queries.
    let tick = |r: Vec<Value>| -> f64 { r[0]["value"][1].as_str().unwrap().parse().unwrap() };
    let first = tick(prometheus.data(http, "colony_colony_tick").await);
    eventually(SCRAPES, "the scraped tick moves", || async {
        let now = tick(prometheus.query(http, "colony_colony_tick").await?);
        (now > first).then_some(())
    })
    .await;
    // Both backends tick and hold shards; each sends borders to the other.
    eventually(SCRAPES, "both backends ticking", || async {
        let r = prometheus
            .query(http, "rate(colony_ticks_completed_total[1m]) > 0")
            .await?;
        (r.len() == 2).then_some(())
    })
    .await;
    let held = prometheus.data(http, "sum(colony_shards_held)").await;
    assert_eq!(held[0]["value"][1], "8", "{held:?}");
    let peers = prometheus
        .data(http, "colony_border_sent_bytes_total > 0")
        .await;
    assert!(
        peers.iter().all(|s| s["metric"]["peer"].is_string()),
        "{peers:?}"
    );
    // Heartbeat ages per node, one inter-arrival histogram for the cluster.
    let ages = prometheus.data(http, "colony_heartbeat_age_seconds").await;
    assert_eq!(ages.len(), 2, "{ages:?}");
    let hist = prometheus
        .data(http, "colony_heartbeat_interarrival_seconds_count")
        .await;
    assert_eq!(hist.len(), 1, "{hist:?}");
    // Every node reports its process.
    eventually(SCRAPES, "every node's RSS", || async {
        let r = prometheus
            .query(http, "colony_process_resident_memory_bytes > 0")
            .await?;
        (r.len() == 3).then_some(())
    })
    .await;

    for expr in dashboard_expressions() {
        prometheus.data(http, &expr).await;
    }
}
