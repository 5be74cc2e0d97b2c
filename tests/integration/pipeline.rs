//! The daemon against the embedded FHIR endpoint: every event scored exactly once through
//! paging, ties, late commits, unsorted servers, faults and restarts.

use std::time::Duration;

use chrono::Utc;
use fhir_edge_lab::server::Fault;

use crate::common::*;
use fhir_edge::health::Counter;

const T: Duration = Duration::from_secs(60);

#[test]
fn five_pages_with_ties_across_boundaries_are_scored_once() {
    // Groups of 7 share a timestamp, so ties straddle every 50-event page boundary.
    let s = seeded_server(230, "tie", 11, chrono::Duration::hours(2), 7);
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(config(&s.base_url, dir.path()));
    wait_until(T, "230 events committed", || {
        status(dir.path()).events_scored == 230
    });
    let p = polls(&d);
    wait_until(T, "two more polls", || polls(&d) >= p + 2);
    assert_eq!(
        scored(&d),
        230,
        "each event went through the model exactly once"
    );
    assert!(
        d.counter(Counter::EventsDuplicate) >= 230,
        "overlap re-reads were recognised as duplicates"
    );
    assert_eq!(seen_keys(dir.path()).len(), 230);
    assert!(d.counter(Counter::PagesFetched) >= 5);
    d.stop();
    let st = status(dir.path());
    assert_eq!(st.events_scored, 230);
    assert!(st.cursor.is_some());
}

/// A history read with a bound stops after the page that reaches it, with the oldest
/// events by `lastUpdated`, each once; without one it reads every page.
#[test]
fn a_bounded_history_read_stops_at_the_end_of_the_page_that_reaches_the_bound() {
    let s = seeded_server(300, "hist", 3, chrono::Duration::hours(1), 3);
    let cfg = fhir_edge::config::Config::for_server(&s.base_url, std::path::Path::new("/tmp"));
    let client = fhir_edge::client::FhirClient::new(&cfg.fhir, 1 << 20).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let since = Utc::now() - chrono::Duration::hours(2);
    let read = |max: Option<usize>| {
        let mut last = None;
        let (records, _) = rt
            .block_on(client.history(since, 50, max, |p| last = Some((p.events, p.pages))))
            .unwrap();
        (records, last.unwrap())
    };
    let (all, said) = read(None);
    assert_eq!((all.len(), said), (300, (300, 6)));
    let (some, said) = read(Some(120));
    assert_eq!(said.1, 3, "stops after the third page");
    assert!(some.len() >= 120 && some.len() <= 150, "{}", some.len());
    assert_eq!(said.0, some.len() as u64);
    let ids: std::collections::HashSet<&str> = some.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), some.len(), "each once");
    assert!(
        (0..100).all(|i| ids.contains(format!("hist-{i}").as_str())),
        "the oldest by lastUpdated"
    );
}

