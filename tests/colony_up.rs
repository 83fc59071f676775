//! `colony up` as a user runs it: the whole cluster comes up and starts a colony, and one
//! SIGINT leaves no child process and no registry entry behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::TcpListener;
use std::time::Duration;

use common::*;

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
            r#"{"width_in_shards":3,"height_in_shards":2,"shard_width":16,"shard_height":16}"#,
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
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
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
        tokio::process::Command::new(colony_bin())
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
