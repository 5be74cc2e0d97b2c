use super::*;
use serde_json::json;

fn key() -> CareKey {
    CareKey::from_bytes(&[7u8; 32]).unwrap()
}

fn ms(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap()
        .timestamp_millis()
}

fn hospital() -> Vec<serde_json::Value> {
    vec![
        json!({"resourceType": "Practitioner", "id": "ann",
               "identifier": [{"system": "urn:npi", "value": "111"}],
               "name": [{"family": "Okafor", "given": ["Ann"]}],
               "address": [{"line": ["1 Elm St"], "postalCode": "02100"}],
               "telecom": [{"system": "phone", "value": "+1 (555) 010-2000"}],
               "birthDate": "1980-04-02"}),
        json!({"resourceType": "Practitioner", "id": "bob", "name": [{"family": "Lindqvist", "given": ["Bob"]}],
               "birthDate": "1975-01-09", "identifier": [{"system": "urn:staff", "value": "b-9"}]}),
        json!({"resourceType": "PractitionerRole", "id": "ann-icu", "practitioner": {"reference": "Practitioner/ann"},
               "location": [{"display": "Intensive Care"}], "organization": {"reference": "Organization/icu"}}),
        json!({"resourceType": "PractitionerRole", "id": "bob-card", "practitioner": {"reference": "https://fhir.example/Practitioner/bob"},
               "location": [{"reference": "Location/cardio"}]}),
        // Admitted to intensive care on 3 Nov, Bob on the encounter from 5 Nov.
        json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "Marsh", "given": ["Eve"]}],
               "identifier": [{"system": "urn:mrn", "value": "MRN-77"}],
               "generalPractitioner": [{"reference": "Practitioner/bob"}]}),
        json!({"resourceType": "Encounter", "id": "e1", "status": "in-progress", "subject": {"reference": "Patient/p1"},
               "period": {"start": "2026-11-03T08:00:00Z"},
               "location": [{"location": {"display": "intensive care"}}],
               "participant": [{"individual": {"reference": "PractitionerRole/bob-card"}}]}),
        // Ann's mother: named as a relative, same home.
        json!({"resourceType": "Patient", "id": "p2", "name": [{"family": "Okafor", "given": ["Grace"]}],
               "address": [{"line": ["1 Elm St."], "postalCode": "02100"}], "birthDate": "1950-06-01"}),
        json!({"resourceType": "RelatedPerson", "id": "r1", "patient": {"reference": "Patient/p2"},
               "name": [{"family": "OKAFOR", "given": ["ann"]}]}),
        // Bob as a patient (same staff identifier).
        json!({"resourceType": "Patient", "id": "p3", "name": [{"family": "Lindqvist", "given": ["Bob"]}],
               "identifier": [{"system": "urn:staff", "value": "b-9"}]}),
        // A neighbour-in-name only: same family, other home.
        json!({"resourceType": "Patient", "id": "p4", "name": [{"family": "Okafor", "given": ["Tom"]}],
               "address": [{"line": ["9 Oak Rd"], "postalCode": "02999"}]}),
        // A finished admission, a care team via an episode, a booked appointment.
        json!({"resourceType": "Encounter", "id": "e2", "status": "finished", "subject": {"reference": "Patient/p4"},
               "period": {"start": "2026-10-01", "end": "2026-10-05"},
               "participant": [{"individual": {"reference": "Practitioner/ann"}}]}),
        json!({"resourceType": "CareTeam", "id": "t1", "participant": [{"member": {"reference": "Practitioner/ann"}}]}),
        json!({"resourceType": "EpisodeOfCare", "id": "ep1", "patient": {"reference": "Patient/p3"},
               "period": {"start": "2026-09-01"}, "team": [{"reference": "CareTeam/t1"}]}),
        json!({"resourceType": "Appointment", "id": "a1", "status": "booked", "created": "2026-11-20T10:00:00Z",
               "start": "2026-11-28T09:00:00Z", "end": "2026-11-28T09:30:00Z",
               "participant": [{"actor": {"reference": "Patient/p2"}}, {"actor": {"reference": "Practitioner/bob"}}]}),
        json!({"resourceType": "Appointment", "id": "a2", "status": "cancelled", "start": "2026-11-28T09:00:00Z",
               "participant": [{"actor": {"reference": "Patient/p4"}}, {"actor": {"reference": "Practitioner/bob"}}]}),
    ]
}

