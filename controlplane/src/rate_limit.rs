//! Token buckets (DESIGN §13): one per `/ws` connection for its requests, and one per client
//! address for state-changing HTTP calls.
//!
//! Pure bookkeeping over a clock the caller passes in (`tokio::time::Instant`, so tests can
//! pause time); answering `429` or `rate_limited`, and counting it, is the callers' business.
//! Heartbeats, reads and pushed events never come here.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// A rate and a burst: `per_second` tokens flow in, at most `burst` are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub per_second: u32,
    /// Requests allowed at once after a quiet spell.
    pub burst: u32,
}

/// A rate limit that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid rate limit {field}: must be at least 1")]
pub struct RateLimitError {
    /// The setting, named as its flag.
    pub field: &'static str,
}

impl RateLimit {
    /// `/ws` requests per connection (DESIGN §13).
    pub const WS_DEFAULT: RateLimit = RateLimit {
        per_second: 50,
        burst: 100,
    };

    /// State-changing HTTP calls per client address (DESIGN §13).
    pub const HTTP_DEFAULT: RateLimit = RateLimit {
        per_second: 20,
        burst: 40,
    };

    /// Checks both numbers, naming the flags `{prefix}-rate-limit` and `{prefix}-rate-burst`.
    ///
    /// # Errors
    /// [`RateLimitError`] for a zero rate or burst (a zero burst would refuse everything).
    pub fn validate(
        self,
        rate_flag: &'static str,
        burst_flag: &'static str,
    ) -> Result<Self, RateLimitError> {
        if self.per_second == 0 {
            return Err(RateLimitError { field: rate_flag });
        }
        if self.burst == 0 {
            return Err(RateLimitError { field: burst_flag });
        }
        Ok(self)
    }
}

/// One token bucket.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(limit: RateLimit, now: Instant) -> Self {
        TokenBucket {
            tokens: f64::from(limit.burst),
            last: now,
        }
    }

    fn refill(&mut self, limit: RateLimit, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens =
            (self.tokens + elapsed * f64::from(limit.per_second)).min(f64::from(limit.burst));
        self.last = now;
    }

    /// Takes one token.
    ///
    /// # Errors
    /// How long until one is available, when none is.
    pub fn take(&mut self, limit: RateLimit, now: Instant) -> Result<(), Duration> {
        self.refill(limit, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let missing = 1.0 - self.tokens;
            Err(Duration::from_secs_f64(
                missing / f64::from(limit.per_second),
            ))
        }
    }

    /// True if the bucket has refilled completely: it then holds nothing a fresh one would
    /// not, and can be forgotten.
    fn is_full(&mut self, limit: RateLimit, now: Instant) -> bool {
        self.refill(limit, now);
        self.tokens >= f64::from(limit.burst)
    }
}

/// Most addresses with a bucket of their own; more share [`AddressLimiter`]'s overflow
/// bucket until some refill and are forgotten.
pub const MAX_ADDRESSES: usize = 4096;

/// How often a full map is swept for refilled buckets: a sweep walks the whole map, so it is
/// not done for every new address while the map stays full.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Buckets {
    by_address: HashMap<IpAddr, TokenBucket>,
    /// Shared by addresses that found the map full.
    overflow: TokenBucket,
    last_sweep: Instant,
}

/// A token bucket per client address, bounded: at most [`MAX_ADDRESSES`] are kept. IPv6
/// clients are counted per /64, the block one host usually gets, so a host cannot dodge the
/// limit by cycling through its own addresses.
#[derive(Debug)]
pub struct AddressLimiter {
    limit: RateLimit,
    capacity: usize,
    buckets: Mutex<Buckets>,
}

impl AddressLimiter {
    /// A limiter applying `limit` to each address.
    pub fn new(limit: RateLimit) -> Self {
        Self::with_capacity(limit, MAX_ADDRESSES)
    }

    fn with_capacity(limit: RateLimit, capacity: usize) -> Self {
        let now = Instant::now();
        AddressLimiter {
            limit,
            capacity,
            buckets: Mutex::new(Buckets {
                by_address: HashMap::new(),
                overflow: TokenBucket::full(limit, now),
                last_sweep: now,
            }),
        }
    }

