//! Component throughput, single-threaded, on simulated events: page parsing, feature
//! extraction, model scoring, and features + score + explanation together (what the
//! detector does per page). `cargo bench --bench pipeline [-- EVENTS]`.
//!
//! Figures go to BENCHMARKS.md; nothing here asserts a speed.

use std::time::Instant;

use fhir_edge_core::detector::features::Context;
use fhir_edge_core::detector::model::Model;
use fhir_edge_core::detector::{score_stream, Explain};
use fhir_edge_core::fhir::{parse_page_owned, AuditRecord};
use fhir_edge_lab::simulate::{watch_list, SimOptions};
use fhir_edge_lab::write_default_model;

const PAGE: usize = 1000;

fn rate(label: &str, n: usize, secs: f64) {
    println!(
        "{label:<34} {n:>8} events in {secs:>6.3} s = {:>9.0} events/s ({:.2} µs/event)",
        n as f64 / secs,
        secs * 1e6 / n as f64
    );
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let now = chrono::Utc::now();
    let events = fhir_edge_lab::traffic::bench_events_json(n, 1, now);

    // Search pages as a server sends them.
    let pages: Vec<Vec<u8>> = events
        .chunks(PAGE)
        .map(|c| {
            let mut s = String::from(
                r#"{"resourceType":"Bundle","type":"searchset","link":[{"relation":"self","url":"http://x/AuditEvent"}],"entry":["#,
            );
            for (i, (_, id, json)) in c.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s.push_str(&format!(
                    r#"{{"fullUrl":"http://x/AuditEvent/{id}","resource":{json},"search":{{"mode":"match"}}}}"#
                ));
            }
            s.push_str("]}");
            s.into_bytes()
        })
        .collect();
    let bytes: usize = pages.iter().map(Vec::len).sum();
    drop(events);

    // `-- N parse-loop`: parse the pages over and over (for a profiler).
    if std::env::args().any(|a| a == "parse-loop") {
        for _ in 0..20 {
            let t = Instant::now();
            for p in &pages {
                parse_page_owned(p.clone(), "AuditEvent")?;
            }
            rate("parse search pages", n, t.elapsed().as_secs_f64());
        }
        return Ok(());
    }
    let t = Instant::now();
    let mut records: Vec<AuditRecord> = Vec::with_capacity(n);
    for p in pages {
        let page = parse_page_owned(p, "AuditEvent")?;
        records.extend(page.events.into_iter().map(|f| f.record));
    }
    let secs = t.elapsed().as_secs_f64();
    rate("parse search pages", records.len(), secs);
    println!(
        "{:<34} {:.0} MB/s ({} bytes per event)",
        "",
        bytes as f64 / secs / 1e6,
        bytes / n
    );

    let dir = tempfile::tempdir()?;
    write_default_model(dir.path())?;
    let model = Model::load(dir.path())?;

    // The simulated hospital's watch list (its events are the benchmark's), as a site that
    // keeps one runs.
    let watch = watch_list(&SimOptions::new(14, 1));
    let site = || {
        let mut c = Context::new(chrono_tz::UTC);
        c.set_watch_list(watch.iter().map(String::as_str));
        c
    };

    let t = Instant::now();
    let mut ctx = site();
    let rows: Vec<_> = records.iter().map(|r| ctx.observe(r).0).collect();
    rate(
        "features (Context::observe)",
        rows.len(),
        t.elapsed().as_secs_f64(),
    );

    let t = Instant::now();
    let mut scored = 0;
    for chunk in rows.chunks(PAGE) {
        scored += model.score(chunk)?.len();
    }
    rate(
        "model score (batches of 1000)",
        scored,
        t.elapsed().as_secs_f64(),
    );

    for (label, which) in [
        ("features + score, alerts explained", Explain::Alerts),
        ("features + score, all explained", Explain::All),
    ] {
        let t = Instant::now();
        let mut ctx = site();
        let out = score_stream(&model, &mut ctx, &records, PAGE, which, None)?;
        rate(label, out.len(), t.elapsed().as_secs_f64());
    }
    Ok(())
}
