//! Coordinator handlers: `GET /topology` and `POST /colony-start`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::coordinator::colony::{ColonyManager, StartOutcome, StartRequest, MAX_IDEMPOTENCY_KEY};
use crate::error::ApiError;

/// `GET /topology`: 404 until a colony is started.
pub async fn topology(State(colony): State<ColonyManager>) -> Response {
    match colony.topology() {
        Some(t) => Json(t.as_ref()).into_response(),
        None => ApiError::NotFound("topology not initialized".into()).into_response(),
    }
}

/// `POST /colony-start` with an optional `Idempotency-Key` and an optional JSON body.
pub async fn start(
    State(colony): State<ColonyManager>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let key = v
                .to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY)
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
                    ))
                })?;
            Some(key.to_owned())
        }
    };
    // An empty body means "all defaults", so `curl -X POST` works as it is.
    let request: StartRequest = if body.iter().all(u8::is_ascii_whitespace) {
        StartRequest::default()
    } else {
        crate::error::parse_json(&body, "colony-start body")?
    };
    Ok(match colony.start(key, request).await? {
        StartOutcome::Started(topology) => Json(topology.as_ref()).into_response(),
        StartOutcome::Conflict(running) => (
            StatusCode::CONFLICT,
            Json(json!({
                "error": format!("colony {running} is running; send \"restart\": true to replace it"),
                "colony_id": running,
            })),
        )
            .into_response(),
    })
}

/// `GET /colony`.
pub async fn status(State(colony): State<ColonyManager>) -> Json<serde_json::Value> {
    Json(colony.status())
}

/// The body of `POST /colony/run`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// Ticks to run beyond the current target.
    pub ticks: u64,
    /// Answer only when they are done (or the run failed).
    #[serde(default)]
    pub wait: bool,
}

/// `POST /colony/run`.
pub async fn run(
    State(colony): State<ColonyManager>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let request: RunRequest = crate::error::parse_json(&body, "run body")?;
    Ok(Json(colony.run(request.ticks, request.wait).await?))
}

/// `POST /colony/pause`.
pub async fn pause(
    State(colony): State<ColonyManager>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(colony.pause().await?))
}

/// `POST /colony/rebalance`: answers once the shards are spread, with the `GET /colony` body.
pub async fn rebalance(
    State(colony): State<ColonyManager>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(colony.rebalance().await?))
}

/// `GET /colony/image.png`; the caller's `Authorization` goes on to the backends.
pub async fn image(
    State(colony): State<ColonyManager>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let png = colony
        .image(headers.get(axum::http::header::AUTHORIZATION))
        .await?;
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "image/png"),
            (axum::http::header::CACHE_CONTROL, "no-store"),
        ],
        png,
    )
        .into_response())
}
