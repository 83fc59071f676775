//! Every hostile archive the installer must refuse, each built byte by byte (the `tar`
//! builder itself refuses to write most of them), and the checks that nothing was written.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;
use tar::{EntryType, Header};

use super::archive::{self, ArchiveLimits};
use super::install::{Installer, Step};
use super::package::PackageFile;
use super::DeployError;

const MANIFEST: &[u8] = b"name: demo\nversion: 1.0.0\n";

/// A tar stream under construction.
struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    fn new() -> Self {
        Tar(tar::Builder::new(Vec::new()))
    }

    /// A package with the required files.
    fn package() -> Self {
        Tar::new()
            .file("manifest.yaml", MANIFEST)
            .file("scripts/start.sh", b"#!/bin/sh\nexit 0\n")
            .file("scripts/stop.sh", b"#!/bin/sh\nexit 0\n")
    }

    /// An entry with exactly these name and link bytes.
    fn raw(mut self, kind: EntryType, path: &str, link: &str, data: &[u8]) -> Self {
        let mut header = Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o755);
        let old = header.as_old_mut();
        old.name[..path.len()].copy_from_slice(path.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_cksum();
        self.0.append(&header, data).unwrap();
        self
    }

    fn file(self, path: &str, data: &[u8]) -> Self {
        self.raw(EntryType::Regular, path, "", data)
    }

    fn dir(self, path: &str) -> Self {
        self.raw(EntryType::Directory, path, "", b"")
    }

    fn symlink(self, path: &str, target: &str) -> Self {
        self.raw(EntryType::Symlink, path, target, b"")
    }

    fn hardlink(self, path: &str, target: &str) -> Self {
        self.raw(EntryType::Link, path, target, b"")
    }

    fn gz(self) -> Vec<u8> {
        let tar = self.0.into_inner().unwrap();
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(&tar).unwrap();
        gz.finish().unwrap()
    }
}

/// A deploy root and a place for uploads beside it, both temporary.
struct Site {
    _dir: tempfile::TempDir,
    root: PathBuf,
    uploads: PathBuf,
}

impl Site {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let uploads = dir.path().join("uploads");
        fs::create_dir_all(&uploads).unwrap();
        Site {
            root,
            uploads,
            _dir: dir,
        }
    }

    fn install_with(
        &self,
        file: &str,
        bytes: &[u8],
        limits: ArchiveLimits,
    ) -> Result<super::install::Installed, DeployError> {
        let path = self.uploads.join(file);
        fs::write(&path, bytes).unwrap();
        let mut steps = Vec::new();
        let result = Installer::new(&self.root, limits).install(
            &PackageFile::parse(file).unwrap(),
            &path,
            |s| steps.push(s),
        );
        if let Ok(installed) = &result {
            let expected: &[Step] = if installed.fresh {
                &[Step::Verified, Step::Extracted, Step::Installed]
            } else {
                &[Step::Verified, Step::Installed]
            };
            assert_eq!(steps, expected);
        }
        result
    }

    fn install(&self, bytes: &[u8]) -> Result<super::install::Installed, DeployError> {
        self.install_with("demo-1.0.0.tar.gz", bytes, ArchiveLimits::default())
    }

    /// Everything under the root (and the root's parent, where an escape would land).
    fn written(&self) -> Vec<String> {
        let mut found = Vec::new();
        walk(self.root.parent().unwrap(), &mut found);
        found.retain(|p| !p.contains("/uploads"));
        found
    }
}

fn walk(dir: &Path, found: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        found.push(entry.path().display().to_string());
        if entry.file_type().unwrap().is_dir() {
            walk(&entry.path(), found);
        }
    }
}

/// Asserts that installing `bytes` is refused as `expected` says and writes nothing.
#[track_caller]
fn refused(bytes: &[u8], expected: impl Fn(&DeployError) -> bool) {
    let site = Site::new();
    let err = site.install(bytes).unwrap_err();
    assert!(expected(&err), "refused for the wrong reason: {err}");
    assert!(err.is_refusal());
    let written = site.written();
    assert!(
        written
            .iter()
            .all(|p| !p.contains("demo") && !p.contains(".installing")),
        "left behind: {written:?}"
    );
}

#[test]
fn a_good_package_installs_whole_with_its_modes() {
    let site = Site::new();
    let bytes = Tar::package()
        .dir("bin/")
        .file("bin/tool", b"tool")
        .symlink("bin/start", "../scripts/start.sh")
        .hardlink("bin/tool2", "bin/tool")
        .file("./config/default.conf", b"x=1\n")
        .gz();
    let installed = site.install(&bytes).unwrap();
    assert!(installed.fresh);
    assert_eq!(installed.dir, site.root.join("demo-1.0.0"));
    assert_eq!(installed.manifest.name, "demo");
    let start = installed.dir.join("scripts/start.sh");
    assert_eq!(fs::read(&start).unwrap(), b"#!/bin/sh\nexit 0\n");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&start).unwrap().permissions().mode() & 0o111,
        0o111
    );
    assert_eq!(
        fs::read(installed.dir.join("bin/start")).unwrap(),
        b"#!/bin/sh\nexit 0\n"
    );
    assert_eq!(fs::read(installed.dir.join("bin/tool2")).unwrap(), b"tool");
    assert_eq!(
        fs::read(installed.dir.join("config/default.conf")).unwrap(),
        b"x=1\n"
    );
    // No temp dir is left beside it.
    assert_eq!(fs::read_dir(&site.root).unwrap().count(), 1);
}

