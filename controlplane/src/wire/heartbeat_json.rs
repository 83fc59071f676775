//! [`Heartbeat::from_json`]: a heartbeat's JSON read by a parser made for it, with
//! `serde_json` behind it for anything that parser does not take.
//!
//! At 10 000 heartbeats a second, `serde_json`'s generic struct reading (field names matched
//! by visitors, the address's IP through its `FromStr` visitor, every value moved through
//! `Option`s) was a fifth of the heartbeat thread's CPU. The body senders write is always the
//! same shape, so a direct reader of that shape takes the common case, and gives up (returns
//! `None`) at the first thing it does not handle: an escape in a string, an unknown or
//! repeated field, a number that is negative, has an exponent or is not certainly exact, an
//! array where an object was. `serde_json` then reads the body, which also makes its error
//! messages the ones a sender sees. The rule that keeps the two the same: whatever the direct
//! reader accepts, `serde_json` reads to the same heartbeat, bit for bit (proved against it
//! by the property test below).
//!
//! Not here: the bounds a heartbeat is held to ([`Heartbeat::validate`]).

use std::net::IpAddr;

use shared::NodeAddress;

use super::heartbeat::{Heartbeat, NodeType};
use super::metrics::Metrics;

/// Powers of ten an `f64` holds exactly.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];
/// Largest significand read directly: every whole number up to it is an exact `f64`.
const MAX_EXACT: u64 = 1 << 53;

impl Heartbeat {
    /// Reads a heartbeat from its JSON body, as `serde_json::from_str` does (same results,
    /// same errors), faster for the bodies senders write.
    ///
    /// # Errors
    /// `serde_json`'s, for a body that is not a heartbeat.
    pub fn from_json(body: &str) -> Result<Heartbeat, serde_json::Error> {
        match direct(body) {
            Some(heartbeat) => Ok(heartbeat),
            None => serde_json::from_str(body),
        }
    }
}

/// The heartbeat in `body` if it has the shape read here, else `None`.
fn direct(body: &str) -> Option<Heartbeat> {
    let mut at = Cursor { text: body, at: 0 };
    let (mut instance_id, mut node_type, mut address) = (None, None, None);
    let (mut boot_id, mut seq, mut metrics, mut leaving) = (None, None, None, None);
    at.object(|at, key| match key {
        "instance_id" => set(&mut instance_id, at.string()?.to_owned()),
        "node_type" => set(
            &mut node_type,
            match at.string()? {
                "backend" => NodeType::Backend,
                "coordinator" => NodeType::Coordinator,
                _ => return None,
            },
        ),
        "address" => set(&mut address, at.address()?),
        "boot_id" => set(&mut boot_id, at.string()?.to_owned()),
        "seq" => set(&mut seq, at.unsigned()?),
        "metrics" => set(&mut metrics, at.metrics()?),
        "leaving" => set(&mut leaving, at.boolean()?),
        _ => None,
    })?;
    at.skip_space();
    if at.at != body.len() {
        return None;
    }
    Some(Heartbeat {
        instance_id: instance_id?,
        node_type: node_type?,
        address: address?,
        boot_id: boot_id?,
        seq: seq?,
        metrics: metrics.unwrap_or_default(),
        leaving: leaving.unwrap_or(false),
    })
}

/// Fills `slot` with `value`; `None` if it was filled already (a repeated field, which
/// `serde_json` refuses).
fn set<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    match slot {
        Some(_) => None,
        None => {
            *slot = Some(value);
            Some(())
        }
    }
}

