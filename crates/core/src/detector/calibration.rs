//! How much each training row counts in the calibration: the percentiles of the training
//! scores that set the score's two scales and the threshold (`model::train`).
//!
//! A site's history is not clean. One user's bulk lookup, script or export in one hour
//! can be a percent of the site's events, and counted row by row it fills the very tail
//! the 99.5th percentile is read from: the threshold rises for everyone, and the next such
//! hour, or anything less loud, passes under it. Here the rows of a user-hour larger than
//! the site's [`CAP_PERCENTILE`]th-percentile user-hour count together as that many
//! events ([`user_hour_weights`]): the loudest hour of one user weighs like a busy hour,
//! not like a hundred. The autoencoder is still fitted on every row, the tail grids and
//! the queue budget's replay still see every row; only the three percentiles are weighted.
//!
//! Measured on the simulated hospitals, held-out styles included (BENCHMARKS,
//! "Calibration with bulk user-hours capped"): with incidents in the history, more of the
//! next week's incidents reach a case, at a few more false cases; with a clean history,
//! nothing moved.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::features::HOUR;
use crate::fhir::AuditRecord;

/// The user-hour size that counts in full: this percentile of the sizes of the training
/// window's user-hours (a user's events in one clock hour, UTC).
pub const CAP_PERCENTILE: f32 = 99.0;

/// What the weighting did, kept in the model's training summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CalibrationCap {
    /// Events of one user in one hour that count in full ([`CAP_PERCENTILE`] of the
    /// window's user-hours).
    pub events_per_user_hour: u32,
    /// The user-hours over it, and their events: each such hour counts as
    /// `events_per_user_hour` events.
    pub user_hours_capped: u64,
    pub events_capped: u64,
}

/// Each training row's weight in the calibration, index for index with the records it
/// was computed from, and what the cap was.
#[derive(Debug, Clone)]
pub struct Weights {
    pub per_row: Vec<f32>,
    pub cap: CalibrationCap,
}

/// Weights for `records` (the training rows' events, in row order): 1 for an event of a
/// user-hour of at most the cap, `cap / n` for each of the `n` events of a larger one. An
/// event without a user is grouped with the others without one.
pub fn user_hour_weights(records: &[AuditRecord]) -> Weights {
    fn key(r: &AuditRecord) -> (Option<&str>, i64) {
        (
            r.user.as_deref(),
            r.recorded.timestamp_millis().div_euclid(HOUR),
        )
    }
    let mut sizes: HashMap<(Option<&str>, i64), u32> = HashMap::new();
    for r in records {
        *sizes.entry(key(r)).or_default() += 1;
    }
    let mut all: Vec<f32> = sizes.values().map(|&s| s as f32).collect();
    let cap = (percentile(&mut all, CAP_PERCENTILE) as u32).max(1);
    let over: Vec<u32> = sizes.values().copied().filter(|&s| s > cap).collect();
    Weights {
        per_row: records
            .iter()
            .map(|r| (cap as f32 / sizes[&key(r)] as f32).min(1.0))
            .collect(),
        cap: CalibrationCap {
            events_per_user_hour: cap,
            user_hours_capped: over.len() as u64,
            events_capped: over.iter().map(|&s| s as u64).sum(),
        },
    }
}

/// The `p`th percentile of `xs` (sorted in place): the value at rank `p/100 · (n − 1)`,
/// rounded; 0 for none.
pub fn percentile(xs: &mut [f32], p: f32) -> f32 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    let idx = ((p / 100.0) * (xs.len() - 1) as f32).round() as usize;
    xs[idx.min(xs.len() - 1)]
}

/// The `p`th percentile of `xs`, each value counted `weights[i]` times (as many weights as
/// values). With equal weights, the value [`percentile`] picks.
pub fn weighted_percentile(xs: &[f32], weights: &[f32], p: f32) -> f32 {
    debug_assert_eq!(xs.len(), weights.len());
    let mut v: Vec<(f32, f32)> = xs.iter().copied().zip(weights.iter().copied()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    // The value at which the weight below it reaches p % of the weight past the first
    // unit: `percentile`'s rank `p/100 · (n − 1)`, rounded, when every weight is 1.
    let total: f64 = v.iter().map(|x| x.1 as f64).sum();
    let rank = p as f64 / 100.0 * (total - 1.0).max(0.0);
    let mut acc = 0.0f64;
    for (x, w) in &v {
        acc += *w as f64;
        if acc - 1.0 > rank - 0.5 {
            return *x;
        }
    }
    v[v.len() - 1].0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(user: &str, ms: i64) -> AuditRecord {
        let mut r = crate::fhir::AuditEvent {
            resource_type: "AuditEvent".into(),
            id: Some(format!("{user}-{ms}").into()),
            recorded: Some(crate::clock::fmt_ms(crate::clock::from_ms(ms)).into()),
            ..Default::default()
        }
        .into_record()
        .unwrap();
        r.user = Some(user.into());
        r
    }

    #[test]
    fn equal_weights_pick_what_percentile_picks() {
        let mut rng = crate::rng::Rng::new(7);
        for n in [1usize, 2, 7, 100, 999, 4096] {
            let xs: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
            for p in [0.0f32, 37.0, 90.0, 99.0, 99.5, 100.0] {
                let ones = vec![1.0; n];
                assert_eq!(
                    weighted_percentile(&xs, &ones, p),
                    percentile(&mut xs.clone(), p),
                    "n {n}, p {p}"
                );
            }
        }
    }

    #[test]
    fn a_loud_user_hour_counts_as_the_cap_and_no_longer_sets_the_tail() {
        // 200 users' ordinary hours (1 to 5 events), and one user's bulk hour of 400
        // events, all scoring high.
        let mut records = Vec::new();
        let mut scores = Vec::new();
        for u in 0..200 {
            for i in 0..(1 + u % 5) {
                records.push(at(&format!("u{u}"), 10 * HOUR + i as i64 * 60_000));
                scores.push((u % 10) as f32 / 10.0);
            }
        }
        for i in 0..400 {
            records.push(at("bulk", 10 * HOUR + i * 1_000));
            scores.push(50.0);
        }
        let w = user_hour_weights(&records);
        assert_eq!(w.per_row.len(), records.len());
        assert_eq!(w.cap.events_per_user_hour, 5);
        assert_eq!((w.cap.user_hours_capped, w.cap.events_capped), (1, 400));
        let bulk_weight: f32 = w.per_row[w.per_row.len() - 400..].iter().sum();
        assert!((bulk_weight - 5.0).abs() < 1e-3, "{bulk_weight}");
        assert!(w.per_row[..w.per_row.len() - 400].iter().all(|&x| x == 1.0));
        // Counted row by row, the bulk hour is the top 40 % and the 99th percentile is
        // its score; weighted, it is five rows of 605 and the tail is the site's.
        assert_eq!(percentile(&mut scores.clone(), 99.0), 50.0);
        assert!(weighted_percentile(&scores, &w.per_row, 99.0) < 1.0);
    }

    #[test]
    fn the_same_user_in_another_hour_is_another_user_hour() {
        let records: Vec<_> = (0..100).map(|i| at("a", i * HOUR)).collect();
        let w = user_hour_weights(&records);
        assert_eq!(w.cap.events_per_user_hour, 1);
        assert_eq!(w.cap.user_hours_capped, 0);
        assert!(w.per_row.iter().all(|&x| x == 1.0));
        assert!(user_hour_weights(&[]).per_row.is_empty());
    }
}
