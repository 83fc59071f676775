//! [`ColonyManager`]: the coordinator's colony lifecycle — start (discover, place, init) and
//! the topology it owns. Finding live backends is `discover.rs`, sending the shards' inits is
//! `init.rs`; the run that follows is [`crate::coordinator::run`].
//!
//! Starts are serialized: one at a time, so two racing requests cannot both place shards.
//! The topology is readable without waiting for a start in progress.

mod discover;
mod init;

use std::collections::{HashMap, VecDeque};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::Identity;
use futures::future::join_all;
use parking_lot::RwLock;
use serde::Deserialize;
use shared::registry::ClusterRegistry;
use shared::signing::RequestSigner;
use shared::sim::{Rule, WorldParams};
use shared::token::TokenIssuer;
use shared::topology::{new_colony_id, ClusterTopology, Dimensions, Simulation};
use shared::NodeAddress;
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::coordinator::error::{ColonyError, StartRequestError};
use crate::coordinator::health::tracker::HealthTracker;
use crate::coordinator::recovery::{self, RecoveryConfig, RecoveryEvent};
use crate::coordinator::run::{Call, ColonyRun, RunConfig};
use crate::coordinator::tokens::TokenAudit;

/// Idempotency keys remembered; the oldest are forgotten first.
const IDEMPOTENCY_KEYS_KEPT: usize = 1024;
/// Longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

/// The body of `POST /colony-start`; every field is optional (DESIGN §3 defaults).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StartRequest {
    /// Shards per world row.
    pub width_in_shards: u32,
    /// Shards per world column.
    pub height_in_shards: u32,
    /// Cells per shard row.
    pub shard_width: u32,
    /// Cells per shard column.
    pub shard_height: u32,
    /// Life-like rule, `B…/S…`.
    pub rule: String,
    /// Seed of the initial soup.
    pub seed: u64,
    /// Fraction of cells alive at tick 0, in `[0, 1]`.
    pub density: f64,
    /// Global cells `[x, y]` alive at tick 0 besides the soup (a known pattern).
    pub cells: Vec<[u64; 2]>,
    /// Ticks per border exchange between shards; the default suits the shard size.
    pub halo_depth: Option<u32>,
    /// Replace a running colony instead of answering 409.
    pub restart: bool,
}

impl Default for StartRequest {
    /// DESIGN §3's defaults, from their one definition in [`WorldParams::default`].
    fn default() -> Self {
        let world = WorldParams::default();
        StartRequest {
            width_in_shards: world.width_in_shards,
            height_in_shards: world.height_in_shards,
            shard_width: world.shard_width,
            shard_height: world.shard_height,
            rule: world.rule.to_string(),
            seed: world.seed,
            density: world.density,
            cells: world.cells,
            halo_depth: None,
            restart: false,
        }
    }
}

impl StartRequest {
    /// The validated dimensions and simulation settings.
    ///
    /// # Errors
    /// A [`StartRequestError`] naming the field.
    pub fn validate(&self) -> Result<(Dimensions, Simulation), StartRequestError> {
        let dims = Dimensions::new(
            self.width_in_shards,
            self.height_in_shards,
            self.shard_width,
            self.shard_height,
        )
        .map_err(StartRequestError::Dimensions)?;
        let rule = Rule::from_str(&self.rule).map_err(|source| StartRequestError::Rule {
            rule: self.rule.clone(),
            source,
        })?;
        let simulation = Simulation {
            rule,
            seed: self.seed,
            density: self.density,
            cells: self.cells.clone(),
            halo_depth: self.halo_depth,
        };
        simulation
            .validate()
            .map_err(StartRequestError::Simulation)?;
        shared::sim::check_cells(
            &simulation.cells,
            u64::from(dims.world_width()),
            u64::from(dims.world_height()),
        )
        .map_err(StartRequestError::Cells)?;
        if let Some(depth) = self.halo_depth {
            shared::sim::check_depth(depth, dims.shard_width, dims.shard_height)
                .map_err(StartRequestError::HaloDepth)?;
        }
        Ok((dims, simulation))
    }
}

/// A start's answer, as remembered for its idempotency key.
#[derive(Debug, Clone)]
pub enum StartOutcome {
    /// The colony started (or was already started under this key).
    Started(Arc<ClusterTopology>),
    /// Refused: a colony is running.
    Conflict(String),
}

