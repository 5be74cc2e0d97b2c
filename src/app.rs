//! Wiring: build every actor, hand each its `Recipient`s, bind the API, then run the
//! watchdog and wait for a signal. No registries, no globals.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use chrono::{DateTime, Utc};

use crate::alerts::actor::{AlertRaised, AlertSinkActor};
use crate::api::{ApiState, HealthRound};
use crate::client::FhirClient;
use crate::config::{read_secret, Config};
use crate::detector::actor::{DetectorActor, DetectorLinks, SnapshotsWritten};
use crate::health::{ActorId, Health, Heartbeat};
use crate::poller::actor::{IsPolling, PollerActor};
use crate::state::actor::{Flush, SeenFilterActor, StateActor};
use crate::systemd::Notifier;
use fhir_edge_core::clock::SharedClock;
use fhir_edge_core::detector::baselines;
use fhir_edge_core::detector::model::Model;
use fhir_edge_core::detector::Detector;
use fhir_edge_core::state::Store;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    State(#[from] fhir_edge_core::state::StateError),
    #[error(transparent)]
    Model(#[from] fhir_edge_core::detector::model::ModelError),
    #[error("FHIR client: {0}")]
    Client(#[from] crate::client::FetchError),
    #[error("api.token_file: {0}")]
    Token(#[source] crate::config::SecretError),
    #[error("detector.watch_list: {path}: {source}")]
    WatchList {
        path: std::path::PathBuf,
        #[source]
        source: fhir_edge_core::detector::WatchListError,
    },
    #[error("cannot listen on {addr} (api.listen): {reason}")]
    Bind { addr: SocketAddr, reason: String },
    #[error("detector.model_dir: {0}")]
    Baselines(#[from] fhir_edge_core::detector::baselines::BaselinesError),
    #[error("context.key_file: {0}")]
    Care(#[from] fhir_edge_core::care::CareError),
    #[error("export: {0}")]
    Export(String),
}

impl StartError {
    pub fn kind(&self) -> &'static str {
        match self {
            StartError::State(e) => e.kind(),
            StartError::Model(e) => e.kind(),
            StartError::Client(e) => e.kind(),
            StartError::Token(_) => "api_token",
            StartError::WatchList { .. } => "watch_list",
            StartError::Bind { .. } => "api_bind",
            StartError::Baselines(e) => e.kind(),
            StartError::Care(e) => e.kind(),
            StartError::Export(_) => "export_setup",
        }
    }
}

pub struct RunOptions {
    /// `--since`: start the first poll here instead of the stored cursor (backfill).
    pub since: Option<DateTime<Utc>>,
    pub clock: SharedClock,
    pub notifier: Notifier,
}

/// A running daemon inside the current actix System.
pub struct Daemon {
    pub api_addr: SocketAddr,
    pub health: Health,
    stop: Arc<AtomicBool>,
    server: actix_web::dev::ServerHandle,
    poller: Addr<PollerActor>,
    detector: Addr<DetectorActor>,
    state: Addr<StateActor>,
    notifier: Notifier,
    watchdog: tokio::task::JoinHandle<()>,
}

/// Say in the journal where the detector's history comes from.
fn say_origin(origin: &crate::detector::Origin, had_snapshot: bool) {
    use crate::detector::{FreshReason, Origin};
    if had_snapshot && *origin != Origin::Own {
        tracing::warn!(
            actor = "detector",
            error_kind = "snapshot_unreadable",
            "the detector snapshot in the state is unreadable; it is not used"
        );
    }
    match origin {
        Origin::Own => {}
        Origin::Model { mark_ms } => tracing::info!(
            actor = "detector",
            baselines_until = %fhir_edge_core::clock::fmt_ms(fhir_edge_core::clock::from_ms(*mark_ms)),
            "starting from the model's baselines: events up to their mark were learned in training \
             and are passed over, not scored again"
        ),
        Origin::Fresh(FreshReason::NoBaselines) => tracing::warn!(
            actor = "detector",
            "the model carries no baselines: every user and patient starts new, so the first \
             weeks alert more; train it on this site (`fhir-edge train --from-server`) to start warm"
        ),
        Origin::Fresh(FreshReason::OtherServer { learned_from }) => tracing::warn!(
            actor = "detector",
            learned_from = %learned_from,
            "the model's baselines were learned from another server than fhir.base_url: they \
             are not used and every user starts new; retrain with `fhir-edge train --from-server` \
             against this server to start warm"
        ),
    }
}

/// Open the care context at start: the per-install key (made at the first start), the
/// stored facts (forgotten when they were tagged with another key), the cursors; `None`
/// when `[context] enabled = false`.
fn care_start(
    cfg: &crate::config::Config,
    store: &mut fhir_edge_core::state::Store,
) -> Result<Option<crate::context::CareStart>, StartError> {
    use fhir_edge_core::care::CareKey;
    if !cfg.context.enabled {
        return Ok(None);
    }
    let path = cfg.care_key_file();
    let key = CareKey::load_or_create(&path)?;
    if store.check_care_key(key.fingerprint())? {
        tracing::warn!(
            actor = "context",
            key_file = %path.display(),
            "the care key is not the one the stored care context was tagged with: it is read anew from the server"
        );
    }
    let facts = store.care_facts()?;
    let mut cursors = std::collections::HashMap::new();
    for t in cfg.context.types() {
        cursors.insert(t, store.care_cursor(t)?);
    }
    Ok(Some(crate::context::CareStart {
        key,
        facts,
        cursors,
    }))
}

/// Build and start everything. Returns once the state is open, the model loaded and the
/// API bound — the moment to send `READY=1`.
pub async fn start(cfg: Config, opts: RunOptions) -> Result<Daemon, StartError> {
    let clock = opts.clock.clone();
    let health = Health::new(clock.clone());
    health.set_step_deadline(
        ActorId::Poller,
        Duration::from_secs(cfg.fhir.timeout_secs + 10),
    );
    health.set_step_deadline(ActorId::Detector, Duration::from_secs(60));
    health.set_step_deadline(ActorId::AlertSink, Duration::from_secs(60));
    health.set_step_deadline(ActorId::State, Duration::from_secs(45));
    health.set_step_deadline(
        ActorId::Context,
        Duration::from_secs(cfg.fhir.timeout_secs + 60),
    );

    let state_dir = cfg.state_dir();
    let mut store = Store::open(&state_dir)?;
    store.set_case_rule(cfg.alerts.case_rule());
    store.set_export(crate::export::setup(&cfg));
    let loaded = store.load()?;
    let unjournaled = store.unjournaled()?;
    let unjournaled_cases = store.unjournaled_cases()?;
    let rules = store.allowlist()?;
    let care = care_start(&cfg, &mut store)?;
    let fresh = loaded.cursor_ms.is_none() && loaded.snapshot.is_none();
    if fresh && cfg.detector.learn_days > 0 && !baselines::present(&site_model_dir(&cfg)) {
        let now_ms = clock.now().timestamp_millis();
        first_start_from_history(&cfg, now_ms, &opts.notifier).await;
    }
    let own_model = own_model_dir(&cfg);
    let model_dir = site_model_dir(&cfg);
    let learning = !baselines::present(&model_dir);
    let model = Model::load(&model_dir)?;
    let model_uses_care = model.meta.training.care_context;
    let tz = cfg.timezone();
    let watch = match &cfg.detector.watch_list {
        // Checked by `validate`; read again here, as the file may have changed since.
        Some(p) => fhir_edge_core::detector::read_watch_list(p).map_err(|source| {
            StartError::WatchList {
                path: p.clone(),
                source,
            }
        })?,
        None => Vec::new(),
    };
    let base_url = crate::client::redact_url(&cfg.fhir.base_url);
    let start = crate::detector::starting_context(
        loaded.snapshot.as_deref(),
        loaded.cursor_ms,
        &model_dir,
        tz,
        &base_url,
        clock.now().timestamp_millis(),
    )?;
    let learning_since = match learning {
        true => {
            let since = store.learning_since(clock.now().timestamp_millis())?;
            let note = crate::learn::learning_note(since, cfg.detector.learn_days);
            tracing::warn!(actor = "detector", model = %model_dir.display(), "{note}");
            health.set_learning(Some(note));
            Some(since)
        }
        false => None,
    };
    let mut ctx = start.ctx;
    say_origin(&start.origin, loaded.snapshot.is_some());
    if let Some(cut) = start.read_back_cut_ms {
        tracing::warn!(
            actor = "detector",
            read_from = %fhir_edge_core::clock::fmt_ms(fhir_edge_core::clock::from_ms(cut)),
            read_back_days = crate::detector::FILE_MARK_READ_BACK_DAYS,
            "the model was trained from files up to a mark further back than the daemon reads \
             the server at a first start: events recorded between the mark and read_from are \
             neither learned nor scored; train a model on newer events to cover them"
        );
    }
    if let crate::detector::Origin::Model { mark_ms } = start.origin {
        store.note_baselines(mark_ms, clock.now().timestamp_millis())?;
    }
    ctx.set_watch_list(watch.iter().map(String::as_str));
    let client = FhirClient::new(&cfg.fhir, cfg.poller.max_page_bytes)?;
    let token = cfg
        .api
        .token_file
        .as_deref()
        .map(|p| read_secret(p).map(Arc::new))
        .transpose()
        .map_err(StartError::Token)?;
    let cursor = start.cursor_ms.map(fhir_edge_core::clock::from_ms);
    let replay_until = loaded.replay_until_ms.map(fhir_edge_core::clock::from_ms);
    if let Some(c) = start.cursor_ms {
        health.counters.cursor_ms.store(c, Ordering::Relaxed);
    }
    tracing::info!(
        actor = "app",
        state = %store.path().display(),
        model = %model_dir.display(),
        cursor = cursor.map(fhir_edge_core::clock::fmt_ms).unwrap_or_else(|| "none (first run)".into()),
        events_scored_lifetime = loaded.events_scored,
        users_known = ctx.users(),
        watched_records = watch.len(),
        "starting"
    );

    // State: its own thread; seen-key lookups on a second, read-only connection and thread.
    let reader_cell = Mutex::new(Some(store.seen_reader()?));
    let h = health.clone();
    let seen_filter = SyncArbiter::start(1, move || {
        let reader = crate::sync::lock(&reader_cell)
            .take()
            .expect("seen filter actor is created once");
        SeenFilterActor::new(reader, h.clone())
    });
    let store_cell = Mutex::new(Some(store));
    let (h, c) = (health.clone(), clock.clone());
    let state = SyncArbiter::start(1, move || {
        let store = crate::sync::lock(&store_cell)
            .take()
            .expect("state actor is created once");
        StateActor::new(store, h.clone(), c.clone())
    });

    let seen_counts = seen_filter.clone().recipient();
    let sink = {
        let (st, h) = (state.clone(), health.clone());
        Supervisor::start(move |_| {
            AlertSinkActor::new(st.clone().recipient(), st.recipient(), rules, h)
        })
    };
    let detector = {
        let d = match start.pass_over {
            Some(rule) => Detector::new(model, ctx).with_pass_over(rule),
            None => Detector::new(model, ctx),
        }
        .learning(learning);
        let (st, sk, h) = (state.clone(), sink.clone(), health.clone());
        let (overlap, retention) = (cfg.poller.overlap_secs, cfg.alerts.retention_days);
        let snapshots = crate::detector::SnapshotPlan {
            every: Duration::from_secs(cfg.poller.checkpoint_secs),
            dir: state_dir.clone(),
        };
        Supervisor::start(move |_| {
            DetectorActor::new(
                d,
                DetectorLinks {
                    state_filter: seen_filter.recipient(),
                    state_commit: st.clone().recipient(),
                    state_point: st.clone().recipient(),
                    state_poll: st.recipient(),
                    sink: sk.clone().recipient(),
                    flush: sk.recipient(),
                },
                h,
                overlap,
                retention,
                snapshots.clone(),
            )
        })
    };
    if let Some(since) = learning_since {
        let (c, h, d, out) = (cfg.clone(), health.clone(), detector.clone(), own_model);
        let clock = clock.clone();
        crate::learn::actor::SiteTrainerActor::new(
            c,
            since,
            out,
            d.clone().recipient(),
            d.recipient(),
            h,
            clock,
        )
        .start();
    }
    let stop = Arc::new(AtomicBool::new(false));
    // The care context the state keeps, in use before the first page is scored; then its
    // own actor, polling on its own schedule (following nothing when disabled: the
    // watchdog sees it answer).
    if let Some(c) = care.as_ref().filter(|c| !c.facts.is_empty()) {
        let index = std::sync::Arc::new(c.facts.index(c.key.clone()));
        if let Err(e) = detector.send(crate::pipeline::UseCare(index)).await {
            tracing::warn!(
                actor = "context",
                "the detector did not take the care context: {e}"
            );
        }
    }
    // A model trained with the care context and none stored yet (the first start after
    // `train --from-server`): the first poll waits for the context's first read, so that
    // no event is scored as if the site had no relationships, roles or relatives.
    let (first_read, hold) = match care.as_ref() {
        Some(c) if model_uses_care && c.facts.is_empty() => {
            let (done, ready) = tokio::sync::watch::channel(false);
            (Some(done), Some(ready))
        }
        _ => (None, None),
    };
    let context = {
        let links = crate::context::actor::ContextLinks {
            store: state.clone().recipient(),
            refuse: state.clone().recipient(),
            detector: detector.clone().recipient(),
        };
        let (h, s, client) = (health.clone(), stop.clone(), client.clone());
        crate::context::actor::ContextActor::new(client, cfg.context.clone(), care, links, h, s)
            .telling_first_read(first_read)
            .start()
    };
    let export = crate::export::actor::ExportActor::new(
        &cfg,
        state.clone().recipient(),
        health.clone(),
        stop.clone(),
    )
    .map_err(|e| StartError::Export(e.to_string()))?
    .start();
    let poller = {
        let (det, h, c, s) = (
            detector.clone(),
            health.clone(),
            clock.clone(),
            stop.clone(),
        );
        let pcfg = cfg.poller.clone();
        let client = client.clone();
        let since = opts.since;
        Supervisor::start(move |_| {
            PollerActor::new(
                client,
                pcfg,
                c,
                h,
                det.clone().recipient(),
                det.recipient(),
                seen_counts,
                crate::poller::actor::Resume {
                    cursor,
                    since,
                    replay_until,
                },
                s,
            )
            .holding_until(hold)
        })
    };
    if !unjournaled.is_empty() || !unjournaled_cases.is_empty() {
        tracing::info!(
            actor = "alert_sink",
            alerts = unjournaled.len(),
            cases = unjournaled_cases.len(),
            "re-emitting alerts and cases stored before a crash but not journaled"
        );
        sink.do_send(AlertRaised {
            alerts: unjournaled,
            cases: unjournaled_cases,
        });
    }

    let round = Arc::new(Mutex::new(HealthRound {
        healthy: true,
        ..Default::default()
    }));
    let api_state = ApiState {
        readers: Arc::new(crate::api::ReaderPool::new(state_dir.clone())),
        health: health.clone(),
        round: round.clone(),
        token,
        clock: clock.clone(),
        started_ms: clock.now().timestamp_millis(),
        detector: detector.clone().recipient(),
        set_status: state.clone().recipient(),
        set_case_status: state.clone().recipient(),
        user_card: detector.clone().recipient(),
        add_rule: state.clone().recipient(),
        remove_rule: state.clone().recipient(),
        backfill: state.clone().recipient(),
        backfilling: Default::default(),
        rules_changed: sink.clone().recipient(),
        exporters: crate::export::configured(&cfg)
            .iter()
            .map(|e| e.as_str())
            .collect(),
    };
    let addr = cfg.api.listen;
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(actix_web::web::Data::new(api_state.clone()))
            .configure(crate::api::configure)
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(5)
    .bind(addr)
    .map_err(|e| StartError::Bind {
        addr,
        reason: e.to_string(),
    })?;
    let api_addr = server.addrs().first().copied().unwrap_or(addr);
    let server = server.run();
    let server_handle = server.handle();
    actix_rt::spawn(server);

    let watchdog = actix_rt::spawn(watchdog_loop(
        opts.notifier,
        health.clone(),
        round,
        [
            (ActorId::Poller, poller.clone().recipient()),
            (ActorId::Detector, detector.clone().recipient()),
            (ActorId::AlertSink, sink.recipient()),
            (ActorId::State, state.clone().recipient()),
            (ActorId::Context, context.recipient()),
            (ActorId::Export, export.recipient()),
        ],
    ));
    tracing::info!(actor = "app", api = %api_addr, fhir = %crate::client::redact_url(&cfg.fhir.base_url), "ready");
    Ok(Daemon {
        api_addr,
        health,
        stop,
        server: server_handle,
        poller,
        detector,
        state,
        notifier: opts.notifier,
        watchdog,
    })
}

/// Every interval: heartbeat every actor; ping the watchdog only if all answered in time,
/// none has a step past its deadline, and the state has not been unwritable for long.
async fn watchdog_loop(
    notifier: Notifier,
    health: Health,
    round: Arc<Mutex<HealthRound>>,
    actors: [(ActorId, Recipient<Heartbeat>); ActorId::ALL.len()],
) {
    let interval = notifier
        .watchdog_interval()
        .unwrap_or(Duration::from_secs(5))
        .max(Duration::from_millis(100));
    let mut degraded_since: Option<std::time::Instant> = None;
    let mut was_healthy = true;
    loop {
        let checks = actors
            .iter()
            .map(|(_, a)| tokio::time::timeout(interval, a.send(Heartbeat)));
        let results = futures_util::future::join_all(checks).await;
        let answered: Vec<ActorId> = actors
            .iter()
            .zip(&results)
            .filter(|(_, r)| matches!(r, Ok(Ok(()))))
            .map(|((id, _), _)| *id)
            .collect();
        let reports = health.reports(&answered);
        let degraded = health.degraded();
        degraded_since = match (&degraded, degraded_since) {
            (Some(_), None) => Some(std::time::Instant::now()),
            (Some(_), s) => s,
            (None, _) => None,
        };
        let stuck_degraded = degraded_since.is_some_and(|s| s.elapsed() > Duration::from_secs(60));
        let healthy = reports.iter().all(|r| r.healthy) && !stuck_degraded;
        if healthy {
            notifier.watchdog();
            if !was_healthy {
                tracing::info!(actor = "app", "every actor is making progress again");
            }
        } else if was_healthy {
            let bad: Vec<&str> = reports
                .iter()
                .filter(|r| !r.healthy)
                .map(|r| r.name.as_str())
                .collect();
            tracing::error!(
                actor = "app",
                error_kind = "stalled",
                stalled = bad.join(",").as_str(),
                degraded = degraded.as_deref().unwrap_or(""),
                "withholding the watchdog ping: not every actor is making progress"
            );
        }
        was_healthy = healthy;
        notifier.status(&health.status_line());
        *crate::sync::lock(&round) = HealthRound {
            healthy,
            reports,
            at: fhir_edge_core::clock::fmt_ms(Utc::now()),
        };
        tokio::time::sleep(interval).await;
    }
}

impl Daemon {
    /// Graceful stop: STOPPING=1, stop polling, let the page in flight commit, close the
    /// API, checkpoint the database. Bounded by `deadline`.
    pub async fn shutdown(self, deadline: Duration) {
        self.notifier
            .stopping("stopping: draining the page in flight");
        tracing::info!(actor = "app", "shutting down");
        self.stop.store(true, Ordering::Relaxed);
        let drain = async {
            while let Ok(true) = self.poller.send(IsPolling).await {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // A snapshot still being written is committed (a restart starts from it).
            let _ = self.detector.send(SnapshotsWritten).await;
        };
        if tokio::time::timeout(deadline, drain).await.is_err() {
            tracing::warn!(
                actor = "app",
                "drain deadline passed; the page in flight will be re-read after restart"
            );
        }
        self.server.stop(true).await;
        if let Ok(Err(e)) = self.state.send(Flush).await {
            tracing::warn!(
                actor = "state",
                error_kind = e.kind(),
                "final checkpoint failed: {e}"
            );
        }
        self.watchdog.abort();
        tracing::info!(actor = "app", status = %self.health.status_line(), "stopped");
    }
}

/// Wait for SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!(actor = "app", "SIGTERM received"),
        _ = int.recv() => tracing::info!(actor = "app", "SIGINT received"),
    }
}

/// `fhir-edge run`: the daemon until a signal.
pub fn run(cfg: Config, opts: RunOptions) -> anyhow::Result<()> {
    let notifier = opts.notifier;
    let sys = actix_rt::System::new();
    sys.block_on(async move {
        let daemon = match start(cfg, opts).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(actor = "app", error_kind = e.kind(), "cannot start: {e}");
                notifier.status(&format!("failed to start: {e}"));
                return Err(anyhow::Error::new(e));
            }
        };
        notifier.ready(&format!("ready; API on {}", daemon.api_addr));
        wait_for_signal().await;
        daemon.shutdown(Duration::from_secs(20)).await;
        System::current().stop();
        Ok(())
    })
}

/// How much longer each notice to systemd lets a first start's training go on; one is
/// sent every `FIRST_START_TICK`.
const FIRST_START_EXTEND: Duration = Duration::from_secs(60);
const FIRST_START_TICK: Duration = Duration::from_secs(10);

/// A first start (empty state, a model of no site) on a server that may already hold the
/// site's history: the site's model is trained from the history's first `learn_days`
/// before the first poll, on a thread of its own (`learn::train::from_history`), so the
/// daemon starts warm instead of learning for `learn_days`, and its first polls review
/// the rest. systemd is told every ten seconds that the start goes on
/// (and the watchdog pinged: the training is the one piece of work under way, and it
/// ends — the history's reads give up after their retries); the journal says what was
/// found. Too little history, or a server that cannot be read:
/// the daemon learns live, as it would have.
async fn first_start_from_history(cfg: &Config, now_ms: i64, notifier: &Notifier) {
    use crate::learn::train::FirstStart;
    tracing::info!(
        actor = "app",
        window_days = crate::learn::history_window_days(cfg.detector.learn_days),
        learn_days = cfg.detector.learn_days,
        "first start with a model of no site: reading the server's history to train the site's model before the first poll"
    );
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    let (c, out) = (cfg.clone(), own_model_dir(cfg));
    std::thread::spawn(move || {
        let _ = tx.send(crate::learn::train::from_history(&c, now_ms, &out));
    });
    let status = "first start: training the site's model from the server's history";
    let res = loop {
        notifier.extend_start(FIRST_START_EXTEND, status);
        notifier.watchdog();
        tokio::select! {
            r = &mut rx => break r,
            _ = tokio::time::sleep(FIRST_START_TICK) => {}
        }
    };
    match res {
        Ok(Ok(FirstStart::Trained {
            learned,
            review,
            days,
            until,
        })) => tracing::info!(
            actor = "app",
            events_learned = learned,
            events_to_review = review,
            days = format!("{days:.1}"),
            learned_until = %fhir_edge_core::clock::fmt_ms(until),
            "trained the site's model from the server's history: starting warm from it; \
             what was recorded after its first detector.learn_days is reviewed now, as if the \
             daemon had followed the server since"
        ),
        Ok(Ok(FirstStart::TooLittle { events, days })) => tracing::info!(
            actor = "app",
            events,
            days = format!("{days:.1}"),
            learn_days = cfg.detector.learn_days,
            "the server's history covers fewer days than detector.learn_days: learning live"
        ),
        Ok(Err(e)) => tracing::warn!(
            actor = "app",
            error_kind = "first_start_training_failed",
            "could not train the site's model from the server's history, learning live: {e:#}"
        ),
        Err(_) => tracing::warn!(
            actor = "app",
            error_kind = "first_start_training_failed",
            "the first start's training thread stopped, learning live"
        ),
    }
}

/// The model the daemon runs: the configured one when it was trained on this site (it
/// carries baselines), else one the daemon trained itself at the end of learning (the
/// state directory's `model`), else the configured one while learning (see `learn`).
pub(crate) fn site_model_dir(cfg: &Config) -> std::path::PathBuf {
    let own_model = own_model_dir(cfg);
    match baselines::present(&cfg.detector.model_dir) {
        false
            if own_model
                .join(fhir_edge_core::detector::model::META_FILE)
                .is_file() =>
        {
            own_model
        }
        _ => cfg.detector.model_dir.clone(),
    }
}

/// Where the daemon keeps the model it trains at the end of learning.
fn own_model_dir(cfg: &Config) -> std::path::PathBuf {
    cfg.state_dir().join("model")
}
