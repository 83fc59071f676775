//! The tick loop: each backend ticks its own shards to the target tick the coordinator set,
//! exchanging borders with the backends that hold neighbouring shards over authenticated
//! data-plane connections. No coordinator round trip sits on a tick's critical path: a backend
//! moves on from tick `t` as soon as every border of tick `t` it needs has arrived.
//!
//! Borders are `d` cells deep (the colony's halo depth, see [`shared::sim::DeepShard`]), so
//! one exchange covers a batch of up to `d` ticks, cut by the rule in `batch`. Per batch: take
//! the eight border blocks of every local shard; send each remote neighbour the blocks it
//! needs (one [`Message::Halo`] per peer); wait for the remote blocks this backend needs; fill
//! every margin (local blocks in memory, remote ones from the inbox); step every shard through
//! the batch. Neighbours can be at most one batch apart, so the inbox holds two batches at
//! most.
//!
//! At every tick where figures are due (a checkpoint: every `checkpoint_every` ticks, every
//! run's last tick), the loop also keeps a copy of each of its shards and sends one to each of
//! its replica holders (see `holders`), on the same authenticated links as the borders:
//! that checkpoint can then be gone back to even if this backend is lost (DESIGN §14). Before
//! a batch, it waits while it is [`MAX_AHEAD`] checkpoints past the newest consistent one, so
//! the copies it and its holders keep stay bounded.
//!
//! This module also checks the borders neighbours send ([`deliver`]) before filing them in
//! the engine's inbox. The state it advances is the colony's [`Engine`]; the shards are the
//! store's.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use codec::{HaloEdge, Message, ShardCells};
use rayon::prelude::*;
use shared::sim::{Block, DeepShard, Direction};
use shared::topology::ShardCoord;
use tracing::{info, warn};

use crate::copies::{ShardCopy, MAX_AHEAD};
use crate::engine::{EdgeKey, Engine, EngineError, EngineState};
use crate::holders::replica_holders;
use crate::identity::Identity;
use crate::peers::PeerSet;
use crate::shards::{LocalColony, ShardSlot};
use crate::sim_stats::PeerTraffic;

/// Bytes of cells per replica message at most (one shard always goes, however large), well
/// under any frame limit a node may be configured with.
const REPLICA_MESSAGE_BYTES: usize = 1 << 20;

/// Below this many cells per tick, shards are stepped on the engine's own thread: waking a
/// thread pool would cost more than the work.
const PARALLEL_CELLS: u64 = 4 << 20;

/// Starts the tick loop of `colony` once (the first `run` does); later calls do nothing. The
/// loop ends when the colony's engine is stopped, or fails and says why in its state.
pub(crate) fn ensure_started(
    colony: &Arc<LocalColony>,
    identity: &Identity,
    halo_timeout: Duration,
) {
    let engine = colony.engine();
    if !engine.claim_start() {
        return;
    }
    let colony = colony.clone();
    let identity = identity.clone();
    tokio::spawn(async move {
        let engine = colony.engine();
        let result = tokio::select! {
            biased;
            _ = engine.stopped() => Ok(()),
            r = run(&colony, &identity, halo_timeout) => r,
        };
        if let Err(reason) = result {
            warn!(colony = colony.colony_id(), tick = engine.tick(), %reason, "tick engine failed");
            let state = match reason.unreachable_peer() {
                Some(peer) => EngineState::PeerUnreachable {
                    peer: peer.to_owned(),
                    reason: reason.to_string(),
                },
                None => EngineState::Failed(reason.to_string()),
            };
            engine.set_state(state);
        }
    });
}

/// Stores the borders a neighbour sent for `tick`.
///
/// # Errors
/// A tick outside the two batches this backend can use, a shard it does not hold, a bad side
/// or size, or a border sent twice; the text goes back in the error frame.
pub(crate) fn deliver(
    colony: &LocalColony,
    tick: u64,
    edges: Vec<HaloEdge>,
) -> Result<(), EngineError> {
    let engine = colony.engine();
    let current = engine.tick();
    let depth = colony.depth();
    if tick < current || tick > current + u64::from(depth) {
        return Err(EngineError::BorderTick {
            tick,
            current,
            depth,
        });
    }
    let params = colony.params();
    let mut checked = Vec::with_capacity(edges.len());
    let mut bytes = 0u64;
    // Every edge of one HALO comes from one peer: the owner of the shard beside the first
    // edge's shard on the edge's side.
    let sender = edges.first().and_then(|e| {
        let side = Direction::ALL.get(usize::from(e.side))?;
        let (nx, ny) = params.neighbour(e.x, e.y, *side);
        colony.topology().backend_of(ShardCoord::new(nx, ny))
    });
    let traffic = sender.map(|b| colony.stats().peer(&b.instance_id));
    for e in edges {
        bytes += e.bits.len() as u64;
        let shard = ShardCoord::new(e.x, e.y);
        if !colony.holds(shard) {
            return Err(EngineError::NotHeld { shard });
        }
        let side = Direction::ALL
            .get(usize::from(e.side))
            .copied()
            .ok_or(EngineError::BadSide { side: e.side })?;
        let (w, h) = DeepShard::block_size(side, params.shard_width, params.shard_height, depth);
        if (e.width, e.height) != (w, h) {
            return Err(EngineError::BorderSize {
                shard,
                side,
                width: e.width,
                height: e.height,
                expected_width: w,
                expected_height: h,
            });
        }
        let block = Block::from_bytes(w, h, &e.bits).map_err(EngineError::BorderBits)?;
        checked.push(((shard, e.side), block));
    }
    if let Some(traffic) = traffic {
        traffic.received(bytes);
    }
    engine.store_borders(tick, checked)
}

