//! Colony's shared domain: node addresses, the cluster registry, topology, init tokens, the
//! cluster secret, signed node calls and the operator token, the simulation kernel, and
//! process plumbing (tracing, rate-limited log lines, shutdown signals, dying with the parent),
//! and TLS material and handshakes for the planes to use.
//!
//! Nothing here opens a listener; the servers live in `dataplane` and `controlplane`.
//!
//! The `test-support` feature adds `test_support` and `registry::contract`: helpers and the
//! registry contract suite for tests and benches, not part of the public API.

pub mod address;
pub mod hello;
pub mod lifeline;
pub mod loadgen;
pub mod log_limit;
pub mod operator;
pub mod own_thread;
pub mod registry;
pub mod secret;
pub mod signal;
pub mod signing;
pub mod sim;
pub mod telemetry;
#[cfg(feature = "test-support")]
pub mod test_support;
pub mod tls;
pub mod token;
pub mod topology;

pub use address::NodeAddress;
