//! FHIR resources read into [`Facts`]: references, periods and tags, nothing in clear.
//!
//! Tolerant as the AuditEvent reader is: a field a server leaves out is simply not known;
//! a resource of a type this module does not read, or without an id, gives no facts (`None`);
//! a page that is not a Bundle is refused (`search_page`).

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::key::{CareKey, Tag, TagKind};

/// The resource types the care context follows, in the order they are polled.
pub const TYPES: [&str; 8] = [
    "Practitioner",
    "PractitionerRole",
    "Patient",
    "RelatedPerson",
    "Encounter",
    "EpisodeOfCare",
    "CareTeam",
    "Appointment",
];

/// One person as the index matches people: tags of normalised values.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Person {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub family: Vec<Tag>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub given: Vec<Tag>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub address: Vec<Tag>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phone: Vec<Tag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub birth: Option<Tag>,
    /// Identifiers with their system (`system|value`): what says two records are one person.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<Tag>,
    /// The same identifiers' values alone (`|value`): only to find the record an
    /// AuditEvent names by a bare value. Never compared between records, where an MRN and a
    /// staff number may share digits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bare_ids: Vec<Tag>,
}

fn meets(a: &[Tag], b: &[Tag]) -> bool {
    a.iter().any(|t| b.contains(t))
}

impl Person {
    /// Shares a family name.
    pub fn same_family(&self, o: &Person) -> bool {
        meets(&self.family, &o.family)
    }
    /// Shares an address (line and postal code) or a phone number.
    pub fn same_home(&self, o: &Person) -> bool {
        meets(&self.address, &o.address) || meets(&self.phone, &o.phone)
    }
    /// The same person: a shared identifier, or family name and birth date with a given
    /// name, address or phone.
    pub fn same_person(&self, o: &Person) -> bool {
        meets(&self.ids, &o.ids)
            || (self.same_family(o)
                && self.birth.is_some()
                && self.birth == o.birth
                && (meets(&self.given, &o.given) || self.same_home(o)))
    }
    /// `o` names this person as a relative or contact would: a shared identifier, or the
    /// family name with a given name, address, phone or birth date.
    pub fn named_by(&self, o: &Person) -> bool {
        meets(&self.ids, &o.ids)
            || (self.same_family(o)
                && (meets(&self.given, &o.given)
                    || self.same_home(o)
                    || (self.birth.is_some() && self.birth == o.birth)))
    }
    fn is_empty(&self) -> bool {
        *self == Person::default()
    }
}

/// What kind of resource a treatment relationship comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CareKind {
    Encounter,
    EpisodeOfCare,
    CareTeam,
    Appointment,
    GeneralPractitioner,
}

impl CareKind {
    /// In words, as a narrative names it.
    pub fn words(self) -> &'static str {
        match self {
            CareKind::Encounter => "encounter",
            CareKind::EpisodeOfCare => "episode of care",
            CareKind::CareTeam => "care team",
            CareKind::Appointment => "appointment",
            CareKind::GeneralPractitioner => "general practitioner",
        }
    }
}

/// What one resource tells detection. `id` is the resource's `Type/id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Facts {
    Practitioner {
        id: String,
        person: Person,
    },
    /// A PractitionerRole: the practitioner and the units (organisation, locations,
    /// services) they work in, for its period.
    Role {
        id: String,
        practitioner: Option<String>,
        units: Vec<String>,
        from: Option<i64>,
        to: Option<i64>,
        /// The name in words of the most specific unit that has one (a ward's display,
        /// else a service's, a specialty's text, the organisation's display), as the
        /// resource gives it (`Intensive Care`): the user's department where the AuditEvent
        /// names none. Absent in facts stored before it was kept, or when no unit has a
        /// name (`Index::department_of` then gives the first unit's key).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        department: Option<String>,
    },
    Patient {
        id: String,
        person: Person,
        /// `Patient.contact`: next of kin and other contacts.
        contacts: Vec<Person>,
        /// The server marks the record as one to watch ([`marked`]): a restricted,
        /// celebrity or employee security label, or a patient importance (VIP, staff,
        /// dignitary). Absent in facts stored before it was kept.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        marked: bool,
    },
    RelatedPerson {
        id: String,
        patient: String,
        person: Person,
    },
    /// A treatment relationship: who (practitioners, roles, care teams) and which units
    /// (locations, organisations, services) care for the patient, from when to when.
    Care {
        id: String,
        kind: CareKind,
        patient: String,
        who: Vec<String>,
        units: Vec<String>,
        from: Option<i64>,
        to: Option<i64>,
        /// An Encounter whose `hospitalization.specialCourtesy` is VIP or staff (`STF`): the
        /// patient's record is marked as one to watch, as by the Patient resource
        /// ([`marked`]). Absent in facts stored before it was kept.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        courtesy: bool,
    },
    /// A CareTeam's members (also a treatment relationship of its subject, as `Care`).
    Team {
        id: String,
        members: Vec<String>,
    },
}

