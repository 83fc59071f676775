//! The persistent heartbeat channel (`/heartbeat/ws`, DESIGN §9, §13) over real processes:
//! backends use it by default, a crash is suspected the moment its channel closes (STALE long
//! before `--stale-after`), a goodbye over it is LEFT, forged and replayed frames are refused
//! and counted without touching anyone else's channel, and `POST /heartbeat` still works.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use shared::secret::ClusterSecret;
use shared::signing::RequestSigner;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The value of the sample line starting with `name` (labels included), 0 if absent.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

async fn open(cluster: &Cluster) -> Socket {
    let url = cluster
        .mgmt_url("/heartbeat/ws")
        .await
        .replace("http://", "ws://");
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

fn heartbeat(node: &str, boot: &str, seq: u64) -> Vec<u8> {
    json!({"instance_id": node, "node_type": "backend",
           "address": {"ip":"127.0.0.1","internal_port":1,"http_port":2,"mgmt_port":3},
           "boot_id": boot, "seq": seq})
    .to_string()
    .into_bytes()
}

/// A channel frame's text: `body`'s signature, a newline, `body`.
fn signed_text(signer: &RequestSigner, body: &[u8]) -> String {
    format!(
        "{}\n{}",
        signer.sign("CHANNEL", "/heartbeat/ws", body),
        String::from_utf8_lossy(body)
    )
}

fn frame(signer: &RequestSigner, method: &str, path: &str, body: &[u8]) -> Message {
    let signature = signer.sign(method, path, body);
    Message::Text(format!("{signature}\n{}", String::from_utf8_lossy(body)).into())
}

/// The next text answer on `socket`, as JSON.
async fn answer(socket: &mut Socket) -> Value {
    loop {
        match tokio::time::timeout(DEADLINE, socket.next()).await.unwrap() {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).unwrap(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected an answer, got {other:?}"),
        }
    }
}

/// The close code `socket` ends with.
async fn closed_with(socket: &mut Socket) -> Option<CloseCode> {
    loop {
        match tokio::time::timeout(DEADLINE, socket.next()).await.unwrap() {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return None,
        }
    }
}

async fn status_of(cluster: &Cluster, id: &str) -> Option<String> {
    Some(cluster.component(id).await?["status"].as_str()?.to_owned())
}

#[tokio::test]
async fn a_killed_backend_is_stale_at_once_and_a_stopped_one_says_goodbye_over_the_channel() {
    let mut cluster = Cluster::new();
    // Thresholds far above the waits below: only the channel's close can explain STALE.
    cluster.start_coordinator(&["--stale-after", "4s", "--down-after", "5s"]);
    cluster.start_backend(&["--heartbeat-interval", "100ms"]);
    cluster.start_backend(&["--heartbeat-interval", "100ms"]);
    let (killed_id, _) = cluster.backend_identity(0).await;
    let (stopped_id, _) = cluster.backend_identity(1).await;
    for i in 0..2 {
        cluster.backends[i].wait_for("heartbeat channel open").await;
    }
    let text = eventually(DEADLINE, "heartbeats over two channels", || async {
        let text = cluster.metrics_text().await;
        (sample(&text, "colony_heartbeat_channels") == 2.0
            && sample(&text, "colony_heartbeat_channel_received_total") >= 6.0)
            .then_some(text)
    })
    .await;
    // Every heartbeat came over the channel: none was posted.
    assert!(
        !text.contains(r#"route="/heartbeat",status="200""#),
        "{text}"
    );
    for id in [&killed_id, &stopped_id] {
        assert_eq!(status_of(&cluster, id).await.as_deref(), Some("ACTIVE"));
    }

    cluster.backends[0].signal("KILL");
    let killed = Instant::now();
    eventually(Duration::from_secs(2), "STALE at once", || async {
        (status_of(&cluster, &killed_id).await.as_deref() == Some("STALE")).then_some(())
    })
    .await;
    assert!(
        killed.elapsed() < Duration::from_secs(4),
        "not the threshold"
    );
    let alerts = cluster.get_json(&cluster.mgmt_url("/alerts").await).await;
    let stale: Vec<_> = alerts["open"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["node_id"] == killed_id.as_str())
        .collect();
    assert_eq!(stale.len(), 1, "{alerts}");
    assert_eq!(stale[0]["kind"], "node_stale");
    assert!(
        stale[0]["message"]
            .as_str()
            .unwrap()
            .contains("channel closed"),
        "{alerts}"
    );
    // DOWN still waits for its threshold.
    eventually(DEADLINE, "DOWN by threshold", || async {
        (status_of(&cluster, &killed_id).await.as_deref() == Some("DOWN")).then_some(())
    })
    .await;
    // DOWN counts from the last heartbeat received (up to an interval before the kill, more
    // when 2 loaded cores delayed it), so the bound is looser than --down-after, but far
    // from the immediate STALE: the close alone does not make a node DOWN.
    assert!(
        killed.elapsed() >= Duration::from_secs(3),
        "DOWN after {:?}, not by the threshold",
        killed.elapsed()
    );
    // The other backend was not disturbed.
    assert_eq!(
        status_of(&cluster, &stopped_id).await.as_deref(),
        Some("ACTIVE")
    );

    // A graceful stop: the goodbye goes over the channel, and its close is not a crash.
    cluster.backends[1].signal("TERM");
    cluster.backends[1]
        .wait_for("told the coordinator we are leaving")
        .await;
    eventually(DEADLINE, "LEFT", || async {
        (status_of(&cluster, &stopped_id).await.as_deref() == Some("LEFT")).then_some(())
    })
    .await;
    eventually(DEADLINE, "channels closed", || async {
        (sample(&cluster.metrics_text().await, "colony_heartbeat_channels") == 0.0).then_some(())
    })
    .await;
    assert_eq!(
        status_of(&cluster, &stopped_id).await.as_deref(),
        Some("LEFT")
    );
    let text = cluster.metrics_text().await;
    assert!(
        !text.contains(r#"route="/heartbeat",status="200""#),
        "the goodbye was posted: {text}"
    );
}

#[tokio::test]
async fn forged_and_replayed_frames_are_refused_counted_and_close_nothing_else() {
    let mut cluster = Cluster::new();
    cluster.start_coordinator(&[]);
    cluster.start_backend(&["--heartbeat-interval", "100ms"]);
    let (backend, _) = cluster.backend_identity(0).await;
    cluster.backends[0].wait_for("heartbeat channel open").await;
    let secret = cluster.secret();
    let signer = RequestSigner::new(&secret);
    let stranger =
        RequestSigner::new(&ClusterSecret::from_env_value("a-stranger-secret-0123").unwrap());
    let path = "/heartbeat/ws";

    // A stranger's signature: refused, counted, and its (unbound) channel closed.
    let mut socket = open(&cluster).await;
    let body = heartbeat("intruder", "b1", 1);
    socket
        .send(frame(&stranger, "CHANNEL", path, &body))
        .await
        .unwrap();
    assert_eq!(answer(&mut socket).await["code"], "unknown_key");
    assert_eq!(closed_with(&mut socket).await, Some(CloseCode::Policy));
    // A frame signed as a POST (a captured POST replayed onto the channel): wrong MAC.
    let mut socket = open(&cluster).await;
    socket
        .send(frame(&signer, "POST", "/heartbeat", &body))
        .await
        .unwrap();
    assert_eq!(answer(&mut socket).await["code"], "bad_mac");
    assert_eq!(closed_with(&mut socket).await, Some(CloseCode::Policy));

    // A good node's channel: accepted, then a replayed frame is refused on it.
    let mut node = open(&cluster).await;
    let first = frame(&signer, "CHANNEL", path, &heartbeat("node_fake", "b1", 1));
    node.send(first.clone()).await.unwrap();
    assert_eq!(
        answer(&mut node).await,
        json!({"seq": 1, "status": "ACTIVE"})
    );
    node.send(first).await.unwrap();
    let replayed = answer(&mut node).await;
    assert_eq!(replayed["code"], "replay", "{replayed}");
    // Someone else's heartbeat on a bound channel is refused too.
    node.send(frame(
        &signer,
        "CHANNEL",
        path,
        &heartbeat("node_other", "b1", 1),
    ))
    .await
    .unwrap();
    assert_eq!(answer(&mut node).await["code"], "channel_node");
    node.send(frame(
        &signer,
        "CHANNEL",
        path,
        &heartbeat("node_fake", "b1", 2),
    ))
    .await
    .unwrap();
    assert_eq!(answer(&mut node).await["seq"], 2);
    assert!(cluster.component("intruder").await.is_none());
    assert!(cluster.component("node_other").await.is_none());

    // A channel frame is no POST either: the method is in the signed string.
    let url = cluster.mgmt_url("/heartbeat").await;
    let response = cluster
        .http
        .post(&url)
        .header("content-type", "application/json")
        .header(
            shared::signing::HEADER,
            signer.sign("CHANNEL", path, &heartbeat("node_fake", "b1", 3)),
        )
        .body(heartbeat("node_fake", "b1", 3))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::UNAUTHORIZED);
    // The POST path still works next to the channels.
    let response = signed_post(
        &cluster.http,
        &secret,
        &url,
        heartbeat("node_post", "b1", 1),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    assert_eq!(
        status_of(&cluster, "node_post").await.as_deref(),
        Some("ACTIVE")
    );

    let text = cluster.metrics_text().await;
    for (reason, count) in [
        ("unknown_key", 1.0),
        ("bad_mac", 2.0),
        ("replay", 1.0),
        ("channel_node", 1.0),
    ] {
        let name = format!(r#"colony_auth_refusals_total{{plane="mgmt",reason="{reason}"}}"#);
        assert_eq!(sample(&text, &name), count, "{name} in {text}");
    }

    // Nothing else was closed: the backend's channel carries on, and it stays ACTIVE.
    let before = cluster.component(&backend).await.unwrap()["heartbeats"]
        .as_u64()
        .unwrap();
    eventually(DEADLINE, "the backend keeps heartbeating", || async {
        let c = cluster.component(&backend).await?;
        (c["heartbeats"].as_u64()? >= before + 3 && c["status"] == "ACTIVE").then_some(())
    })
    .await;
    assert!(
        !cluster.backends[0]
            .seen
            .iter()
            .any(|l| l.contains("heartbeat channel lost")),
        "the backend's channel broke"
    );
    assert_eq!(
        sample(&cluster.metrics_text().await, "colony_heartbeat_channels"),
        2.0
    );

    // The fake node's channel closing is suspicion at once.
    drop(node);
    eventually(DEADLINE, "node_fake STALE", || async {
        (status_of(&cluster, "node_fake").await.as_deref() == Some("STALE")).then_some(())
    })
    .await;
    assert_eq!(
        status_of(&cluster, &backend).await.as_deref(),
        Some("ACTIVE")
    );

    // Answered sparsely, as backends ask: the first frame, refusals and the goodbye are
    // answered, the heartbeats between them (sent within SPARSE_ANSWER_EVERY, 20 s, of the
    // last answer) are not.
    let url = cluster.mgmt_url("/heartbeat/ws?answers=some").await;
    let refused = cluster.http.get(&url).send().await.unwrap();
    assert_eq!(refused.status(), reqwest::StatusCode::BAD_REQUEST);
    let url = cluster
        .mgmt_url("/heartbeat/ws?answers=sparse")
        .await
        .replace("http://", "ws://");
    let mut sparse = tokio_tungstenite::connect_async(url).await.unwrap().0;
    let beat = |seq| {
        frame(
            &signer,
            "CHANNEL",
            path,
            &heartbeat("node_sparse", "s1", seq),
        )
    };
    sparse.send(beat(1)).await.unwrap();
    assert_eq!(
        answer(&mut sparse).await,
        json!({"seq": 1, "status": "ACTIVE"})
    );
    let first_answered = Instant::now();
    for seq in 2..=4 {
        sparse.send(beat(seq)).await.unwrap();
    }
    sparse
        .send(frame(
            &signer,
            "POST",
            "/heartbeat",
            &heartbeat("node_sparse", "s1", 5),
        ))
        .await
        .unwrap();
    let next = answer(&mut sparse).await;
    if first_answered.elapsed() < Duration::from_secs(3) {
        assert_eq!(next["code"], "bad_mac", "frames 2-4 were answered: {next}");
    }
    let goodbye = json!({"instance_id": "node_sparse", "node_type": "backend",
           "address": {"ip":"127.0.0.1","internal_port":1,"http_port":2,"mgmt_port":3},
           "boot_id": "s1", "seq": 6, "leaving": true})
    .to_string()
    .into_bytes();
    sparse
        .send(frame(&signer, "CHANNEL", path, &goodbye))
        .await
        .unwrap();
    let left = loop {
        let a = answer(&mut sparse).await;
        if a["seq"] == 6 {
            break a;
        }
    };
    assert_eq!(left["status"], "LEFT");
    let c = cluster.component("node_sparse").await.unwrap();
    assert_eq!(
        (c["seq"].as_u64(), c["status"].as_str()),
        (Some(6), Some("LEFT"))
    );
}

/// A channel opened by hand over TCP, as a minimal client would: the handshake checked
/// byte for byte, then frames written and read raw.
async fn raw_channel(cluster: &Cluster) -> tokio::net::TcpStream {
    raw_channel_with(cluster, &[]).await
}

/// [`raw_channel`], with `early` written in the same write as the handshake: frames sent
/// before the `101` came back, which the HTTP server reads along with the request.
async fn raw_channel_with(cluster: &Cluster, early: &[u8]) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let url = cluster.mgmt_url("/heartbeat/ws").await;
    let host = url
        .strip_prefix("http://")
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_owned();
    let mut stream = tokio::net::TcpStream::connect(&host).await.unwrap();
    let request = format!(
        "GET /heartbeat/ws HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive, Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(early);
    stream.write_all(&bytes).await.unwrap();
    // The head of the answer, byte by byte: nothing after it may be consumed.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = tokio::time::timeout(DEADLINE, stream.read_u8())
            .await
            .unwrap()
            .unwrap();
        head.push(byte);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // RFC 6455's own example key and accept value.
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    stream
}

/// A client frame: masked, as RFC 6455 requires.
fn raw_frame(fin: bool, opcode: controlplane::wire::ws_frame::Opcode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    controlplane::wire::ws_frame::encode_masked(&mut out, fin, opcode, [1, 2, 3, 4], payload);
    out
}

/// The next server frame on `stream`: its opcode and payload (`None` at the end of the
/// stream).
async fn raw_read(stream: &mut tokio::net::TcpStream) -> Option<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let read = async {
        let mut head = [0u8; 2];
        stream.read_exact(&mut head).await.ok()?;
        assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
        let len = match head[1] & 0x7f {
            126 => usize::from(stream.read_u16().await.ok()?),
            127 => usize::try_from(stream.read_u64().await.ok()?).unwrap(),
            n => usize::from(n),
        };
        let mut payload = vec![0; len];
        stream.read_exact(&mut payload).await.ok()?;
        Some((head[0] & 0x0f, payload))
    };
    tokio::time::timeout(DEADLINE, read).await.unwrap()
}

/// The close code the server ends `stream` with, skipping any frame before it.
async fn raw_close_code(stream: &mut tokio::net::TcpStream) -> u16 {
    loop {
        match raw_read(stream).await {
            Some((0x8, payload)) => return u16::from_be_bytes([payload[0], payload[1]]),
            Some(_) => {}
            None => panic!("the channel ended without a close frame"),
        }
    }
}

#[tokio::test]
async fn the_channel_speaks_rfc_6455_itself_pongs_reassembles_and_closes_with_the_right_code() {
    use controlplane::wire::ws_frame::Opcode;
    use tokio::io::AsyncWriteExt;
    let mut cluster = Cluster::new();
    cluster.start_coordinator(&[]);

    // A ping is answered with a pong carrying its payload; a heartbeat sent in two fragments
    // (a ping between them) is reassembled and accepted; a close is answered with its code.
    let mut socket = raw_channel(&cluster).await;
    // The coordinator is up (it answered): its secret is written.
    let signer = RequestSigner::new(&cluster.secret());
    socket
        .write_all(&raw_frame(true, Opcode::Ping, b"are you there"))
        .await
        .unwrap();
    assert_eq!(
        raw_read(&mut socket).await,
        Some((0xa, b"are you there".to_vec()))
    );
    let body = heartbeat("node_raw", "r1", 1);
    let text = signed_text(&signer, &body);
    let (a, b) = text.as_bytes().split_at(text.len() / 2);
    let mut bytes = raw_frame(false, Opcode::Text, a);
    bytes.extend(raw_frame(true, Opcode::Ping, b"between"));
    bytes.extend(raw_frame(true, Opcode::Continuation, b));
    socket.write_all(&bytes).await.unwrap();
    assert_eq!(
        raw_read(&mut socket).await,
        Some((0xa, b"between".to_vec()))
    );
    let (opcode, answer) = raw_read(&mut socket).await.unwrap();
    assert_eq!(opcode, 0x1);
    assert_eq!(
        serde_json::from_slice::<Value>(&answer).unwrap(),
        json!({"seq": 1, "status": "ACTIVE"})
    );
    socket
        .write_all(&raw_frame(true, Opcode::Close, &1000u16.to_be_bytes()))
        .await
        .unwrap();
    assert_eq!(raw_close_code(&mut socket).await, 1000);

    // Frames sent along with the handshake, before its answer, are the HTTP server's to
    // read: they still reach the channel, in order (the second one is the first's seq + 1).
    let mut early = Vec::new();
    for seq in [1, 2] {
        let body = heartbeat("node_early", "e1", seq);
        let text = signed_text(&signer, &body);
        early.extend(raw_frame(true, Opcode::Text, text.as_bytes()));
    }
    let mut socket = raw_channel_with(&cluster, &early).await;
    for seq in [1, 2] {
        let (opcode, answer) = raw_read(&mut socket).await.unwrap();
        assert_eq!(opcode, 0x1);
        assert_eq!(
            serde_json::from_slice::<Value>(&answer).unwrap(),
            json!({"seq": seq, "status": "ACTIVE"})
        );
    }
    socket
        .write_all(&raw_frame(true, Opcode::Close, &1000u16.to_be_bytes()))
        .await
        .unwrap();
    assert_eq!(raw_close_code(&mut socket).await, 1000);

    // An unmasked frame breaks the protocol: 1002.
    let mut socket = raw_channel(&cluster).await;
    socket.write_all(&[0x81, 2, b'h', b'i']).await.unwrap();
    assert_eq!(raw_close_code(&mut socket).await, 1002);
    // Text that is not UTF-8: 1007.
    let mut socket = raw_channel(&cluster).await;
    socket
        .write_all(&raw_frame(true, Opcode::Text, &[b'a', 0xff, b'\n']))
        .await
        .unwrap();
    assert_eq!(raw_close_code(&mut socket).await, 1007);
    // A frame larger than the channel takes (16 KiB): 1009, as soon as its header says so.
    let mut socket = raw_channel(&cluster).await;
    let big = raw_frame(true, Opcode::Text, &vec![b'a'; 16 * 1024 + 1]);
    socket.write_all(&big[..100]).await.unwrap();
    assert_eq!(raw_close_code(&mut socket).await, 1009);

    // The node's channel closed without a goodbye: suspected at once, as over tungstenite;
    // and every channel above is closed and counted so.
    eventually(DEADLINE, "node_raw STALE", || async {
        (status_of(&cluster, "node_raw").await.as_deref() == Some("STALE")).then_some(())
    })
    .await;
    eventually(DEADLINE, "channels closed", || async {
        (sample(&cluster.metrics_text().await, "colony_heartbeat_channels") == 0.0).then_some(())
    })
    .await;

    // A bound channel open while the coordinator stops is closed with "going away" (1001).
    let mut socket = raw_channel(&cluster).await;
    let body = heartbeat("node_stop", "s1", 1);
    let text = signed_text(&signer, &body);
    socket
        .write_all(&raw_frame(true, Opcode::Text, text.as_bytes()))
        .await
        .unwrap();
    let (opcode, _) = raw_read(&mut socket).await.unwrap();
    assert_eq!(opcode, 0x1, "the heartbeat is answered");
    cluster.coordinator.as_ref().unwrap().signal("TERM");
    assert_eq!(raw_close_code(&mut socket).await, 1001);
}

#[tokio::test]
async fn a_peer_that_keeps_sending_after_its_close_holds_no_other_channel_up() {
    use controlplane::wire::ws_frame::Opcode;
    use tokio::io::AsyncWriteExt;
    let mut cluster = Cluster::new();
    cluster.start_coordinator(&[]);
    let mut honest = raw_channel(&cluster).await;
    let signer = RequestSigner::new(&cluster.secret());

    // A stranger's channel is refused (a binary frame on an unbound channel: 1008), and the
    // stranger then writes as fast as it can, without ever reading.
    let mut stranger = raw_channel(&cluster).await;
    stranger
        .write_all(&raw_frame(true, Opcode::Binary, b"not a heartbeat"))
        .await
        .unwrap();
    let blast = tokio::spawn(async move {
        let junk = vec![0x42u8; 64 * 1024];
        let until = Instant::now() + Duration::from_secs(20);
        let mut written = 0usize;
        while Instant::now() < until {
            if stranger.write_all(&junk).await.is_err() {
                return Some(written);
            }
            written += junk.len();
        }
        None
    });

    // Meanwhile another node's heartbeat is answered, long before the stranger gives up.
    let body = heartbeat("node_honest", "h1", 1);
    let text = signed_text(&signer, &body);
    honest
        .write_all(&raw_frame(true, Opcode::Text, text.as_bytes()))
        .await
        .unwrap();
    let (opcode, answer) = tokio::time::timeout(Duration::from_secs(15), raw_read(&mut honest))
        .await
        .expect("the honest channel is answered while the stranger still writes")
        .unwrap();
    assert_eq!(opcode, 0x1);
    assert_eq!(
        serde_json::from_slice::<Value>(&answer).unwrap(),
        json!({"seq": 1, "status": "ACTIVE"})
    );
    // The stranger is cut once it has sent more than a closed channel may still send (64 KiB
    // read after the close; what the sockets' buffers held on top is a few MiB on loopback),
    // not when the linger ends: by then it would have written hundreds of MiB.
    let written = blast
        .await
        .unwrap()
        .expect("the stranger's connection was never cut");
    assert!(
        written < 32 << 20,
        "the stranger wrote {written} bytes before it was cut"
    );
}

#[tokio::test]
async fn a_close_in_the_same_segment_as_the_last_heartbeat_is_seen_at_once() {
    use controlplane::wire::ws_frame::Opcode;
    use tokio::io::AsyncWriteExt;
    let mut cluster = Cluster::new();
    // Silence would take a minute: only the channel's close can make the node STALE here.
    cluster.start_coordinator(&["--stale-after", "60s", "--down-after", "120s"]);
    let mut channel = raw_channel(&cluster).await;
    let signer = RequestSigner::new(&cluster.secret());
    let beat = |seq| {
        let text = signed_text(&signer, &heartbeat("node_corked", "c1", seq));
        raw_frame(true, Opcode::Text, text.as_bytes())
    };
    channel.write_all(&beat(1)).await.unwrap();
    let (_, answer) = raw_read(&mut channel).await.unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&answer).unwrap(),
        json!({"seq": 1, "status": "ACTIVE"})
    );
    // Corked, the next heartbeat waits in the socket and the FIN joins it: both arrive in
    // one segment, so the coordinator is told of them once. A crash right after a beat can
    // look like this from the coordinator's side.
    socket2::SockRef::from(&channel).set_tcp_cork(true).unwrap();
    channel.write_all(&beat(2)).await.unwrap();
    channel.shutdown().await.unwrap();
    eventually(
        Duration::from_secs(10),
        "STALE once its channel closed",
        || async {
            (status_of(&cluster, "node_corked").await.as_deref() == Some("STALE")).then_some(())
        },
    )
    .await;
    let component = cluster.component("node_corked").await.unwrap();
    assert_eq!(
        component["seq"], 2,
        "its last heartbeat was read too: {component}"
    );
}
