//! The operator token (DESIGN §13): the credential of whoever runs the cluster, sent as
//! `Authorization: Bearer <token>` over HTTP, in a `/ws` `auth` request, or as a data-plane
//! `TOKEN <token>` line.
//!
//! This module owns loading the token (from the `COLONY_OPERATOR_TOKEN` value the binary
//! passes in, from `--operator-token-file`, or in localhost mode from `output/operator.token`,
//! which `colony up` creates) and checking a presented token in constant time. It never reads
//! the environment, and never prints, logs or serializes the token: `Debug` shows only where
//! it came from. Who may do what with it is the servers' business (`controlplane::operator`,
//! the data plane's `TOKEN` command).
//!
//! # Format
//!
//! The text of the variable or file with surrounding whitespace trimmed: at least
//! [`OperatorToken::MIN_LEN`] visible ASCII characters and no spaces, so it fits in an HTTP
//! header and on a data-plane line as it is. A created file holds 32 random bytes as 64 hex
//! characters and a newline, mode 0600.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Longest token file read, in bytes; stops `--operator-token-file /dev/zero` eating memory.
const MAX_FILE_LEN: u64 = 4096;

/// Errors loading or creating the operator token. Messages name the source, never the token.
#[derive(Debug, thiserror::Error)]
pub enum OperatorTokenError {
    /// The token file could not be read.
    #[error("cannot read operator token file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The token file could not be created.
    #[error("cannot create operator token file {path}: {source}")]
    Create {
        /// The file (or its directory).
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The token is shorter than [`OperatorToken::MIN_LEN`] (after trimming).
    #[error("operator token from {origin} is {len} characters; at least {min} are required")]
    TooShort {
        /// Where it came from: `COLONY_OPERATOR_TOKEN` or a path.
        origin: String,
        /// Its length.
        len: usize,
        /// The minimum.
        min: usize,
    },
    /// The token holds a space, a control character or a non-ASCII byte.
    #[error(
        "operator token from {origin} must be visible ASCII characters without spaces \
         (it is sent in an HTTP header)"
    )]
    NotPrintable {
        /// Where it came from.
        origin: String,
    },
    /// The token file is larger than 4 KiB.
    #[error("operator token file {path} is larger than {max} bytes")]
    TooLong {
        /// The file.
        path: PathBuf,
        /// The limit.
        max: u64,
    },
    /// The OS random source failed while keying the comparison.
    #[error("cannot draw random bytes: {0}")]
    Random(getrandom::Error),
}

/// The operator token, and a constant-time check of presented ones.
///
/// A presented token is compared by MAC: both it and the real token are keyed with a random
/// per-process key, and the tags are compared with the `Mac` verify API. That takes the same
/// time wherever the first difference is, and whatever the presented token's length.
#[derive(Clone)]
pub struct OperatorToken {
    token: Box<str>,
    origin: String,
    key: [u8; 32],
    tag: Box<[u8]>,
}

type HmacSha256 = Hmac<Sha256>;

impl OperatorToken {
    /// Shortest token accepted, in characters.
    pub const MIN_LEN: usize = 16;

    /// The variable the binary reads the token from; named here for messages and `--help`.
    pub const ENV_VAR: &'static str = "COLONY_OPERATOR_TOKEN";

    /// The token file of localhost mode, under the registry's `output/` directory.
    pub const LOCALHOST_FILE: &'static str = "operator.token";

