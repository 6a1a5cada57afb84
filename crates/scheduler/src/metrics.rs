//! The scheduler's metrics on its secure port, with upstream's names and labels:
//! `scheduler_schedule_attempts_total{result, profile}` (`scheduled` once the binding is
//! written, `unschedulable` when no node fits, `error` when PreBind or the binding fails),
//! `scheduler_pending_pods{queue}` (`active`, `backoff`, `unschedulable`; read from the queue
//! when scraped) and, with leader election, `leader_election_master_status{name}`.

use std::sync::{Arc, Mutex};

use rk3s_common::metrics::{Counter, Gauge, Registry};

/// What the running scheduler reports when scraped: its queue's lengths, by
/// [`crate::queue::Queue::counts`]'s order. `None` once that scheduler is gone.
pub(crate) type PendingSource = Box<dyn Fn() -> Option<[usize; 3]> + Send + Sync>;

/// The scheduler's metrics. Cloning shares them.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    attempts: Counter,
    leader: Gauge,
    pending_source: Arc<Mutex<Option<PendingSource>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The queues of `scheduler_pending_pods`.
const QUEUES: [&str; 3] = ["active", "backoff", "unschedulable"];

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let attempts = registry.counter(
            "scheduler_schedule_attempts_total",
            "[STABLE] Scheduling attempts by result (scheduled; unschedulable: no node fits; \
             error: the scheduler or the API failed).",
            &["result", "profile"],
        );
        let pending = registry.gauge(
            "scheduler_pending_pods",
            "[STABLE] Pods waiting to be scheduled, by queue (active, backoff, unschedulable).",
            &["queue"],
        );
        let leader = registry.gauge(
            "leader_election_master_status",
            "[ALPHA] 1 while this process holds the leader-election lease 'name', else 0.",
            &["name"],
        );
        let pending_source: Arc<Mutex<Option<PendingSource>>> = Arc::default();
        registry.on_render({
            let source = pending_source.clone();
            move || {
                let counts = source
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                    .and_then(|f| f())
                    .unwrap_or_default();
                for (queue, n) in QUEUES.iter().zip(counts) {
                    pending.set(&[queue], n as f64);
                }
            }
        });
        Metrics {
            registry,
            attempts,
            leader,
            pending_source,
        }
    }

    /// The registry `/metrics` renders.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// One scheduling attempt of `profile` (the scheduler name) ended with `result`.
    pub(crate) fn attempt(&self, result: &'static str, profile: &str) {
        self.attempts.inc(&[result, profile]);
    }

    pub(crate) fn set_pending_source(&self, source: Option<PendingSource>) {
        *self
            .pending_source
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = source;
    }

    /// Reads `status` into `leader_election_master_status{name}` when scraped.
    pub(crate) fn follow_leader(&self, name: &str, status: rk3s_common::leader::LeaderStatus) {
        let (gauge, name) = (self.leader.clone(), name.to_string());
        gauge.set(&[&name], 0.0);
        self.registry.on_render(move || {
            gauge.set(&[&name], if status.is_leader() { 1.0 } else { 0.0 });
        });
    }
}
