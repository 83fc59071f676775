//! How the ticks of a run are cut into batches: the one rule every backend must apply alike.
//!
//! Borders are `d` cells deep (the colony's halo depth), so one border exchange covers a batch
//! of up to `d` ticks. Every backend must cut the ticks into the same batches, or one would
//! wait for a border its neighbour never sends. A batch starting at `t` ends at the first of:
//! `t + d`, the next multiple of `checkpoint_every`, the target, the next tick a run stops at.
//! Those are the same on every backend: the coordinator sends every backend the same runs in
//! the same order, and a pause stops each backend at the end of the batch it is in, which is a
//! batch end everywhere.
//!
//! This module is pure arithmetic, kept apart from the engine's state and its loop so that the
//! rule can be read, and tested, on its own.

use std::collections::BTreeSet;

/// What the coordinator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Tick to stop at.
    pub until: u64,
    /// Record figures at ticks divisible by this (and at `until`).
    pub checkpoint_every: u64,
}

/// Ticks in the batch starting at `t`: at most `depth`, never past a checkpoint tick (a
/// multiple of `target.checkpoint_every`), `target.until` or the next tick in `stops`. At least
/// 1, so a caller with `t < target.until` always moves on.
pub(crate) fn batch_len(t: u64, target: &Target, depth: u32, stops: &BTreeSet<u64>) -> u64 {
    let every = target.checkpoint_every.max(1);
    let mut len = u64::from(depth)
        .min(every - t % every)
        .min(target.until.saturating_sub(t));
    if let Some(&stop) = stops.range(t + 1..).next() {
        len = len.min(stop - t);
    }
    len.max(1)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    /// A start tick strictly before the target, the target, a depth and a stop set.
    fn a_cut() -> impl Strategy<Value = (u64, Target, u32, BTreeSet<u64>)> {
        (
            0u64..2_000,
            1u64..500,
            1u64..64,
            0u32..12,
            proptest::collection::btree_set(0u64..2_600, 0..6),
        )
            .prop_map(|(t, ahead, every, depth, stops)| {
                let target = Target {
                    until: t + ahead,
                    checkpoint_every: every,
                };
                (t, target, depth, stops)
            })
    }

    /// Cuts from 0 until `until`, as one backend would with one run; the batch ends in order.
    fn cut_all(target: &Target, depth: u32, stops: &BTreeSet<u64>) -> Vec<u64> {
        let mut ends = Vec::new();
        let mut t = 0;
        while t < target.until {
            let len = batch_len(t, target, depth, stops);
            assert!(len >= 1, "an empty batch at {t} would never end");
            t += len;
            ends.push(t);
        }
        ends
    }

    /// Runs one backend through a series of runs (rising `untils`, one `every`), as the
    /// engine does: run `i + 1` is seen at the first batch start at or after tick
    /// `arrivals[i]`, which lies between where the backend was when run `i` arrived and run
    /// `i`'s target (the coordinator never sends a run before the one ahead of it). Every
    /// run's target becomes a stop; a batch end drops the stops it reached. Returns the
    /// batch ends.
    fn cut_runs(untils: &[u64], every: u64, depth: u32, arrivals: &[u64]) -> Vec<u64> {
        let mut stops = BTreeSet::new();
        let mut ends = Vec::new();
        let mut t = 0;
        let mut seen = 0;
        let mut target = Target {
            until: 0,
            checkpoint_every: every,
        };
        loop {
            // Runs that have arrived by this batch start, in order; a backend at its target
            // waits for the next run whatever its arrival point.
            while seen < untils.len() && (seen == 0 || t >= arrivals[seen - 1] || t >= target.until)
            {
                target.until = untils[seen];
                stops.insert(untils[seen]);
                seen += 1;
            }
            if t >= target.until {
                return ends;
            }
            let len = batch_len(t, &target, depth, &stops);
            assert!(len >= 1, "an empty batch at {t} would never end");
            t += len;
            stops.retain(|&s| s > t);
            ends.push(t);
        }
    }

    /// Rising targets, and for each run after the first a fraction of the way from the
    /// previous arrival point to the previous target at which it arrives, for two backends.
    fn runs() -> impl Strategy<Value = (Vec<u64>, u64, u32, Vec<u64>, Vec<u64>)> {
        (
            proptest::collection::vec(1u64..80, 1..6),
            1u64..40,
            1u32..10,
            proptest::collection::vec((0u64..=100, 0u64..=100), 5),
        )
            .prop_map(|(steps, every, depth, fractions)| {
                let untils: Vec<u64> = steps
                    .iter()
                    .scan(0, |u, s| {
                        *u += s;
                        Some(*u)
                    })
                    .collect();
                let arrivals = |pick: fn(&(u64, u64)) -> u64| {
                    let mut from = 0;
                    untils
                        .iter()
                        .zip(&fractions)
                        .map(|(&until, f)| {
                            from += (until - from) * pick(f) / 100;
                            from
                        })
                        .collect::<Vec<u64>>()
                };
                let (early, late) = (arrivals(|f| f.0), arrivals(|f| f.1));
                (untils, every, depth, early, late)
            })
    }

    proptest! {
        #[test]
        fn a_batch_is_at_least_one_tick((t, target, depth, stops) in a_cut()) {
            prop_assert!(batch_len(t, &target, depth, &stops) >= 1);
        }

        #[test]
        fn a_batch_is_at_most_depth_ticks((t, target, depth, stops) in a_cut()) {
            prop_assume!(depth >= 1);
            prop_assert!(batch_len(t, &target, depth, &stops) <= u64::from(depth));
        }

        #[test]
        fn a_batch_never_passes_a_checkpoint_tick((t, target, depth, stops) in a_cut()) {
            let end = t + batch_len(t, &target, depth, &stops);
            let every = target.checkpoint_every;
            // The first checkpoint tick after t.
            let next = (t / every + 1) * every;
            prop_assert!(end <= next, "batch {t}..{end} passes checkpoint tick {next}");
        }

        #[test]
        fn a_batch_never_passes_the_target((t, target, depth, stops) in a_cut()) {
            let end = t + batch_len(t, &target, depth, &stops);
            prop_assert!(end <= target.until, "batch {t}..{end} passes target {}", target.until);
        }

        #[test]
        fn a_batch_never_passes_the_next_stop((t, target, depth, stops) in a_cut()) {
            let end = t + batch_len(t, &target, depth, &stops);
            if let Some(&stop) = stops.range(t + 1..).next() {
                prop_assert!(end <= stop, "batch {t}..{end} passes stop {stop}");
            }
        }

        #[test]
        fn cutting_a_run_visits_every_checkpoint_tick_and_stop(
            (_, target, depth, stops) in a_cut(),
        ) {
            let ends: BTreeSet<u64> = cut_all(&target, depth, &stops).into_iter().collect();
            prop_assert!(ends.contains(&target.until));
            let every = target.checkpoint_every;
            for tick in (every..target.until).step_by(usize::try_from(every).unwrap_or(1)) {
                prop_assert!(ends.contains(&tick), "checkpoint tick {tick} skipped: {ends:?}");
            }
            for &stop in stops.range(1..target.until) {
                prop_assert!(ends.contains(&stop), "stop {stop} skipped: {ends:?}");
            }
        }

        #[test]
        fn backends_that_see_the_same_runs_at_different_ticks_cut_the_same_batches(
            (untils, every, depth, early, late) in runs(),
        ) {
            let a = cut_runs(&untils, every, depth, &early);
            let b = cut_runs(&untils, every, depth, &late);
            prop_assert_eq!(&a, &b);
            // And both stop at every run's target.
            for until in &untils {
                prop_assert!(a.contains(until), "target {until} skipped: {a:?}");
            }
        }
    }
}
