//! fhir-edge, the daemon: follows a FHIR R4 server's AuditEvent stream, scores every event
//! with the core's detector and raises explainable alerts. This crate holds what runs under
//! systemd: the actors, the HTTP client, the API and dashboard, configuration, the command
//! line. What the detector *knows* lives in `fhir-edge-core`; the simulated hospital and the
//! fault-injecting server live in `fhir-edge-lab` (linked only with the `lab` feature).
//!
//! Layout:
//! - `pipeline`: the requests between actors and the types both ends name.
//! - `poller`, `detector`, `alerts`, `state`: one folder per actor, plain decisions
//!   in `mod.rs` (unit-tested without actix), the actor in `actor.rs`.
//! - `context`: following the server's care context (Practitioner, Encounter, CareTeam…)
//!   for the detector (`ContextActor`).
//! - `export`: alerts, cases and decisions from the state's outbox to NATS JetStream and
//!   to a SIEM over syslog (`ExportActor`), each acknowledged item recorded.
//! - `fleet`: `fhir-edge fleet`, one read-only view of many sites from their stream.
//! - `learn`: learning a site that has no model of its own yet, and training one when
//!   learning is over (`SiteTrainerActor`).
//! - [`health`]: per-actor progress for the watchdog, the counters behind `/metrics`.
//! - [`client`]: the FHIR HTTP client (auth, paging links, error classification).
//! - `api`: JSON API, dashboard, `/metrics`, the push endpoint.
//! - [`app`]: wiring, start-up and shutdown; [`systemd`]: READY, WATCHDOG, STOPPING.
//! - [`config`]: the typed configuration; `cli`: commands; `training`: reading a
//!   server's history and training a site's model (`train`, the demo, the end of learning);
//!   `telemetry`: logging.
//! - `lab` (feature `lab`): `demo`, `bench`, `soak`, `simulate`, `bench-server`.
//!
//! Dependencies run one way: `fhir-edge` → `fhir-edge-lab` → `fhir-edge-core`.

// Public: what `main.rs` and the integration tests use. Everything else is crate-private,
// so the compiler reports what nothing calls.
pub(crate) mod alerts;
pub(crate) mod api;
pub mod app;
pub(crate) mod cli;
pub mod client;
pub mod config;
pub(crate) mod context;
pub(crate) mod detector;
pub(crate) mod export;
pub(crate) mod fleet;
pub mod health;
#[cfg(feature = "lab")]
pub(crate) mod lab;
pub(crate) mod learn;
pub(crate) mod pipeline;
pub(crate) mod poller;
pub(crate) mod state;
pub(crate) mod sync;
pub mod systemd;
pub(crate) mod telemetry;
pub(crate) mod training;

pub use cli::{execute, Cli};
