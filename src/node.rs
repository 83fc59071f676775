//! Running a node: bind its three listeners, serve them, register, and on SIGINT/SIGTERM/SIGHUP
//! unregister, say goodbye and drain within the grace period.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use controlplane::control::{self, BackendControl};
use controlplane::coordinator::colony::{ColonyConfig, ColonyManager};
use controlplane::coordinator::health::tracker::HealthTracker;
use controlplane::coordinator::processes::ProcessManager;
use controlplane::deploy::deployer::Deployer;
use controlplane::deploy::forward::Forwarder;
use controlplane::heartbeat_sender::HeartbeatSender;
use controlplane::http::{harden, serve_limited_on_own_thread, Beside, HttpLimits};
use controlplane::management;
use controlplane::metrics::Metrics;
use controlplane::node_auth::NodeAuth;
use controlplane::operator::{Access, OperatorConfig};
use controlplane::serve::{FdBudget, ServeLimits};
use controlplane::state::{MgmtState, NodeInfo};
use controlplane::token_reporter::TokenReporter;
use controlplane::wire::heartbeat::{NodeType, DEPLOYED_DIGEST_METRIC};
use dataplane::{DataPlane, Identity, ReadAccess, ShardStore};
use shared::operator::OperatorToken;
use shared::registry::{spawn_registration, ClusterRegistry, RegistryKind, Role};
use shared::secret::ClusterSecret;
use shared::signing::{RequestSigner, SignatureVerifier};
use shared::tls::Tls;
use shared::token::{TokenIssuer, TokenVerifier};
use shared::NodeAddress;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::cli::{
    BackendArgs, BindArgs, CoordinatorArgs, RegistryArgs, SecretArgs, TlsArgs, TokenArgs,
};

/// The three bound listeners of a node.
struct Listeners {
    data: TcpListener,
    control: TcpListener,
    mgmt: TcpListener,
}

/// How many connections the kernel may queue before the accept loop takes them (capped by
/// `net.core.somaxconn`). Tokio's `TcpListener::bind` asks for 128: a crowd of nodes or
/// clients connecting at once overflows that, and a handshake the kernel then completes
/// with a SYN cookie but drops is a connection the client believes open and the node never
/// learns of.
const LISTEN_BACKLOG: u32 = 4096;

/// A listener on `addr` with [`LISTEN_BACKLOG`], address reuse as `TcpListener::bind` sets.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

impl Listeners {
    async fn bind(bind: &BindArgs, ports: [u16; 3]) -> anyhow::Result<Listeners> {
        let one = |port, what: &'static str| {
            let addr = SocketAddr::new(bind.bind_ip, port);
            async move {
                listen(addr).with_context(|| format!("cannot bind the {what} listener on {addr}"))
            }
        };
        Ok(Listeners {
            data: one(ports[0], "data-plane").await?,
            control: one(ports[1], "control-plane").await?,
            mgmt: one(ports[2], "management").await?,
        })
    }

    /// The address to advertise: the advertised IP and the ports actually bound.
    fn address(&self, advertise_ip: std::net::IpAddr) -> anyhow::Result<NodeAddress> {
        let port = |l: &TcpListener| -> anyhow::Result<u16> {
            Ok(l.local_addr()
                .context("listener has no local address")?
                .port())
        };
        Ok(NodeAddress::new(
            advertise_ip,
            port(&self.data)?,
            port(&self.control)?,
            port(&self.mgmt)?,
        ))
    }
}

/// The node's TLS from `--tls-*`, said once in the log; `None` (plaintext) without them.
fn load_tls(args: &TlsArgs) -> anyhow::Result<Option<Tls>> {
    let tls = args.load()?;
    match &tls {
        Some(tls) => info!(
            cert = ?args.tls_cert,
            handshake_timeout = ?tls.handshake_timeout(),
            "TLS on every listener and every call to another node"
        ),
        None => info!("no TLS: listeners and calls to other nodes are plaintext"),
    }
    Ok(tls)
}

