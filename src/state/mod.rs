//! The state store in the daemon: `actor.rs` holds `StateActor`, the one writer of the
//! core's [`fhir_edge_core::state::Store`], and `SeenFilterActor`, which reads seen keys on
//! a connection of its own.

pub mod actor;
