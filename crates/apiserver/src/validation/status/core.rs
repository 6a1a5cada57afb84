//! core/v1 status updates, as upstream v1.33's status strategies prepare and validate them:
//!
//! - `pods/status`: `ValidatePodStatusUpdate` ([`pod`]).
//! - `nodes/status`: the whole `ValidateNodeUpdate` (the node validation of `core_objects`,
//!   plus `status.config`: `validateNodeConfigStatus`).
//! - `namespaces/status`: `ValidateNamespaceStatusUpdate` (the phase follows
//!   `deletionTimestamp`).
//! - `services/status`: `ValidateServiceStatusUpdate` (`ValidateLoadBalancerStatus`: ingress
//!   only for `LoadBalancer` services, `ip`, `ipMode`, `hostname`).
//! - `persistentvolumeclaims/status`: `ValidatePersistentVolumeClaimStatusUpdate` (access
//!   modes, capacity, and with `RecoverVolumeExpansionFailure` — beta, on in v1.33 —
//!   `allocatedResources` and `allocatedResourceStatuses`).
//! - `replicationcontrollers/status`: `ValidateReplicationControllerStatusUpdate` (counts).
//! - `resourcequotas/status`: `ValidateResourceQuotaStatusUpdate` (`hard` and `used`).
//! - `persistentvolumes/status`: upstream checks nothing but the request's `resourceVersion`.
//!
//! Before validation, [`prepare`] does what upstream's decoding (v1 defaults, the v1 →
//! internal conversion) and the status strategies' `PrepareForUpdate` do to the status.
//!
//! Not checked: a missing `resourceVersion` in a PUT of a PV's or PVC's status (upstream's
//! `resourceVersion: Required value`; the object validated here carries the stored one).

mod pod;

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::registry::ResourceInfo;
use crate::status::Cause;
use crate::validation::core_objects::{
    GoQuantity, is_native, node, node_config_source, quota_resource_name, resource_quantity_value,
};
use crate::validation::ip::{legacy_ip_causes, parse_sloppy};
use crate::validation::{
    NameRule, dns_problems, forbidden, invalid, items, not_supported, obj_of, q,
    qualified_name_problems, required, str_of,
};

static NULL: Value = Value::Null;

fn child<'a>(v: &'a Value, field: &str) -> &'a Value {
    v.get(field).unwrap_or(&NULL)
}

/// Upstream's defaulting and status strategies applied to `new` (the stored object with the
/// request's status) before it is validated and stored.
pub(super) fn prepare(info: &ResourceInfo, new: &mut Value, old: &Value) {
    match info.kind {
        "Pod" => pod::prepare(new, old),
        // `SetDefaults_NamespaceStatus`.
        "Namespace" => default_phase(new, "Active"),
        // `SetDefaults_PersistentVolume`, then the status strategy's phase transition time.
        "PersistentVolume" => {
            default_phase(new, "Pending");
            phase_transition_time(new, old);
        }
        // `SetDefaults_PersistentVolumeClaim`.
        "PersistentVolumeClaim" => default_phase(new, "Pending"),
        "Service" => default_ip_mode(new),
        "Node" => default_allocatable(new),
        _ => {}
    }
}

/// The status object of `obj`, created when missing (defaults apply to an empty status).
fn status_mut(obj: &mut Value) -> Option<&mut Map<String, Value>> {
    let o = obj.as_object_mut()?;
    let status = o.entry("status").or_insert_with(|| json!({}));
    if status.is_null() {
        *status = json!({});
    }
    status.as_object_mut()
}

fn default_phase(obj: &mut Value, phase: &str) {
    if let Some(status) = status_mut(obj)
        && status
            .get("phase")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
    {
        status.insert("phase".into(), json!(phase));
    }
}

