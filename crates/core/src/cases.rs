//! Cases: what a privacy officer opens. Alerts of one user that belong together — one
//! episode — form one case with a title, a narrative, a lifecycle and the user's history.
//!
//! The rule ([`CaseRule::joins`]): an alert joins its user's newest case that is not
//! closed when it happened within `join_within` of that case's span (before its first
//! alert or after its last); otherwise it opens a new case — unless it would put a case in
//! the queue on its own and the user has a case in the queue (not closed) whose last alert
//! is at most `follow` before it ([`CaseRule::follows`]): then it joins that case as a
//! later episode, so a privacy officer finds a user's repeated incidents in one case, as
//! the serial snooper's pattern (a watched episode does not follow: it waits on its own).
//! A closed case takes no more alerts: what comes after a decision is a new episode. Alerts without a user group
//! under the empty user the same way (a failed-login burst from nobody in particular is
//! one case). The store applies the rule in the transaction that stores the alert, so a
//! case is never split or doubled by a crash; `score` applies the same rule offline (its
//! `case` and `case_queued` columns).
//!
//! What reaches the queue ([`queued`]): a case of low-severity alerts whose reason is
//! common in legitimate work — a watched record opened, one access at an unusual hour, a
//! record of another department (a consult looks the same), a crowd around a record,
//! searches wider than the user's usual (a busy day), a short run of refused requests (a
//! stale link), a pattern with no single behaviour behind it — is *watched*, not queued:
//! it waits for
//! corroboration (an alert of the user within the window about another patient or of
//! another behaviour, which makes it `new`; the same look at the same record continued is
//! not corroboration; an access at an unusual hour in a session begun at an hour the user
//! never begins one corroborates itself; a watched record opened in routine work — by
//! radiology, the pharmacy, the laboratory — is not corroborated by the next one such work
//! opens) and is neither journaled nor counted in the queue meanwhile. Every other case is `new` from
//! its first alert. After a case of the user was closed as inappropriate, the user's cases
//! for `HISTORY_DAYS` go to the queue at once, one severity higher ([`raised`]).

use serde::{Deserialize, Serialize};

use crate::alerts::{AlertKind, Evidence, Severity, UnknownName};

/// How far apart two alerts of one user may be and still be one episode, by default.
pub const DEFAULT_JOIN_WITHIN_HOURS: u32 = 8;

/// Earlier cases of the user counted beside a case ("3rd case in 90 days").
pub const HISTORY_DAYS: i64 = 90;

/// How long a queued case takes the user's later episodes, by default.
pub const DEFAULT_FOLLOW_DAYS: u32 = 7;

/// How alerts group into cases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaseRule {
    /// One episode: alerts this close to the case's span.
    pub join_within_ms: i64,
    /// A queued case takes a later episode that would be queued on its own up to this long
    /// after its last alert (0: never).
    pub follow_ms: i64,
}

impl Default for CaseRule {
    fn default() -> Self {
        CaseRule::new(DEFAULT_JOIN_WITHIN_HOURS, DEFAULT_FOLLOW_DAYS)
    }
}

impl CaseRule {
    /// Episodes of `window_hours`; a queued case follows the user for `follow_days`.
    pub fn new(window_hours: u32, follow_days: u32) -> CaseRule {
        CaseRule {
            join_within_ms: i64::from(window_hours) * 3_600_000,
            follow_ms: i64::from(follow_days) * 86_400_000,
        }
    }

    /// Whether an alert at `at_ms` joins a case spanning `first_ms..=last_ms`.
    pub fn joins(&self, first_ms: i64, last_ms: i64, at_ms: i64) -> bool {
        at_ms >= first_ms - self.join_within_ms && at_ms <= last_ms + self.join_within_ms
    }

    /// Whether an alert of `user` at `at_ms` that would queue a case on its own joins, as a
    /// later episode, the user's queued case whose last alert was at `last_ms`. Never for
    /// alerts without a user: bursts from nobody in particular on different days are not
    /// one person's pattern.
    pub fn follows(&self, user: &str, last_ms: i64, at_ms: i64) -> bool {
        !user.is_empty() && at_ms >= last_ms && at_ms <= last_ms + self.follow_ms
    }
}

/// Where a case is in its review.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaseStatus {
    /// Weak alerts waiting for corroboration: not in the queue (see [`queued`]).
    Watching,
    /// In the queue, not yet looked at.
    New,
    InReview,
    Closed,
}

impl CaseStatus {
    pub const ALL: [CaseStatus; 4] = [
        CaseStatus::Watching,
        CaseStatus::New,
        CaseStatus::InReview,
        CaseStatus::Closed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CaseStatus::Watching => "watching",
            CaseStatus::New => "new",
            CaseStatus::InReview => "in_review",
            CaseStatus::Closed => "closed",
        }
    }
}

