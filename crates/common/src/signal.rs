//! The shutdown signals every rk3s binary obeys: SIGTERM (what systemd and kubelets send) and
//! SIGINT (Ctrl-C).

use std::future::Future;

/// Installs the SIGTERM and SIGINT handlers now, so that a signal arriving while the process
/// is still starting is not lost (nor handled by the default action, which would end the
/// process without a clean shutdown), and returns a future that completes at the first of
/// them, after logging it and telling systemd `STOPPING=1`.
///
/// Must be called inside a Tokio runtime.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        crate::notify::stopping();
    })
}
