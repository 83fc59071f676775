//! The payloads of the recovery messages (DESIGN §14): a shard's cells as they travel between
//! nodes ([`ShardCells`]), what a node keeps ([`Held`], [`HeldCopies`]) and what it says about
//! the colony it is part of ([`ColonyInfo`]). Plain data; what the messages mean is in
//! [`crate::Message`], and what a node does with them is `dataplane`'s.

use serde::{Deserialize, Serialize};

/// One shard's cells at one tick: the whole shard, without margins, row by row, each row in
/// `ceil(width / 8)` bytes, least significant bit first (the byte form of a border block).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardCells {
    /// Shard column.
    pub x: u32,
    /// Shard row.
    pub y: u32,
    /// Cells per row.
    pub width: u32,
    /// Rows.
    pub height: u32,
    /// The cells.
    #[serde(with = "serde_bytes")]
    pub bits: Vec<u8>,
}

/// A shard's position, in the recovery messages' lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ShardRef {
    /// Shard column.
    pub x: u32,
    /// Shard row.
    pub y: u32,
}

/// How many shards a node keeps a replica of, for their owners, at one checkpoint tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// The checkpoint tick.
    pub tick: u64,
    /// Shards of other owners held at that tick.
    pub replicas: u32,
}

/// Every shard a node keeps a copy of at one checkpoint tick, its own included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldCopies {
    /// The checkpoint tick.
    pub tick: u64,
    /// The shards.
    pub shards: Vec<ShardRef>,
}

/// What a backend knows of the colony it is part of: enough for a restarted coordinator to
/// take the colony over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColonyInfo {
    /// The colony.
    pub colony_id: String,
    /// The placement this backend ticks in.
    pub epoch: u64,
    /// The newest epoch it was fenced at (above `epoch` when a re-placement was under way).
    pub fence: u64,
    /// That placement, as `GET /topology` shows it.
    pub topology: String,
    /// The newest consistent tick this backend was told.
    pub committed: u64,
    /// The tick its shards have reached.
    pub tick: u64,
    /// The tick it runs to.
    pub until_tick: u64,
    /// Figures every this many ticks.
    pub checkpoint_every: u64,
    /// `idle`, `running` or `failed`.
    pub state: String,
}
