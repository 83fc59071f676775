//! Whether a registered node is alive, and cleaning up after a `colony up` that died: what
//! both `colony up` (before it starts) and its backends (as they stop) need, kept apart from
//! either so neither imports the other.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use shared::registry::ClusterRegistry;
use shared::tls::Tls;
use shared::NodeAddress;
use tracing::{info, warn};

/// How long a registered node's management port gets to answer before its entry counts as
/// left over. Generous: wrongly removing a live node's entry is worse than a slow start.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a backend whose `colony up` stopped answering waits to see it gone for good.
const PARENT_EXIT_WAIT: Duration = Duration::from_secs(1);

/// An HTTP client to the cluster's nodes, and the scheme of its URLs.
#[derive(Clone)]
pub struct Http {
    /// The client, over TLS when the cluster speaks it.
    pub client: reqwest::Client,
    /// `http`, or `https` with TLS.
    pub scheme: &'static str,
}

/// True if the node at `address` answers `GET /health` on its management port.
pub async fn answers(client: &Http, address: &NodeAddress) -> bool {
    let url = format!("{}://{}/health", client.scheme, address.to_mgmt_address());
    client
        .client
        .get(&url)
        .timeout(PROBE_TIMEOUT)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// A client for liveness probes, over `tls` if given: no credentials (`GET /health` needs
/// none).
pub fn probe_client(tls: Option<&Tls>) -> anyhow::Result<Http> {
    let client = shared::tls::http_client(tls)
        .timeout(PROBE_TIMEOUT)
        .build()
        .context("cannot build an HTTP client")?;
    Ok(Http {
        client,
        scheme: shared::tls::scheme(tls),
    })
}

/// Run by a backend `colony up` started (`--up-coordinator`), as it shuts down: if it is
/// stopping because `colony up` died (the parent-death signal), nothing else will remove the
/// dead coordinator's registry entry, so it does, if the entry still names that coordinator
/// and nothing answers there. Every backend of the cluster tries; removing is idempotent.
///
/// A coordinator that does not answer may only be busy, so the entry goes only once our
/// parent is gone too. That is checked last, and waited for a moment: the kernel tells us
/// when the thread that forked us exits, and the rest of the dying process (and with it our
/// re-parenting) may lag that by a few milliseconds. A stop by a live `colony up` costs no
/// wait: its coordinator answers.
///
/// A new `colony up` could register the same address between our probe and our removal;
/// the window is a few milliseconds right after the old one died, and a new one first
/// spends longer than that cleaning up and binding.
pub async fn forget_dead_coordinator(
    registry: &dyn ClusterRegistry,
    coordinator: SocketAddr,
    tls: Option<&Tls>,
) {
    if shared::lifeline::parent().is_none() {
        return;
    }
    let entry = match registry.discover_coordinator().await {
        Ok(Some(entry)) => entry,
        Ok(None) => return,
        Err(e) => {
            warn!(error = %e, "cannot read the coordinator's registry entry");
            return;
        }
    };
    if SocketAddr::new(entry.ip, entry.internal_port) != coordinator {
        return;
    }
    let Ok(client) = probe_client(tls) else {
        return;
    };
    if answers(&client, &entry).await {
        return;
    }
    let deadline = tokio::time::Instant::now() + PARENT_EXIT_WAIT;
    while !shared::lifeline::parent_gone() {
        if tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    match registry.unregister_coordinator().await {
        Ok(()) => {
            info!(coordinator = %coordinator, "colony up died: removed its coordinator's registry entry")
        }
        Err(e) => {
            warn!(error = %e, "colony up died; cannot remove its coordinator's registry entry")
        }
    }
}
