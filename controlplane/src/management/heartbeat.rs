//! `POST /heartbeat`: a node reports in (or says goodbye), signed (DESIGN §13).
//!
//! The signature is checked before the body is parsed ([`SignedJson`]); a replayed heartbeat
//! (an old `seq` of the same boot, or a retired boot) is refused 409 by the tracker. Both kinds
//! of refusal change nothing and are counted in `colony_auth_refusals_total`.

use axum::extract::{FromRef, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;

use crate::coordinator::health::node_state::NodeState;
use crate::coordinator::health::tracker::HealthTracker;
use crate::error::ApiError;
use crate::node_auth::{NodeAuth, SignedJson};
use crate::state::MgmtState;
use crate::wire::heartbeat::{Heartbeat, HeartbeatError};

/// What the heartbeat route needs, and no more: it is the hottest route of the coordinator
/// (every node, every interval), and axum clones a route's state on every request.
#[derive(Debug, Clone)]
pub struct HeartbeatState {
    health: Option<HealthTracker>,
    received: Counter,
    auth: NodeAuth,
}

impl HeartbeatState {
    /// The heartbeat route's share of the management state.
    pub fn new(state: &MgmtState) -> Self {
        HeartbeatState {
            health: state.health.clone(),
            received: state.metrics.heartbeats.clone(),
            auth: state.node_auth.clone(),
        }
    }
}

impl FromRef<HeartbeatState> for NodeAuth {
    fn from_ref(state: &HeartbeatState) -> NodeAuth {
        state.auth.clone()
    }
}

/// Records a signed heartbeat. A body that does not verify, parse or validate, and a
/// replay, change nothing.
pub async fn receive(
    State(state): State<HeartbeatState>,
    SignedJson(heartbeat): SignedJson<Heartbeat>,
) -> Result<Response, ApiError> {
    let tracker = state
        .health
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("heartbeats go to the coordinator".into()))?;
    heartbeat.validate()?;
    let recorded = tracker.record(heartbeat, Instant::now()).inspect_err(|e| {
        if matches!(
            e,
            HeartbeatError::Replayed { .. } | HeartbeatError::RetiredBoot { .. }
        ) {
            state.auth.count_refusal("replay");
        }
    })?;
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
