//! [`Hub`]: the one event stream every `/ws` connection reads.
//!
//! A single pump task turns health events, managed-process events and colony progress into
//! wire events, numbers them (`seq`, increasing from 1 for the life of the hub), keeps the
//! last [`WsLimits::history`] of them for `?since=N` replays, and broadcasts each one once,
//! already serialized, to every connection. A connection that falls more than
//! [`WsLimits::client_queue`] events behind is dropped (the broadcast ring is the bounded
//! per-client queue): it cannot stall the pump or the other clients.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use axum::extract::ws::Utf8Bytes;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::{broadcast, Semaphore};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, warn};

use super::protocol::{event_text, EventKind};
use super::services;
use crate::coordinator::health::events::HealthEvent;
use crate::coordinator::processes::{ProcessEvent, ProcessInfo};
use crate::deploy::lifecycle::DeployEvent;
use crate::state::MgmtState;
use crate::time::rfc3339;

/// Limits of the `/ws` endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsLimits {
    /// Connections served at once; more are refused with 503 before the upgrade.
    pub max_connections: usize,
    /// Largest request answered; a larger one gets a `message_too_large` error response.
    pub max_message: usize,
    /// Largest message read at all; a larger one closes the socket with 1009.
    pub max_frame: usize,
    /// Events a client may fall behind before it is dropped as too slow.
    pub client_queue: usize,
    /// Events kept for `?since=N` replays.
    pub history: usize,
    /// Longest one write may take before the client is dropped.
    pub write_timeout: Duration,
    /// How often the server pings an idle client.
    pub ping_every: Duration,
    /// A client silent (not even a pong) this long is dropped.
    pub idle_timeout: Duration,
    /// How often colony progress is polled (events go out only when the tick or state moved).
    pub colony_poll: Duration,
}

impl Default for WsLimits {
    fn default() -> Self {
        WsLimits {
            max_connections: 256,
            max_message: 64 * 1024,
            max_frame: 256 * 1024,
            client_queue: 512,
            history: 4096,
            write_timeout: Duration::from_secs(10),
            ping_every: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            colony_poll: Duration::from_millis(250),
        }
    }
}

/// One numbered event, serialized once for every client.
#[derive(Debug)]
pub struct Published {
    /// Its sequence number.
    pub seq: u64,
    /// Its kind, for subscription filters.
    pub kind: EventKind,
    /// The whole message text.
    pub text: Utf8Bytes,
}

#[derive(Debug, Default)]
struct Log {
    /// The last sequence number handed out.
    seq: u64,
    /// The newest events, oldest first.
    recent: VecDeque<Arc<Published>>,
}

/// Where a new connection starts.
#[derive(Debug)]
pub struct Attached {
    /// A `registry_loaded` to send first, unless the client resumes.
    pub loaded: Option<Utf8Bytes>,
    /// The events a resuming client missed, oldest first.
    pub replay: Vec<Arc<Published>>,
    /// The sequence number of the last event `loaded` or `replay` covers.
    pub after: u64,
    /// Events after `after`.
    pub events: broadcast::Receiver<Arc<Published>>,
}

/// What a reconnecting client says it has seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// The last sequence number it received.
    pub since: u64,
    /// The stream id it received it on (from `registry_loaded`); `None` trusts `since`.
    pub stream: Option<String>,
}

pub(crate) struct Core {
    pub(crate) state: MgmtState,
    pub(crate) limits: WsLimits,
    /// Identifies this hub's numbering, so a client of a restarted coordinator starts over.
    pub(crate) stream: String,
    log: Mutex<Log>,
    sender: broadcast::Sender<Arc<Published>>,
    pub(crate) connections: Arc<Semaphore>,
    /// Cancelled when the router holding the hub is dropped (the listener stopped).
    pub(crate) shutdown: CancellationToken,
    pump: OnceLock<()>,
    /// The last `registry_loaded` built, shared by the connections that attach while it is
    /// current: a reconnect loop costs one snapshot per event or per [`LOADED_MAX_AGE`], not
    /// one per connection. Async, so that connections arriving together wait for one build.
    loaded: tokio::sync::Mutex<Option<Loaded>>,
}

/// How long a built `registry_loaded` is handed out while no event has been published (it
/// also shows values that change without an event, such as heartbeat times).
const LOADED_MAX_AGE: Duration = Duration::from_secs(1);

