//! Whole clusters on the SSM registry, against moto's SSM server on loopback: a coordinator and
//! three backends as processes with `--registry ssm` register, report ACTIVE, start a colony
//! from what they discovered in SSM and tick it (matching the single-process reference), and
//! remove their parameters on SIGTERM; a node started
//! while SSM is down logs why, keeps serving, and registers once SSM is back on the same port;
//! and a node without AWS credentials or region refuses to start, at once, saying what to set.
//!
//! Every process gets the whole AWS configuration from [`moto::aws_env`] (test credentials, a
//! region, the loopback endpoint, instance metadata off) through `Command::envs`, so nothing
//! here reaches beyond 127.0.0.1. moto must be installed (`./scripts/setup.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ssm::config::{Credentials, SharedCredentialsProvider};
use common::*;
use serde_json::{json, Value};
use shared::registry::{ClusterRegistry, SsmClusterRegistry, SsmOptions};
use shared::sim::{run_reference, Rule, WorldParams};
use shared::test_support::moto::{self, Moto};
use shared::NodeAddress;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const SECRET: &str = "cluster-ssm-test-secret-0123456789";

/// Registration through SSM: moto answers its first SSM call slowly (it loads the service
/// then), and a loaded 2-core machine is slower still.
const SSM_DEADLINE: Duration = Duration::from_secs(30);

/// The environment of every node: moto's AWS configuration and the cluster secret (the SSM
/// registry never holds secrets, so there is no key file to fall back on).
fn node_env(port: u16) -> Vec<(&'static str, String)> {
    let mut env = moto::aws_env(port);
    env.push(("COLONY_CLUSTER_SECRET", SECRET.to_owned()));
    env
}

fn spawn(args: &[&str], env: &[(&'static str, String)]) -> Proc {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Proc::spawn(args, &env)
}

/// This test's own view of the registry, uncached, configured in-process (no environment).
async fn registry(port: u16, prefix: &str) -> SsmClusterRegistry {
    let sdk = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(moto::endpoint(port))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "test",
            "test",
            None,
            None,
            "colony-tests",
        )))
        .build();
    let options = SsmOptions::new(prefix).with_cache_ttl(Duration::ZERO);
    SsmClusterRegistry::from_sdk_config(&sdk, options)
        .await
        .unwrap()
}

