//! Registering a node in the background, retrying until it works (DESIGN §2: registration
//! failure is logged and retried; it never stops the node).
//!
//! This module does not unregister: that belongs to the node's shutdown path, after it has
//! waited for the registration task (see [`spawn_registration`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::{ClusterRegistry, RegistryError};
use crate::NodeAddress;

/// The first retry waits about this long.
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Retries never wait longer than this, so a registry that comes back is used within seconds.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What a node registers as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The coordinator (there is one entry for it).
    Coordinator,
    /// A backend, under its instance id.
    Backend(String),
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Coordinator => f.write_str("coordinator"),
            Role::Backend(id) => write!(f, "backend {id}"),
        }
    }
}

/// Registers `address` as `role` in `registry` on a new task, retrying failures with capped
/// exponential backoff (about 100 ms doubling to 5 s, with jitter) until it succeeds or
/// `cancel` fires.
///
/// Success is logged as `Registered coordinator in ClusterRegistry: 127.0.0.1:8082 (internal),
/// 127.0.0.1:8083 (http), 127.0.0.1:8084 (mgmt)` (or `Registered backend {id} in ...`), with a
/// `registry` field naming the registry; each failure is logged with its error. A permanent
/// failure (e.g. an invalid instance id) is logged once and not retried.
///
/// Cancellation interrupts the waits between attempts but lets an attempt in flight finish,
/// so once the returned handle resolves nothing more will be written: await it (under the
/// shutdown grace period) before unregistering, or a late write could undo the unregistration.
pub fn spawn_registration(
    registry: Arc<dyn ClusterRegistry>,
    role: Role,
    address: NodeAddress,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(register_until_done(registry, role, address, cancel))
}

