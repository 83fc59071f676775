//! Init tokens (DESIGN §8): the signed claim that lets the coordinator initialize one shard on
//! one backend, once.
//!
//! This module owns the token format, its canonical signing input, signing
//! ([`TokenIssuer`]) and verification with a replay cache ([`TokenVerifier`]). Loading the
//! secret lives in [`crate::secret`]; mapping [`TokenError`] onto an HTTP answer is the control
//! plane's job, helped by [`TokenError::http_status`] and [`TokenError::code`].
//!
//! # Signing input
//!
//! `signature` is the lowercase hex HMAC-SHA256, under the secret named by `key_id`, of:
//!
//! ```text
//! str("colony-init-token-v1") str(token_id) str(instance_id) u32(shard.x) u32(shard.y)
//! str(colony_id) u64(issued_at) u64(expires_at) str(key_id)
//! ```
//!
//! where `str(s)` is the byte length of `s` as a big-endian `u32` followed by its UTF-8 bytes,
//! and `u32`/`u64` are big-endian. Every field but `signature` is covered; length prefixes make
//! the encoding injective, and the version tag keeps these MACs distinct from any other use of
//! the secret. [`InitToken::signing_input`] returns these bytes.
//!
//! # Verification cost
//!
//! Each key's HMAC state (the key already absorbed) is prepared once and cloned per check, the
//! signing input is gathered in a stack buffer (no allocation) and absorbed in one call, hex is
//! decoded into stack arrays, and the replay cache keys on the 128-bit token id rather than a
//! `String`. One check is four SHA-256 blocks plus a hash map insert.

use std::collections::HashMap;
use std::fmt;
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hex::FromHex;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::secret::ClusterSecret;
use crate::topology::ShardCoord;

type HmacSha256 = Hmac<Sha256>;

/// Version tag at the start of every signing input.
pub const DOMAIN: &str = "colony-init-token-v1";

/// Longest string field accepted, in bytes; bounds the work a hostile token can cause.
pub const MAX_FIELD_LEN: usize = 256;

/// Default clock-skew leeway for `issued_at` and `expires_at`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// Default bound on remembered token ids.
pub const DEFAULT_REPLAY_CAPACITY: usize = 100_000;

/// Seconds since the Unix epoch by the wall clock; 0 if the clock is before 1970.
///
/// Tokens cross machines, so expiry is wall-clock time; callers pass it to
/// [`TokenVerifier::verify`], so tests choose their own.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

// === impl InitToken ===

/// A signed, single-use permission to initialize `shard` on backend `instance_id` in colony
/// `colony_id`, valid from `issued_at` to `expires_at` (Unix seconds).
///
/// `Debug` hides the signature: an unused token is a credential.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitToken {
    /// 32 hex characters (128 random bits); the replay cache remembers it.
    pub token_id: String,
    /// The backend meant to accept it.
    pub instance_id: String,
    /// The shard it initializes.
    pub shard: ShardCoord,
    /// The colony it belongs to.
    pub colony_id: String,
    /// When it was issued, Unix seconds.
    pub issued_at: u64,
    /// When it stops being valid, Unix seconds.
    pub expires_at: u64,
    /// Which secret signed it ([`ClusterSecret::key_id`]).
    pub key_id: String,
    /// Hex HMAC-SHA256 of [`InitToken::signing_input`].
    pub signature: String,
}

impl InitToken {
    /// The canonical bytes the signature covers (see the module docs).
    pub fn signing_input(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        self.feed(|bytes| out.extend_from_slice(bytes));
        out
    }

    /// Passes the signing input to `sink` in pieces, without allocating.
    fn feed(&self, mut sink: impl FnMut(&[u8])) {
        fn string(sink: &mut impl FnMut(&[u8]), s: &str) {
            // Verified tokens have short fields; a mis-built token with a field over 4 GiB
            // saturates its prefix, and verification refuses it for its length anyway.
            let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
            sink(&len.to_be_bytes());
            sink(s.as_bytes());
        }
        string(&mut sink, DOMAIN);
        string(&mut sink, &self.token_id);
        string(&mut sink, &self.instance_id);
        sink(&self.shard.x.to_be_bytes());
        sink(&self.shard.y.to_be_bytes());
        string(&mut sink, &self.colony_id);
        sink(&self.issued_at.to_be_bytes());
        sink(&self.expires_at.to_be_bytes());
        string(&mut sink, &self.key_id);
    }

