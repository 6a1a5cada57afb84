//! Version conversion for built-in resources served under more than one group version from
//! one storage, as upstream serves them:
//!
//! - `events.k8s.io/v1` Events are stored as core `v1` Events (`/registry/events/<ns>/<name>`),
//!   with upstream's field mapping (`regarding` ↔ `involvedObject`, `note` ↔ `message`,
//!   `reportingController` ↔ `reportingComponent`, `deprecated*` ↔ `source`, `count`,
//!   `firstTimestamp`, `lastTimestamp`) and field-label mapping for field selectors.
//! - `autoscaling/v1` HorizontalPodAutoscalers are stored as `autoscaling/v2`:
//!   `targetCPUUtilizationPercentage` ↔ a `Resource` cpu metric with an `Utilization` target,
//!   `currentCPUUtilizationPercentage` ↔ the cpu entry of `currentMetrics`; what v1 cannot
//!   express travels in upstream's round-trip annotations (`autoscaling.alpha.kubernetes.io/`
//!   `metrics`, `current-metrics`, `conditions`, `behavior`) so that an update through v1 keeps it.
//!
//! A [`Conversion`] is attached to the served (non-storage) version's registry entry; the REST
//! layer converts on every read (`from_storage`) and write (`to_storage`), and selectors always
//! run on the stored form (`field_label` maps the served version's field labels to it).

use serde_json::{Map, Value, json};

/// How a served group version maps to the stored one.
#[derive(Debug)]
pub(crate) struct Conversion {
    /// The group of the stored form (what Table printing of the stored kind goes by).
    pub(crate) storage_group: &'static str,
    /// The stored object → the served version's form.
    pub(crate) from_storage: fn(Value) -> Value,
    /// The served version's form → the stored object.
    pub(crate) to_storage: fn(Value) -> Value,
    /// The served version's field labels → the stored form's (identity when absent).
    pub(crate) field_labels: &'static [(&'static str, &'static str)],
}

impl Conversion {
    /// The stored form's field path for a served field label.
    pub(crate) fn field_label<'a>(&self, label: &'a str) -> &'a str {
        self.field_labels
            .iter()
            .find(|(served, _)| *served == label)
            .map_or(label, |(_, stored)| stored)
    }
}

// ---------------------------------------------------------------------------------------------
// events.k8s.io/v1 ↔ v1

/// `events.k8s.io/v1` Event ↔ core `v1` Event.
pub(crate) static EVENTS_V1: Conversion = Conversion {
    storage_group: "",
    from_storage: core_event_to_events_v1,
    to_storage: events_v1_to_core_event,
    field_labels: EVENTS_V1_FIELDS,
};

/// Upstream's field label conversion of `events.k8s.io/v1` Events (served → stored).
const EVENTS_V1_FIELDS: &[(&str, &str)] = &[
    ("regarding.kind", "involvedObject.kind"),
    ("regarding.namespace", "involvedObject.namespace"),
    ("regarding.name", "involvedObject.name"),
    ("regarding.uid", "involvedObject.uid"),
    ("regarding.apiVersion", "involvedObject.apiVersion"),
    (
        "regarding.resourceVersion",
        "involvedObject.resourceVersion",
    ),
    ("regarding.fieldPath", "involvedObject.fieldPath"),
    ("reportingController", "reportingComponent"),
];

/// The field selectors of `events.k8s.io/v1` Events, as upstream accepts them.
pub(crate) const EVENTS_V1_SELECTABLE: &[&str] = &[
    "regarding.kind",
    "regarding.namespace",
    "regarding.name",
    "regarding.uid",
    "regarding.apiVersion",
    "regarding.resourceVersion",
    "regarding.fieldPath",
    "reason",
    "reportingController",
    "source",
    "type",
];

/// (core v1 name, events.k8s.io/v1 name) of the fields that only change their name.
const EVENT_RENAMES: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
    ("reportingComponent", "reportingController"),
];