    /// The limit applied.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Takes a token for `client` (`None`: unknown, which shares the overflow bucket).
    ///
    /// # Errors
    /// How long until the client may try again.
    pub fn check(&self, client: Option<IpAddr>, now: Instant) -> Result<(), Duration> {
        let limit = self.limit;
        let mut b = self.buckets.lock();
        let Some(key) = client.map(key_of) else {
            return b.overflow.take(limit, now);
        };
        if let Some(bucket) = b.by_address.get_mut(&key) {
            return bucket.take(limit, now);
        }
        if b.by_address.len() >= self.capacity
            && now.saturating_duration_since(b.last_sweep) >= SWEEP_EVERY
        {
            b.last_sweep = now;
            b.by_address.retain(|_, bucket| !bucket.is_full(limit, now));
        }
        if b.by_address.len() >= self.capacity {
            return b.overflow.take(limit, now);
        }
        b.by_address
            .entry(key)
            .or_insert_with(|| TokenBucket::full(limit, now))
            .take(limit, now)
    }

    /// Addresses with a bucket of their own now.
    pub fn tracked(&self) -> usize {
        self.buckets.lock().by_address.len()
    }
}

/// The key an address is counted under: itself, or its /64 for IPv6.
fn key_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: RateLimit = RateLimit {
        per_second: 10,
        burst: 3,
    };

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::full(LIMIT, t0);
        for _ in 0..3 {
            bucket.take(LIMIT, t0).unwrap();
        }
        let wait = bucket.take(LIMIT, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        // Half a token later: still refused, and the wait is the other half.
        let wait = bucket
            .take(LIMIT, t0 + Duration::from_millis(50))
            .unwrap_err();
        assert!(
            wait <= Duration::from_millis(50) && wait > Duration::ZERO,
            "{wait:?}"
        );
        bucket.take(LIMIT, t0 + Duration::from_millis(100)).unwrap();
        // A long quiet spell refills to the burst, no more.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            bucket.take(LIMIT, later).unwrap();
        }
        assert!(bucket.take(LIMIT, later).is_err());
    }

    #[test]
    fn each_address_has_its_own_bucket() {
        let limiter = AddressLimiter::new(LIMIT);
        let now = Instant::now();
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        for _ in 0..3 {
            limiter.check(Some(a), now).unwrap();
        }
        assert!(limiter.check(Some(a), now).is_err());
        limiter.check(Some(b), now).unwrap();
        assert_eq!(limiter.tracked(), 2);
    }

    #[test]
    fn ipv6_hosts_count_per_64_and_mapped_v4_as_v4() {
        let limiter = AddressLimiter::new(LIMIT);
        let now = Instant::now();
        for last in 1..=3u16 {
            let ip = Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, last);
            limiter.check(Some(ip.into()), now).unwrap();
        }
        let same_64 = Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0xffff, 1, 2, 3);
        assert!(limiter.check(Some(same_64.into()), now).is_err());
        let other_64 = Ipv6Addr::new(0x2001, 0xdb8, 0, 2, 0, 0, 0, 1);
        limiter.check(Some(other_64.into()), now).unwrap();
        let v4: IpAddr = [192, 0, 2, 7].into();
        let mapped: IpAddr = Ipv6Addr::from([0, 0, 0, 0, 0, 0xffff, 0xc000, 0x0207]).into();
        for _ in 0..3 {
            limiter.check(Some(v4), now).unwrap();
        }
        assert!(limiter.check(Some(mapped), now).is_err());
    }

    #[test]
    fn the_map_is_bounded_and_forgets_refilled_buckets() {
        let limiter = AddressLimiter::with_capacity(LIMIT, 4);
        let t0 = Instant::now();
        let ip = |i: u8| -> IpAddr { [10, 0, 0, i].into() };
        for i in 0..4 {
            limiter.check(Some(ip(i)), t0).unwrap();
        }
        // Full: newcomers share the overflow bucket, whose burst they exhaust together.
        for i in 4..7 {
            limiter.check(Some(ip(i)), t0).unwrap();
        }
        assert!(limiter.check(Some(ip(7)), t0).is_err());
        assert!(
            limiter.check(None, t0).is_err(),
            "unknown clients overflow too"
        );
        assert_eq!(limiter.tracked(), 4);
        // Once the tracked ones have refilled, they are forgotten and newcomers get their own.
        let later = t0 + Duration::from_secs(2);
        limiter.check(Some(ip(8)), later).unwrap();
        assert_eq!(limiter.tracked(), 1);
    }

    #[test]
    fn zero_rates_are_refused_naming_the_flag() {
        let zero = RateLimit {
            per_second: 0,
            burst: 1,
        };
        assert_eq!(
            zero.validate("--ws-rate-limit", "--ws-rate-burst")
                .unwrap_err()
                .field,
            "--ws-rate-limit"
        );
        let no_burst = RateLimit {
            per_second: 1,
            burst: 0,
        };
        assert_eq!(
            no_burst
                .validate("--ws-rate-limit", "--ws-rate-burst")
                .unwrap_err()
                .field,
            "--ws-rate-burst"
        );
        RateLimit::HTTP_DEFAULT.validate("a", "b").unwrap();
    }
}
