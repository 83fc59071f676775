//! `manifest.yaml`: what a package says about itself (DESIGN §16, the service-registry seed),
//! parsed with `serde_norway` and checked. It owns the manifest's shape and its rules, not
//! where the bytes come from ([`crate::deploy::archive`] reads them, bounded).

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::deploy::error::DeployError;
use crate::deploy::package;

/// A package's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The service's name (sanitized for its directory, kept as written for people).
    pub name: String,
    /// Its version; see [`package::validate_version`].
    pub version: String,
    /// For people.
    #[serde(default)]
    pub description: String,
    /// How it runs and where it listens.
    #[serde(default)]
    pub service: ServiceSpec,
    /// Names of deployed services that must run before this one.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// What the host must have.
    #[serde(default)]
    pub requires: Requires,
    /// Its health check, if any.
    #[serde(default)]
    pub health: Option<HealthSpec>,
}

/// How the service runs and which ports it serves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// The execution kind.
    #[serde(rename = "type", default)]
    pub kind: ServiceKind,
    /// Ports, which become the service's endpoints.
    #[serde(default)]
    pub ports: Vec<PortSpec>,
}

/// How a service runs. Only managed processes are run here; the others are parsed so that
/// a deploy can say why it refuses them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceKind {
    /// `scripts/start.sh` as a child of the node.
    #[default]
    ManagedProcess,
    /// A container (not supported).
    Docker,
    /// A systemd unit (not supported).
    Systemd,
}

/// One port the service listens on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    /// The endpoint's name (`http`, `grpc`, …).
    pub name: String,
    /// The port.
    pub port: u16,
    /// The transport.
    #[serde(default)]
    pub protocol: Protocol,
}

/// An endpoint's transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

/// What the host must provide.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requires {
    /// Commands that must be on `PATH` (or, if absolute, exist and be executable).
    #[serde(default)]
    pub commands: Vec<String>,
    /// Shared libraries (recorded; not checked).
    #[serde(default)]
    pub libraries: Vec<String>,
}

/// The health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthSpec {
    /// The script, relative to the install directory.
    #[serde(default = "default_health_script")]
    pub script: String,
    /// How often it runs.
    #[serde(
        default = "default_interval",
        deserialize_with = "duration",
        serialize_with = "humantime_ser"
    )]
    pub interval: Duration,
    /// How long one run may take before it counts as failed.
    #[serde(
        default = "default_timeout",
        deserialize_with = "duration",
        serialize_with = "humantime_ser"
    )]
    pub timeout: Duration,
}

fn default_health_script() -> String {
    "scripts/health.sh".to_owned()
}

fn default_interval() -> Duration {
    Duration::from_secs(30)
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(serde::de::Error::custom)
}

fn humantime_ser<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

/// The shortest health interval: a check every few milliseconds would be a fork bomb.
pub const MIN_HEALTH_INTERVAL: Duration = Duration::from_millis(100);

impl Manifest {
    /// Parses and checks `yaml`.
    ///
    /// # Errors
    /// [`DeployError::BadManifest`] for YAML that is not a manifest or breaks a rule below;
    /// the name and version errors of [`package`].
    pub fn parse(yaml: &[u8]) -> Result<Self, DeployError> {
        let manifest: Manifest =
            serde_norway::from_slice(yaml).map_err(|e| DeployError::BadManifest(e.to_string()))?;
        manifest.check()?;
        Ok(manifest)
    }

    fn check(&self) -> Result<(), DeployError> {
        package::install_dir_name(&self.name, &self.version)?;
        let bad = |why: String| Err(DeployError::BadManifest(why));
        if let Some(health) = &self.health {
            if !is_inside_path(&health.script) {
                return bad(format!(
                    "health.script {:?} must be a relative path inside the package",
                    health.script
                ));
            }
            if health.interval < MIN_HEALTH_INTERVAL {
                return bad(format!(
                    "health.interval must be at least {MIN_HEALTH_INTERVAL:?}"
                ));
            }
            if health.timeout.is_zero() {
                return bad("health.timeout must be above zero".to_owned());
            }
        }
        for dep in &self.depends_on {
            if dep.is_empty() || *dep == self.name {
                return bad(format!(
                    "depends_on entry {dep:?} is empty or the service itself"
                ));
            }
        }
        for command in &self.requires.commands {
            if command.is_empty() || command.contains('\0') {
                return bad("requires.commands holds an empty command".to_owned());
            }
        }
        Ok(())
    }

