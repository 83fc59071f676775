//! [`Services`]: the deployed services of one node, run as managed children.
//!
//! Starting a service starts its `depends_on` first (unknown names and cycles refused),
//! checks `requires.commands`, then runs `scripts/start.sh` with a clean environment (`PATH`
//! and `COLONY_SERVICE_*` only), the install dir as working directory, in a process group of
//! its own, as the deploy user when the node runs as root. It is `Running` once ready: its
//! health check passes, or (without one) its TCP ports accept connections, or (with neither)
//! at once. Not ready within the start timeout: killed, `Failed`. Exiting by itself at any
//! time: `Failed` with its exit status and the last lines of its output (its log is
//! `{state dir}/logs/{name}-{version}.log`, truncated at each start).
//!
//! Stopping runs `scripts/stop.sh`, then SIGTERM to the group, then SIGKILL after the grace.
//! `health.sh` runs every `interval` while the service runs.
//!
//! The registry ([`Store`]) is written on every state change. When the node stops, its
//! services stop with it but the registry keeps the states they had, so [`Services::restore`]
//! starts again those that were running. If the node is killed outright, each `start.sh` is
//! told by the kernel (`setpriv --pdeathsig TERM`, when util-linux's `setpriv` is installed)
//! as `colony up`'s children are; the kernel sends it when the *thread* that forked the child
//! ends, so every `start.sh` is forked by one long-lived spawner thread ([`crate::spawner`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::deploy::archive::{START_SCRIPT, STOP_SCRIPT};
use crate::deploy::error::{DeployError, NotReady};
use crate::deploy::manifest::{HealthSpec, Manifest, Protocol, ServiceKind};
use crate::deploy::service::{
    Execution, HealthStatus, Location, Pending, ServiceEndpoint, ServiceEntry, ServiceState, Store,
};
use crate::spawner::Spawner;
use crate::time::rfc3339;

/// Where `setpriv` is looked for.
const SETPRIV: &str = "/usr/bin/setpriv";

/// Lines of output quoted when a service fails.
const TAIL_LINES: usize = 5;

/// How often readiness is probed while a service starts.
const PROBE_EVERY: Duration = Duration::from_millis(100);

/// Whose identity scripts run with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunAs {
    /// This process's (it is not root).
    Current,
    /// A user's, when the node runs as root (`--deploy-user`).
    User {
        /// The name, for logs.
        name: String,
        /// Its uid.
        uid: u32,
        /// Its primary gid.
        gid: u32,
    },
    /// This process is root and the deploy user cannot be found: nothing may run (the node
    /// itself still starts; deployments fail with this reason).
    Unavailable(String),
}

impl RunAs {
    /// `user` when this process is root (or [`RunAs::Unavailable`] saying why it cannot be
    /// used), else this process's own identity.
    pub fn resolve(user: &str) -> RunAs {
        if !nix::unistd::geteuid().is_root() {
            return RunAs::Current;
        }
        match nix::unistd::User::from_name(user) {
            Ok(Some(found)) => RunAs::User {
                name: user.to_owned(),
                uid: found.uid.as_raw(),
                gid: found.gid.as_raw(),
            },
            Ok(None) => RunAs::Unavailable(format!(
                "the deploy user {user:?} does not exist (--deploy-user), and deployed scripts never run as root"
            )),
            Err(e) => RunAs::Unavailable(format!("cannot look up the deploy user {user:?}: {e}")),
        }
    }
}

/// How one node runs its deployed services.
#[derive(Debug, Clone)]
pub struct ServicesConfig {
    /// The node's instance id (each entry's location).
    pub node: String,
    /// The host part of each endpoint (the node's advertised address).
    pub host: String,
    /// Where the registry file and the logs go.
    pub state_dir: PathBuf,
    /// Whose identity scripts run with.
    pub run_as: RunAs,
    /// Longest `start.sh` may take to become ready.
    pub start_timeout: Duration,
    /// Longest `stop.sh`, then SIGTERM, may take before SIGKILL.
    pub stop_grace: Duration,
}

