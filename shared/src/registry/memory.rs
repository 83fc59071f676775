//! [`InMemoryClusterRegistry`]: a registry inside one process, for unit tests of the components
//! that use a registry. It follows the same contract as the real ones (instance-id checks,
//! overwrite, sorted discovery), so tests written against it hold for them.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::RwLock;

use super::{validate_instance_id, ClusterRegistry, RegistryError};
use crate::NodeAddress;

/// A registry held in memory. Clones share the same entries.
#[derive(Debug, Clone, Default)]
pub struct InMemoryClusterRegistry {
    inner: Arc<RwLock<Entries>>,
}

#[derive(Debug, Default)]
struct Entries {
    coordinator: Option<NodeAddress>,
    /// A `BTreeMap` so discovery comes out sorted by instance id.
    backends: BTreeMap<String, NodeAddress>,
}

impl InMemoryClusterRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl ClusterRegistry for InMemoryClusterRegistry {
    async fn register_coordinator(&self, address: NodeAddress) -> Result<(), RegistryError> {
        self.inner.write().await.coordinator = Some(address);
        Ok(())
    }

    async fn unregister_coordinator(&self) -> Result<(), RegistryError> {
        self.inner.write().await.coordinator = None;
        Ok(())
    }

    async fn register_backend(
        &self,
        instance_id: &str,
        address: NodeAddress,
    ) -> Result<(), RegistryError> {
        validate_instance_id(instance_id)?;
        self.inner
            .write()
            .await
            .backends
            .insert(instance_id.to_owned(), address);
        Ok(())
    }

    async fn unregister_backend(&self, instance_id: &str) -> Result<(), RegistryError> {
        validate_instance_id(instance_id)?;
        self.inner.write().await.backends.remove(instance_id);
        Ok(())
    }

    async fn discover_coordinator(&self) -> Result<Option<NodeAddress>, RegistryError> {
        Ok(self.inner.read().await.coordinator)
    }

    async fn discover_backends(&self) -> Result<Vec<(String, NodeAddress)>, RegistryError> {
        Ok(self
            .inner
            .read()
            .await
            .backends
            .iter()
            .map(|(id, address)| (id.clone(), *address))
            .collect())
    }

    fn describe(&self) -> String {
        "in-memory registry".to_owned()
    }
}