/// A `registry_loaded` as sent, and what it is current for.
#[derive(Debug)]
struct Loaded {
    seq: u64,
    reason: &'static str,
    built: tokio::time::Instant,
    text: Utf8Bytes,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("stream", &self.stream)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// The `/ws` event hub of one coordinator. Cheap to clone.
///
/// Connections hold only the shared core; the hub values themselves live in the router, so
/// when the listener stops and drops its router, the hub's guard cancels every connection
/// and the pump (upgraded sockets outlive axum's graceful shutdown otherwise).
#[derive(Debug, Clone)]
pub struct Hub {
    pub(crate) core: Arc<Core>,
    _alive: Arc<DropGuard>,
}

impl Hub {
    /// A hub over the coordinator's state. Nothing runs until the first connection.
    pub fn new(state: MgmtState, limits: WsLimits) -> Self {
        let (sender, _) = broadcast::channel(limits.client_queue.max(1));
        let shutdown = CancellationToken::new();
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Hub {
            core: Arc::new(Core {
                state,
                limits,
                stream: format!("{:x}-{:x}", std::process::id(), nanos),
                log: Mutex::new(Log::default()),
                sender,
                connections: Arc::new(Semaphore::new(limits.max_connections)),
                shutdown: shutdown.clone(),
                pump: OnceLock::new(),
                loaded: tokio::sync::Mutex::new(None),
            }),
            _alive: Arc::new(shutdown.drop_guard()),
        }
    }
}

impl Core {
    /// Starts the pump once (it needs a runtime, which exists by the first connection).
    pub(crate) fn ensure_pump(self: &Arc<Self>) {
        self.pump.get_or_init(|| {
            self.state
                .tasks
                .spawn(pump(Arc::downgrade(self), self.shutdown.clone()));
        });
    }

    /// The last sequence number handed out.
    pub(crate) fn seq(&self) -> u64 {
        self.log.lock().seq
    }

    /// Numbers, records and broadcasts one event.
    pub(crate) fn publish(&self, kind: EventKind, data: &Value) {
        self.state.metrics.ws_events.inc();
        let mut log = self.log.lock();
        log.seq += 1;
        let seq = log.seq;
        let event = Arc::new(Published {
            seq,
            kind,
            text: event_text(kind, seq, data).into(),
        });
        log.recent.push_back(event.clone());
        while log.recent.len() > self.limits.history {
            log.recent.pop_front();
        }
        // Sent under the lock, so `attach` sees every event either in `recent` or in its
        // receiver, never both or neither. No receiver is fine.
        let _ = self.sender.send(event);
    }

    /// Where a new connection starts: a replay of what it missed if `resume` is still in the
    /// history, else a fresh `registry_loaded`.
    pub(crate) async fn attach(&self, resume: Option<Resume>) -> Attached {
        let (events, replay, seq, reason) = {
            let log = self.log.lock();
            let events = self.sender.subscribe();
            let oldest = log.recent.front().map_or(log.seq + 1, |e| e.seq);
            let reason = match &resume {
                None => "connect",
                Some(r) if r.stream.as_ref().is_some_and(|s| *s != self.stream) => "stream_changed",
                Some(r) if r.since > log.seq => "stream_changed",
                Some(r) if r.since + 1 < oldest => "since_too_old",
                Some(_) => "",
            };
            let replay: Vec<Arc<Published>> = match (&resume, reason) {
                (Some(r), "") => log
                    .recent
                    .iter()
                    .filter(|e| e.seq > r.since)
                    .cloned()
                    .collect(),
                _ => Vec::new(),
            };
            (events, replay, log.seq, reason)
        };
        if reason.is_empty() {
            return Attached {
                loaded: None,
                replay,
                after: seq,
                events,
            };
        }
        // The snapshot is read after its seq was taken, so it is at least as new as that
        // seq; events after it may repeat a change it already shows, which is harmless
        // because every event states a new value rather than a difference.
        let (loaded, replay, after) = self.loaded(seq, reason).await;
        Attached {
            loaded: Some(loaded),
            replay,
            after,
            events,
        }
    }

