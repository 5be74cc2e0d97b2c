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
//! | `title`, `narrative`, `kind`, `score`, `severity`, `status`, `resolution`, `user`, `first`, `last`, `alerts`, `episodes`, `patients`, `earlier_cases` | case | the case as `/api/cases/{id}` gives it after the change |
//! | `of`, `status`, `resolution`, `by` | status | `of`: `alert` or `case`; the decision (its free-text note is never exported) |
//!
//! No message carries a name, address or phone of anyone: users and patients are
//! references (`Practitioner/123`, `Patient/456`), explanations are built from references,
//! and the AuditEvent itself is not exported.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::alerts::{Alert, NewAlert, Severity};
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

/// The message of an alert stored earlier, as it stands now (a back-fill,
/// `Store::backfill_export`): the same fields and `msg_id` as when it was stored, with its
/// current `status`; `at` is when it was stored (`detected_ms`).
pub fn stored_alert_message(
    site: &str,
    a: &Alert,
    case_id: Option<i64>,
    (recorded_ms, detected_ms): (i64, i64),
) -> Value {
    let fields = NewAlert {
        event_key: a.event_key.clone(),
        event_id: a.event_id.clone(),
        event_version: a.event_version.clone(),
        recorded_ms,
        score: a.score,
        severity: a.severity,
        summary: a.summary.clone(),
        explanation: a.explanation.clone(),
        kinds: a.kinds.clone(),
        user: a.user.clone(),
        user_display: None,
        patient: a.patient.clone(),
        source_ip: a.source_ip.clone(),
        client_app: a.client_app.clone(),
        action: a.action.clone(),
        interaction: a.interaction.clone(),
        raw: String::new(),
        evidence: crate::alerts::Evidence::Single,
    };
    let mut m = alert_message(site, a.id, case_id, &fields, detected_ms);
    m["status"] = json!(a.status);
    m
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
        "episodes": c.episodes,
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

/// A field of a message as text, for the forms that carry fields one by one (syslog's
/// structured data, CEF's extension): `None` when absent or null; a list joined (`; `
/// between an explanation's reasons, `,` otherwise).
fn field_text(body: &Value, k: &str) -> Option<String> {
    match body.get(k)? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Array(a) => Some(
            a.iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join(if k == "explanation" { "; " } else { "," }),
        ),
        v => Some(v.to_string()),
    }
}

/// An RFC 3339 field of a message as milliseconds since the epoch (CEF's and OCSF's
/// timestamps).
fn field_millis(body: &Value, k: &str) -> Option<i64> {
    let t = chrono::DateTime::parse_from_rfc3339(body.get(k)?.as_str()?).ok()?;
    Some(t.timestamp_millis())
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
        let field = |k: &str| super::field_text(body, k);
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

    /// What a message's MSG holds (`[export.syslog] format`: `json`, `cef` or `ocsf`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum Payload {
        #[default]
        /// The JSON message, after the structured data.
        Json,
        /// The item as a CEF line ([`super::cef`]), with no structured data (`-`): one
        /// form per message, what CEF collectors expect.
        Cef,
        /// The item as an OCSF Detection Finding ([`super::ocsf`]), JSON, with no
        /// structured data (`-`).
        Ocsf,
    }

    /// One RFC 5424 message (without transport framing): `<PRI>1 TIMESTAMP HOSTNAME
    /// APP-NAME PROCID MSGID SD MSG`, MSGID the item's type; with `Payload::Json` SD the
    /// fields of `params` and MSG the JSON, with `Payload::Cef` SD `-` and MSG the CEF
    /// line, with `Payload::Ocsf` SD `-` and MSG the OCSF finding's JSON.
    pub fn format(
        item: &Item,
        facility: Facility,
        payload: Payload,
        host: &str,
        app: &str,
        pid: u32,
    ) -> String {
        let pri = u32::from(facility.code()) * 8 + u32::from(level(item.severity));
        let (sd, msg) = match payload {
            Payload::Json => {
                let body: serde_json::Value =
                    serde_json::from_str(&item.body).unwrap_or(serde_json::Value::Null);
                let sd: String = params(item, &body)
                    .into_iter()
                    .map(|(k, v)| format!(" {k}=\"{}\"", escape(&v)))
                    .collect();
                (format!("[{SD_ID}{sd}]"), item.body_with_id())
            }
            Payload::Cef => (
                "-".to_string(),
                super::cef::line(item, env!("CARGO_PKG_VERSION")),
            ),
            Payload::Ocsf => (
                "-".to_string(),
                super::ocsf::finding(item, env!("CARGO_PKG_VERSION")).to_string(),
            ),
        };
        let ts = crate::clock::from_ms(item.created_ms)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        format!(
            "<{pri}>1 {ts} {} {} {pid} {} {sd} {msg}",
            header(host, 255),
            header(app, 48),
            item.kind.as_str(),
        )
    }

    /// Octet-counting framing (RFC 6587 §3.4.1, RFC 5425 §4.3): `LEN SP MSG`.
    pub fn frame(msg: &str) -> Vec<u8> {
        let mut out = format!("{} ", msg.len()).into_bytes();
        out.extend_from_slice(msg.as_bytes());
        out
    }
}

