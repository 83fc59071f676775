//! The HTTP planes' connection limits against a real coordinator process: slow and silent
//! connections are cut by the header timeout, idle kept-alive ones by the idle timeout, the
//! connection cap makes room by evicting idle connections and otherwise refuses with a
//! `503`, and under a 1 024-descriptor limit (`prlimit`) both HTTP ports keep answering
//! while idle connections pile up. A well-behaved client is served throughout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Cluster, Proc, DEADLINE};
use shared::signing::{RequestSigner, HEADER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// What a node may grow by while the attack runs: far more than its connections' buffers
/// need, far less than one buffer per byte sent would.
const RSS_ALLOWANCE_KIB: u64 = 64 * 1024;

/// The coordinator's three addresses once it has registered.
struct Ports {
    mgmt: String,
    control: String,
    data: String,
}

async fn ports(cluster: &Cluster) -> Ports {
    let a = cluster.coordinator_address().await;
    let ip = a["ip"].as_str().unwrap();
    Ports {
        mgmt: format!("{ip}:{}", a["mgmt_port"]),
        control: format!("{ip}:{}", a["http_port"]),
        data: format!("{ip}:{}", a["internal_port"]),
    }
}

/// A client that opens a new connection per request, so no pooled connection of its own
/// can be one the server closed as idle.
fn fresh_client() -> reqwest::Client {
    shared::tls::http_client(None)
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// `GET http://addr/path` answers 200.
async fn answers(http: &reqwest::Client, addr: &str, path: &str) {
    let response = http
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {addr}{path}: {e}"));
    assert_eq!(response.status(), 200, "GET {addr}{path}");
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Waits until the server closes `stream` (end of stream or reset); returns what it sent.
async fn closed_by_server(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the server did not close the connection in time");
    got
}

/// Whether the server has closed `stream`, without waiting.
async fn is_closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_millis(1), stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// One complete `GET` on a new connection; returns the raw answer.
async fn raw_get(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    String::from_utf8_lossy(&closed_by_server(&mut stream, DEADLINE).await).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_connections_are_cut_by_the_header_timeout() {
    let mut cluster = Cluster::new();
    cluster.start_coordinator(&["--http-header-timeout", "2s", "--http-idle-timeout", "60s"]);
    let ports = ports(&cluster).await;
    let pid = cluster.coordinator.as_ref().unwrap().pid();
    let http = fresh_client();
    answers(&http, &ports.mgmt, "/health/status").await;
    let rss_before = rss_kib(pid);

    // 1 000 connections: half send nothing, half send a header one byte a second.
    let started = Instant::now();
    let mut attackers = Vec::new();
    for i in 0..1000 {
        let addr = if i % 4 < 2 {
            ports.mgmt.clone()
        } else {
            ports.control.clone()
        };
        let slow = i % 2 == 0;
        attackers.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(&addr).await.unwrap();
            let header = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
            let mut buf = [0u8; 64];
            let mut next = 0;
            loop {
                tokio::select! {
                    read = stream.read(&mut buf) => match read {
                        Ok(0) | Err(_) => return,
                        Ok(_) => panic!("a header never finished was answered"),
                    },
                    () = tokio::time::sleep(Duration::from_secs(1)), if slow => {
                        let byte = header[next % header.len()];
                        next += 1;
                        if stream.write_all(&[byte]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }));
    }

    // A well-behaved client keeps being served while they hang on.
    let healthy = {
        let (http, mgmt, control) = (http.clone(), ports.mgmt.clone(), ports.control.clone());
        tokio::spawn(async move {
            let mut served = 0;
            while started.elapsed() < Duration::from_secs(4) {
                answers(&http, &mgmt, "/health/status").await;
                answers(&http, &control, "/colony").await;
                served += 1;
            }
            served
        })
    };
    for attacker in attackers {
        tokio::time::timeout(Duration::from_secs(30), attacker)
            .await
            .expect("a slow or silent connection outlived the header timeout by far")
            .unwrap();
    }
    assert!(healthy.await.unwrap() > 0);
    // Every one was cut, none before the timeout.
    assert!(started.elapsed() >= Duration::from_secs(2));
    answers(&http, &ports.mgmt, "/health/status").await;
    let grown = rss_kib(pid).saturating_sub(rss_before);
    assert!(
        grown < RSS_ALLOWANCE_KIB,
        "RSS grew by {grown} KiB under 1 000 slow connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_kept_alive_connection_is_cut_by_the_idle_timeout_not_the_header_one() {
    let mut cluster = Cluster::new();
    cluster.start_coordinator(&["--http-header-timeout", "1s", "--http-idle-timeout", "3s"]);
    let ports = ports(&cluster).await;
    let mut stream = TcpStream::connect(&ports.mgmt).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(DEADLINE, stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let answered = Instant::now();
    closed_by_server(&mut stream, DEADLINE).await;
    let idle = answered.elapsed();
    // Kept past the 1 s header timeout: idle is not a slow header.
    assert!(idle >= Duration::from_millis(2500), "cut after {idle:?}");
}

/// A request whose handler is reading its body (hyper answered `100 Continue`), which the
/// client never sends: a connection busy until the request timeout.
async fn busy_connection(addr: &str, secret: &shared::secret::ClusterSecret) -> TcpStream {
    let signature = RequestSigner::new(secret).sign("POST", "/heartbeat", b"{}");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!(
                "POST /heartbeat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
                 Content-Length: 1000\r\nExpect: 100-continue\r\n{HEADER}: {signature}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(DEADLINE, stream.read(&mut buf))
        .await
        .expect("no 100 Continue")
        .unwrap();
    let got = String::from_utf8_lossy(&buf[..n]);
    assert!(got.starts_with("HTTP/1.1 100"), "{got}");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_evicts_idle_connections_and_refuses_when_all_are_busy() {
    let mut cluster = Cluster::new();
    cluster.start_coordinator(&[
        "--http-max-connections",
        "8",
        "--http-header-timeout",
        "60s",
        "--request-timeout",
        "60s",
    ]);
    let ports = ports(&cluster).await;
    let secret = cluster.secret();

    // Eight silent connections fill the listener; a whole request still gets in, in
    // place of one of them.
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push(TcpStream::connect(&ports.mgmt).await.unwrap());
    }
    let answer = raw_get(&ports.mgmt, "/health").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The oldest silent one made room (its FIN may still be on the way).
    let deadline = Instant::now() + DEADLINE;
    'evicted: loop {
        for stream in &mut silent {
            if is_closed(stream).await {
                break 'evicted;
            }
        }
        assert!(Instant::now() < deadline, "no idle connection was evicted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(silent);

    // Eight connections in the middle of a request: nothing to evict, so a ninth is
    // refused clearly and closed.
    let mut busy = Vec::new();
    for _ in 0..8 {
        busy.push(busy_connection(&ports.mgmt, &secret).await);
    }
    let refused = raw_get(&ports.mgmt, "/health").await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("too many connections"), "{refused}");
    cluster
        .coordinator
        .as_mut()
        .unwrap()
        .wait_for("connection refused: too many connections")
        .await;
    // The cap is per listener: the control plane still answers.
    answers(&fresh_client(), &ports.control, "/colony").await;

    // One busy connection gone, the next client is served.
    drop(busy.pop());
    common::eventually(DEADLINE, "served once a slot is free", || {
        let mgmt = ports.mgmt.clone();
        async move {
            raw_get(&mgmt, "/health")
                .await
                .starts_with("HTTP/1.1 200")
                .then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_1024_descriptors_both_http_ports_keep_answering_while_idle_connections_pile_up() {
    let mut cluster = Cluster::new();
    let dir = cluster.registry_dir();
    let mut cmd = tokio::process::Command::new("prlimit");
    cmd.args(["--nofile=1024:1024", "--", common::colony_bin()])
        .args([
            "coordinator",
            "--internal-port",
            "0",
            "--http-port",
            "0",
            "--mgmt-port",
            "0",
            "--registry-dir",
            &dir,
            "--http-header-timeout",
            "120s",
        ])
        .env(
            shared::lifeline::PARENT_PID_ENV,
            std::process::id().to_string(),
        )
        .env(common::TEST_RUN_ENV, common::test_run_id());
    let mut node = Proc::from_command(cmd);
    let budget = node
        .wait_for("descriptors the HTTP listeners may hold")
        .await;
    assert_eq!(common::field(&budget, "budget"), "768", "{budget}");
    cluster.coordinator = Some(node);
    let ports = ports(&cluster).await;
    let pid = cluster.coordinator.as_ref().unwrap().pid();
    let http = fresh_client();
    answers(&http, &ports.mgmt, "/health/status").await;
    let rss_before = rss_kib(pid);

    // 1 200 connections that never send a byte: more than the node has descriptors for.
    let mut idle = Vec::new();
    for i in 0..1200 {
        let addr = if i % 2 == 0 {
            &ports.mgmt
        } else {
            &ports.control
        };
        idle.push(TcpStream::connect(addr).await.unwrap());
        if i % 200 == 199 {
            answers(&http, &ports.mgmt, "/health/status").await;
            answers(&http, &ports.control, "/colony").await;
        }
    }
    for _ in 0..5 {
        answers(&http, &ports.mgmt, "/health/status").await;
        answers(&http, &ports.control, "/colony").await;
    }
    // The node's own descriptors were never short: the data plane still takes a PING.
    let mut ping = TcpStream::connect(&ports.data).await.unwrap();
    ping.write_all(b"PING\n").await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(DEADLINE, ping.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("PONG"));
    let node = cluster.coordinator.as_mut().unwrap();
    while let Ok(line) = node.lines.try_recv() {
        node.seen.push(line);
    }
    assert!(
        !node.seen.iter().any(|l| l.contains("Too many open files")),
        "the node ran out of descriptors"
    );
    let grown = rss_kib(pid).saturating_sub(rss_before);
    assert!(grown < RSS_ALLOWANCE_KIB, "RSS grew by {grown} KiB");
    drop(idle);
}
