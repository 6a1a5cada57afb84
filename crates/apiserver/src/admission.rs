//! Admission that needs the store: the LimitRanger plugin on new pods.
//!
//! For each `LimitRange` in the pod's namespace, as upstream's LimitRanger:
//! - items of type `Container` fill in each container's missing limits from `default` and missing
//!   requests from `defaultRequest` (the LimitRange's own defaulting derives those from `max` and
//!   `min`), recording what was set in the `kubernetes.io/limit-ranger` annotation; then every
//!   container must satisfy `min` (requests), `max` (limits) and `maxLimitRequestRatio`;
//! - items of type `Pod` check the sums over the pod's containers the same way.
//!
//! A violation is 403 Forbidden with upstream's messages. (ResourceQuota admission is
//! `crate::quota`, run last, after validation.)
//!
//! And the Priority plugin: a pod's `priorityClassName` (or the global default class) becomes
//! its `spec.priority` and `preemptionPolicy`; an unknown class, or a priority the client set
//! that differs from the class's, is 403.

use std::collections::BTreeMap;

use rk3s_datastore::ListOptions;
use serde_json::{Map, Value, json};

use crate::quantity::Quantity;
use crate::registry::{REGISTRY, ResourceInfo};
use crate::rest::object_meta_str;
use crate::server::AppState;
use crate::status::ApiError;

const ANNOTATION: &str = "kubernetes.io/limit-ranger";

/// Resource name → (the quantity as written, its value).
type Quantities = BTreeMap<String, (String, Quantity)>;

/// The priority classes every cluster has: (name, value, description).
pub(crate) const SYSTEM_PRIORITY_CLASSES: &[(&str, i64, &str)] = &[
    (
        "system-node-critical",
        2_000_001_000,
        "Used for system critical pods that must not be moved from their current node.",
    ),
    (
        "system-cluster-critical",
        2_000_000_000,
        "Used for system critical pods that must run in the cluster, but can be moved to \
         another node if necessary.",
    ),
];

/// Runs the admission plugins that read the store on an object about to be created.
pub(crate) async fn admit_create(
    state: &AppState,
    info: &ResourceInfo,
    ns: Option<&str>,
    obj: &mut Value,
) -> Result<(), ApiError> {
    if !(info.group.is_empty() && info.kind == "Pod") {
        return Ok(());
    }
    priority(state, info, obj).await?;
    let (Some(ns), Some(limit_ranges)) = (ns, REGISTRY.find("", "v1", "limitranges")) else {
        return Ok(());
    };
    let listed = state
        .store
        .list(&limit_ranges.prefix(Some(ns)), ListOptions::default())
        .await?;
    if listed.kvs.is_empty() {
        return Ok(());
    }
    let mut items = Vec::new();
    for kv in &listed.kvs {
        let lr: Value = serde_json::from_slice(&kv.value)
            .map_err(|e| ApiError::internal(format!("a stored LimitRange is not JSON: {e}")))?;
        if let Some(limits) = lr
            .get("spec")
            .and_then(|s| s.get("limits"))
            .and_then(Value::as_array)
        {
            items.extend(limits.iter().cloned());
        }
    }
    let problems = limit_ranger(&items, obj);
    if problems.is_empty() {
        return Ok(());
    }
    // Generated names are not chosen yet: upstream names the prefix (`pods "web-" is ...`).
    let name = match object_meta_str(obj, "name") {
        "" => object_meta_str(obj, "generateName"),
        name => name,
    };
    let why = if problems.len() == 1 {
        problems.concat()
    } else {
        format!("[{}]", problems.join(", "))
    };
    Err(ApiError::forbidden(info, name, &why))
}

