//! [`ColonyManager`]: the coordinator's colony lifecycle — start (discover, place, init) and
//! the topology it owns.
//!
//! Starts are serialized: one at a time, so two racing requests cannot both place shards.
//! The topology is readable without waiting for a start in progress.

use std::collections::{HashMap, VecDeque};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use parking_lot::RwLock;
use serde::Deserialize;
use shared::registry::ClusterRegistry;
use shared::sim::{Rule, WorldParams};
use shared::token::TokenIssuer;
use shared::topology::{
    exclude_self, new_colony_id, BackendEntry, ClusterTopology, Dimensions, ShardCoord, Simulation,
};
use shared::NodeAddress;
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::control::InitColonyShardResponse;
use crate::coordinator::heartbeat::HealthTracker;
use crate::coordinator::run::{ColonyRun, RunConfig};
use crate::error::ApiError;
use codec::Checkpoint;
use dataplane::Identity;

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
    /// [`ApiError::BadRequest`] naming the field.
    pub fn validate(&self) -> Result<(Dimensions, Simulation), ApiError> {
        let dims = Dimensions::new(
            self.width_in_shards,
            self.height_in_shards,
            self.shard_width,
            self.shard_height,
        )
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let rule = Rule::from_str(&self.rule)
            .map_err(|e| ApiError::BadRequest(format!("invalid rule {:?}: {e}", self.rule)))?;
        let simulation = Simulation {
            rule,
            seed: self.seed,
            density: self.density,
            cells: self.cells.clone(),
            halo_depth: self.halo_depth,
        };
        simulation
            .validate()
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        shared::sim::check_cells(
            &simulation.cells,
            u64::from(dims.world_width()),
            u64::from(dims.world_height()),
        )
        .map_err(|e| ApiError::BadRequest(format!("invalid cells: {e}")))?;
        if let Some(depth) = self.halo_depth {
            shared::sim::check_depth(depth, dims.shard_width, dims.shard_height)
                .map_err(|e| ApiError::BadRequest(e.to_string()))?;
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

#[derive(Debug, Default)]
struct Starts {
    answers: HashMap<String, StartOutcome>,
    order: VecDeque<String>,
}

impl Starts {
    fn remember(&mut self, key: String, outcome: StartOutcome) {
        if self.answers.insert(key.clone(), outcome).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > IDEMPOTENCY_KEYS_KEPT {
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
}

impl Default for ColonyConfig {
    fn default() -> Self {
        ColonyConfig {
            token_ttl: Duration::from_secs(60),
            probe_timeout: Duration::from_millis(800),
            init_timeout: Duration::from_secs(10),
            run: RunConfig::default(),
        }
    }
}

struct Inner {
    registry: Arc<dyn ClusterRegistry>,
    me: NodeAddress,
    issuer: TokenIssuer,
    client: reqwest::Client,
    config: ColonyConfig,
    starts: Mutex<Starts>,
    topology: RwLock<Option<Arc<ClusterTopology>>>,
    run: RwLock<Option<Arc<ColonyRun>>>,
    /// Why the current colony could not start, if it could not.
    start_error: RwLock<Option<String>>,
    identity: Identity,
    health: Option<HealthTracker>,
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
    /// A manager for the coordinator at `me`, signing init tokens with `issuer`.
    pub fn new(
        registry: Arc<dyn ClusterRegistry>,
        me: NodeAddress,
        issuer: TokenIssuer,
        identity: Identity,
        config: ColonyConfig,
        health: Option<HealthTracker>,
    ) -> Self {
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(64)
            .build()
            .unwrap_or_default();
        ColonyManager {
            inner: Arc::new(Inner {
                registry,
                me,
                issuer,
                client,
                config,
                starts: Mutex::new(Starts::default()),
                topology: RwLock::new(None),
                run: RwLock::new(None),
                start_error: RwLock::new(None),
                identity,
                health,
            }),
        }
    }

    /// The running colony's topology.
    pub fn topology(&self) -> Option<Arc<ClusterTopology>> {
        self.inner.topology.read().clone()
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

    fn current_run(&self) -> Result<Arc<ColonyRun>, ApiError> {
        if let Some(run) = self.inner.run.read().clone() {
            return Ok(run);
        }
        match self.inner.start_error.read().clone() {
            Some(reason) => Err(ApiError::Conflict(format!(
                "the colony failed to start ({reason}); POST /colony-start {{\"restart\":true}}"
            ))),
            None => Err(ApiError::NotFound(
                "no colony: start one with POST /colony-start".into(),
            )),
        }
    }

    /// `POST /colony/run`.
    ///
    /// # Errors
    /// 404 without a colony; as [`ColonyRun::run`].
    pub async fn run(&self, ticks: u64, wait: bool) -> Result<serde_json::Value, ApiError> {
        self.current_run()?.run(ticks, wait).await
    }

    /// `POST /colony/pause`.
    ///
    /// # Errors
    /// 404 without a colony; as [`ColonyRun::pause`].
    pub async fn pause(&self) -> Result<serde_json::Value, ApiError> {
        self.current_run()?.pause().await
    }

    /// `GET /colony/image.png`: fetches every shard from its backend and draws the world.
    ///
    /// # Errors
    /// 404 without a colony.
    pub async fn image(&self) -> Result<Vec<u8>, ApiError> {
        let topology = self.topology().ok_or_else(|| {
            ApiError::NotFound("no colony: start one with POST /colony-start".into())
        })?;
        let (sw, sh) = (
            u64::from(topology.shard_width()),
            u64::from(topology.shard_height()),
        );
        let fetches = topology.placement().map(|(shard, backend)| {
            let url = format!(
                "http://{}/shards/{}/{}",
                backend.address.to_http_address(),
                shard.x,
                shard.y
            );
            async move {
                let rows = async {
                    let response = self
                        .inner
                        .client
                        .get(&url)
                        .timeout(self.inner.config.init_timeout)
                        .send()
                        .await
                        .ok()?;
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
        picture.encode().map_err(ApiError::Internal)
    }

    /// Stops following the current colony (coordinator shutdown).
    pub fn close(&self) {
        if let Some(run) = self.inner.run.write().take() {
            run.close();
        }
    }

    /// `POST /colony-start`.
    ///
    /// # Errors
    /// 400 for a bad request, 409 when a colony runs (and `restart` is false), 503 when no
    /// backend is live, 502 when a backend refuses its shards.
    pub async fn start(
        &self,
        key: Option<String>,
        request: StartRequest,
    ) -> Result<StartOutcome, ApiError> {
        let (dims, simulation) = request.validate()?;
        let mut starts = self.inner.starts.lock().await;
        if let Some(answer) = key.as_ref().and_then(|k| starts.answers.get(k)) {
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
        let backends = self.live_backends().await?;
        let colony_id = new_colony_id()
            .map_err(|e| ApiError::Internal(format!("cannot draw a colony id: {e}")))?;
        let topology = ClusterTopology::place(colony_id, self.inner.me, backends, dims)
            .and_then(|t| t.with_simulation(simulation))
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let topology = Arc::new(topology);
        if let Some(old) = self.inner.run.write().take() {
            old.close();
        }
        if let Some(health) = &self.inner.health {
            if let Some(old) = self.topology() {
                health.resolve_alerts(&format!("colony {}", old.colony_id()));
            }
        }
        let started_run = match self.init_all(&topology).await {
            Ok(initial) => ColonyRun::connect(
                topology.clone(),
                &self.inner.identity,
                initial,
                self.inner.config.run,
                self.inner.health.clone(),
            )
            .await
            .map_err(ApiError::BadGateway),
            Err(e) => Err(e),
        };
        let run = match started_run {
            Ok(run) => run,
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
        *self.inner.run.write() = Some(run);
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

    /// Registered backends, minus the coordinator itself, whose management port answers.
    async fn live_backends(&self) -> Result<Vec<BackendEntry>, ApiError> {
        let registry = &self.inner.registry;
        let registered = registry.discover_backends().await.map_err(|e| {
            ApiError::Unavailable(format!(
                "cannot read the cluster registry ({}): {e}",
                registry.describe()
            ))
        })?;
        let mut seen = std::collections::HashSet::new();
        let candidates: Vec<_> = exclude_self(registered, &self.inner.me)
            .into_iter()
            .filter(|(id, address)| {
                // Two entries for one endpoint: a node re-registered under another id. Keep
                // the first; placing both would hand one process two backends' shards.
                let fresh = seen.insert((address.ip, address.internal_port));
                if !fresh {
                    warn!(backend = %id, endpoint = %address.to_internal_address(), "registry lists this endpoint twice; ignoring this entry");
                }
                fresh
            })
            .collect();
        let probes = candidates.iter().map(|(id, address)| async move {
            let url = format!("http://{}/health", address.to_mgmt_address());
            let answered = self
                .inner
                .client
                .get(&url)
                .timeout(self.inner.config.probe_timeout)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if !answered {
                warn!(backend = %id, mgmt = %address.to_mgmt_address(), "registered backend does not answer; skipping it");
            }
            answered
        });
        let alive = join_all(probes).await;
        let live: Vec<BackendEntry> = candidates
            .into_iter()
            .zip(alive)
            .filter(|(_, ok)| *ok)
            .map(|((id, address), _)| BackendEntry::new(id, address))
            .collect();
        if live.is_empty() {
            return Err(ApiError::Unavailable(format!(
                "no live backend: none registered in {} answers on its management port; start one with `colony backend`",
                registry.describe()
            )));
        }
        Ok(live)
    }

    /// Sends every shard its signed init, all at once; fails if any is refused. Returns the
    /// colony's tick-0 figures, summed from the answers.
    async fn init_all(&self, topology: &ClusterTopology) -> Result<Checkpoint, ApiError> {
        let topology_json = serde_json::to_string(topology)
            .map_err(|e| ApiError::Internal(format!("cannot encode the topology: {e}")))?;
        let inits = topology.placement().map(|(shard, backend)| {
            let topology_json = &topology_json;
            async move { self.init_one(topology, topology_json, shard, backend).await }
        });
        let mut total = Checkpoint {
            tick: 0,
            population: 0,
            fingerprint: 0,
        };
        let mut failures = Vec::new();
        for result in join_all(inits).await {
            match result {
                Ok((population, fingerprint)) => {
                    total.population += population;
                    total.fingerprint = total.fingerprint.wrapping_add(fingerprint);
                }
                Err(e) => failures.push(e),
            }
        }
        if let Some(first) = failures.first() {
            return Err(ApiError::BadGateway(format!(
                "{} of {} shard inits failed; first: {first}",
                failures.len(),
                topology.shard_count()
            )));
        }
        Ok(total)
    }

    async fn init_one(
        &self,
        topology: &ClusterTopology,
        topology_json: &str,
        shard: ShardCoord,
        backend: &BackendEntry,
    ) -> Result<(u64, u64), String> {
        let token = self
            .inner
            .issuer
            .issue(
                &backend.instance_id,
                shard,
                topology.colony_id(),
                self.inner.config.token_ttl,
            )
            .map_err(|e| format!("cannot issue a token for {}: {e}", backend.instance_id))?;
        let token_json = serde_json::to_string(&token).map_err(|e| e.to_string())?;
        let shard_json = serde_json::to_string(&shard).map_err(|e| e.to_string())?;
        // The topology is serialized once for all shards.
        let body =
            format!(r#"{{"shard":{shard_json},"topology":{topology_json},"token":{token_json}}}"#);
        let url = format!(
            "http://{}/init-colony-shard",
            backend.address.to_http_address()
        );
        let response = self
            .inner
            .client
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .timeout(self.inner.config.init_timeout)
            .send()
            .await
            .map_err(|e| {
                format!(
                    "{} ({url}) did not answer the init of shard {shard}: {e}",
                    backend.instance_id
                )
            })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        match serde_json::from_str::<InitColonyShardResponse>(&text) {
            Ok(InitColonyShardResponse::Ok {
                population,
                fingerprint,
                ..
            }) if status.is_success() => {
                let fingerprint = fingerprint
                    .parse::<u64>()
                    .map_err(|e| format!("{} sent a bad fingerprint: {e}", backend.instance_id))?;
                Ok((population, fingerprint))
            }
            Ok(InitColonyShardResponse::Error { message }) => Err(format!(
                "{} refused shard {shard}: {message}",
                backend.instance_id
            )),
            _ => Err(format!(
                "{} answered {status} to the init of shard {shard}: {text}",
                backend.instance_id
            )),
        }
    }
}
