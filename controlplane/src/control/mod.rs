//! The control plane (DESIGN §3–5). Routes:
//!
//! | route | node | answer |
//! |---|---|---|
//! | `GET /topology` | coordinator | the running colony's topology; 404 until one is started |
//! | `POST /colony-start` | coordinator | discovers live backends, places shards, inits them |
//! | `GET /colony` | coordinator | state, tick, population, fingerprint, ticks/s |
//! | `POST /colony/run` | coordinator | `{"ticks":N,"wait":bool}`: run N more ticks |
//! | `POST /colony/pause` | coordinator | stop every backend at one common tick |
//! | `POST /colony/rebalance` | coordinator | spread the shards over every live backend at the next checkpoint |
//! | `GET /colony/image.png` | coordinator | the world as a PNG |
//! | `POST /init-colony-shard` | backend | a signed request to build one shard |
//! | `GET /shards` | backend | the shards held here |
//! | `GET /shards/{x}/{y}` | backend | one shard's cells at its current tick |

mod colony;
mod init;
mod shards;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use dataplane::ShardStore;
use shared::token::TokenVerifier;
use shared::NodeAddress;

use crate::coordinator::colony::ColonyManager;

/// The coordinator's control routes.
pub fn coordinator_router(colony: ColonyManager) -> Router {
    Router::new()
        .route("/topology", get(colony::topology))
        .route("/colony-start", post(colony::start))
        .route("/colony", get(colony::status))
        .route("/colony/run", post(colony::run))
        .route("/colony/pause", post(colony::pause))
        .route("/colony/rebalance", post(colony::rebalance))
        .route("/colony/image.png", get(colony::image))
        .with_state(colony)
}

/// State of a backend's control routes.
#[derive(Clone)]
pub struct BackendControl {
    /// This backend's instance id.
    pub instance_id: String,
    /// This backend's advertised address.
    pub address: NodeAddress,
    /// Checks init tokens (and remembers used ones).
    pub verifier: Arc<TokenVerifier>,
    /// The shards held here.
    pub store: ShardStore,
}

/// A backend's control routes.
pub fn backend_router(state: BackendControl) -> Router {
    Router::new()
        .route("/init-colony-shard", post(init::init_colony_shard))
        .route("/shards", get(shards::list))
        .route("/shards/{x}/{y}", get(shards::view))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use serde_json::{json, Value};
    use shared::registry::InMemoryClusterRegistry;
    use tower::ServiceExt;

    use super::*;
    use crate::coordinator::colony::testing::{manager, topology};

    type Case<'a> = (
        &'a str,
        &'a str,
        Option<&'a str>,
        &'a str,
        StatusCode,
        &'a str,
    );

    async fn call(
        app: &Router,
        method: &str,
        uri: &str,
        key: Option<&str>,
        body: &str,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let request = request.body(Body::from(body.to_owned())).unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    #[tokio::test]
    async fn a_running_colony_answers_409_with_its_id_and_the_key_replays_it() {
        let colony = manager(Arc::new(InMemoryClusterRegistry::new()));
        colony.pretend_started(topology("c1"));
        let app = coordinator_router(colony);
        let expected = json!({
            "error": "colony c1 is running; send \"restart\": true to replace it",
            "colony_id": "c1",
        });
        let first = call(&app, "POST", "/colony-start", Some("k"), "").await;
        assert_eq!(first, (StatusCode::CONFLICT, expected.clone()));
        let replay = call(
            &app,
            "POST",
            "/colony-start",
            Some("k"),
            r#"{"restart":true}"#,
        )
        .await;
        assert_eq!(replay, (StatusCode::CONFLICT, expected));
        let (status, body) = call(&app, "GET", "/topology", None, "").await;
        assert_eq!((status, &body["colony_id"]), (StatusCode::OK, &json!("c1")));
    }

    #[tokio::test]
    async fn each_colony_failure_has_its_status() {
        let colony = manager(Arc::new(InMemoryClusterRegistry::new()));
        let app = coordinator_router(colony);
        let long_key = "k".repeat(129);
        // (method, uri, idempotency key, body, status, a word of the error)
        let cases: [Case; 6] = [
            (
                "GET",
                "/topology",
                None,
                "",
                StatusCode::NOT_FOUND,
                "topology not initialized",
            ),
            (
                "POST",
                "/colony-start",
                Some(&long_key),
                "",
                StatusCode::BAD_REQUEST,
                "Idempotency-Key",
            ),
            (
                "POST",
                "/colony-start",
                None,
                r#"{"shard_width":0}"#,
                StatusCode::BAD_REQUEST,
                "shard_width",
            ),
            (
                "POST",
                "/colony-start",
                None,
                r#"{"nope":1}"#,
                StatusCode::BAD_REQUEST,
                "unknown field",
            ),
            (
                "POST",
                "/colony-start",
                None,
                "",
                StatusCode::SERVICE_UNAVAILABLE,
                "no live backend",
            ),
            (
                "POST",
                "/colony/run",
                None,
                r#"{"ticks":1}"#,
                StatusCode::NOT_FOUND,
                "no colony",
            ),
        ];
        for (method, uri, key, body, status, needle) in cases {
            let (got, answer) = call(&app, method, uri, key, body).await;
            assert_eq!(got, status, "{method} {uri} {body}: {answer}");
            let message = answer["error"].as_str().unwrap_or_default();
            assert!(message.contains(needle), "{needle:?} not in {message:?}");
        }
    }
}