    /// `keyed` (a prepared HMAC state) after absorbing the signing input.
    ///
    /// The pieces are gathered in a stack buffer and handed to the MAC in one call: a typical
    /// token is ~150 bytes, and one `update` is markedly cheaper than seventeen small ones.
    fn mac(&self, keyed: &HmacSha256) -> HmacSha256 {
        let mut mac = keyed.clone();
        let mut buf = [0u8; 512];
        let mut len = 0;
        self.feed(|piece| {
            if len + piece.len() > buf.len() {
                mac.update(&buf[..len]);
                len = 0;
            }
            if piece.len() > buf.len() {
                mac.update(piece);
            } else {
                buf[len..len + piece.len()].copy_from_slice(piece);
                len += piece.len();
            }
        });
        mac.update(&buf[..len]);
        mac
    }
}

impl fmt::Debug for InitToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InitToken")
            .field("token_id", &self.token_id)
            .field("instance_id", &self.instance_id)
            .field("shard", &self.shard)
            .field("colony_id", &self.colony_id)
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .field("key_id", &self.key_id)
            .field("signature", &"<redacted>")
            .finish()
    }
}

/// HMAC-SHA256 keyed with `secret`, ready to clone.
#[allow(clippy::expect_used)]
fn keyed(secret: &ClusterSecret) -> HmacSha256 {
    HmacSha256::new_from_slice(secret.expose_bytes()).expect("HMAC accepts keys of any length")
}

// === impl TokenIssuer ===

/// Errors issuing a token.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// A field is empty or longer than [`MAX_FIELD_LEN`].
    #[error("cannot issue a token: {field} must be 1 to {MAX_FIELD_LEN} bytes")]
    InvalidField {
        /// `instance_id` or `colony_id`.
        field: &'static str,
    },
    /// The OS random source failed.
    #[error("cannot issue a token: {0}")]
    Random(getrandom::Error),
}

/// Signs init tokens with one secret (the coordinator's side).
#[derive(Clone)]
pub struct TokenIssuer {
    key_id: String,
    mac: HmacSha256,
}

impl TokenIssuer {
    /// An issuer signing with `secret`.
    pub fn new(secret: &ClusterSecret) -> Self {
        TokenIssuer {
            key_id: secret.key_id().to_owned(),
            mac: keyed(secret),
        }
    }

    /// The key id its tokens carry.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// A token for `shard` on `instance_id`, valid for `ttl` from now (rounded up to whole
    /// seconds).
    ///
    /// # Errors
    ///
    /// As [`TokenIssuer::issue_at`].
    pub fn issue(
        &self,
        instance_id: &str,
        shard: ShardCoord,
        colony_id: &str,
        ttl: Duration,
    ) -> Result<InitToken, IssueError> {
        self.issue_at(instance_id, shard, colony_id, ttl, unix_now())
    }

    /// [`TokenIssuer::issue`] at time `now` (Unix seconds).
    ///
    /// # Errors
    ///
    /// [`IssueError::InvalidField`] for an empty or over-long id; [`IssueError::Random`].
    pub fn issue_at(
        &self,
        instance_id: &str,
        shard: ShardCoord,
        colony_id: &str,
        ttl: Duration,
        now: u64,
    ) -> Result<InitToken, IssueError> {
        for (field, value) in [("instance_id", instance_id), ("colony_id", colony_id)] {
            if value.is_empty() || value.len() > MAX_FIELD_LEN {
                return Err(IssueError::InvalidField { field });
            }
        }
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(IssueError::Random)?;
        let ttl_secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let mut token = InitToken {
            token_id: hex::encode(id),
            instance_id: instance_id.to_owned(),
            shard,
            colony_id: colony_id.to_owned(),
            issued_at: now,
            expires_at: now.saturating_add(ttl_secs),
            key_id: String::new(),
            signature: String::new(),
        };
        self.sign(&mut token);
        Ok(token)
    }

    /// Sets `token.key_id` to this issuer's and `token.signature` to the MAC over the rest.
    pub fn sign(&self, token: &mut InitToken) {
        token.key_id.clone_from(&self.key_id);
        let tag = token.mac(&self.mac).finalize().into_bytes();
        token.signature = hex::encode(tag);
    }
}

