//! Crash consistency of the real binary: `kill -9` at seeded random moments while it catches
//! up on 50,000 simulated events (with injected anomalies), restart, repeat ≥ 20 times; then
//! compare with one uninterrupted run on the same data. Nothing may be missing or doubled:
//! the same events scored once each, the same alerts exactly once each, a sound database.
//!
//! Sizes can be raised for a longer run (RELIABILITY.md): CRASH_EVENTS, CRASH_KILLS,
//! CRASH_SEED.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fhir_edge_lab::server::{Fault, FhirStore};

use crate::common::{default_model_as_sites, status, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_fhir-edge");

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn write_config(dir: &Path, base_url: &str) -> PathBuf {
    let p = dir.join("config.toml");
    let model = default_model_as_sites();
    let mut f = std::fs::File::create(&p).unwrap();
    write!(
        f,
        "[fhir]\nbase_url = \"{base_url}\"\ntimeout_secs = 5\n\
         [poller]\ninterval_secs = 1\npage_size = 100\ninitial_lookback_secs = 172800\nmax_backoff_secs = 1\ncheckpoint_secs = 1\n\
         [detector]\nmodel_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:0\"\n[state]\ndir = \"{}\"\n",
        model.display(),
        dir.join("state").display()
    )
    .unwrap();
    p
}

/// A daemon process that is killed if the test fails while it runs.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl std::ops::Deref for Guard {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Guard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

fn spawn(cfg: &Path, log: &Path) -> Guard {
    Guard(
        Command::new(BIN)
            .args(["run", "--config", cfg.to_str().unwrap()])
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env("FHIR_EDGE_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// Alerts by event key: (severity, score, kinds). Panics if an event has two alerts.
fn alerts_of(
    state: &Path,
) -> BTreeMap<String, (String, f64, Vec<fhir_edge_core::alerts::AlertKind>)> {
    let r = fhir_edge_core::state::Reader::open(state).unwrap();
    let mut all = Vec::new();
    loop {
        let page = r
            .alerts(&fhir_edge_core::alerts::AlertFilter {
                limit: 1000,
                before_id: all.last().map(|a: &fhir_edge_core::alerts::Alert| a.id),
                ..Default::default()
            })
            .unwrap();
        if page.is_empty() {
            break;
        }
        all.extend(page);
    }
    let mut out = BTreeMap::new();
    for a in all {
        let prev = out.insert(
            a.event_key.clone(),
            (a.severity.as_str().to_string(), a.score, a.kinds.clone()),
        );
        assert!(prev.is_none(), "two alerts for {}", a.event_key);
    }
    out
}

/// Cases as the sets of their alerts' event keys; panics if an alert is in no case or
/// in two.
fn cases_of(state: &Path) -> BTreeSet<BTreeSet<String>> {
    let r = fhir_edge_core::state::Reader::open(state).unwrap();
    let mut cases = Vec::new();
    loop {
        let page = r
            .cases(&fhir_edge_core::cases::CaseFilter {
                limit: 1000,
                before_id: cases.last().map(|c: &fhir_edge_core::cases::Case| c.id),
                ..Default::default()
            })
            .unwrap();
        if page.is_empty() {
            break;
        }
        cases.extend(page);
    }
    let mut filed = BTreeSet::new();
    let mut out = BTreeSet::new();
    for c in &cases {
        let (_, alerts) = r.case(c.id).unwrap();
        assert_eq!(
            alerts.len() as u64,
            c.alerts,
            "case #{} counts its alerts",
            c.id
        );
        let keys: BTreeSet<String> = alerts.iter().map(|a| a.event_key.clone()).collect();
        for k in &keys {
            assert!(filed.insert(k.clone()), "{k} in two cases");
        }
        out.insert(keys);
    }
    assert_eq!(filed.len(), alerts_of(state).len(), "every alert in a case");
    out
}

/// What the daemon was doing when it was killed, from the last pipeline line of its debug
/// log (the fetch of page k+1 overlaps the scoring and commit of page k).
fn phase(log: &Path) -> &'static str {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let marks = [
        ("committing page", "mid-commit (SQLite transaction open)"),
        ("page committed", "just committed, alerts being journaled"),
        ("page fetched", "mid-scoring (page fetched, not committed)"),
        (
            "page scored",
            "page scored, its commit queued (next fetch in flight)",
        ),
        ("checkpoint inside", "just after a checkpoint"),
        ("poll complete", "between polls"),
    ];
    text.lines()
        .rev()
        .find_map(|l| marks.iter().find(|(m, _)| l.contains(m)).map(|(_, p)| *p))
        .unwrap_or("starting up (before the first page)")
}

/// Markers a kill can wait for: `None` kills after the warm-up at once.
const TARGETS: [Option<&str>; 6] = [
    None,
    Some("committing page"),
    None,
    Some("page fetched"),
    None,
    Some("checkpoint inside"),
];

/// After `warm_up`, SIGKILL the child at once, or as soon as `marker` appears in its log
/// (within 3 s; then at once).
fn kill_at(child: &Child, log: &Path, warm_up: Duration, marker: Option<&str>) {
    std::thread::sleep(warm_up);
    if let Some(m) = marker {
        let from = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0) as usize;
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            let text = std::fs::read(log).unwrap_or_default();
            if text.len() > from && String::from_utf8_lossy(&text[from..]).contains(m) {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
}

/// Run until `n` events are committed, stop cleanly, return the state dir.
fn uninterrupted(base_url: &str, dir: &Path, n: u64) -> PathBuf {
    let cfg = write_config(dir, base_url);
    let mut child = spawn(&cfg, &dir.join("reference.log"));
    wait_until(Duration::from_secs(300), "the reference run", || {
        status(&dir.join("state")).events_scored >= n
    });
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    dir.join("state")
}

#[test]
fn kill_minus_nine_twenty_times_during_a_50k_catch_up_loses_and_doubles_nothing() {
    let n = env_num("CRASH_EVENTS", 50_000);
    let min_kills = env_num("CRASH_KILLS", 20);
    let seed = env_num("CRASH_SEED", 7);
    let store = FhirStore::new(Arc::new(fhir_edge_core::clock::SystemClock));
    store.insert_serialized(fhir_edge_lab::traffic::bench_events_json(
        n as usize,
        seed,
        chrono::Utc::now(),
    ));
    let base_url = format!(
        "http://{}/fhir",
        fhir_edge_lab::server::spawn_thread(store.clone(), 1)
    );

    // The reference: one run, never interrupted.
    let ref_dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let reference_state = uninterrupted(&base_url, ref_dir.path(), n);
    let reference = alerts_of(&reference_state);
    let reference_cases = cases_of(&reference_state);
    let reference_secs = started.elapsed().as_secs_f64();
    assert!(
        reference.len() > 20,
        "the data has anomalies to find ({} alerts)",
        reference.len()
    );

    // The crash run: slow the server down a little so kills land mid-page, mid-scoring and
    // mid-commit, and kill at seeded random moments.
    for _ in 0..20_000 {
        store.push_fault(Fault::Delay(Duration::from_millis(40)));
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &base_url);
    let state = dir.path().join("state");
    let mut rng = fhir_edge_core::rng::Rng::new(seed);
    let mut phases: BTreeMap<&str, u32> = BTreeMap::new();
    let mut kills = 0u64;
    let mut kills_during_catch_up = 0u64;
    let mut progress = Vec::new();
    let crash_started = Instant::now();
    while status(&state).events_scored < n {
        assert!(
            crash_started.elapsed() < Duration::from_secs(900),
            "crash run too slow"
        );
        let log = dir.path().join(format!("run-{kills}.log"));
        let mut child = spawn(&cfg, &log);
        // Every other kill waits for a pipeline step to begin (and lands inside it); the
        // rest land at a random moment.
        let target = TARGETS[(kills % TARGETS.len() as u64) as usize];
        let warm_up = Duration::from_millis(200 + rng.below(1500));
        kill_at(&child, &log, warm_up, target);
        child.wait().unwrap();
        kills += 1;
        let committed = status(&state).events_scored;
        if progress.last().is_none_or(|p| *p < n) {
            kills_during_catch_up += 1;
            *phases.entry(phase(&log)).or_default() += 1;
        }
        if std::env::var("CRASH_DEBUG").is_ok() && progress.last() == Some(&committed) {
            let t = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = t.lines().collect();
            eprintln!(
                "--- stalled run {kills}:\n{}",
                lines[lines.len().saturating_sub(12)..].join("\n")
            );
        }
        progress.push(committed);
    }
    // A last, clean run to finish whatever is left and prove nothing more arrives.
    let log = dir.path().join("final.log");
    let mut child = spawn(&cfg, &log);
    wait_until(
        Duration::from_secs(300),
        "every event after the crashes",
        || status(&state).events_scored >= n,
    );
    std::thread::sleep(Duration::from_millis(2500));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());

    let st = status(&state);
    let crashed = alerts_of(&state);
    let r = fhir_edge_core::state::Reader::open(&state).unwrap();
    let integrity = r.integrity_check().unwrap();
    eprintln!(
        "crash harness: {n} events, {kills} kill -9s ({kills_during_catch_up} before all were committed), reference run {reference_secs:.1} s, \
         crash run {:.1} s; committed after each kill: {progress:?}; phases of the catch-up kills: {phases:?}; \
         alerts {} (reference {})",
        crash_started.elapsed().as_secs_f64(),
        crashed.len(),
        reference.len()
    );
    assert!(kills >= min_kills);
    assert!(
        kills_during_catch_up >= min_kills,
        "{min_kills} kills landed during the catch-up ({kills_during_catch_up})"
    );
    assert_eq!(integrity, "ok");
    assert_eq!(st.events_scored, n, "lifetime counter: every event once");
    // (Seen keys older than the re-read window are pruned at checkpoints, so the lifetime
    // counter, committed in the same transaction as the keys, is the exact measure.)
    let missing: Vec<_> = reference
        .keys()
        .filter(|k| !crashed.contains_key(*k))
        .collect();
    let extra: Vec<_> = crashed
        .keys()
        .filter(|k| !reference.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "alerts differ from the uninterrupted run: missing {missing:?}, extra {extra:?}"
    );
    for (k, (sev, score, kinds)) in &reference {
        let (s2, sc2, k2) = &crashed[k];
        assert_eq!((sev, kinds), (s2, k2), "{k}");
        assert!((score - sc2).abs() < 1e-3, "{k}: score {score} vs {sc2}");
    }
    // Cases: the same alerts grouped the same way, none split or doubled by the kills.
    let crashed_cases = cases_of(&state);
    assert!(reference_cases.len() > 1 && reference_cases.len() < reference.len());
    assert_eq!(
        crashed_cases.len(),
        reference_cases.len(),
        "as many cases as the uninterrupted run"
    );
    assert!(
        crashed_cases == reference_cases,
        "cases differ from the uninterrupted run"
    );
}
