//! Ticks across real backends: every run equals the single-process reference bit for bit,
//! whatever the number of backends, the world's shape and the rule; state-changing frames
//! need authentication; a colony whose backends are all killed mid-run fails visibly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use codec::{HaloEdge, Message};
use common::*;
use dataplane::Client;
use serde_json::{json, Value};
use shared::sim::{run_reference, WorldParams};

struct Live {
    cluster: Cluster,
    control: String,
}

impl Live {
    async fn start(backends: usize, coordinator_flags: &[&str]) -> Live {
        let mut cluster = Cluster::new();
        cluster.start_coordinator(coordinator_flags);
        for _ in 0..backends {
            cluster.start_backend(&["--heartbeat-interval", "100ms"]);
        }
        let a = cluster.coordinator_address().await;
        let control = format!("http://{}:{}", a["ip"].as_str().unwrap(), a["http_port"]);
        let live = Live { cluster, control };
        eventually(DEADLINE, "backends ACTIVE", || async {
            let h = live.cluster.health().await;
            let n = h["components"]
                .as_array()?
                .iter()
                .filter(|c| c["type"] == "backend" && c["status"] == "ACTIVE")
                .count();
            (n == backends).then_some(())
        })
        .await;
        live
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
        self.cluster
            .get_json(&format!("{}/colony", self.control))
            .await
    }
}

/// The colony-start body as kernel parameters (same field names and defaults).
fn params(world: &Value) -> WorldParams {
    serde_json::from_value(world.clone()).unwrap()
}

/// Runs 0, 1, 2 and 100 ticks of `world` on `live` and checks each against the reference.
async fn check_world(live: &Live, world: Value) {
    let mut start = world.clone();
    start["restart"] = json!(true);
    let (status, body) = live.post("/colony-start", start).await;
    assert_eq!(status, 200, "{body}");
    let p = params(&world);
    let mut done = 0;
    for total in [0u64, 1, 2, 100] {
        let (status, answer) = live
            .post("/colony/run", json!({"ticks": total - done, "wait": true}))
            .await;
        assert_eq!(status, 200, "{answer}");
        done = total;
        let expected = run_reference(&p, total).unwrap();
        let label = format!("{world} after {total} ticks");
        assert_eq!(answer["state"], "idle", "{label}: {answer}");
        assert_eq!(answer["tick"], total, "{label}: {answer}");
        assert_eq!(
            answer["population"], expected.population,
            "{label}: {answer}"
        );
        assert_eq!(
            answer["fingerprint"],
            expected.fingerprint.to_string(),
            "{label}: {answer}"
        );
        // GET /colony says the same thing afterwards.
        let again = live.colony().await;
        assert_eq!(again["fingerprint"], answer["fingerprint"], "{label}");
    }
}

fn worlds() -> Vec<Value> {
    let mut out = Vec::new();
    for rule in ["B3/S23", "B36/S23"] {
        for (ws, hs, sw, sh) in [(8, 5, 250, 250), (3, 2, 97, 61), (1, 1, 64, 48)] {
            out.push(json!({
                "width_in_shards": ws, "height_in_shards": hs,
                "shard_width": sw, "shard_height": sh,
                "rule": rule, "seed": 42, "density": 0.35,
            }));
        }
    }
    // Deeper margins than the default: 13 ticks per exchange, cut by the checkpoints.
    out.push(json!({
        "width_in_shards": 3, "height_in_shards": 2, "shard_width": 97, "shard_height": 61,
        "rule": "B36/S23", "seed": 9, "density": 0.3, "halo_depth": 13,
    }));
    out
}

async fn matches_the_reference_with(backends: usize) {
    let live = Live::start(backends, &[]).await;
    for world in worlds() {
        check_world(&live, world).await;
    }
}

#[tokio::test]
async fn one_backend_matches_the_reference() {
    matches_the_reference_with(1).await;
}

#[tokio::test]
async fn two_backends_match_the_reference() {
    matches_the_reference_with(2).await;
}

#[tokio::test]
async fn three_backends_match_the_reference() {
    matches_the_reference_with(3).await;
}

#[tokio::test]
async fn four_backends_match_the_reference() {
    matches_the_reference_with(4).await;
}

#[tokio::test]
async fn runs_can_be_paused_and_resumed_without_changing_the_result() {
    // Checkpoints every 3 ticks cut every border exchange (12 ticks deep here) to 3 ticks.
    pause_and_resume(&["--checkpoint-every", "3"]).await;
}

