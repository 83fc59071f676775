//! [`ColonyRun`]: the coordinator's side of a started colony, for as long as the colony lives
//! — commands to backends (`run`, `pause`, `commit`, `stop`) over authenticated data-plane
//! links, one long-polling reporter per backend that turns their checkpoints and replica
//! counts into one consistent `(tick, population, fingerprint)`, and one commit announcer per
//! backend that tells it each new consistent checkpoint (so it drops older copies and may run
//! on, DESIGN §14).
//!
//! A colony outlives its placements: the links, reporters and announcers of one epoch are a
//! `Placement`, replaced whole when shards are placed again; the run's target, its
//! consistent checkpoint and its failure belong to the colony. Backends tick on their own;
//! the coordinator is never on a tick's critical path.
//!
//! When a backend stops answering (process gone, connection broken, frozen past the stall
//! limit, its engine failed), the run reports [`Trouble`] to whoever watches it (the
//! supervisor, `coordinator::recovery`). Waits discount the coordinator's own stalls
//! (`patience.rs`), so a coordinator that was itself stopped blames nobody. A run that fails
//! for good stops every backend that still answers, so no backend keeps ticking a colony the
//! coordinator gave up on. The arithmetic over the reports is `progress.rs`.

mod patience;
mod placement;
mod progress;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use codec::{Checkpoint, Message};
use dataplane::{Client, Identity};
use parking_lot::{Mutex, RwLock};
use serde_json::{json, Value};
use shared::topology::BackendEntry;
use shared::topology::ClusterTopology;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub(crate) use patience::within;
pub(crate) use placement::{connect, Placement};
use progress::{Report, RunState};

use crate::coordinator::error::{BackendError, ColonyError};
use crate::coordinator::health::tracker::HealthTracker;

/// Settings of colony runs.
#[derive(Debug, Clone, Copy)]
pub struct RunConfig {
    /// Backends record population and fingerprint every this many ticks (and at each run's
    /// last tick).
    pub checkpoint_every: u64,
    /// How long one report long-poll waits for news.
    pub report_wait: Duration,
    /// A backend silent for this long beyond `report_wait` is in trouble.
    pub stall_timeout: Duration,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            checkpoint_every: 100,
            report_wait: Duration::from_millis(500),
            stall_timeout: Duration::from_secs(3),
        }
    }
}

/// What the run asks of its supervisor (`coordinator::recovery`).
#[derive(Debug)]
pub enum Call {
    /// A backend is in trouble: place its shards elsewhere, or fail the run.
    Trouble(Trouble),
    /// Spread the shards over `backends` (with those holding shards now) at the next
    /// checkpoint; the answer is the `GET /colony` body afterwards.
    Rebalance {
        /// Live backends to spread over.
        backends: Vec<BackendEntry>,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<Value, ColonyError>>,
    },
}

/// A backend of placement `epoch` stopped answering or failed.
#[derive(Debug)]
pub struct Trouble {
    /// The placement it happened in.
    pub epoch: u64,
    /// What happened.
    pub error: BackendError,
}

impl Trouble {
    /// The backend the trouble names.
    pub fn backend(&self) -> &str {
        self.error.backend()
    }
}

/// A started colony's run control. Dropping it does not stop the backends; [`ColonyRun::close`]
/// stops following them and `ColonyRun::fail` stops them.
pub struct ColonyRun {
    colony_id: String,
    placement: RwLock<Arc<Placement>>,
    /// Held while a run, a pause or a re-placement sends targets to the backends, so every
    /// backend receives the same targets in the same order: backends cut ticks into batches
    /// by the targets they know, and must all cut them alike.
    ordering: tokio::sync::Mutex<()>,
    state: Mutex<RunState>,
    changed: watch::Sender<u64>,
    /// Cancelled when the run ends (failure, a new colony, shutdown).
    cancel: CancellationToken,
    supervisor: mpsc::UnboundedSender<Call>,
    /// The highest epoch any backend was fenced at (a re-placement may fence one and fail
    /// before it is in force): a stop must not be older than that.
    fenced: std::sync::atomic::AtomicU64,
    /// The identity the coordinator speaks to backends with.
    identity: Identity,
    config: RunConfig,
    health: Option<HealthTracker>,
}