async fn register_until_done(
    registry: Arc<dyn ClusterRegistry>,
    role: Role,
    address: NodeAddress,
    cancel: CancellationToken,
) {
    let described = registry.describe();
    let mut backoff = Backoff::new(INITIAL_BACKOFF, MAX_BACKOFF);
    let mut attempt: u32 = 0;
    while !cancel.is_cancelled() {
        attempt = attempt.saturating_add(1);
        match register_once(registry.as_ref(), &role, address).await {
            Ok(()) => {
                tracing::info!(registry = %described, attempt, "Registered {role} in ClusterRegistry: {address}");
                return;
            }
            Err(e) if e.is_permanent() => {
                tracing::error!(registry = %described, error = %e, "Failed to register {role} in ClusterRegistry; not retrying");
                return;
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(
                    registry = %described,
                    error = %e,
                    attempt,
                    retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "Failed to register {role} in ClusterRegistry; retrying"
                );
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    tracing::info!(registry = %described, "Gave up registering {role}: shutting down");
}

async fn register_once(
    registry: &dyn ClusterRegistry,
    role: &Role,
    address: NodeAddress,
) -> Result<(), RegistryError> {
    match role {
        Role::Coordinator => registry.register_coordinator(address).await,
        Role::Backend(id) => registry.register_backend(id, address).await,
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::atomic::{AtomicU32, Ordering};

    use async_trait::async_trait;
    use tokio::time::Instant;

    use super::*;
    use crate::registry::InMemoryClusterRegistry;

    fn address() -> NodeAddress {
        NodeAddress::new([127, 0, 0, 1].into(), 8082, 8083, 8084)
    }

    /// Fails the first `failures` registrations with an I/O error, then behaves.
    struct Flaky {
        inner: InMemoryClusterRegistry,
        failures: u32,
        attempts: AtomicU32,
    }

    impl Flaky {
        fn new(failures: u32) -> Arc<Self> {
            Arc::new(Flaky {
                inner: InMemoryClusterRegistry::new(),
                failures,
                attempts: AtomicU32::new(0),
            })
        }

        fn fail(&self) -> Result<(), RegistryError> {
            let n = self.attempts.fetch_add(1, Ordering::SeqCst);
            if n < self.failures {
                Err(RegistryError::io(
                    "write",
                    "/nowhere",
                    io::Error::other("disk on fire"),
                ))
            } else {
                Ok(())
            }
        }
    }

    #[async_trait]
    impl ClusterRegistry for Flaky {
        async fn register_coordinator(&self, a: NodeAddress) -> Result<(), RegistryError> {
            self.fail()?;
            self.inner.register_coordinator(a).await
        }
        async fn unregister_coordinator(&self) -> Result<(), RegistryError> {
            self.inner.unregister_coordinator().await
        }
        async fn register_backend(&self, id: &str, a: NodeAddress) -> Result<(), RegistryError> {
            self.fail()?;
            self.inner.register_backend(id, a).await
        }
        async fn unregister_backend(&self, id: &str) -> Result<(), RegistryError> {
            self.inner.unregister_backend(id).await
        }
        async fn discover_coordinator(&self) -> Result<Option<NodeAddress>, RegistryError> {
            self.inner.discover_coordinator().await
        }
        async fn discover_backends(&self) -> Result<Vec<(String, NodeAddress)>, RegistryError> {
            self.inner.discover_backends().await
        }
        fn describe(&self) -> String {
            "flaky registry".to_owned()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_with_backoff_until_it_works() {
        let registry = Flaky::new(5);
        let started = Instant::now();
        spawn_registration(
            registry.clone(),
            Role::Coordinator,
            address(),
            CancellationToken::new(),
        )
        .await
        .unwrap();
        assert_eq!(registry.attempts.load(Ordering::SeqCst), 6);
        assert_eq!(
            registry.discover_coordinator().await.unwrap(),
            Some(address())
        );
        // Waits of 100, 200, 400, 800 and 1600 ms, each jittered down to no less than half.
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(1550) && waited <= Duration::from_millis(3100),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_stops_the_retries() {
        let registry = Flaky::new(u32::MAX);
        let cancel = CancellationToken::new();
        let task = spawn_registration(
            registry.clone(),
            Role::Backend("backend_9000".into()),
            address(),
            cancel.clone(),
        );
        tokio::time::sleep(Duration::from_secs(30)).await;
        let attempts = registry.attempts.load(Ordering::SeqCst);
        // 30 s of retries capped at 5 s: more than the ramp-up, far fewer than 300.
        assert!((8..=30).contains(&attempts), "{attempts}");
        cancel.cancel();
        task.await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(registry.attempts.load(Ordering::SeqCst), attempts);
        assert!(registry.discover_backends().await.unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn already_cancelled_never_registers() {
        let registry = Flaky::new(0);
        let cancel = CancellationToken::new();
        cancel.cancel();
        spawn_registration(registry.clone(), Role::Coordinator, address(), cancel)
            .await
            .unwrap();
        assert_eq!(registry.attempts.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_error_is_not_retried() {
        let registry = Arc::new(InMemoryClusterRegistry::new());
        spawn_registration(
            registry.clone(),
            Role::Backend("../escape".into()),
            address(),
            CancellationToken::new(),
        )
        .await
        .unwrap();
        assert!(registry.discover_backends().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_backend_registers_under_its_id() {
        let registry = Arc::new(InMemoryClusterRegistry::new());
        spawn_registration(
            registry.clone(),
            Role::Backend("backend_9000".into()),
            address(),
            CancellationToken::new(),
        )
        .await
        .unwrap();
        assert_eq!(
            registry.discover_backends().await.unwrap(),
            vec![("backend_9000".to_owned(), address())]
        );
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let mut backoff = Backoff::new(INITIAL_BACKOFF, MAX_BACKOFF);
        let ceilings = [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000];
        for ceiling in ceilings.map(Duration::from_millis) {
            let delay = backoff.next_delay();
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} not in [{:?}, {ceiling:?}]",
                ceiling / 2
            );
        }
    }

    #[test]
    fn roles_read_well_in_logs() {
        assert_eq!(Role::Coordinator.to_string(), "coordinator");
        assert_eq!(
            Role::Backend("backend_9000".into()).to_string(),
            "backend backend_9000"
        );
    }

    /// Collects what the fmt subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::RwLock<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.write().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    // current_thread runtime: the spawned task runs on this thread, under this subscriber.
    #[tokio::test(start_paused = true)]
    async fn logs_name_the_role_the_address_and_the_registry() {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .with_ansi(false)
            .without_time()
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);

        spawn_registration(
            Flaky::new(1),
            Role::Coordinator,
            address(),
            CancellationToken::new(),
        )
        .await
        .unwrap();

        let logs = String::from_utf8(captured.0.read().unwrap().clone()).unwrap();
        assert!(
            logs.contains(
                "Registered coordinator in ClusterRegistry: 127.0.0.1:8082 (internal), \
                 127.0.0.1:8083 (http), 127.0.0.1:8084 (mgmt)"
            ),
            "{logs}"
        );
        assert!(
            logs.contains("Failed to register coordinator in ClusterRegistry; retrying"),
            "{logs}"
        );
        assert!(logs.contains("disk on fire"), "{logs}");
        assert!(logs.contains("registry=flaky registry"), "{logs}");
    }
}
