//! The Open Cybersecurity Schema Framework's **Detection Finding** (OCSF 1.3.0, class
//! 2004 in category 2, Findings), the JSON that Amazon Security Lake, Splunk's and
//! Elastic's OCSF mappings and Tenzir read: `[export.syslog] format = "ocsf"` sends one per
//! message as its MSG. Built from the same JSON message as every other form, so it carries
//! nothing the JSON does not (references, never names; never a decision's note).
//!
//! A finding is an alert or a case; its lifecycle is the case's. Each message becomes one
//! event about the finding `finding_info.uid` (`<site>.alert.<id>` or `<site>.case.<id>`):
//!
//! | OCSF | alert | case | status (a decision) |
//! |---|---|---|---|
//! | `activity_id` | 1 Create | 1 Create with its first alert, 3 Close when closed, else 2 Update | 3 Close when closed, else 2 Update |
//! | `status_id` | from `status`: 1 New, 2 In Progress (acknowledged), 3 Suppressed (false positive), 4 Resolved (confirmed) | 99 Other "Watching", 1 New, 2 In Progress, closed: 3 Suppressed (appropriate, false positive) or 4 Resolved (inappropriate) | as for its alert or case |
//! | `severity_id` | low 2, medium 3, high 4, critical 5 | the same | 1 Informational |
//! | `is_alert` | true | true while in the queue (`new`) | false |
//! | `time` | `at` | `at` | `at` |
//! | `metadata.uid` | `msg_id` | `msg_id` | `msg_id` |
//! | `finding_info` | `title` summary, `desc` explanation, `types` kinds, `first_seen_time` = `last_seen_time` = `recorded`, `related_events` the AuditEvent | `title`, `desc` narrative, `types` kind, `first_seen_time` first, `last_seen_time` last, `related_events_count` alerts | `uid` only |
//! | `message` | summary | title | "case 4 closed" |
//! | `evidences` | the user (`actor.user.uid`), `client_app` (`actor.app_name`), `source_ip` (`src_endpoint.ip`) | the user | |
//! | `resources` | the patient (`type` Patient) | | |
//! | `unmapped` | `site`, `score`, `case_id`, `interaction` | `site`, `score`, `patients`, `episodes`, `earlier_cases`, `resolution` | `site`, `of`, `status`, `resolution`, `by` |
//!
//! Times are milliseconds since the epoch, as OCSF's `timestamp_t`.

use serde_json::{json, Map, Value};

use super::{field_millis as millis, field_text, Item, ItemKind};
use crate::alerts::Severity;

/// The OCSF version these events follow.
pub const VERSION: &str = "1.3.0";
/// Detection Finding.
const CLASS_UID: u32 = 2004;

/// An activity of a finding (OCSF `activity_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activity {
    Create = 1,
    Update = 2,
    Close = 3,
}

impl Activity {
    fn name(self) -> &'static str {
        match self {
            Activity::Create => "Create",
            Activity::Update => "Update",
            Activity::Close => "Close",
        }
    }
}

/// OCSF `severity_id` and its caption; a decision carries none and is informational.
fn severity(s: Option<Severity>) -> (u8, &'static str) {
    match s {
        None => (1, "Informational"),
        Some(Severity::Low) => (2, "Low"),
        Some(Severity::Medium) => (3, "Medium"),
        Some(Severity::High) => (4, "High"),
        Some(Severity::Critical) => (5, "Critical"),
    }
}

/// OCSF's finding `status_id` and caption of an alert's or a case's status (and, once
/// closed, its resolution), as the JSON message spells them.
fn status(status: &str, resolution: Option<&str>) -> (u8, &'static str) {
    match (status, resolution) {
        ("watching", _) => (99, "Watching"),
        ("new", _) => (1, "New"),
        ("acknowledged" | "in_review", _) => (2, "In Progress"),
        ("false_positive", _) | ("closed", Some("appropriate" | "false_positive")) => {
            (3, "Suppressed")
        }
        ("confirmed" | "closed", _) => (4, "Resolved"),
        _ => (0, "Unknown"),
    }
}

/// The fields of `pairs` that are present, as an object.
fn present(pairs: Vec<(&str, Option<Value>)>) -> Value {
    Value::Object(
        pairs
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_string(), v.filter(|v| !v.is_null())?)))
            .collect::<Map<_, _>>(),
    )
}

