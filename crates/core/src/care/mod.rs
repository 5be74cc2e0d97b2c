//! care: who treats whom, and who is whom, as the FHIR server's own resources say.
//!
//! - [`resources`]: Practitioner, PractitionerRole, Patient, RelatedPerson, Encounter,
//!   EpisodeOfCare, CareTeam and Appointment read into [`Facts`] that keep only what
//!   detection needs — references, periods, and tags (keyed hashes, [`key`]) of normalised
//!   family names, addresses, phones, birth dates and identifiers. Never a name, address or
//!   phone in clear.
//! - [`Index`]: built from the facts; answers the detector's questions about one access —
//!   which Practitioner the audit user is ([`Index::practitioner_of`]), whether a treatment
//!   relationship active at that moment links them to the patient ([`Index::relation`]),
//!   and whether the patient is personally linked to them ([`Index::personal`]).
//!
//! The rules, in one place:
//! - A relationship is *personal* when the user (their Practitioner, one of their
//!   PractitionerRoles, or a CareTeam they are in) is a participant of the patient's
//!   Encounter, CareTeam, Appointment or EpisodeOfCare, or the patient's general
//!   practitioner; it is *departmental* when a unit the user works in (their roles'
//!   organisation, locations and services, or the department the AuditEvent names) is
//!   where the patient is (Encounter location or service provider, the managing
//!   organisation).
//! - It is active from its start (an Appointment: from its booking, else its start) until
//!   [`GRACE_AFTER_MS`] after its end (results, letters and billing follow a discharge); one
//!   without an end is active until it gets one. Never before its start: an access is not
//!   explained by a relationship that began after it.
//! - Personal links, strongest first: the patient *is* the user (a shared identifier, or
//!   family name and birth date with a given name, address or phone); a RelatedPerson or
//!   contact of the patient names the user; the patient shares the user's family name and
//!   address or phone (household); the patient is another member of staff (co-worker).

pub mod key;
pub mod resources;

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

pub use key::{CareKey, Tag};
pub use resources::{CareKind, Facts, Person};

/// How long after its end a relationship still explains an access.
pub const GRACE_AFTER_MS: i64 = 7 * 24 * 3_600_000;

/// Errors of the care context.
#[derive(Debug, thiserror::Error)]
pub enum CareError {
    #[error("care key too short: {len} bytes, at least {} needed", key::KEY_LEN)]
    KeyTooShort { len: usize },
    #[error("care key file {path}: {why}")]
    KeyFile {
        path: std::path::PathBuf,
        why: String,
    },
    #[error("no random numbers for a care key: {0}")]
    Random(String),
    #[error("context file {path}: {why}")]
    File {
        path: std::path::PathBuf,
        why: String,
    },
}

impl CareError {
    /// A stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            CareError::KeyTooShort { .. } => "care_key_short",
            CareError::KeyFile { .. } => "care_key_file",
            CareError::Random(_) => "care_key_random",
            CareError::File { .. } => "context_file",
        }
    }
}

/// A treatment relationship active at an access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Relation {
    pub kind: CareKind,
    /// The user personally (else a unit they work in).
    pub personal: bool,
    /// When it began (ms), when known.
    pub since: Option<i64>,
}

impl Relation {
    /// In words, for an explanation: "the user is on the patient's care team since
    /// 2026-11-03".
    pub fn words(&self) -> String {
        let who = if self.personal {
            format!(
                "the user is a participant of the patient's {}",
                self.kind.words()
            )
        } else {
            format!(
                "the user's department holds the patient's {}",
                self.kind.words()
            )
        };
        match self.since.and_then(chrono::DateTime::from_timestamp_millis) {
            Some(t) => format!("{who} since {}", t.format("%Y-%m-%d")),
            None => who,
        }
    }
}

/// How the patient is personally linked to the user.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Personal {
    /// Another member of staff.
    Coworker,
    /// Same family name and address or phone.
    Household,
    /// A RelatedPerson or contact of the patient is the user.
    NamedRelative,
    /// The patient is the user.
    SelfRecord,
}

impl Personal {
    pub fn words(self) -> &'static str {
        match self {
            Personal::Coworker => "the patient is a member of staff (a co-worker)",
            Personal::Household => "the patient shares the user's family name and address or phone (a relative or neighbour)",
            Personal::NamedRelative => "the patient's records name the user as a relative or contact",
            Personal::SelfRecord => "the patient is the user (self-access)",
        }
    }
}

