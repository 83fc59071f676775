//! [`Engine`]: one colony's tick state on this backend.
//!
//! Shared by the requests that steer and watch a run (`run`, `pause`, `report`, and `halo`,
//! whose borders wait here for their tick) and by the tick loop (`tick_loop`) that advances
//! it. It holds what the coordinator asked for (the target and every tick a run stops at),
//! where the loop is (its tick, its state, the checkpoints it recorded) and the borders
//! neighbours sent ahead of use. It owns neither shards nor sockets: the shard store holds an
//! `Engine` per colony and the tick loop drives it, so this module depends on neither.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use codec::{Checkpoint, Held, Message};
use parking_lot::Mutex;
use shared::sim::{Block, Direction, HaloError, ParamsError};
use shared::topology::ShardCoord;
use tokio::sync::{watch, Notify};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::batch::{batch_len, Target};
use crate::peers::PeerError;

/// Checkpoints kept per colony; older ones are dropped.
const CHECKPOINTS_KEPT: usize = 4096;
/// Shortest interval between progress reports while a run is in flight.
const REPORT_PERIOD: Duration = Duration::from_millis(100);

/// Where the engine is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineState {
    /// Not ticking: at its target (or never started).
    Idle,
    /// Ticking towards the target.
    Running,
    /// Stopped for good; the reason says why.
    Failed(String),
    /// Stopped for good because the link to `peer` could not be used or made again while
    /// `peer` may well be alive (a partition between two backends): the coordinator is told
    /// who, so it can drop one side of the cut instead of retrying into it.
    PeerUnreachable {
        /// Why, for people.
        reason: String,
        /// The peer's instance id.
        peer: String,
    },
}

impl EngineState {
    fn name(&self) -> &'static str {
        match self {
            EngineState::Idle => "idle",
            EngineState::Running => "running",
            EngineState::Failed(_) | EngineState::PeerUnreachable { .. } => "failed",
        }
    }
}

