//! `colony up`: the coordinator in this process, N backends as managed children, the colony
//! started, the dashboard URL printed; Ctrl-C, SIGTERM or SIGHUP stops the children (SIGTERM,
//! then SIGKILL after the grace period), then the coordinator, leaving no process and no
//! registry entry behind. A backend that fails meanwhile is restarted (`--restart`).
//!
//! Killed outright (SIGKILL), `colony up` cannot clean up, so the pieces do it between them:
//! the kernel sends each backend SIGTERM (the process manager's parent-death signal), each
//! backend unregisters itself as on any SIGTERM and removes the dead coordinator's entry
//! ([`crate::liveness::forget_dead_coordinator`]), and whatever still lingers (a backend that was killed too)
//! is removed by the next `colony up` before it starts, once it has seen that the node does
//! not answer ([`remove_dead_entries`]).
//!
//! With the file registry and no operator token given, it creates `output/operator.token`
//! (mode 0600) and prints its path and how to send it, never the token. Children get the
//! token by that path or by inheriting COLONY_OPERATOR_TOKEN, never on their command line.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use controlplane::coordinator::processes::{ProcessManager, ProcessSpec, Supervision};
use serde_json::Value;
use shared::operator::OperatorToken;
use shared::registry::{ClusterRegistry, RegistryKind};
use shared::tls::Tls;
use shared::NodeAddress;
use tracing::{info, warn};

use crate::cli::{DeployArgs, UpArgs};
use crate::liveness::Http;
use crate::node::{load_operator_token, operator_token_path, start_coordinator};

/// The operator token of this cluster, and where it is kept for people.
struct Operator {
    token: Option<Arc<OperatorToken>>,
    /// The file the token is in, and whether `colony up` just created it.
    file: Option<(std::path::PathBuf, bool)>,
}

/// The token as the nodes will find it; in localhost mode with none given, a new
/// `output/operator.token`, which `args` then names so the coordinator and every backend
/// read the same file.
fn operator_token(args: &mut UpArgs, kind: RegistryKind) -> anyhow::Result<Operator> {
    let c = &mut args.coordinator;
    let given = std::env::var_os(OperatorToken::ENV_VAR).is_some()
        || c.operator.token.operator_token_file.is_some();
    if kind == RegistryKind::File && !given {
        let path = operator_token_path(&c.registry.registry_dir);
        let (token, created) = OperatorToken::load_or_create(&path)?;
        if created {
            info!(path = %path.display(), "created the operator token file");
        }
        c.operator.token.operator_token_file = Some(path.clone());
        return Ok(Operator {
            token: Some(Arc::new(token)),
            file: Some((path, created)),
        });
    }
    let token = load_operator_token(&c.operator.token, &c.registry)?;
    let file = c
        .operator
        .token
        .operator_token_file
        .clone()
        .filter(|_| std::env::var_os(OperatorToken::ENV_VAR).is_none())
        .map(|path| (path, false));
    Ok(Operator { token, file })
}

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
                id: shared::registry::default_backend_id(
                    args.coordinator.bind.advertise_ip,
                    ports[0],
                ),
                ports,
            })
        })
        .collect()
}

fn backend_spec(
    args: &UpArgs,
    kind: RegistryKind,
    planned: &Planned,
    coordinator: &NodeAddress,
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
        "--up-coordinator".into(),
        coordinator.to_internal_address(),
    ];
    // Paths, never contents: every backend loads the same certificate (all on this host).
    argv.extend(c.tls.argv());
    if let Some(file) = &c.secret.secret_file {
        argv.push("--secret-file".into());
        argv.push(file.display().to_string());
    }
    // The token's path, never the token: a command line is visible to every user in `ps`.
    if let Some(file) = &c.operator.token.operator_token_file {
        argv.push("--operator-token-file".into());
        argv.push(file.display().to_string());
    }
    if c.operator.require_token {
        argv.push("--require-token".into());
    }
    if c.operator.protect_reads {
        argv.push("--protect-reads".into());
    }
    argv.extend(deploy_args(&c.deploy));
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