fn http() -> reqwest::Client {
    shared::tls::http_client(None)
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

async fn get_json(client: &reqwest::Client, url: &str) -> Option<Value> {
    client.get(url).send().await.ok()?.json().await.ok()
}

/// A running moto that has already answered an SSM call.
async fn start_moto() -> Moto {
    let moto = tokio::task::spawn_blocking(Moto::start).await.unwrap();
    registry(moto.port(), "/warm-up")
        .await
        .discover_backends()
        .await
        .unwrap();
    moto
}

#[tokio::test]
async fn a_whole_cluster_registers_in_ssm_starts_a_colony_ticks_and_unregisters_on_sigterm() {
    const PREFIX: &str = "/cluster-it";
    let moto = start_moto().await;
    let env = node_env(moto.port());
    let registry_args = ["--registry", "ssm", "--ssm-prefix", PREFIX];
    let view = registry(moto.port(), PREFIX).await;

    let mut args = vec![
        "coordinator",
        "--internal-port",
        "0",
        "--http-port",
        "0",
        "--mgmt-port",
        "0",
    ];
    args.extend(registry_args);
    let mut coordinator = spawn(&args, &env);
    let line = coordinator.wait_for("using the cluster registry").await;
    assert!(
        line.contains(&format!(
            "ssm registry at {PREFIX} (region us-east-1, endpoint {})",
            moto.endpoint()
        )),
        "{line}"
    );
    let mut backends: Vec<Proc> = (0..3)
        .map(|_| {
            let mut args = vec!["backend", "--heartbeat-interval", "100ms"];
            args.extend(registry_args);
            spawn(&args, &env)
        })
        .collect();
    // In start order; `ids` sorted, as discovery returns them.
    let mut backend_ids = Vec::new();
    for backend in &mut backends {
        let line = backend.wait_for("node listening").await;
        backend_ids.push(field(&line, "instance_id"));
    }
    let mut ids = backend_ids.clone();
    ids.sort();

    // Every node's parameter holds its exact address JSON.
    let coordinator_address: NodeAddress =
        eventually(SSM_DEADLINE, "coordinator parameter", || async {
            view.discover_coordinator().await.ok().flatten()
        })
        .await;
    let found = eventually(SSM_DEADLINE, "3 backend parameters", || async {
        let found = view.discover_backends().await.ok()?;
        (found.len() == 3).then_some(found)
    })
    .await;
    assert_eq!(
        found.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
        ids
    );
    for (id, address) in &found {
        let raw = view
            .raw_value(&format!("{PREFIX}/backends/{id}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(raw, serde_json::to_string(address).unwrap());
        assert_eq!(*id, format!("backend_{}", address.internal_port));
    }

    // The coordinator found the backends' heartbeats' target through SSM.
    let client = http();
    let mgmt = format!("http://{}", coordinator_address.to_mgmt_address());
    let health = eventually(SSM_DEADLINE, "3 ACTIVE backends", || async {
        let h = get_json(&client, &format!("{mgmt}/health/status")).await?;
        let active = h["components"]
            .as_array()?
            .iter()
            .filter(|c| c["type"] == "backend" && c["status"] == "ACTIVE")
            .count();
        (active == 3).then_some(h)
    })
    .await;
    assert_eq!(health["overall_status"], "HEALTHY", "{health}");

    // colony-start discovers the backends through SSM and places shards on all three; the
    // colony then ticks across them and matches the single-process reference.
    let control = format!("http://{}", coordinator_address.to_http_address());
    let response = client
        .post(format!("{control}/colony-start"))
        .json(&json!({
            "width_in_shards": 3, "height_in_shards": 2, "shard_width": 16, "shard_height": 16,
            "rule": "B3/S23", "seed": 42, "density": 0.35,
        }))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let topology: Value = response.json().await.unwrap();
    assert!(status.is_success(), "{status}: {topology}");
    let text = topology.to_string();
    for id in &ids {
        assert!(
            text.contains(id.as_str()),
            "{id} not in the topology: {text}"
        );
    }
    let response = client
        .post(format!("{control}/colony/run"))
        .json(&json!({"ticks": 20, "wait": true}))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let colony: Value = response.json().await.unwrap();
    assert!(status.is_success(), "{status}: {colony}");
    let params = WorldParams {
        width_in_shards: 3,
        height_in_shards: 2,
        shard_width: 16,
        shard_height: 16,
        rule: "B3/S23".parse::<Rule>().unwrap(),
        seed: 42,
        density: 0.35,
        cells: Vec::new(),
    };
    let expected = run_reference(&params, 20).unwrap();
    assert_eq!(colony["tick"], 20, "{colony}");
    assert_eq!(colony["population"], expected.population, "{colony}");
    assert_eq!(
        colony["fingerprint"],
        expected.fingerprint.to_string(),
        "{colony}"
    );

    // `colony status` reads the same registry, chosen here by DEPLOYMENT_MODE=aws.
    let out = colony_command()
        .args(["status", "--ssm-prefix", PREFIX])
        .env("DEPLOYMENT_MODE", "aws")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .await
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for id in &ids {
        let row = table.lines().find(|l| l.starts_with(id.as_str()));
        assert!(row.is_some_and(|r| r.contains("ACTIVE")), "{id}:\n{table}");
    }
    assert!(
        table.contains(&format!("ssm registry at {PREFIX}")),
        "{table}"
    );

    // SIGTERM: the node's parameter goes, and only its.
    let gone = backend_ids[1].clone();
    backends[1].signal("TERM");
    assert!(backends[1].child.wait().await.unwrap().success());
    let left = view.discover_backends().await.unwrap();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().all(|(id, _)| *id != gone), "{left:?}");
    assert_eq!(
        view.raw_value(&format!("{PREFIX}/backends/{gone}"))
            .await
            .unwrap(),
        None
    );
    let component = eventually(DEADLINE, "LEFT", || async {
        let h = get_json(&client, &format!("{mgmt}/health/status")).await?;
        h["components"]
            .as_array()?
            .iter()
            .find(|c| c["node_id"] == gone.as_str() && c["status"] == "LEFT")
            .cloned()
    })
    .await;
    assert_eq!(component["status"], "LEFT");

    coordinator.signal("TERM");
    assert!(coordinator.child.wait().await.unwrap().success());
    assert_eq!(view.discover_coordinator().await.unwrap(), None);
    for i in [0, 2] {
        backends[i].signal("TERM");
        assert!(backends[i].child.wait().await.unwrap().success());
    }
    assert_eq!(view.discover_backends().await.unwrap(), vec![]);
}

#[tokio::test]
async fn a_node_started_while_ssm_is_down_keeps_serving_and_registers_when_it_is_back() {
    const PREFIX: &str = "/outage";
    // A port that moto held a moment ago: nothing listens there now.
    let port = {
        let moto = start_moto().await;
        let port = moto.port();
        tokio::task::spawn_blocking(move || moto.stop())
            .await
            .unwrap();
        port
    };
    let env = node_env(port);
    let mut backend = spawn(
        &[
            "backend",
            "--heartbeat-interval",
            "100ms",
            "--registry",
            "ssm",
            "--ssm-prefix",
            PREFIX,
        ],
        &env,
    );
    let listening = backend.wait_for("node listening").await;
    let id = field(&listening, "instance_id");
    let mgmt = field(&listening, "mgmt");
    let internal = field(&listening, "internal");

    // The cause and what to set are in the log.
    let failure = backend.wait_for("Failed to register backend").await;
    for needle in [
        "endpoint unreachable",
        moto::endpoint(port).as_str(),
        "AWS_ENDPOINT_URL_SSM",
        "retrying",
    ] {
        assert!(failure.contains(needle), "{needle:?} not in {failure}");
    }

    // All the while, the node serves: management and data plane answer.
    let client = http();
    let health = client
        .get(format!("http://{mgmt}/health"))
        .send()
        .await
        .unwrap();
    assert!(health.status().is_success());
    let stream = tokio::net::TcpStream::connect(&internal).await.unwrap();
    let (read, mut write) = stream.into_split();
    write.write_all(b"PING\n").await.unwrap();
    let mut pong = String::new();
    BufReader::new(read).read_line(&mut pong).await.unwrap();
    assert_eq!(pong.trim(), "PONG");

    // SSM comes back on the same port: the node registers without being touched.
    let moto = tokio::task::spawn_blocking(move || Moto::start_on(port))
        .await
        .unwrap();
    let back = Instant::now();
    let view = registry(port, PREFIX).await;
    let name = format!("{PREFIX}/backends/{id}");
    eventually(
        Duration::from_secs(15),
        "registered after the outage",
        || async { view.raw_value(&name).await.ok().flatten() },
    )
    .await;
    // Registration retries back off to at most 5 s, so it is back well within that.
    assert!(
        back.elapsed() < Duration::from_secs(10),
        "{:?}",
        back.elapsed()
    );
    backend.wait_for("Registered backend").await;

    backend.signal("TERM");
    assert!(backend.child.wait().await.unwrap().success());
    assert_eq!(view.raw_value(&name).await.unwrap(), None);
    drop(moto);
}

/// `colony` with exactly `env` (no inherited variables), expecting it to refuse to start.
async fn refuses_to_start(args: &[&str], env: &[(&'static str, String)]) -> String {
    let started = Instant::now();
    let mut command = tokio::process::Command::new(colony_bin());
    command
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(10), command.output())
        .await
        .expect("colony did not exit: it should refuse to start")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "not fast: {:?}",
        started.elapsed()
    );
    stderr
}

#[tokio::test]
async fn without_credentials_or_region_a_node_refuses_to_start_and_says_what_to_set() {
    let base = node_env(shared::test_support::free_port());
    let no_credentials: Vec<_> = base
        .iter()
        .filter(|(k, _)| *k != "AWS_ACCESS_KEY_ID" && *k != "AWS_SECRET_ACCESS_KEY")
        .cloned()
        .collect();
    let ports = [
        "--internal-port",
        "0",
        "--http-port",
        "0",
        "--mgmt-port",
        "0",
    ];
    for role in ["backend", "coordinator"] {
        let mut args = vec![role, "--registry", "ssm"];
        args.extend(ports);
        let stderr = refuses_to_start(&args, &no_credentials).await;
        for needle in ["SSM registry", "no AWS credentials", "AWS_ACCESS_KEY_ID"] {
            assert!(
                stderr.contains(needle),
                "{role}: {needle:?} not in {stderr}"
            );
        }
    }

    let no_region: Vec<_> = base
        .iter()
        .filter(|(k, _)| *k != "AWS_REGION" && *k != "AWS_DEFAULT_REGION")
        .cloned()
        .collect();
    let stderr = refuses_to_start(&["status", "--registry", "ssm"], &no_region).await;
    assert!(stderr.contains("no AWS region"), "{stderr}");
    assert!(stderr.contains("set AWS_REGION"), "{stderr}");
}
