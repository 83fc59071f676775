//! The `/ws` service registry against real processes, with a real WebSocket client: failure
//! detection pushed as events, restarts through `service_action` under `colony up`, bad
//! input answered without dropping the socket, and 50 subscribers seeing the same ordered
//! stream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const DOWN_AFTER: Duration = Duration::from_millis(1000);
const HEARTBEAT: Duration = Duration::from_millis(100);

/// A coordinator with short thresholds; its management address.
async fn coordinator(cluster: &mut Cluster) -> String {
    cluster.start_coordinator(&["--stale-after", "300ms", "--down-after", "1s"]);
    let a = cluster.coordinator_address().await;
    format!("{}:{}", a["ip"].as_str().unwrap(), a["mgmt_port"])
}

fn state_change<'a>(service: &'a str, to: &'static str) -> impl Fn(&Value) -> bool + 'a {
    move |d: &Value| d["kind"] == "node" && d["service"] == service && d["to"] == to
}

#[tokio::test]
async fn kill_9_pushes_stale_then_down_within_the_thresholds() {
    let mut cluster = Cluster::new();
    let mgmt = coordinator(&mut cluster).await;
    cluster.start_backend(&["--heartbeat-interval", "100ms"]);
    let (backend, _) = cluster.backend_identity(0).await;

    let mut ws = WsClient::connect(&mgmt, "").await;
    let loaded = ws.next().await;
    assert_eq!(loaded["event"], "registry_loaded", "{loaded}");
    assert!(loaded["data"]["stream"].is_string());
    let r = ws
        .request("subscribe", json!({"events": ["service_state_changed"]}))
        .await;
    assert!(r["data"]["subscribed"]
        .as_array()
        .unwrap()
        .contains(&json!("service_state_changed")));
    // The backend may have been ACTIVE before we connected; then the snapshot says so.
    let already = loaded["data"]["services"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == backend.as_str() && s["state"] == "ACTIVE");
    if !already {
        ws.event_where(
            "service_state_changed",
            DEADLINE,
            state_change(&backend, "ACTIVE"),
        )
        .await;
    }

    cluster.backends[0].signal("KILL");
    let killed = Instant::now();
    let stale = ws
        .event_where(
            "service_state_changed",
            DEADLINE,
            state_change(&backend, "STALE"),
        )
        .await;
    let to_stale = killed.elapsed();
    let down = ws
        .event_where(
            "service_state_changed",
            DEADLINE,
            state_change(&backend, "DOWN"),
        )
        .await;
    let to_down = killed.elapsed();
    // The backend's heartbeat channel closes with the process: STALE at once, not after
    // the threshold (generous slack for a loaded machine). DOWN still waits for the
    // threshold, counted from the last heartbeat, at most one interval before the kill.
    assert!(
        to_stale <= Duration::from_secs(1),
        "STALE after {to_stale:?}"
    );
    assert!(
        to_down + HEARTBEAT >= DOWN_AFTER && to_down <= DOWN_AFTER + Duration::from_secs(1),
        "DOWN after {to_down:?}"
    );
    assert_eq!(stale["data"]["from"], "ACTIVE");
    assert_eq!(down["data"]["from"], "STALE");
    assert!(down["seq"].as_u64() > stale["seq"].as_u64());
    assert_eq!(down["data"]["component"]["status"], "DOWN");
}