/// A direction as the side index a [`HaloEdge`] carries (0 = north, clockwise).
fn side_index(d: Direction) -> u8 {
    // There are eight directions, so the index always fits.
    u8::try_from(d.index()).unwrap_or(0)
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
                    let side = side_index(d.opposite());
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
) -> Result<(), EngineError> {
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
        return Err(EngineError::NotInitialised { shard: *shard });
    }
    let holders = replica_holders(colony.topology(), &identity.instance_id);
    let mut linked: Vec<&String> = plan.outgoing.keys().collect();
    linked.extend(holders.iter().filter(|h| !plan.outgoing.contains_key(*h)));
    let peers = PeerSet::connect(colony.topology(), linked.into_iter(), identity).await?;
    let rule = colony.params().rule;
    let depth = colony.depth();
    let cells_per_tick = plan.sources.len() as u64
        * u64::from(colony.params().shard_width)
        * u64::from(colony.params().shard_height);
    engine.record(colony.figures(engine.tick()));
    let stats = colony.stats().clone();
    // Each peer's counters are looked up once here, so a batch only adds to atomics.
    let traffic: BTreeMap<&str, Arc<PeerTraffic>> = plan
        .outgoing
        .keys()
        .map(|p| (p.as_str(), stats.peer(p)))
        .collect();
    let mut target_rx = engine.subscribe_target();
    let mut copies_rx = colony.copies().subscribe();
    info!(
        colony = colony.colony_id(),
        epoch = colony.epoch(),
        tick = engine.tick(),
        peers = plan.outgoing.len(),
        holders = ?holders,
        depth,
        "tick engine ready"
    );
    loop {
        // Not too far past the newest consistent checkpoint: every checkpoint until then is
        // a copy of this backend's shards and its holders' replicas, kept until a commit.
        while colony.copies().ahead() >= MAX_AHEAD {
            if copies_rx.changed().await.is_err() {
                return Ok(());
            }
        }
        // Pick the batch while holding the target, so a pause sees either this batch's end
        // or the tick before it (see `Engine::pause`).
        let batch = engine.start_batch(&target_rx.borrow_and_update(), depth);
        let Some((t, len)) = batch else {
            engine.set_state(EngineState::Idle);
            if target_rx.changed().await.is_err() {
                return Ok(());
            }
            continue;
        };
        engine.mark_running();
        let started = Instant::now();
        // 1. Every local shard's border blocks at tick t.
        let borders: HashMap<ShardCoord, [Block; 8]> = colony.with_shards(|shards| {
            shards
                .iter()
                .map(|(c, slot)| (*c, Direction::ALL.map(|d| slot.grid.border(d))))
                .collect()
        });
        // 2. Send each remote neighbour what it needs.
        for (peer, wanted) in &plan.outgoing {
            let batch: Vec<HaloEdge> = wanted
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
            let bytes: u64 = batch.iter().map(|e| e.bits.len() as u64).sum();
            peers
                .send(
                    peer,
                    &Message::Halo {
                        colony_id: colony.colony_id().to_owned(),
                        epoch: colony.epoch(),
                        tick: t,
                        edges: batch,
                    },
                )
                .await?;
            if let Some(t) = traffic.get(peer.as_str()) {
                t.sent(bytes);
            }
        }
        // 3. Wait for the remote blocks of tick t.
        let waiting = Instant::now();
        let remote = wait_inbox(engine, &peers, t, plan.remote_needed, halo_timeout).await?;
        let waited = waiting.elapsed();
        // 4. Fill margins and step every shard through the batch.
        let sources = &plan.sources;
        let fill = |coord: &ShardCoord, slot: &mut ShardSlot| -> Result<(), EngineError> {
            let Some(from) = sources.get(coord) else {
                return Ok(());
            };
            for d in Direction::ALL {
                let block = match from[d.index()] {
                    Source::Local(n) => borders
                        .get(&n)
                        .map(|b| &b[d.opposite().index()])
                        .ok_or(EngineError::NoLocalBorder { shard: n })?,
                    Source::Remote => {
                        let key = (*coord, side_index(d));
                        remote.get(&key).ok_or(EngineError::NoRemoteBorder {
                            shard: *coord,
                            side: d,
                            tick: t,
                        })?
                    }
                };
                slot.grid
                    .set_margin(d, block)
                    .map_err(EngineError::Margin)?;
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
                    .collect::<Result<(), EngineError>>()
            })?;
        } else {
            // One shard at a time, taking the lock for each: a view of another shard
            // (`GET /shards`, `SHARD x y`) waits for one shard's batch at most, not all.
            for coord in sources.keys() {
                colony.with_shards(|shards| match shards.get_mut(coord) {
                    Some(slot) => fill(coord, slot),
                    None => Err(EngineError::ShardVanished { shard: *coord }),
                })?;
            }
        }
        let end = t + len;
        stats.batch(len, started.elapsed(), waited);
        if engine.finish_batch(end) {
            // The copies first: once the figures are out, the coordinator may count this
            // checkpoint, and its owner must then be able to go back to it.
            keep_checkpoint(colony, &peers, &holders, end).await?;
            stats.checkpoints.fetch_add(1, Relaxed);
            engine.record(colony.figures(end));
        }
        engine.set_state(EngineState::Running);
    }
}

