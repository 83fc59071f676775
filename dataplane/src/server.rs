//! The accept loop: connection cap, accept back-off, graceful drain.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use codec::{Limits, Message, Style};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::access::{ReadAccess, RefusalSink};
use crate::client::Socket;
use crate::config::DataPlaneConfig;
use crate::connection::Connection;
use crate::identity::Identity;
use crate::shards::ShardStore;
use crate::state::Shared;
use crate::stats::Stats;

/// Longest pause between failed `accept` calls (e.g. when out of file descriptors).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
/// How long a refused client gets to receive its error line before the socket is dropped.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_millis(500);

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
    /// returns once the server has drained. Like Redis's event loop, every connection (and
    /// every tick engine started from one) then runs on that thread: no task hops between
    /// worker threads and no thread wake-ups on the request path, and the HTTP planes on the
    /// caller's runtime can never delay a data-plane answer.
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
                warn!(%peer, limit = config.max_connections, "connection refused: limit reached");
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
            let span = tracing::info_span!("conn", %peer);
            tracker.spawn(
                async move {
                    // The handshake runs here, not in the accept loop, so a slow client
                    // holds only its own task (for at most the handshake timeout).
                    let tls = shared.identity.as_ref().and_then(|i| i.tls.as_ref());
                    let (socket, not_a_node): (Socket, bool) = match tls {
                        None => (Box::new(socket), false),
                        Some(tls) => match tls.accept(socket).await {
                            Ok(stream) => {
                                let certs = stream.get_ref().1.peer_certificates();
                                let node = shared::tls::is_node(certs, peer.ip());
                                (Box::new(stream), !node)
                            }
                            Err(e) => {
                                debug!(error = %e, "TLS handshake failed");
                                drop(permit);
                                return;
                            }
                        },
                    };
                    shared.stats.opened();
                    Connection::new(socket, shared.clone(), not_a_node)
                        .run(token)
                        .await;
                    shared.stats.closed();
                    drop(permit);
                }
                .instrument(span),
            );
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
