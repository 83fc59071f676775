//! Whole-cluster health over real processes: registration files, heartbeats, LEFT on a
//! graceful stop, STALE then DOWN on a crash, recovery, and bad heartbeats.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[tokio::test]
async fn start_order_does_not_matter_and_a_graceful_stop_is_left() {
    let mut cluster = Cluster::new();
    // Backends first, then the coordinator, then one more backend.
    cluster.start_backend(&["--heartbeat-interval", "100ms"]);
    cluster.start_backend(&["--heartbeat-interval", "100ms"]);
    cluster.backends[0]
        .wait_for("waiting for the coordinator")
        .await;
    cluster.start_coordinator(&[]);
    cluster.start_backend(&["--heartbeat-interval", "100ms"]);

    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(cluster.backend_identity(i).await.0);
    }
    // Every registry file holds the exact JSON form.
    let coordinator = cluster.coordinator_address().await;
    let text = std::fs::read_to_string(cluster.ssm_dir().join("coordinator.json")).unwrap();
    assert_eq!(
        text,
        format!(
            r#"{{"ip":"127.0.0.1","internal_port":{},"http_port":{},"mgmt_port":{}}}"#,
            coordinator["internal_port"], coordinator["http_port"], coordinator["mgmt_port"]
        )
    );
    for id in &ids {
        let path = cluster.ssm_dir().join(format!("backends/{id}.json"));
        let text = eventually(DEADLINE, "backend file", || {
            let path = path.clone();
            async move { std::fs::read_to_string(path).ok() }
        })
        .await;
        let port: u16 = id.trim_start_matches("backend_").parse().unwrap();
        assert!(
            text.starts_with(&format!(
                r#"{{"ip":"127.0.0.1","internal_port":{port},"http_port":"#
            )),
            "{text}"
        );
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed.as_object().unwrap().len(), 4);
    }

    let health = eventually(DEADLINE, "3 ACTIVE backends", || async {
        let h = cluster.health().await;
        let active = h["components"]
            .as_array()?
            .iter()
            .filter(|c| c["type"] == "backend" && c["status"] == "ACTIVE")
            .count();
        (active == 3).then_some(h)
    })
    .await;
    assert_eq!(health["overall_status"], "HEALTHY");

    // SIGTERM: the file goes, the node is LEFT within a second, and no alert is raised.
    let stopped = Instant::now();
    cluster.backends[1].signal("TERM");
    eventually(Duration::from_secs(1), "LEFT", || async {
        let c = cluster.component(&ids[1]).await?;
        (c["status"] == "LEFT").then_some(())
    })
    .await;
    assert!(stopped.elapsed() < Duration::from_secs(1));
    let status = cluster.backends[1].child.wait().await.unwrap();
    assert!(status.success());
    assert!(!cluster
        .ssm_dir()
        .join(format!("backends/{}.json", ids[1]))
        .exists());
    let alerts = cluster.get_json(&cluster.mgmt_url("/alerts").await).await;
    assert_eq!(alerts["open"], json!([]));
    assert_eq!(alerts["resolved"], json!([]));
    assert_eq!(cluster.health().await["overall_status"], "HEALTHY");
}

