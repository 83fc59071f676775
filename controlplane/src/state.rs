//! The state the HTTP routers share: who this node is ([`NodeInfo`]) and what its
//! management routers read ([`MgmtState`]).
//!
//! It has a module of its own so that the management routes, the dashboard and `/ws` all
//! import it from here, and none of them imports another to get it.

use std::time::SystemTime;

use shared::NodeAddress;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::coordinator::colony::ColonyManager;
use crate::coordinator::health::tracker::HealthTracker;
use crate::coordinator::processes::ProcessManager;
use crate::deploy::deployer::Deployer;
use crate::metrics::Metrics;
use crate::node_auth::NodeAuth;
use crate::operator::Guard;
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

/// State of the management routers.
#[derive(Debug, Clone)]
pub struct MgmtState {
    /// This node.
    pub node: NodeInfo,
    /// Its metrics.
    pub metrics: Metrics,
    /// Checks the signatures of node calls (heartbeats, token reports).
    pub node_auth: NodeAuth,
    /// The management listener's operator check (DESIGN §13).
    pub guard: Guard,
    /// Node health (coordinator only).
    pub health: Option<HealthTracker>,
    /// Backends run by `colony up` (coordinator under `colony up` only).
    pub processes: Option<ProcessManager>,
    /// The colony (coordinator only).
    pub colony: Option<ColonyManager>,
    /// Deployed packages and their services (DESIGN §16), where deploying is enabled.
    pub deploy: Option<Deployer>,
    /// Tasks the management routes start that outlive their request: `/ws` connections and
    /// the `/ws` event pump. Whoever serves the routes waits on it after the listener stops
    /// ([`crate::http::serve_on_own_thread`]), so sockets can say goodbye.
    pub tasks: TaskTracker,
}

impl axum::extract::FromRef<MgmtState> for NodeAuth {
    fn from_ref(state: &MgmtState) -> NodeAuth {
        state.node_auth.clone()
    }
}
