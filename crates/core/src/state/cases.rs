//! Cases in the state database: filed in the transaction that stores their alerts (so a
//! crash never splits or doubles one), read with their alerts, decided. A case opens as
//! `new` or `watching` by [`crate::cases::queued`]; an alert that corroborates a watched
//! case (another patient or another behaviour, [`Corroboration`]) makes it new; a watched
//! case is not journaled.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::{alert_from_row, Page, Reader, StateError, Store, ALERT_COLS};
use crate::alerts::{Alert, AlertKind, AllowRule, Evidence, NewAlert, Severity};
use crate::cases::{
    implied_rules, narrative, queued, queued_on_its_own, raised, title, Case, CaseAlert,
    CaseDecision, CaseEvent, CaseFilter, CaseNote, CaseRule, CaseStatus, Corroboration, Journaled,
    HISTORY_DAYS,
};

const DAY_MS: i64 = 86_400_000;

/// File a just-stored alert into its user's open case, or open one; the case's id.
pub(super) fn file(
    tx: &Transaction,
    alert_id: i64,
    user: Option<&str>,
    a: &NewAlert,
    rule: &CaseRule,
) -> rusqlite::Result<i64> {
    let filed = Filed {
        at_ms: a.recorded_ms,
        score: a.score,
        severity: a.severity,
        kind: AlertKind::strongest(&a.kinds),
        patient: a.patient.clone(),
        evidence: a.evidence,
    };
    file_one(tx, alert_id, user.unwrap_or(""), filed, rule)
}

/// What filing needs of an alert.
#[derive(Debug)]
struct Filed {
    at_ms: i64,
    score: f64,
    severity: Severity,
    /// Its strongest behaviour.
    kind: AlertKind,
    patient: Option<String>,
    /// What it brings to its case's corroboration.
    evidence: Evidence,
}

/// When a case of `user` other than `case` was last closed as inappropriate, from
/// `HISTORY_DAYS` before `at_ms` until `until_ms`.
fn inappropriate_before(
    conn: &Connection,
    user: &str,
    case: i64,
    (at_ms, until_ms): (i64, i64),
) -> rusqlite::Result<Option<i64>> {
    if user.is_empty() {
        return Ok(None);
    }
    conn.prepare_cached(
        "SELECT MAX(status_at_ms) FROM cases WHERE user_ref = ?1 AND resolution = 'inappropriate'
         AND status_at_ms >= ?2 - ?4 AND status_at_ms <= ?3 AND id != ?5",
    )?
    .query_row(
        params![user, at_ms, until_ms, HISTORY_DAYS * DAY_MS, case],
        |r| r.get(0),
    )
}

/// Whether alert `a` corroborates watched case `case`: judged against the case's first
/// alert ([`Corroboration`]).
fn corroborates(conn: &Connection, case: i64, a: &Filed) -> rusqlite::Result<bool> {
    if a.evidence == Evidence::Twice {
        return Ok(true);
    }
    let first: Option<(Option<String>, String)> = conn
        .prepare_cached(
            "SELECT patient_ref, kinds FROM alerts WHERE case_id = ?1 ORDER BY recorded_ms, id
             LIMIT 1",
        )?
        .query_row([case], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(match first {
        None => false,
        Some((first_patient, kinds)) => {
            let first_kind = AlertKind::strongest(
                &serde_json::from_str::<Vec<AlertKind>>(&kinds).unwrap_or_default(),
            );
            // The first alert's own evidence was judged when it was filed.
            Corroboration::first(first_patient.as_deref(), first_kind, Evidence::Single)
                .independent(a.patient.as_deref(), a.kind, a.evidence)
        }
    })
}

fn file_one(
    conn: &Connection,
    alert_id: i64,
    user: &str,
    a: Filed,
    rule: &CaseRule,
) -> rusqlite::Result<i64> {
    // After an inappropriate case, the user's cases are weighted higher.
    let flagged = inappropriate_before(conn, user, -1, (a.at_ms, a.at_ms))?.is_some();
    let severity = if flagged {
        raised(a.severity)
    } else {
        a.severity
    };
    let open: Option<(i64, i64, i64, CaseStatus)> = conn
        .prepare_cached(
            "SELECT id, first_ms, last_ms, status FROM cases
             WHERE user_ref = ?1 AND status != 'closed' ORDER BY last_ms DESC LIMIT 1",
        )?
        .query_row([user], |r| {
            let status = r.get::<_, String>(3)?.parse().unwrap_or(CaseStatus::New);
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, status))
        })
        .optional()?;
    let on_its_own = flagged || queued_on_its_own(severity, a.kind, a.evidence);
    // (case, whether the alert is a later episode of it)
    let joined = match open {
        Some((id, first, last, status)) if rule.joins(first, last, a.at_ms) => {
            Some((id, status, false))
        }
        // A later episode that would reach the queue on its own joins the user's case
        // in the queue.
        _ if on_its_own => conn
            .prepare_cached(
                "SELECT id, last_ms FROM cases WHERE user_ref = ?1
                 AND status IN ('new', 'in_review') ORDER BY last_ms DESC LIMIT 1",
            )?
            .query_row([user], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
            .optional()?
            .filter(|&(_, last)| rule.follows(user, last, a.at_ms))
            .map(|(id, _)| (id, CaseStatus::New, true)),
        _ => None,
    };
    let id = match joined {
        Some((id, status, episode)) => {
            // An alert that corroborates a watched case, or is strong or specific on
            // its own, brings the case to the queue (a followed case is in it already).
            let to_queue = status == CaseStatus::Watching
                && queued(corroborates(conn, id, &a)?, severity, a.kind);
            conn.prepare_cached(
                "UPDATE cases SET first_ms = MIN(first_ms, ?2), last_ms = MAX(last_ms, ?2),
                 alerts = alerts + 1, score = MAX(score, ?3), severity = MAX(severity, ?4),
                 status = CASE WHEN ?5 THEN 'new' ELSE status END,
                 episodes = episodes + ?6
                 WHERE id = ?1",
            )?
            .execute(params![
                id,
                a.at_ms,
                a.score,
                severity as i64,
                to_queue,
                i64::from(episode)
            ])?;
            id
        }
        None => {
            let status = if on_its_own {
                CaseStatus::New
            } else {
                CaseStatus::Watching
            };
            conn.prepare_cached(
                "INSERT INTO cases(user_ref, first_ms, last_ms, opened_ms, alerts, score, severity,
                 status)
                 VALUES (?1, ?2, ?2, ?2, 1, ?3, ?4, ?5)",
            )?
            .execute(params![
                user,
                a.at_ms,
                a.score,
                severity as i64,
                status.as_str()
            ])?;
            conn.last_insert_rowid()
        }
    };
    conn.prepare_cached("UPDATE alerts SET case_id = ?2 WHERE id = ?1")?
        .execute(params![alert_id, id])?;
    Ok(id)
}

