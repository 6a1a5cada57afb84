//! Status updates of the API groups other than core/v1, as upstream v1.33's status strategies
//! validate them (`ValidateUpdate` of each `xxxStatusStrategy`):
//!
//! - apps/v1 ([`apps`]): Deployment, ReplicaSet, StatefulSet, DaemonSet — counts not negative,
//!   the orderings of the replica counts, `collisionCount` never decremented.
//! - batch/v1 ([`batch`]): Job — counts, `uncountedTerminatedPods`, the terminal conditions,
//!   `completedIndexes`/`failedIndexes`, `startTime`/`completionTime`, `ready` (with the
//!   `JobManagedBy` rules of v1.33, on by default there, checked only where the status changes).
//!   CronJob: upstream's status strategy validates nothing.
//! - autoscaling/v1 and v2 HorizontalPodAutoscaler: `currentReplicas`, `desiredReplicas` not
//!   negative.
//! - policy/v1 PodDisruptionBudget: `conditions` (metav1's `ValidateConditions`), the four
//!   counts not negative.
//! - certificates.k8s.io/v1 CertificateSigningRequest ([`certificates`]): conditions, the issued
//!   certificate's PEM, no change to an issued certificate, no removed
//!   Approved/Denied/Failed condition.
//! - networking.k8s.io/v1 Ingress: load balancer ingress `ip` and `hostname`. ServiceCIDR:
//!   upstream's `ValidateServiceCIDRStatusUpdate` checks the metadata only (so nothing here;
//!   its conditions are not validated upstream either).
//! - storage.k8s.io/v1 VolumeAttachment: upstream's status strategy runs the whole update
//!   validation (`validation::storage`).
//! - admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy ([`admission`]):
//!   `typeChecking.expressionWarnings` (warning, a JSONPath `fieldRef`) and `conditions`.
//! - apiextensions.k8s.io/v1 CustomResourceDefinition: `acceptedNames`, as the spec's names
//!   (`crd::validation::validate_names`).
//!
//! The metadata is the stored object's (`rest::handlers::merge_update`), so upstream's
//! `ValidateObjectMetaUpdate` part of these functions cannot fail and is left out.

mod admission;
mod apps;
mod batch;
mod certificates;

pub(super) use apps::replica_set;

use serde_json::Value;

use crate::registry::ResourceInfo;
use crate::status::Cause;
use crate::validation::ip::{legacy_ip_causes, parse_sloppy};
use crate::validation::meta::metav1_conditions;
use crate::validation::{NameRule, dns_problems, invalid, items, q, str_of};

const NULL: Value = Value::Null;

/// The causes of the status update of an object of a named API group.
pub(super) fn validate(info: &ResourceInfo, obj: &Value, old: &Value) -> Vec<Cause> {
    match (info.group, info.kind) {
        ("apps", "Deployment") => apps::deployment(obj, old),
        ("apps", "ReplicaSet") => apps::replica_set(obj),
        ("apps", "StatefulSet") => apps::stateful_set(obj, old),
        ("apps", "DaemonSet") => apps::daemon_set(obj, old),
        ("batch", "Job") => batch::job(obj, old),
        ("autoscaling", "HorizontalPodAutoscaler") => horizontal_pod_autoscaler(obj),
        ("policy", "PodDisruptionBudget") => pod_disruption_budget(obj),
        ("certificates.k8s.io", "CertificateSigningRequest") => certificates::csr(obj, old),
        ("networking.k8s.io", "Ingress") => ingress(obj),
        ("storage.k8s.io", "VolumeAttachment") => {
            crate::validation::storage::validate(info, obj, Some(old))
        }
        ("admissionregistration.k8s.io", "ValidatingAdmissionPolicy") => admission::policy(obj),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            let mut causes = Vec::new();
            crate::crd::validate_names(
                status(obj).get("acceptedNames").unwrap_or(&NULL),
                "status.acceptedNames",
                &mut causes,
            );
            causes
        }
        _ => Vec::new(),
    }
}

// ---- shared helpers --------------------------------------------------------------------------

/// The object's `status` (null when absent).
fn status(obj: &Value) -> &Value {
    obj.get("status").unwrap_or(&NULL)
}

/// An integer field, when set.
fn int(v: &Value, key: &str) -> Option<i64> {
    v.get(key).and_then(Value::as_i64)
}

/// `ValidateNonnegativeField` of the integer `key` of `v` (unset counts as 0), at `path`.
fn nonnegative(causes: &mut Vec<Cause>, v: &Value, key: &str, path: &str) {
    if let Some(n) = int(v, key)
        && n < 0
    {
        causes.push(invalid(
            path,
            &n.to_string(),
            "must be greater than or equal to 0",
        ));
    }
}

