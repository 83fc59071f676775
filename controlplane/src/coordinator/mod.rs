//! The coordinator's domain, with no routes in it: node health from heartbeats ([`health`]),
//! the colony's lifecycle ([`colony`]), its runs ([`run`]) and their supervision when
//! backends are lost ([`recovery`]), the world picture ([`image`]), the backends `colony up`
//! manages ([`processes`]), and the audit of the init tokens it issues ([`tokens`]). The routers in
//! [`crate::control`] and [`crate::management`] serve it, and turn its typed errors
//! ([`error`]) into HTTP answers.

pub mod colony;
pub mod error;
pub mod health;
pub mod image;
pub mod processes;
pub mod recovery;
pub mod run;
pub mod tokens;
