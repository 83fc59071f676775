//! Choosing and building the registry from configuration values.
//!
//! The binary reads `--registry`, `DEPLOYMENT_MODE`, `--registry-dir` and the SSM prefix
//! (through clap) and passes the values here; nothing in this module reads the environment
//! (the SSM registry reads the standard `AWS_*` configuration itself when it is opened).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use super::{ClusterRegistry, FileClusterRegistry, RegistryError, SsmClusterRegistry, SsmOptions};

/// The SSM parameter prefix used unless configured otherwise.
pub const DEFAULT_SSM_PREFIX: &str = "/colony";

/// Which registry implementation to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegistryKind {
    /// [`FileClusterRegistry`]: files under `--registry-dir`, for nodes on one machine.
    File,
    /// [`SsmClusterRegistry`]: AWS SSM Parameter Store, for nodes on many machines.
    Ssm,
}

impl RegistryKind {
    /// The name used on the command line: `file` or `ssm`.
    pub fn as_str(self) -> &'static str {
        match self {
            RegistryKind::File => "file",
            RegistryKind::Ssm => "ssm",
        }
    }
}

impl fmt::Display for RegistryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RegistryKind {
    type Err = RegistryError;

    /// `file` or `ssm`, ignoring ASCII case and surrounding spaces.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "file" => Ok(RegistryKind::File),
            "ssm" => Ok(RegistryKind::Ssm),
            _ => Err(RegistryError::UnknownKind {
                value: s.to_owned(),
            }),
        }
    }
}

/// Maps a `DEPLOYMENT_MODE` value to a registry: unset, empty or `localhost` → file,
/// `aws` → SSM (ASCII case and surrounding spaces ignored).
///
/// # Errors
/// [`RegistryError::UnknownDeploymentMode`], listing the valid values.
pub fn kind_from_env_value(deployment_mode: Option<&str>) -> Result<RegistryKind, RegistryError> {
    let Some(raw) = deployment_mode else {
        return Ok(RegistryKind::File);
    };
    // An exported-but-empty variable means "not set", as shells commonly treat it.
    match raw.trim().to_ascii_lowercase().as_str() {
        "" | "localhost" => Ok(RegistryKind::File),
        "aws" => Ok(RegistryKind::Ssm),
        _ => Err(RegistryError::UnknownDeploymentMode {
            value: raw.to_owned(),
        }),
    }
}

/// The registry to use: an explicit `--registry` wins over `DEPLOYMENT_MODE`.
///
/// # Errors
/// As [`kind_from_env_value`], when `explicit` is `None`.
pub fn resolve_kind(
    explicit: Option<RegistryKind>,
    deployment_mode: Option<&str>,
) -> Result<RegistryKind, RegistryError> {
    match explicit {
        Some(kind) => Ok(kind),
        None => kind_from_env_value(deployment_mode),
    }
}

/// Where each registry keeps its entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Root of the file registry; entries go to `registry_dir/output/ssm/`. Default `.`.
    pub registry_dir: PathBuf,
    /// Parameter prefix of the SSM registry. Default [`DEFAULT_SSM_PREFIX`].
    pub ssm_prefix: String,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            registry_dir: PathBuf::from("."),
            ssm_prefix: DEFAULT_SSM_PREFIX.to_owned(),
        }
    }
}

/// Opens the registry of the given kind: the way nodes and `colony status` get theirs.
///
/// The SSM registry loads the standard AWS configuration and resolves credentials first (see
/// [`SsmClusterRegistry::from_env`]), which is why this is async; it sends nothing to SSM.
///
/// # Errors
/// For [`RegistryKind::Ssm`], [`RegistryError::Ssm`] when no region is configured, no
/// credentials resolve or the prefix is invalid, naming what to set.
pub async fn open_registry(
    kind: RegistryKind,
    config: RegistryConfig,
) -> Result<Arc<dyn ClusterRegistry>, RegistryError> {
    match kind {
        RegistryKind::File => build_registry(kind, config),
        RegistryKind::Ssm => Ok(Arc::new(
            SsmClusterRegistry::from_env(SsmOptions::new(config.ssm_prefix)).await?,
        )),
    }
}

