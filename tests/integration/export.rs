//! Export to the real `nats-server` (Debian's, with JetStream, started here on a temporary
//! directory) and to a syslog receiver (a socket in the test, behind `socat` for TLS).
//! Without nats-server the NATS tests say SKIP — unless REQUIRE_NATS=1 (tests/run.sh),
//! where a missing server is a failure.
//!
//! - exactly once through two broker restarts and three `kill -9`s of the daemon: the
//!   stream's alert messages are exactly the stored alerts, each once, no message id twice;
//! - a token over TLS with a private CA; a wrong token leaves the daemon degraded with its
//!   backlog, sending resumes once the token is right;
//! - syslog over TCP and TLS: RFC 5424, octet-counted, every item once; a receiver that
//!   goes away and comes back gets what it missed.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use fhir_edge_lab::server::{Fault, FhirStore};

use crate::common::{default_model_as_sites, status, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_fhir-edge");
const T: Duration = Duration::from_secs(180);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The nats-server executable, or None (SKIP) when it is not installed.
fn nats_exe() -> Option<PathBuf> {
    for p in ["/usr/sbin/nats-server", "/usr/bin/nats-server"] {
        if Path::new(p).is_file() {
            return Some(p.into());
        }
    }
    if std::env::var("REQUIRE_NATS").as_deref() == Ok("1") {
        panic!("REQUIRE_NATS=1 but nats-server is not installed (apt install nats-server)");
    }
    eprintln!("SKIP export to NATS: nats-server is not installed (apt install nats-server)");
    None
}

/// A nats-server with JetStream on loopback, its store in `dir`; stopped on drop.
struct Nats {
    exe: PathBuf,
    dir: PathBuf,
    port: u16,
    args: Vec<String>,
    child: Option<Child>,
}

impl Nats {
    fn start(exe: &Path, dir: &Path, extra: &[String]) -> Nats {
        let mut n = Nats {
            exe: exe.to_path_buf(),
            dir: dir.to_path_buf(),
            port: free_port(),
            args: extra.to_vec(),
            child: None,
        };
        n.up();
        n
    }

    fn up(&mut self) {
        std::fs::create_dir_all(&self.dir).unwrap();
        let child = Command::new(&self.exe)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.dir)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("nats.log")).unwrap())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let port = self.port;
        wait_until(T, "nats-server listening", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// Stop the broker: SIGKILL (`hard`) or SIGTERM.
    fn down(&mut self, hard: bool) {
        if let Some(mut c) = self.child.take() {
            let sig = if hard { libc::SIGKILL } else { libc::SIGTERM };
            unsafe { libc::kill(c.id() as i32, sig) };
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.down(true);
    }
}

/// A daemon process, killed if the test fails while it runs.
struct Proc(Child);

impl Proc {
    fn spawn(cfg: &Path, log: &Path) -> Proc {
        Proc(
            Command::new(BIN)
                .args(["run", "--config", cfg.to_str().unwrap()])
                .env_remove("NOTIFY_SOCKET")
                .env_remove("WATCHDOG_USEC")
                .env("FHIR_EDGE_LOG", "info")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(log).unwrap())
                .spawn()
                .unwrap(),
        )
    }

    fn kill9(mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGKILL) };
        let _ = self.0.wait();
    }

    fn term(mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        assert!(self.0.wait().unwrap().success(), "a clean stop");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A lab server holding `n` simulated events (with injected incidents) of the last days.
fn lab_server(n: usize, seed: u64) -> (FhirStore, String) {
    let store = FhirStore::new(Arc::new(fhir_edge_core::clock::SystemClock));
    store.insert_serialized(fhir_edge_lab::traffic::bench_events_json(
        n,
        seed,
        chrono::Utc::now(),
    ));
    let url = format!(
        "http://{}/fhir",
        fhir_edge_lab::server::spawn_thread(store.clone(), 1)
    );
    (store, url)
}

fn write_config(dir: &Path, base_url: &str, export: &str) -> PathBuf {
    write_site_config(dir, base_url, "north", export)
}

fn write_site_config(dir: &Path, base_url: &str, site: &str, export: &str) -> PathBuf {
    let p = dir.join("config.toml");
    std::fs::write(
        &p,
        format!(
            "[fhir]\nbase_url = \"{base_url}\"\ntimeout_secs = 5\n\
             [poller]\ninterval_secs = 1\npage_size = 100\ninitial_lookback_secs = 172800\nmax_backoff_secs = 1\ncheckpoint_secs = 1\n\
             [detector]\nmodel_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:0\"\n[state]\ndir = \"{}\"\n\
             [site]\nname = \"{site}\"\n{export}",
            default_model_as_sites().display(),
            dir.join("state").display()
        ),
    )
    .unwrap();
    p
}

/// Every stored alert's id (paging through the whole store).
fn stored_alert_ids(state: &Path) -> Vec<i64> {
    let r = fhir_edge_core::state::Reader::open(state).unwrap();
    r.alerts_upto(&Default::default(), usize::MAX)
        .unwrap()
        .iter()
        .map(|a| a.id)
        .collect()
}

fn backlog(state: &Path, exporter: &str) -> Option<u64> {
    let r = fhir_edge_core::state::Reader::open(state).ok()?;
    r.export_status(&[exporter])
        .ok()?
        .into_iter()
        .find(|e| e.exporter == exporter)
        .map(|e| e.backlog)
}

/// One message of the stream: its subject, `Nats-Msg-Id` and JSON.
struct Msg {
    subject: String,
    msg_id: Option<String>,
    json: serde_json::Value,
}

/// Every message of `stream`, read with the async-nats client.
fn read_stream(url: &str, token: Option<&str>, ca: Option<&Path>, stream: &str) -> Vec<Msg> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut opts = async_nats::ConnectOptions::new();
        if let Some(t) = token {
            opts = opts.token(t.to_string());
        }
        if let Some(ca) = ca {
            opts = opts
                .add_root_certificates(ca.to_path_buf())
                .require_tls(true);
        }
        let client = opts.connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut s = js.get_stream(stream).await.unwrap();
        let info = s.info().await.unwrap().clone();
        let mut out = Vec::new();
        if info.state.messages == 0 {
            return out;
        }
        for seq in info.state.first_sequence..=info.state.last_sequence {
            let m = s.get_raw_message(seq).await.unwrap();
            out.push(Msg {
                subject: m.subject.to_string(),
                msg_id: m
                    .headers
                    .get(async_nats::header::NATS_MESSAGE_ID)
                    .map(|v| v.to_string()),
                json: serde_json::from_slice(&m.payload).unwrap(),
            });
        }
        out
    })
}