/// The deploy flags a backend gets: the coordinator's, so packages forwarded to a backend
/// install under the same `--deploy-root`, run as the same user, and meet the same limits
/// (all nodes of `colony up` share one host; each keeps its registry of deployed services
/// in `{root}/.colony/{instance id}/`). The poll interval is the coordinator's alone.
fn deploy_args(deploy: &DeployArgs) -> Vec<String> {
    let duration = |d| humantime::format_duration(d).to_string();
    vec![
        "--deploy-root".into(),
        deploy.deploy_root.display().to_string(),
        "--deploy-user".into(),
        deploy.deploy_user.clone(),
        "--max-package".into(),
        deploy.max_package.to_string(),
        "--package-timeout".into(),
        duration(deploy.package_timeout),
        "--max-unpacked".into(),
        deploy.max_unpacked.to_string(),
        "--max-package-files".into(),
        deploy.max_package_files.to_string(),
        "--deploy-start-timeout".into(),
        duration(deploy.deploy_start_timeout),
        "--deploy-stop-grace".into(),
        duration(deploy.deploy_stop_grace),
    ]
}

/// `colony up`.
pub async fn run(mut args: UpArgs) -> anyhow::Result<()> {
    // Listening from the start: a signal while the cluster comes up stops it cleanly too.
    let mut stop = std::pin::pin!(shared::signal::shutdown_signal());
    let (kind, _) = args.coordinator.registry.resolve()?;
    let operator = operator_token(&mut args, kind)?;
    let planned = plan(&args)?;
    let registry = args.coordinator.registry.open().await?;
    let tls = args.coordinator.tls.load()?;
    remove_dead_entries(registry.as_ref(), &planned, true, tls.as_ref()).await?;
    let processes = ProcessManager::new(
        args.coordinator.data_plane.grace,
        Supervision {
            restart: args.restart,
            ..Supervision::default()
        },
    )?;
    let coordinator = start_coordinator(args.coordinator.clone(), Some(processes.clone())).await?;
    let address = coordinator.address;

    let start = async {
        for p in &planned {
            processes
                .add(backend_spec(&args, kind, p, &address)?)
                .await?;
        }
        let client = http_client(operator.token.as_deref(), coordinator.colony.tls())?;
        wait_active(&client, &processes, &planned, &address, args.ready_timeout).await?;
        let topology = if args.no_start {
            None
        } else {
            Some(start_colony(&client, &address, args.start_body.as_deref()).await?)
        };
        print_summary(&address, &planned, topology.as_ref(), &args, &operator);
        anyhow::Ok(())
    };
    let outcome = tokio::select! {
        outcome = start => outcome,
        signal = &mut stop => Err(anyhow::anyhow!("stopped by {signal} before the cluster was up")),
    };
    if outcome.is_ok() {
        let signal = stop.await;
        info!(signal, "stopping the cluster");
    }
    // Stop following the colony first, so stopping its backends is not reported as a failure.
    coordinator.colony.close();
    processes.stop_all().await;
    coordinator.stop().await;
    // A backend killed rather than stopped could not unregister itself.
    if let Err(e) = remove_dead_entries(registry.as_ref(), &planned, false, tls.as_ref()).await {
        warn!(error = %e, "cannot clean up after the backends");
    }
    outcome
}

