//! The detector: context features + autoencoder score + plain-language explanation.
//! Plain logic, testable without actix; `actor.rs` runs it off the actor thread.

pub mod baselines;
pub mod budget;
pub mod calibration;
pub mod features;
pub mod handover;
pub mod model;
pub mod peers;
pub mod sift;
#[cfg(test)]
mod testing;
pub mod train;

use std::collections::HashSet;

use baselines::PassOver;
use features::{Context, Facts, Feature, N_FEATURES, ODD_HOUR_BAND};
use model::Model;

use crate::alerts::{AlertKind, Evidence, Severity, COWORKER_RECORD, STAFF_NAMED_RECORD};
use crate::coverage;
use crate::fhir::{AuditRecord, Fetched};
use crate::state::KeyStatus;

/// One scored event.
#[derive(Debug)]
pub struct ScoredEvent {
    pub fetched: Fetched,
    /// Reconstruction error divided by the calibrated threshold (≥ 1 is anomalous; an
    /// alert from [`crate::alerts::ALERT_FLOOR`]).
    pub score: f32,
    pub severity: Option<Severity>,
    /// First line of the explanation; empty below the threshold (see `Explain`).
    pub summary: String,
    pub explanation: Vec<String>,
    /// The behaviours behind the explanation's reasons, in the same order.
    pub kinds: Vec<AlertKind>,
    /// What it brings to its case's corroboration ([`evidence`]).
    pub evidence: Evidence,
    /// Learned already by the baselines the context started from: not scored (score 0),
    /// never alerted, not learned again; committed so it is not met again.
    pub passed_over: bool,
    /// Above the threshold, but not alerted: the detector is learning the site and the
    /// reason needs a baseline it does not have yet (see `Detector::learning`).
    pub held: bool,
    /// What the event carried (counted once per new event in the state's lifetime counts),
    /// with what the care context added to it.
    pub carried: coverage::Coverage,
}

/// What an event's facts, beside its feature row, bring to [`evidence`]: read once per
/// event ([`Circumstances::of`]) and kept, index for index, where the rows are replayed
/// without their facts (the queue budget's replay, `budget::candidates`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Circumstances {
    /// `Facts::own_colleague`: the record of a colleague of the user's own department.
    pub own_colleague: bool,
    /// `Facts::no_related_visitor`: the one other user who opened the record within 24 h
    /// came without a relationship, as this user did.
    pub no_related_visitor: bool,
    /// `Facts::network_new_to_site`: the first access from a network no one at the site
    /// has worked from.
    pub new_network: bool,
    /// `Facts::foreign_network`: the first access of the user's department from another
    /// department's network.
    pub foreign_network: bool,
    /// `Facts::first_outside`: the user's first access from outside the site's private
    /// networks, where such access is rare.
    pub first_outside: bool,
    /// `Facts::stray_run`: a run of lookups of other departments' records, improbable for
    /// the user, on a record their department has no part in, homed where it seldom goes.
    pub stray_run: bool,
}

impl Circumstances {
    pub fn of(f: &Facts) -> Circumstances {
        Circumstances {
            own_colleague: f.own_colleague,
            no_related_visitor: f.no_related_visitor,
            new_network: f.network_new_to_site,
            foreign_network: f.foreign_network.is_some(),
            first_outside: f.first_outside.is_some(),
            stray_run: f.stray_run,
        }
    }

    /// No care going on in the record that a look without a working relationship could
    /// be part of: no one else has opened it for a day (`features::alone_on_record`), or
    /// the one other user who did came without a relationship too.
    fn no_care_on_record(self, row: &[f32; N_FEATURES]) -> bool {
        features::alone_on_record(row) || self.no_related_visitor
    }
}

/// What an alert of behaviour `kind` with feature row `row` brings to its case's
/// corroboration ([`crate::cases::Corroboration`]):
/// - [`Evidence::Twice`], a second, independent piece of evidence in itself, so that its
///   case need not wait for another alert ([`crate::cases::queued`]):
///   - an access at an unusual hour in a session begun at an hour the user has never, or
///     almost never, begun one (the session's start at least as rare as none of ten;
///     `features::unprecedented_start`). A shift running late keeps its usual start and
///     stays watched; a login on a day off or in the night to open a record does not. The
///     alert's explanation states the session's start.
///   - a colleague's own record opened without a working relationship by someone from the
///     colleague's own department (`own_colleague`, the event's `Facts::own_colleague`):
///     not a record the user's work came across, but a person they work beside. A
///     colleague of another department's stays watched. The alert's explanation says so.
///   - a watched record opened without a working relationship while no one else has
///     opened it for a day (`features::alone_on_record`), or the one other user who did
///     came without a relationship too (`Facts::no_related_visitor`: two colleagues'
///     curiosity is not care): no care going on that the look could be part of. The same
///     for a colleague's record the care context knows (`Feature::CoworkerRecord`) opened
///     outside every treatment relationship it states. The alert's explanation says so.
///   - an hour's searches asking for an order of magnitude more records than the user's
///     usual high hour (`features::SWEEP_RATIO`): a sweep, not a busy hour. A search
///     somewhat wider than usual (twice, three times) stays watched. The alert's
///     explanation states the hour's records and the usual.
///   - a bulk run of opens (`features::bulk_run`): at least `BULK_OPENS_10M` distinct
///     patients within ten minutes, in an hour of at least `BULK_RATIO` times the
///     patients of the user's usual high hour: a sweep through records one by one. The
///     alert's explanation states the ten minutes, the hour and the usual.
///   - a stray run (`Facts::stray_run`): a lookup of another department's long-running
///     record, where the user's department seldom goes, that with the user's other such
///     lookups within the hour is more than their habit makes likely. The run names
///     several records already: it is the second patient a consult's single lookup waits
///     for. The alert's explanation states the run, the habit, the record's history and
///     the department's pattern.
/// - [`Evidence::Routine`]: a watched record opened by a user whose work goes to records
///   their department has no history with routinely (`features::ROUTINE_UNRELATED_RATE`:
///   radiology, the pharmacy, the laboratory). The watched-record signal does not weigh
///   the user's habit as the unrelated-lookup signals do, and such work opens a watched
///   record now and then by the site's share of them: the next one it opens is that work
///   going on, not a second piece of evidence.
/// - [`Evidence::Single`] otherwise.
pub fn evidence(kind: AlertKind, row: &[f32; N_FEATURES], c: Circumstances) -> Evidence {
    let twice = match kind {
        AlertKind::AfterHours => {
            row[Feature::SessionStartRarity.index()] >= features::unprecedented_start()
        }
        AlertKind::WatchedRecord => c.own_colleague || c.no_care_on_record(row),
        AlertKind::VipSnooping => {
            row[Feature::CoworkerRecord.index()] > 0.0
                && (c.own_colleague || c.no_care_on_record(row))
        }
        AlertKind::WideSearch => {
            row[Feature::QueryVolume1hVsUsual.index()] >= features::SWEEP_RATIO.ln()
        }
        AlertKind::BulkAccess => features::bulk_run(row),
        AlertKind::CrossDepartment => c.stray_run,
        _ => false,
    };
    if twice {
        Evidence::Twice
    } else if kind == AlertKind::WatchedRecord
        && row[Feature::UserCrossDeptRate.index()] >= features::ROUTINE_UNRELATED_RATE
    {
        Evidence::Routine
    } else {
        Evidence::Single
    }
}