impl std::fmt::Debug for ColonyRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ColonyRun")
            .field("colony_id", &self.colony_id)
            .finish_non_exhaustive()
    }
}

/// The replicas each backend of `topology` must hold at a checkpoint.
fn expectations(topology: &ClusterTopology) -> Vec<(String, u32)> {
    dataplane::replicas_expected(topology).into_iter().collect()
}

impl ColonyRun {
    /// Connects to every backend of `topology` (commands and reports) and starts following
    /// them at the checkpoint `initial` (their figures there), in placement `epoch`, running
    /// to `target`. Trouble with a backend goes to the returned receiver.
    ///
    /// # Errors
    /// A backend cannot be reached or refuses the coordinator's authentication.
    pub async fn connect(
        topology: Arc<ClusterTopology>,
        epoch: u64,
        identity: &Identity,
        initial: Checkpoint,
        config: RunConfig,
        health: Option<HealthTracker>,
    ) -> Result<(Arc<ColonyRun>, mpsc::UnboundedReceiver<Call>), BackendError> {
        let cancel = CancellationToken::new();
        let (placement, reports) = Self::links(
            topology,
            epoch,
            identity,
            config,
            cancel.child_token(),
            initial.tick,
        )
        .await?;
        let (run, calls) = ColonyRun::new(placement, identity, initial, config, health, cancel);
        run.follow(reports);
        Ok((run, calls))
    }

    /// A run taken over from backends that kept a colony while no coordinator followed it:
    /// `topology` as they describe it (placement `epoch`), running to `target`, with
    /// `committed` the newest consistent checkpoint any was told. It follows nobody yet and
    /// shows `recovering` until its supervisor re-places the colony (which is how it learns
    /// the figures at `committed`).
    pub fn adopted(
        topology: Arc<ClusterTopology>,
        epoch: u64,
        identity: &Identity,
        target: u64,
        committed: u64,
        config: RunConfig,
        health: Option<HealthTracker>,
    ) -> (Arc<ColonyRun>, mpsc::UnboundedReceiver<Call>) {
        let cancel = CancellationToken::new();
        let placement = Placement::new(
            topology,
            epoch,
            HashMap::new(),
            identity.clone(),
            config.stall_timeout,
            cancel.child_token(),
            committed,
        );
        let unknown = Checkpoint {
            tick: committed,
            population: 0,
            fingerprint: 0,
        };
        let (run, calls) = ColonyRun::new(
            Arc::new(placement),
            identity,
            unknown,
            config,
            health,
            cancel,
        );
        {
            let mut s = run.state.lock();
            s.target = target.max(committed);
            s.recovering = true;
        }
        (run, calls)
    }

    /// Makes the command and report links of a placement of `topology` as epoch `epoch`.
    ///
    /// # Errors
    /// A backend cannot be reached or refuses the coordinator's authentication.
    pub(crate) async fn links(
        topology: Arc<ClusterTopology>,
        epoch: u64,
        identity: &Identity,
        config: RunConfig,
        cancel: CancellationToken,
        committed: u64,
    ) -> Result<(Arc<Placement>, HashMap<String, Client>), BackendError> {
        let mut commands = HashMap::new();
        let mut reports = HashMap::new();
        for id in dataplane::ring(&topology) {
            let Some(b) = topology.backend(id) else {
                continue;
            };
            let address = b.address.to_internal_address();
            let unreachable = |source| BackendError::Unreachable {
                backend: id.to_owned(),
                address: address.clone(),
                source,
            };
            let command = connect(&address, identity).await.map_err(unreachable)?;
            let report = connect(&address, identity).await.map_err(unreachable)?;
            commands.insert(id.to_owned(), command);
            reports.insert(id.to_owned(), report);
        }
        let placement = Placement::new(
            topology,
            epoch,
            commands,
            identity.clone(),
            config.stall_timeout,
            cancel,
            committed,
        );
        Ok((Arc::new(placement), reports))
    }

