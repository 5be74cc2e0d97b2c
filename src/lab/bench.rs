//! `fhir-edge bench`: end-to-end figures for BENCHMARKS.md, measured on separate processes.
//!
//! A `bench-server` child holds N simulated AuditEvents behind the embedded FHIR endpoint;
//! the real daemon binary (`fhir-edge run`, under an emulated NOTIFY_SOCKET) catches up from
//! zero; then events are created on the server at a steady rate and the time from "visible
//! on the server" to "alert durable in the store" is measured. Peak RSS and CPU seconds come
//! from /proc of the daemon process alone.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Serialize;

use fhir_edge_lab::traffic::bench_events;

#[derive(Debug, Serialize, Default)]
pub struct BenchReport {
    pub events: usize,
    pub staff: usize,
    pub patients: usize,
    /// Size of the state database (with its WAL) after the run, MB.
    pub state_db_mb: f64,
    /// Size of the detector's last snapshot, MB.
    pub snapshot_mb: f64,
    pub page_size: u32,
    pub ready_ms: f64,
    /// READY after a restart on the state the run left (its snapshot loaded).
    pub restart_ready_ms: f64,
    pub catch_up_secs: f64,
    pub catch_up_events_per_sec: f64,
    pub cpu_secs_per_1k_events: f64,
    pub peak_rss_mb: f64,
    pub steady_rate_per_sec: f64,
    pub steady_samples: usize,
    /// Steady-state events created (`steady_samples` of them alerted).
    pub steady_created: usize,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    pub poll_interval_secs: u64,
    pub alerts: u64,
    /// Seconds spent per pipeline stage during catch-up (sums of the daemon's `/metrics`
    /// histograms; stages overlap, so they do not add up to the catch-up time).
    pub catch_up_stage_secs: std::collections::BTreeMap<String, f64>,
    /// What the detector's memory bounds made it forget during the catch-up (users,
    /// patients, pairs; the `context_*_forgotten` counters).
    pub catch_up_forgotten: std::collections::BTreeMap<String, u64>,
    /// Snapshots taken during the catch-up.
    pub catch_up_snapshots: u64,
}

