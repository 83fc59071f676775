//! The HTTP accept loop of both HTTP planes, with the limits a hostile client meets before
//! any handler runs: a header read timeout, a keep-alive idle timeout, a connection cap per
//! listener, and a process-wide descriptor budget with a reserve for the node's own outgoing
//! connections ([`raise_nofile_limit`]). Routing, body limits and request timeouts are
//! [`crate::http::harden`]'s; this module only decides which connections are served.
//!
//! The timeouts are watched per connection rather than left to hyper: hyper's header timer
//! also runs between keep-alive requests, so it cannot give an idle keep-alive connection
//! longer than a slow header. Here a connection is in one of three states: *reading a
//! header* (from accept, or from the first byte after a response) cut after
//! [`ServeLimits::header_timeout`]; *serving* (a request in flight) never cut here, the
//! request timeout bounds it; *idle* (between keep-alive requests) cut after
//! [`ServeLimits::idle_timeout`].
//!
//! At the cap, the connection idle for longest (one that never finished a request first) is
//! cut to make room, so a pile of idle or slow connections cannot lock out a client that
//! sends a whole request; only when none is idle is the newcomer refused with a `503` and
//! closed. Refusals are logged at most once per [`LOG_EVERY`], with the count suppressed.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use parking_lot::Mutex;
use shared::tls::Tls;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// The connection limits of one HTTP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// A request header must be complete this long after the connection opens, or after its
    /// first byte on a kept-alive connection.
    pub header_timeout: Duration,
    /// A kept-alive connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// Connections this listener serves at once.
    pub max_connections: usize,
}

impl ServeLimits {
    /// The defaults the flags document.
    pub const DEFAULT: ServeLimits = ServeLimits {
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        max_connections: 8192,
    };
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits::DEFAULT
    }
}

/// How often a repeated refusal or accept error is logged; the rest are counted.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Back-off after an accept error, doubled up to [`ACCEPT_BACKOFF_MAX`]: out of descriptors
/// the listener stays readable, and accepting again at once would spin.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Descriptors the HTTP listeners of this process may hold at once: the soft open-files
/// limit less the reserve kept for the node's own outgoing connections, files and the data
/// plane. Cheap to clone; every listener of a process shares one.
#[derive(Debug, Clone)]
pub struct FdBudget {
    permits: Arc<Semaphore>,
    total: usize,
}

