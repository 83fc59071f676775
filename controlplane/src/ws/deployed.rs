//! `/ws` for deployed packages (DESIGN §16): `deploy_package`, and the deployed services
//! that `list_services`, `get_service`, `list_endpoints` and `service_action` show beside
//! the cluster's own nodes: the coordinator's own and, through its view of them
//! ([`crate::deploy::remote`]), those on its backends, each with `location.node`. A
//! `service_action` on a backend's service is forwarded to that backend as a signed call;
//! when services of one name run on several nodes, `params.node` says which. The work
//! itself is [`crate::deploy`]'s.

use std::net::SocketAddr;

use serde_json::{json, Value};

use super::protocol::{string_param, Request, WsError};
use super::services::Verb;
use crate::coordinator::health::tracker::HealthTracker;
use crate::deploy::package::PackageFile;
use crate::deploy::remote::Backend;
use crate::deploy::service::ServiceEntry;
use crate::deploy::DeployError;
use crate::state::MgmtState;
use crate::wire::heartbeat::DEPLOYED_DIGEST_METRIC;

/// The name a deploy may use for the coordinator's own host.
pub const COORDINATOR_TARGET: &str = "coordinator";

/// Every deployed service: this node's, then its backends' (by backend, then name).
pub fn list(state: &MgmtState) -> Vec<ServiceEntry> {
    let Some(deployer) = &state.deploy else {
        return Vec::new();
    };
    let mut services = deployer.services().list();
    if let Some(remote) = deployer.remote() {
        services.extend(remote.list());
    }
    services
}

/// One deployed service: this node's if it has one of that name, else a backend's.
pub fn get(state: &MgmtState, name: &str) -> Option<ServiceEntry> {
    let deployer = state.deploy.as_ref()?;
    deployer.services().get(name).or_else(|| {
        deployer
            .remote()
            .and_then(|r| r.find(name).into_iter().next())
    })
}

/// The backends whose deployed services the coordinator follows: those `health` holds as
/// ACTIVE or STALE (a DOWN or LEFT one is gone, and its services with it).
pub fn live_backends(health: &HealthTracker) -> Vec<Backend> {
    health
        .live_backends(DEPLOYED_DIGEST_METRIC)
        .into_iter()
        .map(|(node, address, digest)| Backend {
            control: SocketAddr::new(address.ip, address.http_port),
            node,
            // A digest is a whole number up to 2^52, which an f64 holds exactly; anything
            // else is no digest (asked every interval).
            digest: digest
                .filter(|d| d.fract() == 0.0 && (0.0..=4_503_599_627_370_496.0).contains(d))
                .map(|d| d as u64),
        })
        .collect()
}

/// Endpoints of deployed services, shaped as the nodes' are.
pub fn endpoints(state: &MgmtState) -> Vec<Value> {
    list(state)
        .into_iter()
        .flat_map(|s| {
            s.endpoints.into_iter().map(move |e| {
                json!({ "service": s.name, "name": e.name, "address": e.address, "protocol": e.protocol, "deployed": true })
            })
        })
        .collect()
}

/// `service_action` on a deployed service, if `name` is one (on the node `params.node`
/// names, if given); `None` leaves it to the managed processes.
pub async fn act(
    state: &MgmtState,
    request: &Request,
    name: &str,
    verb: Verb,
) -> Option<Result<Value, WsError>> {
    let deployer = state.deploy.as_ref()?;
    let node = match request.params.get("node") {
        None | Some(Value::Null) => None,
        Some(Value::String(node)) => Some(node.as_str()),
        Some(_) => {
            return Some(Err(WsError::new(
                request.id.clone(),
                "invalid_params",
                "params.node must be a node's instance id",
            )))
        }
    };
    let here = node.is_none_or(|n| n == COORDINATOR_TARGET || n == state.node.node_id);
    let local = here && deployer.services().get(name).is_some();
    let remote: Vec<ServiceEntry> = deployer
        .remote()
        .map(|r| r.find(name))
        .unwrap_or_default()
        .into_iter()
        .filter(|e| node.is_none_or(|n| e.location.node == n))
        .collect();
    match (local, remote.as_slice()) {
        (false, []) => return None,
        (false, [one]) => return Some(act_remote(state, request, one, verb).await),
        (true, []) => {}
        _ => {
            let mut nodes: Vec<&str> = remote.iter().map(|e| e.location.node.as_str()).collect();
            if local {
                nodes.insert(0, &state.node.node_id);
            }
            return Some(Err(WsError::new(
                request.id.clone(),
                "invalid_params",
                format!(
                    "{name:?} is deployed on several nodes ({}): say which with params.node",
                    nodes.join(", ")
                ),
            )));
        }
    }
    let services = deployer.services();
    let result = match verb {
        Verb::Start => services.start(name).await,
        Verb::Stop => services.stop(name).await,
        Verb::Restart => services.restart(name).await,
    };
    Some(
        result
            .map(|entry| json!({ "service": name, "node": state.node.node_id, "deployed": entry }))
            .map_err(|e| error(request, &e)),
    )
}

