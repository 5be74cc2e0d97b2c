//! Feature extraction: per-event fields plus context computed causally (only from earlier
//! events) from bounded per-user, per-patient and global state.
//!
//! Memory bounds (documented in README): at most `MAX_USERS` users, `MAX_PATIENTS` patients
//! and `MAX_PAIRS` user–patient pairs are remembered; each user keeps at most
//! `MAX_RECENT` recent accesses, `MAX_IPS` addresses and `MAX_APPS` client apps; each
//! patient at most `MAX_PATIENT_RECENT` recent accessors and `MAX_DEPTS` departments (and,
//! for a colleague's own record, the last work of as many). When a map is full, the least
//! recently active half is forgotten.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};

use chrono::{Datelike, Timelike};
use serde::{Deserialize, Serialize};

use crate::alerts::AlertKind;
use crate::care;
use crate::fhir::{AuditRecord, Interaction};

pub const SCHEMA_VERSION: u32 = 13;

pub const MAX_USERS: usize = 50_000;
pub const MAX_PATIENTS: usize = 200_000;
pub const MAX_PAIRS: usize = 1_000_000;
pub const MAX_RECENT: usize = 2_048;
pub const MAX_PATIENT_RECENT: usize = 128;
pub const MAX_IPS: usize = 16;
pub const MAX_APPS: usize = 8;
pub const MAX_DEPTS: usize = 8;

/// A user with no department and no peer group (one who first appeared after training:
/// see `super::peers`) joins the peer group their work goes to once they have opened
/// patients this many times...
pub const NEWCOMER_OPENS: f32 = 50.0;

/// ...and at least this share of those opens went to patients whose record activity comes
/// mostly from that group. A ward's new nurse opens the ward's patients; a new pharmacist's
/// opens spread over every ward, as the services' do, and they stay in no group.
pub const NEWCOMER_SHARE: f32 = 0.5;

/// (department, home department) pairs counted for `dept_pair_rarity`.
pub const MAX_DEPT_PAIRS: usize = 65_536;
/// Family names counted for `same_family_name_rarity` (how common a shared name is).
pub const MAX_NAMES: usize = 65_536;
/// Networks and client applications counted site-wide for `new_network_site` and
/// `new_client_app_site` (later ones are not remembered, and stay new).
pub const MAX_SITE_SOURCES: usize = 65_536;
/// Events the site needs before a network or client new to it means much.
const SITE_MATURE: f32 = 1_000.0;
/// Departments counted per network for `Facts::foreign_network` (when full, a department
/// not among them is not known never to have worked from the network).
pub const MAX_NETWORK_DEPTS: usize = 8;
/// A network is a department's own (its workstations, its ward's VLAN) when at least this
/// share of the site's successful events from it came from that department's staff…
const NETWORK_HOME_SHARE: f32 = 0.9;
/// …out of at least this many: a pool every department shares (a VPN, a NAT) has no home.
const NETWORK_HOME_MIN: f32 = 200.0;
/// A site with at least this share of its events from outside its private networks (a
/// server in the cloud, remote work without a VPN) has no "outside" to speak of: a user's
/// first access from outside means nothing there (`Facts::first_outside`).
const OUTSIDE_ROUTINE_SHARE: f32 = 0.01;
/// A network one in a thousand of the site's events come from is the site's own, public
/// addresses or not (a wing on global IPv6 addresses, a clinic on a leased line): access
/// from it is not from outside (`Facts::first_outside`).
const OWN_NETWORK_SHARE: f32 = 0.001;
/// A run of lookups of other departments' records is curiosity's pattern, not a consult's
/// (`Facts::stray_run`), when the user's habit gives it at most this chance in the hour
/// (e^-4, one in 55)…
const STRAY_RUN_SURPRISE: f32 = 4.0;
/// …and the record opened is one the user's department has at most this share in, of a
/// history of at least 50 accesses (`dept_history_with_patient` ≤ ln 0.02): someone
/// else's long-running patient, not a new one whose care is still forming.
const STRAY_RUN_SHARE: f32 = 0.02;

/// The time at a level that counts as one step of the user's usual high hour (ms): the
/// envelope rises with time, not with events (`UserState::usual_d1h_hi`).
const ENVELOPE_MINUTE: f32 = 60_000.0;

const MIN_10: i64 = 10 * 60_000;
pub(crate) const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
const FAIL_WINDOW: i64 = 15 * 60_000;
/// A user needs this many earlier events before "new IP/app" and usual-hours mean much.
const MATURE: f32 = 30.0;

/// How a feature counts in the anomaly score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// A signal where only values above expectation are suspicious.
    Up,
    /// A signal where only values below expectation are suspicious.
    Down,
    /// Context only: the autoencoder conditions on it, but it adds nothing to the score.
    Context,
}

impl Direction {
    /// +1, -1 or 0, as the model's tail terms use it.
    pub const fn sign(self) -> i8 {
        match self {
            Direction::Up => 1,
            Direction::Down => -1,
            Direction::Context => 0,
        }
    }
}

/// The feature catalogue: one entry per feature, in model order, with its name (as the
/// model file and `--features-out` write it), its direction, the alert kind it points at,
/// and what it measures. Adding a signal is one entry here (and its computation in
/// `Context::features`); changing the list bumps `SCHEMA_VERSION`.
macro_rules! catalogue {
    ($($variant:ident = $name:literal, $dir:ident, $kind:ident, $what:literal;)*) => {
        /// One feature of the model's input row (see the catalogue in `features.rs`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(usize)]
        pub enum Feature {
            $(#[doc = $what] $variant,)*
        }

        /// Number of features in a row.
        pub const N_FEATURES: usize = [$($name),*].len();

        /// Feature names, in model order.
        pub const FEATURE_NAMES: [&str; N_FEATURES] = [$($name),*];

        /// Each feature's direction as a sign (+1, -1, 0), in model order.
        pub const FEATURE_DIRECTION: [i8; N_FEATURES] = [$(Direction::$dir.sign()),*];

        impl Feature {
            /// Every feature, in model order.
            pub const ALL: [Feature; N_FEATURES] = [$(Feature::$variant),*];

            /// The name in model files and feature CSVs.
            pub const fn name(self) -> &'static str {
                match self { $(Feature::$variant => $name,)* }
            }

            /// How the feature counts in the score.
            pub const fn direction(self) -> Direction {
                match self { $(Feature::$variant => Direction::$dir,)* }
            }

            /// The behaviour the feature is evidence of.
            pub const fn kind(self) -> AlertKind {
                match self { $(Feature::$variant => AlertKind::$kind,)* }
            }

            /// What the feature measures, in a sentence.
            pub const fn what(self) -> &'static str {
                match self { $(Feature::$variant => $what,)* }
            }

            /// Position in the row.
            pub const fn index(self) -> usize {
                self as usize
            }
        }
    };
}

catalogue! {
    HourRarityUser = "hour_rarity_user", Up, AfterHours,
        "How rarely the user is active at this local hour (blended with the site while the user is new).";
    HourRaritySite = "hour_rarity_site", Up, AfterHours,
        "How rarely anyone at the site is active at this local hour.";
    WeekdayRarityUser = "weekday_rarity_user", Up, AfterHours,
        "How rarely the user is active on this weekday.";
    DistinctPatients10m = "distinct_patients_10m", Up, BulkAccess,
        "ln(1 + distinct patients the user opened in the last 10 minutes).";
    DistinctPatients1h = "distinct_patients_1h", Up, BulkAccess,
        "ln(1 + distinct patients the user opened in the last hour).";
    Patients1hVsUsual = "patients_1h_vs_usual", Up, BulkAccess,
        "The hour's distinct patients against the user's usual high hour (log ratio, floored at 0).";
    FirstAccessToPatient = "first_access_to_patient", Up, CrossDepartment,
        "1 when the user has not opened this patient before.";
    UnrelatedPatientRarity = "unrelated_patient_rarity", Up, CrossDepartment,
        "A record none of whose activity comes from the user's department, weighed by how unusual such lookups are for the user.";
    DeptHistoryWithPatient = "dept_history_with_patient", Down, CrossDepartment,
        "ln((accesses from the user's department + 1) / (all accesses + 1)) of the patient's record.";
    PatientUsers24h = "patient_users_24h", Up, VipSnooping,
        "ln(1 + distinct users who opened the patient in 24 hours).";
    UnrelatedPressure24h = "unrelated_pressure_24h", Up, VipSnooping,
        "How unusual, summed over distinct users, today's unrelated accesses to the patient are.";
    FailedLogins15m = "failed_logins_15m", Up, FailedLogins,
        "ln(1 + failed logins by the user in 15 minutes beyond the first).";
    NewSourceIp = "new_source_ip", Up, NewSource,
        "Novelty of the network address for a user with enough history (1 never seen, decaying with use).";
    NewClientApp = "new_client_app", Up, NewSource,
        "Novelty of the client application for a user with enough history.";
    DormancyVsUsualBreak = "dormancy_vs_usual_break", Up, DormantAccount,
        "The idle gap before the session against the user's usual longest break (log ratio).";
    QuerySize = "query_size", Up, MassExport,
        "ln(1 + the number of records a search asks for).";
    Export = "export", Up, MassExport,
        "1 for a bulk data export.";
    FailedRequestsSurprise1h = "failed_requests_surprise_1h", Up, FailedRequests,
        "For a refused request other than a login: -ln P(N >= n - 1) for the hour's n refused requests (the first is free), N Poisson with the user's usual failure rate (shrunk toward the site's) times the hour's accesses, less ln 20 (routine).";
    IsLogin = "is_login", Context, UnusualPattern,
        "1 for a login or logout.";
    IsSearch = "is_search", Context, UnusualPattern,
        "1 for a search.";
    IsWrite = "is_write", Context, UnusualPattern,
        "1 for a create, update or delete.";
    SameFamilyNameRarity = "same_family_name_rarity", Up, FamilySnooping,
        "-ln of the chance that the user meets a patient of their family name on a day (the name's share of patients, the user's new patients a day), less ln 100 (routine: once in 100 working days); 0 when the department cares for the patient.";
    UserHistory = "user_history", Context, UnusualPattern,
        "ln(1 + the user's earlier events).";
    HasPatient = "has_patient", Context, UnusualPattern,
        "1 when the event names a patient.";
    UserCrossDeptRate = "user_cross_dept_rate", Context, UnusualPattern,
        "The user's running rate of lookups outside their department's work.";
    UserFirstAccessRate = "user_first_access_rate", Context, UnusualPattern,
        "The user's running rate of first accesses to a patient.";
    SessionStartRarity = "session_start_rarity", Up, AfterHours,
        "How rarely the user's sessions begin at the hour this one began.";
    UnrelatedRunSurprise1h = "unrelated_run_surprise_1h", Up, CrossDepartment,
        "-ln P(N >= n) for the hour's run of unrelated lookups, N Poisson with the user's habitual mean.";
    PatientUsersVsUsual = "patient_users_vs_usual", Up, VipSnooping,
        "Today's distinct users of the patient against the patient's usual (log ratio).";
    DeptPairRarity = "dept_pair_rarity", Up, CrossDepartment,
        "How rarely the user's department enters records homed in the patient's department.";
    UnexplainedDepts24h = "unexplained_depts_24h", Up, VipSnooping,
        "ln(1 + departments that opened the record today outside their relationship and pattern).";
    WatchedRecordUnrelated = "watched_record_unrelated", Up, WatchedRecord,
        "1 when a watched or restricted record is opened without a working relationship, by a user whose work the care context describes (see CARE_BLIND_RATE); 2 for a colleague's own record opened by a colleague of their own department (Facts::own_colleague), evidence twice over.";
    NewNetworkSite = "new_network_site", Up, NewSource,
        "Novelty of the address's network (IPv4 /24, IPv6 /48, a host's domain) at the whole site, once the site has history: 1 never seen, decaying with use.";
    NewClientAppSite = "new_client_app_site", Up, NewSource,
        "Novelty of the client application at the whole site, once the site has history.";
    HourRarityPeers = "hour_rarity_peers", Up, AfterHours,
        "How rarely the user's department (their peers) is active at this local hour (blended with the site while the department is new).";
    OffHoursUserAndPeers = "off_hours_user_and_peers", Up, AfterHours,
        "The smaller of hour_rarity_user and hour_rarity_peers: an hour rare for the user and for their peers (a clerk at 03:00), not for a night nurse or a department that works around the clock.";
    QueryVolume1hVsUsual = "query_volume_1h_vs_usual", Up, WideSearch,
        "For a search: ln of the records the user's searches asked for within the hour (this one included) against their usual high hour, floored at 0.";
    DemographicSweep = "demographic_sweep", Up, MassExport,
        "For a Patient search returning demographics wholesale: ln(1 + records asked) + ln(1 + such searches by the user in the hour before).";
    OutsideCare = "outside_care", Up, CrossDepartment,
        "When the care context knows the patient's relationships: no encounter, appointment, episode or care team active at the time links the user or their unit to the patient, weighed by how unusual such accesses are for the user (0 without care context).";
    UserOutsideCareRate = "user_outside_care_rate", Context, UnusualPattern,
        "The user's running rate of accesses outside any known treatment relationship (where the care context answers).";
    PersonalLink = "personal_link", Up, FamilySnooping,
        "1 when the care context shows the patient is the user's relative: named as their RelatedPerson or contact, or sharing their family name and address or phone.";
    SelfRecord = "self_record", Up, FamilySnooping,
        "1 when the care context shows the patient is the user (a shared identifier, or family name and birth date with a given name, address or phone).";
    CoworkerRecord = "coworker_record", Up, VipSnooping,
        "1 when the care context shows the patient is another member of staff and no treatment relationship links the user to them.";
}

/// Records a search without `_count` is taken to ask for (a common server default).
const DEFAULT_PAGE: u32 = 20;
/// Records an hour's searches may ask for before the hour means anything (five pages).
const ASKED_FLOOR: f32 = 5.0 * DEFAULT_PAGE as f32;
/// An hour's searches asking for this many times the records of the user's usual high
/// hour (at least `ASKED_FLOOR`; `query_volume_1h_vs_usual` at least its logarithm): an
/// order of magnitude beyond anything their work asks for, a sweep rather than a busy
/// hour, and evidence twice over (see `super::evidence`). The user's own report runs make
/// their usual high, so an analyst's report stays under it.
pub const SWEEP_RATIO: f32 = 10.0;
/// Distinct patients opened within ten minutes for a run of opens to be a bulk run: one
/// record every fifteen seconds, for ten minutes, is no bedside's or ward round's pace
/// (`distinct_patients_10m` at least its `ln_1p`). With [`BULK_RATIO`]; see
/// `super::evidence`.
pub const BULK_OPENS_10M: u32 = 40;
/// …in an hour of at least this many times the distinct patients of the user's usual
/// high hour (`patients_1h_vs_usual` at least its logarithm): a pharmacist's or a
/// registration clerk's own busy hours make their usual high, so their worklists stay
/// under it.
pub const BULK_RATIO: f32 = 3.0;

/// Whether a row is of a bulk run of opens ([`BULK_OPENS_10M`], [`BULK_RATIO`]).
pub fn bulk_run(row: &[f32; N_FEATURES]) -> bool {
    row[Feature::DistinctPatients10m.index()] >= (BULK_OPENS_10M as f32).ln_1p()
        && row[Feature::Patients1hVsUsual.index()] >= BULK_RATIO.ln()
}
/// Events a department needs before its own hours outweigh the site's.
const PEERS_MATURE: f32 = 300.0;

/// Requests remembered for grouping a search written once per patient in its results.
pub const MAX_REQUESTS: usize = 4_096;
/// How long the events of one request may keep arriving.
const REQUEST_SPAN: i64 = 10 * 60_000;

/// One request's events so far (see `Context::fanout`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct RequestState {
    first_ms: i64,
    /// Patients its events listed, and records its query asked for.
    listed: u32,
    asked: u32,
    /// Whether one of its events was alerted on.
    alerted: bool,
}

/// How an event stands to a search fanned out over the patients in its results.
#[derive(Debug, Clone, Copy)]
struct Listed {
    key: u64,
    first: bool,
}

/// A department's hour-of-day activity (its staff as peers of each other).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct DeptHours {
    hours: [f32; 24],
    total: f32,
}

/// A detector snapshot that cannot be read (another version's, or damaged).
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("detector snapshot unreadable: {0}")]
    Json(#[source] serde_json::Error),
    #[error("detector snapshot unreadable: {0}")]
    Binary(#[source] postcard::Error),
    #[error("detector snapshot of context layout {found}, this build reads {SNAPSHOT_LAYOUT}")]
    Layout { found: u32 },
}

/// How a binary snapshot starts: a tag, then [`SNAPSHOT_LAYOUT`] (u32, little-endian),
/// then the context in postcard.
const SNAPSHOT_TAG: &[u8; 8] = b"fhirctx\0";

/// The layout of [`Context`]'s fields in a binary snapshot. A binary encoding has no field
/// names: adding, removing or reordering a field of the context (or of what it holds)
/// bumps this, and a snapshot of another layout is refused (the daemon then starts from the
/// model's baselines and says so) — except layouts 1 to 8, which are layout 9 without its
/// last fields (`revivals`, `new_patients`, `staff_names` with `patient_names`,
/// `staff_record_work`, `network_depts` with `outside_users` and `site_outside`,
/// `peer_groups`, `newcomers`, `record_work`: layout 8 without the last, layout 1 without
/// all of them),
/// and are read as having none. `a_snapshot_of_this_layout_still_reads` fails when the fields
/// change without a bump.
pub const SNAPSHOT_LAYOUT: u32 = 9;

impl SnapshotError {
    pub fn kind(&self) -> &'static str {
        "snapshot_unreadable"
    }
}

/// A feature row indexed by [`Feature`], for building rows by name rather than position.
#[derive(Debug, Clone, Copy)]
struct Row([f32; N_FEATURES]);

impl std::ops::Index<Feature> for Row {
    type Output = f32;
    fn index(&self, f: Feature) -> &f32 {
        &self.0[f.index()]
    }
}

impl std::ops::IndexMut<Feature> for Row {
    fn index_mut(&mut self, f: Feature) -> &mut f32 {
        &mut self.0[f.index()]
    }
}

/// A session ends after this long without activity.
const SESSION_GAP: i64 = 8 * HOUR;
/// Idle time after which activity counts as a new session (for session-start hours).
const SESSION_IDLE: i64 = 2 * HOUR;
/// An account back from at least this many days without activity, and at least
/// [`REVIVAL_RATIO`] times its usual long break, stays suspect after its first session
/// (a dormant account's later sessions are no less its own) until it is back at work:
/// [`REVIVAL_SESSIONS`] of its usual sessions' worth of events since it came back, or
/// [`REVIVAL_DAYS`]. Two weeks is shorter than any dormancy policy we know of (30–90 days).
pub const REVIVAL_MIN_DAYS: f32 = 14.0;
/// See [`REVIVAL_MIN_DAYS`]: the gap over the usual long break, days + 1 each (the
/// `dormancy_vs_usual_break` feature's ratio).
pub const REVIVAL_RATIO: f32 = 4.0;
/// See [`REVIVAL_MIN_DAYS`]: staff back from leave do a working day's worth on their first
/// day; an account used for a few looks a day does not.
pub const REVIVAL_SESSIONS: f32 = 2.0;
/// See [`REVIVAL_MIN_DAYS`].
pub const REVIVAL_DAYS: i64 = 7;
/// Sessions after which a user's own start hours outweigh the site's.
const MATURE_SESSIONS: f32 = 10.0;
/// How late a shift may run and still be judged by its usual hours: in a session still
/// going (activity within `SESSION_IDLE`), the hour of an event counts as the least unusual
/// of the session's last hours, up to this many back (see [`judged_hour`]). Overtime of an
/// hour or three is everyday work on a ward; a session *begun* at an unusual hour is not
/// covered, and neither is anything but the time of day (who was opened still counts).
pub const OVERRUN_HOURS: u32 = 3;
/// A session's first hour is judged with the hour after it only where at least this share
/// of the user's earlier sessions began in it: a shift begun twenty minutes early leans on
/// the hour it runs into, a login at 04:20 does not lean on the 05:00 an early shift
/// sometimes starts in.
pub const USUAL_START_SHARE: f32 = 0.1;
/// A user whose running rate of accesses outside every relationship the care context
/// knows is at least this works where the context does not describe the work — a
/// pharmacist, a radiographer, a coder, whose patients come by orders — and goes to
/// records their department has no history with as routinely: for them a watched record
/// opened without a known relationship is the day's work, not a reason (measured in
/// BENCHMARKS.md: the ordinary such cases came from them, the injected lookups from staff
/// who work inside relationships).
pub const CARE_BLIND_RATE: f32 = 0.5;
/// A user who opens records their department has no history with at least this often (one
/// lookup in twenty; `cross_rate`) goes to unrelated records as routine work — a
/// laboratory, a pharmacy, radiology: their first look at a colleague's own record is no
/// second piece of evidence (`Facts::own_colleague`). On a ward such lookups are rare.
pub const ROUTINE_UNRELATED_RATE: f32 = 0.05;
/// How long the work of a colleague's own department on the colleague's own record keeps
/// it part of that record's care (days): a department that treated the colleague weeks ago
/// has no work on their record today, whatever share of its history it holds. A look from
/// it after that is one without a working relationship (`Context::held_look`;
/// BENCHMARKS.md, "A colleague's record no one works on any more"). Only their own
/// department's: other departments' looks at a staff record weeks apart (radiology reading
/// a colleague's follow-up images) are their work, and are judged by their share.
pub const STAFF_RECORD_WORK_DAYS: i64 = 7;
/// How long a colleague's own record can go without anyone's work on it (days: no access
/// by any department that was not itself a look held apart, `Context::held_look`) before
/// it is out of everyone's care: a look from the colleague's own department then is one
/// without a working relationship, however recently that department worked on it, as after
/// [`STAFF_RECORD_WORK_DAYS`] of its own. Care comes in episodes that keep a record busy
/// (an inpatient's record is opened every few hours, an outpatient's around the visit);
/// the coworkers who look once the colleague has gone home do so on a quiet record
/// (BENCHMARKS.md, "A colleague's record no one is working on").
pub const RECORD_QUIET_DAYS: i64 = 2;
/// A site whose users' outside-care rates average at least this has a care context that
/// describes nobody's work — its Encounters name practitioners and locations that no
/// audit user or unit matches. There no user is read against the context for a watched
/// record: the department's history is read as it is without a context, and
/// [`CARE_BLIND_RATE`] does not apply. (On the simulated hospitals the users' rates
/// average 0.2–0.6, weighed by events.)
pub const SITE_CARE_BLIND_RATE: f32 = 0.8;
/// Users with fewer events do not count in the site's outside-care rate: theirs is still
/// climbing from 0.
const SITE_OUTSIDE_USER_EVENTS: f32 = 100.0;
/// Events between two refreshes of the site's outside-care rate (a pass over the users).
const SITE_OUTSIDE_REFRESH: u32 = 4096;
/// An hour is odd for a user when less than this share of their activity falls in it.
/// Sessions begun at odd hours near an hour are the user's habit of it (see
/// `odd_hour_habit`).
pub const ODD_HOUR_SHARE: f32 = 0.02;
/// How many hours either side of an odd hour count as near it, for the habit.
pub const ODD_HOUR_BAND: u32 = 2;

/// A network that is another department's own, and that the user's department has never
/// worked from: someone at another ward's workstation, or on its network. Only once the
/// site has history, the network at least `NETWORK_HOME_MIN` events (at least
/// `NETWORK_HOME_SHARE` of them from its home department), and the user's department at
/// least `PEERS_MATURE` events; never for a failed login. The department's first event
/// from it is the one: the next finds it worked from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForeignNetwork {
    /// The department whose network it is.
    pub home: String,
    /// The user's department, which had never worked from it.
    pub from: String,
    /// The share of the network's events that came from that department.
    pub home_share: f32,
    /// The network's successful events at the site before this one.
    pub events: u32,
}

/// Raw facts behind the features, for plain-language explanations.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Facts {
    pub hour: u32,
    pub weekday: u32,
    /// The event named no department and was read with the user's from the care context
    /// (`Context::department_from_care`).
    #[serde(default)]
    pub dept_from_care: bool,
    /// The event named no department, the care context none either, and it was read with
    /// the user's peer group as their department (`Context::set_peer_groups`).
    #[serde(default)]
    pub dept_from_peers: bool,
    /// The hour the time of day was judged at, when a session running late made it an
    /// earlier one than `hour` (see [`judged_hour`]); `user_hour_share` and
    /// `peer_hour_share` are that hour's.
    #[serde(default)]
    pub judged_hour: Option<u32>,
    pub user_hour_share: f32,
    /// The share of the user's past activity that fell on this weekday.
    #[serde(default)]
    pub user_weekday_share: f32,
    /// Local hour at which the current session began (the hour nearest its first event,
    /// see `Context::local`), and how many of the user's earlier sessions began at
    /// that hour (of how many).
    pub session_start_hour: u32,
    pub starts_at_that_hour: u32,
    pub user_sessions: u32,
    /// How many of the user's earlier sessions began at odd hours for them near the hour
    /// judged (`judged_hour`, else `hour`; see `odd_hour_habit`), when that habit made
    /// the hour less rare for them.
    #[serde(default)]
    pub odd_starts: Option<u32>,
    /// The user's hour-of-day histogram (the usual band is worked out only when an
    /// explanation needs it: see `user_usual_hours`).
    pub user_hours: Option<[f32; 24]>,
    pub d10: u32,
    pub d1h: u32,
    pub usual_d1h: f32,
    pub first_pair: bool,
    pub dept: Option<String>,
    pub dept_share: Option<f32>,
    pub patient_history: u32,
    pub patient_users_24h: u32,
    pub usual_patient_users: f32,
    /// Distinct users without a departmental relationship who opened the patient in 24 h.
    pub unrelated_users_24h: u32,
    /// One other user opened the record within 24 h, and neither they nor this user had a
    /// relationship with it (`unrelated_users_24h` and `patient_users_24h` both 2): no care
    /// going on in the record that the look could be part of, as when no one else has
    /// opened it (`alone_on_record`). A watched record opened so is evidence twice over
    /// (`super::evidence`). Not for a crowd: a record many open without a relationship is
    /// what the crowd's own signals weigh (`patient_users_vs_usual`,
    /// `unrelated_pressure_24h`), and one piece of evidence counts once.
    #[serde(default)]
    pub no_related_visitor: bool,
    /// Departments whose staff opened the record in the last 24 h without a relationship
    /// and outside where their lookups usually go (this access included).
    pub unexplained_depts_24h: u32,
    pub failed_15m: u32,
    /// Refused requests (other than logins) by this user in the last hour, this one
    /// included, and how many their usual failure rate makes expected.
    #[serde(default)]
    pub failed_requests_1h: u32,
    #[serde(default)]
    pub failed_requests_expected_1h: f32,
    pub new_ip: bool,
    pub new_app: bool,
    /// Times this user used this address / app before (when known).
    pub ip_uses: Option<u32>,
    pub app_uses: Option<u32>,
    /// Earlier events at the whole site from this address's network / this client (when
    /// known and the site has history).
    #[serde(default)]
    pub network_site_uses: Option<u32>,
    #[serde(default)]
    pub app_site_uses: Option<u32>,
    /// The first event from a network no one at the site has worked from (`network_site_uses`
    /// 0 while the site's networks are all remembered, `MAX_SITE_SOURCES`), counted once
    /// it is folded in: a failed login, which is not, leaves the network new. Such an
    /// access alerts whatever its score (`super::alerts_alone`).
    #[serde(default)]
    pub network_new_to_site: bool,
    /// The first access of the user's department from another department's network (see
    /// [`ForeignNetwork`]). Such an access alerts whatever its score (`super::alerts_alone`).
    #[serde(default)]
    pub foreign_network: Option<ForeignNetwork>,
    /// The user's first access from outside the site's private networks (a public address:
    /// not RFC 1918, shared, loopback, link-local or IPv6 unique-local; `network_of`),
    /// with the share of the site's events that came from outside before it: only where
    /// that is rare (under `OUTSIDE_ROUTINE_SHARE`), not from a network of the site's own
    /// (`OWN_NETWORK_SHARE`), once the site and the user have history, never for a failed
    /// login. Such an access alerts whatever its score (`super::alerts_alone`): the new
    /// device from outside the network.
    #[serde(default)]
    pub first_outside: Option<f32>,
    /// A run of lookups of other departments' records: this one and at least one other
    /// within the hour, of different records, more than the user's habit makes likely (at
    /// most `STRAY_RUN_SURPRISE`'s chance), on a record with a long history the department
    /// has (almost) no share in (`STRAY_RUN_SHARE`), homed in a department the user's
    /// seldom goes to (`Context::strays`: rarer than uniform in its pattern of such
    /// lookups). A consult goes where its department is asked, one record at a time; a
    /// browse of other wards' patients does not. Alerts whatever its score
    /// (`super::alerts_alone`), evidence twice over: the run names several records.
    #[serde(default)]
    pub stray_run: bool,
    /// Days without any activity before the current session began.
    pub days_inactive: f32,
    /// The account came back from dormancy before this session and is not back at work
    /// yet: `dormancy_vs_usual_break` carries the return (see [`REVIVAL_MIN_DAYS`]).
    #[serde(default)]
    pub revived: Option<Revived>,
    /// The user's usual longest break, in days (before this session).
    pub usual_break_days: f32,
    /// Accesses to unrelated patients by this user in the last hour, this one included,
    /// and how many the user's habit would make expected among the hour's accesses.
    pub unrelated_1h: u32,
    #[serde(default)]
    pub unrelated_expected_1h: f32,
    /// For an unrelated access: the department most of the patient's record activity comes
    /// from, and how many of the user's department's earlier unrelated accesses went to
    /// patients homed there (of how many).
    pub home_dept: Option<String>,
    pub pair_count: u32,
    pub pair_total: u32,
    pub query_count: Option<u32>,
    pub export: bool,
    /// A Patient search returning demographics wholesale; such searches by the user in the
    /// hour, this one included; a page beyond the first.
    #[serde(default)]
    pub patient_sweep: bool,
    #[serde(default)]
    pub sweeps_1h: u32,
    #[serde(default)]
    pub later_page: bool,
    /// Records the user's searches asked for within the hour (this one included), and the
    /// user's usual high hour.
    #[serde(default)]
    pub asked_1h: u32,
    #[serde(default)]
    pub usual_asked_1h: f32,
    /// Share of the user's department's activity in this hour (when it has history).
    #[serde(default)]
    pub peer_hour_share: Option<f32>,
    /// For an event a search wrote per patient in its results: the patients its request
    /// has listed so far, this one included.
    #[serde(default)]
    pub listed: Option<u32>,
    pub same_family_name: bool,
    /// What the care context said of this access: the treatment relationship active at the
    /// time, the personal link, and whether it answered at all (no relationship then means
    /// none is known).
    #[serde(default)]
    pub care: Option<care::Relation>,
    #[serde(default)]
    pub personal: Option<care::Personal>,
    #[serde(default)]
    pub care_covered: bool,
    /// The record is on the site's watch list, labelled restricted on the event, marked by
    /// the server's Patient resource (`care::Assessment::marked`), or is a member of
    /// staff's (`staff_record`).
    pub watched: bool,
    /// The patient bears the name of another user of the site, and no other patient seen
    /// bears it: a colleague's own record, watched as the site's listed records are.
    #[serde(default)]
    pub staff_record: bool,
    /// A colleague's own record (`staff_record`) opened by this user for the first time
    /// (`first_pair`), whose bearer works, as a user of the site, in the department this
    /// access is from, while that department has no history with the record: someone the
    /// user works beside, and no work of the department's on them. That is evidence twice
    /// over (`super::evidence`). So is any look from that department, by any of its users,
    /// after it has done no work on the record for [`STAFF_RECORD_WORK_DAYS`]
    /// (`dept_idle_days`), or after no one has for [`RECORD_QUIET_DAYS`]
    /// (`record_quiet_days`), whatever share of the record's history it holds. A department
    /// with some history with the record may be consulting on it, a user going back to the
    /// record is a consult continued, and one whose work goes to unrelated records
    /// routinely (`ROUTINE_UNRELATED_RATE`) is at work: each waits for corroboration.
    #[serde(default)]
    pub own_colleague: bool,
    /// For a look at a colleague's own record (`staff_record`) from the colleague's own
    /// department, which holds a share of the record's history but has done no work on it for
    /// [`STAFF_RECORD_WORK_DAYS`] or more: the whole days since its last work. The look
    /// is then one without a working relationship.
    #[serde(default)]
    pub dept_idle_days: Option<u32>,
    /// For a look at a colleague's own record from the colleague's own department when no
    /// one has worked on the record for [`RECORD_QUIET_DAYS`] or more: the whole days since
    /// anyone's work on it. The record is out of everyone's care; the look is then one
    /// without a working relationship, evidence twice over as `dept_idle_days`.
    #[serde(default)]
    pub record_quiet_days: Option<u32>,
    /// For a shared family name: how many earlier patients had it, of how many, and the
    /// user's new patients a day (their exposure to a namesake by chance).
    pub name_patients: u32,
    pub patients_seen: u32,
    #[serde(default)]
    pub new_patients_per_day: f32,
    pub user_events: u32,
}