pub mod ocsf;

/// ArcSight's Common Event Format (CEF 0), the line most SIEMs parse without a custom
/// decoder (Sentinel's `CommonSecurityLog`, QRadar, ArcSight, Splunk's and Elastic's CEF
/// parsers): `CEF:0|fhir-edge|fhir-edge|VERSION|SIGNATURE|NAME|SEVERITY|EXTENSION`, built
/// from the same JSON message as every other form, so it carries nothing the JSON does
/// not (no names: references only, never a decision's note).
///
/// | CEF | alert | case | status |
/// |---|---|---|---|
/// | signature | `alert:<strongest kind>` | `case:<kind>` | `status:<of>` |
/// | name | `summary` | `title` | "`<of>` `<id>` `<status>`" |
/// | severity | low 3, medium 5, high 8, critical 10 | the same | 1 |
/// | `rt` (ms) | `at` | `at` | `at` |
/// | `externalId` | `msg_id` | `msg_id` | `msg_id` |
/// | `cs1` site, `cn2` id | ✓ | ✓ | ✓ |
/// | `suser` | `user` | `user` | `by` |
/// | `cs2` patient, `cs3` event_id, `cn1` case_id, `src`, `requestClientApplication`, `start` (`recorded`) | ✓ | | |
/// | `cfp1` score, `cat` kinds / kind, `act` status, `msg` explanation / narrative | ✓ | ✓ | `act` |
/// | `outcome` resolution | | ✓ | ✓ |
/// | `start`, `end` (`first`, `last`), `cnt` alerts, `cn3` patients | | ✓ | |
pub mod cef {
    use serde_json::Value;

    use super::{Item, ItemKind};
    use crate::alerts::Severity;

    /// A header field: `\` and `|` escaped, line breaks as spaces.
    fn header(v: &str) -> String {
        let mut out = String::with_capacity(v.len());
        for c in v.chars() {
            match c {
                '\\' | '|' => {
                    out.push('\\');
                    out.push(c);
                }
                '\r' | '\n' => out.push(' '),
                _ => out.push(c),
            }
        }
        out
    }

    /// An extension value: `\` and `=` escaped, line breaks as `\n` and `\r`.
    fn value(v: &str) -> String {
        let mut out = String::with_capacity(v.len());
        for c in v.chars() {
            match c {
                '\\' | '=' => {
                    out.push('\\');
                    out.push(c);
                }
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                _ => out.push(c),
            }
        }
        out
    }

    /// CEF severity (0–10) of an item's severity; a decision carries none and is 1.
    pub fn severity(s: Option<Severity>) -> u8 {
        match s {
            Some(Severity::Critical) => 10,
            Some(Severity::High) => 8,
            Some(Severity::Medium) => 5,
            Some(Severity::Low) => 3,
            None => 1,
        }
    }

    /// An RFC 3339 field as milliseconds since the epoch (CEF's timestamps), as text.
    fn millis(body: &Value, k: &str) -> Option<String> {
        super::field_millis(body, k).map(|t| t.to_string())
    }

