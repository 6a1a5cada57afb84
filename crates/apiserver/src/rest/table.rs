//! Table output (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`), what `kubectl get`
//! prints. Resources without their own printer get Name and Age columns.

use axum::http::{HeaderMap, header};
use serde_json::{Value, json};

use super::Query;
use super::object::meta_str;
use crate::registry::ResourceInfo;

/// Whether the client asked for a Table.
pub(crate) fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .next()
        .is_some_and(|first| {
            let params: Vec<&str> = first.split(';').map(str::trim).collect();
            params.contains(&"as=Table") && params.contains(&"g=meta.k8s.io")
        })
}

struct Column {
    name: &'static str,
    kind: &'static str,
    format: &'static str,
    description: &'static str,
    /// 0: always shown; 1: with `-o wide`.
    priority: u8,
    cell: fn(&Value) -> Value,
}

/// A column with no description.
const fn col(
    name: &'static str,
    kind: &'static str,
    priority: u8,
    cell: fn(&Value) -> Value,
) -> Column {
    Column {
        name,
        kind,
        format: "",
        description: "",
        priority,
        cell,
    }
}

fn int_at(o: &Value, path: &[&str]) -> i64 {
    let mut v = o;
    for p in path {
        v = v.get(*p).unwrap_or(&Value::Null);
    }
    v.as_i64().unwrap_or(0)
}

fn arr<'a>(o: &'a Value, path: &[&str]) -> &'a [Value] {
    let mut v = o;
    for p in path {
        v = v.get(*p).unwrap_or(&Value::Null);
    }
    v.as_array().map_or(&[], Vec::as_slice)
}

fn or_none(s: String) -> Value {
    json!(if s.is_empty() {
        "<none>".to_string()
    } else {
        s
    })
}

/// The pod status column as upstream computes it, simplified: the phase, or the pod's reason,
/// or the first container's waiting/terminated reason; Terminating once deleted.
fn pod_status(o: &Value) -> Value {
    let mut status = str_at(o, &["status", "phase"]);
    let reason = str_at(o, &["status", "reason"]);
    if !reason.is_empty() {
        status = reason;
    }
    for cs in arr(o, &["status", "containerStatuses"]) {
        let waiting = str_at(cs, &["state", "waiting", "reason"]);
        let terminated = str_at(cs, &["state", "terminated", "reason"]);
        if !waiting.is_empty() {
            status = waiting;
            break;
        }
        if !terminated.is_empty() {
            status = terminated;
            break;
        }
    }
    if !meta_str(o, "deletionTimestamp").is_empty() {
        status = "Terminating".into();
    }
    json!(status)
}

fn pod_ready(o: &Value) -> Value {
    let total = arr(o, &["spec", "containers"]).len();
    let ready = arr(o, &["status", "containerStatuses"])
        .iter()
        .filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true))
        .count();
    json!(format!("{ready}/{total}"))
}

fn service_ports(o: &Value) -> Value {
    let ports: Vec<String> = arr(o, &["spec", "ports"])
        .iter()
        .map(|p| {
            let port = int_at(p, &["port"]);
            let proto = match str_at(p, &["protocol"]) {
                s if s.is_empty() => "TCP".to_string(),
                s => s,
            };
            match int_at(p, &["nodePort"]) {
                0 => format!("{port}/{proto}"),
                np => format!("{port}:{np}/{proto}"),
            }
        })
        .collect();
    or_none(ports.join(","))
}

fn service_external_ip(o: &Value) -> Value {
    let mut ips: Vec<String> = arr(o, &["spec", "externalIPs"])
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    for ing in arr(o, &["status", "loadBalancer", "ingress"]) {
        let ip = str_at(ing, &["ip"]);
        let host = str_at(ing, &["hostname"]);
        ips.push(if ip.is_empty() { host } else { ip });
    }
    if ips.is_empty() && str_at(o, &["spec", "type"]) == "LoadBalancer" {
        return json!("<pending>");
    }
    or_none(ips.join(","))
}

fn node_status(o: &Value) -> Value {
    let ready = arr(o, &["status", "conditions"])
        .iter()
        .find(|c| str_at(c, &["type"]) == "Ready")
        .map(|c| str_at(c, &["status"]));
    let mut status = match ready.as_deref() {
        Some("True") => "Ready".to_string(),
        Some("False") => "NotReady".to_string(),
        _ => "Unknown".to_string(),
    };
    if o.get("spec")
        .and_then(|s| s.get("unschedulable"))
        .and_then(Value::as_bool)
        == Some(true)
    {
        status.push_str(",SchedulingDisabled");
    }
    json!(status)
}

