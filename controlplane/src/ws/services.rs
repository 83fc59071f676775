//! The services `/ws` shows (DESIGN §10): every node the coordinator tracks, with its
//! `data`, `control` and `mgmt` endpoints, joined with the managed process of the same name
//! when `colony up` runs it. Also the `service_action` verbs on managed processes.

use serde::Serialize;
use serde_json::{json, Value};
use shared::NodeAddress;

use crate::coordinator::health::views::Component;
use crate::coordinator::processes::{ProcessError, ProcessInfo};
use crate::state::MgmtState;
use crate::wire::heartbeat::NodeType;

/// One network endpoint of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// The service it belongs to.
    pub service: String,
    /// `data`, `control` or `mgmt`.
    pub name: &'static str,
    /// `ip:port`.
    pub address: String,
    /// What it speaks.
    pub protocol: &'static str,
}

/// A service: a node, a managed process, or both (same name).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Service {
    /// The node's instance id (the managed process has the same name).
    pub name: String,
    /// `coordinator` or `backend`.
    pub kind: NodeType,
    /// Health state (`ACTIVE`, `STALE`, `DOWN`, `LEFT`), or `UNKNOWN` for a managed process
    /// that has not sent a heartbeat yet.
    pub state: &'static str,
    /// The node's health record, once it has been heard from.
    pub health: Option<Component>,
    /// Its endpoints.
    pub endpoints: Vec<Endpoint>,
    /// True if `service_action` can start, stop and restart it.
    pub managed: bool,
    /// The managed process, if there is one.
    pub process: Option<ProcessInfo>,
}

/// The three endpoints of a node at `address`.
pub fn endpoints(service: &str, address: &NodeAddress) -> Vec<Endpoint> {
    let one = |name, address: String, protocol| Endpoint {
        service: service.to_owned(),
        name,
        address,
        protocol,
    };
    vec![
        one(
            "data",
            address.to_internal_address(),
            "colony-framed (text lines or length-prefixed MessagePack) over TCP",
        ),
        one("control", address.to_http_address(), "http"),
        one("mgmt", address.to_mgmt_address(), "http"),
    ]
}

/// Every service: the coordinator first, then by name.
pub async fn list(state: &MgmtState) -> Vec<Service> {
    let components = state
        .health
        .as_ref()
        .map(|h| h.status().components)
        .unwrap_or_default();
    let processes = match &state.processes {
        Some(p) => p.list().await,
        None => Vec::new(),
    };
    let mut services: Vec<Service> = components
        .into_iter()
        .map(|c| {
            let process = processes.iter().find(|p| p.name == c.node_id).cloned();
            service(c.node_id.clone(), c.node_type, Some(c), process)
        })
        .collect();
    for p in processes {
        if !services.iter().any(|s| s.name == p.name) {
            services.push(service(p.name.clone(), NodeType::Backend, None, Some(p)));
        }
    }
    services.sort_by(|a, b| {
        (a.kind != NodeType::Coordinator, &a.name).cmp(&(b.kind != NodeType::Coordinator, &b.name))
    });
    services
}

/// One service by name.
pub async fn get(state: &MgmtState, name: &str) -> Option<Service> {
    let component = state.health.as_ref().and_then(|h| {
        if name == state.node.node_id {
            h.status()
                .components
                .into_iter()
                .find(|c| c.node_id == name)
        } else {
            h.node(name)
        }
    });
    let process = match &state.processes {
        Some(p) => p.get(name).await,
        None => None,
    };
    match (component, process) {
        (None, None) => None,
        (Some(c), process) => Some(service(name.to_owned(), c.node_type, Some(c), process)),
        (None, Some(p)) => Some(service(name.to_owned(), NodeType::Backend, None, Some(p))),
    }
}

fn service(
    name: String,
    kind: NodeType,
    health: Option<Component>,
    process: Option<ProcessInfo>,
) -> Service {
    Service {
        endpoints: health
            .as_ref()
            .map(|c| endpoints(&name, &c.address))
            .unwrap_or_default(),
        state: health.as_ref().map_or("UNKNOWN", |c| c.status.as_str()),
        managed: process.is_some(),
        name,
        kind,
        health,
        process,
    }
}

/// Every endpoint of every service.
pub async fn list_endpoints(state: &MgmtState) -> Vec<Endpoint> {
    list(state)
        .await
        .into_iter()
        .flat_map(|s| s.endpoints)
        .collect()
}

/// A `service_action` verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// Start a stopped process.
    Start,
    /// Stop a running process (SIGTERM, then SIGKILL after the grace period).
    Stop,
    /// Stop, then start on the same ports.
    Restart,
}

impl Verb {
    /// Parses `start`, `stop`, `restart`.
    pub fn parse(name: &str) -> Option<Verb> {
        match name {
            "start" => Some(Verb::Start),
            "stop" => Some(Verb::Stop),
            "restart" => Some(Verb::Restart),
            _ => None,
        }
    }

    /// Its name, as [`Verb::parse`] takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Start => "start",
            Verb::Stop => "stop",
            Verb::Restart => "restart",
        }
    }
}

/// Why a `service_action` failed.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// This coordinator manages no processes at all (it was started by `colony
    /// coordinator`), and `name` is a service it knows.
    #[error("{name} is not a managed process: this coordinator was started by `colony coordinator`, not `colony up`, so it runs no nodes and cannot start or stop them; restart {name} where it runs")]
    NothingManaged {
        /// The service.
        name: String,
    },
    /// `name` is a known service but not one of the processes managed here.
    #[error("{name} is not a managed process: only the backends `colony up` started are managed here{}", if *.is_coordinator { " (the coordinator cannot restart itself)" } else { "" })]
    NotManaged {
        /// The service.
        name: String,
        /// True if it is the coordinator itself.
        is_coordinator: bool,
    },
    /// No service has this name.
    #[error("no service named {0:?}")]
    NotFound(String),
    /// The process manager refused or failed.
    #[error(transparent)]
    Process(#[from] ProcessError),
}

impl ActionError {
    /// The error code of the `/ws` response.
    pub fn code(&self) -> &'static str {
        match self {
            ActionError::NothingManaged { .. } | ActionError::NotManaged { .. } => "not_managed",
            ActionError::NotFound(_) | ActionError::Process(ProcessError::Unknown(_)) => {
                "not_found"
            }
            ActionError::Process(_) => "action_failed",
        }
    }
}

/// Runs `verb` on the managed process `name`.
///
/// # Errors
/// [`ActionError::NothingManaged`] or [`ActionError::NotManaged`] when `name` is not a
/// managed process (the message says why), [`ActionError::NotFound`] for an unknown service,
/// [`ActionError::Process`] when the process cannot be started.
pub async fn act(state: &MgmtState, name: &str, verb: Verb) -> Result<Value, ActionError> {
    let known = || async { get(state, name).await.is_some() };
    let Some(processes) = &state.processes else {
        return Err(if known().await {
            ActionError::NothingManaged {
                name: name.to_owned(),
            }
        } else {
            ActionError::NotFound(name.to_owned())
        });
    };
    if !processes.contains(name).await {
        return Err(if known().await {
            ActionError::NotManaged {
                name: name.to_owned(),
                is_coordinator: name == state.node.node_id,
            }
        } else {
            ActionError::NotFound(name.to_owned())
        });
    }
    let process = match verb {
        Verb::Start => processes.start(name).await,
        Verb::Stop => processes.stop(name).await,
        Verb::Restart => processes.restart(name).await,
    }?;
    Ok(json!({ "service": name, "process": process }))
}
