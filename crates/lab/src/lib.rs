//! What only fhir-edge's tests, benchmarks and demo need; the installed daemon does not
//! link it (the root crate's `lab` feature, off in the Debian package).
//!
//! - [`simulate`]: a simulated hospital (staff, departments, shifts, patients, consults,
//!   relatives) writing AuditEvents as NDJSON, with labelled injected incidents.
//! - [`server`]: an in-process FHIR endpoint holding AuditEvents, with `_lastUpdated`
//!   paging and injectable faults (outages, 429, 5xx, HTML error pages, truncated bodies,
//!   late commits, expired links).
//! - [`traffic`]: benchmark traffic (many distinct events from a simulated fortnight) and
//!   the `bench-server` that serves it.
//! - [`write_default_model`]: the shipped model (`models/default`), embedded so the demo,
//!   benchmarks and tests run from any checkout.
//!
//! Depends on `fhir-edge-core` only; the daemon crate depends on this one, never the other
//! way.

// Harness code: a failed unwrap is a failed test, benchmark or demo.
#![allow(clippy::unwrap_used)]

pub mod server;
pub mod shape;
pub mod simulate;
pub mod traffic;

use std::path::Path;

use fhir_edge_core::detector::model::{META_FILE, WEIGHTS_FILE};

/// The shipped default model's metadata (`models/default/model.json`).
pub const DEFAULT_MODEL_JSON: &str = include_str!("../../../models/default/model.json");
/// The shipped default model's weights (`models/default/model.safetensors`).
pub const DEFAULT_MODEL_WEIGHTS: &[u8] =
    include_bytes!("../../../models/default/model.safetensors");

/// Write the embedded default model into `dir` (created if missing).
pub fn write_default_model(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(META_FILE), DEFAULT_MODEL_JSON)?;
    std::fs::write(dir.join(WEIGHTS_FILE), DEFAULT_MODEL_WEIGHTS)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_shipped_default_model_loads_and_carries_no_sites_baselines() {
        let dir = tempfile::tempdir().unwrap();
        super::write_default_model(dir.path()).unwrap();
        fhir_edge_core::detector::model::Model::load(dir.path()).unwrap();
        let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default");
        assert!(
            !fhir_edge_core::detector::baselines::present(&shipped),
            "models/default must not carry a site's baselines: delete baselines.json after retraining it"
        );
    }
}
