//! Claiming a backend's instance id before it registers (DESIGN §2): an id another live node
//! holds at a different address is refused, naming both addresses, and that node's registry
//! entry is left alone; an entry whose node does not answer is stale and is taken over.
//!
//! "Live" means the holder's management `GET /health` answers with a success within the
//! liveness probe's timeout ([`crate::liveness::answers`]): the registry holds addresses only (no lease or heartbeat time), so
//! asking the node itself is the one check that works the same for the file and the SSM
//! registry. Two nodes starting with one id in the same instant can both find it free; this
//! check is for the mistake a person makes (a copied `--instance-id`, two hosts on one id),
//! not a lock.

use shared::registry::ClusterRegistry;
use shared::NodeAddress;
use tracing::{info, warn};

/// Why a backend may not use the instance id it was given.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// Another node that answers holds the id at another address.
    #[error(
        "instance id {id} is held by a live node at {holder}: it answers GET /health, so this \
         node (at {ours}) refuses to start and leaves its entry alone; give one of them another \
         --instance-id"
    )]
    HeldByLiveNode {
        /// The id asked for.
        id: String,
        /// The address registered under it, whose node answers.
        holder: NodeAddress,
        /// This node's address.
        ours: NodeAddress,
    },
}

/// What was found under the id; every variant lets the node go on and register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Nothing is registered under the id.
    Free,
    /// The id already names this very address (a restart on the same ports).
    Ours,
    /// The id named another address whose node does not answer: that entry is stale.
    TakenOver(NodeAddress),
    /// The registry could not be read; the check was skipped (logged), as registration
    /// itself would be retried rather than stop the node.
    Unchecked,
}

/// Checks that `id` is free for the node at `ours` in `registry`, probing the current holder
/// (if any, at another address) with `client`.
///
/// # Errors
/// [`ClaimError::HeldByLiveNode`] if another node that answers holds the id.
pub async fn claim_instance_id(
    registry: &dyn ClusterRegistry,
    id: &str,
    ours: NodeAddress,
    client: &crate::liveness::Http,
) -> Result<Claim, ClaimError> {
    let registered = match registry.discover_backends().await {
        Ok(registered) => registered,
        Err(e) => {
            warn!(registry = %registry.describe(), error = %e, backend = id, "cannot read the registry to check that this instance id is free; registering without the check");
            return Ok(Claim::Unchecked);
        }
    };
    let Some((_, holder)) = registered.into_iter().find(|(held, _)| held == id) else {
        return Ok(Claim::Free);
    };
    if holder == ours {
        return Ok(Claim::Ours);
    }
    if crate::liveness::answers(client, &holder).await {
        return Err(ClaimError::HeldByLiveNode {
            id: id.to_owned(),
            holder,
            ours,
        });
    }
    info!(backend = id, stale = %holder, "taking over the instance id of a registry entry whose node does not answer");
    Ok(Claim::TakenOver(holder))
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use axum::routing::get;
    use shared::registry::InMemoryClusterRegistry;
    use tokio::net::TcpListener;

    use super::*;

    fn client() -> crate::liveness::Http {
        crate::liveness::probe_client(None).unwrap()
    }

    fn at(mgmt: u16) -> NodeAddress {
        NodeAddress::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1, 2, mgmt)
    }

    /// A management port that answers `/health`, served until the test ends.
    async fn live_mgmt() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new().route("/health", get(|| async { "ok" }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        port
    }

    /// A port nothing listens on (bound, then released).
    async fn dead_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn a_free_id_and_our_own_entry_are_claimed() {
        let registry = InMemoryClusterRegistry::new();
        let ours = at(9002);
        let claim = claim_instance_id(&registry, "b", ours, &client()).await;
        assert_eq!(claim.unwrap(), Claim::Free);
        registry.register_backend("b", ours).await.unwrap();
        let claim = claim_instance_id(&registry, "b", ours, &client()).await;
        assert_eq!(claim.unwrap(), Claim::Ours);
    }

    #[tokio::test]
    async fn an_id_held_by_a_live_node_elsewhere_is_refused_naming_both() {
        let registry = InMemoryClusterRegistry::new();
        let holder = at(live_mgmt().await);
        registry.register_backend("b", holder).await.unwrap();
        let ours = at(dead_port().await);
        let err = claim_instance_id(&registry, "b", ours, &client())
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(message.contains(&holder.to_string()), "{message}");
        assert!(message.contains(&ours.to_string()), "{message}");
        assert!(message.contains("--instance-id"), "{message}");
        // The check writes nothing: the live node keeps its entry.
        assert_eq!(
            registry.discover_backends().await.unwrap(),
            vec![("b".to_owned(), holder)]
        );
    }

    #[tokio::test]
    async fn an_entry_whose_node_does_not_answer_is_taken_over() {
        let registry = InMemoryClusterRegistry::new();
        let stale = at(dead_port().await);
        registry.register_backend("b", stale).await.unwrap();
        let claim = claim_instance_id(&registry, "b", at(9002), &client()).await;
        assert_eq!(claim.unwrap(), Claim::TakenOver(stale));
    }

    #[tokio::test]
    async fn other_ids_do_not_matter() {
        let registry = InMemoryClusterRegistry::new();
        registry
            .register_backend("other", at(live_mgmt().await))
            .await
            .unwrap();
        let claim = claim_instance_id(&registry, "b", at(9002), &client()).await;
        assert_eq!(claim.unwrap(), Claim::Free);
    }
}
