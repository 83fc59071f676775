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
use shared::topology::{ClusterTopology, ShardCoord};
use shared::NodeAddress;
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
            let topology = match first_init_topology(
                request.topology,
                colony_id,
                &state.address,
                &state.instance_id,
                request.shard,
            ) {
                Ok(topology) => topology,
                Err(refusal) => return refuse(refusal.to_string()),
            };
            info!(colony = colony_id, "new colony: topology cached");
            (state.store.adopt(topology), false)
        }
    };
    if let Err(refusal) = placed_here(colony.topology(), request.shard, &state.instance_id) {
        return refuse(refusal.to_string());
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

/// Why a backend refuses the topology of an init: worded for the `Error` answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyRefusal {
    /// The colony's first init on this backend came without one.
    #[error("missing topology on the first init of colony {colony_id}")]
    Missing {
        /// The token's colony.
        colony_id: String,
    },
    /// It does not parse as a topology.
    #[error("invalid topology: {0}")]
    Invalid(String),
    /// It is another colony's.
    #[error("topology is for colony {topology} but the token is for colony {token}")]
    OtherColony {
        /// The colony the topology names.
        topology: String,
        /// The colony the token names.
        token: String,
    },
    /// This backend's address is not among its backends.
    #[error("this backend ({address}) is not among the topology's backends")]
    NotAmongBackends {
        /// This backend's data-plane address.
        address: String,
    },
    /// The shard is another backend's.
    #[error("shard {shard} is placed on {owner}, not on {instance_id}")]
    PlacedElsewhere {
        /// The shard asked for.
        shard: ShardCoord,
        /// The backend the topology places it on.
        owner: String,
        /// This backend.
        instance_id: String,
    },
    /// The shard is not in the world.
    #[error("shard {0} is outside the world")]
    OutsideWorld(ShardCoord),
}

/// The topology of a colony's first init on this backend, taken from the request: it must be
/// there, parse, be for the token's colony, list this backend's address and place the shard
/// on this backend. Pure, so the fuzz campaign (`crate::fuzzing`) runs exactly these checks.
///
/// # Errors
/// Why not, as [`TopologyRefusal`].
pub fn first_init_topology(
    raw: Option<serde_json::Value>,
    colony_id: &str,
    address: &NodeAddress,
    instance_id: &str,
    shard: ShardCoord,
) -> Result<ClusterTopology, TopologyRefusal> {
    let Some(raw) = raw else {
        return Err(TopologyRefusal::Missing {
            colony_id: colony_id.to_owned(),
        });
    };
    let topology: ClusterTopology =
        serde_json::from_value(raw).map_err(|e| TopologyRefusal::Invalid(e.to_string()))?;
    if topology.colony_id() != colony_id {
        return Err(TopologyRefusal::OtherColony {
            topology: topology.colony_id().to_owned(),
            token: colony_id.to_owned(),
        });
    }
    if !topology.contains_backend(address) {
        return Err(TopologyRefusal::NotAmongBackends {
            address: address.to_internal_address(),
        });
    }
    placed_here(&topology, shard, instance_id)?;
    Ok(topology)
}

/// `shard` is in the world and placed on `instance_id`.
fn placed_here(
    topology: &ClusterTopology,
    shard: ShardCoord,
    instance_id: &str,
) -> Result<(), TopologyRefusal> {
    match topology.backend_of(shard) {
        Some(b) if b.instance_id == instance_id => Ok(()),
        Some(b) => Err(TopologyRefusal::PlacedElsewhere {
            shard,
            owner: b.instance_id.clone(),
            instance_id: instance_id.to_owned(),
        }),
        None => Err(TopologyRefusal::OutsideWorld(shard)),
    }
}
