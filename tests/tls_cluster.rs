//! A TLS cluster on loopback (DESIGN §15): `colony up --backends 2` with certificates from
//! `colony certs` runs a colony equal to the reference; a plaintext client gets nothing from
//! its ports; a client trusting the CA without a certificate reaches PING and the read-only
//! HTTP endpoints but its HELLO and node calls are refused and counted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use shared::sim::{run_reference, WorldParams};
use shared::tls::{Tls, TlsFiles};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `colony certs` for one node at 127.0.0.1 in `dir`.
fn certs(dir: &std::path::Path) -> TlsFiles {
    let out = std::process::Command::new(colony_bin())
        .args(["certs", "--out"])
        .arg(dir.join("pki"))
        .args(["--node", "local:127.0.0.1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    TlsFiles {
        cert: dir.join("pki/local.pem"),
        key: dir.join("pki/local-key.pem"),
        ca: dir.join("pki/ca.pem"),
    }
}

/// The `ip:port` after `label` (`control https://`, `data `) on `colony up`'s summary line
/// for `node`.
fn port_of(seen: &[String], node: &str, label: &str) -> String {
    let line = seen
        .iter()
        .find(|l| l.trim_start().starts_with(node) && l.contains(label))
        .unwrap_or_else(|| panic!("no {node} line in {seen:?}"));
    let rest = line.split(label).nth(1).unwrap();
    rest.split_whitespace().next().unwrap().to_owned()
}

/// A rustls client configuration that trusts the cluster CA and has no certificate: a
/// human's `openssl s_client -CAfile ca.pem` or `curl --cacert ca.pem`.
fn anonymous(ca: &std::path::Path) -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(shared::tls::roots(ca).unwrap())
        .with_no_client_auth()
}