/// The answers given to starts with an idempotency key: the newest `capacity` keys, by
/// when each was first answered.
#[derive(Debug)]
struct Starts {
    answers: HashMap<String, StartOutcome>,
    order: VecDeque<String>,
    capacity: usize,
}

impl Starts {
    fn new(capacity: usize) -> Self {
        Starts {
            answers: HashMap::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    fn get(&self, key: &str) -> Option<&StartOutcome> {
        self.answers.get(key)
    }

    fn remember(&mut self, key: String, outcome: StartOutcome) {
        if self.answers.insert(key.clone(), outcome).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.answers.remove(&old);
            }
        }
    }
}

/// Settings of the colony manager.
#[derive(Debug, Clone, Copy)]
pub struct ColonyConfig {
    /// How long an init token stays valid.
    pub token_ttl: Duration,
    /// How long a backend's management port gets to answer the liveness probe.
    pub probe_timeout: Duration,
    /// How long one init request may take.
    pub init_timeout: Duration,
    /// Run control settings.
    pub run: RunConfig,
    /// Re-placement settings.
    pub recovery: RecoveryConfig,
}

impl Default for ColonyConfig {
    fn default() -> Self {
        ColonyConfig {
            token_ttl: Duration::from_secs(60),
            probe_timeout: Duration::from_millis(800),
            init_timeout: Duration::from_secs(10),
            run: RunConfig::default(),
            recovery: RecoveryConfig::default(),
        }
    }
}

struct Inner {
    registry: Arc<dyn ClusterRegistry>,
    me: NodeAddress,
    issuer: TokenIssuer,
    signer: RequestSigner,
    tokens: TokenAudit,
    client: reqwest::Client,
    config: ColonyConfig,
    starts: Mutex<Starts>,
    topology: RwLock<Option<Arc<ClusterTopology>>>,
    run: RwLock<Option<Arc<ColonyRun>>>,
    /// Why the current colony could not start, if it could not.
    start_error: RwLock<Option<String>>,
    identity: Identity,
    health: Option<HealthTracker>,
    /// Re-placements, for `/ws`.
    events: tokio::sync::broadcast::Sender<RecoveryEvent>,
}

/// The coordinator's colony state. Cheap to clone.
#[derive(Clone)]
pub struct ColonyManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ColonyManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ColonyManager")
            .field("me", &self.inner.me)
            .finish_non_exhaustive()
    }
}

impl ColonyManager {
    /// A manager for the coordinator at `me`, signing init tokens with `issuer` and its
    /// requests to backends with `identity`'s secret.
    pub fn new(
        registry: Arc<dyn ClusterRegistry>,
        me: NodeAddress,
        issuer: TokenIssuer,
        identity: Identity,
        config: ColonyConfig,
        health: Option<HealthTracker>,
    ) -> Self {
        let client = shared::tls::http_client(identity.tls.as_ref())
            .pool_max_idle_per_host(64)
            .build()
            .unwrap_or_else(|e| {
                // Only a TLS backend that cannot start gets here; calls then fail, logged.
                warn!(error = %e, "cannot build the coordinator's HTTP client");
                reqwest::Client::new()
            });
        ColonyManager {
            inner: Arc::new(Inner {
                registry,
                me,
                issuer,
                signer: RequestSigner::new(&identity.secret),
                tokens: TokenAudit::default(),
                client,
                config,
                starts: Mutex::new(Starts::new(IDEMPOTENCY_KEYS_KEPT)),
                topology: RwLock::new(None),
                run: RwLock::new(None),
                start_error: RwLock::new(None),
                identity,
                health,
                events: tokio::sync::broadcast::Sender::new(64),
            }),
        }
    }

    /// The node's TLS, for the calls it makes to other nodes (`None`: plaintext).
    pub fn tls(&self) -> Option<&shared::tls::Tls> {
        self.inner.identity.tls.as_ref()
    }

