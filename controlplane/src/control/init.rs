//! `POST /init-colony-shard` (DESIGN §4): the backend's side of colony start.
//!
//! Order matters: the request's signature is checked first, before the body is parsed (a node
//! call, DESIGN §13), then the init token (DESIGN §8), so a refused request changes nothing;
//! then the topology is taken from the request on the colony's first init (and cached), or
//! from the cache on later ones; then the shard's cells are built. What became of the token
//! (used, or refused and why) is reported to the coordinator's token audit.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use shared::token::unix_now;
use shared::topology::ClusterTopology;
use tracing::{info, warn};

use super::BackendControl;
use crate::node_auth::SignedJson;
use crate::wire::init::{InitColonyShard, InitColonyShardResponse};

impl IntoResponse for InitColonyShardResponse {
    fn into_response(self) -> Response {
        let status = match self {
            InitColonyShardResponse::Ok { .. } => StatusCode::OK,
            InitColonyShardResponse::Error { .. } => StatusCode::BAD_REQUEST,
        };
        (status, Json(self)).into_response()
    }
}

fn refuse(message: String) -> Response {
    warn!(reason = %message, "init refused");
    InitColonyShardResponse::Error { message }.into_response()
}

/// Verifies the token, settles the topology, and builds the shard.
pub async fn init_colony_shard(
    State(state): State<BackendControl>,
    SignedJson(request): SignedJson<InitColonyShard>,
) -> Response {
    let token = &request.token;
    let verified = state
        .verifier
        .verify(token, &state.instance_id, request.shard, unix_now());
    match verified {
        Ok(()) => state.token_reports.used(&token.token_id),
        Err(e) => state.token_reports.refused(&token.token_id, e.code()),
    }
    if let Err(e) = verified {
        state.node_auth.count_refusal(e.code());
        warn!(code = e.code(), shard = %request.shard, "init token refused");
        let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::UNAUTHORIZED);
        return (
            status,
            Json(json!({ "error": format!("init token refused: {e}"), "code": e.code() })),
        )
            .into_response();
    }

    let colony_id = token.colony_id.as_str();
    let (colony, cached) = match state.store.colony().filter(|c| c.colony_id() == colony_id) {
        Some(colony) => (colony, true),
        None => {
            let Some(raw) = request.topology else {
                return refuse(format!(
                    "missing topology on the first init of colony {colony_id}"
                ));
            };
            let topology: ClusterTopology = match serde_json::from_value(raw) {
                Ok(t) => t,
                Err(e) => return refuse(format!("invalid topology: {e}")),
            };
            if topology.colony_id() != colony_id {
                return refuse(format!(
                    "topology is for colony {} but the token is for colony {colony_id}",
                    topology.colony_id()
                ));
            }
            if !topology.contains_backend(&state.address) {
                return refuse(format!(
                    "this backend ({}) is not among the topology's backends",
                    state.address.to_internal_address()
                ));
            }
            match topology.backend_of(request.shard) {
                Some(b) if b.instance_id == state.instance_id => {}
                Some(b) => {
                    return refuse(format!(
                        "shard {} is placed on {}, not on {}",
                        request.shard, b.instance_id, state.instance_id
                    ))
                }
                None => return refuse(format!("shard {} is outside the world", request.shard)),
            }
            info!(colony = colony_id, "new colony: topology cached");
            (state.store.adopt(topology), false)
        }
    };
    match colony.topology().backend_of(request.shard) {
        Some(b) if b.instance_id == state.instance_id => {}
        Some(b) => {
            return refuse(format!(
                "shard {} is placed on {}, not on {}",
                request.shard, b.instance_id, state.instance_id
            ))
        }
        None => return refuse(format!("shard {} is outside the world", request.shard)),
    }
    match state.store.init_shard(&colony, request.shard) {
        Ok(figures) => InitColonyShardResponse::Ok {
            colony_id: colony_id.to_owned(),
            shard: request.shard,
            population: figures.population,
            fingerprint: figures.fingerprint.to_string(),
            topology_cached: cached,
        }
        .into_response(),
        Err(e) => refuse(format!("cannot build shard {}: {e}", request.shard)),
    }
}
