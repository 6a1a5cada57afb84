//! The scheduling loop: watches feed the cache and the queue; one pod at a time is popped,
//! filtered and scored against the cache (a memory-only decision, under the lock), assumed on
//! its node and bound in the background, several bindings in flight at once.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{
    Event, EventSource, Namespace, Node, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    Pod, PodCondition,
};
use k8s_openapi::api::storage::v1::{CSINode, StorageClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event as WatchEvent};
use rand::Rng as _;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinSet;
use tracing::Instrument as _;

use crate::Result;
use crate::cache::{Cache, NodeInfo, PodInfo, pod_key};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::plugins::volume_binding::{self, PodVolumes, pvc_key};
use crate::plugins::{CycleState, Failure, fit_error_message};
use crate::preemption::{self, Candidate};
use crate::queue::{ClusterEvent, Popped, Queue};

/// Events waiting to be written; beyond this they are dropped (as upstream's broadcaster does).
const EVENT_BUFFER: usize = 8192;
const EVENT_WRITERS: usize = 8;

#[derive(Debug)]
struct Inner {
    cache: Cache,
    queue: Queue,
    next_start: usize,
    nodes_synced: bool,
    pods_synced: bool,
    /// PersistentVolumes, PersistentVolumeClaims, StorageClasses, CSINodes listed.
    volumes_synced: [bool; 4],
}

struct Shared {
    inner: Mutex<Inner>,
    wake: Notify,
    /// Woken (all waiters) on every volume, claim or class change: PreBind waits on it.
    volumes_changed: Notify,
    config: Config,
    client: kube::Client,
    events: mpsc::Sender<EventRecord>,
    metrics: Metrics,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep going with it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn event(&self, pod: &Pod, type_: &'static str, reason: &'static str, message: String) {
        let record = EventRecord {
            pod: pod.clone(),
            type_,
            reason,
            message,
        };
        if self.events.try_send(record).is_err() {
            tracing::debug!(reason, "event buffer full; event dropped");
        }
    }
}

#[derive(Debug)]
struct EventRecord {
    pod: Pod,
    type_: &'static str,
    reason: &'static str,
    message: String,
}

/// The scheduler, before it runs.
pub struct Scheduler {
    config: Config,
    client: kube::Client,
    metrics: Metrics,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What one scheduling attempt decided.
#[derive(Debug)]
enum Outcome {
    /// The node, and what its volumes need there (VolumeBinding's Filter result).
    Assume(String, PodVolumes),
    Fail {
        message: String,
        plugins: HashSet<&'static str>,
        nominate: Option<Candidate>,
    },
    Skip,
}

impl Scheduler {
    pub fn new(config: Config, client: kube::Client) -> Scheduler {
        Scheduler {
            config,
            client,
            metrics: Metrics::new(),
        }
    }

    /// Counts into `metrics` (those the secure port serves) instead of its own.
    pub fn with_metrics(mut self, metrics: Metrics) -> Scheduler {
        self.metrics = metrics;
        self
    }

