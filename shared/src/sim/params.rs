//! [`WorldParams`]: the dimensions, rule and seed that define a world (DESIGN §6), the initial
//! state they imply, and [`Summary`], the figures a run is checked by.
//!
//! Shard placement is not here: a world's cells depend on global coordinates only.

use serde::{Deserialize, Serialize};

use super::{hash::DensityThreshold, splitmix64, Direction, Rule};

/// The most cells one shard may hold (e.g. 4096 × 4096): one backend ticks a shard as a unit,
/// and one packed buffer is then 2 MiB. It stops a bad request from making a backend allocate
/// without bound. The cluster ([`crate::topology::Dimensions`]) and the kernel check this one
/// limit, so `colony reference` accepts exactly the shards a cluster does.
pub const MAX_SHARD_CELLS: u64 = 1 << 24;

/// The most pattern cells a world may list (see [`WorldParams::cells`]).
pub const MAX_PATTERN_CELLS: usize = 1 << 16;

/// Everything that determines a world and its initial cells.
///
/// The world is `W = width_in_shards * shard_width` by `H = height_in_shards * shard_height`
/// cells on a torus; shard `(x, y)` holds global cells `x*shard_width ..(x+1)*shard_width` by
/// `y*shard_height ..(y+1)*shard_height`. The JSON field names and defaults are those of
/// `POST /colony-start` (DESIGN §3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorldParams {
    /// Shards per world row.
    pub width_in_shards: u32,
    /// Shards per world column.
    pub height_in_shards: u32,
    /// Cells per shard row.
    pub shard_width: u32,
    /// Cells per shard column.
    pub shard_height: u32,
    /// The Life-like rule, e.g. `B3/S23`.
    pub rule: Rule,
    /// Seed of the initial soup.
    pub seed: u64,
    /// Fraction of cells alive at tick 0, in `[0, 1]`.
    pub density: f64,
    /// Global cells `[gx, gy]` alive at tick 0 on top of the soup: a known pattern (a glider,
    /// a blinker) placed anywhere in the world. With `density` 0 they are the only live cells.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cells: Vec<[u64; 2]>,
}

impl Default for WorldParams {
    /// DESIGN §3's defaults: 8 × 5 shards of 250 × 250, `B3/S23`, seed 42, density 0.35.
    fn default() -> Self {
        WorldParams {
            width_in_shards: 8,
            height_in_shards: 5,
            shard_width: 250,
            shard_height: 250,
            rule: Rule::CONWAY,
            seed: 42,
            density: 0.35,
            cells: Vec::new(),
        }
    }
}

/// Why a set of [`WorldParams`] was refused; the message names the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParamsError {
    /// A dimension is zero.
    #[error("{field} must be at least 1")]
    ZeroDimension {
        /// The JSON name of the field.
        field: &'static str,
    },
    /// `shard_width * shard_height` is above [`MAX_SHARD_CELLS`].
    #[error("shard_width * shard_height is {cells} cells, above the limit of {max}")]
    ShardTooLarge {
        /// The requested cell count.
        cells: u64,
        /// [`MAX_SHARD_CELLS`].
        max: u64,
    },
    /// The world's cell count does not fit in a `u64`.
    #[error("the world has more than 2^64 cells")]
    WorldTooLarge,
    /// `density` is NaN or outside `[0, 1]`.
    #[error("density must be a number from 0 to 1, got {0}")]
    Density(f64),
    /// A pattern cell outside the world.
    #[error("cells[{index}] = [{x}, {y}] is outside the {width} × {height} world")]
    CellOutOfRange {
        /// Its position in the list.
        index: usize,
        /// Its column.
        x: u64,
        /// Its row.
        y: u64,
        /// The world's width in cells.
        width: u64,
        /// The world's height in cells.
        height: u64,
    },
    /// More pattern cells than [`MAX_PATTERN_CELLS`].
    #[error("cells lists {count} cells, above the limit of {max}")]
    TooManyCells {
        /// Cells listed.
        count: usize,
        /// [`MAX_PATTERN_CELLS`].
        max: usize,
    },
    /// A margin depth that does not fit the shard.
    #[error(
        "halo_depth must be from 1 to {max} (the shard's shorter side, at most 64), got {depth}"
    )]
    HaloDepth {
        /// The depth asked for.
        depth: u32,
        /// The deepest allowed.
        max: u32,
    },
    /// A shard coordinate outside the world.
    #[error(
        "shard ({x}, {y}) is outside a world of {width_in_shards} × {height_in_shards} shards"
    )]
    ShardOutOfRange {
        /// The shard column asked for.
        x: u32,
        /// The shard row asked for.
        y: u32,
        /// The world's width in shards.
        width_in_shards: u32,
        /// The world's height in shards.
        height_in_shards: u32,
    },
}

