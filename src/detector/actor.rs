//! `DetectorActor`: de-duplicates a fetched page against the state store (read on its own
//! connection, so it does not wait for the commit of the previous page) and the pages still
//! being committed, extracts features and scores the new events off the actor thread
//! (`spawn_blocking`), hands the results to the alert sink and answers with a ticket that
//! resolves when they are committed: the sink commits page k while page k+1 is scored.
//! Handlers are atomic, so pages (polled or pushed) are scored strictly in order and the
//! context state sees every event once. On a model or pipeline error the page fails as a whole and
//! the poller retries it later; nothing is half-committed.

use std::sync::{Arc, Mutex};

use actix::prelude::*;

use crate::health::{ActorId, Counter, Health, Heartbeat};
use crate::pipeline::{
    BatchReport, CommitCursor, CommitTicket, EventsFetched, Flush, PipelineError, Scored,
};
use crate::state::actor::{CommitPoll, FilterKeys, NotePoll, SnapshotPoint};
use fhir_edge_core::detector::Detector;
use fhir_edge_core::state::{PollCommit, SeenKey};

/// Event keys, hashed with FNV (SipHash showed in profiles: a page adds and removes a
/// thousand keys on the actor thread).
type KeySet = std::collections::HashSet<
    String,
    std::hash::BuildHasherDefault<fhir_edge_core::detector::features::Fnv64>,
>;

pub struct DetectorActor {
    detector: Arc<Mutex<Detector>>,
    state_filter: Recipient<FilterKeys>,
    state_commit: Recipient<CommitPoll>,
    state_point: Recipient<SnapshotPoint>,
    state_poll: Recipient<NotePoll>,
    sink: Recipient<Scored>,
    flush: Recipient<Flush>,
    health: Health,
    overlap_ms: i64,
    retention_ms: i64,
    /// Keys scored and handed to the sink but not yet committed.
    inflight: Arc<Mutex<KeySet>>,
    /// Whether the journal was told that the model cannot use the care context (once).
    care_unused_said: bool,
    snapshots: super::SnapshotPlan,
    last_snapshot: Option<super::LastSnapshot>,
    /// Events scored into the context since the last snapshot was encoded.
    since_snapshot: Arc<std::sync::atomic::AtomicU64>,
    /// Held while a snapshot is written and committed (one at a time); `SnapshotsWritten`
    /// waits on it.
    writing: Arc<tokio::sync::Mutex<()>>,
}

/// Where the detector sends its work: the state actor (seen keys, the cursor commit) and
/// the alert sink (scored events, then a flush before each commit).
pub struct DetectorLinks {
    pub state_filter: Recipient<FilterKeys>,
    pub state_commit: Recipient<CommitPoll>,
    pub state_point: Recipient<SnapshotPoint>,
    pub state_poll: Recipient<NotePoll>,
    pub sink: Recipient<Scored>,
    pub flush: Recipient<Flush>,
}

