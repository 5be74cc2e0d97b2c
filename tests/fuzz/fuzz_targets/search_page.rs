//! A search page body as a server might send it: any bytes. Parsing must never panic, and
//! whatever it accepts must be self-consistent.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(page) = fhir_edge_core::fhir::parse_page_owned(data.to_vec(), "AuditEvent") {
        for f in &page.events {
            // Every accepted event has a key and its raw JSON is valid JSON.
            assert!(!f.record.key.is_empty());
            let _: &serde_json::value::RawValue =
                serde_json::from_str(f.raw.get()).expect("raw JSON of an accepted entry");
        }
    }
    let _ = fhir_edge_core::fhir::operation_outcome_text(&String::from_utf8_lossy(data));
});
