//! [`HealthTracker`]: the failure detector's state machine. Heartbeats move a node to
//! ACTIVE (or LEFT on a goodbye); a sweeper moves silent nodes to STALE and then DOWN, raising
//! alerts, counts a quick recovery as a flap, and forgets nodes DOWN or LEFT for longer than
//! `forget_after`. The sweeper does not blame nodes for its own stalls, nor for those of the
//! heartbeat channels' thread ([`HealthTracker::report_stall`]).
//!
//! Replays (DESIGN §13): each node's record keeps the boot id of its current run and the last
//! `seq` accepted from it. A heartbeat whose `seq` is not above that, or that comes from a boot
//! the node has since replaced, is refused before anything changes; a new boot id is a restart,
//! logged, and starts a new sequence.
//!
//! Finding a node: [`HealthTracker::record`] looks it up in the map (adding it on its first
//! heartbeat, atomically: of two first heartbeats racing, one adds the node and the other is
//! applied to it, so a copy is still refused). A node's heartbeat channel records its first
//! heartbeat with [`HealthTracker::record_and_hold`] and keeps the [`NodeHandle`] it gets;
//! [`HealthTracker::record_through`] then records the node's later heartbeats straight into
//! its record, with the same checks, and looks the node up again only when the handle's
//! record was forgotten since ([`super::record`] says how that is known).
//!
//! All timing uses `tokio::time::Instant`, so tests drive it with paused time. Wall-clock
//! times are kept only to show people when something happened.

use std::collections::VecDeque;
use std::sync::atomic::{
    AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use parking_lot::Mutex;
use shared::log_limit::LogLimit;
use shared::NodeAddress;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::alerts::{AlertLog, AlertsView};
use super::config::HealthConfig;
use super::events::HealthEvent;
use super::node_state::{NodeState, Transition};
pub use super::record::{BootId, NodeHandle};
use super::record::{NodeKey, NodeRecord, Slot};
use super::stats::HealthStats;
use super::views::{Component, Counts, HealthStatus};
use crate::time::{millis, rfc3339};
use crate::wire::heartbeat::{Heartbeat, HeartbeatError, NodeType};
use crate::wire::metrics::Metrics;

/// Sweeper lateness below this is scheduling noise, not a stall.
const STALL_TOLERANCE: Duration = Duration::from_millis(10);
/// A stall this long is worth a warning (rate-limited); shorter ones, credited all the same,
/// are only counted and logged at debug level: a busy machine has them all the time.
const STALL_WARNING: Duration = Duration::from_millis(500);
/// At most one [`HealthEvent::HealthCheckResult`] per node this often: heartbeats may come
/// every 10 ms, and a live view needs far fewer.
pub const HEALTH_CHECK_EVENT_EVERY: Duration = Duration::from_secs(1);
/// At most about this many [`HealthEvent::HealthCheckResult`]s a second over the whole
/// cluster: beyond this many nodes, each node's comes every `nodes / this` seconds instead of
/// every [`HEALTH_CHECK_EVENT_EVERY`]. Each event is serialised and written to every `/ws`
/// client; at one per node per second, 5 000 nodes and 20 clients made 100 000 writes a
/// second on the management thread, ahead of the heartbeats themselves. State changes are
/// never held back: they are their own events.
pub const HEALTH_CHECK_EVENTS_PER_SECOND: u64 = 250;
/// Health events a subscriber may fall behind by before it misses some.
const EVENT_QUEUE: usize = 16 * 1024;
/// Boot ids remembered per node after it restarted, so a heartbeat replayed from an earlier run
/// is refused; restarts faster than this many per signature window are not a real concern.
const RETIRED_BOOTS: usize = 4;

/// Node transitions are logged at most once a second per kind, with the count held back:
/// thousands of fake nodes coming and going must not turn the log into the attack. Every
/// transition is still an event (`/ws`) and, for failures, an alert.
const TRANSITION_LOG_INTERVAL: Duration = Duration::from_secs(1);
static STATE_LOG: LogLimit = LogLimit::new("health_node_state", TRANSITION_LOG_INTERVAL);
static RECOVERED_LOG: LogLimit = LogLimit::new("health_node_recovered", TRANSITION_LOG_INTERVAL);
static RESTARTED_LOG: LogLimit = LogLimit::new("health_node_restarted", TRANSITION_LOG_INTERVAL);
static MISSED_LOG: LogLimit =
    LogLimit::new("health_node_missed_heartbeats", TRANSITION_LOG_INTERVAL);
static CHANNEL_LOG: LogLimit = LogLimit::new("health_node_channel_closed", TRANSITION_LOG_INTERVAL);
static FORGOT_LOG: LogLimit = LogLimit::new("health_node_forgotten", TRANSITION_LOG_INTERVAL);
/// A late sweep is logged at most once a second: under a sustained backlog every sweep is
/// late, four times a second.
static STALL_LOG: LogLimit = LogLimit::new("health_sweep_late", TRANSITION_LOG_INTERVAL);

/// The context of one heartbeat being recorded.
struct Beat {
    boot_id: BootId,
    /// The state it moves the node to.
    target: NodeState,
    now: Instant,
    wall: SystemTime,
    /// How often the node may have a [`HealthEvent::HealthCheckResult`].
    check_every: Duration,
}

/// What applying a heartbeat to its record did, announced once the record's lock is
/// released (logs, alerts, events).
struct Applied {
    changed: Option<Transition>,
    moved: bool,
    flapped: bool,
    /// The boot id replaced and its last `seq`.
    restarted: Option<(String, u64)>,
    /// (heartbeats so far, gap since the previous one), when a check event is due.
    check: Option<(u64, Option<u64>)>,
}

/// The coordinator's own entry in the component list.
#[derive(Debug, Clone)]
struct SelfComponent {
    node_id: String,
    address: NodeAddress,
    started: SystemTime,
    started_at: Instant,
}

#[derive(Debug)]
struct Inner {
    config: HealthConfig,
    /// Each record behind its own lock ([`super::record`]): the map's shard locks are
    /// taken to add or forget a node, or to find one, never to change a record.
    nodes: DashMap<NodeKey, Slot>,
    /// How often each node may have a [`HealthEvent::HealthCheckResult`], in milliseconds:
    /// [`HEALTH_CHECK_EVENT_EVERY`], stretched by the sweeper as the cluster grows past
    /// [`HEALTH_CHECK_EVENTS_PER_SECOND`] nodes.
    check_every_ms: AtomicU64,
    /// The longest stall another thread that reads heartbeats reported since the sweeper
    /// last looked, in milliseconds ([`HealthTracker::report_stall`]).
    stalled_elsewhere_ms: AtomicU64,
    /// Moves whenever what [`HealthTracker::live_backends`] answers may have changed
    /// ([`HealthTracker::live_changes`]).
    live_changes: AtomicU64,
    alerts: Mutex<AlertLog>,
    events: broadcast::Sender<HealthEvent>,
    me: Option<SelfComponent>,
    stats: HealthStats,
}

/// Per-node health, shared by the heartbeat handler, the sweeper and the read endpoints.
#[derive(Debug, Clone)]
pub struct HealthTracker {
    inner: Arc<Inner>,
}

/// What became of a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// The node's state after it.
    pub state: NodeState,
}

impl HealthTracker {
    /// A tracker; `me` lists the coordinator itself as an always-ACTIVE component.
    pub fn new(config: HealthConfig, me: Option<(String, NodeAddress)>) -> Self {
        // Room for thousands of nodes joining at once (each a transition, an endpoint and a
        // health check): a subscriber that falls further behind resyncs with a snapshot of
        // every node, which is what a burst must not cost.
        let (events, _) = broadcast::channel(EVENT_QUEUE);
        HealthTracker {
            inner: Arc::new(Inner {
                config,
                nodes: DashMap::new(),
                check_every_ms: AtomicU64::new(millis(HEALTH_CHECK_EVENT_EVERY)),
                stalled_elsewhere_ms: AtomicU64::new(0),
                live_changes: AtomicU64::new(0),
                alerts: Mutex::new(AlertLog::default()),
                events,
                me: me.map(|(node_id, address)| SelfComponent {
                    node_id,
                    address,
                    started: SystemTime::now(),
                    started_at: Instant::now(),
                }),
                stats: HealthStats::default(),
            }),
        }
    }

