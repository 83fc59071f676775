//! [`RemoteServices`]: the coordinator's view of the services deployed on its backends
//! (DESIGN §16), so `/ws` and the dashboard list and drive them beside its own.
//!
//! The coordinator polls: every `--deploy-poll-interval` it asks each live backend for its
//! services (`GET /deploy/services`, a signed node call, [`Forwarder::services`]) and turns
//! what changed since the last answer into the events its own services send:
//! `service_state_changed` when a state, version or pid changed, `health_check_result` when a
//! newer health check is there. Polling rather than the backends reporting to the coordinator
//! because: the coordinator already knows every live backend and where its control plane is,
//! while a backend would have to find the coordinator (which may move on a take-over); a
//! coordinator that restarts knows every remote service again after one round, where pushed
//! events sent while it was away would be lost; an answer is the whole state, so a missed
//! round costs latency, never a wrong view; and no route on the coordinator has to accept
//! writes from nodes. The price: changes show up to one interval late, and of several health
//! checks between two rounds only the last is relayed.
//!
//! A backend whose heartbeats carry a digest of its services
//! ([`crate::wire::heartbeat::DEPLOYED_DIGEST_METRIC`]) is asked only when the digest differs
//! from that of the list it last answered, and one whose digest says it has no services is
//! not asked at all: at 10 000 backends, asking each every interval was thousands of
//! connections a second, and a fifth of the coordinator's CPU. A backend whose heartbeats
//! carry no digest (an older build) is asked every interval.
//!
//! A backend that does not answer is asked less often, one round skipped after its first
//! miss, then 3, 7, up to `MAX_SKIPPED_ROUNDS`: every heartbeating backend is polled, and
//! nodes that heartbeat but serve no control plane (thousands of them in the heartbeat flood
//! test) made the coordinator spend about half its CPU opening connections that were refused.
//!
//! A service seen for the first time (deployed just now, or known again after a coordinator
//! restart) is announced with `from: "unknown"`. Actions on a remote service and forwarded
//! deployments record the backend's answer at once, so what the caller then lists matches
//! what it was answered. A backend that is no
//! longer live (DOWN, LEFT, forgotten) takes its services out of the view: they stop with
//! their node, and the coordinator cannot vouch for them.
//!
//! Not here: which backends are live ([`crate::ws::deployed::live_backends`] reads the health
//! tracker), nor the `/ws` answers.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::deploy::error::DeployError;
use crate::deploy::forward::Forwarder;
use crate::deploy::lifecycle::{digest_of, DeployEvent};
use crate::deploy::service::ServiceEntry;

/// Backends asked at once in a polling round.
const POLL_CONCURRENCY: usize = 8;
/// In [`Misses::digests`]: the node's list was last changed by an answer to an action or a
/// deployment, newer than any digest heard so far (a digest is at most 2^52).
const RECORDED: u64 = u64::MAX;
/// Most rounds a backend that keeps not answering is left out of in a row.
const MAX_SKIPPED_ROUNDS: u64 = 15;

/// A live backend: where to ask for its services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Its instance id.
    pub node: String,
    /// Its control plane. An address, not its text: a round formats only those it asks, of
    /// thousands of live backends.
    pub control: SocketAddr,
    /// The digest of its services its last heartbeat carried, if it carries one.
    pub digest: Option<u64>,
}

/// The services deployed on the backends, as last heard. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RemoteServices {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    forwarder: Forwarder,
    /// By backend, then by service name.
    nodes: parking_lot::Mutex<BTreeMap<String, BTreeMap<String, ServiceEntry>>>,
    events: broadcast::Sender<DeployEvent>,
    misses: parking_lot::Mutex<Misses>,
}

/// The polling rounds so far, and the backends that did not answer their last ones.
#[derive(Debug, Default)]
struct Misses {
    round: u64,
    /// By backend: rounds missed in a row, and the round it is asked again.
    by_node: HashMap<String, (u32, u64)>,
    /// By backend: the digest of the list it last answered, or [`RECORDED`].
    digests: HashMap<String, u64>,
    /// The live backends of the last round, sorted.
    live: Vec<String>,
    /// Something may have been recorded of a backend not in `live` since the last round.
    dirty: bool,
}