#[test]
fn the_same_version_again_is_left_alone() {
    let site = Site::new();
    let bytes = Tar::package().gz();
    assert!(site.install(&bytes).unwrap().fresh);
    fs::write(site.root.join("demo-1.0.0/state"), b"kept").unwrap();
    let again = site.install(&bytes).unwrap();
    assert!(!again.fresh);
    assert_eq!(fs::read(again.dir.join("state")).unwrap(), b"kept");
}

#[test]
fn only_old_temp_dirs_are_taken_for_leftovers_as_nodes_may_share_a_root() {
    let site = Site::new();
    let crashed = site.root.join(".installing-crashed");
    let busy = site.root.join(".installing-busy");
    fs::create_dir_all(crashed.join("scripts")).unwrap();
    fs::create_dir_all(&busy).unwrap();
    let long_ago = std::time::SystemTime::now() - super::install::LEFTOVER_AGE * 2;
    fs::File::open(&crashed)
        .unwrap()
        .set_modified(long_ago)
        .unwrap();
    Installer::new(&site.root, ArchiveLimits::default()).clean_leftovers();
    assert!(!crashed.exists());
    // Another node's install in progress (colony up's nodes share a root) is left alone.
    assert!(busy.is_dir());
}

#[test]
fn another_version_installs_beside_the_first() {
    let site = Site::new();
    site.install(&Tar::package().gz()).unwrap();
    let v2 = Tar::new()
        .file("manifest.yaml", b"name: demo\nversion: 2.0.0\n")
        .file("scripts/start.sh", b"")
        .file("scripts/stop.sh", b"")
        .gz();
    let installed = site
        .install_with("demo-2.0.0.tar.gz", &v2, ArchiveLimits::default())
        .unwrap();
    assert!(installed.fresh);
    assert!(site.root.join("demo-1.0.0/manifest.yaml").is_file());
    assert!(site.root.join("demo-2.0.0/manifest.yaml").is_file());
}

#[test]
fn absolute_paths_are_refused() {
    let bytes = Tar::package().file("/tmp/evil", b"x").gz();
    refused(
        &bytes,
        |e| matches!(e, DeployError::AbsolutePath(p) if p == "/tmp/evil"),
    );
}

#[test]
fn parent_components_are_refused() {
    for path in ["../evil", "bin/../../evil", "a/.."] {
        let bytes = Tar::package().file(path, b"x").gz();
        refused(&bytes, |e| matches!(e, DeployError::ParentDir(_)));
    }
}

#[test]
fn symlinks_leaving_the_package_are_refused() {
    for (path, target) in [
        ("evil", "/etc/passwd"),
        ("evil", ".."),
        ("bin/evil", "../../x"),
    ] {
        let bytes = Tar::package().symlink(path, target).gz();
        refused(&bytes, |e| matches!(e, DeployError::LinkEscapes { .. }));
    }
    // A link to nowhere is malformed rather than escaping.
    let bytes = Tar::package().symlink("evil", "").gz();
    refused(&bytes, |e| matches!(e, DeployError::BadPath(_)));
}

#[test]
fn links_chained_through_links_are_refused() {
    // `d/x` is the package root itself, so `d/x/..` (lexically `d`) really is its parent.
    let bytes = Tar::package()
        .dir("d/")
        .symlink("d/x", "..")
        .symlink("y", "d/x/..")
        .gz();
    refused(&bytes, |e| matches!(e, DeployError::LinkEscapes { .. }));
    // An entry written through a link lands wherever the link points.
    let bytes = Tar::package()
        .symlink("out", "bin")
        .file("out/file", b"x")
        .gz();
    refused(
        &bytes,
        |e| matches!(e, DeployError::ThroughLink(p) if p == "out/file"),
    );
}

#[test]
fn hard_links_to_anything_but_a_file_of_the_package_are_refused() {
    for target in ["/etc/passwd", "../outside", "missing", "scripts"] {
        let bytes = Tar::package().dir("scripts/").hardlink("evil", target).gz();
        refused(&bytes, |e| matches!(e, DeployError::LinkEscapes { .. }));
    }
}

#[test]
fn devices_and_fifos_are_refused() {
    for (kind, name) in [
        (EntryType::Char, "character device"),
        (EntryType::Block, "block device"),
        (EntryType::Fifo, "fifo"),
    ] {
        let bytes = Tar::package().raw(kind, "dev", "", b"").gz();
        refused(
            &bytes,
            |e| matches!(e, DeployError::SpecialFile { kind, .. } if *kind == name),
        );
    }
}

#[test]
fn duplicate_entries_are_refused() {
    // A second entry could replace a checked file by a link.
    let bytes = Tar::package().symlink("scripts/start.sh", "stop.sh").gz();
    refused(&bytes, |e| matches!(e, DeployError::Duplicate(_)));
}

