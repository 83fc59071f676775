//! `colony bench` against real nodes: every subcommand prints a sane table and JSON
//! (structure and non-zero throughput, never speed); `ping --compare` measures the built-in
//! echo and a real nats-server too; `frames` presents the operator token and `heartbeats`
//! the cluster secret as nodes do (a wrong one fails); `registry` leaves the registry as it
//! was; a non-loopback target is refused without `--allow-remote`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::Value;

/// Runs `colony bench ARGS` to the end; returns (success, stdout, stderr).
/// `args` is split at whitespace (the temp paths tests pass have none).
async fn bench(args: &str) -> (bool, String, String) {
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        colony_command()
            .arg("bench")
            .args(args.split_whitespace())
            .output(),
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

/// A brief run: 300 ms measured, once.
const BRIEF: &str = "--duration 300ms --warmup 100ms --repeat 1";

/// Runs `colony bench ARGS` briefly (300 ms, one repeat) with `--json`; it must succeed.
/// Returns the JSON objects it printed, and the raw output for messages.
async fn bench_json(args: &str) -> (Vec<Value>, String) {
    let (ok, stdout, stderr) = bench(&format!("{args} {BRIEF} --json")).await;
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
    let (lines, stdout) = bench_json(&format!(
        "ping --target {target} --connections 2 --depth 4 --compare raw"
    ))
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
    let (ok, stdout, stderr) = bench(&format!(
        "ping --target {target} --duration 300ms --repeat 2 --pid {pid}"
    ))
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
    let (ok, stdout, stderr) =
        bench("ping --target 192.0.2.1:8082 --duration 300ms --repeat 1").await;
    assert!(!ok);
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("--allow-remote"), "{stderr}");
    let (ok, _, stderr) = bench("ping --target 127.0.0.1:1 --compare redis://192.0.2.1:6379").await;
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
    let (lines, stdout) = bench_json(&format!(
        "ticks --control {control} --width-in-shards 2 --height-in-shards 2 \
         --shard-width 32 --shard-height 32"
    ))
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

/// A cluster of a coordinator alone, and its management address.
async fn coordinator_mgmt() -> (Cluster, String) {
    let mut cluster = Cluster::new();
    cluster.start_coordinator(&[]);
    let a = cluster.coordinator_address().await;
    let mgmt = format!("{}:{}", a["ip"].as_str().unwrap(), a["mgmt_port"]);
    (cluster, mgmt)
}

/// The backends the cluster's file registry lists, sorted.
fn registered_backends(cluster: &Cluster) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(cluster.ssm_dir().join("backends"))
        .into_iter()
        .flatten()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Waits until the registry lists `n` backends; their names.
async fn backends_registered(cluster: &Cluster, n: usize) -> Vec<String> {
    eventually(DEADLINE, &format!("{n} backends registered"), || async {
        let names = registered_backends(cluster);
        (names.len() == n).then_some(names)
    })
    .await
}

/// Asserts a table of `colony bench` output: the header, then one row per `(bench, target,
/// unit)` with a non-zero median and a range, then `notes` lines.
fn assert_table(stdout: &str, rows: &[(&str, &str, &str)], notes: usize) {
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1 + rows.len() + notes, "{stdout}");
    assert!(
        lines[0].contains("median") && lines[0].contains("p99 µs"),
        "{stdout}"
    );
    for (line, (bench, target, unit)) in lines[1..].iter().zip(rows) {
        let row: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(&row[..2], [*bench, *target], "{stdout}");
        assert_eq!(row[4], *unit, "{stdout}");
        assert!(row[5].parse::<f64>().unwrap() > 0.0, "{stdout}");
        assert!(row[6].contains(".."), "{stdout}");
    }
}

/// Asserts `line` is a result of `bench`/`target` in `unit` with non-zero throughput and
/// ordered latency percentiles (never a speed).
fn assert_result(line: &Value, bench: &str, target: &str, unit: &str) {
    assert_eq!(line["bench"], bench, "{line}");
    assert_eq!(line["target"], target, "{line}");
    assert_eq!(line["unit"], unit, "{line}");
    assert_eq!(line["repeats"], 1, "{line}");
    assert!(line["throughput_median"].as_f64().unwrap() > 0.0, "{line}");
    let p50 = line["p50_us"].as_f64().unwrap();
    assert!(p50 > 0.0, "{line}");
    assert!(line["p99_us"].as_f64().unwrap() >= p50, "{line}");
}

