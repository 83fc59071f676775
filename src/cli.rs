//! The command line: every flag, its environment twin and its default.
//!
//! Parsing and validation happen here, before anything binds; the subcommands receive typed
//! configuration.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use codec::Limits;
use controlplane::coordinator::health::config::HealthConfig;
use controlplane::coordinator::processes::RestartPolicy;
use controlplane::http::HttpLimits;
use controlplane::operator::OperatorConfig;
use controlplane::rate_limit::{RateLimit, RateLimitError};
use controlplane::serve::{raise_nofile_limit, FdBudget, ServeLimits};
use dataplane::DataPlaneConfig;
use shared::registry::{ClusterRegistry, RegistryConfig, RegistryError, RegistryKind};
use shared::sim::WorldParams;
use shared::tls::{Tls, TlsFiles};

/// Flags of `colony coordinator`.
#[derive(Debug, Args, Clone)]
pub struct CoordinatorArgs {
    #[command(flatten)]
    pub bind: BindArgs,

    /// Data-plane (framed TCP) port.
    #[arg(long, env = "COLONY_INTERNAL_PORT", default_value_t = 8082)]
    pub internal_port: u16,

    /// Control-plane (HTTP) port.
    #[arg(long, env = "COLONY_HTTP_PORT", default_value_t = 8083)]
    pub http_port: u16,

    /// Management (HTTP: heartbeats, health, metrics) port.
    #[arg(long, env = "COLONY_MGMT_PORT", default_value_t = 8084)]
    pub mgmt_port: u16,

    #[command(flatten)]
    pub health: HealthArgs,

    /// Backends record population and fingerprint every this many ticks (and at the last
    /// tick of every run); GET /colony reports the newest tick all backends recorded. Border
    /// exchanges cover several ticks but never cross a checkpoint, so a small value slows
    /// runs down.
    #[arg(long, env = "COLONY_CHECKPOINT_EVERY", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_every: u64,

    /// Test only: keep a re-placement `recovering` this long after fencing the backends,
    /// before it moves any shard (so a test can lose another backend meanwhile).
    #[arg(long, hide = true, default_value = "0s", value_parser = parse_duration)]
    pub recovery_hold_open: Duration,

    #[command(flatten)]
    pub registry: RegistryArgs,

    #[command(flatten)]
    pub secret: SecretArgs,

    #[command(flatten)]
    pub operator: OperatorArgs,

    #[command(flatten)]
    pub rates: RateArgs,

    #[command(flatten)]
    pub data_plane: DataPlaneArgs,

    #[command(flatten)]
    pub http: HttpArgs,

    #[command(flatten)]
    pub tls: TlsArgs,

    #[command(flatten)]
    pub deploy: DeployArgs,
}

/// Flags of deployed packages (DESIGN §16). `colony up` passes them (but the poll
/// interval) to its backends, so packages deployed to a backend follow them too.
#[derive(Debug, Args, Clone)]
pub struct DeployArgs {
    /// Where deployed packages are installed, each in {root}/{sanitized name}-{version}/.
    /// This node's registry of deployed services (services.json), its uploaded packages and
    /// the services' logs are kept under {root}/.colony/{instance id}/. `colony up` gives
    /// its backends the same root (and the other deploy flags but the poll interval).
    #[arg(long, env = "COLONY_DEPLOY_ROOT", default_value = "/opt")]
    pub deploy_root: PathBuf,

    /// When the node runs as root, deployed scripts run as this user.
    #[arg(long, env = "COLONY_DEPLOY_USER", default_value = "nobody")]
    pub deploy_user: String,

    /// Largest package, in bytes: an upload to the coordinator (PUT /packages/{file}), or
    /// one the coordinator forwards to a backend.
    #[arg(long, env = "COLONY_MAX_PACKAGE", default_value_t = 256 * 1024 * 1024)]
    pub max_package: u64,

    /// Longest a package upload may take.
    #[arg(long, env = "COLONY_PACKAGE_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub package_timeout: Duration,

    /// Most bytes a package may unpack to (tar headers included): gzip bombs stop here.
    #[arg(long, env = "COLONY_MAX_UNPACKED", default_value_t = 1024 * 1024 * 1024)]
    pub max_unpacked: u64,

