//! The data plane over real sockets on 127.0.0.1: both framings, every kind of bad input,
//! limits, idle timeout, shutdown, and the `colony backend` process itself.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use codec::{Limits, Message};
use common::*;
use dataplane::{Client, ClientError, DataPlaneConfig};
use tokio::io::AsyncWriteExt;

fn config() -> DataPlaneConfig {
    DataPlaneConfig {
        limits: Limits {
            max_line: 1024,
            max_frame: 64 * 1024,
        },
        ..DataPlaneConfig::default()
    }
}

#[tokio::test]
async fn text_commands_get_one_line_each() {
    let server = start_server(config()).await;
    let mut c = LineClient::connect(server.addr).await;
    c.send(b"PING\r\nping\nhelp\n{\"type\":\"ping\"}\nSTATS\n")
        .await;
    assert_eq!(c.line().await.unwrap(), "PONG");
    assert_eq!(c.line().await.unwrap(), "PONG");
    let help = c.line().await.unwrap();
    assert!(help.contains("PING") && help.contains("STATS"), "{help}");
    assert_eq!(c.json().await, serde_json::json!({"type":"pong"}));
    let stats = c.json().await;
    assert_eq!(stats["type"], "stats_reply");
    assert_eq!(stats["connections"], 1);
    assert_eq!(stats["frames_in"], 4, "{stats}");
    for key in ["frames_out", "errors", "uptime_secs", "connections_total"] {
        assert!(stats[key].is_u64(), "{key} in {stats}");
    }
}

#[tokio::test]
async fn bad_text_input_gets_an_error_and_keeps_the_connection() {
    let server = start_server(config()).await;
    let mut c = LineClient::connect(server.addr).await;
    let cases: &[(&[u8], &str)] = &[
        (b"\x01\x02garbage\x7f\n", "unknown_command"),
        (b"\xff\xfe\xfd\n", "invalid_utf8"),
        (b"{\"type\":\"ping\"\n", "bad_json"),
        (b"{\"type\":\"warp\"}\n", "unknown_type"),
        (b"{\"kind\":\"ping\"}\n", "missing_type"),
        (
            b"{\"type\":\"echo\",\"payload\":\"\",\"x\":1,\"payload\":2}\n",
            "invalid_message",
        ),
        (b"{\"type\":\"pong\"}\n", "not_a_request"),
        (b"PING PING\n", "usage"),
        (b"FROBNICATE\n", "unknown_command"),
    ];
    for (input, code) in cases {
        c.send(input).await;
        let answer = c.json().await;
        assert_eq!(answer["type"], "error", "{input:?} → {answer}");
        assert_eq!(answer["code"], *code, "{input:?} → {answer}");
        assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()));
        c.send(b"PING\n").await;
        assert_eq!(c.line().await.unwrap(), "PONG", "after {input:?}");
    }
}

#[tokio::test]
async fn an_overlong_line_is_discarded_with_one_error() {
    let server = start_server(config()).await;
    let mut c = LineClient::connect(server.addr).await;
    // Sent in pieces so the server sees the limit crossed before the newline arrives.
    let long = vec![b'x'; 5000];
    c.send(&long[..2000]).await;
    c.send(&long[2000..]).await;
    c.send(b"\nPING\n").await;
    let answer = c.json().await;
    assert_eq!(answer["code"], "line_too_long", "{answer}");
    assert_eq!(c.line().await.unwrap(), "PONG");
}

#[tokio::test]
async fn binary_frames_round_trip() {
    let server = start_server(config()).await;
    let mut client = Client::connect(server.addr).await.unwrap();
    assert_eq!(client.request(&Message::Ping).await.unwrap(), Message::Pong);
    let payload: Vec<u8> = (0..32 * 1024).map(|i| (i % 251) as u8).collect();
    let answer = client
        .request(&Message::Echo {
            payload: payload.clone(),
        })
        .await
        .unwrap();
    assert_eq!(answer, Message::EchoReply { payload });
    // Pipelined: 100 requests in one write, 100 answers in order.
    for _ in 0..100 {
        client.queue(&Message::Ping).unwrap();
    }
    client.queue(&Message::Stats).unwrap();
    client.flush().await.unwrap();
    for _ in 0..100 {
        assert_eq!(client.recv().await.unwrap(), Message::Pong);
    }
    assert!(matches!(client.recv().await.unwrap(), Message::StatsReply(s) if s.frames_in >= 102));
    // A reply sent as a request is an error, and the connection goes on.
    assert!(matches!(
        client.request(&Message::Pong).await.unwrap(),
        Message::Error { code, .. } if code == "not_a_request"
    ));
    assert_eq!(client.request(&Message::Ping).await.unwrap(), Message::Pong);
}

