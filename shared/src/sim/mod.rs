//! The simulation kernel (DESIGN §6): the world's parameters and initial soup, Life-like rules,
//! and the edge/halo exchange format. (Kernels and the reference run follow.)

pub mod edge;
pub mod hash;
pub mod params;
pub mod rule;

pub use edge::{Direction, Edge, HaloError, ShardEdges};
pub use hash::{splitmix64, DensityThreshold};
pub use params::{ParamsError, Summary, WorldParams, MAX_SHARD_CELLS};
pub use rule::{Rule, RuleError};
