//! Following the server's AuditEvent stream: one poll reads every page of
//! `_lastUpdated=ge{cursor − overlap}` and hands each page to the pipeline, waiting until it
//! is committed. Only a complete poll moves the cursor, to the newest `meta.lastUpdated`
//! seen (server time, never the local clock), so the order the server returns is never
//! trusted. Plain logic here; the actor is in `actor.rs`.

pub mod actor;
mod events;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::client::{check_next, redact_url, FetchError, FhirClient};
use crate::health::{ActorId, Counter, Health};
use crate::pipeline::{BatchReport, PipelineError};
use fhir_edge_core::fhir::Fetched;
use fhir_edge_core::rng::Rng;

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("pipeline failed to commit a page: {0}")]
    Pipeline(#[from] PipelineError),
    #[error("poll interrupted by shutdown")]
    Stopped,
}

impl PollError {
    pub fn kind(&self) -> &'static str {
        match self {
            PollError::Fetch(f) => f.kind(),
            PollError::Pipeline(e) => e.kind(),
            PollError::Stopped => "stopped",
        }
    }
}

/// The `_count` asked of the server: the configured page size, cut to a quarter after a
/// page came back larger than `max_page_bytes` (huge events, or a server ignoring
/// `_count`), and doubled back after each complete poll.
#[derive(Debug, Clone, Copy)]
pub struct PageSizer {
    configured: u32,
    current: u32,
}

impl PageSizer {
    pub fn new(configured: u32) -> Self {
        PageSizer {
            configured,
            current: configured,
        }
    }
    pub fn current(&self) -> u32 {
        self.current
    }
    /// A page was too large: ask for fewer entries next time (never below 1).
    pub fn too_large(&mut self) -> u32 {
        self.current = (self.current / 4).max(1);
        self.current
    }
    /// A poll completed: grow back towards the configured size.
    pub fn completed(&mut self) {
        self.current = self.current.saturating_mul(2).min(self.configured);
    }
}

/// Where pages go: the detector in the daemon, anything in tests.
/// Resolves when a delivered page is committed.
pub type Committed =
    Pin<Box<dyn Future<Output = Result<BatchReport, PipelineError>> + Send + 'static>>;

pub trait PageSink {
    /// Resolves when the page is scored, with a future that resolves when it is committed.
    fn deliver(
        &self,
        events: Vec<Fetched>,
        skipped: u64,
    ) -> Pin<Box<dyn Future<Output = Result<Committed, PipelineError>> + Send + 'static>>;

    /// Every delivered page is committed and the server has returned ascending
    /// `lastUpdated` so far: durably move the cursor to `cursor` in the middle of a poll.
    fn checkpoint(
        &self,
        cursor: DateTime<Utc>,
    ) -> Pin<Box<dyn Future<Output = Result<(), PipelineError>> + Send + 'static>>;
}

#[derive(Debug, Default, Clone)]
pub struct PollSummary {
    pub pages: u64,
    pub events: u64,
    pub scored: u64,
    pub duplicates: u64,
    pub skipped: u64,
    pub alerts: u64,
    /// Newest `meta.lastUpdated` seen in this poll.
    pub newest: Option<DateTime<Utc>>,
    /// Whether the server returned ascending `lastUpdated` across all pages.
    pub sorted: bool,
    /// How the overlap recheck this poll began with came out, when it counted.
    pub recheck: Option<Recheck>,
}

/// Exponential backoff with full jitter, capped.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    rng: Rng,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration, seed: u64) -> Self {
        Backoff {
            base,
            cap,
            attempt: 0,
            rng: Rng::new(seed),
        }
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The next delay: random in [exp/2, exp] where exp = base·2^attempt, capped; a
    /// server-given `Retry-After` wins when it is longer (bounded by the cap).
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let jittered = exp.mul_f64(0.5 + 0.5 * self.rng.f64());
        match retry_after {
            Some(ra) => ra.min(self.cap).max(jittered.min(ra)),
            None => jittered,
        }
    }
}

