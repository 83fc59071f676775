//! A backend's end of a forwarded deployment (DESIGN §16):
//!
//! | route | who | answer |
//! |---|---|---|
//! | `PUT /deploy/{file}?activate=bool` | the coordinator (a signed node call) | installs and starts the package, streaming its steps as NDJSON ([`crate::deploy::forward`]) |
//!
//! The signature is checked before a byte of the body is read; the body is streamed to disk
//! under the package limit and its SHA-256 compared with the signed digest before anything
//! is installed. Merged after [`crate::http::harden`]: it brings its own timeout.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::{OriginalUri, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use axum::Router;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use shared::signing::unix_millis;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;

use crate::deploy::deployer::{Deployer, UploadLimits};
use crate::deploy::forward::{Line, RemoteProgress, DIGEST_HEADER};
use crate::deploy::lifecycle::DeployEvent;
use crate::deploy::package::PackageFile;
use crate::error::ApiError;
use crate::node_auth::{single_header, NodeAuth, NodeAuthRejection};

#[derive(Debug, Clone)]
struct DeployState {
    deployer: Deployer,
    auth: NodeAuth,
    limits: UploadLimits,
    node: String,
}

/// `PUT /deploy/{file}` for node `node`. Merge it after [`crate::http::harden`].
pub fn router(deployer: Deployer, auth: NodeAuth, limits: UploadLimits, node: String) -> Router {
    let layers = ServiceBuilder::new()
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal("handler panicked".into()).into_response()
        }))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.timeout,
        ));
    Router::new()
        .route("/deploy/{file}", put(receive))
        .layer(layers)
        .with_state(DeployState {
            deployer,
            auth,
            limits,
            node,
        })
}

async fn receive(
    State(state): State<DeployState>,
    Path(file): Path<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    body: Body,
) -> Result<Response, Response> {
    let path = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
    state
        .auth
        .require_node(&extensions, path)
        .map_err(IntoResponse::into_response)?;
    let refuse = |e: shared::signing::SignatureError| {
        state.auth.count_refusal(e.code());
        NodeAuthRejection::Signature(e).into_response()
    };
    let pending = single_header(&headers)
        .and_then(|value| state.auth.verifier().check_header(value, unix_millis()))
        .map_err(refuse)?;
    let digest = headers
        .get(DIGEST_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|d| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| {
            ApiError::BadRequest(format!("{DIGEST_HEADER} must be the body's hex SHA-256"))
                .into_response()
        })?
        .to_ascii_lowercase();
    pending
        .verify("PUT", path, digest.as_bytes())
        .map_err(refuse)?;
    let activate = uri.query().is_some_and(|q| q.contains("activate=true"));
    let file = PackageFile::parse(&file)
        .map_err(|e| ApiError::BadRequest(e.to_string()).into_response())?;
    store(&state, &file, body, &digest)
        .await
        .map_err(IntoResponse::into_response)?;
    Ok(stream_deploy(state, file, activate))
}

/// Streams the body into the packages dir, checking its size and digest on the way.
async fn store(
    state: &DeployState,
    file: &PackageFile,
    body: Body,
    digest: &str,
) -> Result<(), ApiError> {
    let dir = state.deployer.packages_dir().to_owned();
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| ApiError::Internal(format!("creating {}: {e}", dir.display())))?;
    let temp = tempfile::Builder::new()
        .prefix(".upload-")
        .tempfile_in(&dir)
        .map_err(|e| ApiError::Internal(format!("creating a temp file: {e}")))?;
    let mut out = tokio::fs::File::from_std(
        temp.reopen()
            .map_err(|e| ApiError::Internal(format!("opening the upload: {e}")))?,
    );
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading the body: {e}")))?;
        size += chunk.len() as u64;
        if size > state.limits.max_package {
            return Err(ApiError::PayloadTooLarge(format!(
                "a package may be at most {} bytes",
                state.limits.max_package
            )));
        }
        hasher.update(&chunk);
        out.write_all(&chunk)
            .await
            .map_err(|e| ApiError::Internal(format!("writing the upload: {e}")))?;
    }
    out.sync_all()
        .await
        .map_err(|e| ApiError::Internal(format!("writing the upload: {e}")))?;
    if hex::encode(hasher.finalize()) != digest {
        return Err(ApiError::BadRequest(
            "the body does not match the signed digest".to_owned(),
        ));
    }
    let path = state.deployer.package_path(file);
    temp.persist(&path)
        .map_err(|e| ApiError::Internal(format!("storing {}: {}", path.display(), e.error)))?;
    Ok(())
}

/// Deploys, answering each step as a line as it happens, then the result.
fn stream_deploy(state: DeployState, file: PackageFile, activate: bool) -> Response {
    let (lines, rx) = mpsc::channel::<Bytes>(64);
    let mut events = state.deployer.services().subscribe();
    // Not cancelled if the coordinator hangs up: a deployment half done is worse than one
    // finished that nobody watched.
    tokio::spawn(async move {
        let send = |line: Line| {
            let lines = lines.clone();
            async move {
                let mut text = serde_json::to_vec(&line).unwrap_or_default();
                text.push(b'\n');
                let _ = lines.send(Bytes::from(text)).await;
            }
        };
        let deploy = state.deployer.deploy(&file, &state.node, activate);
        tokio::pin!(deploy);
        let result = loop {
            tokio::select! {
                result = &mut deploy => break result,
                event = events.recv() => {
                    if let Ok(DeployEvent::Progress(p)) = event {
                        if p.package == file.as_str() && p.step != "failed" {
                            send(Line::Progress(RemoteProgress::from(&p))).await;
                        }
                    }
                }
            }
        };
        while let Ok(event) = events.try_recv() {
            if let DeployEvent::Progress(p) = event {
                if p.package == file.as_str() && p.step != "failed" {
                    send(Line::Progress(RemoteProgress::from(&p))).await;
                }
            }
        }
        let last = match result {
            Ok(entry) => Line::Service(Box::new(entry)),
            Err(e) => Line::Error {
                code: crate::deploy::deployer::error_code(&e).to_owned(),
                message: e.to_string(),
            },
        };
        send(last).await;
    });
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    (
        StatusCode::OK,
        [("content-type", "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response()
}