impl Facts {
    /// The `Type/id` of the resource these facts come from.
    pub fn id(&self) -> &str {
        match self {
            Facts::Practitioner { id, .. }
            | Facts::Role { id, .. }
            | Facts::Patient { id, .. }
            | Facts::RelatedPerson { id, .. }
            | Facts::Care { id, .. }
            | Facts::Team { id, .. } => id,
        }
    }
}

/// `Type/id` out of a relative, absolute or versioned reference
/// (`https://h/fhir/Practitioner/7/_history/2` → `Practitioner/7`); a contained or
/// logical reference (`#x`, `urn:uuid:…`) is kept as it is.
pub fn norm_ref(r: &str) -> String {
    let r = r.trim();
    let r = r.split("/_history/").next().unwrap_or(r);
    let parts: Vec<&str> = r.rsplitn(3, '/').collect();
    match parts.as_slice() {
        [id, ty, ..]
            if ty.chars().next().is_some_and(|c| c.is_ascii_uppercase()) && !id.is_empty() =>
        {
            format!("{ty}/{id}")
        }
        _ => r.to_string(),
    }
}

/// Whether an AuditEvent names someone by reference (`Type/id`, possibly absolute), not by
/// identifier (`system|value`, or a bare value).
pub fn is_reference(r: &str) -> bool {
    r.contains('/') && !r.contains('|')
}

/// `norm_ref` without a copy when the reference is already `Type/id` (the common case, on
/// the path of every scored event).
pub fn ref_key(r: &str) -> std::borrow::Cow<'_, str> {
    let plain = r.bytes().filter(|b| *b == b'/').count() == 1
        && r.starts_with(|c: char| c.is_ascii_uppercase())
        && !r.ends_with('/')
        && !r.contains(char::is_whitespace);
    match plain {
        true => std::borrow::Cow::Borrowed(r),
        false => std::borrow::Cow::Owned(norm_ref(r)),
    }
}

/// A unit (department) key: its reference, else its name (`name:cardiology`).
pub fn unit_key(reference: &Value) -> Option<String> {
    if let Some(r) = reference.get("reference").and_then(Value::as_str) {
        return Some(norm_ref(r));
    }
    unit_name(reference.get("display").and_then(Value::as_str)?)
}

/// The unit key of a department named in words (an AuditEvent's agent location, say).
pub fn unit_name(display: &str) -> Option<String> {
    let n = norm_text(display);
    (!n.is_empty()).then(|| format!("name:{n}"))
}

/// Lower-case letters and digits only: "O'Brien-Smith" → "obriensmith".
pub fn norm_text(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// A name as names are compared: its letters only, lower-case. "O'Brien-Smith" →
/// "obriensmith"; the digits some generators append to every name ("Frami345", Synthea's
/// default) are not part of it, so two of a family written so still share the name, as
/// the detector's reading of an AuditEvent's names already had it (`features::fold`).
pub fn norm_name(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_alphabetic())
        .flat_map(char::to_lowercase)
        .collect()
}

/// The last ten digits of a phone number with at least seven.
fn norm_phone(s: &str) -> Option<String> {
    let d: String = s.chars().filter(char::is_ascii_digit).collect();
    (d.len() >= 7).then(|| d[d.len().saturating_sub(10)..].to_string())
}

