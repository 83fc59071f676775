//! The cluster secret (DESIGN §8): the key that signs init tokens and authenticates data-plane
//! peers.
//!
//! This module owns loading the secret (from the `COLONY_CLUSTER_SECRET` value the binary
//! passes in, from `--secret-file`, or, in localhost mode, from `output/cluster.key`, created on
//! first use) and naming it with a key id. It never reads the environment itself and never
//! prints, logs or serializes the secret: `Debug` shows only the key id, and there is no
//! `Display` or `Serialize`. Signing and verifying live in [`crate::token`] (init tokens) and
//! [`crate::signing`] (requests).
//!
//! # Format
//!
//! A secret is the text of the variable or file with surrounding whitespace trimmed, used as
//! raw bytes (so `openssl rand -hex 32 > cluster.key` works, trailing newline and all). It must
//! be at least [`ClusterSecret::MIN_LEN`] bytes. A created key file holds 32 random bytes as
//! 64 hex characters and a newline.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Longest secret file read, in bytes; stops `--secret-file /dev/zero` from eating memory.
const MAX_FILE_LEN: u64 = 4096;

/// Random bytes in a created key file.
const CREATED_LEN: usize = 32;

/// Errors loading or creating the cluster secret. Messages name the source, never the secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The secret file could not be read.
    #[error("cannot read cluster secret file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The secret file could not be created.
    #[error("cannot create cluster secret file {path}: {source}")]
    Create {
        /// The file (or its directory).
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The secret is shorter than [`ClusterSecret::MIN_LEN`] bytes (after trimming).
    #[error("cluster secret from {origin} is {len} bytes; at least {min} are required")]
    TooShort {
        /// Where it came from: `COLONY_CLUSTER_SECRET` or a path.
        origin: String,
        /// Its length.
        len: usize,
        /// The minimum.
        min: usize,
    },
    /// The secret file is larger than 4 KiB.
    #[error("cluster secret file {path} is larger than {max} bytes")]
    TooLong {
        /// The file.
        path: PathBuf,
        /// The limit.
        max: u64,
    },
    /// An explicit key id is empty, too long, or not `[A-Za-z0-9._-]`.
    #[error("invalid key id {0:?}: use 1 to 64 characters from A-Z a-z 0-9 . _ -")]
    InvalidKeyId(String),
    /// No source was configured (no variable, no file, not localhost mode).
    #[error("no cluster secret: set COLONY_CLUSTER_SECRET or --secret-file")]
    NotConfigured,
    /// The OS random source failed while creating a secret.
    #[error("cannot generate a cluster secret: {0}")]
    Random(getrandom::Error),
}

/// The cluster secret and its key id.
///
/// Cloning copies the bytes; hand out `Arc`s where that matters. `Debug` prints
/// `ClusterSecret(key_id=..., <redacted>)`.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret {
    bytes: Box<[u8]>,
    key_id: String,
}

impl ClusterSecret {
    /// Shortest secret accepted, in bytes.
    pub const MIN_LEN: usize = 16;

    /// The variable the binary reads the secret from; named here for messages and `--help`.
    pub const ENV_VAR: &'static str = "COLONY_CLUSTER_SECRET";

    /// A secret from raw bytes, with the derived key id. `origin` names the source in errors.
    ///
    /// # Errors
    ///
    /// [`SecretError::TooShort`] under [`ClusterSecret::MIN_LEN`] bytes.
    pub fn from_bytes(bytes: impl Into<Vec<u8>>, origin: &str) -> Result<Self, SecretError> {
        let bytes = bytes.into().into_boxed_slice();
        if bytes.len() < Self::MIN_LEN {
            return Err(SecretError::TooShort {
                origin: origin.to_owned(),
                len: bytes.len(),
                min: Self::MIN_LEN,
            });
        }
        let key_id = derive_key_id(&bytes);
        Ok(ClusterSecret { bytes, key_id })
    }

    /// The secret from the value of `COLONY_CLUSTER_SECRET`, trimmed. The library never reads
    /// the environment; the binary passes the value in.
    ///
    /// # Errors
    ///
    /// [`SecretError::TooShort`], also for a set but empty variable.
    pub fn from_env_value(value: &str) -> Result<Self, SecretError> {
        Self::from_bytes(value.trim().as_bytes(), Self::ENV_VAR)
    }

