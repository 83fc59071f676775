//! Deployed packages (DESIGN §16): what a package is ([`package`], [`manifest`]), how its
//! archive is checked and unpacked ([`archive`]) and installed ([`install`]).
//!
//! Nothing here speaks HTTP or `/ws`: the routers call in and turn [`DeployError`] into
//! their own answers.

pub mod archive;
pub mod error;
pub mod install;
pub mod manifest;
pub mod package;

#[cfg(test)]
mod tests;

pub use error::DeployError;
