//! The arithmetic of a re-placement, with no I/O: which backend gets which shard
//! ([`keep_and_fill`] after a loss, [`spread`] for a rebalance) and where the copy each new
//! owner restores from comes from ([`sources`]).
//!
//! After a loss, survivors keep every shard they hold (their own copies are at hand, and their
//! borders keep flowing where they did); the lost backends' shards are grown onto the
//! survivors from the edges of the survivors' blocks, least-loaded survivor first, none past
//! an even share. A colony runs at its busiest backend's pace, so balance wins over shape:
//! when every survivor next to the orphans has its share, the least-loaded survivor takes an
//! orphan away from its block and grows a second block from there.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use shared::topology::{BackendEntry, ClusterTopology, ShardCoord, TopologyError};

/// Where a new owner gets a shard's cells at the checkpoint restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// The new owner keeps a copy itself (its own shard, or a replica it held).
    Held,
    /// Tick 0: rebuilt from the world's parameters, no copy needed.
    Rebuilt,
    /// From the copy another survivor keeps.
    From(String),
}

/// Why a re-placement cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PlanError {
    /// Nobody is left to place shards on.
    #[error("no backend of the colony is left")]
    NoSurvivor,
    /// Every node that kept a copy of a shard at the checkpoint is lost.
    #[error("no copy of shard {shard} at tick {tick} survives: its owner {owner} and its replica holders {holders:?} are lost")]
    NoCopy {
        /// The shard.
        shard: ShardCoord,
        /// The checkpoint.
        tick: u64,
        /// Its owner before.
        owner: String,
        /// Who kept its replicas.
        holders: Vec<String>,
    },
    /// The new placement is not a valid topology (a bug).
    #[error("cannot build the new placement: {0}")]
    Topology(String),
}

/// `template` with the backends `backends` and shard `s` on `owner[s]`: the same colony,
/// dimensions and simulation. Built through the topology's JSON form, which checks every
/// invariant on the way in.
pub(crate) fn with_owners(
    template: &ClusterTopology,
    backends: &[BackendEntry],
    owner: &BTreeMap<ShardCoord, String>,
) -> Result<ClusterTopology, PlanError> {
    let bad = |e: &dyn std::fmt::Display| PlanError::Topology(e.to_string());
    let mut json = serde_json::to_value(template).map_err(|e| bad(&e))?;
    json["backends"] = serde_json::to_value(backends).map_err(|e| bad(&e))?;
    json["placement"] = owner
        .iter()
        .map(|(shard, id)| serde_json::json!({"shard": shard, "instance_id": id}))
        .collect();
    serde_json::from_value(json).map_err(|e| bad(&e))
}

/// Of two backends that cannot reach each other (both alive), the one to drop from the run:
/// the one holding fewer shards in `topology` (fewer shards move and fewer ticks of work are
/// redone elsewhere), and of two holding as many, the greater instance id. Depends only on
/// the pair and the placement, never on which end reported the cut first, so both ends'
/// reports lead to the same decision.
pub(crate) fn side_to_drop<'a>(topology: &ClusterTopology, a: &'a str, b: &'a str) -> &'a str {
    let held = |id: &str| {
        topology
            .placement()
            .filter(|(_, owner)| owner.instance_id == id)
            .count()
    };
    match held(a).cmp(&held(b)).then_with(|| b.cmp(a)) {
        std::cmp::Ordering::Less => a,
        _ => b,
    }
}

