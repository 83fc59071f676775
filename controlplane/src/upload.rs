//! Streamed uploads (DESIGN §16): what a route that takes a package needs in place of
//! [`crate::http::harden`]'s layers, whose 1 MiB body limit and 30 s timeout would refuse any
//! real package. [`streamed`] gives such a router its own timeout and panic containment (it
//! is merged after `harden`, not into the router `harden` wraps); [`receive`] writes a body to
//! its file under its own size limit, never holding it in memory, so a file is either whole
//! or absent.
//!
//! Used by the coordinator's `PUT /packages/{file}` ([`crate::management::packages`]) and a
//! backend's `PUT /deploy/{file}` ([`crate::control::deploy`]). Who may call them is theirs to
//! check.

use std::path::Path;
use std::time::Duration;

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Router;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;

use crate::error::ApiError;

/// `router` with the layers of an upload route: a handler panic answers 500, and a request
/// that takes longer than `timeout` (the whole upload, and whatever the handler does after)
/// answers 408. Merge the result after [`crate::http::harden`].
pub fn streamed<S>(router: Router<S>, timeout: Duration) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    router.layer(
        ServiceBuilder::new()
            .layer(CatchPanicLayer::custom(|_| {
                ApiError::Internal("handler panicked".into()).into_response()
            }))
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                timeout,
            )),
    )
}

/// Streams `body` into `dest` (through a temp file beside it, renamed into place once whole)
/// and answers how many bytes it held. With `sha256`, the body's hex SHA-256 must be that
/// (lowercase) or nothing is stored.
///
/// # Errors
/// [`ApiError::PayloadTooLarge`] past `max` bytes, [`ApiError::BadRequest`] if the body
/// cannot be read or does not match `sha256`, [`ApiError::Internal`] if it cannot be
/// written. Nothing is left behind on any of them.
pub async fn receive(
    body: Body,
    dest: &Path,
    max: u64,
    sha256: Option<&str>,
) -> Result<u64, ApiError> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| ApiError::Internal(format!("creating {}: {e}", dir.display())))?;
    // Dropped (removed) unless the whole body arrives within the limit.
    let temp = tempfile::Builder::new()
        .prefix(".upload-")
        .tempfile_in(dir)
        .map_err(|e| {
            ApiError::Internal(format!("creating a temp file in {}: {e}", dir.display()))
        })?;
    let mut out = tokio::fs::File::from_std(
        temp.reopen()
            .map_err(|e| ApiError::Internal(format!("opening the upload: {e}")))?,
    );
    let mut hasher = sha256.map(|_| Sha256::new());
    let mut size: u64 = 0;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading the body: {e}")))?;
        size += chunk.len() as u64;
        if size > max {
            return Err(ApiError::PayloadTooLarge(format!(
                "a package may be at most {max} bytes (--max-package)"
            )));
        }
        if let Some(hasher) = &mut hasher {
            hasher.update(&chunk);
        }
        out.write_all(&chunk)
            .await
            .map_err(|e| ApiError::Internal(format!("writing the upload: {e}")))?;
    }
    out.sync_all()
        .await
        .map_err(|e| ApiError::Internal(format!("writing the upload: {e}")))?;
    drop(out);
    if let (Some(hasher), Some(expected)) = (hasher, sha256) {
        if hex::encode(hasher.finalize()) != expected {
            return Err(ApiError::BadRequest(
                "the body does not match the signed digest".to_owned(),
            ));
        }
    }
    temp.persist(dest)
        .map_err(|e| ApiError::Internal(format!("storing {}: {}", dest.display(), e.error)))?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> Body {
        let parts: Vec<Result<&'static [u8], std::io::Error>> =
            parts.iter().map(|p| Ok(*p)).collect();
        Body::from_stream(futures::stream::iter(parts))
    }

    /// The file names in `dir`.
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_body_is_stored_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("packages/x-1.tar.gz");
        let size = receive(chunks(&[b"abc", b"def"]), &dest, 6, None)
            .await
            .unwrap();
        assert_eq!(
            (size, std::fs::read(&dest).unwrap()),
            (6, b"abcdef".to_vec())
        );

        // One byte over the limit, or not the signed digest: nothing new, no temp file.
        let other = dir.path().join("packages/y-1.tar.gz");
        let over = receive(chunks(&[b"abc", b"defg"]), &other, 6, None).await;
        assert!(
            matches!(over, Err(ApiError::PayloadTooLarge(_))),
            "{over:?}"
        );
        let wrong = receive(chunks(&[b"abc"]), &other, 6, Some(&"0".repeat(64))).await;
        assert!(matches!(wrong, Err(ApiError::BadRequest(_))), "{wrong:?}");
        assert_eq!(names(&dir.path().join("packages")), ["x-1.tar.gz"]);

        let digest = hex::encode(Sha256::digest(b"abc"));
        receive(chunks(&[b"abc"]), &other, 6, Some(&digest))
            .await
            .unwrap();
        assert_eq!(std::fs::read(&other).unwrap(), b"abc");
    }
}
