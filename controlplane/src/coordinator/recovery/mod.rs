//! The supervisor of a colony's run (DESIGN §14): what the coordinator does when a backend is
//! lost, when the operator asks for a rebalance, and when a restarted coordinator takes over a
//! colony its backends kept. All three are one operation, a **re-placement**:
//!
//! 1. **Hold** runs and pauses, show `recovering`, and stop following the old placement.
//! 2. **Fence**: every candidate backend (those of the old placement; for a rebalance, every
//!    live backend too) is told epoch `e + 1` over a fresh link. It stops ticking, refuses
//!    anything of an older epoch from then on, and answers with the copies it keeps. Those
//!    that do not answer within the stall limit (which discounts the coordinator's own
//!    stalls) are lost; a lost backend that wakes up later can write nowhere: its borders,
//!    copies and reports all carry the old epoch.
//! 3. **Plan** (`plan.rs`): survivors keep their shards and the lost ones' are grown onto them
//!    (a rebalance places all shards afresh over every live backend); for every shard, the
//!    copy at the consistent checkpoint `C` its new owner restores from — its own, or one
//!    fetched from a survivor. A shard no survivor has a copy of fails the run, naming who was
//!    lost (tick 0 needs no copy: it is rebuilt from the world's parameters).
//! 4. **Move** the missing copies (`fetch` from a survivor, `install` on the new owner) and
//!    **restore** every new owner to `C` in epoch `e + 1`. The restored figures must add up
//!    to the colony's figures at `C`, bit for bit; anything else is corruption and fails the
//!    run.
//! 5. **Resume**: the new placement's links, reporters and announcers take over and the run's
//!    target is sent again; the backends compute `C..` once more and reach the same result an
//!    uninterrupted run would. An event (`colony_recovery` on `/ws`) and an alert per lost
//!    backend say who was lost, which shards moved where, and how many ticks were redone.
//!
//! A backend lost while this is under way (a fetch, install or restore finds it gone) makes
//! the attempt start over from the fence with one epoch more; a few attempts in a row without
//! success, or a few re-placements in a row without the colony getting past `C`, fail the
//! run, because something other than a lost backend is wrong.
//!
//! A backend that reports it cannot reach a peer while both still answer (a path between two
//! backends is cut, DESIGN §15) would fail the same way after every re-placement that keeps
//! both, so the re-placement drops one of the two (`plan::side_to_drop`: deterministic,
//! whichever end reports first) and goes on without it, as after a loss. The dropped backend
//! stays a live node (it still heartbeats) and takes shards again at the next colony start or
//! rebalance once the path is healed.
//!
//! The supervisor also watches node health: a backend the health tracker calls DOWN is
//! trouble even if its links still stand (a frozen process keeps its sockets open).

pub mod adopt;
mod attempt;
mod event;
mod plan;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use shared::topology::BackendEntry;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::coordinator::error::{BackendError, ColonyError};
use crate::coordinator::health::events::HealthEvent;
use crate::coordinator::health::node_state::NodeState;
use crate::coordinator::run::{Call, ColonyRun, Trouble};
use attempt::{attempt_once, Setback};
use event::announce;
pub use event::{Moved, RecoveryEvent};

/// Attempts of one re-placement before the run fails.
const ATTEMPTS: usize = 4;
/// Re-placements in a row that end at the same consistent checkpoint before the run fails:
/// the colony keeps failing from the same point, so more of the same will not help.
const FRUITLESS: usize = 3;

/// Settings of re-placements.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecoveryConfig {
    /// Test only: how long a re-placement stays `recovering` after the fence before it moves
    /// copies, so a test can lose another backend meanwhile.
    pub hold_open: Duration,
}

/// What the supervisor works with besides the run.
#[derive(Debug, Clone)]
pub struct Context {
    /// Re-placement settings.
    pub config: RecoveryConfig,
    /// Where `colony_recovery` events go.
    pub events: broadcast::Sender<RecoveryEvent>,
}

