//! Batching the management thread's wakeups while thousands of nodes heartbeat.
//!
//! At 10 000 nodes beating once a second, heartbeats arrive one by one, each on its own
//! channel, spread over the second. Left alone, the management thread wakes for a handful of
//! them at a time: about 2 000 times a second, and each wakeup is a blocking `epoll_wait`, a
//! context switch and a cold start of the code that reads a frame. [`batch_wakeups`] makes the
//! thread's turns last at least [`TURN`] while heartbeats flow that fast, so each turn reads
//! a few dozen frames together; a heartbeat waits at most [`TURN`] longer for it, nothing
//! that a 1 s interval or a 3 s STALE threshold can notice.
//!
//! The price is paid by everything else on the management port while heartbeats flow that
//! fast: each turn a request needs (accepting it, reading it, writing the answer; more over
//! TLS) may start up to [`TURN`] later, so a request can take a few milliseconds longer.
//!
//! It only ever lengthens a turn that was short and light: a turn that already took
//! [`TURN`], or handled a burst of [`BURST`] heartbeats, is not made longer, so a flood is
//! read as fast as before. Below [`MIN_RATE`] heartbeats a second it does nothing but look
//! at the rate once per [`WINDOW`].

use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use tokio_util::sync::CancellationToken;

/// The shortest turn of the management thread while batching.
pub const TURN: Duration = Duration::from_millis(2);
/// Heartbeats a second from which turns are batched: below it, the thread sleeps in
/// `epoll_wait` between heartbeats anyway and a batch would gain nothing.
pub const MIN_RATE: u64 = 2_000;
/// A turn that handled this many heartbeats is a burst, read as fast as it comes.
pub const BURST: u64 = 64;
/// How often the rate is looked at.
pub const WINDOW: Duration = Duration::from_secs(1);

/// Lengthens the management thread's short turns while `heartbeats` (the count of
/// heartbeats accepted) rises by at least [`MIN_RATE`] a second, until `shutdown`. Runs on
/// the management thread's own runtime, beside its listener.
///
/// Each lengthened turn counts in `batched` (`colony_mgmt_batched_turns_total`).
pub async fn batch_wakeups(heartbeats: Counter, batched: Counter, shutdown: CancellationToken) {
    loop {
        let before = heartbeats.get();
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(WINDOW) => {}
        }
        if heartbeats.get().saturating_sub(before) >= MIN_RATE {
            tracing::debug!(
                min_rate = MIN_RATE,
                "heartbeats flow fast: batching the management thread's turns"
            );
            batch_while_busy(&heartbeats, &batched, &shutdown).await;
            tracing::debug!("heartbeats slowed down: turns no longer batched");
        }
    }
}

/// Batches turns until the rate of a [`WINDOW`] falls under [`MIN_RATE`] or `shutdown`.
async fn batch_while_busy(heartbeats: &Counter, batched: &Counter, shutdown: &CancellationToken) {
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
            if count.saturating_sub(window.1) < MIN_RATE {
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

    #[tokio::test(flavor = "current_thread")]
    async fn turns_are_batched_only_while_heartbeats_flow_fast() {
        let heartbeats = Counter::default();
        let shutdown = CancellationToken::new();
        // Fast enough: batching starts within a window, and a turn of this thread then lasts
        // at least TURN (measured by a task that yields in a loop).
        let feeder = {
            let heartbeats = heartbeats.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(1));
                loop {
                    tick.tick().await;
                    heartbeats.inc_by(MIN_RATE / 500);
                }
            })
        };
        let turns = Counter::default();
        let batcher = tokio::spawn(batch_wakeups(
            heartbeats.clone(),
            turns.clone(),
            shutdown.clone(),
        ));
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut batched = false;
        while Instant::now() < deadline && !batched {
            tokio::time::sleep(Duration::from_millis(50)).await;
            batched = turns.get() > 0;
        }
        assert!(
            batched,
            "turns were never lengthened at {MIN_RATE}/s and more"
        );

        // Once heartbeats stop, turns are left alone again (within a window or two).
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
