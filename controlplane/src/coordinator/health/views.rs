//! What people and scrapers read about node health: [`HealthStatus`] (`GET /health/status`,
//! `/health/stale`, the `/ws` snapshot) made of one [`Component`] per node, and the
//! [`Counts`] behind `/metrics`. Plain data: the tracker fills them in.

use serde::Serialize;
use shared::NodeAddress;

use super::node_state::{NodeState, Transition};
use crate::wire::heartbeat::NodeType;
use crate::wire::metrics::Metrics;

/// One component of `GET /health/status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Component {
    /// The node's instance id.
    pub node_id: String,
    /// Its role.
    #[serde(rename = "type")]
    pub node_type: NodeType,
    /// Its health state.
    pub status: NodeState,
    /// Its advertised address.
    pub address: NodeAddress,
    /// When it was first seen (RFC 3339).
    pub first_seen: String,
    /// When it was last heard from (RFC 3339).
    pub last_seen: String,
    /// Milliseconds since its last heartbeat.
    pub heartbeat_age_ms: u64,
    /// Seconds since it was first seen in this run of it.
    pub uptime_seconds: u64,
    /// Heartbeats received.
    pub heartbeats: u64,
    /// Its last heartbeat sequence number.
    pub seq: u64,
    /// Recoveries soon after a failure.
    pub flaps: u32,
    /// The last state change.
    pub last_transition: Option<Transition>,
    /// Its last reported metrics.
    pub metrics: Metrics,
}

/// `GET /health/status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthStatus {
    /// `HEALTHY` when no node is STALE or DOWN, else `DEGRADED`.
    pub overall_status: &'static str,
    /// Components listed.
    pub total_components: usize,
    /// Components ACTIVE.
    pub active: usize,
    /// Components STALE.
    pub stale: usize,
    /// Components DOWN.
    pub down: usize,
    /// Components LEFT.
    pub left: usize,
    /// Every component, the coordinator first, then by node id.
    pub components: Vec<Component>,
}

impl HealthStatus {
    /// The status of `components`, listed in the order given.
    pub fn of(components: Vec<Component>) -> HealthStatus {
        let count = |s| components.iter().filter(|c| c.status == s).count();
        let (active, stale, down, left) = (
            count(NodeState::Active),
            count(NodeState::Stale),
            count(NodeState::Down),
            count(NodeState::Left),
        );
        HealthStatus {
            overall_status: if stale + down == 0 {
                "HEALTHY"
            } else {
                "DEGRADED"
            },
            total_components: components.len(),
            active,
            stale,
            down,
            left,
            components,
        }
    }
}

/// Counts for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Nodes per state: active, stale, down, left.
    pub states: [usize; 4],
    /// Flaps summed over nodes.
    pub flaps: u64,
    /// Alerts open.
    pub open_alerts: usize,
}

impl Counts {
    /// Counts one node in `state` that has flapped `flaps` times.
    pub fn add(&mut self, state: NodeState, flaps: u32) {
        let i = match state {
            NodeState::Active => 0,
            NodeState::Stale => 1,
            NodeState::Down => 2,
            NodeState::Left => 3,
        };
        self.states[i] += 1;
        self.flaps += u64::from(flaps);
    }

    /// `(state label, count)` pairs.
    pub fn by_state(&self) -> [(&'static str, usize); 4] {
        [
            ("ACTIVE", self.states[0]),
            ("STALE", self.states[1]),
            ("DOWN", self.states[2]),
            ("LEFT", self.states[3]),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn component(node_id: &str, status: NodeState) -> Component {
        Component {
            node_id: node_id.into(),
            node_type: NodeType::Backend,
            status,
            address: NodeAddress::new([127, 0, 0, 1].into(), 9000, 9001, 9002),
            first_seen: String::new(),
            last_seen: String::new(),
            heartbeat_age_ms: 0,
            uptime_seconds: 0,
            heartbeats: 0,
            seq: 0,
            flaps: 0,
            last_transition: None,
            metrics: Metrics::new(),
        }
    }

    #[test]
    fn only_stale_or_down_degrades_and_every_state_is_counted() {
        let left = HealthStatus::of(vec![
            component("a", NodeState::Active),
            component("b", NodeState::Left),
        ]);
        assert_eq!(left.overall_status, "HEALTHY");
        assert_eq!((left.active, left.left, left.total_components), (1, 1, 2));
        for failed in [NodeState::Stale, NodeState::Down] {
            let status = HealthStatus::of(vec![
                component("a", NodeState::Active),
                component("b", failed),
            ]);
            assert_eq!(status.overall_status, "DEGRADED", "{failed:?}");
            assert_eq!(status.stale + status.down, 1);
        }

        let mut counts = Counts::default();
        counts.add(NodeState::Down, 2);
        counts.add(NodeState::Down, 1);
        counts.add(NodeState::Left, 0);
        assert_eq!(
            counts.by_state(),
            [("ACTIVE", 0), ("STALE", 0), ("DOWN", 2), ("LEFT", 1)]
        );
        assert_eq!(counts.flaps, 3);
    }
}
