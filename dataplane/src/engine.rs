//! The tick engine: each backend ticks its own shards to the target tick the coordinator set,
//! exchanging borders with the backends that hold neighbouring shards over authenticated
//! data-plane connections. No coordinator round trip sits on a tick's critical path: a backend
//! moves on from tick `t` as soon as every border of tick `t` it needs has arrived.
//!
//! Borders are `d` cells deep (the colony's halo depth, see [`shared::sim::DeepShard`]), so
//! one exchange covers a batch of up to `d` ticks. Per batch: take the eight border blocks of
//! every local shard; send each remote neighbour the blocks it needs (one [`Message::Halo`]
//! per peer); wait for the remote blocks this backend needs; fill every margin (local blocks
//! in memory, remote ones from the inbox); step every shard through the batch.
//!
//! Every backend must cut the ticks into the same batches, or one would wait for a border its
//! neighbour never sends. A batch starting at `t` ends at the first of: `t + d`, the next
//! multiple of `checkpoint_every`, the next tick a run stops at. Those are the same on every
//! backend: the coordinator sends every backend the same runs in the same order, and a pause
//! stops each backend at the end of the batch it is in, which is a batch end everywhere.
//! Neighbours can be at most one batch apart, so the inbox holds two batches at most.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use codec::{Checkpoint, HaloEdge, Message};
use parking_lot::Mutex;
use rayon::prelude::*;
use shared::sim::{Block, DeepShard, Direction};
use shared::topology::ShardCoord;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::identity::Identity;
use crate::peers::PeerSet;
use crate::shards::LocalColony;

/// Checkpoints kept per colony; older ones are dropped.
const CHECKPOINTS_KEPT: usize = 4096;
/// Shortest interval between progress reports while a run is in flight.
pub const REPORT_PERIOD: Duration = Duration::from_millis(100);
/// Below this many cells per tick, shards are stepped on the engine's own thread: waking a
/// thread pool would cost more than the work.
const PARALLEL_CELLS: u64 = 4 << 20;

/// What the coordinator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Tick to stop at.
    pub until: u64,
    /// Record figures at ticks divisible by this (and at `until`).
    pub checkpoint_every: u64,
}

/// Where the engine is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineState {
    /// Not ticking: at its target (or never started).
    Idle,
    /// Ticking towards the target.
    Running,
    /// Stopped for good; the reason says why.
    Failed(String),
}

impl EngineState {
    fn name(&self) -> &'static str {
        match self {
            EngineState::Idle => "idle",
            EngineState::Running => "running",
            EngineState::Failed(_) => "failed",
        }
    }
}

/// A remote border block waiting for its tick: receiving shard and margin side.
type EdgeKey = (ShardCoord, u8);

/// Tick engine state of one colony on one backend.
#[derive(Debug)]
pub struct Engine {
    tick: AtomicU64,
    target: watch::Sender<Target>,
    state: watch::Sender<(u64, EngineState)>,
    checkpoints: Mutex<BTreeMap<u64, Checkpoint>>,
    /// Every tick a run was asked to stop at: each gets a checkpoint even if a later run
    /// raised the target before the engine got there.
    stops: Mutex<std::collections::BTreeSet<u64>>,
    inbox: Mutex<BTreeMap<u64, HashMap<EdgeKey, Block>>>,
    arrived: Notify,
    /// The tick the batch in progress ends at (the current tick when idle): where a pause
    /// can stop.
    batch_end: AtomicU64,
    started: AtomicBool,
    /// Cancelled when the colony is replaced or the node stops.
    pub(crate) cancel: CancellationToken,
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
            stops: Mutex::new(std::collections::BTreeSet::new()),
            inbox: Mutex::new(BTreeMap::new()),
            arrived: Notify::new(),
            batch_end: AtomicU64::new(0),
            started: AtomicBool::new(false),
            cancel: CancellationToken::new(),
        }
    }
}

impl Engine {
    /// The tick every local shard has reached.
    pub fn tick(&self) -> u64 {
        self.tick.load(Ordering::Acquire)
    }

