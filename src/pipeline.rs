//! The pipeline's shared vocabulary: the requests that travel between the actors and the
//! types both ends of a request name. Defined here, once, so that no actor module imports
//! another actor module's types (the actors import this module and the recipients they are
//! handed; see ARCHITECTURE.md).
//!
//! ```text
//! PollerActor ─EventsFetched─▶ DetectorActor ─Scored─▶ AlertSinkActor ─CommitBatch─▶ StateActor
//!      └──────CommitCursor─────▶ (Flush to the sink, then CommitPoll) ───────────────▶
//! ```

use actix::prelude::*;
use chrono::{DateTime, Utc};

use fhir_edge_core::alerts::AllowRule;
use fhir_edge_core::detector::model::ModelError;
use fhir_edge_core::detector::ScoredEvent;
use fhir_edge_core::fhir::Fetched;
use fhir_edge_core::state::{BatchOutcome, StateError};

/// Why a page could not be scored or committed; the poller retries the page.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("state store: {0}")]
    State(#[from] StateError),
    #[error("model: {0}")]
    Model(#[from] ModelError),
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

/// Resolves once a scored page is committed (with its alerts), or failed to commit.
pub struct CommitTicket(
    pub  std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<BatchReport, PipelineError>> + Send>,
    >,
);

impl CommitTicket {
    pub async fn committed(self) -> Result<BatchReport, PipelineError> {
        self.0.await
    }
}

/// Request: score a page of events from the poller or the push endpoint. Answered once the
/// page is scored; the ticket resolves when it is committed, so the next page is scored
/// meanwhile.
#[derive(Message)]
#[rtype(result = "Result<CommitTicket, PipelineError>")]
pub struct EventsFetched {
    pub events: Vec<Fetched>,
    /// Entries of the page that could not be read (counted durably with the batch).
    pub skipped: u64,
}

/// Request: every page before this point is committed; snapshot the detector's context and
/// commit the cursor with it. Sent when a poll completes, and as a checkpoint inside a long (sorted) poll.
#[derive(Message)]
#[rtype(result = "Result<(), PipelineError>")]
pub struct CommitCursor {
    pub cursor: Option<DateTime<Utc>>,
    pub at: DateTime<Utc>,
    pub poll_complete: bool,
}

/// What the pipeline reports for one delivered page.
#[derive(Debug, Default, Clone, Copy)]
pub struct BatchReport {
    pub scored: u64,
    pub duplicates: u64,
    pub alerts: u64,
}

/// Request: store the scored events of one page, with their alerts, in one transaction.
#[derive(Message)]
#[rtype(result = "Result<BatchOutcome, PipelineError>")]
pub struct Scored {
    pub events: Vec<ScoredEvent>,
    pub duplicates: u64,
    pub skipped: u64,
}

/// Request: answer once every `Scored` page received before this is committed (the sink's
/// handlers are atomic, so the answer is the barrier).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Flush;

/// Request: replace the alert sink's cached allow-list rules (the API changed them).
#[derive(Message)]
#[rtype(result = "()")]
pub struct AllowListChanged(pub Vec<AllowRule>);

/// Request: keep the care facts of one page of a context type, and with `cursor_ms` move
/// the type's cursor (one transaction).
#[derive(Message)]
#[rtype(result = "Result<(), PipelineError>")]
pub struct StoreCare {
    pub resource_type: &'static str,
    pub facts: Vec<fhir_edge_core::care::Facts>,
    pub cursor_ms: Option<i64>,
}

/// Request: note that the server refuses a context type (`why`: its answer).
#[derive(Message)]
#[rtype(result = "Result<(), PipelineError>")]
pub struct RefuseCareType {
    pub resource_type: &'static str,
    pub why: String,
}

/// Request: score with this care context from the next page on.
#[derive(Message)]
#[rtype(result = "()")]
pub struct UseCare(pub std::sync::Arc<fhir_edge_core::care::Index>);
