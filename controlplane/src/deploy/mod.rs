//! Deployed packages (DESIGN §16): what a package is ([`package`], [`manifest`]), how its
//! archive is checked and unpacked ([`archive`]) and installed ([`install`]), the services
//! they become ([`service`]) and how those run ([`lifecycle`]); [`deployer`] strings the
//! steps together. On the coordinator, [`forward`] sends packages and service actions to
//! backends, and [`remote`] keeps its view of the services deployed there.
//!
//! Nothing here speaks HTTP or `/ws`: the routers call in and turn [`DeployError`] into
//! their own answers.

pub mod archive;
pub mod deployer;
pub mod error;
pub mod forward;
pub mod install;
pub mod lifecycle;
pub mod manifest;
pub mod package;
pub mod remote;
pub mod service;

#[cfg(test)]
mod run_tests;
#[cfg(test)]
mod tests;

pub use error::DeployError;