    /// A run over `placement` without reporters.
    fn new(
        placement: Arc<Placement>,
        identity: &Identity,
        initial: Checkpoint,
        config: RunConfig,
        health: Option<HealthTracker>,
        cancel: CancellationToken,
    ) -> (Arc<ColonyRun>, mpsc::UnboundedReceiver<Call>) {
        let (supervisor, calls) = mpsc::unbounded_channel();
        let mut state = RunState::new(expectations(&placement.topology), initial);
        state.replace(placement.epoch, expectations(&placement.topology), initial);
        let run = Arc::new(ColonyRun {
            colony_id: placement.topology.colony_id().to_owned(),
            state: Mutex::new(state),
            placement: RwLock::new(placement),
            ordering: tokio::sync::Mutex::new(()),
            changed: watch::Sender::new(0),
            cancel,
            supervisor,
            fenced: std::sync::atomic::AtomicU64::new(0),
            identity: identity.clone(),
            config,
            health,
        });
        (run, calls)
    }

    /// Starts a reporter and a commit announcer per backend of the current placement.
    fn follow(self: &Arc<Self>, reports: HashMap<String, Client>) {
        let placement = self.placement();
        for (id, client) in reports {
            tokio::spawn(self.clone().report_loop(placement.clone(), id, client));
        }
        for id in placement.backends() {
            tokio::spawn(self.clone().announce(placement.clone(), id.clone()));
        }
    }

    /// The placement in force.
    pub(crate) fn placement(&self) -> Arc<Placement> {
        self.placement.read().clone()
    }

    /// The identity the coordinator speaks to backends with.
    pub(crate) fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Settings of this run.
    pub(crate) fn config(&self) -> RunConfig {
        self.config
    }

    /// The node health tracker, if the coordinator has one.
    pub(crate) fn health(&self) -> Option<&HealthTracker> {
        self.health.as_ref()
    }

    /// Resolves when the run ended (failure, a new colony, shutdown).
    pub(crate) async fn ended(&self) {
        self.cancel.cancelled().await;
    }

    /// A token for a new placement's tasks: cancelled when the run ends.
    pub(crate) fn child_token(&self) -> CancellationToken {
        self.cancel.child_token()
    }

    /// The placement the backends report in.
    pub(crate) fn epoch(&self) -> u64 {
        self.state.lock().epoch()
    }

    /// The newest consistent checkpoint.
    pub(crate) fn consistent(&self) -> Checkpoint {
        self.state.lock().consistent()
    }

    /// The furthest tick any backend reported.
    pub(crate) fn furthest(&self) -> u64 {
        self.state.lock().furthest()
    }

    /// Holds back runs and pauses while the shards are placed again: the new placement must
    /// get the targets in one order too.
    pub(crate) async fn hold_targets(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.ordering.lock().await
    }

    /// Notes that backends are being fenced at `epoch`.
    pub(crate) fn fencing(&self, epoch: u64) {
        self.fenced
            .fetch_max(epoch, std::sync::atomic::Ordering::AcqRel);
    }

    /// The epoch a stop must carry to be heeded by every backend.
    fn stop_epoch(&self, placement: &Placement) -> u64 {
        self.fenced
            .load(std::sync::atomic::Ordering::Acquire)
            .max(placement.epoch)
    }

    /// Stops every backend at one tick, as a pause does, and waits (up to the stall limit)
    /// until that tick is consistent, so shards can be placed again there without redoing
    /// any tick. Returns the target and pause from before, for [`ColonyRun::resume_target`].
    pub(crate) async fn halt_at_next_checkpoint(&self) -> (u64, bool) {
        let before = {
            let s = self.state.lock();
            (s.target, s.paused)
        };
        if let Err(e) = self.pause().await {
            warn!(colony = %self.colony_id, error = %e, "could not stop every backend at one tick");
        }
        before
    }

    /// Sets the run's target and pause back to what [`ColonyRun::halt_at_next_checkpoint`]
    /// returned; the next placement taken runs to it.
    pub(crate) fn resume_target(&self, (target, paused): (u64, bool)) {
        let mut s = self.state.lock();
        s.target = s.target.max(target);
        s.paused = paused;
    }

    /// Shows `recovering` (or not) in `GET /colony`.
    pub(crate) fn set_recovering(&self, on: bool) {
        self.state.lock().recovering = on;
        self.changed.send_modify(|n| *n += 1);
    }

