//! One view of many sites: the export messages (`crate::export`) of several edges applied
//! in stream order to an in-memory view of their alerts and cases, listed newest change
//! first with a `site` and a `key` (`<site>:<id>`, as ids repeat across sites).
//!
//! The view keeps no state of its own: it is what the stream says, rebuilt from the
//! stream's start whenever `fhir-edge fleet` starts. It holds at most `max_items` alerts
//! and as many cases; beyond that the ones changed longest ago are forgotten first
//! (counted in `FleetView::forgotten`).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use serde_json::Value;

use crate::alerts::{Severity, Status as AlertStatus};
use crate::cases::{CaseScope, CaseStatus};
use crate::export::{ItemKind, SCHEMA};

/// Why a message could not be applied (it is counted and skipped).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FleetError {
    #[error("not a JSON object")]
    NotAnObject,
    #[error("schema {0} is newer than this build reads ({SCHEMA})")]
    NewerSchema(u64),
    #[error("no {0}")]
    Missing(&'static str),
    #[error("unknown type {0:?}")]
    UnknownType(String),
}

impl FleetError {
    pub fn kind(&self) -> &'static str {
        match self {
            FleetError::NotAnObject => "fleet_not_object",
            FleetError::NewerSchema(_) => "fleet_newer_schema",
            FleetError::Missing(_) => "fleet_missing_field",
            FleetError::UnknownType(_) => "fleet_unknown_type",
        }
    }
}

type Key = (String, i64);

/// One kind of item (alerts or cases): the latest message of each, by the order of
/// their last change.
#[derive(Default)]
struct Items {
    by_key: HashMap<Key, (u64, Value)>,
    /// Change order → key; the newest change last.
    order: BTreeMap<u64, Key>,
}

impl Items {
    fn put(&mut self, key: Key, at: u64, v: Value) {
        if let Some((old, _)) = self.by_key.insert(key.clone(), (at, v)) {
            self.order.remove(&old);
        }
        self.order.insert(at, key);
    }

    /// Forget the least recently changed beyond `max`; what was forgotten.
    fn bound(&mut self, max: usize) -> Vec<(Key, Value)> {
        let mut gone = Vec::new();
        while self.by_key.len() > max {
            let Some((_, key)) = self.order.pop_first() else {
                break;
            };
            if let Some((_, v)) = self.by_key.remove(&key) {
                gone.push((key, v));
            }
        }
        gone
    }

    /// Newest change first, from before `cursor`, those `keep` takes, at most `limit`;
    /// and the cursor of the next page.
    fn page(
        &self,
        cursor: Option<u64>,
        limit: usize,
        keep: impl Fn(&Value) -> bool,
    ) -> (Vec<Value>, Option<u64>) {
        let mut out = Vec::new();
        let range = match cursor {
            Some(c) => self.order.range(..c),
            None => self.order.range(..),
        };
        for (at, key) in range.rev() {
            let v = &self.by_key[key].1;
            if keep(v) {
                if out.len() == limit {
                    return (out, Some(*at + 1));
                }
                out.push(v.clone());
            }
        }
        (out, None)
    }
}

/// What the view knows of one site.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct SiteSeen {
    pub site: String,
    pub messages: u64,
    /// `at` of its newest message.
    pub last_message: Option<String>,
}

/// Which statuses a listing keeps, parsed as the edge's own API parses them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StatusFilter {
    /// Cases: a scope and perhaps one status ([`CaseScope::parse`]: none lists every case
    /// but the watched ones, `open` the queue, `any` every case).
    Cases(CaseScope, Option<CaseStatus>),
    /// Alerts: every one, or those of one status.
    Alerts(Option<AlertStatus>),
}

impl StatusFilter {
    fn keeps(&self, status: Option<&str>) -> bool {
        match *self {
            StatusFilter::Cases(scope, one) => status
                .and_then(|s| s.parse::<CaseStatus>().ok())
                .is_some_and(|s| scope.holds(s) && one.is_none_or(|o| o == s)),
            StatusFilter::Alerts(one) => one.is_none_or(|o| status == Some(o.as_str())),
        }
    }
}

