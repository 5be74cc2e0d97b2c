//! `PollerActor`: runs one poll at a time as a spawned (non-atomic) future so heartbeats
//! and shutdown are answered while it runs; schedules the next poll with `notify_later`
//! after each poll completes — at the interval when caught up, after a capped, jittered
//! backoff after errors. It never exits on its own: every error is logged, counted and
//! retried.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use chrono::{DateTime, Utc};

use super::events::{CursorCommitFailed, OverlapRechecked, PollCompleted, PollFailed};
use super::{
    recheck_start, run_poll, PageSink, PollError, PollPlan, PollStart, PollState, PollSummary,
    Recheck,
};
use crate::client::FhirClient;
use crate::config::PollerConfig;
use crate::health::{ActorId, Counter, Health, Heartbeat};
use crate::pipeline::{CommitCursor, EventsFetched, PipelineError};
use crate::state::actor::CountSeen;
use crate::telemetry::InternalEvent as _;
use fhir_edge_core::clock::SharedClock;
use fhir_edge_core::fhir::Fetched;

/// Where polling resumes, from the state database and the command line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Resume {
    /// The committed cursor.
    pub cursor: Option<DateTime<Utc>>,
    /// `--since`: where the first poll starts, once.
    pub since: Option<DateTime<Utc>>,
    /// Newest event committed after the last snapshot (see `PollPlan::replay_until`).
    pub replay_until: Option<DateTime<Utc>>,
}

/// Start a poll now (if none is running).
#[derive(Message)]
#[rtype(result = "()")]
pub struct PollNow;

/// Whether a poll is in flight (used to drain on shutdown).
#[derive(Message)]
#[rtype(result = "bool")]
pub struct IsPolling;

struct DetectorSink {
    pages: Recipient<EventsFetched>,
    cursor: Recipient<CommitCursor>,
    clock: SharedClock,
}

