//! [`Deployer`]: one node's deployments end to end: an uploaded package file is installed
//! ([`Installer`]), registered and started ([`Services`]), each step announced as
//! `deployment_progress`. Uploads wait in `{state dir}/packages/`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::deploy::error::DeployError;
use crate::deploy::forward::Forwarder;
use crate::deploy::install::{Installer, Step};
use crate::deploy::lifecycle::Services;
use crate::deploy::package::PackageFile;
use crate::deploy::remote::RemoteServices;
use crate::deploy::service::{ServiceEntry, ServiceState};

/// Limits of a package upload (to the coordinator, or forwarded to a backend).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadLimits {
    /// Largest package, in bytes (`--max-package`).
    pub max_package: u64,
    /// Longest an upload may take (`--package-timeout`).
    pub timeout: Duration,
}

impl Default for UploadLimits {
    fn default() -> Self {
        UploadLimits {
            max_package: 256 * 1024 * 1024,
            timeout: Duration::from_secs(600),
        }
    }
}

/// A step name from a backend, as one of ours (`unknown` if it is none).
fn known_step(step: &str) -> &'static str {
    const STEPS: [&str; 8] = [
        "received",
        "verified",
        "extracted",
        "installed",
        "dependencies",
        "starting",
        "running",
        "failed",
    ];
    STEPS.into_iter().find(|s| *s == step).unwrap_or("unknown")
}

/// The `/ws` error code of a failed deployment.
pub fn error_code(e: &DeployError) -> &str {
    match e {
        DeployError::UnknownService(_) => "not_found",
        DeployError::NotSupported(_) => "not_supported",
        DeployError::Remote { code, .. } => code,
        e if e.is_refusal() => "refused",
        _ => "deploy_failed",
    }
}

/// One node's deployments.
#[derive(Debug, Clone)]
pub struct Deployer {
    installer: Installer,
    services: Services,
    packages: PathBuf,
    remote: Option<RemoteServices>,
}

impl Deployer {
    /// Deploys into `installer`'s root, runs with `services`; uploads go under
    /// `{state dir}/packages/`.
    pub fn new(installer: Installer, services: Services) -> Self {
        let packages = services.config().state_dir.join("packages");
        installer.clean_leftovers();
        Deployer {
            installer,
            services,
            packages,
            remote: None,
        }
    }

    /// This deployer also forwards packages to backends and keeps a view of the services
    /// deployed there (the coordinator's does).
    #[must_use]
    pub fn with_forwarder(mut self, forwarder: Forwarder) -> Self {
        self.remote = Some(RemoteServices::new(forwarder));
        self
    }

    /// The services deployed on backends, on a node that forwards.
    pub fn remote(&self) -> Option<&RemoteServices> {
        self.remote.as_ref()
    }

    /// Sends the uploaded package `file` to the backend `target` whose control plane is
    /// `control`, relaying its steps as `deployment_progress` for `target`.
    ///
    /// # Errors
    /// [`DeployError::NotSupported`]-like `Remote` errors as the backend gives them,
    /// [`DeployError::Forward`] when it cannot be reached or this node does not forward.
    pub async fn forward(
        &self,
        file: &PackageFile,
        target: &str,
        control: &str,
        activate: bool,
    ) -> Result<ServiceEntry, DeployError> {
        let Some(remote) = &self.remote else {
            return Err(DeployError::Forward(
                "this node does not forward packages".to_owned(),
            ));
        };
        let services = self.services.clone();
        let package = file.as_str().to_owned();
        let result = remote
            .forwarder()
            .forward(&self.package_path(file), file, control, activate, |p| {
                services.progress(&package, target, known_step(&p.step), p.detail);
            })
            .await;
        match &result {
            Ok(entry) => remote.record(target, entry.clone()),
            Err(e) => {
                self.services
                    .progress(&package, target, "failed", Some(e.to_string()));
            }
        }
        result
    }

    /// The deployed services.
    pub fn services(&self) -> &Services {
        &self.services
    }

    /// Where uploads are kept.
    pub fn packages_dir(&self) -> &Path {
        &self.packages
    }

    /// The path of an uploaded package.
    pub fn package_path(&self, file: &PackageFile) -> PathBuf {
        self.packages.join(file.as_str())
    }

    /// Installs and (unless the same version already runs, or another version runs and
    /// `activate` is false) starts the uploaded package `file`, announcing each step as
    /// `deployment_progress` for `target`.
    ///
    /// # Errors
    /// [`DeployError`]: the package was refused, or the service did not start. A
    /// `failed` step has been announced with the reason.
    pub async fn deploy(
        &self,
        file: &PackageFile,
        target: &str,
        activate: bool,
    ) -> Result<ServiceEntry, DeployError> {
        let result = self.deploy_inner(file, target, activate).await;
        if let Err(e) = &result {
            self.services
                .progress(file.as_str(), target, "failed", Some(e.to_string()));
        }
        result
    }

    async fn deploy_inner(
        &self,
        file: &PackageFile,
        target: &str,
        activate: bool,
    ) -> Result<ServiceEntry, DeployError> {
        let path = self.package_path(file);
        if !path.is_file() {
            return Err(DeployError::io(
                "finding the uploaded package",
                path,
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        let package = file.as_str().to_owned();
        self.services.progress(&package, target, "received", None);
        let (installer, services, owned_file) =
            (self.installer.clone(), self.services.clone(), file.clone());
        let (name, target_owned) = (package.clone(), target.to_owned());
        let installed = tokio::task::spawn_blocking(move || {
            let vet_services = services.clone();
            installer.install_vetted(
                &owned_file,
                &path,
                |manifest| vet_services.vet(manifest),
                |step| {
                    let step = match step {
                        Step::Verified => "verified",
                        Step::Extracted => "extracted",
                        Step::Installed => "installed",
                    };
                    services.progress(&name, &target_owned, step, None);
                },
            )
        })
        .await
        .map_err(|e| DeployError::io("installing", file.as_str(), std::io::Error::other(e)))??;
        let start = self
            .services
            .register(&installed.manifest, &installed.dir, activate)
            .await?;
        let service = installed.manifest.name.clone();
        self.services.progress(
            &package,
            target,
            "dependencies",
            Some(installed.manifest.depends_on.join(", ")),
        );
        let entry = if start {
            self.services.progress(&package, target, "starting", None);
            self.services.start(&service).await?
        } else {
            self.services
                .get(&service)
                .ok_or_else(|| DeployError::UnknownService(service.clone()))?
        };
        let detail = match &entry.pending {
            Some(p) => format!(
                "{} {} runs; {} is installed beside it and takes over on restart",
                entry.name, entry.version, p.version
            ),
            None => format!("{} {} {}", entry.name, entry.version, entry.state.name()),
        };
        let step = match entry.state {
            ServiceState::Running | ServiceState::Starting => "running",
            _ => "failed",
        };
        self.services.progress(&package, target, step, Some(detail));
        Ok(entry)
    }
}
