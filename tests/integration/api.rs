//! The HTTP API: token enforcement, case status, allow-list suppression.

use std::time::Duration;

use crate::common::*;
use crate::pipeline::reqwest::{blocking_free_post, get};

/// A bulk export by `user`: the kind of event that always alerts.
pub fn export_event(id: &str, user: &str) -> serde_json::Value {
    let mut ev = fhir_edge::client::sample_event(chrono::Utc::now());
    ev["id"] = id.into();
    ev["meta"] = serde_json::json!({"versionId": "1", "lastUpdated": fhir_edge_core::clock::fmt_ms(chrono::Utc::now())});
    ev["agent"][0]["who"]["reference"] = user.into();
    ev["entity"].as_array_mut().unwrap().push(serde_json::json!({
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"},
        "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24"},
        "query": "R0VUIC9QYXRpZW50LyRleHBvcnQ="
    }));
    ev
}

pub fn request(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = ::reqwest::Client::new();
        let mut r = match method {
            "POST" => c.post(url),
            "DELETE" => c.delete(url),
            _ => c.get(url),
        };
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = r.send().await.unwrap();
        let code = resp.status().as_u16();
        (code, resp.json().await.unwrap_or(serde_json::Value::Null))
    })
}

#[test]
fn every_request_needs_the_token_when_one_is_configured() {
    let s = server();
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("api-token");
    std::fs::write(&tok, "s3cret-api-token\n").unwrap();
    let mut cfg = config(&s.base_url, dir.path());
    cfg.api.token_file = Some(tok);
    let d = TestDaemon::start(cfg);
    for path in ["/api/health", "/api/alerts", "/api/stats", "/metrics", "/"] {
        let (code, _) = get(&format!("http://{}{path}", d.api), None);
        assert_eq!(code, 401, "{path} without a token");
        let (code, _) = get(&format!("http://{}{path}", d.api), Some("wrong"));
        assert_eq!(code, 401, "{path} with a wrong token");
    }
    let (code, body) = get(
        &format!("http://{}/api/alerts", d.api),
        Some("s3cret-api-token"),
    );
    assert_eq!(code, 200, "{body}");
    let (code, _) = blocking_free_post(&format!("http://{}/fhir/notify", d.api), "{}".into());
    assert_eq!(code, 401, "push without a token");
}

