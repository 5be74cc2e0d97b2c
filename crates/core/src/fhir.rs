//! FHIR R4 AuditEvent and Bundle reading: only the fields fhir-edge needs, typed, tolerant
//! of missing fields, extra agents and R5-style names.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// Why a body or an entry could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("body is not JSON (starts with {0:?})")]
    NotJson(String),
    #[error("body is truncated JSON: {0}")]
    Truncated(String),
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    #[error("server returned an OperationOutcome: {0}")]
    OperationOutcome(String),
    #[error("expected resourceType {expected}, got {got}")]
    WrongResourceType { expected: String, got: String },
    #[error("entry {id} is not a valid AuditEvent: {reason}")]
    BadEntry { id: String, reason: String },
}

impl ParseError {
    pub fn kind(&self) -> &'static str {
        match self {
            ParseError::NotJson(_) => "non_json_body",
            ParseError::Truncated(_) => "truncated_body",
            ParseError::InvalidJson(_) => "invalid_json",
            ParseError::OperationOutcome(_) => "operation_outcome",
            ParseError::WrongResourceType { .. } => "wrong_resource_type",
            ParseError::BadEntry { .. } => "bad_entry",
        }
    }
}

/// A JSON string borrowed from the page body when it has no escapes (almost always), owned
/// otherwise: reading an event allocates only for what the record keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Text<'a>(pub Cow<'a, str>);

impl<'a> Text<'a> {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'a> From<&'a str> for Text<'a> {
    fn from(s: &'a str) -> Self {
        Text(Cow::Borrowed(s))
    }
}

impl From<String> for Text<'_> {
    fn from(s: String) -> Self {
        Text(Cow::Owned(s))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

fn owned(t: &Option<Text>) -> Option<String> {
    t.as_deref().map(str::to_string)
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(default)]
pub struct Coding<'a> {
    #[serde(borrow)]
    pub system: Option<Text<'a>>,
    #[serde(borrow)]
    pub code: Option<Text<'a>>,
    #[serde(borrow)]
    pub display: Option<Text<'a>>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(default)]
pub struct CodeableConcept<'a> {
    #[serde(borrow)]
    pub coding: Vec<Coding<'a>>,
    #[serde(borrow)]
    pub text: Option<Text<'a>>,
}

impl CodeableConcept<'_> {
    fn first_code(&self) -> Option<&str> {
        self.coding.iter().find_map(|c| c.code.as_deref())
    }
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(default)]
pub struct Identifier<'a> {
    #[serde(borrow)]
    pub system: Option<Text<'a>>,
    #[serde(borrow)]
    pub value: Option<Text<'a>>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(default)]
pub struct Reference<'a> {
    #[serde(borrow)]
    pub reference: Option<Text<'a>>,
    #[serde(borrow)]
    pub display: Option<Text<'a>>,
    #[serde(borrow)]
    pub identifier: Option<Identifier<'a>>,
    #[serde(rename = "type", borrow)]
    pub type_: Option<Text<'a>>,
}

impl Reference<'_> {
    /// A stable reference string: `reference`, else `identifier` (`system|value`).
    fn stable(&self) -> Option<String> {
        if let Some(r) = &self.reference {
            return Some(r.to_string());
        }
        let id = self.identifier.as_ref()?;
        let v = id.value.as_deref()?;
        Some(match &id.system {
            Some(s) => format!("{}|{v}", s.as_str()),
            None => v.to_string(),
        })
    }
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(default)]
pub struct Network<'a> {
    #[serde(borrow)]
    pub address: Option<Text<'a>>,
    #[serde(rename = "type", borrow)]
    pub type_: Option<Text<'a>>,
}

/// `type` is a CodeableConcept in R4 agents, `role` a list of them.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(default, rename_all = "camelCase")]
pub struct Agent<'a> {
    #[serde(rename = "type", borrow)]
    pub type_: Option<CodeableConcept<'a>>,
    #[serde(borrow)]
    pub role: Vec<CodeableConcept<'a>>,
    #[serde(borrow)]
    pub who: Option<Reference<'a>>,
    #[serde(borrow)]
    pub alt_id: Option<Text<'a>>,
    #[serde(borrow)]
    pub name: Option<Text<'a>>,
    pub requestor: Option<bool>,
    #[serde(borrow)]
    pub location: Option<Reference<'a>>,
    #[serde(borrow)]
    pub network: Option<Network<'a>>,
    /// R5: `network[x]`
    #[serde(borrow)]
    pub network_string: Option<Text<'a>>,
    #[serde(borrow)]
    pub network_uri: Option<Text<'a>>,
    #[serde(borrow)]
    pub purpose_of_use: Vec<CodeableConcept<'a>>,
}

impl Agent<'_> {
    fn type_code(&self) -> Option<&str> {
        self.type_.as_ref().and_then(|t| t.first_code())
    }
    fn address(&self) -> Option<&str> {
        self.network
            .as_ref()
            .and_then(|n| n.address.as_deref())
            .or(self.network_string.as_deref())
            .or(self.network_uri.as_deref())
    }
    fn display(&self) -> Option<&str> {
        self.who
            .as_ref()
            .and_then(|w| w.display.as_deref())
            .or(self.name.as_deref())
    }
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(default)]
pub struct EntityDetail<'a> {
    #[serde(rename = "type", borrow)]
    pub type_: Option<Text<'a>>,
    #[serde(rename = "valueString", borrow)]
    pub value_string: Option<Text<'a>>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(default)]
pub struct Entity<'a> {
    #[serde(borrow)]
    pub what: Option<Reference<'a>>,
    #[serde(rename = "type", borrow)]
    pub type_: Option<Coding<'a>>,
    #[serde(borrow)]
    pub role: Option<CodingOrConcept<'a>>,
    #[serde(borrow)]
    pub name: Option<Text<'a>>,
    #[serde(borrow)]
    pub description: Option<Text<'a>>,
    #[serde(borrow)]
    pub query: Option<Text<'a>>,
    #[serde(borrow)]
    pub detail: Vec<EntityDetail<'a>>,
    /// R4 Codings, R5 CodeableConcepts.
    #[serde(rename = "securityLabel", borrow)]
    pub security_label: Vec<CodingOrConcept<'a>>,
}

/// R4 uses Coding where R5 uses CodeableConcept: one object type reads both (a Coding's
/// `code`, or a CodeableConcept's `coding`), without buffering as an untagged enum would.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(default)]
pub struct CodingOrConcept<'a> {
    #[serde(borrow)]
    pub code: Option<Text<'a>>,
    #[serde(borrow)]
    pub system: Option<Text<'a>>,
    #[serde(borrow)]
    pub coding: Vec<Coding<'a>>,
}

impl CodingOrConcept<'_> {
    /// The Coding's own code, else the CodeableConcept's first.
    fn code(&self) -> Option<&str> {
        self.codes().next()
    }

    /// Every code, a Coding's own or a CodeableConcept's.
    fn codes(&self) -> impl Iterator<Item = &str> {
        self.code
            .as_deref()
            .into_iter()
            .chain(self.coding.iter().filter_map(|c| c.code.as_deref()))
    }
}

/// Security labels that mark a record as watched: confidentiality restricted (`R`) or very
/// restricted (`V`), and the celebrity (`CEL`, `VIP`) and employee (`EMP`) sensitivity
/// policies of HL7 v3 ActCode; on an AuditEvent's entity, or in a Patient resource's
/// `meta.security` (`care::resources::marked`).
pub const WATCHED_LABELS: &[&str] = &["R", "V", "CEL", "VIP", "EMP"];

/// The purpose of use that breaks the glass (HL7 v3 ActReason `BTG`): a user overriding
/// the access control of a record restricted to them, as IHE BALP and HL7's security
/// labels write it in `purposeOfEvent`, `authorization` or the user agent's
/// `purposeOfUse`. Such an access is to a restricted record (`AuditRecord::restricted`).
pub const BREAK_THE_GLASS: &str = "BTG";