    /// The secret in the file at `path` (`--secret-file`), trimmed.
    ///
    /// # Errors
    ///
    /// [`SecretError::Read`] naming the path; [`SecretError::TooLong`] over 4 KiB;
    /// [`SecretError::TooShort`].
    pub fn from_file(path: &Path) -> Result<Self, SecretError> {
        let read_err = |source| SecretError::Read {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(read_err)?;
        let mut text = Vec::new();
        file.take(MAX_FILE_LEN + 1)
            .read_to_end(&mut text)
            .map_err(read_err)?;
        if text.len() as u64 > MAX_FILE_LEN {
            return Err(SecretError::TooLong {
                path: path.to_owned(),
                max: MAX_FILE_LEN,
            });
        }
        Self::from_bytes(text.trim_ascii(), &path.display().to_string())
    }

    /// Localhost mode: reads the key file at `path` (normally `output/cluster.key`), creating
    /// it first if it does not exist, with 32 random bytes hex-encoded and mode 0600.
    ///
    /// Creation cannot race: the key is written to a temporary file opened with `create_new`
    /// and mode 0600 (never readable by others, not even for an instant), synced, then
    /// hard-linked to `path`, which fails if `path` appeared meanwhile; the loser reads the
    /// winner's file. So a reader never sees a partial key, and two processes starting
    /// together agree on one. An existing file readable by group or others is used, with a
    /// warning.
    ///
    /// # Errors
    ///
    /// [`SecretError::Create`] or [`SecretError::Read`] naming the path and the cause, or
    /// any error of [`ClusterSecret::from_file`].
    pub fn load_or_create(path: &Path) -> Result<Self, SecretError> {
        match create_key_file(path) {
            Ok(()) => tracing::info!(path = %path.display(), "created cluster secret file"),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                warn_if_exposed(path, "cluster secret")
            }
            Err(source) => {
                return Err(SecretError::Create {
                    path: path.to_owned(),
                    source,
                })
            }
        }
        Self::from_file(path)
    }

    /// A new random secret (32 bytes, hex-encoded like a created key file), for tests and
    /// single-process tools.
    ///
    /// # Errors
    ///
    /// [`SecretError::Random`].
    pub fn generate() -> Result<Self, SecretError> {
        let text = random_key_text().map_err(SecretError::Random)?;
        Self::from_bytes(text.trim_ascii(), "generated")
    }

    /// Resolves the secret the way the binaries do: the variable if set, else `--secret-file`
    /// if given, else (localhost mode, `localhost_key` given) [`ClusterSecret::load_or_create`].
    /// A set variable wins even if it is empty, which is then an error rather than a silent
    /// fall-through.
    ///
    /// # Errors
    ///
    /// [`SecretError::NotConfigured`] when all three are `None`; otherwise the chosen
    /// source's error.
    pub fn resolve(
        env_value: Option<&str>,
        secret_file: Option<&Path>,
        localhost_key: Option<&Path>,
    ) -> Result<Self, SecretError> {
        match (env_value, secret_file, localhost_key) {
            (Some(value), _, _) => Self::from_env_value(value),
            (None, Some(path), _) => Self::from_file(path),
            (None, None, Some(path)) => Self::load_or_create(path),
            (None, None, None) => Err(SecretError::NotConfigured),
        }
    }

    /// Replaces the derived key id with an explicit one (e.g. during a key rotation).
    ///
    /// # Errors
    ///
    /// [`SecretError::InvalidKeyId`] unless 1 to 64 characters of `[A-Za-z0-9._-]`.
    pub fn with_key_id(mut self, key_id: impl Into<String>) -> Result<Self, SecretError> {
        let key_id = key_id.into();
        let valid = (1..=64).contains(&key_id.len())
            && key_id
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
        if !valid {
            return Err(SecretError::InvalidKeyId(key_id));
        }
        self.key_id = key_id;
        Ok(self)
    }

    /// The key id: public, names the secret in tokens so a verifier can pick its key. Unless
    /// set explicitly, the first 8 hex characters of SHA-256(`"colony-key-id"` ‖ secret).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The secret bytes, for keying a MAC. Never log or send them.
    pub fn expose_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterSecret(key_id={}, <redacted>)", self.key_id)
    }
}

fn derive_key_id(secret: &[u8]) -> String {
    let digest = Sha256::new()
        .chain_update(b"colony-key-id")
        .chain_update(secret)
        .finalize();
    hex::encode(&digest[..4])
}

/// 32 random bytes as hex, with a trailing newline.
fn random_key_text() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; CREATED_LEN];
    getrandom::fill(&mut bytes)?;
    let mut text = hex::encode(bytes);
    text.push('\n');
    Ok(text)
}

/// Creates `path` holding a fresh key, atomically; `AlreadyExists` if it is already there.
/// The operator token file is made the same way.
pub(crate) fn create_key_file(path: &Path) -> io::Result<()> {
    if path.try_exists()? {
        return Err(io::ErrorKind::AlreadyExists.into());
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir)?;
    let text = random_key_text().map_err(|e| io::Error::other(e.to_string()))?;
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).map_err(|e| io::Error::other(e.to_string()))?;
    let file_name = path
        .file_name()
        .map_or_else(|| "cluster.key".into(), |n| n.to_string_lossy());
    let tmp = dir.join(format!(".{file_name}.{}.tmp", hex::encode(suffix)));
    let result = write_new_private(&tmp, text.as_bytes()).and_then(|()| fs::hard_link(&tmp, path));
    // The temporary name has served its purpose whether or not the link succeeded.
    let _ = fs::remove_file(&tmp);
    result
}

