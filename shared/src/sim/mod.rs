//! The simulation kernel (DESIGN §6): the world's parameters and initial soup, Life-like rules,
//! one shard's cells with a halo and the kernels that step them, the edge/halo exchange format,
//! and a single-process reference run that any distributed run must match bit for bit.
//!
//! It owns no I/O: backends move [`Edge`]s between processes and call
//! [`ShardGrid::set_halo`]; this module only says what an edge is and where it goes.
//!
//! - [`hash`]: [`splitmix64`] and the density threshold.
//! - [`rule`]: [`Rule`] (`B3/S23`).
//! - [`params`]: [`WorldParams`], [`Summary`].
//! - [`edge`]: [`Direction`], [`Edge`], [`ShardEdges`]: the halo conventions.
//! - [`grid`]: [`ShardGrid`], the bit-packed fast kernel.
//! - [`deep`]: [`DeepShard`] and [`Block`]: margins several cells deep, exchanged every few ticks.
//! - [`plain`]: [`PlainGrid`], the byte-per-cell reference kernel.
//! - [`world`]: [`World`] and [`run_reference`].

pub mod deep;
pub mod edge;
pub mod grid;
pub mod hash;
pub mod params;
pub mod plain;
pub mod rule;
pub mod world;

pub use deep::{check_depth, default_depth, Block, DeepShard, MAX_HALO_DEPTH};
pub use edge::{Direction, Edge, HaloError, ShardEdges};
pub use grid::ShardGrid;
pub use hash::{splitmix64, DensityThreshold};
pub use params::{
    check_cells, ParamsError, Summary, WorldParams, MAX_PATTERN_CELLS, MAX_SHARD_CELLS,
};
pub use plain::PlainGrid;
pub use rule::{Rule, RuleError};
pub use world::{run_reference, World};