impl DetectorActor {
    pub fn new(
        detector: Detector,
        links: DetectorLinks,
        health: Health,
        overlap_secs: u64,
        retention_days: u32,
        snapshots: super::SnapshotPlan,
    ) -> Self {
        let DetectorLinks {
            state_filter,
            state_commit,
            state_point,
            state_poll,
            sink,
            flush,
        } = links;
        DetectorActor {
            detector: Arc::new(Mutex::new(detector)),
            state_filter,
            state_commit,
            state_point,
            state_poll,
            sink,
            flush,
            health,
            overlap_ms: overlap_secs as i64 * 1000,
            retention_ms: retention_days as i64 * 86_400_000,
            inflight: Arc::default(),
            care_unused_said: false,
            snapshots,
            last_snapshot: None,
            since_snapshot: Arc::default(),
            writing: Arc::default(),
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
    type Result = AtomicResponse<Self, Result<CommitTicket, PipelineError>>;

    fn handle(&mut self, msg: EventsFetched, _: &mut Self::Context) -> Self::Result {
        let detector = self.detector.clone();
        let filter = self.state_filter.clone();
        let sink = self.sink.clone();
        let health = self.health.clone();
        let inflight = self.inflight.clone();
        let since_snapshot = self.since_snapshot.clone();
        let fut = async move {
            health.begin_step(ActorId::Detector);
            let started = std::time::Instant::now();
            // Keys of pages scored but not yet committed are checked *before* the store is
            // read: the filter reads committed keys on its own connection, and a key leaves
            // the in-flight set only after its commit is visible. Checked the other way
            // round, a commit landing between the two looks would make a key look new.
            let pending: Vec<bool> = {
                let inflight = inflight.lock().unwrap_or_else(|p| p.into_inner());
                msg.events
                    .iter()
                    .map(|f| inflight.contains(&f.record.key))
                    .collect()
            };
            let keys = msg
                .events
                .iter()
                .map(|f| SeenKey {
                    at_ms: f.record.seen_at_ms(),
                    key: f.record.key.clone(),
                })
                .collect();
            let mut statuses = filter.send(FilterKeys { keys }).await??;
            for (s, pending) in statuses.iter_mut().zip(pending) {
                if pending {
                    *s = fhir_edge_core::state::KeyStatus::Seen;
                }
            }
            let duplicates = statuses
                .iter()
                .filter(|s| **s != fhir_edge_core::state::KeyStatus::New)
                .count() as u64;
            let batch: Vec<_> = msg.events.into_iter().zip(statuses).collect();
            let (scored, coverage, forgotten, outside, joined) =
                tokio::task::spawn_blocking(move || {
                    let mut d = detector.lock().unwrap_or_else(|p| p.into_inner());
                    let scored = d.process(batch)?;
                    let outside = d.context().site_outside_rate();
                    let (forgotten, joined) = (d.take_forgotten(), d.take_joined());
                    Ok::<_, PipelineError>((scored, d.coverage(), forgotten, outside, joined))
                })
                .await
                .map_err(|e| PipelineError::Task(e.to_string()))??;
            say_coverage(&health, coverage);
            say_forgotten(&health, forgotten);
            say_joined(&health, joined);
            say_care_reach(&health, outside);
            let n = scored.len() as u64;
            since_snapshot.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            let passed = scored.iter().filter(|e| e.passed_over).count() as u64;
            let held = scored.iter().filter(|e| e.held).count() as u64;
            health.counters.add(Counter::AlertsHeldLearning, held);
            health.counters.add(Counter::EventsModelScored, n - passed);
            health.counters.add(Counter::EventsPassedOver, passed);
            let scoring_ms = started.elapsed().as_millis() as u64;
            health
                .counters
                .scoring_duration
                .observe_duration(started.elapsed());
            health
                .counters
                .batch_size
                .observe(n as f64 + duplicates as f64);
            let keys: Vec<String> = scored
                .iter()
                .map(|e| e.fetched.record.key.clone())
                .collect();
            inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(keys.iter().cloned());
            // Enqueued now, in page order; the sink commits while the next page is scored.
            let commit = sink.send(Scored {
                events: scored,
                duplicates,
                skipped: msg.skipped,
            });
            tracing::debug!(
                actor = "detector",
                events = n,
                duplicates,
                duration_ms = scoring_ms,
                "page scored"
            );
            // Watched by its own task, so the in-flight keys are released when the commit
            // ends even if nobody waits for the ticket (a poll abandoned at the next page).
            let (tx, rx) = tokio::sync::oneshot::channel();
            actix_rt::spawn(async move {
                let res = commit.await;
                let mut set = inflight.lock().unwrap_or_else(|p| p.into_inner());
                for k in &keys {
                    set.remove(k);
                }
                drop(set);
                let report = match res {
                    Ok(Ok(committed)) => {
                        health.counters.add(Counter::EventsDuplicate, duplicates);
                        Ok(BatchReport {
                            scored: committed.events_committed,
                            duplicates,
                            alerts: committed.alerts_inserted.len() as u64,
                        })
                    }
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(PipelineError::from(e)),
                };
                let _ = tx.send(report);
            });
            Ok(CommitTicket(Box::pin(async move {
                rx.await
                    .map_err(|_| PipelineError::Mailbox("commit watcher dropped".into()))?
            })))
        };
        let health = self.health.clone();
        AtomicResponse::new(Box::pin(fut.into_actor(self).map(
            move |res: Result<CommitTicket, PipelineError>, _, _| {
                health.end_step(ActorId::Detector);
                if let Err(e) = &res {
                    health.error(ActorId::Detector, e.kind());
                    tracing::warn!(
                        actor = "detector",
                        error_kind = e.kind(),
                        "page not scored: {e}"
                    );
                }
                res
            },
        )))
    }
}

/// The cursor commit is made in two parts. Inside the handler (the pipeline waits): the
/// pages scored so far are committed (`Flush`), the store's commit sequence read
/// (`SnapshotPoint`) and the context encoded. After it (the pipeline goes on): the encoding
/// is written to its file and committed with the cursor, one snapshot at a time. A failure
/// there is logged and counted and leaves the previous snapshot and cursor in place; the
/// next checkpoint tries again.
impl Handler<CommitCursor> for DetectorActor {
    type Result = AtomicResponse<Self, Result<(), PipelineError>>;

    fn handle(&mut self, msg: CommitCursor, _: &mut Self::Context) -> Self::Result {
        let now = std::time::Instant::now();
        let guard = self.writing.clone().try_lock_owned().ok();
        let due = super::snapshot_due(
            self.last_snapshot,
            now,
            self.snapshots.every,
            msg.poll_complete,
            guard.is_none(),
            self.since_snapshot
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        let in_poll = !msg.poll_complete;
        // The right to write: just taken, or the write in flight awaited (end of a catch-up).
        let guard = match due {
            super::SnapshotDue::Skip => None,
            super::SnapshotDue::Now => guard.map(Writing::Held),
            super::SnapshotDue::AfterWrite => Some(Writing::Awaited(self.writing.clone())),
        };
        let Some(guard) = guard else {
            // No snapshot: the cursor stays with the last one; a complete poll is still
            // recorded, so `status` does not show a stale last poll.
            let note = self.state_poll.clone();
            let at_ms = msg.at.timestamp_millis();
            let complete = msg.poll_complete;
            return AtomicResponse::new(Box::pin(
                async move {
                    if complete {
                        note.send(NotePoll { at_ms }).await??;
                    }
                    Ok(())
                }
                .into_actor(self),
            ));
        };
        let detector = self.detector.clone();
        let health = self.health.clone();
        let since_snapshot = self.since_snapshot.clone();
        let (flush, point) = (self.flush.clone(), self.state_point.clone());
        let write = SnapshotWrite {
            commit: self.state_commit.clone(),
            health: self.health.clone(),
            dir: self.snapshots.dir.clone(),
            overlap_ms: self.overlap_ms,
            retention_ms: self.retention_ms,
            msg,
        };
        let fut = async move {
            let guard = guard.hold().await;
            // Every page scored so far (polled or pushed) is committed before the snapshot.
            flush.send(Flush).await?;
            let seq = point.send(SnapshotPoint).await?;
            let started = std::time::Instant::now();
            let (bytes, care_reach) = tokio::task::spawn_blocking(move || {
                let mut d = detector.lock().unwrap_or_else(|p| p.into_inner());
                let reach = d.context().care_reach();
                since_snapshot.store(0, std::sync::atomic::Ordering::Relaxed);
                (d.snapshot(), reach)
            })
            .await
            .map_err(|e| PipelineError::Task(e.to_string()))?;
            let encoded = bytes.len();
            health
                .counters
                .snapshot_encode_duration
                .observe_duration(started.elapsed());
            actix_rt::spawn(async move {
                write.run(seq, bytes, care_reach).await;
                drop(guard);
            });
            Ok(encoded)
        };
        AtomicResponse::new(Box::pin(fut.into_actor(self).map(move |res, act, _| {
            res.map(|bytes| {
                act.last_snapshot = Some(super::LastSnapshot {
                    at: now,
                    bytes,
                    in_poll,
                });
            })
        })))
    }
}

/// The right to write a snapshot (one at a time): held already, or to be awaited.
enum Writing {
    Held(tokio::sync::OwnedMutexGuard<()>),
    Awaited(Arc<tokio::sync::Mutex<()>>),
}

impl Writing {
    async fn hold(self) -> tokio::sync::OwnedMutexGuard<()> {
        match self {
            Writing::Held(g) => g,
            Writing::Awaited(m) => m.lock_owned().await,
        }
    }
}

/// A snapshot's second part: its file, then the commit that pairs it with the cursor.
struct SnapshotWrite {
    commit: Recipient<CommitPoll>,
    health: Health,
    dir: std::path::PathBuf,
    overlap_ms: i64,
    retention_ms: i64,
    msg: CommitCursor,
}

impl SnapshotWrite {
    async fn run(self, seq: i64, bytes: Vec<u8>, care_reach: fhir_edge_core::state::CareReach) {
        let started = std::time::Instant::now();
        let dir = self.dir.clone();
        let res: Result<(), PipelineError> = async {
            let file = tokio::task::spawn_blocking(move || {
                fhir_edge_core::state::Store::write_snapshot(&dir, seq, &bytes)
            })
            .await
            .map_err(|e| PipelineError::Task(e.to_string()))??;
            let now = self.msg.at.timestamp_millis();
            let cursor_ms = self.msg.cursor.map(|c| c.timestamp_millis());
            self.commit
                .send(CommitPoll(PollCommit {
                    cursor_ms,
                    at_ms: now,
                    poll_complete: self.msg.poll_complete,
                    snapshot: Some(file),
                    care_reach: Some(care_reach),
                    // Keys older than the re-read window (plus an hour of margin) never come back.
                    prune_seen_before_ms: cursor_ms
                        .map_or(i64::MIN, |c| c - self.overlap_ms - 3_600_000),
                    prune_alerts_before_ms: now - self.retention_ms,
                }))
                .await??;
            Ok(())
        }
        .await;
        self.health
            .counters
            .snapshot_write_duration
            .observe_duration(started.elapsed());
        if let Err(e) = res {
            self.health.error(ActorId::Detector, e.kind());
            tracing::warn!(
                actor = "detector",
                error_kind = e.kind(),
                "snapshot not saved ({e}); the previous one and its cursor stay, the next checkpoint tries again"
            );
        }
    }
}

/// Request: answer once the snapshot being written (if any) is committed (at shutdown,
/// so a restart starts from the newest one).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SnapshotsWritten;

impl Handler<SnapshotsWritten> for DetectorActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: SnapshotsWritten, _: &mut Self::Context) -> Self::Result {
        let writing = self.writing.clone();
        Box::pin(async move {
            drop(writing.lock().await);
        })
    }
}

impl Handler<Heartbeat> for DetectorActor {
    type Result = ();
    fn handle(&mut self, _: Heartbeat, _: &mut Self::Context) {
        self.health.progress(ActorId::Detector);
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

/// Request: keep (`true`) the events folded into the context from now on, for the handover
/// to a site model about to be trained from the server's history (sent before the history
/// is read); `false`: drop them (the training failed). See `detector::handover` in the core.
#[derive(Message)]
#[rtype(result = "()")]
pub struct KeepForHandover(pub bool);

impl Handler<KeepForHandover> for DetectorActor {
    type Result = ();

    fn handle(&mut self, msg: KeepForHandover, _: &mut Self::Context) {
        self.detector
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keep_for_handover(msg.0);
    }
}

/// Request: score with the site's own model from the next page on (trained at the end of
/// learning); learning ends. The context becomes the model's baselines (`site`), with the
/// events followed since they were learned folded in again; when it cannot (see
/// `detector::handover::Kept`), the followed context is kept and the journal says why.
#[derive(Message)]
#[rtype(result = "()")]
pub struct UseSiteModel {
    pub model: fhir_edge_core::detector::model::Model,
    pub site: Option<fhir_edge_core::detector::handover::SiteBaselines>,
}

impl Handler<UseSiteModel> for DetectorActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: UseSiteModel, _: &mut Self::Context) -> Self::Result {
        let (detector, health) = (self.detector.clone(), self.health.clone());
        Box::pin(async move {
            // Folding the events in again is blocking work, off the actor's thread; pages
            // are scored under the same lock, so the switch falls between two pages.
            let handed = match tokio::task::spawn_blocking(move || {
                detector
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .use_site_model(msg.model, msg.site)
            })
            .await
            {
                Ok(handed) => handed,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // Cancelled: the runtime is shutting down, nothing is left to switch.
                Err(_) => return,
            };
            health.set_learning(None);
            say_handover(&health, handed);
        })
    }
}

/// Count and say how learning ended (`DetectorActor`'s `UseSiteModel`): the baselines
/// taken over with `Ok(replayed)` events folded in again, or why the followed context was
/// kept.
fn say_handover(health: &Health, handed: Result<usize, fhir_edge_core::detector::handover::Kept>) {
    match handed {
        Ok(replayed) => {
            health.counters.add(Counter::SiteBaselinesAdopted, 1);
            tracing::info!(
                actor = "detector",
                replayed,
                "learning is over: scoring with the site's own model from its baselines (what \
                 it alerted on in the learning days is not learned as normal), the {replayed} \
                 events followed since they were learned folded in again; every kind of alert \
                 is raised"
            );
        }
        Err(why) => {
            health.counters.add(Counter::SiteBaselinesNotAdopted, 1);
            tracing::warn!(
                actor = "detector",
                error_kind = why.kind(),
                "learning is over: scoring with the site's own model, every kind of alert is \
                 raised; the context followed while learning is kept, not the model's \
                 baselines, because {why}: what alerted in the learning days stays learned as \
                 normal until the next training"
            );
        }
    }
}

/// Request: what the detector has learned of one user (`/api/users`), read off the actor
/// thread (the lock is held while a page is scored).
#[derive(Message)]
#[rtype(result = "Option<fhir_edge_core::detector::features::UserProfile>")]
pub struct UserCard(pub String);

impl Handler<UserCard> for DetectorActor {
    type Result = ResponseFuture<Option<fhir_edge_core::detector::features::UserProfile>>;

