//! Colony's shared domain: node addresses, the cluster registry, topology, init tokens, the
//! cluster secret and signed node calls, the simulation kernel, and process plumbing (tracing,
//! shutdown signals).
//!
//! Nothing here opens a listener; the servers live in `dataplane` and `controlplane`.

pub mod address;
pub mod hello;
pub mod own_thread;
pub mod registry;
pub mod secret;
pub mod signal;
pub mod signing;
pub mod sim;
pub mod telemetry;
pub mod token;
pub mod topology;

pub use address::NodeAddress;
