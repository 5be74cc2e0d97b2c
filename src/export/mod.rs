//! Exporting alerts, cases and decisions to NATS JetStream ([`nats`]) and to a SIEM over
//! RFC 5424 syslog ([`syslog`]), from the state's outbox (`fhir_edge_core::state`, schema
//! 4; messages: `fhir_edge_core::export`).
//!
//! Each configured exporter is a *lane* of the `ExportActor`: it reads the outbox after the
//! position its far side last acknowledged, sends a batch, and once the far side has
//! acknowledged it records the new position (`AckExport` to the `StateActor`, awaited).
//! What a crash interrupts between a send and its record is sent again after the restart;
//! NATS drops the repeat by its `Nats-Msg-Id` (the stream's duplicate window), a SIEM can
//! by the `msg_id` field (syslog over TCP has no acknowledgement: the message reached the
//! receiver's socket, not necessarily its index).
//!
//! A lane that fails (broker or SIEM down, refused, timed out) backs off — 1 s doubling to
//! 60 s ([`retry_delay`]) — while the outbox keeps growing; `/api/health` says `degraded`
//! with the backlog, `fhir_edge_export_backlog` counts it, and the lane resumes from its
//! position. The other lane goes on meanwhile.

pub(crate) mod actor;
pub(crate) mod nats;
pub(crate) mod syslog;

use std::time::Duration;

use crate::health::{ActorId, Counter, Health};
use crate::telemetry::InternalEvent;

/// Why a batch could not be sent; the lane retries from its acknowledged position.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExportError {
    #[error("cannot connect to {what}: {reason}")]
    Connect { what: String, reason: String },
    #[error("the stream {stream} is missing and cannot be created ({reason}); create it with: {command}")]
    NoStream {
        stream: String,
        reason: String,
        command: String,
    },
    #[error("publishing failed: {0}")]
    Publish(String),
    #[error("no acknowledgement within {0:?}")]
    Timeout(Duration),
    #[error("the receiver closed the connection or the write failed: {0}")]
    Write(String),
    #[error("reading the outbox: {0}")]
    Outbox(#[from] fhir_edge_core::state::StateError),
    #[error("recording the acknowledged position: {0}")]
    Ack(String),
    #[error("setting up: {0}")]
    Setup(String),
}

impl ExportError {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            ExportError::Connect { .. } => "export_connect",
            ExportError::NoStream { .. } => "export_no_stream",
            ExportError::Publish(_) => "export_publish",
            ExportError::Timeout(_) => "export_timeout",
            ExportError::Write(_) => "export_write",
            ExportError::Outbox(e) => e.kind(),
            ExportError::Ack(_) => "export_ack",
            ExportError::Setup(_) => "export_setup",
        }
    }
}

/// A batch the far side acknowledged: up to which position, and how many of its items it
/// already held (re-sent after a crash; NATS drops them by message id).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Delivered {
    pub upto: i64,
    pub duplicates: u64,
}

/// A batch that failed after its first `upto` items (if any) were acknowledged.
#[derive(Debug)]
pub(crate) struct Partial {
    pub upto: Option<i64>,
    pub error: ExportError,
}

impl Partial {
    pub(crate) fn none(error: ExportError) -> Partial {
        Partial { upto: None, error }
    }
}

impl From<ExportError> for Partial {
    fn from(error: ExportError) -> Partial {
        Partial::none(error)
    }
}

/// The exporters, by the name their position is kept under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exporter {
    Nats,
    Syslog,
}

impl Exporter {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Exporter::Nats => "nats",
            Exporter::Syslog => "syslog",
        }
    }
}

/// The exporters a configuration turns on.
pub(crate) fn configured(cfg: &crate::config::Config) -> Vec<Exporter> {
    let mut out = Vec::new();
    if cfg.export.nats.is_some() {
        out.push(Exporter::Nats);
    }
    if cfg.export.syslog.is_some() {
        out.push(Exporter::Syslog);
    }
    out
}

/// What the outbox should do for a configuration (none when nothing is exported).
pub(crate) fn setup(cfg: &crate::config::Config) -> Option<fhir_edge_core::state::ExportSetup> {
    let exporters = configured(cfg);
    (!exporters.is_empty()).then(|| fhir_edge_core::state::ExportSetup {
        site: cfg.site_name(),
        exporters: exporters.iter().map(|e| e.as_str().to_string()).collect(),
        max_items: cfg.export.max_items,
    })
}

