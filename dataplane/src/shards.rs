//! [`ShardStore`]: the shards a backend holds for the current colony, and the copies it
//! keeps of them and of others' (DESIGN §14).
//!
//! Shared by the control plane (init, `GET /shards/{x}/{y}`), the data plane (`SHARDS`,
//! `SHARD x y`, the coordinator's recovery requests) and the tick engine. A new colony
//! replaces the old one whole; shards of an old colony are never mixed with a new one's.
//!
//! A colony lives through placements. The first comes from the colony start (epoch 0, built
//! by the inits); each re-placement is a fence (stop ticking, refuse older epochs) and then a
//! restore, which builds a fresh [`LocalColony`] for the new epoch from the copies kept at a
//! consistent checkpoint. The copies, the commit and the fence outlive placements: they are
//! the store's ([`CopyStore`]), not a placement's.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};

use codec::{Checkpoint, Message, ShardSummary};
use parking_lot::{Mutex, RwLock};
use shared::sim::{Block, DeepShard, HaloError, ParamsError, WorldParams};
use shared::topology::{ClusterTopology, ShardCoord};

use crate::copies::{CopyError, CopyStore};
use crate::engine::{Engine, EngineError};
use crate::holders;
use crate::sim_stats::SimStats;

/// One shard's cells and the tick they are at.
#[derive(Debug)]
pub struct ShardSlot {
    /// The cells, with a margin as deep as the colony's halo depth.
    pub grid: DeepShard,
    /// The tick `grid` shows.
    pub tick: u64,
}

