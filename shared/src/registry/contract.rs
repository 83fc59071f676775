//! The behaviour every [`ClusterRegistry`] must have, written once as checks over the trait so
//! each implementation (file, in-memory, SSM) runs the same suite unchanged.
//!
//! Each check takes a [`Fixture`]: the registry under test, a [`RawView`] that reads the value
//! exactly as stored (to pin the JSON form that `jq` and scripts rely on), and a guard keeping
//! the backing store (a temp dir, a server) alive. A check expects an empty registry, leaves
//! it empty, and reports a broken promise as a [`ContractViolation`] rather than panicking, so
//! a caller decides how to fail. Never point it at a registry in use: it registers and
//! removes entries.
//!
//! To run the suite against an implementation, write an `async fn` returning a fresh
//! [`Fixture`] and expand [`registry_contract_tests!`](crate::registry_contract_tests) in a test
//! module; it generates one `#[tokio::test]` per check. [`run_all`] runs them in sequence on one
//! fixture instead.
//!
//! Test code, behind the `test-support` feature, and one piece on purpose: the checks, the
//! macro that lists them and [`run_all`] must stay in step, which is easiest to see in one file.

use std::any::Any;
use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;

use super::{ClusterRegistry, FileClusterRegistry, InMemoryClusterRegistry, RegistryError};
use crate::NodeAddress;

/// How many writers the concurrency checks start at once.
pub const CONCURRENT_WRITERS: u16 = 100;

/// Reads entries exactly as the registry stored them (file contents, parameter values).
#[async_trait]
pub trait RawView: Send + Sync {
    /// The stored coordinator value, or `None` if there is none.
    ///
    /// # Errors
    /// The store could not be read.
    async fn raw_coordinator(&self) -> Result<Option<String>, RegistryError>;

    /// The stored value for backend `instance_id`, or `None` if there is none.
    ///
    /// # Errors
    /// The store could not be read.
    async fn raw_backend(&self, instance_id: &str) -> Result<Option<String>, RegistryError>;
}

/// A registry under test, with what the checks need around it.
pub struct Fixture {
    /// The implementation under test; it must start empty.
    pub registry: Arc<dyn ClusterRegistry>,
    /// Reads what `registry` stored, byte for byte.
    pub raw: Arc<dyn RawView>,
    /// Dropped after the check: keeps temp dirs, servers and the like alive until then.
    pub guard: Box<dyn Any + Send>,
}

impl Fixture {
    /// A fixture over a fresh [`InMemoryClusterRegistry`].
    pub fn in_memory() -> Self {
        let registry = InMemoryClusterRegistry::new();
        Fixture {
            registry: Arc::new(registry.clone()),
            raw: Arc::new(registry),
            guard: Box::new(()),
        }
    }

    /// A fixture over a [`FileClusterRegistry`] rooted at `root`, which should be an empty
    /// directory that `guard` keeps alive (e.g. a `tempfile::TempDir`).
    pub fn file(root: std::path::PathBuf, guard: Box<dyn Any + Send>) -> Self {
        let registry = FileClusterRegistry::new(root);
        Fixture {
            registry: Arc::new(registry.clone()),
            raw: Arc::new(registry),
            guard,
        }
    }
}

/// One check of the contract did not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContractViolation {
    /// The check that failed, e.g. `"backends_are_sorted"`.
    pub check: &'static str,
    /// What was expected and what happened.
    pub message: String,
}

impl fmt::Display for ContractViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "registry contract check `{}` failed: {}",
            self.check, self.message
        )
    }
}

impl std::error::Error for ContractViolation {}

/// The check's result: `Ok` or the first broken promise.
pub type CheckResult = Result<(), ContractViolation>;

/// `ensure!(CHECK, condition, "format", args..)`: fail the check with the message if false.
macro_rules! ensure {
    ($check:expr, $cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(ContractViolation { check: $check, message: format!($($msg)+) });
        }
    };
}

/// `ensure_eq!(CHECK, actual, expected, "what")`.
macro_rules! ensure_eq {
    ($check:expr, $actual:expr, $expected:expr, $what:expr) => {{
        let actual = $actual;
        let expected = $expected;
        if actual != expected {
            return Err(ContractViolation {
                check: $check,
                message: format!("{}: expected {:?}, got {:?}", $what, expected, actual),
            });
        }
    }};
}