#[derive(Debug, Clone)]
struct Link {
    kind: CareKind,
    /// Practitioners, roles and care teams, expanded to the practitioners behind them.
    who: Vec<String>,
    units: Vec<String>,
    from: Option<i64>,
    to: Option<i64>,
}

impl Link {
    fn active(&self, at: i64) -> bool {
        self.from.is_none_or(|f| at >= f)
            && self
                .to
                .is_none_or(|t| at <= t.saturating_add(GRACE_AFTER_MS))
    }
}

#[derive(Debug, Clone, Default)]
struct PatientEntry {
    person: Person,
    relatives: Vec<Person>,
    /// The practitioner this patient is, when one matches.
    staff: Option<String>,
}

/// What the index says about one access (see [`Index::assess`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Assessment {
    /// The audit user is a known Practitioner.
    pub linked: bool,
    /// The index holds the user's own Practitioner resource (name, address), so a relative
    /// or a household of theirs would show as one ([`Personal`]).
    pub described: bool,
    pub covered: bool,
    pub relation: Option<Relation>,
    pub personal: Option<Personal>,
    /// The server marks the patient's record as one to watch (restricted, VIP, staff),
    /// whoever the user is: the detector watches it as it does the site's watch list.
    pub marked: bool,
}

/// What the index holds, in counts (for `status`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct IndexCounts {
    pub practitioners: usize,
    pub roles: usize,
    pub patients: usize,
    pub patients_with_care: usize,
    pub relationships: usize,
    pub related_persons: usize,
    pub staff_as_patients: usize,
    /// Patients the server marks as records to watch.
    pub marked_patients: usize,
}

/// A unit a practitioner works in, from when to when (ms).
type UnitSpan = (String, Option<i64>, Option<i64>);

/// Everything the detector asks of the care context, built from the facts.
#[derive(Debug, Clone)]
pub struct Index {
    key: CareKey,
    practitioners: HashMap<String, Person>,
    role_of: HashMap<String, String>,
    /// Practitioner → units (with their period).
    units: HashMap<String, Vec<UnitSpan>>,
    /// Practitioner → their roles' departments in words (with each role's period).
    departments: HashMap<String, Vec<UnitSpan>>,
    by_identifier: HashMap<Tag, String>,
    patients: HashMap<String, PatientEntry>,
    /// Patient identifier tags → the Patient (for AuditEvents that name the patient by
    /// identifier rather than reference).
    patient_by_identifier: HashMap<Tag, String>,
    care: HashMap<String, Vec<Link>>,
    /// Patients whose record the server marks as one to watch: the Patient resource
    /// (`resources::marked`), or an encounter's special courtesy (VIP, staff).
    marked: HashSet<String>,
    counts: IndexCounts,
}

