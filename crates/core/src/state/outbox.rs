//! The export outbox: every alert, case change and decision to export, written in the
//! transaction that stores it (so a crash never loses or invents one), and per exporter
//! the last position the far side acknowledged.
//!
//! Exporters read after their position, send, and move it forward once acknowledged
//! (`Store::ack_export`); what was sent but not marked is sent again after a crash, and the
//! far side removes the repeat by the message id (NATS's duplicate window; a SIEM by the
//! `msg_id` field). Rows every configured exporter acknowledged are deleted. The outbox
//! holds at most `ExportSetup::max_items`: beyond that the oldest are kept and new items
//! are refused — counted (`export_refused` in `status`), returned to the caller to log, the
//! alert or case itself still stored.

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::Serialize;

use super::{kv_add, kv_get, Reader, StateError, Store};
use crate::alerts::Severity;
use crate::export::{Item, ItemKind};

/// What the store exports and how much it may hold (`Store::set_export`).
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSetup {
    /// `[site] name`, written into every message.
    pub site: String,
    /// The configured exporters by name (`nats`, `syslog`): rows are kept until each of
    /// them has acknowledged them.
    pub exporters: Vec<String>,
    /// Items the outbox may hold before new ones are refused.
    pub max_items: u64,
}

/// One exporter's standing, for `status` and `/api/health`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExportStatus {
    pub exporter: String,
    /// The last outbox position the far side acknowledged.
    pub acked_seq: i64,
    /// Items waiting for it.
    pub backlog: u64,
    /// When the oldest waiting item was written.
    pub oldest_waiting: Option<String>,
}

/// Lifetime count of items refused because the outbox was full.
const REFUSED_KEY: &str = "export_refused";

/// The first and last position held (rows leave only from the head, so every position
/// between is held). Two subqueries: SQLite answers a lone MIN or MAX from the index, but
/// both in one query by scanning the table.
fn span(conn: &Connection) -> rusqlite::Result<Option<(i64, i64)>> {
    let (lo, hi): (Option<i64>, Option<i64>) = conn
        .prepare_cached("SELECT (SELECT MIN(seq) FROM outbox), (SELECT MAX(seq) FROM outbox)")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(lo.zip(hi))
}

/// Items in the outbox.
fn held(conn: &Connection) -> rusqlite::Result<u64> {
    Ok(span(conn)?.map_or(0, |(lo, hi)| (hi - lo + 1) as u64))
}

/// Items after position `acked`, and when the first of them was written.
fn waiting(conn: &Connection, acked: i64) -> rusqlite::Result<(u64, Option<i64>)> {
    let Some((lo, hi)) = span(conn)? else {
        return Ok((0, None));
    };
    let n = (hi - acked.max(lo - 1)).max(0) as u64;
    let oldest = conn
        .prepare_cached("SELECT created_ms FROM outbox WHERE seq > ?1 ORDER BY seq LIMIT 1")?
        .query_row([acked], |r| r.get(0))
        .optional()?;
    Ok((n, oldest))
}

/// Items the outbox still takes before it is full.
pub(super) fn room(tx: &Transaction, setup: &ExportSetup) -> rusqlite::Result<u64> {
    Ok(setup.max_items.saturating_sub(held(tx)?))
}

/// Write one item; `false` (and counted) when the outbox has no room left (`room` is what
/// the caller has left, decremented here).
pub(super) fn push(
    tx: &Transaction,
    setup: &ExportSetup,
    room: &mut u64,
    (kind, id, severity): (ItemKind, i64, Option<Severity>),
    body: &serde_json::Value,
    now_ms: i64,
) -> rusqlite::Result<bool> {
    if *room == 0 {
        kv_add(tx, REFUSED_KEY, 1)?;
        return Ok(false);
    }
    *room -= 1;
    tx.prepare_cached(
        "INSERT INTO outbox(kind, item_id, site, severity, created_ms, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        kind.as_str(),
        id,
        setup.site,
        severity.map(|s| s as i64),
        now_ms,
        body.to_string()
    ])?;
    Ok(true)
}

