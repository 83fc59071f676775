//! A node's record in the [`HealthTracker`](super::tracker::HealthTracker), and the ids and
//! handle it is reached by. The tracker's rules live in [`super::tracker`]; this file owns
//! only the layout.
//!
//! Each record is its own `Arc<Mutex<NodeRecord>>` in the tracker's map: the map's shard
//! locks guard only which nodes there are (a node's first heartbeat, the sweeper forgetting
//! it), each record's own lock guards what it says. So a [`NodeHandle`] (a node's heartbeat
//! channel keeps one) reaches the record without hashing the id or probing the map: at
//! 10 000 nodes beating once a second, the map's slot and key are cold for every heartbeat,
//! and finding them was a tenth of the coordinator's cost per heartbeat.
//!
//! A record taken out of the map is marked `forgotten`, under its shard's write lock and
//! its own lock at once, and is never written again: a handle that finds its record
//! forgotten is stale, and its holder looks the node up again. Locks are taken shard first,
//! record second, never the other way round.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use shared::NodeAddress;
use smallvec::SmallVec;
use tokio::time::Instant;

use super::node_state::{NodeState, Transition};
use crate::wire::heartbeat::{NodeType, MAX_BOOT_ID};
use crate::wire::metrics::Metrics;

/// A record as the tracker's map holds it.
pub(super) type Slot = Arc<Mutex<NodeRecord>>;

/// What the tracker knows of one node.
#[derive(Debug)]
pub(super) struct NodeRecord {
    /// Taken out of the map: nothing may change this record any more (see the module docs).
    pub(super) forgotten: bool,
    pub(super) node_type: NodeType,
    pub(super) address: NodeAddress,
    pub(super) state: NodeState,
    pub(super) first_seen: SystemTime,
    pub(super) first_seen_at: Instant,
    pub(super) last_seen: SystemTime,
    /// Last heartbeat, pushed forward by the sweeper's own stalls.
    pub(super) last_heard: Instant,
    pub(super) heartbeats: u64,
    /// The run of the node its heartbeats come from.
    pub(super) boot_id: BootId,
    /// Boot ids this node replaced, oldest first (at most `RETIRED_BOOTS`).
    pub(super) retired_boots: VecDeque<BootId>,
    /// The last `seq` accepted from `boot_id`.
    pub(super) seq: u64,
    pub(super) flaps: u32,
    /// When the node went DOWN or LEFT (and has not come back since), for forgetting it.
    pub(super) gone_since: Option<Instant>,
    pub(super) failed_since: Option<Instant>,
    pub(super) last_transition: Option<Transition>,
    pub(super) metrics: Metrics,
    /// When the last health-check event for this node went out.
    pub(super) last_check_event: Option<Instant>,
}

/// A boot id held in place, not behind a pointer: every heartbeat compares one, and at
/// 10 000 nodes beating once a second a heap copy of it is never in the cache when the
/// node's next heartbeat comes. A node's record keeps one, and so does its channel.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct BootId {
    len: u8,
    bytes: [u8; MAX_BOOT_ID],
}

impl BootId {
    /// `None` when `id` is longer than [`MAX_BOOT_ID`] (a heartbeat's validation refuses it).
    pub fn new(id: &str) -> Option<BootId> {
        let mut bytes = [0u8; MAX_BOOT_ID];
        bytes.get_mut(..id.len())?.copy_from_slice(id.as_bytes());
        Some(BootId {
            len: u8::try_from(id.len()).ok()?,
            bytes,
        })
    }

    /// The id as given.
    pub fn as_str(&self) -> &str {
        // Made from a `&str` whole, so always UTF-8.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl PartialEq<str> for BootId {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl std::fmt::Debug for BootId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

/// A node's id as the key of its record: one of up to [`INLINE_KEY`] bytes (any real
/// instance id) is held in the map's own slot (or the handle), so finding a node's record
/// compares the id without following a pointer to a heap copy, cold in the cache at 10 000
/// nodes beating once a second. Looked up by the id's bytes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) struct NodeKey(SmallVec<[u8; INLINE_KEY]>);

/// Bytes of a [`NodeKey`] held inline.
pub(super) const INLINE_KEY: usize = 32;

impl NodeKey {
    pub(super) fn new(id: &str) -> NodeKey {
        NodeKey(SmallVec::from_slice(id.as_bytes()))
    }

    pub(super) fn as_str(&self) -> &str {
        // Made from a `&str` whole, so always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::borrow::Borrow<[u8]> for NodeKey {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

/// One node's record, held by whoever records that node's heartbeats often (its heartbeat
/// channel), so each is recorded without finding the node in the map
/// ([`HealthTracker::record_through`](super::tracker::HealthTracker::record_through)).
/// Made by [`HealthTracker::record_and_hold`](super::tracker::HealthTracker::record_and_hold).
///
/// It holds the node's id inline: checking that a frame is this node's compares no cold heap
/// copy. A handle whose record was forgotten since is stale; the tracker notices and looks
/// the node up instead, so a stale handle never changes anything.
#[derive(Clone)]
pub struct NodeHandle {
    pub(super) key: NodeKey,
    pub(super) slot: Slot,
}

impl NodeHandle {
    /// The node's instance id.
    pub fn node_id(&self) -> &str {
        self.key.as_str()
    }

    /// Whether this is `node_id`'s handle.
    pub fn is_for(&self, node_id: &str) -> bool {
        self.key.0.as_slice() == node_id.as_bytes()
    }
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("NodeHandle").field(&self.key).finish()
    }
}
