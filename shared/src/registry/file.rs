//! [`FileClusterRegistry`]: the localhost registry, one JSON file per node under
//! `ROOT/output/ssm/`, shared by every process on the machine.
//!
//! Layout: `coordinator.json` and `backends/{instance_id}.json`, each holding exactly the
//! [`NodeAddress`] JSON, so `jq` and shell scripts can read them.
//!
//! Writers never modify a file in place: they write a temp file in the same directory and
//! rename it over the target, which is atomic on POSIX file systems, so a reader sees the old
//! content or the new, never a torn file. Temp names carry the pid, a process-wide counter and
//! a random suffix, so writers in different threads, processes or containers sharing the
//! directory never pick the same one. There is no fsync: the registry describes running
//! processes, which a power loss ends anyway, and a torn leftover would only be skipped.
//!
//! Readers are tolerant: a file that does not parse, or does not belong (not `*.json`, a bad
//! instance id), is skipped with a warning naming it, and the rest is still returned. Temp
//! files are skipped quietly (at debug level) because they are normal while a write is in
//! flight.
//!
//! The blocking file I/O runs on tokio's blocking pool, one hop per operation.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use super::{validate_instance_id, ClusterRegistry, RegistryError};
use crate::NodeAddress;

/// Entries larger than this are not ours (an address is under 100 bytes); they are skipped
/// rather than read whole.
const MAX_ENTRY_BYTES: u64 = 4096;

/// Suffix of the temp files writers create; readers skip them.
const TEMP_SUFFIX: &str = ".tmp";

/// How many fresh temp names a writer tries before giving up; a collision needs the same pid,
/// counter value and 64 random bits, so a second try is already unheard of.
const TEMP_ATTEMPTS: u32 = 4;

/// Distinguishes temp files of concurrent writers within one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The file-backed registry for nodes on one machine (DESIGN §2).
#[derive(Debug, Clone)]
pub struct FileClusterRegistry {
    /// `ROOT/output/ssm`.
    dir: PathBuf,
}

impl FileClusterRegistry {
    /// A registry whose files live under `root/output/ssm/` (created on first write).
    ///
    /// A relative `root` is made absolute against the current directory now, so later log
    /// lines name the real location. The default root, `.`, puts the files in `./output/ssm/`.
    pub fn new(root: PathBuf) -> Self {
        let root = std::path::absolute(&root).unwrap_or(root);
        FileClusterRegistry {
            dir: root.join("output").join("ssm"),
        }
    }

    /// The registry directory, `ROOT/output/ssm`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `ROOT/output/ssm/coordinator.json`.
    pub fn coordinator_path(&self) -> PathBuf {
        self.dir.join("coordinator.json")
    }

    /// `ROOT/output/ssm/backends`.
    pub fn backends_dir(&self) -> PathBuf {
        self.dir.join("backends")
    }

    /// `ROOT/output/ssm/backends/{instance_id}.json`.
    ///
    /// # Errors
    /// [`RegistryError::InvalidInstanceId`] if the id could escape the directory or is
    /// otherwise not allowed.
    pub fn backend_path(&self, instance_id: &str) -> Result<PathBuf, RegistryError> {
        validate_instance_id(instance_id)?;
        Ok(self.backends_dir().join(format!("{instance_id}.json")))
    }
}

#[async_trait]
impl ClusterRegistry for FileClusterRegistry {
    async fn register_coordinator(&self, address: NodeAddress) -> Result<(), RegistryError> {
        let json = serde_json::to_string(&address).map_err(RegistryError::Encode)?;
        let path = self.coordinator_path();
        blocking(move || write_atomic(&path, json.as_bytes())).await
    }

    async fn unregister_coordinator(&self) -> Result<(), RegistryError> {
        let path = self.coordinator_path();
        blocking(move || remove_if_present(&path)).await
    }

    async fn register_backend(
        &self,
        instance_id: &str,
        address: NodeAddress,
    ) -> Result<(), RegistryError> {
        let path = self.backend_path(instance_id)?;
        let json = serde_json::to_string(&address).map_err(RegistryError::Encode)?;
        blocking(move || write_atomic(&path, json.as_bytes())).await
    }

    async fn unregister_backend(&self, instance_id: &str) -> Result<(), RegistryError> {
        let path = self.backend_path(instance_id)?;
        blocking(move || remove_if_present(&path)).await
    }

    async fn discover_coordinator(&self) -> Result<Option<NodeAddress>, RegistryError> {
        let path = self.coordinator_path();
        blocking(move || match read_entry(&path) {
            Ok(found) => Ok(found),
            Err(EntryError::Io(e)) => Err(RegistryError::io("read", path, e)),
            Err(bad) => {
                tracing::warn!(path = %path.display(), error = %bad, "skipping registry entry");
                Ok(None)
            }
        })
        .await
    }

    async fn discover_backends(&self) -> Result<Vec<(String, NodeAddress)>, RegistryError> {
        let dir = self.backends_dir();
        blocking(move || read_backends(&dir)).await
    }

    fn describe(&self) -> String {
        format!("file registry at {}", self.dir.display())
    }
}

/// Runs blocking file I/O off the async workers.
async fn blocking<T, F>(f: F) -> Result<T, RegistryError>
where
    F: FnOnce() -> Result<T, RegistryError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(RegistryError::TaskFailed)?
}