    fn handle(&mut self, msg: UserCard, _: &mut Self::Context) -> Self::Result {
        let detector = self.detector.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                detector
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .context()
                    .user_profile(&msg.0)
            })
            .await
            .ok()
            .flatten()
        })
    }
}

/// Say each user who joined a peer group (a reference, never a name), and count them all.
fn say_joined(
    health: &Health,
    (joined, unsaid): (Vec<fhir_edge_core::detector::features::Joined>, u64),
) {
    for j in &joined {
        tracing::info!(
            actor = "detector",
            user = %j.user,
            group = j.group,
            "{} now reads as working in peer group {}: {} of their first {} opens of patients went to its patients (their events name no department)",
            j.user,
            j.group,
            j.to_group,
            j.opens
        );
    }
    if unsaid > 0 {
        tracing::info!(
            actor = "detector",
            unsaid,
            "{unsaid} more users joined a peer group in this batch (not listed)"
        );
    }
    health
        .counters
        .add(Counter::PeerGroupsJoined, joined.len() as u64 + unsaid);
}

/// Count what the detector's memory bounds made it forget, and say so in the journal when
/// users or patients go (the pairs' generations turn over routinely: counted only), and
/// the first time in a process a network counts too many departments or fanned-out
/// searches are forgotten.
fn say_forgotten(health: &Health, f: fhir_edge_core::detector::features::Forgotten) {
    use fhir_edge_core::detector::features::{
        MAX_NETWORK_DEPTS, MAX_PATIENTS, MAX_REQUESTS, MAX_USERS,
    };
    health.counters.add(Counter::ContextUsersForgotten, f.users);
    health
        .counters
        .add(Counter::ContextPatientsForgotten, f.patients);
    health.counters.add(Counter::ContextPairsForgotten, f.pairs);
    // Bounds said once a process, the first time they bite (their counts are in /metrics).
    let once = [
        (
            f.network_depts,
            Counter::ContextNetworkDeptsUncounted,
            "network_depts_full",
            MAX_NETWORK_DEPTS,
            (|| {
                format!(
                    "a network is used by more than {MAX_NETWORK_DEPTS} departments: it \
                     reads as shared, never as one department's own (foreign_network), and \
                     the later ones are not counted (context_network_depts_uncounted in \
                     /metrics)"
                )
            }) as fn() -> String,
        ),
        (
            f.requests,
            Counter::ContextRequestsForgotten,
            "requests_full",
            MAX_REQUESTS,
            || {
                format!(
                    "more than {MAX_REQUESTS} searches written once per patient in their \
                     results began within ten minutes: the older half is forgotten, and a \
                     later event of one reads as a new search, whose listing may alert \
                     again (context_requests_forgotten in /metrics)"
                )
            },
        ),
    ];
    for (n, counter, kind, limit, what) in once {
        if n > 0 && health.counters.get(counter) == 0 {
            tracing::warn!(actor = "detector", error_kind = kind, limit, "{}", what());
        }
        health.counters.add(counter, n);
    }
    for (n, what, bound) in [
        (f.users, "users", MAX_USERS),
        (f.patients, "patients", MAX_PATIENTS),
    ] {
        if n > 0 {
            tracing::warn!(
                actor = "detector",
                error_kind = "context_bound",
                forgotten = n,
                bound,
                "the detector's memory holds at most {bound} {what}: it forgot the {n} seen least recently (they start again as new)"
            );
        }
    }
}

