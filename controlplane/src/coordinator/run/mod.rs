//! [`ColonyRun`]: the coordinator's view of a running colony — commands to backends (`run`,
//! `pause`) over authenticated data-plane connections, and one long-polling reporter per
//! backend that turns their checkpoints into one consistent `(tick, population, fingerprint)`.
//!
//! Backends tick on their own; the coordinator is never on a tick's critical path. A backend
//! that stops answering (process gone, connection broken, frozen past the stall limit) fails
//! the run visibly, with the reason, and raises an alert. The arithmetic over the reports
//! (consistent checkpoint, ticks/s, first failure) is `progress.rs`.

mod patience;
mod progress;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use codec::{Checkpoint, Message};
use dataplane::{Client, ClientError, Identity};
use futures::future::join_all;
use parking_lot::Mutex;
use serde_json::{json, Value};
use shared::topology::ClusterTopology;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use progress::RunState;

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
    /// A backend silent for this long beyond `report_wait` fails the run.
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

/// A started colony's run control. Dropping it does not stop the backends; [`ColonyRun::close`]
/// stops its reporters.
pub struct ColonyRun {
    colony_id: String,
    topology: Arc<ClusterTopology>,
    commands: HashMap<String, tokio::sync::Mutex<Client>>,
    /// Held while a run or pause picks its target and sends it to every backend, so every
    /// backend receives the same targets in the same order: backends cut ticks into batches
    /// by the targets they know, and must all cut them alike.
    ordering: tokio::sync::Mutex<()>,
    state: Mutex<RunState>,
    changed: watch::Sender<u64>,
    cancel: CancellationToken,
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

async fn connect(address: &str, identity: &Identity) -> Result<Client, ClientError> {
    let mut client = Client::connect(address).await?;
    client
        .authenticate(&identity.instance_id, &identity.secret)
        .await?;
    Ok(client)
}

impl ColonyRun {
    /// Connects to every backend of `topology` (commands and reports) and starts the
    /// reporters. `initial` is the colony's tick-0 figures, summed from the init answers.
    ///
    /// # Errors
    /// A backend cannot be reached or refuses the coordinator's authentication.
    pub async fn connect(
        topology: Arc<ClusterTopology>,
        identity: &Identity,
        initial: Checkpoint,
        config: RunConfig,
        health: Option<HealthTracker>,
    ) -> Result<Arc<ColonyRun>, BackendError> {
        let holders: Vec<_> = topology
            .backends()
            .iter()
            .filter(|b| !topology.shards_of(&b.instance_id).is_empty())
            .cloned()
            .collect();
        let mut commands = HashMap::new();
        let mut reports = HashMap::new();
        for b in &holders {
            let address = b.address.to_internal_address();
            let unreachable = |source| BackendError::Unreachable {
                backend: b.instance_id.clone(),
                address: address.clone(),
                source,
            };
            let command = connect(&address, identity).await.map_err(unreachable)?;
            let report = connect(&address, identity).await.map_err(unreachable)?;
            commands.insert(b.instance_id.clone(), tokio::sync::Mutex::new(command));
            reports.insert(b.instance_id.clone(), report);
        }
        let run = ColonyRun::new(topology, commands, initial, config, health);
        for (id, client) in reports {
            tokio::spawn(run.clone().report_loop(id, client));
        }
        Ok(run)
    }

    /// A run over established command links, without reporters: every backend holding a
    /// shard is followed, whether or not it has a link.
    fn new(
        topology: Arc<ClusterTopology>,
        commands: HashMap<String, tokio::sync::Mutex<Client>>,
        initial: Checkpoint,
        config: RunConfig,
        health: Option<HealthTracker>,
    ) -> Arc<ColonyRun> {
        let holders = topology
            .backends()
            .iter()
            .filter(|b| !topology.shards_of(&b.instance_id).is_empty())
            .map(|b| b.instance_id.clone());
        Arc::new(ColonyRun {
            colony_id: topology.colony_id().to_owned(),
            state: Mutex::new(RunState::new(holders, initial)),
            topology,
            commands,
            ordering: tokio::sync::Mutex::new(()),
            changed: watch::Sender::new(0),
            cancel: CancellationToken::new(),
            config,
            health,
        })
    }

    /// Stops the reporters (on restart or shutdown).
    pub fn close(&self) {
        self.cancel.cancel();
    }

    /// The colony.
    pub fn colony_id(&self) -> &str {
        &self.colony_id
    }

    async fn report_loop(self: Arc<Self>, id: String, mut client: Client) {
        let mut after = 0u64;
        let limit = self.config.report_wait + self.config.stall_timeout;
        loop {
            let request = Message::Report {
                colony_id: self.colony_id.clone(),
                after_tick: after,
                wait_ms: u64::try_from(self.config.report_wait.as_millis()).unwrap_or(u64::MAX),
            };
            let answer = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return,
                // A stall of the coordinator itself is not the backend's silence.
                answer = patience::within(limit, client.request(&request)) => answer,
            };
            match answer {
                Ok(Ok(Message::Progress {
                    tick,
                    state,
                    error,
                    checkpoints,
                    ..
                })) => {
                    after = tick;
                    if state == "failed" {
                        self.fail(&BackendError::Failed {
                            backend: id,
                            reason: error.unwrap_or_default(),
                        });
                        return;
                    }
                    self.absorb(&id, tick, checkpoints);
                }
                Ok(Ok(other)) => {
                    self.fail(&BackendError::UnexpectedAnswer {
                        backend: id,
                        answer: Box::new(other),
                    });
                    return;
                }
                Ok(Err(source)) => {
                    self.fail(&BackendError::StoppedAnswering {
                        backend: id,
                        source,
                    });
                    return;
                }
                Err(_) => {
                    self.fail(&BackendError::Stalled {
                        backend: id,
                        silence: limit,
                    });
                    return;
                }
            }
        }
    }

