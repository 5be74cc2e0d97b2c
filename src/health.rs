//! Liveness and progress of each actor, shared with the watchdog and `/api/health`.
//!
//! An actor is healthy when its mailbox answers a heartbeat in time and, if it has a step
//! in flight (a page fetch, a commit), that step started within its deadline. Idle and
//! backing-off actors are healthy: waiting for the next scheduled poll is progress.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use fhir_edge_core::alerts::Severity;
use fhir_edge_core::clock::SharedClock;

/// The supervised actors, in pipeline order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActorId {
    Poller,
    Detector,
    AlertSink,
    State,
    Context,
    Export,
}

impl ActorId {
    /// Every actor, in pipeline order.
    pub const ALL: [ActorId; 6] = [
        ActorId::Poller,
        ActorId::Detector,
        ActorId::AlertSink,
        ActorId::State,
        ActorId::Context,
        ActorId::Export,
    ];

    /// The name in logs (`actor=`), `/api/health` and the watchdog's messages.
    pub const fn as_str(self) -> &'static str {
        match self {
            ActorId::Poller => "poller",
            ActorId::Detector => "detector",
            ActorId::AlertSink => "alert_sink",
            ActorId::State => "state",
            ActorId::Context => "context",
            ActorId::Export => "export",
        }
    }
}

/// Written as `as_str` (in `/api/health`): one list of names.
impl Serialize for ActorId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The process-lifetime counters: one table behind `Counters`, `/api/stats` (by name) and
/// `/metrics` (as `fhir_edge_<name>_total`, with the help text).
macro_rules! counter_table {
    ($($variant:ident = $name:literal, $help:literal;)*) => {
        /// One process-lifetime counter.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Counter {
            $(#[doc = $help] $variant,)*
        }

        impl Counter {
            /// Every counter, in the order `/api/stats` and `/metrics` list them.
            pub const ALL: [Counter; [$($name),*].len()] = [$(Counter::$variant),*];

            /// The name in `/api/stats`; `/metrics` adds `fhir_edge_` and `_total`.
            pub const fn name(self) -> &'static str {
                match self { $(Counter::$variant => $name,)* }
            }

            /// What it counts (the metric's HELP text).
            pub const fn help(self) -> &'static str {
                match self { $(Counter::$variant => $help,)* }
            }
        }
    };
}

