//! [`Load`]: the harness every load generator of `colony bench` and the cargo benches runs
//! in: N worker tasks that repeat one operation until told to stop, counting what completed
//! and (once asked) keeping each operation's latency. What an operation is (a PING burst, an
//! echo frame, a signed heartbeat, a registry call) belongs to the crate that speaks it
//! (`dataplane::loadgen`, `controlplane::loadgen`, [`crate::registry::load`]); this owns only
//! the counting, the stop and the one place load connections are made ([`connect`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Latencies kept per worker at most, so a long run cannot grow without bound.
const MAX_SAMPLES: usize = 1 << 20;

/// A read that takes longer than this ends a worker with an error, so a load against a
/// stuck server still stops by itself.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens one load connection to `addr` (no Nagle: loads measure round trips). Every load
/// generator connects through here, so transport options (TLS) are added in one place.
///
/// # Errors
/// The connection cannot be made.
pub async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpStream::connect(addr).await?;
    socket.set_nodelay(true)?;
    Ok(socket)
}

/// Waits for `read` at most [`READ_TIMEOUT`]; a timeout is an I/O error.
///
/// # Errors
/// The read's error, or [`std::io::ErrorKind::TimedOut`].
pub async fn timed<T>(read: impl Future<Output = std::io::Result<T>>) -> std::io::Result<T> {
    tokio::time::timeout(READ_TIMEOUT, read)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))?
}

/// What a worker shares with its [`Load`].
#[derive(Debug, Clone)]
struct Shared {
    stop: Arc<AtomicBool>,
    recording: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
}

/// A worker's side of a [`Load`]: whether to go on, and where to count.
#[derive(Debug)]
pub struct Worker {
    shared: Shared,
    samples: Vec<Duration>,
}

impl Worker {
    /// False once the load is told to stop.
    pub fn running(&self) -> bool {
        !self.shared.stop.load(Relaxed)
    }

    /// Counts `operations` completed, begun at `started` (one latency sample for them all,
    /// as a burst of pipelined requests is one round trip).
    pub fn completed(&mut self, operations: u64, started: Instant) {
        self.shared.done.fetch_add(operations, Relaxed);
        if self.shared.recording.load(Relaxed) && self.samples.len() < MAX_SAMPLES {
            self.samples.push(started.elapsed());
        }
    }

    /// The latencies this worker kept, handed back when its work ends.
    pub fn into_samples(self) -> Vec<Duration> {
        self.samples
    }
}

/// A running load: worker tasks repeating their operation until [`Load::stop`].
#[derive(Debug)]
pub struct Load {
    shared: Shared,
    tasks: Vec<JoinHandle<std::io::Result<Vec<Duration>>>>,
}

impl Load {
    /// Starts one task per item of `workers`, each running `work(item, worker)` until the
    /// load stops: the work checks [`Worker::running`] between operations and ends with
    /// [`Worker::into_samples`].
    pub fn spawn<T, F, Fut>(workers: impl IntoIterator<Item = T>, work: F) -> Self
    where
        F: Fn(T, Worker) -> Fut,
        Fut: Future<Output = std::io::Result<Vec<Duration>>> + Send + 'static,
    {
        let shared = Shared {
            stop: Arc::new(AtomicBool::new(false)),
            recording: Arc::new(AtomicBool::new(false)),
            done: Arc::new(AtomicU64::new(0)),
        };
        let tasks = workers
            .into_iter()
            .map(|item| {
                let worker = Worker {
                    shared: shared.clone(),
                    samples: Vec::new(),
                };
                tokio::spawn(work(item, worker))
            })
            .collect();
        Load { shared, tasks }
    }

    /// Operations completed so far, over every worker.
    pub fn completed(&self) -> u64 {
        self.shared.done.load(Relaxed)
    }

    /// From now on, keeps each operation's latency (after a warm-up, say).
    pub fn record_latencies(&self) {
        self.shared.recording.store(true, Relaxed);
    }

    /// Stops the load and returns the latencies recorded.
    ///
    /// # Errors
    /// The first worker that failed (closed, timed out, refused).
    pub async fn stop(self) -> std::io::Result<Vec<Duration>> {
        self.shared.stop.store(true, Relaxed);
        let mut all = Vec::new();
        let mut first_error = None;
        for task in self.tasks {
            match task.await {
                Ok(Ok(samples)) => all.extend(samples),
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    first_error.get_or_insert(std::io::Error::other(e));
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(all),
        }
    }
}