    fn absorb(&self, id: &str, tick: u64, checkpoints: Vec<Checkpoint>) {
        self.state
            .lock()
            .absorb(id, tick, checkpoints, Instant::now());
        self.changed.send_modify(|n| *n += 1);
    }

    /// Records the run's first failure (later ones are consequences, not news) and raises
    /// its alert. After [`ColonyRun::close`], a broken link is expected and not a failure.
    fn fail(&self, reason: &BackendError) {
        if self.cancel.is_cancelled() {
            return;
        }
        if !self.state.lock().fail(reason.to_string()) {
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
    }

    async fn command(&self, id: &str, message: &Message) -> Result<Message, BackendError> {
        let backend = || id.to_owned();
        let Some(client) = self.commands.get(id) else {
            return Err(BackendError::NoLink { backend: backend() });
        };
        let mut client = client.lock().await;
        match patience::within(self.config.stall_timeout, client.request(message)).await {
            Ok(Ok(Message::Error { code, message })) => Err(BackendError::Refused {
                backend: backend(),
                code,
                message,
            }),
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(source)) => Err(BackendError::NoAnswer {
                backend: backend(),
                source,
            }),
            Err(_) => Err(BackendError::Timeout {
                backend: backend(),
                after: self.config.stall_timeout,
            }),
        }
    }

    async fn broadcast(&self, make: impl Fn() -> Message) -> Result<Vec<Message>, BackendError> {
        let ids: Vec<&String> = self.commands.keys().collect();
        let answers = join_all(ids.iter().map(|id| {
            let message = make();
            async move { self.command(id, &message).await }
        }))
        .await;
        let mut out = Vec::new();
        for answer in answers {
            match answer {
                Ok(m) => out.push(m),
                Err(reason) => {
                    self.fail(&reason);
                    return Err(reason);
                }
            }
        }
        Ok(out)
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

    /// Runs `ticks` more ticks; with `wait`, answers once they are done (or the run failed).
    ///
    /// # Errors
    /// [`ColonyError::RunFailed`] if the colony has failed; [`ColonyError::Backend`] if a
    /// backend refuses or does not answer (which fails the run).
    pub async fn run(&self, ticks: u64, wait: bool) -> Result<Value, ColonyError> {
        self.check_not_failed()?;
        let ordered = self.ordering.lock().await;
        let target = {
            let mut s = self.state.lock();
            s.target = s.target.saturating_add(ticks);
            s.paused = false;
            s.target
        };
        let colony_id = self.colony_id.clone();
        let every = self.config.checkpoint_every;
        self.broadcast(|| Message::Run {
            colony_id: colony_id.clone(),
            until_tick: target,
            checkpoint_every: every,
        })
        .await?;
        drop(ordered);
        info!(colony = %self.colony_id, target, "run");
        if wait {
            let mut rx = self.changed.subscribe();
            loop {
                {
                    let s = self.state.lock();
                    if s.failed().is_some() || s.consistent().tick >= target {
                        break;
                    }
                }
                if rx.changed().await.is_err() {
                    break;
                }
            }
        }
        Ok(self.status())
    }

    /// Stops every backend at one common tick (the furthest any had reached).
    ///
    /// # Errors
    /// As [`ColonyRun::run`].
    pub async fn pause(&self) -> Result<Value, ColonyError> {
        self.check_not_failed()?;
        let ordered = self.ordering.lock().await;
        let colony_id = self.colony_id.clone();
        let answers = self
            .broadcast(|| Message::Pause {
                colony_id: colony_id.clone(),
            })
            .await?;
        // Each backend stops at most one tick on; all then meet at the furthest stop.
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
        self.broadcast(|| Message::Run {
            colony_id: colony_id.clone(),
            until_tick: furthest,
            checkpoint_every: every,
        })
        .await?;
        drop(ordered);
        // Answer once every backend has met at that tick (a tick at most away).
        let mut rx = self.changed.subscribe();
        let _ = tokio::time::timeout(self.config.stall_timeout, async {
            loop {
                {
                    let s = self.state.lock();
                    if s.failed().is_some() || s.consistent().tick >= furthest {
                        return;
                    }
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        info!(colony = %self.colony_id, tick = furthest, "paused");
        Ok(self.status())
    }

    /// The body of `GET /colony`.
    pub fn status(&self) -> Value {
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
            "backends": self.topology.backends().len(),
            "shards": self.topology.shard_count(),
            "halo_depth": self.topology.halo_depth(),
        })
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
        ColonyRun::new(
            Arc::new(topology),
            HashMap::new(),
            initial,
            RunConfig::default(),
            Some(health.clone()),
        )
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
        run.absorb("b1", 100, vec![at(100, 3, 1)]);
        assert_eq!(run.status()["tick"], 0, "b2 has not reached 100");
        run.absorb("b2", 100, vec![at(100, 4, u64::MAX)]);
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
        run.fail(&stalled("b1"));
        run.fail(&stalled("b2"));
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
        run.fail(&stalled("b1"));
        assert_eq!(run.status()["state"], "idle");
        assert!(health.alerts().open.is_empty());
    }
}
