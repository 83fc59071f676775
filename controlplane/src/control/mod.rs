//! The control plane (DESIGN §3–5). Routes so far:
//!
//! | route | node | answer |
//! |---|---|---|
//! | `GET /topology` | coordinator | 404 until a colony is started |
//!
//! Colony start, init and runs arrive with their issues.

use axum::routing::get;
use axum::Router;

use crate::error::ApiError;

/// The coordinator's control routes.
pub fn coordinator_router() -> Router {
    Router::new().route("/topology", get(topology))
}

/// A backend's control routes.
pub fn backend_router() -> Router {
    Router::new()
}

async fn topology() -> ApiError {
    ApiError::NotFound("topology not initialized".into())
}
