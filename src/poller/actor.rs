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

use super::{
    next_cursor, run_poll, Backoff, PageSink, PageSizer, PollError, PollPlan, PollSummary,
};
use crate::client::FhirClient;
use crate::config::PollerConfig;
use crate::health::{Counters, Health, Heartbeat};
use crate::pipeline::{CommitCursor, EventsFetched, PipelineError};
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
    cursor: Option<DateTime<Utc>>,
    /// `--since`: where the first poll starts, once.
    since_override: Option<DateTime<Utc>>,
    /// Until a poll completes: see `PollPlan::replay_until`.
    replay_until: Option<DateTime<Utc>>,
    /// When the last poll that re-read the whole overlap started.
    last_full_reread: Option<DateTime<Utc>>,
    polling: bool,
    stop: Arc<AtomicBool>,
    backoff: Backoff,
    /// Set when a paging link expired: the next poll restarts at once.
    restart_now: bool,
    page_size: PageSizer,
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
        resume: Resume,
        stop: Arc<AtomicBool>,
    ) -> Self {
        let cap = Duration::from_secs(cfg.max_backoff_secs);
        let page_size = PageSizer::new(cfg.page_size);
        PollerActor {
            client,
            cfg,
            clock,
            health,
            detector,
            completed,
            cursor: resume.cursor,
            since_override: resume.since,
            replay_until: resume.replay_until,
            last_full_reread: None,
            polling: false,
            stop,
            backoff: Backoff::new(
                Duration::from_secs(1),
                cap,
                fhir_edge_core::rng::seed_from_time(),
            ),
            restart_now: false,
            page_size,
        }
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
                Counters::add(&health.counters.fetch_errors, 1);
                return Err(e.into());
            }
        };
        Ok(server_now - chrono::Duration::seconds(cfg.initial_lookback_secs as i64))
    }
}

