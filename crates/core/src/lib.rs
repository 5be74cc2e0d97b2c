//! fhir-edge-core: everything fhir-edge knows about audit trails that does not need the
//! actor framework, an HTTP server or the operating system's service manager.
//!
//! Layout, in the order data flows through it:
//! - [`fhir`]: FHIR R4 AuditEvents and search Bundles read into [`fhir::AuditRecord`]
//!   (who, which patient, what interaction, from where, outcome), tolerant of the shapes
//!   servers write; parse errors are typed ([`fhir::ParseError`]).
//! - [`care`]: who treats whom and who is whom, from the server's Practitioner, Patient,
//!   Encounter, CareTeam… resources, kept as references, periods and keyed hashes.
//! - [`coverage`]: which kinds of evidence a site's audit trail carries, and so what the
//!   detector is blind to there.
//! - [`detector`]: per-user, per-patient and per-department context turned into a feature
//!   row ([`detector::features`]), the candle autoencoder and its calibrated score
//!   ([`detector::model`]), the plain-language explanation, and offline training
//!   ([`detector::train`]) on a history sifted of what alerted in it ([`detector::sift`]),
//!   with peer groups standing for the departments an audit trail does not name
//!   ([`detector::peers`]), whose baselines the daemon takes over at the end of learning
//!   ([`detector::handover`]).
//! - [`alerts`]: severity, status, allow-list rules, the stored alert.
//! - [`cases`]: alerts of one user's episode grouped into a case (the rule, title,
//!   narrative, lifecycle, the allow-list rules a decision implies).
//! - [`export`]: the messages an edge sends to a broker or a SIEM (schema, ids, syslog,
//!   CEF, OCSF).
//! - [`fleet`]: many sites' exported alerts and cases as one view (`fhir-edge fleet`).
//! - [`state`]: the SQLite database (cursor, seen keys, counters, detector snapshot,
//!   alerts) and the exactly-once rules that rest on its transactions.
//! - [`clock`], [`rng`]: time as a parameter; a seeded generator for reproducible training.
//!
//! The daemon (`fhir-edge`) and the lab (`fhir-edge-lab`) depend on this crate; it depends
//! on neither.

pub mod alerts;
pub mod care;
pub mod cases;
pub mod clock;
pub mod coverage;
pub mod detector;
pub mod export;
pub mod fhir;
pub mod fleet;
pub mod rng;
pub mod state;
