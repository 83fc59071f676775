//! The backend's side of the token audit (DESIGN §13): every init token it is shown, used or
//! refused with the reason, is reported to the coordinator with a signed
//! `POST /tokens/report` on its management port.
//!
//! Reporting never holds up an init: the handler drops the outcome into a bounded queue
//! ([`TokenReporter`]) and a background task sends what has gathered in one report. When the
//! queue is full (a flood of inits) or the coordinator cannot be reached, outcomes are dropped
//! with a warning: the audit is a record, not a gate.

use std::sync::Arc;
use std::time::Duration;

use shared::registry::ClusterRegistry;
use shared::signing::{unix_millis, RequestSigner, HEADER};
use shared::NodeAddress;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::wire::tokens::{TokenOutcome, TokenReport, TokenUse, MAX_REPORTS};

/// Outcomes waiting to be sent; more are dropped.
const QUEUE: usize = 1024;
/// How long one report may take.
const REPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// The route reports go to.
pub const REPORT_PATH: &str = "/tokens/report";

/// Why a report did not reach the coordinator.
#[derive(Debug, thiserror::Error)]
enum ReportError {
    /// The registry names no coordinator.
    #[error("no coordinator registered")]
    NoCoordinator,
    /// The registry could not be read.
    #[error("cannot find the coordinator: {0}")]
    Registry(#[from] shared::registry::RegistryError),
    /// The call failed: no connection, a timeout, a broken TLS handshake.
    #[error("cannot reach the coordinator: {0}")]
    Call(#[from] reqwest::Error),
    /// The coordinator answered with an error.
    #[error("coordinator answered {status}: {body}")]
    Refused {
        /// Its status.
        status: reqwest::StatusCode,
        /// Its answer's body.
        body: String,
    },
}

/// Where a backend's init handler drops token outcomes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TokenReporter {
    queue: mpsc::Sender<TokenUse>,
}

impl TokenReporter {
    /// A reporter whose outcomes go nowhere (router tests, tools without a coordinator).
    pub fn disabled() -> Self {
        let (queue, _) = mpsc::channel(1);
        TokenReporter { queue }
    }

    /// Starts the task that sends the outcomes of backend `instance_id` to the coordinator the
    /// registry names, signed with `signer` and over `tls` when given, until `shutdown`.
    pub fn spawn(
        registry: Arc<dyn ClusterRegistry>,
        signer: RequestSigner,
        instance_id: String,
        tls: Option<&shared::tls::Tls>,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (queue, outcomes) = mpsc::channel(QUEUE);
        let client = shared::tls::http_client(tls)
            .timeout(REPORT_TIMEOUT)
            .build()
            .unwrap_or_default();
        let sender = Sender {
            registry,
            signer,
            instance_id,
            client,
            scheme: shared::tls::scheme(tls),
            coordinator: None,
        };
        let task = tokio::spawn(sender.run(outcomes, shutdown));
        (TokenReporter { queue }, task)
    }

    /// The token `token_id` was accepted.
    pub fn used(&self, token_id: &str) {
        self.push(token_id, TokenOutcome::Used, None);
    }

    /// The token `token_id` was refused for `reason` (a token error's code).
    pub fn refused(&self, token_id: &str, reason: &'static str) {
        self.push(token_id, TokenOutcome::Refused, Some(reason));
    }

    fn push(&self, token_id: &str, outcome: TokenOutcome, reason: Option<&'static str>) {
        // An id that is not 32 hex digits was never issued by a coordinator, and would make
        // the whole report invalid.
        if token_id.len() != 32 || !token_id.bytes().all(|c| c.is_ascii_hexdigit()) {
            return;
        }
        let report = TokenUse {
            token_id: token_id.to_owned(),
            outcome,
            reason: reason.map(str::to_owned),
            at_ms: unix_millis(),
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = self.queue.try_send(report) {
            warn!("token report queue is full; an outcome is not reported");
        }
    }
}

struct Sender {
    registry: Arc<dyn ClusterRegistry>,
    signer: RequestSigner,
    instance_id: String,
    client: reqwest::Client,
    /// `http`, or `https` with TLS between nodes.
    scheme: &'static str,
    /// The coordinator last reached; looked up again after a failure.
    coordinator: Option<NodeAddress>,
}

impl Sender {
    async fn run(mut self, mut outcomes: mpsc::Receiver<TokenUse>, shutdown: CancellationToken) {
        loop {
            let first = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                next = outcomes.recv() => match next {
                    Some(first) => first,
                    None => break,
                },
            };
            let mut batch = vec![first];
            while batch.len() < MAX_REPORTS {
                match outcomes.try_recv() {
                    Ok(more) => batch.push(more),
                    Err(_) => break,
                }
            }
            self.send(batch).await;
        }
        debug!("token reporter stopped");
    }

    /// Sends one report; after a failure looks the coordinator up again and tries once more.
    async fn send(&mut self, reports: Vec<TokenUse>) {
        let count = reports.len();
        let report = TokenReport {
            instance_id: self.instance_id.clone(),
            reports,
        };
        let body = match serde_json::to_vec(&report) {
            Ok(body) => body,
            Err(e) => {
                warn!(error = %e, "cannot encode a token report");
                return;
            }
        };
        let mut last_error = ReportError::NoCoordinator;
        for _ in 0..2 {
            let target = match self.coordinator {
                Some(target) => target,
                None => match self.registry.discover_coordinator().await {
                    Ok(Some(found)) => *self.coordinator.insert(found),
                    Ok(None) => {
                        last_error = ReportError::NoCoordinator;
                        break;
                    }
                    Err(e) => {
                        last_error = e.into();
                        break;
                    }
                },
            };
            match self.post(target, &body).await {
                Ok(()) => {
                    debug!(count, "token outcomes reported");
                    return;
                }
                Err(e) => {
                    last_error = e;
                    self.coordinator = None;
                }
            }
        }
        warn!(count, error = %last_error, "token outcomes not reported to the coordinator");
    }

    async fn post(&self, target: NodeAddress, body: &[u8]) -> Result<(), ReportError> {
        let url = format!(
            "{}://{}{REPORT_PATH}",
            self.scheme,
            target.to_mgmt_address()
        );
        let response = self
            .client
            .post(&url)
            .header("content-type", "application/json")
            .header(HEADER, self.signer.sign("POST", REPORT_PATH, body))
            .body(body.to_vec())
            .send()
            .await?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            let body = response.text().await.unwrap_or_default();
            Err(ReportError::Refused { status, body })
        }
    }
}