fn rename(obj: Value, api_version: &str, from_core: bool) -> Value {
    let Value::Object(mut o) = obj else {
        return obj;
    };
    for (core, events) in EVENT_RENAMES {
        let (from, to) = if from_core {
            (core, events)
        } else {
            (events, core)
        };
        match o.remove(*from) {
            Some(v) => {
                o.insert((*to).to_string(), v);
            }
            None => {
                o.remove(*to);
            }
        }
    }
    o.insert("apiVersion".into(), json!(api_version));
    o.insert("kind".into(), json!("Event"));
    Value::Object(o)
}

fn core_event_to_events_v1(obj: Value) -> Value {
    rename(obj, "events.k8s.io/v1", true)
}

fn events_v1_to_core_event(obj: Value) -> Value {
    rename(obj, "v1", false)
}

// ---------------------------------------------------------------------------------------------
// autoscaling/v1 ↔ autoscaling/v2

/// `autoscaling/v1` HorizontalPodAutoscaler ↔ `autoscaling/v2`.
pub(crate) static HPA_V1: Conversion = Conversion {
    storage_group: "autoscaling",
    from_storage: hpa_v2_to_v1,
    to_storage: hpa_v1_to_v2,
    field_labels: &[],
};

const METRICS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/metrics";
const CURRENT_METRICS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/current-metrics";
const CONDITIONS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/conditions";
const BEHAVIOR_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/behavior";

fn is_cpu_utilization(metric: &Value) -> bool {
    metric.get("type").and_then(Value::as_str) == Some("Resource")
        && metric.pointer("/resource/name").and_then(Value::as_str) == Some("cpu")
        && metric
            .pointer("/resource/target/type")
            .and_then(Value::as_str)
            == Some("Utilization")
}

/// Sets `metadata.annotations[key]`, creating what is missing.
fn set_annotation(obj: &mut Map<String, Value>, key: &str, value: String) {
    let meta = obj.entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    let annotations = &mut meta["annotations"];
    if !annotations.is_object() {
        *annotations = json!({});
    }
    annotations[key] = json!(value);
}

fn drop_empty_annotations(obj: &mut Map<String, Value>) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut)
        && meta
            .get("annotations")
            .and_then(Value::as_object)
            .is_some_and(Map::is_empty)
    {
        meta.remove("annotations");
    }
}

/// The metric of an HPA that names none (upstream's v2 defaulting): 80% cpu utilization.
pub(crate) fn default_cpu_metric() -> Value {
    json!({ "type": "Resource", "resource": {
        "name": "cpu", "target": { "type": "Utilization", "averageUtilization": 80 } } })
}

/// A v2 metric source → upstream's v1 annotation form (the v2beta1 shape), for the types
/// v1 annotations carry: Resource, ContainerResource, Pods, Object, External.
fn metric_spec_v2_to_v1(m: &Value) -> Option<Value> {
    let kind = m.get("type")?.as_str()?;
    let target_fields = |target: &Value| {
        let mut out = Map::new();
        match target.get("type").and_then(Value::as_str) {
            Some("Utilization") => {
                if let Some(u) = target.get("averageUtilization") {
                    out.insert("targetAverageUtilization".into(), u.clone());
                }
            }
            Some("AverageValue") => {
                if let Some(v) = target.get("averageValue") {
                    out.insert("targetAverageValue".into(), v.clone());
                }
            }
            Some("Value") => {
                if let Some(v) = target.get("value") {
                    out.insert("targetValue".into(), v.clone());
                }
            }
            _ => {}
        }
        out
    };
    let body = match kind {
        "Resource" | "ContainerResource" => {
            let src = m.get(if kind == "Resource" {
                "resource"
            } else {
                "containerResource"
            })?;
            let mut out = target_fields(src.get("target")?);
            out.insert("name".into(), src.get("name")?.clone());
            if let Some(c) = src.get("container") {
                out.insert("container".into(), c.clone());
            }
            out
        }
        "Pods" | "External" => {
            let src = m.get(if kind == "Pods" { "pods" } else { "external" })?;
            let mut out = Map::new();
            let metric = src.get("metric")?;
            out.insert("metricName".into(), metric.get("name")?.clone());
            if let Some(s) = metric.get("selector") {
                out.insert(
                    if kind == "Pods" {
                        "selector"
                    } else {
                        "metricSelector"
                    }
                    .into(),
                    s.clone(),
                );
            }
            let t = target_fields(src.get("target")?);
            for (k, v) in t {
                // Pods only have an average value in v1.
                out.insert(k, v);
            }
            out
        }
        "Object" => {
            let src = m.get("object")?;
            let mut out = Map::new();
            out.insert("target".into(), src.get("describedObject")?.clone());
            let metric = src.get("metric")?;
            out.insert("metricName".into(), metric.get("name")?.clone());
            if let Some(s) = metric.get("selector") {
                out.insert("selector".into(), s.clone());
            }
            let t = src.get("target")?;
            if let Some(v) = t.get("value") {
                out.insert("targetValue".into(), v.clone());
            }
            if let Some(v) = t.get("averageValue") {
                out.insert("averageValue".into(), v.clone());
            }
            out
        }
        _ => return None,
    };
    let key = match kind {
        "Resource" => "resource",
        "ContainerResource" => "containerResource",
        "Pods" => "pods",
        "External" => "external",
        _ => "object",
    };
    Some(json!({ "type": kind, key: body }))
}

