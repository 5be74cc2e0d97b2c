//! `StateActor`: owns the SQLite connection on its own thread (a one-thread `SyncArbiter`),
//! so writes never block the async actors. Every write is one transaction. Errors are
//! returned to the sender (the page is retried); a full or read-only disk marks the daemon
//! degraded until a write succeeds again.

use actix::prelude::*;

use crate::health::{ActorId, Health, Heartbeat};
use fhir_edge_core::alerts::{AllowRule, Status};
use fhir_edge_core::clock::SharedClock;
use fhir_edge_core::state::{
    Backfill, Backfilled, BatchCommit, BatchOutcome, KeyStatus, PollCommit, SeenKey, SeenReader,
    StateError, Store, BACKFILL_STEP,
};

/// Request: whether each fetched event is new, seen, or to replay (`KeyStatus`), in order.
#[derive(Message)]
#[rtype(result = "Result<Vec<KeyStatus>, StateError>")]
pub struct FilterKeys {
    pub keys: Vec<SeenKey>,
}

/// Request: how many events were scored with `meta.lastUpdated` in `[from_ms, to_ms)`
/// (the poller's overlap recheck compares it with the server's count).
#[derive(Message)]
#[rtype(result = "Result<u64, StateError>")]
pub struct CountSeen {
    pub from_ms: i64,
    pub to_ms: i64,
}

/// Commit a scored page; the batch comes back with the outcome (no copy of the alerts).
#[derive(Message)]
#[rtype(result = "Result<(BatchCommit, BatchOutcome), StateError>")]
pub struct CommitBatch(pub BatchCommit);

#[derive(Message)]
#[rtype(result = "Result<(), StateError>")]
pub struct CommitPoll(pub PollCommit);

/// Request: record that these alerts, and these cases at these severities and episodes, reached the
/// journal (what is not marked is journaled again after a restart).
#[derive(Message, Default)]
#[rtype(result = "Result<(), StateError>")]
pub struct MarkJournaled {
    pub alerts: Vec<i64>,
    pub cases: Vec<fhir_edge_core::cases::Journaled>,
}

#[derive(Message)]
#[rtype(result = "Result<Vec<AllowRule>, StateError>")]
pub struct SetStatus {
    pub id: i64,
    pub status: Status,
    pub by: Option<String>,
    pub note: Option<String>,
    /// With `false_positive`: an allow-list rule to add.
    pub allow: Option<AllowRule>,
}

/// Request: decide a case (`in_review`, or `closed` with a resolution). With `apply`, the
/// allow-list rules a closing as appropriate or false positive implies are added too.
#[derive(Message)]
#[rtype(result = "Result<CaseDecided, StateError>")]
pub struct SetCaseStatus {
    pub id: i64,
    pub decision: fhir_edge_core::cases::CaseDecision,
    pub apply: bool,
}

/// A decided case, the rules its decision implies, and the allow-list when they were added.
pub struct CaseDecided {
    pub case: fhir_edge_core::cases::Case,
    pub implied: Vec<AllowRule>,
    pub allowlist: Option<Vec<AllowRule>>,
}

/// Request: a back-fill of the export, for an exporter configured after what was stored
/// or a far side that lost it. `Plan` counts the alerts stored and the cases active since
/// `since_ms` and refuses unless the outbox has room for all; `Step` writes the next
/// `BACKFILL_STEP` items of a plan (one transaction), so the pipeline's commits go on
/// between the steps ([`run_backfill`] sends them).
#[derive(Message)]
#[rtype(result = "Result<Backfill, StateError>")]
pub enum BackfillExport {
    Plan { since_ms: i64 },
    Step(Backfill),
}

#[derive(Message)]
#[rtype(result = "Result<Vec<AllowRule>, StateError>")]
pub struct AddAllowRule(pub AllowRule);

#[derive(Message)]
#[rtype(result = "Result<Vec<AllowRule>, StateError>")]
pub struct RemoveAllowRule(pub i64);

/// Request: `exporter`'s far side acknowledged every outbox item up to `upto` (its
/// position only moves forward; rows every exporter acknowledged are deleted).
#[derive(Message)]
#[rtype(result = "Result<(), StateError>")]
pub struct AckExport {
    pub exporter: &'static str,
    pub upto: i64,
}