/// Settings of one poll.
#[derive(Clone)]
pub struct PollPlan {
    pub since: DateTime<Utc>,
    pub page_size: u32,
    /// Attempts per page before the poll is abandoned (it restarts from the cursor later).
    pub page_attempts: u32,
    pub max_backoff: Duration,
    /// Minimum time between checkpoints inside one poll.
    pub checkpoint_every: Duration,
    /// No checkpoint before the poll has re-read up to here (`Loaded::replay_until_ms`).
    pub replay_until: Option<DateTime<Utc>>,
}

/// Fetch one page, retrying transient faults in place with backoff (backing off is progress).
async fn fetch_with_retry(
    client: &FhirClient,
    url: &url::Url,
    is_next: bool,
    plan: &PollPlan,
    health: &Health,
    stop: &AtomicBool,
) -> Result<fhir_edge_core::fhir::Page, PollError> {
    let mut backoff = Backoff::new(
        Duration::from_millis(500),
        plan.max_backoff,
        fhir_edge_core::rng::seed_from_time(),
    );
    loop {
        health.begin_step(ActorId::Poller);
        let started = std::time::Instant::now();
        let res = client.fetch_page(url, is_next).await;
        health.end_step(ActorId::Poller);
        match res {
            Ok(page) => {
                health
                    .counters
                    .page_fetch_duration
                    .observe_duration(started.elapsed());
                tracing::debug!(
                    actor = "poller",
                    duration_ms = started.elapsed().as_millis() as u64,
                    events = page.events.len(),
                    "page fetched"
                );
                return Ok(page);
            }
            Err(e) => {
                health.counters.add(Counter::FetchErrors, 1);
                health.error(ActorId::Poller, e.kind());
                // A too-large page fails the poll at once: the next one asks for fewer.
                if e.is_permanent()
                    || backoff.attempts() + 1 >= plan.page_attempts
                    || stop.load(Ordering::Relaxed)
                {
                    return Err(e.into());
                }
                let delay = backoff.next_delay(e.retry_after());
                tracing::warn!(
                    actor = "poller",
                    error_kind = e.kind(),
                    resource_type = client.resource_type(),
                    retry_in_ms = delay.as_millis() as u64,
                    attempt = backoff.attempts(),
                    "page fetch failed, retrying: {e}"
                );
                sleep_with_progress(delay, health, stop).await;
            }
        }
    }
}

/// The body of the next page, being read while the current one is parsed and scored.
/// Aborted when dropped (a poll that ends or fails leaves nothing running).
struct ReadAhead {
    url: url::Url,
    body: tokio::task::JoinHandle<Result<Vec<u8>, FetchError>>,
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.body.abort();
    }
}

/// Start reading the page at a server-given `next` link (checked like any other).
fn read_ahead(client: &FhirClient, next: Option<&str>) -> Option<ReadAhead> {
    let url = check_next(client.base(), next?).ok()?;
    let (c, u) = (client.clone(), url.clone());
    Some(ReadAhead {
        url,
        body: tokio::spawn(async move { c.fetch_body(&u, true).await }),
    })
}

/// The page at `url`: from the read-ahead when it holds that page, else fetched now with
/// retries. Reading the page after it starts as soon as its link is known, before this one
/// is parsed, so the server's answer and the parsing overlap. The read-ahead is only a head
/// start: if it failed or its body does not parse, the page is fetched again the ordinary
/// way, so faults are retried and reported exactly as without it.
async fn fetch_next_page(
    client: &FhirClient,
    url: &url::Url,
    ahead: &mut Option<ReadAhead>,
    plan: &PollPlan,
    health: &Health,
    stop: &AtomicBool,
) -> Result<fhir_edge_core::fhir::Page, PollError> {
    if let Some(mut a) = ahead.take().filter(|a| a.url == *url) {
        let started = std::time::Instant::now();
        health.begin_step(ActorId::Poller);
        let body = (&mut a.body).await;
        health.end_step(ActorId::Poller);
        if let Ok(Ok(body)) = body {
            *ahead = read_ahead(
                client,
                fhir_edge_core::fhir::peek_next_link(&body).as_deref(),
            );
            if let Ok(page) = client.parse_body(body).await {
                health
                    .counters
                    .page_fetch_duration
                    .observe_duration(started.elapsed());
                let peeked = ahead.as_ref().map(|a| a.url.as_str());
                let next = page
                    .next
                    .as_deref()
                    .and_then(|n| check_next(client.base(), n).ok());
                if peeked != next.as_ref().map(|u| u.as_str()) {
                    // The quick look disagreed with the full parse: trust the parse.
                    *ahead = read_ahead(client, page.next.as_deref());
                }
                return Ok(page);
            }
            *ahead = None;
        }
    }
    let page = fetch_with_retry(client, url, true, plan, health, stop).await?;
    *ahead = read_ahead(client, page.next.as_deref());
    Ok(page)
}

