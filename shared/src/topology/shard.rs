//! The grid of shards: a shard's position ([`ShardCoord`]) and the world's size
//! ([`Dimensions`]), with the limits every topology is checked against.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{TopologyError, MAX_SHARDS, MAX_WORLD_CELLS};
use crate::sim::MAX_SHARD_CELLS;

// === impl ShardCoord ===

/// A shard's position in the grid of shards; JSON `{"x":..,"y":..}`.
///
/// Ordered row-major (`y` first, then `x`), the order of
/// [`ClusterTopology::all_shards`](super::ClusterTopology::all_shards).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardCoord {
    /// Column, `0..width_in_shards`.
    pub x: u32,
    /// Row, `0..height_in_shards`; row 0 is north.
    pub y: u32,
}

impl ShardCoord {
    /// The shard at column `x`, row `y`.
    pub const fn new(x: u32, y: u32) -> Self {
        ShardCoord { x, y }
    }
}

impl Ord for ShardCoord {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.y, self.x).cmp(&(other.y, other.x))
    }
}

impl PartialOrd for ShardCoord {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for ShardCoord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({}, {})", self.x, self.y)
    }
}

// === impl Dimensions ===

/// The world's size: a grid of `width_in_shards × height_in_shards` shards, each
/// `shard_width × shard_height` cells. There are no defaults here; the coordinator's
/// colony-start request supplies them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Dimensions {
    /// Shards per row.
    pub width_in_shards: u32,
    /// Shards per column.
    pub height_in_shards: u32,
    /// Cells per shard row.
    pub shard_width: u32,
    /// Cells per shard column.
    pub shard_height: u32,
}

impl Dimensions {
    /// Validated dimensions.
    ///
    /// # Errors
    ///
    /// [`TopologyError::InvalidDimension`] as [`Dimensions::validate`].
    pub fn new(
        width_in_shards: u32,
        height_in_shards: u32,
        shard_width: u32,
        shard_height: u32,
    ) -> Result<Self, TopologyError> {
        let dims = Dimensions {
            width_in_shards,
            height_in_shards,
            shard_width,
            shard_height,
        };
        dims.validate()?;
        Ok(dims)
    }

    /// Checks every field is at least 1, a shard holds at most [`MAX_SHARD_CELLS`] cells, the
    /// world has at most [`MAX_SHARDS`] shards and at most [`MAX_WORLD_CELLS`] cells.
    ///
    /// # Errors
    ///
    /// [`TopologyError::InvalidDimension`] naming the first field (or product) at fault.
    pub fn validate(&self) -> Result<(), TopologyError> {
        let invalid =
            |field, reason: String| Err(TopologyError::InvalidDimension { field, reason });
        for (field, value) in [
            ("width_in_shards", self.width_in_shards),
            ("height_in_shards", self.height_in_shards),
            ("shard_width", self.shard_width),
            ("shard_height", self.shard_height),
        ] {
            if value == 0 {
                return invalid(field, "must be at least 1".into());
            }
        }
        let shard_cells = u64::from(self.shard_width) * u64::from(self.shard_height);
        if shard_cells > MAX_SHARD_CELLS {
            return invalid(
                "shard_width*shard_height",
                format!("{shard_cells} cells per shard exceed the limit of {MAX_SHARD_CELLS}"),
            );
        }
        let shards = u64::from(self.width_in_shards) * u64::from(self.height_in_shards);
        if shards > MAX_SHARDS {
            return invalid(
                "width_in_shards*height_in_shards",
                format!("{shards} shards exceed the limit of {MAX_SHARDS}"),
            );
        }
        // Both products are bounded above (2^16 shards × 2^24 cells), so this cannot overflow.
        let cells = shards * shard_cells;
        if cells > MAX_WORLD_CELLS {
            return invalid(
                "world size",
                format!("{cells} cells exceed the limit of {MAX_WORLD_CELLS}"),
            );
        }
        Ok(())
    }

    /// Number of shards. Saturates on dimensions that fail [`Dimensions::validate`].
    pub fn shard_count(&self) -> u32 {
        self.width_in_shards.saturating_mul(self.height_in_shards)
    }

    /// World width in cells, `width_in_shards * shard_width`. Saturates on invalid dimensions.
    pub fn world_width(&self) -> u32 {
        self.width_in_shards.saturating_mul(self.shard_width)
    }

    /// World height in cells, `height_in_shards * shard_height`. Saturates on invalid dimensions.
    pub fn world_height(&self) -> u32 {
        self.height_in_shards.saturating_mul(self.shard_height)
    }
}
