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
//! - `medplum`: one agent, the user's profile with the address (`network` type 2): no
//!   client application, no department; a search's entity is its query alone, as plain
//!   text (its patient only inside it); logins (110114/110122) with their failures; no
//!   logouts.
//! - `firely`: the user named by an identifier (token issuer + user id) with `altId` and
//!   the token id in `policy`, a second agent with the client id and address; no
//!   department; no logins (the identity provider authenticates).
//! - `aidbox`: BALP server-side: the client (110153, a `Client/` reference, with the
//!   address), the server (110152), the user as a `User/` reference; no department;
//!   logins and logouts as Aidbox's own `user-login` / `user-logout` types.
//!
//! Each shape writes only what that server writes by default: what it leaves out is left
//! out here too, so the quality benchmark shows what each server's audit trail can carry.

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
    Medplum,
    Firely,
    Aidbox,
}

impl Shape {
    pub fn parse(s: &str) -> Result<Shape, String> {
        match s {
            "balp" => Ok(Shape::Balp),
            "hapi" => Ok(Shape::Hapi),
            "medplum" => Ok(Shape::Medplum),
            "firely" => Ok(Shape::Firely),
            "aidbox" => Ok(Shape::Aidbox),
            other => Err(format!(
                "unknown shape {other:?} (balp, hapi, medplum, firely, aidbox)"
            )),
        }
    }
}

/// Rewrite `events` (sorted by `recorded`) in `shape`; labels and incidents follow their
/// events (a fanned-out search's copies carry its label).
pub fn reshape(events: Vec<SimEvent>, shape: Shape, seed: u64) -> Vec<SimEvent> {
    match shape {
        Shape::Balp => events,
        Shape::Hapi => hapi(events, seed),
        Shape::Medplum | Shape::Firely | Shape::Aidbox => events
            .into_iter()
            .filter_map(|e| {
                let j = e.json();
                let json = match shape {
                    Shape::Medplum => medplum(&j),
                    Shape::Firely => firely(&j),
                    _ => aidbox(&j),
                }?;
                Some(e.with_json(&json))
            })
            .collect(),
    }
}

/// Put the user's department back on the requesting agent of `shaped` events (from the
/// `original` events of the same ids): the control that tells what a shape loses by its
/// layout from what it loses by not writing departments (`simulate --keep-department`).
pub fn keep_department(original: &[SimEvent], shaped: &mut [SimEvent]) {
    let dept: std::collections::HashMap<&str, Value> = original
        .iter()
        .filter_map(|e| {
            let loc = e.json()["agent"][0].get("location")?.clone();
            Some((e.id.as_str(), loc))
        })
        .collect();
    for e in shaped.iter_mut() {
        let id = e.id.split_once('-').map_or(e.id.as_str(), |(a, _)| a);
        let Some(loc) = dept.get(e.id.as_str()).or_else(|| dept.get(id)) else {
            continue;
        };
        let mut j = e.json();
        if let Some(agents) = j["agent"].as_array_mut() {
            if let Some(user) = agents.iter_mut().find(|a| a["requestor"] == true) {
                user["location"] = loc.clone();
            }
        }
        e.set_json(&j);
    }
}

/// What a simulated event says, read once for the one-to-one shapes.
struct Said<'a> {
    j: &'a Value,
    user: &'a str,
    address: &'a str,
    app: &'a str,
    login: bool,
    logout: bool,
    query: Option<String>,
}

fn said(j: &Value) -> Said<'_> {
    let sub = j["subtype"][0]["code"].as_str().unwrap_or("");
    Said {
        j,
        user: j["agent"][0]["who"]["reference"].as_str().unwrap_or(""),
        address: j["agent"][0]["network"]["address"].as_str().unwrap_or(""),
        app: j["agent"][1]["who"]["reference"]
            .as_str()
            .unwrap_or("Device/unknown")
            .trim_start_matches("Device/"),
        login: sub == "110122",
        logout: sub == "110123",
        query: query_of(j),
    }
}

/// The patient entity alone (`what` and nothing else, as Medplum writes its entity).
fn patient_entity(j: &Value, full: bool) -> Option<Value> {
    let p = patient_of(j)?;
    Some(if full {
        json!({"type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1"},
               "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"},
               "what": {"reference": p}})
    } else {
        json!({"what": {"reference": p}})
    })
}