/// `service_action` on `entry`, a service of a backend: forwarded to that backend.
async fn act_remote(
    state: &MgmtState,
    request: &Request,
    entry: &ServiceEntry,
    verb: Verb,
) -> Result<Value, WsError> {
    let node = &entry.location.node;
    let (Some(remote), Some(component)) = (
        state.deploy.as_ref().and_then(|d| d.remote()),
        state.health.as_ref().and_then(|h| h.node(node)),
    ) else {
        return Err(WsError::new(
            request.id.clone(),
            "not_found",
            format!(
                "{} runs on {node}, which this coordinator no longer knows",
                entry.name
            ),
        ));
    };
    let backend = Backend {
        node: node.clone(),
        control: SocketAddr::new(component.address.ip, component.address.http_port),
        digest: None,
    };
    tracing::info!(service = %entry.name, node = %node, action = verb.as_str(), "forwarding a service action to a backend");
    let entry = remote
        .act(&backend, &entry.name, verb.as_str())
        .await
        .map_err(|e| error(request, &e))?;
    Ok(json!({ "service": entry.name, "node": node, "deployed": entry }))
}

/// `deploy_package {"package","target","activate"?}`.
///
/// # Errors
/// `not_supported` where deploying is off or for a target it cannot reach yet,
/// `invalid_params`, `not_found` (no such package or node), `refused` (the package breaks
/// a rule), `deploy_failed` (it installed but did not start, or this node failed).
pub async fn deploy(state: &MgmtState, request: &Request) -> Result<Value, WsError> {
    let id = || request.id.clone();
    let Some(deployer) = &state.deploy else {
        return Err(WsError::new(
            id(),
            "not_supported",
            "deploy_package is not enabled on this node (it has no deploy root)",
        ));
    };
    let package = string_param(request, "package")?;
    let target = string_param(request, "target")?;
    let activate = match request.params.get("activate") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(WsError::new(
                id(),
                "invalid_params",
                "params.activate must be true or false",
            ))
        }
    };
    let file = PackageFile::parse(package)
        .map_err(|e| WsError::new(id(), "invalid_params", e.to_string()))?;
    if !deployer.package_path(&file).is_file() {
        return Err(WsError::new(
            id(),
            "not_found",
            format!("no uploaded package {package:?}: PUT /packages/{package} first"),
        ));
    }
    let local = target == COORDINATOR_TARGET || target == state.node.node_id;
    if !local {
        let backend = state
            .health
            .as_ref()
            .and_then(|h| h.node(target))
            .filter(|c| c.node_type == crate::wire::heartbeat::NodeType::Backend)
            .ok_or_else(|| {
                WsError::new(
                    id(),
                    "not_found",
                    format!("no node named {target:?}: target must be \"coordinator\" or a backend's instance id"),
                )
            })?;
        tracing::info!(
            package,
            target,
            activate,
            "forwarding a package to a backend"
        );
        let entry = deployer
            .forward(&file, target, &backend.address.to_http_address(), activate)
            .await
            .map_err(|e| error(request, &e))?;
        return Ok(json!({ "package": package, "target": target, "service": entry }));
    }
    tracing::info!(package, target, activate, "deploying a package");
    let entry = deployer
        .deploy(&file, &state.node.node_id, activate)
        .await
        .map_err(|e| error(request, &e))?;
    Ok(json!({ "package": package, "target": state.node.node_id, "service": entry }))
}

fn error(request: &Request, e: &DeployError) -> WsError {
    let code = match crate::deploy::deployer::error_code(e) {
        "not_found" => "not_found",
        "not_supported" => "not_supported",
        "unauthorized" => "unauthorized",
        "refused" => "refused",
        _ => "deploy_failed",
    };
    WsError::new(request.id.clone(), code, e.to_string())
}
