//! ResourceQuota accounting shared by the apiserver's `ResourceQuota` admission and the
//! controller manager's `resourcequota` controller, so that both count an object the same
//! way (upstream's quota evaluators): [`usage`] of one object, [`matches_scopes`] of a quota,
//! [`missing_compute`] (the pod constraints), and exact [`Quantity`] arithmetic; and a pod's
//! QoS class ([`qos`]), which the apiserver stores on create and the `BestEffort` scopes use.
//!
//! Usage of one object: every resource counts as `count/<plural>` (core) or
//! `count/<plural>.<group>`, and the core kinds also by their legacy names (`pods`,
//! `services`, `secrets`, `configmaps`, `persistentvolumeclaims`, `replicationcontrollers`,
//! `resourcequotas`); pods add `requests.cpu`/`cpu`, `requests.memory`/`memory`,
//! `limits.cpu`, `limits.memory` and ephemeral storage (init containers and overhead as
//! upstream's `PodRequests`); services add `services.nodeports` and `services.loadbalancers`;
//! claims add `requests.storage` and the per-storage-class
//! `<class>.storageclass.storage.k8s.io/{requests.storage,persistentvolumeclaims}`.
//! Scopes (`Terminating`, `NotTerminating`, `BestEffort`, `NotBestEffort`, `PriorityClass`
//! through `scopeSelector`) select pods only.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

pub mod qos;
pub mod quantity;

pub use quantity::Quantity;

/// Resource name → (amount, written with a binary suffix: how a sum is printed back).
pub type Usage = BTreeMap<String, (Quantity, bool)>;

/// The resource a quota is evaluated for: group and plural (`""`, `pods`).
#[derive(Debug, Clone, Copy)]
pub struct Resource<'a> {
    pub group: &'a str,
    pub plural: &'a str,
}

impl Resource<'_> {
    fn is_core(&self, plural: &str) -> bool {
        self.group.is_empty() && self.plural == plural
    }
}

/// A quantity and whether it is written with a binary suffix.
pub fn parse(s: &str) -> Option<(Quantity, bool)> {
    Quantity::parse(s).ok().map(|q| (q, s.ends_with('i')))
}

/// Adds `amount` to `usage[name]`.
pub fn add(usage: &mut Usage, name: &str, amount: (Quantity, bool)) {
    let e = usage
        .entry(name.to_string())
        .or_insert((Quantity::default(), false));
    e.0 = e.0 + amount.0;
    e.1 |= amount.1;
}

/// What an update adds to the usage of the object it replaces: `new - old` per resource,
/// resources whose usage does not grow left out (upstream's `SubtractWithNonNegativeResult`
/// and `RemoveZeros`).
pub fn growth(new: &Usage, old: &Usage) -> Usage {
    new.iter()
        .filter_map(|(name, (q, binary))| {
            let before = old.get(name).map(|o| o.0).unwrap_or_default();
            (*q > before).then(|| (name.clone(), (*q - before, *binary)))
        })
        .collect()
}

fn count(usage: &mut Usage, name: &str, n: i128) {
    let q = Quantity::parse(&n.to_string()).unwrap_or_default();
    add(usage, name, (q, false));
}

/// An amount as text (binary suffixes if any summand had one).
pub fn text((q, binary): (Quantity, bool)) -> String {
    q.to_text(binary)
}

/// The object-count resource names of a resource.
fn count_names(r: Resource<'_>) -> Vec<String> {
    if r.group.is_empty() {
        let mut names = vec![format!("count/{}", r.plural)];
        if matches!(
            r.plural,
            "pods"
                | "services"
                | "secrets"
                | "configmaps"
                | "persistentvolumeclaims"
                | "replicationcontrollers"
                | "resourcequotas"
        ) {
            names.push(r.plural.to_string());
        }
        names
    } else {
        vec![format!("count/{}.{}", r.plural, r.group)]
    }
}

/// A container list's resources of one kind (`requests`/`limits`) summed per resource.
fn containers_sum(spec: &Value, list: &str, kind: &str) -> Usage {
    let mut out = Usage::new();
    for c in spec
        .get(list)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for (r, v) in c
            .pointer(&format!("/resources/{kind}"))
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            if let Some(q) = v.as_str().and_then(parse) {
                add(&mut out, r, q);
            }
        }
    }
    out
}

