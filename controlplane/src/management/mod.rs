//! The management port (DESIGN §1, §9). Routes:
//!
//! | route | node | answer |
//! |---|---|---|
//! | `GET /health` | every node | this node's own liveness (open even with `--protect-reads`: it is the liveness probe) |
//! | `GET /metrics` | every node | Prometheus text |
//! | `POST /heartbeat` | coordinator | records a node's signed heartbeat (or goodbye) |
//! | `GET /heartbeat/ws` | coordinator | the persistent heartbeat channel: one signed heartbeat per frame ([`channel`]) |
//! | `POST /tokens/report` | coordinator | a backend's signed report of what it did with init tokens |
//! | `GET /tokens` | coordinator | the init-token audit (the operator: [`crate::operator::Guard::operator`]) |
//! | `GET /health/status` | coordinator | every component's state |
//! | `GET /health/stale` | coordinator | components STALE or DOWN |
//! | `GET /alerts` | coordinator | open and resolved alerts |
//! | `PUT /packages/{file}` | coordinator | a package upload (the operator's token, always; [`packages`], merged after the standard layers) |
//! | `GET /ws` | coordinator | the service registry over WebSocket ([`crate::ws`]) |
//! | `GET /`, `/assets/*`, `/api/*` | coordinator | the live dashboard ([`crate::dashboard`]) |
//!
//! Everything but `/health`, `/heartbeat` (a node's call) and the dashboard's page and
//! assets is a read: open unless `--protect-reads` ([`crate::operator`]).

pub mod batching;
pub mod channel;
mod health;
mod heartbeat;
pub mod packages;
pub mod tokens;

use axum::routing::{get, post};
use axum::Router;

use crate::dashboard;
use crate::state::MgmtState;
use crate::ws::{self, Hub, WsLimits};

/// The coordinator's management routes, with `/ws` under the default [`WsLimits`].
pub fn coordinator_router(state: MgmtState) -> Router {
    coordinator_router_with(state, WsLimits::default(), batching::Flow::default())
}

/// The coordinator's management routes, with `/ws` under `limits`.
pub fn coordinator_router_with(
    state: MgmtState,
    limits: WsLimits,
    thread_flow: batching::Flow,
) -> Router {
    let reads = Router::new()
        .route("/metrics", get(health::metrics))
        .route("/health/status", get(health::status))
        .route("/health/stale", get(health::stale))
        .route("/alerts", get(health::alerts))
        .route_layer(state.guard.reads());
    Router::new()
        .route("/health", get(health::own))
        .route(
            "/heartbeat",
            post(heartbeat::receive).with_state(heartbeat::HeartbeatState::new(&state)),
        )
        .route("/tokens/report", post(tokens::report))
        .merge(reads)
        .with_state(state.clone())
        .merge(tokens::operator_routes(state.clone()).route_layer(state.guard.operator()))
        .merge(channel::router(channel::ChannelState::new(
            &state,
            channel::ChannelLimits::default(),
            thread_flow,
        )))
        .merge(ws::router(Hub::new(state.clone(), limits)))
        .merge(dashboard::router(state))
}

