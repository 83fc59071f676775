//! [`RunState`]: the arithmetic of a colony run, with no I/O. Backends report their tick,
//! their checkpoints (population and fingerprint at a tick) and the replicas they hold, each on
//! their own; from these it keeps the newest tick every backend has a checkpoint for and
//! every replica of has arrived (the colony's consistent figures, DESIGN §5 and §14), the
//! slowest backend's tick, ticks per second, and the run's first failure.
//!
//! A colony outlives its placements: a re-placement ([`RunState::replace`]) starts the
//! backends' progress over from the checkpoint they were set back to, and keeps the target.
//!
//! Time is a parameter, so the arithmetic is tested without clocks or sockets.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use codec::{Checkpoint, Held};
use tokio::time::Instant;

/// How far back the ticks/s samples reach (at least two are always kept).
pub(super) const RATE_WINDOW: Duration = Duration::from_secs(2);

/// One backend's progress: its tick, the checkpoints not yet folded into a consistent one,
/// and the replicas it holds.
#[derive(Debug)]
struct BackendProgress {
    tick: u64,
    /// `tick → (population, fingerprint)`.
    checkpoints: BTreeMap<u64, (u64, u64)>,
    /// `tick → replicas held`, as last reported.
    held: BTreeMap<u64, u32>,
    /// Replicas it must hold at a checkpoint before that checkpoint counts.
    expected: u32,
}

impl BackendProgress {
    fn at(tick: u64, expected: u32) -> Self {
        // Every backend starts at the same tick, so that tick is common to all.
        BackendProgress {
            tick,
            checkpoints: BTreeMap::from([(tick, (0, 0))]),
            held: BTreeMap::new(),
            expected,
        }
    }

    /// True if its replicas at `tick` are all in.
    fn replicated(&self, tick: u64) -> bool {
        self.expected == 0 || self.held.get(&tick).is_some_and(|n| *n >= self.expected)
    }
}

/// One backend's report, as [`RunState::absorb`] takes it.
#[derive(Debug, Default)]
pub(super) struct Report {
    /// Its tick.
    pub(super) tick: u64,
    /// Figures at checkpoints it had not reported.
    pub(super) checkpoints: Vec<Checkpoint>,
    /// The replicas it holds, by checkpoint tick.
    pub(super) held: Vec<Held>,
}

impl Report {
    /// A report of `tick` with `checkpoints` and no replicas.
    #[cfg(test)]
    pub(super) fn of(tick: u64, checkpoints: Vec<Checkpoint>) -> Self {
        Report {
            tick,
            checkpoints,
            held: Vec::new(),
        }
    }
}

/// What a colony's run knows about its backends' progress.
#[derive(Debug)]
pub(super) struct RunState {
    /// The tick every backend was last told to run to.
    pub(super) target: u64,
    /// True after a pause (until the next run).
    pub(super) paused: bool,
    /// True while shards are being placed again.
    pub(super) recovering: bool,
    /// The placement the backends report in.
    epoch: u64,
    failed: Option<String>,
    backends: HashMap<String, BackendProgress>,
    consistent: Checkpoint,
    /// `(when, slowest backend's tick)` over the last [`RATE_WINDOW`], for ticks/s.
    samples: VecDeque<(Instant, u64)>,
}

impl RunState {
    /// A run of `backends` (each with the replicas it must hold at a checkpoint) in
    /// placement 0, at the tick of `initial`, whose figures there are `initial`.
    pub(super) fn new(
        backends: impl IntoIterator<Item = (String, u32)>,
        initial: Checkpoint,
    ) -> Self {
        let mut state = RunState {
            target: initial.tick,
            paused: false,
            recovering: false,
            epoch: 0,
            failed: None,
            backends: HashMap::new(),
            consistent: initial,
            samples: VecDeque::new(),
        };
        state.replace(0, backends, initial);
        state
    }

    /// A new placement `epoch` of `backends`, every one set back to the checkpoint of
    /// `consistent`: their progress starts over from there. The target stays.
    pub(super) fn replace(
        &mut self,
        epoch: u64,
        backends: impl IntoIterator<Item = (String, u32)>,
        consistent: Checkpoint,
    ) {
        self.epoch = epoch;
        self.backends = backends
            .into_iter()
            .map(|(id, expected)| (id, BackendProgress::at(consistent.tick, expected)))
            .collect();
        self.consistent = consistent;
        self.samples.clear();
    }

