//! [`HealthEvent`]: what the health tracker tells its subscribers (the `/ws` hub, and through
//! it the dashboard). A live feed: a subscriber that was not listening reads the state from
//! the views instead.

use serde::Serialize;
use shared::NodeAddress;

use super::node_state::{NodeState, Transition};
use crate::wire::heartbeat::NodeType;
use crate::wire::metrics::Metrics;

/// Something the health tracker tells subscribers (the WebSocket, the dashboard).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum HealthEvent {
    /// A node changed state.
    ServiceStateChanged {
        /// The node.
        node_id: String,
        /// Its role.
        node_type: NodeType,
        /// The change.
        #[serde(flatten)]
        transition: Transition,
    },
    /// A node appeared with a new address.
    EndpointUpdated {
        /// The node.
        node_id: String,
        /// Its new address.
        address: NodeAddress,
    },
    /// A heartbeat arrived (at most one event per node per
    /// [`HEALTH_CHECK_EVENT_EVERY`](super::tracker::HEALTH_CHECK_EVENT_EVERY)).
    HealthCheckResult {
        /// The node.
        node_id: String,
        /// Its role.
        node_type: NodeType,
        /// Its state after this heartbeat.
        status: NodeState,
        /// The heartbeat's sequence number.
        seq: u64,
        /// Heartbeats received from it so far.
        heartbeats: u64,
        /// Milliseconds since its previous heartbeat (`None` for the first).
        interval_ms: Option<u64>,
        /// The metrics it reported (boxed: gauges are held inline, and every event of the
        /// queue would be as large).
        metrics: Box<Metrics>,
        /// When it arrived (RFC 3339).
        at: String,
    },
    /// A node DOWN or LEFT for longer than `forget_after` was dropped from the state.
    NodeForgotten {
        /// The node.
        node_id: String,
        /// Its role.
        node_type: NodeType,
        /// Its state when it was forgotten.
        last_state: NodeState,
        /// When (RFC 3339).
        at: String,
    },
}
