//! Node health from heartbeats, the coordinator's failure detector (DESIGN §9).
//!
//! | file | owns |
//! |---|---|
//! | [`config`] | the thresholds and how often the sweeper looks |
//! | [`node_state`] | ACTIVE, STALE, DOWN, LEFT and a recorded move between them |
//! | [`tracker`] | the state machine: heartbeats in, silence swept, stalls forgiven |
//! | [`record`] | a node's record, the inline ids it is found by, and the handle a channel keeps |
//! | [`alerts`] | the alert log behind `GET /alerts` |
//! | [`events`] | the live feed subscribers (the `/ws` hub) read |
//! | [`views`] | `GET /health/status` and the counts behind `/metrics` |
//! | [`stats`] | the heartbeat inter-arrival histogram and transition counters of `/metrics` |
//!
//! The heartbeat body itself is a wire type ([`crate::wire::heartbeat`]); the routes that
//! serve these views are in [`crate::management`].

pub mod alerts;
pub mod config;
pub mod events;
pub mod node_state;
pub mod record;
pub mod stats;
pub mod tracker;
pub mod views;
