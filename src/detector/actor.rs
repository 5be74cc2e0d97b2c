//! `DetectorActor`: de-duplicates a fetched page against the state store, extracts
//! features and scores the new events off the actor thread (`spawn_blocking`), hands the
//! results to the alert sink and answers only once they are committed. Handlers are
//! atomic, so pages (polled or pushed) are processed strictly in order and the context
//! state sees every event once. On a model or pipeline error the page fails as a whole and
//! the poller retries it later; nothing is half-committed.

use std::sync::{Arc, Mutex};

use actix::prelude::*;
use chrono::{DateTime, Utc};

use super::Detector;
use crate::alerts::actor::Scored;
use crate::fhir::Fetched;
use crate::health::{Counters, Health, Heartbeat};
use crate::poller::BatchReport;
use crate::state::actor::{CommitPoll, FilterKeys};
use crate::state::{PollCommit, StateError};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("state store: {0}")]
    State(#[from] StateError),
    #[error("model: {0}")]
    Model(#[from] super::model::ModelError),
    #[error("actor mailbox closed: {0}")]
    Mailbox(String),
    #[error("scoring task failed: {0}")]
    Task(String),
}

impl PipelineError {
    pub fn kind(&self) -> &'static str {
        match self {
            PipelineError::State(e) => e.kind(),
            PipelineError::Model(e) => e.kind(),
            PipelineError::Mailbox(_) => "mailbox",
            PipelineError::Task(_) => "task",
        }
    }
}

impl From<MailboxError> for PipelineError {
    fn from(e: MailboxError) -> Self {
        PipelineError::Mailbox(e.to_string())
    }
}

/// A page of events from the poller or the push endpoint.
#[derive(Message)]
#[rtype(result = "Result<BatchReport, PipelineError>")]
pub struct EventsFetched {
    pub events: Vec<Fetched>,
    /// Entries of the page that could not be read (counted durably with the batch).
    pub skipped: u64,
}

/// Every page before this point is committed: snapshot the context and commit the cursor
/// with it. Sent when a poll completes, and as a checkpoint inside a long (sorted) poll.
#[derive(Message)]
#[rtype(result = "Result<(), PipelineError>")]
pub struct CommitCursor {
    pub cursor: Option<DateTime<Utc>>,
    pub at: DateTime<Utc>,
    pub poll_complete: bool,
}

pub struct DetectorActor {
    detector: Arc<Mutex<Detector>>,
    state_filter: Recipient<FilterKeys>,
    state_commit: Recipient<CommitPoll>,
    sink: Recipient<Scored>,
    health: Health,
    overlap_ms: i64,
    retention_ms: i64,
}

impl DetectorActor {
    pub fn new(
        detector: Detector,
        state_filter: Recipient<FilterKeys>,
        state_commit: Recipient<CommitPoll>,
        sink: Recipient<Scored>,
        health: Health,
        overlap_secs: u64,
        retention_days: u32,
    ) -> Self {
        DetectorActor {
            detector: Arc::new(Mutex::new(detector)),
            state_filter,
            state_commit,
            sink,
            health,
            overlap_ms: overlap_secs as i64 * 1000,
            retention_ms: retention_days as i64 * 86_400_000,
        }
    }
}

impl Actor for DetectorActor {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        // Pages wait here when the pipeline is busy; the poller waits on `send()`.
        ctx.set_mailbox_capacity(16);
    }
}

impl Handler<EventsFetched> for DetectorActor {
    type Result = AtomicResponse<Self, Result<BatchReport, PipelineError>>;

    fn handle(&mut self, msg: EventsFetched, _: &mut Self::Context) -> Self::Result {
        let detector = self.detector.clone();
        let filter = self.state_filter.clone();
        let sink = self.sink.clone();
        let health = self.health.clone();
        let fut = async move {
            health.begin_step("detector");
            let started = std::time::Instant::now();
            let keys: Vec<String> = msg.events.iter().map(|f| f.record.key.clone()).collect();
            let statuses = filter.send(FilterKeys { keys }).await??;
            let duplicates = statuses
                .iter()
                .filter(|s| **s != crate::state::KeyStatus::New)
                .count() as u64;
            let batch: Vec<_> = msg.events.into_iter().zip(statuses).collect();
            let scored = tokio::task::spawn_blocking(move || {
                let mut d = detector.lock().unwrap_or_else(|p| p.into_inner());
                d.process(batch)
            })
            .await
            .map_err(|e| PipelineError::Task(e.to_string()))??;
            let n = scored.len() as u64;
            Counters::add(&health.counters.events_model_scored, n);
            let scoring_ms = started.elapsed().as_millis() as u64;
            health
                .counters
                .scoring_duration
                .observe_duration(started.elapsed());
            health
                .counters
                .batch_size
                .observe(n as f64 + duplicates as f64);
            health.end_step("detector");
            let committed = sink
                .send(Scored {
                    events: scored,
                    duplicates,
                    skipped: msg.skipped,
                })
                .await??;
            Counters::add(&health.counters.events_duplicate, duplicates);
            tracing::debug!(
                actor = "detector",
                events = n,
                duplicates,
                duration_ms = scoring_ms,
                "page scored"
            );
            Ok(BatchReport {
                scored: committed.events_committed,
                duplicates,
                alerts: committed.alerts_inserted.len() as u64,
            })
        };
        let health = self.health.clone();
        AtomicResponse::new(Box::pin(fut.into_actor(self).map(
            move |res: Result<BatchReport, PipelineError>, _, _| {
                health.end_step("detector");
                if let Err(e) = &res {
                    health.error("detector", e.kind());
                    tracing::warn!(
                        actor = "detector",
                        error_kind = e.kind(),
                        "page not committed: {e}"
                    );
                }
                res
            },
        )))
    }
}

impl Handler<CommitCursor> for DetectorActor {
    type Result = AtomicResponse<Self, Result<(), PipelineError>>;

    fn handle(&mut self, msg: CommitCursor, _: &mut Self::Context) -> Self::Result {
        let detector = self.detector.clone();
        let commit = self.state_commit.clone();
        let overlap_ms = self.overlap_ms;
        let retention_ms = self.retention_ms;
        let fut = async move {
            let snapshot = tokio::task::spawn_blocking(move || {
                detector
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .snapshot()
            })
            .await
            .map_err(|e| PipelineError::Task(e.to_string()))?;
            let now = msg.at.timestamp_millis();
            let cursor_ms = msg.cursor.map(|c| c.timestamp_millis());
            commit
                .send(CommitPoll(PollCommit {
                    cursor_ms,
                    at_ms: now,
                    poll_complete: msg.poll_complete,
                    snapshot: Some(snapshot),
                    // Keys older than the re-read window (plus an hour of margin) never come back.
                    prune_seen_before_ms: cursor_ms
                        .map_or(i64::MIN, |c| c - overlap_ms - 3_600_000),
                    prune_alerts_before_ms: now - retention_ms,
                }))
                .await??;
            Ok(())
        };
        AtomicResponse::new(Box::pin(fut.into_actor(self)))
    }
}

impl Handler<Heartbeat> for DetectorActor {
    type Result = ();
    fn handle(&mut self, _: Heartbeat, _: &mut Self::Context) {
        self.health.progress("detector");
    }
}

impl actix::Supervised for DetectorActor {
    fn restarting(&mut self, _: &mut Self::Context) {
        tracing::warn!(
            actor = "detector",
            "detector restarting; context state is kept"
        );
    }
}