/// Behaviours common in legitimate work: alone, at low severity, they do not make a case
/// worth opening. A record of another department is one of them: a consult, a transfer or
/// a covering shift reads exactly like a lookup out of curiosity until a second patient or
/// a second behaviour joins it. So is a crowd around a record: it says something about the
/// patient, and the user may be one of its legitimate visitors. So is a short run of
/// refused requests (a stale link, an expired session, a version conflict): a run that
/// probes scores higher, and at medium severity queues its case itself.
pub fn needs_corroboration(kind: AlertKind) -> bool {
    matches!(
        kind,
        AlertKind::WatchedRecord
            | AlertKind::AfterHours
            | AlertKind::CrossDepartment
            | AlertKind::VipSnooping
            | AlertKind::WideSearch
            | AlertKind::UnusualPattern
            | AlertKind::FailedRequests
    )
}

/// Whether an alert about another patient is another piece of evidence for this behaviour.
/// Not for searches wider than usual: the breadth is one signal for the user's whole hour,
/// carried by every event of it whichever patient the event names.
pub fn another_patient_corroborates(kind: AlertKind) -> bool {
    kind != AlertKind::WideSearch
}

/// Whether a case belongs in the queue (`new`) rather than being watched: its strongest
/// alert reached `severity` `Medium`, or the behaviour of its alert (`kind`) is specific on
/// its own, or it is `corroborated` — two of its alerts concern different patients or
/// point at different behaviours (see [`Corroboration`]).
pub fn queued(corroborated: bool, severity: Severity, kind: AlertKind) -> bool {
    corroborated || severity >= Severity::Medium || !needs_corroboration(kind)
}

/// Whether an alert puts its case in the queue by itself, before any other alert joins it
/// (what a later episode needs to follow the user's queued case, [`CaseRule::follows`]).
pub fn queued_on_its_own(severity: Severity, kind: AlertKind, evidence: Evidence) -> bool {
    queued(evidence == Evidence::Twice, severity, kind)
}

/// How a case's episodes are said beside its alerts: " in 3 episodes", nothing for one.
pub fn episodes_words(episodes: u64) -> String {
    match episodes {
        0 | 1 => String::new(),
        n => format!(" in {n} episodes"),
    }
}

/// What corroborates a case: an alert about another patient, or of another behaviour,
/// than the case's first alert. A second low alert on the same record for the same reason
/// is the same look continued (a consultant opening the chart twice), not a second piece
/// of evidence; nor is another record opened for the same reason in routine work
/// ([`Evidence::Routine`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corroboration {
    /// The first alert's patient reference and strongest behaviour.
    first: (Option<String>, AlertKind),
    corroborated: bool,
}

impl Corroboration {
    /// A case's evidence after its first alert.
    pub fn first(patient: Option<&str>, kind: AlertKind, evidence: Evidence) -> Corroboration {
        Corroboration {
            first: (patient.map(str::to_string), kind),
            corroborated: evidence == Evidence::Twice,
        }
    }

    /// Whether an alert about `patient` pointing at `kind`, bringing `evidence`, is
    /// independent of the first: evidence twice over, another behaviour, or another patient
    /// (where [`another_patient_corroborates`], and not in routine work).
    pub fn independent(&self, patient: Option<&str>, kind: AlertKind, evidence: Evidence) -> bool {
        let another_patient = self.first.0.as_deref() != patient
            && another_patient_corroborates(kind)
            && evidence != Evidence::Routine;
        evidence == Evidence::Twice || another_patient || self.first.1 != kind
    }

    /// Add a later alert; whether the case is corroborated now.
    pub fn add(&mut self, patient: Option<&str>, kind: AlertKind, evidence: Evidence) -> bool {
        self.corroborated |= self.independent(patient, kind, evidence);
        self.corroborated
    }

    pub fn corroborated(&self) -> bool {
        self.corroborated
    }
}

impl std::str::FromStr for CaseStatus {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        CaseStatus::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                UnknownName::new("case status", s, CaseStatus::ALL.map(CaseStatus::as_str))
            })
    }
}

/// How a closed case was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// The access had a reason: allow-list rules are offered so it does not come back.
    Appropriate,
    /// A privacy breach.
    Inappropriate,
    /// The detector was wrong: allow-list rules are offered too.
    FalsePositive,
}

impl Resolution {
    pub const ALL: [Resolution; 3] = [
        Resolution::Appropriate,
        Resolution::Inappropriate,
        Resolution::FalsePositive,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Appropriate => "appropriate",
            Resolution::Inappropriate => "inappropriate",
            Resolution::FalsePositive => "false_positive",
        }
    }
}

impl std::str::FromStr for Resolution {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        Resolution::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                UnknownName::new("resolution", s, Resolution::ALL.map(Resolution::as_str))
            })
    }
}

/// A requested change of a case's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseDecision {
    pub status: CaseStatus,
    /// Required when closing, refused otherwise.
    pub resolution: Option<Resolution>,
    pub note: Option<String>,
    pub by: Option<String>,
}

/// Why a case decision is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecisionError {
    #[error("closing a case needs a resolution (appropriate, inappropriate or false_positive)")]
    ClosedWithoutResolution,
    #[error("a resolution is given only when closing (status \"closed\")")]
    ResolutionWhileOpen,
}

impl DecisionError {
    pub fn kind(&self) -> &'static str {
        match self {
            DecisionError::ClosedWithoutResolution => "closed_without_resolution",
            DecisionError::ResolutionWhileOpen => "resolution_while_open",
        }
    }
}

