//! A synthetic hospital producing FHIR R4 AuditEvents (IHE BALP style), deterministic by
//! seed, with labelled injected anomalies. Used for the shipped model, the demo and the
//! benchmarks. Departments, roles, shifts, care teams, logins, searches and exports.

use base64::Engine as _;
use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::json;
use serde_json::value::RawValue;
use std::collections::HashMap;

use fhir_edge_core::alerts::AlertKind;
use fhir_edge_core::rng::Rng;

/// The behaviours the simulator injects (written to `labels.csv` by name), in the order
/// its seeded draws index them.
pub const ANOMALY_KINDS: &[AlertKind] = &[
    AlertKind::AfterHours,
    AlertKind::BulkAccess,
    AlertKind::VipSnooping,
    AlertKind::CrossDepartment,
    AlertKind::FailedLogins,
    AlertKind::NewSource,
    AlertKind::MassExport,
    AlertKind::DormantAccount,
    AlertKind::FamilySnooping,
];

/// What an injected event is labelled in `labels.csv`: one of [`ANOMALY_KINDS`] by its
/// name, or a scenario named for itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injected {
    Behaviour(AlertKind),
    /// A member of staff opens a colleague's record — a colleague who is a patient here —
    /// with no work to do on it (`coworker_snooping`).
    CoworkerSnooping,
}

impl std::fmt::Display for Injected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Injected::Behaviour(k) => k.fmt(f),
            Injected::CoworkerSnooping => f.write_str("coworker_snooping"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SimOptions {
    pub days: u32,
    pub seed: u64,
    pub users: usize,
    pub patients: usize,
    pub start: DateTime<Utc>,
    /// Anomalies are injected from this day on (0-based); earlier days are clean baseline.
    pub anomalies_from_day: u32,
    /// Anomaly incidents per simulated day (each incident is one or more events).
    pub incidents_per_day: f64,
    /// Multiplies every user's activity rate.
    pub activity: f64,
    pub tz: chrono_tz::Tz,
    /// How the hospital works (the default is the style the detector was developed on).
    pub style: Style,
}

/// How a hospital works, one choice per aspect, drawn independently. The default
/// (`classic`) is the hospital the detector was developed on; the others exist so quality
/// can be reported on styles held out of all tuning (see BENCHMARKS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Style {
    pub shifts: Shifts,
    pub network: Network,
    pub roles: Roles,
    /// A few staff run large reports (paged searches of hundreds of records) as their job.
    pub analysts: bool,
    /// Staff names written with their credentials after them, as many EHRs show users
    /// ("Jane Smith, MD", "Jane Smith, RN"), where the classic style writes "Dr. Jane
    /// Smith" and "Jane Smith". Patients' names are written as before. Never drawn: a
    /// style named for a check that names are read as other systems write them.
    pub credentials: bool,
    /// The server labels records in the Patient resource's `meta.security`, as sites that
    /// restrict them do: every member of staff's own record as an employee's (`EMP`), and
    /// one patient in twenty's as restricted (`R`: mental health, HIV and the like, drawn
    /// from a generator of its own). Never drawn: a style named for a check that many
    /// marked records do not flood the queue.
    pub marked_records: bool,
}

/// Shift systems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shifts {
    /// Day, late and (in the emergency and intensive-care departments) 12-hour night shifts.
    #[default]
    Classic,
    /// Clinicians work 12 hours, day or night, three or four days a week.
    TwelveHour,
    /// Clinicians rotate weekly through early, late and night shifts of 8 hours.
    Rotating,
    /// Classic, and physicians are called at night now and then for a few minutes' work.
    OnCall,
}

/// Workstation and network layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// Each user at their own PC, one address per user.
    #[default]
    PersonalPcs,
    /// Shared nurse stations: each session from one of the department's few stations.
    SharedStations,
    /// Thin clients behind one NAT address (mobile behind another).
    Nat,
    /// Addresses from DHCP, a new one in the department's range every day.
    Churning,
}

/// Staff mixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Roles {
    #[default]
    General,
    /// A teaching hospital: a quarter of the clinicians are residents rotating through a
    /// new department every week.
    Teaching,
    /// Outpatient clinics: office hours on weekdays only.
    Outpatient,
    /// Billing-heavy: a third of the staff are coders who open many patients of every
    /// department each hour.
    BillingHeavy,
}

impl Style {
    /// Read `classic`, or aspects joined by `,` (`rotating,nat,teaching,analysts`);
    /// unnamed aspects keep the classic choice.
    pub fn parse(s: &str) -> Result<Style, String> {
        let mut st = Style::default();
        for w in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match w {
                "classic" => {}
                "12h" | "twelve-hour" => st.shifts = Shifts::TwelveHour,
                "rotating" => st.shifts = Shifts::Rotating,
                "on-call" => st.shifts = Shifts::OnCall,
                "personal" => st.network = Network::PersonalPcs,
                "stations" => st.network = Network::SharedStations,
                "nat" => st.network = Network::Nat,
                "churning" => st.network = Network::Churning,
                "general" => st.roles = Roles::General,
                "teaching" => st.roles = Roles::Teaching,
                "outpatient" => st.roles = Roles::Outpatient,
                "billing" => st.roles = Roles::BillingHeavy,
                "analysts" => st.analysts = true,
                "credentials" => st.credentials = true,
                "marked-records" => st.marked_records = true,
                other => {
                    return Err(format!(
                        "unknown style aspect {other:?} (shifts: classic, 12h, rotating, on-call; \
                         network: personal, stations, nat, churning; roles: general, teaching, \
                         outpatient, billing; analysts; credentials; marked-records)"
                    ))
                }
            }
        }
        Ok(st)
    }

    /// Draw every aspect independently from `seed`.
    pub fn draw(seed: u64) -> Style {
        let mut r = Rng::new(seed ^ 0x5_7713_5EED);
        Style {
            shifts: *r.pick(&[
                Shifts::Classic,
                Shifts::TwelveHour,
                Shifts::Rotating,
                Shifts::OnCall,
            ]),
            network: *r.pick(&[
                Network::PersonalPcs,
                Network::SharedStations,
                Network::Nat,
                Network::Churning,
            ]),
            roles: *r.pick(&[
                Roles::General,
                Roles::Teaching,
                Roles::Outpatient,
                Roles::BillingHeavy,
            ]),
            analysts: r.chance(0.5),
            credentials: false,
            marked_records: false,
        }
    }

    /// Whether the staff work as in the classic style: the default, marks in the context
    /// aside (`marked_records` changes no event).
    pub fn works_classic(&self) -> bool {
        Style {
            marked_records: false,
            ..*self
        } == Style::default()
    }

    /// The style's name, as `parse` reads it.
    pub fn name(&self) -> String {
        let shifts = match self.shifts {
            Shifts::Classic => "classic",
            Shifts::TwelveHour => "12h",
            Shifts::Rotating => "rotating",
            Shifts::OnCall => "on-call",
        };
        let network = match self.network {
            Network::PersonalPcs => "personal",
            Network::SharedStations => "stations",
            Network::Nat => "nat",
            Network::Churning => "churning",
        };
        let roles = match self.roles {
            Roles::General => "general",
            Roles::Teaching => "teaching",
            Roles::Outpatient => "outpatient",
            Roles::BillingHeavy => "billing",
        };
        let mut n = format!("{shifts},{network},{roles}");
        if self.analysts {
            n.push_str(",analysts");
        }
        if self.marked_records {
            n.push_str(",marked-records");
        }
        if self.credentials {
            n.push_str(",credentials");
        }
        n
    }
}

impl SimOptions {
    pub fn new(days: u32, seed: u64) -> Self {
        SimOptions {
            days,
            seed,
            users: 150,
            patients: 3000,
            start: Utc.with_ymd_and_hms(2026, 1, 5, 0, 0, 0).unwrap(),
            anomalies_from_day: days.saturating_mul(3) / 4,
            incidents_per_day: 9.0,
            activity: 1.0,
            tz: chrono_tz::UTC,
            style: Style::default(),
        }
    }
}

/// One simulated event.
#[derive(Debug, Clone)]
pub struct SimEvent {
    pub id: String,
    pub recorded: DateTime<Utc>,
    /// The AuditEvent as written (see [`SimEvent::json`]).
    raw: Box<RawValue>,
    pub label: Option<Injected>,
    /// The injected incident (numbered from 0) a labelled event belongs to.
    pub incident: Option<u32>,
}

impl SimEvent {
    /// An event of `id` recorded at `recorded`, with its AuditEvent `json`.
    pub fn new(
        id: String,
        recorded: DateTime<Utc>,
        json: &serde_json::Value,
        label: Option<Injected>,
        incident: Option<u32>,
    ) -> SimEvent {
        SimEvent {
            id,
            recorded,
            raw: to_raw(json),
            label,
            incident,
        }
    }

    /// The AuditEvent, parsed. Events are kept serialized: a parsed AuditEvent takes about
    /// 16 KB (a tree of small maps), its text about 1.3 KB, and a large hospital's weeks
    /// hold millions of events (run C of the quality benchmark: 6.6 GB for 401,000 events
    /// parsed, BENCHMARKS.md).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.raw.get()).expect("a simulated event is JSON")
    }

    /// The AuditEvent as written (JSON text).
    pub fn raw(&self) -> &RawValue {
        &self.raw
    }

    /// Replace the AuditEvent with `json`.
    pub fn set_json(&mut self, json: &serde_json::Value) {
        self.raw = to_raw(json);
    }

    /// The event with its AuditEvent replaced by `json`, label and incident kept.
    pub fn with_json(self, json: &serde_json::Value) -> SimEvent {
        SimEvent {
            raw: to_raw(json),
            ..self
        }
    }
}

fn to_raw(json: &serde_json::Value) -> Box<RawValue> {
    serde_json::value::to_raw_value(json).expect("a JSON value serializes")
}