/// What deployed services tell `/ws`.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum DeployEvent {
    /// A step of a deployment (`deployment_progress`).
    Progress(Progress),
    /// A service changed state (`service_state_changed`).
    StateChanged {
        /// The state it left.
        from: &'static str,
        /// The service as it is now.
        service: Box<ServiceEntry>,
    },
    /// A health check ran (`health_check_result`).
    Health {
        /// The service.
        service: String,
        /// Its node.
        node: String,
        /// The result.
        status: HealthStatus,
    },
    /// A backend is no longer live and its services left the coordinator's view
    /// ([`crate::deploy::remote`]); viewers get the whole state again.
    NodeGone {
        /// The backend.
        node: String,
    },
}

/// One step of a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// The package file.
    pub package: String,
    /// The node it goes to.
    pub target: String,
    /// `received`, `verified`, `extracted`, `installed`, `dependencies`, `starting`,
    /// `running` or `failed`.
    pub step: &'static str,
    /// More about it (the reason, for `failed`).
    pub detail: Option<String>,
}

/// The digest of a node's service list that its heartbeats carry
/// ([`Services::digest`]): 0 for none, otherwise 1 to 2^52 (a metric is an `f64`). The
/// coordinator takes the digest of the list a backend answered with the same function, so
/// it knows which list it holds; a list that does not come back byte for byte (another
/// build) only makes it ask again each interval.
pub fn digest_of(list: &[ServiceEntry]) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    if list.is_empty() {
        return 0;
    }
    // Serialising a list of plain data cannot fail; if it ever did, the digest of nothing
    // still differs from "no services".
    let bytes = serde_json::to_vec(list).unwrap_or_default();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    (hasher.finish() & ((1 << 52) - 1)).max(1)
}

/// The deployed services of one node. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Services {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ServicesConfig,
    store: Store,
    slots: parking_lot::Mutex<BTreeMap<String, Slot>>,
    /// One start, stop or deploy at a time: they read and change several slots.
    ops: tokio::sync::Mutex<()>,
    events: broadcast::Sender<DeployEvent>,
    spawner: Spawner,
    tasks: TaskTracker,
}

#[derive(Debug)]
struct Slot {
    entry: ServiceEntry,
    run: Option<Run>,
}

#[derive(Debug)]
struct Run {
    pid: u32,
    /// Set to how it ended when it exits.
    exited: watch::Receiver<Option<String>>,
    /// Stops its health checks.
    health: CancellationToken,
    /// A stop is under way: its exit is not a failure.
    stopping: bool,
}

impl Services {
    /// The services recorded in `{state_dir}/services.json`, none running yet (see
    /// [`Services::restore`]).
    ///
    /// # Errors
    /// [`DeployError::Io`] if the registry cannot be read or the spawner cannot start.
    pub fn open(config: ServicesConfig) -> Result<Self, DeployError> {
        let store = Store::new(config.state_dir.join("services.json"));
        let mut slots = BTreeMap::new();
        for mut entry in store.load()? {
            entry.location.node.clone_from(&config.node);
            slots.insert(entry.name.clone(), Slot { entry, run: None });
        }
        let (events, _) = broadcast::channel(1024);
        let spawner = Spawner::start(tokio::runtime::Handle::current(), "colony-deploy-spawner")
            .map_err(|e| DeployError::io("starting", "the service spawner thread", e))?;
        Ok(Services {
            inner: Arc::new(Inner {
                config,
                store,
                slots: parking_lot::Mutex::new(slots),
                ops: tokio::sync::Mutex::new(()),
                events,
                spawner,
                tasks: TaskTracker::new(),
            }),
        })
    }

    /// This node's configuration.
    pub fn config(&self) -> &ServicesConfig {
        &self.inner.config
    }

    /// Every deployed service, by name.
    pub fn list(&self) -> Vec<ServiceEntry> {
        self.inner
            .slots
            .lock()
            .values()
            .map(|s| s.entry.clone())
            .collect()
    }