impl CaseDecision {
    pub fn check(&self) -> Result<(), DecisionError> {
        match (self.status, self.resolution) {
            (CaseStatus::Closed, None) => Err(DecisionError::ClosedWithoutResolution),
            (CaseStatus::New | CaseStatus::InReview, Some(_)) => {
                Err(DecisionError::ResolutionWhileOpen)
            }
            _ => Ok(()),
        }
    }
}

/// One alert of a case, as the narrative needs it.
#[derive(Debug, Clone)]
pub struct CaseAlert {
    pub alert_id: i64,
    pub event_id: String,
    pub recorded_ms: i64,
    pub score: f64,
    pub severity: Severity,
    pub kinds: Vec<AlertKind>,
    pub explanation: Vec<String>,
    pub patient: Option<String>,
    pub client_app: Option<String>,
    pub source_ip: Option<String>,
}

fn one_episode() -> u64 {
    1
}

/// A case as the API, the CLI and the journal show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Case {
    pub id: i64,
    /// The user's reference (`Practitioner/123`), or none.
    pub user: Option<String>,
    pub title: String,
    pub narrative: String,
    /// The behaviour that weighs most in the case.
    pub kind: AlertKind,
    pub score: f64,
    pub severity: Severity,
    /// When its first and last alerted access happened.
    pub first: String,
    pub last: String,
    pub alerts: u64,
    /// Episodes of the user in it: 1, or more when later ones joined it
    /// ([`CaseRule::follows`]).
    #[serde(default = "one_episode")]
    pub episodes: u64,
    pub patients: u64,
    pub status: CaseStatus,
    pub resolution: Option<Resolution>,
    pub status_note: Option<String>,
    pub status_by: Option<String>,
    pub status_at: Option<String>,
    /// The user's other cases opened in the `HISTORY_DAYS` before this one.
    pub earlier_cases: u64,
}

/// What happened to a case that the journal has not said yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaseEvent {
    /// It reached the queue (never journaled before).
    Opened,
    /// It was raised to a higher severity.
    Escalated,
    /// A later episode of the user joined it ([`CaseRule::follows`]), at the same severity.
    Episode,
}

impl CaseEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            CaseEvent::Opened => "opened",
            CaseEvent::Escalated => "escalated",
            CaseEvent::Episode => "episode",
        }
    }
}

/// A case to journal: opened, raised to a higher severity, or joined by a later episode,
/// and not yet journaled so.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseNote {
    pub id: i64,
    pub user: Option<String>,
    pub severity: Severity,
    pub title: String,
    pub alerts: u64,
    /// Its episodes (1 unless later ones joined it).
    pub episodes: u64,
    pub event: CaseEvent,
}

impl CaseNote {
    /// What to record once the journal has it.
    pub fn journaled(&self) -> Journaled {
        Journaled {
            id: self.id,
            severity: self.severity,
            episodes: self.episodes,
        }
    }
}

/// A case as the journal last said it: its severity and episodes then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Journaled {
    pub id: i64,
    pub severity: Severity,
    pub episodes: u64,
}

/// Which cases to list.
#[derive(Debug, Clone, Default)]
pub struct CaseFilter {
    /// Cases whose last alerted access is at or after this.
    pub since_ms: Option<i64>,
    pub status: Option<CaseStatus>,
    /// Which statuses, beside `status`: every case (the default here), the cases worth
    /// opening (the API's and CLI's default), or the queue.
    pub scope: CaseScope,
    pub min_severity: Option<Severity>,
    pub user: Option<String>,
    /// Page on: cases with a smaller id.
    pub before_id: Option<i64>,
    /// At most this many (1 to `state::MAX_ALERTS_PAGE`).
    pub limit: u32,
}

/// Which cases a listing holds (beside a single `status`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CaseScope {
    /// Every case, watched ones included (`status=any`).
    #[default]
    All,
    /// Every case but the watched ones: what a privacy officer may open (`new`, `in_review`,
    /// `closed`). What `GET /api/cases` and `fhir-edge cases` list unless asked otherwise.
    Reviewable,
    /// The review queue: `new` and `in_review` (`status=open`).
    Queue,
}

impl CaseScope {
    /// The statuses in this scope.
    pub fn holds(self, s: CaseStatus) -> bool {
        match self {
            CaseScope::All => true,
            CaseScope::Reviewable => s != CaseStatus::Watching,
            CaseScope::Queue => matches!(s, CaseStatus::New | CaseStatus::InReview),
        }
    }

    /// The SQL condition on `status`, made from [`CaseScope::holds`] (no input in it).
    pub fn sql(self) -> String {
        if self == CaseScope::All {
            return String::new();
        }
        let held: Vec<String> = CaseStatus::ALL
            .into_iter()
            .filter(|s| self.holds(*s))
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        format!(" AND status IN ({})", held.join(", "))
    }

