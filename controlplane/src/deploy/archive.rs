//! Reading a package (`.tar.gz`) safely: [`check`] walks the whole archive and refuses it
//! before anything is written; [`extract`] then unpacks the checked archive into a directory
//! it is given (the installer's temp dir). Synchronous (`tar` and `flate2` are): callers run
//! them on a blocking thread.
//!
//! Refused: absolute paths, `..`, duplicate paths, entries under a link, symbolic links whose
//! target (resolved lexically from the link's directory) leaves the package or passes through
//! another link, hard links to anything but a regular file of the package, devices, FIFOs and
//! every other special kind; more entries than [`ArchiveLimits::max_files`]; a decompressed
//! stream (tar headers included) longer than [`ArchiveLimits::max_unpacked`], which is how a
//! gzip bomb stops; a stream that ends early or fails its gzip check.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Component, Path};

use flate2::read::GzDecoder;
use tar::{Archive, EntryType};

use crate::deploy::error::DeployError;

/// Largest `manifest.yaml` read.
pub const MAX_MANIFEST: u64 = 64 * 1024;

/// The files every package must hold, as regular files.
pub const MANIFEST: &str = "manifest.yaml";
/// See [`MANIFEST`].
pub const START_SCRIPT: &str = "scripts/start.sh";
/// See [`MANIFEST`].
pub const STOP_SCRIPT: &str = "scripts/stop.sh";

/// Bounds on what a package may unpack to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveLimits {
    /// Most entries (files, directories, links).
    pub max_files: u64,
    /// Most decompressed bytes, tar headers included.
    pub max_unpacked: u64,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        ArchiveLimits {
            max_files: 10_000,
            max_unpacked: 1024 * 1024 * 1024,
        }
    }
}

/// What [`check`] learnt of an archive.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The bytes of `manifest.yaml`.
    pub manifest: Vec<u8>,
    /// How many entries it holds.
    pub entries: u64,
    /// Every entry's normalized path and kind; [`extract`] refuses anything else.
    kinds: HashMap<String, Kind>,
}

/// The kinds of entry a package may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink(String),
    Hardlink(String),
}

/// Walks the archive at `path` and checks every entry.
///
/// # Errors
/// A [`DeployError`] naming the first problem found.
pub fn check(path: &Path, limits: ArchiveLimits) -> Result<Checked, DeployError> {
    let file = File::open(path).map_err(|e| DeployError::io("opening", path, e))?;
    let mut reader = Bounded::new(GzDecoder::new(file), limits.max_unpacked);
    let walked = walk(&mut reader, limits);
    let checked = reader.blame(walked)?;
    check_links(&checked.kinds)?;
    for required in [MANIFEST, START_SCRIPT, STOP_SCRIPT] {
        if checked.kinds.get(required) != Some(&Kind::File) {
            return Err(DeployError::Missing(required));
        }
    }
    Ok(checked)
}

/// Unpacks the archive at `path`, already passed by [`check`], into the directory `dst`.
///
/// # Errors
/// A [`DeployError`] if the archive differs from the one checked (an entry not checked), or
/// writing fails.
pub fn extract(
    path: &Path,
    dst: &Path,
    checked: &Checked,
    limits: ArchiveLimits,
) -> Result<(), DeployError> {
    let file = File::open(path).map_err(|e| DeployError::io("opening", path, e))?;
    let mut reader = Bounded::new(GzDecoder::new(file), limits.max_unpacked);
    let unpacked = unpack(&mut reader, dst, checked);
    reader.blame(unpacked)
}

fn unpack<R: Read>(reader: R, dst: &Path, checked: &Checked) -> Result<(), DeployError> {
    let mut archive = Archive::new(reader);
    archive.set_overwrite(false);
    archive.set_preserve_permissions(false);
    archive.set_preserve_ownerships(false);
    archive.set_unpack_xattrs(false);
    let corrupt = |e: io::Error| DeployError::Corrupt(e.to_string());
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let (path, kind) = describe(&entry)?;
        // Only what `check` saw, as it saw it: the file could have changed in between.
        if checked.kinds.get(&path) != Some(&kind) {
            return Err(DeployError::Corrupt(format!(
                "entry {path:?} was not in the checked archive"
            )));
        }
        // `unpack_in` checks again that the entry stays inside `dst`.
        let inside = entry
            .unpack_in(dst)
            .map_err(|e| DeployError::io("unpacking into", dst.join(&path), e))?;
        if !inside {
            return Err(DeployError::ParentDir(path));
        }
    }
    Ok(())
}

fn walk<R: Read>(reader: R, limits: ArchiveLimits) -> Result<Checked, DeployError> {
    let mut archive = Archive::new(reader);
    let corrupt = |e: io::Error| DeployError::Corrupt(e.to_string());
    let mut kinds = HashMap::new();
    let mut manifest = None;
    let mut entries = 0u64;
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        entries += 1;
        if entries > limits.max_files {
            return Err(DeployError::TooManyFiles(limits.max_files));
        }
        let (path, kind) = describe(&entry)?;
        if path == MANIFEST && kind == Kind::File {
            if entry.size() > MAX_MANIFEST {
                return Err(DeployError::ManifestTooLarge(MAX_MANIFEST));
            }
            let mut bytes = Vec::new();
            (&mut entry)
                .take(MAX_MANIFEST)
                .read_to_end(&mut bytes)
                .map_err(corrupt)?;
            manifest = Some(bytes);
        }
        // Read every byte, so a truncated body is found now rather than while extracting.
        io::copy(&mut entry, &mut io::sink()).map_err(corrupt)?;
        if kinds.insert(path.clone(), kind).is_some() {
            return Err(DeployError::Duplicate(path));
        }
    }
    // The tar reader stops at the end-of-archive block; read the rest of the gzip stream so
    // its length and CRC are checked too (a truncated file fails here).
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(corrupt)?;
    let manifest = manifest.ok_or(DeployError::Missing(MANIFEST))?;
    Ok(Checked {
        manifest,
        entries,
        kinds,
    })
}

