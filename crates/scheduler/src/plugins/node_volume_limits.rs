//! NodeVolumeLimits (upstream's `nodevolumelimits.CSILimits`): a node takes no more CSI
//! volumes per driver than its `CSINode` allows (`spec.drivers[].allocatable.count`, or the
//! node's `attachable-volumes-csi-<driver>` allocatable, as upstream still reads).
//!
//! A volume is a claim's (a `persistentVolumeClaim` or generic ephemeral volume): a bound
//! volume with `spec.csi` counts as `<driver>/<volumeHandle>`; a claim not bound yet (or whose
//! volume is unknown) counts by its class's provisioner under a handle of its own. Volumes
//! shared with a pod already on the node are counted once. Not done (rk3s has no in-tree
//! volume plugins): in-tree → CSI migration of PVs, classes and inline volumes.
//!
//! - **PreFilter** ([`State::new`]): skipped for a pod without claims; else the pod's CSI
//!   volumes, the limits of the nodes that have one for their drivers and the CSI volumes of
//!   the pods on those nodes are worked out once.
//! - **Filter** ([`State::filter`]): `node(s) exceed max volume count` (resolvable: the pods
//!   of the node given are counted, so preemption's dry run sees victims go).

use std::collections::{HashMap, HashSet};

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use rand::Rng as _;

use super::volume_binding::{Volumes, claim_class, created_for, volume_name};
use super::{Failure, FilterResult};
use crate::cache::{Cache, NodeInfo, PodInfo, PodKey};

pub const NAME: &str = "NodeVolumeLimits";

pub const ERR_REASON_MAX_VOLUME_COUNT_EXCEEDED: &str = "node(s) exceed max volume count";
/// The node allocatable key of a driver's limit (upstream's `GetCSIAttachLimitKey`, for
/// names short enough not to be hashed).
const CSI_ATTACH_LIMIT_PREFIX: &str = "attachable-volumes-csi-";

/// The plugin's cycle state.
#[derive(Debug, Default)]
pub struct State {
    /// Filter's verdict on every node, when the pod's own claims cannot be looked up.
    rejection: Option<Failure>,
    /// The pod's CSI volumes: unique name → driver. Empty: nothing to check.
    new_volumes: HashMap<String, String>,
    /// Per node, the limit per driver (only nodes limiting a driver the pod uses).
    limits: HashMap<String, HashMap<String, i64>>,
    /// The CSI volumes of the pods on those nodes.
    pod_volumes: HashMap<PodKey, Vec<(String, String)>>,
}

/// Upstream's `getCSIDriverInfo` (+ `getCSIDriverInfoFromSC`): the claim's driver and volume
/// handle, `None` when it is not a CSI volume.
fn driver_info(
    pvc: &PersistentVolumeClaim,
    volumes: &Volumes,
    prefix: &str,
) -> Option<(String, String)> {
    let name = volume_name(pvc);
    if !name.is_empty()
        && let Some(pv) = volumes.pvs.get(name)
    {
        let csi = pv.spec.as_ref()?.csi.as_ref()?;
        return Some((csi.driver.clone(), csi.volume_handle.clone()));
    }
    // Not bound (or the volume is gone): what its class would provision.
    let class = claim_class(pvc);
    if class.is_empty() {
        return None;
    }
    let sc = volumes.classes.get(class)?;
    Some((
        sc.provisioner.clone(),
        format!(
            "{prefix}-{}/{}",
            pvc.metadata.namespace.as_deref().unwrap_or_default(),
            pvc.metadata.name.as_deref().unwrap_or_default()
        ),
    ))
}

/// Upstream's `filterAttachableVolumes`: the pod's CSI volumes (unique name, driver). A claim
/// missing is an error for the pod to schedule (`Err`), skipped for the others.
fn attachable(
    pod: &PodInfo,
    volumes: &Volumes,
    prefix: &str,
    new_pod: bool,
) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for c in &pod.claims {
        let Some(pvc) = volumes.pvcs.get(&format!("{}/{}", pod.namespace, c.name)) else {
            if new_pod {
                return Err(format!(
                    "looking up PVC {}/{}: persistentvolumeclaim \"{}\" not found",
                    pod.namespace, c.name, c.name
                ));
            }
            continue;
        };
        if c.ephemeral {
            // The claim of an ephemeral volume must be the pod's own (VolumeBinding's
            // PreFilter rejects the pod to schedule otherwise).
            if !created_for(pvc, pod) {
                continue;
            }
        }
        if let Some((driver, handle)) = driver_info(pvc, volumes, prefix)
            && !driver.is_empty()
            && !handle.is_empty()
        {
            out.push((format!("{driver}/{handle}"), driver));
        }
    }
    Ok(out)
}

