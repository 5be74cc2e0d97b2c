//! The detector in the daemon: `actor.rs` holds `DetectorActor`, which de-duplicates pages
//! against the state store and the pages still in flight, and runs the core's
//! [`fhir_edge_core::detector::Detector`] off the actor thread.

pub mod actor;

use std::path::Path;
use std::time::{Duration, Instant};

use fhir_edge_core::detector::baselines::{self, BaselinesError, PassOver};
use fhir_edge_core::detector::features::Context;

/// The last snapshot taken: when, how large its encoding was, and whether it was a
/// checkpoint inside a poll (a catch-up's) rather than the end of one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LastSnapshot {
    pub at: Instant,
    pub bytes: usize,
    pub in_poll: bool,
}

/// What a cursor commit does about the detector's snapshot (`snapshot_due`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SnapshotDue {
    /// None: the cursor stays with the last snapshot.
    Skip,
    Now,
    /// One, once the snapshot being written is on disk.
    AfterWrite,
}

/// A snapshot this large or larger is a large site's (65 MB at 30,000 staff): taken every
/// `checkpoint_secs` it would write hundreds of GB a day to the edge machine's disk and hold
/// scoring for a few hundred ms each time, whatever the event rate. Such a site's next
/// complete-poll snapshot waits for `LARGE_SNAPSHOT_EVENTS` new events or
/// `LARGE_SNAPSHOT_INTERVALS` checkpoint intervals, whichever comes first.
pub(crate) const LARGE_SNAPSHOT_BYTES: usize = 8 << 20;
pub(crate) const LARGE_SNAPSHOT_EVENTS: u64 = 50_000;
pub(crate) const LARGE_SNAPSHOT_INTERVALS: u32 = 30;

/// Whether a cursor commit takes a new snapshot of the detector's context, or is skipped:
/// never while the previous one is still being written (`writing`); at the end of a
/// complete poll at most one every `every` (`[poller] checkpoint_secs`), and for a large
/// snapshot only once enough has changed (`LARGE_SNAPSHOT_*`; `events` scored since the
/// last). Checkpoints inside a long poll are paced by the poller itself, and the end of
/// such a poll (a catch-up) always takes one, after the one being written if need be: the
/// encoding holds scoring for a few hundred ms at a large site, and there the events are
/// old already, while in the polls that follow every such stall is detection latency.
/// Skipping is safe: the committed cursor and snapshot stay a pair, and a restart replays
/// into the context what was committed after them (`KeyStatus::Replay`) while it re-reads
/// from that cursor.
pub(crate) fn snapshot_due(
    last: Option<LastSnapshot>,
    now: Instant,
    every: Duration,
    poll_complete: bool,
    writing: bool,
    events: u64,
) -> SnapshotDue {
    let after_catch_up = poll_complete && last.is_some_and(|l| l.in_poll);
    match (writing, after_catch_up) {
        (true, true) => return SnapshotDue::AfterWrite,
        (true, false) => return SnapshotDue::Skip,
        (false, true) => return SnapshotDue::Now,
        (false, false) => {}
    }
    let Some(last) = last.filter(|_| poll_complete) else {
        return SnapshotDue::Now;
    };
    let age = now.saturating_duration_since(last.at);
    let due = age >= every
        && (last.bytes < LARGE_SNAPSHOT_BYTES
            || events >= LARGE_SNAPSHOT_EVENTS
            || age >= every * LARGE_SNAPSHOT_INTERVALS);
    match due {
        true => SnapshotDue::Now,
        false => SnapshotDue::Skip,
    }
}

/// How the detector's context is saved: how often at most, and where its files go.
#[derive(Debug, Clone)]
pub struct SnapshotPlan {
    /// At most one snapshot per this at the end of complete polls (`snapshot_due`).
    pub every: Duration,
    /// The state directory (`Store::write_snapshot`).
    pub dir: std::path::PathBuf,
}

/// Where the detector's history comes from when the daemon starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The daemon's own snapshot (it has run before).
    Own,
    /// The model's baselines, learned up to `mark_ms` (`recorded`).
    Model { mark_ms: i64 },
    /// Nothing: every user starts new.
    Fresh(FreshReason),
}

/// Why a daemon starts without history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FreshReason {
    /// The model was trained before baselines travelled with it (or by hand).
    NoBaselines,
    /// The baselines were learned from another server than the one configured.
    OtherServer { learned_from: String },
}

/// The detector's starting point: its context, the rule for events its baselines had
/// learned, and the cursor to start from when the state has none.
pub struct Start {
    pub ctx: Context,
    pub pass_over: Option<PassOver>,
    /// `meta.lastUpdated` the first poll starts from (less the overlap), ms.
    pub cursor_ms: Option<i64>,
    pub origin: Origin,
    /// Set when the first poll starts after the mark of a model trained from files, as
    /// the mark lies further back than [`FILE_MARK_READ_BACK_DAYS`]: the cursor, after
    /// which alone events are read (those recorded between the mark and it are neither
    /// learned nor scored; the caller says so).
    pub read_back_cut_ms: Option<i64>,
}

