//! `ExportActor`: one lane per configured exporter, each stepping on its own schedule
//! (`Step`, the next one scheduled with `notify_later` when a step completes, so the
//! lanes never wait on each other and the mailbox stays free for the watchdog). A step
//! reads a batch of the outbox off the actor thread, sends it, and records what the far
//! side acknowledged (`AckExport` to the `StateActor`, awaited). A failed step backs the
//! lane off (`retry_delay`) and keeps its position; a panic aborts the process, systemd
//! restarts it, and the lanes resume from the positions in the state database.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::nats::NatsSink;
use super::syslog::SyslogSink;
use super::{retry_delay, Delivered, ExportError, ExportFailed, ExportSent, Exporter, Partial};
use crate::config::Config;
use crate::health::{ActorId, Health, Heartbeat};
use crate::state::actor::AckExport;
use crate::telemetry::InternalEvent;
use fhir_edge_core::export::Item;
use fhir_edge_core::state::Reader;

/// Where a lane sends.
enum Sink {
    /// Connected at the first step (and again after a failure).
    Nats(Box<NatsLane>),
    Syslog(SyslogSink),
}

/// What the NATS lane connects with, and its connection while it works.
struct NatsLane {
    cfg: crate::config::NatsExportConfig,
    prefix: String,
    site: String,
    conn: Option<NatsSink>,
}

impl Sink {
    async fn send(&mut self, items: &[Item]) -> Result<Delivered, Partial> {
        match self {
            Sink::Nats(lane) => {
                let sink = match lane.conn.take() {
                    Some(c) => c,
                    None => NatsSink::connect(&lane.cfg, &lane.prefix, &lane.site).await?,
                };
                let res = sink.send(items).await;
                // Kept only while it works; the client also reconnects by itself.
                if res.is_ok() {
                    lane.conn = Some(sink);
                }
                res
            }
            Sink::Syslog(s) => Ok(s.send(items).await?),
        }
    }
}

struct Lane {
    exporter: Exporter,
    sink: Sink,
    /// The last position the far side acknowledged (`None` until read from the state).
    acked: Option<i64>,
    failures: u32,
    /// Its own read-only connection, opened at the first step.
    reader: Option<Reader>,
}

/// How a step ended.
enum Stepped {
    /// Nothing waiting.
    Idle,
    /// A batch acknowledged and recorded; `more`: the batch was full.
    Sent {
        items: usize,
        duplicates: u64,
        more: bool,
    },
    Failed(ExportError),
}

impl Lane {
    /// Read the next batch off the actor thread (the reader travels with it).
    async fn read(&mut self, dir: &Path, batch: u32) -> Result<Vec<Item>, ExportError> {
        let reader = self.reader.take();
        let (dir, exporter, acked) = (dir.to_path_buf(), self.exporter, self.acked);
        let (reader, res) = tokio::task::spawn_blocking(move || {
            let reader = match reader {
                Some(r) => r,
                None => match Reader::open(&dir) {
                    Ok(r) => r,
                    Err(e) => return (None, Err(e)),
                },
            };
            let res = (|| {
                let after = match acked {
                    Some(a) => a,
                    None => reader.export_cursor(exporter.as_str())?,
                };
                Ok((after, reader.outbox_after(after, batch)?))
            })();
            (Some(reader), res)
        })
        .await
        .map_err(|e| ExportError::Setup(format!("outbox read task: {e}")))?;
        self.reader = reader;
        let (after, items) = res?;
        self.acked = Some(after);
        Ok(items)
    }

    async fn step(&mut self, dir: &Path, batch: u32, ack: &Recipient<AckExport>) -> Stepped {
        let items = match self.read(dir, batch).await {
            Ok(items) if items.is_empty() => return Stepped::Idle,
            Ok(items) => items,
            Err(e) => return Stepped::Failed(e),
        };
        let (upto, duplicates, error) = match self.sink.send(&items).await {
            Ok(d) => (Some(d.upto), d.duplicates, None),
            Err(Partial { upto, error }) => (upto, 0, Some(error)),
        };
        if let Some(upto) = upto {
            let recorded = ack
                .send(AckExport {
                    exporter: self.exporter.as_str(),
                    upto,
                })
                .await;
            match recorded {
                Ok(Ok(())) => self.acked = Some(upto),
                Ok(Err(e)) => return Stepped::Failed(ExportError::Ack(e.to_string())),
                Err(e) => return Stepped::Failed(ExportError::Ack(e.to_string())),
            }
        }
        match error {
            Some(e) => Stepped::Failed(e),
            None => Stepped::Sent {
                items: items.len(),
                duplicates,
                more: items.len() as u32 == batch,
            },
        }
    }
}

