//! Retry pacing shared by background registration and the SSM client.

use std::time::Duration;

/// Capped exponential backoff with "equal jitter": each delay is drawn from `[d/2, d]`, where
/// `d` doubles from `initial` up to `max`. The jitter keeps a fleet of nodes that failed
/// together (a registry outage) from retrying in lockstep.
#[derive(Debug)]
pub(crate) struct Backoff {
    ceiling: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            ceiling: initial.min(max),
            max,
        }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = ceiling.saturating_mul(2).min(self.max);
        let half = ceiling / 2;
        let span = u64::try_from((ceiling - half).as_nanos()).unwrap_or(u64::MAX);
        // Without randomness the delay is simply the ceiling: still correct, only in lockstep.
        let jitter = match getrandom::u64() {
            Ok(r) if span > 0 => r % (span + 1),
            _ => span,
        };
        half + Duration::from_nanos(jitter)
    }
}