/// `attempt!(CHECK, future, "what")`: await a registry call, turning its error into a violation.
macro_rules! attempt {
    ($check:expr, $call:expr, $what:expr) => {
        match $call.await {
            Ok(value) => value,
            Err(e) => {
                return Err(ContractViolation {
                    check: $check,
                    message: format!("{} failed: {}", $what, e),
                })
            }
        }
    };
}

/// An IPv4 address with the given ports.
fn v4(internal: u16, http: u16, mgmt: u16) -> NodeAddress {
    NodeAddress::new(IpAddr::from([127, 0, 0, 1]), internal, http, mgmt)
}

/// An IPv6 address with the given ports.
fn v6(internal: u16, http: u16, mgmt: u16) -> NodeAddress {
    NodeAddress::new(
        IpAddr::from([0, 0, 0, 0, 0, 0, 0, 1u16]),
        internal,
        http,
        mgmt,
    )
}

async fn expect_empty(check: &'static str, reg: &dyn ClusterRegistry) -> CheckResult {
    let coordinator = attempt!(check, reg.discover_coordinator(), "discover_coordinator");
    ensure!(
        check,
        coordinator.is_none(),
        "registry is not empty at the start of the check: coordinator {coordinator:?} \
         (each check needs a fresh or emptied registry)"
    );
    let backends = attempt!(check, reg.discover_backends(), "discover_backends");
    ensure!(
        check,
        backends.is_empty(),
        "registry is not empty at the start of the check: backends {backends:?} \
         (each check needs a fresh or emptied registry)"
    );
    Ok(())
}

/// Removes everything the check registered, then verifies the registry is empty.
async fn clean_up(check: &'static str, reg: &dyn ClusterRegistry) -> CheckResult {
    attempt!(
        check,
        reg.unregister_coordinator(),
        "unregister_coordinator"
    );
    let backends = attempt!(check, reg.discover_backends(), "discover_backends");
    for (id, _) in backends {
        attempt!(check, reg.unregister_backend(&id), "unregister_backend");
    }
    expect_empty(check, reg).await
}

/// A new registry discovers no coordinator and no backends.
pub async fn starts_empty(f: &Fixture) -> CheckResult {
    expect_empty("starts_empty", f.registry.as_ref()).await
}

/// A registered coordinator is discovered as registered; once unregistered it is gone.
pub async fn coordinator_round_trip(f: &Fixture) -> CheckResult {
    const CHECK: &str = "coordinator_round_trip";
    let reg = f.registry.as_ref();
    expect_empty(CHECK, reg).await?;
    for address in [v4(8082, 8083, 8084), v6(1, 2, 3), v4(0, u16::MAX, 1)] {
        attempt!(
            CHECK,
            reg.register_coordinator(address),
            "register_coordinator"
        );
        let found = attempt!(CHECK, reg.discover_coordinator(), "discover_coordinator");
        ensure_eq!(CHECK, found, Some(address), "discovered coordinator");
        attempt!(
            CHECK,
            reg.unregister_coordinator(),
            "unregister_coordinator"
        );
        let found = attempt!(CHECK, reg.discover_coordinator(), "discover_coordinator");
        ensure_eq!(CHECK, found, None, "coordinator after unregistering");
    }
    clean_up(CHECK, reg).await
}

/// Registering the coordinator again replaces the previous address.
pub async fn coordinator_reregister_overwrites(f: &Fixture) -> CheckResult {
    const CHECK: &str = "coordinator_reregister_overwrites";
    let reg = f.registry.as_ref();
    expect_empty(CHECK, reg).await?;
    let (first, second) = (v4(8082, 8083, 8084), v4(18082, 18083, 18084));
    attempt!(
        CHECK,
        reg.register_coordinator(first),
        "register_coordinator"
    );
    attempt!(
        CHECK,
        reg.register_coordinator(second),
        "register_coordinator"
    );
    let found = attempt!(CHECK, reg.discover_coordinator(), "discover_coordinator");
    ensure_eq!(
        CHECK,
        found,
        Some(second),
        "coordinator after re-registering"
    );
    clean_up(CHECK, reg).await
}

