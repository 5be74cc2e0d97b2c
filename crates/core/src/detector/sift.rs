//! Sifting a site's history before the model that ships is trained on it.
//!
//! A history is the site's normal and its incidents together: a snooper who opened a
//! colleague's record in the training weeks has, by the test week, made that record's
//! activity look like a working relationship with their department; a device used once in
//! an incident is no longer new. Measured on a simulated hospital whose history holds its
//! incidents (BENCHMARKS.md, issue #21), a model trained on the history as it is found 53
//! of 68 of the same test week's incidents, one trained on it with the injected events
//! taken out 63.
//!
//! The site's own incidents are not labelled, so training goes in two passes: a first
//! model is trained on all of the history and scores it ([`alerted`]); what it alerts on
//! (about 1% of the events) is then left out of the context ([`features_without`]): its
//! rows are computed from the context as it stands ([`Context::peek`]) and the baselines
//! do not learn it. The second model, the one saved, is trained on every row as that
//! context gives it, those left out included: a model trained without them sets its
//! threshold on a history cut of its own tail, and on five simulated hospitals trained on
//! 14 days it queued 3.25 false cases a day per 100 staff (up to 4.67) against 2.56
//! with one pass (BENCHMARKS.md, "What alerted in the history is not learned as normal").

use super::features::{Context, N_FEATURES};
use super::model::{Model, ModelError};
use super::{score_stream, Circumstances, Explain};
use crate::fhir::AuditRecord;

/// Whether each of `records` alerts when scored in order by `model` from the context
/// `ctx` (a fresh one: the site's time zone, watch list and care context, nothing
/// learned), index for index.
pub fn alerted(
    model: &Model,
    mut ctx: Context,
    records: &[AuditRecord],
) -> Result<Vec<bool>, ModelError> {
    Ok(
        score_stream(model, &mut ctx, records, 4096, Explain::Alerts, None)?
            .into_iter()
            .map(|(_, v)| v.severity.is_some())
            .collect(),
    )
}

/// The feature rows and circumstances of `records` in order, from `ctx`, which learns
/// every record except those `left_out` says (index for index): those are scored from the
/// context as it stands and not learned.
pub fn features_without(
    ctx: &mut Context,
    records: &[AuditRecord],
    left_out: &[bool],
) -> (Vec<[f32; N_FEATURES]>, Vec<Circumstances>) {
    records
        .iter()
        .zip(left_out)
        .map(|(r, &out)| {
            let (row, facts) = if out { ctx.peek(r) } else { ctx.observe(r) };
            (row, Circumstances::of(&facts))
        })
        .unzip()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::features::Feature;
    use crate::detector::model::{train, TrainOptions};
    use crate::detector::testing::read;
    use crate::fhir::{Interaction, QueryInfo};

    /// What is left out is scored as the context stands and not learned: the address a
    /// user came from once, in an event left out, is still new to them the next time.
    #[test]
    fn what_is_left_out_is_scored_but_not_learned() {
        let mut records: Vec<_> = (0..30)
            .map(|i| read("Practitioner/ann", &format!("Patient/{i}"), "10.0.0.1", i))
            .collect();
        records.push(read("Practitioner/ann", "Patient/x", "203.0.113.9", 40));
        records.push(read("Practitioner/ann", "Patient/y", "203.0.113.9", 50));
        let new_ip = |rows: &[[f32; N_FEATURES]], i: usize| rows[i][Feature::NewSourceIp.index()];
        let fresh = Context::new(chrono_tz::UTC);

        let none = vec![false; records.len()];
        let (all, _) = features_without(&mut fresh.clone(), &records, &none);
        assert_eq!(new_ip(&all, 30), 1.0, "the address is new the first time");
        assert_eq!(new_ip(&all, 31), 0.5, "and used once by the second");

        let mut out = none.clone();
        out[30] = true;
        let (sifted, _) = features_without(&mut fresh.clone(), &records, &out);
        assert_eq!(sifted[30], all[30], "the event left out is still scored");
        assert_eq!(new_ip(&sifted, 31), 1.0, "what it showed was not learned");
        assert_eq!(sifted[..30], all[..30]);
    }

    /// A first model's alerts are what is left out: a bulk data export in a history of
    /// routine reads, and not the routine reads.
    #[test]
    fn a_first_models_alerts_are_what_is_left_out() {
        let users = ["Practitioner/ann", "Practitioner/bob", "Practitioner/cy"];
        let mut records: Vec<_> = (0..600)
            .map(|i| {
                read(
                    users[i % 3],
                    &format!("Patient/{}", i % 40),
                    "10.0.0.1",
                    i as i64 / 2,
                )
            })
            .collect();
        let mut export = read("Practitioner/bob", "Patient/1", "10.0.0.1", 301);
        export.interaction = Interaction::Export;
        export.patient = None;
        export.query = Some(QueryInfo {
            export: true,
            ..Default::default()
        });
        records.push(export);
        let fresh = Context::new(chrono_tz::UTC);
        let (rows, _) = features_without(&mut fresh.clone(), &records, &vec![false; records.len()]);
        let opts = TrainOptions {
            epochs: 3,
            ..Default::default()
        };
        let model = train(&rows, &opts, vec![], |_, _| {}).unwrap();
        let out = alerted(&model, fresh, &records).unwrap();
        assert!(out[600], "the export alerts");
        let routine = out[..600].iter().filter(|x| **x).count();
        assert!(routine <= 12, "{routine} of 600 routine reads alert");
    }
}
