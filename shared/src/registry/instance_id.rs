//! Backend instance ids: the default one and the rules every id must follow.
//!
//! Ids become file names (`backends/{id}.json`) and SSM parameter names
//! (`/colony/backends/{id}`), so they are restricted to `[A-Za-z0-9_.-]{1,128}`, and `.` and
//! `..` are refused because they name directories. Note that on a case-insensitive file system
//! `Backend_1` and `backend_1` would share a file; the default ids are all lower case.

use super::RegistryError;

/// The longest instance id accepted.
pub const MAX_INSTANCE_ID_LEN: usize = 128;

/// The instance id a backend uses unless told otherwise: `backend_{internal_port}`.
pub fn default_backend_id(internal_port: u16) -> String {
    format!("backend_{internal_port}")
}

/// Checks that `id` may name a backend: 1 to [`MAX_INSTANCE_ID_LEN`] characters from
/// `A-Z a-z 0-9 _ . -`, and neither `.` nor `..`.
///
/// # Errors
/// [`RegistryError::InvalidInstanceId`] saying which rule `id` breaks.
pub fn validate_instance_id(id: &str) -> Result<(), RegistryError> {
    let reason = if id.is_empty() {
        Some("it is empty")
    } else if id.len() > MAX_INSTANCE_ID_LEN {
        Some("it is longer than 128 characters")
    } else if id == "." || id == ".." {
        Some("\".\" and \"..\" name directories")
    } else if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        Some("only A-Z, a-z, 0-9, '_', '.' and '-' are allowed")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(RegistryError::InvalidInstanceId {
            id: id.to_owned(),
            reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn default_id_uses_the_internal_port() {
        assert_eq!(default_backend_id(9000), "backend_9000");
        assert_eq!(default_backend_id(0), "backend_0");
        validate_instance_id(&default_backend_id(u16::MAX)).unwrap();
    }

    #[test]
    fn good_ids_pass() {
        for id in [
            "a",
            "backend_8082",
            "A.b-c_9",
            "...",
            ".hidden",
            "x".repeat(128).as_str(),
        ] {
            validate_instance_id(id).unwrap();
        }
    }

    #[test]
    fn bad_ids_are_refused_with_the_reason() {
        let long = "x".repeat(129);
        for (id, says) in [
            ("", "empty"),
            (".", "directories"),
            ("..", "directories"),
            (long.as_str(), "longer than 128"),
            ("a/b", "only A-Z"),
            ("../etc", "only A-Z"),
            ("a\\b", "only A-Z"),
            ("a b", "only A-Z"),
            ("a\0b", "only A-Z"),
            ("é", "only A-Z"),
            ("a:b", "only A-Z"),
        ] {
            let err = validate_instance_id(id).unwrap_err();
            assert!(
                matches!(err, RegistryError::InvalidInstanceId { .. }),
                "{id:?}"
            );
            assert!(err.to_string().contains(says), "{id:?}: {err}");
        }
    }

    proptest! {
        #[test]
        fn valid_ids_are_exactly_the_safe_file_names(
            id in prop_oneof!["[A-Za-z0-9_./ -]{0,130}", "[.]{1,3}", "\\PC{0,12}"]
        ) {
            let ok = validate_instance_id(&id).is_ok();
            let expected = (1..=128).contains(&id.len())
                && id != "." && id != ".."
                && id.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            prop_assert_eq!(ok, expected);
        }
    }
}
