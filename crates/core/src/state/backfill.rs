//! Back-fill of the export: what was stored before an exporter was configured (or what a
//! far side lost), written to the outbox again as it stands now.
//!
//! A back-fill is checked first ([`Store::plan_backfill`]: counted, and refused unless the
//! outbox has room for all of it) and then written in steps of at most
//! [`BACKFILL_STEP`] items, one transaction each ([`Store::backfill_step`]), so that a
//! back-fill of a year holds neither every alert in memory nor the state's writes for the
//! whole time: the daemon sends the steps one by one and the pipeline's commits go on in
//! between. What is sent is fixed when it is planned (alerts and cases up to the newest
//! then); what follows is exported as usual. A back-fill stopped half way (a restart, the
//! outbox filled by new alerts meanwhile) has written whole steps: running it again sends
//! those again, which receivers drop (an alert keeps its message id) or take as a newer
//! version (a case).

use serde::Serialize;

use super::{cases, outbox, ExportSetup, StateError, Store};
use crate::export::ItemKind;

/// The most items one step of a back-fill writes (one transaction).
pub const BACKFILL_STEP: usize = 1_000;

/// What a back-fill wrote to the outbox, or has to write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Backfilled {
    pub alerts: u64,
    pub cases: u64,
}

impl Backfilled {
    pub fn items(&self) -> u64 {
        self.alerts + self.cases
    }
}

/// A back-fill checked and under way: what it sends (fixed when planned) and how far it got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backfill {
    pub since_ms: i64,
    /// What it sends in all.
    pub total: Backfilled,
    /// What it has written so far.
    pub written: Backfilled,
    /// The newest alert and case when it was planned; later ones are not its business.
    alerts_upto: i64,
    cases_upto: i64,
    /// The last alert and case written, and whether each list is through.
    alert_after: i64,
    case_after: i64,
    alerts_done: bool,
    cases_done: bool,
}

impl Backfill {
    pub fn done(&self) -> bool {
        self.alerts_done && self.cases_done
    }
}

impl Store {
    fn export_setup(&self) -> Result<ExportSetup, StateError> {
        self.export.clone().ok_or_else(|| {
            StateError::Invalid(
                "export is not configured: add [export.nats] or [export.syslog] first".into(),
            )
        })
    }

    /// Check a back-fill of the alerts stored and the cases active (their last alert) at or
    /// after `since_ms`: for an exporter configured after they were stored, or a far side
    /// that lost them. Every configured exporter gets them again. Refused when export is
    /// not configured, or when the outbox has not room for every item (saying how much it
    /// has). Reads counts only; nothing is written until [`Store::backfill_step`].
    pub fn plan_backfill(&self, since_ms: i64) -> Result<Backfill, StateError> {
        let setup = self.export_setup()?;
        let tx = self.conn.unchecked_transaction()?;
        // How many rows of `table` have `at` from `since_ms` on, and its newest id now.
        let count = |table: &str, at: &str| -> rusqlite::Result<(u64, i64)> {
            tx.query_row(
                &format!(
                    "SELECT COUNT(*), (SELECT COALESCE(MAX(id), 0) FROM {table})
                     FROM {table} WHERE {at} >= ?1"
                ),
                [since_ms],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
            )
        };
        let (alerts, alerts_upto) = count("alerts", "detected_ms")?;
        let (cases, cases_upto) = count("cases", "last_ms")?;
        let room = outbox::room(&tx, &setup)?;
        let total = Backfilled { alerts, cases };
        if total.items() > room {
            return Err(StateError::Invalid(format!(
                "the back-fill needs {} items ({alerts} alerts, {cases} cases) and the outbox has \
                 room for {room} ([export] max_items {}): choose a later `since`, or let the \
                 exporters catch up first",
                total.items(),
                setup.max_items
            )));
        }
        Ok(Backfill {
            since_ms,
            total,
            written: Backfilled::default(),
            alerts_upto,
            cases_upto,
            alert_after: 0,
            case_after: 0,
            alerts_done: alerts == 0,
            cases_done: cases == 0,
        })
    }

