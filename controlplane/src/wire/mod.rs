//! Bodies that nodes send each other over HTTP, and the limits that belong to them: the
//! heartbeat a node posts to the coordinator's management port ([`heartbeat`]), the shard
//! init the coordinator posts to a backend's control port ([`init`]), and the backend's report
//! of what became of its init tokens ([`tokens`]).
//!
//! Only the serde types and the checks serde cannot make live here. The sender and the
//! receiver of each body both import it from here, so neither depends on the other: what the
//! coordinator does with a heartbeat is [`crate::coordinator::health`], what a backend does
//! with an init is [`crate::control`].
//!
//! [`ws_frame`] is the RFC 6455 framing of the heartbeat channel ([`channel`]) as its server
//! reads and writes it.

pub mod channel;
pub mod heartbeat;
pub(crate) mod heartbeat_json;
pub mod init;
pub mod metrics;
pub mod tokens;
pub mod ws_frame;