    /// Stores the borders a neighbour sent for `tick`.
    ///
    /// # Errors
    /// A sentence for the error frame: a tick outside the two batches this backend can use,
    /// a shard it does not hold, a bad side or size, or a border sent twice.
    pub fn deliver(
        &self,
        colony: &LocalColony,
        tick: u64,
        edges: Vec<HaloEdge>,
    ) -> Result<(), String> {
        let current = self.tick();
        let depth = colony.depth();
        if tick < current || tick > current + u64::from(depth) {
            return Err(format!(
                "border for tick {tick}, but this backend is at tick {current} (batches of {depth})"
            ));
        }
        let params = colony.params();
        let mut checked = Vec::with_capacity(edges.len());
        for e in edges {
            let shard = ShardCoord::new(e.x, e.y);
            if !colony.holds(shard) {
                return Err(format!("shard {shard} is not held here"));
            }
            let side = Direction::ALL
                .get(usize::from(e.side))
                .copied()
                .ok_or_else(|| format!("side {} is not 0..8", e.side))?;
            let (w, h) =
                DeepShard::block_size(side, params.shard_width, params.shard_height, depth);
            if (e.width, e.height) != (w, h) {
                return Err(format!(
                    "{side:?} border of {shard} is {}x{} cells, expected {w}x{h}",
                    e.width, e.height
                ));
            }
            let block = Block::from_bytes(w, h, &e.bits).map_err(|err| err.to_string())?;
            checked.push(((shard, e.side), block));
        }
        let mut inbox = self.inbox.lock();
        let slot = inbox.entry(tick).or_default();
        for (key, edge) in checked {
            if slot.insert(key, edge).is_some() {
                return Err(format!("border {key:?} for tick {tick} sent twice"));
            }
        }
        drop(inbox);
        self.arrived.notify_waiters();
        Ok(())
    }

    /// Sets the target; starts ticking if it is ahead.
    pub fn set_target(&self, target: Target) {
        self.stops.lock().insert(target.until);
        self.target.send_replace(target);
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
        // The engine picks its next batch while holding the target, so the batch end read
        // here is the one it is in (or the current tick if it has not picked the next yet).
        self.target.send_modify(|t| {
            let end = self.batch_end.load(Ordering::Acquire).max(self.tick());
            t.until = t.until.min(end);
            stop = t.until;
        });
        self.stops.lock().insert(stop);
        stop
    }

    /// The progress message for the coordinator: state and checkpoints after `after_tick`.
    pub fn progress(&self, colony_id: &str, after_tick: u64) -> Message {
        let (tick, state) = self.state.borrow().clone();
        let checkpoints = self
            .checkpoints
            .lock()
            .range(after_tick.saturating_add(1)..)
            .map(|(_, c)| *c)
            .collect();
        Message::Progress {
            colony_id: colony_id.to_owned(),
            tick,
            until_tick: self.target().until,
            state: state.name().to_owned(),
            error: match state {
                EngineState::Failed(reason) => Some(reason),
                _ => None,
            },
            checkpoints,
        }
    }

    /// Waits until there is a checkpoint after `after_tick` (or the engine failed), at most
    /// `wait`. While a run is in flight, answers at most every `REPORT_PERIOD` (100 ms), so the
    /// coordinator is not woken every tick; a run's last tick is reported at once.
    pub async fn wait_progress(&self, after_tick: u64, wait: Duration) {
        let started = tokio::time::Instant::now();
        let mut rx = self.state.subscribe();
        let news = |(tick, state): &(u64, EngineState)| {
            matches!(state, EngineState::Failed(_))
                || (*tick > after_tick
                    && self
                        .checkpoints
                        .lock()
                        .range(after_tick + 1..)
                        .next()
                        .is_some())
        };
        let _ = tokio::time::timeout(wait, rx.wait_for(news)).await;
        let (tick, state) = self.state.borrow().clone();
        if state == EngineState::Running && tick < self.target().until {
            let calm = started + REPORT_PERIOD.min(wait);
            let mut rx = self.state.subscribe();
            let _ = tokio::time::timeout_at(calm, rx.wait_for(|(_, s)| *s != EngineState::Running))
                .await;
        }
    }

    fn record(&self, checkpoint: Checkpoint) {
        let mut checkpoints = self.checkpoints.lock();
        checkpoints.insert(checkpoint.tick, checkpoint);
        while checkpoints.len() > CHECKPOINTS_KEPT {
            checkpoints.pop_first();
        }
    }

    fn set_state(&self, state: EngineState) {
        self.state.send_replace((self.tick(), state));
    }

    /// Ticks in the batch starting at `t` (see the module docs): at most `depth`, never past
    /// a checkpoint tick, the target or a stop. At least 1 when `t < target.until`.
    fn batch_len(&self, t: u64, target: &Target, depth: u32) -> u64 {
        let every = target.checkpoint_every.max(1);
        let mut len = u64::from(depth)
            .min(every - t % every)
            .min(target.until.saturating_sub(t));
        if let Some(&stop) = self.stops.lock().range(t + 1..).next() {
            len = len.min(stop - t);
        }
        len.max(1)
    }
}