#[tokio::test]
async fn frames_finds_the_backend_in_the_registry_and_reports_frames_and_bytes() {
    let (cluster, _, pid) = backend_data_address().await;
    let dir = cluster.registry_dir();
    backends_registered(&cluster, 1).await;
    // No --target: the first backend the registry lists.
    let (lines, stdout) = bench_json(&format!(
        "frames --registry-dir {dir} --connections 2 --depth 2 --size 1024 --pid {pid}"
    ))
    .await;
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_result(&lines[0], "frames", "colony", "frames/s");
    assert_result(&lines[1], "frames", "colony", "MB/s");
    assert_eq!(lines[0]["load"], "2x2x1024B");
    // Both directions: 2 × 1024 payload bytes per frame.
    let frames = lines[0]["throughput_median"].as_f64().unwrap();
    let mb = lines[1]["throughput_median"].as_f64().unwrap();
    assert!((mb - frames * 2048.0 / 1e6).abs() <= 1e-9 * mb, "{stdout}");
    assert!(lines[0]["server_cpu_us_per_request"].as_f64().is_some());
}

#[tokio::test]
async fn frames_presents_the_operator_token_to_a_node_that_protects_reads() {
    let mut cluster = Cluster::new();
    cluster.start_coordinator(&[]);
    let token = cluster.dir.path().join("operator.token");
    std::fs::write(&token, "bench-operator-token-0123456789").unwrap();
    let token = token.display().to_string();
    let i = cluster.start_backend(&["--protect-reads", "--operator-token-file", &token]);
    let (_, target) = cluster.backend_identity(i).await;
    let (ok, _, stderr) = bench(&format!("frames --target {target} {BRIEF}")).await;
    assert!(!ok, "echo answered without the token");
    assert!(stderr.contains("TOKEN <operator token>"), "{stderr}");
    let (lines, stdout) = bench_json(&format!(
        "frames --target {target} --operator-token-file {token}"
    ))
    .await;
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_result(&lines[0], "frames", "colony", "frames/s");
}

#[tokio::test]
async fn heartbeats_over_the_channel_and_post_side_by_side_and_the_nodes_leave() {
    let (cluster, mgmt) = coordinator_mgmt().await;
    let dir = cluster.registry_dir();
    // The secret as the nodes take it: the file registry's output/cluster.key.
    let (lines, stdout) = bench_json(&format!(
        "heartbeats --target {mgmt} --registry-dir {dir} --nodes 4 --nodes-per-connection 2"
    ))
    .await;
    assert_eq!(lines.len(), 3, "{stdout}");
    assert_result(&lines[0], "heartbeats", "channel", "hb/s");
    assert_result(&lines[1], "heartbeats", "post", "hb/s");
    assert_eq!(lines[0]["load"], "4n/4c");
    assert_eq!(lines[1]["load"], "4n/2c");
    assert_eq!(lines[2]["of"], "channel");
    assert_eq!(lines[2]["to"], "post");
    assert!(lines[2]["ratio"].as_f64().unwrap() > 0.0);
    // The simulated nodes said goodbye: LEFT, not ACTIVE or alerting later.
    let health = cluster.health().await;
    let simulated: Vec<&Value> = health["components"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["node_id"].as_str().unwrap().starts_with("bench_"))
        .collect();
    assert_eq!(simulated.len(), 4, "{health}");
    assert!(simulated.iter().all(|c| c["status"] == "LEFT"), "{health}");
}

#[tokio::test]
async fn heartbeats_signed_with_another_secret_fail_the_bench() {
    let (cluster, mgmt) = coordinator_mgmt().await;
    let wrong = cluster.dir.path().join("wrong.key");
    std::fs::write(&wrong, "not-the-cluster-secret-at-all-0123").unwrap();
    let wrong = wrong.display().to_string();
    for transport in ["channel", "post"] {
        let (ok, stdout, stderr) = bench(&format!(
            "heartbeats --target {mgmt} --secret-file {wrong} --transport {transport} {BRIEF}"
        ))
        .await;
        assert!(!ok, "{transport}: {stdout}");
        assert!(
            stderr.contains("the coordinator refused a heartbeat")
                && stderr.contains("unknown_key"),
            "{transport}: {stderr}"
        );
    }
}

