//! [`ProcessManager`]: the backend child processes that `colony up` runs, as managed services
//! that can be listed, stopped, started and restarted (on the same ports) while the
//! coordinator runs, and that are restarted with backoff when they fail by themselves
//! ([`RestartPolicy`], [`Supervision`]).
//!
//! Stopping is graceful: SIGTERM, then SIGKILL after the grace period. Each child's stdout
//! and stderr go to its own log file. A watcher task per child records how it ended and
//! decides whether it comes back.
//!
//! Children die with this process however it dies, SIGKILL included: each is told our pid in
//! [`shared::lifeline::PARENT_PID_ENV`] and asks the kernel for SIGTERM when we die. The kernel
//! sends it when the *thread* that forked the child exits, not the process, so every child is
//! forked by one spawner thread ([`crate::spawner`]) that lives as long as this manager; a runtime worker could be
//! retired under a child, and the child would be told its parent died. Children also get a
//! process group of their own, so a Ctrl-C or SIGHUP from the terminal reaches `colony up`
//! alone, which then stops them in order instead of racing them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Serialize;
use tokio::process::{Child, Command};
use tokio::sync::{broadcast, watch, Mutex};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::spawner::Spawner;
use crate::time::rfc3339;

/// How to run one managed process.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    /// Service name (the backend's instance id).
    pub name: String,
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Where its stdout and stderr go (appended).
    pub log: PathBuf,
}

/// What happens when a managed process ends without being asked to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    /// Start it again, after a backoff, when it fails: a non-zero exit or death by a signal
    /// (a crash, `kill -9`, the OOM killer). A clean exit means someone asked it to stop
    /// (SIGTERM, SIGINT), and that is respected.
    #[default]
    OnFailure,
    /// Leave it ended.
    Never,
}

impl RestartPolicy {
    /// `on-failure` or `never`, as on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "never",
        }
    }
}

impl std::fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A restart policy that is neither `on-failure` nor `never`.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a restart policy: use on-failure or never")]
pub struct UnknownRestartPolicy(String);

impl std::str::FromStr for RestartPolicy {
    type Err = UnknownRestartPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "on-failure" => Ok(RestartPolicy::OnFailure),
            "never" => Ok(RestartPolicy::Never),
            other => Err(UnknownRestartPolicy(other.to_owned())),
        }
    }
}

/// How the manager restarts failed processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Supervision {
    /// Whether failed processes come back.
    pub restart: RestartPolicy,
    /// The wait before the first restart of a run of failures; it doubles with each further
    /// failure, so a process that cannot start does not spin.
    pub first_backoff: Duration,
    /// The longest wait, so a process whose cause of failure went away is back soon.
    pub max_backoff: Duration,
    /// A run this long counts as healthy: the next failure waits `first_backoff` again.
    pub healthy_after: Duration,
}

impl Default for Supervision {
    fn default() -> Self {
        Supervision {
            restart: RestartPolicy::OnFailure,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
            healthy_after: Duration::from_secs(60),
        }
    }
}

impl Supervision {
    /// The wait before restarting after the `streak`-th failure in a row (1 for the first).
    pub fn backoff(&self, streak: u32) -> Duration {
        let doublings = streak.saturating_sub(1);
        let factor = 1u32.checked_shl(doublings).unwrap_or(u32::MAX);
        self.first_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// The state of a managed process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    /// Asked to stop; not ended yet.
    Stopping,
    /// Ended because it was asked to.
    Stopped,
    /// Ended by itself and not coming back (a clean exit, or [`RestartPolicy::Never`]).
    Exited,
    /// Failed by itself; starts again at `restart_at`.
    Restarting,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Exited => "exited",
            State::Restarting => "restarting",
        }
    }
}

/// A managed process as shown to clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessInfo {
    /// Service name.
    pub name: String,
    /// The running pid, if it runs.
    pub pid: Option<u32>,
    /// The command line.
    pub command: String,
    /// `running`, `stopping`, `stopped` (by request), `exited` (by itself, for good) or
    /// `restarting` (failed by itself, back at `restart_at`).
    pub state: &'static str,
    /// Exit status of the last run while it is not running.
    pub exit: Option<String>,
    /// When the current or last run started (RFC 3339).
    pub started_at: Option<String>,
    /// Starts after the first, by request or by the restart policy.
    pub restarts: u32,
    /// Runs that failed (a non-zero exit or a signal) without being asked to stop.
    pub failures: u32,
    /// How the most recent run that ended, ended; kept while later runs go on.
    pub last_exit: Option<String>,
    /// When that run ended (RFC 3339).
    pub last_exit_at: Option<String>,
    /// `on-failure` or `never`.
    pub restart_policy: &'static str,
    /// In state `restarting`: when it starts again (RFC 3339).
    pub restart_at: Option<String>,
    /// The log file.
    pub log: String,
}

