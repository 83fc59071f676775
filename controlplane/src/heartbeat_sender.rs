//! The backend's side of heartbeats: find the coordinator through the registry, then `POST`
//! a heartbeat to its management port every interval; say goodbye on shutdown. Every
//! heartbeat is a signed node call (DESIGN §13) carrying this process's boot id and a `seq`
//! that rises with each one, so the coordinator can refuse a replayed one.
//!
//! Start order does not matter: until the coordinator is registered the sender waits,
//! logging that it does. After repeated failures it looks the coordinator up again, since a
//! restarted coordinator may have new ports.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use shared::registry::ClusterRegistry;
use shared::signing::{RequestSigner, HEADER};
use shared::NodeAddress;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::wire::heartbeat::{new_boot_id, Heartbeat, NodeType};

/// Failed posts in a row after which the coordinator is looked up again.
const REDISCOVER_AFTER: u32 = 3;
/// Longest wait for the goodbye to be delivered on shutdown.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);

/// The route heartbeats go to.
const HEARTBEAT_PATH: &str = "/heartbeat";

/// Why one heartbeat was not accepted.
#[derive(Debug, thiserror::Error)]
enum PostError {
    /// The heartbeat could not be encoded.
    #[error("cannot encode the heartbeat: {0}")]
    Encode(#[from] serde_json::Error),
    /// The coordinator could not be reached (or the request could not be sent).
    #[error(transparent)]
    Unreachable(#[from] reqwest::Error),
    /// The coordinator answered, but not with success.
    #[error("coordinator answered {status}: {body}")]
    Refused {
        /// Its status.
        status: reqwest::StatusCode,
        /// Its answer.
        body: String,
    },
}

/// Produces the metrics a heartbeat carries.
pub type MetricsSource = Arc<dyn Fn() -> BTreeMap<String, f64> + Send + Sync>;

/// A node's heartbeat loop.
pub struct HeartbeatSender {
    registry: Arc<dyn ClusterRegistry>,
    client: reqwest::Client,
    /// `http`, or `https` with TLS between nodes.
    scheme: &'static str,
    instance_id: String,
    node_type: NodeType,
    address: NodeAddress,
    interval: Duration,
    metrics: MetricsSource,
    signer: RequestSigner,
    boot_id: String,
}

impl HeartbeatSender {
    /// A sender for the node `instance_id` at `address`, signing with `signer` and calling
    /// over `tls` when given, with a new boot id: one sender per process start.
    ///
    /// # Errors
    /// The system random source failed to make the boot id.
    pub fn new(
        registry: Arc<dyn ClusterRegistry>,
        instance_id: String,
        node_type: NodeType,
        address: NodeAddress,
        interval: Duration,
        metrics: MetricsSource,
        (signer, tls): (RequestSigner, Option<&shared::tls::Tls>),
    ) -> Result<Self, getrandom::Error> {
        let client = shared::tls::http_client(tls)
            .timeout(interval.max(Duration::from_secs(1)))
            .build()
            .unwrap_or_default();
        Ok(HeartbeatSender {
            registry,
            client,
            scheme: shared::tls::scheme(tls),
            instance_id,
            node_type,
            address,
            interval,
            metrics,
            signer,
            boot_id: new_boot_id()?,
        })
    }

    /// This run's boot id.
    pub fn boot_id(&self) -> &str {
        &self.boot_id
    }

    /// Runs until `shutdown`, then sends a goodbye to the coordinator it last reached.
    pub fn spawn(self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move { self.run(shutdown).await })
    }

    async fn run(self, shutdown: CancellationToken) {
        let mut coordinator: Option<NodeAddress> = None;
        let mut seq = 0u64;
        let mut waits = 0u64;
        let mut failures = 0u32;
        loop {
            if coordinator.is_none() {
                match self.registry.discover_coordinator().await {
                    Ok(Some(found)) => {
                        info!(coordinator = %found.to_mgmt_address(), "found the coordinator; sending heartbeats");
                        coordinator = Some(found);
                        waits = 0;
                    }
                    Ok(None) => {
                        if waits.is_multiple_of(10) {
                            info!(registry = %self.registry.describe(), attempt = waits + 1, "waiting for the coordinator to register");
                        }
                        waits += 1;
                    }
                    Err(e) => {
                        if waits.is_multiple_of(10) {
                            warn!(error = %e, "cannot read the registry to find the coordinator; retrying");
                        }
                        waits += 1;
                    }
                }
            }
            if let Some(target) = coordinator {
                seq += 1;
                match self.post(target, seq, false).await {
                    Ok(()) => {
                        if failures > 0 {
                            info!(failed = failures, "heartbeats reach the coordinator again");
                        }
                        failures = 0;
                    }
                    Err(e) => {
                        failures += 1;
                        if failures == 1 || failures.is_multiple_of(10) {
                            warn!(coordinator = %target.to_mgmt_address(), error = %e, failures, "heartbeat failed");
                        }
                        if failures >= REDISCOVER_AFTER {
                            coordinator = None;
                        }
                    }
                }
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
        if let Some(target) = coordinator {
            match tokio::time::timeout(GOODBYE_TIMEOUT, self.post(target, seq + 1, true)).await {
                Ok(Ok(())) => info!("told the coordinator we are leaving"),
                Ok(Err(e)) => {
                    warn!(error = %e, "goodbye not delivered; the coordinator will see us go STALE")
                }
                Err(_) => warn!("goodbye timed out; the coordinator will see us go STALE"),
            }
        }
    }

    async fn post(&self, target: NodeAddress, seq: u64, leaving: bool) -> Result<(), PostError> {
        let heartbeat = Heartbeat {
            instance_id: self.instance_id.clone(),
            node_type: self.node_type,
            address: self.address,
            boot_id: self.boot_id.clone(),
            seq,
            metrics: (self.metrics)(),
            leaving,
        };
        let body = serde_json::to_vec(&heartbeat)?;
        let url = format!(
            "{}://{}{HEARTBEAT_PATH}",
            self.scheme,
            target.to_mgmt_address()
        );
        let response = self
            .client
            .post(&url)
            .header("content-type", "application/json")
            .header(HEADER, self.signer.sign("POST", HEARTBEAT_PATH, &body))
            .body(body)
            .send()
            .await?;
        let status = response.status();
        if status.is_success() {
            debug!(seq, "heartbeat accepted");
            Ok(())
        } else {
            let body = response.text().await.unwrap_or_default();
            Err(PostError::Refused { status, body })
        }
    }
}
