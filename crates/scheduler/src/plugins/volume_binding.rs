//! VolumeBinding (upstream's `pkg/scheduler/framework/plugins/volumebinding`), for what rk3s
//! serves: PersistentVolumeClaims, PersistentVolumes and StorageClasses (no CSI drivers, CSI
//! nodes or storage capacities, so no capacity checks and no in-tree → CSI translation).
//!
//! - **PreFilter** ([`State::new`]): the pod's claims must exist, not be `Lost` nor being
//!   deleted (generic ephemeral claims must be the pod's own); a claim that is not fully bound
//!   and not `WaitForFirstConsumer` (or pre-bound by `volumeName`) makes the pod
//!   `pod has unbound immediate PersistentVolumeClaims`. Bound claims whose volumes name nodes
//!   by `kubernetes.io/hostname In` narrow the nodes looked at (upstream's PreFilterResult).
//! - **Filter** ([`State::filter`]): bound claims' volumes' `nodeAffinity` must match the node;
//!   `WaitForFirstConsumer` claims need a static volume usable from the node (upstream's
//!   `FindMatchingVolume`: the pre-bound one, else the smallest `Available` one of the class
//!   with the access modes, volume mode, selector and node affinity; claims tried smallest
//!   request first, no volume twice) or a class that provisions (a provisioner other than
//!   `kubernetes.io/no-provisioner`, the node within `allowedTopologies`).
//! - **Reserve** ([`Volumes::assume_pod_volumes`]): the chosen volumes are assumed pre-bound
//!   (`claimRef` + `pv.kubernetes.io/bound-by-controller`), the claims to provision assumed
//!   with `volume.kubernetes.io/selected-node`, in the [`AssumeCache`]s, so the next pod does
//!   not take the same volume; **Unreserve** restores them.
//! - **PreBind** (in `scheduler`): the assumed objects are written, then the pod waits (up to
//!   `bind-timeout-seconds`) until the PV controller has bound every claim
//!   ([`Volumes::check_bindings`]).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::{CSINode, StorageClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{Failure, FilterResult};
use crate::cache::{Cache, NodeInfo, PodInfo};
use crate::labels::{self, Labels, Selector};
use rk3s_common::volume::{self, bound_to_claim, requested};

pub const NAME: &str = "VolumeBinding";

pub use rk3s_common::volume::{ANN_BIND_COMPLETED, ANN_BOUND_BY_CONTROLLER, ANN_SELECTED_NODE};
/// A class with this provisioner has no dynamic provisioning (local volumes).
const NOT_SUPPORTED_PROVISIONER: &str = "kubernetes.io/no-provisioner";
const LABEL_HOSTNAME: &str = "kubernetes.io/hostname";

pub const ERR_REASON_BIND_CONFLICT: &str =
    "node(s) didn't find available persistent volumes to bind";
pub const ERR_REASON_NODE_CONFLICT: &str = "node(s) had volume node affinity conflict";
pub const ERR_REASON_PV_NOT_EXIST: &str =
    "node(s) unavailable due to one or more pvc(s) bound to non-existent pv(s)";
pub const ERR_UNBOUND_IMMEDIATE: &str = "pod has unbound immediate PersistentVolumeClaims";

// ---------------------------------------------------------------------------------------------
// the assume cache

/// An informer's objects with, per object, an *assumed* newer version the scheduler has
/// decided on but the API may not show yet (upstream's `AssumeCache`). The watch replaces an
/// object only with a strictly newer resourceVersion, so an assumption survives until the API
/// catches up with it (or is restored).
#[derive(Debug)]
pub struct AssumeCache<T> {
    entries: HashMap<String, Assumed<T>>,
}

#[derive(Debug)]
struct Assumed<T> {
    api: Arc<T>,
    latest: Arc<T>,
}

impl<T> Default for AssumeCache<T> {
    fn default() -> Self {
        AssumeCache {
            entries: HashMap::new(),
        }
    }
}

