//! The first step of a colony start: the backends to place it on. Every backend in the
//! registry except the coordinator itself, once per endpoint, that answers on its management
//! port now.

use std::collections::HashSet;
use std::time::Duration;

use futures::future::join_all;
use shared::registry::ClusterRegistry;
use shared::topology::{exclude_self, BackendEntry};
use shared::NodeAddress;
use tracing::warn;

use crate::coordinator::error::ColonyError;

/// Registered backends, minus the coordinator itself, whose management port answers.
pub(super) async fn live_backends(
    registry: &dyn ClusterRegistry,
    me: &NodeAddress,
    (client, scheme): (&reqwest::Client, &str),
    probe_timeout: Duration,
) -> Result<Vec<BackendEntry>, ColonyError> {
    let registered =
        registry
            .discover_backends_now()
            .await
            .map_err(|source| ColonyError::Registry {
                registry: registry.describe(),
                source: Box::new(source),
            })?;
    let mut seen = HashSet::new();
    let candidates: Vec<_> = exclude_self(registered, me)
        .into_iter()
        .filter(|(id, address)| {
            // Two entries for one endpoint: a node re-registered under another id. Keep
            // the first; placing both would hand one process two backends' shards.
            let fresh = seen.insert((address.ip, address.internal_port));
            if !fresh {
                warn!(backend = %id, endpoint = %address.to_internal_address(), "registry lists this endpoint twice; ignoring this entry");
            }
            fresh
        })
        .collect();
    let probes = candidates.iter().map(|(id, address)| async move {
        let url = format!("{scheme}://{}/health", address.to_mgmt_address());
        let answered = client
            .get(&url)
            .timeout(probe_timeout)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if !answered {
            warn!(backend = %id, mgmt = %address.to_mgmt_address(), "registered backend does not answer; skipping it");
        }
        answered
    });
    let alive = join_all(probes).await;
    let live: Vec<BackendEntry> = candidates
        .into_iter()
        .zip(alive)
        .filter(|(_, ok)| *ok)
        .map(|((id, address), _)| BackendEntry::new(id, address))
        .collect();
    if live.is_empty() {
        return Err(ColonyError::NoLiveBackend {
            registry: registry.describe(),
        });
    }
    Ok(live)
}