impl WorldParams {
    /// Checks every field; the world can be built if this passes.
    ///
    /// # Errors
    /// The first field found wrong, as a [`ParamsError`].
    pub fn validate(&self) -> Result<(), ParamsError> {
        for (field, value) in [
            ("width_in_shards", self.width_in_shards),
            ("height_in_shards", self.height_in_shards),
            ("shard_width", self.shard_width),
            ("shard_height", self.shard_height),
        ] {
            if value == 0 {
                return Err(ParamsError::ZeroDimension { field });
            }
        }
        let cells = u64::from(self.shard_width) * u64::from(self.shard_height);
        if cells > MAX_SHARD_CELLS {
            return Err(ParamsError::ShardTooLarge {
                cells,
                max: MAX_SHARD_CELLS,
            });
        }
        if self
            .world_width()
            .checked_mul(self.world_height())
            .is_none()
        {
            return Err(ParamsError::WorldTooLarge);
        }
        if !(0.0..=1.0).contains(&self.density) {
            return Err(ParamsError::Density(self.density));
        }
        check_cells(&self.cells, self.world_width(), self.world_height())
    }

    /// The pattern cells inside the `width` × `height` rectangle at global `(gx0, gy0)`, as
    /// coordinates relative to it.
    pub fn cells_within(
        &self,
        (gx0, gy0): (u64, u64),
        width: u32,
        height: u32,
    ) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.cells.iter().filter_map(move |&[gx, gy]| {
            let x = u32::try_from(gx.checked_sub(gx0)?).ok()?;
            let y = u32::try_from(gy.checked_sub(gy0)?).ok()?;
            (x < width && y < height).then_some((x, y))
        })
    }

    /// `W`, the world's width in cells.
    pub fn world_width(&self) -> u64 {
        u64::from(self.width_in_shards) * u64::from(self.shard_width)
    }

    /// `H`, the world's height in cells.
    pub fn world_height(&self) -> u64 {
        u64::from(self.height_in_shards) * u64::from(self.shard_height)
    }

    /// How many shards the world has.
    pub fn shard_count(&self) -> u64 {
        u64::from(self.width_in_shards) * u64::from(self.height_in_shards)
    }

    /// Global coordinates of shard `(x, y)`'s cell `(0, 0)`.
    pub fn shard_origin(&self, x: u32, y: u32) -> (u64, u64) {
        (
            u64::from(x) * u64::from(self.shard_width),
            u64::from(y) * u64::from(self.shard_height),
        )
    }

    /// Checks that shard `(x, y)` exists.
    ///
    /// # Errors
    /// [`ParamsError::ShardOutOfRange`].
    pub fn check_shard(&self, x: u32, y: u32) -> Result<(), ParamsError> {
        if x < self.width_in_shards && y < self.height_in_shards {
            Ok(())
        } else {
            Err(ParamsError::ShardOutOfRange {
                x,
                y,
                width_in_shards: self.width_in_shards,
                height_in_shards: self.height_in_shards,
            })
        }
    }

    /// The shard next to `(x, y)` in direction `dir`, wrapping round the torus: north of row 0
    /// is the last row, west of column 0 the last column. The arguments must be in range.
    pub fn neighbour(&self, x: u32, y: u32, dir: Direction) -> (u32, u32) {
        let (dx, dy) = dir.offset();
        (
            wrap(x, dx, self.width_in_shards),
            wrap(y, dy, self.height_in_shards),
        )
    }

    /// True when global cell `(gx, gy)` is alive at tick 0: in the soup
    /// (`splitmix64(seed ^ (gy*W + gx)) < floor(density * 2^64)`) or listed in `cells`.
    pub fn initially_alive(&self, gx: u64, gy: u64) -> bool {
        let threshold = DensityThreshold::new(self.density);
        threshold.admits(splitmix64(
            self.seed ^ cell_index(gx, gy, self.world_width()),
        )) || self.cells.contains(&[gx, gy])
    }

    /// The density as an exact threshold, for callers filling many cells.
    pub fn threshold(&self) -> DensityThreshold {
        DensityThreshold::new(self.density)
    }
}