    /// Watches, schedules and binds until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        self.config.validate()?;
        let (events_tx, events_rx) = mpsc::channel(EVENT_BUFFER);
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                cache: Cache::default(),
                queue: Queue::new(
                    Duration::from_secs(self.config.pod_initial_backoff_seconds),
                    Duration::from_secs(self.config.pod_max_backoff_seconds),
                ),
                next_start: 0,
                nodes_synced: false,
                pods_synced: false,
                volumes_synced: [false; 4],
            }),
            wake: Notify::new(),
            volumes_changed: Notify::new(),
            config: self.config,
            client: self.client,
            events: events_tx,
            metrics: self.metrics,
        });
        // The queue's lengths when scraped, while this scheduler runs.
        let weak = Arc::downgrade(&shared);
        shared.metrics.set_pending_source(Some(Box::new(move || {
            weak.upgrade().map(|s| s.lock().queue.counts())
        })));
        // Dropping the set (on shutdown or lost leadership) aborts watches and bindings.
        let mut tasks = JoinSet::new();
        tasks.spawn(watch_nodes(shared.clone()));
        tasks.spawn(watch_pods(shared.clone()));
        tasks.spawn(watch_namespaces(shared.clone()));
        tasks.spawn(watch_volumes::<PersistentVolume>(shared.clone(), 0));
        tasks.spawn(watch_volumes::<PersistentVolumeClaim>(shared.clone(), 1));
        tasks.spawn(watch_volumes::<StorageClass>(shared.clone(), 2));
        tasks.spawn(watch_volumes::<CSINode>(shared.clone(), 3));
        tasks.spawn(write_events(
            shared.client.clone(),
            shared.config.scheduler_name.clone(),
            events_rx,
        ));
        let binds = Arc::new(Semaphore::new(shared.config.parallel_binds));
        tokio::pin!(shutdown);
        tracing::info!(scheduler_name = %shared.config.scheduler_name, "scheduler started");
        loop {
            let Ok(permit) = binds.clone().acquire_owned().await else {
                return Ok(());
            };
            let popped = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                p = next_pod(&shared) => p,
            };
            let span =
                tracing::debug_span!("schedule", pod = %popped.info.key, attempt = popped.attempts);
            let outcome = {
                let _g = span.enter();
                let mut inner = shared.lock();
                let mut outcome = schedule_one(&mut inner, &shared.config, &popped);
                let now = Instant::now();
                // Reserve: the pod's volumes first (they may refuse), then the pod.
                if let Outcome::Assume(node, volumes) = &mut outcome {
                    let vols = std::mem::take(volumes);
                    match inner
                        .cache
                        .volumes
                        .assume_pod_volumes(&popped.info, node, vols)
                    {
                        Ok(v) => *volumes = v.unwrap_or_default(),
                        Err(e) => {
                            outcome = Outcome::Fail {
                                message: format!(
                                    "running Reserve plugin \"{}\": {e}",
                                    volume_binding::NAME
                                ),
                                plugins: HashSet::new(),
                                nominate: None,
                            };
                        }
                    }
                }
                match &outcome {
                    Outcome::Assume(node, _) => {
                        inner.cache.assume(popped.info.clone(), node);
                        inner.queue.done(&popped.info.key);
                    }
                    Outcome::Fail { plugins, .. } => {
                        inner.queue.failed(&popped.info.key, plugins.clone(), now);
                    }
                    Outcome::Skip => inner.queue.done(&popped.info.key),
                }
                outcome
            };
            match outcome {
                Outcome::Assume(node, volumes) => {
                    tasks.spawn(
                        bind(shared.clone(), popped, node, volumes, permit).instrument(span),
                    );
                }
                Outcome::Fail {
                    message, nominate, ..
                } => {
                    tracing::debug!(parent: &span, %message, "unschedulable");
                    shared
                        .metrics
                        .attempt("unschedulable", &shared.config.scheduler_name);
                    tasks.spawn(
                        record_failure(
                            shared.clone(),
                            popped.info.clone(),
                            message,
                            nominate,
                            permit,
                        )
                        .instrument(span),
                    );
                }
                Outcome::Skip => {}
            }
            // Reap finished tasks so the set does not grow.
            while let Some(res) = tasks.try_join_next() {
                if let Err(e) = res
                    && e.is_panic()
                {
                    tracing::error!(error = %e, "a scheduler task panicked");
                }
            }
        }
    }
}