/// Upstream's v1 annotation form of a metric → the v2 metric source.
fn metric_spec_v1_to_v2(m: &Value) -> Option<Value> {
    let kind = m.get("type")?.as_str()?;
    let target_of = |src: &Value| -> Value {
        if let Some(u) = src.get("targetAverageUtilization") {
            json!({ "type": "Utilization", "averageUtilization": u })
        } else if let Some(v) = src.get("targetAverageValue") {
            json!({ "type": "AverageValue", "averageValue": v })
        } else if let Some(v) = src.get("targetValue") {
            json!({ "type": "Value", "value": v })
        } else {
            json!({})
        }
    };
    Some(match kind {
        "Resource" => {
            let src = m.get("resource")?;
            json!({ "type": kind, "resource": { "name": src.get("name")?, "target": target_of(src) } })
        }
        "ContainerResource" => {
            let src = m.get("containerResource")?;
            json!({ "type": kind, "containerResource": {
                "name": src.get("name")?, "container": src.get("container")?,
                "target": target_of(src) } })
        }
        "Pods" => {
            let src = m.get("pods")?;
            let mut metric = json!({ "name": src.get("metricName")? });
            if let Some(s) = src.get("selector") {
                metric["selector"] = s.clone();
            }
            json!({ "type": kind, "pods": { "metric": metric, "target": target_of(src) } })
        }
        "External" => {
            let src = m.get("external")?;
            let mut metric = json!({ "name": src.get("metricName")? });
            if let Some(s) = src.get("metricSelector") {
                metric["selector"] = s.clone();
            }
            json!({ "type": kind, "external": { "metric": metric, "target": target_of(src) } })
        }
        "Object" => {
            let src = m.get("object")?;
            let mut metric = json!({ "name": src.get("metricName")? });
            if let Some(s) = src.get("selector") {
                metric["selector"] = s.clone();
            }
            let mut target = json!({ "type": "Value" });
            if let Some(v) = src.get("targetValue") {
                target["value"] = v.clone();
            }
            if let Some(v) = src.get("averageValue") {
                target = json!({ "type": "AverageValue", "averageValue": v });
            }
            json!({ "type": kind, "object": {
                "describedObject": src.get("target")?, "metric": metric, "target": target } })
        }
        _ => return None,
    })
}