    /// Most entries (files, directories, links) a package may hold.
    #[arg(long, env = "COLONY_MAX_PACKAGE_FILES", default_value_t = 10_000)]
    pub max_package_files: u64,

    /// Longest a deployed service's start.sh may take to become ready before it is killed.
    #[arg(long, env = "COLONY_DEPLOY_START_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub deploy_start_timeout: Duration,

    /// How long stop.sh, then SIGTERM, get before a deployed service is killed.
    #[arg(long, env = "COLONY_DEPLOY_STOP_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub deploy_stop_grace: Duration,

    /// Coordinator: how often it asks each live backend for its deployed services, which /ws
    /// and the dashboard list with the coordinator's own (their state changes and health
    /// checks reach /ws this late at most). Backends ignore it.
    #[arg(long, env = "COLONY_DEPLOY_POLL_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub deploy_poll_interval: Duration,
}

impl DeployArgs {
    /// The deployments of node `node`, advertised at `host`, with the upload limits.
    ///
    /// # Errors
    /// The registry of deployed services cannot be read. (A deploy user that does not exist
    /// does not stop the node: its deployments fail, saying why.)
    pub fn open(
        &self,
        node: &str,
        host: &str,
    ) -> anyhow::Result<(
        controlplane::deploy::deployer::Deployer,
        controlplane::management::packages::UploadLimits,
    )> {
        use controlplane::deploy::archive::ArchiveLimits;
        use controlplane::deploy::deployer::Deployer;
        use controlplane::deploy::install::Installer;
        use controlplane::deploy::lifecycle::{RunAs, Services, ServicesConfig};
        let run_as = RunAs::resolve(&self.deploy_user);
        if let RunAs::Unavailable(reason) = &run_as {
            tracing::warn!(%reason, "deployed packages cannot run on this node");
        }
        let services = Services::open(ServicesConfig {
            node: node.to_owned(),
            host: host.to_owned(),
            state_dir: self.deploy_root.join(".colony").join(node),
            run_as,
            start_timeout: self.deploy_start_timeout,
            stop_grace: self.deploy_stop_grace,
        })?;
        let installer = Installer::new(
            &self.deploy_root,
            ArchiveLimits {
                max_files: self.max_package_files,
                max_unpacked: self.max_unpacked,
            },
        );
        Ok((
            Deployer::new(installer, services),
            controlplane::management::packages::UploadLimits {
                max_package: self.max_package,
                timeout: self.package_timeout,
            },
        ))
    }
}

/// Flags of `colony backend`.
#[derive(Debug, Args)]
pub struct BackendArgs {
    #[command(flatten)]
    pub bind: BindArgs,

    /// Data-plane (framed TCP) port; 0 picks a free port.
    #[arg(long, env = "COLONY_INTERNAL_PORT", default_value_t = 0)]
    pub internal_port: u16,

    /// Control-plane (HTTP) port; 0 picks a free port.
    #[arg(long, env = "COLONY_HTTP_PORT", default_value_t = 0)]
    pub http_port: u16,

    /// Management (HTTP) port; 0 picks a free port.
    #[arg(long, env = "COLONY_MGMT_PORT", default_value_t = 0)]
    pub mgmt_port: u16,

    /// Instance id in the registry and in health reports [default: backend_{internal port} when
    /// the advertise IP is loopback, else backend_{advertise IP, '.' and ':' as '-'}_{internal
    /// port}, e.g. backend_198-18-0-11_9000]. A node whose id another live node holds at a
    /// different address refuses to start.
    #[arg(long, env = "COLONY_INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// Set by `colony up` on the backends it runs: its coordinator's data-plane address. A
    /// backend stopping because `colony up` died (killed outright, it could not clean up)
    /// removes that coordinator's registry entry if it no longer answers, since nothing else
    /// will. No environment twin: an inherited environment must not pass it on.
    #[arg(long, hide = true, value_name = "IP:PORT")]
    pub up_coordinator: Option<std::net::SocketAddr>,

    /// How often to send a heartbeat to the coordinator (e.g. 1s, 100ms).
    #[arg(long, env = "COLONY_HEARTBEAT_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,

    #[command(flatten)]
    pub registry: RegistryArgs,