    /// Asks the supervisor to spread the shards over `backends`; answers when it is done.
    ///
    /// # Errors
    /// [`ColonyError::RunFailed`] if the run failed (or fails meanwhile).
    pub async fn rebalance(&self, backends: Vec<BackendEntry>) -> Result<Value, ColonyError> {
        self.check_not_failed()?;
        let (reply, answer) = oneshot::channel();
        let _ = self.supervisor.send(Call::Rebalance { backends, reply });
        match answer.await {
            Ok(answer) => answer,
            Err(_) => {
                self.check_not_failed()?;
                Ok(self.status())
            }
        }
    }

    /// Makes `placement` the one in force, its backends set back to the checkpoint
    /// `consistent`; follows them from there and sends them the run's target. The caller
    /// holds the targets ([`ColonyRun::hold_targets`]).
    ///
    /// # Errors
    /// A backend did not take the target (which is also reported as trouble).
    pub(crate) async fn take_placement(
        self: &Arc<Self>,
        placement: Arc<Placement>,
        reports: HashMap<String, Client>,
        consistent: Checkpoint,
    ) -> Result<(), BackendError> {
        let target = {
            let mut s = self.state.lock();
            s.replace(
                placement.epoch,
                expectations(&placement.topology),
                consistent,
            );
            s.target = s.target.max(consistent.tick);
            s.recovering = false;
            s.target
        };
        let old = std::mem::replace(&mut *self.placement.write(), placement);
        old.cancel.cancel();
        self.follow(reports);
        self.changed.send_modify(|n| *n += 1);
        let colony_id = self.colony_id.clone();
        let every = self.config.checkpoint_every;
        self.send_targets(|epoch| Message::Run {
            colony_id: colony_id.clone(),
            epoch,
            until_tick: target,
            checkpoint_every: every,
        })
        .await
        .map(|_| ())
    }

    /// Stops following the backends (on restart or shutdown); they keep their colony.
    pub fn close(&self) {
        self.cancel.cancel();
    }

    /// The colony.
    pub fn colony_id(&self) -> &str {
        &self.colony_id
    }

    async fn report_loop(
        self: Arc<Self>,
        placement: Arc<Placement>,
        id: String,
        mut client: Client,
    ) {
        let mut after = placement.commit.borrow().to_owned();
        let limit = self.config.report_wait + self.config.stall_timeout;
        let epoch = placement.epoch;
        loop {
            let request = Message::Report {
                colony_id: self.colony_id.clone(),
                epoch,
                after_tick: after,
                wait_ms: u64::try_from(self.config.report_wait.as_millis()).unwrap_or(u64::MAX),
            };
            let answer = tokio::select! {
                biased;
                _ = placement.cancel.cancelled() => return,
                // A stall of the coordinator itself is not the backend's silence.
                answer = within(limit, client.request(&request)) => answer,
            };
            let error = match answer {
                Ok(Ok(Message::Progress {
                    epoch: reported,
                    tick,
                    state,
                    error,
                    checkpoints,
                    held,
                    ..
                })) if reported == epoch => {
                    after = tick;
                    if state == "failed" {
                        BackendError::Failed {
                            backend: id,
                            reason: error.unwrap_or_default(),
                        }
                    } else {
                        let report = Report {
                            tick,
                            checkpoints,
                            held,
                        };
                        self.absorb(&placement, &id, report);
                        continue;
                    }
                }
                Ok(Ok(other)) => BackendError::UnexpectedAnswer {
                    backend: id,
                    answer: Box::new(other),
                },
                Ok(Err(source)) => BackendError::StoppedAnswering {
                    backend: id,
                    source,
                },
                Err(_) => BackendError::Stalled {
                    backend: id,
                    silence: limit,
                },
            };
            self.report_trouble(epoch, error);
            return;
        }
    }

    /// Tells backend `id` every new consistent checkpoint of `placement`.
    async fn announce(self: Arc<Self>, placement: Arc<Placement>, id: String) {
        let mut rx = placement.commit.subscribe();
        loop {
            tokio::select! {
                biased;
                _ = placement.cancel.cancelled() => return,
                changed = rx.changed() => if changed.is_err() { return },
            }
            let tick = *rx.borrow_and_update();
            let commit = Message::Commit {
                colony_id: self.colony_id.clone(),
                epoch: placement.epoch,
                tick,
            };
            let sent = tokio::select! {
                biased;
                _ = placement.cancel.cancelled() => return,
                sent = placement.command(&id, &commit) => sent,
            };
            if let Err(error) = sent {
                self.report_trouble(placement.epoch, error);
                return;
            }
        }
    }

