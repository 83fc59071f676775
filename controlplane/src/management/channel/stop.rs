//! How 10 000 open channels learn that the listener stops, for one atomic load each time a
//! channel waits for its peer.
//!
//! A channel waits on its socket and on the stop together, once per frame. A
//! `CancellationToken`'s wait takes the token's mutex on every poll (and its `Notify`'s
//! waiter lock too), a measurable share of a heartbeat at 10 000 nodes. Here a channel
//! registers its task's waker once ([`Stopped`]), re-registers only if the task's waker
//! changes, and every later poll reads one flag. [`Stop::stop`] sets the flag and wakes every
//! registered channel.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

/// The stop every channel of a listener waits on.
#[derive(Debug, Default)]
pub struct Stop {
    stopping: AtomicBool,
    /// The waker of each channel waiting, by channel id.
    waiting: Mutex<HashMap<u64, Waker>>,
    /// Wakers registered so far.
    #[cfg(test)]
    registrations: std::sync::atomic::AtomicUsize,
}

impl Stop {
    /// Stops: every [`Stopped`] resolves, those waiting now are woken.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let waiting = std::mem::take(&mut *self.waiting.lock());
        for waker in waiting.into_values() {
            waker.wake();
        }
    }

    /// Whether [`Stop::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// A wait for the stop, for the channel `id` (unique among those waiting at once).
    pub fn stopped(&self, id: u64) -> Stopped<'_> {
        Stopped {
            stop: self,
            id,
            registered: None,
        }
    }
}

/// Resolves once its [`Stop`] stops. Polled again and again by one channel's task: the first
/// poll registers the task's waker, later ones only read the flag.
#[derive(Debug)]
pub struct Stopped<'a> {
    stop: &'a Stop,
    id: u64,
    /// The waker registered for this wait, if any.
    registered: Option<Waker>,
}

impl Future for Stopped<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.stop.is_stopped() {
            return Poll::Ready(());
        }
        if this
            .registered
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        let waker = cx.waker().clone();
        this.stop.waiting.lock().insert(this.id, waker.clone());
        #[cfg(test)]
        this.stop.registrations.fetch_add(1, Ordering::Relaxed);
        this.registered = Some(waker);
        // `stop` may have taken the waiters between the first look and the insert: then it
        // will not wake this one, but its flag is set by now.
        if this.stop.is_stopped() {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        if self.registered.is_some() {
            self.stop.waiting.lock().remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn every_waiting_channel_is_woken_by_the_stop() {
        let stop = Arc::new(Stop::default());
        let waits: Vec<_> = (0..100)
            .map(|id| {
                let stop = stop.clone();
                tokio::spawn(async move { stop.stopped(id).await })
            })
            .collect();
        // Every task has polled (and registered) before the stop.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while stop.waiting.lock().len() < 100 {
            assert!(tokio::time::Instant::now() < deadline, "tasks never waited");
            tokio::task::yield_now().await;
        }
        stop.stop();
        for wait in waits {
            tokio::time::timeout(Duration::from_secs(10), wait)
                .await
                .expect("a channel was not woken")
                .unwrap();
        }
        assert!(stop.waiting.lock().is_empty());
    }

    #[tokio::test]
    async fn a_wait_after_the_stop_resolves_at_once_and_a_dropped_one_unregisters() {
        let stop = Stop::default();
        {
            let mut wait = std::pin::pin!(stop.stopped(7));
            assert!(futures::poll!(wait.as_mut()).is_pending());
            assert!(futures::poll!(wait.as_mut()).is_pending());
            assert_eq!(stop.waiting.lock().len(), 1);
            assert_eq!(
                stop.registrations.load(Ordering::Relaxed),
                1,
                "the same task's waker is registered once"
            );
        }
        assert!(stop.waiting.lock().is_empty(), "dropped wait unregistered");
        stop.stop();
        stop.stopped(8).await;
        assert!(stop.waiting.lock().is_empty());
    }
}
