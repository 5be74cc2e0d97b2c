//! What leaves the edge for a broker or a SIEM: the export messages (schema 1), their
//! stable ids, and the RFC 5424 syslog form of each.
//!
//! Every alert, every change of a case and every decision (an alert's or a case's status)
//! becomes one message, written to the state's outbox in the transaction that stores it
//! (`state::outbox`); exporters send what the outbox holds and mark what the far side
//! acknowledged. A message is JSON:
//!
//! | field | in | meaning |
//! |---|---|---|
//! | `schema` | all | `1`; a field is only ever added within a schema number |
//! | `site` | all | `[site] name` of the edge that wrote it |
//! | `type` | all | `alert`, `case` or `status` |
//! | `id` | all | the alert's or case's id as `/api/alerts`, `/api/cases` give it (for `status`: of the item decided) |
//! | `msg_id` | all | unique per message, stable across resends: `<site>.alert.<id>`, `<site>.case.<id>.<seq>`, `<site>.status.<seq>` (NATS `Nats-Msg-Id`, syslog MSGID's structured data) |
//! | `at` | all | when the edge stored it (RFC 3339) |
//! | `event_id`, `recorded`, `score`, `severity`, `status`, `user`, `patient`, `summary`, `explanation`, `kinds`, `case_id`, `source_ip`, `client_app`, `interaction` | alert | as `/api/alerts/{id}` gives them |
//! | `title`, `narrative`, `kind`, `score`, `severity`, `status`, `resolution`, `user`, `first`, `last`, `alerts`, `patients`, `earlier_cases` | case | the case as `/api/cases/{id}` gives it after the change |
//! | `of`, `status`, `resolution`, `by` | status | `of`: `alert` or `case`; the decision (its free-text note is never exported) |
//!
//! No message carries a name, address or phone of anyone: users and patients are
//! references (`Practitioner/123`, `Patient/456`), explanations are built from references,
//! and the AuditEvent itself is not exported.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::alerts::{NewAlert, Severity};
use crate::cases::Case;

/// The message schema this build writes.
pub const SCHEMA: u32 = 1;

/// What a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemKind {
    Alert,
    Case,
    Status,
}

impl ItemKind {
    pub const ALL: [ItemKind; 3] = [ItemKind::Alert, ItemKind::Case, ItemKind::Status];

