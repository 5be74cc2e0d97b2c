//! Durable state: one SQLite database in WAL mode holding the poll cursor, the recently seen
//! event keys, lifetime counters, the detector snapshot and the alerts.
//!
//! Exactly-once rests on two rules kept here: an event's seen-key, its alert (if any) and the
//! `events_scored` counter are written in one transaction; and the cursor only moves (with the
//! detector snapshot) once every page of a poll has been committed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction};
use serde::Serialize;

mod backfill;
mod care;
mod cases;
mod outbox;
pub use backfill::{Backfill, Backfilled, BACKFILL_STEP};
pub use care::CareTypeStatus;
pub use outbox::{ExportSetup, ExportStatus};

use crate::alerts::{Alert, AlertFilter, NewAlert, Severity, Status};

pub const DB_FILE: &str = "fhir-edge.db";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot open state database {path}: {source}{}", diagnose(path))]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("state database {path} was written by a newer fhir-edge (schema {found}, this build knows {known})")]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("state directory {path}: {reason}")]
    Dir { path: PathBuf, reason: String },
    #[error("detector snapshot {path}: {reason}")]
    SnapshotFile { path: PathBuf, reason: String },
    #[error("disk full: {0}")]
    DiskFull(String),
    #[error("state database is read-only: {0}")]
    ReadOnly(String),
    #[error("state database is busy (locked by another process): {0}")]
    Busy(String),
    #[error("state database error: {0}")]
    Sqlite(String),
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Decision(#[from] crate::cases::DecisionError),
}

impl StateError {
    pub fn kind(&self) -> &'static str {
        match self {
            StateError::Open { .. } => "state_open",
            StateError::TooNew { .. } => "state_schema_too_new",
            StateError::Dir { .. } => "state_dir",
            StateError::SnapshotFile { .. } => "snapshot_file",
            StateError::DiskFull(_) => "disk_full",
            StateError::ReadOnly(_) => "state_read_only",
            StateError::Busy(_) => "state_busy",
            StateError::Sqlite(_) => "sqlite",
            StateError::NotFound => "not_found",
            StateError::Invalid(_) => "invalid_request",
            StateError::Decision(e) => e.kind(),
        }
    }
}

/// Why a database file or its folder may be unusable, in words an operator can act on
/// (SQLite only says "unable to open database file").
fn diagnose(db: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let dir = db.parent().unwrap_or(Path::new("."));
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return String::new();
    };
    let mut vfs: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut vfs) } == 0 {
        if vfs.f_flag & libc::ST_RDONLY != 0 {
            return format!(
                " ({} is on a read-only filesystem; check mounts and the unit's ReadWritePaths/StateDirectory)",
                dir.display()
            );
        }
        if vfs.f_bavail == 0 {
            return format!(" ({} has no free space left)", dir.display());
        }
    }
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        return format!(
            " ({} is not writable by uid {}; check its owner and mode)",
            dir.display(),
            unsafe { libc::geteuid() }
        );
    }
    String::new()
}

impl From<rusqlite::Error> for StateError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode as C;
        match e.sqlite_error_code() {
            Some(C::DiskFull) => StateError::DiskFull(e.to_string()),
            Some(C::ReadOnly) | Some(C::CannotOpen) | Some(C::PermissionDenied) => {
                StateError::ReadOnly(e.to_string())
            }
            Some(C::DatabaseBusy) | Some(C::DatabaseLocked) => StateError::Busy(e.to_string()),
            _ => StateError::Sqlite(e.to_string()),
        }
    }
}

/// Schema migrations, applied in order; `PRAGMA user_version` is the number applied.
const MIGRATIONS: &[&str] = &[
    // 1: cursor, counters, seen keys, snapshot, alerts, allow-list.
    r#"
    CREATE TABLE kv (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
    CREATE TABLE seen (
        key TEXT PRIMARY KEY,
        last_updated_ms INTEGER NOT NULL,
        seq INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE snapshot (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        seq INTEGER NOT NULL,
        taken_ms INTEGER NOT NULL,
        data BLOB NOT NULL
    );
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        event_key TEXT NOT NULL UNIQUE,
        event_id TEXT NOT NULL,
        event_version TEXT,
        recorded_ms INTEGER NOT NULL,
        detected_ms INTEGER NOT NULL,
        score REAL NOT NULL,
        severity INTEGER NOT NULL,
        summary TEXT NOT NULL,
        explanation TEXT NOT NULL,
        kinds TEXT NOT NULL,
        user_ref TEXT,
        user_display TEXT,
        patient_ref TEXT,
        source_ip TEXT,
        client_app TEXT,
        action TEXT,
        interaction TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'new',
        status_by TEXT,
        status_at_ms INTEGER,
        status_note TEXT,
        raw TEXT NOT NULL,
        journaled INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX alerts_by_recorded ON alerts(recorded_ms);
    CREATE INDEX alerts_by_user ON alerts(user_ref);
    CREATE INDEX alerts_by_patient ON alerts(patient_ref);
    CREATE TABLE allowlist (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        user_ref TEXT,
        patient_ref TEXT,
        source_ip TEXT,
        client_app TEXT,
        note TEXT,
        created_by TEXT,
        created_ms INTEGER NOT NULL,
        from_alert INTEGER
    );
    "#,
    // 2: cases (alerts of one user's episode; `cases.rs`). Alerts stored before keep no
    // case until `Store::open` files them by the rule.
    r#"
    CREATE TABLE cases (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        user_ref TEXT NOT NULL,
        first_ms INTEGER NOT NULL,
        last_ms INTEGER NOT NULL,
        opened_ms INTEGER NOT NULL,
        alerts INTEGER NOT NULL,
        score REAL NOT NULL,
        severity INTEGER NOT NULL,
        journaled_severity INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL DEFAULT 'new',
        resolution TEXT,
        status_by TEXT,
        status_at_ms INTEGER,
        status_note TEXT
    );
    CREATE INDEX cases_by_user ON cases(user_ref, last_ms);
    CREATE INDEX cases_by_status ON cases(status);
    ALTER TABLE alerts ADD COLUMN case_id INTEGER;
    CREATE INDEX alerts_by_case ON alerts(case_id);
    "#,
    // 3: the care context — each followed resource's facts (references, periods, keyed
    // hashes; see `crate::care`), and per resource type its cursor and whether the server
    // refused it.
    r#"
    CREATE TABLE care_facts (id TEXT PRIMARY KEY, type TEXT NOT NULL, facts TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE care_types (
        type TEXT PRIMARY KEY,
        cursor_ms INTEGER,
        last_poll_ms INTEGER,
        resources INTEGER NOT NULL DEFAULT 0,
        refused TEXT
    ) WITHOUT ROWID;
    "#,
    // 4: the export outbox (`outbox.rs`): items to send, and per exporter the last
    // position the far side acknowledged.
    r#"
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        item_id INTEGER NOT NULL,
        site TEXT NOT NULL,
        severity INTEGER,
        created_ms INTEGER NOT NULL,
        body TEXT NOT NULL
    );
    CREATE TABLE export_cursors (exporter TEXT PRIMARY KEY, acked_seq INTEGER NOT NULL) WITHOUT ROWID;
    "#,
    // 5: the detector snapshot in a file of its own beside the database (`SnapshotFile`);
    // `data` stays for snapshots written before (and is emptied when a file replaces it).
    r#"
    ALTER TABLE snapshot ADD COLUMN file TEXT;
    "#,
    // 6: seen keys filed by time ([`SeenKey`]): a page's keys go in at the newest end of the
    // B-tree, which stays in the page cache, rather than wherever their ids sort (anywhere for
    // servers with UUID ids); a re-read looks in the recent end; pruning cuts the oldest.
    // Copied in the new order (2M UUID keys: 3 s, against 12 s in the old one).
    r#"
    CREATE TABLE seen_by_time (
        last_updated_ms INTEGER NOT NULL,
        key TEXT NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (last_updated_ms, key)
    ) WITHOUT ROWID;
    INSERT INTO seen_by_time(last_updated_ms, key, seq)
        SELECT last_updated_ms, key, seq FROM seen ORDER BY last_updated_ms, key;
    DROP TABLE seen;
    ALTER TABLE seen_by_time RENAME TO seen;
    "#,
    // 7: a case's episodes (later ones of the user join a queued case, `CaseRule::follows`),
    // and how many the journal has said.
    r#"
    ALTER TABLE cases ADD COLUMN episodes INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE cases ADD COLUMN journaled_episodes INTEGER NOT NULL DEFAULT 1;
    "#,
    // 8: the server's marks on a record (`care::resources::marked`, an Encounter's special
    // courtesy) are kept in the facts from now on, and names are compared without digits
    // (`care::resources::norm_name`); the facts of Practitioners, Patients, RelatedPersons
    // and Encounters stored before were read otherwise, so these types are read again from
    // the start (the context's next round; only what changed is written).
    r#"
    UPDATE care_types SET cursor_ms = NULL
        WHERE type IN ('Practitioner', 'Patient', 'RelatedPerson', 'Encounter');
    "#,
];

/// Whether a fetched event needs scoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    /// Never committed: score it.
    New,
    /// Already committed and already reflected in the detector's context: drop it.
    Seen,
    /// Committed by an earlier process after the last detector snapshot: feed it to the
    /// detector's context (so baselines stay exact) without scoring or alerting again.
    Replay,
}

/// A fetched event to look up in the seen keys: its key (`fhir::event_key`) and the time it is
/// filed under (`AuditRecord::seen_at_ms`). Both are fixed for one version of one event; a
/// server that gave an unchanged version a new `meta.lastUpdated` would have it scored again
/// (its alert, keyed by the event's key alone, is still stored once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenKey {
    pub at_ms: i64,
    pub key: String,
}

/// One scored event to mark as seen.
#[derive(Debug, Clone)]
pub struct SeenEvent {
    pub key: String,
    pub last_updated_ms: i64,
    /// What the event carried (`Coverage::of`), counted once, when its key is new.
    pub carried: crate::coverage::Coverage,
}