/// Starts the engine task of `colony` once; later calls do nothing.
pub fn ensure_started(colony: &Arc<LocalColony>, identity: &Identity, halo_timeout: Duration) {
    let engine = colony.engine();
    if engine.started.swap(true, Ordering::AcqRel) {
        return;
    }
    let colony = colony.clone();
    let identity = identity.clone();
    tokio::spawn(async move {
        let engine = colony.engine();
        let result = tokio::select! {
            biased;
            _ = engine.cancel.cancelled() => Ok(()),
            r = run(&colony, &identity, halo_timeout) => r,
        };
        if let Err(reason) = result {
            warn!(colony = colony.colony_id(), tick = engine.tick(), %reason, "tick engine failed");
            engine.set_state(EngineState::Failed(reason));
        }
    });
}

/// Which local shard fills which halo side of which neighbour, worked out once per colony.
struct Plan {
    /// For each local shard, for each side: where its halo comes from.
    sources: BTreeMap<ShardCoord, [Source; 8]>,
    /// Per remote backend: `(local shard, direction)` pairs whose edge it needs, and the
    /// receiving shard and side.
    outgoing: BTreeMap<String, Vec<(ShardCoord, Direction, ShardCoord, u8)>>,
    /// Remote edges this backend needs each tick.
    remote_needed: usize,
}

#[derive(Clone, Copy)]
enum Source {
    /// The neighbour is local: its edge on the opposite side.
    Local(ShardCoord),
    /// The neighbour is remote: from the inbox.
    Remote,
}

fn plan(colony: &LocalColony, me: &str) -> Plan {
    let topology = colony.topology();
    let params = colony.params();
    let mine: Vec<ShardCoord> = topology.shards_of(me);
    let owner = |c: ShardCoord| topology.backend_of(c).map(|b| b.instance_id.clone());
    let mut sources = BTreeMap::new();
    let mut outgoing: BTreeMap<String, Vec<_>> = BTreeMap::new();
    let mut remote_needed = 0;
    for &s in &mine {
        let mut from = [Source::Remote; 8];
        for d in Direction::ALL {
            let (nx, ny) = params.neighbour(s.x, s.y, d);
            let n = ShardCoord::new(nx, ny);
            match owner(n) {
                Some(o) if o == me => from[d.index()] = Source::Local(n),
                Some(o) => {
                    remote_needed += 1;
                    // n's halo on side d.opposite() is filled by s's edge on side d.
                    let side = u8::try_from(d.opposite().index()).unwrap_or(0);
                    outgoing.entry(o).or_default().push((s, d, n, side));
                }
                None => {}
            }
        }
        sources.insert(s, from);
    }
    Plan {
        sources,
        outgoing,
        remote_needed,
    }
}

