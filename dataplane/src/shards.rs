//! [`ShardStore`]: the shards a backend holds for the current colony.
//!
//! Shared by the control plane (init, `GET /shards/{x}/{y}`), the data plane (`SHARDS`,
//! `SHARD x y`) and the tick engine. A new colony replaces the old one whole; shards of an
//! old colony are never mixed with a new one's.

use std::collections::BTreeMap;
use std::sync::Arc;

use codec::{Checkpoint, Message, ShardSummary};
use parking_lot::{Mutex, RwLock};
use shared::sim::{DeepShard, WorldParams};
use shared::topology::{ClusterTopology, ShardCoord};

use crate::engine::{Engine, EngineError};

/// One shard's cells and the tick they are at.
#[derive(Debug)]
pub struct ShardSlot {
    /// The cells, with a margin as deep as the colony's halo depth.
    pub grid: DeepShard,
    /// The tick `grid` shows.
    pub tick: u64,
}

/// The colony a backend is part of: its topology and the shards held here.
#[derive(Debug)]
pub struct LocalColony {
    topology: Arc<ClusterTopology>,
    params: WorldParams,
    /// Ticks per border exchange (the depth of every shard's margin).
    depth: u32,
    /// Held only for short, synchronous sections (never across an `.await`).
    shards: Mutex<BTreeMap<ShardCoord, ShardSlot>>,
    engine: Engine,
}

impl LocalColony {
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

    /// The cached topology if it belongs to `colony_id`.
    pub fn topology_of(&self, colony_id: &str) -> Option<Arc<ClusterTopology>> {
        self.colony()
            .filter(|c| c.colony_id() == colony_id)
            .map(|c| c.topology.clone())
    }

    /// Makes `topology` the current colony, dropping any shards of an earlier one. Returns
    /// the colony (the existing one if it already has this id, so concurrent first inits of
    /// one colony agree).
    pub fn adopt(&self, topology: ClusterTopology) -> Arc<LocalColony> {
        let mut current = self.current.write();
        if let Some(existing) = current.as_ref() {
            if existing.colony_id() == topology.colony_id() {
                return existing.clone();
            }
            // The old colony's engine stops; its shards go with it.
            existing.engine.stop();
        }
        let colony = Arc::new(LocalColony {
            params: topology.world_params(),
            depth: topology.halo_depth(),
            topology: Arc::new(topology),
            shards: Mutex::new(BTreeMap::new()),
            engine: Engine::default(),
        });
        *current = Some(colony.clone());
        colony
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
