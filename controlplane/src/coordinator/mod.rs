//! Coordinator-only state: node health from heartbeats (and, later, the colony).

pub mod colony;
pub mod health;
pub mod image;
pub mod processes;
pub mod run;
