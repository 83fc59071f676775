//! [`Metrics`]: a heartbeat's gauges, by name (DESIGN §9), and the form the coordinator keeps
//! them in.
//!
//! On the wire a JSON object of numbers, exactly as a `BTreeMap<String, f64>` reads and writes
//! it: the names in order, a repeated name keeping its last value. Held as a short sorted list
//! with room for eight gauges inline, and the names a backend sends ([`KNOWN_METRICS`]) held as
//! `&'static str`: at 10 000 heartbeats a second, a map with a `String` per name was a dozen
//! allocations and frees per heartbeat for the same six names every time.
//!
//! Not here: the bounds a heartbeat's metrics are held to ([`super::heartbeat`]).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smallvec::SmallVec;

use super::heartbeat::DEPLOYED_DIGEST_METRIC;

/// Metric names a backend sends with every heartbeat: read into no allocation of their own.
pub const KNOWN_METRICS: [&str; 7] = [
    "connections",
    DEPLOYED_DIGEST_METRIC,
    "errors",
    "frames_in",
    "frames_out",
    "shards",
    "uptime_secs",
];

/// Gauges held inline before the list moves to the heap.
const INLINE: usize = 8;

/// A metric's name: one of [`KNOWN_METRICS`], or any other as sent.
type Name = Cow<'static, str>;

fn name_of(text: &str) -> Name {
    match KNOWN_METRICS.iter().find(|known| **known == text) {
        Some(known) => Cow::Borrowed(known),
        None => Cow::Owned(text.to_owned()),
    }
}

/// Gauges by name, sorted by name, each name once.
#[derive(Clone, Default, PartialEq)]
pub struct Metrics {
    entries: SmallVec<[(Name, f64); INLINE]>,
}

impl Metrics {
    /// No gauges.
    pub fn new() -> Self {
        Metrics::default()
    }

    /// How many gauges.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No gauges at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The gauge `name`, if present.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.position(name).ok().map(|at| self.entries[at].1)
    }

    /// Sets the gauge `name` to `value`, as `BTreeMap::insert` does.
    pub fn insert(&mut self, name: &str, value: f64) {
        // A sender writes its names in order: the next one goes at the end.
        if self.entries.last().is_none_or(|(last, _)| **last < *name) {
            self.entries.push((name_of(name), value));
            return;
        }
        match self.position(name) {
            Ok(at) => self.entries[at].1 = value,
            Err(at) => self.entries.insert(at, (name_of(name), value)),
        }
    }

    /// The gauges in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> + '_ {
        self.entries.iter().map(|(name, value)| (&**name, *value))
    }

    /// Takes `other`'s values when it holds the same names as this, in place: a node's
    /// heartbeats carry the same gauges every time, so its record is updated without
    /// allocating or freeing anything. Otherwise becomes a copy of `other`.
    ///
    /// Returns whether [`DEPLOYED_DIGEST_METRIC`] changed (came, went, or took another
    /// value): what deploy polling follows, told on the way at no extra lookup.
    pub fn assign(&mut self, other: &Metrics) -> bool {
        let same = self.entries.len() == other.entries.len()
            && self
                .entries
                .iter()
                .zip(&other.entries)
                .all(|((a, _), (b, _))| a == b);
        if same {
            let mut digest_moved = false;
            for ((name, mine), (_, theirs)) in self.entries.iter_mut().zip(&other.entries) {
                if mine.to_bits() != theirs.to_bits() && name == DEPLOYED_DIGEST_METRIC {
                    digest_moved = true;
                }
                *mine = *theirs;
            }
            digest_moved
        } else {
            let before = self.get(DEPLOYED_DIGEST_METRIC).map(f64::to_bits);
            self.clone_from(other);
            before != self.get(DEPLOYED_DIGEST_METRIC).map(f64::to_bits)
        }
    }

    fn position(&self, name: &str) -> Result<usize, usize> {
        self.entries.binary_search_by(|(n, _)| (**n).cmp(name))
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<S: AsRef<str>> FromIterator<(S, f64)> for Metrics {
    fn from_iter<I: IntoIterator<Item = (S, f64)>>(iter: I) -> Self {
        let mut metrics = Metrics::new();
        for (name, value) in iter {
            metrics.insert(name.as_ref(), value);
        }
        metrics
    }
}

impl<S: AsRef<str>, const N: usize> From<[(S, f64); N]> for Metrics {
    fn from(entries: [(S, f64); N]) -> Self {
        entries.into_iter().collect()
    }
}

impl From<BTreeMap<String, f64>> for Metrics {
    fn from(map: BTreeMap<String, f64>) -> Self {
        map.into_iter().collect()
    }
}

impl Serialize for Metrics {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.entries.len()))?;
        for (name, value) in self.iter() {
            map.serialize_entry(name, &value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Metrics {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(MetricsVisitor)
    }
}

struct MetricsVisitor;

impl<'de> Visitor<'de> for MetricsVisitor {
    type Value = Metrics;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Metrics, A::Error> {
        let mut metrics = Metrics::collecting();
        // Borrowed from the input when it has no escapes: a known name costs nothing.
        while let Some(name) = access.next_key::<Cow<'de, str>>()? {
            let value: f64 = access.next_value()?;
            metrics.collect(&name, value);
        }
        Ok(metrics.collected())
    }
}

