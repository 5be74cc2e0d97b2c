//! Training the site's model from the server's history, for the daemon: at the end of
//! learning (`SiteTrainerActor`, from the care context the daemon followed) and at a first
//! start on a server that already holds the site's history ([`from_history`], from the
//! care context the server holds). Blocking: called on threads of their own.

use std::path::Path;

use anyhow::Context as _;
use chrono::{DateTime, Utc};

use super::{history_learned_until, history_since, history_suffices};
use crate::config::Config;
use fhir_edge_core::care::Index;
use fhir_edge_core::detector::model::{Model, TrainOptions};
use fhir_edge_core::fhir::AuditRecord;

/// Train the site's model from `records` (those recorded before `until`, when given)
/// with the care context `care` into `out` (written beside it first, then moved into
/// place), and load it.
pub(crate) fn site_model(
    cfg: &Config,
    records: Vec<AuditRecord>,
    until: Option<DateTime<Utc>>,
    care: Option<std::sync::Arc<Index>>,
    out: &Path,
) -> anyhow::Result<Model> {
    let server = crate::client::redact_url(&cfg.fhir.base_url);
    let mut ctx = crate::training::site_context(None, None, &[], Some(cfg))?;
    ctx.set_care(care);
    let partial = out.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    let (case_rule, case_budget) = crate::training::TrainRun::queue_of(Some(cfg));
    let run = crate::training::TrainRun {
        output: &partial,
        epochs: TrainOptions::default().epochs,
        seed: 1,
        percentile: TrainOptions::default().threshold_percentile,
        until,
        server: Some(&server),
        case_rule,
        case_budget,
    };
    crate::training::train_cmd(
        records,
        vec![format!("{server} (learned by the daemon)")],
        ctx,
        &run,
    )?;
    let _ = std::fs::remove_dir_all(out);
    std::fs::rename(&partial, out)
        .with_context(|| format!("moving the trained model into {}", out.display()))?;
    Ok(Model::load(out)?)
}

/// What a first start found on the server.
#[derive(Debug)]
pub(crate) enum FirstStart {
    /// The history covered `learn_days`: the site's model, trained into `out` from the
    /// `learned` events of its first `learn_days`, which end at `until`; the `review`
    /// events recorded from then on are the first polls' to score.
    Trained {
        learned: usize,
        review: usize,
        days: f64,
        until: DateTime<Utc>,
    },
    /// Too little history to train on (`days` covered, of `learn_days`): learn live.
    TooLittle { events: usize, days: f64 },
}

/// At a first start at `now_ms`: read the server's AuditEvents since [`history_since`]
/// and, when they cover `learn_days` ([`history_suffices`]), train the site's model from
/// those of the first `learn_days` ([`history_learned_until`]), with the care context the
/// server holds, into `out` — what `train --from-server --until` would have done before
/// the start, so that the rest is scored as if the daemon had been following the server
/// since its history began. An error (the server cannot be read, the training fails) is
/// the caller's to log: it learns live then.
pub(crate) fn from_history(cfg: &Config, now_ms: i64, out: &Path) -> anyhow::Result<FirstStart> {
    let learn_days = cfg.detector.learn_days;
    let since = fhir_edge_core::clock::from_ms(history_since(now_ms, learn_days));
    let records = match crate::training::server_history(cfg, since, Some(super::HISTORY_MAX_EVENTS))
    {
        Ok(r) => r,
        // An empty server: nothing to learn from yet (any other failure is an error).
        Err(e) if e.downcast_ref::<crate::training::NoHistory>().is_some() => Vec::new(),
        Err(e) => return Err(e),
    };
    // The history comes in `recorded` order (`FhirClient::history`).
    let (events, first, last) = match (records.first(), records.last()) {
        (Some(f), Some(l)) => (
            records.len(),
            f.recorded.timestamp_millis(),
            l.recorded.timestamp_millis(),
        ),
        _ => (0, 0, 0),
    };
    let days = (last - first) as f64 / 86_400_000.0;
    if !history_suffices(first, last, learn_days) {
        return Ok(FirstStart::TooLittle { events, days });
    }
    let until = fhir_edge_core::clock::from_ms(history_learned_until(first, learn_days));
    let learned = records.partition_point(|r| r.recorded < until);
    let care = crate::training::care_for_training(cfg)?;
    site_model(cfg, records, Some(until), care, out)?;
    Ok(FirstStart::Trained {
        learned,
        review: events - learned,
        days,
        until,
    })
}