fn time_ms(s: &str, end: bool) -> Option<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc).timestamp_millis());
    }
    // A date (or year-month) without a time: the whole day counts.
    let padded = match s.len() {
        4 => format!("{s}-01-01"),
        7 => format!("{s}-01"),
        _ => s.to_string(),
    };
    let d = NaiveDate::parse_from_str(&padded, "%Y-%m-%d").ok()?;
    let t = d.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis();
    Some(if end { t + 86_400_000 - 1 } else { t })
}

fn period(v: &Value) -> (Option<i64>, Option<i64>) {
    (
        v.get("start")
            .and_then(Value::as_str)
            .and_then(|s| time_ms(s, false)),
        v.get("end")
            .and_then(Value::as_str)
            .and_then(|s| time_ms(s, true)),
    )
}

/// The values of `key`: an array's items, or a lone object (servers write both), borrowed.
fn arr<'a>(v: &'a Value, key: &str) -> std::slice::Iter<'a, Value> {
    match v.get(key) {
        Some(Value::Array(a)) => a.iter(),
        Some(o @ Value::Object(_)) => std::slice::from_ref(o).iter(),
        _ => [].iter(),
    }
}

fn reference(v: &Value) -> Option<String> {
    v.get("reference").and_then(Value::as_str).map(norm_ref)
}

/// Whether a Patient resource is marked as one to watch, the two ways FHIR marks one:
/// `meta.security` with a label an AuditEvent's entity would carry to the same end
/// ([`crate::fhir::WATCHED_LABELS`]: restricted, very restricted, celebrity, VIP,
/// employee), or the `patient-importance` extension with any value (HL7's codes are all
/// special statuses: VIP, board member, staff, a staff member's family, dignitaries,
/// donors). (An Encounter marks its patient too: `special_courtesy`.)
pub fn marked(v: &Value) -> bool {
    let code_of = |c: &Value| c.get("code").and_then(Value::as_str).map(str::to_string);
    let labelled = v
        .get("meta")
        .map(|m| {
            arr(m, "security")
                .filter_map(code_of)
                .any(|c| crate::fhir::WATCHED_LABELS.contains(&c.as_str()))
        })
        .unwrap_or(false);
    let important = arr(v, "extension").any(|e| {
        e.get("url")
            .and_then(Value::as_str)
            .is_some_and(|u| u.ends_with("/StructureDefinition/patient-importance"))
            && e.get("valueCodeableConcept").is_some_and(|c| {
                arr(c, "coding").any(|x| code_of(x).is_some())
                    || c.get("text")
                        .and_then(Value::as_str)
                        .is_some_and(|t| !t.trim().is_empty())
            })
    });
    labelled || important
}