    /// The `registry_loaded` text for a connection attaching at `seq`, the events to replay
    /// after it, and the seq they reach: the shared snapshot if it was built for the same
    /// reason less than [`LOADED_MAX_AGE`] ago and only health checks and colony progress
    /// were published since (replayed after it), else a new one (then shared). In a large
    /// cluster health checks come many times a second; rebuilding a snapshot of every node
    /// for each reconnect after each of them was what let a `/ws` reconnect loop saturate
    /// the management thread.
    async fn loaded(
        &self,
        seq: u64,
        reason: &'static str,
    ) -> (Utf8Bytes, Vec<Arc<Published>>, u64) {
        let mut cached = self.loaded.lock().await;
        if let Some(c) = cached.as_ref() {
            if c.reason == reason && c.built.elapsed() < LOADED_MAX_AGE {
                if let Some(missed) = self.only_updates_between(c.seq, seq) {
                    return (c.text.clone(), missed, seq.max(c.seq));
                }
            }
        }
        // Built and written out on a blocking thread: for thousands of nodes that takes long
        // enough to hold back every heartbeat queued behind it on the management thread.
        let processes = self.processes().await;
        let (state, stream) = (self.state.clone(), self.stream.clone());
        let text: Utf8Bytes = match tokio::task::spawn_blocking(move || {
            let snapshot = snapshot_of(&state, &stream, reason, processes);
            event_text(EventKind::RegistryLoaded, seq, &snapshot)
        })
        .await
        {
            Ok(text) => text.into(),
            // The blocking pool is gone (the runtime is stopping) or the build panicked:
            // build it here rather than fail the connection.
            Err(e) => {
                debug!(error = %e, "registry_loaded built on the management thread");
                let processes = self.processes().await;
                let snapshot = snapshot_of(&self.state, &self.stream, reason, processes);
                event_text(EventKind::RegistryLoaded, seq, &snapshot).into()
            }
        };
        *cached = Some(Loaded {
            seq,
            reason,
            built: tokio::time::Instant::now(),
            text: text.clone(),
        });
        (text, Vec::new(), seq)
    }

    /// The events published after `from` up to `to`, if the history still holds them all
    /// and each only updates a value a snapshot shows (a health check, colony progress):
    /// replayed after a snapshot taken at `from`, they bring it to `to`.
    fn only_updates_between(&self, from: u64, to: u64) -> Option<Vec<Arc<Published>>> {
        if from >= to {
            return Some(Vec::new());
        }
        let log = self.log.lock();
        let oldest = log.recent.front().map_or(log.seq + 1, |e| e.seq);
        if from + 1 < oldest {
            return None;
        }
        let missed: Vec<Arc<Published>> = log
            .recent
            .iter()
            .filter(|e| e.seq > from && e.seq <= to)
            .cloned()
            .collect();
        missed
            .iter()
            .all(|e| {
                matches!(
                    e.kind,
                    EventKind::HealthCheckResult | EventKind::ColonyProgress
                )
            })
            .then_some(missed)
    }

    /// The `registry_loaded` payload: everything a client needs to draw the cluster.
    /// Built on a blocking thread, as [`Core::loaded`] builds it.
    pub(crate) async fn snapshot(&self, reason: &'static str) -> Value {
        let processes = self.processes().await;
        let (state, stream) = (self.state.clone(), self.stream.clone());
        let build = move || snapshot_of(&state, &stream, reason, processes);
        match tokio::task::spawn_blocking(build).await {
            Ok(snapshot) => snapshot,
            Err(e) => {
                debug!(error = %e, "registry_loaded built on the management thread");
                let processes = self.processes().await;
                snapshot_of(&self.state, &self.stream, reason, processes)
            }
        }
    }

