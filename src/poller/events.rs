//! The poller's internal events: each logs and counts in one place (`InternalEvent`).

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fhir_edge_core::clock::fmt_ms;

use super::{PollError, PollSummary, Recheck};
use crate::health::{ActorId, Counter, Health};
use crate::telemetry::InternalEvent;

/// A complete poll: every page read and committed.
pub struct PollCompleted<'a> {
    pub resource_type: &'a str,
    pub summary: &'a PollSummary,
    pub duration_ms: i64,
    /// The cursor after the poll.
    pub cursor: Option<DateTime<Utc>>,
    /// Local time of completion.
    pub at: DateTime<Utc>,
}

impl InternalEvent for PollCompleted<'_> {
    fn emit(self, health: &Health) {
        let s = self.summary;
        tracing::info!(
            actor = "poller",
            resource_type = self.resource_type,
            duration_ms = self.duration_ms,
            pages = s.pages,
            events = s.events,
            scored = s.scored,
            duplicates = s.duplicates,
            skipped = s.skipped,
            alerts = s.alerts,
            sorted = s.sorted,
            cursor = self.cursor.map(fmt_ms).unwrap_or_default(),
            "poll complete"
        );
        if !s.sorted {
            tracing::debug!(
                actor = "poller",
                "server ignored _sort; cursor still taken from the newest lastUpdated of the whole poll"
            );
        }
        let c = &health.counters;
        c.add(Counter::PollsCompleted, 1);
        c.poll_duration.observe(self.duration_ms as f64 / 1000.0);
        c.last_poll_ms
            .store(self.at.timestamp_millis(), Ordering::Relaxed);
        if let Some(cursor) = self.cursor {
            c.cursor_ms
                .store(cursor.timestamp_millis(), Ordering::Relaxed);
        }
        if let Some(n) = s.newest {
            c.newest_event_ms
                .fetch_max(n.timestamp_millis(), Ordering::Relaxed);
        }
        health.set_detail(
            ActorId::Poller,
            format!(
                "idle; last poll {} events in {} ms",
                s.events, self.duration_ms
            ),
        );
    }
}

/// A poll that failed; the next one starts after `retry_in`.
pub struct PollFailed<'a> {
    pub resource_type: &'a str,
    pub error: &'a PollError,
    pub duration_ms: i64,
    pub retry_in: Duration,
    /// The smaller page size asked for from now on, when a page was too large.
    pub page_size_now: Option<u32>,
}

impl InternalEvent for PollFailed<'_> {
    fn emit(self, health: &Health) {
        let e = self.error;
        health.error(ActorId::Poller, e.kind());
        if let Some(n) = self.page_size_now {
            tracing::warn!(
                actor = "poller",
                error_kind = e.kind(),
                page_size = n,
                "a page exceeded poller.max_page_bytes; asking for {n} entries per page until polls succeed"
            );
        }
        tracing::warn!(
            actor = "poller",
            resource_type = self.resource_type,
            error_kind = e.kind(),
            duration_ms = self.duration_ms,
            retry_in_ms = self.retry_in.as_millis() as u64,
            "poll failed: {e}"
        );
        health.set_detail(
            ActorId::Poller,
            format!(
                "backing off {} ms after {}",
                self.retry_in.as_millis(),
                e.kind()
            ),
        );
    }
}

/// The cursor commit after a complete poll failed (`error_kind` says why); the next poll
/// backs off and re-reads from the old cursor.
pub struct CursorCommitFailed<'a> {
    pub error_kind: &'a str,
    pub reason: String,
    /// Whether the request reached the detector at all.
    pub delivered: bool,
}

impl InternalEvent for CursorCommitFailed<'_> {
    fn emit(self, _health: &Health) {
        let what = match self.delivered {
            true => "cursor commit failed",
            false => "cursor commit not delivered",
        };
        tracing::warn!(
            actor = "poller",
            error_kind = self.error_kind,
            "{what}: {}",
            self.reason
        );
    }
}

/// A due recheck of the overlap, answered by counting (`recheck_start`).
pub struct OverlapRechecked {
    pub recheck: Recheck,
}

impl InternalEvent for OverlapRechecked {
    fn emit(self, health: &Health) {
        let c = &health.counters;
        match self.recheck {
            Recheck::Settled => {
                c.add(Counter::OverlapRechecks, 1);
                tracing::debug!(
                    actor = "poller",
                    "overlap recheck: counts agree, nothing late"
                );
            }
            Recheck::From(t) => {
                c.add(Counter::OverlapRechecks, 1);
                c.add(Counter::OverlapRereads, 1);
                tracing::info!(
                    actor = "poller",
                    from = fmt_ms(t),
                    "overlap recheck: the server holds events not yet scored; re-reading from {}",
                    fmt_ms(t)
                );
            }
            Recheck::NoCount => tracing::info!(
                actor = "poller",
                "the server gives no search count; the whole overlap is re-read at each recheck \
                 (poller.recheck_secs)"
            ),
        }
    }
}
