//! [`DataPlaneConfig`]: the data plane's limits, validated before anything binds.

use std::time::Duration;

use codec::{Limits, FRAME_LIMIT_CEILING};

/// Bytes of a partly received request every connection may hold without drawing on the
/// shared [`DataPlaneConfig::partial_budget`]: enough for any ordinary request.
pub const PARTIAL_BASE: usize = 8 * 1024;

/// Limits and timeouts of the data-plane server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataPlaneConfig {
    /// Codec limits (longest text line, largest binary frame).
    pub limits: Limits,
    /// A connection with no complete request for this long is closed (bytes that do not
    /// complete a request do not count).
    pub idle_timeout: Duration,
    /// A request begun but not completed within this long closes the connection: a client
    /// that trickles one byte every few seconds cannot hold its buffer forever.
    pub incomplete_timeout: Duration,
    /// Unsent answers a connection may hold before it stops reading that client's requests
    /// (backpressure, like Redis's client output buffer limit).
    pub max_pending_output: usize,
    /// How long a client may leave its pending answers unread before it is cut.
    pub output_timeout: Duration,
    /// Bytes of partly received requests all unauthenticated connections together may hold
    /// beyond each connection's first [`PARTIAL_BASE`] bytes; a connection that needs more
    /// while the budget is spent is cut.
    pub partial_budget: usize,
    /// Connections served at once; further ones are refused with an error line.
    pub max_connections: usize,
    /// How long shutdown waits for open connections to finish their current request.
    pub grace: Duration,
    /// How long a tick may wait for a neighbour's borders before the run fails.
    pub halo_timeout: Duration,
}

impl Default for DataPlaneConfig {
    fn default() -> Self {
        DataPlaneConfig {
            limits: Limits::default(),
            idle_timeout: Duration::from_secs(300),
            incomplete_timeout: Duration::from_secs(30),
            max_pending_output: 1024 * 1024,
            output_timeout: Duration::from_secs(30),
            partial_budget: 64 * 1024 * 1024,
            max_connections: 1024,
            grace: Duration::from_secs(5),
            halo_timeout: Duration::from_secs(10),
        }
    }
}

/// A configuration value out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid data-plane setting {field}: {reason}")]
pub struct ConfigError {
    /// The setting (named as its command-line flag).
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl DataPlaneConfig {
    /// Checks every value, reporting the first one out of range.
    ///
    /// # Errors
    /// [`ConfigError`] naming the flag and the accepted range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, reason: String| Err(ConfigError { field, reason });
        if self.limits.max_line < 16 {
            return err("--max-line", "must be at least 16 bytes".into());
        }
        if self.limits.max_frame < 16 || self.limits.max_frame > FRAME_LIMIT_CEILING {
            return err(
                "--max-frame",
                format!(
                    "must be between 16 and {FRAME_LIMIT_CEILING} bytes (frames stay below 16 MiB)"
                ),
            );
        }
        if self.max_connections == 0 {
            return err("--max-connections", "must be at least 1".into());
        }
        if self.halo_timeout < Duration::from_millis(10) {
            return err("--halo-timeout", "must be at least 10ms".into());
        }
        if self.idle_timeout.is_zero() {
            return err("--idle-timeout", "must be more than zero".into());
        }
        if self.incomplete_timeout.is_zero() {
            return err("--incomplete-timeout", "must be more than zero".into());
        }
        if self.output_timeout.is_zero() {
            return err("--output-timeout", "must be more than zero".into());
        }
        if self.max_pending_output < 4096 {
            return err("--max-pending-output", "must be at least 4096 bytes".into());
        }
        // One largest frame must always fit when nobody else holds the budget.
        if self.partial_budget < self.limits.max_frame {
            return err(
                "--partial-budget",
                format!(
                    "must be at least --max-frame ({} bytes)",
                    self.limits.max_frame
                ),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        assert_eq!(DataPlaneConfig::default().validate(), Ok(()));
        let mut c = DataPlaneConfig::default();
        c.limits.max_frame = 1 << 24;
        assert_eq!(c.validate().unwrap_err().field, "--max-frame");
        let c = DataPlaneConfig {
            max_connections: 0,
            ..DataPlaneConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().field, "--max-connections");
        let c = DataPlaneConfig {
            partial_budget: 1024,
            ..DataPlaneConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().field, "--partial-budget");
    }
}
