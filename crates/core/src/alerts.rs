//! Alerts: what a privacy officer works with — severity, status, allow-list rules, the
//! stored alert and its filters. The daemon's `AlertSinkActor` decides and stores them.

use serde::{Deserialize, Serialize};

/// How an explanation's last line begins when a treatment relationship lowered the score
/// (it is context, not a reason: case narratives list it apart).
pub const CARE_NOTE: &str = "care relationship, counted in the user's favour: ";

/// How a reason begins when the record is a colleague's: the care context says the patient
/// is another member of staff, or the patient bears another user's name.
pub const COWORKER_RECORD: &str = "the patient is a member of staff (a co-worker)";
pub const STAFF_NAMED_RECORD: &str =
    "a member of staff's own record (the patient bears the name of another user of this site)";

/// Whether a reason is about a colleague's own record (see [`COWORKER_RECORD`]).
pub fn names_a_colleague(reason: &str) -> bool {
    reason.starts_with(COWORKER_RECORD) || reason.starts_with(STAFF_NAMED_RECORD)
}

/// The score (a multiple of the site's calibrated threshold, its 99.5th percentile of
/// normal by default) from which an event is a low alert. Just under the threshold: the
/// queue is kept short by cases, not by single events — a low alert of a behaviour common
/// in legitimate work waits in a watched case for corroboration
/// ([`crate::cases::queued`]) — so events near the threshold are kept as evidence. Chosen
/// on the development hospitals (classic A and C), where against a floor of 1.0 it put 0–4
/// points more of the incidents in a case for 0.6–1.5 more false cases a day per 100 staff;
/// the held-out hospitals' figures are in BENCHMARKS.md, "Corroboration and the alert
/// floor".
pub const ALERT_FLOOR: f64 = 0.9;

/// The behaviour an alert reason points at. One list for the detector's explanations, the
/// simulator's labels, the stored alerts and the API; written as its snake_case name
/// (`as_str`, the one list of names: serde and `FromStr` go through it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AlertKind {
    /// Activity at an hour, weekday or session start unusual for the user.
    AfterHours,
    /// Many distinct patients in a short time.
    BulkAccess,
    /// A record outside the work of the user's department.
    CrossDepartment,
    /// A crowd around one patient's record (a public figure, a colleague), or a colleague's
    /// record opened outside any treatment relationship.
    VipSnooping,
    /// Failed logins in a burst.
    FailedLogins,
    /// Refused requests beyond the user's usual failure rate (probing record ids).
    FailedRequests,
    /// An address or client application new to the user.
    NewSource,
    /// A session after a break longer than the user's usual.
    DormantAccount,
    /// A bulk export, a sweep of people's demographics, or one search for very many records.
    MassExport,
    /// Searches asking for far more records within an hour than the user's usual: a busy
    /// day as often as a harvest, so alone and low it waits for corroboration (a harvest
    /// big enough to matter scores higher, or shows as an export or a sweep).
    WideSearch,
    /// A personal link: the patient shares the user's (rare) family name, or the care
    /// context shows them to be the user's relative, household, or the user themself.
    FamilySnooping,
    /// A watched or restricted record opened without a working relationship.
    WatchedRecord,
    /// A combination the autoencoder finds unusual, with no single behaviour behind it.
    UnusualPattern,
}

impl AlertKind {
    /// An alert's strongest behaviour: the first of its kinds (they come in order of
    /// contribution), or `UnusualPattern` when no single behaviour was named.
    pub fn strongest(kinds: &[AlertKind]) -> AlertKind {
        kinds.first().copied().unwrap_or(AlertKind::UnusualPattern)
    }

    /// Every kind, in a stable order.
    pub const ALL: [AlertKind; 13] = [
        AlertKind::AfterHours,
        AlertKind::BulkAccess,
        AlertKind::CrossDepartment,
        AlertKind::VipSnooping,
        AlertKind::FailedLogins,
        AlertKind::FailedRequests,
        AlertKind::NewSource,
        AlertKind::DormantAccount,
        AlertKind::MassExport,
        AlertKind::WideSearch,
        AlertKind::FamilySnooping,
        AlertKind::WatchedRecord,
        AlertKind::UnusualPattern,
    ];