    /// Write the next step of a back-fill to the outbox (at most `max_items` items, one
    /// transaction), as they stand now: alerts first, in order, under their own `msg_id`
    /// (a broker's duplicate window or a SIEM removes a repeat), then cases, each as a new
    /// version of itself. Refused, with nothing of the step written, when the outbox has
    /// filled up since the plan (saying how far the back-fill got).
    pub fn backfill_step(
        &mut self,
        b: &mut Backfill,
        max_items: usize,
        now_ms: i64,
    ) -> Result<(), StateError> {
        let setup = self.export_setup()?;
        let tx = self.conn.transaction()?;
        let mut room = outbox::room(&tx, &setup)?;
        let left = b.total.items().saturating_sub(b.written.items()).max(1);
        let step = left.min(max_items.max(1) as u64);
        let full = |written: Backfilled, room: u64| {
            StateError::Invalid(format!(
                "the outbox filled up during the back-fill: {} of {} items written, room for \
                 {room} more ([export] max_items {}); let the exporters catch up, then run it \
                 again (receivers drop the alerts sent twice)",
                written.items(),
                b.total.items(),
                setup.max_items
            ))
        };
        if step > room {
            return Err(full(b.written, room));
        }
        let mut next = b.clone();
        let mut budget = step;
        if !next.alerts_done {
            let mut st = tx.prepare(&format!(
                "SELECT {}, case_id, recorded_ms, detected_ms FROM alerts
                 WHERE id > ?1 AND id <= ?2 AND detected_ms >= ?3 ORDER BY id LIMIT ?4",
                super::ALERT_COLS
            ))?;
            let mut rows = st.query(rusqlite::params![
                next.alert_after,
                next.alerts_upto,
                next.since_ms,
                budget as i64
            ])?;
            let mut got = 0;
            while let Some(r) = rows.next()? {
                let a = super::alert_from_row(r, false)?;
                let body = crate::export::stored_alert_message(
                    &setup.site,
                    &a,
                    r.get(23)?,
                    (r.get(24)?, r.get(25)?),
                );
                let item = (ItemKind::Alert, a.id, Some(a.severity));
                if !outbox::push(&tx, &setup, &mut room, item, &body, now_ms)? {
                    return Err(full(next.written, 0));
                }
                next.alert_after = a.id;
                next.written.alerts += 1;
                got += 1;
            }
            // Through when the list ran short, or when the plan's count is written (so an
            // exact last step is not followed by an empty one).
            next.alerts_done = got < budget || next.written.alerts >= next.total.alerts;
            budget -= got;
        }
        if budget > 0 && !next.cases_done {
            let ids: Vec<i64> = tx
                .prepare(
                    "SELECT id FROM cases WHERE id > ?1 AND id <= ?2 AND last_ms >= ?3
                     ORDER BY id LIMIT ?4",
                )?
                .query_map(
                    rusqlite::params![
                        next.case_after,
                        next.cases_upto,
                        next.since_ms,
                        budget as i64
                    ],
                    |r| r.get(0),
                )?
                .collect::<Result<_, _>>()?;
            for id in &ids {
                if !cases::export(&tx, &setup, &mut room, *id, now_ms)? {
                    return Err(full(next.written, 0));
                }
                next.case_after = *id;
                next.written.cases += 1;
            }
            next.cases_done = (ids.len() as u64) < budget || next.written.cases >= next.total.cases;
        }
        tx.commit()?;
        *b = next;
        Ok(())
    }

    /// A whole back-fill at once ([`Store::plan_backfill`], then every step).
    pub fn backfill_export(
        &mut self,
        since_ms: i64,
        now_ms: i64,
    ) -> Result<Backfilled, StateError> {
        let mut b = self.plan_backfill(since_ms)?;
        while !b.done() {
            self.backfill_step(&mut b, BACKFILL_STEP, now_ms)?;
        }
        Ok(b.written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::Item;
    use crate::state::outbox::tests::{batch, setup};
    use crate::state::Reader;

    /// Alerts stored before export was configured reach it by a back-fill, as they stand
    /// now, with the message ids they would have had; all or nothing.
    #[test]
    fn a_back_fill_exports_what_was_stored_before_as_it_stands_now() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let t = 1_700_000_000_000;
        store.commit_batch(&batch(&["a", "b"], t), t).unwrap();
        store
            .commit_batch(&batch(&["c"], t + 1000), t + 1000)
            .unwrap();
        store
            .set_status(
                1,
                crate::alerts::Status::Confirmed,
                Some("po"),
                Some("Ann Smith"),
                t + 5,
            )
            .unwrap();
        let r = Reader::open(dir.path()).unwrap();
        assert!(r.outbox_after(0, 100).unwrap().is_empty(), "no export yet");
        let e = store.backfill_export(0, t + 10).unwrap_err();
        assert!(e.to_string().contains("export is not configured"), "{e}");

        // Room for two items, three alerts and a case to send: refused, nothing written.
        store.set_export(Some(setup(2)));
        let e = store.backfill_export(0, t + 10).unwrap_err();
        assert!(
            e.to_string().contains("needs 4 items (3 alerts, 1 cases)"),
            "{e}"
        );
        assert!(r.outbox_after(0, 100).unwrap().is_empty());

        store.set_export(Some(setup(100)));
        // Only what was stored from t + 1000: alert 3, and the case it is in.
        assert_eq!(
            store.backfill_export(t + 1000, t + 10).unwrap(),
            Backfilled {
                alerts: 1,
                cases: 1
            }
        );
        assert_eq!(
            store.backfill_export(0, t + 10).unwrap(),
            Backfilled {
                alerts: 3,
                cases: 1
            }
        );
        let items = r.outbox_after(2, 100).unwrap();
        let ids: Vec<String> = items.iter().map(Item::msg_id).collect();
        assert_eq!(
            ids,
            [
                "north.alert.1",
                "north.alert.2",
                "north.alert.3",
                "north.case.1.6"
            ]
        );
        let first: serde_json::Value = serde_json::from_str(&items[0].body).unwrap();
        assert_eq!(first["status"], "confirmed");
        assert_eq!(first["case_id"], 1);
        assert_eq!(first["event_id"], "ev-a");
        assert_eq!(first["recorded"], "2023-11-14T22:13:20.000Z");
        assert!(
            !items[0].body.contains("Ann Smith"),
            "never a decision's note"
        );
        let case: serde_json::Value = serde_json::from_str(&items[3].body).unwrap();
        assert_eq!(case["alerts"], 3);
    }

    /// A back-fill whose items fill its last step exactly ends with that step, not with an
    /// empty one after it.
    #[test]
    fn a_back_fill_that_fills_its_last_step_exactly_takes_no_empty_step() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let t = 1_700_000_000_000;
        store.commit_batch(&batch(&["a", "b", "c"], t), t).unwrap();
        store.set_export(Some(setup(100)));
        for (step, steps) in [(2, 2), (4, 1), (1, 4), (3, 2)] {
            let mut b = store.plan_backfill(0).unwrap();
            assert_eq!(b.total.items(), 4, "3 alerts and their case");
            let mut n = 0;
            while !b.done() {
                store.backfill_step(&mut b, step, t + 1000).unwrap();
                n += 1;
                assert!(n < 10, "a back-fill ends");
            }
            assert_eq!((n, b.written), (steps, b.total), "steps of {step}");
        }
    }