/// Whether an event alerts whatever its score, and for which reason:
/// - a watched record (on the watch list, labelled restricted, or a colleague's own by
///   name) opened without a working relationship, or a colleague's own record the care
///   context knows (its identity match: a shared identifier, or family name and birth date
///   with a given name, address or phone) opened outside every treatment relationship it
///   states, where that is evidence twice over ([`evidence`]: no one else, or only one
///   other user without a relationship, has opened the record for a day, or a colleague of
///   the record's own department looks without work to do; `c` carries the facts beside
///   the row). The explanation of such an event states both, and a reason that strong must
///   raise an alert: the model weighs a watched record as one feature among thirty, and on
///   the simulated hospitals such looks by the pharmacy, the laboratory or radiology scored
///   0.8–0.9 of the threshold, under the floor (BENCHMARKS.md).
/// - a bulk data export (`$export`, at patient, group or system level; `Feature::Export`):
///   the whole of a population's records leaving at once, suspicious in any hospital
///   ([`needs_no_baseline`] says the same while the detector learns). The model learns an
///   export as normal once the site's history holds a few — on the simulated hospitals with
///   incidents in their training weeks, exports of the week after scored 0.885 of the
///   threshold and raised nothing, their explanation saying "bulk data export" all the
///   same, and 16 of 51 exfiltrations were missed, 8 with this rule (BENCHMARKS.md). A site whose integration exports on a schedule closes its first case
///   as appropriate and allow-lists the client application (`fhir-edge cases`).
/// - an hour's searches asking for an order of magnitude more records than the user's
///   usual high hour (`features::SWEEP_RATIO`, at least a thousand records), evidence
///   twice over ([`evidence`]): the same wholesale leaving, page by page. The model learns
///   such hours as normal once the site's history holds a few — on a simulated hospital
///   with incidents in its training weeks, searches asking for 5,000 records within an
///   hour (usual at most 109) scored 0.89 and 0.50 of the threshold, their explanation
///   saying so all the same. An analyst's report runs make their own usual high, so they
///   stay under it.
/// - the first access from a network no one at the site has worked from
///   (`Facts::network_new_to_site`: a VPN exit, a home, an attacker; an address's /24 or
///   /48, once the site has history): the new device from outside the network. The
///   model weighs it as one reason among thirty, and learns such accesses as normal
///   once the site's history holds a few: on a simulated hospital with incidents in its
///   14 training days, such first accesses scored 0.88 and 0.89 of the threshold, their
///   explanation saying "a network the site had seen 0 times before" all the same (an
///   artifact of the simulator put those incidents on such networks; on the fixed one
///   the rule changed no figure, BENCHMARKS.md). Only the first event alerts so: the
///   next one from the network finds it seen. A site that opens a new range closes the
///   first case as appropriate.
/// - the first access of a department from a network that is another department's own
///   (`Facts::foreign_network`: at least nine in ten of the network's events, of at least
///   two hundred, come from that department's staff, and none from the user's): someone
///   at another ward's workstation, or on its network. The model weighs only whether the
///   *user* used the address before, which where addresses churn (DHCP, shared stations)
///   is most days; on the simulated hospitals such first accesses scored 0.25–0.73 of the
///   threshold, their explanation saying "an address this user had used 0 times before"
///   (BENCHMARKS.md). A department that starts working from another's network (a float
///   pool, a new consult service) raises one case per network, closed as appropriate.
/// - a user's first access from outside the site's private networks (`Facts::first_outside`:
///   a public address, where under 1 % of the site's events come from one, on a network
///   under one in a thousand of them come from): the new device from outside the
///   network. Once the site's history holds a few such accesses, by others, neither the
///   model nor a network new to the site tells this user's first from them: on the
///   simulated hospitals such first accesses scored 0.64–0.86 of the threshold
///   (BENCHMARKS.md). A user who works from home without the VPN raises one case, closed
///   as appropriate.
/// - a bulk run of opens (`features::bulk_run`; evidence twice over, above): the same
///   wholesale leaving as a sweep of searches, a record at a time. The model weighs the
///   hour's patients as one reason among thirty, and where the audit trail names no
///   department nothing else in a sweep through the hospital's records looks unusual: on
///   the simulated hospitals written as Firely Server writes them, bulk runs of 34–153
///   patients in ten minutes scored 0.25–0.88 of the threshold, their explanation saying
///   "opened 144 distinct patients in 10 min, 147 in 1 h (usual ≤ 43 per hour)" all the
///   same (BENCHMARKS.md). A pharmacist's or a clerk's worklist makes their own usual
///   high, and stays under it.
/// - a stray run (`Facts::stray_run`; evidence twice over, above): lookups of other
///   departments' long-running records, where the user's department seldom goes, more
///   within the hour than the user's habit makes likely (at most a one-in-55 chance). The
///   model weighs the run as one reason among thirty beside every consult's lookups: on
///   the simulated hospitals such runs scored 0.5–0.9 of the threshold, their explanation
///   saying "one of 2 such lookups by this user within an hour (their habit makes 0.2
///   expected)" all the same (BENCHMARKS.md). A single lookup stays the model's to judge:
///   it reads exactly like a consult. A service that starts consulting on another
///   department's patients raises cases until its lookups going there make the pair a
///   usual one in the department's pattern.
///
/// Scored so, the event alerts at the threshold ([`LIFTED_SCORE`]) with the returned
/// feature as its leading reason.
pub fn alerts_alone(row: &[f32; N_FEATURES], c: Circumstances) -> Option<Feature> {
    [
        (Feature::WatchedRecordUnrelated, AlertKind::WatchedRecord),
        (Feature::CoworkerRecord, AlertKind::VipSnooping),
    ]
    .into_iter()
    .find(|(f, kind)| row[f.index()] > 0.0 && evidence(*kind, row, c) == Evidence::Twice)
    .map(|(f, _)| f)
    .or((row[Feature::Export.index()] > 0.0).then_some(Feature::Export))
    .or((evidence(AlertKind::WideSearch, row, c) == Evidence::Twice)
        .then_some(Feature::QueryVolume1hVsUsual))
    .or(features::bulk_run(row).then_some(Feature::Patients1hVsUsual))
    .or(c.new_network.then_some(Feature::NewNetworkSite))
    .or((c.foreign_network || c.first_outside).then_some(Feature::NewSourceIp))
    .or(c.stray_run.then_some(Feature::UnrelatedRunSurprise1h))
}

/// The score (a multiple of the threshold) at which an event under the floor that is
/// [`alerts_alone`] alerts: the threshold itself, low severity.
pub const LIFTED_SCORE: f32 = 1.0;

/// An event's score as a multiple of its threshold (`ratio`), lifted to
/// [`LIFTED_SCORE`] where it is under the floor and [`alerts_alone`]; whether it was.
pub fn lift(ratio: f32, alerts_alone: bool) -> (f32, bool) {
    match alerts_alone && Severity::from_ratio(ratio as f64).is_none() {
        true => (LIFTED_SCORE, true),
        false => (ratio, false),
    }
}

/// Contributions that make `feature` the leading reason of an explanation: its share set
/// to the others' sum, so it comes first and what stays beside it is what weighed most.
fn leading(contrib: &[f32; N_FEATURES], feature: Feature) -> [f32; N_FEATURES] {
    let mut c = *contrib;
    c[feature.index()] = contrib.iter().sum::<f32>().max(1e-6);
    c
}

/// Whether an alert stands without any site baseline: a burst of failed logins or a bulk
/// data export is suspicious in any hospital. Either among its reasons will do, not only
/// the strongest: a new user's burst at night names the hour first (judged against the
/// site's hours while the user has none), and the burst is no less a burst.
pub fn needs_no_baseline(kinds: &[AlertKind], r: &AuditRecord) -> bool {
    kinds.iter().any(|k| match k {
        AlertKind::FailedLogins => true,
        AlertKind::MassExport => r.query.as_ref().is_some_and(|q| q.export),
        _ => false,
    })
}

pub struct Detector {
    ctx: Context,
    model: Model,
    /// Keys replayed into the context since the last snapshot (so a key is replayed once).
    replayed: HashSet<String>,
    /// Set when the context started from a model's baselines.
    pass_over: Option<PassOver>,
    /// Learning the site (its model was not trained on it): only alerts that need no
    /// baseline are raised.
    learning: bool,
    /// What the events scored by this process carried.
    coverage: coverage::Coverage,
    /// The site's care context, used while the model was trained with one.
    care: Option<std::sync::Arc<crate::care::Index>>,
    /// What is kept, while a site model trains, to hand the context over to its baselines.
    handover: handover::Handover,
}

impl Detector {
    pub fn new(model: Model, ctx: Context) -> Self {
        Detector {
            ctx,
            model,
            replayed: HashSet::new(),
            pass_over: None,
            learning: false,
            coverage: coverage::Coverage::default(),
            care: None,
            handover: handover::Handover::Idle,
        }
    }

    /// What the events scored by this process carried (see `coverage`).
    pub fn coverage(&self) -> coverage::Coverage {
        self.coverage
    }

    /// Learn the site before alerting on what needs its baselines (see `needs_no_baseline`).
    pub fn learning(mut self, on: bool) -> Self {
        self.learning = on;
        self
    }

    pub fn is_learning(&self) -> bool {
        self.learning
    }

    /// Keep (`true`) the events folded into the context from now on, to hand it over to the
    /// baselines of a site model about to be trained ([`handover`]); `false`: stop and
    /// drop them (the training failed).
    pub fn keep_for_handover(&mut self, on: bool) {
        self.handover = match on {
            true => handover::Handover::Keeping(Vec::new()),
            false => handover::Handover::Idle,
        };
    }

    /// Switch to the site's own model (trained while learning): learning ends. The context
    /// becomes the model's baselines (`site`), with the events folded in since they were
    /// learned folded in again, when it can be handed over ([`handover::hand_over`]);
    /// otherwise the followed context is kept, and the reason returned.
    pub fn use_site_model(
        &mut self,
        model: Model,
        site: Option<handover::SiteBaselines>,
    ) -> Result<usize, handover::Kept> {
        self.model = model;
        self.learning = false;
        self.apply_care();
        let kept = std::mem::take(&mut self.handover);
        let (baselines, after) = handover::hand_over(kept, site)?;
        self.ctx.adopt_history(baselines.context);
        for r in &after {
            self.ctx.replay(r);
        }
        Ok(after.len())
    }

    /// A detector whose context was seeded from a model's baselines: events `rule` says
    /// were learned already are passed over.
    pub fn with_pass_over(mut self, rule: PassOver) -> Self {
        self.pass_over = Some(rule);
        self
    }

    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// What the context's memory bounds made it forget since the last call.
    pub fn take_forgotten(&mut self) -> features::Forgotten {
        self.ctx.take_forgotten()
    }

    /// The users who joined a peer group since the last call, and how many more did than
    /// are listed (see `Context::take_joined`).
    pub fn take_joined(&mut self) -> (Vec<features::Joined>, u64) {
        self.ctx.take_joined()
    }

    /// Use the site's care context from the next event on (see `Context::set_care`), if
    /// the model was trained with one; false when it was not (the context is then kept for
    /// a later model, not used: retrain with it).
    pub fn set_care(&mut self, index: Option<std::sync::Arc<crate::care::Index>>) -> bool {
        self.care = index;
        self.apply_care()
    }

    fn apply_care(&mut self) -> bool {
        let usable = self.model.meta.training.care_context;
        self.ctx
            .set_care(if usable { self.care.clone() } else { None });
        usable || self.care.is_none()
    }