/// Polls the coordinator until every planned backend is ACTIVE, showing progress.
async fn wait_active(
    client: &Http,
    processes: &ProcessManager,
    planned: &[Planned],
    address: &shared::NodeAddress,
    timeout: Duration,
) -> anyhow::Result<()> {
    let url = format!(
        "{}://{}/health/status",
        client.scheme,
        address.to_mgmt_address()
    );
    let deadline = tokio::time::Instant::now() + timeout;
    let mut shown = usize::MAX;
    loop {
        for p in planned {
            // Supervision starts once the cluster is up: a backend that cannot even start
            // (a port taken, a bad flag) would only fail again, so say why now.
            if let Some(info) = processes.get(&p.id).await {
                if let Some(exit) = info.last_exit {
                    bail!(
                        "backend {} exited during start ({exit}); see {}:\n{}",
                        p.id,
                        info.log,
                        tail(&info.log, 8)
                    );
                }
            }
        }
        let active = match client.client.get(&url).send().await {
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

async fn start_colony(
    client: &Http,
    address: &shared::NodeAddress,
    body: Option<&str>,
) -> anyhow::Result<Value> {
    let url = format!(
        "{}://{}/colony-start",
        client.scheme,
        address.to_http_address()
    );
    let key = format!("colony-up-{}", std::process::id());
    let response = client
        .client
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
    operator: &Operator,
) {
    let ip = address.ip;
    let tls = args
        .coordinator
        .tls
        .tls_ca
        .as_ref()
        .filter(|_| args.coordinator.tls.tls_cert.is_some());
    let (s, curl) = match tls {
        Some(ca) => ("https", format!("curl --cacert {}", ca.display())),
        None => ("http", "curl".to_owned()),
    };
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
        "  coordinator    data {}  control {s}://{}  mgmt {s}://{}",
        address.to_internal_address(),
        address.to_http_address(),
        address.to_mgmt_address()
    );
    for p in planned {
        println!(
            "  {:<14} data {ip}:{}  control {s}://{ip}:{}  mgmt {s}://{ip}:{}",
            p.id, p.ports[0], p.ports[1], p.ports[2]
        );
    }
    println!();
    println!("Dashboard: {s}://{}/", address.to_mgmt_address());
    let nc = match tls {
        Some(ca) => format!(
            "openssl s_client -quiet -CAfile {} -connect {ip}:",
            ca.display()
        ),
        None => format!("nc {ip} "),
    };
    println!(
        "Try: {nc}{}  (then PING, SHARDS, SHARD 0 0)   {curl} {s}://{}/topology",
        planned
            .first()
            .map_or(address.internal_port, |p| p.ports[0]),
        address.to_http_address()
    );
    print_operator(address, args, operator);
    println!(
        "Logs: {}   Restart: {} (--restart)   Stop: Ctrl-C",
        args.coordinator
            .registry
            .registry_dir
            .join("output")
            .join("logs")
            .display(),
        args.restart
    );
}

/// Where the operator token is and how to send it; never the token itself.
fn print_operator(address: &shared::NodeAddress, args: &UpArgs, operator: &Operator) {
    let example = |token: &str| {
        format!(
            "curl -H \"Authorization: Bearer {token}\" -XPOST {}://{}/colony/pause",
            if args.coordinator.tls.tls_cert.is_some() {
                "https"
            } else {
                "http"
            },
            address.to_http_address()
        )
    };
    match (&operator.token, &operator.file) {
        (None, _) => println!(
            "Operator token: none; only local tools on this machine can change state \
             (set {} or --operator-token-file)",
            OperatorToken::ENV_VAR
        ),
        (Some(_), Some((path, created))) => {
            println!(
                "Operator token: {}{}",
                path.display(),
                if *created {
                    " (created, mode 0600)"
                } else {
                    ""
                }
            );
            println!(
                "  send it as: {}",
                example(&format!("$(cat {})", path.display()))
            );
        }
        (Some(_), None) => {
            println!("Operator token: from {}", OperatorToken::ENV_VAR);
            println!(
                "  send it as: {}",
                example(&format!("${}", OperatorToken::ENV_VAR))
            );
        }
    }
    let c = &args.coordinator;
    if c.bind.bind_ip.is_loopback() && !c.operator.require_token {
        println!("  (local tools on this machine act as the operator without it; --require-token turns that off)");
    }
}

/// Removes the registry entries a previous run left behind: those of the planned backends
/// and, before we start (`before_start`), the coordinator's, whose node does not answer on
/// its management port. Entries of other ids are left alone: they may belong to nodes this
/// host cannot see (another host, a partition), and `colony-start` skips dead ones anyway.
///
/// # Errors
/// Before we start, a coordinator that answers: another cluster uses this registry.
/// Registry failures are logged, not returned: a node that cannot clean up still starts.
async fn remove_dead_entries(
    registry: &dyn ClusterRegistry,
    planned: &[Planned],
    before_start: bool,
    tls: Option<&Tls>,
) -> anyhow::Result<()> {
    let client = http_client(None, tls)?;
    if before_start {
        match registry.discover_coordinator().await {
            Ok(Some(entry)) if crate::liveness::answers(&client, &entry).await => bail!(
                "a coordinator already runs at {} (mgmt {}), registered in {}: stop it, or give this cluster its own --registry-dir",
                entry.to_internal_address(),
                entry.to_mgmt_address(),
                registry.describe()
            ),
            Ok(Some(entry)) => match registry.unregister_coordinator().await {
                Ok(()) => info!(coordinator = %entry.to_internal_address(), registry = %registry.describe(), "removed a leftover coordinator entry: its node does not answer"),
                Err(e) => warn!(error = %e, "cannot remove a leftover coordinator entry"),
            },
            Ok(None) => {}
            Err(e) => warn!(error = %e, "cannot read the registry to clean up leftovers"),
        }
    }
    let registered = match registry.discover_backends().await {
        Ok(registered) => registered,
        Err(e) => {
            warn!(error = %e, "cannot read the registry to clean up leftovers");
            return Ok(());
        }
    };
    // Probed at once, so a run of dead entries costs one probe timeout, not one each.
    let mut checks = tokio::task::JoinSet::new();
    for (id, entry) in registered {
        if planned.iter().any(|p| p.id == id) {
            let client = client.clone();
            checks.spawn(async move {
                (!crate::liveness::answers(&client, &entry).await).then_some((id, entry))
            });
        }
    }
    while let Some(checked) = checks.join_next().await {
        let Ok(Some((id, entry))) = checked else {
            continue;
        };
        match registry.unregister_backend(&id).await {
            Ok(()) => {
                info!(backend = %id, internal = %entry.to_internal_address(), "removed a leftover backend entry: its node does not answer")
            }
            Err(e) => warn!(backend = %id, error = %e, "cannot remove a leftover registry entry"),
        }
    }
    Ok(())
}

/// The client `colony up` calls its coordinator with: as the operator, with the token if
/// there is one (it needs it with --require-token or --protect-reads), over `tls` if given.
fn http_client(token: Option<&OperatorToken>, tls: Option<&Tls>) -> anyhow::Result<Http> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        let mut value =
            reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                .context("the operator token does not fit in a header")?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    let client = shared::tls::http_client(tls)
        .timeout(Duration::from_secs(30))
        .default_headers(headers)
        .build()
        .context("cannot build an HTTP client")?;
    Ok(Http {
        client,
        scheme: shared::tls::scheme(tls),
    })
}

fn tail(path: &str, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::command::{Cli, Command};

    #[test]
    fn backends_get_the_deploy_flags_colony_up_was_given() {
        let up = Cli::try_parse_from([
            "colony",
            "up",
            "--deploy-root",
            "/srv/colony apps",
            "--deploy-user",
            "svc",
            "--max-package",
            "1000",
            "--package-timeout",
            "90s",
            "--max-unpacked",
            "5000",
            "--max-package-files",
            "7",
            "--deploy-start-timeout",
            "1m 30s",
            "--deploy-stop-grace",
            "250ms",
        ])
        .unwrap();
        let Command::Up(up) = up.command else {
            panic!("not up: {up:?}")
        };
        let backend = Cli::try_parse_from(
            ["colony".to_owned(), "backend".to_owned()]
                .into_iter()
                .chain(deploy_args(&up.coordinator.deploy)),
        )
        .unwrap();
        let Command::Backend(backend) = backend.command else {
            panic!("not backend: {backend:?}")
        };
        // Every flag arrives as given (the poll interval is the coordinator's alone and
        // stays at its default on both sides here).
        assert_eq!(
            format!("{:?}", backend.deploy),
            format!("{:?}", up.coordinator.deploy)
        );
        assert_eq!(
            backend.deploy.deploy_root,
            std::path::Path::new("/srv/colony apps")
        );
    }
}
