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
//!
//! The same signed calls list a backend's deployed services (`GET /deploy/services`) and
//! start, stop or restart one (`POST /deploy/services/{name}/{action}`), for the coordinator's
//! view of every node's services ([`crate::deploy::remote`]). Every HTTP client of deploying
//! comes from [`http_client`].

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

/// Longest answer to a list or an action (a list of many services with their health).
const MAX_ANSWER: usize = 4 * 1024 * 1024;

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

/// The path of a backend's deployed-services list; it is what is signed.
pub const SERVICES_PATH: &str = "/deploy/services";

/// The path of a service action on a backend; it is what is signed.
pub fn action_path(name: &str, action: &str) -> String {
    format!("{SERVICES_PATH}/{name}/{action}")
}

/// Longest a backend may take to list its services (the coordinator polls; a slow backend
/// must not hold up the others for long).
const LIST_TIMEOUT: Duration = Duration::from_secs(5);

/// The HTTP client of every deploy call to a backend: the one place it is built, so the
/// transport (TLS, proxies) is chosen once. A whole call may take `timeout`.
///
/// # Errors
/// [`DeployError::Forward`] if the client cannot be built.
pub fn http_client(
    timeout: Duration,
    tls: Option<&shared::tls::Tls>,
) -> Result<reqwest::Client, DeployError> {
    shared::tls::http_client(tls)
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        .build()
        .map_err(|e| DeployError::Forward(e.to_string()))
}

/// A backend's answer to a list or an action: the services, or why not.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ServicesAnswer {
    /// `GET /deploy/services`.
    List {
        /// Every service deployed on the backend.
        services: Vec<ServiceEntry>,
    },
    /// `POST /deploy/services/{name}/{action}`: the service after it.
    One {
        /// The service.
        service: Box<ServiceEntry>,
    },
    /// A refusal or failure.
    Error {
        /// The reason.
        error: String,
        /// The `/ws` error code (`not_found`, `refused`, `deploy_failed`, or a signature
        /// refusal's reason).
        code: String,
    },
}

/// Sends packages to backends, and lists and drives the services deployed there.
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
        Ok(Forwarder {
            signer,
            client: http_client(timeout, tls)?,
            scheme: shared::tls::scheme(tls),
        })
    }

    /// The services deployed on the backend whose control plane is `control`.
    ///
    /// # Errors
    /// [`DeployError::Forward`] when it cannot be reached or answers wrongly,
    /// [`DeployError::Remote`] when it refuses.
    pub async fn services(&self, control: &str) -> Result<Vec<ServiceEntry>, DeployError> {
        let signature = self.signer.sign("GET", SERVICES_PATH, b"");
        let request = self
            .client
            .get(format!("{}://{control}{SERVICES_PATH}", self.scheme))
            .header(HEADER, signature)
            .timeout(LIST_TIMEOUT);
        match call(request).await? {
            ServicesAnswer::List { services } => Ok(services),
            _ => Err(DeployError::Forward(
                "the backend answered a list with something else".to_owned(),
            )),
        }
    }

    /// Runs `action` (`start`, `stop` or `restart`) on the service `name` of the backend
    /// whose control plane is `control`, answering the service after it.
    ///
    /// # Errors
    /// As [`Forwarder::services`]; `Remote` carries the backend's reason (an unknown
    /// service, a start that failed).
    pub async fn act(
        &self,
        control: &str,
        name: &str,
        action: &str,
    ) -> Result<ServiceEntry, DeployError> {
        // The name came from the backend's own list; it is a manifest name, which may hold
        // any character, so it is escaped here and decoded by the backend's router.
        let path = action_path(&escape_segment(name), action);
        let signature = self.signer.sign("POST", &path, b"");
        let request = self
            .client
            .post(format!("{}://{control}{path}", self.scheme))
            .header(HEADER, signature);
        match call(request).await? {
            ServicesAnswer::One { service } => Ok(*service),
            _ => Err(DeployError::Forward(
                "the backend answered an action with something else".to_owned(),
            )),
        }
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

/// `segment` percent-encoded for a path: every byte but `[A-Za-z0-9._~-]` as `%XX`.
fn escape_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"._~-".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Sends a list or action call and reads its (small, bounded) answer.
async fn call(request: reqwest::RequestBuilder) -> Result<ServicesAnswer, DeployError> {
    let response = request
        .send()
        .await
        .map_err(|e| DeployError::Forward(e.to_string()))?;
    let status = response.status();
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| DeployError::Forward(e.to_string()))?;
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(DeployError::Forward("answer too long".to_owned()));
        }
        body.extend_from_slice(&chunk);
    }
    match serde_json::from_slice::<ServicesAnswer>(&body) {
        Ok(ServicesAnswer::Error { error, code }) => Err(DeployError::Remote {
            code,
            message: error,
        }),
        Ok(answer) if status.is_success() => Ok(answer),
        _ => Err(DeployError::Forward(format!(
            "backend answered {status}: {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(512)
                .collect::<String>()
        ))),
    }
}
