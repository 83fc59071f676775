//! [`PeerSet`]: authenticated outgoing links to the backends holding neighbouring shards.
//!
//! The tick engine writes each link itself (no writer task: one task hop fewer per border on
//! the tick's critical path); a reader task per link watches for refusals. A link that breaks
//! or is refused marks the whole set failed, which the tick engine turns into a visible run
//! failure instead of a hang.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use codec::{CodecError, ColonyCodec, Decoded, Message};
use shared::topology::ClusterTopology;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::codec::{Decoder, Encoder};
use tracing::debug;

use crate::client::{Client, ClientError};
use crate::identity::Identity;

/// How long connecting to a peer may take, retries included.
const CONNECT_DEADLINE: Duration = Duration::from_secs(5);

/// Why a link to a peer backend could not be made, or broke. Clone, so the first failure can
/// be kept for every later caller; the causes are shared behind `Arc`s for that.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    /// The topology names no backend with this instance id.
    #[error("peer {peer} is not in the topology")]
    NotInTopology {
        /// The peer's instance id.
        peer: String,
    },
    /// Connecting and authenticating kept failing until the connect deadline.
    #[error("cannot reach peer {peer} at {address}: {source}")]
    Unreachable {
        /// The peer's instance id.
        peer: String,
        /// Its data-plane address.
        address: String,
        /// The last attempt's failure.
        source: Arc<ClientError>,
    },
    /// A border for a peer this set has no link to.
    #[error("no link to peer {peer}")]
    NoLink {
        /// The peer's instance id.
        peer: String,
    },
    /// A border did not fit in a frame.
    #[error("cannot encode a border for peer {peer}: {source}")]
    Encode {
        /// The peer's instance id.
        peer: String,
        /// What the codec refused.
        source: Arc<CodecError>,
    },
    /// Writing to or reading from the link failed.
    #[error("lost connection to peer {peer}: {source}")]
    Lost {
        /// The peer's instance id.
        peer: String,
        /// The socket's error.
        source: Arc<std::io::Error>,
    },
    /// The peer answered a border with an error frame.
    #[error("peer {peer} refused a border: {code}: {message}")]
    Refused {
        /// The peer's instance id.
        peer: String,
        /// The error frame's code.
        code: String,
        /// The error frame's message.
        message: String,
    },
    /// The peer sent bytes that do not decode.
    #[error("bad frame from peer {peer}: {source}")]
    BadFrame {
        /// The peer's instance id.
        peer: String,
        /// What the codec found.
        source: Arc<CodecError>,
    },
    /// The peer closed the link.
    #[error("peer {peer} closed the connection")]
    Closed {
        /// The peer's instance id.
        peer: String,
    },
}

/// Links to every peer backend of one colony on this backend.
#[derive(Debug)]
pub struct PeerSet {
    links: HashMap<String, tokio::sync::Mutex<Link>>,
    failure: watch::Receiver<Option<PeerError>>,
    failure_tx: watch::Sender<Option<PeerError>>,
}

/// The writing side of one link.
struct Link {
    socket: tokio::io::WriteHalf<crate::client::Socket>,
    codec: ColonyCodec,
    buf: BytesMut,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").finish_non_exhaustive()
    }
}

