//! The body of `POST /heartbeat` (DESIGN §9): who a node is, where it listens, its counter
//! and its gauges; and the bounds a coordinator holds every heartbeat to.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shared::registry::RegistryError;
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

/// Why a heartbeat that parsed is still refused. Each message starts with the field it is
/// about.
#[derive(Debug, thiserror::Error)]
pub enum HeartbeatError {
    /// The instance id is not a valid id.
    #[error("instance_id: {0}")]
    InstanceId(#[source] RegistryError),
    /// More than [`MAX_HEARTBEAT_METRICS`] metrics.
    #[error("metrics: {count} entries, at most {MAX_HEARTBEAT_METRICS} allowed")]
    TooManyMetrics {
        /// How many there were.
        count: usize,
    },
    /// A metric name is empty or longer than [`MAX_METRIC_NAME`].
    #[error("metrics: name {name:?} must be 1 to {MAX_METRIC_NAME} bytes")]
    MetricName {
        /// The name.
        name: String,
    },
    /// A metric is NaN or infinite.
    #[error("metrics.{name}: must be a finite number")]
    NotFinite {
        /// The metric's name.
        name: String,
    },
}

impl Heartbeat {
    /// Checks what serde cannot: id syntax and metric bounds.
    ///
    /// # Errors
    /// The first [`HeartbeatError`] found.
    pub fn validate(&self) -> Result<(), HeartbeatError> {
        shared::registry::validate_instance_id(&self.instance_id)
            .map_err(HeartbeatError::InstanceId)?;
        if self.metrics.len() > MAX_HEARTBEAT_METRICS {
            return Err(HeartbeatError::TooManyMetrics {
                count: self.metrics.len(),
            });
        }
        for (name, value) in &self.metrics {
            if name.is_empty() || name.len() > MAX_METRIC_NAME {
                return Err(HeartbeatError::MetricName { name: name.clone() });
            }
            if !value.is_finite() {
                return Err(HeartbeatError::NotFinite { name: name.clone() });
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
        let e = bad.validate().unwrap_err();
        assert!(matches!(e, HeartbeatError::InstanceId(_)), "{e:?}");
        assert!(e.to_string().starts_with("instance_id"));
        bad = hb("b1");
        bad.metrics.insert("x".into(), f64::NAN);
        let e = bad.validate().unwrap_err();
        assert!(matches!(e, HeartbeatError::NotFinite { .. }), "{e:?}");
        assert!(e.to_string().starts_with("metrics.x"));
        bad.metrics = (0..65).map(|i| (format!("m{i}"), 1.0)).collect();
        let e = bad.validate().unwrap_err();
        assert!(
            matches!(e, HeartbeatError::TooManyMetrics { count: 65 }),
            "{e:?}"
        );
        assert!(e.to_string().starts_with("metrics"));
        bad.metrics = [(String::new(), 1.0)].into();
        let e = bad.validate().unwrap_err();
        assert!(matches!(e, HeartbeatError::MetricName { .. }), "{e:?}");
        bad.metrics = [("m".repeat(MAX_METRIC_NAME), 1.0)].into();
        assert!(bad.validate().is_ok());
    }
}
