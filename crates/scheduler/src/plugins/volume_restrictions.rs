//! VolumeRestrictions (upstream's `pkg/scheduler/framework/plugins/volumerestrictions`).
//!
//! - **PreFilter** ([`State::new`]): the pod's claims (`persistentVolumeClaim` volumes; not
//!   generic ephemeral ones) must exist (`persistentvolumeclaim "x" not found`, unresolvable).
//!   Its `ReadWriteOncePod` claims that a pod in the cache (bound or assumed) already uses are
//!   counted; with none of them and no inline disk volume the plugin is skipped.
//! - **Filter** ([`State::filter`]): the inline-disk rules upstream still checks —
//!   the same GCE PD (unless both read-only), the same AWS EBS volume, the same iSCSI IQN or
//!   RBD image (monitor overlap, pool, image; unless both read-only) on a pod of the node:
//!   `node(s) had no available disk`; then a `ReadWriteOncePod` claim in use:
//!   `node has pod using PersistentVolumeClaim with the same name and ReadWriteOncePod access
//!   mode`. Both are resolvable: upstream's AddPod/RemovePod make the count follow the pods of
//!   the node looked at, so preemption may evict the lower-priority pod that holds the claim.

use std::collections::{HashMap, HashSet};

use k8s_openapi::api::core::v1::Volume;

use super::{Failure, FilterResult};
use crate::cache::{Cache, NodeInfo, PodInfo};

pub const NAME: &str = "VolumeRestrictions";

pub const ERR_REASON_DISK_CONFLICT: &str = "node(s) had no available disk";
pub const ERR_REASON_READ_WRITE_ONCE_POD_CONFLICT: &str =
    "node has pod using PersistentVolumeClaim with the same name and ReadWriteOncePod access mode";

/// The plugin's cycle state.
#[derive(Debug, Default)]
pub struct State {
    /// PreFilter rejected the pod.
    pub rejection: Option<Failure>,
    /// Upstream's Skip: no inline disk volume and no claim in use elsewhere.
    skip: bool,
    /// The pod has a volume the disk rules look at.
    disks: bool,
    /// The pod's `ReadWriteOncePod` claims (names in its namespace).
    rwop: HashSet<String>,
    namespace: String,
    /// Upstream's `conflictingPVCRefCount` at PreFilter: the pod's RWOP claims used by a pod.
    conflicts: i64,
    /// Per node, the references of its pods to those claims at PreFilter, so that a node
    /// with pods removed (preemption's dry run) counts as upstream's RemovePod makes it.
    refs_by_node: HashMap<String, i64>,
}

/// The inline volumes the disk-conflict rules are about.
fn needs_check(v: &Volume) -> bool {
    v.gce_persistent_disk.is_some()
        || v.aws_elastic_block_store.is_some()
        || v.rbd.is_some()
        || v.iscsi.is_some()
}

/// Upstream's `isVolumeConflict`: `volume` against every volume of an existing pod.
fn conflicts_with(volume: &Volume, existing: &[Volume]) -> bool {
    existing.iter().any(|e| {
        if let (Some(a), Some(b)) = (&volume.gce_persistent_disk, &e.gce_persistent_disk)
            && a.pd_name == b.pd_name
            && !(a.read_only.unwrap_or(false) && b.read_only.unwrap_or(false))
        {
            return true;
        }
        if let (Some(a), Some(b)) = (&volume.aws_elastic_block_store, &e.aws_elastic_block_store)
            && a.volume_id == b.volume_id
        {
            return true;
        }
        if let (Some(a), Some(b)) = (&volume.iscsi, &e.iscsi)
            && a.iqn == b.iqn
            && !(a.read_only.unwrap_or(false) && b.read_only.unwrap_or(false))
        {
            return true;
        }
        if let (Some(a), Some(b)) = (&volume.rbd, &e.rbd) {
            // The pool defaults to "rbd" (upstream's defaulting).
            let pool = |p: &Option<String>| p.clone().unwrap_or_else(|| "rbd".into());
            if a.monitors.iter().any(|m| b.monitors.contains(m))
                && pool(&a.pool) == pool(&b.pool)
                && a.image == b.image
                && !(a.read_only.unwrap_or(false) && b.read_only.unwrap_or(false))
            {
                return true;
            }
        }
        false
    })
}

