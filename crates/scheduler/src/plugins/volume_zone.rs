//! VolumeZone (upstream's `pkg/scheduler/framework/plugins/volumezone`): the zone and region
//! labels of the volumes of a pod's bound claims must match the node's, when the node has any
//! such label. Values may list several zones separated by `__`; a beta label on the volume is
//! also matched against the node's GA label.
//!
//! PreFilter reads the claims and volumes as the listers show them (the API's versions, not
//! what VolumeBinding assumed), after VolumeBinding's PreFilter: a claim or volume that is
//! missing, or an unbound claim that does not wait for its first consumer, rejects the pod.

use std::collections::BTreeSet;

use super::{Failure, FilterResult};
use crate::cache::{Cache, NodeInfo, PodInfo};
use crate::plugins::volume_binding::{claim_class, volume_name};

pub const NAME: &str = "VolumeZone";
pub const ERR_REASON_CONFLICT: &str = "node(s) had no available volume zone";

const BETA_ZONE: &str = "failure-domain.beta.kubernetes.io/zone";
const BETA_REGION: &str = "failure-domain.beta.kubernetes.io/region";
const ZONE: &str = "topology.kubernetes.io/zone";
const REGION: &str = "topology.kubernetes.io/region";
const TOPOLOGY_LABELS: [&str; 4] = [BETA_ZONE, BETA_REGION, ZONE, REGION];

/// The plugin's cycle state: the topology labels of the pod's bound volumes.
#[derive(Debug, Default)]
pub struct State {
    /// PreFilter rejected the pod.
    pub rejection: Option<Failure>,
    topologies: Vec<(&'static str, BTreeSet<String>)>,
}

fn rejected(reason: String) -> State {
    State {
        rejection: Some(Failure::unresolvable(NAME, reason)),
        topologies: Vec::new(),
    }
}

/// `LabelZonesToSet`: `a__b` is {a, b}; an empty member makes the label unusable.
fn zones(value: &str) -> Option<BTreeSet<String>> {
    value
        .split("__")
        .map(|z| {
            let z = z.trim();
            (!z.is_empty()).then(|| z.to_string())
        })
        .collect()
}

impl State {
    /// PreFilter (`getPVbyPod`).
    pub fn new(pod: &PodInfo, cache: &Cache) -> State {
        let vols = &cache.volumes;
        let mut topologies = Vec::new();
        for c in &pod.claims {
            let Some(pvc) = vols.pvcs.get_api(&format!("{}/{}", pod.namespace, c.name)) else {
                return rejected(format!("persistentvolumeclaim \"{}\" not found", c.name));
            };
            let pv_name = volume_name(pvc);
            if pv_name.is_empty() {
                let class = claim_class(pvc);
                if class.is_empty() {
                    return rejected(
                        "PersistentVolumeClaim had no pv name and storageClass name".into(),
                    );
                }
                let Some(sc) = vols.classes.get(class) else {
                    return rejected(format!("storageclass.storage.k8s.io \"{class}\" not found"));
                };
                if sc.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer") {
                    continue;
                }
                return rejected("PersistentVolume had no name".into());
            }
            let Some(pv) = vols.pvs.get_api(pv_name) else {
                return rejected(format!("persistentvolume \"{pv_name}\" not found"));
            };
            let labels = pv.metadata.labels.as_ref();
            for key in TOPOLOGY_LABELS {
                if let Some(set) = labels.and_then(|l| l.get(key)).and_then(|v| zones(v)) {
                    topologies.push((key, set));
                }
            }
        }
        State {
            rejection: None,
            topologies,
        }
    }

    /// Filter.
    pub fn filter(&self, node: &NodeInfo) -> FilterResult {
        if self.topologies.is_empty()
            || !TOPOLOGY_LABELS.iter().any(|k| node.labels.contains_key(*k))
        {
            // A node without zone labels (a single-zone cluster) takes any volume.
            return Ok(());
        }
        for (key, values) in &self.topologies {
            let ga = match *key {
                BETA_ZONE => ZONE,
                BETA_REGION => REGION,
                k => k,
            };
            let v = node.labels.get(*key).or_else(|| node.labels.get(ga));
            if !v.is_some_and(|v| values.contains(v)) {
                return Err(Failure::unresolvable(NAME, ERR_REASON_CONFLICT));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    use serde_json::json;

    use super::*;
    use crate::plugins::testutil::{cache, info, node, pod};
    use crate::plugins::volume_binding::pvc_key;

    fn cluster() -> Cache {
        let mut c = cache(
            &[
                node("a", json!({ZONE: "a", REGION: "r"}), json!({})),
                node("b", json!({BETA_ZONE: "b"}), json!({})),
                node("plain", json!({}), json!({})),
            ],
            &[],
        );
        let pv: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": "pv", "labels": {BETA_ZONE: "a__c"}},
            "spec": {"capacity": {"storage": "1Gi"}},
        }))
        .unwrap();
        c.volumes.pvs.upsert("pv".into(), Arc::new(pv));
        let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": "data", "namespace": "default"},
            "spec": {"volumeName": "pv"},
        }))
        .unwrap();
        c.volumes.pvcs.upsert(pvc_key(&pvc), Arc::new(pvc));
        c
    }

    fn claim_pod(claim: &str) -> Arc<PodInfo> {
        pod(
            "p",
            json!({}),
            json!({"volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": claim}}]}),
        )
    }

    #[test]
    fn volume_zones_match_the_node_or_a_node_without_zones() {
        let c = cluster();
        let s = State::new(&claim_pod("data"), &c);
        assert!(s.rejection.is_none());
        // The beta label on the volume matches the node's GA label; `__` lists zones.
        assert!(s.filter(&info(&c, "a")).is_ok());
        assert_eq!(
            s.filter(&info(&c, "b")).unwrap_err().reasons,
            vec![ERR_REASON_CONFLICT]
        );
        assert!(s.filter(&info(&c, "plain")).is_ok());
    }

    #[test]
    fn missing_volumes_reject_at_prefilter() {
        let mut c = cluster();
        c.volumes.pvs.remove("pv");
        let s = State::new(&claim_pod("data"), &c);
        assert_eq!(
            s.rejection.unwrap().reasons,
            vec!["persistentvolume \"pv\" not found"]
        );
        let s = State::new(&claim_pod("other"), &c);
        assert_eq!(
            s.rejection.unwrap().reasons,
            vec!["persistentvolumeclaim \"other\" not found"]
        );
    }
}
