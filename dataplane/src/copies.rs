//! [`CopyStore`]: what a backend keeps of a colony across re-placements (DESIGN §14) — copies
//! of shard cells at checkpoint ticks, the newest consistent tick it was told, and the fence.
//!
//! - **Copies.** At every checkpoint a backend keeps the cells of its own shards (so it can go
//!   back to that tick) and receives the cells of other owners' shards (replicas, see
//!   `holders`). A shard's cells at a tick are a pure function of the world and the tick, so a
//!   copy is valid whatever placement made it: copies outlive placements, and a restore takes
//!   whichever copy of a shard is at hand.
//! - **Memory.** Copies older than the committed tick (the newest checkpoint the coordinator
//!   found consistent) are dropped when a commit arrives. The tick engine does not run more
//!   than [`MAX_AHEAD`] checkpoints past the committed one, so a backend keeps at most that
//!   many checkpoints besides the committed one; a peer that sends copies beyond twice that
//!   (backends learn commits at slightly different times) is refused.
//! - **The fence.** The epoch is the placement this backend takes orders in. The coordinator
//!   raises it before re-placing shards; from then on anything stamped with an older epoch —
//!   a border or a copy from a backend that was given up on, a command from a coordinator that
//!   was replaced — is refused, so it cannot write into the new placement.
//!
//! Shared by the connections (which file replicas and answer the coordinator) and the tick
//! engine (which files its own copies and waits here for commits). It knows nothing of
//! shards' contents beyond their bytes.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use shared::topology::ShardCoord;
use tokio::sync::watch;

/// Checkpoints the tick engine may run ahead of the newest consistent one: each is a copy of
/// every shard of this backend and of the shards it keeps replicas of. Large enough that the
/// coordinator's report round trip (about a tenth of a second) rarely stops a fast colony.
pub const MAX_AHEAD: usize = 32;

/// Checkpoint ticks past the committed one that a peer may fill here: twice the engine's
/// bound, since a peer may have learnt a newer commit than this backend has.
const MAX_TICKS_KEPT: usize = 2 * MAX_AHEAD + 2;

/// Why a colony message was refused against this backend's colony and fence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyError {
    /// The message names a colony this backend is not part of.
    #[error("this node is not part of colony {colony_id}")]
    UnknownColony {
        /// The colony named.
        colony_id: String,
    },
    /// The message comes from an older placement than the one in force here.
    #[error("epoch {epoch} is over: this backend takes orders in epoch {current}")]
    StaleEpoch {
        /// The message's epoch.
        epoch: u64,
        /// This backend's.
        current: u64,
    },
    /// The message comes from a placement this backend was not given (yet).
    #[error("epoch {epoch} is not in force here: this backend is in epoch {current}")]
    FutureEpoch {
        /// The message's epoch.
        epoch: u64,
        /// This backend's.
        current: u64,
    },
    /// A copy for a tick too far past the newest consistent one.
    #[error("copy for tick {tick} refused: {kept} checkpoints past the consistent tick {committed} are kept already")]
    TooFarAhead {
        /// The copy's tick.
        tick: u64,
        /// The newest consistent tick here.
        committed: u64,
        /// Checkpoints kept past it.
        kept: usize,
    },
}

#[derive(Debug, Default)]
struct State {
    colony_id: Option<String>,
    epoch: u64,
    committed: u64,
    /// tick → shard → its cells in byte form.
    ticks: BTreeMap<u64, BTreeMap<ShardCoord, Arc<Vec<u8>>>>,
}

impl State {
    fn check(&self, colony_id: &str, epoch: u64) -> Result<(), CopyError> {
        if self.colony_id.as_deref() != Some(colony_id) {
            return Err(CopyError::UnknownColony {
                colony_id: colony_id.to_owned(),
            });
        }
        match epoch.cmp(&self.epoch) {
            std::cmp::Ordering::Less => Err(CopyError::StaleEpoch {
                epoch,
                current: self.epoch,
            }),
            std::cmp::Ordering::Greater => Err(CopyError::FutureEpoch {
                epoch,
                current: self.epoch,
            }),
            std::cmp::Ordering::Equal => Ok(()),
        }
    }