fn query_entity(q: &str, base: &str) -> Value {
    json!({"type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"},
           "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24"},
           "query": base64::engine::general_purpose::STANDARD.encode(q),
           "description": format!("GET {base}{}", q.trim_start_matches("GET ").trim_start_matches('/'))})
}

fn medplum(j: &Value) -> Option<Value> {
    let s = said(j);
    if s.logout {
        return None;
    }
    let mut e = s.j.clone();
    e["agent"] = json!([{"who": {"reference": s.user}, "requestor": true,
                         "network": {"address": s.address, "type": "2"}}]);
    e["source"] = json!({"observer": {"identifier": {"value": "https://medplum.example.org/"}}});
    // The resource read, or a search's query alone (as plain text, not base64): a
    // search names its patient only inside the query.
    e["entity"] = match &s.query {
        Some(q) => {
            if e["subtype"][0]["code"]
                .as_str()
                .is_some_and(|c| c.starts_with("search"))
            {
                e["subtype"] = json!([{"system": "http://hl7.org/fhir/restful-interaction", "code": "search", "display": "search"}]);
                e["action"] = "R".into();
            }
            json!([{"query": q.trim_start_matches("GET ").trim_start_matches('/')}])
        }
        None => Value::Array(patient_entity(j, false).into_iter().collect()),
    };
    Some(e)
}

fn firely(j: &Value) -> Option<Value> {
    let s = said(j);
    if s.login || s.logout {
        return None;
    }
    let id = s.user.rsplit('/').next().unwrap_or(s.user);
    let mut e = s.j.clone();
    // One token per user and day, as a site's tokens last a shift or so.
    let day = j["recorded"].as_str().unwrap_or("").get(..10).unwrap_or("");
    e["agent"] = json!([
        {"type": {"coding": [{"system": "https://profiles.ihe.net/ITI/BALP/CodeSystem/UserAgentTypes", "code": "UserOauthAgent"}]},
         "who": {"identifier": {"system": "https://idp.hospital.example/realms/staff", "value": id}},
         "altId": id, "requestor": true,
         "policy": [format!("urn:ietf:params:oauth:jti:{id}-{day}")]},
        {"type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110150", "display": "Application"}]},
         "who": {"identifier": {"value": s.app}}, "requestor": false,
         "network": {"address": s.address, "type": "2"}}
    ]);
    e["source"] = json!({"observer": {"display": "Firely Server"}});
    let mut ents: Vec<Value> = patient_entity(j, true).into_iter().collect();
    if let Some(q) = &s.query {
        let mut x = query_entity(q, "https://fhir.hospital.example/");
        x.as_object_mut().unwrap().remove("query");
        ents.push(x);
    }
    e["entity"] = Value::Array(ents);
    Some(e)
}

