//! Deployed services as the service-registry seed describes them ([`ServiceEntry`]), and the
//! file they are kept in ([`Store`]): JSON, replaced atomically (write a temp file beside it,
//! fsync, rename) so a crash leaves the old registry or the new one, never half of either.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::deploy::error::DeployError;

/// One deployed service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceEntry {
    /// The manifest's name.
    pub name: String,
    /// The version that runs (or ran last).
    pub version: String,
    /// How it runs.
    pub execution: Execution,
    /// Where it runs.
    pub location: Location,
    /// From the manifest's ports.
    pub endpoints: Vec<ServiceEndpoint>,
    /// Deployed services that must run before it.
    pub depends_on: Vec<String>,
    /// Its state.
    pub state: ServiceState,
    /// The last health check, if it has one.
    pub last_health_check: Option<HealthStatus>,
    /// Its install directory.
    pub dir: PathBuf,
    /// Another version installed beside this one that takes over on the next restart.
    pub pending: Option<Pending>,
}

/// A version installed beside the running one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// Its version.
    pub version: String,
    /// Its install directory.
    pub dir: PathBuf,
}

/// How a service runs (the seed's `ExecutionInfo`). Only managed processes are run here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Execution {
    /// `scripts/start.sh`, a child of the node.
    ManagedProcess {
        /// Its pid while it runs.
        pid: Option<u32>,
        /// What was run.
        command: String,
    },
}

/// Which node runs a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    /// The node's instance id.
    pub node: String,
}

/// An endpoint of a deployed service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEndpoint {
    /// The port's name in the manifest.
    pub name: String,
    /// `host:port`, the host being the node's advertised address.
    pub address: String,
    /// `tcp` or `udp`.
    pub protocol: String,
}

/// The seed's state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ServiceState {
    /// Installed, never started.
    Registered,
    /// `start.sh` runs; not ready yet.
    Starting,
    /// Ready (its health check or ports answered).
    Running,
    /// Being stopped.
    Stopping,
    /// Stopped on request.
    Stopped,
    /// It could not start, or ended by itself.
    Failed {
        /// Why, with its exit status and last lines of output when it exited.
        reason: String,
    },
}

impl ServiceState {
    /// The state's name, for events and logs.
    pub fn name(&self) -> &'static str {
        match self {
            ServiceState::Registered => "registered",
            ServiceState::Starting => "starting",
            ServiceState::Running => "running",
            ServiceState::Stopping => "stopping",
            ServiceState::Stopped => "stopped",
            ServiceState::Failed { .. } => "failed",
        }
    }

    /// Whether the node should start it again when it starts: it was running (or on its
    /// way) when the registry was last written.
    pub fn wants_running(&self) -> bool {
        matches!(self, ServiceState::Starting | ServiceState::Running)
    }
}

/// One run of `health.sh`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthStatus {
    /// It exited 0 within its timeout.
    pub healthy: bool,
    /// When it ended (RFC 3339).
    pub at: String,
    /// Its last line of output, or why it failed.
    pub detail: String,
}

/// The persisted registry of one node's deployed services.
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    services: Vec<ServiceEntry>,
}

impl Store {
    /// The registry kept at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Store { path: path.into() }
    }

    /// Where it is kept.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The entries written last; none if the file does not exist yet.
    ///
    /// # Errors
    /// [`DeployError::Io`] if it exists but cannot be read or is not a registry.
    pub fn load(&self) -> Result<Vec<ServiceEntry>, DeployError> {
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(DeployError::io("reading", &self.path, e)),
        };
        let file: File = serde_json::from_slice(&bytes).map_err(|e| {
            DeployError::io("parsing", &self.path, std::io::Error::other(e.to_string()))
        })?;
        Ok(file.services)
    }

    /// Replaces the registry with `services`, atomically.
    ///
    /// # Errors
    /// [`DeployError::Io`] if it cannot be written.
    pub fn save(&self, services: &[ServiceEntry]) -> Result<(), DeployError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(|e| DeployError::io("creating", dir, e))?;
        let json = serde_json::to_vec_pretty(&serde_json::json!({ "services": services }))
            .map_err(|e| DeployError::io("encoding", &self.path, std::io::Error::other(e)))?;
        let mut temp = tempfile::Builder::new()
            .prefix(".services-")
            .tempfile_in(dir)
            .map_err(|e| DeployError::io("creating a temp file in", dir, e))?;
        temp.write_all(&json)
            .and_then(|()| temp.as_file().sync_all())
            .map_err(|e| DeployError::io("writing", temp.path().to_owned(), e))?;
        temp.persist(&self.path)
            .map_err(|e| DeployError::io("replacing", &self.path, e.error))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, state: ServiceState) -> ServiceEntry {
        ServiceEntry {
            name: name.to_owned(),
            version: "1.0".to_owned(),
            execution: Execution::ManagedProcess {
                pid: Some(42),
                command: "/bin/sh scripts/start.sh".to_owned(),
            },
            location: Location {
                node: "coordinator".to_owned(),
            },
            endpoints: vec![ServiceEndpoint {
                name: "http".to_owned(),
                address: "127.0.0.1:8080".to_owned(),
                protocol: "tcp".to_owned(),
            }],
            depends_on: vec!["db".to_owned()],
            state,
            last_health_check: None,
            dir: PathBuf::from("/opt/x-1.0"),
            pending: None,
        }
    }

    #[test]
    fn the_registry_round_trips_and_replaces_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("state/services.json"));
        assert!(store.load().unwrap().is_empty());
        let services = vec![
            entry("a", ServiceState::Running),
            entry(
                "b",
                ServiceState::Failed {
                    reason: "exit 3".to_owned(),
                },
            ),
        ];
        store.save(&services).unwrap();
        assert_eq!(store.load().unwrap(), services);
        store.save(&services[..1]).unwrap();
        assert_eq!(store.load().unwrap(), services[..1]);
        // No temp file is left beside it.
        assert_eq!(fs::read_dir(dir.path().join("state")).unwrap().count(), 1);
    }

    #[test]
    fn a_corrupt_registry_is_an_error_not_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("services.json"));
        fs::write(store.path(), b"{half").unwrap();
        assert!(store.load().is_err());
    }

    #[test]
    fn states_serialize_as_the_seed_names_them() {
        let failed = serde_json::to_value(ServiceState::Failed {
            reason: "x".to_owned(),
        })
        .unwrap();
        assert_eq!(
            failed,
            serde_json::json!({"state": "failed", "reason": "x"})
        );
        assert!(ServiceState::Running.wants_running());
        assert!(!ServiceState::Stopped.wants_running());
    }
}