/// Several backends are all discovered, with their addresses, sorted by instance id.
pub async fn backends_are_sorted(f: &Fixture) -> CheckResult {
    const CHECK: &str = "backends_are_sorted";
    let reg = f.registry.as_ref();
    expect_empty(CHECK, reg).await?;
    let longest = "x".repeat(super::MAX_INSTANCE_ID_LEN);
    let entries = [
        ("backend_9010", v4(9010, 9011, 9012)),
        ("backend_10", v4(10, 11, 12)),
        ("Zeta", v6(1, 2, 3)),
        ("a.b-c_1", v4(1, 2, 3)),
        ("backend_9000", v4(9000, 9001, 9002)),
        (".hidden", v4(4, 5, 6)),
        (longest.as_str(), v4(7, 8, 9)),
    ];
    for (id, address) in entries {
        attempt!(CHECK, reg.register_backend(id, address), "register_backend");
    }
    let mut expected: Vec<(String, NodeAddress)> = entries
        .iter()
        .map(|(id, a)| ((*id).to_owned(), *a))
        .collect();
    expected.sort();
    let found = attempt!(CHECK, reg.discover_backends(), "discover_backends");
    ensure_eq!(CHECK, found, expected, "discovered backends");
    clean_up(CHECK, reg).await
}

/// Registering a backend id again replaces its address and adds no entry.
pub async fn backend_reregister_overwrites(f: &Fixture) -> CheckResult {
    const CHECK: &str = "backend_reregister_overwrites";
    let reg = f.registry.as_ref();
    expect_empty(CHECK, reg).await?;
    let (first, second) = (v4(9000, 9001, 9002), v4(9100, 9101, 9102));
    attempt!(
        CHECK,
        reg.register_backend("backend_9000", first),
        "register_backend"
    );
    attempt!(
        CHECK,
        reg.register_backend("backend_9000", second),
        "register_backend"
    );
    let found = attempt!(CHECK, reg.discover_backends(), "discover_backends");
    ensure_eq!(
        CHECK,
        found,
        vec![("backend_9000".to_owned(), second)],
        "backends after re-registering"
    );
    clean_up(CHECK, reg).await
}

/// Unregistering one backend removes it and only it.
pub async fn unregister_backend_removes_only_it(f: &Fixture) -> CheckResult {
    const CHECK: &str = "unregister_backend_removes_only_it";
    let reg = f.registry.as_ref();
    expect_empty(CHECK, reg).await?;
    for port in [9000, 9010, 9020] {
        let id = super::default_backend_id(std::net::Ipv4Addr::LOCALHOST.into(), port);
        attempt!(
            CHECK,
            reg.register_backend(&id, v4(port, port + 1, port + 2)),
            "register_backend"
        );
    }
    attempt!(
        CHECK,
        reg.register_coordinator(v4(8082, 8083, 8084)),
        "register_coordinator"
    );
    attempt!(
        CHECK,
        reg.unregister_backend("backend_9010"),
        "unregister_backend"
    );
    let found = attempt!(CHECK, reg.discover_backends(), "discover_backends");
    ensure_eq!(
        CHECK,
        found,
        vec![
            ("backend_9000".to_owned(), v4(9000, 9001, 9002)),
            ("backend_9020".to_owned(), v4(9020, 9021, 9022)),
        ],
        "backends after unregistering backend_9010"
    );
    let coordinator = attempt!(CHECK, reg.discover_coordinator(), "discover_coordinator");
    ensure_eq!(
        CHECK,
        coordinator,
        Some(v4(8082, 8083, 8084)),
        "coordinator after unregistering a backend"
    );
    clean_up(CHECK, reg).await
}

