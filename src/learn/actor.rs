//! `SiteTrainerActor`: checks the learning clock every few minutes; when learning is due
//! to end, asks the detector to keep what it folds in from then on, trains the site's
//! model on a thread of its own (reading the server's history as `train --from-server`
//! does, then training), writes it to `<state dir>/model`, and asks the detector to switch
//! to it and to its baselines (`detector::handover` in the core). A failed training is
//! logged, counted and tried again `RETRY_MS` later (the detector drops what it kept);
//! learning goes on meanwhile.

use std::path::PathBuf;
use std::time::Duration;

use actix::prelude::*;

use super::{tick_learning, Tick, RETRY_MS};
use crate::config::Config;
use crate::detector::actor::{KeepForHandover, UseSiteModel};
use crate::health::{Counter, Health};
use fhir_edge_core::clock::SharedClock;
use fhir_edge_core::detector::handover::SiteBaselines;
use fhir_edge_core::detector::model::Model;

/// How often the learning clock is checked.
const CHECK: Duration = Duration::from_secs(300);

pub struct SiteTrainerActor {
    cfg: Config,
    since_ms: i64,
    out: PathBuf,
    detector: Recipient<UseSiteModel>,
    keep: Recipient<KeepForHandover>,
    health: Health,
    clock: SharedClock,
    retry_at_ms: Option<i64>,
    running: bool,
    done: bool,
}

impl SiteTrainerActor {
    pub fn new(
        cfg: Config,
        since_ms: i64,
        out: PathBuf,
        detector: Recipient<UseSiteModel>,
        keep: Recipient<KeepForHandover>,
        health: Health,
        clock: SharedClock,
    ) -> Self {
        SiteTrainerActor {
            cfg,
            since_ms,
            out,
            detector,
            keep,
            health,
            clock,
            retry_at_ms: None,
            running: false,
            done: false,
        }
    }

    fn check(&mut self, ctx: &mut Context<Self>) {
        if self.running || self.done {
            return;
        }
        let now = self.clock.now().timestamp_millis();
        let since_ms = match tick_learning(
            now,
            self.since_ms,
            self.cfg.detector.learn_days,
            self.retry_at_ms,
        ) {
            Tick::Train { since_ms } => since_ms,
            Tick::Wait { .. } | Tick::Never => return,
        };
        self.running = true;
        tracing::info!(
            actor = "site_trainer",
            since = %fhir_edge_core::clock::fmt_ms(fhir_edge_core::clock::from_ms(since_ms)),
            "learning is due to end: training the site's model from the server's history"
        );
        let (cfg, out, keep) = (self.cfg.clone(), self.out.clone(), self.keep.clone());
        let trained = async move {
            // Before the history is read: what the detector folds in from here on is what
            // the baselines may not have learned.
            keep.send(KeepForHandover(true))
                .await
                .map_err(|_| anyhow::anyhow!("the detector stopped"))?;
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                let _ = tx.send(train_site(&cfg, since_ms, &out));
            });
            rx.await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the training thread stopped")))
        };
        ctx.spawn(trained.into_actor(self).then(|res, act, _| {
            act.running = false;
            let model = match res {
                Ok(m) => Some(m),
                Err(e) => {
                    let now = act.clock.now().timestamp_millis();
                    act.retry_at_ms = Some(now + RETRY_MS);
                    act.health.counters.add(Counter::SiteTrainingErrors, 1);
                    tracing::error!(
                        actor = "site_trainer",
                        error_kind = "site_training_failed",
                        retry_in_hours = RETRY_MS / 3_600_000,
                        "training the site's model failed, learning goes on: {e:#}"
                    );
                    None
                }
            };
            let (detector, keep) = (act.detector.clone(), act.keep.clone());
            let health = act.health.clone();
            act.done = model.is_some();
            async move {
                match model {
                    Some((model, site)) => {
                        if detector.send(UseSiteModel { model, site }).await.is_ok() {
                            health.counters.add(Counter::SiteModelsTrained, 1);
                        }
                    }
                    None => {
                        let _ = keep.send(KeepForHandover(false)).await;
                    }
                }
            }
            .into_actor(act)
        }));
    }
}

/// Train the site's model from the server's history since `since_ms`, with the care
/// context the daemon followed, into `out`, and load it with its baselines (`None`, said,
/// when they cannot be read back: the detector keeps the context it followed).
fn train_site(
    cfg: &Config,
    since_ms: i64,
    out: &std::path::Path,
) -> anyhow::Result<(Model, Option<SiteBaselines>)> {
    let since = fhir_edge_core::clock::from_ms(since_ms);
    let records = crate::training::server_history(cfg, since, Some(super::HISTORY_MAX_EVENTS))?;
    let complete = !crate::client::history_cut(records.len(), super::HISTORY_MAX_EVENTS);
    let model =
        super::train::site_model(cfg, records, None, crate::training::followed_care(cfg), out)?;
    let site = match fhir_edge_core::detector::baselines::load(out, cfg.timezone()) {
        Ok(b) => b.map(|baselines| SiteBaselines {
            baselines,
            complete,
        }),
        Err(e) => {
            tracing::warn!(
                actor = "site_trainer",
                error_kind = e.kind(),
                "the site model's baselines cannot be read back: {e}"
            );
            None
        }
    };
    Ok((model, site))
}

impl Actor for SiteTrainerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.check(ctx);
        ctx.run_interval(CHECK, |act, ctx| act.check(ctx));
    }
}