/// The PV status strategy: `lastPhaseTransitionTime` is kept while the phase stays, and set to
/// now when the phase changes and the client did not set a new time.
fn phase_transition_time(new: &mut Value, old: &Value) {
    let old_status = child(old, "status");
    let old_time = old_status
        .get("lastPhaseTransitionTime")
        .filter(|t| !t.is_null());
    let Some(status) = new.get_mut("status").and_then(Value::as_object_mut) else {
        return;
    };
    let time = status
        .get("lastPhaseTransitionTime")
        .filter(|t| !t.is_null());
    let same_phase = status.get("phase").and_then(Value::as_str)
        == old_status.get("phase").and_then(Value::as_str);
    if same_phase {
        if time.is_none()
            && let Some(t) = old_time
        {
            status.insert("lastPhaseTransitionTime".into(), t.clone());
        }
    } else if time.is_none() || time == old_time {
        status.insert(
            "lastPhaseTransitionTime".into(),
            json!(crate::time::now_rfc3339()),
        );
    }
}

/// `SetDefaults_Service`: a `LoadBalancer` service's ingress with an `ip` and no `ipMode` is
/// `VIP` (`LoadBalancerIPMode`, GA).
fn default_ip_mode(svc: &mut Value) {
    if str_of(child(svc, "spec"), "type") != "LoadBalancer" {
        return;
    }
    let Some(ingress) = svc
        .pointer_mut("/status/loadBalancer/ingress")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for ing in ingress.iter_mut().filter_map(Value::as_object_mut) {
        let has_ip = ing
            .get("ip")
            .and_then(Value::as_str)
            .is_some_and(|ip| !ip.is_empty());
        if has_ip && ing.get("ipMode").is_none_or(Value::is_null) {
            ing.insert("ipMode".into(), json!("VIP"));
        }
    }
}

/// `SetDefaults_NodeStatus`: no `allocatable` is the `capacity`.
fn default_allocatable(node: &mut Value) {
    let Some(status) = node.get_mut("status").and_then(Value::as_object_mut) else {
        return;
    };
    if status.get("allocatable").is_none_or(Value::is_null)
        && let Some(capacity) = status.get("capacity").filter(|c| c.is_object()).cloned()
    {
        status.insert("allocatable".into(), capacity);
    }
}

/// The causes of the status update of a core/v1 object.
pub(super) fn validate(info: &ResourceInfo, obj: &Value, old: &Value) -> Vec<Cause> {
    match info.kind {
        "Pod" => pod::validate(obj, old),
        "Node" => {
            let mut causes = node(obj, Some(old));
            causes.extend(node_config_status(child(child(obj, "status"), "config")));
            causes
        }
        "Namespace" => namespace(obj),
        "Service" => load_balancer(obj),
        "PersistentVolumeClaim" => claim(obj),
        "ReplicationController" => replication_controller(obj),
        "ResourceQuota" => resource_quota(obj),
        _ => Vec::new(),
    }
}

/// `validateNodeConfigStatus`: each of `assigned`, `active` and `lastKnownGood` names exactly
/// one source, a ConfigMap with its `uid` and `resourceVersion`.
fn node_config_status(config: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    for field in ["assigned", "active", "lastKnownGood"] {
        if let Some(source) = config.get(field).filter(|s| !s.is_null()) {
            causes.extend(node_config_source(
                source,
                &format!("status.config.{field}"),
                true,
            ));
        }
    }
    causes
}

/// `ValidateNamespaceStatusUpdate` (upstream's path says `Phase`).
fn namespace(ns: &Value) -> Vec<Cause> {
    let phase = str_of(child(ns, "status"), "phase");
    let deleting = !str_of(child(ns, "metadata"), "deletionTimestamp").is_empty();
    match (deleting, phase) {
        (false, "Active") | (true, "Terminating") => Vec::new(),
        (false, _) => vec![invalid(
            "status.Phase",
            &q(phase),
            "may only be 'Active' if `deletionTimestamp` is empty",
        )],
        (true, _) => vec![invalid(
            "status.Phase",
            &q(phase),
            "may only be 'Terminating' if `deletionTimestamp` is not empty",
        )],
    }
}

const IP_MODES: &[&str] = &["Proxy", "VIP"];