    /// What the heartbeat metric [`crate::wire::heartbeat::DEPLOYED_DIGEST_METRIC`]
    /// carries: 0 with no service, otherwise a digest of the whole list, 1 to 2^52 (a metric
    /// is an `f64`), which any change of a state, version, pid or health check changes.
    pub fn digest(&self) -> u64 {
        digest_of(&self.list())
    }

    /// One deployed service.
    pub fn get(&self, name: &str) -> Option<ServiceEntry> {
        self.inner.slots.lock().get(name).map(|s| s.entry.clone())
    }

    /// Events of deployed services.
    pub fn subscribe(&self) -> broadcast::Receiver<DeployEvent> {
        self.inner.events.subscribe()
    }

    /// Announces a deployment step.
    pub fn progress(
        &self,
        package: &str,
        target: &str,
        step: &'static str,
        detail: Option<String>,
    ) {
        let _ = self.inner.events.send(DeployEvent::Progress(Progress {
            package: package.to_owned(),
            target: target.to_owned(),
            step,
            detail,
        }));
    }

    /// Starts the services the registry records as running, dependencies first.
    pub async fn restore(&self) {
        let wanted: Vec<String> = self
            .list()
            .into_iter()
            .filter(|e| e.state.wants_running())
            .map(|e| e.name)
            .collect();
        for name in wanted {
            info!(service = %name, "restarting a deployed service that was running");
            if let Err(e) = self.start(&name).await {
                warn!(service = %name, error = %e, "deployed service did not start again");
            }
        }
    }

    /// Checks what a manifest needs before it is installed: a managed process, known
    /// dependencies without a cycle (as if it were deployed), its commands on `PATH`.
    ///
    /// # Errors
    /// [`DeployError::NotSupported`], [`DeployError::UnknownDependency`],
    /// [`DeployError::DependencyCycle`], [`DeployError::MissingCommand`].
    pub fn vet(&self, manifest: &Manifest) -> Result<(), DeployError> {
        if let RunAs::Unavailable(reason) = &self.inner.config.run_as {
            return Err(DeployError::StartFailed(reason.clone()));
        }
        match manifest.service.kind {
            ServiceKind::ManagedProcess => {}
            ServiceKind::Docker => return Err(DeployError::NotSupported("docker")),
            ServiceKind::Systemd => return Err(DeployError::NotSupported("systemd")),
        }
        let mut graph: BTreeMap<String, Vec<String>> = self
            .inner
            .slots
            .lock()
            .iter()
            .map(|(n, s)| (n.clone(), s.entry.depends_on.clone()))
            .collect();
        graph.insert(manifest.name.clone(), manifest.depends_on.clone());
        start_order(&graph, &manifest.name)?;
        check_commands(&manifest.requires.commands)
    }

    /// Records the installed package `manifest` at `dir`: a new service (`Registered`), or a
    /// new version of a known one, which replaces it when it does not run and otherwise
    /// waits beside it for a restart (or takes over now with `activate`). Returns whether
    /// the caller should start it now.
    ///
    /// # Errors
    /// [`DeployError::Io`] if the registry cannot be written; errors of stopping and
    /// starting with `activate`.
    pub async fn register(
        &self,
        manifest: &Manifest,
        dir: &Path,
        activate: bool,
    ) -> Result<bool, DeployError> {
        let entry = self.entry_for(manifest, dir);
        /// What the deploy does next.
        enum Then {
            Start,
            Nothing,
            TakeOver,
        }
        let then = {
            let mut slots = self.inner.slots.lock();
            match slots.get_mut(&manifest.name) {
                None => {
                    slots.insert(entry.name.clone(), Slot { entry, run: None });
                    Then::Start
                }
                // The same version: idempotent while it runs, started if it does not.
                Some(slot) if slot.entry.version == manifest.version => {
                    if slot.run.is_some() {
                        Then::Nothing
                    } else {
                        Then::Start
                    }
                }
                // Another version of a running service waits beside it.
                Some(slot) if slot.run.is_some() => {
                    slot.entry.pending = Some(Pending {
                        version: manifest.version.clone(),
                        dir: dir.to_owned(),
                    });
                    if activate {
                        Then::TakeOver
                    } else {
                        Then::Nothing
                    }
                }
                // Another version of a stopped service replaces it.
                Some(slot) => {
                    let state = slot.entry.state.clone();
                    slot.entry = ServiceEntry { state, ..entry };
                    Then::Start
                }
            }
        };
        self.save();
        match then {
            Then::Start => Ok(true),
            Then::Nothing => Ok(false),
            Then::TakeOver => {
                self.restart(&manifest.name).await?;
                Ok(false)
            }
        }
    }