    /// Drops every copy older than `committed`.
    fn prune(&mut self) {
        self.ticks = self.ticks.split_off(&self.committed);
    }
}

/// A backend's copies, commit and fence for its colony. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct CopyStore {
    state: Mutex<State>,
    /// Bumped on every change, so waiters (the engine's bound, progress reports) wake up.
    changed: watch::Sender<u64>,
}

impl Default for CopyStore {
    fn default() -> Self {
        CopyStore {
            state: Mutex::new(State::default()),
            changed: watch::Sender::new(0),
        }
    }
}

/// The copies of one shard at one tick, and the shard.
pub type ShardCopy = (ShardCoord, Arc<Vec<u8>>);

impl CopyStore {
    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Starts over for a new colony at epoch 0: every copy of the old one goes.
    pub fn reset(&self, colony_id: &str) {
        *self.state.lock() = State {
            colony_id: Some(colony_id.to_owned()),
            ..State::default()
        };
        self.bump();
    }

    /// Forgets colony `colony_id` (it was stopped for good by a coordinator steering
    /// `epoch`): its copies go, and every message for it is refused from now on. Checked and
    /// done in one step, so a new colony adopted meanwhile is never the one forgotten.
    ///
    /// # Errors
    /// [`CopyError::UnknownColony`], or [`CopyError::StaleEpoch`] below the fence (a
    /// replaced coordinator cannot stop its successor's colony).
    pub fn forget(&self, colony_id: &str, epoch: u64) -> Result<(), CopyError> {
        let mut state = self.state.lock();
        if state.colony_id.as_deref() != Some(colony_id) {
            return Err(CopyError::UnknownColony {
                colony_id: colony_id.to_owned(),
            });
        }
        if epoch < state.epoch {
            return Err(CopyError::StaleEpoch {
                epoch,
                current: state.epoch,
            });
        }
        *state = State::default();
        drop(state);
        self.bump();
        Ok(())
    }

    /// The colony these copies belong to.
    pub fn colony_id(&self) -> Option<String> {
        self.state.lock().colony_id.clone()
    }

    /// The epoch this backend takes orders in.
    pub fn epoch(&self) -> u64 {
        self.state.lock().epoch
    }

    /// The newest consistent tick this backend was told.
    pub fn committed(&self) -> u64 {
        self.state.lock().committed
    }

    /// Accepts a message stamped `(colony_id, epoch)` only if that is the placement in force.
    ///
    /// # Errors
    /// [`CopyError::UnknownColony`], [`CopyError::StaleEpoch`] or [`CopyError::FutureEpoch`].
    pub fn check(&self, colony_id: &str, epoch: u64) -> Result<(), CopyError> {
        self.state.lock().check(colony_id, epoch)
    }

    /// Raises the fence to `epoch`: from now on messages of older epochs are refused. The same
    /// epoch again is accepted (a retried fence). A backend part of no colony (new, restarted,
    /// or its colony stopped) joins this one, with no copies, so a re-placement can give it
    /// shards.
    ///
    /// # Errors
    /// [`CopyError::UnknownColony`] for a backend part of another colony, or
    /// [`CopyError::StaleEpoch`] for an epoch below the fence.
    pub fn fence(&self, colony_id: &str, epoch: u64) -> Result<(), CopyError> {
        let mut state = self.state.lock();
        if state.colony_id.is_none() {
            *state = State {
                colony_id: Some(colony_id.to_owned()),
                ..State::default()
            };
        }
        if state.colony_id.as_deref() != Some(colony_id) {
            return Err(CopyError::UnknownColony {
                colony_id: colony_id.to_owned(),
            });
        }
        if epoch < state.epoch {
            return Err(CopyError::StaleEpoch {
                epoch,
                current: state.epoch,
            });
        }
        state.epoch = epoch;
        drop(state);
        self.bump();
        Ok(())
    }

