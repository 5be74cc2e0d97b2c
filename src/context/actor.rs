//! `ContextActor`: one round over the followed types every `[context] interval_secs`, the
//! next scheduled with `notify_later` once a round completes. Pages are fetched and read
//! off the actor thread; their facts go to the `StateActor` (`StoreCare`, awaited:
//! backpressure), the rebuilt index to the `DetectorActor` (`UseCare`). A failed type is
//! retried next round; a refused one is not asked again until the next start. A panic
//! aborts the process and systemd restarts it; the cursors are in the state database.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;

use crate::client::{FetchError, FhirClient};
use crate::config::ContextConfig;
use crate::context::{
    CareStart, ContextTypeFailed, ContextTypeRead, ContextTypeRefused, ContextUpdated, PageError,
    TypePages,
};
use crate::health::{ActorId, Health, Heartbeat};
use crate::pipeline::{PipelineError, RefuseCareType, StoreCare, UseCare};
use crate::telemetry::InternalEvent;
use fhir_edge_core::care::{CareKey, FactSet};

/// Re-read this much before a type's cursor (a resource committed late with an earlier
/// `lastUpdated`); reading a resource twice changes nothing.
const OVERLAP_MS: i64 = 5 * 60_000;

pub(crate) struct ContextActor {
    client: FhirClient,
    cfg: ContextConfig,
    /// None: the context is not followed (`[context] enabled = false`); the actor only
    /// answers the watchdog.
    key: Option<CareKey>,
    facts: Arc<Mutex<FactSet>>,
    cursors: HashMap<&'static str, Option<i64>>,
    refused: HashSet<&'static str>,
    links: ContextLinks,
    health: Health,
    stop: Arc<AtomicBool>,
    /// Told true when the first round has ended, whatever each type's outcome (see
    /// [`ContextActor::telling_first_read`]).
    first_read: Option<tokio::sync::watch::Sender<bool>>,
}

/// Where the context actor sends what it read.
#[derive(Clone)]
pub(crate) struct ContextLinks {
    pub store: Recipient<StoreCare>,
    pub refuse: Recipient<RefuseCareType>,
    pub detector: Recipient<UseCare>,
}

impl ContextActor {
    pub(crate) fn new(
        client: FhirClient,
        cfg: ContextConfig,
        start: Option<CareStart>,
        links: ContextLinks,
        health: Health,
        stop: Arc<AtomicBool>,
    ) -> Self {
        let (key, facts, cursors) = match start {
            Some(s) => (Some(s.key), s.facts, s.cursors),
            None => (None, FactSet::default(), HashMap::new()),
        };
        ContextActor {
            client,
            cfg,
            key,
            facts: Arc::new(Mutex::new(facts)),
            cursors,
            refused: HashSet::new(),
            links,
            health,
            stop,
            first_read: None,
        }
    }

    /// Tell `done` true once the first round has ended (its index, if any, sent to the
    /// detector): what the poller waits for when the model needs the context.
    pub(crate) fn telling_first_read(
        mut self,
        done: Option<tokio::sync::watch::Sender<bool>>,
    ) -> Self {
        self.first_read = done;
        self
    }
}

/// Request (internal): go over the followed types once.
#[derive(Message)]
#[rtype(result = "()")]
struct Round;

impl Actor for ContextActor {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        match self.key {
            Some(_) => ctx.notify(Round),
            // Nothing to read: whoever waits for a first read does not wait.
            None => self.first_read = None,
        }
    }
}

/// How reading one type ended.
enum TypeOutcome {
    Read {
        pages: usize,
        resources: usize,
        /// Resources new or changed since the last read (the rest were re-read).
        changed: usize,
        /// Stopped at `MAX_PAGES_PER_ROUND`: the rest next round.
        capped: bool,
        newest: Option<i64>,
    },
    Refused(String),
    /// Reading or storing failed: retried next round from the committed cursor.
    Failed {
        storing: bool,
        kind: &'static str,
        error: String,
    },
}

impl TypeOutcome {
    fn reading(e: FetchError) -> Self {
        TypeOutcome::Failed {
            storing: false,
            kind: e.kind(),
            error: e.to_string(),
        }
    }
    fn storing(e: PipelineError) -> Self {
        TypeOutcome::Failed {
            storing: true,
            kind: e.kind(),
            error: e.to_string(),
        }
    }
}

/// What reading a type needs besides the type and its cursor.
struct Reading<'a> {
    client: &'a FhirClient,
    key: &'a CareKey,
    facts: &'a Arc<Mutex<FactSet>>,
    store: &'a Recipient<StoreCare>,
    health: &'a Health,
    page_size: u32,
}

