//! The detector in the daemon: `actor.rs` holds `DetectorActor`, which de-duplicates pages
//! against the state store and the pages still in flight, and runs the core's
//! [`fhir_edge_core::detector::Detector`] off the actor thread.

pub mod actor;
