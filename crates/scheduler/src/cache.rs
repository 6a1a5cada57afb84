//! The scheduler's view of the cluster: nodes with the pods on them (bound and assumed), kept
//! from the watches, so that a scheduling decision reads memory only.
//!
//! An *assumed* pod is one the scheduler has decided to put on a node and whose binding is in
//! flight: it already counts on its node, so the next decision sees the space it takes, and
//! the watch event of the bound pod later confirms it. A failed binding forgets it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, PodAffinityTerm, Taint, Toleration};

use crate::labels::{Labels, Selector};
use crate::resources::{self, Resources};

/// `namespace/name`.
pub type PodKey = String;

pub fn pod_key(pod: &Pod) -> PodKey {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// A host port a pod takes on its node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub ip: String,
    pub protocol: String,
    pub port: i32,
}

impl HostPort {
    /// Same port and protocol, and either address is the wildcard or they are equal.
    pub fn conflicts(&self, o: &HostPort) -> bool {
        let wild = |ip: &str| ip.is_empty() || ip == "0.0.0.0";
        self.port == o.port
            && self.protocol == o.protocol
            && (self.ip == o.ip || wild(&self.ip) || wild(&o.ip))
    }
}

/// A pod (anti-)affinity term, compiled.
#[derive(Debug, Clone)]
pub struct AffinityTerm {
    pub selector: Selector,
    pub namespaces: BTreeSet<String>,
    pub namespace_selector: Option<Selector>,
    pub topology_key: String,
}

impl AffinityTerm {
    fn new(term: &PodAffinityTerm, owner_ns: &str, owner_labels: &Labels) -> AffinityTerm {
        let mut namespaces: BTreeSet<String> = term.namespaces.iter().flatten().cloned().collect();
        let namespace_selector = term
            .namespace_selector
            .as_ref()
            .map(|s| Selector::from_label_selector(Some(s)));
        if namespaces.is_empty() && namespace_selector.is_none() {
            namespaces.insert(owner_ns.to_string());
        }
        let mut selector = Selector::from_label_selector(term.label_selector.as_ref());
        if term.label_selector.is_some() {
            selector = selector.with_label_keys(term.match_label_keys.as_ref(), owner_labels);
        }
        AffinityTerm {
            selector,
            namespaces,
            namespace_selector,
            topology_key: term.topology_key.clone(),
        }
    }

    /// Whether `pod` is one this term is about.
    pub fn matches(&self, pod: &PodInfo, namespaces: &HashMap<String, Labels>) -> bool {
        let ns_ok = self.namespaces.contains(&pod.namespace)
            || self.namespace_selector.as_ref().is_some_and(|s| {
                namespaces.get(&pod.namespace).is_some_and(|l| s.matches(l))
                    || (namespaces.is_empty() && s.matches(&Labels::new()))
            });
        ns_ok && self.selector.matches(&pod.labels)
    }
}

/// A claim a pod's volume uses: `persistentVolumeClaim.claimName`, or `<pod>-<volume>` for a
/// generic ephemeral volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodClaim {
    pub name: String,
    pub ephemeral: bool,
}

/// What the scheduler needs of a pod, computed once when the pod is seen.
#[derive(Debug)]
pub struct PodInfo {
    pub key: PodKey,
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub priority: i32,
    pub requests: Resources,
    pub non_zero: (i64, i64),
    pub host_ports: Vec<HostPort>,
    pub tolerations: Vec<Toleration>,
    pub required_affinity: Vec<AffinityTerm>,
    pub required_anti_affinity: Vec<AffinityTerm>,
    pub preferred_affinity: Vec<(i32, AffinityTerm)>,
    pub preferred_anti_affinity: Vec<(i32, AffinityTerm)>,
    /// The claims of its volumes, in the order of `spec.volumes`.
    pub claims: Vec<PodClaim>,
    pub terminating: bool,
    pub pod: Arc<Pod>,
}

