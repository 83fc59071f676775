//! `colony up`: the coordinator in this process, N backends as managed children, the colony
//! started, the dashboard URL printed; Ctrl-C stops the children (SIGTERM, then SIGKILL after
//! the grace period), then the coordinator, leaving no process and no registry entry behind.

use std::time::Duration;

use anyhow::{bail, Context};
use controlplane::coordinator::processes::{ProcessManager, ProcessSpec};
use serde_json::Value;
use shared::registry::RegistryKind;
use tracing::{info, warn};

use crate::cli::UpArgs;
use crate::node::start_coordinator;

/// One backend child: its instance id and ports.
struct Planned {
    id: String,
    ports: [u16; 3],
}

fn plan(args: &UpArgs) -> anyhow::Result<Vec<Planned>> {
    (0..args.backends)
        .map(|k| {
            let base = u32::from(args.base_port) + 10 * u32::from(k);
            let port = |i: u32| {
                u16::try_from(base + i).with_context(|| {
                    format!(
                        "--base-port {} leaves no room for {} backends",
                        args.base_port, args.backends
                    )
                })
            };
            let ports = [port(0)?, port(1)?, port(2)?];
            Ok(Planned {
                id: shared::registry::default_backend_id(ports[0]),
                ports,
            })
        })
        .collect()
}

fn backend_spec(
    args: &UpArgs,
    kind: RegistryKind,
    planned: &Planned,
) -> anyhow::Result<ProcessSpec> {
    let program =
        std::env::current_exe().context("cannot find the colony binary to run backends")?;
    let c = &args.coordinator;
    let mut argv: Vec<String> = vec![
        "backend".into(),
        "--internal-port".into(),
        planned.ports[0].to_string(),
        "--http-port".into(),
        planned.ports[1].to_string(),
        "--mgmt-port".into(),
        planned.ports[2].to_string(),
        "--bind-ip".into(),
        c.bind.bind_ip.to_string(),
        "--advertise-ip".into(),
        c.bind.advertise_ip.to_string(),
        "--registry".into(),
        kind.as_str().into(),
        "--registry-dir".into(),
        c.registry.registry_dir.display().to_string(),
        "--ssm-prefix".into(),
        c.registry.ssm_prefix.clone(),
        "--heartbeat-interval".into(),
        humantime::format_duration(args.heartbeat_interval).to_string(),
    ];
    if let Some(file) = &c.secret.secret_file {
        argv.push("--secret-file".into());
        argv.push(file.display().to_string());
    }
    Ok(ProcessSpec {
        name: planned.id.clone(),
        program,
        args: argv,
        log: c
            .registry
            .registry_dir
            .join("output")
            .join("logs")
            .join(format!("{}.log", planned.id)),
    })
}

/// `colony up`.
pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let (kind, _) = args.coordinator.registry.resolve()?;
    let planned = plan(&args)?;
    let processes = ProcessManager::new(args.coordinator.data_plane.grace);
    let coordinator = start_coordinator(args.coordinator.clone(), Some(processes.clone())).await?;
    let address = coordinator.address;

    let outcome = async {
        for p in &planned {
            processes.add(backend_spec(&args, kind, p)?).await?;
        }
        wait_active(&processes, &planned, &address, args.ready_timeout).await?;
        let topology = if args.no_start {
            None
        } else {
            Some(start_colony(&address, args.start_body.as_deref()).await?)
        };
        print_summary(&address, &planned, topology.as_ref(), &args);
        anyhow::Ok(())
    }
    .await;

    if outcome.is_ok() {
        let signal = shared::signal::shutdown_signal().await;
        info!(signal, "stopping the cluster");
    }
    // Stop following the colony first, so stopping its backends is not reported as a failure.
    coordinator.colony.close();
    processes.stop_all().await;
    coordinator.stop().await;
    cleanup_registry(&args, &planned).await;
    outcome
}

