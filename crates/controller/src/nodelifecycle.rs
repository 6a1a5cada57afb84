//! Node lifecycle (upstream's `nodelifecycle`) and NoExecute taint eviction (upstream's
//! `taint-eviction-controller`).
//!
//! **Health.** Every `node-monitor-period` the lifecycle loop looks at each node's two
//! heartbeats: the `renewTime` of its Lease in `kube-node-lease` and the `lastHeartbeatTime`
//! of its `Ready` condition. As upstream, the node's clock is never compared with ours: the
//! loop remembers, on its own clock, when it last saw either value change (the probe time).
//! A node not heard from for `node-monitor-grace-period` gets `Ready` (and `MemoryPressure`,
//! `DiskPressure`, `PIDPressure`) set to `Unknown` with reason `NodeStatusUnknown` ("Kubelet
//! stopped posting node status."), or `NodeStatusNeverUpdated` when it never posted one.
//! Pods on a node whose `Ready` is not `True` get their own `Ready` condition set to `False`.
//!
//! **Taints.** `NoSchedule` taints follow the conditions at once (`not-ready`,
//! `unreachable`, `memory-pressure`, `disk-pressure`, `pid-pressure`, `network-unavailable`,
//! and `unschedulable` from `spec.unschedulable`). The `NoExecute` taints `not-ready`
//! (`Ready=False`) and `unreachable` (`Ready=Unknown`) are added through a per-zone token
//! bucket (`node-eviction-rate` nodes/s in a healthy zone; `secondary-node-eviction-rate` in a
//! partially disrupted zone larger than `large-cluster-size-threshold`, 0 in a smaller one),
//! swapped between each other at once, and removed at once when the node is Ready again.
//! When every zone is fully disrupted (no Ready node at all), as upstream, the controller
//! assumes its own network is the problem: it removes the `NoExecute` taints and evicts
//! nothing.
//!
//! **Eviction.** The taint eviction loop deletes the pods of nodes with `NoExecute` taints: a
//! pod that does not tolerate one of them at once, a pod that tolerates them all for a while
//! (`tolerationSeconds`, the smallest that applies) that long after the loop first saw it
//! tainted, a pod tolerating them forever never. Before deleting, it adds the
//! `DisruptionTarget` condition (reason `DeletionByTaintManager`).
//!
//! **Events**, as upstream: `node-controller` records on the Node `RegisteredNode` / `RemovingNode`
//! (`Node <n> event: Registered Node <n> in Controller`) when the loop first sees a node or sees
//! it gone, `NodeNotReady` (`Node <n> status is now: NodeNotReady`) when its Ready leaves True,
//! and `NodeNotReady` (Warning, `Node is not ready`) on each pod it marks not ready;
//! `taint-eviction-controller` records `TaintManagerEviction` on the pod (`Marking for deletion
//! Pod <ns>/<name>` before deleting, `Cancelling deletion of Pod <ns>/<name>` when a pod waiting
//! out its `tolerationSeconds` no longer has to).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt as _, StreamExt as _};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, ObjectReference, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource as _, ResourceExt as _};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::NodeConfig;
use crate::events::{EventType, Recorder};
use crate::util::{self, Shared};

/// The component name of the lifecycle loop's events (upstream's `node-controller`).
const COMPONENT: &str = "node-controller";
/// The component name of the taint eviction loop's events.
const EVICTION_COMPONENT: &str = "taint-eviction-controller";

/// The namespace of the node Leases.
const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

pub(crate) const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
pub(crate) const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
const TAINT_MEMORY_PRESSURE: &str = "node.kubernetes.io/memory-pressure";
const TAINT_DISK_PRESSURE: &str = "node.kubernetes.io/disk-pressure";
const TAINT_PID_PRESSURE: &str = "node.kubernetes.io/pid-pressure";
const TAINT_NETWORK_UNAVAILABLE: &str = "node.kubernetes.io/network-unavailable";

/// The `NoSchedule` taints this controller owns.
const NO_SCHEDULE_KEYS: &[&str] = &[
    TAINT_NOT_READY,
    TAINT_UNREACHABLE,
    TAINT_UNSCHEDULABLE,
    TAINT_MEMORY_PRESSURE,
    TAINT_DISK_PRESSURE,
    TAINT_PID_PRESSURE,
    TAINT_NETWORK_UNAVAILABLE,
];

