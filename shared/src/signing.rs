//! Signed node calls (DESIGN §13): the `Colony-Signature` header that proves an HTTP request
//! comes from a holder of the cluster secret and was not changed on the way.
//!
//! This module owns the header's wire form, the MAC's input, signing ([`RequestSigner`]) and
//! verifying ([`SignatureVerifier`]), and the reasons a signature is refused
//! ([`SignatureError`]). It knows nothing of HTTP libraries: the control plane's extractor
//! feeds it the header, method, path and body, and maps a refusal onto a 401. Replays of a
//! valid request inside the time window are the caller's concern (heartbeats carry a
//! `boot_id` and `seq`; init tokens are single-use).
//!
//! # Wire form
//!
//! ```text
//! Colony-Signature: key_id=<id>, ts=<unix ms>, mac=<64 hex digits>
//! ```
//!
//! `mac` is HMAC-SHA256, under the secret named by `key_id`, of
//! `METHOD "\n" PATH "\n" ts "\n" body`: the method in upper case as sent, the request target's
//! path and query exactly as sent (e.g. `/heartbeat`), `ts` in decimal as in the header, and
//! the body's raw bytes. A request is refused when `ts` is more than [`DEFAULT_LEEWAY`] away
//! from the receiver's clock either way.
//!
//! # Cost
//!
//! Each key's HMAC state (the key already absorbed) is prepared once and cloned per request;
//! the header is parsed without allocating, and the body is absorbed in place. A heartbeat's
//! check is one HMAC over ~300 bytes, about a microsecond.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::secret::ClusterSecret;

type HmacSha256 = Hmac<Sha256>;

/// The header's name, in the lower case HTTP/2 requires and HTTP/1 ignores.
pub const HEADER: &str = "colony-signature";

/// How far `ts` may be from the receiver's clock, either way.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);

/// Longest header value parsed, in bytes: a 64-byte key id, a 20-digit `ts` and a 64-digit
/// `mac` with their names fit in well under this.
pub const MAX_HEADER_LEN: usize = 256;

/// Milliseconds since the Unix epoch by the wall clock; 0 if the clock is before 1970.
/// Signatures cross machines, so their time is wall-clock time.
pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

// === impl SignatureError ===

/// Why a signed request was refused. Messages and codes are safe to send back: they say
/// what was wrong with the header, never what the right MAC would have been.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum SignatureError {
    /// No `Colony-Signature` header.
    #[error("missing Colony-Signature header")]
    Missing,
    /// The header is not `key_id=<id>, ts=<unix ms>, mac=<64 hex>` (or appears twice).
    #[error("malformed Colony-Signature header: expected key_id=<id>, ts=<unix ms>, mac=<64 hex digits>")]
    Malformed,
    /// `key_id` names no secret this node holds.
    #[error("Colony-Signature names an unknown key")]
    UnknownKey,
    /// `ts` is more than the leeway away from this node's clock.
    #[error("Colony-Signature timestamp is outside the allowed window")]
    BadTimestamp,
    /// The MAC does not match the request.
    #[error("Colony-Signature does not match the request")]
    BadMac,
}

impl SignatureError {
    /// A stable machine-readable code, also the `reason` label of the refusal counter.
    pub fn code(&self) -> &'static str {
        match self {
            SignatureError::Missing => "missing",
            SignatureError::Malformed => "malformed",
            SignatureError::UnknownKey => "unknown_key",
            SignatureError::BadTimestamp => "bad_timestamp",
            SignatureError::BadMac => "bad_mac",
        }
    }
}

// === impl SignatureHeader ===

/// A parsed `Colony-Signature` value, borrowing the key id from it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SignatureHeader<'a> {
    /// Which secret signed.
    pub key_id: &'a str,
    /// When, in Unix milliseconds.
    pub ts: u64,
    /// The MAC.
    pub mac: [u8; 32],
}

impl fmt::Debug for SignatureHeader<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The MAC of a live request is not a secret, but it is a credential for 60 s.
        f.debug_struct("SignatureHeader")
            .field("key_id", &self.key_id)
            .field("ts", &self.ts)
            .finish_non_exhaustive()
    }
}