/// The cluster secret: COLONY_CLUSTER_SECRET, else --secret-file, else (file registry only)
/// DIR/output/cluster.key, created on first use.
fn load_secret(secret: &SecretArgs, registry: &RegistryArgs) -> anyhow::Result<ClusterSecret> {
    let env = std::env::var(ClusterSecret::ENV_VAR).ok();
    let (kind, config) = registry.resolve()?;
    let localhost_key = (kind == RegistryKind::File)
        .then(|| config.registry_dir.join("output").join("cluster.key"));
    let secret = ClusterSecret::resolve(
        env.as_deref(),
        secret.secret_file.as_deref(),
        localhost_key.as_deref(),
    )
    .with_context(|| {
        format!(
            "no usable cluster secret: set {} or --secret-file{}",
            ClusterSecret::ENV_VAR,
            if kind == RegistryKind::File {
                ""
            } else {
                " (the SSM registry never stores secrets)"
            }
        )
    })?;
    info!(key_id = secret.key_id(), "cluster secret loaded");
    Ok(secret)
}

/// Where localhost mode keeps the operator token: DIR/output/operator.token.
pub fn operator_token_path(registry_dir: &std::path::Path) -> std::path::PathBuf {
    registry_dir
        .join("output")
        .join(OperatorToken::LOCALHOST_FILE)
}

/// The operator token: COLONY_OPERATOR_TOKEN, else --operator-token-file, else (file
/// registry) DIR/output/operator.token if it exists. `None` if there is none.
pub fn load_operator_token(
    token: &TokenArgs,
    registry: &RegistryArgs,
) -> anyhow::Result<Option<Arc<OperatorToken>>> {
    let env = std::env::var(OperatorToken::ENV_VAR).ok();
    let (kind, config) = registry.resolve()?;
    let localhost = (kind == RegistryKind::File).then(|| operator_token_path(&config.registry_dir));
    let token = OperatorToken::resolve(
        env.as_deref(),
        token.operator_token_file.as_deref(),
        localhost.as_deref(),
    )?;
    Ok(token.map(Arc::new))
}

/// The node's operator checks, with what they mean for this node said once in the log.
/// `guarded` names what needs the operator here: `change state` on the coordinator; on a
/// backend, which takes no operator calls, only `read`, and only with `--protect-reads`.
fn operator_config(
    config: anyhow::Result<OperatorConfig>,
    bind: &BindArgs,
    guarded: &str,
) -> anyhow::Result<OperatorConfig> {
    let config = config?;
    let matters = guarded != "read" || config.protect_reads;
    match &config.token {
        Some(token) => info!(from = token.origin(), "operator token loaded"),
        None if !matters => {}
        None if bind.bind_ip.is_loopback() && !config.require_token => info!(
            "no operator token: only local tools on this machine can {guarded} (set {} or --operator-token-file)",
            OperatorToken::ENV_VAR
        ),
        None => warn!(
            bind_ip = %bind.bind_ip,
            "no operator token, and no client is trusted by its address: nothing can {guarded} over HTTP (set {} or --operator-token-file)",
            OperatorToken::ENV_VAR
        ),
    }
    Ok(config)
}

/// Who may read on the data plane: the same `--protect-reads` and token as the HTTP planes.
fn read_access(operator: &OperatorConfig) -> ReadAccess {
    ReadAccess {
        protect_reads: operator.protect_reads,
        operator: operator.token.clone(),
    }
}

/// The node's registry, named in the log so an operator sees which one a node uses.
async fn node_registry(args: &RegistryArgs) -> anyhow::Result<Arc<dyn ClusterRegistry>> {
    let registry = args.open().await?;
    info!(registry = %registry.describe(), "using the cluster registry");
    Ok(registry)
}

/// Background work of a node, stopped together.
struct Tasks {
    set: JoinSet<()>,
    shutdown: CancellationToken,
}

impl Tasks {
    fn new() -> Self {
        Tasks {
            set: JoinSet::new(),
            shutdown: CancellationToken::new(),
        }
    }

    fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.set.spawn(task);
    }

    fn serve_http(
        &mut self,
        listener: TcpListener,
        router: Router,
        (limits, budget): (ServeLimits, FdBudget),
        tls: Option<Tls>,
        what: &'static str,
    ) {
        let shutdown = self.shutdown.clone();
        self.set.spawn(async move {
            let served =
                controlplane::serve::serve(listener, router, limits, budget, tls, shutdown, what)
                    .await;
            if let Err(e) = served {
                warn!(listener = what, error = %e, "HTTP listener failed");
            }
        });
    }

    /// Serves a node's three listeners: the data plane (over TLS if its identity has it),
    /// and the two HTTP planes hardened and over `tls` if given. `control` and `mgmt` come
    /// with the routes merged after the standard layers (forwarded deployments and package
    /// uploads, which have their own limits); `mgmt` also with the tracker of its tasks and
    /// what runs beside it on its thread (the coordinator's failure detector).
    fn serve_planes(
        &mut self,
        listeners: Listeners,
        data_plane: &DataPlane,
        (control, deploys, tls): (Router, Option<Router>, Option<Tls>),
        (mgmt, mgmt_tasks, uploads, beside): (Router, TaskTracker, Option<Router>, Option<Beside>),
        (limits, serving): (HttpLimits, (ServeLimits, FdBudget)),
        metrics: &Metrics,
    ) {
        let (dp, token) = (data_plane.clone(), self.shutdown.clone());
        self.spawn(async move {
            if let Err(e) = dp.serve_on_own_thread(listeners.data, token).await {
                warn!(error = %e, "data plane failed");
            }
        });
        let mut control = harden(control, limits, metrics.http.clone(), "control");
        // Forwarded deployments bring their own body limit and timeout (control::deploy).
        if let Some(deploys) = deploys {
            control = control.merge(deploys);
        }
        self.serve_http(
            listeners.control,
            control,
            serving.clone(),
            tls.clone(),
            "control",
        );
        let mut mgmt = harden(mgmt, limits, metrics.http.clone(), "mgmt");
        // Uploads bring their own body limit and timeout (management::packages).
        if let Some(uploads) = uploads {
            mgmt = mgmt.merge(uploads);
        }
        let token = self.shutdown.clone();
        self.spawn(async move {
            let served = serve_limited_on_own_thread(
                listeners.mgmt,
                mgmt,
                serving,
                (mgmt_tasks, tls, beside),
                token,
                "mgmt",
            );
            if let Err(e) = served.await {
                warn!(listener = "mgmt", error = %e, "HTTP listener failed");
            }
        });
    }

    async fn stop(mut self, grace: Duration) {
        self.shutdown.cancel();
        let drained = tokio::time::timeout(grace, async {
            while self.set.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(grace = ?grace, "grace period ran out; dropping what is still running");
            self.set.abort_all();
        }
    }
}

/// A backend's heartbeat metrics: its data plane's counters, and the digest of its deployed
/// services (the coordinator asks for the list only when that changed).
fn heartbeat_metrics(
    data_plane: &DataPlane,
    deployer: &Deployer,
) -> controlplane::heartbeat_sender::MetricsSource {
    let data_plane = data_plane.clone();
    let services = deployer.services().clone();
    Arc::new(move || {
        let s = data_plane.stats().snapshot();
        BTreeMap::from([
            (DEPLOYED_DIGEST_METRIC.to_owned(), services.digest() as f64),
            ("connections".to_owned(), s.connections as f64),
            ("frames_in".to_owned(), s.frames_in as f64),
            ("frames_out".to_owned(), s.frames_out as f64),
            ("errors".to_owned(), s.errors as f64),
            ("uptime_secs".to_owned(), s.uptime_secs as f64),
        ])
    })
}

fn log_listening(role: &str, id: &str, address: &NodeAddress) {
    info!(
        role,
        instance_id = id,
        internal = %address.to_internal_address(),
        http = %address.to_http_address(),
        mgmt = %address.to_mgmt_address(),
        "node listening"
    );
}

/// Waits for the registration task to settle, then removes the entry, so a late write
/// cannot undo the removal.
async fn unregister(
    registry: &dyn ClusterRegistry,
    role: &Role,
    registration: tokio::task::JoinHandle<()>,
    token: CancellationToken,
) {
    token.cancel();
    if tokio::time::timeout(Duration::from_secs(2), registration)
        .await
        .is_err()
    {
        warn!("registration still in flight at shutdown");
    }
    let result = match role {
        Role::Coordinator => registry.unregister_coordinator().await,
        Role::Backend(id) => registry.unregister_backend(id).await,
    };
    match result {
        Ok(()) => info!(registry = %registry.describe(), "unregistered from the cluster registry"),
        Err(e) => warn!(error = %e, "could not unregister; the entry may linger"),
    }
}