impl PageSink for DetectorSink {
    fn deliver(
        &self,
        events: Vec<Fetched>,
        skipped: u64,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<super::Committed, PipelineError>>
                + Send
                + 'static,
        >,
    > {
        // `send().await`: the poller waits for the page to be scored (backpressure); the
        // ticket resolves when it is committed.
        let req = self.pages.send(EventsFetched { events, skipped });
        Box::pin(async move {
            match req.await {
                Ok(Ok(ticket)) => {
                    let committed: super::Committed = Box::pin(ticket.committed());
                    Ok(committed)
                }
                Ok(Err(e)) => Err(e),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn checkpoint(
        &self,
        cursor: DateTime<Utc>,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), PipelineError>> + Send + 'static>,
    > {
        let req = self.cursor.send(CommitCursor {
            cursor: Some(cursor),
            at: self.clock.now(),
            poll_complete: false,
        });
        Box::pin(async move {
            match req.await {
                Ok(res) => res,
                Err(e) => Err(e.into()),
            }
        })
    }
}

pub struct PollerActor {
    client: FhirClient,
    cfg: PollerConfig,
    clock: SharedClock,
    health: Health,
    detector: Recipient<EventsFetched>,
    completed: Recipient<CommitCursor>,
    /// The seen keys' counts, for overlap rechecks.
    seen: Recipient<CountSeen>,
    /// Cursor, start settings, backoff and page size: the decisions live in `PollState`.
    state: PollState,
    polling: bool,
    stop: Arc<AtomicBool>,
    /// Set: the first poll waits until it turns true (see [`PollerActor::holding_until`]).
    hold: Option<tokio::sync::watch::Receiver<bool>>,
}

impl PollerActor {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: FhirClient,
        cfg: PollerConfig,
        clock: SharedClock,
        health: Health,
        detector: Recipient<EventsFetched>,
        completed: Recipient<CommitCursor>,
        seen: Recipient<CountSeen>,
        resume: Resume,
        stop: Arc<AtomicBool>,
    ) -> Self {
        let state = PollState::new(
            resume.cursor,
            resume.since,
            resume.replay_until,
            &cfg,
            fhir_edge_core::rng::seed_from_time(),
        );
        PollerActor {
            client,
            cfg,
            clock,
            health,
            detector,
            completed,
            seen,
            state,
            polling: false,
            stop,
            hold: None,
        }
    }

    /// Make the first poll wait until `ready` turns true, or its sender is gone: a daemon
    /// whose model was trained with the care context, and that has none stored yet, scores
    /// nothing before the context's first read (its care signals would read as absent).
    pub fn holding_until(mut self, ready: Option<tokio::sync::watch::Receiver<bool>>) -> Self {
        self.hold = ready;
        self
    }

    /// Where this poll starts: `--since`, the cursor-based start (`poll_start`), or (first
    /// run) the server's time minus the initial look-back.
    async fn start_point(
        client: FhirClient,
        clock: SharedClock,
        from_cursor: Option<DateTime<Utc>>,
        since: Option<DateTime<Utc>>,
        cfg: PollerConfig,
        health: &Health,
    ) -> Result<DateTime<Utc>, PollError> {
        if let Some(s) = since {
            return Ok(s);
        }
        if let Some(c) = from_cursor {
            return Ok(c);
        }
        let server_now = match client.server_time().await {
            Ok(Some(t)) => t,
            Ok(None) => {
                tracing::warn!(
                    actor = "poller",
                    "server sent no Date header; using the local clock for the initial look-back"
                );
                clock.now()
            }
            Err(e) => {
                // A request to the server that failed, like a failed page fetch: counted.
                health.counters.add(Counter::FetchErrors, 1);
                return Err(e.into());
            }
        };
        Ok(server_now - chrono::Duration::seconds(cfg.initial_lookback_secs as i64))
    }

    /// Where a recheck of the overlap `window` re-reads from: the server's counts against
    /// the seen keys' (`recheck_start`).
    async fn recheck(
        client: &FhirClient,
        seen: &Recipient<CountSeen>,
        window: (DateTime<Utc>, DateTime<Utc>),
    ) -> Result<Recheck, PollError> {
        recheck_start(
            window.0,
            window.1,
            |from, to| async move { Ok(client.count(from, to).await?) },
            |from, to| async move {
                let n = seen
                    .send(CountSeen {
                        from_ms: from.timestamp_millis(),
                        to_ms: to.timestamp_millis(),
                    })
                    .await
                    .map_err(PipelineError::from)?
                    .map_err(PipelineError::from)?;
                Ok(n)
            },
        )
        .await
    }

    /// One poll: where it starts, then every page to the detector until committed.
    #[allow(clippy::too_many_arguments)]
    async fn poll(
        client: FhirClient,
        clock: SharedClock,
        cfg: PollerConfig,
        health: Health,
        stop: Arc<AtomicBool>,
        sink: DetectorSink,
        seen: Recipient<CountSeen>,
        start: PollStart,
    ) -> Result<PollSummary, PollError> {
        let recheck = match start.count_window {
            Some(window) => {
                let r = Self::recheck(&client, &seen, window).await?;
                OverlapRechecked { recheck: r }.emit(&health);
                Some(r)
            }
            None => None,
        };
        let from_cursor = match (recheck, start.count_window) {
            (Some(Recheck::Settled), Some((_, cursor))) => Some(cursor),
            (Some(Recheck::From(t)), _) => Some(t),
            _ => start.from_cursor,
        };
        let from = Self::start_point(
            client.clone(),
            clock,
            from_cursor,
            start.since,
            cfg.clone(),
            &health,
        )
        .await?;
        let plan = PollPlan {
            since: from,
            page_size: start.page_size,
            page_attempts: 6,
            max_backoff: Duration::from_secs(cfg.max_backoff_secs),
            checkpoint_every: Duration::from_secs(cfg.checkpoint_secs),
            replay_until: start.replay_until,
        };
        let mut summary = run_poll(&client, &sink, &plan, &health, stop).await?;
        summary.recheck = recheck;
        Ok(summary)
    }

    /// Hand a poll's outcome to `PollState` and report it. Returns the cursor commit to
    /// send (complete polls only) and the delay before the next poll.
    fn after_poll(
        &mut self,
        start: &PollStart,
        res: &Result<PollSummary, PollError>,
    ) -> (Option<CommitCursor>, Duration) {
        let now = self.clock.now();
        let duration_ms = (now - start.started).num_milliseconds();
        match res {
            Ok(summary) => {
                let (cursor, delay) = self.state.tick_completed(start, summary);
                PollCompleted {
                    resource_type: self.client.resource_type(),
                    summary,
                    duration_ms,
                    cursor,
                    at: now,
                }
                .emit(&self.health);
                let commit = CommitCursor {
                    cursor,
                    at: now,
                    poll_complete: true,
                };
                (Some(commit), delay)
            }
            Err(error) => {
                let after = self.state.tick_failed(error);
                if !matches!(error, PollError::Stopped) {
                    PollFailed {
                        resource_type: self.client.resource_type(),
                        error,
                        duration_ms,
                        retry_in: after.delay,
                        page_size_now: after.page_size_now,
                    }
                    .emit(&self.health);
                }
                (None, after.delay)
            }
        }
    }
}

/// Send the cursor commit after a complete poll; false when it failed (the poller backs
/// off, and the next poll re-reads from the committed cursor).
async fn commit_cursor(
    detector: &Recipient<CommitCursor>,
    c: CommitCursor,
    health: &Health,
) -> bool {
    let failure = match detector.send(c).await {
        Ok(Ok(())) => return true,
        Ok(Err(e)) => CursorCommitFailed {
            error_kind: e.kind(),
            reason: e.to_string(),
            delivered: true,
        },
        Err(e) => CursorCommitFailed {
            error_kind: "mailbox",
            reason: e.to_string(),
            delivered: false,
        },
    };
    failure.emit(health);
    false
}

impl Actor for PollerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let Some(mut ready) = self.hold.take() else {
            ctx.notify(PollNow);
            return;
        };
        tracing::info!(
            actor = "poller",
            "the first poll waits for the care context's first read (the model was trained with it)"
        );
        let wait = async move {
            // Gone (the context actor stopped): poll without it rather than never.
            let _ = ready.wait_for(|r| *r).await;
        };
        ctx.spawn(wait.into_actor(self).map(|(), _, ctx| ctx.notify(PollNow)));
    }
}

impl actix::Supervised for PollerActor {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        tracing::warn!(actor = "poller", "poller restarting");
        self.polling = false;
    }
}

impl Handler<PollNow> for PollerActor {
    type Result = ();