/// Upstream's `getVolumeLimits`: the node's `attachable-volumes-csi-*` allocatable, then
/// the CSINode's counts.
fn node_limits(node: &NodeInfo, volumes: &Volumes) -> HashMap<String, i64> {
    let mut limits = HashMap::new();
    if let Some(alloc) = node
        .node
        .as_ref()
        .and_then(|n| n.status.as_ref())
        .and_then(|s| s.allocatable.as_ref())
    {
        for (k, v) in alloc {
            if let Some(driver) = k.strip_prefix(CSI_ATTACH_LIMIT_PREFIX)
                && let Some(n) = crate::quantity::value(&v.0)
            {
                limits.insert(driver.to_string(), n);
            }
        }
    }
    if let Some(csi) = volumes.csi_nodes.get(&node.name) {
        for d in &csi.spec.drivers {
            if let Some(count) = d.allocatable.as_ref().and_then(|a| a.count) {
                limits.insert(d.name.clone(), i64::from(count));
            }
        }
    }
    limits
}

impl State {
    /// PreFilter.
    pub fn new(pod: &PodInfo, cache: &Cache) -> State {
        if pod.claims.is_empty() {
            return State::default();
        }
        // Upstream's random prefix keeps unbound claims apart from real volume handles.
        let prefix: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(32)
            .map(char::from)
            .collect();
        let vols = &cache.volumes;
        let new_volumes: HashMap<String, String> = match attachable(pod, vols, &prefix, true) {
            Ok(v) => v.into_iter().collect(),
            Err(e) => {
                return State {
                    rejection: Some(Failure::unresolvable(NAME, e)),
                    ..State::default()
                };
            }
        };
        if new_volumes.is_empty() {
            return State::default();
        }
        let drivers: HashSet<&str> = new_volumes.values().map(String::as_str).collect();
        let mut limits = HashMap::new();
        let mut pod_volumes = HashMap::new();
        for n in cache.nodes().iter().filter(|n| n.node.is_some()) {
            let mut l = node_limits(n, vols);
            l.retain(|d, _| drivers.contains(d.as_str()));
            if l.is_empty() {
                continue;
            }
            for p in n.pods.values().filter(|p| !p.claims.is_empty()) {
                if let Ok(v) = attachable(p, vols, &prefix, false)
                    && !v.is_empty()
                {
                    pod_volumes.insert(p.key.clone(), v);
                }
            }
            limits.insert(n.name.clone(), l);
        }
        State {
            rejection: None,
            new_volumes,
            limits,
            pod_volumes,
        }
    }

