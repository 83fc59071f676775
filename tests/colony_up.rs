//! `colony up` as a user runs it: the whole cluster comes up and starts a colony; SIGINT,
//! SIGHUP or even SIGKILL leaves no child process and no registry entry behind, and the next
//! `colony up` starts on the same ports; a backend that fails is restarted unless told not to.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// A small world, so starting a colony costs little.
const SMALL_WORLD: &str =
    r#"{"width_in_shards":3,"height_in_shards":2,"shard_width":16,"shard_height":16}"#;

/// A base port whose next `backends * 10` ports are free, below the ephemeral range.
fn free_base(backends: u16) -> u16 {
    free_port_range(backends)
}

/// Pids of the direct children of `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        out.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    out
}

fn alive(pid: u32) -> bool {
    // A reaped child has no /proc entry; a zombie would still be listed, so check its state.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or_default()
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

#[tokio::test]
async fn up_starts_a_colony_and_sigint_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_base(2).to_string();
    let registry_dir = dir.path().display().to_string();
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
            &registry_dir,
            "--start-body",
            SMALL_WORLD,
            "--grace",
            "3s",
        ],
        &[],
    );
    let dashboard = up.wait_for("Dashboard: http://").await;
    assert!(dashboard.trim_end().ends_with('/'), "{dashboard}");
    let coordinator = up.wait_for("coordinator    data").await;
    let control = coordinator
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_owned();
    let client = shared::tls::http_client(None).no_proxy().build().unwrap();
    let topology: serde_json::Value = client
        .get(format!("{control}/topology"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(topology["placement"].as_array().unwrap().len(), 6);
    assert_eq!(topology["backends"].as_array().unwrap().len(), 2);

    let pid = up.child.id().unwrap();
    let kids = children(pid);
    assert_eq!(kids.len(), 2, "backend children: {kids:?}");
    let backends_dir = dir.path().join("output/ssm/backends");
    assert_eq!(std::fs::read_dir(&backends_dir).unwrap().count(), 2);

    up.signal("INT");
    let status = tokio::time::timeout(DEADLINE, up.child.wait())
        .await
        .expect("colony up did not exit after SIGINT")
        .unwrap();
    assert!(status.success(), "{status:?}");
    for kid in kids {
        assert!(!alive(kid), "backend {kid} outlived colony up");
    }
    assert_eq!(std::fs::read_dir(&backends_dir).unwrap().count(), 0);
    assert!(!dir.path().join("output/ssm/coordinator.json").exists());
    // Each backend logged to its own file.
    let logs: Vec<_> = std::fs::read_dir(dir.path().join("output/logs"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(logs.len(), 2);
}

#[tokio::test]
async fn up_fails_clearly_when_a_backend_port_is_taken() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_base(1);
    let _squatter = TcpListener::bind(("127.0.0.1", base)).unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        colony_command()
            .args([
                "up",
                "--backends",
                "1",
                "--base-port",
                &base.to_string(),
                "--internal-port",
                "0",
                "--http-port",
                "0",
                "--mgmt-port",
                "0",
                "--registry-dir",
                &dir.path().display().to_string(),
            ])
            .output(),
    )
    .await
    .expect("colony up hung on a taken port")
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("exited during start"), "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{base}")), "{stderr}");
}