fn version(meta: &ObjectMeta) -> u64 {
    meta.resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl<T: kube::Resource> AssumeCache<T> {
    /// An object from the watch: kept if newer than what is there (assumed or not).
    pub fn upsert(&mut self, key: String, obj: Arc<T>) {
        if let Some(e) = self.entries.get(&key)
            && version(obj.meta()) <= version(e.latest.meta())
        {
            return;
        }
        self.entries.insert(
            key,
            Assumed {
                api: obj.clone(),
                latest: obj,
            },
        );
    }

    pub fn remove(&mut self, key: &str) {
        self.entries.remove(key);
    }

    /// After a relist: forgets what is not in `keep`.
    pub fn retain(&mut self, keep: &HashSet<String>) {
        self.entries.retain(|k, _| keep.contains(k));
    }

    /// The latest version (assumed or from the API).
    pub fn get(&self, key: &str) -> Option<&Arc<T>> {
        self.entries.get(key).map(|e| &e.latest)
    }

    /// The version the API last showed.
    pub fn get_api(&self, key: &str) -> Option<&Arc<T>> {
        self.entries.get(key).map(|e| &e.api)
    }

    pub fn values(&self) -> impl Iterator<Item = &Arc<T>> {
        self.entries.values().map(|e| &e.latest)
    }

    /// Takes `obj` as the latest version; refused if the cache already holds a newer one.
    pub fn assume(&mut self, key: &str, obj: Arc<T>) -> Result<(), String> {
        let Some(e) = self.entries.get_mut(key) else {
            return Err(format!("{key:?} not found"));
        };
        let (new, stored) = (version(obj.meta()), version(e.latest.meta()));
        if new < stored {
            return Err(format!(
                "{key:?} is out of sync (stored: {stored}, assume: {new})"
            ));
        }
        e.latest = obj;
        Ok(())
    }

    /// Drops the assumption: back to the API's version.
    pub fn restore(&mut self, key: &str) {
        if let Some(e) = self.entries.get_mut(key) {
            e.latest = e.api.clone();
        }
    }
}

/// The scheduler's volume objects: PVs by name, PVCs by `namespace/name`, StorageClasses,
/// and CSINodes by node name (NodeVolumeLimits').
#[derive(Debug, Default)]
pub struct Volumes {
    pub pvs: AssumeCache<PersistentVolume>,
    pub pvcs: AssumeCache<PersistentVolumeClaim>,
    pub classes: HashMap<String, Arc<StorageClass>>,
    pub csi_nodes: HashMap<String, Arc<CSINode>>,
}

pub fn pvc_key(pvc: &PersistentVolumeClaim) -> String {
    format!(
        "{}/{}",
        pvc.metadata.namespace.as_deref().unwrap_or_default(),
        pvc.metadata.name.as_deref().unwrap_or_default()
    )
}

// ---------------------------------------------------------------------------------------------
// helpers on the objects (upstream's storage helpers, shared with the PV binder)

pub use rk3s_common::volume::{annotation, claim_class, volume_class, volume_name};

fn claim_name(claim: &PersistentVolumeClaim) -> &str {
    claim.metadata.name.as_deref().unwrap_or_default()
}

/// `isPVCFullyBound`: a volume named and the binder's `bind-completed` annotation.
pub fn fully_bound(claim: &PersistentVolumeClaim) -> bool {
    !volume_name(claim).is_empty()
        && claim
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(ANN_BIND_COMPLETED))
}

/// `CheckNodeAffinity`: the volume's required node affinity matches the node's labels. Like
/// upstream, only labels are matched (a `matchFields` term sees a node without a name).
pub fn node_affinity_ok(pv: &PersistentVolume, node_labels: &Labels) -> bool {
    match pv
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
    {
        None => true,
        Some(sel) => labels::node_selector_terms_match(&sel.node_selector_terms, node_labels, ""),
    }
}

/// `GetLocalPersistentVolumeNodeNames`: the nodes a volume names through
/// `kubernetes.io/hostname In` expressions (intersected within a term, united over terms).
fn local_volume_node_names(pv: &PersistentVolume) -> Option<BTreeSet<String>> {
    let terms = &pv
        .spec
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required
        .as_ref()?
        .node_selector_terms;
    let mut result: BTreeSet<String> = BTreeSet::new();
    for term in terms {
        let mut nodes: Option<BTreeSet<String>> = None;
        for e in term.match_expressions.iter().flatten() {
            if e.key == LABEL_HOSTNAME && e.operator == "In" {
                let vals: BTreeSet<String> = e.values.iter().flatten().cloned().collect();
                nodes = Some(match nodes {
                    None => vals,
                    Some(n) => n.intersection(&vals).cloned().collect(),
                });
            }
        }
        result.extend(nodes.into_iter().flatten());
    }
    Some(result)
}

/// `IsDelayBindingMode`: the claim's class (if it exists) binds `WaitForFirstConsumer`.
fn delay_binding(
    claim: &PersistentVolumeClaim,
    classes: &HashMap<String, Arc<StorageClass>>,
) -> bool {
    let class = claim_class(claim);
    if class.is_empty() {
        return false;
    }
    classes
        .get(class)
        .and_then(|c| c.volume_binding_mode.as_deref())
        == Some("WaitForFirstConsumer")
}

/// `FindMatchingVolume` on the scheduler's path (a node given): the volume pre-bound to the
/// claim if it suits the node, else the smallest `Available` one that fits
/// ([`rk3s_common::volume::find_matching_volume`]).
pub fn find_matching_volume<'a>(
    claim: &PersistentVolumeClaim,
    volumes: &'a [Arc<PersistentVolume>],
    node_labels: &Labels,
    excluded: &HashSet<&str>,
) -> Option<&'a Arc<PersistentVolume>> {
    let selector = claim
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .map(|s| Selector::from_label_selector(Some(s)));
    let empty = Labels::new();
    let found = volume::find_matching_volume(
        claim,
        volumes,
        volume::Node::Affinity(&|pv| node_affinity_ok(pv, node_labels)),
        &|name| excluded.contains(name),
        &|_, labels| {
            Ok::<_, std::convert::Infallible>(
                selector
                    .as_ref()
                    .is_none_or(|s| s.matches(labels.unwrap_or(&empty))),
            )
        },
    );
    match found {
        Ok(v) => v,
        Err(never) => match never {},
    }
}

