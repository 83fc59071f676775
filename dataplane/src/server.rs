//! The accept loop: connection cap, accept back-off, graceful drain.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use codec::{Limits, Message, Style};
use shared::log_limit::{LogLimit, DEFAULT_INTERVAL};
use shared::warn_limited;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::access::{ReadAccess, RefusalSink};
use crate::budget::Budget;
use crate::config::DataPlaneConfig;
use crate::connection::Connection;
use crate::identity::Identity;
use crate::shards::ShardStore;
use crate::state::Shared;
use crate::stats::Stats;
use crate::stream::{Movable, ServerStream};

/// Longest pause between failed `accept` calls (e.g. when out of file descriptors).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
/// How long a refused client gets to receive its error line before the socket is dropped.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_millis(500);

/// Refusals at the connection cap: a reconnect loop makes them at line rate, so at most one
/// line per interval, with the count held back.
static REFUSED_LOG: LogLimit = LogLimit::new("dataplane_connection_refused", DEFAULT_INTERVAL);

/// A data-plane server. Cheap to clone; clones share counters, shards and identity.
#[derive(Debug, Clone)]
pub struct DataPlane {
    shared: Arc<Shared>,
}

impl DataPlane {
    /// A server with the given (already validated) configuration and no shards.
    pub fn new(config: DataPlaneConfig) -> Self {
        DataPlane::with_store(config, ShardStore::new(), None)
    }

    /// A server that serves the shards in `store`. Without an identity it refuses every
    /// HELLO, and so every state-changing message.
    pub fn with_store(
        config: DataPlaneConfig,
        store: ShardStore,
        identity: Option<Identity>,
    ) -> Self {
        DataPlane::with_access(config, store, identity, ReadAccess::default())
    }

    /// [`DataPlane::with_store`] with reads protected as `access` says (DESIGN §13).
    pub fn with_access(
        config: DataPlaneConfig,
        store: ShardStore,
        identity: Option<Identity>,
        access: ReadAccess,
    ) -> Self {
        DataPlane {
            shared: Arc::new(Shared {
                config,
                stats: Stats::new(),
                store,
                identity,
                access,
                refusals: RefusalSink::new(),
                partial: Budget::new(config.partial_budget),
            }),
        }
    }