/// Why a re-placement was started.
#[derive(Debug)]
enum Mode {
    /// Backends were lost (or an engine failed): survivors keep their shards.
    Lost,
    /// Backend `reporter` cannot reach backend `peer` (DESIGN §15): if both answer the fence
    /// they are both alive and the path between them is cut, so one of them
    /// ([`plan::side_to_drop`]) is dropped from the run as if lost; if one does not answer,
    /// it is simply lost. Survivors keep their shards, as after a loss.
    Partition {
        /// The backend that reported.
        reporter: String,
        /// The peer it cannot reach.
        peer: String,
    },
    /// Spread every shard over these backends (and those of the placement now).
    Rebalance(Vec<BackendEntry>),
    /// A restarted coordinator takes the colony over; its figures at `C` are not known yet.
    Adopt,
}

impl Mode {
    fn kind(&self) -> &'static str {
        match self {
            // A backend dropped to heal a partition is lost to the run like any other.
            Mode::Lost | Mode::Partition { .. } => "backend_lost",
            Mode::Rebalance(_) => "rebalance",
            Mode::Adopt => "adopted",
        }
    }
}

/// Runs the supervisor of `run` until the run ends: re-places the colony on trouble and on
/// request. `adopt` starts with a take-over (a restarted coordinator).
pub async fn supervise(
    run: Arc<ColonyRun>,
    mut calls: mpsc::UnboundedReceiver<Call>,
    context: Context,
    adopt: bool,
) {
    let mut health = run.health().map(|h| h.subscribe());
    let mut fruitless = 0;
    let mut last_restored = None;
    let mut first = adopt.then_some(Mode::Adopt);
    loop {
        let (mode, reply) = match first.take() {
            Some(mode) => (mode, None),
            None => {
                let woken = tokio::select! {
                    biased;
                    _ = run.ended() => return,
                    call = calls.recv() => match call {
                        Some(call) => Woken::Call(call),
                        None => return,
                    },
                    down = next_down(&mut health, &run) => Woken::Down(down),
                };
                match woken {
                    Woken::Down(id) => {
                        warn!(colony = run.colony_id(), backend = %id, "backend is DOWN");
                        (Mode::Lost, None)
                    }
                    // Troubles of a placement already replaced were its consequences.
                    Woken::Call(Call::Trouble(t)) if t.epoch != run.epoch() => continue,
                    Woken::Call(Call::Trouble(t)) => (partition_or_lost(&run, &t), None),
                    Woken::Call(Call::Rebalance { backends, reply }) => {
                        (Mode::Rebalance(backends), Some(reply))
                    }
                }
            }
        };
        match replace(&run, &mode, &context).await {
            Ok(event) => {
                // A colony that keeps failing from the same checkpoint has a problem no
                // re-placement solves.
                fruitless = match (&mode, last_restored) {
                    (Mode::Lost | Mode::Partition { .. }, Some(tick))
                        if tick == event.restored_tick =>
                    {
                        fruitless + 1
                    }
                    _ => 1,
                };
                last_restored = Some(event.restored_tick);
                if fruitless > FRUITLESS {
                    run.fail(format!(
                        "the colony went back to tick {} {fruitless} times in a row and failed again each time",
                        event.restored_tick
                    ));
                }
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(run.status()));
                }
            }
            Err(reason) => {
                run.fail(reason.clone());
                if let Some(reply) = reply {
                    let _ = reply.send(Err(ColonyError::RunFailed {
                        colony_id: run.colony_id().to_owned(),
                        reason,
                    }));
                }
                return;
            }
        }
    }
}