impl Index {
    /// The index of `facts` (each resource's latest).
    pub fn build<'a>(key: CareKey, facts: impl IntoIterator<Item = &'a Facts>) -> Index {
        let mut ix = Index {
            key,
            practitioners: HashMap::new(),
            role_of: HashMap::new(),
            units: HashMap::new(),
            departments: HashMap::new(),
            by_identifier: HashMap::new(),
            patient_by_identifier: HashMap::new(),
            patients: HashMap::new(),
            care: HashMap::new(),
            marked: HashSet::new(),
            counts: IndexCounts::default(),
        };
        let mut ambiguous: Vec<Tag> = Vec::new();
        let mut teams: HashMap<String, Vec<String>> = HashMap::new();
        let mut cares = Vec::new();
        let mut related: Vec<(String, Person)> = Vec::new();
        for f in facts {
            match f {
                Facts::Practitioner { id, person } => {
                    for t in &person.ids {
                        ix.by_identifier.insert(*t, id.clone());
                    }
                    // A value alone names a practitioner only when it names one.
                    for t in &person.bare_ids {
                        match ix.by_identifier.get(t) {
                            Some(other) if other != id => {
                                ambiguous.push(*t);
                            }
                            _ => {
                                ix.by_identifier.insert(*t, id.clone());
                            }
                        }
                    }
                    ix.practitioners.insert(id.clone(), person.clone());
                }
                Facts::Role {
                    id,
                    practitioner,
                    units,
                    from,
                    to,
                    department,
                } => {
                    ix.counts.roles += 1;
                    if let Some(p) = practitioner {
                        ix.role_of.insert(id.clone(), p.clone());
                        let mine = ix.units.entry(p.clone()).or_default();
                        mine.extend(units.iter().map(|u| (u.clone(), *from, *to)));
                        // The first unit's words, else the unit itself.
                        let named = department.clone().or_else(|| {
                            let u = units.first()?;
                            Some(u.strip_prefix("name:").unwrap_or(u).to_string())
                        });
                        if let Some(d) = named {
                            ix.departments
                                .entry(p.clone())
                                .or_default()
                                .push((d, *from, *to));
                        }
                    }
                }
                Facts::Patient {
                    id,
                    person,
                    contacts,
                    marked,
                } => {
                    let e = ix.patients.entry(id.clone()).or_default();
                    e.person = person.clone();
                    e.relatives.extend(contacts.iter().cloned());
                    if *marked {
                        ix.marked.insert(id.clone());
                    }
                }
                Facts::RelatedPerson {
                    patient, person, ..
                } => related.push((patient.clone(), person.clone())),
                Facts::Team { id, members } => {
                    teams.insert(id.clone(), members.clone());
                }
                Facts::Care {
                    id,
                    kind,
                    patient,
                    who,
                    units,
                    from,
                    to,
                    courtesy,
                } => {
                    if *courtesy {
                        ix.marked.insert(patient.clone());
                    }
                    if *kind == CareKind::CareTeam {
                        teams.insert(id.clone(), who.clone());
                    }
                    cares.push((
                        patient.clone(),
                        Link {
                            kind: *kind,
                            who: who.clone(),
                            units: units.clone(),
                            from: *from,
                            to: *to,
                        },
                    ));
                }
            }
        }
        for t in ambiguous {
            ix.by_identifier.remove(&t);
        }
        ix.counts.related_persons = related.len();
        for (patient, person) in related {
            ix.patients
                .entry(patient)
                .or_default()
                .relatives
                .push(person);
        }
        // Expand roles and care teams to the practitioners behind them (one level of teams
        // within teams).
        let expand = |who: &[String], role_of: &HashMap<String, String>| -> Vec<String> {
            let mut out: Vec<String> = Vec::new();
            let add = |w: &str, out: &mut Vec<String>| {
                if !out.iter().any(|o| o == w) {
                    out.push(w.to_string());
                }
                if let Some(p) = role_of.get(w) {
                    if !out.contains(p) {
                        out.push(p.clone());
                    }
                }
            };
            for w in who {
                add(w, &mut out);
                if let Some(members) = teams.get(w) {
                    for m in members {
                        add(m, &mut out);
                        for m2 in teams.get(m).into_iter().flatten() {
                            add(m2, &mut out);
                        }
                    }
                }
            }
            out
        };
        for (patient, mut link) in cares {
            if link.who.is_empty() && link.units.is_empty() {
                continue;
            }
            link.who = expand(&link.who, &ix.role_of);
            ix.counts.relationships += 1;
            ix.care.entry(patient).or_default().push(link);
        }
        // Which patients are staff: by identifier, else by family name and birth date.
        let mut by_birth: HashMap<Tag, Vec<&String>> = HashMap::new();
        for (id, p) in &ix.practitioners {
            if let Some(b) = p.birth {
                by_birth.entry(b).or_default().push(id);
            }
        }
        for (id, e) in &ix.patients {
            for t in e.person.ids.iter().chain(&e.person.bare_ids) {
                ix.patient_by_identifier.insert(*t, id.clone());
            }
        }
        // Identifiers with their system only: a bare value may be an MRN in one system and
        // a staff number in another.
        let mut by_qualified: HashMap<Tag, &String> = HashMap::new();
        for (id, p) in &ix.practitioners {
            for t in &p.ids {
                by_qualified.insert(*t, id);
            }
        }
        let mut staff_patients = 0;
        for e in ix.patients.values_mut() {
            let by_id = e
                .person
                .ids
                .iter()
                .find_map(|t| by_qualified.get(t))
                .map(|id| (*id).clone());
            e.staff = by_id.or_else(|| {
                let b = e.person.birth?;
                by_birth
                    .get(&b)?
                    .iter()
                    .find(|id| {
                        ix.practitioners
                            .get(**id)
                            .is_some_and(|p| p.same_person(&e.person))
                    })
                    .map(|id| (*id).clone())
            });
            staff_patients += e.staff.is_some() as usize;
        }
        ix.counts.practitioners = ix.practitioners.len();
        ix.counts.patients = ix.patients.len();
        ix.counts.patients_with_care = ix.care.len();
        ix.counts.staff_as_patients = staff_patients;
        ix.counts.marked_patients = ix.marked.len();
        ix
    }

    /// What the index holds.
    pub fn counts(&self) -> IndexCounts {
        self.counts
    }

    /// The Practitioner an audit user is: a Practitioner reference, a PractitionerRole's
    /// practitioner, or a Practitioner with that identifier (`system|value` or a value).
    /// An identifier no Practitioner carries (a login realm's, where the Practitioner
    /// carries the staff registry's: Firely writes the token's subject) names the
    /// Practitioner whose identifier has the same value in another system, when exactly one
    /// has.
    pub fn practitioner_of(&self, user: &str) -> Option<String> {
        self.practitioner_ref(user).map(Cow::into_owned)
    }

    fn practitioner_ref<'a>(&'a self, user: &'a str) -> Option<Cow<'a, str>> {
        let r = resources::ref_key(user);
        if let Some((k, _)) = self.practitioners.get_key_value(&*r) {
            return Some(Cow::Borrowed(k.as_str()));
        }
        if let Some(p) = self.role_of.get(&*r) {
            return Some(Cow::Borrowed(p.as_str()));
        }
        if resources::is_reference(&r) {
            // A reference to a Practitioner the server has not shown us.
            return r.starts_with("Practitioner/").then_some(r);
        }
        let by = |u: &str| {
            self.by_identifier
                .get(&resources::user_identifier_tag(u, &self.key))
        };
        by(user)
            .or_else(|| by(user.split_once('|')?.1))
            .map(|p| Cow::Borrowed(p.as_str()))
    }

    /// The department an audit user works in at `at_ms`, as their PractitionerRoles say
    /// (the most specific unit of the first role active then: a ward or a service before a
    /// specialty, before the organisation), for AuditEvents that name none (Medplum,
    /// Firely and Aidbox write none by default): its name as the resource gives it, else
    /// its reference.
    pub fn department_of(&self, user: &str, at_ms: i64) -> Option<&str> {
        let me = self.practitioner_ref(user)?;
        let (d, _, _) = self.departments.get(&*me)?.iter().find(|(_, from, to)| {
            from.is_none_or(|f| at_ms >= f) && to.is_none_or(|t| at_ms <= t)
        })?;
        Some(d)
    }

    /// The Patient an AuditEvent's patient is: its reference, or a Patient with that
    /// identifier (`system|value` or a value).
    fn patient_ref<'a>(&'a self, patient: &'a str) -> Cow<'a, str> {
        let k = resources::ref_key(patient);
        if self.care.contains_key(&*k) || self.patients.contains_key(&*k) {
            return k;
        }
        if resources::is_reference(&k) {
            return k;
        }
        match self
            .patient_by_identifier
            .get(&resources::user_identifier_tag(patient, &self.key))
        {
            Some(p) => Cow::Borrowed(p.as_str()),
            None => k,
        }
    }

    /// Whether the index knows any treatment relationship of the patient (else "no
    /// relationship" says nothing).
    pub fn covers(&self, patient: &str) -> bool {
        self.care.contains_key(&*self.patient_ref(patient))
    }

    /// The treatment relationship linking the user (the audit user `user`, working in
    /// `event_unit` when the AuditEvent names one) to the patient at `at_ms`, personal ones
    /// first, then the oldest.
    pub fn relation(
        &self,
        user: &str,
        event_unit: Option<&str>,
        patient: &str,
        at_ms: i64,
    ) -> Option<Relation> {
        let links = self.care.get(&*self.patient_ref(patient))?;
        let me = self.practitioner_ref(user);
        self.relation_in(
            links,
            me.as_deref(),
            &resources::ref_key(user),
            event_unit,
            at_ms,
        )
    }

    fn relation_in(
        &self,
        links: &[Link],
        me: Option<&str>,
        user_ref: &str,
        event_unit: Option<&str>,
        at_ms: i64,
    ) -> Option<Relation> {
        let mut my_units: Vec<&str> = Vec::new();
        if let Some(us) = me.and_then(|m| self.units.get(m)) {
            for (u, from, to) in us {
                if from.is_none_or(|f| at_ms >= f) && to.is_none_or(|t| at_ms <= t) {
                    my_units.push(u);
                }
            }
        }
        let event_unit = event_unit.and_then(resources::unit_name);
        if let Some(u) = &event_unit {
            my_units.push(u);
        }
        let rank = |r: &Relation| (r.personal, std::cmp::Reverse(r.since.unwrap_or(i64::MIN)));
        let mut best: Option<Relation> = None;
        for l in links.iter().filter(|l| l.active(at_ms)) {
            let personal = l
                .who
                .iter()
                .any(|w| Some(w.as_str()) == me || w == user_ref);
            let unit = !personal && l.units.iter().any(|u| my_units.contains(&u.as_str()));
            if !(personal || unit) {
                continue;
            }
            let r = Relation {
                kind: l.kind,
                personal,
                since: l.from,
            };
            best = Some(match best {
                Some(b) if rank(&b) >= rank(&r) => b,
                _ => r,
            });
        }
        best
    }

    /// Everything the index says about one access, in one pass: whether it can answer for
    /// it at all (the patient has known relationships, and the user is a known
    /// Practitioner or the event names their unit), the active relationship, the personal
    /// link.
    pub fn assess(
        &self,
        user: &str,
        event_unit: Option<&str>,
        patient: &str,
        at_ms: i64,
    ) -> Assessment {
        let me = self.practitioner_ref(user);
        let p = self.patient_ref(patient);
        let links = self.care.get(&*p);
        let covered = links.is_some() && (me.is_some() || event_unit.is_some());
        let relation = match (links, covered) {
            (Some(links), true) => self.relation_in(
                links,
                me.as_deref(),
                &resources::ref_key(user),
                event_unit,
                at_ms,
            ),
            _ => None,
        };
        Assessment {
            linked: me.is_some(),
            described: me
                .as_deref()
                .is_some_and(|m| self.practitioners.contains_key(m)),
            covered,
            relation,
            personal: me.as_deref().and_then(|m| self.personal_of(m, &p)),
            marked: self.marked.contains(&*p),
        }
    }

    /// How the patient is personally linked to the user, the strongest link.
    pub fn personal(&self, user: &str, patient: &str) -> Option<Personal> {
        self.personal_of(&self.practitioner_ref(user)?, &self.patient_ref(patient))
    }

    fn personal_of(&self, me: &str, patient: &str) -> Option<Personal> {
        let pat = self.patients.get(patient)?;
        if pat.staff.as_deref() == Some(me) {
            return Some(Personal::SelfRecord);
        }
        let mine = self.practitioners.get(me);
        if let Some(p) = mine {
            if p.same_person(&pat.person) {
                return Some(Personal::SelfRecord);
            }
            if pat.relatives.iter().any(|r| p.named_by(r)) {
                return Some(Personal::NamedRelative);
            }
            if p.same_family(&pat.person) && p.same_home(&pat.person) {
                return Some(Personal::Household);
            }
        }
        pat.staff.is_some().then_some(Personal::Coworker)
    }
}

