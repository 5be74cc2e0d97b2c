//! Against a real third-party FHIR R4 server: sekmet-fhir (FastAPI + SQLite, from PyPI),
//! installed by `.ci/run` (see tests/sekmet-constraints.txt) and started here on loopback.
//! Set SEKMET_EXE to its `sekmet` executable. Without it the test says SKIP — unless
//! REQUIRE_REAL_FHIR_SERVER=1 (CI), where a missing server is a failure.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use fhir_edge::health::Counter;

pub struct Sekmet {
    child: Child,
    pub base_url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Sekmet {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start sekmet on a free loopback port, or explain why not.
pub fn start_sekmet() -> Option<Sekmet> {
    let exe = match std::env::var_os("SEKMET_EXE") {
        Some(p) => PathBuf::from(p),
        None => {
            if std::env::var("REQUIRE_REAL_FHIR_SERVER").as_deref() == Ok("1") {
                panic!("REQUIRE_REAL_FHIR_SERVER=1 but SEKMET_EXE is not set");
            }
            eprintln!(
                "SKIP real_server: SEKMET_EXE is not set (run .ci/run to install sekmet-fhir)"
            );
            return None;
        }
    };
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let base_url = format!("http://127.0.0.1:{port}/fhir");
    let settings = dir.path().join("settings.yaml");
    std::fs::write(
        &settings,
        format!(
            "base_url: {base_url}\nhost: 127.0.0.1\nport: {port}\ndata_dir: {}\nsimulator: {{enabled: false}}\nlog_inbound: false\n",
            data.display()
        ),
    )
    .unwrap();
    let child = Command::new(&exe)
        .args(["serve", "--host", "127.0.0.1", "--port", &port.to_string()])
        .env("SEKMET_CONFIG", &settings)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("sekmet.log")).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
    let s = Sekmet {
        child,
        base_url,
        _dir: dir,
    };
    let start = Instant::now();
    loop {
        let (code, _) = crate::pipeline::reqwest::get(&format!("{}/metadata", s.base_url), None);
        if code == 200 {
            return Some(s);
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "sekmet did not answer /metadata within 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A successful read of `patient` (`Patient/…`) by the agent `who` (a FHIR Reference),
/// from 10.0.0.5, recorded at `recorded`, observed by `observer`.
fn read_event(
    who: serde_json::Value,
    patient: &str,
    recorded: String,
    observer: &str,
) -> serde_json::Value {
    serde_json::json!({"resourceType": "AuditEvent",
           "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
           "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read"}],
           "action": "R", "recorded": recorded, "outcome": "0",
           "agent": [{"who": who, "requestor": true, "network": {"address": "10.0.0.5", "type": "2"}}],
           "source": {"observer": {"display": observer}},
           "entity": [{"what": {"reference": patient}}]})
}

fn post_all(base_url: &str, events: &[serde_json::Value]) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cfg = fhir_edge::config::Config::for_server(base_url, std::path::Path::new("/tmp"));
    let client = fhir_edge::client::FhirClient::new(&cfg.fhir, 1 << 20).unwrap();
    rt.block_on(async {
        let mut ids = Vec::new();
        for e in events {
            let mut e = e.clone();
            e.as_object_mut().unwrap().remove("id");
            e.as_object_mut().unwrap().remove("meta");
            ids.push(
                client
                    .create(&e)
                    .await
                    .expect("sekmet accepts the AuditEvent"),
            );
        }
        ids
    })
}

#[test]
fn every_event_loaded_in_bursts_is_scored_exactly_once() {
    bursts_are_scored_once(false);
}

/// The same with every poll's recheck answered by the server's `_summary=count`.
#[test]
fn every_event_loaded_in_bursts_is_scored_exactly_once_with_rechecks_by_count() {
    bursts_are_scored_once(true);
}

fn bursts_are_scored_once(by_count: bool) {
    let Some(s) = start_sekmet() else { return };
    let all = events(240, "real", 31);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&s.base_url, dir.path());
    cfg.poller.recheck_by_count = by_count;
    cfg.poller.page_size = 25;
    cfg.poller.initial_lookback_secs = 3600;
    // A first burst before the daemon starts, then three while it runs.
    let mut ids = post_all(&s.base_url, &all[..60]);
    let d = TestDaemon::start(cfg);
    for chunk in all[60..].chunks(60) {
        std::thread::sleep(Duration::from_millis(700));
        ids.extend(post_all(&s.base_url, chunk));
    }
    assert_eq!(ids.len(), 240);
    wait_until(
        Duration::from_secs(120),
        "240 events from the real server",
        || status(dir.path()).events_scored == 240,
    );
    let p = d.counter(Counter::PollsCompleted);
    wait_until(Duration::from_secs(60), "three more polls", || {
        d.counter(Counter::PollsCompleted) >= p + 3
    });
    assert_eq!(
        d.counter(Counter::EventsModelScored),
        240,
        "each event scored exactly once"
    );
    let keys = seen_keys(dir.path());
    assert_eq!(keys.len(), 240);
    let mut seen_ids: Vec<String> = keys
        .iter()
        .map(|k| k.split('|').next().unwrap().to_string())
        .collect();
    seen_ids.sort();
    ids.sort();
    assert_eq!(
        seen_ids, ids,
        "the scored events are exactly the ones the server assigned"
    );
    assert!(
        d.counter(Counter::EventsDuplicate) > 0,
        "overlap re-reads against a real server are recognised"
    );
    if by_count {
        // The server counts: rechecks were answered without reading the overlap.
        assert!(d.counter(Counter::OverlapRechecks) >= 3);
    }
}

