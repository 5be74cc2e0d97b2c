//! The handover at the end of learning: the detector takes over the baselines of the site
//! model trained from the server's history, instead of keeping the context it followed.
//!
//! Training leaves out of its baselines what its first model alerts on ([`super::sift`]):
//! a snooper's looks during the learning days must not become a working relationship. The
//! context the detector followed while learning learned everything, so keeping it would
//! undo that at the very moment the site's model takes over. But the detector went on
//! folding in events while the model trained: the baselines end at their mark, the
//! followed context some minutes later. So the detector keeps the records it folds in
//! from before the history is read ([`Handover::Keeping`]) and, when the model arrives,
//! takes the baselines and folds in again those of its kept records the baselines had not
//! learned ([`super::baselines::PassOver::by_server`]: after the mark; what the sift left
//! out lies before it and stays out). Each record the detector folded in before it began
//! keeping was on the server before the read began, so the baselines hold it — unless
//! the read stopped at its bound ([`SiteBaselines::complete`]). What cannot be handed
//! over (no baselines, too many records kept, a read cut short) keeps the followed
//! context, and the caller says why ([`Kept`]).

use super::baselines::Baselines;
use crate::fhir::AuditRecord;

/// Records kept for a handover at most: the minutes of a large site's stream while its
/// model trains (a first start on 300,000 events of history trained in 16 s,
/// BENCHMARKS.md). A handover that would need more keeps the followed context.
pub const MAX_KEPT: usize = 200_000;

/// The baselines a model trained at the end of learning carries, as the detector takes
/// them over.
pub struct SiteBaselines {
    pub baselines: Baselines,
    /// The history read reached the end of the server's stream as it stood when the read
    /// began: every record the detector folded in before it began keeping is in it (false
    /// when the read stopped at its bound of events).
    pub complete: bool,
}

/// What the detector keeps for a handover.
#[derive(Debug, Default)]
pub enum Handover {
    /// No site model is being trained.
    #[default]
    Idle,
    /// The records folded in since a site model began training, in order.
    Keeping(Vec<AuditRecord>),
    /// More than [`MAX_KEPT`] came: none is kept.
    Overflowed,
}

impl Handover {
    /// Keep `r`, folded into the context, while keeping.
    pub fn keep(&mut self, r: &AuditRecord) {
        if let Handover::Keeping(kept) = self {
            if kept.len() < MAX_KEPT {
                kept.push(r.clone());
            } else {
                *self = Handover::Overflowed;
            }
        }
    }
}

/// Why the detector kept the context it followed at the end of learning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Kept {
    #[error("the site model carries no baselines")]
    NoBaselines,
    #[error("the detector was not keeping the events it folded in while the model trained")]
    NotKeeping,
    #[error(
        "more than {MAX_KEPT} events came while the model trained, more than are kept to hand over"
    )]
    Overflowed,
    #[error("the history read stopped at its bound of events, so the baselines end before what the detector had followed")]
    HistoryCut,
}

impl Kept {
    /// A stable name for logs and metrics.
    pub fn kind(self) -> &'static str {
        match self {
            Kept::NoBaselines => "no_baselines",
            Kept::NotKeeping => "not_keeping",
            Kept::Overflowed => "overflowed",
            Kept::HistoryCut => "history_cut",
        }
    }
}