    /// The thresholds in force.
    pub fn config(&self) -> HealthConfig {
        self.inner.config
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<HealthEvent> {
        self.inner.events.subscribe()
    }

    /// Records a (validated, authenticated) heartbeat received at `now`, finding its node
    /// in the map (or adding it, on its first heartbeat).
    ///
    /// # Errors
    /// [`HeartbeatError::Replayed`] if its `seq` is not above the last accepted from the
    /// same boot of the node, [`HeartbeatError::RetiredBoot`] if it comes from a boot the node
    /// has since replaced, [`HeartbeatError::BootId`] if its boot id is longer than a valid
    /// one. A refused heartbeat changes nothing.
    pub fn record(&self, mut hb: Heartbeat, now: Instant) -> Result<Recorded, HeartbeatError> {
        let beat = self.beat(&hb, now)?;
        let (_, applied) = self.apply_by_map(&mut hb, &beat);
        Ok(self.announce(hb, applied?, &beat))
    }

    /// [`Self::record`], handing back the node's record to record its next heartbeats
    /// through ([`Self::record_through`]).
    ///
    /// # Errors
    /// As [`Self::record`].
    pub fn record_and_hold(
        &self,
        mut hb: Heartbeat,
        now: Instant,
    ) -> Result<(Recorded, NodeHandle), HeartbeatError> {
        let beat = self.beat(&hb, now)?;
        let (slot, applied) = self.apply_by_map(&mut hb, &beat);
        let applied = applied?;
        let handle = NodeHandle {
            key: NodeKey::new(&hb.instance_id),
            slot,
        };
        Ok((self.announce(hb, applied, &beat), handle))
    }

    /// [`Self::record`] through `handle`, without finding the node in the map, while the
    /// handle holds the record of `hb`'s node that is in the map. When it does not (the node
    /// was forgotten since, and perhaps came back), the node is found in the map as by
    /// [`Self::record`] and `handle` now holds its current record: a stale handle never
    /// changes a record that is no longer in the map. A heartbeat of another node than the
    /// handle's is recorded by the map and leaves the handle as it was.
    ///
    /// # Errors
    /// As [`Self::record`].
    pub fn record_through(
        &self,
        handle: &mut NodeHandle,
        mut hb: Heartbeat,
        now: Instant,
    ) -> Result<Recorded, HeartbeatError> {
        let beat = self.beat(&hb, now)?;
        let mine = handle.is_for(&hb.instance_id);
        let held = if mine {
            self.apply_held(&handle.slot, &mut hb, &beat)
        } else {
            None
        };
        let applied = match held {
            Some(applied) => applied,
            None => {
                let (slot, applied) = self.apply_by_map(&mut hb, &beat);
                if mine {
                    handle.slot = slot;
                }
                applied
            }
        };
        Ok(self.announce(hb, applied?, &beat))
    }

    /// What every way of recording `hb` needs first; refuses a boot id too long to keep.
    fn beat(&self, hb: &Heartbeat, now: Instant) -> Result<Beat, HeartbeatError> {
        Ok(Beat {
            boot_id: BootId::new(&hb.boot_id).ok_or(HeartbeatError::BootId)?,
            target: if hb.leaving {
                NodeState::Left
            } else {
                NodeState::Active
            },
            now,
            wall: SystemTime::now(),
            check_every: Duration::from_millis(self.inner.check_every_ms.load(Relaxed)),
        })
    }

    /// Applies `hb` to the record in `slot`, unless that record was forgotten (`None`).
    fn apply_held(
        &self,
        slot: &Slot,
        hb: &mut Heartbeat,
        beat: &Beat,
    ) -> Option<Result<Applied, HeartbeatError>> {
        let mut record = slot.lock();
        if record.forgotten {
            return None;
        }
        Some(self.apply(&mut record, hb, beat))
    }

    /// Applies `hb` to its node's record in the map, made now if the node has none; returns
    /// the record's slot too, for a handle.
    fn apply_by_map(
        &self,
        hb: &mut Heartbeat,
        beat: &Beat,
    ) -> (Slot, Result<Applied, HeartbeatError>) {
        loop {
            let found = self
                .inner
                .nodes
                .get(hb.instance_id.as_bytes())
                .map(|entry| Arc::clone(entry.value()));
            let slot = match found {
                Some(slot) => slot,
                // Under the shard's write lock: of two first heartbeats racing, one adds the
                // node and the other is applied to it.
                None => match self.inner.nodes.entry(NodeKey::new(&hb.instance_id)) {
                    Entry::Occupied(entry) => Arc::clone(entry.get()),
                    Entry::Vacant(entry) => {
                        let (record, applied) = self.first(hb, beat);
                        let slot = Arc::new(Mutex::new(record));
                        entry.insert(Arc::clone(&slot));
                        self.live_changed();
                        return (slot, Ok(applied));
                    }
                },
            };
            // Forgotten between the lookup and the lock: it is out of the map by now, so
            // looking again finds the node's new record or none.
            if let Some(applied) = self.apply_held(&slot, hb, beat) {
                return (slot, applied);
            }
        }
    }

    /// A node's first record, from its first heartbeat (or its first since it was forgotten).
    fn first(&self, hb: &mut Heartbeat, beat: &Beat) -> (NodeRecord, Applied) {
        let target = beat.target;
        let first = Transition {
            from: None,
            to: target,
            at: rfc3339(beat.wall),
        };
        let record = NodeRecord {
            forgotten: false,
            node_type: hb.node_type,
            address: hb.address,
            state: target,
            first_seen: beat.wall,
            first_seen_at: beat.now,
            last_seen: beat.wall,
            last_heard: beat.now,
            heartbeats: 1,
            boot_id: beat.boot_id,
            retired_boots: VecDeque::new(),
            seq: hb.seq,
            flaps: 0,
            gone_since: (target == NodeState::Left).then_some(beat.now),
            failed_since: None,
            last_transition: Some(first.clone()),
            metrics: take_metrics(
                &mut hb.metrics,
                target == NodeState::Active && self.listened(),
            ),
            last_check_event: (target == NodeState::Active).then_some(beat.now),
        };
        let applied = Applied {
            changed: Some(first),
            moved: true,
            flapped: false,
            restarted: None,
            check: (target == NodeState::Active).then_some((1, None)),
        };
        (record, applied)
    }

    /// Applies `hb` to its node's `record`, under the record's lock: from the replay checks
    /// to the update, so two copies of a heartbeat racing each other cannot both pass.
    fn apply(
        &self,
        record: &mut NodeRecord,
        hb: &mut Heartbeat,
        beat: &Beat,
    ) -> Result<Applied, HeartbeatError> {
        let (target, now) = (beat.target, beat.now);
        let mut applied = Applied {
            changed: None,
            moved: false,
            flapped: false,
            restarted: None,
            check: None,
        };
        if record.boot_id == beat.boot_id {
            if hb.seq <= record.seq {
                return Err(HeartbeatError::Replayed {
                    node: std::mem::take(&mut hb.instance_id),
                    seq: hb.seq,
                    last: record.seq,
                });
            }
        } else if record.retired_boots.contains(&beat.boot_id) {
            return Err(HeartbeatError::RetiredBoot {
                node: std::mem::take(&mut hb.instance_id),
                boot_id: std::mem::take(&mut hb.boot_id),
            });
        } else {
            let old = std::mem::replace(&mut record.boot_id, beat.boot_id);
            if record.retired_boots.len() == RETIRED_BOOTS {
                record.retired_boots.pop_front();
            }
            applied.restarted = Some((old.as_str().to_owned(), record.seq));
            record.retired_boots.push_back(old);
        }
        if applied.restarted.is_some()
            || (record.state == NodeState::Left && target == NodeState::Active)
        {
            // A new run of the node: restarted, or back after a goodbye.
            record.first_seen = beat.wall;
            record.first_seen_at = now;
        }
        if record.address != hb.address {
            record.address = hb.address;
            applied.moved = true;
        }
        if record.state != target {
            if target == NodeState::Active && record.state.is_failure() {
                if let Some(since) = record.failed_since {
                    if now.saturating_duration_since(since) <= self.inner.config.flap_window {
                        record.flaps += 1;
                        applied.flapped = true;
                    }
                }
            }
            record.failed_since = None;
            applied.changed = Some(transition(record, target, beat.wall, now));
        }
        let gap = now.saturating_duration_since(record.last_heard);
        self.inner.stats.heartbeat_gap(gap);
        let retyped = record.node_type != hb.node_type;
        record.node_type = hb.node_type;
        record.last_seen = beat.wall;
        record.last_heard = now;
        record.heartbeats += 1;
        record.seq = hb.seq;
        let due = record
            .last_check_event
            .is_none_or(|last| now.saturating_duration_since(last) >= beat.check_every);
        if due && target == NodeState::Active {
            record.last_check_event = Some(now);
            applied.check = Some((record.heartbeats, Some(millis(gap))));
        }
        // The same gauges as last time, mostly: their values are copied in place.
        let digest_moved = record.metrics.assign(&hb.metrics);
        if digest_moved || retyped || applied.moved || applied.changed.is_some() {
            self.live_changed();
        }
        Ok(applied)
    }

    /// Whether anyone listens to events. A HealthCheckResult nobody listens to is not
    /// built: no copy of the metrics, no timestamp text. Asked only when one is due: the
    /// count is behind the channel's lock.
    fn listened(&self) -> bool {
        self.inner.events.receiver_count() > 0
    }

    /// Logs, alerts and events for a heartbeat applied, once its record's lock is released.
    fn announce(&self, hb: Heartbeat, applied: Applied, beat: &Beat) -> Recorded {
        let Applied {
            changed,
            moved,
            flapped,
            restarted,
            check,
        } = applied;
        if let Some((old_boot, old_seq)) = restarted {
            shared::info_limited!(RESTARTED_LOG, node = %hb.instance_id, old_boot, old_seq, new_seq = hb.seq, "node restarted: new boot id, its heartbeat sequence starts again");
        }
        if moved {
            let _ = self.inner.events.send(HealthEvent::EndpointUpdated {
                node_id: hb.instance_id.clone(),
                address: hb.address,
            });
        }
        if let Some(t) = &changed {
            self.inner.stats.transition(t.from, t.to);
        }
        if let Some(t) = changed {
            match t.from {
                Some(from) if from.is_failure() => {
                    shared::info_limited!(RECOVERED_LOG, node = %hb.instance_id, from = from.as_str(), to = t.to.as_str(), flap = flapped, "node recovered");
                    self.inner.alerts.lock().resolve_all(&hb.instance_id);
                }
                _ => {
                    shared::info_limited!(STATE_LOG, node = %hb.instance_id, to = t.to.as_str(), address = %hb.address, "node state")
                }
            }
            if t.to == NodeState::Left {
                self.inner.alerts.lock().resolve_all(&hb.instance_id);
            }
            self.emit(&hb.instance_id, hb.node_type, t);
        }
        // After the state change, so a subscriber sees the transition first.
        if let Some((heartbeats, interval_ms)) = check.filter(|_| self.listened()) {
            let _ = self.inner.events.send(HealthEvent::HealthCheckResult {
                node_id: hb.instance_id,
                node_type: hb.node_type,
                status: beat.target,
                seq: hb.seq,
                heartbeats,
                interval_ms,
                metrics: Box::new(hb.metrics),
                at: rfc3339(beat.wall),
            });
        }
        Recorded { state: beat.target }
    }

    /// Moves every node whose silence passed a threshold, raising alerts, and forgets nodes
    /// DOWN or LEFT for longer than `forget_after`.
    ///
    /// Returns the earliest time at which a node can next change state by silence or be
    /// forgotten, at most `now + stale_after`: until then no sweep can find anything to do,
    /// since heartbeats, credited stalls and nodes joining only move that time later.
    pub fn sweep(&self, now: Instant) -> Instant {
        let config = self.inner.config;
        let mut changes = Vec::new();
        let mut forget = Vec::new();
        let mut nodes = 0u64;
        // Thresholds come from flags: a sum past the clock's range means "never", not a panic.
        let mut next = now
            .checked_add(config.stale_after)
            .unwrap_or_else(|| now + config.sweep_period());
        for entry in self.inner.nodes.iter() {
            nodes += 1;
            let mut record = entry.value().lock();
            if record
                .gone_since
                .is_some_and(|since| now.saturating_duration_since(since) >= config.forget_after)
            {
                forget.push(entry.key().as_str().to_owned());
                continue;
            }
            let silence = now.saturating_duration_since(record.last_heard);
            let target = match record.state {
                NodeState::Active | NodeState::Stale if silence >= config.down_after => {
                    Some(NodeState::Down)
                }
                NodeState::Active if silence >= config.stale_after => Some(NodeState::Stale),
                _ => None,
            };
            if let Some(target) = target {
                if record.failed_since.is_none() {
                    record.failed_since = Some(now);
                }
                let t = transition(&mut record, target, SystemTime::now(), now);
                self.live_changed();
                self.inner.stats.transition(t.from, t.to);
                changes.push((
                    entry.key().as_str().to_owned(),
                    record.node_type,
                    silence,
                    t,
                ));
            }
            let due = match (record.state, record.gone_since) {
                (_, Some(since)) => since.checked_add(config.forget_after),
                (NodeState::Active, None) => record.last_heard.checked_add(config.stale_after),
                (_, None) => record.last_heard.checked_add(config.down_after),
            };
            if let Some(due) = due {
                next = next.min(due);
            }
        }
        let spread = Duration::from_millis(1000 * nodes / HEALTH_CHECK_EVENTS_PER_SECOND);
        self.inner
            .check_every_ms
            .store(millis(spread.max(HEALTH_CHECK_EVENT_EVERY)), Relaxed);
        for node_id in forget {
            self.forget(&node_id, now);
        }
        for (node_id, node_type, silence, t) in changes {
            // Heartbeats are recorded on other threads while this scan runs: one that
            // brought the node back since has resolved its alerts already, and this change
            // is over. Raised and announced under the record's lock, so a heartbeat that
            // comes after is announced after.
            let Some(entry) = self.inner.nodes.get(node_id.as_bytes()) else {
                continue;
            };
            let record = entry.value().lock();
            if record.state != t.to {
                continue;
            }
            let (kind, severity) = match t.to {
                NodeState::Down => ("node_down", "critical"),
                _ => ("node_stale", "warning"),
            };
            shared::warn_limited!(MISSED_LOG, node = %node_id, to = t.to.as_str(), silence = ?silence, "node missed heartbeats");
            self.inner.alerts.lock().raise(
                &node_id,
                kind,
                severity,
                format!(
                    "{node_id} is {}: no heartbeat for {:?}",
                    t.to.as_str(),
                    Duration::from_millis(millis(silence))
                ),
            );
            self.emit(&node_id, node_type, t);
            drop(record);
        }
        next
    }

    /// Suspects `node_id` at once: its persistent heartbeat channel closed (DESIGN §9, §13).
    /// An ACTIVE node of the same run (`boot_id`) goes STALE now, with the same alert as a
    /// missed heartbeat; DOWN still waits for `down_after` of silence, so a node that opens a
    /// new channel (or posts) in time only flaps. A node of another run, or not ACTIVE, is
    /// left alone: a stale channel of a restarted node says nothing about the new run.
    /// Returns whether the node moved.
    pub fn suspect(&self, node_id: &str, boot_id: &str, now: Instant) -> bool {
        let Some(entry) = self.inner.nodes.get(node_id.as_bytes()) else {
            return false;
        };
        let mut record = entry.value().lock();
        if record.state != NodeState::Active || record.boot_id != *boot_id {
            return false;
        }
        record.failed_since.get_or_insert(now);
        let node_type = record.node_type;
        let t = transition(&mut record, NodeState::Stale, SystemTime::now(), now);
        self.live_changed();
        // Raised and announced under the record's lock: a heartbeat recorded on another
        // thread right after is announced (and resolves the alert) after this.
        shared::warn_limited!(CHANNEL_LOG, node = %node_id, to = t.to.as_str(), "node's heartbeat channel closed");
        self.inner.alerts.lock().raise(
            node_id,
            "node_stale",
            "warning",
            format!("{node_id} is STALE: its heartbeat channel closed"),
        );
        self.emit(node_id, node_type, t);
        true
    }

    /// Drops `node_id` if it is still DOWN or LEFT past `forget_after` (a heartbeat may have
    /// brought it back since the sweep looked).
    fn forget(&self, node_id: &str, now: Instant) {
        let forget_after = self.inner.config.forget_after;
        // Marked forgotten under the shard's write lock and its own, in one go with its
        // removal: a handle that still holds it sees that before it changes anything.
        let Some((_, slot)) = self.inner.nodes.remove_if(node_id.as_bytes(), |_, slot| {
            let mut record = slot.lock();
            record.forgotten = record
                .gone_since
                .is_some_and(|since| now.saturating_duration_since(since) >= forget_after);
            record.forgotten
        }) else {
            return;
        };
        self.live_changed();
        let record = slot.lock();
        shared::info_limited!(FORGOT_LOG, node = %node_id, state = record.state.as_str(), after = ?forget_after, "forgot node: gone longer than --forget-after");
        self.inner.alerts.lock().resolve_all(node_id);
        let _ = self.inner.events.send(HealthEvent::NodeForgotten {
            node_id: node_id.to_owned(),
            node_type: record.node_type,
            last_state: record.state,
            at: rfc3339(SystemTime::now()),
        });
    }

    /// Forgives `stall` of silence for every node: the coordinator itself was not running
    /// (paused, starved) for that long, so it could not have heard them.
    pub fn credit_stall(&self, stall: Duration, now: Instant) {
        for entry in self.inner.nodes.iter() {
            let mut record = entry.value().lock();
            record.last_heard = (record.last_heard + stall).min(now);
        }
    }

    /// Another thread that reads heartbeats (the heartbeat channels' own) woke `late` after
    /// it planned to: the heartbeats it had to read waited as long. The sweeper's next tick
    /// forgives the longest such stall, or its own if longer, once: a pause of the whole
    /// process that both saw is not forgiven twice.
    pub fn report_stall(&self, late: Duration) {
        if late > STALL_TOLERANCE {
            self.inner
                .stalled_elsewhere_ms
                .fetch_max(millis(late), Relaxed);
        }
    }

    /// The sweeper woke late after it planned to, or another thread reported a stall since:
    /// `elsewhere` since: the longer of the two, `late`, is counted and credited to every
    /// node ([`Self::credit_stall`]) if it is beyond scheduling noise.
    fn forgive_lateness(&self, late: Duration, now: Instant) {
        if late <= STALL_TOLERANCE {
            return;
        }
        self.inner.stats.stall(late);
        if late >= STALL_WARNING {
            shared::warn_limited!(STALL_LOG, stall = ?late, "heartbeats were read late (this node stalled); that silence is not counted against nodes");
        } else {
            tracing::debug!(stall = ?late, "heartbeats were read late (this node stalled); that silence is not counted against nodes");
        }
        self.credit_stall(late, now);
    }

    /// Runs the sweeper until `shutdown`. If a sweep wakes later than planned by more than
    /// scheduling noise, the lateness is first credited to every node (Lifeguard's idea:
    /// distrust your own timeliness before blaming others).
    pub fn spawn_sweeper(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.clone().sweeper(shutdown))
    }

