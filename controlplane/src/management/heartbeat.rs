//! `POST /heartbeat`: a node reports in (or says goodbye).

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;

use crate::coordinator::health::node_state::NodeState;
use crate::coordinator::health::tracker::HealthTracker;
use crate::error::{ApiError, ApiJson};
use crate::state::MgmtState;
use crate::wire::heartbeat::Heartbeat;

/// What the heartbeat route needs, and no more: it is the hottest route of the coordinator
/// (every node, every interval), and axum clones a route's state on every request.
#[derive(Debug, Clone)]
pub struct HeartbeatState {
    health: Option<HealthTracker>,
    received: Counter,
}

impl HeartbeatState {
    /// The heartbeat route's share of the management state.
    pub fn new(state: &MgmtState) -> Self {
        HeartbeatState {
            health: state.health.clone(),
            received: state.metrics.heartbeats.clone(),
        }
    }
}

/// Records a heartbeat. A body that does not parse or validate changes nothing.
pub async fn receive(
    State(state): State<HeartbeatState>,
    ApiJson(heartbeat): ApiJson<Heartbeat>,
) -> Result<Response, ApiError> {
    let tracker = state
        .health
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("heartbeats go to the coordinator".into()))?;
    heartbeat.validate()?;
    let recorded = tracker.record(heartbeat, Instant::now());
    state.received.inc();
    Ok(answer(recorded.state))
}

/// `{"status":"<state>"}`, written out once per state rather than built per request.
fn answer(state: NodeState) -> Response {
    let body = match state {
        NodeState::Active => r#"{"status":"ACTIVE"}"#,
        NodeState::Stale => r#"{"status":"STALE"}"#,
        NodeState::Down => r#"{"status":"DOWN"}"#,
        NodeState::Left => r#"{"status":"LEFT"}"#,
    };
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn answers_are_what_json_would_write() {
        for state in [
            NodeState::Active,
            NodeState::Stale,
            NodeState::Down,
            NodeState::Left,
        ] {
            let response = answer(state);
            assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(
                body,
                serde_json::json!({ "status": state }).to_string(),
                "{state:?}"
            );
        }
    }
}