    fn absorb(&self, placement: &Placement, id: &str, report: Report) {
        let consistent = {
            let mut s = self.state.lock();
            let before = s.consistent().tick;
            s.absorb(id, placement.epoch, report, Instant::now());
            let after = s.consistent().tick;
            (after > before && s.epoch() == placement.epoch).then_some(after)
        };
        if let Some(tick) = consistent {
            placement.commit.send_replace(tick);
        }
        self.changed.send_modify(|n| *n += 1);
    }

    /// Passes trouble with a backend of placement `epoch` on to the supervisor. After the run
    /// ended, a broken link is expected and not news.
    pub(crate) fn report_trouble(&self, epoch: u64, error: BackendError) {
        if self.cancel.is_cancelled() || epoch != self.state.lock().epoch() {
            return;
        }
        warn!(colony = %self.colony_id, epoch, %error, "trouble with a backend");
        let _ = self
            .supervisor
            .send(Call::Trouble(Trouble { epoch, error }));
    }

    /// Records the run's failure (only the first reason counts: later ones are its
    /// consequences), raises its alert, stops following the backends and tells every backend
    /// that still answers to stop ticking. A no-op once the run ended.
    pub(crate) fn fail(self: &Arc<Self>, reason: String) {
        if self.cancel.is_cancelled() {
            return;
        }
        if !self.state.lock().fail(reason.clone()) {
            return;
        }
        warn!(colony = %self.colony_id, %reason, "colony run failed");
        if let Some(health) = &self.health {
            health.raise_alert(
                &format!("colony {}", self.colony_id),
                "colony_failed",
                "critical",
                format!("colony {} failed: {reason}", self.colony_id),
            );
        }
        self.changed.send_modify(|n| *n += 1);
        self.cancel.cancel();
        let placement = self.placement();
        let epoch = self.stop_epoch(&placement);
        let colony_id = self.colony_id.clone();
        tokio::spawn(stop_everywhere(placement, epoch, colony_id, reason));
    }

    /// Ends the run because a newer colony replaces it: every backend that still answers
    /// stops ticking it.
    pub(crate) fn supersede(&self, by: &str) {
        if self.cancel.is_cancelled() {
            return;
        }
        self.cancel.cancel();
        let placement = self.placement();
        let epoch = self.stop_epoch(&placement);
        let reason = format!("replaced by colony {by}");
        tokio::spawn(stop_everywhere(
            placement,
            epoch,
            self.colony_id.clone(),
            reason,
        ));
    }

    fn check_not_failed(&self) -> Result<(), ColonyError> {
        match self.state.lock().failed() {
            Some(reason) => Err(ColonyError::RunFailed {
                colony_id: self.colony_id.clone(),
                reason: reason.to_owned(),
            }),
            None => Ok(()),
        }
    }

    /// Sends every backend of the placement in force its target, in `message`'s order; a
    /// backend that does not take it is trouble (the run goes on or recovers without it).
    async fn send_targets(
        &self,
        make: impl Fn(u64) -> Message,
    ) -> Result<Vec<Message>, BackendError> {
        let placement = self.placement();
        let epoch = placement.epoch;
        let answers = placement.broadcast(|| make(epoch)).await;
        if let Err(error) = &answers {
            let trouble = BackendError::Failed {
                backend: error.backend().to_owned(),
                reason: error.to_string(),
            };
            self.report_trouble(epoch, trouble);
        }
        answers
    }

    /// Runs `ticks` more ticks; with `wait`, answers once they are done (or the run failed).
    ///
    /// # Errors
    /// [`ColonyError::RunFailed`] if the colony has failed; [`ColonyError::Backend`] if a
    /// backend refuses or does not answer (which is trouble the supervisor handles).
    pub async fn run(&self, ticks: u64, wait: bool) -> Result<Value, ColonyError> {
        self.check_not_failed()?;
        let ordered = self.ordering.lock().await;
        self.check_not_failed()?;
        let target = {
            let mut s = self.state.lock();
            s.target = s.target.saturating_add(ticks);
            s.paused = false;
            s.target
        };
        let colony_id = self.colony_id.clone();
        let every = self.config.checkpoint_every;
        self.send_targets(|epoch| Message::Run {
            colony_id: colony_id.clone(),
            epoch,
            until_tick: target,
            checkpoint_every: every,
        })
        .await?;
        drop(ordered);
        info!(colony = %self.colony_id, target, "run");
        if wait {
            self.wait_for(target, None).await;
        }
        Ok(self.status())
    }