    /// The placement backends report in.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Takes in one backend's report in placement `epoch`, received at `now`: its tick, new
    /// checkpoints and the replicas it holds. The consistent checkpoint moves to the newest
    /// tick every backend has one for and every replica of has arrived at (never back), and
    /// checkpoints older than it are dropped. A report of another placement is ignored.
    pub(super) fn absorb(&mut self, id: &str, epoch: u64, report: Report, now: Instant) {
        if epoch != self.epoch {
            return;
        }
        if let Some(p) = self.backends.get_mut(id) {
            p.tick = report.tick;
            for c in report.checkpoints {
                p.checkpoints.insert(c.tick, (c.population, c.fingerprint));
            }
            p.held = report.held.iter().map(|h| (h.tick, h.replicas)).collect();
        }
        // No tick past the oldest backend's newest checkpoint can be common to all.
        let newest = self
            .backends
            .values()
            .filter_map(|p| p.checkpoints.keys().next_back().copied())
            .min()
            .unwrap_or(0);
        let consistent = (self.consistent.tick..=newest).rev().find_map(|t| {
            let mut sum = Checkpoint {
                tick: t,
                population: 0,
                fingerprint: 0,
            };
            for p in self.backends.values() {
                let (pop, fp) = p.checkpoints.get(&t)?;
                if t > self.consistent.tick && !p.replicated(t) {
                    return None;
                }
                sum.population += pop;
                sum.fingerprint = sum.fingerprint.wrapping_add(*fp);
            }
            Some(sum)
        });
        if let Some(c) = consistent {
            if c.tick > self.consistent.tick {
                self.consistent = c;
                for p in self.backends.values_mut() {
                    p.checkpoints = p.checkpoints.split_off(&c.tick);
                }
            }
        }
        let slowest = self.slowest();
        self.samples.push_back((now, slowest));
        while self.samples.len() > 2
            && self
                .samples
                .front()
                .is_some_and(|(t, _)| now.saturating_duration_since(*t) > RATE_WINDOW)
        {
            self.samples.pop_front();
        }
    }

    /// The newest figures every backend agrees on.
    pub(super) fn consistent(&self) -> Checkpoint {
        self.consistent
    }

    /// The furthest backend's tick.
    pub(super) fn furthest(&self) -> u64 {
        self.backends.values().map(|p| p.tick).max().unwrap_or(0)
    }

    /// The slowest backend's tick.
    pub(super) fn slowest(&self) -> u64 {
        self.backends.values().map(|p| p.tick).min().unwrap_or(0)
    }

    /// Records why the run failed; only the first reason counts (later failures are its
    /// consequences). True if this was the first.
    pub(super) fn fail(&mut self, reason: String) -> bool {
        if self.failed.is_some() {
            return false;
        }
        self.failed = Some(reason);
        true
    }