    #[command(flatten)]
    pub secret: SecretArgs,

    #[command(flatten)]
    pub operator: OperatorArgs,

    #[command(flatten)]
    pub data_plane: DataPlaneArgs,

    #[command(flatten)]
    pub http: HttpArgs,

    #[command(flatten)]
    pub tls: TlsArgs,

    #[command(flatten)]
    pub deploy: DeployArgs,
}

/// Flags of `colony up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Backends to run.
    #[arg(long, env = "COLONY_BACKENDS", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub backends: u16,

    /// First backend port: backend k gets base+10k, base+10k+1 and base+10k+2.
    #[arg(long, env = "COLONY_BASE_PORT", default_value_t = 9000)]
    pub base_port: u16,

    /// How often backends send heartbeats.
    #[arg(long, env = "COLONY_HEARTBEAT_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,

    /// JSON body for the colony start, e.g. '{"width_in_shards":4,"seed":7}' (DESIGN §3).
    #[arg(long, env = "COLONY_START_BODY")]
    pub start_body: Option<String>,

    /// Bring the nodes up but do not start a colony.
    #[arg(long)]
    pub no_start: bool,

    /// What happens to a backend that exits by itself: `on-failure` starts it again on the
    /// same ports when it failed (a non-zero exit, or killed by a signal such as kill -9),
    /// after a backoff of 0.5s doubling to 10s (0.5s again once it has run a minute);
    /// `never` leaves it down. A clean exit (it was asked to stop) is never restarted, nor is
    /// a backend stopped from the dashboard or /ws.
    #[arg(long, env = "COLONY_RESTART", default_value_t = RestartPolicy::OnFailure)]
    pub restart: RestartPolicy,

    /// Give up if the backends are not all ACTIVE within this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub ready_timeout: Duration,

    #[command(flatten)]
    pub coordinator: CoordinatorArgs,
}

/// Flags of `colony reference` (defaults as `POST /colony-start`'s).
// The defaults come from their one definition, `WorldParams::default()` (DESIGN §3).
#[derive(Debug, Args)]
pub struct ReferenceArgs {
    /// Shards per world row.
    #[arg(long, default_value_t = WorldParams::default().width_in_shards)]
    pub width_in_shards: u32,
    /// Shards per world column.
    #[arg(long, default_value_t = WorldParams::default().height_in_shards)]
    pub height_in_shards: u32,
    /// Cells per shard row.
    #[arg(long, default_value_t = WorldParams::default().shard_width)]
    pub shard_width: u32,
    /// Cells per shard column.
    #[arg(long, default_value_t = WorldParams::default().shard_height)]
    pub shard_height: u32,
    /// Life-like rule.
    #[arg(long, default_value_t = WorldParams::default().rule.to_string())]
    pub rule: String,
    /// Seed of the initial soup.
    #[arg(long, default_value_t = WorldParams::default().seed)]
    pub seed: u64,
    /// Fraction of cells alive at tick 0.
    #[arg(long, default_value_t = WorldParams::default().density)]
    pub density: f64,
    /// A global cell alive at tick 0 besides the soup, as `X,Y`; repeat for a pattern (the
    /// `cells` of `POST /colony-start`).
    #[arg(long = "cell", value_name = "X,Y", value_parser = parse_cell)]
    pub cells: Vec<[u64; 2]>,
    /// Ticks to run.
    #[arg(long, default_value_t = 0)]
    pub ticks: u64,
}

/// Flags of `colony status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub registry: RegistryArgs,

    #[command(flatten)]
    pub token: TokenArgs,

    /// A TLS cluster: the same --tls-cert/--tls-key/--tls-ca as a node of it (a node's
    /// certificate for this host's address; only the CA is checked against the server).
    #[command(flatten)]
    pub tls: TlsArgs,

    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Where a node listens and what address it tells others.
#[derive(Debug, Args, Clone)]
pub struct BindArgs {
    /// IP address the listeners bind to.
    #[arg(long, env = "COLONY_BIND_IP", default_value = "127.0.0.1")]
    pub bind_ip: IpAddr,

    /// IP address other nodes should use to reach this one (registered in the registry).
    #[arg(long, env = "COLONY_ADVERTISE_IP", default_value = "127.0.0.1")]
    pub advertise_ip: IpAddr,
}