/// A model trained from files (`train --input`: its mark a `recorded` time) and a server
/// loaded in bulk three hours before the daemon's first start, longer ago than its
/// `initial_lookback_secs`: the daemon reads the server from the model's mark (at most 30
/// days back), so every event recorded after the mark is scored once and every one the
/// model learned is passed over. Reading only the lookback, it would score nothing.
#[test]
fn a_model_trained_from_files_has_the_server_read_from_its_mark() {
    let dir = tempfile::tempdir().unwrap();
    let mut evs = events(3000, "f", 7);
    let recorded = |e: &serde_json::Value| e["recorded"].as_str().unwrap().to_string();
    evs.sort_by_key(recorded);
    let mark = recorded(&evs[2000]);
    let learned: Vec<_> = evs.iter().filter(|e| recorded(e) < mark).collect();
    let file = dir.path().join("learned.ndjson");
    let lines: Vec<String> = learned.iter().map(|e| e.to_string()).collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let model = dir.path().join("model");
    let (code, _, err) = crate::binary::run(
        &[
            "train",
            "--input",
            file.to_str().unwrap(),
            "--epochs",
            "2",
            "--output",
            model.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let learned = learned.len() as u64;
    stamp(&mut evs, Utc::now() - chrono::Duration::hours(3), 1);
    let s = server();
    s.store.insert_raw(evs);
    let mut cfg = config(&s.base_url, &dir.path().join("state"));
    cfg.detector.model_dir = model;
    cfg.poller.initial_lookback_secs = 3600;
    let d = TestDaemon::start(cfg);
    wait_until(Duration::from_secs(60), "the events after the mark", || {
        d.counter(Counter::EventsModelScored) >= 3000 - learned
    });
    let before = polls(&d);
    wait_until(Duration::from_secs(30), "two more polls", || {
        polls(&d) >= before + 2
    });
    assert_eq!(d.counter(Counter::EventsModelScored), 3000 - learned);
    assert_eq!(d.counter(Counter::EventsPassedOver), learned);
    d.stop();
}

#[test]
fn late_commit_behind_the_cursor_inside_the_overlap_is_caught() {
    let s = seeded_server(60, "late", 12, chrono::Duration::seconds(30), 1);
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(config(&s.base_url, dir.path()));
    wait_until(T, "60 events", || status(dir.path()).events_scored == 60);
    let cursor = chrono::DateTime::parse_from_rfc3339(&status(dir.path()).cursor.unwrap())
        .unwrap()
        .with_timezone(&Utc);
    // A transaction that committed after the poll, stamped 20 s before the cursor.
    let mut late = events(61, "late-commit", 13).pop().unwrap();
    late["id"] = "late-commit-1".into();
    s.store
        .create_at(late, cursor - chrono::Duration::seconds(20));
    wait_until(T, "the late event", || {
        status(dir.path()).events_scored == 61
    });
    let p = polls(&d);
    wait_until(T, "two more polls", || polls(&d) >= p + 2);
    assert_eq!(scored(&d), 61);
    assert!(seen_keys(dir.path())
        .iter()
        .any(|k| k.starts_with("late-commit-1|")));
}

/// How a recheck learns of late commits: by reading the whole overlap, by the server's
/// counts, or by counts from a server that gives none (which falls back to reading).
#[derive(Clone, Copy, PartialEq)]
enum RecheckBy {
    Reading,
    Counts,
    CountsUnanswered,
}

#[test]
fn between_rechecks_polls_start_at_the_cursor_and_the_recheck_catches_late_commits() {
    recheck_catches_a_late_commit(RecheckBy::Reading);
}

#[test]
fn a_recheck_by_counts_reads_nothing_until_a_late_commit_and_then_catches_it() {
    recheck_catches_a_late_commit(RecheckBy::Counts);
}

#[test]
fn a_server_without_counts_has_the_overlap_read_and_late_commits_caught() {
    recheck_catches_a_late_commit(RecheckBy::CountsUnanswered);
}

fn recheck_catches_a_late_commit(by: RecheckBy) {
    // 200 events half a second apart, the newest 10 s ago: all inside the 120 s overlap.
    let s = server();
    let mut evs = events(200, "recheck", 19);
    let first = Utc::now() - chrono::Duration::seconds(110);
    for (i, e) in evs.iter_mut().enumerate() {
        let t = first + chrono::Duration::milliseconds(i as i64 * 500);
        e["meta"] =
            serde_json::json!({"versionId": "1", "lastUpdated": fhir_edge_core::clock::fmt_ms(t)});
    }
    s.store.insert_raw(evs);
    s.store.set_no_count(by == RecheckBy::CountsUnanswered);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&s.base_url, dir.path());
    cfg.poller.recheck_secs = Some(6);
    cfg.poller.recheck_by_count = by != RecheckBy::Reading;
    let d = TestDaemon::start(cfg);
    wait_until(T, "200 events", || status(dir.path()).events_scored == 200);
    let p = polls(&d);
    let dups = d.counter(Counter::EventsDuplicate);
    wait_until(T, "three more polls", || polls(&d) >= p + 3);
    let reread = d.counter(Counter::EventsDuplicate) - dups;
    assert!(
        reread < 100,
        "quick polls re-read only the cursor's instant, not the 200-event overlap: {reread}"
    );
    let rechecks = d.counter(Counter::OverlapRechecks);
    if by == RecheckBy::Counts {
        // Rechecks came and went (every 6 s), counted, and re-read nothing.
        wait_until(T, "a counted recheck", || {
            d.counter(Counter::OverlapRechecks) > rechecks
        });
        assert_eq!(d.counter(Counter::OverlapRereads), 0);
    }
    // A late commit 20 s behind the cursor: caught by the next recheck.
    let cursor = chrono::DateTime::parse_from_rfc3339(&status(dir.path()).cursor.unwrap())
        .unwrap()
        .with_timezone(&Utc);
    let dups = d.counter(Counter::EventsDuplicate);
    let mut late = events(1, "recheck-late", 20).pop().unwrap();
    late["id"] = "recheck-late-1".into();
    s.store
        .create_at(late, cursor - chrono::Duration::seconds(20));
    wait_until(T, "the late event", || {
        status(dir.path()).events_scored == 201
    });
    assert_eq!(scored(&d), 201);
    let reread = d.counter(Counter::EventsDuplicate) - dups;
    match by {
        RecheckBy::Counts => {
            assert_eq!(d.counter(Counter::OverlapRereads), 1);
            // From the narrowest part of the overlap holding the late event (40 events
            // after it, at most 30 more before it), not all of it.
            assert!(reread < 100, "re-read {reread} of the 200-event overlap");
        }
        RecheckBy::Reading | RecheckBy::CountsUnanswered => {
            assert_eq!(d.counter(Counter::OverlapRechecks), 0);
            assert!(reread >= 200, "the whole overlap re-read: {reread}");
        }
    }
}

#[test]
fn a_server_that_ignores_sort_still_gets_every_event_once() {
    let s = seeded_server(180, "unsorted", 14, chrono::Duration::hours(1), 3);
    s.store.set_ignore_sort(true);
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(config(&s.base_url, dir.path()));
    wait_until(T, "180 events", || status(dir.path()).events_scored == 180);
    let p = polls(&d);
    wait_until(T, "two more polls", || polls(&d) >= p + 2);
    assert_eq!(scored(&d), 180);
    // Each page arrives in reverse order, so the last event read is not the newest: the
    // cursor must still be the newest lastUpdated of the whole poll.
    let newest = s.store.newest_last_updated().unwrap();
    assert_eq!(
        status(dir.path()).cursor.as_deref(),
        Some(fhir_edge_core::clock::fmt_ms(newest).as_str())
    );
}

#[test]
fn rate_limits_storms_html_and_truncated_pages_are_survived() {
    let s = seeded_server(150, "fault", 15, chrono::Duration::hours(1), 2);
    s.store.push_fault(Fault::Status {
        code: 429,
        retry_after: Some(1),
        body: String::new(),
        content_type: "text/plain",
    });
    for _ in 0..4 {
        s.store.push_fault(Fault::Status {
            code: 503,
            retry_after: None,
            body: "busy".into(),
            content_type: "text/plain",
        });
    }
    s.store.push_fault(Fault::Status {
        code: 502,
        retry_after: None,
        body: "<html><head><title>502 Bad Gateway</title></head></html>".into(),
        content_type: "text/html",
    });
    s.store.push_fault(Fault::Body(
        "<html><title>Maintenance</title></html>".into(),
    ));
    s.store.push_fault(Fault::Truncate(300));
    s.store.push_fault(Fault::Status {
        code: 500,
        retry_after: None,
        body: r#"{"resourceType":"OperationOutcome","issue":[{"severity":"fatal","code":"exception","diagnostics":"database unavailable"}]}"#.into(),
        content_type: "application/fhir+json",
    });
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(config(&s.base_url, dir.path()));
    wait_until(
        Duration::from_secs(120),
        "150 events after the faults",
        || status(dir.path()).events_scored == 150,
    );
    assert!(
        d.counter(Counter::FetchErrors) >= 9,
        "every fault was counted: {}",
        d.counter(Counter::FetchErrors)
    );
    let p = polls(&d);
    wait_until(T, "two more polls", || polls(&d) >= p + 2);
    assert_eq!(scored(&d), 150);
    let reports = d.health.reports(&fhir_edge::health::ActorId::ALL);
    let poller = reports
        .iter()
        .find(|r| r.name == fhir_edge::health::ActorId::Poller)
        .unwrap();
    assert!(poller.errors >= 9);
    assert!(poller.last_error_kind.is_some());
}

#[test]
fn bad_entries_are_skipped_and_counted_the_rest_is_scored() {
    let s = server();
    let good = events(2, "entry", 16);
    let body = serde_json::json!({
        "resourceType": "Bundle", "type": "searchset",
        "entry": [
            {"resource": good[0], "search": {"mode": "match"}},
            {"resource": {"resourceType": "AuditEvent", "id": "broken", "recorded": "yesterday-ish"}, "search": {"mode": "match"}},
            {"resource": {"resourceType": "Patient", "id": "p1"}, "search": {"mode": "match"}},
            {"resource": good[1], "search": {"mode": "match"}}
        ]
    });
    s.store.push_fault(Fault::Body(body.to_string()));
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(config(&s.base_url, dir.path()));
    wait_until(T, "2 good entries", || {
        status(dir.path()).events_scored == 2
    });
    assert_eq!(status(dir.path()).events_skipped, 2);
    drop(d);
}

#[test]
fn expired_and_foreign_next_links_restart_from_the_cursor() {
    let s = seeded_server(120, "paging", 17, chrono::Duration::hours(1), 1);
    // First page's next link points to an expired paging id (404), then a foreign origin.
    s.store.push_fault(Fault::NextLink(format!(
        "{}/AuditEvent-pages?_getpages=expired",
        s.base_url
    )));
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(config(&s.base_url, dir.path()));
    wait_until(T, "120 events", || status(dir.path()).events_scored == 120);
    s.store.push_fault(Fault::NextLink(
        "http://198.51.100.7:9/fhir/AuditEvent?_offset=50".into(),
    ));
    let p = polls(&d);
    wait_until(T, "recovery after the foreign link", || polls(&d) >= p + 2);
    assert_eq!(scored(&d), 120);
    let kinds = d.health.reports(&fhir_edge::health::ActorId::ALL);
    assert!(
        kinds
            .iter()
            .find(|r| r.name == fhir_edge::health::ActorId::Poller)
            .unwrap()
            .errors
            >= 2
    );
}

#[test]
fn a_restart_between_pages_loses_and_doubles_nothing() {
    let s = seeded_server(400, "restart", 18, chrono::Duration::hours(1), 4);
    for _ in 0..8 {
        s.store.push_fault(Fault::Delay(Duration::from_millis(300)));
    }
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(config(&s.base_url, dir.path()));
    wait_until(T, "a first page", || status(dir.path()).events_scored >= 50);
    let health = d.health.clone();
    d.stop();
    let first_run = health.counters.get(Counter::EventsModelScored);
    let mid = status(dir.path()).events_scored;
    assert!(mid < 400, "stopped mid-poll ({mid})");
    assert_eq!(
        first_run, mid,
        "everything scored in the first run was committed"
    );
    let d = TestDaemon::start(config(&s.base_url, dir.path()));
    wait_until(T, "all 400", || status(dir.path()).events_scored == 400);
    let p = polls(&d);
    wait_until(T, "two more polls", || polls(&d) >= p + 2);
    assert_eq!(
        first_run + scored(&d),
        400,
        "no event scored twice across the restart"
    );
    assert_eq!(seen_keys(dir.path()).len(), 400);
}

#[test]
fn pushed_events_are_deduplicated_against_polling() {
    let s = server();
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(config(&s.base_url, dir.path()));
    let ev = events(1, "push", 19).pop().unwrap();
    // The server stores it (assigning version and lastUpdated); a subscription delivers the
    // stored copy to /fhir/notify.
    let id = s.store.create(ev);
    let stored = s.store.get(&id).unwrap();
    let body = serde_json::json!({
        "resourceType": "Bundle", "type": "history",
        "entry": [{"resource": {"resourceType": "SubscriptionStatus", "status": "active", "type": "event-notification"}},
                  {"fullUrl": format!("{}/AuditEvent/{id}", s.base_url), "resource": stored}]
    });
    // Posting before the poll would see it or after: either way it is scored once.
    let client =
        reqwest::blocking_free_post(&format!("http://{}/fhir/notify", d.api), body.to_string());
    assert_eq!(client.0, 200, "{}", client.1);
    wait_until(T, "the pushed event", || {
        status(dir.path()).events_scored == 1
    });
    let p = polls(&d);
    wait_until(T, "two more polls", || polls(&d) >= p + 2);
    assert_eq!(scored(&d), 1);
    assert_eq!(status(dir.path()).events_scored, 1);
    // An event without meta cannot be matched with its polled copy: refused, not doubled.
    let mut bare = events(2, "bare", 20).pop().unwrap();
    bare.as_object_mut().unwrap().remove("meta");
    let r = reqwest::blocking_free_post(&format!("http://{}/fhir/notify", d.api), bare.to_string());
    assert_eq!(r.0, 422, "{}", r.1);
    // Malformed and oversized bodies: clear 4xx, nothing stored.
    let r =
        reqwest::blocking_free_post(&format!("http://{}/fhir/notify", d.api), "{not json".into());
    assert_eq!(r.0, 400, "{}", r.1);
    let big = format!(
        "{{\"resourceType\":\"Bundle\",\"entry\":[{}]}}",
        "{}".repeat(5 * 1024 * 1024)
    );
    let r = reqwest::blocking_free_post(&format!("http://{}/fhir/notify", d.api), big);
    assert_eq!(r.0, 413, "{}", r.1);
    assert_eq!(status(dir.path()).events_scored, 1);
}

/// Tiny blocking HTTP helpers (a runtime per call keeps tests independent of actix).
pub mod reqwest {
    pub fn blocking_free_post(url: &str, body: String) -> (u16, String) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let r = ::reqwest::Client::new()
                .post(url)
                .header("content-type", "application/fhir+json")
                .body(body)
                .send()
                .await
                .unwrap();
            let code = r.status().as_u16();
            (code, r.text().await.unwrap_or_default())
        })
    }

    pub fn get(url: &str, token: Option<&str>) -> (u16, String) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut req = ::reqwest::Client::new().get(url);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            match req.send().await {
                Ok(r) => {
                    let code = r.status().as_u16();
                    (code, r.text().await.unwrap_or_default())
                }
                // Not listening (yet): code 0.
                Err(e) => (0, e.to_string()),
            }
        })
    }
}

