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
//! The supervisor also watches node health: a backend the health tracker calls DOWN is
//! trouble even if its links still stand (a frozen process keeps its sockets open).

pub mod adopt;
mod plan;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use codec::{Checkpoint, Message, ShardCells};
use dataplane::Client;
use futures::future::join_all;
use serde::Serialize;
use shared::topology::{BackendEntry, ShardCoord};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::coordinator::error::{BackendError, ColonyError};
use crate::coordinator::health::events::HealthEvent;
use crate::coordinator::health::node_state::NodeState;
use crate::coordinator::run::{connect, within, Call, ColonyRun, Placement};
use plan::{PlanError, Source};

/// Attempts of one re-placement before the run fails.
const ATTEMPTS: usize = 4;
/// Re-placements in a row that end at the same consistent checkpoint before the run fails:
/// the colony keeps failing from the same point, so more of the same will not help.
const FRUITLESS: usize = 3;
/// Bytes of cells per `install` message at most (one shard always goes).
const INSTALL_BYTES: usize = 1 << 20;

/// Settings of re-placements.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecoveryConfig {
    /// Test only: how long a re-placement stays `recovering` after the fence before it moves
    /// copies, so a test can lose another backend meanwhile.
    pub hold_open: Duration,
}

/// What a re-placement did: the `colony_recovery` event's data.
#[derive(Debug, Clone, Serialize)]
pub struct RecoveryEvent {
    /// The colony.
    pub colony_id: String,
    /// `backend_lost`, `rebalance` or `adopted`.
    pub kind: &'static str,
    /// The placement now in force.
    pub epoch: u64,
    /// Backends given up on.
    pub lost: Vec<String>,
    /// Shards that changed hands.
    pub moved: Vec<Moved>,
    /// The consistent checkpoint the colony went back to.
    pub restored_tick: u64,
    /// Ticks computed again: from the furthest tick reached back to `restored_tick`.
    pub ticks_redone: u64,
    /// Backends holding shards now.
    pub backends: usize,
    /// How long it took, in milliseconds.
    pub took_ms: u64,
}

/// One shard that changed hands.
#[derive(Debug, Clone, Serialize)]
pub struct Moved {
    /// The shard.
    pub shard: ShardCoord,
    /// Its owner before.
    pub from: String,
    /// Its owner now.
    pub to: String,
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
    /// Spread every shard over these backends (and those of the placement now).
    Rebalance(Vec<BackendEntry>),
    /// A restarted coordinator takes the colony over; its figures at `C` are not known yet.
    Adopt,
}

impl Mode {
    fn kind(&self) -> &'static str {
        match self {
            Mode::Lost => "backend_lost",
            Mode::Rebalance(_) => "rebalance",
            Mode::Adopt => "adopted",
        }
    }
}

