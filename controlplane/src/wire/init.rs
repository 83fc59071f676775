//! The body and answer of `POST /init-colony-shard` (DESIGN §4): the coordinator sends one
//! per shard when it starts a colony, and the backend's answer carries the shard's tick-0
//! figures. The coordinator ([`crate::coordinator::colony`]) writes the request and reads
//! the answer; the backend's handler ([`crate::control`]) does the opposite.

use serde::{Deserialize, Serialize};
use shared::token::InitToken;
use shared::topology::ShardCoord;

/// The body of `POST /init-colony-shard`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitColonyShard {
    /// The shard to build.
    pub shard: ShardCoord,
    /// The colony's topology; required on a colony's first init, ignored after (kept as raw
    /// JSON so that an invalid one gets the `Error` answer, not a generic 400).
    #[serde(default)]
    pub topology: Option<serde_json::Value>,
    /// The coordinator's signed permission.
    pub token: InitToken,
}

/// The answer of `POST /init-colony-shard`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum InitColonyShardResponse {
    /// The shard is built at tick 0.
    Ok {
        /// The colony.
        colony_id: String,
        /// The shard.
        shard: ShardCoord,
        /// Its live cells.
        population: u64,
        /// Its fingerprint, as a decimal string.
        fingerprint: String,
        /// True when the topology came from this backend's cache.
        topology_cached: bool,
    },
    /// The request was authentic but could not be served.
    Error {
        /// Why.
        message: String,
    },
}