/// The index of `resources`, each read as the context reads it.
fn index_of(resources: impl IntoIterator<Item = serde_json::Value>) -> Index {
    let k = key();
    let mut set = FactSet::default();
    for r in resources {
        for f in resources::read(&r, &k) {
            set.upsert(f);
        }
    }
    set.index(k)
}

fn index() -> Index {
    index_of(hospital())
}

#[test]
fn audit_users_link_to_practitioners_by_reference_role_or_identifier() {
    let ix = index();
    assert_eq!(
        ix.practitioner_of("Practitioner/ann").as_deref(),
        Some("Practitioner/ann")
    );
    assert_eq!(
        ix.practitioner_of("https://fhir.example/fhir/Practitioner/ann/_history/3")
            .as_deref(),
        Some("Practitioner/ann")
    );
    assert_eq!(
        ix.practitioner_of("PractitionerRole/bob-card").as_deref(),
        Some("Practitioner/bob")
    );
    assert_eq!(
        ix.practitioner_of("urn:npi|111").as_deref(),
        Some("Practitioner/ann")
    );
    assert_eq!(
        ix.practitioner_of("b-9").as_deref(),
        Some("Practitioner/bob")
    );
    assert_eq!(ix.practitioner_of("urn:npi|999"), None);
    assert_eq!(ix.practitioner_of("Device/x"), None);
    let c = ix.counts();
    assert_eq!(
        (
            c.practitioners,
            c.patients,
            c.staff_as_patients,
            c.related_persons
        ),
        (2, 4, 1, 1)
    );
}

/// Where the AuditEvent names no department, the user's is their role's most specific
/// unit: the ward before the organisation, by name or by reference; a role is the user's
/// only within its period; nobody's without a role.
#[test]
fn a_users_department_is_their_roles_ward_within_its_period() {
    let ix = index();
    let now = ms("2026-11-10T12:00:00Z");
    assert_eq!(
        ix.department_of("Practitioner/ann", now),
        Some("Intensive Care")
    );
    assert_eq!(ix.department_of("urn:npi|111", now), Some("Intensive Care"));
    assert_eq!(
        ix.department_of("PractitionerRole/bob-card", now),
        Some("Location/cardio")
    );
    assert_eq!(ix.department_of("Practitioner/nobody", now), None);

    let k = key();
    let mut set = FactSet::default();
    for r in [
        json!({"resourceType": "PractitionerRole", "id": "cy-1", "practitioner": {"reference": "Practitioner/cy"},
               "organization": {"reference": "Organization/hospital"}, "specialty": [{"text": "Oncology"}],
               "period": {"start": "2026-01-01", "end": "2026-06-30"}}),
        json!({"resourceType": "PractitionerRole", "id": "cy-2", "practitioner": {"reference": "Practitioner/cy"},
               "organization": {"reference": "Organization/hospital"},
               "period": {"start": "2026-07-01"}}),
    ] {
        for f in resources::read(&r, &k) {
            set.upsert(f);
        }
    }
    let ix = set.index(k);
    assert_eq!(
        ix.department_of("Practitioner/cy", ms("2026-03-01T00:00:00Z")),
        Some("Oncology")
    );
    assert_eq!(
        ix.department_of("Practitioner/cy", ms("2026-08-01T00:00:00Z")),
        Some("Organization/hospital")
    );
    assert_eq!(
        ix.department_of("Practitioner/cy", ms("2025-12-01T00:00:00Z")),
        None
    );
}

