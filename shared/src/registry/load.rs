//! The registry load of `colony bench registry` and the `registry` cargo bench: the two calls
//! nodes make ([`register`] a backend for the first time, [`discover`] the backends), each
//! timed, and [`start`], which repeats one of them on a [`Load`] until stopped.
//!
//! The load runs against a live registry, so what it writes it removes: fake backends are
//! named `{prefix}_{n}` with fresh numbers, and a register worker unregisters every one it
//! made when its load stops, before a discover load is measured.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{ClusterRegistry, RegistryError};
use crate::loadgen::{Load, Worker};
use crate::NodeAddress;

/// The calls a load repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Registers a backend never registered before.
    Register,
    /// Lists every backend.
    Discover,
}

impl Op {
    /// Its name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Op::Register => "register",
            Op::Discover => "discover",
        }
    }
}

/// The id of fake backend `n`.
pub fn backend_id(prefix: &str, n: u32) -> String {
    format!("{prefix}_{n}")
}

/// The address of fake backend `n`: loopback, ports that tell backends apart.
pub fn backend_address(n: u32) -> NodeAddress {
    let port = |base: u32| u16::try_from(base + n % 10_000).unwrap_or(u16::MAX);
    NodeAddress::new(
        Ipv4Addr::LOCALHOST.into(),
        port(10_000),
        port(20_000),
        port(30_000),
    )
}

/// Registers fake backend `n`; how long it took.
///
/// # Errors
/// The registry's.
pub async fn register(
    registry: &dyn ClusterRegistry,
    prefix: &str,
    n: u32,
) -> Result<Duration, RegistryError> {
    let started = Instant::now();
    registry
        .register_backend(&backend_id(prefix, n), backend_address(n))
        .await?;
    Ok(started.elapsed())
}

/// Discovers the backends; how long it took and how many there were.
///
/// # Errors
/// The registry's.
pub async fn discover(registry: &dyn ClusterRegistry) -> Result<(Duration, usize), RegistryError> {
    let started = Instant::now();
    let found = registry.discover_backends().await?;
    Ok((started.elapsed(), found.len()))
}

/// Starts `workers` workers repeating `op` on `registry`; register workers number their
/// backends `w`, `w + workers`, … so no two make the same one.
pub fn start(registry: Arc<dyn ClusterRegistry>, op: Op, prefix: &str, workers: u32) -> Load {
    let workers = workers.max(1);
    let prefix = prefix.to_owned();
    Load::spawn(0..workers, move |w, worker| {
        drive(registry.clone(), op, prefix.clone(), (w, workers), worker)
    })
}

async fn drive(
    registry: Arc<dyn ClusterRegistry>,
    op: Op,
    prefix: String,
    (first, step): (u32, u32),
    mut worker: Worker,
) -> std::io::Result<Vec<Duration>> {
    let failed = |e: RegistryError| std::io::Error::other(e.to_string());
    let mut made = Vec::new();
    let mut next = first;
    let mut outcome = Ok(());
    while worker.running() && outcome.is_ok() {
        let started = Instant::now();
        outcome = match op {
            Op::Register => register(registry.as_ref(), &prefix, next).await.map(|_| {
                made.push(next);
                next = next.saturating_add(step);
            }),
            Op::Discover => discover(registry.as_ref()).await.map(drop),
        };
        if outcome.is_ok() {
            worker.completed(1, started);
        }
    }
    // Removed even after a failure: the registry is a live cluster's.
    for n in made {
        registry
            .unregister_backend(&backend_id(&prefix, n))
            .await
            .map_err(failed)?;
    }
    outcome.map_err(failed)?;
    Ok(worker.into_samples())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::InMemoryClusterRegistry;

    #[tokio::test]
    async fn a_register_load_cleans_up_and_a_discover_load_counts() {
        let registry: Arc<dyn ClusterRegistry> = Arc::new(InMemoryClusterRegistry::new());
        let load = start(registry.clone(), Op::Register, "bench", 2);
        load.record_latencies();
        let deadline = Instant::now() + Duration::from_secs(10);
        while load.completed() < 50 {
            assert!(Instant::now() < deadline, "no registrations");
            tokio::task::yield_now().await;
        }
        let samples = load.stop().await.unwrap();
        assert!(samples.len() >= 50);
        assert!(registry.discover_backends().await.unwrap().is_empty());

        registry
            .register_backend("real_1", backend_address(1))
            .await
            .unwrap();
        let load = start(registry.clone(), Op::Discover, "bench", 1);
        while load.completed() < 10 {
            assert!(Instant::now() < deadline, "no discoveries");
            tokio::task::yield_now().await;
        }
        load.stop().await.unwrap();
        assert_eq!(discover(registry.as_ref()).await.unwrap().1, 1);
    }
}