/// The Priority admission plugin on a new pod.
async fn priority(state: &AppState, info: &ResourceInfo, pod: &mut Value) -> Result<(), ApiError> {
    let Some(classes) = REGISTRY.find("scheduling.k8s.io", "v1", "priorityclasses") else {
        return Ok(());
    };
    let name = object_meta_str(pod, "name").to_string();
    let wanted = pod
        .get("spec")
        .and_then(|s| s.get("priorityClassName"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let class = if wanted.is_empty() {
        // The global default class, if one is marked.
        let listed = state
            .store
            .list(&classes.prefix(None), ListOptions::default())
            .await?;
        listed
            .kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
            .find(|c| c.get("globalDefault").and_then(Value::as_bool) == Some(true))
    } else {
        let (_, kv) = state.store.get(&classes.key(None, &wanted), 0).await?;
        match kv {
            Some(kv) => Some(serde_json::from_slice::<Value>(&kv.value).map_err(|e| {
                ApiError::internal(format!("a stored PriorityClass is not JSON: {e}"))
            })?),
            None => {
                return Err(ApiError::forbidden(
                    info,
                    &name,
                    &format!("no PriorityClass with name {wanted} was found"),
                ));
            }
        }
    };
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    let (value, policy) = match &class {
        Some(c) => (
            c.get("value").and_then(Value::as_i64).unwrap_or(0),
            c.get("preemptionPolicy")
                .and_then(Value::as_str)
                .unwrap_or("PreemptLowerPriority")
                .to_string(),
        ),
        None => (0, "PreemptLowerPriority".to_string()),
    };
    // Defaulting has set priority 0 on every new pod; a client's own value must match.
    let given = spec.get("priority").and_then(Value::as_i64).unwrap_or(0);
    if given != 0 && given != value {
        return Err(ApiError::forbidden(
            info,
            &name,
            &format!(
                "the integer value of priority ({given}) must not be provided in pod spec; \
                 priority admission controller computed {value} from the given PriorityClass name"
            ),
        ));
    }
    spec.insert("priority".into(), json!(value));
    spec.insert("preemptionPolicy".into(), json!(policy));
    if let Some(c) = &class
        && wanted.is_empty()
    {
        spec.insert(
            "priorityClassName".into(),
            json!(object_meta_str(c, "name")),
        );
    }
    Ok(())
}

/// Applies the items' defaults to the pod and returns every violation.
fn limit_ranger(items: &[Value], pod: &mut Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut set_notes = Vec::new();
    for item in items.iter().filter(|i| kind(i) == "Container") {
        for (key, label) in [
            ("initContainers", "init container"),
            ("containers", "container"),
        ] {
            let Some(containers) = pod
                .get_mut("spec")
                .and_then(|s| s.get_mut(key))
                .and_then(Value::as_array_mut)
            else {
                continue;
            };
            for c in containers {
                let cname = c
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let resources = c
                    .as_object_mut()
                    .map(|c| c.entry("resources").or_insert_with(|| json!({})));
                let Some(Value::Object(resources)) = resources else {
                    continue;
                };
                let requests_set = fill(resources, "requests", item.get("defaultRequest"));
                let limits_set = fill(resources, "limits", item.get("default"));
                if !requests_set.is_empty() {
                    set_notes.push(format!(
                        "{} request for {label} {cname}",
                        requests_set.join(", ")
                    ));
                }
                if !limits_set.is_empty() {
                    set_notes.push(format!(
                        "{} limit for {label} {cname}",
                        limits_set.join(", ")
                    ));
                }
                check(
                    item,
                    "Container",
                    &quantities(resources.get("requests")),
                    &quantities(resources.get("limits")),
                    &mut problems,
                );
            }
        }
    }
    for item in items.iter().filter(|i| kind(i) == "Pod") {
        let (requests, limits) = pod_totals(pod);
        check(item, "Pod", &requests, &limits, &mut problems);
    }
    if !set_notes.is_empty()
        && let Some(meta) = pod
            .as_object_mut()
            .map(|o| o.entry("metadata").or_insert_with(|| json!({})))
        && let Some(meta) = meta.as_object_mut()
    {
        let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
        if let Some(a) = annotations.as_object_mut() {
            a.insert(
                ANNOTATION.into(),
                json!(format!("LimitRanger plugin set: {}", set_notes.join("; "))),
            );
        }
    }
    problems
}

fn kind(item: &Value) -> &str {
    item.get("type").and_then(Value::as_str).unwrap_or("")
}

/// Copies the defaults a container lacks into `resources[field]`; returns the resources set.
fn fill(resources: &mut Map<String, Value>, field: &str, defaults: Option<&Value>) -> Vec<String> {
    let Some(defaults) = defaults.and_then(Value::as_object) else {
        return Vec::new();
    };
    let target = resources.entry(field).or_insert_with(|| json!({}));
    let Some(target) = target.as_object_mut() else {
        return Vec::new();
    };
    let mut set = Vec::new();
    for (resource, value) in defaults {
        if !target.contains_key(resource) {
            target.insert(resource.clone(), value.clone());
            set.push(resource.clone());
        }
    }
    if target.is_empty() {
        resources.remove(field);
    }
    set
}

/// Resource name → (text as written, parsed value); unparsable values are left out (the
/// typed round trip has already rejected them).
fn quantities(map: Option<&Value>) -> Quantities {
    map.and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            let text = v.as_str()?.to_string();
            let q = Quantity::parse(&text).ok()?;
            Some((k.clone(), (text, q)))
        })
        .collect()
}

/// Sums of the pod's container requests and limits (the pod totals LimitRange checks).
fn pod_totals(pod: &Value) -> (Quantities, Quantities) {
    // (sum, whether the first term used a binary suffix: the sum is written the same way)
    let mut requests: BTreeMap<String, (Quantity, bool)> = BTreeMap::new();
    let mut limits: BTreeMap<String, (Quantity, bool)> = BTreeMap::new();
    let containers = pod
        .get("spec")
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_array);
    for c in containers.into_iter().flatten() {
        let r = c.get("resources");
        for (field, sums) in [("requests", &mut requests), ("limits", &mut limits)] {
            for (k, (text, q)) in quantities(r.and_then(|r| r.get(field))) {
                let sum = sums
                    .entry(k)
                    .or_insert_with(|| (Quantity::default(), text.ends_with('i')));
                sum.0 = sum.0 + q;
            }
        }
    }
    let text = |m: BTreeMap<String, (Quantity, bool)>| {
        m.into_iter()
            .map(|(k, (q, binary))| (k, (q.to_text(binary), q)))
            .collect()
    };
    (text(requests), text(limits))
}

