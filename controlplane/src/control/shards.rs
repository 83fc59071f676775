//! `GET /shards` and `GET /shards/{x}/{y}` on a backend.

use axum::extract::{Path, State};
use axum::Json;
use codec::Message;
use serde_json::{json, Value};

use super::BackendControl;
use crate::error::ApiError;

/// The shards held here, with tick and population.
pub async fn list(State(state): State<BackendControl>) -> Json<Value> {
    match state.store.summary() {
        Message::ShardsReply { colony_id, shards } => {
            Json(json!({ "colony_id": colony_id, "shards": shards }))
        }
        _ => Json(json!({ "colony_id": null, "shards": [] })),
    }
}

/// One shard's cells as rows of `.` and `#`.
pub async fn view(
    State(state): State<BackendControl>,
    Path((x, y)): Path<(u32, u32)>,
) -> Result<Json<Value>, ApiError> {
    match state.store.view(x, y) {
        Some(Message::ShardView {
            colony_id,
            x,
            y,
            tick,
            width,
            height,
            population,
            rows,
        }) => Ok(Json(json!({
            "colony_id": colony_id, "x": x, "y": y, "tick": tick, "width": width,
            "height": height, "population": population, "rows": rows,
        }))),
        _ => Err(ApiError::NotFound(format!(
            "shard ({x}, {y}) is not held by this backend"
        ))),
    }
}
