//! [`DeployError`]: every way a package can be refused or an install can fail, named by cause.
//! The routers turn it into an HTTP status or a `/ws` error; nothing here knows about either.

use std::path::PathBuf;
use std::time::Duration;

use crate::deploy::archive::START_SCRIPT;

/// Why a package was refused or could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The upload's file name does not look like `name-version.tar.gz`.
    #[error("package file name {0:?} must look like name-version.tar.gz ([A-Za-z0-9._+-], no leading '.' or '-', no '..')")]
    BadFileName(String),
    /// The manifest's name is empty, so its sanitized form would be too.
    #[error("the package name is empty")]
    EmptyName,
    /// The name is longer than [`crate::deploy::package::MAX_NAME_LEN`].
    #[error("the package name is longer than {0} characters")]
    NameTooLong(usize),
    /// The version does not match `^[0-9A-Za-z][0-9A-Za-z.+_-]*$` or contains `..`.
    #[error("version {0:?} must match ^[0-9A-Za-z][0-9A-Za-z.+_-]*$ and contain no '..'")]
    BadVersion(String),
    /// The file name says one package, the manifest another.
    #[error("the file name says {file:?} but the manifest says {manifest:?}")]
    NameMismatch {
        /// `name-version` from the file name.
        file: String,
        /// `sanitized name-version` from the manifest.
        manifest: String,
    },
    /// An entry's path is absolute.
    #[error("entry {0:?} has an absolute path")]
    AbsolutePath(String),
    /// An entry's path has a `..` component.
    #[error("entry {0:?} has a '..' component")]
    ParentDir(String),
    /// An entry's path is empty or not UTF-8.
    #[error("entry {0:?} has an empty or non-UTF-8 path")]
    BadPath(String),
    /// Two entries have the same path (a later one could replace a checked one).
    #[error("entry {0:?} appears twice")]
    Duplicate(String),
    /// A symbolic or hard link points outside the package, or through another link.
    #[error("link {path:?} -> {target:?} leaves the package or passes through a link")]
    LinkEscapes {
        /// The link's path.
        path: String,
        /// Where it points.
        target: String,
    },
    /// An entry's path passes through a symbolic link of the archive.
    #[error("entry {0:?} lies under a link")]
    ThroughLink(String),
    /// A device file, FIFO or other entry kind a package has no use for.
    #[error("entry {path:?} is a {kind}, which packages may not hold")]
    SpecialFile {
        /// The entry's path.
        path: String,
        /// What it is (`character device`, `fifo`, …).
        kind: &'static str,
    },
    /// More entries than `--max-package-files`.
    #[error("the package holds more than {0} entries")]
    TooManyFiles(u64),
    /// More unpacked bytes than `--max-unpacked`.
    #[error("the package unpacks to more than {0} bytes")]
    TooLarge(u64),
    /// The gzip or tar stream ends early or is corrupt.
    #[error("the package is truncated or corrupt: {0}")]
    Corrupt(String),
    /// A file every package needs is missing (or is not a regular file).
    #[error("the package has no {0} (a regular file)")]
    Missing(&'static str),
    /// `manifest.yaml` is larger than [`crate::deploy::archive::MAX_MANIFEST`].
    #[error("manifest.yaml is larger than {0} bytes")]
    ManifestTooLarge(u64),
    /// `manifest.yaml` is not valid YAML or not a manifest.
    #[error("manifest.yaml is malformed: {0}")]
    BadManifest(String),
    /// The manifest asks for a way of running that this node does not offer.
    #[error("service.type {0} is not supported: Colony runs packages only as managed processes (scripts/start.sh as a child of the node); it has no container runtime or systemd integration")]
    NotSupported(&'static str),
    /// No deployed service has this name.
    #[error("no deployed service named {0:?}")]
    UnknownService(String),
    /// A service depends on one that is not deployed on this node.
    #[error("{service} depends on {dependency:?}, which is not deployed on this node")]
    UnknownDependency {
        /// The dependent service.
        service: String,
        /// The missing one.
        dependency: String,
    },
    /// `depends_on` loops.
    #[error("depends_on forms a cycle: {}", .0.join(" -> "))]
    DependencyCycle(Vec<String>),
    /// A command of `requires.commands` is not on `PATH`.
    #[error("required command {0:?} is not on PATH (or not executable)")]
    MissingCommand(String),
    /// The service could not be started (its `start.sh` could not be run, or this node may
    /// run nothing).
    #[error("{0}")]
    StartFailed(String),
    /// `start.sh` ran but the service did not become ready.
    #[error(transparent)]
    NotReady(#[from] NotReady),
    /// A backend could not be reached, or answered a forwarded deployment wrongly.
    #[error("forwarding to the backend failed: {0}")]
    Forward(String),
    /// A backend refused a forwarded deployment or failed it.
    #[error("{message}")]
    Remote {
        /// Its `/ws`-style error code.
        code: String,
        /// Its reason.
        message: String,
    },
    /// Reading or writing the install tree failed.
    #[error("{what} {path:?}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl DeployError {
    /// An I/O failure while `what` on `path`.
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DeployError::Io {
            what,
            path: path.into(),
            source,
        }
    }

    /// Whether the package itself is at fault (the caller sent something wrong), as opposed
    /// to this node failing to install a good one.
    pub fn is_refusal(&self) -> bool {
        !matches!(
            self,
            DeployError::Io { .. }
                | DeployError::StartFailed(_)
                | DeployError::NotReady(_)
                | DeployError::Forward(_)
        )
    }
}

/// Why a started service did not become ready (its health check passing, or its TCP ports
/// accepting connections).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// `start.sh` exited first: how (its exit status), with the last lines of its output.
    #[error("{0}")]
    Exited(String),
    /// It was not ready within the start timeout, and was killed.
    #[error("{START_SCRIPT} was not ready within {}; killed", humantime::format_duration(*.0))]
    TimedOut(Duration),
}
