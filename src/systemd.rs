//! The systemd notify protocol (`READY=1`, `STATUS=`, `WATCHDOG=1`, `STOPPING=1`).
//! Outside systemd (no `NOTIFY_SOCKET`) every call is a silent no-op.
//!
//! Datagrams are sent non-blocking: these calls run on the actor thread, and a receiver
//! that stops reading must never freeze the daemon. A message that cannot be queued is
//! dropped and counted (a dropped WATCHDOG=1 is a missed ping, which is what it means).

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;

/// Notify messages that could not be delivered (receiver not reading, socket gone); one in
/// a hundred is logged.
static DROPPED: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone, Copy)]
pub struct Notifier {
    enabled: bool,
}

impl Notifier {
    pub fn from_env() -> Self {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
        }
    }

    /// The interval at which to ping: half of `WATCHDOG_USEC`, if the watchdog is on for us.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        if !self.enabled {
            return None;
        }
        sd_notify::watchdog_enabled().map(|d| d / 2)
    }

    fn send(&self, states: &[NotifyState]) {
        if !self.enabled {
            return;
        }
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return;
        };
        let mut msg = String::new();
        for s in states {
            msg.push_str(&s.to_string());
            msg.push('\n');
        }
        let res = UnixDatagram::unbound().and_then(|sock| {
            sock.set_nonblocking(true)?;
            sock.send_to(msg.as_bytes(), &path)
        });
        if let Err(e) = res {
            if DROPPED.fetch_add(1, Ordering::Relaxed).is_multiple_of(100) {
                tracing::warn!(error = %e, error_kind = "notify_failed", "cannot notify systemd (message dropped)");
            }
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// Before `READY=1`: the start goes on for another `by` (`EXTEND_TIMEOUT_USEC`), doing
    /// what `status` says.
    pub fn extend_start(&self, by: Duration, status: &str) {
        let usec = by.as_micros().min(u32::MAX as u128) as u32;
        self.send(&[
            NotifyState::ExtendTimeoutUsec(usec),
            NotifyState::Status(status),
        ]);
    }

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    pub fn stopping(&self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }
}