impl<'a> SignatureHeader<'a> {
    /// Parses a header value. Each of `key_id`, `ts` and `mac` must appear exactly once, in
    /// any order, separated by commas with optional spaces; nothing else may.
    ///
    /// Precisely: at most [`MAX_HEADER_LEN`] bytes; split at every `,` into parts; each part,
    /// with spaces (only spaces) trimmed from both ends, is `name=value` split at its first
    /// `=`; the names are `key_id` (1 to 64 of `[A-Za-z0-9._-]`), `ts` (decimal digits only,
    /// at most `u64::MAX`) and `mac` (64 hex digits, either case). So an empty part, a space
    /// inside a part, a second `=` and any byte outside ASCII are all refused.
    ///
    /// # Errors
    ///
    /// [`SignatureError::Malformed`].
    pub fn parse(value: &'a [u8]) -> Result<Self, SignatureError> {
        // One pass over the bytes, each looked at once: a part's name is matched as a prefix
        // (`name=` ends at the first `=`, and no name holds one), its value is read while it
        // is validated, and what follows must be spaces up to a comma or the end. Every byte
        // lands in one of those checks, none of which passes a byte outside ASCII, so the
        // value needs no UTF-8 validation of its own. This runs for every heartbeat: the
        // `split`/`trim`/`split_once` version cost the coordinator's heartbeat thread ~5%.
        if value.len() > MAX_HEADER_LEN {
            return Err(SignatureError::Malformed);
        }
        let (mut key_id, mut ts, mut mac) = (None, None, None);
        let mut at = 0;
        loop {
            at = skip_spaces(value, at);
            let rest = &value[at..];
            at = if let Some(field) = rest.strip_prefix(b"key_id=") {
                let len = field
                    .iter()
                    .take_while(|&&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
                    .count();
                let id =
                    std::str::from_utf8(&field[..len]).map_err(|_| SignatureError::Malformed)?;
                if !(1..=64).contains(&len) || key_id.replace(id).is_some() {
                    return Err(SignatureError::Malformed);
                }
                value.len() - field.len() + len
            } else if let Some(field) = rest.strip_prefix(b"ts=") {
                let (n, len) = decimal_prefix(field).ok_or(SignatureError::Malformed)?;
                if ts.replace(n).is_some() {
                    return Err(SignatureError::Malformed);
                }
                value.len() - field.len() + len
            } else if let Some(field) = rest.strip_prefix(b"mac=") {
                let tag = field
                    .get(..64)
                    .and_then(decode_mac)
                    .ok_or(SignatureError::Malformed)?;
                if mac.replace(tag).is_some() {
                    return Err(SignatureError::Malformed);
                }
                value.len() - field.len() + 64
            } else {
                return Err(SignatureError::Malformed);
            };
            // The value ends here: trailing spaces, then the next part or the end.
            at = skip_spaces(value, at);
            match value.get(at) {
                None => break,
                Some(b',') => at += 1,
                Some(_) => return Err(SignatureError::Malformed),
            }
        }
        let (Some(key_id), Some(ts), Some(mac)) = (key_id, ts, mac) else {
            return Err(SignatureError::Malformed);
        };
        Ok(SignatureHeader { key_id, ts, mac })
    }
}

/// The index of the first byte from `at` on that is not a space.
fn skip_spaces(bytes: &[u8], mut at: usize) -> usize {
    while bytes.get(at) == Some(&b' ') {
        at += 1;
    }
    at
}

/// The number the decimal digits at the start of `bytes` spell, and how many there are;
/// `None` if there are none or the number exceeds `u64::MAX`. Leading zeros are allowed, as
/// `u64::from_str` allows them; a sign is not.
fn decimal_prefix(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut n = 0u64;
    let mut len = 0;
    for &c in bytes {
        if !c.is_ascii_digit() {
            break;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
        len += 1;
    }
    (len > 0).then_some((n, len))
}

/// Each byte's value as a hex digit (either case), or [`NOT_HEX`].
const HEX_DIGITS: [u8; 256] = {
    let mut table = [NOT_HEX; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        table[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};
/// In [`HEX_DIGITS`]: not a hex digit. Its high bits are what no digit's value has.
const NOT_HEX: u8 = 0xFF;

/// The 32 bytes 64 hex digits (either case) spell, as `hex::decode_to_slice` reads them.
/// A table lookup per digit and one check at the end: `hex` validated and branched per digit,
/// 2% of a coordinator's CPU at 10 000 heartbeats a second. Not constant-time, which the MAC
/// sent in the clear need not be; comparing it with the right one is.
fn decode_mac(digits: &[u8]) -> Option<[u8; 32]> {
    if digits.len() != 64 {
        return None;
    }
    let mut tag = [0u8; 32];
    let mut seen = 0u8;
    for (byte, pair) in tag.iter_mut().zip(digits.chunks_exact(2)) {
        let (high, low) = (HEX_DIGITS[pair[0] as usize], HEX_DIGITS[pair[1] as usize]);
        seen |= high | low;
        *byte = (high << 4) | low;
    }
    (seen & 0xF0 == 0).then_some(tag)
}

/// `keyed` (a prepared HMAC state) after absorbing the request.
fn request_mac(keyed: &HmacSha256, method: &str, path: &str, ts: u64, body: &[u8]) -> HmacSha256 {
    let mut digits = [0u8; 20];
    let ts = decimal(ts, &mut digits);
    let mut mac = keyed.clone();
    for piece in [method.as_bytes(), b"\n", path.as_bytes(), b"\n", ts, b"\n"] {
        mac.update(piece);
    }
    mac.update(body);
    mac
}

/// `n` in decimal, written into the end of `buf`.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        // `n % 10` is below 10, so the cast cannot truncate.
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// HMAC-SHA256 keyed with `secret`, ready to clone.
#[allow(clippy::expect_used)]
fn keyed(secret: &ClusterSecret) -> HmacSha256 {
    HmacSha256::new_from_slice(secret.expose_bytes()).expect("HMAC accepts keys of any length")
}

// === impl RequestSigner ===

/// Signs requests with one secret (every node's client side).
#[derive(Clone)]
pub struct RequestSigner {
    key_id: String,
    mac: HmacSha256,
}

impl RequestSigner {
    /// A signer using `secret`.
    pub fn new(secret: &ClusterSecret) -> Self {
        RequestSigner {
            key_id: secret.key_id().to_owned(),
            mac: keyed(secret),
        }
    }

    /// The `Colony-Signature` value for `method path` with `body`, stamped now.
    pub fn sign(&self, method: &str, path: &str, body: &[u8]) -> String {
        self.sign_at(method, path, body, unix_millis())
    }

    /// [`RequestSigner::sign`] stamped `ts` (Unix milliseconds).
    pub fn sign_at(&self, method: &str, path: &str, body: &[u8], ts: u64) -> String {
        let tag = request_mac(&self.mac, method, path, ts, body)
            .finalize()
            .into_bytes();
        format!("key_id={}, ts={ts}, mac={}", self.key_id, hex::encode(tag))
    }
}

impl fmt::Debug for RequestSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestSigner(key_id={})", self.key_id)
    }
}

// === impl SignatureVerifier ===

/// Verifies `Colony-Signature` headers (every node's server side). Stateless, so share it
/// behind an `Arc` and call it from any thread.
#[derive(Clone)]
pub struct SignatureVerifier {
    /// Few keys (one, two during a rotation), so a linear scan beats hashing.
    keys: Vec<(String, HmacSha256)>,
    leeway_ms: u64,
}

/// A header that names a known key and a timely `ts`: all that can be checked before the
/// body has been read. [`Pending::verify`] finishes the check.
#[derive(Clone)]
pub struct Pending<'v> {
    keyed: &'v HmacSha256,
    ts: u64,
    mac: [u8; 32],
}

impl fmt::Debug for Pending<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending")
            .field("ts", &self.ts)
            .finish_non_exhaustive()
    }
}