/// Waits for the next pod to schedule (once both watches have listed everything).
async fn next_pod(shared: &Shared) -> Popped {
    loop {
        let wait = {
            let mut inner = shared.lock();
            let now = Instant::now();
            if inner.nodes_synced
                && inner.pods_synced
                && inner.volumes_synced.iter().all(|s| *s)
                && let Some(p) = inner.queue.pop(now)
            {
                return p;
            }
            inner
                .queue
                .next_backoff()
                .map(|t| t.saturating_duration_since(now))
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1))
        };
        tokio::select! {
            () = shared.wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// One scheduling cycle against the cache: filters (on a rotating sample of nodes), scores,
/// or the failure with its upstream message and, if it helps, a preemption.
fn schedule_one(inner: &mut Inner, config: &Config, popped: &Popped) -> Outcome {
    let cache = &inner.cache;
    let pod = &popped.info;
    if cache.is_placed(&pod.key) {
        return Outcome::Skip;
    }
    let state = CycleState::new(pod.clone(), cache);
    let nodes = cache.nodes();
    let available = cache.node_count();
    if available == 0 {
        return Outcome::Fail {
            message: "no nodes available to schedule pods".into(),
            plugins: HashSet::from(["NodeName"]),
            nominate: None,
        };
    }
    if let Some(rejection) = state.rejection() {
        // PreFilter said no: every node has that status, and the message is PreFilter's.
        let failures: HashMap<String, Failure> = nodes
            .iter()
            .filter(|n| n.node.is_some())
            .map(|n| (n.name.clone(), rejection.clone()))
            .collect();
        let mut message = format!(
            "0/{available} nodes are available: {}.",
            rejection.reasons.join(", ")
        );
        let nominate = match preemption::preempt(&state, cache, &failures) {
            Ok(c) => Some(c),
            Err(m) => {
                message.push_str(" preemption: ");
                message.push_str(&m);
                None
            }
        };
        return Outcome::Fail {
            message,
            plugins: HashSet::from([rejection.plugin]),
            nominate,
        };
    }
    // PreFilterResult: nodes outside it are not looked at, and fail as upstream reports them.
    let eligible = state.volumes.eligible.as_ref();
    let outside = || {
        Failure::unresolvable(
            volume_binding::NAME,
            format!(
                "node(s) didn't satisfy plugin(s) [{}]",
                volume_binding::NAME
            ),
        )
    };
    let candidates = match eligible {
        Some(e) => nodes
            .iter()
            .filter(|n| n.node.is_some() && e.contains(&n.name))
            .count(),
        None => available,
    };
    let want = config.nodes_to_find(candidates);
    let start = inner.next_start % nodes.len();
    let mut feasible: Vec<&NodeInfo> = Vec::new();
    let mut failures = HashMap::new();
    let mut processed = 0;
    for i in 0..nodes.len() {
        let n = &nodes[(start + i) % nodes.len()];
        if n.node.is_none() {
            continue;
        }
        if eligible.is_some_and(|e| !e.contains(&n.name)) {
            failures.insert(n.name.clone(), outside());
            continue;
        }
        processed = i + 1;
        match state.filter(n) {
            Ok(()) => {
                feasible.push(n);
                if feasible.len() >= want {
                    break;
                }
            }
            Err(f) => {
                failures.insert(n.name.clone(), f);
            }
        }
    }
    let next_start = (start + processed) % nodes.len();
    let outcome = if feasible.is_empty() {
        let mut message = fit_error_message(available, &failures);
        let plugins = failures.values().map(|f| f.plugin).collect();
        let nominate = match preemption::preempt(&state, cache, &failures) {
            Ok(c) => Some(c),
            Err(m) => {
                message.push_str(" preemption: ");
                message.push_str(&m);
                None
            }
        };
        Outcome::Fail {
            message,
            plugins,
            nominate,
        }
    } else if feasible.len() == 1 {
        assume(&state, feasible[0])
    } else {
        let scores = state.score(cache, &feasible);
        // Highest score; ties broken at random (reservoir sampling), like upstream.
        let mut rng = rand::rng();
        let mut best = 0;
        let mut ties = 0u32;
        for (i, s) in scores.iter().enumerate() {
            if *s > scores[best] {
                best = i;
                ties = 1;
            } else if *s == scores[best] {
                ties += 1;
                if rng.random_range(0..ties) == 0 {
                    best = i;
                }
            }
        }
        assume(&state, feasible[best])
    };
    inner.next_start = next_start;
    outcome
}

/// The chosen node with what VolumeBinding's Filter found the pod's claims need there.
fn assume(state: &CycleState, node: &NodeInfo) -> Outcome {
    match state.volumes.find(node) {
        Ok(volumes) => Outcome::Assume(node.name.clone(), volumes),
        // Filter passed on the same cache a moment ago.
        Err(f) => Outcome::Fail {
            message: f.reasons.join(", "),
            plugins: HashSet::from([f.plugin]),
            nominate: None,
        },
    }
}

/// PreBind (the pod's volumes), then `POST pods/<name>/binding`; on failure the pod's volumes
/// are unreserved, the pod is forgotten on its node and queued again.
async fn bind(
    shared: Arc<Shared>,
    popped: Popped,
    node: String,
    volumes: PodVolumes,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let pod = &popped.info;
    if !volumes.is_empty() {
        // Waiting for the PV controller takes no binding slot.
        drop(permit);
        if let Err(e) = bind_volumes(&shared, &pod.key, &node, &volumes).await {
            tracing::warn!(%node, error = %e, "binding the pod's volumes failed");
            {
                let mut inner = shared.lock();
                inner.cache.volumes.revert(&volumes);
                // Deleted meanwhile (the watch dropped the assumption): not queued again.
                let ours = inner.cache.is_assumed(&pod.key);
                inner.cache.forget(&pod.key);
                if ours {
                    // What the assumed pod took is free again: upstream treats the forget as
                    // an assigned pod's deletion (before the pod itself is queued again).
                    inner
                        .queue
                        .move_for(ClusterEvent::AssignedPodDelete, Instant::now());
                }
                if ours && !inner.cache.is_placed(&pod.key) {
                    inner
                        .queue
                        .requeue(pod.clone(), popped.attempts, Instant::now());
                }
            }
            shared.wake.notify_one();
            // Upstream's handleBindingCycleError: an Error status (reason SchedulerError),
            // the nominated node cleared.
            shared
                .metrics
                .attempt("error", &shared.config.scheduler_name);
            let message = format!("running PreBind plugin \"{}\": {e}", volume_binding::NAME);
            update_scheduled_condition(&shared, pod, "SchedulerError", &message, Nominate::Clear)
                .await;
            shared.event(&pod.pod, "Warning", "FailedScheduling", message);
            return;
        }
    }
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), &pod.namespace);
    let body = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    match api
        .create_subresource::<_, serde_json::Value>(
            "binding",
            &pod.name,
            &PostParams::default(),
            &body,
        )
        .await
    {
        Ok(_) => {
            tracing::debug!(%node, "bound");
            shared
                .metrics
                .attempt("scheduled", &shared.config.scheduler_name);
            shared.event(
                &pod.pod,
                "Normal",
                "Scheduled",
                format!("Successfully assigned {} to {node}", pod.key),
            );
        }
        Err(e) => {
            tracing::warn!(%node, error = %e, "binding failed");
            shared
                .metrics
                .attempt("error", &shared.config.scheduler_name);
            let gone = matches!(&e, kube::Error::Api(s) if s.code == 404);
            {
                let mut inner = shared.lock();
                if inner.cache.is_assumed(&pod.key) {
                    inner.cache.forget(&pod.key);
                    inner
                        .queue
                        .move_for(ClusterEvent::AssignedPodDelete, Instant::now());
                }
                if !gone && !inner.cache.is_placed(&pod.key) {
                    inner
                        .queue
                        .requeue(pod.clone(), popped.attempts, Instant::now());
                }
            }
            shared.wake.notify_one();
            if !gone {
                shared.event(
                    &pod.pod,
                    "Warning",
                    "FailedScheduling",
                    format!("Binding rejected: {e}"),
                );
            }
        }
    }
}