#[tokio::test]
async fn a_pause_between_deep_border_exchanges_stops_every_backend_at_one_tick() {
    // Checkpoints every 100 ticks: exchanges cover 12 ticks, and the pause lands inside one.
    pause_and_resume(&["--checkpoint-every", "100"]).await;
}

async fn pause_and_resume(coordinator_flags: &[&str]) {
    let live = Live::start(3, coordinator_flags).await;
    let world = json!({"width_in_shards": 4, "height_in_shards": 3, "shard_width": 40,
                       "shard_height": 30, "rule": "B3/S23", "seed": 7, "density": 0.4});
    let (status, body) = live.post("/colony-start", world.clone()).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = live.post("/colony/run", json!({"ticks": 1_000_000})).await;
    assert_eq!(status, 200);
    // Pause in full flight, not before the first tick.
    eventually(DEADLINE, "the run under way", || async {
        let c = live.colony().await;
        (c["front_tick"].as_u64()? >= 500).then_some(())
    })
    .await;
    let (status, paused) = live.post("/colony/pause", json!({})).await;
    assert_eq!(status, 200, "{paused}");
    assert_eq!(paused["state"], "paused", "{paused}");
    let at = paused["tick"].as_u64().unwrap();
    assert!((500..1_000_000).contains(&at), "paused at tick {at}");
    let expected = run_reference(&params(&world), at).unwrap();
    assert_eq!(paused["population"], expected.population, "{paused}");
    assert_eq!(paused["fingerprint"], expected.fingerprint.to_string());
    // Resume to a round number and compare again.
    let (status, answer) = live
        .post("/colony/run", json!({"ticks": 57, "wait": true}))
        .await;
    assert_eq!(status, 200, "{answer}");
    let expected = run_reference(&params(&world), at + 57).unwrap();
    assert_eq!(answer["tick"], at + 57, "{answer}");
    assert_eq!(answer["fingerprint"], expected.fingerprint.to_string());
    // The picture is the world's size.
    let png = live
        .cluster
        .http
        .get(format!("{}/colony/image.png", live.control))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let width = u32::from_be_bytes([png[16], png[17], png[18], png[19]]);
    let height = u32::from_be_bytes([png[20], png[21], png[22], png[23]]);
    assert_eq!((width, height), (160, 90));
}

#[tokio::test]
async fn state_changing_frames_need_authentication() {
    let live = Live::start(1, &[]).await;
    let (status, topology) = live
        .post(
            "/colony-start",
            json!({"width_in_shards": 2, "height_in_shards": 1, "shard_width": 8, "shard_height": 8}),
        )
        .await;
    assert_eq!(status, 200);
    let colony_id = topology["colony_id"].as_str().unwrap().to_owned();
    let backend = &topology["backends"][0]["address"];
    let addr = format!(
        "{}:{}",
        backend["ip"].as_str().unwrap(),
        backend["internal_port"]
    );

    let mut client = Client::connect(&addr).await.unwrap();
    let halo = Message::Halo {
        colony_id: colony_id.clone(),
        epoch: 0,
        tick: 0,
        edges: vec![HaloEdge {
            x: 0,
            y: 0,
            side: 0,
            width: 8,
            height: 1,
            bits: vec![0xff],
        }],
    };
    for message in [
        halo.clone(),
        Message::Run {
            colony_id: colony_id.clone(),
            epoch: 0,
            until_tick: 5,
            checkpoint_every: 1,
        },
        Message::Pause {
            colony_id: colony_id.clone(),
            epoch: 0,
        },
        Message::Report {
            colony_id: colony_id.clone(),
            epoch: 0,
            after_tick: 0,
            wait_ms: 0,
        },
    ] {
        let answer = client.request(&message).await.unwrap();
        assert!(
            matches!(&answer, Message::Error { code, .. } if code == "unauthenticated"),
            "{answer:?}"
        );
    }
    // The connection is still usable, and the colony did not move.
    assert_eq!(client.request(&Message::Ping).await.unwrap(), Message::Pong);
    assert_eq!(live.colony().await["tick"], 0);

    // The same refusal in the text framing.
    let mut text = LineClient::connect(addr.parse().unwrap()).await;
    text.send(format!("{{\"type\":\"run\",\"colony_id\":\"{colony_id}\",\"until_tick\":9,\"checkpoint_every\":1}}\n").as_bytes())
        .await;
    assert_eq!(text.json().await["code"], "unauthenticated");

    // A forged HELLO: the right protocol, the wrong secret.
    let forged = shared::secret::ClusterSecret::from_bytes(
        b"not-the-cluster-secret-at-all".to_vec(),
        "test",
    )
    .unwrap();
    let mut client = Client::connect(&addr).await.unwrap();
    let err = client.authenticate("intruder", &forged).await.unwrap_err();
    assert!(err.to_string().contains("auth_failed"), "{err}");
    // …and the server closed that connection.
    assert!(client.request(&Message::Ping).await.is_err());
    // An AUTH without a HELLO, and an AUTH with a mac for another nonce.
    let mut client = Client::connect(&addr).await.unwrap();
    let answer = client
        .request(&Message::Auth {
            instance_id: "x".into(),
            key_id: "k".into(),
            mac: "00".into(),
        })
        .await
        .unwrap();
    assert!(
        matches!(&answer, Message::Error { code, .. } if code == "bad_auth"),
        "{answer:?}"
    );

    // With the real secret, the same client is welcome and a halo for a shard it does not
    // hold is refused with a reason, not a panic.
    let secret = shared::secret::ClusterSecret::from_file(
        &live.cluster.dir.path().join("output/cluster.key"),
    )
    .unwrap();
    client.authenticate("tester", &secret).await.unwrap();
    let bad = Message::Halo {
        colony_id,
        epoch: 0,
        tick: 0,
        edges: vec![HaloEdge {
            x: 9,
            y: 9,
            side: 0,
            width: 8,
            height: 1,
            bits: vec![0xff],
        }],
    };
    let answer = client.request(&bad).await.unwrap();
    assert!(
        matches!(&answer, Message::Error { code, .. } if code == "bad_halo"),
        "{answer:?}"
    );
}

