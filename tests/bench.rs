//! `colony bench` against a real backend: `ping` prints a sane table and JSON (structure and
//! non-zero throughput, never speed), `--compare raw` measures the built-in echo too, and a
//! non-loopback target is refused without `--allow-remote`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::Value;

/// Runs `colony bench ARGS` to the end; returns (success, stdout, stderr).
async fn bench(args: &[&str]) -> (bool, String, String) {
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        colony_command().arg("bench").args(args).output(),
    )
    .await
    .expect("colony bench did not stop by itself")
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `colony bench ARGS` briefly (300 ms, one repeat) with `--json`; it must succeed.
/// Returns the JSON objects it printed, and the raw output for messages.
async fn bench_json(args: &[&str]) -> (Vec<Value>, String) {
    let brief = [
        "--duration",
        "300ms",
        "--warmup",
        "100ms",
        "--repeat",
        "1",
        "--json",
    ];
    let all: Vec<&str> = args.iter().chain(brief.iter()).copied().collect();
    let (ok, stdout, stderr) = bench(&all).await;
    assert!(ok, "{stderr}");
    let lines = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (lines, stdout)
}

/// A cluster of one backend, its data-plane address and its pid.
async fn backend_data_address() -> (Cluster, String, String) {
    let mut cluster = Cluster::new();
    cluster.start_coordinator(&[]);
    let i = cluster.start_backend(&[]);
    let (_, internal) = cluster.backend_identity(i).await;
    let pid = cluster.backends[i].pid().to_string();
    (cluster, internal, pid)
}

#[tokio::test]
async fn ping_prints_json_per_result_and_the_ratio_to_the_raw_echo() {
    let (_cluster, target, _) = backend_data_address().await;
    let (lines, stdout) = bench_json(&[
        "ping",
        "--target",
        &target,
        "--connections",
        "2",
        "--depth",
        "4",
        "--compare",
        "raw",
    ])
    .await;
    assert_eq!(lines.len(), 3, "{stdout}");
    for (line, target) in lines.iter().zip(["colony", "raw"]) {
        assert_eq!(line["bench"], "ping", "{line}");
        assert_eq!(line["target"], target, "{line}");
        assert_eq!(line["load"], "2x4", "{line}");
        assert_eq!(line["repeats"], 1, "{line}");
        assert!(line["throughput_median"].as_f64().unwrap() > 0.0, "{line}");
        assert!(line["p50_us"].as_f64().unwrap() > 0.0, "{line}");
        assert!(line["p99_us"].as_f64().unwrap() >= line["p50_us"].as_f64().unwrap());
    }
    assert_eq!(lines[0]["addr"], target.as_str());
    // No --pid: no CPU figure.
    assert!(lines[0]["server_cpu_us_per_request"].is_null(), "{stdout}");
    assert_eq!(lines[2]["to"], "raw");
    assert!(lines[2]["ratio"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn ping_prints_a_table_with_median_and_range() {
    let (_cluster, target, pid) = backend_data_address().await;
    let (ok, stdout, stderr) = bench(&[
        "ping",
        "--target",
        &target,
        "--duration",
        "300ms",
        "--repeat",
        "2",
        "--pid",
        &pid,
    ])
    .await;
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].contains("median") && lines[0].contains("p99 µs"));
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        &row[..5],
        ["ping", "colony", target.as_str(), "1x1", "req/s"],
        "{stdout}"
    );
    assert!(row[5].parse::<f64>().unwrap() > 0.0, "{stdout}");
    assert!(row[6].contains(".."), "{stdout}");
    // The backend's CPU per request, read from /proc because its pid was given.
    let cpu: f64 = row[9]
        .parse()
        .unwrap_or_else(|_| panic!("no cpu µs/req: {stdout}"));
    assert!(cpu >= 0.0, "{stdout}");
}

#[tokio::test]
async fn a_remote_target_is_refused_without_allow_remote() {
    // A documentation address (TEST-NET-1): refused before any connection is tried.
    let (ok, stdout, stderr) = bench(&[
        "ping",
        "--target",
        "192.0.2.1:8082",
        "--duration",
        "300ms",
        "--repeat",
        "1",
    ])
    .await;
    assert!(!ok);
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("--allow-remote"), "{stderr}");
    let (ok, _, stderr) = bench(&[
        "ping",
        "--target",
        "127.0.0.1:1",
        "--compare",
        "redis://192.0.2.1:6379",
    ])
    .await;
    assert!(!ok);
    assert!(stderr.contains("--allow-remote"), "{stderr}");
}

#[tokio::test]
async fn ticks_measures_a_colony_and_checks_it_against_the_reference() {
    let mut cluster = Cluster::new();
    cluster.start_coordinator(&[]);
    for _ in 0..2 {
        cluster.start_backend(&["--heartbeat-interval", "100ms"]);
    }
    let a = cluster.coordinator_address().await;
    let control = format!("{}:{}", a["ip"].as_str().unwrap(), a["http_port"]);
    cluster.backends_active(2).await;
    let (lines, stdout) = bench_json(&[
        "ticks",
        "--control",
        &control,
        "--width-in-shards",
        "2",
        "--height-in-shards",
        "2",
        "--shard-width",
        "32",
        "--shard-height",
        "32",
    ])
    .await;
    assert_eq!(lines.len(), 3, "{stdout}");
    assert_eq!(lines[0]["unit"], "ticks/s");
    assert_eq!(lines[1]["unit"], "cells/s");
    assert_eq!(lines[0]["load"], "2x2 of 32x32");
    let ticks = lines[0]["throughput_median"].as_f64().unwrap();
    assert!(ticks > 0.0, "{stdout}");
    let cells = lines[1]["throughput_median"].as_f64().unwrap();
    assert!(
        (cells - ticks * 4096.0).abs() <= 1e-9 * cells,
        "cells/s is not ticks/s x 4096: {stdout}"
    );
    assert!(lines[0]["p50_us"].is_null());
    assert_eq!(lines[2]["reference"], "match", "{stdout}");
    assert!(lines[2]["tick"].as_u64().unwrap() > 0, "{stdout}");
}