/// A change of a managed process's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessEvent {
    /// The process after the change.
    pub process: ProcessInfo,
}

/// Why a process action failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// No managed process has this name.
    #[error("no managed process named {0:?}; managed processes exist only under `colony up`")]
    Unknown(String),
    /// The process could not be started.
    #[error("cannot start {name}: {source}")]
    Spawn {
        /// The process.
        name: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Every process is being stopped for good.
    #[error("cannot start {0}: the managed processes are shutting down")]
    ShuttingDown(String),
    /// The thread that forks the children could not be started.
    #[error("cannot start the thread that runs managed processes: {0}")]
    Spawner(std::io::Error),
}

#[derive(Debug)]
struct Managed {
    spec: ProcessSpec,
    pid: Option<u32>,
    state: State,
    exit: Option<String>,
    started_at: Option<SystemTime>,
    /// The same moment on the clock the backoff uses.
    started: Option<Instant>,
    starts: u32,
    failures: u32,
    /// Failures since the last healthy run (or start by request).
    streak: u32,
    last_exit: Option<(String, SystemTime)>,
    restart_at: Option<SystemTime>,
    /// Bumped on every start, so a watcher or a pending restart of an old run cannot
    /// overwrite a newer one.
    generation: u64,
    /// Resolves when the current run has ended.
    ended: Option<watch::Receiver<bool>>,
}

impl Managed {
    fn info(&self, policy: RestartPolicy) -> ProcessInfo {
        ProcessInfo {
            name: self.spec.name.clone(),
            pid: self.pid,
            command: std::iter::once(self.spec.program.display().to_string())
                .chain(self.spec.args.iter().cloned())
                .collect::<Vec<_>>()
                .join(" "),
            state: self.state.as_str(),
            exit: self.exit.clone(),
            started_at: self.started_at.map(rfc3339),
            restarts: self.starts.saturating_sub(1),
            failures: self.failures,
            last_exit: self.last_exit.as_ref().map(|(status, _)| status.clone()),
            last_exit_at: self.last_exit.as_ref().map(|(_, at)| rfc3339(*at)),
            restart_policy: policy.as_str(),
            restart_at: self.restart_at.map(rfc3339),
            log: self.spec.log.display().to_string(),
        }
    }
}

/// Every managed process, and whether they are all being stopped for good.
#[derive(Debug, Default)]
struct Table {
    processes: BTreeMap<String, Managed>,
    /// Set by [`ProcessManager::stop_all`]: nothing starts again after it.
    closing: bool,
}

/// The managed processes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ProcessManager {
    table: Arc<Mutex<Table>>,
    events: broadcast::Sender<ProcessEvent>,
    grace: Duration,
    supervision: Supervision,
    spawner: Arc<Spawner>,
    /// Watchers and pending restarts.
    tasks: TaskTracker,
    /// Cancels pending restarts.
    shutdown: CancellationToken,
}