#[test]
fn relationships_hold_from_their_start_to_a_week_after_their_end_never_before() {
    let ix = index();
    let r = |u: &str, unit: Option<&str>, p: &str, t: &str| ix.relation(u, unit, p, ms(t));
    // Bob joined the encounter through his role: personal, from the encounter's start.
    let bob = r(
        "Practitioner/bob",
        None,
        "Patient/p1",
        "2026-11-06T10:00:00Z",
    )
    .unwrap();
    assert!(bob.personal);
    // Bob is also p1's GP (no period): personal either way, before the admission too.
    assert_eq!(
        r(
            "Practitioner/bob",
            None,
            "Patient/p1",
            "2026-01-01T00:00:00Z"
        )
        .unwrap()
        .kind,
        CareKind::GeneralPractitioner
    );
    // Ann's unit (her role's location, by name) has p1's encounter: departmental.
    let ann = r(
        "Practitioner/ann",
        None,
        "Patient/p1",
        "2026-11-03T09:00:00Z",
    )
    .unwrap();
    assert_eq!((ann.kind, ann.personal), (CareKind::Encounter, false));
    assert!(ann.words().contains("since 2026-11-03"), "{}", ann.words());
    // …but not before it began: no clearing backwards in time.
    assert_eq!(
        r(
            "Practitioner/ann",
            None,
            "Patient/p1",
            "2026-11-03T07:59:00Z"
        ),
        None
    );
    // An unknown user in the unit the AuditEvent names.
    assert!(r(
        "Practitioner/zed",
        Some("Intensive  Care"),
        "Patient/p1",
        "2026-11-04T00:00:00Z"
    )
    .is_some());
    assert_eq!(
        r(
            "Practitioner/zed",
            Some("Radiology"),
            "Patient/p1",
            "2026-11-04T00:00:00Z"
        ),
        None
    );
    // A finished encounter: through the 5th and a week after, not later.
    assert!(r(
        "Practitioner/ann",
        None,
        "Patient/p4",
        "2026-10-12T00:00:00Z"
    )
    .is_some());
    assert_eq!(
        r(
            "Practitioner/ann",
            None,
            "Patient/p4",
            "2026-10-13T00:00:01Z"
        ),
        None
    );
    // Through a care team named by an episode of care.
    assert_eq!(
        r(
            "Practitioner/ann",
            None,
            "Patient/p3",
            "2026-10-01T00:00:00Z"
        )
        .unwrap()
        .kind,
        CareKind::EpisodeOfCare
    );
    // An appointment from its booking; a cancelled one never.
    assert!(r(
        "Practitioner/bob",
        None,
        "Patient/p2",
        "2026-11-21T00:00:00Z"
    )
    .is_some());
    assert_eq!(
        r(
            "Practitioner/bob",
            None,
            "Patient/p2",
            "2026-11-19T00:00:00Z"
        ),
        None
    );
    assert_eq!(
        r(
            "Practitioner/bob",
            None,
            "Patient/p4",
            "2026-11-28T09:00:00Z"
        ),
        None
    );
    assert!(ix.covers("Patient/p1") && !ix.covers("Patient/nobody"));
    // An AuditEvent that names the patient by identifier (BALP allows it).
    assert!(ix.covers("urn:mrn|MRN-77"));
    assert!(r(
        "Practitioner/bob",
        None,
        "urn:mrn|MRN-77",
        "2026-11-06T10:00:00Z"
    )
    .is_some());
    assert!(!ix.covers("urn:mrn|MRN-78"));
}

#[test]
fn personal_links_self_relative_household_and_coworker() {
    let ix = index();
    assert_eq!(
        ix.personal("Practitioner/bob", "Patient/p3"),
        Some(Personal::SelfRecord)
    );
    assert_eq!(
        ix.personal("Practitioner/ann", "Patient/p3"),
        Some(Personal::Coworker)
    );
    assert_eq!(
        ix.personal("Practitioner/ann", "Patient/p2"),
        Some(Personal::NamedRelative)
    );
    // The same family name alone is not a personal link here.
    assert_eq!(ix.personal("Practitioner/ann", "Patient/p4"), None);
    assert_eq!(ix.personal("Practitioner/bob", "Patient/p1"), None);
    // Household: family name and phone, no RelatedPerson.
    let ix = index_of([
        json!({"resourceType": "Practitioner", "id": "c", "name": [{"family": "Ng"}], "telecom": [{"value": "555-0100-777"}]}),
        json!({"resourceType": "Patient", "id": "q", "name": [{"text": "Lee Ng"}], "telecom": [{"system": "phone", "value": "(555) 0100 777"}]}),
    ]);
    assert_eq!(
        ix.personal("Practitioner/c", "Patient/q"),
        Some(Personal::Household)
    );
    // Names as a generator that appends digits to every name writes them (Synthea's
    // "Abe604 Frami345"): the staff member's mother, written with other digits, is still
    // of her family, and at her home; the relative named as "Abe Frami" names her son.
    let ix = index_of([
        json!({"resourceType": "Practitioner", "id": "abe", "name": [{"family": "Frami345", "given": ["Abe604"]}],
               "address": [{"line": ["12 Pine Rd"], "postalCode": "01002"}]}),
        json!({"resourceType": "Patient", "id": "mum", "name": [{"family": "Frami612", "given": ["Rosa77"]}],
               "address": [{"line": ["12 Pine Rd"], "postalCode": "01002"}]}),
        json!({"resourceType": "Patient", "id": "dad", "name": [{"family": "Frami9", "given": ["Len1"]}]}),
        json!({"resourceType": "RelatedPerson", "id": "son", "patient": {"reference": "Patient/dad"},
               "name": [{"family": "Frami", "given": ["Abe"]}]}),
    ]);
    assert_eq!(
        ix.personal("Practitioner/abe", "Patient/mum"),
        Some(Personal::Household)
    );
    assert_eq!(
        ix.personal("Practitioner/abe", "Patient/dad"),
        Some(Personal::NamedRelative)
    );
}

