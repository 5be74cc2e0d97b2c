//! `fhir-edge bench-export`: how fast each exporter empties an outbox — the backlog an
//! outage leaves behind. The outbox is filled first (alerts of distinct users, so each
//! brings its case: two items per alert, as many as the demo's alerts bring), then each
//! exporter runs alone in the daemon's own actors (`ExportActor`, `StateActor`) until its
//! backlog is zero.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::config::{Config, NatsExportConfig, SyslogExportConfig};
use crate::health::Health;
use crate::state::actor::StateActor;
use fhir_edge_core::alerts::{AlertKind, NewAlert, Severity};
use fhir_edge_core::clock::SystemClock;
use fhir_edge_core::state::{BatchCommit, Reader, SeenEvent, Store};

/// What to measure.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportBenchOptions {
    /// A NATS server with JetStream (e.g. `nats-server -js`); the stream FHIR_EDGE_BENCH is
    /// created on it.
    #[arg(long, value_name = "URL")]
    pub nats: Option<String>,
    /// Also measure syslog over TCP to a receiver in this process that reads and discards.
    #[arg(long)]
    pub syslog: bool,
    /// Alerts in the outbox (each with its case: twice as many items).
    #[arg(long, default_value_t = 10_000)]
    pub alerts: usize,
    /// Items per batch (`[export] batch`).
    #[arg(long, default_value_t = 256)]
    pub batch: u32,
    /// Instead: a back-fill of the export (`POST /api/export/backfill`) of `--alerts`
    /// alerts stored before export was configured, in the daemon's steps and in one
    /// transaction; its time, its longest step (the state writes wait that long) and the
    /// memory it takes.
    #[arg(long)]
    pub backfill: bool,
}

fn alert(i: usize, now_ms: i64) -> NewAlert {
    NewAlert {
        event_key: format!("bench-{i}"),
        event_id: format!("bench-{i}"),
        event_version: None,
        recorded_ms: now_ms,
        score: 2.5,
        severity: Severity::High,
        summary: "opened 40 patients in an hour".into(),
        explanation: vec![
            "opened 40 patients in an hour (usually 3)".into(),
            "none of them in the user's department".into(),
        ],
        kinds: vec![AlertKind::BulkAccess],
        user: Some(format!("Practitioner/{i}")),
        user_display: None,
        patient: Some(format!("Patient/{i}")),
        source_ip: Some("10.0.0.7".into()),
        client_app: Some("ehr".into()),
        action: Some("R".into()),
        interaction: "read".into(),
        raw: "{}".into(),
        evidence: fhir_edge_core::alerts::Evidence::Single,
    }
}

fn bench_setup(exporter: &str) -> fhir_edge_core::state::ExportSetup {
    fhir_edge_core::state::ExportSetup {
        site: "bench".into(),
        exporters: vec![exporter.into()],
        max_items: 100_000_000,
    }
}

/// Fill a fresh outbox in `dir` for `exporter`; the number of items. Without an exporter,
/// the alerts and cases are stored and nothing is exported.
fn fill(dir: &std::path::Path, exporter: Option<&str>, alerts: usize) -> anyhow::Result<u64> {
    let mut store = Store::open(dir)?;
    store.set_export(exporter.map(bench_setup));
    let now = chrono::Utc::now().timestamp_millis();
    for chunk in (0..alerts).collect::<Vec<_>>().chunks(500) {
        let batch = BatchCommit {
            events: chunk
                .iter()
                .map(|i| SeenEvent {
                    key: format!("bench-{i}"),
                    last_updated_ms: now,
                    carried: Default::default(),
                })
                .collect(),
            alerts: chunk.iter().map(|i| alert(*i, now)).collect(),
            ..Default::default()
        };
        store.commit_batch(&batch, now)?;
    }
    let Some(exporter) = exporter else {
        return Ok(0);
    };
    let r = Reader::open(dir)?;
    Ok(r.export_status(&[exporter])?
        .into_iter()
        .map(|e| e.backlog)
        .sum())
}

/// Run the exporters of `cfg` until the outbox in its state directory is empty.
fn drain(cfg: Config, exporter: &'static str) -> anyhow::Result<Duration> {
    let dir = cfg.state_dir();
    let mut store = Store::open(&dir)?;
    store.set_export(crate::export::setup(&cfg));
    let sys = System::new();
    let took = sys.block_on(async move {
        let health = Health::new(Arc::new(SystemClock));
        let cell = Mutex::new(Some(store));
        let h = health.clone();
        let state = SyncArbiter::start(1, move || {
            let store = crate::sync::lock(&cell).take().expect("one state actor");
            StateActor::new(store, h.clone(), Arc::new(SystemClock))
        });
        let started = Instant::now();
        let _export = crate::export::actor::ExportActor::new(
            &cfg,
            state.recipient(),
            health.clone(),
            Arc::new(AtomicBool::new(false)),
        )?
        .start();
        let reader = Reader::open(&dir)?;
        loop {
            let left: u64 = reader
                .export_status(&[exporter])?
                .iter()
                .map(|e| e.backlog)
                .sum();
            if left == 0 {
                break;
            }
            if started.elapsed() > Duration::from_secs(1800) {
                anyhow::bail!("{exporter}: {left} items still waiting after 30 minutes");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok::<_, anyhow::Error>(started.elapsed())
    })?;
    Ok(took)
}

/// A syslog receiver that reads and discards; its address.
fn discard_receiver() -> anyhow::Result<std::net::SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let _ = std::io::copy(&mut s, &mut std::io::sink());
            });
        }
    });
    Ok(addr)
}

