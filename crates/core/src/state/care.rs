//! The care context in the state database: each followed resource's latest facts (never a
//! name, address or phone: see `crate::care`), and per resource type the cursor, when it
//! was last polled and whether the server refused it. A page's facts and its type's cursor
//! are written in one transaction, so a crash re-reads the page (facts are replaced by
//! resource id: reading one twice changes nothing).

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::{Reader, StateError, Store};
use crate::care::{FactSet, Facts};

/// One followed resource type, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CareTypeStatus {
    pub resource_type: String,
    /// Newest `meta.lastUpdated` read (ms).
    pub cursor_ms: Option<i64>,
    pub last_poll_ms: Option<i64>,
    /// Resources of the type whose facts are kept.
    pub resources: u64,
    /// Why the server refused the type (its status and message), when it did.
    pub refused: Option<String>,
}

impl Store {
    /// Keep the facts of one page of `resource_type` and move its cursor to `cursor_ms`
    /// (never backwards), in one transaction.
    pub fn store_care(
        &mut self,
        resource_type: &str,
        facts: &[Facts],
        cursor_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<(), StateError> {
        let tx = self.conn.transaction()?;
        {
            let mut put = tx.prepare_cached(
                "INSERT INTO care_facts(id, type, facts) VALUES (?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET facts = excluded.facts",
            )?;
            for f in facts {
                let json = serde_json::to_string(f)
                    .map_err(|e| StateError::Sqlite(format!("care facts unreadable: {e}")))?;
                put.execute(params![f.id(), resource_type, json])?;
            }
        }
        tx.execute(
            "INSERT INTO care_types(type, cursor_ms, last_poll_ms, refused) VALUES (?1, ?2, ?3, NULL)
             ON CONFLICT(type) DO UPDATE SET cursor_ms = MAX(COALESCE(cursor_ms, excluded.cursor_ms), COALESCE(excluded.cursor_ms, cursor_ms)),
                 last_poll_ms = excluded.last_poll_ms, refused = NULL",
            params![resource_type, cursor_ms, now_ms],
        )?;
        tx.execute(
            "UPDATE care_types SET resources = (SELECT COUNT(*) FROM care_facts WHERE type = ?1 AND id NOT LIKE '%#%') WHERE type = ?1",
            [resource_type],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Note that the server refused `resource_type` (`why`: its status and message).
    pub fn refuse_care_type(
        &mut self,
        resource_type: &str,
        why: &str,
        now_ms: i64,
    ) -> Result<(), StateError> {
        self.conn.execute(
            "INSERT INTO care_types(type, last_poll_ms, refused) VALUES (?1, ?2, ?3)
             ON CONFLICT(type) DO UPDATE SET last_poll_ms = excluded.last_poll_ms, refused = excluded.refused",
            params![resource_type, now_ms, why],
        )?;
        Ok(())
    }

    /// Make sure the stored tags were made with the key whose `fingerprint` this is: with
    /// another key (the key file was lost or replaced) they would never match again, so the
    /// care context is forgotten and read anew. True when it was forgotten.
    pub fn check_care_key(&mut self, fingerprint: i64) -> Result<bool, StateError> {
        let tx = self.conn.transaction()?;
        let stored = super::kv_get(&tx, "care_key")?;
        let forget = stored.is_some_and(|k| k != fingerprint);
        if forget {
            tx.execute("DELETE FROM care_facts", [])?;
            tx.execute("DELETE FROM care_types", [])?;
        }
        super::kv_set(&tx, "care_key", fingerprint)?;
        tx.commit()?;
        Ok(forget)
    }

    /// The cursor of `resource_type` (ms), if it was ever polled.
    pub fn care_cursor(&self, resource_type: &str) -> Result<Option<i64>, StateError> {
        Ok(self
            .conn
            .query_row(
                "SELECT cursor_ms FROM care_types WHERE type = ?1",
                [resource_type],
                |r| r.get(0),
            )
            .optional()?
            .flatten())
    }

    /// Every kept resource's facts (read at start to build the index).
    pub fn care_facts(&self) -> Result<FactSet, StateError> {
        read_facts(&self.conn)
    }
}

fn read_facts(conn: &rusqlite::Connection) -> Result<FactSet, StateError> {
    let mut set = FactSet::default();
    let mut st = conn.prepare("SELECT facts FROM care_facts")?;
    for row in st.query_map([], |r| r.get::<_, String>(0))? {
        let json = row?;
        let f: Facts = serde_json::from_str(&json)
            .map_err(|e| StateError::Sqlite(format!("care facts unreadable: {e}")))?;
        set.upsert(f);
    }
    Ok(set)
}

impl Reader {
    /// Every kept resource's facts.
    pub fn care_facts(&self) -> Result<FactSet, StateError> {
        read_facts(&self.conn)
    }

    /// The followed resource types, by name.
    pub fn care_types(&self) -> Result<Vec<CareTypeStatus>, StateError> {
        let mut st = self
            .conn
            .prepare("SELECT type, cursor_ms, last_poll_ms, resources, refused FROM care_types ORDER BY type")?;
        let rows = st.query_map([], |r| {
            Ok(CareTypeStatus {
                resource_type: r.get(0)?,
                cursor_ms: r.get(1)?,
                last_poll_ms: r.get(2)?,
                resources: r.get::<_, i64>(3)? as u64,
                refused: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::care::{resources, CareKey};
    use serde_json::json;

    #[test]
    fn care_facts_are_replaced_by_id_cursors_only_advance_and_refusals_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        let key = CareKey::from_bytes(&[5u8; 32]).unwrap();
        let enc = |start: &str| {
            resources::read(
                &json!({"resourceType": "Encounter", "id": "e1", "subject": {"reference": "Patient/1"},
                        "period": {"start": start}, "participant": [{"individual": {"reference": "Practitioner/a"}}]}),
                &key,
            )
        };
        s.store_care("Encounter", &enc("2026-01-01"), Some(2_000), 10)
            .unwrap();
        // The same page again (a crash before the cursor moved), then a newer version.
        s.store_care("Encounter", &enc("2026-01-01"), Some(2_000), 11)
            .unwrap();
        s.store_care("Encounter", &enc("2026-02-01"), Some(1_000), 12)
            .unwrap();
        assert_eq!(
            s.care_cursor("Encounter").unwrap(),
            Some(2_000),
            "never backwards"
        );
        let set = s.care_facts().unwrap();
        assert_eq!(set.len(), 1);
        let ix = set.index(key);
        assert!(ix
            .relation(
                "Practitioner/a",
                None,
                "Patient/1",
                chrono::DateTime::parse_from_rfc3339("2026-01-15T00:00:00Z")
                    .unwrap()
                    .timestamp_millis()
            )
            .is_none());
        s.refuse_care_type("CareTeam", "403 Forbidden", 13).unwrap();
        let r = Reader::open(dir.path()).unwrap();
        let types = r.care_types().unwrap();
        assert_eq!(types.len(), 2);
        assert_eq!(types[0].refused.as_deref(), Some("403 Forbidden"));
        assert_eq!((types[1].resources, types[1].cursor_ms), (1, Some(2_000)));
        // Reopening keeps them (the daemon builds its index from them at start)…
        drop(s);
        let mut s = Store::open(dir.path()).unwrap();
        assert!(!s.check_care_key(42).unwrap());
        assert!(!s.check_care_key(42).unwrap());
        assert_eq!(s.care_facts().unwrap().len(), 1);
        // …unless the key changed: then the tags are useless and the context is read anew.
        assert!(s.check_care_key(43).unwrap());
        assert_eq!(
            (
                s.care_facts().unwrap().len(),
                s.care_cursor("Encounter").unwrap()
            ),
            (0, None)
        );
    }
}