    /// Waits until the consistent checkpoint reaches `tick` or the run failed, at most
    /// `within` if given.
    pub(crate) async fn wait_for(&self, tick: u64, limit: Option<Duration>) {
        let mut rx = self.changed.subscribe();
        let reached = async {
            loop {
                {
                    let s = self.state.lock();
                    if s.failed().is_some() || s.consistent().tick >= tick {
                        return;
                    }
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        match limit {
            Some(limit) => {
                let _ = within(limit, reached).await;
            }
            None => reached.await,
        }
    }

    /// Stops every backend at one common tick (the furthest any had reached).
    ///
    /// # Errors
    /// As [`ColonyRun::run`].
    pub async fn pause(&self) -> Result<Value, ColonyError> {
        self.check_not_failed()?;
        let ordered = self.ordering.lock().await;
        self.check_not_failed()?;
        let colony_id = self.colony_id.clone();
        let answers = self
            .send_targets(|epoch| Message::Pause {
                colony_id: colony_id.clone(),
                epoch,
            })
            .await?;
        // Each backend stops at most one batch on; all then meet at the furthest stop.
        let furthest = answers
            .iter()
            .filter_map(|m| match m {
                Message::Progress { until_tick, .. } => Some(*until_tick),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        {
            let mut s = self.state.lock();
            s.target = furthest;
            s.paused = true;
        }
        let every = self.config.checkpoint_every;
        self.send_targets(|epoch| Message::Run {
            colony_id: colony_id.clone(),
            epoch,
            until_tick: furthest,
            checkpoint_every: every,
        })
        .await?;
        drop(ordered);
        // Answer once every backend has met at that tick (a batch at most away).
        self.wait_for(furthest, Some(self.config.stall_timeout))
            .await;
        info!(colony = %self.colony_id, tick = furthest, "paused");
        Ok(self.status())
    }

    /// The body of `GET /colony`.
    pub fn status(&self) -> Value {
        let placement = self.placement();
        let topology = &placement.topology;
        let s = self.state.lock();
        let consistent = s.consistent();
        json!({
            "colony_id": self.colony_id,
            "state": s.state_name(),
            "tick": consistent.tick,
            "population": consistent.population,
            "fingerprint": consistent.fingerprint.to_string(),
            "ticks_per_second": s.ticks_per_second(),
            "target_tick": s.target,
            "front_tick": s.slowest(),
            "error": s.failed(),
            "epoch": placement.epoch,
            "backends": topology.backends().len(),
            "shards": topology.shard_count(),
            "halo_depth": topology.halo_depth(),
        })
    }
}

/// Tells every backend of `placement` to stop ticking colony `colony_id` for good (with
/// `epoch`, at least the newest it was fenced at), and waits (briefly) for the ones that
/// answer.
async fn stop_everywhere(placement: Arc<Placement>, epoch: u64, colony_id: String, reason: String) {
    let stop = Message::Stop {
        colony_id: colony_id.clone(),
        epoch,
        reason,
    };
    let ids: Vec<String> = placement.backends().cloned().collect();
    let answers =
        futures::future::join_all(ids.iter().map(|id| placement.command(id, &stop))).await;
    for (id, answer) in ids.iter().zip(answers) {
        match answer {
            Ok(_) => info!(colony = %colony_id, backend = %id, "backend stopped the colony"),
            Err(e) => {
                warn!(colony = %colony_id, backend = %id, error = %e, "could not stop the colony there")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use shared::topology::{BackendEntry, Dimensions};
    use shared::NodeAddress;

    use super::*;
    use crate::coordinator::health::config::HealthConfig;

    fn address(port: u16) -> NodeAddress {
        NodeAddress::new([127, 0, 0, 1].into(), port, port + 1, port + 2)
    }

    /// A run over two backends with no links at all: what it does with reports and failures
    /// needs no sockets.
    fn run(health: &HealthTracker) -> Arc<ColonyRun> {
        let topology = ClusterTopology::place(
            "c0ffee",
            address(8000),
            vec![
                BackendEntry::new("b1", address(9000)),
                BackendEntry::new("b2", address(9010)),
            ],
            Dimensions::new(2, 1, 8, 8).unwrap(),
        )
        .unwrap();
        let initial = Checkpoint {
            tick: 0,
            population: 5,
            fingerprint: 6,
        };
        let secret =
            Arc::new(shared::secret::ClusterSecret::from_bytes(vec![7; 32], "test").unwrap());
        let identity = Identity {
            instance_id: "coordinator".into(),
            secret,
            tls: None,
        };
        let cancel = CancellationToken::new();
        let placement = Placement::new(
            Arc::new(topology),
            0,
            HashMap::new(),
            identity.clone(),
            Duration::from_millis(100),
            cancel.child_token(),
            0,
        );
        let (run, _troubles) = ColonyRun::new(
            Arc::new(placement),
            &identity,
            initial,
            RunConfig::default(),
            Some(health.clone()),
            cancel,
        );
        run
    }

    /// A report of `tick` with `checkpoints`, holding the one replica each backend of a
    /// two-backend ring keeps at each of them.
    fn report(tick: u64, checkpoints: Vec<Checkpoint>) -> Report {
        let held = checkpoints
            .iter()
            .map(|c| codec::Held {
                tick: c.tick,
                replicas: 1,
            })
            .collect();
        Report {
            tick,
            checkpoints,
            held,
        }
    }

    fn health() -> HealthTracker {
        HealthTracker::new(HealthConfig::default(), None)
    }

    fn stalled(backend: &str) -> BackendError {
        BackendError::Stalled {
            backend: backend.into(),
            silence: Duration::from_secs(3),
        }
    }

    #[test]
    fn reports_from_every_backend_move_the_status() {
        let health = health();
        let run = run(&health);
        assert_eq!(run.status()["tick"], 0);
        assert_eq!(run.status()["population"], 5);
        let at = |tick, population, fingerprint| Checkpoint {
            tick,
            population,
            fingerprint,
        };
        let placement = run.placement();
        run.absorb(&placement, "b1", report(100, vec![at(100, 3, 1)]));
        assert_eq!(run.status()["tick"], 0, "b2 has not reached 100");
        run.absorb(&placement, "b2", report(100, vec![at(100, 4, u64::MAX)]));
        let status = run.status();
        assert_eq!(
            (
                &status["tick"],
                &status["population"],
                &status["fingerprint"],
                &status["state"],
                &status["error"],
            ),
            (
                &json!(100),
                &json!(7),
                &json!("0"),
                &json!("idle"),
                &Value::Null
            )
        );
        assert_eq!(
            (status["backends"].clone(), status["shards"].clone()),
            (json!(2), json!(2))
        );
    }

    #[tokio::test]
    async fn a_run_fails_once_with_its_first_reason_and_one_alert() {
        let health = health();
        let run = run(&health);
        run.fail(stalled("b1").to_string());
        run.fail(stalled("b2").to_string());
        let status = run.status();
        assert_eq!(status["state"], "failed");
        let error = status["error"].as_str().unwrap();
        assert!(error.starts_with("b1 sent no progress"), "{error}");
        let alerts = health.alerts().open;
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0].kind, "colony_failed");
        assert_eq!(alerts[0].node_id, "colony c0ffee");
        assert!(alerts[0].message.contains("b1 sent no progress"));

        // A failed colony refuses to run or pause, and says how to get a new one.
        for refused in [run.run(10, false).await, run.pause().await] {
            let e = refused.unwrap_err();
            assert!(matches!(e, ColonyError::RunFailed { .. }), "{e:?}");
            let message = e.to_string();
            assert!(message.contains("b1 sent no progress"), "{message}");
            assert!(message.contains("\"restart\":true"), "{message}");
        }
    }

    #[test]
    fn a_closed_run_does_not_fail_when_its_links_break() {
        let health = health();
        let run = run(&health);
        run.close();
        run.fail(stalled("b1").to_string());
        assert_eq!(run.status()["state"], "idle");
        assert!(health.alerts().open.is_empty());
    }
}
