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
//! | `PUT /deploy/{file}` | backend | a signed node call from the coordinator: install and start a package ([`deploy`], merged after the standard layers) |
//! | `POST /init-colony-shard` | backend | a signed node call carrying an init token: build one shard |
//! | `GET /shards` | backend | the shards held here |
//! | `GET /shards/{x}/{y}` | backend | one shard's cells at its current tick |
//!
//! Colony start, run and pause need the operator; the `GET`s are reads, open unless
//! `--protect-reads` ([`crate::operator`]); the init is a node's call, checked by its token.

pub(crate) mod colony;
pub mod deploy;
pub(crate) mod init;
mod shards;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use dataplane::ShardStore;
use shared::token::TokenVerifier;
use shared::NodeAddress;

use crate::coordinator::colony::ColonyManager;
use crate::node_auth::NodeAuth;
use crate::operator::Guard;
use crate::token_reporter::TokenReporter;

/// The coordinator's control routes, behind the control listener's `guard`.
pub fn coordinator_router(colony: ColonyManager, guard: &Guard) -> Router {
    let operate = Router::new()
        .route("/colony-start", post(colony::start))
        .route("/colony/run", post(colony::run))
        .route("/colony/pause", post(colony::pause))
        .route("/colony/rebalance", post(colony::rebalance))
        .route_layer(guard.operator());
    let reads = Router::new()
        .route("/topology", get(colony::topology))
        .route("/colony", get(colony::status))
        .route("/colony/image.png", get(colony::image))
        .route_layer(guard.reads());
    operate.merge(reads).with_state(colony)
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
    /// Checks that state-changing calls come from a node (`Colony-Signature`).
    pub node_auth: NodeAuth,
    /// Tells the coordinator what became of each init token.
    pub token_reports: TokenReporter,
    /// The shards held here.
    pub store: ShardStore,
}

impl axum::extract::FromRef<BackendControl> for NodeAuth {
    fn from_ref(state: &BackendControl) -> NodeAuth {
        state.node_auth.clone()
    }
}

/// A backend's control routes, behind the control listener's `guard`.
pub fn backend_router(state: BackendControl, guard: &Guard) -> Router {
    let reads = Router::new()
        .route("/shards", get(shards::list))
        .route("/shards/{x}/{y}", get(shards::view))
        .route_layer(guard.reads());
    Router::new()
        .route("/init-colony-shard", post(init::init_colony_shard))
        .merge(reads)
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use serde_json::{json, Value};
    use shared::registry::InMemoryClusterRegistry;

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

    /// The control listener's guard on loopback, with the default operator settings.
    fn loopback_guard() -> Guard {
        let metrics = crate::metrics::Metrics::new(
            dataplane::DataPlane::new(dataplane::DataPlaneConfig::default()),
            None,
        );
        crate::operator::Access::new(Default::default(), &metrics).guard(
            "control",
            std::net::Ipv4Addr::LOCALHOST.into(),
            None,
        )
    }

    /// The coordinator's routes as a local tool on this machine reaches them.
    fn local(colony: ColonyManager) -> Router {
        let loopback = std::net::Ipv4Addr::LOCALHOST.into();
        coordinator_router(colony, &loopback_guard()).layer(
            axum::extract::connect_info::MockConnectInfo(std::net::SocketAddr::new(
                loopback, 50000,
            )),
        )
    }

    async fn call(
        app: &Router,
        method: &str,
        uri: &str,
        key: Option<&str>,
        body: &str,
    ) -> (StatusCode, Value) {
        // As the README's curl sends it.
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "localhost:8083");
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        crate::test_http::answer(app, request.body(Body::from(body.to_owned())).unwrap()).await
    }

    #[tokio::test]
    async fn a_running_colony_answers_409_with_its_id_and_the_key_replays_it() {
        let colony = manager(Arc::new(InMemoryClusterRegistry::new()));
        colony.pretend_started(topology("c1"));
        let app = local(colony);
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
        let app = local(colony);
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

    /// A backend `b1` at 9000 of [`topology`]'s colony, with the coordinator's secret.
    fn backend() -> (
        Router,
        BackendControl,
        shared::signing::RequestSigner,
        shared::token::TokenIssuer,
    ) {
        let secret =
            shared::secret::ClusterSecret::from_env_value("backend-router-secret-0123").unwrap();
        let state = BackendControl {
            instance_id: "b1".into(),
            address: crate::coordinator::colony::testing::address(9000),
            verifier: Arc::new(TokenVerifier::new(&secret)),
            node_auth: NodeAuth::new(
                shared::signing::SignatureVerifier::new(&secret),
                crate::metrics::AuthRefusals::default(),
                "control",
            ),
            token_reports: TokenReporter::disabled(),
            store: ShardStore::new(),
        };
        (
            backend_router(state.clone(), &loopback_guard()),
            state,
            shared::signing::RequestSigner::new(&secret),
            shared::token::TokenIssuer::new(&secret),
        )
    }

    async fn init(app: &Router, signature: Option<String>, body: &str) -> (StatusCode, Value) {
        let mut request =
            Request::post("/init-colony-shard").header("content-type", "application/json");
        if let Some(signature) = signature {
            request = request.header(shared::signing::HEADER, signature);
        }
        crate::test_http::answer(app, request.body(Body::from(body.to_owned())).unwrap()).await
    }

    #[tokio::test]
    async fn init_needs_a_node_signature_as_well_as_a_token() {
        let (app, state, signer, issuer) = backend();
        let topology = topology("c1");
        let token = issuer
            .issue(
                "b1",
                shared::topology::ShardCoord::new(0, 0),
                "c1",
                std::time::Duration::from_secs(60),
            )
            .unwrap();
        let body =
            json!({"shard": {"x": 0, "y": 0}, "topology": *topology, "token": token}).to_string();
        let stranger = shared::signing::RequestSigner::new(
            &shared::secret::ClusterSecret::from_env_value("not-the-cluster-secret-01").unwrap(),
        );
        for (signature, reason) in [
            (None, "missing"),
            (
                Some(stranger.sign("POST", "/init-colony-shard", body.as_bytes())),
                "unknown_key",
            ),
            (
                Some(signer.sign("POST", "/init-colony-shard", b"{}")),
                "bad_mac",
            ),
        ] {
            let (status, answer) = init(&app, signature, &body).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{reason}: {answer}");
            assert_eq!(answer["code"], reason);
            assert_eq!(state.node_auth.refusals(reason), 1, "{reason}");
        }
        // Nothing changed: no colony adopted, and the token is still unused.
        assert!(state.store.colony().is_none());
        assert_eq!(state.verifier.replay_len(), 0);

        let (status, answer) = init(
            &app,
            Some(signer.sign("POST", "/init-colony-shard", body.as_bytes())),
            &body,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["status"], "ok");
        // The same signed request again: the token is spent.
        let (status, answer) = init(
            &app,
            Some(signer.sign("POST", "/init-colony-shard", body.as_bytes())),
            &body,
        )
        .await;
        assert_eq!(
            (status, &answer["code"]),
            (StatusCode::FORBIDDEN, &json!("token_replayed"))
        );
        assert_eq!(state.node_auth.refusals("token_replayed"), 1);
    }
}
