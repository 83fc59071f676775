//! [`PeerSet`]: authenticated outgoing links to the backends holding neighbouring shards.
//!
//! The tick engine writes each link itself (no writer task: one task hop fewer per border on
//! the tick's critical path); a reader task per link watches for refusals. A link that breaks
//! or is refused marks the whole set failed, which the tick engine turns into a visible run
//! failure instead of a hang.

use std::collections::HashMap;
use std::time::Duration;

use bytes::BytesMut;
use codec::{ColonyCodec, Decoded, Message};
use shared::topology::ClusterTopology;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::codec::{Decoder, Encoder};
use tracing::debug;

use crate::client::Client;
use crate::identity::Identity;

/// How long connecting to a peer may take, retries included.
const CONNECT_DEADLINE: Duration = Duration::from_secs(5);

/// Links to every peer backend of one colony on this backend.
#[derive(Debug)]
pub struct PeerSet {
    links: HashMap<String, tokio::sync::Mutex<Link>>,
    failure: watch::Receiver<Option<String>>,
    failure_tx: watch::Sender<Option<String>>,
}

/// The writing side of one link.
#[derive(Debug)]
struct Link {
    socket: tokio::net::tcp::OwnedWriteHalf,
    codec: ColonyCodec,
    buf: BytesMut,
}

impl PeerSet {
    /// Connects and authenticates to each of `peers` (instance ids in `topology`).
    ///
    /// # Errors
    /// A sentence naming the peer that could not be reached or refused us.
    pub async fn connect<'a>(
        topology: &ClusterTopology,
        peers: impl Iterator<Item = &'a String>,
        identity: &Identity,
    ) -> Result<PeerSet, String> {
        let (failure_tx, failure) = watch::channel(None);
        let mut links = HashMap::new();
        for peer in peers {
            let address = topology
                .backend(peer)
                .ok_or_else(|| format!("peer {peer} is not in the topology"))?
                .address
                .to_internal_address();
            let client = connect(&address, identity)
                .await
                .map_err(|e| format!("cannot reach peer {peer} at {address}: {e}"))?;
            let (socket, leftover, codec) = client.into_parts();
            let (read, write) = socket.into_split();
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
    /// The link is gone (which also marks the set failed).
    pub async fn send(&self, peer: &str, message: &Message) -> Result<(), String> {
        self.check()?;
        let mut link = self
            .links
            .get(peer)
            .ok_or_else(|| format!("no link to peer {peer}"))?
            .lock()
            .await;
        let link = &mut *link;
        link.buf.clear();
        link.codec
            .encode(message, &mut link.buf)
            .map_err(|e| format!("cannot encode a border for peer {peer}: {e}"))?;
        if let Err(e) = link.socket.write_all(&link.buf).await {
            let reason = format!("lost connection to peer {peer}: {e}");
            fail(&self.failure_tx, reason.clone());
            return Err(reason);
        }
        Ok(())
    }

    /// Fails if any link has failed.
    ///
    /// # Errors
    /// The first link failure.
    pub fn check(&self) -> Result<(), String> {
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

async fn connect(address: &str, identity: &Identity) -> Result<Client, String> {
    let deadline = tokio::time::Instant::now() + CONNECT_DEADLINE;
    let mut pause = Duration::from_millis(20);
    loop {
        let attempt = async {
            let mut client = Client::connect(address).await.map_err(|e| e.to_string())?;
            client
                .authenticate(&identity.instance_id, &identity.secret)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(client)
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

async fn reader(
    peer: String,
    mut socket: tokio::net::tcp::OwnedReadHalf,
    mut buf: BytesMut,
    mut codec: ColonyCodec,
    failure: watch::Sender<Option<String>>,
) {
    loop {
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(Decoded::Message(Message::HaloAck { .. }, _))) => {}
                Ok(Some(Decoded::Message(Message::Error { code, message }, _))) => {
                    fail(
                        &failure,
                        format!("peer {peer} refused a border: {code}: {message}"),
                    );
                    return;
                }
                Ok(Some(other)) => debug!(%peer, ?other, "unexpected message from peer"),
                Ok(None) => break,
                Err(e) => {
                    fail(&failure, format!("bad frame from peer {peer}: {e}"));
                    return;
                }
            }
        }
        match socket.read_buf(&mut buf).await {
            Ok(0) => {
                fail(&failure, format!("peer {peer} closed the connection"));
                return;
            }
            Ok(_) => {}
            Err(e) => {
                fail(&failure, format!("lost connection to peer {peer}: {e}"));
                return;
            }
        }
    }
}

fn fail(failure: &watch::Sender<Option<String>>, reason: String) {
    failure.send_if_modified(|current| {
        if current.is_none() {
            *current = Some(reason);
            true
        } else {
            false
        }
    });
}