/// Sleep in short steps, marking progress, and return early on shutdown.
pub async fn sleep_with_progress(d: Duration, health: &Health, stop: &AtomicBool) {
    let deadline = tokio::time::Instant::now() + d;
    while tokio::time::Instant::now() < deadline {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        health.progress(ActorId::Poller);
        tokio::time::sleep_until(
            deadline.min(tokio::time::Instant::now() + Duration::from_millis(250)),
        )
        .await;
    }
}

/// Where a poll starts when a cursor exists: the full overlap before it when a recheck is
/// due (`last_full` is when the last full re-read started), else the cursor itself (`ge`, so
/// events tied at the cursor instant are re-read). Returns the start and whether it is full.
pub fn poll_start(
    cursor: DateTime<Utc>,
    now: DateTime<Utc>,
    last_full: Option<DateTime<Utc>>,
    overlap: chrono::Duration,
    recheck: chrono::Duration,
) -> (DateTime<Utc>, bool) {
    let due = last_full.is_none_or(|t| now - t >= recheck);
    if due {
        (cursor - overlap, true)
    } else {
        (cursor, false)
    }
}

/// How a due recheck of the overlap came out ([`recheck_start`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recheck {
    /// The server holds as many events in the overlap as were scored there: none came
    /// late, the poll reads from the cursor.
    Settled,
    /// The counts differ from this instant on: the poll re-reads from it.
    From(DateTime<Utc>),
    /// The server gave no count: the poll re-reads the whole overlap (and later rechecks
    /// do not ask again).
    NoCount,
}

/// The narrowest part of the overlap a recheck tells apart: an eighth of it (15 s of the
/// default 120), found in at most three more counts after the first.
pub const RECHECK_PARTS: i64 = 8;