    fn entry_for(&self, manifest: &Manifest, dir: &Path) -> ServiceEntry {
        let config = &self.inner.config;
        ServiceEntry {
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            execution: Execution::ManagedProcess {
                pid: None,
                command: format!("/bin/sh {START_SCRIPT}"),
            },
            location: Location {
                node: config.node.clone(),
            },
            endpoints: manifest
                .service
                .ports
                .iter()
                .map(|p| ServiceEndpoint {
                    name: p.name.clone(),
                    address: format!("{}:{}", config.host, p.port),
                    protocol: match p.protocol {
                        Protocol::Tcp => "tcp",
                        Protocol::Udp => "udp",
                    }
                    .to_owned(),
                })
                .collect(),
            depends_on: manifest.depends_on.clone(),
            state: ServiceState::Registered,
            last_health_check: None,
            dir: dir.to_owned(),
            pending: None,
        }
    }

    /// Starts `name` (its dependencies first). Starting a running service does nothing.
    ///
    /// # Errors
    /// [`DeployError::UnknownService`], the dependency errors, [`DeployError::StartFailed`],
    /// [`DeployError::NotReady`].
    pub async fn start(&self, name: &str) -> Result<ServiceEntry, DeployError> {
        let _op = self.inner.ops.lock().await;
        self.start_locked(name).await
    }

    /// Stops `name`: `stop.sh`, SIGTERM, SIGKILL after the grace. Stopping a stopped
    /// service does nothing.
    ///
    /// # Errors
    /// [`DeployError::UnknownService`].
    pub async fn stop(&self, name: &str) -> Result<ServiceEntry, DeployError> {
        let _op = self.inner.ops.lock().await;
        self.stop_locked(name, true).await
    }

    /// Stops `name` and starts it again, on the version installed beside it if there is one.
    ///
    /// # Errors
    /// As [`Services::stop`] and [`Services::start`].
    pub async fn restart(&self, name: &str) -> Result<ServiceEntry, DeployError> {
        let _op = self.inner.ops.lock().await;
        self.stop_locked(name, true).await?;
        self.take_pending(name);
        self.start_locked(name).await
    }