/// A connection to the broker that counts a stream's messages, for a kill timed by them.
struct StreamWatch {
    rt: tokio::runtime::Runtime,
    js: async_nats::jetstream::Context,
    stream: String,
}

impl StreamWatch {
    fn new(url: &str, stream: &str) -> StreamWatch {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let js = rt.block_on(async {
            async_nats::jetstream::new(async_nats::connect(url).await.unwrap())
        });
        StreamWatch {
            rt,
            js,
            stream: stream.into(),
        }
    }

    fn messages(&self) -> u64 {
        self.rt.block_on(async {
            match self.js.get_stream(&self.stream).await {
                Ok(mut s) => s.info().await.map_or(0, |i| i.state.messages),
                Err(_) => 0,
            }
        })
    }
}

/// The stream holds each message id once, and its alert messages are exactly `alerts`.
fn assert_exactly_the_alerts(msgs: &[Msg], alerts: &[i64]) {
    let mut ids = BTreeSet::new();
    for m in msgs {
        let id = m.msg_id.clone().expect("every message has a Nats-Msg-Id");
        assert_eq!(m.json["msg_id"], id.as_str(), "the body names its id");
        assert!(ids.insert(id.clone()), "message {id} twice in the stream");
        assert_eq!(m.json["site"], "north");
        assert_eq!(m.json["schema"], 1);
        let ty = m.json["type"].as_str().unwrap();
        assert_eq!(m.subject, format!("fhir-edge.north.{ty}"));
    }
    let mut exported: BTreeMap<i64, usize> = BTreeMap::new();
    for m in msgs.iter().filter(|m| m.json["type"] == "alert") {
        *exported.entry(m.json["id"].as_i64().unwrap()).or_default() += 1;
        for k in [
            "event_id",
            "severity",
            "score",
            "user",
            "recorded",
            "explanation",
        ] {
            assert!(
                !m.json[k].is_null(),
                "alert message without {k}: {}",
                m.json
            );
        }
    }
    let twice: Vec<_> = exported.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "alerts exported twice: {twice:?}");
    let stored: BTreeSet<i64> = alerts.iter().copied().collect();
    let sent: BTreeSet<i64> = exported.keys().copied().collect();
    let missing: Vec<_> = stored.difference(&sent).collect();
    let extra: Vec<_> = sent.difference(&stored).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "stream vs store: missing {missing:?}, not stored {extra:?}"
    );
}