impl ProcessManager {
    /// A manager that gives stopping processes `grace` before SIGKILL and restarts failed
    /// ones as `supervision` says. Call it inside the tokio runtime the children's watchers
    /// will run on.
    ///
    /// # Errors
    /// [`ProcessError::Spawner`] if there is no runtime or the spawner thread cannot start.
    pub fn new(grace: Duration, supervision: Supervision) -> Result<Self, ProcessError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| ProcessError::Spawner(std::io::Error::other(e)))?;
        let spawner = Spawner::start(runtime, "colony-spawner").map_err(ProcessError::Spawner)?;
        let (events, _) = broadcast::channel(256);
        Ok(ProcessManager {
            table: Arc::new(Mutex::new(Table::default())),
            events,
            grace,
            supervision,
            spawner: Arc::new(spawner),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
        })
    }

    /// State changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ProcessEvent> {
        self.events.subscribe()
    }

    /// Adds a process and starts it.
    ///
    /// # Errors
    /// [`ProcessError::Spawn`] if it cannot be started (it stays listed as stopped),
    /// [`ProcessError::ShuttingDown`].
    pub async fn add(&self, spec: ProcessSpec) -> Result<ProcessInfo, ProcessError> {
        let name = spec.name.clone();
        self.table.lock().await.processes.insert(
            name.clone(),
            Managed {
                spec,
                pid: None,
                state: State::Stopped,
                exit: None,
                started_at: None,
                started: None,
                starts: 0,
                failures: 0,
                streak: 0,
                last_exit: None,
                restart_at: None,
                generation: 0,
                ended: None,
            },
        );
        self.start(&name).await
    }

    /// Every managed process, by name.
    pub async fn list(&self) -> Vec<ProcessInfo> {
        let policy = self.supervision.restart;
        self.table
            .lock()
            .await
            .processes
            .values()
            .map(|m| m.info(policy))
            .collect()
    }

    /// One managed process.
    pub async fn get(&self, name: &str) -> Option<ProcessInfo> {
        let policy = self.supervision.restart;
        self.table
            .lock()
            .await
            .processes
            .get(name)
            .map(|m| m.info(policy))
    }

    /// True if `name` is managed here.
    pub async fn contains(&self, name: &str) -> bool {
        self.table.lock().await.processes.contains_key(name)
    }

    /// Starts a process that is not running (a running or stopping one is left alone; one
    /// waiting to restart starts now). A start by request forgets earlier failures, so the
    /// next one waits the shortest backoff.
    ///
    /// # Errors
    /// [`ProcessError::Unknown`], [`ProcessError::Spawn`], [`ProcessError::ShuttingDown`].
    pub async fn start(&self, name: &str) -> Result<ProcessInfo, ProcessError> {
        let mut table = self.table.lock().await;
        if table.closing {
            return Err(ProcessError::ShuttingDown(name.to_owned()));
        }
        let managed = table
            .processes
            .get_mut(name)
            .ok_or_else(|| ProcessError::Unknown(name.to_owned()))?;
        if matches!(managed.state, State::Running | State::Stopping) {
            return Ok(managed.info(self.supervision.restart));
        }
        managed.streak = 0;
        let info = self.launch(managed).await?;
        drop(table);
        let _ = self.events.send(ProcessEvent {
            process: info.clone(),
        });
        Ok(info)
    }

    /// Forks `managed` and watches it. The caller holds the table's lock and sends the
    /// event.
    async fn launch(&self, managed: &mut Managed) -> Result<ProcessInfo, ProcessError> {
        let name = managed.spec.name.clone();
        let child = {
            let spec = managed.spec.clone();
            self.spawner.spawn(move || spawn(&spec)).await
        }
        .map_err(|source| ProcessError::Spawn {
            name: name.clone(),
            source,
        })?;
        managed.pid = child.id();
        managed.state = State::Running;
        managed.exit = None;
        managed.restart_at = None;
        managed.started_at = Some(SystemTime::now());
        managed.started = Some(Instant::now());
        managed.starts += 1;
        managed.generation += 1;
        let (done_tx, done_rx) = watch::channel(false);
        managed.ended = Some(done_rx);
        info!(process = %name, pid = ?managed.pid, restarts = managed.starts.saturating_sub(1), "managed process started");
        self.tasks
            .spawn(self.clone().watch(name, managed.generation, child, done_tx));
        Ok(managed.info(self.supervision.restart))
    }

    /// Stops a process: SIGTERM, then SIGKILL after the grace period. Stopping a stopped
    /// process succeeds; stopping one that waits to restart cancels the restart. A stop is
    /// never a failure: the process does not come back by itself.
    ///
    /// # Errors
    /// [`ProcessError::Unknown`].
    pub async fn stop(&self, name: &str) -> Result<ProcessInfo, ProcessError> {
        let (pid, ended) = {
            let mut table = self.table.lock().await;
            let managed = table
                .processes
                .get_mut(name)
                .ok_or_else(|| ProcessError::Unknown(name.to_owned()))?;
            match managed.state {
                State::Running => {}
                State::Restarting => {
                    managed.state = State::Stopped;
                    managed.restart_at = None;
                    let info = managed.info(self.supervision.restart);
                    drop(table);
                    info!(process = name, "pending restart cancelled by a stop");
                    let _ = self.events.send(ProcessEvent {
                        process: info.clone(),
                    });
                    return Ok(info);
                }
                State::Stopping | State::Stopped | State::Exited => {
                    return Ok(managed.info(self.supervision.restart))
                }
            }
            // Marked before the signal, so the watcher records a requested stop.
            managed.state = State::Stopping;
            (managed.pid, managed.ended.clone())
        };
        if let (Some(pid), Some(mut ended)) = (pid, ended) {
            send(pid, Signal::SIGTERM);
            let timed_out = tokio::time::timeout(self.grace, ended.wait_for(|done| *done))
                .await
                .is_err();
            if timed_out {
                warn!(process = name, pid, grace = ?self.grace, "did not stop in time; killing it");
                send(pid, Signal::SIGKILL);
                let _ = tokio::time::timeout(Duration::from_secs(5), ended.wait_for(|done| *done))
                    .await;
            }
        }
        self.get(name)
            .await
            .ok_or_else(|| ProcessError::Unknown(name.to_owned()))
    }

    /// Stops then starts a process, with the same command line (so the same ports).
    ///
    /// # Errors
    /// As [`ProcessManager::stop`] and [`ProcessManager::start`].
    pub async fn restart(&self, name: &str) -> Result<ProcessInfo, ProcessError> {
        self.stop(name).await?;
        self.start(name).await
    }

    /// Stops every process, all at once, for good: nothing restarts or starts afterwards.
    pub async fn stop_all(&self) {
        let names: Vec<String> = {
            let mut table = self.table.lock().await;
            table.closing = true;
            table.processes.keys().cloned().collect()
        };
        self.shutdown.cancel();
        let stops = names.iter().map(|n| self.stop(n));
        for result in futures::future::join_all(stops).await {
            if let Err(e) = result {
                warn!(error = %e, "stopping a managed process failed");
            }
        }
        // Every child has ended (or could not be killed, which stop logged); let the
        // watchers record it.
        self.tasks.close();
        if tokio::time::timeout(Duration::from_secs(5), self.tasks.wait())
            .await
            .is_err()
        {
            warn!("managed-process watchers did not finish");
        }
    }

    async fn watch(
        self,
        name: String,
        generation: u64,
        mut child: Child,
        done: watch::Sender<bool>,
    ) {
        let status = child.wait().await;
        let info = {
            let mut table = self.table.lock().await;
            let closing = table.closing;
            let Some(managed) = table.processes.get_mut(&name) else {
                return;
            };
            if managed.generation != generation {
                return;
            }
            self.record_end(managed, &status, closing)
        };
        let _ = done.send(true);
        let _ = self.events.send(ProcessEvent { process: info });
    }

    /// Records how a run ended and decides what comes next: stopped, exited for good, or a
    /// restart after the backoff.
    fn record_end(
        &self,
        managed: &mut Managed,
        status: &std::io::Result<ExitStatus>,
        closing: bool,
    ) -> ProcessInfo {
        let name = managed.spec.name.clone();
        let exit = match status {
            Ok(s) => s.to_string(),
            Err(e) => format!("unknown ({e})"),
        };
        let requested = managed.state == State::Stopping;
        managed.pid = None;
        managed.exit = Some(exit.clone());
        managed.last_exit = Some((exit.clone(), SystemTime::now()));
        let failed = status.as_ref().map_or(true, |s| !s.success());
        if requested {
            managed.state = State::Stopped;
            info!(process = %name, status = %exit, "managed process stopped");
        } else if !failed {
            managed.state = State::Exited;
            warn!(process = %name, status = %exit, "managed process exited by itself, cleanly (someone asked it to stop); not restarting it");
        } else {
            managed.failures += 1;
            let policy = self.supervision.restart;
            if policy == RestartPolicy::Never || closing {
                managed.state = State::Exited;
                warn!(process = %name, status = %exit, log = %managed.spec.log.display(), restart = %policy, "managed process failed; not restarting it");
            } else {
                let healthy = managed
                    .started
                    .is_some_and(|s| s.elapsed() >= self.supervision.healthy_after);
                if healthy {
                    managed.streak = 0;
                }
                self.schedule_restart(managed, &exit);
            }
        }
        managed.info(self.supervision.restart)
    }

    /// Puts a failed process in `restarting` and starts it after the backoff its run of
    /// failures has earned, unless it is started or stopped in the meantime.
    fn schedule_restart(&self, managed: &mut Managed, why: &str) {
        managed.streak = managed.streak.saturating_add(1);
        let delay = self.supervision.backoff(managed.streak);
        managed.state = State::Restarting;
        managed.restart_at = Some(SystemTime::now() + delay);
        let name = managed.spec.name.clone();
        warn!(
            process = %name,
            status = why,
            failures = managed.failures,
            in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            log = %managed.spec.log.display(),
            "managed process failed; restarting it"
        );
        let (manager, generation, shutdown) =
            (self.clone(), managed.generation, self.shutdown.clone());
        self.tasks.spawn(async move {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(delay) => manager.restart_due(&name, generation).await,
            }
        });
    }

    /// A pending restart's time has come: start the process if it still waits for this
    /// restart.
    async fn restart_due(&self, name: &str, generation: u64) {
        let mut table = self.table.lock().await;
        if table.closing {
            return;
        }
        let Some(managed) = table.processes.get_mut(name) else {
            return;
        };
        if managed.generation != generation || managed.state != State::Restarting {
            return;
        }
        let info = match self.launch(managed).await {
            Ok(info) => info,
            Err(e) => {
                // Counted and retried like any failure: the cause may well pass (a port
                // still held, no memory for a moment), and the backoff keeps it from
                // spinning.
                warn!(process = name, error = %e, "cannot restart the managed process");
                managed.failures += 1;
                let why = e.to_string();
                managed.last_exit = Some((why.clone(), SystemTime::now()));
                self.schedule_restart(managed, &why);
                managed.info(self.supervision.restart)
            }
        };
        drop(table);
        let _ = self.events.send(ProcessEvent { process: info });
    }
}

