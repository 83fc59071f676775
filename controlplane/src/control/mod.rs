//! The control plane (DESIGN §3–5). Routes:
//!
//! | route | node | answer |
//! |---|---|---|
//! | `GET /topology` | coordinator | the running colony's topology; 404 until one is started |
//! | `POST /colony-start` | coordinator | discovers live backends, places shards, inits them |
//! | `GET /colony` | coordinator | state, tick, population, fingerprint, ticks/s |
//! | `POST /colony/run` | coordinator | `{"ticks":N,"wait":bool}`: run N more ticks |
//! | `POST /colony/pause` | coordinator | stop every backend at one common tick |
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