fn volumes(pod: &PodInfo) -> &[Volume] {
    pod.pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or_default()
}

impl State {
    /// PreFilter.
    pub fn new(pod: &PodInfo, cache: &Cache) -> State {
        let disks = volumes(pod).iter().any(needs_check);
        let mut rwop = HashSet::new();
        for c in pod.claims.iter().filter(|c| !c.ephemeral) {
            let Some(pvc) = cache
                .volumes
                .pvcs
                .get(&format!("{}/{}", pod.namespace, c.name))
            else {
                return State {
                    rejection: Some(Failure::unresolvable(
                        NAME,
                        format!("persistentvolumeclaim \"{}\" not found", c.name),
                    )),
                    ..State::default()
                };
            };
            let modes = pvc.spec.as_ref().and_then(|s| s.access_modes.as_ref());
            if modes.into_iter().flatten().any(|m| m == "ReadWriteOncePod") {
                rwop.insert(c.name.clone());
            }
        }
        let mut state = State {
            disks,
            namespace: pod.namespace.clone(),
            rwop,
            ..State::default()
        };
        if !state.rwop.is_empty() {
            // Upstream's IsPVCUsedByPods over the snapshot: any pod in the cache.
            let mut used: HashSet<&str> = HashSet::new();
            for n in cache.nodes() {
                let mut refs = 0;
                for p in n.pods.values() {
                    let r = state.refs(p);
                    if r > 0 {
                        refs += r;
                        used.extend(
                            p.claims
                                .iter()
                                .filter(|c| !c.ephemeral && state.rwop.contains(&c.name))
                                .map(|c| c.name.as_str()),
                        );
                    }
                }
                if refs > 0 {
                    state.refs_by_node.insert(n.name.clone(), refs);
                }
            }
            state.conflicts = used.len() as i64;
        }
        state.skip = !disks && state.conflicts == 0;
        state
    }

    /// Upstream's `conflictingPVCRefCountForPod`: the pod's volumes naming one of the RWOP
    /// claims (same namespace).
    fn refs(&self, p: &PodInfo) -> i64 {
        if p.namespace != self.namespace {
            return 0;
        }
        p.claims
            .iter()
            .filter(|c| !c.ephemeral && self.rwop.contains(&c.name))
            .count() as i64
    }