    /// Stops every service (dependents first) without recording it, so the next start of
    /// the node starts them again; for the node's own shutdown.
    pub async fn shutdown(&self) {
        let _op = self.inner.ops.lock().await;
        let names: Vec<String> = self.inner.slots.lock().keys().rev().cloned().collect();
        for name in names {
            let _ = self.stop_locked(&name, false).await;
        }
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    fn take_pending(&self, name: &str) {
        let mut slots = self.inner.slots.lock();
        if let Some(slot) = slots.get_mut(name) {
            if let Some(pending) = slot.entry.pending.take() {
                slot.entry.version = pending.version;
                slot.entry.dir = pending.dir;
                // The new version's manifest may name other ports.
                if let Ok(manifest) = read_manifest(&slot.entry.dir) {
                    let fresh = self.entry_for(&manifest, &slot.entry.dir);
                    slot.entry.endpoints = fresh.endpoints;
                    slot.entry.depends_on = fresh.depends_on;
                }
            }
        }
    }

    async fn start_locked(&self, name: &str) -> Result<ServiceEntry, DeployError> {
        let graph: BTreeMap<String, Vec<String>> = self
            .inner
            .slots
            .lock()
            .iter()
            .map(|(n, s)| (n.clone(), s.entry.depends_on.clone()))
            .collect();
        if !graph.contains_key(name) {
            return Err(DeployError::UnknownService(name.to_owned()));
        }
        for service in start_order(&graph, name)? {
            self.start_one(&service).await?;
        }
        self.get(name)
            .ok_or_else(|| DeployError::UnknownService(name.to_owned()))
    }

    async fn start_one(&self, name: &str) -> Result<(), DeployError> {
        let (dir, running) = {
            let slots = self.inner.slots.lock();
            let slot = slots
                .get(name)
                .ok_or_else(|| DeployError::UnknownService(name.to_owned()))?;
            (slot.entry.dir.clone(), slot.run.is_some())
        };
        if running {
            return Ok(());
        }
        let manifest = read_manifest(&dir)?;
        if let RunAs::Unavailable(reason) = &self.inner.config.run_as {
            self.fail(name, reason.clone());
            return Err(DeployError::StartFailed(reason.clone()));
        }
        if let Err(e) = check_commands(&manifest.requires.commands) {
            self.fail(name, e.to_string());
            return Err(e);
        }
        self.set_state(name, ServiceState::Starting, None);
        let log = self.log_path(&dir);
        let child = match self.spawn_start(&dir, &log).await {
            Ok(child) => child,
            Err(e) => {
                let reason = format!("cannot run {START_SCRIPT}: {e}");
                self.fail(name, reason.clone());
                return Err(DeployError::StartFailed(reason));
            }
        };
        let Some(pid) = child.id() else {
            let reason = format!("{START_SCRIPT} ended before it could be watched");
            self.fail(name, reason.clone());
            return Err(DeployError::StartFailed(reason));
        };
        let (tx, exited) = watch::channel(None);
        let health = CancellationToken::new();
        {
            let mut slots = self.inner.slots.lock();
            if let Some(slot) = slots.get_mut(name) {
                slot.run = Some(Run {
                    pid,
                    exited: exited.clone(),
                    health: health.clone(),
                    stopping: false,
                });
                slot.entry.execution = Execution::ManagedProcess {
                    pid: Some(pid),
                    command: start_command().join(" "),
                };
            }
        }
        self.inner.tasks.spawn(watch_exit(
            self.clone(),
            name.to_owned(),
            pid,
            child,
            tx,
            log,
        ));
        match self.await_ready(&manifest, &dir, exited.clone()).await {
            Ok(()) => {
                self.set_state(name, ServiceState::Running, None);
                if let Some(spec) = manifest.health.clone() {
                    self.inner.tasks.spawn(health_loop(
                        self.clone(),
                        name.to_owned(),
                        dir,
                        spec,
                        health,
                    ));
                }
                Ok(())
            }
            Err(not_ready) => {
                // Exited by itself: the watcher has recorded why. Timed out: kill it.
                if exited.borrow().is_none() {
                    self.mark_stopping(name);
                    signal_group(pid, Signal::SIGKILL);
                    let mut exited = exited;
                    let _ = exited.wait_for(Option::is_some).await;
                }
                self.fail(name, not_ready.to_string());
                Err(DeployError::NotReady(not_ready))
            }
        }
    }

    /// Waits until the service is ready, or says why it is not.
    ///
    /// # Errors
    /// [`NotReady::Exited`] when `start.sh` exits first, [`NotReady::TimedOut`] past the
    /// start timeout (the caller kills it).
    async fn await_ready(
        &self,
        manifest: &Manifest,
        dir: &Path,
        mut exited: watch::Receiver<Option<String>>,
    ) -> Result<(), NotReady> {
        let timeout = self.inner.config.start_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let ports: Vec<u16> = manifest
            .service
            .ports
            .iter()
            .filter(|p| p.protocol == Protocol::Tcp)
            .map(|p| p.port)
            .collect();
        loop {
            if let Some(how) = exited.borrow().clone() {
                return Err(NotReady::Exited(how));
            }
            let ready = match &manifest.health {
                Some(spec) => self.run_health(dir, spec).await.healthy,
                None if !ports.is_empty() => ports_open(&ports).await,
                None => true,
            };
            if ready {
                return Ok(());
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Err(NotReady::TimedOut(timeout)),
                _ = tokio::time::sleep(PROBE_EVERY) => {}
                _ = exited.changed() => {}
            }
        }
    }

    async fn stop_locked(&self, name: &str, record: bool) -> Result<ServiceEntry, DeployError> {
        let (pid, dir, mut exited) = {
            let mut slots = self.inner.slots.lock();
            let slot = slots
                .get_mut(name)
                .ok_or_else(|| DeployError::UnknownService(name.to_owned()))?;
            match &mut slot.run {
                None => return Ok(slot.entry.clone()),
                Some(run) => {
                    run.stopping = true;
                    run.health.cancel();
                    (run.pid, slot.entry.dir.clone(), run.exited.clone())
                }
            }
        };
        if record {
            self.set_state(name, ServiceState::Stopping, None);
        }
        let grace = self.inner.config.stop_grace;
        // stop.sh first: the service's own way down. Its outcome is logged, not fatal.
        let outcome = self.run_script(&dir, STOP_SCRIPT, grace).await;
        if !outcome.healthy {
            warn!(service = name, detail = %outcome.detail, "stop.sh failed");
        }
        let ended = |exited: &mut watch::Receiver<Option<String>>| exited.borrow().is_some();
        if !ended(&mut exited) {
            signal_group(pid, Signal::SIGTERM);
            if tokio::time::timeout(grace, exited.wait_for(Option::is_some))
                .await
                .is_err()
            {
                warn!(
                    service = name,
                    "did not stop within the grace period; killing"
                );
                signal_group(pid, Signal::SIGKILL);
                let _ = exited.wait_for(Option::is_some).await;
            }
        }
        // Whatever the service left in its group goes too.
        signal_group(pid, Signal::SIGKILL);
        {
            let mut slots = self.inner.slots.lock();
            if let Some(slot) = slots.get_mut(name) {
                slot.run = None;
                let Execution::ManagedProcess { pid, .. } = &mut slot.entry.execution;
                *pid = None;
            }
        }
        if record {
            self.set_state(name, ServiceState::Stopped, None);
        }
        self.get(name)
            .ok_or_else(|| DeployError::UnknownService(name.to_owned()))
    }

    fn mark_stopping(&self, name: &str) {
        if let Some(run) = self
            .inner
            .slots
            .lock()
            .get_mut(name)
            .and_then(|s| s.run.as_mut())
        {
            run.stopping = true;
            run.health.cancel();
        }
    }

    fn fail(&self, name: &str, reason: String) {
        warn!(service = name, %reason, "deployed service failed");
        {
            let mut slots = self.inner.slots.lock();
            if let Some(slot) = slots.get_mut(name) {
                slot.run = None;
                let Execution::ManagedProcess { pid, .. } = &mut slot.entry.execution;
                *pid = None;
            }
        }
        self.set_state(name, ServiceState::Failed { reason }, None);
    }

    /// Moves `name` to `state` (unless it is already there), records and announces it.
    fn set_state(&self, name: &str, state: ServiceState, health: Option<HealthStatus>) {
        let changed = {
            let mut slots = self.inner.slots.lock();
            let Some(slot) = slots.get_mut(name) else {
                return;
            };
            if health.is_some() {
                slot.entry.last_health_check = health;
            }
            if slot.entry.state == state {
                None
            } else {
                let from = slot.entry.state.name();
                slot.entry.state = state;
                Some((from, slot.entry.clone()))
            }
        };
        if let Some((from, service)) = changed {
            info!(
                service = name,
                from,
                to = service.state.name(),
                "deployed service state"
            );
            self.save();
            let _ = self.inner.events.send(DeployEvent::StateChanged {
                from,
                service: Box::new(service),
            });
        }
    }

    fn save(&self) {
        let entries = self.list();
        if let Err(e) = self.inner.store.save(&entries) {
            warn!(error = %e, "cannot write the deployed-services registry");
        }
    }

    fn log_path(&self, dir: &Path) -> PathBuf {
        let name = dir.file_name().map_or_else(
            || "service".to_owned(),
            |n| n.to_string_lossy().into_owned(),
        );
        self.inner
            .config
            .state_dir
            .join("logs")
            .join(format!("{name}.log"))
    }

    async fn spawn_start(&self, dir: &Path, log: &Path) -> std::io::Result<Child> {
        if let Some(parent) = log.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let out = std::fs::File::create(log)?;
        let err = out.try_clone()?;
        let program = start_command();
        let mut command = self.command(dir, &program);
        command.stdout(Stdio::from(out)).stderr(Stdio::from(err));
        let mut command = command;
        self.inner.spawner.spawn(move || command.spawn()).await
    }

    /// A command run in `dir` with the clean environment and the deploy user.
    fn command(&self, dir: &Path, program: &[String]) -> Command {
        let mut command = Command::new(&program[0]);
        command
            .args(&program[1..])
            .env_clear()
            .env("PATH", path_var())
            .env("HOME", dir)
            .env("COLONY_SERVICE_DIR", dir)
            .env("COLONY_NODE", &self.inner.config.node)
            .current_dir(dir)
            .process_group(0)
            .stdin(Stdio::null());
        if let RunAs::User { uid, gid, .. } = self.inner.config.run_as {
            command.uid(uid).gid(gid);
        }
        command
    }

    async fn run_health(&self, dir: &Path, spec: &HealthSpec) -> HealthStatus {
        self.run_script(dir, &spec.script, spec.timeout).await
    }

    /// Runs a short script with `timeout`, killing its group if it takes longer.
    async fn run_script(&self, dir: &Path, script: &str, timeout: Duration) -> HealthStatus {
        let program = vec!["/bin/sh".to_owned(), script.to_owned()];
        let mut command = self.command(dir, &program);
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let result = async {
            let mut child = command.spawn()?;
            let pid = child.id();
            let mut output = Vec::new();
            let run = async {
                if let Some(stdout) = child.stdout.take() {
                    let _ = stdout.take(4096).read_to_end(&mut output).await;
                }
                child.wait().await
            };
            match tokio::time::timeout(timeout, run).await {
                Ok(status) => Ok((status?, output)),
                Err(_) => {
                    if let Some(pid) = pid {
                        signal_group(pid, Signal::SIGKILL);
                    }
                    Err(std::io::Error::other(format!(
                        "timed out after {}",
                        humantime::format_duration(timeout)
                    )))
                }
            }
        }
        .await;
        let (healthy, detail) = match result {
            Ok((status, output)) => {
                let text = String::from_utf8_lossy(&output);
                let last = text.lines().last().unwrap_or("").to_owned();
                (status.success(), format!("{status}; {last}"))
            }
            Err(e) => (false, format!("{script}: {e}")),
        };
        HealthStatus {
            healthy,
            at: rfc3339(SystemTime::now()),
            detail,
        }
    }
}

/// `start.sh` under `setpriv --pdeathsig TERM` when it is installed.
fn start_command() -> Vec<String> {
    let mut program = Vec::new();
    if Path::new(SETPRIV).exists() {
        program.extend([SETPRIV, "--pdeathsig", "TERM", "--"].map(str::to_owned));
    }
    program.extend(["/bin/sh".to_owned(), START_SCRIPT.to_owned()]);
    program
}

/// The node's `PATH`, or a standard one.
fn path_var() -> std::ffi::OsString {
    std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into())
}

