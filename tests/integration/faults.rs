//! Server faults beyond single bad answers: an outage (connections refused and cut) for a
//! while, a flapping server, answers slower than the timeout, and pages larger than
//! `max_page_bytes` (once, and persistently). After each: every event scored once.
//!
//! OUTAGE_SECS lengthens the outage for a longer run (RELIABILITY.md).

use std::time::Duration;

use fhir_edge_lab::server::Fault;

use crate::common::*;
use fhir_edge::health::Counter;

const T: Duration = Duration::from_secs(90);

fn poller_report(d: &TestDaemon) -> fhir_edge::health::ActorReport {
    d.health
        .reports(&fhir_edge::health::ActorId::ALL)
        .into_iter()
        .find(|r| r.name == fhir_edge::health::ActorId::Poller)
        .unwrap()
}

/// Wait until `n` events are committed and two more polls found nothing new, then check
/// that each went through the model exactly once.
fn settle(d: &TestDaemon, dir: &std::path::Path, n: u64) {
    wait_until(T, &format!("{n} events"), || status(dir).events_scored == n);
    let p = polls(d);
    wait_until(T, "two more polls", || polls(d) >= p + 2);
    assert_eq!(scored(d), n, "each event scored exactly once");
    assert_eq!(seen_keys(dir).len() as u64, n);
}

#[test]
fn an_outage_loses_nothing_and_the_daemon_stays_healthy_while_backing_off() {
    let outage = Duration::from_secs(
        std::env::var("OUTAGE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(12),
    );
    let s = seeded_server(300, "pre-outage", 41, chrono::Duration::hours(1), 2);
    let mut proxy = Proxy::start(s.addr);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&proxy.url_for(&s.base_url), dir.path());
    cfg.fhir.timeout_secs = 1;
    let d = TestDaemon::start(cfg);
    wait_until(T, "300 events", || status(dir.path()).events_scored == 300);

    proxy.down();
    let errors_before = d.counter(Counter::FetchErrors);
    // The hospital keeps working: events pile up on the server during the outage.
    let started = std::time::Instant::now();
    let mut i = 0;
    while started.elapsed() < outage {
        arrive(&s, 10, &format!("during-outage-{i}"), 42 + i);
        i += 1;
        std::thread::sleep(Duration::from_millis(500));
        // Backing off is progress: the poller stays healthy (the watchdog keeps pinging).
        assert!(
            poller_report(&d).healthy,
            "poller healthy while backing off"
        );
    }
    let during = i * 10;
    let r = poller_report(&d);
    assert_eq!(r.last_error_kind.as_deref(), Some("connect"), "{r:?}");
    assert!(d.counter(Counter::FetchErrors) > errors_before);
    assert_eq!(
        status(dir.path()).events_scored,
        300,
        "nothing scored while the server is away"
    );

    proxy.up();
    settle(&d, dir.path(), 300 + during);
}

#[test]
fn a_flapping_server_loses_nothing() {
    let s = server();
    let mut proxy = Proxy::start(s.addr);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&proxy.url_for(&s.base_url), dir.path());
    cfg.fhir.timeout_secs = 1;
    cfg.poller.page_size = 20;
    let d = TestDaemon::start(cfg);
    let mut total = 0;
    for round in 0..16u64 {
        arrive(&s, 25, &format!("flap-{round}"), 60 + round);
        total += 25;
        if round % 2 == 0 {
            proxy.down();
            if round == 0 {
                // Hold the first outage until the poller runs into it: whether a 600 ms
                // window catches a request is up to the scheduler. (Before the first cursor,
                // the request is the server-time probe, whose failures went uncounted.)
                wait_until(T, "a poll into the outage", || {
                    d.counter(Counter::FetchErrors) > 0
                });
            }
        } else {
            proxy.up();
        }
        std::thread::sleep(Duration::from_millis(600));
    }
    proxy.up();
    settle(&d, dir.path(), total);
    assert!(
        d.counter(Counter::FetchErrors) > 0,
        "the flaps were noticed"
    );
}

#[test]
fn answers_slower_than_the_timeout_are_retried() {
    let s = seeded_server(100, "slow", 43, chrono::Duration::hours(1), 1);
    for _ in 0..3 {
        s.store
            .push_fault(Fault::Delay(Duration::from_millis(2500)));
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&s.base_url, dir.path());
    cfg.fhir.timeout_secs = 1;
    let d = TestDaemon::start(cfg);
    settle(&d, dir.path(), 100);
    let r = poller_report(&d);
    assert!(r.errors >= 3, "{r:?}");
    assert_eq!(r.last_error_kind.as_deref(), Some("timeout"), "{r:?}");
}

#[test]
fn a_50_mb_page_is_refused_and_persistently_large_pages_shrink_the_page_size() {
    let s = seeded_server(80, "huge", 44, chrono::Duration::hours(1), 1);
    // Once: a 50 MB page (one giant entry).
    let giant = format!(
        r#"{{"resourceType":"Bundle","type":"searchset","entry":[{{"resource":{{"resourceType":"AuditEvent","id":"giant","padding":"{}"}}}}]}}"#,
        "x".repeat(50 << 20)
    );
    s.store.push_fault(Fault::Body(giant));
    // Persistently: 40 events of ~60 KB each, so a page of 50 is ~2.4 MB.
    let mut fat = events(40, "fat", 45);
    stamp(
        &mut fat,
        chrono::Utc::now() - chrono::Duration::minutes(30),
        1,
    );
    for e in &mut fat {
        e["extension"] =
            serde_json::json!([{"url": "urn:padding", "valueString": "p".repeat(60_000)}]);
    }
    s.store.insert_raw(fat);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&s.base_url, dir.path());
    cfg.poller.max_page_bytes = 1 << 20;
    let d = TestDaemon::start(cfg);
    settle(&d, dir.path(), 120);
    let r = poller_report(&d);
    assert!(
        r.errors >= 2,
        "the giant page and a fat one were refused: {r:?}"
    );
}
