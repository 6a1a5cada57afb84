//! systemd's readiness protocol (`sd_notify`, through the `sd-notify` crate), as K3s speaks it
//! under its `Type=notify` units: `READY=1` once a process serves, `STOPPING=1` when it begins
//! to shut down. Without `NOTIFY_SOCKET` in the environment (not started by systemd) these do
//! nothing; a failure to send is logged, never fatal.
//!
//! Only binaries call these: a library component embedded in another process (the supervisor
//! runs them all in one) must not tell systemd the process is ready on its own behalf.

/// `READY=1` with a human-readable `STATUS=`.
pub fn ready(status: &str) {
    send(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ]);
}

/// `STOPPING=1`.
pub fn stopping() {
    send(&[sd_notify::NotifyState::Stopping]);
}

fn send(states: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}