fn cursor(conn: &Connection, exporter: &str) -> rusqlite::Result<i64> {
    Ok(conn
        .prepare_cached("SELECT acked_seq FROM export_cursors WHERE exporter = ?1")?
        .query_row([exporter], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

fn items_after(conn: &Connection, after: i64, limit: u32) -> rusqlite::Result<Vec<Item>> {
    let mut st = conn.prepare_cached(
        "SELECT seq, kind, item_id, site, severity, created_ms, body FROM outbox
         WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = st.query_map(params![after, limit], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, Option<i64>>(4)?,
            r.get::<_, i64>(5)?,
            r.get::<_, String>(6)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, kind, id, site, severity, created_ms, body) = row?;
        // A kind this build does not know was written by a newer one: skip it rather
        // than stop every export behind it.
        let Some(kind) = ItemKind::parse(&kind) else {
            continue;
        };
        out.push(Item {
            seq,
            kind,
            id,
            site,
            severity: severity.map(Severity::from_i64),
            created_ms,
            body,
        });
    }
    Ok(out)
}

impl Store {
    /// Export from now on as `setup` says (`None`: write nothing to the outbox).
    pub fn set_export(&mut self, setup: Option<ExportSetup>) {
        self.export = setup;
    }

    /// The far side acknowledged everything of `exporter` up to `upto` (positions only move
    /// forward); rows every configured exporter acknowledged are deleted.
    pub fn ack_export(&mut self, exporter: &str, upto: i64) -> Result<(), StateError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO export_cursors(exporter, acked_seq) VALUES (?1, ?2)
             ON CONFLICT(exporter) DO UPDATE SET acked_seq = MAX(acked_seq, excluded.acked_seq)",
            params![exporter, upto],
        )?;
        if let Some(setup) = &self.export {
            let mut all = i64::MAX;
            for e in &setup.exporters {
                all = all.min(cursor(&tx, e)?);
            }
            if all != i64::MAX && all > 0 {
                tx.execute("DELETE FROM outbox WHERE seq <= ?1", [all])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

impl Reader {
    /// The last position `exporter` had acknowledged.
    pub fn export_cursor(&self, exporter: &str) -> Result<i64, StateError> {
        Ok(cursor(&self.conn, exporter)?)
    }

    /// Up to `limit` items after position `after`, oldest first.
    pub fn outbox_after(&self, after: i64, limit: u32) -> Result<Vec<Item>, StateError> {
        Ok(items_after(&self.conn, after, limit)?)
    }

    /// Where each exporter that ever acknowledged something (and each of `also`) stands.
    pub fn export_status(&self, also: &[&str]) -> Result<Vec<ExportStatus>, StateError> {
        let mut names: Vec<String> = self
            .conn
            .prepare("SELECT exporter FROM export_cursors ORDER BY exporter")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for a in also {
            if !names.iter().any(|n| n == a) {
                names.push(a.to_string());
            }
        }
        names
            .into_iter()
            .map(|exporter| {
                let acked_seq = cursor(&self.conn, &exporter)?;
                let (backlog, oldest) = waiting(&self.conn, acked_seq)?;
                Ok(ExportStatus {
                    exporter,
                    acked_seq,
                    backlog,
                    oldest_waiting: oldest
                        .map(|ms| crate::clock::fmt_ms(crate::clock::from_ms(ms))),
                })
            })
            .collect()
    }

    /// Items refused because the outbox was full, over the database's life.
    pub fn export_refused(&self) -> Result<u64, StateError> {
        Ok(kv_get(&self.conn, REFUSED_KEY)?.unwrap_or(0) as u64)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::alerts::{AlertKind, NewAlert};
    use crate::state::{BatchCommit, SeenEvent};

    fn alert(key: &str, user: &str, at_ms: i64) -> NewAlert {
        NewAlert {
            event_key: key.into(),
            event_id: format!("ev-{key}"),
            event_version: None,
            recorded_ms: at_ms,
            score: 3.0,
            severity: Severity::High,
            summary: "s".into(),
            explanation: vec!["e".into()],
            kinds: vec![AlertKind::BulkAccess],
            user: Some(user.into()),
            user_display: None,
            patient: Some("Patient/1".into()),
            source_ip: None,
            client_app: None,
            action: None,
            interaction: "read".into(),
            raw: "{}".into(),
            evidence: crate::alerts::Evidence::Single,
        }
    }

    pub(in crate::state) fn batch(keys: &[&str], at_ms: i64) -> BatchCommit {
        BatchCommit {
            events: keys
                .iter()
                .map(|k| SeenEvent {
                    key: k.to_string(),
                    last_updated_ms: at_ms,
                    carried: Default::default(),
                })
                .collect(),
            alerts: keys
                .iter()
                .map(|k| alert(k, "Practitioner/1", at_ms))
                .collect(),
            ..Default::default()
        }
    }

    pub(in crate::state) fn setup(max: u64) -> ExportSetup {
        ExportSetup {
            site: "north".into(),
            exporters: vec!["nats".into(), "syslog".into()],
            max_items: max,
        }
    }

    #[test]
    fn alerts_and_their_cases_enter_the_outbox_with_them_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        store.set_export(Some(setup(1000)));
        let t = 1_700_000_000_000;
        store.commit_batch(&batch(&["a", "b"], t), t).unwrap();
        // The same events again (an overlap re-read): nothing new to export.
        store.commit_batch(&batch(&["a", "b"], t), t).unwrap();
        let r = Reader::open(dir.path()).unwrap();
        let items = r.outbox_after(0, 100).unwrap();
        let kinds: Vec<ItemKind> = items.iter().map(|i| i.kind).collect();
        assert_eq!(kinds, [ItemKind::Alert, ItemKind::Alert, ItemKind::Case]);
        let case: serde_json::Value = serde_json::from_str(&items[2].body).unwrap();
        assert_eq!(case["alerts"], 2);
        assert_eq!(items[0].msg_id(), "north.alert.1");
        let alerts = r.alerts_upto(&Default::default(), 10).unwrap();
        let mut ids: Vec<i64> = alerts.iter().map(|a| a.id).collect();
        ids.sort_unstable();
        assert_eq!(
            ids,
            items
                .iter()
                .filter(|i| i.kind == ItemKind::Alert)
                .map(|i| i.id)
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn rows_leave_when_every_exporter_acknowledged_them_and_positions_never_go_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        store.set_export(Some(setup(1000)));
        let t = 1_700_000_000_000;
        store.commit_batch(&batch(&["a", "b", "c"], t), t).unwrap();
        let r = Reader::open(dir.path()).unwrap();
        assert_eq!(r.outbox_after(0, 100).unwrap().len(), 4);
        store.ack_export("nats", 3).unwrap();
        // syslog has acknowledged nothing: every row stays.
        assert_eq!(r.outbox_after(0, 100).unwrap().len(), 4);
        store.ack_export("syslog", 2).unwrap();
        assert_eq!(r.outbox_after(0, 100).unwrap().len(), 2);
        store.ack_export("nats", 1).unwrap();
        assert_eq!(r.export_cursor("nats").unwrap(), 3);
        let st = r.export_status(&[]).unwrap();
        assert_eq!(st.len(), 2);
        assert_eq!(st[0].exporter, "nats");
        assert_eq!(st[0].backlog, 1);
        assert_eq!(st[1].backlog, 2);
    }

    #[test]
    fn a_full_outbox_keeps_the_oldest_and_refuses_new_items_loudly() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        store.set_export(Some(setup(3)));
        let t = 1_700_000_000_000;
        let out = store.commit_batch(&batch(&["a", "b"], t), t).unwrap();
        assert_eq!(out.exports_refused, 0);
        let out = store.commit_batch(&batch(&["c", "d"], t), t).unwrap();
        // Three held (alert a, alert b, the case); c, d and the case's change refused.
        assert_eq!(out.exports_refused, 3);
        let r = Reader::open(dir.path()).unwrap();
        let items = r.outbox_after(0, 100).unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].id, 1);
        assert_eq!(r.export_refused().unwrap(), 3);
        // The alerts themselves are stored all the same.
        assert_eq!(r.alerts_upto(&Default::default(), 10).unwrap().len(), 4);
        // Acknowledged rows make room again.
        store.ack_export("nats", 3).unwrap();
        store.ack_export("syslog", 3).unwrap();
        let out = store.commit_batch(&batch(&["e"], t), t).unwrap();
        assert_eq!(out.exports_refused, 0);
    }

    #[test]
    fn without_an_exporter_nothing_is_written_and_decisions_are_exported() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let t = 1_700_000_000_000;
        store.commit_batch(&batch(&["a"], t), t).unwrap();
        let r = Reader::open(dir.path()).unwrap();
        assert!(r.outbox_after(0, 100).unwrap().is_empty());
        store.set_export(Some(setup(100)));
        store
            .set_status(
                1,
                crate::alerts::Status::Confirmed,
                Some("po"),
                Some("Ann"),
                t,
            )
            .unwrap();
        let d = crate::cases::CaseDecision {
            status: crate::cases::CaseStatus::Closed,
            resolution: Some(crate::cases::Resolution::Inappropriate),
            by: Some("po".into()),
            note: Some("talked to Ann Smith".into()),
        };
        store.set_case_status(1, &d, t).unwrap();
        let items = r.outbox_after(0, 100).unwrap();
        let kinds: Vec<ItemKind> = items.iter().map(|i| i.kind).collect();
        assert_eq!(kinds, [ItemKind::Status, ItemKind::Status, ItemKind::Case]);
        let s: serde_json::Value = serde_json::from_str(&items[1].body).unwrap();
        assert_eq!(s["of"], "case");
        assert_eq!(s["resolution"], "inappropriate");
        assert!(items.iter().all(|i| !i.body.contains("Ann")));
    }
}
