//! fhir-edge: follows a FHIR R4 server's AuditEvent stream, scores every event with an
//! autoencoder trained on the site's own normal activity, and raises explainable alerts
//! about likely inappropriate record access.
//!
//! Actors (`app.rs` wires them): `PollerActor` → `DetectorActor` → `AlertSinkActor`, with
//! `StateActor` owning the SQLite database. Each concern keeps its plain logic in its
//! module and its actor in `actor.rs`.

pub mod alerts;
pub mod api;
pub mod app;
pub mod bench;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod detector;
pub mod fhir;
pub mod health;
pub mod poller;
pub mod rng;
pub mod state;
pub mod systemd;
pub mod telemetry;