/// File alerts stored before cases existed (an upgraded database), oldest first; they
/// count as journaled (the journal had them as alerts).
pub(super) fn file_orphans(conn: &mut Connection, rule: &CaseRule) -> Result<(), StateError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let orphans: Vec<(i64, String, Filed)> = {
        let mut st = tx.prepare(
            "SELECT id, COALESCE(user_ref, ''), recorded_ms, score, severity, kinds, patient_ref
             FROM alerts WHERE case_id IS NULL ORDER BY recorded_ms, id",
        )?;
        let rows = st.query_map([], |r| {
            let kinds: Vec<AlertKind> =
                serde_json::from_str(&r.get::<_, String>(5)?).unwrap_or_default();
            let filed = Filed {
                at_ms: r.get(2)?,
                score: r.get(3)?,
                severity: Severity::from_i64(r.get(4)?),
                kind: AlertKind::strongest(&kinds),
                patient: r.get(6)?,
                evidence: Evidence::Single,
            };
            Ok((r.get(0)?, r.get(1)?, filed))
        })?;
        rows.collect::<Result<_, _>>()?
    };
    if orphans.is_empty() {
        return Ok(());
    }
    for (id, user, filed) in orphans {
        file_one(&tx, id, &user, filed, rule)?;
    }
    tx.execute(
        "UPDATE cases SET journaled_severity = severity, journaled_episodes = episodes",
        [],
    )?;
    tx.commit()?;
    Ok(())
}

fn case_alerts(conn: &Connection, id: i64) -> rusqlite::Result<Vec<CaseAlert>> {
    let mut st = conn.prepare_cached(
        "SELECT id, event_id, recorded_ms, score, severity, kinds, explanation, patient_ref,
                client_app, source_ip
         FROM alerts WHERE case_id = ?1 ORDER BY recorded_ms, id",
    )?;
    let rows = st.query_map([id], |r| {
        let kinds: String = r.get(5)?;
        let explanation: String = r.get(6)?;
        Ok(CaseAlert {
            alert_id: r.get(0)?,
            event_id: r.get(1)?,
            recorded_ms: r.get(2)?,
            score: r.get(3)?,
            severity: Severity::from_i64(r.get(4)?),
            kinds: serde_json::from_str(&kinds).unwrap_or_default(),
            explanation: serde_json::from_str(&explanation).unwrap_or_default(),
            patient: r.get(7)?,
            client_app: r.get(8)?,
            source_ip: r.get(9)?,
        })
    })?;
    rows.collect()
}

const CASE_COLS: &str =
    "id, user_ref, first_ms, last_ms, opened_ms, alerts, score, severity, status,
    resolution, status_by, status_at_ms, status_note, episodes";

