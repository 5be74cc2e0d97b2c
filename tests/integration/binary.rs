//! The `fhir-edge` executable: config checking, status, the systemd notify protocol against
//! an emulated NOTIFY_SOCKET (kill -9 crash consistency is in `crash`).

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::common::*;

const BIN: &str = env!("CARGO_BIN_EXE_fhir-edge");

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

pub fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_accepts_the_example_and_names_bad_keys() {
    let example = repo("etc/config.toml");
    let model = repo("models/default");
    let model_env = [("FHIR_EDGE_DETECTOR__MODEL_DIR", model.to_str().unwrap())];
    let (code, out, err) = run(
        &["check-config", "--config", example.to_str().unwrap()],
        &model_env,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("export: off"), "{out}");
    // Where it exports, as an operator would set it from the environment.
    let (code, out, err) = run(
        &["check-config", "--config", example.to_str().unwrap()],
        &[
            model_env[0],
            ("FHIR_EDGE_EXPORT__SYSLOG__ADDRESS", "siem.example.org:6514"),
            ("FHIR_EDGE_SITE__NAME", "north"),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("export: syslog siem.example.org:6514 (TCP, facility authpriv) as site north"),
        "{out}"
    );
    // The model is checked too: missing, corrupt, wrong schema.
    let d = tempfile::tempdir().unwrap();
    let m = d.path().join("model");
    let env = [("FHIR_EDGE_DETECTOR__MODEL_DIR", m.to_str().unwrap())];
    let (code, _, err) = run(
        &["check-config", "--config", example.to_str().unwrap()],
        &env,
    );
    assert_eq!(code, 1, "missing model");
    assert!(err.contains(m.to_str().unwrap()), "{err}");
    std::fs::create_dir_all(&m).unwrap();
    for f in ["model.json", "model.safetensors"] {
        std::fs::copy(model.join(f), m.join(f)).unwrap();
    }
    std::fs::write(m.join("model.safetensors"), b"not safetensors").unwrap();
    let (code, _, err) = run(
        &["check-config", "--config", example.to_str().unwrap()],
        &env,
    );
    assert_eq!(code, 1, "corrupt weights: {err}");
    std::fs::copy(model.join("model.safetensors"), m.join("model.safetensors")).unwrap();
    let meta = std::fs::read_to_string(model.join("model.json")).unwrap();
    let schema = fhir_edge_core::detector::features::SCHEMA_VERSION;
    let old = meta.replacen(
        &format!("\"schema_version\": {schema}"),
        &format!("\"schema_version\": {}", schema - 1),
        1,
    );
    assert_ne!(meta, old);
    std::fs::write(m.join("model.json"), old).unwrap();
    let (code, _, err) = run(
        &["check-config", "--config", example.to_str().unwrap()],
        &env,
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("schema") && err.contains("fhir-edge train"),
        "{err}"
    );
    let d = tempfile::tempdir().unwrap();
    let bad = d.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[fhir]\nbase_url = \"http://127.0.0.1:8080/fhir\"\n[poller]\nintervall_secs = 5\n",
    )
    .unwrap();
    let (code, _, err) = run(&["check-config", "--config", bad.to_str().unwrap()], &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("poller.intervall_secs") && err.contains(bad.to_str().unwrap()),
        "{err}"
    );
    let (code, _, err) = run(
        &["check-config", "--config", example.to_str().unwrap()],
        &[("FHIR_EDGE_POLLER__INTERVAL_SECS", "abc"), model_env[0]],
    );
    assert_eq!(code, 1);
    assert!(err.contains("FHIR_EDGE_POLLER__INTERVAL_SECS"), "{err}");
    let (code, _, err) = run(
        &["check-config", "--config", "/nonexistent/fhir-edge.toml"],
        &[],
    );
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/fhir-edge.toml"), "{err}");
}

