//! The default plugins of upstream's scheduling framework that rk3s implements, in upstream's
//! order: filters say whether a pod can go on a node (and why not, in upstream's words),
//! scores rank the nodes that can take it.
//!
//! A [`CycleState`] is built once per pod per attempt (upstream's PreFilter/PreScore), from the
//! cache, so that each filter and score reads precomputed counts rather than every pod again.

use std::collections::HashMap;
use std::sync::Arc;

use crate::cache::{Cache, NodeInfo, PodInfo};

pub mod basic;
pub mod image_locality;
pub mod inter_pod_affinity;
pub mod node_affinity;
pub mod node_resources;
pub mod node_volume_limits;
pub mod topology_spread;
pub mod volume_binding;
pub mod volume_restrictions;
pub mod volume_zone;

/// Upstream's `MaxNodeScore`.
pub const MAX_NODE_SCORE: i64 = 100;

/// Why a node cannot take the pod. `Unresolvable` failures cannot be fixed by preempting
/// pods on the node (upstream `UnschedulableAndUnresolvable`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub plugin: &'static str,
    pub reasons: Vec<String>,
    pub unresolvable: bool,
}

impl Failure {
    pub fn unschedulable(plugin: &'static str, reason: impl Into<String>) -> Failure {
        Failure {
            plugin,
            reasons: vec![reason.into()],
            unresolvable: false,
        }
    }

    pub fn unresolvable(plugin: &'static str, reason: impl Into<String>) -> Failure {
        Failure {
            plugin,
            reasons: vec![reason.into()],
            unresolvable: true,
        }
    }
}

pub type FilterResult = Result<(), Failure>;

/// What the plugins precompute for one pod, before looking at nodes one by one.
#[derive(Debug)]
pub struct CycleState {
    pub pod: Arc<PodInfo>,
    pub node_affinity: node_affinity::State,
    pub spread: topology_spread::State,
    pub inter_pod: inter_pod_affinity::State,
    pub restrictions: volume_restrictions::State,
    pub volume_limits: node_volume_limits::State,
    pub volumes: volume_binding::State,
    pub zones: volume_zone::State,
}

impl CycleState {
    /// PreFilter: everything the filters need.
    pub fn new(pod: Arc<PodInfo>, cache: &Cache) -> CycleState {
        let node_affinity = node_affinity::State::new(&pod);
        let spread = topology_spread::State::new(&pod, &node_affinity, cache);
        let inter_pod = inter_pod_affinity::State::new(&pod, cache);
        // Upstream stops at the first PreFilter that rejects: VolumeRestrictions, then
        // (NodeVolumeLimits rejects in Filter only) VolumeBinding, then VolumeZone.
        let restrictions = volume_restrictions::State::new(&pod, cache);
        let (volume_limits, volumes, zones) = if restrictions.rejection.is_some() {
            Default::default()
        } else {
            let volume_limits = node_volume_limits::State::new(&pod, cache);
            let volumes = volume_binding::State::new(&pod, cache);
            let zones = if volumes.rejection.is_some() {
                volume_zone::State::default()
            } else {
                volume_zone::State::new(&pod, cache)
            };
            (volume_limits, volumes, zones)
        };
        CycleState {
            pod,
            node_affinity,
            spread,
            inter_pod,
            restrictions,
            volume_limits,
            volumes,
            zones,
        }
    }

    /// The PreFilter rejection, if any: then no node is looked at.
    pub fn rejection(&self) -> Option<&Failure> {
        self.restrictions
            .rejection
            .as_ref()
            .or(self.volumes.rejection.as_ref())
            .or(self.zones.rejection.as_ref())
    }

    /// Runs the filters in upstream's order; the first that fails decides.
    pub fn filter(&self, node: &NodeInfo) -> FilterResult {
        basic::node_unschedulable(&self.pod, node)?;
        basic::node_name(&self.pod, node)?;
        basic::taint_toleration(&self.pod, node)?;
        self.node_affinity.filter(node)?;
        basic::node_ports(&self.pod, node)?;
        node_resources::fit(&self.pod, node)?;
        self.restrictions.filter(&self.pod, node)?;
        self.volume_limits.filter(node)?;
        self.volumes.filter(node)?;
        self.zones.filter(node)?;
        self.spread.filter(&self.pod, node)?;
        self.inter_pod.filter(&self.pod, node)?;
        Ok(())
    }

