//! [`ProcessManager`]: the backend child processes that `colony up` runs, as managed services
//! that can be listed, stopped, started and restarted (on the same ports) while the
//! coordinator runs.
//!
//! Stopping is graceful: SIGTERM, then SIGKILL after the grace period. Each child's stdout
//! and stderr go to its own log file. A watcher task per child records how it ended.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Serialize;
use tokio::process::{Child, Command};
use tokio::sync::{broadcast, Mutex};
use tracing::{info, warn};

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

/// A managed process as shown to clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessInfo {
    /// Service name.
    pub name: String,
    /// The running pid, if it runs.
    pub pid: Option<u32>,
    /// The command line.
    pub command: String,
    /// `running`, `stopped` (by request) or `exited` (by itself).
    pub state: &'static str,
    /// Exit status of the last run, if it ended.
    pub exit: Option<String>,
    /// When the current or last run started (RFC 3339).
    pub started_at: Option<String>,
    /// Starts after the first.
    pub restarts: u32,
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
}

#[derive(Debug)]
struct Managed {
    spec: ProcessSpec,
    pid: Option<u32>,
    state: &'static str,
    exit: Option<String>,
    started_at: Option<SystemTime>,
    starts: u32,
    /// Bumped on every start, so a watcher of an old run cannot overwrite a newer one.
    generation: u64,
    /// Resolves when the current run has ended.
    ended: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Managed {
    fn info(&self) -> ProcessInfo {
        ProcessInfo {
            name: self.spec.name.clone(),
            pid: self.pid,
            command: std::iter::once(self.spec.program.display().to_string())
                .chain(self.spec.args.iter().cloned())
                .collect::<Vec<_>>()
                .join(" "),
            state: self.state,
            exit: self.exit.clone(),
            started_at: self.started_at.map(rfc3339),
            restarts: self.starts.saturating_sub(1),
            log: self.spec.log.display().to_string(),
        }
    }
}

/// The managed processes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ProcessManager {
    processes: Arc<Mutex<BTreeMap<String, Managed>>>,
    events: broadcast::Sender<ProcessEvent>,
    grace: Duration,
}

impl ProcessManager {
    /// A manager that gives stopping processes `grace` before SIGKILL.
    pub fn new(grace: Duration) -> Self {
        let (events, _) = broadcast::channel(256);
        ProcessManager {
            processes: Arc::new(Mutex::new(BTreeMap::new())),
            events,
            grace,
        }
    }

    /// State changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ProcessEvent> {
        self.events.subscribe()
    }

    /// Adds a process and starts it.
    ///
    /// # Errors
    /// [`ProcessError::Spawn`] if it cannot be started (it stays listed as stopped).
    pub async fn add(&self, spec: ProcessSpec) -> Result<ProcessInfo, ProcessError> {
        let name = spec.name.clone();
        self.processes.lock().await.insert(
            name.clone(),
            Managed {
                spec,
                pid: None,
                state: "stopped",
                exit: None,
                started_at: None,
                starts: 0,
                generation: 0,
                ended: None,
            },
        );
        self.start(&name).await
    }

    /// Every managed process, by name.
    pub async fn list(&self) -> Vec<ProcessInfo> {
        self.processes
            .lock()
            .await
            .values()
            .map(Managed::info)
            .collect()
    }

    /// One managed process.
    pub async fn get(&self, name: &str) -> Option<ProcessInfo> {
        self.processes.lock().await.get(name).map(Managed::info)
    }

    /// True if `name` is managed here.
    pub async fn contains(&self, name: &str) -> bool {
        self.processes.lock().await.contains_key(name)
    }

    /// Starts a stopped process (a running one is left alone).
    ///
    /// # Errors
    /// [`ProcessError::Unknown`], [`ProcessError::Spawn`].
    pub async fn start(&self, name: &str) -> Result<ProcessInfo, ProcessError> {
        let mut processes = self.processes.lock().await;
        let managed = processes
            .get_mut(name)
            .ok_or_else(|| ProcessError::Unknown(name.to_owned()))?;
        if managed.state == "running" {
            return Ok(managed.info());
        }
        let child = spawn(&managed.spec).map_err(|source| ProcessError::Spawn {
            name: name.to_owned(),
            source,
        })?;
        managed.pid = child.id();
        managed.state = "running";
        managed.exit = None;
        managed.started_at = Some(SystemTime::now());
        managed.starts += 1;
        managed.generation += 1;
        let (done_tx, done_rx) = tokio::sync::watch::channel(false);
        managed.ended = Some(done_rx);
        let info = managed.info();
        info!(process = name, pid = ?managed.pid, "managed process started");
        tokio::spawn(
            self.clone()
                .watch(name.to_owned(), managed.generation, child, done_tx),
        );
        drop(processes);
        let _ = self.events.send(ProcessEvent {
            process: info.clone(),
        });
        Ok(info)
    }

    /// Stops a process: SIGTERM, then SIGKILL after the grace period. Stopping a stopped
    /// process succeeds.
    ///
    /// # Errors
    /// [`ProcessError::Unknown`].
    pub async fn stop(&self, name: &str) -> Result<ProcessInfo, ProcessError> {
        let (pid, ended) = {
            let mut processes = self.processes.lock().await;
            let managed = processes
                .get_mut(name)
                .ok_or_else(|| ProcessError::Unknown(name.to_owned()))?;
            if managed.state != "running" {
                return Ok(managed.info());
            }
            // Marked before the signal, so the watcher records a requested stop.
            managed.state = "stopping";
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

    /// Stops every process, all at once.
    pub async fn stop_all(&self) {
        let names: Vec<String> = self.processes.lock().await.keys().cloned().collect();
        let stops = names.iter().map(|n| self.stop(n));
        for result in futures::future::join_all(stops).await {
            if let Err(e) = result {
                warn!(error = %e, "stopping a managed process failed");
            }
        }
    }

    async fn watch(
        self,
        name: String,
        generation: u64,
        mut child: Child,
        done: tokio::sync::watch::Sender<bool>,
    ) {
        let status = child.wait().await;
        let info = {
            let mut processes = self.processes.lock().await;
            let Some(managed) = processes.get_mut(&name) else {
                return;
            };
            if managed.generation != generation {
                return;
            }
            let requested = managed.state == "stopping";
            managed.state = if requested { "stopped" } else { "exited" };
            managed.pid = None;
            managed.exit = Some(match &status {
                Ok(s) => s.to_string(),
                Err(e) => format!("unknown ({e})"),
            });
            if requested {
                info!(process = %name, status = ?managed.exit, "managed process stopped");
            } else {
                warn!(process = %name, status = ?managed.exit, log = %managed.spec.log.display(), "managed process exited by itself");
            }
            managed.info()
        };
        let _ = done.send(true);
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
    Command::new(&spec.program)
        .args(&spec.args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err))
        // Dropping the handle (its watcher task ends with the runtime) kills the child, so a
        // coordinator that stops without `stop_all` leaves none behind. It does nothing if
        // the coordinator is killed outright: then the child outlives it.
        .kill_on_drop(true)
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