/// The latest facts of every resource, by `Type/id` (what the state database keeps, and
/// what offline commands read from NDJSON).
#[derive(Debug, Clone, Default)]
pub struct FactSet {
    by_id: HashMap<String, Facts>,
}

impl FactSet {
    /// Keep `f` as its resource's latest facts.
    pub fn upsert(&mut self, f: Facts) {
        self.by_id.insert(f.id().to_string(), f);
    }
    /// Whether `f` differs from what is kept for its resource (new, or changed).
    pub fn changes(&self, f: &Facts) -> bool {
        self.by_id.get(f.id()) != Some(f)
    }
    pub fn len(&self) -> usize {
        self.by_id.len()
    }
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = &Facts> {
        self.by_id.values()
    }
    /// The index of these facts.
    pub fn index(&self, key: CareKey) -> Index {
        Index::build(key, self.by_id.values())
    }

    /// Read NDJSON files of resources (one resource or Bundle per line), tagging with `key`.
    /// Lines that are not JSON are counted, not fatal; a missing file is an error.
    pub fn read_ndjson(
        paths: &[std::path::PathBuf],
        key: &CareKey,
    ) -> Result<(FactSet, ReadSummary), CareError> {
        use std::io::BufRead;
        let mut set = FactSet::default();
        let mut sum = ReadSummary::default();
        for path in paths {
            let f = std::fs::File::open(path).map_err(|e| CareError::File {
                path: path.clone(),
                why: e.to_string(),
            })?;
            for line in std::io::BufReader::new(f).lines() {
                let line = line.map_err(|e| CareError::File {
                    path: path.clone(),
                    why: e.to_string(),
                })?;
                if line.trim().is_empty() {
                    continue;
                }
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    sum.unreadable += 1;
                    continue;
                };
                for r in resources::resources(v) {
                    let facts = resources::read(&r, key);
                    match facts.is_empty() {
                        true => sum.skipped += 1,
                        false => sum.read += 1,
                    }
                    facts.into_iter().for_each(|f| set.upsert(f));
                }
            }
        }
        Ok((set, sum))
    }
}

/// What reading context files found.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadSummary {
    pub read: usize,
    pub skipped: usize,
    pub unreadable: usize,
}

#[cfg(test)]
mod tests;