    /// A token from its text. `origin` names the source in errors and in `Debug`.
    ///
    /// # Errors
    /// [`OperatorTokenError::TooShort`], [`OperatorTokenError::NotPrintable`], or
    /// [`OperatorTokenError::Random`] if the comparison key cannot be drawn.
    pub fn new(text: &str, origin: &str) -> Result<Self, OperatorTokenError> {
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(OperatorTokenError::NotPrintable {
                origin: origin.to_owned(),
            });
        }
        if text.len() < Self::MIN_LEN {
            return Err(OperatorTokenError::TooShort {
                origin: origin.to_owned(),
                len: text.len(),
                min: Self::MIN_LEN,
            });
        }
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(OperatorTokenError::Random)?;
        let tag = keyed(&key, text.as_bytes())
            .finalize()
            .into_bytes()
            .to_vec();
        Ok(OperatorToken {
            token: text.into(),
            origin: origin.to_owned(),
            key,
            tag: tag.into_boxed_slice(),
        })
    }

    /// The token from the value of `COLONY_OPERATOR_TOKEN`, trimmed. A set but empty variable
    /// is an error rather than "no token".
    ///
    /// # Errors
    /// As [`OperatorToken::new`].
    pub fn from_env_value(value: &str) -> Result<Self, OperatorTokenError> {
        Self::new(value.trim(), Self::ENV_VAR)
    }

    /// The token in the file at `path`, trimmed.
    ///
    /// # Errors
    /// [`OperatorTokenError::Read`] naming the path; [`OperatorTokenError::TooLong`] over
    /// 4 KiB; or as [`OperatorToken::new`].
    pub fn from_file(path: &Path) -> Result<Self, OperatorTokenError> {
        let read_err = |source| OperatorTokenError::Read {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(read_err)?;
        let mut bytes = Vec::new();
        file.take(MAX_FILE_LEN + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        if bytes.len() as u64 > MAX_FILE_LEN {
            return Err(OperatorTokenError::TooLong {
                path: path.to_owned(),
                max: MAX_FILE_LEN,
            });
        }
        let origin = path.display().to_string();
        let text = std::str::from_utf8(bytes.trim_ascii())
            .map_err(|_| OperatorTokenError::NotPrintable {
                origin: origin.clone(),
            })?
            .to_owned();
        let token = Self::new(&text, &origin);
        crate::secret::warn_if_exposed(path, "operator token");
        token
    }

    /// Localhost mode under `colony up`: reads the file at `path` (normally
    /// `output/operator.token`), creating it first with a random token, mode 0600, if it does
    /// not exist. Creation cannot race or expose the token: it is the cluster key file's
    /// create-then-link (see [`crate::secret::ClusterSecret::load_or_create`]). Returns the
    /// token and whether this call created the file.
    ///
    /// # Errors
    /// [`OperatorTokenError::Create`] naming the path and the cause, or any error of
    /// [`OperatorToken::from_file`].
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), OperatorTokenError> {
        let created = match crate::secret::create_key_file(path) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(source) => {
                return Err(OperatorTokenError::Create {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        Ok((Self::from_file(path)?, created))
    }

    /// Resolves the token the way the binaries do: the variable if set, else
    /// `--operator-token-file` if given, else `localhost_file` if it exists. `None` when
    /// there is none: the node then has no operator token, and only trusted loopback clients
    /// act as the operator.
    ///
    /// # Errors
    /// The chosen source's error. A set but empty variable, or a named file that cannot be
    /// read, is an error, never a silent fall-through.
    pub fn resolve(
        env_value: Option<&str>,
        token_file: Option<&Path>,
        localhost_file: Option<&Path>,
    ) -> Result<Option<Self>, OperatorTokenError> {
        match (env_value, token_file, localhost_file) {
            (Some(value), _, _) => Self::from_env_value(value).map(Some),
            (None, Some(path), _) => Self::from_file(path).map(Some),
            (None, None, Some(path)) if path.exists() => Self::from_file(path).map(Some),
            _ => Ok(None),
        }
    }

    /// True if `presented` is the token. Constant time (see [`OperatorToken`]).
    pub fn verify(&self, presented: &[u8]) -> bool {
        keyed(&self.key, presented).verify_slice(&self.tag).is_ok()
    }

    /// Where the token came from: `COLONY_OPERATOR_TOKEN` or a path. Safe to log.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The token itself, for a client to send (`colony up` calling its own coordinator).
    /// Never log it or put it on a command line.
    pub fn expose(&self) -> &str {
        &self.token
    }
}

impl fmt::Debug for OperatorToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OperatorToken(from {}, <redacted>)", self.origin)
    }
}

fn keyed(key: &[u8; 32], bytes: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    #[allow(clippy::expect_used)]
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(bytes);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    const GOOD: &str = "an-operator-token-0123";

    #[test]
    fn only_the_token_itself_verifies() {
        let token = OperatorToken::new(GOOD, "test").unwrap();
        assert!(token.verify(GOOD.as_bytes()));
        for wrong in [
            "",
            "an-operator-token-012",
            "an-operator-token-01234",
            "An-operator-token-0123",
            "an-operator-token-0124",
        ] {
            assert!(!token.verify(wrong.as_bytes()), "{wrong:?}");
        }
        // Two loads of one token key their comparisons differently, and both still verify.
        let again = OperatorToken::new(GOOD, "test").unwrap();
        assert_ne!(token.key, again.key);
        assert!(again.verify(GOOD.as_bytes()));
    }

    #[test]
    fn short_spaced_or_unprintable_tokens_are_refused_naming_the_source() {
        let short = OperatorToken::from_env_value("  fifteen-chars!!  ").unwrap_err();
        assert!(matches!(
            short,
            OperatorTokenError::TooShort {
                len: 15,
                min: 16,
                ..
            }
        ));
        assert!(short.to_string().contains("COLONY_OPERATOR_TOKEN"));
        assert!(OperatorToken::from_env_value("").is_err());
        for bad in [
            "has a space in it ok",
            "tab\there-0123456789",
            "ünïcödé-0123456789",
        ] {
            assert!(
                matches!(
                    OperatorToken::new(bad, "x"),
                    Err(OperatorTokenError::NotPrintable { .. })
                ),
                "{bad:?}"
            );
        }
        OperatorToken::from_env_value(" sixteen-chars!!!\n").unwrap();
    }

    #[test]
    fn debug_and_errors_never_show_the_token() {
        let token = OperatorToken::new(GOOD, "/etc/colony/operator.token").unwrap();
        let shown = format!("{token:?} {token:#?}");
        assert!(!shown.contains(GOOD), "{shown}");
        assert!(shown.contains("/etc/colony/operator.token"));
        let err = OperatorToken::new("short-secret", "x").unwrap_err();
        assert!(!err.to_string().contains("short-secret"));
    }

    #[test]
    fn the_localhost_file_is_created_private_once_and_reread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir
            .path()
            .join("output")
            .join(OperatorToken::LOCALHOST_FILE);
        let (first, created) = OperatorToken::load_or_create(&path).unwrap();
        assert!(created);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim_end(), first.expose());
        assert_eq!(first.expose().len(), 64);
        let (again, created) = OperatorToken::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(again.expose(), first.expose());
    }

    #[test]
    fn resolve_prefers_the_variable_then_the_flag_then_an_existing_localhost_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("given.token");
        fs::write(&file, "token-from-the-file-0123\n").unwrap();
        let local = dir.path().join("output/operator.token");
        let env = OperatorToken::resolve(Some("token-from-the-env-0123"), Some(&file), None);
        assert_eq!(env.unwrap().unwrap().expose(), "token-from-the-env-0123");
        assert!(OperatorToken::resolve(Some(" "), Some(&file), None).is_err());
        let from_file = OperatorToken::resolve(None, Some(&file), Some(&local)).unwrap();
        assert_eq!(from_file.unwrap().expose(), "token-from-the-file-0123");
        // A localhost file is used only if it exists; resolving never creates one.
        assert!(OperatorToken::resolve(None, None, Some(&local))
            .unwrap()
            .is_none());
        assert!(!local.exists());
        fs::create_dir_all(local.parent().unwrap()).unwrap();
        fs::write(&local, "token-in-the-localhost-file").unwrap();
        let found = OperatorToken::resolve(None, None, Some(&local)).unwrap();
        assert_eq!(found.unwrap().expose(), "token-in-the-localhost-file");
        let missing = dir.path().join("nope.token");
        let err = OperatorToken::resolve(None, Some(&missing), None).unwrap_err();
        assert!(err.to_string().contains("nope.token"), "{err}");
        assert!(OperatorToken::resolve(None, None, None).unwrap().is_none());
    }
}