    /// The sweeper of [`Self::spawn_sweeper`] as a future, to run on the runtime that reads
    /// the heartbeats: there, whatever keeps heartbeats waiting (a thread starved of CPU, a
    /// backlog of frames ahead of them) delays the sweep as much, and is credited as the
    /// sweeper's own stall instead of counted as the nodes' silence. A sweeper on another
    /// thread ran on time while frames queued for seconds on a loaded management thread,
    /// and declared STALE the nodes whose heartbeats sat unread.
    pub async fn sweeper(self, shutdown: CancellationToken) {
        let period = self.inner.config.sweep_period();
        let mut due = Instant::now() + period;
        // The nodes are scanned only from when one may have changed (`sweep` says when):
        // at 10 000 nodes beating every second, a scan every 250 ms was a tenth of the
        // heartbeat path's cost. The sweeper still wakes every period to catch its stalls.
        let mut scan_at = due;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(due) => {}
            }
            let now = Instant::now();
            let elsewhere = self.inner.stalled_elsewhere_ms.swap(0, Relaxed);
            let late = now
                .saturating_duration_since(due)
                .max(Duration::from_millis(elsewhere));
            self.forgive_lateness(late, now);
            if now >= scan_at {
                scan_at = self.sweep(now);
            }
            due = now + period;
        }
    }

    fn emit(&self, node_id: &str, node_type: NodeType, transition: Transition) {
        // No subscriber is fine: events are a live feed, the state is the record.
        let _ = self.inner.events.send(HealthEvent::ServiceStateChanged {
            node_id: node_id.to_owned(),
            node_type,
            transition,
        });
    }

    fn component(&self, node_id: &str, r: &NodeRecord, now: Instant) -> Component {
        Component {
            node_id: node_id.to_owned(),
            node_type: r.node_type,
            status: r.state,
            address: r.address,
            first_seen: rfc3339(r.first_seen),
            last_seen: rfc3339(r.last_seen),
            heartbeat_age_ms: millis(now.saturating_duration_since(r.last_heard)),
            uptime_seconds: now.saturating_duration_since(r.first_seen_at).as_secs(),
            heartbeats: r.heartbeats,
            seq: r.seq,
            flaps: r.flaps,
            last_transition: r.last_transition.clone(),
            metrics: r.metrics.clone(),
        }
    }

    fn self_component(&self, now: Instant) -> Option<Component> {
        let me = self.inner.me.as_ref()?;
        Some(Component {
            node_id: me.node_id.clone(),
            node_type: NodeType::Coordinator,
            status: NodeState::Active,
            address: me.address,
            first_seen: rfc3339(me.started),
            last_seen: rfc3339(SystemTime::now()),
            heartbeat_age_ms: 0,
            uptime_seconds: now.saturating_duration_since(me.started_at).as_secs(),
            heartbeats: 0,
            seq: 0,
            flaps: 0,
            last_transition: None,
            metrics: Metrics::new(),
        })
    }

    /// One node's component, if known.
    pub fn node(&self, node_id: &str) -> Option<Component> {
        let now = Instant::now();
        self.inner
            .nodes
            .get(node_id.as_bytes())
            .map(|entry| self.component(node_id, &entry.value().lock(), now))
    }

    /// `GET /health/status`.
    pub fn status(&self) -> HealthStatus {
        let now = Instant::now();
        let mut nodes: Vec<Component> = self
            .inner
            .nodes
            .iter()
            .map(|e| self.component(e.key().as_str(), &e.value().lock(), now))
            .collect();
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        let mut components: Vec<Component> = self.self_component(now).into_iter().collect();
        components.extend(nodes);
        HealthStatus::of(components)
    }

    /// The counts of [`Self::status`] without its components (`components` is empty): a
    /// summary needs no component per node, each with its timestamps and a copy of its
    /// metrics. The `/ws` snapshot built the whole status twice for its summary line.
    pub fn summary(&self) -> HealthStatus {
        let counts = self.counts();
        let me = usize::from(self.inner.me.is_some());
        let [active, stale, down, left] = counts.states;
        HealthStatus {
            overall_status: if stale + down == 0 {
                "HEALTHY"
            } else {
                "DEGRADED"
            },
            total_components: me + active + stale + down + left,
            active: me + active,
            stale,
            down,
            left,
            components: Vec::new(),
        }
    }

    /// A count that moves (after the change) whenever [`Self::live_backends`] of
    /// [`crate::wire::heartbeat::DEPLOYED_DIGEST_METRIC`] may answer otherwise: a node came or was forgotten,
    /// changed state, address or role, or its digest moved. Equal counts before two reads
    /// mean equal answers, so deploy polling skips its rounds while nothing moves: at 10 000
    /// nodes, listing and sorting them every 2 s was a tenth of what their heartbeats cost.
    pub fn live_changes(&self) -> u64 {
        self.inner.live_changes.load(Acquire)
    }

    fn live_changed(&self) {
        self.inner.live_changes.fetch_add(1, Release);
    }

    /// Backends ACTIVE or STALE, by node id, with their addresses and the metric `metric`
    /// of their last heartbeat: what deploy polling follows every interval, read without
    /// building a component per node (a full [`Self::status`] of 5 000 fake nodes every 2 s
    /// held the tracker's shards while the management thread waited to record heartbeats).
    pub fn live_backends(&self, metric: &str) -> Vec<(String, NodeAddress, Option<f64>)> {
        let mut live: Vec<(String, NodeAddress, Option<f64>)> = self
            .inner
            .nodes
            .iter()
            .filter_map(|e| {
                let r = e.value().lock();
                let live = r.node_type == NodeType::Backend
                    && matches!(r.state, NodeState::Active | NodeState::Stale);
                live.then(|| {
                    (
                        e.key().as_str().to_owned(),
                        r.address,
                        r.metrics.get(metric),
                    )
                })
            })
            .collect();
        live.sort_by(|a, b| a.0.cmp(&b.0));
        live
    }

    /// Nodes that are STALE or DOWN, by node id. Only those are built: a monitor polls this,
    /// and in a large healthy cluster it is short while the full status is not.
    pub fn stale(&self) -> Vec<Component> {
        let now = Instant::now();
        let mut stale: Vec<Component> = self
            .inner
            .nodes
            .iter()
            .filter_map(|e| {
                let r = e.value().lock();
                r.state
                    .is_failure()
                    .then(|| self.component(e.key().as_str(), &r, now))
            })
            .collect();
        stale.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        stale
    }

    /// Instance ids of the nodes ACTIVE now.
    pub fn active_nodes(&self) -> Vec<String> {
        self.inner
            .nodes
            .iter()
            .filter(|e| e.value().lock().state == NodeState::Active)
            .map(|e| e.key().as_str().to_owned())
            .collect()
    }

    /// `GET /alerts`.
    pub fn alerts(&self) -> AlertsView {
        self.inner.alerts.lock().view()
    }

    /// Raises an alert that is not about a node's heartbeats (e.g. a failed colony run).
    /// `subject` plays the node id's part: a later [`HealthTracker::resolve_alerts`] on it
    /// resolves the alert.
    pub fn raise_alert(
        &self,
        subject: &str,
        kind: &'static str,
        severity: &'static str,
        message: String,
    ) {
        self.inner
            .alerts
            .lock()
            .raise(subject, kind, severity, message);
    }

    /// Resolves every open alert about `subject`.
    pub fn resolve_alerts(&self, subject: &str) {
        self.inner.alerts.lock().resolve_all(subject);
    }

    /// The heartbeat inter-arrival histogram and state-transition counters.
    pub fn stats(&self) -> &HealthStats {
        &self.inner.stats
    }

    /// Seconds since each known node's last heartbeat, by node id (the coordinator itself is
    /// not listed: it sends none).
    pub fn heartbeat_ages(&self, now: Instant) -> Vec<(String, f64)> {
        let mut ages: Vec<(String, f64)> = self
            .inner
            .nodes
            .iter()
            .map(|e| {
                let age = now.saturating_duration_since(e.value().lock().last_heard);
                (e.key().as_str().to_owned(), age.as_secs_f64())
            })
            .collect();
        ages.sort_by(|a, b| a.0.cmp(&b.0));
        ages
    }

    /// Counts for metrics.
    pub fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for e in self.inner.nodes.iter() {
            let r = e.value().lock();
            counts.add(r.state, r.flaps);
        }
        counts.open_alerts = self.inner.alerts.lock().open_count();
        counts
    }
}