/// `MatchTopologySelectorTerms`: no terms match every node; else one term all of whose
/// expressions have the node's label among their values.
fn allowed_topology(class: &StorageClass, node_labels: &Labels) -> bool {
    let terms = class.allowed_topologies.as_deref().unwrap_or_default();
    terms.is_empty()
        || terms.iter().any(|t| {
            t.match_label_expressions.iter().flatten().all(|e| {
                node_labels
                    .get(&e.key)
                    .is_some_and(|v| e.values.contains(v))
            })
        })
}

// ---------------------------------------------------------------------------------------------
// PreFilter / Filter

/// What the pod's claims need on the node chosen for it: volumes to pre-bind (the volume as
/// it will be written, the claim) and claims to provision there.
#[derive(Debug, Clone, Default)]
pub struct PodVolumes {
    pub static_bindings: Vec<(Arc<PersistentVolume>, Arc<PersistentVolumeClaim>)>,
    pub dynamic_provisions: Vec<Arc<PersistentVolumeClaim>>,
}

impl PodVolumes {
    pub fn is_empty(&self) -> bool {
        self.static_bindings.is_empty() && self.dynamic_provisions.is_empty()
    }
}

#[derive(Debug)]
struct Claims {
    /// Fully bound claims and their volumes (`None`: the volume is not known).
    bound: Vec<(Arc<PersistentVolumeClaim>, Option<Arc<PersistentVolume>>)>,
    /// Unbound `WaitForFirstConsumer` claims, smallest request first.
    delayed: Vec<Arc<PersistentVolumeClaim>>,
    /// The volumes of the delayed claims' classes.
    volumes_by_class: HashMap<String, Vec<Arc<PersistentVolume>>>,
    classes: HashMap<String, Arc<StorageClass>>,
}

/// The plugin's cycle state.
#[derive(Debug, Default)]
pub struct State {
    /// PreFilter rejected the pod: no node is looked at.
    pub rejection: Option<Failure>,
    /// The only nodes the pod's bound local volumes allow; `None`: all.
    pub eligible: Option<HashSet<String>>,
    /// `None`: the pod uses no claims (upstream's Skip).
    claims: Option<Claims>,
}

fn rejected(reason: String) -> State {
    State {
        rejection: Some(Failure::unresolvable(NAME, reason)),
        ..State::default()
    }
}

impl State {
    /// PreFilter.
    pub fn new(pod: &PodInfo, cache: &Cache) -> State {
        if pod.claims.is_empty() {
            return State::default();
        }
        let vols = &cache.volumes;
        let mut pvcs = Vec::with_capacity(pod.claims.len());
        for c in &pod.claims {
            let key = format!("{}/{}", pod.namespace, c.name);
            let Some(pvc) = vols.pvcs.get(&key) else {
                return rejected(if c.ephemeral {
                    format!(
                        "waiting for ephemeral volume controller to create the persistentvolumeclaim \"{}\"",
                        c.name
                    )
                } else {
                    format!("persistentvolumeclaim \"{}\" not found", c.name)
                });
            };
            let phase = pvc.status.as_ref().and_then(|s| s.phase.as_deref());
            if phase == Some("Lost") {
                return rejected(format!(
                    "persistentvolumeclaim \"{}\" bound to non-existent persistentvolume \"{}\"",
                    c.name,
                    volume_name(pvc)
                ));
            }
            if pvc.metadata.deletion_timestamp.is_some() {
                return rejected(format!(
                    "persistentvolumeclaim \"{}\" is being deleted",
                    c.name
                ));
            }
            if c.ephemeral && !created_for(pvc, pod) {
                return rejected(format!(
                    "PVC {}/{} was not created for pod {}/{} (pod is not owner)",
                    pod.namespace, c.name, pod.namespace, pod.name
                ));
            }
            pvcs.push(pvc.clone());
        }
        let mut bound = Vec::new();
        let mut delayed = Vec::new();
        let mut immediate = false;
        for pvc in pvcs {
            if fully_bound(&pvc) {
                let pv = vols.pvs.get(volume_name(&pvc)).cloned();
                bound.push((pvc, pv));
            } else if delay_binding(&pvc, &vols.classes) && volume_name(&pvc).is_empty() {
                delayed.push(pvc);
            } else {
                // Immediate binding (or pre-bound by volumeName): the PV controller's job.
                immediate = true;
            }
        }
        if immediate {
            return rejected(ERR_UNBOUND_IMMEDIATE.into());
        }
        // Upstream's GetEligibleNodes: nothing if any bound volume is unknown.
        let mut eligible: Option<HashSet<String>> = None;
        if bound.iter().all(|(_, pv)| pv.is_some()) {
            for pv in bound.iter().filter_map(|(_, pv)| pv.as_ref()) {
                let names = local_volume_node_names(pv).unwrap_or_default();
                if names.is_empty() {
                    continue;
                }
                let names: HashSet<String> = names.into_iter().collect();
                eligible = Some(match eligible {
                    None => names,
                    Some(e) => e.intersection(&names).cloned().collect(),
                });
            }
        }
        if eligible.as_ref().is_some_and(HashSet::is_empty) {
            return State {
                rejection: Some(Failure::unresolvable(
                    NAME,
                    format!("node(s) didn't satisfy plugin {NAME}"),
                )),
                ..State::default()
            };
        }
        delayed.sort_by_key(|c| requested(c));
        let mut volumes_by_class: HashMap<String, Vec<Arc<PersistentVolume>>> = HashMap::new();
        let mut classes = HashMap::new();
        for c in &delayed {
            let class = claim_class(c).to_string();
            if let Some(sc) = vols.classes.get(&class) {
                classes.insert(class.clone(), sc.clone());
            }
            volumes_by_class.entry(class).or_insert_with_key(|class| {
                vols.pvs
                    .values()
                    .filter(|pv| volume_class(pv) == class)
                    .cloned()
                    .collect()
            });
        }
        State {
            rejection: None,
            eligible,
            claims: Some(Claims {
                bound,
                delayed,
                volumes_by_class,
                classes,
            }),
        }
    }

