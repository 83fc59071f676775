//! Colony's data plane: the framed TCP server every node runs, the binary client, and on a
//! backend the shards it holds and the tick engine that advances them, exchanging borders with
//! neighbouring backends over this same plane.
//!
//! Owns sockets and connection policy (limits, idle and incomplete-request timeouts,
//! backpressure, the node-wide budget for partly received requests, connection cap, graceful
//! drain); the bytes-to-messages work is `codec`'s. One task per connection; each connection
//! answers its requests in order, batching the answers of a pipelined burst into one write,
//! a bounded number per turn. A connection that authenticates as a node (HELLO/AUTH) moves to
//! the node lane, a thread of its own, so no client traffic delays the cluster's.
//!
//! Modules depend on each other one way (`scripts/module-cycles.sh`, run by `scripts/test.sh`, fails on a cycle):
//!
//! - serving: `server` (accept loop) → `connection` (bytes ↔ messages) → `cmd` (one file per
//!   request) → `state` (what every connection shares);
//! - the colony: `cmd` → `tick_loop` (the task that ticks shards, trades borders and sends
//!   checkpoint copies) → `peers` (links to neighbouring backends and replica holders) and
//!   `shards` (the shard store, and a colony's placements) → `engine` (a placement's tick
//!   state) → `batch` (how ticks are cut into batches);
//! - recovery (DESIGN §14): `shards` and `tick_loop` → `copies` (copies of shard cells at
//!   checkpoints, the commit and the fence) and `holders` (who keeps whose replicas);
//! - leaves that import no other module: `config`, `stats`, `identity`, `access`, `client`, `batch`,
//!   `copies`, `holders`, `budget`, `stream`.

mod access;
mod batch;
mod budget;
mod client;
mod cmd;
mod config;
mod connection;
mod copies;
mod engine;
mod gate;
mod holders;
mod identity;
pub mod loadgen;
mod peers;
mod server;
mod shards;
mod sim_stats;
mod state;
mod stats;
mod stream;
mod tick_loop;

pub use access::ReadAccess;
pub use batch::Target;
pub use client::{Client, ClientError, Socket, Stream};
pub use config::{ConfigError, DataPlaneConfig, PARTIAL_BASE};
pub use copies::{CopyError, CopyStore, MAX_AHEAD};
pub use engine::{Engine, EngineError, EngineState};
pub use holders::{replica_holders, replicas_expected, replicated_by, ring, REPLICAS};
pub use identity::Identity;
pub use peers::PeerError;
pub use server::DataPlane;
pub use shards::{LocalColony, RestoreError, ShardFigures, ShardSlot, ShardStore};
pub use sim_stats::{Histogram, HistogramSnapshot, PeerTraffic, SimStats, LATENCY_BUCKETS};
pub use stats::Stats;
