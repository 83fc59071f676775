//! [`RegistryError`]: every way a registry operation or its configuration can fail.

use std::path::PathBuf;

/// A registry operation, or the choice of registry, failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A file or directory of the file registry could not be read or written.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. `"create directory"`, `"rename"`.
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: std::io::Error,
    },
    /// An instance id that cannot be a file or parameter name.
    #[error("invalid instance id {id:?}: {reason}")]
    InvalidInstanceId {
        /// The id as given.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An address could not be serialized (a bug, not bad input).
    #[error("cannot encode address: {0}")]
    Encode(#[source] serde_json::Error),
    /// The selected registry is not available in this build.
    #[error("{0}")]
    Unsupported(String),
    /// A registry kind (`--registry`) that is not one of the known ones.
    #[error("unknown registry kind {value:?} (valid: file, ssm)")]
    UnknownKind {
        /// The value as given.
        value: String,
    },
    /// A `DEPLOYMENT_MODE` that is not one of the known ones.
    #[error("unknown DEPLOYMENT_MODE {value:?} (valid: localhost, aws)")]
    UnknownDeploymentMode {
        /// The value as given.
        value: String,
    },
    /// The SSM registry is misconfigured, or a call to SSM failed; the message names the
    /// cause and what to set.
    #[error(transparent)]
    Ssm(#[from] super::SsmError),
    /// The blocking task doing the I/O panicked or was cancelled.
    #[error("registry I/O task failed: {0}")]
    TaskFailed(#[source] tokio::task::JoinError),
}

impl RegistryError {
    /// True when trying the same operation again cannot succeed: bad input or configuration,
    /// as opposed to a store that is unavailable for now.
    pub fn is_permanent(&self) -> bool {
        match self {
            RegistryError::InvalidInstanceId { .. }
            | RegistryError::Encode(_)
            | RegistryError::Unsupported(_)
            | RegistryError::UnknownKind { .. }
            | RegistryError::UnknownDeploymentMode { .. } => true,
            RegistryError::Ssm(e) => e.is_permanent(),
            RegistryError::Io { .. } | RegistryError::TaskFailed(_) => false,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RegistryError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