/// Request: the store's commit sequence now. Every batch sent before this is committed, so
/// a snapshot of the context taken next holds exactly the events up to it.
#[derive(Message)]
#[rtype(result = "i64")]
pub struct SnapshotPoint;

/// Request: record a complete poll that took no snapshot (its time, for `status`).
#[derive(Message)]
#[rtype(result = "Result<(), StateError>")]
pub struct NotePoll {
    pub at_ms: i64,
}

/// Checkpoint the WAL before exit.
#[derive(Message)]
#[rtype(result = "Result<(), StateError>")]
pub struct Flush;

pub struct StateActor {
    store: Store,
    health: Health,
    clock: SharedClock,
}

impl StateActor {
    pub fn new(store: Store, health: Health, clock: SharedClock) -> Self {
        StateActor {
            store,
            health,
            clock,
        }
    }

    fn write<T>(
        &mut self,
        f: impl FnOnce(&mut Store, i64) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        self.health.begin_step(ActorId::State);
        let now = self.clock.now().timestamp_millis();
        let res = f(&mut self.store, now);
        self.health.end_step(ActorId::State);
        match &res {
            Ok(_) => {
                if self.health.degraded().is_some() {
                    tracing::info!(actor = "state", "state database writable again");
                    self.health.set_degraded(None);
                }
            }
            Err(e) => {
                self.health.error(ActorId::State, e.kind());
                tracing::warn!(
                    actor = "state",
                    error_kind = e.kind(),
                    "state write failed: {e}"
                );
                if matches!(e, StateError::DiskFull(_) | StateError::ReadOnly(_)) {
                    self.health
                        .set_degraded(Some(format!("cannot write state ({})", e.kind())));
                }
            }
        }
        res
    }
}

impl Actor for StateActor {
    type Context = SyncContext<Self>;
}

/// Answers `FilterKeys` on a read-only connection of its own thread, so filtering the
/// next page does not queue behind the commit of the previous one on `StateActor`.
pub struct SeenFilterActor {
    reader: SeenReader,
    health: Health,
}

impl SeenFilterActor {
    pub fn new(reader: SeenReader, health: Health) -> Self {
        SeenFilterActor { reader, health }
    }
}

impl Actor for SeenFilterActor {
    type Context = SyncContext<Self>;
}

impl Handler<FilterKeys> for SeenFilterActor {
    type Result = Result<Vec<KeyStatus>, StateError>;
    fn handle(&mut self, msg: FilterKeys, _: &mut Self::Context) -> Self::Result {
        let res = self.reader.filter(&msg.keys);
        if let Err(e) = &res {
            self.health.error(ActorId::State, e.kind());
        }
        res
    }
}

impl Handler<CountSeen> for SeenFilterActor {
    type Result = Result<u64, StateError>;
    fn handle(&mut self, msg: CountSeen, _: &mut Self::Context) -> Self::Result {
        let res = self.reader.count(msg.from_ms, msg.to_ms);
        if let Err(e) = &res {
            self.health.error(ActorId::State, e.kind());
        }
        res
    }
}

impl Handler<CommitBatch> for StateActor {
    type Result = Result<(BatchCommit, BatchOutcome), StateError>;
    fn handle(&mut self, msg: CommitBatch, _: &mut Self::Context) -> Self::Result {
        let batch = msg.0;
        let started = std::time::Instant::now();
        tracing::debug!(
            actor = "state",
            events = batch.events.len(),
            "committing page"
        );
        let outcome = self.write(|s, now| s.commit_batch(&batch, now))?;
        tracing::debug!(
            actor = "state",
            duration_ms = started.elapsed().as_millis() as u64,
            "page committed"
        );
        Ok((batch, outcome))
    }
}

impl Handler<CommitPoll> for StateActor {
    type Result = Result<(), StateError>;
    fn handle(&mut self, msg: CommitPoll, _: &mut Self::Context) -> Self::Result {
        let pruned = self.write(|s, _| s.commit_poll(&msg.0))?;
        if pruned > 0 {
            tracing::debug!(actor = "state", pruned, "forgot old seen keys");
        }
        Ok(())
    }
}

