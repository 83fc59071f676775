//! Colony's data plane: the framed TCP server every node runs, and the binary client.
//!
//! Owns sockets and connection policy (limits, idle timeout, connection cap, graceful drain);
//! the bytes-to-messages work is `codec`'s. One task per connection; each connection answers
//! its requests in order, batching the answers of a pipelined burst into one write.

mod client;
mod cmd;
mod config;
mod connection;
mod engine;
mod peers;
mod server;
mod shards;
mod stats;

pub use client::{Client, ClientError};
pub use config::{ConfigError, DataPlaneConfig};
pub use engine::{Engine, EngineState, Target};
pub use server::DataPlane;
pub use shards::{LocalColony, ShardFigures, ShardSlot, ShardStore};
pub use stats::Stats;

use std::sync::Arc;

use shared::secret::ClusterSecret;

/// Who this node is on the data plane: the id it authenticates as and the cluster secret.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Instance id (`coordinator`, `backend_9000`, …).
    pub instance_id: String,
    /// The cluster secret, for HELLO in both directions.
    pub secret: Arc<ClusterSecret>,
}
