//! The world's only source of randomness: [`splitmix64`] and the density threshold built on it.
//!
//! Everything here is a pure function of its arguments, so a cell's initial state depends on its
//! global coordinates and the seed alone, never on which shard or backend computes it.

/// SplitMix64's output function (DESIGN §6), with wrapping `u64` arithmetic.
///
/// ```
/// assert_eq!(shared::sim::splitmix64(0), 0xE220_A839_7B1D_CDAF);
/// ```
#[inline]
pub fn splitmix64(z: u64) -> u64 {
    let mut z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The initial-density cut-off `floor(density * 2^64)`, held exactly.
///
/// A cell is alive when its hash is below the threshold. `2^64` itself does not fit a `u64`, so
/// density 1.0 is its own case ([`DensityThreshold::All`]) rather than a saturated value that
/// would wrongly leave the cells hashing to `u64::MAX` dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DensityThreshold {
    /// Density ≥ 1: every cell is alive.
    All,
    /// Cells whose hash is strictly below this value are alive (0 means none).
    Below(u64),
}

impl DensityThreshold {
    /// The threshold for `density`. Values outside `[0, 1]` are clamped and NaN counts as 0;
    /// [`crate::sim::WorldParams::validate`] rejects them before they get here.
    pub fn new(density: f64) -> Self {
        if density.is_nan() || density <= 0.0 {
            return DensityThreshold::Below(0);
        }
        if density >= 1.0 {
            return DensityThreshold::All;
        }
        // Scaling by a power of two is exact in binary floating point, and density < 1 means
        // density ≤ 1 - 2^-53, so the product is ≤ 2^64 - 2^11 and fits; `as` truncates toward
        // zero, which is floor for a positive value.
        DensityThreshold::Below((density * 18_446_744_073_709_551_616.0) as u64)
    }

    /// True when a cell whose hash is `h` starts alive.
    #[inline]
    pub fn admits(self, h: u64) -> bool {
        match self {
            DensityThreshold::All => true,
            DensityThreshold::Below(t) => h < t,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_known_values() {
        // Computed independently with Python's arbitrary-precision integers masked to 64 bits.
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(1), 0x910A_2DEC_8902_5CC1);
        assert_eq!(splitmix64(42), 0xBDD7_3226_2FEB_6E95);
        assert_eq!(splitmix64(u64::MAX), 0xE4D9_7177_1B65_2C20);
    }

    #[test]
    fn thresholds() {
        assert_eq!(DensityThreshold::new(0.0), DensityThreshold::Below(0));
        assert_eq!(DensityThreshold::new(-1.0), DensityThreshold::Below(0));
        assert_eq!(DensityThreshold::new(f64::NAN), DensityThreshold::Below(0));
        assert_eq!(DensityThreshold::new(1.0), DensityThreshold::All);
        assert_eq!(DensityThreshold::new(0.5), DensityThreshold::Below(1 << 63));
        assert_eq!(
            DensityThreshold::new(0.25),
            DensityThreshold::Below(1 << 62)
        );
        // The largest density below 1 still fits and stays below 2^64.
        let below_one = 1.0 - f64::EPSILON / 2.0;
        assert_eq!(
            DensityThreshold::new(below_one),
            DensityThreshold::Below(u64::MAX - (1 << 11) + 1)
        );
        assert!(DensityThreshold::All.admits(u64::MAX));
        assert!(!DensityThreshold::Below(0).admits(0));
        assert!(DensityThreshold::Below(1).admits(0));
        assert!(!DensityThreshold::Below(1).admits(1));
    }

    #[test]
    fn density_035_is_floor_of_product() {
        // 0.35 * 2^64 = 6456360425798343065.6 in exact arithmetic, but 0.35 as an f64 is
        // 0.34999999999999997779553950749686919152736663818359375, so the exact product of the
        // f64 with 2^64 is 6456360425798342656 (an integer already).
        assert_eq!(
            DensityThreshold::new(0.35),
            DensityThreshold::Below(6_456_360_425_798_342_656)
        );
    }
}