impl Handler<MarkJournaled> for StateActor {
    type Result = Result<(), StateError>;
    fn handle(&mut self, msg: MarkJournaled, _: &mut Self::Context) -> Self::Result {
        self.write(|s, _| {
            s.mark_journaled(&msg.alerts)?;
            s.mark_cases_journaled(&msg.cases)
        })
    }
}

impl Handler<SetStatus> for StateActor {
    type Result = Result<Vec<AllowRule>, StateError>;
    fn handle(&mut self, msg: SetStatus, _: &mut Self::Context) -> Self::Result {
        self.write(|s, now| {
            s.set_status(
                msg.id,
                msg.status,
                msg.by.as_deref(),
                msg.note.as_deref(),
                now,
            )?;
            if let Some(rule) = &msg.allow {
                s.add_allow_rule(rule, now)?;
            }
            s.allowlist()
        })
    }
}

impl Handler<SetCaseStatus> for StateActor {
    type Result = Result<CaseDecided, StateError>;
    fn handle(&mut self, msg: SetCaseStatus, _: &mut Self::Context) -> Self::Result {
        let d = &msg.decision;
        self.write(|s, now| {
            let (case, implied) = s.set_case_status(msg.id, d, now)?;
            tracing::info!(
                actor = "state",
                fhir_edge_case_id = case.id,
                status = case.status.as_str(),
                resolution = case.resolution.map_or("", |r| r.as_str()),
                "case #{} now {}{}",
                case.id,
                case.status.as_str(),
                case.resolution
                    .map_or(String::new(), |r| format!(" ({})", r.as_str())),
            );
            let allowlist = if msg.apply && !implied.is_empty() {
                for rule in &implied {
                    let rule = AllowRule {
                        note: d.note.clone(),
                        created_by: d.by.clone(),
                        ..rule.clone()
                    };
                    s.add_allow_rule(&rule, now)?;
                }
                Some(s.allowlist()?)
            } else {
                None
            };
            Ok(CaseDecided {
                case,
                implied,
                allowlist,
            })
        })
    }
}

impl Handler<BackfillExport> for StateActor {
    type Result = Result<Backfill, StateError>;
    fn handle(&mut self, msg: BackfillExport, _: &mut Self::Context) -> Self::Result {
        match msg {
            BackfillExport::Plan { since_ms } => self.store.plan_backfill(since_ms),
            BackfillExport::Step(mut b) => self.write(|s, now| {
                s.backfill_step(&mut b, BACKFILL_STEP, now)?;
                Ok(b)
            }),
        }
    }
}

/// Run a back-fill of the export to its end: plan it, then send its steps one by one,
/// logging the start, the progress every `PROGRESS`, and the end or why it stopped half
/// way (also when no client waits for it any more). `Err` says why it stopped and what it
/// had written by then (whole steps: running it again sends those again, which receivers
/// drop or take as a newer version).
pub async fn run_backfill(
    state: &Recipient<BackfillExport>,
    since_ms: i64,
) -> Result<Backfilled, (StateError, Backfilled)> {
    const PROGRESS: std::time::Duration = std::time::Duration::from_secs(10);
    let ask = |m: BackfillExport| async move {
        state.send(m).await.unwrap_or_else(|e| {
            Err(StateError::Invalid(format!(
                "the state actor is gone ({e})"
            )))
        })
    };
    let since = fhir_edge_core::clock::fmt_ms(fhir_edge_core::clock::from_ms(since_ms));
    let mut b = ask(BackfillExport::Plan { since_ms })
        .await
        .map_err(|e| (e, Backfilled::default()))?;
    tracing::info!(
        actor = "state",
        alerts = b.total.alerts,
        cases = b.total.cases,
        "export back-fill since {since}: {} alerts and {} cases to write to the outbox again",
        b.total.alerts,
        b.total.cases,
    );
    let mut said = std::time::Instant::now();
    while !b.done() {
        let (written, total) = (b.written, b.total);
        let stopped = |e: StateError| {
            tracing::warn!(
                actor = "state",
                error_kind = e.kind(),
                "export back-fill since {since} stopped after {} of {} items ({} alerts, {} \
                 cases): {e}; run it again when that is mended (receivers drop what goes twice)",
                written.items(),
                total.items(),
                written.alerts,
                written.cases,
            );
            Err((e, written))
        };
        b = match ask(BackfillExport::Step(b)).await {
            Ok(b) => b,
            Err(e) => return stopped(e),
        };
        if said.elapsed() >= PROGRESS && !b.done() {
            said = std::time::Instant::now();
            tracing::info!(
                actor = "state",
                "export back-fill since {since}: {} of {} items written",
                b.written.items(),
                b.total.items(),
            );
        }
    }
    tracing::info!(
        actor = "state",
        alerts = b.written.alerts,
        cases = b.written.cases,
        "export back-fill: {} alerts and {} cases since {since} written to the outbox again",
        b.written.alerts,
        b.written.cases,
    );
    Ok(b.written)
}