/// Polls the coordinator until every planned backend is ACTIVE, showing progress.
async fn wait_active(
    processes: &ProcessManager,
    planned: &[Planned],
    address: &shared::NodeAddress,
    timeout: Duration,
) -> anyhow::Result<()> {
    let client = http_client()?;
    let url = format!("http://{}/health/status", address.to_mgmt_address());
    let deadline = tokio::time::Instant::now() + timeout;
    let mut shown = usize::MAX;
    loop {
        for p in planned {
            if let Some(info) = processes.get(&p.id).await {
                if info.state == "exited" {
                    bail!(
                        "backend {} exited during start ({}); see {}:\n{}",
                        p.id,
                        info.exit.unwrap_or_default(),
                        info.log,
                        tail(&info.log, 8)
                    );
                }
            }
        }
        let active = match client.get(&url).send().await {
            Ok(r) => r
                .json::<Value>()
                .await
                .map_or(0, |h| count_active(&h, planned)),
            Err(_) => 0,
        };
        if active != shown {
            eprintln!("waiting for backends: {active}/{} ACTIVE", planned.len());
            shown = active;
        }
        if active == planned.len() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "only {active} of {} backends became ACTIVE within {timeout:?}; see output/logs/",
                planned.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn count_active(health: &Value, planned: &[Planned]) -> usize {
    let Some(components) = health["components"].as_array() else {
        return 0;
    };
    planned
        .iter()
        .filter(|p| {
            components
                .iter()
                .any(|c| c["node_id"] == p.id.as_str() && c["status"] == "ACTIVE")
        })
        .count()
}

async fn start_colony(address: &shared::NodeAddress, body: Option<&str>) -> anyhow::Result<Value> {
    let client = http_client()?;
    let url = format!("http://{}/colony-start", address.to_http_address());
    let key = format!("colony-up-{}", std::process::id());
    let response = client
        .post(&url)
        .header("Idempotency-Key", key)
        .header("content-type", "application/json")
        .body(body.unwrap_or("").to_owned())
        .send()
        .await
        .with_context(|| format!("cannot reach the coordinator at {url}"))?;
    let status = response.status();
    let answer: Value = response
        .json()
        .await
        .context("colony-start answered non-JSON")?;
    if !status.is_success() {
        bail!(
            "colony start failed ({status}): {}",
            answer["error"].as_str().unwrap_or("?")
        );
    }
    Ok(answer)
}

fn print_summary(
    address: &shared::NodeAddress,
    planned: &[Planned],
    topology: Option<&Value>,
    args: &UpArgs,
) {
    let ip = address.ip;
    println!();
    match topology {
        Some(t) => println!(
            "Colony {} is up: {} backends, {}x{} shards of {}x{} cells, rule {}",
            t["colony_id"].as_str().unwrap_or("?"),
            planned.len(),
            t["width_in_shards"],
            t["height_in_shards"],
            t["shard_width"],
            t["shard_height"],
            t["simulation"]["rule"].as_str().unwrap_or("?"),
        ),
        None => println!(
            "Cluster is up: {} backends, no colony started (--no-start)",
            planned.len()
        ),
    }
    println!(
        "  coordinator    data {}  control http://{}  mgmt http://{}",
        address.to_internal_address(),
        address.to_http_address(),
        address.to_mgmt_address()
    );
    for p in planned {
        println!(
            "  {:<14} data {ip}:{}  control http://{ip}:{}  mgmt http://{ip}:{}",
            p.id, p.ports[0], p.ports[1], p.ports[2]
        );
    }
    println!();
    println!("Dashboard: http://{}/", address.to_mgmt_address());
    println!(
        "Try: nc {ip} {}  (then PING, SHARDS, SHARD 0 0)   curl http://{}/topology",
        planned
            .first()
            .map_or(address.internal_port, |p| p.ports[0]),
        address.to_http_address()
    );
    println!(
        "Logs: {}   Stop: Ctrl-C",
        args.coordinator
            .registry
            .registry_dir
            .join("output")
            .join("logs")
            .display()
    );
}

/// Removes registry entries our backends left behind (a child killed by SIGKILL cannot
/// unregister itself). Unregistering an absent entry succeeds, so this is safe either way.
async fn cleanup_registry(args: &UpArgs, planned: &[Planned]) {
    let registry = match args.coordinator.registry.open().await {
        Ok(registry) => registry,
        Err(e) => {
            warn!(error = %e, "cannot open the registry to clean up after the backends");
            return;
        }
    };
    for p in planned {
        if let Err(e) = registry.unregister_backend(&p.id).await {
            warn!(backend = %p.id, error = %e, "cannot remove a leftover registry entry");
        }
    }
}

fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .context("cannot build an HTTP client")
}

fn tail(path: &str, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