#[tokio::test]
async fn a_crash_goes_stale_then_down_and_a_restart_recovers() {
    let mut cluster = Cluster::new();
    cluster.start_coordinator(&["--stale-after", "300ms", "--down-after", "1s"]);
    cluster.start_backend(&["--heartbeat-interval", "100ms"]);
    let (id, _) = cluster.backend_identity(0).await;
    let component = eventually(DEADLINE, "ACTIVE", || async {
        let c = cluster.component(&id).await?;
        (c["status"] == "ACTIVE").then_some(c)
    })
    .await;
    let ports = [
        component["address"]["internal_port"].to_string(),
        component["address"]["http_port"].to_string(),
        component["address"]["mgmt_port"].to_string(),
    ];

    cluster.backends[0].signal("KILL");
    let killed = Instant::now();
    eventually(Duration::from_millis(500), "STALE within 500ms", || async {
        let c = cluster.component(&id).await?;
        (c["status"] == "STALE").then_some(())
    })
    .await;
    eventually(
        Duration::from_millis(1500).saturating_sub(killed.elapsed()),
        "DOWN within 1.5s",
        || async {
            let c = cluster.component(&id).await?;
            (c["status"] == "DOWN").then_some(())
        },
    )
    .await;
    let alerts = cluster.get_json(&cluster.mgmt_url("/alerts").await).await;
    let kinds: Vec<_> = alerts["open"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["node_id"] == id.as_str())
        .map(|a| a["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["node_stale", "node_down"]);
    assert_eq!(cluster.health().await["overall_status"], "DEGRADED");
    // The registry entry stays: a crash does not unregister.
    assert!(cluster
        .ssm_dir()
        .join(format!("backends/{id}.json"))
        .exists());

    // Same ports again.
    cluster.start_backend(&[
        "--heartbeat-interval",
        "100ms",
        "--internal-port",
        &ports[0],
        "--http-port",
        &ports[1],
        "--mgmt-port",
        &ports[2],
    ]);
    eventually(DEADLINE, "ACTIVE again", || async {
        let c = cluster.component(&id).await?;
        (c["status"] == "ACTIVE").then_some(())
    })
    .await;
    let alerts = cluster.get_json(&cluster.mgmt_url("/alerts").await).await;
    assert_eq!(alerts["open"], json!([]));
    assert_eq!(alerts["resolved"].as_array().unwrap().len(), 2);
    assert_eq!(cluster.health().await["overall_status"], "HEALTHY");
    let metrics = cluster.metrics_text().await;
    assert!(
        metrics.contains("colony_nodes{state=\"ACTIVE\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn bad_heartbeats_get_a_4xx_and_change_nothing() {
    let mut cluster = Cluster::new();
    cluster.start_coordinator(&[]);
    let url = cluster.mgmt_url("/heartbeat").await;
    let secret = cluster.secret();
    let address = json!({"ip":"127.0.0.1","internal_port":1,"http_port":2,"mgmt_port":3});
    let bodies = [
        json!({"node_type":"backend","address":address,"seq":1}).to_string(),
        json!({"instance_id":"b","node_type":"backend","address":address,"seq":"x"}).to_string(),
        json!({"instance_id":"b","node_type":"fridge","address":address,"seq":1}).to_string(),
        json!({"instance_id":"b","node_type":"backend","address":{"ip":"nope"},"seq":1})
            .to_string(),
        "[1,2,3".to_owned(),
    ];
    for body in bodies {
        // A fresh connection per case: the server may close one after refusing a huge body.
        let http = shared::tls::http_client(None).no_proxy().build().unwrap();
        let response = signed_post(&http, &secret, &url, body.clone())
            .send()
            .await
            .unwrap();
        let status = response.status();
        assert!(status.is_client_error(), "{status} for {:.80}", body);
        let answer: serde_json::Value = response.json().await.unwrap();
        assert!(
            answer["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{answer}"
        );
    }
    // A huge body: the server answers 413 as soon as the limit is crossed and may close
    // before the client has written it all, so write and read at once over raw HTTP.
    let a = cluster.coordinator_address().await;
    let mgmt = format!("{}:{}", a["ip"].as_str().unwrap(), a["mgmt_port"]);
    let socket = tokio::net::TcpStream::connect(&mgmt).await.unwrap();
    let (mut read, mut write) = socket.into_split();
    let size = 4 * 1024 * 1024;
    let signature =
        shared::signing::RequestSigner::new(&secret).sign("POST", "/heartbeat", &vec![b' '; size]);
    let head = format!(
        "POST /heartbeat HTTP/1.1\r\nHost: {mgmt}\r\nContent-Type: application/json\r\nColony-Signature: {signature}\r\nContent-Length: {size}\r\n\r\n"
    );
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        write.write_all(head.as_bytes()).await?;
        write.write_all(&vec![b' '; size]).await
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        DEADLINE,
        tokio::io::AsyncReadExt::read_to_end(&mut read, &mut answer),
    )
    .await;
    let _ = writer.await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"error\""), "{answer}");

    let health = cluster.health().await;
    assert_eq!(health["total_components"], 1, "{health}");
    let unknown = cluster
        .get_json(&cluster.mgmt_url("/no/such/route").await)
        .await;
    assert!(unknown["error"].as_str().unwrap().contains("no route"));
}

#[tokio::test]
async fn status_prints_every_node() {
    let mut cluster = Cluster::new();
    cluster.start_coordinator(&[]);
    cluster.start_backend(&["--heartbeat-interval", "100ms"]);
    let (id, internal) = cluster.backend_identity(0).await;
    eventually(DEADLINE, "ACTIVE", || async {
        let c = cluster.component(&id).await?;
        (c["status"] == "ACTIVE").then_some(())
    })
    .await;
    let out = colony_command()
        .args(["status", "--registry-dir", &cluster.registry_dir()])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    let row = table
        .lines()
        .find(|l| l.starts_with(&id))
        .expect("backend row");
    assert!(row.contains("ACTIVE") && row.contains(&internal), "{table}");
    assert!(table.contains("overall: HEALTHY"), "{table}");

    // With no coordinator registered, status says so and fails.
    let empty = tempfile::tempdir().unwrap();
    let out = colony_command()
        .args([
            "status",
            "--registry-dir",
            &empty.path().display().to_string(),
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no coordinator registered"));
}