fn node_roles(o: &Value) -> Value {
    let mut roles: Vec<String> = o
        .get("metadata")
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .map(|l| {
            l.keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                .filter(|r| !r.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    roles.sort();
    or_none(roles.join(","))
}

fn containers_of(o: &Value, field: &str) -> Value {
    let names: Vec<String> = arr(o, &["spec", "template", "spec", "containers"])
        .iter()
        .map(|c| str_at(c, &[field]))
        .collect();
    json!(names.join(","))
}

fn name_cell(o: &Value) -> Value {
    json!(meta_str(o, "name"))
}
fn age_cell(o: &Value) -> Value {
    json!(crate::time::age(meta_str(o, "creationTimestamp")))
}
fn count_of(o: &Value, fields: &[&str]) -> usize {
    fields
        .iter()
        .filter_map(|f| o.get(*f).and_then(Value::as_object))
        .map(|m| m.len())
        .sum()
}
fn str_at(o: &Value, path: &[&str]) -> String {
    let mut v = o;
    for p in path {
        v = v.get(*p).unwrap_or(&Value::Null);
    }
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `k=v,k2=v2` of a string map.
fn map_text(m: Option<&Value>) -> String {
    m.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn or_unset(s: String) -> Value {
    json!(if s.is_empty() {
        "<unset>".to_string()
    } else {
        s
    })
}

fn or_na(s: String) -> Value {
    json!(if s.is_empty() { "N/A".to_string() } else { s })
}

/// Access modes as kubectl abbreviates them (`RWO,ROX`).
fn access_modes(modes: &[Value]) -> Value {
    let short: Vec<&str> = modes
        .iter()
        .filter_map(Value::as_str)
        .map(|m| match m {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect();
    json!(short.join(","))
}

/// The subjects of a binding of one kind, comma-separated (namespace/name for accounts).
fn subjects(o: &Value, kind: &str) -> Value {
    let names: Vec<String> = arr(o, &["subjects"])
        .iter()
        .filter(|s| str_at(s, &["kind"]) == kind)
        .map(|s| {
            let ns = str_at(s, &["namespace"]);
            let name = str_at(s, &["name"]);
            if kind == "ServiceAccount" {
                format!("{ns}/{name}")
            } else {
                name
            }
        })
        .collect();
    json!(names.join(", "))
}

/// `cpu: 0/1, pods: 2/10`: a quota's used/hard, requests (and counts) or limits.
fn quota_usage(o: &Value, limits: bool) -> Value {
    let hard = o
        .get("status")
        .and_then(|s| s.get("hard"))
        .or_else(|| o.get("spec").and_then(|s| s.get("hard")))
        .and_then(Value::as_object);
    let used = o.get("status").and_then(|s| s.get("used"));
    let parts: Vec<String> = hard
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.starts_with("limits.") == limits)
        .map(|(k, h)| {
            let u = used
                .and_then(|u| u.get(k))
                .and_then(Value::as_str)
                .unwrap_or("0");
            format!("{k}: {u}/{}", h.as_str().unwrap_or(""))
        })
        .collect();
    json!(parts.join(", "))
}

/// An HPA's targets (`cpu: <unknown>/50%`), from its v2 metrics and current metrics.
fn hpa_targets(o: &Value) -> Value {
    let current = arr(o, &["status", "currentMetrics"]);
    let parts: Vec<String> = arr(o, &["spec", "metrics"])
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let kind = str_at(m, &["type"]);
            let source = match kind.as_str() {
                "Resource" => "resource",
                "ContainerResource" => "containerResource",
                "Pods" => "pods",
                "Object" => "object",
                _ => "external",
            };
            let name = match kind.as_str() {
                "Resource" | "ContainerResource" => str_at(m, &[source, "name"]),
                _ => str_at(m, &[source, "metric", "name"]),
            };
            let target = m.get(source).and_then(|s| s.get("target"));
            let utilization = target.and_then(|t| t.get("averageUtilization"));
            let want = match utilization.and_then(Value::as_i64) {
                Some(u) => format!("{u}%"),
                None => target
                    .and_then(|t| t.get("averageValue").or_else(|| t.get("value")))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            };
            let cur = current
                .get(i)
                .and_then(|c| c.get(source))
                .and_then(|s| s.get("current"));
            let have = match (utilization, cur) {
                (Some(_), Some(c)) if c.get("averageUtilization").is_some() => {
                    format!("{}%", int_at(c, &["averageUtilization"]))
                }
                (None, Some(c)) => c
                    .get("averageValue")
                    .or_else(|| c.get("value"))
                    .and_then(Value::as_str)
                    .unwrap_or("<unknown>")
                    .to_string(),
                _ => "<unknown>".to_string(),
            };
            format!("{name}: {have}/{want}")
        })
        .collect();
    json!(if parts.is_empty() {
        "<none>".to_string()
    } else {
        parts.join(", ")
    })
}

const NAME: Column = Column {
    name: "Name",
    kind: "string",
    format: "name",
    description: "Name must be unique within a namespace. Is required when creating resources, \
                  although some resources may allow a client to request the generation of an \
                  appropriate name automatically.",
    priority: 0,
    cell: name_cell,
};
const AGE: Column = Column {
    name: "Age",
    kind: "string",
    format: "",
    description: "CreationTimestamp is a timestamp representing the server time when this \
                  object was created.",
    priority: 0,
    cell: age_cell,
};

/// "Created At", the column of resources that have nothing else to show (roles, limit ranges).
const CREATED_AT: Column = Column {
    name: "Created At",
    kind: "date",
    format: "",
    description: "CreationTimestamp is a timestamp representing the server time when this \
                  object was created.",
    priority: 0,
    cell: |o| json!(meta_str(o, "creationTimestamp")),
};

fn columns(info: &ResourceInfo) -> Vec<Column> {
    // A version served by conversion prints as its stored form (cells see that form).
    let group = info.conversion.map_or(info.group, |c| c.storage_group);
    match (group, info.kind) {
        ("apiextensions.k8s.io", "CustomResourceDefinition") => vec![
            NAME,
            Column {
                name: "Created At",
                kind: "date",
                format: "",
                description: "",
                priority: 0,
                cell: |o| json!(meta_str(o, "creationTimestamp")),
            },
        ],
        ("", "Namespace") => vec![
            NAME,
            col("Status", "string", 0, |o| {
                json!(str_at(o, &["status", "phase"]))
            }),
            AGE,
        ],
        ("", "ConfigMap") => vec![
            NAME,
            col("Data", "integer", 0, |o| {
                json!(count_of(o, &["data", "binaryData"]))
            }),
            AGE,
        ],
        ("", "Secret") => vec![
            NAME,
            col("Type", "string", 0, |o| json!(str_at(o, &["type"]))),
            col("Data", "integer", 0, |o| json!(count_of(o, &["data"]))),
            AGE,
        ],
        ("", "Pod") => vec![
            NAME,
            col("Ready", "string", 0, pod_ready),
            col("Status", "string", 0, pod_status),
            col("Restarts", "string", 0, |o| {
                let n: i64 = arr(o, &["status", "containerStatuses"])
                    .iter()
                    .map(|c| int_at(c, &["restartCount"]))
                    .sum();
                json!(n.to_string())
            }),
            AGE,
            col("IP", "string", 1, |o| {
                or_none(str_at(o, &["status", "podIP"]))
            }),
            col("Node", "string", 1, |o| {
                or_none(str_at(o, &["spec", "nodeName"]))
            }),
            col("Nominated Node", "string", 1, |o| {
                or_none(str_at(o, &["status", "nominatedNodeName"]))
            }),
            col("Readiness Gates", "string", 1, |o| {
                let n = arr(o, &["spec", "readinessGates"]).len();
                json!(if n == 0 {
                    "<none>".to_string()
                } else {
                    format!("0/{n}")
                })
            }),
        ],
        ("", "Service") => vec![
            NAME,
            col("Type", "string", 0, |o| json!(str_at(o, &["spec", "type"]))),
            col("Cluster-IP", "string", 0, |o| {
                or_none(str_at(o, &["spec", "clusterIP"]))
            }),
            col("External-IP", "string", 0, service_external_ip),
            col("Port(s)", "string", 0, service_ports),
            AGE,
            col("Selector", "string", 1, |o| {
                or_none(map_text(o.get("spec").and_then(|s| s.get("selector"))))
            }),
        ],
        ("", "Node") => vec![
            NAME,
            col("Status", "string", 0, node_status),
            col("Roles", "string", 0, node_roles),
            AGE,
            col("Version", "string", 0, |o| {
                json!(str_at(o, &["status", "nodeInfo", "kubeletVersion"]))
            }),
        ],
        ("apps", "Deployment") => vec![
            NAME,
            col("Ready", "string", 0, |o| {
                json!(format!(
                    "{}/{}",
                    int_at(o, &["status", "readyReplicas"]),
                    int_at(o, &["spec", "replicas"])
                ))
            }),
            col("Up-to-date", "integer", 0, |o| {
                json!(int_at(o, &["status", "updatedReplicas"]))
            }),
            col("Available", "integer", 0, |o| {
                json!(int_at(o, &["status", "availableReplicas"]))
            }),
            AGE,
            col("Containers", "string", 1, |o| containers_of(o, "name")),
            col("Images", "string", 1, |o| containers_of(o, "image")),
        ],
        ("apps", "ReplicaSet") | ("", "ReplicationController") => vec![
            NAME,
            col("Desired", "integer", 0, |o| {
                json!(int_at(o, &["spec", "replicas"]))
            }),
            col("Current", "integer", 0, |o| {
                json!(int_at(o, &["status", "replicas"]))
            }),
            col("Ready", "integer", 0, |o| {
                json!(int_at(o, &["status", "readyReplicas"]))
            }),
            AGE,
            col("Containers", "string", 1, |o| containers_of(o, "name")),
            col("Images", "string", 1, |o| containers_of(o, "image")),
            col("Selector", "string", 1, |o| {
                or_none(crate::selectors::selector_text(
                    o.get("spec").and_then(|s| s.get("selector")),
                ))
            }),
        ],
        ("apps", "StatefulSet") => vec![
            NAME,
            col("Ready", "string", 0, |o| {
                json!(format!(
                    "{}/{}",
                    int_at(o, &["status", "readyReplicas"]),
                    int_at(o, &["spec", "replicas"])
                ))
            }),
            AGE,
            col("Containers", "string", 1, |o| containers_of(o, "name")),
            col("Images", "string", 1, |o| containers_of(o, "image")),
        ],
        ("apps", "DaemonSet") => vec![
            NAME,
            col("Desired", "integer", 0, |o| {
                json!(int_at(o, &["status", "desiredNumberScheduled"]))
            }),
            col("Current", "integer", 0, |o| {
                json!(int_at(o, &["status", "currentNumberScheduled"]))
            }),
            col("Ready", "integer", 0, |o| {
                json!(int_at(o, &["status", "numberReady"]))
            }),
            col("Up-to-date", "integer", 0, |o| {
                json!(int_at(o, &["status", "updatedNumberScheduled"]))
            }),
            col("Available", "integer", 0, |o| {
                json!(int_at(o, &["status", "numberAvailable"]))
            }),
            col("Node Selector", "string", 0, |o| {
                or_none(map_text(
                    o.get("spec")
                        .and_then(|s| s.get("template"))
                        .and_then(|t| t.get("spec"))
                        .and_then(|s| s.get("nodeSelector")),
                ))
            }),
            AGE,
        ],
        ("", "Endpoints") => vec![
            NAME,
            col("Endpoints", "string", 0, |o| {
                let mut eps = Vec::new();
                for subset in arr(o, &["subsets"]) {
                    for a in arr(subset, &["addresses"]) {
                        for p in arr(subset, &["ports"]) {
                            eps.push(format!("{}:{}", str_at(a, &["ip"]), int_at(p, &["port"])));
                        }
                    }
                }
                or_none(eps.join(","))
            }),
            AGE,
        ],
        ("", "Event") => vec![
            col("Last Seen", "string", 0, |o| {
                let last = str_at(o, &["lastTimestamp"]);
                let t = if last.is_empty() {
                    str_at(o, &["eventTime"])
                } else {
                    last
                };
                json!(if t.is_empty() {
                    age_cell(o)
                } else {
                    json!(crate::time::age(&t))
                })
            }),
            col("Type", "string", 0, |o| json!(str_at(o, &["type"]))),
            col("Reason", "string", 0, |o| json!(str_at(o, &["reason"]))),
            col("Object", "string", 0, |o| {
                json!(format!(
                    "{}/{}",
                    str_at(o, &["involvedObject", "kind"]).to_lowercase(),
                    str_at(o, &["involvedObject", "name"])
                ))
            }),
            col("Message", "string", 0, |o| json!(str_at(o, &["message"]))),
        ],
        ("batch", "Job") => vec![
            NAME,
            col("Status", "string", 0, |o| {
                let conds = arr(o, &["status", "conditions"]);
                let has = |t: &str| {
                    conds
                        .iter()
                        .any(|c| str_at(c, &["type"]) == t && str_at(c, &["status"]) == "True")
                };
                json!(if has("Complete") {
                    "Complete"
                } else if has("Failed") {
                    "Failed"
                } else if has("Suspended") {
                    "Suspended"
                } else {
                    "Running"
                })
            }),
            col("Completions", "string", 0, |o| {
                json!(format!(
                    "{}/{}",
                    int_at(o, &["status", "succeeded"]),
                    int_at(o, &["spec", "completions"])
                ))
            }),
            AGE,
        ],
        ("batch", "CronJob") => vec![
            NAME,
            col("Schedule", "string", 0, |o| {
                json!(str_at(o, &["spec", "schedule"]))
            }),
            col("Timezone", "string", 0, |o| {
                or_none(str_at(o, &["spec", "timeZone"]))
            }),
            col("Suspend", "boolean", 0, |o| {
                json!(
                    o.get("spec")
                        .and_then(|s| s.get("suspend"))
                        .and_then(Value::as_bool)
                        == Some(true)
                )
            }),
            col("Active", "integer", 0, |o| {
                json!(arr(o, &["status", "active"]).len())
            }),
            col("Last Schedule", "string", 0, |o| {
                let t = str_at(o, &["status", "lastScheduleTime"]);
                json!(if t.is_empty() {
                    "<none>".to_string()
                } else {
                    crate::time::age(&t)
                })
            }),
            AGE,
        ],
        ("", "ComponentStatus") => {
            /// The `Healthy` condition of a ComponentStatus.
            fn healthy(o: &Value) -> &Value {
                arr(o, &["conditions"])
                    .iter()
                    .find(|c| c["type"] == "Healthy")
                    .unwrap_or(&Value::Null)
            }
            vec![
                NAME,
                col("Status", "string", 0, |o| {
                    json!(match healthy(o)["status"].as_str() {
                        Some("True") => "Healthy",
                        Some("False") => "Unhealthy",
                        _ => "Unknown",
                    })
                }),
                col("Message", "string", 0, |o| {
                    json!(healthy(o)["message"].as_str().unwrap_or(""))
                }),
                col("Error", "string", 0, |o| {
                    json!(healthy(o)["error"].as_str().unwrap_or(""))
                }),
            ]
        }
        ("coordination.k8s.io", "Lease") => vec![
            NAME,
            col("Holder", "string", 0, |o| {
                json!(str_at(o, &["spec", "holderIdentity"]))
            }),
            AGE,
        ],
        ("", "ServiceAccount") => vec![
            NAME,
            col("Secrets", "integer", 0, |o| {
                json!(arr(o, &["secrets"]).len())
            }),
            AGE,
        ],
        ("", "PersistentVolume") => vec![
            NAME,
            col("Capacity", "string", 0, |o| {
                json!(str_at(o, &["spec", "capacity", "storage"]))
            }),
            col("Access Modes", "string", 0, |o| {
                access_modes(arr(o, &["spec", "accessModes"]))
            }),
            col("Reclaim Policy", "string", 0, |o| {
                json!(str_at(o, &["spec", "persistentVolumeReclaimPolicy"]))
            }),
            col("Status", "string", 0, |o| {
                json!(str_at(o, &["status", "phase"]))
            }),
            col("Claim", "string", 0, |o| {
                let name = str_at(o, &["spec", "claimRef", "name"]);
                json!(if name.is_empty() {
                    String::new()
                } else {
                    format!("{}/{name}", str_at(o, &["spec", "claimRef", "namespace"]))
                })
            }),
            col("StorageClass", "string", 0, |o| {
                json!(str_at(o, &["spec", "storageClassName"]))
            }),
            col("VolumeAttributesClass", "string", 0, |o| {
                or_unset(str_at(o, &["spec", "volumeAttributesClassName"]))
            }),
            col("Reason", "string", 0, |o| {
                json!(str_at(o, &["status", "reason"]))
            }),
            AGE,
            col("VolumeMode", "string", 1, |o| {
                json!(str_at(o, &["spec", "volumeMode"]))
            }),
        ],
        ("", "PersistentVolumeClaim") => vec![
            NAME,
            col("Status", "string", 0, |o| {
                json!(str_at(o, &["status", "phase"]))
            }),
            col("Volume", "string", 0, |o| {
                json!(str_at(o, &["spec", "volumeName"]))
            }),
            col("Capacity", "string", 0, |o| {
                json!(str_at(o, &["status", "capacity", "storage"]))
            }),
            col("Access Modes", "string", 0, |o| {
                access_modes(arr(o, &["status", "accessModes"]))
            }),
            col("StorageClass", "string", 0, |o| {
                json!(str_at(o, &["spec", "storageClassName"]))
            }),
            col("VolumeAttributesClass", "string", 0, |o| {
                or_unset(str_at(o, &["spec", "volumeAttributesClassName"]))
            }),
            AGE,
            col("VolumeMode", "string", 1, |o| {
                json!(str_at(o, &["spec", "volumeMode"]))
            }),
        ],
        ("", "ResourceQuota") => vec![
            NAME,
            AGE,
            col("Request", "string", 0, |o| quota_usage(o, false)),
            col("Limit", "string", 0, |o| quota_usage(o, true)),
        ],
        ("", "LimitRange") | ("rbac.authorization.k8s.io", "Role" | "ClusterRole") => {
            vec![NAME, CREATED_AT]
        }
        ("", "PodTemplate") => vec![
            col("Template", "string", 0, name_cell),
            col("Containers", "string", 0, |o| containers_of(o, "name")),
            col("Images", "string", 0, |o| containers_of(o, "image")),
            col("Pod Labels", "string", 0, |o| {
                or_none(map_text(
                    o.get("template")
                        .and_then(|t| t.get("metadata"))
                        .and_then(|m| m.get("labels")),
                ))
            }),
        ],
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => vec![
            NAME,
            col("Role", "string", 0, |o| {
                json!(format!(
                    "{}/{}",
                    str_at(o, &["roleRef", "kind"]),
                    str_at(o, &["roleRef", "name"])
                ))
            }),
            AGE,
            col("Users", "string", 1, |o| subjects(o, "User")),
            col("Groups", "string", 1, |o| subjects(o, "Group")),
            col("ServiceAccounts", "string", 1, |o| {
                subjects(o, "ServiceAccount")
            }),
        ],
        ("autoscaling", "HorizontalPodAutoscaler") => vec![
            NAME,
            col("Reference", "string", 0, |o| {
                json!(format!(
                    "{}/{}",
                    str_at(o, &["spec", "scaleTargetRef", "kind"]),
                    str_at(o, &["spec", "scaleTargetRef", "name"])
                ))
            }),
            col("Targets", "string", 0, hpa_targets),
            col("MinPods", "string", 0, |o| {
                let min = int_at(o, &["spec", "minReplicas"]);
                json!(if min == 0 {
                    "<unset>".to_string()
                } else {
                    min.to_string()
                })
            }),
            col("MaxPods", "integer", 0, |o| {
                json!(int_at(o, &["spec", "maxReplicas"]))
            }),
            col("Replicas", "integer", 0, |o| {
                json!(int_at(o, &["status", "currentReplicas"]))
            }),
            AGE,
        ],
        ("policy", "PodDisruptionBudget") => vec![
            NAME,
            col("Min Available", "string", 0, |o| {
                or_na(str_at(o, &["spec", "minAvailable"]))
            }),
            col("Max Unavailable", "string", 0, |o| {
                or_na(str_at(o, &["spec", "maxUnavailable"]))
            }),
            col("Allowed Disruptions", "integer", 0, |o| {
                json!(int_at(o, &["status", "disruptionsAllowed"]))
            }),
            AGE,
        ],
        ("networking.k8s.io", "Ingress") => vec![
            NAME,
            col("Class", "string", 0, |o| {
                or_none(str_at(o, &["spec", "ingressClassName"]))
            }),
            col("Hosts", "string", 0, |o| {
                let hosts: Vec<String> = arr(o, &["spec", "rules"])
                    .iter()
                    .map(|r| str_at(r, &["host"]))
                    .map(|h| if h.is_empty() { "*".to_string() } else { h })
                    .collect();
                json!(if hosts.is_empty() {
                    "*".to_string()
                } else {
                    hosts.join(",")
                })
            }),
            col("Address", "string", 0, |o| {
                let addrs: Vec<String> = arr(o, &["status", "loadBalancer", "ingress"])
                    .iter()
                    .map(|i| match str_at(i, &["ip"]) {
                        ip if ip.is_empty() => str_at(i, &["hostname"]),
                        ip => ip,
                    })
                    .collect();
                json!(addrs.join(","))
            }),
            col("Ports", "string", 0, |o| {
                json!(if arr(o, &["spec", "tls"]).is_empty() {
                    "80"
                } else {
                    "80, 443"
                })
            }),
            AGE,
        ],
        ("networking.k8s.io", "IngressClass") => vec![
            NAME,
            col("Controller", "string", 0, |o| {
                json!(str_at(o, &["spec", "controller"]))
            }),
            col("Parameters", "string", 0, |o| {
                let kind = str_at(o, &["spec", "parameters", "kind"]);
                or_none(if kind.is_empty() {
                    kind
                } else {
                    format!("{kind}/{}", str_at(o, &["spec", "parameters", "name"]))
                })
            }),
            AGE,
        ],
        ("networking.k8s.io", "ServiceCIDR") => vec![
            NAME,
            col("CIDRs", "string", 0, |o| {
                let cidrs: Vec<&str> = arr(o, &["spec", "cidrs"])
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                json!(cidrs.join(","))
            }),
            AGE,
        ],
        // Upstream's printer also computes an age cell, but defines these two columns only.
        ("networking.k8s.io", "IPAddress") => vec![
            NAME,
            col("ParentRef", "string", 0, |o| {
                let Some(p) = o.pointer("/spec/parentRef").filter(|p| !p.is_null()) else {
                    return json!("<none>");
                };
                let (group, resource) = (str_at(p, &["group"]), str_at(p, &["resource"]));
                let mut shown = if group.is_empty() {
                    resource
                } else {
                    format!("{resource}.{group}")
                }
                .to_lowercase();
                let namespace = str_at(p, &["namespace"]);
                if !namespace.is_empty() {
                    shown = format!("{shown}/{namespace}");
                }
                json!(format!("{shown}/{}", str_at(p, &["name"])))
            }),
        ],
        ("networking.k8s.io", "NetworkPolicy") => vec![
            NAME,
            col("Pod-Selector", "string", 0, |o| {
                json!(crate::selectors::selector_text(
                    o.get("spec").and_then(|s| s.get("podSelector"))
                ))
            }),
            AGE,
        ],
        ("discovery.k8s.io", "EndpointSlice") => vec![
            NAME,
            col("AddressType", "string", 0, |o| {
                json!(str_at(o, &["addressType"]))
            }),
            col("Ports", "string", 0, |o| {
                let ports: Vec<String> = arr(o, &["ports"])
                    .iter()
                    .map(|p| int_at(p, &["port"]).to_string())
                    .collect();
                json!(if ports.is_empty() {
                    "<unset>".to_string()
                } else {
                    ports.join(",")
                })
            }),
            col("Endpoints", "string", 0, |o| {
                let addrs: Vec<String> = arr(o, &["endpoints"])
                    .iter()
                    .flat_map(|e| arr(e, &["addresses"]).iter())
                    .filter_map(|a| a.as_str().map(str::to_string))
                    .collect();
                json!(if addrs.is_empty() {
                    "<unset>".to_string()
                } else if addrs.len() > 3 {
                    format!("{} + {} more...", addrs[..3].join(","), addrs.len() - 3)
                } else {
                    addrs.join(",")
                })
            }),
            AGE,
        ],
        ("scheduling.k8s.io", "PriorityClass") => vec![
            NAME,
            col("Value", "integer", 0, |o| json!(int_at(o, &["value"]))),
            col("Global-Default", "boolean", 0, |o| {
                json!(o.get("globalDefault").and_then(Value::as_bool) == Some(true))
            }),
            AGE,
            col("PreemptionPolicy", "string", 0, |o| {
                json!(str_at(o, &["preemptionPolicy"]))
            }),
        ],
        ("storage.k8s.io", "StorageClass") => vec![
            col("Name", "string", 0, |o| {
                let default = o
                    .get("metadata")
                    .and_then(|m| m.get("annotations"))
                    .and_then(|a| a.get("storageclass.kubernetes.io/is-default-class"))
                    .and_then(Value::as_str)
                    == Some("true");
                let name = meta_str(o, "name");
                json!(if default {
                    format!("{name} (default)")
                } else {
                    name.to_string()
                })
            }),
            col("Provisioner", "string", 0, |o| {
                json!(str_at(o, &["provisioner"]))
            }),
            col("ReclaimPolicy", "string", 0, |o| {
                json!(str_at(o, &["reclaimPolicy"]))
            }),
            col("VolumeBindingMode", "string", 0, |o| {
                json!(str_at(o, &["volumeBindingMode"]))
            }),
            col("AllowVolumeExpansion", "string", 0, |o| {
                json!(o.get("allowVolumeExpansion").and_then(Value::as_bool) == Some(true))
            }),
            AGE,
        ],
        ("node.k8s.io", "RuntimeClass") => vec![
            NAME,
            col("Handler", "string", 0, |o| json!(str_at(o, &["handler"]))),
            AGE,
        ],
        ("certificates.k8s.io", "CertificateSigningRequest") => vec![
            NAME,
            AGE,
            col("SignerName", "string", 0, |o| {
                json!(str_at(o, &["spec", "signerName"]))
            }),
            col("Requestor", "string", 0, |o| {
                json!(str_at(o, &["spec", "username"]))
            }),
            col("RequestedDuration", "string", 0, |o| {
                let secs = int_at(o, &["spec", "expirationSeconds"]);
                json!(if secs == 0 {
                    "<none>".to_string()
                } else {
                    crate::time::human_duration(secs)
                })
            }),
            col("Condition", "string", 0, |o| {
                let conds: Vec<String> = arr(o, &["status", "conditions"])
                    .iter()
                    .map(|c| str_at(c, &["type"]))
                    .collect();
                let mut text = if conds.is_empty() {
                    "Pending".to_string()
                } else {
                    conds.join(",")
                };
                if !str_at(o, &["status", "certificate"]).is_empty() {
                    text.push_str(",Issued");
                }
                json!(text)
            }),
        ],
        ("apps", "ControllerRevision") => vec![
            NAME,
            col("Controller", "string", 0, |o| {
                let owner = arr(o, &["metadata", "ownerReferences"])
                    .iter()
                    .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
                    .map(|r| {
                        let group = str_at(r, &["apiVersion"])
                            .split_once('/')
                            .map(|(g, _)| format!(".{g}"))
                            .unwrap_or_default();
                        format!(
                            "{}{group}/{}",
                            str_at(r, &["kind"]).to_lowercase(),
                            str_at(r, &["name"])
                        )
                    })
                    .unwrap_or_default();
                or_none(owner)
            }),
            col("Revision", "integer", 0, |o| {
                json!(int_at(o, &["revision"]))
            }),
            AGE,
        ],
        (
            "admissionregistration.k8s.io",
            "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration",
        ) => vec![
            NAME,
            col("Webhooks", "integer", 0, |o| {
                json!(arr(o, &["webhooks"]).len())
            }),
            AGE,
        ],
        _ => vec![NAME, AGE],
    }
}

/// The cells of one row.
type CellsFn = Box<dyn Fn(&Value) -> Vec<Value>>;

fn column_definition(c: &Column) -> Value {
    json!({
        "name": c.name, "type": c.kind, "format": c.format,
        "description": c.description, "priority": c.priority,
    })
}

/// One cell of a CRD's `additionalPrinterColumns`: the JSONPath's first match, `null` when
/// nothing matches; a `date` column shows the age, as upstream's table convertor does.
fn printer_cell(c: &crate::crd::PrinterColumn, o: &Value) -> Value {
    use jsonpath_rust::JsonPath as _;
    let path = format!("${}", c.json_path.trim());
    let found = o
        .query(&path)
        .ok()
        .and_then(|v| v.first().map(|v| (*v).clone()));
    let Some(v) = found.filter(|v| !v.is_null()) else {
        return Value::Null;
    };
    match (c.kind.as_str(), &v) {
        ("date", Value::String(s)) => json!(crate::time::age(s)),
        ("integer", Value::Number(n)) => json!(n.as_i64().unwrap_or_default()),
        ("number" | "boolean", _) => v,
        ("string", Value::String(_)) => v,
        ("string", other) => json!(other.to_string()),
        _ => v,
    }
}

/// A Table of `objects`. `includeObject` (None, Metadata — the default — or Object) says what
/// each row carries besides its cells.
pub(crate) fn to_table(info: &ResourceInfo, objects: &[Value], rv: &str, q: &Query) -> Value {
    let (defs, cells): (Vec<Value>, CellsFn) = match &info.custom {
        Some(custom) => {
            let mut defs = vec![column_definition(&NAME)];
            defs.extend(custom.columns.iter().map(|c| {
                json!({
                    "name": c.name, "type": c.kind, "format": c.format,
                    "description": c.description, "priority": c.priority,
                })
            }));
            let columns = custom.columns.clone();
            (
                defs,
                Box::new(move |o: &Value| {
                    let mut cells = vec![name_cell(o)];
                    cells.extend(columns.iter().map(|c| printer_cell(c, o)));
                    cells
                }),
            )
        }
        None => {
            let cols = columns(info);
            let conversion = info.conversion;
            (
                cols.iter().map(column_definition).collect(),
                Box::new(move |o: &Value| match conversion {
                    Some(c) => {
                        let stored = (c.to_storage)(o.clone());
                        cols.iter().map(|col| (col.cell)(&stored)).collect()
                    }
                    None => cols.iter().map(|c| (c.cell)(o)).collect(),
                }),
            )
        }
    };
    let include = q.get("includeObject").map_or("Metadata", String::as_str);
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let cells: Vec<Value> = cells(o);
            let mut row = json!({ "cells": cells });
            match include {
                "None" => {}
                "Object" => row["object"] = o.clone(),
                _ => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": o.get("metadata").cloned().unwrap_or_else(|| json!({})),
                    })
                }
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": { "resourceVersion": rv },
        "columnDefinitions": defs,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn cells(plural: &str, group: &str, version: &str, obj: Value) -> (Vec<String>, Value) {
        let info = crate::registry::REGISTRY
            .find(group, version, plural)
            .expect("resource");
        let t = to_table(info, &[obj], "1", &Query::new());
        let names = t["columnDefinitions"]
            .as_array()
            .expect("columns")
            .iter()
            .map(|c| c["name"].as_str().unwrap_or("").to_string())
            .collect();
        (names, t["rows"][0]["cells"].clone())
    }

    #[test]
    fn printers_of_the_other_built_in_resources() {
        let (cols, row) = cells(
            "horizontalpodautoscalers",
            "autoscaling",
            "v2",
            json!({
            "metadata": {"name": "web"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "minReplicas": 1,
                     "maxReplicas": 3, "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                     "target": {"type": "Utilization", "averageUtilization": 50}}}]}}),
        );
        assert_eq!(
            cols,
            [
                "Name",
                "Reference",
                "Targets",
                "MinPods",
                "MaxPods",
                "Replicas",
                "Age"
            ]
        );
        assert_eq!(row[1], "Deployment/web");
        assert_eq!(row[2], "cpu: <unknown>/50%");
        let (_, row) = cells(
            "poddisruptionbudgets",
            "policy",
            "v1",
            json!({
            "metadata": {"name": "p"}, "spec": {"minAvailable": 1},
            "status": {"disruptionsAllowed": 2}}),
        );
        assert_eq!(
            (&row[1], &row[2], &row[3]),
            (&json!("1"), &json!("N/A"), &json!(2))
        );
        let (cols, row) = cells(
            "rolebindings",
            "rbac.authorization.k8s.io",
            "v1",
            json!({
            "metadata": {"name": "b"}, "roleRef": {"kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "User", "name": "alice"},
                         {"kind": "ServiceAccount", "name": "sa", "namespace": "ns"}]}),
        );
        assert_eq!(cols[..3], ["Name", "Role", "Age"]);
        assert_eq!(
            (&row[1], &row[3], &row[5]),
            (&json!("ClusterRole/view"), &json!("alice"), &json!("ns/sa"))
        );
        let (_, row) = cells(
            "storageclasses",
            "storage.k8s.io",
            "v1",
            json!({
            "metadata": {"name": "local", "annotations":
                {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": "rancher.io/local-path"}),
        );
        assert_eq!(row[0], "local (default)");
        let (_, row) = cells(
            "persistentvolumeclaims",
            "",
            "v1",
            json!({
            "metadata": {"name": "c"}, "spec": {"storageClassName": "local"},
            "status": {"phase": "Bound", "accessModes": ["ReadWriteOnce", "ReadOnlyMany"],
                       "capacity": {"storage": "1Gi"}}}),
        );
        assert_eq!(
            (&row[1], &row[3], &row[4]),
            (&json!("Bound"), &json!("1Gi"), &json!("RWO,ROX"))
        );
        let (_, row) = cells(
            "resourcequotas",
            "",
            "v1",
            json!({
            "metadata": {"name": "q"},
            "status": {"hard": {"pods": "10", "limits.cpu": "2"}, "used": {"pods": "3"}}}),
        );
        assert_eq!(
            (&row[2], &row[3]),
            (&json!("pods: 3/10"), &json!("limits.cpu: 0/2"))
        );
        let (cols, _) = cells(
            "roles",
            "rbac.authorization.k8s.io",
            "v1",
            json!({"metadata": {"name": "r"}}),
        );
        assert_eq!(cols, ["Name", "Created At"]);
    }

    #[test]
    fn pod_and_service_columns() {
        let pods = crate::registry::REGISTRY
            .find("", "v1", "pods")
            .expect("pods");
        let pod = json!({"metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Pending", "containerStatuses": [
                {"ready": true, "restartCount": 2, "state": {"running": {}}},
                {"ready": false, "restartCount": 1, "state": {"waiting": {"reason": "ErrImagePull"}}}]}});
        let t = to_table(pods, &[pod], "5", &Query::new());
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "p");
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[2], "ErrImagePull");
        assert_eq!(cells[3], "3");
        assert_eq!(cells[6], "n1");
        assert_eq!(t["columnDefinitions"][5]["priority"], 1);

        let svcs = crate::registry::REGISTRY
            .find("", "v1", "services")
            .expect("svc");
        let svc = json!({"metadata": {"name": "s"}, "spec": {"type": "NodePort", "clusterIP": "10.43.0.5",
            "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]}});
        let t = to_table(svcs, &[svc], "5", &Query::new());
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[1], "NodePort");
        assert_eq!(cells[2], "10.43.0.5");
        assert_eq!(cells[3], "<none>");
        assert_eq!(cells[4], "80:30080/TCP,53/UDP");
    }

    #[test]
    fn detects_kubectl_table_accept() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static(
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json",
            ),
        );
        assert!(wants_table(&h));
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        assert!(!wants_table(&h));
    }
}
