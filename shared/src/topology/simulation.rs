//! [`Simulation`]: how every shard of a topology is simulated (rule, seed, density, pattern,
//! halo depth), and its checks against the topology's dimensions.

use serde::{Deserialize, Serialize};

use super::{Dimensions, TopologyError};
use crate::sim::{Rule, WorldParams};

// === impl Simulation ===

/// How every shard is simulated: the Life-like rule, the seed and density of the initial
/// soup (DESIGN §6), and any pattern cells placed on top. Travels inside the topology so
/// backends need nothing else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Simulation {
    /// The rule, e.g. `B3/S23`.
    pub rule: Rule,
    /// Seed of the initial soup.
    pub seed: u64,
    /// Fraction of cells alive at tick 0, in `[0, 1]`.
    pub density: f64,
    /// Global cells `[gx, gy]` alive at tick 0 besides the soup (see [`WorldParams::cells`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cells: Vec<[u64; 2]>,
    /// Ticks per border exchange between shards (the depth of every shard's margin); `None`
    /// picks [`crate::sim::default_depth`] for the shard size. It changes speed, never results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halo_depth: Option<u32>,
}

impl Default for Simulation {
    /// The rule, seed and density of [`WorldParams::default`] (DESIGN §3), no pattern cells,
    /// and the halo depth picked for the shard size.
    fn default() -> Self {
        let world = WorldParams::default();
        Simulation {
            rule: world.rule,
            seed: world.seed,
            density: world.density,
            cells: world.cells,
            halo_depth: None,
        }
    }
}

impl Simulation {
    /// Checks the density range.
    ///
    /// # Errors
    /// [`TopologyError::InvalidSimulation`] naming the field.
    pub fn validate(&self) -> Result<(), TopologyError> {
        if !(0.0..=1.0).contains(&self.density) {
            return Err(TopologyError::InvalidSimulation {
                field: "density",
                reason: format!("{} is outside [0, 1]", self.density),
            });
        }
        Ok(())
    }
}

/// Checks the settings that depend on the dimensions: every pattern cell lies inside the
/// world, and the halo depth fits a shard.
pub(super) fn check_pattern(
    simulation: &Simulation,
    dims: &Dimensions,
) -> Result<(), TopologyError> {
    let (width, height) = (dims.world_width(), dims.world_height());
    crate::sim::check_cells(&simulation.cells, width.into(), height.into()).map_err(|e| {
        TopologyError::InvalidSimulation {
            field: "cells",
            reason: e.to_string(),
        }
    })?;
    if let Some(depth) = simulation.halo_depth {
        crate::sim::check_depth(depth, dims.shard_width, dims.shard_height).map_err(|e| {
            TopologyError::InvalidSimulation {
                field: "halo_depth",
                reason: e.to_string(),
            }
        })?;
    }
    Ok(())
}