/// The re-placement a trouble calls for: a backend that says it cannot reach a peer of the
/// placement in force names a possible partition; anything else is a loss.
fn partition_or_lost(run: &ColonyRun, trouble: &Trouble) -> Mode {
    match &trouble.error {
        BackendError::Failed {
            backend,
            unreachable_peer: Some(peer),
            ..
        } if peer != backend && run.placement().backends().any(|b| b == peer) => {
            warn!(colony = run.colony_id(), backend = %backend, peer = %peer, "a backend cannot reach a peer");
            Mode::Partition {
                reporter: backend.clone(),
                peer: peer.clone(),
            }
        }
        _ => Mode::Lost,
    }
}

/// What woke the supervisor.
enum Woken {
    Call(Call),
    Down(String),
}

/// The next backend of the placement in force that the health tracker calls DOWN.
async fn next_down(
    health: &mut Option<broadcast::Receiver<HealthEvent>>,
    run: &ColonyRun,
) -> String {
    let Some(rx) = health else {
        return std::future::pending().await;
    };
    loop {
        match rx.recv().await {
            Ok(HealthEvent::ServiceStateChanged {
                node_id,
                transition,
                ..
            }) if transition.to == NodeState::Down
                && run.placement().backends().any(|b| *b == node_id) =>
            {
                return node_id;
            }
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => {
                return std::future::pending().await;
            }
        }
    }
}

/// Re-places the colony (see the module docs). Returns what it did, or why the run fails.
async fn replace(
    run: &Arc<ColonyRun>,
    mode: &Mode,
    context: &Context,
) -> Result<RecoveryEvent, String> {
    let started = Instant::now();
    // A rebalance happens at the next checkpoint: every backend stops at one tick, which
    // becomes consistent, and the shards move there without a tick redone.
    let resume = match mode {
        Mode::Rebalance(_) => Some(run.halt_at_next_checkpoint().await),
        _ => None,
    };
    let ordered = run.hold_targets().await;
    if let Some(resume) = resume {
        run.resume_target(resume);
    }
    run.set_recovering(true);
    let old = run.placement();
    old.cancel.cancel();
    let consistent = run.consistent();
    let furthest = run.furthest().max(consistent.tick);
    let mut candidates: Vec<BackendEntry> = dataplane::ring(&old.topology)
        .into_iter()
        .filter_map(|id| old.topology.backend(id).cloned())
        .collect();
    if let Mode::Rebalance(backends) = mode {
        for b in backends {
            if !candidates.iter().any(|c| c.instance_id == b.instance_id) {
                candidates.push(b.clone());
            }
        }
    }
    let ring: BTreeSet<String> = candidates.iter().map(|b| b.instance_id.clone()).collect();
    let mut epoch = run.epoch().max(old.epoch);
    let mut setback = String::new();
    for attempt in 1..=ATTEMPTS {
        epoch += 1;
        info!(
            colony = run.colony_id(),
            epoch,
            attempt,
            mode = mode.kind(),
            "placing the colony again"
        );
        match attempt_once(run, mode, context, &old, &candidates, epoch, consistent).await {
            Ok((event_base, survivors)) => {
                drop(ordered);
                let lost: Vec<String> = ring.difference(&survivors).cloned().collect();
                let event = RecoveryEvent {
                    colony_id: run.colony_id().to_owned(),
                    kind: mode.kind(),
                    epoch,
                    lost,
                    ticks_redone: furthest
                        .max(event_base.ticks_redone)
                        .saturating_sub(event_base.restored_tick),
                    took_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    ..event_base
                };
                announce(run, &event);
                let _ = context.events.send(event.clone());
                return Ok(event);
            }
            Err(Setback::Lost(who)) => {
                warn!(colony = run.colony_id(), epoch, backend = %who, "lost during the re-placement; trying again without it");
                candidates.retain(|b| b.instance_id != who);
                setback = format!("{who} was lost too");
            }
            Err(Setback::Fatal(reason)) => return Err(reason),
        }
    }
    Err(format!(
        "the colony could not be placed again in {ATTEMPTS} attempts ({setback})"
    ))
}