    /// The snake_case name (stored alerts, API, labels).
    pub const fn as_str(self) -> &'static str {
        match self {
            AlertKind::AfterHours => "after_hours",
            AlertKind::BulkAccess => "bulk_access",
            AlertKind::CrossDepartment => "cross_department",
            AlertKind::VipSnooping => "vip_snooping",
            AlertKind::FailedLogins => "failed_logins",
            AlertKind::FailedRequests => "failed_requests",
            AlertKind::NewSource => "new_source",
            AlertKind::DormantAccount => "dormant_account",
            AlertKind::MassExport => "mass_export",
            AlertKind::WideSearch => "wide_search",
            AlertKind::FamilySnooping => "family_snooping",
            AlertKind::WatchedRecord => "watched_record",
            AlertKind::UnusualPattern => "unusual_pattern",
        }
    }
}

impl std::fmt::Display for AlertKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for AlertKind {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        AlertKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownName::new("alert kind", s, AlertKind::ALL.map(AlertKind::as_str)))
    }
}

impl Serialize for AlertKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for AlertKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// A name that is not one of a closed list (a severity, a status, an alert kind).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {given:?}; expected one of: {expected}")]
pub struct UnknownName {
    what: &'static str,
    given: String,
    expected: String,
}

impl UnknownName {
    pub(crate) fn new<const N: usize>(
        what: &'static str,
        given: &str,
        expected: [&str; N],
    ) -> Self {
        UnknownName {
            what,
            given: given.to_string(),
            expected: expected.join(", "),
        }
    }
}

/// Severity from the anomaly score relative to the calibrated threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low = 1,
    Medium = 2,
    High = 3,
    Critical = 4,
}

impl Severity {
    pub const ALL: [Severity; 4] = [
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    pub fn from_i64(v: i64) -> Severity {
        match v {
            i64::MIN..=1 => Severity::Low,
            2 => Severity::Medium,
            3 => Severity::High,
            _ => Severity::Critical,
        }
    }

    /// From score / threshold: ≥[`ALERT_FLOOR`] low, ≥1.5 medium, ≥2.5 high, ≥4 critical.
    pub fn from_ratio(r: f64) -> Option<Severity> {
        if r.is_nan() || r < ALERT_FLOOR {
            None
        } else if r < 1.5 {
            Some(Severity::Low)
        } else if r < 2.5 {
            Some(Severity::Medium)
        } else if r < 4.0 {
            Some(Severity::High)
        } else {
            Some(Severity::Critical)
        }
    }
}

impl std::str::FromStr for Severity {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        Severity::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownName::new("severity", s, Severity::ALL.map(Severity::as_str)))
    }
}

/// What an alert brings to its case's corroboration besides its patient and behaviour
/// (the detector decides it: `detector::evidence`; `cases::Corroboration` weighs it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// One piece of evidence: another patient or another behaviour corroborates it.
    Single,
    /// Evidence twice over: the alert corroborates its case itself (an access at an unusual
    /// hour in a session begun at an hour the user never begins one, a colleague's record
    /// opened from the colleague's own department, an hour's searches ten times the user's
    /// usual).
    Twice,
    /// The user's routine work: a watched record opened by someone whose work goes to
    /// records of other departments routinely (radiology, the pharmacy, the laboratory).
    /// Another patient's alert for the same reason is that work going on, not a second
    /// piece of evidence; another behaviour still corroborates.
    Routine,
}

/// Case status of an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    New,
    Acknowledged,
    FalsePositive,
    Confirmed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::New => "new",
            Status::Acknowledged => "acknowledged",
            Status::FalsePositive => "false_positive",
            Status::Confirmed => "confirmed",
        }
    }
}

impl std::str::FromStr for Status {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        let all = [
            Status::New,
            Status::Acknowledged,
            Status::FalsePositive,
            Status::Confirmed,
        ];
        all.into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownName::new("status", s, all.map(Status::as_str)))
    }
}

/// An alert about to be stored.
#[derive(Debug, Clone)]
pub struct NewAlert {
    pub event_key: String,
    pub event_id: String,
    pub event_version: Option<String>,
    pub recorded_ms: i64,
    pub score: f64,
    pub severity: Severity,
    pub summary: String,
    pub explanation: Vec<String>,
    pub kinds: Vec<AlertKind>,
    pub user: Option<String>,
    pub user_display: Option<String>,
    pub patient: Option<String>,
    pub source_ip: Option<String>,
    pub client_app: Option<String>,
    pub action: Option<String>,
    pub interaction: String,
    pub raw: String,
    /// What it brings to its case's corroboration (`detector::evidence`); used when filing
    /// it, not stored.
    pub evidence: Evidence,
}