    /// Serialise the context; called when the cursor is committed.
    pub fn snapshot(&mut self) -> Vec<u8> {
        self.replayed.clear();
        self.ctx.to_bytes()
    }

    /// Score the `New` events of a batch in order; `Replay` ones only update the context.
    pub fn process(
        &mut self,
        batch: Vec<(Fetched, KeyStatus)>,
    ) -> Result<Vec<ScoredEvent>, model::ModelError> {
        let mut rows = Vec::with_capacity(batch.len());
        let mut kept = Vec::with_capacity(batch.len());
        let mut passed = Vec::new();
        for (f, status) in batch {
            let learned = |r| self.pass_over.as_ref().is_some_and(|p| p.passes_over(r));
            match status {
                KeyStatus::New if learned(&f.record) => passed.push(f),
                KeyStatus::Replay if learned(&f.record) => {}
                KeyStatus::New => {
                    let (x, facts) = self.ctx.observe(&f.record);
                    self.handover.keep(&f.record);
                    let mut carried = coverage::Coverage::of(&f.record);
                    carried.department_from_context = facts.dept_from_care as u64;
                    carried.department_from_peers = facts.dept_from_peers as u64;
                    self.coverage.add(&carried);
                    rows.push(x);
                    kept.push((f, facts, carried));
                }
                KeyStatus::Replay => {
                    if self.replayed.insert(f.record.key.clone()) {
                        self.ctx.replay(&f.record);
                        self.handover.keep(&f.record);
                    }
                }
                KeyStatus::Seen => {}
            }
        }
        let records: Vec<&AuditRecord> = kept.iter().map(|(f, _, _)| &f.record).collect();
        let facts: Vec<&Facts> = kept.iter().map(|(_, facts, _)| facts).collect();
        let mut verdicts = judge(&self.model, &rows, &facts, &records, Explain::Alerts)?;
        one_alert_per_fanned_search(&mut self.ctx, &mut verdicts, &records);
        let passed = passed.into_iter().map(|fetched| ScoredEvent {
            carried: coverage::Coverage::of(&fetched.record),
            fetched,
            score: 0.0,
            severity: None,
            summary: String::new(),
            explanation: Vec::new(),
            kinds: Vec::new(),
            evidence: Evidence::Single,
            passed_over: true,
            held: false,
        });
        let learning = self.learning;
        Ok(passed
            .chain(
                kept.into_iter()
                    .zip(verdicts)
                    .map(|((fetched, _, carried), v)| {
                        let held = learning
                            && v.severity.is_some()
                            && !needs_no_baseline(&v.kinds, &fetched.record);
                        let severity = v.severity.filter(|_| !held);
                        ScoredEvent {
                            fetched,
                            score: v.score,
                            severity,
                            summary: match (v.explanation.first(), severity) {
                                (_, None) => String::new(),
                                (Some(first), _) => first.clone(),
                                (None, Some(_)) => "unusual combination of features".into(),
                            },
                            explanation: v.explanation,
                            kinds: v.kinds,
                            evidence: v.evidence,
                            passed_over: false,
                            held,
                            carried,
                        }
                    }),
            )
            .collect())
    }
}

/// What the detector concludes about one event.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// Anomaly score divided by the calibrated threshold (≥ 1 is anomalous; an alert from
    /// [`crate::alerts::ALERT_FLOOR`]).
    pub score: f32,
    pub severity: Option<Severity>,
    pub explanation: Vec<String>,
    pub kinds: Vec<AlertKind>,
    /// What it brings to its case's corroboration ([`evidence`]; `Single` below the
    /// floor).
    pub evidence: Evidence,
}

/// Said after the leading reason of an alert [`lift`]ed to the threshold.
pub const LIFTED: &str =
    " (alerted for this alone: the pattern as a whole scored under the threshold)";

/// Which verdicts get their explanation in words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Explain {
    /// Only alerts, events from [`crate::alerts::ALERT_FLOOR`] (the daemon: only alerts are
    /// stored, and wording every event would cost a quarter of the scoring time).
    Alerts,
    /// Every event (the `score` command writes one explanation per row).
    All,
}

/// Score feature rows and explain them: the one place a score becomes a verdict.
fn judge(
    model: &Model,
    rows: &[[f32; N_FEATURES]],
    facts: &[&Facts],
    records: &[&AuditRecord],
    which: Explain,
) -> Result<Vec<Verdict>, model::ModelError> {
    Ok(model
        .score(rows)?
        .into_iter()
        .zip(rows.iter().zip(facts.iter().zip(records)))
        .map(|(s, (row, (f, r)))| {
            let alone = alerts_alone(row, Circumstances::of(f));
            let (score, lifted) = lift(s.score / model.meta.threshold_for(&s), alone.is_some());
            let severity = Severity::from_ratio(score as f64);
            let (mut explanation, kinds) = match (
                severity.is_some() || which == Explain::All,
                alone.filter(|_| lifted),
            ) {
                (true, Some(reason)) => explain(&leading(&s.contributions, reason), f, r),
                (true, None) => explain(&s.contributions, f, r),
                (false, _) => (Vec::new(), Vec::new()),
            };
            if let (true, Some(first)) = (lifted, explanation.first_mut()) {
                first.push_str(LIFTED);
            }
            let evidence = match severity {
                Some(_) => evidence(AlertKind::strongest(&kinds), row, Circumstances::of(f)),
                None => Evidence::Single,
            };
            Verdict {
                score,
                severity,
                explanation,
                kinds,
                evidence,
            }
        })
        .collect())
}

/// A search written once per patient in its results alerts once: the first of its events
/// to reach the threshold; the others keep their score and explanation, without severity.
fn one_alert_per_fanned_search(
    ctx: &mut Context,
    verdicts: &mut [Verdict],
    records: &[&AuditRecord],
) {
    for (v, r) in verdicts.iter_mut().zip(records) {
        if v.severity.is_some() && !ctx.claim_alert(r) {
            v.severity = None;
        }
    }
}

/// Score every event of a stream in order (the `score` command and the benchmarks),
/// returning each event's feature row with its verdict. Events `pass_over` says the
/// context has learned already are scored from the context as it stands but not learned
/// again.
pub fn score_stream(
    model: &Model,
    ctx: &mut Context,
    records: &[AuditRecord],
    batch: usize,
    which: Explain,
    pass_over: Option<&PassOver>,
) -> Result<Vec<([f32; N_FEATURES], Verdict)>, model::ModelError> {
    let mut out = Vec::with_capacity(records.len());
    for chunk in records.chunks(batch.max(1)) {
        let (rows, facts): (Vec<_>, Vec<_>) = chunk
            .iter()
            .map(|r| match pass_over {
                Some(p) if p.passes_over(r) => ctx.peek(r),
                _ => ctx.observe(r),
            })
            .unzip();
        let facts: Vec<&Facts> = facts.iter().collect();
        let recs: Vec<&AuditRecord> = chunk.iter().collect();
        let mut verdicts = judge(model, &rows, &facts, &recs, which)?;
        one_alert_per_fanned_search(ctx, &mut verdicts, &recs);
        out.extend(rows.iter().copied().zip(verdicts));
    }
    Ok(out)
}

fn contrib_of(c: &[f32; N_FEATURES], f: Feature) -> f32 {
    c[f.index()]
}

fn pct(x: f32) -> String {
    format!("{:.0}%", (x * 100.0).clamp(0.0, 100.0))
}

/// A small share with one decimal, said as under 0.1 % where that would print 0.0 %.
fn small_pct(x: f32) -> String {
    match x {
        x if x <= 0.0 => "none".into(),
        x if x < 0.001 => "under 0.1%".into(),
        x => format!("{:.1}%", (x * 100.0).min(100.0)),
    }
}

/// An expected count with one decimal, said as under 0.1 where that would print 0.0.
fn expected(x: f32) -> String {
    match x < 0.05 {
        true => "under 0.1".into(),
        false => format!("{x:.1}"),
    }
}

/// Why a watch list could not be read. A bad line is named by number, never by content.
#[derive(Debug, thiserror::Error)]
pub enum WatchListError {
    #[error("cannot read it: {0}")]
    Unreadable(#[source] std::io::Error),
    #[error("line {0} is not a patient reference (Patient/<id>, or an identifier system|value)")]
    BadLine(usize),
}

impl WatchListError {
    pub fn kind(&self) -> &'static str {
        match self {
            WatchListError::Unreadable(_) => "watch_list_unreadable",
            WatchListError::BadLine(_) => "watch_list_bad_line",
        }
    }
}

/// Read a watch list: one patient reference per line (`Patient/123`, an absolute or
/// versioned reference, or an identifier `system|value`); blank lines and lines starting
/// with `#` are skipped. An error names the line, never its content (a mistyped line may
/// hold a patient's name).
pub fn read_watch_list(path: &std::path::Path) -> Result<Vec<String>, WatchListError> {
    let text = std::fs::read_to_string(path).map_err(WatchListError::Unreadable)?;
    let mut refs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let key = features::watch_key(l);
        let patient = key.len() > "Patient/".len() && key.starts_with("Patient/");
        let identifier = l.split_once('|').is_some_and(|(_, v)| !v.is_empty());
        if l.contains(char::is_whitespace) || !(patient || identifier) {
            return Err(WatchListError::BadLine(i + 1));
        }
        refs.push(key.to_string());
    }
    Ok(refs)
}

/// The part of a score a feature must carry to be named as a reason (the strongest always is).
const REASON_SHARE: f32 = 0.08;