impl Pending<'_> {
    /// Checks the MAC over the request, in constant time.
    ///
    /// # Errors
    ///
    /// [`SignatureError::BadMac`].
    pub fn verify(&self, method: &str, path: &str, body: &[u8]) -> Result<(), SignatureError> {
        request_mac(self.keyed, method, path, self.ts, body)
            .verify_slice(&self.mac)
            .map_err(|_| SignatureError::BadMac)
    }
}

impl SignatureVerifier {
    /// A verifier accepting requests signed with `secret`, within [`DEFAULT_LEEWAY`].
    pub fn new(secret: &ClusterSecret) -> Self {
        SignatureVerifier {
            keys: vec![(secret.key_id().to_owned(), keyed(secret))],
            leeway_ms: millis(DEFAULT_LEEWAY),
        }
    }

    /// Also accepts requests signed with `secret` (for key rotation). A key id already held
    /// is replaced.
    pub fn with_key(mut self, secret: &ClusterSecret) -> Self {
        self.keys.retain(|(id, _)| id != secret.key_id());
        self.keys.push((secret.key_id().to_owned(), keyed(secret)));
        self
    }

    /// Sets how far `ts` may be from this node's clock.
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway_ms = millis(leeway);
        self
    }

    /// The checks that need no body: the header is there and well formed, names a known
    /// key, and its `ts` is within the leeway of `now` (Unix milliseconds).
    ///
    /// # Errors
    ///
    /// [`SignatureError::Missing`], [`SignatureError::Malformed`],
    /// [`SignatureError::UnknownKey`] or [`SignatureError::BadTimestamp`], in that order.
    pub fn check_header(
        &self,
        value: Option<&[u8]>,
        now: u64,
    ) -> Result<Pending<'_>, SignatureError> {
        let header = SignatureHeader::parse(value.ok_or(SignatureError::Missing)?)?;
        let Some((_, keyed)) = self.keys.iter().find(|(id, _)| id == header.key_id) else {
            return Err(SignatureError::UnknownKey);
        };
        if header.ts.abs_diff(now) > self.leeway_ms {
            return Err(SignatureError::BadTimestamp);
        }
        Ok(Pending {
            keyed,
            ts: header.ts,
            mac: header.mac,
        })
    }

    /// Every check at once: [`SignatureVerifier::check_header`], then the MAC.
    ///
    /// # Errors
    ///
    /// The first check that fails.
    pub fn verify(
        &self,
        value: Option<&[u8]>,
        method: &str,
        path: &str,
        body: &[u8],
        now: u64,
    ) -> Result<(), SignatureError> {
        self.check_header(value, now)?.verify(method, path, body)
    }
}