/// Which cluster registry to use and where it is.
#[derive(Debug, Args, Clone)]
pub struct RegistryArgs {
    /// Cluster registry: `file` (files under --registry-dir) or `ssm` (AWS SSM Parameter
    /// Store) [default: from DEPLOYMENT_MODE: localhost → file, aws → ssm].
    #[arg(long, env = "COLONY_REGISTRY")]
    pub registry: Option<RegistryKind>,

    /// `localhost` (the default) or `aws`; chooses the registry when --registry is not given.
    #[arg(long, env = "DEPLOYMENT_MODE", hide = true)]
    pub deployment_mode: Option<String>,

    /// Root of the file registry: entries live in DIR/output/ssm/.
    #[arg(long, env = "COLONY_REGISTRY_DIR", default_value = ".")]
    pub registry_dir: PathBuf,

    /// Parameter-name prefix of the SSM registry.
    #[arg(long, env = "COLONY_SSM_PREFIX", default_value = shared::registry::DEFAULT_SSM_PREFIX)]
    pub ssm_prefix: String,
}

impl RegistryArgs {
    /// The registry kind and its configuration.
    ///
    /// # Errors
    /// An unknown DEPLOYMENT_MODE.
    pub fn resolve(&self) -> Result<(RegistryKind, RegistryConfig), RegistryError> {
        let kind = shared::registry::resolve_kind(self.registry, self.deployment_mode.as_deref())?;
        Ok((
            kind,
            RegistryConfig {
                registry_dir: self.registry_dir.clone(),
                ssm_prefix: self.ssm_prefix.clone(),
            },
        ))
    }

    /// The registry these flags select, opened (see [`shared::registry::open_registry`]).
    ///
    /// # Errors
    /// An unknown DEPLOYMENT_MODE, or an SSM registry without a region or credentials.
    pub async fn open(&self) -> Result<Arc<dyn ClusterRegistry>, RegistryError> {
        let (kind, config) = self.resolve()?;
        shared::registry::open_registry(kind, config).await
    }
}

/// Where the cluster secret comes from (it signs init tokens and data-plane HELLOs).
#[derive(Debug, Args, Clone)]
pub struct SecretArgs {
    /// File holding the cluster secret (at least 16 bytes). Without it, and without the
    /// COLONY_CLUSTER_SECRET variable, the file registry's DIR/output/cluster.key is used,
    /// created (mode 0600) by the first node that needs it.
    #[arg(long, env = "COLONY_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,
}

/// Where the operator token comes from (DESIGN §13). The token itself is never a flag, so
/// it never shows in `ps`: it is the COLONY_OPERATOR_TOKEN variable or a file.
#[derive(Debug, Args, Clone)]
pub struct TokenArgs {
    /// File holding the operator token (at least 16 visible characters), which the operator
    /// sends as `Authorization: Bearer <token>`. Without it, and without the
    /// COLONY_OPERATOR_TOKEN variable, the file registry's DIR/output/operator.token is used
    /// if it exists (`colony up` creates it).
    #[arg(long, env = "COLONY_OPERATOR_TOKEN_FILE")]
    pub operator_token_file: Option<PathBuf>,
}

/// Who acts as the operator (DESIGN §13).
#[derive(Debug, Args, Clone)]
pub struct OperatorArgs {
    #[command(flatten)]
    pub token: TokenArgs,

    /// Trust no client by its address: even on listeners bound to loopback, changing state
    /// needs the operator token. (Listeners bound to any other address always need it.)
    #[arg(long, env = "COLONY_REQUIRE_TOKEN")]
    pub require_token: bool,

    /// Reads need the operator too (health, metrics, alerts, topology, colony, shards, /ws;
    /// not the liveness probe GET /health), and the data plane answers only PING until
    /// HELLO/AUTH or a `TOKEN <operator token>` line.
    #[arg(long, env = "COLONY_PROTECT_READS")]
    pub protect_reads: bool,
}