impl fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenIssuer(key_id={})", self.key_id)
    }
}

// === impl TokenError ===

/// Why a token was refused. Reasons are safe to send back to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum TokenError {
    /// `key_id` names no secret this verifier holds.
    #[error("token is signed with an unknown key")]
    UnknownKey,
    /// A field is over-long, `token_id` is not 32 hex characters, or it expires before it
    /// was issued; the named field is at fault.
    #[error("malformed token: bad {0}")]
    Malformed(&'static str),
    /// The signature does not match (or is not 64 hex characters).
    #[error("token signature is invalid")]
    Forged,
    /// `expires_at` plus the leeway has passed.
    #[error("token has expired")]
    Expired,
    /// `issued_at` is beyond now plus the leeway.
    #[error("token is not valid yet")]
    NotYetValid,
    /// The token is for another backend.
    #[error("token was issued for another instance")]
    WrongInstance,
    /// The token is for another shard.
    #[error("token was issued for another shard")]
    WrongShard,
    /// The token has been used before.
    #[error("token has already been used")]
    Replayed,
    /// The replay cache is full of unexpired ids; accepting would mean forgetting one.
    #[error("too many recent tokens; retry later")]
    ReplayCacheFull,
}

impl TokenError {
    /// The HTTP status to answer with: 401 when the token does not authenticate (unknown key,
    /// forged, expired, not yet valid), 403 when it authenticates but does not authorize this
    /// request (wrong instance or shard, replayed), 400 when malformed, 503 when the replay
    /// cache is full.
    pub fn http_status(&self) -> u16 {
        match self {
            TokenError::UnknownKey
            | TokenError::Forged
            | TokenError::Expired
            | TokenError::NotYetValid => 401,
            TokenError::WrongInstance | TokenError::WrongShard | TokenError::Replayed => 403,
            TokenError::Malformed(_) => 400,
            TokenError::ReplayCacheFull => 503,
        }
    }

    /// A stable machine-readable code, e.g. `"token_expired"`.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::UnknownKey => "token_unknown_key",
            TokenError::Malformed(_) => "token_malformed",
            TokenError::Forged => "token_forged",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::WrongInstance => "token_wrong_instance",
            TokenError::WrongShard => "token_wrong_shard",
            TokenError::Replayed => "token_replayed",
            TokenError::ReplayCacheFull => "token_replay_cache_full",
        }
    }
}

// === impl TokenVerifier ===

/// Verifies init tokens (the backend's side): signature, validity window, audience, and single
/// use. Share it behind an `Arc`; [`TokenVerifier::verify`] takes `&self` and is safe to call
/// from many threads.
pub struct TokenVerifier {
    /// Few keys (one, two during a rotation), so a linear scan beats hashing.
    keys: Vec<(String, HmacSha256)>,
    leeway: u64,
    replay: ReplayCache,
}

impl TokenVerifier {
    /// A verifier accepting tokens signed with `secret`, with the default leeway (30 s) and
    /// replay capacity (100 000 ids).
    pub fn new(secret: &ClusterSecret) -> Self {
        TokenVerifier {
            keys: vec![(secret.key_id().to_owned(), keyed(secret))],
            leeway: DEFAULT_LEEWAY.as_secs(),
            replay: ReplayCache::new(DEFAULT_REPLAY_CAPACITY),
        }
    }

    /// Also accepts tokens signed with `secret` (for key rotation). A key id already held is
    /// replaced.
    pub fn with_key(mut self, secret: &ClusterSecret) -> Self {
        self.keys.retain(|(id, _)| id != secret.key_id());
        self.keys.push((secret.key_id().to_owned(), keyed(secret)));
        self
    }