/// An entry's normalized path and kind.
fn describe<R: Read>(entry: &tar::Entry<'_, R>) -> Result<(String, Kind), DeployError> {
    let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
    let path = entry
        .path()
        .map_err(|_| DeployError::BadPath(raw.clone()))?;
    let path = normalize(&path, &raw)?;
    let entry_type = entry.header().entry_type();
    let link = || -> Result<String, DeployError> {
        let target = entry
            .link_name()
            .ok()
            .flatten()
            .ok_or_else(|| DeployError::BadPath(raw.clone()))?;
        target
            .to_str()
            .map(str::to_owned)
            .ok_or_else(|| DeployError::BadPath(raw.clone()))
    };
    let kind = match entry_type {
        EntryType::Regular | EntryType::Continuous => Kind::File,
        EntryType::Directory => Kind::Dir,
        EntryType::Symlink => Kind::Symlink(link()?),
        EntryType::Link => Kind::Hardlink(link()?),
        other => {
            return Err(DeployError::SpecialFile {
                path: raw,
                kind: kind_name(other),
            })
        }
    };
    if path.is_empty() {
        // `./` itself: harmless as a directory, meaningless as anything else.
        return if kind == Kind::Dir {
            Ok((String::new(), kind))
        } else {
            Err(DeployError::BadPath(raw))
        };
    }
    Ok((path, kind))
}

fn kind_name(entry_type: EntryType) -> &'static str {
    match entry_type {
        EntryType::Char => "character device",
        EntryType::Block => "block device",
        EntryType::Fifo => "fifo",
        EntryType::GNUSparse => "sparse file",
        _ => "special entry",
    }
}

/// `path` as `a/b/c`: `.` dropped, anything absolute or with `..` refused.
fn normalize(path: &Path, raw: &str) -> Result<String, DeployError> {
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => parts.push(
                part.to_str()
                    .ok_or_else(|| DeployError::BadPath(raw.to_owned()))?,
            ),
            Component::CurDir => {}
            Component::ParentDir => return Err(DeployError::ParentDir(raw.to_owned())),
            Component::RootDir | Component::Prefix(_) => {
                return Err(DeployError::AbsolutePath(raw.to_owned()))
            }
        }
    }
    Ok(parts.join("/"))
}

/// Link rules, once every entry is known (a link may come before or after what it names).
fn check_links(kinds: &HashMap<String, Kind>) -> Result<(), DeployError> {
    let links: HashSet<&str> = kinds
        .iter()
        .filter(|(_, k)| matches!(k, Kind::Symlink(_) | Kind::Hardlink(_)))
        .map(|(p, _)| p.as_str())
        .collect();
    let under_link = |path: &str| {
        path.match_indices('/')
            .any(|(i, _)| links.contains(&path[..i]))
    };
    for (path, kind) in kinds {
        if under_link(path) {
            return Err(DeployError::ThroughLink(path.clone()));
        }
        let escapes = |target: &str| DeployError::LinkEscapes {
            path: path.clone(),
            target: target.to_owned(),
        };
        match kind {
            Kind::Symlink(target) => {
                // Resolve lexically from the link's directory; every directory passed on the
                // way must be a real one of the package, not another link.
                let mut at: Vec<&str> = path.split('/').collect();
                at.pop();
                if Path::new(target).is_absolute() || target.is_empty() {
                    return Err(escapes(target));
                }
                for part in target.split('/') {
                    match part {
                        "" | "." => {}
                        ".." => {
                            if at.is_empty() || links.contains(at.join("/").as_str()) {
                                return Err(escapes(target));
                            }
                            at.pop();
                        }
                        part => {
                            if links.contains(at.join("/").as_str()) {
                                return Err(escapes(target));
                            }
                            at.push(part);
                        }
                    }
                }
            }
            Kind::Hardlink(target) => {
                // Only to a regular file of the package, named without tricks.
                let normal = normalize(Path::new(target), target).map_err(|_| escapes(target))?;
                if kinds.get(&normal) != Some(&Kind::File) || under_link(&normal) {
                    return Err(escapes(target));
                }
            }
            Kind::File | Kind::Dir => {}
        }
    }
    Ok(())
}

/// A reader that fails once more than `limit` bytes have come through; [`Bounded::blame`]
/// then turns whatever error that caused into [`DeployError::TooLarge`].
struct Bounded<R> {
    inner: R,
    read: u64,
    limit: u64,
}

impl<R> Bounded<R> {
    fn new(inner: R, limit: u64) -> Self {
        Bounded {
            inner,
            read: 0,
            limit,
        }
    }

    fn blame<T>(&self, result: Result<T, DeployError>) -> Result<T, DeployError> {
        match result {
            Err(_) if self.read > self.limit => Err(DeployError::TooLarge(self.limit)),
            other => other,
        }
    }
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.read > self.limit {
            return Err(io::Error::other("unpacked size limit"));
        }
        // Never ask for more than one byte past the limit, so a bomb costs little to detect.
        let room = usize::try_from(self.limit - self.read + 1).unwrap_or(usize::MAX);
        let take = buf.len().min(room);
        let n = self.inner.read(&mut buf[..take])?;
        self.read += n as u64;
        if self.read > self.limit {
            return Err(io::Error::other("unpacked size limit"));
        }
        Ok(n)
    }
}