impl FdBudget {
    /// A budget of `total` descriptors.
    pub fn new(total: usize) -> FdBudget {
        FdBudget {
            permits: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Descriptors in the budget.
    pub fn total(&self) -> usize {
        self.total
    }
}

/// The smallest budget ever given to the HTTP listeners, whatever the limit: below it a
/// node could not serve its own health checks.
const MIN_BUDGET: usize = 64;

/// Raises this process's soft open-files limit to its hard limit (once per process; later
/// calls return the first budget), logs the figure, and returns the HTTP listeners' budget:
/// the limit less `reserve`. If the limit cannot be read, assumes the common 1 024.
pub fn raise_nofile_limit(reserve: usize) -> FdBudget {
    static BUDGET: OnceLock<FdBudget> = OnceLock::new();
    BUDGET
        .get_or_init(|| {
            use nix::sys::resource::{getrlimit, setrlimit, Resource};
            let limit = match getrlimit(Resource::RLIMIT_NOFILE) {
                Ok((soft, hard)) if soft < hard => {
                    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                        Ok(()) => {
                            tracing::info!(from = soft, to = hard, "raised the open-files limit");
                            hard
                        }
                        Err(e) => {
                            tracing::warn!(soft, hard, error = %e, "cannot raise the open-files limit");
                            soft
                        }
                    }
                }
                Ok((soft, _)) => {
                    tracing::info!(limit = soft, "open-files limit");
                    soft
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the open-files limit; assuming 1024");
                    1024
                }
            };
            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            let total = limit.saturating_sub(reserve).max(MIN_BUDGET);
            tracing::info!(
                budget = total,
                reserve,
                "descriptors the HTTP listeners may hold"
            );
            FdBudget::new(total)
        })
        .clone()
}

/// Serves `router` on `listener` until `shutdown`, within `limits` and `budget`, over TLS
/// if `tls` is given; each request carries its peer's address (axum's `ConnectInfo`) and,
/// over TLS, a [`TlsPeer`]. On shutdown stops accepting,
/// asks every connection to finish its request and close, and resolves when all have (the
/// caller bounds that with its grace period). Upgraded connections (WebSockets) are no
/// longer this loop's once upgraded, but keep their slot until they close.
///
/// # Errors
/// None today: accept errors are logged and retried after a back-off; the result keeps the
/// shape of `axum::serve`'s.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    budget: FdBudget,
    tls: Option<Tls>,
    shutdown: CancellationToken,
    what: &'static str,
) -> io::Result<()> {
    let slots = Arc::new(Slots::new(limits.max_connections, budget));
    let connections = TaskTracker::new();
    let refusals = Hush::default();
    let accept_errors = Hush::default();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff = ACCEPT_BACKOFF_MIN;
                accepted
            }
            Err(e) => {
                accept_errors.warn(|suppressed| {
                    tracing::warn!(listener = what, error = %e, suppressed, backoff = ?backoff, "accept failed; backing off");
                });
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // Admission is immediate (a free slot, or an idle connection's handed over), so a
        // full listener never holds descriptors outside its budget waiting for room.
        let Some(slot) = slots.admit() else {
            refusals.warn(|suppressed| {
                tracing::warn!(listener = what, %peer, suppressed, limit = slots.limit, "connection refused: too many connections");
            });
            // A TLS client could not read a plaintext answer: it is only closed.
            if tls.is_none() {
                refuse(&stream);
            }
            continue;
        };
        let (router, tls, shutdown) = (router.clone(), tls.clone(), shutdown.clone());
        connections.spawn(serve_connection(
            stream, peer, slot, router, limits, tls, shutdown,
        ));
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

/// The minimal answer to a connection over the cap: a `503` that says why, then close. One
/// non-blocking write into the new socket's empty buffer: a refused client holds nothing.
fn refuse(stream: &TcpStream) {
    const BODY: &str = "{\"error\":\"too many connections\"}";
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-type: application/json\r\nretry-after: 1\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = stream.try_write(answer.as_bytes());
}

/// What a request learns of its connection's TLS: whether the peer proved a node
/// certificate for its own address ([`shared::tls::is_node`]). Absent on a plaintext
/// listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsPeer {
    /// The peer presented a certificate from the cluster CA naming its address.
    pub is_node: bool,
}

/// Serves one admitted connection until it closes, a limit cuts it or shutdown finishes it;
/// over TLS if `tls` is given, after a handshake bounded by its timeout.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    router: Router,
    limits: ServeLimits,
    tls: Option<Tls>,
    shutdown: CancellationToken,
) {
    let activity = slot.activity.clone();
    // Only a plain connection's socket can be handed over.
    let handover = Handover::default();
    let watched = Watched {
        inner: Some(stream),
        activity: activity.clone(),
        slot: Some(slot),
        handover: tls.is_none().then(|| handover.0.clone()),
    };
    let Some(tls) = tls else {
        let peer_is = PeerIs::Plain(handover);
        drive(watched, peer, peer_is, activity, router, limits, shutdown).await;
        return;
    };
    match tls.accept(watched).await {
        Ok(stream) => {
            let certificates = stream.get_ref().1.peer_certificates();
            let peer_tls = TlsPeer {
                is_node: shared::tls::is_node(certificates, peer.ip()),
            };
            drive(
                stream,
                peer,
                PeerIs::Tls(peer_tls),
                activity,
                router,
                limits,
                shutdown,
            )
            .await;
        }
        Err(e) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            activity.detached.store(true, Ordering::Relaxed);
        }
    }
}

/// What a connection's requests learn of it besides the peer's address.
#[derive(Debug, Clone)]
enum PeerIs {
    /// Plain TCP: a handler may take the socket once upgraded.
    Plain(Handover),
    Tls(TlsPeer),
}