/// Rate limits of the coordinator (token buckets; DESIGN §13). Heartbeats, reads and
/// pushed events are never limited.
#[derive(Debug, Args, Clone)]
pub struct RateArgs {
    /// State-changing HTTP calls per second per client address; more are answered 429.
    #[arg(long, env = "COLONY_HTTP_RATE_LIMIT", default_value_t = RateLimit::HTTP_DEFAULT.per_second)]
    pub http_rate_limit: u32,

    /// State-changing HTTP calls a client address may make at once after a quiet spell.
    #[arg(long, env = "COLONY_HTTP_RATE_BURST", default_value_t = RateLimit::HTTP_DEFAULT.burst)]
    pub http_rate_burst: u32,

    /// /ws requests per second per connection; more are answered `rate_limited`.
    #[arg(long, env = "COLONY_WS_RATE_LIMIT", default_value_t = RateLimit::WS_DEFAULT.per_second)]
    pub ws_rate_limit: u32,

    /// /ws requests a connection may make at once after a quiet spell.
    #[arg(long, env = "COLONY_WS_RATE_BURST", default_value_t = RateLimit::WS_DEFAULT.burst)]
    pub ws_rate_burst: u32,
}

impl OperatorArgs {
    /// The operator configuration with `token`, and the coordinator's rate limits if given
    /// (a backend takes no operator calls that change state: the defaults stand).
    ///
    /// # Errors
    /// A zero rate or burst, naming its flag.
    pub fn config(
        &self,
        token: Option<Arc<shared::operator::OperatorToken>>,
        rates: Option<&RateArgs>,
    ) -> Result<OperatorConfig, RateLimitError> {
        let mut config = OperatorConfig {
            token,
            require_token: self.require_token,
            protect_reads: self.protect_reads,
            ..OperatorConfig::default()
        };
        if let Some(rates) = rates {
            config.http_rate = RateLimit {
                per_second: rates.http_rate_limit,
                burst: rates.http_rate_burst,
            }
            .validate("--http-rate-limit", "--http-rate-burst")?;
            config.ws_rate = RateLimit {
                per_second: rates.ws_rate_limit,
                burst: rates.ws_rate_burst,
            }
            .validate("--ws-rate-limit", "--ws-rate-burst")?;
        }
        Ok(config)
    }
}

/// Failure-detector thresholds (coordinator).
#[derive(Debug, Args, Clone)]
pub struct HealthArgs {
    /// A node with no heartbeat for this long is STALE (at least 100ms).
    #[arg(long, env = "COLONY_STALE_AFTER", default_value = "3s", value_parser = parse_duration)]
    pub stale_after: Duration,

    /// A node with no heartbeat for this long is DOWN (longer than --stale-after).
    #[arg(long, env = "COLONY_DOWN_AFTER", default_value = "10s", value_parser = parse_duration)]
    pub down_after: Duration,

    /// A return to ACTIVE within this long after a failure began counts as a flap.
    #[arg(long, env = "COLONY_FLAP_WINDOW", default_value = "60s", value_parser = parse_duration)]
    pub flap_window: Duration,

    /// A node DOWN or LEFT for this long is forgotten (dropped from health, alerts resolved;
    /// at least 100ms).
    #[arg(long, env = "COLONY_FORGET_AFTER", default_value = "24h", value_parser = parse_duration)]
    pub forget_after: Duration,
}

impl HealthArgs {
    /// The validated thresholds.
    ///
    /// # Errors
    /// Names the flag out of range (the control plane's check, passed on unchanged).
    pub fn config(&self) -> anyhow::Result<HealthConfig> {
        let config = HealthConfig {
            stale_after: self.stale_after,
            down_after: self.down_after,
            flap_window: self.flap_window,
            forget_after: self.forget_after,
        };
        config.validate()?;
        Ok(config)
    }
}

/// TLS between nodes (DESIGN §15): all three files, or none for plaintext.
#[derive(Debug, Args, Clone)]
pub struct TlsArgs {
    /// The certificate presented (PEM, from `colony certs`). With --tls-key and --tls-ca, a
    /// node's listeners speak only TLS and its calls to other nodes use it; `colony bench`
    /// connects with it, as a node.
    #[arg(long, env = "COLONY_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "COLONY_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// The cluster CA's certificate (PEM): servers and peers must present certificates it
    /// signed.
    #[arg(long, env = "COLONY_TLS_CA")]
    pub tls_ca: Option<PathBuf>,

