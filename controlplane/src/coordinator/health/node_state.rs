//! [`NodeState`]: where a node stands in the failure detector, and [`Transition`], a recorded
//! move from one state to another.

use serde::{Deserialize, Serialize};

/// A node's health state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NodeState {
    /// Heartbeats arrive on time.
    Active,
    /// No heartbeat for `stale_after`.
    Stale,
    /// No heartbeat for `down_after`.
    Down,
    /// The node said goodbye on a graceful shutdown.
    Left,
}

impl NodeState {
    /// The state as shown to people and in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Active => "ACTIVE",
            NodeState::Stale => "STALE",
            NodeState::Down => "DOWN",
            NodeState::Left => "LEFT",
        }
    }

    /// STALE or DOWN: the node should be talking and is not.
    pub fn is_failure(self) -> bool {
        matches!(self, NodeState::Stale | NodeState::Down)
    }
}

/// A state change, as recorded and as pushed to subscribers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transition {
    /// The previous state; `None` when the node was first seen.
    pub from: Option<NodeState>,
    /// The new state.
    pub to: NodeState,
    /// When it happened (RFC 3339).
    pub at: String,
}