pub(crate) struct ExportActor {
    /// A lane is taken out while its step runs.
    lanes: Vec<Option<Lane>>,
    state_dir: PathBuf,
    batch: u32,
    ack: Recipient<AckExport>,
    health: Health,
    stop: Arc<AtomicBool>,
}

impl ExportActor {
    /// The lanes of `cfg`'s exporters (none: the actor only answers the watchdog).
    pub(crate) fn new(
        cfg: &Config,
        ack: Recipient<AckExport>,
        health: Health,
        stop: Arc<AtomicBool>,
    ) -> Result<ExportActor, ExportError> {
        let mut lanes = Vec::new();
        for exporter in super::configured(cfg) {
            let sink = match exporter {
                Exporter::Nats => Sink::Nats(Box::new(NatsLane {
                    cfg: cfg.export.nats.clone().expect("configured"),
                    prefix: cfg.nats_subject_prefix().expect("configured"),
                    site: cfg.site_name(),
                    conn: None,
                })),
                Exporter::Syslog => {
                    let syslog = cfg.export.syslog.as_ref().expect("configured");
                    Sink::Syslog(SyslogSink::new(syslog)?)
                }
            };
            lanes.push(Some(Lane {
                exporter,
                sink,
                acked: None,
                failures: 0,
                reader: None,
            }));
        }
        Ok(ExportActor {
            lanes,
            state_dir: cfg.state_dir(),
            batch: cfg.export.batch,
            ack,
            health,
            stop,
        })
    }
}

impl Actor for ExportActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // A step may wait for a connection and every acknowledgement of a batch.
        self.health
            .set_step_deadline(ActorId::Export, Duration::from_secs(300));
        for i in 0..self.lanes.len() {
            ctx.notify(Step(i));
        }
    }
}

/// Request: send lane `i`'s next batch from the outbox.
#[derive(Message, Clone, Copy)]
#[rtype(result = "()")]
struct Step(usize);

impl Handler<Step> for ExportActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, Step(i): Step, _: &mut Self::Context) -> Self::Result {
        let Some(mut lane) = self.lanes.get_mut(i).and_then(Option::take) else {
            return Box::pin(fut::ready(()));
        };
        let (dir, batch, ack) = (self.state_dir.clone(), self.batch, self.ack.clone());
        self.health.begin_step(ActorId::Export);
        Box::pin(
            async move {
                let stepped = lane.step(&dir, batch, &ack).await;
                (lane, stepped)
            }
            .into_actor(self)
            .map(move |(mut lane, stepped), act, ctx| {
                act.health.end_step(ActorId::Export);
                let more = match stepped {
                    Stepped::Idle => false,
                    Stepped::Sent {
                        items,
                        duplicates,
                        more,
                    } => {
                        ExportSent {
                            exporter: lane.exporter,
                            items,
                            duplicates,
                            resumed_after: lane.failures,
                        }
                        .emit(&act.health);
                        lane.failures = 0;
                        more
                    }
                    Stepped::Failed(error) => {
                        lane.failures = lane.failures.saturating_add(1);
                        ExportFailed {
                            exporter: lane.exporter,
                            error: &error,
                            failures: lane.failures,
                            retry_in: retry_delay(lane.failures, false),
                        }
                        .emit(&act.health);
                        false
                    }
                };
                let delay = retry_delay(lane.failures, more);
                act.lanes[i] = Some(lane);
                // Stopping: the outbox keeps what is not sent; the next start sends it.
                if !act.stop.load(Ordering::Relaxed) {
                    ctx.notify_later(Step(i), delay);
                }
            }),
        )
    }
}

impl Handler<Heartbeat> for ExportActor {
    type Result = ();

    fn handle(&mut self, _: Heartbeat, _: &mut Self::Context) {
        self.health.progress(ActorId::Export);
    }
}