impl RemoteServices {
    /// Backends' services, reached through `forwarder`.
    pub fn new(forwarder: Forwarder) -> Self {
        let (events, _) = broadcast::channel(1024);
        RemoteServices {
            inner: Arc::new(Inner {
                forwarder,
                nodes: parking_lot::Mutex::new(BTreeMap::new()),
                events,
                misses: parking_lot::Mutex::new(Misses::default()),
            }),
        }
    }

    /// What reaches the backends.
    pub fn forwarder(&self) -> &Forwarder {
        &self.inner.forwarder
    }

    /// Changes to backends' services, as [`DeployEvent`]s; [`DeployEvent::NodeGone`] when a
    /// backend's services leave the view.
    pub fn subscribe(&self) -> broadcast::Receiver<DeployEvent> {
        self.inner.events.subscribe()
    }

    /// Every service of every backend, by backend then name.
    pub fn list(&self) -> Vec<ServiceEntry> {
        self.inner
            .nodes
            .lock()
            .values()
            .flat_map(|services| services.values().cloned())
            .collect()
    }

    /// The services named `name`, on whichever backends have one.
    pub fn find(&self, name: &str) -> Vec<ServiceEntry> {
        self.inner
            .nodes
            .lock()
            .values()
            .filter_map(|services| services.get(name).cloned())
            .collect()
    }

    /// Records one service of `node` as a backend answered it, announcing what changed.
    pub fn record(&self, node: &str, entry: ServiceEntry) {
        let entry = located(node, entry);
        // Until the node's list is asked for again, no digest heard so far describes it.
        {
            let mut misses = self.inner.misses.lock();
            misses.digests.insert(node.to_owned(), RECORDED);
            misses.dirty = true;
        }
        let old = self
            .inner
            .nodes
            .lock()
            .entry(node.to_owned())
            .or_default()
            .insert(entry.name.clone(), entry.clone());
        self.announce(node, old.as_ref(), &entry);
    }

    /// Replaces what is known of `node` by its whole list, announcing what changed.
    pub fn replace(&self, node: &str, entries: Vec<ServiceEntry>) {
        self.inner.misses.lock().dirty = true;
        self.replace_live(node, entries);
    }

    /// [`Self::replace`] for a backend of the polling round under way, which is live.
    fn replace_live(&self, node: &str, entries: Vec<ServiceEntry>) {
        let fresh: BTreeMap<String, ServiceEntry> = entries
            .into_iter()
            .map(|e| (e.name.clone(), located(node, e)))
            .collect();
        let old = self
            .inner
            .nodes
            .lock()
            .insert(node.to_owned(), fresh.clone())
            .unwrap_or_default();
        for entry in fresh.values() {
            self.announce(node, old.get(&entry.name), entry);
        }
    }

    /// Forgets the backends that are not `live`, announcing each one forgotten that had
    /// services.
    pub fn keep_only(&self, live: impl Fn(&str) -> bool) {
        let gone: Vec<String> = {
            let mut nodes = self.inner.nodes.lock();
            let gone: Vec<String> = nodes
                .iter()
                .filter(|(node, services)| !live(node) && !services.is_empty())
                .map(|(node, _)| node.clone())
                .collect();
            nodes.retain(|node, _| live(node));
            gone
        };
        for node in gone {
            debug!(node = %node, "backend no longer live; its deployed services leave the view");
            let _ = self.inner.events.send(DeployEvent::NodeGone { node });
        }
    }

    /// Runs `action` (`start`, `stop`, `restart`) on the service `name` of `backend` and
    /// records the answer.
    ///
    /// # Errors
    /// As [`Forwarder::act`].
    pub async fn act(
        &self,
        backend: &Backend,
        name: &str,
        action: &str,
    ) -> Result<ServiceEntry, DeployError> {
        let entry = self
            .inner
            .forwarder
            .act(&backend.control.to_string(), name, action)
            .await?;
        self.record(&backend.node, entry.clone());
        Ok(located(&backend.node, entry))
    }