    /// The scheme of URLs to other nodes' HTTP planes.
    pub fn scheme(&self) -> &'static str {
        shared::tls::scheme(self.tls())
    }

    /// The init tokens issued, and what the backends said of them.
    pub fn tokens(&self) -> &TokenAudit {
        &self.inner.tokens
    }

    /// The running colony's topology: its placement in force.
    pub fn topology(&self) -> Option<Arc<ClusterTopology>> {
        if let Some(run) = self.inner.run.read().as_ref() {
            return Some(run.placement().topology.clone());
        }
        self.inner.topology.read().clone()
    }

    /// Re-placements of the colony from now on (lost backends, rebalances, take-overs).
    pub fn subscribe_recoveries(&self) -> tokio::sync::broadcast::Receiver<RecoveryEvent> {
        self.inner.events.subscribe()
    }

    /// Starts following `run`, with a supervisor that re-places it on trouble (and first
    /// takes it over, with `adopt`).
    fn follow(
        &self,
        run: Arc<ColonyRun>,
        calls: tokio::sync::mpsc::UnboundedReceiver<Call>,
        adopt: bool,
    ) {
        let context = recovery::Context {
            config: self.inner.config.recovery,
            events: self.inner.events.clone(),
        };
        tokio::spawn(recovery::supervise(run.clone(), calls, context, adopt));
        *self.inner.run.write() = Some(run);
    }

    /// Makes `topology` the colony without starting it (router and lifecycle tests).
    #[cfg(test)]
    pub(crate) fn pretend_started(&self, topology: Arc<ClusterTopology>) {
        *self.inner.topology.write() = Some(topology);
    }

    /// The body of `GET /colony`: `{"colony_id","state","tick","population","fingerprint",
    /// "ticks_per_second","backends","shards"}` (DESIGN §5). `state` is `none` before any
    /// start.
    pub fn status(&self) -> serde_json::Value {
        if let Some(run) = self.inner.run.read().clone() {
            return run.status();
        }
        match self.topology() {
            None => serde_json::json!({
                "colony_id": null, "state": "none", "tick": 0, "population": 0,
                "fingerprint": "0", "ticks_per_second": 0.0, "backends": 0, "shards": 0,
            }),
            Some(t) => serde_json::json!({
                "colony_id": t.colony_id(), "state": "failed", "tick": 0, "population": null,
                "fingerprint": null, "ticks_per_second": 0.0,
                "error": self.inner.start_error.read().clone(),
                "backends": t.backends().len(), "shards": t.shard_count(),
            }),
        }
    }

    fn current_run(&self) -> Result<Arc<ColonyRun>, ColonyError> {
        if let Some(run) = self.inner.run.read().clone() {
            return Ok(run);
        }
        match self.inner.start_error.read().clone() {
            Some(reason) => Err(ColonyError::StartFailed { reason }),
            None => Err(ColonyError::NoColony),
        }
    }

    /// `POST /colony/run`.
    ///
    /// # Errors
    /// [`ColonyError::NoColony`] or [`ColonyError::StartFailed`] without a running colony;
    /// as [`ColonyRun::run`].
    pub async fn run(&self, ticks: u64, wait: bool) -> Result<serde_json::Value, ColonyError> {
        self.current_run()?.run(ticks, wait).await
    }

    /// `POST /colony/pause`.
    ///
    /// # Errors
    /// As [`ColonyManager::run`].
    pub async fn pause(&self) -> Result<serde_json::Value, ColonyError> {
        self.current_run()?.pause().await
    }

    /// Takes over the colony the registered backends hold, if they hold one and this
    /// coordinator follows none (it was restarted: DESIGN §14). True if it did.
    ///
    /// # Errors
    /// [`ColonyError::Registry`] when the registry cannot be read.
    pub async fn adopt(&self) -> Result<bool, ColonyError> {
        let _starts = self.inner.starts.lock().await;
        if self.topology().is_some() {
            return Ok(false);
        }
        let backends = match discover::live_backends(
            self.inner.registry.as_ref(),
            &self.inner.me,
            (&self.inner.client, self.scheme()),
            self.inner.config.probe_timeout,
        )
        .await
        {
            Ok(backends) => backends,
            Err(ColonyError::NoLiveBackend { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        let patience = self.inner.config.probe_timeout;
        let Some(found) = recovery::adopt::find(&backends, &self.inner.identity, patience).await
        else {
            return Ok(false);
        };
        let topology = Arc::new(found.topology);
        info!(
            colony = topology.colony_id(),
            committed = found.committed,
            target = found.target,
            "taking the colony over"
        );
        let (run, calls) = ColonyRun::adopted(
            topology.clone(),
            found.fence,
            &self.inner.identity,
            found.target,
            found.committed,
            self.inner.config.run,
            self.inner.health.clone(),
        );
        *self.inner.start_error.write() = None;
        *self.inner.topology.write() = Some(topology);
        self.follow(run, calls, true);
        Ok(true)
    }

    /// Tries [`ColonyManager::adopt`] now, and again every half second for a few seconds
    /// while no backend could be found (they may be registering), until `shutdown`.
    pub fn spawn_adoption(&self, shutdown: tokio_util::sync::CancellationToken) {
        let colony = self.clone();
        tokio::spawn(async move {
            for _ in 0..20 {
                let tried = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return,
                    tried = colony.adopt() => tried,
                };
                match tried {
                    Ok(true) => return,
                    Ok(false) if colony.topology().is_some() => return,
                    Ok(false) => {}
                    Err(e) => warn!(error = %e, "cannot look for a colony to take over"),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }

    /// `POST /colony/rebalance`: spreads the shards over every live backend (DESIGN §14).
    ///
    /// # Errors
    /// As [`ColonyManager::run`]; [`ColonyError::Registry`] or
    /// [`ColonyError::NoLiveBackend`] when no backend can be found.
    pub async fn rebalance(&self) -> Result<serde_json::Value, ColonyError> {
        let run = self.current_run()?;
        let backends = discover::live_backends(
            self.inner.registry.as_ref(),
            &self.inner.me,
            (&self.inner.client, self.scheme()),
            self.inner.config.probe_timeout,
        )
        .await?;
        run.rebalance(backends).await
    }

    /// `GET /colony/image.png`: fetches every shard from its backend and draws the world.
    /// `credential` is the caller's `Authorization`, passed on so that backends with
    /// `--protect-reads` serve the caller what it may read (DESIGN §13).
    ///
    /// # Errors
    /// [`ColonyError::NoColony`]; [`ColonyError::Image`] if the PNG cannot be made.
    pub async fn image(
        &self,
        credential: Option<&reqwest::header::HeaderValue>,
    ) -> Result<Vec<u8>, ColonyError> {
        let topology = self.topology().ok_or(ColonyError::NoColony)?;
        let (sw, sh) = (
            u64::from(topology.shard_width()),
            u64::from(topology.shard_height()),
        );
        let fetches = topology.placement().map(|(shard, backend)| {
            let url = format!(
                "{}://{}/shards/{}/{}",
                self.scheme(),
                backend.address.to_http_address(),
                shard.x,
                shard.y
            );
            async move {
                let rows = async {
                    let mut request = self
                        .inner
                        .client
                        .get(&url)
                        .timeout(self.inner.config.init_timeout);
                    if let Some(credential) = credential {
                        request = request.header(reqwest::header::AUTHORIZATION, credential);
                    }
                    let response = request.send().await.ok()?;
                    let body: serde_json::Value = response.json().await.ok()?;
                    serde_json::from_value::<Vec<String>>(body.get("rows")?.clone()).ok()
                }
                .await;
                (shard, rows)
            }
        });
        let mut picture = crate::coordinator::image::Picture::new(
            u64::from(topology.world_width()),
            u64::from(topology.world_height()),
        );
        for (shard, rows) in join_all(fetches).await {
            let (gx0, gy0) = (u64::from(shard.x) * sw, u64::from(shard.y) * sh);
            match rows {
                Some(rows) => picture.paint(gx0, gy0, &rows),
                None => picture.missing(gx0, gy0, sw, sh),
            }
        }
        Ok(picture.encode()?)
    }

    /// Stops following the current colony (coordinator shutdown).
    pub fn close(&self) {
        if let Some(run) = self.inner.run.write().take() {
            run.close();
        }
    }

    /// `POST /colony-start`.
    ///
    /// A running colony (without `restart`) is not an error but a
    /// [`StartOutcome::Conflict`], remembered under `key` like any answer.
    ///
    /// # Errors
    /// [`ColonyError::InvalidRequest`]; [`ColonyError::Registry`] or
    /// [`ColonyError::NoLiveBackend`] when no backend can be found;
    /// [`ColonyError::Placement`]; [`ColonyError::InitFailed`] or [`ColonyError::Backend`]
    /// when a backend refuses its shards or cannot be reached.
    pub async fn start(
        &self,
        key: Option<String>,
        request: StartRequest,
    ) -> Result<StartOutcome, ColonyError> {
        let (dims, simulation) = request.validate()?;
        let mut starts = self.inner.starts.lock().await;
        if let Some(answer) = key.as_deref().and_then(|k| starts.get(k)) {
            return Ok(answer.clone());
        }
        if let Some(running) = self.topology() {
            if !request.restart {
                let outcome = StartOutcome::Conflict(running.colony_id().to_owned());
                if let Some(key) = key {
                    starts.remember(key, outcome.clone());
                }
                return Ok(outcome);
            }
        }
        let started = Instant::now();
        let backends = discover::live_backends(
            self.inner.registry.as_ref(),
            &self.inner.me,
            (&self.inner.client, self.scheme()),
            self.inner.config.probe_timeout,
        )
        .await?;
        let colony_id = new_colony_id().map_err(|e| ColonyError::ColonyId(e.into()))?;
        let topology = ClusterTopology::place(colony_id, self.inner.me, backends, dims)
            .and_then(|t| t.with_simulation(simulation))
            .map_err(ColonyError::Placement)?;
        let topology = Arc::new(topology);
        if let Some(old) = self.inner.run.write().take() {
            old.supersede(topology.colony_id());
        }
        if let Some(health) = &self.inner.health {
            if let Some(old) = self.topology() {
                health.resolve_alerts(&format!("colony {}", old.colony_id()));
            }
        }
        let sender = init::Sender {
            client: &self.inner.client,
            scheme: self.scheme(),
            issuer: &self.inner.issuer,
            signer: &self.inner.signer,
            audit: &self.inner.tokens,
            token_ttl: self.inner.config.token_ttl,
            timeout: self.inner.config.init_timeout,
        };
        let started_run = match init::init_all(&sender, &topology).await {
            Ok(initial) => ColonyRun::connect(
                topology.clone(),
                0,
                &self.inner.identity,
                initial,
                self.inner.config.run,
                self.inner.health.clone(),
            )
            .await
            .map_err(ColonyError::from),
            Err(e) => Err(e),
        };
        let (run, calls) = match started_run {
            Ok(started) => started,
            Err(e) => {
                // The backends that accepted their inits now hold this colony: say so, rather
                // than keep advertising one they dropped.
                warn!(colony = topology.colony_id(), error = %e, "colony start failed");
                *self.inner.topology.write() = Some(topology);
                *self.inner.start_error.write() = Some(e.to_string());
                return Err(e);
            }
        };
        *self.inner.start_error.write() = None;
        self.follow(run, calls, false);
        info!(
            colony = topology.colony_id(),
            backends = topology.backends().len(),
            shards = topology.shard_count(),
            took = ?started.elapsed(),
            "colony started"
        );
        *self.inner.topology.write() = Some(topology.clone());
        let outcome = StartOutcome::Started(topology);
        if let Some(key) = key {
            starts.remember(key, outcome.clone());
        }
        Ok(outcome)
    }
}

/// A manager and a topology without a cluster, for tests here and in [`crate::control`].
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use dataplane::Identity;
    use shared::registry::ClusterRegistry;
    use shared::secret::ClusterSecret;
    use shared::token::TokenIssuer;
    use shared::topology::{BackendEntry, ClusterTopology, Dimensions};
    use shared::NodeAddress;

    use super::{ColonyConfig, ColonyManager};

    /// `127.0.0.1` with the three ports from `port` on.
    pub(crate) fn address(port: u16) -> NodeAddress {
        NodeAddress::new([127, 0, 0, 1].into(), port, port + 1, port + 2)
    }

    /// A coordinator's manager over `registry`, with a secret of its own and no health.
    pub(crate) fn manager(registry: Arc<dyn ClusterRegistry>) -> ColonyManager {
        let secret = Arc::new(ClusterSecret::from_bytes(vec![7; 32], "test").unwrap());
        ColonyManager::new(
            registry,
            address(8000),
            TokenIssuer::new(&secret),
            Identity {
                instance_id: "coordinator".into(),
                secret,
                tls: None,
            },
            ColonyConfig::default(),
            None,
        )
    }

    /// Colony `colony_id`: 2×1 shards of 8×8 on two backends.
    pub(crate) fn topology(colony_id: &str) -> Arc<ClusterTopology> {
        let backends = vec![
            BackendEntry::new("b1", address(9000)),
            BackendEntry::new("b2", address(9010)),
        ];
        let dims = Dimensions::new(2, 1, 8, 8).unwrap();
        Arc::new(ClusterTopology::place(colony_id, address(8000), backends, dims).unwrap())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use shared::registry::InMemoryClusterRegistry;

    use super::testing::{manager, topology};
    use super::*;

    fn started(outcome: &StartOutcome) -> Option<&str> {
        match outcome {
            StartOutcome::Started(t) => Some(t.colony_id()),
            StartOutcome::Conflict(_) => None,
        }
    }

    fn conflict(outcome: &StartOutcome) -> Option<&str> {
        match outcome {
            StartOutcome::Conflict(id) => Some(id),
            StartOutcome::Started(_) => None,
        }
    }

    #[test]
    fn the_default_start_request_is_design_s_world() {
        let (dims, simulation) = StartRequest::default().validate().unwrap();
        assert_eq!(
            (
                dims.width_in_shards,
                dims.height_in_shards,
                dims.shard_width,
                dims.shard_height
            ),
            (8, 5, 250, 250)
        );
        assert_eq!((simulation.seed, simulation.density), (42, 0.35));
        assert_eq!(simulation.rule, Rule::from_str("B3/S23").unwrap());
    }

    #[test]
    fn start_request_validation_names_what_is_wrong() {
        let bad = |change: fn(&mut StartRequest)| {
            let mut request = StartRequest::default();
            change(&mut request);
            request.validate().unwrap_err()
        };
        let e = bad(|r| r.shard_width = 0);
        assert!(matches!(e, StartRequestError::Dimensions(_)), "{e:?}");
        assert!(e.to_string().contains("shard_width"), "{e}");
        let e = bad(|r| r.rule = "B9/S".into());
        assert!(matches!(e, StartRequestError::Rule { .. }), "{e:?}");
        assert!(e.to_string().starts_with("invalid rule \"B9/S\""), "{e}");
        let e = bad(|r| r.density = 1.5);
        assert!(matches!(e, StartRequestError::Simulation(_)), "{e:?}");
        assert!(e.to_string().contains("density"), "{e}");
        let e = bad(|r| r.cells = vec![[0, 0], [2000, 0]]);
        assert!(matches!(e, StartRequestError::Cells(_)), "{e:?}");
        assert!(e.to_string().starts_with("invalid cells"), "{e}");
        let e = bad(|r| r.halo_depth = Some(0));
        assert!(matches!(e, StartRequestError::HaloDepth(_)), "{e:?}");
        let e = bad(|r| r.halo_depth = Some(shared::sim::MAX_HALO_DEPTH + 1));
        assert!(matches!(e, StartRequestError::HaloDepth(_)), "{e:?}");
        let fine = StartRequest {
            halo_depth: Some(shared::sim::MAX_HALO_DEPTH),
            cells: vec![[1999, 1249]],
            ..StartRequest::default()
        };
        assert!(fine.validate().is_ok());
    }

    proptest! {
        /// A pattern is accepted exactly when every cell lies inside the world.
        #[test]
        fn cells_are_accepted_exactly_inside_the_world(
            shards in (1u32..4, 1u32..4),
            shard in (1u32..40, 1u32..40),
            cells in prop::collection::vec((0u64..200, 0u64..200), 0..6),
        ) {
            let request = StartRequest {
                width_in_shards: shards.0,
                height_in_shards: shards.1,
                shard_width: shard.0,
                shard_height: shard.1,
                cells: cells.iter().map(|&(x, y)| [x, y]).collect(),
                ..StartRequest::default()
            };
            let (width, height) = (
                u64::from(shards.0 * shard.0),
                u64::from(shards.1 * shard.1),
            );
            let inside = cells.iter().all(|&(x, y)| x < width && y < height);
            match request.validate() {
                Ok(_) => prop_assert!(inside),
                Err(e) => {
                    prop_assert!(!inside, "{}", e);
                    prop_assert!(matches!(e, StartRequestError::Cells(_)), "{:?}", e);
                }
            }
        }

        /// The idempotency memory keeps the newest `capacity` keys by first answer, each with
        /// its answer, and forgets the rest.
        #[test]
        fn idempotency_keys_are_kept_newest_first_up_to_the_capacity(
            capacity in 1usize..6,
            keys in prop::collection::vec(0u8..10, 0..40),
        ) {
            let mut starts = Starts::new(capacity);
            let mut model: VecDeque<String> = VecDeque::new();
            for (i, k) in keys.iter().enumerate() {
                let key = format!("k{k}");
                if !model.contains(&key) {
                    model.push_back(key.clone());
                    if model.len() > capacity {
                        model.pop_front();
                    }
                }
                starts.remember(key, StartOutcome::Conflict(format!("answer {i}")));
            }
            prop_assert_eq!(&starts.order, &model);
            prop_assert_eq!(starts.answers.len(), model.len());
            for (i, k) in keys.iter().enumerate() {
                let key = format!("k{k}");
                // The answer kept is the last one given for the key.
                let last = keys.iter().rposition(|j| j == k).unwrap_or(i);
                let expected = format!("answer {last}");
                match starts.get(&key) {
                    Some(StartOutcome::Conflict(answer)) => {
                        prop_assert!(model.contains(&key));
                        prop_assert_eq!(answer, &expected);
                    }
                    Some(StartOutcome::Started(_)) => prop_assert!(false),
                    None => prop_assert!(!model.contains(&key)),
                }
            }
        }
    }

    #[tokio::test]
    async fn a_running_colony_is_a_conflict_unless_restarted_and_its_key_replays_it() {
        let colony = manager(Arc::new(InMemoryClusterRegistry::new()));
        colony.pretend_started(topology("c1"));

        let first = colony
            .start(Some("k".into()), StartRequest::default())
            .await
            .unwrap();
        assert_eq!(conflict(&first), Some("c1"));
        // The same key replays the answer, even asking for a restart: the registry (empty
        // here) is not even read.
        let again = colony
            .start(
                Some("k".into()),
                StartRequest {
                    restart: true,
                    ..StartRequest::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(conflict(&again), Some("c1"));
        assert_eq!(started(&again), None);

        // A restart under a new key goes ahead, and here finds no backend.
        let restart = colony
            .start(
                Some("k2".into()),
                StartRequest {
                    restart: true,
                    ..StartRequest::default()
                },
            )
            .await
            .unwrap_err();
        assert!(
            matches!(restart, ColonyError::NoLiveBackend { .. }),
            "{restart:?}"
        );
        assert_eq!(colony.topology().unwrap().colony_id(), "c1");
    }

    #[tokio::test]
    async fn without_live_backends_a_start_fails_and_is_not_remembered() {
        let colony = manager(Arc::new(InMemoryClusterRegistry::new()));
        let e = colony
            .start(Some("k".into()), StartRequest::default())
            .await
            .unwrap_err();
        let message = e.to_string();
        assert!(matches!(e, ColonyError::NoLiveBackend { .. }), "{e:?}");
        assert!(message.contains("no live backend"), "{message}");
        assert!(message.contains("management port"), "{message}");
        assert!(colony.topology().is_none());
        // Nothing was remembered under the key: a retry starts afresh.
        assert!(colony.inner.starts.lock().await.get("k").is_none());
    }

    #[tokio::test]
    async fn an_invalid_request_is_refused_before_anything_else() {
        let colony = manager(Arc::new(InMemoryClusterRegistry::new()));
        colony.pretend_started(topology("c1"));
        let e = colony
            .start(
                Some("k".into()),
                StartRequest {
                    density: -1.0,
                    ..StartRequest::default()
                },
            )
            .await
            .unwrap_err();
        assert!(matches!(e, ColonyError::InvalidRequest(_)), "{e:?}");
        assert!(colony.inner.starts.lock().await.get("k").is_none());
    }

    #[tokio::test]
    async fn run_and_pause_need_a_started_colony() {
        let colony = manager(Arc::new(InMemoryClusterRegistry::new()));
        assert!(matches!(
            colony.run(1, false).await,
            Err(ColonyError::NoColony)
        ));
        assert!(matches!(colony.pause().await, Err(ColonyError::NoColony)));
        assert!(matches!(
            colony.image(None).await,
            Err(ColonyError::NoColony)
        ));
        assert_eq!(colony.status()["state"], "none");
        // A colony whose start failed answers with why, and how to start another.
        colony.pretend_started(topology("c1"));
        *colony.inner.start_error.write() = Some("b1 refused shard (0, 0)".into());
        let e = colony.run(1, false).await.unwrap_err();
        assert!(matches!(e, ColonyError::StartFailed { .. }), "{e:?}");
        assert!(e.to_string().contains("b1 refused shard (0, 0)"), "{e}");
        assert_eq!(colony.status()["state"], "failed");
    }
}
