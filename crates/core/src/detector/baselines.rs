//! Baselines that travel with a trained model: the context (per-user, per-patient,
//! per-department and site history) as it stood at the end of the training window, and
//! that end as a [`Mark`].
//!
//! `train` writes them next to the weights (`baselines.json`). A daemon whose state is
//! empty starts from them, and `score` continues from them, so a fresh install knows its
//! users from the first event. An event at or before the mark was already learned: it is
//! *passed over* ([`PassOver`]), never alerted on and never learned twice.
//!
//! Rules for a model whose baselines do not fit (documented in the README):
//! - another feature schema or an unreadable file: the model is refused (retrain);
//! - another time zone: refused, naming both zones (the hour baselines would be shifted);
//! - learned from another server than the daemon reads: the daemon starts its baselines
//!   fresh and says so in the journal (see `fhir-edge`'s `app.rs`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::features::{Context, SCHEMA_VERSION};
use crate::fhir::AuditRecord;

/// The file in a model folder.
pub const BASELINES_FILE: &str = "baselines.json";

/// Where the learned history ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// Newest `recorded` time learned, ms since the epoch.
    pub recorded_ms: i64,
    /// The IANA time zone the hour and weekday baselines were learned in.
    pub timezone: String,
    /// Events learned.
    pub events: u64,
    /// When training ran (RFC 3339).
    pub trained_at: String,
    /// Set when learned from a FHIR server (`train --from-server`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerMark>,
}

/// Where a read of a server's AuditEvents ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerMark {
    /// The server's base URL, without credentials.
    pub base_url: String,
    /// Newest `meta.lastUpdated` read, ms since the epoch.
    pub last_updated_ms: i64,
    /// Keys of the events read at exactly that `lastUpdated` (others may share it later).
    pub keys_at: Vec<String>,
    /// The oldest `meta.lastUpdated` of the events read but not learned, when older than
    /// `last_updated_ms`: a model trained `--until` a time on history the server wrote
    /// out of recorded order (bulk loads in parallel) learned none recorded after it,
    /// yet some were written before the mark. A daemon starting from the model reads on
    /// from here ([`ServerMark::read_on_from_ms`]) so that none is missed; what it learned
    /// among them is passed over by its recorded time ([`PassOver::Server`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlearned_from_ms: Option<i64>,
}

impl ServerMark {
    /// Where a daemon starting from the model reads the server on from: the mark, or the
    /// oldest event read but not learned when that is older.
    pub fn read_on_from_ms(&self) -> i64 {
        self.unlearned_from_ms
            .map_or(self.last_updated_ms, |u| u.min(self.last_updated_ms))
    }
}

impl Mark {
    /// The mark at the end of `records` (any order); `server` is the base URL when they
    /// were read from a server.
    pub fn at_end_of(
        records: &[AuditRecord],
        timezone: chrono_tz::Tz,
        server: Option<&str>,
        trained_at: String,
    ) -> Mark {
        let recorded_ms = records
            .iter()
            .map(|r| r.recorded.timestamp_millis())
            .max()
            .unwrap_or(i64::MIN);
        let server = server.and_then(|base_url| {
            let newest = records
                .iter()
                .filter_map(|r| r.last_updated)
                .max()?
                .timestamp_millis();
            let mut keys_at: Vec<String> = records
                .iter()
                .filter(|r| r.last_updated.map(|t| t.timestamp_millis()) == Some(newest))
                .map(|r| r.key.clone())
                .collect();
            keys_at.sort();
            keys_at.dedup();
            Some(ServerMark {
                base_url: base_url.trim_end_matches('/').to_string(),
                last_updated_ms: newest,
                keys_at,
                unlearned_from_ms: None,
            })
        });
        Mark {
            recorded_ms,
            timezone: timezone.name().to_string(),
            events: records.len() as u64,
            trained_at,
            server,
        }
    }

