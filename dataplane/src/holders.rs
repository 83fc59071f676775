//! Who keeps the replicas of whose shards (DESIGN §14), worked out from a placement alone so
//! that every backend and the coordinator agree without asking each other.
//!
//! The backends that hold at least one shard form a ring in the topology's backend order
//! (sorted by instance id). The shards of each owner are copied to the next [`REPLICAS`]
//! backends after it on the ring: each backend sends all its copies to the same two peers
//! (two links, two messages per checkpoint), and the copies spread evenly. With fewer than
//! three backends in the ring there are fewer other backends than that, so each shard has as
//! many replicas as there are other backends (losing every backend leaves nothing to run on
//! anyway). Pure functions of the topology; no state.

use std::collections::{BTreeMap, BTreeSet};

use shared::topology::{ClusterTopology, ShardCoord};

/// Backends other than the owner that keep a copy of each shard at every consistent
/// checkpoint, when the ring is large enough: any two backends may then be lost at once.
pub const REPLICAS: usize = 2;

/// The backends that hold shards, in topology order.
pub fn ring(topology: &ClusterTopology) -> Vec<&str> {
    let mut owning: BTreeSet<&str> = BTreeSet::new();
    for (_, backend) in topology.placement() {
        owning.insert(backend.instance_id.as_str());
    }
    topology
        .backends()
        .iter()
        .map(|b| b.instance_id.as_str())
        .filter(|id| owning.contains(id))
        .collect()
}

/// The backends that keep replicas of `owner`'s shards: the next [`REPLICAS`] after it on
/// the ring (fewer in a small ring; none for a backend not on it).
pub fn replica_holders(topology: &ClusterTopology, owner: &str) -> Vec<String> {
    holders_on(&ring(topology), owner)
}

fn holders_on(ring: &[&str], owner: &str) -> Vec<String> {
    let Some(at) = ring.iter().position(|id| *id == owner) else {
        return Vec::new();
    };
    (1..ring.len())
        .take(REPLICAS)
        .filter_map(|k| ring.get((at + k) % ring.len()))
        .map(|id| (*id).to_owned())
        .collect()
}

/// The shards `me` keeps replicas of, for their owners.
pub fn replicated_by(topology: &ClusterTopology, me: &str) -> BTreeSet<ShardCoord> {
    let ring = ring(topology);
    let owners: BTreeSet<&str> = ring
        .iter()
        .copied()
        .filter(|owner| holders_on(&ring, owner).iter().any(|h| h == me))
        .collect();
    topology
        .placement()
        .filter(|(_, b)| owners.contains(b.instance_id.as_str()))
        .map(|(shard, _)| shard)
        .collect()
}

/// How many shards each backend keeps replicas of: what it must report holding at a
/// checkpoint before that checkpoint counts as consistent.
pub fn replicas_expected(topology: &ClusterTopology) -> BTreeMap<String, u32> {
    let ring = ring(topology);
    let mut shards_of: BTreeMap<&str, u32> = BTreeMap::new();
    for (_, b) in topology.placement() {
        *shards_of.entry(b.instance_id.as_str()).or_default() += 1;
    }
    let mut expected: BTreeMap<String, u32> = ring.iter().map(|id| ((*id).to_owned(), 0)).collect();
    for owner in &ring {
        let n = shards_of.get(owner).copied().unwrap_or(0);
        for holder in holders_on(&ring, owner) {
            *expected.entry(holder).or_default() += n;
        }
    }
    expected
}

#[cfg(test)]
mod tests {
    use shared::topology::{BackendEntry, Dimensions};
    use shared::NodeAddress;

    use super::*;

    fn topology(backends: usize, w: u32, h: u32) -> ClusterTopology {
        let entries = (0..backends)
            .map(|k| {
                let port = 9000 + 10 * k as u16;
                BackendEntry::new(
                    format!("b{k}"),
                    NodeAddress::new([127, 0, 0, 1].into(), port, port + 1, port + 2),
                )
            })
            .collect();
        ClusterTopology::place(
            "c",
            NodeAddress::new([127, 0, 0, 1].into(), 8000, 8001, 8002),
            entries,
            Dimensions::new(w, h, 8, 8).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn each_owner_is_copied_to_the_next_two_backends_on_the_ring() {
        let t = topology(4, 4, 2);
        assert_eq!(ring(&t), ["b0", "b1", "b2", "b3"]);
        assert_eq!(replica_holders(&t, "b0"), ["b1", "b2"]);
        assert_eq!(replica_holders(&t, "b3"), ["b0", "b1"]);
        assert!(replica_holders(&t, "stranger").is_empty());
        let expected = replicas_expected(&t);
        // Two shards each, copied to two others: everyone keeps four.
        assert_eq!(expected.values().copied().collect::<Vec<_>>(), [4, 4, 4, 4]);
        // b0 keeps the shards of b3 and b2.
        let mine = replicated_by(&t, "b0");
        let theirs: BTreeSet<ShardCoord> = t
            .shards_of("b3")
            .into_iter()
            .chain(t.shards_of("b2"))
            .collect();
        assert_eq!(mine, theirs);
    }

    #[test]
    fn small_rings_copy_to_every_other_backend() {
        let two = topology(2, 2, 1);
        assert_eq!(replica_holders(&two, "b0"), ["b1"]);
        assert_eq!(replica_holders(&two, "b1"), ["b0"]);
        let one = topology(1, 2, 1);
        assert!(replica_holders(&one, "b0").is_empty());
        assert_eq!(replicas_expected(&one).get("b0"), Some(&0));
    }

    #[test]
    fn backends_without_shards_are_not_on_the_ring() {
        // Five backends, two shards: three hold nothing.
        let t = topology(5, 2, 1);
        assert_eq!(ring(&t).len(), 2);
        for holder in replica_holders(&t, ring(&t)[0]) {
            assert!(ring(&t).contains(&holder.as_str()));
        }
    }

    #[test]
    fn any_two_lost_backends_leave_a_copy_of_every_shard() {
        for backends in 3..7 {
            let t = topology(backends, 6, 3);
            let ring = ring(&t);
            for (i, a) in ring.iter().enumerate() {
                for b in &ring[i + 1..] {
                    for (shard, owner) in t.placement() {
                        let owner = owner.instance_id.as_str();
                        let copies: Vec<String> = std::iter::once(owner.to_owned())
                            .chain(replica_holders(&t, owner))
                            .filter(|h| h != a && h != b)
                            .collect();
                        assert!(!copies.is_empty(), "{shard} lost with {a} and {b}");
                    }
                }
            }
        }
    }
}
