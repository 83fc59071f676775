//! Names of packages: the upload's file name, the sanitized service name, the version rule
//! and the install directory they make (DESIGN §16). Pure functions; nothing touches disk.

use crate::deploy::error::DeployError;

/// Longest accepted package name (before sanitizing) and version: a directory name must fit
/// in 255 bytes with room for the `-` and temp-dir prefixes.
pub const MAX_NAME_LEN: usize = 100;

/// The suffix every package file name ends with.
pub const SUFFIX: &str = ".tar.gz";

/// An upload's file name, checked to look like `name-version.tar.gz`; safe to join to a
/// directory (no separators, no leading dot, no `..`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageFile {
    file: String,
}

impl PackageFile {
    /// Checks `file`.
    ///
    /// # Errors
    /// [`DeployError::BadFileName`] unless `file` is `[A-Za-z0-9._+-]+` ending in `.tar.gz`,
    /// starts with an ASCII letter or digit, holds a `-` before the suffix and no `..`.
    pub fn parse(file: &str) -> Result<Self, DeployError> {
        let bad = || DeployError::BadFileName(file.to_owned());
        let stem = file.strip_suffix(SUFFIX).ok_or_else(bad)?;
        let first_ok = stem
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
        let chars_ok = stem
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '_' | '-'));
        if !first_ok
            || !chars_ok
            || !stem.contains('-')
            || stem.contains("..")
            || stem.len() > 2 * MAX_NAME_LEN + 1
        {
            return Err(bad());
        }
        Ok(PackageFile {
            file: file.to_owned(),
        })
    }

    /// The whole file name.
    pub fn as_str(&self) -> &str {
        &self.file
    }

    /// `name-version`, without the suffix.
    pub fn stem(&self) -> &str {
        self.file.strip_suffix(SUFFIX).unwrap_or(&self.file)
    }
}

impl std::fmt::Display for PackageFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.file)
    }
}

/// The seed's sanitizing: every character outside `[a-zA-Z0-9_-]` becomes `_`.
///
/// # Errors
/// [`DeployError::EmptyName`] for an empty name (the only one that sanitizes to empty, as
/// each character maps to one), [`DeployError::NameTooLong`] past [`MAX_NAME_LEN`].
pub fn sanitize_name(name: &str) -> Result<String, DeployError> {
    if name.is_empty() {
        return Err(DeployError::EmptyName);
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(DeployError::NameTooLong(MAX_NAME_LEN));
    }
    Ok(name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect())
}

/// Checks a version against `^[0-9A-Za-z][0-9A-Za-z.+_-]*$` without `..`. Refused, never
/// rewritten: a rewritten version could collide with another one's directory.
///
/// # Errors
/// [`DeployError::BadVersion`].
pub fn validate_version(version: &str) -> Result<(), DeployError> {
    let first_ok = version
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = version
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '_' | '-'));
    if first_ok && rest_ok && !version.contains("..") && version.len() <= MAX_NAME_LEN {
        Ok(())
    } else {
        Err(DeployError::BadVersion(version.to_owned()))
    }
}

/// The install directory's name, `{sanitized name}-{version}`.
///
/// # Errors
/// As [`sanitize_name`] and [`validate_version`].
pub fn install_dir_name(name: &str, version: &str) -> Result<String, DeployError> {
    let name = sanitize_name(name)?;
    validate_version(version)?;
    Ok(format!("{name}-{version}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_that_look_like_packages_pass() {
        for ok in ["api-server-1.2.3.tar.gz", "a-1.tar.gz", "x_y-2.0+b1.tar.gz"] {
            let file = PackageFile::parse(ok).unwrap();
            assert_eq!(file.as_str(), ok);
        }
        assert_eq!(
            PackageFile::parse("api-1.0.tar.gz").unwrap().stem(),
            "api-1.0"
        );
    }

    #[test]
    fn file_names_that_could_escape_or_hide_are_refused() {
        for bad in [
            "",
            ".tar.gz",
            "api.tar.gz",
            "api-1.0.zip",
            ".hidden-1.tar.gz",
            "-a-1.tar.gz",
            "a-..-1.tar.gz",
            "a/b-1.tar.gz",
            "..%2F-1.tar.gz",
            "a b-1.tar.gz",
            "a-1.tar.gz\0",
        ] {
            assert!(
                matches!(PackageFile::parse(bad), Err(DeployError::BadFileName(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn names_are_sanitized_as_the_seed_says() {
        assert_eq!(sanitize_name("api-server").unwrap(), "api-server");
        assert_eq!(sanitize_name("my app/../x").unwrap(), "my_app____x");
        assert_eq!(sanitize_name("héllo").unwrap(), "h_llo");
        assert!(matches!(sanitize_name(""), Err(DeployError::EmptyName)));
        assert!(matches!(
            sanitize_name(&"a".repeat(MAX_NAME_LEN + 1)),
            Err(DeployError::NameTooLong(_))
        ));
    }

    #[test]
    fn versions_are_refused_not_rewritten() {
        for ok in ["1", "1.2.3", "2.0.0-rc.1", "1.0+build_7", "v3"] {
            validate_version(ok).unwrap();
        }
        for bad in [
            "", "../1", ".hidden", "-1", "1..2", "1/2", "1 2", "1\n", "_1", "+1",
        ] {
            assert!(
                matches!(validate_version(bad), Err(DeployError::BadVersion(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn install_dirs_join_sanitized_name_and_version() {
        assert_eq!(
            install_dir_name("api server", "1.2.3").unwrap(),
            "api_server-1.2.3"
        );
        assert!(install_dir_name("api", "../1").is_err());
        assert!(install_dir_name("", "1").is_err());
    }
}