#[test]
fn nats_gets_every_alert_once_through_two_broker_restarts_and_three_kill_minus_nines() {
    let Some(exe) = nats_exe() else { return };
    let n = 30_000u64;
    let (store, url) = lab_server(n as usize, 11);
    // Slow pages, so the catch-up (and its alerts) spans the restarts and kills.
    for _ in 0..20_000 {
        store.push_fault(Fault::Delay(Duration::from_millis(30)));
    }
    let dir = tempfile::tempdir().unwrap();
    let mut nats = Nats::start(&exe, &dir.path().join("nats"), &[]);
    let cfg = write_config(
        dir.path(),
        &url,
        &format!(
            "[export]\nbatch = 500\n[export.nats]\nservers = [\"{}\"]\ntimeout_secs = 2\n",
            nats.url()
        ),
    );
    let state = dir.path().join("state");
    let exported = |min: u64| {
        let r = fhir_edge_core::state::Reader::open(&state).ok();
        r.and_then(|r| r.export_cursor("nats").ok())
            .is_some_and(|c| c >= min as i64)
    };
    let log = |i: u32| dir.path().join(format!("run-{i}.log"));

    // 1: exporting; kill -9 once something went out.
    let d = Proc::spawn(&cfg, &log(1));
    wait_until(T, "the first acknowledged export", || exported(1));
    std::thread::sleep(Duration::from_millis(700));
    d.kill9();
    // 2: the broker dies mid-stream (SIGKILL); the daemon is killed during the outage.
    let d = Proc::spawn(&cfg, &log(2));
    std::thread::sleep(Duration::from_millis(1500));
    nats.down(true);
    std::thread::sleep(Duration::from_secs(3));
    d.kill9();
    nats.up();
    // 3: killed again while it sends the backlog: as soon as the stream holds a message of
    // a batch whose acknowledgements have not all been recorded (the worst moment: all of
    // that batch is sent again after the restart).
    let waiting = backlog(&state, "nats").unwrap_or(0);
    let watch = StreamWatch::new(&nats.url(), "FHIR_EDGE");
    let stored = watch.messages();
    let d = Proc::spawn(&cfg, &log(3));
    wait_until(T, "the backlog reaching the stream", || {
        watch.messages() > stored
    });
    d.kill9();
    // Outbox positions run 1, 2, 3… and every item becomes one message: messages beyond
    // the recorded position were stored but not recorded, and must be sent again.
    let recorded = fhir_edge_core::state::Reader::open(&state)
        .unwrap()
        .export_cursor("nats")
        .unwrap();
    let ahead = watch.messages() as i64 - recorded;
    eprintln!("third kill: the stream held {ahead} messages beyond the recorded position");
    drop(watch);
    // 4: the broker restarts cleanly mid-stream; the daemon finishes.
    let d = Proc::spawn(&cfg, &log(4));
    std::thread::sleep(Duration::from_millis(1000));
    nats.down(false);
    std::thread::sleep(Duration::from_secs(2));
    nats.up();
    wait_until(Duration::from_secs(600), "every event scored", || {
        status(&state).events_scored >= n
    });
    wait_until(T, "the outbox sent to the broker", || {
        backlog(&state, "nats") == Some(0)
    });
    d.term();
    let alerts = stored_alert_ids(&state);
    assert!(
        alerts.len() > 20,
        "incidents to export ({} alerts)",
        alerts.len()
    );
    let msgs = read_stream(&nats.url(), None, None, "FHIR_EDGE");
    assert_exactly_the_alerts(&msgs, &alerts);
    assert!(
        msgs.iter().any(|m| m.json["type"] == "case"),
        "cases exported"
    );
    let logs: String = (1..=4)
        .map(|i| std::fs::read_to_string(log(i)).unwrap_or_default())
        .collect();
    assert!(logs.contains("nats export failed"), "the outage was seen");
    let resent = logs
        .lines()
        .filter(|l| l.contains("were already in the stream"))
        .count();
    eprintln!(
        "export to NATS: {n} events, {} alerts, {} messages in the stream, each once; \
         {resent} batches re-sent in part after a kill or an outage, dropped by the stream; \
         {waiting} items waited after the outage",
        alerts.len(),
        msgs.len()
    );
    assert!(waiting > 0, "the outage left a backlog");
    // What the stream held beyond the record at the third kill went again, and the stream
    // dropped it by its message id.
    assert!(ahead >= 0);
    assert!(
        ahead == 0 || resent > 0,
        "{ahead} messages re-sent were not seen as duplicates"
    );
}

/// A private CA and a certificate for 127.0.0.1 made by openssl in `dir`.
fn certificates(dir: &Path) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(
            "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=fhir-edge-test-ca 2>/dev/null && \
             openssl req -newkey rsa:2048 -nodes -keyout srv.key -out srv.csr -subj /CN=127.0.0.1 2>/dev/null && \
             printf 'subjectAltName=IP:127.0.0.1\\n' > san.ext && \
             openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2 -extfile san.ext 2>/dev/null && \
             cat srv.pem srv.key > srv-bundle.pem",
        )
        .current_dir(dir)
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl made the test certificates");
}

fn get(addr: &str, path: &str) -> (u16, serde_json::Value) {
    request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
}

fn post(addr: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    request(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

fn request(addr: &str, req: &str) -> (u16, serde_json::Value) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (code, serde_json::from_str(body).unwrap_or_default())
}

/// The API address the daemon logged.
fn api_addr(log: &Path) -> String {
    let mut found = None;
    wait_until(T, "the daemon ready", || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        found = text
            .lines()
            .find(|l| l.contains("ready") && l.contains("api="))
            .and_then(|l| l.split("api=").nth(1))
            .map(|r| r.split_whitespace().next().unwrap_or("").to_string());
        found.is_some()
    });
    found.unwrap()
}

