//! Colony on several hosts (DESIGN §2, §15): a coordinator and backends in network namespaces
//! of their own, each with its own address in 198.18.0.0/15 and the same default-style ports,
//! made by `scripts/netns-cluster.sh` through the [`netns::TestBed`] helper. Every result is
//! compared with what `colony reference` prints for the same world and ticks.
//!
//! These tests need root and `ip netns`; without them they say so and return, except under
//! `COLONY_REQUIRE_NETNS=1` (CI), where they fail.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod netns;

use std::time::Duration;

use common::*;
use netns::TestBed;
use serde_json::{json, Value};

/// A small world: 6 × 4 shards of 48 × 48, so three backends hold eight each.
fn world() -> Value {
    json!({"width_in_shards": 6, "height_in_shards": 4, "shard_width": 48, "shard_height": 48,
           "rule": "B3/S23", "seed": 4242, "density": 0.4})
}

/// How long a recovery may take here (the stall limit and the fence of DESIGN §14, plus a
/// loaded machine).
const RECOVERY: Duration = Duration::from_secs(40);

/// Health thresholds small enough to watch a cut node go STALE then DOWN in a test.
const STALE_AFTER: &str = "400ms";
const DOWN_AFTER: &str = "1200ms";
const COORDINATOR_FAST: &[&str] = &["--stale-after", STALE_AFTER, "--down-after", DOWN_AFTER];
const BACKEND_FAST: &[&str] = &["--heartbeat-interval", "100ms"];

/// What `colony reference` prints for [`world`] after `ticks` ticks: `(population,
/// fingerprint)`.
async fn reference(ticks: u64) -> (Value, Value) {
    let w = world();
    let arg = |k: &str| w[k].to_string().trim_matches('"').to_owned();
    let out = colony_command()
        .args(["reference", "--ticks", &ticks.to_string()])
        .args(["--width-in-shards", &arg("width_in_shards")])
        .args(["--height-in-shards", &arg("height_in_shards")])
        .args(["--shard-width", &arg("shard_width")])
        .args(["--shard-height", &arg("shard_height")])
        .args(["--rule", &arg("rule"), "--seed", &arg("seed")])
        .args(["--density", &arg("density")])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        printed["population"].clone(),
        printed["fingerprint"].clone(),
    )
}

/// The test bed's coordinator, seen over HTTP from the root namespace.
struct Coordinator<'a> {
    bed: &'a TestBed,
}

