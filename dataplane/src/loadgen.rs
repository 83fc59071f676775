//! [`PingLoad`]: the inline-`PING` load generator shared by `colony bench ping` and the
//! `pingpong` cargo bench. Each connection keeps `depth` `PING\r\n` in flight and counts
//! answer lines, so the same load runs against Colony (`PONG\n`), Redis (`+PONG\r\n`) or a
//! line echo. Loopback-only use is the caller's check; this only generates load.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// A read that takes longer than this ends the connection's load with an error, so a load
/// against a stuck server still stops by itself.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Round trips kept per connection at most, so a long run cannot grow without bound.
const MAX_SAMPLES: usize = 1 << 20;

/// A running ping load: `connections` connections, each with `depth` requests in flight.
#[derive(Debug)]
pub struct PingLoad {
    stop: Arc<AtomicBool>,
    recording: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<std::io::Result<Vec<Duration>>>>,
}

impl PingLoad {
    /// Connects every connection to `addr`, then starts the load.
    ///
    /// # Errors
    /// A connection that cannot be made.
    pub async fn start(
        addr: SocketAddr,
        connections: usize,
        depth: usize,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let recording = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let mut sockets = Vec::with_capacity(connections);
        for _ in 0..connections {
            let socket = TcpStream::connect(addr).await?;
            socket.set_nodelay(true)?;
            sockets.push(socket);
        }
        let tasks = sockets
            .into_iter()
            .map(|socket| {
                tokio::spawn(drive(
                    socket,
                    depth.max(1),
                    stop.clone(),
                    recording.clone(),
                    answered.clone(),
                ))
            })
            .collect();
        Ok(PingLoad {
            stop,
            recording,
            answered,
            tasks,
        })
    }

    /// Answers received so far, over every connection.
    pub fn answered(&self) -> u64 {
        self.answered.load(Relaxed)
    }

    /// From now on, keeps each round trip's latency (after a warm-up, say).
    pub fn record_latencies(&self) {
        self.recording.store(true, Relaxed);
    }

    /// Stops the load and returns the round trips recorded (one per burst of `depth`).
    ///
    /// # Errors
    /// The first connection that failed (closed, timed out, or a write or read error).
    pub async fn stop(self) -> std::io::Result<Vec<Duration>> {
        self.stop.store(true, Relaxed);
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

async fn drive(
    mut socket: TcpStream,
    depth: usize,
    stop: Arc<AtomicBool>,
    recording: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
) -> std::io::Result<Vec<Duration>> {
    let burst = b"PING\r\n".repeat(depth);
    let mut buf = vec![0u8; 64 * 1024];
    let mut samples = Vec::new();
    while !stop.load(Relaxed) {
        let sent = Instant::now();
        socket.write_all(&burst).await?;
        let mut answers = 0;
        while answers < depth {
            let n = tokio::time::timeout(READ_TIMEOUT, socket.read(&mut buf))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))??;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            answers += buf
                .get(..n)
                .map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count());
        }
        answered.fetch_add(depth as u64, Relaxed);
        if recording.load(Relaxed) && samples.len() < MAX_SAMPLES {
            samples.push(sent.elapsed());
        }
    }
    Ok(samples)
}

/// A line echo on `127.0.0.1`: every byte read is written back, so each `PING\r\n` gets its
/// line back. Against it, [`PingLoad`] measures the loopback limit of this machine. Serves
/// until the returned task is aborted.
///
/// # Errors
/// The listener cannot bind.
pub async fn spawn_echo() -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((mut socket, _)) = listener.accept().await {
            connections.spawn(async move {
                let _ = socket.set_nodelay(true);
                let (mut r, mut w) = socket.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok((addr, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_load_against_the_echo_counts_answers_and_latencies() {
        let (addr, echo) = spawn_echo().await.unwrap();
        let load = PingLoad::start(addr, 2, 4).await.unwrap();
        load.record_latencies();
        let deadline = Instant::now() + Duration::from_secs(10);
        while load.answered() < 100 {
            assert!(Instant::now() < deadline, "no answers");
            tokio::task::yield_now().await;
        }
        let samples = load.stop().await.unwrap();
        assert!(!samples.is_empty());
        echo.abort();
    }
}
