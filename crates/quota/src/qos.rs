//! A pod's quality-of-service class, as upstream's `qos.ComputePodQOS` computes it: what the
//! apiserver stores in a new pod's `status.qosClass` and what the quota scopes `BestEffort` /
//! `NotBestEffort` select on.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::quantity::Quantity;

/// QoS compute resources (`isSupportedQoSComputeResource`).
const QOS_RESOURCES: &[&str] = &["cpu", "memory"];

/// The positive cpu and memory quantities of a requests or limits map.
fn qos_quantities(list: &Value) -> Vec<(&str, Quantity)> {
    list.as_object()
        .into_iter()
        .flatten()
        .filter(|(name, _)| QOS_RESOURCES.contains(&name.as_str()))
        .filter_map(|(name, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return None,
            };
            let q = Quantity::parse(&text).ok()?;
            (q > 0).then_some((name.as_str(), q))
        })
        .collect()
}

/// Upstream's `qos.ComputePodQOS`, what the pod strategy stores in `status.qosClass` on create:
/// `BestEffort` without cpu or memory requests and limits in any (init) container,
/// `Guaranteed` when every container limits both and the summed requests equal the summed
/// limits, `Burstable` otherwise.
pub fn qos_class(spec: &Value) -> &'static str {
    let mut requests: BTreeMap<&str, Quantity> = BTreeMap::new();
    let mut limits: BTreeMap<&str, Quantity> = BTreeMap::new();
    let mut guaranteed = true;
    let list = |field: &str| {
        spec.get(field)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
    };
    for c in list("containers").chain(list("initContainers")) {
        let resources = c.get("resources").unwrap_or(&Value::Null);
        for (name, q) in qos_quantities(resources.get("requests").unwrap_or(&Value::Null)) {
            let sum = requests.entry(name).or_default();
            *sum = *sum + q;
        }
        let found = qos_quantities(resources.get("limits").unwrap_or(&Value::Null));
        for (name, q) in &found {
            let sum = limits.entry(name).or_default();
            *sum = *sum + *q;
        }
        if !QOS_RESOURCES
            .iter()
            .all(|r| found.iter().any(|(name, _)| name == r))
        {
            guaranteed = false;
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return "BestEffort";
    }
    if guaranteed
        && requests.len() == limits.len()
        && requests.iter().all(|(name, r)| limits.get(name) == Some(r))
    {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn qos_classes() {
        let spec = |containers: Value| json!({"containers": containers});
        let c = |requests: Value, limits: Value| json!({"name": "c", "resources": {"requests": requests, "limits": limits}});
        assert_eq!(qos_class(&spec(json!([{"name": "c"}]))), "BestEffort");
        // Zero and non-QoS resources do not count.
        assert_eq!(
            qos_class(&spec(json!([c(
                json!({"cpu": "0", "example.com/gpu": "1"}),
                json!({})
            )]))),
            "BestEffort"
        );
        let both = json!({"cpu": "500m", "memory": "1Gi"});
        assert_eq!(
            qos_class(&spec(json!([c(both.clone(), both.clone())]))),
            "Guaranteed"
        );
        // Equal sums across containers, but one container does not limit memory.
        assert_eq!(
            qos_class(&spec(json!([
                c(both.clone(), both.clone()),
                c(json!({"cpu": "1"}), json!({"cpu": "1"}))
            ]))),
            "Burstable"
        );
        assert_eq!(
            qos_class(&spec(json!([c(json!({"cpu": "250m"}), both.clone())]))),
            "Burstable"
        );
        let mut init = spec(json!([c(both.clone(), both.clone())]));
        init["initContainers"] = json!([c(json!({"memory": "64Mi"}), json!({}))]);
        assert_eq!(qos_class(&init), "Burstable");
    }
}