/// FNV-1a, 64 bit: stable across Rust releases and platforms (these hashes are persisted in
/// the detector snapshot), and fast for short identifiers.
#[derive(Default, Clone, Copy)]
pub struct Fnv64(u64);

impl Hasher for Fnv64 {
    fn finish(&self) -> u64 {
        // A final avalanche so identity-hashed maps spread well.
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
}

fn h64<T: Hash + ?Sized>(v: &T) -> u64 {
    let mut h = Fnv64::default();
    v.hash(&mut h);
    h.finish()
}

/// Map keys here are already well-mixed 64-bit hashes: use them as they are.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ *b as u64;
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type IdBuild = std::hash::BuildHasherDefault<IdHasher>;
type IdMap<V> = HashMap<u64, V, IdBuild>;
type IdSet = HashSet<u64, IdBuild>;

/// Words written beside a name that are not part of it (lowercase ASCII), with the length
/// of the longest, counted once at compile time: a longer word is none of them ([`one_of`]).
struct Words {
    list: &'static [&'static str],
    longest: usize,
}

impl Words {
    const fn new(list: &'static [&'static str]) -> Words {
        let (mut i, mut longest) = (0, 0);
        while i < list.len() {
            if list[i].len() > longest {
                longest = list[i].len();
            }
            i += 1;
        }
        Words { list, longest }
    }
}

/// Titles written before a name ("Dr Jane Smith", "Mrs. Smith"), compared lowercased
/// without their full stop.
const TITLES: Words = Words::new(&[
    "dr", "prof", "mr", "mrs", "ms", "mx", "miss", "sir", "dame", "rev",
]);

/// Degrees, credentials and generational suffixes written after a name ("Jane Smith, MD",
/// "John Smith Jr."), compared lowercased without full stops; only as written in capitals
/// or with a full stop, or mixed-case as the degree is ("PhD", "Jr"), so that a name such
/// as Ma or Do ("Ma, Yu", "Smith, Do") stays one.
const SUFFIXES: Words = Words::new(&[
    "md", "do", "rn", "np", "pa", "pa-c", "phd", "pharmd", "rph", "dds", "dmd", "mbbs", "mbchb",
    "frcp", "facs", "lpn", "lvn", "cna", "crna", "dnp", "aprn", "fnp", "msn", "bsn", "ma", "msc",
    "bsc", "mph", "mba", "pt", "dpt", "ot", "jr", "sr", "ii", "iii", "iv",
]);

/// Name particles that belong to a family name written after the given name ("Anna van
/// der Berg" and "van der Berg, Anna" both give vanderberg), recognised in lower case.
const PARTICLES: &[&str] = &[
    "van", "von", "der", "den", "de", "del", "della", "di", "da", "du", "la", "le", "ten", "ter",
];

/// Whether `word`, without its full stops and in any case, is one of `words`.
fn one_of(word: &str, words: &Words) -> bool {
    // Every entry is ASCII: a word longer than the longest, stops aside, is none of them
    // (most names), and needs no comparison.
    if word.len() > words.longest + word.matches('.').count() {
        return false;
    }
    let letters = word.chars().filter(|c| *c != '.');
    words.list.iter().any(|t| {
        let mut w = letters.clone();
        t.chars()
            .all(|c| w.next().is_some_and(|x| x.to_ascii_lowercase() == c))
            && w.next().is_none()
    })
}

/// The [`SUFFIXES`] written in mixed case ("PhD", "Jr"), which count so too.
const MIXED_CASE_SUFFIXES: Words = Words::new(&["phd", "pharmd", "jr", "sr", "mbchb"]);

/// A word written after a name that is a degree or suffix, not part of the name.
fn suffix_word(word: &str) -> bool {
    one_of(word, &SUFFIXES)
        && (word.contains('.')
            || word
                .chars()
                .filter(|c| c.is_alphabetic())
                .all(|c| c.is_uppercase())
            || one_of(word, &MIXED_CASE_SUFFIXES))
}

/// A display name read as (family name, first given name): "Smith, Jane Ann" and "Dr.
/// Jane Ann Smith, MD" both give ("Smith", Some("Jane")). Titles, degrees and suffixes are
/// left out, and so are initials and other words ending in a full stop. Words as written.
fn name_parts(display: &str) -> Option<(Cow<'_, str>, Option<&str>)> {
    // A login written as an address, "jane.smith@hospital.org" or "jane_smith@…": the
    // words of its local part, given name first.
    if let Some((local, _)) = display.trim().split_once('@') {
        let mut words = local.split(['.', '_']).filter(|w| !w.is_empty());
        return match (words.next(), words.next_back()) {
            (Some(given), Some(family)) => Some((Cow::Borrowed(family), Some(given))),
            _ => None,
        };
    }
    let mut parts: Vec<&str> = display.split(',').map(str::trim).collect();
    // Trailing comma parts that are only degrees or suffixes: "Jane Smith, MD, PhD".
    while parts.len() > 1
        && parts
            .last()
            .is_some_and(|p| p.is_empty() || p.split_whitespace().all(suffix_word))
    {
        parts.pop();
    }
    match parts.as_slice() {
        [] => None,
        [one] => {
            let mut w: Vec<&str> = one
                .split_whitespace()
                .filter(|w| !one_of(w, &TITLES))
                .collect();
            // Degrees and suffixes after a given and a family name: "Jane Smith MD".
            while w.len() > 2 && w.last().is_some_and(|x| suffix_word(x)) {
                w.pop();
            }
            w.retain(|x| !x.ends_with('.'));
            let last = w.len().checked_sub(1)?;
            // Particles before the last word, not the first: "Anna van der Berg".
            let mut from = last;
            while from > 1 && PARTICLES.contains(&w[from - 1]) {
                from -= 1;
            }
            let family = match &w[from..] {
                [one] => Cow::Borrowed(*one),
                words => Cow::Owned(words.concat()),
            };
            Some((family, w[..from].first().copied()))
        }
        [family, given, ..] => Some((
            Cow::Borrowed(*family),
            given
                .split_whitespace()
                .find(|w| !one_of(w, &TITLES) && !w.ends_with('.')),
        )),
    }
}

/// Letters and hyphens of a name, lowercased: the form names are compared in.
fn fold(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_alphabetic() || *c == '-')
        .collect::<String>()
        .to_lowercase()
}

/// A family name as names are compared ([`fold`]); `None` under two letters.
fn folded_family(family: &str) -> Option<String> {
    let n = fold(family);
    (n.len() >= 2).then_some(n)
}

/// A family name from a display name: "Smith, Jane" → smith; "Dr. Jane Smith, MD" → smith.
pub fn family_name(display: &str) -> Option<String> {
    folded_family(&name_parts(display)?.0)
}

/// A patient's display name parsed once for everything an event asks of it: the family
/// name as [`family_name`] gives it and the key as [`person_key`] does.
#[derive(Debug, Default)]
struct ParsedName {
    family: Option<String>,
    key: Option<u64>,
}

impl ParsedName {
    fn of(display: Option<&str>) -> ParsedName {
        let Some((family, given)) = display.and_then(name_parts) else {
            return ParsedName::default();
        };
        let family = folded_family(&family);
        let key = family
            .as_deref()
            .zip(given.map(fold))
            .and_then(|(f, g)| (!g.is_empty()).then(|| h64(&(f, g.as_str()))));
        ParsedName { family, key }
    }
}

/// A person's name from a display name, as a key: family name and first given name,
/// normalised as [`family_name`] does ("Smith, Jane Ann" and "Dr. Jane Smith" give the same
/// key). `None` without both.
pub fn person_key(display: &str) -> Option<u64> {
    ParsedName::of(Some(display)).key
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct UserState {
    /// (time, records asked) of the user's searches in the last hour; the usual high hour
    /// of that sum, learned only from hours that are over (so a sweep in progress does not
    /// raise its own baseline), and the hour being counted (start, sum).
    #[serde(default)]
    asked: VecDeque<(i64, u32)>,
    #[serde(default)]
    usual_asked_hi: f32,
    #[serde(default)]
    asked_bucket: (i64, f32),
    /// Times of the user's Patient sweeps in the last hour.
    #[serde(default)]
    sweeps: VecDeque<i64>,
    hours: [f32; 24],
    weekdays: [f32; 7],
    events: f32,
    last_ms: i64,
    /// Idle gap (ms) before the current session started.
    session_gap_ms: i64,
    /// (time, patient hash) for the last hour.
    recent: VecDeque<(i64, u64)>,
    /// EWMA of the distinct-patients-per-hour this user shows.
    usual_d1h: f32,
    /// Running maximum-ish: an envelope of d1h (for "usual ≤ N"), rising with time at a
    /// level (`ENVELOPE_MINUTE`), decaying with events.
    usual_d1h_hi: f32,
    ips: Vec<(u64, u32)>,
    apps: Vec<(u64, u32)>,
    failed: VecDeque<i64>,
    dept: Option<u64>,
    /// EWMA of how often this user opens a patient with a record history that the user's
    /// department never touched (high for radiology or pharmacy, near 0 on a ward).
    cross_rate: f32,
    /// EWMA of how often this user opens a patient for the first time.
    first_rate: f32,
    /// Hour-of-day histogram of the starts of this user's sessions (successful activity
    /// after at least `SESSION_IDLE` without any), by the hour nearest each start.
    #[serde(default)]
    starts: [f32; 24],
    #[serde(default)]
    sessions: f32,
    /// Local hour at which the current session started (the hour nearest its first event,
    /// `Context::local`; `starts` counts by it too).
    #[serde(default)]
    session_start_hour: u8,
    /// Last successful activity (failed logins do not open a session).
    #[serde(default)]
    last_ok_ms: i64,
    /// The user's usual long breaks (ms): an envelope of the idle gaps before sessions that
    /// jumps up to a longer gap and decays slowly; and its value before the current session.
    #[serde(default)]
    break_hi_ms: f32,
    #[serde(default)]
    break_hi_before_ms: f32,
    /// Times of this user's first accesses to patients their department has no history
    /// with, in the last hour (bounded).
    #[serde(default)]
    unrelated_recent: VecDeque<i64>,
    /// `cross_rate` as it stood before the first of the unrelated lookups in
    /// `unrelated_recent`: a run of such lookups is judged against the user's habit, not
    /// against itself. `None` in snapshots from before it was kept.
    #[serde(default)]
    cross_rate_before_run: Option<f32>,
    /// This user's refused requests and all requests (other than logins), both decaying
    /// by `FAIL_MEMORY` per request: the evidence for their usual failure rate.
    #[serde(default)]
    fail_counts: [f32; 2],
    /// Times of this user's refused requests (other than logins) in the last hour (bounded).
    #[serde(default)]
    failed_requests: VecDeque<i64>,
    /// When the current run of refusals began and the user's failure rate as it stood
    /// before it: a run is judged against the habit, not against itself, for up to an hour.
    #[serde(default)]
    fail_rate_before_run: Option<(i64, f32)>,
    /// The department the user's events last named (for the user card only).
    #[serde(default)]
    dept_name: Option<String>,
    /// Running rate of this user's accesses outside any known treatment relationship, over
    /// the accesses the care context answers for.
    #[serde(default)]
    outside_rate: f32,
    /// Whether the care context links this user to a Practitioner (as of their latest
    /// event; `None` before any event met a care context).
    #[serde(default)]
    linked: Option<bool>,
}

impl UserState {
    /// How often this user's requests are refused: their counts with `FAIL_PRIOR` requests
    /// at the site's rate added, so a user with little history is judged by the site.
    fn fail_rate(&self, site: f32) -> f32 {
        let [refused, requests] = self.fail_counts;
        (refused + FAIL_PRIOR * site) / (requests + FAIL_PRIOR)
    }

    /// `fail_rate`, but during a run of refusals that began within the hour, no higher
    /// than before it began. Refusals that go on for longer are the user's habit (a broken
    /// client, a workflow that checks for records that do not exist).
    /// `in_run`: a refusal in the last hour (the caller has just counted them).
    fn habitual_fail_rate(&self, now: i64, site: f32, in_run: bool) -> f32 {
        let rate = self.fail_rate(site);
        match self.fail_rate_before_run {
            Some((began, before)) if in_run && now - began <= HOUR => before.min(rate),
            _ => rate,
        }
    }

    /// How often this user habitually opens records their department has no history with:
    /// `cross_rate`, but during a run of such lookups (any in the last hour) no higher than
    /// before the run began. Otherwise a ward nurse's second lookup in a row would count as
    /// less unusual than the first, because the first one raised the rate.
    fn habitual_cross_rate(&self, now: i64) -> f32 {
        match self.cross_rate_before_run {
            Some(before) if self.in_unrelated_run(now) => before.min(self.cross_rate),
            _ => self.cross_rate,
        }
    }

    /// Whether the user opened a record their department has no history with in the hour
    /// before `now`.
    fn in_unrelated_run(&self, now: i64) -> bool {
        self.unrelated_recent
            .back()
            .is_some_and(|t| *t >= now - HOUR)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct PatientState {
    /// (time, user hash) for the last 24 h.
    recent: VecDeque<(i64, u64)>,
    depts: Vec<(u64, f32)>,
    total: f32,
    usual_users: f32,
    last_ms: i64,
    /// Last 24 h of accesses by users whose department had no history with the patient:
    /// (time, user hash, how unusual such access is for that user).
    #[serde(default)]
    unrelated: VecDeque<(i64, u64, f32)>,
    /// Last 24 h of those accesses that were also outside the department's usual pattern
    /// (`Context::strays`): (time, department hash), one entry per department, its latest.
    #[serde(default)]
    unexplained: VecDeque<(i64, u64)>,
}

/// Earlier unrelated lookups a department needs before it has a pattern: one to be quoted in
/// a reason, or to be outside of.
pub const MIN_PATTERN: f32 = 10.0;

/// Push onto a time-ordered buffer after dropping the entries older than `since` and, at
/// `cap`, the oldest: the buffer never grows past `cap` (a push onto a full VecDeque doubles
/// its allocation). True when the cap dropped an entry.
fn push_window<T>(
    q: &mut VecDeque<T>,
    item: T,
    cap: usize,
    since: i64,
    time: impl Fn(&T) -> i64,
) -> bool {
    let mut capped = false;
    while q.len() >= cap || q.front().is_some_and(|e| time(e) < since) {
        capped |= q.len() >= cap;
        q.pop_front();
    }
    q.push_back(item);
    capped
}

/// How long a look at a colleague's own record from the colleague's own department comes
/// after work on it (`Context::staff_record_idle`), in whole days.
#[derive(Debug, Clone, Copy, Default)]
struct Idle {
    /// Since the department's own last work, when [`STAFF_RECORD_WORK_DAYS`] or more.
    dept_days: Option<u32>,
    /// Since anyone's, when [`RECORD_QUIET_DAYS`] or more.
    quiet_days: Option<u32>,
}

impl Idle {
    /// No work to do on the record, by either measure.
    fn any(&self) -> bool {
        self.dept_days.is_some() || self.quiet_days.is_some()
    }
}

/// How a department stands to a patient's record: the one reading for the features of an
/// access and for what the context keeps of it.
#[derive(Debug, Clone, Copy, Default)]
struct Relation {
    /// The department's share of the record's activity.
    share: f32,
    /// Under `RELATED_SHARE` of a record with history: no working relationship.
    unrelated: bool,
    /// A known department with a working relationship (`RELATED_SHARE` or more): care that
    /// explains a sensitive access, such as a namesake's record. Not the same as
    /// `!unrelated`: a user without a department is neither.
    cares: bool,
    /// For an unrelated access to a record with a home department: where the department's
    /// unrelated lookups usually go.
    pair: Option<Pair>,
}

#[derive(Debug, Clone, Copy)]
struct Pair {
    dept: u64,
    home: u64,
    /// Earlier unrelated lookups by the department to patients homed in `home`, of `total`.
    count: f32,
    total: f32,
    /// -ln of the smoothed share `count / total`.
    rarity: f32,
}

/// Distinct users who opened the patient's record in the last day without a departmental
/// relationship, and the summed weight of how unusual that was for each of them.
fn unrelated_crowd(p: &PatientState, now: i64) -> (Vec<u64>, f32) {
    let mut seen_users: Vec<u64> = Vec::new();
    let mut pressure = 0.0;
    for (t, u, w) in p.unrelated.iter().rev() {
        if *t < now - DAY {
            break;
        }
        if !seen_users.contains(u) {
            seen_users.push(*u);
            pressure += w;
        }
    }
    (seen_users, pressure)
}

/// The whole context. Serialisable (snapshotted with the cursor).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Context {
    users: IdMap<UserState>,
    patients: IdMap<PatientState>,
    pairs_now: IdSet,
    pairs_old: IdSet,
    site_hours: [f32; 24],
    site_total: f32,
    /// Session-start hours over all users.
    #[serde(default)]
    site_starts: [f32; 24],
    #[serde(default)]
    site_sessions: f32,
    /// The mean outside-care rate of the users with [`SITE_OUTSIDE_USER_EVENTS`] events
    /// the care context has met: derived from the users' rates (not kept in a snapshot,
    /// so that the snapshot's layout stays), refreshed every [`SITE_OUTSIDE_REFRESH`]
    /// events and when a snapshot is read.
    #[serde(skip)]
    site_outside_rate: f32,
    #[serde(skip)]
    site_outside_stale_in: u32,
    /// Department names by hash, for explanations (bounded by the number of departments seen).
    dept_names: IdMap<String>,
    /// Where each department's staff go when they open a record their department has no
    /// history with: counts by (department, the patient's home department) hash, and per
    /// department in total. Consulting services have a pattern (cardiology on surgical
    /// patients); a lookup outside it is rarer. Bounded by `MAX_DEPT_PAIRS`.
    #[serde(default)]
    bridges: IdMap<f32>,
    #[serde(default)]
    bridges_from: IdMap<f32>,
    /// Distinct patients seen per family name (hash), and in all: sharing a common name is
    /// chance, sharing a rare one is family. Bounded by `MAX_NAMES` (later names count in
    /// the total only).
    #[serde(default)]
    names: IdMap<f32>,
    #[serde(default)]
    names_total: f32,
    /// Refused requests and all requests (other than logins) at the site, decaying by
    /// `SITE_FAIL_MEMORY` per request: the prior of each user's own rate.
    #[serde(default)]
    site_fail_counts: [f32; 2],
    /// Successful events per network (`network_of` hash) and per client application, at
    /// the whole site. Bounded by `MAX_SITE_SOURCES` each.
    #[serde(default)]
    site_networks: IdMap<f32>,
    #[serde(default)]
    site_apps: IdMap<f32>,
    /// Hour-of-day activity per department (bounded like `dept_names`).
    #[serde(default)]
    dept_hours: IdMap<DeptHours>,
    /// Recent requests by id hash (bounded by `MAX_REQUESTS`).
    #[serde(default)]
    requests: IdMap<RequestState>,
    /// Accounts back from dormancy and not back at work yet, by user (see
    /// [`REVIVAL_MIN_DAYS`]; dropped when they are, or when the user is forgotten).
    /// Layout 1 ends before it.
    #[serde(default)]
    revivals: IdMap<Revived>,
    /// Each user's new patients a day (see [`NewPatients`]; bounded by the users, forgotten
    /// with them). Layout 2 ends before it.
    #[serde(default)]
    new_patients: IdMap<NewPatients>,
    /// The users' own names (`person_key` of their display) and whose they are: a patient
    /// who bears one is a member of staff. Bounded by `MAX_NAMES`. Layout 3 ends before it.
    #[serde(default)]
    staff_names: IdMap<u64>,
    /// Distinct patients seen per full name (`person_key`): a staff member's name on one
    /// patient names them; on several, it is a common name. Bounded by `MAX_NAMES`; once
    /// full, a name not in it names nobody (its count is unknown).
    #[serde(default)]
    patient_names: IdMap<f32>,
    /// When the colleague's own department last worked on a colleague's own record
    /// (`staff_named`): by patient, (department hash, ms) of its latest access not held
    /// apart (a write, or a look while it was at work on the record). Only staff records,
    /// at most `MAX_DEPTS` departments each (the least recent forgotten; more than one when
    /// the colleague's department changes); forgotten with the patient. Layout 4 ends
    /// before it.
    #[serde(default)]
    staff_record_work: IdMap<Vec<(u64, i64)>>,
    /// Which departments work from each network: successful events by department hash,
    /// per network (`network_of` hash) as far as `site_networks` remembers it, at most
    /// `MAX_NETWORK_DEPTS` departments each (later ones are not counted). Layout 5 ends
    /// before it.
    #[serde(default)]
    network_depts: IdMap<Vec<(u64, f32)>>,
    /// Successful events from outside the site's private networks ([`network_of`]): per
    /// user (bounded by the users, forgotten with them), and at the whole site. Layout 5
    /// ends before them too.
    #[serde(default)]
    outside_users: IdMap<f32>,
    #[serde(default)]
    site_outside: f32,
    /// The peer group of each user whose events name no department (`super::peers`), by
    /// user hash: set by training from its window's events, kept with the baselines, and
    /// read as the user's department where an event and the care context name none.
    /// Bounded by the users of the training window. Layout 6 ends before it.
    #[serde(default)]
    peer_groups: IdMap<u32>,
    /// For each user with no department and no peer group, since training: their opens of
    /// patients, and how many went to patients homed in each department (at most
    /// `MAX_DEPTS`), until they join a group (`NEWCOMER_OPENS`, `NEWCOMER_SHARE`).
    /// Bounded by the users, forgotten with them. Layout 7 ends before it.
    #[serde(default)]
    newcomers: IdMap<Newcomer>,
    /// When anyone last worked on a colleague's own record (`staff_named`): by patient, the
    /// ms of its latest access by any department not held apart (`Context::held_look`).
    /// Only staff records; forgotten with the patient. Layout 8 ends before it (read as no
    /// work known, which leaves the record to [`STAFF_RECORD_WORK_DAYS`]).
    #[serde(default)]
    record_work: IdMap<i64>,
    /// Users who joined a peer group since the last `take_joined` (at most
    /// `MAX_JOINED_SAID`; the rest are counted in `joined_unsaid`). Never snapshotted.
    #[serde(skip)]
    joined: Vec<Joined>,
    #[serde(skip)]
    joined_unsaid: u64,
    /// Each peer group's department hash and number, derived from `peer_groups` when a
    /// newcomer first needs it (the numbers do not change after training). Never
    /// snapshotted.
    #[serde(skip)]
    group_depts: Vec<(u64, u32)>,
    /// Whether the full site-source table was logged (once per process).
    #[serde(skip)]
    site_sources_full_said: bool,
    /// Not snapshotted: counted into the daemon's metrics as it happens.
    #[serde(skip)]
    forgotten: Forgotten,
    /// The site's watch list (hashes of `watch_key`s): set from the config at each start,
    /// never snapshotted.
    #[serde(skip)]
    watched: IdSet,
    #[serde(skip)]
    tz: Option<chrono_tz::Tz>,
    /// The site's care context (see `crate::care`): set by the owner, never snapshotted
    /// (the state database keeps its facts).
    #[serde(skip)]
    care: Option<std::sync::Arc<care::Index>>,
    /// The patient bound in force: `MAX_PATIENTS` unless lowered (`set_max_patients`) to
    /// measure detection at the bound on a small hospital. Never snapshotted.
    #[serde(skip)]
    max_patients: Option<usize>,
}

/// A user's opens of patients, by the department each patient's record activity mostly
/// comes from (`Context::note_newcomer`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Newcomer {
    opens: f32,
    homes: Vec<(u64, f32)>,
}

/// A user who joined a peer group after training (`Context::take_joined`).
#[derive(Debug, Clone, PartialEq)]
pub struct Joined {
    /// The user's reference (never a name).
    pub user: String,
    pub group: u32,
    /// Their opens of patients, and how many went to the group's patients.
    pub opens: u32,
    pub to_group: u32,
}

/// Joins said per `take_joined` at most; more are counted only.
pub const MAX_JOINED_SAID: usize = 64;

/// Where an event's department came from (`Context::with_department`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeptFrom {
    /// The event named it, or nothing named one.
    Event,
    /// The care context.
    Care,
    /// The user's peer group.
    Peers,
}

fn bump(list: &mut Vec<(u64, u32)>, key: u64, cap: usize) -> bool {
    if let Some(e) = list.iter_mut().find(|e| e.0 == key) {
        e.1 += 1;
        return false;
    }
    if list.len() >= cap {
        // Forget the least used.
        if let Some((i, _)) = list.iter().enumerate().min_by_key(|(_, e)| e.1) {
            list.swap_remove(i);
        }
    }
    list.push((key, 1));
    true
}

/// Counts `features` works out that `update` needs too (one computation, not two).
#[derive(Debug, Clone, Copy, Default)]
struct Known {
    /// Distinct patients of the user in the last hour, this access included.
    user_patients_1h: Option<u32>,
    /// Distinct users of the patient in the last day, before this access.
    patient_users_24h: Option<u32>,
    /// How the user's department stood to the patient's record (which had history).
    relation: Option<Relation>,
    /// The event's source, hashed once for both passes.
    sources: Option<SourceKeys>,
    /// What the care context said of the access.
    care: Option<care::Assessment>,
    /// Whether the access is held apart from its department's history
    /// (`Context::held_look`).
    held: Option<bool>,
    /// The member of staff whose own record it is (`Context::staff_named`), if any.
    colleague: Option<Option<u64>>,
}

/// An account back from dormancy that is not back at work yet (see [`REVIVAL_MIN_DAYS`]):
/// kept per user in the context, said in [`Facts::revived`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Revived {
    /// When it came back (ms since epoch).
    pub at_ms: i64,
    /// The days without activity it came back from, and its usual longest break then.
    pub gap_days: f32,
    pub usual_days: f32,
    /// Its events since it came back, and the events that put it back at work
    /// ([`REVIVAL_SESSIONS`] of its usual sessions).
    pub events: f32,
    pub work: f32,
}

impl Revived {
    /// The `dormancy_vs_usual_break` value of the return.
    fn dormancy(&self) -> f32 {
        dormancy(self.gap_days, self.usual_days)
    }

    /// Whether it is still suspect at `now`: not back at work, not past [`REVIVAL_DAYS`].
    fn open_at(&self, now: i64) -> bool {
        self.events < self.work && now - self.at_ms <= REVIVAL_DAYS * DAY
    }
}

/// `dormancy_vs_usual_break`: the idle days over the usual longest break, as a log ratio.
fn dormancy(days_inactive: f32, usual_break_days: f32) -> f32 {
    ((days_inactive + 1.0) / (usual_break_days + 1.0))
        .ln()
        .max(0.0)
}

/// How much of a user's daily volume of new patients the running estimate keeps from
/// one day to the next (an EWMA over the user's working days; about a week's memory).
const NEW_PATIENTS_MEMORY: f32 = 0.85;

/// How many patients a user opens for the first time a day: their exposure to namesakes
/// by chance (see `same_family_name_rarity`). Kept per user in the context.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct NewPatients {
    /// When the day being counted began (ms since epoch; a day is the 24 hours from the
    /// user's first patient access after the previous one ended) and its first accesses
    /// so far.
    since_ms: i64,
    today: f32,
    /// The running estimate over the user's past days (`NEW_PATIENTS_MEMORY`), and the
    /// days it has seen end.
    usual: f32,
    days: u32,
}

impl NewPatients {
    /// Count an access to a patient at `now`, `first` when the user had not opened them.
    fn count(&mut self, now: i64, first: bool) {
        if now - self.since_ms >= DAY {
            if self.since_ms > 0 {
                self.usual = match self.days {
                    0 => self.today,
                    _ => {
                        NEW_PATIENTS_MEMORY * self.usual + (1.0 - NEW_PATIENTS_MEMORY) * self.today
                    }
                };
                self.days = self.days.saturating_add(1);
            }
            (self.since_ms, self.today) = (now, 0.0);
        }
        self.today += first as u8 as f32;
    }

    /// The user's new patients a day as of `now`: the usual, or today's so far when more
    /// (a user's first day, a busy one), at least 1.
    fn per_day(&self, now: i64) -> f32 {
        let today = if now - self.since_ms < DAY {
            self.today
        } else {
            0.0
        };
        self.usual.max(today).max(1.0)
    }
}

/// How many days pass, on average, before a user opening `per_day` new patients a day
/// meets by chance a namesake a name `name_patients` of `patients_seen` patients have (for
/// the explanation; the inverse of the chance `namesake_surprise` weighs), rounded.
pub(crate) fn namesake_days(name_patients: u32, patients_seen: u32, per_day: f32) -> u64 {
    let share = (name_patients as f32 + 1.0) / (patients_seen as f32 + 1.0);
    (1.0 / namesake_chance(share, per_day.max(1.0))).round() as u64
}

/// The chance that a user who opens `per_day` new patients a day meets, on a given day, one
/// with a name `share` of the patients have: 1 - e^(-per_day * share).
fn namesake_chance(share: f32, per_day: f32) -> f32 {
    -(-(per_day * share)).exp_m1()
}

/// Working days per chance namesake below which meeting one is routine for a user the
/// care context knows (see `namesake_surprise`). The review queue holds a few cases a day
/// per 100 staff, about 0.03 per user and day for every behaviour together; a namesake a
/// user meets by chance once in 100 days (0.01) would alone take a third of it.
const NAMESAKE_ROUTINE_DAYS: f32 = 100.0;

/// `same_family_name_rarity`: -ln of `namesake_chance`, floored at 0. Where the care
/// context describes the user (`known`) — so that a relative or a household shows as such, by
/// the records naming them or a shared home — a shared name alone is chance unless rarer
/// than that: less ln `NAMESAKE_ROUTINE_DAYS`. Where it does not, the name is all there is
/// to tell a relative by and counts without the cut (measured without the context: the
/// cut lost a fifth of the family lookups on drawn 101 and 103 and no false case fewer;
/// BENCHMARKS.md, "Without the care context").
fn namesake_surprise(share: f32, per_day: f32, known: bool) -> f32 {
    let p = namesake_chance(share, per_day);
    let routine = if known {
        NAMESAKE_ROUTINE_DAYS.ln()
    } else {
        0.0
    };
    (-p.max(f32::MIN_POSITIVE).ln() - routine).max(0.0)
}

/// An event's source as the context keys it: the address, its network, the client.
#[derive(Debug, Clone, Copy, Default)]
struct SourceKeys {
    ip: Option<u64>,
    network: Option<u64>,
    app: Option<u64>,
    /// The address is outside the site's private networks ([`network_of`]).
    outside: bool,
}

impl SourceKeys {
    fn of(r: &AuditRecord) -> Self {
        let network = r.source_ip.as_deref().map(network_of);
        SourceKeys {
            ip: r.source_ip.as_deref().map(h64),
            network: network.map(|n| n.0),
            app: r.client_app.as_deref().map(h64),
            outside: network.is_some_and(|n| n.1),
        }
    }
}

/// A set of 64-bit hashes for counting distinct values: open addressing, cleared in O(1)
/// by a generation stamp, reused across calls (no allocation once grown).
#[derive(Default)]
struct HashSetScratch {
    keys: Vec<u64>,
    stamps: Vec<u32>,
    generation: u32,
}

impl HashSetScratch {
    fn reset(&mut self, n: usize) {
        let cap = (n * 2).next_power_of_two().max(64);
        if self.keys.len() < cap {
            self.keys = vec![0; cap];
            self.stamps = vec![0; cap];
        }
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.stamps.fill(0);
            self.generation = 1;
        }
    }

    /// True when `k` was not in the set.
    fn insert(&mut self, k: u64) -> bool {
        let mask = self.keys.len() - 1;
        let mut i = (k as usize) & mask;
        loop {
            if self.stamps[i] != self.generation {
                self.stamps[i] = self.generation;
                self.keys[i] = k;
                return true;
            }
            if self.keys[i] == k {
                return false;
            }
            i = (i + 1) & mask;
        }
    }
}