fn spawn(spec: &ProcessSpec) -> std::io::Result<Child> {
    if let Some(dir) = spec.log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)?;
    let err = log.try_clone()?;
    // No `kill_on_drop`: a handle dropped without `stop` means this process is going away,
    // and the parent-death signal then stops the child gracefully instead of with SIGKILL.
    Command::new(&spec.program)
        .args(&spec.args)
        .env(
            shared::lifeline::PARENT_PID_ENV,
            std::process::id().to_string(),
        )
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err))
        .spawn()
}

fn send(pid: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pid) else {
        return;
    };
    if let Err(e) = kill(Pid::from_raw(raw), signal) {
        warn!(pid, ?signal, error = %e, "cannot signal managed process");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast(restart: RestartPolicy) -> Supervision {
        Supervision {
            restart,
            first_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(80),
            healthy_after: Duration::from_secs(60),
        }
    }

    fn sh(dir: &tempfile::TempDir, name: &str, script: &str) -> ProcessSpec {
        ProcessSpec {
            name: name.to_owned(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            log: dir.path().join(format!("{name}.log")),
        }
    }

    /// Polls `name` until `check` holds, or panics after 10 s.
    async fn until(
        m: &ProcessManager,
        name: &str,
        what: &str,
        check: impl Fn(&ProcessInfo) -> bool,
    ) -> ProcessInfo {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let info = m.get(name).await.unwrap();
            if check(&info) {
                return info;
            }
            assert!(Instant::now() < deadline, "{what}: {info:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let s = Supervision::default();
        let waits: Vec<u64> = (1..=8)
            .map(|n| u64::try_from(s.backoff(n).as_millis()).unwrap())
            .collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 10_000, 10_000, 10_000]);
        assert_eq!(s.backoff(u32::MAX), s.max_backoff);
        assert_eq!(s.backoff(0), s.first_backoff);
    }

    #[test]
    fn policies_parse_as_written_on_the_command_line() {
        for p in [RestartPolicy::OnFailure, RestartPolicy::Never] {
            assert_eq!(p.as_str().parse::<RestartPolicy>().unwrap(), p);
        }
        let e = "always".parse::<RestartPolicy>().unwrap_err();
        assert!(e.to_string().contains("on-failure or never"), "{e}");
    }

    #[tokio::test]
    async fn a_failing_process_is_restarted_until_everything_stops() {
        let dir = tempfile::tempdir().unwrap();
        let m =
            ProcessManager::new(Duration::from_secs(2), fast(RestartPolicy::OnFailure)).unwrap();
        let mut events = m.subscribe();
        m.add(sh(&dir, "crash", "exit 3")).await.unwrap();
        let info = until(&m, "crash", "restarted three times", |i| i.restarts >= 3).await;
        assert!(info.failures >= 3, "{info:?}");
        assert_eq!(info.last_exit.as_deref(), Some("exit status: 3"));
        assert!(info.last_exit_at.is_some());
        assert_eq!(info.restart_policy, "on-failure");

        // Every failure was announced as `restarting`, with when.
        let mut restarting = 0;
        while let Ok(ProcessEvent { process }) = events.try_recv() {
            if process.state == "restarting" {
                assert!(process.restart_at.is_some(), "{process:?}");
                assert!(process.pid.is_none());
                restarting += 1;
            }
        }
        assert!(restarting >= 3, "{restarting}");

        // Stopping everything cancels whatever restart is pending.
        m.stop_all().await;
        assert_eq!(m.get("crash").await.unwrap().state, "stopped");
    }

    #[tokio::test]
    async fn a_stop_cancels_a_pending_restart() {
        let dir = tempfile::tempdir().unwrap();
        let slow = Supervision {
            first_backoff: Duration::from_secs(30),
            ..fast(RestartPolicy::OnFailure)
        };
        let m = ProcessManager::new(Duration::from_secs(2), slow).unwrap();
        m.add(sh(&dir, "crash", "exit 3")).await.unwrap();
        let info = until(&m, "crash", "waiting to restart", |i| {
            i.state == "restarting"
        })
        .await;
        assert!(info.restart_at.is_some());
        let generation = m.table.lock().await.processes["crash"].generation;
        let info = m.stop("crash").await.unwrap();
        assert_eq!((info.state, info.restart_at), ("stopped", None));
        // The restart that was pending finds the process stopped and leaves it so.
        m.restart_due("crash", generation).await;
        let info = m.get("crash").await.unwrap();
        assert_eq!((info.state, info.restarts), ("stopped", 0), "{info:?}");
        // A start by request is not held back by the backoff.
        let info = m.start("crash").await.unwrap();
        assert_eq!(info.restarts, 1);
        m.stop_all().await;
    }

    #[tokio::test]
    async fn never_leaves_a_failed_process_exited() {
        let dir = tempfile::tempdir().unwrap();
        let m = ProcessManager::new(Duration::from_secs(2), fast(RestartPolicy::Never)).unwrap();
        m.add(sh(&dir, "crash", "kill -9 $$")).await.unwrap();
        let info = until(&m, "crash", "exited", |i| i.state != "running").await;
        assert_eq!(info.state, "exited", "{info:?}");
        assert_eq!(info.failures, 1);
        assert_eq!(info.restart_at, None);
        assert!(
            info.last_exit.as_deref().unwrap().contains("signal: 9"),
            "{info:?}"
        );
        assert_eq!(info.restart_policy, "never");
        m.stop_all().await;
    }

    #[tokio::test]
    async fn a_clean_exit_or_a_stop_is_not_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let m =
            ProcessManager::new(Duration::from_secs(2), fast(RestartPolicy::OnFailure)).unwrap();
        m.add(sh(&dir, "done", "exit 0")).await.unwrap();
        let info = until(&m, "done", "exited", |i| i.state != "running").await;
        assert_eq!((info.state, info.failures), ("exited", 0), "{info:?}");

        m.add(sh(&dir, "sleeper", "exec sleep 30")).await.unwrap();
        let info = m.stop("sleeper").await.unwrap();
        assert_eq!((info.state, info.failures), ("stopped", 0), "{info:?}");
        assert!(info.last_exit.unwrap().contains("signal: 15"));
        m.stop_all().await;
    }

    #[tokio::test]
    async fn after_stop_all_nothing_starts_again() {
        let dir = tempfile::tempdir().unwrap();
        let m =
            ProcessManager::new(Duration::from_secs(2), fast(RestartPolicy::OnFailure)).unwrap();
        m.add(sh(&dir, "sleeper", "exec sleep 30")).await.unwrap();
        m.stop_all().await;
        assert_eq!(m.get("sleeper").await.unwrap().state, "stopped");
        assert!(matches!(
            m.start("sleeper").await,
            Err(ProcessError::ShuttingDown(_))
        ));
    }

    #[tokio::test]
    async fn children_are_told_to_die_with_us_and_get_their_own_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let m = ProcessManager::new(Duration::from_secs(2), fast(RestartPolicy::Never)).unwrap();
        let info = m
            .add(sh(
                &dir,
                "env",
                &format!(
                    "echo parent=${}; echo group=$(cut -d' ' -f5 /proc/$$/stat); exec sleep 30",
                    shared::lifeline::PARENT_PID_ENV
                ),
            ))
            .await
            .unwrap();
        let pid = info.pid.unwrap();
        let log = dir.path().join("env.log");
        let deadline = Instant::now() + Duration::from_secs(10);
        let text = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("group=") {
                break text;
            }
            assert!(Instant::now() < deadline, "{text}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert!(
            text.contains(&format!("parent={}\n", std::process::id())),
            "{text}"
        );
        assert!(text.contains(&format!("group={pid}\n")), "{text}");
        m.stop_all().await;
    }
}