    /// How long a TLS handshake may take before the connection is dropped.
    #[arg(long, env = "COLONY_TLS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub tls_handshake_timeout: Duration,
}

impl TlsArgs {
    /// The files, if all three are given; `None` if none is (plaintext).
    ///
    /// # Errors
    /// Some but not all three are given.
    pub fn files(&self) -> anyhow::Result<Option<TlsFiles>> {
        match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (Some(cert), Some(key), Some(ca)) => Ok(Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            })),
            (None, None, None) => Ok(None),
            _ => anyhow::bail!(
                "TLS needs all three of --tls-cert, --tls-key and --tls-ca (or none, for plaintext)"
            ),
        }
    }

    /// The node's TLS, loaded; `None` without the flags.
    ///
    /// # Errors
    /// As [`TlsArgs::files`], or a file that cannot be loaded.
    pub fn load(&self) -> anyhow::Result<Option<Tls>> {
        let Some(files) = self.files()? else {
            return Ok(None);
        };
        let tls = Tls::load(&files, self.tls_handshake_timeout)
            .map_err(|e| anyhow::anyhow!("cannot load the TLS material: {e}"))?;
        Ok(Some(tls))
    }

    /// The flags that give a child process the same TLS (paths, never contents).
    pub fn argv(&self) -> Vec<String> {
        let mut argv = Vec::new();
        for (flag, path) in [
            ("--tls-cert", &self.tls_cert),
            ("--tls-key", &self.tls_key),
            ("--tls-ca", &self.tls_ca),
        ] {
            if let Some(path) = path {
                argv.push(flag.to_owned());
                argv.push(path.display().to_string());
            }
        }
        if !argv.is_empty() {
            argv.push("--tls-handshake-timeout".to_owned());
            argv.push(humantime::format_duration(self.tls_handshake_timeout).to_string());
        }
        argv
    }
}

/// Limits of the HTTP listeners.
#[derive(Debug, Args, Clone)]
pub struct HttpArgs {
    /// Largest HTTP request body accepted, in bytes.
    #[arg(long, env = "COLONY_MAX_BODY", default_value_t = 1024 * 1024)]
    pub max_body: usize,

    /// HTTP requests taking longer than this are answered 408.
    #[arg(long, env = "COLONY_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// An HTTP request header must be complete this long after the connection opens (or
    /// after its first byte on a kept-alive connection); slower connections are closed.
    #[arg(long, env = "COLONY_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub http_header_timeout: Duration,

    /// A kept-alive HTTP connection with no request for this long is closed.
    #[arg(long, env = "COLONY_HTTP_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub http_idle_timeout: Duration,

    /// Connections each HTTP listener serves at once. At the cap the connection idle
    /// longest is closed to make room; if none is idle the newcomer gets a 503.
    #[arg(long, env = "COLONY_HTTP_MAX_CONNECTIONS", default_value_t = ServeLimits::DEFAULT.max_connections)]
    pub http_max_connections: usize,

    /// File descriptors the HTTP listeners leave for everything else (outgoing
    /// connections, the data plane, files). At start-up the soft open-files limit is raised
    /// to the hard limit; the HTTP listeners together hold at most that limit less this.
    #[arg(long, env = "COLONY_FD_RESERVE", default_value_t = 256)]
    pub fd_reserve: usize,
}

impl HttpArgs {
    /// The HTTP limits.
    pub fn limits(&self) -> HttpLimits {
        HttpLimits {
            max_body: self.max_body,
            request_timeout: self.request_timeout,
        }
    }

    /// The HTTP listeners' connection limits, and their share of this process's file
    /// descriptors (raising the open-files limit the first time).
    pub fn serving(&self) -> (ServeLimits, FdBudget) {
        let limits = ServeLimits {
            header_timeout: self.http_header_timeout,
            idle_timeout: self.http_idle_timeout,
            max_connections: self.http_max_connections,
        };
        (limits, raise_nofile_limit(self.fd_reserve))
    }
}