/// The count of `colony_auth_refusals_total{plane, reason}` in a `/metrics` text.
fn refusals(metrics: &str, plane: &str, reason: &str) -> u64 {
    let prefix = format!("colony_auth_refusals_total{{plane=\"{plane}\",reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_runs_the_reference_colony_and_keeps_strangers_out() {
    let dir = tempfile::tempdir().unwrap();
    let files = certs(dir.path());
    let (cert, key, ca) = (
        files.cert.display().to_string(),
        files.key.display().to_string(),
        files.ca.display().to_string(),
    );
    let base = free_port_range(2).to_string();
    let registry = dir.path().display().to_string();
    let world = json!({"width_in_shards": 2, "height_in_shards": 2,
        "shard_width": 61, "shard_height": 37, "seed": 11, "density": 0.35});
    let start = world.to_string();
    let mut up = Proc::spawn(
        &[
            "up",
            "--backends",
            "2",
            "--base-port",
            &base,
            "--internal-port",
            "0",
            "--http-port",
            "0",
            "--mgmt-port",
            "0",
            "--heartbeat-interval",
            "100ms",
            "--registry-dir",
            &registry,
            "--start-body",
            &start,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-ca",
            &ca,
            "--tls-handshake-timeout",
            "2s",
        ],
        &[],
    );
    let dashboard =
        tokio::time::timeout(Duration::from_secs(90), up.wait_for("Dashboard: https://"))
            .await
            .expect("colony up over TLS did not come up");
    let mgmt = dashboard
        .split("https://")
        .nth(1)
        .unwrap()
        .trim()
        .trim_end_matches('/')
        .to_owned();
    let control = port_of(&up.seen, "coordinator", "control https://");
    let data = port_of(&up.seen, "backend_", "data ");

    // As a node: the test holds the node certificate for 127.0.0.1.
    let node = Tls::load(&files, Duration::from_secs(5)).unwrap();
    let http = shared::tls::http_client(Some(&node)).build().unwrap();
    let ticks = 40;
    let answer: Value = http
        .post(format!("https://{control}/colony/run"))
        .json(&json!({"ticks": ticks, "wait": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let params: WorldParams = serde_json::from_value(world).unwrap();
    let expected = run_reference(&params, ticks).unwrap();
    assert_eq!(answer["tick"], ticks, "{answer}");
    assert_eq!(answer["population"], expected.population, "{answer}");
    assert_eq!(
        answer["fingerprint"],
        expected.fingerprint.to_string(),
        "{answer}"
    );

    // Plaintext gets nothing from any TLS port.
    let plain = shared::tls::http_client(None)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for port in [&control, &mgmt] {
        let got = plain.get(format!("http://{port}/health")).send().await;
        assert!(got.is_err(), "plaintext HTTP answered on {port}: {got:?}");
    }
    let mut raw = TcpStream::connect(&data).await.unwrap();
    raw.write_all(b"PING\r\n").await.unwrap();
    let mut bytes = Vec::new();
    let cut = tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut bytes)).await;
    assert!(cut.is_ok(), "a plaintext data-plane client was not cut");
    assert!(!String::from_utf8_lossy(&bytes).contains("PONG"));

    // Trusting the CA without a certificate: PING and reads, but no node business.
    let config = Arc::new(anonymous(&files.ca));
    let tcp = TcpStream::connect(&data).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(tcp.peer_addr().unwrap().ip().into());
    let mut tls = tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    tls.write_all(b"PING\r\n").await.unwrap();
    tls.flush().await.unwrap();
    let n = tls.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("PONG"));
    tls.write_all(b"{\"type\":\"hello\",\"instance_id\":\"intruder\"}\n")
        .await
        .unwrap();
    tls.flush().await.unwrap();
    let n = tls.read(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(text.contains("not_a_node_certificate"), "{text}");

    let anyone = reqwest::Client::builder()
        .no_proxy()
        .use_preconfigured_tls((*config).clone())
        .build()
        .unwrap();
    let health = anyone
        .get(format!("https://{mgmt}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let secret = cluster_secret(dir.path());
    let body = json!({"instance_id": "intruder"}).to_string();
    let refused = signed_post(&anyone, &secret, &format!("https://{mgmt}/heartbeat"), body)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(refused["code"], "not_a_node_certificate", "{refused}");
    let metrics = anyone
        .get(format!("https://{mgmt}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        refusals(&metrics, "mgmt", "not_a_node_certificate"),
        1,
        "{metrics}"
    );
    // `colony status` reads a TLS coordinator with the flags, and cannot without them.
    let status = |tls: bool| {
        let mut cmd = std::process::Command::new(colony_bin());
        cmd.args(["status", "--registry-dir", &registry]);
        if tls {
            cmd.args(["--tls-cert", &cert, "--tls-key", &key, "--tls-ca", &ca]);
        }
        cmd.output().unwrap()
    };
    let with = status(true);
    assert!(with.status.success(), "{with:?}");
    assert!(
        String::from_utf8_lossy(&with.stdout).contains("overall: "),
        "{with:?}"
    );
    let without = status(false);
    assert!(!without.status.success(), "{without:?}");

    // The intruder's HELLO was refused on a backend's data plane: counted there.
    let backend_mgmt = port_of(&up.seen, "backend_", "mgmt https://");
    let metrics = anyone
        .get(format!("https://{backend_mgmt}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("colony_auth_refusals_total")
                && l.contains("not_a_node_certificate")
                && l.ends_with(" 1")),
        "{metrics}"
    );
}

#[test]
fn a_node_given_only_some_tls_flags_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    for role in ["coordinator", "backend"] {
        let out = std::process::Command::new(colony_bin())
            .args([role, "--registry-dir"])
            .arg(dir.path())
            .args([
                "--internal-port",
                "0",
                "--http-port",
                "0",
                "--mgmt-port",
                "0",
            ])
            .args(["--tls-cert", "node.pem", "--tls-ca", "ca.pem"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{role}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("all three of --tls-cert, --tls-key and --tls-ca"),
            "{role}: {stderr}"
        );
    }
}
