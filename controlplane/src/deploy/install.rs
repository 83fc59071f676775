//! Installing a package under the deploy root: check the archive and its manifest, extract it
//! into a temp dir inside the root, and rename that into `{root}/{sanitized name}-{version}/`,
//! so an install is either whole or absent. Synchronous: callers run it on a blocking thread.
//! It owns the install tree, not what runs from it ([`crate::deploy`]'s lifecycle does).

use std::fs;
use std::path::{Path, PathBuf};

use crate::deploy::archive::{self, ArchiveLimits};
use crate::deploy::error::DeployError;
use crate::deploy::manifest::Manifest;
use crate::deploy::package::PackageFile;

/// The prefix of the temp dirs installs extract into; leftovers of a crash carry it.
const TEMP_PREFIX: &str = ".installing-";

/// How long a temp dir must be untouched before a starting node takes it for a leftover.
pub const LEFTOVER_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// A step of an install, for `deployment_progress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The archive and its manifest passed every check.
    Verified,
    /// The files are in the temp dir.
    Extracted,
    /// The temp dir has been renamed into place (or the same version was already there).
    Installed,
}

/// A package on disk.
#[derive(Debug, Clone)]
pub struct Installed {
    /// Its manifest.
    pub manifest: Manifest,
    /// Its install directory.
    pub dir: PathBuf,
    /// False when the same version was already installed and nothing was written.
    pub fresh: bool,
}

/// Installs packages under one deploy root.
#[derive(Debug, Clone)]
pub struct Installer {
    root: PathBuf,
    limits: ArchiveLimits,
}

impl Installer {
    /// An installer for `root` (created on first install).
    pub fn new(root: impl Into<PathBuf>, limits: ArchiveLimits) -> Self {
        Installer {
            root: root.into(),
            limits,
        }
    }

    /// The deploy root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Removes temp dirs left by an install that a crash interrupted. Only those untouched
    /// for [`LEFTOVER_AGE`]: nodes may share a root (`colony up`'s do), and a younger one
    /// may be another node's install in progress.
    pub fn clean_leftovers(&self) {
        let Ok(dir) = fs::read_dir(&self.root) else {
            return;
        };
        let old = |entry: &fs::DirEntry| {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|at| at.elapsed().ok())
                .is_some_and(|age| age >= LEFTOVER_AGE)
        };
        for entry in dir.flatten() {
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) && old(&entry) {
                if let Err(e) = fs::remove_dir_all(entry.path()) {
                    tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove a half-done install");
                }
            }
        }
    }

    /// Installs the package `file`, whose bytes are at `archive`, calling `on_step` after
    /// each step. The same version already installed is left as it is (`fresh: false`).
    ///
    /// # Errors
    /// A refusal ([`DeployError::is_refusal`]) when the archive, its manifest or its names
    /// break a rule; [`DeployError::Io`] when writing fails. Either way nothing is left
    /// under the root.
    pub fn install(
        &self,
        file: &PackageFile,
        archive: &Path,
        mut on_step: impl FnMut(Step),
    ) -> Result<Installed, DeployError> {
        self.install_vetted(file, archive, |_| Ok(()), &mut on_step)
    }

    /// As [`Installer::install`], with `vet` asked about the manifest after every check of
    /// the archive and before anything is written: a refusal there writes nothing.
    ///
    /// # Errors
    /// As [`Installer::install`], and whatever `vet` returns.
    pub fn install_vetted(
        &self,
        file: &PackageFile,
        archive: &Path,
        vet: impl FnOnce(&Manifest) -> Result<(), DeployError>,
        mut on_step: impl FnMut(Step),
    ) -> Result<Installed, DeployError> {
        let checked = archive::check(archive, self.limits)?;
        let manifest = Manifest::parse(&checked.manifest)?;
        let dir_name = manifest.dir_name();
        if file.stem() != dir_name {
            return Err(DeployError::NameMismatch {
                file: file.stem().to_owned(),
                manifest: dir_name,
            });
        }
        vet(&manifest)?;
        on_step(Step::Verified);
        let dir = self.root.join(&dir_name);
        if fs::symlink_metadata(&dir).is_ok() {
            on_step(Step::Installed);
            return Ok(Installed {
                manifest,
                dir,
                fresh: false,
            });
        }
        fs::create_dir_all(&self.root)
            .map_err(|e| DeployError::io("creating the deploy root", &self.root, e))?;
        // Inside the root, so the rename below stays on one file system (atomic); dropped
        // (removed) on any error before it.
        let temp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempdir_in(&self.root)
            .map_err(|e| DeployError::io("creating a temp dir in", &self.root, e))?;
        archive::extract(archive, temp.path(), &checked, self.limits)?;
        // The temp dir is 0700; the scripts may run as the deploy user.
        set_mode(temp.path(), 0o755)?;
        on_step(Step::Extracted);
        let temp = temp.keep();
        let fresh = match fs::rename(&temp, &dir) {
            Ok(()) => true,
            Err(e) => {
                let _ = fs::remove_dir_all(&temp);
                // Another node sharing this root installed the same version meanwhile: it
                // is there, whole (a rename is atomic), as if it had been before.
                if fs::symlink_metadata(&dir).is_err() {
                    return Err(DeployError::io("renaming the install into", &dir, e));
                }
                false
            }
        };
        on_step(Step::Installed);
        Ok(Installed {
            manifest,
            dir,
            fresh,
        })
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), DeployError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| DeployError::io("setting the mode of", path, e))
}
