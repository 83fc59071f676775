//! `POST /heartbeat`: a node reports in (or says goodbye).

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::MgmtState;
use crate::coordinator::heartbeat::Heartbeat;
use crate::error::{ApiError, ApiJson};

/// Records a heartbeat. A body that does not parse or validate changes nothing.
pub async fn receive(
    State(state): State<MgmtState>,
    ApiJson(heartbeat): ApiJson<Heartbeat>,
) -> Result<Json<Value>, ApiError> {
    let tracker = state
        .health
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("heartbeats go to the coordinator".into()))?;
    heartbeat.validate().map_err(ApiError::BadRequest)?;
    let recorded = tracker.record(heartbeat, Instant::now());
    state.metrics.heartbeats.inc();
    Ok(Json(json!({ "status": recorded.state })))
}
