//! What a site's audit trail feeds: for each kind of evidence the detector uses, how many
//! events carried it. A server that never writes a login leaves brute-force detection
//! blind; one that writes no query leaves mass export to `$export` alone. `train` prints
//! it, the daemon says it in the journal once it has seen enough events and in
//! `/api/stats`; the state database keeps the lifetime counts for `fhir-edge status`.

use serde::{Deserialize, Serialize};

use crate::fhir::{AuditRecord, Interaction};

/// Events after which a signal never fed is called blind (`Coverage::blind`).
pub const ENOUGH: u64 = 5_000;

/// Counts of events carrying each kind of evidence.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Coverage {
    pub events: u64,
    pub with_user: u64,
    pub with_patient: u64,
    pub with_department: u64,
    /// Events that named no department, read with the one the care context gives the user
    /// (their PractitionerRole's unit; `care::Index::department_of`).
    pub department_from_context: u64,
    /// Events that named no department, the care context none either, read with the
    /// user's peer group as their department (`detector::peers`).
    pub department_from_peers: u64,
    pub with_address: u64,
    pub with_client: u64,
    pub logins: u64,
    pub failed_logins: u64,
    pub refused_requests: u64,
    pub searches: u64,
    pub searches_with_query: u64,
    pub exports: u64,
    pub fanned_out: u64,
}

/// A kind of evidence the data does not feed, and what cannot be seen without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Blind {
    pub missing: &'static str,
    pub consequence: &'static str,
}

impl Coverage {
    /// What one event carries.
    pub fn of(r: &AuditRecord) -> Coverage {
        let mut c = Coverage::default();
        c.observe(r);
        c
    }

    /// Add another's counts.
    pub fn add(&mut self, o: &Coverage) {
        self.events += o.events;
        self.with_user += o.with_user;
        self.with_patient += o.with_patient;
        self.with_department += o.with_department;
        self.department_from_context += o.department_from_context;
        self.department_from_peers += o.department_from_peers;
        self.with_address += o.with_address;
        self.with_client += o.with_client;
        self.logins += o.logins;
        self.failed_logins += o.failed_logins;
        self.refused_requests += o.refused_requests;
        self.searches += o.searches;
        self.searches_with_query += o.searches_with_query;
        self.exports += o.exports;
        self.fanned_out += o.fanned_out;
    }

    pub fn observe(&mut self, r: &AuditRecord) {
        let n = |b: bool| b as u64;
        self.events += 1;
        self.with_user += n(r.user.is_some());
        self.with_patient += n(r.patient.is_some());
        self.with_department += n(r.department.is_some());
        self.with_address += n(r.source_ip.is_some());
        self.with_client += n(r.client_app.is_some());
        let login = r.interaction == Interaction::Login;
        self.logins += n(login);
        self.failed_logins += n(login && r.outcome > 0);
        self.refused_requests += n(!login && r.interaction != Interaction::Logout && r.outcome > 0);
        self.searches += n(r.interaction == Interaction::Search);
        self.searches_with_query += n(r.interaction == Interaction::Search && r.query.is_some());
        self.exports += n(r.interaction == Interaction::Export);
        self.fanned_out += n(r.request_id.is_some()
            && r.interaction == Interaction::Search
            && r.patient.is_some()
            && r.query.as_ref().is_some_and(|q| !q.patient_scoped));
    }

