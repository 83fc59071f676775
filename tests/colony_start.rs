//! Colony start over real processes (issue 4): the coordinator's `GET /topology` and
//! `POST /colony-start` (placement, idempotency, 409/503/400), the backends' shard views, and
//! `POST /init-colony-shard` driven by hand with tokens and requests signed here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use shared::secret::ClusterSecret;
use shared::sim::ShardGrid;
use shared::token::{unix_now, InitToken, TokenIssuer};
use shared::topology::{BackendEntry, ClusterTopology, Dimensions, ShardCoord};
use shared::NodeAddress;

/// Small worlds keep every test fast: 4×3 shards of 16×16 cells.
fn small_world() -> Value {
    json!({"width_in_shards": 4, "height_in_shards": 3, "shard_width": 16, "shard_height": 16})
}

/// One running backend, as it registered itself.
struct Backend {
    id: String,
    address: NodeAddress,
}

impl Backend {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address.to_http_address())
    }

    fn data(&self) -> SocketAddr {
        self.address.to_internal_address().parse().unwrap()
    }
}

/// A coordinator and `n` backends, all registered and listening.
struct Colony {
    cluster: Cluster,
    coordinator: NodeAddress,
    backends: Vec<Backend>,
}

impl Colony {
    async fn start(n: usize) -> Colony {
        let mut cluster = Cluster::new();
        cluster.start_coordinator(&[]);
        // The coordinator creates the cluster key before it binds, so once it is registered the
        // backends find the key.
        let coordinator: NodeAddress =
            serde_json::from_value(cluster.coordinator_address().await).unwrap();
        for _ in 0..n {
            cluster.start_backend(&[]);
        }
        let mut backends = Vec::new();
        for i in 0..n {
            let (id, _) = cluster.backend_identity(i).await;
            let address = registered_backend(&cluster, &id).await;
            backends.push(Backend { id, address });
        }
        Colony {
            cluster,
            coordinator,
            backends,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.coordinator.to_http_address())
    }

    fn backend(&self, id: &str) -> &Backend {
        self.backends.iter().find(|b| b.id == id).unwrap()
    }

    async fn topology(&self) -> (StatusCode, Value) {
        get(&self.cluster.http, &self.url("/topology")).await
    }

    /// `POST /colony-start` with an optional key and body; the status and the raw answer.
    async fn colony_start(&self, key: Option<&str>, body: Option<&Value>) -> (StatusCode, String) {
        let mut request = self.cluster.http.post(self.url("/colony-start"));
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        (response.status(), response.text().await.unwrap())
    }

    /// Starts a colony that must start, and returns its topology.
    async fn start_colony(&self, key: Option<&str>, body: &Value) -> ClusterTopology {
        let (status, text) = self.colony_start(key, Some(body)).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not a topology ({e}): {text}"))
    }

    fn secret(&self) -> ClusterSecret {
        ClusterSecret::from_file(&self.cluster.dir.path().join("output/cluster.key")).unwrap()
    }

    fn issuer(&self) -> TokenIssuer {
        TokenIssuer::new(&self.secret())
    }
}

/// The address `id` registered in the file registry, once it is there.
async fn registered_backend(cluster: &Cluster, id: &str) -> NodeAddress {
    let path = cluster.ssm_dir().join(format!("backends/{id}.json"));
    eventually(DEADLINE, &format!("{id} registered"), || {
        let path = path.clone();
        async move {
            let text = tokio::fs::read_to_string(&path).await.ok()?;
            serde_json::from_str(&text).ok()
        }
    })
    .await
}

async fn get(http: &reqwest::Client, url: &str) -> (StatusCode, Value) {
    let response = http.get(url).send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, value)
}

/// `POST /init-colony-shard` on `backend`, signed with the cluster secret as the coordinator
/// signs it (the init token inside is the test's to choose).
async fn init(colony: &Colony, backend: &Backend, body: &Value) -> (StatusCode, Value) {
    let response = signed_post(
        &colony.cluster.http,
        &colony.secret(),
        &backend.url("/init-colony-shard"),
        body.to_string(),
    )
    .send()
    .await
    .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, value)
}

fn init_body(shard: ShardCoord, topology: Option<&ClusterTopology>, token: &InitToken) -> Value {
    let mut body = json!({"shard": shard, "token": token});
    if let Some(topology) = topology {
        body["topology"] = serde_json::to_value(topology).unwrap();
    }
    body
}