impl fmt::Debug for SignatureVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("SignatureVerifier")
            .field("key_ids", &ids)
            .field("leeway_ms", &self.leeway_ms)
            .finish()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_750_000_000_000;
    const BODY: &[u8] = br#"{"instance_id":"backend_9000","seq":1}"#;

    fn secret(text: &str) -> ClusterSecret {
        ClusterSecret::from_env_value(text).unwrap()
    }

    fn setup() -> (RequestSigner, SignatureVerifier) {
        let s = secret("test-secret-0123456789abcdef");
        (RequestSigner::new(&s), SignatureVerifier::new(&s))
    }

    fn verify(v: &SignatureVerifier, header: &str, body: &[u8]) -> Result<(), SignatureError> {
        v.verify(Some(header.as_bytes()), "POST", "/heartbeat", body, NOW)
    }

    #[test]
    fn a_signed_request_verifies_and_any_change_is_refused() {
        let (signer, verifier) = setup();
        let header = signer.sign_at("POST", "/heartbeat", BODY, NOW);
        assert_eq!(verify(&verifier, &header, BODY), Ok(()));
        let changed = BODY
            .to_vec()
            .into_iter()
            .map(|b| if b == b'1' { b'2' } else { b })
            .collect::<Vec<_>>();
        assert_eq!(
            verify(&verifier, &header, &changed),
            Err(SignatureError::BadMac)
        );
        for (method, path) in [
            ("PUT", "/heartbeat"),
            ("POST", "/heartbeat?x"),
            ("POST", "/tokens/report"),
        ] {
            assert_eq!(
                verifier.verify(Some(header.as_bytes()), method, path, BODY, NOW),
                Err(SignatureError::BadMac),
                "{method} {path}"
            );
        }
        // The timestamp is covered: moving it breaks the MAC even inside the window.
        let moved = header.replace(&format!("ts={NOW}"), &format!("ts={}", NOW + 1));
        assert_eq!(verify(&verifier, &moved, BODY), Err(SignatureError::BadMac));
    }

    #[test]
    fn each_refusal_has_its_reason() {
        let (signer, verifier) = setup();
        let good = signer.sign_at("POST", "/heartbeat", BODY, NOW);
        assert_eq!(
            verifier.verify(None, "POST", "/heartbeat", BODY, NOW),
            Err(SignatureError::Missing)
        );
        let truncated = &good[..good.len() - 10];
        let flipped = {
            let last = if good.ends_with('0') { "1" } else { "0" };
            format!("{}{last}", &good[..good.len() - 1])
        };
        let malformed = [
            "",
            truncated,
            "key_id=k, ts=1",
            "ts=1, mac=00",
            &good.replace("key_id=", "kid="),
            &format!("{good}, extra=1"),
            &format!("{good}, ts=1"),
            &good.replace(&format!("ts={NOW}"), "ts=+1"),
            &good.replace(&format!("ts={NOW}"), "ts=-1"),
            &good.replace(&format!("ts={NOW}"), "ts=99999999999999999999999"),
            &good.replace("mac=", "mac=zz"),
            &good.replace("key_id=", "key_id=a b"),
            "key_id=, ts=1, mac=",
        ];
        for header in malformed {
            assert_eq!(
                verify(&verifier, header, BODY),
                Err(SignatureError::Malformed),
                "{header:?}"
            );
        }
        assert_eq!(
            verifier.verify(Some(&[0xff, 0xfe]), "POST", "/heartbeat", BODY, NOW),
            Err(SignatureError::Malformed)
        );
        let long = format!("{good}{}", " ".repeat(MAX_HEADER_LEN));
        assert_eq!(
            verify(&verifier, &long, BODY),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(&verifier, &flipped, BODY),
            Err(SignatureError::BadMac)
        );

        let stranger = RequestSigner::new(&secret("another-secret-0123456789"));
        assert_eq!(
            verify(
                &verifier,
                &stranger.sign_at("POST", "/heartbeat", BODY, NOW),
                BODY
            ),
            Err(SignatureError::UnknownKey)
        );
        // Same key id, other secret: a bad MAC, not an unknown key.
        let impostor = RequestSigner::new(
            &secret("another-secret-0123456789")
                .with_key_id(setup().0.key_id.clone())
                .unwrap(),
        );
        assert_eq!(
            verify(
                &verifier,
                &impostor.sign_at("POST", "/heartbeat", BODY, NOW),
                BODY
            ),
            Err(SignatureError::BadMac)
        );
        let hour = 3_600_000;
        for ts in [NOW - hour, NOW + hour] {
            assert_eq!(
                verify(
                    &verifier,
                    &signer.sign_at("POST", "/heartbeat", BODY, ts),
                    BODY
                ),
                Err(SignatureError::BadTimestamp)
            );
        }
    }

    #[test]
    fn the_window_is_sixty_seconds_either_way() {
        let (signer, verifier) = setup();
        for (ts, ok) in [
            (NOW - 60_000, true),
            (NOW + 60_000, true),
            (NOW - 60_001, false),
            (NOW + 60_001, false),
        ] {
            let header = signer.sign_at("POST", "/heartbeat", BODY, ts);
            assert_eq!(verify(&verifier, &header, BODY).is_ok(), ok, "{ts}");
        }
        let strict = verifier.with_leeway(Duration::from_secs(1));
        let header = signer.sign_at("POST", "/heartbeat", BODY, NOW - 1_001);
        assert_eq!(
            verify(&strict, &header, BODY),
            Err(SignatureError::BadTimestamp)
        );
    }

    #[test]
    fn fields_may_come_in_any_order_with_or_without_spaces() {
        let (signer, verifier) = setup();
        let good = signer.sign_at("POST", "/heartbeat", BODY, NOW);
        let parts: Vec<&str> = good.split(", ").collect();
        let reordered = format!("{},{} ,  {}", parts[2], parts[0], parts[1]);
        assert_eq!(verify(&verifier, &reordered, BODY), Ok(()));
        let upper = good.replace(
            &good[good.len() - 64..],
            &good[good.len() - 64..].to_uppercase(),
        );
        assert_eq!(verify(&verifier, &upper, BODY), Ok(()));
    }

    #[test]
    fn rotation_accepts_both_keys() {
        let old = secret("old-secret-0123456789abcdef");
        let new = secret("new-secret-0123456789abcdef");
        let verifier = SignatureVerifier::new(&old).with_key(&new);
        for s in [&old, &new] {
            let header = RequestSigner::new(s).sign_at("POST", "/heartbeat", BODY, NOW);
            assert_eq!(verify(&verifier, &header, BODY), Ok(()));
        }
    }

    #[test]
    fn the_mac_is_the_documented_one() {
        // A known answer, computed independently:
        // hmac.new(b"known-answer-secret-0123", b"POST\n/heartbeat\n1750000000000\n" + body,
        //          "sha256").hexdigest()
        let s = secret("known-answer-secret-0123")
            .with_key_id("k1")
            .unwrap();
        let header = RequestSigner::new(&s).sign_at("POST", "/heartbeat", BODY, NOW);
        assert_eq!(header, format!("key_id=k1, ts={NOW}, mac={KNOWN_MAC}"));
    }

    const KNOWN_MAC: &str = "07c1b890e936129a184cdbbc9ce59600703da8c220471aea6365b55e59c04ed0";

    #[test]
    fn codes_are_distinct_and_debug_hides_the_mac() {
        use SignatureError::*;
        let codes: std::collections::HashSet<_> =
            [Missing, Malformed, UnknownKey, BadTimestamp, BadMac]
                .iter()
                .map(|e| e.code())
                .collect();
        assert_eq!(codes.len(), 5);
        let (signer, _) = setup();
        let header = signer.sign_at("POST", "/heartbeat", BODY, NOW);
        let parsed = SignatureHeader::parse(header.as_bytes()).unwrap();
        let shown = format!("{parsed:?}");
        assert!(!shown.contains(&header[header.len() - 64..]), "{shown}");
        assert!(!format!("{signer:?}").contains("test-secret"));
    }

    #[test]
    fn decimal_matches_display() {
        let mut buf = [0u8; 20];
        for n in [0, 9, 10, 1_750_000_000_000, u64::MAX] {
            assert_eq!(decimal(n, &mut buf), n.to_string().as_bytes());
        }
    }

    #[test]
    fn the_mac_decodes_as_the_hex_crate_does() {
        let digits = "0123456789abcdefABCDEF";
        let good: String = (0..64)
            .map(|i| digits.as_bytes()[(i * 7) % 22] as char)
            .collect();
        let mut expected = [0u8; 32];
        hex::decode_to_slice(&good, &mut expected).unwrap();
        assert_eq!(decode_mac(good.as_bytes()), Some(expected));
        for bad in [
            String::new(),
            good[..63].to_owned(),
            format!("{good}0"),
            format!("{}g", &good[..63]),
            format!("{} ", &good[..63]),
            format!("é{}", &good[..62]),
        ] {
            assert_eq!(decode_mac(bad.as_bytes()), None, "{bad:?}");
        }
    }

    /// `SignatureHeader::parse` as it was before the one-pass rewrite, word for word: the
    /// definition of what the header accepts, which the rewrite must match exactly.
    fn reference_parse(value: &[u8]) -> Result<SignatureHeader<'_>, SignatureError> {
        if value.len() > MAX_HEADER_LEN {
            return Err(SignatureError::Malformed);
        }
        let text = std::str::from_utf8(value).map_err(|_| SignatureError::Malformed)?;
        let (mut key_id, mut ts, mut mac) = (None, None, None);
        for part in text.split(',') {
            let (name, value) = part
                .trim_matches(' ')
                .split_once('=')
                .ok_or(SignatureError::Malformed)?;
            let slot = match name {
                "key_id" => &mut key_id,
                "ts" => &mut ts,
                "mac" => &mut mac,
                _ => return Err(SignatureError::Malformed),
            };
            if slot.replace(value).is_some() {
                return Err(SignatureError::Malformed);
            }
        }
        let (Some(key_id), Some(ts), Some(mac)) = (key_id, ts, mac) else {
            return Err(SignatureError::Malformed);
        };
        let key_id_ok = (1..=64).contains(&key_id.len())
            && key_id
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
        if !key_id_ok || ts.is_empty() || !ts.bytes().all(|c| c.is_ascii_digit()) {
            return Err(SignatureError::Malformed);
        }
        let ts = ts.parse().map_err(|_| SignatureError::Malformed)?;
        let tag = decode_mac(mac.as_bytes()).ok_or(SignatureError::Malformed)?;
        Ok(SignatureHeader {
            key_id,
            ts,
            mac: tag,
        })
    }

    /// A parse's outcome with every field visible (`SignatureHeader`'s `Debug` hides the MAC).
    type Fields<'a> = Result<(&'a str, u64, [u8; 32]), SignatureError>;

    fn fields(parsed: Result<SignatureHeader<'_>, SignatureError>) -> Fields<'_> {
        parsed.map(|h| (h.key_id, h.ts, h.mac))
    }

    fn both(value: &[u8]) -> (Fields<'_>, Fields<'_>) {
        (
            fields(SignatureHeader::parse(value)),
            fields(reference_parse(value)),
        )
    }

    #[test]
    fn the_parser_keeps_the_reference_edges() {
        let (signer, _) = setup();
        let good = signer.sign_at("POST", "/heartbeat", BODY, NOW);
        let mac = &good[good.len() - 64..];
        let padded = |len: usize| format!("{good}{}", " ".repeat(len - good.len()));
        let cases: Vec<(String, bool)> = vec![
            (good.clone(), true),
            (padded(MAX_HEADER_LEN), true),
            (padded(MAX_HEADER_LEN + 1), false),
            (format!("  {good}  "), true),
            (format!("{good},"), false),
            (format!(",{good}"), false),
            (good.replacen(", ", ",,", 1), false),
            (good.replacen(", ", " , ", 2), true),
            (format!("key_id=k=1, ts=1, mac={mac}"), false),
            (format!("key_id=k1, ts = 1, mac={mac}"), false),
            (format!("key_id=k1, ts=1 , mac={mac}"), true),
            (format!("key_id=k1, ts=\t1, mac={mac}"), false),
            (format!("key_id=k1,\tts=1, mac={mac}"), false),
            (format!("key_id=k1, ts=1 2, mac={mac}"), false),
            (
                format!("key_id=k1, ts=18446744073709551615, mac={mac}"),
                true,
            ),
            (
                format!("key_id=k1, ts=18446744073709551616, mac={mac}"),
                false,
            ),
            (
                format!("key_id=k1, ts=000018446744073709551615, mac={mac}"),
                true,
            ),
            (format!("key_id=k1, ts=0, mac={mac}"), true),
            (format!("key_id=k1, ts=, mac={mac}"), false),
            (format!("key_id={}, ts=1, mac={mac}", "k".repeat(64)), true),
            (format!("key_id={}, ts=1, mac={mac}", "k".repeat(65)), false),
            (format!("key_id=é, ts=1, mac={mac}"), false),
            (format!("key_id=k1, ts=1, mac={mac}0"), false),
            (format!("key_id=k1, ts=1, mac={}", &mac[1..]), false),
            (format!("key_id=k1, ts=1, mac={mac}="), false),
            (format!("KEY_ID=k1, ts=1, mac={mac}"), false),
            (format!("key_id=k1, ts=1, mac={mac}, mac={mac}"), false),
        ];
        for (header, accepted) in &cases {
            let (new, reference) = both(header.as_bytes());
            assert_eq!(new, reference, "{header:?}");
            assert_eq!(new.is_ok(), *accepted, "{header:?}");
        }
        let mut bytes = good.into_bytes();
        bytes[3] = 0xff;
        assert_eq!(
            both(&bytes),
            (
                Err(SignatureError::Malformed),
                Err(SignatureError::Malformed)
            )
        );
    }

    /// Leading or trailing spaces of a part: mostly none, sometimes a few, now and then
    /// enough to push the header past [`MAX_HEADER_LEN`].
    fn spaces() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => Just(String::new()),
            3 => " {1,3}",
            1 => " {0,120}",
        ]
    }

    fn key_id_value() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => "[A-Za-z0-9._-]{1,64}",
            1 => "[A-Za-z0-9._-]{60,70}",
            1 => "[A-Za-z0-9._= é\t+-]{0,8}",
        ]
    }

    fn ts_value() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => any::<u64>().prop_map(|n| n.to_string()),
            2 => (1_700_000_000_000u64..1_800_000_000_000).prop_map(|n| n.to_string()),
            1 => (0u64..1000).prop_map(|k| (u64::MAX - k).to_string()),
            1 => (0u128..1000).prop_map(|k| (u128::from(u64::MAX) + 1 + k).to_string()),
            1 => ("0{1,25}", any::<u64>()).prop_map(|(zeros, n)| format!("{zeros}{n}")),
            1 => "[0-9]{18,22}",
            1 => "[0-9+ =é-]{0,6}",
        ]
    }

    fn mac_value() -> impl Strategy<Value = String> {
        let cased = (any::<[u8; 32]>(), any::<u64>()).prop_map(|(tag, upper)| {
            hex::encode(tag)
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    if (upper >> i) & 1 == 1 {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect::<String>()
        });
        prop_oneof![
            6 => cased,
            1 => "[0-9a-fA-F]{60,68}",
            1 => "[0-9a-fA-FgG =é]{64}",
        ]
    }

    /// `name=value` for one of the three names, with a value meant for it (usually valid).
    fn field_part() -> impl Strategy<Value = String> {
        let field = prop_oneof![
            ("key_id", key_id_value()),
            ("ts", ts_value()),
            ("mac", mac_value()),
        ];
        (spaces(), field, spaces())
            .prop_map(|(a, (name, value), b)| format!("{a}{name}={value}{b}"))
    }

    /// Any one part: mostly a field, sometimes a wrong name, a value that belongs to another
    /// name, an empty part, or bytes with no `=` or several.
    fn part() -> impl Strategy<Value = String> {
        let name = prop_oneof![
            Just("key_id"),
            Just("ts"),
            Just("mac"),
            Just("kid"),
            Just("KEY_ID"),
            Just("ts "),
            Just(" mac"),
            Just(""),
            Just("é"),
        ];
        let value = prop_oneof![key_id_value(), ts_value(), mac_value(), "[ a-z0-9=é]{0,6}"];
        prop_oneof![
            8 => field_part(),
            2 => (spaces(), name, value, spaces())
                .prop_map(|(a, n, v, b)| format!("{a}{n}={v}{b}")),
            1 => "[ a-z_=é]{0,8}",
        ]
    }

    /// A header value that looks like one a signer writes, or nearly: the three fields in any
    /// order, or any list of parts (so missing, repeated and unknown names, empty parts); then
    /// maybe one byte inserted, replaced (perhaps by one that is not ASCII) or removed.
    fn header_like() -> impl Strategy<Value = Vec<u8>> {
        let three = |name: &'static str, value: BoxedStrategy<String>| {
            (spaces(), value, spaces()).prop_map(move |(a, v, b)| format!("{a}{name}={v}{b}"))
        };
        let parts = prop_oneof![
            3 => (
                three("key_id", key_id_value().boxed()),
                three("ts", ts_value().boxed()),
                three("mac", mac_value().boxed()),
            )
                .prop_map(|(k, t, m)| vec![k, t, m])
                .prop_shuffle(),
            2 => proptest::collection::vec(part(), 0..6),
        ];
        let edit = prop_oneof![
            6 => Just(None),
            1 => (0u8..3, any::<proptest::sample::Index>(), any::<u8>()).prop_map(Some),
        ];
        (parts, edit).prop_map(|(parts, edit)| {
            let mut bytes = parts.join(",").into_bytes();
            if let Some((kind, at, byte)) = edit {
                let at = at.index(bytes.len() + 1);
                match kind {
                    0 => bytes.insert(at, byte),
                    _ if at == bytes.len() => {}
                    1 => bytes[at] = byte,
                    _ => {
                        bytes.remove(at);
                    }
                }
            }
            bytes
        })
    }

    #[test]
    fn the_header_strategy_makes_both_accepted_and_refused_values() {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = header_like();
        let accepted = (0..1000)
            .filter(|_| {
                let value = strategy.new_tree(&mut runner).unwrap().current();
                reference_parse(&value).is_ok()
            })
            .count();
        assert!(
            (100..=900).contains(&accepted),
            "{accepted} of 1000 accepted"
        );
    }

    proptest! {
        #[test]
        fn the_parser_accepts_what_the_reference_accepts(value in header_like()) {
            let (new, reference) = both(&value);
            prop_assert_eq!(new, reference, "{:?}", String::from_utf8_lossy(&value));
        }

        #[test]
        fn the_parser_agrees_with_the_reference_on_any_bytes(
            value in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..300),
                proptest::collection::vec(
                    proptest::sample::select(b"key_idtsmac=, 0123456789abcdefABCDEF.-\xc3\xa9\xff".to_vec()),
                    0..300,
                ),
            ],
        ) {
            let (new, reference) = both(&value);
            prop_assert_eq!(new, reference, "{:?}", String::from_utf8_lossy(&value));
        }

        #[test]
        fn the_mac_decoder_agrees_with_the_hex_crate(
            text in proptest::collection::vec(
                proptest::sample::select(b"0123456789abcdefABCDEFgG/:@`\x00\xff ".to_vec()),
                64,
            ),
            tag in any::<[u8; 32]>(),
        ) {
            let mut expected = [0u8; 32];
            let text = String::from_utf8_lossy(&text).into_owned();
            let theirs = hex::decode_to_slice(&text, &mut expected).ok().map(|()| expected);
            prop_assert_eq!(decode_mac(text.as_bytes()), theirs);
            let encoded = hex::encode(tag);
            prop_assert_eq!(decode_mac(encoded.as_bytes()), Some(tag));
            prop_assert_eq!(decode_mac(encoded.to_uppercase().as_bytes()), Some(tag));
        }

        #[test]
        fn any_request_round_trips_and_any_flipped_bit_is_refused(
            body in proptest::collection::vec(any::<u8>(), 0..600),
            path in "/[a-z/_-]{0,40}",
            ts in 0u64..u64::MAX / 2,
            flip in any::<proptest::sample::Index>(),
            bit in 0u32..8,
        ) {
            let (signer, verifier) = setup();
            let header = signer.sign_at("POST", &path, &body, ts);
            prop_assert_eq!(verifier.verify(Some(header.as_bytes()), "POST", &path, &body, ts), Ok(()));
            if !body.is_empty() {
                let mut changed = body.clone();
                changed[flip.index(body.len())] ^= 1 << bit;
                prop_assert_eq!(
                    verifier.verify(Some(header.as_bytes()), "POST", &path, &changed, ts),
                    Err(SignatureError::BadMac)
                );
            }
        }
    }
}
