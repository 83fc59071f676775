//! [`Budget`]: the node-wide allowance of bytes for partly received requests.
//!
//! Every connection may buffer its first [`PARTIAL_BASE`](crate::config::PARTIAL_BASE) bytes
//! of an unfinished request for free; beyond that it draws from this one budget in chunks as
//! bytes arrive, and gives them back once the request is complete (or the connection ends).
//! So the worst case over all connections is `max_connections × PARTIAL_BASE + budget`,
//! whatever the clients announce: a frame header alone claims nothing.

use std::sync::atomic::{AtomicUsize, Ordering};

/// A shared byte budget: taken in chunks, returned when done.
#[derive(Debug)]
pub(crate) struct Budget {
    limit: usize,
    used: AtomicUsize,
}

impl Budget {
    /// A budget of `limit` bytes, none of it in use.
    pub(crate) fn new(limit: usize) -> Self {
        Budget {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    /// The budget in bytes.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes currently taken.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `bytes` if that many are left; false (and nothing taken) otherwise.
    pub(crate) fn take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    /// Returns `bytes` taken earlier.
    pub(crate) fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_only_what_is_left_and_gets_it_back() {
        let b = Budget::new(100);
        assert!(b.take(60));
        assert!(!b.take(41), "over the limit");
        assert_eq!(b.used(), 60);
        assert!(b.take(40));
        assert!(!b.take(1));
        b.give_back(60);
        assert!(b.take(60));
        assert_eq!(b.used(), 100);
        assert_eq!(b.limit(), 100);
    }
}
