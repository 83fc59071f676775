//! Who this node is, shared by its HTTP routers.

use std::time::SystemTime;

use shared::NodeAddress;
use tokio::time::Instant;

use crate::wire::heartbeat::NodeType;

/// Identity and start time of the node serving a request.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// Instance id (`coordinator`, `backend_9000`, …).
    pub node_id: String,
    /// Role.
    pub node_type: NodeType,
    /// Advertised address.
    pub address: NodeAddress,
    /// When the process started (wall clock, for people).
    pub started: SystemTime,
    /// When the process started (monotonic, for uptime).
    pub started_at: Instant,
}

impl NodeInfo {
    /// Identity of a node starting now.
    pub fn new(node_id: impl Into<String>, node_type: NodeType, address: NodeAddress) -> Self {
        NodeInfo {
            node_id: node_id.into(),
            node_type,
            address,
            started: SystemTime::now(),
            started_at: Instant::now(),
        }
    }
}