/// Unregistering what is not registered succeeds, on an empty registry and after a removal.
pub async fn unregister_absent_is_ok(f: &Fixture) -> CheckResult {
    const CHECK: &str = "unregister_absent_is_ok";
    let reg = f.registry.as_ref();
    expect_empty(CHECK, reg).await?;
    attempt!(
        CHECK,
        reg.unregister_coordinator(),
        "unregister_coordinator on empty"
    );
    attempt!(
        CHECK,
        reg.unregister_backend("backend_1"),
        "unregister_backend on empty"
    );
    attempt!(
        CHECK,
        reg.register_backend("backend_1", v4(1, 2, 3)),
        "register_backend"
    );
    attempt!(
        CHECK,
        reg.unregister_backend("backend_1"),
        "unregister_backend"
    );
    attempt!(
        CHECK,
        reg.unregister_backend("backend_1"),
        "unregister_backend twice"
    );
    attempt!(
        CHECK,
        reg.register_coordinator(v4(1, 2, 3)),
        "register_coordinator"
    );
    attempt!(
        CHECK,
        reg.unregister_coordinator(),
        "unregister_coordinator"
    );
    attempt!(
        CHECK,
        reg.unregister_coordinator(),
        "unregister_coordinator twice"
    );
    clean_up(CHECK, reg).await
}

/// The coordinator entry and backend entries never alias, even for a backend named
/// `coordinator`.
pub async fn coordinator_and_backends_are_separate(f: &Fixture) -> CheckResult {
    const CHECK: &str = "coordinator_and_backends_are_separate";
    let reg = f.registry.as_ref();
    expect_empty(CHECK, reg).await?;
    attempt!(
        CHECK,
        reg.register_coordinator(v4(8082, 8083, 8084)),
        "register_coordinator"
    );
    let found = attempt!(CHECK, reg.discover_backends(), "discover_backends");
    ensure_eq!(
        CHECK,
        found,
        vec![],
        "backends with only a coordinator registered"
    );
    attempt!(
        CHECK,
        reg.register_backend("coordinator", v4(1, 2, 3)),
        "register_backend"
    );
    let coordinator = attempt!(CHECK, reg.discover_coordinator(), "discover_coordinator");
    ensure_eq!(
        CHECK,
        coordinator,
        Some(v4(8082, 8083, 8084)),
        "coordinator after registering a backend named \"coordinator\""
    );
    attempt!(
        CHECK,
        reg.unregister_coordinator(),
        "unregister_coordinator"
    );
    let found = attempt!(CHECK, reg.discover_backends(), "discover_backends");
    ensure_eq!(
        CHECK,
        found,
        vec![("coordinator".to_owned(), v4(1, 2, 3))],
        "backends after unregistering the coordinator"
    );
    clean_up(CHECK, reg).await
}

/// Ids that could not be a file or parameter name are refused by register and unregister
/// alike, and nothing is written.
pub async fn invalid_ids_are_rejected(f: &Fixture) -> CheckResult {
    const CHECK: &str = "invalid_ids_are_rejected";
    let reg = f.registry.as_ref();
    expect_empty(CHECK, reg).await?;
    let too_long = "x".repeat(super::MAX_INSTANCE_ID_LEN + 1);
    let bad = [
        "",
        ".",
        "..",
        "a/b",
        "../escape",
        "/abs",
        "a\\b",
        "a b",
        "a\nb",
        "a\0b",
        "ü",
        too_long.as_str(),
    ];
    for id in bad {
        let registered = reg.register_backend(id, v4(1, 2, 3)).await;
        ensure!(
            CHECK,
            matches!(registered, Err(RegistryError::InvalidInstanceId { .. })),
            "register_backend({id:?}) should fail with InvalidInstanceId, got {registered:?}"
        );
        let unregistered = reg.unregister_backend(id).await;
        ensure!(
            CHECK,
            matches!(unregistered, Err(RegistryError::InvalidInstanceId { .. })),
            "unregister_backend({id:?}) should fail with InvalidInstanceId, got {unregistered:?}"
        );
    }
    expect_empty(CHECK, reg).await
}