/// The OCSF Detection Finding of an item, `version` the product's.
pub fn finding(item: &Item, version: &str) -> Value {
    let body: Value = serde_json::from_str(&item.body).unwrap_or(Value::Null);
    let get = |k: &str| field_text(&body, k);
    let raw = |k: &str| body.get(k).cloned();
    let site = &item.site;
    let closed = get("status").as_deref() == Some("closed");
    let (activity, uid, of) = match item.kind {
        ItemKind::Alert => (
            Activity::Create,
            format!("{site}.alert.{}", item.id),
            "alert",
        ),
        ItemKind::Case => {
            let first = body["alerts"].as_u64() == Some(1);
            let activity = match (closed, first) {
                (true, _) => Activity::Close,
                (false, true) => Activity::Create,
                (false, false) => Activity::Update,
            };
            (activity, format!("{site}.case.{}", item.id), "case")
        }
        ItemKind::Status => {
            let of = if get("of").as_deref() == Some("case") {
                "case"
            } else {
                "alert"
            };
            let activity = if closed {
                Activity::Close
            } else {
                Activity::Update
            };
            (activity, format!("{site}.{of}.{}", item.id), of)
        }
    };
    let (status_id, status_name) = status(
        get("status").as_deref().unwrap_or_default(),
        get("resolution").as_deref(),
    );
    let (severity_id, severity_name) = severity(item.severity);
    let at = millis(&body, "at").unwrap_or(item.created_ms);
    let user = get(if item.kind == ItemKind::Status {
        "by"
    } else {
        "user"
    });
    let actor = user.as_ref().map(|u| json!({"user": {"uid": u}}));
    let (finding_info, message, evidences, resources, unmapped, is_alert) = match item.kind {
        ItemKind::Alert => {
            let recorded = millis(&body, "recorded");
            let mut actor = actor.unwrap_or_else(|| json!({}));
            if let Some(app) = get("client_app") {
                actor["app_name"] = json!(app);
            }
            let evidence = present(vec![
                (
                    "actor",
                    Some(actor).filter(|a| a.as_object().is_some_and(|o| !o.is_empty())),
                ),
                ("src_endpoint", get("source_ip").map(|ip| json!({"ip": ip}))),
            ]);
            (
                present(vec![
                    ("uid", Some(json!(uid))),
                    ("title", raw("summary")),
                    ("desc", get("explanation").map(Value::from)),
                    ("types", raw("kinds")),
                    ("created_time", Some(json!(at))),
                    ("first_seen_time", recorded.map(Value::from)),
                    ("last_seen_time", recorded.map(Value::from)),
                    (
                        "related_events",
                        get("event_id").map(|e| json!([{"uid": e, "type": "AuditEvent"}])),
                    ),
                ]),
                raw("summary"),
                Some(json!([evidence]))
                    .filter(|_| evidence.as_object().is_some_and(|o| !o.is_empty())),
                get("patient").map(|p| json!([{"uid": p, "type": "Patient"}])),
                present(vec![
                    ("site", Some(json!(site))),
                    ("score", raw("score")),
                    ("case_id", raw("case_id")),
                    ("interaction", raw("interaction")),
                ]),
                true,
            )
        }
        ItemKind::Case => (
            present(vec![
                ("uid", Some(json!(uid))),
                ("title", raw("title")),
                ("desc", raw("narrative")),
                ("types", get("kind").map(|k| json!([k]))),
                ("created_time", Some(json!(at))),
                ("modified_time", Some(json!(at))),
                ("first_seen_time", millis(&body, "first").map(Value::from)),
                ("last_seen_time", millis(&body, "last").map(Value::from)),
                ("related_events_count", raw("alerts")),
            ]),
            raw("title"),
            actor.map(|a| json!([{"actor": a}])),
            None,
            present(vec![
                ("site", Some(json!(site))),
                ("score", raw("score")),
                ("patients", raw("patients")),
                ("episodes", raw("episodes")),
                ("earlier_cases", raw("earlier_cases")),
                ("resolution", raw("resolution")),
            ]),
            get("status").as_deref() == Some("new"),
        ),
        ItemKind::Status => (
            json!({"uid": uid, "modified_time": at}),
            Some(json!(format!(
                "{of} {} {}",
                item.id,
                get("status").unwrap_or_default()
            ))),
            None,
            None,
            present(vec![
                ("site", Some(json!(site))),
                ("of", raw("of")),
                ("status", raw("status")),
                ("resolution", raw("resolution")),
                ("by", raw("by")),
            ]),
            false,
        ),
    };
    let type_uid = CLASS_UID * 100 + activity as u32;
    present(vec![
        ("class_uid", Some(json!(CLASS_UID))),
        ("class_name", Some(json!("Detection Finding"))),
        ("category_uid", Some(json!(2))),
        ("category_name", Some(json!("Findings"))),
        ("activity_id", Some(json!(activity as u8))),
        ("activity_name", Some(json!(activity.name()))),
        ("type_uid", Some(json!(type_uid))),
        (
            "type_name",
            Some(json!(format!("Detection Finding: {}", activity.name()))),
        ),
        ("time", Some(json!(at))),
        ("severity_id", Some(json!(severity_id))),
        ("severity", Some(json!(severity_name))),
        ("status_id", Some(json!(status_id))),
        ("status", Some(json!(status_name))),
        ("is_alert", Some(json!(is_alert))),
        ("message", message),
        (
            "metadata",
            Some(json!({
                "version": VERSION,
                "uid": item.msg_id(),
                "product": {"name": "fhir-edge", "vendor_name": "fhir-edge", "version": version},
            })),
        ),
        ("finding_info", Some(finding_info)),
        ("evidences", evidences),
        ("resources", resources),
        ("unmapped", Some(unmapped)),
    ])
}

