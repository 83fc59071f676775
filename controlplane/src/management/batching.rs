//! Batching the management thread's wakeups while thousands of nodes heartbeat over channels
//! it serves (over TLS; plain channels have a thread of their own, which batches its turns
//! the same way with a longer turn: `channel::reactor`).
//!
//! At 10 000 nodes beating once a second, heartbeats arrive one by one, each on its own
//! channel, spread over the second. Left alone, the management thread wakes for a handful of
//! them at a time: about 2 000 times a second, and each wakeup is a blocking `epoll_wait`, a
//! context switch and a cold start of the code that reads a frame. [`batch_wakeups`] makes the
//! thread's turns last at least [`TURN`] while heartbeats trickle in like that, so each turn
//! reads a few dozen frames together; a heartbeat waits at most [`TURN`] longer for it,
//! nothing that a 1 s interval or a 3 s STALE threshold can notice.
//!
//! "Like that" is: at least [`MIN_RATE`] channel heartbeats a second, and at most
//! [`MAX_PER_CHANNEL`] a second per open channel, i.e. many channels each beating at a
//! node's pace. A few channels each sending as fast as they are answered (a load generator,
//! `colony bench heartbeats`) are not batched: each of their frames waits for the previous
//! answer, and a 2 ms turn would cap each at 500 a second. Heartbeats `POST`ed are not
//! counted.
//!
//! The price is paid by everything else on the management port while turns are batched:
//! each turn a request needs (accepting it, reading it, writing the answer; more over TLS)
//! may start up to [`TURN`] later, so a request can take a few milliseconds longer.
//!
//! It only ever lengthens a turn that was short and light: a turn that already took
//! [`TURN`], or handled a burst of [`BURST`] heartbeats, is not made longer, nor one after
//! which tasks woken from other threads wait. When not batching it does nothing but look at
//! the rate once per [`WINDOW`].

use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;

/// The shortest turn of the management thread while batching.
pub const TURN: Duration = Duration::from_millis(2);
/// Channel heartbeats a second from which turns are batched: below it, the thread sleeps in
/// `epoll_wait` between heartbeats anyway and a batch would gain nothing.
pub const MIN_RATE: u64 = 2_000;
/// Heartbeats a second per open channel above which its frames are not a node's pace (a
/// node beats at most 10 times a second, at the shortest interval of 100 ms) but a client
/// waiting on each answer, which batching would slow down.
pub const MAX_PER_CHANNEL: u64 = 20;
/// A turn that handled this many heartbeats is a burst, read as fast as it comes.
pub const BURST: u64 = 64;
/// How often the rate is looked at.
pub const WINDOW: Duration = Duration::from_secs(1);

/// What the batching watches: heartbeats accepted over the channels served on the management
/// thread, and those channels open. Channels over plain TCP are served on a thread of their
/// own, which batches its own turns (`channel::reactor`), and are not counted here.
#[derive(Debug, Clone, Default)]
pub struct Flow {
    /// Heartbeats accepted over those channels.
    pub heartbeats: Counter,
    /// Those channels open now.
    pub channels: Gauge,
}

impl Flow {
    /// Whether `heartbeats` in one [`WINDOW`] over the channels open now are many nodes at
    /// their pace.
    fn worth_batching(&self, heartbeats: u64) -> bool {
        let channels = u64::try_from(self.channels.get()).unwrap_or(0);
        worth_batching(heartbeats, channels)
    }
}

/// Whether `heartbeats` in one [`WINDOW`] over `channels` open channels are many nodes at
/// their pace.
pub fn worth_batching(heartbeats: u64, channels: u64) -> bool {
    heartbeats >= MIN_RATE && heartbeats <= channels.saturating_mul(MAX_PER_CHANNEL)
}

/// Lengthens the management thread's short turns while `flow` says many nodes heartbeat at
/// their pace, until `shutdown`. Runs on the management thread's own runtime, beside its
/// listener. Each lengthened turn counts in `batched` (`colony_mgmt_batched_turns_total`).
pub async fn batch_wakeups(flow: Flow, batched: Counter, shutdown: CancellationToken) {
    loop {
        let before = flow.heartbeats.get();
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(WINDOW) => {}
        }
        if flow.worth_batching(flow.heartbeats.get().saturating_sub(before)) {
            tracing::debug!(
                min_rate = MIN_RATE,
                "many nodes heartbeat: batching the management thread's turns"
            );
            batch_while_busy(&flow, &batched, &shutdown).await;
            tracing::debug!("turns no longer batched");
        }
    }
}

