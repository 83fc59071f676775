//! `/ws` over real loopback sockets with a real client: the protocol, every bad input, the
//! limits, resumes, slow consumers and shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use shared::NodeAddress;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::protocol::EventKind;
use super::*;
use crate::coordinator::health::config::HealthConfig;
use crate::coordinator::health::tracker::HealthTracker;
use crate::metrics::Metrics;
use crate::state::{MgmtState, NodeInfo};
use crate::wire::heartbeat::{Heartbeat, NodeType};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

const WAIT: Duration = Duration::from_secs(5);

struct Server {
    addr: SocketAddr,
    health: HealthTracker,
    hub: Option<Hub>,
    /// What the management plane's server waits on after it stops.
    tasks: TaskTracker,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// The operator token of the test coordinator; [`connect`] presents it.
const TOKEN: &str = "ws-test-operator-token-0123";

fn operator(config: crate::operator::OperatorConfig) -> crate::operator::OperatorConfig {
    crate::operator::OperatorConfig {
        token: Some(std::sync::Arc::new(
            shared::operator::OperatorToken::new(TOKEN, "test").unwrap(),
        )),
        ..config
    }
}

fn state(config: crate::operator::OperatorConfig) -> (MgmtState, HealthTracker) {
    let address = NodeAddress::new([127, 0, 0, 1].into(), 8082, 8083, 8084);
    let health = HealthTracker::new(
        HealthConfig::default(),
        Some(("coordinator".into(), address)),
    );
    let metrics = Metrics::new(
        dataplane::DataPlane::new(dataplane::DataPlaneConfig::default()),
        Some(health.clone()),
    );
    let secret = shared::secret::ClusterSecret::generate().unwrap();
    let guard = crate::operator::Access::new(operator(config), &metrics).guard(
        "mgmt",
        address.ip,
        Some(address.mgmt_port),
    );
    let state = MgmtState {
        node: NodeInfo::new("coordinator", NodeType::Coordinator, address),
        node_auth: crate::node_auth::NodeAuth::new(
            shared::signing::SignatureVerifier::new(&secret),
            metrics.auth_refusals.clone(),
            "mgmt",
        ),
        metrics,
        guard,
        health: Some(health.clone()),
        processes: None,
        colony: None,
        deploy: None,
        tasks: TaskTracker::new(),
    };
    (state, health)
}

async fn serve(limits: WsLimits) -> Server {
    serve_with(limits, false).await
}

/// With `own_thread`, served as the coordinator serves its management plane: on a thread of
/// its own ([`crate::http::serve_on_own_thread`]).
async fn serve_with(limits: WsLimits, own_thread: bool) -> Server {
    serve_full(limits, own_thread, Default::default()).await
}

/// Served as the management plane is: with each peer's address, so loopback trust applies.
async fn serve_full(
    limits: WsLimits,
    own_thread: bool,
    config: crate::operator::OperatorConfig,
) -> Server {
    let (state, health) = state(config);
    let tasks = state.tasks.clone();
    let hub = Hub::new(state, limits);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let app = router(hub.clone());
    let task = tokio::spawn({
        let stop = stop.clone();
        let tasks = tasks.clone();
        async move {
            if own_thread {
                crate::http::serve_on_own_thread(listener, app, tasks, stop, "mgmt")
                    .await
                    .unwrap();
            } else {
                axum::serve(
                    listener,
                    app.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
                .unwrap();
            }
        }
    });
    Server {
        addr,
        health,
        hub: Some(hub),
        tasks,
        stop,
        task,
    }
}

fn limits() -> WsLimits {
    WsLimits {
        max_message: 1024,
        max_frame: 8 * 1024,
        ..WsLimits::default()
    }
}

/// Connects as the operator, with the token on the upgrade.
async fn connect(addr: SocketAddr, query: &str) -> Client {
    connect_with(
        addr,
        query,
        &[("authorization", &format!("Bearer {TOKEN}"))],
    )
    .await
    .unwrap()
}

/// Connects with the given extra headers on the upgrade request.
async fn connect_with(
    addr: SocketAddr,
    query: &str,
    headers: &[(&str, &str)],
) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{addr}/ws{query}")
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(client, _)| client)
}