    /// Filter.
    pub fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> FilterResult {
        if self.skip {
            return Ok(());
        }
        if self.disks {
            for v in volumes(pod).iter().filter(|v| needs_check(v)) {
                if node.pods.values().any(|e| conflicts_with(v, volumes(e))) {
                    return Err(Failure::unschedulable(NAME, ERR_REASON_DISK_CONFLICT));
                }
            }
        }
        if self.conflicts > 0 {
            let before = self.refs_by_node.get(&node.name).copied().unwrap_or(0);
            let now: i64 = node.pods.values().map(|p| self.refs(p)).sum();
            if self.conflicts + now - before > 0 {
                return Err(Failure::unschedulable(
                    NAME,
                    ERR_REASON_READ_WRITE_ONCE_POD_CONFLICT,
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
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    use serde_json::{Value, json};
    use std::sync::Arc;

    fn with_claim(c: &mut Cache, name: &str, modes: &[&str]) {
        let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "resourceVersion": "1"},
            "spec": {"accessModes": modes},
        }))
        .unwrap();
        c.volumes
            .pvcs
            .upsert(format!("default/{name}"), Arc::new(pvc));
    }

    fn vol_pod(name: &str, volumes: Value) -> Arc<PodInfo> {
        pod(name, json!({}), json!({"volumes": volumes}))
    }

    fn claim_vol(claim: &str) -> Value {
        json!({"name": claim, "persistentVolumeClaim": {"claimName": claim}})
    }

    #[test]
    fn missing_claims_are_rejected_and_unused_rwop_claims_skip() {
        let mut c = cache(&[node("n1", json!({}), json!({}))], &[]);
        let p = vol_pod("p", json!([claim_vol("data")]));
        let s = State::new(&p, &c);
        assert_eq!(
            s.rejection.unwrap().reasons,
            vec!["persistentvolumeclaim \"data\" not found"]
        );
        with_claim(&mut c, "data", &["ReadWriteOncePod"]);
        let s = State::new(&p, &c);
        assert!(s.rejection.is_none());
        assert!(s.skip);
        assert!(s.filter(&p, &info(&c, "n1")).is_ok());
    }

    #[test]
    fn a_read_write_once_pod_claim_in_use_rejects_every_node_but_can_be_preempted() {
        let mut c = cache(
            &[
                node("n1", json!({}), json!({})),
                node("n2", json!({}), json!({})),
            ],
            &[],
        );
        with_claim(&mut c, "solo", &["ReadWriteOncePod"]);
        with_claim(&mut c, "shared", &["ReadWriteOnce"]);
        let holder = vol_pod("holder", json!([claim_vol("solo")]));
        c.assume(holder.clone(), "n1");
        c.assume(vol_pod("other", json!([claim_vol("shared")])), "n2");

        let p = vol_pod("p", json!([claim_vol("solo")]));
        let s = State::new(&p, &c);
        assert!(!s.skip);
        for n in ["n1", "n2"] {
            let f = s.filter(&p, &info(&c, n)).unwrap_err();
            assert_eq!(f.reasons, vec![ERR_REASON_READ_WRITE_ONCE_POD_CONFLICT]);
            assert!(!f.unresolvable, "preemption may help");
        }
        // Preemption's dry run: n1 without the holder fits; n2 without its pod does not.
        let mut n1 = info(&c, "n1");
        n1.remove_pod(&holder.key);
        assert!(s.filter(&p, &n1).is_ok());
        let mut n2 = info(&c, "n2");
        n2.remove_pod("default/other");
        assert!(s.filter(&p, &n2).is_err());
        // A ReadWriteOnce claim shared by two pods is not this plugin's business.
        let q = vol_pod("q", json!([claim_vol("shared")]));
        assert!(State::new(&q, &c).skip);
    }

    #[test]
    fn inline_disks_conflict_unless_both_read_only() {
        let gce = |ro: bool| json!([{"name": "d", "gcePersistentDisk": {"pdName": "pd", "readOnly": ro}}]);
        let ebs =
            json!([{"name": "d", "awsElasticBlockStore": {"volumeID": "vol-1", "readOnly": true}}]);
        let rbd = |mons: Value, ro: bool| json!([{"name": "d", "rbd": {"monitors": mons, "image": "img", "readOnly": ro}}]);
        let iscsi = |iqn: &str| {
            json!([{"name": "d", "iscsi": {"iqn": iqn, "lun": 0, "targetPortal": "1.2.3.4",
                    "readOnly": false}}])
        };
        let cases = [
            (gce(false), gce(true), true),
            (gce(true), gce(true), false),
            // EBS: the same volume conflicts even read-only.
            (ebs.clone(), ebs.clone(), true),
            (
                rbd(json!(["m1", "m2"]), false),
                rbd(json!(["m2", "m3"]), true),
                true,
            ),
            (rbd(json!(["m1"]), false), rbd(json!(["m2"]), false), false),
            (rbd(json!(["m1"]), true), rbd(json!(["m1"]), true), false),
            (iscsi("iqn.a"), iscsi("iqn.a"), true),
            (iscsi("iqn.a"), iscsi("iqn.b"), false),
        ];
        for (i, (existing, new, conflict)) in cases.into_iter().enumerate() {
            let c = cache(
                &[node("n1", json!({}), json!({}))],
                &[(vol_pod("e", existing), "n1")],
            );
            let p = vol_pod("p", new);
            let s = State::new(&p, &c);
            let got = s.filter(&p, &info(&c, "n1"));
            if conflict {
                assert_eq!(
                    got.unwrap_err(),
                    Failure::unschedulable(NAME, ERR_REASON_DISK_CONFLICT),
                    "case {i}"
                );
            } else {
                assert!(got.is_ok(), "case {i}");
            }
        }
    }
}