impl Coordinator<'_> {
    async fn get(&self, url: String) -> Value {
        match self.bed.http.get(&url).send().await {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .bed
            .http
            .post(format!("{}{path}", self.bed.control()))
            .json(&body)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn colony(&self) -> Value {
        self.get(format!("{}/colony", self.bed.control())).await
    }

    /// The health status of `node_id` on the coordinator, if it knows the node.
    async fn status_of(&self, node_id: &str) -> Option<String> {
        let health = self.get(format!("{}/health/status", self.bed.mgmt())).await;
        health["components"]
            .as_array()?
            .iter()
            .find(|c| c["node_id"] == node_id)
            .and_then(|c| c["status"].as_str())
            .map(str::to_owned)
    }

    /// Waits until every backend of the bed is ACTIVE.
    async fn all_active(&self) {
        for k in 1..=self.bed.backends {
            let id = self.bed.backend_id(&format!("b{k}"));
            self.becomes(&id, "ACTIVE", DEADLINE * 2).await;
        }
    }

    /// Waits until `node_id` has `status`; returns how long that took.
    async fn becomes(&self, node_id: &str, status: &str, within: Duration) -> Duration {
        let started = tokio::time::Instant::now();
        loop {
            let now = self.status_of(node_id).await;
            if now.as_deref() == Some(status) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "{node_id} not {status} within {within:?} (last: {now:?})\n{}",
                self.bed.logs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn start_colony(&self) -> Value {
        let (status, topology) = self.post("/colony-start", world()).await;
        assert_eq!(status, 200, "{topology}\n{}", self.bed.logs());
        topology
    }

    /// Waits until `GET /colony` satisfies `check`; the last answer is in the failure.
    async fn until(&self, within: Duration, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let c = self.colony().await;
            if check(&c) {
                return c;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within {within:?}; last GET /colony: {c}\n{}",
                self.bed.logs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts a run to `target` and waits until the colony has passed `tick`.
    async fn run_past(&self, target: u64, tick: u64) {
        let (status, answer) = self.post("/colony/run", json!({"ticks": target})).await;
        assert_eq!(status, 200, "{answer}");
        self.until(DEADLINE * 6, "the run under way", |c| {
            c["front_tick"].as_u64().is_some_and(|t| t >= tick)
        })
        .await;
    }

    /// Waits for the run to end at `target` and checks it against `colony reference`.
    async fn finishes_equal(&self, target: u64) -> Value {
        let done = self
            .until(RECOVERY * 3, "the run finished", |c| {
                c["state"] == "failed" || (c["state"] == "idle" && c["tick"] == target)
            })
            .await;
        assert_eq!(done["state"], "idle", "{done}\n{}", self.bed.logs());
        let (population, fingerprint) = reference(target).await;
        assert_eq!(done["population"], population, "{done}");
        assert_eq!(done["fingerprint"], fingerprint, "{done}");
        done
    }

    /// The instance ids the colony's topology places shards on.
    async fn placed(&self) -> Vec<String> {
        let topology = self.get(format!("{}/topology", self.bed.control())).await;
        let mut ids: Vec<String> = topology["placement"]
            .as_array()
            .unwrap_or_else(|| panic!("no placement: {topology}"))
            .iter()
            .filter_map(|p| p["instance_id"].as_str().map(str::to_owned))
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

/// The registry entries of the bed: the coordinator's and every backend's, by file name.
fn registry_entries(bed: &TestBed) -> (Value, Vec<(String, Value)>) {
    let ssm = bed.registry.path().join("output/ssm");
    let read = |p: std::path::PathBuf| -> Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let coordinator = read(ssm.join("coordinator.json"));
    let mut backends: Vec<(String, Value)> = std::fs::read_dir(ssm.join("backends"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let id = name.strip_suffix(".json")?.to_owned();
            Some((id, read(e.path())))
        })
        .collect();
    backends.sort_by(|a, b| a.0.cmp(&b.0));
    (coordinator, backends)
}

/// Checks that the registry holds every node of the bed at its namespace address, under the
/// id DESIGN §2 gives it, and nothing on loopback.
fn registry_holds_the_namespace_addresses(bed: &TestBed) {
    let (coordinator, backends) = registry_entries(bed);
    assert_eq!(coordinator["ip"], bed.ip("c"), "{coordinator}");
    let expected: Vec<(String, String)> = (1..=bed.backends)
        .map(|k| {
            let host = format!("b{k}");
            (bed.backend_id(&host), bed.ip(&host))
        })
        .collect();
    let found: Vec<(String, String)> = backends
        .iter()
        .map(|(id, a)| (id.clone(), a["ip"].as_str().unwrap_or("").to_owned()))
        .collect();
    assert_eq!(found, expected);
    for (id, a) in &backends {
        assert_eq!(a["internal_port"], 9000, "{id}: {a}");
        assert_ne!(a["ip"], "127.0.0.1", "{id}: {a}");
    }
}

#[tokio::test]
async fn two_hosts_on_the_same_ports_both_register_and_a_duplicate_id_is_refused() {
    let Some(bed) = TestBed::up(2, &[], BACKEND_FAST) else {
        return;
    };
    let c = Coordinator { bed: &bed };
    c.all_active().await;
    registry_holds_the_namespace_addresses(&bed);
    let topology = c.start_colony().await;
    let (b1, b2) = (bed.backend_id("b1"), bed.backend_id("b2"));
    assert_eq!(c.placed().await, vec![b1.clone(), b2.clone()], "{topology}");

    // A third backend on b1's host (other ports) claiming b2's id: refused, naming both
    // addresses, and b2 keeps its entry and stays ACTIVE.
    let registry = bed.registry.path().display().to_string();
    let ip = bed.ip("b1");
    let out = tokio::time::timeout(
        DEADLINE,
        bed.exec_async(
            "b1",
            &[
                common::colony_bin(),
                "backend",
                "--bind-ip",
                &ip,
                "--advertise-ip",
                &ip,
                "--internal-port",
                "9010",
                "--http-port",
                "9011",
                "--mgmt-port",
                "9012",
                "--registry",
                "file",
                "--registry-dir",
                &registry,
                "--instance-id",
                &b2,
            ],
        ),
    )
    .await
    .expect("a backend with a live node's id did not exit");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it started: {stderr}");
    assert!(
        stderr.contains(&format!("instance id {b2} is held by a live node")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{}:9000", bed.ip("b2"))),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("{ip}:9010")), "{stderr}");
    registry_holds_the_namespace_addresses(&bed);
    assert_eq!(c.status_of(&b2).await.as_deref(), Some("ACTIVE"));
}

#[tokio::test]
async fn one_coordinator_and_three_backend_hosts_over_tls_run_500_ticks_equal_to_the_reference_and_keep_strangers_out(
) {
    let Some(bed) = TestBed::up_tls(3, &[], BACKEND_FAST) else {
        return;
    };
    let c = Coordinator { bed: &bed };
    c.all_active().await;
    registry_holds_the_namespace_addresses(&bed);
    c.start_colony().await;
    assert_eq!(c.placed().await.len(), 3);
    let (status, answer) = c.post("/colony/run", json!({"ticks": 500})).await;
    assert_eq!(status, 200, "{answer}");
    c.finishes_equal(500).await;
    strangers_get_nothing_only_nodes_may_have(&bed).await;
}

/// On a TLS bed: plaintext gets nothing; a human's client (trusts the CA, no certificate)
/// reaches PING and the reads; neither it, nor a cluster certificate used from an address
/// other than its IP SAN's, nor a certificate of another CA, may do what only nodes may.
/// This test's connections come from the bridge address, `NET.1`: the `tester` certificate
/// names that address, so it is the positive control (the same CA, the right address).
async fn strangers_get_nothing_only_nodes_may_have(bed: &TestBed) {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let b1 = format!("{}:9000", bed.ip("b1"));
    let b1_mgmt = format!("https://{}:9002", bed.ip("b1"));
    let (_, _, ca) = bed.tls_files("tester");
    let anonymous = Arc::new(netns::anonymous_tls(&ca));
    let as_node = |name: &str, foreign: Option<&std::path::Path>| {
        let (cert, key, _) = bed.tls_files(name);
        let (cert, key) = match foreign {
            Some(dir) => (
                dir.join(format!("{name}.pem")),
                dir.join(format!("{name}-key.pem")),
            ),
            None => (cert, key),
        };
        let files = shared::tls::TlsFiles {
            cert,
            key,
            ca: ca.clone(),
        };
        shared::tls::Tls::load(&files, Duration::from_secs(5))
            .unwrap()
            .client_config()
    };
    let tester = as_node("tester", None);
    // b1's own certificate, shown from this machine's address rather than b1's.
    let misplaced = as_node("b1", None);
    // The tester's address, signed by a CA the cluster never heard of.
    let foreign_dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(colony_bin())
        .args(["certs", "--out"])
        .arg(foreign_dir.path())
        .args(["--node", &format!("tester:{}.1", bed.net)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let foreign = as_node("tester", Some(foreign_dir.path()));

    // One exchange of text lines with b1's data plane over TLS: what came back, or why the
    // connection gave nothing.
    let talk = |config: Arc<rustls::ClientConfig>, lines: Vec<&'static [u8]>| {
        let (addr, ip) = (b1.clone(), bed.ip("b1"));
        async move {
            let tcp = tokio::net::TcpStream::connect(&addr)
                .await
                .map_err(|e| e.to_string())?;
            let name = rustls::pki_types::ServerName::IpAddress(
                ip.parse::<std::net::IpAddr>().unwrap().into(),
            );
            let mut tls = tokio::time::timeout(
                DEADLINE,
                tokio_rustls::TlsConnector::from(config).connect(name, tcp),
            )
            .await
            .map_err(|_| "handshake timed out".to_owned())?
            .map_err(|e| e.to_string())?;
            let mut answers = String::new();
            for line in lines {
                tls.write_all(line).await.map_err(|e| e.to_string())?;
                tls.flush().await.map_err(|e| e.to_string())?;
                let mut buf = [0u8; 1024];
                let n = tokio::time::timeout(DEADLINE, tls.read(&mut buf))
                    .await
                    .map_err(|_| "no answer".to_owned())?
                    .map_err(|e| e.to_string())?;
                answers.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
            Ok::<String, String>(answers)
        }
    };
    const HELLO: &[u8] = b"{\"type\":\"hello\",\"instance_id\":\"intruder\"}\n";

    // Plaintext: the HTTP planes do not answer, the data plane says nothing and hangs up.
    let plain = shared::tls::http_client(None)
        .timeout(DEADLINE)
        .build()
        .unwrap();
    for url in [bed.control(), bed.mgmt(), b1_mgmt.clone()] {
        let url = format!("{}/health", url.replace("https://", "http://"));
        let got = plain.get(&url).send().await;
        assert!(got.is_err(), "plaintext HTTP answered on {url}: {got:?}");
    }
    let mut raw = tokio::net::TcpStream::connect(&b1).await.unwrap();
    raw.write_all(b"PING\r\n").await.unwrap();
    let mut bytes = Vec::new();
    let cut = tokio::time::timeout(DEADLINE, raw.read_to_end(&mut bytes)).await;
    assert!(cut.is_ok(), "a plaintext data-plane client was not cut");
    assert!(!String::from_utf8_lossy(&bytes).contains("PONG"));

    // The human: checks b1's certificate against b1's own address, gets PONG and reads, and
    // is refused HELLO.
    let text = talk(anonymous.clone(), vec![b"PING\r\n", HELLO])
        .await
        .unwrap();
    assert!(text.contains("PONG"), "{text}");
    assert!(text.contains("not_a_node_certificate"), "{text}");
    let human = shared::tls::http_client(None)
        .use_preconfigured_tls((*anonymous).clone())
        .timeout(DEADLINE)
        .build()
        .unwrap();
    for url in [
        format!("{}/health", bed.mgmt()),
        format!("{}/colony", bed.control()),
        format!("{}/topology", bed.control()),
        format!("{b1_mgmt}/metrics"),
    ] {
        let got = human.get(&url).send().await.unwrap();
        assert_eq!(got.status(), 200, "{url}");
    }

    // b1's certificate from the wrong address is not a node's; the tester's, of the same CA
    // and for this address, is (its HELLO goes on to the challenge).
    let text = talk(misplaced.clone(), vec![HELLO]).await.unwrap();
    assert!(text.contains("not_a_node_certificate"), "{text}");
    let text = talk(tester.clone(), vec![HELLO]).await.unwrap();
    assert!(text.contains("challenge"), "{text}");
    // Another CA's certificate does not get through the handshake at all.
    let refused = talk(foreign.clone(), vec![b"PING\r\n"]).await;
    assert!(
        refused.is_err(),
        "a foreign certificate was served: {refused:?}"
    );

    // Signed node calls (the cluster secret is no help without a node's certificate).
    let secret = cluster_secret(bed.registry.path());
    let heartbeat = format!("{}/heartbeat", bed.mgmt());
    let body = json!({"instance_id": "intruder"}).to_string();
    for (who, config) in [("human", anonymous.clone()), ("misplaced", misplaced)] {
        let client = shared::tls::http_client(None)
            .use_preconfigured_tls((*config).clone())
            .timeout(DEADLINE)
            .build()
            .unwrap();
        let answer = signed_post(&client, &secret, &heartbeat, body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 401, "{who}");
        let answer: Value = answer.json().await.unwrap();
        assert_eq!(answer["code"], "not_a_node_certificate", "{who}: {answer}");
    }
    let client = shared::tls::http_client(None)
        .use_preconfigured_tls((*foreign).clone())
        .timeout(DEADLINE)
        .build()
        .unwrap();
    let got = signed_post(&client, &secret, &heartbeat, body).send().await;
    assert!(got.is_err(), "a foreign certificate was served: {got:?}");

    // Counted: two refused heartbeats on the coordinator's management plane, two refused
    // HELLOs on b1's data plane.
    let metrics = |url: String| {
        let human = human.clone();
        async move { human.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let coordinator = metrics(format!("{}/metrics", bed.mgmt())).await;
    assert_eq!(refusals(&coordinator, "mgmt"), 2, "{coordinator}");
    let backend = metrics(format!("{b1_mgmt}/metrics")).await;
    assert_eq!(refusals(&backend, "data"), 2, "{backend}");
}

/// `colony_auth_refusals_total{plane, reason="not_a_node_certificate"}` in a `/metrics` text.
fn refusals(metrics: &str, plane: &str) -> u64 {
    let prefix = format!(
        "colony_auth_refusals_total{{plane=\"{plane}\",reason=\"not_a_node_certificate\"}} "
    );
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_cut_backend_goes_stale_then_down_the_colony_recovers_and_healing_brings_it_back() {
    let Some(bed) = TestBed::up(3, COORDINATOR_FAST, BACKEND_FAST) else {
        return;
    };
    let c = Coordinator { bed: &bed };
    c.all_active().await;
    c.start_colony().await;
    let target = 1500;
    c.run_past(target, 100).await;
    let before = c.colony().await;
    let cut = bed.backend_id("b2");
    bed.cut("b2");
    let stale = c.becomes(&cut, "STALE", DEADLINE).await;
    let down = c.becomes(&cut, "DOWN", DEADLINE).await + stale;
    eprintln!(
        "cut at tick {}: STALE after {stale:?}, DOWN after {down:?}",
        before["front_tick"]
    );
    // Within the thresholds, allowing for the sweep interval and a loaded machine.
    assert!(down < Duration::from_secs(5), "DOWN only after {down:?}");
    c.until(RECOVERY, "a new placement", |v| {
        v["epoch"].as_u64() > before["epoch"].as_u64()
    })
    .await;
    c.finishes_equal(target).await;
    assert!(
        !c.placed().await.contains(&cut),
        "shards still on the cut backend"
    );
    bed.heal("b2");
    c.becomes(&cut, "ACTIVE", DEADLINE * 2).await;
}

#[tokio::test]
async fn a_backend_cut_off_from_the_coordinator_only_does_not_corrupt_the_colony() {
    let Some(bed) = TestBed::up(3, COORDINATOR_FAST, BACKEND_FAST) else {
        return;
    };
    let c = Coordinator { bed: &bed };
    c.all_active().await;
    c.start_colony().await;
    let target = 1500;
    c.run_past(target, 100).await;
    let lost = bed.backend_id("b1");
    bed.blackhole("b1", "c");
    c.becomes(&lost, "DOWN", DEADLINE).await;
    c.finishes_equal(target).await;
    bed.unblackhole("b1", "c");
    c.becomes(&lost, "ACTIVE", DEADLINE * 2).await;
}

/// A border wait short enough that a cut path is found in seconds (the default is 10 s).
const BACKEND_CUT_PEER: &[&str] = &["--heartbeat-interval", "100ms", "--halo-timeout", "3s"];

#[tokio::test]
async fn a_backend_cut_off_from_one_peer_only_is_dropped_the_colony_survives_and_it_comes_back() {
    let Some(bed) = TestBed::up(3, COORDINATOR_FAST, BACKEND_CUT_PEER) else {
        return;
    };
    let c = Coordinator { bed: &bed };
    c.all_active().await;
    c.start_colony().await;
    let target = 1500;
    c.run_past(target, 100).await;
    let before = c.colony().await;
    let (b1, b2, b3) = (
        bed.backend_id("b1"),
        bed.backend_id("b2"),
        bed.backend_id("b3"),
    );
    bed.blackhole("b1", "b2");
    // Both ends still heartbeat, so neither is DOWN: the ends of the cut find each other
    // unreachable, say so, and the coordinator drops one of them (the one with fewer shards;
    // here both hold eight, so the greater id: b2) and recovers without it.
    let recovered = c
        .until(
            RECOVERY * 2,
            "a placement without one end of the cut",
            |v| v["epoch"].as_u64() > before["epoch"].as_u64() && v["state"] != "recovering",
        )
        .await;
    let placed = c.placed().await;
    assert_eq!(
        placed,
        vec![b1.clone(), b3.clone()],
        "{recovered}\n{}",
        bed.logs()
    );
    c.finishes_equal(target).await;
    assert_eq!(c.status_of(&b2).await.as_deref(), Some("ACTIVE"));
    let alerts = c.get(format!("{}/alerts", bed.mgmt())).await;
    assert!(
        alerts.to_string().contains(&b2),
        "no alert names {b2}: {alerts}"
    );

    // Healed, the dropped backend is ACTIVE and takes shards again at a rebalance; the
    // colony goes on to the reference's answer on all three.
    bed.unblackhole("b1", "b2");
    c.becomes(&b2, "ACTIVE", DEADLINE * 2).await;
    let more = 1000;
    let (status, answer) = c.post("/colony/run", json!({"ticks": more})).await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = c.post("/colony/rebalance", json!({})).await;
    assert_eq!(status, 200, "{answer}");
    assert_ne!(answer["state"], "failed", "{answer}");
    assert_eq!(c.placed().await, vec![b1, b2, b3]);
    c.finishes_equal(target + more).await;
}