/// Upstream's `PodRequests`/`PodLimits` in outline: the larger of the containers' sum and each
/// init container's own amount, plus the pod overhead.
fn pod_amounts(spec: &Value, kind: &str) -> Usage {
    let mut total = containers_sum(spec, "containers", kind);
    for c in spec
        .get("initContainers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let one = containers_sum(&json!({ "c": [c] }), "c", kind);
        for (r, q) in one {
            let e = total.entry(r).or_insert((Quantity::default(), false));
            if q.0 > e.0 {
                *e = q;
            }
        }
    }
    for (r, v) in spec
        .get("overhead")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        if let Some(q) = v.as_str().and_then(parse) {
            add(&mut total, r, q);
        }
    }
    total
}

/// Whether a pod is of QoS class BestEffort (no positive cpu or memory request or limit).
fn best_effort(spec: &Value) -> bool {
    qos::qos_class(spec) == "BestEffort"
}

/// The quota usage of one object.
pub fn usage(r: Resource<'_>, obj: &Value) -> Usage {
    let mut u = Usage::new();
    for name in count_names(r) {
        count(&mut u, &name, 1);
    }
    if !r.group.is_empty() {
        return u;
    }
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    match r.plural {
        "pods" => {
            for (name, q) in pod_amounts(&spec, "requests") {
                add(&mut u, &format!("requests.{name}"), q);
                if name == "cpu" || name == "memory" || name == "ephemeral-storage" {
                    add(&mut u, &name, q);
                }
            }
            for (name, q) in pod_amounts(&spec, "limits") {
                add(&mut u, &format!("limits.{name}"), q);
            }
        }
        "services" => {
            let ports = spec
                .get("ports")
                .and_then(Value::as_array)
                .map_or(0, Vec::len) as i128;
            match spec.get("type").and_then(Value::as_str) {
                Some("NodePort") => count(&mut u, "services.nodeports", ports),
                Some("LoadBalancer") => {
                    count(&mut u, "services.loadbalancers", 1);
                    if spec
                        .get("allocateLoadBalancerNodePorts")
                        .and_then(Value::as_bool)
                        != Some(false)
                    {
                        count(&mut u, "services.nodeports", ports);
                    }
                }
                _ => {}
            }
        }
        "persistentvolumeclaims" => {
            let class = spec
                .get("storageClassName")
                .and_then(Value::as_str)
                .unwrap_or("");
            if let Some(q) = spec
                .pointer("/resources/requests/storage")
                .and_then(Value::as_str)
                .and_then(parse)
            {
                add(&mut u, "requests.storage", q);
                if !class.is_empty() {
                    add(
                        &mut u,
                        &format!("{class}.storageclass.storage.k8s.io/requests.storage"),
                        q,
                    );
                }
            }
            if !class.is_empty() {
                count(
                    &mut u,
                    &format!("{class}.storageclass.storage.k8s.io/persistentvolumeclaims"),
                    1,
                );
            }
        }
        _ => {}
    }
    u
}

/// Whether a scoped quota covers the object: scopes select pods only.
pub fn matches_scopes(quota: &Value, r: Resource<'_>, obj: &Value) -> bool {
    let mut scopes: Vec<(String, String, Vec<String>)> = quota
        .pointer("/spec/scopes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|s| (s.to_string(), "Exists".to_string(), Vec::new()))
        .collect();
    for e in quota
        .pointer("/spec/scopeSelector/matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let values = e
            .get("values")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect();
        scopes.push((
            e.get("scopeName")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            e.get("operator")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            values,
        ));
    }
    if scopes.is_empty() {
        return true;
    }
    if !r.is_core("pods") {
        return false;
    }
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    scopes.iter().all(|(scope, op, values)| {
        let terminating = spec
            .get("activeDeadlineSeconds")
            .is_some_and(|v| !v.is_null());
        let holds = match scope.as_str() {
            "Terminating" => terminating,
            "NotTerminating" => !terminating,
            "BestEffort" => best_effort(&spec),
            "NotBestEffort" => !best_effort(&spec),
            "PriorityClass" => {
                let class = spec
                    .get("priorityClassName")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                return match op.as_str() {
                    "In" => values.iter().any(|v| v == class),
                    "NotIn" => !values.iter().any(|v| v == class),
                    "Exists" => !class.is_empty(),
                    "DoesNotExist" => class.is_empty(),
                    _ => false,
                };
            }
            _ => false,
        };
        match op.as_str() {
            "DoesNotExist" => !holds,
            _ => holds,
        }
    })
}

/// The compute resources a pod must set in every container when a quota limits them
/// (upstream's pod `Constraints`).
pub const COMPUTE: &[&str] = &[
    "cpu",
    "memory",
    "requests.cpu",
    "requests.memory",
    "limits.cpu",
    "limits.memory",
];

/// The compute resources of `restricted` that some container of the pod `spec` leaves unset.
pub fn missing_compute(spec: &Value, restricted: &BTreeSet<&str>) -> BTreeSet<String> {
    let required: BTreeSet<&str> = COMPUTE
        .iter()
        .copied()
        .filter(|r| restricted.contains(r))
        .collect();
    let mut missing = BTreeSet::new();
    if required.is_empty() {
        return missing;
    }
    for list in ["initContainers", "containers"] {
        for c in spec
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let has = |kind: &str, r: &str| c.pointer(&format!("/resources/{kind}/{r}")).is_some();
            for r in &required {
                let present = match *r {
                    "cpu" | "requests.cpu" => has("requests", "cpu"),
                    "memory" | "requests.memory" => has("requests", "memory"),
                    "limits.cpu" => has("limits", "cpu"),
                    _ => has("limits", "memory"),
                };
                if !present {
                    missing.insert((*r).to_string());
                }
            }
        }
    }
    missing
}