const DEPTS: &[(&str, bool)] = &[
    ("Cardiology", false),
    ("Oncology", false),
    ("Emergency", false),
    ("Pediatrics", false),
    ("Orthopedics", false),
    ("Neurology", false),
    ("Surgery", false),
    ("Intensive Care", false),
    ("Internal Medicine", false),
    ("Radiology", true),
    ("Laboratory", true),
    ("Pharmacy", true),
];
const FIRST: &[&str] = &[
    "Ann", "Ben", "Carla", "David", "Eva", "Farid", "Grace", "Hugo", "Ines", "Jon", "Kira", "Liam",
    "Mona", "Nils", "Olga", "Paul", "Quinn", "Rosa", "Sam", "Tara", "Uwe", "Vera", "Will", "Yara",
    "Zoe",
];
const LAST: &[&str] = &[
    "Adler",
    "Baker",
    "Costa",
    "Dubois",
    "Eriksen",
    "Fischer",
    "Garcia",
    "Hoffmann",
    "Ivanova",
    "Jansen",
    "Kowalski",
    "Larsen",
    "Moreau",
    "Novak",
    "Okafor",
    "Petrov",
    "Quist",
    "Rossi",
    "Schmidt",
    "Tanaka",
    "Ulrich",
    "Varga",
    "Weber",
    "Xu",
    "Yilmaz",
    "Zimmer",
    "Andersen",
    "Bianchi",
    "Castillo",
    "Dahl",
    "Engel",
    "Fontaine",
    "Gruber",
    "Haas",
    "Iversen",
    "Jovanovic",
    "Keller",
    "Lindqvist",
    "Meyer",
    "Nakamura",
    "Olsen",
    "Pereira",
    "Richter",
    "Sato",
    "Thomsen",
    "Urban",
    "Vogel",
    "Wagner",
    "Young",
    "Ziegler",
    "Albers",
    "Brandt",
    "Claes",
    "Dietrich",
    "Ebert",
    "Frank",
    "Graf",
    "Horn",
    "Imhof",
    "Jung",
    "Krause",
    "Lorenz",
    "Maier",
    "Naumann",
    "Ott",
    "Pohl",
    "Roth",
    "Sauer",
    "Thiel",
    "Unger",
    "Voss",
    "Winkler",
    "Zeller",
    "Arnold",
    "Berg",
    "Conrad",
    "Decker",
    "Eder",
    "Fuchs",
    "Geiger",
    "Hahn",
    "Ilic",
    "Jaeger",
    "Kuhn",
    "Lang",
    "Mertens",
    "Nagel",
    "Oswald",
    "Paulsen",
    "Reuter",
    "Schulz",
    "Timm",
    "Uhl",
    "Vetter",
    "Wolf",
    "Yildiz",
    "Zander",
];

#[derive(Clone, Copy, PartialEq)]
enum Role {
    Physician,
    Nurse,
    Clerk,
    Technician,
}

#[derive(Clone)]
struct User {
    reference: String,
    display: String,
    role: Role,
    /// Style traits (see `apply_style`): a resident rotating departments weekly, a billing
    /// coder, a physician on call, an analyst running reports, a weekly shift rotation.
    resident: bool,
    billing: bool,
    on_call: bool,
    analyst: bool,
    rotation: Option<u8>,
    last: String,
    dept: usize,
    shift_start: u32,
    shift_len: u32,
    workdays: [bool; 7],
    ip: String,
    app: &'static str,
    rate_per_hour: f64,
    dormant: bool,
    /// Patients who are the user's family (they share the user's family name).
    relatives: Vec<usize>,
    /// Given name (the display carries it too, after any title).
    first: &'static str,
}

struct Patient {
    reference: String,
    display: String,
    first: &'static str,
    last: String,
    dept: usize,
    /// Departments asked to consult on this patient (their access is explained).
    consults: Vec<usize>,
    admit_day: i64,
    discharge_day: i64,
    care_team: Vec<usize>,
    /// On the hospital's watch list: a public figure, a board member, staff as a patient.
    watched: bool,
    /// The member of staff (index into the users) this patient is.
    staff: Option<usize>,
}

impl Patient {
    /// Whether `dept` has a working relationship with this patient: it is the patient's
    /// department, or one asked to consult (its access is explained).
    fn cared_for_by(&self, dept: usize) -> bool {
        self.dept == dept || self.consults.contains(&dept)
    }
}

struct Hospital {
    users: Vec<User>,
    patients: Vec<Patient>,
}

fn build(opts: &SimOptions, rng: &mut Rng) -> Hospital {
    let names = Surnames::new();
    let mut users = Vec::with_capacity(opts.users);
    for i in 0..opts.users {
        let dept = if i < DEPTS.len() {
            i
        } else {
            rng.below(DEPTS.len() as u64) as usize
        };
        let service = DEPTS[dept].1;
        let role = if service {
            Role::Technician
        } else {
            match rng.below(10) {
                0..=2 => Role::Physician,
                3..=7 => Role::Nurse,
                _ => Role::Clerk,
            }
        };
        let (shift_start, shift_len) = match (role, dept) {
            (Role::Clerk, _) => (8, 9),
            (_, 2) | (_, 7) => *rng.pick(&[(7, 12), (19, 12), (15, 8)]),
            _ => *rng.pick(&[(7, 10), (7, 10), (8, 9), (14, 9)]),
        };
        let mut workdays = [true, true, true, true, true, false, false];
        if role != Role::Clerk {
            // Clinicians: five days of seven, some weekends.
            let off1 = rng.below(7) as usize;
            let off2 = (off1 + 1 + rng.below(3) as usize) % 7;
            workdays = [true; 7];
            workdays[off1] = false;
            workdays[off2] = false;
        }
        let first = *rng.pick(FIRST);
        let last = names.draw(rng);
        let display = match role {
            Role::Physician => format!("Dr. {first} {last}"),
            _ => format!("{first} {last}"),
        };
        let rate = match role {
            Role::Physician => 5.0,
            Role::Nurse => 7.0,
            Role::Clerk => 9.0,
            Role::Technician => 8.0,
        } * (0.6 + 0.8 * rng.f64())
            * opts.activity;
        users.push(User {
            reference: format!("Practitioner/u{i}"),
            display,
            role,
            resident: false,
            billing: false,
            on_call: false,
            analyst: false,
            rotation: None,
            last,
            dept,
            shift_start,
            shift_len,
            workdays,
            ip: format!("10.{}.{}.{}", 10 + dept, rng.below(4), 10 + rng.below(200)),
            app: if rng.chance(0.15) {
                "Device/ehr-mobile"
            } else {
                "Device/ehr-web"
            },
            rate_per_hour: rate,
            dormant: false,
            relatives: Vec::new(),
            first,
        });
    }
    // A few accounts go quiet after the first days (for the dormant-account scenario).
    let n_dormant = (opts.users / 40).max(1);
    for _ in 0..n_dormant {
        let i = rng.below(users.len() as u64) as usize;
        users[i].dormant = true;
    }
    // Who is asked to consult on whose patients follows a pattern, as in a real hospital
    // (cardiology on surgical and intensive-care patients, say): each clinical department
    // mostly calls on two or three partner departments, now and then on any other one. The
    // partners are drawn from the seed, so runs with different seeds differ.
    let partners: Vec<Vec<usize>> = (0..9)
        .map(|d| {
            let mut ps = Vec::new();
            let n = 2 + rng.below(2) as usize;
            while ps.len() < n {
                let c = rng.below(9) as usize;
                if c != d && !ps.contains(&c) {
                    ps.push(c);
                }
            }
            ps
        })
        .collect();
    let mut patients = Vec::with_capacity(opts.patients);
    let total_days = opts.days as i64;
    for i in 0..opts.patients {
        // Clinical departments only admit.
        let dept = rng.below(9) as usize;
        let admit_day = rng.below((total_days + 10) as u64) as i64 - 10;
        let stay = 1 + rng.exp(4.0) as i64;
        let dept_users: Vec<usize> = users
            .iter()
            .enumerate()
            .filter(|(_, u)| u.dept == dept && !u.dormant)
            .map(|(j, _)| j)
            .collect();
        let mut care_team = Vec::new();
        for _ in 0..(3 + rng.below(4)) {
            if !dept_users.is_empty() {
                care_team.push(*rng.pick(&dept_users));
            }
        }
        let first = *rng.pick(FIRST);
        let last = names.draw(rng);
        let mut consults = Vec::new();
        for _ in 0..rng.below(3) {
            let c = if rng.chance(0.85) {
                *rng.pick(&partners[dept])
            } else {
                rng.below(9) as usize
            };
            if c != dept && !consults.contains(&c) {
                consults.push(c);
            }
        }
        patients.push(Patient {
            reference: format!("Patient/p{i}"),
            display: format!("{last}, {first}"),
            first,
            last,
            dept,
            consults,
            admit_day,
            discharge_day: admit_day + stay,
            care_team,
            watched: false,
            staff: None,
        });
    }
    // The hospital knows some of its VIPs and watches their records: one patient in a
    // hundred.
    if !patients.is_empty() {
        for _ in 0..(patients.len() / 100).max(1) {
            let i = rng.below(patients.len() as u64) as usize;
            patients[i].watched = true;
        }
    }
    // Staff live near the hospital, and their families are its patients too: about a third
    // of the staff have one or two relatives among the patients, who carry their family name.
    let mut taken = vec![false; patients.len()];
    for u in users.iter_mut() {
        if patients.is_empty() || !rng.chance(0.35) {
            continue;
        }
        for _ in 0..(1 + rng.below(2)) {
            let pi = rng.below(patients.len() as u64) as usize;
            if std::mem::replace(&mut taken[pi], true) {
                continue;
            }
            let p = &mut patients[pi];
            p.last = u.last.clone();
            p.display = format!("{}, {}", p.last, p.first);
            u.relatives.push(pi);
        }
    }
    apply_style(&mut users, opts);
    staff_as_patients(&users, &mut patients, &taken, opts.seed);
    Hospital { users, patients }
}

/// Staff are patients too: one in 25 of them (at least one) has a record here, treated by
/// another department than their own. Drawn on a generator of its own, so every other draw,
/// and every event but these records' names, stays as it was.
fn staff_as_patients(users: &[User], patients: &mut [Patient], taken: &[bool], seed: u64) {
    let mut r = Rng::new(seed ^ 0x57AF_F0A7);
    let mut chosen = std::collections::HashSet::new();
    for _ in 0..(users.len() / 25).max(1) {
        let ui = r.below(users.len() as u64) as usize;
        let u = &users[ui];
        let free: Vec<usize> = (0..patients.len())
            .filter(|&i| !taken[i] && patients[i].staff.is_none() && !patients[i].watched)
            .filter(|&i| patients[i].dept != u.dept)
            .collect();
        if free.is_empty() || !chosen.insert(ui) {
            continue;
        }
        let p = &mut patients[*r.pick(&free)];
        (p.first, p.last) = (u.first, u.last.clone());
        p.display = format!("{}, {}", p.last, p.first);
        p.staff = Some(ui);
    }
}

