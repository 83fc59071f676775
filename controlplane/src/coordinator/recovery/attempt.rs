//! One attempt of a re-placement (the steps of the module docs of [`super`]): fence the
//! candidates, plan, move the copies, restore the owners, check the figures, and hand the new
//! placement to the run. A backend lost on the way is a [`Setback::Lost`]: the caller tries
//! again without it, one epoch up.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use codec::{Checkpoint, Message, ShardCells};
use dataplane::Client;
use futures::future::join_all;
use shared::topology::{BackendEntry, ShardCoord};
use tracing::{info, warn};

use super::event::{Moved, RecoveryEvent};
use super::plan::{self, PlanError, Source};
use super::{Context, Mode};
use crate::coordinator::error::BackendError;
use crate::coordinator::run::{connect, within, ColonyRun, Placement};

/// Bytes of cells per `install` message at most (one shard always goes).
const INSTALL_BYTES: usize = 1 << 20;

/// Why one attempt did not finish.
pub(super) enum Setback {
    /// A backend was lost during the attempt: try again without it.
    Lost(String),
    /// The run cannot go on.
    Fatal(String),
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

/// One attempt of a re-placement in epoch `epoch`; the event (without the lost list and
/// timings) and the backends that hold shards now.
pub(super) async fn attempt_once(
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
    // A cut between two backends that both answered: drop one side, deterministically.
    if let Mode::Partition { reporter, peer } = mode {
        if fenced.contains_key(reporter) && fenced.contains_key(peer) {
            let dropped = plan::side_to_drop(&old.topology, reporter, peer).to_owned();
            warn!(colony = %colony_id, %reporter, %peer, %dropped, "both ends of a cut path answer; dropping one from the run");
            fenced.remove(&dropped);
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
        Mode::Lost | Mode::Partition { .. } | Mode::Adopt => {
            plan::keep_and_fill(&old.topology, &survivors)
        }
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