    /// A back-fill is counted first and written in steps; alerts that come after it is
    /// planned go out as usual and not twice; an outbox filled in between stops it with
    /// the step unwritten and says how far it got.
    #[test]
    fn a_back_fill_goes_in_steps_and_stops_whole_when_the_outbox_fills() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let t = 1_700_000_000_000;
        store.commit_batch(&batch(&["a", "b", "c"], t), t).unwrap();
        store
            .commit_batch(&batch(&["d"], t + 1000), t + 1000)
            .unwrap();
        store.set_export(Some(setup(100)));
        let mut b = store.plan_backfill(0).unwrap();
        assert_eq!(
            b.total,
            Backfilled {
                alerts: 4,
                cases: 1
            }
        );
        // A new alert after the plan goes out with its case as usual (2 items).
        store
            .commit_batch(&batch(&["e"], t + 2000), t + 2000)
            .unwrap();
        let mut steps = vec![];
        while !b.done() {
            store.backfill_step(&mut b, 2, t + 3000).unwrap();
            steps.push(b.written);
            assert!(steps.len() < 10, "a back-fill ends");
        }
        assert_eq!(steps.len(), 3, "5 items in steps of 2: {steps:?}");
        assert_eq!(
            steps[0],
            Backfilled {
                alerts: 2,
                cases: 0
            }
        );
        assert_eq!(
            steps[1],
            Backfilled {
                alerts: 4,
                cases: 0
            }
        );
        assert_eq!(
            *steps.last().unwrap(),
            Backfilled {
                alerts: 4,
                cases: 1
            }
        );
        let r = Reader::open(dir.path()).unwrap();
        let ids: Vec<String> = r
            .outbox_after(0, 100)
            .unwrap()
            .iter()
            .map(Item::msg_id)
            .collect();
        assert_eq!(
            ids,
            [
                "north.alert.5",
                "north.case.1.2",
                "north.alert.1",
                "north.alert.2",
                "north.alert.3",
                "north.alert.4",
                "north.case.1.7"
            ]
        );

        // Room for 3 more: the plan (alerts 4 and 5 and their case) fits, then two new
        // alerts and their case take 3 places; the step is refused and writes nothing.
        store.set_export(Some(setup(10)));
        let mut b = store.plan_backfill(t + 1000).unwrap();
        assert_eq!(b.total.items(), 3);
        store
            .commit_batch(&batch(&["f", "g"], t + 4000), t + 4000)
            .unwrap();
        let e = store.backfill_step(&mut b, 1000, t + 5000).unwrap_err();
        assert!(
            e.to_string()
                .contains("filled up during the back-fill: 0 of 3 items written, room for 0"),
            "{e}"
        );
        assert_eq!(b.written, Backfilled::default());
        assert_eq!(r.outbox_after(0, 100).unwrap().len(), 10);
    }
}