/// Which items to list (no default: cases and alerts take different statuses).
#[derive(Debug, Clone)]
pub struct FleetFilter {
    pub site: Option<String>,
    pub status: StatusFilter,
    /// The minimum severity.
    pub severity: Option<Severity>,
    pub user: Option<String>,
    pub cursor: Option<u64>,
    pub limit: usize,
}

impl FleetFilter {
    fn keeps(&self, v: &Value) -> bool {
        let field = |name: &str| v.get(name).and_then(Value::as_str);
        let is = |name: &str, want: &Option<String>| {
            want.as_deref().is_none_or(|w| field(name) == Some(w))
        };
        let severe = self.severity.is_none_or(|min| {
            field("severity")
                .and_then(|s| s.parse::<Severity>().ok())
                .is_some_and(|s| s >= min)
        });
        self.status.keeps(field("status"))
            && severe
            && is("site", &self.site)
            && is("user", &self.user)
    }
}

/// The alerts and cases of every site the stream carries.
pub struct FleetView {
    alerts: Items,
    cases: Items,
    /// Alert ids per case.
    case_alerts: HashMap<Key, Vec<i64>>,
    sites: BTreeMap<String, SiteSeen>,
    changes: u64,
    max_items: usize,
    /// Alerts and cases forgotten for the bound.
    pub forgotten: u64,
}

fn key_of(v: &Value) -> Result<Key, FleetError> {
    let site = v
        .get("site")
        .and_then(Value::as_str)
        .ok_or(FleetError::Missing("site"))?;
    let id = v
        .get("id")
        .and_then(Value::as_i64)
        .ok_or(FleetError::Missing("id"))?;
    Ok((site.to_string(), id))
}

impl FleetView {
    pub fn new(max_items: usize) -> FleetView {
        FleetView {
            alerts: Items::default(),
            cases: Items::default(),
            case_alerts: HashMap::new(),
            sites: BTreeMap::new(),
            changes: 0,
            max_items: max_items.max(1),
            forgotten: 0,
        }
    }

    /// Apply one message, in stream order.
    pub fn apply(&mut self, msg: &[u8]) -> Result<ItemKind, FleetError> {
        let mut v: Value = serde_json::from_slice(msg).map_err(|_| FleetError::NotAnObject)?;
        if !v.is_object() {
            return Err(FleetError::NotAnObject);
        }
        let schema = v
            .get("schema")
            .and_then(Value::as_u64)
            .ok_or(FleetError::Missing("schema"))?;
        if schema > u64::from(SCHEMA) {
            return Err(FleetError::NewerSchema(schema));
        }
        let ty = v
            .get("type")
            .and_then(Value::as_str)
            .ok_or(FleetError::Missing("type"))?;
        let kind = ItemKind::parse(ty).ok_or_else(|| FleetError::UnknownType(ty.to_string()))?;
        let key = key_of(&v)?;
        v["key"] = Value::String(format!("{}:{}", key.0, key.1));
        self.changes += 1;
        let at = self.changes;
        let site = self.sites.entry(key.0.clone()).or_insert_with(|| SiteSeen {
            site: key.0.clone(),
            ..Default::default()
        });
        site.messages += 1;
        if let Some(t) = v.get("at").and_then(Value::as_str) {
            site.last_message = Some(t.to_string());
        }
        match kind {
            ItemKind::Alert => {
                if let Some(case) = v.get("case_id").and_then(Value::as_i64) {
                    let ids = self.case_alerts.entry((key.0.clone(), case)).or_default();
                    if !ids.contains(&key.1) {
                        ids.push(key.1);
                    }
                }
                self.alerts.put(key, at, v);
            }
            ItemKind::Case => self.cases.put(key, at, v),
            ItemKind::Status => {
                // An alert's decision changes the alert; a case's comes with the case's own
                // message right after it.
                if v.get("of").and_then(Value::as_str) == Some("alert") {
                    if let Some((_, alert)) = self.alerts.by_key.get(&key) {
                        let mut alert = alert.clone();
                        alert["status"] = v["status"].clone();
                        self.alerts.put(key, at, alert);
                    }
                }
            }
        }
        // What the bound forgets leaves the case index too, so it stays as bounded.
        for ((site, id), alert) in self.alerts.bound(self.max_items) {
            self.forgotten += 1;
            let Some(case) = alert.get("case_id").and_then(Value::as_i64) else {
                continue;
            };
            let key = (site, case);
            if let Some(ids) = self.case_alerts.get_mut(&key) {
                ids.retain(|a| *a != id);
                if ids.is_empty() {
                    self.case_alerts.remove(&key);
                }
            }
        }
        for (key, _) in self.cases.bound(self.max_items) {
            self.forgotten += 1;
            self.case_alerts.remove(&key);
        }
        Ok(kind)
    }

