//! [`Deployer`]: one node's deployments end to end: an uploaded package file is installed
//! ([`Installer`]), registered and started ([`Services`]), each step announced as
//! `deployment_progress`. Uploads wait in `{state dir}/packages/`.

use std::path::{Path, PathBuf};

use crate::deploy::error::DeployError;
use crate::deploy::install::{Installer, Step};
use crate::deploy::lifecycle::Services;
use crate::deploy::package::PackageFile;
use crate::deploy::service::{ServiceEntry, ServiceState};

/// One node's deployments.
#[derive(Debug, Clone)]
pub struct Deployer {
    installer: Installer,
    services: Services,
    packages: PathBuf,
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
        }
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