/// `field.Invalid` with `field.OmitValueType{}`: the value is not shown.
fn invalid_omitted(field: impl Into<String>, detail: &str) -> Cause {
    Cause {
        reason: "FieldValueInvalid",
        message: format!("Invalid value: {detail}"),
        field: field.into(),
    }
}

/// `IsDecremented` of two optional counters: unset after set, or smaller.
fn decremented(new: Option<i64>, old: Option<i64>) -> bool {
    match (new, old) {
        (None, Some(_)) => true,
        (Some(n), Some(o)) => n < o,
        _ => false,
    }
}

/// `collisionCount` may not go down (`status.collisionCount: Invalid value: <new or 0>: cannot
/// be decremented`).
fn collision_count_kept(causes: &mut Vec<Cause>, obj: &Value, old: &Value) {
    let new = int(status(obj), "collisionCount");
    if decremented(new, int(status(old), "collisionCount")) {
        causes.push(invalid(
            "status.collisionCount",
            &new.unwrap_or(0).to_string(),
            "cannot be decremented",
        ));
    }
}

// ---- autoscaling, policy, networking -----------------------------------------------------------

/// `ValidateHorizontalPodAutoscalerStatusUpdate` (v1 and v2 name the two fields alike).
fn horizontal_pod_autoscaler(obj: &Value) -> Vec<Cause> {
    let s = status(obj);
    let mut causes = Vec::new();
    nonnegative(&mut causes, s, "currentReplicas", "status.currentReplicas");
    nonnegative(&mut causes, s, "desiredReplicas", "status.desiredReplicas");
    causes
}

/// `ValidatePodDisruptionBudgetStatusUpdate` for policy/v1.
fn pod_disruption_budget(obj: &Value) -> Vec<Cause> {
    let s = status(obj);
    let mut causes = metav1_conditions(items(s, "conditions"), "status.conditions");
    for key in [
        "disruptionsAllowed",
        "currentHealthy",
        "desiredHealthy",
        "expectedPods",
    ] {
        nonnegative(&mut causes, s, key, &format!("status.{key}"));
    }
    causes
}