/// Keeps a copy of every local shard at checkpoint `tick` and sends one to each replica
/// holder, in messages of at most [`REPLICA_MESSAGE_BYTES`] of cells.
async fn keep_checkpoint(
    colony: &LocalColony,
    peers: &PeerSet,
    holders: &[String],
    tick: u64,
) -> Result<(), EngineError> {
    let own: Vec<ShardCopy> = colony.with_shards(|shards| {
        shards
            .iter()
            .map(|(c, slot)| (*c, Arc::new(slot.grid.cells().to_bytes())))
            .collect()
    });
    let (width, height) = (colony.params().shard_width, colony.params().shard_height);
    let mut messages = Vec::new();
    if !holders.is_empty() {
        let mut batch: Vec<ShardCells> = Vec::new();
        let mut bytes = 0;
        for (shard, bits) in &own {
            if bytes + bits.len() > REPLICA_MESSAGE_BYTES && !batch.is_empty() {
                messages.push(std::mem::take(&mut batch));
                bytes = 0;
            }
            bytes += bits.len();
            batch.push(ShardCells {
                x: shard.x,
                y: shard.y,
                width,
                height,
                bits: bits.as_ref().clone(),
            });
        }
        messages.push(batch);
    }
    colony
        .copies()
        .put(colony.colony_id(), colony.epoch(), tick, own)
        .map_err(EngineError::Copies)?;
    let messages: Vec<Message> = messages
        .into_iter()
        .map(|shards| Message::Replica {
            colony_id: colony.colony_id().to_owned(),
            epoch: colony.epoch(),
            tick,
            shards,
        })
        .collect();
    for holder in holders {
        for message in &messages {
            peers.send(holder, message).await?;
        }
    }
    Ok(())
}

/// Waits until every remote border block of tick `t` is in, then takes them.
///
/// When `timeout` passes first, every peer is probed over a fresh connection: one that cannot
/// be reached is named ([`EngineError::PeerUnreachable`]), so the coordinator can drop one
/// side of a cut path instead of retrying into it (DESIGN §15). If every peer answers, the
/// stall is a neighbour's own (it waits for someone else, who will report the cut), so this
/// engine gives it one more `timeout` before failing without naming anyone: the backends at
/// the ends of a cut report first.
async fn wait_inbox(
    engine: &Engine,
    peers: &PeerSet,
    t: u64,
    needed: usize,
    timeout: Duration,
) -> Result<HashMap<EdgeKey, Block>, EngineError> {
    let mut deadline = tokio::time::Instant::now() + timeout;
    let mut probed = false;
    loop {
        let notified = engine.arrivals().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(borders) = engine.take_borders(t, needed) {
            return Ok(borders);
        }
        peers.check()?;
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(deadline) => {
                if !probed {
                    probed = true;
                    // At most half the wait: a backend further from the cut, whose probe
                    // finds everyone and which then waits a whole `timeout` more, reports
                    // after the ends do even when a cut path drops packets silently and
                    // every probe into it runs to its limit.
                    if let Some((peer, why)) = peers.unreachable(timeout / 2).await {
                        return Err(EngineError::PeerUnreachable { tick: t, timeout, peer, why });
                    }
                    deadline = tokio::time::Instant::now() + timeout;
                    continue;
                }
                let have = engine.borders_in(t);
                return Err(EngineError::BordersLate {
                    tick: t,
                    timeout,
                    have,
                    needed,
                });
            }
            // A dead peer link shows up here without waiting for the deadline.
            _ = peers.failed() => {}
        }
    }
}