/// Read `ty` from `cursor` on: every page's facts stored as it comes, the cursor moved at
/// the end.
async fn read_type(r: &Reading<'_>, ty: &'static str, cursor: Option<i64>) -> TypeOutcome {
    let Reading {
        client,
        key,
        facts,
        store,
        health,
        page_size,
    } = *r;
    let since = fhir_edge_core::clock::from_ms(cursor.map_or(0, |c| (c - OVERLAP_MS).max(0)));
    let mut paging = TypePages::new(client, key, ty, since, page_size);
    let (mut resources, mut newest, mut changed) = (0, cursor, 0);
    let mut capped = false;
    loop {
        if paging.has_more() && paging.pages() >= crate::context::MAX_PAGES_PER_ROUND {
            capped = true;
            break;
        }
        // Each page is a step of its own for the watchdog.
        health.begin_step(ActorId::Context);
        let page = match paging.next().await {
            Ok(Some(page)) => page,
            Ok(None) => break,
            Err(PageError::Refused(why)) => return TypeOutcome::Refused(why),
            Err(PageError::Fetch(e)) => return TypeOutcome::reading(e),
        };
        resources += page.resources;
        newest = match (newest, page.newest_ms) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        // Only what is new or changed is written (the overlap re-reads the same resources
        // every round), and kept in memory once it is stored.
        let fresh: Vec<_> = {
            let set = crate::sync::lock(facts);
            page.facts.into_iter().filter(|f| set.changes(f)).collect()
        };
        if !fresh.is_empty() {
            let stored = store
                .send(StoreCare {
                    resource_type: ty,
                    facts: fresh.clone(),
                    cursor_ms: None,
                })
                .await;
            if let Err(e) = stored.map_err(PipelineError::from).and_then(|r| r) {
                return TypeOutcome::storing(e);
            }
            changed += fresh.len();
            let mut set = crate::sync::lock(facts);
            fresh.into_iter().for_each(|f| set.upsert(f));
        }
    }
    let pages = paging.pages();
    let moved = store
        .send(StoreCare {
            resource_type: ty,
            facts: Vec::new(),
            cursor_ms: newest,
        })
        .await;
    match moved.map_err(PipelineError::from).and_then(|r| r) {
        Ok(()) => TypeOutcome::Read {
            pages,
            resources,
            changed,
            capped,
            newest,
        },
        Err(e) => TypeOutcome::storing(e),
    }
}

impl Handler<Round> for ContextActor {
    type Result = ();

    fn handle(&mut self, _: Round, ctx: &mut Self::Context) {
        let Some(key) = self.key.clone() else {
            return;
        };
        if self.stop.load(Ordering::Relaxed) {
            return;
        }
        let types: Vec<&'static str> = self
            .cfg
            .types()
            .into_iter()
            .filter(|t| !self.refused.contains(t))
            .collect();
        let cursors = self.cursors.clone();
        let (client, facts, links, health) = (
            self.client.clone(),
            self.facts.clone(),
            self.links.clone(),
            self.health.clone(),
        );
        let page_size = self.cfg.page_size;
        let fut = async move {
            health.begin_step(ActorId::Context);
            let mut outcomes = Vec::new();
            for ty in types {
                let reading = Reading {
                    client: &client,
                    key: &key,
                    facts: &facts,
                    store: &links.store,
                    health: &health,
                    page_size,
                };
                let o = read_type(&reading, ty, cursors.get(ty).copied().flatten()).await;
                if let TypeOutcome::Refused(why) = &o {
                    let noted = links
                        .refuse
                        .send(RefuseCareType {
                            resource_type: ty,
                            why: why.clone(),
                        })
                        .await;
                    if let Err(e) = noted.map_err(PipelineError::from).and_then(|r| r) {
                        tracing::warn!(
                            actor = "context",
                            error_kind = e.kind(),
                            "cannot note that {ty} is refused: {e}"
                        );
                    }
                }
                outcomes.push((ty, o));
            }
            let changed = outcomes
                .iter()
                .any(|(_, o)| matches!(o, TypeOutcome::Read { changed, .. } if *changed > 0));
            if changed {
                let (facts, key) = (facts.clone(), key.clone());
                let index =
                    tokio::task::spawn_blocking(move || crate::sync::lock(&facts).index(key)).await;
                if let Ok(index) = index {
                    ContextUpdated(index.counts()).emit(&health);
                    let _ = links.detector.send(UseCare(Arc::new(index))).await;
                }
            }
            health.end_step(ActorId::Context);
            outcomes
        };
        ctx.spawn(fut.into_actor(self).map(|outcomes, act, ctx| {
            for (ty, o) in outcomes {
                match o {
                    TypeOutcome::Read {
                        pages,
                        resources,
                        changed,
                        capped,
                        newest,
                    } => {
                        act.cursors.insert(ty, newest);
                        ContextTypeRead {
                            resource_type: ty,
                            pages,
                            resources,
                            changed,
                            capped,
                        }
                        .emit(&act.health);
                    }
                    TypeOutcome::Refused(why) => {
                        act.refused.insert(ty);
                        ContextTypeRefused {
                            resource_type: ty,
                            why: &why,
                        }
                        .emit(&act.health);
                    }
                    TypeOutcome::Failed {
                        storing,
                        kind,
                        error,
                    } => {
                        ContextTypeFailed {
                            resource_type: ty,
                            storing,
                            kind,
                            error: &error,
                        }
                        .emit(&act.health);
                    }
                }
            }
            if let Some(done) = act.first_read.take() {
                let _ = done.send(true);
            }
            ctx.notify_later(Round, Duration::from_secs(act.cfg.interval_secs));
        }));
    }
}

impl Handler<Heartbeat> for ContextActor {
    type Result = ();
    fn handle(&mut self, _: Heartbeat, _: &mut Self::Context) {
        self.health.progress(ActorId::Context);
    }
}
