//! Taking a colony over (DESIGN §14): the coordinator holds nothing that cannot be rebuilt, so
//! one that starts while backends hold a colony (its predecessor died) asks them what they
//! hold (`describe`) and picks the colony back up: same colony id, topology, consistent
//! checkpoint and run target. The take-over itself is a re-placement ([`super::supervise`]
//! with `adopt`): fenced at a new epoch, every backend goes back to the newest checkpoint any
//! of them was told was consistent (each keeps its copies of that one), so backends that
//! were stopped in different states — ahead by different checkpoints, one fenced by a
//! recovery the old coordinator did not finish — start again together.

use std::time::Duration;

use codec::{ColonyInfo, Message};
use dataplane::Identity;
use futures::future::join_all;
use shared::topology::{BackendEntry, ClusterTopology};
use tracing::{info, warn};

use crate::coordinator::run::{connect, within};

/// A colony the backends hold, as they describe it.
#[derive(Debug)]
pub struct Found {
    /// Its newest placement.
    pub topology: ClusterTopology,
    /// The newest epoch any backend was fenced at: the take-over fences above it.
    pub fence: u64,
    /// The newest consistent checkpoint any backend was told.
    pub committed: u64,
    /// The tick the backends were running to.
    pub target: u64,
}

/// What `backend` says it holds; `None` if it holds nothing or does not answer in time.
async fn describe(
    backend: &BackendEntry,
    identity: &Identity,
    patience: Duration,
) -> Option<ColonyInfo> {
    let address = backend.address.to_internal_address();
    let asked = within(patience, async {
        let mut link = connect(&address, identity).await.ok()?;
        match link.request(&Message::Describe).await.ok()? {
            Message::Described { colony } => colony,
            _ => None,
        }
    })
    .await;
    match asked {
        Ok(info) => info,
        Err(_) => {
            warn!(backend = %backend.instance_id, "no answer to describe");
            None
        }
    }
}

/// The colony `backends` hold, if any: the one most of them describe (the newest epoch
/// breaking ties), in its newest placement.
pub async fn find(
    backends: &[BackendEntry],
    identity: &Identity,
    patience: Duration,
) -> Option<Found> {
    let infos: Vec<ColonyInfo> = join_all(backends.iter().map(|b| describe(b, identity, patience)))
        .await
        .into_iter()
        .flatten()
        .collect();
    let mut colonies: Vec<(&str, usize, u64)> = Vec::new();
    for info in &infos {
        match colonies.iter_mut().find(|(id, _, _)| *id == info.colony_id) {
            Some((_, n, epoch)) => {
                *n += 1;
                *epoch = (*epoch).max(info.epoch);
            }
            None => colonies.push((&info.colony_id, 1, info.epoch)),
        }
    }
    let (colony_id, _, _) = colonies
        .into_iter()
        .max_by_key(|(id, n, epoch)| (*n, *epoch, id.to_owned()))?;
    let mine: Vec<&ColonyInfo> = infos.iter().filter(|i| i.colony_id == colony_id).collect();
    let newest = mine.iter().max_by_key(|i| i.epoch)?;
    let topology: ClusterTopology = match serde_json::from_str(&newest.topology) {
        Ok(t) => t,
        Err(e) => {
            warn!(colony = colony_id, error = %e, "a backend described a topology that does not parse");
            return None;
        }
    };
    let found = Found {
        topology,
        fence: mine.iter().map(|i| i.fence.max(i.epoch)).max().unwrap_or(0),
        committed: mine.iter().map(|i| i.committed).max().unwrap_or(0),
        target: mine.iter().map(|i| i.until_tick).max().unwrap_or(0),
    };
    info!(
        colony = colony_id,
        backends = mine.len(),
        epoch = newest.epoch,
        committed = found.committed,
        target = found.target,
        "backends hold a colony"
    );
    Some(found)
}