#[test]
fn false_positive_with_allow_rule_suppresses_the_pattern() {
    let s = server();
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(config(&s.base_url, dir.path()));
    let api = format!("http://{}", d.api);
    let x1 = export_event("x1", "Practitioner/alice").to_string();
    let (code, body) = blocking_free_post(&format!("{api}/fhir/notify"), x1.clone());
    assert_eq!(code, 200, "{body}");
    let (_, list) = request("GET", &format!("{api}/api/alerts"), None, None);
    let alerts = list["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1, "the export alerted: {list}");
    let id = alerts[0]["id"].as_i64().unwrap();
    assert_eq!(alerts[0]["status"], "new");
    assert!(alerts[0]["explanation"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e.as_str().unwrap().contains("export")));

    // Re-delivery of the same event (the same version, as the server stored it): neither
    // scored nor alerted again.
    blocking_free_post(&format!("{api}/fhir/notify"), x1);
    let (_, list) = request("GET", &format!("{api}/api/alerts"), None, None);
    assert_eq!(list["alerts"].as_array().unwrap().len(), 1);

    // Invalid transitions are refused with a clear 400.
    let (code, _) = request(
        "POST",
        &format!("{api}/api/alerts/{id}/status"),
        None,
        Some(serde_json::json!({"status": "done"})),
    );
    assert_eq!(code, 400);
    let (code, _) = request(
        "POST",
        &format!("{api}/api/alerts/999/status"),
        None,
        Some(serde_json::json!({"status": "confirmed"})),
    );
    assert_eq!(code, 404);

    // Mark false positive and allow this user's pattern.
    let (code, a) = request(
        "POST",
        &format!("{api}/api/alerts/{id}/status"),
        None,
        Some(
            serde_json::json!({"status": "false_positive", "note": "research export", "by": "officer", "allow": {"user": true}}),
        ),
    );
    assert_eq!(code, 200, "{a}");
    assert_eq!(a["status"], "false_positive");
    assert_eq!(a["status_note"], "research export");
    let (_, rules) = request("GET", &format!("{api}/api/allowlist"), None, None);
    assert_eq!(rules["rules"].as_array().unwrap().len(), 1);
    assert_eq!(rules["rules"][0]["user"], "Practitioner/alice");

    // The same pattern afterwards: suppressed. Another user: still alerts.
    blocking_free_post(
        &format!("{api}/fhir/notify"),
        export_event("x2", "Practitioner/alice").to_string(),
    );
    blocking_free_post(
        &format!("{api}/fhir/notify"),
        export_event("x3", "Practitioner/bob").to_string(),
    );
    let (_, list) = request("GET", &format!("{api}/api/alerts"), None, None);
    let users: Vec<&str> = list["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["user"].as_str().unwrap())
        .collect();
    assert_eq!(
        users,
        vec!["Practitioner/bob", "Practitioner/alice"],
        "alice's second export suppressed"
    );
    assert_eq!(
        status(dir.path()).events_scored,
        3,
        "suppressed events are still scored"
    );

    // Filters: by status and user.
    let (_, fp) = request(
        "GET",
        &format!("{api}/api/alerts?status=false_positive"),
        None,
        None,
    );
    assert_eq!(fp["alerts"].as_array().unwrap().len(), 1);
    let (_, bob) = request(
        "GET",
        &format!("{api}/api/alerts?user=Practitioner/bob"),
        None,
        None,
    );
    assert_eq!(bob["alerts"].as_array().unwrap().len(), 1);
    let (code, _) = request(
        "GET",
        &format!("{api}/api/alerts?since=yesterday"),
        None,
        None,
    );
    assert_eq!(code, 400);

    // Removing the rule brings the pattern back.
    let rule_id = rules["rules"][0]["id"].as_i64().unwrap();
    let (code, _) = request(
        "DELETE",
        &format!("{api}/api/allowlist/{rule_id}"),
        None,
        None,
    );
    assert_eq!(code, 200);
    blocking_free_post(
        &format!("{api}/fhir/notify"),
        export_event("x4", "Practitioner/alice").to_string(),
    );
    wait_until(Duration::from_secs(10), "a new alert for alice", || {
        let (_, l) = request(
            "GET",
            &format!("{api}/api/alerts?user=Practitioner/alice"),
            None,
            None,
        );
        l["alerts"].as_array().unwrap().len() == 2
    });
    // Prometheus text has the counters.
    let (code, m) = get(&format!("{api}/metrics"), None);
    assert_eq!(code, 200);
    assert!(m.contains("fhir_edge_events_scored_total 4"), "{m}");
    // ... and the histograms: every scored page was observed once per stage.
    for name in [
        "fhir_edge_scoring_duration_seconds",
        "fhir_edge_commit_duration_seconds",
        "fhir_edge_batch_size_events",
    ] {
        assert!(m.contains(&format!("# TYPE {name} histogram")), "{m}");
        let count = m
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}_count ")))
            .unwrap_or_else(|| panic!("{name}_count missing:\n{m}"));
        assert!(count.parse::<u64>().unwrap() >= 1, "{name}: {count}");
        assert!(
            m.contains(&format!("{name}_bucket{{le=\"+Inf\"}} {count}")),
            "{m}"
        );
    }
    assert!(
        m.contains("# TYPE fhir_edge_poll_duration_seconds histogram"),
        "{m}"
    );
}

/// A page size the API cannot honour is refused, saying how to get more, not cut silently.
#[test]
fn a_limit_beyond_one_page_is_refused_with_the_way_to_page() {
    let s = server();
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(config(&s.base_url, dir.path()));
    let (code, body) = get(&format!("http://{}/api/alerts?limit=100000", d.api), None);
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("limit must be 1–1000 (got 100000); follow next_cursor"),
        "{body}"
    );
    let (code, _) = get(&format!("http://{}/api/alerts?limit=1000", d.api), None);
    assert_eq!(code, 200);
}