/// What is stored is exactly the [`NodeAddress`] JSON, so `jq` and shell scripts can read it.
pub async fn json_form_is_exact(f: &Fixture) -> CheckResult {
    const CHECK: &str = "json_form_is_exact";
    let reg = f.registry.as_ref();
    expect_empty(CHECK, reg).await?;
    attempt!(
        CHECK,
        reg.register_coordinator(v4(8082, 8083, 8084)),
        "register_coordinator"
    );
    attempt!(
        CHECK,
        reg.register_backend("backend_9000", v6(9000, 9001, 9002)),
        "register_backend"
    );
    let raw = attempt!(CHECK, f.raw.raw_coordinator(), "raw_coordinator");
    ensure_eq!(
        CHECK,
        raw.as_deref(),
        Some(r#"{"ip":"127.0.0.1","internal_port":8082,"http_port":8083,"mgmt_port":8084}"#),
        "stored coordinator"
    );
    let raw = attempt!(CHECK, f.raw.raw_backend("backend_9000"), "raw_backend");
    ensure_eq!(
        CHECK,
        raw.as_deref(),
        Some(r#"{"ip":"::1","internal_port":9000,"http_port":9001,"mgmt_port":9002}"#),
        "stored backend_9000"
    );
    attempt!(
        CHECK,
        reg.unregister_backend("backend_9000"),
        "unregister_backend"
    );
    let raw = attempt!(CHECK, f.raw.raw_backend("backend_9000"), "raw_backend");
    ensure_eq!(CHECK, raw, None, "stored backend_9000 after unregistering");
    clean_up(CHECK, reg).await
}

/// [`CONCURRENT_WRITERS`] backends registering at the same moment are all kept.
pub async fn concurrent_registrations_are_all_kept(f: &Fixture) -> CheckResult {
    const CHECK: &str = "concurrent_registrations_are_all_kept";
    let reg = f.registry.as_ref();
    expect_empty(CHECK, reg).await?;
    let mut writers = tokio::task::JoinSet::new();
    let start = Arc::new(tokio::sync::Barrier::new(usize::from(CONCURRENT_WRITERS)));
    for n in 0..CONCURRENT_WRITERS {
        let (registry, start) = (Arc::clone(&f.registry), Arc::clone(&start));
        writers.spawn(async move {
            start.wait().await;
            let port = 10_000 + n;
            registry
                .register_backend(
                    &super::default_backend_id(std::net::Ipv4Addr::LOCALHOST.into(), port),
                    v4(port, port + 1000, port + 2000),
                )
                .await
        });
    }
    while let Some(joined) = writers.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => ensure!(CHECK, false, "a concurrent register_backend failed: {e}"),
            Err(e) => ensure!(CHECK, false, "a writer task failed: {e}"),
        }
    }
    let mut expected: Vec<(String, NodeAddress)> = (0..CONCURRENT_WRITERS)
        .map(|n| 10_000 + n)
        .map(|port| {
            (
                super::default_backend_id(std::net::Ipv4Addr::LOCALHOST.into(), port),
                v4(port, port + 1000, port + 2000),
            )
        })
        .collect();
    expected.sort();
    let found = attempt!(CHECK, reg.discover_backends(), "discover_backends");
    ensure!(
        CHECK,
        found == expected,
        "{} of {CONCURRENT_WRITERS} concurrent registrations discovered; missing {:?}",
        found.len(),
        expected
            .iter()
            .filter(|e| !found.contains(e))
            .map(|(id, _)| id.as_str())
            .collect::<Vec<_>>()
    );
    clean_up(CHECK, reg).await
}