    /// One polling round over `backends`: each one's list replaces what was known of it (a
    /// backend that does not answer keeps its last list until it is no longer live, and is
    /// asked again only after some rounds), and backends not among them are forgotten.
    ///
    /// A round whose live backends are those of the last round, with nothing recorded
    /// meanwhile, forgets nothing and skips looking: at 10 000 backends every 2 s, a set of
    /// their names and three passes over it were most of a round's cost, for no change.
    ///
    /// Returns, for a round that asked nobody and had every backend's digest (idle), the
    /// first later round in which a backend that missed is due (`u64::MAX` for none): until
    /// then, the same backends make idle rounds too. `None` for a round that was not idle.
    pub async fn poll_once(&self, mut backends: Vec<Backend>) -> Option<u64> {
        // Already in order from the health tracker, so this only checks it.
        backends.sort_by(|a, b| a.node.cmp(&b.node));
        // A backend without a digest is asked every round: no round is ever idle.
        let all_digests = backends.iter().all(|b| b.digest.is_some());
        let (round, due, forget, idle) = {
            let mut misses = self.inner.misses.lock();
            misses.round += 1;
            let round = misses.round;
            let same = !misses.dirty
                && misses.live.len() == backends.len()
                && misses.live.iter().zip(&backends).all(|(a, b)| *a == b.node);
            if !same {
                misses.live = backends.iter().map(|b| b.node.clone()).collect();
                misses.dirty = false;
                let Misses {
                    by_node,
                    digests,
                    live,
                    ..
                } = &mut *misses;
                let is_live = |node: &String| live.binary_search(node).is_ok();
                by_node.retain(|node, _| is_live(node));
                digests.retain(|node, _| is_live(node));
            }
            let mut empty = Vec::new();
            let due: Vec<Backend> = backends
                .into_iter()
                .filter(|b| match (b.digest, misses.digests.get(&b.node).copied()) {
                    (Some(d), Some(known)) if known == d => false,
                    // Unless an action's answer is newer than the heartbeat saying so.
                    (Some(0), known) if known != Some(RECORDED) => {
                        empty.push(b.node.clone());
                        false
                    }
                    _ => misses
                        .by_node
                        .get(&b.node)
                        .is_none_or(|&(_, next)| next <= round),
                })
                .collect();
            for node in &empty {
                misses.by_node.remove(node);
                misses.digests.insert(node.clone(), 0);
            }
            drop(misses);
            let idle = all_digests && due.is_empty() && empty.is_empty();
            // Their digests say they have no services: nothing to ask.
            for node in empty {
                self.replace_live(&node, Vec::new());
            }
            (round, due, !same, idle)
        };
        let forwarder = self.inner.forwarder.clone();
        let mut answers = futures::stream::iter(due)
            .map(|backend| {
                let forwarder = forwarder.clone();
                async move {
                    let answer = forwarder.services(&backend.control.to_string()).await;
                    (backend, answer)
                }
            })
            .buffer_unordered(POLL_CONCURRENCY);
        while let Some((backend, answer)) = answers.next().await {
            match answer {
                Ok(entries) => {
                    {
                        let mut misses = self.inner.misses.lock();
                        misses.by_node.remove(&backend.node);
                        // The digest of the list answered, not of the heartbeat that made
                        // it due: the list may have moved on (and back) since.
                        misses
                            .digests
                            .insert(backend.node.clone(), digest_of(&entries));
                    }
                    self.replace_live(&backend.node, entries);
                }
                // Debug: a backend that just went away fails every round until it is DOWN.
                Err(e) => {
                    self.missed(&backend.node, round);
                    debug!(node = %backend.node, error = %e, "cannot list a backend's deployed services")
                }
            }
        }
        // Also when a backend's services were recorded while this round waited: it may not
        // be live.
        if forget || self.inner.misses.lock().dirty {
            let live = self.inner.misses.lock().live.clone();
            self.keep_only(|node| live.binary_search_by(|l| l.as_str().cmp(node)).is_ok());
        }
        let misses = self.inner.misses.lock();
        // A backend whose retry round is past was not due here only because its digest is
        // the one answered last: it stays so while the live backends stand still.
        (idle && !misses.dirty).then(|| {
            misses
                .by_node
                .values()
                .map(|&(_, next)| next)
                .filter(|&next| next > round)
                .min()
                .unwrap_or(u64::MAX)
        })
    }

    /// Counts a round skipped because nothing can be due in it: the last round was idle
    /// and left the first backoff ending at round `until`, and the live backends have not
    /// changed since (the caller checked). False, counting nothing, when a round is due.
    fn skip_round(&self, until: u64) -> bool {
        let mut misses = self.inner.misses.lock();
        let skip = !misses.dirty && misses.round + 1 < until;
        if skip {
            misses.round += 1;
        }
        skip
    }