/// Replaces `path` with `contents` atomically: temp file in the same directory, then rename.
fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), RegistryError> {
    let (dir, name) = match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
        (Some(dir), Some(name)) => (dir, name),
        // Every path we build is `dir/<name>.json`; anything else is a bug upstream.
        _ => {
            return Err(RegistryError::io(
                "write",
                path,
                io::Error::new(io::ErrorKind::InvalidInput, "not a file path"),
            ))
        }
    };
    fs::create_dir_all(dir).map_err(|e| RegistryError::io("create directory", dir, e))?;
    let (tmp, mut file) = create_temp(dir, name)?;
    let written = file
        .write_all(contents)
        .map_err(|e| RegistryError::io("write", &tmp, e))
        .and_then(|()| {
            drop(file);
            fs::rename(&tmp, path).map_err(|e| RegistryError::io("rename", &tmp, e))
        });
    if written.is_err() {
        // Best effort: a leftover temp file is harmless (readers skip it) but untidy.
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Creates a new, never-before-used temp file beside `name` in `dir`.
fn create_temp(dir: &Path, name: &str) -> Result<(PathBuf, fs::File), RegistryError> {
    let mut attempt = 0;
    loop {
        let tmp = dir.join(temp_name(name));
        // `create_new` makes a collision an error instead of two writers sharing one file.
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
        {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt + 1 < TEMP_ATTEMPTS => {
                attempt += 1;
            }
            Err(e) => return Err(RegistryError::io("create", tmp, e)),
        }
    }
}

/// `.{name}.{pid}.{counter}.{random}.tmp`: hidden, and never ending in `.json`.
fn temp_name(name: &str) -> String {
    let counter = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    // The random part covers pid reuse across containers sharing the directory; if the OS
    // cannot give randomness, the clock still separates writers in practice.
    let random = getrandom::u64().unwrap_or_else(|_| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    format!(
        ".{name}.{}.{counter}.{random:016x}{TEMP_SUFFIX}",
        std::process::id()
    )
}

fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(TEMP_SUFFIX)
}

fn remove_if_present(path: &Path) -> Result<(), RegistryError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RegistryError::io("remove", path, e)),
    }
}

/// Why one entry was not read.
#[derive(Debug, thiserror::Error)]
enum EntryError {
    #[error("cannot read it: {0}")]
    Io(io::Error),
    #[error("it is larger than {MAX_ENTRY_BYTES} bytes")]
    TooLarge,
    #[error("it is not a node address: {0}")]
    Parse(serde_json::Error),
}

/// Reads one entry; `Ok(None)` if it does not exist (never registered, or just removed).
fn read_entry(path: &Path) -> Result<Option<NodeAddress>, EntryError> {
    let file = match fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(EntryError::Io(e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_ENTRY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(EntryError::Io)?;
    if bytes.len() as u64 > MAX_ENTRY_BYTES {
        return Err(EntryError::TooLarge);
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(EntryError::Parse)
}

/// Every well-formed `backends/{id}.json`, sorted by id; everything else is skipped.
fn read_backends(dir: &Path) -> Result<Vec<(String, NodeAddress)>, RegistryError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(RegistryError::io("read directory", dir, e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| RegistryError::io("read directory", dir, e))?;
        let path = entry.path();
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str() else {
            tracing::warn!(path = %path.display(), "skipping foreign file in registry: name is not UTF-8");
            continue;
        };
        if is_temp_name(name) {
            tracing::debug!(path = %path.display(), "skipping registry temp file");
            continue;
        }
        let Some(id) = name.strip_suffix(".json") else {
            tracing::warn!(path = %path.display(), "skipping foreign file in registry: not *.json");
            continue;
        };
        if let Err(e) = validate_instance_id(id) {
            tracing::warn!(path = %path.display(), error = %e, "skipping foreign file in registry");
            continue;
        }
        match read_entry(&path) {
            Ok(Some(address)) => found.push((id.to_owned(), address)),
            // Unregistered between listing and reading.
            Ok(None) => {}
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "skipping registry entry"),
        }
    }
    found.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn temp_names_are_unique_hidden_and_never_json() {
        let names: HashSet<String> = (0..10_000).map(|_| temp_name("backend_1.json")).collect();
        assert_eq!(names.len(), 10_000);
        for name in &names {
            assert!(is_temp_name(name), "{name}");
            assert!(!name.ends_with(".json"), "{name}");
            assert!(name.starts_with(".backend_1.json."), "{name}");
            assert!(
                name.contains(&format!(".{}.", std::process::id())),
                "{name}"
            );
        }
    }

    #[test]
    fn only_our_temp_names_count_as_temp() {
        assert!(!is_temp_name("backend_1.json"));
        assert!(!is_temp_name("notes.tmp"));
        assert!(!is_temp_name(".backend_1.json"));
    }

    #[test]
    #[cfg(unix)] // Unix path syntax.
    fn backend_paths_stay_inside_the_backends_directory() {
        let registry = FileClusterRegistry::new(PathBuf::from("/srv/colony"));
        assert_eq!(
            registry.backend_path("backend_9000").unwrap(),
            Path::new("/srv/colony/output/ssm/backends/backend_9000.json")
        );
        assert_eq!(
            registry.coordinator_path(),
            Path::new("/srv/colony/output/ssm/coordinator.json")
        );
        for id in ["..", "../x", "a/b", "/etc/passwd", ""] {
            assert!(registry.backend_path(id).is_err(), "{id:?}");
        }
    }

    #[test]
    #[cfg(unix)] // Unix path syntax.
    fn relative_roots_are_made_absolute_for_the_logs() {
        let registry = FileClusterRegistry::new(PathBuf::from("runs/a"));
        assert!(registry.dir().is_absolute(), "{}", registry.dir().display());
        assert!(registry.dir().ends_with("runs/a/output/ssm"));
        assert!(registry.describe().starts_with("file registry at /"));
    }
}