    /// Filter.
    pub fn filter(&self, node: &NodeInfo) -> FilterResult {
        self.find(node).map(|_| ())
    }

    /// `FindPodVolumes`: whether the node suits the pod's claims and, if so, what binding
    /// them there takes.
    pub fn find(&self, node: &NodeInfo) -> Result<PodVolumes, Failure> {
        let mut out = PodVolumes::default();
        let Some(c) = &self.claims else {
            return Ok(out);
        };
        let mut bound_ok = true;
        let mut pvs_found = true;
        let mut unbound_ok = true;
        for (_, pv) in &c.bound {
            match pv {
                None => {
                    pvs_found = false;
                    break;
                }
                Some(pv) if !node_affinity_ok(pv, &node.labels) => {
                    bound_ok = false;
                    break;
                }
                Some(_) => {}
            }
        }
        'unbound: {
            if c.delayed.is_empty() {
                break 'unbound;
            }
            let mut to_match = Vec::new();
            let mut to_provision = Vec::new();
            for claim in &c.delayed {
                match annotation(&claim.metadata, ANN_SELECTED_NODE) {
                    Some(n) if n != node.name => {
                        unbound_ok = false;
                        break 'unbound;
                    }
                    Some(_) => to_provision.push(claim),
                    None => to_match.push(claim),
                }
            }
            let mut chosen: HashSet<&str> = HashSet::new();
            let none = Vec::new();
            for claim in to_match {
                let pvs = c.volumes_by_class.get(claim_class(claim)).unwrap_or(&none);
                match find_matching_volume(claim, pvs, &node.labels, &chosen) {
                    Some(pv) => {
                        chosen.insert(pv.metadata.name.as_deref().unwrap_or_default());
                        out.static_bindings.push((pv.clone(), claim.clone()));
                    }
                    None => {
                        unbound_ok = false;
                        to_provision.push(claim);
                    }
                }
            }
            if !to_provision.is_empty() {
                // `checkVolumeProvisions` decides for the claims left.
                unbound_ok = true;
                for claim in to_provision {
                    let class = claim_class(claim);
                    if class.is_empty() {
                        return Err(Failure::unresolvable(
                            NAME,
                            format!("no class for claim \"{}\"", pvc_key(claim)),
                        ));
                    }
                    let Some(sc) = c.classes.get(class) else {
                        return Err(Failure::unresolvable(
                            NAME,
                            format!("failed to find storage class \"{class}\""),
                        ));
                    };
                    if sc.provisioner.is_empty()
                        || sc.provisioner == NOT_SUPPORTED_PROVISIONER
                        || !allowed_topology(sc, &node.labels)
                    {
                        unbound_ok = false;
                        out.dynamic_provisions.clear();
                        break;
                    }
                    out.dynamic_provisions.push(claim.clone());
                }
            }
        }
        let mut reasons = Vec::new();
        if !bound_ok {
            reasons.push(ERR_REASON_NODE_CONFLICT.to_string());
        }
        if !unbound_ok {
            reasons.push(ERR_REASON_BIND_CONFLICT.to_string());
        }
        if !pvs_found {
            reasons.push(ERR_REASON_PV_NOT_EXIST.to_string());
        }
        if reasons.is_empty() {
            Ok(out)
        } else {
            Err(Failure {
                plugin: NAME,
                reasons,
                unresolvable: true,
            })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reserve / Unreserve / PreBind's check

/// `GetBindVolumeToClaim`: the volume with its claimRef on the claim (and
/// `bound-by-controller` when the claim did not name it already); `None` if nothing changes.
pub fn bind_volume_to_claim(
    pv: &PersistentVolume,
    claim: &PersistentVolumeClaim,
) -> Option<PersistentVolume> {
    let by_controller = !bound_to_claim(pv, claim);
    let mut next = pv.clone();
    let mut dirty = false;
    let same = pv
        .spec
        .as_ref()
        .and_then(|s| s.claim_ref.as_ref())
        .is_some_and(|r| {
            r.name == claim.metadata.name
                && r.namespace == claim.metadata.namespace
                && r.uid == claim.metadata.uid
        });
    if !same {
        next.spec.get_or_insert_with(Default::default).claim_ref = Some(ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("PersistentVolumeClaim".into()),
            name: claim.metadata.name.clone(),
            namespace: claim.metadata.namespace.clone(),
            uid: claim.metadata.uid.clone(),
            resource_version: claim.metadata.resource_version.clone(),
            ..ObjectReference::default()
        });
        dirty = true;
    }
    let annotations = next
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    if by_controller && !annotations.contains_key(ANN_BOUND_BY_CONTROLLER) {
        annotations.insert(ANN_BOUND_BY_CONTROLLER.into(), "yes".into());
        dirty = true;
    }
    if annotations.is_empty() {
        next.metadata.annotations = None;
    }
    dirty.then_some(next)
}

impl Volumes {
    fn all_bound(&self, pod: &PodInfo) -> bool {
        pod.claims.iter().all(|c| {
            self.pvcs
                .get(&format!("{}/{}", pod.namespace, c.name))
                .is_some_and(|p| fully_bound(p))
        })
    }