/// Builds a registry that needs no I/O to construct: the file registry. Prefer
/// [`open_registry`], which handles every kind.
///
/// # Errors
/// [`RegistryError::Unsupported`] for [`RegistryKind::Ssm`], which must be opened with
/// [`open_registry`]; silently using files instead would split a cloud cluster into invisible
/// halves.
pub fn build_registry(
    kind: RegistryKind,
    config: RegistryConfig,
) -> Result<Arc<dyn ClusterRegistry>, RegistryError> {
    match kind {
        RegistryKind::File => Ok(Arc::new(FileClusterRegistry::new(config.registry_dir))),
        RegistryKind::Ssm => Err(RegistryError::Unsupported(format!(
            "the SSM registry (prefix {}) loads the AWS configuration asynchronously: \
             open it with open_registry",
            config.ssm_prefix
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_and_print() {
        assert_eq!("file".parse::<RegistryKind>().unwrap(), RegistryKind::File);
        assert_eq!("ssm".parse::<RegistryKind>().unwrap(), RegistryKind::Ssm);
        assert_eq!(" SSM ".parse::<RegistryKind>().unwrap(), RegistryKind::Ssm);
        for kind in [RegistryKind::File, RegistryKind::Ssm] {
            assert_eq!(kind.to_string().parse::<RegistryKind>().unwrap(), kind);
        }
    }

    #[test]
    fn unknown_kind_lists_the_valid_ones() {
        for bad in ["", "files", "aws", "s3"] {
            let err = bad.parse::<RegistryKind>().unwrap_err();
            assert!(matches!(err, RegistryError::UnknownKind { .. }), "{bad:?}");
            assert!(err.to_string().contains("valid: file, ssm"), "{err}");
            assert!(err.is_permanent());
        }
    }

    #[test]
    fn deployment_mode_maps_to_a_kind() {
        assert_eq!(kind_from_env_value(None).unwrap(), RegistryKind::File);
        assert_eq!(kind_from_env_value(Some("")).unwrap(), RegistryKind::File);
        assert_eq!(
            kind_from_env_value(Some("localhost")).unwrap(),
            RegistryKind::File
        );
        assert_eq!(
            kind_from_env_value(Some("LocalHost")).unwrap(),
            RegistryKind::File
        );
        assert_eq!(kind_from_env_value(Some("aws")).unwrap(), RegistryKind::Ssm);
        assert_eq!(kind_from_env_value(Some("AWS")).unwrap(), RegistryKind::Ssm);
    }

    #[test]
    fn unknown_deployment_mode_lists_the_valid_ones() {
        for bad in ["cloud", "local", "file", "ssm"] {
            let err = kind_from_env_value(Some(bad)).unwrap_err();
            assert!(
                matches!(err, RegistryError::UnknownDeploymentMode { .. }),
                "{bad:?}"
            );
            let msg = err.to_string();
            assert!(msg.contains(bad), "{msg}");
            assert!(msg.contains("valid: localhost, aws"), "{msg}");
        }
    }

    #[test]
    fn explicit_kind_wins_over_deployment_mode() {
        assert_eq!(
            resolve_kind(Some(RegistryKind::File), Some("aws")).unwrap(),
            RegistryKind::File
        );
        // An explicit choice even makes a bad DEPLOYMENT_MODE irrelevant.
        assert_eq!(
            resolve_kind(Some(RegistryKind::Ssm), Some("bogus")).unwrap(),
            RegistryKind::Ssm
        );
        assert_eq!(resolve_kind(None, Some("aws")).unwrap(), RegistryKind::Ssm);
        assert!(resolve_kind(None, Some("bogus")).is_err());
    }

    #[test]
    fn ssm_is_never_replaced_by_files() {
        let dir = tempfile::tempdir().unwrap();
        let config = RegistryConfig {
            registry_dir: dir.path().to_owned(),
            ..RegistryConfig::default()
        };
        let err = build_registry(RegistryKind::Ssm, config).err().unwrap();
        assert!(matches!(err, RegistryError::Unsupported(_)), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("SSM registry"), "{msg}");
        assert!(msg.contains("open_registry"), "{msg}");
        assert!(err.is_permanent());
        assert!(!dir.path().join("output").exists());
    }

    #[tokio::test]
    async fn open_registry_opens_the_file_registry_at_the_configured_root() {
        let dir = tempfile::tempdir().unwrap();
        let config = RegistryConfig {
            registry_dir: dir.path().to_owned(),
            ..RegistryConfig::default()
        };
        let registry = open_registry(RegistryKind::File, config).await.unwrap();
        assert!(registry.describe().starts_with("file registry at "));
    }

    #[tokio::test]
    async fn a_bad_ssm_prefix_fails_before_any_aws_lookup() {
        let config = RegistryConfig {
            ssm_prefix: "colony".to_owned(),
            ..RegistryConfig::default()
        };
        let err = open_registry(RegistryKind::Ssm, config)
            .await
            .err()
            .unwrap();
        assert!(matches!(err, RegistryError::Ssm(_)), "{err:?}");
        assert!(err.is_permanent());
        assert!(err.to_string().contains("--ssm-prefix"), "{err}");
    }

    #[test]
    fn file_kind_builds_a_file_registry_at_the_configured_root() {
        let dir = tempfile::tempdir().unwrap();
        let config = RegistryConfig {
            registry_dir: dir.path().to_owned(),
            ..RegistryConfig::default()
        };
        let registry = build_registry(RegistryKind::File, config).unwrap();
        let expected = dir.path().join("output").join("ssm");
        assert_eq!(
            registry.describe(),
            format!("file registry at {}", expected.display())
        );
    }

    #[test]
    fn default_config_is_the_current_directory_and_colony_prefix() {
        let config = RegistryConfig::default();
        assert_eq!(config.registry_dir, PathBuf::from("."));
        assert_eq!(config.ssm_prefix, "/colony");
    }
}