    /// The mark with where the events that were read but not learned (`--until`) begin
    /// to be written ([`oldest_written`]), when before the mark
    /// ([`ServerMark::unlearned_from_ms`]).
    pub fn with_unlearned_from(mut self, oldest_ms: Option<i64>) -> Mark {
        if let Some(s) = self.server.as_mut() {
            s.unlearned_from_ms = oldest_ms.filter(|&t| t < s.last_updated_ms);
        }
        self
    }
}

/// The oldest `meta.lastUpdated` among `records`, ms since the epoch.
pub fn oldest_written<'a>(records: impl Iterator<Item = &'a AuditRecord>) -> Option<i64> {
    records
        .filter_map(|r| r.last_updated)
        .map(|t| t.timestamp_millis())
        .min()
}

/// Why baselines could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BaselinesError {
    #[error("model folder {dir}: cannot read {BASELINES_FILE}: {reason}")]
    Read { dir: PathBuf, reason: String },
    #[error("model folder {dir}: {BASELINES_FILE} is corrupt ({reason}); retrain with `fhir-edge train`")]
    Corrupt { dir: PathBuf, reason: String },
    #[error(
        "model folder {dir}: {BASELINES_FILE} has feature schema {found}, this build expects \
         {SCHEMA_VERSION}; retrain with `fhir-edge train`"
    )]
    Schema { dir: PathBuf, found: u32 },
    #[error(
        "model folder {dir}: its baselines were learned in time zone {learned}, but the site's \
         time zone here is {configured}; set detector.timezone (or --timezone) to {learned}, or \
         retrain with --timezone {configured}"
    )]
    TimeZone {
        dir: PathBuf,
        learned: String,
        configured: String,
    },
    #[error("cannot write {BASELINES_FILE} to {dir}: {reason}")]
    Write { dir: PathBuf, reason: String },
}

impl BaselinesError {
    pub fn kind(&self) -> &'static str {
        match self {
            BaselinesError::Read { .. } => "baselines_unreadable",
            BaselinesError::Corrupt { .. } => "baselines_corrupt",
            BaselinesError::Schema { .. } => "baselines_schema_mismatch",
            BaselinesError::TimeZone { .. } => "baselines_timezone_mismatch",
            BaselinesError::Write { .. } => "baselines_write",
        }
    }
}

/// The file's layout: the mark is read without the (large) context when only it is needed.
#[derive(Serialize)]
struct FileOut<'a> {
    schema_version: u32,
    mark: &'a Mark,
    context: &'a Context,
}

#[derive(Deserialize)]
struct FileIn {
    schema_version: u32,
    mark: Mark,
    context: Box<serde_json::value::RawValue>,
}

/// A model's baselines, read from its folder.
#[derive(Debug)]
pub struct Baselines {
    pub mark: Mark,
    pub context: Context,
}

