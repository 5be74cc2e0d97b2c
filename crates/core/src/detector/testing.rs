//! What the detector's unit tests share.

use crate::fhir::{AuditRecord, Interaction};
use chrono::{TimeZone, Utc};

/// A read of `patient` by `user` from `ip`, `minute` minutes after Monday 2024-03-04
/// 09:00 UTC.
pub fn read(user: &str, patient: &str, ip: &str, minute: i64) -> AuditRecord {
    let t = Utc.with_ymd_and_hms(2024, 3, 4, 9, 0, 0).unwrap() + chrono::Duration::minutes(minute);
    AuditRecord {
        key: format!("{user}-{patient}-{minute}"),
        id: format!("{user}-{patient}-{minute}"),
        version_id: None,
        last_updated: None,
        recorded: t,
        interaction: Interaction::Read,
        action: Some('R'),
        outcome: 0,
        user: Some(user.into()),
        user_display: None,
        department: Some("Cardiology".into()),
        client_app: Some("Device/ehr".into()),
        source_ip: Some(ip.into()),
        patient: Some(patient.into()),
        patient_display: None,
        restricted: false,
        purpose: None,
        observer: None,
        query: None,
        request_id: None,
    }
}