/// While writers keep replacing one entry, every discovery sees one whole value that some
/// writer wrote (never a mix, never a missing entry), and the last value stays.
pub async fn concurrent_overwrites_stay_whole(f: &Fixture) -> CheckResult {
    const CHECK: &str = "concurrent_overwrites_stay_whole";
    const ROUNDS: u16 = 20;
    let reg = f.registry.as_ref();
    expect_empty(CHECK, reg).await?;
    // Each writer's address has all three ports derived from one number, so a value mixed
    // from two writes would not be in this set.
    let written = |n: u16| v4(20_000 + n, 30_000 + n, 40_000 + n);
    let valid: BTreeSet<NodeAddress> = (0..CONCURRENT_WRITERS).map(written).collect();
    attempt!(
        CHECK,
        reg.register_backend("contended", written(0)),
        "register_backend"
    );

    let mut writers = tokio::task::JoinSet::new();
    for n in 0..CONCURRENT_WRITERS {
        let registry = Arc::clone(&f.registry);
        writers.spawn(async move {
            for _ in 0..ROUNDS {
                registry.register_backend("contended", written(n)).await?;
                tokio::task::yield_now().await;
            }
            Ok::<(), RegistryError>(())
        });
    }
    let mut reads = 0u32;
    while !writers.is_empty() {
        let found = attempt!(CHECK, reg.discover_backends(), "discover_backends");
        reads += 1;
        ensure!(
            CHECK,
            found.len() == 1 && found[0].0 == "contended" && valid.contains(&found[0].1),
            "read {reads} during concurrent overwrites saw {found:?}, \
             expected one \"contended\" entry holding a written address"
        );
        while let Some(joined) = writers.try_join_next() {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(e)) => ensure!(CHECK, false, "a concurrent register_backend failed: {e}"),
                Err(e) => ensure!(CHECK, false, "a writer task failed: {e}"),
            }
        }
        tokio::task::yield_now().await;
    }
    let found = attempt!(CHECK, reg.discover_backends(), "discover_backends");
    ensure!(
        CHECK,
        found.len() == 1 && valid.contains(&found[0].1),
        "after concurrent overwrites: {found:?}"
    );
    clean_up(CHECK, reg).await
}

/// Runs every check in sequence on one fixture, stopping at the first violation.
///
/// # Errors
/// The first [`ContractViolation`].
pub async fn run_all(f: &Fixture) -> CheckResult {
    // Keep in step with `registry_contract_tests!`.
    starts_empty(f).await?;
    coordinator_round_trip(f).await?;
    coordinator_reregister_overwrites(f).await?;
    backends_are_sorted(f).await?;
    backend_reregister_overwrites(f).await?;
    unregister_backend_removes_only_it(f).await?;
    unregister_absent_is_ok(f).await?;
    coordinator_and_backends_are_separate(f).await?;
    invalid_ids_are_rejected(f).await?;
    json_form_is_exact(f).await?;
    concurrent_registrations_are_all_kept(f).await?;
    concurrent_overwrites_stay_whole(f).await
}

/// Generates one `#[tokio::test]` (multi-threaded, so concurrency checks really overlap) per
/// contract check, each on a fresh fixture from `$fixture`, an `async fn() -> Fixture`.
///
/// Expand it inside its own module, once per implementation; the caller needs `tokio` with the
/// `macros` and `rt-multi-thread` features:
///
/// ```ignore
/// mod file_registry {
///     async fn fixture() -> shared::registry::contract::Fixture { /* ... */ }
///     shared::registry_contract_tests!(fixture);
/// }
/// ```
#[macro_export]
macro_rules! registry_contract_tests {
    ($fixture:path) => {
        $crate::registry_contract_tests!(@each $fixture;
            starts_empty,
            coordinator_round_trip,
            coordinator_reregister_overwrites,
            backends_are_sorted,
            backend_reregister_overwrites,
            unregister_backend_removes_only_it,
            unregister_absent_is_ok,
            coordinator_and_backends_are_separate,
            invalid_ids_are_rejected,
            json_form_is_exact,
            concurrent_registrations_are_all_kept,
            concurrent_overwrites_stay_whole,
        );
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn run_all_on_one_fixture() {
            let fixture = $fixture().await;
            if let Err(violation) = $crate::registry::contract::run_all(&fixture).await {
                panic!("{violation}");
            }
        }
    };
    (@each $fixture:path; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let fixture = $fixture().await;
                if let Err(violation) = $crate::registry::contract::$check(&fixture).await {
                    panic!("{violation}");
                }
            }
        )*
    };
}

#[async_trait]
impl RawView for InMemoryClusterRegistry {
    async fn raw_coordinator(&self) -> Result<Option<String>, RegistryError> {
        self.discover_coordinator()
            .await?
            .map(|a| serde_json::to_string(&a).map_err(RegistryError::Encode))
            .transpose()
    }

    async fn raw_backend(&self, instance_id: &str) -> Result<Option<String>, RegistryError> {
        self.discover_backends()
            .await?
            .into_iter()
            .find(|(id, _)| id == instance_id)
            .map(|(_, a)| serde_json::to_string(&a).map_err(RegistryError::Encode))
            .transpose()
    }
}