#[test]
fn a_bare_identifier_value_finds_a_record_but_never_makes_two_records_one_person() {
    let k = key();
    let mut set = FactSet::default();
    for r in [
        json!({"resourceType": "Practitioner", "id": "cy", "identifier": [{"system": "urn:staff", "value": "4711"}],
               "name": [{"family": "Cyr"}]}),
        // An MRN with the same digits as Cy's staff number, in another system.
        json!({"resourceType": "Patient", "id": "q", "identifier": [{"system": "urn:mrn", "value": "4711"}],
               "name": [{"family": "Quist"}]}),
    ] {
        resources::read(&r, &k)
            .into_iter()
            .for_each(|f| set.upsert(f));
    }
    let ix = set.index(k);
    assert_eq!(
        ix.practitioner_of("4711").as_deref(),
        Some("Practitioner/cy")
    );
    assert_eq!(ix.counts().staff_as_patients, 0);
    assert_eq!(ix.personal("Practitioner/cy", "Patient/q"), None);
}

/// A login realm's identifier (Firely writes the token's subject) finds the Practitioner
/// whose identifier has its value in the staff registry's system; a value two
/// Practitioners carry finds neither.
#[test]
fn a_login_realms_identifier_finds_the_one_practitioner_with_its_value() {
    let k = key();
    let mut set = FactSet::default();
    for r in [
        json!({"resourceType": "Practitioner", "id": "cy", "identifier": [{"system": "urn:staff", "value": "u4"}]}),
        json!({"resourceType": "Practitioner", "id": "di", "identifier": [{"system": "urn:staff", "value": "u5"}]}),
        json!({"resourceType": "Practitioner", "id": "ed", "identifier": [{"system": "urn:badge", "value": "u5"}]}),
    ] {
        resources::read(&r, &k)
            .into_iter()
            .for_each(|f| set.upsert(f));
    }
    let ix = set.index(k);
    assert_eq!(
        ix.practitioner_of("https://idp.example/realms/staff|u4")
            .as_deref(),
        Some("Practitioner/cy")
    );
    assert_eq!(
        ix.practitioner_of("urn:staff|u5").as_deref(),
        Some("Practitioner/di")
    );
    assert_eq!(
        ix.practitioner_of("https://idp.example/realms/staff|u5"),
        None
    );
    assert_eq!(ix.practitioner_of("u5"), None);
    assert_eq!(
        ix.practitioner_of("https://idp.example/realms/staff|u9"),
        None
    );
}