counter_table! {
    EventsFetched = "events_fetched", "AuditEvents fetched from the server (incl. duplicates).";
    EventsScored = "events_scored", "Events scored and committed by this process.";
    EventsModelScored = "events_model_scored", "Events run through the model (a page whose commit failed is scored again on retry).";
    EventsPassedOver = "events_passed_over", "Events the model's baselines had learned already (at or before their mark): committed, not scored or alerted.";
    EventsDuplicate = "events_duplicate", "Fetched events already scored (overlap re-reads).";
    EventsSkipped = "events_skipped", "Entries that could not be read.";
    PagesFetched = "pages_fetched", "Search pages fetched.";
    PollsCompleted = "polls_completed", "Complete polls.";
    OverlapRechecks = "overlap_rechecks", "Rechecks of the overlap answered by the server's count against the events scored there (poller.recheck_by_count).";
    OverlapRereads = "overlap_rereads", "Rechecks whose counts differed: the overlap re-read from the earliest part that differed.";
    FetchErrors = "fetch_errors", "Failed page fetches.";
    NotifyReceived = "notify_received", "Events received on /fhir/notify.";
    AlertsHeldLearning = "alerts_held_learning", "Events above the threshold not alerted while learning the site: their reason needs a baseline the site has not got yet.";
    SiteModelsTrained = "site_models_trained", "Site models trained by the daemon at the end of learning.";
    SiteBaselinesAdopted = "site_baselines_adopted", "Site models trained at the end of learning whose baselines the detector took over (detector::handover).";
    SiteBaselinesNotAdopted = "site_baselines_not_adopted", "Site models trained at the end of learning switched to with the context followed while learning kept, their baselines not taken over (the journal says why).";
    SiteTrainingErrors = "site_training_errors", "Failed attempts to train the site's model (retried later).";
    ContextResourcesRead = "context_resources_read", "Care context resources read from the server (Practitioner, Encounter, CareTeam…).";
    ContextErrors = "context_errors", "Failed reads or stores of a care context type (retried next round).";
    ExportSent = "export_sent", "Outbox items (alerts, case changes, decisions) the broker or SIEM acknowledged.";
    ExportDuplicates = "export_duplicates", "Re-sent items the broker already held (after a crash or a lost acknowledgement), dropped there by message id.";
    ExportErrors = "export_errors", "Failed export attempts (the items stay in the outbox and are retried).";
    ExportRefused = "export_refused", "Items not written to the export outbox because it was full (export.max_items).";
    ContextUsersForgotten = "context_users_forgotten", "Users the detector forgot at its memory bound (the least recently active half at MAX_USERS); they start again as new.";
    ContextPatientsForgotten = "context_patients_forgotten", "Patients the detector forgot at its memory bound (the least recently seen half at MAX_PATIENTS); they start again as new.";
    ContextPairsForgotten = "context_pairs_forgotten", "User-patient pairs the detector forgot (the older generation, each time the newer holds MAX_PAIRS / 2); a forgotten pair reads as a first access.";
    ContextRequestsForgotten = "context_requests_forgotten", "Fanned-out searches the detector forgot while they could still write events (more than MAX_REQUESTS began within ten minutes): a later event of one reads as a new search, whose listing may alert again.";
    PeerGroupsJoined = "peer_groups_joined", "Users who first appeared after training and joined the peer group their work goes to (where the audit trail names no department; detector::peers).";
    ContextNetworkDeptsUncounted = "context_network_depts_uncounted", "Successful events whose department the detector did not count for their network, the network already counting MAX_NETWORK_DEPTS others: such a network reads as shared, never as another department's own (foreign_network).";
    CareContextDescribesNobody = "care_context_describes_nobody", "Times scoring found the care context describing almost nobody's work (the users' accesses outside every relationship it knows 80% of the time or more): from then a watched record is read from the department's history, as without a context.";
    AlertsRaised = "alerts_raised", "Alerts raised by this process.";
}

#[derive(Debug, Default)]
struct ActorSlot {
    /// ms since epoch of the last completed unit of work or heartbeat answer.
    last_progress_ms: AtomicI64,
    /// ms since epoch when the current step began; 0 when idle.
    busy_since_ms: AtomicI64,
    /// Allowed duration of a single step, ms.
    step_deadline_ms: AtomicI64,
    last_error: Mutex<Option<(i64, String)>>,
    detail: Mutex<String>,
    errors: AtomicU64,
}

/// Shared counters and per-actor health. Cheap to clone.
#[derive(Clone)]
pub struct Health {
    clock: SharedClock,
    /// Indexed by `ActorId as usize`.
    slots: Arc<[ActorSlot; ActorId::ALL.len()]>,
    pub counters: Arc<Counters>,
    /// A reason the daemon cannot make progress (disk full, read-only state...), if any.
    degraded: Arc<Mutex<Option<String>>>,
    /// While the daemon learns the site (no site model yet): what it does meanwhile.
    learning: Arc<Mutex<Option<String>>>,
    /// What the events scored by this process carried.
    coverage: Arc<Mutex<fhir_edge_core::coverage::Coverage>>,
    /// Whether the care context describes almost nobody's work, as scoring last read it
    /// (`None` before this process scored a page).
    care_describes_nobody: Arc<Mutex<Option<bool>>>,
    /// Exporters whose last attempt failed, with the error (the daemon is degraded, not
    /// stalled: restarting would not bring a broker back).
    export_failing: Arc<Mutex<std::collections::BTreeMap<&'static str, String>>>,
}