fn case_from_row(conn: &Connection, r: &rusqlite::Row) -> rusqlite::Result<Case> {
    let fmt = |ms: i64| crate::clock::fmt_ms(crate::clock::from_ms(ms));
    let id: i64 = r.get(0)?;
    let user: String = r.get(1)?;
    let opened_ms: i64 = r.get(4)?;
    let alerts = case_alerts(conn, id)?;
    let earlier: i64 = conn
        .prepare_cached(
            "SELECT COUNT(*) FROM cases WHERE user_ref = ?1 AND id != ?2
             AND opened_ms < ?3 AND opened_ms >= ?3 - ?4",
        )?
        .query_row(params![user, id, opened_ms, HISTORY_DAYS * DAY_MS], |r| {
            r.get(0)
        })?;
    let mut patients: Vec<&str> = alerts.iter().filter_map(|a| a.patient.as_deref()).collect();
    patients.sort_unstable();
    patients.dedup();
    let last_ms: i64 = r.get(3)?;
    let inappropriate = inappropriate_before(conn, &user, id, (opened_ms, last_ms))?;
    let episodes = r.get::<_, i64>(13)? as u64;
    Ok(Case {
        id,
        title: title(&alerts),
        narrative: narrative(&alerts, episodes, earlier as u64, inappropriate),
        kind: crate::cases::dominant_kind(&alerts),
        user: (!user.is_empty()).then_some(user),
        first: fmt(r.get(2)?),
        last: fmt(r.get(3)?),
        alerts: r.get::<_, i64>(5)? as u64,
        episodes,
        patients: patients.len() as u64,
        score: r.get(6)?,
        severity: Severity::from_i64(r.get(7)?),
        status: r.get::<_, String>(8)?.parse().unwrap_or(CaseStatus::New),
        resolution: r.get::<_, Option<String>>(9)?.and_then(|s| s.parse().ok()),
        status_by: r.get(10)?,
        status_at: r.get::<_, Option<i64>>(11)?.map(fmt),
        status_note: r.get(12)?,
        earlier_cases: earlier as u64,
    })
}

fn case_by_id(conn: &Connection, id: i64) -> Result<Case, StateError> {
    let sql = format!("SELECT {CASE_COLS} FROM cases WHERE id = ?1");
    conn.query_row(&sql, [id], |r| case_from_row(conn, r))
        .optional()?
        .ok_or(StateError::NotFound)
}

/// Cases whose severity is above the one last journaled, or with more episodes than last
/// journaled (not watched ones): among `only` (the cases a batch touched, each read by
/// id), or all of them (at start, after a crash).
pub(super) fn to_journal(
    conn: &Connection,
    only: Option<&[i64]>,
) -> rusqlite::Result<Vec<CaseNote>> {
    const DUE: &str = "(severity > journaled_severity OR episodes > journaled_episodes)
        AND status != 'watching'";
    type Row = (i64, String, i64, i64, i64, i64);
    let row = |r: &rusqlite::Row| -> rusqlite::Result<Row> {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
        ))
    };
    let cols = "SELECT id, user_ref, severity, journaled_severity, alerts, episodes FROM cases";
    let rows: Vec<Row> = match only {
        Some(ids) => {
            let mut st = conn.prepare_cached(&format!("{cols} WHERE id = ?1 AND {DUE}"))?;
            let mut out = Vec::new();
            for id in ids {
                out.extend(st.query_row([id], row).optional()?);
            }
            out
        }
        None => conn
            .prepare(&format!("{cols} WHERE {DUE} ORDER BY id"))?
            .query_map([], row)?
            .collect::<Result<_, _>>()?,
    };
    rows.into_iter()
        .map(|(id, user, sev, journaled, alerts, episodes)| {
            Ok(CaseNote {
                id,
                user: (!user.is_empty()).then_some(user),
                severity: Severity::from_i64(sev),
                title: title(&case_alerts(conn, id)?),
                alerts: alerts as u64,
                episodes: episodes as u64,
                event: match journaled {
                    0 => CaseEvent::Opened,
                    j if sev > j => CaseEvent::Escalated,
                    _ => CaseEvent::Episode,
                },
            })
        })
        .collect()
}

/// Write the case `id` as it now stands to the export outbox; `false` when it was full.
pub(super) fn export(
    tx: &Transaction,
    setup: &super::ExportSetup,
    room: &mut u64,
    id: i64,
    now_ms: i64,
) -> Result<bool, StateError> {
    let case = case_by_id(tx, id)?;
    let body = crate::export::case_message(&setup.site, &case, now_ms);
    let item = (crate::export::ItemKind::Case, id, Some(case.severity));
    Ok(super::outbox::push(tx, setup, room, item, &body, now_ms)?)
}