/// How long a lane waits before its next step: at once while the outbox has more, a
/// short idle wait when it is empty, and after `failures` failed attempts in a row 1 s
/// doubling to at most 60 s.
pub(crate) fn retry_delay(failures: u32, more: bool) -> Duration {
    match failures {
        0 if more => Duration::ZERO,
        0 => IDLE,
        n => Duration::from_secs(1u64 << (n - 1).min(6)).min(Duration::from_secs(60)),
    }
}

/// How often an idle lane looks for new items in the outbox.
pub(crate) const IDLE: Duration = Duration::from_millis(200);

/// A batch reached the far side and its position was recorded.
pub(crate) struct ExportSent {
    pub exporter: Exporter,
    pub items: usize,
    /// Of them, items the far side already held (dropped there by message id).
    pub duplicates: u64,
    /// The lane had failed before this (it says it resumed).
    pub resumed_after: u32,
}

impl InternalEvent for ExportSent {
    fn emit(self, health: &Health) {
        health.counters.add(Counter::ExportSent, self.items as u64);
        health
            .counters
            .add(Counter::ExportDuplicates, self.duplicates);
        if self.duplicates > 0 {
            tracing::info!(
                actor = "export",
                exporter = self.exporter.as_str(),
                duplicates = self.duplicates,
                "{} of {} items re-sent were already in the stream and were dropped there",
                self.duplicates,
                self.items
            );
        }
        health.set_export_failing(self.exporter.as_str(), None);
        if self.resumed_after > 0 {
            tracing::info!(
                actor = "export",
                exporter = self.exporter.as_str(),
                failed_attempts = self.resumed_after,
                "{} export resumed: sending the backlog",
                self.exporter.as_str()
            );
        }
    }
}

/// A batch could not be sent: logged when the lane starts failing and every tenth attempt
/// after, counted every time.
pub(crate) struct ExportFailed<'a> {
    pub exporter: Exporter,
    pub error: &'a ExportError,
    pub failures: u32,
    pub retry_in: Duration,
}

impl InternalEvent for ExportFailed<'_> {
    fn emit(self, health: &Health) {
        health.counters.add(Counter::ExportErrors, 1);
        health.error(ActorId::Export, self.error.kind());
        health.set_export_failing(self.exporter.as_str(), Some(self.error.to_string()));
        if self.failures == 1 || self.failures.is_multiple_of(10) {
            tracing::warn!(
                actor = "export",
                exporter = self.exporter.as_str(),
                error_kind = self.error.kind(),
                failed_attempts = self.failures,
                "{} export failed, the outbox keeps the items; retrying in {:?}: {}",
                self.exporter.as_str(),
                self.retry_in,
                self.error
            );
        }
    }
}

/// The outbox was full: items of a committed batch were not written to it.
pub(crate) struct ExportRefused(pub u64);

impl InternalEvent for ExportRefused {
    fn emit(self, health: &Health) {
        health.counters.add(Counter::ExportRefused, self.0);
        tracing::error!(
            actor = "state",
            error_kind = "export_outbox_full",
            refused = self.0,
            "the export outbox is full ([export] max_items): {} new items will never be exported \
             (stored and shown here all the same); bring the broker or SIEM back, or raise max_items",
            self.0
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lane_goes_on_at_once_waits_when_idle_and_backs_off_to_a_minute() {
        assert_eq!(retry_delay(0, true), Duration::ZERO);
        assert_eq!(retry_delay(0, false), IDLE);
        assert_eq!(retry_delay(1, true), Duration::from_secs(1));
        assert_eq!(retry_delay(2, false), Duration::from_secs(2));
        assert_eq!(retry_delay(7, false), Duration::from_secs(60));
        assert_eq!(retry_delay(40, false), Duration::from_secs(60));
    }

    #[test]
    fn the_outbox_is_written_only_for_configured_exporters() {
        let dir = std::path::Path::new("/nonexistent");
        let mut cfg = crate::config::Config::for_server("http://127.0.0.1:1/fhir", dir);
        assert!(setup(&cfg).is_none());
        cfg.site.name = Some("north".into());
        cfg.export.syslog = Some(crate::config::SyslogExportConfig {
            address: "127.0.0.1:6514".into(),
            tls: false,
            ca_file: None,
            facility: "authpriv".into(),
            app_name: "fhir-edge".into(),
            format: Default::default(),
            timeout_secs: 10,
        });
        let s = setup(&cfg).unwrap();
        assert_eq!(s.site, "north");
        assert_eq!(s.exporters, ["syslog"]);
    }
}
