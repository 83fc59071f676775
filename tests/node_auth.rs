//! Node authentication against real processes (issue 12, DESIGN §13): heartbeats and
//! node-to-node calls must carry a valid `Colony-Signature`; replays are refused, restarts
//! accepted; every refusal is counted and changes nothing; the token audit lists what the
//! backends did with their init tokens; dead nodes are forgotten; and the cluster secret
//! appears in no log, answer, registry entry, metric or command line.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use shared::secret::ClusterSecret;
use shared::signing::{unix_millis, RequestSigner, HEADER};
use shared::token::TokenIssuer;
use shared::topology::ShardCoord;

/// Thresholds long enough that nothing goes STALE while a test compares states.
const QUIET: [&str; 4] = ["--stale-after", "1m", "--down-after", "2m"];

/// `/health/status` without what changes by itself as time passes.
fn stable(mut health: Value) -> Value {
    for c in health["components"].as_array_mut().unwrap() {
        let c = c.as_object_mut().unwrap();
        for volatile in ["heartbeat_age_ms", "uptime_seconds", "last_seen"] {
            c.remove(volatile);
        }
    }
    health
}

/// The `colony_auth_refusals_total` series of a `/metrics` text, as `plane/reason → count`.
fn refusals(metrics: &str) -> std::collections::BTreeMap<String, u64> {
    metrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("colony_auth_refusals_total{plane=\"")?;
            let (plane, rest) = rest.split_once("\",reason=\"")?;
            let (reason, count) = rest.split_once("\"} ")?;
            Some((format!("{plane}/{reason}"), count.parse().ok()?))
        })
        .collect()
}

async fn text(http: &reqwest::Client, url: &str) -> String {
    http.get(url).send().await.unwrap().text().await.unwrap()
}

fn heartbeat(node: &str, boot: &str, seq: u64) -> String {
    json!({"instance_id": node, "node_type": "backend",
        "address": {"ip": "127.0.0.1", "internal_port": 41000, "http_port": 41001, "mgmt_port": 41002},
        "boot_id": boot, "seq": seq, "metrics": {"connections": 1}})
    .to_string()
}