/// After a loss: every shard of a survivor stays; the others go to `survivors` (instance
/// ids of `topology`'s backends), grown from the survivors' blocks.
///
/// # Errors
/// [`PlanError::NoSurvivor`] without survivors.
pub(crate) fn keep_and_fill(
    topology: &ClusterTopology,
    survivors: &BTreeSet<String>,
) -> Result<ClusterTopology, PlanError> {
    if survivors.is_empty() {
        return Err(PlanError::NoSurvivor);
    }
    let mut owner: BTreeMap<ShardCoord, String> = BTreeMap::new();
    let mut orphans: BTreeSet<ShardCoord> = BTreeSet::new();
    let mut load: BTreeMap<&str, usize> = survivors.iter().map(|s| (s.as_str(), 0)).collect();
    // Nobody grows past the even share rounded down while someone else is below it.
    let share = topology.shard_count() as usize / survivors.len();
    for (shard, b) in topology.placement() {
        match load.get_mut(b.instance_id.as_str()) {
            Some(n) => {
                *n += 1;
                owner.insert(shard, b.instance_id.clone());
            }
            None => {
                orphans.insert(shard);
            }
        }
    }
    // Orphans next to each survivor's block (4-neighbours, so blocks stay 4-connected).
    let sides = |s: ShardCoord| {
        let n = topology.neighbours(s);
        [n[0], n[2], n[4], n[6]]
    };
    let mut frontier: HashMap<String, BTreeSet<ShardCoord>> = HashMap::new();
    for (shard, id) in &owner {
        for n in sides(*shard) {
            if orphans.contains(&n) {
                frontier.entry(id.clone()).or_default().insert(n);
            }
        }
    }
    while let Some(&first) = orphans.iter().next() {
        // Frontiers hold orphans only (an orphan placed leaves every frontier it was in).
        let borders = |id: &str| frontier.get(id).is_some_and(|f| !f.is_empty());
        // The least-loaded survivor below an even share that borders an orphan grows into
        // it; if none does, the least-loaded survivor takes one, next to it if it can.
        let id = load
            .iter()
            .filter(|(id, n)| **n < share && borders(id))
            .min_by_key(|(id, n)| (**n, **id))
            .or_else(|| load.iter().min_by_key(|(id, n)| (**n, **id)))
            .map(|(id, _)| *id)
            .ok_or(PlanError::NoSurvivor)?;
        let shard = frontier
            .get(id)
            .and_then(|f| f.iter().next().copied())
            .unwrap_or(first);
        orphans.remove(&shard);
        for n in sides(shard) {
            if let Some(f) = owner.get(&n).and_then(|o| frontier.get_mut(o)) {
                f.remove(&shard);
            }
        }
        owner.insert(shard, id.to_owned());
        if let Some(n) = load.get_mut(id) {
            *n += 1;
        }
        for n in sides(shard) {
            if orphans.contains(&n) {
                frontier.entry(id.to_owned()).or_default().insert(n);
            }
        }
    }
    let backends: Vec<BackendEntry> = topology
        .backends()
        .iter()
        .filter(|b| survivors.contains(&b.instance_id))
        .cloned()
        .collect();
    with_owners(topology, &backends, &owner)
}

/// A rebalance: the shards placed afresh over `backends`, as a colony start places them.
///
/// # Errors
/// [`PlanError::NoSurvivor`] without backends; [`PlanError::Topology`] if they cannot hold
/// the colony (duplicate ids or endpoints).
pub(crate) fn spread(
    topology: &ClusterTopology,
    backends: Vec<BackendEntry>,
) -> Result<ClusterTopology, PlanError> {
    if backends.is_empty() {
        return Err(PlanError::NoSurvivor);
    }
    ClusterTopology::place(
        topology.colony_id(),
        *topology.coordinator(),
        backends,
        topology.dimensions(),
    )
    .and_then(|t| t.with_simulation(topology.simulation().clone()))
    .map_err(|e: TopologyError| PlanError::Topology(e.to_string()))
}

/// For every shard of `new`: where its new owner gets the shard's cells at `tick`. `held`
/// lists, per survivor, the shards it keeps a copy of at `tick`; `old` is the placement the
/// copies were made in (to name who was lost when no copy survives).
///
/// # Errors
/// [`PlanError::NoCopy`] for the first shard no survivor has a copy of.
pub(crate) fn sources(
    old: &ClusterTopology,
    new: &ClusterTopology,
    held: &BTreeMap<String, BTreeSet<ShardCoord>>,
    tick: u64,
) -> Result<BTreeMap<ShardCoord, (String, Source)>, PlanError> {
    let mut out = BTreeMap::new();
    for (shard, b) in new.placement() {
        let owner = b.instance_id.clone();
        let source = if tick == 0 {
            Source::Rebuilt
        } else if held.get(&owner).is_some_and(|h| h.contains(&shard)) {
            Source::Held
        } else {
            // Prefer the shard's old owner, then anyone (in id order) keeping a copy.
            let old_owner = old.backend_of(shard).map(|b| b.instance_id.clone());
            let from = old_owner
                .iter()
                .chain(held.keys())
                .find(|id| held.get(*id).is_some_and(|h| h.contains(&shard)))
                .cloned();
            match from {
                Some(from) => Source::From(from),
                None => {
                    let owner = old_owner.unwrap_or_default();
                    return Err(PlanError::NoCopy {
                        shard,
                        tick,
                        holders: dataplane::replica_holders(old, &owner),
                        owner,
                    });
                }
            }
        };
        out.insert(shard, (owner, source));
    }
    Ok(out)
}