#[async_trait]
impl RawView for FileClusterRegistry {
    async fn raw_coordinator(&self) -> Result<Option<String>, RegistryError> {
        read_optional(self.coordinator_path()).await
    }

    async fn raw_backend(&self, instance_id: &str) -> Result<Option<String>, RegistryError> {
        read_optional(self.backend_path(instance_id)?).await
    }
}

async fn read_optional(path: std::path::PathBuf) -> Result<Option<String>, RegistryError> {
    match tokio::fs::read_to_string(&path).await {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RegistryError::io("read", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    mod in_memory {
        use super::Fixture;

        async fn fixture() -> Fixture {
            Fixture::in_memory()
        }

        crate::registry_contract_tests!(fixture);
    }

    /// Ways to break the contract, to show that the suite notices each.
    #[derive(Clone, Copy, Debug)]
    enum Flaw {
        Unsorted,
        AcceptsBadIds,
        KeepsFirstWrite,
        ForgetsUnderLoad,
    }

    struct Broken {
        inner: InMemoryClusterRegistry,
        flaw: Flaw,
        writes: std::sync::atomic::AtomicU32,
    }

    #[async_trait]
    impl ClusterRegistry for Broken {
        async fn register_coordinator(&self, a: NodeAddress) -> Result<(), RegistryError> {
            if matches!(self.flaw, Flaw::KeepsFirstWrite)
                && self.inner.discover_coordinator().await?.is_some()
            {
                return Ok(());
            }
            self.inner.register_coordinator(a).await
        }
        async fn unregister_coordinator(&self) -> Result<(), RegistryError> {
            self.inner.unregister_coordinator().await
        }
        async fn register_backend(&self, id: &str, a: NodeAddress) -> Result<(), RegistryError> {
            let n = self
                .writes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            match self.flaw {
                Flaw::AcceptsBadIds if super::super::validate_instance_id(id).is_err() => Ok(()),
                Flaw::ForgetsUnderLoad if n == 50 => Ok(()),
                _ => self.inner.register_backend(id, a).await,
            }
        }
        async fn unregister_backend(&self, id: &str) -> Result<(), RegistryError> {
            match self.flaw {
                Flaw::AcceptsBadIds if super::super::validate_instance_id(id).is_err() => Ok(()),
                _ => self.inner.unregister_backend(id).await,
            }
        }
        async fn discover_coordinator(&self) -> Result<Option<NodeAddress>, RegistryError> {
            self.inner.discover_coordinator().await
        }
        async fn discover_backends(&self) -> Result<Vec<(String, NodeAddress)>, RegistryError> {
            let mut found = self.inner.discover_backends().await?;
            if matches!(self.flaw, Flaw::Unsorted) {
                found.reverse();
            }
            Ok(found)
        }
        fn describe(&self) -> String {
            format!("broken registry ({:?})", self.flaw)
        }
    }

    fn broken(flaw: Flaw) -> Fixture {
        let inner = InMemoryClusterRegistry::new();
        Fixture {
            registry: Arc::new(Broken {
                inner: inner.clone(),
                flaw,
                writes: Default::default(),
            }),
            raw: Arc::new(inner),
            guard: Box::new(()),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_flaw_is_caught_by_its_check() {
        let cases = [
            (Flaw::Unsorted, "backends_are_sorted"),
            (Flaw::AcceptsBadIds, "invalid_ids_are_rejected"),
            (Flaw::KeepsFirstWrite, "coordinator_reregister_overwrites"),
            (
                Flaw::ForgetsUnderLoad,
                "concurrent_registrations_are_all_kept",
            ),
        ];
        for (flaw, check) in cases {
            let violation = run_all(&broken(flaw)).await.unwrap_err();
            assert_eq!(violation.check, check, "{flaw:?}: {violation}");
        }
    }

    #[tokio::test]
    async fn a_registry_that_is_not_empty_is_refused() {
        let fixture = Fixture::in_memory();
        fixture
            .registry
            .register_backend("leftover", v4(1, 2, 3))
            .await
            .unwrap();
        let violation = backends_are_sorted(&fixture).await.unwrap_err();
        assert!(violation.message.contains("not empty"), "{violation}");
    }
}