impl PodInfo {
    pub fn new(pod: Arc<Pod>) -> PodInfo {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let spec = pod.spec.as_ref();
        let mut host_ports = Vec::new();
        if let Some(spec) = spec {
            let sidecars = spec
                .init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"));
            for c in spec.containers.iter().chain(sidecars) {
                for p in c.ports.iter().flatten() {
                    if let Some(hp) = p.host_port.filter(|p| *p > 0) {
                        host_ports.push(HostPort {
                            ip: p.host_ip.clone().unwrap_or_default(),
                            protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                            port: hp,
                        });
                    }
                }
            }
        }
        let affinity = spec.and_then(|s| s.affinity.as_ref());
        let pa = affinity.and_then(|a| a.pod_affinity.as_ref());
        let paa = affinity.and_then(|a| a.pod_anti_affinity.as_ref());
        let compile = |t: &PodAffinityTerm| AffinityTerm::new(t, &namespace, &labels);
        let required_affinity = pa
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .into_iter()
            .flatten()
            .map(compile)
            .collect();
        let required_anti_affinity = paa
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .into_iter()
            .flatten()
            .map(compile)
            .collect();
        let preferred_affinity = pa
            .and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .into_iter()
            .flatten()
            .map(|w| (w.weight, compile(&w.pod_affinity_term)))
            .collect();
        let preferred_anti_affinity = paa
            .and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .into_iter()
            .flatten()
            .map(|w| (w.weight, compile(&w.pod_affinity_term)))
            .collect();
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let claims = spec
            .and_then(|s| s.volumes.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|v| {
                if let Some(c) = &v.persistent_volume_claim {
                    Some(PodClaim {
                        name: c.claim_name.clone(),
                        ephemeral: false,
                    })
                } else {
                    v.ephemeral.as_ref().map(|_| PodClaim {
                        name: format!("{pod_name}-{}", v.name),
                        ephemeral: true,
                    })
                }
            })
            .collect();
        PodInfo {
            key: pod_key(&pod),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            priority: spec.and_then(|s| s.priority).unwrap_or(0),
            requests: resources::pod_requests(&pod),
            non_zero: resources::pod_non_zero_requests(&pod),
            host_ports,
            tolerations: spec.and_then(|s| s.tolerations.clone()).unwrap_or_default(),
            required_affinity,
            required_anti_affinity,
            preferred_affinity,
            preferred_anti_affinity,
            claims,
            terminating: pod.metadata.deletion_timestamp.is_some(),
            namespace,
            labels,
            pod,
        }
    }

    pub fn has_affinity(&self) -> bool {
        !(self.required_affinity.is_empty()
            && self.required_anti_affinity.is_empty()
            && self.preferred_affinity.is_empty()
            && self.preferred_anti_affinity.is_empty())
    }

    pub fn node_name(&self) -> Option<&str> {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .filter(|n| !n.is_empty())
    }
}

/// A node and what is on it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    /// `None` while pods on this node are known but the Node object is not (yet).
    pub node: Option<Arc<Node>>,
    pub labels: Labels,
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    pub allocatable: Resources,
    pub requested: Resources,
    pub non_zero_requested: (i64, i64),
    pub pods: HashMap<PodKey, Arc<PodInfo>>,
    pub used_ports: Vec<HostPort>,
    /// Image name → size in bytes, from `status.images`.
    pub images: HashMap<String, i64>,
    /// Pods on this node with any (anti-)affinity term.
    pub pods_with_affinity: usize,
}

impl NodeInfo {
    fn empty(name: &str) -> NodeInfo {
        NodeInfo {
            name: name.to_string(),
            node: None,
            labels: Labels::new(),
            taints: Vec::new(),
            unschedulable: false,
            allocatable: Resources::default(),
            requested: Resources::default(),
            non_zero_requested: (0, 0),
            pods: HashMap::new(),
            used_ports: Vec::new(),
            images: HashMap::new(),
            pods_with_affinity: 0,
        }
    }