    pub fn as_str(self) -> &'static str {
        match self {
            ItemKind::Alert => "alert",
            ItemKind::Case => "case",
            ItemKind::Status => "status",
        }
    }

    /// The name stored in the outbox, back to the kind (`None`: not written by this build).
    pub fn parse(s: &str) -> Option<ItemKind> {
        ItemKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Whether `s` can name a site: it becomes a NATS subject token and a syslog field, so
/// ASCII letters, digits, `-` and `_`, 1 to 64 of them.
pub fn valid_site(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A site name made from a host name: what `valid_site` refuses becomes `-`.
pub fn site_from_host(host: &str) -> String {
    let s: String = host
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if s.is_empty() {
        "edge".to_string()
    } else {
        s
    }
}

/// A message's id, unique per message and the same on every resend of it: an alert is
/// exported once (`<site>.alert.<id>`); a case and a decision change, so theirs carry the
/// outbox position that wrote them.
pub fn msg_id(site: &str, kind: ItemKind, id: i64, seq: i64) -> String {
    match kind {
        ItemKind::Alert => format!("{site}.alert.{id}"),
        ItemKind::Case => format!("{site}.case.{id}.{seq}"),
        ItemKind::Status => format!("{site}.status.{seq}"),
    }
}

fn fmt(ms: i64) -> String {
    crate::clock::fmt_ms(crate::clock::from_ms(ms))
}

/// The message of a just-stored alert (`id` as stored, filed into `case_id`).
pub fn alert_message(site: &str, id: i64, case_id: Option<i64>, a: &NewAlert, at_ms: i64) -> Value {
    json!({
        "schema": SCHEMA,
        "site": site,
        "type": ItemKind::Alert,
        "id": id,
        "at": fmt(at_ms),
        "event_id": a.event_id,
        "recorded": fmt(a.recorded_ms),
        "score": a.score,
        "severity": a.severity,
        "status": crate::alerts::Status::New,
        "user": a.user,
        "patient": a.patient,
        "summary": a.summary,
        "explanation": a.explanation,
        "kinds": a.kinds,
        "case_id": case_id,
        "source_ip": a.source_ip,
        "client_app": a.client_app,
        "interaction": a.interaction,
    })
}

/// The message of a case as it stands after a change.
pub fn case_message(site: &str, c: &Case, at_ms: i64) -> Value {
    json!({
        "schema": SCHEMA,
        "site": site,
        "type": ItemKind::Case,
        "id": c.id,
        "at": fmt(at_ms),
        "title": c.title,
        "narrative": c.narrative,
        "kind": c.kind,
        "score": c.score,
        "severity": c.severity,
        "status": c.status,
        "resolution": c.resolution,
        "user": c.user,
        "first": c.first,
        "last": c.last,
        "alerts": c.alerts,
        "patients": c.patients,
        "earlier_cases": c.earlier_cases,
    })
}

/// The message of a decision on an alert or a case (never its note: free text may name
/// people).
pub fn status_message(
    site: &str,
    of: ItemKind,
    id: i64,
    status: &str,
    resolution: Option<&str>,
    by: Option<&str>,
    at_ms: i64,
) -> Value {
    json!({
        "schema": SCHEMA,
        "site": site,
        "type": ItemKind::Status,
        "id": id,
        "at": fmt(at_ms),
        "of": of,
        "status": status,
        "resolution": resolution,
        "by": by,
    })
}

/// One message as the outbox holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Its position in the outbox: exporters send in this order and remember the last
    /// position the far side acknowledged.
    pub seq: i64,
    pub kind: ItemKind,
    /// The alert's or case's id (for a status: of the item decided).
    pub id: i64,
    pub site: String,
    /// Severity for routing (syslog priority); a status carries none.
    pub severity: Option<Severity>,
    pub created_ms: i64,
    /// The message (JSON, without `msg_id`; `body_with_id` adds it).
    pub body: String,
}

impl Item {
    pub fn msg_id(&self) -> String {
        msg_id(&self.site, self.kind, self.id, self.seq)
    }

    /// The message as sent: its JSON with `msg_id` added as the first field.
    pub fn body_with_id(&self) -> String {
        let rest = self.body.trim_start().strip_prefix('{').unwrap_or("}");
        let sep = if rest.trim_start().starts_with('}') {
            ""
        } else {
            ","
        };
        format!(
            "{{\"msg_id\":{}{sep}{rest}",
            serde_json::to_string(&self.msg_id()).expect("a string serialises")
        )
    }
}

/// RFC 5424 syslog: one message per item, with its fields as structured data under the
/// SD-ID `fhir-edge@32473` (32473 is the enterprise number RFC 5612 reserves for
/// documentation; fhir-edge has none of its own) and the whole JSON message as MSG.
pub mod syslog {
    use super::{Item, ItemKind};
    use crate::alerts::Severity;

    /// The SD-ID of the structured data.
    pub const SD_ID: &str = "fhir-edge@32473";

    /// The syslog facility (RFC 5424 §6.2.1) messages are sent with.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Facility {
        Auth,
        Authpriv,
        Local(u8),
    }

    impl Facility {
        /// `auth`, `authpriv`, `local0` … `local7`.
        pub fn parse(s: &str) -> Option<Facility> {
            match s {
                "auth" => Some(Facility::Auth),
                "authpriv" => Some(Facility::Authpriv),
                _ => {
                    let n: u8 = s.strip_prefix("local")?.parse().ok()?;
                    (n <= 7).then_some(Facility::Local(n))
                }
            }
        }

        fn code(self) -> u8 {
            match self {
                Facility::Auth => 4,
                Facility::Authpriv => 10,
                Facility::Local(n) => 16 + n,
            }
        }
    }

    /// Syslog severity of an item: critical → crit (2), high → err (3), medium → warning
    /// (4), low → notice (5); a decision is informational (6).
    pub fn level(s: Option<Severity>) -> u8 {
        match s {
            Some(Severity::Critical) => 2,
            Some(Severity::High) => 3,
            Some(Severity::Medium) => 4,
            Some(Severity::Low) => 5,
            None => 6,
        }
    }

    /// A PARAM-VALUE: `"`, `\` and `]` escaped (RFC 5424 §6.3.3).
    fn escape(v: &str) -> String {
        let mut out = String::with_capacity(v.len());
        for c in v.chars() {
            if matches!(c, '"' | '\\' | ']') {
                out.push('\\');
            }
            out.push(c);
        }
        out
    }

    /// A header field: printable US-ASCII without spaces, at most `max`, `-` when empty.
    fn header(v: &str, max: usize) -> String {
        let s: String = v
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(max)
            .collect();
        if s.is_empty() {
            "-".into()
        } else {
            s
        }
    }

    /// The structured-data parameters of an item: the fields a SIEM routes and searches on.
    fn params(item: &Item, body: &serde_json::Value) -> Vec<(&'static str, String)> {
        let mut p = vec![
            ("schema", super::SCHEMA.to_string()),
            ("site", item.site.clone()),
            ("type", item.kind.as_str().to_string()),
            ("id", item.id.to_string()),
            ("msg_id", item.msg_id()),
        ];
        let field = |k: &str| -> Option<String> {
            match body.get(k)? {
                serde_json::Value::Null => None,
                serde_json::Value::String(s) => Some(s.clone()),
                v => Some(v.to_string()),
            }
        };
        let keys: &[&'static str] = match item.kind {
            ItemKind::Alert => &[
                "event_id", "severity", "score", "status", "user", "patient", "recorded", "case_id",
            ],
            ItemKind::Case => &[
                "severity",
                "score",
                "status",
                "resolution",
                "user",
                "alerts",
                "patients",
                "first",
                "last",
            ],
            ItemKind::Status => &["of", "status", "resolution", "by"],
        };
        for k in keys {
            if let Some(v) = field(k) {
                p.push((k, v));
            }
        }
        p
    }

    /// One RFC 5424 message (without transport framing): `<PRI>1 TIMESTAMP HOSTNAME
    /// APP-NAME PROCID MSGID [SD] MSG`, MSGID the item's type, MSG its JSON.
    pub fn format(item: &Item, facility: Facility, host: &str, app: &str, pid: u32) -> String {
        let pri = u32::from(facility.code()) * 8 + u32::from(level(item.severity));
        let body: serde_json::Value =
            serde_json::from_str(&item.body).unwrap_or(serde_json::Value::Null);
        let sd: String = params(item, &body)
            .into_iter()
            .map(|(k, v)| format!(" {k}=\"{}\"", escape(&v)))
            .collect();
        let ts = crate::clock::from_ms(item.created_ms)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        format!(
            "<{pri}>1 {ts} {} {} {pid} {} [{SD_ID}{sd}] {}",
            header(host, 255),
            header(app, 48),
            item.kind.as_str(),
            item.body_with_id()
        )
    }

    /// Octet-counting framing (RFC 6587 §3.4.1, RFC 5425 §4.3): `LEN SP MSG`.
    pub fn frame(msg: &str) -> Vec<u8> {
        let mut out = format!("{} ", msg.len()).into_bytes();
        out.extend_from_slice(msg.as_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert() -> NewAlert {
        NewAlert {
            event_key: "k".into(),
            event_id: "ev-1".into(),
            event_version: None,
            recorded_ms: 1_700_000_000_000,
            score: 3.5,
            severity: Severity::High,
            summary: "looked up a relative".into(),
            explanation: vec!["the patient's records name the user as a relative".into()],
            kinds: vec![crate::alerts::AlertKind::UnusualPattern],
            user: Some("Practitioner/7".into()),
            user_display: Some("Ann Smith".into()),
            patient: Some("Patient/9".into()),
            source_ip: Some("10.0.0.5".into()),
            client_app: None,
            action: Some("R".into()),
            interaction: "read".into(),
            raw: "{\"name\":\"Ann Smith\"}".into(),
        }
    }

    #[test]
    fn an_alert_message_carries_the_schema_fields_and_no_names() {
        let m = alert_message("north", 12, Some(3), &alert(), 1_700_000_001_000);
        for k in [
            "schema",
            "site",
            "type",
            "id",
            "event_id",
            "severity",
            "score",
            "user",
            "patient",
            "recorded",
            "at",
            "explanation",
            "status",
            "case_id",
        ] {
            assert!(m.get(k).is_some(), "{k} missing in {m}");
        }
        assert_eq!(m["type"], "alert");
        assert_eq!(m["id"], 12);
        assert_eq!(m["severity"], "high");
        let s = m.to_string();
        assert!(!s.contains("Ann"), "{s}");
    }

    #[test]
    fn message_ids_are_stable_per_item_and_unique_per_change() {
        assert_eq!(msg_id("north", ItemKind::Alert, 5, 100), "north.alert.5");
        assert_eq!(msg_id("north", ItemKind::Alert, 5, 200), "north.alert.5");
        assert_ne!(
            msg_id("north", ItemKind::Case, 5, 100),
            msg_id("north", ItemKind::Case, 5, 101)
        );
        let item = Item {
            seq: 4,
            kind: ItemKind::Case,
            id: 2,
            site: "north".into(),
            severity: Some(Severity::Low),
            created_ms: 0,
            body: "{\"a\":1}".into(),
        };
        let v: Value = serde_json::from_str(&item.body_with_id()).unwrap();
        assert_eq!(v["msg_id"], "north.case.2.4");
        assert_eq!(v["a"], 1);
        let empty = Item {
            body: "{}".into(),
            ..item
        };
        let v: Value = serde_json::from_str(&empty.body_with_id()).unwrap();
        assert_eq!(v["msg_id"], "north.case.2.4");
    }

    #[test]
    fn sites_are_subject_tokens() {
        assert!(valid_site("north-1_a"));
        assert!(!valid_site("north.1"));
        assert!(!valid_site(""));
        assert!(!valid_site("a b"));
        assert_eq!(
            site_from_host("edge01.hospital.example"),
            "edge01-hospital-example"
        );
        assert!(valid_site(&site_from_host("")));
    }

    #[test]
    fn a_syslog_message_is_rfc5424_with_escaped_structured_data_and_octet_counted() {
        let body = alert_message("north", 12, Some(3), &alert(), 1_700_000_001_000);
        let mut body = body;
        body["summary"] = json!("a \"quoted\" ] summary");
        body["user"] = json!("Practitioner/\"x]");
        let item = Item {
            seq: 1,
            kind: ItemKind::Alert,
            id: 12,
            site: "north".into(),
            severity: Some(Severity::High),
            created_ms: 1_700_000_001_000,
            body: body.to_string(),
        };
        let m = syslog::format(
            &item,
            syslog::Facility::Authpriv,
            "edge 01",
            "fhir-edge",
            42,
        );
        // authpriv (10) * 8 + err (3) = 83
        assert!(
            m.starts_with("<83>1 2023-11-14T22:13:21.000Z edge01 fhir-edge 42 alert [fhir-edge@32473 schema=\"1\" site=\"north\" type=\"alert\" id=\"12\" msg_id=\"north.alert.12\""),
            "{m}"
        );
        assert!(m.contains(r#"user="Practitioner/\"x\]""#), "{m}");
        let msg = m.split_once("] {").map(|(_, r)| format!("{{{r}")).unwrap();
        let v: Value = serde_json::from_str(&msg).unwrap();
        assert_eq!(v["msg_id"], "north.alert.12");
        let framed = syslog::frame(&m);
        let (len, rest) = std::str::from_utf8(&framed)
            .unwrap()
            .split_once(' ')
            .unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), rest.len());
        assert_eq!(
            syslog::Facility::parse("local7"),
            Some(syslog::Facility::Local(7))
        );
        assert_eq!(syslog::Facility::parse("local8"), None);
        assert_eq!(syslog::Facility::parse("kern"), None);
    }
}