const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// A past span in words: hours within two days, days after.
fn ago(ms: i64) -> String {
    let hours = ms.max(0) / 3_600_000;
    if hours < 48 {
        format!("{hours} h")
    } else {
        format!("{} days", hours / 24)
    }
}

/// Plain-language reasons from the top contributing features, strongest first.
pub fn explain(
    contrib: &[f32; N_FEATURES],
    f: &Facts,
    r: &AuditRecord,
) -> (Vec<String>, Vec<AlertKind>) {
    let total: f32 = contrib.iter().sum::<f32>().max(1e-9);
    let mut idx: Vec<usize> = (0..N_FEATURES).collect();
    idx.sort_by(|a, b| contrib[*b].total_cmp(&contrib[*a]));
    let mut reasons: Vec<String> = Vec::new();
    let mut kinds: Vec<AlertKind> = Vec::new();
    for &i in idx.iter().take(4) {
        if contrib[i] < REASON_SHARE * total && !reasons.is_empty() {
            break;
        }
        let feature = Feature::ALL[i];
        let kind = feature.kind();
        if kinds.contains(&kind) {
            continue;
        }
        let text = match kind {
            AlertKind::AfterHours => {
                let usual = f
                    .user_usual_hours()
                    .map(|(a, b)| format!("usual hours {a:02}:00–{:02}:00", (b + 1) % 24))
                    .unwrap_or_else(|| "no usual hours learned yet".into());
                let day = &WEEKDAYS[f.weekday as usize % 7][..3];
                let mut text = match f.judged_hour {
                    // A session running late or begun early, judged at a usual hour of it.
                    Some(j) => format!(
                        "activity at {:02}:00 on {day}, judged as at {j:02}:00, a usual hour of the same session: \
                         {} of this user's past activity falls in that hour ({usual})",
                        f.hour,
                        pct(f.user_hour_share)
                    ),
                    None => format!(
                        "activity at {:02}:00 on {day}, {} of this user's past activity falls in that hour ({usual})",
                        f.hour,
                        pct(f.user_hour_share)
                    ),
                };
                // A day the user seldom works on says as much as the hour: named where it
                // counts as a reason does.
                if contrib_of(contrib, Feature::WeekdayRarityUser) >= REASON_SHARE * total {
                    text.push_str(&format!(
                        "; {} of their past activity falls on a {}",
                        pct(f.user_weekday_share),
                        WEEKDAYS[f.weekday as usize % 7]
                    ));
                }
                if f.user_sessions > 0 {
                    text.push_str(&format!(
                        "; the session began around {:02}:00, when {} of the user's {} earlier sessions began",
                        f.session_start_hour, f.starts_at_that_hour, f.user_sessions
                    ));
                }
                if let Some(n) = f.odd_starts {
                    text.push_str(&format!(
                        "; {n} of their earlier sessions began within {ODD_HOUR_BAND} h of {:02}:00, at hours \
                         they seldom work (a habit, counted in)",
                        f.judged_hour.unwrap_or(f.hour)
                    ));
                }
                let peers = contrib_of(contrib, Feature::HourRarityPeers)
                    + contrib_of(contrib, Feature::OffHoursUserAndPeers);
                if let (Some(share), true) = (f.peer_hour_share, peers > 0.0) {
                    let whose = f.dept.as_deref().map_or("the user's department".to_string(), |d| d.to_string());
                    text.push_str(&format!("; {} of {whose}'s activity falls in that hour", pct(share)));
                }
                text
            }
            AlertKind::BulkAccess => format!(
                "opened {} distinct patients in 10 min, {} in 1 h (usual ≤ {:.0} per hour)",
                f.d10,
                f.d1h,
                f.usual_d1h.ceil()
            ),
            AlertKind::CrossDepartment => {
                let access = match f.first_pair {
                    true => "first access to this patient",
                    false => "access to this patient",
                };
                let first = match f.unrelated_1h {
                    n if n > 1 => format!(
                        "{access}, one of {n} such lookups by this user within an hour (their habit makes {} expected)",
                        expected(f.unrelated_expected_1h)
                    ),
                    _ => access.to_string(),
                };
                let mut text = match (f.dept_share, &f.dept) {
                    (Some(s), Some(d)) => format!(
                        "{first}; {} of the patient's record activity ({} earlier accesses) comes from {d}",
                        pct(s),
                        f.patient_history
                    ),
                    _ if f.patient_history == 0 => format!("{first}; the patient has no earlier record activity"),
                    _ => format!("{first}; the user's department is unknown"),
                };
                // The department's pattern says something only once it has one.
                if let (Some(home), Some(d), true) = (&f.home_dept, &f.dept, f.pair_total as f32 >= features::MIN_PATTERN) {
                    text.push_str(&format!(
                        "; the patient is mostly seen by {home}, and {} of {d}'s {} earlier lookups of other departments' patients went there",
                        f.pair_count, f.pair_total
                    ));
                }
                if let (true, Some(d)) = (f.dept_from_peers, &f.dept) {
                    text.push_str(&format!(
                        "; {d}: the users who open the same patients as this user, read as their department (the audit trail names none)"
                    ));
                }
                let outside = contrib_of(contrib, Feature::OutsideCare);
                let history = kind_total(contrib, AlertKind::CrossDepartment) - outside;
                match (outside > 0.0, history > 0.0) {
                    (true, true) => format!("{OUTSIDE_CARE}; {text}"),
                    (true, false) => format!("{OUTSIDE_CARE} ({})", if f.first_pair { "first access to this patient" } else { "an access to this patient" }),
                    _ => text,
                }
            }
            AlertKind::VipSnooping => {
                let crowd = format!(
                    "{} different users opened this patient's record in 24 h (usual {:.0})",
                    f.patient_users_24h,
                    f.usual_patient_users.ceil()
                );
                let mut text = match f.unrelated_users_24h {
                    0 => crowd,
                    n => format!(
                        "{crowd}, {n} of them {} — a watched or VIP record?",
                        if f.care_covered {
                            "with no treatment relationship or department history with the patient"
                        } else {
                            "from departments with (almost) no history with the patient"
                        }
                    ),
                };
                if f.unexplained_depts_24h > 1 {
                    text.push_str(&format!(
                        "; staff of {} departments came outside their usual consult pattern",
                        f.unexplained_depts_24h
                    ));
                }
                let coworker = contrib_of(contrib, Feature::CoworkerRecord);
                let crowd = kind_total(contrib, AlertKind::VipSnooping) - coworker;
                let staff = format!(
                    "{COWORKER_RECORD} and no treatment relationship links this user to them{}{}",
                    alone(f),
                    own_colleague(f)
                );
                match (coworker > 0.0, crowd > 0.0) {
                    (true, true) => format!("{staff}; {text}"),
                    (true, false) => staff,
                    _ => text,
                }
            }
            AlertKind::FailedLogins => {
                format!("{} failed logins by this user in the last 15 min", f.failed_15m)
            }
            AlertKind::FailedRequests => format!(
                "{} refused requests by this user within an hour (outcome {}; their usual failure rate makes {} expected)",
                f.failed_requests_1h, r.outcome, expected(f.failed_requests_expected_1h)
            ),
            AlertKind::NewSource => {
                let ip = r.source_ip.as_deref().unwrap_or("?");
                let app = r.client_app.as_deref().unwrap_or("?");
                let site_net = contrib_of(contrib, Feature::NewNetworkSite);
                let site_app = contrib_of(contrib, Feature::NewClientAppSite);
                let user_part = contrib_of(contrib, Feature::NewSourceIp)
                    .max(contrib_of(contrib, Feature::NewClientApp));
                // Another department's network alerts alone (`alerts_alone`): say so first.
                let foreign = f.foreign_network.as_ref().map(|n| {
                    format!(
                        "access from {ip}, a network of {}'s ({:.0}% of its {} events at the site), which {} had never worked from",
                        n.home,
                        100.0 * n.home_share,
                        n.events,
                        n.from
                    )
                });
                foreign.or(match (f.network_site_uses, f.app_site_uses) {
                    (Some(n), _) if site_net >= site_app && site_net >= user_part => {
                        Some(format!(
                            "access from {ip} with {app}: a network the site had seen {n} times before"
                        ))
                    }
                    (_, Some(n)) if site_app > user_part => Some(format!(
                        "access with {app} from {ip}: a client the site had seen {n} times before"
                    )),
                    _ => None,
                })
                .or(f.first_outside.map(|share| {
                    format!(
                        "access from {ip}, outside the site's private networks: this user's first from outside ({} of the site's events come from outside)",
                        small_pct(share)
                    )
                }))
                .unwrap_or_else(|| match (f.ip_uses, f.app_uses) {
                    (Some(0), Some(0)) => format!("first access from {ip} with {app} for this user"),
                    (Some(n), _) if contrib_of(contrib, Feature::NewSourceIp) >= contrib_of(contrib, Feature::NewClientApp) => {
                        format!("access from {ip}, an address this user had used {n} times before")
                    }
                    (_, Some(n)) => format!("access with {app}, a client this user had used {n} times before"),
                    _ => "unusual source for this user".into(),
                })
            }
            AlertKind::DormantAccount => match f.revived {
                Some(rv) => format!(
                    "the account came back {} ago after {:.0} days without any activity (usual longest break {:.0} days) and is not back at work: {:.0} events since, under {:.0} of its usual sessions' worth ({:.0})",
                    ago(r.recorded.timestamp_millis() - rv.at_ms),
                    rv.gap_days,
                    rv.usual_days,
                    rv.events,
                    features::REVIVAL_SESSIONS,
                    rv.work
                ),
                None => format!(
                    "session began after {:.0} days without any activity by this user (usual longest break {:.0} days)",
                    f.days_inactive, f.usual_break_days
                ),
            },
            AlertKind::MassExport => {
                // Each part that counted, strongest first.
                let mut parts: Vec<(f32, String)> = Vec::new();
                let mut say = |feature: Feature, text: String| {
                    let c = contrib_of(contrib, feature);
                    if c > 0.0 {
                        parts.push((c, text));
                    }
                };
                if f.export {
                    say(Feature::Export, "bulk data export ($export)".into());
                }
                let count = f.query_count.unwrap_or(0);
                if f.patient_sweep {
                    let page = if f.later_page { ", a later page" } else { "" };
                    let run = match f.sweeps_1h {
                        n if n > 1 => format!(", the {n}th such search by this user within an hour"),
                        _ => String::new(),
                    };
                    say(
                        Feature::DemographicSweep,
                        format!("a Patient search returning people's demographics wholesale, {count} records a page{page}{run}"),
                    );
                }
                if count > 0 {
                    say(Feature::QuerySize, format!("search asking for {count} records at once"));
                }
                parts.sort_by(|a, b| b.0.total_cmp(&a.0));
                match parts.is_empty() {
                    true => "an unusually large search".to_string(),
                    false => parts.into_iter().map(|p| p.1).collect::<Vec<_>>().join("; "),
                }
            }
            AlertKind::WideSearch => match f.asked_1h {
                0 => "searches asking for more records than this user's usual".to_string(),
                n => format!(
                    "this user's searches asked for {n} records within an hour (usual ≤ {:.0})",
                    f.usual_asked_1h.ceil()
                ),
            },
            AlertKind::WatchedRecord => {
                let from = match (&f.dept, f.dept_share, f.dept_idle_days, f.record_quiet_days) {
                    (Some(d), Some(s), Some(days), _) => format!(
                        "from {d}, which has {} of the record's activity but has done no work on it in {days} days",
                        pct(s)
                    ),
                    (Some(d), Some(s), None, Some(days)) => format!(
                        "from {d}, which has {} of the record's activity, when no one had worked on the record in {days} days",
                        pct(s)
                    ),
                    (Some(d), Some(s), None, None) => format!("from {d}, which has {} of the record's activity", pct(s)),
                    (Some(d), None, _, _) => format!("from {d}, a record no one had opened before"),
                    _ => "from an unknown department".into(),
                };
                let what = match f.staff_record {
                    true => STAFF_NAMED_RECORD,
                    false => "a watched record (on the site's watch list, or marked restricted or VIP by the server)",
                };
                let first = if f.first_pair { ", for the first time by this user" } else { "" };
                let why = match (f.care_covered, f.care) {
                    (true, None) => "no encounter, appointment, episode of care or care team links this user to the patient",
                    _ => "no working relationship",
                };
                format!("{what} opened {from}{first}: {why}{}{}", alone(f), own_colleague(f))
            }
            AlertKind::FamilySnooping if contrib_of(contrib, Feature::PersonalLink) + contrib_of(contrib, Feature::SelfRecord) > 0.0 => {
                let link = f.personal.map_or("a personal link", |p| p.words());
                let name = contrib_of(contrib, Feature::SameFamilyNameRarity) > 0.0;
                match name {
                    true => format!("{link}; the family name is one {} of {} earlier patients had", f.name_patients, f.patients_seen),
                    false => link.to_string(),
                }
            }
            AlertKind::FamilySnooping => match f.patients_seen {
                0 => "the user shares the patient's family name (relative or self lookup?)".into(),
                seen => format!(
                    "the user shares the patient's family name, which {} of {seen} earlier patients had: by chance one day in {} for a user opening {} new patients a day (relative or self lookup?)",
                    f.name_patients,
                    features::namesake_days(f.name_patients, f.patients_seen, f.new_patients_per_day),
                    f.new_patients_per_day.round()
                ),
            },
            AlertKind::UnusualPattern => format!(
                "unusual {} ({})",
                feature.name().replace('_', " "),
                r.interaction.as_str()
            ),
        };
        kinds.push(kind);
        reasons.push(text);
    }
    // What the care context knew in the user's favour, which lowered the score (the
    // signals a treatment relationship answers counted as related).
    if let (Some(rel), false) = (f.care, reasons.is_empty()) {
        reasons.push(format!(
            "care relationship, counted in the user's favour: {}",
            rel.words()
        ));
    }
    (reasons, kinds)
}