/// Process-lifetime counters and gauges (the durable lifetime `events_scored` lives in the
/// database).
#[derive(Debug)]
pub struct Counters {
    /// Indexed by `Counter as usize`.
    values: [AtomicU64; Counter::ALL.len()],
    /// Alerts raised, by severity (low first).
    pub alerts_by_severity: [AtomicU64; 4],
    /// ms since epoch of the last successful complete poll.
    pub last_poll_ms: AtomicI64,
    /// Server `meta.lastUpdated` of the newest event seen, ms.
    pub newest_event_ms: AtomicI64,
    /// Cursor after the last completed poll, ms.
    pub cursor_ms: AtomicI64,
    /// Wall time of complete polls (every page read and committed), seconds.
    pub poll_duration: Histogram,
    /// Wall time of single page fetches (request + body + parse), seconds.
    pub page_fetch_duration: Histogram,
    /// Events per delivered page.
    pub batch_size: Histogram,
    /// Wall time to filter and score one page (excludes the commit), seconds.
    pub scoring_duration: Histogram,
    /// Wall time of one SQLite commit of a scored page, seconds.
    pub commit_duration: Histogram,
    /// Wall time to encode the detector's context for a snapshot (the pipeline waits),
    /// seconds.
    pub snapshot_encode_duration: Histogram,
    /// Wall time to write a snapshot's file and commit it with the cursor (the pipeline
    /// goes on), seconds.
    pub snapshot_write_duration: Histogram,
}

/// Bucket upper bounds of the duration histograms, seconds.
const SECONDS_BOUNDS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
/// Bucket upper bounds of the batch-size histogram, events.
const SIZE_BOUNDS: [f64; 9] = [0.0, 1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0];

/// A fixed-bucket, lock-free histogram in the Prometheus sense (cumulative on output).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Non-cumulative count per bucket; the last slot is `+Inf`.
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    /// Sum of observations in micro-units (µs for durations), to stay integral.
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }
    pub fn seconds() -> Self {
        Self::new(&SECONDS_BOUNDS)
    }
    pub fn sizes() -> Self {
        Self::new(&SIZE_BOUNDS)
    }

    pub fn observe(&self, v: f64) {
        let v = if v.is_finite() { v.max(0.0) } else { 0.0 };
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((v * 1e6).round() as u64, Ordering::Relaxed);
    }

    pub fn observe_duration(&self, d: std::time::Duration) {
        self.observe(d.as_secs_f64());
    }

    /// Append this histogram in Prometheus text exposition format.
    pub fn render(&self, name: &str, help: &str, out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            match self.bounds.get(i) {
                Some(le) => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            values: std::array::from_fn(|_| AtomicU64::new(0)),
            alerts_by_severity: std::array::from_fn(|_| AtomicU64::new(0)),
            last_poll_ms: AtomicI64::new(0),
            newest_event_ms: AtomicI64::new(0),
            cursor_ms: AtomicI64::new(0),
            poll_duration: Histogram::seconds(),
            page_fetch_duration: Histogram::seconds(),
            batch_size: Histogram::sizes(),
            scoring_duration: Histogram::seconds(),
            commit_duration: Histogram::seconds(),
            snapshot_encode_duration: Histogram::seconds(),
            snapshot_write_duration: Histogram::seconds(),
        }
    }
}

impl Counters {
    /// Count `n` more.
    pub fn add(&self, c: Counter, n: u64) {
        self.values[c as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self, c: Counter) -> u64 {
        self.values[c as usize].load(Ordering::Relaxed)
    }

    /// Count one alert of `severity`.
    pub fn alert(&self, severity: Severity) {
        self.add(Counter::AlertsRaised, 1);
        self.alerts_by_severity[severity as usize - 1].fetch_add(1, Ordering::Relaxed);
    }

    /// Alerts raised by this process of `severity`.
    pub fn alerts_of(&self, severity: Severity) -> u64 {
        self.alerts_by_severity[severity as usize - 1].load(Ordering::Relaxed)
    }
}

#[derive(Debug, Serialize, Clone)]
pub struct ActorReport {
    pub name: ActorId,
    pub healthy: bool,
    pub last_progress: Option<String>,
    pub busy_for_ms: Option<i64>,
    pub last_error_kind: Option<String>,
    pub last_error_at: Option<String>,
    pub errors: u64,
    pub detail: String,
}

impl Health {
    pub fn new(clock: SharedClock) -> Self {
        let slots = std::array::from_fn(|_| ActorSlot::default());
        let h = Health {
            clock,
            slots: Arc::new(slots),
            counters: Arc::new(Counters::default()),
            degraded: Arc::new(Mutex::new(None)),
            learning: Arc::new(Mutex::new(None)),
            coverage: Arc::default(),
            care_describes_nobody: Arc::default(),
            export_failing: Arc::default(),
        };
        let now = h.now_ms();
        for s in h.slots.iter() {
            s.last_progress_ms.store(now, Ordering::Relaxed);
            s.step_deadline_ms.store(60_000, Ordering::Relaxed);
        }
        h
    }