impl Actor for PollerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.notify(PollNow);
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

    fn handle(&mut self, _: PollNow, ctx: &mut Self::Context) {
        if self.polling || self.stop.load(Ordering::Relaxed) {
            return;
        }
        self.polling = true;
        let client = self.client.clone();
        let clock = self.clock.clone();
        let cfg = self.cfg.clone();
        let health = self.health.clone();
        let stop = self.stop.clone();
        let sink = DetectorSink {
            pages: self.detector.clone(),
            cursor: self.completed.clone(),
            clock: self.clock.clone(),
        };
        let since = self.since_override;
        let started = self.clock.now();
        let (from_cursor, full) = match self.cursor {
            Some(c) => {
                let (from, full) = super::poll_start(
                    c,
                    started,
                    self.last_full_reread,
                    chrono::Duration::seconds(self.cfg.overlap_secs as i64),
                    chrono::Duration::seconds(self.cfg.recheck_secs as i64),
                );
                (Some(from), full)
            }
            None => (None, true),
        };
        let page_size = self.page_size.current();
        let replay_until = self.replay_until;
        let fut = async move {
            let from = Self::start_point(
                client.clone(),
                clock,
                from_cursor,
                since,
                cfg.clone(),
                &health,
            )
            .await?;
            let plan = PollPlan {
                since: from,
                page_size,
                page_attempts: 6,
                max_backoff: Duration::from_secs(cfg.max_backoff_secs),
                checkpoint_every: Duration::from_secs(cfg.checkpoint_secs),
                replay_until,
            };
            run_poll(&client, &sink, &plan, &health, stop).await
        };
        ctx.spawn(fut.into_actor(self).then(move |res: Result<PollSummary, PollError>, act, _ctx| {
            let completed = act.completed.clone();
            let health = act.health.clone();
            let clock = act.clock.clone();
            let elapsed_ms = (clock.now() - started).num_milliseconds();
            let mut commit = None;
            let delay = match &res {
                Ok(s) => {
                    let new_cursor = next_cursor(act.cursor, s);
                    tracing::info!(
                        actor = "poller",
                        resource_type = act.client.resource_type(),
                        duration_ms = elapsed_ms,
                        pages = s.pages,
                        events = s.events,
                        scored = s.scored,
                        duplicates = s.duplicates,
                        skipped = s.skipped,
                        alerts = s.alerts,
                        sorted = s.sorted,
                        cursor = new_cursor.map(fhir_edge_core::clock::fmt_ms).unwrap_or_default(),
                        "poll complete"
                    );
                    if !s.sorted {
                        tracing::debug!(actor = "poller", "server ignored _sort; cursor still taken from the newest lastUpdated of the whole poll");
                    }
                    commit = Some(CommitCursor { cursor: new_cursor.or(act.cursor), at: clock.now(), poll_complete: true });
                    act.cursor = new_cursor.or(act.cursor);
                    act.since_override = None;
                    act.replay_until = None;
                    if full {
                        act.last_full_reread = Some(started);
                    }
                    act.backoff.reset();
                    act.page_size.completed();
                    Counters::add(&health.counters.polls_completed, 1);
                    health.counters.poll_duration.observe(elapsed_ms as f64 / 1000.0);
                    health.counters.last_poll_ms.store(clock.now().timestamp_millis(), Ordering::Relaxed);
                    if let Some(c) = act.cursor {
                        health.counters.cursor_ms.store(c.timestamp_millis(), Ordering::Relaxed);
                    }
                    if let Some(n) = s.newest {
                        health.counters.newest_event_ms.fetch_max(n.timestamp_millis(), Ordering::Relaxed);
                    }
                    health.set_detail("poller", format!("idle; last poll {} events in {} ms", s.events, elapsed_ms));
                    Duration::from_secs(act.cfg.interval_secs)
                }
                Err(PollError::Stopped) => Duration::ZERO,
                Err(e) => {
                    health.error("poller", e.kind());
                    let expired = matches!(e, PollError::Fetch(crate::client::FetchError::PageExpired(_)));
                    if matches!(e, PollError::Fetch(crate::client::FetchError::TooLarge(_))) {
                        let n = act.page_size.too_large();
                        tracing::warn!(actor = "poller", error_kind = e.kind(), page_size = n, "a page exceeded poller.max_page_bytes; asking for {n} entries per page until polls succeed");
                    }
                    let retry_after = match e {
                        PollError::Fetch(f) => f.retry_after(),
                        _ => None,
                    };
                    let delay = if expired && !act.restart_now {
                        act.restart_now = true;
                        Duration::ZERO
                    } else {
                        act.restart_now = false;
                        act.backoff.next_delay(retry_after)
                    };
                    tracing::warn!(
                        actor = "poller",
                        resource_type = act.client.resource_type(),
                        error_kind = e.kind(),
                        duration_ms = elapsed_ms,
                        retry_in_ms = delay.as_millis() as u64,
                        "poll failed: {e}"
                    );
                    health.set_detail("poller", format!("backing off {} ms after {}", delay.as_millis(), e.kind()));
                    delay
                }
            };
            async move {
                let mut ok = true;
                if let Some(c) = commit {
                    // The cursor moves (with the detector snapshot) only after every page.
                    match completed.send(c).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::warn!(actor = "poller", error_kind = e.kind(), "cursor commit failed: {e}");
                            ok = false;
                        }
                        Err(e) => {
                            tracing::warn!(actor = "poller", error_kind = "mailbox", "cursor commit not delivered: {e}");
                            ok = false;
                        }
                    }
                }
                ok
            }
            .into_actor(act)
            .map(move |ok, act, ctx| {
                act.polling = false;
                act.health.end_step("poller");
                if act.stop.load(Ordering::Relaxed) {
                    return;
                }
                let delay = if ok { delay } else { act.backoff.next_delay(None) };
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
            self.health.progress("poller");
        }
    }
}