fn read_manifest(dir: &Path) -> Result<Manifest, DeployError> {
    let path = dir.join(crate::deploy::archive::MANIFEST);
    let bytes = std::fs::read(&path).map_err(|e| DeployError::io("reading", path, e))?;
    Manifest::parse(&bytes)
}

/// Every command of `requires.commands` exists: an absolute path as an executable file, a
/// bare name in some directory of `PATH`.
fn check_commands(commands: &[String]) -> Result<(), DeployError> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let path = path_var();
    for command in commands {
        let found = if command.contains('/') {
            executable(Path::new(command))
        } else {
            std::env::split_paths(&path).any(|dir| executable(&dir.join(command)))
        };
        if !found {
            return Err(DeployError::MissingCommand(command.clone()));
        }
    }
    Ok(())
}

/// The services to start for `name`, dependencies first, `name` last.
///
/// # Errors
/// [`DeployError::UnknownDependency`], [`DeployError::DependencyCycle`].
pub fn start_order(
    graph: &BTreeMap<String, Vec<String>>,
    name: &str,
) -> Result<Vec<String>, DeployError> {
    fn visit(
        graph: &BTreeMap<String, Vec<String>>,
        name: &str,
        path: &mut Vec<String>,
        order: &mut Vec<String>,
    ) -> Result<(), DeployError> {
        if order.iter().any(|n| n == name) {
            return Ok(());
        }
        if let Some(at) = path.iter().position(|n| n == name) {
            let mut cycle = path[at..].to_vec();
            cycle.push(name.to_owned());
            return Err(DeployError::DependencyCycle(cycle));
        }
        path.push(name.to_owned());
        for dependency in graph.get(name).into_iter().flatten() {
            if !graph.contains_key(dependency) {
                return Err(DeployError::UnknownDependency {
                    service: name.to_owned(),
                    dependency: dependency.clone(),
                });
            }
            visit(graph, dependency, path, order)?;
        }
        path.pop();
        order.push(name.to_owned());
        Ok(())
    }
    let mut order = Vec::new();
    visit(graph, name, &mut Vec::new(), &mut order)?;
    Ok(order)
}