/// A listed event as the features read it: a search without a patient of its own (the
/// patient is in its results, not opened).
fn listed_view(r: &AuditRecord) -> AuditRecord {
    AuditRecord {
        patient: None,
        patient_display: None,
        restricted: false,
        ..r.clone()
    }
}

/// Records a search asked for (`_count`, else the usual server default); `None` for
/// anything that is not a search.
fn asked_of(r: &AuditRecord) -> Option<u32> {
    let q = r.query.as_ref();
    let search = r.interaction == Interaction::Search || q.is_some_and(|q| !q.export);
    (search && r.interaction != Interaction::Export)
        .then(|| q.and_then(|q| q.count).unwrap_or(DEFAULT_PAGE))
}

/// Distinct values among the newest entries of a time-ordered list, for two windows at once
/// (`since_short` ≥ `since_long`), in one pass and without sorting; how many entries the
/// long window holds; and whether `probe` occurs in each window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Distinct {
    short: u32,
    long: u32,
    entries_long: u32,
    probe_in_short: bool,
    probe_in_long: bool,
}

fn distinct2(
    recent: &VecDeque<(i64, u64)>,
    since_short: i64,
    since_long: i64,
    probe: Option<u64>,
) -> Distinct {
    thread_local! {
        static SCRATCH: std::cell::RefCell<HashSetScratch> = std::cell::RefCell::default();
    }
    SCRATCH.with(|s| {
        let mut set = s.borrow_mut();
        set.reset(recent.len());
        let mut d = Distinct::default();
        let mut in_short = true;
        for &(t, v) in recent.iter().rev() {
            if t < since_long {
                break;
            }
            in_short &= t >= since_short;
            d.entries_long += 1;
            if set.insert(v) {
                d.long += 1;
                d.short += in_short as u32;
            }
            if probe == Some(v) {
                d.probe_in_long = true;
                d.probe_in_short |= in_short;
            }
        }
        d
    })
}

fn distinct(recent: &VecDeque<(i64, u64)>, since: i64) -> u32 {
    distinct2(recent, since, since, None).long
}

/// The local hour an event at `hour` is judged at, in a session that began at `start` (the
/// hour nearest its first event, `Context::local`): the least unusual (by `rarity`)
/// of the hours from `hour` back to `OVERRUN_HOURS` earlier, never before the session's
/// start, and, in the session's first hour when sessions often begin then (`usual_start`,
/// see `USUAL_START_SHARE`), the hour after it — `hour` itself when none is less unusual.
/// An event in the half hour before its session's start hour (a session begun at 06:40
/// began at 07:00) is in its first hour. A shift running two hours late is judged at its
/// usual last hour, one begun at 06:40 by 07:00; a session begun at 02:00 only by its own
/// night hours. (A session that has run for 23 hours reads as in its first hour again.)
pub fn judged_hour(hour: u32, start: u32, usual_start: bool, rarity: impl Fn(u32) -> f32) -> u32 {
    // Hours since the session began, 0 in the half hour before its start hour.
    let elapsed = ((hour + 25 - start % 24) % 24).saturating_sub(1);
    // In the session's first hour, the hour after it too: a shift begun twenty minutes
    // early is judged by the hour it runs into.
    let early = (elapsed == 0 && usual_start).then_some((hour + 1) % 24);
    (0..=elapsed.min(OVERRUN_HOURS))
        .map(|k| (hour + 24 - k) % 24)
        .chain(early)
        .map(|h| (h, rarity(h)))
        // The first of equals: `hour` itself unless an earlier hour is less unusual.
        .fold(None::<(u32, f32)>, |best, (h, r)| match best {
            Some((_, b)) if b <= r => best,
            _ => Some((h, r)),
        })
        .map_or(hour, |(h, _)| h)
}

/// Whether `hour` is odd for the user (under `ODD_HOUR_SHARE` of their activity) and they
/// have a habit of it: how many of their earlier sessions (the current one, begun at
/// `began`, not counted when `own_current` is 1) began at odd hours within `ODD_HOUR_BAND`
/// of it, and how rare that makes the hour, -ln(share of sessions). A physician called in
/// at night now and then has such a habit at 02:00; a day worker who sometimes stays on
/// into the evening does not. `None` while the user has fewer than `MATURE_SESSIONS`
/// sessions, or `hour` is not odd, or no session began near it.
fn odd_hour_habit(u: &UserState, hour: u32, began: u32, own_current: f32) -> Option<(u32, f32)> {
    let odd = |h: u32| u.hours[h as usize] < ODD_HOUR_SHARE * u.events;
    let total = u.sessions - own_current;
    if u.events <= 0.0 || total < MATURE_SESSIONS || !odd(hour) {
        return None;
    }
    let near = (0..=2 * ODD_HOUR_BAND).map(|k| (hour + 24 + k - ODD_HOUR_BAND) % 24);
    let n = near
        .clone()
        .filter(|&h| odd(h))
        .map(|h| u.starts[h as usize])
        .sum::<f32>()
        - if near.clone().any(|h| h == began) && odd(began) {
            own_current
        } else {
            0.0
        };
    (n >= 1.0).then(|| (n as u32, (-(n / total).ln()).clamp(0.0, 10.0)))
}

/// The session-start rarity of a session begun at an hour at which none of a user's
/// `MATURE_SESSIONS` earlier sessions began (or at most one of about fifty): what makes an
/// access at an unusual hour evidence twice over (see `super::evidence`).
pub fn unprecedented_start() -> f32 {
    rarity(0.0, MATURE_SESSIONS, 24.0)
}

/// Whether the event's user is the only one to have opened its patient's record within
/// 24 hours (`patient_users_24h`, ln(1 + users), under ln 3): a record no care is going
/// on in. A watched record opened so, without a working relationship, is evidence twice
/// over (see `super::evidence`).
pub fn alone_on_record(row: &[f32; N_FEATURES]) -> bool {
    row[Feature::HasPatient.index()] > 0.0 && row[Feature::PatientUsers24h.index()] < 3f32.ln()
}

fn rarity(count: f32, total: f32, bins: f32) -> f32 {
    let p = (count + 0.5) / (total + 0.5 * bins);
    (-p.ln()).clamp(0.0, 10.0)
}

/// Forget the least recently active half of `map`; how many were forgotten.
fn evict_half<V>(map: &mut IdMap<V>, last: impl Fn(&V) -> i64) -> u64 {
    let before = map.len();
    let mut times: Vec<i64> = map.values().map(&last).collect();
    let mid = times.len() / 2;
    let (_, cut, _) = times.select_nth_unstable(mid);
    let cut = *cut;
    map.retain(|_, v| last(v) > cut);
    (before - map.len()) as u64
}

/// What the memory bounds made the context forget (since the last `take_forgotten`): the
/// least recently active users and patients when `MAX_USERS` / `MAX_PATIENTS` is reached
/// (the half not seen for longest, all at once), and the older generation of user–patient
/// pairs each time the newer one holds `MAX_PAIRS / 2`. A forgotten user or patient starts
/// again as new; a forgotten pair reads as a first access. Also the fanned-out searches
/// forgotten at `MAX_REQUESTS`, and what a bound kept it from counting: a department past
/// `MAX_NETWORK_DEPTS` on one network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Forgotten {
    pub users: u64,
    pub patients: u64,
    pub pairs: u64,
    /// Successful events whose department was not counted for its network, the network
    /// already counting `MAX_NETWORK_DEPTS` others: such a network reads as shared, never
    /// as another department's own (`Facts::foreign_network`).
    pub network_depts: u64,
    /// Fanned-out searches forgotten while still within `REQUEST_SPAN` (the older half,
    /// when more than `MAX_REQUESTS` began within it): a later event of one reads as a new
    /// search, whose listing may alert again.
    pub requests: u64,
}

/// Whether a site with this outside-care rate has a care context that describes almost
/// nobody's work ([`SITE_CARE_BLIND_RATE`]).
pub fn describes_nobody(site_outside_rate: f32) -> bool {
    site_outside_rate >= SITE_CARE_BLIND_RATE
}

impl Context {
    pub fn new(tz: chrono_tz::Tz) -> Self {
        Context {
            tz: Some(tz),
            ..Default::default()
        }
    }

    /// Use the site's care context from now on (`None`: without one, as before it was read).
    pub fn set_care(&mut self, index: Option<std::sync::Arc<care::Index>>) {
        self.care = index;
    }

    /// The care context in use, if any.
    pub fn care(&self) -> Option<&care::Index> {
        self.care.as_deref()
    }

    /// Read each of `groups`' users (`super::peers::infer`) as working in their peer group
    /// wherever an event and the care context name no department; replaces the groups
    /// held.
    /// Those in no group are kept as such (0): a group is joined later only by users who
    /// first appear after training (`note_newcomer`).
    pub fn set_peer_groups(&mut self, groups: &super::peers::PeerGroups) {
        self.peer_groups = groups
            .members()
            .map(|(u, n)| (h64(u), n))
            .chain(groups.alone.iter().map(|u| (h64(u), 0)))
            .collect();
        self.newcomers.clear();
        self.group_depts.clear();
    }

    /// The users who joined a peer group since the last call (at most `MAX_JOINED_SAID`),
    /// and how many more did.
    pub fn take_joined(&mut self) -> (Vec<Joined>, u64) {
        (
            std::mem::take(&mut self.joined),
            std::mem::take(&mut self.joined_unsaid),
        )
    }

    /// A successful open of patient `p` by user `uh` (`user`) whose department is unknown:
    /// where the site has peer groups and the user is in none and was not examined at
    /// training, count it toward the group the patient's record is homed in, and join
    /// that group once `NEWCOMER_OPENS` opens have been counted, `NEWCOMER_SHARE` of them
    /// to its patients.
    fn note_newcomer(&mut self, uh: u64, user: &str, p: u64) {
        if self.peer_groups.is_empty() || self.peer_groups.contains_key(&uh) {
            return;
        }
        let Some(home) = self.patients.get(&p).and_then(home_dept) else {
            return;
        };
        let v = self.newcomers.entry(uh).or_default();
        v.opens += 1.0;
        match v.homes.iter().position(|e| e.0 == home) {
            Some(i) => v.homes[i].1 += 1.0,
            None if v.homes.len() < MAX_DEPTS => v.homes.push((home, 1.0)),
            None => {}
        }
        if v.opens < NEWCOMER_OPENS {
            return;
        }
        let Some((home, to_home)) = v
            .homes
            .iter()
            .copied()
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
        else {
            return;
        };
        if to_home < NEWCOMER_SHARE * v.opens {
            return;
        }
        let opens = v.opens;
        if self.group_depts.is_empty() {
            let mut groups: Vec<u32> = self.peer_groups.values().copied().collect();
            groups.sort_unstable();
            groups.dedup();
            self.group_depts = groups
                .into_iter()
                .filter(|g| *g > 0)
                .map(|g| (h64(&super::peers::group_name(g)), g))
                .collect();
        }
        let Some(group) = self.group_depts.iter().find(|e| e.0 == home).map(|e| e.1) else {
            return;
        };
        self.peer_groups.insert(uh, group);
        self.newcomers.remove(&uh);
        if self.joined.len() < MAX_JOINED_SAID {
            self.joined.push(Joined {
                user: user.to_string(),
                group,
                opens: opens as u32,
                to_group: to_home as u32,
            });
        } else {
            self.joined_unsaid += 1;
        }
    }

    /// What the care context says of this access (nothing without one, or for an event
    /// without a user and a patient).
    fn care_reading(&self, r: &AuditRecord) -> care::Assessment {
        match (&self.care, r.user.as_deref(), r.patient.as_deref()) {
            (Some(ix), Some(u), Some(p)) => {
                ix.assess(u, r.department.as_deref(), p, r.recorded.timestamp_millis())
            }
            _ => care::Assessment::default(),
        }
    }

    /// A department's relation to a record, with a treatment relationship the care context
    /// knows of counting as a working one: the access is related, whatever the department's
    /// share of the record.
    fn with_care(rel: Relation, c: &care::Assessment) -> Relation {
        match c.relation {
            Some(_) => Relation {
                unrelated: false,
                cares: true,
                pair: None,
                ..rel
            },
            None => rel,
        }
    }

