//! The coordinator's recovery requests (DESIGN §14), on authenticated connections: `describe`
//! (what colony is held here, for a restarted coordinator), `fence` (stop ticking and refuse
//! older placements, answered with the copies held), `fetch` (one copy), `install` (copies of
//! shards about to be owned here), `restore` (take a new placement at a checkpoint) and
//! `stop` (the colony is over).
//!
//! The order is the coordinator's business; each step checks only what it needs: the colony,
//! and for anything that writes, that its epoch is not older than the fence.

use std::sync::Arc;

use codec::{ColonyInfo, HeldCopies, Message, ShardCells, ShardRef};
use shared::sim::Block;
use shared::topology::{ClusterTopology, ShardCoord};

use super::colony::{copies_of, refusal};
use super::{Answer, Refusal};
use crate::copies::ShardCopy;
use crate::state::Shared;

pub(crate) fn apply(shared: &Shared, message: Message) -> Answer {
    Answer::Now(handle(shared, message).unwrap_or_else(Refusal::into_message))
}

fn shard_ref(c: ShardCoord) -> ShardRef {
    ShardRef { x: c.x, y: c.y }
}

fn handle(shared: &Shared, message: Message) -> Result<Message, Refusal> {
    let store = &shared.store;
    let copies = store.copies();
    match message {
        Message::Describe => {
            let colony = store
                .colony()
                .filter(|c| copies.colony_id().as_deref() == Some(c.colony_id()));
            let info = match colony {
                None => None,
                Some(colony) => {
                    let topology = serde_json::to_string(colony.topology().as_ref())
                        .map_err(|e| Refusal::new("internal", e.to_string()))?;
                    let engine = colony.engine();
                    let target = engine.target();
                    Some(ColonyInfo {
                        colony_id: colony.colony_id().to_owned(),
                        epoch: colony.epoch(),
                        fence: copies.epoch().max(colony.epoch()),
                        topology,
                        committed: copies.committed(),
                        tick: engine.tick(),
                        until_tick: target.until,
                        checkpoint_every: target.checkpoint_every,
                        state: engine.state_name().to_owned(),
                    })
                }
            };
            Ok(Message::Described { colony: info })
        }
        Message::Fence { colony_id, epoch } => {
            store.fence(&colony_id, epoch).map_err(|e| refusal(&e))?;
            let (tick, until_tick) = store
                .colony()
                .filter(|c| c.colony_id() == colony_id)
                .map_or((0, 0), |c| (c.engine().tick(), c.engine().target().until));
            let held = copies
                .inventory()
                .into_iter()
                .map(|(tick, shards)| HeldCopies {
                    tick,
                    shards: shards.into_iter().map(shard_ref).collect(),
                })
                .collect();
            Ok(Message::Inventory {
                colony_id,
                epoch,
                committed: copies.committed(),
                tick,
                until_tick,
                copies: held,
            })
        }
        Message::Fetch {
            colony_id,
            tick,
            x,
            y,
        } => {
            let colony = store
                .colony()
                .filter(|c| c.colony_id() == colony_id)
                .ok_or_else(|| {
                    Refusal::new(
                        "unknown_colony",
                        format!("this node is not part of colony {colony_id}"),
                    )
                })?;
            let shard = ShardCoord::new(x, y);
            let bits = copies.get(tick, shard).ok_or_else(|| {
                Refusal::new(
                    "no_copy",
                    format!("no copy of shard {shard} at tick {tick} here"),
                )
            })?;
            let params = colony.params();
            Ok(Message::Cells {
                colony_id,
                tick,
                cells: ShardCells {
                    x,
                    y,
                    width: params.shard_width,
                    height: params.shard_height,
                    bits: bits.as_ref().clone(),
                },
            })
        }
        Message::Install {
            colony_id,
            epoch,
            tick,
            shards,
        } => {
            // A placement of the colony held here knows the shard size. A backend joining
            // the colony has none yet: its copies need only be whole, and the restore checks
            // their size against the new placement.
            let shards = match store.colony().filter(|c| c.colony_id() == colony_id) {
                Some(colony) => copies_of(&colony, shards)?,
                None => whole(shards)?,
            };
            let n = u32::try_from(shards.len()).unwrap_or(u32::MAX);
            copies
                .put(&colony_id, epoch, tick, shards)
                .map_err(|e| refusal(&e))?;
            Ok(Message::Installed { shards: n })
        }
        Message::Restore {
            colony_id,
            epoch,
            topology,
            tick,
            checkpoint_every,
        } => {
            let me = shared
                .identity
                .as_ref()
                .ok_or_else(|| Refusal::new("auth_unavailable", "no identity"))?;
            let topology: ClusterTopology = serde_json::from_str(&topology)
                .map_err(|e| Refusal::new("bad_restore", format!("invalid topology: {e}")))?;
            if topology.colony_id() != colony_id {
                return Err(Refusal::new(
                    "bad_restore",
                    format!(
                        "the placement is for colony {}, not {colony_id}",
                        topology.colony_id()
                    ),
                ));
            }
            let (colony, figures) = store
                .restore(topology, epoch, tick, checkpoint_every, &me.instance_id)
                .map_err(|e| Refusal::new("bad_restore", e.to_string()))?;
            let shards = colony.with_shards(|s| s.keys().copied().map(shard_ref).collect());
            Ok(Message::Restored {
                colony_id,
                epoch,
                figures,
                shards,
            })
        }
        Message::Stop {
            colony_id,
            epoch,
            reason,
        } => {
            store
                .stop(&colony_id, epoch, &reason)
                .map_err(|e| refusal(&e))?;
            Ok(Message::Stopped { colony_id })
        }
        other => Err(Refusal::new(
            "not_a_request",
            format!("{} is not a recovery request", other.type_name()),
        )),
    }
}

/// Copies checked only for being whole: as many bytes as their own size needs, and no larger
/// than a shard may be.
fn whole(shards: Vec<ShardCells>) -> Result<Vec<ShardCopy>, Refusal> {
    shards
        .into_iter()
        .map(|c| {
            let cells = u64::from(c.width) * u64::from(c.height);
            if cells == 0
                || cells > shared::sim::MAX_SHARD_CELLS
                || c.bits.len() != Block::wire_len(c.width, c.height)
            {
                return Err(Refusal::new(
                    "bad_copy",
                    format!(
                        "shard ({}, {}): {}x{} cells in {} bytes",
                        c.x,
                        c.y,
                        c.width,
                        c.height,
                        c.bits.len()
                    ),
                ));
            }
            Ok((ShardCoord::new(c.x, c.y), Arc::new(c.bits)))
        })
        .collect()
}