/// A stored alert, as the API and `fhir-edge alerts --json` show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Alert {
    pub id: i64,
    pub event_id: String,
    pub event_version: Option<String>,
    pub event_key: String,
    /// When the access happened (`AuditEvent.recorded`).
    pub recorded: String,
    /// When fhir-edge stored the alert.
    pub detected: String,
    pub score: f64,
    pub severity: Severity,
    pub status: Status,
    pub status_by: Option<String>,
    pub status_at: Option<String>,
    pub status_note: Option<String>,
    /// One line: the main reason.
    pub summary: String,
    /// Every reason, in plain words, strongest first.
    pub explanation: Vec<String>,
    /// Scenario tags such as `bulk_access`, `after_hours`.
    pub kinds: Vec<AlertKind>,
    pub user: Option<String>,
    pub user_display: Option<String>,
    pub patient: Option<String>,
    pub source_ip: Option<String>,
    pub client_app: Option<String>,
    pub action: Option<String>,
    pub interaction: String,
    /// The AuditEvent as received (only on single-alert reads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default)]
pub struct AlertFilter {
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub min_severity: Option<Severity>,
    pub status: Option<Status>,
    pub user: Option<String>,
    pub patient: Option<String>,
    pub before_id: Option<i64>,
    pub limit: u32,
}

/// "This pattern is fine": suppresses alerts whose fields all match the rule's set fields.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct AllowRule {
    #[serde(default)]
    pub id: i64,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub patient: Option<String>,
    #[serde(default)]
    pub source_ip: Option<String>,
    #[serde(default)]
    pub client_app: Option<String>,
    #[serde(default)]
    pub note: Option<String>,
    #[serde(default)]
    pub created_by: Option<String>,
    #[serde(default)]
    pub created: String,
    #[serde(default)]
    pub from_alert: Option<i64>,
}

impl AllowRule {
    pub fn matches(&self, a: &NewAlert) -> bool {
        fn m(rule: &Option<String>, v: &Option<String>) -> bool {
            match rule {
                None => true,
                Some(r) => v.as_deref() == Some(r.as_str()),
            }
        }
        m(&self.user, &a.user)
            && m(&self.patient, &a.patient)
            && m(&self.source_ip, &a.source_ip)
            && m(&self.client_app, &a.client_app)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_kinds_have_one_name_for_serde_and_text() {
        for k in AlertKind::ALL {
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
            assert_eq!(serde_json::from_str::<AlertKind>(&json).unwrap(), k);
            assert_eq!(k.as_str().parse::<AlertKind>(), Ok(k));
        }
        assert!(serde_json::from_str::<AlertKind>("\"snooping\"").is_err());
    }

    #[test]
    fn severity_bands() {
        assert_eq!(Severity::from_ratio(0.89), None);
        assert_eq!(Severity::from_ratio(f64::NAN), None);
        assert_eq!(Severity::from_ratio(ALERT_FLOOR), Some(Severity::Low));
        assert_eq!(Severity::from_ratio(1.0), Some(Severity::Low));
        assert_eq!(Severity::from_ratio(2.0), Some(Severity::Medium));
        assert_eq!(Severity::from_ratio(3.0), Some(Severity::High));
        assert_eq!(Severity::from_ratio(10.0), Some(Severity::Critical));
        assert_eq!("high".parse::<Severity>().unwrap(), Severity::High);
    }

    #[test]
    fn allow_rule_matches_only_set_fields() {
        let a = NewAlert {
            event_key: "k".into(),
            event_id: "e".into(),
            event_version: None,
            recorded_ms: 0,
            score: 1.0,
            severity: Severity::Low,
            summary: String::new(),
            explanation: vec![],
            kinds: vec![],
            user: Some("Practitioner/1".into()),
            user_display: None,
            patient: Some("Patient/2".into()),
            source_ip: Some("10.0.0.1".into()),
            client_app: None,
            action: None,
            interaction: "read".into(),
            raw: String::new(),
            evidence: Evidence::Single,
        };
        let r = AllowRule {
            user: Some("Practitioner/1".into()),
            patient: Some("Patient/2".into()),
            ..Default::default()
        };
        assert!(r.matches(&a));
        let r = AllowRule {
            user: Some("Practitioner/1".into()),
            patient: Some("Patient/3".into()),
            ..Default::default()
        };
        assert!(!r.matches(&a));
        let r = AllowRule {
            user: Some("Practitioner/1".into()),
            source_ip: Some("10.0.0.1".into()),
            ..Default::default()
        };
        assert!(r.matches(&a));
    }
}