/// VolumeBinding's PreBind (`BindPodVolumes`): writes the pre-bound volumes and the claims'
/// selected node, then waits (up to `bind-timeout-seconds`) for the PV controller to bind
/// every claim.
async fn bind_volumes(
    shared: &Shared,
    pod: &str,
    node: &str,
    volumes: &PodVolumes,
) -> std::result::Result<(), String> {
    let api_error = |e: kube::Error| match e {
        kube::Error::Api(s) => s.message,
        e => e.to_string(),
    };
    let pvs: Api<PersistentVolume> = Api::all(shared.client.clone());
    let mut written = PodVolumes::default();
    for (pv, claim) in &volumes.static_bindings {
        let name = pv.metadata.name.clone().unwrap_or_default();
        let pv = pvs
            .replace(&name, &PostParams::default(), pv)
            .await
            .map_err(api_error)?;
        tracing::debug!(volume = %name, "volume pre-bound");
        let pv = Arc::new(pv);
        let _ = shared.lock().cache.volumes.pvs.assume(&name, pv.clone());
        written.static_bindings.push((pv, claim.clone()));
    }
    for claim in &volumes.dynamic_provisions {
        let ns = claim.metadata.namespace.clone().unwrap_or_default();
        let name = claim.metadata.name.clone().unwrap_or_default();
        let api: Api<PersistentVolumeClaim> = Api::namespaced(shared.client.clone(), &ns);
        let claim = api
            .replace(&name, &PostParams::default(), claim)
            .await
            .map_err(api_error)?;
        tracing::debug!(claim = %name, %node, "claim's node selected");
        let claim = Arc::new(claim);
        let _ = shared
            .lock()
            .cache
            .volumes
            .pvcs
            .assume(&pvc_key(&claim), claim.clone());
        written.dynamic_provisions.push(claim);
    }
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(shared.config.bind_timeout_seconds);
    loop {
        let changed = shared.volumes_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let done = {
            let inner = shared.lock();
            if !inner.cache.is_assumed(pod) {
                return Err(format!("binding volumes: pod \"{pod}\" is gone"));
            }
            let labels = inner
                .cache
                .node(node)
                .filter(|n| n.node.is_some())
                .map(|n| n.labels.clone())
                .ok_or_else(|| format!("binding volumes: node \"{node}\" not found"))?;
            inner
                .cache
                .volumes
                .check_bindings(node, &labels, &written)
                .map_err(|e| format!("binding volumes: {e}"))?
        };
        if done {
            return Ok(());
        }
        tokio::select! {
            () = &mut changed => {}
            // Upstream polls every second; the watch wakes us sooner.
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = tokio::time::sleep_until(deadline) => {
                return Err("binding volumes: context deadline exceeded".into());
            }
        }
    }
}

