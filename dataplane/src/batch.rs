//! How the ticks of a run are cut into batches: the one rule every backend must apply alike.
//!
//! Borders are `d` cells deep (the colony's halo depth), so one border exchange covers a batch
//! of up to `d` ticks. Every backend must cut the ticks into the same batches, or one would
//! wait for a border its neighbour never sends. A batch starting at `t` ends at the first of:
//! `t + d`, the next multiple of `checkpoint_every`, the target, the next tick a run stops at.
//! Those are the same on every backend: the coordinator sends every backend the same runs in
//! the same order, and a pause stops each backend at the end of the batch it is in, which is a
//! batch end everywhere.
//!
//! This module is pure arithmetic, kept apart from the engine's state and its loop so that the
//! rule can be read, and tested, on its own.

use std::collections::BTreeSet;

/// What the coordinator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Tick to stop at.
    pub until: u64,
    /// Record figures at ticks divisible by this (and at `until`).
    pub checkpoint_every: u64,
}

/// Ticks in the batch starting at `t`: at most `depth`, never past a checkpoint tick (a
/// multiple of `target.checkpoint_every`), `target.until` or the next tick in `stops`. At least
/// 1, so a caller with `t < target.until` always moves on.
pub(crate) fn batch_len(t: u64, target: &Target, depth: u32, stops: &BTreeSet<u64>) -> u64 {
    let every = target.checkpoint_every.max(1);
    let mut len = u64::from(depth)
        .min(every - t % every)
        .min(target.until.saturating_sub(t));
    if let Some(&stop) = stops.range(t + 1..).next() {
        len = len.min(stop - t);
    }
    len.max(1)
}