#[tokio::test]
async fn heartbeats_print_a_table_row_per_transport() {
    let (cluster, mgmt) = coordinator_mgmt().await;
    let dir = cluster.registry_dir();
    let (ok, stdout, stderr) = bench(&format!(
        "heartbeats --target {mgmt} --registry-dir {dir} --duration 300ms --repeat 2"
    ))
    .await;
    assert!(ok, "{stderr}");
    assert_table(
        &stdout,
        &[
            ("heartbeats", "channel", "hb/s"),
            ("heartbeats", "post", "hb/s"),
        ],
        1,
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[3].starts_with("ratio channel / post: "), "{stdout}");
}

#[tokio::test]
async fn registry_measures_register_and_discover_and_leaves_the_registry_as_it_was() {
    let (cluster, _, _) = backend_data_address().await;
    let dir = cluster.registry_dir();
    let before = backends_registered(&cluster, 1).await;
    let (lines, stdout) = bench_json(&format!(
        "registry --registry file --registry-dir {dir} --workers 2"
    ))
    .await;
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_result(&lines[0], "registry", "register", "ops/s");
    assert_result(&lines[1], "registry", "discover", "ops/s");
    assert_eq!(lines[0]["load"], "2w");
    assert_eq!(
        registered_backends(&cluster),
        before,
        "the fake backends were not removed"
    );
}

/// Where Debian's nats-server is, if installed.
fn nats_server() -> Option<std::path::PathBuf> {
    ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
}

#[tokio::test]
async fn ping_compares_against_a_real_nats_server() {
    let Some(binary) = nats_server() else {
        // CI installs it (scripts/setup.sh); there a missing server is a failure.
        assert!(
            std::env::var_os("CI").is_none(),
            "nats-server is not installed: run scripts/setup.sh"
        );
        eprintln!("SKIPPED: nats-server is not installed here (scripts/setup.sh installs it)");
        return;
    };
    let port = shared::test_support::free_port();
    // Dies with this test however it ends (pdeathsig), and on drop.
    let mut nats = tokio::process::Command::new("setpriv")
        .args(["--pdeathsig", "KILL"])
        .arg(&binary)
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    eventually(
        std::time::Duration::from_secs(10),
        "nats-server listening",
        || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
        },
    )
    .await;
    let (_cluster, target, _) = backend_data_address().await;
    let nats_pid = nats.id().unwrap().to_string();
    let compare = format!("nats://127.0.0.1:{port}");
    let (lines, stdout) = bench_json(&format!(
        "ping --target {target} --connections 2 --depth 2 --compare {compare} \
         --compare-pid {nats_pid}"
    ))
    .await;
    assert_eq!(lines.len(), 3, "{stdout}");
    assert_result(&lines[0], "ping", "colony", "req/s");
    assert_result(&lines[1], "ping", "nats", "req/s");
    assert_eq!(lines[1]["addr"], format!("127.0.0.1:{port}"));
    assert!(lines[1]["server_cpu_us_per_request"].as_f64().is_some());
    assert_eq!(lines[2]["to"], "nats");
    assert!(lines[2]["ratio"].as_f64().unwrap() > 0.0);
    nats.kill().await.unwrap();
}

#[tokio::test]
async fn frames_and_registry_print_tables() {
    let (cluster, target, _) = backend_data_address().await;
    let dir = cluster.registry_dir();
    backends_registered(&cluster, 1).await;
    let brief = "--duration 300ms --warmup 50ms --repeat 2";
    let (ok, stdout, stderr) = bench(&format!("frames --target {target} {brief}")).await;
    assert!(ok, "{stderr}");
    assert_table(
        &stdout,
        &[
            ("frames", "colony", "frames/s"),
            ("frames", "colony", "MB/s"),
        ],
        0,
    );
    let (ok, stdout, stderr) = bench(&format!("registry --registry-dir {dir} {brief}")).await;
    assert!(ok, "{stderr}");
    assert_table(
        &stdout,
        &[
            ("registry", "register", "ops/s"),
            ("registry", "discover", "ops/s"),
        ],
        0,
    );
}