impl PeerSet {
    /// Connects and authenticates to each of `peers` (instance ids in `topology`).
    ///
    /// # Errors
    /// [`PeerError::NotInTopology`] or [`PeerError::Unreachable`], naming the peer.
    pub async fn connect<'a>(
        topology: &ClusterTopology,
        peers: impl Iterator<Item = &'a String>,
        identity: &Identity,
    ) -> Result<PeerSet, PeerError> {
        let (failure_tx, failure) = watch::channel(None);
        let mut links = HashMap::new();
        for peer in peers {
            let address = topology
                .backend(peer)
                .ok_or_else(|| PeerError::NotInTopology { peer: peer.clone() })?
                .address
                .to_internal_address();
            let client = connect(&address, identity)
                .await
                .map_err(|e| PeerError::Unreachable {
                    peer: peer.clone(),
                    address: address.clone(),
                    source: Arc::new(e),
                })?;
            let (socket, leftover, codec) = client.into_parts();
            let (read, write) = tokio::io::split(socket);
            tokio::spawn(reader(
                peer.clone(),
                read,
                leftover,
                codec.clone(),
                failure_tx.clone(),
            ));
            let link = Link {
                socket: write,
                codec,
                buf: BytesMut::with_capacity(16 * 1024),
            };
            links.insert(peer.clone(), tokio::sync::Mutex::new(link));
        }
        Ok(PeerSet {
            links,
            failure,
            failure_tx,
        })
    }

    /// Writes `message` to `peer`.
    ///
    /// # Errors
    /// An earlier failure of any link, or this link is gone (which also marks the set
    /// failed), or the message does not fit a frame.
    pub async fn send(&self, peer: &str, message: &Message) -> Result<(), PeerError> {
        self.check()?;
        let mut link = self
            .links
            .get(peer)
            .ok_or_else(|| PeerError::NoLink {
                peer: peer.to_owned(),
            })?
            .lock()
            .await;
        let link = &mut *link;
        link.buf.clear();
        link.codec
            .encode(message, &mut link.buf)
            .map_err(|e| PeerError::Encode {
                peer: peer.to_owned(),
                source: Arc::new(e),
            })?;
        // The flush sends what TLS buffered; on TCP it does nothing.
        let written = async {
            link.socket.write_all(&link.buf).await?;
            link.socket.flush().await
        };
        if let Err(e) = written.await {
            let error = PeerError::Lost {
                peer: peer.to_owned(),
                source: Arc::new(e),
            };
            fail(&self.failure_tx, error.clone());
            return Err(error);
        }
        Ok(())
    }

    /// Fails if any link has failed.
    ///
    /// # Errors
    /// The first link failure.
    pub fn check(&self) -> Result<(), PeerError> {
        match &*self.failure.borrow() {
            Some(reason) => Err(reason.clone()),
            None => Ok(()),
        }
    }

    /// Resolves when a link fails (never, if none does).
    pub async fn failed(&self) {
        let mut rx = self.failure.clone();
        if rx.wait_for(Option::is_some).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Connects and authenticates, retrying until [`CONNECT_DEADLINE`]: a neighbour may still be
/// starting. The error is the last attempt's.
async fn connect(address: &str, identity: &Identity) -> Result<Client, ClientError> {
    let deadline = tokio::time::Instant::now() + CONNECT_DEADLINE;
    let mut pause = Duration::from_millis(20);
    loop {
        let attempt = async {
            let mut client =
                Client::connect_tls(address, codec::Limits::default(), identity.tls.as_ref())
                    .await?;
            client
                .authenticate(&identity.instance_id, &identity.secret)
                .await?;
            Ok::<_, ClientError>(client)
        };
        match attempt.await {
            Ok(client) => return Ok(client),
            Err(e) if tokio::time::Instant::now() + pause >= deadline => return Err(e),
            Err(e) => {
                debug!(%address, error = %e, "peer not ready; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
        }
    }
}

/// Reads one link until it breaks: acks are dropped, an error frame or a broken stream marks
/// the set failed.
async fn reader(
    peer: String,
    mut socket: tokio::io::ReadHalf<crate::client::Socket>,
    mut buf: BytesMut,
    mut codec: ColonyCodec,
    failure: watch::Sender<Option<PeerError>>,
) {
    loop {
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(Decoded::Message(Message::HaloAck { .. }, _))) => {}
                Ok(Some(Decoded::Message(Message::Error { code, message }, _))) => {
                    fail(
                        &failure,
                        PeerError::Refused {
                            peer,
                            code,
                            message,
                        },
                    );
                    return;
                }
                Ok(Some(other)) => debug!(%peer, ?other, "unexpected message from peer"),
                Ok(None) => break,
                Err(e) => {
                    let source = Arc::new(e);
                    fail(&failure, PeerError::BadFrame { peer, source });
                    return;
                }
            }
        }
        match socket.read_buf(&mut buf).await {
            Ok(0) => {
                fail(&failure, PeerError::Closed { peer });
                return;
            }
            Ok(_) => {}
            Err(e) => {
                let source = Arc::new(e);
                fail(&failure, PeerError::Lost { peer, source });
                return;
            }
        }
    }
}

/// Keeps the first failure only: later ones are its consequences.
fn fail(failure: &watch::Sender<Option<PeerError>>, reason: PeerError) {
    failure.send_if_modified(|current| {
        if current.is_none() {
            *current = Some(reason);
            true
        } else {
            false
        }
    });
}
