//! Colony messages on authenticated connections: `halo` (borders from a neighbour), `run`,
//! `pause` and `report` (from the coordinator).

use std::sync::Arc;
use std::time::Duration;

use codec::Message;

use super::Answer;
use crate::batch::Target;
use crate::shards::LocalColony;
use crate::state::Shared;
use crate::tick_loop::{deliver, ensure_started};

/// Longest a `report` may wait for news.
const MAX_REPORT_WAIT: Duration = Duration::from_secs(30);

fn colony(shared: &Shared, colony_id: &str) -> Result<Arc<LocalColony>, Message> {
    shared
        .store
        .colony()
        .filter(|c| c.colony_id() == colony_id)
        .ok_or_else(|| {
            Message::error(
                "unknown_colony",
                format!("this node is not part of colony {colony_id}"),
            )
        })
}

pub(crate) fn apply(shared: &Shared, message: Message) -> Answer {
    match handle(shared, message) {
        Ok(answer) => answer,
        Err(error) => Answer::Now(error),
    }
}

fn handle(shared: &Shared, message: Message) -> Result<Answer, Message> {
    match message {
        Message::Halo {
            colony_id,
            tick,
            edges,
        } => {
            let colony = colony(shared, &colony_id)?;
            deliver(&colony, tick, edges).map_err(|e| Message::error("bad_halo", e.to_string()))?;
            Ok(Answer::Quiet(Message::HaloAck { tick }))
        }
        Message::Run {
            colony_id,
            until_tick,
            checkpoint_every,
        } => {
            let colony = colony(shared, &colony_id)?;
            let identity = shared
                .identity
                .as_ref()
                .ok_or_else(|| Message::error("auth_unavailable", "no identity"))?;
            let engine = colony.engine();
            if until_tick < engine.tick() {
                return Err(Message::error(
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
            Ok(Answer::Now(engine.progress(&colony_id, u64::MAX)))
        }
        Message::Pause { colony_id } => {
            let colony = colony(shared, &colony_id)?;
            colony.engine().pause();
            Ok(Answer::Now(colony.engine().progress(&colony_id, u64::MAX)))
        }
        Message::Report {
            colony_id,
            after_tick,
            wait_ms,
        } => {
            let colony = colony(shared, &colony_id)?;
            let wait = Duration::from_millis(wait_ms).min(MAX_REPORT_WAIT);
            Ok(Answer::Later(Box::pin(async move {
                colony.engine().wait_progress(after_tick, wait).await;
                colony.engine().progress(&colony_id, after_tick)
            })))
        }
        other => Err(Message::error(
            "not_a_request",
            format!("{} is not a colony request", other.type_name()),
        )),
    }
}
