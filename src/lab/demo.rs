//! `fhir-edge demo`: the whole job in one process, no FHIR server of your own. An embedded
//! FHIR endpoint serves a simulated hospital's AuditEvents — two weeks of baseline history,
//! then live activity with injected anomalies in accelerated time. First the demo learns
//! that hospital's normal from its history, the way a site does with `fhir-edge train
//! --from-server` (the model and its baselines); then the real daemon (poller → detector →
//! alert sink → state, over HTTP, with paging and de-duplication) starts warm from that
//! model and follows the live part. The dashboard and API are up while it runs. When it
//! stops, it says how many alerts fell on events the simulator did not inject.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::config::Config;
use crate::health::Counter;
use fhir_edge_core::alerts::Severity;
use fhir_edge_core::clock::SystemClock;
use fhir_edge_lab::server::{serve, FhirStore};
use fhir_edge_lab::simulate::{simulate, SimOptions};

pub struct DemoOptions {
    pub listen: SocketAddr,
    /// Simulated seconds per real second for the live part.
    pub speedup: f64,
    pub seed: u64,
    /// Stop after this long (for scripted runs); `None` runs until Ctrl-C.
    pub duration: Option<Duration>,
}

const BASELINE_DAYS: u32 = 14;
const LIVE_DAYS: u32 = 3;
/// Training epochs for the demo's site model (`train`'s default).
const EPOCHS: usize = 20;

pub fn run(opts: DemoOptions) -> anyhow::Result<()> {
    let state = tempfile::Builder::new()
        .prefix("fhir-edge-demo-")
        .tempdir()
        .context("creating a temporary state directory")?;
    let model_dir = state.path().join("model");

    let mut sim = SimOptions::new(BASELINE_DAYS + LIVE_DAYS, opts.seed);
    sim.users = 100;
    sim.patients = 2000;
    sim.anomalies_from_day = BASELINE_DAYS;
    sim.incidents_per_day = 14.0;
    let events = simulate(&sim);
    let live_start = sim.start + chrono::Duration::days(BASELINE_DAYS as i64);
    let split = events.partition_point(|e| e.recorded < live_start);
    let injected: std::collections::HashSet<String> = events[split..]
        .iter()
        .filter(|e| e.label.is_some())
        .map(|e| e.id.clone())
        .collect();
    let now = chrono::Utc::now();

    let sys = actix_rt::System::new();
    sys.block_on(async move {
        let store = FhirStore::new(Arc::new(SystemClock));
        // History: stored over the past hour, so the first poll catches up on it.
        let history: Vec<_> = events[..split]
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let mut j = e.json();
                let lu = now - chrono::Duration::milliseconds(3_600_000 - (i as i64 * 3_600_000 / split.max(1) as i64));
                j["meta"]["lastUpdated"] = fhir_edge_core::clock::fmt_ms(lu).into();
                j
            })
            .collect();
        store.insert_raw(history);
        // The hospital's care context, served like a real server's Practitioners,
        // Encounters and CareTeams (the daemon follows them; training reads them too).
        let context = fhir_edge_lab::simulate::context_resources(&sim);
        let context_file = state.path().join("context.ndjson");
        fhir_edge_lab::simulate::write_context(&sim, &context_file)
            .context("writing the demo's care context")?;
        store.insert_context(context);
        let (fhir_addr, fhir_handle) = serve(store.clone(), "127.0.0.1:0".parse().unwrap(), 1)?;
        let base_url = format!("http://{fhir_addr}/fhir");

        let mut cfg = Config::for_server(&base_url, state.path());
        cfg.detector.model_dir = model_dir.clone();
        // The simulated hospital's watch list, as a site keeps one.
        let watch_file = state.path().join("watch-list.txt");
        fhir_edge_lab::simulate::write_watch_list(&sim, &watch_file)
            .context("writing the demo watch list")?;
        cfg.detector.watch_list = Some(watch_file);
        cfg.poller.interval_secs = 2;
        cfg.poller.page_size = 500;
        cfg.poller.initial_lookback_secs = 2 * 3600;
        cfg.api.listen = opts.listen;
        println!(
            "learning the simulated hospital's normal from its {BASELINE_DAYS} days of history \
             ({split} AuditEvents), as `fhir-edge train --from-server` does on a real site…"
        );
        learn_site(&cfg, &model_dir, now - chrono::Duration::hours(2), opts.seed, &context_file).await?;
        let daemon = crate::app::start(
            cfg,
            crate::app::RunOptions {
                since: None,
                clock: Arc::new(SystemClock),
                notifier: crate::systemd::Notifier::from_env(),
            },
        )
        .await
        .context("starting the daemon")?;
        let health = daemon.health.clone();
        println!("fhir-edge demo");
        println!("  simulated FHIR server  {base_url}  ({} AuditEvents of baseline history)", split);
        println!("  dashboard              http://{}/", daemon.api_addr);
        println!("  API                    http://{}/api/cases", daemon.api_addr);
        println!("  state                  {}", state.path().display());
        println!("  live activity at {}× real time; Ctrl-C stops\n", opts.speedup);

        // Feed the live part: each event becomes visible when its simulated time arrives.
        let live: Vec<serde_json::Value> = events[split..].iter().map(|e| e.json()).collect();
        let live_times: Vec<i64> = events[split..].iter().map(|e| e.recorded.timestamp_millis()).collect();
        let speedup = opts.speedup;
        let feeder_store = store.clone();
        let started = Instant::now();
        let sim_start_ms = live_start.timestamp_millis();
        let feeder = actix_rt::spawn(async move {
            let mut next = 0;
            while next < live.len() {
                let sim_now = sim_start_ms + (started.elapsed().as_secs_f64() * speedup * 1000.0) as i64;
                while next < live.len() && live_times[next] <= sim_now {
                    feeder_store.create(live[next].clone());
                    next += 1;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });

        let tty = std::io::stdout().is_terminal();
        let c = health.counters.clone();
        let ctrl_c = crate::app::wait_for_signal();
        tokio::pin!(ctrl_c);
        let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
        let mut last_print = Instant::now() - Duration::from_secs(60);
        loop {
            tokio::select! {
                _ = &mut ctrl_c => break,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                break;
            }
            let sim_now = fhir_edge_core::clock::from_ms(sim_start_ms + (started.elapsed().as_secs_f64() * speedup * 1000.0) as i64);
            let line = format!(
                "sim {} | server {} events | scored {} | duplicates {} | alerts {} (critical {}, high {}, medium {}, low {})",
                sim_now.format("%a %H:%M"),
                store.len(),
                c.get(Counter::EventsScored),
                c.get(Counter::EventsDuplicate),
                c.get(Counter::AlertsRaised),
                c.alerts_of(Severity::Critical),
                c.alerts_of(Severity::High),
                c.alerts_of(Severity::Medium),
                c.alerts_of(Severity::Low),
            );
            if tty {
                print!("\r{line}\x1b[K");
                let _ = std::io::stdout().flush();
            } else if last_print.elapsed() >= Duration::from_secs(10) {
                println!("{line}");
                last_print = Instant::now();
            }
        }
        if tty {
            println!();
        }
        feeder.abort();
        daemon.shutdown(Duration::from_secs(10)).await;
        fhir_handle.stop(false).await;
        let scored = c.get(Counter::EventsScored) - c.get(Counter::EventsPassedOver);
        let alerted = alerted_events(state.path())?;
        let (on_incidents, other) = tally(&alerted, &injected);
        println!(
            "stopped: {scored} events scored ({} passed over: learned in training), {} alerts: \
             {on_incidents} on injected incidents, {other} on events the simulator did not inject \
             ({:.2}% of the events scored)",
            c.get(Counter::EventsPassedOver),
            alerted.len(),
            100.0 * other as f64 / scored.max(1) as f64
        );
        let (with, without, watched) = case_tally(state.path(), &injected)?;
        println!(
            "cases: {} in the queue ({with} holding an injected incident, {without} not), \
             {watched} watched (weak alerts waiting for corroboration); \
             `fhir-edge cases --queue` lists them",
            with + without
        );
        actix::System::current().stop();
        Ok::<(), anyhow::Error>(())
    })
}