/// The shards whose owner differs between `old` and `new`: `(shard, old owner, new owner)`.
pub(crate) fn moves(
    old: &ClusterTopology,
    new: &ClusterTopology,
) -> Vec<(ShardCoord, String, String)> {
    new.placement()
        .filter_map(|(shard, b)| {
            let before = old.backend_of(shard)?;
            (before.instance_id != b.instance_id)
                .then(|| (shard, before.instance_id.clone(), b.instance_id.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use shared::topology::Dimensions;
    use shared::NodeAddress;

    use super::*;

    fn address(port: u16) -> NodeAddress {
        NodeAddress::new([127, 0, 0, 1].into(), port, port + 1, port + 2)
    }

    fn topology(backends: usize, w: u32, h: u32) -> ClusterTopology {
        let entries = (0..backends)
            .map(|k| BackendEntry::new(format!("b{k}"), address(9000 + 10 * k as u16)))
            .collect();
        ClusterTopology::place(
            "c",
            address(8000),
            entries,
            Dimensions::new(w, h, 8, 8).unwrap(),
        )
        .unwrap()
    }

    fn ids(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_side_of_a_cut_dropped_holds_fewer_shards_or_has_the_greater_id_whoever_reports() {
        // 3 backends on 4 × 2 shards: one holds fewer than the others.
        let t = topology(3, 4, 2);
        let count = |id: &str| t.placement().filter(|(_, o)| o.instance_id == id).count();
        let mut by_load: Vec<&str> = vec!["b0", "b1", "b2"];
        by_load.sort_by_key(|id| (count(id), std::cmp::Reverse(*id)));
        let (fewest, other) = (by_load[0], by_load[2]);
        assert!(count(fewest) < count(other), "{by_load:?}");
        assert_eq!(side_to_drop(&t, fewest, other), fewest);
        assert_eq!(side_to_drop(&t, other, fewest), fewest);
        // As many shards each: the greater id, from either end.
        let even = topology(2, 4, 2);
        assert_eq!(side_to_drop(&even, "b0", "b1"), "b1");
        assert_eq!(side_to_drop(&even, "b1", "b0"), "b1");
    }

    /// True if `shards` form one 4-connected block on the torus of `t`.
    fn connected(t: &ClusterTopology, shards: &[ShardCoord]) -> bool {
        let all: BTreeSet<ShardCoord> = shards.iter().copied().collect();
        let Some(&start) = shards.first() else {
            return true;
        };
        let mut seen = BTreeSet::from([start]);
        let mut todo = vec![start];
        while let Some(s) = todo.pop() {
            let n = t.neighbours(s);
            for m in [n[0], n[2], n[4], n[6]] {
                if all.contains(&m) && seen.insert(m) {
                    todo.push(m);
                }
            }
        }
        seen.len() == all.len()
    }

    #[test]
    fn survivors_keep_their_shards_and_share_the_lost_ones() {
        let old = topology(4, 8, 5);
        let new = keep_and_fill(&old, &ids(&["b0", "b2", "b3"])).unwrap();
        assert_eq!(new.colony_id(), "c");
        assert_eq!(new.backends().len(), 3);
        for (shard, b) in old.placement() {
            if b.instance_id != "b1" {
                assert_eq!(new.backend_of(shard).unwrap().instance_id, b.instance_id);
            }
        }
        let loads: Vec<usize> = ["b0", "b2", "b3"]
            .iter()
            .map(|id| new.shards_of(id).len())
            .collect();
        assert_eq!(loads.iter().sum::<usize>(), 40);
        assert!(
            loads.iter().max().unwrap() - loads.iter().min().unwrap() <= 1,
            "{loads:?}"
        );
        assert!(new.shards_of("b1").is_empty());
        let moved = moves(&old, &new);
        assert_eq!(moved.len(), 10);
        assert!(moved.iter().all(|(_, from, _)| from == "b1"));
    }

    #[test]
    fn blocks_grow_from_their_edges_when_the_shares_allow_it() {
        // Three stripes of two columns; the middle one is lost, and each neighbour takes the
        // column next to it.
        let old = topology(3, 6, 1);
        let new = keep_and_fill(&old, &ids(&["b0", "b2"])).unwrap();
        for id in ["b0", "b2"] {
            let has = new.shards_of(id);
            assert_eq!(has.len(), 3, "{id}: {has:?}");
            assert!(connected(&new, &has), "{id}: {has:?}");
        }
    }

    #[test]
    fn nobody_left_is_an_error() {
        let old = topology(2, 2, 2);
        assert_eq!(
            keep_and_fill(&old, &BTreeSet::new()),
            Err(PlanError::NoSurvivor)
        );
        assert_eq!(spread(&old, Vec::new()), Err(PlanError::NoSurvivor));
    }

    #[test]
    fn a_spread_places_the_same_colony_afresh() {
        let old = topology(2, 4, 2);
        let backends: Vec<BackendEntry> = (0..4)
            .map(|k| BackendEntry::new(format!("b{k}"), address(9000 + 10 * k)))
            .collect();
        let new = spread(&old, backends).unwrap();
        assert_eq!(new.colony_id(), old.colony_id());
        assert_eq!(new.simulation(), old.simulation());
        for k in 0..4 {
            assert_eq!(new.shards_of(&format!("b{k}")).len(), 2);
        }
    }

    #[test]
    fn sources_prefer_a_copy_at_hand_then_the_old_owner_and_name_who_was_lost() {
        let old = topology(4, 4, 1);
        // b1 is lost: its shard goes to a survivor.
        let new = keep_and_fill(&old, &ids(&["b0", "b2", "b3"])).unwrap();
        let (lost_shard, _, heir) = moves(&old, &new).remove(0);
        // Every survivor keeps its own shard; b2 and b3 keep b1's replica.
        let mut held: BTreeMap<String, BTreeSet<ShardCoord>> = BTreeMap::new();
        for id in ["b0", "b2", "b3"] {
            held.insert(id.into(), old.shards_of(id).into_iter().collect());
        }
        for holder in dataplane::replica_holders(&old, "b1") {
            held.entry(holder).or_default().insert(lost_shard);
        }
        let plan = sources(&old, &new, &held, 100).unwrap();
        let (owner, source) = &plan[&lost_shard];
        assert_eq!(owner, &heir);
        let holders = dataplane::replica_holders(&old, "b1");
        if holders.contains(&heir) {
            assert_eq!(source, &Source::Held);
        } else {
            assert!(
                matches!(source, Source::From(f) if holders.contains(f)),
                "{source:?}"
            );
        }
        // Tick 0 needs no copy at all.
        assert!(sources(&old, &new, &BTreeMap::new(), 0)
            .unwrap()
            .values()
            .all(|(_, s)| *s == Source::Rebuilt));
        // Without the replicas, the shard is lost, and the error says whose loss that was.
        for holder in dataplane::replica_holders(&old, "b1") {
            if let Some(h) = held.get_mut(&holder) {
                h.remove(&lost_shard);
            }
        }
        let e = sources(&old, &new, &held, 100).unwrap_err();
        assert!(
            matches!(&e, PlanError::NoCopy { owner, .. } if owner == "b1"),
            "{e:?}"
        );
        assert!(e.to_string().contains("b2"), "{e}");
    }

    proptest! {
        /// Whatever survives, every shard is placed on a survivor, survivors keep what they
        /// had, and nobody grows past an even share.
        #[test]
        fn filling_keeps_survivors_shards_and_balances(
            backends in 2usize..7,
            w in 2u32..9, h in 1u32..6,
            lose in prop::collection::btree_set(0usize..7, 1..3),
        ) {
            let old = topology(backends, w, h);
            let ring: Vec<String> = dataplane::ring(&old).iter().map(|s| (*s).to_owned()).collect();
            let survivors: BTreeSet<String> = ring
                .iter()
                .enumerate()
                .filter(|(i, _)| !lose.contains(i))
                .map(|(_, id)| id.clone())
                .collect();
            prop_assume!(!survivors.is_empty());
            let new = keep_and_fill(&old, &survivors).unwrap();
            for (shard, b) in new.placement() {
                prop_assert!(survivors.contains(&b.instance_id));
                let before = old.backend_of(shard).unwrap();
                if survivors.contains(&before.instance_id) {
                    prop_assert_eq!(&before.instance_id, &b.instance_id);
                }
            }
            let share = (old.shard_count() as usize).div_ceil(survivors.len());
            for id in &survivors {
                let (had, has) = (old.shards_of(id).len(), new.shards_of(id).len());
                prop_assert!(has == had || has <= share, "{id}: {had} -> {has}, share {share}");
            }
        }
    }
}
