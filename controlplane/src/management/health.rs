//! Read-only health endpoints and metrics.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use crate::coordinator::health::alerts::AlertsView;
use crate::coordinator::health::tracker::HealthTracker;
use crate::coordinator::health::views::HealthStatus;
use crate::error::ApiError;
use crate::state::MgmtState;

fn tracker(state: &MgmtState) -> Result<&HealthTracker, ApiError> {
    state
        .health
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("only the coordinator tracks node health".into()))
}

/// `GET /health`: this node answers, so it is alive.
pub async fn own(State(state): State<MgmtState>) -> Json<Value> {
    let node = &state.node;
    Json(json!({
        "status": "ok",
        "node_id": node.node_id,
        "node_type": node.node_type,
        "address": node.address,
        "started": crate::time::rfc3339(node.started),
        "uptime_seconds": node.started_at.elapsed().as_secs(),
    }))
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<MgmtState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// `GET /health/status`.
pub async fn status(State(state): State<MgmtState>) -> Result<Json<HealthStatus>, ApiError> {
    Ok(Json(tracker(&state)?.status()))
}

/// `GET /health/stale`.
pub async fn stale(State(state): State<MgmtState>) -> Result<Json<Value>, ApiError> {
    let stale = tracker(&state)?.stale();
    Ok(Json(json!({ "count": stale.len(), "components": stale })))
}

/// `GET /alerts`.
pub async fn alerts(State(state): State<MgmtState>) -> Result<Json<AlertsView>, ApiError> {
    Ok(Json(tracker(&state)?.alerts()))
}