/// The next text message as JSON (pings are answered by the client itself).
async fn next(client: &mut Client) -> Value {
    loop {
        let message = tokio::time::timeout(WAIT, client.next())
            .await
            .expect("no message before the deadline")
            .expect("stream ended")
            .unwrap();
        match message {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

/// The next event of `kind`, skipping others.
async fn next_event(client: &mut Client, kind: &str) -> Value {
    loop {
        let m = next(client).await;
        if m["type"] == "event" && m["event"] == kind {
            return m;
        }
    }
}

async fn request(client: &mut Client, id: &str, action: &str, params: Value) -> Value {
    let text = json!({"id": id, "type": "request", "action": action, "params": params});
    client
        .send(Message::Text(text.to_string().into()))
        .await
        .unwrap();
    loop {
        let m = next(client).await;
        if m["type"] == "response" {
            assert_eq!(m["id"], id, "{m}");
            return m;
        }
    }
}

async fn send_raw(client: &mut Client, text: &str) -> Value {
    client
        .send(Message::Text(text.to_owned().into()))
        .await
        .unwrap();
    loop {
        let m = next(client).await;
        if m["type"] == "response" {
            return m;
        }
    }
}

fn heartbeat(id: &str, port: u16) -> Heartbeat {
    Heartbeat {
        instance_id: id.into(),
        node_type: NodeType::Backend,
        address: NodeAddress::new([127, 0, 0, 1].into(), port, port + 1, port + 2),
        boot_id: "boot".into(),
        seq: 1,
        metrics: [("connections".to_owned(), 3.0)].into(),
        leaving: false,
    }
}

#[tokio::test]
async fn connect_loads_the_registry_and_answers_every_action() {
    let server = serve(limits()).await;
    server
        .health
        .record(heartbeat("backend_9000", 9000), tokio::time::Instant::now())
        .unwrap();
    let mut c = connect(server.addr, "").await;
    let loaded = next(&mut c).await;
    assert_eq!(loaded["event"], "registry_loaded", "{loaded}");
    assert_eq!(loaded["data"]["reason"], "connect");
    let services = loaded["data"]["services"].as_array().unwrap();
    let names: Vec<&str> = services
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["coordinator", "backend_9000"]);
    assert_eq!(services[1]["state"], "ACTIVE");
    assert_eq!(services[1]["endpoints"][0]["name"], "data");
    assert_eq!(services[1]["endpoints"][0]["address"], "127.0.0.1:9000");
    assert_eq!(loaded["data"]["summary"]["overall_status"], "HEALTHY");

    let r = request(&mut c, "1", "list_services", json!({})).await;
    assert_eq!(r["data"]["services"].as_array().unwrap().len(), 2);
    let r = request(&mut c, "2", "get_service", json!({"name": "backend_9000"})).await;
    assert_eq!(
        r["data"]["service"]["health"]["metrics"]["connections"],
        3.0
    );
    let r = request(&mut c, "3", "get_service", json!({"name": "coordinator"})).await;
    assert_eq!(r["data"]["service"]["kind"], "coordinator");
    let r = request(&mut c, "4", "list_endpoints", json!({})).await;
    let endpoints = r["data"]["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 6);
    assert!(endpoints.iter().any(|e| e["service"] == "coordinator"
        && e["name"] == "mgmt"
        && e["address"] == "127.0.0.1:8084"));
    let r = request(&mut c, "5", "deploy_package", json!({"name": "x"})).await;
    assert_eq!(r["error"]["code"], "not_supported", "{r}");
    let r = request(
        &mut c,
        "6",
        "service_action",
        json!({"name": "backend_9000", "action": "restart"}),
    )
    .await;
    assert_eq!(r["error"]["code"], "not_managed", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("colony up"),
        "{r}"
    );
    let r = request(
        &mut c,
        "7",
        "service_action",
        json!({"name": "ghost", "action": "stop"}),
    )
    .await;
    assert_eq!(r["error"]["code"], "not_found", "{r}");
}

#[tokio::test]
async fn every_bad_input_gets_an_error_and_the_socket_stays() {
    let server = serve(limits()).await;
    let mut c = connect(server.addr, "").await;
    next_event(&mut c, "registry_loaded").await;
    let oversized = json!({"id":"big","type":"request","action":"list_services","params":{"pad":"x".repeat(2000)}}).to_string();
    let cases: Vec<(String, Value, &str)> = vec![
        ("{not json".into(), Value::Null, "malformed_json"),
        ("\"just a string\"".into(), Value::Null, "invalid_request"),
        (
            r#"{"type":"request","action":"list_services"}"#.into(),
            Value::Null,
            "missing_id",
        ),
        (
            r#"{"id":"a","type":"request","action":"teleport"}"#.into(),
            json!("a"),
            "unknown_action",
        ),
        (
            r#"{"id":"b","type":"request"}"#.into(),
            json!("b"),
            "missing_action",
        ),
        (
            r#"{"id":"c","type":"response","action":"list_services"}"#.into(),
            json!("c"),
            "invalid_request",
        ),
        (
            r#"{"id":"d","type":"request","action":"get_service","params":{}}"#.into(),
            json!("d"),
            "invalid_params",
        ),
        (
            r#"{"id":"e","type":"request","action":"get_service","params":{"name":"nobody"}}"#
                .into(),
            json!("e"),
            "not_found",
        ),
        (
            r#"{"id":"f","type":"request","action":"service_action","params":{"name":"x","action":"explode"}}"#.into(),
            json!("f"),
            "invalid_params",
        ),
        (
            r#"{"id":"g","type":"request","action":"subscribe","params":{"events":["gossip"]}}"#
                .into(),
            json!("g"),
            "invalid_params",
        ),
        (oversized, Value::Null, "message_too_large"),
    ];
    for (text, id, code) in cases {
        let r = send_raw(&mut c, &text).await;
        assert_eq!(r["error"]["code"], code, "{text:.80}: {r}");
        assert_eq!(r["id"], id, "{r}");
        assert!(!r["error"]["message"].as_str().unwrap().is_empty());
    }
    c.send(Message::Binary(vec![1, 2, 3].into())).await.unwrap();
    let r = next(&mut c).await;
    assert_eq!(r["error"]["code"], "binary_not_supported", "{r}");
    // Still the same healthy connection.
    let r = request(&mut c, "after", "list_services", json!({})).await;
    assert!(r["data"]["services"].is_array(), "{r}");

    // Past the hard limit the message cannot be skipped: a 1009 close that says why.
    let huge = "x".repeat(20 * 1024);
    c.send(Message::Text(huge.into())).await.unwrap();
    let close = loop {
        match tokio::time::timeout(WAIT, c.next()).await.unwrap() {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let frame = close.expect("a close frame with a reason");
    assert_eq!(frame.code, CloseCode::Size);
    assert!(frame.reason.contains("8192"), "{}", frame.reason);
}

#[tokio::test]
async fn connections_attaching_together_share_one_registry_loaded() {
    let (state, health) = state(Default::default());
    let hub = Hub::new(state, limits());
    let a = hub.core.attach(None).await.loaded.unwrap();
    let b = hub.core.attach(None).await.loaded.unwrap();
    // The same bytes, not an equal copy: built once, shared.
    assert_eq!(a.as_str().as_ptr(), b.as_str().as_ptr());
    // A change publishes an event: the next connection gets a snapshot that shows it.
    health
        .record(heartbeat("backend_9000", 9000), tokio::time::Instant::now())
        .unwrap();
    hub.core.publish(EventKind::RegistryLoaded, &json!({}));
    let c = hub.core.attach(None).await.loaded.unwrap();
    assert_ne!(a.as_str().as_ptr(), c.as_str().as_ptr());
    assert!(c.as_str().contains("backend_9000"), "{}", c.as_str());
}

#[tokio::test]
async fn a_text_message_that_is_not_utf8_is_closed_with_1007() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let server = serve(limits()).await;
    let mut c = connect(server.addr, "").await;
    next_event(&mut c, "registry_loaded").await;
    let bad = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    c.send(Message::Frame(bad)).await.unwrap();
    let close = loop {
        match tokio::time::timeout(WAIT, c.next()).await.unwrap() {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let frame = close.expect("a close frame with a reason");
    assert_eq!(frame.code, CloseCode::Invalid, "{frame:?}");
    assert!(frame.reason.contains("UTF-8"), "{}", frame.reason);
}

#[tokio::test]
async fn events_arrive_numbered_and_filtered_by_subscription() {
    let server = serve(limits()).await;
    let mut c = connect(server.addr, "").await;
    let loaded = next_event(&mut c, "registry_loaded").await;
    let start = loaded["seq"].as_u64().unwrap();
    server
        .health
        .record(heartbeat("backend_9000", 9000), tokio::time::Instant::now())
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let e = next(&mut c).await;
        seen.push((
            e["seq"].as_u64().unwrap(),
            e["event"].as_str().unwrap().to_owned(),
        ));
        if e["event"] == "service_state_changed" {
            assert_eq!(e["data"]["service"], "backend_9000");
            assert_eq!(e["data"]["to"], "ACTIVE");
            assert_eq!(e["data"]["kind"], "node");
            assert_eq!(e["data"]["component"]["status"], "ACTIVE");
        }
    }
    assert_eq!(
        seen,
        [
            (start + 1, "endpoint_updated".to_owned()),
            (start + 2, "service_state_changed".to_owned()),
            (start + 3, "health_check_result".to_owned()),
        ]
    );

    let r = request(
        &mut c,
        "u",
        "unsubscribe",
        json!({"events": ["health_check_result", "endpoint_updated"]}),
    )
    .await;
    let subscribed = r["data"]["subscribed"].as_array().unwrap();
    assert!(!subscribed.contains(&json!("health_check_result")), "{r}");
    assert!(subscribed.contains(&json!("service_state_changed")), "{r}");
    server
        .health
        .record(heartbeat("backend_9010", 9010), tokio::time::Instant::now())
        .unwrap();
    let e = next(&mut c).await;
    assert_eq!(e["event"], "service_state_changed", "{e}");
    assert_eq!(e["seq"].as_u64().unwrap(), start + 5, "{e}");
    let r = request(&mut c, "s", "subscribe", json!({})).await;
    assert_eq!(
        r["data"]["subscribed"].as_array().unwrap().len(),
        EventKind::ALL.len()
    );

    // A client's close gets the closing handshake back, not a dropped connection.
    c.close(None).await.unwrap();
    let ended = tokio::time::timeout(WAIT, async {
        while let Some(m) = c.next().await {
            if m.is_err() {
                return false;
            }
        }
        true
    })
    .await
    .unwrap();
    assert!(ended, "the close handshake did not complete");
}

#[tokio::test]
async fn a_resume_replays_what_was_missed_or_loads_the_registry_again() {
    let server = serve(WsLimits {
        history: 4,
        ..limits()
    })
    .await;
    let mut c = connect(server.addr, "").await;
    let loaded = next_event(&mut c, "registry_loaded").await;
    let stream = loaded["data"]["stream"].as_str().unwrap().to_owned();
    let core = server.hub.as_ref().unwrap().core.clone();
    for i in 0..3 {
        core.publish(EventKind::DeploymentProgress, &json!({ "i": i }));
    }
    drop(c);

    // Missed 2 and 3 of 1..=3: exactly those, in order, then live events.
    let mut c = connect(server.addr, &format!("?since=1&stream={stream}")).await;
    assert_eq!(next(&mut c).await["data"]["i"], 1);
    assert_eq!(next(&mut c).await["data"]["i"], 2);
    core.publish(EventKind::DeploymentProgress, &json!({ "i": 3 }));
    let live = next(&mut c).await;
    assert_eq!(
        (live["seq"].as_u64(), &live["data"]["i"]),
        (Some(4), &json!(3))
    );

    // Too old for the 4-event history: the whole state again.
    for i in 4..10 {
        core.publish(EventKind::DeploymentProgress, &json!({ "i": i }));
    }
    let mut c = connect(server.addr, &format!("?since=2&stream={stream}")).await;
    let again = next(&mut c).await;
    assert_eq!(again["event"], "registry_loaded");
    assert_eq!(again["data"]["reason"], "since_too_old");
    assert_eq!(again["seq"], 10);

    // Another stream (a restarted coordinator): the whole state again.
    let mut c = connect(server.addr, "?since=9&stream=someone-else").await;
    assert_eq!(next(&mut c).await["data"]["reason"], "stream_changed");
    // A resume that filters: only what it subscribes to.
    let mut c = connect(
        server.addr,
        &format!("?since=8&stream={stream}&events=service_state_changed"),
    )
    .await;
    core.publish(EventKind::ServiceStateChanged, &json!({ "i": "x" }));
    let e = next(&mut c).await;
    assert_eq!(
        (e["seq"].as_u64(), e["event"].as_str()),
        (Some(11), Some("service_state_changed"))
    );

    let bad = shared::tls::http_client(None)
        .build()
        .unwrap()
        .get(format!("http://{}/ws?since=soon", server.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn connections_over_the_limit_are_refused_before_the_upgrade() {
    let server = serve(WsLimits {
        max_connections: 2,
        ..limits()
    })
    .await;
    let mut a = connect(server.addr, "").await;
    let _b = connect(server.addr, "").await;
    next(&mut a).await;
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr)).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                .into_owned();
            assert!(body.contains("too many WebSocket connections"), "{body}");
        }
        other => panic!("expected a 503, got {other:?}"),
    }
    drop(a);
    // The slot comes back once the connection is gone.
    let mut again = None;
    for _ in 0..100 {
        if let Ok((c, _)) =
            tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr)).await
        {
            again = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    next(&mut again.expect("a freed slot")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_dropped_and_the_others_get_everything() {
    let server = serve(WsLimits {
        client_queue: 64,
        write_timeout: Duration::from_millis(300),
        ..limits()
    })
    .await;
    let core = server.hub.as_ref().unwrap().core.clone();
    let mut fast = connect(server.addr, "").await;
    let mut slow = connect(server.addr, "").await;
    let from = next(&mut fast).await["seq"].as_u64().unwrap();
    next(&mut slow).await;
    let pad = "p".repeat(4000);
    let total = 3000u64;
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(from));
    let reader = tokio::spawn({
        let progress = progress.clone();
        async move {
            let mut expected = from + 1;
            while expected <= from + total {
                let e = next(&mut fast).await;
                assert_eq!(e["seq"].as_u64(), Some(expected), "out of order");
                progress.store(expected, std::sync::atomic::Ordering::Release);
                expected += 1;
            }
            fast
        }
    });
    for i in 0..total {
        core.publish(
            EventKind::DeploymentProgress,
            &json!({ "i": i, "pad": pad }),
        );
        // The fast client keeps within 32 events, as a live reader does; the slow one never
        // reads at all.
        while from + i + 1 - progress.load(std::sync::atomic::Ordering::Acquire) > 32 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let _fast = tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .expect("the fast client was stalled")
        .unwrap();
    // The slow one never read: it got what fitted in its buffers, then was dropped.
    let mut got = 0u64;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(m) = slow.next().await {
            match m {
                Ok(Message::Text(_)) => got += 1,
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the slow client was never dropped");
    assert!(got < total, "the slow client got all {got} events");
}

#[tokio::test]
async fn stopping_the_listener_closes_every_socket_with_going_away() {
    stopping_closes_with_going_away(false).await;
}

#[tokio::test]
async fn stopping_a_plane_on_its_own_thread_closes_every_socket_with_going_away() {
    stopping_closes_with_going_away(true).await;
}

/// Waits until `tasks` counts `n` tasks.
async fn tracked(tasks: &TaskTracker, n: usize) {
    tokio::time::timeout(WAIT, async {
        while tasks.len() != n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} tasks tracked, expected {n}", tasks.len()));
}

#[tokio::test]
async fn the_server_tracks_every_socket_and_the_pump_until_they_end() {
    let server = serve(limits()).await;
    assert_eq!(server.tasks.len(), 0);
    let mut a = connect(server.addr, "").await;
    next(&mut a).await;
    // The pump and one socket.
    tracked(&server.tasks, 2).await;
    let mut b = connect(server.addr, "").await;
    next(&mut b).await;
    tracked(&server.tasks, 3).await;
    a.close(None).await.unwrap();
    tracked(&server.tasks, 2).await;
    drop(b);
    tracked(&server.tasks, 1).await;
}

async fn stopping_closes_with_going_away(own_thread: bool) {
    let mut server = serve_with(limits(), own_thread).await;
    let mut c = connect(server.addr, "").await;
    next(&mut c).await;
    server.hub = None;
    server.stop.cancel();
    tokio::time::timeout(WAIT, &mut server.task)
        .await
        .unwrap()
        .unwrap();
    let close = loop {
        match tokio::time::timeout(WAIT, c.next()).await.unwrap() {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.unwrap().code, CloseCode::Away);
}

// === Who may do what (DESIGN §13) ===

/// The refusals counted on `/ws` for `reason`.
fn refusals(server: &Server, reason: &'static str) -> u64 {
    let hub = server.hub.as_ref().unwrap();
    hub.core.state.metrics.auth_refusals.get("ws", reason)
}

#[tokio::test]
async fn a_cross_site_socket_reads_but_changes_nothing_until_it_authenticates() {
    let server = serve(limits()).await;
    // A page of another site, in a browser on this machine.
    let mut c = connect_with(
        server.addr,
        "",
        &[
            ("origin", "http://evil.example"),
            ("sec-fetch-site", "cross-site"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(next(&mut c).await["event"], "registry_loaded");
    let r = request(&mut c, "1", "list_services", json!({})).await;
    assert!(r["data"]["services"].is_array(), "{r}");
    for (id, action, params) in [
        (
            "2",
            "service_action",
            json!({"name": "backend_9000", "action": "stop"}),
        ),
        ("3", "deploy_package", json!({"package": "x.tar.gz"})),
    ] {
        let r = request(&mut c, id, action, params).await;
        assert_eq!(r["error"]["code"], "unauthorized", "{r}");
        assert!(
            r["error"]["message"].as_str().unwrap().contains("\"auth\""),
            "{r}"
        );
    }
    // A wrong token, then an empty one: refused, and the socket is still not the operator's.
    let r = request(
        &mut c,
        "4",
        "auth",
        json!({"token": "not-the-token-at-all"}),
    )
    .await;
    assert_eq!(r["error"]["code"], "auth_failed", "{r}");
    assert!(!r.to_string().contains(TOKEN));
    let r = request(&mut c, "5", "auth", json!({"token": ""})).await;
    assert_eq!(r["error"]["code"], "auth_failed", "{r}");
    let r = request(
        &mut c,
        "6",
        "service_action",
        json!({"name": "backend_9000", "action": "stop"}),
    )
    .await;
    assert_eq!(r["error"]["code"], "unauthorized", "{r}");
    assert_eq!(refusals(&server, "foreign_origin"), 3);
    assert_eq!(refusals(&server, "wrong_token"), 1);
    assert_eq!(refusals(&server, "empty_token"), 1);
    // The right token: the action now reaches the registry (which has no such process).
    let r = request(&mut c, "7", "auth", json!({"token": TOKEN})).await;
    assert_eq!(r["data"]["authenticated"], true, "{r}");
    let r = request(
        &mut c,
        "8",
        "service_action",
        json!({"name": "backend_9000", "action": "stop"}),
    )
    .await;
    assert_eq!(r["error"]["code"], "not_found", "{r}");
}

#[tokio::test]
async fn a_local_tool_may_act_but_deploying_needs_the_token_and_a_wrong_one_is_401() {
    let server = serve(limits()).await;
    let mut c = connect_with(server.addr, "", &[]).await.unwrap();
    next(&mut c).await;
    let r = request(
        &mut c,
        "1",
        "service_action",
        json!({"name": "ghost", "action": "stop"}),
    )
    .await;
    assert_eq!(r["error"]["code"], "not_found", "{r}");
    let r = request(
        &mut c,
        "2",
        "deploy_package",
        json!({"package": "x.tar.gz"}),
    )
    .await;
    assert_eq!(r["error"]["code"], "unauthorized", "{r}");
    assert_eq!(refusals(&server, "token_required"), 1);

    let refused = connect_with(
        server.addr,
        "",
        &[("authorization", "Bearer wrong-token-0000000")],
    )
    .await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                .into_owned();
            assert!(body.contains("wrong operator token"), "{body}");
        }
        other => panic!("expected a 401, got {other:?}"),
    }
    assert_eq!(refusals(&server, "wrong_token"), 1);
}

#[tokio::test]
async fn with_protected_reads_nothing_is_sent_before_auth() {
    let server = serve_full(
        limits(),
        false,
        crate::operator::OperatorConfig {
            protect_reads: true,
            require_token: true,
            ..Default::default()
        },
    )
    .await;
    let mut c = connect_with(server.addr, "", &[]).await.unwrap();
    let first = next(&mut c).await;
    assert_eq!(
        (&first["type"], &first["error"]["code"]),
        (&json!("response"), &json!("unauthorized")),
        "{first}"
    );
    assert!(first["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--protect-reads"));
    let r = request(&mut c, "1", "list_services", json!({})).await;
    assert_eq!(r["error"]["code"], "unauthorized", "{r}");
    let r = request(&mut c, "2", "auth", json!({"token": "nope-nope-nope-nope"})).await;
    assert_eq!(r["error"]["code"], "auth_failed", "{r}");
    let r = request(&mut c, "3", "auth", json!({"token": TOKEN})).await;
    assert_eq!(r["data"]["authenticated"], true, "{r}");
    // Now the stream starts, as on any connection.
    assert_eq!(next(&mut c).await["event"], "registry_loaded");
    let r = request(&mut c, "4", "list_services", json!({})).await;
    assert!(r["data"]["services"].is_array(), "{r}");
    assert_eq!(refusals(&server, "missing_token"), 1);
}

#[tokio::test]
async fn a_flood_is_rate_limited_per_connection_and_others_are_unaffected() {
    let server = serve_full(
        limits(),
        false,
        crate::operator::OperatorConfig {
            // A slow refill, so a slow machine answering the flood lets few more through.
            ws_rate: crate::rate_limit::RateLimit {
                per_second: 1,
                burst: 10,
            },
            ..Default::default()
        },
    )
    .await;
    let mut flood = connect(server.addr, "").await;
    let mut calm = connect(server.addr, "").await;
    next(&mut flood).await;
    next(&mut calm).await;
    for i in 0..40 {
        let text = json!({"id": i, "type": "request", "action": "list_endpoints"});
        flood
            .send(Message::Text(text.to_string().into()))
            .await
            .unwrap();
    }
    let mut limited = 0;
    for _ in 0..40 {
        let r = loop {
            let m = next(&mut flood).await;
            if m["type"] == "response" {
                break m;
            }
        };
        if r["error"]["code"] == "rate_limited" {
            assert!(r["id"].is_number(), "{r}");
            limited += 1;
        }
    }
    // The burst went through; (nearly) all the rest did not.
    assert!((25..=30).contains(&limited), "{limited} of 40 limited");
    let r = request(&mut calm, "calm", "list_endpoints", json!({})).await;
    assert!(r["data"]["endpoints"].is_array(), "{r}");
    let hub = server.hub.as_ref().unwrap();
    assert_eq!(hub.core.state.metrics.rate_limited.get("ws"), limited);
}

#[tokio::test]
async fn metrics_count_open_connections_and_published_events() {
    let server = serve(limits()).await;
    let metrics = server.hub.as_ref().unwrap().core.state.metrics.clone();
    assert_eq!(metrics.ws_connections.get(), 0);
    let mut c = connect(server.addr, "").await;
    assert_eq!(next(&mut c).await["event"], "registry_loaded");
    assert_eq!(metrics.ws_connections.get(), 1);
    // A node seen for the first time is an event.
    server
        .health
        .record(heartbeat("backend_9000", 9000), tokio::time::Instant::now())
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metrics.ws_events.get() == 0 {
        assert!(std::time::Instant::now() < deadline, "no event counted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(metrics.render().contains("colony_ws_connections 1"));
    drop(c);
    while metrics.ws_connections.get() != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the closed connection still counts"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