/// Decide the handover: the baselines to take and the kept records to fold in again (those
/// the baselines had not learned), or why the followed context is kept.
pub fn hand_over(
    kept: Handover,
    site: Option<SiteBaselines>,
) -> Result<(Baselines, Vec<AuditRecord>), Kept> {
    let site = site.ok_or(Kept::NoBaselines)?;
    let records = match kept {
        Handover::Keeping(r) => r,
        Handover::Idle => return Err(Kept::NotKeeping),
        Handover::Overflowed => return Err(Kept::Overflowed),
    };
    if !site.complete {
        return Err(Kept::HistoryCut);
    }
    let learned = super::baselines::PassOver::by_server(&site.baselines.mark);
    let after: Vec<_> = records
        .into_iter()
        .filter(|r| !learned.passes_over(r))
        .collect();
    Ok((site.baselines, after))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::baselines::Mark;
    use crate::detector::features::{Context, N_FEATURES};
    use crate::detector::model::{train, TrainOptions};
    use crate::detector::Detector;
    use crate::fhir::{Fetched, RawJson};
    use crate::state::KeyStatus;

    const ANN: &str = "Practitioner/ann";

    /// A read by ann of `Patient/<minute>` from `ip`, `minute` minutes after Monday
    /// 2024-03-04 09:00 UTC.
    fn read(ip: &str, minute: i64) -> AuditRecord {
        crate::detector::testing::read(ANN, &format!("Patient/{minute}"), ip, minute)
    }

    fn page(records: &[AuditRecord]) -> Vec<(Fetched, KeyStatus)> {
        records
            .iter()
            .map(|r| {
                let raw = RawJson::whole(std::sync::Arc::from("{}"));
                (
                    Fetched {
                        record: r.clone(),
                        raw,
                    },
                    KeyStatus::New,
                )
            })
            .collect()
    }

    /// Thirty routine reads from the ward's address; then, left out of the baselines, a
    /// read from an outside address (what the first model alerted on); then two reads
    /// from a second address, after the baselines' mark. The detector followed all of
    /// them, and began keeping at the 26th.
    struct Learning {
        detector: Detector,
        site: SiteBaselines,
    }

    fn learning(keep: bool, complete: bool) -> Learning {
        let mut records: Vec<_> = (0..30).map(|m| read("10.0.0.1", m)).collect();
        records.push(read("203.0.113.9", 40));
        let after = [read("198.51.100.7", 50), read("198.51.100.7", 60)];
        let mut learned = Context::new(chrono_tz::UTC);
        for r in &records[..30] {
            learned.replay(r);
        }
        let model = site_model();
        let mark = Mark::at_end_of(
            &records,
            chrono_tz::UTC,
            None,
            "2024-03-04T10:00:00Z".into(),
        );
        let mut detector = Detector::new(model, Context::new(chrono_tz::UTC)).learning(true);
        detector.process(page(&records[..25])).unwrap();
        detector.keep_for_handover(keep);
        detector.process(page(&records[25..])).unwrap();
        detector.process(page(&after)).unwrap();
        Learning {
            detector,
            site: SiteBaselines {
                baselines: Baselines {
                    mark,
                    context: learned,
                },
                complete,
            },
        }
    }

    /// The site's model (what it scores does not matter here).
    fn site_model() -> crate::detector::model::Model {
        let rows = vec![[0f32; N_FEATURES]; 128];
        let opts = TrainOptions {
            epochs: 1,
            ..Default::default()
        };
        train(&rows, &opts, vec![], |_, _| {}).unwrap()
    }

    #[test]
    fn the_baselines_are_taken_over_with_what_followed_their_mark() {
        let mut l = learning(true, true);
        let replayed = l
            .detector
            .use_site_model(site_model(), Some(l.site))
            .unwrap();
        assert_eq!(
            replayed, 2,
            "the two reads after the mark, not the five before"
        );
        let ann = l.detector.context().user_profile(ANN).unwrap();
        assert_eq!(ann.events, 32, "the read left out is not learned");
        assert_eq!(ann.addresses, 2, "the outside address stays new");
        assert!(!l.detector.is_learning());
    }

    #[test]
    fn what_cannot_be_handed_over_keeps_the_followed_context() {
        for (keep, complete, site, why) in [
            (false, true, true, Kept::NotKeeping),
            (true, false, true, Kept::HistoryCut),
            (true, true, false, Kept::NoBaselines),
        ] {
            let mut l = learning(keep, complete);
            let site = site.then_some(l.site);
            assert_eq!(l.detector.use_site_model(site_model(), site), Err(why));
            let ann = l.detector.context().user_profile(ANN).unwrap();
            assert_eq!((ann.events, ann.addresses), (33, 3), "{why}");
            assert!(!l.detector.is_learning(), "learning ends all the same");
        }
    }

    #[test]
    fn keeping_stops_at_its_bound() {
        let r = read("10.0.0.1", 0);
        let mut h = Handover::Keeping(vec![r.clone(); MAX_KEPT - 1]);
        h.keep(&r);
        assert!(matches!(&h, Handover::Keeping(k) if k.len() == MAX_KEPT));
        h.keep(&r);
        assert!(matches!(h, Handover::Overflowed));
        h.keep(&r);
        assert!(matches!(h, Handover::Overflowed), "none kept after");
        let site = learning(true, true).site;
        assert_eq!(hand_over(h, Some(site)).err(), Some(Kept::Overflowed));
    }
}