/// Writes `bytes` to a new file at `path`, mode 0600 from the moment it exists, and syncs it.
fn write_new_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Warns if the file at `path`, holding `what` (`cluster secret`, `operator token`), is
/// readable by group or others. It is still used: refusing would only break a working node.
pub(crate) fn warn_if_exposed(path: &Path, what: &str) {
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{mode:o}"),
                "{what} file is readable by group or others; chmod 600 it"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_created_private_and_reread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("output").join("cluster.key");
        let first = ClusterSecret::load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), 65);
        assert!(text.trim_end().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(first.expose_bytes(), text.trim_end().as_bytes());
        let again = ClusterSecret::load_or_create(&path).unwrap();
        assert_eq!(again, first);
        assert_eq!(ClusterSecret::from_file(&path).unwrap(), first);
        // No temporary files left behind.
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["cluster.key"]);
    }

    #[test]
    fn concurrent_creators_agree() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.key");
        let secrets: Vec<ClusterSecret> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| ClusterSecret::load_or_create(&path).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(secrets.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn existing_file_is_used_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.key");
        fs::write(&path, "  an operator's chosen secret \n").unwrap();
        let s = ClusterSecret::load_or_create(&path).unwrap();
        assert_eq!(s.expose_bytes(), b"an operator's chosen secret");
    }

    #[test]
    fn debug_redacts() {
        let s = ClusterSecret::from_env_value("correct horse battery staple").unwrap();
        let shown = format!("{s:?}");
        assert_eq!(
            shown,
            format!("ClusterSecret(key_id={}, <redacted>)", s.key_id())
        );
        assert!(!shown.contains("horse"));
        let pretty = format!("{s:#?}");
        assert!(!pretty.contains("horse"));
    }

    #[test]
    fn short_secrets_are_refused() {
        let err = ClusterSecret::from_env_value("  fifteen bytes!! ").unwrap_err();
        assert!(matches!(
            err,
            SecretError::TooShort {
                len: 15,
                min: 16,
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "cluster secret from COLONY_CLUSTER_SECRET is 15 bytes; at least 16 are required"
        );
        assert!(ClusterSecret::from_env_value("").is_err());
        ClusterSecret::from_env_value("sixteen bytes!!!").unwrap();

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short.key");
        fs::write(&path, "short\n").unwrap();
        let msg = ClusterSecret::from_file(&path).unwrap_err().to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
    }

    #[test]
    fn file_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.key");
        let msg = ClusterSecret::from_file(&missing).unwrap_err().to_string();
        assert!(
            msg.contains("nope.key") && msg.contains("No such file"),
            "{msg}"
        );

        let big = dir.path().join("big.key");
        fs::write(&big, vec![b'a'; 5000]).unwrap();
        assert!(matches!(
            ClusterSecret::from_file(&big),
            Err(SecretError::TooLong { .. })
        ));

        // A regular file where the directory should be.
        let blocker = dir.path().join("blocker");
        fs::write(&blocker, "x").unwrap();
        let err = ClusterSecret::load_or_create(&blocker.join("cluster.key")).unwrap_err();
        assert!(matches!(err, SecretError::Create { .. }), "{err:?}");
        assert!(err.to_string().contains("blocker"));
    }

    #[test]
    fn key_ids_are_derived_or_explicit() {
        let a = ClusterSecret::from_env_value("0123456789abcdef0123").unwrap();
        let b = ClusterSecret::from_env_value("0123456789abcdef0124").unwrap();
        assert_eq!(a.key_id().len(), 8);
        assert_ne!(a.key_id(), b.key_id());
        let again = ClusterSecret::from_bytes(*b"0123456789abcdef0123", "x").unwrap();
        assert_eq!(again.key_id(), a.key_id());
        let named = a.clone().with_key_id("2026-05.primary").unwrap();
        assert_eq!(named.key_id(), "2026-05.primary");
        assert_eq!(named.expose_bytes(), a.expose_bytes());
        for bad in ["", "has space", "slash/", &"x".repeat(65)] {
            assert!(a.clone().with_key_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn resolve_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("given.key");
        fs::write(&file, "secret-from-the-file-0123").unwrap();
        let local = dir.path().join("output/cluster.key");
        let from_env =
            ClusterSecret::resolve(Some("secret-from-the-env-0123"), Some(&file), Some(&local));
        assert_eq!(
            from_env.unwrap().expose_bytes(),
            b"secret-from-the-env-0123"
        );
        assert!(matches!(
            ClusterSecret::resolve(Some(""), Some(&file), Some(&local)),
            Err(SecretError::TooShort { .. })
        ));
        let from_file = ClusterSecret::resolve(None, Some(&file), Some(&local)).unwrap();
        assert_eq!(from_file.expose_bytes(), b"secret-from-the-file-0123");
        assert!(!local.exists());
        let created = ClusterSecret::resolve(None, None, Some(&local)).unwrap();
        assert!(local.exists());
        assert_eq!(ClusterSecret::from_file(&local).unwrap(), created);
        assert!(matches!(
            ClusterSecret::resolve(None, None, None),
            Err(SecretError::NotConfigured)
        ));
    }

    #[test]
    fn generated_secrets_differ() {
        let a = ClusterSecret::generate().unwrap();
        let b = ClusterSecret::generate().unwrap();
        assert_eq!(a.expose_bytes().len(), 64);
        assert_ne!(a, b);
    }
}
