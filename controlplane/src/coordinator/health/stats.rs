//! [`HealthStats`]: the failure detector's counters for `/metrics`, kept with atomics so a
//! heartbeat adds to them without a lock or an allocation: ONE heartbeat inter-arrival
//! histogram for the whole cluster (a per-node one would grow the series with the cluster),
//! and node state transitions by from/to.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use dataplane::{Histogram, HistogramSnapshot};

use super::node_state::NodeState;

/// Upper bounds (seconds) of the inter-arrival histogram: heartbeats are sent every 10 ms to
/// a few seconds, and a gap past `down_after` lands in the last buckets.
pub const INTERARRIVAL_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
];

/// Every state in label order.
pub const STATES: [NodeState; 4] = [
    NodeState::Active,
    NodeState::Stale,
    NodeState::Down,
    NodeState::Left,
];

/// The failure detector's counters.
#[derive(Debug)]
pub struct HealthStats {
    interarrival: Histogram,
    /// `[from][to]`; `from` 0 is "first seen" (no state before), then [`STATES`] from 1.
    transitions: [[AtomicU64; 4]; 5],
    /// Milliseconds the sweeper ran late and credited to every node.
    stalled_ms: AtomicU64,
}

impl Default for HealthStats {
    fn default() -> Self {
        HealthStats {
            interarrival: Histogram::new(&INTERARRIVAL_BUCKETS),
            transitions: Default::default(),
            stalled_ms: AtomicU64::new(0),
        }
    }
}

fn index(state: NodeState) -> usize {
    match state {
        NodeState::Active => 0,
        NodeState::Stale => 1,
        NodeState::Down => 2,
        NodeState::Left => 3,
    }
}

impl HealthStats {
    /// Records the gap between two heartbeats of one node.
    pub fn heartbeat_gap(&self, gap: Duration) {
        self.interarrival.observe(gap);
    }

    /// Counts one move from `from` (`None`: first seen) to `to`.
    pub fn transition(&self, from: Option<NodeState>, to: NodeState) {
        let row = from.map_or(0, |s| index(s) + 1);
        if let Some(c) = self.transitions.get(row).and_then(|r| r.get(index(to))) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// Counts a sweep that ran `late`: silence the detector forgave every node because it
    /// was not running to hear them.
    pub fn stall(&self, late: Duration) {
        let ms = u64::try_from(late.as_millis()).unwrap_or(u64::MAX);
        self.stalled_ms.fetch_add(ms, Relaxed);
    }

    /// Seconds of stalls forgiven so far (the sweeper's own, or the heartbeat thread's).
    pub fn stalled_seconds(&self) -> f64 {
        self.stalled_ms.load(Relaxed) as f64 / 1000.0
    }

    /// The inter-arrival histogram.
    pub fn interarrival(&self) -> HistogramSnapshot {
        self.interarrival.snapshot()
    }

    /// Every `(from, to, count)` with a non-zero count; `from` is `"NONE"` for first seen.
    pub fn transitions(&self) -> Vec<(&'static str, &'static str, u64)> {
        let froms = std::iter::once("NONE").chain(STATES.iter().map(|s| s.as_str()));
        froms
            .zip(self.transitions.iter())
            .flat_map(|(from, row)| {
                STATES
                    .iter()
                    .zip(row.iter())
                    .map(move |(to, c)| (from, to.as_str(), c.load(Relaxed)))
            })
            .filter(|(_, _, n)| *n > 0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_are_counted_by_from_and_to() {
        let s = HealthStats::default();
        s.transition(None, NodeState::Active);
        s.transition(Some(NodeState::Active), NodeState::Stale);
        s.transition(Some(NodeState::Active), NodeState::Stale);
        s.transition(Some(NodeState::Down), NodeState::Active);
        assert_eq!(
            s.transitions(),
            vec![
                ("NONE", "ACTIVE", 1),
                ("ACTIVE", "STALE", 2),
                ("DOWN", "ACTIVE", 1)
            ]
        );
    }

    #[test]
    fn gaps_go_to_one_histogram() {
        let s = HealthStats::default();
        s.heartbeat_gap(Duration::from_millis(100));
        s.heartbeat_gap(Duration::from_millis(120));
        let h = s.interarrival();
        assert_eq!(h.count, 2);
        assert!((h.sum_seconds - 0.22).abs() < 1e-9);
        let at = |bound: f64| h.buckets.iter().find(|(b, _)| *b == bound).map(|(_, n)| *n);
        assert_eq!(at(0.1), Some(1));
        assert_eq!(at(0.25), Some(1));
    }
}
