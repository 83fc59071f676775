//! Package upload on the coordinator's management port (DESIGN §16):
//!
//! | route | who | answer |
//! |---|---|---|
//! | `PUT /packages/{file}` | the operator, always by token (deploying runs code) | stores the body as `{file}`, which must look like `name-version.tar.gz` |
//!
//! The body is streamed to a temp file beside the packages and renamed into place when it
//! is whole, so a package is never held in memory nor half there. It has its own limits
//! ([`UploadLimits`]) and layers ([`crate::upload`]): this router is merged after
//! [`crate::http::harden`], not into the router it hardens.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::put;
use axum::{Json, Router};
use serde_json::json;

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
    let routes = Router::new()
        .route("/packages/{file}", put(upload))
        .route_layer(guard.operator_always());
    crate::upload::streamed(routes, limits.timeout).with_state(UploadState { deployer, limits })
}

async fn upload(
    State(state): State<UploadState>,
    Path(file): Path<String>,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let file = PackageFile::parse(&file).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let path = state.deployer.package_path(&file);
    let size = crate::upload::receive(body, &path, state.limits.max_package, None).await?;
    tracing::info!(package = %file, bytes = size, "package uploaded");
    Ok((
        StatusCode::CREATED,
        Json(json!({ "package": file.as_str(), "bytes": size })),
    ))
}