#[test]
fn nats_with_a_token_over_tls_and_a_wrong_token_leaves_the_daemon_degraded_not_losing() {
    let Some(exe) = nats_exe() else { return };
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let p = |f: &str| dir.path().join(f).display().to_string();
    let nats = Nats::start(
        &exe,
        &dir.path().join("nats"),
        &[
            "--tls".into(),
            "--tlscert".into(),
            p("srv.pem"),
            "--tlskey".into(),
            p("srv.key"),
            "--auth".into(),
            "s3cret-token".into(),
        ],
    );
    std::fs::write(dir.path().join("wrong.token"), "not-the-token\n").unwrap();
    std::fs::write(dir.path().join("nats.token"), "s3cret-token\n").unwrap();
    let n = 6_000u64;
    let (_store, url) = lab_server(n as usize, 5);
    let export = |token: &str| {
        format!(
            "[export.nats]\nservers = [\"tls://127.0.0.1:{}\"]\ntoken_file = \"{}\"\nca_file = \"{}\"\ntimeout_secs = 2\n",
            nats.port,
            p(token),
            p("ca.pem")
        )
    };
    let state = dir.path().join("state");

    // The wrong token: scoring goes on, the outbox grows, the API says why.
    let cfg = write_config(dir.path(), &url, &export("wrong.token"));
    let log = dir.path().join("wrong.log");
    let d = Proc::spawn(&cfg, &log);
    let api = api_addr(&log);
    wait_until(T, "events scored", || status(&state).events_scored >= n);
    let mut health = serde_json::Value::Null;
    wait_until(T, "health says degraded with a backlog", || {
        let (code, h) = get(&api, "/api/health");
        health = h;
        code == 503
            && health["status"] == "degraded"
            && health["export"][0]["state"] == "failing"
            && health["export"][0]["backlog"].as_u64().unwrap_or(0) > 0
    });
    assert!(
        health["degraded"]
            .as_str()
            .unwrap()
            .contains("nats export failing"),
        "{health}"
    );
    let (_, metrics) = {
        let mut s = std::net::TcpStream::connect(&api).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        (0, text)
    };
    assert!(
        metrics.contains("fhir_edge_export_backlog{exporter=\"nats\"}"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("fhir_edge_export_errors_total 0\n"),
        "errors counted"
    );
    d.term();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("s3cret-token") && !text.contains("not-the-token"));

    // The right token over TLS: everything waiting goes out, once.
    let cfg = write_config(dir.path(), &url, &export("nats.token"));
    let log = dir.path().join("right.log");
    let d = Proc::spawn(&cfg, &log);
    let api = api_addr(&log);
    wait_until(T, "the backlog sent", || backlog(&state, "nats") == Some(0));
    wait_until(T, "health ok", || get(&api, "/api/health").0 == 200);
    d.term();
    let msgs = read_stream(
        &format!("tls://127.0.0.1:{}", nats.port),
        Some("s3cret-token"),
        Some(&dir.path().join("ca.pem")),
        "FHIR_EDGE",
    );
    let alerts = stored_alert_ids(&state);
    assert!(!alerts.is_empty());
    assert_exactly_the_alerts(&msgs, &alerts);
}

/// A syslog receiver on a socket: octet-counted frames, kept per connection in order.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<String>>>,
    up: Arc<std::sync::atomic::AtomicBool>,
}

impl Receiver {
    fn start() -> Receiver {
        let r = Receiver {
            port: free_port(),
            got: Arc::default(),
            up: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        };
        r.listen();
        r
    }

