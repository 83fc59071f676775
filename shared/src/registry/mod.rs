//! The ClusterRegistry: where nodes publish their [`NodeAddress`] and find each other (DESIGN §2).
//!
//! This module owns the [`ClusterRegistry`] trait, its implementations ([`FileClusterRegistry`]
//! for localhost, [`SsmClusterRegistry`] on AWS SSM Parameter Store, [`InMemoryClusterRegistry`]
//! for unit tests), the factory that picks one from configuration, instance-id rules, the
//! background registration task, the load `colony bench registry` puts on it ([`load`]), and (behind the `test-support` feature) the `contract` suite
//! every implementation must pass.
//!
//! It does not read Colony's environment variables or flags (the binary parses them and passes
//! values in); the SSM registry alone reads the standard `AWS_*` configuration, through the AWS
//! SDK, as every AWS client does. It holds addresses only: no topology, no secrets.

mod backoff;
#[cfg(feature = "test-support")]
pub mod contract;
mod error;
mod factory;
mod file;
mod instance_id;
pub mod load;
mod memory;
mod registration;
mod ssm;

use async_trait::async_trait;

use crate::NodeAddress;

pub use error::RegistryError;
pub use factory::{
    build_registry, kind_from_env_value, open_registry, resolve_kind, RegistryConfig, RegistryKind,
    DEFAULT_SSM_PREFIX,
};
pub use file::FileClusterRegistry;
pub use instance_id::{default_backend_id, validate_instance_id, MAX_INSTANCE_ID_LEN};
pub use memory::InMemoryClusterRegistry;
pub use registration::{spawn_registration, Role};
pub use ssm::{
    Clock, SsmCause, SsmClusterRegistry, SsmError, SsmOptions, TokioClock, DEFAULT_CACHE_TTL,
    MAX_PREFIX_LEN, MAX_VALUE_BYTES,
};

/// Registration and discovery of the coordinator and the backends.
///
/// Every implementation stores the same thing: the [`NodeAddress`] in its exact JSON form,
/// once for the coordinator and once per backend instance id. Writes replace any previous
/// value; unregistering something that is absent succeeds. Instance ids are checked with
/// [`validate_instance_id`] before anything is written or removed.
///
/// Implementations must pass the `contract` suite (feature `test-support`) unchanged.
#[async_trait]
pub trait ClusterRegistry: Send + Sync {
    /// Publishes the coordinator's address, replacing any previous one.
    ///
    /// # Errors
    /// The store could not be written.
    async fn register_coordinator(&self, address: NodeAddress) -> Result<(), RegistryError>;

    /// Removes the coordinator's address; succeeds if there was none.
    ///
    /// # Errors
    /// The store could not be written.
    async fn unregister_coordinator(&self) -> Result<(), RegistryError>;

    /// Publishes a backend's address under `instance_id`, replacing any previous one.
    ///
    /// # Errors
    /// [`RegistryError::InvalidInstanceId`] if the id breaks [`validate_instance_id`]; otherwise
    /// the store could not be written.
    async fn register_backend(
        &self,
        instance_id: &str,
        address: NodeAddress,
    ) -> Result<(), RegistryError>;

    /// Removes the backend registered under `instance_id`; succeeds if there was none.
    ///
    /// # Errors
    /// [`RegistryError::InvalidInstanceId`] if the id breaks [`validate_instance_id`]; otherwise
    /// the store could not be written.
    async fn unregister_backend(&self, instance_id: &str) -> Result<(), RegistryError>;

    /// The coordinator's address, or `None` if none is registered (or its entry is unreadable,
    /// which is logged).
    ///
    /// # Errors
    /// The store itself could not be read.
    async fn discover_coordinator(&self) -> Result<Option<NodeAddress>, RegistryError>;

    /// Every registered backend as `(instance_id, address)`, sorted by instance id (byte order).
    /// Entries that cannot be read or parsed are skipped with a warning naming them.
    ///
    /// # Errors
    /// The store itself could not be read.
    async fn discover_backends(&self) -> Result<Vec<(String, NodeAddress)>, RegistryError>;

    /// [`Self::discover_backends`], read from the store now, never from a cache of an earlier
    /// read: for a decision an operator just asked for (a colony start), which must see every
    /// backend registered before the request. Registries without a cache need not override it.
    ///
    /// # Errors
    /// The store itself could not be read.
    async fn discover_backends_now(&self) -> Result<Vec<(String, NodeAddress)>, RegistryError> {
        self.discover_backends().await
    }

    /// What and where this registry is, for log lines, e.g. `file registry at /srv/output/ssm`.
    fn describe(&self) -> String;
}