    /// The managed processes, if this node manages any.
    async fn processes(&self) -> Vec<ProcessInfo> {
        match &self.state.processes {
            Some(p) => p.list().await,
            None => Vec::new(),
        }
    }
}

/// The `registry_loaded` payload of `state`, with its managed `processes` already read.
fn snapshot_of(
    state: &MgmtState,
    stream: &str,
    reason: &str,
    processes: Vec<ProcessInfo>,
) -> Value {
    let health = state.health.as_ref();
    let summary = health.map(|h| {
        let s = h.summary();
        json!({
            "overall_status": s.overall_status, "total_components": s.total_components,
            "active": s.active, "stale": s.stale, "down": s.down, "left": s.left,
        })
    });
    json!({
        "reason": reason,
        "stream": stream,
        "coordinator": {
            "node_id": state.node.node_id,
            "address": state.node.address,
            "started": rfc3339(state.node.started),
        },
        "thresholds": health.map(|h| {
            let c = h.config();
            json!({
                "stale_after_ms": c.stale_after.as_millis(),
                "down_after_ms": c.down_after.as_millis(),
            })
        }),
        "managed_processes": state.processes.is_some(),
        "summary": summary,
        "services": services::list_with(state, processes),
        "deployed": super::deployed::list(state),
        "alerts": health.map(|h| h.alerts()),
        "colony": state.colony.as_ref().map(|c| c.status()),
    })
}

/// Turns every source into numbered events until shutdown (or until the hub is gone).
async fn pump(core: std::sync::Weak<Core>, shutdown: CancellationToken) {
    let Some(strong) = core.upgrade() else {
        return;
    };
    let mut health = strong.state.health.as_ref().map(|h| h.subscribe());
    let mut processes = strong.state.processes.as_ref().map(|p| p.subscribe());
    let colony = strong.state.colony.clone();
    let mut recoveries = colony.as_ref().map(|c| c.subscribe_recoveries());
    let mut deployments = strong
        .state
        .deploy
        .as_ref()
        .map(|d| d.services().subscribe());
    let mut remote_deployments = strong
        .state
        .deploy
        .as_ref()
        .and_then(|d| d.remote())
        .map(|r| r.subscribe());
    let mut poll = tokio::time::interval(strong.limits.colony_poll);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    drop(strong);
    let mut last_progress: Option<(Value, Value, Value, Value)> = None;
    let mut process_states: HashMap<String, &'static str> = HashMap::new();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            event = recv(&mut health) => {
                let Some(core) = core.upgrade() else { break };
                match event {
                    // A node that is gone from the state has no event of its own to undo it
                    // in a client's view: clients get the whole state again instead.
                    Ok(HealthEvent::NodeForgotten { .. }) => {
                        let snapshot = core.snapshot("node_forgotten").await;
                        core.publish(EventKind::RegistryLoaded, &snapshot);
                    }
                    Ok(event) => publish_health(&core, event),
                    Err(broadcast::error::RecvError::Lagged(n)) => resync(&core, n, "health", &mut health).await,
                    Err(broadcast::error::RecvError::Closed) => health = None,
                }
            }
            event = recv(&mut processes) => {
                let Some(core) = core.upgrade() else { break };
                match event {
                    Ok(ProcessEvent { process }) => {
                        let from = process_states.insert(process.name.clone(), process.state);
                        core.publish(EventKind::ServiceStateChanged, &json!({
                            "service": process.name, "kind": "process", "from": from,
                            "to": process.state, "at": rfc3339(SystemTime::now()),
                            "process": process,
                        }));
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => resync(&core, n, "process", &mut processes).await,
                    Err(broadcast::error::RecvError::Closed) => processes = None,
                }
            }
            event = recv(&mut recoveries) => {
                let Some(core) = core.upgrade() else { break };
                match event {
                    Ok(event) => match serde_json::to_value(&event) {
                        Ok(data) => core.publish(EventKind::ColonyRecovery, &data),
                        Err(e) => warn!(error = %e, "cannot encode a colony_recovery event"),
                    },
                    // Each event stands alone; a missed one is in the logs and the alerts.
                    Err(broadcast::error::RecvError::Lagged(n)) => warn!(missed = n, "colony_recovery events dropped"),
                    Err(broadcast::error::RecvError::Closed) => recoveries = None,
                }
            }
            event = recv(&mut deployments) => {
                let Some(core) = core.upgrade() else { break };
                match event {
                    Ok(event) => publish_deploy(&core, event),
                    Err(broadcast::error::RecvError::Lagged(n)) => resync(&core, n, "deploy", &mut deployments).await,
                    Err(broadcast::error::RecvError::Closed) => deployments = None,
                }
            }
            event = recv(&mut remote_deployments) => {
                let Some(core) = core.upgrade() else { break };
                match event {
                    // As for a forgotten node: no event undoes its services in a view.
                    Ok(DeployEvent::NodeGone { .. }) => {
                        let snapshot = core.snapshot("backend_gone").await;
                        core.publish(EventKind::RegistryLoaded, &snapshot);
                    }
                    Ok(event) => publish_deploy(&core, event),
                    Err(broadcast::error::RecvError::Lagged(n)) => resync(&core, n, "remote deploy", &mut remote_deployments).await,
                    Err(broadcast::error::RecvError::Closed) => remote_deployments = None,
                }
            }
            _ = poll.tick(), if colony.is_some() => {
                let (Some(core), Some(colony)) = (core.upgrade(), &colony) else { break };
                let status = colony.status();
                let key = (status["colony_id"].clone(), status["state"].clone(), status["tick"].clone(), status["epoch"].clone());
                if last_progress.as_ref() != Some(&key) {
                    last_progress = Some(key);
                    core.publish(EventKind::ColonyProgress, &status);
                }
            }
        }
    }
    debug!("ws event pump stopped");
}

