//! The pod garbage collector (`pod-garbage-collector`, upstream's `pkg/controller/podgc`).
//!
//! Every `pod-gc-period` (upstream: 20 s) it looks at the pods and nodes of its watch caches
//! and force-deletes (grace period 0):
//! - the oldest terminated pods (phase Succeeded or Failed; evicted ones first, then by
//!   creation time and name) beyond `terminated-pod-gc-threshold`;
//! - terminating pods on a node that is not Ready and carries the
//!   `node.kubernetes.io/out-of-service` taint;
//! - pods bound to a node that no longer exists: a node missing from the cache is quarantined
//!   for `pod-gc-quarantine` (upstream: 40 s), then confirmed absent by a live GET; its pods
//!   get the `DisruptionTarget` condition (`DeletionByPodGC`, "PodGC: node no longer exists");
//! - terminating pods that were never scheduled.
//!
//! A pod that is not yet terminal is first moved to phase `Failed` (with the condition, if
//! any) by a server-side apply of its status as field manager `PodGC`, as upstream does, so
//! that a pod without a kubelet does not stay `Running` forever.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;
use tokio::sync::watch;

use crate::settings::LoopConfig;
use crate::util::{self, Shared};

/// Field manager of the status patches (upstream's `fieldManager`).
const FIELD_MANAGER: &str = "PodGC";
/// The taint that lets PodGC delete terminating pods of a shut-down node.
const OUT_OF_SERVICE: &str = "node.kubernetes.io/out-of-service";

pub(crate) async fn run(shared: Arc<Shared>, config: LoopConfig, stop: watch::Receiver<bool>) {
    let client = shared.client.clone();
    let (pods, pods_fill) = util::reflect(Api::<Pod>::all(client.clone()));
    let (nodes, nodes_fill) = util::reflect(Api::<Node>::all(client.clone()));
    let mut gc = PodGc {
        shared,
        threshold: config.terminated_pod_gc_threshold as usize,
        quarantine: Duration::from_secs(config.pod_gc_quarantine),
        missing: HashMap::new(),
    };
    let period = Duration::from_secs(config.pod_gc_period);
    let work = async {
        let _ = pods.wait_until_ready().await;
        let _ = nodes.wait_until_ready().await;
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let pods: Vec<Arc<Pod>> = pods.state();
            let nodes: Vec<Arc<Node>> = nodes.state();
            gc.pass(&pods, &nodes).await;
        }
    };
    tokio::select! {
        _ = crate::stopped(stop) => {}
        _ = pods_fill => {}
        _ = nodes_fill => {}
        _ = work => {}
    }
}

struct PodGc {
    shared: Arc<Shared>,
    threshold: usize,
    quarantine: Duration,
    /// Nodes that pods name but the cache does not have, and since when.
    missing: HashMap<String, Instant>,
}

/// Why a pod is collected (log field).
#[derive(Debug, Clone, Copy)]
enum Reason {
    Terminated,
    OutOfService,
    Orphaned,
    UnscheduledTerminating,
}

impl PodGc {
    #[tracing::instrument(skip_all, name = "podgc")]
    async fn pass(&mut self, pods: &[Arc<Pod>], nodes: &[Arc<Node>]) {
        let mut doomed: Vec<(Arc<Pod>, Reason)> = Vec::new();
        if self.threshold > 0 {
            doomed.extend(
                terminated_over_threshold(pods, self.threshold)
                    .into_iter()
                    .map(|p| (p, Reason::Terminated)),
            );
        }
        let by_name: HashMap<String, &Node> =
            nodes.iter().map(|n| (n.name_any(), n.as_ref())).collect();
        let mut out_of_service: Vec<Arc<Pod>> = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_some())
            .filter(|p| {
                node_name(p)
                    .and_then(|n| by_name.get(n))
                    .is_some_and(|n| !node_ready(n) && has_taint(n, OUT_OF_SERVICE))
            })
            .cloned()
            .collect();
        out_of_service.sort_by(|a, b| eviction_then_age(a, b));
        doomed.extend(
            out_of_service
                .into_iter()
                .map(|p| (p, Reason::OutOfService)),
        );
        for name in self.deleted_nodes(pods, &by_name).await {
            doomed.extend(
                pods.iter()
                    .filter(|p| node_name(p) == Some(name.as_str()))
                    .map(|p| (p.clone(), Reason::Orphaned)),
            );
        }
        doomed.extend(
            pods.iter()
                .filter(|p| p.metadata.deletion_timestamp.is_some() && node_name(p).is_none())
                .map(|p| (p.clone(), Reason::UnscheduledTerminating)),
        );
        let mut seen = HashSet::new();
        doomed.retain(|(p, _)| seen.insert(util::key_of(&p.metadata)));
        let shared = self.shared.clone();
        futures::stream::iter(doomed)
            .for_each_concurrent(usize::from(shared.concurrency).max(1), |(pod, reason)| {
                let shared = shared.clone();
                async move {
                    if let Err(e) = delete(&shared, &pod, reason).await {
                        tracing::warn!(pod = %util::key_of(&pod.metadata), ?reason, error = %e, "cannot delete pod");
                    }
                }
            })
            .await;
    }

    /// Nodes that pods are bound to, missing from the cache for the quarantine and confirmed
    /// gone by a live read.
    async fn deleted_nodes(
        &mut self,
        pods: &[Arc<Pod>],
        existing: &HashMap<String, &Node>,
    ) -> Vec<String> {
        let now = Instant::now();
        let named: HashSet<&str> = pods.iter().filter_map(|p| node_name(p)).collect();
        self.missing
            .retain(|n, _| named.contains(n.as_str()) && !existing.contains_key(n));
        for n in named {
            if !existing.contains_key(n) {
                self.missing.entry(n.to_string()).or_insert(now);
            }
        }
        let due: Vec<String> = self
            .missing
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= self.quarantine)
            .map(|(n, _)| n.clone())
            .collect();
        let api: Api<Node> = Api::all(self.shared.client.clone());
        let mut gone = Vec::new();
        for n in due {
            match api.get_opt(&n).await {
                Ok(None) => {
                    self.missing.remove(&n);
                    gone.push(n);
                }
                Ok(Some(_)) => {
                    self.missing.remove(&n);
                }
                Err(e) => {
                    tracing::warn!(node = %n, error = %e, "cannot check whether the node exists")
                }
            }
        }
        gone
    }
}

fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

fn has_taint(node: &Node, key: &str) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| ts.iter().any(|t| t.key == key))
}

/// Upstream's `eviction.PodIsEvicted`.
fn evicted(pod: &Pod) -> bool {
    let s = pod.status.as_ref();
    s.and_then(|s| s.phase.as_deref()) == Some("Failed")
        && s.and_then(|s| s.reason.as_deref()) == Some("Evicted")
}

/// Upstream's `byEvictionAndCreationTimestamp`: evicted first, then oldest, then by name.
fn eviction_then_age(a: &Pod, b: &Pod) -> Ordering {
    evicted(b)
        .cmp(&evicted(a))
        .then_with(|| {
            let t = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
            t(a).cmp(&t(b))
        })
        .then_with(|| a.metadata.name.cmp(&b.metadata.name))
}

/// The terminated pods (Succeeded/Failed) to delete so that `threshold` remain, in upstream's
/// order.
pub(crate) fn terminated_over_threshold(pods: &[Arc<Pod>], threshold: usize) -> Vec<Arc<Pod>> {
    let mut terminated: Vec<Arc<Pod>> = pods
        .iter()
        .filter(|p| matches!(util::pod_phase(p), "Succeeded" | "Failed"))
        .cloned()
        .collect();
    let excess = terminated.len().saturating_sub(threshold);
    if excess == 0 {
        return Vec::new();
    }
    terminated.sort_by(|a, b| eviction_then_age(a, b));
    terminated.truncate(excess);
    terminated
}

/// Upstream's `markFailedAndDeletePodWithCondition`.
async fn delete(shared: &Shared, pod: &Pod, reason: Reason) -> Result<(), kube::Error> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.name_any();
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), &ns);
    tracing::info!(pod = %format!("{ns}/{name}"), ?reason, "PodGC is force deleting Pod");
    if !matches!(util::pod_phase(pod), "Succeeded" | "Failed") {
        let mut status = json!({"phase": "Failed"});
        if let Reason::Orphaned = reason {
            status["conditions"] = json!([{
                "type": "DisruptionTarget",
                "status": "True",
                "reason": "DeletionByPodGC",
                "message": "PodGC: node no longer exists",
                "lastTransitionTime": util::now().to_string(),
            }]);
        }
        let patch = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns}, "status": status});
        match api
            .patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(patch),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(kube::api::Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
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

    fn pod(name: &str, phase: &str, created: &str, reason: Option<&str>) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "d", "creationTimestamp": created},
                "spec": {"containers": []},
                "status": {"phase": phase, "reason": reason},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn terminated_pods_beyond_the_threshold_go_evicted_then_oldest_first() {
        let pods = vec![
            pod("new-done", "Succeeded", "2026-01-03T00:00:00Z", None),
            pod("running", "Running", "2026-01-01T00:00:00Z", None),
            pod("old-failed", "Failed", "2026-01-02T00:00:00Z", None),
            pod(
                "b-evicted",
                "Failed",
                "2026-01-04T00:00:00Z",
                Some("Evicted"),
            ),
            pod(
                "a-evicted",
                "Failed",
                "2026-01-04T00:00:00Z",
                Some("Evicted"),
            ),
        ];
        let names = |v: Vec<Arc<Pod>>| v.iter().map(|p| p.name_any()).collect::<Vec<_>>();
        assert_eq!(
            names(terminated_over_threshold(&pods, 4)),
            Vec::<String>::new()
        );
        assert_eq!(
            names(terminated_over_threshold(&pods, 1)),
            ["a-evicted", "b-evicted", "old-failed"]
        );
        assert_eq!(names(terminated_over_threshold(&pods, 0)).len(), 4);
    }
}
