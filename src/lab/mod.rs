//! Commands that join the daemon with the lab crate (feature `lab`, on for `cargo run`, off
//! in the Debian package): `simulate` writes a simulated hospital's events, `demo` runs the
//! real daemon against one, `bench` and `soak` measure the daemon as separate processes, and
//! `bench-server` serves benchmark traffic.

#![allow(clippy::unwrap_used)] // Harness code: a failed unwrap is a failed test, benchmark or demo.

pub mod bench;
pub mod demo;
pub mod export_bench;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use chrono::Utc;
use clap::Subcommand;

/// The lab's commands, flattened into `fhir-edge`'s own.
#[derive(Subcommand, Debug)]
pub enum LabCommand {
    /// Generate a synthetic hospital's AuditEvents (NDJSON) with labelled anomalies, its
    /// watch list and its context resources (context.ndjson: staff, patients, admissions).
    Simulate {
        #[arg(long, default_value_t = 28)]
        days: u32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[arg(long, default_value_t = 150)]
        users: usize,
        #[arg(long, default_value_t = 3000)]
        patients: usize,
        /// First day (0-based) with injected anomalies; default: the last quarter of the days.
        #[arg(long)]
        anomalies_from_day: Option<u32>,
        /// Anomaly incidents per day.
        #[arg(long, default_value_t = 9.0)]
        incidents_per_day: f64,
        /// Site time zone of the simulated shifts.
        #[arg(long, default_value = "UTC")]
        timezone: String,
        /// Multiplies every user's activity rate.
        #[arg(long, default_value_t = 1.0)]
        activity: f64,
        /// How the hospital works: `classic` (the style the detector was developed on),
        /// `drawn` (every aspect drawn from the seed), or aspects joined by commas, e.g.
        /// `rotating,stations,teaching,analysts` (shifts: classic, 12h, rotating, on-call;
        /// network: personal, stations, nat, churning; roles: general, teaching, outpatient,
        /// billing; analysts; credentials: staff shown as "Jane Smith, MD", never drawn).
        #[arg(long, default_value = "classic")]
        style: String,
        /// How the server writes the events: `balp` (the simulator's own layout), `hapi`
        /// (HAPI FHIR's BALP interceptor: its agent layout, a request id on every event, no
        /// logins or refused requests, a search without a patient written once per patient
        /// in its results), `medplum` (one agent: no client, no department), `firely` (the
        /// user by identifier, no logins, no department) or `aidbox` (BALP server-side,
        /// its own login types, no department). Each writes only what that server writes.
        #[arg(long, default_value = "balp")]
        shape: String,
        /// Keep the user's department on the requesting agent in every shape (a control:
        /// what a shape loses by its layout, apart from the departments it does not write).
        #[arg(long)]
        keep_department: bool,
    },
    /// Sustained load: events created at a rate for minutes while the API is queried;
    /// RSS over time, API errors and latency, every event scored once.
    Soak {
        #[command(flatten)]
        opts: bench::SoakOptions,
    },
    /// End-to-end benchmark: catch-up rate, detection latency, peak RSS, CPU, start-up time.
    Bench {
        #[command(flatten)]
        opts: bench::BenchOptions,
        /// With --server: first POST this many simulated events to it.
        #[arg(long, requires = "server")]
        load: Option<usize>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// How fast each exporter empties an outbox of N alerts and their cases (the backlog an
    /// outage leaves): NATS JetStream (a running nats-server with JetStream) and/or syslog.
    BenchExport {
        #[command(flatten)]
        opts: export_bench::ExportBenchOptions,
    },
    /// (internal) Serve N benchmark events on the embedded endpoint until stdin closes.
    #[command(hide = true)]
    BenchServer {
        #[arg(long)]
        events: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The hospital's staff and patients (see `fhir_edge_lab::traffic::Size`).
        #[arg(long, default_value_t = 150)]
        staff: usize,
        #[arg(long, default_value_t = 3000)]
        patients: usize,
        /// Also create events at this rate per second ...
        #[arg(long)]
        rate: Option<f64>,
        /// ... for this many seconds ...
        #[arg(long, default_value_t = 60)]
        rate_secs: u64,
        /// ... keeping only this many seconds of them.
        #[arg(long, default_value_t = 300)]
        retain_secs: u64,
    },
    /// Run the whole pipeline against an embedded simulated FHIR server, with the dashboard.
    Demo {
        /// Dashboard and API address.
        #[arg(long, default_value = "127.0.0.1:8787")]
        listen: std::net::SocketAddr,
        /// Simulated seconds per real second for the live activity.
        #[arg(long, default_value_t = 1800.0)]
        speedup: f64,
        /// Simulation seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        duration_secs: Option<u64>,
    },
}

/// Run one lab command.
pub fn execute(command: LabCommand) -> anyhow::Result<ExitCode> {
    match command {
        LabCommand::BenchExport { opts } => {
            crate::telemetry::init();
            export_bench::run(&opts)?;
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Simulate {
            days,
            seed,
            out,
            users,
            patients,
            anomalies_from_day,
            incidents_per_day,
            timezone,
            activity,
            style,
            shape,
            keep_department,
        } => {
            let shape = fhir_edge_lab::shape::Shape::parse(&shape)
                .map_err(|e| anyhow::anyhow!("--shape: {e}"))?;
            let mut o = fhir_edge_lab::simulate::SimOptions::new(days, seed);
            o.style = match style.as_str() {
                "drawn" => fhir_edge_lab::simulate::Style::draw(seed),
                s => fhir_edge_lab::simulate::Style::parse(s)
                    .map_err(|e| anyhow::anyhow!("--style: {e}"))?,
            };
            o.users = users;
            o.patients = patients;
            if let Some(d) = anomalies_from_day {
                o.anomalies_from_day = d;
            }
            o.incidents_per_day = incidents_per_day;
            o.activity = activity;
            o.tz = timezone
                .parse()
                .map_err(|_| anyhow::anyhow!("--timezone: unknown time zone {timezone:?}"))?;
            let original = fhir_edge_lab::simulate::simulate(&o);
            // The original events are kept beside the shaped ones only for the control that
            // needs both (a copy of every event doubles the memory a large hospital takes).
            let events = if keep_department {
                let mut events = fhir_edge_lab::shape::reshape(original.clone(), shape, seed);
                fhir_edge_lab::shape::keep_department(&original, &mut events);
                events
            } else {
                fhir_edge_lab::shape::reshape(original, shape, seed)
            };
            let (ev, lb) = fhir_edge_lab::simulate::write(&events, &out)
                .with_context(|| format!("writing to {}", out.display()))?;
            let wl = out.join("watchlist.txt");
            fhir_edge_lab::simulate::write_watch_list(&o, &wl)
                .with_context(|| format!("writing {}", wl.display()))?;
            let cx = out.join("context.ndjson");
            let resources = fhir_edge_lab::simulate::write_context(&o, &cx)
                .with_context(|| format!("writing {}", cx.display()))?;
            let labelled = events.iter().filter(|e| e.label.is_some()).count();
            println!(
                "{} events ({} labelled anomalous) in a {} hospital → {}, {} and {}; \
                 {resources} context resources (staff, patients, admissions, relatives) → {}",
                events.len(),
                labelled,
                o.style.name(),
                ev.display(),
                lb.display(),
                wl.display(),
                cx.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Demo {
            listen,
            speedup,
            seed,
            duration_secs,
        } => {
            if !listen.ip().is_loopback() {
                bail!("--listen {listen}: the demo API has no token; use a loopback address");
            }
            if speedup.is_nan() || speedup <= 0.0 {
                bail!("--speedup must be positive");
            }
            std::env::set_var(
                "FHIR_EDGE_LOG",
                std::env::var("FHIR_EDGE_LOG").unwrap_or_else(|_| "warn".into()),
            );
            crate::telemetry::init();
            demo::run(demo::DemoOptions {
                listen,
                speedup,
                seed,
                duration: duration_secs.map(std::time::Duration::from_secs),
            })?;
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::BenchServer {
            events,
            seed,
            staff,
            patients,
            rate,
            rate_secs,
            retain_secs,
        } => {
            let size = fhir_edge_lab::traffic::Size { staff, patients };
            fhir_edge_lab::traffic::serve(events, seed, size, rate, rate_secs, retain_secs)?;
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Bench {
            mut opts,
            load,
            json,
        } => {
            if let (Some(url), Some(n)) = (&opts.server, load) {
                let rate = bench::load(url, n, opts.seed, 4)?;
                eprintln!("loaded {n} events into {url} at {rate:.0}/s");
                opts.events = n;
            }
            if let Some(url) = &opts.server {
                let since = Utc::now() - chrono::Duration::days(3);
                let page = opts.page_size.min(1000);
                let (n, rate) = bench::page_rate(url, page, since)?;
                eprintln!(
                    "server paging alone: {n} events at {rate:.0} events/s (page size {page})"
                );
            }
            let r = bench::run(opts)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "events caught up        {} (page size {}; {} staff, {} patients)",
                    r.events, r.page_size, r.staff, r.patients
                );
                println!(
                    "state                   {:.1} MB database, {:.1} MB snapshot",
                    r.state_db_mb, r.snapshot_mb
                );
                println!(
                    "READY after start       {:.0} ms (restart on the run's state: {:.0} ms)",
                    r.ready_ms, r.restart_ready_ms
                );
                println!(
                    "catch-up                {:.1} s = {:.0} events/s",
                    r.catch_up_secs, r.catch_up_events_per_sec
                );
                println!(
                    "CPU                     {:.3} s per 1k events",
                    r.cpu_secs_per_1k_events
                );
                println!("peak RSS                {:.1} MB", r.peak_rss_mb);
                let stages: Vec<String> = r
                    .catch_up_stage_secs
                    .iter()
                    .map(|(k, v)| format!("{k} {v:.2} s"))
                    .collect();
                println!("catch-up stage time     {}", stages.join(", "));
                println!(
                    "catch-up snapshots      {}; forgotten at the memory bounds: {}",
                    r.catch_up_snapshots,
                    r.catch_up_forgotten
                        .iter()
                        .map(|(k, v)| format!("{v} {k}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                println!(
                    "detection latency       p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} events at {}/s, poll interval {} s)",
                    r.latency_p50_ms, r.latency_p99_ms, r.latency_max_ms, r.steady_samples, r.steady_rate_per_sec, r.poll_interval_secs
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Soak { opts } => {
            let r = bench::soak(opts)?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            if r.scored != r.generated || r.api_errors > 0 {
                anyhow::bail!(
                    "soak failed: {} of {} events scored, {} API errors",
                    r.scored,
                    r.generated,
                    r.api_errors
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
