//! A colony that loses backends, or its coordinator, and still ends bit-identical (DESIGN §14):
//! real `colony coordinator` and `colony backend` processes on loopback, killed and stopped
//! with signals, every result compared with the single-process reference for the same world
//! and ticks (what `colony reference` prints).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{json, Value};
use shared::sim::{run_reference, WorldParams};

/// How long a whole recovery may take in these tests (a frozen backend is given up on after
/// the stall limit, 3.5 s, plus the fence's 3 s).
const RECOVERY: Duration = Duration::from_secs(30);

/// A small world every test runs: 6 × 4 shards of 48 × 48, so four backends hold six each.
fn world() -> Value {
    json!({"width_in_shards": 6, "height_in_shards": 4, "shard_width": 48, "shard_height": 48,
           "rule": "B3/S23", "seed": 1234, "density": 0.4})
}

/// A number in `lo..hi` that differs from run to run (printed, so a failure can be replayed).
fn random_in(lo: u64, hi: u64) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    let pick = lo + shared::sim::splitmix64(nanos) % (hi - lo);
    eprintln!("random pick in {lo}..{hi}: {pick}");
    pick
}

/// Sends SIGCONT to a process on drop, so a test that fails while it is stopped still lets
/// it die (SIGKILL ends a stopped process too, but a stopped one holds its ports meanwhile).
struct Stopped<'a>(&'a Proc);

impl<'a> Stopped<'a> {
    fn stop(p: &'a Proc) -> Stopped<'a> {
        p.signal("STOP");
        Stopped(p)
    }
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        if self.0.child.id().is_some() {
            self.0.signal("CONT");
        }
    }
}

/// A coordinator and backends as separate processes on one file registry.
struct Live {
    cluster: Cluster,
    /// The coordinator's control base URL (changes when it restarts).
    control: String,
    /// The backends' instance ids, by index.
    ids: Vec<String>,
}

impl Live {
    async fn start(backends: usize, coordinator: &[&str], backend: &[&str]) -> Live {
        let mut cluster = Cluster::new();
        cluster.start_coordinator(coordinator);
        for _ in 0..backends {
            let mut args = vec!["--heartbeat-interval", "100ms"];
            args.extend_from_slice(backend);
            cluster.start_backend(&args);
        }
        let mut ids = Vec::new();
        for i in 0..backends {
            ids.push(cluster.backend_identity(i).await.0);
        }
        let control = control_url(&cluster.coordinator_address().await);
        let live = Live {
            cluster,
            control,
            ids,
        };
        live.wait_active(backends).await;
        live
    }

