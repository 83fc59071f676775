//! [`Gated`]: a future that is polled again only when it asked to be.
//!
//! A connection's select polls its shutdown and timer branches on every wakeup, though nearly
//! every wakeup is the socket's. Neither poll is free: the shutdown token's future takes two
//! mutexes (the token's tree node, then its `Notify`'s waiter list) and a `Sleep` registers
//! its waker again with two compare-and-swaps. At 50 connections × 1 PING that is a share of
//! the data plane's CPU per request Redis does not pay (issue 17).
//!
//! A gated future hands its inner future a waker of its own, which notes the wake before
//! passing it on to the task, and skips the inner poll while no wake was noted and the task's
//! waker is still the one it registered: one atomic load instead. Polling order and
//! promptness do not change: a cancelled token or a fired timer wakes the task, and the next
//! poll of the gated future polls the inner one.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

/// `F`, polled only after it woke the task (or on the first poll, or when the task's waker
/// changed).
pub(crate) struct Gated<F> {
    inner: F,
    /// The waker the inner future holds since it last returned `Pending`.
    armed: Option<Arc<Wakeup>>,
}

/// The waker a gated future gives its inner future.
struct Wakeup {
    /// The inner future has woken the task since it was last polled.
    woken: AtomicBool,
    /// The task's own waker.
    task: Waker,
}

impl Wake for Wakeup {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Release: whatever the inner future's waker saw is visible to the poll that reads
        // the flag.
        self.woken.store(true, Ordering::Release);
        self.task.wake_by_ref();
    }
}

impl<F> Gated<F> {
    pub(crate) fn new(inner: F) -> Self {
        Gated { inner, armed: None }
    }

    /// The inner future, to change it (say, to move a timer's deadline): the next poll polls
    /// it whatever was noted.
    pub(crate) fn get_mut(&mut self) -> &mut F {
        self.armed = None;
        &mut self.inner
    }
}

impl<F: Future + Unpin> Future for Gated<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        if let Some(armed) = &this.armed {
            if !armed.woken.load(Ordering::Acquire) && armed.task.will_wake(cx.waker()) {
                return Poll::Pending;
            }
        }
        // Rare (a first poll, a wake of the inner future's own, a task that moved): a fresh
        // waker is simplest and cannot inherit a stale flag.
        let wakeup = Arc::new(Wakeup {
            woken: AtomicBool::new(false),
            task: cx.waker().clone(),
        });
        let waker = Waker::from(Arc::clone(&wakeup));
        let poll = Pin::new(&mut this.inner).poll(&mut Context::from_waker(&waker));
        this.armed = poll.is_pending().then_some(wakeup);
        poll
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use super::*;

    /// A future that counts its polls and is ready once told.
    struct Counted {
        polls: usize,
        ready: Arc<AtomicBool>,
        waker: Arc<parking_lot::Mutex<Option<Waker>>>,
    }

    impl Future for Counted {
        type Output = ();

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls += 1;
            if self.ready.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            *self.waker.lock() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    /// A waker that counts its wakes.
    struct Count(std::sync::atomic::AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn polls_the_inner_future_only_after_it_woke_the_task() {
        let ready = Arc::new(AtomicBool::new(false));
        let slot = Arc::new(parking_lot::Mutex::new(None));
        let mut gated = Gated::new(Counted {
            polls: 0,
            ready: ready.clone(),
            waker: slot.clone(),
        });
        let count = Arc::new(Count(0.into()));
        let task = Waker::from(count.clone());
        let mut cx = Context::from_waker(&task);
        for _ in 0..5 {
            assert!(Pin::new(&mut gated).poll(&mut cx).is_pending());
        }
        assert_eq!(
            gated.inner.polls, 1,
            "woken by nothing of its own: polled once"
        );

        ready.store(true, Ordering::Release);
        let inner_waker = slot.lock().take().unwrap();
        inner_waker.wake();
        assert_eq!(
            count.0.load(Ordering::Relaxed),
            1,
            "the task's waker was woken"
        );
        assert!(Pin::new(&mut gated).poll(&mut cx).is_ready());
        assert_eq!(gated.inner.polls, 2);
    }

    #[test]
    fn a_new_task_waker_or_a_change_polls_again() {
        let ready = Arc::new(AtomicBool::new(false));
        let mut gated = Gated::new(Counted {
            polls: 0,
            ready,
            waker: Arc::new(parking_lot::Mutex::new(None)),
        });
        let first = Waker::from(Arc::new(Count(0.into())));
        let second = Waker::from(Arc::new(Count(0.into())));
        assert!(Pin::new(&mut gated)
            .poll(&mut Context::from_waker(&first))
            .is_pending());
        assert!(Pin::new(&mut gated)
            .poll(&mut Context::from_waker(&second))
            .is_pending());
        assert_eq!(
            gated.inner.polls, 2,
            "another task's waker must be registered"
        );
        gated.get_mut();
        assert!(Pin::new(&mut gated)
            .poll(&mut Context::from_waker(&second))
            .is_pending());
        assert_eq!(gated.inner.polls, 3, "a change is polled");
    }

    #[tokio::test]
    async fn a_cancelled_token_ends_a_select_that_keeps_polling_it_first() {
        let token = CancellationToken::new();
        let cancelled = token.cancelled();
        tokio::pin!(cancelled);
        let mut cancelled = Gated::new(cancelled);
        // Register, as a connection's first select does.
        tokio::select! {
            biased;
            _ = &mut cancelled => unreachable!("not cancelled yet"),
            _ = tokio::task::yield_now() => {}
        }
        let canceller = token.clone();
        tokio::spawn(async move { canceller.cancel() });
        tokio::time::timeout(Duration::from_secs(10), &mut cancelled)
            .await
            .expect("the gated wait ends once the token is cancelled");
    }

    #[tokio::test(start_paused = true)]
    async fn a_moved_deadline_is_kept() {
        let start = tokio::time::Instant::now();
        let timer = tokio::time::sleep_until(start + Duration::from_secs(60));
        tokio::pin!(timer);
        let mut timer = Gated::new(timer);
        tokio::select! {
            biased;
            _ = &mut timer => unreachable!("an hour early"),
            _ = tokio::task::yield_now() => {}
        }
        timer
            .get_mut()
            .as_mut()
            .reset(start + Duration::from_secs(1));
        (&mut timer).await;
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }
}
