//! [`TopologyError`]: why a topology could not be built, validated or deserialized.

use super::ShardCoord;

/// Errors building, validating or deserializing a topology.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    /// A dimension is zero or too large; `field` names it as it appears in JSON.
    #[error("invalid {field}: {reason}")]
    InvalidDimension {
        /// The offending field (or product of fields).
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// No backend to place shards on.
    #[error("no backends to place shards on")]
    NoBackends,
    /// A simulation setting is out of range; `field` names it as it appears in JSON.
    #[error("invalid {field}: {reason}")]
    InvalidSimulation {
        /// The offending field.
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// The colony id is empty, too long or contains control characters.
    #[error("invalid colony_id: {0}")]
    InvalidColonyId(&'static str),
    /// An instance id is empty, too long or contains control characters.
    #[error("invalid instance_id {instance_id:?}: {reason}")]
    InvalidInstanceId {
        /// The offending id.
        instance_id: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// Two backends share an instance id.
    #[error("backend {0:?} is listed twice")]
    DuplicateInstance(String),
    /// Two backends share a data-plane endpoint (IP and internal port).
    #[error("backends {first:?} and {second:?} share the endpoint {endpoint}")]
    DuplicateEndpoint {
        /// The first backend listed.
        first: String,
        /// The second backend listed.
        second: String,
        /// `ip:internal_port`.
        endpoint: String,
    },
    /// A backend has the coordinator's data-plane endpoint.
    #[error("backend {0:?} has the coordinator's endpoint")]
    CoordinatorIsBackend(String),
    /// A placement names a shard outside the world.
    #[error("shard {0} is outside the world")]
    ShardOutOfRange(ShardCoord),
    /// A shard is placed more than once.
    #[error("shard {0} is placed more than once")]
    ShardPlacedTwice(ShardCoord),
    /// A shard is not placed at all.
    #[error("shard {0} is not placed on any backend")]
    ShardUnplaced(ShardCoord),
    /// A shard is placed on a backend the topology does not list.
    #[error("shard {shard} is placed on unknown backend {instance_id:?}")]
    UnknownBackend {
        /// The shard.
        shard: ShardCoord,
        /// The unlisted backend.
        instance_id: String,
    },
}
