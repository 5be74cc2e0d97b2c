//! Learning a site. While the model the daemon runs was not trained on its site (it
//! carries no site baselines, like the shipped default), the daemon *learns*: it follows
//! the stream and builds the site's baselines, raises only the alerts that need none
//! (`fhir_edge_core::detector::needs_no_baseline`), and says so in `status`, the
//! dashboard and the journal. After `[detector] learn_days` it trains the site's model
//! from the server's history of those days, off the pipeline's threads, and switches to
//! it without a restart (`actor.rs`) — and to its baselines, which leave out what the
//! model alerted on in those days, with the events followed while it trained folded in
//! again (`detector::handover` in the core). `fhir-edge train --from-server` ends
//! learning at the next start.
//!
//! A first start needs no learning where the server already holds the site's history: a
//! daemon with an empty state and a model of no site reads the server's AuditEvents of the
//! last [`HISTORY_WINDOW_DAYS`] before its first poll, and when they cover `learn_days`
//! ([`history_suffices`]) does what it would have done had it been installed when that
//! history began: it trains the site's model from the history's first `learn_days`
//! ([`history_learned_until`]), as `train --from-server --until` would, starts warm from
//! it and reviews the rest, which its first polls read again and score (`train.rs`);
//! otherwise it learns live.
//!
//! The decisions are plain functions, tested without actix.

pub mod actor;
pub mod train;

/// How long a failed training waits before it is tried again.
pub const RETRY_MS: i64 = 6 * 3_600_000;

/// What the learning clock says at one of its checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// Not yet: learning goes on until `until_ms`.
    Wait { until_ms: i64 },
    /// Train now, from the server's history since `since_ms`.
    Train { since_ms: i64 },
    /// Never train automatically (`learn_days = 0`).
    Never,
}

/// Decide at `now_ms`, for learning that began at `since_ms`, whether to train; a failed
/// attempt moves the next one to `retry_at_ms`.
pub fn tick_learning(
    now_ms: i64,
    since_ms: i64,
    learn_days: u32,
    retry_at_ms: Option<i64>,
) -> Tick {
    if learn_days == 0 {
        return Tick::Never;
    }
    let due = since_ms + learn_days as i64 * 86_400_000;
    let due = retry_at_ms.map_or(due, |r| r.max(due));
    if now_ms < due {
        Tick::Wait { until_ms: due }
    } else {
        Tick::Train { since_ms }
    }
}

const DAY_MS: i64 = 86_400_000;

/// How far back a first start reads the server's history, at least: the window `train
/// --from-server` reads by default (a `learn_days` beyond it widens it to `learn_days`).
/// One bound with how far back a model trained from files has the server read (the
/// detector keeps it, as it does not depend on learning).
pub const HISTORY_WINDOW_DAYS: u32 = crate::detector::FILE_MARK_READ_BACK_DAYS;

/// The most events the daemon reads of the server's history to train on (at a first
/// start and at the end of learning): the oldest this many of the window. All of them are
/// in memory until the read ends — about 1 GB at the peak for a million at a first start,
/// which keeps only its learning days to train on, and 1.3 GB at the end of learning,
/// which trains on all (BENCHMARKS.md, "A first start from the server's history") — so
/// the bound keeps a large system's edge from running out of memory; what the read leaves
/// is scored after the start, or was followed live.
pub const HISTORY_MAX_EVENTS: usize = 1_000_000;

/// How many days back a first start reads the server's history.
pub fn history_window_days(learn_days: u32) -> u32 {
    HISTORY_WINDOW_DAYS.max(learn_days)
}

/// Where a first start at `now_ms` begins reading the server's history.
pub fn history_since(now_ms: i64, learn_days: u32) -> i64 {
    now_ms - history_window_days(learn_days) as i64 * DAY_MS
}

/// Whether history recorded from `first_ms` to `last_ms` is enough to train the site's
/// model on at a first start: it covers `learn_days`, what learning would have waited for
/// (never with `learn_days = 0`: training is then the operator's).
pub fn history_suffices(first_ms: i64, last_ms: i64, learn_days: u32) -> bool {
    learn_days > 0 && last_ms >= history_learned_until(first_ms, learn_days)
}

/// Where a first start's training ends in history whose first event was recorded at
/// `first_ms`: after `learn_days`, where learning that began with that history would have
/// ended. The model learns what was recorded before; what was recorded from then on is
/// scored by it, as the live days after learning would have been — the same cases
/// whether the daemon was installed when the history began or today.
pub fn history_learned_until(first_ms: i64, learn_days: u32) -> i64 {
    first_ms + learn_days as i64 * DAY_MS
}

/// What `status`, the dashboard and the journal say while learning.
pub fn learning_note(since_ms: i64, learn_days: u32) -> String {
    let since = fhir_edge_core::clock::fmt_ms(fhir_edge_core::clock::from_ms(since_ms));
    let then = match learn_days {
        0 => "until a site model is trained with `fhir-edge train --from-server` (detector.learn_days = 0)".to_string(),
        d => format!(
            "until the site's model is trained automatically after {d} days (at {}), or earlier with `fhir-edge train --from-server`",
            fhir_edge_core::clock::fmt_ms(fhir_edge_core::clock::from_ms(since_ms + d as i64 * 86_400_000))
        ),
    };
    format!(
        "learning this site's normal since {since}: only failed-login bursts and bulk exports raise alerts {then}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    #[test]
    fn learning_trains_after_its_days_and_retries_later_after_a_failure() {
        assert_eq!(
            tick_learning(5 * DAY, 0, 14, None),
            Tick::Wait { until_ms: 14 * DAY }
        );
        assert_eq!(
            tick_learning(14 * DAY, 0, 14, None),
            Tick::Train { since_ms: 0 }
        );
        let retry = 14 * DAY + RETRY_MS;
        assert_eq!(
            tick_learning(14 * DAY + 1, 0, 14, Some(retry)),
            Tick::Wait { until_ms: retry }
        );
        assert_eq!(
            tick_learning(retry, 0, 14, Some(retry)),
            Tick::Train { since_ms: 0 }
        );
        assert_eq!(tick_learning(99 * DAY, 0, 0, None), Tick::Never);
        assert!(learning_note(0, 14).contains("after 14 days (at 1970-01-15"));
        assert!(learning_note(0, 0).contains("learn_days = 0"));
    }

    #[test]
    fn a_first_start_trains_on_history_that_covers_the_learning_days() {
        assert_eq!(history_since(40 * DAY, 14), 10 * DAY);
        assert_eq!(
            history_since(100 * DAY, 60),
            40 * DAY,
            "a longer learn_days widens it"
        );
        assert!(history_suffices(DAY, 15 * DAY, 14));
        assert!(
            !history_suffices(DAY, 15 * DAY - 1, 14),
            "a day short: learn live"
        );
        assert!(!history_suffices(0, 99 * DAY, 0), "learn_days = 0: never");
        assert_eq!(
            history_learned_until(DAY, 14),
            15 * DAY,
            "the first learn_days are learned, the rest reviewed"
        );
    }
}