/// Everything one batch commits atomically.
#[derive(Debug, Default)]
pub struct BatchCommit {
    pub events: Vec<SeenEvent>,
    pub alerts: Vec<NewAlert>,
    pub duplicates: u64,
    pub skipped: u64,
}

#[derive(Debug, Default, Clone)]
pub struct BatchOutcome {
    /// Events newly marked seen (counted into `events_scored`).
    pub events_committed: u64,
    /// Alerts newly stored: (alert id, index into the batch's `alerts`).
    pub alerts_inserted: Vec<(i64, usize)>,
    /// Cases this batch opened or raised in severity, to journal (`Store::mark_journaled`).
    pub cases_to_journal: Vec<crate::cases::CaseNote>,
    /// Items not written to the export outbox because it was full (`ExportSetup`).
    pub exports_refused: u64,
}

/// How far the care context reaches into the staff's work, as the detector's context
/// counted it for a snapshot (`Context::care_reach`), for `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CareReach {
    /// Audit users the care context linked to a Practitioner, and users it could not link
    /// (of those whose events met a care context).
    pub linked: u64,
    pub not_linked: u64,
    /// The mean share of the users' accesses outside every treatment relationship the
    /// context knows (users with enough events; 0 before any): at
    /// `features::SITE_CARE_BLIND_RATE` or more the context describes almost nobody's work.
    pub outside_rate: f32,
}

/// The end of a complete poll.
#[derive(Debug, Default)]
pub struct PollCommit {
    /// `None` when no event has ever been seen: the cursor stays unset.
    pub cursor_ms: Option<i64>,
    /// When this commit was made (ms since epoch).
    pub at_ms: i64,
    /// A complete poll (recorded as the last poll), or a checkpoint inside a long one.
    pub poll_complete: bool,
    /// Detector context snapshot (written to its file already), taken after every batch
    /// before it was committed.
    pub snapshot: Option<SnapshotFile>,
    /// With the snapshot: how far the care context reaches into the staff's work
    /// (`Context::care_reach`), for `status`.
    pub care_reach: Option<CareReach>,
    /// Seen keys older than this can be forgotten.
    pub prune_seen_before_ms: i64,
    /// Alerts detected before this are deleted.
    pub prune_alerts_before_ms: i64,
}

/// A detector snapshot in its own file in the state directory, written before the commit
/// that names it ([`Store::write_snapshot`]): a large site's snapshot (tens of MB) is
/// written off the pipeline, and the commit that pairs it with the cursor stays small.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    /// The file's name in the state directory (`snapshot-<seq>.ctx`).
    pub name: String,
    /// The store's commit sequence when the snapshot was taken: events committed after it
    /// are not in the snapshot and are replayed into the context after a crash.
    pub seq: i64,
}

const SNAPSHOT_PREFIX: &str = "snapshot-";
const SNAPSHOT_SUFFIX: &str = ".ctx";

/// What `fhir-edge status` prints.
#[derive(Debug, Serialize, Clone, Default)]
pub struct StatusReport {
    pub database: String,
    pub schema_version: i64,
    pub cursor: Option<String>,
    pub last_poll: Option<String>,
    pub events_scored: u64,
    pub events_duplicate: u64,
    pub events_skipped: u64,
    pub alerts: u64,
    pub alerts_by_severity: std::collections::BTreeMap<String, u64>,
    pub alerts_new: u64,
    pub seen_keys: u64,
    pub snapshot_taken: Option<String>,
    /// When the detector started from a model's baselines: their mark (newest `recorded`
    /// learned in training) and when the daemon started from them. None: its own history
    /// from its first start.
    pub baselines_until: Option<String>,
    pub baselines_seeded: Option<String>,
    /// When the daemon began learning the site (it ran without a site model).
    pub learning_since: Option<String>,
    /// What the events scored so far carried, and so what the detector is blind to.
    pub coverage: crate::coverage::Coverage,
    /// The care context's types: cursor, resources kept, refused or not.
    pub care: Vec<CareTypeStatus>,
    /// Audit users the care context linked to a Practitioner, and those it could not, as
    /// of the last snapshot (none before one met a care context).
    pub care_users_linked: Option<u64>,
    pub care_users_not_linked: Option<u64>,
    /// The mean share of the users' accesses outside every relationship the care context
    /// knows, as of the last snapshot (`CareReach::outside_rate`).
    pub care_outside_rate: Option<f32>,
    /// Each exporter's acknowledged position and backlog (none when nothing was exported).
    pub export: Vec<ExportStatus>,
    /// Items refused because the export outbox was full, over the database's life.
    pub export_refused: u64,
}

/// The most alerts (or cases) one `Reader::alerts` (`Reader::cases`) call returns; page on
/// with `before_id`.
pub const MAX_ALERTS_PAGE: u32 = 1000;

/// One page of a filtered listing, newest first: `WHERE` clauses with their values, then
/// `id < before_id`, `ORDER BY id DESC` and the limit. A limit beyond `MAX_ALERTS_PAGE` is
/// refused, never cut (page on with `before_id`, or `Reader::alerts_upto`/`cases_upto`).
struct Page {
    sql: String,
    args: Vec<rusqlite::types::Value>,
}

impl Page {
    fn new(select: String) -> Page {
        Page {
            sql: select,
            args: Vec::new(),
        }
    }

    /// `AND {clause} ?n` with `v`, when there is a value.
    fn and_opt<V: Into<rusqlite::types::Value>>(&mut self, clause: &str, v: Option<V>) {
        if let Some(v) = v {
            self.args.push(v.into());
            self.sql
                .push_str(&format!(" AND {clause} ?{}", self.args.len()));
        }
    }