#[test]
fn send_test_event_posts_a_valid_audit_event_and_prints_its_id() {
    let Some(s) = start_sekmet() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[fhir]\nbase_url = \"{}\"\n[detector]\nmodel_dir = \"{}\"\n[state]\ndir = \"{}\"\n",
            s.base_url,
            tiny_model().display(),
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fhir-edge"))
        .args(["send-test-event", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = stdout.split_whitespace().last().expect("an id").trim();
    let id = id.rsplit('/').next().unwrap();
    // The server accepted it as a valid AuditEvent and serves it back.
    let (code, body) =
        crate::pipeline::reqwest::get(&format!("{}/AuditEvent/{id}", s.base_url), None);
    assert_eq!(code, 200, "{body}");
    let ev: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ev["resourceType"], "AuditEvent");
    assert_eq!(ev["id"], id);
    // And fhir-edge reads it like any other event.
    let rec =
        fhir_edge_core::fhir::parse_audit_event(&serde_json::value::to_raw_value(&ev).unwrap())
            .expect("parses");
    assert!(rec.user.is_some());
}

/// `train --from-server --since 1d --epochs 2` into `dir/model`, with `dir`'s config (state
/// in `dir/state`); asserts it succeeded. Returns the model's folder, stdout and stderr.
fn train_from_server(dir: &std::path::Path, base_url: &str) -> (PathBuf, String, String) {
    train_from_server_with(dir, base_url, &["--since", "1d", "--epochs", "2"])
}

/// `train --from-server` with the config of `dir` and `args` into `dir/model`: the model,
/// and what the command printed and said.
fn train_from_server_with(
    dir: &std::path::Path,
    base_url: &str,
    args: &[&str],
) -> (PathBuf, String, String) {
    let cfg_file = crate::binary::write_config(dir, base_url);
    let model = dir.join("model");
    let mut all = vec![
        "--config",
        cfg_file.to_str().unwrap(),
        "train",
        "--from-server",
    ];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--output", model.to_str().unwrap()]);
    let (code, out, err) = crate::binary::run(&all, &[]);
    assert_eq!(code, 0, "{err}");
    (model, out, err)
}

/// A model trained with `train --from-server` carries the baselines and the server mark; a
/// daemon with empty state starts from them at the mark. Events the training read are
/// passed over (not scored, not alerted), events written in between and afterwards are
/// each scored exactly once, and `status` says where the baselines came from.
#[test]
fn a_daemon_started_from_a_server_trained_model_scores_every_later_event_once() {
    let Some(s) = start_sekmet() else { return };
    let all = events(320, "warm", 43);
    let learned = post_all(&s.base_url, &all[..200]);
    let dir = tempfile::tempdir().unwrap();
    let (model, out, _) = train_from_server(dir.path(), &s.base_url);
    assert!(out.contains("with the baselines of"), "{out}");
    // The server keeps receiving events between training and the daemon's start.
    let mut later = post_all(&s.base_url, &all[200..260]);
    let mut cfg = config(&s.base_url, dir.path());
    cfg.detector.model_dir = model;
    cfg.poller.page_size = 40;
    cfg.poller.overlap_secs = 30;
    let d = TestDaemon::start(cfg);
    later.extend(post_all(&s.base_url, &all[260..]));
    wait_until(Duration::from_secs(120), "the 120 later events", || {
        d.counter(Counter::EventsModelScored) >= 120
    });
    let p = d.counter(Counter::PollsCompleted);
    wait_until(Duration::from_secs(60), "three more polls", || {
        d.counter(Counter::PollsCompleted) >= p + 3
    });
    assert_eq!(
        d.counter(Counter::EventsModelScored),
        120,
        "every event after the mark scored exactly once, none of the learned ones"
    );
    let seen: std::collections::HashSet<String> = seen_keys(dir.path())
        .iter()
        .map(|k| k.split('|').next().unwrap().to_string())
        .collect();
    for id in &later {
        assert!(
            seen.contains(id),
            "event {id} after the mark was not scored"
        );
    }
    let passed_over = seen.iter().filter(|id| learned.contains(id)).count() as u64;
    assert_eq!(seen.len() as u64, 120 + passed_over);
    assert_eq!(
        d.counter(Counter::EventsPassedOver),
        passed_over,
        "the learned events the overlap re-read were passed over"
    );
    assert!(
        passed_over > 0,
        "the first poll re-reads the overlap before the mark"
    );
    let st = status(dir.path());
    assert!(
        st.baselines_until.is_some(),
        "status names the model's baselines"
    );
}

/// Events in HAPI's BALP layout (three agents, a request id, searches written once per
/// patient in their results), stored by the real server and followed by the daemon: each
/// is scored once, the fanned-out searches are read as such, and none alerts twice.
#[test]
fn hapi_shaped_events_from_the_real_server_are_scored_once_and_fanned_searches_alert_once() {
    let Some(s) = start_sekmet() else { return };
    let mut o = fhir_edge_lab::simulate::SimOptions::new(2, 17);
    o.users = 30;
    o.patients = 300;
    o.anomalies_from_day = 0;
    o.incidents_per_day = 40.0;
    let hapi = fhir_edge_lab::shape::reshape(
        fhir_edge_lab::simulate::simulate(&o),
        fhir_edge_lab::shape::Shape::Hapi,
        17,
    );
    // Every fanned-out search and enough ordinary events around them.
    let fanned: std::collections::HashSet<&str> = hapi
        .iter()
        .filter(|e| e.id.matches('-').count() > 1)
        .map(|e| e.id.rsplit_once('-').unwrap().0)
        .collect();
    assert!(
        !fanned.is_empty(),
        "the simulated day has fanned-out searches"
    );
    let picked: Vec<serde_json::Value> = hapi
        .iter()
        .enumerate()
        .filter(|(i, e)| *i < 150 || fanned.iter().any(|f| e.id.starts_with(&format!("{f}-"))))
        .map(|(_, e)| {
            let mut j = e.json();
            j["recorded"] = fhir_edge_core::clock::fmt_ms(chrono::Utc::now()).into();
            j
        })
        .collect();
    let ids = post_all(&s.base_url, &picked);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&s.base_url, dir.path());
    let d = TestDaemon::start(cfg);
    let n = ids.len() as u64;
    wait_until(Duration::from_secs(120), "every HAPI-shaped event", || {
        status(dir.path()).events_scored == n
    });
    assert_eq!(d.counter(Counter::EventsModelScored), n, "each scored once");
    let (_, st) = crate::pipeline::reqwest::get(&format!("http://{}/api/stats", d.api), None);
    let st: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert!(
        st["coverage"]["counts"]["fanned_out"].as_u64().unwrap() > 1,
        "the request ids survive the real server: {st}"
    );
    // No request alerts twice.
    let reader = fhir_edge_core::state::Reader::open(dir.path()).unwrap();
    let alerts = reader.alerts_upto(&Default::default(), usize::MAX).unwrap();
    let mut per_request = std::collections::HashMap::<String, usize>::new();
    for a in &alerts {
        let ev = reader.alert(a.id).unwrap().event.unwrap();
        let listed = ev["entity"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["role"]["code"] == "24")
            && ev["subtype"][0]["code"] == "search-type";
        if let (true, Some(req)) = (
            listed,
            ev["entity"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["type"]["code"] == "XrequestId")
                .and_then(|x| x["what"]["identifier"]["value"].as_str()),
        ) {
            *per_request.entry(req.to_string()).or_default() += 1;
        }
    }
    assert!(
        !per_request.is_empty(),
        "some fanned-out search alerts (else the check below proves nothing)"
    );
    assert!(per_request.values().all(|n| *n == 1), "{per_request:?}");
}