    pub fn cases(&self, f: &FleetFilter) -> (Vec<Value>, Option<u64>) {
        self.cases.page(f.cursor, f.limit, |v| f.keeps(v))
    }

    pub fn alerts(&self, f: &FleetFilter) -> (Vec<Value>, Option<u64>) {
        self.alerts.page(f.cursor, f.limit, |v| f.keeps(v))
    }

    /// A case by its key (`<site>:<id>`), with its alerts oldest first.
    pub fn case(&self, key: &str) -> Option<(Value, Vec<Value>)> {
        let (site, id) = key.rsplit_once(':')?;
        let key = (site.to_string(), id.parse().ok()?);
        let case = self.cases.by_key.get(&key)?.1.clone();
        let mut alerts: Vec<Value> = self
            .case_alerts
            .get(&key)
            .into_iter()
            .flatten()
            .filter_map(|a| self.alerts.by_key.get(&(key.0.clone(), *a)))
            .map(|(_, v)| v.clone())
            .collect();
        alerts.sort_by_key(|a| a.get("id").and_then(Value::as_i64));
        Some((case, alerts))
    }

    pub fn alert(&self, key: &str) -> Option<Value> {
        let (site, id) = key.rsplit_once(':')?;
        Some(
            self.alerts
                .by_key
                .get(&(site.to_string(), id.parse().ok()?))?
                .1
                .clone(),
        )
    }

    /// Cases by status (`new`, `in_review`, `closed`, `watching`), every status named.
    pub fn case_counts(&self) -> BTreeMap<String, u64> {
        let mut out: BTreeMap<String, u64> = ["new", "in_review", "closed", "watching"]
            .iter()
            .map(|s| (s.to_string(), 0))
            .collect();
        for (_, v) in self.cases.by_key.values() {
            if let Some(s) = v.get("status").and_then(Value::as_str) {
                *out.entry(s.to_string()).or_default() += 1;
            }
        }
        out
    }

    /// Alerts by severity, and how many are still `new`.
    pub fn alert_counts(&self) -> (BTreeMap<String, u64>, u64) {
        let mut by: BTreeMap<String, u64> = ["low", "medium", "high", "critical"]
            .iter()
            .map(|s| (s.to_string(), 0))
            .collect();
        let mut new = 0;
        for (_, v) in self.alerts.by_key.values() {
            if let Some(s) = v.get("severity").and_then(Value::as_str) {
                *by.entry(s.to_string()).or_default() += 1;
            }
            new += u64::from(v.get("status").and_then(Value::as_str) == Some("new"));
        }
        (by, new)
    }