async fn ports_open(ports: &[u16]) -> bool {
    for port in ports {
        let connect = tokio::net::TcpStream::connect(("127.0.0.1", *port));
        match tokio::time::timeout(Duration::from_secs(1), connect).await {
            Ok(Ok(_)) => {}
            _ => return false,
        }
    }
    true
}

fn signal_group(pid: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pid) else {
        return;
    };
    // ESRCH (already gone) is the common, harmless case.
    let _ = killpg(Pid::from_raw(raw), signal);
}

/// Waits for `start.sh` to exit; an exit nobody asked for is a failure.
async fn watch_exit(
    services: Services,
    name: String,
    pid: u32,
    mut child: Child,
    tx: watch::Sender<Option<String>>,
    log: PathBuf,
) {
    let how = match child.wait().await {
        Ok(status) => format!("{START_SCRIPT} exited ({status})"),
        Err(e) => format!("{START_SCRIPT} could not be waited for: {e}"),
    };
    let tail = tail(&log);
    let how = if tail.is_empty() {
        how
    } else {
        format!("{how}; last output: {tail}")
    };
    let stopping = {
        let slots = services.inner.slots.lock();
        slots
            .get(&name)
            .and_then(|s| s.run.as_ref())
            .is_none_or(|r| r.pid != pid || r.stopping)
    };
    let _ = tx.send(Some(how.clone()));
    let starting = services
        .get(&name)
        .is_some_and(|e| e.state == ServiceState::Starting);
    // While starting, the starter reports it; while stopping, the stopper.
    if !stopping && !starting {
        services.fail(&name, how);
    }
}

/// The last lines of a log, joined with ` | `.
fn tail(log: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(log) else {
        return String::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(2048)));
    let mut bytes = Vec::new();
    let _ = file.take(2048).read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join(" | ")
}

async fn health_loop(
    services: Services,
    name: String,
    dir: PathBuf,
    spec: HealthSpec,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(spec.interval) => {}
        }
        let status = services.run_health(&dir, &spec).await;
        if stop.is_cancelled() {
            return;
        }
        {
            let mut slots = services.inner.slots.lock();
            if let Some(slot) = slots.get_mut(&name) {
                slot.entry.last_health_check = Some(status.clone());
            }
        }
        let _ = services.inner.events.send(DeployEvent::Health {
            service: name.clone(),
            node: services.inner.config.node.clone(),
            status,
        });
    }
}