    /// Files copies of `shards` at `tick`, made in `epoch`. Copies older than the committed
    /// tick are not needed any more and are dropped quietly.
    ///
    /// # Errors
    /// A message of another colony or epoch; a tick beyond the bound.
    pub fn put(
        &self,
        colony_id: &str,
        epoch: u64,
        tick: u64,
        shards: Vec<ShardCopy>,
    ) -> Result<(), CopyError> {
        let mut state = self.state.lock();
        state.check(colony_id, epoch)?;
        if tick < state.committed {
            return Ok(());
        }
        if !state.ticks.contains_key(&tick) {
            let kept = state.ticks.range(state.committed + 1..).count();
            if tick > state.committed && kept >= MAX_TICKS_KEPT {
                return Err(CopyError::TooFarAhead {
                    tick,
                    committed: state.committed,
                    kept,
                });
            }
        }
        let at = state.ticks.entry(tick).or_default();
        for (shard, bits) in shards {
            at.insert(shard, bits);
        }
        drop(state);
        self.bump();
        Ok(())
    }

    /// Checkpoint `tick` is consistent: copies older than it go. A commit never moves back.
    ///
    /// # Errors
    /// A message of another colony or epoch.
    pub fn commit(&self, colony_id: &str, epoch: u64, tick: u64) -> Result<u64, CopyError> {
        let mut state = self.state.lock();
        state.check(colony_id, epoch)?;
        if tick > state.committed {
            state.committed = tick;
            state.prune();
            drop(state);
            self.bump();
            return Ok(tick);
        }
        Ok(state.committed)
    }

    /// The colony goes back to checkpoint `tick` (a restore): it is the committed tick from
    /// now on, and copies of any other tick go (those past it belong to ticks that will be
    /// computed again, by another placement).
    pub fn rewind_to(&self, tick: u64) {
        let mut state = self.state.lock();
        state.committed = tick;
        let at = state.ticks.remove(&tick);
        state.ticks.clear();
        if let Some(at) = at {
            state.ticks.insert(tick, at);
        }
        drop(state);
        self.bump();
    }

    /// The copy of `shard` at `tick`, if kept here.
    pub fn get(&self, tick: u64, shard: ShardCoord) -> Option<Arc<Vec<u8>>> {
        self.state.lock().ticks.get(&tick)?.get(&shard).cloned()
    }

    /// Every shard kept, by tick, oldest first.
    pub fn inventory(&self) -> Vec<(u64, Vec<ShardCoord>)> {
        self.state
            .lock()
            .ticks
            .iter()
            .map(|(tick, shards)| (*tick, shards.keys().copied().collect()))
            .collect()
    }

    /// Per checkpoint tick past the committed one: how many of `replicated` (the shards this
    /// backend keeps replicas of) are here.
    pub fn held(&self, replicated: &std::collections::BTreeSet<ShardCoord>) -> Vec<(u64, u32)> {
        let state = self.state.lock();
        state
            .ticks
            .range(state.committed + 1..)
            .map(|(tick, shards)| {
                let n = shards.keys().filter(|s| replicated.contains(s)).count();
                (*tick, u32::try_from(n).unwrap_or(u32::MAX))
            })
            .collect()
    }

    /// Checkpoint ticks kept past the committed one.
    pub fn ahead(&self) -> usize {
        let state = self.state.lock();
        state.ticks.range(state.committed + 1..).count()
    }

