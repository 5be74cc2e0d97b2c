//! A `/fhir/notify` body: an AuditEvent, a Bundle, a subscription notification, or junk.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(page) = fhir_edge_core::fhir::parse_push(data) {
        for f in &page.events {
            assert!(!f.record.key.is_empty());
        }
    }
});