/// Serves HTTP on `io` (plain or TLS) with the connection's watchdog.
async fn drive<I>(
    io: I,
    peer: SocketAddr,
    peer_is: PeerIs,
    activity: Arc<Activity>,
    router: Router,
    limits: ServeLimits,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    let tracked = activity.clone();
    let service = router
        .map_request(
            move |mut req: axum::extract::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                match &peer_is {
                    PeerIs::Plain(handover) => {
                        req.extensions_mut().insert(handover.clone());
                    }
                    PeerIs::Tls(peer_tls) => {
                        req.extensions_mut().insert(*peer_tls);
                    }
                }
                req.map(axum::body::Body::new)
            },
        )
        .map_future(move |future| Tracked {
            inner: future,
            _guard: tracked.request_started(),
        });
    let mut builder = Builder::new(TokioExecutor::new());
    // WebSockets over HTTP/2 use the CONNECT protocol, as axum::serve enables.
    builder.http2().enable_connect_protocol();
    let conn = builder.serve_connection_with_upgrades(io, TowerToHyperService::new(service));
    let mut conn = std::pin::pin!(conn);
    let mut finishing = false;
    loop {
        tokio::select! {
            biased;
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
                }
                break;
            }
            () = shutdown.cancelled(), if !finishing => {
                finishing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = activity.cut.cancelled() => {
                tracing::debug!(%peer, "idle HTTP connection cut to make room");
                break;
            }
            cut = activity.watchdog(limits) => {
                tracing::debug!(%peer, reason = cut, "HTTP connection cut");
                break;
            }
        }
    }
    // Whatever was upgraded out of the connection keeps its slot, but is no longer idle
    // here: it must not be evicted as if it were.
    activity.detached.store(true, Ordering::Relaxed);
}

/// What one connection has been doing, shared by its socket, its requests and its
/// watchdog. Times are milliseconds since the connection opened.
#[derive(Debug)]
struct Activity {
    opened: Instant,
    /// When the header being read began, or [`NOT_READING`] while idle or serving.
    header_since: AtomicU64,
    /// When the last request was answered (the start of idleness).
    idle_since: AtomicU64,
    in_flight: AtomicUsize,
    answered: AtomicU64,
    /// Set once hyper gave the connection up (closed or upgraded).
    detached: AtomicBool,
    /// Cancelled to evict the connection.
    cut: CancellationToken,
    /// The connection's place; taken by whoever evicts it.
    permits: Mutex<Option<Permits>>,
}

const NOT_READING: u64 = u64::MAX;