/// Carries out a preemption, then sets PodScheduled=False (reason Unschedulable) and writes the
/// `FailedScheduling` event.
async fn record_failure(
    shared: Arc<Shared>,
    pod: Arc<PodInfo>,
    message: String,
    nominate: Option<Candidate>,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let nominated = nominate.as_ref().map(|c| c.node.clone());
    if let Some(c) = &nominate {
        for victim in &c.victims {
            let vapi: Api<Pod> = Api::namespaced(shared.client.clone(), &victim.namespace);
            match vapi.delete(&victim.name, &DeleteParams::default()).await {
                Ok(_) => {
                    tracing::info!(victim = %victim.key, node = %c.node, "preempted");
                    shared.event(
                        &victim.pod,
                        "Normal",
                        "Preempted",
                        format!("Preempted by pod {} on node {}", pod.uid, c.node),
                    );
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    tracing::warn!(victim = %victim.key, error = %e, "deleting a victim failed")
                }
            }
        }
    }
    let nominate = match nominated {
        Some(n) => Nominate::Set(n),
        None => Nominate::Keep,
    };
    update_scheduled_condition(&shared, &pod, "Unschedulable", &message, nominate).await;
    shared.event(&pod.pod, "Warning", "FailedScheduling", message);
}

/// What a failure does to the pod's `status.nominatedNodeName`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Nominate {
    Keep,
    Set(String),
    /// Upstream's `clearNominatedNode` (ModeOverride with no node).
    Clear,
}

/// Upstream's `updatePod`: `PodScheduled=False` with `reason` and `message` (the transition
/// time kept while it stays False), and the nominated node; written only when something
/// changes.
async fn update_scheduled_condition(
    shared: &Shared,
    pod: &PodInfo,
    reason: &str,
    message: &str,
    nominate: Nominate,
) {
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), &pod.namespace);
    let status = pod.pod.status.clone().unwrap_or_default();
    let mut conditions = status.conditions.unwrap_or_default();
    let existing = conditions.iter().position(|c| c.type_ == "PodScheduled");
    let same = existing.is_some_and(|i| {
        let c = &conditions[i];
        c.status == "False"
            && c.reason.as_deref() == Some(reason)
            && c.message.as_deref() == Some(message)
    });
    let nominated = match &nominate {
        Nominate::Keep => None,
        Nominate::Set(n) => Some(n.clone()),
        Nominate::Clear => Some(String::new()),
    };
    let current = status.nominated_node_name.unwrap_or_default();
    let nominated_changed = nominated.as_ref().is_some_and(|n| *n != current);
    if same && !nominated_changed {
        return;
    }
    let now = Time(Timestamp::now());
    let transition = match existing.map(|i| &conditions[i]) {
        Some(c) if c.status == "False" => c.last_transition_time.clone(),
        _ => Some(now),
    };
    let condition = PodCondition {
        type_: "PodScheduled".into(),
        status: "False".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_transition_time: transition,
        ..Default::default()
    };
    match existing {
        Some(i) => conditions[i] = condition,
        None => conditions.push(condition),
    }
    let mut patch = serde_json::json!({"status": {"conditions": conditions}});
    if nominated_changed {
        patch["status"]["nominatedNodeName"] = match nominated.as_deref() {
            Some("") | None => serde_json::Value::Null,
            Some(n) => serde_json::json!(n),
        };
    }
    if let Err(e) = api
        .patch_status(&pod.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::debug!(error = %e, "updating the pod's PodScheduled condition failed");
    }
}