    /// Reserve (`AssumePodVolumes`): `None` when every claim is bound already (nothing for
    /// PreBind); else what PreBind must write, assumed in the caches.
    pub fn assume_pod_volumes(
        &mut self,
        pod: &PodInfo,
        node: &str,
        volumes: PodVolumes,
    ) -> Result<Option<PodVolumes>, String> {
        if pod.claims.is_empty() || self.all_bound(pod) {
            return Ok(None);
        }
        let mut out = PodVolumes::default();
        for (pv, claim) in volumes.static_bindings {
            let name = pv.metadata.name.clone().unwrap_or_default();
            let pv = match bind_volume_to_claim(&pv, &claim) {
                Some(next) => {
                    let next = Arc::new(next);
                    if let Err(e) = self.pvs.assume(&name, next.clone()) {
                        self.revert(&out);
                        return Err(e);
                    }
                    next
                }
                None => pv,
            };
            out.static_bindings.push((pv, claim));
        }
        for claim in volumes.dynamic_provisions {
            let mut next = (*claim).clone();
            next.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(ANN_SELECTED_NODE.into(), node.into());
            let next = Arc::new(next);
            if let Err(e) = self.pvcs.assume(&pvc_key(&claim), next.clone()) {
                self.revert(&out);
                return Err(e);
            }
            out.dynamic_provisions.push(next);
        }
        Ok(Some(out))
    }

    /// Unreserve (`RevertAssumedPodVolumes`).
    pub fn revert(&mut self, volumes: &PodVolumes) {
        for (pv, _) in &volumes.static_bindings {
            self.pvs
                .restore(pv.metadata.name.as_deref().unwrap_or_default());
        }
        for claim in &volumes.dynamic_provisions {
            self.pvcs.restore(&pvc_key(claim));
        }
    }