    /// The install directory's name, `{sanitized name}-{version}`.
    pub fn dir_name(&self) -> String {
        // Checked by `parse`; a manifest built by hand gets the raw pair.
        package::install_dir_name(&self.name, &self.version)
            .unwrap_or_else(|_| format!("{}-{}", self.name, self.version))
    }
}

/// Whether `path` is relative and stays inside its base (no root, no `..`).
fn is_inside_path(path: &str) -> bool {
    let path = std::path::Path::new(path);
    !path.as_os_str().is_empty()
        && path.components().all(|c| {
            matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = r#"
name: api-server
version: 1.2.3
description: REST API server
service:
  type: managed_process
  ports:
    - name: http
      port: 8080
      protocol: tcp
depends_on:
  - postgres
requires:
  commands:
    - /usr/bin/curl
  libraries:
    - libpq.so.5
health:
  script: scripts/health.sh
  interval: 30s
  timeout: 5s
"#;

    #[test]
    fn the_seeds_manifest_parses() {
        let m = Manifest::parse(SEED.as_bytes()).unwrap();
        assert_eq!(m.name, "api-server");
        assert_eq!(m.version, "1.2.3");
        assert_eq!(m.service.kind, ServiceKind::ManagedProcess);
        assert_eq!(m.service.ports[0].port, 8080);
        assert_eq!(m.depends_on, ["postgres"]);
        let health = m.health.unwrap();
        assert_eq!(health.interval, Duration::from_secs(30));
        assert_eq!(health.timeout, Duration::from_secs(5));
    }

    #[test]
    fn a_minimal_manifest_takes_defaults() {
        let m = Manifest::parse(b"name: x\nversion: '1'\n").unwrap();
        assert_eq!(m.service.kind, ServiceKind::ManagedProcess);
        assert!(m.health.is_none() && m.depends_on.is_empty());
        assert_eq!(m.dir_name(), "x-1");
    }

    #[test]
    fn numeric_looking_versions_stay_text() {
        // YAML reads `1.0` as a float; the version must still be the text written.
        let m = Manifest::parse(b"name: x\nversion: 1.0\n").unwrap();
        assert_eq!(m.version, "1.0");
    }

    #[test]
    fn malformed_manifests_are_refused() {
        for bad in [
            &b"name: [unclosed"[..],
            b"version: 1\n",
            b"name: x\n",
            b"- a list\n",
            b"name: x\nversion: 1\nservice:\n  type: podman\n",
            b"name: x\nversion: 1\nservice:\n  ports:\n    - name: h\n      port: 70000\n",
            b"name: x\nversion: 1\nhealth:\n  interval: soon\n",
            b"name: x\nversion: 1\nhealth:\n  script: /bin/true\n",
            b"name: x\nversion: 1\nhealth:\n  script: ../x.sh\n",
            b"name: x\nversion: 1\nhealth:\n  interval: 1ms\n",
            b"name: x\nversion: 1\ndepends_on: [x]\n",
            b"\xff\xfe",
        ] {
            assert!(
                matches!(Manifest::parse(bad), Err(DeployError::BadManifest(_))),
                "{:?} accepted",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn names_and_versions_follow_the_package_rules() {
        assert!(matches!(
            Manifest::parse(b"name: ''\nversion: 1\n"),
            Err(DeployError::EmptyName)
        ));
        for version in ["../1", ".hidden"] {
            let yaml = format!("name: x\nversion: '{version}'\n");
            assert!(matches!(
                Manifest::parse(yaml.as_bytes()),
                Err(DeployError::BadVersion(_))
            ));
        }
    }
}
