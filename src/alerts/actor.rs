//! `AlertSinkActor`: turns scored events into alerts (threshold + allow-list), commits them
//! with the events' seen-keys in one state transaction, then writes one journal record per
//! newly stored alert and marks it journaled. A crash between commit and journal leaves the
//! alert unjournaled; it is re-emitted at the next start, so no alert is lost or doubled in
//! the store. On a state error the whole page fails and is retried by the poller.

use actix::prelude::*;

use super::{alert_record, journal_alert, journal_case, new_alert_record, to_alert};
use crate::health::{ActorId, Counter, Health, Heartbeat};
use crate::pipeline::{AllowListChanged, Flush, PipelineError, Scored};
use crate::state::actor::{CommitBatch, MarkJournaled};
use fhir_edge_core::alerts::{AllowRule, NewAlert};
use fhir_edge_core::state::{BatchCommit, BatchOutcome, SeenEvent};

/// Request: journal alerts, and cases opened or escalated, stored earlier but never
/// journaled (a crash came in between).
#[derive(Message)]
#[rtype(result = "()")]
pub struct AlertRaised {
    pub alerts: Vec<fhir_edge_core::alerts::Alert>,
    pub cases: Vec<fhir_edge_core::cases::CaseNote>,
}

pub struct AlertSinkActor {
    commit: Recipient<CommitBatch>,
    journaled: Recipient<MarkJournaled>,
    rules: Vec<AllowRule>,
    health: Health,
}

impl AlertSinkActor {
    pub fn new(
        commit: Recipient<CommitBatch>,
        journaled: Recipient<MarkJournaled>,
        rules: Vec<AllowRule>,
        health: Health,
    ) -> Self {
        AlertSinkActor {
            commit,
            journaled,
            rules,
            health,
        }
    }
}

impl Actor for AlertSinkActor {
    type Context = Context<Self>;
}

impl Handler<Flush> for AlertSinkActor {
    type Result = ();
    fn handle(&mut self, _: Flush, _: &mut Self::Context) {}
}

impl Handler<Scored> for AlertSinkActor {
    type Result = AtomicResponse<Self, Result<BatchOutcome, PipelineError>>;

    fn handle(&mut self, msg: Scored, _: &mut Self::Context) -> Self::Result {
        let alerts: Vec<NewAlert> = msg
            .events
            .iter()
            .filter_map(|e| to_alert(e, &self.rules))
            .collect();
        let batch = BatchCommit {
            events: msg
                .events
                .iter()
                .map(|e| SeenEvent {
                    key: e.fetched.record.key.clone(),
                    last_updated_ms: e.fetched.record.seen_at_ms(),
                    carried: e.carried,
                })
                .collect(),
            alerts,
            duplicates: msg.duplicates,
            skipped: msg.skipped,
        };
        let commit = self.commit.clone();
        let journaled = self.journaled.clone();
        let health = self.health.clone();
        let fut = async move {
            health.begin_step(ActorId::AlertSink);
            let started = std::time::Instant::now();
            let (batch, outcome) = commit.send(CommitBatch(batch)).await??;
            health
                .counters
                .commit_duration
                .observe_duration(started.elapsed());
            health.end_step(ActorId::AlertSink);
            let c = &health.counters;
            c.add(Counter::EventsScored, outcome.events_committed);
            let mut ids = Vec::with_capacity(outcome.alerts_inserted.len());
            for (id, i) in &outcome.alerts_inserted {
                let a = &batch.alerts[*i];
                journal_alert(&new_alert_record(a, *id));
                c.alert(a.severity);
                ids.push(*id);
            }
            for case in &outcome.cases_to_journal {
                journal_case(case);
            }
            if outcome.exports_refused > 0 {
                crate::telemetry::InternalEvent::emit(
                    crate::export::ExportRefused(outcome.exports_refused),
                    &health,
                );
            }
            let cases: Vec<_> = outcome
                .cases_to_journal
                .iter()
                .map(|c| c.journaled())
                .collect();
            if !ids.is_empty() || !cases.is_empty() {
                // Best effort: an unmarked alert or case is re-journaled after a restart.
                let mark = MarkJournaled { alerts: ids, cases };
                if let Ok(Err(e)) = journaled.send(mark).await {
                    tracing::warn!(
                        actor = "alert_sink",
                        error_kind = e.kind(),
                        "cannot mark alerts journaled: {e}"
                    );
                }
            }
            Ok(outcome)
        };
        let health = self.health.clone();
        AtomicResponse::new(Box::pin(fut.into_actor(self).map(
            move |res: Result<BatchOutcome, PipelineError>, _, _| {
                health.end_step(ActorId::AlertSink);
                if let Err(e) = &res {
                    health.error(ActorId::AlertSink, e.kind());
                }
                res
            },
        )))
    }
}

impl Handler<AllowListChanged> for AlertSinkActor {
    type Result = ();
    fn handle(&mut self, msg: AllowListChanged, _: &mut Self::Context) {
        tracing::info!(
            actor = "alert_sink",
            rules = msg.0.len(),
            "allow-list updated"
        );
        self.rules = msg.0;
    }
}

impl Handler<AlertRaised> for AlertSinkActor {
    type Result = ();
    fn handle(&mut self, msg: AlertRaised, ctx: &mut Self::Context) {
        let mut mark = MarkJournaled::default();
        for a in &msg.alerts {
            journal_alert(&alert_record(a));
            mark.alerts.push(a.id);
        }
        for c in &msg.cases {
            journal_case(c);
            mark.cases.push(c.journaled());
        }
        if !mark.alerts.is_empty() || !mark.cases.is_empty() {
            let j = self.journaled.clone();
            ctx.spawn(
                async move {
                    let _ = j.send(mark).await;
                }
                .into_actor(self),
            );
        }
    }
}

impl Handler<Heartbeat> for AlertSinkActor {
    type Result = ();
    fn handle(&mut self, _: Heartbeat, _: &mut Self::Context) {
        self.health.progress(ActorId::AlertSink);
    }
}

impl actix::Supervised for AlertSinkActor {
    fn restarting(&mut self, _: &mut Self::Context) {
        tracing::warn!(actor = "alert_sink", "alert sink restarting");
    }
}