/// Conditions set to Unknown when the kubelet stops posting status.
const KUBELET_CONDITIONS: &[&str] = &["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];

/// What the lifecycle loop remembers of a node between passes.
#[derive(Debug)]
struct Health {
    /// The node's uid (for the `RemovingNode` event once it is gone).
    uid: Option<String>,
    heartbeat: Option<Timestamp>,
    lease: Option<Timestamp>,
    /// When (our clock) either heartbeat last changed.
    probe: Instant,
    /// The Ready status seen at the end of the last pass (the node's own on first sight).
    ready: Option<String>,
    /// Marking the node's pods not ready failed: try again on the next pass while the node
    /// stays not ready.
    mark_pods_pending: bool,
}

/// Whether a pass marks a node's pods not ready: when the node's Ready status leaves `True`
/// (`was` → `now`), or to retry a failed attempt while it stays not ready.
fn mark_pods(was: Option<&str>, now: Option<&str>, pending: bool) -> bool {
    now != Some("True") && (was == Some("True") || pending)
}

/// Upstream's `flowcontrol` token bucket with a burst of 1; rate 0 never gives a token.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: f64) -> Self {
        Bucket {
            rate,
            tokens: 1.0,
            last: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return false;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(1.0);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ZoneState {
    Normal,
    PartialDisruption,
    FullDisruption,
}

/// The zone key of a node: region and zone labels, as upstream's `GetZoneKey`.
fn zone_of(node: &Node) -> String {
    let labels = node.labels();
    let region = labels
        .get("topology.kubernetes.io/region")
        .map(String::as_str)
        .unwrap_or("");
    let zone = labels
        .get("topology.kubernetes.io/zone")
        .map(String::as_str)
        .unwrap_or("");
    if region.is_empty() && zone.is_empty() {
        String::new()
    } else {
        format!("{region}:\x00:{zone}")
    }
}

fn condition<'a>(node: &'a Node, type_: &str) -> Option<&'a NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

fn condition_true(node: &Node, type_: &str) -> bool {
    condition(node, type_).is_some_and(|c| c.status == "True")
}

fn taints(node: &Node) -> Vec<Taint> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
}

fn has_taint(node: &Node, key: &str, effect: &str) -> bool {
    taints(node)
        .iter()
        .any(|t| t.key == key && t.effect == effect)
}

struct Lifecycle {
    client: Client,
    events: Recorder,
    config: NodeConfig,
    nodes: Store<Node>,
    leases: Store<Lease>,
    pods: Store<Pod>,
    health: HashMap<String, Health>,
    buckets: HashMap<String, (ZoneState, Bucket)>,
    /// Nodes waiting for a NoExecute taint, per zone, in order.
    queues: HashMap<String, VecDeque<String>>,
    all_disrupted: bool,
}

pub(crate) async fn run(shared: Arc<Shared>, config: NodeConfig, stop: watch::Receiver<bool>) {
    let client = shared.client.clone();
    let (nodes, nodes_fill) = util::reflect(Api::<Node>::all(client.clone()));
    let (leases, leases_fill) = util::reflect(Api::<Lease>::namespaced(
        client.clone(),
        NODE_LEASE_NAMESPACE,
    ));
    let (pods, pods_fill) = util::reflect(Api::<Pod>::all(client.clone()));
    let period = Duration::from_secs(config.node_monitor_period);
    let mut lc = Lifecycle {
        client,
        events: shared.events.clone(),
        config,
        nodes,
        leases,
        pods,
        health: HashMap::new(),
        buckets: HashMap::new(),
        queues: HashMap::new(),
        all_disrupted: false,
    };
    let work = async {
        let _ = lc.nodes.wait_until_ready().await;
        let _ = lc.leases.wait_until_ready().await;
        let _ = lc.pods.wait_until_ready().await;
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            lc.monitor().await;
        }
    };
    tokio::select! {
        _ = crate::stopped(stop) => {}
        _ = nodes_fill => {}
        _ = leases_fill => {}
        _ = pods_fill => {}
        _ = work => {}
    }
}