/// R4 `outcome` is a code ("0", "4", "8", "12"); R5 is an object with `code` (a Coding).
#[derive(Debug, Clone, Default)]
pub struct Outcome<'a> {
    /// The R4 code, or the R5 `code.code`.
    pub code: Option<Text<'a>>,
    pub r5: bool,
}

impl<'de: 'a, 'a> Deserialize<'de> for Outcome<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Outcome<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an outcome code or an R5 outcome object")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Outcome {
                    code: Some(v.into()),
                    r5: false,
                })
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Outcome {
                    code: Some(v.to_owned().into()),
                    r5: false,
                })
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                // A number where a code belongs: read it as the code it spells.
                Ok(Outcome {
                    code: Some(v.to_string().into()),
                    r5: false,
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut code = None;
                while let Some(k) = map.next_key::<Text<'de>>()? {
                    if k.as_str() == "code" {
                        let c: Option<Coding<'de>> = map.next_value()?;
                        code = c.and_then(|c| c.code);
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(Outcome { code, r5: true })
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(default, rename_all = "camelCase")]
pub struct Meta<'a> {
    #[serde(borrow)]
    pub version_id: Option<Text<'a>>,
    #[serde(borrow)]
    pub last_updated: Option<Text<'a>>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(default)]
pub struct AuditSource<'a> {
    #[serde(borrow)]
    pub site: Option<Text<'a>>,
    #[serde(borrow)]
    pub observer: Option<Reference<'a>>,
}

/// The subset of an AuditEvent fhir-edge reads, borrowing from the JSON text.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(default, rename_all = "camelCase")]
pub struct AuditEvent<'a> {
    #[serde(borrow)]
    pub resource_type: Text<'a>,
    #[serde(borrow)]
    pub id: Option<Text<'a>>,
    #[serde(borrow)]
    pub meta: Option<Meta<'a>>,
    #[serde(rename = "type", borrow)]
    pub type_: Option<CodingOrConcept<'a>>,
    #[serde(borrow)]
    pub subtype: Vec<Coding<'a>>,
    /// R5 names.
    #[serde(borrow)]
    pub category: Vec<CodeableConcept<'a>>,
    #[serde(borrow)]
    pub code: Option<CodeableConcept<'a>>,
    #[serde(borrow)]
    pub action: Option<Text<'a>>,
    #[serde(borrow)]
    pub recorded: Option<Text<'a>>,
    #[serde(borrow)]
    pub outcome: Option<Outcome<'a>>,
    #[serde(borrow)]
    pub purpose_of_event: Vec<CodeableConcept<'a>>,
    #[serde(borrow)]
    pub authorization: Vec<CodeableConcept<'a>>,
    #[serde(borrow)]
    pub agent: Vec<Agent<'a>>,
    #[serde(borrow)]
    pub source: Option<AuditSource<'a>>,
    #[serde(borrow)]
    pub entity: Vec<Entity<'a>>,
}

/// The kind of access, normalised from `type`/`subtype`/`action`/query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Interaction {
    Read,
    Search,
    Create,
    Update,
    Delete,
    Export,
    Login,
    Logout,
    Other,
}

impl Interaction {
    pub fn as_str(self) -> &'static str {
        match self {
            Interaction::Read => "read",
            Interaction::Search => "search",
            Interaction::Create => "create",
            Interaction::Update => "update",
            Interaction::Delete => "delete",
            Interaction::Export => "export",
            Interaction::Login => "login",
            Interaction::Logout => "logout",
            Interaction::Other => "other",
        }
    }
}

/// What a search asked for, from the base64 `entity.query` (or a description holding it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryInfo {
    /// `_count`: records asked for per page.
    pub count: Option<u32>,
    /// A bulk data export (`$export` at system, Patient or Group level).
    pub export: bool,
    /// A type-level Patient search that returns people's demographics wholesale: nothing
    /// narrows it to a person (no `_id`, identifier, name, telecom…), or its `_elements`
    /// ask for names, addresses, telecom, birth dates or identifiers.
    pub patient_sweep: bool,
    /// A page beyond the first (`_offset`, `_getpagesoffset`, `page`, `_page` above 0).
    pub later_page: bool,
    /// The search is about one patient (`patient=`, `subject=`, a Patient `_id`, or a
    /// Patient compartment path): an event naming a patient is that patient's record. A
    /// search that is not, written once per patient in its results (HAPI), only *lists*
    /// those patients.
    pub patient_scoped: bool,
    /// The one patient the query names (`patient=123`, `subject=Patient/123`, a Patient
    /// `_id`, a `Patient/123/...` path), as `Patient/123`: the patient of an event whose
    /// server names no patient entity for a search (Medplum writes only the query).
    pub patient: Option<String>,
}

/// Search parameters that narrow a Patient search to a person.
const NARROWING: &[&str] = &[
    "_id",
    "identifier",
    "name",
    "family",
    "given",
    "phone",
    "email",
    "telecom",
    "_has",
    "link",
    "_content",
    "_text",
];
/// `_elements` that are a person's demographics.
const DEMOGRAPHICS: &[&str] = &["name", "address", "telecom", "birthDate", "identifier"];

/// De-duplication key: id + versionId, or id + lastUpdated when there is no versionId.
pub fn event_key(id: &str, version: Option<&str>, last_updated: Option<&str>) -> String {
    match (version, last_updated) {
        (Some(v), _) => format!("{id}|v{v}"),
        (None, Some(lu)) => format!("{id}|t{lu}"),
        (None, None) => format!("{id}|"),
    }
}

/// One AuditEvent, normalised for detection and alerting. References only in logs.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub key: String,
    pub id: String,
    pub version_id: Option<String>,
    /// Server `meta.lastUpdated`: drives the cursor.
    pub last_updated: Option<DateTime<Utc>>,
    /// `recorded`: drives behaviour features.
    pub recorded: DateTime<Utc>,
    pub interaction: Interaction,
    pub action: Option<char>,
    /// 0 success, 4 minor, 8 serious, 12 major failure.
    pub outcome: u8,
    pub user: Option<String>,
    /// Display name of the user (for same-surname checks; never logged).
    pub user_display: Option<String>,
    pub department: Option<String>,
    pub client_app: Option<String>,
    pub source_ip: Option<String>,
    pub patient: Option<String>,
    /// Display name of the patient (for same-surname checks; never logged).
    pub patient_display: Option<String>,
    /// An entity (the patient, or the data object read) carries a restricted, celebrity or
    /// employee security label, or the user broke the glass to open it
    /// ([`BREAK_THE_GLASS`]).
    pub restricted: bool,
    pub purpose: Option<String>,
    pub observer: Option<String>,
    pub query: Option<QueryInfo>,
    /// The server's request id (IHE BALP's `XrequestId` entity): events of one request
    /// share it, as HAPI writes a search once per patient in its results.
    pub request_id: Option<String>,
}

impl AuditRecord {
    /// The time the event's seen-key is filed under (`state::SeenKey`): its
    /// `meta.lastUpdated`, or `recorded` when the server gives none. Fixed for one version
    /// of one event, so a re-read finds the key where it was filed.
    pub fn seen_at_ms(&self) -> i64 {
        self.last_updated
            .unwrap_or(self.recorded)
            .timestamp_millis()
    }
}

/// What an AuditEvent may say of people in words, removed before it is stored: names,
/// addresses, phones and e-mail, birth dates, narrative, contained resources, free-text
/// details, and the display of a reference to someone (an agent's `who`, an entity's
/// `what`). What remains (references, codes, times, departments, addresses of machines) is
/// what the alert needs; the people are looked up in the EHR by reference.
const PEOPLE_KEYS: &[&str] = &[
    "name",
    "address",
    "telecom",
    "birthDate",
    "text",
    "contained",
    "detail",
];