    /// A node info for `node` with no pods (tests and the cache build them this way).
    pub fn new(node: Arc<Node>) -> NodeInfo {
        let mut info = NodeInfo::empty(node.metadata.name.as_deref().unwrap_or_default());
        info.set_node(node);
        info
    }

    fn set_node(&mut self, node: Arc<Node>) {
        self.labels = node.metadata.labels.clone().unwrap_or_default();
        let spec = node.spec.as_ref();
        self.taints = spec.and_then(|s| s.taints.clone()).unwrap_or_default();
        self.unschedulable = spec.and_then(|s| s.unschedulable).unwrap_or(false);
        let status = node.status.as_ref();
        self.allocatable = Resources::from_list(
            status.and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref())),
        );
        self.images = status
            .and_then(|s| s.images.as_ref())
            .into_iter()
            .flatten()
            .flat_map(|img| {
                let size = img.size_bytes.unwrap_or(0);
                img.names
                    .iter()
                    .flatten()
                    .map(move |n| (normalize_image(n), size))
            })
            .collect();
        self.node = Some(node);
    }

    pub fn add_pod(&mut self, pod: Arc<PodInfo>) {
        self.requested.add(&pod.requests);
        self.requested.pods += 1;
        self.non_zero_requested.0 += pod.non_zero.0;
        self.non_zero_requested.1 += pod.non_zero.1;
        self.used_ports.extend(pod.host_ports.iter().cloned());
        if pod.has_affinity() {
            self.pods_with_affinity += 1;
        }
        if let Some(old) = self.pods.insert(pod.key.clone(), pod) {
            self.forget_usage(&old);
        }
    }

    pub fn remove_pod(&mut self, key: &str) -> Option<Arc<PodInfo>> {
        let old = self.pods.remove(key)?;
        self.forget_usage(&old);
        Some(old)
    }

    fn forget_usage(&mut self, old: &PodInfo) {
        self.requested.sub(&old.requests);
        self.requested.pods -= 1;
        self.non_zero_requested.0 -= old.non_zero.0;
        self.non_zero_requested.1 -= old.non_zero.1;
        for hp in &old.host_ports {
            if let Some(i) = self.used_ports.iter().position(|u| u == hp) {
                self.used_ports.swap_remove(i);
            }
        }
        if old.has_affinity() {
            self.pods_with_affinity -= 1;
        }
    }
}

/// Image names as the kubelet reports them and pods name them: `nginx` is
/// `docker.io/library/nginx:latest`.
pub fn normalize_image(name: &str) -> String {
    let (repo, tag_or_digest) = if name.contains('@') {
        (name, "")
    } else {
        let last = name.rsplit('/').next().unwrap_or(name);
        if last.contains(':') {
            (name, "")
        } else {
            (name, ":latest")
        }
    };
    let first = repo.split('/').next().unwrap_or(repo);
    let has_registry =
        repo.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let full = if has_registry {
        repo.to_string()
    } else if repo.contains('/') {
        format!("docker.io/{repo}")
    } else {
        format!("docker.io/library/{repo}")
    };
    format!("{full}{tag_or_digest}")
}

/// All nodes, the pods on them, and which pods are assumed.
#[derive(Debug, Default)]
pub struct Cache {
    nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    /// Where each known assigned or assumed pod sits.
    pod_node: HashMap<PodKey, String>,
    assumed: HashSet<PodKey>,
    /// Image name → number of nodes that have it (ImageLocality's spread).
    image_nodes: HashMap<String, usize>,
    /// Namespace labels, for namespaceSelector in affinity terms.
    pub namespaces: HashMap<String, Labels>,
    /// Pods with (anti-)affinity across the cluster: when 0, InterPodAffinity has no work.
    pub pods_with_affinity: usize,
    /// PersistentVolumes, PersistentVolumeClaims (with what the scheduler assumed of them)
    /// and StorageClasses, for VolumeBinding.
    pub volumes: crate::plugins::volume_binding::Volumes,
}