/// Tags of a person's names, addresses, phones, birth date and identifiers.
pub fn person(v: &Value, key: &CareKey) -> Person {
    let mut p = Person::default();
    let push = |list: &mut Vec<Tag>, t: Tag| {
        if !list.contains(&t) {
            list.push(t);
        }
    };
    for n in arr(v, "name") {
        if let Some(f) = n
            .get("family")
            .and_then(Value::as_str)
            .map(norm_name)
            .filter(|f| !f.is_empty())
        {
            push(&mut p.family, key.tag(TagKind::Family, &f));
        } else if let Some(text) = n.get("text").and_then(Value::as_str) {
            // "Given Family" or "Family, Given".
            let f = match text.split_once(',') {
                Some((fam, _)) => fam.to_string(),
                None => text.split_whitespace().last().unwrap_or("").to_string(),
            };
            let f = norm_name(&f);
            if !f.is_empty() {
                push(&mut p.family, key.tag(TagKind::Family, &f));
            }
        }
        for g in arr(n, "given").filter_map(|g| g.as_str().map(norm_name)) {
            if !g.is_empty() {
                push(&mut p.given, key.tag(TagKind::Given, &g));
            }
        }
    }
    for a in arr(v, "address") {
        let lines: String = arr(a, "line")
            .filter_map(|l| l.as_str().map(norm_text))
            .collect();
        let postal = a
            .get("postalCode")
            .and_then(Value::as_str)
            .map(norm_text)
            .unwrap_or_default();
        if !lines.is_empty() {
            push(
                &mut p.address,
                key.tag(TagKind::Address, &format!("{lines}|{postal}")),
            );
        }
    }
    for t in arr(v, "telecom") {
        let phone = t
            .get("system")
            .and_then(Value::as_str)
            .is_none_or(|s| s == "phone" || s == "sms");
        if let (true, Some(n)) = (
            phone,
            t.get("value").and_then(Value::as_str).and_then(norm_phone),
        ) {
            push(&mut p.phone, key.tag(TagKind::Phone, &n));
        }
    }
    p.birth = v
        .get("birthDate")
        .and_then(Value::as_str)
        .filter(|b| b.len() == 10 && NaiveDate::parse_from_str(b, "%Y-%m-%d").is_ok())
        .map(|b| key.tag(TagKind::Birth, b));
    for i in arr(v, "identifier") {
        if let Some(val) = i
            .get("value")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let sys = i.get("system").and_then(Value::as_str).unwrap_or("").trim();
            push(
                &mut p.ids,
                key.tag(TagKind::Identifier, &format!("{sys}|{val}")),
            );
            push(
                &mut p.bare_ids,
                key.tag(TagKind::Identifier, &format!("|{val}")),
            );
        }
    }
    p
}

/// The tags an audit user written as an identifier (`system|value`, or a bare value) would
/// have among a Practitioner's identifiers.
pub fn user_identifier_tag(user: &str, key: &CareKey) -> Tag {
    let u = user.trim();
    match u.split_once('|') {
        Some((sys, val)) => key.tag(
            TagKind::Identifier,
            &format!("{}|{}", sys.trim(), val.trim()),
        ),
        None => key.tag(TagKind::Identifier, &format!("|{u}")),
    }
}

/// A resource that is withdrawn: its facts no longer hold.
fn withdrawn(v: &Value) -> bool {
    matches!(
        v.get("status").and_then(Value::as_str),
        Some("entered-in-error" | "cancelled" | "noshow" | "inactive")
    ) || v.get("active").and_then(Value::as_bool) == Some(false)
}