/// The registry entries under `dir`: backend instance ids, and whether the coordinator's is
/// there.
fn registry_entries(dir: &Path) -> (Vec<String>, bool) {
    let ssm = dir.join("output/ssm");
    let backends = std::fs::read_dir(ssm.join("backends"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    (backends, ssm.join("coordinator.json").exists())
}

/// `colony up` (two backends, coordinator on fixed ports) gets `signal`; within seconds no
/// process of it runs and the registry is empty; then `colony up` starts again on the same
/// ports and registry.
async fn killed_up_leaves_nothing_and_starts_again(signal: &str) {
    let backends = 2;
    // One more block of ten ports for the coordinator, so the second run can reuse them.
    let base = free_port_range(backends + 1);
    let c = base + 10 * backends;
    let coordinator = [c, c + 1, c + 2];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let args = ["--start-body", SMALL_WORLD];
    let up = Up::start_at(dir, base, coordinator, backends, &args).await;
    assert_eq!(up.mgmt, format!("127.0.0.1:{}", c + 2));
    let pid = up.proc.pid();
    let kids = children(pid);
    assert_eq!(kids.len(), 2, "backend children: {kids:?}");
    let (entries, coordinator_entry) = registry_entries(&path);
    assert_eq!((entries.len(), coordinator_entry), (2, true));

    up.proc.signal(signal);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let running: Vec<u32> = std::iter::once(pid)
            .chain(kids.iter().copied())
            .filter(|p| alive(*p))
            .collect();
        let entries = registry_entries(&path);
        if running.is_empty() && entries == (vec![], false) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "after SIG{signal}: still running {running:?}, registry (backends, coordinator) {entries:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let Up { proc, dir, .. } = up;
    drop(proc);
    let again = Up::start_at(dir, base, coordinator, backends, &args).await;
    assert_eq!(again.mgmt, format!("127.0.0.1:{}", c + 2));
    assert_eq!(children(again.proc.pid()).len(), 2);
    assert_eq!(registry_entries(&path).0.len(), 2);
}

#[tokio::test]
async fn sighup_stops_everything_and_up_starts_again() {
    killed_up_leaves_nothing_and_starts_again("HUP").await;
}

#[tokio::test]
async fn sigkill_leaves_no_backend_and_no_entry_and_up_starts_again() {
    killed_up_leaves_nothing_and_starts_again("KILL").await;
}

#[tokio::test]
async fn leftover_entries_of_dead_nodes_are_removed_and_a_live_coordinator_is_not_displaced() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_port_range(1);
    // A previous run's entries, at an address where nothing listens any more.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let entry =
        json!({"ip": "127.0.0.1", "internal_port": port, "http_port": port, "mgmt_port": port});
    let ssm = dir.path().join("output/ssm");
    std::fs::create_dir_all(ssm.join("backends")).unwrap();
    std::fs::write(ssm.join("coordinator.json"), entry.to_string()).unwrap();
    std::fs::write(
        ssm.join("backends").join(format!("backend_{base}.json")),
        entry.to_string(),
    )
    .unwrap();
    let path = dir.path().display().to_string();
    let mut up = Up::start_at(dir, base, [0, 0, 0], 1, &["--no-start"]).await;
    up.proc
        .wait_for("removed a leftover coordinator entry: its node does not answer")
        .await;
    up.proc
        .wait_for("removed a leftover backend entry: its node does not answer")
        .await;
    let registered: Value =
        serde_json::from_str(&std::fs::read_to_string(ssm.join("coordinator.json")).unwrap())
            .unwrap();
    assert_eq!(
        format!("127.0.0.1:{}", registered["mgmt_port"]),
        up.mgmt,
        "the coordinator entry is not the new one"
    );

    // A second cluster on the same registry would take over the live one's entry: refused.
    let other = free_port_range(1).to_string();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        colony_command()
            .args([
                "up",
                "--backends",
                "1",
                "--base-port",
                &other,
                "--internal-port",
                "0",
                "--http-port",
                "0",
                "--mgmt-port",
                "0",
                "--registry-dir",
                &path,
            ])
            .output(),
    )
    .await
    .expect("a second colony up hung")
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("a coordinator already runs at") && stderr.contains(&up.mgmt),
        "{stderr}"
    );
}

/// The managed process of `name` as `/ws` `list_services` shows it.
async fn process_of(ws: &mut WsClient, name: &str) -> Value {
    let r = ws.request("list_services", json!({})).await;
    r["data"]["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no service {name}: {r}"))
        .clone()
}

