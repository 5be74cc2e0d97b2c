//! Logging: journald when started by systemd (`JOURNAL_STREAM` set), text on a terminal.
//! Filter with `RUST_LOG` or `FHIR_EDGE_LOG` (default `info`). Also the `InternalEvent`
//! trait: each concern's events (e.g. `poller/events.rs`) log and count in one place.

use crate::health::Health;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Registry};

/// Where log records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Journald,
    Terminal,
}

fn filter() -> EnvFilter {
    let spec = std::env::var("FHIR_EDGE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info,async_nats=warn".to_string());
    EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Install the global subscriber once. Returns where records go.
pub fn init() -> Sink {
    let under_systemd = std::env::var_os("JOURNAL_STREAM").is_some();
    if under_systemd {
        match tracing_journald::layer() {
            Ok(layer) => {
                let layer = layer
                    .with_syslog_identifier("fhir-edge".to_string())
                    // Fields keep their own names (ACTOR, ERROR_KIND, FHIR_EDGE_ALERT_ID...).
                    .with_field_prefix(None);
                if Registry::default()
                    .with(filter())
                    .with(layer)
                    .try_init()
                    .is_ok()
                {
                    return Sink::Journald;
                }
                return Sink::Terminal;
            }
            Err(e) => {
                eprintln!("fhir-edge: journald socket unavailable ({e}); logging to stderr");
            }
        }
    }
    let _ = Registry::default()
        .with(filter())
        .with(
            fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false)
                // Colours only on a terminal: a redirected log stays greppable.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .try_init();
    Sink::Terminal
}

/// An internal event: something the daemon did that is both logged and counted, in one
/// place, so a log line and its metric cannot drift apart (as in vector's internal events).
pub trait InternalEvent {
    /// Log the event and update the counters and actor health it concerns.
    fn emit(self, health: &Health);
}