    /// A `status` query value as the API and CLI take it: `open` (the queue), `any` (every
    /// case) or one status; none is [`CaseScope::Reviewable`].
    pub fn parse(status: Option<&str>) -> Result<(CaseScope, Option<CaseStatus>), UnknownName> {
        match status {
            None => Ok((CaseScope::Reviewable, None)),
            Some("open") => Ok((CaseScope::Queue, None)),
            Some("any") => Ok((CaseScope::All, None)),
            Some(s) => {
                let one = s.parse().map_err(|_| {
                    let [a, b, c, d] = CaseStatus::ALL.map(CaseStatus::as_str);
                    UnknownName::new("case status", s, [a, b, c, d, "open", "any"])
                })?;
                Ok((CaseScope::All, Some(one)))
            }
        }
    }
}

/// The behaviour weighing most: each alert's first (strongest) kind, weighted by its score.
pub fn dominant_kind(alerts: &[CaseAlert]) -> AlertKind {
    let mut weight = std::collections::BTreeMap::<AlertKind, f64>::new();
    for a in alerts {
        *weight.entry(AlertKind::strongest(&a.kinds)).or_default() += a.score;
    }
    weight
        .into_iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(AlertKind::UnusualPattern, |(k, _)| k)
}

fn distinct_patients(alerts: &[CaseAlert]) -> usize {
    let mut p: Vec<&str> = alerts.iter().filter_map(|a| a.patient.as_deref()).collect();
    p.sort_unstable();
    p.dedup();
    p.len()
}

fn span_words(ms: i64) -> String {
    let min = ms / 60_000;
    match min {
        0 => "under a minute".to_string(),
        1..=89 => format!("{min} min"),
        _ => format!("{:.1} h", ms as f64 / 3_600_000.0),
    }
}

/// Distinct patients from which a case whose alerts count a bulk run among their reasons
/// is titled as the sweep it is (`title`).
pub const SWEEP_TITLE_PATIENTS: usize = 20;

/// The case's title, from its dominant behaviour and its size. A sweep through many
/// records, each lookup led by another department's record or an unusual pattern, is
/// titled as a sweep ("opened 206 patients in 57 min"), not by what each lookup led with
/// ("206 records outside the user's department"): the narrative gives both.
pub fn title(alerts: &[CaseAlert]) -> String {
    let n = distinct_patients(alerts);
    let first = alerts.iter().map(|a| a.recorded_ms).min().unwrap_or(0);
    let last = alerts.iter().map(|a| a.recorded_ms).max().unwrap_or(0);
    let span = span_words(last - first);
    let kind = dominant_kind(alerts);
    // A colleague's record is filed under a crowd around a record or a watched one; the
    // case says whose it is when its strongest alert of that behaviour does.
    let colleague = alerts
        .iter()
        .filter(|a| AlertKind::strongest(&a.kinds) == kind)
        .max_by(|a, b| a.score.total_cmp(&b.score))
        .and_then(|a| a.explanation.first())
        .is_some_and(|r| crate::alerts::names_a_colleague(r));
    let sweep = n >= SWEEP_TITLE_PATIENTS
        && alerts
            .iter()
            .any(|a| a.kinds.contains(&AlertKind::BulkAccess));
    match kind {
        AlertKind::CrossDepartment | AlertKind::UnusualPattern | AlertKind::WideSearch if sweep => {
            format!("opened {n} patients in {span}")
        }
        AlertKind::VipSnooping | AlertKind::WatchedRecord if colleague => {
            "opened a colleague's record".to_string()
        }
        AlertKind::AfterHours => "after-hours session".to_string(),
        AlertKind::BulkAccess => format!("opened {n} patients in {span}"),
        AlertKind::CrossDepartment => format!("{n} records outside the user's department"),
        AlertKind::VipSnooping => "looked up a record many colleagues opened".to_string(),
        AlertKind::FailedLogins => "failed-login burst".to_string(),
        AlertKind::FailedRequests => "runs of refused requests".to_string(),
        AlertKind::NewSource => "new device or network".to_string(),
        AlertKind::DormantAccount => "dormant account back in use".to_string(),
        AlertKind::MassExport => "bulk export or very large search".to_string(),
        AlertKind::WideSearch => "searches far wider than usual".to_string(),
        AlertKind::FamilySnooping => "looked up a relative".to_string(),
        AlertKind::WatchedRecord => "opened a watched record".to_string(),
        AlertKind::UnusualPattern => "unusual pattern of access".to_string(),
    }
}