/// Why one attempt did not finish.
enum Setback {
    /// A backend was lost during the attempt: try again without it.
    Lost(String),
    /// The run cannot go on.
    Fatal(String),
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
                    Woken::Call(Call::Trouble(_)) => (Mode::Lost, None),
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
                    (Mode::Lost, Some(tick)) if tick == event.restored_tick => fruitless + 1,
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

/// One backend that answered the fence: its link and the shards it keeps a copy of at the
/// consistent checkpoint.
struct Fenced {
    entry: BackendEntry,
    link: Client,
    /// The tick its shards had reached.
    tick: u64,
    held: BTreeSet<ShardCoord>,
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

/// One attempt of a re-placement in epoch `epoch`; the event (without the lost list and
/// timings) and the backends that hold shards now.
async fn attempt_once(
    run: &Arc<ColonyRun>,
    mode: &Mode,
    context: &Context,
    old: &Placement,
    candidates: &[BackendEntry],
    epoch: u64,
    consistent: Checkpoint,
) -> Result<(RecoveryEvent, BTreeSet<String>), Setback> {
    let colony_id = run.colony_id().to_owned();
    let patience = run.config().stall_timeout;
    run.fencing(epoch);
    // 1. Fence every candidate at once; those that answer survive.
    let mut reached = 0;
    let fences = candidates.iter().map(|b| fence(run, b, epoch, patience));
    let mut fenced: BTreeMap<String, Fenced> = BTreeMap::new();
    for (b, answer) in candidates.iter().zip(join_all(fences).await) {
        match answer {
            Ok(f) => {
                reached = reached.max(f.tick);
                fenced.insert(b.instance_id.clone(), f);
            }
            Err(e) => {
                warn!(colony = %colony_id, backend = %b.instance_id, error = %e, "backend did not answer the fence; giving it up")
            }
        }
    }
    // The checkpoint to go back to: the newest consistent one (when taking a colony over,
    // the newest any backend was told; every backend keeps its copies of that one).
    let tick = consistent.tick;
    let held_at: BTreeMap<String, BTreeSet<ShardCoord>> = fenced
        .iter()
        .map(|(id, f)| (id.clone(), f.held.clone()))
        .collect();
    // 2. The new placement and where each shard's copy comes from.
    let survivors: BTreeSet<String> = fenced.keys().cloned().collect();
    let new = match mode {
        Mode::Rebalance(_) => plan::spread(
            &old.topology,
            fenced.values().map(|f| f.entry.clone()).collect(),
        ),
        Mode::Lost | Mode::Adopt => plan::keep_and_fill(&old.topology, &survivors),
    }
    .map_err(|e| Setback::Fatal(e.to_string()))?;
    let sources = plan::sources(&old.topology, &new, &held_at, tick).map_err(|e| match e {
        PlanError::NoCopy { .. } | PlanError::NoSurvivor | PlanError::Topology(_) => {
            Setback::Fatal(e.to_string())
        }
    })?;
    if !context.config.hold_open.is_zero() {
        info!(colony = %colony_id, hold = ?context.config.hold_open, "holding the re-placement open (test setting)");
        tokio::time::sleep(context.config.hold_open).await;
    }
    // 3. Move the copies that are not where they are needed.
    let mut wanted: BTreeMap<String, Vec<(ShardCoord, String)>> = BTreeMap::new();
    for (shard, (owner, source)) in &sources {
        if let Source::From(from) = source {
            wanted
                .entry(owner.clone())
                .or_default()
                .push((*shard, from.clone()));
        }
    }
    for (owner, shards) in wanted {
        let mut cells = Vec::new();
        for (shard, from) in shards {
            let link = fenced
                .get_mut(&from)
                .ok_or_else(|| Setback::Lost(from.clone()))?;
            let fetch = Message::Fetch {
                colony_id: colony_id.clone(),
                tick,
                x: shard.x,
                y: shard.y,
            };
            match ask(&mut link.link, &fetch, patience).await {
                Ok(Message::Cells { cells: c, .. }) => cells.push(c),
                Ok(other) => {
                    return Err(Setback::Fatal(format!(
                        "{from} answered a fetch with {other:?}"
                    )))
                }
                Err(AskError::Refused(e)) => {
                    return Err(Setback::Fatal(format!(
                        "{from} could not give shard {shard}: {e}"
                    )))
                }
                Err(AskError::Gone) => return Err(Setback::Lost(from)),
            }
        }
        let link = fenced
            .get_mut(&owner)
            .ok_or_else(|| Setback::Lost(owner.clone()))?;
        for chunk in chunks(cells) {
            let install = Message::Install {
                colony_id: colony_id.clone(),
                epoch,
                tick,
                shards: chunk,
            };
            match ask(&mut link.link, &install, patience).await {
                Ok(_) => {}
                Err(AskError::Refused(e)) => {
                    return Err(Setback::Fatal(format!("{owner} refused copies: {e}")))
                }
                Err(AskError::Gone) => return Err(Setback::Lost(owner)),
            }
        }
    }
    // 4. Restore every owner of the new placement.
    let topology_json = serde_json::to_string(&new).map_err(|e| Setback::Fatal(e.to_string()))?;
    let owners: Vec<String> = dataplane::ring(&new)
        .into_iter()
        .map(str::to_owned)
        .collect();
    let mut figures = Checkpoint {
        tick,
        population: 0,
        fingerprint: 0,
    };
    let every = run.config().checkpoint_every;
    let restores = owners.iter().map(|id| {
        let link = fenced.remove(id);
        let restore = Message::Restore {
            colony_id: colony_id.clone(),
            epoch,
            topology: topology_json.clone(),
            tick,
            checkpoint_every: every,
        };
        async move {
            let Some(mut f) = link else {
                return (id.clone(), None, Err(AskError::Gone));
            };
            let answer = ask(&mut f.link, &restore, patience).await;
            (id.clone(), Some(f), answer)
        }
    });
    let mut links: HashMap<String, Client> = HashMap::new();
    for (id, f, answer) in join_all(restores).await {
        match answer {
            Ok(Message::Restored { figures: f_at, .. }) if f_at.tick == tick => {
                figures.population += f_at.population;
                figures.fingerprint = figures.fingerprint.wrapping_add(f_at.fingerprint);
                if let Some(f) = f {
                    links.insert(id, f.link);
                }
            }
            Ok(other) => {
                return Err(Setback::Fatal(format!(
                    "{id} answered a restore with {other:?}"
                )))
            }
            Err(AskError::Refused(e)) => {
                return Err(Setback::Fatal(format!("{id} could not restore: {e}")))
            }
            Err(AskError::Gone) => return Err(Setback::Lost(id)),
        }
    }
    // 5. The figures must be the colony's at that checkpoint, bit for bit.
    let known = !matches!(mode, Mode::Adopt) && consistent.tick == tick;
    if known
        && (figures.population, figures.fingerprint)
            != (consistent.population, consistent.fingerprint)
    {
        return Err(Setback::Fatal(format!(
            "restored shards do not add up to the colony at tick {tick}: population {} and fingerprint {} instead of {} and {}",
            figures.population, figures.fingerprint, consistent.population, consistent.fingerprint
        )));
    }
    // 6. The new placement takes over.
    let new = Arc::new(new);
    let mut reports = HashMap::new();
    for id in &owners {
        let Some(address) = new.backend(id).map(|b| b.address.to_internal_address()) else {
            continue;
        };
        match within(patience, connect(&address, run.identity())).await {
            Ok(Ok(client)) => {
                reports.insert(id.clone(), client);
            }
            _ => return Err(Setback::Lost(id.clone())),
        }
    }
    let placement = Arc::new(Placement::new(
        new.clone(),
        epoch,
        links,
        run.identity().clone(),
        patience,
        run.child_token(),
        tick,
    ));
    let moved = plan::moves(&old.topology, &new)
        .into_iter()
        .map(|(shard, from, to)| Moved { shard, from, to })
        .collect();
    if let Err(e) = run.take_placement(placement, reports, figures).await {
        // Reported as trouble too: the supervisor handles it next.
        warn!(colony = %colony_id, epoch, error = %e, "a backend did not take the run's target");
    }
    let survivors = owners.into_iter().collect();
    let event = RecoveryEvent {
        colony_id,
        kind: mode.kind(),
        epoch,
        lost: Vec::new(),
        moved,
        restored_tick: tick,
        // The furthest tick a survivor had reached (the caller knows it better, unless this
        // is a take-over).
        ticks_redone: reached,
        backends: new.backends().len(),
        took_ms: 0,
    };
    Ok((event, survivors))
}

/// Why a request during a re-placement got no useful answer.
enum AskError {
    /// The backend answered with an error frame.
    Refused(String),
    /// It did not answer: gone, or frozen past the stall limit.
    Gone,
}

async fn ask(
    link: &mut Client,
    message: &Message,
    patience: Duration,
) -> Result<Message, AskError> {
    match within(patience, link.request(message)).await {
        Ok(Ok(Message::Error { code, message })) => {
            Err(AskError::Refused(format!("{code}: {message}")))
        }
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(_)) | Err(_) => Err(AskError::Gone),
    }
}

/// Fences `backend` at `epoch` over a fresh link; the link and what it keeps.
async fn fence(
    run: &ColonyRun,
    backend: &BackendEntry,
    epoch: u64,
    patience: Duration,
) -> Result<Fenced, BackendError> {
    let address = backend.address.to_internal_address();
    let id = backend.instance_id.clone();
    let mut link = within(patience, connect(&address, run.identity()))
        .await
        .map_err(|_| BackendError::Timeout {
            backend: id.clone(),
            after: patience,
        })?
        .map_err(|source| BackendError::Unreachable {
            backend: id.clone(),
            address: address.clone(),
            source,
        })?;
    let request = Message::Fence {
        colony_id: run.colony_id().to_owned(),
        epoch,
    };
    match ask(&mut link, &request, patience).await {
        Ok(Message::Inventory {
            copies,
            tick: reached,
            ..
        }) => {
            let tick = run.consistent().tick;
            let held = copies
                .into_iter()
                .filter(|c| c.tick == tick)
                .flat_map(|c| c.shards)
                .map(|s| ShardCoord::new(s.x, s.y))
                .collect();
            Ok(Fenced {
                entry: backend.clone(),
                link,
                tick: reached,
                held,
            })
        }
        Ok(other) => Err(BackendError::UnexpectedAnswer {
            backend: id,
            answer: Box::new(other),
        }),
        Err(AskError::Refused(message)) => Err(BackendError::Refused {
            backend: id,
            code: "fence".into(),
            message,
        }),
        Err(AskError::Gone) => Err(BackendError::Timeout {
            backend: id,
            after: patience,
        }),
    }
}

/// `cells` in groups of at most [`INSTALL_BYTES`] of cells.
fn chunks(cells: Vec<ShardCells>) -> Vec<Vec<ShardCells>> {
    let mut out = Vec::new();
    let mut batch = Vec::new();
    let mut bytes = 0;
    for c in cells {
        if bytes + c.bits.len() > INSTALL_BYTES && !batch.is_empty() {
            out.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += c.bits.len();
        batch.push(c);
    }
    if !batch.is_empty() {
        out.push(batch);
    }
    out
}

/// Logs the re-placement and raises an alert per lost backend, naming the shards moved and
/// the ticks redone.
fn announce(run: &ColonyRun, event: &RecoveryEvent) {
    let moved: Vec<String> = event
        .moved
        .iter()
        .map(|m| format!("{} {}→{}", m.shard, m.from, m.to))
        .collect();
    info!(
        colony = %event.colony_id,
        kind = event.kind,
        epoch = event.epoch,
        lost = ?event.lost,
        moved = moved.len(),
        restored_tick = event.restored_tick,
        ticks_redone = event.ticks_redone,
        took_ms = event.took_ms,
        "colony placed again"
    );
    let Some(health) = run.health() else {
        return;
    };
    for lost in &event.lost {
        let theirs: Vec<&str> = event
            .moved
            .iter()
            .zip(&moved)
            .filter(|(m, _)| m.from == *lost)
            .map(|(_, text)| text.as_str())
            .collect();
        health.raise_alert(
            lost,
            "backend_lost",
            "critical",
            format!(
                "{lost} was lost from colony {}: shards moved {}; back to tick {}, {} ticks redone (epoch {})",
                event.colony_id,
                if theirs.is_empty() { "none".to_owned() } else { theirs.join(", ") },
                event.restored_tick,
                event.ticks_redone,
                event.epoch
            ),
        );
    }
}