/// Why a backend could not take a new placement of its colony.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The fence refused the placement (another colony, or an older epoch).
    #[error(transparent)]
    Fence(#[from] CopyError),
    /// The placement is another colony's.
    #[error("the placement is for colony {got}, not {expected}")]
    OtherColony {
        /// The colony the placement names.
        got: String,
        /// The colony restored.
        expected: String,
    },
    /// The placement gives this backend no shard.
    #[error("the placement gives {me} no shard")]
    NoShards {
        /// This backend.
        me: String,
    },
    /// No copy of a shard this backend now owns is kept here.
    #[error("no copy of shard {shard} at tick {tick} here")]
    NoCopy {
        /// The shard.
        shard: ShardCoord,
        /// The checkpoint.
        tick: u64,
    },
    /// A copy's bytes do not fit the shard.
    #[error("the copy of shard {shard} does not fit it: {source}")]
    BadCopy {
        /// The shard.
        shard: ShardCoord,
        /// What was wrong.
        source: HaloError,
    },
    /// A shard cannot be built with the colony's parameters.
    #[error(transparent)]
    BadShard(#[from] ParamsError),
}

/// The colony a backend is part of, in one placement: its topology, its epoch and the shards
/// held here.
#[derive(Debug)]
pub struct LocalColony {
    topology: Arc<ClusterTopology>,
    /// The placement this is; halos, runs and reports of other epochs are not for it.
    epoch: u64,
    params: WorldParams,
    /// Ticks per border exchange (the depth of every shard's margin).
    depth: u32,
    /// Held only for short, synchronous sections (never across an `.await`).
    shards: Mutex<BTreeMap<ShardCoord, ShardSlot>>,
    engine: Engine,
    /// The store's copies, commit and fence (shared with every placement of the colony).
    copies: Arc<CopyStore>,
    /// The shards this backend keeps replicas of in this placement, worked out on first use.
    replicated: OnceLock<BTreeSet<ShardCoord>>,
    /// The backend's simulation counters (the store's, shared by every placement).
    stats: Arc<SimStats>,
}

impl LocalColony {
    fn new(
        topology: Arc<ClusterTopology>,
        epoch: u64,
        shards: BTreeMap<ShardCoord, ShardSlot>,
        engine: Engine,
        copies: Arc<CopyStore>,
        stats: Arc<SimStats>,
    ) -> LocalColony {
        LocalColony {
            params: topology.world_params(),
            depth: topology.halo_depth(),
            topology,
            epoch,
            shards: Mutex::new(shards),
            engine,
            copies,
            replicated: OnceLock::new(),
            stats,
        }
    }

    /// The backend's simulation counters.
    pub fn stats(&self) -> &Arc<SimStats> {
        &self.stats
    }

    /// How many shards this placement holds here.
    pub fn shards_held(&self) -> usize {
        self.shards.lock().len()
    }

    /// The placement's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The copies, commit and fence of the colony on this backend.
    pub fn copies(&self) -> &Arc<CopyStore> {
        &self.copies
    }

    /// The shards `me` (this backend) keeps replicas of in this placement.
    pub fn replicated(&self, me: &str) -> &BTreeSet<ShardCoord> {
        self.replicated
            .get_or_init(|| holders::replicated_by(&self.topology, me))
    }

    /// The progress message for the coordinator: the engine's state and checkpoints after
    /// `after_tick`, and the replicas `me` holds.
    pub fn progress(&self, me: &str, after_tick: u64) -> Message {
        let held = self
            .copies
            .held(self.replicated(me))
            .into_iter()
            .map(|(tick, replicas)| codec::Held { tick, replicas })
            .collect();
        self.engine
            .progress(self.colony_id(), self.epoch, after_tick, held)
    }

    /// The colony's topology, as received on its first init.
    pub fn topology(&self) -> &Arc<ClusterTopology> {
        &self.topology
    }

    /// The colony's id.
    pub fn colony_id(&self) -> &str {
        self.topology.colony_id()
    }

    /// Dimensions and simulation settings.
    pub fn params(&self) -> &WorldParams {
        &self.params
    }

    /// Ticks per border exchange: the depth of every shard's margin.
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// The colony's tick engine on this backend.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// True if `shard` has been built on this backend for this colony.
    pub fn holds(&self, shard: ShardCoord) -> bool {
        self.shards.lock().contains_key(&shard)
    }

    /// Population and fingerprint of every shard held here, summed, labelled `tick`.
    pub fn figures(&self, tick: u64) -> Checkpoint {
        let world_width = self.params.world_width();
        self.with_shards(|shards| {
            let mut c = Checkpoint {
                tick,
                population: 0,
                fingerprint: 0,
            };
            for (coord, slot) in shards.iter() {
                let f = ShardFigures::of(&slot.grid, *coord, world_width);
                c.population += f.population;
                c.fingerprint = c.fingerprint.wrapping_add(f.fingerprint);
            }
            c
        })
    }

    /// Runs `f` with the shards locked.
    pub fn with_shards<R>(&self, f: impl FnOnce(&mut BTreeMap<ShardCoord, ShardSlot>) -> R) -> R {
        f(&mut self.shards.lock())
    }
}

/// Population and fingerprint of one freshly built shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardFigures {
    /// Live cells.
    pub population: u64,
    /// Wrapping sum of the live cells' hashes (DESIGN §6).
    pub fingerprint: u64,
}

impl ShardFigures {
    /// The figures of one shard's cells; the fingerprint depends on where the shard lies.
    fn of(grid: &DeepShard, shard: ShardCoord, world_width: u64) -> Self {
        ShardFigures {
            population: grid.population(),
            fingerprint: grid.fingerprint(shard.x, shard.y, world_width),
        }
    }
}

/// The backend's shard state. Cheap to clone; clones share it.
#[derive(Debug, Clone, Default)]
pub struct ShardStore {
    current: Arc<RwLock<Option<Arc<LocalColony>>>>,
    copies: Arc<CopyStore>,
    stats: Arc<SimStats>,
}

impl ShardStore {
    /// An empty store: no colony yet.
    pub fn new() -> Self {
        ShardStore::default()
    }

    /// The current colony, if any.
    pub fn colony(&self) -> Option<Arc<LocalColony>> {
        self.current.read().clone()
    }

