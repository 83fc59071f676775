//! [`Placement`]: one epoch of a colony as the coordinator drives it — the topology of that
//! epoch and an authenticated command link to each backend that holds shards in it.
//!
//! Command links carry `run`, `pause`, `commit` and `stop`, one request at a time per
//! backend. A link the backend closed (its idle timeout, say) is made again once before the
//! command counts as failed, so a colony left paused for an hour still answers; a backend
//! that is gone refuses the new connection at once. Every wait discounts the coordinator's
//! own stalls (`patience`). Reporters and commit announcers, which need the whole run, are
//! spawned by [`super::ColonyRun`]; they stop with this placement's token.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use codec::Message;
use dataplane::{Client, ClientError, Identity};
use futures::future::join_all;
use shared::topology::ClusterTopology;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::patience;
use crate::coordinator::error::BackendError;

/// Connects to `address` (over TLS when `identity` has it) and authenticates as `identity`.
pub(crate) async fn connect(address: &str, identity: &Identity) -> Result<Client, ClientError> {
    let mut client =
        Client::connect_tls(address, codec::Limits::default(), identity.tls.as_ref()).await?;
    client
        .authenticate(&identity.instance_id, &identity.secret)
        .await?;
    Ok(client)
}

/// One epoch of a colony: its topology and command links.
pub(crate) struct Placement {
    pub(crate) topology: Arc<ClusterTopology>,
    pub(crate) epoch: u64,
    /// Per backend holding shards: its command link (`None` until made, or after it broke).
    commands: HashMap<String, tokio::sync::Mutex<Option<Client>>>,
    identity: Identity,
    /// How long a backend gets to answer a command.
    patience: Duration,
    /// Cancelled when this placement is replaced or the run ends: its reporters and
    /// announcers stop.
    pub(crate) cancel: CancellationToken,
    /// The newest consistent checkpoint, for the commit announcers.
    pub(crate) commit: watch::Sender<u64>,
}

impl std::fmt::Debug for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Placement")
            .field("colony_id", &self.topology.colony_id())
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl Placement {
    /// A placement of `topology` as epoch `epoch`, with the command links in `links` (others
    /// are made on first use). `committed` is the consistent checkpoint it starts from.
    pub(crate) fn new(
        topology: Arc<ClusterTopology>,
        epoch: u64,
        links: HashMap<String, Client>,
        identity: Identity,
        patience: Duration,
        cancel: CancellationToken,
        committed: u64,
    ) -> Placement {
        let mut links = links;
        let commands = dataplane::ring(&topology)
            .into_iter()
            .map(|id| {
                let link = links.remove(id);
                (id.to_owned(), tokio::sync::Mutex::new(link))
            })
            .collect();
        Placement {
            topology,
            epoch,
            commands,
            identity,
            patience,
            cancel,
            commit: watch::Sender::new(committed),
        }
    }

    /// The backends holding shards in this placement.
    pub(crate) fn backends(&self) -> impl Iterator<Item = &String> {
        self.commands.keys()
    }

    /// The data-plane address of `id`.
    fn address(&self, id: &str) -> Option<String> {
        self.topology
            .backend(id)
            .map(|b| b.address.to_internal_address())
    }

    /// Sends `message` to `id` and waits for its answer. A link that broke is made again
    /// once, so a backend that merely closed an idle connection is not taken for gone.
    ///
    /// # Errors
    /// [`BackendError::Refused`] for an error frame; [`BackendError::Unreachable`],
    /// [`BackendError::NoAnswer`] or [`BackendError::Timeout`] when the backend cannot be
    /// reached or does not answer in time.
    pub(crate) async fn command(
        &self,
        id: &str,
        message: &Message,
    ) -> Result<Message, BackendError> {
        let backend = || id.to_owned();
        let (Some(slot), Some(address)) = (self.commands.get(id), self.address(id)) else {
            return Err(BackendError::NoLink { backend: backend() });
        };
        let mut slot = slot.lock().await;
        let mut retried = false;
        loop {
            let client = match slot.as_mut() {
                Some(client) => client,
                None => {
                    let made = patience::within(self.patience, connect(&address, &self.identity))
                        .await
                        .map_err(|_| BackendError::Timeout {
                            backend: backend(),
                            after: self.patience,
                        })?
                        .map_err(|source| BackendError::Unreachable {
                            backend: backend(),
                            address: address.clone(),
                            source,
                        })?;
                    retried = true;
                    slot.insert(made)
                }
            };
            match patience::within(self.patience, client.request(message)).await {
                Ok(Ok(Message::Error { code, message })) => {
                    return Err(BackendError::Refused {
                        backend: backend(),
                        code,
                        message,
                    })
                }
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(source)) => {
                    *slot = None;
                    if !retried {
                        retried = true;
                        continue;
                    }
                    return Err(BackendError::NoAnswer {
                        backend: backend(),
                        source,
                    });
                }
                Err(_) => {
                    // The link may still deliver the late answer; it cannot be reused.
                    *slot = None;
                    return Err(BackendError::Timeout {
                        backend: backend(),
                        after: self.patience,
                    });
                }
            }
        }
    }

    /// Sends `make()` to every backend at once; the answers, or the first failure.
    pub(crate) async fn broadcast(
        &self,
        make: impl Fn() -> Message,
    ) -> Result<Vec<Message>, BackendError> {
        let ids: Vec<&String> = self.commands.keys().collect();
        let answers = join_all(ids.iter().map(|id| {
            let message = make();
            async move { self.command(id, &message).await }
        }))
        .await;
        answers.into_iter().collect()
    }
}
