//! [`DataPlaneConfig`]: the data plane's limits, validated before anything binds.

use std::time::Duration;

use codec::{Limits, FRAME_LIMIT_CEILING};

/// Limits and timeouts of the data-plane server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataPlaneConfig {
    /// Codec limits (longest text line, largest binary frame).
    pub limits: Limits,
    /// A connection with no complete request for this long is closed.
    pub idle_timeout: Duration,
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
    }
}