/// Where a due recheck of the overlap `[from, to)` (to: the cursor) re-reads from. It
/// compares the server's count of events in the window (`server`) with the count of events
/// scored there (`seen`); when they differ it halves the window, keeping the earlier half
/// while that differs, else the later (the counts add up, so the later half differs when
/// the earlier does not), down to `RECHECK_PARTS`. A late commit is an event the server
/// counts and the seen keys do not. An event updated or deleted since it was scored
/// (AuditEvents are meant to be neither) shows as a difference too, and is re-read; one
/// deleted from the same part of the window as a late commit landed in would hide it
/// (`recheck_by_count = false` reads everything). Plain logic: the counts are closures (the
/// server over HTTP, the seen keys in SQLite).
pub async fn recheck_start<E, S, SF, L, LF>(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    mut server: S,
    mut seen: L,
) -> Result<Recheck, E>
where
    S: FnMut(DateTime<Utc>, DateTime<Utc>) -> SF,
    SF: Future<Output = Result<Option<u64>, E>>,
    L: FnMut(DateTime<Utc>, DateTime<Utc>) -> LF,
    LF: Future<Output = Result<u64, E>>,
{
    let Some(total) = server(from, to).await? else {
        return Ok(Recheck::NoCount);
    };
    if total == seen(from, to).await? {
        return Ok(Recheck::Settled);
    }
    let narrowest = ((to - from) / RECHECK_PARTS as i32).max(chrono::Duration::milliseconds(1));
    let (mut lo, mut hi) = (from, to);
    while hi - lo > narrowest {
        let mid = lo + chrono::Duration::milliseconds((hi - lo).num_milliseconds() / 2);
        let Some(n) = server(lo, mid).await? else {
            return Ok(Recheck::From(lo));
        };
        if n != seen(lo, mid).await? {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(Recheck::From(lo))
}

/// Pages read in ascending `lastUpdated` order before a poll may checkpoint its cursor.
pub const CHECKPOINT_MIN_PAGES: u64 = 10;

/// One complete poll: every page from `plan.since`, each delivered and committed before the
/// poll is complete. The next page is fetched and parsed while the previous one is being
/// scored, and the one after it is already being read (`ReadAhead`).
pub async fn run_poll(
    client: &FhirClient,
    sink: &dyn PageSink,
    plan: &PollPlan,
    health: &Health,
    stop: Arc<AtomicBool>,
) -> Result<PollSummary, PollError> {
    let c = health.counters.clone();
    let mut summary = PollSummary {
        sorted: true,
        ..Default::default()
    };
    let mut last_seen: Option<DateTime<Utc>> = None;
    let first = client.first_url(plan.since, plan.page_size);
    let mut page = fetch_with_retry(client, &first, false, plan, health, &stop).await?;
    let mut ahead = read_ahead(client, page.next.as_deref());
    let mut last_checkpoint = std::time::Instant::now();
    // The previous page's commit, running while this page is scored.
    let mut pending: Option<Committed> = None;
    let add = |summary: &mut PollSummary, r: BatchReport| {
        summary.scored += r.scored;
        summary.duplicates += r.duplicates;
        summary.alerts += r.alerts;
    };
    loop {
        // Every page delivered so far is committed here. In a long poll over a sorted server,
        // move the cursor to the newest of them, so a crash does not re-read the whole poll;
        // ties at that instant not yet read are re-read (`ge` and the overlap) and de-duplicated.
        // "Sorted" needs evidence: CHECKPOINT_MIN_PAGES pages in ascending order (a server
        // that ignores `_sort` shows a step back long before), and any step back disables
        // checkpoints for the rest of the poll.
        // After a crash, events committed since the last snapshot are replayed into the
        // detector's context as they are re-read: a snapshot taken before the re-read passed
        // them all would lose them from the baselines.
        if summary.sorted
            && summary.pages >= CHECKPOINT_MIN_PAGES
            && last_checkpoint.elapsed() >= plan.checkpoint_every
        {
            if let Some(newest) = summary
                .newest
                .filter(|n| plan.replay_until.is_none_or(|r| *n >= r))
            {
                if let Some(p) = pending.take() {
                    add(&mut summary, p.await?);
                }
                sink.checkpoint(newest).await?;
                last_checkpoint = std::time::Instant::now();
                tracing::debug!(
                    actor = "poller",
                    cursor = fhir_edge_core::clock::fmt_ms(newest),
                    "checkpoint inside a long poll"
                );
            }
        }
        summary.pages += 1;
        c.add(Counter::PagesFetched, 1);
        for w in &page.warnings {
            tracing::warn!(
                actor = "poller",
                error_kind = "operation_outcome",
                "server attached an OperationOutcome to the search: {w}"
            );
        }
        for (id, reason) in &page.skipped {
            tracing::warn!(
                actor = "poller",
                error_kind = "bad_entry",
                entry = id.as_str(),
                "skipped an entry: {reason}"
            );
        }
        let skipped = page.skipped.len() as u64;
        summary.skipped += skipped;
        summary.events += page.events.len() as u64;
        c.add(Counter::EventsFetched, page.events.len() as u64);
        c.add(Counter::EventsSkipped, skipped);
        for f in &page.events {
            if let Some(lu) = f.record.last_updated {
                if last_seen.is_some_and(|l| lu < l) {
                    summary.sorted = false;
                }
                last_seen = Some(lu);
                summary.newest = Some(summary.newest.map_or(lu, |n| n.max(lu)));
            }
        }
        let next = match page.next.as_deref() {
            Some(n) => Some(check_next(client.base(), n)?),
            None => None,
        };
        let delivery = sink.deliver(std::mem::take(&mut page.events), skipped);
        match next {
            None => {
                let committed = delivery.await?;
                if let Some(p) = pending.take() {
                    add(&mut summary, p.await?);
                }
                add(&mut summary, committed.await?);
                return Ok(summary);
            }
            Some(url) => {
                if stop.load(Ordering::Relaxed) {
                    let committed = delivery.await?;
                    if let Some(p) = pending.take() {
                        p.await?;
                    }
                    committed.await?;
                    return Err(PollError::Stopped);
                }
                let (committed, next_page) = tokio::join!(
                    delivery,
                    fetch_next_page(client, &url, &mut ahead, plan, health, &stop)
                );
                let committed = committed?;
                // This page is scored; wait for the previous one's commit, keep this one's.
                if let Some(p) = pending.replace(committed) {
                    add(&mut summary, p.await?);
                }
                page = next_page.inspect_err(|e| {
                    tracing::warn!(
                        actor = "poller",
                        error_kind = e.kind(),
                        next = redact_url(url.as_str()),
                        "abandoning poll at a page"
                    )
                })?;
            }
        }
    }
}

/// The poller's decisions between polls, as plain state: where the next poll starts, how
/// the cursor moves, how long to wait before the next one and how the page size moves.
/// `PollerActor` holds one and only wires it to the network, the detector and the clock;
/// the unit tests drive it without actix.
#[derive(Debug)]
pub struct PollState {
    /// The committed cursor (newest server `lastUpdated` of a complete poll).
    pub cursor: Option<DateTime<Utc>>,
    /// `--since`: where the first poll starts, once.
    since_override: Option<DateTime<Utc>>,
    /// Until a poll completes: see `PollPlan::replay_until`.
    replay_until: Option<DateTime<Utc>>,
    /// When the last poll that re-read the whole overlap started.
    last_full_reread: Option<DateTime<Utc>>,
    backoff: Backoff,
    /// Set when a paging link expired: the next poll restarts at once, once.
    restart_now: bool,
    page_size: PageSizer,
    interval: Duration,
    overlap: chrono::Duration,
    recheck: chrono::Duration,
    /// Rechecks count before they re-read (`recheck_by_count`, until a server gives no count).
    count_rechecks: bool,
}

/// What one poll is to do, decided when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollStart {
    /// When the poll started (local clock; for the recheck schedule and durations).
    pub started: DateTime<Utc>,
    /// Where to read from when a cursor exists (cursor, or cursor − overlap when full).
    pub from_cursor: Option<DateTime<Utc>>,
    /// `--since`, for the first poll only.
    pub since: Option<DateTime<Utc>>,
    /// Whether this poll rechecks the whole overlap.
    pub full: bool,
    /// With `full`: the overlap `[cursor − overlap, cursor)` to count first
    /// ([`recheck_start`]); `None` re-reads it all (counting off, or a crash's events to
    /// replay, which must be read again).
    pub count_window: Option<(DateTime<Utc>, DateTime<Utc>)>,
    pub page_size: u32,
    pub replay_until: Option<DateTime<Utc>>,
}

/// What follows a failed poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AfterFailure {
    pub delay: Duration,
    /// The page size the next polls ask for, when a page was too large.
    pub page_size_now: Option<u32>,
}