    /// The CEF line of an item (no syslog header), `version` the product's.
    pub fn line(item: &Item, version: &str) -> String {
        let body: Value = serde_json::from_str(&item.body).unwrap_or(Value::Null);
        let get = |k: &str| super::field_text(&body, k);
        let (signature, name) = match item.kind {
            ItemKind::Alert => {
                let kind = body["kinds"].get(0).and_then(Value::as_str);
                (
                    format!("alert:{}", kind.unwrap_or("unusual_pattern")),
                    get("summary").unwrap_or_default(),
                )
            }
            ItemKind::Case => (
                format!("case:{}", get("kind").unwrap_or_default()),
                get("title").unwrap_or_default(),
            ),
            ItemKind::Status => {
                let of = get("of").unwrap_or_default();
                let name = format!("{of} {} {}", item.id, get("status").unwrap_or_default());
                (format!("status:{of}"), name)
            }
        };
        let mut ext: Vec<(&str, Option<String>)> = vec![
            (
                "rt",
                millis(&body, "at").or_else(|| Some(item.created_ms.to_string())),
            ),
            ("externalId", Some(item.msg_id())),
            ("cs1Label", Some("site".into())),
            ("cs1", Some(item.site.clone())),
            ("cn2Label", Some("id".into())),
            ("cn2", Some(item.id.to_string())),
        ];
        match item.kind {
            ItemKind::Alert => ext.extend([
                ("suser", get("user")),
                ("cs2Label", Some("patient".into())),
                ("cs2", get("patient")),
                ("cs3Label", Some("event_id".into())),
                ("cs3", get("event_id")),
                ("cn1Label", Some("case_id".into())),
                ("cn1", get("case_id")),
                // `src` must be an address; anything else a server wrote stays in the JSON.
                (
                    "src",
                    get("source_ip").filter(|a| a.parse::<std::net::IpAddr>().is_ok()),
                ),
                ("requestClientApplication", get("client_app")),
                ("start", millis(&body, "recorded")),
                ("cfp1Label", Some("score".into())),
                ("cfp1", get("score")),
                ("cat", get("kinds")),
                ("act", get("status")),
                ("msg", get("explanation")),
            ]),
            ItemKind::Case => ext.extend([
                ("suser", get("user")),
                ("start", millis(&body, "first")),
                ("end", millis(&body, "last")),
                ("cnt", get("alerts")),
                ("cn3Label", Some("patients".into())),
                ("cn3", get("patients")),
                ("cfp1Label", Some("score".into())),
                ("cfp1", get("score")),
                ("cat", get("kind")),
                ("act", get("status")),
                ("outcome", get("resolution")),
                ("msg", get("narrative")),
            ]),
            ItemKind::Status => ext.extend([
                ("suser", get("by")),
                ("act", get("status")),
                ("outcome", get("resolution")),
            ]),
        }
        // A label goes out only with its value.
        let present: Vec<(&str, String)> = ext
            .iter()
            .filter(|(k, v)| {
                v.is_some()
                    && k.strip_suffix("Label")
                        .is_none_or(|base| ext.iter().any(|(k2, v2)| *k2 == base && v2.is_some()))
            })
            .map(|(k, v)| (*k, v.clone().unwrap_or_default()))
            .collect();
        let extension: Vec<String> = present
            .into_iter()
            .map(|(k, v)| format!("{k}={}", value(&v)))
            .collect();
        format!(
            "CEF:0|fhir-edge|fhir-edge|{}|{}|{}|{}|{}",
            header(version),
            header(&signature),
            header(&name),
            severity(item.severity),
            extension.join(" ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn alert() -> NewAlert {
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
            evidence: crate::alerts::Evidence::Single,
        }
    }

    /// An outbox item of site `north` holding `body`.
    pub(super) fn outbox_item(
        seq: i64,
        kind: ItemKind,
        id: i64,
        severity: Option<Severity>,
        body: &Value,
    ) -> Item {
        Item {
            seq,
            kind,
            id,
            site: "north".into(),
            severity,
            created_ms: 1_700_000_001_000,
            body: body.to_string(),
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
        let item = outbox_item(1, ItemKind::Alert, 12, Some(Severity::High), &body);
        let m = syslog::format(
            &item,
            syslog::Facility::Authpriv,
            syslog::Payload::Json,
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
    /// Splits a CEF line into its seven header fields (unescaping `\|`) and its
    /// extension's key=value pairs (unescaping `\=`, `\\`, `\n`), as a collector does.
    fn parse_cef(line: &str) -> (Vec<String>, Vec<(String, String)>) {
        let mut head = Vec::new();
        let mut cur = String::new();
        let mut chars = line.chars();
        while head.len() < 7 {
            match chars.next() {
                Some('\\') => cur.push(chars.next().unwrap()),
                Some('|') => head.push(std::mem::take(&mut cur)),
                Some(c) => cur.push(c),
                None => panic!("short header: {line}"),
            }
        }
        let ext: String = chars.collect();
        // Keys are the words before an unescaped `=`; a value runs to the next key.
        let mut pairs: Vec<(String, String)> = Vec::new();
        let (mut word, mut esc) = (String::new(), false);
        for c in ext.chars() {
            match (esc, c) {
                (true, 'n') => (word.push('\n'), esc = false).1,
                (true, c) => (word.push(c), esc = false).1,
                (false, '\\') => esc = true,
                (false, '=') => {
                    let (value, key) = match word.rsplit_once(' ') {
                        Some((v, k)) => (v.to_string(), k.to_string()),
                        None => (String::new(), word.clone()),
                    };
                    if let Some(last) = pairs.last_mut() {
                        last.1 = value;
                    }
                    pairs.push((key, String::new()));
                    word.clear();
                }
                (false, c) => word.push(c),
            }
        }
        if let Some(last) = pairs.last_mut() {
            last.1 = word;
        }
        (head, pairs)
    }

    #[test]
    fn a_cef_line_carries_each_item_escaped_and_no_names() {
        let mut a = alert();
        a.summary = "a|b \\ c".into();
        a.explanation = vec!["x=1".into(), "two\nlines".into()];
        a.kinds = vec![crate::alerts::AlertKind::FamilySnooping];
        a.source_ip = Some("not an address".into());
        let body = alert_message("north", 12, None, &a, 1_700_000_001_000);
        let item = outbox_item(1, ItemKind::Alert, 12, Some(Severity::High), &body);
        let line = cef::line(&item, "0.1.0");
        assert!(!line.contains("Ann") && !line.contains('\n'), "{line}");
        let (head, ext) = parse_cef(&line);
        assert_eq!(
            head,
            [
                "CEF:0",
                "fhir-edge",
                "fhir-edge",
                "0.1.0",
                "alert:family_snooping",
                "a|b \\ c",
                "8"
            ]
        );
        let get = |k: &str| ext.iter().find(|(k2, _)| k2 == k).map(|(_, v)| v.as_str());
        assert_eq!(get("externalId"), Some("north.alert.12"));
        assert_eq!(get("rt"), Some("1700000001000"));
        assert_eq!(get("start"), Some("1700000000000"));
        assert_eq!(get("suser"), Some("Practitioner/7"));
        assert_eq!(
            (get("cs2Label"), get("cs2")),
            (Some("patient"), Some("Patient/9"))
        );
        assert_eq!(get("cfp1"), Some("3.5"));
        assert_eq!(get("msg"), Some("x=1; two\nlines"));
        assert_eq!(get("cat"), Some("family_snooping"));
        // No case yet: neither the value nor its label; a non-address is not `src`.
        assert_eq!(
            (get("cn1"), get("cn1Label"), get("src")),
            (None, None, None)
        );

        // A case: its span, size, narrative and resolution.
        let body = json!({
            "schema": 1, "site": "north", "type": "case", "id": 4,
            "at": "2023-11-14T22:13:21.000Z", "title": "looked up a relative",
            "narrative": "one event", "kind": "family_snooping", "score": 2.0,
            "severity": "medium", "status": "closed", "resolution": "inappropriate",
            "user": "Practitioner/7", "first": "2023-11-14T22:00:00Z",
            "last": "2023-11-14T22:10:00Z", "alerts": 3, "patients": 1, "earlier_cases": 0,
        });
        let case = outbox_item(2, ItemKind::Case, 4, Some(Severity::Medium), &body);
        let (head, ext) = parse_cef(&cef::line(&case, "0.1.0"));
        assert_eq!(
            &head[4..],
            ["case:family_snooping", "looked up a relative", "5"]
        );
        let get = |k: &str| ext.iter().find(|(k2, _)| k2 == k).map(|(_, v)| v.as_str());
        assert_eq!(get("externalId"), Some("north.case.4.2"));
        assert_eq!(
            (get("start"), get("end")),
            (Some("1699999200000"), Some("1699999800000"))
        );
        assert_eq!((get("cnt"), get("cn3")), (Some("3"), Some("1")));
        assert_eq!(
            (get("act"), get("outcome")),
            (Some("closed"), Some("inappropriate"))
        );

        // A decision: who, what; never its note.
        let body = status_message(
            "north",
            ItemKind::Case,
            4,
            "closed",
            Some("appropriate"),
            Some("po-1"),
            0,
        );
        let status = outbox_item(3, ItemKind::Status, 4, None, &body);
        let (head, ext) = parse_cef(&cef::line(&status, "0.1.0"));
        assert_eq!(&head[4..], ["status:case", "case 4 closed", "1"]);
        assert!(ext.contains(&("suser".into(), "po-1".into())), "{ext:?}");
        assert!(
            ext.contains(&("outcome".into(), "appropriate".into())),
            "{ext:?}"
        );

        // In syslog: no structured data, the line as MSG.
        let m = syslog::format(
            &item,
            syslog::Facility::Authpriv,
            syslog::Payload::Cef,
            "edge",
            "fhir-edge",
            1,
        );
        assert!(
            m.starts_with("<83>1 2023-11-14T22:13:21.000Z edge fhir-edge 1 alert - CEF:0|"),
            "{m}"
        );
    }
}