/// References whose `display` names a person.
const PERSON_REFERENCES: &[&str] = &[
    "who",
    "what",
    "patient",
    "subject",
    "individual",
    "member",
    "actor",
];

/// The AuditEvent `raw` without anything that names, locates or reaches a person
/// (`PEOPLE_KEYS` at any depth, the display of `PERSON_REFERENCES`), as it is kept with an
/// alert. An event that is not JSON is kept as `{}`.
pub fn without_people(raw: &str) -> String {
    // `network.address` is a machine's; every other `address` a person's.
    fn strip(v: &mut serde_json::Value, parent: &str) {
        match v {
            serde_json::Value::Object(m) => {
                m.retain(|k, _| {
                    let person = PEOPLE_KEYS.contains(&k.as_str())
                        && !(parent == "network" && k == "address");
                    let named = k == "display" && PERSON_REFERENCES.contains(&parent);
                    !(person || named)
                });
                for (k, v) in m.iter_mut() {
                    strip(v, k);
                }
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(|v| strip(v, parent)),
            _ => {}
        }
    }
    match serde_json::from_str::<serde_json::Value>(raw) {
        Ok(mut v) => {
            strip(&mut v, "");
            v.to_string()
        }
        Err(_) => "{}".into(),
    }
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
        .or_else(|| {
            // FHIR allows partial dates in `recorded` only as instants; accept a bare date too.
            chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| t.and_utc())
        })
}

/// `entity.query` is base64 in FHIR; Medplum writes the search as plain text, read as it is
/// when it looks like one (`Patient?name=x`).
fn decode_query(q: &str) -> Option<String> {
    let q = q.trim();
    let plain = || (q.contains('?') || q.contains('$')).then(|| q.to_string());
    let Ok(bytes) = base64::engine::general_purpose::STANDARD
        .decode(q)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(q))
    else {
        return plain();
    };
    String::from_utf8(bytes).ok().or_else(plain)
}

/// Read a search line (`GET /Patient?name=x&_count=50`, a bare path with query, or a URL).
pub fn query_info(text: &str) -> QueryInfo {
    let line = text.lines().next().unwrap_or("");
    let export = line.contains("$export") || line.contains("%24export");
    // The request target: the last whitespace-separated word holding a path.
    let target = line
        .split_whitespace()
        .rev()
        .find(|w| w.contains('/') || w.contains('?'))
        .unwrap_or(line);
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let params: Vec<(&str, &str)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    let value = |name: &str| params.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
    let count = value("_count").and_then(|v| v.parse().ok());
    // `Patient` as the last path segment: a type-level search, not `Patient/123`.
    let patient_type = path.trim_end_matches('/').rsplit('/').next() == Some("Patient");
    let narrowed = params.iter().any(|(k, _)| {
        let base = k.split([':', '.']).next().unwrap_or(k);
        NARROWING.contains(&base)
    });
    // Medplum names `_elements` `_fields`.
    let demographics = value("_elements")
        .or_else(|| value("_fields"))
        .is_some_and(|v| {
            v.split([',', '%'])
                .any(|e| DEMOGRAPHICS.iter().any(|d| e.eq_ignore_ascii_case(d)))
        });
    let patient_scoped = params.iter().any(|(k, _)| {
        let base = k.split([':', '.']).next().unwrap_or(k);
        matches!(base, "patient" | "subject") || (patient_type && base == "_id")
    }) || path.contains("Patient/");
    // One patient named outright (no modifier, no list of several).
    let one = |v: &str| {
        let id = v.strip_prefix("Patient/").unwrap_or(v);
        (!id.is_empty() && !id.contains([',', '/', '%', '$'])).then(|| format!("Patient/{id}"))
    };
    let patient = value("patient")
        .and_then(one)
        .or_else(|| {
            value("subject")
                .filter(|v| v.starts_with("Patient/"))
                .and_then(one)
        })
        .or_else(|| value("_id").filter(|_| patient_type).and_then(one))
        .or_else(|| {
            let mut segs = path.split('/');
            segs.find(|s| *s == "Patient")?;
            segs.next()
                .filter(|s| !s.starts_with(['$', '_']))
                .and_then(one)
        });
    let later_page = ["_offset", "_getpagesoffset", "page", "_page"]
        .iter()
        .filter_map(|p| value(p))
        .any(|v| v.parse::<u64>().is_ok_and(|n| n > 0));
    QueryInfo {
        count,
        export,
        patient_sweep: patient_type
            && !export
            && (!narrowed || (demographics && count.is_some_and(|c| c >= 100))),
        later_page,
        patient_scoped,
        patient,
    }
}

fn is_patient_ref(r: &str) -> bool {
    r.starts_with("Patient/") || r.contains("/Patient/")
}

