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

use std::collections::HashMap;

use crate::client::FetchError;
use crate::health::{ActorId, Counter, Health};
use crate::telemetry::InternalEvent;

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

/// What the context actor starts from (none when `[context] enabled = false`): the
/// install's key, the facts the state database keeps, each followed type's cursor.
pub(crate) struct CareStart {
    pub key: fhir_edge_core::care::CareKey,
    pub facts: fhir_edge_core::care::FactSet,
    pub cursors: HashMap<&'static str, Option<i64>>,
}

/// One followed type's search, page by page from `since`, each `next` link checked to stay
/// on the server and each page read into facts off the async thread: what the context
/// actor reads every round and `train --from-server` reads once.
pub(crate) struct TypePages<'a> {
    client: &'a crate::client::FhirClient,
    key: &'a fhir_edge_core::care::CareKey,
    ty: &'static str,
    next: Option<url::Url>,
    pages: usize,
}

/// Why reading a type's pages stopped short.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PageError {
    /// The server does not offer the type (its first page was refused: see [`refuses`]).
    #[error("the server refuses it ({0})")]
    Refused(String),
    #[error(transparent)]
    Fetch(#[from] FetchError),
}

impl<'a> TypePages<'a> {
    pub(crate) fn new(
        client: &'a crate::client::FhirClient,
        key: &'a fhir_edge_core::care::CareKey,
        ty: &'static str,
        since: chrono::DateTime<chrono::Utc>,
        page_size: u32,
    ) -> Self {
        let first = crate::client::search_url(client.base(), ty, since, page_size);
        TypePages {
            client,
            key,
            ty,
            next: Some(first),
            pages: 0,
        }
    }

    /// Pages read so far.
    pub(crate) fn pages(&self) -> usize {
        self.pages
    }

    /// Whether the server linked a page not read yet.
    pub(crate) fn has_more(&self) -> bool {
        self.next.is_some()
    }

    /// The next page, `None` once the paging is read to its end.
    pub(crate) async fn next(
        &mut self,
    ) -> Result<Option<fhir_edge_core::care::resources::SearchPage>, PageError> {
        let Some(url) = self.next.take() else {
            return Ok(None);
        };
        let body = match self.client.fetch_body(&url, self.pages > 0).await {
            Ok(b) => b,
            Err(e) => {
                return Err(match refuses(&e) {
                    Some(why) if self.pages == 0 => PageError::Refused(why),
                    _ => PageError::Fetch(e),
                })
            }
        };
        let (key, ty) = (self.key.clone(), self.ty);
        let page = tokio::task::spawn_blocking(move || {
            fhir_edge_core::care::resources::search_page(&body, ty, &key)
        })
        .await;
        let Ok(Some(page)) = page else {
            return Err(PageError::Fetch(FetchError::Body(format!(
                "the {ty} search answered something other than a Bundle"
            ))));
        };
        self.pages += 1;
        if let Some(next) = &page.next {
            self.next = Some(crate::client::check_next(self.client.base(), next)?);
        }
        Ok(Some(page))
    }
}

/// Pages read of one type in one round at most: a first read of a large server goes on at
/// the next round, from where this one stopped.
pub(crate) const MAX_PAGES_PER_ROUND: usize = 2_000;

/// One type read to the end of its paging this round.
pub(crate) struct ContextTypeRead {
    pub resource_type: &'static str,
    pub pages: usize,
    pub resources: usize,
    /// New or changed since the last read (the rest were the overlap re-read).
    pub changed: usize,
    /// Stopped at `MAX_PAGES_PER_ROUND` pages; the rest is read next round.
    pub capped: bool,
}

impl InternalEvent for ContextTypeRead {
    fn emit(self, health: &Health) {
        health
            .counters
            .add(Counter::ContextResourcesRead, self.resources as u64);
        if self.capped {
            tracing::info!(
                actor = "context",
                resource_type = self.resource_type,
                pages = self.pages,
                "read {} pages of {} this round, the most a round reads; the rest follows next round",
                self.pages,
                self.resource_type
            );
        } else if self.resources > 0 {
            tracing::debug!(
                actor = "context",
                resource_type = self.resource_type,
                pages = self.pages,
                resources = self.resources,
                changed = self.changed,
                "context read"
            );
        }
    }
}

/// The server refuses a type: said once (it is not asked again until the next start).
pub(crate) struct ContextTypeRefused<'a> {
    pub resource_type: &'static str,
    pub why: &'a str,
}

impl InternalEvent for ContextTypeRefused<'_> {
    fn emit(self, _: &Health) {
        let (ty, why) = (self.resource_type, self.why);
        tracing::warn!(
            actor = "context",
            resource_type = ty,
            error_kind = "context_type_refused",
            "the server refuses {ty} searches ({why}): the signals it feeds are off (see \
             `fhir-edge status`); asked again at the next start"
        );
    }
}

/// Reading or storing a type failed; it is retried next round from its committed cursor.
pub(crate) struct ContextTypeFailed<'a> {
    pub resource_type: &'static str,
    pub storing: bool,
    pub kind: &'static str,
    pub error: &'a str,
}

impl InternalEvent for ContextTypeFailed<'_> {
    fn emit(self, health: &Health) {
        health.counters.add(Counter::ContextErrors, 1);
        health.error(ActorId::Context, self.kind);
        let (ty, what) = (
            self.resource_type,
            if self.storing { "storing" } else { "reading" },
        );
        tracing::warn!(
            actor = "context",
            resource_type = ty,
            error_kind = self.kind,
            "{what} {ty} failed, retried next round: {}",
            self.error
        );
    }
}

/// The index was rebuilt and handed to the detector.
pub(crate) struct ContextUpdated(pub fhir_edge_core::care::IndexCounts);

impl InternalEvent for ContextUpdated {
    fn emit(self, _: &Health) {
        let c = self.0;
        tracing::info!(
            actor = "context",
            practitioners = c.practitioners,
            patients = c.patients,
            patients_with_care = c.patients_with_care,
            relationships = c.relationships,
            related_persons = c.related_persons,
            staff_as_patients = c.staff_as_patients,
            marked_patients = c.marked_patients,
            "care context updated"
        );
    }
}

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
