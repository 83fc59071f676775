//! Helpers for tests and benches, behind the `test-support` feature; not part of the public
//! API. The crate's own tests, the whole-cluster tests and the benches import them by name
//! (the root package's dev-dependencies turn the feature on), so no test includes another
//! crate's files by path.
//!
//! - [`moto`]: moto's SSM-compatible server on loopback, for the SSM registry's tests.
//! - [`logs`]: the warnings a test process logged, as text.
//! - [`proc_cpu`]: a process's CPU time and RSS from `/proc`, for benches and tests that
//!   report server cost.
//! - [`pki`]: a throwaway CA and node certificates for 127.0.0.1, for TLS tests.
//! - [`free_port`]: a loopback port to start a server on.
//!
//! The registry contract suite is [`crate::registry::contract`], behind the same feature.

use std::net::{Ipv4Addr, TcpListener};

pub mod logs;
pub mod moto;
pub mod pki;
pub mod proc_cpu;

/// A loopback port nothing listens on right now (another process may take it before the
/// caller binds it; callers that cannot retry should bind port 0 instead).
///
/// # Panics
/// The machine cannot bind a loopback port at all.
pub fn free_port() -> u16 {
    match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()) {
        Ok(addr) => addr.port(),
        Err(e) => panic!("cannot bind a loopback port: {e}"),
    }
}
