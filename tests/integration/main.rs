//! Integration tests: one binary, one module per area.
//! - `pipeline`: the real daemon (in-process) against the embedded FHIR endpoint over HTTP,
//!   with paging, ties, late commits, unsorted servers and injected faults.
//! - `binary`: the `fhir-edge` executable: check-config, status, systemd notify protocol,
//!   kill -9 crash consistency.
//! - `real_server`: against a third-party FHIR server (sekmet-fhir) started by the test.

mod api;
mod binary;
mod browser;
mod common;
mod pipeline;
mod real_server;