impl AuditEvent<'_> {
    /// Normalise. Fails only when the event cannot be keyed or placed in time.
    pub fn into_record(self) -> Result<AuditRecord, String> {
        if self.resource_type.as_str() != "AuditEvent" {
            return Err(format!("resourceType is {:?}", self.resource_type.as_str()));
        }
        let id = self.id.as_deref().ok_or("missing id")?.to_string();
        let meta = self.meta.clone().unwrap_or_default();
        let last_updated = match &meta.last_updated {
            Some(s) => Some(parse_time(s).ok_or("meta.lastUpdated is not an instant")?),
            None => None,
        };
        let recorded = match &self.recorded {
            Some(s) => parse_time(s).ok_or("recorded is not an instant")?,
            None => last_updated.ok_or("missing recorded and meta.lastUpdated")?,
        };
        let key = event_key(
            &id,
            meta.version_id.as_deref(),
            meta.last_updated.as_deref(),
        );

        let type_code = self
            .type_
            .as_ref()
            .and_then(|t| t.code())
            .or_else(|| self.category.iter().find_map(|c| c.first_code()))
            .unwrap_or("");
        let subtypes: Vec<&str> = self
            .subtype
            .iter()
            .filter_map(|c| c.code.as_deref())
            .chain(
                self.code
                    .iter()
                    .flat_map(|c| c.coding.iter().filter_map(|c| c.code.as_deref())),
            )
            .collect();

        let query = self
            .entity
            .iter()
            .find_map(|e| e.query.as_deref().and_then(decode_query))
            .map(|q| query_info(&q))
            .or_else(|| {
                self.entity
                    .iter()
                    .find_map(|e| {
                        e.description
                            .as_deref()
                            .filter(|d| d.contains('?') || d.contains("$export"))
                    })
                    .map(query_info)
            });
        let request_id = self
            .entity
            .iter()
            .filter(|e| e.type_.as_ref().and_then(|t| t.code.as_deref()) == Some("XrequestId"))
            .find_map(|e| e.what.as_ref()?.identifier.as_ref()?.value.as_deref())
            .map(str::to_string);
        let action = self.action.as_deref().and_then(|a| a.chars().next());
        let has = |c: &str| subtypes.contains(&c);
        // Logins: DICOM 110122 (BALP, Medplum), or Aidbox's own `user-login` type.
        let interaction = if has("110122") || type_code == "110122" || type_code == "user-login" {
            Interaction::Login
        } else if has("110123") || type_code == "user-logout" {
            Interaction::Logout
        } else if query.as_ref().is_some_and(|q| q.export) || has("export") || has("$export") {
            Interaction::Export
        } else if has("read") || has("vread") || has("history-instance") {
            Interaction::Read
        } else if subtypes.iter().any(|s| s.starts_with("search")) {
            Interaction::Search
        } else if has("create") {
            Interaction::Create
        } else if has("update") || has("patch") {
            Interaction::Update
        } else if has("delete") {
            Interaction::Delete
        } else if type_code == "110114" {
            Interaction::Login
        } else {
            match action {
                Some('R') => Interaction::Read,
                Some('E') if query.is_some() => Interaction::Search,
                Some('C') => Interaction::Create,
                Some('U') => Interaction::Update,
                Some('D') => Interaction::Delete,
                _ => Interaction::Other,
            }
        };
        let outcome = match &self.outcome {
            Some(Outcome { code, r5: false }) => {
                code.as_deref().and_then(|c| c.parse().ok()).unwrap_or(0)
            }
            Some(Outcome { code, r5: true }) => match code.as_deref() {
                Some("success") | Some("0") | None => 0,
                Some("minor") | Some("4") => 4,
                Some("major") | Some("12") | Some("fatal") => 12,
                _ => 8,
            },
            None => 0,
        };

        // The user is the requestor agent, wherever it sits in the list.
        let user_agent = self.agent.iter().find(|a| a.requestor == Some(true));
        let user = user_agent.and_then(|a| {
            a.who
                .as_ref()
                .and_then(Reference::stable)
                .or_else(|| owned(&a.alt_id))
                .or_else(|| a.display().map(str::to_string))
        });
        let user_display = user_agent.and_then(|a| a.display().map(str::to_string));
        let department = user_agent.and_then(|a| {
            a.location
                .as_ref()
                .and_then(|l| owned(&l.display).or_else(|| owned(&l.reference)))
                .or_else(|| {
                    a.role.iter().find_map(|r| {
                        r.coding
                            .iter()
                            .find(|c| {
                                c.system
                                    .as_deref()
                                    .is_some_and(|s| s.contains("department"))
                            })
                            .and_then(|c| owned(&c.code).or_else(|| owned(&c.display)))
                    })
                })
        });
        // The client application, from the non-requestor agents: the Application (110150),
        // else the request's source side (110153 "Source Role ID", as IHE BALP and HAPI
        // write the client), else any Device that is not the destination (110152, the
        // server itself), else any other non-requestor agent with an address; named by
        // reference or identifier, else by display.
        let not_requestor = || self.agent.iter().filter(|a| a.requestor != Some(true));
        let client_agent = not_requestor()
            .find(|a| a.type_code() == Some("110150"))
            .or_else(|| not_requestor().find(|a| a.type_code() == Some("110153")))
            .or_else(|| {
                not_requestor().find(|a| {
                    a.type_code() != Some("110152")
                        && a.who
                            .as_ref()
                            .and_then(|w| w.reference.as_deref())
                            .is_some_and(|r| r.starts_with("Device/"))
                })
            })
            .or_else(|| {
                // Else a non-requestor agent that is not the server and says where the
                // request came from (Firely's client agent: an identifier and an address).
                not_requestor().find(|a| {
                    a.type_code() != Some("110152") && a.who.is_some() && a.address().is_some()
                })
            });
        // A reference or identifier names the client for good; a display only when it is
        // not just the client's address (HAPI writes the address there).
        let client_app = client_agent.and_then(|a| {
            let address = a.network.as_ref().and_then(|n| n.address.as_deref());
            a.who
                .as_ref()
                .and_then(|w| {
                    w.stable()
                        .or_else(|| owned(&w.display).filter(|d| Some(d.as_str()) != address))
                })
                .or_else(|| owned(&a.name))
        });
        let source_ip = user_agent
            .and_then(Agent::address)
            .or_else(|| {
                // Otherwise the network address of the source (client) side.
                self.agent
                    .iter()
                    .filter(|a| a.requestor != Some(true))
                    .find(|a| {
                        a.type_code() == Some("110153")
                            && a.network
                                .as_ref()
                                .is_some_and(|n| n.type_.as_deref() != Some("5"))
                    })
                    .and_then(Agent::address)
            })
            // Else the client agent's, when it carries one that is not a URI (Firely).
            .or_else(|| {
                client_agent
                    .filter(|a| {
                        a.network
                            .as_ref()
                            .is_some_and(|n| n.type_.as_deref() != Some("5"))
                    })
                    .and_then(Agent::address)
            })
            .map(str::to_string);
        let purposes = || {
            self.purpose_of_event
                .iter()
                .chain(self.authorization.iter())
                .chain(user_agent.into_iter().flat_map(|a| a.purpose_of_use.iter()))
        };
        let purpose = purposes().find_map(|c| c.first_code().map(str::to_string));
        // The user broke the glass to open it: the record was restricted to them.
        let broke_glass = purposes()
            .flat_map(|c| c.coding.iter())
            .any(|c| c.code.as_deref() == Some(BREAK_THE_GLASS));

        let patient_entity = self.entity.iter().find(|e| {
            let refp = e
                .what
                .as_ref()
                .and_then(|w| w.reference.as_deref())
                .is_some_and(is_patient_ref);
            let role_patient = e.role.as_ref().and_then(|r| r.code()) == Some("1");
            refp || (role_patient && e.what.is_some())
        });
        // Else the one patient a search's query names (Medplum writes no patient entity
        // for a search, only its query).
        let patient = patient_entity
            .and_then(|e| e.what.as_ref().and_then(Reference::stable))
            .or_else(|| query.as_ref().and_then(|q| q.patient.clone()));
        let patient_display = patient_entity.and_then(|e| {
            e.what
                .as_ref()
                .and_then(|w| owned(&w.display))
                .or_else(|| owned(&e.name))
        });
        // On the patient entity or on the data object (the patient's resource) read.
        let restricted = self
            .entity
            .iter()
            .flat_map(|e| e.security_label.iter())
            .flat_map(CodingOrConcept::codes)
            .any(|c| WATCHED_LABELS.contains(&c))
            || broke_glass;
        let observer = self
            .source
            .as_ref()
            .and_then(|s| s.observer.as_ref())
            .and_then(|o| o.stable().or_else(|| owned(&o.display)));

        Ok(AuditRecord {
            key,
            id,
            version_id: meta.version_id.map(|v| v.0.into_owned()),
            last_updated,
            recorded,
            interaction,
            action,
            outcome,
            user,
            user_display,
            department,
            client_app,
            source_ip,
            patient,
            patient_display,
            restricted,
            purpose,
            observer,
            query,
            request_id,
        })
    }
}

/// The raw JSON of one resource: a slice of the page body it came in, shared by every
/// event of the page (no copy unless an alert keeps it).
#[derive(Clone)]
pub struct RawJson {
    body: std::sync::Arc<str>,
    start: usize,
    end: usize,
}

impl RawJson {
    fn within(body: &std::sync::Arc<str>, part: &str) -> RawJson {
        let start = part.as_ptr() as usize - body.as_ptr() as usize;
        RawJson {
            body: body.clone(),
            start,
            end: start + part.len(),
        }
    }

    pub fn whole(body: std::sync::Arc<str>) -> RawJson {
        let end = body.len();
        RawJson {
            body,
            start: 0,
            end,
        }
    }

    pub fn get(&self) -> &str {
        &self.body[self.start..self.end]
    }
}

impl std::fmt::Debug for RawJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawJson({} bytes)", self.end - self.start)
    }
}

/// A parsed event together with its raw JSON (kept for the alert record).
#[derive(Debug)]
pub struct Fetched {
    pub record: AuditRecord,
    pub raw: RawJson,
}

/// A page of search results.
#[derive(Debug, Default)]
pub struct Page {
    pub events: Vec<Fetched>,
    pub next: Option<String>,
    pub total: Option<u64>,
    /// Entries that were not AuditEvents or failed to parse: (id or position, reason).
    pub skipped: Vec<(String, String)>,
    /// Text of OperationOutcome entries with `search.mode = outcome`.
    pub warnings: Vec<String>,
}

#[derive(Deserialize)]
struct BundleHead<'a> {
    #[serde(rename = "resourceType", borrow)]
    resource_type: Cow<'a, str>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct BundleLink {
    relation: String,
    url: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct BundleSearch {
    mode: Option<String>,
}