#[tokio::test]
async fn an_oversized_frame_gets_an_error_frame_then_close() {
    let server = start_server(config()).await;
    let mut client = Client::connect(server.addr).await.unwrap();
    let mut frame = BytesMut::new();
    frame.put_u32(64 * 1024 + 1);
    client.send_raw(&frame).await.unwrap();
    let answer = client.recv().await.unwrap();
    assert!(
        matches!(&answer, Message::Error { code, .. } if code == "frame_too_large"),
        "{answer:?}"
    );
    assert!(matches!(
        client.recv().await,
        Err(ClientError::Closed | ClientError::Io(_))
    ));
}

#[tokio::test]
async fn an_undecodable_frame_gets_an_error_frame_then_close() {
    let server = start_server(config()).await;
    let mut client = Client::connect(server.addr).await.unwrap();
    client
        .send_raw(&[0, 0, 0, 4, 0xc1, 0xff, 0x00, 0x13])
        .await
        .unwrap();
    let answer = client.recv().await.unwrap();
    assert!(
        matches!(&answer, Message::Error { code, .. } if code == "undecodable_frame"),
        "{answer:?}"
    );
    assert!(client.recv().await.is_err());
}

#[tokio::test]
async fn a_truncated_frame_then_eof_harms_no_one_else() {
    let server = start_server(config()).await;
    let mut bystander = Client::connect(server.addr).await.unwrap();
    assert_eq!(
        bystander.request(&Message::Ping).await.unwrap(),
        Message::Pong
    );

    let mut c = LineClient::connect(server.addr).await;
    c.send(&[0, 0, 0, 50, 0x81, 0xa4]).await;
    c.writer.shutdown().await.unwrap();
    c.expect_closed().await;

    assert_eq!(
        bystander.request(&Message::Ping).await.unwrap(),
        Message::Pong
    );
    let stats = server.server.stats().snapshot();
    assert!(stats.errors >= 1, "{stats:?}");
}

#[tokio::test]
async fn a_silent_client_times_out() {
    let server = start_server(DataPlaneConfig {
        idle_timeout: Duration::from_millis(200),
        ..config()
    })
    .await;
    let mut c = LineClient::connect(server.addr).await;
    let answer = c.json().await;
    assert_eq!(answer["code"], "idle_timeout", "{answer}");
    c.expect_closed().await;
}