/// A slow catch-up: 30 pages at 150 ms each.
fn slow_server(prefix: &str, ignore_sort: bool) -> Server {
    let s = seeded_server(600, prefix, 31, chrono::Duration::hours(2), 3);
    s.store.set_ignore_sort(ignore_sort);
    for _ in 0..40 {
        s.store.push_fault(Fault::Delay(Duration::from_millis(150)));
    }
    s
}

fn slow_config(base_url: &str, dir: &std::path::Path) -> fhir_edge::config::Config {
    let mut c = config(base_url, dir);
    c.poller.page_size = 20;
    c.poller.checkpoint_secs = 1;
    c
}

#[test]
fn a_long_sorted_poll_checkpoints_its_cursor_an_unsorted_one_never() {
    // Sorted: the cursor (and snapshot) is committed before the poll completes.
    let s = slow_server("ckpt", false);
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(slow_config(&s.base_url, dir.path()));
    wait_until(T, "a checkpoint inside the first poll", || {
        let st = status(dir.path());
        st.cursor.is_some() && st.last_poll.is_none()
    });
    let mid = status(dir.path());
    assert!(
        mid.snapshot_taken.is_some(),
        "the snapshot goes with the cursor"
    );
    assert!(mid.events_scored < 600, "still catching up");
    wait_until(T, "all 600", || status(dir.path()).events_scored == 600);
    let p = polls(&d);
    wait_until(T, "two more polls", || polls(&d) >= p + 2);
    assert_eq!(scored(&d), 600);
    d.stop();

    // Unsorted: no checkpoint may be taken, the cursor moves only with a complete poll.
    let s = slow_server("nockpt", true);
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(slow_config(&s.base_url, dir.path()));
    let started = std::time::Instant::now();
    loop {
        let st = status(dir.path());
        assert!(
            st.cursor.is_none() || st.last_poll.is_some(),
            "cursor committed mid-poll on an unsorted server: {st:?}"
        );
        if st.last_poll.is_some() {
            break;
        }
        assert!(started.elapsed() < T, "the first poll never completed");
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_until(T, "all 600", || status(dir.path()).events_scored == 600);
    assert_eq!(scored(&d), 600);
    d.stop();
}

#[test]
fn a_server_that_refuses_the_care_context_types_still_gets_every_event_scored_and_status_says_so() {
    // The lab endpoint serves AuditEvents only: every context type is a 404.
    let s = seeded_server(120, "refuse", 5, chrono::Duration::minutes(30), 1);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&s.base_url, dir.path());
    cfg.context.types = vec!["Practitioner".into(), "Encounter".into()];
    let d = TestDaemon::start(cfg);
    wait_until(
        Duration::from_secs(60),
        "120 events and both types refused",
        || {
            let st = status(dir.path());
            st.events_scored == 120 && st.care.iter().filter(|t| t.refused.is_some()).count() == 2
        },
    );
    let st = status(dir.path());
    assert!(
        st.care
            .iter()
            .all(|t| t.refused.as_deref().unwrap().contains("404")),
        "{:?}",
        st.care
    );
    assert_eq!(
        d.counter(fhir_edge::health::Counter::ContextErrors),
        0,
        "a refusal is not an error"
    );
    assert_eq!(
        d.counter(fhir_edge::health::Counter::EventsModelScored),
        120
    );
}

