//! Layers every HTTP listener gets: a body-size limit, a request timeout, request tracing,
//! panic containment, request counting, and a JSON 404 for unknown routes.

use std::time::Duration;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::error::{not_found, ApiError};
use crate::metrics::HttpMetrics;

/// Limits of one HTTP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Largest request body, in bytes.
    pub max_body: usize,
    /// Longest a request may take before it is answered 408.
    pub request_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_body: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Wraps `router` with the standard layers. `plane` labels its request metrics
/// (`control` or `mgmt`).
pub fn harden(
    router: Router,
    limits: HttpLimits,
    metrics: HttpMetrics,
    plane: &'static str,
) -> Router {
    router
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            (metrics, plane),
            count_requests,
        ))
        .layer(DefaultBodyLimit::max(limits.max_body))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal("handler panicked".into()).into_response()
        }))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let path = req
                .extensions()
                .get::<MatchedPath>()
                .map_or(req.uri().path(), |p| p.as_str());
            tracing::debug_span!("http", method = %req.method(), path)
        }))
}

async fn count_requests(
    State((metrics, plane)): State<(HttpMetrics, &'static str)>,
    req: Request,
    next: Next,
) -> Response {
    // The matched route, not the raw path, keeps the label set bounded.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().to_string();
    let response = next.run(req).await;
    metrics.observe(plane, &method, &route, response.status().as_u16());
    response
}
