//! [`Stats`]: the data plane's counters, shared by every connection and read by `STATS` and
//! the management plane's metrics.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use codec::StatsSnapshot;
use tokio::time::Instant;

/// Lock-free counters. Relaxed ordering: each is an independent tally, never a guard.
#[derive(Debug)]
pub struct Stats {
    started: Instant,
    connections: AtomicU64,
    connections_total: AtomicU64,
    connections_refused: AtomicU64,
    frames_in: AtomicU64,
    frames_out: AtomicU64,
    errors: AtomicU64,
}

impl Stats {
    pub(crate) fn new() -> Self {
        Stats {
            started: Instant::now(),
            connections: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            frames_in: AtomicU64::new(0),
            frames_out: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }

    /// A consistent-enough copy of every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            connections: self.connections.load(Relaxed),
            connections_total: self.connections_total.load(Relaxed),
            connections_refused: self.connections_refused.load(Relaxed),
            frames_in: self.frames_in.load(Relaxed),
            frames_out: self.frames_out.load(Relaxed),
            errors: self.errors.load(Relaxed),
            uptime_secs: self.started.elapsed().as_secs(),
        }
    }

    pub(crate) fn opened(&self) {
        self.connections.fetch_add(1, Relaxed);
        self.connections_total.fetch_add(1, Relaxed);
    }

    pub(crate) fn closed(&self) {
        self.connections.fetch_sub(1, Relaxed);
    }

    pub(crate) fn refused(&self) {
        self.connections_refused.fetch_add(1, Relaxed);
    }

    /// Adds one batch of traffic; called once per batch of answers (a read's worth, or one
    /// deferred answer), not once per frame.
    pub(crate) fn add(&self, frames_in: u64, frames_out: u64, errors: u64) {
        if frames_in > 0 {
            self.frames_in.fetch_add(frames_in, Relaxed);
        }
        if frames_out > 0 {
            self.frames_out.fetch_add(frames_out, Relaxed);
        }
        if errors > 0 {
            self.errors.fetch_add(errors, Relaxed);
        }
    }
}