/// What a watched-record or colleague's-record reason adds when no care is going on in the
/// record (evidence twice over, `Circumstances::no_care_on_record`): no one else has opened
/// it for a day, or the one other user who did came without a relationship too.
fn alone(f: &Facts) -> &'static str {
    match (f.patient_users_24h <= 1, f.no_related_visitor) {
        (true, _) => ", and no one else has opened it in 24 h",
        (false, true) => ", and the one other user who opened it in 24 h had none either",
        (false, false) => "",
    }
}

/// What a colleague's-record reason adds when the colleague works in the user's own
/// department (`Facts::own_colleague`, which queues its case without corroboration).
fn own_colleague(f: &Facts) -> &'static str {
    match f.own_colleague {
        true => "; the patient works in this user's own department",
        false => "",
    }
}

/// What an explanation says of an access outside any known treatment relationship.
const OUTSIDE_CARE: &str =
    "no encounter, appointment, episode of care or care team active at the time links this user or their department to the patient";

/// The summed contribution of a kind's features.
fn kind_total(contrib: &[f32; N_FEATURES], kind: AlertKind) -> f32 {
    Feature::ALL
        .iter()
        .filter(|f| f.kind() == kind)
        .map(|f| contrib[f.index()])
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Circumstances that bring nothing beside the row.
    const NONE: Circumstances = Circumstances {
        own_colleague: false,
        no_related_visitor: false,
        new_network: false,
        foreign_network: false,
        first_outside: false,
        stray_run: false,
    };
    /// The record of a colleague of the user's own department.
    const COLLEAGUE: Circumstances = Circumstances {
        own_colleague: true,
        ..NONE
    };
    /// One other user opened the record today, neither with a relationship.
    const NO_RELATED_VISITOR: Circumstances = Circumstances {
        no_related_visitor: true,
        ..NONE
    };

    fn colleague(own: bool) -> Circumstances {
        Circumstances {
            own_colleague: own,
            ..NONE
        }
    }

    /// A bare AuditEvent recorded at `recorded`.
    fn record_at(recorded: &str) -> AuditRecord {
        crate::fhir::AuditEvent {
            resource_type: "AuditEvent".into(),
            id: Some("a".into()),
            recorded: Some(recorded.into()),
            ..Default::default()
        }
        .into_record()
        .unwrap()
    }

    #[test]
    fn explanation_names_bulk_access_in_words() {
        let mut c = [0f32; N_FEATURES];
        c[3] = 50.0;
        c[4] = 30.0;
        c[0] = 1.0;
        let facts = Facts {
            d10: 212,
            d1h: 240,
            usual_d1h: 14.2,
            ..Default::default()
        };
        let rec = record_at("2024-01-01T00:00:00Z");
        let (why, kinds) = explain(&c, &facts, &rec);
        assert_eq!(kinds, vec![AlertKind::BulkAccess]);
        let mut c = [0f32; N_FEATURES];
        c[Feature::DeptPairRarity.index()] = 10.0;
        let facts = Facts {
            first_pair: true,
            unrelated_1h: 1,
            dept: Some("Cardiology".into()),
            dept_share: Some(0.0),
            patient_history: 42,
            home_dept: Some("Oncology".into()),
            pair_count: 0,
            pair_total: 180,
            ..Default::default()
        };
        let (why2, kinds) = explain(&c, &facts, &rec);
        assert_eq!(kinds, vec![AlertKind::CrossDepartment]);
        // Without a pattern yet, the reason does not quote one.
        let young = Facts {
            pair_total: 3,
            ..facts.clone()
        };
        assert!(!explain(&c, &young, &rec).0[0].contains("mostly seen by"));
        assert_eq!(
            why2[0],
            "first access to this patient; 0% of the patient's record activity (42 earlier accesses) comes from \
             Cardiology; the patient is mostly seen by Oncology, and 0 of Cardiology's 180 earlier lookups of \
             other departments' patients went there"
        );
        assert_eq!(
            why[0],
            "opened 212 distinct patients in 10 min, 240 in 1 h (usual ≤ 15 per hour)"
        );
    }

    #[test]
    fn a_burst_or_an_export_among_the_reasons_needs_no_baseline() {
        let rec = record_at("2024-01-01T23:00:00Z");
        use AlertKind::*;
        assert!(needs_no_baseline(&[AfterHours, FailedLogins], &rec));
        assert!(needs_no_baseline(&[FailedLogins], &rec));
        assert!(!needs_no_baseline(&[AfterHours, NewSource], &rec));
        // A very large search is not an `$export`.
        assert!(!needs_no_baseline(&[AfterHours, MassExport], &rec));
    }

    /// The second piece of evidence a colleague of the user's own department carries is
    /// said in the reason it stands beside, and not where it did not count.
    #[test]
    fn a_colleague_of_the_users_own_department_is_said() {
        let rec = record_at("2024-01-01T10:00:00Z");
        let mut c = [0f32; N_FEATURES];
        c[Feature::WatchedRecordUnrelated.index()] = 2.0;
        let facts = Facts {
            watched: true,
            staff_record: true,
            own_colleague: true,
            dept: Some("Cardiology".into()),
            dept_share: Some(0.0),
            first_pair: true,
            ..Default::default()
        };
        let (why, kinds) = explain(&c, &facts, &rec);
        assert_eq!(kinds, vec![AlertKind::WatchedRecord]);
        assert!(why[0].starts_with(STAFF_NAMED_RECORD), "{}", why[0]);
        assert!(why[0].ends_with("; the patient works in this user's own department"));
        let other = Facts {
            own_colleague: false,
            ..facts.clone()
        };
        assert!(!explain(&c, &other, &rec).0[0].contains("own department"));
        // A record no one had opened before: said so, not an unknown department.
        let fresh = Facts {
            dept_share: None,
            ..facts.clone()
        };
        let why = explain(&c, &fresh, &rec).0;
        assert!(
            why[0].contains("from Cardiology, a record no one had opened before"),
            "{}",
            why[0]
        );
        // Alone on the record today (what makes the look evidence twice over, whoever's
        // colleague it is): said; with others at work on it, not.
        let alone = |users: u32| {
            let f = Facts {
                own_colleague: false,
                patient_users_24h: users,
                ..facts.clone()
            };
            explain(&c, &f, &rec).0[0].contains("and no one else has opened it in 24 h")
        };
        assert!(alone(1) && !alone(2) && !alone(5));
        // A department with a share of the record that no longer works on it, and a record
        // no one has worked on for days: each said as it is.
        for (dept_idle_days, record_quiet_days, said) in [
            (Some(23), None, "from Cardiology, which has 7% of the record's activity but has done no work on it in 23 days"),
            (None, Some(3), "from Cardiology, which has 7% of the record's activity, when no one had worked on the record in 3 days"),
        ] {
            let f = Facts {
                dept_share: Some(0.07),
                dept_idle_days,
                record_quiet_days,
                ..facts.clone()
            };
            let why = explain(&c, &f, &rec).0;
            assert!(why[0].contains(said), "{}", why[0]);
        }
        // A crowd around the record is not about the colleague: not said there.
        let mut c = [0f32; N_FEATURES];
        c[Feature::PatientUsers24h.index()] = 2.0;
        let (why, kinds) = explain(&c, &facts, &rec);
        assert_eq!(kinds, vec![AlertKind::VipSnooping]);
        assert!(!why[0].contains("own department"), "{}", why[0]);
    }

    /// A bulk run of opens alerts whatever its score, led by the hour against the user's
    /// usual, and is evidence twice over; fewer patients in the ten minutes, or an hour
    /// short of three times the usual high, is the model's to weigh.
    #[test]
    fn a_bulk_run_of_opens_alerts_whatever_its_score() {
        let run = |d10: u32, ratio: f32| {
            let mut row = [0f32; N_FEATURES];
            row[Feature::HasPatient.index()] = 1.0;
            row[Feature::DistinctPatients10m.index()] = (d10 as f32).ln_1p();
            row[Feature::Patients1hVsUsual.index()] = ratio.ln();
            row
        };
        let (opens, ratio) = (features::BULK_OPENS_10M, features::BULK_RATIO);
        let bulk = run(opens, ratio);
        assert_eq!(alerts_alone(&bulk, NONE), Some(Feature::Patients1hVsUsual));
        assert_eq!(Feature::Patients1hVsUsual.kind(), AlertKind::BulkAccess);
        assert_eq!(
            evidence(AlertKind::BulkAccess, &bulk, NONE),
            Evidence::Twice
        );
        for (row, why) in [
            (run(opens - 1, 10.0), "too few patients in ten minutes"),
            (
                run(150, ratio * 0.99),
                "short of the usual high hour's multiple",
            ),
        ] {
            assert_eq!(alerts_alone(&row, NONE), None, "{why}");
            assert_eq!(
                evidence(AlertKind::BulkAccess, &row, NONE),
                Evidence::Single
            );
        }
    }

    /// A bulk data export alerts whatever its score, led by that reason, and queues its
    /// case by itself; so does an hour's searches asking for ten times the user's usual
    /// high, but not a single wide search or an hour somewhat wider than usual (their
    /// breadth is the model's to weigh).
    #[test]
    fn a_bulk_export_alerts_whatever_its_score() {
        let mut row = [0f32; N_FEATURES];
        row[Feature::IsSearch.index()] = 1.0;
        row[Feature::QuerySize.index()] = 1000f32.ln_1p();
        assert_eq!(alerts_alone(&row, NONE), None);
        row[Feature::QueryVolume1hVsUsual.index()] = features::SWEEP_RATIO.ln() - 0.01;
        assert_eq!(alerts_alone(&row, NONE), None, "wider than usual");
        row[Feature::QueryVolume1hVsUsual.index()] = features::SWEEP_RATIO.ln();
        assert_eq!(
            alerts_alone(&row, NONE),
            Some(Feature::QueryVolume1hVsUsual),
            "a sweep"
        );
        row[Feature::Export.index()] = 1.0;
        assert_eq!(alerts_alone(&row, NONE), Some(Feature::Export));
        assert_eq!(lift(0.885, true), (LIFTED_SCORE, true));

        let rec = record_at("2024-01-01T10:00:00Z");
        let mut c = [0f32; N_FEATURES];
        c[Feature::HourRarityUser.index()] = 3.0;
        c[Feature::Export.index()] = 0.1;
        let facts = Facts {
            export: true,
            ..Default::default()
        };
        assert_eq!(explain(&c, &facts, &rec).1[0], AlertKind::AfterHours);
        let (why, kinds) = explain(&leading(&c, Feature::Export), &facts, &rec);
        assert_eq!(kinds[0], AlertKind::MassExport);
        assert!(why[0].contains("bulk data export"), "{}", why[0]);
        let evidence = evidence(kinds[0], &row, NONE);
        assert!(crate::cases::queued_on_its_own(
            Severity::Low,
            kinds[0],
            evidence
        ));
    }

    /// The first access from a network no one at the site has worked from alerts as a new
    /// source, and queues its case alone; a network seen once does not alert alone, and an
    /// export keeps the export as its reason.
    #[test]
    fn a_network_new_to_the_site_alerts_whatever_its_score() {
        let mut row = [0f32; N_FEATURES];
        row[Feature::NewNetworkSite.index()] = 0.5;
        assert_eq!(alerts_alone(&row, NONE), None, "seen once");
        row[Feature::NewNetworkSite.index()] = 1.0;
        let new = Circumstances {
            new_network: true,
            ..NONE
        };
        assert_eq!(alerts_alone(&row, new), Some(Feature::NewNetworkSite));
        let kind = Feature::NewNetworkSite.kind();
        assert_eq!(kind, AlertKind::NewSource);
        assert!(crate::cases::queued_on_its_own(
            Severity::Low,
            kind,
            evidence(kind, &row, new)
        ));
        row[Feature::Export.index()] = 1.0;
        assert_eq!(alerts_alone(&row, new), Some(Feature::Export));
    }

    /// The explanation of an access from `ip` led by the address's novelty, with facts `f`.
    fn new_source_explained(f: &Facts, ip: &str) -> (Vec<String>, Vec<AlertKind>) {
        let mut r = record_at("2024-01-01T10:00:00Z");
        r.source_ip = Some(ip.into());
        let mut c = [0f32; N_FEATURES];
        c[Feature::NewSourceIp.index()] = 1.0;
        explain(&c, f, &r)
    }

    /// A department's first access from another department's network alerts as a new
    /// source, led by the address, queued on its own, and says whose network it is.
    #[test]
    fn another_departments_network_alerts_whatever_its_score() {
        let row = [0f32; N_FEATURES];
        let foreign = Circumstances {
            foreign_network: true,
            ..NONE
        };
        assert_eq!(alerts_alone(&row, NONE), None);
        assert_eq!(alerts_alone(&row, foreign), Some(Feature::NewSourceIp));
        let kind = Feature::NewSourceIp.kind();
        assert!(crate::cases::queued_on_its_own(
            Severity::Low,
            kind,
            evidence(kind, &row, foreign)
        ));
        let f = Facts {
            foreign_network: Some(features::ForeignNetwork {
                home: "Emergency".into(),
                from: "Surgery".into(),
                home_share: 0.97,
                events: 850,
            }),
            ip_uses: Some(0),
            ..Default::default()
        };
        let (text, kinds) = new_source_explained(&f, "10.12.0.77");
        assert_eq!(kinds, vec![AlertKind::NewSource]);
        assert_eq!(
            text[0],
            "access from 10.12.0.77, a network of Emergency's (97% of its 850 events at the site), which Surgery had never worked from"
        );
    }

    /// A stray run (lookups of other departments' records where the user's department
    /// seldom goes, more than the user's habit makes likely) alerts whatever its score, as
    /// a lookup of another department's record, evidence twice over; one such lookup, or a
    /// run without the circumstance, waits as before.
    #[test]
    fn a_stray_run_alerts_alone_and_corroborates_itself() {
        let mut row = [0f32; N_FEATURES];
        row[Feature::UnrelatedRunSurprise1h.index()] = 5.0;
        let stray = Circumstances {
            stray_run: true,
            ..NONE
        };
        assert_eq!(
            alerts_alone(&row, stray),
            Some(Feature::UnrelatedRunSurprise1h)
        );
        assert_eq!(
            evidence(AlertKind::CrossDepartment, &row, stray),
            Evidence::Twice
        );
        assert_eq!(alerts_alone(&row, NONE), None);
        assert_eq!(
            evidence(AlertKind::CrossDepartment, &row, NONE),
            Evidence::Single
        );
        let f = Facts {
            first_pair: true,
            unrelated_1h: 2,
            unrelated_expected_1h: 0.2,
            dept_share: Some(0.0),
            dept: Some("Oncology".into()),
            patient_history: 136,
            home_dept: Some("Cardiology".into()),
            pair_count: 3,
            pair_total: 374,
            ..Default::default()
        };
        let mut contrib = [0f32; N_FEATURES];
        contrib[Feature::UnrelatedRunSurprise1h.index()] = 1.0;
        let (why, kinds) = explain(&contrib, &f, &record_at("2024-01-01T10:00:00Z"));
        assert_eq!(kinds, vec![AlertKind::CrossDepartment]);
        assert_eq!(
            why[0],
            "first access to this patient, one of 2 such lookups by this user within an hour (their habit makes 0.2 expected); 0% of the patient's record activity (136 earlier accesses) comes from Oncology; the patient is mostly seen by Cardiology, and 3 of Oncology's 374 earlier lookups of other departments' patients went there"
        );
        // A habit that makes the run all but impossible says so, not "0.0 expected".
        let rare = Facts {
            unrelated_expected_1h: 0.02,
            ..f
        };
        let (why, _) = explain(&contrib, &rare, &record_at("2024-01-01T10:00:00Z"));
        assert!(
            why[0].contains("(their habit makes under 0.1 expected)"),
            "{}",
            why[0]
        );
    }

    /// A user's first access from outside the site's networks alerts as a new source, led
    /// by the address, and says so.
    #[test]
    fn a_users_first_access_from_outside_alerts_whatever_its_score() {
        let row = [0f32; N_FEATURES];
        let outside = Circumstances {
            first_outside: true,
            ..NONE
        };
        assert_eq!(alerts_alone(&row, outside), Some(Feature::NewSourceIp));
        let f = Facts {
            first_outside: Some(0.0004),
            ip_uses: Some(0),
            ..Default::default()
        };
        assert_eq!(
            new_source_explained(&f, "203.0.113.9").0[0],
            "access from 203.0.113.9, outside the site's private networks: this user's first from outside (under 0.1% of the site's events come from outside)"
        );
        let share = |x| {
            let f = Facts {
                first_outside: Some(x),
                ..f.clone()
            };
            new_source_explained(&f, "203.0.113.9").0[0].clone()
        };
        assert!(share(0.0042).contains("(0.4% of the site's events"));
        assert!(share(0.0).contains("(none of the site's events"));
    }

    /// A watched record opened without work, evidence twice over, alerts at the threshold
    /// from under the floor, led by that reason; without the second piece of evidence, or
    /// above the floor, the score stands.
    #[test]
    fn a_watched_record_opened_twice_over_alerts_whatever_its_score() {
        let row = |unrelated: f32, users: f32| {
            let mut x = [0f32; N_FEATURES];
            x[Feature::HasPatient.index()] = 1.0;
            x[Feature::WatchedRecordUnrelated.index()] = unrelated;
            x[Feature::PatientUsers24h.index()] = users.ln_1p();
            x
        };
        let watched = Some(Feature::WatchedRecordUnrelated);
        assert_eq!(alerts_alone(&row(1.0, 1.0), NONE), watched);
        // Others at work on the record: one piece of evidence, unless it is a colleague of
        // the user's own department.
        assert_eq!(alerts_alone(&row(1.0, 3.0), NONE), None);
        assert_eq!(alerts_alone(&row(2.0, 3.0), COLLEAGUE), watched);
        // Not a watched record opened without a working relationship.
        assert_eq!(alerts_alone(&row(0.0, 1.0), NONE), None);
        assert_eq!(alerts_alone(&row(0.0, 1.0), COLLEAGUE), None);
        // A colleague's record the care context knows, opened outside every treatment
        // relationship it states: the same, as that reason.
        let coworker = |users: f32| {
            let mut x = row(0.0, users);
            x[Feature::CoworkerRecord.index()] = 1.0;
            x
        };
        let colleague = Some(Feature::CoworkerRecord);
        assert_eq!(alerts_alone(&coworker(1.0), NONE), colleague);
        assert_eq!(alerts_alone(&coworker(3.0), NONE), None);
        assert_eq!(alerts_alone(&coworker(3.0), COLLEAGUE), colleague);

        assert_eq!(lift(0.5, true), (LIFTED_SCORE, true));
        assert_eq!(lift(0.5, false), (0.5, false));
        assert_eq!(lift(1.7, true), (1.7, false));
        assert_eq!(
            Severity::from_ratio(LIFTED_SCORE as f64),
            Some(Severity::Low)
        );

        // The watched record leads the explanation, whatever weighed most in the score.
        let rec = record_at("2024-01-01T10:00:00Z");
        let mut c = [0f32; N_FEATURES];
        c[Feature::DeptPairRarity.index()] = 5.0;
        c[Feature::WatchedRecordUnrelated.index()] = 0.2;
        let facts = Facts {
            watched: true,
            staff_record: true,
            dept: Some("Laboratory".into()),
            dept_share: Some(0.0),
            patient_history: 12,
            patient_users_24h: 1,
            ..Default::default()
        };
        assert_eq!(explain(&c, &facts, &rec).1[0], AlertKind::CrossDepartment);
        let (why, kinds) = explain(&leading(&c, Feature::WatchedRecordUnrelated), &facts, &rec);
        assert_eq!(kinds[0], AlertKind::WatchedRecord);
        assert!(
            why[0].contains("and no one else has opened it in 24 h"),
            "{}",
            why[0]
        );
        assert_eq!(evidence(kinds[0], &row(1.0, 1.0), NONE), Evidence::Twice);

        // A colleague's record known from the care context leads as that, and says both.
        let mut c = [0f32; N_FEATURES];
        c[Feature::DeptPairRarity.index()] = 5.0;
        c[Feature::CoworkerRecord.index()] = 0.2;
        let facts = Facts {
            personal: Some(crate::care::Personal::Coworker),
            ..facts
        };
        let (why, kinds) = explain(&leading(&c, Feature::CoworkerRecord), &facts, &rec);
        assert_eq!(kinds[0], AlertKind::VipSnooping);
        assert!(
            why[0].starts_with("the patient is a member of staff (a co-worker) and no treatment relationship links this user to them, and no one else has opened it in 24 h"),
            "{}",
            why[0]
        );
        assert_eq!(evidence(kinds[0], &coworker(1.0), NONE), Evidence::Twice);
        let busy = Facts {
            patient_users_24h: 3,
            ..facts
        };
        let why = explain(&leading(&c, Feature::CoworkerRecord), &busy, &rec).0;
        assert!(!why[0].contains("no one else"), "{}", why[0]);
    }

    #[test]
    fn an_hour_judged_as_another_says_which() {
        let mut c = [0f32; N_FEATURES];
        c[Feature::HourRarityUser.index()] = 3.0;
        let mut hours = [0f32; 24];
        hours[8..17].fill(10.0);
        let facts = Facts {
            hour: 18,
            judged_hour: Some(16),
            user_hour_share: 0.11,
            user_hours: Some(hours),
            session_start_hour: 7,
            starts_at_that_hour: 9,
            user_sessions: 24,
            ..Default::default()
        };
        let rec = record_at("2024-01-01T18:00:00Z");
        let (why, kinds) = explain(&c, &facts, &rec);
        assert_eq!(kinds, vec![AlertKind::AfterHours]);
        assert!(
            why[0].starts_with(
                "activity at 18:00 on Mon, judged as at 16:00, a usual hour of the same session: \
                 11% of this user's past activity falls in that hour"
            ),
            "{}",
            why[0]
        );
        let plain = Facts {
            judged_hour: None,
            ..facts
        };
        assert!(!explain(&c, &plain, &rec).0[0].contains("judged"));
    }

    #[test]
    fn a_day_the_user_never_works_is_named_when_it_drives_the_score() {
        let mut c = [0f32; N_FEATURES];
        c[Feature::HourRarityUser.index()] = 0.4;
        c[Feature::WeekdayRarityUser.index()] = 2.0;
        let facts = Facts {
            hour: 9,
            weekday: 0,
            user_hour_share: 0.11,
            user_weekday_share: 0.0,
            ..Default::default()
        };
        let rec = record_at("2024-01-01T09:00:00Z");
        let (why, kinds) = explain(&c, &facts, &rec);
        assert_eq!(kinds, vec![AlertKind::AfterHours]);
        assert!(
            why[0].contains("; 0% of their past activity falls on a Monday"),
            "{}",
            why[0]
        );
        // Where the weekday carries next to nothing, the hour is the reason alone.
        c[Feature::WeekdayRarityUser.index()] = 0.01;
        assert!(!explain(&c, &facts, &rec).0[0].contains("Monday"));
    }

    #[test]
    fn a_habit_of_odd_hours_is_said_when_it_counted() {
        let mut c = [0f32; N_FEATURES];
        c[Feature::HourRarityUser.index()] = 1.2;
        let mut facts = Facts {
            hour: 2,
            weekday: 0,
            user_hour_share: 0.001,
            odd_starts: Some(3),
            ..Default::default()
        };
        let rec = record_at("2024-01-01T02:00:00Z");
        let why = explain(&c, &facts, &rec).0;
        assert!(
            why[0].contains("; 3 of their earlier sessions began within 2 h of 02:00, at hours they seldom work"),
            "{}",
            why[0]
        );
        facts.odd_starts = None;
        assert!(!explain(&c, &facts, &rec).0[0].contains("seldom work"));
    }

    #[test]
    fn an_account_back_from_dormancy_says_when_it_came_back() {
        let mut c = [0f32; N_FEATURES];
        c[Feature::DormancyVsUsualBreak.index()] = 2.0;
        let rec = record_at("2024-01-03T09:00:00Z");
        let mut facts = Facts {
            revived: Some(features::Revived {
                at_ms: record_at("2024-01-02T08:00:00Z")
                    .recorded
                    .timestamp_millis(),
                gap_days: 31.0,
                usual_days: 2.0,
                events: 9.0,
                work: 40.0,
            }),
            ..Default::default()
        };
        let why = explain(&c, &facts, &rec).0;
        assert_eq!(
            why[0],
            "the account came back 25 h ago after 31 days without any activity (usual longest \
             break 2 days) and is not back at work: 9 events since, under 2 of its usual \
             sessions' worth (40)"
        );
        facts.revived = None;
        facts.days_inactive = 31.0;
        assert!(explain(&c, &facts, &rec).0[0].starts_with("session began after 31 days"));
    }

    /// The namesake's sentence gives the chance it is weighed by, from the user's new
    /// patients a day; a personal link says the link, and the name only where it counted.
    #[test]
    fn a_namesake_says_how_often_chance_would_bring_one() {
        let mut c = [0f32; N_FEATURES];
        c[Feature::SameFamilyNameRarity.index()] = 2.0;
        let rec = record_at("2024-01-03T09:00:00Z");
        let mut facts = Facts {
            name_patients: 2,
            patients_seen: 5433,
            new_patients_per_day: 15.2,
            ..Default::default()
        };
        let (why, kinds) = explain(&c, &facts, &rec);
        assert_eq!(kinds, vec![AlertKind::FamilySnooping]);
        assert_eq!(
            why[0],
            format!(
                "the user shares the patient's family name, which 2 of 5433 earlier patients had: \
                 by chance one day in {} for a user opening 15 new patients a day (relative or \
                 self lookup?)",
                features::namesake_days(2, 5433, 15.2)
            )
        );
        // The figure is the one the score weighs: a busier user meets the name sooner.
        assert!(features::namesake_days(2, 5433, 60.0) < features::namesake_days(2, 5433, 15.2));
        // Without any earlier patients there is no share to quote.
        facts.patients_seen = 0;
        assert_eq!(
            explain(&c, &facts, &rec).0[0],
            "the user shares the patient's family name (relative or self lookup?)"
        );
        // A personal link the care context knows is said as such; the name only where it
        // also counted.
        facts.patients_seen = 5433;
        facts.personal = Some(crate::care::Personal::NamedRelative);
        c[Feature::PersonalLink.index()] = 3.0;
        let (linked, kinds) = explain(&c, &facts, &rec);
        assert_eq!(kinds, vec![AlertKind::FamilySnooping]);
        assert_eq!(
            linked[0],
            format!(
                "{}; the family name is one 2 of 5433 earlier patients had",
                crate::care::Personal::NamedRelative.words()
            )
        );
        c[Feature::SameFamilyNameRarity.index()] = 0.0;
        assert_eq!(
            explain(&c, &facts, &rec).0[0],
            crate::care::Personal::NamedRelative.words()
        );
    }

    /// An alert for an unusual hour corroborates itself only where its session began at
    /// an hour the user has (almost) never begun one; one about a colleague's own record
    /// only where the colleague works in the user's department; no other behaviour does.
    /// A watched record opened in routine work waits for another behaviour.
    #[test]
    fn what_an_alert_brings_to_its_case() {
        let at = |rarity: f32, cross_rate: f32| {
            let mut row = [0f32; N_FEATURES];
            row[Feature::SessionStartRarity.index()] = rarity;
            row[Feature::UserCrossDeptRate.index()] = cross_rate;
            // A record five users opened today.
            row[Feature::HasPatient.index()] = 1.0;
            row[Feature::PatientUsers24h.index()] = 5f32.ln_1p();
            row
        };
        let mark = features::unprecedented_start();
        // -ln(0.5 / 22): none of ten sessions began at that hour.
        assert!((mark - 3.784).abs() < 0.01, "{mark}");
        let routine = features::ROUTINE_UNRELATED_RATE;
        use AlertKind::*;
        use Evidence::*;
        for (kind, rarity, cross_rate, own, brings) in [
            (AfterHours, mark, 0.0, false, Twice),
            (AfterHours, 6.0, routine, false, Twice),
            // One of ten began then: a habit, however thin.
            (AfterHours, 2.69, 0.0, false, Single),
            (CrossDepartment, 6.0, 0.0, false, Single),
            (WatchedRecord, 6.0, 0.0, false, Single),
            // A colleague's record: of another department, watched; of one's own, queued.
            (WatchedRecord, 0.0, 0.0, false, Single),
            (WatchedRecord, 0.0, 0.0, true, Twice),
            (CrossDepartment, 0.0, 0.0, true, Single),
            // Routine work across departments opens watched records by chance.
            (WatchedRecord, 0.0, routine, false, Routine),
            (WatchedRecord, 0.0, routine * 0.9, false, Single),
            (CrossDepartment, 0.0, routine, false, Single),
            (VipSnooping, 0.0, routine, false, Single),
        ] {
            assert_eq!(
                evidence(kind, &at(rarity, cross_rate), colleague(own)),
                brings,
                "{kind:?} at {rarity}, cross rate {cross_rate}, own colleague {own}"
            );
        }
        // With the care context: where it too calls the patient a co-worker.
        assert_eq!(evidence(VipSnooping, &at(0.0, 0.0), COLLEAGUE), Single);
        let mut coworker = at(0.0, 0.0);
        coworker[Feature::CoworkerRecord.index()] = 1.0;
        assert_eq!(evidence(VipSnooping, &coworker, COLLEAGUE), Twice);
        // A watched record no one else opened today: no care going on, whoever opens it.
        let alone = |users: f32, cross_rate: f32| {
            let mut row = at(0.0, cross_rate);
            row[Feature::PatientUsers24h.index()] = users.ln_1p();
            row
        };
        assert_eq!(evidence(WatchedRecord, &alone(1.0, 0.0), NONE), Twice);
        assert_eq!(evidence(WatchedRecord, &alone(1.0, routine), NONE), Twice);
        assert_eq!(evidence(WatchedRecord, &alone(2.0, 0.0), NONE), Single);
        assert_eq!(evidence(WatchedRecord, &alone(2.0, routine), NONE), Routine);
        assert_eq!(evidence(CrossDepartment, &alone(1.0, 0.0), NONE), Single);
        // One other user opened it today, without a relationship, as this user did: no
        // care going on either.
        assert_eq!(
            evidence(WatchedRecord, &alone(2.0, routine), NO_RELATED_VISITOR),
            Twice
        );
        assert_eq!(
            evidence(CrossDepartment, &alone(2.0, 0.0), NO_RELATED_VISITOR),
            Single
        );
        // The same for a colleague's record the care context knows, opened outside every
        // relationship it states; a crowd about the record is not evidence of that kind.
        let known = |users: f32| {
            let mut row = alone(users, 0.0);
            row[Feature::CoworkerRecord.index()] = 1.0;
            row
        };
        assert_eq!(evidence(VipSnooping, &known(1.0), NONE), Twice);
        assert_eq!(evidence(VipSnooping, &known(2.0), NONE), Single);
        assert_eq!(
            evidence(VipSnooping, &known(2.0), NO_RELATED_VISITOR),
            Twice
        );
        assert_eq!(
            evidence(VipSnooping, &alone(2.0, 0.0), NO_RELATED_VISITOR),
            Single
        );
        assert_eq!(evidence(VipSnooping, &alone(1.0, 0.0), NONE), Single);
        // An hour's searches against the user's usual high hour (ln((asked + 1) / (usual
        // + 1)), the usual at least 100 records): ten times over is a sweep.
        let searched = |asked: f32, usual: f32| {
            let mut row = at(0.0, 0.0);
            row[Feature::QueryVolume1hVsUsual.index()] = ((asked + 1.0) / (usual + 1.0)).ln();
            row
        };
        for (asked, usual, brings) in [
            (6000.0, 100.0, Twice),
            (1009.0, 100.0, Twice),
            (1000.0, 100.0, Single),
            (300.0, 100.0, Single),
            (6000.0, 3989.0, Single),
            (40000.0, 3989.0, Twice),
        ] {
            assert_eq!(
                evidence(WideSearch, &searched(asked, usual), NONE),
                brings,
                "{asked} records asked in an hour, usually {usual}"
            );
        }
        assert_eq!(
            evidence(CrossDepartment, &searched(6000.0, 100.0), NONE),
            Single
        );
    }

    #[test]
    fn watch_lists_are_read_and_bad_lines_named_without_their_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("watch.txt");
        std::fs::write(
            &p,
            "# VIPs\nPatient/7\n\n  https://h/fhir/Patient/8/_history/2 \nurn:oid:1.2|4711\n",
        )
        .unwrap();
        assert_eq!(
            read_watch_list(&p).unwrap(),
            ["Patient/7", "Patient/8", "urn:oid:1.2|4711"]
        );
        std::fs::write(&p, "Patient/7\nJane Doe\n").unwrap();
        let e = read_watch_list(&p).unwrap_err().to_string();
        assert!(e.contains("line 2") && !e.contains("Jane"), "{e}");
        let e = read_watch_list(&dir.path().join("missing")).unwrap_err();
        assert_eq!(e.kind(), "watch_list_unreadable");
        assert!(e.to_string().contains("cannot read"), "{e}");
    }
}