impl PollState {
    pub fn new(
        cursor: Option<DateTime<Utc>>,
        since_override: Option<DateTime<Utc>>,
        replay_until: Option<DateTime<Utc>>,
        cfg: &crate::config::PollerConfig,
        seed: u64,
    ) -> Self {
        PollState {
            cursor,
            since_override,
            replay_until,
            last_full_reread: None,
            backoff: Backoff::new(
                Duration::from_secs(1),
                Duration::from_secs(cfg.max_backoff_secs),
                seed,
            ),
            restart_now: false,
            page_size: PageSizer::new(cfg.page_size),
            interval: Duration::from_secs(cfg.interval_secs),
            overlap: chrono::Duration::seconds(cfg.overlap_secs as i64),
            recheck: chrono::Duration::seconds(cfg.recheck_secs() as i64),
            count_rechecks: cfg.recheck_by_count,
        }
    }

    /// Decide what a poll starting `now` reads.
    pub fn start(&self, now: DateTime<Utc>) -> PollStart {
        let (from_cursor, full) = match self.cursor {
            Some(c) => {
                let (from, full) =
                    poll_start(c, now, self.last_full_reread, self.overlap, self.recheck);
                (Some(from), full)
            }
            None => (None, true),
        };
        let count_window = match (self.cursor, from_cursor) {
            (Some(c), Some(from))
                if full
                    && self.count_rechecks
                    && self.since_override.is_none()
                    && self.replay_until.is_none()
                    && from < c =>
            {
                Some((from, c))
            }
            _ => None,
        };
        PollStart {
            started: now,
            from_cursor,
            since: self.since_override,
            full,
            count_window,
            page_size: self.page_size.current(),
            replay_until: self.replay_until,
        }
    }