fn ordinal(n: u64) -> String {
    let suffix = match (n % 10, n % 100) {
        (1, x) if x != 11 => "st",
        (2, x) if x != 12 => "nd",
        (3, x) if x != 13 => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// One severity higher (critical stays critical).
pub fn raised(s: Severity) -> Severity {
    match s {
        Severity::Low => Severity::Medium,
        Severity::Medium => Severity::High,
        Severity::High | Severity::Critical => Severity::Critical,
    }
}

/// The narrative: when it began and ended, how many events (in how many `episodes`, when
/// more than one) and patients, the strongest reasons in order (each said once), and the
/// user's history: earlier cases, and a case closed as inappropriate (at
/// `inappropriate_ms`) within `HISTORY_DAYS` before this one, which puts this one straight
/// in the queue one severity higher.
pub fn narrative(
    alerts: &[CaseAlert],
    episodes: u64,
    earlier_cases: u64,
    inappropriate_ms: Option<i64>,
) -> String {
    let fmt = |ms| crate::clock::fmt_ms(crate::clock::from_ms(ms));
    let first = alerts.iter().map(|a| a.recorded_ms).min().unwrap_or(0);
    let last = alerts.iter().map(|a| a.recorded_ms).max().unwrap_or(0);
    let mut s = if first == last {
        format!("At {}, 1 flagged access", fmt(first))
    } else {
        format!(
            "From {} to {} ({}), {} flagged accesses",
            fmt(first),
            fmt(last),
            span_words(last - first),
            alerts.len()
        )
    };
    s.push_str(&episodes_words(episodes));
    match distinct_patients(alerts) {
        0 => s.push_str(" naming no patient."),
        1 => s.push_str(" to 1 patient's record."),
        n => s.push_str(&format!(" to {n} patients' records.")),
    }
    let mut by_score: Vec<&CaseAlert> = alerts.iter().collect();
    by_score.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut reasons: Vec<&str> = Vec::new();
    let mut care: Vec<&str> = Vec::new();
    for r in by_score.iter().flat_map(|a| a.explanation.iter()) {
        match r.strip_prefix(crate::alerts::CARE_NOTE) {
            Some(c) if care.len() < 2 && !care.contains(&c) => care.push(c),
            Some(_) => {}
            None if reasons.len() < 3 && !reasons.contains(&r.as_str()) => reasons.push(r),
            None => {}
        }
    }
    if !reasons.is_empty() {
        s.push_str(" Strongest reasons: ");
        s.push_str(&reasons.join("; "));
        s.push('.');
    }
    // What the care context said in the user's favour, apart from the reasons.
    if !care.is_empty() {
        s.push_str(" In the user's favour: ");
        s.push_str(&care.join("; "));
        s.push('.');
    }
    if earlier_cases > 0 {
        s.push_str(&format!(
            " The {} case for this user in {HISTORY_DAYS} days.",
            ordinal(earlier_cases + 1)
        ));
    }
    if let Some(t) = inappropriate_ms {
        s.push_str(&format!(
            " A case of this user was closed as inappropriate on {}: their cases go to the \
             queue one severity higher for {HISTORY_DAYS} days.",
            fmt(t).get(..10).unwrap_or("")
        ));
    }
    s
}

/// The allow-list rules a case closed as appropriate or a false positive implies: this
/// user with each patient in it, and each client application it named as new.
pub fn implied_rules(user: Option<&str>, alerts: &[CaseAlert]) -> Vec<crate::alerts::AllowRule> {
    let Some(user) = user else { return Vec::new() };
    let mut out: Vec<crate::alerts::AllowRule> = Vec::new();
    let mut push = |r: crate::alerts::AllowRule| {
        if !out
            .iter()
            .any(|o| o.patient == r.patient && o.client_app == r.client_app)
        {
            out.push(r);
        }
    };
    for a in alerts {
        if let Some(p) = &a.patient {
            push(crate::alerts::AllowRule {
                user: Some(user.to_string()),
                patient: Some(p.clone()),
                from_alert: Some(a.alert_id),
                ..Default::default()
            });
        }
        if a.kinds.contains(&AlertKind::NewSource) {
            if let Some(c) = &a.client_app {
                push(crate::alerts::AllowRule {
                    user: Some(user.to_string()),
                    client_app: Some(c.clone()),
                    from_alert: Some(a.alert_id),
                    ..Default::default()
                });
            }
        }
    }
    out
}

/// The same rule in memory, for offline scoring (`score --cases-out`): alerts in the order
/// they come, grouped per user as the store groups them.
#[derive(Debug, Default)]
pub struct Grouper {
    rule: CaseRule,
    /// Per user: the open case (its number).
    open: std::collections::HashMap<String, u64>,
    /// Per user: the newest case in the queue.
    in_queue: std::collections::HashMap<String, u64>,
    /// Per case, numbered from 1.
    cases: Vec<Grouped>,
}

/// A case as the grouper keeps it.
#[derive(Debug)]
struct Grouped {
    first_ms: i64,
    last_ms: i64,
    /// Its highest severity.
    severity: Severity,
    /// Its first alert's strongest behaviour.
    kind: AlertKind,
    corroboration: Corroboration,
}

impl Grouper {
    pub fn new(rule: CaseRule) -> Grouper {
        Grouper {
            rule,
            ..Default::default()
        }
    }

    /// The case number (from 1) of an alert of `user` about `patient` at `at_ms`, bringing
    /// `evidence` (see [`Corroboration`]).
    pub fn assign(
        &mut self,
        user: Option<&str>,
        patient: Option<&str>,
        at_ms: i64,
        (severity, kind, evidence): (Severity, AlertKind, Evidence),
    ) -> u64 {
        let key = user.unwrap_or("");
        let span = |id: &u64| {
            let c = &self.cases[*id as usize - 1];
            (*id, c.first_ms, c.last_ms)
        };
        let joined = match self.open.get(key).map(span) {
            Some((id, first, last)) if self.rule.joins(first, last, at_ms) => Some(id),
            _ => self
                .in_queue
                .get(key)
                .map(span)
                .filter(|&(_, _, last)| {
                    queued_on_its_own(severity, kind, evidence)
                        && self.rule.follows(key, last, at_ms)
                })
                .map(|(id, _, _)| id),
        };
        let id = match joined {
            Some(id) => {
                let c = &mut self.cases[id as usize - 1];
                c.first_ms = c.first_ms.min(at_ms);
                c.last_ms = c.last_ms.max(at_ms);
                c.severity = c.severity.max(severity);
                c.corroboration.add(patient, kind, evidence);
                id
            }
            None => {
                self.cases.push(Grouped {
                    first_ms: at_ms,
                    last_ms: at_ms,
                    severity,
                    kind,
                    corroboration: Corroboration::first(patient, kind, evidence),
                });
                self.cases.len() as u64
            }
        };
        self.open.insert(key.to_string(), id);
        if self.is_queued(id) {
            self.in_queue.insert(key.to_string(), id);
        }
        id
    }

    /// Cases so far.
    pub fn cases(&self) -> u64 {
        self.cases.len() as u64
    }

    /// Whether case `id` is in the queue (by its alerts so far).
    pub fn is_queued(&self, id: u64) -> bool {
        self.cases
            .get((id as usize).wrapping_sub(1))
            .is_some_and(|c| queued(c.corroboration.corroborated(), c.severity, c.kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;

    fn alert(id: i64, at: i64, kind: AlertKind, score: f64, patient: &str) -> CaseAlert {
        CaseAlert {
            alert_id: id,
            event_id: format!("e{id}"),
            recorded_ms: at,
            score,
            severity: Severity::Medium,
            kinds: vec![kind],
            explanation: vec![format!("reason {kind:?}")],
            patient: Some(patient.to_string()),
            client_app: Some("app".into()),
            source_ip: None,
        }
    }

    #[test]
    fn an_alert_joins_within_the_window_and_opens_a_new_case_beyond_it() {
        let r = CaseRule::new(8, 0);
        assert!(r.joins(10 * H, 12 * H, 19 * H));
        assert!(!r.joins(10 * H, 12 * H, 20 * H + 1));
        assert!(
            r.joins(10 * H, 12 * H, 3 * H),
            "a late event from before the case"
        );
        let mut g = Grouper::new(r);
        let mut at = |user: &str, t: i64| {
            g.assign(
                Some(user),
                None,
                t,
                (Severity::Low, AlertKind::BulkAccess, Evidence::Single),
            )
        };
        let a = at("Practitioner/1", 0);
        assert_eq!(at("Practitioner/1", 7 * H), a);
        assert_eq!(at("Practitioner/1", 14 * H), a, "the window moves on");
        assert_ne!(at("Practitioner/2", 14 * H), a, "another user");
        assert_ne!(at("Practitioner/1", 30 * H), a, "a day later");
        assert_eq!(g.cases(), 3);
    }

    #[test]
    fn a_later_episode_that_would_queue_follows_the_users_queued_case() {
        let r = CaseRule::new(8, 7);
        assert!(r.follows("Practitioner/1", 10 * H, 10 * H + 7 * 24 * H));
        assert!(!r.follows("Practitioner/1", 10 * H, 10 * H + 7 * 24 * H + 1));
        assert!(!r.follows("", 10 * H, 11 * H), "no user: no one's pattern");
        assert!(!CaseRule::new(8, 0).follows("Practitioner/1", 10 * H, 30 * H));
        let mut g = Grouper::new(r);
        let mut at = |t: i64, severity, kind| {
            g.assign(
                Some("Practitioner/1"),
                Some("Patient/1"),
                t,
                (severity, kind, Evidence::Single),
            )
        };
        let export = at(0, Severity::Low, AlertKind::MassExport);
        // A watched look two days later: a case of its own, waiting.
        let look = at(48 * H, Severity::Low, AlertKind::WatchedRecord);
        assert_ne!(look, export);
        // A medium one three days later: the export's case, a later episode.
        assert_eq!(
            at(72 * H, Severity::Medium, AlertKind::WatchedRecord),
            export
        );
        assert_eq!(at(74 * H, Severity::Low, AlertKind::AfterHours), export);
        // Past seven days: its own.
        assert_ne!(
            at(
                74 * H + 7 * 24 * H + 1,
                Severity::High,
                AlertKind::MassExport
            ),
            export
        );
        assert!(g.is_queued(export) && !g.is_queued(look));
    }

    #[test]
    fn a_listing_leaves_watched_cases_out_unless_asked() {
        let (scope, status) = CaseScope::parse(None).unwrap();
        assert_eq!((scope, status), (CaseScope::Reviewable, None));
        assert!(!scope.holds(CaseStatus::Watching));
        assert!(scope.holds(CaseStatus::Closed));
        let (any, _) = CaseScope::parse(Some("any")).unwrap();
        assert!(any.holds(CaseStatus::Watching));
        let (queue, _) = CaseScope::parse(Some("open")).unwrap();
        assert!(!queue.holds(CaseStatus::Closed) && queue.holds(CaseStatus::InReview));
        let one = CaseScope::parse(Some("watching")).unwrap();
        assert_eq!(one, (CaseScope::All, Some(CaseStatus::Watching)));
        let e = CaseScope::parse(Some("pending")).unwrap_err().to_string();
        assert!(e.contains("open, any"), "{e}");
        for scope in [CaseScope::All, CaseScope::Reviewable, CaseScope::Queue] {
            let sql = scope.sql();
            for s in CaseStatus::ALL {
                let named = sql.contains(&format!("'{}'", s.as_str()));
                let listed = if sql.contains("!=") {
                    !named
                } else {
                    named || sql.is_empty()
                };
                assert_eq!(listed, scope.holds(s), "{scope:?} {s:?}");
            }
        }
    }

    #[test]
    fn one_weak_low_alert_is_watched_until_corroborated() {
        use AlertKind::*;
        assert!(!queued(false, Severity::Low, WatchedRecord));
        assert!(!queued(false, Severity::Low, AfterHours));
        assert!(!queued(false, Severity::Low, CrossDepartment), "a consult?");
        assert!(!queued(false, Severity::Low, WideSearch), "a busy day?");
        assert!(
            !queued(false, Severity::Low, FailedRequests),
            "a stale link?"
        );
        assert!(queued(false, Severity::Medium, FailedRequests), "probing");
        assert!(
            queued(false, Severity::Low, FailedLogins),
            "a burst of failed logins is specific"
        );
        assert!(
            queued(false, Severity::Low, MassExport),
            "an export is specific"
        );
        assert!(
            !queued(false, Severity::Low, VipSnooping),
            "one of the crowd?"
        );
        assert!(queued(false, Severity::Medium, WatchedRecord), "stronger");
        assert!(queued(true, Severity::Low, WatchedRecord), "corroborated");
        assert!(
            queued(false, Severity::Low, FamilySnooping),
            "specific on its own"
        );
        let mut g = Grouper::new(CaseRule::default());
        let c = g.assign(
            Some("u"),
            Some("Patient/1"),
            0,
            (Severity::Low, WatchedRecord, Evidence::Single),
        );
        assert!(!g.is_queued(c));
        g.assign(
            Some("u"),
            Some("Patient/1"),
            H,
            (Severity::Low, AfterHours, Evidence::Single),
        );
        assert!(g.is_queued(c), "another behaviour");
        let c = g.assign(
            Some("v"),
            Some("Patient/1"),
            0,
            (Severity::Low, CrossDepartment, Evidence::Single),
        );
        g.assign(
            Some("v"),
            Some("Patient/1"),
            H,
            (Severity::Low, CrossDepartment, Evidence::Single),
        );
        assert!(
            !g.is_queued(c),
            "the same look at the same record, continued"
        );
        g.assign(
            Some("v"),
            Some("Patient/2"),
            2 * H,
            (Severity::Low, CrossDepartment, Evidence::Single),
        );
        assert!(g.is_queued(c), "another patient");
        let c = g.assign(
            Some("w"),
            Some("Patient/1"),
            0,
            (Severity::Low, AfterHours, Evidence::Single),
        );
        assert!(!g.is_queued(c), "one access at an unusual hour");
        let c = g.assign(
            Some("x"),
            Some("Patient/1"),
            0,
            (Severity::Low, AfterHours, Evidence::Twice),
        );
        assert!(
            g.is_queued(c),
            "in a session begun at an hour never begun at"
        );
    }

    #[test]
    fn corroboration_is_another_patient_or_another_behaviour() {
        use AlertKind::*;
        use Evidence::*;
        let mut c = Corroboration::first(Some("Patient/1"), CrossDepartment, Single);
        assert!(!c.add(Some("Patient/1"), CrossDepartment, Single));
        assert!(!c.corroborated());
        assert!(
            c.independent(None, CrossDepartment, Single),
            "no patient is another"
        );
        assert!(c.add(Some("Patient/1"), AfterHours, Single));
        assert!(
            c.add(Some("Patient/1"), CrossDepartment, Single),
            "once corroborated, stays"
        );
        let mut c = Corroboration::first(None, FailedLogins, Single);
        assert!(!c.add(None, FailedLogins, Single));
        // The hour's wide searches name a patient per event: still one signal.
        let mut c = Corroboration::first(Some("Patient/1"), WideSearch, Single);
        assert!(
            !c.add(Some("Patient/2"), WideSearch, Single),
            "the same hour's searches"
        );
        assert!(
            c.add(Some("Patient/2"), CrossDepartment, Single),
            "another behaviour"
        );
        // Evidence twice over, first or later.
        assert!(Corroboration::first(Some("Patient/1"), AfterHours, Twice).corroborated());
        let mut c = Corroboration::first(Some("Patient/1"), WatchedRecord, Single);
        assert!(c.add(Some("Patient/1"), WatchedRecord, Twice));
        // A radiographer's second watched record is routine work going on; another
        // behaviour still corroborates, and another patient does where the work is not
        // routine.
        let mut c = Corroboration::first(Some("Patient/1"), WatchedRecord, Routine);
        assert!(!c.add(Some("Patient/2"), WatchedRecord, Routine), "routine");
        assert!(c.independent(Some("Patient/2"), WatchedRecord, Single));
        assert!(
            c.add(Some("Patient/2"), AfterHours, Routine),
            "another behaviour"
        );
    }

    /// A sweep whose lookups each led with another department's record is titled as the
    /// sweep from 20 patients on, when a bulk run is among its reasons; without one, or
    /// below 20, by what the lookups led with.
    #[test]
    fn a_sweep_through_other_departments_records_is_titled_as_a_sweep() {
        let sweep = |n: i64, bulk: bool| -> Vec<CaseAlert> {
            (0..n)
                .map(|i| {
                    let mut a = alert(
                        i,
                        i * 60_000,
                        AlertKind::CrossDepartment,
                        1.5,
                        &format!("Patient/{i}"),
                    );
                    if bulk && i > 0 {
                        a.kinds.push(AlertKind::BulkAccess);
                    }
                    a
                })
                .collect()
        };
        assert_eq!(title(&sweep(30, true)), "opened 30 patients in 29 min");
        assert_eq!(
            title(&sweep(30, false)),
            "30 records outside the user's department"
        );
        assert_eq!(
            title(&sweep(19, true)),
            "19 records outside the user's department"
        );
    }

    /// A colleague's record is filed as a crowd around a record or a watched record; the
    /// title says what it was when the strongest such alert does.
    #[test]
    fn a_colleagues_record_is_titled_as_one() {
        let with = |kind, reason: String| CaseAlert {
            explanation: vec![reason],
            ..alert(1, 0, kind, 1.2, "Patient/1")
        };
        let coworker = format!(
            "{} and no treatment relationship links this user to them",
            crate::alerts::COWORKER_RECORD
        );
        let named = format!("{} opened from Surgery", crate::alerts::STAFF_NAMED_RECORD);
        assert_eq!(
            title(&[with(AlertKind::VipSnooping, coworker)]),
            "opened a colleague's record"
        );
        assert_eq!(
            title(&[with(AlertKind::WatchedRecord, named)]),
            "opened a colleague's record"
        );
        assert_eq!(
            title(&[with(
                AlertKind::VipSnooping,
                "27 different users opened this patient's record in 24 h".into()
            )]),
            "looked up a record many colleagues opened"
        );
        assert_eq!(
            title(&[with(
                AlertKind::WatchedRecord,
                "a watched record (on the site's watch list or labelled restricted)".into()
            )]),
            "opened a watched record"
        );
    }

    #[test]
    fn a_case_is_titled_by_its_heaviest_behaviour_and_tells_its_story() {
        let alerts: Vec<CaseAlert> = (0..5)
            .map(|i| {
                alert(
                    i,
                    i * 60_000,
                    AlertKind::BulkAccess,
                    2.0,
                    &format!("Patient/{i}"),
                )
            })
            .chain([alert(
                9,
                2 * 60_000,
                AlertKind::AfterHours,
                3.0,
                "Patient/0",
            )])
            .collect();
        assert_eq!(dominant_kind(&alerts), AlertKind::BulkAccess);
        assert_eq!(title(&alerts), "opened 5 patients in 4 min");
        let n = narrative(&alerts, 1, 2, None);
        assert!(
            n.contains("6 flagged accesses to 5 patients' records"),
            "{n}"
        );
        assert!(
            n.contains("Strongest reasons: reason AfterHours; reason BulkAccess."),
            "{n}"
        );
        assert!(n.ends_with("The 3rd case for this user in 90 days."), "{n}");
        // A care relationship is said apart from the reasons, once.
        let mut cared = alerts.clone();
        for a in cared.iter_mut() {
            a.explanation.push(format!(
                "{}the user is a participant of the patient's encounter since 2026-11-03",
                crate::alerts::CARE_NOTE
            ));
        }
        let n = narrative(&cared, 1, 0, None);
        assert!(
            n.contains("Strongest reasons: reason AfterHours; reason BulkAccess. In the user's favour: the user is a participant of the patient's encounter since 2026-11-03."),
            "{n}"
        );
    }

    #[test]
    fn closing_needs_a_resolution_and_only_closing_takes_one() {
        let d = |status, resolution| CaseDecision {
            status,
            resolution,
            note: None,
            by: None,
        };
        assert_eq!(
            d(CaseStatus::Closed, None).check(),
            Err(DecisionError::ClosedWithoutResolution)
        );
        assert_eq!(
            d(CaseStatus::InReview, Some(Resolution::Appropriate)).check(),
            Err(DecisionError::ResolutionWhileOpen)
        );
        assert!(d(CaseStatus::Closed, Some(Resolution::FalsePositive))
            .check()
            .is_ok());
    }

    #[test]
    fn an_appropriate_case_implies_one_rule_per_patient_and_new_client() {
        let mut a = alert(1, 0, AlertKind::NewSource, 2.0, "Patient/1");
        a.kinds.push(AlertKind::AfterHours);
        let alerts = vec![a, alert(2, 1, AlertKind::BulkAccess, 2.0, "Patient/1")];
        let rules = implied_rules(Some("Practitioner/7"), &alerts);
        assert_eq!(rules.len(), 2, "{rules:?}");
        assert!(rules
            .iter()
            .all(|r| r.user.as_deref() == Some("Practitioner/7")));
        assert!(rules.iter().any(|r| r.client_app.as_deref() == Some("app")));
        assert!(implied_rules(None, &alerts).is_empty(), "no user, no rule");
    }
}