    /// Replace the watch list (patient references; see `watch_key`).
    pub fn set_watch_list<'a>(&mut self, refs: impl IntoIterator<Item = &'a str>) {
        self.watched = refs.into_iter().map(|r| h64(watch_key(r))).collect();
    }

    pub fn users(&self) -> usize {
        self.users.len()
    }

    /// What the memory bounds made the context forget since the last call (see
    /// [`Forgotten`]).
    pub fn take_forgotten(&mut self) -> Forgotten {
        std::mem::take(&mut self.forgotten)
    }

    /// How far the care context reaches into the staff's work: a pass over the users.
    pub fn care_reach(&self) -> crate::state::CareReach {
        let (linked, not_linked) = self
            .users
            .values()
            .fold((0, 0), |(l, u), s| match s.linked {
                Some(true) => (l + 1, u),
                Some(false) => (l, u + 1),
                None => (l, u),
            });
        crate::state::CareReach {
            linked,
            not_linked,
            outside_rate: self.site_outside_rate,
        }
    }

    /// The site's outside-care rate as scoring reads it now (see [`describes_nobody`]);
    /// cheap.
    pub fn site_outside_rate(&self) -> f32 {
        self.site_outside_rate
    }

    /// What the context has learned of one user, for a privacy officer's user card; `None`
    /// for a user it has never seen.
    pub fn user_profile(&self, user_ref: &str) -> Option<UserProfile> {
        let u = self.users.get(&h64(user_ref))?;
        Some(UserProfile {
            events: u.events.round() as u64,
            usual_hours: usual_hours(&u.hours),
            addresses: u.ips.len() as u32,
            applications: u.apps.len() as u32,
            usual_patients_per_hour: u.usual_d1h,
            new_patient_share: u.first_rate,
            other_department_share: u.cross_rate,
            last_active: crate::clock::fmt_ms(crate::clock::from_ms(u.last_ms)),
            department: u.dept_name.clone(),
        })
    }

    /// The site's time zone, as hours and weekdays are read in.
    pub fn timezone(&self) -> chrono_tz::Tz {
        self.tz.unwrap_or(chrono_tz::UTC)
    }

    /// Take over the history `learned` holds (a model's baselines), keeping this
    /// context's time zone and watch list, which come from the site's configuration.
    pub fn adopt_history(&mut self, learned: Context) {
        let (tz, watched, care) = (self.tz, std::mem::take(&mut self.watched), self.care.take());
        let max_patients = self.max_patients;
        *self = learned;
        self.tz = tz;
        self.watched = watched;
        self.care = care;
        self.max_patients = max_patients;
    }

    /// Forget patients at `n` instead of `MAX_PATIENTS` (the least recently seen half each
    /// time the bound is reached): a small hospital scored as one whose records outnumber
    /// the bound, to measure what forgetting costs detection (BENCHMARKS.md).
    pub fn set_max_patients(&mut self, n: usize) {
        self.max_patients = Some(n);
    }

    /// The context as a snapshot: binary (postcard after a tag and the layout), about 40 %
    /// of its JSON and encoded in about half the time (BENCHMARKS.md, "Hospital size").
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 << 16);
        out.extend_from_slice(SNAPSHOT_TAG);
        out.extend_from_slice(&SNAPSHOT_LAYOUT.to_le_bytes());
        postcard::to_io(self, &mut out).expect("context serialises");
        out
    }

    /// A context from a snapshot ([`Context::to_bytes`]) or from JSON (a model's baselines,
    /// and snapshots of builds before the binary one).
    pub fn from_bytes(b: &[u8], tz: chrono_tz::Tz) -> Result<Self, SnapshotError> {
        let mut c: Context = match b.strip_prefix(SNAPSHOT_TAG) {
            Some(rest) => {
                let (layout, body) = rest
                    .split_first_chunk::<4>()
                    .ok_or(SnapshotError::Layout { found: 0 })?;
                match u32::from_le_bytes(*layout) {
                    SNAPSHOT_LAYOUT => postcard::from_bytes(body).map_err(SnapshotError::Binary)?,
                    // Layout 8 ends before `record_work`; layout 7 also before
                    // `newcomers`; layout 6 also before `peer_groups`;
                    // layout 5 also before
                    // `network_depts`, `outside_users` and `site_outside`; layout 4 also
                    // before `staff_record_work`; layout 3 also before `staff_names` and
                    // `patient_names`; layout 2 also before `new_patients`; layout 1 also
                    // before `revivals`: read as none (empty maps, in postcard a zero
                    // length each, and 0.0, four zero bytes).
                    found @ (1..=8) => {
                        let missing = [0u8; 14];
                        let missing = &missing[..[14, 13, 12, 10, 9, 3, 2, 1][found as usize - 1]];
                        postcard::from_bytes(&[body, missing].concat())
                            .map_err(SnapshotError::Binary)?
                    }
                    found => return Err(SnapshotError::Layout { found }),
                }
            }
            None => serde_json::from_slice(b).map_err(SnapshotError::Json)?,
        };
        c.tz = Some(tz);
        c.refresh_site_outside();
        Ok(c)
    }

    /// The network `net` as another department's own that department `dept` has never
    /// worked from (see [`ForeignNetwork`]), if it is one.
    fn foreign_network(&self, net: u64, dept: u64) -> Option<ForeignNetwork> {
        let events = self.site_networks.get(&net).copied()?;
        let depts = self.network_depts.get(&net)?;
        let known = depts.len() < MAX_NETWORK_DEPTS && !depts.iter().any(|d| d.0 == dept);
        let mature = self
            .dept_hours
            .get(&dept)
            .is_some_and(|d| d.total >= PEERS_MATURE);
        if !known || !mature || events < NETWORK_HOME_MIN {
            return None;
        }
        let (home, n) = depts.iter().copied().max_by(|a, b| a.1.total_cmp(&b.1))?;
        let home_share = n / events;
        if home_share < NETWORK_HOME_SHARE {
            return None;
        }
        Some(ForeignNetwork {
            home: self.dept_names.get(&home)?.clone(),
            from: self.dept_names.get(&dept)?.clone(),
            home_share,
            events: events as u32,
        })
    }

    /// The share of the site's events from outside before this one, when an access from
    /// outside by `user` (hash `uh`) from network `net` is their first from outside (see
    /// `Facts::first_outside`).
    fn first_outside(
        &self,
        user: Option<&UserState>,
        uh: Option<u64>,
        net: Option<u64>,
    ) -> Option<f32> {
        let share = self.site_outside / self.site_total;
        let mature = user.is_some_and(|u| u.events >= MATURE);
        let before = uh.is_some_and(|u| self.outside_users.contains_key(&u));
        let own = net.is_some_and(|net| {
            self.site_networks.get(&net).copied().unwrap_or(0.0)
                >= OWN_NETWORK_SHARE * self.site_total
        });
        (mature && !before && !own && share < OUTSIDE_ROUTINE_SHARE).then_some(share)
    }

    /// Recompute the site's outside-care rate from the users' (see `site_outside_rate`).
    fn refresh_site_outside(&mut self) {
        let (n, sum) = self
            .users
            .values()
            .filter(|u| u.linked.is_some() && u.events >= SITE_OUTSIDE_USER_EVENTS)
            .fold((0u32, 0.0f32), |(n, s), u| (n + 1, s + u.outside_rate));
        self.site_outside_rate = if n == 0 { 0.0 } else { sum / n as f32 };
        self.site_outside_stale_in = SITE_OUTSIDE_REFRESH;
    }

    /// `r`, with the user's department from the care context when the event names none
    /// (`care::Index::department_of`), else their peer group (`set_peer_groups`): the
    /// department signals then work on servers whose AuditEvents carry no department, as
    /// they do where the events carry one. Training and scoring read events through this
    /// alike. Also where the department came from.
    fn with_department<'a>(&self, r: &'a AuditRecord) -> (Cow<'a, AuditRecord>, DeptFrom) {
        let (dept, from) = match self.department_from_care(r) {
            Some(d) => (d.to_string(), DeptFrom::Care),
            None => match self.peer_group(r) {
                Some(n) => (super::peers::group_name(n), DeptFrom::Peers),
                None => return (Cow::Borrowed(r), DeptFrom::Event),
            },
        };
        let filled = AuditRecord {
            department: Some(dept),
            ..r.clone()
        };
        (Cow::Owned(filled), from)
    }

    /// The user's peer group, for an event that names no department.
    fn peer_group(&self, r: &AuditRecord) -> Option<u32> {
        match (&r.department, r.user.as_deref()) {
            (None, Some(u)) if !self.peer_groups.is_empty() => {
                self.peer_groups.get(&h64(u)).copied().filter(|g| *g > 0)
            }
            _ => None,
        }
    }

    /// The user's department as the care context gives it, for an event that names none.
    pub fn department_from_care(&self, r: &AuditRecord) -> Option<&str> {
        match (&self.care, &r.department, r.user.as_deref()) {
            (Some(ix), None, Some(u)) => ix.department_of(u, r.recorded.timestamp_millis()),
            _ => None,
        }
    }

    /// Compute features for `r` from the context so far, then fold `r` into the context.
    pub fn observe(&mut self, r: &AuditRecord) -> ([f32; N_FEATURES], Facts) {
        let (filled, from) = self.with_department(r);
        let r: &AuditRecord = &filled;
        let (x, mut facts) = match self.fanout(r) {
            None => {
                let asked = asked_of(r);
                let (x, facts, known) = self.features(r, asked);
                self.update(r, known, asked);
                (x, facts)
            }
            Some(l) => {
                let (view, asked) = (listed_view(r), self.asked_listed(r, l));
                let (x, mut facts, known) = self.features(&view, asked);
                facts.listed = Some(self.requests.get(&l.key).map_or(0, |s| s.listed) + 1);
                self.update(&view, known, asked);
                self.note_listed(r, l, asked);
                (x, facts)
            }
        };
        facts.dept_from_care = from == DeptFrom::Care;
        facts.dept_from_peers = from == DeptFrom::Peers;
        (x, facts)
    }

    /// Compute features for `r` from the context so far without learning it (an event
    /// the context has learned already: see `baselines::PassOver`).
    pub fn peek(&self, r: &AuditRecord) -> ([f32; N_FEATURES], Facts) {
        let (filled, from) = self.with_department(r);
        let r: &AuditRecord = &filled;
        let (x, mut facts, _) = match self.fanout(r) {
            None => self.features(r, asked_of(r)),
            Some(l) => self.features(&listed_view(r), self.asked_listed(r, l)),
        };
        facts.dept_from_care = from == DeptFrom::Care;
        facts.dept_from_peers = from == DeptFrom::Peers;
        (x, facts)
    }

    /// Whether `r` is one of the events a search writes per patient in its results (HAPI's
    /// BALP interceptor): a search naming a patient with a request id, whose query is not
    /// about one patient, or whose request already wrote events. Such a search *lists*
    /// patients: it is one query that touched many, not many chart opens. Without a
    /// request id or a patient, `None`.
    fn fanout(&self, r: &AuditRecord) -> Option<Listed> {
        let id = r.request_id.as_deref()?;
        if r.interaction != Interaction::Search || r.patient.is_none() {
            return None;
        }
        let key = h64(id);
        let now = r.recorded.timestamp_millis();
        let seen = self
            .requests
            .get(&key)
            .filter(|s| now - s.first_ms <= REQUEST_SPAN);
        let listed = match (&r.query, seen) {
            (Some(q), _) => !q.patient_scoped,
            (None, seen) => seen.is_some(),
        };
        listed.then_some(Listed {
            key,
            first: seen.is_none(),
        })
    }

    /// Records a listed event adds to its user's searches: the query's page for the first
    /// of its request, then one per patient listed beyond it.
    fn asked_listed(&self, r: &AuditRecord, l: Listed) -> Option<u32> {
        let page = r
            .query
            .as_ref()
            .and_then(|q| q.count)
            .unwrap_or(DEFAULT_PAGE);
        match (l.first, self.requests.get(&l.key)) {
            (false, Some(s)) => Some((s.listed + 1 > s.asked) as u32),
            _ => Some(page),
        }
    }

    fn note_listed(&mut self, r: &AuditRecord, l: Listed, asked: Option<u32>) {
        let now = r.recorded.timestamp_millis();
        if self.requests.len() >= MAX_REQUESTS && !self.requests.contains_key(&l.key) {
            self.requests
                .retain(|_, s| now - s.first_ms <= REQUEST_SPAN);
            if self.requests.len() >= MAX_REQUESTS {
                self.forgotten.requests += evict_half(&mut self.requests, |s| s.first_ms);
            }
        }
        let s = self.requests.entry(l.key).or_default();
        if l.first {
            *s = RequestState {
                first_ms: now,
                ..RequestState::default()
            };
        }
        s.listed += 1;
        s.asked += asked.unwrap_or(0);
    }

    /// Whether an alert on `r` may be raised: one per fanned-out search (the first of its
    /// events to reach the threshold), every other event as usual. Marks the request.
    pub fn claim_alert(&mut self, r: &AuditRecord) -> bool {
        // Folded in already, so its request is known (`first` is false).
        let Some(l) = self.fanout(r).filter(|l| !l.first) else {
            return true;
        };
        match self.requests.get_mut(&l.key) {
            Some(s) if s.alerted => false,
            Some(s) => {
                s.alerted = true;
                true
            }
            None => true,
        }
    }

    /// How department `dept` (if known) stands to a record with history `p`. The rarity of
    /// its pair is uniform (ln of the number of departments) while it has no such history.
    fn relation(&self, dept: Option<u64>, p: &PatientState) -> Relation {
        let Some(d) = dept else {
            return Relation::default();
        };
        let own = p.depts.iter().find(|e| e.0 == d).map_or(0.0, |e| e.1);
        let share = own / p.total;
        let unrelated = is_unrelated(share, p.total);
        let pair = home_dept(p).filter(|_| unrelated).map(|home| {
            let count = self.bridges.get(&h64(&(d, home))).copied().unwrap_or(0.0);
            let total = self.bridges_from.get(&d).copied().unwrap_or(0.0);
            Pair {
                dept: d,
                home,
                count,
                total,
                rarity: -((count + 1.0) / (total + self.departments())).ln(),
            }
        });
        Relation {
            share,
            unrelated,
            cares: !unrelated,
            pair,
        }
    }

    /// How an unrelated access stands to its department's pattern of such accesses:
    /// `None` while the department has none (fewer than `MIN_PATTERN`), else whether the
    /// pair is rarer than uniform.
    fn rarer_than_uniform(&self, pair: &Pair) -> Option<bool> {
        (pair.total >= MIN_PATTERN).then(|| pair.rarity > self.departments().ln())
    }

    /// Whether an unrelated access went where its department seldom goes: the department
    /// has a pattern, and the pair is rarer than uniform (not a usual consult, not a
    /// department that goes everywhere).
    fn strays(&self, pair: &Pair) -> bool {
        self.rarer_than_uniform(pair) == Some(true)
    }

    /// Whether an unrelated access went where its department goes routinely: the
    /// department has a pattern, and the pair is no rarer than uniform (a laboratory or a
    /// radiology department, which goes everywhere; a usual consult).
    fn well_worn(&self, pair: &Pair) -> bool {
        self.rarer_than_uniform(pair) == Some(false)
    }

    /// Whether an access is a look at a colleague's own record (`colleague`, from
    /// `staff_named`) without work to do on it: from the colleague's own department
    /// (`dept`) while that department has no working relationship with the record (`rel`,
    /// how it stands to the record's history; `None` without history) and does not go
    /// routinely where the record is homed (`well_worn`), or that has done no work on the
    /// record for [`STAFF_RECORD_WORK_DAYS`] or on a record no one has worked on for
    /// [`RECORD_QUIET_DAYS`] (`idle`, `Context::staff_record_idle`), whatever share of its
    /// history it holds. Such a look is held apart from the department's history
    /// (`update`): otherwise one colleague's look would make the department part of the
    /// patient's care and the next colleague's look routine. A write is work on the record,
    /// never held; once the department works on it, its looks count again.
    fn held_look(
        &self,
        colleague: Option<u64>,
        dept: Option<u64>,
        rel: Option<Relation>,
        interaction: Interaction,
        idle: bool,
    ) -> bool {
        matches!(interaction, Interaction::Read | Interaction::Search)
            && self.same_department(colleague, dept)
            && (idle
                || rel
                    .is_none_or(|r| r.share <= 0.0 && !r.pair.is_some_and(|p| self.well_worn(&p))))
    }

    /// Whether member of staff `colleague` works, as a user of the site, in `dept`.
    fn same_department(&self, colleague: Option<u64>, dept: Option<u64>) -> bool {
        colleague
            .and_then(|c| self.users.get(&c))
            .and_then(|c| c.dept)
            .is_some_and(|d| Some(d) == dept)
    }

    /// How long a look from department `dept` at member of staff `colleague`'s own record
    /// `p` at `now` comes after work on it, in whole days: since the department's own last
    /// work (`staff_record_work`), when that is [`STAFF_RECORD_WORK_DAYS`] or more, and
    /// since anyone's (`record_work`), when that is [`RECORD_QUIET_DAYS`] or more. Both
    /// `None` for any department but the colleague's own, while there is work on the
    /// record, where none is known (a department or record whose history is all looks
    /// held apart is judged by its share, as any other), and `in_care`: when the care
    /// context states a treatment relationship of the access (the user on the colleague's
    /// encounter or care team, or their unit holding it), which is work on the record
    /// however quiet its audit trail.
    fn staff_record_idle(
        &self,
        colleague: Option<u64>,
        p: Option<u64>,
        dept: Option<u64>,
        now: i64,
        in_care: bool,
    ) -> Idle {
        let (Some(p), Some(dept)) = (p, dept) else {
            return Idle::default();
        };
        if in_care || !self.same_department(colleague, Some(dept)) {
            return Idle::default();
        }
        let since = |last: i64, min_days: i64| {
            let days = (now - last).max(0) / DAY;
            (days >= min_days).then_some(days as u32)
        };
        let own = self
            .staff_record_work
            .get(&p)
            .and_then(|w| w.iter().find(|e| e.0 == dept));
        Idle {
            dept_days: own.and_then(|e| since(e.1, STAFF_RECORD_WORK_DAYS)),
            quiet_days: self
                .record_work
                .get(&p)
                .and_then(|&t| since(t, RECORD_QUIET_DAYS)),
        }
    }

    /// Department `dept`'s work on the colleague's own record `p` at `now`: its latest,
    /// at most `MAX_DEPTS` departments a record (the least recent forgotten).
    fn note_staff_record_work(&mut self, p: u64, dept: u64, now: i64) {
        let work = self.staff_record_work.entry(p).or_default();
        match work.iter_mut().find(|e| e.0 == dept) {
            Some(e) => e.1 = e.1.max(now),
            None => {
                if work.len() >= MAX_DEPTS {
                    if let Some((i, _)) = work.iter().enumerate().min_by_key(|e| e.1 .1) {
                        work.swap_remove(i);
                    }
                }
                work.push((dept, now));
            }
        }
    }

    /// Departments seen (at least 2, for smoothing).
    fn departments(&self) -> f32 {
        self.dept_names.len().max(2) as f32
    }

    /// An unrelated access's weight in the patient's VIP pressure: how unusual such access
    /// is for the user (`cross_rate`), plus how much rarer the department's pair is than for
    /// a department that goes everywhere (radiology, the laboratory). `pair_rarity` is 0
    /// when unknown. The one formula for the current access and the stored ones.
    fn access_weight(&self, cross_rate: f32, pair_rarity: f32) -> f32 {
        unrelated_weight(cross_rate) + (pair_rarity - self.departments().ln()).max(0.0)
    }

    /// An access's weight in the patient's crowd: `access_weight` when the department has
    /// no history with the record (`cross_rate` given), the user's habit of accesses
    /// outside care when the care context knows no relationship (`outside_rate` given), the
    /// larger of the two when both.
    fn crowd_weight(
        &self,
        cross_rate: Option<f32>,
        pair_rarity: f32,
        outside_rate: Option<f32>,
    ) -> f32 {
        let a = cross_rate.map_or(0.0, |c| self.access_weight(c, pair_rarity));
        let b = outside_rate.map_or(0.0, unrelated_weight);
        a.max(b)
    }

    /// Fold an event into the context without computing features (replay after restart).
    pub fn replay(&mut self, r: &AuditRecord) {
        let (filled, _) = self.with_department(r);
        let r: &AuditRecord = &filled;
        match self.fanout(r) {
            None => self.update(r, Known::default(), asked_of(r)),
            Some(l) => {
                let asked = self.asked_listed(r, l);
                self.update(&listed_view(r), Known::default(), asked);
                self.note_listed(r, l, asked);
            }
        }
    }

    /// The local hour and weekday of `t`, and the hour a session whose first event is at
    /// `t` began at: the hour nearest to it (read on the clock, the hour plus one from half
    /// past). Shifts begin on the hour and people arrive either side of it: a session begun
    /// at 06:50 and one begun at 07:05 are the same habit, and counted by the hour each
    /// falls in, the first would be a start at an hour the user had never begun one. A
    /// server that writes logins hides this (the login, minutes before the first access,
    /// falls in the earlier hour day after day); one that writes only record accesses
    /// (HAPI FHIR, Firely Server) showed it: on the simulated hospitals written as HAPI
    /// writes them, 81 of 130 false after-hours cases alerted first at :40–:59 in the
    /// hour before the user's usual hours (BENCHMARKS.md).
    fn local(&self, t: chrono::DateTime<chrono::Utc>) -> (u32, u32, u32) {
        let tz = self.tz.unwrap_or(chrono_tz::UTC);
        let l = t.with_timezone(&tz);
        let start = (l.hour() + (l.minute() >= 30) as u32) % 24;
        (l.hour(), l.weekday().num_days_from_monday(), start)
    }

    /// The member of staff other than its user `uh` that `r`'s patient is, by name: the
    /// audit trail names its users, and a patient who bears a user's name, a name no other
    /// patient seen bears, is that user (a common name on many patients says nothing).
    fn staff_named(&self, name: &ParsedName, r: &AuditRecord, uh: Option<u64>) -> Option<u64> {
        let k = name.key?;
        // Patients with the name seen so far: this one among them once it was seen.
        let seen = r
            .patient
            .as_deref()
            .is_some_and(|p| self.patients.contains_key(&h64(p)));
        // A name the full-name counts could not keep (`MAX_NAMES` reached) may be on many
        // patients: it names nobody.
        let n = self
            .patient_names
            .get(&k)
            .copied()
            .or((self.patient_names.len() < MAX_NAMES).then_some(0.0))?;
        let one = n <= seen as u8 as f32;
        let staff = self.staff_names.get(&k).copied()?;
        (one && Some(staff) != uh).then_some(staff)
    }

    fn features(&self, r: &AuditRecord, asked: Option<u32>) -> ([f32; N_FEATURES], Facts, Known) {
        use Feature as F;
        let now = r.recorded.timestamp_millis();
        let (hour, weekday, start_now) = self.local(r.recorded);
        let uh = r.user.as_deref().map(h64);
        let ph = r.patient.as_deref().map(h64);
        let user = uh.and_then(|u| self.users.get(&u));
        let patient = ph.and_then(|p| self.patients.get(&p));
        let dept_h = r
            .department
            .as_deref()
            .map(h64)
            .or(user.and_then(|u| u.dept));
        let mut facts = Facts {
            hour,
            weekday,
            ..Default::default()
        };
        let is_login = matches!(r.interaction, Interaction::Login | Interaction::Logout);
        let failed_login = r.interaction == Interaction::Login && r.outcome > 0;

        let src = SourceKeys::of(r);
        let cr = self.care_reading(r);
        let mut known = Known {
            sources: Some(src),
            care: Some(cr),
            ..Known::default()
        };
        facts.care = cr.relation;
        facts.personal = cr.personal;
        facts.care_covered = cr.covered;
        let mut x = Row([0f32; N_FEATURES]);
        // The session this event continues, if any (activity within `SESSION_IDLE`).
        let continuing = user.filter(|u| u.last_ok_ms > 0 && now - u.last_ok_ms <= SESSION_IDLE);
        // Hours: the user's own, blended with the site's while the user is new; judged at
        // an earlier hour of the session when it is running late.
        let site_rarity = |h: u32| rarity(self.site_hours[h as usize], self.site_total, 24.0);
        let user_rarity = |u: &UserState, h: u32| {
            let w = (u.events / MATURE).min(1.0);
            w * rarity(u.hours[h as usize], u.events, 24.0) + (1.0 - w) * site_rarity(h)
        };
        // The hour the session began (this one, for a session's first event), and whether
        // the current session is already counted among the user's and the site's starts
        // (it is not judged against itself).
        let began = continuing.map_or(start_now, |u| u.session_start_hour.into());
        let own_current = continuing.is_some() as u8 as f32;
        let at = match user {
            Some(u) => {
                // Whether the user's sessions often begin at this session's hour.
                let (n, total) = (
                    u.starts[began as usize] - own_current,
                    u.sessions - own_current,
                );
                let usual_start = total > 0.0 && n / total >= USUAL_START_SHARE;
                judged_hour(hour, began, usual_start, |h| user_rarity(u, h))
            }
            None => hour,
        };
        facts.judged_hour = (at != hour).then_some(at);
        let site_r = site_rarity(at);
        let (hr, wr) = match user {
            Some(u) if u.events > 0.0 => {
                let w = (u.events / MATURE).min(1.0);
                facts.user_hour_share = u.hours[at as usize] / u.events;
                facts.user_weekday_share = u.weekdays[weekday as usize] / u.events;
                facts.user_hours = Some(u.hours);
                (
                    user_rarity(u, at),
                    rarity(u.weekdays[weekday as usize], u.events, 7.0) * w,
                )
            }
            _ => (site_r, 0.0),
        };
        // The same hour among the user's peers (their department): a night nurse's ward
        // works at 03:00, an office does not.
        let peers = match dept_h.and_then(|d| self.dept_hours.get(&d)) {
            Some(d) if d.total > 0.0 => {
                let w = (d.total / PEERS_MATURE).min(1.0);
                facts.peer_hour_share = Some(d.hours[at as usize] / d.total);
                w * rarity(d.hours[at as usize], d.total, 24.0) + (1.0 - w) * site_r
            }
            _ => site_r,
        };
        // A user called in now and then (on call, covering a night) works odd hours by habit
        // even though those short sessions are a sliver of their activity: an odd hour is
        // no rarer for them than their sessions begun at odd hours.
        let habit = user.and_then(|u| odd_hour_habit(u, at, began, own_current));
        let hr = match habit {
            Some((n, r)) if r < hr => {
                facts.odd_starts = Some(n);
                r
            }
            _ => hr,
        };
        x[F::HourRarityPeers] = peers;
        x[F::OffHoursUserAndPeers] = hr.min(peers);
        x[F::HourRarityUser] = hr;
        x[F::HourRaritySite] = site_r;
        x[F::WeekdayRarityUser] = wr;
        // When the session began, against the user's own session starts: a shift running
        // late keeps its usual start hour, a session opened at 02:00 does not. The current
        // session is not counted, so every event of it carries the same value.
        let start = began as usize;
        let site_starts = self.site_starts[start] - own_current;
        let site_sr = rarity(site_starts, self.site_sessions - own_current, 24.0);
        facts.session_start_hour = start as u32;
        x[F::SessionStartRarity] = match user {
            Some(u) if u.sessions - own_current > 0.0 => {
                let (n, total) = (u.starts[start] - own_current, u.sessions - own_current);
                facts.starts_at_that_hour = n as u32;
                facts.user_sessions = total as u32;
                let w = (total / MATURE_SESSIONS).min(1.0);
                let r = w * rarity(n, total, 24.0) + (1.0 - w) * site_sr;
                // Begun at an odd hour by a user who begins sessions at odd hours.
                match odd_hour_habit(u, began, began, own_current) {
                    Some((_, odd)) => r.min(odd),
                    None => r,
                }
            }
            _ => site_sr,
        };

        // The user's patient accesses in the last hour (for the expected size of a run of
        // unrelated lookups), from the same pass as the distinct counts.
        let mut accesses_1h = 0;
        if let Some(u) = user {
            facts.user_events = u.events as u32;
            // Count this access too.
            let d = distinct2(&u.recent, now - MIN_10, now - HOUR, ph);
            accesses_1h = d.entries_long;
            let d10 = d.short + (ph.is_some() && !d.probe_in_short) as u32;
            let d1h = d.long + (ph.is_some() && !d.probe_in_long) as u32;
            known.user_patients_1h = Some(d1h);
            facts.d10 = d10;
            facts.d1h = d1h;
            facts.usual_d1h = u.usual_d1h_hi;
            x[F::DistinctPatients10m] = (d10 as f32).ln_1p();
            x[F::DistinctPatients1h] = (d1h as f32).ln_1p();
            x[F::Patients1hVsUsual] = ((d1h as f32 + 1.0) / (u.usual_d1h_hi + 1.0)).ln().max(0.0);
            // Failed logins in the window, this one included. One mistyped password is
            // routine; the evidence is in the ones that follow it.
            let fails = u.failed.iter().filter(|t| **t >= now - FAIL_WINDOW).count() as u32
                + failed_login as u32;
            facts.failed_15m = fails;
            x[F::FailedLogins15m] = (fails.saturating_sub(1) as f32).ln_1p();
            // Novelty of the address and app for a user with enough history: 1 when never
            // seen, decaying with use, so a whole session from a new place stands out.
            let mature = u.events >= MATURE;
            let uses = |list: &Vec<(u64, u32)>, key: u64| {
                list.iter().find(|e| e.0 == key).map_or(0, |e| e.1)
            };
            if let Some(ip) = src.ip {
                let n = uses(&u.ips, ip);
                facts.ip_uses = Some(n);
                facts.new_ip = mature && n == 0;
                x[F::NewSourceIp] = if mature { 1.0 / (1.0 + n as f32) } else { 0.0 };
            }
            if let Some(app) = src.app {
                let n = uses(&u.apps, app);
                facts.app_uses = Some(n);
                facts.new_app = mature && n == 0;
                x[F::NewClientApp] = if mature { 1.0 / (1.0 + n as f32) } else { 0.0 };
            }
            // Dormancy: the idle gap before the current session (the whole session carries it).
            let gap = now - u.last_ms;
            let session_gap = if gap > SESSION_GAP {
                gap
            } else {
                u.session_gap_ms
            };
            facts.days_inactive = session_gap.max(0) as f32 / DAY as f32;
            // Against the user's own usual breaks: a three-day weekend is routine for some.
            let usual = if gap > SESSION_GAP {
                u.break_hi_ms
            } else {
                u.break_hi_before_ms
            };
            facts.usual_break_days = usual / DAY as f32;
            x[F::DormancyVsUsualBreak] = dormancy(facts.days_inactive, facts.usual_break_days);
            // A later session of an account back from dormancy carries the return.
            if let Some(rv) = uh
                .and_then(|k| self.revivals.get(&k))
                .filter(|rv| rv.open_at(now))
            {
                if rv.dormancy() > x[F::DormancyVsUsualBreak] {
                    x[F::DormancyVsUsualBreak] = rv.dormancy();
                    facts.revived = Some(*rv);
                }
            }
            x[F::UserHistory] = u.events.ln_1p();
            x[F::UserCrossDeptRate] = u.cross_rate;
            x[F::UserFirstAccessRate] = u.first_rate;
        } else {
            x[F::DistinctPatients10m] = (ph.is_some() as u8 as f32).ln_1p();
            x[F::DistinctPatients1h] = x[F::DistinctPatients10m];
            facts.failed_15m = failed_login as u32;
        }

        if let (Some(u), Some(p)) = (uh, ph) {
            let pair = h64(&(u, p));
            facts.first_pair = !self.pairs_now.contains(&pair) && !self.pairs_old.contains(&pair);
            // A first access inside a treatment relationship is the relationship's first.
            x[F::FirstAccessToPatient] = (facts.first_pair && cr.relation.is_none()) as u8 as f32;
        }
        x[F::HasPatient] = ph.is_some() as u8 as f32;
        // Outside any treatment relationship the care context knows of (where it answers).
        let outside_now = cr.covered && cr.relation.is_none();
        // Whether the department's history with the record calls the access unrelated.
        let mut unrelated_by_history = false;
        // The patient's name, parsed once for the colleague's record and the family name.
        let patient_name = ParsedName::of(r.patient_display.as_deref());
        let colleague = self.staff_named(&patient_name, r, uh);
        facts.staff_record = colleague.is_some();
        facts.watched = r.restricted
            || cr.marked
            || facts.staff_record
            || (!self.watched.is_empty()
                && r.patient
                    .as_deref()
                    .is_some_and(|p| self.watched.contains(&h64(watch_key(p)))));
        match patient {
            Some(p) if p.total > 0.0 => {
                facts.patient_history = p.total as u32;
                let rel = Self::with_care(self.relation(dept_h, p), &cr);
                known.relation = Some(rel);
                let share = rel.share;
                facts.dept_share = dept_h.map(|_| share);
                facts.dept = dept_h.and_then(|d| self.dept_names.get(&d).cloned());
                // An access to a patient with a history none of it from the user's department,
                // weighed by how unusual such access is for this user.
                let unrelated_now = rel.unrelated;
                unrelated_by_history = unrelated_now;
                // A record the site watches (a public figure, a member of staff) opened by a
                // department without a working relationship with it. (Every first access
                // from outside the home department was tried too: the departments that go
                // everywhere made it flag routine work, see BENCHMARKS.md.)
                // With care context, also one opened outside any treatment relationship.
                // Not by a user whose work the care context does not describe (see
                // `CARE_BLIND_RATE`): for them neither reading means much. Where it
                // describes nobody's work (`SITE_CARE_BLIND_RATE`), as without a context.
                let reads = if describes_nobody(self.site_outside_rate) {
                    unrelated_now
                } else if user.is_some_and(|u| u.outside_rate >= CARE_BLIND_RATE) {
                    false
                } else {
                    unrelated_now || outside_now
                };
                x[F::WatchedRecordUnrelated] = (facts.watched && reads) as u8 as f32;
                if unrelated_now {
                    let rate = user.map_or(0.0, |u| u.habitual_cross_rate(now));
                    x[F::UnrelatedPatientRarity] = unrelated_weight(rate);
                    // A run of such lookups weighs more than one, by how improbable so many
                    // are in the hour for this user: two in a row are routine in radiology
                    // and rare on a ward. (The first of a run is `unrelated_patient_rarity`.)
                    // A run is of different records: opening the same one again (a consult
                    // going back to the chart) neither extends a run nor is one.
                    if facts.first_pair {
                        let before = user.map_or(0, |u| {
                            u.unrelated_recent
                                .iter()
                                .filter(|t| **t >= now - HOUR)
                                .count()
                        });
                        let expected = habit_share(rate) * (accesses_1h + 1) as f32;
                        facts.unrelated_1h = before as u32 + 1;
                        facts.unrelated_expected_1h = expected;
                        if before > 0 {
                            x[F::UnrelatedRunSurprise1h] =
                                poisson_tail_surprise(before as u32 + 1, expected);
                        }
                    }
                    // How rarely the department's unrelated accesses land on patients homed
                    // where this one is (smoothed: uniform while the department is new).
                    if let Some(pair) = rel.pair {
                        facts.home_dept = self.dept_names.get(&pair.home).cloned();
                        facts.pair_count = pair.count as u32;
                        facts.pair_total = pair.total as u32;
                        x[F::DeptPairRarity] = pair.rarity;
                    }
                }
                // VIP pressure: how unusual, summed over distinct users, today's unrelated
                // accesses to this patient are (ward staff weigh much, radiology little).
                // With care context, an access outside any treatment relationship joins the
                // crowd too, weighed by the user's habit of such accesses.
                let (mut seen_users, mut pressure) = unrelated_crowd(p, now);
                if (unrelated_now || outside_now) && uh.is_some_and(|u| !seen_users.contains(&u)) {
                    seen_users.push(uh.unwrap_or_default());
                    pressure += self.crowd_weight(
                        unrelated_now.then(|| user.map_or(0.0, |u| u.habitual_cross_rate(now))),
                        x[F::DeptPairRarity],
                        outside_now.then(|| user.map_or(0.0, |u| u.outside_rate)),
                    );
                }
                facts.unrelated_users_24h = seen_users.len() as u32;
                // log((accesses from the user's department + 1) / (all accesses + 1)): 0 for
                // a new patient or one the department works with, very negative for a long
                // record the department never touched.
                let own = share * p.total;
                x[F::DeptHistoryWithPatient] = if dept_h.is_some() && cr.relation.is_none() {
                    ((own + 1.0) / (p.total + 1.0)).ln()
                } else {
                    0.0
                };
                facts.stray_run = x[F::UnrelatedRunSurprise1h] >= STRAY_RUN_SURPRISE
                    && x[F::DeptHistoryWithPatient] <= STRAY_RUN_SHARE.ln()
                    && rel.pair.as_ref().is_some_and(|p| self.strays(p));
                let before = distinct(&p.recent, now - DAY);
                known.patient_users_24h = Some(before);
                let users24 = before
                    + uh.map_or(0u32, |u| {
                        (!p.recent.iter().any(|e| e.1 == u && e.0 >= now - DAY)) as u32
                    });
                facts.patient_users_24h = users24;
                facts.no_related_visitor = (unrelated_now || outside_now)
                    && users24 == 2
                    && facts.unrelated_users_24h == 2;
                facts.usual_patient_users = p.usual_users;
                x[F::PatientUsers24h] = (users24 as f32).ln_1p();
                // Against the patient's own usual: twelve users is a quiet day in intensive
                // care and a crowd around an outpatient.
                x[F::PatientUsersVsUsual] = ((users24 as f32 + 1.0) / (p.usual_users + 1.0))
                    .ln()
                    .max(0.0);
                x[F::UnrelatedPressure24h] = pressure.ln_1p();
                // How many departments came without a reason today. Care brings the home
                // department, its usual consultants and the departments that go everywhere;
                // a crowd of the curious comes from all over the hospital.
                // `unexplained` keeps one entry per department, its latest.
                let today = |e: &&(i64, u64)| e.0 >= now - DAY;
                let mut depts = p.unexplained.iter().filter(today).count();
                if let Some(pair) = rel.pair.filter(|p| self.strays(p)) {
                    depts += !p.unexplained.iter().filter(today).any(|e| e.1 == pair.dept) as usize;
                }
                facts.unexplained_depts_24h = depts as u32;
                x[F::UnexplainedDepts24h] = (depts as f32).ln_1p();
            }
            _ => {
                facts.dept = dept_h.and_then(|d| self.dept_names.get(&d).cloned());
                facts.patient_users_24h = ph.is_some() as u32;
                x[F::PatientUsers24h] = (ph.is_some() as u8 as f32).ln_1p();
            }
        }
        // A colleague's first look at a colleague of their own department's record, one
        // the department never worked on (no consult of its own to go on), by a user whose
        // work seldom goes to unrelated records. A department that has done no work on a
        // colleague's record for days has none on it now, however much of its history it
        // holds: a look from the colleague's own department then is a watched record
        // opened without a working relationship, evidence twice over. (Other departments'
        // looks weeks apart are their work: radiology, a laboratory.)
        let idle = self.staff_record_idle(colleague, ph, dept_h, now, cr.relation.is_some());
        let held = self.held_look(colleague, dept_h, known.relation, r.interaction, idle.any());
        known.held = Some(held);
        known.colleague = Some(colleague);
        facts.dept_idle_days = idle.dept_days.filter(|_| held);
        facts.record_quiet_days = idle.quiet_days.filter(|_| held);
        // A look held apart with no work on the record by either measure.
        let no_work = held && idle.any();
        facts.own_colleague = held
            && (no_work
                || (facts.first_pair
                    && user.map_or(0.0, |u| u.cross_rate) < ROUTINE_UNRELATED_RATE));
        // Such a look is a watched record opened without work to do, and more: the
        // evidence counts twice, in the score as in the queue (`super::evidence`). A
        // record no one has opened yet is unrelated to everyone: only such a look at it
        // reads as a watched record opened without work to do; nor does a department's
        // share of a record it no longer works on make such a look work, unless the care
        // context does not describe the user's work (`CARE_BLIND_RATE`).
        let care_blind = !describes_nobody(self.site_outside_rate)
            && user.is_some_and(|u| u.outside_rate >= CARE_BLIND_RATE);
        if no_work && !care_blind {
            x[F::WatchedRecordUnrelated] = x[F::WatchedRecordUnrelated].max(1.0);
        }
        if facts.own_colleague && (facts.patient_history == 0 || x[F::WatchedRecordUnrelated] > 0.0)
        {
            x[F::WatchedRecordUnrelated] = 2.0;
        }

        // Sources new to the whole site: a network no one has worked from (outside the
        // site's usual ranges: a VPN exit, a home, an attacker), a client no one uses.
        // Robust where a user's own addresses churn (DHCP, shared stations, thin clients).
        if self.site_total >= SITE_MATURE {
            let novelty = |n: f32| 1.0 / (1.0 + n);
            if let Some(net) = src.network {
                let n = self.site_networks.get(&net).copied().unwrap_or(0.0);
                facts.network_site_uses = Some(n as u32);
                facts.network_new_to_site =
                    n == 0.0 && !failed_login && self.site_networks.len() < MAX_SITE_SOURCES;
                x[F::NewNetworkSite] = novelty(n);
                if !failed_login {
                    facts.foreign_network = dept_h.and_then(|d| self.foreign_network(net, d));
                }
            }
            // A user's first access from outside the site's private networks, where that
            // is rare at the site (looked up only for an address outside).
            if src.outside && !failed_login {
                facts.first_outside = self.first_outside(user, uh, src.network);
            }
            if let Some(app) = src.app {
                let n = self.site_apps.get(&app).copied().unwrap_or(0.0);
                facts.app_site_uses = Some(n as u32);
                x[F::NewClientAppSite] = novelty(n);
            }
        }
        if let Some(q) = &r.query {
            facts.query_count = q.count;
            facts.export = q.export;
            facts.later_page = q.later_page;
            x[F::QuerySize] = (q.count.unwrap_or(0) as f32).ln_1p();
        }
        // Query breadth within the hour, against the user's usual: pages walked add up.
        if let Some(asked) = asked {
            let hour_ago = now - HOUR;
            let before: u32 = user.map_or(0, |u| {
                u.asked
                    .iter()
                    .filter(|e| e.0 >= hour_ago)
                    .map(|e| e.1)
                    .sum()
            });
            let usual = user.map_or(0.0, |u| u.usual_asked_hi).max(ASKED_FLOOR);
            facts.asked_1h = before.saturating_add(asked);
            facts.usual_asked_1h = usual;
            x[F::QueryVolume1hVsUsual] = ((facts.asked_1h as f32 + 1.0) / (usual + 1.0))
                .ln()
                .max(0.0);
            if r.query.as_ref().is_some_and(|q| q.patient_sweep) {
                let earlier =
                    user.map_or(0, |u| u.sweeps.iter().filter(|t| **t >= hour_ago).count());
                facts.patient_sweep = true;
                facts.sweeps_1h = earlier as u32 + 1;
                x[F::DemographicSweep] = (asked as f32).ln_1p() + (earlier as f32).ln_1p();
            }
        }
        facts.export |= r.interaction == Interaction::Export;
        x[F::Export] = facts.export as u8 as f32;
        // Any other refused request, judged against the user's usual failure rate: a 404 or
        // a version conflict now and then is routine, so the first in an hour is free (as
        // one mistyped password is); the ones that follow it weigh by how improbable so
        // many are for this user, beyond what is routine (1 in 20). Failed logins count
        // in `failed_logins_15m`.
        if r.outcome > 0 && !is_login {
            let before = user.map_or(0, |u| {
                u.failed_requests
                    .iter()
                    .filter(|t| **t >= now - HOUR)
                    .count()
            });
            let p = self.fail_rate_of(user, now, before > 0);
            let n = before as u32 + 1;
            let expected = p * (accesses_1h + 1) as f32;
            facts.failed_requests_1h = n;
            facts.failed_requests_expected_1h = expected;
            x[F::FailedRequestsSurprise1h] =
                (poisson_tail_surprise(n - 1, expected) - ROUTINE_RUN).max(0.0);
        }
        x[F::IsLogin] = is_login as u8 as f32;
        x[F::IsSearch] = (r.interaction == Interaction::Search) as u8 as f32;
        x[F::IsWrite] = matches!(
            r.interaction,
            Interaction::Create | Interaction::Update | Interaction::Delete
        ) as u8 as f32;
        // The care context: an access where it knows the patient's relationships and none
        // links the user, weighed by the user's habit; a personal link, whatever the care.
        let outside_rate = user.map_or(0.0, |u| u.outside_rate);
        x[F::UserOutsideCareRate] = outside_rate;
        // Only where the department's history does not already call the access unrelated
        // (one piece of evidence counts once): a record without history, a user without a
        // department, or a record the department worked with before but has no
        // relationship with now.
        if outside_now && !unrelated_by_history {
            x[F::OutsideCare] = unrelated_weight(outside_rate);
        }
        match cr.personal {
            Some(care::Personal::SelfRecord) => x[F::SelfRecord] = 1.0,
            Some(care::Personal::NamedRelative | care::Personal::Household) => {
                x[F::PersonalLink] = 1.0
            }
            Some(care::Personal::Coworker) if cr.relation.is_none() => x[F::CoworkerRecord] = 1.0,
            _ => {}
        }
        if let (Some(ud), Some(b)) = (&r.user_display, &patient_name.family) {
            if let Some(a) = family_name(ud) {
                if a == *b {
                    // Smoothed -ln of the share of earlier patients with the name: about 4.5
                    // for a name one patient in a hundred has, 7 or more for a rare one.
                    let n = self.names.get(&h64(b.as_str())).copied().unwrap_or(0.0);
                    let per_day = uh
                        .and_then(|u| self.new_patients.get(&u))
                        .map_or(1.0, |v| v.per_day(now));
                    facts.same_family_name = true;
                    facts.name_patients = n as u32;
                    facts.patients_seen = self.names_total as u32;
                    facts.new_patients_per_day = per_day;
                    // A namesake the user's department cares for is explained by the care
                    // (a relative on one's own ward is a matter for policy, not for this
                    // score); one with no working relationship is not.
                    if !known.relation.is_some_and(|r| r.cares) && cr.relation.is_none() {
                        x[F::SameFamilyNameRarity] = namesake_surprise(
                            (n + 1.0) / (self.names_total + 1.0),
                            per_day,
                            cr.described,
                        );
                    }
                }
            }
        }
        (x.0, facts, known)
    }

    /// Fold `r` into the context. `known` carries counts `features` already worked out for
    /// this same event and state (the same values `update` would compute).
    fn update(&mut self, r: &AuditRecord, known: Known, asked: Option<u32>) {
        let now = r.recorded.timestamp_millis();
        if self.site_outside_stale_in == 0 {
            self.refresh_site_outside();
        }
        self.site_outside_stale_in -= 1;
        let (hour, weekday, start) = self.local(r.recorded);
        self.site_hours[hour as usize] += 1.0;
        self.site_total += 1.0;
        let ph = r.patient.as_deref().map(h64);
        let dept_h = r.department.as_deref().map(|d| {
            let h = h64(d);
            if self.dept_names.len() < 4096 {
                self.dept_names.entry(h).or_insert_with(|| d.to_string());
            }
            h
        });
        let Some(user_ref) = r.user.as_deref() else {
            return;
        };
        let uh = h64(user_ref);
        let ok = r.outcome == 0;
        let dept_h = dept_h.or_else(|| self.users.get(&uh).and_then(|u| u.dept));
        if let (true, None, Some(p)) = (ok, dept_h, ph) {
            self.note_newcomer(uh, user_ref, p);
        }
        if let Some(d) = dept_h {
            if ok && (self.dept_hours.len() < 4096 || self.dept_hours.contains_key(&d)) {
                let e = self.dept_hours.entry(d).or_default();
                e.hours[hour as usize] += 1.0;
                e.total += 1.0;
            }
        }
        if self.users.len() >= MAX_USERS && !self.users.contains_key(&uh) {
            self.forgotten.users += evict_half(&mut self.users, |u| u.last_ms);
            // A forgotten user's revival and daily volume go with them.
            let users = &self.users;
            self.revivals.retain(|u, _| users.contains_key(u));
            self.outside_users.retain(|u, _| users.contains_key(u));
            self.new_patients.retain(|u, _| users.contains_key(u));
            self.newcomers.retain(|u, _| users.contains_key(u));
        }
        let is_login = matches!(r.interaction, Interaction::Login | Interaction::Logout);
        let site_fail_rate = self.site_fail_rate();
        let u = self.users.entry(uh).or_default();
        if !is_login {
            let failed = r.outcome > 0;
            if failed && !u.failed_requests.iter().any(|t| *t >= now - HOUR) {
                u.fail_rate_before_run = Some((now, u.fail_rate(site_fail_rate)));
            }
            decay_count(&mut u.fail_counts, failed, FAIL_MEMORY);
            decay_count(&mut self.site_fail_counts, failed, SITE_FAIL_MEMORY);
            if failed {
                push_window(&mut u.failed_requests, now, 64, now - HOUR, |t| *t);
            }
        }
        let mut new_session = false;
        let failed_login = r.interaction == Interaction::Login && r.outcome > 0;
        if failed_login {
            push_window(&mut u.failed, now, 64, now - FAIL_WINDOW, |t| *t);
        } else {
            // Activity baselines learn from successful activity only.
            if u.last_ok_ms == 0 || now - u.last_ok_ms > SESSION_IDLE {
                u.starts[start as usize] += 1.0;
                u.sessions += 1.0;
                u.session_start_hour = start as u8;
                new_session = true;
                // The user's own name, once a session (not parsed on every event).
                if let Some(k) = r.user_display.as_deref().and_then(person_key) {
                    if self.staff_names.len() < MAX_NAMES || self.staff_names.contains_key(&k) {
                        self.staff_names.entry(k).or_insert(uh);
                    }
                }
            }
            u.last_ok_ms = u.last_ok_ms.max(now);
            u.hours[hour as usize] += 1.0;
            u.weekdays[weekday as usize] += 1.0;
            u.events += 1.0;
            let src = known.sources.unwrap_or_else(|| SourceKeys::of(r));
            let mut forgotten = false;
            if src.outside {
                *self.outside_users.entry(uh).or_default() += 1.0;
                self.site_outside += 1.0;
            }
            if let (Some(ip), Some(net)) = (src.ip, src.network) {
                bump(&mut u.ips, ip, MAX_IPS);
                forgotten |= count_bounded(&mut self.site_networks, net, MAX_SITE_SOURCES);
                if let Some(d) = dept_h.filter(|_| self.site_networks.contains_key(&net)) {
                    let depts = self.network_depts.entry(net).or_default();
                    if !count_network_dept(depts, d) {
                        self.forgotten.network_depts += 1;
                    }
                }
            }
            if let Some(app) = src.app {
                bump(&mut u.apps, app, MAX_APPS);
                forgotten |= count_bounded(&mut self.site_apps, app, MAX_SITE_SOURCES);
            }
            if forgotten && !self.site_sources_full_said {
                self.site_sources_full_said = true;
                tracing::warn!(
                    actor = "detector",
                    error_kind = "site_sources_full",
                    limit = MAX_SITE_SOURCES,
                    "the site has more than {MAX_SITE_SOURCES} networks or client applications: \
                     later ones are not remembered and stay new to new_network_site and \
                     new_client_app_site"
                );
            }
            if r.interaction == Interaction::Login {
                u.failed.clear();
            }
        }
        if new_session {
            self.site_starts[start as usize] += 1.0;
            self.site_sessions += 1.0;
        }
        let u = self.users.get_mut(&uh).expect("inserted above");
        if let Some(rv) = self.revivals.get_mut(&uh).filter(|_| !failed_login) {
            rv.events += 1.0;
            if !rv.open_at(now) {
                self.revivals.remove(&uh);
            }
        }
        if u.last_ms > 0 && now - u.last_ms > SESSION_GAP {
            let gap = now - u.last_ms;
            let (gap_days, usual_days) = (gap as f32 / DAY as f32, u.break_hi_ms / DAY as f32);
            // Back from dormancy: suspect until back at work (counted from this event on).
            if gap_days >= REVIVAL_MIN_DAYS
                && (gap_days + 1.0) / (usual_days + 1.0) >= REVIVAL_RATIO
                && u.sessions > 1.0
                && !failed_login
            {
                // Its usual session, before this one (counted above) began.
                let usual_session = (u.events - 1.0).max(1.0) / (u.sessions - 1.0);
                self.revivals.insert(
                    uh,
                    Revived {
                        at_ms: now,
                        gap_days,
                        usual_days,
                        events: 1.0,
                        work: REVIVAL_SESSIONS * usual_session,
                    },
                );
            }
            u.session_gap_ms = gap;
            u.break_hi_before_ms = u.break_hi_ms;
            let g = gap as f32;
            u.break_hi_ms = if g > u.break_hi_ms {
                g
            } else {
                0.95 * u.break_hi_ms + 0.05 * g
            };
        }
        let since_last = (now - u.last_ms).max(0);
        u.last_ms = u.last_ms.max(now);
        if dept_h.is_some() {
            u.dept = dept_h;
            // The name too, for the user card (a department, never a person's detail).
            if let Some(d) = r
                .department
                .as_deref()
                .filter(|d| u.dept_name.as_deref() != Some(*d))
            {
                u.dept_name = Some(d.to_string());
            }
        }
        if let Some(asked) = asked {
            push_window(&mut u.asked, (now, asked), 256, now - HOUR, |e| e.0);
            let (start, sum) = &mut u.asked_bucket;
            if now - *start >= HOUR {
                // An hour of searching is over: fold it into the envelope, which decays
                // slowly from one searching hour to the next.
                u.usual_asked_hi = (0.98 * u.usual_asked_hi).max(*sum);
                (*start, *sum) = (now, 0.0);
            }
            *sum += asked as f32;
            if r.query.as_ref().is_some_and(|q| q.patient_sweep) {
                push_window(&mut u.sweeps, now, 64, now - HOUR, |t| *t);
            }
        }
        if let Some(p) = ph {
            let capped = push_window(&mut u.recent, (now, p), MAX_RECENT, now - HOUR, |e| e.0);
            let d1h = match known.user_patients_1h {
                Some(n) if !capped => n,
                _ => distinct(&u.recent, now - HOUR),
            } as f32;
            u.usual_d1h = 0.98 * u.usual_d1h + 0.02 * d1h;
            // A slow-moving upper envelope: rises fast, decays slowly. It rises with time
            // spent at a level, 5 % of the way a minute, not with events: a burst of 150
            // events in ten minutes is ten minutes of evidence, not 150, and does not make
            // itself its user's usual while it is being judged (it lifted the usual to
            // the episode's own level, "opened 145 distinct patients in 10 min (usual ≤
            // 144 per hour)"; BENCHMARKS.md).
            let rise = 0.05 * (since_last as f32 / ENVELOPE_MINUTE).min(1.0);
            u.usual_d1h_hi = if d1h > u.usual_d1h_hi {
                u.usual_d1h_hi + rise * (d1h - u.usual_d1h_hi)
            } else {
                0.999 * u.usual_d1h_hi + 0.001 * d1h
            };
            let pair = h64(&(uh, p));
            let first = !self.pairs_old.contains(&pair) && !self.pairs_now.contains(&pair);
            self.new_patients.entry(uh).or_default().count(now, first);
            let user_dept = dept_h.or(u.dept);
            // The reading `features` made of this access, or the same one made now (replay).
            let cr = known.care.unwrap_or_else(|| self.care_reading(r));
            let rel = known.relation.or_else(|| {
                let ps = self.patients.get(&p).filter(|ps| ps.total > 0.0)?;
                Some(Self::with_care(self.relation(user_dept, ps), &cr))
            });
            let colleague = known.colleague.unwrap_or_else(|| {
                self.staff_named(&ParsedName::of(r.patient_display.as_deref()), r, Some(uh))
            });
            let held = known.held.unwrap_or_else(|| {
                let idle = self.staff_record_idle(
                    colleague,
                    Some(p),
                    user_dept,
                    now,
                    cr.relation.is_some(),
                );
                self.held_look(colleague, user_dept, rel, r.interaction, idle.any())
            });
            let cross = rel.map(|r| r.unrelated as u8 as f32);
            let dept_pair = rel.and_then(|r| r.pair);
            let stray = dept_pair.filter(|p| self.strays(p));
            let outside = cr.covered && cr.relation.is_none();
            let weight = self.crowd_weight(
                (cross == Some(1.0)).then(|| {
                    self.users
                        .get(&uh)
                        .map_or(0.0, |u| u.habitual_cross_rate(now))
                }),
                dept_pair.map_or(0.0, |p| p.rarity),
                outside.then(|| self.users.get(&uh).map_or(0.0, |u| u.outside_rate)),
            );
            if let Some(dp) = dept_pair {
                let key = h64(&(dp.dept, dp.home));
                if self.bridges.len() < MAX_DEPT_PAIRS || self.bridges.contains_key(&key) {
                    *self.bridges.entry(key).or_default() += 1.0;
                    *self.bridges_from.entry(dp.dept).or_default() += 1.0;
                }
            }
            let u = self.users.get_mut(&uh).expect("inserted above");
            u.first_rate = 0.97 * u.first_rate + 0.03 * first as u8 as f32;
            if self.care.is_some() {
                u.linked = Some(cr.linked);
            }
            if cr.covered {
                let outside = cr.relation.is_none() as u8 as f32;
                u.outside_rate = 0.97 * u.outside_rate + 0.03 * outside;
            }
            let rate_before = u.cross_rate;
            if let Some(c) = cross {
                u.cross_rate = 0.97 * u.cross_rate + 0.03 * c;
            }
            if cross == Some(1.0) && first {
                if !u.in_unrelated_run(now) {
                    u.cross_rate_before_run = Some(rate_before);
                }
                push_window(&mut u.unrelated_recent, now, 64, now - HOUR, |t| *t);
            }
            if first && self.pairs_now.insert(pair) && self.pairs_now.len() >= MAX_PAIRS / 2 {
                self.forgotten.pairs += self.pairs_old.len() as u64;
                self.pairs_old = std::mem::take(&mut self.pairs_now);
            }
            if !self.patients.contains_key(&p) {
                if self.patients.len() >= self.max_patients.unwrap_or(MAX_PATIENTS) {
                    self.forgotten.patients += evict_half(&mut self.patients, |p| p.last_ms);
                    let kept = &self.patients;
                    self.staff_record_work.retain(|p, _| kept.contains_key(p));
                    self.record_work.retain(|p, _| kept.contains_key(p));
                }
                let name = ParsedName::of(r.patient_display.as_deref());
                if let Some(family) = &name.family {
                    self.names_total += 1.0;
                    let k = h64(family.as_str());
                    if self.names.len() < MAX_NAMES || self.names.contains_key(&k) {
                        *self.names.entry(k).or_default() += 1.0;
                    }
                }
                if let Some(k) = name.key {
                    if self.patient_names.len() < MAX_NAMES || self.patient_names.contains_key(&k) {
                        *self.patient_names.entry(k).or_default() += 1.0;
                    }
                }
            }
            let ps = self.patients.entry(p).or_default();
            let users24 = known
                .patient_users_24h
                .unwrap_or_else(|| distinct(&ps.recent, now - DAY))
                as f32;
            ps.usual_users = 0.95 * ps.usual_users + 0.05 * users24;
            push_window(
                &mut ps.recent,
                (now, uh),
                MAX_PATIENT_RECENT,
                now - DAY,
                |e| e.0,
            );
            if cross == Some(1.0) || outside {
                push_window(&mut ps.unrelated, (now, uh, weight), 64, now - DAY, |e| e.0);
            }
            if let Some(dp) = stray {
                // One entry per department, its latest: the features count departments.
                ps.unexplained.retain(|e| e.1 != dp.dept);
                push_window(&mut ps.unexplained, (now, dp.dept), 64, now - DAY, |e| e.0);
            }
            if let Some(d) = user_dept.filter(|_| !held) {
                if let Some(e) = ps.depts.iter_mut().find(|e| e.0 == d) {
                    e.1 += 1.0;
                } else {
                    if ps.depts.len() >= MAX_DEPTS {
                        if let Some((i, _)) = ps
                            .depts
                            .iter()
                            .enumerate()
                            .min_by(|a, b| a.1 .1.total_cmp(&b.1 .1))
                        {
                            let removed = ps.depts.swap_remove(i);
                            ps.total -= removed.1;
                        }
                    }
                    ps.depts.push((d, 1.0));
                }
            }
            ps.total += 1.0;
            ps.last_ms = ps.last_ms.max(now);
            if let Some(d) =
                user_dept.filter(|_| !held && self.same_department(colleague, user_dept))
            {
                self.note_staff_record_work(p, d, now);
            }
            if colleague.is_some() && !held {
                let last = self.record_work.entry(p).or_insert(now);
                *last = (*last).max(now);
            }
        }
    }
}