/// The facts of one resource; `None` for a type not read here or one without an id.
pub fn facts_of(v: &Value, key: &CareKey) -> Option<Facts> {
    let ty = v.get("resourceType")?.as_str()?;
    let id = format!("{ty}/{}", v.get("id")?.as_str()?);
    let subject = |field: &str| v.get(field).and_then(reference);
    Some(match ty {
        "Practitioner" => Facts::Practitioner {
            id,
            person: person(v, key),
        },
        "PractitionerRole" => {
            // The most specific unit first (a ward, a service, a specialty, then the
            // organisation): the first is the user's department where the AuditEvent names
            // none (`Index::department_of`).
            let mut units: Vec<String> = Vec::new();
            let mut department = None;
            let mut named = |u: &Value, k: &str| {
                if department.is_none() {
                    department = u.get(k).and_then(Value::as_str).map(str::to_string);
                }
            };
            for u in arr(v, "location").chain(arr(v, "healthcareService")) {
                if let Some(k) = unit_key(u) {
                    named(u, "display");
                    units.push(k);
                }
            }
            for s in arr(v, "specialty") {
                if let Some(t) = s.get("text").and_then(Value::as_str).and_then(unit_name) {
                    named(s, "text");
                    units.push(t);
                }
            }
            if let Some(o) = v.get("organization") {
                if let Some(k) = unit_key(o) {
                    named(o, "display");
                    units.push(k);
                }
            }
            let (from, to) = v.get("period").map(period).unwrap_or_default();
            Facts::Role {
                id,
                practitioner: if withdrawn(v) {
                    None
                } else {
                    subject("practitioner")
                },
                units,
                from,
                to,
                department,
            }
        }
        "Patient" => {
            let mut contacts: Vec<Person> = arr(v, "contact")
                .map(|c| {
                    let mut c2 = c.clone();
                    if let Some(n) = c.get("name") {
                        c2["name"] = Value::Array(vec![n.clone()]);
                    }
                    if let Some(a) = c.get("address") {
                        c2["address"] = Value::Array(vec![a.clone()]);
                    }
                    person(&c2, key)
                })
                .collect();
            contacts.retain(|c| !c.is_empty());
            // `generalPractitioner` is a standing relationship too: `read` adds it.
            Facts::Patient {
                id,
                person: person(v, key),
                contacts,
                marked: marked(v),
            }
        }
        "RelatedPerson" => Facts::RelatedPerson {
            id,
            patient: subject("patient")?,
            person: person(v, key),
        },
        "Encounter" => {
            let mut who = Vec::new();
            let mut units = Vec::new();
            for p in arr(v, "participant") {
                if let Some(r) = p.get("individual").and_then(reference) {
                    who.push(r);
                }
            }
            for l in arr(v, "location") {
                if let Some(k) = l.get("location").and_then(unit_key) {
                    units.push(k);
                }
            }
            if let Some(k) = v.get("serviceProvider").and_then(unit_key) {
                units.push(k);
            }
            let (from, to) = v.get("period").map(period).unwrap_or_default();
            care(
                id,
                CareKind::Encounter,
                subject("subject")?,
                who,
                units,
                from,
                to,
                v,
            )
        }
        "EpisodeOfCare" => {
            let mut who: Vec<String> = v
                .get("careManager")
                .and_then(reference)
                .into_iter()
                .collect();
            who.extend(arr(v, "team").filter_map(reference));
            let units = v
                .get("managingOrganization")
                .and_then(unit_key)
                .into_iter()
                .collect();
            let (from, to) = v.get("period").map(period).unwrap_or_default();
            care(
                id,
                CareKind::EpisodeOfCare,
                subject("patient")?,
                who,
                units,
                from,
                to,
                v,
            )
        }
        "CareTeam" => {
            let members: Vec<String> = arr(v, "participant")
                .filter_map(|p| p.get("member").and_then(reference))
                .collect();
            let mut units: Vec<String> = arr(v, "managingOrganization")
                .filter_map(unit_key)
                .collect();
            units.extend(
                members
                    .iter()
                    .filter(|m| m.starts_with("Organization/"))
                    .cloned(),
            );
            let (from, to) = v.get("period").map(period).unwrap_or_default();
            match subject("subject").filter(|s| s.starts_with("Patient/")) {
                Some(patient) => care(id, CareKind::CareTeam, patient, members, units, from, to, v),
                None => Facts::Team { id, members },
            }
        }
        "Appointment" => {
            let mut patient = None;
            let mut who = Vec::new();
            let mut units = Vec::new();
            for p in arr(v, "participant") {
                if p.get("status").and_then(Value::as_str) == Some("declined") {
                    continue;
                }
                let Some(actor) = p.get("actor") else {
                    continue;
                };
                match reference(actor) {
                    Some(r) if r.starts_with("Patient/") => patient = Some(r),
                    Some(r)
                        if r.starts_with("Location/") || r.starts_with("HealthcareService/") =>
                    {
                        units.push(r)
                    }
                    Some(r) => who.push(r),
                    None => {}
                }
            }
            // From its booking (`created`), else its start; to its end, else its start.
            let start = v
                .get("start")
                .and_then(Value::as_str)
                .and_then(|s| time_ms(s, false));
            let created = v
                .get("created")
                .and_then(Value::as_str)
                .and_then(|s| time_ms(s, false));
            let end = v
                .get("end")
                .and_then(Value::as_str)
                .and_then(|s| time_ms(s, true))
                .or(start);
            let from = match (created, start) {
                (Some(c), Some(s)) => Some(c.min(s)),
                (c, s) => c.or(s),
            };
            care(
                id,
                CareKind::Appointment,
                patient?,
                who,
                units,
                from,
                end,
                v,
            )
        }
        _ => return None,
    })
}