/// `ValidateLoadBalancerStatus` of a Service (`AllowServiceLBStatusOnNonLB` is off in v1.33,
/// `LoadBalancerIPMode` on).
fn load_balancer(svc: &Value) -> Vec<Cause> {
    const PATH: &str = "status.loadBalancer.ingress";
    let ingress = items(child(child(svc, "status"), "loadBalancer"), "ingress");
    if str_of(child(svc, "spec"), "type") != "LoadBalancer" && !ingress.is_empty() {
        return vec![forbidden(
            PATH,
            "may only be used when `spec.type` is 'LoadBalancer'",
        )];
    }
    let mut causes = Vec::new();
    for (i, ing) in ingress.iter().enumerate() {
        let p = format!("{PATH}[{i}]");
        let ip = str_of(ing, "ip");
        if !ip.is_empty() {
            causes.extend(legacy_ip_causes(&format!("{p}.ip"), ip));
        }
        let mode = ing.get("ipMode").filter(|m| !m.is_null());
        match mode {
            None if !ip.is_empty() => causes.push(required(
                format!("{p}.ipMode"),
                "must be specified when `ip` is set",
            )),
            Some(_) if ip.is_empty() => causes.push(forbidden(
                format!("{p}.ipMode"),
                "may not be specified when `ip` is not set",
            )),
            Some(m) => {
                let m = m.as_str().unwrap_or("");
                if !IP_MODES.contains(&m) {
                    causes.push(not_supported(format!("{p}.ipMode"), &q(m), IP_MODES));
                }
            }
            None => {}
        }
        let host = str_of(ing, "hostname");
        if !host.is_empty() {
            for m in dns_problems(NameRule::Subdomain, host) {
                causes.push(invalid(format!("{p}.hostname"), &q(host), &m));
            }
            if parse_sloppy(host).is_some() {
                causes.push(invalid(
                    format!("{p}.hostname"),
                    &q(host),
                    "must be a DNS name, not an IP address",
                ));
            }
        }
    }
    causes
}

/// The entries of the map at `field` of `v`, by key (Go walks maps in random order).
fn sorted<'a>(v: &'a Value, field: &str) -> BTreeMap<&'a String, &'a Value> {
    obj_of(v, field).into_iter().flatten().collect()
}

/// `validateBasicResource`: a quantity whose whole value is not negative.
fn basic_resource(qty: &Value, path: &str) -> Vec<Cause> {
    match GoQuantity::parse(qty) {
        Some(qty) if qty.int_value() < 0 => vec![invalid(
            path,
            &qty.int_value().to_string(),
            "must be a valid resource quantity",
        )],
        _ => Vec::new(),
    }
}

/// `validatePersistentVolumeClaimResourceKey`: a qualified name, and `storage` when native.
fn claim_resource_key(key: &str, path: &str) -> Vec<Cause> {
    let causes: Vec<Cause> = qualified_name_problems(key)
        .iter()
        .map(|m| invalid(path, &q(key), m))
        .collect();
    if causes.is_empty() && is_native(key) && key != "storage" {
        return vec![not_supported(path, &q(key), &["storage"])];
    }
    causes
}

const RESIZE_STATUSES: &[&str] = &[
    "ControllerResizeInProgress",
    "ControllerResizeInfeasible",
    "NodeResizeInProgress",
    "NodeResizeInfeasible",
    "NodeResizePending",
];

/// `ValidatePersistentVolumeClaimStatusUpdate` (upstream's paths: `Spec.accessModes`, and the
/// map fields without their keys where it leaves them out).
fn claim(pvc: &Value) -> Vec<Cause> {
    let (spec, status) = (child(pvc, "spec"), child(pvc, "status"));
    let mut causes = Vec::new();
    if items(spec, "accessModes").is_empty() {
        causes.push(required("Spec.accessModes", ""));
    }
    for (r, qty) in sorted(status, "capacity") {
        causes.extend(basic_resource(qty, &format!("status.capacity[{r}]")));
    }
    const RESIZE_PATH: &str = "status.allocatedResourceStatus";
    for (k, v) in sorted(status, "allocatedResourceStatuses") {
        causes.extend(claim_resource_key(k, RESIZE_PATH));
        if !RESIZE_STATUSES.contains(&v.as_str().unwrap_or("")) {
            // Upstream shows the key (a `ResourceName`, printed bare).
            causes.push(not_supported(RESIZE_PATH, k, RESIZE_STATUSES));
        }
    }
    const ALLOC_PATH: &str = "status.allocatedResources";
    for (r, qty) in sorted(status, "allocatedResources") {
        let key = claim_resource_key(r, ALLOC_PATH);
        if !key.is_empty() {
            causes.extend(key);
            continue;
        }
        let p = format!("{ALLOC_PATH}[{r}]");
        let basic = basic_resource(qty, &p);
        if basic.is_empty() {
            causes.extend(resource_quantity_value("storage", qty, &p));
        } else {
            causes.extend(basic);
        }
    }
    causes
}