/// Writes events (core/v1, as kube-scheduler's events.k8s.io events look through core/v1).
async fn write_events(client: kube::Client, component: String, rx: mpsc::Receiver<EventRecord>) {
    let instance = format!(
        "{component}-{}",
        hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default()
    );
    let stream = tokio_stream_from(rx);
    stream
        .for_each_concurrent(EVENT_WRITERS, |r| {
            let client = client.clone();
            let component = component.clone();
            let instance = instance.clone();
            async move {
                let ns = r.pod.metadata.namespace.clone().unwrap_or_default();
                let name = r.pod.metadata.name.clone().unwrap_or_default();
                let now = Timestamp::now();
                let event = Event {
                    metadata: ObjectMeta {
                        name: Some(format!("{name}.{:x}", now.as_nanosecond())),
                        namespace: Some(ns.clone()),
                        ..Default::default()
                    },
                    involved_object: ObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        name: Some(name),
                        namespace: Some(ns.clone()),
                        uid: r.pod.metadata.uid.clone(),
                        resource_version: r.pod.metadata.resource_version.clone(),
                        ..Default::default()
                    },
                    reason: Some(r.reason.into()),
                    message: Some(r.message),
                    type_: Some(r.type_.into()),
                    action: Some(
                        if r.reason == "Preempted" {
                            "Preempting"
                        } else {
                            "Scheduling"
                        }
                        .into(),
                    ),
                    event_time: Some(MicroTime(now)),
                    first_timestamp: Some(Time(now)),
                    last_timestamp: Some(Time(now)),
                    count: Some(1),
                    reporting_component: Some(component.clone()),
                    reporting_instance: Some(instance),
                    source: Some(EventSource {
                        component: Some(component),
                        host: None,
                    }),
                    ..Default::default()
                };
                let api: Api<Event> = Api::namespaced(client, &ns);
                if let Err(e) = api.create(&PostParams::default(), &event).await {
                    tracing::debug!(error = %e, "writing an event failed");
                }
            }
        })
        .await;
}

fn tokio_stream_from<T>(mut rx: mpsc::Receiver<T>) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn watcher_config() -> watcher::Config {
    watcher::Config::default()
}

async fn watch_nodes(shared: Arc<Shared>) {
    let api: Api<Node> = Api::all(shared.client.clone());
    let mut stream = watcher::watcher(api, watcher_config())
        .default_backoff()
        .boxed();
    let mut buffer: Vec<Node> = Vec::new();
    while let Some(ev) = stream.next().await {
        let now = Instant::now();
        match ev {
            Err(e) => tracing::warn!(error = %e, "node watch failed; retrying"),
            Ok(WatchEvent::Init) => buffer.clear(),
            Ok(WatchEvent::InitApply(n)) => buffer.push(n),
            Ok(WatchEvent::InitDone) => {
                let mut inner = shared.lock();
                let keep: HashSet<String> = buffer
                    .iter()
                    .filter_map(|n| n.metadata.name.clone())
                    .collect();
                inner.cache.retain_nodes(&keep);
                for n in buffer.drain(..) {
                    inner.cache.upsert_node(Arc::new(n));
                }
                inner.nodes_synced = true;
                inner.queue.move_for(ClusterEvent::NodeAddOrUpdate, now);
            }
            Ok(WatchEvent::Apply(n)) => {
                let mut inner = shared.lock();
                inner.cache.upsert_node(Arc::new(n));
                inner.queue.move_for(ClusterEvent::NodeAddOrUpdate, now);
            }
            Ok(WatchEvent::Delete(n)) => {
                let mut inner = shared.lock();
                inner
                    .cache
                    .remove_node(n.metadata.name.as_deref().unwrap_or_default());
            }
        }
        shared.wake.notify_one();
    }
}