/// Make the staff work in the hospital's style. Draws come from a generator of their own,
/// so the classic style's hospital is the same as before styles existed.
fn apply_style(users: &mut [User], opts: &SimOptions) {
    let st = opts.style;
    if st.works_classic() {
        return;
    }
    if st.credentials {
        for u in users.iter_mut() {
            let name = u.display.trim_start_matches("Dr. ").to_string();
            u.display = match u.role {
                Role::Physician => format!("{name}, MD"),
                Role::Nurse => format!("{name}, RN"),
                Role::Clerk | Role::Technician => name,
            };
        }
    }
    let mut r = Rng::new(opts.seed ^ 0x57_11E5);
    let weekdays = [true, true, true, true, true, false, false];
    for (i, u) in users.iter_mut().enumerate() {
        // The first user of each department stays, so every department has staff.
        let keep = i < DEPTS.len();
        let clinician = matches!(u.role, Role::Physician | Role::Nurse);
        match st.roles {
            Roles::General => {}
            Roles::Teaching => u.resident = clinician && !keep && r.chance(0.25),
            Roles::Outpatient => {
                (u.shift_start, u.shift_len) = *r.pick(&[(7, 10), (8, 9), (8, 9), (9, 8)]);
                u.workdays = weekdays;
            }
            Roles::BillingHeavy if !keep && r.chance(0.33) => {
                u.role = Role::Clerk;
                u.billing = true;
                (u.shift_start, u.shift_len) = (8, 9);
                u.workdays = weekdays;
                u.rate_per_hour = 14.0 * (0.6 + 0.8 * r.f64()) * opts.activity;
            }
            Roles::BillingHeavy => {}
        }
        let shift_worker = u.role != Role::Clerk && st.roles != Roles::Outpatient;
        match st.shifts {
            Shifts::Classic => {}
            Shifts::TwelveHour if shift_worker => {
                (u.shift_start, u.shift_len) = *r.pick(&[(7, 12), (7, 12), (19, 12)]);
                u.workdays = [false; 7];
                let mut n = 0;
                while n < 3 + r.below(2) {
                    let d = r.below(7) as usize;
                    n += !std::mem::replace(&mut u.workdays[d], true) as u64;
                }
            }
            Shifts::Rotating if shift_worker => {
                u.rotation = Some(r.below(3) as u8);
                u.shift_len = 8;
            }
            Shifts::OnCall => u.on_call = u.role == Role::Physician,
            _ => {}
        }
        match st.network {
            Network::Nat => {
                u.ip = if u.app == "Device/ehr-mobile" {
                    "10.0.0.2"
                } else {
                    "10.0.0.1"
                }
                .into()
            }
            Network::PersonalPcs | Network::SharedStations | Network::Churning => {}
        }
    }
    if st.analysts {
        let n = (users.len() / 50).max(1);
        for _ in 0..n {
            let i = DEPTS.len() + r.below((users.len() - DEPTS.len()).max(1) as u64) as usize;
            if let Some(u) = users.get_mut(i) {
                u.analyst = true;
                u.role = Role::Clerk;
                (u.shift_start, u.shift_len) = (8, 9);
                u.workdays = weekdays;
            }
        }
    }
}

/// The address a session comes from, in the hospital's network style.
fn session_ip(st: Style, u: &User, ui: usize, day: i64, r: &mut Rng) -> String {
    // Some sessions come in over the VPN, from its pool, in every style but the classic.
    if !st.works_classic() && r.chance(0.04) {
        return format!("172.16.{}.{}", r.below(4), 2 + r.below(250));
    }
    match st.network {
        Network::PersonalPcs | Network::Nat => u.ip.clone(),
        Network::SharedStations => department_ip(st, u.dept, day, r),
        Network::Churning => format!(
            "10.{}.{}.{}",
            10 + u.dept,
            day.rem_euclid(4),
            10 + (ui as i64 * 7919 + day * 104_729).rem_euclid(240)
        ),
    }
}

/// The address an injected episode of `u` on `day` comes from: where a session of theirs
/// that day would (`session_ip`, on a generator of its own so the rest of the hospital is
/// drawn as before), so that only the behaviour injected sets it apart. Before this, every
/// episode came from the user's own PC (`User::ip`), which a hospital of shared stations
/// never uses by day: a network the site seldom saw told the detector an episode was one.
fn incident_ip(opts: &SimOptions, h: &Hospital, u: &User, day: i64, n: u64) -> String {
    let ui = h
        .users
        .iter()
        .position(|x| x.reference == u.reference)
        .unwrap_or(0);
    session_ip(
        opts.style,
        u,
        ui,
        day,
        &mut Rng::new(opts.seed ^ (n << 8) ^ 0x1_9AD_D12),
    )
}

/// A workstation of department `dept` on `day`, as the hospital's network style addresses
/// them (drawn on `v`).
fn department_ip(st: Style, dept: usize, day: i64, v: &mut Rng) -> String {
    match st.network {
        Network::SharedStations => format!("10.{}.50.{}", 10 + dept, 1 + v.below(6)),
        Network::Churning => format!(
            "10.{}.{}.{}",
            10 + dept,
            day.rem_euclid(4),
            10 + v.below(240)
        ),
        Network::PersonalPcs | Network::Nat => {
            format!("10.{}.{}.{}", 10 + dept, v.below(4), 10 + v.below(200))
        }
    }
}

/// When an injected episode of `u` on `day` begins: within that day's shift (`shift_on`),
/// from half an hour in to an hour before its end.
fn episode_start(u: &User, day: i64, midnight: DateTime<Utc>, r: &mut Rng) -> DateTime<Utc> {
    let (start, len) = shift_on(u, day);
    midnight
        + Duration::hours(start as i64)
        + Duration::minutes(30 + r.below((len as u64).max(2) * 60 - 60) as i64)
}

/// A user's shift on `day` (start hour, length in hours): a weekly rotation moves it.
fn shift_on(u: &User, day: i64) -> (u32, u32) {
    match u.rotation {
        Some(o) => ([7, 15, 23][((day / 7 + o as i64) % 3) as usize], 8),
        None => (u.shift_start, u.shift_len),
    }
}

/// Family names as a population has them: a few common, most of them rare. The name of rank
/// k (from 1) is drawn with weight 1/sqrt(k) among `SURNAMES` names, the single names first,
/// then double-barrelled ones. The commonest is 1.1% of people (Smith is 0.8% of the US
/// population in the 2010 census), and two people picked at random share a family name about
/// once in a thousand. A small list drawn uniformly would make every user a namesake of one
/// patient in a hundred, and the chance namesake ten times as common as it is.
struct Surnames {
    cdf: Vec<f64>,
}

const SURNAMES: usize = 2_000;

impl Surnames {
    fn new() -> Self {
        let mut acc = 0.0;
        let cdf = (1..=SURNAMES)
            .map(|k| {
                acc += 1.0 / (k as f64).sqrt();
                acc
            })
            .collect();
        Surnames { cdf }
    }

    fn draw(&self, rng: &mut Rng) -> String {
        let total = self.cdf[self.cdf.len() - 1];
        let x = rng.f64() * total;
        let rank = self.cdf.partition_point(|c| *c <= x).min(SURNAMES - 1);
        surname(rank)
    }
}

/// The family name of rank `rank` (from 0).
fn surname(rank: usize) -> String {
    let n = LAST.len();
    if rank < n {
        return LAST[rank].to_string();
    }
    let k = rank - n;
    let (a, b) = (k % n, (k % n + 1 + k / n) % n);
    format!("{}-{}", LAST[a], LAST[b])
}

struct Emitter {
    seed: u64,
    n: u64,
    out: Vec<SimEvent>,
    /// The hospital's share of routine requests that are refused (a read of a record id
    /// that does not exist, a version conflict on an update): 0.2%–3%, drawn per seed.
    routine_failure_rate: f64,
    /// A generator of its own for routine failures, so they change no other draw.
    failures: Rng,
    /// Incidents injected so far, and the one being injected.
    incidents: u32,
    current: Option<u32>,
    /// When each user first opened each patient's record so far (by `pair_key`).
    worked_on: HashMap<u64, DateTime<Utc>>,
}

/// The key of a (user, patient) pair in `Emitter::worked_on`.
fn pair_key(u: &User, p: &Patient) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&u.reference, &p.reference).hash(&mut h);
    h.finish()
}

#[derive(Clone, Copy)]
enum Act<'a> {
    Read,
    Search(u32),
    Update,
    Create,
    Export,
    Login {
        ok: bool,
    },
    Logout,
    /// A search given as its request line.
    Query(&'a str),
}

impl Emitter {
    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        t: DateTime<Utc>,
        u: &User,
        ip: &str,
        app: &str,
        p: Option<&Patient>,
        act: Act,
        label: Option<Injected>,
        rng: &mut Rng,
    ) {
        self.n += 1;
        let id = format!("sim{}-{}", self.seed, self.n);
        let last_updated = t + Duration::milliseconds(20 + rng.below(400) as i64);
        let (type_, subtype, action, outcome) = match act {
            Act::Login { ok } => (
                json!({"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110114", "display": "User Authentication"}),
                json!({"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110122", "display": "Login"}),
                "E",
                if ok { "0" } else { "4" },
            ),
            Act::Logout => (
                json!({"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110114", "display": "User Authentication"}),
                json!({"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110123", "display": "Logout"}),
                "E",
                "0",
            ),
            _ => {
                let (code, action) = match act {
                    Act::Read => ("read", "R"),
                    Act::Search(_) | Act::Query(_) => ("search-type", "E"),
                    Act::Update => ("update", "U"),
                    Act::Create => ("create", "C"),
                    Act::Export => ("operation", "E"),
                    _ => ("read", "R"),
                };
                (
                    json!({"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "Restful Operation"}),
                    json!({"system": "http://hl7.org/fhir/restful-interaction", "code": code}),
                    action,
                    // Normal work meets refusals now and then: 404 on a read, 409 on an
                    // update (outcome 4, minor failure).
                    match (act, label) {
                        (Act::Read | Act::Update, None)
                            if self.failures.f64() < self.routine_failure_rate =>
                        {
                            "4"
                        }
                        _ => "0",
                    },
                )
            }
        };
        let dept = DEPTS[u.dept].0;
        let mut entity = Vec::new();
        if let Some(p) = p {
            entity.push(json!({
                "what": {"reference": p.reference, "display": p.display},
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person"},
                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"}
            }));
        }
        let query = match act {
            Act::Search(n) => Some(match p {
                Some(p) => format!(
                    "GET /Observation?patient={}&_count={n}",
                    p.reference.trim_start_matches("Patient/")
                ),
                None => format!("GET /Patient?_count={n}"),
            }),
            Act::Export => {
                Some("GET /Patient/$export?_type=Patient,Observation,Condition".to_string())
            }
            Act::Query(q) => Some(q.to_string()),
            _ => None,
        };
        if let Some(q) = query {
            entity.push(json!({
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"},
                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24", "display": "Query"},
                "query": base64::engine::general_purpose::STANDARD.encode(q)
            }));
        }
        let json = json!({
            "resourceType": "AuditEvent",
            "id": id,
            "meta": {"versionId": "1", "lastUpdated": fhir_edge_core::clock::fmt_ms(last_updated)},
            "type": type_,
            "subtype": [subtype],
            "action": action,
            "recorded": fhir_edge_core::clock::fmt_ms(t),
            "outcome": outcome,
            "agent": [
                {
                    "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP", "display": "information recipient"}]},
                    "who": {"reference": u.reference, "display": u.display},
                    "requestor": true,
                    "location": {"reference": format!("Location/{}", dept.to_lowercase().replace(' ', "-")), "display": dept},
                    "network": {"address": ip, "type": "2"}
                },
                {
                    "type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110150", "display": "Application"}]},
                    "who": {"reference": app},
                    "requestor": false
                }
            ],
            "source": {"site": "general-hospital", "observer": {"reference": "Device/fhir-server"}},
            "entity": entity
        });
        if let Some(p) = p {
            let first = self.worked_on.entry(pair_key(u, p)).or_insert(t);
            *first = (*first).min(t);
        }
        self.out
            .push(SimEvent::new(id, t, &json, label, label.and(self.current)));
    }
}