/// Where one measured exporter sends.
enum Target {
    Nats(String),
    Syslog(std::net::SocketAddr),
}

impl Target {
    fn configure(&self, c: &mut Config) {
        match self {
            Target::Nats(url) => {
                c.export.nats = Some(NatsExportConfig {
                    servers: vec![url.clone()],
                    stream: "FHIR_EDGE_BENCH".into(),
                    subject_prefix: Some(format!("fhir-edge-bench.{}", std::process::id())),
                    token_file: None,
                    credentials_file: None,
                    ca_file: None,
                    duplicate_window_secs: 120,
                    timeout_secs: 10,
                })
            }
            Target::Syslog(addr) => {
                c.export.syslog = Some(SyslogExportConfig {
                    address: addr.to_string(),
                    tls: false,
                    ca_file: None,
                    facility: "authpriv".into(),
                    app_name: "fhir-edge".into(),
                    format: Default::default(),
                    timeout_secs: 10,
                })
            }
        }
    }
}

/// The resident and peak resident memory of this process, in KiB (`/proc/self/status`).
fn rss_kib() -> anyhow::Result<(u64, u64)> {
    let field = |key: &str| {
        super::bench::proc_status_kb(std::process::id(), key)
            .ok_or_else(|| anyhow::anyhow!("no {key} in /proc/self/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// A back-fill of `alerts` stored alerts (and their cases) in steps of `step` items.
fn backfill(alerts: usize, step: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    fill(dir.path(), None, alerts)?;
    let mut store = Store::open(dir.path())?;
    store.set_export(Some(bench_setup("syslog")));
    // Reset the peak to now (Linux: `5` to clear_refs), so the peak is the back-fill's.
    std::fs::write("/proc/self/clear_refs", "5")?;
    let (before, _) = rss_kib()?;
    let now = chrono::Utc::now().timestamp_millis();
    let started = Instant::now();
    let mut b = store.plan_backfill(0)?;
    let mut longest = started.elapsed();
    let mut steps = 0;
    while !b.done() {
        let t = Instant::now();
        store.backfill_step(&mut b, step, now)?;
        longest = longest.max(t.elapsed());
        steps += 1;
    }
    let took = started.elapsed();
    let (_, peak) = rss_kib()?;
    let how = if step == usize::MAX {
        "in one transaction".to_string()
    } else {
        format!("in {steps} steps of {step}")
    };
    println!(
        "back-fill of {} items ({} alerts, {} cases) {how}: {:.2} s, longest step {:.1} ms, \
         peak memory +{:.1} MiB",
        b.written.items(),
        b.written.alerts,
        b.written.cases,
        took.as_secs_f64(),
        longest.as_secs_f64() * 1e3,
        peak.saturating_sub(before) as f64 / 1024.0
    );
    Ok(())
}

pub fn run(o: &ExportBenchOptions) -> anyhow::Result<()> {
    if o.backfill {
        eprintln!("back-fill: storing {} alerts and their cases…", o.alerts);
        backfill(o.alerts, fhir_edge_core::state::BACKFILL_STEP)?;
        eprintln!("back-fill in one transaction: storing them again…");
        return backfill(o.alerts, usize::MAX);
    }
    if o.nats.is_none() && !o.syslog {
        anyhow::bail!("nothing to measure: give --nats URL and/or --syslog");
    }
    let mut lanes: Vec<(&'static str, Target)> = Vec::new();
    if let Some(url) = &o.nats {
        lanes.push(("nats", Target::Nats(url.clone())));
    }
    if o.syslog {
        lanes.push(("syslog", Target::Syslog(discard_receiver()?)));
    }
    for (exporter, target) in lanes {
        let dir = tempfile::tempdir()?;
        eprintln!(
            "{exporter}: filling the outbox with {} alerts and their cases…",
            o.alerts
        );
        let items = fill(dir.path(), Some(exporter), o.alerts)?;
        let mut cfg = Config::for_server("http://127.0.0.1:1/fhir", dir.path());
        cfg.site.name = Some("bench".into());
        cfg.export.batch = o.batch;
        target.configure(&mut cfg);
        eprintln!("{exporter}: sending {items} items…");
        let took = drain(cfg, exporter)?;
        println!(
            "{exporter}: {items} items in {:.2} s = {:.0} items/s (batch {})",
            took.as_secs_f64(),
            items as f64 / took.as_secs_f64(),
            o.batch
        );
    }
    Ok(())
}
