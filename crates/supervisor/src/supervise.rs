//! A small supervisor: components of one process, each started in order, run as tasks, and
//! restarted with backoff when they fail, until shutdown.
//!
//! A [`Component`] is started by a function that returns once the component is up (or failed to
//! come up); what it returns is the future that *runs* it, until the stop signal or a failure.
//! A failure at the first start is the caller's ([`Supervisor::start`] returns it); a failure
//! later (an error, a panic, or a run that ends before the stop signal) is logged and the
//! component is started again after a backoff that doubles up to a maximum.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// An error of a component, whatever its crate.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
/// The future that runs a started component until `stop` turns true (then it finishes its
/// work and returns `Ok`) or until it fails.
pub type Running = BoxFuture<Result<(), BoxError>>;
/// Told each component's state as it changes: `Ok` once it runs, `Err(reason)` while it is
/// failed and waiting to restart (what `kubectl get componentstatuses` shows).
pub type Report = std::sync::Arc<dyn Fn(&'static str, Result<(), String>) + Send + Sync>;
/// Starts a component: resolves when it is up, with the future that runs it.
pub type StartFn = Box<dyn FnMut(Stop) -> BoxFuture<Result<Running, BoxError>> + Send + 'static>;

/// The stop signal components watch: `true` once the process shuts down.
#[derive(Debug, Clone)]
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    /// Resolves when the process shuts down.
    pub async fn stopped(mut self) {
        // An error means the sender is gone, which also means stop.
        let _ = self.0.wait_for(|s| *s).await;
    }

    pub fn is_stopped(&self) -> bool {
        *self.0.borrow()
    }
}

/// One supervised component.
pub struct Component {
    name: &'static str,
    start: StartFn,
}

impl std::fmt::Debug for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Component")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Component {
    pub fn new<F, Fut>(name: &'static str, mut start: F) -> Self
    where
        F: FnMut(Stop) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Running, BoxError>> + Send + 'static,
    {
        Component {
            name,
            start: Box::new(move |stop| Box::pin(start(stop))),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// Restart delays: `initial`, doubled after each failed attempt, at most `max`; back to
/// `initial` after a run that lasted at least `reset_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(60),
        }
    }
}

/// How long [`Supervisor::shutdown`] waits for each component to stop.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A component failed to start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start {component}: {error}")]
pub struct StartError {
    pub component: &'static str,
    pub error: BoxError,
}

/// Started components, each supervised by its own task.
#[derive(Debug)]
pub struct Supervisor {
    stop_tx: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl Supervisor {
    /// Starts `components` in order. If one fails to start, those already started are stopped
    /// and its error is returned.
    pub async fn start(components: Vec<Component>, backoff: Backoff) -> Result<Self, StartError> {
        Self::start_reporting(components, backoff, std::sync::Arc::new(|_, _| {})).await
    }

    /// [`Supervisor::start`], telling `report` each component's state as it changes.
    pub async fn start_reporting(
        components: Vec<Component>,
        backoff: Backoff,
        report: Report,
    ) -> Result<Self, StartError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut supervisor = Supervisor {
            stop_tx,
            tasks: Vec::new(),
        };
        for mut component in components {
            let stop = Stop(stop_rx.clone());
            match (component.start)(stop.clone()).await {
                Ok(running) => {
                    tracing::debug!(component = component.name, "started");
                    let name = component.name;
                    report(name, Ok(()));
                    let task =
                        tokio::spawn(supervise(component, running, stop, backoff, report.clone()));
                    supervisor.tasks.push((name, task));
                }
                Err(error) => {
                    supervisor.shutdown().await;
                    return Err(StartError {
                        component: component.name,
                        error,
                    });
                }
            }
        }
        Ok(supervisor)
    }

    /// Signals every component to stop and waits for them, the last started first, each at
    /// most [`STOP_TIMEOUT`]: one that has not stopped by then is reported and cancelled, so
    /// that one stuck component cannot keep the process from stopping.
    pub async fn shutdown(self) {
        self.shutdown_within(STOP_TIMEOUT).await;
    }

    /// [`Supervisor::shutdown`] with another bound.
    pub async fn shutdown_within(mut self, timeout: Duration) {
        let _ = self.stop_tx.send(true);
        while let Some((name, mut task)) = self.tasks.pop() {
            let result = match tokio::time::timeout(timeout, &mut task).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!(
                        component = name,
                        ?timeout,
                        "component did not stop in time; cancelling it"
                    );
                    task.abort();
                    task.await
                }
            };
            match result {
                Err(err) if !err.is_cancelled() => {
                    tracing::error!(component = name, %err, "supervisor task failed");
                }
                _ => tracing::debug!(component = name, "stopped"),
            }
        }
    }
}