impl Lifecycle {
    #[tracing::instrument(skip_all)]
    async fn monitor(&mut self) {
        let now = Instant::now();
        let grace = Duration::from_secs(self.config.node_monitor_grace_period);
        let nodes = self.nodes.state();
        let events = &self.events;
        self.health.retain(|name, h| {
            let known = nodes.iter().any(|n| n.name_any() == *name);
            if !known {
                tracing::info!(node = %name, "controller observed a node deletion");
                node_event(
                    events,
                    name,
                    h.uid.clone(),
                    "RemovingNode",
                    format!("Removing Node {name} from Controller"),
                );
            }
            known
        });
        // (node, zone, Ready status as observed after this pass)
        let mut observed: Vec<(Arc<Node>, String, Option<String>)> = Vec::new();
        for node in &nodes {
            let name = node.name_any();
            let heartbeat = condition(node, "Ready")
                .and_then(|c| c.last_heartbeat_time.as_ref())
                .map(|t| t.0);
            let lease = self
                .leases
                .get(&ObjectRef::new(&name).within(NODE_LEASE_NAMESPACE))
                .and_then(|l| l.spec.as_ref()?.renew_time.as_ref().map(|t| t.0));
            let h = self.health.entry(name.clone()).or_insert_with(|| {
                tracing::info!(node = %name, "controller observed a new node");
                node_event(
                    &self.events,
                    &name,
                    node.uid(),
                    "RegisteredNode",
                    format!("Registered Node {name} in Controller"),
                );
                Health {
                    uid: node.uid(),
                    heartbeat,
                    lease,
                    probe: now,
                    ready: condition(node, "Ready").map(|c| c.status.clone()),
                    mark_pods_pending: false,
                }
            });
            if h.heartbeat != heartbeat || h.lease != lease {
                h.heartbeat = heartbeat;
                h.lease = lease;
                h.probe = now;
            }
            let mut ready = condition(node, "Ready").map(|c| c.status.clone());
            if now.saturating_duration_since(h.probe) > grace {
                match self.mark_unknown(node).await {
                    Ok(()) => ready = Some("Unknown".into()),
                    Err(e) => {
                        tracing::warn!(node = %name, error = %e, "cannot mark node status Unknown")
                    }
                }
            }
            observed.push((node.clone(), zone_of(node), ready));
        }
        for (node, _, ready) in &observed {
            if let Err(e) = self.no_schedule_taints(node, ready.as_deref()).await {
                tracing::warn!(node = %node.name_any(), error = %e, "cannot update NoSchedule taints");
            }
            // As upstream: the pods are marked not ready once, when the node leaves Ready (and
            // again only to retry a failed attempt) — not on every pass while it is not ready,
            // which would fight whatever marks them ready (and a node that never reported
            // Ready has nothing to take back).
            let name = node.name_any();
            let Some(h) = self.health.get_mut(&name) else {
                continue;
            };
            let was = std::mem::replace(&mut h.ready, ready.clone());
            if was.as_deref() == Some("True") && ready.as_deref() != Some("True") {
                // Upstream's `RecordNodeStatusChange`, once per transition.
                self.events.event_ref(
                    COMPONENT,
                    node_ref(&name, node.uid()),
                    EventType::Normal,
                    "NodeNotReady",
                    format!("Node {name} status is now: NodeNotReady"),
                );
            }
            if !mark_pods(was.as_deref(), ready.as_deref(), h.mark_pods_pending) {
                if ready.as_deref() == Some("True") {
                    h.mark_pods_pending = false;
                }
                continue;
            }
            let result = self.mark_pods_not_ready(&name).await;
            if let Err(e) = &result {
                tracing::warn!(node = %name, error = %e, "cannot mark pods not ready");
            }
            if let Some(h) = self.health.get_mut(&name) {
                h.mark_pods_pending = result.is_err();
            }
        }
        self.no_execute_taints(&observed, now).await;
    }