    /// The evidence never seen in `ENOUGH` events or more (nothing before that).
    pub fn blind(&self) -> Vec<Blind> {
        if self.events < ENOUGH {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut say = |none: bool, missing, consequence| {
            if none {
                out.push(Blind {
                    missing,
                    consequence,
                });
            }
        };
        say(
            self.logins == 0,
            "logins",
            "failed-login bursts and dormant accounts' logins cannot be seen",
        );
        say(
            self.refused_requests == 0,
            "refused requests",
            "probing (runs of refused requests) cannot be seen",
        );
        say(
            self.with_department == 0
                && self.department_from_context == 0
                && self.department_from_peers == 0,
            "departments",
            "cross-department and consult-pattern signals have nothing to compare",
        );
        say(
            self.with_address == 0,
            "network addresses",
            "new networks and addresses cannot be seen",
        );
        say(
            self.with_client == 0,
            "client applications",
            "new client applications cannot be seen",
        );
        say(
            self.searches > 0 && self.searches_with_query == 0,
            "search queries",
            "query size, demographic sweeps and page walks cannot be seen; only $export shows mass export",
        );
        say(
            self.with_patient == 0,
            "patients",
            "no record-level signal (snooping of any kind) can be seen",
        );
        out
    }

    /// One line for people: shares of the evidence, then what is blind.
    pub fn summary(&self) -> String {
        let pct = |k: u64| format!("{:.0}%", 100.0 * k as f64 / self.events.max(1) as f64);
        let mut s = format!(
            "of {} events: {} name a user, {} a patient, {} a department, {} an address, {} a client; \
             {} logins ({} failed), {} refused requests, {} searches ({} with their query), {} exports",
            self.events,
            pct(self.with_user),
            pct(self.with_patient),
            pct(self.with_department),
            pct(self.with_address),
            pct(self.with_client),
            self.logins,
            self.failed_logins,
            self.refused_requests,
            self.searches,
            self.searches_with_query,
            self.exports
        );
        if self.department_from_context > 0 {
            s.push_str(&format!(
                "; the care context gave {} of events the user's department, which they did not name",
                pct(self.department_from_context)
            ));
        }
        if self.department_from_peers > 0 {
            s.push_str(&format!(
                "; {} of events named no department and were read with the user's peer group \
                 (the users who open the same patients)",
                pct(self.department_from_peers)
            ));
        }
        if self.fanned_out > 0 {
            s.push_str(&format!(
                "; {} search results written per patient",
                self.fanned_out
            ));
        }
        for b in self.blind() {
            s.push_str(&format!("; no {}: {}", b.missing, b.consequence));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trail_without_logins_or_queries_says_what_it_cannot_show() {
        let raw = |v: serde_json::Value| {
            crate::fhir::parse_audit_event(&serde_json::value::to_raw_value(&v).unwrap()).unwrap()
        };
        let read = raw(serde_json::json!({"resourceType": "AuditEvent", "id": "1",
            "recorded": "2026-01-05T08:00:00Z",
            "subtype": [{"code": "read"}],
            "agent": [{"who": {"reference": "Practitioner/1"}, "requestor": true, "network": {"address": "10.0.0.1"}}],
            "entity": [{"what": {"reference": "Patient/1"}}]}));
        let search = raw(serde_json::json!({"resourceType": "AuditEvent", "id": "2",
            "recorded": "2026-01-05T08:00:00Z",
            "subtype": [{"code": "search-type"}],
            "agent": [{"who": {"reference": "Practitioner/1"}, "requestor": true}]}));
        let mut c = Coverage::default();
        for _ in 0..ENOUGH / 2 {
            c.observe(&read);
            c.observe(&search);
        }
        let blind: Vec<&str> = c.blind().iter().map(|b| b.missing).collect();
        assert!(
            blind.contains(&"logins") && blind.contains(&"search queries"),
            "{blind:?}"
        );
        assert!(!blind.contains(&"patients") && !blind.contains(&"network addresses"));
        let s = c.summary();
        assert!(
            s.starts_with("of 5000 events: 100% name a user, 50% a patient"),
            "{s}"
        );
        assert!(s.contains("no logins: failed-login bursts"), "{s}");
        assert!(
            Coverage { events: 10, ..c }.blind().is_empty(),
            "too few events to say"
        );
        // No event names a department: blind, unless the care context gives the users'.
        assert!(blind.contains(&"departments"), "{blind:?}");
        let given = Coverage {
            department_from_context: 2_500,
            ..c
        };
        let blind: Vec<&str> = given.blind().iter().map(|b| b.missing).collect();
        assert!(!blind.contains(&"departments"), "{blind:?}");
        let s = given.summary();
        assert!(
            s.contains("the care context gave 50% of events the user's department, which they did not name"),
            "{s}"
        );
        // Nor when peer groups stand for the departments.
        let grouped = Coverage {
            department_from_peers: 2_500,
            ..c
        };
        assert!(!grouped.blind().iter().any(|b| b.missing == "departments"));
        let s = grouped.summary();
        assert!(
            s.contains(
                "50% of events named no department and were read with the user's peer group"
            ),
            "{s}"
        );
    }
}