/// A v2 metric status → the v1 annotation form (`current*` fields).
fn metric_status_v2_to_v1(m: &Value) -> Option<Value> {
    let kind = m.get("type")?.as_str()?;
    let key = match kind {
        "Resource" => "resource",
        "ContainerResource" => "containerResource",
        "Pods" => "pods",
        "External" => "external",
        "Object" => "object",
        _ => return None,
    };
    let src = m.get(key)?;
    let mut out = Map::new();
    if let Some(n) = src.get("name") {
        out.insert("name".into(), n.clone());
    }
    if let Some(c) = src.get("container") {
        out.insert("container".into(), c.clone());
    }
    if let Some(metric) = src.get("metric") {
        if let Some(n) = metric.get("name") {
            out.insert("metricName".into(), n.clone());
        }
        if let Some(s) = metric.get("selector") {
            out.insert("selector".into(), s.clone());
        }
    }
    if let Some(d) = src.get("describedObject") {
        out.insert("target".into(), d.clone());
    }
    if let Some(cur) = src.get("current") {
        if let Some(u) = cur.get("averageUtilization") {
            out.insert("currentAverageUtilization".into(), u.clone());
        }
        if let Some(v) = cur.get("averageValue") {
            out.insert("currentAverageValue".into(), v.clone());
        }
        if let Some(v) = cur.get("value") {
            out.insert("currentValue".into(), v.clone());
        }
    }
    Some(json!({ "type": kind, key: out }))
}

/// The v1 annotation form of a metric status → v2.
fn metric_status_v1_to_v2(m: &Value) -> Option<Value> {
    let kind = m.get("type")?.as_str()?;
    let key = match kind {
        "Resource" => "resource",
        "ContainerResource" => "containerResource",
        "Pods" => "pods",
        "External" => "external",
        "Object" => "object",
        _ => return None,
    };
    let src = m.get(key)?;
    let mut current = Map::new();
    if let Some(u) = src.get("currentAverageUtilization") {
        current.insert("averageUtilization".into(), u.clone());
    }
    if let Some(v) = src.get("currentAverageValue") {
        current.insert("averageValue".into(), v.clone());
    }
    if let Some(v) = src.get("currentValue") {
        current.insert("value".into(), v.clone());
    }
    let mut out = Map::new();
    out.insert("current".into(), Value::Object(current));
    match kind {
        "Resource" | "ContainerResource" => {
            out.insert("name".into(), src.get("name")?.clone());
            if let Some(c) = src.get("container") {
                out.insert("container".into(), c.clone());
            }
        }
        _ => {
            let mut metric = json!({ "name": src.get("metricName")? });
            if let Some(s) = src.get("selector").or_else(|| src.get("metricSelector")) {
                metric["selector"] = s.clone();
            }
            out.insert("metric".into(), metric);
            if let Some(t) = src.get("target") {
                out.insert("describedObject".into(), t.clone());
            }
        }
    }
    Some(json!({ "type": kind, key: out }))
}

/// An annotation holding a JSON list, parsed; removed from the annotations.
fn take_json_annotation(obj: &mut Map<String, Value>, key: &str) -> Option<Vec<Value>> {
    let raw = obj
        .get_mut("metadata")?
        .get_mut("annotations")?
        .as_object_mut()?
        .remove(key)?;
    serde_json::from_str::<Value>(raw.as_str()?)
        .ok()?
        .as_array()
        .cloned()
}

fn take_json_object_annotation(obj: &mut Map<String, Value>, key: &str) -> Option<Value> {
    let raw = obj
        .get_mut("metadata")?
        .get_mut("annotations")?
        .as_object_mut()?
        .remove(key)?;
    serde_json::from_str::<Value>(raw.as_str()?)
        .ok()
        .filter(Value::is_object)
}