fn kill_9(pid: u64) {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn a_backend_killed_with_sigkill_is_restarted_and_active_again() {
    let up = Up::start(2, &["--no-start"]).await;
    let target = up.backend(1);
    let mut ws = WsClient::connect(&up.mgmt, "").await;
    ws.next().await;
    let before = process_of(&mut ws, &target).await;
    assert_eq!(
        before["process"]["restart_policy"], "on-failure",
        "{before}"
    );
    let old_pid = before["process"]["pid"].as_u64().unwrap();

    kill_9(old_pid);
    let about = |to: &'static str| {
        let target = target.clone();
        move |d: &Value| d["service"] == target.as_str() && d["kind"] == "process" && d["to"] == to
    };
    let failed = ws
        .event_where("service_state_changed", DEADLINE, about("restarting"))
        .await;
    let process = &failed["data"]["process"];
    assert_eq!(process["failures"], 1, "{failed}");
    assert!(process["pid"].is_null(), "{failed}");
    assert!(process["restart_at"].is_string(), "{failed}");
    assert!(
        process["last_exit"].as_str().unwrap().contains("signal: 9"),
        "{failed}"
    );
    let back = ws
        .event_where("service_state_changed", DEADLINE, about("running"))
        .await;
    let new_pid = back["data"]["process"]["pid"].as_u64().unwrap();
    assert_ne!(new_pid, old_pid);
    let started_at = back["data"]["process"]["started_at"]
        .as_str()
        .unwrap()
        .to_owned();

    // The new process heartbeats: ACTIVE, heard from after it started (RFC 3339 with
    // milliseconds, all UTC, so the strings order as the times do).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let service = loop {
        let s = process_of(&mut ws, &target).await;
        let heard = s["health"]["last_seen"].as_str().unwrap_or_default();
        if s["state"] == "ACTIVE" && heard > started_at.as_str() {
            break s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the restarted backend is not ACTIVE: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let process = &service["process"];
    assert_eq!(process["state"], "running", "{service}");
    assert_eq!(process["pid"].as_u64(), Some(new_pid));
    assert_eq!(
        (process["restarts"].as_u64(), process["failures"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(
        process["last_exit"].as_str().unwrap().contains("signal: 9"),
        "{service}"
    );
    up.proc.signal("INT");
}

#[tokio::test]
async fn with_restart_never_a_killed_backend_stays_down() {
    let up = Up::start(
        2,
        &[
            "--no-start",
            "--restart",
            "never",
            "--stale-after",
            "500ms",
            "--down-after",
            "1s",
        ],
    )
    .await;
    let target = up.backend(0);
    let mut ws = WsClient::connect(&up.mgmt, "").await;
    ws.next().await;
    let before = process_of(&mut ws, &target).await;
    assert_eq!(before["process"]["restart_policy"], "never", "{before}");
    kill_9(before["process"]["pid"].as_u64().unwrap());

    let target_ = target.clone();
    let exited = ws
        .event_where("service_state_changed", DEADLINE, move |d| {
            d["service"] == target_.as_str() && d["kind"] == "process" && d["to"] != "running"
        })
        .await;
    let process = &exited["data"]["process"];
    assert_eq!(process["state"], "exited", "{exited}");
    assert!(process["restart_at"].is_null(), "{exited}");
    assert_eq!(process["failures"], 1, "{exited}");

    // Down for good: the coordinator gives up on it, and still nothing restarted it.
    let target_ = target.clone();
    ws.event_where("service_state_changed", DEADLINE, move |d| {
        d["service"] == target_.as_str() && d["to"] == "DOWN"
    })
    .await;
    let after = process_of(&mut ws, &target).await;
    assert_eq!(after["state"], "DOWN", "{after}");
    assert_eq!(after["process"]["state"], "exited", "{after}");
    assert_eq!(after["process"]["restarts"], 0, "{after}");
    assert!(after["process"]["pid"].is_null(), "{after}");
    up.proc.signal("INT");
}

#[tokio::test]
async fn a_colony_process_whose_parent_is_already_gone_does_not_start() {
    // As if the parent named had died before the child could ask to die with it: the child
    // was adopted, so its parent is not the one named.
    let out = tokio::time::timeout(
        DEADLINE,
        colony_command()
            .env(shared::lifeline::PARENT_PID_ENV, "999999999")
            .args(["backend", "--registry-dir", "/nonexistent-colony-registry"])
            .output(),
    )
    .await
    .expect("colony did not exit")
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("it has already exited"), "{stderr}");
}
