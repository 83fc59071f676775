//! Helpers for tests and benches, behind the `test-support` feature; not part of the public
//! API. The crate's own tests, the whole-cluster tests and the benches import them by name
//! (the root package's dev-dependencies turn the feature on), so no test includes another
//! crate's files by path.
//!
//! - [`moto`]: moto's SSM-compatible server on loopback, for the SSM registry's tests.
//! - [`proc_cpu`]: a process's CPU time from `/proc`, for benches that report server cost.
//!
//! The registry contract suite is [`crate::registry::contract`], behind the same feature.

pub mod moto;
pub mod proc_cpu;