#[cfg(test)]
mod tests {
    use super::super::tests::{alert, outbox_item};
    use super::super::{alert_message, case_message, status_message};
    use super::*;
    use crate::alerts::AlertKind;
    use crate::cases::{Case, CaseStatus, Resolution};

    fn case(status: CaseStatus, alerts: u64, resolution: Option<Resolution>) -> Case {
        Case {
            id: 4,
            user: Some("Practitioner/7".into()),
            title: "looked up a relative".into(),
            narrative: "Practitioner/7 opened Patient/9 at 02:10".into(),
            kind: AlertKind::FamilySnooping,
            score: 3.5,
            severity: Severity::High,
            first: "2023-11-14T22:00:00Z".into(),
            last: "2023-11-14T22:10:00Z".into(),
            alerts,
            episodes: 1,
            patients: 1,
            status,
            resolution,
            status_note: Some("spoke to Ann Smith".into()),
            status_by: Some("po-1".into()),
            status_at: None,
            earlier_cases: 2,
        }
    }

    /// An alert is a created finding about the patient, by the user, with its AuditEvent;
    /// no names reach it.
    #[test]
    fn an_alert_is_a_detection_finding_without_names() {
        let body = alert_message("north", 12, Some(3), &alert(), 1_700_000_001_000);
        let item = outbox_item(1, ItemKind::Alert, 12, Some(Severity::High), &body);
        let f = finding(&item, "0.1.0");
        assert_eq!(f["class_uid"], 2004);
        assert_eq!(f["category_uid"], 2);
        assert_eq!(f["type_uid"], 200401);
        assert_eq!(f["activity_id"], 1);
        assert_eq!(f["severity_id"], 4);
        assert_eq!(f["status_id"], 1);
        assert_eq!(f["is_alert"], true);
        assert_eq!(f["time"], 1_700_000_001_000i64);
        assert_eq!(f["metadata"]["uid"], "north.alert.12");
        assert_eq!(f["metadata"]["version"], VERSION);
        assert_eq!(f["finding_info"]["uid"], "north.alert.12");
        assert_eq!(f["finding_info"]["title"], "looked up a relative");
        assert_eq!(f["finding_info"]["types"], json!(["unusual_pattern"]));
        assert_eq!(f["finding_info"]["first_seen_time"], 1_700_000_000_000i64);
        assert_eq!(f["finding_info"]["related_events"][0]["uid"], "ev-1");
        assert_eq!(
            f["resources"][0],
            json!({"uid": "Patient/9", "type": "Patient"})
        );
        assert_eq!(f["evidences"][0]["actor"]["user"]["uid"], "Practitioner/7");
        assert_eq!(f["evidences"][0]["src_endpoint"]["ip"], "10.0.0.5");
        assert!(f["evidences"][0]["actor"].get("app_name").is_none(), "{f}");
        assert_eq!(f["unmapped"]["case_id"], 3);
        let s = f.to_string();
        assert!(!s.contains("Ann") && !s.contains("null"), "{s}");

        // In syslog: no structured data, the finding's JSON as MSG.
        use super::super::syslog;
        let m = syslog::format(
            &item,
            syslog::Facility::Authpriv,
            syslog::Payload::Ocsf,
            "edge",
            "fhir-edge",
            1,
        );
        let head = "<83>1 2023-11-14T22:13:21.000Z edge fhir-edge 1 alert - ";
        assert!(m.starts_with(head), "{m}");
        let msg: Value = serde_json::from_str(&m[head.len()..]).unwrap();
        assert_eq!(msg["metadata"]["uid"], "north.alert.12");
    }

