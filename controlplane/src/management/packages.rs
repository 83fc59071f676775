//! Package upload on the coordinator's management port (DESIGN §16):
//!
//! | route | who | answer |
//! |---|---|---|
//! | `PUT /packages/{file}` | the operator, always by token (deploying runs code) | stores the body as `{file}`, which must look like `name-version.tar.gz` |
//!
//! The body is streamed to a temp file beside the packages and renamed into place when it
//! is whole, so a package is never held in memory nor half there. It has its own limits
//! ([`UploadLimits`]): this router is merged after [`crate::http::harden`], whose 1 MiB body
//! limit and 30 s timeout would refuse any real package, and brings its own timeout and
//! panic containment instead.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::put;
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;

use crate::deploy::deployer::Deployer;
use crate::deploy::package::PackageFile;
use crate::error::ApiError;
use crate::operator::Guard;

pub use crate::deploy::deployer::UploadLimits;

#[derive(Debug, Clone)]
struct UploadState {
    deployer: Deployer,
    limits: UploadLimits,
}

/// `PUT /packages/{file}`, behind `guard`'s "operator, always" check and `limits`. Merge it
/// after [`crate::http::harden`], not into the router it hardens.
pub fn router(deployer: Deployer, guard: &Guard, limits: UploadLimits) -> Router {
    let layers = ServiceBuilder::new()
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal("handler panicked".into()).into_response()
        }))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.timeout,
        ));
    Router::new()
        .route("/packages/{file}", put(upload))
        .route_layer(guard.operator_always())
        .layer(layers)
        .with_state(UploadState { deployer, limits })
}

async fn upload(
    State(state): State<UploadState>,
    Path(file): Path<String>,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let file = PackageFile::parse(&file).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let dir = state.deployer.packages_dir().to_owned();
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| ApiError::Internal(format!("creating {}: {e}", dir.display())))?;
    // Dropped (removed) unless the whole body arrives within the limit.
    let temp = tempfile::Builder::new()
        .prefix(".upload-")
        .tempfile_in(&dir)
        .map_err(|e| {
            ApiError::Internal(format!("creating a temp file in {}: {e}", dir.display()))
        })?;
    let mut out = tokio::fs::File::from_std(
        temp.reopen()
            .map_err(|e| ApiError::Internal(format!("opening the upload: {e}")))?,
    );
    let mut stream = body.into_data_stream();
    let mut size: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading the body: {e}")))?;
        size += chunk.len() as u64;
        if size > state.limits.max_package {
            return Err(ApiError::PayloadTooLarge(format!(
                "a package may be at most {} bytes (--max-package)",
                state.limits.max_package
            )));
        }
        out.write_all(&chunk)
            .await
            .map_err(|e| ApiError::Internal(format!("writing the upload: {e}")))?;
    }
    out.sync_all()
        .await
        .map_err(|e| ApiError::Internal(format!("writing the upload: {e}")))?;
    drop(out);
    let path = state.deployer.package_path(&file);
    temp.persist(&path)
        .map_err(|e| ApiError::Internal(format!("storing {}: {}", path.display(), e.error)))?;
    tracing::info!(package = %file, bytes = size, "package uploaded");
    Ok((
        StatusCode::CREATED,
        Json(json!({ "package": file.as_str(), "bytes": size })),
    ))
}