/// Every server's fixture (HAPI, Medplum, Firely, Aidbox) stored by the real server and
/// followed by the daemon: each scored once, and the lifetime coverage `status` prints
/// counts what those shapes carry (logins only where the server writes them, clients only
/// where an agent names one).
#[test]
fn every_server_shape_from_the_real_server_is_scored_once_and_counted_in_status() {
    let Some(s) = start_sekmet() else { return };
    let dir_fx = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/servers");
    let mut names: Vec<_> = std::fs::read_dir(&dir_fx)
        .unwrap()
        .map(|f| f.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    // Medplum writes a search's `entity.query` as plain text, which is not the
    // base64Binary R4 asks for: only Medplum itself stores those, a validating server
    // refuses them (their reading is covered by the golden test).
    names.retain(|p| !p.ends_with("medplum-search.json") && !p.ends_with("medplum-export.json"));
    names.sort();
    let now = fhir_edge_core::clock::fmt_ms(chrono::Utc::now());
    let events: Vec<serde_json::Value> = names
        .iter()
        .map(|p| {
            let mut j: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
            j["recorded"] = now.clone().into();
            j
        })
        .collect();
    let ids = post_all(&s.base_url, &events);
    assert_eq!(ids.len(), events.len(), "the server stores every shape");
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(config(&s.base_url, dir.path()));
    let n = ids.len() as u64;
    wait_until(Duration::from_secs(60), "every server's event", || {
        status(dir.path()).events_scored == n
    });
    assert_eq!(d.counter(Counter::EventsModelScored), n, "each scored once");
    let c = status(dir.path()).coverage;
    assert_eq!(c.events, n);
    assert_eq!(
        (c.logins, c.failed_logins, c.exports),
        (4, 2, 3),
        "Medplum's and Aidbox's logins, the others' exports: {c:?}"
    );
    assert_eq!(
        c.with_client, 13,
        "Firely, Aidbox and HAPI name a client, Medplum none"
    );
    assert_eq!(c.with_user, n, "every shape names its user");
}

/// PUT each resource at its id on the real server (references between them stay stable).
fn put_all(base_url: &str, resources: &[serde_json::Value]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let http = reqwest::Client::new();
        for r in resources {
            let url = format!(
                "{base_url}/{}/{}",
                r["resourceType"].as_str().unwrap(),
                r["id"].as_str().unwrap()
            );
            let resp = http
                .put(&url)
                .header("Content-Type", "application/fhir+json")
                .body(r.to_string())
                .send()
                .await
                .unwrap();
            let code = resp.status().as_u16();
            assert!(
                code == 200 || code == 201,
                "sekmet stores {url}: {code} {}",
                resp.text().await.unwrap_or_default()
            );
        }
    });
}