    /// A case is created with its first alert, updated as it grows or is looked at, and
    /// closed with its resolution; a decision updates or closes the finding it is about.
    /// Only a case in the queue is an alertable signal; a note never leaves the edge.
    #[test]
    fn a_case_follows_the_finding_lifecycle() {
        let of = |c: &Case| {
            let body = case_message("north", c, 1_700_000_002_000);
            finding(
                &outbox_item(9, ItemKind::Case, 4, Some(c.severity), &body),
                "0.1.0",
            )
        };
        let opened = of(&case(CaseStatus::New, 1, None));
        assert_eq!(
            (
                &opened["activity_id"],
                &opened["status_id"],
                &opened["is_alert"]
            ),
            (&json!(1), &json!(1), &json!(true))
        );
        assert_eq!(opened["finding_info"]["uid"], "north.case.4");
        assert_eq!(opened["metadata"]["uid"], "north.case.4.9");
        assert_eq!(opened["unmapped"]["episodes"], 1);
        assert_eq!(
            opened["finding_info"]["first_seen_time"],
            1_699_999_200_000i64
        );
        assert_eq!(opened["finding_info"]["related_events_count"], 1);
        assert_eq!(
            opened["evidences"][0]["actor"]["user"]["uid"],
            "Practitioner/7"
        );
        let watched = of(&case(CaseStatus::Watching, 1, None));
        assert_eq!(
            (
                &watched["status_id"],
                &watched["status"],
                &watched["is_alert"]
            ),
            (&json!(99), &json!("Watching"), &json!(false))
        );
        let grown = of(&case(CaseStatus::InReview, 3, None));
        assert_eq!(
            (&grown["activity_id"], &grown["status_id"]),
            (&json!(2), &json!(2))
        );
        assert_eq!(grown["type_uid"], 200402);
        for (resolution, status_id) in [
            (Resolution::Inappropriate, 4),
            (Resolution::Appropriate, 3),
            (Resolution::FalsePositive, 3),
        ] {
            let closed = of(&case(CaseStatus::Closed, 3, Some(resolution)));
            assert_eq!(
                (&closed["activity_id"], &closed["status_id"]),
                (&json!(3), &json!(status_id)),
                "{resolution:?}"
            );
            assert!(!closed.to_string().contains("Ann Smith"), "{closed}");
        }

        let body = status_message(
            "north",
            ItemKind::Case,
            4,
            "closed",
            Some("appropriate"),
            Some("po-1"),
            1_700_000_003_000,
        );
        let decided = finding(&outbox_item(10, ItemKind::Status, 4, None, &body), "0.1.0");
        assert_eq!(decided["finding_info"]["uid"], "north.case.4");
        assert_eq!(
            (
                &decided["activity_id"],
                &decided["status_id"],
                &decided["severity_id"]
            ),
            (&json!(3), &json!(3), &json!(1))
        );
        assert_eq!(decided["message"], "case 4 closed");
        assert_eq!(decided["unmapped"]["by"], "po-1");
        let body = status_message(
            "north",
            ItemKind::Alert,
            12,
            "acknowledged",
            None,
            Some("po-1"),
            1_700_000_003_000,
        );
        let seen = finding(&outbox_item(11, ItemKind::Status, 12, None, &body), "0.1.0");
        assert_eq!(seen["finding_info"]["uid"], "north.alert.12");
        assert_eq!(
            (&seen["activity_id"], &seen["status_id"]),
            (&json!(2), &json!(2))
        );
    }
}
