//! What parsing accepts goes through feature extraction and the model, and the context
//! survives a snapshot round trip: no panic, finite features, finite scores.
#![no_main]
use std::sync::OnceLock;

use fhir_edge_core::detector::{model::Model, Detector};
use fhir_edge_core::state::KeyStatus;
use libfuzzer_sys::fuzz_target;

fn model_dir() -> &'static std::path::Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("fhir-edge-fuzz-model-{}", std::process::id()));
        fhir_edge_lab::write_default_model(&d).unwrap();
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(page) = fhir_edge_core::fhir::parse_push(data) else {
        return;
    };
    let tz: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
    let mut ctx = fhir_edge_core::detector::features::Context::new(tz);
    for f in &page.events {
        let (x, _) = ctx.observe(&f.record);
        assert!(x.iter().all(|v| v.is_finite()), "non-finite feature {x:?}");
    }
    let bytes = ctx.to_bytes();
    let ctx = fhir_edge_core::detector::features::Context::from_bytes(&bytes, tz).expect("round trip");
    let model = Model::load(model_dir()).unwrap();
    let mut d = Detector::new(model, ctx);
    let batch = page
        .events
        .into_iter()
        .map(|f| (f, KeyStatus::New))
        .collect();
    for s in d.process(batch).unwrap() {
        assert!(s.score.is_finite(), "non-finite score");
    }
});