/// Batches turns until a [`WINDOW`]'s heartbeats are no longer worth it, or `shutdown`.
async fn batch_while_busy(flow: &Flow, batched: &Counter, shutdown: &CancellationToken) {
    let heartbeats = &flow.heartbeats;
    let mut window = (Instant::now(), heartbeats.get());
    let mut turn = (Instant::now(), heartbeats.get());
    while !shutdown.is_cancelled() {
        // Deferred until the runtime has polled its I/O driver and run what that woke: one
        // yield is one turn of the thread.
        tokio::task::yield_now().await;
        let (now, count) = (Instant::now(), heartbeats.get());
        let took = now.saturating_duration_since(turn.0);
        // Tasks woken from other threads wait in the runtime's queue: not a turn to stretch.
        let waiting = tokio::runtime::Handle::current()
            .metrics()
            .global_queue_depth();
        if let Some(rest) =
            rest_of_turn(took, count.saturating_sub(turn.1)).filter(|_| waiting == 0)
        {
            batched.inc();
            // Deliberately blocking: this thread's runtime must not poll for readiness
            // before the rest of the turn is over, so that the frames arriving meanwhile
            // are read in one go. Every task on this thread waits; none waits long.
            std::thread::sleep(rest);
        }
        turn = (Instant::now(), count);
        if now.saturating_duration_since(window.0) >= WINDOW {
            if !flow.worth_batching(count.saturating_sub(window.1)) {
                return;
            }
            window = (now, count);
        }
    }
}

/// How much longer a turn that took `took` and handled `handled` heartbeats should last;
/// `None` when it was long or busy enough.
fn rest_of_turn(took: Duration, handled: u64) -> Option<Duration> {
    if handled >= BURST || took >= TURN {
        return None;
    }
    Some(TURN - took)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_light_turns_are_lengthened() {
        assert_eq!(
            rest_of_turn(Duration::from_micros(500), 3),
            Some(Duration::from_micros(1500))
        );
        assert_eq!(rest_of_turn(Duration::ZERO, 0), Some(TURN));
        assert_eq!(rest_of_turn(Duration::from_micros(500), BURST), None);
        assert_eq!(rest_of_turn(TURN, 0), None);
        assert_eq!(rest_of_turn(Duration::from_secs(1), 0), None);
    }

    #[test]
    fn many_channels_at_a_nodes_pace_are_batched_a_few_fast_ones_are_not() {
        let flow = Flow::default();
        flow.channels.set(10_000);
        assert!(flow.worth_batching(10_000), "10 000 nodes at 1/s");
        assert!(
            !flow.worth_batching(MIN_RATE - 1),
            "too few to gain anything"
        );
        flow.channels.set(8);
        assert!(
            !flow.worth_batching(40_000),
            "8 channels as fast as answered"
        );
        flow.channels.set(0);
        assert!(!flow.worth_batching(40_000), "POSTs only");
    }

    /// Feeds `flow` with `rate` heartbeats a second until aborted.
    fn feed(flow: &Flow, rate: u64) -> tokio::task::JoinHandle<()> {
        let heartbeats = flow.heartbeats.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            loop {
                tick.tick().await;
                heartbeats.inc_by(rate / 1000);
            }
        })
    }

    #[tokio::test(flavor = "current_thread")]
    async fn turns_are_batched_only_while_many_nodes_heartbeat() {
        let flow = Flow::default();
        let shutdown = CancellationToken::new();
        let turns = Counter::default();
        let batcher = tokio::spawn(batch_wakeups(flow.clone(), turns.clone(), shutdown.clone()));

        // A few channels, fast: two windows pass without a lengthened turn.
        flow.channels.set(4);
        let feeder = feed(&flow, 2 * MIN_RATE);
        tokio::time::sleep(2 * WINDOW + WINDOW / 2).await;
        assert_eq!(turns.get(), 0, "a few fast channels were slowed down");
        feeder.abort();

        // Many channels at a node's pace: batching starts within a window or two.
        flow.channels.set(4_000);
        let feeder = feed(&flow, 2 * MIN_RATE);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut batched = false;
        while Instant::now() < deadline && !batched {
            tokio::time::sleep(Duration::from_millis(50)).await;
            batched = turns.get() > 0;
        }
        assert!(batched, "turns were never lengthened for 4 000 channels");

        // Once heartbeats stop, turns are left alone again.
        feeder.abort();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut left_alone = false;
        while Instant::now() < deadline && !left_alone {
            let before = turns.get();
            tokio::time::sleep(Duration::from_millis(200)).await;
            left_alone = turns.get() == before;
        }
        assert!(left_alone, "turns still lengthened with no heartbeat");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), batcher)
            .await
            .expect("the batcher stops on shutdown")
            .unwrap();
    }
}