    /// PreBind's `checkBindings`: `Ok(true)` once the PV controller has bound every claim,
    /// `Ok(false)` while it has not yet, `Err` when binding cannot complete any more.
    pub fn check_bindings(
        &self,
        node_name: &str,
        node_labels: &Labels,
        volumes: &PodVolumes,
    ) -> Result<bool, String> {
        for (assumed, claim) in &volumes.static_bindings {
            let name = assumed.metadata.name.as_deref().unwrap_or_default();
            let Some(pv) = self.pvs.get_api(name) else {
                return Err(format!(
                    "failed to check binding: persistentvolume \"{name}\" not found"
                ));
            };
            let key = pvc_key(claim);
            let Some(pvc) = self.pvcs.get_api(&key) else {
                return Err(format!(
                    "failed to check binding: persistentvolumeclaim \"{key}\" not found"
                ));
            };
            if version(&assumed.metadata) > version(&pv.metadata) {
                return Ok(false);
            }
            if !node_affinity_ok(pv, node_labels) {
                return Err(format!(
                    "pv \"{name}\" node affinity doesn't match node \"{node_name}\": no matching NodeSelectorTerms"
                ));
            }
            let uid = pv
                .spec
                .as_ref()
                .and_then(|s| s.claim_ref.as_ref())
                .and_then(|r| r.uid.as_deref())
                .unwrap_or_default();
            if uid.is_empty() {
                return Err(format!("ClaimRef got reset for pv \"{name}\""));
            }
            if !fully_bound(pvc) {
                return Ok(false);
            }
        }
        for assumed in &volumes.dynamic_provisions {
            let key = pvc_key(assumed);
            let Some(pvc) = self.pvcs.get_api(&key) else {
                return Err(format!(
                    "failed to check provisioning pvc: persistentvolumeclaim \"{key}\" not found"
                ));
            };
            if version(&assumed.metadata) > version(&pvc.metadata) {
                return Ok(false);
            }
            match annotation(&pvc.metadata, ANN_SELECTED_NODE) {
                None if pvc.metadata.annotations.is_none() => {
                    return Err(format!(
                        "selectedNode annotation reset for PVC \"{}\"",
                        claim_name(pvc)
                    ));
                }
                Some(n) if n == node_name => {}
                _ => {
                    // A provisioner that fails removes the annotation to have the pod
                    // scheduled again.
                    return Err(format!(
                        "provisioning failed for PVC \"{}\"",
                        claim_name(pvc)
                    ));
                }
            }
            let vname = volume_name(pvc);
            if !vname.is_empty() {
                let Some(pv) = self.pvs.get_api(vname) else {
                    // Not seen yet.
                    return Ok(false);
                };
                if !node_affinity_ok(pv, node_labels) {
                    return Err(format!(
                        "pv \"{vname}\" node affinity doesn't match node \"{node_name}\": no matching NodeSelectorTerms"
                    ));
                }
            }
            if !fully_bound(pvc) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Whether a generic ephemeral volume's claim is the pod's own (its controller owner is the
/// pod): a claim of that name made for another pod must not be used.
pub(crate) fn created_for(pvc: &PersistentVolumeClaim, pod: &PodInfo) -> bool {
    pvc.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.uid == pod.uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testutil::{cache, info, node, pod};
    use serde_json::{Value, json};

    fn pv(name: &str, size: &str, extra: Value) -> Arc<PersistentVolume> {
        let mut v = json!({
            "metadata": {"name": name, "resourceVersion": "1"},
            "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
                     "storageClassName": "local", "local": {"path": "/mnt"}},
            "status": {"phase": "Available"},
        });
        merge(&mut v, extra);
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn pvc(name: &str, size: &str, extra: Value) -> Arc<PersistentVolumeClaim> {
        let mut v = json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                         "resourceVersion": "1"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local",
                     "resources": {"requests": {"storage": size}}},
        });
        merge(&mut v, extra);
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn merge(a: &mut Value, b: Value) {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    fn on_host(host: &str) -> Value {
        json!({"spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": [host]}]}]}}}})
    }

    fn class(name: &str, mode: &str, provisioner: &str) -> Arc<StorageClass> {
        Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": name}, "provisioner": provisioner,
                "volumeBindingMode": mode}),
            )
            .unwrap(),
        )
    }

    fn with_volumes(
        c: &mut Cache,
        pvs: &[Arc<PersistentVolume>],
        pvcs: &[Arc<PersistentVolumeClaim>],
        classes: &[Arc<StorageClass>],
    ) {
        for p in pvs {
            c.volumes
                .pvs
                .upsert(p.metadata.name.clone().unwrap(), p.clone());
        }
        for p in pvcs {
            c.volumes.pvcs.upsert(pvc_key(p), p.clone());
        }
        for s in classes {
            c.volumes
                .classes
                .insert(s.metadata.name.clone().unwrap(), s.clone());
        }
    }

    fn claim_pod(claims: &[&str]) -> Arc<PodInfo> {
        let vols: Vec<Value> = claims
            .iter()
            .map(|c| json!({"name": c, "persistentVolumeClaim": {"claimName": c}}))
            .collect();
        pod("p", json!({}), json!({"volumes": vols}))
    }

    fn two_nodes() -> Cache {
        cache(
            &[
                node("n1", json!({"zone": "a"}), json!({})),
                node("n2", json!({"zone": "b"}), json!({})),
            ],
            &[],
        )
    }

    #[test]
    fn prefilter_rejects_missing_lost_and_immediate_claims() {
        let mut c = two_nodes();
        let reason = |c: &Cache| {
            State::new(&claim_pod(&["data"]), c)
                .rejection
                .map(|f| f.reasons[0].clone())
        };
        assert_eq!(
            reason(&c).as_deref(),
            Some("persistentvolumeclaim \"data\" not found")
        );
        with_volumes(
            &mut c,
            &[],
            &[pvc(
                "data",
                "1Gi",
                json!({"spec": {"storageClassName": "fast"}}),
            )],
            &[class("fast", "Immediate", "x.io/p")],
        );
        assert_eq!(reason(&c).as_deref(), Some(ERR_UNBOUND_IMMEDIATE));
        // No class at all is immediate too.
        c.volumes.pvcs.upsert(
            "default/data".into(),
            pvc(
                "data",
                "1Gi",
                json!({"metadata": {"resourceVersion": "2"}, "spec": {"storageClassName": null}}),
            ),
        );
        assert_eq!(reason(&c).as_deref(), Some(ERR_UNBOUND_IMMEDIATE));
        c.volumes.pvcs.upsert(
            "default/data".into(),
            pvc(
                "data",
                "1Gi",
                json!({"metadata": {"resourceVersion": "3"}, "spec": {"volumeName": "gone"},
                       "status": {"phase": "Lost"}}),
            ),
        );
        assert_eq!(
            reason(&c).as_deref(),
            Some("persistentvolumeclaim \"data\" bound to non-existent persistentvolume \"gone\"")
        );
        // Waiting for the first consumer is not a rejection.
        c.volumes.pvcs.upsert(
            "default/data".into(),
            pvc("data", "1Gi", json!({"metadata": {"resourceVersion": "4"}})),
        );
        with_volumes(
            &mut c,
            &[],
            &[],
            &[class(
                "local",
                "WaitForFirstConsumer",
                NOT_SUPPORTED_PROVISIONER,
            )],
        );
        assert_eq!(reason(&c), None);
    }

    #[test]
    fn bound_local_volumes_pin_the_pod_and_conflict_elsewhere() {
        let mut c = two_nodes();
        let bound = json!({"metadata": {"annotations": {ANN_BIND_COMPLETED: "yes"}},
                           "spec": {"volumeName": "pv1"}});
        with_volumes(
            &mut c,
            &[pv("pv1", "1Gi", on_host("n1"))],
            &[pvc("data", "1Gi", bound)],
            &[],
        );
        let s = State::new(&claim_pod(&["data"]), &c);
        assert!(s.rejection.is_none());
        assert_eq!(s.eligible, Some(HashSet::from(["n1".to_string()])));
        assert!(s.filter(&info(&c, "n1")).is_ok());
        assert_eq!(
            s.filter(&info(&c, "n2")).unwrap_err().reasons,
            vec![ERR_REASON_NODE_CONFLICT]
        );
        // Zone affinity: no eligible-node shortcut, the filter decides.
        let zone = json!({"metadata": {"resourceVersion": "2"}, "spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}]}}}});
        c.volumes.pvs.upsert("pv1".into(), pv("pv1", "1Gi", zone));
        let s = State::new(&claim_pod(&["data"]), &c);
        assert_eq!(s.eligible, None);
        assert!(s.filter(&info(&c, "n1")).is_err());
        assert!(s.filter(&info(&c, "n2")).is_ok());
        // The volume is unknown.
        c.volumes.pvs.remove("pv1");
        let s = State::new(&claim_pod(&["data"]), &c);
        assert_eq!(
            s.filter(&info(&c, "n2")).unwrap_err().reasons,
            vec![ERR_REASON_PV_NOT_EXIST]
        );
    }

    #[test]
    fn delayed_claims_take_the_smallest_fitting_volume_of_the_node() {
        let mut c = two_nodes();
        with_volumes(
            &mut c,
            &[
                pv("n1-big", "10Gi", on_host("n1")),
                pv("n1-small", "2Gi", on_host("n1")),
                pv("n1-tiny", "1Gi", on_host("n1")),
                pv("n2-rwx", "5Gi", {
                    let mut v = on_host("n2");
                    merge(&mut v, json!({"spec": {"accessModes": ["ReadWriteMany"]}}));
                    v
                }),
            ],
            &[pvc("a", "1500Mi", json!({})), pvc("b", "1Gi", json!({}))],
            &[class(
                "local",
                "WaitForFirstConsumer",
                NOT_SUPPORTED_PROVISIONER,
            )],
        );
        let s = State::new(&claim_pod(&["a", "b"]), &c);
        let got = s.find(&info(&c, "n1")).unwrap();
        let names: Vec<(&str, &str)> = got
            .static_bindings
            .iter()
            .map(|(pv, pvc)| {
                (
                    pvc.metadata.name.as_deref().unwrap(),
                    pv.metadata.name.as_deref().unwrap(),
                )
            })
            .collect();
        // Smallest request first: b takes the 1Gi volume, a the 2Gi one.
        assert_eq!(names, vec![("b", "n1-tiny"), ("a", "n1-small")]);
        // n2 has only a volume with the wrong access mode, and the class cannot provision.
        assert_eq!(
            s.find(&info(&c, "n2")).unwrap_err().reasons,
            vec![ERR_REASON_BIND_CONFLICT]
        );

        // Reserve: the chosen volumes are pre-bound in the cache, so the next pod does not
        // see them.
        let p = claim_pod(&["a", "b"]);
        let assumed = c
            .volumes
            .assume_pod_volumes(&p, "n1", got)
            .unwrap()
            .unwrap();
        let pre = &assumed.static_bindings[0].0;
        let r = pre.spec.as_ref().unwrap().claim_ref.as_ref().unwrap();
        assert_eq!(r.name.as_deref(), Some("b"));
        assert_eq!(r.uid.as_deref(), Some("uid-b"));
        assert_eq!(
            annotation(&pre.metadata, ANN_BOUND_BY_CONTROLLER),
            Some("yes")
        );
        c.volumes
            .pvcs
            .upsert("default/c".into(), pvc("c", "1Gi", json!({})));
        let s2 = State::new(&claim_pod(&["c"]), &c);
        let got2 = s2.find(&info(&c, "n1")).unwrap();
        assert_eq!(
            got2.static_bindings[0].0.metadata.name.as_deref(),
            Some("n1-big")
        );
        // Unreserve gives them back.
        c.volumes.revert(&assumed);
        let s3 = State::new(&claim_pod(&["c"]), &c);
        assert_eq!(
            s3.find(&info(&c, "n1")).unwrap().static_bindings[0]
                .0
                .metadata
                .name
                .as_deref(),
            Some("n1-tiny")
        );
    }

    #[test]
    fn provisioning_classes_and_selected_nodes() {
        let mut c = two_nodes();
        let mut fast = (*class("fast", "WaitForFirstConsumer", "rancher.io/local-path")).clone();
        fast.allowed_topologies = Some(
            serde_json::from_value(
                json!([{"matchLabelExpressions": [{"key": "zone", "values": ["a"]}]}]),
            )
            .unwrap(),
        );
        with_volumes(
            &mut c,
            &[],
            &[pvc(
                "d",
                "1Gi",
                json!({"spec": {"storageClassName": "fast"}}),
            )],
            &[Arc::new(fast)],
        );
        let p = claim_pod(&["d"]);
        let s = State::new(&p, &c);
        let got = s.find(&info(&c, "n1")).unwrap();
        assert_eq!(got.dynamic_provisions.len(), 1);
        assert_eq!(
            s.find(&info(&c, "n2")).unwrap_err().reasons,
            vec![ERR_REASON_BIND_CONFLICT],
            "outside allowedTopologies"
        );
        let assumed = c
            .volumes
            .assume_pod_volumes(&p, "n1", got)
            .unwrap()
            .unwrap();
        assert_eq!(
            annotation(&assumed.dynamic_provisions[0].metadata, ANN_SELECTED_NODE),
            Some("n1")
        );
        // A claim whose node was selected fits that node only.
        let s = State::new(&p, &c);
        assert!(s.find(&info(&c, "n1")).is_ok());
        assert!(s.find(&info(&c, "n2")).is_err());
        // PreBind waits for the binder, then fails once the annotation is dropped.
        let labels = info(&c, "n1").labels;
        let written = pvc(
            "d",
            "1Gi",
            json!({"metadata": {"resourceVersion": "5", "annotations": {ANN_SELECTED_NODE: "n1"}},
                   "spec": {"storageClassName": "fast"}}),
        );
        let assumed = PodVolumes {
            dynamic_provisions: vec![written.clone()],
            ..PodVolumes::default()
        };
        assert_eq!(
            c.volumes.check_bindings("n1", &labels, &assumed),
            Ok(false),
            "the watch has not shown the write yet"
        );
        c.volumes.pvcs.upsert("default/d".into(), written);
        assert_eq!(c.volumes.check_bindings("n1", &labels, &assumed), Ok(false));
        c.volumes.pvcs.upsert(
            "default/d".into(),
            pvc(
                "d",
                "1Gi",
                json!({"metadata": {"resourceVersion": "6", "annotations": {ANN_SELECTED_NODE: "n1", ANN_BIND_COMPLETED: "yes"}},
                       "spec": {"storageClassName": "fast", "volumeName": "pvc-d"}}),
            ),
        );
        assert_eq!(
            c.volumes.check_bindings("n1", &labels, &assumed),
            Ok(false),
            "the provisioned volume is not seen yet"
        );
        c.volumes
            .pvs
            .upsert("pvc-d".into(), pv("pvc-d", "1Gi", on_host("n1")));
        assert_eq!(c.volumes.check_bindings("n1", &labels, &assumed), Ok(true));
        c.volumes.pvcs.upsert(
            "default/d".into(),
            pvc(
                "d",
                "1Gi",
                json!({"metadata": {"resourceVersion": "7", "annotations": {"x": "y"}},
                       "spec": {"storageClassName": "fast"}}),
            ),
        );
        assert_eq!(
            c.volumes.check_bindings("n1", &labels, &assumed),
            Err("provisioning failed for PVC \"d\"".into())
        );
    }

    #[test]
    fn the_watch_does_not_undo_a_newer_assumption() {
        let mut cache: AssumeCache<PersistentVolume> = AssumeCache::default();
        cache.upsert("v".into(), pv("v", "1Gi", json!({})));
        let mut assumed = (*pv("v", "1Gi", json!({}))).clone();
        assumed.metadata.resource_version = Some("3".into());
        cache.assume("v", Arc::new(assumed)).unwrap();
        // An older or equal version from the watch is ignored; a newer one replaces.
        cache.upsert(
            "v".into(),
            pv("v", "1Gi", json!({"metadata": {"resourceVersion": "3"}})),
        );
        assert_eq!(
            cache.get("v").unwrap().metadata.resource_version.as_deref(),
            Some("3")
        );
        assert_eq!(
            cache
                .get_api("v")
                .unwrap()
                .metadata
                .resource_version
                .as_deref(),
            Some("1")
        );
        cache.upsert(
            "v".into(),
            pv("v", "1Gi", json!({"metadata": {"resourceVersion": "4"}})),
        );
        assert_eq!(
            cache
                .get_api("v")
                .unwrap()
                .metadata
                .resource_version
                .as_deref(),
            Some("4")
        );
        assert!(cache.assume("v", pv("v", "1Gi", json!({}))).is_err());
    }
}
