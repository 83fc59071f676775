//! The management port (DESIGN §1, §9). Routes:
//!
//! | route | node | answer |
//! |---|---|---|
//! | `GET /health` | every node | this node's own liveness (open even with `--protect-reads`: it is the liveness probe) |
//! | `GET /metrics` | every node | Prometheus text |
//! | `POST /heartbeat` | coordinator | records a node's heartbeat (or goodbye) |
//! | `GET /health/status` | coordinator | every component's state |
//! | `GET /health/stale` | coordinator | components STALE or DOWN |
//! | `GET /alerts` | coordinator | open and resolved alerts |
//! | `GET /ws` | coordinator | the service registry over WebSocket ([`crate::ws`]) |
//! | `GET /`, `/assets/*`, `/api/*` | coordinator | the live dashboard ([`crate::dashboard`]) |
//!
//! Everything but `/health`, `/heartbeat` (a node's call) and the dashboard's page and
//! assets is a read: open unless `--protect-reads` ([`crate::operator`]).

mod health;
mod heartbeat;

use axum::routing::{get, post};
use axum::Router;

use crate::dashboard;
use crate::state::MgmtState;
use crate::ws::{self, Hub, WsLimits};

/// The coordinator's management routes, with `/ws` under the default [`WsLimits`].
pub fn coordinator_router(state: MgmtState) -> Router {
    coordinator_router_with(state, WsLimits::default())
}

/// The coordinator's management routes, with `/ws` under `limits`.
pub fn coordinator_router_with(state: MgmtState, limits: WsLimits) -> Router {
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
        .merge(reads)
        .with_state(state.clone())
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
    use crate::coordinator::health::config::HealthConfig;
    use crate::coordinator::health::tracker::HealthTracker;
    use crate::http::{harden, HttpLimits};
    use crate::metrics::Metrics;
    use crate::state::NodeInfo;
    use crate::wire::heartbeat::NodeType;

    fn app() -> (Router, HealthTracker) {
        let address = NodeAddress::new([127, 0, 0, 1].into(), 8082, 8083, 8084);
        let health = HealthTracker::new(
            HealthConfig::default(),
            Some(("coordinator".into(), address)),
        );
        let metrics = Metrics::new(
            dataplane::DataPlane::new(dataplane::DataPlaneConfig::default()),
            Some(health.clone()),
        );
        let guard = crate::operator::Access::new(Default::default(), &metrics).guard(
            "mgmt",
            address.ip,
            Some(address.mgmt_port),
        );
        let state = MgmtState {
            node: NodeInfo::new("coordinator", NodeType::Coordinator, address),
            metrics: metrics.clone(),
            guard,
            health: Some(health.clone()),
            processes: None,
            colony: None,
            tasks: tokio_util::task::TaskTracker::new(),
        };
        let limits = HttpLimits {
            max_body: 4096,
            request_timeout: Duration::from_secs(5),
        };
        (
            harden(coordinator_router(state), limits, metrics.http, "mgmt"),
            health,
        )
    }

    async fn call(
        app: &Router,
        method: &str,
        uri: &str,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if body.is_some() {
            req = req.header("content-type", "application/json");
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
               "seq":1,"metrics":{"connections":2}})
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
        let req = Request::post("/heartbeat")
            .body(Body::from(good().to_string()))
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
            let req = Request::post("/heartbeat")
                .header("content-type", content_type)
                .body(Body::from(heartbeat.to_string()))
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
}