#[test]
fn version_and_help() {
    let (code, out, _) = run(&["--version"], &[]);
    assert_eq!(code, 0);
    assert!(out.starts_with("fhir-edge "), "{out}");
    let (code, out, _) = run(&["--help"], &[]);
    assert_eq!(code, 0);
    for cmd in [
        "run",
        "check-config",
        "status",
        "alerts",
        "simulate",
        "train",
        "score",
        "send-test-event",
    ] {
        assert!(out.contains(cmd), "--help lists {cmd}");
    }
}

pub fn write_config(dir: &Path, base_url: &str) -> PathBuf {
    let p = dir.join("config.toml");
    let mut f = std::fs::File::create(&p).unwrap();
    write!(
        f,
        "[fhir]\nbase_url = \"{base_url}\"\ntimeout_secs = 5\n[poller]\ninterval_secs = 1\npage_size = 100\ninitial_lookback_secs = 604800\nmax_backoff_secs = 2\n\
         [detector]\nmodel_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:0\"\n[state]\ndir = \"{}\"\n",
        tiny_model().display(),
        dir.join("state").display()
    )
    .unwrap();
    p
}

struct Notify {
    msgs: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Notify {
    fn bind(path: &Path) -> Notify {
        let sock = UnixDatagram::bind(path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let m = msgs.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 8192];
            loop {
                match sock.recv(&mut buf) {
                    Ok(n) => {
                        let s = String::from_utf8_lossy(&buf[..n]).into_owned();
                        m.lock().unwrap().push((Instant::now(), s));
                    }
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut =>
                    {
                        if Arc::strong_count(&m) == 1 {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        });
        Notify { msgs }
    }

    fn all(&self) -> Vec<(Instant, String)> {
        self.msgs.lock().unwrap().clone()
    }

    fn count(&self, what: &str) -> usize {
        self.all()
            .iter()
            .filter(|(_, m)| m.lines().any(|l| l == what))
            .count()
    }

    fn find(&self, prefix: &str) -> Option<String> {
        self.all()
            .iter()
            .flat_map(|(_, m)| m.lines().map(str::to_string).collect::<Vec<_>>())
            .find(|l| l.starts_with(prefix))
    }
}

fn spawn_daemon(
    cfg: &Path,
    notify_sock: Option<&Path>,
    watchdog_usec: Option<u64>,
    log: &Path,
) -> Child {
    let mut c = Command::new("sh");
    // WATCHDOG_PID must be the daemon's own pid: exec keeps the shell's pid.
    c.args([
        "-c",
        "WATCHDOG_PID=$$ exec \"$0\" \"$@\"",
        BIN,
        "run",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    c.env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env("FHIR_EDGE_LOG", "info");
    if let Some(s) = notify_sock {
        c.env("NOTIFY_SOCKET", s);
    }
    if let Some(w) = watchdog_usec {
        c.env("WATCHDOG_USEC", w.to_string());
    }
    c.stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    c.spawn().unwrap()
}

fn pings_between(n: &Notify, from: Instant, to: Instant) -> usize {
    n.all()
        .iter()
        .filter(|(t, m)| *t >= from && *t < to && m.lines().any(|l| l == "WATCHDOG=1"))
        .count()
}

#[test]
fn systemd_protocol_ready_watchdog_stall_and_stopping() {
    let s = seeded_server(120, "notify", 21, chrono::Duration::hours(1), 1);
    let d = tempfile::tempdir().unwrap();
    let cfg = write_config(d.path(), &s.base_url);
    let sock = d.path().join("notify.sock");
    let n = Notify::bind(&sock);
    let log = d.path().join("daemon.log");
    let mut child = spawn_daemon(&cfg, Some(&sock), Some(1_000_000), &log);

    // READY=1 comes only after init: at that moment the API answers and the state exists.
    wait_until(Duration::from_secs(30), "READY=1", || {
        n.count("READY=1") == 1
    });
    let status = n
        .find("STATUS=ready; API on ")
        .expect("READY carries a STATUS");
    let api = status
        .trim_start_matches("STATUS=ready; API on ")
        .to_string();
    let (code, body) = crate::pipeline::reqwest::get(&format!("http://{api}/api/health"), None);
    assert!(
        code == 200 || code == 503,
        "API bound before READY: {code} {body}"
    );
    assert!(
        d.path().join("state/fhir-edge.db").exists(),
        "state open before READY"
    );

    // Watchdog pings every ~0.5 s while everything progresses; STATUS carries counters.
    wait_until(Duration::from_secs(30), "120 events", || {
        status_of(d.path()).events_scored == 120
    });
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        pings_between(&n, t0, Instant::now()) >= 3,
        "watchdog pings arrive"
    );
    assert!(
        n.find("STATUS=120 events scored").is_some(),
        "STATUS shows live counters: {:?}",
        n.find("STATUS=")
    );

    // Stall the state actor: another process holds the database's write lock, so the
    // next commit blocks. The daemon must stop pinging, then resume once it can progress.
    let conn = rusqlite::Connection::open(d.path().join("state/fhir-edge.db")).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let stall_from = Instant::now();
    std::thread::sleep(Duration::from_millis(2000));
    let during = pings_between(&n, stall_from, Instant::now());
    conn.execute_batch("COMMIT").unwrap();
    drop(conn);
    assert_eq!(during, 0, "no watchdog ping while the state actor is stuck");
    let resumed = Instant::now();
    wait_until(Duration::from_secs(10), "pings to resume", || {
        pings_between(&n, resumed, Instant::now()) >= 2
    });

    // SIGTERM: STOPPING=1, then a clean exit.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "daemon did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        code.success(),
        "exit status {code:?}; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(n.count("STOPPING=1"), 1);
    let stopping_at = n
        .all()
        .iter()
        .find(|(_, m)| m.contains("STOPPING=1"))
        .unwrap()
        .0;
    let ready_at = n
        .all()
        .iter()
        .find(|(_, m)| m.contains("READY=1"))
        .unwrap()
        .0;
    assert!(ready_at < stopping_at);
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("withholding the watchdog ping"),
        "the stall was logged"
    );
}

fn status_of(dir: &Path) -> fhir_edge_core::state::StatusReport {
    status(&dir.join("state"))
}

#[test]
fn without_notify_socket_the_daemon_runs_and_status_reads_while_it_does() {
    let s = seeded_server(40, "plain", 22, chrono::Duration::hours(1), 1);
    let d = tempfile::tempdir().unwrap();
    let cfg = write_config(d.path(), &s.base_url);
    let log = d.path().join("daemon.log");
    let mut child = spawn_daemon(&cfg, None, None, &log);
    wait_until(Duration::from_secs(30), "40 events", || {
        status_of(d.path()).events_scored == 40
    });
    let (code, out, err) = run(
        &["status", "--json", "--config", cfg.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["events_scored"], 40);
    assert!(v["cursor"].is_string());
    assert!(v["last_poll"].is_string());
    // The running model's standing to the queue budget (the test model was not fitted).
    assert!(
        v["queue_budget"]
            .as_str()
            .is_some_and(|q| q.starts_with("not fitted")),
        "{v}"
    );
    let (code, out, _) = run(
        &["alerts", "--json", "--config", cfg.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 0);
    let alerts: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    for a in &alerts {
        for k in [
            "id",
            "event_id",
            "severity",
            "score",
            "status",
            "explanation",
        ] {
            assert!(a.get(k).is_some(), "alert has {k}");
        }
    }
    // The reports read like a Unix tool's: piped into a reader that has gone (`| head`),
    // they end quietly, killed by SIGPIPE, with no panic on the closed pipe.
    for cmd in ["status", "cases", "alerts"] {
        let mut fds = [0; 2];
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        unsafe { libc::close(fds[0]) };
        // SAFETY: the write end is ours and open; Stdio takes it over.
        let write_end =
            unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fds[1]) };
        let out = Command::new(BIN)
            .args([cmd, "--config", cfg.to_str().unwrap()])
            .stdout(Stdio::from(write_end))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{cmd} into a closed pipe: {err}");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{cmd}: {:?} {err}",
            out.status
        );
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_notify_receiver_that_never_reads_does_not_freeze_the_daemon() {
    let s = server();
    let d = tempfile::tempdir().unwrap();
    let cfg = write_config(d.path(), &s.base_url);
    let sock_path = d.path().join("deaf.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    // The smallest receive buffer the kernel allows: full after a few messages.
    let one: libc::c_int = 1;
    unsafe {
        use std::os::fd::AsRawFd;
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &one as *const _ as *const libc::c_void,
            4,
        );
    }
    let log = d.path().join("daemon.log");
    let mut child = spawn_daemon(&cfg, Some(&sock_path), Some(200_000), &log);
    // Let the buffer fill with pings and status lines nobody reads.
    std::thread::sleep(Duration::from_secs(3));
    let mut evs = events(150, "deaf", 24);
    stamp(&mut evs, Utc::now() - chrono::Duration::minutes(30), 1);
    s.store.insert_raw(evs);
    wait_until(
        Duration::from_secs(30),
        "150 events scored while notify is blocked",
        || status_of(d.path()).events_scored == 150,
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(
        child.wait().unwrap().success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    drop(sock);
}

/// `train --from-server`: every event the server holds in the window is read once across
/// paging (ties at page boundaries), older ones are left out, and the model says so.
#[test]
fn train_from_server_reads_the_whole_history_once() {
    let s = seeded_server(1_250, "hist", 3, chrono::Duration::hours(30), 3);
    // Older than the window: must not be learned from.
    let mut old = events(40, "old", 4);
    stamp(&mut old, Utc::now() - chrono::Duration::days(40), 1);
    s.store.insert_raw(old);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &s.base_url);
    let train = |since: &str, out: &Path| {
        run(
            &[
                "--config",
                cfg.to_str().unwrap(),
                "train",
                "--from-server",
                "--since",
                since,
                "--epochs",
                "2",
                "--output",
                out.to_str().unwrap(),
            ],
            &[],
        )
    };
    let out = dir.path().join("model");
    let (code, _, err) = train("7d", &out);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("read 1250 events from"), "{err}");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("model.json")).unwrap()).unwrap();
    assert_eq!(meta["training"]["events"], 1250, "{meta}");
    assert!(
        meta["training"]["inputs"][0]
            .as_str()
            .unwrap()
            .starts_with(&s.base_url),
        "{meta}"
    );
    // The model it wrote is one the daemon accepts.
    fhir_edge_core::detector::model::Model::load(&out).unwrap();

    // Nothing in the window: a clear refusal, not an empty model.
    let (code, _, err) = train("1h", &dir.path().join("m2"));
    assert_eq!(code, 1);
    assert!(err.contains("nothing to learn from"), "{err}");
}

/// `train` fits the thresholds of the behaviours that fill the replayed queue to the queue
/// budget on the second half of its window, says so, and keeps the raises and figures in
/// `model.json`; `--case-budget 0` leaves the percentile's.
#[test]
fn train_fits_the_thresholds_to_the_queue_budget() {
    let d = tempfile::tempdir().unwrap();
    let p = |name: &str| d.path().join(name).to_str().unwrap().to_string();
    let (code, _, err) = run(
        &[
            "simulate",
            "--days",
            "8",
            "--seed",
            "5",
            "--users",
            "40",
            "--patients",
            "400",
            "--anomalies-from-day",
            "99",
            "--out",
            &p("sim"),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    // Work that comes back: one account's burst of failed logins every morning of the
    // second half (a forgotten password in a script, say), beside the hospital's one-day
    // episodes.
    let mut lines: Vec<String> = std::fs::read_to_string(p("sim/events.ndjson"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    for day in 9..=12 {
        for i in 0..10 {
            let at = format!("2026-01-{day:02}T10:00:{:02}.000Z", 3 * i);
            lines.push(
                serde_json::json!({
                    "resourceType": "AuditEvent",
                    "id": format!("loud-{day}-{i}"),
                    "meta": {"lastUpdated": at},
                    "recorded": at,
                    "action": "E",
                    "outcome": "4",
                    "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110114"},
                    "subtype": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110122"}],
                    "agent": [{
                        "requestor": true,
                        "who": {"reference": "Practitioner/loud"},
                        "network": {"address": "198.51.100.7", "type": "2"}
                    }],
                    "source": {"observer": {"reference": "Device/fhir-server"}}
                })
                .to_string(),
            );
        }
    }
    let recorded = |l: &String| {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        v["recorded"].as_str().unwrap().to_string()
    };
    lines.sort_by_cached_key(recorded);
    std::fs::write(p("events.ndjson"), lines.join("\n") + "\n").unwrap();
    let events = p("events.ndjson");
    let train = |out: &str, budget: &str| {
        let (code, _, err) = run(
            &[
                "train",
                "--input",
                &events,
                "--output",
                &p(out),
                "--epochs",
                "2",
                "--case-budget",
                budget,
            ],
            &[],
        );
        assert_eq!(code, 0, "{err}");
        let meta: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(d.path().join(out).join("model.json")).unwrap(),
        )
        .unwrap();
        (meta, err)
    };
    let (plain, err) = train("plain", "0");
    assert!(plain["training"].get("queue_budget").is_none(), "{plain}");
    // The calibration's weight on the loudest user-hours is kept with the model and said.
    let cal = &plain["training"]["calibration"];
    let cap = cal["events_per_user_hour"].as_u64().expect("the cap kept");
    assert!(cap >= 1 && cal["user_hours_capped"].is_u64(), "{plain}");
    assert!(
        err.contains(&format!("events) count as {cap} each")),
        "{err}"
    );
    assert!(plain.get("raises").is_none(), "{plain}");
    // The second pass: what the first model alerts on is left out of the baselines,
    // counted with the model and said (`detector::sift`).
    let left = plain["training"]["left_out"]
        .as_u64()
        .expect("a second pass");
    let trained = plain["training"]["events"].as_u64().unwrap();
    assert!(left > 0 && left * 20 < trained, "{plain}");
    assert!(
        err.contains(&format!(
            "second pass: the {left} events the first model alerts on"
        )),
        "{err}"
    );
    // A budget of almost nothing: raised until nothing is queued, or as far as it may be
    // and said to be missed.
    let (strict, err) = train("strict", "0.01");
    let fit = &strict["training"]["queue_budget"];
    let f = |k: &str| fit[k].as_f64().unwrap();
    // Per behaviour, how far its threshold was raised: only the work that comes back,
    // within 1.5×; the one-day episodes of the simulated staff keep their thresholds.
    let raises = strict["raises"]
        .as_object()
        .expect("raises kept with the model");
    assert_eq!(
        raises.keys().collect::<Vec<_>>(),
        ["failed_logins"],
        "{strict} {err}"
    );
    let factors: Vec<f64> = raises.values().map(|v| v.as_f64().unwrap()).collect();
    assert!(factors.iter().all(|r| *r > 1.0 && *r <= 1.5), "{strict}");
    for kind in raises.keys() {
        assert!(
            err.contains(&format!("{kind} ")),
            "the raise of {kind} is said: {err}"
        );
    }
    assert!(f("before") > 0.01, "{fit}");
    assert!(f("after") <= f("before"), "{fit}");
    // The second half of 8 days that begin and end with a shift.
    assert!((3.5..=4.0).contains(&f("days")), "{fit}");
    match f("after") <= 0.01 {
        true => assert!(
            err.contains("queue budget 0.01") && err.contains("thresholds raised for"),
            "{err}"
        ),
        // Missed: what still fills the queue is at the limit or episodes of a day, and
        // their users are named. Not necessarily every raised behaviour is at the limit:
        // a watched record opened twice over alerts whatever the raise
        // (`detector::alerts_alone`), and behaviours gone from the queue rise no further.
        false => assert!(
            err.contains("NOT MET")
                && err.contains("episodes of a day that keep their threshold")
                && err.contains("Most of those cases are of: Practitioner/"),
            "{strict} {err}"
        ),
    }
    // The same training otherwise: the base threshold is the percentile's, unraised.
    let t = |m: &serde_json::Value| m["threshold"].as_f64().unwrap();
    assert!(
        (t(&strict) - t(&plain)).abs() < 1e-9,
        "{} {}",
        t(&strict),
        t(&plain)
    );
    // A budget this small hospital's week meets as it is: kept.
    let (loose, err) = train("loose", "1000");
    assert!(loose.get("raises").is_none(), "{loose}");
    let kept = &loose["training"]["queue_budget"];
    assert_eq!(kept["after"], kept["before"], "nothing raised: {kept}");
    assert!((t(&loose) - t(&plain)).abs() < 1e-9);
    assert!(err.contains("the thresholds are kept"), "{err}");
    // The hospital's week alone, one-day episodes only: every threshold kept, whatever the
    // budget, and said so with the users who fill the queue.
    let (code, _, err) = run(
        &[
            "train",
            "--input",
            &p("sim/events.ndjson"),
            "--output",
            &p("episodes"),
            "--epochs",
            "2",
            "--case-budget",
            "0.01",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let episodes: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(d.path().join("episodes").join("model.json")).unwrap(),
    )
    .unwrap();
    assert!(episodes.get("raises").is_none(), "{episodes}");
    assert!(
        err.contains("NOT MET, and the thresholds are kept") && err.contains("Practitioner/"),
        "{err}"
    );
    let (code, _, err) = run(
        &[
            "train",
            "--input",
            &events,
            "--output",
            &p("x"),
            "--case-budget=-1",
        ],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--case-budget"), "{err}");
}

#[test]
fn simulate_train_and_score_take_a_watch_list() {
    let d = tempfile::tempdir().unwrap();
    let p = |name: &str| d.path().join(name).to_str().unwrap().to_string();
    let sim = [
        "simulate",
        "--days",
        "4",
        "--seed",
        "3",
        "--users",
        "40",
        "--patients",
        "400",
        "--anomalies-from-day",
        "2",
        "--incidents-per-day",
        "40",
        "--out",
    ];
    let (code, _, err) = run(&[&sim[..], &[&p("sim")]].concat(), &[]);
    assert_eq!(code, 0, "{err}");
    let list = std::fs::read_to_string(p("sim/watchlist.txt")).unwrap();
    assert_eq!(
        list.lines().filter(|l| l.starts_with("Patient/")).count(),
        4
    );
    let events = p("sim/events.ndjson");
    let wl = p("sim/watchlist.txt");
    let (code, _, err) = run(
        &[
            "train",
            "--input",
            &events,
            "--output",
            &p("model"),
            "--epochs",
            "2",
            "--watch-list",
            &wl,
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let score = |out: &str, list: &str| {
        run(
            &[
                "score",
                "--model",
                &p("model"),
                "--input",
                &events,
                "--output",
                &p(out),
                "--watch-list",
                list,
            ],
            &[],
        )
    };
    let (code, _, err) = score("s.csv", &wl);
    assert_eq!(code, 0, "{err}");
    let scores = std::fs::read_to_string(p("s.csv")).unwrap();
    assert!(
        scores.contains("a watched record (on the site's watch list"),
        "some snooping went to a watched record"
    );
    // A mistyped list is refused, naming the line and not echoing it.
    std::fs::write(p("bad.txt"), "Patient/1\nJane Doe\n").unwrap();
    let (code, _, err) = score("s2.csv", &p("bad.txt"));
    assert_eq!(code, 1);
    assert!(err.contains("line 2") && !err.contains("Jane"), "{err}");
}

/// The judged protocol of a fresh install: a model trained on the baseline days scores the
/// days after them alone exactly as it scores them after reading the baseline, because the
/// baselines travel in the model folder; scoring the baseline again with it passes over
/// what it learned (rows written, not learned twice). A model folder without its baselines,
/// reading the baseline from scratch, learns what training's second pass left out
/// (`detector::sift`): its scores differ a little, whether an event alerts hardly ever.
#[test]
fn a_trained_model_scores_later_days_alone_as_after_its_baseline() {
    let d = tempfile::tempdir().unwrap();
    let p = |name: &str| d.path().join(name).to_str().unwrap().to_string();
    let sim = [
        "simulate",
        "--days",
        "5",
        "--seed",
        "5",
        "--users",
        "40",
        "--patients",
        "500",
        "--anomalies-from-day",
        "3",
        "--out",
    ];
    let (code, _, err) = run(&[&sim[..], &[&p("sim")]].concat(), &[]);
    assert_eq!(code, 0, "{err}");
    let all = std::fs::read_to_string(p("sim/events.ndjson")).unwrap();
    // The simulator starts on 2026-01-05 (UTC); days 3 and 4 are the test days.
    let until = "2026-01-08T00:00:00Z";
    let cut = chrono::DateTime::parse_from_rfc3339(until).unwrap();
    let test_days: Vec<&str> = all
        .lines()
        .filter(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            chrono::DateTime::parse_from_rfc3339(v["recorded"].as_str().unwrap()).unwrap() >= cut
        })
        .collect();
    assert!(test_days.len() > 500 && test_days.len() < all.lines().count());
    std::fs::write(p("test.ndjson"), test_days.join("\n") + "\n").unwrap();
    let (code, out, err) = run(
        &[
            "train",
            "--input",
            &p("sim/events.ndjson"),
            "--until",
            until,
            "--epochs",
            "3",
            "--output",
            &p("model"),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("with the baselines of 40 users"), "{out}");
    let score = |model: &str, input: &str, out_csv: &str| {
        let (code, out, err) = run(
            &[
                "score",
                "--model",
                &p(model),
                "--input",
                input,
                "--output",
                &p(out_csv),
            ],
            &[],
        );
        assert_eq!(code, 0, "{err}");
        let rows: std::collections::HashMap<String, String> = std::fs::read_to_string(p(out_csv))
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| {
                // id, score, severity, kind, case, case_queued, explanation: all but the
                // case (its number counts the cases of the whole file scored).
                let f: Vec<&str> = l.splitn(7, ',').collect();
                (f[0].to_string(), [f[1], f[2], f[3], f[6]].join(","))
            })
            .collect();
        (out, rows)
    };
    let (_, alone) = score("model", &p("test.ndjson"), "alone.csv");
    let (said, continued) = score("model", &p("sim/events.ndjson"), "all.csv");
    assert!(said.contains("were scored but not learned again"), "{said}");
    assert_eq!(
        continued.len(),
        all.lines().count(),
        "one row per input event"
    );
    // The old way: no baselines, the baseline read first.
    let bare = d.path().join("bare");
    std::fs::create_dir(&bare).unwrap();
    for f in ["model.json", "model.safetensors"] {
        std::fs::copy(d.path().join("model").join(f), bare.join(f)).unwrap();
    }
    let (_, after_baseline) = score("bare", &p("sim/events.ndjson"), "bare.csv");
    assert_eq!(alone.len(), test_days.len());
    for (id, row) in &alone {
        assert_eq!(&continued[id], row, "event {id}: alone vs continued");
    }
    // The old way learns what training's second pass left out of the baselines
    // (`detector::sift`), so its scores differ a little.
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p("model/model.json")).unwrap()).unwrap();
    let left_out = meta["training"]["left_out"].as_u64().unwrap_or(0);
    // Whether an event alerts, and at what severity, is the same but where that counts.
    let severity = |row: &String| row.split(',').nth(1).unwrap_or_default().to_string();
    let differ: Vec<&String> = alone
        .iter()
        .filter(|(id, row)| severity(&after_baseline[*id]) != severity(row))
        .map(|(id, _)| id)
        .collect();
    assert!(left_out > 0 || differ.is_empty(), "{differ:?}");
    assert!(
        differ.len() * 100 < alone.len(),
        "{} of {} test events alert otherwise after the baseline ({left_out} left out): {differ:?}",
        differ.len(),
        alone.len()
    );
}

/// `fhir-edge alerts --limit N` and `fhir-edge cases --limit N` read page by page: a store
/// holding more than one page (1,000) of each gives back exactly N, newest first, each once.
#[test]
fn alerts_and_cases_commands_page_through_more_than_a_thousand() {
    use fhir_edge_core::state::{BatchCommit, SeenEvent, Store};
    let d = tempfile::tempdir().unwrap();
    // Written straight into the state database, as the daemon would have: 2,400 alerts of
    // 1,200 users ten days apart (past the 7 a queued case takes its user's later
    // episodes for), so 2,400 cases.
    let cfg = write_config(d.path(), "http://127.0.0.1:9/fhir");
    let mut store = Store::open(&d.path().join("state")).unwrap();
    let alerts: Vec<fhir_edge_core::alerts::NewAlert> = (0..2400)
        .map(|i| fhir_edge_core::alerts::NewAlert {
            event_key: format!("e{i}|1"),
            event_id: format!("e{i}"),
            event_version: Some("1".into()),
            recorded_ms: 1_700_000_000_000 + (i / 1200) * 10 * 86_400_000 + i,
            score: 2.0,
            severity: fhir_edge_core::alerts::Severity::Medium,
            summary: "bulk data export ($export)".into(),
            explanation: vec!["bulk data export ($export)".into()],
            kinds: vec![fhir_edge_core::alerts::AlertKind::MassExport],
            user: Some(format!("Practitioner/u{}", i % 1200)),
            user_display: None,
            patient: None,
            source_ip: None,
            client_app: None,
            action: Some("E".into()),
            interaction: "export".into(),
            raw: "{}".into(),
            evidence: fhir_edge_core::alerts::Evidence::Single,
        })
        .collect();
    let events = alerts
        .iter()
        .map(|a| SeenEvent {
            key: a.event_key.clone(),
            last_updated_ms: a.recorded_ms,
            carried: Default::default(),
        })
        .collect();
    store
        .commit_batch(
            &BatchCommit {
                events,
                alerts,
                ..Default::default()
            },
            1,
        )
        .unwrap();
    drop(store);
    for (cmd, n) in [("alerts", 1500usize), ("cases", 2100)] {
        let (code, out, err) = run(
            &[
                cmd,
                "--json",
                "--limit",
                &n.to_string(),
                "--config",
                cfg.to_str().unwrap(),
            ],
            &[],
        );
        assert_eq!(code, 0, "{cmd}: {err}");
        let got: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        assert_eq!(got.len(), n, "{cmd} --limit {n}");
        let ids: std::collections::BTreeSet<i64> =
            got.iter().map(|x| x["id"].as_i64().unwrap()).collect();
        assert_eq!(ids.len(), n, "{cmd}: each once");
        assert!(
            got.windows(2)
                .all(|w| w[0]["id"].as_i64() > w[1]["id"].as_i64()),
            "{cmd}: newest first"
        );
    }
}