impl Handler<AddAllowRule> for StateActor {
    type Result = Result<Vec<AllowRule>, StateError>;
    fn handle(&mut self, msg: AddAllowRule, _: &mut Self::Context) -> Self::Result {
        self.write(|s, now| {
            s.add_allow_rule(&msg.0, now)?;
            s.allowlist()
        })
    }
}

impl Handler<RemoveAllowRule> for StateActor {
    type Result = Result<Vec<AllowRule>, StateError>;
    fn handle(&mut self, msg: RemoveAllowRule, _: &mut Self::Context) -> Self::Result {
        self.write(|s, _| {
            s.remove_allow_rule(msg.0)?;
            s.allowlist()
        })
    }
}

impl Handler<AckExport> for StateActor {
    type Result = Result<(), StateError>;
    fn handle(&mut self, msg: AckExport, _: &mut Self::Context) -> Self::Result {
        self.write(|s, _| s.ack_export(msg.exporter, msg.upto))
    }
}

impl Handler<SnapshotPoint> for StateActor {
    type Result = i64;
    fn handle(&mut self, _: SnapshotPoint, _: &mut Self::Context) -> i64 {
        self.store.seq()
    }
}

impl Handler<NotePoll> for StateActor {
    type Result = Result<(), StateError>;
    fn handle(&mut self, msg: NotePoll, _: &mut Self::Context) -> Self::Result {
        self.write(|s, _| s.note_poll(msg.at_ms))
    }
}

impl Handler<Flush> for StateActor {
    type Result = Result<(), StateError>;
    fn handle(&mut self, _: Flush, _: &mut Self::Context) -> Self::Result {
        self.store.checkpoint()
    }
}

impl Handler<Heartbeat> for StateActor {
    type Result = ();
    fn handle(&mut self, _: Heartbeat, _: &mut Self::Context) {
        self.health.progress(ActorId::State);
    }
}

impl Handler<crate::pipeline::StoreCare> for StateActor {
    type Result = Result<(), crate::pipeline::PipelineError>;
    fn handle(&mut self, msg: crate::pipeline::StoreCare, _: &mut Self::Context) -> Self::Result {
        Ok(self.write(|s, now| s.store_care(msg.resource_type, &msg.facts, msg.cursor_ms, now))?)
    }
}