    /// `node` did not answer in `round`: it sits out 1, 3, 7, then [`MAX_SKIPPED_ROUNDS`].
    fn missed(&self, node: &str, round: u64) {
        let mut misses = self.inner.misses.lock();
        let (in_a_row, next) = misses.by_node.entry(node.to_owned()).or_insert((0, 0));
        *in_a_row = in_a_row.saturating_add(1);
        let skipped = (1u64 << (*in_a_row).min(8)).saturating_sub(1);
        *next = round + skipped.min(MAX_SKIPPED_ROUNDS) + 1;
    }

    /// Polls `backends()` every `every` until `token` is cancelled.
    ///
    /// `changes()` must move whenever `backends()` may answer otherwise (the health
    /// tracker's [`crate::coordinator::health::tracker::HealthTracker::live_changes`]). After a round
    /// that was idle (every backend's digest known and matched, nothing to ask), the rounds
    /// are skipped without listing anyone while it stands still, up to the first round a
    /// backend that missed is due again: at 10 000 backends, listing and sorting them every
    /// round cost a tenth of what their heartbeats did.
    pub async fn poll(
        self,
        changes: impl Fn() -> u64 + Send + 'static,
        backends: impl Fn() -> Vec<Backend> + Send + 'static,
        every: Duration,
        token: CancellationToken,
    ) {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The count the last idle round saw, and the round its backoffs allow skipping to.
        let mut idle: Option<(u64, u64)> = None;
        loop {
            tokio::select! {
                biased;
                _ = token.cancelled() => return,
                _ = ticks.tick() => {}
            }
            // Read before the list: a change after it moves the count for the next round.
            let seen = changes();
            if idle.is_some_and(|(at, until)| at == seen && self.skip_round(until)) {
                continue;
            }
            tokio::select! {
                biased;
                _ = token.cancelled() => return,
                until = self.poll_once(backends()) => idle = until.map(|until| (seen, until)),
            }
        }
    }

    /// Sends the events `entry` makes of what `old` was.
    fn announce(&self, node: &str, old: Option<&ServiceEntry>, entry: &ServiceEntry) {
        // A restart between two rounds leaves the state as it was, with another pid or
        // version: still a change a viewer must see.
        let moved = old.is_none_or(|o| {
            o.state != entry.state || o.version != entry.version || o.execution != entry.execution
        });
        if moved {
            let _ = self.inner.events.send(DeployEvent::StateChanged {
                from: old.map_or("unknown", |o| o.state.name()),
                service: Box::new(entry.clone()),
            });
        }
        if let Some(status) = &entry.last_health_check {
            if old.and_then(|o| o.last_health_check.as_ref()) != Some(status) {
                let _ = self.inner.events.send(DeployEvent::Health {
                    service: entry.name.clone(),
                    node: node.to_owned(),
                    status: status.clone(),
                });
            }
        }
    }
}