impl Activity {
    fn new() -> Activity {
        Activity {
            opened: Instant::now(),
            // The header timer runs from accept: a client that sends nothing is cut too.
            header_since: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            answered: AtomicU64::new(0),
            detached: AtomicBool::new(false),
            cut: CancellationToken::new(),
            permits: Mutex::new(None),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    /// Bytes arrived: on an idle connection they begin the next header. Once a header has
    /// begun (or the connection was upgraded and its frames keep arriving), a read only
    /// looks: no clock, no write.
    fn on_read(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.header_since.load(Ordering::Relaxed) == NOT_READING
        {
            let _ = self.header_since.compare_exchange(
                NOT_READING,
                self.now_ms(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// A request's header is complete and its handler starts; the guard ends it.
    fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.header_since.store(NOT_READING, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Resolves with the reason once a limit says the connection must go. Sleeps until the
    /// nearest deadline and re-reads the state: activity only ever moves deadlines later.
    async fn watchdog(&self, limits: ServeLimits) -> &'static str {
        loop {
            let now = self.now_ms();
            let (deadline, reason) = if self.in_flight.load(Ordering::Relaxed) > 0 {
                (now + millis(limits.idle_timeout), "")
            } else {
                match self.header_since.load(Ordering::Relaxed) {
                    NOT_READING => (
                        self.idle_since.load(Ordering::Relaxed) + millis(limits.idle_timeout),
                        "idle timeout",
                    ),
                    since => (since + millis(limits.header_timeout), "header timeout"),
                }
            };
            if deadline <= now && !reason.is_empty() {
                return reason;
            }
            tokio::time::sleep_until(self.opened + Duration::from_millis(deadline.max(now + 1)))
                .await;
        }
    }

    /// Eviction order: connections that never finished a request first, then by how long
    /// they have been idle; `None` if not evictable (serving, or handed over).
    fn eviction_rank(&self) -> Option<(bool, u64)> {
        if self.detached.load(Ordering::Relaxed)
            || self.in_flight.load(Ordering::Relaxed) > 0
            || self.cut.is_cancelled()
        {
            return None;
        }
        let since = match self.header_since.load(Ordering::Relaxed) {
            NOT_READING => self.idle_since.load(Ordering::Relaxed),
            since => since,
        };
        let opened_ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(0);
        // Older (smaller absolute start) sorts first; absolute = now - (elapsed - since).
        let started_ago = opened_ms.saturating_sub(since);
        Some((
            self.answered.load(Ordering::Relaxed) > 0,
            u64::MAX - started_ago,
        ))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2)
}

/// A request in flight on a connection; dropped when its response is ready (or the request
/// is abandoned), which starts the connection's idle time.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        a.idle_since.store(a.now_ms(), Ordering::Relaxed);
        a.answered.fetch_add(1, Ordering::Relaxed);
        a.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request's future, with the guard that marks it in flight.
struct Tracked<F> {
    inner: F,
    _guard: InFlight,
}

impl<F: std::future::Future + Unpin> std::future::Future for Tracked<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        Pin::new(&mut self.get_mut().inner).poll(cx)
    }
}

/// A listener's admitted connections: its cap, the process's descriptor budget, and what
/// each connection is doing, to choose whom to evict.
#[derive(Debug)]
struct Slots {
    limit: usize,
    own: Arc<Semaphore>,
    budget: FdBudget,
    open: Mutex<HashMap<u64, Arc<Activity>>>,
    next_id: AtomicU64,
}

impl Slots {
    fn new(limit: usize, budget: FdBudget) -> Slots {
        Slots {
            limit,
            own: Arc::new(Semaphore::new(limit)),
            budget,
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        }
    }

    /// A slot for a new connection: a free one, else the one of the connection idle
    /// longest, which is cut; `None` if every connection is busy.
    fn admit(self: &Arc<Self>) -> Option<Slot> {
        let permits = match self.own.clone().try_acquire_owned() {
            Ok(own) => match self.budget.permits.clone().try_acquire_owned() {
                Ok(fd) => Some((own, fd)),
                // Out of descriptors: give back the listener's permit and make room.
                Err(_) => None,
            },
            Err(_) => None,
        };
        let permits = match permits {
            Some(permits) => permits,
            None => self.evict_one()?,
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity::new());
        *activity.permits.lock() = Some(permits);
        self.open.lock().insert(id, activity.clone());
        Some(Slot {
            id,
            slots: self.clone(),
            activity,
        })
    }

    /// Cuts the connection idle longest and hands its permits over: the newcomer need not
    /// wait for the victim's task to close it (its descriptor outlives its permit for a
    /// turn of the event loop). `None` if every connection is busy.
    fn evict_one(&self) -> Option<Permits> {
        let open = self.open.lock();
        let (_, victim) = open
            .values()
            .filter_map(|a| Some((a.eviction_rank()?, a)))
            .min_by_key(|(rank, _)| *rank)?;
        let permits = victim.permits.lock().take()?;
        victim.cut.cancel();
        Some(permits)
    }
}

/// A connection's place in its listener's cap and in the descriptor budget.
type Permits = (OwnedSemaphorePermit, OwnedSemaphorePermit);

/// One admitted connection's place: its permits and its entry, released when its socket
/// (possibly upgraded, so held by a WebSocket task) is dropped.
#[derive(Debug)]
struct Slot {
    id: u64,
    slots: Arc<Slots>,
    activity: Arc<Activity>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.open.lock().remove(&self.id);
        self.activity.permits.lock().take();
    }
}

/// A plain connection's socket, for a handler that takes it out of hyper once the
/// connection is upgraded (the heartbeat channel does: [`Handover::take`]). Each request on a
/// plain TCP connection carries one in its extensions; over TLS there is none.
#[derive(Debug, Clone, Default)]
pub struct Handover(Arc<HandoverCell>);

#[derive(Debug, Default)]
struct HandoverCell {
    /// Set by [`Handover::take`]: the socket is kept, not closed, when dropped.
    wanted: AtomicBool,
    taken: Mutex<Option<Detached>>,
}

/// A connection's socket taken out of the async runtime, with its place in its listener's
/// cap and in the descriptor budget, which it keeps until dropped.
#[derive(Debug)]
pub struct Detached {
    /// The socket, non-blocking, registered with no runtime.
    pub stream: std::net::TcpStream,
    /// The connection's slot; dropping it gives the slot back.
    pub slot: HeldSlot,
}

/// A detached connection's slot (see [`Detached`]).
#[derive(Debug)]
pub struct HeldSlot {
    _slot: Option<Slot>,
}

impl Handover {
    /// Takes the connection's socket out of `holder`, the upgraded connection that owns it
    /// (hyper's `Upgraded`, or a wrapper of it): `holder` is dropped, and instead of closing
    /// the socket, the connection hands it over. `None` if `holder` was not the socket's
    /// last owner, or the runtime would not let the socket go; the socket is closed then.
    pub fn take<H>(self, holder: H) -> Option<Detached> {
        self.0.wanted.store(true, Ordering::SeqCst);
        drop(holder);
        self.0.taken.lock().take()
    }
}

/// The socket of a connection, noting when bytes arrive and holding the connection's slot.
/// Both are options only so that a [`Handover`] can move them out when it is dropped.
#[derive(Debug)]
struct Watched {
    inner: Option<TcpStream>,
    activity: Arc<Activity>,
    slot: Option<Slot>,
    handover: Option<Arc<HandoverCell>>,
}

impl Watched {
    fn stream(&mut self) -> io::Result<&mut TcpStream> {
        self.inner
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let Some(cell) = self.handover.take() else {
            return;
        };
        if !cell.wanted.load(Ordering::SeqCst) {
            return;
        }
        let Some(stream) = self.inner.take() else {
            return;
        };
        match stream.into_std() {
            Ok(stream) => {
                *cell.taken.lock() = Some(Detached {
                    stream,
                    slot: HeldSlot {
                        _slot: self.slot.take(),
                    },
                });
            }
            Err(e) => tracing::debug!(error = %e, "could not hand an upgraded connection over"),
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(this.stream()?).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.on_read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().stream()?).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().stream()?).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().stream()?).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().stream()?).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|s| s.is_write_vectored())
    }
}