    /// Why the run failed, if it did.
    pub(super) fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// `failed`, `recovering` (shards are being placed again), `running` (a backend is
    /// short of the target), `paused` or `idle`.
    pub(super) fn state_name(&self) -> &'static str {
        if self.failed.is_some() {
            "failed"
        } else if self.recovering {
            "recovering"
        } else if self.slowest() < self.target {
            "running"
        } else if self.paused {
            "paused"
        } else {
            "idle"
        }
    }

    /// The slowest backend's speed over the sample window, to one decimal; 0 unless running.
    pub(super) fn ticks_per_second(&self) -> f64 {
        let rate = match (self.samples.front(), self.samples.back()) {
            (Some((t0, k0)), Some((t1, k1))) if t1 > t0 && self.state_name() == "running" => {
                k1.saturating_sub(*k0) as f64 / (*t1 - *t0).as_secs_f64()
            }
            _ => 0.0,
        };
        (rate * 10.0).round() / 10.0
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn checkpoint(tick: u64, population: u64, fingerprint: u64) -> Checkpoint {
        Checkpoint {
            tick,
            population,
            fingerprint,
        }
    }

    fn two() -> RunState {
        RunState::new(
            [("a".to_owned(), 0), ("b".to_owned(), 0)],
            checkpoint(0, 7, 9),
        )
    }

    #[test]
    fn the_consistent_checkpoint_is_the_newest_tick_every_backend_has() {
        let now = Instant::now();
        let mut s = two();
        assert_eq!(s.consistent(), checkpoint(0, 7, 9));
        s.absorb(
            "a",
            0,
            Report::of(20, vec![checkpoint(10, 3, 5), checkpoint(20, 4, 6)]),
            now,
        );
        // b has nothing past 0 yet: still the initial figures.
        assert_eq!(s.consistent(), checkpoint(0, 7, 9));
        s.absorb(
            "b",
            0,
            Report::of(10, vec![checkpoint(10, 1, u64::MAX)]),
            now,
        );
        // Summed, fingerprints wrapping.
        assert_eq!(s.consistent(), checkpoint(10, 4, 4));
        s.absorb(
            "b",
            0,
            Report::of(30, vec![checkpoint(20, 2, 2), checkpoint(30, 9, 9)]),
            now,
        );
        assert_eq!(s.consistent(), checkpoint(20, 6, 8));
        assert_eq!(s.slowest(), 20);
        // A report from a backend the run does not know changes nothing.
        s.absorb(
            "stranger",
            0,
            Report::of(99, vec![checkpoint(30, 1, 1)]),
            now,
        );
        assert_eq!(s.consistent(), checkpoint(20, 6, 8));
    }

    fn held(tick: u64, replicas: u32) -> Held {
        Held { tick, replicas }
    }

    #[test]
    fn a_checkpoint_counts_only_once_every_replica_has_arrived() {
        let now = Instant::now();
        // Each backend keeps two replicas.
        let mut s = RunState::new(
            [("a".to_owned(), 2), ("b".to_owned(), 2)],
            checkpoint(0, 7, 9),
        );
        let report = |tick, c: Vec<Checkpoint>, h: Vec<Held>| Report {
            tick,
            checkpoints: c,
            held: h,
        };
        s.absorb(
            "a",
            0,
            report(10, vec![checkpoint(10, 1, 1)], vec![held(10, 2)]),
            now,
        );
        s.absorb(
            "b",
            0,
            report(10, vec![checkpoint(10, 2, 2)], vec![held(10, 1)]),
            now,
        );
        assert_eq!(s.consistent().tick, 0, "b holds one replica of two");
        s.absorb("b", 0, report(10, Vec::new(), vec![held(10, 2)]), now);
        assert_eq!(s.consistent(), checkpoint(10, 3, 3));
        // A report of an older placement changes nothing.
        s.absorb(
            "a",
            7,
            report(20, vec![checkpoint(20, 1, 1)], vec![held(20, 2)]),
            now,
        );
        assert_eq!(s.backends["a"].tick, 10);
    }

    #[test]
    fn a_new_placement_starts_over_from_its_checkpoint_and_keeps_the_target() {
        let now = Instant::now();
        let mut s = two();
        s.target = 500;
        s.absorb("a", 0, Report::of(40, vec![checkpoint(40, 1, 1)]), now);
        s.absorb("b", 0, Report::of(40, vec![checkpoint(40, 2, 2)]), now);
        assert_eq!(s.consistent().tick, 40);
        s.recovering = true;
        assert_eq!(s.state_name(), "recovering");
        s.replace(1, [("b".to_owned(), 0)], checkpoint(40, 3, 3));
        s.recovering = false;
        assert_eq!((s.epoch(), s.target, s.slowest()), (1, 500, 40));
        assert_eq!(s.state_name(), "running");
        s.absorb("b", 1, Report::of(100, vec![checkpoint(100, 5, 5)]), now);
        assert_eq!(s.consistent(), checkpoint(100, 5, 5));
    }

    #[test]
    fn only_the_first_failure_is_kept_and_it_wins_over_every_other_state() {
        let mut s = two();
        s.target = 10;
        assert_eq!(s.state_name(), "running");
        assert!(s.fail("a stalled".into()));
        assert!(!s.fail("b stopped answering".into()));
        assert_eq!(s.failed(), Some("a stalled"));
        assert_eq!(s.state_name(), "failed");
        assert_eq!(s.ticks_per_second(), 0.0);
    }

    #[test]
    fn state_names_follow_the_slowest_backend() {
        let now = Instant::now();
        let mut s = two();
        assert_eq!(s.state_name(), "idle");
        s.target = 5;
        s.absorb("a", 0, Report::of(5, Vec::new()), now);
        assert_eq!(s.state_name(), "running", "b is still at 0");
        s.absorb("b", 0, Report::of(5, Vec::new()), now);
        assert_eq!(s.state_name(), "idle");
        s.paused = true;
        assert_eq!(s.state_name(), "paused");
        // A pause moves the target to where the furthest backend stops: until every backend
        // is there, the colony is still running.
        s.target = 6;
        assert_eq!(s.state_name(), "running");
    }

    #[test]
    fn ticks_per_second_forgets_samples_older_than_the_window() {
        let start = Instant::now();
        let mut s = RunState::new([("a".to_owned(), 0)], checkpoint(0, 0, 0));
        s.target = u64::MAX;
        let at = |ms| start + Duration::from_millis(ms);
        // 100 ticks/s for 3 s, then 10 ticks/s for 3 s, a sample every 500 ms.
        let mut tick = 0;
        for i in 0..=12u64 {
            if i > 0 {
                tick += if i <= 6 { 50 } else { 5 };
            }
            s.absorb("a", 0, Report::of(tick, Vec::new()), at(i * 500));
            if i == 6 {
                assert_eq!(s.ticks_per_second(), 100.0);
            }
        }
        assert_eq!(s.ticks_per_second(), 10.0);
        // Samples far apart: the last two are kept, whatever their age.
        s.absorb("a", 0, Report::of(tick + 30, Vec::new()), at(6000 + 10_000));
        assert_eq!(s.ticks_per_second(), 3.0);
    }

    #[test]
    fn ticks_per_second_averages_over_the_window() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let mut s = RunState::new([("a".to_owned(), 0)], checkpoint(0, 0, 0));
        s.target = 1000;
        // A burst of 100 ticks, then nothing for 1.5 s: 100 ticks in 2 s.
        for (ms, tick) in [(0, 0), (500, 100), (1000, 100), (1500, 100), (2000, 100)] {
            s.absorb("a", 0, Report::of(tick, Vec::new()), at(ms));
        }
        assert_eq!(s.ticks_per_second(), 50.0);
        // Reached the target: no longer running, so no speed.
        s.absorb("a", 0, Report::of(1000, Vec::new()), at(2100));
        assert_eq!(s.state_name(), "idle");
        assert_eq!(s.ticks_per_second(), 0.0);
    }

    /// Per backend, its checkpoints (`tick → (population, fingerprint)`) and the sizes of the
    /// reports that carry them.
    type Reports = Vec<(BTreeMap<u64, (u64, u64)>, Vec<usize>)>;

    /// Per backend, its checkpoint ticks (1..=40) with figures, and how its reports are cut.
    fn backends() -> impl Strategy<Value = Reports> {
        let one = (
            prop::collection::btree_map(1u64..=40, (0u64..1_000_000, any::<u64>()), 0..12),
            prop::collection::vec(1usize..4, 12),
        );
        prop::collection::vec(one, 1..4)
    }

    proptest! {
        /// However the backends' reports interleave, the consistent checkpoint never moves
        /// back, and ends at the newest tick all backends have, with their figures summed.
        #[test]
        fn the_consistent_checkpoint_is_the_newest_common_tick_whatever_the_order(
            backends in backends(),
            order in prop::collection::vec(0usize..4, 0..40),
        ) {
            let now = Instant::now();
            let initial = checkpoint(0, 11, 13);
            let ids: Vec<String> = (0..backends.len()).map(|i| format!("b{i}")).collect();
            let mut s = RunState::new(ids.iter().map(|id| (id.clone(), 0)), initial);
            // Each backend's reports: its checkpoints in tick order, cut into chunks.
            let mut pending: Vec<VecDeque<Vec<Checkpoint>>> = backends
                .iter()
                .map(|(points, cuts)| {
                    let mut all: Vec<Checkpoint> = points
                        .iter()
                        .map(|(&t, &(p, f))| checkpoint(t, p, f))
                        .collect();
                    let mut chunks = VecDeque::new();
                    for &n in cuts {
                        let rest = all.split_off(n.min(all.len()));
                        chunks.push_back(std::mem::replace(&mut all, rest));
                    }
                    chunks.push_back(all);
                    chunks
                })
                .collect();
            let deliver = |s: &mut RunState, i: usize, chunk: Vec<Checkpoint>| {
                let before = s.consistent().tick;
                let tick = chunk.last().map_or(0, |c| c.tick);
                s.absorb(&ids[i], 0, Report::of(tick, chunk), now);
                prop_assert!(s.consistent().tick >= before);
                Ok(())
            };
            for i in order.into_iter().filter(|&i| i < ids.len()) {
                if let Some(chunk) = pending[i].pop_front() {
                    deliver(&mut s, i, chunk)?;
                }
            }
            for (i, chunks) in pending.iter_mut().enumerate() {
                while let Some(chunk) = chunks.pop_front() {
                    deliver(&mut s, i, chunk)?;
                }
            }

            let common = backends
                .iter()
                .map(|(points, _)| points.keys().copied().collect::<BTreeSet<u64>>())
                .reduce(|a, b| &a & &b)
                .unwrap_or_default();
            let expected = match common.last() {
                None => initial,
                Some(&t) => backends.iter().fold(checkpoint(t, 0, 0), |sum, (points, _)| {
                    let (p, f) = points[&t];
                    checkpoint(t, sum.population + p, sum.fingerprint.wrapping_add(f))
                }),
            };
            prop_assert_eq!(s.consistent(), expected);
        }

        /// A backend running at a steady speed is reported at that speed, however its
        /// reports are spaced.
        #[test]
        fn a_steady_speed_is_reported_exactly(
            tens_per_second in 1u64..500,
            gaps in prop::collection::vec(1u64..30, 2..40),
        ) {
            let speed = tens_per_second * 10;
            let start = Instant::now();
            let mut s = RunState::new([("a".to_owned(), 0)], checkpoint(0, 0, 0));
            s.target = u64::MAX;
            let mut ms = 0;
            for gap in gaps {
                // Multiples of 100 ms, so every tick count is whole.
                ms += gap * 100;
                s.absorb("a", 0, Report::of(speed * ms / 1000, Vec::new()), start + Duration::from_millis(ms));
            }
            prop_assert_eq!(s.ticks_per_second(), speed as f64);
        }
    }
}