/// Checks a pattern list against a `width` × `height` world.
///
/// # Errors
/// [`ParamsError::TooManyCells`] or the first [`ParamsError::CellOutOfRange`].
pub fn check_cells(cells: &[[u64; 2]], width: u64, height: u64) -> Result<(), ParamsError> {
    if cells.len() > MAX_PATTERN_CELLS {
        return Err(ParamsError::TooManyCells {
            count: cells.len(),
            max: MAX_PATTERN_CELLS,
        });
    }
    match cells
        .iter()
        .enumerate()
        .find(|(_, [x, y])| *x >= width || *y >= height)
    {
        Some((index, &[x, y])) => Err(ParamsError::CellOutOfRange {
            index,
            x,
            y,
            width,
            height,
        }),
        None => Ok(()),
    }
}

/// `gy*W + gx` with wrapping arithmetic (it cannot overflow in a validated world).
#[inline]
pub(crate) fn cell_index(gx: u64, gy: u64, world_width: u64) -> u64 {
    gy.wrapping_mul(world_width).wrapping_add(gx)
}

/// `v + d` modulo `n`, for `d` in `-1..=1` and `v < n`.
fn wrap(v: u32, d: i32, n: u32) -> u32 {
    match d {
        -1 if v == 0 => n - 1,
        -1 => v - 1,
        1 if v + 1 >= n => 0,
        1 => v + 1,
        _ => v,
    }
}

/// The state of a whole world at one tick, as a distributed run and the reference run report it.
///
/// `population` and `fingerprint` add up across shards ([`Summary::add_shard`]). In JSON the
/// fingerprint is a decimal string (a `u64` does not survive a JavaScript number); a plain
/// number is accepted on input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Summary {
    /// Ticks run since the initial state.
    pub tick: u64,
    /// Live cells.
    pub population: u64,
    /// Wrapping sum of `splitmix64(gy*W + gx)` over live cells.
    #[serde(with = "u64_string")]
    pub fingerprint: u64,
}

impl Summary {
    /// Adds one shard's figures.
    pub fn add_shard(&mut self, population: u64, fingerprint: u64) {
        self.population += population;
        self.fingerprint = self.fingerprint.wrapping_add(fingerprint);
    }
}

/// Serde for a `u64` written as a decimal string.
mod u64_string {
    use std::fmt;