    /// The copies, commit and fence of the current colony.
    pub fn copies(&self) -> &Arc<CopyStore> {
        &self.copies
    }

    /// The simulation counters of every colony this store held.
    pub fn sim_stats(&self) -> &Arc<SimStats> {
        &self.stats
    }

    /// The cached topology if it belongs to `colony_id`.
    pub fn topology_of(&self, colony_id: &str) -> Option<Arc<ClusterTopology>> {
        self.colony()
            .filter(|c| c.colony_id() == colony_id)
            .map(|c| c.topology.clone())
    }

    /// Makes `topology` the current colony in its first placement (epoch 0), dropping any
    /// shards and copies of an earlier one. Returns the colony (the existing one if it already
    /// has this id, so concurrent first inits of one colony agree).
    pub fn adopt(&self, topology: ClusterTopology) -> Arc<LocalColony> {
        let mut current = self.current.write();
        if let Some(existing) = current.as_ref() {
            if existing.colony_id() == topology.colony_id() {
                return existing.clone();
            }
            // The old colony is superseded: its engine stops, its shards and copies go.
            existing.engine.stop();
        }
        self.copies.reset(topology.colony_id());
        let colony = Arc::new(LocalColony::new(
            Arc::new(topology),
            0,
            BTreeMap::new(),
            Engine::default(),
            self.copies.clone(),
            self.stats.clone(),
        ));
        *current = Some(colony.clone());
        colony
    }

    /// The first step of a re-placement: raises the fence to `epoch` (messages of older
    /// epochs are refused from now on) and stops the engine of the placement in force, whose
    /// shards will be set back to a checkpoint.
    ///
    /// # Errors
    /// [`CopyError::UnknownColony`] or [`CopyError::StaleEpoch`].
    pub fn fence(&self, colony_id: &str, epoch: u64) -> Result<(), CopyError> {
        self.copies.fence(colony_id, epoch)?;
        if let Some(colony) = self.colony() {
            if colony.colony_id() == colony_id && colony.epoch < epoch {
                colony
                    .engine
                    .halt(format!("fenced: epoch {epoch} is being placed"));
            }
        }
        Ok(())
    }

    /// Stops `colony_id` for good (it failed or was replaced): the engine stops, the copies
    /// go. A stop from a placement older than the fence is refused, so a coordinator that was
    /// replaced cannot stop the colony its successor runs.
    ///
    /// # Errors
    /// [`CopyError::UnknownColony`] or [`CopyError::StaleEpoch`].
    pub fn stop(&self, colony_id: &str, epoch: u64, reason: &str) -> Result<(), CopyError> {
        // Held throughout, so an adopt or restore cannot slip in between the check and the
        // stop.
        let current = self.current.write();
        self.copies.forget(colony_id, epoch)?;
        if let Some(colony) = current.as_ref() {
            if colony.colony_id() == colony_id {
                colony.engine.halt(format!("stopped: {reason}"));
            }
        }
        Ok(())
    }

