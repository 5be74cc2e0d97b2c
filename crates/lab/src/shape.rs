//! The same simulated hospital written as a particular server writes AuditEvents.
//!
//! - `balp`: the simulator's own layout (IHE BALP-like: user IRCP, client application
//!   110150, query entity).
//! - `hapi`: HAPI FHIR's BALP interceptor, as its documentation and code describe it:
//!   three agents (the client as 110153 "Source Role ID" with the address, the server
//!   110152, the user IRCP), a request-id entity (`XrequestId`) on every event, only
//!   storage events (no logins, no failed requests), and a search without a patient of its
//!   own written once per patient in its results (up to `FANOUT` patients), all sharing
//!   the request id.

use base64::Engine as _;
use serde_json::{json, Value};

use crate::simulate::SimEvent;
use fhir_edge_core::rng::Rng;

/// Patients a fanned-out search lists at most (a first page of results).
pub const FANOUT: usize = 20;

/// How a server writes AuditEvents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shape {
    #[default]
    Balp,
    Hapi,
}

impl Shape {
    pub fn parse(s: &str) -> Result<Shape, String> {
        match s {
            "balp" => Ok(Shape::Balp),
            "hapi" => Ok(Shape::Hapi),
            other => Err(format!("unknown shape {other:?} (balp, hapi)")),
        }
    }
}

/// Rewrite `events` (sorted by `recorded`) in `shape`; labels and incidents follow their
/// events (a fanned-out search's copies carry its label).
pub fn reshape(events: Vec<SimEvent>, shape: Shape, seed: u64) -> Vec<SimEvent> {
    match shape {
        Shape::Balp => events,
        Shape::Hapi => hapi(events, seed),
    }
}

fn patient_of(e: &Value) -> Option<&str> {
    e["entity"].as_array()?.iter().find_map(|x| {
        x["what"]["reference"]
            .as_str()
            .filter(|r| r.starts_with("Patient/"))
    })
}

fn query_of(e: &Value) -> Option<String> {
    let q = e["entity"]
        .as_array()?
        .iter()
        .find_map(|x| x["query"].as_str())?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(q).ok()?;
    String::from_utf8(bytes).ok()
}

fn hapi(events: Vec<SimEvent>, seed: u64) -> Vec<SimEvent> {
    let mut r = Rng::new(seed ^ 0x4A91);
    // The patients a search's results could hold: every patient the hospital's events name.
    let mut patients: Vec<String> = events
        .iter()
        .filter_map(|e| patient_of(&e.json).map(str::to_owned))
        .collect();
    patients.sort();
    patients.dedup();
    let mut out = Vec::with_capacity(events.len());
    for (n, e) in events.into_iter().enumerate() {
        let j = &e.json;
        let code = j["subtype"][0]["code"].as_str().unwrap_or("");
        // Only storage events are audited: no logins, no refused requests.
        if j["type"]["code"] == "110114" || j["outcome"] != "0" {
            continue;
        }
        let user = j["agent"][0].clone();
        let app = j["agent"][1]["who"]["reference"]
            .as_str()
            .unwrap_or("Device/unknown")
            .trim_start_matches("Device/")
            .to_string();
        let address = user["network"]["address"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let request = format!("req-{seed}-{n}");
        let mut base = j.clone();
        base["agent"] = json!([
            {"type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110153", "display": "Source Role ID"}]},
             "who": {"identifier": {"value": app}, "display": address},
             "network": {"address": address, "type": "2"}, "requestor": false},
            {"type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110152", "display": "Destination Role ID"}]},
             "who": {"display": "http://hapi.example/fhir"}, "network": {"address": "http://hapi.example/fhir", "type": "5"}, "requestor": false},
            {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP", "display": "information recipient"}]},
             "who": user["who"], "location": user["location"], "requestor": true}
        ]);
        base["source"] = json!({"observer": {"display": "http://hapi.example/fhir"}});
        let mut entities: Vec<Value> = base["entity"].as_array().cloned().unwrap_or_default();
        entities.insert(
            0,
            json!({"type": {"system": "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType", "code": "XrequestId"},
                   "what": {"identifier": {"value": request}}}),
        );
        // A query entity carries the request line as a description too.
        if let Some(q) = query_of(j) {
            for x in entities.iter_mut().filter(|x| x["query"].is_string()) {
                x["description"] = q.clone().into();
            }
        }
        // An operation such as `$export` is one event, whatever it returns.
        let search =
            code.starts_with("search") && !query_of(j).is_some_and(|q| q.contains("$export"));
        let own_patient = patient_of(j).is_some();
        if !search || own_patient || patients.is_empty() {
            base["entity"] = Value::Array(entities);
            out.push(SimEvent { json: base, ..e });
            continue;
        }
        // A search without a patient of its own: one event per patient in its results.
        let asked = query_of(j)
            .and_then(|q| {
                q.split(['?', '&'])
                    .find_map(|p| p.strip_prefix("_count="))
                    .and_then(|v| v.parse::<usize>().ok())
            })
            .unwrap_or(FANOUT);
        for k in 0..asked.clamp(1, FANOUT) {
            let p = &patients[r.below(patients.len() as u64) as usize];
            let mut copy = base.clone();
            let mut ents = entities.clone();
            ents.push(json!({"type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1"},
                             "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"},
                             "what": {"reference": p}}));
            copy["entity"] = Value::Array(ents);
            let id = format!("{}-{k}", e.id);
            copy["id"] = id.clone().into();
            out.push(SimEvent {
                id,
                json: copy,
                ..e.clone()
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::{simulate, SimOptions};

    #[test]
    fn hapi_shape_fans_out_searches_and_drops_what_hapi_does_not_audit() {
        let mut o = SimOptions::new(3, 4);
        o.users = 30;
        o.patients = 300;
        o.anomalies_from_day = 1;
        o.incidents_per_day = 30.0;
        let balp = simulate(&o);
        let hapi = reshape(balp.clone(), Shape::Hapi, 4);
        let mut by_request = std::collections::HashMap::<String, usize>::new();
        for e in &hapi {
            let raw = serde_json::value::to_raw_value(&e.json).unwrap();
            let r = fhir_edge_core::fhir::parse_audit_event(&raw).unwrap();
            assert_ne!(r.interaction, fhir_edge_core::fhir::Interaction::Login);
            assert_eq!(r.outcome, 0);
            assert!(
                r.client_app.is_some() && r.source_ip.is_some(),
                "{}",
                e.json
            );
            *by_request.entry(r.request_id.unwrap()).or_default() += 1;
        }
        assert!(by_request.values().any(|n| *n > 1), "some searches fan out");
        assert!(by_request.values().all(|n| *n <= FANOUT));
        // A fanned-out search's copies keep its label.
        let labelled: usize = hapi.iter().filter(|e| e.label.is_some()).count();
        assert!(labelled > 0);
    }
}
