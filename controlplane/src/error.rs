//! [`ApiError`]: the one error type of every HTTP handler, and its one status mapping; and
//! the one place where the domain's typed errors ([`ColonyError`], [`HeartbeatError`],
//! [`TokenReportError`]) become HTTP errors.
//!
//! Every error answers `{"error":"…"}`. 4xx bodies say what was wrong with the request; 5xx
//! bodies stay generic and the cause is logged once, here.

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::coordinator::error::ColonyError;
use crate::wire::heartbeat::HeartbeatError;
use crate::wire::tokens::TokenReportError;

/// An HTTP handler failure.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed: bad JSON, a wrong type, a missing or out-of-range field.
    #[error("{0}")]
    BadRequest(String),
    /// The credentials (e.g. an init token) are missing, forged or expired.
    #[error("{0}")]
    Unauthorized(String),
    /// The credentials are valid but not for this request.
    #[error("{0}")]
    Forbidden(String),
    /// No such resource.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// The body is larger than the limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The body is not JSON (`Content-Type`).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A backend answered, but wrongly (e.g. refused its shards).
    #[error("{0}")]
    BadGateway(String),
    /// A dependency (a backend, the registry) cannot serve the request now.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an I/O failure; the detail is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The status code of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "request failed");
                "internal error; see the node's log".to_owned()
            }
            other => other.to_string(),
        };
        (status, Json(json!({ "error": message }))).into_response()
    }
}

impl From<ColonyError> for ApiError {
    fn from(e: ColonyError) -> Self {
        let message = e.to_string();
        match e {
            ColonyError::InvalidRequest(_) | ColonyError::Placement(_) => {
                ApiError::BadRequest(message)
            }
            ColonyError::NoColony => ApiError::NotFound(message),
            ColonyError::StartFailed { .. } | ColonyError::RunFailed { .. } => {
                ApiError::Conflict(message)
            }
            ColonyError::InitFailed { .. } | ColonyError::Backend(_) => {
                ApiError::BadGateway(message)
            }
            ColonyError::Registry { .. } | ColonyError::NoLiveBackend { .. } => {
                ApiError::Unavailable(message)
            }
            ColonyError::ColonyId(_) | ColonyError::EncodeTopology(_) | ColonyError::Image(_) => {
                ApiError::Internal(message)
            }
        }
    }
}

impl From<HeartbeatError> for ApiError {
    fn from(e: HeartbeatError) -> Self {
        match e {
            // Authentic but already seen: the state it would set is older than what is known.
            HeartbeatError::Replayed { .. } | HeartbeatError::RetiredBoot { .. } => {
                ApiError::Conflict(e.to_string())
            }
            _ => ApiError::BadRequest(e.to_string()),
        }
    }
}

impl From<TokenReportError> for ApiError {
    fn from(e: TokenReportError) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(e) => ApiError::BadRequest(format!(
                "invalid JSON body: {}",
                std::error::Error::source(&e).map_or(e.body_text(), |s| s.to_string())
            )),
            JsonRejection::JsonSyntaxError(e) => ApiError::BadRequest(format!(
                "malformed JSON body: {}",
                std::error::Error::source(&e).map_or(e.body_text(), |s| s.to_string())
            )),
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
                "expected a JSON body with Content-Type: application/json".into(),
            ),
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge("request body is larger than the limit".into())
            }
            other => ApiError::BadRequest(other.body_text()),
        }
    }
}

/// `Json` whose rejections come back as [`ApiError`], so every error has the same shape.
///
/// A body with exactly `Content-Type: application/json` that parses is read with plain
/// `serde_json`; anything else goes through axum's `Json`, which also words the rejection.
/// axum's `Json` tracks the path of every key it reads, to name it in an error, which costs
/// an allocation per key on every request (heartbeats arrive thousands a second), while
/// only a body that fails needs the path.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let plain_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"application/json"));
        if !plain_json {
            let Json(value) = Json::<T>::from_request(req, state).await?;
            return Ok(ApiJson(value));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(JsonRejection::from)?;
        if let Ok(value) = serde_json::from_slice(&bytes) {
            return Ok(ApiJson(value));
        }
        let Json(value) = Json::<T>::from_bytes(&bytes)?;
        Ok(ApiJson(value))
    }
}

/// The answer to a request for a route that does not exist.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}

/// Parses a JSON body, naming the offending field in the error (`seed: invalid type …`).
///
/// # Errors
/// [`ApiError::BadRequest`] with the field path and serde's reason.
pub fn parse_json<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ApiError::BadRequest(format!("invalid {what}: {inner}"))
        } else {
            ApiError::BadRequest(format!("invalid {what}: {path}: {inner}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::coordinator::error::BackendError;

    #[test]
    fn each_domain_cause_has_its_status_and_keeps_its_message() {
        let cases = [
            (ColonyError::NoColony, StatusCode::NOT_FOUND),
            (
                ColonyError::StartFailed {
                    reason: "b1 refused".into(),
                },
                StatusCode::CONFLICT,
            ),
            (
                ColonyError::RunFailed {
                    colony_id: "c1".into(),
                    reason: "b1 stalled".into(),
                },
                StatusCode::CONFLICT,
            ),
            (
                ColonyError::NoLiveBackend {
                    registry: "file /tmp/r".into(),
                },
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                ColonyError::Backend(BackendError::Timeout {
                    backend: "b1".into(),
                    after: Duration::from_secs(3),
                }),
                StatusCode::BAD_GATEWAY,
            ),
            (
                ColonyError::Placement(shared::topology::TopologyError::NoBackends),
                StatusCode::BAD_REQUEST,
            ),
        ];
        for (cause, status) in cases {
            let message = cause.to_string();
            let api = ApiError::from(cause);
            assert_eq!(api.status(), status, "{message}");
            assert_eq!(api.to_string(), message);
        }
        let heartbeat = ApiError::from(HeartbeatError::TooManyMetrics { count: 65 });
        assert_eq!(heartbeat.status(), StatusCode::BAD_REQUEST);
        assert!(heartbeat.to_string().starts_with("metrics: 65 entries"));
        let replay = ApiError::from(HeartbeatError::Replayed {
            node: "b1".into(),
            seq: 3,
            last: 5,
        });
        assert_eq!(replay.status(), StatusCode::CONFLICT);
        assert!(replay.to_string().starts_with("replayed heartbeat"));
    }
}