#[test]
fn the_care_context_is_read_page_by_page_once_and_links_the_audit_users() {
    let mut o = fhir_edge_lab::simulate::SimOptions::new(1, 11);
    o.users = 20;
    o.patients = 60;
    o.anomalies_from_day = 99;
    let context = fhir_edge_lab::simulate::context_resources(&o);
    let of = |t: &str| context.iter().filter(|r| r["resourceType"] == t).count() as u64;
    let s = server();
    s.store.insert_context(context.clone());
    let mut events: Vec<serde_json::Value> = fhir_edge_lab::simulate::simulate(&o)
        .into_iter()
        .take(300)
        .map(|e| e.json())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&s.base_url, dir.path());
    cfg.detector.model_dir = tiny_care_model().to_path_buf();
    cfg.context.page_size = 7;
    cfg.context.interval_secs = 10;
    let d = TestDaemon::start(cfg);
    wait_until(Duration::from_secs(60), "the context read", || {
        status(dir.path())
            .care
            .iter()
            .filter(|t| t.cursor_ms.is_some())
            .count()
            >= 6
    });
    // The audit trail once the detector has the context (events scored before it arrives
    // are scored without it).
    stamp(&mut events, Utc::now(), 1);
    s.store.insert_raw(events);
    wait_until(Duration::from_secs(60), "the events", || {
        status(dir.path()).events_scored == 300
    });
    let p = d.counter(Counter::PollsCompleted);
    wait_until(Duration::from_secs(30), "a snapshot after them", || {
        d.counter(Counter::PollsCompleted) > p
    });
    let st = status(dir.path());
    let kept = |t: &str| {
        st.care
            .iter()
            .find(|c| c.resource_type == t)
            .map_or(0, |c| c.resources)
    };
    for t in [
        "Practitioner",
        "PractitionerRole",
        "Patient",
        "Encounter",
        "CareTeam",
        "RelatedPerson",
    ] {
        assert_eq!(
            kept(t),
            of(t),
            "{t}: every resource kept once, over pages of 7"
        );
    }
    assert!(st.care.iter().all(|t| t.refused.is_none()), "{:?}", st.care);
    assert!(d.counter(Counter::ContextResourcesRead) >= context.len() as u64);
    assert_eq!(d.counter(Counter::ContextErrors), 0);
    // The next snapshot's commit (at most `checkpoint_secs` after the last) says how many
    // audit users were linked.
    let mut counts = (0, 0, None);
    wait_until(Duration::from_secs(60), "a snapshot with the links", || {
        let st = status(dir.path());
        counts = (
            st.care_users_linked.unwrap_or(0),
            st.care_users_not_linked.unwrap_or(0),
            st.care_outside_rate,
        );
        counts.0 > 0
    });
    let (linked, unlinked, outside) = counts;
    assert!(
        linked > 0 && unlinked == 0,
        "{linked} linked, {unlinked} not"
    );
    // The simulated hospital's context describes its staff's work: nothing said of it.
    assert!(
        outside.is_some_and(|r| !fhir_edge_core::detector::features::describes_nobody(r)),
        "{outside:?}"
    );
    assert_eq!(d.counter(Counter::CareContextDescribesNobody), 0);
}