/// `POST /heartbeat` with `body` and the given `Colony-Signature`, if any.
async fn post(
    http: &reqwest::Client,
    url: &str,
    signature: Option<&str>,
    body: &str,
) -> (StatusCode, Value) {
    let mut request = http
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(signature) = signature {
        request = request.header(HEADER, signature);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn forged_stale_and_replayed_heartbeats_are_refused_counted_and_change_nothing() {
    let mut cluster = Cluster::new();
    cluster.start_coordinator(&QUIET);
    let url = cluster.mgmt_url("/heartbeat").await;
    let metrics_url = cluster.mgmt_url("/metrics").await;
    let secret = cluster.secret();
    let signer = RequestSigner::new(&secret);
    let http = cluster.http.clone();
    let sign = |body: &str| signer.sign("POST", "/heartbeat", body.as_bytes());

    // A node that is really there: boot "first", seq 5.
    let first = heartbeat("backend_41000", "first", 5);
    let first_signature = sign(&first);
    let (status, answer) = post(&http, &url, Some(&first_signature), &first).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let before = stable(cluster.health().await);
    assert_eq!(before["total_components"], 2, "{before}");

    let stranger = ClusterSecret::from_env_value("some-other-clusters-secret-0").unwrap();
    let impostor = stranger.clone().with_key_id(secret.key_id()).unwrap();
    let evil = heartbeat("evil_node", "x", 1);
    let leaving = json!({"instance_id": "backend_41000", "node_type": "backend",
        "address": {"ip": "10.9.9.9", "internal_port": 1, "http_port": 2, "mgmt_port": 3},
        "boot_id": "first", "seq": 6, "leaving": true})
    .to_string();
    let forged = {
        let last = if first_signature.ends_with('0') {
            "1"
        } else {
            "0"
        };
        format!("{}{last}", &first_signature[..first_signature.len() - 1])
    };
    let hour_old = signer.sign_at(
        "POST",
        "/heartbeat",
        leaving.as_bytes(),
        unix_millis() - 3_600_000,
    );
    // (what, body, signature, status, code or error word)
    let cases: Vec<(&str, String, Option<String>, StatusCode, &str)> = vec![
        (
            "unsigned unknown node",
            evil.clone(),
            None,
            StatusCode::UNAUTHORIZED,
            "missing",
        ),
        (
            "unsigned goodbye",
            leaving.clone(),
            None,
            StatusCode::UNAUTHORIZED,
            "missing",
        ),
        (
            "forged MAC",
            first.clone(),
            Some(forged),
            StatusCode::UNAUTHORIZED,
            "bad_mac",
        ),
        (
            "truncated header",
            leaving.clone(),
            Some(sign(&leaving)[..40].to_owned()),
            StatusCode::UNAUTHORIZED,
            "malformed",
        ),
        (
            "another cluster's key",
            evil.clone(),
            Some(RequestSigner::new(&stranger).sign("POST", "/heartbeat", evil.as_bytes())),
            StatusCode::UNAUTHORIZED,
            "unknown_key",
        ),
        (
            "another node's heartbeat, wrong secret under our key id",
            leaving.clone(),
            Some(RequestSigner::new(&impostor).sign("POST", "/heartbeat", leaving.as_bytes())),
            StatusCode::UNAUTHORIZED,
            "bad_mac",
        ),
        (
            "valid signature, changed body",
            leaving.clone(),
            Some(first_signature.clone()),
            StatusCode::UNAUTHORIZED,
            "bad_mac",
        ),
        (
            "an hour old",
            leaving.clone(),
            Some(hour_old),
            StatusCode::UNAUTHORIZED,
            "bad_timestamp",
        ),
        (
            "the same request again",
            first.clone(),
            Some(first_signature.clone()),
            StatusCode::CONFLICT,
            "replayed",
        ),
        (
            "an older seq of the same boot",
            heartbeat("backend_41000", "first", 3),
            Some(sign(&heartbeat("backend_41000", "first", 3))),
            StatusCode::CONFLICT,
            "replayed",
        ),
    ];
    for (what, body, signature, status, reason) in cases {
        let (got, answer) = post(&http, &url, signature.as_deref(), &body).await;
        assert_eq!(got, status, "{what}: {answer}");
        if status == StatusCode::UNAUTHORIZED {
            assert_eq!(answer["code"], reason, "{what}: {answer}");
        } else {
            assert!(
                answer["error"].as_str().unwrap().contains(reason),
                "{what}: {answer}"
            );
        }
        assert_eq!(
            stable(cluster.health().await),
            before,
            "{what} changed the state"
        );
    }
    let counted = refusals(&text(&http, &metrics_url).await);
    let expected: std::collections::BTreeMap<String, u64> = [
        ("mgmt/missing", 2),
        ("mgmt/bad_mac", 3),
        ("mgmt/malformed", 1),
        ("mgmt/unknown_key", 1),
        ("mgmt/bad_timestamp", 1),
        ("mgmt/replay", 2),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(counted, expected);

    // A restart: a new boot id counting from 1 is accepted, and the coordinator says so.
    let restarted = heartbeat("backend_41000", "second", 1);
    let (status, answer) = post(&http, &url, Some(&sign(&restarted)), &restarted).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let node = cluster.component("backend_41000").await.unwrap();
    assert_eq!((&node["seq"], &node["heartbeats"]), (&json!(1), &json!(2)));
    let line = cluster
        .coordinator
        .as_mut()
        .unwrap()
        .wait_for("node restarted")
        .await;
    assert!(line.contains("backend_41000"), "{line}");
    // And the earlier boot cannot come back.
    let old = heartbeat("backend_41000", "first", 7);
    let (status, _) = post(&http, &url, Some(&sign(&old)), &old).await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn a_backend_refuses_init_calls_not_signed_by_a_node() {
    let mut cluster = Cluster::new();
    cluster.start_coordinator(&QUIET);
    cluster.coordinator_address().await;
    cluster.start_backend(&[]);
    let (id, _) = cluster.backend_identity(0).await;
    let line = cluster.backends[0].wait_for("node listening").await;
    let control = format!("http://{}", field(&line, "http"));
    let mgmt = format!("http://{}", field(&line, "mgmt"));
    let http = cluster.http.clone();
    let secret = cluster.secret();
    // A token that is itself valid: only the call's signature is at fault.
    let token = TokenIssuer::new(&secret)
        .issue(
            &id,
            ShardCoord::new(0, 0),
            "colony-x",
            Duration::from_secs(60),
        )
        .unwrap();
    let body = json!({"shard": {"x": 0, "y": 0}, "token": token}).to_string();
    let url = format!("{control}/init-colony-shard");
    let shards = || async { text(&http, &format!("{control}/shards")).await };
    let before = shards().await;

    let stranger = ClusterSecret::from_env_value("some-other-clusters-secret-0").unwrap();
    let impostor = stranger.with_key_id(secret.key_id()).unwrap();
    for (signature, reason) in [
        (None, "missing"),
        (
            Some(RequestSigner::new(&impostor).sign("POST", "/init-colony-shard", body.as_bytes())),
            "bad_mac",
        ),
    ] {
        let (status, answer) = post(&http, &url, signature.as_deref(), &body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{reason}: {answer}");
        assert_eq!(answer["code"], reason, "{answer}");
        assert_eq!(shards().await, before, "{reason} changed the backend");
    }
    let counted = refusals(&text(&http, &format!("{mgmt}/metrics")).await);
    assert_eq!(counted.get("control/missing"), Some(&1), "{counted:?}");
    assert_eq!(counted.get("control/bad_mac"), Some(&1), "{counted:?}");
}

#[tokio::test]
async fn the_token_audit_lists_what_the_backends_did_with_their_tokens() {
    let mut cluster = Cluster::new();
    cluster.start_coordinator(&QUIET);
    let address = cluster.coordinator_address().await;
    for _ in 0..2 {
        cluster.start_backend(&["--heartbeat-interval", "100ms"]);
    }
    let mut ids = Vec::new();
    for i in 0..2 {
        ids.push(cluster.backend_identity(i).await.0);
    }
    for id in &ids {
        let id = id.clone();
        eventually(DEADLINE, "backend ACTIVE", || {
            let cluster = &cluster;
            let id = id.clone();
            async move { (cluster.component(&id).await?["status"] == "ACTIVE").then_some(()) }
        })
        .await;
    }
    let control = format!(
        "http://{}:{}",
        address["ip"].as_str().unwrap(),
        address["http_port"]
    );
    let started = cluster
        .http
        .post(format!("{control}/colony-start"))
        .json(&json!({"width_in_shards": 2, "height_in_shards": 2, "shard_width": 8, "shard_height": 8}))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), StatusCode::OK);
    let url = cluster.mgmt_url("/tokens").await;
    // Reports are sent in the background: wait until all four are in.
    let tokens = eventually(DEADLINE, "every token reported used", || {
        let cluster = &cluster;
        let url = url.clone();
        async move {
            let list = cluster.get_json(&url).await;
            let tokens = list["tokens"].as_array()?.clone();
            (tokens.len() == 4 && tokens.iter().all(|t| t["state"] == "used")).then_some(tokens)
        }
    })
    .await;
    for t in &tokens {
        assert_eq!(t["used"]["by"], t["instance_id"], "{t}");
        assert!(
            ids.contains(&t["instance_id"].as_str().unwrap().to_owned()),
            "{t}"
        );
        assert!(
            t["used"]["at"].as_str().is_some_and(|at| at.ends_with('Z')),
            "{t}"
        );
        assert_eq!(t["refusals"], 0);
        assert!(t.get("signature").is_none(), "{t}");
    }
}

#[tokio::test]
async fn a_node_down_longer_than_forget_after_is_forgotten() {
    let mut cluster = Cluster::new();
    cluster.start_coordinator(&[
        "--stale-after",
        "100ms",
        "--down-after",
        "200ms",
        "--forget-after",
        "300ms",
    ]);
    let url = cluster.mgmt_url("/heartbeat").await;
    let body = heartbeat("backend_41000", "only", 1);
    let (status, _) = post(
        &cluster.http,
        &url,
        Some(&RequestSigner::new(&cluster.secret()).sign("POST", "/heartbeat", body.as_bytes())),
        &body,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    eventually(DEADLINE, "DOWN", || async {
        (cluster.component("backend_41000").await?["status"] == "DOWN").then_some(())
    })
    .await;
    eventually(DEADLINE, "forgotten", || async {
        cluster
            .component("backend_41000")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    let line = cluster
        .coordinator
        .as_mut()
        .unwrap()
        .wait_for("forgot node")
        .await;
    assert!(line.contains("backend_41000"), "{line}");
    let alerts = cluster.get_json(&cluster.mgmt_url("/alerts").await).await;
    assert_eq!(alerts["open"], json!([]), "{alerts}");
}

#[tokio::test]
async fn the_cluster_secret_appears_in_no_log_answer_registry_metric_or_command_line() {
    const SECRET: &str = "s3cret-that-must-never-show-up-0123456789";
    let mut up = Up::start_with_env(1, &[], &[("COLONY_CLUSTER_SECRET", SECRET)]).await;
    let http = shared::tls::http_client(None).no_proxy().build().unwrap();
    let mgmt = format!("http://{}", up.mgmt);
    let control = text(&http, &format!("{mgmt}/health/status")).await;
    let mut seen = vec![control];
    for path in ["/metrics", "/alerts", "/tokens", "/health"] {
        seen.push(text(&http, &format!("{mgmt}{path}")).await);
    }
    let registry = up.dir.path().join("output/ssm");
    for entry in walk(&registry) {
        seen.push(std::fs::read_to_string(entry).unwrap_or_default());
    }
    for entry in walk(&up.dir.path().join("output/logs")) {
        seen.push(std::fs::read_to_string(entry).unwrap_or_default());
    }
    // The command lines of `colony up` and of every child it runs.
    let pid = up.proc.child.id().unwrap();
    let mut pids = vec![pid];
    pids.extend(children_of(pid));
    assert!(pids.len() >= 2, "no backend child of {pid}");
    for p in &pids {
        let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        seen.push(String::from_utf8_lossy(&cmdline).replace('\0', " "));
    }
    // Everything `colony up` printed so far.
    up.proc.wait_for("Dashboard: http://").await;
    seen.extend(up.proc.seen.iter().cloned());
    for (i, text) in seen.iter().enumerate() {
        assert!(
            !text.contains(SECRET),
            "the secret shows in item {i}: {text:.300}"
        );
    }
    // The nodes did use it: the backend's heartbeats were accepted.
    assert!(seen[0].contains("\"ACTIVE\""), "{}", seen[0]);

    // Stop it as a user would, so its backends stop with it rather than outlive the test.
    up.proc.signal("INT");
    let status = tokio::time::timeout(DEADLINE, up.proc.child.wait())
        .await
        .expect("colony up did not exit after SIGINT")
        .unwrap();
    assert!(status.success(), "{status:?}");
    for p in &pids[1..] {
        assert!(
            !std::path::Path::new(&format!("/proc/{p}/cmdline")).exists()
                || std::fs::read(format!("/proc/{p}/cmdline"))
                    .unwrap_or_default()
                    .is_empty(),
            "backend {p} outlived colony up"
        );
    }
}

/// Every file under `dir`, recursively.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Pids whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit(')')
                        .next()?
                        .split_whitespace()
                        .nth(1)?
                        .parse::<u32>()
                        .ok()
                })
                == Some(pid)
        })
        .collect()
}