/// Alerts of one user close in time are one case; the case API lists, shows (with the
/// AuditEvent ids) and decides it; closing as appropriate offers, and with `allow` adds,
/// the rules it implies, after which the same access raises nothing; `/metrics` counts
/// cases by status.
#[test]
fn one_users_alerts_form_one_case_that_is_reviewed_and_closed() {
    let s = server();
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(config(&s.base_url, dir.path()));
    let api = format!("http://{}", d.api);
    for (id, user) in [
        ("c1", "Practitioner/alice"),
        ("c2", "Practitioner/alice"),
        ("c3", "Practitioner/bob"),
    ] {
        let mut ev = export_event(id, user);
        ev["agent"][0]["location"] = serde_json::json!({"display": "Cardiology"});
        let (code, body) = blocking_free_post(&format!("{api}/fhir/notify"), ev.to_string());
        assert_eq!(code, 200, "{body}");
    }
    let (code, list) = request("GET", &format!("{api}/api/cases"), None, None);
    assert_eq!(code, 200, "{list}");
    let cases = list["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 2, "alice's two alerts are one case: {list}");
    assert_eq!(list["counts"]["new"], 2);
    let alice = cases
        .iter()
        .find(|c| c["user"] == "Practitioner/alice")
        .unwrap();
    assert_eq!(alice["alerts"], 2);
    assert_eq!(
        alice["title"], "bulk export or very large search",
        "{alice}"
    );
    assert!(
        alice["narrative"]
            .as_str()
            .unwrap()
            .contains("2 flagged accesses"),
        "{alice}"
    );
    let id = alice["id"].as_i64().unwrap();
    let (code, one) = request("GET", &format!("{api}/api/cases/{id}"), None, None);
    assert_eq!(code, 200);
    let mut events: Vec<&str> = one["event_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    events.sort();
    assert_eq!(events, ["c1", "c2"]);
    assert_eq!(one["alerts"].as_array().unwrap().len(), 2);

    // The user card: what the detector learned of alice, the department her events
    // named, her cases.
    let (code, card) = request(
        "GET",
        &format!("{api}/api/user?ref=Practitioner/alice"),
        None,
        None,
    );
    assert_eq!(code, 200, "{card}");
    assert!(card["learned"]["events"].as_u64().unwrap() >= 2, "{card}");
    assert_eq!(card["cases"].as_array().unwrap().len(), 1);
    assert!(
        !card["departments"].as_array().unwrap().is_empty(),
        "{card}"
    );
    let (_, nobody) = request(
        "GET",
        &format!("{api}/api/user?ref=Practitioner/none"),
        None,
        None,
    );
    assert!(nobody["learned"].is_null() && nobody["cases"].as_array().unwrap().is_empty());

    // Filters, paging limits, and decisions that cannot be taken.
    let (_, bobs) = request(
        "GET",
        &format!("{api}/api/cases?user=Practitioner/bob&status=new"),
        None,
        None,
    );
    assert_eq!(bobs["cases"].as_array().unwrap().len(), 1);
    let (code, body) = request("GET", &format!("{api}/api/cases?limit=5000"), None, None);
    assert_eq!(code, 400, "{body}");
    let (code, body) = request(
        "POST",
        &format!("{api}/api/cases/{id}/status"),
        None,
        Some(serde_json::json!({"status": "closed"})),
    );
    assert_eq!(code, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("needs a resolution"),
        "{body}"
    );
    let (code, _) = request(
        "POST",
        &format!("{api}/api/cases/999/status"),
        None,
        Some(serde_json::json!({"status": "in_review"})),
    );
    assert_eq!(code, 404);

    // In review, then closed as appropriate with the implied rules added.
    let (code, r) = request(
        "POST",
        &format!("{api}/api/cases/{id}/status"),
        None,
        Some(serde_json::json!({"status": "in_review", "by": "officer"})),
    );
    assert_eq!(
        (code, r["case"]["status"].as_str()),
        (200, Some("in_review")),
        "{r}"
    );
    let (code, r) = request(
        "POST",
        &format!("{api}/api/cases/{id}/status"),
        None,
        Some(
            serde_json::json!({"status": "closed", "resolution": "appropriate",
                                "note": "approved research export", "by": "officer", "allow": true}),
        ),
    );
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["case"]["resolution"], "appropriate");
    assert_eq!(r["rules_added"], true);
    let implied = r["implied_rules"].as_array().unwrap();
    assert!(
        !implied.is_empty() && implied.iter().all(|x| x["user"] == "Practitioner/alice"),
        "{r}"
    );
    let (_, rules) = request("GET", &format!("{api}/api/allowlist"), None, None);
    assert_eq!(
        rules["rules"].as_array().map_or(0, |a| a.len()),
        implied.len(),
        "{rules}"
    );
    // The same access again raises nothing; the closed case keeps its two alerts.
    blocking_free_post(
        &format!("{api}/fhir/notify"),
        export_event("c4", "Practitioner/alice").to_string(),
    );
    let (_, list) = request("GET", &format!("{api}/api/alerts"), None, None);
    assert_eq!(list["alerts"].as_array().unwrap().len(), 3, "{list}");
    let (_, queue) = request("GET", &format!("{api}/api/cases?status=open"), None, None);
    let queue = queue["cases"].as_array().unwrap();
    assert_eq!(queue.len(), 1, "the queue holds bob's case only: {queue:?}");
    assert_eq!(queue[0]["user"], "Practitioner/bob");
    let (_, metrics) = get(&format!("{api}/metrics"), None);
    assert!(
        metrics.contains("fhir_edge_cases{status=\"closed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("fhir_edge_cases{status=\"new\"} 1"),
        "{metrics}"
    );
}
