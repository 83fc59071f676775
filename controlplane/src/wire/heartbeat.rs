//! The body of `POST /heartbeat` (DESIGN §9, §13): who a node is, where it listens, which run
//! of it this is and its counter in that run, and its gauges; and the bounds a coordinator
//! holds every heartbeat to. The request is signed ([`shared::signing`]); `boot_id` and `seq`
//! are what make a captured one useless a second time.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use shared::registry::RegistryError;
use shared::NodeAddress;

pub use super::metrics::Metrics;

/// The heartbeat metric in which a backend says what its deployed services look like: 0 when
/// it has none, otherwise a digest of their list that changes whenever the list does. The
/// coordinator asks a backend for its services only when this changed
/// ([`crate::deploy::remote`]).
pub const DEPLOYED_DIGEST_METRIC: &str = "deployed_digest";

/// Most metrics one heartbeat may carry.
pub const MAX_HEARTBEAT_METRICS: usize = 64;
/// Longest metric name.
pub const MAX_METRIC_NAME: usize = 64;
/// Longest boot id.
pub const MAX_BOOT_ID: usize = 64;
/// Random bytes in a boot id made by [`new_boot_id`].
const BOOT_ID_BYTES: usize = 16;

/// A fresh boot id: 16 random bytes as 32 hex digits. A node makes one when its process
/// starts and sends it with every heartbeat of that run.
///
/// # Errors
/// The system random source failed.
pub fn new_boot_id() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; BOOT_ID_BYTES];
    getrandom::fill(&mut bytes)?;
    let mut id = String::with_capacity(2 * BOOT_ID_BYTES);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(id, "{b:02x}");
    }
    Ok(id)
}

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
    /// Random per process start of the sender ([`new_boot_id`]): a new one means the node
    /// restarted, and its `seq` starts again.
    pub boot_id: String,
    /// The sender's heartbeat counter in this run (from 1, rising with every heartbeat).
    pub seq: u64,
    /// Numeric gauges the sender wants shown (at most [`MAX_HEARTBEAT_METRICS`]).
    #[serde(default)]
    pub metrics: Metrics,
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
    /// The boot id is empty, longer than [`MAX_BOOT_ID`], or not `[A-Za-z0-9_-]`.
    #[error("boot_id: must be 1 to {MAX_BOOT_ID} characters from A-Z a-z 0-9 _ -")]
    BootId,
    /// `seq` is not above the last one accepted from the same run of the node: a replay
    /// (or a sender whose counter went backwards).
    #[error("replayed heartbeat: seq {seq} is not above {last}, the last accepted from this boot of {node}")]
    Replayed {
        /// The node.
        node: String,
        /// The heartbeat's seq.
        seq: u64,
        /// The last seq accepted from this boot.
        last: u64,
    },
    /// The boot id is one the node has already been replaced by a newer one: a replay of an
    /// earlier run's heartbeat.
    #[error("replayed heartbeat: boot {boot_id} of {node} has been succeeded by a later boot")]
    RetiredBoot {
        /// The node.
        node: String,
        /// The retired boot id.
        boot_id: String,
    },
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
        let boot_id_ok = (1..=MAX_BOOT_ID).contains(&self.boot_id.len())
            && self
                .boot_id
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-'));
        if !boot_id_ok {
            return Err(HeartbeatError::BootId);
        }
        if self.metrics.len() > MAX_HEARTBEAT_METRICS {
            return Err(HeartbeatError::TooManyMetrics {
                count: self.metrics.len(),
            });
        }
        for (name, value) in self.metrics.iter() {
            if name.is_empty() || name.len() > MAX_METRIC_NAME {
                return Err(HeartbeatError::MetricName {
                    name: name.to_owned(),
                });
            }
            if !value.is_finite() {
                return Err(HeartbeatError::NotFinite {
                    name: name.to_owned(),
                });
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
            boot_id: new_boot_id().unwrap(),
            seq: 1,
            metrics: Metrics::new(),
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
        bad.metrics.insert("x", f64::NAN);
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
        bad.metrics = [("", 1.0)].into();
        let e = bad.validate().unwrap_err();
        assert!(matches!(e, HeartbeatError::MetricName { .. }), "{e:?}");
        bad.metrics = [("m".repeat(MAX_METRIC_NAME), 1.0)].into();
        assert!(bad.validate().is_ok());
        for boot_id in [
            String::new(),
            "b".repeat(MAX_BOOT_ID + 1),
            "a b".into(),
            "../x".into(),
        ] {
            bad.boot_id = boot_id;
            let e = bad.validate().unwrap_err();
            assert!(matches!(e, HeartbeatError::BootId), "{e:?}");
            assert!(e.to_string().starts_with("boot_id"));
        }
        bad.boot_id = "b".repeat(MAX_BOOT_ID);
        assert!(bad.validate().is_ok());
    }

    #[test]
    fn boot_ids_are_fresh_hex() {
        let (a, b) = (new_boot_id().unwrap(), new_boot_id().unwrap());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert!(hb("b1").validate().is_ok());
    }
}