    /// Filter.
    pub fn filter(&self, node: &NodeInfo) -> FilterResult {
        if let Some(f) = &self.rejection {
            return Err(f.clone());
        }
        let Some(limits) = self.limits.get(&node.name) else {
            return Ok(());
        };
        let attached: HashMap<&str, &str> = node
            .pods
            .keys()
            .filter_map(|k| self.pod_volumes.get(k))
            .flatten()
            .map(|(u, d)| (u.as_str(), d.as_str()))
            .collect();
        let mut attached_count: HashMap<&str, i64> = HashMap::new();
        for d in attached.values() {
            *attached_count.entry(d).or_default() += 1;
        }
        let mut new_count: HashMap<&str, i64> = HashMap::new();
        for (u, d) in &self.new_volumes {
            if !attached.contains_key(u.as_str()) {
                *new_count.entry(d.as_str()).or_default() += 1;
            }
        }
        for (driver, count) in new_count {
            if let Some(max) = limits.get(driver)
                && attached_count.get(driver).copied().unwrap_or(0) + count > *max
            {
                return Err(Failure::unschedulable(
                    NAME,
                    ERR_REASON_MAX_VOLUME_COUNT_EXCEEDED,
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testutil::{cache, info, node, pod};
    use k8s_openapi::api::core::v1::PersistentVolume;
    use k8s_openapi::api::storage::v1::{CSINode, StorageClass};
    use serde_json::{Value, json};
    use std::sync::Arc;

    fn csi_pv(c: &mut Cache, name: &str, driver: &str, handle: &str) {
        let pv: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": name, "resourceVersion": "1"},
            "spec": {"csi": {"driver": driver, "volumeHandle": handle}},
        }))
        .unwrap();
        c.volumes.pvs.upsert(name.into(), Arc::new(pv));
    }

    fn claim(c: &mut Cache, name: &str, spec: Value) {
        let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "resourceVersion": "1"},
            "spec": spec,
        }))
        .unwrap();
        c.volumes
            .pvcs
            .upsert(format!("default/{name}"), Arc::new(pvc));
    }

    fn csi_node(c: &mut Cache, name: &str, drivers: Value) {
        let n: CSINode = serde_json::from_value(json!({
            "metadata": {"name": name}, "spec": {"drivers": drivers},
        }))
        .unwrap();
        c.volumes.csi_nodes.insert(name.into(), Arc::new(n));
    }

    fn claims_pod(name: &str, claims: &[&str]) -> Arc<PodInfo> {
        let vols: Vec<Value> = claims
            .iter()
            .map(|c| json!({"name": c, "persistentVolumeClaim": {"claimName": c}}))
            .collect();
        pod(name, json!({}), json!({"volumes": vols}))
    }

    #[test]
    fn unique_csi_volumes_per_driver_against_the_csinode_count() {
        let mut c = cache(
            &[
                node("n1", json!({}), json!({})),
                node("n2", json!({}), json!({})),
            ],
            &[],
        );
        csi_node(
            &mut c,
            "n1",
            json!([{"name": "ebs.csi", "nodeID": "i-1", "allocatable": {"count": 2}},
                   {"name": "other.csi", "nodeID": "i-1"}]),
        );
        for (pv, handle) in [("pv-a", "a"), ("pv-b", "b"), ("pv-c", "c")] {
            csi_pv(&mut c, pv, "ebs.csi", handle);
        }
        claim(&mut c, "a", json!({"volumeName": "pv-a"}));
        claim(&mut c, "b", json!({"volumeName": "pv-b"}));
        claim(&mut c, "c", json!({"volumeName": "pv-c"}));
        // Not CSI: never counted.
        claim(&mut c, "plain", json!({}));
        let on_n1 = claims_pod("on-n1", &["a", "plain"]);
        c.assume(on_n1.clone(), "n1");

        // One attached + the shared one again + one new = 2: fits.
        let p = claims_pod("p", &["a", "b", "plain"]);
        let s = State::new(&p, &c);
        assert!(s.filter(&info(&c, "n1")).is_ok());
        // One attached + two new = 3 > 2.
        let q = claims_pod("q", &["b", "c"]);
        let s = State::new(&q, &c);
        assert_eq!(
            s.filter(&info(&c, "n1")).unwrap_err(),
            Failure::unschedulable(NAME, ERR_REASON_MAX_VOLUME_COUNT_EXCEEDED)
        );
        // No CSINode (no limit): fine.
        assert!(s.filter(&info(&c, "n2")).is_ok());
        // Preemption's dry run: without the pod on it, n1 has room.
        let mut n1 = info(&c, "n1");
        n1.remove_pod(&on_n1.key);
        assert!(s.filter(&n1).is_ok());
    }

    #[test]
    fn unbound_claims_count_by_their_class_and_node_allocatable_limits_too() {
        let mut c = cache(&[node("n1", json!({}), json!({}))], &[]);
        let mut n = (*c.node("n1").unwrap().node.clone().unwrap()).clone();
        n.status
            .as_mut()
            .unwrap()
            .allocatable
            .as_mut()
            .unwrap()
            .insert(
                "attachable-volumes-csi-disk.csi".into(),
                k8s_openapi::apimachinery::pkg::api::resource::Quantity("1".into()),
            );
        c.upsert_node(Arc::new(n));
        let sc: StorageClass = serde_json::from_value(json!({
            "metadata": {"name": "fast"}, "provisioner": "disk.csi",
        }))
        .unwrap();
        c.volumes.classes.insert("fast".into(), Arc::new(sc));
        claim(&mut c, "x", json!({"storageClassName": "fast"}));
        claim(&mut c, "y", json!({"storageClassName": "fast"}));
        let s = State::new(&claims_pod("p", &["x"]), &c);
        assert!(s.filter(&info(&c, "n1")).is_ok());
        let s = State::new(&claims_pod("p", &["x", "y"]), &c);
        assert!(s.filter(&info(&c, "n1")).is_err());
        // The CSINode's count replaces the node's.
        csi_node(
            &mut c,
            "n1",
            json!([{"name": "disk.csi", "nodeID": "i", "allocatable": {"count": 5}}]),
        );
        let s = State::new(&claims_pod("p", &["x", "y"]), &c);
        assert!(s.filter(&info(&c, "n1")).is_ok());
    }
}