    /// The last step of a re-placement: makes `topology` (the colony's placement `epoch`) the
    /// current colony, with every shard it gives `me` set back to checkpoint `tick` from the
    /// copies kept here (tick 0 is rebuilt from the world's parameters). The engine of the
    /// placement before stops; copies of other ticks go. Returns the new colony, the figures
    /// of its shards at `tick`, and the shards.
    ///
    /// # Errors
    /// A [`RestoreError`]; nothing changes then.
    pub fn restore(
        &self,
        topology: ClusterTopology,
        epoch: u64,
        tick: u64,
        checkpoint_every: u64,
        me: &str,
    ) -> Result<(Arc<LocalColony>, Checkpoint), RestoreError> {
        // Held throughout, so a stop or an adopt cannot slip in between.
        let mut current = self.current.write();
        let colony_id = topology.colony_id().to_owned();
        let expected = self.copies.colony_id().unwrap_or_default();
        if colony_id != expected {
            return Err(RestoreError::OtherColony {
                got: colony_id,
                expected,
            });
        }
        let fence = self.copies.epoch();
        if epoch < fence {
            return Err(CopyError::StaleEpoch {
                epoch,
                current: fence,
            }
            .into());
        }
        let mine = topology.shards_of(me);
        if mine.is_empty() {
            return Err(RestoreError::NoShards { me: me.to_owned() });
        }
        let params = topology.world_params();
        let depth = topology.halo_depth();
        let mut shards = BTreeMap::new();
        for shard in mine {
            let grid = if tick == 0 {
                DeepShard::initial(&params, shard.x, shard.y, depth)?
            } else {
                let bits = self
                    .copies
                    .get(tick, shard)
                    .ok_or(RestoreError::NoCopy { shard, tick })?;
                let block = Block::from_bytes(params.shard_width, params.shard_height, &bits)
                    .map_err(|source| RestoreError::BadCopy { shard, source })?;
                DeepShard::from_cells(&block, depth)?
            };
            shards.insert(shard, ShardSlot { grid, tick });
        }
        self.copies.fence(&colony_id, epoch)?;
        let colony = Arc::new(LocalColony::new(
            Arc::new(topology),
            epoch,
            shards,
            Engine::starting_at(tick, checkpoint_every),
            self.copies.clone(),
            self.stats.clone(),
        ));
        if let Some(old) = current.as_ref() {
            old.engine.halt(format!("replaced by epoch {epoch}"));
        }
        *current = Some(colony.clone());
        drop(current);
        self.copies.rewind_to(tick);
        self.stats
            .recoveries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let figures = colony.figures(tick);
        Ok((colony, figures))
    }

    /// Builds `shard`'s initial cells (tick 0) in `colony`, replacing any earlier copy.
    ///
    /// # Errors
    /// [`EngineError::BadShard`] if the shard is outside the world or too large,
    /// [`EngineError::AlreadyTicking`] if the colony has already ticked here.
    pub fn init_shard(
        &self,
        colony: &LocalColony,
        shard: ShardCoord,
    ) -> Result<ShardFigures, EngineError> {
        let grid = DeepShard::initial(&colony.params, shard.x, shard.y, colony.depth)?;
        let figures = ShardFigures::of(&grid, shard, colony.params.world_width());
        if colony.engine.tick() > 0 {
            return Err(EngineError::AlreadyTicking {
                colony_id: colony.colony_id().to_owned(),
                tick: colony.engine.tick(),
            });
        }
        colony.with_shards(|shards| shards.insert(shard, ShardSlot { grid, tick: 0 }));
        Ok(figures)
    }

    /// `SHARDS`: what this node holds.
    pub fn summary(&self) -> Message {
        let Some(colony) = self.colony() else {
            return Message::ShardsReply {
                colony_id: None,
                shards: Vec::new(),
            };
        };
        let shards = colony.with_shards(|shards| {
            shards
                .iter()
                .map(|(c, slot)| ShardSummary {
                    x: c.x,
                    y: c.y,
                    tick: slot.tick,
                    population: slot.grid.population(),
                })
                .collect()
        });
        Message::ShardsReply {
            colony_id: Some(colony.colony_id().to_owned()),
            shards,
        }
    }

    /// `SHARD x y`: one shard's cells, or `None` if this node does not hold it.
    pub fn view(&self, x: u32, y: u32) -> Option<Message> {
        let colony = self.colony()?;
        colony.with_shards(|shards| {
            let slot = shards.get(&ShardCoord::new(x, y))?;
            Some(Message::ShardView {
                colony_id: colony.colony_id().to_owned(),
                x,
                y,
                tick: slot.tick,
                width: slot.grid.width(),
                height: slot.grid.height(),
                population: slot.grid.population(),
                rows: slot.grid.rows(),
            })
        })
    }
}