fn hpa_v2_to_v1(obj: Value) -> Value {
    let Value::Object(mut o) = obj else {
        return obj;
    };
    o.insert("apiVersion".into(), json!("autoscaling/v1"));
    let mut spec = o
        .remove("spec")
        .and_then(|s| match s {
            Value::Object(m) => Some(m),
            _ => None,
        })
        .unwrap_or_default();
    let metrics = spec
        .remove("metrics")
        .and_then(|m| m.as_array().cloned())
        .unwrap_or_default();
    let behavior = spec.remove("behavior");
    let mut other = Vec::new();
    for m in &metrics {
        if is_cpu_utilization(m) && !spec.contains_key("targetCPUUtilizationPercentage") {
            if let Some(u) = m.pointer("/resource/target/averageUtilization") {
                spec.insert("targetCPUUtilizationPercentage".into(), u.clone());
            }
        } else if let Some(v1) = metric_spec_v2_to_v1(m) {
            other.push(v1);
        }
    }
    let mut status = o.remove("status").and_then(|s| match s {
        Value::Object(m) => Some(m),
        _ => None,
    });
    let mut v1_status = Map::new();
    let mut current_other = Vec::new();
    let mut conditions = None;
    if let Some(st) = status.as_mut() {
        for f in [
            "observedGeneration",
            "lastScaleTime",
            "currentReplicas",
            "desiredReplicas",
        ] {
            if let Some(v) = st.remove(f) {
                v1_status.insert(f.into(), v);
            }
        }
        for m in st
            .remove("currentMetrics")
            .and_then(|m| m.as_array().cloned())
            .unwrap_or_default()
        {
            let cpu = m.get("type").and_then(Value::as_str) == Some("Resource")
                && m.pointer("/resource/name").and_then(Value::as_str) == Some("cpu");
            match m.pointer("/resource/current/averageUtilization") {
                Some(u) if cpu && !v1_status.contains_key("currentCPUUtilizationPercentage") => {
                    v1_status.insert("currentCPUUtilizationPercentage".into(), u.clone());
                }
                _ => current_other.extend(metric_status_v2_to_v1(&m)),
            }
        }
        conditions = st
            .remove("conditions")
            .filter(|c| c.as_array().is_some_and(|a| !a.is_empty()));
    }
    let mut annotate = |key: &str, v: Value| set_annotation(&mut o, key, v.to_string());
    if !other.is_empty() {
        annotate(METRICS_ANNOTATION, Value::Array(other));
    }
    if !current_other.is_empty() {
        annotate(CURRENT_METRICS_ANNOTATION, Value::Array(current_other));
    }
    if let Some(c) = conditions {
        annotate(CONDITIONS_ANNOTATION, c);
    }
    if let Some(b) = behavior.filter(Value::is_object) {
        annotate(BEHAVIOR_ANNOTATION, b);
    }
    drop_empty_annotations(&mut o);
    o.insert("spec".into(), Value::Object(spec));
    if status.is_some() {
        o.insert("status".into(), Value::Object(v1_status));
    }
    Value::Object(o)
}

