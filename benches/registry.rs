//! Registration and discovery latency of the cluster registries, side by side: the file
//! registry in a temp dir, and the SSM registry against moto's SSM server on loopback (moto
//! must be installed: `./scripts/setup.sh`).
//!
//! For 1, 10 and 100 backends, per registry:
//! - `register`: one backend registering for the first time (SSM: a `GetParameter` that finds
//!   nothing, then a `PutParameter`), timed one by one;
//! - `re-register`: the same address again (SSM: one read, no write);
//! - `all at once`: wall time for every backend to register concurrently, each with its own
//!   registry instance, as nodes of a starting cluster would;
//! - `discover`: `discover_backends` with all of them registered, cache off (SSM: every page
//!   of `GetParametersByPath`, 10 per page), and `cached` with the default 1 s cache.
//!
//! Each call is timed by `shared::registry::load`, as `colony bench registry` times it.
//!
//! Run: `cargo bench --bench registry` (`REGISTRY_ROUNDS`, default 20, sets how many times
//! each discovery is timed). Figures are p50 / p90 in milliseconds. moto is a single Python
//! process, so SSM figures say what the client does per call and how calls add up, not what
//! AWS's latency would be (tens of ms per call from inside a region).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ssm::config::{Credentials, SharedCredentialsProvider};
use shared::registry::load::{discover, register};
use shared::registry::{
    ClusterRegistry, FileClusterRegistry, SsmClusterRegistry, SsmOptions, DEFAULT_CACHE_TTL,
};
use shared::test_support::moto;

const COUNTS: [u32; 3] = [1, 10, 100];

/// The fake backends' prefix (`colony bench registry`'s calls, timed the same way).
const PREFIX: &str = "backend";

/// Makes fresh, empty registries of one kind, each instance a separate client like a node's.
trait Kind {
    fn name(&self) -> &'static str;
    /// A new empty namespace (a directory, a prefix) and a way to open instances on it.
    async fn namespace(&self) -> Namespace;
}

type Opener =
    Box<dyn Fn(Duration) -> futures::future::BoxFuture<'static, Arc<dyn ClusterRegistry>>>;

struct Namespace {
    open: Opener,
    _guard: Option<tempfile::TempDir>,
}

struct File;

impl Kind for File {
    fn name(&self) -> &'static str {
        "file"
    }
    async fn namespace(&self) -> Namespace {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        Namespace {
            open: Box::new(move |_| {
                let registry: Arc<dyn ClusterRegistry> =
                    Arc::new(FileClusterRegistry::new(root.clone()));
                Box::pin(async move { registry })
            }),
            _guard: Some(dir),
        }
    }
}

struct Ssm {
    sdk: SdkConfig,
    next: std::sync::atomic::AtomicU32,
}

impl Kind for Ssm {
    fn name(&self) -> &'static str {
        "ssm (moto)"
    }
    async fn namespace(&self) -> Namespace {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let prefix = format!("/bench-{n}");
        let sdk = self.sdk.clone();
        Namespace {
            open: Box::new(move |cache_ttl| {
                let (sdk, prefix) = (sdk.clone(), prefix.clone());
                Box::pin(async move {
                    let options = SsmOptions::new(prefix).with_cache_ttl(cache_ttl);
                    let registry: Arc<dyn ClusterRegistry> = Arc::new(
                        SsmClusterRegistry::from_sdk_config(&sdk, options)
                            .await
                            .unwrap(),
                    );
                    registry
                })
            }),
            _guard: None,
        }
    }
}

/// p50 and p90 in milliseconds.
fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i].as_secs_f64() * 1000.0
    };
    (at(0.5), at(0.9))
}

struct Row {
    registry: &'static str,
    backends: u32,
    register: (f64, f64),
    reregister: (f64, f64),
    all_at_once: f64,
    discover: (f64, f64),
    cached: (f64, f64),
}

async fn measure(kind: &impl Kind, count: u32, rounds: usize) -> Row {
    // One by one, first registrations.
    let ns = kind.namespace().await;
    let registry = (ns.open)(Duration::ZERO).await;
    let mut first = Vec::new();
    for n in 0..count {
        first.push(register(registry.as_ref(), PREFIX, n).await.unwrap());
    }
    let mut again = Vec::new();
    for n in 0..count {
        again.push(register(registry.as_ref(), PREFIX, n).await.unwrap());
    }
    let mut listing = Vec::new();
    for _ in 0..rounds {
        let (took, found) = discover(registry.as_ref()).await.unwrap();
        listing.push(took);
        assert_eq!(found, count as usize);
    }
    let cached_registry = (ns.open)(DEFAULT_CACHE_TTL).await;
    cached_registry.discover_backends().await.unwrap();
    let mut cached = Vec::new();
    for _ in 0..rounds {
        cached.push(discover(cached_registry.as_ref()).await.unwrap().0);
    }

    // Every backend at once, each its own instance, in a fresh namespace.
    let ns = kind.namespace().await;
    let mut instances = Vec::new();
    for _ in 0..count {
        instances.push((ns.open)(Duration::ZERO).await);
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (n, registry) in (0..count).zip(instances) {
        tasks.spawn(async move { register(registry.as_ref(), PREFIX, n).await });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().unwrap();
    }
    let all_at_once = started.elapsed().as_secs_f64() * 1000.0;
    let check = (ns.open)(Duration::ZERO).await;
    assert_eq!(
        check.discover_backends().await.unwrap().len(),
        count as usize
    );

    Row {
        registry: kind.name(),
        backends: count,
        register: percentiles(first),
        reregister: percentiles(again),
        all_at_once,
        discover: percentiles(listing),
        cached: percentiles(cached),
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too: keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let rounds: usize = std::env::var("REGISTRY_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 2 } else { 20 });
    let counts: &[u32] = if quick { &COUNTS[..1] } else { &COUNTS };

    let moto = moto::Moto::start();
    let sdk = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(moto.endpoint())
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "test",
            "test",
            None,
            None,
            "colony-bench",
        )))
        .build();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let rows = runtime.block_on(async {
        let ssm = Ssm {
            sdk,
            next: Default::default(),
        };
        // moto loads its SSM backend on the first call; keep that out of the figures.
        let warm = ssm.namespace().await;
        (warm.open)(Duration::ZERO)
            .await
            .discover_backends()
            .await
            .unwrap();
        let mut rows = Vec::new();
        for &count in counts {
            rows.push(measure(&File, count, rounds).await);
            rows.push(measure(&ssm, count, rounds).await);
        }
        rows
    });
    drop(moto);

    println!(
        "\n{:<11} {:>8}  {:>17}  {:>17}  {:>11}  {:>17}  {:>15}",
        "registry",
        "backends",
        "register p50/p90",
        "re-register",
        "all at once",
        "discover p50/p90",
        "cached p50/p90"
    );
    for r in rows {
        println!(
            "{:<11} {:>8}  {:>8.2} / {:>6.2}  {:>8.2} / {:>6.2}  {:>11.1}  {:>8.2} / {:>6.2}  {:>6.3} / {:>6.3}",
            r.registry,
            r.backends,
            r.register.0,
            r.register.1,
            r.reregister.0,
            r.reregister.1,
            r.all_at_once,
            r.discover.0,
            r.discover.1,
            r.cached.0,
            r.cached.1
        );
    }
    println!("(milliseconds)");
}
