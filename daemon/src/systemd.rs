//! systemd notifications (`READY=1`, `STATUS=`, `STOPPING=1`). Outside systemd (no `NOTIFY_SOCKET`) they
//! are no-ops. The environment is never unset, so later notifications keep working.

use sd_notify::NotifyState;

fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// Readiness: the store is open and listeners are live.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Update the one-line status shown by `systemctl status`.
pub fn status(status: &str) {
    notify(&[NotifyState::Status(status)]);
}

/// Shutdown has begun.
pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}