impl Store {
    /// Record that cases reached the journal at these severities and episodes.
    pub fn mark_cases_journaled(&mut self, cases: &[Journaled]) -> Result<(), StateError> {
        if cases.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "UPDATE cases SET journaled_severity = MAX(journaled_severity, ?2),
                 journaled_episodes = MAX(journaled_episodes, ?3) WHERE id = ?1",
            )?;
            for c in cases {
                st.execute(params![c.id, c.severity as i64, c.episodes as i64])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Cases opened or escalated but not journaled (a crash came in between).
    pub fn unjournaled_cases(&self) -> Result<Vec<CaseNote>, StateError> {
        Ok(to_journal(&self.conn, None)?)
    }

    /// Decide a case. Closing it as appropriate or a false positive returns the allow-list
    /// rules it implies (offered, not applied).
    pub fn set_case_status(
        &mut self,
        id: i64,
        d: &CaseDecision,
        now_ms: i64,
    ) -> Result<(Case, Vec<AllowRule>), StateError> {
        d.check()?;
        let tx = self.conn.transaction()?;
        let n = tx.execute(
            "UPDATE cases SET status = ?2, resolution = ?3, status_by = ?4, status_note = ?5,
                status_at_ms = ?6 WHERE id = ?1",
            params![
                id,
                d.status.as_str(),
                d.resolution.map(|r| r.as_str()),
                d.by,
                d.note,
                now_ms
            ],
        )?;
        if n == 0 {
            return Err(StateError::NotFound);
        }
        if let Some(setup) = &self.export {
            let of = crate::export::ItemKind::Case;
            let body = crate::export::status_message(
                &setup.site,
                of,
                id,
                d.status.as_str(),
                d.resolution.map(|r| r.as_str()),
                d.by.as_deref(),
                now_ms,
            );
            let mut room = super::outbox::room(&tx, setup)?;
            let item = (crate::export::ItemKind::Status, id, None);
            super::outbox::push(&tx, setup, &mut room, item, &body, now_ms)?;
            export(&tx, setup, &mut room, id, now_ms)?;
        }
        let case = case_by_id(&tx, id)?;
        let rules = match d.resolution {
            Some(crate::cases::Resolution::Appropriate)
            | Some(crate::cases::Resolution::FalsePositive) => {
                implied_rules(case.user.as_deref(), &case_alerts(&tx, id)?)
            }
            _ => Vec::new(),
        };
        tx.commit()?;
        Ok((case, rules))
    }
}

impl Reader {
    /// Cases newest first (by id), filtered; `before_id` pages.
    /// Up to `limit` cases matching `f` (its own `before_id` and `limit` aside), newest
    /// first, read a page of `MAX_ALERTS_PAGE` at a time.
    pub fn cases_upto(&self, f: &CaseFilter, limit: usize) -> Result<Vec<Case>, StateError> {
        super::read_pages(
            limit,
            |before_id, want| {
                self.cases(&CaseFilter {
                    before_id,
                    limit: want,
                    ..f.clone()
                })
            },
            |c| c.id,
        )
    }

    pub fn cases(&self, f: &CaseFilter) -> Result<Vec<Case>, StateError> {
        let scope = f.scope.sql();
        let mut q = Page::new(format!("SELECT {CASE_COLS} FROM cases WHERE 1 = 1{scope}"));
        q.and_opt("last_ms >=", f.since_ms);
        q.and_opt("status =", f.status.map(|s| s.as_str().to_string()));
        q.and_opt("severity >=", f.min_severity.map(|s| s as i64));
        q.and_opt("user_ref =", f.user.clone());
        q.rows(&self.conn, f.before_id, f.limit, |r| {
            case_from_row(&self.conn, r)
        })
    }

    /// One case with its alerts (oldest first).
    pub fn case(&self, id: i64) -> Result<(Case, Vec<Alert>), StateError> {
        let case = case_by_id(&self.conn, id)?;
        let sql =
            format!("SELECT {ALERT_COLS} FROM alerts WHERE case_id = ?1 ORDER BY recorded_ms, id");
        let mut st = self.conn.prepare(&sql)?;
        let alerts = st
            .query_map([id], |r| alert_from_row(r, false))?
            .collect::<Result<_, _>>()?;
        Ok((case, alerts))
    }

    /// How many cases are in each status (every status listed).
    pub fn case_counts(&self) -> Result<BTreeMap<&'static str, u64>, StateError> {
        let mut out: BTreeMap<&'static str, u64> =
            CaseStatus::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        let mut st = self
            .conn
            .prepare("SELECT status, COUNT(*) FROM cases GROUP BY status")?;
        for row in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
            let (s, n) = row?;
            if let Ok(s) = s.parse::<CaseStatus>() {
                out.insert(s.as_str(), n as u64);
            }
        }
        Ok(out)
    }
}
