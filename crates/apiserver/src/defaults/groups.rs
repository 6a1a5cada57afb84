//! Defaults of the groups validated in `validation::{storage, networking, scheduling,
//! discovery}`, as upstream v1.33's `SetDefaults_*` of their v1 APIs: StorageClass
//! (`reclaimPolicy` `Delete`, `volumeBindingMode` `Immediate`), CSIDriver (`attachRequired`
//! true; `podInfoOnMount`, `storageCapacity`, `requiresRepublish` and — the
//! `SELinuxMountReadWriteOncePod` gate being on in v1.33 — `seLinuxMount` false;
//! `fsGroupPolicy` `ReadWriteOnceWithFSType`; `volumeLifecycleModes` `[Persistent]`),
//! NetworkPolicy (`policyTypes` `[Ingress]`, plus `Egress` when egress rules are given; port
//! `protocol` `TCP`), PriorityClass (`preemptionPolicy` `PreemptLowerPriority`) and
//! EndpointSlice ports (`name` `""`, `protocol` `TCP`), and admissionregistration.k8s.io's
//! webhook configurations (per webhook `failurePolicy` `Fail`, `matchPolicy` `Equivalent`,
//! empty `namespaceSelector`/`objectSelector`, `timeoutSeconds` 10, a mutating webhook's
//! `reinvocationPolicy` `Never`, rule `scope` `*`, service `port` 443) and admission policies
//! and bindings (`failurePolicy` `Fail`; `matchConstraints`/`matchResources` with
//! `matchPolicy` `Equivalent`, empty selectors, rule `scope` `*`). RuntimeClass, Lease,
//! CSINode, CSIStorageCapacity and VolumeAttachment have no defaults upstream.

use serde_json::{Map, Value, json};

use super::{child, default, each, existing};

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
        (ADMISSION, "ValidatingWebhookConfiguration" | "MutatingWebhookConfiguration") => {
            let mutating = kind == "MutatingWebhookConfiguration";
            for hook in each(o, "webhooks") {
                default(hook, "failurePolicy", json!("Fail"));
                default(hook, "matchPolicy", json!("Equivalent"));
                default(hook, "namespaceSelector", json!({}));
                default(hook, "objectSelector", json!({}));
                default(hook, "timeoutSeconds", json!(10));
                if mutating {
                    default(hook, "reinvocationPolicy", json!("Never"));
                }
                rule_scopes(hook, "rules");
                if let Some(service) =
                    existing(hook, "clientConfig").and_then(|c| existing(c, "service"))
                {
                    default(service, "port", json!(443));
                }
            }
        }
        (ADMISSION, "ValidatingAdmissionPolicy") => {
            if let Some(spec) = child(o, "spec") {
                default(spec, "failurePolicy", json!("Fail"));
                if let Some(m) = existing(spec, "matchConstraints") {
                    match_resources(m);
                }
            }
        }
        (ADMISSION, "ValidatingAdmissionPolicyBinding") => {
            if let Some(m) = existing(o, "spec").and_then(|s| existing(s, "matchResources")) {
                match_resources(m);
            }
        }
        _ => {}
    }
}

const ADMISSION: &str = "admissionregistration.k8s.io";

/// Upstream's `SetDefaults_Rule` of each rule in `key`: `scope` `*`.
fn rule_scopes(o: &mut Map<String, Value>, key: &str) {
    for rule in each(o, key) {
        default(rule, "scope", json!("*"));
    }
}

/// Upstream's `SetDefaults_MatchResources`.
fn match_resources(m: &mut Map<String, Value>) {
    default(m, "matchPolicy", json!("Equivalent"));
    default(m, "namespaceSelector", json!({}));
    default(m, "objectSelector", json!({}));
    rule_scopes(m, "resourceRules");
    rule_scopes(m, "excludeResourceRules");
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
        let hooks = defaulted(
            ADMISSION,
            "MutatingWebhookConfiguration",
            json!({"webhooks": [{"name": "a.b.c", "rules": [{"operations": ["CREATE"]}],
                "clientConfig": {"service": {"namespace": "n", "name": "s"}}}]}),
        );
        let hook = &hooks["webhooks"][0];
        assert_eq!(
            (
                &hook["failurePolicy"],
                &hook["matchPolicy"],
                &hook["timeoutSeconds"]
            ),
            (&json!("Fail"), &json!("Equivalent"), &json!(10))
        );
        assert_eq!(hook["reinvocationPolicy"], "Never");
        assert_eq!(hook["rules"][0]["scope"], "*");
        assert_eq!(hook["clientConfig"]["service"]["port"], 443);
        assert_eq!(hook["namespaceSelector"], json!({}));
        let by_url = defaulted(
            ADMISSION,
            "ValidatingWebhookConfiguration",
            json!({"webhooks": [{"name": "a.b.c", "clientConfig": {"url": "https://x"}}]}),
        );
        assert_eq!(
            by_url["webhooks"][0]["clientConfig"],
            json!({"url": "https://x"})
        );
        let policy = defaulted(
            ADMISSION,
            "ValidatingAdmissionPolicy",
            json!({"spec": {"matchConstraints": {"resourceRules": [{"operations": ["*"]}]}}}),
        );
        assert_eq!(policy["spec"]["failurePolicy"], "Fail");
        let m = &policy["spec"]["matchConstraints"];
        assert_eq!(m["matchPolicy"], "Equivalent");
        assert_eq!(m["resourceRules"][0]["scope"], "*");
    }
}