/// What the scheduler keeps of a volume object kind.
trait VolumeObject:
    kube::Resource<DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    fn key(&self) -> String {
        self.meta().name.clone().unwrap_or_default()
    }
    fn upsert(self, v: &mut volume_binding::Volumes);
    fn remove(key: &str, v: &mut volume_binding::Volumes);
    fn retain(keep: &HashSet<String>, v: &mut volume_binding::Volumes);
}

impl VolumeObject for PersistentVolume {
    fn upsert(self, v: &mut volume_binding::Volumes) {
        v.pvs.upsert(self.key(), Arc::new(self));
    }
    fn remove(key: &str, v: &mut volume_binding::Volumes) {
        v.pvs.remove(key);
    }
    fn retain(keep: &HashSet<String>, v: &mut volume_binding::Volumes) {
        v.pvs.retain(keep);
    }
}

impl VolumeObject for PersistentVolumeClaim {
    fn key(&self) -> String {
        pvc_key(self)
    }
    fn upsert(self, v: &mut volume_binding::Volumes) {
        v.pvcs.upsert(self.key(), Arc::new(self));
    }
    fn remove(key: &str, v: &mut volume_binding::Volumes) {
        v.pvcs.remove(key);
    }
    fn retain(keep: &HashSet<String>, v: &mut volume_binding::Volumes) {
        v.pvcs.retain(keep);
    }
}

impl VolumeObject for StorageClass {
    fn upsert(self, v: &mut volume_binding::Volumes) {
        v.classes.insert(self.key(), Arc::new(self));
    }
    fn remove(key: &str, v: &mut volume_binding::Volumes) {
        v.classes.remove(key);
    }
    fn retain(keep: &HashSet<String>, v: &mut volume_binding::Volumes) {
        v.classes.retain(|k, _| keep.contains(k));
    }
}

impl VolumeObject for CSINode {
    fn upsert(self, v: &mut volume_binding::Volumes) {
        v.csi_nodes.insert(self.key(), Arc::new(self));
    }
    fn remove(key: &str, v: &mut volume_binding::Volumes) {
        v.csi_nodes.remove(key);
    }
    fn retain(keep: &HashSet<String>, v: &mut volume_binding::Volumes) {
        v.csi_nodes.retain(|k, _| keep.contains(k));
    }
}

/// Watches PersistentVolumes, PersistentVolumeClaims, StorageClasses or CSINodes (`slot` in
/// `volumes_synced`) into the cache; a change may help pods VolumeBinding rejected, and
/// wakes PreBinds waiting for the PV controller.
async fn watch_volumes<K: VolumeObject>(shared: Arc<Shared>, slot: usize) {
    let api: Api<K> = Api::all(shared.client.clone());
    let mut stream = watcher::watcher(api, watcher_config())
        .default_backoff()
        .boxed();
    let mut buffer: Vec<K> = Vec::new();
    while let Some(ev) = stream.next().await {
        let now = Instant::now();
        {
            let mut inner = shared.lock();
            match ev {
                Err(e) => {
                    tracing::warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying");
                    continue;
                }
                Ok(WatchEvent::Init) => {
                    buffer.clear();
                    continue;
                }
                Ok(WatchEvent::InitApply(o)) => {
                    buffer.push(o);
                    continue;
                }
                Ok(WatchEvent::InitDone) => {
                    let keep: HashSet<String> = buffer.iter().map(VolumeObject::key).collect();
                    K::retain(&keep, &mut inner.cache.volumes);
                    for o in buffer.drain(..) {
                        o.upsert(&mut inner.cache.volumes);
                    }
                    if let Some(s) = inner.volumes_synced.get_mut(slot) {
                        *s = true;
                    }
                }
                Ok(WatchEvent::Apply(o)) => o.upsert(&mut inner.cache.volumes),
                Ok(WatchEvent::Delete(o)) => K::remove(&o.key(), &mut inner.cache.volumes),
            }
            inner.queue.move_for(ClusterEvent::VolumeAddOrUpdate, now);
        }
        shared.volumes_changed.notify_waiters();
        shared.wake.notify_one();
    }
}

