//! Colony's HTTP planes: the control plane (colony lifecycle, shard init) and the management
//! plane (heartbeats, health, alerts, metrics, the `/ws` service registry and the dashboard),
//! as axum routers, plus the backend's heartbeat sender.
//!
//! Each plane is a `router(state) -> Router`; [`http::harden`] adds the layers every listener
//! needs. Nothing here binds a socket: the binary binds and serves.
//!
//! Layers, each importing only from the ones above it (`scripts/module-cycles.sh` checks
//! that no module cycle creeps back in):
//!
//! | layer | modules |
//! |---|---|
//! | what crosses the wire, and time formatting | [`wire`], [`time`] |
//! | the coordinator's domain and deployed packages, typed errors and no HTTP | [`coordinator`], [`deploy`] |
//! | metrics, rate limits, HTTP errors, node signatures and who may call what | [`metrics`], [`rate_limit`], [`error`], then [`node_auth`], [`operator`] |
//! | what the routers share, the layers every listener gets (and upload routes instead), the accept loop with its connection limits, and the backend's token reports | [`state`], [`http`], [`upload`], [`serve`], [`token_reporter`] |
//! | the routers | [`control`], [`dashboard`], [`ws`], then [`management`], which merges the last two |
//! | the backend's heartbeat client, and the heartbeat load of `colony bench` | [`heartbeat_sender`], [`loadgen`] |
//! | the fuzz campaign's entry points (feature `fuzzing`; nothing imports them) | `fuzzing` |

pub mod control;
pub mod coordinator;
pub mod dashboard;
pub mod deploy;
pub mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod heartbeat_sender;
pub mod http;
pub mod loadgen;
pub mod management;
pub mod metrics;
pub mod node_auth;
pub mod operator;
pub mod rate_limit;
pub mod serve;
pub mod spawner;
pub mod state;
#[cfg(test)]
mod test_http;
pub mod time;
pub mod token_reporter;
pub mod upload;
pub mod wire;
pub mod ws;

pub use error::{ApiError, ApiJson};