/// A coordinator running in this process.
pub struct CoordinatorHandle {
    /// Its advertised address.
    pub address: NodeAddress,
    /// Its colony.
    pub colony: ColonyManager,
    deployer: Deployer,
    registry: Arc<dyn ClusterRegistry>,
    registration: tokio::task::JoinHandle<()>,
    registration_token: CancellationToken,
    tasks: Tasks,
    grace: Duration,
}

impl CoordinatorHandle {
    /// Unregisters, then stops every listener within the grace period.
    pub async fn stop(self) {
        self.colony.close();
        // Deployed services stop with their node (the registry keeps them as running).
        self.deployer.services().shutdown().await;
        unregister(
            self.registry.as_ref(),
            &Role::Coordinator,
            self.registration,
            self.registration_token,
        )
        .await;
        self.tasks.stop(self.grace).await;
        info!("coordinator stopped");
    }
}

/// Binds and serves a coordinator; `processes` are the backends `colony up` manages.
pub async fn start_coordinator(
    args: CoordinatorArgs,
    processes: Option<ProcessManager>,
) -> anyhow::Result<CoordinatorHandle> {
    let data_config = args.data_plane.config()?;
    let health_config = args.health.config()?;
    let limits: HttpLimits = args.http.limits();
    let tls = load_tls(&args.tls)?;
    let registry = node_registry(&args.registry).await?;
    let secret = load_secret(&args.secret, &args.registry)?;
    let operator = operator_config(
        load_operator_token(&args.operator.token, &args.registry)
            .and_then(|token| Ok(args.operator.config(token, Some(&args.rates))?)),
        &args.bind,
        "change state",
    )?;
    let listeners = Listeners::bind(
        &args.bind,
        [args.internal_port, args.http_port, args.mgmt_port],
    )
    .await?;
    let address = listeners.address(args.bind.advertise_ip)?;
    let node_id = "coordinator";
    let secret = Arc::new(secret);
    let identity = Identity {
        instance_id: node_id.to_owned(),
        secret: secret.clone(),
        tls: tls.clone(),
    };
    let health = HealthTracker::new(health_config, Some((node_id.to_owned(), address)));
    let mut colony_config = ColonyConfig::default();
    colony_config.run.checkpoint_every = args.checkpoint_every;
    colony_config.recovery.hold_open = args.recovery_hold_open;
    let colony = ColonyManager::new(
        registry.clone(),
        address,
        TokenIssuer::new(&secret),
        identity.clone(),
        colony_config,
        Some(health.clone()),
    );

    let colony_handle = colony.clone();
    let data_plane = DataPlane::with_access(
        data_config,
        ShardStore::new(),
        Some(identity),
        read_access(&operator),
    );
    let metrics = Metrics::coordinator(data_plane.clone(), health.clone(), colony.clone());
    let access = Access::new(operator, &metrics);
    // Pages served from the management port are this node's own dashboard.
    let dashboard = Some(address.mgmt_port);
    let (deployer, upload_limits) = args.deploy.open(node_id, &address.ip.to_string())?;
    let deployer = deployer.with_forwarder(Forwarder::new(
        RequestSigner::new(&secret),
        args.deploy.package_timeout + args.deploy.deploy_start_timeout,
        tls.as_ref(),
    )?);
    let deploy = Some(deployer.clone());
    let mgmt = MgmtState {
        node: NodeInfo::new(node_id, NodeType::Coordinator, address),
        node_auth: NodeAuth::new(
            SignatureVerifier::new(&secret),
            metrics.auth_refusals.clone(),
            "mgmt",
        ),
        metrics: metrics.clone(),
        guard: access.guard("mgmt", args.bind.bind_ip, dashboard),
        health: Some(health.clone()),
        processes,
        colony: Some(colony.clone()),
        deploy: deploy.clone(),
        tasks: TaskTracker::new(),
    };

    let mut tasks = Tasks::new();
    // The failure detector runs on the management thread, where heartbeats are read, so a
    // stall of that thread is its own and not the nodes' silence (HealthTracker::sweeper;
    // heartbeat channels over plain TCP have a thread of their own, which watches its own
    // stalls). Beside it, the batching of that thread's turns while heartbeats flow fast
    // over the channels it serves.
    let thread_flow = management::batching::Flow::default();
    let sweeper: Beside = {
        let sweeper = health.clone().sweeper(tasks.shutdown.clone());
        let batching = management::batching::batch_wakeups(
            thread_flow.clone(),
            mgmt.metrics.batched_turns.clone(),
            tasks.shutdown.clone(),
        );
        Box::pin(async move {
            tokio::join!(sweeper, batching);
        })
    };
    tasks.serve_planes(
        listeners,
        &data_plane,
        (
            control::coordinator_router(
                colony.clone(),
                &access.guard("control", args.bind.bind_ip, dashboard),
            ),
            None,
            tls,
        ),
        (
            management::coordinator_router_with(
                mgmt.clone(),
                controlplane::ws::WsLimits::default(),
                thread_flow,
            ),
            mgmt.tasks,
            Some(management::packages::router(
                deployer.clone(),
                &mgmt.guard,
                upload_limits,
            )),
            Some(sweeper),
        ),
        (limits, args.http.serving()),
        &metrics,
    );
    // A colony the backends kept while no coordinator followed it is taken over.
    colony.spawn_adoption(tasks.shutdown.clone());
    log_listening("coordinator", node_id, &address);
    // Deployed services that were running when the coordinator last stopped start again.
    let restoring = deployer.clone();
    tasks.spawn(async move { restoring.services().restore().await });
    // Those deployed on backends are followed by polling them (deploy::remote says why).
    if let Some(remote) = deployer.remote() {
        let (live, changes) = (health.clone(), health.clone());
        tasks.spawn(remote.clone().poll(
            move || changes.live_changes(),
            move || controlplane::ws::deployed::live_backends(&live),
            args.deploy.deploy_poll_interval,
            tasks.shutdown.clone(),
        ));
    }

    let registration_token = CancellationToken::new();
    let registration = spawn_registration(
        registry.clone(),
        Role::Coordinator,
        address,
        registration_token.clone(),
    );
    Ok(CoordinatorHandle {
        address,
        colony: colony_handle,
        deployer,
        registry,
        registration,
        registration_token,
        tasks,
        grace: data_config.grace,
    })
}

