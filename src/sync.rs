//! Locks that cannot be poisoned in this process: a panic anywhere aborts it (`main.rs`) and
//! systemd restarts the daemon, so no thread ever observes a lock left by a panicking one.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Lock `m`; a poisoned lock (impossible here, see the module) still yields its data.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