    fn rows<T>(
        mut self,
        conn: &Connection,
        before_id: Option<i64>,
        limit: u32,
        row: impl FnMut(&rusqlite::Row) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, StateError> {
        if !(1..=MAX_ALERTS_PAGE).contains(&limit) {
            return Err(StateError::Invalid(format!(
                "limit must be 1–{MAX_ALERTS_PAGE} (got {limit}); page on with before_id"
            )));
        }
        self.and_opt("id <", before_id);
        self.args.push(i64::from(limit).into());
        self.sql
            .push_str(&format!(" ORDER BY id DESC LIMIT ?{}", self.args.len()));
        let mut st = conn.prepare(&self.sql)?;
        let rows = st.query_map(rusqlite::params_from_iter(self.args), row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// Up to `limit` items read page by page, newest first: `page(before_id, want)` reads one
/// page of at most `want` (≤ `MAX_ALERTS_PAGE`) items older than `before_id`; `id` names
/// an item for the next page.
fn read_pages<T>(
    limit: usize,
    mut page: impl FnMut(Option<i64>, u32) -> Result<Vec<T>, StateError>,
    id: impl Fn(&T) -> i64,
) -> Result<Vec<T>, StateError> {
    let mut out = Vec::new();
    let mut before_id = None;
    while out.len() < limit {
        let want = (limit - out.len()).min(MAX_ALERTS_PAGE as usize);
        let items = page(before_id, want as u32)?;
        let full = items.len() == want;
        before_id = items.last().map(&id);
        out.extend(items);
        if !full {
            break;
        }
    }
    Ok(out)
}

/// What the daemon loads at start.
#[derive(Debug, Default)]
pub struct Loaded {
    pub cursor_ms: Option<i64>,
    pub snapshot: Option<Vec<u8>>,
    pub events_scored: u64,
    /// Newest `lastUpdated` of the events committed after the last snapshot (by a process
    /// that then died). They are replayed into the context as they are re-read, so no new
    /// snapshot may be taken before the re-read has passed this point.
    pub replay_until_ms: Option<i64>,
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// Highest commit sequence written by earlier processes.
    startup_seq: i64,
    /// Sequence of the last detector snapshot (shared with the [`SeenReader`]s).
    snapshot_seq: Arc<AtomicI64>,
    seq: i64,
    last_prune_ms: Option<i64>,
    case_rule: crate::cases::CaseRule,
    /// What to export (`set_export`); `None`: nothing is written to the outbox.
    export: Option<ExportSetup>,
}

/// How often seen keys and expired alerts are pruned.
const PRUNE_EVERY_MS: i64 = 10 * 60_000;

/// Page cache of the writer and of the seen-key reader, KiB (SQLite's default is 2 MiB): a
/// large site's seen keys span more pages than that, and each miss is a read of the file.
/// Used only as pages are touched; 8 MiB keeps a small site within its RSS target
/// (BENCHMARKS.md: 32 MiB cost about 30 MB there).
const CACHE_KIB: i64 = 8 * 1024;

/// WAL pages between checkpoints (SQLite's default is 1,000). A large site's page of
/// events touches seen keys all over their B-tree, so consecutive commits dirty the same
/// pages; checkpointing a tenth as often copies each such page to the database once instead
/// of many times (the WAL may grow to about 40 MB; it is truncated at a clean stop).
const WAL_PAGES: i64 = 10_000;

fn apply_pragmas(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
    conn.pragma_update(None, "wal_autocheckpoint", WAL_PAGES)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // In WAL mode NORMAL survives process crashes; a power loss can only drop the newest
    // transactions as a whole (cursor and seen-keys together), which re-fetches them.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

fn kv_get(conn: &Connection, key: &str) -> rusqlite::Result<Option<i64>> {
    conn.query_row("SELECT value FROM kv WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

fn kv_set(tx: &Transaction, key: &str, v: i64) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO kv(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, v],
    )?;
    Ok(())
}

/// The kv prefix of the lifetime coverage counts (`coverage.logins`, …).
const COVERAGE_KEY: &str = "coverage.";

fn coverage_counts(c: &crate::coverage::Coverage) -> Vec<(String, i64)> {
    match serde_json::to_value(c) {
        Ok(serde_json::Value::Object(m)) => m
            .into_iter()
            .filter_map(|(k, v)| Some((k, v.as_i64()?)))
            .collect(),
        _ => Vec::new(),
    }
}

fn coverage_read(conn: &Connection) -> rusqlite::Result<crate::coverage::Coverage> {
    let mut st = conn.prepare("SELECT key, value FROM kv WHERE key LIKE 'coverage.%'")?;
    let mut m = serde_json::Map::new();
    for row in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
        let (k, v) = row?;
        m.insert(k[COVERAGE_KEY.len()..].to_string(), v.into());
    }
    Ok(serde_json::from_value(serde_json::Value::Object(m)).unwrap_or_default())
}

fn kv_add(tx: &Transaction, key: &str, v: i64) -> rusqlite::Result<()> {
    if v == 0 {
        return Ok(());
    }
    tx.execute(
        "INSERT INTO kv(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
        params![key, v],
    )?;
    Ok(())
}

pub fn db_path(dir: &Path) -> PathBuf {
    dir.join(DB_FILE)
}

impl Store {
    /// Open (creating if needed) and migrate the database in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StateError> {
        std::fs::create_dir_all(dir).map_err(|e| StateError::Dir {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        let path = db_path(dir);
        let mut conn = Connection::open(&path).map_err(|source| StateError::Open {
            path: path.clone(),
            source,
        })?;
        // SQLite falls back to read-only without a word when it cannot write the file (a
        // read-only mount, a file owned by another uid): a daemon that cannot commit must
        // not start.
        if conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false) {
            return Err(StateError::Open {
                path: path.clone(),
                source: rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_READONLY),
                    Some("the database could only be opened read-only".into()),
                ),
            });
        }
        apply_pragmas(&conn).map_err(|source| StateError::Open {
            path: path.clone(),
            source,
        })?;
        migrate(&mut conn, &path)?;
        cases::file_orphans(&mut conn, &crate::cases::CaseRule::default())?;
        let seq = kv_get(&conn, "seq")?.unwrap_or(0);
        let snapshot_seq = conn
            .query_row("SELECT seq FROM snapshot WHERE id = 1", [], |r| r.get(0))
            .optional()?
            .unwrap_or(0);
        Ok(Store {
            conn,
            path,
            startup_seq: seq,
            snapshot_seq: Arc::new(AtomicI64::new(snapshot_seq)),
            seq,
            last_prune_ms: None,
            case_rule: crate::cases::CaseRule::default(),
            export: None,
        })
    }

    /// Group alerts into cases by `rule` from now on (`[cases] join_within_hours`).
    pub fn set_case_rule(&mut self, rule: crate::cases::CaseRule) {
        self.case_rule = rule;
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// When the daemon began learning this site: the stored time, or `now_ms` (stored) on
    /// the first start without a site model.
    pub fn learning_since(&mut self, now_ms: i64) -> Result<i64, StateError> {
        if let Some(t) = kv_get(&self.conn, "learning_since_ms")? {
            return Ok(t);
        }
        let tx = self.conn.transaction()?;
        kv_set(&tx, "learning_since_ms", now_ms)?;
        tx.commit()?;
        Ok(now_ms)
    }

    /// Record a complete poll whose cursor commit took no snapshot (`fhir-edge status`'s
    /// last poll stays current while snapshots are paced).
    pub fn note_poll(&mut self, at_ms: i64) -> Result<(), StateError> {
        let tx = self.conn.transaction()?;
        kv_set(&tx, "last_poll_ms", at_ms)?;
        tx.commit()?;
        Ok(())
    }

    /// Note that the detector started from a model's baselines learned up to `mark_ms`,
    /// at `now_ms` (for `status`).
    pub fn note_baselines(&mut self, mark_ms: i64, now_ms: i64) -> Result<(), StateError> {
        let tx = self.conn.transaction()?;
        kv_set(&tx, "baselines_mark_ms", mark_ms)?;
        kv_set(&tx, "baselines_seeded_ms", now_ms)?;
        tx.commit()?;
        Ok(())
    }

    pub fn load(&self) -> Result<Loaded, StateError> {
        let row: Option<(Vec<u8>, Option<String>)> = self
            .conn
            .query_row("SELECT data, file FROM snapshot WHERE id = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        // Files of snapshots never committed (a crash between the write and the commit).
        let committed = row.as_ref().and_then(|(_, f)| f.clone());
        self.remove_snapshots_but(committed.as_deref());
        let snapshot = match row {
            Some((_, Some(name))) => {
                let path = self.path.with_file_name(&name);
                match std::fs::read(&path) {
                    Ok(b) => Some(b),
                    Err(e) => {
                        // As an unreadable snapshot: the detector starts from the model's
                        // baselines (and says so).
                        tracing::warn!(
                            error_kind = "snapshot_file",
                            "detector snapshot {} cannot be read: {e}",
                            path.display()
                        );
                        None
                    }
                }
            }
            Some((data, None)) => Some(data),
            None => None,
        };
        let snapshot_seq = self.snapshot_seq.load(Ordering::Acquire);
        let replay_until_ms = if self.startup_seq > snapshot_seq {
            self.conn.query_row(
                "SELECT MAX(last_updated_ms) FROM seen WHERE seq > ?1",
                [snapshot_seq],
                |r| r.get(0),
            )?
        } else {
            None
        };
        Ok(Loaded {
            cursor_ms: kv_get(&self.conn, "cursor_ms")?,
            snapshot,
            events_scored: kv_get(&self.conn, "events_scored")?.unwrap_or(0) as u64,
            replay_until_ms,
        })
    }

    /// Classify fetched keys.
    /// A second, read-only connection for seen-key lookups, so a page can be filtered while
    /// the previous one commits (WAL readers do not wait for the writer). It sees committed
    /// keys only: keys still being committed must be checked by the caller *before* the
    /// lookup (see `DetectorActor`).
    pub fn seen_reader(&self) -> Result<SeenReader, StateError> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StateError::Open {
            path: self.path.clone(),
            source,
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
        Ok(SeenReader {
            conn,
            startup_seq: self.startup_seq,
            snapshot_seq: self.snapshot_seq.clone(),
        })
    }

    /// Commit a scored batch: seen keys, alerts and counters in one transaction.
    pub fn commit_batch(
        &mut self,
        batch: &BatchCommit,
        now_ms: i64,
    ) -> Result<BatchOutcome, StateError> {
        let seq = self.seq + 1;
        // Immediate: the write lock is taken (waiting out another writer) before the first
        // read; a read first would make SQLite refuse the later upgrade at once.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut outcome = BatchOutcome::default();
        {
            let mut seen = tx.prepare_cached(
                "INSERT OR IGNORE INTO seen(key, last_updated_ms, seq) VALUES (?1, ?2, ?3)",
            )?;
            let mut carried = crate::coverage::Coverage::default();
            for e in &batch.events {
                if seen.execute(params![e.key, e.last_updated_ms, seq])? == 1 {
                    outcome.events_committed += 1;
                    carried.add(&e.carried);
                }
            }
            for (name, n) in coverage_counts(&carried) {
                kv_add(&tx, &format!("{COVERAGE_KEY}{name}"), n)?;
            }
            let mut touched: Vec<i64> = Vec::new();
            // What the export outbox still takes, read once the batch has something.
            let mut room: Option<u64> = None;
            let mut ins = tx.prepare_cached(
                "INSERT OR IGNORE INTO alerts(event_key, event_id, event_version, recorded_ms, detected_ms,
                    score, severity, summary, explanation, kinds, user_ref, user_display, patient_ref,
                    source_ip, client_app, action, interaction, raw)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
            )?;
            for (i, a) in batch.alerts.iter().enumerate() {
                let n = ins.execute(params![
                    a.event_key,
                    a.event_id,
                    a.event_version,
                    a.recorded_ms,
                    now_ms,
                    a.score,
                    a.severity as i64,
                    a.summary,
                    serde_json::to_string(&a.explanation).expect("strings"),
                    serde_json::to_string(&a.kinds).expect("kinds serialise"),
                    a.user,
                    a.user_display,
                    a.patient,
                    a.source_ip,
                    a.client_app,
                    a.action,
                    a.interaction,
                    a.raw,
                ])?;
                if n == 1 {
                    let id = tx.last_insert_rowid();
                    outcome.alerts_inserted.push((id, i));
                    let case = cases::file(&tx, id, a.user.as_deref(), a, &self.case_rule)?;
                    if !touched.contains(&case) {
                        touched.push(case);
                    }
                    if let Some(setup) = &self.export {
                        let room = room.get_or_insert(outbox::room(&tx, setup)?);
                        let body =
                            crate::export::alert_message(&setup.site, id, Some(case), a, now_ms);
                        let item = (crate::export::ItemKind::Alert, id, Some(a.severity));
                        if !outbox::push(&tx, setup, room, item, &body, now_ms)? {
                            outcome.exports_refused += 1;
                        }
                    }
                }
            }
            if !touched.is_empty() {
                outcome.cases_to_journal = cases::to_journal(&tx, Some(&touched))?;
                if let Some(setup) = &self.export {
                    let room = room.get_or_insert(outbox::room(&tx, setup)?);
                    for id in &touched {
                        if !cases::export(&tx, setup, room, *id, now_ms)? {
                            outcome.exports_refused += 1;
                        }
                    }
                }
            }
        }
        kv_add(&tx, "events_scored", outcome.events_committed as i64)?;
        kv_add(&tx, "events_duplicate", batch.duplicates as i64)?;
        kv_add(&tx, "events_skipped", batch.skipped as i64)?;
        kv_set(&tx, "seq", seq)?;
        tx.commit()?;
        self.seq = seq;
        Ok(outcome)
    }

    /// Record that alerts reached the journal (so a restart re-emits only the missing ones).
    pub fn mark_journaled(&mut self, ids: &[i64]) -> Result<(), StateError> {
        if ids.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached("UPDATE alerts SET journaled = 1 WHERE id = ?1")?;
            for id in ids {
                st.execute([id])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Alerts stored but not yet written to the journal (after a crash in between).
    pub fn unjournaled(&self) -> Result<Vec<Alert>, StateError> {
        let sql = format!("SELECT {ALERT_COLS} FROM alerts WHERE journaled = 0 ORDER BY id");
        let mut st = self.conn.prepare(&sql)?;
        let rows = st.query_map([], |r| alert_from_row(r, false))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Move the cursor and save the detector snapshot: the end of a complete poll, or a
    /// checkpoint inside a long one.
    pub fn commit_poll(&mut self, p: &PollCommit) -> Result<u64, StateError> {
        let tx = self.conn.transaction()?;
        if let Some(c) = p.cursor_ms {
            kv_set(&tx, "cursor_ms", c)?;
        }
        if p.poll_complete {
            kv_set(&tx, "last_poll_ms", p.at_ms)?;
        }
        if let Some(r) = p.care_reach {
            kv_set(&tx, "care_users_linked", r.linked as i64)?;
            kv_set(&tx, "care_users_not_linked", r.not_linked as i64)?;
            let permille = (r.outside_rate * 1000.0).round() as i64;
            kv_set(&tx, "care_outside_permille", permille)?;
        }
        if let Some(f) = &p.snapshot {
            let committed = self.snapshot_seq.load(Ordering::Acquire);
            if f.seq > self.seq || f.seq < committed {
                return Err(StateError::Invalid(format!(
                    "snapshot at commit {} is outside {committed}..={}",
                    f.seq, self.seq
                )));
            }
            tx.execute(
                "INSERT INTO snapshot(id, seq, taken_ms, data, file) VALUES (1, ?1, ?2, x'', ?3)
                 ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, taken_ms = excluded.taken_ms,
                 data = excluded.data, file = excluded.file",
                params![f.seq, p.at_ms, f.name],
            )?;
        }
        // Pruning scans the tables: at most every PRUNE_EVERY_MS (and at the first poll).
        let mut pruned = 0;
        let due = self
            .last_prune_ms
            .is_none_or(|t| p.at_ms - t >= PRUNE_EVERY_MS);
        if due {
            pruned = tx.execute(
                "DELETE FROM seen WHERE last_updated_ms < ?1",
                [p.prune_seen_before_ms],
            )?;
            tx.execute(
                "DELETE FROM alerts WHERE detected_ms < ?1",
                [p.prune_alerts_before_ms],
            )?;
            // A case goes with the last of its alerts.
            tx.execute(
                "DELETE FROM cases WHERE NOT EXISTS (SELECT 1 FROM alerts WHERE case_id = cases.id)",
                [],
            )?;
        }
        tx.commit()?;
        if due {
            self.last_prune_ms = Some(p.at_ms);
        }
        if let Some(f) = &p.snapshot {
            self.snapshot_seq.store(f.seq, Ordering::Release);
            self.remove_snapshots_but(Some(&f.name));
        }
        Ok(pruned as u64)
    }

    /// The store's commit sequence: a snapshot taken now holds every batch committed so far.
    pub fn seq(&self) -> i64 {
        self.seq
    }

    /// Write a snapshot taken at commit sequence `seq` to its own file in `dir` (the state
    /// directory): written to a temporary name, synced, renamed, the directory synced — a
    /// crash leaves either the whole file or none. Needs no `Store`, so it runs off the
    /// store's thread; the snapshot counts once a `commit_poll` names it.
    pub fn write_snapshot(dir: &Path, seq: i64, bytes: &[u8]) -> Result<SnapshotFile, StateError> {
        use std::io::Write as _;
        let name = format!("{SNAPSHOT_PREFIX}{seq}{SNAPSHOT_SUFFIX}");
        let path = dir.join(&name);
        let tmp = dir.join(format!("{name}.tmp"));
        let err = |reason: std::io::Error| StateError::SnapshotFile {
            path: path.clone(),
            reason: reason.to_string(),
        };
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(err)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
        Ok(SnapshotFile { name, seq })
    }

    /// Remove snapshot files other than `keep` (older ones, and any whose commit never
    /// came): best effort, a file left behind is removed at the next snapshot.
    fn remove_snapshots_but(&self, keep: Option<&str>) {
        let Some(dir) = self.path.parent() else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let ours = name.starts_with(SNAPSHOT_PREFIX)
                && (name.ends_with(SNAPSHOT_SUFFIX) || name.ends_with(".tmp"));
            if ours && Some(name) != keep {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Fold the WAL into the main database (clean shutdown).
    pub fn checkpoint(&mut self) -> Result<(), StateError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// Allow-list rules (user, patient, source ip, client app; `None` matches anything).
    pub fn allowlist(&self) -> Result<Vec<crate::alerts::AllowRule>, StateError> {
        allowlist_of(&self.conn)
    }

    pub fn add_allow_rule(
        &mut self,
        rule: &crate::alerts::AllowRule,
        now_ms: i64,
    ) -> Result<i64, StateError> {
        if rule.user.is_none()
            && rule.patient.is_none()
            && rule.source_ip.is_none()
            && rule.client_app.is_none()
        {
            return Err(StateError::Invalid(
                "an allow-list rule needs at least one of user, patient, source_ip, client_app"
                    .into(),
            ));
        }
        self.conn.execute(
            "INSERT INTO allowlist(user_ref, patient_ref, source_ip, client_app, note, created_by, created_ms, from_alert)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![rule.user, rule.patient, rule.source_ip, rule.client_app, rule.note, rule.created_by, now_ms, rule.from_alert],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn remove_allow_rule(&mut self, id: i64) -> Result<(), StateError> {
        match self
            .conn
            .execute("DELETE FROM allowlist WHERE id = ?1", [id])?
        {
            0 => Err(StateError::NotFound),
            _ => Ok(()),
        }
    }

    /// Change an alert's case status.
    pub fn set_status(
        &mut self,
        id: i64,
        status: Status,
        by: Option<&str>,
        note: Option<&str>,
        now_ms: i64,
    ) -> Result<(), StateError> {
        let tx = self.conn.transaction()?;
        let n = tx.execute(
            "UPDATE alerts SET status = ?2, status_by = ?3, status_note = ?4, status_at_ms = ?5 WHERE id = ?1",
            params![id, status.as_str(), by, note, now_ms],
        )?;
        if n == 0 {
            return Err(StateError::NotFound);
        }
        if let Some(setup) = &self.export {
            let of = crate::export::ItemKind::Alert;
            let body = crate::export::status_message(
                &setup.site,
                of,
                id,
                status.as_str(),
                None,
                by,
                now_ms,
            );
            let mut room = outbox::room(&tx, setup)?;
            let item = (crate::export::ItemKind::Status, id, None);
            outbox::push(&tx, setup, &mut room, item, &body, now_ms)?;
        }
        tx.commit()?;
        Ok(())
    }
}

/// Allow-list rules, oldest first.
fn allowlist_of(conn: &Connection) -> Result<Vec<crate::alerts::AllowRule>, StateError> {
    let mut st = conn.prepare(
        "SELECT id, user_ref, patient_ref, source_ip, client_app, note, created_by, created_ms, from_alert
         FROM allowlist ORDER BY id",
    )?;
    let rows = st.query_map([], |r| {
        Ok(crate::alerts::AllowRule {
            id: r.get(0)?,
            user: r.get(1)?,
            patient: r.get(2)?,
            source_ip: r.get(3)?,
            client_app: r.get(4)?,
            note: r.get(5)?,
            created_by: r.get(6)?,
            created: crate::clock::fmt_ms(crate::clock::from_ms(r.get(7)?)),
            from_alert: r.get(8)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StateError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StateError::TooNew {
            path: path.to_path_buf(),
            found: version,
            known,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        if version > 0 {
            tracing::info!(schema_version = i + 1, "migrating the state database");
        }
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::info!(schema_version = i + 1, "state database migrated");
    }
    Ok(())
}

const ALERT_COLS: &str =
    "id, event_key, event_id, event_version, recorded_ms, detected_ms, score, severity,
    summary, explanation, kinds, user_ref, user_display, patient_ref, source_ip, client_app, action,
    interaction, status, status_by, status_at_ms, status_note, raw";

fn alert_from_row(r: &rusqlite::Row, with_raw: bool) -> rusqlite::Result<Alert> {
    let fmt = |ms: i64| crate::clock::fmt_ms(crate::clock::from_ms(ms));
    let explanation: String = r.get(9)?;
    let kinds: String = r.get(10)?;
    let raw: String = r.get(22)?;
    Ok(Alert {
        id: r.get(0)?,
        event_key: r.get(1)?,
        event_id: r.get(2)?,
        event_version: r.get(3)?,
        recorded: fmt(r.get(4)?),
        detected: fmt(r.get(5)?),
        score: r.get(6)?,
        severity: Severity::from_i64(r.get(7)?),
        summary: r.get(8)?,
        explanation: serde_json::from_str(&explanation).unwrap_or_default(),
        kinds: serde_json::from_str(&kinds).unwrap_or_default(),
        user: r.get(11)?,
        user_display: r.get(12)?,
        patient: r.get(13)?,
        source_ip: r.get(14)?,
        client_app: r.get(15)?,
        action: r.get(16)?,
        interaction: r.get(17)?,
        status: r.get::<_, String>(18)?.parse().unwrap_or(Status::New),
        status_by: r.get(19)?,
        status_at: r.get::<_, Option<i64>>(20)?.map(fmt),
        status_note: r.get(21)?,
        event: if with_raw {
            serde_json::from_str(&raw).ok()
        } else {
            None
        },
    })
}

/// A read-only view for `status`, `alerts` and the API; safe while the daemon writes.
/// Seen-key lookups on a read-only connection of their own (see [`Store::seen_reader`]).
pub struct SeenReader {
    conn: Connection,
    startup_seq: i64,
    snapshot_seq: Arc<AtomicI64>,
}

impl SeenReader {
    /// Status of each key, read in one transaction (one consistent view, one lock).
    pub fn filter(&mut self, keys: &[SeenKey]) -> Result<Vec<KeyStatus>, StateError> {
        let snapshot_seq = self.snapshot_seq.load(Ordering::Acquire);
        let tx = self.conn.transaction()?;
        let mut out = Vec::with_capacity(keys.len());
        {
            let mut stmt =
                tx.prepare_cached("SELECT seq FROM seen WHERE last_updated_ms = ?1 AND key = ?2")?;
            for k in keys {
                let seq: Option<i64> = stmt
                    .query_row(params![k.at_ms, k.key], |r| r.get(0))
                    .optional()?;
                out.push(match seq {
                    None => KeyStatus::New,
                    // Committed by a process that died before its next snapshot.
                    Some(s) if s > snapshot_seq && s <= self.startup_seq => KeyStatus::Replay,
                    Some(_) => KeyStatus::Seen,
                });
            }
        }
        tx.finish()?;
        Ok(out)
    }

    /// How many seen keys are filed at `[from_ms, to_ms)`: a range of the table's order, to
    /// compare with the server's count of the same window (the poller's overlap recheck).
    pub fn count(&mut self, from_ms: i64, to_ms: i64) -> Result<u64, StateError> {
        let n: i64 = self
            .conn
            .prepare_cached(
                "SELECT COUNT(*) FROM seen WHERE last_updated_ms >= ?1 AND last_updated_ms < ?2",
            )?
            .query_row([from_ms, to_ms], |r| r.get(0))?;
        Ok(n as u64)
    }
}

pub struct Reader {
    conn: Connection,
    path: PathBuf,
}

impl Reader {
    pub fn open(dir: &Path) -> Result<Reader, StateError> {
        let path = db_path(dir);
        if !path.exists() {
            return Err(StateError::Open {
                path: path.clone(),
                source: rusqlite::Error::InvalidPath(path.clone()),
            });
        }
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StateError::Open {
            path: path.clone(),
            source,
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Reader { conn, path })
    }

    /// Lifetime events scored: one row read, cheap enough to poll (unlike `status`, which
    /// counts the seen keys).
    pub fn events_scored(&self) -> Result<u64, StateError> {
        Ok(kv_get(&self.conn, "events_scored")?.unwrap_or(0) as u64)
    }

    pub fn status(&self) -> Result<StatusReport, StateError> {
        let c = &self.conn;
        let fmt = |ms: i64| crate::clock::fmt_ms(crate::clock::from_ms(ms));
        let mut by_sev = std::collections::BTreeMap::new();
        for s in Severity::ALL {
            by_sev.insert(s.as_str().to_string(), 0);
        }
        let mut st = c.prepare("SELECT severity, COUNT(*) FROM alerts GROUP BY severity")?;
        let mut total = 0;
        for row in st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))? {
            let (s, n) = row?;
            by_sev.insert(Severity::from_i64(s).as_str().to_string(), n as u64);
            total += n as u64;
        }
        Ok(StatusReport {
            database: self.path.display().to_string(),
            schema_version: c.pragma_query_value(None, "user_version", |r| r.get(0))?,
            cursor: kv_get(c, "cursor_ms")?.map(fmt),
            last_poll: kv_get(c, "last_poll_ms")?.map(fmt),
            events_scored: kv_get(c, "events_scored")?.unwrap_or(0) as u64,
            events_duplicate: kv_get(c, "events_duplicate")?.unwrap_or(0) as u64,
            events_skipped: kv_get(c, "events_skipped")?.unwrap_or(0) as u64,
            alerts: total,
            alerts_by_severity: by_sev,
            alerts_new: c.query_row(
                "SELECT COUNT(*) FROM alerts WHERE status = 'new'",
                [],
                |r| r.get::<_, i64>(0),
            )? as u64,
            seen_keys: c.query_row("SELECT COUNT(*) FROM seen", [], |r| r.get::<_, i64>(0))? as u64,
            snapshot_taken: c
                .query_row("SELECT taken_ms FROM snapshot WHERE id = 1", [], |r| {
                    r.get::<_, i64>(0)
                })
                .optional()?
                .map(fmt),
            baselines_until: kv_get(c, "baselines_mark_ms")?.map(fmt),
            baselines_seeded: kv_get(c, "baselines_seeded_ms")?.map(fmt),
            learning_since: kv_get(c, "learning_since_ms")?.map(fmt),
            coverage: coverage_read(c)?,
            care: self.care_types()?,
            care_users_linked: kv_get(c, "care_users_linked")?.map(|n| n as u64),
            care_users_not_linked: kv_get(c, "care_users_not_linked")?.map(|n| n as u64),
            care_outside_rate: kv_get(c, "care_outside_permille")?.map(|n| n as f32 / 1000.0),
            export: self.export_status(&[])?,
            export_refused: self.export_refused()?,
        })
    }

    /// Alerts newest first (by id), filtered; `before_id` pages.
    /// Up to `limit` alerts matching `f` (its own `before_id` and `limit` aside), newest
    /// first, read a page of `MAX_ALERTS_PAGE` at a time.
    pub fn alerts_upto(&self, f: &AlertFilter, limit: usize) -> Result<Vec<Alert>, StateError> {
        read_pages(
            limit,
            |before_id, want| {
                self.alerts(&AlertFilter {
                    before_id,
                    limit: want,
                    ..f.clone()
                })
            },
            |a| a.id,
        )
    }

    pub fn alerts(&self, f: &AlertFilter) -> Result<Vec<Alert>, StateError> {
        let mut q = Page::new(format!("SELECT {ALERT_COLS} FROM alerts WHERE 1 = 1"));
        q.and_opt("recorded_ms >=", f.since_ms);
        q.and_opt("recorded_ms <", f.until_ms);
        q.and_opt("severity >=", f.min_severity.map(|s| s as i64));
        q.and_opt("status =", f.status.map(|s| s.as_str().to_string()));
        q.and_opt("user_ref =", f.user.clone());
        q.and_opt("patient_ref =", f.patient.clone());
        q.rows(&self.conn, f.before_id, f.limit, |r| {
            alert_from_row(r, false)
        })
    }

    pub fn alert(&self, id: i64) -> Result<Alert, StateError> {
        let sql = format!("SELECT {ALERT_COLS} FROM alerts WHERE id = ?1");
        self.conn
            .query_row(&sql, [id], |r| alert_from_row(r, true))
            .optional()?
            .ok_or(StateError::NotFound)
    }

    /// Per-minute event and alert-score series for the dashboard charts.
    pub fn alert_series(&self, since_ms: i64) -> Result<Vec<(i64, f64, i64)>, StateError> {
        let mut st = self.conn.prepare(
            "SELECT recorded_ms / 60000 * 60000 AS m, MAX(score), COUNT(*) FROM alerts
             WHERE recorded_ms >= ?1 GROUP BY m ORDER BY m",
        )?;
        let rows = st.query_map([since_ms], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn allowlist(&self) -> Result<Vec<crate::alerts::AllowRule>, StateError> {
        allowlist_of(&self.conn)
    }

    pub fn integrity_check(&self) -> Result<String, StateError> {
        Ok(self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::NewAlert;
    use crate::cases::{CaseEvent, CaseRule};

    const H: i64 = 3_600_000;

    /// A store in a fresh directory filing cases by `rule`.
    fn store_with(rule: CaseRule) -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let mut s = Store::open(d.path()).unwrap();
        s.set_case_rule(rule);
        (d, s)
    }

    fn alert(key: &str) -> NewAlert {
        NewAlert {
            event_key: key.into(),
            event_id: key.split('|').next().unwrap().into(),
            event_version: Some("1".into()),
            recorded_ms: 1_000,
            score: 3.0,
            severity: Severity::High,
            summary: "s".into(),
            explanation: vec!["why".into()],
            kinds: vec![crate::alerts::AlertKind::BulkAccess],
            user: Some("Practitioner/1".into()),
            user_display: None,
            patient: Some("Patient/2".into()),
            source_ip: None,
            client_app: None,
            action: Some("R".into()),
            interaction: "read".into(),
            raw: "{}".into(),
            evidence: crate::alerts::Evidence::Single,
        }
    }

    fn alert_at(key: &str, user: &str, at_ms: i64, severity: Severity) -> NewAlert {
        NewAlert {
            recorded_ms: at_ms,
            severity,
            user: Some(user.into()),
            ..alert(key)
        }
    }

    fn batch_of(alerts: Vec<NewAlert>) -> BatchCommit {
        BatchCommit {
            events: alerts
                .iter()
                .map(|a| SeenEvent {
                    key: a.event_key.clone(),
                    last_updated_ms: a.recorded_ms,
                    carried: Default::default(),
                })
                .collect(),
            alerts,
            ..Default::default()
        }
    }

    /// Every case in the store, watched ones too (the tests below file fewer than a page).
    fn every_case(r: &Reader) -> Vec<crate::cases::Case> {
        let all = crate::cases::CaseFilter {
            scope: crate::cases::CaseScope::All,
            limit: 1000,
            ..Default::default()
        };
        r.cases(&all).unwrap()
    }

    /// The store files and queues cases by the rule `score`'s offline `Grouper` applies
    /// (the quality benchmark counts the queue through it): random alerts of a few users,
    /// patients and behaviours, filed both ways, make the same cases with the same
    /// statuses.
    #[test]
    fn the_store_files_and_queues_cases_as_the_offline_grouper_does() {
        use crate::alerts::AlertKind::*;
        use crate::cases::{CaseRule, CaseStatus, Grouper};
        let d = tempfile::tempdir().unwrap();
        let mut s = Store::open(d.path()).unwrap();
        let mut g = Grouper::new(CaseRule::default());
        let mut rng = crate::rng::Rng::new(7);
        let mut grouped = std::collections::HashMap::new();
        let mut at = 0i64;
        for i in 0..400 {
            at += (rng.exp(1.5) * 3_600_000.0) as i64;
            let user = format!("Practitioner/{}", rng.below(4));
            let patient = (!rng.chance(0.1)).then(|| format!("Patient/{}", rng.below(3)));
            let kind = *rng.pick(&[CrossDepartment, AfterHours, WatchedRecord, BulkAccess]);
            let severity = *rng.pick(&[Severity::Low, Severity::Low, Severity::Medium]);
            // Now and then an access at an unusual hour that corroborates itself.
            // Now and then a watched record opened in routine work.
            let evidence = if kind == AfterHours && rng.chance(0.2) {
                crate::alerts::Evidence::Twice
            } else if kind == WatchedRecord && rng.chance(0.3) {
                crate::alerts::Evidence::Routine
            } else {
                crate::alerts::Evidence::Single
            };
            let a = NewAlert {
                kinds: vec![kind],
                patient: patient.clone(),
                evidence,
                ..alert_at(&format!("e{i}|1"), &user, at, severity)
            };
            s.commit_batch(&batch_of(vec![a]), i + 1).unwrap();
            let c = g.assign(
                Some(&user),
                patient.as_deref(),
                at,
                (severity, kind, evidence),
            );
            grouped.insert(format!("e{i}"), c);
        }
        let r = Reader::open(d.path()).unwrap();
        let stored = every_case(&r);
        assert_eq!(stored.len() as u64, g.cases());
        let (mut watched, mut queued) = (0, 0);
        for case in stored {
            let (_, alerts) = r.case(case.id).unwrap();
            let theirs: std::collections::BTreeSet<u64> =
                alerts.iter().map(|a| grouped[&a.event_id]).collect();
            assert_eq!(
                theirs.len(),
                1,
                "case {} split offline: {theirs:?}",
                case.id
            );
            let c = *theirs.first().unwrap();
            assert_eq!(
                case.status == CaseStatus::New,
                g.is_queued(c),
                "case {} ({:?}) against the grouper's {c}",
                case.id,
                case.status
            );
            match case.status {
                CaseStatus::Watching => watched += 1,
                _ => queued += 1,
            }
        }
        assert!(
            watched > 5 && queued > 5,
            "{watched} watched, {queued} queued"
        );
    }

    /// Watched records opened in routine work (`Evidence::Routine`) do not corroborate
    /// each other in the store either; another behaviour does.
    #[test]
    fn routine_work_across_watched_records_stays_watched() {
        use crate::alerts::AlertKind::{AfterHours, WatchedRecord};
        use crate::alerts::Evidence::Routine;
        use crate::cases::CaseStatus;
        let d = tempfile::tempdir().unwrap();
        let mut s = Store::open(d.path()).unwrap();
        let at = |key: &str, t: i64, patient: &str, kind| NewAlert {
            kinds: vec![kind],
            patient: Some(patient.into()),
            evidence: Routine,
            ..alert_at(key, "Practitioner/9", t, Severity::Low)
        };
        let dir = d.path();
        let status = || {
            let all = every_case(&Reader::open(dir).unwrap());
            assert_eq!(all.len(), 1);
            all[0].status
        };
        let batch = vec![
            at("a|1", H, "Patient/1", WatchedRecord),
            at("b|1", 2 * H, "Patient/2", WatchedRecord),
        ];
        s.commit_batch(&batch_of(batch), 1).unwrap();
        assert_eq!(status(), CaseStatus::Watching);
        let batch = vec![at("c|1", 3 * H, "Patient/2", AfterHours)];
        s.commit_batch(&batch_of(batch), 2).unwrap();
        assert_eq!(status(), CaseStatus::New, "another behaviour");
    }

    /// A later episode of a user that would reach the queue on its own joins the user's
    /// case in the queue within the follow days, and is journaled as a new episode; a
    /// watched one waits in its own case; beyond the days, after the case was closed, or
    /// without a user, a new case opens.
    #[test]
    fn a_later_episode_joins_the_users_case_in_the_queue() {
        use crate::alerts::AlertKind::{MassExport, WatchedRecord};
        let (d, mut s) = store_with(CaseRule::new(8, 7));
        let file = |s: &mut Store, key: &str, user: &str, t: i64, kind, seq| {
            let a = NewAlert {
                kinds: vec![kind],
                patient: Some(format!("Patient/{key}")),
                ..alert_at(key, user, t, Severity::Medium)
            };
            let o = s.commit_batch(&batch_of(vec![a]), seq).unwrap();
            let notes: Vec<_> = o.cases_to_journal.iter().map(|c| c.journaled()).collect();
            s.mark_cases_journaled(&notes).unwrap();
            o.cases_to_journal
        };
        let first = file(&mut s, "a", "Practitioner/1", 10 * H, MassExport, 1);
        assert_eq!(first[0].event, CaseEvent::Opened);
        let case = first[0].id;
        // Two days later, a watched look (low) waits in a case of its own.
        let low = NewAlert {
            kinds: vec![WatchedRecord],
            severity: Severity::Low,
            ..alert_at("b", "Practitioner/1", 58 * H, Severity::Low)
        };
        let o = s.commit_batch(&batch_of(vec![low]), 2).unwrap();
        assert!(o.cases_to_journal.is_empty());
        // Three days later, an export: the same case, a new episode, journaled once.
        let later = file(&mut s, "c", "Practitioner/1", 82 * H, MassExport, 3);
        assert_eq!(
            (later[0].id, later[0].event, later[0].episodes),
            (case, CaseEvent::Episode, 2)
        );
        let r = Reader::open(d.path()).unwrap();
        let (c, alerts) = r.case(case).unwrap();
        assert_eq!((c.episodes, alerts.len()), (2, 2));
        assert!(c.narrative.contains("in 2 episodes"), "{}", c.narrative);
        assert!(s.unjournaled_cases().unwrap().is_empty(), "journaled once");
        // Its alerts within the window join as before, no new episode.
        let same = file(&mut s, "d", "Practitioner/1", 83 * H, MassExport, 4);
        assert!(same.is_empty());
        // Eight days after its last alert: a new case.
        let apart = file(
            &mut s,
            "e",
            "Practitioner/1",
            (83 + 8 * 24) * H,
            MassExport,
            5,
        );
        assert_eq!(apart[0].event, CaseEvent::Opened);
        assert_ne!(apart[0].id, case);
        // Closed, a case takes no later episode: the next opens a new case.
        let decision = crate::cases::CaseDecision {
            status: crate::cases::CaseStatus::Closed,
            resolution: Some(crate::cases::Resolution::FalsePositive),
            note: None,
            by: Some("po".into()),
        };
        s.set_case_status(apart[0].id, &decision, 300 * H).unwrap();
        let after = file(&mut s, "f", "Practitioner/1", 300 * H, MassExport, 6);
        assert_eq!(after[0].event, CaseEvent::Opened);
        assert_ne!(after[0].id, apart[0].id);
        // Without a user, bursts a day apart stay apart.
        let a = file(&mut s, "g", "", 10 * H, MassExport, 7);
        let b = file(&mut s, "h", "", 40 * H, MassExport, 8);
        assert_ne!(a[0].id, b[0].id);
    }

    /// Alerts of one user within the window are one case, in the transaction that stores
    /// them: a batch delivered again files nothing twice; a case opened is journaled once,
    /// and again only when it escalates; a closed case takes no more alerts.
    #[test]
    fn alerts_file_into_cases_once_and_cases_journal_on_open_and_escalation() {
        // Every episode a case of its own (a later one joining a queued case is tested
        // in `a_later_episode_joins_the_users_case_in_the_queue`).
        let (d, mut s) = store_with(CaseRule::new(8, 0));
        let first = batch_of(vec![
            alert_at("a|1", "Practitioner/1", 10 * H, Severity::Low),
            alert_at("b|1", "Practitioner/1", 11 * H, Severity::Low),
            alert_at("c|1", "Practitioner/2", 11 * H, Severity::Medium),
        ]);
        let o = s.commit_batch(&first, 1).unwrap();
        assert_eq!(o.cases_to_journal.len(), 2);
        assert!(o
            .cases_to_journal
            .iter()
            .all(|c| c.event == CaseEvent::Opened));
        let notes: Vec<_> = o.cases_to_journal.iter().map(|c| c.journaled()).collect();
        s.mark_cases_journaled(&notes).unwrap();
        // The same batch again (a crash before the poll committed): nothing changes.
        let o = s.commit_batch(&first, 2).unwrap();
        assert!(o.alerts_inserted.is_empty() && o.cases_to_journal.is_empty());
        // A later, stronger alert of user 1 joins and escalates; one a day later opens.
        let o = s
            .commit_batch(
                &batch_of(vec![
                    alert_at("d|1", "Practitioner/1", 18 * H, Severity::High),
                    alert_at("e|1", "Practitioner/1", 40 * H, Severity::Low),
                ]),
                3,
            )
            .unwrap();
        let by_event: Vec<CaseEvent> = o.cases_to_journal.iter().map(|c| c.event).collect();
        assert_eq!(
            by_event,
            vec![CaseEvent::Escalated, CaseEvent::Opened],
            "escalated, then opened"
        );
        let r = Reader::open(d.path()).unwrap();
        let all = r
            .cases(&crate::cases::CaseFilter {
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(all.len(), 3);
        let (case, alerts) = r.case(o.cases_to_journal[0].id).unwrap();
        assert_eq!(
            (case.alerts, alerts.len(), case.severity),
            (3, 3, Severity::High)
        );
        assert_eq!(case.user.as_deref(), Some("Practitioner/1"));
        let later = r.case(o.cases_to_journal[1].id).unwrap().0;
        assert_eq!(later.earlier_cases, 1, "{}", later.narrative);
        assert!(later
            .narrative
            .ends_with("The 2nd case for this user in 90 days."));
        // Closed, a case takes no more alerts: the next one opens a new case.
        let decision = crate::cases::CaseDecision {
            status: crate::cases::CaseStatus::Closed,
            resolution: Some(crate::cases::Resolution::Appropriate),
            note: Some("covering a colleague's patients".into()),
            by: Some("po".into()),
        };
        let (closed, rules) = s.set_case_status(later.id, &decision, 4).unwrap();
        assert_eq!(closed.status, crate::cases::CaseStatus::Closed);
        assert_eq!(rules.len(), 1, "the user with the one patient: {rules:?}");
        s.commit_batch(
            &batch_of(vec![alert_at(
                "f|1",
                "Practitioner/1",
                41 * H,
                Severity::Low,
            )]),
            5,
        )
        .unwrap();
        let r = Reader::open(d.path()).unwrap();
        assert_eq!(r.case_counts().unwrap()["new"], 3);
        assert_eq!(r.case_counts().unwrap()["closed"], 1);
        // One low alert on a watched record is watched, not queued or journaled, until an
        // alert of the user about another patient or of another behaviour corroborates it.
        let watched = NewAlert {
            kinds: vec![crate::alerts::AlertKind::WatchedRecord],
            ..alert_at("g|1", "Practitioner/3", 50 * H, Severity::Low)
        };
        let o = s.commit_batch(&batch_of(vec![watched]), 7).unwrap();
        assert!(
            o.cases_to_journal.is_empty(),
            "a watched case is not journaled"
        );
        let r = Reader::open(d.path()).unwrap();
        assert_eq!(r.case_counts().unwrap()["watching"], 1);
        // The same look at the same record, continued, is not corroboration.
        let again = NewAlert {
            kinds: vec![crate::alerts::AlertKind::WatchedRecord],
            ..alert_at("g|2", "Practitioner/3", 50 * H + 60_000, Severity::Low)
        };
        let o = s.commit_batch(&batch_of(vec![again]), 8).unwrap();
        assert!(o.cases_to_journal.is_empty(), "still watched");
        assert_eq!(r.case_counts().unwrap()["watching"], 1);
        let o = s
            .commit_batch(
                &batch_of(vec![NewAlert {
                    kinds: vec![crate::alerts::AlertKind::AfterHours],
                    ..alert_at("h|1", "Practitioner/3", 51 * H, Severity::Low)
                }]),
                9,
            )
            .unwrap();
        assert_eq!(o.cases_to_journal.len(), 1);
        assert!(
            o.cases_to_journal[0].event == CaseEvent::Opened,
            "corroborated: opened in the queue"
        );
        assert_eq!(r.case_counts().unwrap()["watching"], 0);
        // After a case closed as inappropriate, the user's next case goes straight to the
        // queue one severity higher, and says why.
        let breach = crate::cases::CaseDecision {
            status: crate::cases::CaseStatus::Closed,
            resolution: Some(crate::cases::Resolution::Inappropriate),
            note: None,
            by: None,
        };
        let first_of_3 = r
            .cases(&crate::cases::CaseFilter {
                user: Some("Practitioner/3".into()),
                limit: 1,
                ..Default::default()
            })
            .unwrap()[0]
            .id;
        s.set_case_status(first_of_3, &breach, 60 * H).unwrap();
        let o = s
            .commit_batch(
                &batch_of(vec![NewAlert {
                    kinds: vec![crate::alerts::AlertKind::WatchedRecord],
                    ..alert_at("i|1", "Practitioner/3", 70 * H, Severity::Low)
                }]),
                10,
            )
            .unwrap();
        assert_eq!(o.cases_to_journal.len(), 1, "queued at once");
        assert_eq!(
            o.cases_to_journal[0].severity,
            Severity::Medium,
            "one higher"
        );
        let (after, _) = r.case(o.cases_to_journal[0].id).unwrap();
        assert!(
            after.narrative.contains("closed as inappropriate"),
            "{}",
            after.narrative
        );
        let wrong = crate::cases::CaseDecision {
            resolution: None,
            ..decision
        };
        assert_eq!(
            s.set_case_status(later.id, &wrong, 6).unwrap_err().kind(),
            "closed_without_resolution"
        );
    }

    /// A database from before cases: its alerts are filed at the first open, as
    /// journaled (the journal had them as alerts).
    #[test]
    fn alerts_stored_before_cases_existed_are_filed_at_open() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Store::open(d.path()).unwrap();
        s.commit_batch(
            &batch_of(vec![
                alert_at("a|1", "Practitioner/1", 1_000, Severity::Low),
                alert_at("b|1", "Practitioner/1", 2_000, Severity::High),
            ]),
            1,
        )
        .unwrap();
        s.conn
            .execute_batch("UPDATE alerts SET case_id = NULL; DELETE FROM cases;")
            .unwrap();
        drop(s);
        let s = Store::open(d.path()).unwrap();
        assert!(s.unjournaled_cases().unwrap().is_empty());
        let r = Reader::open(d.path()).unwrap();
        let all = r
            .cases(&crate::cases::CaseFilter {
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            (all.len(), all[0].alerts, all[0].severity),
            (1, 2, Severity::High)
        );
    }

    /// A page larger than the store gives is refused, naming the way on, never cut.
    #[test]
    fn a_page_beyond_the_cap_is_refused_not_cut() {
        let d = tempfile::tempdir().unwrap();
        drop(Store::open(d.path()).unwrap());
        let r = Reader::open(d.path()).unwrap();
        let too_many = AlertFilter {
            limit: MAX_ALERTS_PAGE + 1,
            ..Default::default()
        };
        let e = r.alerts(&too_many).unwrap_err();
        assert_eq!(e.kind(), "invalid_request");
        assert!(e.to_string().contains("page on with before_id"), "{e}");
        let cases = crate::cases::CaseFilter {
            limit: 0,
            ..Default::default()
        };
        assert_eq!(r.cases(&cases).unwrap_err().kind(), "invalid_request");
        assert!(r
            .alerts(&AlertFilter {
                limit: MAX_ALERTS_PAGE,
                ..Default::default()
            })
            .unwrap()
            .is_empty());
    }

    /// Pages of at most a thousand, each starting below the last id seen, until the limit
    /// or a short page.
    #[test]
    fn read_pages_reads_up_to_the_limit_and_stops_at_a_short_page() {
        let all: Vec<i64> = (1..=2500).rev().collect();
        let page_of = |before: Option<i64>, want: u32| -> Vec<i64> {
            all.iter()
                .copied()
                .filter(|i| before.is_none_or(|b| *i < b))
                .take(want as usize)
                .collect()
        };
        let mut calls = Vec::new();
        let got = read_pages(
            2100,
            |b, w| {
                calls.push((b, w));
                Ok(page_of(b, w))
            },
            |i| *i,
        )
        .unwrap();
        assert_eq!(got.len(), 2100);
        assert_eq!((got[0], got[2099]), (2500, 401));
        assert_eq!(
            calls,
            vec![(None, 1000), (Some(1501), 1000), (Some(501), 100)]
        );
        let every = read_pages(usize::MAX, |b, w| Ok(page_of(b, w)), |i| *i).unwrap();
        assert_eq!(every.len(), 2500, "a short page ends it");
    }

    fn keys(pairs: &[(i64, &str)]) -> Vec<SeenKey> {
        pairs
            .iter()
            .map(|(at_ms, key)| SeenKey {
                at_ms: *at_ms,
                key: (*key).into(),
            })
            .collect()
    }

    /// A key is found under the time it was filed at; the same id and version under another
    /// `meta.lastUpdated` is another version to the stream.
    #[test]
    fn a_seen_key_is_found_under_its_time() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Store::open(d.path()).unwrap();
        let events = (0..50)
            .map(|i| SeenEvent {
                key: format!("id-{}|v1", (i * 37) % 50),
                last_updated_ms: 1000 + i,
                carried: Default::default(),
            })
            .collect();
        s.commit_batch(
            &BatchCommit {
                events,
                ..Default::default()
            },
            1,
        )
        .unwrap();
        let mut r = s.seen_reader().unwrap();
        assert_eq!(
            r.filter(&keys(&[
                (1000, "id-0|v1"),
                (1001, "id-37|v1"),
                (1001, "id-0|v1")
            ]))
            .unwrap(),
            vec![KeyStatus::Seen, KeyStatus::Seen, KeyStatus::New]
        );
        assert_eq!(r.count(1000, 1050).unwrap(), 50);
        assert_eq!(r.count(1010, 1020).unwrap(), 10, "from included, to not");
        assert_eq!(r.count(0, 1000).unwrap(), 0);
    }

    /// A state database in `dir` with the first `version` migrations applied.
    fn at_schema(dir: &Path, version: usize) -> Connection {
        let mut c = Connection::open(db_path(dir)).unwrap();
        for (i, sql) in MIGRATIONS.iter().take(version).enumerate() {
            let tx = c.transaction().unwrap();
            tx.execute_batch(sql).unwrap();
            tx.pragma_update(None, "user_version", (i + 1) as i64)
                .unwrap();
            tx.commit().unwrap();
        }
        c
    }

    /// Seen keys written under schema 5 (filed by key) are kept by the migration that files
    /// them by time, and found afterwards.
    #[test]
    fn seen_keys_survive_the_migration_to_time_order() {
        let d = tempfile::tempdir().unwrap();
        {
            let c = at_schema(d.path(), 5);
            c.execute_batch(
                "INSERT INTO seen(key, last_updated_ms, seq) VALUES ('z|v1', 5, 1), ('a|v2', 9, 1)",
            )
            .unwrap();
        }
        let s = Store::open(d.path()).unwrap();
        assert_eq!(
            s.seen_reader()
                .unwrap()
                .filter(&keys(&[(5, "z|v1"), (9, "a|v2"), (9, "z|v1")]))
                .unwrap(),
            vec![KeyStatus::Seen, KeyStatus::Seen, KeyStatus::New]
        );
    }

    /// The migration that keeps the server's marks and names without digits reads the types
    /// that carry them again from the start, and no other type.
    #[test]
    fn the_types_with_marks_and_names_are_read_again_after_the_migration_that_keeps_them() {
        let d = tempfile::tempdir().unwrap();
        {
            let c = at_schema(d.path(), 7);
            c.execute_batch(
                "INSERT INTO care_types(type, cursor_ms) VALUES ('Patient', 5), ('Encounter', 6), ('CareTeam', 7),
                     ('Practitioner', 8), ('RelatedPerson', 9), ('PractitionerRole', 10)",
            )
            .unwrap();
        }
        let s = Store::open(d.path()).unwrap();
        let cursor = |t: &str| s.care_cursor(t).unwrap();
        for t in ["Patient", "Encounter", "Practitioner", "RelatedPerson"] {
            assert_eq!(cursor(t), None, "{t}");
        }
        assert_eq!(
            (cursor("CareTeam"), cursor("PractitionerRole")),
            (Some(7), Some(10))
        );
    }

    #[test]
    fn migrations_apply_once_and_reopen() {
        let d = tempfile::tempdir().unwrap();
        drop(Store::open(d.path()).unwrap());
        let s = Store::open(d.path()).unwrap();
        let v: i64 = s
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
        let mode: String = s
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn newer_schema_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        s.conn.pragma_update(None, "user_version", 99).unwrap();
        drop(s);
        assert_eq!(
            Store::open(d.path()).err().unwrap().kind(),
            "state_schema_too_new"
        );
    }

    #[test]
    fn batch_is_idempotent_and_counts_exactly() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Store::open(d.path()).unwrap();
        let b = BatchCommit {
            events: vec![
                SeenEvent {
                    key: "a|v1".into(),
                    last_updated_ms: 10,
                    carried: Default::default(),
                },
                SeenEvent {
                    key: "b|v1".into(),
                    last_updated_ms: 11,
                    carried: crate::coverage::Coverage {
                        events: 1,
                        logins: 1,
                        ..Default::default()
                    },
                },
            ],
            alerts: vec![alert("a|v1")],
            ..Default::default()
        };
        let o = s.commit_batch(&b, 5).unwrap();
        assert_eq!(o.events_committed, 2);
        assert_eq!(o.alerts_inserted.len(), 1);
        // Re-delivery of the same batch changes nothing.
        let o = s.commit_batch(&b, 6).unwrap();
        assert_eq!(o.events_committed, 0);
        assert!(o.alerts_inserted.is_empty());
        let r = Reader::open(d.path()).unwrap().status().unwrap();
        assert_eq!(r.events_scored, 2);
        assert_eq!(r.alerts, 1);
        assert_eq!(
            (r.coverage.events, r.coverage.logins),
            (1, 1),
            "counted once"
        );
        assert_eq!(
            s.seen_reader()
                .unwrap()
                .filter(&keys(&[(10, "a|v1"), (12, "c|v1")]))
                .unwrap(),
            vec![KeyStatus::Seen, KeyStatus::New]
        );
    }

    #[test]
    fn cursor_moves_only_with_poll_commit_and_replay_after_restart() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Store::open(d.path()).unwrap();
        s.commit_batch(
            &BatchCommit {
                events: vec![SeenEvent {
                    key: "a|v1".into(),
                    last_updated_ms: 100,
                    carried: Default::default(),
                }],
                ..Default::default()
            },
            1,
        )
        .unwrap();
        assert_eq!(
            s.load().unwrap().cursor_ms,
            None,
            "a batch never moves the cursor"
        );
        s.commit_poll(&PollCommit {
            cursor_ms: Some(100),
            at_ms: 2,
            poll_complete: true,
            snapshot: Some(Store::write_snapshot(d.path(), s.seq(), b"snap").unwrap()),
            care_reach: None,
            prune_seen_before_ms: 0,
            prune_alerts_before_ms: 0,
        })
        .unwrap();
        // Committed after the snapshot, then the process dies.
        s.commit_batch(
            &BatchCommit {
                events: vec![SeenEvent {
                    key: "b|v1".into(),
                    last_updated_ms: 200,
                    carried: Default::default(),
                }],
                ..Default::default()
            },
            3,
        )
        .unwrap();
        drop(s);
        let s = Store::open(d.path()).unwrap();
        let l = s.load().unwrap();
        assert_eq!(l.cursor_ms, Some(100));
        assert_eq!(l.snapshot.as_deref(), Some(&b"snap"[..]));
        assert_eq!(l.events_scored, 2);
        assert_eq!(
            l.replay_until_ms,
            Some(200),
            "no snapshot before the re-read passed b"
        );
        let mut reader = s.seen_reader().unwrap();
        assert_eq!(
            reader
                .filter(&keys(&[(100, "a|v1"), (200, "b|v1"), (300, "c|v1")]))
                .unwrap(),
            vec![KeyStatus::Seen, KeyStatus::Replay, KeyStatus::New]
        );
        // A snapshot taken by this process covers b: the reader (opened before it) sees
        // the new snapshot sequence and stops reporting b for replay.
        let mut s = s;
        s.commit_poll(&PollCommit {
            cursor_ms: Some(200),
            at_ms: 4,
            poll_complete: true,
            snapshot: Some(Store::write_snapshot(d.path(), s.seq(), b"snap2").unwrap()),
            care_reach: Some(CareReach {
                linked: 3,
                not_linked: 1,
                outside_rate: 0.85,
            }),
            prune_seen_before_ms: 0,
            prune_alerts_before_ms: 0,
        })
        .unwrap();
        assert_eq!(
            reader.filter(&keys(&[(200, "b|v1")])).unwrap(),
            vec![KeyStatus::Seen]
        );
        // What the snapshot said of the care context, for `status`.
        let st = Reader::open(d.path()).unwrap().status().unwrap();
        assert_eq!(
            (st.care_users_linked, st.care_users_not_linked),
            (Some(3), Some(1))
        );
        assert_eq!(st.care_outside_rate, Some(0.85));
    }

    /// The pipeline goes on while a snapshot is written: what was committed after the
    /// snapshot was taken is replayed into the context after a restart, not lost.
    #[test]
    fn a_snapshot_written_beside_the_store_covers_what_was_committed_before_it() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Store::open(d.path()).unwrap();
        let batch = |key: &str| BatchCommit {
            events: vec![SeenEvent {
                key: key.into(),
                last_updated_ms: 100,
                carried: Default::default(),
            }],
            ..Default::default()
        };
        s.commit_batch(&batch("a|v1"), 1).unwrap();
        let taken = s.seq();
        s.commit_batch(&batch("b|v1"), 2).unwrap();
        let file = Store::write_snapshot(d.path(), taken, b"ctx").unwrap();
        let poll = |snapshot| PollCommit {
            cursor_ms: Some(100),
            at_ms: 3,
            poll_complete: true,
            snapshot,
            ..Default::default()
        };
        s.commit_poll(&poll(Some(file))).unwrap();
        // A file whose commit never came (a crash in between) is removed at the next start.
        std::fs::write(d.path().join("snapshot-99.ctx"), b"x").unwrap();
        drop(s);
        let mut s = Store::open(d.path()).unwrap();
        let l = s.load().unwrap();
        assert_eq!(l.snapshot.as_deref(), Some(&b"ctx"[..]));
        assert!(!d.path().join("snapshot-99.ctx").exists());
        assert_eq!(
            s.seen_reader()
                .unwrap()
                .filter(&keys(&[(100, "a|v1"), (100, "b|v1")]))
                .unwrap(),
            vec![KeyStatus::Seen, KeyStatus::Replay]
        );
        // A snapshot older than the committed one is refused, never taken for newer.
        let older = Store::write_snapshot(d.path(), taken - 1, b"old").unwrap();
        let e = s.commit_poll(&poll(Some(older))).unwrap_err();
        assert_eq!(e.kind(), "invalid_request");
        // A newer one replaces it, and its file is the only one left.
        let newer = Store::write_snapshot(d.path(), s.seq(), b"new").unwrap();
        s.commit_poll(&poll(Some(newer.clone()))).unwrap();
        let files: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(SNAPSHOT_PREFIX))
            .collect();
        assert_eq!(files, vec![newer.name]);
        assert_eq!(s.load().unwrap().snapshot.as_deref(), Some(&b"new"[..]));
    }

    /// A complete poll that takes no snapshot still shows in `status`; the cursor stays.
    #[test]
    fn a_poll_without_a_snapshot_is_recorded_and_leaves_the_cursor() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Store::open(d.path()).unwrap();
        s.commit_poll(&PollCommit {
            cursor_ms: Some(100),
            at_ms: 1_000,
            poll_complete: true,
            ..Default::default()
        })
        .unwrap();
        s.note_poll(5_000).unwrap();
        let st = Reader::open(d.path()).unwrap().status().unwrap();
        let at = |ms| crate::clock::fmt_ms(crate::clock::from_ms(ms));
        assert_eq!(st.last_poll, Some(at(5_000)));
        assert_eq!(s.load().unwrap().cursor_ms, Some(100));
    }

    #[test]
    fn pruning_forgets_old_keys_only() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Store::open(d.path()).unwrap();
        s.commit_batch(
            &BatchCommit {
                events: vec![
                    SeenEvent {
                        key: "old".into(),
                        last_updated_ms: 10,
                        carried: Default::default(),
                    },
                    SeenEvent {
                        key: "new".into(),
                        last_updated_ms: 1000,
                        carried: Default::default(),
                    },
                ],
                ..Default::default()
            },
            1,
        )
        .unwrap();
        let n = s
            .commit_poll(&PollCommit {
                cursor_ms: Some(1000),
                at_ms: 1,
                poll_complete: true,
                snapshot: None,
                care_reach: None,
                prune_seen_before_ms: 500,
                prune_alerts_before_ms: 0,
            })
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(
            s.seen_reader()
                .unwrap()
                .filter(&keys(&[(10, "old"), (1000, "new")]))
                .unwrap(),
            vec![KeyStatus::New, KeyStatus::Seen]
        );
    }

    #[test]
    fn status_and_filters() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Store::open(d.path()).unwrap();
        let mut a2 = alert("x|v1");
        a2.severity = Severity::Low;
        a2.user = Some("Practitioner/9".into());
        s.commit_batch(
            &BatchCommit {
                alerts: vec![alert("a|v1"), a2],
                ..Default::default()
            },
            1,
        )
        .unwrap();
        let r = Reader::open(d.path()).unwrap();
        let all = r
            .alerts(&AlertFilter {
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(all.len(), 2);
        assert!(all[0].id > all[1].id, "newest first");
        let high = r
            .alerts(&AlertFilter {
                limit: 10,
                min_severity: Some(Severity::Medium),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(high.len(), 1);
        let by_user = r
            .alerts(&AlertFilter {
                limit: 10,
                user: Some("Practitioner/9".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(by_user.len(), 1);
        let page2 = r
            .alerts(&AlertFilter {
                limit: 1,
                before_id: Some(all[0].id),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(page2[0].id, all[1].id);
        s.set_status(
            all[0].id,
            Status::FalsePositive,
            Some("officer"),
            Some("covering shift"),
            5,
        )
        .unwrap();
        assert_eq!(r.alert(all[0].id).unwrap().status, Status::FalsePositive);
        assert_eq!(
            s.set_status(999, Status::Confirmed, None, None, 5)
                .unwrap_err()
                .kind(),
            "not_found"
        );
        assert_eq!(r.integrity_check().unwrap(), "ok");
    }
}