/// A position in the body.
struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn byte(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn skip_space(&mut self) {
        while matches!(self.byte(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// Takes `byte` after any white space.
    fn eat(&mut self, byte: u8) -> Option<()> {
        self.skip_space();
        (self.byte() == Some(byte)).then(|| self.at += 1)
    }

    /// An object, each member's value read by `member` given its key.
    fn object(&mut self, mut member: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        self.skip_space();
        if self.byte() == Some(b'}') {
            self.at += 1;
            return Some(());
        }
        loop {
            let key = self.string()?;
            self.eat(b':')?;
            member(self, key)?;
            self.skip_space();
            match self.byte()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A string with no escape and no control character, borrowed.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.at;
        let len = plain_run(&self.text.as_bytes()[start..]);
        if self.text.as_bytes().get(start + len) != Some(&b'"') {
            return None;
        }
        self.at = start + len + 1;
        // Ends before an ASCII quote, so on a character boundary.
        self.text.get(start..start + len)
    }

    fn boolean(&mut self) -> Option<bool> {
        self.skip_space();
        let rest = &self.text.as_bytes()[self.at..];
        let (value, len) = if rest.starts_with(b"true") {
            (true, 4)
        } else if rest.starts_with(b"false") {
            (false, 5)
        } else {
            return None;
        };
        self.at += len;
        Some(value)
    }

    /// Digits, as JSON writes a whole number (no leading zero), and how many; `None` past
    /// `u64`.
    fn digits(&mut self) -> Option<(u64, usize)> {
        let start = self.at;
        let mut value = 0u64;
        while let Some(digit @ b'0'..=b'9') = self.byte() {
            value = value
                .checked_mul(10)?
                .checked_add(u64::from(digit - b'0'))?;
            self.at += 1;
        }
        let count = self.at - start;
        let leading_zero = count > 1 && self.text.as_bytes()[start] == b'0';
        (count > 0 && !leading_zero).then_some((value, count))
    }

    /// A whole number that fits `u64`, written without sign, fraction or exponent.
    fn unsigned(&mut self) -> Option<u64> {
        self.skip_space();
        let (value, _) = self.digits()?;
        (!matches!(self.byte(), Some(b'.' | b'e' | b'E'))).then_some(value)
    }

    /// A port: a whole number up to 65 535.
    fn port(&mut self) -> Option<u16> {
        u16::try_from(self.unsigned()?).ok()
    }

    /// A gauge's value: a number without sign or exponent whose digits (those of its
    /// fraction up to its last non-zero one) make at most 2^53, with at most 22 of them in
    /// the fraction. Such a number is the quotient of two exact `f64`s, so one division gives
    /// it correctly rounded, which is what `serde_json` gives (its `float_roundtrip` feature
    /// is on). Trailing zeros do not count: a backend writes its whole gauges as `N.0`.
    fn gauge(&mut self) -> Option<f64> {
        self.skip_space();
        let (whole, _) = self.digits()?;
        let (mut significand, mut scale) = (whole, 0u32);
        if self.byte() == Some(b'.') {
            self.at += 1;
            let start = self.at;
            let mut zeros = 0u32;
            while let Some(digit @ b'0'..=b'9') = self.byte() {
                self.at += 1;
                if digit == b'0' {
                    zeros += 1;
                    continue;
                }
                significand = significand
                    .checked_mul(10u64.checked_pow(zeros + 1)?)?
                    .checked_add(u64::from(digit - b'0'))?;
                scale += zeros + 1;
                zeros = 0;
            }
            if self.at == start {
                return None;
            }
        }
        if matches!(self.byte(), Some(b'e' | b'E')) || significand > MAX_EXACT {
            return None;
        }
        // Exact: the significand is at most 2^53.
        #[allow(clippy::cast_precision_loss)]
        let exact = significand as f64;
        Some(exact / *POW10.get(usize::try_from(scale).ok()?)?)
    }

    fn metrics(&mut self) -> Option<Metrics> {
        let mut metrics = Metrics::collecting();
        self.object(|at, name| {
            let value = at.gauge()?;
            metrics.collect(name, value);
            Some(())
        })?;
        Some(metrics.collected())
    }

    fn address(&mut self) -> Option<NodeAddress> {
        let (mut ip, mut internal, mut http, mut mgmt) = (None, None, None, None);
        self.object(|at, key| match key {
            "ip" => set(&mut ip, at.string()?.parse::<IpAddr>().ok()?),
            "internal_port" => set(&mut internal, at.port()?),
            "http_port" => set(&mut http, at.port()?),
            "mgmt_port" => set(&mut mgmt, at.port()?),
            _ => None,
        })?;
        Some(NodeAddress::new(ip?, internal?, http?, mgmt?))
    }
}

/// How many bytes `bytes` starts with that may stand in a string as they are: up to the
/// first quote, backslash or control character (or the end). Eight bytes a step: the
/// strings of a heartbeat were a twentieth of its reading, a byte at a time.
fn plain_run(bytes: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Per byte, the high bit set where the byte is below `n` (n <= 128). Only the lowest
    // flagged byte is certain: a borrow may flag bytes above it, never below.
    let below = |word: u64, n: u8| word.wrapping_sub(ONES * u64::from(n)) & !word & HIGH;
    let mut at = 0;
    while let Some(Ok(chunk)) = bytes.get(at..at + 8).map(<[u8; 8]>::try_from) {
        let word = u64::from_le_bytes(chunk);
        let special = below(word ^ (ONES * u64::from(b'"')), 1)
            | below(word ^ (ONES * u64::from(b'\\')), 1)
            | below(word, 0x20);
        if special != 0 {
            // The lowest flagged byte, a whole number below 8.
            return at + (special.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    at + bytes[at..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .unwrap_or(bytes.len() - at)
}

/// Whether `a` and `b` are the same heartbeat, gauges compared bit for bit (`==` takes
/// `0.0` for `-0.0`): what the direct reader and `serde_json` must agree on, checked by the
/// tests below and the fuzz target.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn same(a: &Heartbeat, b: &Heartbeat) -> bool {
    a == b
        && a.metrics
            .iter()
            .zip(b.metrics.iter())
            .all(|((_, x), (_, y))| x.to_bits() == y.to_bits())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Whatever the direct reader takes, serde_json reads the same; `true` if it took it.
    fn agrees(body: &str) -> bool {
        let Some(direct) = direct(body) else {
            return false;
        };
        let serde: Heartbeat = serde_json::from_str(body).unwrap_or_else(|e| {
            panic!("the direct reader took what serde_json refuses ({e}): {body}")
        });
        assert!(same(&direct, &serde), "{body}\n{direct:?}\n{serde:?}");
        true
    }

    const CANONICAL: &str = r#"{"instance_id":"backend_9000","node_type":"backend","address":{"ip":"127.0.0.1","internal_port":9000,"http_port":9001,"mgmt_port":9002},"boot_id":"0f3a","seq":17,"metrics":{"connections":3.0,"deployed_digest":0.0,"shards":2},"leaving":false}"#;

    #[test]
    fn what_senders_write_is_read_directly() {
        assert!(agrees(CANONICAL));
        // A backend's own heartbeat, as it serialises it.
        let mut beat: Heartbeat = serde_json::from_str(CANONICAL).unwrap();
        beat.metrics = Metrics::from([
            ("uptime_secs", 12.5),
            ("deployed_digest", 4_503_599_627_370_495.0),
        ]);
        beat.leaving = true;
        beat.address.ip = "::1".parse().unwrap();
        assert!(agrees(&serde_json::to_string(&beat).unwrap()));
        assert!(agrees(&serde_json::to_string_pretty(&beat).unwrap()));
    }

    #[test]
    fn what_it_does_not_take_goes_to_serde_json_with_its_errors() {
        for body in [
            // serde_json reads these: an escape, an unknown field, a negative gauge, an
            // exponent, a sequence for the struct.
            r#"{"instance_id":"backend\u005f9000","node_type":"backend","address":{"ip":"127.0.0.1","internal_port":1,"http_port":2,"mgmt_port":3},"boot_id":"b","seq":1}"#,
            r#"{"instance_id":"b","node_type":"backend","address":{"ip":"127.0.0.1","internal_port":1,"http_port":2,"mgmt_port":3},"boot_id":"b","seq":1,"extra":[1,{"x":null}]}"#,
            r#"{"instance_id":"b","node_type":"backend","address":{"ip":"127.0.0.1","internal_port":1,"http_port":2,"mgmt_port":3},"boot_id":"b","seq":1,"metrics":{"m":-1.5,"n":1e3}}"#,
            r#"["b","backend",{"ip":"127.0.0.1","internal_port":1,"http_port":2,"mgmt_port":3},"b",1]"#,
        ] {
            assert!(direct(body).is_none(), "{body}");
            let read = Heartbeat::from_json(body).unwrap();
            assert_eq!(read, serde_json::from_str::<Heartbeat>(body).unwrap());
        }
        for body in [
            "",
            "{}",
            r#"{"instance_id":"b","instance_id":"c"}"#,
            &CANONICAL.replace("17", "017"),
            &CANONICAL.replace("9002", "65536"),
            &CANONICAL.replace("9002", "9002.0"),
            &CANONICAL.replace(r#""leaving":false"#, r#""leaving":null"#),
            &format!("{CANONICAL} x"),
            &CANONICAL.replace(r#""mgmt_port":9002"#, r#""mgmt_port":9002,"port":1"#),
        ] {
            assert!(direct(body).is_none(), "{body}");
            let ours = Heartbeat::from_json(body).unwrap_err().to_string();
            let theirs = serde_json::from_str::<Heartbeat>(body)
                .unwrap_err()
                .to_string();
            assert_eq!(ours, theirs);
        }
    }

    /// Pieces of heartbeat JSON, valid and not, to put together.
    fn member() -> impl Strategy<Value = String> {
        let string = prop_oneof![
            Just("\"backend_9000\"".to_owned()),
            Just("\"b\\\"x\"".to_owned()),
            Just("\"\"".to_owned()),
            Just("\"é\"".to_owned()),
            "[a-z0-9_]{0,8}".prop_map(|s| format!("\"{s}\"")),
        ];
        let number = prop_oneof![
            Just("0".to_owned()),
            Just("-0".to_owned()),
            Just("00".to_owned()),
            Just("-0.0".to_owned()),
            Just("1.".to_owned()),
            Just(".5".to_owned()),
            Just("9007199254740993".to_owned()),
            Just("9007199254740992".to_owned()),
            Just("18446744073709551616".to_owned()),
            Just("0.1234567890123456789012".to_owned()),
            Just("0.12345678901234567890123".to_owned()),
            Just("1e2".to_owned()),
            Just("65535".to_owned()),
            Just("65536".to_owned()),
            any::<u64>().prop_map(|n| n.to_string()),
            any::<u16>().prop_map(|n| n.to_string()),
            (0u64..100_000, "[0-9]{0,24}")
                .prop_map(|(whole, fraction)| format!("{whole}.{fraction}")),
            any::<f64>().prop_map(|f| serde_json::to_string(&f).unwrap_or_else(|_| "1".into())),
        ];
        let space = prop_oneof![Just(""), Just(" "), Just("\n\t "), Just("\r")];
        let metrics = prop::collection::vec(
            (
                prop_oneof![
                    Just("connections"),
                    Just("deployed_digest"),
                    Just("x"),
                    Just("a")
                ],
                number.clone(),
                space.clone(),
            ),
            0..4,
        )
        .prop_map(|ms| {
            let body: Vec<String> = ms
                .into_iter()
                .map(|(n, v, s)| format!("{s}\"{n}\"{s}:{s}{v}{s}"))
                .collect();
            format!("{{{}}}", body.join(","))
        });
        let ip = prop_oneof![
            Just("\"127.0.0.1\""),
            Just("\"::1\""),
            Just("\"198.18.0.3\""),
            Just("\"1.2.3\""),
            Just("\"127.0.0.01\""),
            Just("5"),
        ];
        let address = (
            ip,
            number.clone(),
            number.clone(),
            number.clone(),
            any::<bool>(),
            any::<u8>(),
        )
            .prop_map(|(ip, a, b, c, extra, order)| {
                let mut fields = vec![
                    format!("\"ip\":{ip}"),
                    format!("\"internal_port\":{a}"),
                    format!("\"http_port\":{b}"),
                    format!("\"mgmt_port\":{c}"),
                ];
                if extra {
                    fields.push("\"other\":1".into());
                }
                fields.rotate_left(usize::from(order) % 4);
                if order > 200 {
                    fields.pop();
                }
                format!("{{{}}}", fields.join(","))
            });
        prop_oneof![
            string.clone().prop_map(|s| format!("\"instance_id\":{s}")),
            prop_oneof![
                Just("\"backend\""),
                Just("\"coordinator\""),
                Just("\"Backend\""),
                Just("1")
            ]
            .prop_map(|s| format!("\"node_type\":{s}")),
            address.prop_map(|a| format!("\"address\":{a}")),
            string.prop_map(|s| format!("\"boot_id\":{s}")),
            number.prop_map(|n| format!("\"seq\":{n}")),
            metrics.prop_map(|m| format!("\"metrics\":{m}")),
            prop_oneof![Just("true"), Just("false"), Just("null"), Just("tru")]
                .prop_map(|b| format!("\"leaving\":{b}")),
            Just("\"unknown\":{}".to_owned()),
        ]
    }

    proptest! {
        #[test]
        fn plain_runs_end_where_a_byte_by_byte_scan_ends(
            bytes in prop::collection::vec(prop_oneof![
                4 => 0x20u8..0x7f,
                1 => Just(b'"'),
                1 => Just(b'\\'),
                1 => 0u8..0x20,
                1 => 0x7fu8..=0xff,
            ], 0..40),
        ) {
            let slow = bytes
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                .unwrap_or(bytes.len());
            prop_assert_eq!(plain_run(&bytes), slow);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn whatever_is_read_directly_serde_json_reads_the_same(
            members in prop::collection::vec(member(), 0..9),
            tail in prop_oneof![Just(""), Just(" "), Just(","), Just("}")],
        ) {
            let body = format!("{{{}}}{tail}", members.join(","));
            agrees(&body);
            // And the whole reading agrees, errors included.
            match (Heartbeat::from_json(&body), serde_json::from_str::<Heartbeat>(&body)) {
                (Ok(a), Ok(b)) => prop_assert!(same(&a, &b), "{body}"),
                (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string()),
                (a, b) => prop_assert!(false, "{body}: {a:?} vs {b:?}"),
            }
        }

        #[test]
        fn every_complete_heartbeat_a_sender_writes_is_read_directly(
            id in "[a-z0-9_]{1,20}",
            boot in "[a-f0-9]{1,32}",
            seq in any::<u64>(),
            ports in any::<(u16, u16, u16)>(),
            v4 in any::<bool>(),
            gauges in prop::collection::vec(0u64..(1 << 52), 0..8),
            halves in any::<bool>(),
            leaving in any::<bool>(),
        ) {
            let ip: IpAddr = if v4 { [10, 1, 2, 3].into() } else { "fd00::7".parse().unwrap() };
            let names = shared_names();
            let beat = Heartbeat {
                instance_id: id,
                node_type: NodeType::Backend,
                address: NodeAddress::new(ip, ports.0, ports.1, ports.2),
                boot_id: boot,
                seq,
                metrics: gauges
                    .iter()
                    .zip(names)
                    // Whole gauges up to a digest's 2^52; halves of those whose digits fit 2^53.
                    .map(|(g, n)| (n, if halves { (*g >> 4) as f64 + 0.5 } else { *g as f64 }))
                    .collect(),
                leaving,
            };
            let body = serde_json::to_string(&beat).unwrap();
            prop_assert!(agrees(&body), "not read directly: {body}");
        }
    }

    fn shared_names() -> [&'static str; 8] {
        [
            "connections",
            "deployed_digest",
            "errors",
            "frames_in",
            "frames_out",
            "shards",
            "uptime_secs",
            "zz_custom",
        ]
    }
}