    async fn wait_active(&self, backends: usize) {
        eventually(DEADLINE, "backends ACTIVE", || async {
            let h = self.cluster.health().await;
            let n = h["components"]
                .as_array()?
                .iter()
                .filter(|c| c["type"] == "backend" && c["status"] == "ACTIVE")
                .count();
            (n >= backends).then_some(())
        })
        .await;
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .cluster
            .http
            .post(format!("{}{path}", self.control))
            .json(&body)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn colony(&self) -> Value {
        match self
            .cluster
            .http
            .get(format!("{}/colony", self.control))
            .send()
            .await
        {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }

    async fn start_colony(&self) -> Value {
        let (status, topology) = self.post("/colony-start", world()).await;
        assert_eq!(status, 200, "{topology}");
        topology
    }

    /// Waits until `GET /colony` satisfies `check`, within `within`; the last answer seen
    /// is in the failure message.
    async fn until(&self, within: Duration, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let c = self.colony().await;
            if check(&c) {
                return c;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within {within:?}; last GET /colony: {c}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for the colony to finish its run at `target`, and checks it against the
    /// reference.
    async fn finishes_equal(&self, target: u64) -> Value {
        let done = self
            .until(RECOVERY * 2, "the run finished", |c| {
                c["state"] == "failed" || (c["state"] == "idle" && c["tick"] == target)
            })
            .await;
        assert_eq!(done["state"], "idle", "{done}");
        let expected = run_reference(&params(), target).unwrap();
        assert_eq!(done["population"], expected.population, "{done}");
        assert_eq!(
            done["fingerprint"],
            expected.fingerprint.to_string(),
            "{done}"
        );
        done
    }

    async fn alerts(&self) -> Value {
        let url = self.cluster.mgmt_url("/alerts").await;
        self.cluster.get_json(&url).await
    }
}

fn control_url(address: &Value) -> String {
    format!(
        "http://{}:{}",
        address["ip"].as_str().unwrap(),
        address["http_port"]
    )
}

fn params() -> WorldParams {
    serde_json::from_value(world()).unwrap()
}

/// Starts a long run of `target` ticks and waits until the slowest backend passed `tick`.
async fn run_until(live: &Live, target: u64, tick: u64) {
    let (status, answer) = live.post("/colony/run", json!({"ticks": target})).await;
    assert_eq!(status, 200, "{answer}");
    live.until(DEADLINE * 3, "the run under way", |c| {
        c["front_tick"].as_u64().is_some_and(|t| t >= tick)
    })
    .await;
}

/// The open `backend_lost` alert about `node`, if any. (The node has other alerts too: its
/// heartbeat channel closing makes it STALE at once.)
fn alert_about(alerts: &Value, node: &str) -> Option<Value> {
    alerts["open"]
        .as_array()?
        .iter()
        .find(|a| a["node_id"] == node && a["kind"] == "backend_lost")
        .cloned()
}

#[tokio::test]
async fn a_backend_killed_at_a_random_tick_is_recovered_and_the_result_is_equal() {
    let live = Live::start(4, &[], &[]).await;
    live.start_colony().await;
    let target = 4000;
    run_until(&live, target, random_in(150, 2500)).await;
    let before = live.colony().await;
    live.cluster.backends[1].signal("KILL");
    let lost = &live.ids[1];
    // The colony goes on: a new placement without the lost backend.
    let after = live
        .until(RECOVERY, "a new placement", |c| {
            c["epoch"].as_u64() > before["epoch"].as_u64()
        })
        .await;
    assert_ne!(after["state"], "failed", "{after}");
    live.finishes_equal(target).await;
    // The alert names the lost backend, the shards moved and the ticks redone.
    let alert = alert_about(&live.alerts().await, lost).expect("an alert about the lost backend");
    let message = alert["message"].as_str().unwrap();
    assert_eq!(alert["kind"], "backend_lost", "{alert}");
    assert!(message.contains(lost.as_str()), "{message}");
    assert!(message.contains("ticks redone"), "{message}");
    assert!(message.contains("→"), "no shard moved: {message}");
    // The topology places nothing on it any more.
    let topology = live
        .cluster
        .get_json(&format!("{}/topology", live.control))
        .await;
    let placed_on_lost = topology["placement"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["instance_id"] == lost.as_str());
    assert!(!placed_on_lost, "{topology}");
}

#[tokio::test]
async fn two_backends_killed_at_once_are_recovered() {
    let live = Live::start(4, &[], &[]).await;
    live.start_colony().await;
    let target = 3000;
    run_until(&live, target, random_in(150, 1500)).await;
    live.cluster.backends[0].signal("KILL");
    live.cluster.backends[2].signal("KILL");
    live.finishes_equal(target).await;
    let alerts = live.alerts().await;
    for lost in [&live.ids[0], &live.ids[2]] {
        assert!(alert_about(&alerts, lost).is_some(), "{lost}: {alerts}");
    }
}

#[tokio::test]
async fn a_backend_killed_while_recovering_is_recovered_too() {
    // The coordinator holds each re-placement open for a second, so the second kill lands
    // while GET /colony shows `recovering`.
    let live = Live::start(4, &["--recovery-hold-open", "1500ms"], &[]).await;
    live.start_colony().await;
    let target = 3000;
    run_until(&live, target, random_in(150, 1500)).await;
    live.cluster.backends[1].signal("KILL");
    live.until(RECOVERY, "recovering", |c| c["state"] == "recovering")
        .await;
    live.cluster.backends[3].signal("KILL");
    live.finishes_equal(target).await;
    let alerts = live.alerts().await;
    for lost in [&live.ids[1], &live.ids[3]] {
        assert!(alert_about(&alerts, lost).is_some(), "{lost}: {alerts}");
    }
}

#[tokio::test]
async fn a_backend_frozen_past_the_halo_timeout_cannot_write_into_the_new_placement() {
    let live = Live::start(4, &[], &["--halo-timeout", "500ms"]).await;
    live.start_colony().await;
    let target = 3000;
    run_until(&live, target, random_in(150, 1500)).await;
    let before = live.colony().await;
    {
        let frozen = Stopped::stop(&live.cluster.backends[2]);
        // Its neighbours wait past the halo timeout, the coordinator gives it up and
        // places its shards elsewhere.
        live.until(RECOVERY, "a new placement without it", |c| {
            c["epoch"].as_u64() > before["epoch"].as_u64() && c["state"] != "recovering"
        })
        .await;
        drop(frozen);
    }
    // Woken up, it still believes in the old placement: whatever it sends is refused, and
    // the colony ends as an uninterrupted run would.
    live.finishes_equal(target).await;
    let alerts = live.alerts().await;
    let alert = alert_about(&alerts, &live.ids[2]);
    assert!(
        alert.is_some_and(|a| a["kind"] == "backend_lost")
            || alerts["resolved"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["node_id"] == live.ids[2].as_str() && a["kind"] == "backend_lost"),
        "{alerts}"
    );
}

#[tokio::test]
async fn a_restarted_coordinator_takes_the_colony_over_and_it_finishes_equal() {
    let mut live = Live::start(4, &[], &[]).await;
    let topology = live.start_colony().await;
    let target = 5000;
    run_until(&live, target, random_in(150, 2000)).await;
    let old = live.cluster.coordinator_address().await;
    live.cluster.coordinator.as_ref().unwrap().signal("KILL");
    // The backends keep their shards and run on (until their bound, without commits).
    live.cluster.start_coordinator(&[]);
    let restarted = tokio::time::Instant::now();
    let address = eventually(DEADLINE, "the new coordinator registered", || async {
        let a = live.cluster.coordinator_address().await;
        (a != old).then_some(a)
    })
    .await;
    live.control = control_url(&address);
    let adopted = live
        .until(DEADLINE, "the colony taken over", |c| {
            c["colony_id"] == topology["colony_id"] && c["state"] != "recovering"
        })
        .await;
    eprintln!(
        "taken over {:?} after the restart: {adopted}",
        restarted.elapsed()
    );
    assert_ne!(adopted["state"], "failed", "{adopted}");
    // Same colony, same topology, and the run goes on to its target.
    let now = live
        .cluster
        .get_json(&format!("{}/topology", live.control))
        .await;
    assert_eq!(now["placement"], topology["placement"], "{now}");
    live.finishes_equal(target).await;
}

#[tokio::test]
async fn a_backend_that_comes_back_gets_shards_again_at_a_rebalance() {
    let mut live = Live::start(4, &["--stale-after", "300ms", "--down-after", "1s"], &[]).await;
    live.start_colony().await;
    let target = 20_000;
    run_until(&live, target, random_in(150, 1500)).await;
    let line = live.cluster.backends[1].wait_for("node listening").await;
    let ports: Vec<String> = ["internal", "http", "mgmt"]
        .iter()
        .map(|k| field(&line, k).rsplit(':').next().unwrap().to_owned())
        .collect();
    live.cluster.backends[1].signal("KILL");
    let recovered = live
        .until(RECOVERY, "recovered without it", |c| {
            c["epoch"].as_u64().is_some_and(|e| e >= 1) && c["state"] != "recovering"
        })
        .await;
    assert_eq!(recovered["backends"], 3, "{recovered}");
    let gone = live.ids[1].clone();
    eventually(DEADLINE, "the lost backend is DOWN", || async {
        let c = live.cluster.component(&gone).await?;
        (c["status"] == "DOWN").then_some(())
    })
    .await;
    // It comes back: same ports, so the same instance id, ACTIVE again.
    live.cluster.start_backend(&[
        "--heartbeat-interval",
        "100ms",
        "--internal-port",
        &ports[0],
        "--http-port",
        &ports[1],
        "--mgmt-port",
        &ports[2],
    ]);
    let back = live.cluster.backend_identity(4).await.0;
    assert_eq!(back, live.ids[1]);
    eventually(DEADLINE, "it is ACTIVE again", || async {
        let c = live.cluster.component(&back).await?;
        (c["status"] == "ACTIVE").then_some(())
    })
    .await;
    let (status, answer) = live.post("/colony/rebalance", json!({})).await;
    assert_eq!(status, 200, "{answer}");
    assert_ne!(answer["state"], "failed", "{answer}");
    assert!(
        answer["epoch"].as_u64() > recovered["epoch"].as_u64(),
        "{answer}"
    );
    // Every backend holds shards again, the returned one included.
    let topology = live
        .cluster
        .get_json(&format!("{}/topology", live.control))
        .await;
    let placement = topology["placement"].as_array().unwrap();
    for id in &live.ids {
        assert!(
            placement.iter().any(|p| p["instance_id"] == id.as_str()),
            "{id} holds nothing: {topology}"
        );
    }
    live.finishes_equal(target).await;
}

/// Stops the coordinator (SIGSTOP) for `pause`, then lets it go on.
async fn stop_coordinator_for(live: &Live, pause: Duration) {
    let _stopped = Stopped::stop(live.cluster.coordinator.as_ref().unwrap());
    // This sleep is the scenario (a coordinator frozen for a while), not a proof.
    tokio::time::sleep(pause).await;
}

/// Nothing failed, nobody was blamed, and the colony is still in placement `epoch`.
async fn nobody_blamed(live: &Live, epoch: &Value) {
    let now = live.colony().await;
    assert_ne!(now["state"], "failed", "{now}");
    assert_ne!(now["state"], "recovering", "{now}");
    assert_eq!(&now["epoch"], epoch, "{now}");
    let alerts = live.alerts().await;
    for kind in ["colony_failed", "backend_lost", "node_down"] {
        let blamed: Vec<&Value> = alerts["open"]
            .as_array()
            .unwrap()
            .iter()
            .chain(alerts["resolved"].as_array().unwrap())
            .filter(|a| a["kind"] == kind)
            .collect();
        assert!(blamed.is_empty(), "{kind}: {blamed:?}");
    }
}

#[tokio::test]
async fn a_coordinator_stopped_for_six_seconds_blames_nobody() {
    let live = Live::start(4, &[], &[]).await;
    live.start_colony().await;
    let (status, _) = live.post("/colony/run", json!({"ticks": 10_000_000})).await;
    assert_eq!(status, 200);
    live.until(DEADLINE, "the run under way", |c| {
        c["front_tick"].as_u64().is_some_and(|t| t >= 300)
    })
    .await;
    // Paused: the backends idle, and their report long-polls answer into a frozen socket.
    let (status, paused) = live.post("/colony/pause", json!({})).await;
    assert_eq!(status, 200, "{paused}");
    assert_eq!(paused["state"], "paused", "{paused}");
    let epoch = paused["epoch"].clone();
    stop_coordinator_for(&live, Duration::from_secs(6)).await;
    let still = live.colony().await;
    assert_eq!(still["state"], "paused", "{still}");
    assert_eq!(still["tick"], paused["tick"], "{still}");
    // One more tick needs fresh reports from every backend: by the time it is consistent,
    // every reporter has woken up and judged the silence.
    let at = paused["tick"].as_u64().unwrap();
    let (status, one) = live
        .post("/colony/run", json!({"ticks": 1, "wait": true}))
        .await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["tick"], at + 1, "{one}");
    nobody_blamed(&live, &epoch).await;

    // Mid-run: the backends run on without commits until their bound, then wait.
    let target = at + 1 + 6000;
    let (status, _) = live.post("/colony/run", json!({"ticks": 6000})).await;
    assert_eq!(status, 200);
    live.until(DEADLINE, "running", |c| {
        c["front_tick"].as_u64().is_some_and(|t| t > at + 1)
    })
    .await;
    stop_coordinator_for(&live, Duration::from_secs(6)).await;
    let woke = live.colony().await;
    live.until(DEADLINE, "fresh progress after waking", |c| {
        c["tick"].as_u64() > woke["tick"].as_u64() || c["tick"] == target
    })
    .await;
    nobody_blamed(&live, &epoch).await;
    live.finishes_equal(target).await;
    nobody_blamed(&live, &epoch).await;
}

#[tokio::test]
async fn losing_every_copy_of_a_shard_fails_the_run_and_every_backend_stops() {
    let live = Live::start(4, &[], &[]).await;
    live.start_colony().await;
    let (status, _) = live.post("/colony/run", json!({"ticks": 10_000_000})).await;
    assert_eq!(status, 200);
    // Past a consistent checkpoint, so tick 0 (which needs no copy) is not the way back.
    live.until(DEADLINE, "a checkpoint", |c| {
        c["tick"].as_u64().is_some_and(|t| t >= 100)
    })
    .await;
    // The owner of the first backend's shards and both holders of their replicas.
    for i in 0..3 {
        live.cluster.backends[i].signal("KILL");
    }
    let failed = live
        .until(RECOVERY, "the run failed", |c| c["state"] == "failed")
        .await;
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("no copy of shard"), "{error}");
    // The failure is an alert, and further runs are refused with the reason.
    let alerts = live.alerts().await;
    assert!(
        alerts["open"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "colony_failed"),
        "{alerts}"
    );
    let (status, answer) = live.post("/colony/run", json!({"ticks": 1})).await;
    assert_eq!(status, 409, "{answer}");
    // The survivor was told to stop: it dropped the colony, and its shards no longer move.
    let survivor = data_address(&live, 3);
    let secret = shared::secret::ClusterSecret::from_file(
        &live.cluster.dir.path().join("output/cluster.key"),
    )
    .unwrap();
    eventually(DEADLINE, "the survivor dropped the colony", || async {
        let mut client = dataplane::Client::connect(&survivor).await.ok()?;
        client.authenticate("tester", &secret).await.ok()?;
        match client.request(&codec::Message::Describe).await.ok()? {
            codec::Message::Described { colony: None } => Some(()),
            _ => None,
        }
    })
    .await;
    let ticks = shard_ticks(&survivor).await;
    assert!(!ticks.is_empty());
    assert_eq!(shard_ticks(&survivor).await, ticks);
}

/// Backend `index`'s data-plane address, from its log.
fn data_address(live: &Live, index: usize) -> String {
    let line = live.cluster.backends[index]
        .seen
        .iter()
        .find(|l| l.contains("node listening"))
        .cloned()
        .unwrap();
    field(&line, "internal")
}

/// The ticks of the shards a backend holds, from its data plane's `SHARDS`.
async fn shard_ticks(address: &str) -> Vec<u64> {
    let mut client = LineClient::connect(address.parse().unwrap()).await;
    client.send(b"{\"type\":\"shards\"}\n").await;
    let answer = client.json().await;
    answer["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["tick"].as_u64().unwrap())
        .collect()
}
