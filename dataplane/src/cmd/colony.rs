//! Colony messages on authenticated connections while a placement runs: `halo` (borders from
//! a neighbour) and `replica` (a neighbour's copies), `run`, `pause`, `report` and `commit`
//! (from the coordinator).
//!
//! Every one of them names the colony and the placement (epoch) it belongs to, and is refused
//! unless that is the placement in force here: a backend that was given up on, or a
//! coordinator that was replaced, cannot write into a newer placement.

use std::sync::Arc;
use std::time::Duration;

use codec::{Message, ShardCells};
use shared::sim::Block;
use shared::topology::ShardCoord;

use super::{Answer, Refusal};
use crate::batch::Target;
use crate::copies::{CopyError, ShardCopy};
use crate::shards::LocalColony;
use crate::state::Shared;
use crate::tick_loop::{deliver, ensure_started};

/// Longest a `report` may wait for news.
const MAX_REPORT_WAIT: Duration = Duration::from_secs(30);

/// The error frame for a message the fence or the store refused.
pub(super) fn refusal(e: &CopyError) -> Refusal {
    let code = match e {
        CopyError::UnknownColony { .. } => "unknown_colony",
        CopyError::StaleEpoch { .. } => "stale_epoch",
        CopyError::FutureEpoch { .. } => "future_epoch",
        CopyError::TooFarAhead { .. } => "too_far_ahead",
    };
    Refusal::new(code, e.to_string())
}

/// The placement `(colony_id, epoch)`, if it is the one in force here.
fn placement(shared: &Shared, colony_id: &str, epoch: u64) -> Result<Arc<LocalColony>, Refusal> {
    shared
        .store
        .copies()
        .check(colony_id, epoch)
        .map_err(|e| refusal(&e))?;
    shared
        .store
        .colony()
        .filter(|c| c.colony_id() == colony_id && c.epoch() == epoch)
        .ok_or_else(|| {
            Refusal::new(
                "not_restored",
                format!("epoch {epoch} of colony {colony_id} is fenced but not restored here yet"),
            )
        })
}

/// Checks the cells of a replica or an install against the colony's shard size, and turns
/// them into copies.
pub(super) fn copies_of(
    colony: &LocalColony,
    shards: Vec<ShardCells>,
) -> Result<Vec<ShardCopy>, Refusal> {
    let params = colony.params();
    let (w, h) = (params.shard_width, params.shard_height);
    shards
        .into_iter()
        .map(|c| {
            let shard = ShardCoord::new(c.x, c.y);
            if !colony.topology().contains_shard(shard) {
                return Err(Refusal::new(
                    "bad_copy",
                    format!("shard {shard} is outside the world"),
                ));
            }
            if (c.width, c.height) != (w, h) || c.bits.len() != Block::wire_len(w, h) {
                return Err(Refusal::new(
                    "bad_copy",
                    format!(
                        "shard {shard}: {}x{} cells in {} bytes, expected {w}x{h} in {}",
                        c.width,
                        c.height,
                        c.bits.len(),
                        Block::wire_len(w, h)
                    ),
                ));
            }
            Ok((shard, Arc::new(c.bits)))
        })
        .collect()
}

pub(crate) fn apply(shared: &Shared, message: Message) -> Answer {
    match handle(shared, message) {
        Ok(answer) => answer,
        Err(refusal) => Answer::Now(refusal.into_message()),
    }
}

fn handle(shared: &Shared, message: Message) -> Result<Answer, Refusal> {
    let me = || {
        shared
            .identity
            .as_ref()
            .ok_or_else(|| Refusal::new("auth_unavailable", "no identity"))
    };
    match message {
        Message::Halo {
            colony_id,
            epoch,
            tick,
            edges,
        } => {
            let colony = placement(shared, &colony_id, epoch)?;
            deliver(&colony, tick, edges).map_err(|e| Refusal::new("bad_halo", e.to_string()))?;
            Ok(Answer::Quiet(Message::HaloAck { tick }))
        }
        Message::Replica {
            colony_id,
            epoch,
            tick,
            shards,
        } => {
            let colony = placement(shared, &colony_id, epoch)?;
            let copies = copies_of(&colony, shards)?;
            let n = u32::try_from(copies.len()).unwrap_or(u32::MAX);
            colony
                .copies()
                .put(&colony_id, epoch, tick, copies)
                .map_err(|e| refusal(&e))?;
            Ok(Answer::Quiet(Message::Installed { shards: n }))
        }
        Message::Run {
            colony_id,
            epoch,
            until_tick,
            checkpoint_every,
        } => {
            let colony = placement(shared, &colony_id, epoch)?;
            let identity = me()?;
            let engine = colony.engine();
            if until_tick < engine.tick() {
                return Err(Refusal::new(
                    "bad_run",
                    format!(
                        "tick {until_tick} is behind this backend's tick {}",
                        engine.tick()
                    ),
                ));
            }
            engine.set_target(Target {
                until: until_tick,
                checkpoint_every: checkpoint_every.max(1),
            });
            ensure_started(&colony, identity, shared.config.halo_timeout);
            Ok(Answer::Now(
                colony.progress(&identity.instance_id, u64::MAX),
            ))
        }
        Message::Pause { colony_id, epoch } => {
            let colony = placement(shared, &colony_id, epoch)?;
            let identity = me()?;
            colony.engine().pause();
            Ok(Answer::Now(
                colony.progress(&identity.instance_id, u64::MAX),
            ))
        }
        Message::Report {
            colony_id,
            epoch,
            after_tick,
            wait_ms,
        } => {
            let colony = placement(shared, &colony_id, epoch)?;
            let me = me()?.instance_id.clone();
            let wait = Duration::from_millis(wait_ms).min(MAX_REPORT_WAIT);
            Ok(Answer::Later(Box::pin(async move {
                let copies = colony.copies().subscribe();
                colony
                    .engine()
                    .wait_progress(after_tick, wait, copies)
                    .await;
                colony.progress(&me, after_tick)
            })))
        }
        Message::Commit {
            colony_id,
            epoch,
            tick,
        } => {
            let committed = shared
                .store
                .copies()
                .commit(&colony_id, epoch, tick)
                .map_err(|e| refusal(&e))?;
            Ok(Answer::Now(Message::Committed { tick: committed }))
        }
        other => Err(Refusal::new(
            "not_a_request",
            format!("{} is not a colony request", other.type_name()),
        )),
    }
}