/// Whether an existing pod still counts against quotas (upstream's `QuotaV1Pod`): not
/// terminal, and not past its deletion deadline (`now_unix` in seconds; a deletion timestamp
/// is RFC 3339, compared as text: both are UTC `Z`).
pub fn pod_counts(pod: &Value, now_rfc3339: &str) -> bool {
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("");
    if phase == "Succeeded" || phase == "Failed" {
        return false;
    }
    match pod
        .pointer("/metadata/deletionTimestamp")
        .and_then(Value::as_str)
    {
        Some(t) => t > now_rfc3339,
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PODS: Resource<'static> = Resource {
        group: "",
        plural: "pods",
    };

    fn pod(cpu: &str, mem: &str) -> Value {
        json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "resources": {"requests": {"cpu": cpu, "memory": mem},
                                         "limits": {"cpu": cpu, "memory": mem}}},
            {"name": "b", "resources": {"requests": {"cpu": cpu, "memory": mem},
                                         "limits": {"cpu": cpu, "memory": mem}}},
        ], "initContainers": [
            {"name": "i", "resources": {"requests": {"cpu": "2", "memory": "1Mi"}}},
        ]}})
    }

    #[test]
    fn pod_usage_takes_init_containers_and_names() {
        let u = usage(PODS, &pod("500m", "256Mi"));
        assert_eq!(text(u["pods"]), "1");
        assert_eq!(text(u["count/pods"]), "1");
        // max(500m+500m, 2) = 2
        assert_eq!(text(u["requests.cpu"]), "2");
        assert_eq!(text(u["cpu"]), "2");
        assert_eq!(text(u["requests.memory"]), "512Mi");
        assert_eq!(text(u["limits.cpu"]), "1");
        let deploy = Resource {
            group: "apps",
            plural: "deployments",
        };
        assert!(usage(deploy, &json!({})).contains_key("count/deployments.apps"));
    }

    #[test]
    fn scopes_select_pods() {
        let be = json!({"spec": {"scopes": ["BestEffort"]}});
        assert!(matches_scopes(
            &be,
            PODS,
            &json!({"spec": {"containers": [{"name": "a"}]}})
        ));
        assert!(!matches_scopes(&be, PODS, &pod("1", "1Mi")));
        let cms = Resource {
            group: "",
            plural: "configmaps",
        };
        assert!(!matches_scopes(&be, cms, &json!({})));
        let term = json!({"spec": {"scopes": ["Terminating"]}});
        assert!(matches_scopes(
            &term,
            PODS,
            &json!({"spec": {"activeDeadlineSeconds": 5}})
        ));
        assert!(!matches_scopes(&term, PODS, &json!({"spec": {}})));
        let pc = json!({"spec": {"scopeSelector": {"matchExpressions": [
            {"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]}}});
        assert!(matches_scopes(
            &pc,
            PODS,
            &json!({"spec": {"priorityClassName": "high"}})
        ));
        assert!(!matches_scopes(
            &pc,
            PODS,
            &json!({"spec": {"priorityClassName": "low"}})
        ));
        let svcs = Resource {
            group: "",
            plural: "services",
        };
        let svc = usage(
            svcs,
            &json!({"spec": {"type": "NodePort", "ports": [{"port": 1}, {"port": 2}]}}),
        );
        assert_eq!(text(svc["services.nodeports"]), "2");
    }

    #[test]
    fn terminal_and_deleted_pods_do_not_count() {
        let now = "2026-01-01T00:00:10Z";
        assert!(pod_counts(&json!({"status": {"phase": "Running"}}), now));
        assert!(!pod_counts(&json!({"status": {"phase": "Failed"}}), now));
        assert!(!pod_counts(
            &json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}),
            now
        ));
    }
}