#[test]
fn records_the_server_marks_restricted_vip_or_staff_are_marked_for_every_user() {
    let patient = |id: &str, extra: serde_json::Value| {
        let mut p = json!({"resourceType": "Patient", "id": id, "name": [{"family": "Marsh"}]});
        for (f, v) in extra.as_object().unwrap() {
            p[f] = v.clone();
        }
        p
    };
    let v3 = "http://terminology.hl7.org/CodeSystem/v3-";
    let importance = "http://hl7.org/fhir/StructureDefinition/patient-importance";
    let cases = [
        (
            "r",
            json!({"meta": {"security": [{"system": format!("{v3}Confidentiality"), "code": "R"}]}}),
            true,
        ),
        ("v", json!({"meta": {"security": {"code": "V"}}}), true),
        (
            "cel",
            json!({"meta": {"security": [{"code": "HTEST"}, {"system": format!("{v3}ActCode"), "code": "CEL"}]}}),
            true,
        ),
        (
            "emp",
            json!({"meta": {"security": [{"code": "EMP"}]}}),
            true,
        ),
        (
            "vip",
            json!({"extension": [{"url": importance, "valueCodeableConcept": {"coding": [{"code": "VIP"}]}}]}),
            true,
        ),
        (
            "gov",
            json!({"extension": [{"url": importance, "valueCodeableConcept": {"text": "dignitary"}}]}),
            true,
        ),
        // A test label, normal confidentiality, an importance with no value, another extension.
        (
            "test",
            json!({"meta": {"security": [{"code": "HTEST"}, {"code": "N"}]}}),
            false,
        ),
        (
            "empty",
            json!({"extension": [{"url": importance, "valueCodeableConcept": {}}]}),
            false,
        ),
        (
            "other",
            json!({"extension": [{"url": "http://example.org/vip", "valueBoolean": true}]}),
            false,
        ),
        ("plain", json!({}), false),
    ];
    let mut all = Vec::new();
    for (id, extra, want) in &cases {
        let r = patient(id, extra.clone());
        assert_eq!(resources::marked(&r), *want, "{id}");
        all.push(r);
    }
    // An admission as a VIP or a member of staff marks the patient too; another courtesy,
    // or the courtesy of another type of resource, does not.
    let courtesy = |id: &str, code: &str| {
        json!({"resourceType": "Encounter", "id": format!("e-{id}"), "subject": {"reference": format!("Patient/{id}")},
               "period": {"start": "2026-11-03T08:00:00Z"}, "participant": [{"individual": {"reference": "Practitioner/x"}}],
               "hospitalization": {"specialCourtesy": [{"coding": [{"system": format!("{v3}EncounterSpecialCourtesy"), "code": code}]}]}})
    };
    // An admission as a VIP entered in error marks no one ("plain" stays unmarked).
    let mut error = courtesy("plain", "VIP");
    error["id"] = json!("e-error");
    error["status"] = json!("entered-in-error");
    all.extend([
        courtesy("plain", "NRM"),
        courtesy("e-vip", "vip"),
        courtesy("e-stf", "STF"),
        error,
    ]);
    let ix = index_of(all);
    assert_eq!(ix.counts().marked_patients, 8);
    assert!(ix.assess("Practitioner/y", None, "Patient/e-vip", 0).marked);
    assert!(ix.assess("Practitioner/y", None, "Patient/e-stf", 0).marked);
    // Whoever opens it, known to the context or not, with or without a relationship.
    for user in ["Practitioner/someone", "Device/kiosk"] {
        for (id, _, want) in &cases {
            let a = ix.assess(user, None, &format!("Patient/{id}"), 0);
            assert_eq!(a.marked, *want, "{user} {id}");
        }
    }
    assert!(
        !ix.assess("Practitioner/x", None, "Patient/unknown", 0)
            .marked
    );
}

#[test]
fn facts_keep_no_name_address_phone_or_birth_date_in_clear() {
    let k = key();
    for r in hospital() {
        for f in resources::read(&r, &k) {
            let raw = serde_json::to_string(&f).unwrap();
            let s = raw.to_lowercase();
            for clear in [
                "okafor",
                "eve",
                "grace",
                "elm",
                "02100",
                "555",
                "1980",
                "marsh",
                "lindqvist",
                "b-9",
                "111",
                "mrn-77",
            ] {
                assert!(!s.contains(clear), "{clear} in {s}");
            }
            let back: Facts = serde_json::from_str(&raw).unwrap();
            assert_eq!(back, f);
        }
    }
}

#[test]
fn context_files_read_resources_and_bundles_and_count_what_they_skip() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ctx.ndjson");
    let bundle = json!({"resourceType": "Bundle", "type": "searchset",
        "entry": [{"resource": hospital()[0]}, {"resource": {"resourceType": "Observation", "id": "o"}}]});
    std::fs::write(&p, format!("{}\nnot json\n\n{}\n", bundle, hospital()[5])).unwrap();
    let (set, sum) = FactSet::read_ndjson(&[p], &key()).unwrap();
    assert_eq!(
        (set.len(), sum.read, sum.skipped, sum.unreadable),
        (2, 2, 1, 1),
        "a Practitioner and an Encounter"
    );
    let e = FactSet::read_ndjson(&[dir.path().join("missing")], &key()).unwrap_err();
    assert_eq!(e.kind(), "context_file");
}
