//! The SSM registry's discovery cache: what `discover_*` last read, reused for a TTL.
//!
//! The cache reads the time from a [`Clock`] it is given, so a test moves time by hand and
//! asserts what is cached however slow the machine is. (tokio's paused clock cannot do it:
//! it would also fire the SDK's timeouts against the real server under test.)

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::NodeAddress;

/// Where the discovery cache reads the time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current instant; never earlier than one returned before.
    fn now(&self) -> Instant;
}

/// The runtime's clock, [`tokio::time::Instant::now`]: the one every registry uses outside
/// tests.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// Discovery results with the instant each was read.
pub(super) struct DiscoveryCache {
    ttl: Duration,
    clock: Arc<dyn Clock>,
    entries: Mutex<Entries>,
    /// Bumped by every write of this instance; a discovery that started before a write must not
    /// fill the cache with what it read.
    generation: AtomicU64,
}

#[derive(Default)]
struct Entries {
    coordinator: Option<(Instant, Option<NodeAddress>)>,
    backends: Option<(Instant, Vec<(String, NodeAddress)>)>,
}

/// A discovery in flight: when it started and which generation of the cache it read.
pub(super) struct Fetch {
    at: Instant,
    generation: u64,
}

impl DiscoveryCache {
    /// An empty cache keeping results for `ttl` by `clock`; a zero `ttl` keeps nothing.
    pub(super) fn new(ttl: Duration, clock: Arc<dyn Clock>) -> Self {
        DiscoveryCache {
            ttl,
            clock,
            entries: Mutex::new(Entries::default()),
            generation: AtomicU64::new(0),
        }
    }

    /// How long results are kept.
    pub(super) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The cached coordinator (`Some(None)`: none is registered) while it is fresh.
    pub(super) async fn coordinator(&self) -> Option<Option<NodeAddress>> {
        let entries = self.entries.lock().await;
        let (at, found) = entries.coordinator?;
        self.fresh(at).then_some(found)
    }

    /// The cached backends while they are fresh.
    pub(super) async fn backends(&self) -> Option<Vec<(String, NodeAddress)>> {
        let entries = self.entries.lock().await;
        let (at, found) = entries.backends.as_ref()?;
        self.fresh(*at).then(|| found.clone())
    }

    /// Marks the start of a discovery, before it asks SSM.
    pub(super) fn begin(&self) -> Fetch {
        Fetch {
            generation: self.generation.load(Ordering::SeqCst),
            at: self.clock.now(),
        }
    }

    /// Keeps what `fetch` read, unless this instance wrote since it began.
    pub(super) async fn store_coordinator(&self, fetch: Fetch, found: Option<NodeAddress>) {
        let mut entries = self.entries.lock().await;
        if self.generation.load(Ordering::SeqCst) == fetch.generation {
            entries.coordinator = Some((fetch.at, found));
        }
    }

    /// Keeps what `fetch` read, unless this instance wrote since it began.
    pub(super) async fn store_backends(&self, fetch: Fetch, found: &[(String, NodeAddress)]) {
        let mut entries = self.entries.lock().await;
        if self.generation.load(Ordering::SeqCst) == fetch.generation {
            entries.backends = Some((fetch.at, found.to_vec()));
        }
    }

    /// Forgets cached discoveries, including those still in flight: this instance just wrote.
    pub(super) async fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        *self.entries.lock().await = Entries::default();
    }

    /// Read at `at`, and less than the TTL ago by the clock.
    fn fresh(&self, at: Instant) -> bool {
        self.clock.now().saturating_duration_since(at) < self.ttl
    }
}