async fn run(
    colony: &Arc<LocalColony>,
    identity: &Identity,
    halo_timeout: Duration,
) -> Result<(), String> {
    let engine = colony.engine();
    let plan = plan(colony, &identity.instance_id);
    let missing: Vec<ShardCoord> = colony.with_shards(|shards| {
        plan.sources
            .keys()
            .copied()
            .filter(|c| !shards.contains_key(c))
            .collect()
    });
    if let Some(shard) = missing.first() {
        return Err(format!(
            "shard {shard} was never initialised on this backend"
        ));
    }
    let peers = PeerSet::connect(colony.topology(), plan.outgoing.keys(), identity).await?;
    let world_width = colony.params().world_width();
    let rule = colony.params().rule;
    let depth = colony.depth();
    let cells_per_tick = plan.sources.len() as u64
        * u64::from(colony.params().shard_width)
        * u64::from(colony.params().shard_height);
    engine.record(colony.figures(0, world_width));
    let mut target_rx = engine.target.subscribe();
    info!(
        colony = colony.colony_id(),
        peers = plan.outgoing.len(),
        depth,
        "tick engine ready"
    );
    loop {
        // Pick the batch while holding the target, so a pause sees either this batch's end
        // or the tick before it (see `Engine::pause`).
        let batch = {
            let target = target_rx.borrow_and_update();
            let t = engine.tick();
            if t >= target.until {
                engine.batch_end.store(t, Ordering::Release);
                None
            } else {
                let len = engine.batch_len(t, &target, depth);
                engine.batch_end.store(t + len, Ordering::Release);
                Some((t, len))
            }
        };
        let Some((t, len)) = batch else {
            engine.set_state(EngineState::Idle);
            if target_rx.changed().await.is_err() {
                return Ok(());
            }
            continue;
        };
        if !matches!(engine.state.borrow().1, EngineState::Running) {
            engine.set_state(EngineState::Running);
        }
        // 1. Every local shard's border blocks at tick t.
        let borders: HashMap<ShardCoord, [Block; 8]> = colony.with_shards(|shards| {
            shards
                .iter()
                .map(|(c, slot)| (*c, Direction::ALL.map(|d| slot.grid.border(d))))
                .collect()
        });
        // 2. Send each remote neighbour what it needs.
        for (peer, wanted) in &plan.outgoing {
            let batch = wanted
                .iter()
                .filter_map(|(s, d, n, side)| {
                    let block = &borders.get(s)?[d.index()];
                    Some(HaloEdge {
                        x: n.x,
                        y: n.y,
                        side: *side,
                        width: block.width(),
                        height: block.height(),
                        bits: block.to_bytes(),
                    })
                })
                .collect();
            peers
                .send(
                    peer,
                    &Message::Halo {
                        colony_id: colony.colony_id().to_owned(),
                        tick: t,
                        edges: batch,
                    },
                )
                .await?;
        }
        // 3. Wait for the remote blocks of tick t.
        let remote = wait_inbox(engine, &peers, t, plan.remote_needed, halo_timeout).await?;
        // 4. Fill margins and step every shard through the batch.
        let sources = &plan.sources;
        let fill =
            |coord: &ShardCoord, slot: &mut crate::shards::ShardSlot| -> Result<(), String> {
                let Some(from) = sources.get(coord) else {
                    return Ok(());
                };
                for d in Direction::ALL {
                    let block = match from[d.index()] {
                        Source::Local(n) => borders
                            .get(&n)
                            .map(|b| &b[d.opposite().index()])
                            .ok_or_else(|| format!("no borders of local shard {n}"))?,
                        Source::Remote => {
                            let key = (*coord, u8::try_from(d.index()).unwrap_or(0));
                            remote.get(&key).ok_or_else(|| {
                                format!("no border for {coord} side {d:?} at tick {t}")
                            })?
                        }
                    };
                    slot.grid.set_margin(d, block).map_err(|e| e.to_string())?;
                }
                for _ in 0..len {
                    slot.grid.step(&rule);
                }
                slot.tick = t + len;
                Ok(())
            };
        if cells_per_tick >= PARALLEL_CELLS {
            colony.with_shards(|shards| {
                shards
                    .par_iter_mut()
                    .map(|(coord, slot)| fill(coord, slot))
                    .collect::<Result<(), String>>()
            })?;
        } else {
            // One shard at a time, taking the lock for each: a view of another shard
            // (`GET /shards`, `SHARD x y`) waits for one shard's batch at most, not all.
            for coord in sources.keys() {
                colony.with_shards(|shards| match shards.get_mut(coord) {
                    Some(slot) => fill(coord, slot),
                    None => Err(format!("shard {coord} vanished while ticking")),
                })?;
            }
        }
        let end = t + len;
        engine.tick.store(end, Ordering::Release);
        let target = engine.target();
        let asked = {
            let mut stops = engine.stops.lock();
            let asked = stops.remove(&end);
            // Stops already passed can never be reached again.
            *stops = stops.split_off(&end);
            asked
        };
        if asked || end.is_multiple_of(target.checkpoint_every.max(1)) || end >= target.until {
            engine.record(colony.figures(end, world_width));
        }
        engine.set_state(EngineState::Running);
    }
}

/// Waits until every remote border block of tick `t` is in, then takes them.
async fn wait_inbox(
    engine: &Engine,
    peers: &PeerSet,
    t: u64,
    needed: usize,
    timeout: Duration,
) -> Result<HashMap<EdgeKey, Block>, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let notified = engine.arrived.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let mut inbox = engine.inbox.lock();
            if inbox.get(&t).map_or(needed == 0, |m| m.len() >= needed) {
                let borders = inbox.remove(&t).unwrap_or_default();
                // Anything for tick t or before can never be used: a peer that sent borders
                // for ticks inside a batch, or a late duplicate, must not pile up here.
                *inbox = inbox.split_off(&(t + 1));
                return Ok(borders);
            }
        }
        peers.check()?;
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(deadline) => {
                let have = engine.inbox.lock().get(&t).map_or(0, HashMap::len);
                return Err(format!(
                    "borders of tick {t} did not arrive within {timeout:?} ({have} of {needed}); a neighbouring backend stopped"
                ));
            }
            // A dead peer link shows up here without waiting for the deadline.
            _ = peers.failed() => {}
        }
    }
}