/// A backend's management routes.
pub fn backend_router(state: MgmtState) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(health::metrics).route_layer(state.guard.reads()),
        )
        .route("/health", get(health::own))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use serde_json::{json, Value};
    use shared::NodeAddress;
    use tower::ServiceExt;

    use super::*;
    use crate::coordinator::colony::ColonyManager;
    use crate::coordinator::health::config::HealthConfig;
    use crate::coordinator::health::tracker::HealthTracker;
    use crate::http::{harden, HttpLimits};
    use crate::metrics::Metrics;
    use crate::node_auth::NodeAuth;
    use crate::state::NodeInfo;
    use crate::wire::heartbeat::NodeType;
    use shared::secret::ClusterSecret;
    use shared::signing::{RequestSigner, SignatureVerifier, HEADER};

    const SECRET: &str = "management-test-secret-0123";

    fn signer() -> RequestSigner {
        RequestSigner::new(&ClusterSecret::from_env_value(SECRET).unwrap())
    }

    fn app() -> (Router, HealthTracker) {
        app_with(None)
    }

    fn app_with(colony: Option<ColonyManager>) -> (Router, HealthTracker) {
        let address = NodeAddress::new([127, 0, 0, 1].into(), 8082, 8083, 8084);
        let health = HealthTracker::new(
            HealthConfig::default(),
            Some(("coordinator".into(), address)),
        );
        let metrics = Metrics::new(
            dataplane::DataPlane::new(dataplane::DataPlaneConfig::default()),
            Some(health.clone()),
        );
        let secret = ClusterSecret::from_env_value(SECRET).unwrap();
        let guard = crate::operator::Access::new(Default::default(), &metrics).guard(
            "mgmt",
            address.ip,
            Some(address.mgmt_port),
        );
        let state = MgmtState {
            node: NodeInfo::new("coordinator", NodeType::Coordinator, address),
            node_auth: NodeAuth::new(
                SignatureVerifier::new(&secret),
                metrics.auth_refusals.clone(),
                "mgmt",
            ),
            metrics: metrics.clone(),
            guard,
            health: Some(health.clone()),
            processes: None,
            colony,
            deploy: None,
            tasks: tokio_util::task::TaskTracker::new(),
        };
        let limits = HttpLimits {
            max_body: 4096,
            request_timeout: Duration::from_secs(5),
        };
        (
            // As a local tool reaches it: the reads and the operator routes judge the peer.
            harden(
                coordinator_router(state).layer(axum::extract::connect_info::MockConnectInfo(
                    std::net::SocketAddr::new(address.ip, 50000),
                )),
                limits,
                metrics.http,
                "mgmt",
            ),
            health,
        )
    }

    async fn call(
        app: &Router,
        method: &str,
        uri: &str,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, Value) {
        // Every HTTP/1.1 client sends a Host; the operator check judges it.
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "127.0.0.1:8084");
        if let Some(body) = &body {
            req = req
                .header("content-type", "application/json")
                .header(HEADER, signer().sign(method, uri, body));
        }
        let req = req.body(body.map_or_else(Body::empty, Body::from)).unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, value)
    }

    fn good() -> Value {
        json!({"instance_id":"backend_9000","node_type":"backend",
               "address":{"ip":"127.0.0.1","internal_port":9000,"http_port":9001,"mgmt_port":9002},
               "boot_id":"b00t","seq":1,"metrics":{"connections":2}})
    }

    #[tokio::test]
    async fn a_good_heartbeat_is_recorded() {
        let (app, health) = app();
        let (status, body) = call(
            &app,
            "POST",
            "/heartbeat",
            Some(good().to_string().into_bytes()),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "ACTIVE");
        let (_, status_body) = call(&app, "GET", "/health/status", None).await;
        assert_eq!(status_body["total_components"], 2);
        assert_eq!(status_body["active"], 2);
        assert_eq!(status_body["components"][1]["node_id"], "backend_9000");
        assert_eq!(status_body["components"][1]["metrics"]["connections"], 2.0);
        assert!(health.node("backend_9000").is_some());
        let (_, metrics) = call(&app, "GET", "/metrics", None).await;
        let text = metrics.as_str().unwrap();
        assert!(
            text.contains("colony_heartbeats_received_total 1"),
            "{text}"
        );
        assert!(text.contains("colony_nodes{state=\"ACTIVE\"} 1"), "{text}");
    }

    #[tokio::test]
    async fn bad_heartbeats_are_refused_and_change_nothing() {
        let (app, health) = app();
        let mut missing = good();
        missing.as_object_mut().unwrap().remove("address");
        let mut wrong_type = good();
        wrong_type["seq"] = json!("one");
        let mut unknown_node = good();
        unknown_node["node_type"] = json!("toaster");
        let mut bad_metric = good();
        bad_metric["metrics"] = json!({"x": "high"});
        let mut bad_id = good();
        bad_id["instance_id"] = json!("../../etc/passwd");
        let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(10_000)).into_bytes();
        let cases: Vec<(Vec<u8>, StatusCode, &str)> = vec![
            (
                missing.to_string().into_bytes(),
                StatusCode::BAD_REQUEST,
                "address",
            ),
            (
                wrong_type.to_string().into_bytes(),
                StatusCode::BAD_REQUEST,
                "seq",
            ),
            (
                unknown_node.to_string().into_bytes(),
                StatusCode::BAD_REQUEST,
                "toaster",
            ),
            (
                bad_metric.to_string().into_bytes(),
                StatusCode::BAD_REQUEST,
                "metrics",
            ),
            (
                bad_id.to_string().into_bytes(),
                StatusCode::BAD_REQUEST,
                "instance_id",
            ),
            (b"{not json".to_vec(), StatusCode::BAD_REQUEST, "malformed"),
            (huge, StatusCode::PAYLOAD_TOO_LARGE, "limit"),
        ];
        for (body, expected, needle) in cases {
            let (status, answer) = call(&app, "POST", "/heartbeat", Some(body)).await;
            assert_eq!(status, expected, "{answer}");
            let message = answer["error"].as_str().unwrap_or_default();
            assert!(message.contains(needle), "{needle:?} not in {message:?}");
        }
        let body = good().to_string();
        let req = Request::post("/heartbeat")
            .header(HEADER, signer().sign("POST", "/heartbeat", body.as_bytes()))
            .body(Body::from(body))
            .unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(health.status().total_components, 1, "state changed");
    }

    #[tokio::test]
    async fn unknown_routes_are_json_404s() {
        let (app, _) = app();
        let (status, body) = call(&app, "GET", "/nope", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"], "no route for /nope");
        let (status, body) = call(&app, "GET", "/health", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["node_type"], "coordinator");
    }

    #[tokio::test]
    async fn json_media_types_with_parameters_or_capitals_are_json() {
        let (app, health) = app();
        for (i, content_type) in ["application/json; charset=utf-8", "Application/JSON"]
            .into_iter()
            .enumerate()
        {
            let mut heartbeat = good();
            heartbeat["seq"] = json!(i + 1);
            let body = heartbeat.to_string();
            let req = Request::post("/heartbeat")
                .header("content-type", content_type)
                .header(HEADER, signer().sign("POST", "/heartbeat", body.as_bytes()))
                .body(Body::from(body))
                .unwrap();
            let res = app.clone().oneshot(req).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK, "{content_type}");
        }
        assert_eq!(health.node("backend_9000").unwrap().heartbeats, 2);
    }

    #[tokio::test]
    async fn requests_are_counted_by_route_with_a_bounded_label_set() {
        let (app, _) = app();
        let heartbeat = Some(good().to_string().into_bytes());
        call(&app, "POST", "/heartbeat", heartbeat).await;
        call(&app, "GET", "/no/such/route", None).await;
        call(&app, "BREW", "/health", None).await;
        let (_, metrics) = call(&app, "GET", "/metrics", None).await;
        let text = metrics.as_str().unwrap();
        for line in [
            r#"colony_http_requests_total{plane="mgmt",method="POST",route="/heartbeat",status="200"} 1"#,
            r#"colony_http_requests_total{plane="mgmt",method="GET",route="unmatched",status="404"} 1"#,
            r#"colony_http_requests_total{plane="mgmt",method="OTHER",route="/health",status="405"} 1"#,
        ] {
            assert!(text.contains(line), "{line} not in {text}");
        }
    }

    /// `POST uri` with `body` and the given signature header, if any.
    async fn post_signed(
        app: &Router,
        uri: &str,
        signature: Option<&str>,
        body: &str,
    ) -> (StatusCode, Value) {
        let mut req = Request::post(uri).header("content-type", "application/json");
        if let Some(signature) = signature {
            req = req.header(HEADER, signature);
        }
        let res = app
            .clone()
            .oneshot(req.body(Body::from(body.to_owned())).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn metrics_text(app: &Router) -> String {
        let (_, metrics) = call(app, "GET", "/metrics", None).await;
        metrics.as_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn heartbeats_without_a_valid_signature_are_401_and_change_nothing() {
        let (app, health) = app();
        let body = good().to_string();
        let sign = |body: &str, ts| signer().sign_at("POST", "/heartbeat", body.as_bytes(), ts);
        let now = shared::signing::unix_millis();
        let valid = sign(&body, now);
        let stranger =
            RequestSigner::new(&ClusterSecret::from_env_value("a-stranger-secret-0123").unwrap());
        let mut changed = good();
        changed["instance_id"] = json!("evil_node");
        let cases: Vec<(Option<String>, String, &str)> = vec![
            (None, body.clone(), "missing"),
            (
                Some(valid[..valid.len() - 3].to_owned()),
                body.clone(),
                "malformed",
            ),
            (
                Some(stranger.sign("POST", "/heartbeat", body.as_bytes())),
                body.clone(),
                "unknown_key",
            ),
            (
                Some(sign(&body, now - 3_600_000)),
                body.clone(),
                "bad_timestamp",
            ),
            (Some(valid.clone()), changed.to_string(), "bad_mac"),
        ];
        for (signature, body, reason) in cases {
            let (status, answer) =
                post_signed(&app, "/heartbeat", signature.as_deref(), &body).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{reason}: {answer}");
            assert_eq!(answer["code"], reason, "{answer}");
        }
        assert_eq!(health.status().total_components, 1, "state changed");
        let text = metrics_text(&app).await;
        for reason in [
            "missing",
            "malformed",
            "unknown_key",
            "bad_timestamp",
            "bad_mac",
        ] {
            let line = format!(r#"colony_auth_refusals_total{{plane="mgmt",reason="{reason}"}} 1"#);
            assert!(text.contains(&line), "{line} not in {text}");
        }
        assert!(
            text.contains("colony_heartbeats_received_total 0"),
            "{text}"
        );
        // The valid signature still works for the body it was made for.
        let (status, _) = post_signed(&app, "/heartbeat", Some(&valid), &body).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn replayed_heartbeats_are_409_and_a_new_boot_starts_again() {
        let (app, health) = app();
        let beat = |boot: &str, seq: u64, leaving: bool| {
            let mut hb = good();
            hb["boot_id"] = json!(boot);
            hb["seq"] = json!(seq);
            hb["leaving"] = json!(leaving);
            hb.to_string().into_bytes()
        };
        let (status, _) = call(&app, "POST", "/heartbeat", Some(beat("one", 5, false))).await;
        assert_eq!(status, StatusCode::OK);
        let before = health.node("backend_9000").unwrap();
        for seq in [5, 2] {
            let (status, answer) =
                call(&app, "POST", "/heartbeat", Some(beat("one", seq, true))).await;
            assert_eq!(status, StatusCode::CONFLICT, "{answer}");
            assert!(
                answer["error"].as_str().unwrap().contains("replayed"),
                "{answer}"
            );
        }
        let after = health.node("backend_9000").unwrap();
        assert_eq!(
            (after.status, after.seq, after.heartbeats),
            (before.status, 5, 1)
        );
        // A restart: a new boot id, counting from 1.
        let (status, _) = call(&app, "POST", "/heartbeat", Some(beat("two", 1, false))).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = call(&app, "POST", "/heartbeat", Some(beat("one", 6, false))).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(health.node("backend_9000").unwrap().seq, 1);
        let text = metrics_text(&app).await;
        assert!(
            text.contains(r#"colony_auth_refusals_total{plane="mgmt",reason="replay"} 3"#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn backends_report_token_use_signed_and_the_audit_lists_it() {
        let colony = crate::coordinator::colony::testing::manager(std::sync::Arc::new(
            shared::registry::InMemoryClusterRegistry::new(),
        ));
        let issuer = shared::token::TokenIssuer::new(&ClusterSecret::generate().unwrap());
        let token = issuer
            .issue(
                "backend_9000",
                shared::topology::ShardCoord::new(1, 0),
                "c1",
                Duration::from_secs(60),
            )
            .unwrap();
        colony.tokens().issued(&token);
        let (app, _) = app_with(Some(colony));
        let (status, list) = call(&app, "GET", "/tokens", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(list["capacity"], 1024);
        assert_eq!(list["tokens"][0]["state"], "issued");
        assert!(!list.to_string().contains(&token.signature));

        let report = json!({"instance_id": "backend_9000", "reports": [
            {"token_id": token.token_id, "outcome": "used", "at_ms": 1_750_000_000_000u64}]})
        .to_string();
        let (status, answer) = post_signed(&app, "/tokens/report", None, &report).await;
        assert_eq!(
            (status, &answer["code"]),
            (StatusCode::UNAUTHORIZED, &json!("missing"))
        );
        let (_, list) = call(&app, "GET", "/tokens", None).await;
        assert_eq!(list["tokens"][0]["state"], "issued");

        let (status, answer) =
            call(&app, "POST", "/tokens/report", Some(report.into_bytes())).await;
        assert_eq!((status, answer), (StatusCode::OK, json!({"recorded": 1})));
        let (_, list) = call(&app, "GET", "/tokens", None).await;
        let entry = &list["tokens"][0];
        assert_eq!(entry["state"], "used");
        assert_eq!(entry["used"]["by"], "backend_9000");
        assert_eq!(entry["used"]["at"], "2025-06-15T15:06:40.000Z");

        let bad = json!({"instance_id": "backend_9000", "reports": []}).to_string();
        let (status, answer) = call(&app, "POST", "/tokens/report", Some(bad.into_bytes())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    }
}
