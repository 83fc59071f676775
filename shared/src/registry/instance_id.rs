//! Backend instance ids: the default one and the rules every id must follow.
//!
//! The default id names the port alone on loopback, where every node shares one address, and
//! the advertised address too otherwise, so two hosts running backends on the same ports do
//! not take each other's registry entry (DESIGN §2).
//!
//! Ids become file names (`backends/{id}.json`) and SSM parameter names
//! (`/colony/backends/{id}`), so they are restricted to `[A-Za-z0-9_.-]{1,128}`, and `.` and
//! `..` are refused because they name directories. Note that on a case-insensitive file system
//! `Backend_1` and `backend_1` would share a file; the default ids are all lower case.

use std::net::IpAddr;

use super::RegistryError;

/// The longest instance id accepted.
pub const MAX_INSTANCE_ID_LEN: usize = 128;

/// The instance id a backend uses unless told otherwise: `backend_{internal_port}` when
/// `advertise_ip` is loopback (so localhost clusters keep their short ids), otherwise
/// `backend_{advertise_ip}_{internal_port}` with `.` and `:` written as `-`
/// (`backend_198-18-0-11_9000`, `backend_fd00--1_9000`): always a valid id.
pub fn default_backend_id(advertise_ip: IpAddr, internal_port: u16) -> String {
    if advertise_ip.is_loopback() {
        return format!("backend_{internal_port}");
    }
    let host: String = advertise_ip
        .to_string()
        .chars()
        .map(|c| if c == '.' || c == ':' { '-' } else { c })
        .collect();
    format!("backend_{host}_{internal_port}")
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

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn default_id_on_loopback_is_the_internal_port_alone() {
        assert_eq!(default_backend_id(ip("127.0.0.1"), 9000), "backend_9000");
        assert_eq!(default_backend_id(ip("127.0.0.2"), 0), "backend_0");
        assert_eq!(default_backend_id(ip("::1"), 9010), "backend_9010");
        validate_instance_id(&default_backend_id(ip("127.0.0.1"), u16::MAX)).unwrap();
    }

    #[test]
    fn default_id_elsewhere_names_the_advertised_address() {
        assert_eq!(
            default_backend_id(ip("198.18.0.11"), 9000),
            "backend_198-18-0-11_9000"
        );
        assert_eq!(
            default_backend_id(ip("fd00::1"), 9000),
            "backend_fd00--1_9000"
        );
        // Two hosts, the same ports: two ids.
        assert_ne!(
            default_backend_id(ip("198.18.77.11"), 9000),
            default_backend_id(ip("198.18.77.12"), 9000)
        );
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
        fn every_default_id_is_valid_and_names_its_port(
            v4 in any::<[u8; 4]>(), v6 in any::<[u16; 8]>(), port in any::<u16>()
        ) {
            for address in [IpAddr::from(v4), IpAddr::from(v6)] {
                let id = default_backend_id(address, port);
                prop_assert!(validate_instance_id(&id).is_ok(), "{id}");
                let suffix = format!("_{port}");
                prop_assert!(id.ends_with(&suffix), "{id}");
            }
        }

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