/// `ValidateReplicationControllerStatusUpdate`: a ReplicaSet's rules on the same fields.
fn replication_controller(rc: &Value) -> Vec<Cause> {
    super::groups::replica_set(rc)
}

/// `ValidateResourceQuotaStatusUpdate`: `hard` and `used` name quota resources with valid
/// quantities.
fn resource_quota(quota: &Value) -> Vec<Cause> {
    let status = child(quota, "status");
    let mut causes = Vec::new();
    for list in ["hard", "used"] {
        for (k, v) in sorted(status, list) {
            let p = format!("status.{list}[{k}]");
            causes.extend(quota_resource_name(k, &p));
            causes.extend(resource_quantity_value(k, v, &p));
        }
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::status::cause_lines as fields;

    /// `/status` of `plural` writing `status` over the stored `old`: the prepared object and
    /// its causes.
    fn update(plural: &str, old: &Value, status: Value) -> (Value, Vec<String>) {
        let info = crate::registry::REGISTRY
            .find("", "v1", plural)
            .unwrap_or_else(|| panic!("{plural}"));
        let mut new = old.clone();
        new["status"] = status;
        prepare(info, &mut new, old);
        let causes = fields(&validate(info, &new, old));
        (new, causes)
    }

    #[test]
    fn namespace_phase_follows_deletion() {
        let ns = json!({"metadata": {"name": "ns"}, "spec": {}, "status": {"phase": "Active"}});
        // No phase is Active (the v1 default).
        let (new, causes) = update("namespaces", &ns, json!({}));
        assert!(causes.is_empty(), "{causes:?}");
        assert_eq!(new["status"]["phase"], "Active");
        let (_, causes) = update("namespaces", &ns, json!({"phase": "Terminating"}));
        assert_eq!(
            causes,
            [
                "status.Phase: Invalid value: \"Terminating\": may only be 'Active' if \
              `deletionTimestamp` is empty"
            ]
        );
        let mut deleting = ns.clone();
        deleting["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        let (_, causes) = update("namespaces", &deleting, json!({"phase": "Active"}));
        assert_eq!(
            causes,
            [
                "status.Phase: Invalid value: \"Active\": may only be 'Terminating' if \
              `deletionTimestamp` is not empty"
            ]
        );
        let (_, causes) = update("namespaces", &deleting, json!({"phase": "Terminating"}));
        assert!(causes.is_empty(), "{causes:?}");
    }

    #[test]
    fn load_balancer_ingress() {
        let svc = |ty: &str| {
            json!({"metadata": {"name": "s", "namespace": "default"},
                   "spec": {"type": ty, "ports": [{"port": 80}]}, "status": {"loadBalancer": {}}})
        };
        let ingress = |i: Value| json!({"loadBalancer": {"ingress": i}});
        let (_, causes) = update(
            "services",
            &svc("ClusterIP"),
            ingress(json!([{"ip": "192.0.2.1"}])),
        );
        assert_eq!(
            causes,
            [
                "status.loadBalancer.ingress: Forbidden: may only be used when `spec.type` is \
              'LoadBalancer'"
            ]
        );
        // An address without a mode is a VIP.
        let (new, causes) = update(
            "services",
            &svc("LoadBalancer"),
            ingress(json!([{"ip": "192.0.2.1"}, {"hostname": "lb.example.com"}])),
        );
        assert!(causes.is_empty(), "{causes:?}");
        assert_eq!(new["status"]["loadBalancer"]["ingress"][0]["ipMode"], "VIP");
        assert!(
            new["status"]["loadBalancer"]["ingress"][1]
                .get("ipMode")
                .is_none()
        );
        let (_, causes) = update(
            "services",
            &svc("LoadBalancer"),
            ingress(json!([
                {"ip": "192.0.2.300", "ipMode": "Bogus"},
                {"hostname": "192.0.2.1", "ipMode": "Proxy"},
                {"hostname": "Bad_Host"},
            ])),
        );
        assert_eq!(causes.len(), 5, "{causes:?}");
        assert_eq!(
            causes[..4],
            [
                "status.loadBalancer.ingress[0].ip: Invalid value: \"192.0.2.300\": must be a \
                 valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                "status.loadBalancer.ingress[0].ipMode: Unsupported value: \"Bogus\": \
                 supported values: \"Proxy\", \"VIP\"",
                "status.loadBalancer.ingress[1].ipMode: Forbidden: may not be specified when \
                 `ip` is not set",
                "status.loadBalancer.ingress[1].hostname: Invalid value: \"192.0.2.1\": must \
                 be a DNS name, not an IP address",
            ]
        );
        assert!(
            causes[4].starts_with(
                "status.loadBalancer.ingress[2].hostname: Invalid value: \"Bad_Host\": a \
                 lowercase RFC 1123 subdomain"
            ),
            "{causes:?}"
        );
    }

    #[test]
    fn claim_capacity_and_resize_status() {
        let pvc = json!({"metadata": {"name": "c", "namespace": "default"},
            "spec": {"accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": "1Gi"}}},
            "status": {"phase": "Pending"}});
        let (new, causes) = update(
            "persistentvolumeclaims",
            &pvc,
            json!({"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                   "allocatedResources": {"storage": "1Gi"},
                   "allocatedResourceStatuses": {"storage": "ControllerResizeInProgress"}}),
        );
        assert!(causes.is_empty(), "{causes:?}");
        assert_eq!(new["status"]["phase"], "Pending");
        let (_, causes) = update(
            "persistentvolumeclaims",
            &pvc,
            json!({"phase": "Bound", "capacity": {"storage": "-1"},
                   "allocatedResources": {"cpu": "1", "storage": "-1Gi",
                                          "example.com/disk": "-500m"},
                   "allocatedResourceStatuses": {"storage": "Resizing", "bad key": "NodeResizePending"}}),
        );
        assert_eq!(
            causes,
            [
                "status.capacity[storage]: Invalid value: -1: must be a valid resource quantity",
                "status.allocatedResourceStatus: Invalid value: \"bad key\": name part must \
                 consist of alphanumeric characters, '-', '_' or '.', and must start and end \
                 with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', \
                 regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
                "status.allocatedResourceStatus: Unsupported value: storage: supported values: \
                 \"ControllerResizeInProgress\", \"ControllerResizeInfeasible\", \
                 \"NodeResizeInProgress\", \"NodeResizeInfeasible\", \"NodeResizePending\"",
                "status.allocatedResources: Unsupported value: \"cpu\": supported values: \
                 \"storage\"",
                "status.allocatedResources[example.com/disk]: Invalid value: -1: must be a \
                 valid resource quantity",
                "status.allocatedResources[storage]: Invalid value: -1073741824: must be a \
                 valid resource quantity",
            ]
        );
    }

    #[test]
    fn replication_controller_counts() {
        let rc = json!({"metadata": {"name": "rc", "namespace": "default"}, "spec": {},
                        "status": {"replicas": 0}});
        let (_, causes) = update(
            "replicationcontrollers",
            &rc,
            json!({"replicas": 2, "fullyLabeledReplicas": -1, "readyReplicas": 3,
                   "availableReplicas": 4, "observedGeneration": 1}),
        );
        assert_eq!(
            causes,
            [
                "status.fullyLabeledReplicas: Invalid value: -1: must be greater than or \
                 equal to 0",
                "status.readyReplicas: Invalid value: 3: cannot be greater than status.replicas",
                "status.availableReplicas: Invalid value: 4: cannot be greater than \
                 status.replicas",
                "status.availableReplicas: Invalid value: 4: cannot be greater than readyReplicas",
            ]
        );
        let (_, causes) = update(
            "replicationcontrollers",
            &rc,
            json!({"replicas": 2, "fullyLabeledReplicas": 2, "readyReplicas": 2,
                   "availableReplicas": 1, "observedGeneration": 3}),
        );
        assert!(causes.is_empty(), "{causes:?}");
    }

    #[test]
    fn resource_quota_hard_and_used() {
        let quota = json!({"metadata": {"name": "q", "namespace": "default"},
                           "spec": {"hard": {"pods": "10"}}, "status": {}});
        let (_, causes) = update(
            "resourcequotas",
            &quota,
            json!({"hard": {"pods": "10", "cpu": "2"}, "used": {"pods": "1", "cpu": "500m"}}),
        );
        assert!(causes.is_empty(), "{causes:?}");
        let (_, causes) = update(
            "resourcequotas",
            &quota,
            json!({"hard": {"pods": "1.5", "storage": "1Gi"}, "used": {"memory": "-1"}}),
        );
        assert_eq!(causes.len(), 3, "{causes:?}");
        assert!(
            causes[0].starts_with(
                "status.hard[pods]: Invalid value: resource.Quantity{i:resource.int64Amount\
                 {value:15, scale:-1}"
            ),
            "{causes:?}"
        );
        assert!(causes[0].ends_with(": must be an integer"), "{causes:?}");
        assert_eq!(
            causes[1..],
            [
                "status.hard[storage]: Invalid value: storage: must be a standard resource for \
                 quota",
                "status.used[memory]: Invalid value: \"-1\": must be greater than or equal to 0",
            ]
        );
    }

    #[test]
    fn node_status_is_the_node_update() {
        let node = json!({"metadata": {"name": "n1"}, "spec": {"podCIDRs": ["10.42.0.0/24"]},
                          "status": {}});
        // A heartbeat: capacity (allocatable defaults to it), addresses, conditions.
        let (new, causes) = update(
            "nodes",
            &node,
            json!({"capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                   "addresses": [{"type": "InternalIP", "address": "192.168.1.10"},
                                 {"type": "Hostname", "address": "n1"}],
                   "conditions": [{"type": "Ready", "status": "True"}]}),
        );
        assert!(causes.is_empty(), "{causes:?}");
        assert_eq!(new["status"]["allocatable"], new["status"]["capacity"]);
        let (_, causes) = update(
            "nodes",
            &node,
            json!({"capacity": {"cpu": "-1"}, "allocatable": {"cpu": "1"},
                   "addresses": [{"type": "Hostname", "address": "n1"},
                                 {"type": "Hostname", "address": "n1"}],
                   "config": {"assigned": {"configMap": {"namespace": "kube-system",
                                 "name": "cfg", "kubeletConfigKey": "kubelet"}},
                              "active": {}}}),
        );
        assert_eq!(
            causes,
            [
                "status.capacity.cpu: Invalid value: \"-1\": must be greater than or equal to 0",
                "status.addresses[1]: Duplicate value: core.NodeAddress{Type:\"Hostname\", \
                 Address:\"n1\"}",
                "status.config.assigned.configMap.uid: Required value: uid must be set in status",
                "status.config.assigned.configMap.resourceVersion: Required value: \
                 resourceVersion must be set in status",
                "status.config.active: Invalid value: core.NodeConfigSource{ConfigMap:\
                 (*core.ConfigMapNodeConfigSource)(nil)}: exactly one reference subfield must \
                 be non-nil",
            ]
        );
    }

    #[test]
    fn volume_phase_and_its_transition_time() {
        let pv = json!({"metadata": {"name": "pv"}, "spec": {},
            "status": {"phase": "Available", "lastPhaseTransitionTime": "2026-01-01T00:00:00Z"}});
        let (new, causes) = update("persistentvolumes", &pv, json!({"phase": "Available"}));
        assert!(causes.is_empty(), "{causes:?}");
        assert_eq!(
            new["status"]["lastPhaseTransitionTime"],
            "2026-01-01T00:00:00Z"
        );
        let (new, _) = update("persistentvolumes", &pv, json!({"phase": "Bound"}));
        assert_ne!(
            new["status"]["lastPhaseTransitionTime"],
            "2026-01-01T00:00:00Z"
        );
        assert!(new["status"]["lastPhaseTransitionTime"].is_string());
        let (new, _) = update(
            "persistentvolumes",
            &pv,
            json!({"phase": "Bound", "lastPhaseTransitionTime": "2026-02-02T00:00:00Z"}),
        );
        assert_eq!(
            new["status"]["lastPhaseTransitionTime"],
            "2026-02-02T00:00:00Z"
        );
        // No phase is Pending (the v1 default): a change of phase.
        let (new, _) = update("persistentvolumes", &pv, json!({}));
        assert_eq!(new["status"]["phase"], "Pending");
    }
}