/// How far back at most a daemon starting from a model trained from files reads the
/// server for the events after the model's mark ([`file_mark_cursor`]): as far as a first
/// start reads the server's history by default (`learn::HISTORY_WINDOW_DAYS` is this).
pub const FILE_MARK_READ_BACK_DAYS: u32 = 30;

/// Where a daemon starting at `now_ms` from a model trained from files (its mark a
/// `recorded` time, `mark_ms`) reads the server from: the mark, as a server writing events
/// as they happen wrote those recorded after it after it, and a server loaded in bulk
/// later still — but no further back than [`FILE_MARK_READ_BACK_DAYS`] (an older model's
/// site has moved on; the journal warns of the gap, [`Start::read_back_cut_ms`]) and no
/// later than now. What it reads that the model learned is passed over by its recorded time.
pub fn file_mark_cursor(mark_ms: i64, now_ms: i64) -> i64 {
    let back = FILE_MARK_READ_BACK_DAYS as i64 * 86_400_000;
    mark_ms.clamp(now_ms - back, now_ms)
}

/// Decide where the detector starts at `now_ms` (see `baselines` in the core for the
/// rules): the daemon's own snapshot when it has one; else the model's baselines, with the
/// cursor at their server mark when they were read from this server (`base_url`,
/// credentials removed), at [`file_mark_cursor`] when they were learned from files; else
/// nothing. A snapshot that cannot be read counts as none (the caller says so in the
/// journal). Baselines for another time zone or schema are refused.
pub fn starting_context(
    snapshot: Option<&[u8]>,
    cursor_ms: Option<i64>,
    model_dir: &Path,
    tz: chrono_tz::Tz,
    base_url: &str,
    now_ms: i64,
) -> Result<Start, BaselinesError> {
    if let Some(ctx) = snapshot.and_then(|b| Context::from_bytes(b, tz).ok()) {
        return Ok(Start {
            ctx,
            pass_over: None,
            cursor_ms,
            origin: Origin::Own,
            read_back_cut_ms: None,
        });
    }
    let fresh = |reason| Start {
        ctx: Context::new(tz),
        pass_over: None,
        cursor_ms,
        origin: Origin::Fresh(reason),
        read_back_cut_ms: None,
    };
    let Some(b) = baselines::load(model_dir, tz)? else {
        return Ok(fresh(FreshReason::NoBaselines));
    };
    let here = base_url.trim_end_matches('/');
    let (pass_over, mark_cursor) = match &b.mark.server {
        Some(s) if s.base_url != here => {
            return Ok(fresh(FreshReason::OtherServer {
                learned_from: s.base_url.clone(),
            }))
        }
        Some(s) => (PassOver::by_server(&b.mark), Some(s.read_on_from_ms())),
        // Baselines that learned nothing (made by hand) leave the first poll's lookback.
        None => (
            PassOver::by_recorded(&b.mark),
            (b.mark.events > 0).then(|| file_mark_cursor(b.mark.recorded_ms, now_ms)),
        ),
    };
    let mut ctx = Context::new(tz);
    ctx.adopt_history(b.context);
    let read_back_cut_ms = match (cursor_ms, &b.mark.server, mark_cursor) {
        (None, None, Some(c)) if c > b.mark.recorded_ms => Some(c),
        _ => None,
    };
    Ok(Start {
        ctx,
        pass_over: Some(pass_over),
        cursor_ms: cursor_ms.or(mark_cursor),
        origin: Origin::Model {
            mark_ms: b.mark.recorded_ms,
        },
        read_back_cut_ms,
    })
}

