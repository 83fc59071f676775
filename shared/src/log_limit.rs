//! [`LogLimit`]: at most one log line per interval for a warning that anyone can trigger at
//! line rate (a refused connection, a cut client, a fake node's transitions), with the number
//! of lines held back in between.
//!
//! A site is a `static`; the first line it writes registers it, so [`sites`] lists every site
//! that has spoken and the metrics plane can export its count of suppressed lines
//! (`colony_log_lines_suppressed_total{site}`). The check is two atomic loads when the site
//! is quiet and one compare-and-swap when a line is due: cheap enough for an accept loop.
//!
//! This module decides only *whether* to write; the caller writes with `tracing` as usual,
//! adding the `suppressed` count ([`warn_limited!`](crate::warn_limited) does both).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// The interval most sites use: one line per site every ten seconds at most.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// One rate-limited log site.
#[derive(Debug)]
pub struct LogLimit {
    site: &'static str,
    interval_ms: u64,
    /// Milliseconds since [`epoch`] of the last line written, plus one (0: never).
    last: AtomicU64,
    /// Lines held back since the last one written.
    pending: AtomicU64,
    /// Lines held back over the process's life.
    suppressed: AtomicU64,
    registered: AtomicBool,
}

impl LogLimit {
    /// A site named `site` (a metrics label: lower case and underscores) writing at most one
    /// line per `interval`.
    pub const fn new(site: &'static str, interval: Duration) -> Self {
        LogLimit {
            site,
            // `as_millis` is not const-stable into u64; seconds and sub-second millis are.
            interval_ms: interval.as_secs() * 1000 + interval.subsec_millis() as u64,
            last: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            registered: AtomicBool::new(false),
        }
    }

    /// The site's name.
    pub fn site(&self) -> &'static str {
        self.site
    }

    /// Lines held back over the process's life.
    pub fn suppressed(&self) -> u64 {
        self.suppressed.load(Relaxed)
    }

    /// `Some(n)` if a line is due now (write it, saying `n` lines were held back since the
    /// previous one); `None` if this one is held back and counted.
    pub fn check(&'static self) -> Option<u64> {
        self.check_at(epoch_millis())
    }

    /// [`LogLimit::check`] at `now_ms` milliseconds since the process's log epoch.
    fn check_at(&'static self, now_ms: u64) -> Option<u64> {
        let stamp = now_ms + 1;
        let last = self.last.load(Relaxed);
        let due = last == 0 || stamp.saturating_sub(last) >= self.interval_ms;
        // Of several threads finding the site due at once, one writes.
        if due
            && self
                .last
                .compare_exchange(last, stamp, Relaxed, Relaxed)
                .is_ok()
        {
            if !self.registered.swap(true, Relaxed) {
                registry().lock().push(self);
            }
            return Some(self.pending.swap(0, Relaxed));
        }
        self.pending.fetch_add(1, Relaxed);
        self.suppressed.fetch_add(1, Relaxed);
        None
    }
}

/// Writes a `warn!` line through `limit` (a `&'static LogLimit`), adding the number of lines
/// held back since the last one as the field `suppressed`; holds the line back otherwise.
///
/// ```ignore
/// static REFUSED: LogLimit = LogLimit::new("dataplane_refused", DEFAULT_INTERVAL);
/// warn_limited!(REFUSED, %peer, limit, "connection refused: limit reached");
/// ```
#[macro_export]
macro_rules! warn_limited {
    ($limit:expr, $($field:tt)+) => {
        if let Some(suppressed) = $limit.check() {
            ::tracing::warn!(suppressed, $($field)+);
        }
    };
}

/// Like [`warn_limited!`], at `info` level.
#[macro_export]
macro_rules! info_limited {
    ($limit:expr, $($field:tt)+) => {
        if let Some(suppressed) = $limit.check() {
            ::tracing::info!(suppressed, $($field)+);
        }
    };
}

/// Every site that has written a line so far.
pub fn sites() -> Vec<&'static LogLimit> {
    registry().lock().clone()
}

fn registry() -> &'static Mutex<Vec<&'static LogLimit>> {
    static SITES: OnceLock<Mutex<Vec<&'static LogLimit>>> = OnceLock::new();
    SITES.get_or_init(|| Mutex::new(Vec::new()))
}

fn epoch_millis() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_held_back() {
        static SITE: LogLimit = LogLimit::new("test_site_interval", Duration::from_secs(10));
        assert_eq!(SITE.check_at(5), Some(0), "the first line is written");
        for at in [6, 100, 10_004] {
            assert_eq!(SITE.check_at(at), None, "at {at} ms");
        }
        assert_eq!(SITE.check_at(10_005), Some(3));
        assert_eq!(SITE.check_at(10_006), None);
        assert_eq!(SITE.suppressed(), 4);
        assert!(sites().iter().any(|s| s.site() == "test_site_interval"));
    }

    #[test]
    fn a_site_is_listed_only_once_it_has_written() {
        static QUIET: LogLimit = LogLimit::new("test_site_quiet", Duration::from_secs(1));
        assert!(!sites().iter().any(|s| s.site() == "test_site_quiet"));
        assert!(QUIET.check().is_some());
        assert!(QUIET.check().is_none());
        let listed = sites()
            .into_iter()
            .filter(|s| s.site() == "test_site_quiet")
            .count();
        assert_eq!(listed, 1);
    }

    #[test]
    fn threads_racing_for_a_due_line_write_it_once() {
        static RACE: LogLimit = LogLimit::new("test_site_race", Duration::from_secs(3600));
        let written: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| (0..1000).filter(|_| RACE.check().is_some()).count()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(written, 1);
        assert_eq!(RACE.suppressed(), 7999);
    }
}