/// `colony coordinator`.
pub async fn run_coordinator(args: CoordinatorArgs) -> anyhow::Result<()> {
    let coordinator = start_coordinator(args, None).await?;
    let signal = shared::signal::shutdown_signal().await;
    info!(signal, "shutting down");
    coordinator.stop().await;
    Ok(())
}

/// `colony backend`.
pub async fn run_backend(args: BackendArgs) -> anyhow::Result<()> {
    let data_config = args.data_plane.config()?;
    if args.heartbeat_interval < Duration::from_millis(10) {
        anyhow::bail!("--heartbeat-interval must be at least 10ms");
    }
    if let Some(id) = &args.instance_id {
        shared::registry::validate_instance_id(id).context("--instance-id")?;
    }
    let limits = args.http.limits();
    let tls = load_tls(&args.tls)?;
    let registry = node_registry(&args.registry).await?;
    let secret = load_secret(&args.secret, &args.registry)?;
    let operator = operator_config(
        load_operator_token(&args.operator.token, &args.registry)
            .and_then(|token| Ok(args.operator.config(token, None)?)),
        &args.bind,
        "read",
    )?;
    let listeners = Listeners::bind(
        &args.bind,
        [args.internal_port, args.http_port, args.mgmt_port],
    )
    .await?;
    let address = listeners.address(args.bind.advertise_ip)?;
    let instance_id = args
        .instance_id
        .clone()
        .unwrap_or_else(|| shared::registry::default_backend_id(address.ip, address.internal_port));
    // Before serving anything: a node refused here has touched neither the registry nor the
    // cluster, and exits with the reason.
    let probe = crate::liveness::probe_client(tls.as_ref())?;
    crate::claim::claim_instance_id(registry.as_ref(), &instance_id, address, &probe).await?;

    let secret = Arc::new(secret);
    let data_plane = DataPlane::with_access(
        data_config,
        ShardStore::new(),
        Some(Identity {
            instance_id: instance_id.clone(),
            secret: secret.clone(),
            tls: tls.clone(),
        }),
        read_access(&operator),
    );
    let metrics = Metrics::new(data_plane.clone(), None);
    let reporter_token = CancellationToken::new();
    let (token_reports, reporter) = TokenReporter::spawn(
        registry.clone(),
        RequestSigner::new(&secret),
        instance_id.clone(),
        tls.as_ref(),
        reporter_token.clone(),
    );
    let control_state = BackendControl {
        instance_id: instance_id.clone(),
        address,
        verifier: Arc::new(TokenVerifier::new(&secret)),
        node_auth: NodeAuth::new(
            SignatureVerifier::new(&secret),
            metrics.auth_refusals.clone(),
            "control",
        ),
        token_reports,
        store: data_plane.store().clone(),
    };
    let access = Access::new(operator, &metrics);
    // Packages the coordinator forwards run here (DESIGN §16).
    let (deployer, upload_limits) = args.deploy.open(&instance_id, &address.ip.to_string())?;
    let deploy_auth = control_state.node_auth.clone();
    let mgmt = MgmtState {
        node: NodeInfo::new(instance_id.clone(), NodeType::Backend, address),
        node_auth: control_state.node_auth.clone(),
        metrics: metrics.clone(),
        guard: access.guard("mgmt", args.bind.bind_ip, None),
        health: None,
        processes: None,
        colony: None,
        deploy: None,
        tasks: TaskTracker::new(),
    };

    let mut tasks = Tasks::new();
    tasks.serve_planes(
        listeners,
        &data_plane,
        (
            control::backend_router(
                control_state,
                &access.guard("control", args.bind.bind_ip, None),
            ),
            Some(control::deploy::router(
                deployer.clone(),
                deploy_auth,
                upload_limits,
                instance_id.clone(),
            )),
            tls.clone(),
        ),
        (
            management::backend_router(mgmt.clone()),
            mgmt.tasks,
            None,
            None,
        ),
        (limits, args.http.serving()),
        &metrics,
    );
    log_listening("backend", &instance_id, &address);
    let restoring = deployer.clone();
    tasks.spawn(async move { restoring.services().restore().await });

    let role = Role::Backend(instance_id.clone());
    let registration_token = CancellationToken::new();
    let registration = spawn_registration(
        registry.clone(),
        role.clone(),
        address,
        registration_token.clone(),
    );
    let heartbeat_token = CancellationToken::new();
    let heartbeats = HeartbeatSender::new(
        registry.clone(),
        instance_id.clone(),
        NodeType::Backend,
        address,
        args.heartbeat_interval,
        heartbeat_metrics(&data_plane, &deployer),
        (RequestSigner::new(&secret), tls.as_ref()),
    )
    .context("cannot make a boot id")?
    .spawn(heartbeat_token.clone());

    let signal = shared::signal::shutdown_signal().await;
    info!(signal, "shutting down");
    unregister(registry.as_ref(), &role, registration, registration_token).await;
    if let Some(coordinator) = args.up_coordinator {
        crate::liveness::forget_dead_coordinator(registry.as_ref(), coordinator, tls.as_ref())
            .await;
    }
    // Deployed services stop with their node (the registry keeps them as running).
    deployer.services().shutdown().await;
    heartbeat_token.cancel();
    reporter_token.cancel();
    if tokio::time::timeout(Duration::from_secs(2), heartbeats)
        .await
        .is_err()
    {
        warn!("heartbeat sender did not stop in time");
    }
    // It stops between reports; one in flight has its own timeout.
    if tokio::time::timeout(Duration::from_secs(2), reporter)
        .await
        .is_err()
    {
        warn!("token reporter did not stop in time");
    }
    tasks.stop(data_config.grace).await;
    info!("backend stopped");
    Ok(())
}