/// One item's min/max/ratio checks against requests and limits (`scope` is "Container"/"Pod").
fn check(
    item: &Value,
    scope: &str,
    requests: &Quantities,
    limits: &Quantities,
    problems: &mut Vec<String>,
) {
    for (resource, (min_text, min)) in quantities(item.get("min")) {
        match requests.get(&resource) {
            None => problems.push(format!(
                "minimum {resource} usage per {scope} is {min_text}.  No request is specified"
            )),
            Some((text, q)) if *q < min => problems.push(format!(
                "minimum {resource} usage per {scope} is {min_text}, but request is {text}"
            )),
            Some(_) => {}
        }
    }
    for (resource, (max_text, max)) in quantities(item.get("max")) {
        match limits.get(&resource) {
            None => problems.push(format!(
                "maximum {resource} usage per {scope} is {max_text}.  No limit is specified"
            )),
            Some((text, q)) if *q > max => problems.push(format!(
                "maximum {resource} usage per {scope} is {max_text}, but limit is {text}"
            )),
            Some(_) => {}
        }
    }
    for (resource, (ratio_text, ratio)) in quantities(item.get("maxLimitRequestRatio")) {
        let (Some((_, limit)), Some((_, request))) =
            (limits.get(&resource), requests.get(&resource))
        else {
            continue;
        };
        if request.is_zero() {
            continue;
        }
        let actual = limit.ratio(*request);
        let max = ratio.ratio(Quantity::ONE);
        if actual > max {
            problems.push(format!(
                "{resource} max limit to request ratio per {scope} is {ratio_text}, but provided \
                 ratio is {actual:.6}"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_missing_requests_and_limits_and_are_recorded() {
        let items = vec![json!({"type": "Container",
            "default": {"cpu": "500m", "memory": "256Mi"},
            "defaultRequest": {"cpu": "100m"}})];
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "image": "x"},
            {"name": "b", "image": "x", "resources": {"limits": {"cpu": "1"}}},
        ]}});
        assert!(limit_ranger(&items, &mut pod).is_empty());
        let a = &pod["spec"]["containers"][0]["resources"];
        assert_eq!(a["limits"], json!({"cpu": "500m", "memory": "256Mi"}));
        assert_eq!(a["requests"], json!({"cpu": "100m"}));
        let b = &pod["spec"]["containers"][1]["resources"];
        assert_eq!(b["limits"], json!({"cpu": "1", "memory": "256Mi"}));
        assert_eq!(
            pod["metadata"]["annotations"][ANNOTATION],
            "LimitRanger plugin set: cpu request for container a; cpu, memory limit for \
             container a; cpu request for container b; memory limit for container b"
        );
    }

    #[test]
    fn min_max_and_ratio_are_enforced_with_upstream_messages() {
        let items = vec![json!({"type": "Container",
            "min": {"cpu": "100m"}, "max": {"memory": "1Gi"},
            "maxLimitRequestRatio": {"cpu": "2"}})];
        let mut pod = json!({"spec": {"containers": [{"name": "a", "resources": {
            "requests": {"cpu": "50m"}, "limits": {"cpu": "1", "memory": "2Gi"}}}]}});
        assert_eq!(
            limit_ranger(&items, &mut pod),
            [
                "minimum cpu usage per Container is 100m, but request is 50m",
                "maximum memory usage per Container is 1Gi, but limit is 2Gi",
                "cpu max limit to request ratio per Container is 2, but provided ratio is \
                 20.000000",
            ]
        );
        let mut bare = json!({"spec": {"containers": [{"name": "a"}]}});
        assert_eq!(
            limit_ranger(&items, &mut bare),
            [
                "minimum cpu usage per Container is 100m.  No request is specified",
                "maximum memory usage per Container is 1Gi.  No limit is specified",
            ]
        );
    }

    #[test]
    fn pod_items_check_the_sums() {
        let items = vec![json!({"type": "Pod", "max": {"cpu": "1"}})];
        let mut pod = json!({"spec": {"containers": [
            {"name": "a", "resources": {"limits": {"cpu": "600m"}}},
            {"name": "b", "resources": {"limits": {"cpu": "600m"}}},
        ]}});
        assert_eq!(
            limit_ranger(&items, &mut pod),
            ["maximum cpu usage per Pod is 1, but limit is 1200m"]
        );
    }
}