fn aidbox(j: &Value) -> Option<Value> {
    let s = said(j);
    let user = format!("User/{}", s.user.rsplit('/').next().unwrap_or(s.user));
    let mut e = s.j.clone();
    e["source"] = json!({"observer": {"display": "https://aidbox.hospital.example"}});
    if s.login || s.logout {
        let code = if s.login { "user-login" } else { "user-logout" };
        e["type"] =
            json!({"system": "http://aidbox.app/CodeSystem/audit-event-type", "code": code});
        e.as_object_mut().unwrap().remove("subtype");
        e["agent"] = json!([{"who": {"reference": user}, "requestor": true,
                             "network": {"address": s.address, "type": "2"}}]);
        e.as_object_mut().unwrap().remove("entity");
        return Some(e);
    }
    e["agent"] = json!([
        {"type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110153", "display": "Source Role ID"}]},
         "who": {"reference": format!("Client/{}", s.app)}, "requestor": false,
         "network": {"address": s.address, "type": "2"}},
        {"type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110152", "display": "Destination Role ID"}]},
         "who": {"display": "https://aidbox.hospital.example"}, "requestor": false,
         "network": {"address": "https://aidbox.hospital.example", "type": "5"}},
        {"who": {"reference": user}, "requestor": true}
    ]);
    let mut ents: Vec<Value> = patient_entity(j, true).into_iter().collect();
    if let Some(q) = &s.query {
        ents.push(query_entity(q, "/fhir/"));
    }
    e["entity"] = Value::Array(ents);
    Some(e)
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
        .filter_map(|e| patient_of(&e.json()).map(str::to_owned))
        .collect();
    patients.sort();
    patients.dedup();
    let mut out = Vec::with_capacity(events.len());
    for (n, e) in events.into_iter().enumerate() {
        let j = &e.json();
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
            out.push(e.with_json(&base));
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
            let mut one = e.clone().with_json(&copy);
            one.id = id;
            out.push(one);
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
            let raw = e.raw().to_owned();
            let r = fhir_edge_core::fhir::parse_audit_event(&raw).unwrap();
            assert_ne!(r.interaction, fhir_edge_core::fhir::Interaction::Login);
            assert_eq!(r.outcome, 0);
            assert!(
                r.client_app.is_some() && r.source_ip.is_some(),
                "{}",
                e.json()
            );
            *by_request.entry(r.request_id.unwrap()).or_default() += 1;
        }
        assert!(by_request.values().any(|n| *n > 1), "some searches fan out");
        assert!(by_request.values().all(|n| *n <= FANOUT));
        // A fanned-out search's copies keep its label.
        let labelled: usize = hapi.iter().filter(|e| e.label.is_some()).count();
        assert!(labelled > 0);
    }

    /// Each one-to-one shape reads back as the same events: one key per person, the same
    /// patient, the same interaction and outcome; what the server does not write is absent.
    #[test]
    fn every_shape_reads_back_as_the_same_hospital() {
        use fhir_edge_core::fhir::{parse_audit_event, AuditRecord, Interaction};
        let mut o = SimOptions::new(2, 5);
        o.users = 25;
        o.patients = 200;
        o.anomalies_from_day = 1;
        o.incidents_per_day = 20.0;
        let balp = simulate(&o);
        let read = |e: &SimEvent| -> AuditRecord {
            let raw = e.raw().to_owned();
            parse_audit_event(&raw).unwrap_or_else(|err| panic!("{err}: {}", e.json()))
        };
        let original: std::collections::HashMap<String, AuditRecord> =
            balp.iter().map(|e| (e.id.clone(), read(e))).collect();
        let logins = original
            .values()
            .filter(|r| r.interaction == Interaction::Login)
            .count();
        assert!(logins > 0);
        for shape in [Shape::Medplum, Shape::Firely, Shape::Aidbox] {
            let events = reshape(balp.clone(), shape, 5);
            let mut user_of = std::collections::HashMap::<String, String>::new();
            let mut seen_logins = 0;
            for e in &events {
                let r = read(e);
                let o = &original[&e.id];
                assert_eq!(
                    (
                        r.patient.as_deref(),
                        r.interaction,
                        r.outcome,
                        r.source_ip.as_deref()
                    ),
                    (
                        o.patient.as_deref(),
                        o.interaction,
                        o.outcome,
                        o.source_ip.as_deref()
                    ),
                    "{shape:?} {}",
                    e.json()
                );
                assert_eq!(
                    r.query.is_some(),
                    o.query.is_some(),
                    "{shape:?} {}",
                    e.json()
                );
                // One person, one key: the shape's key maps to one original user only.
                let was = user_of
                    .entry(r.user.clone().unwrap())
                    .or_insert_with(|| o.user.clone().unwrap());
                assert_eq!(Some(was.as_str()), o.user.as_deref(), "{shape:?}");
                assert_eq!(r.department, None, "{shape:?} writes no department");
                match shape {
                    Shape::Medplum => assert_eq!(r.client_app, None),
                    _ if r.interaction != Interaction::Login
                        && r.interaction != Interaction::Logout =>
                    {
                        assert!(r.client_app.is_some(), "{shape:?}")
                    }
                    _ => {}
                }
                seen_logins += (r.interaction == Interaction::Login) as usize;
            }
            let expect = if shape == Shape::Firely { 0 } else { logins };
            assert_eq!(seen_logins, expect, "{shape:?}");
            assert!(events.iter().any(|e| e.label.is_some()));
        }
    }
}
