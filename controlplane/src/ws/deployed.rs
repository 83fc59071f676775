//! `/ws` for deployed packages (DESIGN §16): `deploy_package`, and the deployed services
//! that `list_services`, `get_service`, `list_endpoints` and `service_action` show beside
//! the cluster's own nodes. The work itself is [`crate::deploy`]'s.

use serde_json::{json, Value};

use super::protocol::{string_param, Request, WsError};
use super::services::Verb;
use crate::deploy::package::PackageFile;
use crate::deploy::service::ServiceEntry;
use crate::deploy::DeployError;
use crate::state::MgmtState;

/// The name a deploy may use for the coordinator's own host.
pub const COORDINATOR_TARGET: &str = "coordinator";

/// Every deployed service on this node.
pub fn list(state: &MgmtState) -> Vec<ServiceEntry> {
    state
        .deploy
        .as_ref()
        .map(|d| d.services().list())
        .unwrap_or_default()
}

/// One deployed service.
pub fn get(state: &MgmtState, name: &str) -> Option<ServiceEntry> {
    state.deploy.as_ref().and_then(|d| d.services().get(name))
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

/// `service_action` on a deployed service, if `name` is one; `None` leaves it to the
/// managed processes.
pub async fn act(
    state: &MgmtState,
    request: &Request,
    name: &str,
    verb: Verb,
) -> Option<Result<Value, WsError>> {
    let deployer = state.deploy.as_ref()?;
    deployer.services().get(name)?;
    let services = deployer.services();
    let result = match verb {
        Verb::Start => services.start(name).await,
        Verb::Stop => services.stop(name).await,
        Verb::Restart => services.restart(name).await,
    };
    Some(
        result
            .map(|entry| json!({ "service": name, "deployed": entry }))
            .map_err(|e| error(request, &e)),
    )
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
