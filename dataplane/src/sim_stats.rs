//! [`SimStats`]: what a backend's simulation did (ticks, batch durations, time waiting for
//! borders, border traffic per peer, checkpoints, recoveries), counted with atomics on the
//! tick loop's path and read by the management plane's `/metrics` at scrape time. Also the
//! lock-free [`Histogram`] those counters and the control plane's hot paths share.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

/// Upper bounds (seconds) of the latency histograms: 100 µs to 10 s, roughly ×2.5 apart, so
/// both a loopback HTTP call and a slow tick batch land in a bucket that tells them apart.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5, 10.0,
];

/// A histogram of durations with fixed buckets, observed with three relaxed atomic adds and
/// no lock or allocation, so it can sit on a per-tick or per-heartbeat path.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One count per bound, plus one for everything above the last bound.
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

/// A copy of a [`Histogram`]: per-bucket (not cumulative) counts, the last one above every
/// bound.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, observations in this bucket only)`; the last bound is
    /// `f64::MAX`, the `+Inf` bucket.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of the observations, in seconds.
    pub sum_seconds: f64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending, in seconds).
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// An empty histogram over [`LATENCY_BUCKETS`].
    pub fn latency() -> Self {
        Histogram::new(&LATENCY_BUCKETS)
    }

    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self.bounds.partition_point(|b| *b < secs);
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Relaxed);
        }
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Relaxed);
    }

    /// A copy of the counts (buckets read one by one: a scrape during an observation may be
    /// off by that one, which Prometheus tolerates).
    pub fn snapshot(&self) -> HistogramSnapshot {
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(self.counts.iter().map(|c| c.load(Relaxed)))
            .collect();
        HistogramSnapshot {
            count: buckets.iter().map(|(_, n)| n).sum(),
            buckets,
            sum_seconds: Duration::from_nanos(self.sum_nanos.load(Relaxed)).as_secs_f64(),
        }
    }
}

/// Border traffic with one peer backend. Bytes are the border cells' bytes, as sent in
/// `HALO` messages (not the framing around them).
#[derive(Debug, Default)]
pub struct PeerTraffic {
    /// Border cell bytes sent to the peer.
    pub bytes_sent: AtomicU64,
    /// `HALO` messages sent to the peer.
    pub frames_sent: AtomicU64,
    /// Border cell bytes received from the peer.
    pub bytes_received: AtomicU64,
    /// `HALO` messages received from the peer.
    pub frames_received: AtomicU64,
}

impl PeerTraffic {
    /// Counts one `HALO` message of `bytes` border bytes sent.
    pub fn sent(&self, bytes: u64) {
        self.frames_sent.fetch_add(1, Relaxed);
        self.bytes_sent.fetch_add(bytes, Relaxed);
    }

    /// Counts one `HALO` message of `bytes` border bytes received.
    pub fn received(&self, bytes: u64) {
        self.frames_received.fetch_add(1, Relaxed);
        self.bytes_received.fetch_add(bytes, Relaxed);
    }
}

/// The simulation counters of one backend, shared by every placement of every colony it runs.
#[derive(Debug)]
pub struct SimStats {
    /// Ticks completed (a batch of `n` ticks counts `n`).
    pub ticks: AtomicU64,
    /// Duration of each batch: from its borders being taken to its shards being stepped.
    pub batch_seconds: Histogram,
    /// Time spent waiting for neighbours' borders, in nanoseconds.
    pub border_wait_nanos: AtomicU64,
    /// Checkpoints kept (own copies taken and sent to the replica holders).
    pub checkpoints: AtomicU64,
    /// Re-placements taken after a fence (the colony set back to a checkpoint here).
    pub recoveries: AtomicU64,
    /// Border traffic by peer instance id. The lock is taken once per peer per tick-loop
    /// start (sends) or per received `HALO` (to find the sender's counters), never to count.
    peers: Mutex<BTreeMap<String, Arc<PeerTraffic>>>,
}

impl Default for SimStats {
    fn default() -> Self {
        SimStats {
            ticks: AtomicU64::new(0),
            batch_seconds: Histogram::latency(),
            border_wait_nanos: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            recoveries: AtomicU64::new(0),
            peers: Mutex::new(BTreeMap::new()),
        }
    }
}

impl SimStats {
    /// The traffic counters of `peer`, created on first use.
    pub fn peer(&self, peer: &str) -> Arc<PeerTraffic> {
        let mut peers = self.peers.lock();
        if let Some(t) = peers.get(peer) {
            return t.clone();
        }
        let t = Arc::new(PeerTraffic::default());
        peers.insert(peer.to_owned(), t.clone());
        t
    }

    /// Every peer's counters, by instance id.
    pub fn peers(&self) -> Vec<(String, Arc<PeerTraffic>)> {
        self.peers
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Counts one finished batch of `ticks` ticks that took `took`, `waited` of it for
    /// borders.
    pub fn batch(&self, ticks: u64, took: Duration, waited: Duration) {
        self.ticks.fetch_add(ticks, Relaxed);
        self.batch_seconds.observe(took);
        let nanos = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        self.border_wait_nanos.fetch_add(nanos, Relaxed);
    }

    /// Time spent waiting for borders so far.
    pub fn border_wait(&self) -> Duration {
        Duration::from_nanos(self.border_wait_nanos.load(Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_puts_each_duration_in_its_bucket_and_sums() {
        let h = Histogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(1)); // on the bound: le="0.001"
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(3));
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(0.001, 2), (0.01, 1), (f64::MAX, 1)]);
        assert_eq!(s.count, 4);
        assert!((s.sum_seconds - 3.0065).abs() < 1e-9, "{}", s.sum_seconds);
    }

    #[test]
    fn batches_add_ticks_and_wait_and_peers_are_shared() {
        let s = SimStats::default();
        s.batch(3, Duration::from_millis(2), Duration::from_millis(1));
        s.batch(1, Duration::from_millis(4), Duration::from_millis(2));
        assert_eq!(s.ticks.load(Relaxed), 4);
        assert_eq!(s.border_wait(), Duration::from_millis(3));
        assert_eq!(s.batch_seconds.snapshot().count, 2);
        s.peer("b").sent(10);
        s.peer("b").received(7);
        s.peer("a").sent(1);
        let peers = s.peers();
        let names: Vec<&str> = peers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        let b = &peers[1].1;
        assert_eq!(b.bytes_sent.load(Relaxed), 10);
        assert_eq!(b.frames_sent.load(Relaxed), 1);
        assert_eq!(b.bytes_received.load(Relaxed), 7);
        assert_eq!(b.frames_received.load(Relaxed), 1);
    }
}