/// One lost backend is recovered from (`tests/recovery.rs`); losing them all is the end.
#[tokio::test]
async fn killing_every_backend_mid_run_fails_the_run_visibly() {
    let live = Live::start(3, &["--stale-after", "300ms", "--down-after", "1s"]).await;
    let (status, _) = live
        .post(
            "/colony-start",
            json!({"width_in_shards": 6, "height_in_shards": 2, "shard_width": 64, "shard_height": 64}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = live.post("/colony/run", json!({"ticks": 10_000_000})).await;
    assert_eq!(status, 200);
    eventually(DEADLINE, "running", || async {
        let c = live.colony().await;
        (c["state"] == "running" && c["tick"].as_u64()? > 0).then_some(())
    })
    .await;
    for backend in &live.cluster.backends {
        backend.signal("KILL");
    }
    let killed = Instant::now();
    let failed = eventually(Duration::from_secs(3), "run failed", || async {
        let c = live.colony().await;
        (c["state"] == "failed").then_some(c)
    })
    .await;
    assert!(killed.elapsed() < Duration::from_secs(3));
    assert!(
        failed["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{failed}"
    );
    // The failure is an alert too.
    let alerts = live
        .cluster
        .get_json(&live.cluster.mgmt_url("/alerts").await)
        .await;
    assert!(
        alerts["open"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "colony_failed"),
        "{alerts}"
    );
    // Further runs are refused with the reason until a restart.
    let (status, answer) = live.post("/colony/run", json!({"ticks": 1})).await;
    assert_eq!(status, 409, "{answer}");
}

/// Population and fingerprint (DESIGN §6) of `cells` on a torus `width` × `height`, after
/// shifting every cell by `(dx, dy)`.
fn figures(cells: &[[u64; 2]], (dx, dy): (u64, u64), width: u64, height: u64) -> (u64, String) {
    let fingerprint = cells.iter().fold(0u64, |sum, [x, y]| {
        let (gx, gy) = ((x + dx) % width, (y + dy) % height);
        sum.wrapping_add(shared::sim::splitmix64(gy * width + gx))
    });
    (cells.len() as u64, fingerprint.to_string())
}

/// Starts `cells` alone (density 0) on a 4 × 4 world of 8 × 8 shards, which `live`'s four
/// backends hold as 2 × 2 blocks, so every pattern below straddles backends. Backends
/// exchange borders every `depth` ticks.
async fn start_pattern(live: &Live, cells: &[[u64; 2]], depth: u32) {
    let (status, body) = live
        .post(
            "/colony-start",
            json!({"width_in_shards": 4, "height_in_shards": 4, "shard_width": 8,
                   "shard_height": 8, "density": 0.0, "cells": cells, "restart": true,
                   "halo_depth": depth}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

async fn run_ticks(live: &Live, ticks: u64) -> Value {
    let (status, answer) = live
        .post("/colony/run", json!({"ticks": ticks, "wait": true}))
        .await;
    assert_eq!(status, 200, "{answer}");
    answer
}

#[tokio::test]
async fn known_patterns_cross_shard_and_backend_boundaries() {
    // Checkpoints every 10 ticks: with depth 8 a long run goes in batches of 8 and 2.
    let live = Live::start(4, &["--checkpoint-every", "10"]).await;
    let side = 32;

    // A glider heading south-east, its 3×3 box just inside shard (0, 0): every 4 ticks it is
    // itself again one cell further, so it crosses shard corners and edges, passes from one
    // backend's block to the next, and is home again after 4 × 32 ticks.
    let glider = [[6, 5], [7, 6], [5, 7], [6, 7], [7, 7]];
    for depth in [1, 3, 8] {
        start_pattern(&live, &glider, depth).await;
        let mut moved = 0;
        for moves in [1, 1, 1, 1, 3, 9, 16] {
            let answer = run_ticks(&live, 4 * moves).await;
            moved += moves;
            let (population, fingerprint) = figures(&glider, (moved, moved), side, side);
            let label = format!("glider after {moved} moves with depth {depth}");
            assert_eq!(answer["tick"], 4 * moved, "{label}: {answer}");
            assert_eq!(answer["halo_depth"], depth, "{label}: {answer}");
            assert_eq!(answer["population"], population, "{label}: {answer}");
            assert_eq!(answer["fingerprint"], fingerprint, "{label}: {answer}");
        }
        assert_eq!(moved, side, "the glider went once around the torus");
    }

    // A blinker across the border of two backends' blocks (x = 15 | 16): period 2.
    let horizontal = [[15, 28], [16, 28], [17, 28]];
    let vertical = [[16, 27], [16, 28], [16, 29]];
    start_pattern(&live, &horizontal, 8).await;
    for t in 1..=6u64 {
        let answer = run_ticks(&live, 1).await;
        let phase = if t % 2 == 1 { &vertical } else { &horizontal };
        assert_eq!(
            (
                answer["population"].as_u64().unwrap(),
                answer["fingerprint"].as_str().unwrap().to_owned()
            ),
            figures(phase, (0, 0), side, side),
            "blinker at tick {t}: {answer}"
        );
    }

    // A block on the point where all four backends' blocks meet: still.
    let block = [[15, 15], [16, 15], [15, 16], [16, 16]];
    start_pattern(&live, &block, 8).await;
    let answer = run_ticks(&live, 25).await;
    assert_eq!(answer["tick"], 25, "{answer}");
    let (population, fingerprint) = figures(&block, (0, 0), side, side);
    assert_eq!(answer["population"], population, "{answer}");
    assert_eq!(answer["fingerprint"], fingerprint, "{answer}");

    // Each block of four shards belongs to another backend, as the comments above assume.
    let topology = live
        .cluster
        .get_json(&format!("{}/topology", live.control))
        .await;
    let owner = |x: u64, y: u64| {
        topology["placement"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["shard"]["x"] == x && p["shard"]["y"] == y)
            .map(|p| p["instance_id"].as_str().unwrap().to_owned())
            .unwrap()
    };
    let corners = [owner(1, 1), owner(2, 1), owner(1, 2), owner(2, 2)];
    for (i, a) in corners.iter().enumerate() {
        for b in &corners[i + 1..] {
            assert_ne!(
                a, b,
                "the four shards around the centre share a backend: {topology}"
            );
        }
    }
}

#[tokio::test]
async fn concurrent_runs_and_pauses_end_at_one_consistent_tick() {
    let live = Live::start(3, &[]).await;
    let world = json!({"width_in_shards": 4, "height_in_shards": 3, "shard_width": 40,
                       "shard_height": 30, "rule": "B3/S23", "seed": 11, "density": 0.4});
    let (status, body) = live.post("/colony-start", world.clone()).await;
    assert_eq!(status, 200, "{body}");
    // Runs and pauses racing each other: every backend must see them in the same order, or
    // they would cut their border exchanges differently and wait on each other forever.
    let calls = (0..12).map(|i| {
        let live = &live;
        async move {
            if i % 4 == 3 {
                live.post("/colony/pause", json!({})).await
            } else {
                live.post("/colony/run", json!({"ticks": 37})).await
            }
        }
    });
    for (status, answer) in futures::future::join_all(calls).await {
        assert_eq!(status, 200, "{answer}");
    }
    let (status, answer) = live
        .post("/colony/run", json!({"ticks": 5, "wait": true}))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["state"], "idle", "{answer}");
    let at = answer["tick"].as_u64().unwrap();
    let expected = run_reference(&params(&world), at).unwrap();
    assert_eq!(answer["population"], expected.population, "{answer}");
    assert_eq!(
        answer["fingerprint"],
        expected.fingerprint.to_string(),
        "{answer}"
    );
}
