#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

//! Integration tests: one binary, one module per area.
//! - `pipeline`: the real daemon (in-process) against the embedded FHIR endpoint over HTTP,
//!   with paging, ties, late commits, unsorted servers and injected faults.
//! - `binary`: the `fhir-edge` executable: check-config, status, systemd notify protocol.
//! - `crash`: kill -9 ≥ 20 times during a 50k-event catch-up, compared with a clean run.
//! - `faults`: outage, flapping, slow and oversized answers from the server.
//! - `api`, `browser`: the HTTP API, and the dashboard in headless Chromium.
//! - `learn`: learning a site without a model of its own, and the switch to one.
//! - `real_server`: against a third-party FHIR server (sekmet-fhir) started by the test.

mod api;
mod auth;
mod binary;
mod browser;
mod common;
mod crash;
mod export;
mod faults;
mod learn;
mod local_faults;
mod pipeline;
mod real_server;