    /// Sets the clock-skew leeway (whole seconds).
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway.as_secs();
        self
    }

    /// Sets how many token ids the replay cache may hold (at least 1).
    pub fn with_replay_capacity(mut self, capacity: usize) -> Self {
        self.replay = ReplayCache::new(capacity.max(1));
        self
    }

    /// Accepts `token` for `expected_instance_id` and `expected_shard` at time `now` (Unix
    /// seconds), and remembers its id so it is never accepted again.
    ///
    /// Checks, in order: the key id is known; the fields are well formed; the signature
    /// matches (constant-time); `now <= expires_at + leeway`; `issued_at <= now + leeway`;
    /// the instance; the shard; the id is unused. A refused token changes nothing, so a
    /// token sent to the wrong shard can still be used for the right one.
    ///
    /// # Errors
    ///
    /// The first check that fails, as a [`TokenError`].
    pub fn verify(
        &self,
        token: &InitToken,
        expected_instance_id: &str,
        expected_shard: ShardCoord,
        now: u64,
    ) -> Result<(), TokenError> {
        let id = self.check_signature(token)?;
        if now > token.expires_at.saturating_add(self.leeway) {
            return Err(TokenError::Expired);
        }
        if token.issued_at > now.saturating_add(self.leeway) {
            return Err(TokenError::NotYetValid);
        }
        if token.instance_id != expected_instance_id {
            return Err(TokenError::WrongInstance);
        }
        if token.shard != expected_shard {
            return Err(TokenError::WrongShard);
        }
        // Keep the id as long as the token could still pass the expiry check.
        self.replay
            .record(id, token.expires_at.saturating_add(self.leeway), now)
    }

    /// The stateless part of [`TokenVerifier::verify`]: key, form and signature. Returns the
    /// token id as a number.
    ///
    /// # Errors
    ///
    /// [`TokenError::UnknownKey`], [`TokenError::Malformed`] or [`TokenError::Forged`].
    pub fn check_signature(&self, token: &InitToken) -> Result<u128, TokenError> {
        let Some((_, keyed)) = self.keys.iter().find(|(id, _)| *id == token.key_id) else {
            return Err(TokenError::UnknownKey);
        };
        for (field, value) in [
            ("instance_id", &token.instance_id),
            ("colony_id", &token.colony_id),
        ] {
            if value.len() > MAX_FIELD_LEN {
                return Err(TokenError::Malformed(field));
            }
        }
        let id =
            <[u8; 16]>::from_hex(&token.token_id).map_err(|_| TokenError::Malformed("token_id"))?;
        if token.expires_at < token.issued_at {
            return Err(TokenError::Malformed("expires_at"));
        }
        let tag = <[u8; 32]>::from_hex(&token.signature).map_err(|_| TokenError::Forged)?;
        token
            .mac(keyed)
            .verify_slice(&tag)
            .map_err(|_| TokenError::Forged)?;
        Ok(u128::from_be_bytes(id))
    }

    /// How many token ids the replay cache holds now.
    pub fn replay_len(&self) -> usize {
        self.replay.len()
    }
}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("TokenVerifier")
            .field("key_ids", &ids)
            .field("leeway", &self.leeway)
            .field("replay_len", &self.replay.len())
            .finish()
    }
}

// === impl ReplayCache ===

/// Used token ids, each kept until its token could no longer pass the expiry check.
///
/// Bounded: when full, expired ids are swept out; if it is still full, new tokens are refused
/// ([`TokenError::ReplayCacheFull`]) rather than forgetting an unexpired id, which would let
/// that token be replayed. Only tokens with a valid signature get here, so only the secret's
/// holder can fill it.
///
/// Locking: `std::sync::Mutex` is banned by clippy.toml (it invites guards held across
/// `.await`); this cache is synchronous and its critical section is a lookup and an insert,
/// so an `std::sync::RwLock` used for writing serves, without a new dependency.
struct ReplayCache {
    state: RwLock<ReplayState>,
    capacity: usize,
}

struct ReplayState {
    /// Token id → last second at which it must still be remembered.
    seen: HashMap<u128, u64>,
    /// The smallest `seen` value, so a sweep that cannot free anything is skipped.
    earliest: u64,
}

impl ReplayCache {
    fn new(capacity: usize) -> Self {
        ReplayCache {
            state: RwLock::new(ReplayState {
                seen: HashMap::new(),
                earliest: u64::MAX,
            }),
            capacity,
        }
    }

    /// Records `id` as used until `keep_until`, unless it already was.
    fn record(&self, id: u128, keep_until: u64, now: u64) -> Result<(), TokenError> {
        // The map is consistent between statements, so a panic elsewhere while holding the
        // lock (poisoning) leaves nothing to repair.
        let mut state = self
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.seen.contains_key(&id) {
            return Err(TokenError::Replayed);
        }
        if state.seen.len() >= self.capacity {
            state.sweep(now);
            if state.seen.len() >= self.capacity {
                return Err(TokenError::ReplayCacheFull);
            }
        }
        state.seen.insert(id, keep_until);
        state.earliest = state.earliest.min(keep_until);
        Ok(())
    }

