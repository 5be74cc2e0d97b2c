//! Liveness and progress of each actor, shared with the watchdog and `/api/health`.
//!
//! An actor is healthy when its mailbox answers a heartbeat in time and, if it has a step
//! in flight (a page fetch, a commit), that step started within its deadline. Idle and
//! backing-off actors are healthy: waiting for the next scheduled poll is progress.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use fhir_edge_core::clock::SharedClock;

/// Names of the supervised actors, in pipeline order.
pub const ACTORS: [&str; 4] = ["poller", "detector", "alert_sink", "state"];

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
    slots: Arc<BTreeMap<&'static str, ActorSlot>>,
    pub counters: Arc<Counters>,
    /// A reason the daemon cannot make progress (disk full, read-only state...), if any.
    degraded: Arc<Mutex<Option<String>>>,
}

/// Process-lifetime counters (the durable lifetime `events_scored` lives in the database).
#[derive(Debug)]
pub struct Counters {
    pub events_fetched: AtomicU64,
    pub events_scored: AtomicU64,
    /// Events run through the model (a page whose commit failed is scored again on retry).
    pub events_model_scored: AtomicU64,
    pub events_duplicate: AtomicU64,
    pub events_skipped: AtomicU64,
    pub pages_fetched: AtomicU64,
    pub polls_completed: AtomicU64,
    pub fetch_errors: AtomicU64,
    pub alerts_raised: AtomicU64,
    pub alerts_by_severity: [AtomicU64; 4],
    pub notify_received: AtomicU64,
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

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
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
        let z = || AtomicU64::new(0);
        Counters {
            events_fetched: z(),
            events_scored: z(),
            events_model_scored: z(),
            events_duplicate: z(),
            events_skipped: z(),
            pages_fetched: z(),
            polls_completed: z(),
            fetch_errors: z(),
            alerts_raised: z(),
            alerts_by_severity: [z(), z(), z(), z()],
            notify_received: z(),
            last_poll_ms: AtomicI64::new(0),
            newest_event_ms: AtomicI64::new(0),
            cursor_ms: AtomicI64::new(0),
            poll_duration: Histogram::seconds(),
            page_fetch_duration: Histogram::seconds(),
            batch_size: Histogram::sizes(),
            scoring_duration: Histogram::seconds(),
            commit_duration: Histogram::seconds(),
        }
    }
}

impl Counters {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Serialize, Clone)]
pub struct ActorReport {
    pub name: &'static str,
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
        let slots = ACTORS.iter().map(|n| (*n, ActorSlot::default())).collect();
        let h = Health {
            clock,
            slots: Arc::new(slots),
            counters: Arc::new(Counters::default()),
            degraded: Arc::new(Mutex::new(None)),
        };
        let now = h.now_ms();
        for s in h.slots.values() {
            s.last_progress_ms.store(now, Ordering::Relaxed);
            s.step_deadline_ms.store(60_000, Ordering::Relaxed);
        }
        h
    }

    fn now_ms(&self) -> i64 {
        self.clock.now().timestamp_millis()
    }

    fn slot(&self, actor: &str) -> &ActorSlot {
        self.slots.get(actor).expect("known actor name")
    }

    /// Set how long one step of `actor` may take before it counts as hung.
    pub fn set_step_deadline(&self, actor: &str, d: std::time::Duration) {
        self.slot(actor)
            .step_deadline_ms
            .store(d.as_millis() as i64, Ordering::Relaxed);
    }

    pub fn progress(&self, actor: &str) {
        self.slot(actor)
            .last_progress_ms
            .store(self.now_ms(), Ordering::Relaxed);
    }

    pub fn begin_step(&self, actor: &str) {
        self.slot(actor)
            .busy_since_ms
            .store(self.now_ms(), Ordering::Relaxed);
    }

    pub fn end_step(&self, actor: &str) {
        let s = self.slot(actor);
        s.busy_since_ms.store(0, Ordering::Relaxed);
        s.last_progress_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    pub fn error(&self, actor: &str, kind: &str) {
        let s = self.slot(actor);
        s.errors.fetch_add(1, Ordering::Relaxed);
        *crate::sync::lock(&s.last_error) = Some((self.now_ms(), kind.to_string()));
    }

    pub fn set_detail(&self, actor: &str, detail: impl Into<String>) {
        *crate::sync::lock(&self.slot(actor).detail) = detail.into();
    }

    pub fn set_degraded(&self, reason: Option<String>) {
        *crate::sync::lock(&self.degraded) = reason;
    }

    pub fn degraded(&self) -> Option<String> {
        crate::sync::lock(&self.degraded).clone()
    }

    /// Reports for every actor; `answered` lists the actors whose mailbox answered the
    /// latest heartbeat round in time.
    pub fn reports(&self, answered: &[&str]) -> Vec<ActorReport> {
        let now = self.now_ms();
        self.slots
            .iter()
            .map(|(name, s)| {
                let busy = s.busy_since_ms.load(Ordering::Relaxed);
                let busy_for = (busy > 0).then(|| now - busy);
                let deadline = s.step_deadline_ms.load(Ordering::Relaxed);
                let hung = busy_for.is_some_and(|b| b > deadline);
                let last_error = crate::sync::lock(&s.last_error).clone();
                let lp = s.last_progress_ms.load(Ordering::Relaxed);
                ActorReport {
                    name,
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
            Counters::get(&c.events_scored),
            Counters::get(&c.events_duplicate),
            Counters::get(&c.alerts_raised),
            last
        );
        if let Some(d) = self.degraded() {
            s.push_str("; DEGRADED: ");
            s.push_str(&d);
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
        h.set_step_deadline("poller", std::time::Duration::from_secs(10));
        let all: Vec<&str> = ACTORS.to_vec();
        assert!(h.reports(&all).iter().all(|r| r.healthy));
        h.begin_step("poller");
        clock.advance(chrono::Duration::seconds(5));
        assert!(h.reports(&all).iter().all(|r| r.healthy));
        clock.advance(chrono::Duration::seconds(6));
        let r = h.reports(&all);
        assert!(!r.iter().find(|r| r.name == "poller").unwrap().healthy);
        h.end_step("poller");
        assert!(h.reports(&all).iter().all(|r| r.healthy));
        // An actor whose mailbox did not answer is unhealthy even when idle.
        let r = h.reports(&["poller", "state", "alert_sink"]);
        assert!(!r.iter().find(|r| r.name == "detector").unwrap().healthy);
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