/// `ValidateIngressStatusUpdate`: each load balancer ingress point's `ip` (a legacy IP field)
/// and `hostname` (a DNS subdomain, not an IP address).
fn ingress(obj: &Value) -> Vec<Cause> {
    let lb = status(obj).get("loadBalancer").unwrap_or(&NULL);
    let mut causes = Vec::new();
    for (i, point) in items(lb, "ingress").iter().enumerate() {
        let at = format!("status.loadBalancer.ingress[{i}]");
        let ip = str_of(point, "ip");
        if !ip.is_empty() {
            causes.extend(legacy_ip_causes(&format!("{at}.ip"), ip));
        }
        let host = str_of(point, "hostname");
        if !host.is_empty() {
            for m in dns_problems(NameRule::Subdomain, host) {
                causes.push(invalid(format!("{at}.hostname"), &q(host), &m));
            }
            if parse_sloppy(host).is_some() {
                causes.push(invalid(
                    format!("{at}.hostname"),
                    &q(host),
                    "must be a DNS name, not an IP address",
                ));
            }
        }
    }
    causes
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::registry::REGISTRY;
    use serde_json::json;

    pub(crate) fn info(group: &str, version: &str, plural: &str) -> &'static ResourceInfo {
        REGISTRY
            .find(group, version, plural)
            .unwrap_or_else(|| panic!("{group}/{version} {plural} is served"))
    }

    /// `field: message` of each cause of the status update of `old` to `status`.
    pub(crate) fn check(info: &ResourceInfo, old: &Value, status: Value) -> Vec<String> {
        let mut obj = old.clone();
        obj["status"] = status;
        validate(info, &obj, old)
            .into_iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn autoscalers_count_replicas_from_zero() {
        let old = json!({"spec": {"maxReplicas": 3}});
        for version in ["v1", "v2"] {
            let hpa = info("autoscaling", version, "horizontalpodautoscalers");
            assert!(
                check(
                    hpa,
                    &old,
                    json!({"currentReplicas": 0, "desiredReplicas": 2})
                )
                .is_empty()
            );
            assert_eq!(
                check(
                    hpa,
                    &old,
                    json!({"currentReplicas": -1, "desiredReplicas": -2})
                ),
                [
                    "status.currentReplicas: Invalid value: -1: must be greater than or equal to 0",
                    "status.desiredReplicas: Invalid value: -2: must be greater than or equal to 0",
                ]
            );
        }
    }

    #[test]
    fn disruption_budgets_check_conditions_and_counts() {
        let pdb = info("policy", "v1", "poddisruptionbudgets");
        let old = json!({"spec": {"minAvailable": 1}});
        let good = json!({
            "disruptionsAllowed": 0, "currentHealthy": 1, "desiredHealthy": 1, "expectedPods": 1,
            "conditions": [{"type": "DisruptionAllowed", "status": "False",
                            "reason": "InsufficientPods", "message": "",
                            "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
        assert!(check(pdb, &old, good).is_empty());
        assert_eq!(
            check(
                pdb,
                &old,
                json!({"disruptionsAllowed": -1, "expectedPods": -3,
                       "conditions": [{"type": "DisruptionAllowed", "status": "Maybe"}]})
            ),
            [
                "status.conditions[0].status: Unsupported value: \"Maybe\": supported values: \
                 \"False\", \"True\", \"Unknown\"",
                "status.conditions[0].lastTransitionTime: Required value: must be set",
                "status.conditions[0].reason: Required value: must be set",
                "status.disruptionsAllowed: Invalid value: -1: must be greater than or equal to 0",
                "status.expectedPods: Invalid value: -3: must be greater than or equal to 0",
            ]
        );
    }

    #[test]
    fn ingress_load_balancer_points() {
        let ing = info("networking.k8s.io", "v1", "ingresses");
        let old =
            json!({"spec": {"defaultBackend": {"service": {"name": "s", "port": {"number": 80}}}}});
        let good = json!({"loadBalancer": {"ingress": [
            {"ip": "192.168.1.10"}, {"hostname": "lb.example.com", "ports": [{"port": 80, "protocol": "TCP"}]}]}});
        assert!(check(ing, &old, good).is_empty());
        assert_eq!(
            check(
                ing,
                &old,
                json!({"loadBalancer": {"ingress": [
                    {"ip": "300.1.1.1"}, {"hostname": "10.0.0.1"}, {"hostname": "Bad_Host"}]}})
            ),
            [
                "status.loadBalancer.ingress[0].ip: Invalid value: \"300.1.1.1\": must be a \
                 valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                "status.loadBalancer.ingress[1].hostname: Invalid value: \"10.0.0.1\": must be \
                 a DNS name, not an IP address",
                "status.loadBalancer.ingress[2].hostname: Invalid value: \"Bad_Host\": a \
                 lowercase RFC 1123 subdomain must consist of lower case alphanumeric \
                 characters, '-' or '.', and must start and end with an alphanumeric character \
                 (e.g. 'example.com', regex used for validation is \
                 '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
            ]
        );
    }

    #[test]
    fn service_cidrs_and_cronjobs_are_not_checked() {
        let cidr = info("networking.k8s.io", "v1", "servicecidrs");
        let old = json!({"spec": {"cidrs": ["10.43.0.0/16"]}});
        assert!(check(cidr, &old, json!({"conditions": [{"type": "Ready", "status": "True",
                                                          "lastTransitionTime": "2026-01-01T00:00:00Z"}]}))
        .is_empty());
        let cj = info("batch", "v1", "cronjobs");
        assert!(check(cj, &json!({"spec": {}}), json!({"active": [{"name": ""}]})).is_empty());
    }

    #[test]
    fn volume_attachments_run_the_update_validation() {
        let va = info("storage.k8s.io", "v1", "volumeattachments");
        let old = json!({"spec": {"attacher": "csi.example.com", "nodeName": "node-1",
                                  "source": {"persistentVolumeName": "pv-1"}}});
        assert!(
            check(
                va,
                &old,
                json!({"attached": true, "attachmentMetadata": {"a": "b"}})
            )
            .is_empty()
        );
        let long = "x".repeat(1025);
        assert_eq!(
            check(
                va,
                &old,
                json!({"attached": false, "attachError": {"message": long}})
            ),
            [
                "status.attachError.message: Too long: may not be more than 262144 bytes",
                "status.attachError.message: Too long: may not be more than 262144 bytes",
            ]
        );
    }

    #[test]
    fn crd_accepted_names() {
        let crd = info("apiextensions.k8s.io", "v1", "customresourcedefinitions");
        let old = json!({"spec": {"group": "example.com"}});
        assert!(
            check(
                crd,
                &old,
                json!({"acceptedNames": {"plural": "widgets", "kind": "Widget",
                                                         "listKind": "WidgetList"},
                                       "storedVersions": ["v1"]})
            )
            .is_empty()
        );
        let causes = check(
            crd,
            &old,
            json!({"acceptedNames": {"plural": "Widgets", "kind": "Widget", "listKind": "Widget"}}),
        );
        assert_eq!(causes.len(), 2, "{causes:?}");
        assert!(
            causes[0].starts_with(
                "status.acceptedNames.plural: Invalid value: \"Widgets\": a DNS-1035 label"
            ),
            "{causes:?}"
        );
        assert_eq!(
            causes[1],
            "status.acceptedNames.listKind: Invalid value: \"Widget\": kind and listKind may not be the same"
        );
    }
}
