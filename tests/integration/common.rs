//! Shared helpers: a tiny model, simulated events, an embedded server, an in-process daemon.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use fhir_edge::config::Config;
use fhir_edge::health::Counter;
use fhir_edge::health::Health;
use fhir_edge_core::clock::SystemClock;
use fhir_edge_lab::server::FhirStore;

/// A tiny model trained once per test run on a small simulated hospital. It carries
/// (empty) baselines, so daemons take it for their site's model and do not start in
/// learning mode; their context starts empty and nothing is passed over.
pub fn tiny_model() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| train_tiny("fhir-edge-tiny-model", false))
}

/// A tiny model trained with the simulated hospital's care context (its care signals in
/// use).
pub fn tiny_care_model() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| train_tiny("fhir-edge-tiny-care-model", true))
}

fn train_tiny(prefix: &str, care: bool) -> PathBuf {
    {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .unwrap()
            .keep();
        let mut o = fhir_edge_lab::simulate::SimOptions::new(4, 7);
        o.users = 30;
        o.patients = 300;
        o.anomalies_from_day = 99;
        let events = fhir_edge_lab::simulate::simulate(&o);
        let records: Vec<_> = events
            .iter()
            .map(|e| fhir_edge_core::fhir::parse_audit_event(e.raw()).unwrap())
            .collect();
        let mut ctx = fhir_edge_core::detector::features::Context::new(chrono_tz::UTC);
        if care {
            use fhir_edge_core::care;
            let key = care::CareKey::ephemeral().unwrap();
            let mut set = care::FactSet::default();
            for r in fhir_edge_lab::simulate::context_resources(&o) {
                care::resources::read(&r, &key)
                    .into_iter()
                    .for_each(|f| set.upsert(f));
            }
            ctx.set_care(Some(Arc::new(set.index(key))));
        }
        let rows = fhir_edge_core::detector::train::feature_rows(&mut ctx, &records);
        let opts = fhir_edge_core::detector::model::TrainOptions {
            epochs: 3,
            ..Default::default()
        };
        let mut m =
            fhir_edge_core::detector::model::train(&rows, &opts, vec!["tiny".into()], |_, _| {})
                .unwrap();
        m.meta.training.care_context = care;
        m.save(&dir).unwrap();
        as_sites_model(&dir);
        dir
    }
}

/// Give a model folder empty baselines, so a daemon takes it for its site's model (no
/// learning mode) and starts with an empty context, passing nothing over.
fn as_sites_model(dir: &Path) {
    let tz = chrono_tz::UTC;
    let mark = fhir_edge_core::detector::baselines::Mark::at_end_of(&[], tz, None, "-".into());
    let empty = fhir_edge_core::detector::features::Context::new(tz);
    fhir_edge_core::detector::baselines::save(dir, &mark, &empty).unwrap();
}

/// The shipped default model as if it were the site's: its files and (empty) baselines,
/// so a daemon does not start in learning mode (tests that compare alerts need them).
pub fn default_model_as_sites() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("fhir-edge-default-as-site")
            .tempdir()
            .unwrap()
            .keep();
        fhir_edge_lab::write_default_model(&dir).unwrap();
        as_sites_model(&dir);
        dir
    })
}

/// `n` simulated AuditEvents (JSON) with ids `{prefix}-{i}`, recorded over the last day.
pub fn events(n: usize, prefix: &str, seed: u64) -> Vec<serde_json::Value> {
    let mut o = fhir_edge_lab::simulate::SimOptions::new(3, seed);
    o.users = 30;
    o.patients = 300;
    o.anomalies_from_day = 1;
    let sim = fhir_edge_lab::simulate::simulate(&o);
    assert!(sim.len() >= n, "simulation too small: {}", sim.len());
    sim.into_iter()
        .take(n)
        .enumerate()
        .map(|(i, e)| {
            let mut j = e.json();
            j["id"] = format!("{prefix}-{i}").into();
            j
        })
        .collect()
}

/// Give events lastUpdated values: groups of `tie` share a timestamp, starting at `start`.
pub fn stamp(events: &mut [serde_json::Value], start: DateTime<Utc>, tie: usize) {
    for (i, e) in events.iter_mut().enumerate() {
        let t = start + chrono::Duration::milliseconds((i / tie.max(1)) as i64 * 10);
        e["meta"] =
            serde_json::json!({"versionId": "1", "lastUpdated": fhir_edge_core::clock::fmt_ms(t)});
    }
}

pub struct Server {
    pub store: FhirStore,
    pub base_url: String,
    pub addr: std::net::SocketAddr,
}

pub fn server() -> Server {
    let store = FhirStore::new(Arc::new(SystemClock));
    let addr = fhir_edge_lab::server::spawn_thread(store.clone(), 1);
    Server {
        store,
        base_url: format!("http://{addr}/fhir"),
        addr,
    }
}

