//! Forwarding a deployment to a backend (DESIGN §16): the coordinator sends the uploaded
//! package to the backend's control plane as a signed node call, `PUT /deploy/{file}`,
//! streamed from disk, and relays the `deployment_progress` lines the backend streams back.
//!
//! The signature (DESIGN §13) covers `PUT`, the path with its query, the time stamp, and, in
//! place of the body, the hex SHA-256 of the body, sent in [`DIGEST_HEADER`]: the signing
//! primitive needs its input whole, and a package may be hundreds of MiB. The backend checks
//! the signature before it reads the body, and the digest once the body is on its disk.
//!
//! The answer is newline-delimited JSON: `{"progress":{…}}` per step as it happens, then one
//! `{"service":{…}}` or `{"error":{"code","message"}}`.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use shared::signing::{RequestSigner, HEADER};
use tokio::io::AsyncReadExt;

use crate::deploy::error::DeployError;
use crate::deploy::lifecycle::Progress;
use crate::deploy::package::PackageFile;
use crate::deploy::service::ServiceEntry;

/// The header with the hex SHA-256 of a forwarded package, signed in place of the body.
pub const DIGEST_HEADER: &str = "colony-content-sha256";

/// Longest line of a backend's answer.
const MAX_LINE: usize = 256 * 1024;

/// The path (with its query) of a forwarded deployment; it is what is signed.
pub fn deploy_path(file: &PackageFile, activate: bool) -> String {
    format!("/deploy/{}?activate={activate}", file.as_str())
}

/// One line of a backend's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Line {
    /// A step.
    Progress(RemoteProgress),
    /// The deployed service: the end.
    Service(Box<ServiceEntry>),
    /// Why it failed: the end.
    Error {
        /// The `/ws` error code.
        code: String,
        /// The reason.
        message: String,
    },
}

/// A step as it crosses the wire (owned, unlike [`Progress`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoteProgress {
    /// The step.
    pub step: String,
    /// More about it.
    pub detail: Option<String>,
}

impl From<&Progress> for RemoteProgress {
    fn from(p: &Progress) -> Self {
        RemoteProgress {
            step: p.step.to_owned(),
            detail: p.detail.clone(),
        }
    }
}

/// The hex SHA-256 of the file at `path`, read in chunks.
///
/// # Errors
/// [`DeployError::Io`].
pub async fn digest(path: &Path) -> Result<String, DeployError> {
    use sha2::{Digest, Sha256};
    let owned = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::open(&owned)?;
        let mut hasher = Sha256::new();
        std::io::copy(&mut file, &mut hasher)?;
        Ok::<_, std::io::Error>(hex::encode(hasher.finalize()))
    })
    .await
    .map_err(|e| DeployError::io("hashing", path, std::io::Error::other(e)))?
    .map_err(|e| DeployError::io("hashing", path, e))
}

/// Sends packages to backends.
#[derive(Debug, Clone)]
pub struct Forwarder {
    signer: RequestSigner,
    client: reqwest::Client,
    /// `http`, or `https` with TLS between nodes.
    scheme: &'static str,
}

impl Forwarder {
    /// A forwarder signing with `signer`, over `tls` when given; a whole deployment may
    /// take `timeout`.
    ///
    /// # Errors
    /// [`DeployError::Forward`] if the HTTP client cannot be built.
    pub fn new(
        signer: RequestSigner,
        timeout: Duration,
        tls: Option<&shared::tls::Tls>,
    ) -> Result<Self, DeployError> {
        let client = shared::tls::http_client(tls)
            .connect_timeout(Duration::from_secs(5))
            .timeout(timeout)
            .build()
            .map_err(|e| DeployError::Forward(e.to_string()))?;
        Ok(Forwarder {
            signer,
            client,
            scheme: shared::tls::scheme(tls),
        })
    }

    /// Sends the package at `path` to the backend whose control plane is `control`
    /// (`ip:port`), calling `on_progress` for each step it reports.
    ///
    /// # Errors
    /// [`DeployError::Forward`] when the backend cannot be reached or answers wrongly,
    /// [`DeployError::Remote`] when it refuses or fails the deployment.
    pub async fn forward(
        &self,
        path: &Path,
        file: &PackageFile,
        control: &str,
        activate: bool,
        mut on_progress: impl FnMut(RemoteProgress),
    ) -> Result<ServiceEntry, DeployError> {
        let digest = digest(path).await?;
        let uri_path = deploy_path(file, activate);
        let signature = self.signer.sign("PUT", &uri_path, digest.as_bytes());
        let opened = tokio::fs::File::open(path)
            .await
            .map_err(|e| DeployError::io("opening", path, e))?;
        let len = opened
            .metadata()
            .await
            .map_err(|e| DeployError::io("reading", path, e))?
            .len();
        // Chunks from disk; a read error ends the stream with that error.
        let chunks = futures::stream::unfold(Some(opened), |file| async move {
            let mut file = file?;
            let mut buf = vec![0u8; 64 * 1024];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok::<_, std::io::Error>(buf), Some(file)))
                }
                Err(e) => Some((Err(e), None)),
            }
        });
        let response = self
            .client
            .put(format!("{}://{control}{uri_path}", self.scheme))
            .header(HEADER, signature)
            .header(DIGEST_HEADER, &digest)
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await
            .map_err(|e| DeployError::Forward(e.to_string()))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            let message: String = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or(body)
                .chars()
                .take(512)
                .collect();
            return Err(DeployError::Remote {
                code: if status == reqwest::StatusCode::UNAUTHORIZED {
                    "unauthorized".to_owned()
                } else {
                    "refused".to_owned()
                },
                message: format!("backend answered {status}: {message}"),
            });
        }
        let mut stream = response.bytes_stream();
        let mut pending: Vec<u8> = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| DeployError::Forward(e.to_string()))?;
            pending.extend_from_slice(&chunk);
            while let Some(at) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=at).collect();
                match serde_json::from_slice::<Line>(&line) {
                    Ok(Line::Progress(p)) => on_progress(p),
                    Ok(Line::Service(entry)) => return Ok(*entry),
                    Ok(Line::Error { code, message }) => {
                        return Err(DeployError::Remote { code, message })
                    }
                    Err(e) => return Err(DeployError::Forward(format!("bad answer line: {e}"))),
                }
            }
            if pending.len() > MAX_LINE {
                return Err(DeployError::Forward("answer line too long".to_owned()));
            }
        }
        Err(DeployError::Forward(
            "the backend ended its answer without a result".to_owned(),
        ))
    }
}