/// Say in the journal, once each time it changes (and at the first page of a process when
/// it holds), that the care context describes almost nobody's work, and count it: a
/// watched record is then read from the department's history, as without a context.
fn say_care_reach(health: &Health, site_outside_rate: f32) {
    use fhir_edge_core::detector::features::{describes_nobody, SITE_CARE_BLIND_RATE};
    let now = describes_nobody(site_outside_rate);
    let before = health.set_care_describes_nobody(now);
    let percent = (site_outside_rate * 100.0).round();
    match (before, now) {
        (Some(true), true) | (Some(false) | None, false) => {}
        (_, true) => {
            health.counters.add(Counter::CareContextDescribesNobody, 1);
            tracing::warn!(
                actor = "detector",
                error_kind = "care_context_describes_nobody",
                outside_percent = percent,
                "the care context describes almost nobody's work: {percent}% of the staff's \
                 accesses fall outside every relationship it knows (at {}% or more it is not \
                 believed): a watched record is read from the department's history, as \
                 without a context. Check that the server's Encounters, CareTeams and \
                 appointments name the Practitioners and units the audit trail's users are",
                (SITE_CARE_BLIND_RATE * 100.0).round()
            );
        }
        (Some(true), false) => tracing::info!(
            actor = "detector",
            outside_percent = percent,
            "the care context describes the staff's work again ({percent}% of accesses outside \
             every relationship it knows): a watched record opened outside one counts again"
        ),
    }
}