    fn now_ms(&self) -> i64 {
        self.clock.now().timestamp_millis()
    }

    fn slot(&self, actor: ActorId) -> &ActorSlot {
        &self.slots[actor as usize]
    }

    /// Set how long one step of `actor` may take before it counts as hung.
    pub fn set_step_deadline(&self, actor: ActorId, d: std::time::Duration) {
        self.slot(actor)
            .step_deadline_ms
            .store(d.as_millis() as i64, Ordering::Relaxed);
    }

    pub fn progress(&self, actor: ActorId) {
        self.slot(actor)
            .last_progress_ms
            .store(self.now_ms(), Ordering::Relaxed);
    }

    pub fn begin_step(&self, actor: ActorId) {
        self.slot(actor)
            .busy_since_ms
            .store(self.now_ms(), Ordering::Relaxed);
    }

    pub fn end_step(&self, actor: ActorId) {
        let s = self.slot(actor);
        s.busy_since_ms.store(0, Ordering::Relaxed);
        s.last_progress_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    pub fn error(&self, actor: ActorId, kind: &str) {
        let s = self.slot(actor);
        s.errors.fetch_add(1, Ordering::Relaxed);
        *crate::sync::lock(&s.last_error) = Some((self.now_ms(), kind.to_string()));
    }

    pub fn set_detail(&self, actor: ActorId, detail: impl Into<String>) {
        *crate::sync::lock(&self.slot(actor).detail) = detail.into();
    }

    pub fn set_degraded(&self, reason: Option<String>) {
        *crate::sync::lock(&self.degraded) = reason;
    }

    pub fn degraded(&self) -> Option<String> {
        crate::sync::lock(&self.degraded).clone()
    }

    /// Say that an exporter failed (`Some(error)`) or sends again (`None`).
    pub fn set_export_failing(&self, exporter: &'static str, error: Option<String>) {
        let mut m = crate::sync::lock(&self.export_failing);
        match error {
            Some(e) => {
                m.insert(exporter, e);
            }
            None => {
                m.remove(exporter);
            }
        }
    }

    /// The exporters whose last attempt failed, with the error.
    pub fn export_failing(&self) -> Vec<(&'static str, String)> {
        crate::sync::lock(&self.export_failing)
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }

    /// Say that the daemon is learning the site (`None`: it has the site's model).
    pub fn set_learning(&self, what: Option<String>) {
        *crate::sync::lock(&self.learning) = what;
    }

    pub fn learning(&self) -> Option<String> {
        crate::sync::lock(&self.learning).clone()
    }

    /// Record what the scored events carried; returns the previous counts.
    pub fn set_coverage(
        &self,
        c: fhir_edge_core::coverage::Coverage,
    ) -> fhir_edge_core::coverage::Coverage {
        std::mem::replace(&mut *crate::sync::lock(&self.coverage), c)
    }

    /// Keep whether the care context describes almost nobody's work; the value before.
    pub fn set_care_describes_nobody(&self, now: bool) -> Option<bool> {
        crate::sync::lock(&self.care_describes_nobody).replace(now)
    }

    pub fn coverage(&self) -> fhir_edge_core::coverage::Coverage {
        *crate::sync::lock(&self.coverage)
    }

    /// Reports for every actor; `answered` lists the actors whose mailbox answered the
    /// latest heartbeat round in time.
    pub fn reports(&self, answered: &[ActorId]) -> Vec<ActorReport> {
        let now = self.now_ms();
        ActorId::ALL
            .iter()
            .zip(self.slots.iter())
            .map(|(name, s)| {
                let busy = s.busy_since_ms.load(Ordering::Relaxed);
                let busy_for = (busy > 0).then(|| now - busy);
                let deadline = s.step_deadline_ms.load(Ordering::Relaxed);
                let hung = busy_for.is_some_and(|b| b > deadline);
                let last_error = crate::sync::lock(&s.last_error).clone();
                let lp = s.last_progress_ms.load(Ordering::Relaxed);
                ActorReport {
                    name: *name,
                    healthy: answered.contains(name) && !hung,
                    last_progress: Some(fhir_edge_core::clock::fmt_ms(
                        fhir_edge_core::clock::from_ms(lp),
                    )),
                    busy_for_ms: busy_for,
                    last_error_kind: last_error.as_ref().map(|e| e.1.clone()),
                    last_error_at: last_error.map(|e| {
                        fhir_edge_core::clock::fmt_ms(fhir_edge_core::clock::from_ms(e.0))
                    }),
                    errors: s.errors.load(Ordering::Relaxed),
                    detail: crate::sync::lock(&s.detail).clone(),
                }
            })
            .collect()
    }

    /// A one-line human status for `STATUS=` and the terminal.
    pub fn status_line(&self) -> String {
        let c = &self.counters;
        let last = c.last_poll_ms.load(Ordering::Relaxed);
        let last = if last > 0 {
            fhir_edge_core::clock::fmt_ms(fhir_edge_core::clock::from_ms(last))
        } else {
            "never".to_string()
        };
        let mut s = format!(
            "{} events scored, {} duplicates skipped, {} alerts; last complete poll {}",
            c.get(Counter::EventsScored),
            c.get(Counter::EventsDuplicate),
            c.get(Counter::AlertsRaised),
            last
        );
        if let Some(l) = self.learning() {
            s.push_str("; LEARNING: ");
            s.push_str(&l);
        }
        if let Some(d) = self.degraded() {
            s.push_str("; DEGRADED: ");
            s.push_str(&d);
        }
        for (exporter, _) in self.export_failing() {
            s.push_str(&format!("; {exporter} export failing (outbox kept)"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhir_edge_core::clock::ManualClock;
    use std::sync::Arc;

    #[test]
    fn hung_step_is_unhealthy_idle_is_not() {
        let clock = ManualClock::new(chrono::Utc::now());
        let h = Health::new(Arc::new(clock.clone()));
        h.set_step_deadline(ActorId::Poller, std::time::Duration::from_secs(10));
        let all = ActorId::ALL;
        assert!(h.reports(&all).iter().all(|r| r.healthy));
        h.begin_step(ActorId::Poller);
        clock.advance(chrono::Duration::seconds(5));
        assert!(h.reports(&all).iter().all(|r| r.healthy));
        clock.advance(chrono::Duration::seconds(6));
        let r = h.reports(&all);
        assert!(
            !r.iter()
                .find(|r| r.name == ActorId::Poller)
                .unwrap()
                .healthy
        );
        h.end_step(ActorId::Poller);
        assert!(h.reports(&all).iter().all(|r| r.healthy));
        // An actor whose mailbox did not answer is unhealthy even when idle.
        let r = h.reports(&[ActorId::Poller, ActorId::State, ActorId::AlertSink]);
        assert!(
            !r.iter()
                .find(|r| r.name == ActorId::Detector)
                .unwrap()
                .healthy
        );
    }

    #[test]
    fn counters_are_one_table_with_unique_names() {
        let c = Counters::default();
        for (i, k) in Counter::ALL.iter().enumerate() {
            c.add(*k, i as u64 + 1);
        }
        for (i, k) in Counter::ALL.iter().enumerate() {
            assert_eq!(c.get(*k), i as u64 + 1, "{}", k.name());
        }
        let mut names: Vec<&str> = Counter::ALL.iter().map(|k| k.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Counter::ALL.len());
        c.alert(Severity::High);
        assert_eq!(c.alerts_of(Severity::High), 1);
        assert_eq!(c.get(Counter::AlertsRaised), Counter::ALL.len() as u64 + 1);
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_inf_sum_and_count() {
        let h = Histogram::new(&[0.1, 1.0]);
        for v in [0.05, 0.1, 0.5, 3.0, f64::NAN] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render("x_seconds", "help", &mut out);
        assert!(out.contains("# TYPE x_seconds histogram"), "{out}");
        // NaN is recorded as 0, so three observations are <= 0.1.
        assert!(out.contains("x_seconds_bucket{le=\"0.1\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"1\"} 4\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 5\n"), "{out}");
        assert!(out.contains("x_seconds_sum 3.65\n"), "{out}");
        assert!(out.contains("x_seconds_count 5\n"), "{out}");
    }
}

/// Sent by the watchdog to every actor; an answer proves the mailbox is being served.
#[derive(actix::Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Heartbeat;