/// Runs `running`, and restarts the component whenever it ends before `stop`.
async fn supervise(
    mut component: Component,
    running: Running,
    stop: Stop,
    backoff: Backoff,
    report: Report,
) {
    let name = component.name;
    let mut running = Some(running);
    let mut delay = backoff.initial;
    loop {
        if let Some(run) = running.take() {
            let started = tokio::time::Instant::now();
            // Its own task, so that a panic is caught and reported like an error; cancelled
            // with this one.
            let mut task = AbortOnDrop(tokio::spawn(run));
            let outcome = (&mut task.0).await;
            if stop.is_stopped() {
                if let Ok(Err(err)) = outcome {
                    tracing::warn!(component = name, %err, "component ended with an error while stopping");
                }
                return;
            }
            if started.elapsed() >= backoff.reset_after {
                delay = backoff.initial;
            }
            let failure = match outcome {
                Ok(Ok(())) => {
                    tracing::error!(component = name, retry_in = ?delay, "component stopped unexpectedly; restarting");
                    "stopped unexpectedly".to_string()
                }
                Ok(Err(err)) => {
                    tracing::error!(component = name, %err, retry_in = ?delay, "component failed; restarting");
                    format!("failed: {err}")
                }
                Err(err) => {
                    let err = panic_message(err);
                    tracing::error!(component = name, %err, retry_in = ?delay, "component panicked; restarting");
                    format!("panicked: {err}")
                }
            };
            report(name, Err(format!("{failure}; restarting")));
        }
        tokio::select! {
            _ = stop.clone().stopped() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(backoff.max);
        match (component.start)(stop.clone()).await {
            Ok(run) => {
                tracing::warn!(component = name, "component restarted");
                report(name, Ok(()));
                running = Some(run);
            }
            Err(err) => {
                if stop.is_stopped() {
                    return;
                }
                tracing::error!(component = name, %err, retry_in = ?delay, "component failed to restart");
                report(name, Err(format!("cannot start: {err}; restarting")));
            }
        }
    }
}

/// What a component's task panicked with (its message, when it is text).
fn panic_message(err: tokio::task::JoinError) -> String {
    match err.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a non-text panic".to_string()),
        Err(err) => err.to_string(),
    }
}

/// A task handle that cancels its task when dropped.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn fast() -> Backoff {
        Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(4),
            reset_after: Duration::from_secs(60),
        }
    }

    /// A component that fails (by error, by panic, by returning early) on its first runs, then
    /// runs until stopped; it is restarted each time and finally stopped cleanly.
    #[tokio::test]
    async fn failed_components_are_restarted_until_stop() {
        let starts = Arc::new(AtomicUsize::new(0));
        let (up_tx, mut up_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
        let counter = starts.clone();
        let component = Component::new("flaky", move |stop: Stop| {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let up = up_tx.clone();
            async move {
                if n == 1 {
                    return Err::<Running, BoxError>("cannot start now".into());
                }
                let _ = up.send(n);
                let run: Running = Box::pin(async move {
                    match n {
                        0 => Err("broken".into()),
                        2 => panic!("component panics"),
                        3 => Ok(()),
                        _ => {
                            stop.stopped().await;
                            Ok(())
                        }
                    }
                });
                Ok(run)
            }
        });
        let reports = Arc::new(std::sync::Mutex::new(Vec::new()));
        let report: Report = {
            let reports = reports.clone();
            Arc::new(move |name, health| {
                reports.lock().expect("reports").push((name, health));
            })
        };
        let supervisor = Supervisor::start_reporting(vec![component], fast(), report)
            .await
            .expect("first start works");
        let mut seen = Vec::new();
        while seen.last() != Some(&4) {
            seen.push(up_rx.recv().await.expect("component came up"));
        }
        assert_eq!(seen, vec![0, 2, 3, 4]);
        supervisor.shutdown().await;
        assert_eq!(starts.load(Ordering::SeqCst), 5, "no restart after stop");
        // Each state as the component went through it; the stop itself is no failure.
        let reports = reports.lock().expect("reports").clone();
        assert_eq!(
            reports,
            [
                ("flaky", Ok(())),
                ("flaky", Err("failed: broken; restarting".to_string())),
                (
                    "flaky",
                    Err("cannot start: cannot start now; restarting".to_string())
                ),
                ("flaky", Ok(())),
                (
                    "flaky",
                    Err("panicked: component panics; restarting".to_string())
                ),
                ("flaky", Ok(())),
                ("flaky", Err("stopped unexpectedly; restarting".to_string())),
                ("flaky", Ok(())),
            ]
        );
    }

    /// A component that ignores the stop signal is cancelled after the timeout, its inner
    /// task included.
    #[tokio::test]
    async fn a_stuck_component_is_cancelled_at_shutdown() {
        let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
        let mut dropped_tx = Some(dropped_tx);
        struct Notify(Option<tokio::sync::oneshot::Sender<()>>);
        impl Drop for Notify {
            fn drop(&mut self) {
                if let Some(tx) = self.0.take() {
                    let _ = tx.send(());
                }
            }
        }
        let stuck = Component::new("stuck", move |_stop: Stop| {
            let notify = Notify(dropped_tx.take());
            async move {
                let run: Running = Box::pin(async move {
                    let _notify = notify;
                    std::future::pending::<()>().await;
                    Ok(())
                });
                Ok(run)
            }
        });
        let supervisor = Supervisor::start(vec![stuck], fast())
            .await
            .expect("starts");
        supervisor.shutdown_within(Duration::from_millis(10)).await;
        dropped_rx.await.expect("the stuck run was dropped");
    }

    #[tokio::test]
    async fn a_start_failure_stops_the_started_ones() {
        let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
        let mut stopped_tx = Some(stopped_tx);
        let first = Component::new("first", move |stop: Stop| {
            let tx = stopped_tx.take();
            async move {
                let run: Running = Box::pin(async move {
                    stop.stopped().await;
                    if let Some(tx) = tx {
                        let _ = tx.send(());
                    }
                    Ok(())
                });
                Ok(run)
            }
        });
        let second = Component::new("second", |_stop: Stop| async {
            Err::<Running, BoxError>("port taken".into())
        });
        let err = Supervisor::start(vec![first, second], fast())
            .await
            .expect_err("second fails");
        assert_eq!(err.component, "second");
        assert!(err.to_string().contains("port taken"), "{err}");
        stopped_rx.await.expect("first was stopped");
    }
}