/// Train the demo hospital's model from the embedded server, as `train --from-server` does
/// (on a thread of its own: the server answers on this system's threads).
async fn learn_site(
    cfg: &Config,
    model_dir: &std::path::Path,
    since: chrono::DateTime<chrono::Utc>,
    seed: u64,
    context: &std::path::Path,
) -> anyhow::Result<()> {
    let (cfg, model_dir) = (cfg.clone(), model_dir.to_path_buf());
    let context = vec![context.to_path_buf()];
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let run = || -> anyhow::Result<()> {
            let records = crate::training::server_history(&cfg, since, None)?;
            let server = crate::client::redact_url(&cfg.fhir.base_url);
            let ctx = crate::training::site_context(None, None, &context, Some(&cfg))?;
            let (case_rule, case_budget) = crate::training::TrainRun::queue_of(Some(&cfg));
            let run = crate::training::TrainRun {
                output: &model_dir,
                epochs: EPOCHS,
                seed,
                percentile: fhir_edge_core::detector::model::TrainOptions::default()
                    .threshold_percentile,
                until: None,
                server: Some(&server),
                case_rule,
                case_budget,
            };
            crate::training::train_cmd(records, vec![format!("{server} (demo history)")], ctx, &run)
        };
        let _ = tx.send(run());
    });
    rx.await.context("the training thread stopped")?
}

/// Event ids of the alerts the demo's daemon stored.
fn alerted_events(state: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let r = fhir_edge_core::state::Reader::open(state)?;
    let alerts = r.alerts_upto(&Default::default(), usize::MAX)?;
    Ok(alerts.into_iter().map(|a| a.event_id).collect())
}

/// Cases in the queue holding an injected event, those holding none, and watched cases.
fn case_tally(
    state: &std::path::Path,
    injected: &std::collections::HashSet<String>,
) -> anyhow::Result<(usize, usize, usize)> {
    let r = fhir_edge_core::state::Reader::open(state)?;
    let cases = r.cases_upto(&Default::default(), usize::MAX)?;
    let (mut with, mut without, mut watched) = (0, 0, 0);
    for c in &cases {
        if c.status == fhir_edge_core::cases::CaseStatus::Watching {
            watched += 1;
        } else if r
            .case(c.id)?
            .1
            .iter()
            .any(|a| injected.contains(&a.event_id))
        {
            with += 1;
        } else {
            without += 1;
        }
    }
    Ok((with, without, watched))
}

/// Alerts on injected events, and on the others.
fn tally(alerted: &[String], injected: &std::collections::HashSet<String>) -> (usize, usize) {
    let on = alerted.iter().filter(|id| injected.contains(*id)).count();
    (on, alerted.len() - on)
}