/// Gauges being read, in the order they come: what both readers of a heartbeat's JSON
/// (`serde`'s and [`super::heartbeat_json`]'s) build [`Metrics`] with.
pub(crate) struct Collecting {
    entries: SmallVec<[(Name, f64); INLINE]>,
    sorted: bool,
}

impl Metrics {
    /// Starts reading gauges one by one.
    pub(crate) fn collecting() -> Collecting {
        Collecting {
            entries: SmallVec::new(),
            sorted: true,
        }
    }
}

impl Collecting {
    /// The next gauge read.
    pub(crate) fn collect(&mut self, name: &str, value: f64) {
        self.sorted = self.sorted && self.entries.last().is_none_or(|(last, _)| **last < *name);
        self.entries.push((name_of(name), value));
    }

    /// The gauges, sorted by name, a repeated name with its last value.
    pub(crate) fn collected(self) -> Metrics {
        let Collecting {
            mut entries,
            sorted,
        } = self;
        if !sorted {
            // One stable sort, however the names came: inserting each in its place was
            // quadratic, and a signed body of a megabyte of names in reverse order held the
            // management thread for seconds (the count is checked only after parsing).
            entries.sort_by(|(a, _), (b, _)| a.cmp(b));
            // A repeated name keeps its last value, as `BTreeMap::insert` does.
            entries.dedup_by(|later, kept| {
                let same = later.0 == kept.0;
                if same {
                    kept.1 = later.1;
                }
                same
            });
        }
        Metrics { entries }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_out_of_order_are_sorted_once_and_a_repeat_keeps_its_last_value() {
        let json = r#"{"b":1,"a":2,"c":3,"a":4,"b":5}"#;
        let metrics: Metrics = serde_json::from_str(json).unwrap();
        assert_eq!(
            metrics.iter().collect::<Vec<_>>(),
            [("a", 4.0), ("b", 5.0), ("c", 3.0)]
        );
        // Many names in reverse order: parsed in n·log n (inserted each in its place, they
        // would take minutes).
        let many: String = (0..200_000)
            .rev()
            .map(|i| format!("\"m{i:07}\":{i}"))
            .collect::<Vec<_>>()
            .join(",");
        let metrics: Metrics = serde_json::from_str(&format!("{{{many}}}")).unwrap();
        assert_eq!(metrics.len(), 200_000);
        assert_eq!(metrics.iter().next(), Some(("m0000000", 0.0)));
    }

    #[test]
    fn known_names_are_not_copied_and_others_are() {
        let m: Metrics = serde_json::from_str(r#"{"connections":1,"custom":2}"#).unwrap();
        assert!(matches!(m.entries[0].0, Cow::Borrowed("connections")));
        assert!(matches!(&m.entries[1].0, Cow::Owned(n) if n == "custom"));
        assert_eq!(m.get("custom"), Some(2.0));
        assert_eq!(m.get("nope"), None);
    }

    #[test]
    fn assign_updates_in_place_or_copies() {
        let mut kept = Metrics::from([("a", 1.0), ("b", 2.0)]);
        kept.assign(&Metrics::from([("a", 3.0), ("b", 4.0)]));
        assert_eq!(kept, Metrics::from([("a", 3.0), ("b", 4.0)]));
        kept.assign(&Metrics::from([("a", 5.0), ("c", 6.0), ("d", 7.0)]));
        assert_eq!(kept, Metrics::from([("a", 5.0), ("c", 6.0), ("d", 7.0)]));
        kept.assign(&Metrics::new());
        assert!(kept.is_empty());
    }

    #[test]
    fn assign_tells_when_the_deployed_digest_changed() {
        let with =
            |digest: f64| Metrics::from([("connections", 1.0), (DEPLOYED_DIGEST_METRIC, digest)]);
        let mut kept = Metrics::new();
        assert!(kept.assign(&with(7.0)), "a digest that came");
        assert!(!kept.assign(&with(7.0)), "the same digest");
        assert!(
            !kept.assign(&Metrics::from([
                ("connections", 9.0),
                (DEPLOYED_DIGEST_METRIC, 7.0)
            ])),
            "another gauge moved"
        );
        assert!(kept.assign(&with(8.0)), "another digest, in place");
        assert!(
            !kept.assign(&Metrics::from([
                ("connections", 1.0),
                (DEPLOYED_DIGEST_METRIC, 8.0),
                ("x", 1.0)
            ])),
            "other names, same digest"
        );
        assert!(
            kept.assign(&Metrics::from([("connections", 1.0)])),
            "a digest that went"
        );
        assert!(!kept.assign(&Metrics::new()), "still none");
    }

    #[test]
    fn wrong_shapes_are_refused_as_a_map_refuses_them() {
        for text in [
            r#"[1]"#,
            r#"{"a":"x"}"#,
            r#"{"a":null}"#,
            r#"{"a":1,}"#,
            "1",
        ] {
            assert_eq!(
                serde_json::from_str::<Metrics>(text).is_ok(),
                serde_json::from_str::<BTreeMap<String, f64>>(text).is_ok(),
                "{text}"
            );
        }
    }

    proptest! {
        /// Any object reads and writes as a `BTreeMap<String, f64>` does: order, repeats
        /// (the last value wins), escapes, known and unknown names, more than fit inline.
        #[test]
        fn reads_and_writes_as_a_btreemap_does(
            entries in proptest::collection::vec(
                (
                    prop_oneof![
                        proptest::sample::select(KNOWN_METRICS.to_vec()).prop_map(str::to_owned),
                        "[a-z_\"\\\\é]{0,6}",
                    ],
                    -1e9f64..1e9,
                ),
                0..20,
            ),
        ) {
            let text = format!(
                "{{{}}}",
                entries
                    .iter()
                    .map(|(n, v)| format!("{}:{v}", serde_json::to_string(n).unwrap()))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let theirs: BTreeMap<String, f64> = serde_json::from_str(&text).unwrap();
            let mine: Metrics = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(mine.len(), theirs.len());
            prop_assert_eq!(serde_json::to_string(&mine).unwrap(), serde_json::to_string(&theirs).unwrap());
            prop_assert_eq!(&Metrics::from(theirs.clone()), &mine);
            for (name, value) in &theirs {
                prop_assert_eq!(mine.get(name), Some(*value));
            }
        }
    }
}
