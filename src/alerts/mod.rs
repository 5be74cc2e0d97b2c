//! Alerts: what a privacy officer works with. Plain logic here (building, allow-list,
//! journald record); the actor that stores them is in `actor.rs`.

pub mod actor;

use serde::{Deserialize, Serialize};

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

    /// From score / threshold: ≥1 low, ≥1.5 medium, ≥2.5 high, ≥4 critical.
    pub fn from_ratio(r: f64) -> Option<Severity> {
        if r.is_nan() || r < 1.0 {
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
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Severity::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                format!("unknown severity {s:?}; expected low, medium, high or critical")
            })
    }
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
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [
            Status::New,
            Status::Acknowledged,
            Status::FalsePositive,
            Status::Confirmed,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
        .ok_or_else(|| {
            format!("unknown status {s:?}; expected new, acknowledged, false_positive or confirmed")
        })
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
    pub kinds: Vec<String>,
    pub user: Option<String>,
    pub user_display: Option<String>,
    pub patient: Option<String>,
    pub source_ip: Option<String>,
    pub client_app: Option<String>,
    pub action: Option<String>,
    pub interaction: String,
    pub raw: String,
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
    pub kinds: Vec<String>,
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

/// What one alert's journal record carries (references only, never names).
pub struct JournalRecord<'a> {
    pub id: i64,
    pub severity: Severity,
    pub score: f64,
    pub summary: &'a str,
    pub kinds: &'a [String],
    pub user: Option<&'a str>,
    pub patient: Option<&'a str>,
    pub event_id: &'a str,
}

impl NewAlert {
    /// The journal record of this alert once stored as `id`.
    pub fn journal_record(&self, id: i64) -> JournalRecord<'_> {
        JournalRecord {
            id,
            severity: self.severity,
            score: self.score,
            summary: &self.summary,
            kinds: &self.kinds,
            user: self.user.as_deref(),
            patient: self.patient.as_deref(),
            event_id: &self.event_id,
        }
    }
}

impl Alert {
    pub fn journal_record(&self) -> JournalRecord<'_> {
        JournalRecord {
            id: self.id,
            severity: self.severity,
            score: self.score,
            summary: &self.summary,
            kinds: &self.kinds,
            user: self.user.as_deref(),
            patient: self.patient.as_deref(),
            event_id: &self.event_id,
        }
    }
}

/// Write one structured journal record per alert, at a priority from its severity:
/// low/medium → warning, high/critical → err.
pub fn journal_alert(a: &JournalRecord) {
    let id = a.id;
    let user = a.user.unwrap_or("");
    let patient = a.patient.unwrap_or("");
    let kinds = a.kinds.join(",");
    macro_rules! rec {
        ($lvl:ident) => {
            tracing::$lvl!(
                actor = "alert_sink",
                fhir_edge_alert_id = id,
                fhir_edge_severity = a.severity.as_str(),
                fhir_edge_score = a.score,
                fhir_edge_user = user,
                fhir_edge_patient = patient,
                fhir_edge_event_id = a.event_id,
                fhir_edge_kinds = kinds.as_str(),
                "ALERT {} #{}: {} (event AuditEvent/{}, user {}, patient {})",
                a.severity.as_str(),
                id,
                a.summary,
                a.event_id,
                if user.is_empty() { "-" } else { user },
                if patient.is_empty() { "-" } else { patient },
            )
        };
    }
    match a.severity {
        Severity::Low | Severity::Medium => rec!(warn),
        Severity::High | Severity::Critical => rec!(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_bands() {
        assert_eq!(Severity::from_ratio(0.99), None);
        assert_eq!(Severity::from_ratio(f64::NAN), None);
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