    use serde::{de, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = u64;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a u64 as a decimal string or a number")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
                Ok(v)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
                u64::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
                v.parse()
                    .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_design() {
        let p = WorldParams::default();
        assert_eq!((p.world_width(), p.world_height()), (2000, 1250));
        assert_eq!(p.shard_count(), 40);
        p.validate().unwrap();
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"width_in_shards":8,"height_in_shards":5,"shard_width":250,
                "shard_height":250,"rule":"B3/S23","seed":42,"density":0.35})
        );
        let partial: WorldParams = serde_json::from_str(r#"{"seed":7,"rule":"b36/s23"}"#).unwrap();
        assert_eq!(partial.seed, 7);
        assert_eq!(partial.rule.to_string(), "B36/S23");
        assert_eq!(partial.shard_width, 250);
        assert!(serde_json::from_str::<WorldParams>(r#"{"rule":"B9/S"}"#).is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let mut p = WorldParams {
            shard_height: 0,
            ..WorldParams::default()
        };
        assert_eq!(
            p.validate(),
            Err(ParamsError::ZeroDimension {
                field: "shard_height"
            })
        );
        p.shard_height = 10_000;
        p.shard_width = 10_000;
        assert!(matches!(
            p.validate(),
            Err(ParamsError::ShardTooLarge { .. })
        ));
        p = WorldParams {
            density: 1.5,
            ..WorldParams::default()
        };
        assert!(p.validate().unwrap_err().to_string().contains("density"));
        p.density = f64::NAN;
        assert!(p.validate().is_err());
        p = WorldParams {
            width_in_shards: u32::MAX,
            height_in_shards: u32::MAX,
            shard_width: 4096,
            shard_height: 4096,
            ..WorldParams::default()
        };
        assert_eq!(p.validate(), Err(ParamsError::WorldTooLarge));
    }

    #[test]
    fn torus_neighbours() {
        let p = WorldParams {
            width_in_shards: 3,
            height_in_shards: 2,
            ..WorldParams::default()
        };
        assert_eq!(p.neighbour(0, 0, Direction::North), (0, 1));
        assert_eq!(p.neighbour(0, 0, Direction::West), (2, 0));
        assert_eq!(p.neighbour(0, 0, Direction::NorthWest), (2, 1));
        assert_eq!(p.neighbour(2, 1, Direction::SouthEast), (0, 0));
        assert_eq!(p.neighbour(1, 0, Direction::East), (2, 0));
        assert_eq!(p.neighbour(1, 0, Direction::South), (1, 1));
        let one = WorldParams {
            width_in_shards: 1,
            height_in_shards: 1,
            ..WorldParams::default()
        };
        for d in Direction::ALL {
            assert_eq!(one.neighbour(0, 0, d), (0, 0));
        }
    }

    #[test]
    fn initial_cells_follow_the_formula() {
        let p = WorldParams {
            width_in_shards: 2,
            height_in_shards: 1,
            shard_width: 3,
            shard_height: 2,
            seed: 42,
            density: 0.5,
            ..WorldParams::default()
        };
        // W = 6, so cell (1, 1) has index 7; 42 ^ 7 = 45 and splitmix64(45) = 0xF7E9F3F88CC04AD6,
        // which is above 2^63: dead at density 0.5, alive at density 1.
        assert_eq!(splitmix64(45), 0xF7E9_F3F8_8CC0_4AD6);
        assert!(!p.initially_alive(1, 1));
        let all = WorldParams {
            density: 1.0,
            ..p.clone()
        };
        assert!(all.initially_alive(1, 1));
        let none = WorldParams { density: 0.0, ..p };
        assert!(!none.initially_alive(0, 0));
    }

    #[test]
    fn pattern_cells_are_alive_in_the_shard_that_holds_them() {
        let p = WorldParams {
            width_in_shards: 2,
            height_in_shards: 2,
            shard_width: 4,
            shard_height: 3,
            density: 0.0,
            cells: vec![[5, 4], [0, 0]],
            ..WorldParams::default()
        };
        p.validate().unwrap();
        assert!(p.initially_alive(5, 4) && p.initially_alive(0, 0));
        assert!(!p.initially_alive(4, 4));
        // (5, 4) is cell (1, 1) of shard (1, 1).
        let shard = crate::sim::ShardGrid::initial(&p, 1, 1).unwrap();
        assert_eq!(shard.population(), 1);
        assert!(shard.get(1, 1));
        let plain = crate::sim::PlainGrid::initial(&p, 1, 1).unwrap();
        assert!(plain.get(1, 1) && plain.population() == 1);
        assert_eq!(
            crate::sim::ShardGrid::initial(&p, 1, 0)
                .unwrap()
                .population(),
            0
        );
    }

    #[test]
    fn pattern_cells_outside_the_world_are_refused() {
        let p = WorldParams {
            width_in_shards: 1,
            height_in_shards: 1,
            shard_width: 4,
            shard_height: 3,
            cells: vec![[1, 1], [4, 0]],
            ..WorldParams::default()
        };
        let e = p.validate().unwrap_err();
        assert_eq!(
            e.to_string(),
            "cells[1] = [4, 0] is outside the 4 × 3 world"
        );
        let many = WorldParams {
            cells: vec![[0, 0]; MAX_PATTERN_CELLS + 1],
            ..p
        };
        assert!(matches!(
            many.validate(),
            Err(ParamsError::TooManyCells { .. })
        ));
    }

    #[test]
    fn summary_json_has_string_fingerprint() {
        let mut s = Summary {
            tick: 3,
            ..Summary::default()
        };
        s.add_shard(2, u64::MAX);
        s.add_shard(1, 2);
        assert_eq!((s.population, s.fingerprint), (3, 1));
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"{"tick":3,"population":3,"fingerprint":"1"}"#);
        assert_eq!(serde_json::from_str::<Summary>(&json).unwrap(), s);
        let from_number: Summary =
            serde_json::from_str(r#"{"tick":3,"population":3,"fingerprint":1}"#).unwrap();
        assert_eq!(from_number, s);
    }
}