/// A warning repeated by many clients, logged at most once per [`LOG_EVERY`] with the
/// number of occurrences not logged since.
#[derive(Debug, Default)]
struct Hush {
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl Hush {
    fn warn(&self, log: impl FnOnce(u64)) {
        let now = Instant::now();
        let mut last = self.last.lock();
        if last.is_some_and(|at| now.duration_since(at) < LOG_EVERY) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(now);
        drop(last);
        log(self.suppressed.swap(0, Ordering::Relaxed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use shared::test_support::pki::TestCa;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn who(req: axum::extract::Request) -> &'static str {
        match req.extensions().get::<TlsPeer>() {
            Some(TlsPeer { is_node: true }) => "node",
            Some(TlsPeer { is_node: false }) => "anyone",
            None => "plaintext",
        }
    }

    /// `GET /who` over `stream`; the answer's body.
    async fn ask<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) -> String {
        stream
            .write_all(b"GET /who HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        answer
            .rsplit("\r\n\r\n")
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    #[tokio::test]
    async fn over_tls_requests_learn_whether_the_peer_is_a_node_and_plaintext_gets_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new(dir.path());
        let timeout = Duration::from_millis(300);
        let server_tls = Tls::load(&ca.node("server"), timeout).unwrap();
        let node_tls = Tls::load(&ca.node("node"), timeout).unwrap();

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let served = tokio::spawn(serve(
            listener,
            Router::new().route("/who", get(who)),
            ServeLimits::DEFAULT,
            FdBudget::new(64),
            Some(server_tls),
            stop.clone(),
            "test",
        ));

        let tcp = TcpStream::connect(addr).await.unwrap();
        let stream = node_tls.connect(addr.ip(), tcp).await.unwrap();
        assert_eq!(ask(stream).await, "node");

        let anonymous = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(shared::tls::roots(&dir.path().join("ca.pem")).unwrap())
        .with_no_client_auth();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let stream = tokio_rustls::TlsConnector::from(Arc::new(anonymous))
            .connect(
                rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
                tcp,
            )
            .await
            .unwrap();
        assert_eq!(ask(stream).await, "anyone");

        // Plaintext HTTP gets no HTTP answer, and the connection is closed.
        let mut plain = TcpStream::connect(addr).await.unwrap();
        plain
            .write_all(b"GET /who HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer))
            .await
            .expect("plaintext connection closed")
            .ok();
        assert!(!String::from_utf8_lossy(&answer).contains("HTTP/1.1"));
        // A silent one is closed by the handshake timeout.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
            .await
            .expect("silent connection closed by the handshake timeout");
        assert!(matches!(read, Ok(0) | Err(_)));

        stop.cancel();
        served.await.unwrap().unwrap();
    }
}