/// The part of a patient reference a watch list matches: `Patient/<id>` out of an absolute
/// or versioned reference (`https://h/fhir/Patient/7/_history/2` → `Patient/7`), anything
/// else (an identifier `system|value`) as it is.
pub fn watch_key(r: &str) -> &str {
    let r = r.trim();
    match r.rfind("Patient/") {
        Some(i) => {
            let rest = &r[i..];
            let end = rest[8..].find('/').map_or(rest.len(), |j| 8 + j);
            &rest[..end]
        }
        None => r,
    }
}

/// The department most of a patient's record activity comes from.
fn home_dept(p: &PatientState) -> Option<u64> {
    p.depts
        .iter()
        .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
        .map(|e| e.0)
}

/// Below this share of a patient's record activity, a department has no working
/// relationship with the patient: one earlier lookup from the department (a colleague's, or
/// the user's own) does not make the next one part of the patient's care.
const RELATED_SHARE: f32 = 0.03;

impl Context {
    /// How often a request by this user is refused: their own rate, shrunk toward the
    /// site's while they have little history, never taken as zero.
    fn fail_rate_of(&self, user: Option<&UserState>, now: i64, in_run: bool) -> f32 {
        let site = self.site_fail_rate();
        user.map_or(site, |u| u.habitual_fail_rate(now, site, in_run))
            .max(0.001)
    }

    /// How often requests are refused at the site (1% until it has some history).
    fn site_fail_rate(&self) -> f32 {
        let [refused, requests] = self.site_fail_counts;
        (refused + 0.01 * FAIL_PRIOR) / (requests + FAIL_PRIOR)
    }
}

/// A run of refusals at least this probable (-ln 1/20) is routine and weighs nothing.
const ROUTINE_RUN: f32 = 2.995_732;
/// Requests of prior weight at the site's rate in a user's failure rate.
const FAIL_PRIOR: f32 = 100.0;
/// Decay per request of a user's refusal counts (a memory of about a thousand requests).
const FAIL_MEMORY: f32 = 0.999;
/// Decay per request of the site's refusal counts (about a hundred thousand requests).
const SITE_FAIL_MEMORY: f32 = 0.99999;

/// Count one more request, refused or not, into decaying `[refused, requests]` counts.
fn decay_count(counts: &mut [f32; 2], refused: bool, memory: f32) {
    counts[0] = memory * counts[0] + refused as u8 as f32;
    counts[1] = memory * counts[1] + 1.0;
}

/// The network an address belongs to, hashed (an IPv4 /24, an IPv6 /48, else, a host
/// name, its domain without the first label), and whether the address is outside a
/// site's private networks: a public one, neither RFC 1918 nor shared (100.64.0.0/10),
/// loopback, link-local, unspecified or IPv6 unique-local (an IPv4-mapped address as its
/// IPv4 one). A host name is not known to be outside. One parse for both.
fn network_of(address: &str) -> (u64, bool) {
    let v4_outside = |a: std::net::Ipv4Addr| {
        let o = a.octets();
        let shared = o[0] == 100 && (o[1] & 0xC0) == 64;
        !(a.is_private() || a.is_loopback() || a.is_link_local() || a.is_unspecified() || shared)
    };
    match address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) => {
            let o = a.octets();
            (h64(&(4u8, o[0], o[1], o[2])), v4_outside(a))
        }
        Ok(std::net::IpAddr::V6(a)) => {
            let s = a.segments();
            let local = (s[0] & 0xFE00) == 0xFC00 || (s[0] & 0xFFC0) == 0xFE80;
            let outside = match a.to_ipv4_mapped() {
                Some(v4) => v4_outside(v4),
                None => !(local || a.is_loopback() || a.is_unspecified()),
            };
            (h64(&(6u8, s[0], s[1], s[2])), outside)
        }
        Err(_) => (
            h64(address
                .split_once('.')
                .map_or(address, |(_, domain)| domain)),
            false,
        ),
    }
}

/// Count one more for `key`; a full map keeps its counts and forgets newcomers (returns
/// true when it forgot this one).
fn count_bounded(map: &mut IdMap<f32>, key: u64, cap: usize) -> bool {
    if let Some(n) = map.get_mut(&key) {
        *n += 1.0;
    } else if map.len() < cap {
        map.insert(key, 1.0);
    } else {
        return true;
    }
    false
}

/// One more successful event of department `dept` from a network whose departments are
/// `depts` (at most `MAX_NETWORK_DEPTS`). False when the department was not counted: it
/// is not among them and they are full.
fn count_network_dept(depts: &mut Vec<(u64, f32)>, dept: u64) -> bool {
    if let Some(d) = depts.iter_mut().find(|d| d.0 == dept) {
        d.1 += 1.0;
    } else if depts.len() < MAX_NETWORK_DEPTS {
        depts.push((dept, 1.0));
    } else {
        return false;
    }
    true
}

/// A patient with some record history, (almost) none of it from the user's department.
fn is_unrelated(dept_share: f32, history: f32) -> bool {
    history >= 1.0 && dept_share < RELATED_SHARE
}

/// A user's share of unrelated accesses, smoothed so that no habit is taken as never.
fn habit_share(rate: f32) -> f32 {
    rate + 0.005
}

/// How unusual an unrelated access is for a user whose rate of such access is `rate`.
fn unrelated_weight(rate: f32) -> f32 {
    -habit_share(rate).ln()
}

/// -ln P(N ≥ n) for N Poisson with mean `mean`: how improbable it is to see `n` or more
/// events where `mean` are expected. 0 for n = 0.
fn poisson_tail_surprise(n: u32, mean: f32) -> f32 {
    let m = (mean as f64).max(1e-12);
    let ln_pmf = |k: u32| -m + k as f64 * m.ln() - (1..=k).map(|i| (i as f64).ln()).sum::<f64>();
    let surprise = if n == 0 {
        0.0
    } else if n as f64 <= m {
        // The tail holds most of the mass: 1 minus the head is accurate.
        -(1.0 - (0..n).map(|k| ln_pmf(k).exp()).sum::<f64>())
            .max(1e-300)
            .ln()
    } else {
        // A small tail: its terms, relative to the first, fall off at once.
        let (mut term, mut sum, mut k) = (1.0f64, 0.0f64, n);
        while term > 1e-12 * sum && k < n + 1_000 {
            sum += term;
            k += 1;
            term *= m / k as f64;
        }
        -(ln_pmf(n) + sum.ln())
    };
    surprise.max(0.0) as f32
}

/// A user as the detector knows them (`Context::user_profile`): no names, no patients.
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct UserProfile {
    /// Events learned from (decayed counts, so recent activity weighs more).
    pub events: u64,
    /// The shortest band of local hours holding 90 % of their activity (start, end), once
    /// there is enough history.
    pub usual_hours: Option<(u32, u32)>,
    /// Network addresses and client applications they have worked from.
    pub addresses: u32,
    pub applications: u32,
    /// Their usual number of distinct patients in an hour.
    pub usual_patients_per_hour: f32,
    /// How often they open a patient for the first time, and one their department never
    /// touched (0–1).
    pub new_patient_share: f32,
    pub other_department_share: f32,
    /// Their last activity.
    pub last_active: String,
    /// The department their events last named.
    pub department: Option<String>,
}

impl Facts {
    /// The user's usual hours: the shortest contiguous (circular) band holding 90% of their
    /// activity, (start, end inclusive); `None` while the user has too little history.
    pub fn user_usual_hours(&self) -> Option<(u32, u32)> {
        usual_hours(self.user_hours.as_ref()?)
    }
}