/// Why the engine refused a neighbour's borders, could not build a shard, or failed a run.
///
/// The text of each is what people see: a refused border's goes back in a `bad_halo` error
/// frame, a refused init's in the control plane's answer, and a failed run's is the reason the
/// coordinator shows.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A border for a tick outside the batch this backend is in and the next one.
    #[error("border for tick {tick}, but this backend is at tick {current} (batches of {depth})")]
    BorderTick {
        /// The border's tick.
        tick: u64,
        /// This backend's tick.
        current: u64,
        /// Ticks per batch at most.
        depth: u32,
    },
    /// A border for a shard this backend does not hold.
    #[error("shard {shard} is not held here")]
    NotHeld {
        /// The receiving shard named in the border.
        shard: ShardCoord,
    },
    /// A border side that is not a direction index.
    #[error("side {side} is not 0..8")]
    BadSide {
        /// The side as sent.
        side: u8,
    },
    /// A border block whose size does not fit its side.
    #[error("{side:?} border of {shard} is {width}x{height} cells, expected {expected_width}x{expected_height}")]
    BorderSize {
        /// The receiving shard.
        shard: ShardCoord,
        /// The margin side it was sent for.
        side: Direction,
        /// Cells per row sent.
        width: u32,
        /// Rows sent.
        height: u32,
        /// Cells per row that side needs.
        expected_width: u32,
        /// Rows that side needs.
        expected_height: u32,
    },
    /// A border block whose bytes do not match its size.
    #[error(transparent)]
    BorderBits(HaloError),
    /// A border already received for the same shard, side and tick.
    #[error("border ({shard:?}, {side}) for tick {tick} sent twice")]
    DuplicateBorder {
        /// The receiving shard.
        shard: ShardCoord,
        /// The margin side.
        side: u8,
        /// The border's tick.
        tick: u64,
    },
    /// A shard that cannot be built with the colony's parameters.
    #[error(transparent)]
    BadShard(#[from] ParamsError),
    /// A shard sent to a colony that has already ticked here.
    #[error("colony {colony_id} is already at tick {tick} here; start a new colony instead")]
    AlreadyTicking {
        /// The colony.
        colony_id: String,
        /// Its tick on this backend.
        tick: u64,
    },
    /// A run started before every shard of this backend was built.
    #[error("shard {shard} was never initialised on this backend")]
    NotInitialised {
        /// The first missing shard.
        shard: ShardCoord,
    },
    /// A link to a neighbouring backend failed.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// A neighbour's borders did not arrive in time and a fresh connection to `peer`, whose
    /// borders were among the missing, could not be made: the path between the two is cut
    /// (or the peer is gone; the coordinator tells the two apart).
    #[error("borders of tick {tick} did not arrive within {timeout:?} and peer {peer} cannot be reached: {why}")]
    PeerUnreachable {
        /// The tick waited for.
        tick: u64,
        /// How long the engine waited.
        timeout: Duration,
        /// The peer's instance id.
        peer: String,
        /// What the fresh connection ran into.
        why: String,
    },
    /// A neighbour's borders did not arrive in time.
    #[error("borders of tick {tick} did not arrive within {timeout:?} ({have} of {needed}); a neighbouring backend stopped")]
    BordersLate {
        /// The tick waited for.
        tick: u64,
        /// How long the engine waited.
        timeout: Duration,
        /// Border blocks that did arrive.
        have: usize,
        /// Border blocks needed.
        needed: usize,
    },
    /// A local shard's borders were not taken before the batch (a bug, not bad input).
    #[error("no borders of local shard {shard}")]
    NoLocalBorder {
        /// The neighbour whose borders are missing.
        shard: ShardCoord,
    },
    /// A remote border the plan expects is not among those received (a bug, not bad input).
    #[error("no border for {shard} side {side:?} at tick {tick}")]
    NoRemoteBorder {
        /// The receiving shard.
        shard: ShardCoord,
        /// The margin side.
        side: Direction,
        /// The batch's first tick.
        tick: u64,
    },
    /// A border block did not fit a shard's margin.
    #[error(transparent)]
    Margin(HaloError),
    /// This backend's own copies were refused: it was fenced by a newer placement.
    #[error(transparent)]
    Copies(#[from] crate::copies::CopyError),
    /// A shard of this backend was dropped while the colony ticked.
    #[error("shard {shard} vanished while ticking")]
    ShardVanished {
        /// The shard.
        shard: ShardCoord,
    },
}

impl EngineError {
    /// The peer this error says is cut off, when it says one is: a border wait that found the
    /// peer unreachable, or a link to it that broke (not one it refused: the peer answered).
    pub fn unreachable_peer(&self) -> Option<&str> {
        match self {
            EngineError::PeerUnreachable { peer, .. } => Some(peer),
            EngineError::Peer(
                PeerError::Unreachable { peer, .. }
                | PeerError::Lost { peer, .. }
                | PeerError::Closed { peer },
            ) => Some(peer),
            _ => None,
        }
    }
}

/// A remote border block waiting for its tick: receiving shard and margin side.
pub(crate) type EdgeKey = (ShardCoord, u8);

/// Tick engine state of one colony on one backend.
#[derive(Debug)]
pub struct Engine {
    tick: AtomicU64,
    target: watch::Sender<Target>,
    state: watch::Sender<(u64, EngineState)>,
    checkpoints: Mutex<BTreeMap<u64, Checkpoint>>,
    /// Every tick a run was asked to stop at: each gets a checkpoint even if a later run
    /// raised the target before the engine got there.
    stops: Mutex<BTreeSet<u64>>,
    inbox: Mutex<BTreeMap<u64, HashMap<EdgeKey, Block>>>,
    arrived: Notify,
    /// The tick the batch in progress ends at (the current tick when idle): where a pause
    /// can stop.
    batch_end: AtomicU64,
    started: AtomicBool,
    /// Cancelled when the colony is replaced or the node stops.
    cancel: CancellationToken,
}

impl Default for Engine {
    fn default() -> Self {
        Engine {
            tick: AtomicU64::new(0),
            target: watch::Sender::new(Target {
                until: 0,
                checkpoint_every: 1,
            }),
            state: watch::Sender::new((0, EngineState::Idle)),
            checkpoints: Mutex::new(BTreeMap::new()),
            stops: Mutex::new(BTreeSet::new()),
            inbox: Mutex::new(BTreeMap::new()),
            arrived: Notify::new(),
            batch_end: AtomicU64::new(0),
            started: AtomicBool::new(false),
            cancel: CancellationToken::new(),
        }
    }
}

impl Engine {
    /// An engine whose shards are at `tick` (a placement restored at a checkpoint), idle
    /// there until a run.
    pub(crate) fn starting_at(tick: u64, checkpoint_every: u64) -> Engine {
        Engine {
            tick: AtomicU64::new(tick),
            target: watch::Sender::new(Target {
                until: tick,
                checkpoint_every: checkpoint_every.max(1),
            }),
            state: watch::Sender::new((tick, EngineState::Idle)),
            batch_end: AtomicU64::new(tick),
            ..Engine::default()
        }
    }

    /// The tick every local shard has reached.
    pub fn tick(&self) -> u64 {
        self.tick.load(Ordering::Acquire)
    }

    /// Sets the target; starts ticking if it is ahead.
    pub fn set_target(&self, target: Target) {
        self.stops.lock().insert(target.until);
        self.target.send_replace(target);
    }

    /// `idle`, `running` or `failed`.
    pub fn state_name(&self) -> &'static str {
        self.state.borrow().1.name()
    }

    /// The current target.
    pub fn target(&self) -> Target {
        *self.target.borrow()
    }

    /// Stops as soon as possible: at the end of the batch in progress (every backend cuts
    /// the same batches, so that is a tick they all pass). Returns the tick it will stop at;
    /// the coordinator then sets every backend's target to the largest such tick, so all
    /// meet at one tick.
    pub fn pause(&self) -> u64 {
        let mut stop = 0;
        // The loop picks its next batch while holding the target (`start_batch`), so the
        // batch end read here is the one it is in (or the current tick if it has not picked
        // the next yet).
        self.target.send_modify(|t| {
            let end = self.batch_end.load(Ordering::Acquire).max(self.tick());
            t.until = t.until.min(end);
            stop = t.until;
        });
        self.stops.lock().insert(stop);
        stop
    }

    /// The progress message for the coordinator: state and checkpoints after `after_tick`,
    /// in placement `epoch`, with the replicas this backend holds.
    pub fn progress(
        &self,
        colony_id: &str,
        epoch: u64,
        after_tick: u64,
        held: Vec<Held>,
    ) -> Message {
        let (tick, state) = self.state.borrow().clone();
        let checkpoints = self
            .checkpoints
            .lock()
            .range(after_tick.saturating_add(1)..)
            .map(|(_, c)| *c)
            .collect();
        Message::Progress {
            colony_id: colony_id.to_owned(),
            epoch,
            tick,
            until_tick: self.target().until,
            state: state.name().to_owned(),
            unreachable_peer: match &state {
                EngineState::PeerUnreachable { peer, .. } => Some(peer.clone()),
                _ => None,
            },
            error: match state {
                EngineState::Failed(reason) | EngineState::PeerUnreachable { reason, .. } => {
                    Some(reason)
                }
                _ => None,
            },
            checkpoints,
            held,
        }
    }

    /// Waits until there is a checkpoint after `after_tick` (or the engine failed, or `also`
    /// changed: the copies held), at most `wait`. While a run is in flight, answers at most
    /// every `REPORT_PERIOD` (100 ms), so the coordinator is not woken every tick; a run's
    /// last tick is reported at once.
    pub async fn wait_progress(
        &self,
        after_tick: u64,
        wait: Duration,
        mut also: watch::Receiver<u64>,
    ) {
        let started = tokio::time::Instant::now();
        let mut rx = self.state.subscribe();
        let news = |(tick, state): &(u64, EngineState)| {
            matches!(
                state,
                EngineState::Failed(_) | EngineState::PeerUnreachable { .. }
            ) || (*tick > after_tick
                && self
                    .checkpoints
                    .lock()
                    .range(after_tick + 1..)
                    .next()
                    .is_some())
        };
        also.mark_unchanged();
        let _ = tokio::time::timeout(wait, async {
            tokio::select! {
                _ = rx.wait_for(news) => {}
                _ = also.changed() => {}
            }
        })
        .await;
        let (tick, state) = self.state.borrow().clone();
        if state == EngineState::Running && tick < self.target().until {
            let calm = started + REPORT_PERIOD.min(wait);
            let mut rx = self.state.subscribe();
            let _ = tokio::time::timeout_at(calm, rx.wait_for(|(_, s)| *s != EngineState::Running))
                .await;
        }
    }

    /// True the first time only: the caller starts the tick loop.
    pub(crate) fn claim_start(&self) -> bool {
        !self.started.swap(true, Ordering::AcqRel)
    }

    /// Stops the tick loop for good (the colony is replaced or the node stops).
    pub(crate) fn stop(&self) {
        self.cancel.cancel();
    }

    /// Stops the tick loop for good and says why in the engine's state (a fence, a stop
    /// from the coordinator, a newer placement).
    pub(crate) fn halt(&self, reason: String) {
        self.cancel.cancel();
        self.set_state(EngineState::Failed(reason));
    }

    /// Resolves once [`Engine::stop`] was called.
    pub(crate) fn stopped(&self) -> WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }

    /// A receiver of target changes, for the tick loop to wait on when idle.
    pub(crate) fn subscribe_target(&self) -> watch::Receiver<Target> {
        self.target.subscribe()
    }

    /// Cuts the next batch for `target` (see [`crate::batch`]), and publishes its end as the
    /// tick a pause stops at. `None` when the engine is at its target. The caller holds the
    /// target while it calls this, so a pause sees either this batch's end or the tick before.
    pub(crate) fn start_batch(&self, target: &Target, depth: u32) -> Option<(u64, u64)> {
        let t = self.tick();
        if t >= target.until {
            self.batch_end.store(t, Ordering::Release);
            return None;
        }
        let len = batch_len(t, target, depth, &self.stops.lock());
        self.batch_end.store(t + len, Ordering::Release);
        Some((t, len))
    }

    /// Moves the engine to `end`, a batch's last tick. True if figures are due there: a
    /// checkpoint tick, the target, or a tick a run asked to stop at.
    pub(crate) fn finish_batch(&self, end: u64) -> bool {
        self.tick.store(end, Ordering::Release);
        let target = self.target();
        let asked = {
            let mut stops = self.stops.lock();
            let asked = stops.remove(&end);
            // Stops already passed can never be reached again.
            *stops = stops.split_off(&end);
            asked
        };
        asked || end.is_multiple_of(target.checkpoint_every.max(1)) || end >= target.until
    }

    /// Records the figures of one tick, dropping the oldest beyond [`CHECKPOINTS_KEPT`].
    pub(crate) fn record(&self, checkpoint: Checkpoint) {
        let mut checkpoints = self.checkpoints.lock();
        checkpoints.insert(checkpoint.tick, checkpoint);
        while checkpoints.len() > CHECKPOINTS_KEPT {
            checkpoints.pop_first();
        }
    }

    /// Publishes `state` at the current tick.
    pub(crate) fn set_state(&self, state: EngineState) {
        self.state.send_replace((self.tick(), state));
    }

    /// Publishes [`EngineState::Running`] unless it already is, so waiters are not woken for
    /// nothing.
    pub(crate) fn mark_running(&self) {
        let tick = self.tick();
        self.state.send_if_modified(|current| {
            if current.1 == EngineState::Running {
                return false;
            }
            *current = (tick, EngineState::Running);
            true
        });
    }

    /// Files checked border blocks for `tick` and wakes the tick loop.
    ///
    /// # Errors
    /// [`EngineError::DuplicateBorder`] for a block already filed for the same shard, side
    /// and tick (the blocks before it stay filed).
    pub(crate) fn store_borders(
        &self,
        tick: u64,
        blocks: Vec<(EdgeKey, Block)>,
    ) -> Result<(), EngineError> {
        let mut inbox = self.inbox.lock();
        let slot = inbox.entry(tick).or_default();
        for ((shard, side), block) in blocks {
            if slot.insert((shard, side), block).is_some() {
                return Err(EngineError::DuplicateBorder { shard, side, tick });
            }
        }
        drop(inbox);
        self.arrived.notify_waiters();
        Ok(())
    }

    /// Takes the border blocks of tick `t` if at least `needed` are in, and drops everything
    /// filed for `t` or earlier.
    pub(crate) fn take_borders(&self, t: u64, needed: usize) -> Option<HashMap<EdgeKey, Block>> {
        let mut inbox = self.inbox.lock();
        if !inbox.get(&t).map_or(needed == 0, |m| m.len() >= needed) {
            return None;
        }
        let borders = inbox.remove(&t).unwrap_or_default();
        // Anything for tick t or before can never be used: a peer that sent borders for
        // ticks inside a batch, or a late duplicate, must not pile up here.
        *inbox = inbox.split_off(&(t + 1));
        Some(borders)
    }

    /// How many border blocks of tick `t` are in.
    pub(crate) fn borders_in(&self, t: u64) -> usize {
        self.inbox.lock().get(&t).map_or(0, HashMap::len)
    }

    /// Notified whenever borders are filed.
    pub(crate) fn arrivals(&self) -> &Notify {
        &self.arrived
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// These texts reach people (error frames, the coordinator's failure reason) and were
    /// sentences before they were variants: they must read as they did.
    #[test]
    fn error_texts_read_as_they_always_did() {
        let shard = ShardCoord::new(1, 2);
        let cases = [
            (
                EngineError::BorderTick {
                    tick: 9,
                    current: 4,
                    depth: 2,
                },
                "border for tick 9, but this backend is at tick 4 (batches of 2)",
            ),
            (
                EngineError::BorderSize {
                    shard,
                    side: Direction::North,
                    width: 3,
                    height: 1,
                    expected_width: 8,
                    expected_height: 2,
                },
                "North border of (1, 2) is 3x1 cells, expected 8x2",
            ),
            (
                EngineError::DuplicateBorder {
                    shard,
                    side: 3,
                    tick: 7,
                },
                "border (ShardCoord { x: 1, y: 2 }, 3) for tick 7 sent twice",
            ),
            (
                EngineError::BordersLate {
                    tick: 5,
                    timeout: Duration::from_secs(10),
                    have: 1,
                    needed: 3,
                },
                "borders of tick 5 did not arrive within 10s (1 of 3); a neighbouring backend stopped",
            ),
            (
                EngineError::Peer(PeerError::Closed {
                    peer: "backend_9010".into(),
                }),
                "peer backend_9010 closed the connection",
            ),
            (
                EngineError::AlreadyTicking {
                    colony_id: "c1".into(),
                    tick: 3,
                },
                "colony c1 is already at tick 3 here; start a new colony instead",
            ),
        ];
        for (error, text) in cases {
            assert_eq!(error.to_string(), text);
        }
    }
}
