//! [`Shared`]: the state every connection of one server shares (configuration, counters, the
//! shard store and the node's identity).
//!
//! It has a file of its own so that the accept loop, the connections and the command handlers
//! all depend on it, and none of them on another for it: `server` → `connection` → `cmd` →
//! `state`, one way.

use crate::access::{ReadAccess, RefusalSink};
use crate::budget::Budget;
use crate::config::DataPlaneConfig;
use crate::identity::Identity;
use crate::shards::ShardStore;
use crate::stats::Stats;

/// State every connection of one server shares.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Limits and timeouts, validated before the server was built.
    pub(crate) config: DataPlaneConfig,
    /// The server's live counters.
    pub(crate) stats: Stats,
    /// The shards this node holds.
    pub(crate) store: ShardStore,
    /// Without one, every HELLO (and so every state-changing message) is refused.
    pub(crate) identity: Option<Identity>,
    /// Who may read without authenticating.
    pub(crate) access: ReadAccess,
    /// Where refusals are reported.
    pub(crate) refusals: RefusalSink,
    /// Bytes of partly received requests, over all unauthenticated connections.
    pub(crate) partial: Budget,
}