/// `entry` placed on `node`: the backend that answered is where it runs, whatever the entry
/// says.
fn located(node: &str, mut entry: ServiceEntry) -> ServiceEntry {
    node.clone_into(&mut entry.location.node);
    entry
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::deploy::service::{Execution, HealthStatus, Location, ServiceState};

    fn remote() -> RemoteServices {
        let secret = shared::secret::ClusterSecret::from_env_value("remote-services-secret-01")
            .expect("a valid secret");
        RemoteServices::new(
            Forwarder::new(
                shared::signing::RequestSigner::new(&secret),
                Duration::from_secs(1),
                None,
            )
            .expect("a client"),
        )
    }

    fn entry(name: &str, state: ServiceState, pid: u32) -> ServiceEntry {
        ServiceEntry {
            name: name.to_owned(),
            version: "1".to_owned(),
            execution: Execution::ManagedProcess {
                pid: Some(pid),
                command: "/bin/sh scripts/start.sh".to_owned(),
            },
            location: Location {
                node: "whatever-it-says".to_owned(),
            },
            endpoints: Vec::new(),
            depends_on: Vec::new(),
            state,
            last_health_check: None,
            dir: PathBuf::from("/opt/x-1"),
            pending: None,
        }
    }

    fn drain(rx: &mut broadcast::Receiver<DeployEvent>) -> Vec<String> {
        let mut seen = Vec::new();
        while let Ok(event) = rx.try_recv() {
            seen.push(match event {
                DeployEvent::StateChanged { from, service } => format!(
                    "{}@{} {from}->{}",
                    service.name,
                    service.location.node,
                    service.state.name()
                ),
                DeployEvent::Health {
                    service,
                    node,
                    status,
                } => format!("{service}@{node} healthy={}", status.healthy),
                DeployEvent::NodeGone { node } => format!("gone {node}"),
                DeployEvent::Progress(p) => format!("progress {}", p.step),
            });
        }
        seen
    }

    #[test]
    fn only_what_changed_between_two_answers_is_announced() {
        let remote = remote();
        let mut rx = remote.subscribe();
        remote.replace(
            "b1",
            vec![
                entry("web", ServiceState::Running, 10),
                entry("db", ServiceState::Stopped, 11),
            ],
        );
        assert_eq!(
            drain(&mut rx),
            ["db@b1 unknown->stopped", "web@b1 unknown->running"]
        );
        // The same answer again: nothing.
        remote.replace(
            "b1",
            vec![
                entry("web", ServiceState::Running, 10),
                entry("db", ServiceState::Stopped, 11),
            ],
        );
        assert!(drain(&mut rx).is_empty());
        // A stop, a restart in between (same state, new pid) and a health check.
        let mut web = entry("web", ServiceState::Running, 12);
        web.last_health_check = Some(HealthStatus {
            healthy: true,
            at: "2026-01-01T00:00:00Z".to_owned(),
            detail: "ok".to_owned(),
        });
        remote.replace(
            "b1",
            vec![
                web,
                entry(
                    "db",
                    ServiceState::Failed {
                        reason: "exit 1".to_owned(),
                    },
                    11,
                ),
            ],
        );
        assert_eq!(
            drain(&mut rx),
            [
                "db@b1 stopped->failed",
                "web@b1 running->running",
                "web@b1 healthy=true"
            ]
        );
        let listed: Vec<(String, String)> = remote
            .list()
            .into_iter()
            .map(|e| (e.location.node, e.name))
            .collect();
        assert_eq!(
            listed,
            [("b1".into(), "db".into()), ("b1".into(), "web".into())]
        );
    }

    #[test]
    fn a_backend_no_longer_live_takes_its_services_out_of_the_view() {
        let remote = remote();
        remote.record("b1", entry("web", ServiceState::Running, 10));
        remote.record("b2", entry("web", ServiceState::Running, 20));
        remote.replace("b3", Vec::new());
        assert_eq!(remote.find("web").len(), 2);
        let mut rx = remote.subscribe();
        remote.keep_only(|node| node == "b2");
        // b3 had nothing to take away.
        assert_eq!(drain(&mut rx), ["gone b1"]);
        let left = remote.find("web");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].location.node, "b2");
    }

    #[tokio::test]
    async fn a_round_with_the_same_live_backends_still_forgets_what_was_recorded_of_others() {
        let remote = remote();
        let live = |node: &str| Backend {
            node: node.to_owned(),
            control: SocketAddr::from(([127, 0, 0, 1], 9)),
            digest: Some(0),
        };
        // Its digest says no services: nobody is asked.
        remote.poll_once(vec![live("b1")]).await;
        assert!(remote.list().is_empty());
        // Recorded of a backend that is not live, between two rounds of the same live set.
        remote.record("b2", entry("web", ServiceState::Running, 20));
        assert_eq!(remote.find("web").len(), 1);
        remote.poll_once(vec![live("b1")]).await;
        assert!(remote.find("web").is_empty());
        // The same live set again, nothing recorded: nothing changes.
        remote.poll_once(vec![live("b1")]).await;
        assert!(remote.list().is_empty());
        // Another live set, out of order: still only asks those due.
        remote.poll_once(vec![live("b2"), live("b1")]).await;
        assert!(remote.list().is_empty());
    }

    #[tokio::test]
    async fn a_backend_that_cannot_be_reached_keeps_its_last_list_while_live() {
        let remote = remote();
        remote.record("b1", entry("web", ServiceState::Running, 10));
        // Nothing listens on a port just released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let b1 = Backend {
            node: "b1".to_owned(),
            control: SocketAddr::from(([127, 0, 0, 1], port)),
            digest: None,
        };
        remote.poll_once(vec![b1]).await;
        assert_eq!(remote.find("web").len(), 1);
        remote.poll_once(Vec::new()).await;
        assert!(remote.find("web").is_empty());
    }

    #[tokio::test]
    async fn a_backend_that_does_not_answer_is_asked_less_and_less_often() {
        let remote = remote();
        // Takes every connection and closes it at once: each ask is counted, then fails.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let control = listener.local_addr().unwrap();
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = asked.clone();
        let server = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(socket);
            }
        });
        let b1 = Backend {
            node: "b1".to_owned(),
            control,
            digest: None,
        };
        let mut rounds_asked = Vec::new();
        for round in 1..=12 {
            let before = asked.load(std::sync::atomic::Ordering::SeqCst);
            remote.poll_once(vec![b1.clone()]).await;
            if asked.load(std::sync::atomic::Ordering::SeqCst) > before {
                rounds_asked.push(round);
            }
        }
        // Asked, then 1, 3 and 7 rounds left out.
        assert_eq!(rounds_asked, [1, 3, 7]);
        // Once no longer live and live again, it starts afresh.
        remote.poll_once(Vec::new()).await;
        let before = asked.load(std::sync::atomic::Ordering::SeqCst);
        remote.poll_once(vec![b1]).await;
        assert!(asked.load(std::sync::atomic::Ordering::SeqCst) > before);
        server.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn rounds_are_skipped_while_the_live_backends_stand_still() {
        use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
        let remote = remote();
        let changes = Arc::new(AtomicU64::new(0));
        let listings = Arc::new(AtomicUsize::new(0));
        // A digest of no services: nobody is ever asked, so no round needs the network.
        let live = Arc::new(parking_lot::Mutex::new(vec![Backend {
            node: "b1".to_owned(),
            control: "127.0.0.1:9".parse().unwrap(),
            digest: Some(0),
        }]));
        let token = CancellationToken::new();
        let (seen, listed, backends) = (changes.clone(), listings.clone(), live.clone());
        let poller = tokio::spawn(remote.clone().poll(
            move || seen.load(SeqCst),
            move || {
                listed.fetch_add(1, SeqCst);
                backends.lock().clone()
            },
            Duration::from_secs(2),
            token.clone(),
        ));
        // Rounds at 0, 2, 4 … s; each wait ends between two of them.
        let rounds = |n: u64| tokio::time::sleep(Duration::from_millis(2_000 * n));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(listings.load(SeqCst), 1, "the first round lists");
        // It took b1's list as empty, which is not idle; the second round is.
        rounds(1).await;
        assert_eq!(listings.load(SeqCst), 2);
        rounds(5).await;
        assert_eq!(
            listings.load(SeqCst),
            2,
            "idle rounds with no change list nobody"
        );
        changes.fetch_add(1, SeqCst);
        rounds(1).await;
        assert_eq!(
            listings.load(SeqCst),
            3,
            "a change is listed at the next round"
        );
        rounds(3).await;
        assert_eq!(listings.load(SeqCst), 3);
        // Something recorded of a backend: the next round looks, whatever the count says.
        remote.record("b2", entry("web", ServiceState::Running, 1));
        rounds(1).await;
        assert_eq!(listings.load(SeqCst), 4);
        assert!(remote.find("web").is_empty(), "b2 is not live: forgotten");
        // A backend without a digest is asked every round, so no round is idle. (Its asks
        // fail, and are left out 1, 3, 7 … rounds: listing it still happens every round.)
        live.lock()[0].digest = None;
        changes.fetch_add(1, SeqCst);
        rounds(4).await;
        assert_eq!(listings.load(SeqCst), 8);
        token.cancel();
        poller.await.unwrap();
    }

    #[tokio::test]
    async fn an_idle_round_says_when_a_backend_that_missed_is_due_again() {
        let remote = remote();
        // Nothing listens there: every ask fails at once.
        let control = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let b1 = Backend {
            node: "b1".to_owned(),
            control,
            digest: Some(5),
        };
        // Round 1 asks and misses: not idle. Round 2 leaves b1 out: idle until round 3.
        assert_eq!(remote.poll_once(vec![b1.clone()]).await, None);
        assert_eq!(remote.poll_once(vec![b1.clone()]).await, Some(3));
        assert!(!remote.skip_round(3), "round 3 asks b1 again");
        assert_eq!(remote.poll_once(vec![b1.clone()]).await, None);
        // Missed twice in a row: left out of rounds 4 to 6.
        assert_eq!(remote.poll_once(vec![b1.clone()]).await, Some(7));
        assert!(remote.skip_round(7) && remote.skip_round(7));
        assert!(!remote.skip_round(7), "round 7 is due");
        assert_eq!(remote.poll_once(vec![b1]).await, None);
        // No backends at all: idle for good.
        assert_eq!(remote.poll_once(Vec::new()).await, Some(u64::MAX));
    }

    #[tokio::test]
    async fn a_retry_left_by_a_digest_that_came_back_does_not_stop_the_skipping() {
        let remote = remote();
        let listed = serde_json::json!({ "services": [entry("web", ServiceState::Running, 10)] });
        let app = axum::Router::new().route(
            "/deploy/services",
            axum::routing::get(move || {
                let listed = listed.clone();
                async move { axum::Json(listed) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let control = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let digest = digest_of(&[entry("web", ServiceState::Running, 10)]);
        let with = |digest| Backend {
            node: "b1".to_owned(),
            control,
            digest: Some(digest),
        };
        // Asked and answered, then idle.
        assert_eq!(remote.poll_once(vec![with(digest)]).await, None);
        assert_eq!(remote.poll_once(vec![with(digest)]).await, Some(u64::MAX));
        // Round 3: its digest moved and the ask fails (the server is gone): retried at 5.
        server.abort();
        let _ = server.await;
        assert_eq!(remote.poll_once(vec![with(digest + 1)]).await, None);
        // The digest came back to the list answered: nothing is due, now or later.
        assert_eq!(remote.poll_once(vec![with(digest)]).await, Some(5));
        assert_eq!(remote.poll_once(vec![with(digest)]).await, Some(u64::MAX));
        assert!(remote.skip_round(u64::MAX));
    }

    #[tokio::test]
    async fn a_backend_is_asked_only_when_its_digest_changed() {
        let remote = remote();
        // Answers one running service to every ask, counting them.
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = asked.clone();
        let listed = serde_json::json!({ "services": [entry("web", ServiceState::Running, 10)] });
        let app = axum::Router::new().route(
            "/deploy/services",
            axum::routing::get(move || {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let listed = listed.clone();
                async move { axum::Json(listed) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let control = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let with = |digest| Backend {
            node: "b1".to_owned(),
            control,
            digest,
        };
        let asks = || asked.load(std::sync::atomic::Ordering::SeqCst);
        // What the backend's heartbeats carry for the list it answers: the coordinator's
        // digest of the list it received (after JSON both ways) must be the same.
        let digest = digest_of(&[entry("web", ServiceState::Running, 10)]);
        remote.poll_once(vec![with(Some(digest))]).await;
        remote.poll_once(vec![with(Some(digest))]).await;
        assert_eq!(asks(), 1);
        assert_eq!(remote.find("web").len(), 1);
        // Another digest (the list changed since): asked until the answer matches it. Here
        // the server's list stays, so the coordinator keeps asking, as it should.
        remote.poll_once(vec![with(Some(digest + 1))]).await;
        remote.poll_once(vec![with(Some(digest + 1))]).await;
        assert_eq!(asks(), 3);
        remote.poll_once(vec![with(Some(digest))]).await;
        assert_eq!(asks(), 3);
        // A digest of no services: not asked, and its services leave the view.
        remote.poll_once(vec![with(Some(0))]).await;
        assert_eq!(asks(), 3);
        assert!(remote.find("web").is_empty());
        // An action's answer is newer than that digest: asked again, not emptied.
        remote.record("b1", entry("web", ServiceState::Running, 11));
        remote.poll_once(vec![with(Some(0))]).await;
        assert_eq!(asks(), 4);
        assert_eq!(remote.find("web").len(), 1);
        // A backend without a digest (an older build) is asked every round.
        remote.poll_once(vec![with(None)]).await;
        remote.poll_once(vec![with(None)]).await;
        assert_eq!(asks(), 6);
        server.abort();
    }
}