#[allow(clippy::too_many_arguments)]
fn care(
    id: String,
    kind: CareKind,
    patient: String,
    mut who: Vec<String>,
    mut units: Vec<String>,
    from: Option<i64>,
    to: Option<i64>,
    v: &Value,
) -> Facts {
    let gone = withdrawn(v);
    if gone {
        who.clear();
        units.clear();
    }
    Facts::Care {
        id,
        kind,
        patient,
        who,
        units,
        from,
        to,
        // An admission entered in error or cancelled marks no one.
        courtesy: !gone && special_courtesy(v),
    }
}

/// Whether an Encounter's `hospitalization.specialCourtesy` names a VIP or a member of
/// staff (HL7 v3 EncounterSpecialCourtesy `VIP`, `STF`); false for any other resource.
fn special_courtesy(v: &Value) -> bool {
    v.get("hospitalization").is_some_and(|h| {
        arr(h, "specialCourtesy")
            .flat_map(|c| arr(c, "coding"))
            .filter_map(|c| c.get("code").and_then(Value::as_str))
            .any(|c| c.eq_ignore_ascii_case("VIP") || c == "STF")
    })
}

/// A Patient's `generalPractitioner`s, as a standing relationship.
pub fn general_practitioners(v: &Value) -> Vec<String> {
    arr(v, "generalPractitioner")
        .filter_map(reference)
        .collect()
}

/// Every resource in a JSON value: one resource, or a Bundle's entries.
pub fn resources(v: Value) -> Vec<Value> {
    if v.get("resourceType").and_then(Value::as_str) == Some("Bundle") {
        arr(&v, "entry")
            .filter_map(|e| e.get("resource").cloned())
            .collect()
    } else {
        vec![v]
    }
}

/// The facts of one resource, and for a Patient with general practitioners the standing
/// relationship as well (`Type/id#gp`).
pub fn read(v: &Value, key: &CareKey) -> Vec<Facts> {
    let mut out: Vec<Facts> = facts_of(v, key).into_iter().collect();
    if let Some(Facts::Patient { id, .. }) = out.first() {
        let gps = general_practitioners(v);
        let id = id.clone();
        out.push(Facts::Care {
            id: format!("{id}#gp"),
            kind: CareKind::GeneralPractitioner,
            patient: id,
            units: gps
                .iter()
                .filter(|g| g.starts_with("Organization/"))
                .cloned()
                .collect(),
            who: gps,
            from: None,
            to: None,
            courtesy: false,
        });
    }
    out
}

/// One searchset page of a context type, read.
#[derive(Debug, Default)]
pub struct SearchPage {
    pub facts: Vec<Facts>,
    /// Entries of the page (resources of the searched type).
    pub resources: usize,
    /// Newest `meta.lastUpdated` on the page (ms).
    pub newest_ms: Option<i64>,
    /// The `next` link, as the server wrote it.
    pub next: Option<String>,
}

/// Read a searchset Bundle of `resource_type`; entries of other types (included
/// resources, an OperationOutcome) are passed over. `None` when the body is not a Bundle.
pub fn search_page(body: &[u8], resource_type: &str, key: &CareKey) -> Option<SearchPage> {
    let v: Value = serde_json::from_slice(body).ok()?;
    if v.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return None;
    }
    let mut page = SearchPage {
        next: arr(&v, "link")
            .find(|l| l.get("relation").and_then(Value::as_str) == Some("next"))
            .and_then(|l| l.get("url").and_then(Value::as_str).map(str::to_string)),
        ..SearchPage::default()
    };
    for e in arr(&v, "entry") {
        let Some(r) = e.get("resource") else { continue };
        if r.get("resourceType").and_then(Value::as_str) != Some(resource_type) {
            continue;
        }
        page.resources += 1;
        if let Some(t) = r
            .pointer("/meta/lastUpdated")
            .and_then(Value::as_str)
            .and_then(|s| time_ms(s, false))
        {
            page.newest_ms = Some(page.newest_ms.map_or(t, |n| n.max(t)));
        }
        page.facts.extend(read(r, key));
    }
    Some(page)
}
