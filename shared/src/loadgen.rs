//! [`Load`]: the harness every load generator of `colony bench` and the cargo benches runs
//! in: N worker tasks that repeat one operation until told to stop, counting what completed
//! and (once asked) keeping each operation's latency. What an operation is (a PING burst, an
//! echo frame, a signed heartbeat, a registry call) belongs to the crate that speaks it
//! (`dataplane::loadgen`, `controlplane::loadgen`, [`crate::registry::load`]); this owns only
//! the counting, the stop and the one place load connections are made ([`connect`], over
//! the [`Connector`] a load is given: plaintext, or TLS as a node speaks it).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::tls::Tls;

/// Latencies kept per worker at most, so a long run cannot grow without bound.
const MAX_SAMPLES: usize = 1 << 20;

/// A read that takes longer than this ends a worker with an error, so a load against a
/// stuck server still stops by itself.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How a load's connections are made: plaintext, or TLS with a node's configuration (the
/// cluster CA, and the certificate presented, which node-only calls need). A value handed to
/// every load rather than a process-wide setting, so one run can load a TLS cluster and a
/// plaintext server (`--compare`) side by side.
#[derive(Debug, Clone, Default)]
pub struct Connector {
    tls: Option<Tls>,
}

impl Connector {
    /// Plaintext connections.
    pub fn plain() -> Connector {
        Connector { tls: None }
    }

    /// TLS connections with `tls` (plaintext if `None`).
    pub fn new(tls: Option<Tls>) -> Connector {
        Connector { tls }
    }

    /// The TLS connections are made with, if any.
    pub fn tls(&self) -> Option<&Tls> {
        self.tls.as_ref()
    }

    /// `https` over TLS, `http` without: the scheme of a load's HTTP URLs.
    pub fn http_scheme(&self) -> &'static str {
        crate::tls::scheme(self.tls.as_ref())
    }

    /// `wss` over TLS, `ws` without: the scheme of a load's WebSocket URLs.
    pub fn ws_scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "wss"
        } else {
            "ws"
        }
    }
}

/// A load connection: a TCP stream, or TLS over one. An enum rather than a boxed stream so
/// a plaintext load (the data-plane figures compared with Redis) pays no indirection.
#[derive(Debug)]
pub enum LoadStream {
    /// Plaintext.
    Plain(TcpStream),
    /// TLS (boxed: its state is large).
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for LoadStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            LoadStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            LoadStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for LoadStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            LoadStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            LoadStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            LoadStream::Plain(s) => Pin::new(s).poll_flush(cx),
            LoadStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            LoadStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            LoadStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            LoadStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            LoadStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            LoadStream::Plain(s) => s.is_write_vectored(),
            LoadStream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// Opens one load connection to `addr` (no Nagle: loads measure round trips), over TLS if
/// `connector` has it (the server's certificate must chain to the cluster CA and name
/// `addr`'s IP, as between nodes). Every load generator connects through here.
///
/// # Errors
/// The connection cannot be made, or the TLS handshake fails or times out.
pub async fn connect(addr: SocketAddr, connector: &Connector) -> std::io::Result<LoadStream> {
    let socket = TcpStream::connect(addr).await?;
    socket.set_nodelay(true)?;
    match &connector.tls {
        None => Ok(LoadStream::Plain(socket)),
        Some(tls) => tls
            .connect(addr.ip(), socket)
            .await
            .map(|s| LoadStream::Tls(Box::new(s)))
            .map_err(|e| std::io::Error::other(format!("{addr}: {e}"))),
    }
}

/// Whether the server at `addr` speaks TLS: it answers a TLS hello with a certificate (which
/// this probe, trusting nothing, then refuses). Lets a plaintext load that failed say why:
/// a TLS server just closes a plaintext connection, which by itself says nothing.
pub async fn speaks_tls(addr: SocketAddr) -> bool {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let Ok(builder) =
        rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions()
    else {
        return false;
    };
    let config = builder
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let probe = async {
        let socket = TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, socket)
            .await
    };
    match tokio::time::timeout(READ_TIMEOUT, probe).await {
        // Only a server that sent a certificate gets this far and is refused for it.
        Ok(Err(e)) => e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .is_some_and(|e| matches!(e, rustls::Error::InvalidCertificate(_))),
        // Trusting nothing, a handshake cannot succeed; a timeout says nothing either.
        Ok(Ok(_)) | Err(_) => false,
    }
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

    /// Counts `operations` completed that have no round trip of their own to time (frames
    /// acknowledged together, some time after they were sent).
    pub fn counted(&mut self, operations: u64) {
        self.shared.done.fetch_add(operations, Relaxed);
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