    /// Sets the kubelet's conditions to Unknown (upstream's `tryUpdateNodeHealth` after the
    /// grace period). Writes only what changes.
    async fn mark_unknown(&self, node: &Node) -> Result<(), kube::Error> {
        let now = Time(Timestamp::now());
        let created = node.metadata.creation_timestamp.clone();
        let mut changed = Vec::new();
        for type_ in KUBELET_CONDITIONS {
            match condition(node, type_) {
                Some(c) if c.status == "Unknown" => {}
                Some(c) => changed.push(NodeCondition {
                    status: "Unknown".into(),
                    reason: Some("NodeStatusUnknown".into()),
                    message: Some("Kubelet stopped posting node status.".into()),
                    last_transition_time: Some(now.clone()),
                    ..c.clone()
                }),
                None => changed.push(NodeCondition {
                    type_: (*type_).into(),
                    status: "Unknown".into(),
                    reason: Some("NodeStatusNeverUpdated".into()),
                    message: Some("Kubelet never posted node status.".into()),
                    last_heartbeat_time: created.clone(),
                    last_transition_time: Some(now.clone()),
                }),
            }
        }
        if changed.is_empty() {
            return Ok(());
        }
        tracing::info!(node = %node.name_any(), "node stopped posting status; Ready=Unknown");
        Api::<Node>::all(self.client.clone())
            .patch_status(
                &node.name_any(),
                &PatchParams::default(),
                &Patch::Strategic(json!({"status": {"conditions": changed}})),
            )
            .await?;
        Ok(())
    }