fn usual_hours(hist: &[f32; 24]) -> Option<(u32, u32)> {
    let total: f32 = hist.iter().sum();
    if total < MATURE {
        return None;
    }
    // Circular prefix sums: any window's sum in O(1).
    let mut prefix = [0f32; 49];
    for i in 0..48 {
        prefix[i + 1] = prefix[i] + hist[i % 24];
    }
    for len in 1..=24usize {
        for start in 0..24usize {
            if prefix[start + len] - prefix[start] >= 0.9 * total {
                return Some((start as u32, ((start + len - 1) % 24) as u32));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    /// Monday 2024-03-04 at `hour`:00 UTC, in ms.
    fn monday(hour: u32) -> i64 {
        Utc.with_ymd_and_hms(2024, 3, 4, hour, 0, 0)
            .unwrap()
            .timestamp_millis()
    }

    fn rec(user: &str, patient: &str, t: i64) -> AuditRecord {
        AuditRecord {
            key: format!("{user}{patient}{t}"),
            id: "x".into(),
            version_id: None,
            last_updated: None,
            recorded: Utc.timestamp_millis_opt(t).unwrap(),
            interaction: Interaction::Read,
            action: Some('R'),
            outcome: 0,
            user: Some(user.into()),
            user_display: Some("Dr. Ann Smith".into()),
            department: Some("Cardiology".into()),
            client_app: Some("Device/ehr".into()),
            source_ip: Some("10.0.0.1".into()),
            patient: Some(patient.into()),
            patient_display: Some("Jones, Bob".into()),
            restricted: false,
            purpose: None,
            observer: None,
            query: None,
            request_id: None,
        }
    }

    /// A care index of `resources`, as the daemon builds one from the server's.
    fn care_index(resources: Vec<serde_json::Value>) -> std::sync::Arc<care::Index> {
        let key = care::CareKey::from_bytes(&[3u8; 32]).unwrap();
        let mut set = care::FactSet::default();
        for r in &resources {
            for f in care::resources::read(r, &key) {
                set.upsert(f);
            }
        }
        std::sync::Arc::new(set.index(key))
    }

    #[test]
    fn a_treatment_relationship_clears_only_what_it_answers_and_never_before_it_began() {
        use serde_json::json;
        let care = care_index(vec![
            json!({"resourceType": "Practitioner", "id": "ann", "name": [{"family": "Smith", "given": ["Ann"]}],
                   "address": [{"line": ["1 Elm St"], "postalCode": "02100"}]}),
            json!({"resourceType": "Patient", "id": "7", "name": [{"family": "Jones"}]}),
            json!({"resourceType": "Patient", "id": "8", "name": [{"family": "Smith", "given": ["Liz"]}],
                   "address": [{"line": ["1 Elm St"], "postalCode": "02100"}]}),
            json!({"resourceType": "Encounter", "id": "e", "subject": {"reference": "Patient/7"},
                   "period": {"start": "2024-03-04T10:00:00Z"},
                   "participant": [{"individual": {"reference": "Practitioner/ann"}}]}),
            json!({"resourceType": "Encounter", "id": "f", "subject": {"reference": "Patient/8"},
                   "period": {"start": "2024-03-01T10:00:00Z"}, "location": [{"location": {"display": "Oncology"}}]}),
        ]);
        let mut c = Context::new(chrono_tz::UTC);
        c.set_care(Some(care));
        let row = |c: &Context, r: &AuditRecord| c.peek(r);
        // Before the encounter began: outside care, a first access.
        let (x, f) = row(&c, &rec("Practitioner/ann", "Patient/7", monday(9)));
        assert!(f.care_covered && f.care.is_none());
        assert!(x[Feature::OutsideCare.index()] > 1.0);
        assert_eq!(x[Feature::FirstAccessToPatient.index()], 1.0);
        // Inside it: related, and the first access is the relationship's.
        let (x, f) = row(&c, &rec("Practitioner/ann", "Patient/7", monday(11)));
        assert!(f.care.is_some_and(|r| r.personal));
        assert_eq!(x[Feature::OutsideCare.index()], 0.0);
        assert_eq!(x[Feature::FirstAccessToPatient.index()], 0.0);
        // …but not what it does not answer: the hours count as without it, and a personal
        // link (below) still counts.
        let (bare, _) =
            Context::new(chrono_tz::UTC).peek(&rec("Practitioner/ann", "Patient/7", monday(11)));
        for h in [
            Feature::HourRarityUser,
            Feature::HourRaritySite,
            Feature::HourRarityPeers,
        ] {
            assert_eq!(x[h.index()], bare[h.index()], "{}", h.name());
        }
        let (x, f) = row(&c, &rec("Practitioner/ann", "Patient/8", monday(11)));
        assert_eq!(f.personal, Some(care::Personal::Household));
        assert_eq!(x[Feature::PersonalLink.index()], 1.0);
        assert!(
            x[Feature::OutsideCare.index()] > 0.0,
            "Cardiology is not Oncology"
        );
        // A user in the unit that holds the patient is related through it.
        let (x, _) = row(
            &c,
            &in_dept("Practitioner/zed", "Oncology", "Patient/8", monday(11)),
        );
        assert_eq!(x[Feature::OutsideCare.index()], 0.0);
        // Without care context, nothing changes.
        let plain = Context::new(chrono_tz::UTC);
        let (x, f) = row(&plain, &rec("Practitioner/ann", "Patient/8", monday(11)));
        assert!(!f.care_covered);
        assert_eq!(
            x[Feature::OutsideCare.index()] + x[Feature::PersonalLink.index()],
            0.0
        );
    }

    #[test]
    fn a_watched_record_is_no_reason_for_staff_whose_work_the_care_context_does_not_describe() {
        use serde_json::json;
        let care = care_index(vec![
            json!({"resourceType": "Patient", "id": "7", "name": [{"family": "Jones"}]}),
            json!({"resourceType": "Patient", "id": "8", "name": [{"family": "Berg"}]}),
            json!({"resourceType": "Encounter", "id": "e", "subject": {"reference": "Patient/7"},
                   "period": {"start": "2024-03-01T10:00:00Z"},
                   "participant": [{"individual": {"reference": "Practitioner/ann"}}]}),
            json!({"resourceType": "Encounter", "id": "f", "subject": {"reference": "Patient/8"},
                   "period": {"start": "2024-03-01T10:00:00Z"}, "location": [{"location": {"display": "Oncology"}}]}),
        ]);
        let mut c = Context::new(chrono_tz::UTC);
        c.set_care(Some(care));
        c.set_watch_list(["Patient/7"]);
        let j = feature("watched_record_unrelated");
        let t0 = monday(11);
        // Ann treats Patient/7; a ward nurse works inside Oncology's care of Patient/8; a
        // radiographer's work (by orders) is outside every relationship the context knows.
        for k in 0..60 {
            let t = t0 + k * 60_000;
            c.observe(&in_dept("Practitioner/ann", "Cardiology", "Patient/7", t));
            c.observe(&in_dept("Practitioner/zed", "Oncology", "Patient/8", t));
            c.observe(&in_dept("Practitioner/rad", "Radiology", "Patient/8", t));
        }
        let later = t0 + 2 * HOUR;
        let (x, f) = c.observe(&in_dept("Practitioner/zed", "Oncology", "Patient/7", later));
        assert!(f.watched && f.care_covered && f.care.is_none());
        assert_eq!(x[j], 1.0, "the nurse usually works inside a relationship");
        let (x, f) = c.observe(&in_dept(
            "Practitioner/rad",
            "Radiology",
            "Patient/7",
            later,
        ));
        assert!(f.watched && f.care.is_none());
        assert_eq!(
            x[j], 0.0,
            "the radiographer's day is outside every known relationship"
        );
        // The outside-care signal itself is weighed by the same habit.
        assert!(x[Feature::OutsideCare.index()] < 0.5);
    }

    /// Events that name no department (Medplum, Firely, Aidbox) read as events that name
    /// the user's, when the care context's PractitionerRoles say where each user works: the
    /// same rows, the same explanation's department; without a role, no department.
    #[test]
    fn a_users_department_comes_from_their_role_when_the_event_names_none() {
        use serde_json::json;
        let roles = |with: bool| {
            let mut r =
                vec![json!({"resourceType": "Patient", "id": "1", "name": [{"family": "Jones"}]})];
            if with {
                r.push(json!({"resourceType": "PractitionerRole", "id": "a", "practitioner": {"reference": "Practitioner/ann"},
                              "location": [{"display": "Cardiology"}], "organization": {"reference": "Organization/h"}}));
                r.push(json!({"resourceType": "PractitionerRole", "id": "o", "practitioner": {"reference": "Practitioner/olu"},
                              "specialty": [{"text": "Oncology"}]}));
            }
            care_index(r)
        };
        let t0 = monday(9);
        let stream = |named: bool| {
            (0..400i64).map(move |k| {
                let (user, dept, patient) = match k % 4 {
                    0 | 1 => (
                        "Practitioner/ann",
                        "Cardiology",
                        format!("Patient/c{}", k % 7),
                    ),
                    2 => (
                        "Practitioner/olu",
                        "Oncology",
                        format!("Patient/o{}", k % 5),
                    ),
                    // Olu's first look at one of Cardiology's patients, now and then.
                    _ => (
                        "Practitioner/olu",
                        "Oncology",
                        format!("Patient/c{}", k % 11),
                    ),
                };
                AuditRecord {
                    department: named.then(|| dept.into()),
                    ..rec(user, &patient, t0 + k * 60_000)
                }
            })
        };
        let run = |named: bool, with_roles: bool| {
            let mut c = Context::new(chrono_tz::UTC);
            c.set_care(Some(roles(with_roles)));
            stream(named).map(|r| c.observe(&r)).collect::<Vec<_>>()
        };
        let (named, filled, blind) = (run(true, true), run(false, true), run(false, false));
        for (i, ((x, f), (y, g))) in named.iter().zip(&filled).enumerate() {
            assert_eq!(x, y, "event {i}: the same row");
            assert_eq!(f.dept, g.dept, "event {i}");
        }
        assert!(filled
            .iter()
            .any(|(_, f)| f.dept.as_deref() == Some("Cardiology")));
        assert!(blind.iter().all(|(_, f)| f.dept.is_none()));
        assert!(
            filled.iter().all(|(_, f)| f.dept_from_care),
            "said, for coverage"
        );
        assert!(named.iter().chain(&blind).all(|(_, f)| !f.dept_from_care));
        let j = Feature::UnrelatedPatientRarity.index();
        assert!(
            filled.iter().any(|(x, _)| x[j] > 0.0),
            "a look outside the department"
        );
        assert!(
            blind.iter().all(|(x, _)| x[j] == 0.0),
            "nothing to compare without one"
        );
    }

    #[test]
    fn where_the_care_context_describes_nobodys_work_a_watched_record_is_read_as_without_one() {
        use serde_json::json;
        // Relationships the audit trail's users and units never match: a locum nobody logs
        // in as, a ward name no event carries.
        let care = care_index(vec![
            json!({"resourceType": "Patient", "id": "7", "name": [{"family": "Jones"}]}),
            json!({"resourceType": "Patient", "id": "8", "name": [{"family": "Berg"}]}),
            json!({"resourceType": "Encounter", "id": "e", "subject": {"reference": "Patient/7"},
                   "period": {"start": "2024-03-01T10:00:00Z"},
                   "participant": [{"individual": {"reference": "Practitioner/locum"}}]}),
            json!({"resourceType": "Encounter", "id": "f", "subject": {"reference": "Patient/8"},
                   "period": {"start": "2024-03-01T10:00:00Z"}, "location": [{"location": {"display": "Ward 9"}}]}),
        ]);
        let mut c = Context::new(chrono_tz::UTC);
        c.set_care(Some(care.clone()));
        c.set_watch_list(["Patient/7"]);
        let j = feature("watched_record_unrelated");
        let t0 = monday(11);
        for k in 0..SITE_OUTSIDE_REFRESH as i64 {
            let t = t0 + k * 10_000;
            c.observe(&in_dept("Practitioner/ann", "Cardiology", "Patient/7", t));
            c.observe(&in_dept("Practitioner/zed", "Oncology", "Patient/8", t));
        }
        // Derived, not stored: a snapshot read back says the same.
        let mut c2 = Context::from_bytes(&c.to_bytes(), chrono_tz::UTC).unwrap();
        c2.set_care(Some(care));
        c2.set_watch_list(["Patient/7"]);
        for c in [&mut c, &mut c2] {
            let reach = c.care_reach();
            assert!(describes_nobody(reach.outside_rate), "{reach:?}");
            // Both are Practitioners (linked), yet no relationship names them.
            assert_eq!((reach.linked, reach.not_linked), (2, 0), "{reach:?}");
            let later = t0 + SITE_OUTSIDE_REFRESH as i64 * 10_000 + HOUR;
            // Everyone is "outside" here, so that says nothing; Oncology has no history
            // with the watched record, Cardiology works it.
            let (x, f) = c.observe(&in_dept("Practitioner/zed", "Oncology", "Patient/7", later));
            assert!(f.watched && f.care_covered && f.care.is_none());
            assert_eq!(x[j], 1.0, "read from the department's history");
            let (x, _) = c.observe(&in_dept(
                "Practitioner/ann",
                "Cardiology",
                "Patient/7",
                later,
            ));
            assert_eq!(x[j], 0.0, "the department works the record");
        }
    }

    fn in_dept(user: &str, dept: &str, patient: &str, t: i64) -> AuditRecord {
        AuditRecord {
            department: Some(dept.into()),
            ..rec(user, patient, t)
        }
    }

    /// Where the events name no department, a user's peer group stands for it: a lookup by
    /// one group of the other group's patient is a lookup of another department's record,
    /// as it is where events name departments. An event naming one keeps its own.
    #[test]
    fn a_peer_group_stands_for_the_department_the_events_do_not_name() {
        let unnamed = |u: &str, p: &str, t: i64| AuditRecord {
            department: None,
            ..rec(u, p, t)
        };
        let mut history = Vec::new();
        let t0 = monday(10);
        for p in 0..12 {
            for (g, team) in [(0, "a"), (1, "b")] {
                let patient = format!("Patient/{team}{p}");
                for u in 0..3 {
                    let t = t0 + (p * 6 + g * 3 + u) * 60_000;
                    history.push(unnamed(&format!("Practitioner/{team}{u}"), &patient, t));
                }
            }
        }
        let peers = crate::detector::peers::infer(&history);
        assert_eq!(peers.groups.len(), 2, "{peers:?}");
        let later = t0 + 3_600_000;
        let look = unnamed("Practitioner/a0", "Patient/b3", later);
        // Without the groups: no department, nothing to compare.
        let mut blind = Context::new(chrono_tz::UTC);
        history.iter().for_each(|r| drop(blind.observe(r)));
        let (_, f) = blind.observe(&look);
        assert_eq!((f.dept.as_deref(), f.dept_from_peers), (None, false));
        let mut c = Context::new(chrono_tz::UTC);
        c.set_peer_groups(&peers);
        history.iter().for_each(|r| drop(c.observe(r)));
        let (x, f) = c.observe(&look);
        let a = crate::detector::peers::group_name(
            peers
                .members()
                .find(|(u, _)| *u == "Practitioner/a0")
                .unwrap()
                .1,
        );
        assert_eq!(f.dept.as_deref(), Some(a.as_str()));
        assert!(f.dept_from_peers && !f.dept_from_care);
        assert_eq!(f.dept_share, Some(0.0), "the other group's patient");
        assert!(x[feature("unrelated_patient_rarity")] > 0.0);
        // Its own group's patient is no such lookup; an event naming a department keeps it.
        let (_, f) = c.observe(&unnamed("Practitioner/a1", "Patient/a3", later));
        assert!(f.dept_share.unwrap() > 0.5);
        let (_, f) = c.observe(&in_dept("Practitioner/a2", "Surgery", "Patient/b4", later));
        assert!(!f.dept_from_peers && f.dept.as_deref() != Some(a.as_str()));
    }

    /// A user who first appears after training joins the group whose patients they open:
    /// after `NEWCOMER_OPENS` opens, not before. One whose opens spread over the groups
    /// (a service) joins none; nor does one the training found in no group.
    #[test]
    fn a_newcomer_joins_the_peer_group_their_work_goes_to() {
        let unnamed = |u: &str, p: &str, t: i64| AuditRecord {
            department: None,
            ..rec(u, p, t)
        };
        let t0 = monday(10);
        let mut history = Vec::new();
        for p in 0..12 {
            for (g, team) in ["a", "b", "c"].iter().enumerate() {
                let patient = format!("Patient/{team}{p}");
                for u in 0..3 {
                    let t = t0 + (p * 12 + g as i64 * 4 + u) * 60_000;
                    history.push(unnamed(&format!("Practitioner/{team}{u}"), &patient, t));
                }
                // A pharmacist opens every team's patients: in no group.
                let t = t0 + (p * 12 + g as i64 * 4 + 3) * 60_000;
                history.push(unnamed("Practitioner/pharm", &patient, t));
            }
        }
        let peers = crate::detector::peers::infer(&history);
        assert_eq!(
            (peers.groups.len(), peers.alone.as_slice()),
            (3, ["Practitioner/pharm".to_string()].as_slice()),
            "{peers:?}"
        );
        let group_of = |u: &str| peers.members().find(|(m, _)| *m == u).unwrap().1;
        let mut c = Context::new(chrono_tz::UTC);
        c.set_peer_groups(&peers);
        history.iter().for_each(|r| drop(c.observe(r)));
        let later = t0 + DAY;
        let opens = NEWCOMER_OPENS as i64;
        // The new nurse of team a: 4 in 5 of their opens are team a's patients.
        for i in 0..opens {
            let team = if i % 5 == 4 { "b" } else { "a" };
            let (_, f) = c.observe(&unnamed(
                "Practitioner/new",
                &format!("Patient/{team}{}", i % 12),
                later + i * 60_000,
            ));
            assert_eq!(f.dept, None, "open {i}: no group yet");
        }
        let (joined, unsaid) = c.take_joined();
        assert_eq!(unsaid, 0);
        assert_eq!(joined.len(), 1, "{joined:?}");
        let j = &joined[0];
        assert_eq!(j.user, "Practitioner/new");
        assert_eq!(j.group, group_of("Practitioner/a0"));
        assert_eq!((j.opens, j.to_group), (50, 40));
        let (_, f) = c.observe(&unnamed("Practitioner/new", "Patient/b1", later + DAY));
        assert!(f.dept_from_peers);
        assert_eq!(
            f.dept,
            Some(crate::detector::peers::group_name(group_of(
                "Practitioner/a0"
            )))
        );
        // A new pharmacist, a third of their opens each team's: no group. The pharmacist
        // the training found in none stays in none, whatever they open.
        for i in 0..3 * opens {
            let team = ["a", "b", "c"][i as usize % 3];
            let patient = format!("Patient/{team}{}", i % 12);
            let t = later + DAY + i * 60_000;
            let (_, f) = c.observe(&unnamed("Practitioner/new-pharm", &patient, t));
            assert_eq!(f.dept, None);
            let (_, f) = c.observe(&unnamed("Practitioner/pharm", "Patient/a1", t + 1));
            assert_eq!(f.dept, None);
        }
        assert!(c.take_joined().0.is_empty());
    }

    #[test]
    fn features_are_causal_and_counted() {
        let mut c = Context::new(chrono_tz::UTC);
        let t0 = monday(10);
        let (x, f) = c.observe(&rec("Practitioner/1", "Patient/1", t0));
        assert!(f.first_pair);
        assert_eq!(x[6], 1.0);
        let (_, f) = c.observe(&rec("Practitioner/1", "Patient/1", t0 + 1000));
        assert!(!f.first_pair, "second access is not first");
        for i in 2..40 {
            c.observe(&rec(
                "Practitioner/1",
                &format!("Patient/{i}"),
                t0 + i * 1000,
            ));
        }
        let (_, f) = c.observe(&rec("Practitioner/1", "Patient/99", t0 + 60_000));
        assert_eq!(f.d10, 40, "39 earlier distinct patients plus this one");
    }

    #[test]
    fn family_names() {
        assert_eq!(family_name("Smith, Jane").as_deref(), Some("smith"));
        assert_eq!(family_name("Dr. Jane Smith").as_deref(), Some("smith"));
        assert_eq!(family_name("J").as_deref(), None);
    }

    /// Names as other systems write them: titles without a full stop, degrees and
    /// suffixes after the name, particles of a family name, initials; the same person
    /// gives the same key however written, and a family name that looks like a degree
    /// stays a family name.
    #[test]
    fn names_as_other_systems_write_them() {
        // The longest of each list, counted at compile time ("pharmd", "miss"/"prof").
        assert_eq!((SUFFIXES.longest, TITLES.longest), (6, 4));
        assert!(one_of("Pharm.D.", &SUFFIXES) && !one_of("Pharmacist", &SUFFIXES));
        let jane = person_key("Smith, Jane");
        assert!(jane.is_some());
        for written in [
            "Dr Jane Smith",
            "Jane Smith, MD",
            "Jane Smith MD",
            "Jane A. Smith, MD, PhD",
            "Prof. Jane Smith PhD",
            "SMITH, JANE",
            "Smith, Jane, RN",
            "Smith, Dr. Jane",
            "Smith, J. Jane",
            "Mrs Jane Smith",
        ] {
            assert_eq!(person_key(written), jane, "{written}");
            assert_eq!(family_name(written).as_deref(), Some("smith"), "{written}");
        }
        assert_eq!(person_key("John Smith Jr."), person_key("Smith, John"));
        // A family name with particles, either way round.
        assert_eq!(
            person_key("Anna van der Berg"),
            person_key("van der Berg, Anna")
        );
        assert_eq!(
            family_name("Anna van der Berg").as_deref(),
            Some("vanderberg")
        );
        // Family names that are also degrees' letters.
        assert_eq!(family_name("Yu Ma").as_deref(), Some("ma"));
        assert_eq!(family_name("YU MA").as_deref(), Some("ma"));
        assert_eq!(family_name("Ma, Yu").as_deref(), Some("ma"));
        assert_eq!(person_key("Ma, Yu"), person_key("Yu Ma"));
        assert!(person_key("Smith, Do").is_some());
        assert_eq!(family_name("Jane Do").as_deref(), Some("do"));
        assert_eq!(family_name("Jane Do MD").as_deref(), Some("do"));
        // As before: the simulator's forms, hyphens, and no name at all.
        assert_eq!(
            person_key("Dr. Ines Haas-Sato"),
            person_key("Haas-Sato, Ines")
        );
        assert_eq!(
            family_name("Practitioner/12").as_deref(),
            Some("practitioner")
        );
        assert_eq!(person_key("Dr."), None);
        // A login written as an address names the person too; one without a family
        // name in it names nobody.
        assert_eq!(person_key("jane.smith@hospital.example"), jane);
        assert_eq!(person_key("Jane_Smith2@hospital.example"), jane);
        assert_eq!(
            family_name("j.smith@hospital.example").as_deref(),
            Some("smith")
        );
        assert_eq!(family_name("jsmith@hospital.example").as_deref(), None);
        assert_eq!(family_name(""), None);
    }

    #[test]
    fn snapshot_round_trips() {
        let mut c = Context::new(chrono_tz::UTC);
        let t0 = monday(10);
        c.observe(&rec("Practitioner/1", "Patient/1", t0));
        let mut d = Context::from_bytes(&c.to_bytes(), chrono_tz::UTC).unwrap();
        // A snapshot of an earlier build (JSON) still reads.
        let json = serde_json::to_vec(&c).unwrap();
        let mut j = Context::from_bytes(&json, chrono_tz::UTC).unwrap();
        let r = rec("Practitioner/1", "Patient/1", t0 + 5);
        let x = c.observe(&r).0;
        assert_eq!(x, d.observe(&r).0);
        assert_eq!(x, j.observe(&r).0);
        let mut other = c.to_bytes();
        other[SNAPSHOT_TAG.len()] ^= 0x7f;
        let e = Context::from_bytes(&other, chrono_tz::UTC).unwrap_err();
        assert!(matches!(e, SnapshotError::Layout { .. }), "{e}");
        let cut = &c.to_bytes()[..40];
        assert!(Context::from_bytes(cut, chrono_tz::UTC).is_err());
    }

    /// At `MAX_PATIENTS` the least recently seen half is forgotten, and counted.
    #[test]
    fn the_patient_bound_forgets_the_least_recently_seen_half_and_says_so() {
        let mut c = Context::new(chrono_tz::UTC);
        let t0 = monday(10);
        for i in 0..MAX_PATIENTS as i64 {
            c.observe(&rec("Practitioner/1", &format!("Patient/{i}"), t0 + i));
        }
        assert_eq!(
            c.take_forgotten().patients,
            0,
            "at the bound, nothing forgotten yet"
        );
        c.observe(&rec(
            "Practitioner/1",
            "Patient/new",
            t0 + MAX_PATIENTS as i64,
        ));
        let f = c.take_forgotten();
        assert!(
            (MAX_PATIENTS as u64 / 2..=MAX_PATIENTS as u64 / 2 + 1).contains(&f.patients),
            "{f:?}"
        );
        assert_eq!(f.users, 0);
        assert_eq!(c.take_forgotten(), Forgotten::default(), "taken once");
        // The newest are kept: the latest patient is known, the first one is new again.
        let (_, known) = c.observe(&rec("Practitioner/2", "Patient/new", t0 + 10_000_000));
        let (_, first) = c.observe(&rec("Practitioner/2", "Patient/0", t0 + 10_000_001));
        assert!(known.patient_history >= 1, "{known:?}");
        assert_eq!(first.patient_history, 0, "forgotten: {first:?}");
    }

    /// A lowered bound (`set_max_patients`, for measuring detection at the bound) forgets
    /// the same way, and survives adopting a model's baselines.
    #[test]
    fn a_lowered_patient_bound_forgets_at_it_and_survives_adopting_baselines() {
        let t0 = monday(10);
        let mut c = Context::new(chrono_tz::UTC);
        c.set_max_patients(10);
        c.adopt_history(Context::new(chrono_tz::UTC));
        for i in 0..10 {
            c.observe(&rec("Practitioner/1", &format!("Patient/{i}"), t0 + i));
        }
        assert_eq!(c.take_forgotten().patients, 0);
        c.observe(&rec("Practitioner/1", "Patient/new", t0 + 10));
        assert!((5..=6).contains(&c.take_forgotten().patients));
    }

    /// A context touching every kind of state the snapshot holds.
    fn layout_sample() -> Context {
        let mut c = Context::new(chrono_tz::UTC);
        let t0 = monday(10);
        for i in 0..30 {
            let dept = ["Surgery", "Cardiology", "Oncology"][i % 3];
            let user = format!("Practitioner/{}", i % 5);
            c.observe(&in_dept(
                &user,
                dept,
                &format!("Patient/{}", i % 7),
                t0 + i as i64 * 61_000,
            ));
            let mut failed = rec(
                &user,
                &format!("Patient/{}", i % 11),
                t0 + i as i64 * 67_000,
            );
            failed.outcome = if i % 4 == 0 { 4 } else { 0 };
            c.observe(&failed);
        }
        c.revivals.insert(
            h64("Practitioner/0"),
            Revived {
                at_ms: t0,
                gap_days: 30.0,
                usual_days: 2.0,
                events: 3.0,
                work: 40.0,
            },
        );
        c.note_staff_record_work(h64("Patient/3"), h64("Surgery"), t0);
        c.record_work.insert(h64("Patient/3"), t0);
        c.outside_users.insert(h64("Practitioner/1"), 2.0);
        c.site_outside = 2.0;
        c.peer_groups.insert(h64("Practitioner/2"), 1);
        c.newcomers.insert(
            h64("Practitioner/4"),
            Newcomer {
                opens: 3.0,
                homes: vec![(h64("peer group 1"), 2.0), (h64("Surgery"), 1.0)],
            },
        );
        c
    }

    /// The committed snapshot (`testdata/snapshot-layout-{SNAPSHOT_LAYOUT}.bin`, written by this build's
    /// layout) still reads, to the same size: a field added, removed or moved without a new
    /// `SNAPSHOT_LAYOUT` fails here. `FHIR_EDGE_BLESS=1` rewrites the file after a bump.
    #[test]
    fn a_snapshot_of_this_layout_still_reads() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
            "src/detector/testdata/snapshot-layout-{SNAPSHOT_LAYOUT}.bin"
        ));
        if std::env::var_os("FHIR_EDGE_BLESS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, layout_sample().to_bytes()).unwrap();
        }
        let golden = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; after a layout bump, FHIR_EDGE_BLESS=1",
                path.display()
            )
        });
        let c = Context::from_bytes(&golden, chrono_tz::UTC).expect("the committed layout reads");
        assert_eq!(c.to_bytes().len(), golden.len(), "same fields, same size");
        assert_eq!(c.users.len(), 5);
        assert_eq!(c.patients.len(), 11);
        let events = |c: &Context| c.user_profile("Practitioner/1").map(|u| u.events);
        assert_eq!(events(&c), events(&layout_sample()));
        assert_eq!(c.revivals, layout_sample().revivals);
        assert_eq!(c.new_patients, layout_sample().new_patients);
        assert_eq!(c.new_patients.len(), 5);
        assert_eq!(c.staff_names, layout_sample().staff_names);
        assert_eq!((c.staff_names.len(), c.patient_names.len()), (1, 1));
        assert_eq!(c.staff_record_work, layout_sample().staff_record_work);
        assert_eq!(c.staff_record_work.len(), 1);
        assert_eq!(c.network_depts, layout_sample().network_depts);
        assert_eq!(c.network_depts.values().map(Vec::len).sum::<usize>(), 3);
        assert_eq!(c.outside_users, layout_sample().outside_users);
        assert_eq!((c.outside_users.len(), c.site_outside), (1, 2.0));
        assert_eq!(c.peer_groups, layout_sample().peer_groups);
        assert_eq!(c.peer_groups.len(), 1);
        assert_eq!(c.newcomers, layout_sample().newcomers);
        assert_eq!(c.newcomers.len(), 1);
        assert_eq!(c.record_work, layout_sample().record_work);
        assert_eq!(c.record_work.len(), 1);
    }

    /// Snapshots of layouts 1 (before `revivals`), 2 (before `new_patients`), 3 (before
    /// `staff_names`), 4 (before `staff_record_work`), 5 (before `network_depts`), 6
    /// (before `peer_groups`), 7 (before `newcomers`) and 8 (before `record_work`) still
    /// read, with nothing of the missing fields: an upgrade keeps the site's running
    /// context.
    #[test]
    fn snapshots_of_earlier_layouts_still_read() {
        let read = |layout: u32| {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
                "src/detector/testdata/snapshot-layout-{layout}.bin"
            ));
            let c = Context::from_bytes(&std::fs::read(path).unwrap(), chrono_tz::UTC)
                .unwrap_or_else(|e| panic!("layout {layout} reads: {e}"));
            assert_eq!(
                (c.users.len(), c.patients.len()),
                (5, 11),
                "layout {layout}"
            );
            c
        };
        let c = read(1);
        assert!(c.revivals.is_empty() && c.new_patients.is_empty());
        let c = read(2);
        assert_eq!(c.revivals, layout_sample().revivals);
        assert!(c.new_patients.is_empty());
        let c = read(3);
        assert_eq!(c.new_patients, layout_sample().new_patients);
        assert!(c.staff_names.is_empty() && c.patient_names.is_empty());
        let c = read(4);
        assert_eq!(c.staff_names, layout_sample().staff_names);
        assert!(c.staff_record_work.is_empty());
        let c = read(5);
        assert_eq!(c.staff_record_work, layout_sample().staff_record_work);
        assert!(c.network_depts.is_empty() && c.outside_users.is_empty());
        assert_eq!(c.site_outside, 0.0);
        let c = read(6);
        assert_eq!(c.outside_users, layout_sample().outside_users);
        assert!(c.peer_groups.is_empty());
        let c = read(7);
        assert_eq!(c.peer_groups, layout_sample().peer_groups);
        assert!(c.newcomers.is_empty());
        let c = read(8);
        assert_eq!(c.newcomers, layout_sample().newcomers);
        assert!(c.record_work.is_empty());
        assert!(matches!(
            Context::from_bytes(b"fhirctx\0\x0a\0\0\0", chrono_tz::UTC),
            Err(SnapshotError::Layout { found: 10 })
        ));
    }

    /// A consulting department's pattern (cardiology on surgical patients) makes its next
    /// such lookup ordinary; the same department opening an oncology patient is not.
    #[test]
    fn department_pairs_learn_consult_patterns() {
        let mut c = Context::new(chrono_tz::UTC);
        let t0 = monday(10);
        let mut t = t0;
        let mut at = |user: &str, dept: &str, patient: &str| {
            t += 60_000;
            in_dept(user, dept, patient, t)
        };
        for i in 0..40 {
            c.observe(&at("Practitioner/s1", "Surgery", &format!("Patient/s{i}")));
            c.observe(&at("Practitioner/s2", "Surgery", &format!("Patient/s{i}")));
        }
        for i in 0..5 {
            c.observe(&at("Practitioner/o1", "Oncology", &format!("Patient/o{i}")));
        }
        for i in 0..20 {
            c.observe(&at(
                "Practitioner/c1",
                "Cardiology",
                &format!("Patient/s{i}"),
            ));
        }
        let (usual, f_usual) = c.observe(&at("Practitioner/c2", "Cardiology", "Patient/s30"));
        let (rare, f_rare) = c.observe(&at("Practitioner/c2", "Cardiology", "Patient/o1"));
        let i = feature("dept_pair_rarity");
        assert!(rare[i] > usual[i] + 1.5, "{} vs {}", rare[i], usual[i]);
        assert_eq!(f_usual.home_dept.as_deref(), Some("Surgery"));
        assert_eq!((f_usual.pair_count, f_usual.pair_total), (20, 20));
        assert_eq!(f_rare.home_dept.as_deref(), Some("Oncology"));
        assert_eq!((f_rare.pair_count, f_rare.pair_total), (0, 21));
        // A department's own patient is not an unrelated access at all.
        let (own, f_own) = c.observe(&at("Practitioner/s1", "Surgery", "Patient/s3"));
        assert_eq!((own[i], f_own.home_dept), (0.0, None));
    }

    /// One earlier lookup from a department (3% or less of the record) does not make the
    /// next one from that department part of the patient's care; a real share does.
    #[test]
    fn a_relationship_needs_a_real_share_of_the_record() {
        let mut c = Context::new(chrono_tz::UTC);
        let mut t = monday(10);
        let mut at = |user: &str, dept: &str| {
            t += 60_000;
            in_dept(user, dept, "Patient/vip", t)
        };
        for _ in 0..40 {
            c.observe(&at("Practitioner/s1", "Surgery"));
        }
        let unrelated = feature("unrelated_patient_rarity");
        let (x, _) = c.observe(&at("Practitioner/c1", "Cardiology"));
        assert!(x[unrelated] > 0.0);
        // Cardiology now has 1 of 41 accesses: the second snooper is still unrelated.
        let (x, f) = c.observe(&at("Practitioner/c2", "Cardiology"));
        assert!(x[unrelated] > 0.0, "{:?}", f.dept_share);
        assert_eq!(f.unrelated_users_24h, 2);
        assert!(!f.no_related_visitor, "Surgery works on the record today");
        for _ in 0..10 {
            c.observe(&at("Practitioner/c3", "Cardiology"));
        }
        let (x, _) = c.observe(&at("Practitioner/c4", "Cardiology"));
        assert_eq!(x[unrelated], 0.0);
    }

    /// Two users opened a record today, neither with a relationship: no care is going on
    /// in it. Not so for a third (a crowd) or beside someone whose work it is.
    #[test]
    fn a_record_only_the_unrelated_opened_today_has_no_related_visitor() {
        let mut c = Context::new(chrono_tz::UTC);
        let mut t = monday(10);
        for _ in 0..40 {
            t += 60_000;
            c.observe(&in_dept("Practitioner/s1", "Surgery", "Patient/p", t));
        }
        // Two days later, two cardiologists look.
        t += 2 * DAY;
        let (_, f) = c.observe(&in_dept("Practitioner/c1", "Cardiology", "Patient/p", t));
        assert!(
            (f.patient_users_24h, f.no_related_visitor) == (1, false),
            "{f:?}"
        );
        t += 60_000;
        let (_, f) = c.observe(&in_dept("Practitioner/c2", "Cardiology", "Patient/p", t));
        assert_eq!((f.patient_users_24h, f.unrelated_users_24h), (2, 2));
        assert!(f.no_related_visitor);
        // A third: a crowd, which the crowd's own signals weigh.
        t += 60_000;
        let (_, f) = c.observe(&in_dept("Practitioner/n1", "Neurology", "Patient/p", t));
        assert_eq!((f.patient_users_24h, f.unrelated_users_24h), (3, 3));
        assert!(!f.no_related_visitor);
        // Where the surgeon works on the record today, a look beside it is not alone.
        for _ in 0..40 {
            t += 60_000;
            c.observe(&in_dept("Practitioner/s1", "Surgery", "Patient/q", t));
        }
        let (_, f) = c.observe(&in_dept("Practitioner/c1", "Cardiology", "Patient/q", t));
        assert_eq!((f.patient_users_24h, f.unrelated_users_24h), (2, 1));
        assert!(!f.no_related_visitor);
    }

    #[test]
    fn poisson_tail_surprise_matches_closed_forms() {
        // P(N >= 1) = 1 - e^-m; P(N >= 2) = 1 - e^-m (1 + m).
        for m in [0.01f64, 0.3, 1.0, 4.0, 30.0] {
            let p1 = 1.0 - (-m).exp();
            let p2 = 1.0 - (-m).exp() * (1.0 + m);
            for (n, p) in [(1, p1), (2, p2)] {
                let got = poisson_tail_surprise(n, m as f32) as f64;
                assert!(
                    (got - -p.ln()).abs() < 1e-3 * (1.0 + -p.ln()),
                    "n={n} m={m}: {got}"
                );
            }
        }
        assert_eq!(poisson_tail_surprise(0, 0.5), 0.0);
        // Far in the tail it stays finite and keeps growing.
        let (a, b) = (
            poisson_tail_surprise(20, 0.01),
            poisson_tail_surprise(40, 0.01),
        );
        assert!(
            a.is_finite() && b.is_finite() && b > a && a > 100.0,
            "{a} {b}"
        );
    }

    /// A ward user's second lookup outside their department's records in a few minutes is
    /// judged by the habit they had before the run (the first lookup does not make the second
    /// look routine), and the run itself is improbable for them; for a radiologist, whose
    /// work is such lookups, it is not.
    #[test]
    fn a_run_of_unrelated_lookups_is_judged_against_the_habit_before_it() {
        let mut c = Context::new(chrono_tz::UTC);
        let mut t = monday(8);
        for i in 0..30 {
            for _ in 0..5 {
                t += 60_000;
                c.observe(&in_dept(
                    "Practitioner/s",
                    "Surgery",
                    &format!("Patient/s{i}"),
                    t,
                ));
            }
        }
        for i in 0..100 {
            t += 60_000;
            c.observe(&in_dept(
                "Practitioner/n",
                "Cardiology",
                &format!("Patient/c{}", i % 10),
                t,
            ));
            t += 60_000;
            let p = format!("Patient/s{}", i % 30);
            c.observe(&in_dept(
                &format!("Practitioner/r{}", i % 2),
                "Radiology",
                &p,
                t,
            ));
        }
        let (rarity, run) = (
            feature("unrelated_patient_rarity"),
            feature("unrelated_run_surprise_1h"),
        );
        t += 60_000;
        let (first, f1) = c.observe(&in_dept("Practitioner/n", "Cardiology", "Patient/s1", t));
        t += 60_000;
        let (second, f2) = c.observe(&in_dept("Practitioner/n", "Cardiology", "Patient/s2", t));
        assert!(first[rarity] > 4.0, "{first:?}");
        assert_eq!(second[rarity], first[rarity]);
        assert_eq!((first[run], f1.unrelated_1h, f2.unrelated_1h), (0.0, 1, 2));
        assert!(
            second[run] > 4.0 && f2.unrelated_expected_1h < 0.2,
            "{} {f2:?}",
            second[run]
        );
        t += 60_000;
        let (x, _) = c.observe(&in_dept("Practitioner/r0", "Radiology", "Patient/s3", t));
        assert!(x[rarity] < 1.5 && x[run] < 1.0, "{x:?}");
        // The same record opened again is not a run: no run surprise, and the next new
        // record is the third of the run, not the fourth.
        t += 60_000;
        let (again, fa) = c.observe(&in_dept("Practitioner/n", "Cardiology", "Patient/s2", t));
        assert_eq!((again[run], fa.unrelated_1h), (0.0, 0), "{fa:?}");
        t += 60_000;
        let (_, f3) = c.observe(&in_dept("Practitioner/n", "Cardiology", "Patient/s4", t));
        assert_eq!(f3.unrelated_1h, 3);
    }

    /// A ward user's run of lookups of long records of a department theirs seldom goes to
    /// is a stray run from its second record; the same run where their department's
    /// lookups usually go (a consult pattern), or one lookup alone, is not.
    #[test]
    fn a_run_where_the_department_seldom_goes_is_a_stray_run() {
        const SURGEON: (&str, &str) = ("Practitioner/s", "Surgery");
        const ONCOLOGIST: (&str, &str) = ("Practitioner/o", "Oncology");
        const NURSE: (&str, &str) = ("Practitioner/n", "Cardiology");
        const CONSULTANT: (&str, &str) = ("Practitioner/k", "Cardiology");
        const COLLEAGUE: (&str, &str) = ("Practitioner/m", "Cardiology");
        const HALF_MINUTE: i64 = 30_000;
        let mut c = Context::new(chrono_tz::UTC);
        let mut t = monday(7);
        // The next event of `who` (user, department), `after` ms after the last.
        let mut at = |c: &mut Context, after: i64, who: (&str, &str), patient: &str| {
            t += after;
            c.observe(&in_dept(who.0, who.1, patient, t))
        };
        // Long records of Surgery's and Oncology's patients.
        for _ in 0..60 {
            for i in 0..4 {
                at(&mut c, HALF_MINUTE, SURGEON, &format!("Patient/s{i}"));
            }
        }
        for _ in 0..60 {
            for i in 0..20 {
                at(&mut c, HALF_MINUTE, ONCOLOGIST, &format!("Patient/o{i}"));
            }
        }
        // Cardiology's own work, and its pattern: one look at each of Oncology's patients.
        for i in 0..200 {
            at(&mut c, HALF_MINUTE, NURSE, &format!("Patient/c{}", i % 10));
        }
        for i in 0..12 {
            at(&mut c, HALF_MINUTE, CONSULTANT, &format!("Patient/o{i}"));
        }
        // An hour later, a lookup of two of Surgery's patients.
        let (_, one) = at(&mut c, HOUR, NURSE, "Patient/s1");
        let (_, two) = at(&mut c, HALF_MINUTE, NURSE, "Patient/s2");
        assert_eq!((one.unrelated_1h, one.stray_run), (1, false), "{one:?}");
        assert_eq!((two.unrelated_1h, two.stray_run), (2, true), "{two:?}");
        assert_eq!(two.home_dept.as_deref(), Some("Surgery"));
        // The pattern's way: Oncology's records, two in a row, are no stray run.
        let (_, a) = at(&mut c, HALF_MINUTE, COLLEAGUE, "Patient/c1");
        assert!(!a.stray_run);
        for i in 0..100 {
            at(
                &mut c,
                HALF_MINUTE,
                COLLEAGUE,
                &format!("Patient/c{}", i % 10),
            );
        }
        at(&mut c, HOUR, COLLEAGUE, "Patient/o15");
        let (_, b) = at(&mut c, HALF_MINUTE, COLLEAGUE, "Patient/o16");
        assert!(
            b.unrelated_expected_1h < 0.2,
            "as improbable for this user: {b:?}"
        );
        assert_eq!((b.unrelated_1h, b.stray_run), (2, false), "{b:?}");
    }

    /// A burst of a hundred patients in eight minutes is judged against the user's usual
    /// high hour before it: the envelope rises with time at a level, not with the burst's
    /// events, so the burst does not become its own usual. Work at a steady pace still
    /// lifts it.
    #[test]
    fn a_burst_does_not_make_itself_the_users_usual() {
        let mut c = Context::new(chrono_tz::UTC);
        let mut t = monday(6);
        // Ten hours at ten patients an hour.
        for i in 0..100 {
            t += 360_000;
            c.observe(&rec("Practitioner/1", &format!("Patient/{}", i % 40), t));
        }
        let mut last = None;
        for i in 0..100 {
            t += 5_000;
            last = Some(c.observe(&rec("Practitioner/1", &format!("Patient/b{i}"), t)));
        }
        let (x, f) = last.take().unwrap();
        assert!(f.d1h > 100, "{f:?}");
        assert!(f.usual_d1h < 40.0, "usual {}", f.usual_d1h);
        assert!(x[feature("patients_1h_vs_usual")] > 2f32.ln(), "{x:?}");
        // The same hundred at one a minute: the envelope follows.
        let mut c = Context::new(chrono_tz::UTC);
        let mut t = monday(6);
        for i in 0..100 {
            t += 60_000;
            last = Some(c.observe(&rec("Practitioner/1", &format!("Patient/s{i}"), t)));
        }
        let (_, f) = last.unwrap();
        assert!(
            f.usual_d1h > 40.0,
            "usual {} at {} an hour",
            f.usual_d1h,
            f.d1h
        );
    }

    /// A user whose department is unknown has no relationship to measure: neither the
    /// features nor the patient's crowd count them as an unrelated visitor.
    #[test]
    fn a_user_without_a_department_is_not_an_unrelated_visitor() {
        let mut c = Context::new(chrono_tz::UTC);
        let mut t = monday(10);
        for _ in 0..40 {
            t += 60_000;
            c.observe(&in_dept("Practitioner/s1", "Surgery", "Patient/1", t));
        }
        let unrelated = feature("unrelated_patient_rarity");
        let mut r = rec("Practitioner/x", "Patient/1", t + 60_000);
        r.department = None;
        let (x, f) = c.observe(&r);
        assert_eq!((x[unrelated], f.unrelated_users_24h), (0.0, 0));
        let (x, f) = c.observe(&in_dept(
            "Practitioner/c1",
            "Cardiology",
            "Patient/1",
            t + 120_000,
        ));
        assert!(x[unrelated] > 0.0);
        assert_eq!(f.unrelated_users_24h, 1);
    }

    /// Departments that come to a record outside their usual pattern are counted per day:
    /// a usual consultant is not, three stray departments are, and the count forgets them
    /// after 24 hours.
    #[test]
    fn stray_departments_are_counted_per_day() {
        let mut c = Context::new(chrono_tz::UTC);
        let mut t = monday(8);
        let mut at = |user: &str, dept: &str, patient: &str| {
            t += 60_000;
            in_dept(user, dept, patient, t)
        };
        // Surgery's own patients; Cardiology consults on them, Neurology, Oncology and
        // Pediatrics look up only their own patients' neighbours in Neurology.
        for i in 0..30 {
            c.observe(&at("Practitioner/s1", "Surgery", &format!("Patient/s{i}")));
            c.observe(&at(
                "Practitioner/n1",
                "Neurology",
                &format!("Patient/n{i}"),
            ));
        }
        for i in 0..10 {
            c.observe(&at(
                "Practitioner/c1",
                "Cardiology",
                &format!("Patient/s{i}"),
            ));
            for d in ["Oncology", "Pediatrics", "Orthopedics"] {
                c.observe(&at(
                    &format!("Practitioner/{d}"),
                    d,
                    &format!("Patient/n{i}"),
                ));
            }
        }
        let i = feature("unexplained_depts_24h");
        let (x, f) = c.observe(&at("Practitioner/c2", "Cardiology", "Patient/s20"));
        assert_eq!((x[i], f.unexplained_depts_24h), (0.0, 0), "a usual consult");
        let mut last = 0;
        for d in ["Oncology", "Pediatrics", "Orthopedics"] {
            let (_, f) = c.observe(&at(&format!("Practitioner/{d}-2"), d, "Patient/s20"));
            last = f.unexplained_depts_24h;
        }
        assert_eq!(last, 3);
        // A second stray user from a department already counted adds no department.
        let (x, f) = c.observe(&at("Practitioner/Oncology-3", "Oncology", "Patient/s20"));
        assert_eq!(f.unexplained_depts_24h, 3);
        assert!((x[i] - 4f32.ln()).abs() < 1e-6);
        // A day later the record's care goes on, and yesterday's strays are forgotten.
        let mut r = at("Practitioner/s1", "Surgery", "Patient/s20");
        r.recorded += chrono::Duration::hours(25);
        let (_, f) = c.observe(&r);
        assert_eq!(f.unexplained_depts_24h, 0);
    }

    #[test]
    fn failed_logins_are_windowed() {
        let mut c = Context::new(chrono_tz::UTC);
        let t0 = monday(10);
        for i in 0..5 {
            let mut r = rec("Practitioner/1", "", t0 + i * 1000);
            r.patient = None;
            r.interaction = Interaction::Login;
            r.outcome = 4;
            c.observe(&r);
        }
        let mut r = rec("Practitioner/1", "", t0 + 10_000);
        r.patient = None;
        r.interaction = Interaction::Login;
        let (_, f) = c.observe(&r);
        assert_eq!(f.failed_15m, 5);
        // One mistyped password is routine; the second failure in the window is evidence.
        let mut c = Context::new(chrono_tz::UTC);
        let mut r = rec("Practitioner/2", "", t0);
        r.patient = None;
        r.interaction = Interaction::Login;
        r.outcome = 4;
        let (x, f) = c.observe(&r);
        assert_eq!((f.failed_15m, x[feature("failed_logins_15m")]), (1, 0.0));
        assert_eq!(
            x[feature("failed_requests_surprise_1h")],
            0.0,
            "a login is not a request"
        );
        r.recorded += chrono::Duration::seconds(5);
        let (x, f) = c.observe(&r);
        assert_eq!(f.failed_15m, 2);
        assert!(x[feature("failed_logins_15m")] > 0.0);
        let (_, f) = c.observe(&rec("Practitioner/1", "Patient/1", t0 + FAIL_WINDOW * 2));
        assert_eq!(f.failed_15m, 0);
    }

    /// A refused request is judged against how often the user's requests are refused: a
    /// routine 404 where they are common weighs little, the same 404 from a user whose
    /// requests never fail weighs more, and a run of them (probing ids) weighs most.
    #[test]
    fn refused_requests_are_judged_against_the_users_failure_rate() {
        let t0 = monday(10);
        let warm = |fail_every: i64| {
            let mut c = Context::new(chrono_tz::UTC);
            for i in 0..400 {
                let mut r = rec(
                    "Practitioner/1",
                    &format!("Patient/{}", i % 50),
                    t0 + i * 60_000,
                );
                if fail_every > 0 && i % fail_every == 0 {
                    r.outcome = 4;
                }
                c.observe(&r);
            }
            c
        };
        let failed = |c: &mut Context, k: i64| {
            let mut r = rec(
                "Practitioner/1",
                "Patient/999",
                t0 + 400 * 60_000 + k * 1000,
            );
            r.outcome = 4;
            let (x, f) = c.observe(&r);
            (x[feature("failed_requests_surprise_1h")], f)
        };
        let (routine, f) = failed(&mut warm(10), 0);
        assert_eq!(
            f.failed_requests_1h,
            1 + 6,
            "the hour's earlier refusals count"
        );
        let mut never = warm(0);
        let (first, f) = failed(&mut never, 0);
        assert_eq!((first, f.failed_requests_1h), (0.0, 1), "the first is free");
        let (second, _) = failed(&mut never, 1);
        let (third, _) = failed(&mut never, 2);
        assert!(
            routine < third && second <= third,
            "routine {routine} vs a never-failing user's second {second} and third {third}"
        );
        let mut run = third;
        for k in 3..10 {
            let (x, _) = failed(&mut never, k);
            assert!(x >= run, "a run only grows: {x} after {run}");
            run = x;
        }
        assert!(run > 3.0 * third, "ten in a row {run} vs three {third}");
        // A successful request carries nothing.
        let (x, _) = never.observe(&rec("Practitioner/1", "Patient/1", t0 + 401 * 60_000));
        assert_eq!(x[feature("failed_requests_surprise_1h")], 0.0);
    }

    /// A network or client new to the whole site stands out even where users' own
    /// addresses churn; the site needs history first.
    #[test]
    fn sources_new_to_the_site_are_novel_where_user_addresses_churn() {
        let t0 = monday(9);
        let mut c = Context::new(chrono_tz::UTC);
        let at = |c: &mut Context, i: i64, ip: &str, app: &str| {
            let mut r = rec(
                &format!("Practitioner/{}", i % 40),
                "Patient/1",
                t0 + i * 30_000,
            );
            r.source_ip = Some(ip.into());
            r.client_app = Some(app.into());
            let (x, f) = c.observe(&r);
            (
                x[feature("new_network_site")],
                x[feature("new_client_app_site")],
                f,
            )
        };
        // Before the site has history, nothing is new to it.
        assert_eq!(at(&mut c, 0, "10.1.2.3", "Device/ehr").0, 0.0);
        // DHCP: every event from another address of the site's few networks.
        for i in 1..1200 {
            at(
                &mut c,
                i,
                &format!("10.1.{}.{}", i % 4, i % 250),
                "Device/ehr",
            );
        }
        let (net, app, f) = at(&mut c, 1200, "10.1.3.77", "Device/ehr");
        assert!(net < 0.01 && app < 0.01, "{net} {app}");
        assert_eq!(
            f.ip_uses.map(|n| n > 0),
            Some(false),
            "new to the user, though"
        );
        assert!(!f.network_new_to_site);
        let (net, app, f) = at(&mut c, 1201, "203.0.113.9", "Device/unknown-client");
        assert_eq!((net, app), (1.0, 1.0));
        assert_eq!((f.network_site_uses, f.app_site_uses), (Some(0), Some(0)));
        assert!(f.network_new_to_site, "the network's first event");
        let (net, _, f) = at(&mut c, 1201, "203.0.113.10", "Device/unknown-client");
        assert!(net < 1.0 && !f.network_new_to_site, "its second");
        // A failed login is not folded in as work from the network: it is not its first
        // event, and the access that follows it is.
        let mut login = rec("Practitioner/3", "", t0 + 1202 * 30_000);
        (login.patient, login.interaction, login.outcome) = (None, Interaction::Login, 4);
        login.source_ip = Some("198.51.100.7".into());
        assert!(!c.observe(&login).1.network_new_to_site, "a failed login");
        let (net, _, f) = at(&mut c, 1203, "198.51.100.8", "Device/ehr");
        assert!(net == 1.0 && f.network_new_to_site, "after a failed login");
        // IPv6 by /48; host names by domain.
        at(&mut c, 1202, "2001:db8:85a3::1", "Device/ehr");
        assert!(at(&mut c, 1203, "2001:db8:85a3:1::2", "Device/ehr").0 < 1.0);
        at(&mut c, 1204, "ws1.ward.example.org", "Device/ehr");
        assert!(at(&mut c, 1205, "ws2.ward.example.org", "Device/ehr").0 < 1.0);
    }

    /// A department's first access from a network that is another department's own is
    /// foreign (`Facts::foreign_network`); its next is not, nor one from a pool every
    /// department shares, from a network with little history, by a department with little
    /// history, or a failed login (which is not folded in either).
    #[test]
    fn another_departments_network_is_foreign_to_a_department_never_on_it() {
        let t0 = monday(9);
        let mut c = Context::new(chrono_tz::UTC);
        let mut i = 0i64;
        let mut at = |c: &mut Context, user: &str, dept: &str, ip: &str, failed: bool| {
            i += 1;
            let mut r = rec(user, "Patient/1", t0 + i * 30_000);
            r.department = Some(dept.into());
            r.source_ip = Some(ip.into());
            if failed {
                (r.patient, r.interaction, r.outcome) = (None, Interaction::Login, 4);
            }
            c.observe(&r).1.foreign_network
        };
        // Each department works from its own network; all three from the VPN's pool.
        let depts = [("Emergency", 12), ("Surgery", 16), ("Neurology", 15)];
        for n in 0..1500 {
            let (dept, net) = depts[n % 3];
            let user = format!("Practitioner/{dept}{}", n % 4);
            let ip = match n % 5 {
                0 => format!("172.16.0.{}", n % 200),
                _ => format!("10.{net}.0.{}", n % 200),
            };
            assert_eq!(at(&mut c, &user, dept, &ip, false), None, "event {n}");
        }
        // Radiology is new: little history of its own yet.
        for n in 0..100 {
            at(
                &mut c,
                "Practitioner/r",
                "Radiology",
                &format!("10.19.0.{n}"),
                false,
            );
        }
        assert_eq!(
            at(&mut c, "Practitioner/r", "Radiology", "10.12.0.9", false),
            None
        );
        // Surgery's first access from Emergency's network, and its second.
        let foreign = at(
            &mut c,
            "Practitioner/Surgery1",
            "Surgery",
            "10.12.0.77",
            false,
        )
        .expect("Emergency's network, Surgery never on it");
        assert_eq!(
            (foreign.home.as_str(), foreign.from.as_str()),
            ("Emergency", "Surgery")
        );
        // 400 of Emergency's events, and Radiology's one.
        assert_eq!(foreign.events, 401);
        assert!((foreign.home_share - 400.0 / 401.0).abs() < 1e-6);
        // Its second; the pool, which has no home; Radiology's network, too little history.
        for ip in ["10.12.0.78", "172.16.0.5", "10.19.0.5"] {
            let user = "Practitioner/Surgery2";
            assert_eq!(at(&mut c, user, "Surgery", ip, false), None, "{ip}");
        }
        // A failed login is not the department's first access, and the access after it is.
        assert_eq!(
            at(
                &mut c,
                "Practitioner/Neurology1",
                "Neurology",
                "10.16.0.1",
                true
            ),
            None
        );
        let foreign = at(
            &mut c,
            "Practitioner/Neurology1",
            "Neurology",
            "10.16.0.2",
            false,
        );
        assert_eq!(foreign.map(|f| f.home), Some("Surgery".to_string()));
    }

    /// A network counts at most `MAX_NETWORK_DEPTS` departments; each event of one past
    /// them is counted as not counted (`Forgotten::network_depts`), never silently dropped.
    #[test]
    fn a_department_past_the_networks_bound_is_counted_as_uncounted() {
        let t0 = monday(9);
        let mut c = Context::new(chrono_tz::UTC);
        let at = |c: &mut Context, i: i64, dept: usize| {
            let mut r = rec(&format!("Practitioner/{dept}"), "Patient/1", t0 + i * 1_000);
            r.department = Some(format!("Dept{dept}"));
            r.source_ip = Some("10.1.0.1".into());
            c.observe(&r);
        };
        for dept in 0..MAX_NETWORK_DEPTS {
            at(&mut c, dept as i64, dept);
        }
        assert_eq!(c.take_forgotten().network_depts, 0, "the bound is reached");
        at(&mut c, 100, MAX_NETWORK_DEPTS);
        at(&mut c, 101, MAX_NETWORK_DEPTS + 1);
        at(&mut c, 102, 0);
        assert_eq!(c.take_forgotten().network_depts, 2, "two past it");
        assert_eq!(c.take_forgotten().network_depts, 0, "taken once");
    }

    /// Whether `address` is outside a site's private networks (`network_of`).
    fn is_outside(address: &str) -> bool {
        network_of(address).1
    }

    /// A user's first access from outside the site's private networks is said
    /// (`Facts::first_outside`); their next is not, nor a failed login (which is not folded
    /// in), a user without history, one from a public network the site works from, or
    /// anyone's once outside access is routine at the site.
    #[test]
    fn a_users_first_access_from_outside_is_said_where_that_is_rare() {
        for outside in ["203.0.113.9", "8.8.8.8", "2001:db8::1", "::ffff:8.8.4.4"] {
            assert!(is_outside(outside), "{outside}");
        }
        for inside in [
            "10.1.2.3",
            "172.16.5.4",
            "192.168.1.1",
            "100.64.0.1",
            "127.0.0.1",
            "169.254.1.1",
            "0.0.0.0",
            "fd00::1",
            "fe80::1",
            "::1",
            "::ffff:10.0.0.1",
            "ws1.ward.example.org",
        ] {
            assert!(!is_outside(inside), "{inside}");
        }
        let t0 = monday(9);
        let mut c = Context::new(chrono_tz::UTC);
        let mut i = 0i64;
        let mut at = |c: &mut Context, user: &str, ip: &str, failed: bool| {
            i += 1;
            let mut r = rec(user, "Patient/1", t0 + i * 30_000);
            r.source_ip = Some(ip.into());
            if failed {
                (r.patient, r.interaction, r.outcome) = (None, Interaction::Login, 4);
            }
            c.observe(&r).1.first_outside
        };
        for n in 0..1200 {
            let user = format!("Practitioner/{}", n % 40);
            assert_eq!(
                at(&mut c, &user, &format!("10.1.{}.{}", n % 4, n % 250), false),
                None
            );
        }
        assert_eq!(
            at(&mut c, "Practitioner/3", "203.0.113.9", false),
            Some(0.0)
        );
        assert_eq!(
            at(&mut c, "Practitioner/3", "198.51.100.7", false),
            None,
            "the next"
        );
        assert_eq!(
            at(&mut c, "Practitioner/4", "198.51.100.8", true),
            None,
            "failed"
        );
        let share = at(&mut c, "Practitioner/4", "198.51.100.8", false).expect("after it");
        assert!(share > 0.0 && share < 0.01, "{share}");
        assert_eq!(
            at(&mut c, "Practitioner/new", "198.51.100.9", false),
            None,
            "no history"
        );
        // A public network one in a thousand of the site's events come from is its own.
        let wing = |n: u32| format!("2001:db8:aa::{n}");
        assert!(at(&mut c, "Practitioner/7", &wing(1), false).is_some());
        assert!(
            at(&mut c, "Practitioner/8", &wing(2), false).is_some(),
            "1 of 1,206"
        );
        assert_eq!(
            at(&mut c, "Practitioner/9", &wing(3), false),
            None,
            "2 of 1,207"
        );
        // Once a percent of the site's events come from outside, it is routine there.
        for _ in 0..12 {
            at(&mut c, "Practitioner/5", "198.51.100.10", false);
        }
        assert_eq!(
            at(&mut c, "Practitioner/6", "198.51.100.11", false),
            None,
            "routine"
        );
    }

    /// The one-pass hash count agrees with sorting and de-duplicating each window.
    #[test]
    fn distinct_counts_match_a_sort_based_count() {
        let mut rng = crate::rng::Rng::new(7);
        for round in 0..300 {
            let n = (rng.f64() * 300.0) as usize;
            let mut t = 0i64;
            let mut list = VecDeque::new();
            for _ in 0..n {
                t += (rng.f64() * 20_000.0) as i64;
                list.push_back((
                    t,
                    ((rng.f64() * 40.0) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                ));
            }
            let (short, long) = (t - 600_000, t - 3_600_000);
            let key = ((round % 40) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let window = |since: i64| -> Vec<u64> {
                list.iter()
                    .rev()
                    .take_while(|(ts, _)| *ts >= since)
                    .map(|e| e.1)
                    .collect()
            };
            let count = |mut v: Vec<u64>| {
                v.sort_unstable();
                v.dedup();
                v.len() as u32
            };
            let d = distinct2(&list, short, long, Some(key));
            assert_eq!(d.short, count(window(short)), "round {round}");
            assert_eq!(d.long, count(window(long)), "round {round}");
            assert_eq!(d.entries_long as usize, window(long).len(), "round {round}");
            assert_eq!(d.probe_in_short, window(short).contains(&key));
            assert_eq!(d.probe_in_long, window(long).contains(&key));
        }
    }

    #[test]
    fn usual_hours_is_the_shortest_band_with_most_activity() {
        let mut h = [0f32; 24];
        for v in h.iter_mut().take(17).skip(8) {
            *v = 10.0;
        }
        h[3] = 1.0;
        assert_eq!(usual_hours(&h), Some((8, 16)));
        // Night shift across midnight.
        let mut n = [0f32; 24];
        for i in [22, 23, 0, 1, 2, 3, 4, 5] {
            n[i] = 20.0;
        }
        assert_eq!(usual_hours(&n), Some((22, 5)));
        assert_eq!(usual_hours(&[1.0; 24]), None);
    }

    fn feature(name: &str) -> usize {
        FEATURE_NAMES.iter().position(|f| *f == name).unwrap()
    }

    /// A day worker's shift running late keeps its usual session start; a session opened
    /// at 02:00 carries its unusual start on every event, not just the first.
    /// A user who worked 08:00–15:30 (an access every half hour) for 20 days from a
    /// Monday, and the clock (day, hour, minute) the tests go on with.
    fn day_worker() -> (Context, impl Fn(i64, i64, i64) -> i64) {
        let mut c = Context::new(chrono_tz::UTC);
        let day0 = monday(0);
        let at = move |d: i64, h: i64, m: i64| day0 + d * DAY + h * HOUR + m * 60_000;
        for d in 0..20 {
            for k in 0..16 {
                c.observe(&rec(
                    "Practitioner/1",
                    &format!("Patient/{k}"),
                    at(d, 8, k * 30),
                ));
            }
        }
        (c, at)
    }

    #[test]
    fn session_start_hour_separates_a_late_shift_from_a_night_session() {
        let (mut c, at) = day_worker();
        let j = feature("session_start_rarity");
        // Day 20: the shift runs to 18:30, in one session.
        let mut late = 0f32;
        for k in 0..21 {
            let (x, _) = c.observe(&rec("Practitioner/1", "Patient/1", at(20, 8, k * 30)));
            late = late.max(x[j]);
        }
        // Day 21: a session at 02:00.
        let night: Vec<f32> = (0..4)
            .map(|k| {
                c.observe(&rec("Practitioner/1", "Patient/2", at(21, 2, k * 5)))
                    .0[j]
            })
            .collect();
        assert!(late < 0.5, "a late shift starts as usual: {late}");
        assert!(night.iter().all(|v| *v > 3.0), "{night:?}");
        // None of the 21 earlier sessions began at 02:00: the start is unprecedented (an
        // after-hours alert there corroborates itself); the late shift's is not.
        assert!(
            night.iter().all(|v| *v >= unprecedented_start()) && late < unprecedented_start(),
            "{night:?} {late} against {}",
            unprecedented_start()
        );
        assert!(
            night.iter().all(|v| (v - night[0]).abs() < 1e-6),
            "{night:?}"
        );
    }

    #[test]
    fn a_user_called_in_at_night_now_and_then_is_less_strange_at_night() {
        // Two day workers; one of them has been called in at night three times, a few
        // reads each: a sliver of their activity, but 3 of their 23 sessions.
        let (mut c, at) = day_worker();
        let calls = [(3, 1), (9, 3), (15, 0)];
        for d in 0..20 {
            if let Some((_, h)) = calls.iter().find(|(day, _)| *day == d) {
                for k in 0..3 {
                    c.observe(&rec("Practitioner/2", "Patient/9", at(d, *h, k * 5)));
                }
            }
            for k in 0..16 {
                c.observe(&rec(
                    "Practitioner/2",
                    &format!("Patient/{k}"),
                    at(d, 8, k * 30),
                ));
            }
        }
        let (hour, start) = (feature("hour_rarity_user"), feature("session_start_rarity"));
        let night = |c: &mut Context, who: &str| {
            let (first, _) = c.observe(&rec(who, "Patient/3", at(21, 2, 0)));
            let (next, f) = c.observe(&rec(who, "Patient/4", at(21, 2, 10)));
            (first[start], next[hour], f.odd_starts)
        };
        let (never_start, never_hour, never_odd) = night(&mut c, "Practitioner/1");
        let (called_start, called_hour, called_odd) = night(&mut c, "Practitioner/2");
        assert_eq!((never_odd, called_odd), (None, Some(3)));
        // -ln(3/23) ≈ 2.0, against ≈ 3.8 and ≈ 5.9 for someone never there at night.
        assert!(
            called_start < 2.2 && never_start > 3.5,
            "{called_start} vs {never_start}"
        );
        // Called in before: not an unprecedented start; never there at night: one.
        assert!(called_start < unprecedented_start() && never_start >= unprecedented_start());
        assert!(
            called_hour < 2.2 && never_hour > 5.0,
            "{called_hour} vs {never_hour}"
        );
        // Daytime is judged as before.
        let (x, f) = c.observe(&rec("Practitioner/2", "Patient/5", at(22, 9, 0)));
        assert!(x[hour] < 2.5 && f.odd_starts.is_none(), "{}", x[hour]);
    }

    #[test]
    fn a_running_session_is_judged_at_its_least_unusual_recent_hour() {
        // Usual hours 08:00–16:59.
        let r = |h: u32| if (8..17).contains(&h) { 1.0 } else { 6.0 };
        // Two hours late in a session begun at 07:00: judged at 16:00.
        assert_eq!(judged_hour(18, 7, true, r), 16);
        // Four hours late: only three hours back, all of them unusual.
        assert_eq!(judged_hour(20, 7, true, r), 20);
        // A session begun at 18:00 has no usual hour behind it.
        assert_eq!(judged_hour(19, 18, false, r), 19);
        // Never before the session's start; in its first hour, the next one too.
        assert_eq!(judged_hour(17, 17, false, r), 17);
        assert_eq!(judged_hour(7, 7, true, r), 8);
        assert_eq!(judged_hour(2, 2, true, r), 2);
        // Only where sessions often begin: a login at 04:20 does not lean on 05:00.
        let early = |h: u32| if (5..14).contains(&h) { 1.0 } else { 6.0 };
        assert_eq!(judged_hour(4, 4, false, early), 4);
        assert_eq!(judged_hour(4, 4, true, early), 5);
        // A late shift past midnight: 14:00–22:59 usual.
        let late = |h: u32| if (14..23).contains(&h) { 1.0 } else { 6.0 };
        assert_eq!(judged_hour(1, 14, true, late), 22);
        // Equals keep the hour itself.
        assert_eq!(judged_hour(12, 8, true, r), 12);
        // The half hour before a session's start hour is its first hour: begun at 07:40,
        // the session began at 08:00, and leans on it where sessions often begin then.
        assert_eq!(judged_hour(7, 8, true, r), 8);
        assert_eq!(judged_hour(7, 8, false, r), 7);
    }

    /// A session begins at the hour nearest its first event: a day worker who starts at
    /// 08:00 and arrives at 07:50 has begun at their usual hour, and those minutes are
    /// judged as 08:00; arriving at 07:20, they begin at an hour they never have.
    #[test]
    fn a_session_begun_minutes_before_the_hour_begins_at_that_hour() {
        let (mut c, at) = day_worker();
        let (start, hour) = (feature("session_start_rarity"), feature("hour_rarity_user"));
        let (x, f) = c.observe(&rec("Practitioner/1", "Patient/1", at(20, 7, 50)));
        assert_eq!((f.session_start_hour, f.judged_hour), (8, Some(8)));
        assert!(x[start] < 1.0 && x[hour] < 2.5, "{} {}", x[start], x[hour]);
        let (x, f) = c.observe(&rec("Practitioner/1", "Patient/1", at(21, 7, 20)));
        assert_eq!((f.session_start_hour, f.judged_hour), (7, None));
        assert!(x[start] >= unprecedented_start() && x[hour] > 4.0);
    }

    #[test]
    fn a_shift_running_late_is_not_after_hours_but_a_session_begun_late_is() {
        let (mut c, at) = day_worker();
        let j = feature("hour_rarity_user");
        // Day 20: the shift runs on to 17:30, in one session.
        let mut late = (0f32, None);
        for k in 0..20 {
            let (x, f) = c.observe(&rec("Practitioner/1", "Patient/1", at(20, 8, k * 30)));
            late = (late.0.max(x[j]), f.judged_hour);
        }
        // Day 21: the shift ends at 15:30 as usual; back at 17:45, a new session.
        for k in 0..16 {
            c.observe(&rec("Practitioner/1", "Patient/1", at(21, 8, k * 30)));
        }
        let (fresh, f) = c.observe(&rec("Practitioner/1", "Patient/2", at(21, 17, 45)));
        assert!(
            late.0 < 2.5,
            "a late run is judged at its usual hours: {late:?}"
        );
        assert_eq!(late.1, Some(15), "{late:?}");
        assert!(
            fresh[j] > 4.0,
            "a session begun at 17:45 is not: {}",
            fresh[j]
        );
        assert_eq!(f.judged_hour, None);
    }

    /// Dormancy is measured against the user's own usual breaks.
    #[test]
    fn dormancy_is_relative_to_usual_breaks() {
        let mut c = Context::new(chrono_tz::UTC);
        let day0 = monday(0);
        let j = feature("dormancy_vs_usual_break");
        // Works two days, then three off, for six weeks.
        let mut d = 0;
        let mut last = 0f32;
        for _ in 0..8 {
            for i in 0..2 {
                let x = c
                    .observe(&rec(
                        "Practitioner/1",
                        "Patient/1",
                        day0 + d * DAY + 9 * HOUR,
                    ))
                    .0;
                if i == 0 {
                    // The first day back after the break.
                    last = x[j];
                }
                c.observe(&rec(
                    "Practitioner/1",
                    "Patient/1",
                    day0 + d * DAY + 10 * HOUR,
                ));
                d += 1;
            }
            d += 3;
        }
        assert!(last < 0.05, "a routine three-day break: {last}");
        let (x, f) = c.observe(&rec(
            "Practitioner/1",
            "Patient/1",
            day0 + (d + 30) * DAY + 9 * HOUR,
        ));
        assert!(
            x[j] > 1.5,
            "{} after {} days (usual {})",
            x[j],
            f.days_inactive,
            f.usual_break_days
        );
    }

    /// An account back from a month without activity carries the return into its later
    /// sessions while it does less than its usual work, and not once it is back at work,
    /// nor after `REVIVAL_DAYS`; a snapshot keeps it.
    #[test]
    fn an_account_back_from_dormancy_stays_suspect_until_it_is_back_at_work() {
        let j = feature("dormancy_vs_usual_break");
        let day0 = monday(0);
        // Ten working days of 20 events a day, one session each.
        let worked = |user: &str| {
            let mut c = Context::new(chrono_tz::UTC);
            for d in 0..10 {
                for i in 0..20 {
                    c.observe(&rec(
                        user,
                        "Patient/1",
                        day0 + d * DAY + 9 * HOUR + i * 60_000,
                    ));
                }
            }
            c
        };
        let back = day0 + 40 * DAY + 9 * HOUR;
        // A few looks on the day it comes back, a few the next day and the day after.
        let mut c = worked("Practitioner/1");
        let (x, f) = c.observe(&rec("Practitioner/1", "Patient/2", back));
        let returned = x[j];
        assert!(returned > 1.5 && f.revived.is_none(), "{returned} {f:?}");
        for i in 1..4 {
            c.observe(&rec("Practitioner/1", "Patient/3", back + i * 60_000));
        }
        let mut c = Context::from_bytes(&c.to_bytes(), chrono_tz::UTC).unwrap();
        for day in 1..=2 {
            let (x, f) = c.observe(&rec("Practitioner/1", "Patient/4", back + day * DAY));
            assert_eq!(x[j], returned, "day {day} after the return carries it");
            let rv = f.revived.expect("said");
            assert_eq!(rv.at_ms, back);
            assert!(
                rv.work > 39.0 && rv.work < 41.0,
                "two usual sessions: {rv:?}"
            );
            for i in 1..4 {
                c.observe(&rec(
                    "Practitioner/1",
                    "Patient/4",
                    back + day * DAY + i * 60_000,
                ));
            }
        }
        // Past REVIVAL_DAYS it is an account in use again.
        let late = back + (REVIVAL_DAYS + 1) * DAY;
        let (x, f) = c.observe(&rec("Practitioner/1", "Patient/5", late));
        assert!(x[j] < 0.05 && f.revived.is_none(), "{} {f:?}", x[j]);

        // Back from leave to a working day: the next day is an ordinary one.
        let mut c = worked("Practitioner/2");
        for i in 0..40 {
            c.observe(&rec("Practitioner/2", "Patient/1", back + i * 60_000));
        }
        let (x, f) = c.observe(&rec("Practitioner/2", "Patient/1", back + DAY));
        assert!(x[j] < 0.05 && f.revived.is_none(), "{} {f:?}", x[j]);
    }

    #[test]
    fn a_shared_rare_family_name_weighs_more_than_a_common_one() {
        let mut c = Context::new(chrono_tz::UTC);
        let t0 = monday(9);
        let j = feature("same_family_name_rarity");
        let named = |user: &str, user_name: &str, patient: &str, name: &str, t: i64| AuditRecord {
            user_display: Some(user_name.into()),
            patient_display: Some(name.into()),
            ..rec(user, patient, t)
        };
        // 200 patients: 40 of them Smith, the rest with names of their own.
        for i in 0..200 {
            let name = if i % 5 == 0 {
                "Smith, Bob".to_string()
            } else {
                format!("Name{i}, Eva")
            };
            c.observe(&named(
                "Practitioner/9",
                "Dr. Jo Other",
                &format!("Patient/{i}"),
                &name,
                t0 + i * 1000,
            ));
        }
        let (x, f) = c.observe(&named(
            "Practitioner/9",
            "Dr. Jo Other",
            "Patient/500",
            "Jones, Al",
            t0 + HOUR,
        ));
        assert!(!f.same_family_name);
        assert_eq!(x[j], 0.0, "no shared name");
        let (common, f) = c.observe(&named(
            "Practitioner/1",
            "Dr. Ann Smith",
            "Patient/501",
            "Smith, Al",
            t0 + HOUR,
        ));
        assert!(f.same_family_name);
        assert_eq!((f.name_patients, f.patients_seen), (40, 201));
        let (rare, f) = c.observe(&named(
            "Practitioner/2",
            "Vera Quist",
            "Patient/502",
            "Quist, Al",
            t0 + HOUR,
        ));
        assert_eq!((f.name_patients, f.patients_seen), (0, 202));
        // One patient in five is a Smith, one of 202 a Quist. No care context describes
        // these users, so neither is cut as routine (see the next test for that): the
        // rare name weighs more.
        assert!(
            rare[j] > common[j] + 3.0 && common[j] > 0.0,
            "rare {} against common {}",
            rare[j],
            common[j]
        );
        // A namesake whose record the user's department cares for (Cardiology opened every
        // one of these): explained by the care.
        let (x, f) = c.observe(&named(
            "Practitioner/1",
            "Dr. Ann Smith",
            "Patient/0",
            "Smith, Bob",
            t0 + HOUR,
        ));
        assert!(f.same_family_name);
        assert_eq!(x[j], 0.0);
        // A name counts once per patient, not per access.
        c.observe(&named(
            "Practitioner/3",
            "Dr. Jo Other",
            "Patient/502",
            "Quist, Al",
            t0 + HOUR + 1,
        ));
        let (_, f) = c.observe(&named(
            "Practitioner/2",
            "Vera Quist",
            "Patient/503",
            "Quist, Bo",
            t0 + HOUR + 2,
        ));
        assert_eq!(f.name_patients, 1);
    }

    /// A namesake is weighed by the user's exposure: the same rare name weighs less from a
    /// user who opens fifty new patients a day (pharmacy) than from one who opens five (a
    /// ward), by the chance of meeting it on a day.
    #[test]
    fn a_namesake_weighs_less_from_a_user_who_opens_many_patients_a_day() {
        use serde_json::json;
        let mut c = Context::new(chrono_tz::UTC);
        // The care context knows the two users (not Practitioner/3, below).
        c.set_care(Some(care_index(vec![
            json!({"resourceType": "Practitioner", "id": "1", "name": [{"family": "Quist", "given": ["Ann"]}]}),
            json!({"resourceType": "Practitioner", "id": "2", "name": [{"family": "Varga", "given": ["Bo"]}]}),
        ])));
        let t0 = monday(8);
        let j = feature("same_family_name_rarity");
        let named =
            |user: &str, user_name: &str, patient: String, name: String, t: i64| AuditRecord {
                user_display: Some(user_name.into()),
                patient_display: Some(name),
                ..rec(user, &patient, t)
            };
        // 5,000 patients with names of their own; then five days in which Practitioner/1
        // opens 50 new patients a day and Practitioner/2 opens 5 (and goes back to each).
        for k in 0..5000 {
            let t = t0 - DAY + k * 10_000;
            c.observe(&named(
                "Practitioner/9",
                "Jo Other",
                format!("Patient/{}", 10_000 + k),
                format!("Other{k}, Eva"),
                t,
            ));
        }
        for day in 0..5 {
            for i in 0..50 {
                let k = day * 50 + i;
                let t = t0 + day * DAY + i * 60_000;
                c.observe(&named(
                    "Practitioner/1",
                    "Ann Quist",
                    format!("Patient/{k}"),
                    format!("Name{k}, Eva"),
                    t,
                ));
            }
            for i in 0..5 {
                let k = 1000 + day * 5 + i;
                let t = t0 + day * DAY + i * 600_000;
                c.observe(&named(
                    "Practitioner/2",
                    "Bo Varga",
                    format!("Patient/{k}"),
                    format!("Name{k}, Eva"),
                    t,
                ));
                c.observe(&named(
                    "Practitioner/2",
                    "Bo Varga",
                    format!("Patient/{k}"),
                    format!("Name{k}, Eva"),
                    t + 60_000,
                ));
            }
        }
        let at = t0 + 5 * DAY + HOUR;
        let (busy, fb) = c.observe(&named(
            "Practitioner/1",
            "Ann Quist",
            "Patient/5000".into(),
            "Quist, Al".into(),
            at,
        ));
        let (quiet, fq) = c.observe(&named(
            "Practitioner/2",
            "Bo Varga",
            "Patient/5001".into(),
            "Varga, Al".into(),
            at,
        ));
        assert!(fb.same_family_name && fq.same_family_name);
        assert_eq!(
            (fb.new_patients_per_day, fq.new_patients_per_day),
            (50.0, 5.0)
        );
        let seen = fb.patients_seen as f32;
        assert_eq!(seen, 5275.0);
        assert!((busy[j] - namesake_surprise(1.0 / (seen + 1.0), 50.0, true)).abs() < 1e-4);
        // Once in 106 days for fifty a day, just past routine; once in 1,055 for five.
        assert!(
            quiet[j] > busy[j] + 2.0 && busy[j] < 0.1,
            "five a day {} against fifty {}",
            quiet[j],
            busy[j]
        );
        assert_eq!(namesake_days(0, 5275, 50.0), 106);
        assert_eq!(namesake_days(0, 5276, 5.0), 1056);
        // A new user is judged by today's count so far (at least one).
        let (_, f) = c.observe(&named(
            "Practitioner/3",
            "Cy Quist",
            "Patient/5002".into(),
            "Quist, Bo".into(),
            at,
        ));
        assert_eq!(f.new_patients_per_day, 1.0);
        // A user the care context does not know: no relative could show as one, and the
        // name counts without the routine cut.
        let (x, f) = c.observe(&named(
            "Practitioner/3",
            "Cy Quist",
            "Patient/5003".into(),
            "Quist, Di".into(),
            at + 1,
        ));
        let share = (f.name_patients as f32 + 1.0) / (f.patients_seen as f32 + 1.0);
        let per_day = f.new_patients_per_day;
        assert_eq!((f.name_patients, per_day), (2, 1.0), "{f:?}");
        assert!(
            (x[j] - namesake_surprise(share, per_day, false)).abs() < 1e-3,
            "{}",
            x[j]
        );
        assert!(x[j] > 4.0 && namesake_surprise(share, per_day, true) < x[j] - 4.0);
    }

    #[test]
    fn a_person_key_reads_a_name_in_either_order_and_needs_both_parts() {
        let k = person_key("Smith-Jones, Ann Marie");
        assert!(k.is_some());
        assert_eq!(person_key("Dr. Ann Smith-Jones"), k);
        assert_eq!(person_key("ann SMITH-JONES"), k);
        assert_ne!(person_key("Smith-Jones, Bea"), k);
        assert_eq!(person_key("Smith"), None);
        assert_eq!(person_key("Smith,"), None);
    }

    /// A first look at the record of a colleague from one's own department, a record the
    /// department has no history with, is evidence twice over where such lookups are rare;
    /// not for a user whose work goes to such records every day, nor for a user who looked
    /// before, nor where the department goes as routinely as anywhere (a laboratory's look
    /// at one more of the wards' patients).
    #[test]
    fn a_colleague_of_ones_own_department_counts_twice_only_off_routine_work() {
        let mut c = Context::new(chrono_tz::UTC);
        let t0 = monday(9);
        let named =
            |user: &str, name: &str, dept: &str, patient: &str, pname: &str, t: i64| AuditRecord {
                user_display: Some(name.into()),
                patient_display: Some(pname.into()),
                ..in_dept(user, dept, patient, t)
            };
        let nora = |user: &str, name: &str, dept: &str, t: i64| {
            named(user, name, dept, "Patient/12", "Dahl, Nora", t)
        };
        // Oncology's patients, Nora Dahl's record among them, and Cardiology's; Nora works
        // in the Laboratory.
        let ward = |c: &mut Context, (user, name): (&str, &str), dept: &str, from: usize, t| {
            for i in from..from + 20 {
                let p = format!("Patient/{i}");
                c.observe(&named(user, name, dept, &p, &format!("Doe{i}, Jan"), t));
            }
        };
        ward(&mut c, ("Practitioner/1", "Al Moe"), "Oncology", 100, t0);
        ward(&mut c, ("Practitioner/2", "Bo Ek"), "Cardiology", 200, t0);
        c.observe(&nora("Practitioner/1", "Al Moe", "Oncology", t0));
        c.observe(&named(
            "Practitioner/9",
            "Nora Dahl",
            "Laboratory",
            "Patient/99",
            "Ek, Bo",
            t0,
        ));
        // A laboratory colleague whose day is Cardiology's patients: unrelated lookups are
        // this user's routine.
        let per = ("Practitioner/8", "Per Lund");
        ward(&mut c, per, "Laboratory", 200, t0 + 60_000);
        let (_, f) = c.peek(&nora("Practitioner/8", "Per Lund", "Laboratory", t0 + HOUR));
        assert!(f.staff_record && f.watched && f.first_pair);
        assert!(!f.own_colleague, "this user's work goes to such records");
        // One who looked at it before, from a ward they stood in on: a look continued.
        c.observe(&nora("Practitioner/4", "Li Berg", "Oncology", t0 + HOUR));
        let (_, f) = c.peek(&nora("Practitioner/4", "Li Berg", "Laboratory", t0 + HOUR));
        assert!(f.staff_record && !f.first_pair && !f.own_colleague);
        // Another laboratory colleague, new to such lookups, and the Laboratory never goes
        // to Oncology's patients: evidence twice over.
        let (_, f) = c.observe(&nora("Practitioner/7", "Ada Rask", "Laboratory", t0 + HOUR));
        assert!(f.staff_record && f.own_colleague);
        // Once the Laboratory goes to Oncology's patients as routinely as anywhere, a look
        // at one more of them is its work, and makes its history.
        let kai = ("Practitioner/5", "Kai Holm");
        ward(&mut c, kai, "Laboratory", 100, t0 + 2 * HOUR);
        let (_, f) = c.observe(&nora(
            "Practitioner/6",
            "Ulf Borg",
            "Laboratory",
            t0 + 3 * HOUR,
        ));
        assert!(f.staff_record && f.first_pair && !f.own_colleague);
        let (_, f) = c.peek(&nora(
            "Practitioner/3",
            "Eva Holm",
            "Laboratory",
            t0 + 3 * HOUR,
        ));
        assert!(f.dept_share > Some(0.0), "Ulf's look counts");
    }

    /// Looks at a colleague's own record from the colleague's own department, made while
    /// the department has no working relationship with it, do not make one: the next
    /// colleague's look is as unrelated as the first (with or without the history replayed
    /// after a restart), and a record no one opened yet reads as unrelated to them. A
    /// write from the department is work on the record: its looks count from then on.
    #[test]
    fn colleagues_looks_without_work_make_no_history_for_the_next() {
        let j = feature("watched_record_unrelated");
        let t0 = monday(9);
        let named = |user: &str, name: &str, patient: &str, pname: &str, t: i64| AuditRecord {
            user_display: Some(name.into()),
            patient_display: Some(pname.into()),
            ..in_dept(user, "Surgery", patient, t)
        };
        let nora =
            |user: &str, name: &str, t: i64| named(user, name, "Patient/12", "Dahl, Nora", t);
        let mut history = vec![named(
            "Practitioner/9",
            "Nora Dahl",
            "Patient/99",
            "Ek, Bo",
            t0,
        )];
        // Surgery's own patients, opened by the four surgeons below.
        for (u, name) in [
            (1, "Al Moe"),
            (2, "Li Berg"),
            (3, "Ada Rask"),
            (4, "Ulf Borg"),
        ] {
            for i in 0..30 {
                history.push(named(
                    &format!("Practitioner/{u}"),
                    name,
                    &format!("Patient/{}", 100 + i),
                    &format!("Doe{i}, Jan"),
                    t0 + (u * 100 + i) as i64,
                ));
            }
        }
        let mut c = Context::new(chrono_tz::UTC);
        for r in &history {
            c.observe(r);
        }
        // No one has opened Nora's record: a surgeon's look at it is unrelated.
        let (x, f) = c.observe(&nora("Practitioner/1", "Al Moe", t0 + HOUR));
        assert!(f.own_colleague && f.patient_history == 0);
        assert_eq!(x[j], 2.0, "evidence twice over");
        let (x, f) = c.observe(&nora("Practitioner/1", "Al Moe", t0 + HOUR + 1000));
        assert!(!f.first_pair && f.dept_share == Some(0.0));
        assert_eq!(x[j], 1.0, "a look continued is as unrelated");
        // The next surgeon's look: Al's made no history of Surgery's with the record.
        let (x, f) = c.observe(&nora("Practitioner/2", "Li Berg", t0 + 2 * HOUR));
        assert!(f.own_colleague && f.patient_history == 2 && f.dept_share == Some(0.0));
        assert_eq!(x[j], 2.0);
        // The same after a restart that replays the history.
        let mut replayed = Context::new(chrono_tz::UTC);
        for r in &history {
            replayed.replay(r);
        }
        replayed.replay(&nora("Practitioner/1", "Al Moe", t0 + HOUR));
        replayed.replay(&nora("Practitioner/1", "Al Moe", t0 + HOUR + 1000));
        replayed.replay(&nora("Practitioner/2", "Li Berg", t0 + 2 * HOUR));
        let later = nora("Practitioner/3", "Ada Rask", t0 + 3 * HOUR);
        let ((x, f), (y, g)) = (c.peek(&later), replayed.peek(&later));
        assert!(f.own_colleague && g.own_colleague && x[j] == 2.0 && y[j] == 2.0);
        // Surgery writes to the record: it works on it now, and its looks count.
        c.observe(&AuditRecord {
            interaction: Interaction::Update,
            ..nora("Practitioner/4", "Ulf Borg", t0 + 3 * HOUR)
        });
        let (x, f) = c.peek(&later);
        assert!(f.staff_record && !f.own_colleague && f.dept_share > Some(0.0));
        assert_eq!(x[j], 0.0);
        // Then no work of Surgery's on it for a week, while Cardiology works on it (the
        // record is not quiet: `RECORD_QUIET_DAYS`): Surgery's share is history, not work
        // today.
        let at = |days: i64| t0 + 3 * HOUR + days * DAY + 1000;
        let cardio = |t: i64, interaction: Interaction| AuditRecord {
            interaction,
            ..AuditRecord {
                department: Some("Cardiology".into()),
                ..nora("Practitioner/7", "Ivo Lind", t)
            }
        };
        c.observe(&cardio(at(5), Interaction::Update));
        let (x, f) = c.peek(&nora("Practitioner/3", "Ada Rask", at(6)));
        assert!(
            !f.own_colleague
                && f.dept_idle_days.is_none()
                && f.record_quiet_days.is_none()
                && x[j] == 0.0,
            "{f:?}"
        );
        let back = nora("Practitioner/1", "Al Moe", at(8));
        let (x, f) = c.peek(&back);
        assert!(
            !f.first_pair && f.own_colleague && f.dept_share > Some(0.0),
            "{f:?}"
        );
        assert_eq!((f.dept_idle_days, x[j]), (Some(8), 2.0));
        // Such a look is held: no work, so the next colleague's finds Surgery as idle.
        c.observe(&back);
        let next = nora("Practitioner/3", "Ada Rask", at(9));
        let (x, f) = c.peek(&next);
        assert_eq!((f.dept_idle_days, x[j]), (Some(9), 2.0));
        // The same after a restart that replays it all.
        replayed.replay(&AuditRecord {
            interaction: Interaction::Update,
            ..nora("Practitioner/4", "Ulf Borg", t0 + 3 * HOUR)
        });
        replayed.replay(&cardio(at(5), Interaction::Update));
        replayed.replay(&back);
        assert_eq!(replayed.peek(&next).1.dept_idle_days, Some(9));
        // A write is work again.
        c.observe(&AuditRecord {
            interaction: Interaction::Update,
            ..nora("Practitioner/4", "Ulf Borg", at(9))
        });
        let (x, f) = c.peek(&next);
        assert!(!f.own_colleague && f.dept_idle_days.is_none() && x[j] == 0.0);
        // Another department that worked on the record and stopped is judged by its share,
        // as any department: its looks weeks apart are its work (radiology, a laboratory).
        c.observe(&cardio(at(9), Interaction::Update));
        let (x, f) = c.peek(&cardio(at(12), Interaction::Read));
        assert!(
            f.dept_share > Some(0.0) && f.dept_idle_days.is_none() && x[j] == 0.0,
            "{f:?}"
        );
        let (x, f) = c.peek(&cardio(at(17), Interaction::Read));
        assert!(
            f.dept_share > Some(0.0) && f.dept_idle_days.is_none() && x[j] == 0.0,
            "{f:?}"
        );
        assert!(
            c.staff_record_work[&h64("Patient/12")].len() == 1,
            "only Surgery's work is kept"
        );
    }

    /// A colleague's own record no one has worked on for `RECORD_QUIET_DAYS` is out of
    /// everyone's care: a look from the colleague's own department then is one without
    /// work to do, however recently that department worked on the record (evidence twice
    /// over), and is held apart, so the next colleague's look finds the record as quiet.
    /// Before that, or from another department, it is judged by its share; any
    /// department's work makes the record busy again; and a treatment relationship the
    /// care context states is work, however quiet the audit trail.
    #[test]
    fn a_colleagues_record_no_one_works_on_is_out_of_care() {
        let j = feature("watched_record_unrelated");
        let t0 = monday(9);
        let look = |user: &str, name: &str, dept: &str, t: i64| AuditRecord {
            user_display: Some(name.into()),
            patient_display: Some("Dahl, Nora".into()),
            ..in_dept(user, dept, "Patient/12", t)
        };
        let mut c = Context::new(chrono_tz::UTC);
        // Nora works in Surgery; four surgeons and a radiologist have their own patients.
        let mut history = vec![AuditRecord {
            user_display: Some("Nora Dahl".into()),
            patient_display: Some("Ek, Bo".into()),
            ..in_dept("Practitioner/9", "Surgery", "Patient/99", t0)
        }];
        for (u, name, dept) in [
            (1, "Al Moe", "Surgery"),
            (2, "Li Berg", "Surgery"),
            (3, "Ada Rask", "Surgery"),
            (5, "Per Vik", "Radiology"),
        ] {
            for i in 0..30 {
                history.push(AuditRecord {
                    user_display: Some(name.into()),
                    patient_display: Some(format!("Doe{i}, Jan")),
                    ..in_dept(
                        &format!("Practitioner/{u}"),
                        dept,
                        &format!("Patient/{}", 100 + i),
                        t0 + (u * 100 + i) as i64,
                    )
                });
            }
        }
        // Nora's stay: Surgery writes and reads her record, Radiology reads it.
        let stay = t0 + HOUR;
        history.push(AuditRecord {
            interaction: Interaction::Update,
            ..look("Practitioner/1", "Al Moe", "Surgery", stay)
        });
        history.push(look("Practitioner/2", "Li Berg", "Surgery", stay + HOUR));
        history.push(look(
            "Practitioner/5",
            "Per Vik",
            "Radiology",
            stay + 2 * HOUR,
        ));
        for r in &history {
            c.observe(r);
        }
        let after = |h: i64| stay + 2 * HOUR + h * HOUR;
        // A day after the last work: the record is still in care, the look is Surgery's.
        let (x, f) = c.peek(&look("Practitioner/3", "Ada Rask", "Surgery", after(24)));
        assert!(f.staff_record && f.dept_share > Some(0.0), "{f:?}");
        assert!(
            !f.own_colleague && f.record_quiet_days.is_none() && x[j] == 0.0,
            "{f:?}"
        );
        // Two days without anyone's work: out of care, whatever Surgery's share.
        let quiet = look("Practitioner/3", "Ada Rask", "Surgery", after(49));
        let (x, f) = c.observe(&quiet);
        assert!(f.own_colleague && f.dept_idle_days.is_none(), "{f:?}");
        assert_eq!((f.record_quiet_days, x[j]), (Some(2), 2.0));
        // Held apart: the next colleague's look finds the record as quiet as Ada's did,
        // the same after a restart that replays it all.
        let next = look("Practitioner/2", "Li Berg", "Surgery", after(60));
        let (x, f) = c.peek(&next);
        assert_eq!((f.record_quiet_days, x[j]), (Some(2), 2.0), "{f:?}");
        let mut replayed = Context::new(chrono_tz::UTC);
        for r in history.iter().chain([&quiet]) {
            replayed.replay(r);
        }
        assert_eq!(replayed.peek(&next).1.record_quiet_days, Some(2));
        // Another department's look at the quiet record is judged by its share.
        let (x, f) = c.peek(&look("Practitioner/5", "Per Vik", "Radiology", after(60)));
        assert!(
            !f.own_colleague && f.record_quiet_days.is_none() && x[j] == 0.0,
            "{f:?}"
        );
        // Radiology's look is work on the record: busy again, Surgery's looks count.
        c.observe(&look("Practitioner/5", "Per Vik", "Radiology", after(60)));
        let (x, f) = c.peek(&next);
        assert!(
            !f.own_colleague && f.record_quiet_days.is_none() && x[j] == 0.0,
            "{f:?}"
        );
        // The care context's word is work however quiet the audit trail: with Nora's
        // stay open in Surgery, the look two days after anyone's work is Surgery's care.
        let care = care_index(vec![
            serde_json::json!({"resourceType": "Patient", "id": "12", "name": [{"family": "Dahl", "given": ["Nora"]}]}),
            serde_json::json!({"resourceType": "Encounter", "id": "s", "subject": {"reference": "Patient/12"},
                   "period": {"start": "2020-01-01T00:00:00Z"}, "location": [{"location": {"display": "Surgery"}}]}),
        ]);
        let mut cared = Context::new(chrono_tz::UTC);
        cared.set_care(Some(care));
        for r in &history {
            cared.observe(r);
        }
        let (x, f) = cared.peek(&quiet);
        assert!(f.care.is_some() && f.staff_record, "{f:?}");
        assert!(
            !f.own_colleague && f.record_quiet_days.is_none() && x[j] == 0.0,
            "{f:?}"
        );
    }

    /// A patient who bears the name of another user of the site, a name no other patient
    /// bears, is that colleague: their record is watched, and opening it without a working
    /// relationship is flagged as a listed record's is. Not the user's own record, not a name
    /// two patients share.
    #[test]
    fn a_colleagues_own_record_is_watched_by_name() {
        let mut c = Context::new(chrono_tz::UTC);
        let j = feature("watched_record_unrelated");
        let t0 = monday(9);
        let staffed =
            |user: &str, name: &str, dept: &str, patient: &str, pname: &str, t: i64| AuditRecord {
                user_display: Some(name.into()),
                patient_display: Some(pname.into()),
                ..in_dept(user, dept, patient, t)
            };
        // Oncology treats the patients; Eva Lind works in Cardiology.
        for (i, (p, name)) in [("Patient/7", "Lind, Eva"), ("Patient/8", "Berg, Tom")]
            .iter()
            .enumerate()
        {
            for k in 0..20 {
                let t = t0 + (i * 20 + k) as i64 * 1000;
                c.observe(&staffed(
                    "Practitioner/1",
                    "Dr. Al Moe",
                    "Oncology",
                    p,
                    name,
                    t,
                ));
            }
        }
        c.observe(&staffed(
            "Practitioner/5",
            "Eva Lind",
            "Cardiology",
            "Patient/9",
            "Ek, Bo",
            t0,
        ));
        // A colleague from Cardiology opens Eva's record: no working relationship.
        let (x, f) = c.observe(&staffed(
            "Practitioner/3",
            "Dr. Ida Sund",
            "Cardiology",
            "Patient/7",
            "Lind, Eva",
            t0 + HOUR,
        ));
        assert!(f.staff_record && f.watched);
        assert!(f.own_colleague, "Eva works in Cardiology too");
        assert_eq!(x[j], 2.0, "evidence twice over");
        // Going back to it: a consult continued, as far as the trail can tell.
        let (_, f) = c.observe(&staffed(
            "Practitioner/3",
            "Dr. Ida Sund",
            "Cardiology",
            "Patient/7",
            "Lind, Eva",
            t0 + HOUR + 60_000,
        ));
        assert!(f.staff_record && !f.first_pair && !f.own_colleague);
        // From Surgery, a colleague's record still, but not one of the department's own.
        let (x, f) = c.observe(&staffed(
            "Practitioner/6",
            "Dr. Ute Falk",
            "Surgery",
            "Patient/7",
            "Lind, Eva",
            t0 + HOUR,
        ));
        assert!(f.staff_record && !f.own_colleague);
        assert_eq!(x[j], 1.0);
        // Oncology, which treats her, opens it as work.
        let (x, f) = c.observe(&staffed(
            "Practitioner/2",
            "Kim Ode",
            "Oncology",
            "Patient/7",
            "Lind, Eva",
            t0 + HOUR,
        ));
        assert!(f.staff_record && !f.own_colleague);
        assert_eq!(x[j], 0.0, "inside the department's work");
        // Her own record is hers, not a colleague's.
        let (_, f) = c.observe(&staffed(
            "Practitioner/5",
            "Eva Lind",
            "Cardiology",
            "Patient/7",
            "Lind, Eva",
            t0 + HOUR,
        ));
        assert!(!f.staff_record);
        // A patient nobody on the staff is named after.
        let (x, f) = c.observe(&staffed(
            "Practitioner/3",
            "Dr. Ida Sund",
            "Cardiology",
            "Patient/8",
            "Berg, Tom",
            t0 + HOUR,
        ));
        assert!(!f.staff_record && !f.watched);
        assert_eq!(x[j], 0.0);
        // A second Eva Lind among the patients: the name no longer says who.
        c.observe(&staffed(
            "Practitioner/1",
            "Dr. Al Moe",
            "Oncology",
            "Patient/10",
            "Lind, Eva",
            t0 + HOUR,
        ));
        let (x, f) = c.observe(&staffed(
            "Practitioner/3",
            "Dr. Ida Sund",
            "Cardiology",
            "Patient/7",
            "Lind, Eva",
            t0 + 2 * HOUR,
        ));
        assert!(!f.staff_record);
        assert_eq!(x[j], 0.0);
        // The names travel with a snapshot.
        let c = Context::from_bytes(&c.to_bytes(), chrono_tz::UTC).unwrap();
        let (_, f) = c.peek(&staffed(
            "Practitioner/4",
            "Ola Vik",
            "Cardiology",
            "Patient/11",
            "Lind, Eva",
            t0 + 3 * HOUR,
        ));
        assert!(!f.staff_record, "two patients bear it");
        assert_eq!(c.staff_names.len(), 5, "the users who wrote events");
    }

    /// Patients 7, 8 and 9: twenty accesses each from Oncology from 09:00 on a Monday; then
    /// a first access to Patient/7 from Oncology, its care: watched, and no reason. The
    /// feature `watched_record_unrelated` and the time an hour later.
    fn oncology_records(c: &mut Context) -> (usize, i64) {
        let j = feature("watched_record_unrelated");
        let t0 = monday(9);
        for (i, p) in ["Patient/7", "Patient/8", "Patient/9"].iter().enumerate() {
            for k in 0..20 {
                c.observe(&in_dept(
                    "Practitioner/1",
                    "Oncology",
                    p,
                    t0 + (i * 20 + k) as i64 * 1000,
                ));
            }
        }
        let (x, f) = c.observe(&in_dept(
            "Practitioner/2",
            "Oncology",
            "Patient/7",
            t0 + HOUR,
        ));
        assert!(f.watched);
        assert_eq!(x[j], 0.0);
        (j, t0)
    }

    #[test]
    fn a_record_the_servers_patient_resource_marks_is_watched_without_being_listed() {
        use serde_json::json;
        let importance = "http://hl7.org/fhir/StructureDefinition/patient-importance";
        let mut c = Context::new(chrono_tz::UTC);
        c.set_care(Some(care_index(vec![
            json!({"resourceType": "Patient", "id": "7", "meta": {"security": [{"code": "R"}]}}),
            json!({"resourceType": "Patient", "id": "8",
                   "extension": [{"url": importance, "valueCodeableConcept": {"coding": [{"code": "VIP"}]}}]}),
            json!({"resourceType": "Patient", "id": "9"}),
        ])));
        let (j, t0) = oncology_records(&mut c);
        // Cardiology has no share of any of them: the marked two are watched records opened
        // without a working relationship, the unmarked one is not watched.
        for (p, watched) in [
            ("Patient/7", true),
            ("Patient/8", true),
            ("Patient/9", false),
        ] {
            let (x, f) = c.observe(&in_dept("Practitioner/3", "Cardiology", p, t0 + HOUR));
            assert_eq!(f.watched, watched, "{p}");
            assert_eq!(x[j], watched as u8 as f32, "{p}");
        }
    }

    #[test]
    fn a_watched_record_opened_without_a_relationship_is_flagged() {
        let mut c = Context::new(chrono_tz::UTC);
        c.set_watch_list(["Patient/7", "https://h/fhir/Patient/8/_history/3"]);
        // A first access from the record's home department (its care) says nothing.
        let (j, t0) = oncology_records(&mut c);
        // Cardiology has no share of these records.
        let (x, f) = c.observe(&in_dept(
            "Practitioner/3",
            "Cardiology",
            "Patient/7",
            t0 + HOUR,
        ));
        assert!(f.watched);
        assert_eq!(x[j], 1.0);
        let (x, _) = c.observe(&in_dept(
            "Practitioner/3",
            "Cardiology",
            "Patient/8",
            t0 + HOUR,
        ));
        assert_eq!(x[j], 1.0, "a versioned reference in the list matches");
        let (x, f) = c.observe(&in_dept(
            "Practitioner/3",
            "Cardiology",
            "Patient/9",
            t0 + HOUR,
        ));
        assert!(!f.watched);
        assert_eq!(x[j], 0.0, "not watched");
        // A record the server labels restricted is watched without being listed.
        let labelled = AuditRecord {
            restricted: true,
            ..in_dept("Practitioner/4", "Neurology", "Patient/9", t0 + HOUR)
        };
        let (x, f) = c.observe(&labelled);
        assert!(f.watched);
        assert_eq!(x[j], 1.0);
        // A department with a working share of the record (radiology did the scans).
        for k in 0..5 {
            c.observe(&in_dept(
                "Practitioner/5",
                "Radiology",
                "Patient/7",
                t0 + HOUR + 10 + k,
            ));
        }
        let (x, _) = c.observe(&in_dept(
            "Practitioner/6",
            "Radiology",
            "Patient/7",
            t0 + HOUR + 20,
        ));
        assert_eq!(x[j], 0.0, "a related department");
        assert_eq!(watch_key(" Patient/12 "), "Patient/12");
        assert_eq!(watch_key("urn:mrn|123"), "urn:mrn|123");
    }

    #[test]
    fn an_hour_rare_for_the_user_and_their_peers_counts_more_than_for_either() {
        let mut c = Context::new(chrono_tz::UTC);
        // Weeks of work: the office 08-16 only, the ward around the clock; the night nurse
        // works nights, the ward's day nurse days.
        for day in 0..21 {
            let t0 = monday(0) + day * DAY;
            for h in 0..24 {
                let t = t0 + h * HOUR;
                if (8..16).contains(&h) {
                    c.observe(&in_dept("clerk", "Billing", "Patient/1", t));
                    c.observe(&in_dept("day-nurse", "Ward", "Patient/2", t));
                } else {
                    c.observe(&in_dept("night-nurse", "Ward", "Patient/3", t));
                }
            }
        }
        let at3 = monday(3) + 21 * DAY;
        let clerk = c.peek(&in_dept("clerk", "Billing", "Patient/1", at3)).0;
        let day_nurse = c.peek(&in_dept("day-nurse", "Ward", "Patient/2", at3)).0;
        let night_nurse = c.peek(&in_dept("night-nurse", "Ward", "Patient/3", at3)).0;
        let both = Feature::OffHoursUserAndPeers.index();
        let peers = Feature::HourRarityPeers.index();
        assert!(
            clerk[peers] > day_nurse[peers] + 1.0,
            "{} vs {}",
            clerk[peers],
            day_nurse[peers]
        );
        assert!(
            clerk[both] > day_nurse[both] + 1.0,
            "the ward works at night, the office does not"
        );
        assert!(
            day_nurse[both] > night_nurse[both],
            "the night nurse works at 03:00"
        );
        assert!(clerk[both] > night_nurse[both] + 1.5);
        let (_, facts) = c.peek(&in_dept("clerk", "Billing", "Patient/1", at3));
        assert_eq!(facts.peer_hour_share, Some(0.0));
    }

    #[test]
    fn pages_of_a_demographic_sweep_add_up_against_the_users_usual() {
        let mut c = Context::new(chrono_tz::UTC);
        let search = |user: &str, q: &str, t: i64| AuditRecord {
            interaction: Interaction::Search,
            patient: None,
            query: Some(crate::fhir::query_info(q)),
            ..rec(user, "", t)
        };
        // Weeks of small searches.
        for i in 0..400 {
            c.observe(&search(
                "u",
                "GET /Observation?patient=1&_count=20",
                monday(9) + i * 600_000,
            ));
        }
        let t = monday(9) + 400 * 600_000;
        let mut last = [0f32; N_FEATURES];
        for page in 0..6u32 {
            let q = format!(
                "GET /Patient?_count=1000&_elements=name,address,telecom&_offset={}",
                page * 1000
            );
            let (x, facts) = c.observe(&search("u", &q, t + page as i64 * 60_000));
            assert!(facts.patient_sweep && facts.sweeps_1h == page + 1);
            let (sweep, volume) = (
                Feature::DemographicSweep.index(),
                Feature::QueryVolume1hVsUsual.index(),
            );
            assert!(
                x[sweep] > last[sweep] && x[volume] > last[volume],
                "page {page}"
            );
            last = x;
        }
        assert!(
            last[Feature::QueryVolume1hVsUsual.index()] > 3.5,
            "6000 records against about 120 an hour"
        );
        // A page of the usual size by the same user is ordinary.
        let (x, _) = c.peek(&search(
            "u",
            "GET /Observation?patient=1&_count=20",
            t + 3 * HOUR,
        ));
        assert_eq!(x[Feature::DemographicSweep.index()], 0.0);
    }

    #[test]
    fn a_search_written_once_per_patient_is_one_query_and_alerts_once() {
        let mut c = Context::new(chrono_tz::UTC);
        let t0 = monday(9);
        let fanned = |req: &str, i: usize, t: i64| {
            let raw = serde_json::value::to_raw_value(&crate::fhir::tests::hapi_fanned_search(
                req,
                &format!("Patient/p{i}"),
                &crate::clock::fmt_ms(crate::clock::from_ms(t)),
            ))
            .unwrap();
            crate::fhir::parse_audit_event(&raw).unwrap()
        };
        let mut last = ([0f32; N_FEATURES], Facts::default());
        for i in 0..40 {
            last = c.observe(&fanned("req-1", i, t0 + i as i64));
        }
        let (x, facts) = last;
        assert_eq!(facts.listed, Some(40));
        assert!(
            x[Feature::DistinctPatients1h.index()] < 1.0,
            "not forty chart opens"
        );
        assert_eq!(x[Feature::FirstAccessToPatient.index()], 0.0);
        // One query of 50 records that listed 40 patients.
        assert_eq!(facts.asked_1h, 50);
        // The first event of the request to alert claims it; the others do not alert.
        let r = fanned("req-1", 3, t0 + 3);
        assert!(c.claim_alert(&r));
        assert!(!c.claim_alert(&fanned("req-1", 7, t0 + 7)));
        // Another request alerts on its own; a chart open alerts as always.
        c.observe(&fanned("req-2", 1, t0 + 100));
        assert!(c.claim_alert(&fanned("req-2", 1, t0 + 100)));
        assert!(c.claim_alert(&rec("u", "Patient/p1", t0 + 200)));
        // Past its page of 50 the query listed more: each patient beyond adds one record.
        for i in 40..60 {
            c.observe(&fanned("req-1", i, t0 + i as i64));
        }
        // 50 + 11 beyond its page, and req-2's page of 50 in the same hour.
        assert_eq!(c.observe(&fanned("req-1", 60, t0 + 60)).1.asked_1h, 111);
        // More requests within ten minutes than the bound keeps: the older half is
        // forgotten, and counted (`Forgotten::requests`), never silently.
        assert_eq!(c.take_forgotten().requests, 0);
        for i in 0..MAX_REQUESTS {
            c.observe(&fanned(&format!("many-{i}"), i, t0 + 1_000 + i as i64));
        }
        let forgotten = c.take_forgotten().requests;
        assert!(
            (1..=MAX_REQUESTS as u64 / 2 + 1).contains(&forgotten),
            "{forgotten}"
        );
    }
}