#[derive(Deserialize)]
struct BundleEntry<'a> {
    #[serde(borrow, default)]
    resource: Option<&'a RawValue>,
    #[serde(default)]
    search: Option<BundleSearch>,
    #[serde(rename = "fullUrl", default)]
    full_url: Option<String>,
}

#[derive(Deserialize)]
struct Bundle<'a> {
    #[serde(rename = "resourceType", borrow)]
    resource_type: Cow<'a, str>,
    #[serde(default)]
    link: Vec<BundleLink>,
    #[serde(borrow, default)]
    entry: Vec<BundleEntry<'a>>,
    #[serde(default)]
    total: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct OoIssue<'a> {
    severity: Option<String>,
    code: Option<String>,
    diagnostics: Option<String>,
    #[serde(borrow)]
    details: Option<CodeableConcept<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct OperationOutcome<'a> {
    #[serde(borrow)]
    issue: Vec<OoIssue<'a>>,
}

/// The issue texts of an OperationOutcome, one line.
pub fn operation_outcome_text(raw: &str) -> String {
    let oo: OperationOutcome = serde_json::from_str(raw).unwrap_or_default();
    let parts: Vec<String> = oo
        .issue
        .iter()
        .map(|i| {
            let text = i
                .diagnostics
                .clone()
                .or_else(|| i.details.as_ref().and_then(|d| owned(&d.text)))
                .unwrap_or_default();
            format!(
                "{}/{}: {}",
                i.severity.as_deref().unwrap_or("?"),
                i.code.as_deref().unwrap_or("?"),
                text
            )
        })
        .collect();
    if parts.is_empty() {
        "(no issues)".to_string()
    } else {
        let mut s = parts.join("; ");
        // At a character boundary: diagnostics are often not ASCII (found by fuzzing).
        s.truncate(s.floor_char_boundary(500));
        s
    }
}

fn classify_json_error(body: &[u8], e: &serde_json::Error) -> ParseError {
    let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
    if first != Some(b'{') && first != Some(b'[') {
        let snippet: String = String::from_utf8_lossy(&body[..body.len().min(40)])
            .chars()
            .filter(|c| !c.is_control())
            .collect();
        return ParseError::NotJson(snippet);
    }
    if e.is_eof() {
        ParseError::Truncated(e.to_string())
    } else {
        ParseError::InvalidJson(e.to_string())
    }
}

/// Read one AuditEvent resource from raw JSON.
pub fn parse_audit_event(raw: &RawValue) -> Result<AuditRecord, String> {
    parse_audit_event_str(raw.get())
}

fn parse_audit_event_str(raw: &str) -> Result<AuditRecord, String> {
    let ev: AuditEvent = serde_json::from_str(raw).map_err(|e| e.to_string())?;
    ev.into_record()
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct IdOnly {
    id: Option<String>,
    #[serde(rename = "resourceType")]
    resource_type: Option<String>,
}

fn body_str(body: Vec<u8>) -> Result<std::sync::Arc<str>, ParseError> {
    match String::from_utf8(body) {
        Ok(s) => Ok(s.into()),
        Err(e) => {
            let b = e.into_bytes();
            let first = b.iter().find(|c| !c.is_ascii_whitespace()).copied();
            if first != Some(b'{') {
                Err(ParseError::NotJson(
                    String::from_utf8_lossy(&b[..b.len().min(40)]).into_owned(),
                ))
            } else {
                Err(ParseError::InvalidJson("body is not UTF-8".into()))
            }
        }
    }
}

/// The Bundle's `next` paging link, if it has a non-empty one. The one reading for the full
/// parse and the peek, which must agree.
fn next_link(links: &[BundleLink]) -> Option<String> {
    links
        .iter()
        .find(|l| l.relation == "next")
        .map(|l| l.url.clone())
        .filter(|u| !u.is_empty())
}

/// The `next` link of a searchset Bundle, read without parsing its entries when `link`
/// comes before `entry` (as servers write it): the poller starts fetching the next page
/// while this one is parsed. A guess only: the full parse is authoritative.
pub fn peek_next_link(body: &[u8]) -> Option<String> {
    use serde::de::{Deserializer as _, IgnoredAny, MapAccess, Visitor};
    struct V<'s>(&'s mut Option<String>);
    impl<'de> Visitor<'de> for V<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a Bundle")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(k) = map.next_key::<Text<'de>>()? {
                match k.as_str() {
                    "link" => {
                        let links: Vec<BundleLink> = map.next_value()?;
                        *self.0 = next_link(&links);
                        // Stop here: the entries are left unread (the deserializer then
                        // reports the unread rest as an error, which is ignored).
                        return Ok(());
                    }
                    "entry" => return Ok(()),
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(())
        }
    }
    let mut next = None;
    let mut de = serde_json::Deserializer::from_slice(body);
    let _ = (&mut de).deserialize_map(V(&mut next));
    next
}

/// Parse a searchset page of `resource_type` resources (one pass over the body, plus one
/// over each entry).
pub fn parse_page(body: &[u8], resource_type: &str) -> Result<Page, ParseError> {
    parse_page_owned(body.to_vec(), resource_type)
}

/// As `parse_page`, taking ownership of the body so events can point into it.
pub fn parse_page_owned(body: Vec<u8>, resource_type: &str) -> Result<Page, ParseError> {
    let body = body_str(body)?;
    let bundle: Bundle =
        serde_json::from_str(&body).map_err(|e| classify_json_error(body.as_bytes(), &e))?;
    if bundle.resource_type == "OperationOutcome" {
        return Err(ParseError::OperationOutcome(operation_outcome_text(&body)));
    }
    if bundle.resource_type != "Bundle" {
        return Err(ParseError::WrongResourceType {
            expected: "Bundle".into(),
            got: bundle.resource_type.into_owned(),
        });
    }
    let mut page = Page {
        next: next_link(&bundle.link),
        total: bundle.total,
        ..Page::default()
    };
    page.events.reserve(bundle.entry.len());
    for (i, entry) in bundle.entry.into_iter().enumerate() {
        let Some(res) = entry.resource else {
            page.skipped
                .push((format!("entry #{i}"), "entry has no resource".into()));
            continue;
        };
        let mode = entry.search.as_ref().and_then(|s| s.mode.as_deref());
        let name = |full_url: &Option<String>| {
            let head: IdOnly = serde_json::from_str(res.get()).unwrap_or_default();
            (
                head.id
                    .or(full_url.clone())
                    .unwrap_or_else(|| format!("entry #{i}")),
                head.resource_type.unwrap_or_default(),
            )
        };
        match serde_json::from_str::<AuditEvent>(res.get()) {
            Ok(ev)
                if mode == Some("outcome") || ev.resource_type.as_str() == "OperationOutcome" =>
            {
                page.warnings.push(operation_outcome_text(res.get()));
            }
            Ok(ev) if ev.resource_type.as_str() != resource_type => {
                let id = owned(&ev.id)
                    .or(entry.full_url.clone())
                    .unwrap_or_else(|| format!("entry #{i}"));
                page.skipped.push((
                    id,
                    format!(
                        "resourceType {:?} is not {resource_type}",
                        ev.resource_type.as_str()
                    ),
                ));
            }
            Ok(ev) => {
                let id = ev.id.clone();
                match ev.into_record() {
                    Ok(record) => page.events.push(Fetched {
                        record,
                        raw: RawJson::within(&body, res.get()),
                    }),
                    Err(reason) => page
                        .skipped
                        .push((owned(&id).unwrap_or_else(|| format!("entry #{i}")), reason)),
                }
            }
            Err(e) => {
                let (id, rt) = name(&entry.full_url);
                if rt == "OperationOutcome" || mode == Some("outcome") {
                    page.warnings.push(operation_outcome_text(res.get()));
                } else if rt != resource_type {
                    page.skipped
                        .push((id, format!("resourceType {rt:?} is not {resource_type}")));
                } else {
                    page.skipped.push((id, e.to_string()));
                }
            }
        }
    }
    Ok(page)
}