fn local_midnight(opts: &SimOptions, day: i64) -> DateTime<Utc> {
    let d = opts.start + Duration::days(day);
    let local = d
        .with_timezone(&opts.tz)
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap();
    opts.tz
        .from_local_datetime(&local)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(d)
}

fn weekday(opts: &SimOptions, day: i64) -> usize {
    use chrono::Datelike;
    (opts.start + Duration::days(day))
        .with_timezone(&opts.tz)
        .weekday()
        .num_days_from_monday() as usize
}

/// Patients admitted to `dept` on `day`.
fn admitted(h: &Hospital, dept: usize, day: i64) -> Vec<usize> {
    h.patients
        .iter()
        .enumerate()
        .filter(|(_, p)| p.dept == dept && p.admit_day <= day && day <= p.discharge_day)
        .map(|(i, _)| i)
        .collect()
}

/// A physician called at night: a login between 00:00 and 04:00, a few reads of the
/// department's patients, a logout.
fn night_call(
    em: &mut Emitter,
    r: &mut Rng,
    u: &User,
    midnight: DateTime<Utc>,
    own: &[usize],
    h: &Hospital,
) {
    if own.is_empty() {
        return;
    }
    let mut t = midnight + Duration::minutes(r.below(240) as i64);
    em.emit(t, u, &u.ip, u.app, None, Act::Login { ok: true }, None, r);
    for _ in 0..(2 + r.below(5)) {
        t += Duration::seconds(30 + r.below(300) as i64);
        em.emit(
            t,
            u,
            &u.ip,
            u.app,
            Some(&h.patients[*r.pick(own)]),
            Act::Read,
            None,
            r,
        );
    }
    em.emit(
        t + Duration::seconds(60),
        u,
        &u.ip,
        u.app,
        None,
        Act::Logout,
        None,
        r,
    );
}

/// An analyst's reports in a working day: one or two paged searches of hundreds of
/// records (laboratory results for a quality report, a clinic's patient list).
fn reports(
    em: &mut Emitter,
    r: &mut Rng,
    u: &User,
    ip: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) {
    let span = (end - start).num_seconds().max(3600);
    for _ in 0..(1 + r.below(2)) {
        let mut t = start + Duration::seconds(r.below(span as u64 - 1800) as i64);
        let count = *r.pick(&[200u32, 500, 1000]);
        let patients = r.chance(0.3);
        for page in 0..(2 + r.below(5)) {
            let q = if patients {
                format!(
                    "GET /Patient?active=true&_elements=name,birthDate&_count={count}&_offset={}",
                    page as u32 * count
                )
            } else {
                format!(
                    "GET /Observation?code=http://loinc.org|4548-4&_count={count}&_offset={}",
                    page as u32 * count
                )
            };
            em.emit(t, u, ip, u.app, None, Act::Query(&q), None, r);
            t += Duration::seconds(20 + r.below(90) as i64);
        }
    }
}

/// Generate the whole simulation, sorted by `recorded`.
pub fn simulate(opts: &SimOptions) -> Vec<SimEvent> {
    let (h, mut rng) = hospital(opts);
    // Style draws (sessions' addresses, night calls, reports) from a generator of their own.
    let mut sr = Rng::new(opts.seed ^ 0x57_1E55);
    let mut failures = Rng::new(opts.seed ^ 0x0F41_1ED0);
    let routine_failure_rate = 0.002 * 15f64.powf(failures.f64());
    let mut em = Emitter {
        seed: opts.seed,
        n: 0,
        out: Vec::new(),
        routine_failure_rate,
        failures,
        incidents: 0,
        current: None,
        worked_on: HashMap::new(),
    };
    let all_admitted: Vec<Vec<Vec<usize>>> = (0..opts.days as i64)
        .map(|day| {
            (0..DEPTS.len())
                .map(|d| {
                    if d < 9 {
                        admitted(&h, d, day)
                    } else {
                        Vec::new()
                    }
                })
                .collect()
        })
        .collect();
    for day in 0..opts.days as i64 {
        let midnight = local_midnight(opts, day);
        let wd = weekday(opts, day);
        let today = &all_admitted[day as usize];
        let anywhere: Vec<usize> = today.iter().flatten().copied().collect();
        let consulting: Vec<Vec<usize>> = (0..DEPTS.len())
            .map(|d| {
                anywhere
                    .iter()
                    .copied()
                    .filter(|p| h.patients[*p].consults.contains(&d))
                    .collect()
            })
            .collect();
        for (ui, u) in h.users.iter().enumerate() {
            // A resident works in another department every week.
            let rotated;
            let u = if u.resident {
                rotated = User {
                    dept: (u.dept + (day / 7) as usize + ui) % 9,
                    ..u.clone()
                };
                &rotated
            } else {
                u
            };
            if u.on_call && !(u.dormant && day >= 3) && sr.chance(0.12) {
                night_call(&mut em, &mut sr, u, midnight, &today[u.dept], &h);
            }
            if !u.workdays[wd] || (u.dormant && day >= 3) {
                continue;
            }
            let ip = session_ip(opts.style, u, ui, day, &mut sr);
            let (shift_start, shift_len) = shift_on(u, day);
            let start = midnight
                + Duration::hours(shift_start as i64)
                + Duration::minutes(rng.below(40) as i64 - 20);
            let len_min = (shift_len as i64 * 60) + rng.below(60) as i64 - 30
                + if rng.chance(0.05) { 120 } else { 0 };
            let end = start + Duration::minutes(len_min);
            // Login, occasionally after a typo.
            if rng.chance(0.03) {
                em.emit(
                    start - Duration::seconds(20),
                    u,
                    &ip,
                    u.app,
                    None,
                    Act::Login { ok: false },
                    None,
                    &mut rng,
                );
            }
            em.emit(
                start,
                u,
                &ip,
                u.app,
                None,
                Act::Login { ok: true },
                None,
                &mut rng,
            );
            let own = &today[u.dept];
            let mut t = start;
            loop {
                t += Duration::seconds((rng.exp(3600.0 / u.rate_per_hour)) as i64 + 1);
                if t >= end {
                    break;
                }
                // Which patient: own care-team patients, own department, a patient this
                // department was asked to consult on, or (service departments, rare noise)
                // anywhere.
                let service = DEPTS[u.dept].1 || u.billing;
                let consult = !service && rng.chance(0.06) && !consulting[u.dept].is_empty();
                let pool: &Vec<usize> = if service || own.is_empty() || rng.chance(0.005) {
                    &anywhere
                } else if consult {
                    &consulting[u.dept]
                } else {
                    own
                };
                if pool.is_empty() {
                    continue;
                }
                let mut pi = *rng.pick(pool);
                if !service && !consult && rng.chance(0.6) {
                    // Prefer patients whose care team includes the user.
                    let mine: Vec<usize> = own
                        .iter()
                        .copied()
                        .filter(|&p| h.patients[p].care_team.contains(&ui))
                        .collect();
                    if !mine.is_empty() {
                        pi = *rng.pick(&mine);
                    }
                }
                let p = &h.patients[pi];
                let act = match rng.below(100) {
                    0..=64 => Act::Read,
                    65..=79 => Act::Search(*rng.pick(&[10, 20, 20, 50])),
                    80..=91 => Act::Update,
                    _ => Act::Create,
                };
                em.emit(t, u, &ip, u.app, Some(p), act, None, &mut rng);
                // Reads often come in small bursts on the same patient.
                if rng.chance(0.3) {
                    t += Duration::seconds(5 + rng.below(60) as i64);
                    em.emit(t, u, &ip, u.app, Some(p), Act::Read, None, &mut rng);
                }
            }
            if u.analyst {
                reports(&mut em, &mut sr, u, &ip, start, end);
            }
            if rng.chance(0.8) {
                em.emit(end, u, &ip, u.app, None, Act::Logout, None, &mut rng);
            }
        }
        if day >= opts.anomalies_from_day as i64 {
            let n = rng.poisson(opts.incidents_per_day);
            for _ in 0..n {
                let kind = *rng.pick(ANOMALY_KINDS);
                em.current = Some(em.incidents);
                em.incidents += 1;
                inject(
                    kind, opts, &h, &mut em, &mut rng, day, midnight, &anywhere, today,
                );
                em.current = None;
            }
        }
    }
    coworker_snooping(opts, &h, &mut em, &all_admitted);
    em.out
        .sort_by(|a, b| a.recorded.cmp(&b.recorded).then_with(|| a.id.cmp(&b.id)));
    em.out
}