/// Limits of the data-plane listener, shared by every node command.
#[derive(Debug, Args, Clone)]
pub struct DataPlaneArgs {
    /// Longest text line accepted on the data plane, in bytes; longer lines are discarded
    /// with an error and the connection is kept.
    #[arg(long, env = "COLONY_MAX_LINE", default_value_t = codec::DEFAULT_MAX_LINE)]
    pub max_line: usize,

    /// Largest binary frame accepted on the data plane, in bytes (below 16 MiB); a larger
    /// frame gets an error frame and the connection is closed.
    #[arg(long, env = "COLONY_MAX_FRAME", default_value_t = codec::DEFAULT_MAX_FRAME)]
    pub max_frame: usize,

    /// Close a data-plane connection that sends no complete request for this long
    /// (e.g. 300s, 1m, 500ms).
    #[arg(long, env = "COLONY_IDLE_TIMEOUT", default_value = "300s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Close a data-plane connection whose request, once begun, is not complete within this
    /// long (bytes trickled in do not reset it).
    #[arg(long, env = "COLONY_INCOMPLETE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub incomplete_timeout: Duration,

    /// Unsent answers (bytes) a data-plane connection may hold before the node stops reading
    /// that client's requests until it reads its answers.
    #[arg(long, env = "COLONY_MAX_PENDING_OUTPUT", default_value_t = 1024 * 1024)]
    pub max_pending_output: usize,

    /// Cut a data-plane client that leaves its pending answers unread for this long.
    #[arg(long, env = "COLONY_OUTPUT_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub output_timeout: Duration,

    /// Bytes of partly received data-plane requests all unauthenticated connections together
    /// may hold beyond their first 8 KiB each; a client needing more while it is spent is cut.
    #[arg(long, env = "COLONY_PARTIAL_BUDGET", default_value_t = 64 * 1024 * 1024)]
    pub partial_budget: usize,

    /// Data-plane connections served at once; more are refused with an error line.
    #[arg(long, env = "COLONY_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// On shutdown, how long open connections and requests get to finish.
    #[arg(long, env = "COLONY_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub grace: Duration,

    /// A tick waiting longer than this for a neighbouring backend's borders fails the run.
    #[arg(long, env = "COLONY_HALO_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub halo_timeout: Duration,
}

impl DataPlaneArgs {
    /// The validated data-plane configuration.
    ///
    /// # Errors
    /// Names the flag that is out of range.
    pub fn config(&self) -> Result<DataPlaneConfig, dataplane::ConfigError> {
        let config = DataPlaneConfig {
            limits: Limits {
                max_line: self.max_line,
                max_frame: self.max_frame,
            },
            idle_timeout: self.idle_timeout,
            incomplete_timeout: self.incomplete_timeout,
            max_pending_output: self.max_pending_output,
            output_timeout: self.output_timeout,
            partial_budget: self.partial_budget,
            max_connections: self.max_connections,
            grace: self.grace,
            halo_timeout: self.halo_timeout,
        };
        config.validate()?;
        Ok(config)
    }
}

/// Why a flag's value does not parse; clap prints it after the flag's name.
#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    /// Not a duration such as `500ms` or `3s`.
    #[error("{0} (examples: 500ms, 3s, 1m)")]
    Duration(humantime::DurationError),
    /// A `--cell` without the comma.
    #[error("{0:?} is not X,Y")]
    NotACell(String),
    /// A `--cell` coordinate that is not a number.
    #[error("{coordinate:?} in {cell:?}: {error}")]
    CellCoordinate {
        /// The coordinate as given.
        coordinate: String,
        /// The whole `X,Y`.
        cell: String,
        /// Why it is not a `u64`.
        error: std::num::ParseIntError,
    },
}

fn parse_duration(s: &str) -> Result<Duration, FlagError> {
    humantime::parse_duration(s).map_err(FlagError::Duration)
}

/// Parses `X,Y` into a global cell.
fn parse_cell(s: &str) -> Result<[u64; 2], FlagError> {
    let (x, y) = s
        .split_once(',')
        .ok_or_else(|| FlagError::NotACell(s.to_owned()))?;
    let num = |v: &str| {
        v.trim()
            .parse::<u64>()
            .map_err(|error| FlagError::CellCoordinate {
                coordinate: v.to_owned(),
                cell: s.to_owned(),
                error,
            })
    };
    Ok([num(x)?, num(y)?])
}