/// Keep what the scored events carried for `/api/stats`, and say it in the journal once
/// enough events show it (a warning when some evidence never comes).
fn say_coverage(health: &Health, now: fhir_edge_core::coverage::Coverage) {
    use fhir_edge_core::coverage::ENOUGH;
    let before = health.set_coverage(now);
    if before.events < ENOUGH && now.events >= ENOUGH {
        if now.blind().is_empty() {
            tracing::info!(
                actor = "detector",
                "the audit trail feeds every signal: {}",
                now.summary()
            );
        } else {
            tracing::warn!(
                actor = "detector",
                error_kind = "signals_blind",
                "the audit trail leaves some signals blind: {}",
                now.summary()
            );
        }
    }
}

impl Handler<crate::pipeline::UseCare> for DetectorActor {
    type Result = AtomicResponse<Self, ()>;

    /// Swapped under the scoring lock, off the actor thread, between two pages.
    fn handle(&mut self, msg: crate::pipeline::UseCare, _: &mut Self::Context) -> Self::Result {
        let detector = self.detector.clone();
        let fut = async move {
            let used = tokio::task::spawn_blocking(move || {
                detector
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .set_care(Some(msg.0))
            })
            .await;
            used.unwrap_or(true)
        };
        let fut = fut.into_actor(self).map(|used, act, _| {
            // Kept for a later model trained with it; said once.
            if !used && !std::mem::replace(&mut act.care_unused_said, true) {
                crate::detector::say_care_unused();
            }
        });
        AtomicResponse::new(Box::pin(fut))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhir_edge_core::clock::ManualClock;

    #[test]
    fn a_care_context_that_describes_nobody_is_said_once_each_time_it_turns() {
        let h = Health::new(std::sync::Arc::new(ManualClock::new(chrono::Utc::now())));
        let said = || h.counters.get(Counter::CareContextDescribesNobody);
        say_care_reach(&h, 0.3);
        assert_eq!(said(), 0, "a context that describes the work says nothing");
        say_care_reach(&h, 0.9);
        say_care_reach(&h, 0.95);
        assert_eq!(said(), 1, "said when it turns, not for every page");
        say_care_reach(&h, 0.5);
        say_care_reach(&h, 0.85);
        assert_eq!(said(), 2, "and again when it turns back");
        let fresh = Health::new(std::sync::Arc::new(ManualClock::new(chrono::Utc::now())));
        say_care_reach(&fresh, 0.9);
        assert_eq!(
            fresh.counters.get(Counter::CareContextDescribesNobody),
            1,
            "a process that starts on such a context says it at its first page"
        );
    }
}