/// Colleagues' records opened with no work to do on them: from the first anomalous day, as
/// often as each of [`ANOMALY_KINDS`], a member of staff (a colleague from the same
/// department where one works that day) reads, during their shift, the record of a
/// colleague who is a patient here, one to three times, while their department neither
/// holds nor consults on the patient and they are not on its care team. Drawn on a
/// generator of its own after every other event, so those stay as they were.
fn coworker_snooping(
    opts: &SimOptions,
    h: &Hospital,
    em: &mut Emitter,
    all_admitted: &[Vec<Vec<usize>>],
) {
    let staff: Vec<usize> = (0..h.patients.len())
        .filter(|&i| h.patients[i].staff.is_some())
        .collect();
    if staff.is_empty() {
        return;
    }
    let mut r = Rng::new(opts.seed ^ 0xC0_11EA);
    let l = Some(Injected::CoworkerSnooping);
    for day in opts.anomalies_from_day as i64..opts.days as i64 {
        let midnight = local_midnight(opts, day);
        let wd = weekday(opts, day);
        let admitted = |d: usize, pi: usize| all_admitted[day as usize][d].contains(&pi);
        for _ in 0..r.poisson(opts.incidents_per_day / ANOMALY_KINDS.len() as f64) {
            let pi = *r.pick(&staff);
            let p = &h.patients[pi];
            let colleague = p.staff.expect("chosen as staff");
            let unrelated = |u: &User, ui: usize| {
                ui != colleague
                    && !u.dormant
                    && u.workdays[wd]
                    && !admitted(u.dept, pi)
                    && !p.consults.contains(&u.dept)
                    && !p.care_team.contains(&ui)
            };
            let candidates = |same_dept: bool| -> Vec<usize> {
                (0..h.users.len())
                    .filter(|&ui| unrelated(&h.users[ui], ui))
                    .filter(|&ui| !same_dept || h.users[ui].dept == h.users[colleague].dept)
                    .collect()
            };
            let mut who = candidates(true);
            if who.is_empty() {
                who = candidates(false);
            }
            if who.is_empty() {
                continue;
            }
            let u = &h.users[*r.pick(&who)];
            let ip = incident_ip(opts, h, u, day, em.n);
            em.current = Some(em.incidents);
            em.incidents += 1;
            let mut t = episode_start(u, day, midnight, &mut r);
            for _ in 0..(1 + r.below(3)) {
                em.emit(t, u, &ip, u.app, Some(p), Act::Read, l, &mut r);
                t += Duration::seconds(20 + r.below(240) as i64);
            }
            em.current = None;
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn inject(
    kind: AlertKind,
    opts: &SimOptions,
    h: &Hospital,
    em: &mut Emitter,
    rng: &mut Rng,
    day: i64,
    midnight: DateTime<Utc>,
    anywhere: &[usize],
    today: &[Vec<usize>],
) {
    // An episode happens at work, as colleagues' records are opened
    // (`coworker_snooping`): by a user at work that day, in that day's shift (a weekly
    // rotation moves it). Before, a user off that day was as likely, and about 30 % of the
    // episodes fell on a weekday their user almost never works, which marked them.
    let wd = weekday(opts, day);
    let active: Vec<&User> = h
        .users
        .iter()
        .filter(|u| !u.dormant && u.workdays[wd])
        .collect();
    if active.is_empty() {
        return;
    }
    let u = *rng.pick(&active);
    let in_shift = |rng: &mut Rng, u: &User| episode_start(u, day, midnight, rng);
    let l = Some(Injected::Behaviour(kind));
    if anywhere.is_empty() {
        return;
    }
    match kind {
        AlertKind::AfterHours => {
            // 01:00–04:30 local, well outside a day shift.
            let day_users: Vec<&User> = active
                .iter()
                .copied()
                .filter(|u| u.shift_start >= 7 && u.shift_start <= 8)
                .collect();
            let u = *rng.pick(&day_users);
            let ip = incident_ip(opts, h, u, day, em.n);
            let mut t = midnight + Duration::minutes(60 + rng.below(210) as i64);
            em.emit(t, u, &ip, u.app, None, Act::Login { ok: true }, l, rng);
            let pool = if today[u.dept].is_empty() {
                anywhere
            } else {
                &today[u.dept][..]
            };
            for _ in 0..(2 + rng.below(5)) {
                t += Duration::seconds(30 + rng.below(300) as i64);
                em.emit(
                    t,
                    u,
                    &ip,
                    u.app,
                    Some(&h.patients[*rng.pick(pool)]),
                    Act::Read,
                    l,
                    rng,
                );
            }
        }
        AlertKind::BulkAccess => {
            let ip = incident_ip(opts, h, u, day, em.n);
            let mut t = in_shift(rng, u);
            let n = 60 + rng.below(180);
            for _ in 0..n {
                t += Duration::milliseconds(1500 + rng.below(5000) as i64);
                em.emit(
                    t,
                    u,
                    &ip,
                    u.app,
                    Some(&h.patients[rng.below(h.patients.len() as u64) as usize]),
                    Act::Read,
                    l,
                    rng,
                );
            }
        }
        AlertKind::VipSnooping => {
            // Half the time a VIP the hospital knows and watches, else someone the news
            // made interesting overnight, whom nobody has flagged.
            let watched: Vec<usize> = anywhere
                .iter()
                .copied()
                .filter(|p| h.patients[*p].watched)
                .collect();
            let vip = if !watched.is_empty() && rng.chance(0.5) {
                &h.patients[*rng.pick(&watched)]
            } else {
                &h.patients[*rng.pick(anywhere)]
            };
            let n = 6 + rng.below(10);
            for _ in 0..n {
                let s = *rng.pick(&active);
                if s.dept == vip.dept {
                    continue;
                }
                let t = in_shift(rng, s);
                let ip = incident_ip(opts, h, s, day, em.n);
                em.emit(t, s, &ip, s.app, Some(vip), Act::Read, l, rng);
            }
        }
        AlertKind::CrossDepartment => {
            let clinical: Vec<&User> = active
                .iter()
                .copied()
                .filter(|u| !DEPTS[u.dept].1)
                .collect();
            let u = *rng.pick(&clinical);
            let ip = incident_ip(opts, h, u, day, em.n);
            // Patients of another department that the user's department was not asked to
            // consult on: access without a working relationship, as the type says.
            let other: Vec<usize> = anywhere
                .iter()
                .copied()
                .filter(|p| !h.patients[*p].cared_for_by(u.dept))
                .collect();
            if other.is_empty() {
                return;
            }
            let mut t = in_shift(rng, u);
            for _ in 0..(1 + rng.below(3)) {
                t += Duration::seconds(20 + rng.below(200) as i64);
                em.emit(
                    t,
                    u,
                    &ip,
                    u.app,
                    Some(&h.patients[*rng.pick(&other)]),
                    Act::Read,
                    l,
                    rng,
                );
            }
        }
        AlertKind::FailedLogins => {
            let mut t = in_shift(rng, u);
            let ip = format!("198.51.100.{}", 1 + rng.below(250));
            for _ in 0..(8 + rng.below(13)) {
                t += Duration::seconds(2 + rng.below(15) as i64);
                em.emit(t, u, &ip, u.app, None, Act::Login { ok: false }, l, rng);
            }
            t += Duration::seconds(5);
            em.emit(t, u, &ip, u.app, None, Act::Login { ok: true }, l, rng);
            for _ in 0..(1 + rng.below(3)) {
                t += Duration::seconds(10 + rng.below(60) as i64);
                em.emit(
                    t,
                    u,
                    &ip,
                    u.app,
                    Some(&h.patients[*rng.pick(anywhere)]),
                    Act::Read,
                    l,
                    rng,
                );
            }
        }
        AlertKind::NewSource => {
            let mut t = in_shift(rng, u);
            // From outside, from another department's workstation inside, or with a client
            // the user never used from their usual address (drawn on a generator of its own).
            let mut v = Rng::new(opts.seed ^ (em.n << 8) ^ 0x5EC_0CE);
            let outside = format!("203.0.113.{}", 1 + rng.below(250));
            let app = if rng.chance(0.5) {
                "Device/unknown-client"
            } else {
                u.app
            };
            let (ip, app) = match v.below(3) {
                0 => (outside, app),
                1 => {
                    let other =
                        (u.dept + 1 + v.below(DEPTS.len() as u64 - 1) as usize) % DEPTS.len();
                    (department_ip(opts.style, other, day, &mut v), app)
                }
                _ => (incident_ip(opts, h, u, day, em.n), "Device/unknown-client"),
            };
            em.emit(t, u, &ip, app, None, Act::Login { ok: true }, l, rng);
            let pool = if today[u.dept].is_empty() {
                anywhere
            } else {
                &today[u.dept][..]
            };
            for _ in 0..(2 + rng.below(4)) {
                t += Duration::seconds(10 + rng.below(120) as i64);
                em.emit(
                    t,
                    u,
                    &ip,
                    app,
                    Some(&h.patients[*rng.pick(pool)]),
                    Act::Read,
                    l,
                    rng,
                );
            }
        }
        AlertKind::MassExport => {
            // How the data leaves differs (drawn on a generator of its own): an export at
            // patient, system or group level, one huge search, or a walk through the pages
            // of a Patient search asking for demographics or of an Observation search.
            let mut v = Rng::new(opts.seed ^ (em.n << 8) ^ 0xE8_9027);
            let ip = incident_ip(opts, h, u, day, em.n);
            let mut t = in_shift(rng, u);
            let count = *v.pick(&[500u32, 1000, 1000, 2000]);
            match v.below(5) {
                0 => em.emit(t, u, &ip, u.app, None, Act::Export, l, rng),
                1 => {
                    let q = format!(
                        "GET /Group/{}/$export?_type=Patient,Observation",
                        DEPTS[u.dept].0.to_lowercase()
                    );
                    em.emit(t, u, &ip, u.app, None, Act::Query(&q), l, rng);
                }
                2 => em.emit(
                    t,
                    u,
                    &ip,
                    u.app,
                    None,
                    Act::Search(1000 + rng.below(9000) as u32),
                    l,
                    rng,
                ),
                k => {
                    for page in 0..(4 + v.below(10)) as u32 {
                        let q = if k == 3 {
                            format!("GET /Patient?_count={count}&_elements=name,birthDate,address,telecom&_offset={}", page * count)
                        } else {
                            format!("GET /Observation?_count={count}&_offset={}", page * count)
                        };
                        em.emit(t, u, &ip, u.app, None, Act::Query(&q), l, rng);
                        t += Duration::seconds(15 + v.below(120) as i64);
                    }
                }
            }
        }
        AlertKind::DormantAccount => {
            let dormant: Vec<&User> = h.users.iter().filter(|u| u.dormant).collect();
            if dormant.is_empty() || day < 30 {
                return;
            }
            let u = *rng.pick(&dormant);
            let ip = incident_ip(opts, h, u, day, em.n);
            let mut t = in_shift(rng, u);
            em.emit(t, u, &ip, u.app, None, Act::Login { ok: true }, l, rng);
            for _ in 0..(2 + rng.below(6)) {
                t += Duration::seconds(20 + rng.below(200) as i64);
                em.emit(
                    t,
                    u,
                    &ip,
                    u.app,
                    Some(&h.patients[*rng.pick(anywhere)]),
                    Act::Read,
                    l,
                    rng,
                );
            }
        }
        AlertKind::FamilySnooping => {
            // A relative admitted to another department, not one the user's department was
            // asked to consult on, whose record the user's work never opened: a pharmacist who
            // has been checking a relative's orders, or a nurse on the consulting team, opens
            // that record for a reason the audit trail cannot tell from work, so that is not
            // injected as snooping.
            let pairs: Vec<(&User, &Patient)> = active
                .iter()
                .flat_map(|u| u.relatives.iter().map(move |p| (*u, *p)))
                .filter(|(_, p)| anywhere.contains(p))
                .map(|(u, p)| (u, &h.patients[p]))
                .filter(|(u, p)| !p.cared_for_by(u.dept))
                .collect();
            if pairs.is_empty() {
                return;
            }
            let (u, p) = *rng.pick(&pairs);
            let t = in_shift(rng, u);
            let worked_on = em.worked_on.get(&pair_key(u, p)).is_some_and(|f| *f < t);
            if !worked_on {
                let ip = incident_ip(opts, h, u, day, em.n);
                em.emit(t, u, &ip, u.app, Some(p), Act::Read, l, rng);
            }
        }
        _ => {}
    }
}

/// The hospital of `opts`, and the generator as building it left it (the simulation goes on
/// from there): one function, so `watch_list` describes the hospital `simulate` runs.
fn hospital(opts: &SimOptions) -> (Hospital, Rng) {
    let mut rng = Rng::new(opts.seed);
    let h = build(opts, &mut rng);
    (h, rng)
}

/// The simulated hospital's watch list (patient references), as a site would keep it for
/// `detector.watch_list`.
pub fn watch_list(opts: &SimOptions) -> Vec<String> {
    hospital(opts)
        .0
        .patients
        .iter()
        .filter(|p| p.watched)
        .map(|p| p.reference.clone())
        .collect()
}

/// The simulated hospital as FHIR context resources, as its server would hold them (issue
/// #22's `--context`): a `Practitioner` and a `PractitionerRole` (department as location,
/// role as code) per user, a `Patient` per patient (names; the simulated hospital keeps no
/// addresses), an `Encounter` per admission (its department, its period, the care team as
/// participants, consulting departments as further locations), and a `RelatedPerson` for
/// each staff member's relative among the patients (named as the staff member).
pub fn context_resources(opts: &SimOptions) -> Vec<serde_json::Value> {
    let (h, _) = hospital(opts);
    // People's details come from a generator of their own: the events stay as they were.
    let mut rng = Rng::new(opts.seed ^ 0xC0_47E7);
    let day = |d: i64| fhir_edge_core::clock::fmt_ms(opts.start + Duration::days(d));
    let role_code = |r: Role| match r {
        Role::Physician => "doctor",
        Role::Nurse => "nurse",
        Role::Clerk => "clerk",
        Role::Technician => "technician",
    };
    let id_of = |r: &str| r.rsplit('/').next().unwrap_or(r).to_string();
    const STREETS: [&str; 12] = [
        "Elm", "Oak", "Maple", "Cedar", "Mill", "Church", "High", "Park", "Station", "Lake",
        "Hill", "River",
    ];
    let home = |rng: &mut Rng| {
        let line = format!("{} {} St", 1 + rng.below(200), rng.pick(&STREETS));
        let postal = format!("{:05}", 10_000 + rng.below(80) * 7);
        let phone = format!("555-{:03}-{:04}", rng.below(1000), rng.below(10_000));
        (line, postal, phone)
    };
    let birth = |rng: &mut Rng, from: i64, span: u64| {
        format!(
            "{}-{:02}-{:02}",
            from + rng.below(span) as i64,
            1 + rng.below(12),
            1 + rng.below(28)
        )
    };
    let mut out = Vec::new();
    // Staff: a name, a home, a phone, a birth date, a staff identifier; a role in their
    // department.
    let mut staff_home = Vec::new();
    for u in &h.users {
        let id = id_of(&u.reference);
        let given = u
            .display
            .trim_start_matches("Dr. ")
            .split(' ')
            .next()
            .unwrap_or("")
            .to_string();
        let (line, postal, phone) = home(&mut rng);
        let born = birth(&mut rng, 1960, 40);
        out.push(json!({
            "resourceType": "Practitioner", "id": id, "meta": {"lastUpdated": day(-30)},
            "identifier": [{"system": "https://hospital.example/staff", "value": id}],
            "name": [{"family": u.last, "given": [given]}],
            "address": [{"line": [line], "postalCode": postal}],
            "telecom": [{"system": "phone", "value": phone}],
            "birthDate": born
        }));
        out.push(json!({
            "resourceType": "PractitionerRole", "id": format!("role-{id}"), "meta": {"lastUpdated": day(-30)},
            "practitioner": {"reference": u.reference},
            "code": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/practitioner-role", "code": role_code(u.role)}]}],
            "location": [{"display": DEPTS[u.dept].0}]
        }));
        staff_home.push((given, line, postal, phone, born));
    }
    // Who each staff relative is related to, and how the records say so: a RelatedPerson
    // naming the staff member, a contact on the patient, or only a shared home.
    let mut relative_of: std::collections::HashMap<usize, usize> = Default::default();
    for (ui, u) in h.users.iter().enumerate() {
        for p in &u.relatives {
            relative_of.insert(*p, ui);
        }
    }
    for (i, p) in h.patients.iter().enumerate() {
        let id = id_of(&p.reference);
        let (mut line, mut postal, mut phone) = home(&mut rng);
        let form = rng.below(3);
        let mut patient = json!({
            "resourceType": "Patient", "id": id, "meta": {"lastUpdated": day(p.admit_day.min(0))},
            "name": [{"family": p.last, "given": [p.first]}],
            "birthDate": birth(&mut rng, 1930, 90)
        });
        // A watched record is marked as servers mark them, the two ways in turn: a
        // confidentiality label (restricted), or HL7's patient importance (VIP). No draw
        // from `rng`, so the rest of the context is as it was.
        if p.watched {
            match i % 2 {
                0 => {
                    patient["meta"]["security"] = json!([{
                        "system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"
                    }])
                }
                _ => {
                    patient["extension"] = json!([{
                        "url": "http://hl7.org/fhir/StructureDefinition/patient-importance",
                        "valueCodeableConcept": {"coding": [{
                            "system": "http://terminology.hl7.org/CodeSystem/v3-PatientImportance", "code": "VIP"
                        }]}
                    }])
                }
            }
        }
        if opts.style.marked_records {
            let label = |system: &str, code: &str| json!({"system": format!("http://terminology.hl7.org/CodeSystem/{system}"), "code": code});
            let mut labels = Vec::new();
            if p.staff.is_some() {
                labels.push(label("v3-ActCode", "EMP"));
            }
            if Rng::new(opts.seed ^ 0x4E57_41C7 ^ (i as u64) << 16).chance(0.05) {
                labels.push(label("v3-Confidentiality", "R"));
            }
            if let Some(had) = patient["meta"]["security"].as_array() {
                labels.extend(had.iter().cloned());
            }
            if !labels.is_empty() {
                patient["meta"]["security"] = json!(labels);
            }
        }
        // A member of staff's own record: their name, birth date and home (a hospital's
        // patient number, not their staff number).
        if let Some(ui) = p.staff {
            let (_, sl, sp, sph, born) = &staff_home[ui];
            patient["birthDate"] = json!(born);
            (line, postal, phone) = (sl.clone(), sp.clone(), sph.clone());
        }
        if let Some(&ui) = relative_of.get(&i) {
            let u = &h.users[ui];
            let (given, sl, sp, sph, _) = &staff_home[ui];
            match form {
                0 => out.push(json!({
                    "resourceType": "RelatedPerson", "id": format!("rel-{}-{id}", id_of(&u.reference)),
                    "meta": {"lastUpdated": day(-30)},
                    "patient": {"reference": p.reference},
                    "relationship": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "FAMMEMB"}]}],
                    "name": [{"family": u.last, "given": [given]}],
                    "telecom": [{"system": "phone", "value": sph}]
                })),
                1 => {
                    patient["contact"] = json!([{
                        "relationship": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0131", "code": "N"}]}],
                        "name": {"family": u.last, "given": [given]}
                    }]);
                }
                _ => (line, postal, phone) = (sl.clone(), sp.clone(), sph.clone()),
            }
        }
        patient["address"] = json!([{"line": [line], "postalCode": postal}]);
        patient["telecom"] = json!([{"system": "phone", "value": phone}]);
        out.push(patient);
        let mut locations = vec![json!({"location": {"display": DEPTS[p.dept].0}})];
        locations.extend(
            p.consults
                .iter()
                .map(|c| json!({"location": {"display": DEPTS[*c].0}, "status": "active"})),
        );
        let members: Vec<serde_json::Value> = p
            .care_team
            .iter()
            .map(|u| json!({"reference": h.users[*u].reference}))
            .collect();
        let period = json!({"start": day(p.admit_day), "end": day(p.discharge_day)});
        let mut encounter = json!({
            "resourceType": "Encounter", "id": format!("enc-{i}"), "meta": {"lastUpdated": day(p.admit_day)},
            "status": "finished", "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
            "subject": {"reference": p.reference},
            "period": period,
            "serviceProvider": {"display": DEPTS[p.dept].0},
            "location": locations
        });
        // The care team on the encounter for half the admissions, as a CareTeam of its own
        // for the others.
        if i % 2 == 0 {
            encounter["participant"] = members.iter().map(|m| json!({"individual": m})).collect();
        } else {
            out.push(json!({
                "resourceType": "CareTeam", "id": format!("team-{i}"), "meta": {"lastUpdated": day(p.admit_day)},
                "status": "active", "subject": {"reference": p.reference}, "period": period,
                "participant": members.iter().map(|m| json!({"member": m})).collect::<Vec<_>>()
            }));
        }
        out.push(encounter);
    }
    out
}