/// A server holding `n` events stamped `ago` in the past, `tie` events per `lastUpdated`.
pub fn seeded_server(
    n: usize,
    prefix: &str,
    seed: u64,
    ago: chrono::Duration,
    tie: usize,
) -> Server {
    let s = server();
    let mut evs = events(n, prefix, seed);
    stamp(&mut evs, Utc::now() - ago, tie);
    s.store.insert_raw(evs);
    s
}

pub fn config(base_url: &str, state_dir: &Path) -> Config {
    let mut c = Config::for_server(base_url, state_dir);
    c.detector.model_dir = tiny_model().to_path_buf();
    c.poller.interval_secs = 1;
    // Every poll re-reads the whole overlap (the strictest setting for de-duplication).
    c.poller.recheck_secs = Some(0);
    // Read, not counted (`recheck_by_count`; its own tests in `pipeline.rs` turn it on).
    c.poller.recheck_by_count = false;
    c.poller.page_size = 50;
    c.poller.initial_lookback_secs = 7 * 86_400;
    c.poller.max_backoff_secs = 2;
    c.fhir.timeout_secs = 5;
    c.api.listen = "127.0.0.1:0".parse().unwrap();
    c
}

/// The real daemon, in-process on its own thread and actix System.
pub struct TestDaemon {
    pub health: Health,
    pub api: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestDaemon {
    pub fn start(cfg: Config) -> TestDaemon {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let sys = actix_rt::System::new();
            sys.block_on(async move {
                let opts = fhir_edge::app::RunOptions {
                    since: None,
                    clock: Arc::new(SystemClock),
                    notifier: fhir_edge::systemd::Notifier::from_env(),
                };
                let d = fhir_edge::app::start(cfg, opts)
                    .await
                    .expect("daemon starts");
                tx.send((d.health.clone(), d.api_addr)).unwrap();
                let _ = stop_rx.await;
                d.shutdown(Duration::from_secs(10)).await;
            });
        });
        let (health, api) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("daemon started");
        TestDaemon {
            health,
            api,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }

    pub fn counter(&self, c: fhir_edge::health::Counter) -> u64 {
        self.health.counters.get(c)
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        self.shutdown();
    }
}

pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The durable status of the state in `dir`, or an empty one before the database exists.
pub fn status(dir: &Path) -> fhir_edge_core::state::StatusReport {
    fhir_edge_core::state::Reader::open(dir)
        .and_then(|r| r.status())
        .unwrap_or_default()
}

/// Events this daemon process ran through the model.
pub fn scored(d: &TestDaemon) -> u64 {
    d.counter(Counter::EventsModelScored)
}

/// Complete polls of this daemon process.
pub fn polls(d: &TestDaemon) -> u64 {
    d.counter(Counter::PollsCompleted)
}

/// Create `n` events on the server now (server-assigned lastUpdated), as arriving traffic.
pub fn arrive(s: &Server, n: usize, prefix: &str, seed: u64) {
    for e in events(n, prefix, seed) {
        s.store.create(e);
    }
}

/// Every event key in the seen table.
pub fn seen_keys(dir: &Path) -> Vec<String> {
    let c = rusqlite::Connection::open(dir.join("fhir-edge.db")).unwrap();
    let mut st = c.prepare("SELECT key FROM seen ORDER BY key").unwrap();
    st.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// A TCP forwarder in front of a server that can be taken down (connections refused and
/// open ones cut) and brought back on the same port: a FHIR server outage.
pub struct Proxy {
    pub addr: std::net::SocketAddr,
    target: std::net::SocketAddr,
    up: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    pub fn start(target: std::net::SocketAddr) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut p = Proxy {
            addr: listener.local_addr().unwrap(),
            target,
            up: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            conns: Arc::default(),
            accept: None,
        };
        p.serve(listener);
        p
    }

    /// `base_url` with its host:port replaced by the proxy's.
    pub fn url_for(&self, base_url: &str) -> String {
        base_url.replace(&self.target.to_string(), &self.addr.to_string())
    }

    fn serve(&mut self, listener: std::net::TcpListener) {
        use std::sync::atomic::Ordering;
        listener.set_nonblocking(true).unwrap();
        let up = self.up.clone();
        let conns = self.conns.clone();
        let target = self.target;
        self.accept = Some(std::thread::spawn(move || {
            while up.load(Ordering::SeqCst) {
                let (client, _) = match listener.accept() {
                    Ok(c) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                client.set_nonblocking(false).unwrap();
                let Ok(server) = std::net::TcpStream::connect(target) else {
                    continue;
                };
                {
                    let mut c = conns.lock().unwrap();
                    c.push(client.try_clone().unwrap());
                    c.push(server.try_clone().unwrap());
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
            // Dropping the listener: new connections are refused.
        }));
    }

    /// Refuse new connections and cut the open ones.
    pub fn down(&mut self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            t.join().unwrap();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Accept again, on the same port.
    pub fn up(&mut self) {
        if self.accept.is_some() {
            return;
        }
        let listener = std::net::TcpListener::bind(self.addr).expect("rebind the proxy port");
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
        self.serve(listener);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.down();
    }
}
