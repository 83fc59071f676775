//! [`within`]: a timeout that does not count time this process itself lost.
//!
//! The coordinator judges backends by how long they stay silent. If the coordinator is
//! stopped (SIGSTOP, a VM pause) or starved of CPU, every deadline it set passes while it
//! cannot read an answer that may already sit in its socket buffer, and a plain
//! `tokio::time::timeout` would then blame a healthy backend. So, like the health sweeper
//! (`health::tracker`), a wait here checks its own timeliness on a short beat: whenever a beat
//! wakes later than planned, the lateness is added to the deadline, because nobody could have
//! been heard during it. Only silence that falls while this process runs counts.
//!
//! This module owns that one rule; what a caller does when patience runs out is its own.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How often a wait checks that it is running on time.
const BEAT: Duration = Duration::from_millis(50);
/// Beat lateness below this is scheduling noise, not a stall of this process.
const STALL_TOLERANCE: Duration = Duration::from_millis(10);

/// The wait ran out: `limit` of silence while this process was running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OutOfPatience {
    /// The silence that was allowed.
    pub(crate) limit: Duration,
    /// Time this process itself lost during the wait (and did not count).
    pub(crate) forgiven: Duration,
}

/// Runs `fut` until it finishes or `limit` of this process's own running time has passed
/// without it finishing. The future is always polled before the clock is read, so an answer
/// that arrived while this process was stopped wins over the deadline that passed meanwhile.
///
/// # Errors
/// [`OutOfPatience`] when the limit ran out first; `fut` is dropped.
pub(crate) async fn within<F: Future>(limit: Duration, fut: F) -> Result<F::Output, OutOfPatience> {
    let mut deadline = Instant::now() + limit;
    let mut forgiven = Duration::ZERO;
    let mut due = Instant::now() + BEAT;
    tokio::pin!(fut);
    loop {
        tokio::select! {
            biased;
            out = &mut fut => return Ok(out),
            _ = tokio::time::sleep_until(due.min(deadline)) => {}
        }
        let now = Instant::now();
        let planned = due.min(deadline);
        let late = now.saturating_duration_since(planned);
        if late > STALL_TOLERANCE {
            deadline += late;
            forgiven += late;
        }
        if now >= deadline {
            // One last look: an answer may have become ready in the same instant.
            if let Some(out) = futures::FutureExt::now_or_never(&mut fut) {
                return Ok(out);
            }
            return Err(OutOfPatience { limit, forgiven });
        }
        due = now + BEAT;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn silence_while_running_runs_out() {
        let started = std::time::Instant::now();
        let out = within(Duration::from_millis(200), std::future::pending::<()>()).await;
        let e = out.unwrap_err();
        assert_eq!(e.limit, Duration::from_millis(200));
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(200), "{took:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_quick_answer_is_returned() {
        let out = within(Duration::from_secs(5), async { 7 }).await;
        assert_eq!(out, Ok(7));
    }

    /// The whole runtime thread is blocked (as if the process were stopped) for longer than
    /// the limit while the answer is on its way: the wait forgives the stall and takes the
    /// answer instead of timing out.
    #[tokio::test(flavor = "current_thread")]
    async fn time_the_process_itself_lost_is_not_counted() {
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let stall = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(60)).await;
            // Blocks the only runtime thread: no timer, no I/O, nothing runs.
            std::thread::sleep(Duration::from_millis(500));
            // Answers 100 ms after the stall, which is past the original deadline.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = tx.send(9);
        });
        let out = within(Duration::from_millis(300), rx).await;
        let Ok(Ok(answer)) = out else {
            panic!("the stall was blamed on the sender: {out:?}");
        };
        assert_eq!(answer, 9);
        stall.await.unwrap();
    }

    /// A stall is forgiven, but silence after it still counts.
    #[tokio::test(flavor = "current_thread")]
    async fn silence_after_a_stall_still_runs_out() {
        let stall = tokio::spawn(async {
            tokio::time::sleep(Duration::from_millis(60)).await;
            std::thread::sleep(Duration::from_millis(400));
        });
        let started = std::time::Instant::now();
        let e = within(Duration::from_millis(200), std::future::pending::<()>())
            .await
            .unwrap_err();
        assert!(e.forgiven >= Duration::from_millis(300), "{e:?}");
        assert!(started.elapsed() >= Duration::from_millis(550), "{e:?}");
        stall.await.unwrap();
    }
}