    /// A poll completed: move the cursor, forget the one-off start settings, reset the
    /// backoff and grow the page size back. Returns the cursor to commit and the delay
    /// before the next poll.
    pub fn tick_completed(
        &mut self,
        start: &PollStart,
        summary: &PollSummary,
    ) -> (Option<DateTime<Utc>>, Duration) {
        self.cursor = next_cursor(self.cursor, summary);
        self.since_override = None;
        self.replay_until = None;
        if start.full {
            self.last_full_reread = Some(start.started);
        }
        if summary.recheck == Some(Recheck::NoCount) {
            self.count_rechecks = false;
        }
        self.backoff.reset();
        self.page_size.completed();
        (self.cursor, self.interval)
    }

    /// A poll failed: an expired paging link restarts at once (once in a row); a page too
    /// large shrinks the page size; anything else backs off (honouring `Retry-After`).
    pub fn tick_failed(&mut self, e: &PollError) -> AfterFailure {
        if matches!(e, PollError::Stopped) {
            return AfterFailure {
                delay: Duration::ZERO,
                page_size_now: None,
            };
        }
        let page_size_now = matches!(e, PollError::Fetch(FetchError::TooLarge(_)))
            .then(|| self.page_size.too_large());
        let expired = matches!(e, PollError::Fetch(FetchError::PageExpired(_)));
        let delay = if expired && !self.restart_now {
            self.restart_now = true;
            Duration::ZERO
        } else {
            self.restart_now = false;
            let retry_after = match e {
                PollError::Fetch(f) => f.retry_after(),
                _ => None,
            };
            self.backoff.next_delay(retry_after)
        };
        AfterFailure {
            delay,
            page_size_now,
        }
    }

    /// The cursor commit after a complete poll failed: back off before the next poll.
    pub fn tick_commit_failed(&mut self) -> Duration {
        self.backoff.next_delay(None)
    }
}