fn hpa_v1_to_v2(obj: Value) -> Value {
    let Value::Object(mut o) = obj else {
        return obj;
    };
    o.insert("apiVersion".into(), json!("autoscaling/v2"));
    let other = take_json_annotation(&mut o, METRICS_ANNOTATION).unwrap_or_default();
    let current_other =
        take_json_annotation(&mut o, CURRENT_METRICS_ANNOTATION).unwrap_or_default();
    let conditions = take_json_annotation(&mut o, CONDITIONS_ANNOTATION);
    let behavior = take_json_object_annotation(&mut o, BEHAVIOR_ANNOTATION);
    drop_empty_annotations(&mut o);
    let mut spec = o
        .remove("spec")
        .and_then(|s| match s {
            Value::Object(m) => Some(m),
            _ => None,
        })
        .unwrap_or_default();
    let mut metrics = Vec::new();
    if let Some(cpu) = spec.remove("targetCPUUtilizationPercentage") {
        metrics.push(json!({ "type": "Resource", "resource": {
            "name": "cpu", "target": { "type": "Utilization", "averageUtilization": cpu } } }));
    }
    metrics.extend(other.iter().filter_map(metric_spec_v1_to_v2));
    if metrics.is_empty() {
        // Upstream's v2 default: no metric is 80% cpu utilization.
        metrics.push(default_cpu_metric());
    }
    spec.insert("metrics".into(), Value::Array(metrics));
    if let Some(b) = behavior {
        spec.insert("behavior".into(), b);
    }
    o.insert("spec".into(), Value::Object(spec));
    if let Some(Value::Object(mut st)) = o.remove("status") {
        let mut current = Vec::new();
        if let Some(cpu) = st.remove("currentCPUUtilizationPercentage") {
            current.push(json!({ "type": "Resource", "resource": {
                "name": "cpu", "current": { "averageUtilization": cpu } } }));
        }
        current.extend(current_other.iter().filter_map(metric_status_v1_to_v2));
        if !current.is_empty() {
            st.insert("currentMetrics".into(), Value::Array(current));
        }
        if let Some(c) = conditions {
            st.insert("conditions".into(), Value::Array(c));
        }
        o.insert("status".into(), Value::Object(st));
    }
    Value::Object(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_with_upstream_names() {
        let core = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": "e", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default"},
            "reason": "Started", "message": "hello", "type": "Normal",
            "source": {"component": "kubelet", "host": "n1"},
            "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:00:01Z",
            "count": 3, "reportingComponent": "kubelet", "reportingInstance": "n1",
            "eventTime": null,
        });
        let v1 = (EVENTS_V1.from_storage)(core.clone());
        assert_eq!(v1["apiVersion"], "events.k8s.io/v1");
        assert_eq!(v1["regarding"]["name"], "p");
        assert_eq!(v1["note"], "hello");
        assert_eq!(v1["deprecatedSource"]["component"], "kubelet");
        assert_eq!(v1["deprecatedCount"], 3);
        assert_eq!(v1["reportingController"], "kubelet");
        assert_eq!(v1["reportingInstance"], "n1");
        assert!(v1.get("message").is_none() && v1.get("involvedObject").is_none());
        assert_eq!((EVENTS_V1.to_storage)(v1), core);
        assert_eq!(
            EVENTS_V1.field_label("regarding.name"),
            "involvedObject.name"
        );
        assert_eq!(EVENTS_V1.field_label("type"), "type");
    }

    #[test]
    fn hpa_cpu_and_other_metrics_round_trip() {
        let v2 = json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "h"},
            "spec": {
                "scaleTargetRef": {"kind": "Deployment", "name": "d", "apiVersion": "apps/v1"},
                "minReplicas": 1, "maxReplicas": 5,
                "metrics": [
                    {"type": "Resource", "resource": {"name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 60}}},
                    {"type": "Resource", "resource": {"name": "memory",
                        "target": {"type": "AverageValue", "averageValue": "1Gi"}}},
                ],
            },
            "status": {
                "currentReplicas": 2, "desiredReplicas": 3,
                "currentMetrics": [
                    {"type": "Resource", "resource": {"name": "cpu",
                        "current": {"averageUtilization": 70}}},
                ],
                "conditions": [{"type": "AbleToScale", "status": "True"}],
            },
        });
        let v1 = (HPA_V1.from_storage)(v2.clone());
        assert_eq!(v1["apiVersion"], "autoscaling/v1");
        assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 60);
        assert!(v1["spec"].get("metrics").is_none());
        assert_eq!(v1["status"]["currentCPUUtilizationPercentage"], 70);
        let metrics: Value = serde_json::from_str(
            v1["metadata"]["annotations"][METRICS_ANNOTATION]
                .as_str()
                .expect("metrics annotation"),
        )
        .expect("json");
        assert_eq!(
            metrics,
            json!([{"type": "Resource", "resource": {"name": "memory", "targetAverageValue": "1Gi"}}])
        );
        assert_eq!((HPA_V1.to_storage)(v1), v2);
    }

    #[test]
    fn hpa_v1_without_cpu_target_gets_the_default_metric() {
        let v1 = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "h"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "d"}, "maxReplicas": 3}});
        let v2 = (HPA_V1.to_storage)(v1);
        assert_eq!(v2["spec"]["metrics"], json!([default_cpu_metric()]));
        assert_eq!(v2["apiVersion"], "autoscaling/v2");
        let back = (HPA_V1.from_storage)(v2);
        assert_eq!(back["spec"]["targetCPUUtilizationPercentage"], 80);
    }
}
