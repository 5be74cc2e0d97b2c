//! Following the care context: the FHIR server's Practitioner, PractitionerRole, Patient,
//! RelatedPerson, Encounter, EpisodeOfCare, CareTeam and Appointment resources, each type
//! from its own `_lastUpdated` cursor, on a schedule of its own (`[context]
//! interval_secs`), beside the AuditEvent stream and never in its way.
//!
//! Each page's facts (references, periods, keyed hashes; `fhir_edge_core::care`) are stored
//! in one transaction; a type's cursor moves once its paging is complete, so a crash or an
//! outage re-reads from the last complete round (facts are replaced by resource id: reading
//! twice changes nothing). After a round that read anything the index is rebuilt off the
//! actor thread and handed to the detector (`UseCare`), which uses it from its next page.
//!
//! A type the server refuses (403, 404, 405, 410, 501, or a 400 saying it is unsupported)
//! is logged once, marked refused in the state database (`fhir-edge status`) and not
//! asked for again until the next start. Other errors (timeouts, 5xx, 429) are counted,
//! logged, and the type is retried at the next round. The daemon works without any of it.

pub(crate) mod actor;

use crate::client::FetchError;

/// Whether a failed search means the server does not offer the type (to this client).
pub(crate) fn refuses(e: &FetchError) -> Option<String> {
    match e {
        FetchError::Status { status, detail }
            if matches!(status, 400 | 403 | 404 | 405 | 410 | 422 | 501) =>
        {
            Some(format!(
                "HTTP {status}{}",
                if detail.is_empty() {
                    String::new()
                } else {
                    format!(": {detail}")
                }
            ))
        }
        _ => None,
    }
}

/// Pages read of one type in one round at most: a first read of a large server goes on at
/// the next round, from where this one stopped.
pub(crate) const MAX_PAGES_PER_ROUND: usize = 2_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_told_apart_from_outages() {
        let status = |s: u16| FetchError::Status {
            status: s,
            detail: String::new(),
        };
        assert!(refuses(&status(403)).is_some());
        assert!(refuses(&status(404)).unwrap().contains("404"));
        assert!(refuses(&status(500)).is_none());
        assert!(refuses(&FetchError::RateLimited { retry_after: None }).is_none());
    }
}