/// Parse a push body: an AuditEvent, a Bundle of them, or a subscription notification
/// Bundle (R4 backport, full-resource). Returns the events and the skipped entries.
pub fn parse_push(body: &[u8]) -> Result<Page, ParseError> {
    let head: BundleHead =
        serde_json::from_slice(body).map_err(|e| classify_json_error(body, &e))?;
    match head.resource_type.as_ref() {
        "AuditEvent" => {
            let body = body_str(body.to_vec())?;
            let record = parse_audit_event_str(&body).map_err(|reason| ParseError::BadEntry {
                id: "(body)".into(),
                reason,
            })?;
            Ok(Page {
                events: vec![Fetched {
                    record,
                    raw: RawJson::whole(body),
                }],
                ..Page::default()
            })
        }
        "Bundle" => {
            let mut page = parse_page(body, "AuditEvent")?;
            // Subscription notifications carry a SubscriptionStatus / Parameters entry first.
            page.skipped.retain(|(_, reason)| {
                !reason.contains("SubscriptionStatus") && !reason.contains("\"Parameters\"")
            });
            page.next = None;
            Ok(page)
        }
        other => Err(ParseError::WrongResourceType {
            expected: "AuditEvent or Bundle".into(),
            got: other.to_string(),
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn stored_events_keep_references_departments_and_machines_but_no_people() {
        let raw = r#"{"resourceType":"AuditEvent","id":"a","text":{"div":"<div>Ann Smith read Bob Jones</div>"},
            "agent":[{"who":{"reference":"Practitioner/7","display":"Dr. Ann Smith"},"name":"Ann Smith",
                      "location":{"display":"Cardiology"},"network":{"address":"10.0.0.9","type":"2"}}],
            "entity":[{"what":{"reference":"Patient/9","display":"Jones, Bob"},
                       "detail":[{"type":"note","valueString":"Bob Jones, 1 Elm St"}]}],
            "contained":[{"resourceType":"Patient","name":[{"family":"Jones"}],"address":[{"line":["1 Elm St"]}],"telecom":[{"value":"555"}]}]}"#;
        let kept = without_people(raw);
        for gone in ["Smith", "Jones", "Elm", "555"] {
            assert!(!kept.contains(gone), "{gone} in {kept}");
        }
        for stays in [
            "Practitioner/7",
            "Patient/9",
            "10.0.0.9",
            "AuditEvent",
            "Cardiology",
        ] {
            assert!(kept.contains(stays), "{stays} gone from {kept}");
        }
        assert_eq!(without_people("not json"), "{}");
    }

    #[test]
    fn long_non_ascii_operation_outcome_text_is_cut_at_a_character() {
        // Regression (fuzzing, search_page): a 500-byte cut inside "ü" panicked.
        // "error/invalid: " is 15 bytes, so byte 500 falls inside the 243rd "ü".
        let diag = "ü".repeat(400);
        let raw = serde_json::json!({"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "invalid", "diagnostics": diag}]})
        .to_string();
        let t = operation_outcome_text(&raw);
        assert!(t.len() <= 500 && t.starts_with("error/invalid: üü"), "{t}");
        // The page parser (where the fuzzer met it) reads it without panicking.
        let _ = parse_page(raw.as_bytes(), "AuditEvent");
    }

    fn fixture(rel: &str) -> String {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/fhir-r4")
            .join(rel);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    fn read(rel: &str) -> AuditRecord {
        let raw: Box<RawValue> = serde_json::from_str(&fixture(rel)).unwrap();
        parse_audit_event(&raw).unwrap()
    }

    #[test]
    fn every_fixture_audit_event_parses() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/fhir-r4");
        let mut n = 0;
        for sub in ["hl7-r4-core", "ihe-balp"] {
            for f in std::fs::read_dir(dir.join(sub)).unwrap() {
                let p = f.unwrap().path();
                if p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("AuditEvent-")
                {
                    let raw: Box<RawValue> =
                        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
                    parse_audit_event(&raw).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                    n += 1;
                }
            }
        }
        assert!(n >= 17, "only {n} fixtures");
    }

    #[test]
    fn balp_read_finds_user_patient_and_client() {
        let r = read("ihe-balp/AuditEvent-ex-auditBasicReadServer.json");
        assert_eq!(r.user.as_deref(), Some("John Smith"));
        assert_eq!(r.patient.as_deref(), Some("Patient/ex-patient"));
        assert_eq!(r.interaction, Interaction::Read);
        assert_eq!(r.client_app.as_deref(), Some("Device/ex-device"));
        assert_eq!(r.outcome, 0);
    }

    #[test]
    fn the_client_application_is_read_from_any_source_agent_shape() {
        // 110153 "Source Role ID" named by identifier (HL7), by display (IHE BALP), by
        // Device reference (IHE BALP); 110150 "Application" by display.
        for (file, client) in [
            (
                "hl7-r4-core/AuditEvent-example-rest.json",
                "urn:oid:2.16.840.1.113883.4.2|2.16.840.1.113883.4.2",
            ),
            (
                "hl7-r4-core/AuditEvent-example-media.json",
                "ExportToMedia.app",
            ),
            (
                "ihe-balp/AuditEvent-ex-auditBasicQueryGetServer.json",
                "myMachine.example.org",
            ),
            (
                "ihe-balp/AuditEvent-ex-auditBasicReadServer.json",
                "Device/ex-device",
            ),
            (
                "ihe-balp/AuditEvent-ex-auditBasicDeleteServer.json",
                "myMachine.example.org",
            ),
        ] {
            assert_eq!(read(file).client_app.as_deref(), Some(client), "{file}");
        }
        // A requestor is the user, never the client application.
        assert_eq!(
            read("hl7-r4-core/AuditEvent-example-disclosure.json").client_app,
            None
        );
    }

    /// HAPI's BALP interceptor writes a search without a patient of its own once per
    /// patient in its results, each with the same request-id entity (written here from
    /// its documented layout: client 110153 with the address, server, user IRCP).
    pub(crate) fn hapi_fanned_search(request: &str, patient: &str, t: &str) -> serde_json::Value {
        let q = base64::engine::general_purpose::STANDARD
            .encode("http://hapi.example/fhir/Observation?code=4548-4&_count=50");
        serde_json::json!({
            "resourceType": "AuditEvent",
            "id": format!("{request}-{patient}"),
            "meta": {"versionId": "1", "lastUpdated": t},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
            "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "search-type"}],
            "action": "E", "recorded": t, "outcome": "0",
            "agent": [
                {"type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110153"}]},
                 "who": {"identifier": {"value": "ward-app"}, "display": "10.1.2.3"},
                 "network": {"address": "10.1.2.3", "type": "2"}, "requestor": false},
                {"type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110152"}]},
                 "who": {"display": "http://hapi.example/fhir"}, "requestor": false},
                {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                 "who": {"reference": "Practitioner/nurse-1"}, "requestor": true}
            ],
            "source": {"observer": {"display": "http://hapi.example/fhir"}},
            "entity": [
                {"type": {"system": "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType", "code": "XrequestId"},
                 "what": {"identifier": {"value": request}}},
                {"type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"},
                 "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24"},
                 "description": "GET http://hapi.example/fhir/Observation?code=4548-4&_count=50", "query": q},
                {"type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1"},
                 "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"},
                 "what": {"reference": patient}}
            ]
        })
    }

    fn server_fixture(name: &str) -> AuditRecord {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/servers")
            .join(name);
        let text = std::fs::read_to_string(&p).unwrap();
        let raw: Box<serde_json::value::RawValue> = serde_json::from_str(&text).unwrap();
        parse_audit_event(&raw).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// Medplum writes a search's query as plain text; HAPI writes the client's address as
    /// its display.
    #[test]
    fn server_shapes_normalise_alike() {
        let r = server_fixture("medplum-search.json");
        assert_eq!(r.interaction, Interaction::Search);
        let q = r.query.expect("Medplum writes the query as plain text");
        assert_eq!(q.count, Some(1000));
        assert!(q.patient_sweep, "_fields is Medplum's _elements");

        let raw = serde_json::value::to_raw_value(&hapi_fanned_search(
            "r1",
            "Patient/p9",
            "2026-03-02T12:00:00Z",
        ))
        .unwrap();
        let r = parse_audit_event(&raw).unwrap();
        assert_eq!(r.user.as_deref(), Some("Practitioner/nurse-1"));
        assert_eq!(
            r.client_app.as_deref(),
            Some("ward-app"),
            "not the address HAPI writes as display"
        );
        assert_eq!(r.source_ip.as_deref(), Some("10.1.2.3"));
    }

    /// Every server fixture normalises to the record written here by hand: who, which
    /// client from where, which patient, what was done and how it ended, the request.
    #[test]
    fn every_server_fixture_normalises_to_its_golden_record() {
        use Interaction::*;
        type Golden = (
            &'static str,
            Option<&'static str>, // user
            Option<&'static str>, // client
            Option<&'static str>, // address
            Option<&'static str>, // patient
            Interaction,
            u8,                   // outcome
            Option<&'static str>, // request id
        );
        const MP: Option<&str> = Some("Practitioner/7c1f");
        const FS: Option<&str> = Some("https://idp.hospital.example/realms/staff|4711");
        const AB: Option<&str> = Some("User/dr-lee");
        const HP: Option<&str> = Some("Practitioner/nurse-1");
        let golden: &[Golden] = &[
            (
                "medplum-read-patient.json",
                MP,
                None,
                Some("10.20.30.40"),
                Some("Patient/93ab"),
                Read,
                0,
                None,
            ),
            (
                "medplum-search.json",
                MP,
                None,
                Some("10.20.30.40"),
                None,
                Search,
                0,
                None,
            ),
            (
                "medplum-create.json",
                MP,
                None,
                Some("10.20.30.40"),
                Some("Patient/93ab"),
                Create,
                0,
                None,
            ),
            (
                "medplum-login.json",
                MP,
                None,
                Some("10.20.30.40"),
                None,
                Login,
                0,
                None,
            ),
            (
                "medplum-login-failed.json",
                MP,
                None,
                Some("203.0.113.9"),
                None,
                Login,
                4,
                None,
            ),
            (
                "medplum-export.json",
                MP,
                None,
                Some("198.51.100.23"),
                None,
                Export,
                0,
                None,
            ),
            (
                "firely-read.json",
                FS,
                Some("ward-portal"),
                Some("10.9.8.7"),
                Some("Patient/example"),
                Read,
                0,
                None,
            ),
            (
                "firely-search.json",
                FS,
                Some("ward-portal"),
                Some("10.9.8.7"),
                Some("Patient/example"),
                Search,
                0,
                None,
            ),
            (
                "firely-create.json",
                FS,
                Some("ward-portal"),
                Some("10.9.8.7"),
                Some("Patient/example"),
                Create,
                0,
                None,
            ),
            (
                "firely-export.json",
                FS,
                Some("ward-portal"),
                Some("10.9.8.7"),
                None,
                Export,
                0,
                None,
            ),
            (
                "aidbox-read.json",
                AB,
                Some("Client/ward-app"),
                Some("10.4.5.6"),
                Some("Patient/pt-42"),
                Read,
                0,
                None,
            ),
            (
                "aidbox-search.json",
                AB,
                Some("Client/ward-app"),
                Some("10.4.5.6"),
                None,
                Search,
                0,
                None,
            ),
            (
                "aidbox-create.json",
                AB,
                Some("Client/ward-app"),
                Some("10.4.5.6"),
                Some("Patient/pt-42"),
                Create,
                0,
                None,
            ),
            (
                "aidbox-login.json",
                AB,
                None,
                Some("10.4.5.6"),
                None,
                Login,
                0,
                None,
            ),
            (
                "aidbox-login-failed.json",
                AB,
                None,
                Some("10.4.5.6"),
                None,
                Login,
                4,
                None,
            ),
            (
                "aidbox-export.json",
                AB,
                Some("Client/ward-app"),
                Some("10.4.5.6"),
                None,
                Export,
                0,
                None,
            ),
            (
                "hapi-read.json",
                HP,
                Some("ward-app"),
                Some("10.1.2.3"),
                Some("Patient/p9"),
                Read,
                0,
                Some("r-read"),
            ),
            (
                "hapi-create.json",
                HP,
                Some("ward-app"),
                Some("10.1.2.3"),
                Some("Patient/p9"),
                Create,
                0,
                Some("r-create"),
            ),
            (
                "hapi-search-fanned-1.json",
                HP,
                Some("ward-app"),
                Some("10.1.2.3"),
                Some("Patient/p1"),
                Search,
                0,
                Some("r-search"),
            ),
            (
                "hapi-search-fanned-2.json",
                HP,
                Some("ward-app"),
                Some("10.1.2.3"),
                Some("Patient/p2"),
                Search,
                0,
                Some("r-search"),
            ),
            (
                "hapi-export.json",
                HP,
                Some("ward-app"),
                Some("10.1.2.3"),
                None,
                Export,
                0,
                Some("r-export"),
            ),
        ];
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/servers");
        let on_disk = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|f| {
                f.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|e| e == "json")
            })
            .count();
        assert_eq!(on_disk, golden.len(), "every fixture has its golden record");
        for &(name, user, client, address, patient, interaction, outcome, request) in golden {
            let r = server_fixture(name);
            let got = (
                r.user.as_deref(),
                r.client_app.as_deref(),
                r.source_ip.as_deref(),
                r.patient.as_deref(),
                r.interaction,
                r.outcome,
                r.request_id.as_deref(),
            );
            assert_eq!(
                got,
                (
                    user,
                    client,
                    address,
                    patient,
                    interaction,
                    outcome,
                    request
                ),
                "{name}"
            );
        }
        // Searches keep what they asked for, whichever way the query is written.
        let q = server_fixture("aidbox-search.json").query.unwrap();
        assert_eq!(q.count, Some(200));
        assert!(
            q.patient_sweep,
            "names, addresses and phones of every patient"
        );
        assert!(
            server_fixture("firely-search.json")
                .query
                .unwrap()
                .patient_scoped
        );
        // A fanned HAPI search is not a chart opened for its listed patient.
        assert!(
            !server_fixture("hapi-search-fanned-1.json")
                .query
                .unwrap()
                .patient_scoped
        );
    }

    #[test]
    fn a_hapi_fanned_search_names_its_request_and_is_not_about_its_patient() {
        let raw = serde_json::value::to_raw_value(&hapi_fanned_search(
            "req-7",
            "Patient/p1",
            "2026-01-05T08:00:00Z",
        ))
        .unwrap();
        let r = parse_audit_event(&raw).unwrap();
        assert_eq!(r.request_id.as_deref(), Some("req-7"));
        assert_eq!(r.patient.as_deref(), Some("Patient/p1"));
        assert_eq!(r.interaction, Interaction::Search);
        let q = r.query.unwrap();
        assert!(!q.patient_scoped && q.count == Some(50));
        assert!(query_info("GET /Observation?patient=p1&_count=50").patient_scoped);
        assert!(query_info("GET /Patient/p1/$everything").patient_scoped);
        assert!(query_info("GET /Patient?_id=p1").patient_scoped);
        let named = |q: &str| query_info(q).patient;
        assert_eq!(
            named("Observation?patient=p1&_count=5").as_deref(),
            Some("Patient/p1")
        );
        assert_eq!(
            named("GET /Observation?subject=Patient/p2").as_deref(),
            Some("Patient/p2")
        );
        assert_eq!(
            named("GET /Patient/p3/$everything").as_deref(),
            Some("Patient/p3")
        );
        assert_eq!(named("GET /Patient?_id=p4").as_deref(), Some("Patient/p4"));
        assert_eq!(named("GET /Observation?patient=p1,p2"), None, "several");
        assert_eq!(named("GET /Observation?subject=Group/g"), None);
        assert_eq!(named("GET /Patient/$export"), None);
    }

    #[test]
    fn search_lines_say_sweeps_pages_and_exports() {
        let q = query_info(
            "GET /Patient?_count=1000&_elements=name,birthDate,address,telecom&_offset=3000",
        );
        assert_eq!(q.count, Some(1000));
        assert!(q.patient_sweep && q.later_page && !q.export);
        let q = query_info("https://h/fhir/Patient?family=Doe&_count=10");
        assert!(!q.patient_sweep && !q.later_page, "narrowed to a person");
        assert!(
            query_info("GET /Patient?family=Doe&_elements=name,address&_count=500").patient_sweep
        );
        assert!(query_info("/Patient?_count=50").patient_sweep, "unbounded");
        assert!(
            !query_info("GET /Patient/123").patient_sweep,
            "an instance read"
        );
        assert!(!query_info("GET /Observation?patient=1&_count=1000&page=0").later_page);
        let g = query_info("GET /Group/icu/$export?_type=Patient");
        assert!(g.export && !g.patient_sweep);
    }

    #[test]
    fn balp_query_decodes_count() {
        let r = read("ihe-balp/AuditEvent-ex-auditBasicQueryGetServer.json");
        assert_eq!(r.interaction, Interaction::Search);
        assert_eq!(r.query.as_ref().and_then(|q| q.count), Some(10));
        assert_eq!(r.patient.as_deref(), Some("Patient/ex-patient"));
    }

    #[test]
    fn restricted_security_labels_and_breaking_the_glass_are_read() {
        // HL7's disclosure example labels the disclosed record "very restricted" (V).
        let r = read("hl7-r4-core/AuditEvent-example-disclosure.json");
        assert!(r.restricted);
        assert!(!read("ihe-balp/AuditEvent-ex-auditBasicReadServer.json").restricted);
        // R5 names: a CodeableConcept label on the patient entity.
        let raw: Box<RawValue> = serde_json::from_str(
            r#"{"resourceType":"AuditEvent","id":"a","recorded":"2026-01-01T00:00:00Z",
                "entity":[{"what":{"reference":"Patient/1"},
                  "securityLabel":[{"coding":[{"code":"CEL"}]}]}]}"#,
        )
        .unwrap();
        assert!(parse_audit_event(&raw).unwrap().restricted);
        // Breaking the glass, in any of the three places a purpose of use is written.
        for (field, ok) in [
            (r#""purposeOfEvent":[{"coding":[{"code":"BTG"}]}]"#, true),
            (r#""authorization":[{"coding":[{"code":"BTG"}]}]"#, true),
            (
                r#""agent":[{"requestor":true,"who":{"reference":"Practitioner/1"},"purposeOfUse":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ActReason","code":"BTG"}]}]}]"#,
                true,
            ),
            (r#""purposeOfEvent":[{"coding":[{"code":"TREAT"}]}]"#, false),
            (
                r#""purposeOfEvent":[{"coding":[{"code":"ETREAT"}]}]"#,
                false,
            ),
        ] {
            let raw: Box<RawValue> = serde_json::from_str(&format!(
                r#"{{"resourceType":"AuditEvent","id":"a","recorded":"2026-01-01T00:00:00Z",{field},
                    "entity":[{{"what":{{"reference":"Patient/1"}}}}]}}"#
            ))
            .unwrap();
            assert_eq!(parse_audit_event(&raw).unwrap().restricted, ok, "{field}");
        }
    }

    #[test]
    fn login_and_failed_login() {
        let r = read("hl7-r4-core/AuditEvent-example-login.json");
        assert_eq!(r.interaction, Interaction::Login);
        let r = read("hl7-r4-core/AuditEvent-example-error.json");
        assert!(r.outcome >= 4);
    }

    #[test]
    fn key_prefers_version() {
        assert_eq!(event_key("a", Some("2"), Some("x")), "a|v2");
        assert_eq!(event_key("a", None, Some("2020")), "a|t2020");
    }

    #[test]
    fn page_faults_are_classified() {
        assert_eq!(
            parse_page(b"<html><title>502</title>", "AuditEvent")
                .unwrap_err()
                .kind(),
            "non_json_body"
        );
        assert_eq!(
            parse_page(b"{\"resourceType\":\"Bundle\",\"entry\":[", "AuditEvent")
                .unwrap_err()
                .kind(),
            "truncated_body"
        );
        assert_eq!(
            parse_page(b"{\"resourceType\":\"Patient\"}", "AuditEvent")
                .unwrap_err()
                .kind(),
            "wrong_resource_type"
        );
        let oo = fixture("hl7-r4-core/OperationOutcome-searchfail.json");
        let e = parse_page(oo.as_bytes(), "AuditEvent").unwrap_err();
        assert_eq!(e.kind(), "operation_outcome");
    }

    #[test]
    fn bad_entries_are_skipped_rest_counts() {
        let good = fixture("hl7-r4-core/AuditEvent-example-rest.json");
        let body = format!(
            r#"{{"resourceType":"Bundle","type":"searchset","link":[{{"relation":"next","url":"http://x/fhir/AuditEvent?page=2"}}],
            "entry":[{{"resource":{good}}},{{"resource":{{"resourceType":"AuditEvent","id":"bad","recorded":"not a time"}}}},
            {{"resource":{{"resourceType":"Patient","id":"p1"}}}},
            {{"resource":{{"resourceType":"OperationOutcome","issue":[{{"severity":"warning","code":"processing","diagnostics":"unknown param"}}]}},"search":{{"mode":"outcome"}}}}]}}"#
        );
        let p = parse_page(body.as_bytes(), "AuditEvent").unwrap();
        assert_eq!(p.events.len(), 1);
        assert_eq!(p.skipped.len(), 2);
        assert_eq!(p.skipped[0].0, "bad");
        assert_eq!(p.warnings.len(), 1);
        assert_eq!(p.next.as_deref(), Some("http://x/fhir/AuditEvent?page=2"));
    }

    #[test]
    fn bundle_fixture_with_warning_is_read() {
        let b = fixture("hl7-r4-core/Bundle-bundle-search-warning.json");
        let p = parse_page(b.as_bytes(), "AuditEvent").unwrap();
        assert_eq!(p.warnings.len(), 1);
    }

    #[test]
    fn the_next_link_is_peeked_without_reading_entries() {
        let page = |order: &str| {
            let link = r#""link":[{"relation":"self","url":"http://s/a"},{"relation":"next","url":"http://s/a?p=2"}]"#;
            let entry = r#""entry":[{"resource":{"resourceType":"AuditEvent","id":"x"}}, {"broken"#;
            match order {
                "link-first" => {
                    format!(r#"{{"resourceType":"Bundle","type":"searchset",{link},{entry}"#)
                }
                _ => format!(r#"{{"resourceType":"Bundle",{entry}]}},{link}}}"#),
            }
        };
        // Entries after the link are never read: even a truncated rest does not matter.
        assert_eq!(
            peek_next_link(page("link-first").as_bytes()).as_deref(),
            Some("http://s/a?p=2")
        );
        // Entries first: no guess (the full parse finds the link).
        assert_eq!(peek_next_link(page("entry-first").as_bytes()), None);
        assert_eq!(peek_next_link(b"<html>502 Bad Gateway</html>"), None);
        assert_eq!(
            peek_next_link(br#"{"resourceType":"Bundle","link":[{"relation":"self","url":"u"}]}"#),
            None
        );
    }
}