/// Everything a backend shows about its shards: the list and every view.
async fn backend_state(http: &reqwest::Client, backend: &Backend) -> (Value, Vec<Value>) {
    let (status, list) = get(http, &backend.url("/shards")).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let mut views = Vec::new();
    for s in list["shards"].as_array().unwrap() {
        let (status, view) = get(
            http,
            &backend.url(&format!("/shards/{}/{}", s["x"], s["y"])),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{view}");
        views.push(view);
    }
    (list, views)
}

/// The data plane's answer to one text command line (a single JSON line).
async fn data_plane_json(addr: SocketAddr, command: &str) -> Value {
    let mut client = LineClient::connect(addr).await;
    client.send(format!("{command}\n").as_bytes()).await;
    client.json().await
}

/// The placement as `shard -> instance id`, from the topology's JSON form.
fn placement(topology: &ClusterTopology) -> BTreeMap<(u32, u32), String> {
    let json = serde_json::to_value(topology).unwrap();
    let mut out = BTreeMap::new();
    for p in json["placement"].as_array().unwrap() {
        let key = (
            p["shard"]["x"].as_u64().unwrap() as u32,
            p["shard"]["y"].as_u64().unwrap() as u32,
        );
        let previous = out.insert(key, p["instance_id"].as_str().unwrap().to_owned());
        assert!(previous.is_none(), "shard {key:?} placed twice: {json}");
    }
    out
}

/// A port nothing listens on (bound, then released).
fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Registers `id` at `address` in the file registry as a node would (temp file + rename),
/// without any process behind it.
fn write_stale_backend(cluster: &Cluster, id: &str, address: &NodeAddress) {
    let dir = cluster.ssm_dir().join("backends");
    std::fs::create_dir_all(&dir).unwrap();
    let tmp = cluster.ssm_dir().join(format!(".{id}.tmp"));
    std::fs::write(&tmp, serde_json::to_string(address).unwrap()).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{id}.json"))).unwrap();
}

fn stale_address() -> NodeAddress {
    NodeAddress::new(
        "127.0.0.1".parse().unwrap(),
        dead_port(),
        dead_port(),
        dead_port(),
    )
}

/// A topology for a colony the coordinator never started, over `backends`.
fn hand_made_topology(
    colony_id: &str,
    coordinator: NodeAddress,
    backends: Vec<BackendEntry>,
    seed: u64,
) -> ClusterTopology {
    let dims = Dimensions::new(2, 2, 8, 8).unwrap();
    let topology = ClusterTopology::place(colony_id, coordinator, backends, dims).unwrap();
    let mut simulation = topology.simulation().clone();
    simulation.seed = seed;
    topology.with_simulation(simulation).unwrap()
}

#[tokio::test]
async fn every_shard_is_placed_once_and_served_by_its_backend() {
    let colony = Colony::start(3).await;
    let http = &colony.cluster.http;

    // Nothing exists before a start.
    let (status, body) = colony.topology().await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, json!({"error": "topology not initialized"}));
    for b in &colony.backends {
        let (status, list) = get(http, &b.url("/shards")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(list, json!({"colony_id": null, "shards": []}), "{}", b.id);
        let (status, _) = get(http, &b.url("/shards/0/0")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let shards = data_plane_json(b.data(), "SHARDS").await;
        assert_eq!(shards["colony_id"], Value::Null, "{shards}");
        assert_eq!(shards["shards"], json!([]), "{shards}");
    }

    let topology = colony.start_colony(None, &small_world()).await;
    let (status, served) = colony.topology().await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(served, serde_json::to_value(&topology).unwrap());
    assert_eq!(topology.coordinator(), &colony.coordinator);
    assert_eq!(
        (
            topology.width_in_shards(),
            topology.height_in_shards(),
            topology.shard_width(),
            topology.shard_height()
        ),
        (4, 3, 16, 16)
    );

    // The topology lists exactly the live backends, at their registered addresses.
    let live: BTreeMap<&str, NodeAddress> = colony
        .backends
        .iter()
        .map(|b| (b.id.as_str(), b.address))
        .collect();
    let listed: BTreeMap<&str, NodeAddress> = topology
        .backends()
        .iter()
        .map(|b| (b.instance_id.as_str(), b.address))
        .collect();
    assert_eq!(listed, live);

    // Every shard exactly once, on a live backend, balanced to within one shard.
    let placed = placement(&topology);
    let all: BTreeSet<(u32, u32)> = (0..3).flat_map(|y| (0..4).map(move |x| (x, y))).collect();
    assert_eq!(placed.keys().copied().collect::<BTreeSet<_>>(), all);
    assert!(placed.values().all(|id| live.contains_key(id.as_str())));
    let counts: Vec<usize> = colony
        .backends
        .iter()
        .map(|b| placed.values().filter(|id| **id == b.id).count())
        .collect();
    assert_eq!(counts.iter().sum::<usize>(), 12);
    assert!(
        counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1,
        "{counts:?}"
    );

    let params = topology.world_params();
    for b in &colony.backends {
        let mine: BTreeSet<(u32, u32)> = placed
            .iter()
            .filter(|(_, id)| **id == b.id)
            .map(|(s, _)| *s)
            .collect();
        // The list names the colony and exactly this backend's shards, at tick 0.
        let (_, list) = get(http, &b.url("/shards")).await;
        assert_eq!(list["colony_id"], topology.colony_id(), "{list}");
        let held: BTreeSet<(u32, u32)> = list["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                assert_eq!(s["tick"], 0, "{s}");
                (
                    s["x"].as_u64().unwrap() as u32,
                    s["y"].as_u64().unwrap() as u32,
                )
            })
            .collect();
        assert_eq!(held, mine, "{}", b.id);
        let shards = data_plane_json(b.data(), "SHARDS").await;
        assert_eq!(shards["colony_id"], topology.colony_id(), "{shards}");
        assert_eq!(shards["shards"], list["shards"], "{shards}");

        for &(x, y) in &all {
            let (status, view) = get(http, &b.url(&format!("/shards/{x}/{y}"))).await;
            if !mine.contains(&(x, y)) {
                assert_eq!(status, StatusCode::NOT_FOUND, "{} ({x},{y}): {view}", b.id);
                assert!(
                    view["error"].as_str().unwrap().contains("not held"),
                    "{view}"
                );
                continue;
            }
            assert_eq!(status, StatusCode::OK, "{view}");
            let expected = ShardGrid::initial(&params, x, y).unwrap();
            let rows: Vec<String> = view["rows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap().to_owned())
                .collect();
            assert_eq!(rows.len(), 16);
            for row in &rows {
                assert_eq!(row.len(), 16, "{row}");
                assert!(row.chars().all(|c| c == '.' || c == '#'), "{row}");
            }
            let live_cells = rows.iter().flat_map(|r| r.chars()).filter(|&c| c == '#');
            assert_eq!(live_cells.count() as u64, expected.population());
            assert_eq!(view["population"], expected.population());
            assert_eq!(rows, expected.rows().collect::<Vec<_>>(), "({x},{y})");
            assert_eq!(
                (
                    &view["colony_id"],
                    &view["x"],
                    &view["y"],
                    &view["tick"],
                    &view["width"],
                    &view["height"]
                ),
                (
                    &json!(topology.colony_id()),
                    &json!(x),
                    &json!(y),
                    &json!(0),
                    &json!(16),
                    &json!(16)
                )
            );
        }
    }
    // Density 0.35 over 192×48 cells: some life, not all.
    let total: u64 = all
        .iter()
        .map(|&(x, y)| ShardGrid::initial(&params, x, y).unwrap().population())
        .sum();
    assert!(total > 0 && total < 192 * 48, "{total}");

    // The data plane shows the same cells: a header line giving the row count, then the rows.
    let ((x, y), owner) = placed.iter().next().unwrap();
    let owner = colony.backend(owner);
    let expected = ShardGrid::initial(&params, *x, *y).unwrap();
    let mut client = LineClient::connect(owner.data()).await;
    client.send(format!("SHARD {x} {y}\n").as_bytes()).await;
    let header = client.line().await.unwrap();
    assert_eq!(
        header,
        format!(
            "SHARD {x} {y} rows=16 width=16 tick=0 population={} colony={}",
            expected.population(),
            topology.colony_id()
        )
    );
    for row in expected.rows() {
        assert_eq!(client.line().await.unwrap(), row);
    }
}

#[tokio::test]
async fn idempotency_key_conflict_and_restart() {
    let colony = Colony::start(2).await;
    let http = &colony.cluster.http;

    let (status, first) = colony
        .colony_start(Some("start-1"), Some(&small_world()))
        .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let topology: ClusterTopology = serde_json::from_str(&first).unwrap();
    let colony_id = topology.colony_id().to_owned();

    // The same key: the same answer, byte for byte, and no second colony.
    let (status, again) = colony
        .colony_start(Some("start-1"), Some(&small_world()))
        .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again, first);
    let (_, served) = colony.topology().await;
    assert_eq!(served["colony_id"], colony_id.as_str());

    // Another key, or none: 409 naming the running colony.
    for key in [Some("start-2"), None] {
        let (status, text) = colony.colony_start(key, Some(&small_world())).await;
        assert_eq!(status, StatusCode::CONFLICT, "{key:?}: {text}");
        let answer: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(answer["colony_id"], colony_id.as_str(), "{answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains(&colony_id), "{error}");
        assert!(error.contains("restart"), "{error}");
    }
    for b in &colony.backends {
        let (_, list) = get(http, &b.url("/shards")).await;
        assert_eq!(list["colony_id"], colony_id.as_str());
    }

    // Restart, with other dimensions: a new colony, and every backend drops the old one.
    let restart = json!({"width_in_shards": 3, "height_in_shards": 2, "shard_width": 8,
        "shard_height": 8, "seed": 7, "restart": true});
    let restarted = colony.start_colony(Some("start-3"), &restart).await;
    let new_id = restarted.colony_id().to_owned();
    assert_ne!(new_id, colony_id);
    let (_, served) = colony.topology().await;
    assert_eq!(served, serde_json::to_value(&restarted).unwrap());
    assert_eq!(restarted.simulation().seed, 7);
    let placed = placement(&restarted);
    assert_eq!(placed.len(), 6);
    let params = restarted.world_params();
    for b in &colony.backends {
        let (list, views) = backend_state(http, b).await;
        assert_eq!(list["colony_id"], new_id.as_str(), "{list}");
        let held: BTreeSet<(u64, u64)> = list["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["x"].as_u64().unwrap(), s["y"].as_u64().unwrap()))
            .collect();
        let mine: BTreeSet<(u64, u64)> = placed
            .iter()
            .filter(|(_, id)| **id == b.id)
            .map(|((x, y), _)| (u64::from(*x), u64::from(*y)))
            .collect();
        assert_eq!(held, mine, "{}: {list}", b.id);
        for view in views {
            assert_eq!(view["colony_id"], new_id.as_str());
            assert_eq!((&view["width"], &view["height"]), (&json!(8), &json!(8)));
            let (x, y) = (
                view["x"].as_u64().unwrap() as u32,
                view["y"].as_u64().unwrap() as u32,
            );
            let expected = ShardGrid::initial(&params, x, y).unwrap();
            assert_eq!(view["population"], expected.population());
        }
        // A shard of the old world that is outside the new one is gone.
        let (status, _) = get(http, &b.url("/shards/3/2")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    // The old keys still give their old answers; the restart's key gives the restart's.
    let (status, text) = colony.colony_start(Some("start-1"), None).await;
    assert_eq!((status, text), (StatusCode::OK, first));
    let (status, text) = colony.colony_start(Some("start-3"), Some(&restart)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(text, serde_json::to_string(&restarted).unwrap());

    // The backends cache the new topology: a later init of the same colony says so and uses
    // the cached topology, even if the request carries another one.
    let b = &colony.backends[0];
    let shard = restarted.shards_of(&b.id)[0];
    let token = colony
        .issuer()
        .issue(&b.id, shard, &new_id, Duration::from_secs(60))
        .unwrap();
    let mut other = serde_json::to_value(&restarted).unwrap();
    other["simulation"]["seed"] = json!(8);
    let mut body = init_body(shard, None, &token);
    body["topology"] = other;
    let (status, answer) = init(&colony, b, &body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let expected = ShardGrid::initial(&params, shard.x, shard.y).unwrap();
    assert_eq!(
        answer,
        json!({"status": "ok", "colony_id": new_id, "shard": shard,
            "population": expected.population(),
            "fingerprint": expected.fingerprint(shard.x, shard.y, params.world_width()).to_string(),
            "topology_cached": true})
    );

    // A new colony id replaces the cache: the first init of it reports an uncached topology.
    let third = hand_made_topology(
        "hand-made-colony",
        colony.coordinator,
        restarted.backends().to_vec(),
        99,
    );
    let shard = third.shards_of(&b.id)[0];
    let token = colony
        .issuer()
        .issue(&b.id, shard, third.colony_id(), Duration::from_secs(60))
        .unwrap();
    let (status, answer) = init(&colony, b, &init_body(shard, Some(&third), &token)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["topology_cached"], false, "{answer}");
    let (list, _) = backend_state(http, b).await;
    assert_eq!(list["colony_id"], "hand-made-colony", "{list}");
    assert_eq!(list["shards"].as_array().unwrap().len(), 1, "{list}");
}

#[tokio::test]
async fn a_registered_backend_that_is_not_running_gets_no_shards() {
    let mut colony = Colony::start(4).await;
    // Three kinds of corpse in the registry: a file nobody ever served, a backend killed
    // with -9 (a crash leaves its file behind), and a frozen one whose ports accept
    // connections but never answer.
    write_stale_backend(&colony.cluster, "backend_1", &stale_address());
    colony.cluster.backends[2].signal("KILL");
    colony.cluster.backends[2].child.wait().await.unwrap();
    colony.cluster.backends[3].signal("STOP");
    for id in ["backend_1", &colony.backends[2].id, &colony.backends[3].id] {
        let file = colony.cluster.ssm_dir().join(format!("backends/{id}.json"));
        assert!(file.exists(), "{id} is not registered");
    }

    let topology = colony.start_colony(None, &small_world()).await;
    let listed: BTreeSet<&str> = topology
        .backends()
        .iter()
        .map(|b| b.instance_id.as_str())
        .collect();
    let live: BTreeSet<&str> = colony.backends[..2].iter().map(|b| b.id.as_str()).collect();
    assert_eq!(listed, live);
    let placed = placement(&topology);
    assert_eq!(placed.len(), 12);
    assert!(
        placed.values().all(|id| live.contains(id.as_str())),
        "{placed:?}"
    );
    for b in &colony.backends[..2] {
        let (list, _) = backend_state(&colony.cluster.http, b).await;
        assert_eq!(list["shards"].as_array().unwrap().len(), 6, "{list}");
    }
    // The files are the registry's business, not colony-start's: they stay.
    assert!(colony
        .cluster
        .ssm_dir()
        .join("backends/backend_1.json")
        .exists());
    colony.cluster.backends[3].signal("CONT");
}

#[tokio::test]
async fn only_stale_backends_is_503_with_a_clear_message() {
    let mut cluster = Cluster::new();
    cluster.start_coordinator(&[]);
    let coordinator: NodeAddress =
        serde_json::from_value(cluster.coordinator_address().await).unwrap();
    let url = |path: &str| format!("http://{}{path}", coordinator.to_http_address());

    // No backend registered at all.
    let response = cluster
        .http
        .post(url("/colony-start"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let answer: Value = response.json().await.unwrap();
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("no live backend"),
        "{answer}"
    );

    // Only registered corpses.
    write_stale_backend(&cluster, "backend_1", &stale_address());
    write_stale_backend(&cluster, "backend_2", &stale_address());
    let response = cluster
        .http
        .post(url("/colony-start"))
        .header("Idempotency-Key", "k")
        .json(&small_world())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let answer: Value = response.json().await.unwrap();
    let error = answer["error"].as_str().unwrap();
    assert!(error.contains("no live backend"), "{answer}");
    assert!(error.contains("management port"), "{answer}");
    let (status, body) = get(&cluster.http, &url("/topology")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn bad_bodies_are_400_naming_the_field_and_change_nothing() {
    let colony = Colony::start(1).await;
    let http = &colony.cluster.http;
    let cases: Vec<(String, &str)> = vec![
        (json!({"width_in_shards": 0}).to_string(), "width_in_shards"),
        (
            json!({"height_in_shards": 0}).to_string(),
            "height_in_shards",
        ),
        (json!({"shard_width": 0}).to_string(), "shard_width"),
        (json!({"shard_height": 0}).to_string(), "shard_height"),
        (
            json!({"shard_width": 100000, "shard_height": 100000}).to_string(),
            "shard_width",
        ),
        (
            json!({"width_in_shards": 1000, "height_in_shards": 1000}).to_string(),
            "width_in_shards",
        ),
        (
            json!({"width_in_shards": 256, "height_in_shards": 256,
                "shard_width": 4096, "shard_height": 4096})
            .to_string(),
            "world",
        ),
        (
            json!({"width_in_shards": 5000000000_u64}).to_string(),
            "width_in_shards",
        ),
        (json!({"density": 1.5}).to_string(), "density"),
        (json!({"density": -0.1}).to_string(), "density"),
        (json!({"rule": "B9/S2"}).to_string(), "rule"),
        (json!({"rule": "junk"}).to_string(), "rule"),
        (json!({"rule": ""}).to_string(), "rule"),
        (json!({"seed": "x"}).to_string(), "seed"),
        (json!({"seed": -1}).to_string(), "seed"),
        (json!({"restart": "yes"}).to_string(), "restart"),
        (
            json!({"cells": [[0, 0], [2000, 0]]}).to_string(),
            "cells[1]",
        ),
        (json!({"cells": [[0, 0, 0]]}).to_string(), "cells"),
        (json!({"cells": "glider"}).to_string(), "cells"),
        (json!({"halo_depth": 0}).to_string(), "halo_depth"),
        (json!({"halo_depth": 65}).to_string(), "halo_depth"),
        (
            json!({"shard_width": 8, "halo_depth": 9}).to_string(),
            "halo_depth",
        ),
        (json!({"halo_depth": -1}).to_string(), "halo_depth"),
        (json!({"colour": "red"}).to_string(), "colour"),
        ("[1,2".to_owned(), "colony-start body"),
        ("42".to_owned(), "colony-start body"),
    ];
    for (body, field) in &cases {
        let response = http
            .post(colony.url("/colony-start"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = response.status();
        let answer: Value = response.json().await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(
            error.contains(field),
            "{body}: {error:?} does not name {field}"
        );
    }
    // A bad Idempotency-Key is a bad request too.
    let response = http
        .post(colony.url("/colony-start"))
        .header("Idempotency-Key", "k".repeat(500))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let answer: Value = response.json().await.unwrap();
    assert!(answer["error"]
        .as_str()
        .unwrap()
        .contains("Idempotency-Key"));

    // Nothing started anywhere.
    let (status, body) = colony.topology().await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (_, list) = get(http, &colony.backends[0].url("/shards")).await;
    assert_eq!(list, json!({"colony_id": null, "shards": []}));

    // And a good body still starts the colony afterwards.
    colony.start_colony(None, &small_world()).await;

    // With a colony running, a bad body is still a 400, not a 409 about the running colony.
    let response = http
        .post(colony.url("/colony-start"))
        .json(&json!({"halo_depth": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn bad_tokens_are_refused_with_the_reason_and_change_nothing() {
    let colony = Colony::start(2).await;
    let http = &colony.cluster.http;
    let topology = colony.start_colony(None, &small_world()).await;
    let colony_id = topology.colony_id().to_owned();
    let (a, other) = (&colony.backends[0], &colony.backends[1]);
    let shards = topology.shards_of(&a.id);
    let (shard, shard2) = (shards[0], shards[1]);
    let issuer = colony.issuer();
    let ttl = Duration::from_secs(60);
    let valid = || issuer.issue(&a.id, shard, &colony_id, ttl).unwrap();

    // A colony nobody started, over the same backends: if a refused init were acted on, the
    // backend would switch to it.
    let intruder = hand_made_topology(
        "intruder",
        colony.coordinator,
        topology.backends().to_vec(),
        1,
    );
    let stranger = ClusterSecret::from_bytes(vec![0x5a; 32], "test").unwrap();
    // Another secret that claims our key id: the signature cannot match.
    let impostor = stranger
        .clone()
        .with_key_id(colony.secret().key_id())
        .unwrap();

    // Each defect, for a given colony id, otherwise signed as the coordinator would sign it.
    let defective = |what: &str, colony: &str| -> InitToken {
        match what {
            "forged" => {
                let mut t = issuer.issue(&a.id, shard, colony, ttl).unwrap();
                let last = t.signature.pop().unwrap();
                t.signature.push(if last == '0' { '1' } else { '0' });
                t
            }
            "tampered" => {
                let mut t = issuer.issue(&a.id, shard, colony, ttl).unwrap();
                t.expires_at += 3600;
                t
            }
            "renamed key" => {
                let mut t = issuer.issue(&a.id, shard, colony, ttl).unwrap();
                t.key_id = "not-our-key".into();
                t
            }
            "foreign key" => TokenIssuer::new(&stranger)
                .issue(&a.id, shard, colony, ttl)
                .unwrap(),
            "impostor key" => TokenIssuer::new(&impostor)
                .issue(&a.id, shard, colony, ttl)
                .unwrap(),
            "expired" => issuer
                .issue_at(
                    &a.id,
                    shard,
                    colony,
                    Duration::from_secs(10),
                    unix_now() - 3600,
                )
                .unwrap(),
            "not yet valid" => issuer
                .issue_at(&a.id, shard, colony, ttl, unix_now() + 3600)
                .unwrap(),
            "another instance" => issuer.issue(&other.id, shard, colony, ttl).unwrap(),
            "another shard" => issuer.issue(&a.id, shard2, colony, ttl).unwrap(),
            _ => unreachable!("{what}"),
        }
    };
    let cases: [(&str, u16, &str, &str); 9] = [
        ("forged", 401, "token_forged", "signature"),
        ("tampered", 401, "token_forged", "signature"),
        ("renamed key", 401, "token_unknown_key", "unknown key"),
        ("foreign key", 401, "token_unknown_key", "unknown key"),
        ("impostor key", 401, "token_forged", "signature"),
        ("expired", 401, "token_expired", "expired"),
        ("not yet valid", 401, "token_not_yet_valid", "not valid yet"),
        (
            "another instance",
            403,
            "token_wrong_instance",
            "another instance",
        ),
        ("another shard", 403, "token_wrong_shard", "another shard"),
    ];

    let before = backend_state(http, a).await;
    assert_eq!(before.0["colony_id"], colony_id.as_str());
    for (what, status, code, reason) in cases {
        // For the running colony (with and without its topology, as the coordinator would send
        // it on a first or a later init), and for a new colony with its topology.
        let current = defective(what, &colony_id);
        let new = defective(what, "intruder");
        for (body, token) in [
            (init_body(shard, Some(&topology), &current), &current),
            (init_body(shard, None, &current), &current),
            (init_body(shard, Some(&intruder), &new), &new),
        ] {
            let (got, answer) = init(&colony, a, &body).await;
            assert_eq!(got.as_u16(), status, "{what}: {answer}");
            assert_eq!(answer["code"], code, "{what}: {answer}");
            let error = answer["error"].as_str().unwrap();
            assert!(error.contains(reason), "{what}: {error:?} lacks {reason:?}");
            assert!(!error.contains(&token.signature), "{what}: {error}");
        }
        assert_eq!(backend_state(http, a).await, before, "{what} changed state");
    }
    // A refused token is not spent: one sent to the wrong shard still works for its own.
    let misdirected = issuer.issue(&a.id, shard2, &colony_id, ttl).unwrap();
    let (got, answer) = init(&colony, a, &init_body(shard, None, &misdirected)).await;
    assert_eq!(got, StatusCode::FORBIDDEN, "{answer}");
    let (got, answer) = init(&colony, a, &init_body(shard2, None, &misdirected)).await;
    assert_eq!(got, StatusCode::OK, "{answer}");
    assert_eq!(answer["topology_cached"], true, "{answer}");

    // Replay: the first use is accepted (and rebuilds the shard at tick 0), the second refused.
    let once = valid();
    let (got, answer) = init(&colony, a, &init_body(shard, Some(&topology), &once)).await;
    assert_eq!(got, StatusCode::OK, "{answer}");
    assert_eq!(answer["status"], "ok");
    let after_first = backend_state(http, a).await;
    assert_eq!(after_first, before);
    let (got, answer) = init(&colony, a, &init_body(shard, Some(&topology), &once)).await;
    assert_eq!(got, StatusCode::FORBIDDEN, "{answer}");
    assert_eq!(answer["code"], "token_replayed", "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("already been used"),
        "{answer}"
    );
    assert_eq!(backend_state(http, a).await, before);

    // The other backend saw none of this.
    let (list, _) = backend_state(http, other).await;
    assert_eq!(list["colony_id"], colony_id.as_str());
}

#[tokio::test]
async fn an_authentic_init_without_a_usable_topology_is_the_error_variant() {
    let colony = Colony::start(1).await;
    let http = &colony.cluster.http;
    let topology = colony.start_colony(None, &small_world()).await;
    let b = &colony.backends[0];
    let issuer = colony.issuer();
    let ttl = Duration::from_secs(60);
    let shard = ShardCoord::new(0, 0);
    let before = backend_state(http, b).await;

    let expect_error = |what: &'static str, needle: &'static str| {
        move |(status, answer): (StatusCode, Value)| {
            assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {answer}");
            assert_eq!(answer["status"], "error", "{what}: {answer}");
            assert_eq!(answer.as_object().unwrap().len(), 2, "{what}: {answer}");
            let message = answer["message"].as_str().unwrap();
            assert!(
                message.contains(needle),
                "{what}: {message:?} lacks {needle:?}"
            );
        }
    };

    // A new colony and no topology.
    let token = issuer.issue(&b.id, shard, "colony-two", ttl).unwrap();
    expect_error("no topology", "missing topology")(
        init(&colony, b, &init_body(shard, None, &token)).await,
    );
    let token = issuer.issue(&b.id, shard, "colony-two", ttl).unwrap();
    let mut body = init_body(shard, None, &token);
    body["topology"] = Value::Null;
    expect_error("null topology", "missing topology")(init(&colony, b, &body).await);

    // A topology that does not list this backend.
    let elsewhere = hand_made_topology(
        "colony-two",
        colony.coordinator,
        vec![BackendEntry::new("backend_x", stale_address())],
        3,
    );
    let token = issuer.issue(&b.id, shard, "colony-two", ttl).unwrap();
    expect_error("not listed", "not among")(
        init(&colony, b, &init_body(shard, Some(&elsewhere), &token)).await,
    );

    // A topology that is not one, or is another colony's.
    let token = issuer.issue(&b.id, shard, "colony-two", ttl).unwrap();
    let mut body = init_body(shard, None, &token);
    body["topology"] = json!({"colony_id": "colony-two", "width_in_shards": 0});
    expect_error("invalid topology", "invalid topology")(init(&colony, b, &body).await);
    let listed = hand_made_topology(
        "colony-three",
        colony.coordinator,
        topology.backends().to_vec(),
        3,
    );
    let token = issuer.issue(&b.id, shard, "colony-two", ttl).unwrap();
    expect_error("another colony's topology", "colony-three")(
        init(&colony, b, &init_body(shard, Some(&listed), &token)).await,
    );

    // None of it touched the running colony.
    assert_eq!(backend_state(http, b).await, before);
    let (_, served) = colony.topology().await;
    assert_eq!(served["colony_id"], topology.colony_id());
}

#[tokio::test]
async fn racing_starts_make_one_colony() {
    let colony = Colony::start(2).await;
    let http = &colony.cluster.http;

    // Four clients with four keys at once: one colony; the others are told which.
    let world = small_world();
    let answers = futures::future::join_all(
        ["a", "b", "c", "d"].map(|key| colony.colony_start(Some(key), Some(&world))),
    )
    .await;
    let winners: Vec<&String> = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::OK)
        .map(|(_, text)| text)
        .collect();
    assert_eq!(winners.len(), 1, "{answers:?}");
    let topology: ClusterTopology = serde_json::from_str(winners[0]).unwrap();
    for (status, text) in &answers {
        if *status != StatusCode::OK {
            assert_eq!(*status, StatusCode::CONFLICT, "{text}");
            assert!(text.contains(topology.colony_id()), "{text}");
        }
    }

    // Four clients retrying one restart with one key at once: one restart, one answer.
    let restart = json!({"width_in_shards": 2, "height_in_shards": 2, "shard_width": 8,
        "shard_height": 8, "restart": true});
    let answers = futures::future::join_all(
        (0..4).map(|_| colony.colony_start(Some("retry"), Some(&restart))),
    )
    .await;
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
    assert_eq!(answers[0].0, StatusCode::OK, "{answers:?}");
    let restarted: ClusterTopology = serde_json::from_str(&answers[0].1).unwrap();
    assert_ne!(restarted.colony_id(), topology.colony_id());
    let (_, served) = colony.topology().await;
    assert_eq!(served["colony_id"], restarted.colony_id());
    let mut held = 0;
    for b in &colony.backends {
        let (list, _) = backend_state(http, b).await;
        assert_eq!(list["colony_id"], restarted.colony_id(), "{list}");
        held += list["shards"].as_array().unwrap().len();
    }
    assert_eq!(held, 4);
}

#[tokio::test]
async fn an_authentic_init_refused_for_its_shard_leaves_the_running_colony_alone() {
    let colony = Colony::start(1).await;
    let http = &colony.cluster.http;
    colony.start_colony(None, &small_world()).await;
    let b = &colony.backends[0];
    let issuer = colony.issuer();
    let ttl = Duration::from_secs(60);
    let before = backend_state(http, b).await;

    // A new colony's topology that lists this backend but places the shard elsewhere, and one
    // whose world does not have the shard at all: both are refused with the Error variant…
    let shared_out = hand_made_topology(
        "colony-two",
        colony.coordinator,
        vec![
            BackendEntry::new(b.id.clone(), b.address),
            BackendEntry::new("backend_x", stale_address()),
        ],
        3,
    );
    let theirs = shared_out.shards_of("backend_x")[0];
    let token = issuer.issue(&b.id, theirs, "colony-two", ttl).unwrap();
    let (status, answer) = init(&colony, b, &init_body(theirs, Some(&shared_out), &token)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["status"], "error", "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("backend_x"),
        "{answer}"
    );

    let outside = ShardCoord::new(9, 9);
    let token = issuer.issue(&b.id, outside, "colony-three", ttl).unwrap();
    let small = hand_made_topology(
        "colony-three",
        colony.coordinator,
        vec![BackendEntry::new(b.id.clone(), b.address)],
        3,
    );
    let (status, answer) = init(&colony, b, &init_body(outside, Some(&small), &token)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("outside"),
        "{answer}"
    );

    // …and, like every refusal, must not have changed what the backend holds.
    let after = backend_state(http, b).await;
    assert_eq!(after.0["colony_id"], before.0["colony_id"], "{}", after.0);
    assert_eq!(after, before);
}

/// A coordinator, a good backend, and a live backend holding another cluster secret, so that
/// it answers its health probe but refuses every init token.
async fn colony_with_a_misconfigured_backend() -> (Colony, String) {
    let mut colony = Colony::start(1).await;
    let wrong = colony.cluster.dir.path().join("wrong.key");
    std::fs::write(&wrong, "a-different-cluster-secret-0123456789").unwrap();
    let i = colony
        .cluster
        .start_backend(&["--secret-file", wrong.to_str().unwrap()]);
    let (id, _) = colony.cluster.backend_identity(i).await;
    let address = registered_backend(&colony.cluster, &id).await;
    colony.backends.push(Backend {
        id: id.clone(),
        address,
    });
    (colony, id)
}

#[tokio::test]
async fn a_backend_that_refuses_its_inits_fails_the_start_clearly() {
    let (colony, wrong) = colony_with_a_misconfigured_backend().await;
    let (status, text) = colony.colony_start(None, Some(&small_world())).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    let error = answer["error"].as_str().unwrap();
    assert!(error.contains(&wrong), "{error}");
    assert!(error.contains("unknown key"), "{error}");
    // The coordinator owns up to the colony its backends now (partly) hold: the topology is
    // there, and the colony is `failed` with the reason, so nothing pretends to run it.
    let (status, topology) = colony.topology().await;
    assert_eq!(status, StatusCode::OK, "{topology}");
    let state = colony_state(&colony).await;
    assert_eq!(state["state"], "failed", "{state}");
    assert_eq!(state["colony_id"], topology["colony_id"]);
    assert!(state["error"].as_str().unwrap().contains(&wrong), "{state}");
}

#[tokio::test]
async fn after_a_failed_restart_the_backends_agree_with_the_coordinator() {
    let mut colony = Colony::start(1).await;
    let running = colony.start_colony(None, &small_world()).await;
    // Now a backend with another secret joins, and a restart fails on it.
    let wrong = colony.cluster.dir.path().join("wrong.key");
    std::fs::write(&wrong, "a-different-cluster-secret-0123456789").unwrap();
    let i = colony
        .cluster
        .start_backend(&["--secret-file", wrong.to_str().unwrap()]);
    let (id, _) = colony.cluster.backend_identity(i).await;
    registered_backend(&colony.cluster, &id).await;
    let mut restart = small_world();
    restart["restart"] = json!(true);
    let (status, text) = colony.colony_start(None, Some(&restart)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{text}");

    // Whatever colony the coordinator now names, the backends hold that one, and it is
    // reported failed rather than running.
    let (status, topology) = colony.topology().await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(topology["colony_id"], running.colony_id());
    let (list, _) = backend_state(&colony.cluster.http, &colony.backends[0]).await;
    assert_eq!(list["colony_id"], topology["colony_id"], "{list}");
    let state = colony_state(&colony).await;
    assert_eq!(state["state"], "failed", "{state}");
}

/// `GET /colony` on the coordinator.
async fn colony_state(colony: &Colony) -> Value {
    let url = format!("http://{}/colony", colony.coordinator.to_http_address());
    colony.cluster.get_json(&url).await
}
