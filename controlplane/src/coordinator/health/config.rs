//! [`HealthConfig`]: the failure detector's thresholds, checked before anything runs.

use std::time::Duration;

/// Why the thresholds are refused; each message names the command-line flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HealthConfigError {
    /// `stale_after` is below [`HealthConfig::MIN_THRESHOLD`].
    #[error("--stale-after must be at least {:?}", HealthConfig::MIN_THRESHOLD)]
    StaleAfterTooShort,
    /// `down_after` is not longer than `stale_after`.
    #[error("--down-after must be longer than --stale-after")]
    DownAfterNotLonger,
    /// `forget_after` is below [`HealthConfig::MIN_THRESHOLD`].
    #[error("--forget-after must be at least {:?}", HealthConfig::MIN_THRESHOLD)]
    ForgetAfterTooShort,
}

/// Failure-detector thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthConfig {
    /// Silence after which a node is STALE.
    pub stale_after: Duration,
    /// Silence after which a node is DOWN.
    pub down_after: Duration,
    /// A recovery this soon after a failure began counts as a flap.
    pub flap_window: Duration,
    /// A node DOWN or LEFT this long is forgotten, so nodes that never come back (or were
    /// never real) cannot pile up.
    pub forget_after: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            stale_after: Duration::from_secs(3),
            down_after: Duration::from_secs(10),
            flap_window: Duration::from_secs(60),
            forget_after: Self::DEFAULT_FORGET_AFTER,
        }
    }
}

impl HealthConfig {
    /// Default of `forget_after`: a day, as Serf reaps failed members.
    pub const DEFAULT_FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

    /// Smallest threshold accepted.
    pub const MIN_THRESHOLD: Duration = Duration::from_millis(100);

    /// Checks the thresholds' ranges and order.
    ///
    /// # Errors
    /// A [`HealthConfigError`] naming the flag.
    pub fn validate(&self) -> Result<(), HealthConfigError> {
        if self.stale_after < Self::MIN_THRESHOLD {
            return Err(HealthConfigError::StaleAfterTooShort);
        }
        if self.down_after <= self.stale_after {
            return Err(HealthConfigError::DownAfterNotLonger);
        }
        if self.forget_after < Self::MIN_THRESHOLD {
            return Err(HealthConfigError::ForgetAfterTooShort);
        }
        Ok(())
    }

    /// How often the sweeper looks: a fraction of the shortest threshold, so a state change
    /// is noticed well within it.
    pub fn sweep_period(&self) -> Duration {
        let shortest = self.stale_after.min(self.down_after - self.stale_after);
        (shortest / 8).clamp(Duration::from_millis(5), Duration::from_millis(250))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> HealthConfig {
        HealthConfig {
            stale_after: Duration::from_millis(300),
            down_after: Duration::from_secs(1),
            flap_window: Duration::from_secs(60),
            forget_after: Duration::from_secs(5),
        }
    }

    #[test]
    fn config_order_is_checked() {
        assert!(config().validate().is_ok());
        let bad = HealthConfig {
            down_after: Duration::from_millis(300),
            ..config()
        };
        let e = bad.validate().unwrap_err();
        assert_eq!(e, HealthConfigError::DownAfterNotLonger);
        assert!(e.to_string().contains("--down-after"));
        let short = HealthConfig {
            stale_after: HealthConfig::MIN_THRESHOLD - Duration::from_millis(1),
            ..config()
        };
        assert_eq!(short.validate(), Err(HealthConfigError::StaleAfterTooShort));
        let forgetful = HealthConfig {
            forget_after: Duration::from_millis(99),
            ..config()
        };
        let e = forgetful.validate().unwrap_err();
        assert_eq!(e, HealthConfigError::ForgetAfterTooShort);
        assert!(e.to_string().contains("--forget-after"));
        assert_eq!(
            HealthConfig::default().forget_after,
            Duration::from_secs(86_400)
        );
        assert!(config().sweep_period() <= Duration::from_millis(40));
    }
}
