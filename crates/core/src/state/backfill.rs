//! Back-fill of the export: what was stored before an exporter was configured (or what a
//! far side lost), written to the outbox again as it stands now.

use serde::Serialize;

use super::{cases, outbox, StateError, Store};
use crate::export::ItemKind;

/// What a back-fill wrote to the outbox ([`Store::backfill_export`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Backfilled {
    pub alerts: u64,
    pub cases: u64,
}

impl Store {
    /// Write to the outbox, as they stand now, the alerts stored and the cases active (their
    /// last alert) at or after `since_ms`: for an exporter configured after they were
    /// stored, or a far side that lost them. Every configured exporter gets them again. An
    /// alert keeps its `msg_id`, so a broker's duplicate window or a SIEM removes a repeat;
    /// a case goes as a new version of itself (its message id carries the new position).
    /// All or nothing: refused when export is not configured, or when the outbox has not
    /// room for every item (saying how much it has), with nothing written.
    pub fn backfill_export(
        &mut self,
        since_ms: i64,
        now_ms: i64,
    ) -> Result<Backfilled, StateError> {
        let Some(setup) = self.export.clone() else {
            return Err(StateError::Invalid(
                "export is not configured: add [export.nats] or [export.syslog] first".into(),
            ));
        };
        let tx = self.conn.transaction()?;
        let alerts: Vec<(crate::alerts::Alert, Option<i64>, i64, i64)> = tx
            .prepare(&format!(
                "SELECT {}, case_id, recorded_ms, detected_ms FROM alerts
                 WHERE detected_ms >= ?1 ORDER BY id",
                super::ALERT_COLS
            ))?
            .query_map([since_ms], |r| {
                Ok((
                    super::alert_from_row(r, false)?,
                    r.get(23)?,
                    r.get(24)?,
                    r.get(25)?,
                ))
            })?
            .collect::<Result<_, _>>()?;
        let cases: Vec<i64> = tx
            .prepare("SELECT id FROM cases WHERE last_ms >= ?1 ORDER BY id")?
            .query_map([since_ms], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut room = outbox::room(&tx, &setup)?;
        let needed = (alerts.len() + cases.len()) as u64;
        if needed > room {
            return Err(StateError::Invalid(format!(
                "the back-fill needs {needed} items ({} alerts, {} cases) and the outbox has room \
                 for {room} ([export] max_items {}): choose a later `since`, or let the exporters \
                 catch up first",
                alerts.len(),
                cases.len(),
                setup.max_items
            )));
        }
        for (a, case, recorded_ms, detected_ms) in &alerts {
            let body = crate::export::stored_alert_message(
                &setup.site,
                a,
                *case,
                (*recorded_ms, *detected_ms),
            );
            outbox::push(
                &tx,
                &setup,
                &mut room,
                (ItemKind::Alert, a.id, Some(a.severity)),
                &body,
                now_ms,
            )?;
        }
        for id in &cases {
            cases::export(&tx, &setup, &mut room, *id, now_ms)?;
        }
        tx.commit()?;
        Ok(Backfilled {
            alerts: alerts.len() as u64,
            cases: cases.len() as u64,
        })
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
}