    /// Scores `nodes` (all of which passed the filters): each plugin's normalized score (0 to
    /// 100) times its upstream default weight, summed.
    pub fn score(&self, cache: &Cache, nodes: &[&NodeInfo]) -> Vec<i64> {
        let mut total = vec![0i64; nodes.len()];
        let mut add = |weight: i64, scores: Vec<i64>| {
            for (t, s) in total.iter_mut().zip(scores) {
                *t += weight * s;
            }
        };
        // Weights: upstream's default plugin set (TaintToleration 3, NodeAffinity 2,
        // PodTopologySpread 2, InterPodAffinity 2, the others 1).
        add(3, basic::taint_toleration_scores(&self.pod, nodes));
        add(2, self.node_affinity.scores(nodes));
        add(2, self.spread.scores(&self.pod, cache, nodes));
        add(2, self.inter_pod.scores(&self.pod, cache, nodes));
        add(1, node_resources::least_allocated_scores(&self.pod, nodes));
        add(
            1,
            node_resources::balanced_allocation_scores(&self.pod, nodes),
        );
        add(1, image_locality::scores(&self.pod, cache, nodes));
        total
    }
}

/// Upstream's `DefaultNormalizeScore`: scales so the highest is 100 (reversed: lowest is 100).
pub fn normalize(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    if max == 0 {
        if reverse {
            scores.iter_mut().for_each(|s| *s = MAX_NODE_SCORE);
        }
        return;
    }
    for s in scores.iter_mut() {
        let v = MAX_NODE_SCORE * *s / max;
        *s = if reverse { MAX_NODE_SCORE - v } else { v };
    }
}

/// Histogram of failure reasons over nodes, as upstream's `FitError` prints it:
/// `0/3 nodes are available: 1 node(s) had untolerated taint {k: v}, 2 Insufficient cpu.`
pub fn fit_error_message(num_nodes: usize, failures: &HashMap<String, Failure>) -> String {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for f in failures.values() {
        for r in &f.reasons {
            *counts.entry(r.as_str()).or_default() += 1;
        }
    }
    let mut parts: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    let mut msg = format!("0/{num_nodes} nodes are available:");
    if !parts.is_empty() {
        msg.push(' ');
        msg.push_str(&parts.join(", "));
    }
    msg.push('.');
    msg
}

#[cfg(test)]
pub(crate) mod testutil {
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::{Node, Pod};
    use serde_json::{Value, json};

    use crate::cache::{Cache, NodeInfo, PodInfo};

    /// A node with 4 CPUs, 8 GiB, 110 pods, and the given labels, taints and extra fields.
    pub(crate) fn node(name: &str, labels: Value, spec: Value) -> Arc<Node> {
        let mut labels = labels;
        if let Some(m) = labels.as_object_mut() {
            m.entry("kubernetes.io/hostname").or_insert(json!(name));
        }
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "labels": labels},
                "spec": spec,
                "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}}
            }))
            .unwrap(),
        )
    }

    pub(crate) fn pod(name: &str, labels: Value, spec: Value) -> Arc<PodInfo> {
        let mut spec = spec;
        if spec.get("containers").is_none() {
            spec["containers"] = json!([{"name": "c"}]);
        }
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "labels": labels, "uid": name},
            "spec": spec
        }))
        .unwrap();
        Arc::new(PodInfo::new(Arc::new(p)))
    }

    pub(crate) fn cpu_pod(name: &str, cpu: &str) -> Arc<PodInfo> {
        pod(
            name,
            json!({}),
            json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}),
        )
    }

    pub(crate) fn cache(nodes: &[Arc<Node>], pods: &[(Arc<PodInfo>, &str)]) -> Cache {
        let mut c = Cache::default();
        for n in nodes {
            c.upsert_node(n.clone());
        }
        for (p, n) in pods {
            c.assume(p.clone(), n);
        }
        c
    }

    pub(crate) fn info(c: &Cache, name: &str) -> NodeInfo {
        c.node(name).unwrap().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_error_sorts_reasons_like_upstream() {
        let mut f = HashMap::new();
        f.insert(
            "a".to_string(),
            Failure::unresolvable("TaintToleration", "node(s) had untolerated taint {k: v}"),
        );
        f.insert(
            "b".to_string(),
            Failure::unschedulable("NodeResourcesFit", "Insufficient cpu"),
        );
        f.insert(
            "c".to_string(),
            Failure::unschedulable("NodeResourcesFit", "Insufficient cpu"),
        );
        assert_eq!(
            fit_error_message(3, &f),
            "0/3 nodes are available: 1 node(s) had untolerated taint {k: v}, 2 Insufficient cpu."
        );
    }

    #[test]
    fn normalize_scales_and_reverses() {
        let mut s = vec![0, 5, 10];
        normalize(&mut s, false);
        assert_eq!(s, vec![0, 50, 100]);
        let mut s = vec![0, 5, 10];
        normalize(&mut s, true);
        assert_eq!(s, vec![100, 50, 0]);
    }
}
