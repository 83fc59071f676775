//! The body of `POST /heartbeat` (DESIGN §9): who a node is, where it listens, its counter
//! and its gauges; and the bounds a coordinator holds every heartbeat to.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shared::NodeAddress;

/// Most metrics one heartbeat may carry.
pub const MAX_HEARTBEAT_METRICS: usize = 64;
/// Longest metric name.
pub const MAX_METRIC_NAME: usize = 64;

/// What kind of node sent a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeType {
    /// A backend holding shards.
    Backend,
    /// The coordinator.
    Coordinator,
}

/// The body of `POST /heartbeat`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The sender's instance id (e.g. `backend_9000`).
    pub instance_id: String,
    /// The sender's role.
    pub node_type: NodeType,
    /// Where the sender's listeners are.
    pub address: NodeAddress,
    /// The sender's heartbeat counter (starts again at 1 when it restarts).
    pub seq: u64,
    /// Numeric gauges the sender wants shown (at most [`MAX_HEARTBEAT_METRICS`]).
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// True on the goodbye a node sends when it shuts down gracefully.
    #[serde(default)]
    pub leaving: bool,
}

impl Heartbeat {
    /// Checks what serde cannot: id syntax and metric bounds.
    ///
    /// # Errors
    /// A sentence naming the offending field.
    pub fn validate(&self) -> Result<(), String> {
        shared::registry::validate_instance_id(&self.instance_id)
            .map_err(|e| format!("instance_id: {e}"))?;
        if self.metrics.len() > MAX_HEARTBEAT_METRICS {
            return Err(format!(
                "metrics: {} entries, at most {MAX_HEARTBEAT_METRICS} allowed",
                self.metrics.len()
            ));
        }
        for (name, value) in &self.metrics {
            if name.is_empty() || name.len() > MAX_METRIC_NAME {
                return Err(format!(
                    "metrics: name {name:?} must be 1 to {MAX_METRIC_NAME} bytes"
                ));
            }
            if !value.is_finite() {
                return Err(format!("metrics.{name}: must be a finite number"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(id: &str) -> Heartbeat {
        Heartbeat {
            instance_id: id.into(),
            node_type: NodeType::Backend,
            address: NodeAddress::new([127, 0, 0, 1].into(), 9000, 9001, 9002),
            seq: 1,
            metrics: BTreeMap::new(),
            leaving: false,
        }
    }

    #[test]
    fn heartbeat_validation_names_the_field() {
        let mut bad = hb("../etc");
        assert!(bad.validate().unwrap_err().starts_with("instance_id"));
        bad = hb("b1");
        bad.metrics.insert("x".into(), f64::NAN);
        assert!(bad.validate().unwrap_err().starts_with("metrics.x"));
        bad.metrics = (0..65).map(|i| (format!("m{i}"), 1.0)).collect();
        assert!(bad.validate().unwrap_err().starts_with("metrics"));
    }
}