impl Handler<crate::pipeline::RefuseCareType> for StateActor {
    type Result = Result<(), crate::pipeline::PipelineError>;
    fn handle(
        &mut self,
        msg: crate::pipeline::RefuseCareType,
        _: &mut Self::Context,
    ) -> Self::Result {
        Ok(self.write(|s, now| s.refuse_care_type(msg.resource_type, &msg.why, now))?)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use fhir_edge_core::alerts::{AlertKind, NewAlert, Severity};
    use fhir_edge_core::state::{ExportSetup, SeenEvent};

    const T: i64 = 1_700_000_000_000;

    fn setup(max_items: u64) -> ExportSetup {
        ExportSetup {
            site: "north".into(),
            exporters: vec!["syslog".into()],
            max_items,
        }
    }

    /// Three alerts of one user: four items with their case.
    fn stored(dir: &std::path::Path) -> Store {
        let mut store = Store::open(dir).unwrap();
        let keys = ["a", "b", "c"];
        let batch = BatchCommit {
            events: keys
                .iter()
                .map(|k| SeenEvent {
                    key: k.to_string(),
                    last_updated_ms: T,
                    carried: Default::default(),
                })
                .collect(),
            alerts: keys
                .iter()
                .map(|k| NewAlert {
                    event_key: k.to_string(),
                    event_id: k.to_string(),
                    event_version: None,
                    recorded_ms: T,
                    score: 2.5,
                    severity: Severity::High,
                    summary: "opened 40 patients in an hour".into(),
                    explanation: vec!["opened 40 patients in an hour (usually 3)".into()],
                    kinds: vec![AlertKind::BulkAccess],
                    user: Some("Practitioner/1".into()),
                    user_display: None,
                    patient: Some(format!("Patient/{k}")),
                    source_ip: None,
                    client_app: None,
                    action: Some("R".into()),
                    interaction: "read".into(),
                    raw: "{}".into(),
                    evidence: fhir_edge_core::alerts::Evidence::Single,
                })
                .collect(),
            ..Default::default()
        };
        store.commit_batch(&batch, T).unwrap();
        store
    }

    /// Stands in for the `StateActor`: answers a back-fill from its store one item a step,
    /// and before step `shrink_at` lowers the outbox's bound to what it holds (live alerts
    /// filling it meanwhile), so that step is refused.
    struct OneItemSteps {
        store: Store,
        steps: usize,
        shrink_at: usize,
    }

    impl OneItemSteps {
        /// Three alerts of one user stored in `dir`, export configured, the stand-in
        /// started on them.
        fn start_on(dir: &std::path::Path, shrink_at: usize) -> Addr<OneItemSteps> {
            let mut store = stored(dir);
            store.set_export(Some(setup(100)));
            OneItemSteps {
                store,
                steps: 0,
                shrink_at,
            }
            .start()
        }
    }

    impl Actor for OneItemSteps {
        type Context = actix::Context<Self>;
    }

    impl Handler<BackfillExport> for OneItemSteps {
        type Result = Result<Backfill, StateError>;
        fn handle(&mut self, msg: BackfillExport, _: &mut Self::Context) -> Self::Result {
            match msg {
                BackfillExport::Plan { since_ms } => self.store.plan_backfill(since_ms),
                BackfillExport::Step(mut b) => {
                    self.steps += 1;
                    if self.steps == self.shrink_at {
                        self.store.set_export(Some(setup(b.written.items())));
                    }
                    self.store.backfill_step(&mut b, 1, T + 1000)?;
                    Ok(b)
                }
            }
        }
    }

    /// The log lines of what runs while it is set, as text.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    /// A back-fill that stops half way says so, once, with how far it got, and returns
    /// what it had written; one that runs through says where it ended.
    #[actix_rt::test]
    async fn a_back_fill_stopped_half_way_says_how_far_it_got() {
        let log = Captured::default();
        let writer = log.clone();
        let _guard = tracing::subscriber::set_default(
            tracing_subscriber::fmt()
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .finish(),
        );
        let dir = tempfile::tempdir().unwrap();
        let state = OneItemSteps::start_on(dir.path(), 3);
        let (e, written) = run_backfill(&state.recipient(), 0)
            .await
            .expect_err("the third step finds no room");
        assert_eq!(e.kind(), "invalid_request", "{e}");
        assert_eq!(
            written,
            Backfilled {
                alerts: 2,
                cases: 0
            }
        );
        let text = log.text();
        assert!(
            text.contains("3 alerts and 1 cases to write to the outbox again"),
            "{text}"
        );
        let stop = "stopped after 2 of 4 items (2 alerts, 0 cases): the outbox filled up";
        assert_eq!(text.matches(stop).count(), 1, "{text}");
        assert!(!text.contains("written to the outbox again"), "{text}");

        // Room again: run again, it goes through.
        let dir = tempfile::tempdir().unwrap();
        let state = OneItemSteps::start_on(dir.path(), 0);
        let done = run_backfill(&state.recipient(), 0).await.unwrap();
        assert_eq!(done.items(), 4);
        assert!(
            log.text().contains("3 alerts and 1 cases since 1970-01-01"),
            "{}",
            log.text()
        );
    }
}