/// Write `context_resources` as NDJSON to `path`.
pub fn write_context(opts: &SimOptions, path: &std::path::Path) -> std::io::Result<usize> {
    use std::io::Write;
    let resources = context_resources(opts);
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    for r in &resources {
        serde_json::to_writer(&mut w, r)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    Ok(resources.len())
}

/// Write the watch list of `watch_list` to `path`, one reference per line.
pub fn write_watch_list(opts: &SimOptions, path: &std::path::Path) -> std::io::Result<()> {
    std::fs::write(
        path,
        format!(
            "# The simulated hospital's watched records\n{}\n",
            watch_list(opts).join("\n")
        ),
    )
}

/// Write NDJSON events and a labels CSV.
pub fn write(
    events: &[SimEvent],
    dir: &std::path::Path,
) -> std::io::Result<(std::path::PathBuf, std::path::PathBuf)> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let ev = dir.join("events.ndjson");
    let lb = dir.join("labels.csv");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&ev)?);
    let mut l = std::io::BufWriter::new(std::fs::File::create(&lb)?);
    writeln!(l, "id,anomaly,incident")?;
    for e in events {
        w.write_all(e.raw.get().as_bytes())?;
        w.write_all(b"\n")?;
        if let Some(k) = e.label {
            let incident = e.incident.map(|i| i.to_string()).unwrap_or_default();
            writeln!(l, "{},{k},{incident}", e.id)?;
        }
    }
    w.flush()?;
    l.flush()?;
    Ok((ev, lb))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The context resources describe the hospital the events come from: every care-team
    /// member of an admission is a Practitioner with a role in the admitting department or
    /// a consulting one, and the events' users and patients all have a resource.
    #[test]
    fn context_resources_describe_the_hospital_of_the_events() {
        let mut o = SimOptions::new(2, 9);
        o.users = 30;
        o.patients = 200;
        let ctx = context_resources(&o);
        let of = |t: &'static str| ctx.iter().filter(move |r| r["resourceType"] == t);
        let staff: std::collections::HashSet<String> = of("Practitioner")
            .map(|r| format!("Practitioner/{}", r["id"].as_str().unwrap()))
            .collect();
        let patients: std::collections::HashSet<String> = of("Patient")
            .map(|r| format!("Patient/{}", r["id"].as_str().unwrap()))
            .collect();
        assert_eq!((staff.len(), patients.len()), (30, 200));
        assert_eq!(of("PractitionerRole").count(), 30);
        assert_eq!(of("Encounter").count(), 200);
        assert_eq!(of("CareTeam").count(), 100);
        for e in of("Encounter") {
            assert!(patients.contains(e["subject"]["reference"].as_str().unwrap()));
            for p in e["participant"].as_array().into_iter().flatten() {
                assert!(
                    staff.contains(p["individual"]["reference"].as_str().unwrap()),
                    "{e}"
                );
            }
            assert!(e["period"]["start"].as_str() <= e["period"]["end"].as_str());
        }
        assert!(
            of("RelatedPerson").count() > 0,
            "staff have relatives among the patients"
        );
        // Read as the detector reads it: every staff relative is a personal link, in one
        // of the three ways the records say so; a care team member is related.
        use fhir_edge_core::care;
        let key = care::CareKey::from_bytes(&[1u8; 32]).unwrap();
        let mut set = care::FactSet::default();
        for r in &ctx {
            care::resources::read(r, &key)
                .into_iter()
                .for_each(|f| set.upsert(f));
        }
        let ix = set.index(key);
        let (h, _) = hospital(&o);
        let mut links = 0;
        for u in &h.users {
            for p in &u.relatives {
                let link = ix.personal(&u.reference, &h.patients[*p].reference);
                assert!(
                    matches!(
                        link,
                        Some(care::Personal::NamedRelative | care::Personal::Household)
                    ),
                    "{link:?}"
                );
                links += 1;
            }
        }
        assert!(links > 0);
        for p in &h.patients {
            let at =
                (o.start + Duration::days(p.admit_day) + Duration::hours(1)).timestamp_millis();
            for u in &p.care_team {
                assert!(ix
                    .relation(&h.users[*u].reference, None, &p.reference, at)
                    .is_some_and(|r| r.personal));
            }
        }
        for e in simulate(&o) {
            let j = e.json();
            let user = j["agent"][0]["who"]["reference"].as_str().unwrap();
            assert!(staff.contains(user), "{user}");
            if let Some(p) = j["entity"][0]["what"]["reference"].as_str() {
                assert!(patients.contains(p), "{p}");
            }
        }
    }

    #[test]
    fn deterministic_sorted_and_parseable() {
        let mut o = SimOptions::new(3, 42);
        o.users = 30;
        o.patients = 200;
        o.anomalies_from_day = 1;
        o.incidents_per_day = 20.0;
        let a = simulate(&o);
        let b = simulate(&o);
        assert_eq!(a.len(), b.len());
        assert_eq!(a[100].json(), b[100].json());
        assert!(a.windows(2).all(|w| w[0].recorded <= w[1].recorded));
        assert!(a.iter().any(|e| e.label.is_some()));
        assert!(a
            .iter()
            .filter(|e| e.recorded < o.start + Duration::days(1))
            .all(|e| e.label.is_none()));
        for e in a.iter().take(500) {
            let raw = e.raw().to_owned();
            fhir_edge_core::fhir::parse_audit_event(&raw).unwrap();
        }
    }

    /// The injected events of `evs` but those of the behaviours `but`; more than a hundred.
    fn injected_except<'a>(evs: &'a [SimEvent], but: &[AlertKind]) -> Vec<&'a SimEvent> {
        let judged: Vec<&SimEvent> = evs
            .iter()
            .filter(|e| {
                e.label
                    .as_ref()
                    .is_some_and(|l| !matches!(l, Injected::Behaviour(k) if but.contains(k)))
            })
            .collect();
        assert!(judged.len() > 100, "{} injected events", judged.len());
        judged
    }

    /// An injected episode comes from where its user's sessions come from in the
    /// hospital's network style: on shared stations, from a station of the user's own
    /// department, not from a network the day's work never uses. Only a new source (from
    /// outside, or another department's station) and a failed-login burst come from
    /// elsewhere.
    #[test]
    fn injected_episodes_come_from_the_users_usual_network() {
        let mut o = SimOptions::new(10, 3);
        (o.users, o.patients, o.incidents_per_day) = (60, 600, 12.0);
        o.anomalies_from_day = 1;
        o.style = Style::parse("stations").unwrap();
        let evs = simulate(&o);
        let net = |e: &SimEvent| {
            let j = e.json();
            let ip = j["agent"][0]["network"]["address"].as_str().unwrap_or("");
            ip.rsplit_once('.')
                .map_or(String::new(), |(n, _)| n.to_owned())
        };
        let normal: std::collections::HashSet<String> =
            evs.iter().filter(|e| e.label.is_none()).map(net).collect();
        let judged = injected_except(&evs, &[AlertKind::NewSource, AlertKind::FailedLogins]);
        let unseen: Vec<String> = judged
            .iter()
            .map(|e| net(e))
            .filter(|n| !normal.contains(n))
            .collect();
        assert!(
            unseen.is_empty(),
            "{} from networks the day's work never uses: {:?}",
            unseen.len(),
            &unseen[..unseen.len().min(5)]
        );
    }

    /// An injected episode happens on a day its user works: on a weekday their own
    /// sessions come on (after-hours episodes and dormant accounts aside).
    #[test]
    fn injected_episodes_fall_on_the_users_working_days() {
        use chrono::Datelike;
        let mut o = SimOptions::new(21, 4);
        (o.users, o.patients, o.incidents_per_day) = (60, 600, 12.0);
        o.anomalies_from_day = 1;
        let evs = simulate(&o);
        let who = |e: &SimEvent| {
            e.json()["agent"][0]["who"]["reference"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        };
        let mut days: std::collections::HashMap<String, std::collections::HashSet<u32>> =
            Default::default();
        for e in evs.iter().filter(|e| e.label.is_none()) {
            days.entry(who(e))
                .or_default()
                .insert(e.recorded.weekday().num_days_from_monday());
        }
        let judged = injected_except(&evs, &[AlertKind::AfterHours, AlertKind::DormantAccount]);
        let off = judged
            .iter()
            .filter(|e| {
                !days
                    .get(&who(e))
                    .is_some_and(|d| d.contains(&e.recorded.weekday().num_days_from_monday()))
            })
            .count();
        assert_eq!(
            off,
            0,
            "{off} of {} injected events on a day their user does not work",
            judged.len()
        );
    }

    #[test]
    fn styles_read_back_their_names_and_change_how_the_hospital_works() {
        for seed in 0..20 {
            let st = Style::draw(seed);
            assert_eq!(Style::parse(&st.name()).unwrap(), st);
        }
        assert_eq!(Style::parse("classic").unwrap(), Style::default());
        let e = Style::parse("rotating,space-station").unwrap_err();
        assert!(e.contains("space-station") && e.contains("rotating"), "{e}");
        let hours = |style: &str| {
            let mut o = SimOptions::new(14, 5);
            o.users = 60;
            o.patients = 600;
            o.anomalies_from_day = 99;
            o.style = Style::parse(style).unwrap();
            let evs = simulate(&o);
            let night = evs
                .iter()
                .filter(|e| {
                    use chrono::Timelike;
                    e.recorded.hour() < 5
                })
                .count();
            let ips: std::collections::HashSet<String> = evs
                .iter()
                .filter_map(|e| {
                    e.json()["agent"][0]["network"]["address"]
                        .as_str()
                        .map(str::to_owned)
                })
                // The VPN pool is the same in every style but the classic.
                .filter(|ip| !ip.starts_with("172.16."))
                .collect();
            (night as f64 / evs.len() as f64, ips.len())
        };
        let (classic_night, classic_ips) = hours("classic");
        let (outpatient_night, _) = hours("outpatient");
        let (rotating_night, _) = hours("rotating");
        let (_, nat_ips) = hours("nat");
        let (_, churning_ips) = hours("churning");
        assert!(
            outpatient_night < classic_night / 4.0,
            "{outpatient_night} vs {classic_night}"
        );
        assert!(
            rotating_night > classic_night,
            "{rotating_night} vs {classic_night}"
        );
        assert!(nat_ips < classic_ips / 4, "{nat_ips} vs {classic_ips}");
        assert!(
            churning_ips > classic_ips * 3,
            "{churning_ips} vs {classic_ips}"
        );
    }

    /// Five days of a hospital of 40 staff and 400 patients in `style` (seed 4).
    fn small_hospital(style: Style) -> SimOptions {
        let mut o = SimOptions::new(4, 5);
        o.users = 40;
        o.patients = 400;
        o.style = style;
        o
    }

    /// The credentials style shows staff with their credentials after the name and
    /// changes nothing else: the same people, at the same times, on the same records.
    #[test]
    fn the_credentials_style_writes_staff_names_with_credentials_and_nothing_else() {
        let st = Style::parse("credentials").unwrap();
        assert!(st.credentials && Style::parse(&st.name()).unwrap() == st);
        let run = |style: Style| simulate(&small_hospital(style));
        let (plain, shown) = (run(Style::default()), run(st));
        assert_eq!(plain.len(), shown.len());
        let who = |e: &SimEvent| e.json()["agent"][0]["who"].clone();
        let mut suffixes = std::collections::BTreeSet::new();
        for (a, b) in plain.iter().zip(&shown) {
            assert_eq!(a.recorded, b.recorded);
            assert_eq!(a.json()["entity"], b.json()["entity"]);
            assert_eq!(who(a)["reference"], who(b)["reference"]);
            let (a, b) = (who(a)["display"].clone(), who(b)["display"].clone());
            let (a, b) = (a.as_str().unwrap(), b.as_str().unwrap());
            let name = a.trim_start_matches("Dr. ");
            assert!(
                b == name || b.starts_with(&format!("{name}, ")),
                "{a} / {b}"
            );
            suffixes.insert(b.strip_prefix(name).unwrap().to_string());
        }
        assert_eq!(
            suffixes.into_iter().collect::<Vec<_>>(),
            vec!["", ", MD", ", RN"]
        );
    }

    /// The marked-records style labels every member of staff's own record EMP and about
    /// one record in twenty R in the context, and writes the same events.
    #[test]
    fn the_marked_records_style_labels_records_and_changes_no_event() {
        let st = Style::parse("marked-records").unwrap();
        assert!(st.marked_records && Style::parse(&st.name()).unwrap() == st);
        let (plain, marked) = (small_hospital(Style::default()), small_hospital(st));
        let events = |o: &SimOptions| simulate(o).iter().map(|e| e.json()).collect::<Vec<_>>();
        assert_eq!(events(&plain), events(&marked));
        let (h, _) = hospital(&marked);
        let staff: std::collections::BTreeSet<String> = h
            .patients
            .iter()
            .filter(|p| p.staff.is_some())
            .map(|p| p.reference.rsplit('/').next().unwrap().to_string())
            .collect();
        assert!(!staff.is_empty());
        let labelled = |o: &SimOptions, code: &str| -> std::collections::BTreeSet<String> {
            context_resources(o)
                .iter()
                .filter(|r| r["resourceType"] == "Patient")
                .filter(|r| {
                    r["meta"]["security"]
                        .as_array()
                        .is_some_and(|l| l.iter().any(|c| c["code"] == code))
                })
                .map(|r| r["id"].as_str().unwrap().to_string())
                .collect()
        };
        assert!(labelled(&plain, "EMP").is_empty());
        assert_eq!(labelled(&marked, "EMP"), staff);
        let restricted = labelled(&marked, "R").len();
        // The plain style marks its watched records R too (half of them): a few.
        assert!(labelled(&plain, "R").len() < 5);
        assert!((12..=30).contains(&restricted), "{restricted} of 400");
    }

    #[test]
    fn family_snooping_opens_a_record_the_users_work_never_opened() {
        let mut o = SimOptions::new(6, 7);
        o.users = 40;
        o.patients = 400;
        o.anomalies_from_day = 2;
        o.incidents_per_day = 60.0;
        let events = simulate(&o);
        // Each event parsed once: who opened what.
        let parsed: Vec<serde_json::Value> = events.iter().map(SimEvent::json).collect();
        let who = |j: &serde_json::Value| {
            j["agent"][0]["who"]["reference"]
                .as_str()
                .map(str::to_owned)
        };
        let what = |j: &serde_json::Value| {
            j["entity"][0]["what"]["reference"]
                .as_str()
                .map(str::to_owned)
        };
        let mut checked = 0;
        for (i, e) in events.iter().enumerate() {
            if e.label != Some(Injected::Behaviour(AlertKind::FamilySnooping)) {
                continue;
            }
            let j = &parsed[i];
            let (u, p) = (who(j), what(j));
            assert!(p.is_some(), "family snooping opens a patient's record");
            let name = |v: &serde_json::Value| {
                v.as_str()
                    .and_then(fhir_edge_core::detector::features::family_name)
            };
            assert_eq!(
                name(&j["agent"][0]["who"]["display"]),
                name(&j["entity"][0]["what"]["display"]),
                "{} opens a relative's record",
                e.id
            );
            let before: Vec<_> = events[..i]
                .iter()
                .zip(&parsed)
                .filter(|(x, _)| x.label.is_none() && x.recorded < e.recorded)
                .filter(|(_, xj)| who(xj) == u && what(xj) == p)
                .map(|(x, _)| &x.id)
                .collect();
            assert!(
                before.is_empty(),
                "{} re-opens a record {u:?} had opened at work: {before:?}",
                e.id
            );
            checked += 1;
        }
        assert!(
            checked >= 3,
            "only {checked} family snooping events to check"
        );
    }

    #[test]
    fn family_names_are_mostly_rare_and_relatives_share_them() {
        let o = SimOptions::new(3, 11);
        let (h, _) = hospital(&o);
        let mut counts = std::collections::HashMap::new();
        for p in &h.patients {
            *counts.entry(p.last.as_str()).or_insert(0usize) += 1;
        }
        let n = h.patients.len() as f64;
        let top = *counts.values().max().unwrap() as f64 / n;
        // The chance that two patients picked at random share a name.
        let coincidence: f64 = counts.values().map(|c| (*c as f64 / n).powi(2)).sum();
        assert!(
            top < 0.02,
            "the commonest name is {:.1}% of patients",
            top * 100.0
        );
        assert!(coincidence < 0.003, "namesakes by chance: {coincidence:.4}");
        let with_family = h.users.iter().filter(|u| !u.relatives.is_empty()).count();
        assert!(
            with_family * 5 > h.users.len(),
            "{with_family} users with family"
        );
        for u in &h.users {
            for p in &u.relatives {
                assert_eq!(h.patients[*p].last, u.last);
            }
        }
    }

    /// Some staff are patients here, under their own name and birth date; coworker snooping
    /// opens such a colleague's record, by another member of staff whose department neither
    /// holds nor consults on the patient that day, and adds events without changing any other.
    #[test]
    fn colleagues_records_are_opened_with_no_work_on_them() {
        let mut o = SimOptions::new(10, 9);
        o.users = 60;
        o.patients = 600;
        o.anomalies_from_day = 2;
        o.incidents_per_day = 30.0;
        let (h, _) = hospital(&o);
        let staff: Vec<&Patient> = h.patients.iter().filter(|p| p.staff.is_some()).collect();
        assert!(!staff.is_empty() && staff.len() <= 2, "{}", staff.len());
        for p in &staff {
            let u = &h.users[p.staff.unwrap()];
            assert_eq!(p.display, format!("{}, {}", u.last, u.first));
            assert_ne!(p.dept, u.dept, "treated by another department");
        }
        // The context gives the record the staff member's birth date.
        let ctx = context_resources(&o);
        let born = |kind: &str, id: &str| {
            ctx.iter()
                .find(|r| r["resourceType"] == kind && r["id"] == id)
                .map(|r| r["birthDate"].clone())
                .unwrap()
        };
        for p in &staff {
            let u = &h.users[p.staff.unwrap()];
            let id = |r: &str| r.rsplit('/').next().unwrap().to_string();
            assert_eq!(
                born("Patient", &id(&p.reference)),
                born("Practitioner", &id(&u.reference))
            );
        }
        let events = simulate(&o);
        let mut snooped = 0;
        for e in events
            .iter()
            .filter(|e| e.label == Some(Injected::CoworkerSnooping))
        {
            let j = e.json();
            let who = j["agent"][0]["who"]["reference"].as_str().unwrap();
            let what = j["entity"][0]["what"]["reference"].as_str().unwrap();
            let ui = h.users.iter().position(|u| u.reference == who).unwrap();
            let p = staff
                .iter()
                .find(|p| p.reference == what)
                .expect("a colleague's record");
            assert_ne!(p.staff, Some(ui), "{} is not their own", e.id);
            assert!(!p.care_team.contains(&ui) && !p.consults.contains(&h.users[ui].dept));
            snooped += 1;
        }
        assert!(snooped >= 5, "{snooped}");
        // They are drawn after every other event: those are numbered first, as before.
        let others: Vec<&SimEvent> = events
            .iter()
            .filter(|e| e.label != Some(Injected::CoworkerSnooping))
            .collect();
        let max_other = others
            .iter()
            .map(|e| e.id.rsplit('-').next().unwrap().parse::<u64>().unwrap())
            .max()
            .unwrap();
        assert_eq!(max_other as usize, others.len(), "numbered first, in order");
    }

    /// Cross-department access and family snooping, as the types say, open a record the
    /// user's department has no working relationship with: neither its own patient nor one
    /// it was asked to consult on.
    #[test]
    fn snooping_goes_where_the_department_has_no_working_relationship() {
        let mut o = SimOptions::new(10, 9);
        o.users = 60;
        o.patients = 600;
        o.anomalies_from_day = 2;
        o.incidents_per_day = 60.0;
        let (h, _) = hospital(&o);
        let mut checked = std::collections::HashMap::new();
        for e in simulate(&o) {
            let Some(Injected::Behaviour(
                kind @ (AlertKind::CrossDepartment | AlertKind::FamilySnooping),
            )) = e.label
            else {
                continue;
            };
            let j = e.json();
            let who = j["agent"][0]["who"]["reference"].as_str().unwrap();
            let what = j["entity"][0]["what"]["reference"].as_str().unwrap();
            let u = h.users.iter().find(|u| u.reference == who).unwrap();
            let p = h.patients.iter().find(|p| p.reference == what).unwrap();
            assert_ne!(p.dept, u.dept, "{}", e.id);
            assert!(
                !p.consults.contains(&u.dept),
                "{}: a consult, not a stray",
                e.id
            );
            *checked.entry(kind).or_insert(0) += 1;
        }
        assert!(
            checked.get(&AlertKind::CrossDepartment) > Some(&20),
            "{checked:?}"
        );
        assert!(
            checked.get(&AlertKind::FamilySnooping) >= Some(&3),
            "{checked:?}"
        );
    }

    #[test]
    fn vip_snooping_goes_to_watched_and_to_unwatched_records() {
        let mut o = SimOptions::new(8, 3);
        o.users = 60;
        o.patients = 600;
        o.anomalies_from_day = 1;
        o.incidents_per_day = 30.0;
        let watched = watch_list(&o);
        assert_eq!(watched.len(), 6, "one patient in a hundred");
        let mut on = [0, 0];
        for e in simulate(&o) {
            if e.label == Some(Injected::Behaviour(AlertKind::VipSnooping)) {
                let j = e.json();
                let p = j["entity"][0]["what"]["reference"].as_str().unwrap();
                on[watched.iter().any(|w| w == p) as usize] += 1;
            }
        }
        assert!(on[0] > 0 && on[1] > 0, "unwatched, watched: {on:?}");
    }
}