    pub fn sites(&self) -> Vec<SiteSeen> {
        self.sites.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn alert(site: &str, id: i64, case: i64, sev: &str) -> Vec<u8> {
        json!({"schema": 1, "site": site, "type": "alert", "id": id, "case_id": case,
               "severity": sev, "status": "new", "at": "2026-11-30T10:00:00Z"})
        .to_string()
        .into_bytes()
    }

    fn case(site: &str, id: i64, status: &str, alerts: u64) -> Vec<u8> {
        json!({"schema": 1, "site": site, "type": "case", "id": id, "status": status,
               "severity": "high", "alerts": alerts})
        .to_string()
        .into_bytes()
    }

    /// Every alert (cases: name a `StatusFilter::Cases`).
    fn all() -> FleetFilter {
        FleetFilter {
            site: None,
            status: StatusFilter::Alerts(None),
            severity: None,
            user: None,
            cursor: None,
            limit: 100,
        }
    }

    #[test]
    fn two_sites_with_the_same_ids_stay_apart_and_the_latest_case_wins() {
        let mut v = FleetView::new(100);
        for m in [
            alert("north", 1, 1, "high"),
            case("north", 1, "new", 1),
            alert("south", 1, 1, "low"),
            case("south", 1, "watching", 1),
            alert("north", 2, 1, "medium"),
            case("north", 1, "new", 2),
        ] {
            v.apply(&m).unwrap();
        }
        let (cases, next) = v.cases(&FleetFilter {
            status: StatusFilter::Cases(CaseScope::All, None),
            ..all()
        });
        assert!(next.is_none());
        let keys: Vec<&str> = cases.iter().map(|c| c["key"].as_str().unwrap()).collect();
        assert_eq!(keys, ["north:1", "south:1"], "newest change first");
        let (listed, _) = v.cases(&FleetFilter {
            status: StatusFilter::Cases(CaseScope::Reviewable, None),
            ..all()
        });
        assert_eq!(
            listed.len(),
            1,
            "without a status, watched cases are not listed"
        );
        assert_eq!(cases[0]["alerts"], 2);
        let (c, alerts) = v.case("north:1").unwrap();
        assert_eq!(c["site"], "north");
        assert_eq!(alerts.len(), 2);
        assert_eq!(v.case("south:1").unwrap().1.len(), 1);
        let queue = v.cases(&FleetFilter {
            status: StatusFilter::Cases(CaseScope::Queue, None),
            ..all()
        });
        assert_eq!(queue.0.len(), 1);
        let watched = v.cases(&FleetFilter {
            status: StatusFilter::Cases(CaseScope::All, Some(CaseStatus::Watching)),
            ..all()
        });
        assert_eq!(watched.0[0]["key"], "south:1");
        let severe = v.alerts(&FleetFilter {
            status: StatusFilter::Alerts(None),
            severity: Some(Severity::Medium),
            ..all()
        });
        assert_eq!(severe.0.len(), 2, "medium and higher");
        let south = v.alerts(&FleetFilter {
            site: Some("south".into()),
            ..all()
        });
        assert_eq!(south.0.len(), 1);
        assert_eq!(v.case_counts()["watching"], 1);
        assert_eq!(v.alert_counts().0["high"], 1);
        assert_eq!(v.sites().len(), 2);
    }

    #[test]
    fn decisions_change_the_alert_and_pages_follow_the_cursor() {
        let mut v = FleetView::new(100);
        for i in 1..=5 {
            v.apply(&alert("north", i, 1, "low")).unwrap();
        }
        let status = json!({"schema": 1, "site": "north", "type": "status", "of": "alert",
                            "id": 2, "status": "confirmed"});
        v.apply(status.to_string().as_bytes()).unwrap();
        assert_eq!(v.alert("north:2").unwrap()["status"], "confirmed");
        let (page, next) = v.alerts(&FleetFilter { limit: 2, ..all() });
        assert_eq!(page.len(), 2);
        assert_eq!(page[0]["id"], 2, "the decided alert changed last");
        let (rest, next) = v.alerts(&FleetFilter {
            limit: 10,
            cursor: next,
            ..all()
        });
        assert_eq!(rest.len(), 3);
        assert!(next.is_none());
    }

    #[test]
    fn the_bound_forgets_the_least_recently_changed_and_bad_messages_are_refused() {
        let mut v = FleetView::new(3);
        for i in 1..=5 {
            v.apply(&alert("north", i, 1, "low")).unwrap();
        }
        assert_eq!(v.forgotten, 2);
        assert!(v.alert("north:1").is_none());
        assert_eq!(v.case_alerts[&("north".to_string(), 1)], [3, 4, 5]);
        assert!(v.alert("north:5").is_some());
        assert_eq!(v.apply(b"[1]"), Err(FleetError::NotAnObject));
        let newer = json!({"schema": 99, "site": "n", "type": "alert", "id": 1});
        assert_eq!(
            v.apply(newer.to_string().as_bytes()),
            Err(FleetError::NewerSchema(99))
        );
        let odd = json!({"schema": 1, "site": "n", "type": "poll", "id": 1});
        assert!(matches!(
            v.apply(odd.to_string().as_bytes()),
            Err(FleetError::UnknownType(_))
        ));
    }
}