    fn len(&self) -> usize {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .seen
            .len()
    }
}

impl ReplayState {
    /// Forgets ids whose tokens have expired for good.
    fn sweep(&mut self, now: u64) {
        if self.earliest >= now {
            return;
        }
        self.seen.retain(|_, &mut keep_until| keep_until >= now);
        self.earliest = self.seen.values().copied().min().unwrap_or(u64::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_750_000_000;
    const TTL: Duration = Duration::from_secs(60);

    fn secret(text: &str) -> ClusterSecret {
        ClusterSecret::from_env_value(text).unwrap()
    }

    fn setup() -> (TokenIssuer, TokenVerifier) {
        let s = secret("test-secret-0123456789abcdef");
        (TokenIssuer::new(&s), TokenVerifier::new(&s))
    }

    fn shard() -> ShardCoord {
        ShardCoord::new(3, 4)
    }

    fn token(issuer: &TokenIssuer) -> InitToken {
        issuer
            .issue_at("backend_9000", shard(), "colony-1", TTL, NOW)
            .unwrap()
    }

    #[test]
    fn valid_token_passes_once() {
        let (issuer, verifier) = setup();
        let t = token(&issuer);
        assert_eq!(t.expires_at, NOW + 60);
        assert_eq!(t.token_id.len(), 32);
        assert_eq!(t.signature.len(), 64);
        assert_eq!(verifier.verify(&t, "backend_9000", shard(), NOW), Ok(()));
        assert_eq!(
            verifier.verify(&t, "backend_9000", shard(), NOW + 1),
            Err(TokenError::Replayed)
        );
        assert_eq!(verifier.replay_len(), 1);
    }

    #[test]
    fn each_refusal_has_its_error() {
        let (issuer, verifier) = setup();
        let verify = |t: &InitToken, now| verifier.verify(t, "backend_9000", shard(), now);

        let mut forged = token(&issuer);
        let flipped = if forged.signature.starts_with('0') {
            "1"
        } else {
            "0"
        };
        forged.signature.replace_range(0..1, flipped);
        assert_eq!(verify(&forged, NOW), Err(TokenError::Forged));
        forged.signature = "zz".repeat(32);
        assert_eq!(verify(&forged, NOW), Err(TokenError::Forged));
        forged.signature = "00".repeat(31);
        assert_eq!(verify(&forged, NOW), Err(TokenError::Forged));

        let mut unknown = token(&issuer);
        unknown.key_id = "someone-else".into();
        assert_eq!(verify(&unknown, NOW), Err(TokenError::UnknownKey));

        // Same key id, other secret: a forgery, not an unknown key.
        let impostor = TokenIssuer::new(
            &secret("another-secret-0123456789")
                .with_key_id(issuer.key_id())
                .unwrap(),
        );
        assert_eq!(verify(&token(&impostor), NOW), Err(TokenError::Forged));

        let t = token(&issuer);
        assert_eq!(verify(&t, NOW + 60 + 31), Err(TokenError::Expired));
        let t = token(&issuer);
        assert_eq!(verify(&t, NOW - 31), Err(TokenError::NotYetValid));
        let t = token(&issuer);
        assert_eq!(
            verifier.verify(&t, "backend_9010", shard(), NOW),
            Err(TokenError::WrongInstance)
        );
        assert_eq!(
            verifier.verify(&t, "backend_9000", ShardCoord::new(4, 3), NOW),
            Err(TokenError::WrongShard)
        );
        // Refusals consumed nothing: the same token still works where it belongs.
        assert_eq!(verify(&t, NOW), Ok(()));
        assert_eq!(verify(&t, NOW), Err(TokenError::Replayed));
        assert_eq!(verifier.replay_len(), 1);
    }

    #[test]
    fn leeway_boundaries() {
        let (issuer, verifier) = setup();
        let verify = |t: &InitToken, now| verifier.verify(t, "backend_9000", shard(), now);
        assert_eq!(verify(&token(&issuer), NOW + 60 + 30), Ok(()));
        assert_eq!(verify(&token(&issuer), NOW - 30), Ok(()));
        let strict =
            TokenVerifier::new(&secret("test-secret-0123456789abcdef")).with_leeway(Duration::ZERO);
        let t = token(&issuer);
        assert_eq!(
            strict.verify(&t, "backend_9000", shard(), NOW + 61),
            Err(TokenError::Expired)
        );
        assert_eq!(
            strict.verify(&t, "backend_9000", shard(), NOW - 1),
            Err(TokenError::NotYetValid)
        );
        assert_eq!(strict.verify(&t, "backend_9000", shard(), NOW + 60), Ok(()));
    }

    #[test]
    fn malformed_tokens() {
        let (issuer, verifier) = setup();
        let verify = |t: &InitToken| verifier.verify(t, "backend_9000", shard(), NOW);
        let mut t = token(&issuer);
        t.token_id = "not-hex".into();
        issuer.sign(&mut t);
        assert_eq!(verify(&t), Err(TokenError::Malformed("token_id")));
        let mut t = token(&issuer);
        t.colony_id = "c".repeat(MAX_FIELD_LEN + 1);
        issuer.sign(&mut t);
        assert_eq!(verify(&t), Err(TokenError::Malformed("colony_id")));
        let mut t = token(&issuer);
        t.expires_at = t.issued_at - 1;
        issuer.sign(&mut t);
        assert_eq!(verify(&t), Err(TokenError::Malformed("expires_at")));
        assert!(matches!(
            issuer.issue_at("", shard(), "c", TTL, NOW),
            Err(IssueError::InvalidField {
                field: "instance_id"
            })
        ));
        assert!(matches!(
            issuer.issue_at("b", shard(), &"c".repeat(300), TTL, NOW),
            Err(IssueError::InvalidField { field: "colony_id" })
        ));
    }

    #[test]
    fn tampering_with_any_field_breaks_the_signature() {
        let (issuer, _) = setup();
        let other = secret("rotation-secret-0123456789");
        // Knows the issuer's key and a second one, so a changed key id is checked too.
        let verifier = TokenVerifier::new(&secret("test-secret-0123456789abcdef")).with_key(&other);
        type Tamper = fn(&mut InitToken);
        let tampers: [(&str, Tamper); 7] = [
            ("token_id", |t| {
                let c = if t.token_id.starts_with('f') {
                    "e"
                } else {
                    "f"
                };
                t.token_id.replace_range(0..1, c);
            }),
            ("instance_id", |t| t.instance_id.push('0')),
            ("shard.x", |t| t.shard.x += 1),
            ("shard.y", |t| t.shard.y += 1),
            ("colony_id", |t| t.colony_id = "colony-2".into()),
            ("issued_at", |t| t.issued_at -= 1),
            ("expires_at", |t| t.expires_at += 3600),
        ];
        assert!(verifier.check_signature(&token(&issuer)).is_ok());
        for (field, tamper) in tampers {
            let mut t = token(&issuer);
            tamper(&mut t);
            assert_eq!(
                verifier.check_signature(&t),
                Err(TokenError::Forged),
                "tampered {field}"
            );
        }
        let mut t = token(&issuer);
        t.key_id = other.key_id().to_owned();
        assert_eq!(verifier.check_signature(&t), Err(TokenError::Forged));
    }

    proptest! {
        #[test]
        fn any_token_round_trips_and_any_change_is_caught(
            instance in "[a-z_0-9]{1,40}",
            colony in "[0-9a-f]{1,64}",
            x in any::<u32>(),
            y in any::<u32>(),
            issued in 0u64..u64::MAX / 2,
            ttl in 0u64..1_000_000,
            field in 0usize..7,
            bit in 0u32..8,
        ) {
            let (issuer, verifier) = setup();
            let shard = ShardCoord::new(x, y);
            let t = issuer
                .issue_at(&instance, shard, &colony, Duration::from_secs(ttl), issued)
                .unwrap();
            let json = serde_json::to_string(&t).unwrap();
            let back: InitToken = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(&back, &t);
            prop_assert!(verifier.check_signature(&back).is_ok());
            prop_assert_eq!(verifier.verify(&back, &instance, shard, issued), Ok(()));

            let mut bad = t.clone();
            let flip = 1u64 << bit;
            match field {
                0 => bad.instance_id.push('x'),
                1 => bad.colony_id.insert(0, 'a'),
                2 => bad.shard.x ^= flip as u32,
                3 => bad.shard.y ^= flip as u32,
                4 => bad.issued_at ^= flip,
                5 => bad.expires_at ^= flip << 8,
                _ => bad.token_id = hex::encode((u128::from_str_radix(&t.token_id, 16).unwrap() ^ u128::from(flip)).to_be_bytes()),
            }
            let refused = verifier.check_signature(&bad);
            prop_assert!(
                matches!(refused, Err(TokenError::Forged | TokenError::Malformed(_))),
                "{:?}", refused
            );
        }
    }

    #[test]
    fn signing_input_is_the_documented_encoding() {
        let t = InitToken {
            token_id: "00112233445566778899aabbccddeeff".into(),
            instance_id: "backend_9000".into(),
            shard: ShardCoord::new(2, 1),
            colony_id: "c0".into(),
            issued_at: 1_700_000_000,
            expires_at: 1_700_000_060,
            key_id: "k1".into(),
            signature: String::new(),
        };
        let mut expected = Vec::new();
        for s in [
            "colony-init-token-v1",
            "00112233445566778899aabbccddeeff",
            "backend_9000",
        ] {
            expected.extend_from_slice(&(s.len() as u32).to_be_bytes());
            expected.extend_from_slice(s.as_bytes());
        }
        expected.extend_from_slice(&[0, 0, 0, 2, 0, 0, 0, 1]);
        expected.extend_from_slice(&[0, 0, 0, 2]);
        expected.extend_from_slice(b"c0");
        expected.extend_from_slice(&1_700_000_000u64.to_be_bytes());
        expected.extend_from_slice(&1_700_000_060u64.to_be_bytes());
        expected.extend_from_slice(&[0, 0, 0, 2]);
        expected.extend_from_slice(b"k1");
        assert_eq!(t.signing_input(), expected);

        // A known answer, computed independently (Python's hmac module), pins the format.
        let issuer = TokenIssuer::new(
            &secret("known-answer-secret-0123")
                .with_key_id("k1")
                .unwrap(),
        );
        let mut signed = t.clone();
        issuer.sign(&mut signed);
        assert_eq!(signed.signature, KNOWN_SIGNATURE);
    }

    /// `hmac.new(b"known-answer-secret-0123", signing_input, "sha256").hexdigest()`.
    const KNOWN_SIGNATURE: &str =
        "7125149b90e56c953723ec98501f3df75db8f60d530cefdcce8269f382648296";

    #[test]
    fn replay_cache_is_bounded_and_never_forgets_live_ids() {
        let (issuer, _) = setup();
        let verifier = TokenVerifier::new(&secret("test-secret-0123456789abcdef"))
            .with_replay_capacity(3)
            .with_leeway(Duration::ZERO);
        let issue = |ttl| {
            issuer
                .issue_at(
                    "backend_9000",
                    shard(),
                    "colony-1",
                    Duration::from_secs(ttl),
                    NOW,
                )
                .unwrap()
        };
        let short = issue(10);
        let long = [issue(100), issue(100)];
        let verify = |t: &InitToken, now| verifier.verify(t, "backend_9000", shard(), now);
        assert_eq!(verify(&short, NOW), Ok(()));
        assert_eq!(verify(&long[0], NOW), Ok(()));
        assert_eq!(verify(&long[1], NOW), Ok(()));
        // Full of live ids: refuse rather than forget.
        assert_eq!(
            verify(&issue(100), NOW + 5),
            Err(TokenError::ReplayCacheFull)
        );
        assert_eq!(verifier.replay_len(), 3);
        // Once `short` has expired its slot is reclaimed, and the live ones stay.
        assert_eq!(verify(&issue(100), NOW + 11), Ok(()));
        assert_eq!(verifier.replay_len(), 3);
        assert_eq!(verify(&long[0], NOW + 12), Err(TokenError::Replayed));
        assert_eq!(
            verify(&issue(100), NOW + 12),
            Err(TokenError::ReplayCacheFull)
        );
        // Everything expires eventually.
        assert_eq!(verify(&issue(200), NOW + 150), Ok(()));
        assert_eq!(verifier.replay_len(), 1);
    }

    #[test]
    fn concurrent_verification_accepts_a_token_once() {
        let (issuer, verifier) = setup();
        let tokens: Vec<InitToken> = (0..50).map(|_| token(&issuer)).collect();
        let accepted: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        tokens
                            .iter()
                            .filter(|t| verifier.verify(t, "backend_9000", shard(), NOW).is_ok())
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(accepted, 50);
        assert_eq!(verifier.replay_len(), 50);
    }

    #[test]
    fn rotation_accepts_both_keys() {
        let old = secret("old-secret-0123456789abcdef");
        let new = secret("new-secret-0123456789abcdef");
        let verifier = TokenVerifier::new(&old).with_key(&new);
        for s in [&old, &new] {
            let t = TokenIssuer::new(s)
                .issue_at("b", shard(), "c", TTL, NOW)
                .unwrap();
            assert_eq!(verifier.verify(&t, "b", shard(), NOW), Ok(()));
        }
    }

    #[test]
    fn hex_fields_are_read_in_either_case_and_nothing_else() {
        let (issuer, verifier) = setup();
        let verify = |t: &InitToken| verifier.verify(t, "backend_9000", shard(), NOW);
        // Upper-case hex spells the same id and tag.
        let mut t = token(&issuer);
        t.token_id = t.token_id.to_uppercase();
        issuer.sign(&mut t);
        t.signature = t.signature.to_uppercase();
        assert_eq!(verify(&t), Ok(()));
        // Wrong lengths and non-digits: a malformed id, a forged tag.
        for bad_id in [
            "0".repeat(31),
            "0".repeat(34),
            format!("{}g", "0".repeat(31)),
        ] {
            let mut t = token(&issuer);
            t.token_id = bad_id;
            issuer.sign(&mut t);
            assert_eq!(verify(&t), Err(TokenError::Malformed("token_id")));
        }
        for bad_tag in [" ", "+", "\u{e9}"] {
            let mut t = token(&issuer);
            t.signature.replace_range(0..1, bad_tag);
            assert_eq!(verify(&t), Err(TokenError::Forged), "{bad_tag:?}");
        }
    }

    #[test]
    fn long_fields_are_signed_through_the_buffer() {
        // Fields larger than the stack buffer still sign and verify consistently.
        let (issuer, _) = setup();
        let mut t = token(&issuer);
        t.instance_id = "i".repeat(2000);
        t.colony_id = "c".repeat(700);
        issuer.sign(&mut t);
        let expected = {
            let mut mac = keyed(&secret("test-secret-0123456789abcdef"));
            mac.update(&t.signing_input());
            hex::encode(mac.finalize().into_bytes())
        };
        assert_eq!(t.signature, expected);
    }

    #[test]
    fn statuses_and_codes() {
        use TokenError::*;
        let all = [
            (UnknownKey, 401),
            (Forged, 401),
            (Expired, 401),
            (NotYetValid, 401),
            (WrongInstance, 403),
            (WrongShard, 403),
            (Replayed, 403),
            (Malformed("token_id"), 400),
            (ReplayCacheFull, 503),
        ];
        let mut codes = std::collections::HashSet::new();
        for (e, status) in all {
            assert_eq!(e.http_status(), status, "{e:?}");
            assert!(codes.insert(e.code()), "duplicate code {}", e.code());
            assert!(e.code().starts_with("token_"));
        }
        assert_eq!(Expired.code(), "token_expired");
        assert_eq!(Replayed.to_string(), "token has already been used");
    }

    #[test]
    fn json_shape_and_redacted_debug() {
        let (issuer, _) = setup();
        let t = token(&issuer);
        let expected = format!(
            r#"{{"token_id":"{}","instance_id":"backend_9000","shard":{{"x":3,"y":4}},"colony_id":"colony-1","issued_at":{NOW},"expires_at":{},"key_id":"{}","signature":"{}"}}"#,
            t.token_id,
            NOW + 60,
            issuer.key_id(),
            t.signature
        );
        assert_eq!(serde_json::to_string(&t).unwrap(), expected);
        let extra = expected.replace(r#""token_id""#, r#""extra":1,"token_id""#);
        assert!(serde_json::from_str::<InitToken>(&extra).is_err());
        let shown = format!("{t:?}");
        assert!(!shown.contains(&t.signature));
        assert!(shown.contains("<redacted>"));
        assert!(!format!("{issuer:?}").contains("test-secret"));
    }
}
