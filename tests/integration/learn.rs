//! Learning a site: a daemon whose model was not trained on its site raises only the
//! alerts that need no baseline and says it is learning; when its learning days are over
//! it trains the site's model from the server's history and switches to it and to its
//! baselines, live.

use std::time::Duration;

use crate::common::*;
use fhir_edge::health::Counter;

/// The tiny model without its baselines: a model trained on no site (like the shipped one).
pub fn model_of_no_site(dir: &std::path::Path) -> std::path::PathBuf {
    let out = dir.join("no-site-model");
    std::fs::create_dir_all(&out).unwrap();
    for f in ["model.json", "model.safetensors"] {
        std::fs::copy(tiny_model().join(f), out.join(f)).unwrap();
    }
    out
}

fn failed_logins(n: usize) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| {
            let mut e = fhir_edge::client::sample_failed_login(
                chrono::Utc::now() - chrono::Duration::minutes(30) + chrono::Duration::seconds(i as i64),
            );
            e["id"] = format!("fail-{i}").into();
            e["meta"] = serde_json::json!({"versionId": "1", "lastUpdated": fhir_edge_core::clock::fmt_ms(chrono::Utc::now() - chrono::Duration::minutes(29))});
            e
        })
        .collect()
}

#[test]
fn while_learning_only_baseline_free_alerts_are_raised_and_it_says_so() {
    // A day with many injected incidents: most need baselines to be judged.
    let mut o = fhir_edge_lab::simulate::SimOptions::new(1, 9);
    o.users = 30;
    o.patients = 300;
    o.anomalies_from_day = 0;
    o.incidents_per_day = 60.0;
    let mut evs: Vec<_> = fhir_edge_lab::simulate::simulate(&o)
        .into_iter()
        .map(|e| e.json())
        .collect();
    stamp(&mut evs, chrono::Utc::now() - chrono::Duration::hours(3), 1);
    let n = evs.len() as u64 + 6;
    let s = server();
    s.store.insert_raw(evs);
    s.store.insert_raw(failed_logins(6));
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&s.base_url, dir.path());
    cfg.detector.model_dir = model_of_no_site(dir.path());
    cfg.detector.learn_days = 0;
    let d = TestDaemon::start(cfg);
    wait_until(Duration::from_secs(60), "every event", || {
        status(dir.path()).events_scored == n
    });
    let (code, h) = crate::pipeline::reqwest::get(&format!("http://{}/api/health", d.api), None);
    assert_eq!(code, 200);
    let h: serde_json::Value = serde_json::from_str(&h).unwrap();
    assert!(
        h["learning"]
            .as_str()
            .unwrap()
            .contains("only failed-login bursts and bulk exports"),
        "{h}"
    );
    assert!(
        h["status_line"].as_str().unwrap().contains("LEARNING"),
        "{h}"
    );
    // What the trail fed, for the privacy officer and the sysadmin.
    let (_, st) = crate::pipeline::reqwest::get(&format!("http://{}/api/stats", d.api), None);
    let st: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!(st["coverage"]["counts"]["events"], n, "{st}");
    assert!(
        st["coverage"]["counts"]["failed_logins"].as_u64().unwrap() >= 6,
        "{st}"
    );
    assert!(st["coverage"]["summary"]
        .as_str()
        .unwrap()
        .starts_with(&format!("of {n} events")));
    assert!(
        d.counter(Counter::AlertsHeldLearning) > 0,
        "the tiny model finds the ordinary traffic odd"
    );
    let alerts = fhir_edge_core::state::Reader::open(dir.path())
        .unwrap()
        .alerts(&fhir_edge_core::alerts::AlertFilter {
            limit: 1000,
            ..Default::default()
        })
        .unwrap();
    assert!(
        !alerts.is_empty(),
        "the failed-login burst alerts while learning"
    );
    use fhir_edge_core::alerts::AlertKind;
    // A burst or an export among its reasons (a new address may come first: the burst
    // is no less a burst).
    for a in &alerts {
        let export = a.kinds.contains(&AlertKind::MassExport)
            && a.explanation
                .iter()
                .any(|e| e.starts_with("bulk data export"));
        assert!(
            a.kinds.contains(&AlertKind::FailedLogins) || export,
            "alert {} while learning: {:?}",
            a.id,
            a.explanation
        );
    }
    assert!(
        alerts
            .iter()
            .any(|a| a.user.as_deref() == Some("Practitioner/fhir-edge-test")),
        "the failed-login burst alerts while learning"
    );
    assert!(status(dir.path()).learning_since.is_some());
}

#[test]
fn after_its_learning_days_the_daemon_trains_the_sites_model_and_switches_live() {
    let s = seeded_server(400, "grad", 6, chrono::Duration::hours(3), 1);
    let dir = tempfile::tempdir().unwrap();
    // Learning began three weeks ago (as a daemon that has run that long has it stored).
    fhir_edge_core::state::Store::open(dir.path())
        .unwrap()
        .learning_since((chrono::Utc::now() - chrono::Duration::days(21)).timestamp_millis())
        .unwrap();
    let mut cfg = config(&s.base_url, dir.path());
    cfg.detector.model_dir = model_of_no_site(dir.path());
    cfg.detector.learn_days = 14;
    let d = TestDaemon::start(cfg.clone());
    wait_until(Duration::from_secs(120), "the site's model", || {
        d.counter(Counter::SiteModelsTrained) == 1
    });
    assert!(d.health.learning().is_none(), "learning is over");
    // The detector took over the model's baselines (what the model alerted on in the
    // learning days left out), not the context it followed while learning.
    wait_until(Duration::from_secs(30), "the handover", || {
        d.counter(Counter::SiteBaselinesAdopted) + d.counter(Counter::SiteBaselinesNotAdopted) == 1
    });
    assert_eq!(d.counter(Counter::SiteBaselinesAdopted), 1);
    let own = dir.path().join("model");
    assert!(
        fhir_edge_core::detector::baselines::present(&own),
        "trained with baselines"
    );
    fhir_edge_core::detector::model::Model::load(&own).unwrap();
    // Events keep being scored, and a restart keeps the site's model.
    arrive(&s, 50, "after", 7);
    wait_until(Duration::from_secs(60), "450 events", || {
        status(dir.path()).events_scored == 450
    });
    d.stop();
    let d = TestDaemon::start(cfg);
    assert!(
        d.health.learning().is_none(),
        "the site's model is used after a restart"
    );
}