/// The metrics to keep in the node's record: moved out of the heartbeat, or copied when the
/// heartbeat's event needs them too.
fn take_metrics(metrics: &mut Metrics, for_event: bool) -> Metrics {
    if for_event {
        metrics.clone()
    } else {
        std::mem::take(metrics)
    }
}

fn transition(
    record: &mut NodeRecord,
    to: NodeState,
    wall: SystemTime,
    now: Instant,
) -> Transition {
    let t = Transition {
        from: Some(record.state),
        to,
        at: rfc3339(wall),
    };
    match to {
        NodeState::Down | NodeState::Left => {
            record.gone_since.get_or_insert(now);
        }
        NodeState::Active | NodeState::Stale => record.gone_since = None,
    }
    record.state = to;
    record.last_transition = Some(t.clone());
    t
}

#[cfg(test)]
mod tests {
    use super::super::record::INLINE_KEY;
    use super::*;
    use crate::wire::heartbeat::MAX_BOOT_ID;

    fn hb(id: &str, seq: u64) -> Heartbeat {
        Heartbeat {
            instance_id: id.into(),
            node_type: NodeType::Backend,
            address: NodeAddress::new([127, 0, 0, 1].into(), 9000, 9001, 9002),
            boot_id: "boot-1".into(),
            seq,
            metrics: Metrics::new(),
            leaving: false,
        }
    }