/// The cursor after a complete poll: the newest `lastUpdated` seen, never moving backwards.
pub fn next_cursor(old: Option<DateTime<Utc>>, summary: &PollSummary) -> Option<DateTime<Utc>> {
    match (old, summary.newest) {
        (Some(o), Some(n)) => Some(o.max(n)),
        (o, n) => o.or(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_honours_retry_after() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30), 1);
        let d1 = b.next_delay(None);
        assert!(d1 >= Duration::from_millis(250) && d1 <= Duration::from_millis(500));
        for _ in 0..20 {
            assert!(b.next_delay(None) <= Duration::from_secs(30));
        }
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30), 1);
        assert_eq!(
            b.next_delay(Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(
            b.next_delay(Some(Duration::from_secs(3600))),
            Duration::from_secs(30),
            "capped"
        );
        b.reset();
        assert_eq!(b.attempts(), 0);
    }

    #[test]
    fn page_size_shrinks_on_huge_pages_and_grows_back() {
        let mut p = PageSizer::new(200);
        assert_eq!(p.too_large(), 50);
        assert_eq!(p.too_large(), 12);
        assert_eq!(p.too_large(), 3);
        assert_eq!(p.too_large(), 1);
        assert_eq!(p.too_large(), 1, "never zero");
        p.completed();
        assert_eq!(p.current(), 2);
        for _ in 0..10 {
            p.completed();
        }
        assert_eq!(p.current(), 200, "capped at the configured size");
    }

    #[test]
    fn the_full_overlap_is_reread_when_a_recheck_is_due() {
        let t = |s: i64| DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap();
        let (o, r) = (
            chrono::Duration::seconds(120),
            chrono::Duration::seconds(30),
        );
        // First poll of the process: full.
        assert_eq!(poll_start(t(1000), t(1001), None, o, r), (t(880), true));
        // 10 s after a full re-read: from the cursor.
        assert_eq!(
            poll_start(t(1000), t(1011), Some(t(1001)), o, r),
            (t(1000), false)
        );
        // 30 s after: full again.
        assert_eq!(
            poll_start(t(1000), t(1031), Some(t(1001)), o, r),
            (t(880), true)
        );
        // recheck 0: always full.
        assert!(poll_start(t(1000), t(1001), Some(t(1001)), o, chrono::Duration::zero()).1);
    }

    /// `recheck_start` against a server holding events at `server` (seconds) of which the
    /// seen keys hold those at `seen`; `counts`: whether the server answers counts. Returns
    /// the outcome and the number of counts asked of the server.
    fn recheck(server: &[i64], seen: &[i64], counts: bool) -> (Recheck, usize) {
        let t = |s: i64| DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap();
        let within = |v: &[i64], a: DateTime<Utc>, b: DateTime<Utc>| {
            v.iter().filter(|s| (a..b).contains(&t(**s))).count() as u64
        };
        let asked = std::cell::Cell::new(0);
        let r = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(recheck_start::<(), _, _, _, _>(
                t(880),
                t(1000),
                |a, b| {
                    asked.set(asked.get() + 1);
                    std::future::ready(Ok(counts.then(|| within(server, a, b))))
                },
                |a, b| std::future::ready(Ok(within(seen, a, b))),
            ))
            .unwrap();
        (r, asked.get())
    }

    #[test]
    fn a_recheck_reads_from_the_narrowest_part_of_the_overlap_whose_count_differs() {
        let t = |s: i64| DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap();
        let scored: Vec<i64> = (880..1000).step_by(2).collect();
        // Everything scored: one count, nothing to re-read.
        assert_eq!(recheck(&scored, &scored, true), (Recheck::Settled, 1));
        // A late commit at 955 (75 s into the 120 s overlap): halves [880, 940) agree,
        // [940, 970) differs, [940, 955) agrees: re-read from 955, the start of the
        // narrowest part (15 s, an eighth) holding it, after 1 + 3 counts.
        let mut late = scored.clone();
        late.push(955);
        assert_eq!(recheck(&late, &scored, true), (Recheck::From(t(955)), 4));
        // Two: the earlier decides.
        late.push(883);
        assert_eq!(recheck(&late, &scored, true).0, Recheck::From(t(880)));
        // An event updated since it was scored (the server holds it past the cursor now):
        // its old place differs, so it is re-read from there.
        let mut moved = scored.clone();
        moved.retain(|s| *s != 900);
        moved.push(1010);
        assert_eq!(recheck(&moved, &scored, true).0, Recheck::From(t(895)));
        // No count from the server: the whole overlap.
        assert_eq!(recheck(&late, &scored, false), (Recheck::NoCount, 1));
    }

    #[test]
    fn only_a_due_recheck_with_counting_on_and_nothing_to_replay_counts() {
        let t = |s: i64| DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap();
        let mut st = state(Some(t(1000)));
        let start = st.start(t(1001));
        assert_eq!(start.count_window, Some((t(880), t(1000))));
        // A server without counts: later rechecks read the overlap.
        let summary = PollSummary {
            newest: Some(t(1000)),
            recheck: Some(Recheck::NoCount),
            ..Default::default()
        };
        st.tick_completed(&start, &summary);
        let later = st.start(t(1040));
        assert!(later.full);
        assert_eq!(
            (later.count_window, later.from_cursor),
            (None, Some(t(880)))
        );
        // Events to replay after a crash are read, never counted.
        let cfg = crate::config::PollerConfig::default();
        let replaying = PollState::new(Some(t(1000)), None, Some(t(990)), &cfg, 7);
        assert_eq!(replaying.start(t(1001)).count_window, None);
        // Counting off.
        let off = crate::config::PollerConfig {
            recheck_by_count: false,
            ..Default::default()
        };
        assert_eq!(
            PollState::new(Some(t(1000)), None, None, &off, 7)
                .start(t(1001))
                .count_window,
            None
        );
        // No cursor yet: nothing to count against.
        assert_eq!(state(None).start(t(1001)).count_window, None);
    }

    fn state(cursor: Option<DateTime<Utc>>) -> PollState {
        let cfg = crate::config::PollerConfig {
            overlap_secs: 120,
            recheck_secs: Some(30),
            interval_secs: 5,
            page_size: 200,
            max_backoff_secs: 60,
            ..Default::default()
        };
        PollState::new(cursor, None, None, &cfg, 7)
    }

    #[test]
    fn a_complete_poll_moves_the_cursor_and_schedules_the_next_at_the_interval() {
        let t = |s: i64| DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap();
        let mut st = state(Some(t(1000)));
        let start = st.start(t(1001));
        assert_eq!(
            start.from_cursor,
            Some(t(880)),
            "first poll re-reads the overlap"
        );
        assert!(start.full);
        let summary = PollSummary {
            newest: Some(t(1100)),
            ..Default::default()
        };
        assert_eq!(
            st.tick_completed(&start, &summary),
            (Some(t(1100)), Duration::from_secs(5))
        );
        // 10 s later no recheck is due: from the cursor itself.
        let next = st.start(t(1011));
        assert_eq!((next.from_cursor, next.full), (Some(t(1100)), false));
    }

    #[test]
    fn failures_back_off_shrink_pages_and_restart_an_expired_link_once() {
        let mut st = state(None);
        let big = PollError::Fetch(FetchError::TooLarge(50_000_000));
        let after = st.tick_failed(&big);
        assert_eq!(after.page_size_now, Some(50));
        assert!(after.delay > Duration::ZERO);
        assert_eq!(st.start(Utc::now()).page_size, 50);
        let expired = PollError::Fetch(FetchError::PageExpired(410));
        assert_eq!(
            st.tick_failed(&expired).delay,
            Duration::ZERO,
            "restart at once"
        );
        assert!(
            st.tick_failed(&expired).delay > Duration::ZERO,
            "but not twice in a row"
        );
        assert_eq!(st.tick_failed(&PollError::Stopped).delay, Duration::ZERO);
        // A complete poll resets the backoff and grows the page size back.
        let start = st.start(Utc::now());
        st.tick_completed(&start, &PollSummary::default());
        assert_eq!(st.start(Utc::now()).page_size, 100);
    }

    #[test]
    fn cursor_never_moves_back() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let s = PollSummary {
            newest: Some(t("2024-01-01T00:00:00Z")),
            ..Default::default()
        };
        assert_eq!(
            next_cursor(Some(t("2024-02-01T00:00:00Z")), &s),
            Some(t("2024-02-01T00:00:00Z"))
        );
        assert_eq!(next_cursor(None, &s), Some(t("2024-01-01T00:00:00Z")));
        assert_eq!(
            next_cursor(Some(t("2023-01-01T00:00:00Z")), &s),
            Some(t("2024-01-01T00:00:00Z"))
        );
        assert_eq!(next_cursor(None, &PollSummary::default()), None);
    }
}