    /// Accept and read until `down`.
    fn listen(&self) {
        use std::sync::atomic::Ordering;
        let l = std::net::TcpListener::bind(("127.0.0.1", self.port)).unwrap();
        l.set_nonblocking(true).unwrap();
        self.up.store(true, Ordering::SeqCst);
        let (got, up) = (self.got.clone(), self.up.clone());
        std::thread::spawn(move || {
            let mut conns: Vec<(std::net::TcpStream, Vec<u8>)> = Vec::new();
            while up.load(Ordering::SeqCst) {
                if let Ok((s, _)) = l.accept() {
                    s.set_nonblocking(true).unwrap();
                    conns.push((s, Vec::new()));
                }
                let mut buf = [0u8; 65536];
                for (s, pending) in conns.iter_mut() {
                    while let Ok(k) = s.read(&mut buf) {
                        if k == 0 {
                            break;
                        }
                        pending.extend_from_slice(&buf[..k]);
                    }
                    // Whole frames: LEN SP MSG.
                    while let Some(sp) = pending.iter().position(|b| *b == b' ') {
                        let len: usize = std::str::from_utf8(&pending[..sp])
                            .unwrap()
                            .parse()
                            .unwrap();
                        if pending.len() < sp + 1 + len {
                            break;
                        }
                        let msg =
                            String::from_utf8(pending[sp + 1..sp + 1 + len].to_vec()).unwrap();
                        got.lock().unwrap().push(msg);
                        pending.drain(..sp + 1 + len);
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            // Going away: connections and the listener close (what was not read is lost
            // to this receiver, as when a SIEM's collector dies).
        });
    }

    fn down(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(100));
    }

    /// msg_id → how many times, and alert ids, from the structured data.
    fn received(&self) -> (BTreeMap<String, usize>, Vec<i64>) {
        let mut ids = BTreeMap::new();
        let mut alerts = Vec::new();
        for m in self.got.lock().unwrap().iter() {
            assert!(m.starts_with('<') && m.contains(">1 "), "RFC 5424: {m}");
            assert!(
                m.contains("[fhir-edge@32473 schema=\"1\" site=\"north\""),
                "{m}"
            );
            let field = |k: &str| {
                m.split(&format!(" {k}=\""))
                    .nth(1)
                    .and_then(|r| r.split('"').next())
            };
            let id = field("msg_id").unwrap().to_string();
            if field("type") == Some("alert") {
                alerts.push(field("id").unwrap().parse().unwrap());
            }
            let json = m.split_once("] {").map(|(_, r)| format!("{{{r}")).unwrap();
            let v: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert_eq!(v["msg_id"], id.as_str());
            *ids.entry(id).or_default() += 1;
        }
        (ids, alerts)
    }
}

/// A daemon that has read `n` simulated events and sent its outbox to a syslog receiver,
/// with `keys` added under `[export.syslog]`.
struct SyslogRun {
    dir: tempfile::TempDir,
    state: PathBuf,
    rx: Receiver,
    d: Proc,
    _store: FhirStore,
}

fn syslog_run(n: u64, keys: &str) -> SyslogRun {
    let dir = tempfile::tempdir().unwrap();
    let (store, url) = lab_server(n as usize, 5);
    let rx = Receiver::start();
    let cfg = write_config(
        dir.path(),
        &url,
        &format!(
            "[export.syslog]\naddress = \"127.0.0.1:{}\"\n{keys}",
            rx.port
        ),
    );
    let state = dir.path().join("state");
    let d = Proc::spawn(&cfg, &dir.path().join("run.log"));
    wait_until(T, "events scored", || status(&state).events_scored >= n);
    wait_until(T, "the outbox sent", || {
        backlog(&state, "syslog") == Some(0)
    });
    SyslogRun {
        dir,
        state,
        rx,
        d,
        _store: store,
    }
}

#[test]
fn a_syslog_receiver_gets_every_item_once_and_what_it_missed_while_away() {
    let SyslogRun {
        dir,
        state,
        rx,
        d,
        _store,
    } = syslog_run(6_000, "facility = \"local4\"\n");
    let alerts = stored_alert_ids(&state);
    assert!(!alerts.is_empty());
    let (ids, got) = rx.received();
    assert!(ids.values().all(|k| *k == 1), "an item twice");
    let got: BTreeSet<i64> = got.into_iter().collect();
    assert_eq!(got, alerts.iter().copied().collect(), "every alert once");
    let first = ids.len();
    // local4 (20) * 8 + a severity 2–5.
    assert!(rx
        .got
        .lock()
        .unwrap()
        .iter()
        .all(|m| (162..=165).contains(&m[1..4].parse::<u32>().unwrap())));

    // The receiver goes away; decisions wait in the outbox; it comes back.
    rx.down();
    let api = api_addr(&dir.path().join("run.log"));
    for case in 1..=3 {
        let (code, _) = post(
            &api,
            &format!("/api/cases/{case}/status"),
            r#"{"status":"in_review","by":"privacy-officer","note":"Ann Smith called"}"#,
        );
        assert_eq!(code, 200);
    }
    wait_until(T, "the outbox waiting", || {
        backlog(&state, "syslog").unwrap_or(0) >= 6
    });
    rx.listen();
    wait_until(T, "the backlog sent", || {
        backlog(&state, "syslog") == Some(0)
    });
    d.term();
    let (ids, got) = rx.received();
    // Three decisions and the three cases as they now stand.
    assert!(ids.len() >= first + 6, "what waited arrived");
    let all = rx.got.lock().unwrap().join("\n");
    assert!(all.contains("status=\"in_review\"") && !all.contains("Ann Smith"));
    let got: BTreeSet<i64> = got.into_iter().collect();
    assert_eq!(
        got,
        stored_alert_ids(&state).into_iter().collect(),
        "every alert, the missed ones too"
    );
    let twice = ids.values().filter(|k| **k > 1).count();
    eprintln!(
        "syslog: {} items, {twice} received twice (by msg_id)",
        ids.len()
    );
}

/// A CEF receiver's view: each message's `externalId` → how many times, the alert ids
/// (`cn2` of an `alert:` signature), and how many case messages.
fn cef_received(rx: &Receiver) -> (BTreeMap<String, usize>, BTreeSet<i64>, usize) {
    let mut ids = BTreeMap::<String, usize>::new();
    let mut got = BTreeSet::new();
    let mut cases = 0;
    for m in rx.got.lock().unwrap().iter() {
        let (head, cef) = m.split_once(" - CEF:0|fhir-edge|fhir-edge|").expect(m);
        assert!(
            head.starts_with('<') && head.contains(">1 "),
            "RFC 5424: {m}"
        );
        assert!(!m.contains('\n') && !m.contains("fhir-edge@32473"), "{m}");
        // The extension's fields read here hold no spaces.
        let field = |k: &str| {
            cef.split(&format!(" {k}="))
                .nth(1)
                .and_then(|r| r.split(' ').next())
        };
        *ids.entry(field("externalId").expect(m).to_string())
            .or_default() += 1;
        let signature = cef.split('|').nth(1).unwrap();
        if signature.starts_with("alert:") {
            assert!(
                field("suser").is_none_or(|u| u.contains('/')),
                "a user is a reference: {m}"
            );
            got.insert(field("cn2").unwrap().parse::<i64>().unwrap());
        }
        cases += usize::from(signature.starts_with("case:"));
    }
    (ids, got, cases)
}

/// `format = "cef"`: every item one CEF line after an RFC 5424 header without structured
/// data; every alert once, found by its signature and id. A back-fill then sends every
/// alert again under its own message id, and every case as a new version.
#[test]
fn a_syslog_receiver_asking_for_cef_gets_every_alert_as_one_cef_line() {
    let SyslogRun {
        dir,
        state,
        rx,
        d,
        _store,
    } = syslog_run(3_000, "format = \"cef\"\n");
    let alerts: BTreeSet<i64> = stored_alert_ids(&state).into_iter().collect();
    assert!(!alerts.is_empty());
    let (ids, got, cases) = cef_received(&rx);
    assert!(ids.values().all(|k| *k == 1), "an item twice");
    assert_eq!(got, alerts, "every alert once");
    assert!(cases > 0, "cases too");

    let api = api_addr(&dir.path().join("run.log"));
    let (code, body) = post(&api, "/api/export/backfill", r#"{"since":"yesterday"}"#);
    assert_eq!(code, 400, "{body}");
    let (code, body) = post(
        &api,
        "/api/export/backfill",
        r#"{"since":"2000-01-01T00:00:00Z"}"#,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["alerts"], alerts.len());
    let cases_sent = body["cases"].as_u64().unwrap() as usize;
    wait_until(T, "the back-fill sent", || {
        rx.got.lock().unwrap().len() >= ids.len() + alerts.len() + cases_sent
    });
    d.term();
    let (again, got, cases_now) = cef_received(&rx);
    assert_eq!(got, alerts);
    for a in &alerts {
        assert_eq!(
            again[&format!("north.alert.{a}")],
            2,
            "alert {a} twice, by one id"
        );
    }
    assert_eq!(
        cases_now,
        cases + cases_sent,
        "each case once more, as it stands"
    );
    assert!(again.values().all(|k| *k <= 2));
    let log = std::fs::read_to_string(dir.path().join("run.log")).unwrap();
    for said in [
        "cases to write to the outbox again",
        "written to the outbox again",
    ] {
        assert!(log.contains(said), "the log says the back-fill's {said:?}");
    }
}

/// `format = "ocsf"`: every item one OCSF Detection Finding (JSON) after an RFC 5424 header
/// without structured data; every alert created once, each case created with its first
/// alert; a case closed as a false positive is a closed, suppressed finding.
#[test]
fn a_syslog_receiver_asking_for_ocsf_gets_every_alert_as_one_detection_finding() {
    let SyslogRun {
        dir,
        state,
        rx,
        d,
        _store,
    } = syslog_run(3_000, "format = \"ocsf\"\n");
    let alerts: BTreeSet<i64> = stored_alert_ids(&state).into_iter().collect();
    assert!(!alerts.is_empty());
    let api = api_addr(&dir.path().join("run.log"));
    let (code, _) = post(
        &api,
        "/api/cases/1/status",
        r#"{"status":"closed","resolution":"false_positive","by":"privacy-officer","note":"Ann Smith called"}"#,
    );
    assert_eq!(code, 200);
    wait_until(T, "the decision sent", || {
        backlog(&state, "syslog") == Some(0)
            && rx
                .got
                .lock()
                .unwrap()
                .iter()
                .any(|m| m.contains("\"Close\""))
    });
    d.term();
    let findings: Vec<Value> = rx
        .got
        .lock()
        .unwrap()
        .iter()
        .map(|m| {
            let (head, msg) = m.split_once(" - {").expect(m);
            assert!(
                head.starts_with('<') && head.contains(">1 "),
                "RFC 5424: {m}"
            );
            assert!(
                !m.contains("fhir-edge@32473") && !m.contains("Ann Smith"),
                "{m}"
            );
            serde_json::from_str(&format!("{{{msg}")).expect(m)
        })
        .collect();
    let mut uids = BTreeSet::new();
    let mut created = BTreeSet::new();
    let mut cases_created = 0;
    for f in &findings {
        assert_eq!(
            (&f["class_uid"], &f["category_uid"]),
            (&json!(2004), &json!(2)),
            "{f}"
        );
        assert!(
            uids.insert(f["metadata"]["uid"].as_str().unwrap().to_string()),
            "a message twice: {f}"
        );
        let uid = f["finding_info"]["uid"].as_str().unwrap();
        if let Some(id) = uid.strip_prefix("north.alert.") {
            if f["activity_id"] == 1 {
                assert!(
                    created.insert(id.parse::<i64>().unwrap()),
                    "alert {id} created twice"
                );
                assert!(
                    f["evidences"][0]["actor"]["user"]["uid"]
                        .as_str()
                        .is_none_or(|u| u.contains('/')),
                    "{f}"
                );
                assert_eq!(f["is_alert"], true);
            }
        }
        if uid.starts_with("north.case.") && f["activity_id"] == 1 {
            cases_created += 1;
        }
    }
    assert_eq!(created, alerts, "every alert created once");
    assert!(cases_created > 0, "cases created too");
    let closed: Vec<&Value> = findings
        .iter()
        .filter(|f| f["finding_info"]["uid"] == "north.case.1" && f["activity_id"] == 3)
        .collect();
    assert!(!closed.is_empty(), "the case closed");
    assert!(
        closed.iter().all(|f| f["status_id"] == 3),
        "closed as suppressed: {closed:?}"
    );
}

#[test]
fn syslog_over_tls_checks_the_receiver_and_delivers_every_alert_once() {
    if !["openssl", "socat"].iter().all(|t| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {t}"))
            .output()
            .is_ok_and(|o| o.status.success())
    }) {
        assert!(
            std::env::var("REQUIRE_REAL_FHIR_SERVER").as_deref() != Ok("1"),
            "openssl and socat are needed (tests/run.sh installs them)"
        );
        eprintln!("SKIP syslog over TLS: no openssl or socat");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let rx = Receiver::start();
    let port = free_port();
    // A TLS terminator in front of the receiver, as a SIEM's collector on 6514.
    let mut socat = Command::new("socat")
        .arg(format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},verify=0",
            dir.path().join("srv-bundle.pem").display()
        ))
        .arg(format!("TCP:127.0.0.1:{}", rx.port))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(T, "socat listening", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let n = 4_000u64;
    let (_store, url) = lab_server(n as usize, 8);
    let state = dir.path().join("state");
    // First without our CA: the receiver's certificate is not trusted, nothing is sent.
    let cfg = write_config(
        dir.path(),
        &url,
        &format!("[export.syslog]\naddress = \"127.0.0.1:{port}\"\ntls = true\ntimeout_secs = 2\n"),
    );
    let log = dir.path().join("untrusted.log");
    let d = Proc::spawn(&cfg, &log);
    wait_until(T, "events scored", || status(&state).events_scored >= n);
    wait_until(T, "the certificate refused", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("syslog export failed")
    });
    d.term();
    assert!(
        rx.got.lock().unwrap().is_empty(),
        "nothing sent to an untrusted receiver"
    );
    // With the CA that signed it: everything that waited, once.
    let cfg = write_config(
        dir.path(),
        &url,
        &format!(
            "[export.syslog]\naddress = \"127.0.0.1:{port}\"\ntls = true\nca_file = \"{}\"\n",
            dir.path().join("ca.pem").display()
        ),
    );
    let d = Proc::spawn(&cfg, &dir.path().join("trusted.log"));
    wait_until(T, "the backlog sent", || {
        backlog(&state, "syslog") == Some(0)
    });
    d.term();
    let _ = socat.kill();
    let _ = socat.wait();
    let (ids, got) = rx.received();
    assert!(ids.values().all(|k| *k == 1), "an item twice");
    let got: BTreeSet<i64> = got.into_iter().collect();
    let alerts: BTreeSet<i64> = stored_alert_ids(&state).into_iter().collect();
    assert!(!alerts.is_empty());
    assert_eq!(got, alerts, "every alert once");
}

/// Every case in the state of one site, with its alerts' AuditEvent ids.
fn stored_cases(state: &Path) -> BTreeMap<i64, BTreeSet<String>> {
    let r = fhir_edge_core::state::Reader::open(state).unwrap();
    r.cases_upto(&Default::default(), usize::MAX)
        .unwrap()
        .iter()
        .map(|c| {
            let (_, alerts) = r.case(c.id).unwrap();
            (c.id, alerts.iter().map(|a| a.event_id.clone()).collect())
        })
        .collect()
}

#[test]
fn two_sites_feed_one_fleet_view_rebuilt_from_the_stream_at_every_start() {
    let Some(exe) = nats_exe() else { return };
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(&exe, &dir.path().join("nats"), &[]);
    let export = format!("[export.nats]\nservers = [\"{}\"]\n", nats.url());
    let mut sites = Vec::new();
    for (site, seed) in [("north", 21u64), ("south", 22)] {
        let (_store, url) = lab_server(4_000, seed);
        let sd = dir.path().join(site);
        std::fs::create_dir_all(&sd).unwrap();
        let cfg = write_site_config(&sd, &url, site, &export);
        let d = Proc::spawn(&cfg, &sd.join("run.log"));
        sites.push((site, sd.join("state"), d, _store));
    }
    for (_, state, _, _) in &sites {
        wait_until(T, "events scored", || status(state).events_scored >= 4_000);
        wait_until(T, "exported", || backlog(state, "nats") == Some(0));
    }
    let port = free_port();
    let start_fleet = |log: &str| {
        Proc(
            Command::new(BIN)
                .args([
                    "fleet",
                    "--nats",
                    &nats.url(),
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                ])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.path().join(log)).unwrap())
                .spawn()
                .unwrap(),
        )
    };
    let api = format!("127.0.0.1:{port}");
    for round in ["first", "restarted"] {
        let fleet = start_fleet(&format!("fleet-{round}.log"));
        let mut all = Vec::new();
        wait_until(T, "the fleet view caught up", || {
            all.clear();
            let mut cursor = None;
            loop {
                let q = match cursor {
                    Some(c) => format!("/api/cases?status=any&limit=1000&cursor={c}"),
                    None => "/api/cases?status=any&limit=1000".to_string(),
                };
                let Ok(s) = std::net::TcpStream::connect(&api) else {
                    return false;
                };
                drop(s);
                let (code, body) = get(&api, &q);
                if code != 200 {
                    return false;
                }
                all.extend(body["cases"].as_array().unwrap().iter().cloned());
                match body["next_cursor"].as_u64() {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            let expected: usize = sites
                .iter()
                .map(|(_, st, _, _)| stored_cases(st).len())
                .sum();
            all.len() == expected
        });
        let (code, health) = get(&api, "/api/health");
        assert_eq!(code, 200, "{health}");
        assert_eq!(health["mode"], "fleet");
        assert_eq!(health["sites"].as_array().unwrap().len(), 2, "{health}");
        for (site, state, _, _) in &sites {
            let stored = stored_cases(state);
            let mine: Vec<&serde_json::Value> = all.iter().filter(|c| c["site"] == *site).collect();
            assert_eq!(mine.len(), stored.len(), "{site}: every case, once");
            // A case of the view holds the AuditEvents the site's own store holds.
            for (id, events) in stored.iter().take(20) {
                let (code, c) = get(&api, &format!("/api/cases/{site}:{id}"));
                assert_eq!(code, 200);
                assert_eq!(c["key"], format!("{site}:{id}"));
                let got: BTreeSet<String> = c["event_ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e.as_str().unwrap().to_string())
                    .collect();
                assert_eq!(&got, events, "{site}:{id}");
            }
        }
        // Without a status, the watched cases are left out, as on a site's own API (read
        // twice until both listings agree: a watched case turns new when an alert that
        // corroborates it arrives).
        wait_until(
            T,
            "the default listing leaves the watched cases out",
            || {
                let cases = |q: &str| {
                    let (code, body) = get(&api, q);
                    assert_eq!(code, 200);
                    body["cases"].as_array().unwrap().clone()
                };
                let listed = cases("/api/cases?limit=1000");
                let any = cases("/api/cases?status=any&limit=1000");
                let reviewable = any.iter().filter(|c| c["status"] != "watching").count();
                assert!(listed.iter().all(|c| c["status"] != "watching"));
                listed.len() == reviewable
            },
        );
        // A misspelt name is refused with the names it takes, as on a site's own API; a
        // severity is the minimum.
        let (code, body) = get(&api, "/api/cases?status=opne");
        assert_eq!(code, 400, "{body}");
        assert!(body["error"].as_str().unwrap().contains("any"), "{body}");
        let (code, body) = get(&api, "/api/alerts?severity=hgih");
        assert_eq!(code, 400, "{body}");
        let (_, high) = get(&api, "/api/alerts?severity=high&limit=1000");
        assert!(
            high["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .all(|a| a["severity"] == "high" || a["severity"] == "critical"),
            "{high}"
        );
        // Read-only: no decision through the view.
        let (code, _) = post(
            &api,
            "/api/cases/north:1/status",
            r#"{"status":"in_review"}"#,
        );
        assert!(code == 404 || code == 405, "{code}");
        // The same dashboard, with a Site column, in a real browser.
        if round == "first" {
            if let Some((kit, chromium)) = crate::browser::browser_kit() {
                let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fleet.png");
                let url = format!("http://{api}");
                let report = crate::browser::run_script(
                    &kit,
                    &chromium,
                    "fleet.mjs",
                    &[url.as_ref(), shot.as_ref()],
                );
                assert_eq!(report["sites"], serde_json::json!(["north", "south"]));
            }
        }
        fleet.term();
    }
    for (_, _, d, _) in sites {
        d.term();
    }
}