/// The values of the unlabelled `/metrics` lines named `<prefix><what><suffix>`, by `<what>`.
fn metric_values<T: std::str::FromStr>(
    metrics: &str,
    prefix: &str,
    suffix: &str,
) -> std::collections::BTreeMap<String, T> {
    metrics
        .lines()
        .filter_map(|l| {
            let (name, v) = l.split_once(' ')?;
            let what = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
            Some((what.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// `<name>_sum` of every `fhir_edge_*_duration_seconds` histogram in a `/metrics` text.
fn stage_sums(metrics: &str) -> std::collections::BTreeMap<String, f64> {
    metric_values(metrics, "fhir_edge_", "_duration_seconds_sum")
}

/// The state database with its WAL and shared memory, MB.
fn db_mb(state: &Path) -> f64 {
    let db = state.join(fhir_edge_core::state::DB_FILE);
    ["", "-wal", "-shm"]
        .iter()
        .filter_map(|s| std::fs::metadata(format!("{}{s}", db.display())).ok())
        .map(|m| m.len())
        .sum::<u64>() as f64
        / 1e6
}

/// `fhir_edge_context_<what>_forgotten_total` of a `/metrics` text, by `<what>`.
fn forgotten(metrics: &str) -> std::collections::BTreeMap<String, u64> {
    metric_values(metrics, "fhir_edge_context_", "_forgotten_total")
}

/// How many snapshots a `/metrics` text counts (the encode histogram's `_count`).
fn snapshots(metrics: &str) -> u64 {
    metric_values(
        metrics,
        "fhir_edge_snapshot_encode_duration_seconds",
        "_count",
    )
    .remove("")
    .unwrap_or(0)
}

/// The stored detector snapshot's size, bytes (its file in the state directory).
fn snapshot_bytes(conn: &rusqlite::Connection, state: &Path) -> u64 {
    conn.query_row("SELECT file FROM snapshot WHERE id = 1", [], |r| {
        r.get::<_, String>(0)
    })
    .ok()
    .and_then(|f| std::fs::metadata(state.join(f)).ok())
    .map_or(0, |m| m.len())
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`).
pub(crate) fn proc_status_kb(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn proc_cpu_secs(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64)
}

struct Killer(Child);
impl Drop for Killer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn status(dir: &Path) -> fhir_edge_core::state::StatusReport {
    fhir_edge_core::state::Reader::open(dir)
        .and_then(|r| r.status())
        .unwrap_or_default()
}

#[derive(clap::Args, Debug, Clone)]
pub struct BenchOptions {
    /// Events on the server to catch up on.
    #[arg(long, default_value_t = 100_000)]
    pub events: usize,
    #[arg(long, default_value_t = 1000)]
    pub page_size: u32,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The hospital's staff: up to 150 simulated as one hospital, more as units of 150
    /// (each with its own staff, departments and patients).
    #[arg(long, default_value_t = 150)]
    pub staff: usize,
    /// The hospital's patients (a unit names at most 3,000 of them).
    #[arg(long, default_value_t = 3000)]
    pub patients: usize,
    /// Steady-state phase: seconds, and events created per second.
    #[arg(long, default_value_t = 30)]
    pub steady_secs: u64,
    #[arg(long, default_value_t = 20.0)]
    pub steady_rate: f64,
    /// Poll interval of the daemon under test.
    #[arg(long, default_value_t = 1)]
    pub interval_secs: u64,
    /// Benchmark against this FHIR server instead of the built-in endpoint (events must
    /// already be there, or use --load).
    #[arg(long)]
    pub server: Option<String>,
}

/// The daemon under test, started as its own process under an emulated NOTIFY_SOCKET.
struct Started {
    pid: u32,
    ready_ms: f64,
    state: std::path::PathBuf,
    /// `host:port` of the API, from the READY status line.
    api: Option<String>,
    _daemon: Killer,
}

fn start_daemon(
    exe: &Path,
    dir: &Path,
    base_url: &str,
    interval_secs: u64,
    page_size: u32,
    extra_poller: &str,
) -> anyhow::Result<Started> {
    // The shipped model, learning all along (`learn_days = 0`): a first start would
    // otherwise train from the bench server's history, which spans weeks of copies.
    let model = dir.join("model");
    fhir_edge_lab::write_default_model(&model)?;
    let state = dir.join("state");
    let cfg = dir.join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[fhir]\nbase_url = \"{base_url}\"\n[poller]\ninterval_secs = {interval_secs}\npage_size = {page_size}\ninitial_lookback_secs = 259200\n{extra_poller}\
             [detector]\nmodel_dir = \"{}\"\nlearn_days = 0\n[api]\nlisten = \"127.0.0.1:0\"\n[state]\ndir = \"{}\"\n",
            model.display(),
            state.display()
        ),
    )?;
    let sock_path = dir.join("notify.sock");
    // A restart in the same directory binds anew.
    let _ = std::fs::remove_file(&sock_path);
    let sock = UnixDatagram::bind(&sock_path)?;
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    // The daemon's errors go to a file beside its state, shown if it never gets ready.
    let log_path = dir.join("daemon.log");
    let log = std::fs::File::create(&log_path)?;
    let t0 = Instant::now();
    let child = Command::new(exe)
        .args(["run", "--config", cfg.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("FHIR_EDGE_LOG", "warn,fhir_edge=error")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let pid = child.id();
    let mut daemon = Killer(child);
    let mut buf = [0u8; 4096];
    let mut api = None;
    let ready_ms = loop {
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                let exited = daemon.0.try_wait().ok().flatten();
                if exited.is_none() && t0.elapsed() < Duration::from_secs(30) {
                    continue;
                }
                let said = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = said.lines().rev().take(5).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!(
                    "the daemon {} without READY=1 ({e}); its last words:\n{}",
                    match exited {
                        Some(st) => format!("exited ({st})"),
                        None => "ran 30 s".to_string(),
                    },
                    tail.join("\n")
                );
            }
        };
        let msg = String::from_utf8_lossy(&buf[..n]);
        if let Some(a) = msg
            .lines()
            .find_map(|l| l.strip_prefix("STATUS=ready; API on "))
        {
            api = Some(a.trim().to_string());
        }
        if msg.lines().any(|l| l == "READY=1") {
            break t0.elapsed().as_secs_f64() * 1000.0;
        }
    };
    // Keep draining: a receiver that stops reading must not matter (systemd never stops).
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        sock.set_read_timeout(None).ok();
        while sock.recv(&mut buf).is_ok() {}
    });
    Ok(Started {
        pid,
        ready_ms,
        state,
        api,
        _daemon: daemon,
    })
}

pub fn run(o: BenchOptions) -> anyhow::Result<BenchReport> {
    let exe = std::env::current_exe()?;
    let dir = tempfile::Builder::new()
        .prefix("fhir-edge-bench-")
        .tempdir()?;
    let (base_url, _server) = match &o.server {
        Some(u) => (u.clone(), None),
        None => {
            let mut child = Command::new(&exe)
                .args([
                    "bench-server",
                    "--events",
                    &o.events.to_string(),
                    "--seed",
                    &o.seed.to_string(),
                    "--staff",
                    &o.staff.to_string(),
                    "--patients",
                    &o.patients.to_string(),
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()?;
            let mut line = String::new();
            BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
            if !line.starts_with("http") {
                bail!("bench-server did not start");
            }
            (line.trim().to_string(), Some(Killer(child)))
        }
    };
    // The daemon under test, on the run's state (started again at the end, after SIGTERM).
    let start = || {
        start_daemon(
            &exe,
            dir.path(),
            &base_url,
            o.interval_secs,
            o.page_size,
            "",
        )
    };
    let Started {
        pid,
        ready_ms,
        api,
        state,
        _daemon: daemon,
        ..
    } = start()?;
    let target = o.events as u64;
    let cpu0 = proc_cpu_secs(pid).unwrap_or(0.0);
    let catch_start = Instant::now();
    let mut peak_kb = 0;
    // One reader and a one-row read per probe: the harness must not take CPU from the
    // daemon it measures (`status()` counts every seen key).
    let reader = fhir_edge_core::state::Reader::open(&state)?;
    let mut said = Instant::now();
    loop {
        peak_kb = peak_kb.max(proc_status_kb(pid, "VmHWM:").unwrap_or(0));
        let scored = reader.events_scored().unwrap_or(0);
        if scored >= target {
            break;
        }
        if said.elapsed() >= Duration::from_secs(15) {
            eprintln!("bench: catch-up: {scored} of {target} events scored");
            said = Instant::now();
        }
        if catch_start.elapsed() > Duration::from_secs(3600) {
            bail!("catch-up did not finish within an hour ({scored} of {target})");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let catch_up_secs = catch_start.elapsed().as_secs_f64();
    let cpu = proc_cpu_secs(pid).unwrap_or(0.0) - cpu0;

    // Steady state: create one sure-to-alert event (a bulk export) at a time, at the rate,
    // and measure visible → alert stored.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = reqwest::Client::new();
    let metrics = match &api {
        Some(a) => rt
            .block_on(async {
                client
                    .get(format!("http://{a}/metrics"))
                    .send()
                    .await?
                    .text()
                    .await
            })
            .unwrap_or_default(),
        None => String::new(),
    };
    let catch_up_stage_secs = stage_sums(&metrics);
    let mut created: Vec<(String, i64)> = Vec::new();
    let steady_start = Instant::now();
    let period = Duration::from_secs_f64(1.0 / o.steady_rate);
    let mut k = 0u64;
    while steady_start.elapsed() < Duration::from_secs(o.steady_secs) {
        let mut ev = crate::client::sample_event(chrono::Utc::now());
        ev["entity"].as_array_mut().unwrap().push(serde_json::json!({
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24"},
            "query": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "GET /Patient/$export?_type=Patient,Observation")
        }));
        ev["agent"][0]["who"]["reference"] = format!("Practitioner/bench-{}", k % 7).into();
        k += 1;
        let r = rt.block_on(
            client
                .post(format!("{base_url}/AuditEvent"))
                .header("content-type", "application/fhir+json")
                .body(ev.to_string())
                .send(),
        )?;
        let visible_ms = chrono::Utc::now().timestamp_millis();
        let body: serde_json::Value = rt.block_on(r.json())?;
        created.push((
            body["id"].as_str().unwrap_or_default().to_string(),
            visible_ms,
        ));
        peak_kb = peak_kb.max(proc_status_kb(pid, "VmHWM:").unwrap_or(0));
        std::thread::sleep(period.saturating_sub(Duration::from_millis(2)));
    }
    // Wait for the last ones (at most a minute: a slow pipeline shows in the latency, not
    // as missing alerts), then read detection times from the store.
    let conn = rusqlite::Connection::open_with_flags(
        state.join(fhir_edge_core::state::DB_FILE),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    let waited = Instant::now();
    std::thread::sleep(Duration::from_secs(o.interval_secs + 3));
    while waited.elapsed() < Duration::from_secs(60) {
        let last = created.last().map(|(id, _)| id.as_str()).unwrap_or("");
        let done: bool = conn
            .query_row("SELECT 1 FROM alerts WHERE event_id = ?1", [last], |_| {
                Ok(true)
            })
            .unwrap_or(false);
        if done {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut lat = Vec::new();
    for (id, visible) in &created {
        let detected: Option<i64> = conn
            .query_row(
                "SELECT detected_ms FROM alerts WHERE event_id = ?1",
                [id],
                |r| r.get(0),
            )
            .ok();
        if let Some(d) = detected {
            lat.push((d - visible).max(0) as f64);
        }
    }
    if lat.is_empty() {
        bail!(
            "none of the {} steady-state events produced an alert: no latency to measure",
            created.len()
        );
    }
    if lat.len() < created.len() {
        eprintln!(
            "bench: {} of {} steady-state events (bulk exports by users new to the site) \
             produced an alert; the latency is of those",
            lat.len(),
            created.len()
        );
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| lat[((p * (lat.len() - 1) as f64).round() as usize).min(lat.len() - 1)];
    peak_kb = peak_kb.max(proc_status_kb(pid, "VmHWM:").unwrap_or(0));
    let st = status(&state);
    let (state_db_mb, snapshot_mb) = (db_mb(&state), snapshot_bytes(&conn, &state) as f64 / 1e6);
    // A restart on this state: stop (SIGTERM, as systemd does), start again, time READY.
    let mut first = daemon;
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = first.0.wait();
    drop(first);
    let again = start()?;
    let restart_ready_ms = again.ready_ms;
    drop(again);
    Ok(BenchReport {
        events: target as usize,
        staff: o.staff,
        patients: o.patients,
        state_db_mb,
        snapshot_mb,
        restart_ready_ms,
        page_size: o.page_size,
        ready_ms,
        catch_up_secs,
        catch_up_events_per_sec: target as f64 / catch_up_secs,
        cpu_secs_per_1k_events: cpu / (target as f64 / 1000.0),
        peak_rss_mb: peak_kb as f64 / 1024.0,
        steady_rate_per_sec: o.steady_rate,
        steady_samples: lat.len(),
        steady_created: created.len(),
        latency_p50_ms: pct(0.5),
        latency_p99_ms: pct(0.99),
        latency_max_ms: *lat.last().unwrap(),
        poll_interval_secs: o.interval_secs,
        alerts: st.alerts,
        catch_up_stage_secs,
        catch_up_forgotten: forgotten(&metrics),
        catch_up_snapshots: snapshots(&metrics),
    })
}

/// Raw paging speed of a server (no processing): pages of `page_size` from `since`.
pub fn page_rate(
    base_url: &str,
    page_size: u32,
    since: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<(usize, f64)> {
    let cfg = crate::config::Config::for_server(base_url, Path::new("/tmp"));
    let client = crate::client::FhirClient::new(&cfg.fhir, 1 << 30)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let start = Instant::now();
        let mut url = client.first_url(since, page_size);
        let mut n = 0;
        loop {
            let page = client.fetch_page(&url, n > 0).await?;
            n += page.events.len();
            match page.next {
                Some(next) => url = crate::client::check_next(client.base(), &next)?,
                None => break,
            }
        }
        Ok((n, n as f64 / start.elapsed().as_secs_f64()))
    })
}

/// POST `n` simulated events to a server with `clients` concurrent clients.
pub fn load(base_url: &str, n: usize, seed: u64, clients: usize) -> anyhow::Result<f64> {
    let events = bench_events(n, seed, chrono::Utc::now());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let client = reqwest::Client::new();
    let url = format!("{base_url}/AuditEvent");
    let start = Instant::now();
    rt.block_on(async {
        let chunks: Vec<Vec<serde_json::Value>> = events
            .chunks(n.div_ceil(clients.max(1)))
            .map(|c| c.to_vec())
            .collect();
        let tasks = chunks.into_iter().map(|chunk| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                for mut e in chunk {
                    e.as_object_mut().unwrap().remove("meta");
                    e.as_object_mut().unwrap().remove("id");
                    let r = client
                        .post(&url)
                        .header("content-type", "application/fhir+json")
                        .body(e.to_string())
                        .send()
                        .await?;
                    if !r.status().is_success() {
                        anyhow::bail!("server refused an event: HTTP {}", r.status());
                    }
                }
                Ok(())
            })
        });
        for t in futures_util::future::join_all(tasks).await {
            t??;
        }
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

#[derive(clap::Args, Debug, Clone)]
pub struct SoakOptions {
    /// Seconds of sustained load.
    #[arg(long, default_value_t = 600)]
    pub secs: u64,
    /// Events created on the server per second.
    #[arg(long, default_value_t = 10_000.0)]
    pub rate: f64,
    /// Concurrent API load: GET /api/alerts per second.
    #[arg(long, default_value_t = 50.0)]
    pub api_rps: f64,
    #[arg(long, default_value_t = 1000)]
    pub page_size: u32,
    #[arg(long, default_value_t = 1)]
    pub interval_secs: u64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// `poller.overlap_secs` of the daemon (the full re-read costs rate × overlap events).
    #[arg(long, default_value_t = 120)]
    pub overlap_secs: u64,
    /// `poller.recheck_secs` of the daemon.
    #[arg(long, default_value_t = 30)]
    pub recheck_secs: u64,
    /// `poller.recheck_by_count` of the daemon (`false`: every recheck reads the overlap).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub recheck_by_count: bool,
}

#[derive(Debug, Serialize, Default)]
pub struct SoakReport {
    pub secs: u64,
    pub rate_per_sec: f64,
    pub overlap_secs: u64,
    pub recheck_secs: u64,
    pub recheck_by_count: bool,
    pub generated: u64,
    pub scored: u64,
    pub drain_secs_after_load: f64,
    /// (seconds since start, RSS MB) every 30 s.
    pub rss_mb: Vec<(u64, f64)>,
    pub peak_rss_mb: f64,
    pub cpu_secs_per_1k_events: f64,
    pub api_requests: u64,
    pub api_errors: u64,
    pub api_p50_ms: f64,
    pub api_p99_ms: f64,
    pub alerts: u64,
    /// Fetched events already scored (re-reads of the overlap and of the cursor's instant).
    pub events_duplicate: u64,
    /// Rechecks answered by counts, and those of them that re-read part of the overlap.
    pub overlap_rechecks: u64,
    pub overlap_rereads: u64,
    /// Seconds per pipeline stage over the whole run (see `BenchReport`).
    pub stage_secs: std::collections::BTreeMap<String, f64>,
}

/// `fhir-edge bench --soak-secs N`: events created at `rate` on a local endpoint for `secs`,
/// the daemon following at its poll interval while the API is queried at `api_rps`; RSS
/// sampled throughout; at the end every generated event must be scored exactly once.
pub fn soak(o: SoakOptions) -> anyhow::Result<SoakReport> {
    let exe = std::env::current_exe()?;
    let dir = tempfile::Builder::new()
        .prefix("fhir-edge-soak-")
        .tempdir()?;
    let mut child = Command::new(&exe)
        .args([
            "bench-server",
            "--events",
            "0",
            "--seed",
            &o.seed.to_string(),
            "--rate",
            &o.rate.to_string(),
            "--rate-secs",
            &o.secs.to_string(),
            "--retain-secs",
            "300",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let _server = Killer(child);
    let mut line = String::new();
    out.read_line(&mut line)?;
    if !line.starts_with("http") {
        bail!("bench-server did not start");
    }
    let base_url = line.trim().to_string();
    let d = start_daemon(
        &exe,
        dir.path(),
        &base_url,
        o.interval_secs,
        o.page_size,
        &format!(
            "overlap_secs = {}\nrecheck_secs = {}\nrecheck_by_count = {}\n",
            o.overlap_secs, o.recheck_secs, o.recheck_by_count
        ),
    )?;
    let api = d
        .api
        .clone()
        .context("the daemon did not report its API address")?;
    let start = Instant::now();
    let cpu0 = proc_cpu_secs(d.pid).unwrap_or(0.0);

    // API load on its own thread.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let api_thread = {
        let (stop, api) = (stop.clone(), api.clone());
        let rps = o.api_rps;
        std::thread::spawn(move || -> (u64, u64, Vec<f64>) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let client = reqwest::Client::new();
                let url = format!("http://{api}/api/alerts?limit=50");
                let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rps));
                let (mut n, mut errors, mut lat) = (0u64, 0u64, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    tick.tick().await;
                    let t = Instant::now();
                    n += 1;
                    match client.get(&url).send().await {
                        Ok(r) if r.status().is_success() => {
                            if r.bytes().await.is_err() {
                                errors += 1;
                            }
                        }
                        _ => errors += 1,
                    }
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                (n, errors, lat)
            })
        })
    };

    let mut rss = Vec::new();
    let mut peak_kb = 0;
    let mut next_sample = 0u64;
    while start.elapsed() < Duration::from_secs(o.secs) {
        peak_kb = peak_kb.max(proc_status_kb(d.pid, "VmHWM:").unwrap_or(0));
        let s = start.elapsed().as_secs();
        if s >= next_sample {
            let kb = proc_status_kb(d.pid, "VmRSS:").unwrap_or(0);
            rss.push((s, kb as f64 / 1024.0));
            next_sample += 30;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    line.clear();
    out.read_line(&mut line)?;
    let generated: u64 = line
        .trim()
        .strip_prefix("generated ")
        .and_then(|n| n.parse().ok())
        .context("bench-server did not report its total")?;
    let load_end = Instant::now();
    let reader = fhir_edge_core::state::Reader::open(&d.state)?;
    loop {
        if reader.events_scored().unwrap_or(0) >= generated {
            break;
        }
        if load_end.elapsed() > Duration::from_secs(300) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let drain = load_end.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (api_requests, api_errors, mut lat) = api_thread.join().expect("api thread");
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        lat.get(((p * lat.len().saturating_sub(1) as f64).round()) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let cpu = proc_cpu_secs(d.pid).unwrap_or(0.0) - cpu0;
    peak_kb = peak_kb.max(proc_status_kb(d.pid, "VmHWM:").unwrap_or(0));
    rss.push((
        start.elapsed().as_secs(),
        proc_status_kb(d.pid, "VmRSS:").unwrap_or(0) as f64 / 1024.0,
    ));
    let st = status(&d.state);
    let metrics = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            reqwest::get(format!("http://{api}/metrics"))
                .await?
                .text()
                .await
        })
        .unwrap_or_default();
    let totals = metric_values::<u64>(&metrics, "fhir_edge_", "_total");
    let total = |name: &str| totals.get(name).copied().unwrap_or(0);
    Ok(SoakReport {
        secs: o.secs,
        rate_per_sec: o.rate,
        overlap_secs: o.overlap_secs,
        recheck_secs: o.recheck_secs,
        generated,
        scored: st.events_scored,
        drain_secs_after_load: drain,
        rss_mb: rss,
        peak_rss_mb: peak_kb as f64 / 1024.0,
        cpu_secs_per_1k_events: cpu / (generated.max(1) as f64 / 1000.0),
        api_requests,
        api_errors,
        api_p50_ms: pct(0.5),
        api_p99_ms: pct(0.99),
        alerts: st.alerts,
        events_duplicate: total("events_duplicate"),
        overlap_rechecks: total("overlap_rechecks"),
        overlap_rereads: total("overlap_rereads"),
        stage_secs: stage_sums(&metrics),
        recheck_by_count: o.recheck_by_count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_reads_stage_times_forgetting_and_snapshots_from_metrics() {
        let m = "# HELP x\n\
                 fhir_edge_scoring_duration_seconds_sum 1.5\n\
                 fhir_edge_scoring_duration_seconds_count 7\n\
                 fhir_edge_snapshot_encode_duration_seconds_sum 0.25\n\
                 fhir_edge_snapshot_encode_duration_seconds_count 3\n\
                 fhir_edge_context_pairs_forgotten_total 500000\n\
                 fhir_edge_cases{status=\"new\"} 2\n";
        let stages = stage_sums(m);
        assert_eq!(stages.get("scoring"), Some(&1.5));
        assert_eq!(stages.get("snapshot_encode"), Some(&0.25));
        assert_eq!(stages.len(), 2);
        assert_eq!(forgotten(m).get("pairs"), Some(&500_000));
        assert_eq!(snapshots(m), 3);
        assert_eq!(snapshots(""), 0);
    }
}