    /// A receiver that changes whenever the store does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn bits(n: u8) -> Arc<Vec<u8>> {
        Arc::new(vec![n])
    }

    fn store() -> CopyStore {
        let store = CopyStore::default();
        store.reset("c");
        store
    }

    #[test]
    fn the_fence_refuses_older_epochs_and_the_store_the_wrong_colony() {
        let s = store();
        assert_eq!(s.check("c", 0), Ok(()));
        assert!(matches!(
            s.check("d", 0),
            Err(CopyError::UnknownColony { .. })
        ));
        assert!(matches!(
            s.fence("d", 5),
            Err(CopyError::UnknownColony { .. })
        ));
        s.fence("c", 2).unwrap();
        assert_eq!(
            s.check("c", 1),
            Err(CopyError::StaleEpoch {
                epoch: 1,
                current: 2
            })
        );
        assert!(matches!(
            s.check("c", 3),
            Err(CopyError::FutureEpoch { .. })
        ));
        // A fence never goes back; the same epoch again is fine.
        assert!(s.fence("c", 1).is_err());
        assert_eq!(s.fence("c", 2), Ok(()));
        // A stale writer's copies are refused.
        let copy = vec![(ShardCoord::new(0, 0), bits(1))];
        assert!(s.put("c", 1, 100, copy.clone()).is_err());
        assert!(s.put("c", 2, 100, copy).is_ok());
        assert_eq!(s.get(100, ShardCoord::new(0, 0)), Some(bits(1)));
    }

    #[test]
    fn a_backend_part_of_no_colony_joins_one_at_its_fence() {
        let s = CopyStore::default();
        assert!(s.check("c", 3).is_err());
        s.fence("c", 3).unwrap();
        assert_eq!(s.colony_id().as_deref(), Some("c"));
        assert_eq!((s.epoch(), s.committed()), (3, 0));
        assert!(s.inventory().is_empty());
        // A stopped colony is forgotten, and the backend can join another.
        s.forget("c", 3).unwrap();
        s.fence("d", 1).unwrap();
        assert_eq!(s.colony_id().as_deref(), Some("d"));
    }

    #[test]
    fn commits_drop_older_copies_and_never_move_back() {
        let s = store();
        for tick in [100, 200, 300] {
            s.put("c", 0, tick, vec![(ShardCoord::new(0, 0), bits(1))])
                .unwrap();
        }
        assert_eq!(s.ahead(), 3);
        assert_eq!(s.commit("c", 0, 200), Ok(200));
        assert_eq!(s.commit("c", 0, 100), Ok(200));
        assert_eq!(s.committed(), 200);
        let ticks: Vec<u64> = s.inventory().into_iter().map(|(t, _)| t).collect();
        assert_eq!(ticks, [200, 300]);
        assert_eq!(s.ahead(), 1);
        // A late copy of a tick before the commit is not kept.
        s.put("c", 0, 100, vec![(ShardCoord::new(1, 0), bits(2))])
            .unwrap();
        assert_eq!(s.get(100, ShardCoord::new(1, 0)), None);
    }

    #[test]
    fn copies_far_past_the_commit_are_refused() {
        let s = store();
        for k in 1..=MAX_TICKS_KEPT as u64 {
            s.put("c", 0, k * 10, vec![(ShardCoord::new(0, 0), bits(0))])
                .unwrap();
        }
        let e = s
            .put("c", 0, 99_999, vec![(ShardCoord::new(0, 0), bits(0))])
            .unwrap_err();
        assert!(matches!(e, CopyError::TooFarAhead { .. }), "{e:?}");
        // More shards at a tick already kept are fine.
        s.put("c", 0, 10, vec![(ShardCoord::new(1, 0), bits(0))])
            .unwrap();
    }

    #[test]
    fn rewinding_keeps_only_the_tick_gone_back_to() {
        let s = store();
        for tick in [100, 200, 300] {
            s.put("c", 0, tick, vec![(ShardCoord::new(0, 0), bits(1))])
                .unwrap();
        }
        s.commit("c", 0, 100).unwrap();
        s.rewind_to(200);
        assert_eq!(s.committed(), 200);
        let ticks: Vec<u64> = s.inventory().into_iter().map(|(t, _)| t).collect();
        assert_eq!(ticks, [200]);
    }

    #[test]
    fn held_counts_only_replicas_past_the_commit() {
        let s = store();
        let mine = ShardCoord::new(0, 0);
        let theirs = ShardCoord::new(1, 0);
        s.put("c", 0, 100, vec![(mine, bits(1)), (theirs, bits(2))])
            .unwrap();
        s.put("c", 0, 200, vec![(mine, bits(1))]).unwrap();
        let replicated = BTreeSet::from([theirs]);
        assert_eq!(s.held(&replicated), [(100, 1), (200, 0)]);
        s.commit("c", 0, 100).unwrap();
        assert_eq!(s.held(&replicated), [(200, 0)]);
    }
}