/// Say that the care context is followed but the model cannot use it (the detector actor
/// says it once per process).
pub(crate) fn say_care_unused() {
    tracing::warn!(
        actor = "detector",
        error_kind = "care_context_unused",
        "the model was trained without a care context, so its care signals are not used (they \
         would look like nothing it has seen); retrain with it: `fhir-edge train --from-server` \
         (it reads the context from the server), or `fhir-edge train --context FILE`"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The last snapshot: taken at `at`, `bytes` long, inside a poll or at its end.
    fn taken(at: Instant, bytes: usize, in_poll: bool) -> Option<LastSnapshot> {
        Some(LastSnapshot { at, bytes, in_poll })
    }

    #[test]
    fn a_complete_poll_snapshots_at_most_once_per_checkpoint_interval() {
        use SnapshotDue::*;
        let t0 = Instant::now();
        let every = Duration::from_secs(10);
        let small = taken(t0, 1 << 20, false);
        assert_eq!(
            snapshot_due(None, t0, every, true, false, 0),
            Now,
            "the first poll"
        );
        assert_eq!(
            snapshot_due(None, t0, every, false, true, 0),
            Skip,
            "never while one is being written"
        );
        let nine = t0 + Duration::from_secs(9);
        assert_eq!(
            snapshot_due(small, nine, every, true, false, 1_000_000),
            Skip
        );
        assert_eq!(snapshot_due(small, t0 + every, every, true, false, 0), Now);
        // A checkpoint inside a long poll is the poller's to pace.
        assert_eq!(snapshot_due(small, t0, every, false, false, 0), Now);
    }

    #[test]
    fn a_large_snapshot_waits_for_enough_change() {
        use SnapshotDue::*;
        let t0 = Instant::now();
        let every = Duration::from_secs(10);
        let large = taken(t0, LARGE_SNAPSHOT_BYTES, false);
        let later = t0 + every;
        assert_eq!(
            snapshot_due(large, later, every, true, false, 20 * 10),
            Skip
        );
        assert_eq!(
            snapshot_due(large, later, every, true, false, LARGE_SNAPSHOT_EVENTS),
            Now
        );
        let quiet = t0 + every * LARGE_SNAPSHOT_INTERVALS;
        assert_eq!(snapshot_due(large, quiet, every, true, false, 1), Now);
        // Never more often than `every`, however many events.
        assert_eq!(snapshot_due(large, t0, every, true, false, u64::MAX), Skip);
    }

    /// The end of a catch-up (a poll that checkpointed along the way) takes its snapshot
    /// there, after the one being written, so the polls that follow do not stall for it.
    #[test]
    fn the_end_of_a_catch_up_snapshots_at_once() {
        use SnapshotDue::*;
        let t0 = Instant::now();
        let every = Duration::from_secs(10);
        let inside = taken(t0, LARGE_SNAPSHOT_BYTES, true);
        assert_eq!(snapshot_due(inside, t0, every, true, false, 1), Now);
        assert_eq!(snapshot_due(inside, t0, every, true, true, 1), AfterWrite);
        assert_eq!(
            snapshot_due(inside, t0, every, false, true, 1),
            Skip,
            "inside the poll: paced by the poller"
        );
    }

    use fhir_edge_core::detector::baselines::{Mark, ServerMark};

    fn mark(server: Option<&str>) -> Mark {
        Mark {
            recorded_ms: 1_000,
            timezone: "UTC".into(),
            events: 1,
            trained_at: "t".into(),
            server: server.map(|s| ServerMark {
                base_url: s.into(),
                last_updated_ms: 2_000,
                keys_at: vec!["k".into()],
                unlearned_from_ms: None,
            }),
        }
    }

    #[test]
    fn the_start_follows_own_state_then_the_models_baselines_then_nothing() {
        let tz = chrono_tz::UTC;
        let d = tempfile::tempdir().unwrap();
        let here = "http://fhir.local/fhir";
        const DAY: i64 = 86_400_000;
        let now = 40 * DAY;
        let start =
            |snap: Option<&[u8]>, cursor| starting_context(snap, cursor, d.path(), tz, here, now);
        let s = start(None, None).unwrap();
        assert_eq!(s.origin, Origin::Fresh(FreshReason::NoBaselines));
        assert!(s.pass_over.is_none() && s.cursor_ms.is_none());

        baselines::save(d.path(), &mark(Some(here)), &Context::new(tz)).unwrap();
        let s = start(None, None).unwrap();
        assert_eq!(s.origin, Origin::Model { mark_ms: 1_000 });
        assert_eq!(s.cursor_ms, Some(2_000), "from the server mark");
        assert!(s.pass_over.is_some());
        // A daemon that committed a cursor before its first snapshot keeps the cursor.
        assert_eq!(start(None, Some(5_000)).unwrap().cursor_ms, Some(5_000));
        // Its own snapshot wins.
        let own = Context::new(tz).to_bytes();
        let s = start(Some(&own), Some(7_000)).unwrap();
        assert_eq!((s.origin, s.cursor_ms), (Origin::Own, Some(7_000)));
        assert!(s.pass_over.is_none());
        // An unreadable snapshot falls back to the baselines.
        assert_eq!(
            start(Some(b"{"), None).unwrap().origin,
            Origin::Model { mark_ms: 1_000 }
        );

        baselines::save(
            d.path(),
            &mark(Some("http://other/fhir")),
            &Context::new(tz),
        )
        .unwrap();
        let s = start(None, None).unwrap();
        assert!(matches!(
            s.origin,
            Origin::Fresh(FreshReason::OtherServer { .. })
        ));
        assert!(s.pass_over.is_none() && s.cursor_ms.is_none());

        baselines::save(d.path(), &mark(None), &Context::new(tz)).unwrap();
        let s = start(None, None).unwrap();
        assert_eq!(
            (s.origin, s.cursor_ms),
            (Origin::Model { mark_ms: 1_000 }, Some(10 * DAY)),
            "learned from files: from the mark, at most 30 days back"
        );
        assert_eq!(s.read_back_cut_ms, Some(10 * DAY), "the cut is said");
        assert_eq!(start(None, Some(5_000)).unwrap().read_back_cut_ms, None);
        assert_eq!(file_mark_cursor(35 * DAY, now), 35 * DAY, "from the mark");
        assert_eq!(file_mark_cursor(41 * DAY, now), now, "never after now");

        let e = starting_context(None, None, d.path(), chrono_tz::Europe::Berlin, here, now)
            .err()
            .unwrap();
        assert_eq!(e.kind(), "baselines_timezone_mismatch");
    }
}