async fn recv<T: Clone>(
    rx: &mut Option<broadcast::Receiver<T>>,
) -> Result<T, broadcast::error::RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn publish_health(core: &Core, event: HealthEvent) {
    let health = core.state.health.as_ref();
    match event {
        HealthEvent::ServiceStateChanged {
            node_id,
            node_type,
            transition,
        } => {
            let component = health.and_then(|h| h.node(&node_id));
            core.publish(
                EventKind::ServiceStateChanged,
                &json!({
                    "service": node_id, "kind": "node", "node_type": node_type,
                    "from": transition.from, "to": transition.to, "at": transition.at,
                    "component": component,
                }),
            );
        }
        HealthEvent::EndpointUpdated { node_id, address } => {
            core.publish(
                EventKind::EndpointUpdated,
                &json!({
                    "service": node_id, "address": address,
                    "endpoints": services::endpoints(&node_id, &address),
                }),
            );
        }
        HealthEvent::HealthCheckResult {
            node_id,
            node_type,
            status,
            seq,
            heartbeats,
            interval_ms,
            metrics,
            at,
        } => {
            let component = health.and_then(|h| h.node(&node_id));
            core.publish(
                EventKind::HealthCheckResult,
                &json!({
                    "service": node_id, "node_type": node_type, "status": status,
                    "seq": seq, "heartbeats": heartbeats, "interval_ms": interval_ms,
                    "metrics": metrics, "at": at,
                    "uptime_seconds": component.as_ref().map(|c| c.uptime_seconds),
                    "flaps": component.as_ref().map(|c| c.flaps),
                }),
            );
        }
        // Answered with a whole snapshot by the pump.
        HealthEvent::NodeForgotten { .. } => {}
    }
}

/// Deployed services' events, marked `"kind": "deployed"` so clients tell them from nodes'.
fn publish_deploy(core: &Core, event: DeployEvent) {
    match event {
        DeployEvent::Progress(progress) => match serde_json::to_value(&progress) {
            Ok(data) => core.publish(EventKind::DeploymentProgress, &data),
            Err(e) => warn!(error = %e, "cannot encode a deployment_progress event"),
        },
        DeployEvent::StateChanged { from, service } => core.publish(
            EventKind::ServiceStateChanged,
            &json!({
                "service": service.name, "kind": "deployed", "from": from,
                "to": service.state.name(), "at": rfc3339(SystemTime::now()),
                "deployed": service,
            }),
        ),
        DeployEvent::Health {
            service,
            node,
            status,
        } => core.publish(
            EventKind::HealthCheckResult,
            &json!({
                "service": service, "kind": "deployed", "node": node,
                "healthy": status.healthy, "status": if status.healthy { "healthy" } else { "unhealthy" },
                "detail": status.detail, "at": status.at,
            }),
        ),
        // Answered with a whole snapshot by the pump.
        DeployEvent::NodeGone { .. } => {}
    }
}

/// The pump itself fell behind a source: clients get the whole state again, numbered like
/// any event, so nothing they hold stays wrong. The source's backlog is skipped first: the
/// snapshot, read after that, already shows every change still queued, and working through
/// thousands of them (a crowd of nodes joining) only put the pump behind again, so each
/// resync brought on the next.
async fn resync<T: Clone>(
    core: &Core,
    missed: u64,
    source: &str,
    rx: &mut Option<broadcast::Receiver<T>>,
) {
    warn!(
        missed,
        source, "ws event pump fell behind; sending clients the whole state again"
    );
    if let Some(rx) = rx.as_mut() {
        *rx = rx.resubscribe();
    }
    let snapshot = core.snapshot("resync").await;
    core.publish(EventKind::RegistryLoaded, &snapshot);
}