#[test]
fn the_care_context_is_followed_from_the_real_server_and_kept_without_names() {
    use serde_json::json;
    let Some(s) = start_sekmet() else { return };
    let now = chrono::Utc::now();
    let at = |h: i64| fhir_edge_core::clock::fmt_ms(now + chrono::Duration::hours(h));
    let class =
        json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"});
    // Staff, their roles, patients (one of them Ann's mother, named as her relative), an
    // admission with Ann on it, one that begins tomorrow, a care team, an appointment and an
    // episode of care: all eight types.
    let context = vec![
        json!({"resourceType": "Practitioner", "id": "ann", "identifier": [{"system": "urn:oid:2.16.840.1.113883.4.6", "value": "1234567893"}],
               "name": [{"family": "Quennell", "given": ["Annabel"]}], "birthDate": "1981-02-03",
               "address": [{"line": ["17 Wistful Vista"], "postalCode": "40412"}], "telecom": [{"system": "phone", "value": "555-0142-998"}]}),
        json!({"resourceType": "Practitioner", "id": "bob", "name": [{"family": "Tarkington", "given": ["Bob"]}]}),
        json!({"resourceType": "PractitionerRole", "id": "ann-card", "practitioner": {"reference": "Practitioner/ann"},
               "location": [{"display": "Cardiology"}]}),
        json!({"resourceType": "Patient", "id": "cx-1", "name": [{"family": "Hollowell", "given": ["Ida"]}]}),
        json!({"resourceType": "Patient", "id": "cx-2", "name": [{"family": "Quennell", "given": ["Maud"]}],
               "address": [{"line": ["17 Wistful Vista"], "postalCode": "40412"}], "birthDate": "1950-06-01"}),
        // Two records the server marks: restricted, and a VIP by HL7's patient importance.
        json!({"resourceType": "Patient", "id": "cx-3", "name": [{"family": "Ormsby"}],
               "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}]}}),
        json!({"resourceType": "Patient", "id": "cx-4", "name": [{"family": "Pellew"}],
               "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-importance",
                              "valueCodeableConcept": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-PatientImportance", "code": "VIP"}]}}]}),
        json!({"resourceType": "RelatedPerson", "id": "cx-2-ann", "patient": {"reference": "Patient/cx-2"},
               "name": [{"family": "Quennell", "given": ["Annabel"]}]}),
        json!({"resourceType": "Encounter", "id": "cx-enc-1", "status": "in-progress", "class": class,
               "subject": {"reference": "Patient/cx-1"}, "period": {"start": at(-3)},
               "participant": [{"individual": {"reference": "Practitioner/ann"}}]}),
        json!({"resourceType": "Encounter", "id": "cx-enc-2", "status": "planned", "class": class,
               "subject": {"reference": "Patient/cx-2"}, "period": {"start": at(24)},
               "participant": [{"individual": {"reference": "Practitioner/ann"}}]}),
        json!({"resourceType": "CareTeam", "id": "cx-team", "status": "active", "subject": {"reference": "Patient/cx-1"},
               "participant": [{"member": {"reference": "Practitioner/bob"}}]}),
        json!({"resourceType": "Appointment", "id": "cx-appt", "status": "booked", "start": at(2), "end": at(3),
               "participant": [{"actor": {"reference": "Patient/cx-1"}, "status": "accepted"},
                               {"actor": {"reference": "Practitioner/bob"}, "status": "accepted"}]}),
        json!({"resourceType": "EpisodeOfCare", "id": "cx-eoc", "status": "active", "patient": {"reference": "Patient/cx-1"},
               "period": {"start": at(-48)}, "team": [{"reference": "CareTeam/cx-team"}]}),
    ];
    put_all(&s.base_url, &context);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&s.base_url, dir.path());
    cfg.detector.model_dir = tiny_care_model().to_path_buf();
    cfg.context.interval_secs = 10;
    let d = TestDaemon::start(cfg);
    wait_until(Duration::from_secs(60), "the care context read", || {
        status(dir.path())
            .care
            .iter()
            .filter(|t| t.resources > 0)
            .count()
            == 8
    });
    let st = status(dir.path());
    let count = |t: &str| {
        st.care
            .iter()
            .find(|c| c.resource_type == t)
            .unwrap()
            .resources
    };
    assert_eq!(
        (count("Practitioner"), count("Patient"), count("Encounter")),
        (2, 4, 2)
    );
    assert!(st.care.iter().all(|t| t.refused.is_none()), "{:?}", st.care);
    // Now Ann opens her mother's record, and her own patient's.
    let ann = json!({"reference": "Practitioner/ann", "display": "Annabel Quennell"});
    let event = |patient: &str| read_event(ann.clone(), patient, at(0), "sekmet");
    let ids = post_all(&s.base_url, &[event("Patient/cx-2"), event("Patient/cx-1")]);
    wait_until(Duration::from_secs(60), "both accesses scored", || {
        status(dir.path()).events_scored == 2
    });
    assert_eq!(d.counter(Counter::EventsModelScored), 2);
    // Her mother's: an alert that says why; her patient's, inside the admission: none.
    let r = fhir_edge_core::state::Reader::open(dir.path()).unwrap();
    let alerts = r
        .alerts(&fhir_edge_core::alerts::AlertFilter {
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    let on = |id: &str| alerts.iter().find(|a| a.event_id == id);
    let mother = on(&ids[0]).expect("the relative's record raised an alert");
    assert!(
        mother
            .explanation
            .iter()
            .any(|e| e.contains("name the user as a relative")),
        "{:?}",
        mother.explanation
    );
    assert!(
        on(&ids[1]).is_none(),
        "inside a treatment relationship: {:?}",
        on(&ids[1])
    );
    // The server's marks came through its search pages and are kept: the two marked
    // records, and no other, are watched as the watch list's are.
    let mut marked: Vec<String> = r
        .care_facts()
        .unwrap()
        .iter()
        .filter_map(|f| match f {
            fhir_edge_core::care::Facts::Patient {
                id, marked: true, ..
            } => Some(id.clone()),
            _ => None,
        })
        .collect();
    marked.sort();
    assert_eq!(marked, ["Patient/cx-3", "Patient/cx-4"]);
    // Nothing of the people in clear in the state database, and the key file is private.
    drop(r);
    d.stop();
    // Every file of the state directory, read whole: again if one went away between the
    // listing and its read (SQLite's `-wal` and `-shm` go when the last connection closes,
    // which a blocking thread may do after the daemon's stop returned; the checkpoint has
    // then moved their pages into the database, read on the next pass).
    let read_all = || -> Option<Vec<u8>> {
        let mut db = Vec::new();
        for f in std::fs::read_dir(dir.path()).unwrap() {
            let p = f.unwrap().path();
            if p.is_file() {
                match std::fs::read(&p) {
                    Ok(b) => db.extend(b),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
                    Err(e) => panic!("{}: {e}", p.display()),
                }
            }
        }
        Some(db)
    };
    let db = (0..20)
        .find_map(|_| {
            read_all().or_else(|| {
                std::thread::sleep(std::time::Duration::from_millis(100));
                None
            })
        })
        .expect("the state directory holds still once the daemon has stopped");
    let db = String::from_utf8_lossy(&db).to_lowercase();
    for clear in [
        "quennell",
        "annabel",
        "hollowell",
        "maud",
        "wistful",
        "40412",
        "555-0142",
        "0142998",
        "1234567893",
        "1981-02-03",
        "ormsby",
        "pellew",
    ] {
        assert!(!db.contains(clear), "{clear} is in the state directory");
    }
    use std::os::unix::fs::PermissionsExt;
    let key = std::fs::metadata(dir.path().join("care.key")).unwrap();
    assert_eq!((key.len(), key.permissions().mode() & 0o777), (32, 0o600));
}

/// A site that starts warm, as the README says (`train --from-server` before the first
/// start), gets a model that knows its care context: training reads it from the server
/// when the daemon has followed none yet. The daemon, started with that model and no
/// context of its own, polls only after its first read of the context: Ann's accesses,
/// whose AuditEvents name no department, are each scored with the department her
/// PractitionerRole gives (were the first poll not held, they would be scored before the
/// context is read, without it).
#[test]
fn a_model_trained_from_the_server_before_the_first_start_knows_the_care_context_and_nothing_is_scored_without_it(
) {
    use serde_json::json;
    let Some(s) = start_sekmet() else { return };
    let now = chrono::Utc::now();
    let at = |m: i64| fhir_edge_core::clock::fmt_ms(now + chrono::Duration::minutes(m));
    let class =
        json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"});
    put_all(
        &s.base_url,
        &[
            json!({"resourceType": "Practitioner", "id": "ann", "name": [{"family": "Quennell", "given": ["Annabel"]}]}),
            json!({"resourceType": "PractitionerRole", "id": "ann-card", "practitioner": {"reference": "Practitioner/ann"},
                   "location": [{"display": "Cardiology"}]}),
            json!({"resourceType": "Patient", "id": "wc-1", "name": [{"family": "Hollowell", "given": ["Ida"]}]}),
            json!({"resourceType": "Encounter", "id": "wc-enc-1", "status": "in-progress", "class": class,
                   "subject": {"reference": "Patient/wc-1"}, "period": {"start": at(-180)},
                   "participant": [{"individual": {"reference": "Practitioner/ann"}}]}),
        ],
    );
    post_all(&s.base_url, &events(200, "wc-history", 47));
    let dir = tempfile::tempdir().unwrap();
    let (model, _, err) = train_from_server(dir.path(), &s.base_url);
    assert!(err.contains("reading it from the server now"), "{err}");
    assert!(
        err.contains("care context: the server's, 1 practitioners, 1 patients"),
        "{err}"
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model.join("model.json")).unwrap()).unwrap();
    assert_eq!(meta["training"]["care_context"], json!(true));
    // Ann's accesses, waiting on the server when the daemon first starts.
    let access = |i: i64| {
        let ann = json!({"reference": "Practitioner/ann"});
        read_event(ann, "Patient/wc-1", at(i), "sekmet")
    };
    post_all(&s.base_url, &[access(0), access(1), access(2)]);
    let mut cfg = config(&s.base_url, dir.path());
    cfg.detector.model_dir = model;
    let d = TestDaemon::start(cfg);
    wait_until(
        Duration::from_secs(120),
        "Ann's three accesses scored",
        || d.counter(Counter::EventsModelScored) >= 3,
    );
    // The counter moves when the model has run; the state commits the page after it.
    wait_until(
        Duration::from_secs(60),
        "the history and Ann's three accesses committed",
        || status(dir.path()).coverage.events >= 203,
    );
    let st = status(dir.path());
    assert_eq!(d.counter(Counter::EventsModelScored), 3);
    assert_eq!(st.coverage.events, 203, "{:?}", st.coverage);
    assert!(
        st.care.iter().any(|t| t.resources > 0),
        "the context was read: {:?}",
        st.care
    );
    assert_eq!(
        st.coverage.department_from_context, 3,
        "every access scored with the department her role gives: {:?}",
        st.coverage
    );
}

/// Where the AuditEvents name no department (Firely Server's layout: the user an identifier,
/// no location), `train --from-server` groups the users by the patients they share and
/// keeps the groups with the baselines: a daemon started from that model reads each later
/// access of a grouped user with their group as the department.
#[test]
fn a_model_trained_on_events_without_departments_reads_peer_groups_as_departments() {
    use serde_json::json;
    let Some(s) = start_sekmet() else { return };
    let now = chrono::Utc::now();
    let at = |m: i64| fhir_edge_core::clock::fmt_ms(now + chrono::Duration::minutes(m));
    let read = |user: &str, patient: &str, m: i64| {
        let who = json!({"identifier": {"system": "https://idp.hospital.example/realms/staff", "value": user}});
        read_event(who, &format!("Patient/{patient}"), at(m), "Firely Server")
    };
    // Two teams of three, each opening its own twelve patients, three times over.
    let mut history = Vec::new();
    for round in 0..3 {
        for p in 0..12 {
            for team in ["a", "b"] {
                for u in 0..3 {
                    let m = -600 + (round * 72 + p * 6 + u) as i64;
                    history.push(read(&format!("{team}{u}"), &format!("{team}-{p}"), m));
                }
            }
        }
    }
    post_all(&s.base_url, &history);
    let dir = tempfile::tempdir().unwrap();
    let (model, _, err) = train_from_server(dir.path(), &s.base_url);
    assert!(
        err.contains("peer groups: of 6 users whose events name no department, 6 are in 2 groups"),
        "{err}"
    );
    // A look by team a at team b's patient, and team b at its own.
    post_all(&s.base_url, &[read("a0", "b-3", 1), read("b1", "b-4", 2)]);
    let mut cfg = config(&s.base_url, dir.path());
    cfg.detector.model_dir = model;
    let d = TestDaemon::start(cfg);
    wait_until(
        Duration::from_secs(120),
        "the two later accesses scored",
        || d.counter(Counter::EventsModelScored) >= 2,
    );
    let n = history.len() as u64 + 2;
    wait_until(
        Duration::from_secs(60),
        "the history and the two accesses committed",
        || status(dir.path()).coverage.events >= n,
    );
    let st = status(dir.path());
    assert_eq!(d.counter(Counter::EventsModelScored), 2);
    assert_eq!(
        st.coverage.department_from_peers, 2,
        "each later access read with its user's group: {:?}",
        st.coverage
    );
}

/// Each case the API lists (`status=any`: watched ones too), as the set of its AuditEvent
/// ids (`/api/cases/{id}`, `event_ids`) and whether it is in the queue: what an outside
/// reader of the daemon sees, paged through to the end.
fn api_cases(api: std::net::SocketAddr) -> BTreeSet<(BTreeSet<String>, bool)> {
    let get = |url: String| {
        let (code, body) = crate::pipeline::reqwest::get(&url, None);
        assert_eq!(code, 200, "{url}: {body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    let mut out = BTreeSet::new();
    let mut cursor: Option<i64> = None;
    loop {
        let page = get(format!(
            "http://{api}/api/cases?status=any&limit=200{}",
            cursor.map(|c| format!("&cursor={c}")).unwrap_or_default()
        ));
        for c in page["cases"].as_array().unwrap() {
            let one = get(format!("http://{api}/api/cases/{}", c["id"]));
            let ids: BTreeSet<String> = one["event_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect();
            out.insert((ids, c["status"] != "watching"));
        }
        match page["next_cursor"].as_i64() {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

/// `score`'s cases (its `case` and `case_queued` columns) among the events `after`, as
/// [`api_cases`] gives the daemon's.
fn score_cases(csv: &str, after: &BTreeSet<String>) -> BTreeSet<(BTreeSet<String>, bool)> {
    let mut by_case: std::collections::BTreeMap<String, (BTreeSet<String>, bool)> =
        Default::default();
    for line in csv.lines().skip(1) {
        // id, score, severity, kind, case, case_queued, explanation
        let f: Vec<&str> = line.splitn(7, ',').collect();
        if f[4].is_empty() || !after.contains(f[0]) {
            continue;
        }
        let c = by_case.entry(f[4].to_string()).or_default();
        c.0.insert(f[0].to_string());
        c.1 |= f[5] == "true" || f[5] == "1";
    }
    by_case.into_values().collect()
}

/// The simulated hospital both tests below follow: 24 staff, 240 patients, five days from
/// 2026-01-05 with incidents from the fourth, written to `dir/sim`; its care context
/// (staff, patients, admissions, relatives) is stored on the server at once. Returns its
/// AuditEvents in recorded order and the ids of those recorded at or after [`MARK`].
fn simulated_hospital(
    dir: &std::path::Path,
    base_url: &str,
) -> (Vec<serde_json::Value>, BTreeSet<String>) {
    let out = dir.join("sim");
    let (code, _, err) = crate::binary::run(
        &[
            "simulate",
            "--days",
            "5",
            "--seed",
            "5",
            "--users",
            "24",
            "--patients",
            "240",
            "--anomalies-from-day",
            "3",
            "--incidents-per-day",
            "4",
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let lines = |f: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(out.join(f))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    put_all(base_url, &lines("context.ndjson"));
    let events = lines("events.ndjson");
    let after: BTreeSet<String> = events
        .iter()
        .filter(|e| e["recorded"].as_str().unwrap() >= MARK)
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert!(after.len() > 500 && after.len() < events.len());
    (events, after)
}

/// Where the simulated hospital's history ends and its live days begin.
const MARK: &str = "2026-01-08T00:00:00Z";

/// The overlap of the daemon that follows a bulk load written out of recorded order.
const OVERLAP_SECS: u64 = 3;

/// `score`'s cases of the events `after` with `model`, the hospital's care context and
/// watch list from the simulator's files ([`score_cases`]).
fn offline_cases(
    dir: &std::path::Path,
    model: &std::path::Path,
    after: &BTreeSet<String>,
) -> BTreeSet<(BTreeSet<String>, bool)> {
    let p = |f: &str| dir.join(f).to_str().unwrap().to_string();
    let (code, _, err) = crate::binary::run(
        &[
            "score",
            "--model",
            model.to_str().unwrap(),
            "--input",
            &p("sim/events.ndjson"),
            "--context",
            &p("sim/context.ndjson"),
            "--watch-list",
            &p("sim/watchlist.txt"),
            "--output",
            &p("offline.csv"),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let offline = score_cases(&std::fs::read_to_string(p("offline.csv")).unwrap(), after);
    assert!(
        offline.iter().filter(|c| c.1).count() >= 2,
        "the days after the mark hold queued cases: {offline:?}"
    );
    offline
}

/// A daemon following the simulated hospital's server from `model_dir` with the state in
/// `dir/state`, its watch list set, its overlap [`OVERLAP_SECS`] (the tests write part
/// of the hospital out of recorded order, longer before the rest than that).
fn hospital_daemon(base_url: &str, dir: &std::path::Path, model_dir: PathBuf) -> TestDaemon {
    let mut cfg = config(base_url, &dir.join("state"));
    cfg.detector.model_dir = model_dir;
    cfg.detector.watch_list = Some(dir.join("sim/watchlist.txt"));
    cfg.detector.learn_days = 2;
    cfg.poller.page_size = 500;
    cfg.poller.overlap_secs = OVERLAP_SECS;
    TestDaemon::start(cfg)
}

/// Wait until the daemon has scored `n` events and committed them; each scored once.
fn wait_scored(d: &TestDaemon, n: u64) {
    wait_until(
        Duration::from_secs(300),
        "every event after the mark",
        || d.counter(Counter::EventsModelScored) >= n,
    );
    // The counter moves when the model has run; the state commits the page after it.
    let polls = d.counter(Counter::PollsCompleted);
    wait_until(Duration::from_secs(60), "three more polls", || {
        d.counter(Counter::PollsCompleted) >= polls + 3
    });
    assert_eq!(d.counter(Counter::EventsModelScored), n, "each scored once");
}

/// The daemon's cases ([`api_cases`]) are exactly `offline`'s.
fn assert_same_cases(d: &TestDaemon, offline: &BTreeSet<(BTreeSet<String>, bool)>) {
    let filed = api_cases(d.api);
    let only_daemon: Vec<_> = filed.difference(offline).collect();
    let only_score: Vec<_> = offline.difference(&filed).collect();
    assert!(
        only_daemon.is_empty() && only_score.is_empty(),
        "{} cases filed by both; the daemon's alone: {only_daemon:?}; score's alone: {only_score:?}",
        filed.intersection(offline).count()
    );
}

/// What the quality benchmark measures (`score`'s cases, `crates/lab/quality/quality.py`)
/// is what the daemon files. A simulated hospital — its staff, patients, admissions and
/// relatives, then five days of AuditEvents — is written to the real server; a model is
/// trained from the server up to a mark two days before the end, as a site starts warm;
/// the daemon, started from it with an empty state, follows the server and reads its care
/// context. Every case it lists through the API, watched ones included, holds exactly the
/// AuditEvent ids of one of `score`'s cases of the events after the mark (the same model,
/// the same context from the simulator's files), queued or watched alike, and none is
/// missing. The events are written out of recorded order, as a bulk load may: the first
/// 300 after the mark go first, longer before the model's mark than the daemon's overlap,
/// and are scored all the same.
#[test]
fn the_daemon_files_the_cases_score_finds_on_a_simulated_hospital() {
    let Some(s) = start_sekmet() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (events, after) = simulated_hospital(dir.path(), &s.base_url);
    // `events` are in recorded order: the first 300 after the mark, then all the others.
    let first_after = events
        .iter()
        .position(|e| after.contains(e["id"].as_str().unwrap()))
        .unwrap();
    let early = events[first_after..first_after + 300].to_vec();
    let rest: Vec<_> = [&events[..first_after], &events[first_after + 300..]].concat();
    assert!(early
        .iter()
        .all(|e| after.contains(e["id"].as_str().unwrap())));
    put_all(&s.base_url, &early);
    std::thread::sleep(Duration::from_secs(OVERLAP_SECS + 2));
    put_all(&s.base_url, &rest);
    let watch = dir.path().join("sim/watchlist.txt");
    let (model, _, _) = train_from_server_with(
        dir.path(),
        &s.base_url,
        &[
            "--since",
            "2026-01-01T00:00:00Z",
            "--until",
            MARK,
            "--epochs",
            "3",
            "--watch-list",
            watch.to_str().unwrap(),
        ],
    );
    let offline = offline_cases(dir.path(), &model, &after);
    let d = hospital_daemon(&s.base_url, dir.path(), model);
    wait_scored(&d, after.len() as u64);
    assert_same_cases(&d, &offline);
}

/// A first start on a server that already holds the site's history needs no learning
/// days, and reviews what followed them: the simulated hospital's first four days (the
/// incidents begin on the fourth) are on the server when a daemon with a model of no site
/// (`learn_days = 2`) and an empty state starts. It trains the site's model from the
/// history's first two days before its first poll (into `<state>/model`, with the care
/// context the server holds) and starts warm: not learning, those two days passed over.
/// The history after them and the live day written afterwards are each scored once, and
/// its cases are exactly those `score` finds with the model it trained — as if it had been
/// installed when the history began — also with 300 events of the days to review written
/// first, before the rest of the history. With `learn_days` longer than the history, the
/// same start learns live.
#[test]
fn a_first_start_on_a_server_with_history_trains_the_sites_model_and_reviews_the_rest() {
    let Some(s) = start_sekmet() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (events, _) = simulated_hospital(dir.path(), &s.base_url);
    let recorded = |e: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(e["recorded"].as_str().unwrap())
            .unwrap()
            .timestamp_millis()
    };
    const DAY_MS: i64 = 86_400_000;
    let first = events.iter().map(recorded).min().unwrap();
    let (history, live): (Vec<_>, Vec<_>) = events
        .iter()
        .cloned()
        .partition(|e| recorded(e) < first + 4 * DAY_MS);
    // What a daemon learning two days from the first event would have scored after them.
    let review: BTreeSet<String> = events
        .iter()
        .filter(|e| recorded(e) >= first + 2 * DAY_MS)
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert!(!live.is_empty() && review.len() > live.len());
    // Written out of recorded order, as a bulk load may: 300 events of the days to review
    // first, longer before the rest than the daemon's overlap.
    let early_at = history
        .iter()
        .position(|e| review.contains(e["id"].as_str().unwrap()))
        .unwrap();
    put_all(&s.base_url, &history[early_at..early_at + 300]);
    std::thread::sleep(Duration::from_secs(OVERLAP_SECS + 2));
    put_all(
        &s.base_url,
        &[&history[..early_at], &history[early_at + 300..]].concat(),
    );
    let no_site = crate::learn::model_of_no_site(dir.path());
    // Too little history for five learning days: learning, as before.
    let short = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(short.path().join("sim")).unwrap();
    std::fs::copy(
        dir.path().join("sim/watchlist.txt"),
        short.path().join("sim/watchlist.txt"),
    )
    .unwrap();
    let mut cfg = config(&s.base_url, &short.path().join("state"));
    cfg.detector.model_dir = no_site.clone();
    cfg.detector.learn_days = 5;
    let d = TestDaemon::start(cfg);
    assert!(
        d.health.learning().is_some(),
        "four days of history, five to learn"
    );
    assert!(!short.path().join("state/model").exists());
    d.stop();

    let d = hospital_daemon(&s.base_url, dir.path(), no_site);
    assert!(
        d.health.learning().is_none(),
        "started warm from the model it trained"
    );
    let own = dir.path().join("state/model");
    assert!(fhir_edge_core::detector::baselines::present(&own));
    put_all(&s.base_url, &live);
    wait_scored(&d, review.len() as u64);
    // The first poll re-reads the overlap before the mark: the history loaded in seconds.
    let passed = d.counter(Counter::EventsPassedOver);
    assert!(
        passed > 0 && passed <= (events.len() - review.len()) as u64,
        "what is read again of the two learned days is passed over: {passed}"
    );
    let offline = offline_cases(dir.path(), &own, &review);
    assert_same_cases(&d, &offline);
}
