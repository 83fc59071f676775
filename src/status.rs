//! `colony status`: the registry's view and the coordinator's health, side by side.

use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};

use crate::cli::StatusArgs;

/// Prints one row per node. Fails (exit 1) when the coordinator cannot be reached, after
/// printing what the registry knows.
pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let registry = args.registry.open().await?;
    let coordinator = registry
        .discover_coordinator()
        .await
        .context("cannot read the coordinator from the registry")?;
    let backends = registry
        .discover_backends()
        .await
        .context("cannot read the backends from the registry")?;

    let health: Result<Value, HealthError> = match coordinator {
        None => Err(HealthError::NoCoordinator {
            registry: registry.describe(),
        }),
        Some(c) => {
            let token = crate::node::load_operator_token(&args.token, &args.registry)?;
            let tls = args.tls.load()?;
            fetch_health(&c.to_mgmt_address(), token.as_deref(), tls.as_ref()).await
        }
    };

    let mut rows: Vec<Value> = Vec::new();
    let components = health
        .as_ref()
        .ok()
        .and_then(|h| h["components"].as_array().cloned())
        .unwrap_or_default();
    if let Some(c) = coordinator {
        rows.push(row(
            "coordinator",
            "coordinator",
            &c,
            find(&components, "coordinator"),
        ));
    }
    for (id, address) in &backends {
        rows.push(row(id, "backend", address, find(&components, id)));
    }
    // Nodes the coordinator knows that are no longer registered (LEFT, or crashed and gone).
    for c in &components {
        let id = c["node_id"].as_str().unwrap_or_default();
        if id != "coordinator" && !backends.iter().any(|(b, _)| b == id) {
            if let Ok(address) = serde_json::from_value(c["address"].clone()) {
                rows.push(row(id, "backend", &address, Some(c.clone())));
            }
        }
    }

    if args.json {
        let out = json!({
            "registry": registry.describe(),
            "overall_status": health.as_ref().ok().map(|h| h["overall_status"].clone()),
            "error": health.as_ref().err().map(ToString::to_string),
            "nodes": rows,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_table(&rows);
        match &health {
            Ok(h) => println!(
                "\noverall: {}  ({} active, {} stale, {} down, {} left)  registry: {}",
                h["overall_status"].as_str().unwrap_or("?"),
                h["active"],
                h["stale"],
                h["down"],
                h["left"],
                registry.describe()
            ),
            Err(e) => println!("\ncoordinator health unavailable: {e}"),
        }
    }
    match health {
        Ok(_) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Why the coordinator's health could not be shown. The messages carry their cause inline
/// (no `source`), so `colony: {e:#}` prints each once.
#[derive(Debug, thiserror::Error)]
enum HealthError {
    /// The registry has no coordinator.
    #[error("no coordinator registered in {registry}")]
    NoCoordinator { registry: String },
    /// The HTTP client could not be built.
    #[error("{0}")]
    Client(reqwest::Error),
    /// The coordinator's management port did not answer.
    #[error("coordinator at {mgmt} does not answer: {error}")]
    NoAnswer { mgmt: String, error: reqwest::Error },
    /// It answered something that is not the health JSON.
    #[error("coordinator at {mgmt} sent a bad answer: {error}")]
    BadAnswer { mgmt: String, error: reqwest::Error },
}

/// `GET /health/status`, as the operator if there is a token (needed with
/// `--protect-reads` from another machine).
async fn fetch_health(
    mgmt: &str,
    token: Option<&shared::operator::OperatorToken>,
    tls: Option<&shared::tls::Tls>,
) -> Result<Value, HealthError> {
    let client = shared::tls::http_client(tls)
        .timeout(Duration::from_secs(3))
        .build()
        .map_err(HealthError::Client)?;
    let url = format!("{}://{mgmt}/health/status", shared::tls::scheme(tls));
    let mut request = client.get(&url);
    if let Some(token) = token {
        request = request.bearer_auth(token.expose());
    }
    let response = request
        .send()
        .await
        .map_err(|error| HealthError::NoAnswer {
            mgmt: mgmt.to_owned(),
            error,
        })?;
    response
        .json()
        .await
        .map_err(|error| HealthError::BadAnswer {
            mgmt: mgmt.to_owned(),
            error,
        })
}

fn find(components: &[Value], id: &str) -> Option<Value> {
    components.iter().find(|c| c["node_id"] == id).cloned()
}

fn row(id: &str, node_type: &str, address: &shared::NodeAddress, health: Option<Value>) -> Value {
    let h = health.unwrap_or(Value::Null);
    json!({
        "node_id": id,
        "type": node_type,
        "state": h["status"].as_str().unwrap_or("UNKNOWN"),
        "internal": address.to_internal_address(),
        "http": address.to_http_address(),
        "mgmt": address.to_mgmt_address(),
        "last_seen": h["last_seen"],
        "heartbeat_age_ms": h["heartbeat_age_ms"],
        "flaps": h["flaps"],
    })
}

fn print_table(rows: &[Value]) {
    let header = [
        "NODE",
        "TYPE",
        "STATE",
        "DATA",
        "CONTROL",
        "MGMT",
        "LAST SEEN",
        "AGE",
        "FLAPS",
    ];
    let cells: Vec<[String; 9]> = rows
        .iter()
        .map(|r| {
            let s = |k: &str| match &r[k] {
                Value::String(s) => s.clone(),
                Value::Null => "-".into(),
                other => other.to_string(),
            };
            let age = r["heartbeat_age_ms"]
                .as_u64()
                .map_or("-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0));
            [
                s("node_id"),
                s("type"),
                s("state"),
                s("internal"),
                s("http"),
                s("mgmt"),
                s("last_seen"),
                age,
                s("flaps"),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cols: Vec<&str>| {
        cols.iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!("{}", line(header.to_vec()).trim_end());
    for row in &cells {
        println!(
            "{}",
            line(row.iter().map(String::as_str).collect()).trim_end()
        );
    }
}
