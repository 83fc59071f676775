//! The tick engine: each backend ticks its own shards to the target tick the coordinator set,
//! exchanging borders with the backends that hold neighbouring shards over authenticated
//! data-plane connections. No coordinator round trip sits on a tick's critical path: a backend
//! moves from tick `t` to `t + 1` as soon as every border of tick `t` it needs has arrived.
//!
//! Per tick: take the eight edges of every local shard; send each remote neighbour the edges
//! it needs (one [`Message::Halo`] per peer); wait for the remote edges this backend needs;
//! fill every halo (local edges in memory, remote ones from the inbox); step every shard in
//! parallel. Neighbours can be at most one tick apart, so the inbox holds two ticks at most.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use codec::{Checkpoint, HaloEdge, Message};
use parking_lot::Mutex;
use rayon::prelude::*;
use shared::sim::{Direction, Edge, ShardEdges};
use shared::topology::ShardCoord;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::peers::PeerSet;
use crate::shards::LocalColony;
use crate::Identity;

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

/// A remote edge waiting for its tick.
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
    inbox: Mutex<BTreeMap<u64, HashMap<EdgeKey, Edge>>>,
    arrived: Notify,
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
    /// A sentence for the error frame: a tick outside the two this backend can use, a shard
    /// it does not hold, a bad side or length, or a border sent twice.
    pub fn deliver(
        &self,
        colony: &LocalColony,
        tick: u64,
        edges: Vec<HaloEdge>,
    ) -> Result<(), String> {
        let current = self.tick();
        if tick < current || tick > current + 1 {
            return Err(format!(
                "border for tick {tick}, but this backend is at tick {current}"
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
            let expected = side.edge_len(params.shard_width, params.shard_height);
            if e.len != expected {
                return Err(format!(
                    "{side:?} border of {shard} has {} cells, expected {expected}",
                    e.len
                ));
            }
            let edge = Edge::from_bytes(e.len, e.bits).map_err(|err| err.to_string())?;
            checked.push(((shard, e.side), edge));
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

    /// Stops as soon as possible: at most one tick on (a tick may be in progress). Returns
    /// the tick it will stop at; the coordinator then sets every backend's target to the
    /// largest such tick, so all meet at one tick.
    pub fn pause(&self) -> u64 {
        let next = self.tick() + 1;
        let mut stop = 0;
        self.target.send_modify(|t| {
            t.until = t.until.min(next);
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
    sources: Vec<(ShardCoord, [Source; 8])>,
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
    let mut sources = Vec::new();
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
        sources.push((s, from));
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
            .iter()
            .map(|(c, _)| *c)
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
    let cells_per_tick = plan.sources.len() as u64
        * u64::from(colony.params().shard_width)
        * u64::from(colony.params().shard_height);
    engine.record(colony.figures(0, world_width));
    let mut target_rx = engine.target.subscribe();
    info!(
        colony = colony.colony_id(),
        peers = plan.outgoing.len(),
        "tick engine ready"
    );
    loop {
        let t = engine.tick();
        let target = *target_rx.borrow_and_update();
        if t >= target.until {
            engine.set_state(EngineState::Idle);
            if target_rx.changed().await.is_err() {
                return Ok(());
            }
            continue;
        }
        if !matches!(engine.state.borrow().1, EngineState::Running) {
            engine.set_state(EngineState::Running);
        }
        // 1. Every local shard's edges at tick t.
        let edges: HashMap<ShardCoord, ShardEdges> = colony.with_shards(|shards| {
            shards
                .iter()
                .map(|(c, slot)| (*c, slot.grid.edges()))
                .collect()
        });
        // 2. Send each remote neighbour what it needs.
        for (peer, wanted) in &plan.outgoing {
            let batch = wanted
                .iter()
                .filter_map(|(s, d, n, side)| {
                    let edge = edges.get(s)?.get(*d);
                    Some(HaloEdge {
                        x: n.x,
                        y: n.y,
                        side: *side,
                        len: edge.len(),
                        bits: edge.as_bytes().to_vec(),
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
        // 3. Wait for the remote edges of tick t.
        let remote = wait_inbox(engine, &peers, t, plan.remote_needed, halo_timeout).await?;
        // 4. Fill halos and step every shard.
        let sources = &plan.sources;
        colony.with_shards(|shards| -> Result<(), String> {
            let fill = |coord: &ShardCoord, slot: &mut crate::ShardSlot| -> Result<(), String> {
                let Some((_, from)) = sources.iter().find(|(c, _)| c == coord) else {
                    return Ok(());
                };
                for d in Direction::ALL {
                    let edge = match from[d.index()] {
                        Source::Local(n) => edges
                            .get(&n)
                            .map(|e| e.get(d.opposite()))
                            .ok_or_else(|| format!("no edges of local shard {n}"))?,
                        Source::Remote => {
                            let key = (*coord, u8::try_from(d.index()).unwrap_or(0));
                            remote.get(&key).ok_or_else(|| {
                                format!("no border for {coord} side {d:?} at tick {t}")
                            })?
                        }
                    };
                    slot.grid.set_halo(d, edge).map_err(|e| e.to_string())?;
                }
                slot.grid.step(&rule);
                slot.tick = t + 1;
                Ok(())
            };
            if cells_per_tick >= PARALLEL_CELLS {
                shards
                    .par_iter_mut()
                    .map(|(coord, slot)| fill(coord, slot))
                    .collect::<Result<(), String>>()
            } else {
                shards
                    .iter_mut()
                    .try_for_each(|(coord, slot)| fill(coord, slot))
            }
        })?;
        engine.tick.store(t + 1, Ordering::Release);
        let target = engine.target();
        let asked = {
            let mut stops = engine.stops.lock();
            let asked = stops.remove(&(t + 1));
            // Stops already passed can never be reached again.
            *stops = stops.split_off(&(t + 1));
            asked
        };
        if asked || (t + 1).is_multiple_of(target.checkpoint_every.max(1)) || t + 1 >= target.until
        {
            engine.record(colony.figures(t + 1, world_width));
        }
        engine.set_state(EngineState::Running);
    }
}

/// Waits until every remote edge of tick `t` is in, then takes them.
async fn wait_inbox(
    engine: &Engine,
    peers: &PeerSet,
    t: u64,
    needed: usize,
    timeout: Duration,
) -> Result<HashMap<EdgeKey, Edge>, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let notified = engine.arrived.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let mut inbox = engine.inbox.lock();
            if inbox.get(&t).map_or(needed == 0, |m| m.len() >= needed) {
                return Ok(inbox.remove(&t).unwrap_or_default());
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
