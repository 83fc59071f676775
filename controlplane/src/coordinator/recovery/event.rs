//! What a re-placement tells people: the `colony_recovery` event on `/ws`
//! ([`RecoveryEvent`]), a log line, and an alert per lost backend naming the shards that
//! moved and the ticks redone.

use serde::Serialize;
use shared::topology::ShardCoord;
use tracing::info;

use crate::coordinator::run::ColonyRun;

/// What a re-placement did: the `colony_recovery` event's data.
#[derive(Debug, Clone, Serialize)]
pub struct RecoveryEvent {
    /// The colony.
    pub colony_id: String,
    /// `backend_lost`, `rebalance` or `adopted`.
    pub kind: &'static str,
    /// The placement now in force.
    pub epoch: u64,
    /// Backends given up on.
    pub lost: Vec<String>,
    /// Shards that changed hands.
    pub moved: Vec<Moved>,
    /// The consistent checkpoint the colony went back to.
    pub restored_tick: u64,
    /// Ticks computed again: from the furthest tick reached back to `restored_tick`.
    pub ticks_redone: u64,
    /// Backends holding shards now.
    pub backends: usize,
    /// How long it took, in milliseconds.
    pub took_ms: u64,
}

/// One shard that changed hands.
#[derive(Debug, Clone, Serialize)]
pub struct Moved {
    /// The shard.
    pub shard: ShardCoord,
    /// Its owner before.
    pub from: String,
    /// Its owner now.
    pub to: String,
}

/// Logs the re-placement and raises an alert per lost backend, naming the shards moved and
/// the ticks redone.
pub(super) fn announce(run: &ColonyRun, event: &RecoveryEvent) {
    let moved: Vec<String> = event
        .moved
        .iter()
        .map(|m| format!("{} {}→{}", m.shard, m.from, m.to))
        .collect();
    info!(
        colony = %event.colony_id,
        kind = event.kind,
        epoch = event.epoch,
        lost = ?event.lost,
        moved = moved.len(),
        restored_tick = event.restored_tick,
        ticks_redone = event.ticks_redone,
        took_ms = event.took_ms,
        "colony placed again"
    );
    let Some(health) = run.health() else {
        return;
    };
    for lost in &event.lost {
        let theirs: Vec<&str> = event
            .moved
            .iter()
            .zip(&moved)
            .filter(|(m, _)| m.from == *lost)
            .map(|(_, text)| text.as_str())
            .collect();
        health.raise_alert(
            lost,
            "backend_lost",
            "critical",
            format!(
                "{lost} was lost from colony {}: shards moved {}; back to tick {}, {} ticks redone (epoch {})",
                event.colony_id,
                if theirs.is_empty() { "none".to_owned() } else { theirs.join(", ") },
                event.restored_tick,
                event.ticks_redone,
                event.epoch
            ),
        );
    }
}
