//! Resource arithmetic: what a pod requests (upstream's `PodRequests`, with init containers,
//! sidecars and overhead) and what a node can allocate.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::quantity;

/// CPU (millicores) a container without a CPU request counts as when scoring (upstream's
/// `DefaultMilliCPURequest`).
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
/// Memory a container without a memory request counts as when scoring (200 MiB).
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

/// An amount of each resource. For a node's allocatable, `pods` is how many pods fit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    pub pods: i64,
    /// Extended resources (`example.com/gpu`), hugepages, attachable volumes.
    pub scalar: BTreeMap<String, i64>,
}

impl Resources {
    /// Reads a `ResourceList` (requests, overhead, allocatable).
    pub fn from_list(list: Option<&BTreeMap<String, Quantity>>) -> Resources {
        let mut r = Resources::default();
        for (name, q) in list.into_iter().flatten() {
            match name.as_str() {
                "cpu" => r.milli_cpu = quantity::milli_value(&q.0).unwrap_or(0),
                "memory" => r.memory = quantity::value(&q.0).unwrap_or(0),
                "ephemeral-storage" => r.ephemeral_storage = quantity::value(&q.0).unwrap_or(0),
                "pods" => r.pods = quantity::value(&q.0).unwrap_or(0),
                other => {
                    r.scalar
                        .insert(other.to_string(), quantity::value(&q.0).unwrap_or(0));
                }
            }
        }
        r
    }

    pub fn add(&mut self, o: &Resources) {
        self.milli_cpu += o.milli_cpu;
        self.memory += o.memory;
        self.ephemeral_storage += o.ephemeral_storage;
        self.pods += o.pods;
        for (k, v) in &o.scalar {
            *self.scalar.entry(k.clone()).or_default() += v;
        }
    }

    pub fn sub(&mut self, o: &Resources) {
        self.milli_cpu -= o.milli_cpu;
        self.memory -= o.memory;
        self.ephemeral_storage -= o.ephemeral_storage;
        self.pods -= o.pods;
        for (k, v) in &o.scalar {
            *self.scalar.entry(k.clone()).or_default() -= v;
        }
    }

    /// Each resource set to the larger of the two.
    pub fn max_with(&mut self, o: &Resources) {
        self.milli_cpu = self.milli_cpu.max(o.milli_cpu);
        self.memory = self.memory.max(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(o.ephemeral_storage);
        self.pods = self.pods.max(o.pods);
        for (k, v) in &o.scalar {
            let e = self.scalar.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    }

    /// Nothing requested at all (NodeResourcesFit then only counts the pod).
    pub fn is_zero(&self) -> bool {
        self.milli_cpu == 0
            && self.memory == 0
            && self.ephemeral_storage == 0
            && self.scalar.values().all(|v| *v == 0)
    }
}

fn container_requests(c: &Container) -> Resources {
    Resources::from_list(c.resources.as_ref().and_then(|r| r.requests.as_ref()))
}

/// The same with upstream's scoring defaults for a container that requests no CPU or memory.
fn container_requests_non_zero(c: &Container) -> Resources {
    let mut r = container_requests(c);
    let requests = c.resources.as_ref().and_then(|r| r.requests.as_ref());
    if !requests.is_some_and(|l| l.contains_key("cpu")) {
        r.milli_cpu = DEFAULT_MILLI_CPU_REQUEST;
    }
    if !requests.is_some_and(|l| l.contains_key("memory")) {
        r.memory = DEFAULT_MEMORY_REQUEST;
    }
    r
}

fn is_sidecar(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

/// What a pod needs on a node: the containers' requests together, or the largest init step if
/// larger (a sidecar — an init container with `restartPolicy: Always` — keeps running beside
/// the later init containers and the app), plus the pod overhead.
fn pod_requests_with(pod: &Pod, per_container: fn(&Container) -> Resources) -> Resources {
    let Some(spec) = pod.spec.as_ref() else {
        return Resources::default();
    };
    let mut reqs = Resources::default();
    for c in &spec.containers {
        reqs.add(&per_container(c));
    }
    let mut sidecars = Resources::default();
    let mut init_max = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let mut step = per_container(c);
        if is_sidecar(c) {
            reqs.add(&step);
            sidecars.add(&step);
            step = sidecars.clone();
        } else {
            step.add(&sidecars);
        }
        init_max.max_with(&step);
    }
    reqs.max_with(&init_max);
    if let Some(overhead) = spec.overhead.as_ref() {
        reqs.add(&Resources::from_list(Some(overhead)));
    }
    reqs
}

/// The pod's effective requests, as NodeResourcesFit counts them.
pub fn pod_requests(pod: &Pod) -> Resources {
    pod_requests_with(pod, container_requests)
}

/// `(millicores, bytes)` with the scoring defaults for unset CPU/memory requests.
pub fn pod_non_zero_requests(pod: &Pod) -> (i64, i64) {
    let r = pod_requests_with(pod, container_requests_non_zero);
    (r.milli_cpu, r.memory)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
    }

    #[test]
    fn containers_add_up_and_init_takes_the_max() {
        let p = pod(json!({
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "100Mi"}}},
                {"name": "b", "resources": {"requests": {"cpu": "200m", "example.com/gpu": "1"}}}
            ],
            "initContainers": [
                {"name": "i", "resources": {"requests": {"cpu": "1", "memory": "10Mi"}}}
            ]
        }));
        let r = pod_requests(&p);
        assert_eq!(r.milli_cpu, 1000);
        assert_eq!(r.memory, 100 << 20);
        assert_eq!(r.scalar["example.com/gpu"], 1);
    }

    #[test]
    fn sidecars_run_beside_later_init_containers_and_the_app() {
        let p = pod(json!({
            "containers": [{"name": "app", "resources": {"requests": {"cpu": "500m"}}}],
            "initContainers": [
                {"name": "side", "restartPolicy": "Always", "resources": {"requests": {"cpu": "200m"}}},
                {"name": "init", "resources": {"requests": {"cpu": "600m"}}}
            ],
            "overhead": {"cpu": "50m"}
        }));
        // app + sidecar = 700m; init step = 600m + 200m sidecar = 800m; + 50m overhead.
        assert_eq!(pod_requests(&p).milli_cpu, 850);
    }

    #[test]
    fn non_zero_defaults_only_for_scoring() {
        let p = pod(json!({"containers": [{"name": "a"}]}));
        assert!(pod_requests(&p).is_zero());
        assert_eq!(
            pod_non_zero_requests(&p),
            (DEFAULT_MILLI_CPU_REQUEST, DEFAULT_MEMORY_REQUEST)
        );
    }
}