    fn config() -> HealthConfig {
        HealthConfig {
            stale_after: Duration::from_millis(300),
            down_after: Duration::from_secs(1),
            flap_window: Duration::from_secs(60),
            forget_after: Duration::from_secs(3600),
        }
    }

    fn state(t: &HealthTracker, id: &str) -> NodeState {
        t.node(id).unwrap().status
    }

    #[tokio::test(start_paused = true)]
    async fn stats_count_every_transition_and_each_gap_once() {
        let t = HealthTracker::new(config(), None);
        let start = Instant::now();
        t.record(hb("b1", 1), start).unwrap();
        t.record(hb("b1", 2), start + Duration::from_millis(100))
            .unwrap();
        t.record(hb("b2", 1), start + Duration::from_millis(100))
            .unwrap();
        t.sweep(start + Duration::from_millis(450));
        t.record(hb("b1", 3), start + Duration::from_millis(500))
            .unwrap();
        assert_eq!(
            t.stats().transitions(),
            vec![
                ("NONE", "ACTIVE", 2),
                ("ACTIVE", "STALE", 2),
                ("STALE", "ACTIVE", 1)
            ]
        );
        // Gaps of b1 only (100 ms, 400 ms): a first heartbeat has none.
        let gaps = t.stats().interarrival();
        assert_eq!(gaps.count, 2);
        assert!((gaps.sum_seconds - 0.5).abs() < 1e-9, "{gaps:?}");
        let ages = t.heartbeat_ages(start + Duration::from_millis(600));
        assert_eq!(ages.len(), 2);
        assert_eq!(ages[0].0, "b1");
        assert!((ages[0].1 - 0.1).abs() < 1e-9, "{ages:?}");
        assert!((ages[1].1 - 0.5).abs() < 1e-9, "{ages:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_sweep_says_when_the_next_one_can_find_anything() {
        // stale 300 ms, down 1 s, forget 1 h.
        let t = HealthTracker::new(config(), None);
        let start = Instant::now();
        let ms = |n| start + Duration::from_millis(n);
        // Nobody: at most stale_after ahead, for a node that joins now.
        assert_eq!(t.sweep(start), ms(300));
        t.record(hb("b1", 1), start).unwrap();
        t.record(hb("b2", 1), ms(100)).unwrap();
        // b1 goes STALE first.
        assert_eq!(t.sweep(ms(200)), ms(300));
        // b1 STALE now: its DOWN at 1 s, b2's STALE at 400 ms.
        assert_eq!(t.sweep(ms(300)), ms(400));
        // Both STALE, DOWN at 1 s and 1.1 s; a node joining now could be STALE at 700 ms.
        assert_eq!(t.sweep(ms(400)), ms(700));
        assert_eq!(state(&t, "b2"), NodeState::Stale);
        // Both DOWN: forgotten an hour later, but no later than stale_after ahead.
        assert_eq!(t.sweep(ms(1100)), ms(1400));
        assert_eq!(state(&t, "b2"), NodeState::Down);
        // A heartbeat moves the time on: b2 ACTIVE again, STALE at 2 300 ms.
        t.record(hb("b2", 2), ms(2000)).unwrap();
        assert_eq!(t.sweep(ms(2100)), ms(2300));
    }

    #[tokio::test(start_paused = true)]
    async fn silence_walks_active_stale_down_and_a_heartbeat_recovers() {
        let t = HealthTracker::new(config(), None);
        let mut events = t.subscribe();
        let start = Instant::now();
        t.record(hb("b1", 1), start).unwrap();
        assert_eq!(state(&t, "b1"), NodeState::Active);
        t.sweep(start + Duration::from_millis(299));
        assert_eq!(state(&t, "b1"), NodeState::Active);
        t.sweep(start + Duration::from_millis(300));
        assert_eq!(state(&t, "b1"), NodeState::Stale);
        assert_eq!(t.alerts().open.len(), 1);
        t.sweep(start + Duration::from_secs(1));
        assert_eq!(state(&t, "b1"), NodeState::Down);
        assert_eq!(t.alerts().open.len(), 2);
        assert_eq!(t.status().overall_status, "DEGRADED");

        t.record(hb("b1", 2), start + Duration::from_secs(2))
            .unwrap();
        assert_eq!(state(&t, "b1"), NodeState::Active);
        let alerts = t.alerts();
        assert!(alerts.open.is_empty());
        assert_eq!(alerts.resolved.len(), 2);
        assert!(alerts.resolved.iter().all(|a| a.resolved_at.is_some()));
        assert_eq!(t.node("b1").unwrap().flaps, 1);
        assert_eq!(t.status().overall_status, "HEALTHY");

        let mut seen = Vec::new();
        while let Ok(e) = events.try_recv() {
            if let HealthEvent::ServiceStateChanged { transition, .. } = e {
                seen.push(transition.to);
            }
        }
        assert_eq!(
            seen,
            [
                NodeState::Active,
                NodeState::Stale,
                NodeState::Down,
                NodeState::Active
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_channel_is_stale_at_once_and_down_still_waits_for_the_threshold() {
        let t = HealthTracker::new(config(), None);
        let start = Instant::now();
        t.record(hb("b1", 1), start).unwrap();
        // Another run's channel, or an unknown node, says nothing.
        assert!(!t.suspect("b1", "boot-0", start));
        assert!(!t.suspect("nobody", "boot-1", start));
        assert_eq!(state(&t, "b1"), NodeState::Active);
        assert!(t.suspect("b1", "boot-1", start + Duration::from_millis(10)));
        assert_eq!(state(&t, "b1"), NodeState::Stale);
        let open = t.alerts().open;
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].kind, "node_stale");
        // Already suspected: nothing more.
        assert!(!t.suspect("b1", "boot-1", start + Duration::from_millis(20)));
        t.sweep(start + Duration::from_millis(999));
        assert_eq!(state(&t, "b1"), NodeState::Stale);
        t.sweep(start + Duration::from_secs(1));
        assert_eq!(state(&t, "b1"), NodeState::Down);
        // A goodbye is not suspected.
        let mut bye = hb("b2", 1);
        bye.leaving = true;
        t.record(bye, start).unwrap();
        assert!(!t.suspect("b2", "boot-1", start));
        assert_eq!(state(&t, "b2"), NodeState::Left);
    }

    #[tokio::test(start_paused = true)]
    async fn health_check_results_are_rate_limited_per_node() {
        let t = HealthTracker::new(config(), None);
        let mut events = t.subscribe();
        let start = Instant::now();
        // b1 every 100 ms for 2.5 s, b2 once: b1 gets one event a second, b2 one.
        for i in 0..25u64 {
            t.record(hb("b1", i + 1), start + Duration::from_millis(100 * i))
                .unwrap();
        }
        t.record(hb("b2", 1), start).unwrap();
        let mut checks = Vec::new();
        while let Ok(e) = events.try_recv() {
            if let HealthEvent::HealthCheckResult {
                node_id,
                seq,
                interval_ms,
                ..
            } = e
            {
                checks.push((node_id, seq, interval_ms));
            }
        }
        assert_eq!(
            checks,
            [
                ("b1".to_owned(), 1, None),
                ("b1".to_owned(), 11, Some(100)),
                ("b1".to_owned(), 21, Some(100)),
                ("b2".to_owned(), 1, None),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn health_check_results_are_spread_out_in_a_large_cluster() {
        let t = HealthTracker::new(
            HealthConfig {
                stale_after: Duration::from_secs(30),
                down_after: Duration::from_secs(60),
                ..config()
            },
            None,
        );
        let start = Instant::now();
        // Twice the cluster-wide budget: each node's health check every 2 s, not every 1 s.
        let nodes = 2 * HEALTH_CHECK_EVENTS_PER_SECOND;
        for n in 0..nodes {
            t.record(hb(&format!("n{n}"), 1), start).unwrap();
        }
        t.sweep(start);
        let mut events = t.subscribe();
        for i in 1..=50u64 {
            t.record(hb("n0", i + 1), start + Duration::from_millis(100 * i))
                .unwrap();
        }
        let mut checks = Vec::new();
        while let Ok(e) = events.try_recv() {
            if let HealthEvent::HealthCheckResult { seq, .. } = e {
                checks.push(seq);
            }
        }
        // At 2 s and 4 s after the first (seq 1 at 0 s); every heartbeat still counted.
        assert_eq!(checks, [21, 41]);
        assert_eq!(t.node("n0").unwrap().heartbeats, 51);
    }

    #[tokio::test(start_paused = true)]
    async fn goodbye_is_left_without_an_alert() {
        let t = HealthTracker::new(config(), None);
        let now = Instant::now();
        t.record(hb("b1", 1), now).unwrap();
        let mut bye = hb("b1", 2);
        bye.leaving = true;
        assert_eq!(t.record(bye, now).unwrap().state, NodeState::Left);
        t.sweep(now + Duration::from_secs(30));
        assert_eq!(state(&t, "b1"), NodeState::Left);
        assert!(t.alerts().open.is_empty());
        assert!(t.alerts().resolved.is_empty());
        assert_eq!(t.status().overall_status, "HEALTHY");
    }

    #[tokio::test(start_paused = true)]
    async fn live_changes_move_with_what_live_backends_answers_and_only_then() {
        use crate::wire::heartbeat::DEPLOYED_DIGEST_METRIC;
        let t = HealthTracker::new(config(), None);
        let start = Instant::now();
        let with_digest = |seq: u64, digest: f64| {
            let mut beat = hb("b1", seq);
            beat.metrics = Metrics::from([
                ("connections", seq as f64),
                (DEPLOYED_DIGEST_METRIC, digest),
            ]);
            beat
        };
        let mut last = t.live_changes();
        let mut moved = |t: &HealthTracker| {
            let now = t.live_changes();
            std::mem::replace(&mut last, now) != now
        };
        t.record(with_digest(1, 5.0), start).unwrap();
        assert!(moved(&t), "a new node");
        t.record(with_digest(2, 5.0), start).unwrap();
        assert!(!moved(&t), "the same digest, another gauge: no change");
        t.record(with_digest(3, 6.0), start).unwrap();
        assert!(moved(&t), "another digest");
        let mut elsewhere = with_digest(4, 6.0);
        elsewhere.address = NodeAddress::new([10, 0, 0, 2].into(), 9000, 9001, 9002);
        t.record(elsewhere.clone(), start).unwrap();
        assert!(moved(&t), "another address");
        assert!(t.suspect("b1", "boot-1", start));
        assert!(moved(&t), "STALE by suspicion");
        elsewhere.seq = 5;
        t.record(elsewhere, start).unwrap();
        assert!(moved(&t), "ACTIVE again");
        t.sweep(start + Duration::from_millis(1_000));
        assert!(moved(&t), "DOWN by silence");
        t.sweep(start + Duration::from_millis(1_000));
        assert!(!moved(&t), "a sweep that changes nothing");
        assert_eq!(t.live_backends(DEPLOYED_DIGEST_METRIC), []);
    }

    #[tokio::test(start_paused = true)]
    async fn the_summary_and_live_backends_agree_with_the_full_status() {
        let me = NodeAddress::new("127.0.0.1".parse().unwrap(), 1, 2, 3);
        let t = HealthTracker::new(config(), Some(("coordinator".into(), me)));
        let start = Instant::now();
        for (id, seq) in [("b1", 1), ("b2", 1), ("b3", 1)] {
            t.record(hb(id, seq), start).unwrap();
        }
        t.sweep(start + Duration::from_millis(300));
        t.record(hb("b2", 2), start + Duration::from_millis(300))
            .unwrap();
        let mut leaving = hb("b3", 2);
        leaving.leaving = true;
        t.record(leaving, start + Duration::from_millis(300))
            .unwrap();
        let (full, summary) = (t.status(), t.summary());
        assert!(summary.components.is_empty());
        assert_eq!(
            (summary.overall_status, summary.total_components),
            (full.overall_status, full.total_components)
        );
        assert_eq!(
            (summary.active, summary.stale, summary.down, summary.left),
            (full.active, full.stale, full.down, full.left)
        );
        assert_eq!((summary.active, summary.stale, summary.left), (2, 1, 1));
        let live: Vec<String> = t
            .live_backends("x")
            .into_iter()
            .map(|(id, ..)| id)
            .collect();
        assert_eq!(
            live,
            ["b1", "b2"],
            "STALE and ACTIVE backends, not LEFT ones"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_recovery_is_not_a_flap() {
        let t = HealthTracker::new(
            HealthConfig {
                flap_window: Duration::from_secs(5),
                ..config()
            },
            None,
        );
        let start = Instant::now();
        t.record(hb("b1", 1), start).unwrap();
        t.sweep(start + Duration::from_secs(2));
        t.record(hb("b1", 2), start + Duration::from_secs(20))
            .unwrap();
        assert_eq!(t.node("b1").unwrap().flaps, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweeper_forgives_its_own_stall() {
        let t = HealthTracker::new(config(), None);
        let start = Instant::now();
        t.record(hb("b1", 1), start).unwrap();
        // The coordinator was frozen for 5 s right after the heartbeat.
        t.credit_stall(Duration::from_secs(5), start + Duration::from_secs(5));
        t.sweep(start + Duration::from_secs(5));
        assert_eq!(state(&t, "b1"), NodeState::Active);
        // Silence after the stall still counts.
        t.sweep(start + Duration::from_millis(5300));
        assert_eq!(state(&t, "b1"), NodeState::Stale);
    }

    #[tokio::test(start_paused = true)]
    async fn the_running_sweeper_detects_silence() {
        let t = HealthTracker::new(config(), Some(("coordinator".into(), hb("x", 0).address)));
        let token = CancellationToken::new();
        let task = t.spawn_sweeper(token.clone());
        t.record(hb("b1", 1), Instant::now()).unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(state(&t, "b1"), NodeState::Stale);
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(state(&t, "b1"), NodeState::Down);
        let status = t.status();
        assert_eq!(status.components[0].node_type, NodeType::Coordinator);
        assert_eq!(
            (status.total_components, status.active, status.down),
            (2, 1, 1)
        );
        token.cancel();
        task.await.unwrap();
    }

    fn booted(id: &str, boot: &str, seq: u64) -> Heartbeat {
        Heartbeat {
            boot_id: boot.into(),
            ..hb(id, seq)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn replays_are_refused_and_change_nothing() {
        let t = HealthTracker::new(config(), None);
        let mut events = t.subscribe();
        let now = Instant::now();
        t.record(hb("b1", 5), now).unwrap();
        let before = t.node("b1").unwrap();
        while events.try_recv().is_ok() {}
        let later = now + Duration::from_millis(200);
        for seq in [5, 4, 1, 0] {
            let mut replay = hb("b1", seq);
            replay.address = NodeAddress::new([10, 0, 0, 9].into(), 1, 2, 3);
            replay.leaving = true;
            let e = t.record(replay, later).unwrap_err();
            assert!(
                matches!(e, HeartbeatError::Replayed { seq: s, last: 5, .. } if s == seq),
                "{e:?}"
            );
        }
        let after = t.node("b1").unwrap();
        assert_eq!(after.status, NodeState::Active);
        assert_eq!(after.address, before.address);
        assert_eq!((after.heartbeats, after.seq), (1, 5));
        assert!(events.try_recv().is_err(), "a replay produced an event");
        // The next heartbeat of the same run is fine.
        assert!(t.record(hb("b1", 6), later).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_boot_is_a_restart_and_old_boots_stay_retired() {
        let t = HealthTracker::new(config(), None);
        let start = Instant::now();
        t.record(booted("b1", "first", 40), start).unwrap();
        t.record(booted("b1", "first", 41), start).unwrap();
        let restart = start + Duration::from_secs(20);
        let recorded = t.record(booted("b1", "second", 1), restart).unwrap();
        assert_eq!(recorded.state, NodeState::Active);
        let node = t.node("b1").unwrap();
        assert_eq!((node.seq, node.heartbeats), (1, 3));
        // Uptime counts from the restart.
        tokio::time::advance(Duration::from_secs(25)).await;
        assert_eq!(t.node("b1").unwrap().uptime_seconds, 5);
        // A heartbeat of the earlier run, even with a higher seq, is a replay.
        let e = t.record(booted("b1", "first", 99), restart).unwrap_err();
        assert!(matches!(e, HeartbeatError::RetiredBoot { .. }), "{e:?}");
        assert_eq!(t.node("b1").unwrap().seq, 1);
        t.record(booted("b1", "second", 2), restart).unwrap();
        // Retired boots are bounded: after enough restarts the oldest is forgotten.
        for (i, boot) in ["third", "fourth", "fifth", "sixth"].iter().enumerate() {
            t.record(
                booted("b1", boot, 1),
                restart + Duration::from_secs(i as u64),
            )
            .unwrap();
        }
        assert!(matches!(
            t.record(booted("b1", "second", 3), restart),
            Err(HeartbeatError::RetiredBoot { .. })
        ));
        let inner = t.inner.nodes.get(b"b1".as_slice()).unwrap();
        let inner = inner.value().lock();
        assert_eq!(inner.retired_boots.len(), RETIRED_BOOTS);
        assert!(!inner.retired_boots.iter().any(|b| *b == *"first"));
    }

    #[tokio::test(start_paused = true)]
    async fn ids_of_any_valid_length_are_kept_and_read_back_whole() {
        let t = HealthTracker::new(config(), None);
        let now = Instant::now();
        // Past the key's inline bytes, and a boot id of the most bytes a heartbeat may carry.
        let long_id = "n".repeat(INLINE_KEY + 40);
        let long_boot = "b".repeat(MAX_BOOT_ID);
        for id in ["b1", long_id.as_str()] {
            t.record(booted(id, &long_boot, 1), now).unwrap();
            let e = t.record(booted(id, &long_boot, 1), now).unwrap_err();
            assert!(matches!(e, HeartbeatError::Replayed { .. }), "{e:?}");
            assert_eq!(t.node(id).unwrap().node_id, id);
            assert!(t.suspect(id, &long_boot, now));
        }
        assert_eq!(t.active_nodes().len(), 0);
        assert_eq!(t.status().components.len(), 2);
        // A longer boot id than validation lets through is refused, not cut short.
        let e = t
            .record(booted("b1", &"b".repeat(MAX_BOOT_ID + 1), 2), now)
            .unwrap_err();
        assert!(matches!(e, HeartbeatError::BootId), "{e:?}");
        assert_eq!(t.node("b1").unwrap().seq, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn nodes_gone_longer_than_forget_after_are_forgotten() {
        let t = HealthTracker::new(
            HealthConfig {
                forget_after: Duration::from_secs(5),
                ..config()
            },
            None,
        );
        let mut events = t.subscribe();
        let start = Instant::now();
        t.record(hb("dead", 1), start).unwrap();
        t.record(hb("back", 1), start).unwrap();
        t.record(hb("left", 1), start).unwrap();
        let mut bye = hb("left", 2);
        bye.leaving = true;
        t.record(bye, start).unwrap();
        // dead and back go DOWN at 1 s; left left at 0 s.
        t.sweep(start + Duration::from_secs(1));
        assert_eq!(state(&t, "dead"), NodeState::Down);
        t.sweep(start + Duration::from_millis(4999));
        assert!(t.node("left").is_some());
        t.sweep(start + Duration::from_secs(5));
        assert!(t.node("left").is_none(), "LEFT for 5 s");
        assert!(t.node("dead").is_some(), "DOWN for only 4 s");
        t.record(hb("back", 2), start + Duration::from_secs(5))
            .unwrap();
        t.sweep(start + Duration::from_secs(6));
        assert!(t.node("dead").is_none(), "DOWN for 5 s");
        t.sweep(start + Duration::from_secs(10));
        // "back" came back in time, and has been DOWN again only since 6 s.
        assert_eq!(state(&t, "back"), NodeState::Down);
        assert_eq!(t.status().total_components, 1);
        assert!(
            t.alerts().open.iter().all(|a| a.node_id != "dead"),
            "alerts of a forgotten node stay open"
        );
        let mut forgotten = Vec::new();
        while let Ok(e) = events.try_recv() {
            if let HealthEvent::NodeForgotten {
                node_id,
                last_state,
                ..
            } = e
            {
                forgotten.push((node_id, last_state));
            }
        }
        assert_eq!(
            forgotten,
            [
                ("left".to_owned(), NodeState::Left),
                ("dead".to_owned(), NodeState::Down)
            ]
        );
        // A forgotten node that heartbeats again is simply new.
        t.record(hb("dead", 1), start + Duration::from_secs(61))
            .unwrap();
        assert_eq!(t.node("dead").unwrap().heartbeats, 1);
    }

    /// The record in the map for `id`, to tell records apart.
    fn slot_of(t: &HealthTracker, id: &str) -> Slot {
        Arc::clone(t.inner.nodes.get(id.as_bytes()).unwrap().value())
    }

    #[tokio::test(start_paused = true)]
    async fn a_handle_records_its_node_and_refuses_what_the_map_refuses() {
        let t = HealthTracker::new(config(), None);
        let now = Instant::now();
        let (recorded, mut handle) = t.record_and_hold(hb("b1", 1), now).unwrap();
        assert_eq!(recorded.state, NodeState::Active);
        assert_eq!(handle.node_id(), "b1");
        assert!(handle.is_for("b1") && !handle.is_for("b") && !handle.is_for("b10"));
        assert!(Arc::ptr_eq(&handle.slot, &slot_of(&t, "b1")));
        t.record_through(&mut handle, hb("b1", 2), now).unwrap();
        // A replay through the handle, as by the map: refused, nothing changed.
        let mut replay = hb("b1", 2);
        replay.leaving = true;
        let e = t.record_through(&mut handle, replay, now).unwrap_err();
        assert!(
            matches!(e, HeartbeatError::Replayed { seq: 2, last: 2, ref node } if node == "b1"),
            "{e:?}"
        );
        let e = t
            .record_through(
                &mut handle,
                booted("b1", &"b".repeat(MAX_BOOT_ID + 1), 3),
                now,
            )
            .unwrap_err();
        assert!(matches!(e, HeartbeatError::BootId), "{e:?}");
        let node = t.node("b1").unwrap();
        assert_eq!(
            (node.status, node.heartbeats, node.seq),
            (NodeState::Active, 2, 2)
        );
        // Suspected, then back through the handle: a flap, as by the map.
        assert!(t.suspect("b1", "boot-1", now));
        let recorded = t.record_through(&mut handle, hb("b1", 3), now).unwrap();
        assert_eq!(recorded.state, NodeState::Active);
        assert_eq!(t.node("b1").unwrap().flaps, 1);
        // A goodbye through it is LEFT, and the next heartbeat is a new run.
        let mut bye = hb("b1", 4);
        bye.leaving = true;
        assert_eq!(
            t.record_through(&mut handle, bye, now).unwrap().state,
            NodeState::Left
        );
        t.record_through(&mut handle, hb("b1", 5), now + Duration::from_secs(3))
            .unwrap();
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(t.node("b1").unwrap().uptime_seconds, 1);
        assert!(Arc::ptr_eq(&handle.slot, &slot_of(&t, "b1")));
    }

    #[tokio::test(start_paused = true)]
    async fn a_handle_follows_its_node_through_a_restart() {
        let t = HealthTracker::new(config(), None);
        let start = Instant::now();
        let (_, mut handle) = t.record_and_hold(booted("b1", "first", 40), start).unwrap();
        let restart = start + Duration::from_secs(20);
        t.record_through(&mut handle, booted("b1", "second", 1), restart)
            .unwrap();
        let node = t.node("b1").unwrap();
        assert_eq!((node.seq, node.heartbeats), (1, 2));
        let e = t
            .record_through(&mut handle, booted("b1", "first", 99), restart)
            .unwrap_err();
        assert!(matches!(e, HeartbeatError::RetiredBoot { .. }), "{e:?}");
        let e = t
            .record_through(&mut handle, booted("b1", "second", 1), restart)
            .unwrap_err();
        assert!(matches!(e, HeartbeatError::Replayed { .. }), "{e:?}");
        t.record_through(&mut handle, booted("b1", "second", 2), restart)
            .unwrap();
        assert_eq!(t.node("b1").unwrap().seq, 2);
        // The channel of the first run says nothing about the second.
        assert!(!t.suspect("b1", "first", restart));
        assert!(Arc::ptr_eq(&handle.slot, &slot_of(&t, "b1")));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_handle_never_changes_a_forgotten_record() {
        let t = HealthTracker::new(
            HealthConfig {
                forget_after: Duration::from_secs(5),
                ..config()
            },
            None,
        );
        let start = Instant::now();
        let (_, mut handle) = t.record_and_hold(hb("b1", 1), start).unwrap();
        let (_, mut other) = t.record_and_hold(hb("b2", 1), start).unwrap();
        // DOWN at 1 s, forgotten at 6 s.
        t.sweep(start + Duration::from_secs(1));
        t.sweep(start + Duration::from_secs(6));
        assert!(t.node("b1").is_none());
        let old = Arc::clone(&handle.slot);
        assert!(old.lock().forgotten);
        // Rejoined (by a POST, say) with a new run: a new record.
        let rejoin = start + Duration::from_secs(7);
        t.record(booted("b1", "boot-2", 1), rejoin).unwrap();
        // The stale handle is not used: the heartbeat goes to the new record, found in
        // the map, and the handle holds that from now on.
        t.record_through(&mut handle, booted("b1", "boot-2", 2), rejoin)
            .unwrap();
        assert!(Arc::ptr_eq(&handle.slot, &slot_of(&t, "b1")));
        assert!(!Arc::ptr_eq(&handle.slot, &old));
        let node = t.node("b1").unwrap();
        assert_eq!(
            (node.status, node.heartbeats, node.seq),
            (NodeState::Active, 2, 2)
        );
        let old = old.lock();
        assert_eq!(
            (old.state, old.heartbeats, old.seq),
            (NodeState::Down, 1, 1)
        );
        drop(old);
        // Forgotten and not back: the stale handle's heartbeat adds the node anew, as a
        // first heartbeat, and the handle holds the new record.
        let first = t.record_through(&mut other, hb("b2", 2), rejoin).unwrap();
        assert_eq!(first.state, NodeState::Active);
        assert_eq!(t.node("b2").unwrap().heartbeats, 1);
        assert!(Arc::ptr_eq(&other.slot, &slot_of(&t, "b2")));
        // A refusal after falling back still renews the handle, and changes nothing.
        let (_, mut third) = t.record_and_hold(hb("b3", 5), rejoin).unwrap();
        t.sweep(rejoin + Duration::from_secs(1));
        t.sweep(rejoin + Duration::from_secs(6));
        t.record(hb("b3", 9), rejoin + Duration::from_secs(7))
            .unwrap();
        let e = t
            .record_through(&mut third, hb("b3", 9), rejoin + Duration::from_secs(7))
            .unwrap_err();
        assert!(
            matches!(e, HeartbeatError::Replayed { last: 9, .. }),
            "{e:?}"
        );
        assert!(Arc::ptr_eq(&third.slot, &slot_of(&t, "b3")));
    }

    #[tokio::test(start_paused = true)]
    async fn another_nodes_heartbeat_through_a_handle_is_recorded_by_the_map() {
        let t = HealthTracker::new(config(), None);
        let now = Instant::now();
        let (_, mut handle) = t.record_and_hold(hb("b1", 1), now).unwrap();
        t.record_through(&mut handle, hb("b2", 1), now).unwrap();
        assert_eq!(t.node("b2").unwrap().heartbeats, 1);
        assert_eq!(t.node("b1").unwrap().heartbeats, 1);
        assert_eq!(handle.node_id(), "b1");
        assert!(Arc::ptr_eq(&handle.slot, &slot_of(&t, "b1")));
    }

    #[test]
    fn racing_first_heartbeats_add_a_node_once() {
        let t = HealthTracker::new(config(), None);
        for n in 0..200 {
            let id = format!("n{n}");
            let barrier = std::sync::Barrier::new(2);
            let results: Vec<_> = std::thread::scope(|s| {
                let racers: Vec<_> = (0..2)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            t.record(hb(&id, 1), Instant::now())
                        })
                    })
                    .collect();
                racers.into_iter().map(|r| r.join().unwrap()).collect()
            });
            let accepted = results.iter().filter(|r| r.is_ok()).count();
            assert_eq!(accepted, 1, "{id}: {results:?}");
            assert_eq!(t.node(&id).unwrap().heartbeats, 1);
        }
    }
}