    /// Run one poll off the actor's state, then hand its outcome to `PollState` and
    /// schedule the next poll with `notify_later` once the cursor commit is done.
    fn handle(&mut self, _: PollNow, ctx: &mut Self::Context) {
        if self.polling || self.stop.load(Ordering::Relaxed) {
            return;
        }
        self.polling = true;
        let start = self.state.start(self.clock.now());
        let fut = Self::poll(
            self.client.clone(),
            self.clock.clone(),
            self.cfg.clone(),
            self.health.clone(),
            self.stop.clone(),
            DetectorSink {
                pages: self.detector.clone(),
                cursor: self.completed.clone(),
                clock: self.clock.clone(),
            },
            self.seen.clone(),
            start,
        );
        ctx.spawn(fut.into_actor(self).then(move |res, act, _| {
            let (commit, delay) = act.after_poll(&start, &res);
            let (completed, health) = (act.completed.clone(), act.health.clone());
            async move {
                match commit {
                    // The cursor moves (with the detector snapshot) only after every page.
                    Some(c) => commit_cursor(&completed, c, &health).await,
                    None => true,
                }
            }
            .into_actor(act)
            .map(move |committed, act, ctx| {
                act.polling = false;
                act.health.end_step(ActorId::Poller);
                if act.stop.load(Ordering::Relaxed) {
                    return;
                }
                let delay = match committed {
                    true => delay,
                    false => act.state.tick_commit_failed(),
                };
                ctx.notify_later(PollNow, delay);
            })
        }));
    }
}

impl Handler<IsPolling> for PollerActor {
    type Result = bool;
    fn handle(&mut self, _: IsPolling, _: &mut Self::Context) -> bool {
        self.polling
    }
}

impl Handler<Heartbeat> for PollerActor {
    type Result = ();
    fn handle(&mut self, _: Heartbeat, _: &mut Self::Context) {
        if !self.polling {
            self.health.progress(ActorId::Poller);
        }
    }
}