    /// Upstream's `doNoScheduleTaintingPass`: the NoSchedule taints the node's conditions
    /// (as observed in this pass) and `spec.unschedulable` call for.
    async fn no_schedule_taints(
        &self,
        node: &Node,
        ready: Option<&str>,
    ) -> Result<(), kube::Error> {
        let mut want: Vec<&str> = Vec::new();
        match ready {
            Some("False") => want.push(TAINT_NOT_READY),
            Some("Unknown") => want.push(TAINT_UNREACHABLE),
            _ => {}
        }
        for (cond, key) in [
            ("MemoryPressure", TAINT_MEMORY_PRESSURE),
            ("DiskPressure", TAINT_DISK_PRESSURE),
            ("PIDPressure", TAINT_PID_PRESSURE),
            ("NetworkUnavailable", TAINT_NETWORK_UNAVAILABLE),
        ] {
            if condition_true(node, cond) {
                want.push(key);
            }
        }
        if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
            want.push(TAINT_UNSCHEDULABLE);
        }
        self.update_taints(node, |current| {
            let mut next: Vec<Taint> = current
                .iter()
                .filter(|t| {
                    !(t.effect == "NoSchedule"
                        && NO_SCHEDULE_KEYS.contains(&t.key.as_str())
                        && !want.contains(&t.key.as_str()))
                })
                .cloned()
                .collect();
            for key in &want {
                if !next
                    .iter()
                    .any(|t| t.key == *key && t.effect == "NoSchedule")
                {
                    next.push(Taint {
                        key: (*key).into(),
                        effect: "NoSchedule".into(),
                        ..Taint::default()
                    });
                }
            }
            next
        })
        .await
    }

    /// Rewrites the node's taints with `f`. `stale` (the watch cache's node) decides whether
    /// anything is to be done; the write applies `f` to the live node's taints, guarded by
    /// its resourceVersion, retrying on conflicts (other writers of the node: the kubelet,
    /// this loop's own status write).
    async fn update_taints(
        &self,
        stale: &Node,
        f: impl Fn(&[Taint]) -> Vec<Taint>,
    ) -> Result<(), kube::Error> {
        let seen = taints(stale);
        if f(&seen) == seen {
            return Ok(());
        }
        let api = Api::<Node>::all(self.client.clone());
        let name = stale.name_any();
        for _ in 0..5 {
            let Some(live) = api.get_opt(&name).await? else {
                return Ok(());
            };
            let current = taints(&live);
            let next = f(&current);
            if next == current {
                return Ok(());
            }
            let patch = json!({
                "metadata": {"resourceVersion": live.resource_version()},
                "spec": {"taints": next},
            });
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(e),
            }
        }
        tracing::debug!(node = %name, "taints not updated after 5 conflicts; next pass");
        Ok(())
    }

    /// Upstream's `MarkPodsNotReady`: the Ready condition of the node's pods goes False.
    async fn mark_pods_not_ready(&self, node: &str) -> Result<(), kube::Error> {
        for pod in self.pods.state() {
            if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(node)
                || !crate::util::pod_ready(&pod)
            {
                continue;
            }
            let ns = pod.namespace().unwrap_or_default();
            let patch = json!({"status": {"conditions": [{
                "type": "Ready",
                "status": "False",
                "lastTransitionTime": Timestamp::now().to_string(),
            }]}});
            match Api::<Pod>::namespaced(self.client.clone(), &ns)
                .patch_status(
                    &pod.name_any(),
                    &PatchParams::default(),
                    &Patch::Strategic(patch),
                )
                .await
            {
                Ok(_) => {
                    // After the write, so that the pod still exists (as upstream).
                    self.events.event(
                        COMPONENT,
                        pod.as_ref(),
                        EventType::Warning,
                        "NodeNotReady",
                        "Node is not ready".into(),
                    );
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Upstream's `handleDisruption` + `doNoExecuteTaintingPass`.
    async fn no_execute_taints(
        &mut self,
        observed: &[(Arc<Node>, String, Option<String>)],
        now: Instant,
    ) {
        // Zone states.
        let mut counts: HashMap<&str, (usize, usize)> = HashMap::new();
        for (_, zone, ready) in observed {
            let e = counts.entry(zone.as_str()).or_default();
            if ready.as_deref() == Some("True") {
                e.0 += 1;
            } else {
                e.1 += 1;
            }
        }
        let threshold = self.config.unhealthy_zone_threshold;
        let states: HashMap<String, (ZoneState, usize)> = counts
            .iter()
            .map(|(z, (ready, not_ready))| {
                let state = if *ready == 0 && *not_ready > 0 {
                    ZoneState::FullDisruption
                } else if *not_ready > 2
                    && (*not_ready as f64) / ((*ready + *not_ready) as f64) >= threshold
                {
                    ZoneState::PartialDisruption
                } else {
                    ZoneState::Normal
                };
                ((*z).to_string(), (state, ready + not_ready))
            })
            .collect();
        let all_disrupted = !states.is_empty()
            && states
                .values()
                .all(|(s, _)| *s == ZoneState::FullDisruption);
        if all_disrupted != self.all_disrupted {
            if all_disrupted {
                tracing::warn!("no node is Ready: entering master disruption mode, no evictions");
            } else {
                tracing::info!("some node is Ready again: leaving master disruption mode");
            }
            self.all_disrupted = all_disrupted;
        }
        if all_disrupted {
            self.queues.clear();
            for (node, _, _) in observed {
                self.set_no_execute(node, None).await;
            }
            return;
        }
        // Rate per zone; a changed state gets a new (full) bucket, as upstream swaps limiters.
        for (zone, (state, size)) in &states {
            let rate = match state {
                ZoneState::Normal | ZoneState::FullDisruption => self.config.node_eviction_rate,
                ZoneState::PartialDisruption => {
                    if *size > self.config.large_cluster_size_threshold as usize {
                        self.config.secondary_node_eviction_rate
                    } else {
                        0.0
                    }
                }
            };
            let entry = self
                .buckets
                .entry(zone.clone())
                .or_insert_with(|| (*state, Bucket::new(rate)));
            if entry.0 != *state {
                *entry = (*state, Bucket::new(rate));
            }
        }
        self.buckets.retain(|z, _| states.contains_key(z));
        for (node, zone, ready) in observed {
            let name = node.name_any();
            let want = match ready.as_deref() {
                Some("False") => Some(TAINT_NOT_READY),
                Some("Unknown") => Some(TAINT_UNREACHABLE),
                _ => None,
            };
            let has_not_ready = has_taint(node, TAINT_NOT_READY, "NoExecute");
            let has_unreachable = has_taint(node, TAINT_UNREACHABLE, "NoExecute");
            let queue = self.queues.entry(zone.clone()).or_default();
            match want {
                None => {
                    queue.retain(|n| *n != name);
                    if has_not_ready || has_unreachable {
                        self.set_no_execute(node, None).await;
                    }
                }
                Some(key) => {
                    let has_wanted = has_taint(node, key, "NoExecute");
                    if has_wanted && !(has_not_ready && has_unreachable) {
                        queue.retain(|n| *n != name);
                    } else if has_not_ready || has_unreachable {
                        // Swapping one for the other is not rate limited.
                        queue.retain(|n| *n != name);
                        self.set_no_execute(node, Some(key)).await;
                    } else if !queue.contains(&name) {
                        queue.push_back(name);
                    }
                }
            }
        }
        // Taint queued nodes as the zone's bucket allows.
        let by_name: HashMap<String, (&Arc<Node>, Option<&str>)> = observed
            .iter()
            .map(|(n, _, r)| (n.name_any(), (n, r.as_deref())))
            .collect();
        let zones: Vec<String> = self.queues.keys().cloned().collect();
        for zone in zones {
            while let Some(front) = self.queues.get(&zone).and_then(|q| q.front().cloned()) {
                let Some((node, ready)) = by_name.get(&front) else {
                    if let Some(q) = self.queues.get_mut(&zone) {
                        q.pop_front();
                    }
                    continue;
                };
                let ok = self
                    .buckets
                    .get_mut(&zone)
                    .is_some_and(|(_, b)| b.take(now));
                if !ok {
                    break;
                }
                if let Some(q) = self.queues.get_mut(&zone) {
                    q.pop_front();
                }
                let key = if *ready == Some("False") {
                    TAINT_NOT_READY
                } else {
                    TAINT_UNREACHABLE
                };
                tracing::info!(node = %front, taint = key, "tainting node for eviction");
                self.set_no_execute(node, Some(key)).await;
            }
        }
        self.queues.retain(|_, q| !q.is_empty());
    }

    /// Leaves exactly `key` (or none) of the two NoExecute taints on the node.
    async fn set_no_execute(&self, node: &Node, key: Option<&str>) {
        let result = self
            .update_taints(node, |current| {
                let mut next: Vec<Taint> = current
                    .iter()
                    .filter(|t| {
                        !(t.effect == "NoExecute"
                            && (t.key == TAINT_NOT_READY || t.key == TAINT_UNREACHABLE)
                            && Some(t.key.as_str()) != key)
                    })
                    .cloned()
                    .collect();
                if let Some(key) = key
                    && !next.iter().any(|t| t.key == key && t.effect == "NoExecute")
                {
                    next.push(Taint {
                        key: key.into(),
                        effect: "NoExecute".into(),
                        time_added: Some(Time(Timestamp::now())),
                        value: None,
                    });
                }
                next
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(node = %node.name_any(), error = %e, "cannot update NoExecute taints");
        }
    }
}

// -------------------------------------------------------------------------------------------
// taint eviction

/// Upstream's `ToleratesTaint`.
/// The reference upstream's node events carry: kind, name and uid, no namespace (the Event
/// goes to `default`).
fn node_ref(name: &str, uid: Option<String>) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(name.into()),
        uid,
        ..ObjectReference::default()
    }
}

/// Upstream's `RecordNodeEvent`: a Normal event `Node <name> event: <message>`.
fn node_event(events: &Recorder, name: &str, uid: Option<String>, reason: &str, message: String) {
    events.event_ref(
        COMPONENT,
        node_ref(name, uid),
        EventType::Normal,
        reason,
        format!("Node {name} event: {message}"),
    );
}

/// The taint manager's pod events (`TaintManagerEviction`), about `namespace/name` without a
/// uid, as upstream's `emitPodDeletionEvent` / `emitCancelPodDeletionEvent`.
fn eviction_event(events: &Recorder, pod: &(String, String), message: &str) {
    let (ns, name) = pod;
    events.event_ref(
        EVICTION_COMPONENT,
        ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            ..ObjectReference::default()
        },
        EventType::Normal,
        "TaintManagerEviction",
        format!("{message} Pod {ns}/{name}"),
    );
}

pub(crate) fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(e) = t.effect.as_deref().filter(|e| !e.is_empty())
        && e != taint.effect
    {
        return false;
    }
    if let Some(k) = t.key.as_deref().filter(|k| !k.is_empty())
        && k != taint.key
    {
        return false;
    }
    match t.operator.as_deref() {
        Some("Exists") => true,
        None | Some("") | Some("Equal") => {
            t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        Some(_) => false,
    }
}

/// What to do with a pod on a node with these NoExecute taints: `None` = never evict,
/// `Some(d)` = evict `d` after first seeing it so (zero: at once).
pub(crate) fn eviction_delay(tolerations: &[Toleration], taints: &[Taint]) -> Option<Duration> {
    let mut min: Option<Duration> = None;
    let mut any = false;
    for taint in taints {
        let Some(t) = tolerations.iter().find(|t| tolerates(t, taint)) else {
            return Some(Duration::ZERO);
        };
        any = true;
        if let Some(secs) = t.toleration_seconds {
            let d = Duration::from_secs(secs.max(0).unsigned_abs());
            min = Some(min.map_or(d, |m| m.min(d)));
        }
    }
    if any { min } else { None }
}

pub(crate) async fn run_taint_eviction(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let client = shared.client.clone();
    let (nodes, nodes_writer) = reflector::store::<Node>();
    let (pods, pods_writer) = reflector::store::<Pod>();
    let node_events = reflector::reflector(
        nodes_writer,
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .map(|_| ());
    let pod_events = reflector::reflector(
        pods_writer,
        watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .map(|_| ());
    let mut events = futures::stream::select(node_events, pod_events).boxed();
    let stopped = crate::stopped(stop);
    tokio::pin!(stopped);
    // pod uid → when this loop first saw it on a NoExecute-tainted node, and its name.
    let mut first_seen: HashMap<String, (Instant, (String, String))> = HashMap::new();
    let mut evicted: HashSet<String> = HashSet::new();
    let mut next: Option<Instant> = None;
    loop {
        let wake = async {
            match next {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut stopped => return,
            ev = events.next() => if ev.is_none() { return },
            _ = wake => {}
        }
        // Take whatever else is ready, then look once.
        while let Some(Some(())) = events.next().now_or_never() {}
        if nodes.wait_until_ready().now_or_never().is_none()
            || pods.wait_until_ready().now_or_never().is_none()
        {
            continue;
        }
        next = evict_pass(
            &client,
            &shared.events,
            &nodes,
            &pods,
            &mut first_seen,
            &mut evicted,
        )
        .await;
    }
}

/// One look at every bound pod; returns when the next timed eviction is due.
///
/// A pod whose eviction was waiting for its `tolerationSeconds` and that no longer needs it
/// (the taint went, the pod went) gets upstream's `Cancelling deletion of Pod` event; every
/// eviction `Marking for deletion Pod` before the pod is deleted.
async fn evict_pass(
    client: &Client,
    events: &Recorder,
    nodes: &Store<Node>,
    pods: &Store<Pod>,
    first_seen: &mut HashMap<String, (Instant, (String, String))>,
    evicted: &mut HashSet<String>,
) -> Option<Instant> {
    let now = Instant::now();
    let mut next: Option<Instant> = None;
    let mut live: HashSet<String> = HashSet::new();
    for pod in pods.state() {
        let uid = pod.uid().unwrap_or_default();
        live.insert(uid.clone());
        if pod.metadata.deletion_timestamp.is_some() || evicted.contains(&uid) {
            continue;
        }
        let Some(node_name) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        let no_execute: Vec<Taint> = nodes
            .get(&ObjectRef::new(&node_name))
            .map(|n| taints(&n))
            .unwrap_or_default()
            .into_iter()
            .filter(|t| t.effect == "NoExecute")
            .collect();
        let key = (pod.namespace().unwrap_or_default(), pod.name_any());
        let mut cancel = |uid: &str| {
            if let Some((_, key)) = first_seen.remove(uid) {
                eviction_event(events, &key, "Cancelling deletion of");
            }
        };
        if no_execute.is_empty() {
            cancel(&uid);
            continue;
        }
        let tolerations = pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.clone())
            .unwrap_or_default();
        let Some(delay) = eviction_delay(&tolerations, &no_execute) else {
            cancel(&uid);
            continue;
        };
        let since = first_seen
            .entry(uid.clone())
            .or_insert((now, key.clone()))
            .0;
        let due = since + delay;
        if due > now {
            next = Some(next.map_or(due, |n| n.min(due)));
            continue;
        }
        eviction_event(events, &key, "Marking for deletion");
        match evict(client, &pod).await {
            Ok(()) => {
                evicted.insert(uid.clone());
                first_seen.remove(&uid);
            }
            Err(e) => {
                tracing::warn!(pod = %ObjectRef::from_obj(pod.as_ref()), error = %e, "taint eviction failed; retrying");
                let retry = now + Duration::from_secs(1);
                next = Some(next.map_or(retry, |n| n.min(retry)));
            }
        }
    }
    first_seen.retain(|uid, (_, key)| {
        let keep = live.contains(uid);
        if !keep {
            eviction_event(events, key, "Cancelling deletion of");
        }
        keep
    });
    evicted.retain(|uid| live.contains(uid));
    next
}

/// Upstream's `addConditionAndDeletePod`.
async fn evict(client: &Client, pod: &Pod) -> Result<(), kube::Error> {
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    tracing::info!(pod = %format!("{ns}/{name}"), "deleting pod for a NoExecute taint (TaintManagerEviction)");
    let condition = json!({"status": {"conditions": [{
        "type": "DisruptionTarget",
        "status": "True",
        "reason": "DeletionByTaintManager",
        "message": "Taint manager: deleting due to NoExecute taint",
        "lastTransitionTime": Timestamp::now().to_string(),
    }]}});
    match api
        .patch_status(&name, &PatchParams::default(), &Patch::Strategic(condition))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(e) => return Err(e),
    }
    let mut dp = DeleteParams::default();
    if let Some(uid) = pod.meta().uid.clone() {
        dp.preconditions = Some(kube::api::Preconditions {
            uid: Some(uid),
            resource_version: None,
        });
    }
    match api.delete(&name, &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn taint(key: &str) -> Taint {
        Taint {
            key: key.into(),
            effect: "NoExecute".into(),
            ..Taint::default()
        }
    }

    fn tol(key: &str, secs: Option<i64>) -> Toleration {
        Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: secs,
            value: None,
        }
    }

    #[test]
    fn pods_are_marked_not_ready_on_the_transition_only() {
        assert!(mark_pods(Some("True"), Some("Unknown"), false));
        assert!(mark_pods(Some("True"), Some("False"), false));
        assert!(mark_pods(Some("True"), None, false));
        // Still not ready on the next pass: nothing more, unless the last attempt failed.
        assert!(!mark_pods(Some("Unknown"), Some("Unknown"), false));
        assert!(mark_pods(Some("Unknown"), Some("Unknown"), true));
        // A node that never reported Ready (or went NeverUpdated) takes nothing back.
        assert!(!mark_pods(None, None, false));
        assert!(!mark_pods(None, Some("Unknown"), false));
        assert!(!mark_pods(Some("False"), Some("True"), true));
    }

    #[test]
    fn eviction_delay_is_the_smallest_toleration() {
        let t = [taint(TAINT_UNREACHABLE)];
        assert_eq!(eviction_delay(&[], &t), Some(Duration::ZERO));
        assert_eq!(eviction_delay(&[tol(TAINT_UNREACHABLE, None)], &t), None);
        assert_eq!(
            eviction_delay(&[tol(TAINT_UNREACHABLE, Some(300))], &t),
            Some(Duration::from_secs(300))
        );
        let both = [taint(TAINT_UNREACHABLE), taint("example.com/x")];
        assert_eq!(
            eviction_delay(&[tol(TAINT_UNREACHABLE, Some(300))], &both),
            Some(Duration::ZERO),
            "one taint not tolerated: at once"
        );
        let all = Toleration {
            operator: Some("Exists".into()),
            ..Toleration::default()
        };
        assert_eq!(
            eviction_delay(&[all, tol("example.com/x", Some(5))], &both),
            None,
            "the first matching toleration of each taint counts"
        );
        let equal = Toleration {
            key: Some("k".into()),
            value: Some("v".into()),
            ..Toleration::default()
        };
        let mut kv = taint("k");
        kv.value = Some("v".into());
        assert!(tolerates(&equal, &kv));
        kv.value = Some("w".into());
        assert!(!tolerates(&equal, &kv));
    }

    #[test]
    fn bucket_gives_one_token_then_waits_for_the_rate() {
        let mut b = Bucket::new(1.0);
        let t0 = b.last;
        assert!(b.take(t0));
        assert!(!b.take(t0 + Duration::from_millis(500)));
        assert!(b.take(t0 + Duration::from_millis(1100)));
        let mut zero = Bucket::new(0.0);
        assert!(!zero.take(t0));
    }
}