impl Cache {
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    /// Nodes whose Node object is known: the ones a pod can go to.
    pub fn node_count(&self) -> usize {
        self.nodes.iter().filter(|n| n.node.is_some()).count()
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|i| &self.nodes[*i])
    }

    pub fn image_node_count(&self, image: &str) -> usize {
        self.image_nodes.get(image).copied().unwrap_or(0)
    }

    fn entry(&mut self, name: &str) -> &mut NodeInfo {
        let i = match self.index.get(name) {
            Some(i) => *i,
            None => {
                self.nodes.push(NodeInfo::empty(name));
                self.index.insert(name.to_string(), self.nodes.len() - 1);
                self.nodes.len() - 1
            }
        };
        &mut self.nodes[i]
    }

    fn count_images(&mut self, info_images: &HashMap<String, i64>, delta: isize) {
        for img in info_images.keys() {
            let c = self.image_nodes.entry(img.clone()).or_default();
            *c = c.saturating_add_signed(delta);
            if *c == 0 {
                self.image_nodes.remove(img);
            }
        }
    }

    pub fn upsert_node(&mut self, node: Arc<Node>) {
        let name = node.metadata.name.clone().unwrap_or_default();
        let old_images = std::mem::take(&mut self.entry(&name).images);
        self.count_images(&old_images, -1);
        let info = self.entry(&name);
        info.set_node(node);
        let images = info.images.clone();
        self.count_images(&images, 1);
    }

    pub fn remove_node(&mut self, name: &str) {
        let Some(i) = self.index.get(name).copied() else {
            return;
        };
        let images = std::mem::take(&mut self.nodes[i].images);
        self.count_images(&images, -1);
        if self.nodes[i].pods.is_empty() {
            self.nodes.swap_remove(i);
            self.index.remove(name);
            if i < self.nodes.len() {
                let moved = self.nodes[i].name.clone();
                self.index.insert(moved, i);
            }
        } else {
            // Pods still point at it: keep their usage until they go, but no longer as a
            // place to schedule to.
            let info = &mut self.nodes[i];
            info.node = None;
        }
    }

    pub fn is_assumed(&self, key: &str) -> bool {
        self.assumed.contains(key)
    }

    /// Whether the pod is known to be on (or on its way to) a node.
    pub fn is_placed(&self, key: &str) -> bool {
        self.pod_node.contains_key(key)
    }

    /// Counts `pod` on `node` before its binding is confirmed.
    pub fn assume(&mut self, pod: Arc<PodInfo>, node: &str) {
        self.assumed.insert(pod.key.clone());
        self.place(pod, node);
    }

    /// The binding failed: the pod no longer counts on its node.
    pub fn forget(&mut self, key: &str) {
        if self.assumed.remove(key) {
            self.unplace(key);
        }
    }

    fn place(&mut self, pod: Arc<PodInfo>, node: &str) {
        if self.pod_node.contains_key(&pod.key) {
            self.unplace(&pod.key);
        }
        if pod.has_affinity() {
            self.pods_with_affinity += 1;
        }
        self.pod_node.insert(pod.key.clone(), node.to_string());
        self.entry(node).add_pod(pod);
    }

    fn unplace(&mut self, key: &str) {
        let Some(node) = self.pod_node.remove(key) else {
            return;
        };
        let Some(i) = self.index.get(&node).copied() else {
            return;
        };
        if let Some(old) = self.nodes[i].remove_pod(key)
            && old.has_affinity()
        {
            self.pods_with_affinity -= 1;
        }
        if self.nodes[i].node.is_none() && self.nodes[i].pods.is_empty() {
            self.remove_node(&node);
        }
    }

    /// A pod from the watch that has a node: it counts there (confirming an assumed pod).
    pub fn upsert_assigned_pod(&mut self, pod: Arc<PodInfo>) {
        let Some(node) = pod.node_name().map(str::to_string) else {
            return;
        };
        self.assumed.remove(&pod.key);
        self.place(pod, &node);
    }

    /// A pod that is gone (deleted, or finished: it no longer takes space).
    pub fn remove_pod(&mut self, key: &str) {
        self.assumed.remove(key);
        self.unplace(key);
    }

    /// Pods with the given key placed somewhere, if any.
    pub fn placed_pod(&self, key: &str) -> Option<&Arc<PodInfo>> {
        let node = self.pod_node.get(key)?;
        self.node(node)?.pods.get(key)
    }

    /// Forgets everything the pod watch told (before a relist replays it); assumed pods stay.
    pub fn clear_bound_pods(&mut self) {
        let keys: Vec<PodKey> = self
            .pod_node
            .keys()
            .filter(|k| !self.assumed.contains(*k))
            .cloned()
            .collect();
        for k in keys {
            self.unplace(&k);
        }
    }

    /// Forgets all nodes not in `keep` (after a relist of nodes).
    pub fn retain_nodes(&mut self, keep: &HashSet<String>) {
        let gone: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.node.is_some() && !keep.contains(&n.name))
            .map(|n| n.name.clone())
            .collect();
        for n in gone {
            self.remove_node(&n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name},
                "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                           "images": [{"names": ["docker.io/library/nginx:latest"], "sizeBytes": 50000000}]}
            }))
            .unwrap(),
        )
    }

    fn pod(name: &str, node: Option<&str>) -> Arc<PodInfo> {
        Arc::new(PodInfo::new(Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"nodeName": node, "containers": [{"name": "c",
                    "ports": [{"containerPort": 80, "hostPort": 8080}],
                    "resources": {"requests": {"cpu": "1"}}}]}
            }))
            .unwrap(),
        )))
    }

    #[test]
    fn assumed_pods_count_until_forgotten_or_confirmed() {
        let mut c = Cache::default();
        c.upsert_node(node("n1"));
        c.assume(pod("a", None), "n1");
        assert_eq!(c.node("n1").unwrap().requested.milli_cpu, 1000);
        assert_eq!(c.node("n1").unwrap().used_ports.len(), 1);
        assert!(c.is_assumed("default/a"));
        c.forget("default/a");
        assert_eq!(c.node("n1").unwrap().requested.milli_cpu, 0);
        assert!(c.node("n1").unwrap().used_ports.is_empty());

        c.assume(pod("b", None), "n1");
        c.upsert_assigned_pod(pod("b", Some("n1")));
        assert!(!c.is_assumed("default/b"));
        assert_eq!(c.node("n1").unwrap().requested.milli_cpu, 1000);
        assert_eq!(c.node("n1").unwrap().requested.pods, 1);
        c.remove_pod("default/b");
        assert_eq!(c.node("n1").unwrap().requested.pods, 0);
    }

    #[test]
    fn pods_before_their_node_and_node_removal() {
        let mut c = Cache::default();
        c.upsert_assigned_pod(pod("a", Some("n2")));
        assert_eq!(c.node_count(), 0);
        c.upsert_node(node("n2"));
        assert_eq!(c.node_count(), 1);
        assert_eq!(c.node("n2").unwrap().requested.milli_cpu, 1000);
        assert_eq!(c.image_node_count("docker.io/library/nginx:latest"), 1);
        c.remove_node("n2");
        assert_eq!(c.node_count(), 0);
        assert_eq!(c.image_node_count("docker.io/library/nginx:latest"), 0);
        c.remove_pod("default/a");
        assert!(c.node("n2").is_none());
    }

    #[test]
    fn image_names_normalize() {
        assert_eq!(normalize_image("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(normalize_image("foo/bar:1"), "docker.io/foo/bar:1");
        assert_eq!(normalize_image("reg.io:5000/x"), "reg.io:5000/x:latest");
    }
}