    /// Reports the reason of every refusal (a read before authenticating, a wrong TOKEN or
    /// AUTH, a state change without HELLO) to `sink`. Only the first sink set is kept.
    pub fn on_refusal(&self, sink: impl Fn(&'static str) + Send + Sync + 'static) {
        self.shared.refusals.set(Box::new(sink));
    }

    /// The shards this node holds.
    pub fn store(&self) -> &ShardStore {
        &self.shared.store
    }

    /// The server's live counters.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// The codec limits connections use.
    pub fn limits(&self) -> Limits {
        self.shared.config.limits
    }

    /// [`DataPlane::serve`] on a thread of its own, with a single-threaded runtime, and
    /// returns once the server has drained. Like Redis's event loop, every client connection
    /// then runs on that thread (and every authenticated node, with the tick engines it
    /// starts, on the node lane next to it): no task hops between worker threads and no
    /// thread wake-ups on the request path, and the HTTP planes on the caller's runtime can
    /// never delay a data-plane answer.
    ///
    /// # Errors
    /// The thread or its runtime cannot be created, or the listener cannot move to it.
    pub async fn serve_on_own_thread(
        &self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let server = self.clone();
        shared::own_thread::serve_on_own_thread(
            "data-plane",
            listener,
            move |listener| async move {
                server.serve(listener, shutdown).await;
                Ok(())
            },
        )
        .await
    }

    /// Serves `listener` until `shutdown` is cancelled, then waits up to the grace period for
    /// open connections to finish the request they are on.
    ///
    /// Accept errors never end the loop: they are logged and retried with back-off.
    pub async fn serve(&self, listener: TcpListener, shutdown: CancellationToken) {
        let config = self.shared.config;
        let permits = Arc::new(Semaphore::new(config.max_connections));
        let tracker = TaskTracker::new();
        // Without a lane (no thread to be had) nodes are served here like everyone else.
        let lane = NodeLane::start()
            .inspect_err(|e| warn!(error = %e, "no node lane; nodes share the client thread"))
            .ok();
        let mut backoff = Duration::from_millis(5);
        loop {
            let accepted = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (socket, peer) = match accepted {
                Ok(pair) => {
                    backoff = Duration::from_millis(5);
                    pair
                }
                Err(e) => {
                    warn!(error = %e, retry_in = ?backoff, "data plane accept failed");
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                    continue;
                }
            };
            // Small request/response exchanges: never let Nagle hold an answer back.
            if let Err(e) = socket.set_nodelay(true) {
                debug!(%peer, error = %e, "cannot set TCP_NODELAY");
            }
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                self.shared.stats.refused();
                warn_limited!(
                    REFUSED_LOG,
                    %peer,
                    limit = config.max_connections,
                    "connection refused: limit reached"
                );
                // A TLS client could not read a plaintext refusal: it is only closed.
                if self
                    .shared
                    .identity
                    .as_ref()
                    .is_none_or(|i| i.tls.is_none())
                {
                    tracker.spawn(refuse(socket, config.max_connections));
                }
                continue;
            };
            let shared = self.shared.clone();
            let token = shutdown.child_token();
            // Entered only where the connection may log (see `Connection`), not on every
            // poll of its task.
            let span = tracing::info_span!("conn", %peer);
            let lane_handle = lane.as_ref().map(NodeLane::handle);
            let tasks = tracker.clone();
            tracker.spawn(async move {
                // The handshake runs here, not in the accept loop, so a slow client
                // holds only its own task (for at most the handshake timeout).
                let tls = shared.identity.as_ref().and_then(|i| i.tls.as_ref());
                let (socket, not_a_node) = match tls {
                    None => (ServerStream::Plain(socket), false),
                    Some(tls) => match tls
                        .accept(Movable::new(socket))
                        .instrument(span.clone())
                        .await
                    {
                        Ok(stream) => {
                            let certs = stream.get_ref().1.peer_certificates();
                            let node = shared::tls::is_node(certs, peer.ip());
                            (ServerStream::Tls(Box::new(stream)), !node)
                        }
                        Err(e) => {
                            span.in_scope(|| debug!(error = %e, "TLS handshake failed"));
                            drop(permit);
                            return;
                        }
                    },
                };
                shared.stats.opened();
                let connection = Connection::new(
                    socket,
                    shared.clone(),
                    lane_handle,
                    not_a_node,
                    span.clone(),
                );
                let Some((promoted, lane)) = connection.run(token.clone()).await else {
                    shared.stats.closed();
                    drop(permit);
                    return;
                };
                // An authenticated node: served from now on by the node lane, where no
                // client's requests compete with it (the permit goes along).
                tasks.spawn_on(
                    async move {
                        match promoted.resume(shared.clone()) {
                            Ok(connection) => {
                                let _ = connection.run(token).await;
                            }
                            Err(e) => debug!(error = %e, "node lane cannot take a node"),
                        }
                        shared.stats.closed();
                        drop(permit);
                    }
                    .instrument(span),
                    &lane,
                );
            });
        }
        tracker.close();
        if tokio::time::timeout(config.grace, tracker.wait())
            .await
            .is_err()
        {
            warn!(
                open = tracker.len(),
                grace = ?config.grace,
                "data plane grace period ran out with connections still open"
            );
        } else {
            info!("data plane drained");
        }
    }
}

/// The node lane: a thread of its own with a single-threaded runtime, serving the data-plane
/// connections of authenticated nodes (peer border links, the coordinator's run and progress
/// reports) and the tick engines they start. Clients, however many and however busy, are
/// served on the accept thread, so they can delay a node's frame by no more than the kernel
/// does.
///
/// Dropping it stops the lane's runtime and every task on it.
struct NodeLane {
    handle: tokio::runtime::Handle,
    _stop: tokio_util::sync::DropGuard,
}

impl NodeLane {
    fn start() -> std::io::Result<NodeLane> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let span = tracing::Span::current();
        std::thread::Builder::new()
            .name("colony-data-nodes".into())
            .spawn(move || {
                let _entered = span.enter();
                runtime.block_on(stopped.cancelled());
            })?;
        Ok(NodeLane {
            handle,
            _stop: stop.drop_guard(),
        })
    }

    fn handle(&self) -> tokio::runtime::Handle {
        self.handle.clone()
    }
}

/// Tells an over-the-limit client why it is turned away, then closes.
async fn refuse(mut socket: TcpStream, limit: usize) {
    let message = Message::error(
        "too_many_connections",
        format!("server is at its limit of {limit} connections; try again later"),
    );
    // The client has sent nothing yet, so its framing is unknown: a JSON line is what
    // `nc` shows legibly, and what a binary client's decoder reports rather than misreads.
    let mut line = BytesMut::new();
    if codec::text::write_line(&message, Style::Json, &mut line).is_err() {
        return;
    }
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
        socket.write_all(&line).await?;
        socket.shutdown().await
    })
    .await;
}
