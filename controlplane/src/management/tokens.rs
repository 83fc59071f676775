//! The token audit's routes on the coordinator's management port (DESIGN §13):
//!
//! | route | who | answer |
//! |---|---|---|
//! | `POST /tokens/report` | a node (signed) | records what a backend did with its init tokens |
//! | `GET /tokens` | the operator | the latest tokens issued, as issued / used / expired / refused, by whom and when |
//!
//! The audit itself is [`crate::coordinator::tokens`].

use std::time::SystemTime;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::node_auth::SignedJson;
use crate::state::MgmtState;
use crate::wire::tokens::TokenReport;

/// Routes only the operator may call: `GET /tokens`.
///
/// The operator check is applied by whoever merges this router (see
/// [`crate::management::coordinator_router_with`]); these routes must never be merged
/// without it.
pub fn operator_routes(state: MgmtState) -> Router {
    Router::new().route("/tokens", get(list)).with_state(state)
}

/// `POST /tokens/report`: a signed report from a backend.
pub async fn report(
    State(state): State<MgmtState>,
    SignedJson(report): SignedJson<TokenReport>,
) -> Result<Json<Value>, ApiError> {
    let colony = state
        .colony
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("token reports go to the coordinator".into()))?;
    report.validate()?;
    let recorded = colony.tokens().apply(&report);
    Ok(Json(json!({ "recorded": recorded })))
}

/// `GET /tokens`: the audit, newest first.
async fn list(State(state): State<MgmtState>) -> Result<Json<Value>, ApiError> {
    let colony = state
        .colony
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("the token audit is on the coordinator".into()))?;
    let audit = colony.tokens();
    Ok(Json(json!({
        "capacity": audit.capacity(),
        "tokens": audit.view(SystemTime::now()),
    })))
}
