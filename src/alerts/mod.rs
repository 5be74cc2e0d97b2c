//! Alerts in the daemon: the decision whether a scored event becomes an alert (threshold,
//! allow-list) and its journal record. `actor.rs` holds `AlertSinkActor`, which commits
//! alerts with their page and then journals them.

pub mod actor;

use fhir_edge_core::alerts::{Alert, AlertKind, AllowRule, NewAlert, Severity};
use fhir_edge_core::detector::ScoredEvent;

/// Build the alert for a scored event, unless it is below threshold or allow-listed.
pub fn to_alert(e: &ScoredEvent, rules: &[AllowRule]) -> Option<NewAlert> {
    let severity = e.severity?;
    let r = &e.fetched.record;
    let a = NewAlert {
        event_key: r.key.clone(),
        event_id: r.id.clone(),
        event_version: r.version_id.clone(),
        recorded_ms: r.recorded.timestamp_millis(),
        score: e.score as f64,
        severity,
        summary: e.summary.clone(),
        explanation: e.explanation.clone(),
        kinds: e.kinds.clone(),
        user: r.user.clone(),
        // Kept in memory for the namesake signal only: no person's name is stored.
        user_display: None,
        patient: r.patient.clone(),
        source_ip: r.source_ip.clone(),
        client_app: r.client_app.clone(),
        action: r.action.map(|c| c.to_string()),
        interaction: r.interaction.as_str().to_string(),
        raw: fhir_edge_core::fhir::without_people(e.fetched.raw.get()),
        evidence: e.evidence,
    };
    if rules.iter().any(|rule| rule.matches(&a)) {
        return None;
    }
    Some(a)
}

/// What one alert's journal record carries (references only, never names).
pub struct JournalRecord<'a> {
    pub id: i64,
    pub severity: Severity,
    pub score: f64,
    pub summary: &'a str,
    pub kinds: &'a [AlertKind],
    pub user: Option<&'a str>,
    pub patient: Option<&'a str>,
    pub event_id: &'a str,
}

/// The journal record of a new alert once stored as `id`.
pub fn new_alert_record(a: &NewAlert, id: i64) -> JournalRecord<'_> {
    JournalRecord {
        id,
        severity: a.severity,
        score: a.score,
        summary: &a.summary,
        kinds: &a.kinds,
        user: a.user.as_deref(),
        patient: a.patient.as_deref(),
        event_id: &a.event_id,
    }
}

/// The journal record of a stored alert.
pub fn alert_record(a: &Alert) -> JournalRecord<'_> {
    JournalRecord {
        id: a.id,
        severity: a.severity,
        score: a.score,
        summary: &a.summary,
        kinds: &a.kinds,
        user: a.user.as_deref(),
        patient: a.patient.as_deref(),
        event_id: &a.event_id,
    }
}

/// Write one structured journal record per alert, at a priority from its severity:
/// low/medium → warning, high/critical → err.
pub fn journal_alert(a: &JournalRecord) {
    let id = a.id;
    let user = a.user.unwrap_or("");
    let patient = a.patient.unwrap_or("");
    let kinds = a
        .kinds
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(",");
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

/// Write one structured journal record when a case opens, escalates or takes a later
/// episode of its user, at a priority from its severity (as alerts): the privacy
/// officer's queue in the journal.
pub fn journal_case(c: &fhir_edge_core::cases::CaseNote) {
    use fhir_edge_core::cases::CaseEvent;
    let user = c.user.as_deref().unwrap_or("");
    let what = match c.event {
        CaseEvent::Opened => "OPENED",
        CaseEvent::Escalated => "ESCALATED",
        CaseEvent::Episode => "NEW EPISODE",
    };
    let episodes = fhir_edge_core::cases::episodes_words(c.episodes);
    macro_rules! rec {
        ($lvl:ident) => {
            tracing::$lvl!(
                actor = "alert_sink",
                fhir_edge_case_id = c.id,
                fhir_edge_case_event = c.event.as_str(),
                fhir_edge_severity = c.severity.as_str(),
                fhir_edge_user = user,
                fhir_edge_alerts = c.alerts,
                fhir_edge_episodes = c.episodes,
                "CASE {what} {} #{}: {} (user {}, {} alert{}{episodes})",
                c.severity.as_str(),
                c.id,
                c.title,
                if user.is_empty() { "-" } else { user },
                c.alerts,
                if c.alerts == 1 { "" } else { "s" },
            )
        };
    }
    match c.severity {
        Severity::Low | Severity::Medium => rec!(warn),
        Severity::High | Severity::Critical => rec!(error),
    }
}
