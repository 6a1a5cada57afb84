//! Defaults of the groups validated in `validation::{storage, networking, scheduling,
//! discovery}`, as upstream v1.33's `SetDefaults_*` of their v1 APIs: StorageClass
//! (`reclaimPolicy` `Delete`, `volumeBindingMode` `Immediate`), CSIDriver (`attachRequired`
//! true; `podInfoOnMount`, `storageCapacity`, `requiresRepublish` and — the
//! `SELinuxMountReadWriteOncePod` gate being on in v1.33 — `seLinuxMount` false;
//! `fsGroupPolicy` `ReadWriteOnceWithFSType`; `volumeLifecycleModes` `[Persistent]`),
//! NetworkPolicy (`policyTypes` `[Ingress]`, plus `Egress` when egress rules are given; port
//! `protocol` `TCP`), PriorityClass (`preemptionPolicy` `PreemptLowerPriority`) and
//! EndpointSlice ports (`name` `""`, `protocol` `TCP`). RuntimeClass, Lease, CSINode,
//! CSIStorageCapacity and VolumeAttachment have no defaults upstream.

use serde_json::{Map, Value, json};

use super::{child, default, each};

/// Applies the defaults of `group`/`kind` (nothing for other kinds).
pub(super) fn apply(group: &str, kind: &str, o: &mut Map<String, Value>) {
    match (group, kind) {
        ("storage.k8s.io", "StorageClass") => {
            default(o, "reclaimPolicy", json!("Delete"));
            default(o, "volumeBindingMode", json!("Immediate"));
        }
        ("storage.k8s.io", "CSIDriver") => {
            if let Some(spec) = child(o, "spec") {
                default(spec, "attachRequired", json!(true));
                default(spec, "podInfoOnMount", json!(false));
                default(spec, "storageCapacity", json!(false));
                default(spec, "fsGroupPolicy", json!("ReadWriteOnceWithFSType"));
                default(spec, "requiresRepublish", json!(false));
                default(spec, "seLinuxMount", json!(false));
                let no_modes = spec
                    .get("volumeLifecycleModes")
                    .and_then(Value::as_array)
                    .is_none_or(Vec::is_empty);
                if no_modes {
                    spec.insert("volumeLifecycleModes".into(), json!(["Persistent"]));
                }
            }
        }
        ("networking.k8s.io", "NetworkPolicy") => {
            if let Some(spec) = child(o, "spec") {
                let no_types = spec
                    .get("policyTypes")
                    .and_then(Value::as_array)
                    .is_none_or(Vec::is_empty);
                if no_types {
                    let egress = spec
                        .get("egress")
                        .and_then(Value::as_array)
                        .is_some_and(|e| !e.is_empty());
                    let types = if egress {
                        json!(["Ingress", "Egress"])
                    } else {
                        json!(["Ingress"])
                    };
                    spec.insert("policyTypes".into(), types);
                }
                for rules in ["ingress", "egress"] {
                    for rule in each(spec, rules) {
                        for port in each(rule, "ports") {
                            default(port, "protocol", json!("TCP"));
                        }
                    }
                }
            }
        }
        ("scheduling.k8s.io", "PriorityClass") => {
            default(o, "preemptionPolicy", json!("PreemptLowerPriority"));
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            for port in each(o, "ports") {
                default(port, "name", json!(""));
                default(port, "protocol", json!("TCP"));
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaulted(group: &str, kind: &str, v: Value) -> Value {
        let mut v = v;
        if let Some(o) = v.as_object_mut() {
            apply(group, kind, o);
        }
        v
    }

    #[test]
    fn group_defaults_as_upstream_and_idempotent() {
        let sc = defaulted(
            "storage.k8s.io",
            "StorageClass",
            json!({"provisioner": "x"}),
        );
        assert_eq!(sc["reclaimPolicy"], "Delete");
        assert_eq!(sc["volumeBindingMode"], "Immediate");
        let np = defaulted(
            "networking.k8s.io",
            "NetworkPolicy",
            json!({"spec": {"podSelector": {}, "egress": [{"ports": [{"port": 53}]}]}}),
        );
        assert_eq!(np["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
        assert_eq!(np["spec"]["egress"][0]["ports"][0]["protocol"], "TCP");
        let again = defaulted("networking.k8s.io", "NetworkPolicy", np.clone());
        assert_eq!(again, np);
        let drv = defaulted("storage.k8s.io", "CSIDriver", json!({}));
        assert_eq!(drv["spec"]["attachRequired"], true);
        assert_eq!(drv["spec"]["volumeLifecycleModes"], json!(["Persistent"]));
        let pc = defaulted("scheduling.k8s.io", "PriorityClass", json!({"value": 1}));
        assert_eq!(pc["preemptionPolicy"], "PreemptLowerPriority");
        let eps = defaulted(
            "discovery.k8s.io",
            "EndpointSlice",
            json!({"ports": [{"port": 80}]}),
        );
        assert_eq!(
            eps["ports"][0],
            json!({"port": 80, "name": "", "protocol": "TCP"})
        );
    }
}