#[test]
fn required_files_must_be_there_and_regular() {
    let no_manifest = Tar::new()
        .file("scripts/start.sh", b"")
        .file("scripts/stop.sh", b"")
        .gz();
    refused(&no_manifest, |e| {
        matches!(e, DeployError::Missing("manifest.yaml"))
    });
    let no_start = Tar::new()
        .file("manifest.yaml", MANIFEST)
        .file("scripts/stop.sh", b"")
        .gz();
    refused(&no_start, |e| {
        matches!(e, DeployError::Missing("scripts/start.sh"))
    });
    let no_stop = Tar::new()
        .file("manifest.yaml", MANIFEST)
        .file("scripts/start.sh", b"")
        .gz();
    refused(&no_stop, |e| {
        matches!(e, DeployError::Missing("scripts/stop.sh"))
    });
    let linked_start = Tar::new()
        .file("manifest.yaml", MANIFEST)
        .file("scripts/stop.sh", b"")
        .symlink("scripts/start.sh", "stop.sh")
        .gz();
    refused(&linked_start, |e| {
        matches!(e, DeployError::Missing("scripts/start.sh"))
    });
}

#[test]
fn malformed_manifests_are_refused() {
    for manifest in [&b"name: [oops"[..], b"just text", b"name: demo\n"] {
        let bytes = Tar::new()
            .file("manifest.yaml", manifest)
            .file("scripts/start.sh", b"")
            .file("scripts/stop.sh", b"")
            .gz();
        refused(&bytes, |e| matches!(e, DeployError::BadManifest(_)));
    }
    let huge = vec![b'#'; archive::MAX_MANIFEST as usize + 1];
    let bytes = Tar::new()
        .file("manifest.yaml", &huge)
        .file("scripts/start.sh", b"")
        .file("scripts/stop.sh", b"")
        .gz();
    refused(&bytes, |e| matches!(e, DeployError::ManifestTooLarge(_)));
}

#[test]
fn names_and_versions_that_cannot_be_a_directory_are_refused() {
    for (manifest, check) in [
        (&b"name: ''\nversion: 1.0.0\n"[..], "empty"),
        (b"name: demo\nversion: ''\n", "version"),
        (b"name: demo\nversion: '../1'\n", "version"),
        (b"name: demo\nversion: .hidden\n", "version"),
    ] {
        let bytes = Tar::new()
            .file("manifest.yaml", manifest)
            .file("scripts/start.sh", b"")
            .file("scripts/stop.sh", b"")
            .gz();
        refused(&bytes, |e| match check {
            "empty" => matches!(e, DeployError::EmptyName),
            _ => matches!(e, DeployError::BadVersion(_)),
        });
    }
}

#[test]
fn the_file_name_must_match_the_manifest() {
    let site = Site::new();
    let err = site
        .install_with(
            "other-1.0.0.tar.gz",
            &Tar::package().gz(),
            ArchiveLimits::default(),
        )
        .unwrap_err();
    assert!(matches!(err, DeployError::NameMismatch { .. }), "{err}");
    assert!(!site.root.exists());
}

#[test]
fn a_gzip_bomb_stops_at_the_unpacked_limit() {
    // 64 MiB of zeros compresses to about 64 KiB.
    let bomb = Tar::package().file("bomb", &vec![0u8; 64 << 20]).gz();
    assert!(bomb.len() < 1 << 20);
    let site = Site::new();
    let limits = ArchiveLimits {
        max_unpacked: 1 << 20,
        ..ArchiveLimits::default()
    };
    let err = site
        .install_with("demo-1.0.0.tar.gz", &bomb, limits)
        .unwrap_err();
    assert!(
        matches!(err, DeployError::TooLarge(l) if l == 1 << 20),
        "{err}"
    );
    assert!(!site.root.exists());
}

#[test]
fn too_many_entries_are_refused() {
    let mut tar = Tar::package();
    for i in 0..20 {
        tar = tar.file(&format!("f{i}"), b"");
    }
    let site = Site::new();
    let limits = ArchiveLimits {
        max_files: 10,
        ..ArchiveLimits::default()
    };
    let err = site
        .install_with("demo-1.0.0.tar.gz", &tar.gz(), limits)
        .unwrap_err();
    assert!(matches!(err, DeployError::TooManyFiles(10)), "{err}");
    assert!(!site.root.exists());
}

#[test]
fn truncated_archives_are_refused_wherever_they_end() {
    let bytes = Tar::package().file("bin/data", &[7u8; 10_000]).gz();
    // Cut inside the compressed body and just before the gzip trailer (CRC and length).
    for cut in [
        bytes.len() / 3,
        bytes.len() / 2,
        bytes.len() - 4,
        bytes.len() - 1,
    ] {
        refused(&bytes[..cut], |e| matches!(e, DeployError::Corrupt(_)));
    }
}

#[test]
fn garbage_is_refused() {
    refused(b"not a gzip stream at all", |e| {
        matches!(e, DeployError::Corrupt(_))
    });
}