async fn watch_namespaces(shared: Arc<Shared>) {
    let api: Api<Namespace> = Api::all(shared.client.clone());
    let mut stream = watcher::watcher(api, watcher_config())
        .default_backoff()
        .boxed();
    while let Some(ev) = stream.next().await {
        let mut inner = shared.lock();
        match ev {
            Err(e) => tracing::debug!(error = %e, "namespace watch failed; retrying"),
            Ok(WatchEvent::Init) => inner.cache.namespaces.clear(),
            Ok(WatchEvent::InitApply(ns) | WatchEvent::Apply(ns)) => {
                let name = ns.metadata.name.clone().unwrap_or_default();
                inner
                    .cache
                    .namespaces
                    .insert(name, ns.metadata.labels.clone().unwrap_or_default());
            }
            Ok(WatchEvent::Delete(ns)) => {
                inner
                    .cache
                    .namespaces
                    .remove(ns.metadata.name.as_deref().unwrap_or_default());
            }
            Ok(WatchEvent::InitDone) => {}
        }
    }
}

async fn watch_pods(shared: Arc<Shared>) {
    let api: Api<Pod> = Api::all(shared.client.clone());
    let mut stream = watcher::watcher(api, watcher_config())
        .default_backoff()
        .boxed();
    let mut buffer: Vec<Pod> = Vec::new();
    while let Some(ev) = stream.next().await {
        let now = Instant::now();
        match ev {
            Err(e) => tracing::warn!(error = %e, "pod watch failed; retrying"),
            Ok(WatchEvent::Init) => buffer.clear(),
            Ok(WatchEvent::InitApply(p)) => buffer.push(p),
            Ok(WatchEvent::InitDone) => {
                let mut inner = shared.lock();
                let keys: HashSet<String> = buffer.iter().map(pod_key).collect();
                inner.cache.clear_bound_pods();
                inner.queue.retain(&keys);
                for p in buffer.drain(..) {
                    apply_pod(&mut inner, &shared.config, p, now);
                }
                inner.pods_synced = true;
            }
            Ok(WatchEvent::Apply(p)) => {
                let mut inner = shared.lock();
                apply_pod(&mut inner, &shared.config, p, now);
            }
            Ok(WatchEvent::Delete(p)) => {
                let mut inner = shared.lock();
                let key = pod_key(&p);
                inner.queue.delete(&key);
                if inner.cache.is_placed(&key) {
                    inner.cache.remove_pod(&key);
                    inner.queue.move_for(ClusterEvent::AssignedPodDelete, now);
                }
            }
        }
        shared.wake.notify_one();
    }
}

/// A pod added or changed: assigned pods count on their node; pending pods that are ours,
/// not gated and not being deleted wait in the queue.
fn apply_pod(inner: &mut Inner, config: &Config, pod: Pod, now: Instant) {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    let terminal = matches!(phase, Some("Succeeded" | "Failed"));
    let info = Arc::new(PodInfo::new(Arc::new(pod)));
    let key = info.key.clone();
    if info.node_name().is_some() {
        inner.queue.delete(&key);
        if terminal {
            if inner.cache.is_placed(&key) {
                inner.cache.remove_pod(&key);
                inner.queue.move_for(ClusterEvent::AssignedPodDelete, now);
            }
            return;
        }
        let new = !inner.cache.is_placed(&key) || inner.cache.is_assumed(&key);
        inner.cache.upsert_assigned_pod(info);
        if new {
            inner.queue.move_for(ClusterEvent::AssignedPodAdd, now);
        }
        return;
    }
    if inner.cache.is_assumed(&key) {
        return; // its binding is in flight
    }
    let spec = info.pod.spec.as_ref();
    let ours = spec
        .and_then(|s| s.scheduler_name.as_deref())
        .unwrap_or("default-scheduler")
        == config.scheduler_name;
    let gated = spec
        .and_then(|s| s.scheduling_gates.as_ref())
        .is_some_and(|g| !g.is_empty());
    if !ours || gated || terminal || info.terminating {
        inner.queue.delete(&key);
        return;
    }
    inner.queue.add_or_update(info, now);
}