#[tokio::test]
async fn service_action_restarts_a_managed_backend_and_it_goes_active_again() {
    let up = Up::start(2, &["--no-start"]).await;
    let target = up.backend(1);
    let mut ws = WsClient::connect(&up.mgmt, "").await;
    let loaded = ws.next().await;
    assert_eq!(loaded["data"]["managed_processes"], true, "{loaded}");
    let before = ws.request("get_service", json!({"name": target})).await;
    let service = &before["data"]["service"];
    assert_eq!(service["managed"], true, "{before}");
    assert_eq!(service["state"], "ACTIVE", "{before}");
    let old_pid = service["process"]["pid"].as_u64().unwrap();
    let ports: Vec<String> = service["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["address"].as_str().unwrap().to_owned())
        .collect();

    let r = ws
        .request(
            "service_action",
            json!({"name": target, "action": "restart"}),
        )
        .await;
    assert!(r.get("error").is_none(), "{r}");
    let process = &r["data"]["process"];
    assert_eq!(process["state"], "running", "{r}");
    assert_ne!(process["pid"].as_u64().unwrap(), old_pid);
    assert_eq!(process["restarts"], 1);

    // It said goodbye (LEFT), came back on the same ports and is ACTIVE again.
    let active = ws
        .event_where(
            "service_state_changed",
            Duration::from_secs(15),
            state_change(&target, "ACTIVE"),
        )
        .await;
    assert_eq!(active["data"]["from"], "LEFT", "{active}");
    let after = ws.request("get_service", json!({"name": target})).await;
    let again: Vec<String> = after["data"]["service"]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["address"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(again, ports, "restarted on other ports");

    // Process events went out too: stopped, then running.
    let r = ws.request("list_services", json!({})).await;
    let s = r["data"]["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == target.as_str())
        .unwrap()
        .clone();
    assert_eq!(s["process"]["state"], "running");

    // The coordinator and unknown names are refused with a reason.
    let r = ws
        .request(
            "service_action",
            json!({"name": "coordinator", "action": "stop"}),
        )
        .await;
    assert_eq!(r["error"]["code"], "not_managed", "{r}");
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("coordinator cannot restart itself"));
    let r = ws
        .request(
            "service_action",
            json!({"name": "backend_1", "action": "start"}),
        )
        .await;
    assert_eq!(r["error"]["code"], "not_found", "{r}");
    up.proc.signal("INT");
}

#[tokio::test]
async fn bad_input_is_answered_and_the_socket_stays_open() {
    let mut cluster = Cluster::new();
    // deploy_package needs the operator token even from this machine (DESIGN §13): the
    // coordinator finds it where `colony up` would have put it.
    let token = "ws-registry-operator-token";
    let output = cluster.dir.path().join("output");
    std::fs::create_dir_all(&output).unwrap();
    std::fs::write(output.join("operator.token"), token).unwrap();
    let mgmt = coordinator(&mut cluster).await;
    let mut ws = WsClient::connect(&mgmt, "").await;
    ws.next().await;
    let r = ws.request("auth", json!({ "token": token })).await;
    assert_eq!(r["data"]["authenticated"], true, "{r}");
    let big = format!(
        r#"{{"id":"big","type":"request","action":"list_services","params":{{"pad":"{}"}}}}"#,
        "x".repeat(70 * 1024)
    );
    let cases: Vec<(String, Value, &str)> = vec![
        ("{\"id\":".into(), Value::Null, "malformed_json"),
        ("not json at all".into(), Value::Null, "malformed_json"),
        (
            r#"{"type":"request","action":"list_services"}"#.into(),
            Value::Null,
            "missing_id",
        ),
        (
            r#"{"id":"1","type":"request","action":"reboot_universe"}"#.into(),
            json!("1"),
            "unknown_action",
        ),
        (
            r#"{"id":2,"type":"request","action":"get_service","params":{"name":7}}"#.into(),
            json!(2),
            "invalid_params",
        ),
        (
            // Not name-version.tar.gz (issue 16: deploy_package is supported now).
            r#"{"id":"3","type":"request","action":"deploy_package","params":{"package":"x.tar.gz","target":"coordinator"}}"#
                .into(),
            json!("3"),
            "invalid_params",
        ),
        (
            r#"{"id":"4","type":"request","action":"service_action","params":{"name":"coordinator","action":"restart"}}"#
                .into(),
            json!("4"),
            "not_managed",
        ),
        (big, Value::Null, "message_too_large"),
    ];
    for (text, id, code) in cases {
        ws.send_text(&text).await;
        let r = loop {
            let m = ws.next().await;
            if m["type"] == "response" {
                break m;
            }
        };
        assert_eq!(r["error"]["code"], code, "{:.60}: {r}", text);
        assert_eq!(r["id"], id, "{r}");
    }
    let r = ws.request("list_endpoints", json!({})).await;
    let endpoints = r["data"]["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 3, "{r}");
    assert!(endpoints
        .iter()
        .all(|e| e["service"] == "coordinator" && e["address"].as_str().unwrap().contains(':')));

    // A plain GET (no upgrade) and a bad resume are clear 400s, not hangs.
    let plain = cluster
        .http
        .get(format!("http://{mgmt}/ws"))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 400);
    let text = plain.text().await.unwrap();
    assert!(text.contains("WebSocket"), "{text}");
    let bad = cluster
        .http
        .get(format!("http://{mgmt}/ws?events=gossip"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn fifty_subscribers_receive_every_event_in_the_same_order() {
    let mut cluster = Cluster::new();
    let mgmt = coordinator(&mut cluster).await;
    let mut clients = Vec::new();
    for _ in 0..50 {
        let mut ws = WsClient::connect(&mgmt, "").await;
        let loaded = ws.next().await;
        assert_eq!(loaded["event"], "registry_loaded");
        clients.push((ws, loaded["seq"].as_u64().unwrap()));
    }

    // Twenty made-up nodes come up, each heartbeats a few times, then all fall silent and
    // go STALE and DOWN: 20 × (endpoint, ACTIVE, check, STALE, DOWN) events at least.
    let nodes: Vec<String> = (0..20).map(|i| format!("fake_{i}")).collect();
    let url = format!("http://{mgmt}/heartbeat");
    let secret = cluster.secret();
    for round in 1..=3u64 {
        for (i, node) in nodes.iter().enumerate() {
            let port = 40_000 + 10 * i as u16;
            let hb = json!({"instance_id": node, "node_type": "backend",
                "address": {"ip":"127.0.0.1","internal_port":port,"http_port":port+1,"mgmt_port":port+2},
                "boot_id": "boot", "seq": round, "metrics": {"connections": round}});
            let r = signed_post(&cluster.http, &secret, &url, hb.to_string())
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
        }
    }

    let tasks: Vec<_> = clients
        .into_iter()
        .map(|(mut ws, start)| {
            let nodes = nodes.clone();
            tokio::spawn(async move {
                let mut events = Vec::new();
                let mut down = std::collections::HashSet::new();
                let mut expected = start + 1;
                while down.len() < nodes.len() {
                    let m = ws
                        .next_within(Duration::from_secs(15))
                        .await
                        .expect("closed");
                    if m["type"] != "event" {
                        continue;
                    }
                    let seq = m["seq"].as_u64().unwrap();
                    assert_eq!(seq, expected, "gap or reorder: {m}");
                    expected += 1;
                    let d = &m["data"];
                    if m["event"] == "service_state_changed" && d["to"] == "DOWN" {
                        down.insert(d["service"].as_str().unwrap().to_owned());
                    }
                    events.push((
                        seq,
                        m["event"].as_str().unwrap().to_owned(),
                        d["service"].as_str().unwrap_or_default().to_owned(),
                        d["to"].as_str().unwrap_or_default().to_owned(),
                    ));
                }
                (start, events)
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    // Everyone saw the same events under the same numbers, from where each joined.
    let common_start = results.iter().map(|(s, _)| *s).max().unwrap();
    let reference: Vec<_> = results[0]
        .1
        .iter()
        .filter(|e| e.0 > common_start)
        .cloned()
        .collect();
    let last = reference.last().unwrap().0;
    for (i, (_, events)) in results.iter().enumerate() {
        let mine: Vec<_> = events
            .iter()
            .filter(|e| e.0 > common_start && e.0 <= last)
            .cloned()
            .collect();
        assert_eq!(mine, reference, "subscriber {i} saw a different stream");
    }
    for node in &nodes {
        let order: Vec<&str> = reference
            .iter()
            .filter(|e| e.1 == "service_state_changed" && e.2 == *node)
            .map(|e| e.3.as_str())
            .collect();
        assert_eq!(order, ["ACTIVE", "STALE", "DOWN"], "{node}");
        assert!(
            reference
                .iter()
                .any(|e| e.1 == "health_check_result" && e.2 == *node),
            "{node}: no health_check_result"
        );
    }
}