/// Write the baselines into a model folder (atomically: a temporary file renamed).
pub fn save(dir: &Path, mark: &Mark, context: &Context) -> Result<(), BaselinesError> {
    let werr = |e: std::io::Error| BaselinesError::Write {
        dir: dir.to_path_buf(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(werr)?;
    let tmp = dir.join(format!("{BASELINES_FILE}.tmp"));
    let file = std::fs::File::create(&tmp).map_err(werr)?;
    let mut w = std::io::BufWriter::new(file);
    serde_json::to_writer(
        &mut w,
        &FileOut {
            schema_version: SCHEMA_VERSION,
            mark,
            context,
        },
    )
    .map_err(|e| werr(e.into()))?;
    let file = w.into_inner().map_err(|e| werr(e.into_error()))?;
    file.sync_all().map_err(werr)?;
    std::fs::rename(&tmp, dir.join(BASELINES_FILE)).map_err(werr)
}

/// Whether the folder has baselines (a model trained before they travelled has none).
pub fn present(dir: &Path) -> bool {
    dir.join(BASELINES_FILE).is_file()
}

/// Read a model folder's baselines for a site in time zone `tz`; `Ok(None)` when the
/// model has none.
pub fn load(dir: &Path, tz: chrono_tz::Tz) -> Result<Option<Baselines>, BaselinesError> {
    let path = dir.join(BASELINES_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(BaselinesError::Read {
                dir: dir.to_path_buf(),
                reason: e.to_string(),
            })
        }
    };
    let corrupt = |reason: String| BaselinesError::Corrupt {
        dir: dir.to_path_buf(),
        reason,
    };
    let file: FileIn = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if file.schema_version != SCHEMA_VERSION {
        return Err(BaselinesError::Schema {
            dir: dir.to_path_buf(),
            found: file.schema_version,
        });
    }
    if file.mark.timezone != tz.name() {
        return Err(BaselinesError::TimeZone {
            dir: dir.to_path_buf(),
            learned: file.mark.timezone,
            configured: tz.name().to_string(),
        });
    }
    let context = Context::from_bytes(file.context.get().as_bytes(), tz)
        .map_err(|e| corrupt(e.to_string()))?;
    Ok(Some(Baselines {
        mark: file.mark,
        context,
    }))
}

/// Which events a context seeded from baselines has already learned.
#[derive(Debug, Clone)]
pub enum PassOver {
    /// Events recorded at or before this time (ms): a model trained from files, or a
    /// server other than the one it learned from.
    Recorded(i64),
    /// Events the server had written by the mark: `lastUpdated` before it, or at it with
    /// a key that was read — and recorded by the mark's `recorded` time, as a model
    /// trained `--until` a time learned none recorded after it, whatever their
    /// `lastUpdated` (history written to the server out of recorded order).
    Server {
        last_updated_ms: i64,
        keys_at: HashSet<String>,
        recorded_ms: i64,
    },
}

impl PassOver {
    /// The rule for events recorded anywhere (files, another server).
    pub fn by_recorded(mark: &Mark) -> PassOver {
        PassOver::Recorded(mark.recorded_ms)
    }

    /// The rule for events read again from the server the baselines were learned from.
    pub fn by_server(mark: &Mark) -> PassOver {
        match &mark.server {
            Some(s) => PassOver::Server {
                last_updated_ms: s.last_updated_ms,
                keys_at: s.keys_at.iter().cloned().collect(),
                recorded_ms: mark.recorded_ms,
            },
            None => PassOver::by_recorded(mark),
        }
    }

    /// True when `r` was learned already and must not be scored or learned again.
    pub fn passes_over(&self, r: &AuditRecord) -> bool {
        match self {
            PassOver::Recorded(ms) => r.recorded.timestamp_millis() <= *ms,
            PassOver::Server {
                last_updated_ms,
                keys_at,
                recorded_ms,
            } => match r.last_updated.map(|t| t.timestamp_millis()) {
                Some(t) if t < *last_updated_ms => r.recorded.timestamp_millis() <= *recorded_ms,
                Some(t) if t == *last_updated_ms => keys_at.contains(&r.key),
                Some(_) => false,
                // Without a lastUpdated (a pushed event), only its recorded time tells.
                None => r.recorded.timestamp_millis() <= *recorded_ms,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, recorded: &str, last_updated: Option<&str>) -> AuditRecord {
        let mut r = crate::fhir::AuditEvent {
            resource_type: "AuditEvent".into(),
            id: Some(id.into()),
            recorded: Some(recorded.into()),
            ..Default::default()
        }
        .into_record()
        .unwrap();
        r.last_updated = last_updated.map(|t| {
            chrono::DateTime::parse_from_rfc3339(t)
                .unwrap()
                .with_timezone(&chrono::Utc)
        });
        r
    }

    #[test]
    fn baselines_round_trip_and_refuse_what_does_not_fit() {
        let tz: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
        let mut ctx = Context::new(tz);
        let records = vec![
            rec("a", "2026-01-05T08:00:00Z", Some("2026-01-05T08:00:01Z")),
            rec("b", "2026-01-05T09:00:00Z", Some("2026-01-05T09:00:02Z")),
            rec("c", "2026-01-05T08:30:00Z", Some("2026-01-05T09:00:02Z")),
        ];
        for r in &records {
            ctx.observe(r);
        }
        let mark = Mark::at_end_of(&records, tz, Some("http://h/fhir/"), "now".into());
        assert_eq!(mark.recorded_ms, records[1].recorded.timestamp_millis());
        let s = mark.server.as_ref().unwrap();
        assert_eq!(s.base_url, "http://h/fhir");
        assert_eq!(s.keys_at.len(), 2);
        let d = tempfile::tempdir().unwrap();
        assert!(load(d.path(), tz).unwrap().is_none(), "no baselines: none");
        save(d.path(), &mark, &ctx).unwrap();
        let b = load(d.path(), tz).unwrap().unwrap();
        assert_eq!(b.mark, mark);
        assert_eq!(b.context.to_bytes(), ctx.to_bytes());
        let e = load(d.path(), chrono_tz::UTC).unwrap_err();
        assert_eq!(e.kind(), "baselines_timezone_mismatch");
        assert!(e.to_string().contains("Europe/Berlin"), "{e}");
        std::fs::write(d.path().join(BASELINES_FILE), b"{").unwrap();
        assert_eq!(load(d.path(), tz).unwrap_err().kind(), "baselines_corrupt");
    }

    #[test]
    fn pass_over_follows_the_mark_and_equal_timestamps() {
        let tz = chrono_tz::UTC;
        let learned = vec![
            rec("a", "2026-01-05T08:00:00Z", Some("2026-01-05T08:00:05Z")),
            rec("b", "2026-01-05T08:00:01Z", Some("2026-01-05T08:00:05Z")),
        ];
        let mark = Mark::at_end_of(&learned, tz, Some("http://h/fhir"), "now".into());
        let by_server = PassOver::by_server(&mark);
        assert!(by_server.passes_over(&learned[0]) && by_server.passes_over(&learned[1]));
        // Written at the same instant but not read by training: scored.
        let same_instant = rec("z", "2026-01-05T08:00:00Z", Some("2026-01-05T08:00:05Z"));
        assert!(!by_server.passes_over(&same_instant));
        let older = rec("o", "2026-01-05T07:00:00Z", Some("2026-01-05T08:00:04Z"));
        assert!(by_server.passes_over(&older));
        let newer = rec("n", "2026-01-05T07:59:00Z", Some("2026-01-05T08:00:06Z"));
        assert!(!by_server.passes_over(&newer), "written after the mark");
        let by_recorded = PassOver::by_recorded(&mark);
        assert!(by_recorded.passes_over(&newer), "recorded before the mark");
        assert!(!by_recorded.passes_over(&rec("m", "2026-01-05T08:00:02Z", None)));
        // Written before the mark but recorded after it (a model trained `--until`, the
        // history written out of order): never learned, so scored.
        let later = rec("l", "2026-01-05T09:00:00Z", Some("2026-01-05T08:00:04Z"));
        assert!(!by_server.passes_over(&later));
        // A daemon starting from such a model reads on from where that one was written.
        let s = mark.server.as_ref().unwrap();
        assert_eq!(
            s.read_on_from_ms(),
            s.last_updated_ms,
            "all read was learned"
        );
        let after = rec("w", "2026-01-05T09:00:00Z", Some("2026-01-05T08:00:06Z"));
        let unlearned = oldest_written([&after, &later].into_iter());
        let marked = mark.clone().with_unlearned_from(unlearned);
        let s = marked.server.as_ref().unwrap();
        assert_eq!(
            s.read_on_from_ms(),
            later.last_updated.unwrap().timestamp_millis()
        );
        let marked = mark
            .clone()
            .with_unlearned_from(oldest_written([&after].into_iter()));
        assert_eq!(
            marked, mark,
            "written after the mark: read on from the mark"
        );
    }
}