#[tokio::test]
async fn connections_beyond_the_limit_are_refused_cleanly() {
    let server = start_server(DataPlaneConfig {
        max_connections: 3,
        ..config()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(server.addr).await.unwrap();
        assert_eq!(c.request(&Message::Ping).await.unwrap(), Message::Pong);
        held.push(c);
    }
    for _ in 0..5 {
        let mut extra = LineClient::connect(server.addr).await;
        let answer = extra.json().await;
        assert_eq!(answer["code"], "too_many_connections", "{answer}");
        extra.expect_closed().await;
    }
    // The held connections were never disturbed.
    for c in &mut held {
        assert_eq!(c.request(&Message::Ping).await.unwrap(), Message::Pong);
    }
    // Freeing a slot lets a new client in.
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let mut c = LineClient::connect(server.addr).await;
        c.send(b"PING\n").await;
        if c.line().await.as_deref() == Some("PONG") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(server.server.stats().snapshot().connections_refused >= 5);
}

#[tokio::test]
async fn many_bad_clients_do_not_disturb_a_good_one() {
    let server = start_server(config()).await;
    let mut good = Client::connect(server.addr).await.unwrap();
    let mut bad = Vec::new();
    for i in 0..40u32 {
        let addr = server.addr;
        bad.push(tokio::spawn(async move {
            let mut c = LineClient::connect(addr).await;
            match i % 4 {
                0 => c.send(&vec![b'z'; 10_000]).await,
                1 => c.send(&[0, 0xff, 0xff, 0xff]).await,
                2 => c.send(b"\x00\x00\x00\x03\xc1\xc1\xc1").await,
                _ => c.send(b"{{{{\n\xff\n").await,
            }
            c.writer.shutdown().await.ok();
            c.expect_closed().await;
        }));
        assert_eq!(good.request(&Message::Ping).await.unwrap(), Message::Pong);
    }
    for task in bad {
        task.await.unwrap();
    }
    assert_eq!(good.request(&Message::Ping).await.unwrap(), Message::Pong);
}

#[tokio::test]
async fn shutdown_drains_within_the_grace_period() {
    let server = start_server(DataPlaneConfig {
        grace: Duration::from_secs(2),
        ..config()
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..10 {
        let mut c = Client::connect(server.addr).await.unwrap();
        assert_eq!(c.request(&Message::Ping).await.unwrap(), Message::Pong);
        idle.push(c);
    }
    let started = tokio::time::Instant::now();
    server.shutdown.cancel();
    tokio::time::timeout(DEADLINE, server.task)
        .await
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    for c in &mut idle {
        assert!(c.recv().await.is_err());
    }
}

#[tokio::test]
async fn the_backend_process_serves_and_stops_on_sigterm() {
    let mut proc = Proc::spawn(&["backend", "--grace", "2s"], &[]);
    let line = proc.wait_for("node listening").await;
    let addr: std::net::SocketAddr = field(&line, "internal").parse().unwrap();
    let mut c = LineClient::connect(addr).await;
    c.send(b"PING\n").await;
    assert_eq!(c.line().await.unwrap(), "PONG");
    proc.signal("TERM");
    let status = tokio::time::timeout(DEADLINE, proc.child.wait())
        .await
        .expect("backend did not exit after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
    proc.wait_for("backend stopped").await;
}

#[tokio::test]
async fn bad_flags_fail_before_binding_with_the_flag_named() {
    let out = colony_command()
        .args(["backend", "--max-frame", "20000000"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--max-frame"), "{stderr}");
}

/// A data plane with `--protect-reads` and the operator token `token`, counting refusals.
async fn protected(
    token: Option<&str>,
) -> (
    std::net::SocketAddr,
    tokio_util::sync::CancellationToken,
    std::sync::mpsc::Receiver<&'static str>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = dataplane::DataPlane::with_access(
        config(),
        dataplane::ShardStore::new(),
        None,
        dataplane::ReadAccess {
            protect_reads: true,
            operator: token.map(|t| {
                std::sync::Arc::new(shared::operator::OperatorToken::new(t, "test").unwrap())
            }),
        },
    );
    let (seen, refusals) = std::sync::mpsc::channel();
    server.on_refusal(move |reason| {
        let _ = seen.send(reason);
    });
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move { server.serve(listener, shutdown).await }
    });
    (addr, shutdown, refusals)
}

#[tokio::test]
async fn protected_reads_answer_only_ping_until_the_operator_token() {
    const TOKEN: &str = "data-plane-operator-token";
    let (addr, shutdown, refusals) = protected(Some(TOKEN)).await;
    let mut c = LineClient::connect(addr).await;
    c.send(b"PING\nSTATS\nSHARDS\n{\"type\":\"help\"}\n").await;
    assert_eq!(c.line().await.unwrap(), "PONG");
    for read in ["stats", "shards", "help"] {
        let answer = c.json().await;
        assert_eq!(answer["code"], "unauthenticated", "{answer}");
        let message = answer["message"].as_str().unwrap();
        assert!(
            message.starts_with(read) && message.contains("TOKEN <operator token>"),
            "{message}"
        );
    }
    // The right token, as a command: reads are answered from then on.
    c.send(format!("TOKEN {TOKEN}\nSTATS\n").as_bytes()).await;
    assert_eq!(c.line().await.unwrap(), "OK");
    assert_eq!(c.json().await["type"], "stats_reply");
    // The same as JSON on another connection.
    let mut j = LineClient::connect(addr).await;
    j.send(format!("{{\"type\":\"token\",\"token\":\"{TOKEN}\"}}\nSHARDS\n").as_bytes())
        .await;
    assert_eq!(
        j.json().await,
        serde_json::json!({"type": "token_accepted"})
    );
    assert_eq!(j.json().await["type"], "shards_reply");
    // A wrong token closes the connection, so tokens cannot be guessed at line rate.
    let mut w = LineClient::connect(addr).await;
    w.send(b"TOKEN not-the-operator-token\nPING\n").await;
    let answer = w.json().await;
    assert_eq!(answer["code"], "auth_failed", "{answer}");
    assert!(!answer.to_string().contains(TOKEN));
    w.expect_closed().await;
    assert_eq!(
        refusals.try_iter().collect::<Vec<_>>(),
        [
            "reads_protected",
            "reads_protected",
            "reads_protected",
            "wrong_token"
        ]
    );
    shutdown.cancel();
}

#[tokio::test]
async fn a_node_without_an_operator_token_refuses_token_and_keeps_the_connection() {
    let (addr, shutdown, refusals) = protected(None).await;
    let mut c = LineClient::connect(addr).await;
    c.send(b"TOKEN anything-at-all-here\nPING\n").await;
    assert_eq!(c.json().await["code"], "auth_unavailable");
    assert_eq!(c.line().await.unwrap(), "PONG");
    assert_eq!(
        refusals.try_iter().collect::<Vec<_>>(),
        ["no_operator_token"]
    );
    shutdown.cancel();
}

#[tokio::test]
async fn pipelined_requests_are_all_answered_in_order_through_backpressure() {
    // A tiny output bound forces hundreds of turns and flushes; nothing may be lost or
    // reordered, and a client that does read is never cut.
    let server = start_server(DataPlaneConfig {
        max_pending_output: 4096,
        ..config()
    })
    .await;
    let mut c = LineClient::connect(server.addr).await;
    let mut burst = Vec::new();
    for i in 0..3000 {
        burst.extend_from_slice(format!("{{\"type\":\"echo\",\"payload\":\"{i}\"}}\n").as_bytes());
    }
    c.send(&burst).await;
    for i in 0..3000 {
        let answer = c.json().await;
        let expected = serde_json::json!(i.to_string().into_bytes());
        assert_eq!(answer["payload"], expected, "answer {i}: {answer}");
    }
    c.send(b"PING\n").await;
    assert_eq!(c.line().await.unwrap(), "PONG");
}

#[tokio::test]
async fn a_request_trickled_byte_by_byte_is_cut_but_requests_keep_a_connection() {
    let server = start_server(DataPlaneConfig {
        incomplete_timeout: Duration::from_millis(300),
        ..config()
    })
    .await;
    // Complete requests, each well within the timeout, keep the connection for longer than it.
    let mut steady = LineClient::connect(server.addr).await;
    for _ in 0..6 {
        steady.send(b"PI").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        steady.send(b"NG\n").await;
        assert_eq!(steady.line().await.unwrap(), "PONG");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One request trickled in is cut once it has been incomplete for the timeout.
    let mut trickle = LineClient::connect(server.addr).await;
    let started = std::time::Instant::now();
    let mut buf = [0u8; 512];
    let answer = loop {
        trickle.send(b"x").await;
        // Waits for an answer before the next byte, so the server's last words are read
        // before a byte it no longer reads could reset the connection. `read` is cancel-safe.
        let read = tokio::time::timeout(
            Duration::from_millis(50),
            tokio::io::AsyncReadExt::read(&mut trickle.reader, &mut buf),
        );
        if let Ok(n) = read.await {
            break String::from_utf8_lossy(&buf[..n.unwrap()]).into_owned();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never cut");
    };
    assert!(answer.contains("request_timeout"), "{answer}");
    trickle.expect_closed().await;
}
