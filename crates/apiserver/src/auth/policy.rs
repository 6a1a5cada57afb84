//! The bootstrap RBAC policy: upstream's default ClusterRoles and ClusterRoleBindings (the
//! subset rk3s's components and users need), written in our own table form, and reconciled on
//! every start as upstream does: a missing object is created; an existing one whose
//! `rbac.authorization.kubernetes.io/autoupdate` annotation is not `"false"` gets the missing
//! rules (roles) or subjects (bindings) added. Nothing is ever taken away.

use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::rest::FieldValidation;
use crate::server::AppState;

const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";
const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const READ_WRITE: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
];
const AGG: &str = "rbac.authorization.k8s.io/aggregate-to-";

fn r(verbs: &[&str], group: &str, resources: &[&str]) -> Value {
    json!({ "verbs": verbs, "apiGroups": [group], "resources": resources })
}

fn named(verbs: &[&str], group: &str, resources: &[&str], names: &[&str]) -> Value {
    json!({ "verbs": verbs, "apiGroups": [group], "resources": resources, "resourceNames": names })
}

fn urls(verbs: &[&str], urls: &[&str]) -> Value {
    json!({ "verbs": verbs, "nonResourceURLs": urls })
}

fn cluster_role(name: &str, labels: &[(&str, &str)], rules: Vec<Value>) -> Value {
    let mut l = serde_json::Map::new();
    l.insert("kubernetes.io/bootstrapping".into(), json!("rbac-defaults"));
    for (k, v) in labels {
        l.insert((*k).into(), json!(v));
    }
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": { "name": name, "labels": l, "annotations": { AUTOUPDATE: "true" } },
        "rules": rules,
    })
}

fn aggregated(name: &str, labels: &[(&str, &str)], selector_label: &str) -> Value {
    let mut cr = cluster_role(name, labels, Vec::new());
    cr["aggregationRule"] = json!({
        "clusterRoleSelectors": [{ "matchLabels": { selector_label: "true" } }]
    });
    cr
}

/// A subject: `("Group", "system:masters")`, `("User", ..)`, `("ServiceAccount", "ns/name")`.
fn binding(name: &str, role: &str, subjects: &[(&str, &str)]) -> Value {
    let subjects: Vec<Value> = subjects
        .iter()
        .map(|(kind, name)| match *kind {
            "ServiceAccount" => {
                let (ns, n) = name.split_once('/').unwrap_or(("default", name));
                json!({ "kind": kind, "name": n, "namespace": ns })
            }
            _ => json!({ "kind": kind, "name": name, "apiGroup": "rbac.authorization.k8s.io" }),
        })
        .collect();
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {
            "name": name,
            "labels": { "kubernetes.io/bootstrapping": "rbac-defaults" },
            "annotations": { AUTOUPDATE: "true" },
        },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role },
        "subjects": subjects,
    })
}

/// Upstream's default ClusterRoles (those rk3s serves the resources of).
pub(crate) fn cluster_roles() -> Vec<Value> {
    let health = ["/healthz", "/livez", "/readyz", "/version", "/version/"];
    vec![
        cluster_role(
            "cluster-admin",
            &[],
            vec![r(&["*"], "*", &["*"]), urls(&["*"], &["*"])],
        ),
        cluster_role(
            "system:discovery",
            &[],
            vec![urls(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            )],
        ),
        cluster_role(
            "system:monitoring",
            &[],
            vec![urls(
                &["get"],
                &[
                    "/healthz",
                    "/healthz/*",
                    "/livez",
                    "/livez/*",
                    "/metrics",
                    "/metrics/slis",
                    "/readyz",
                    "/readyz/*",
                ],
            )],
        ),
        cluster_role(
            "system:basic-user",
            &[],
            vec![
                r(
                    &["create"],
                    "authorization.k8s.io",
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                r(
                    &["create"],
                    "authentication.k8s.io",
                    &["selfsubjectreviews"],
                ),
            ],
        ),
        cluster_role(
            "system:public-info-viewer",
            &[],
            vec![urls(&["get"], &health)],
        ),
        aggregated("admin", &[], &format!("{AGG}admin")),
        aggregated(
            "edit",
            &[(&format!("{AGG}admin"), "true")],
            &format!("{AGG}edit"),
        ),
        aggregated(
            "view",
            &[(&format!("{AGG}edit"), "true")],
            &format!("{AGG}view"),
        ),
        cluster_role(
            "system:aggregate-to-admin",
            &[(&format!("{AGG}admin"), "true")],
            vec![
                r(
                    &["create"],
                    "authorization.k8s.io",
                    &["localsubjectaccessreviews"],
                ),
                r(
                    READ_WRITE,
                    "rbac.authorization.k8s.io",
                    &["rolebindings", "roles"],
                ),
            ],
        ),
        cluster_role(
            "system:aggregate-to-edit",
            &[(&format!("{AGG}edit"), "true")],
            vec![
                r(&["impersonate"], "", &["serviceaccounts"]),
                r(
                    WRITE,
                    "",
                    &[
                        "pods",
                        "pods/attach",
                        "pods/proxy",
                        "pods/exec",
                        "pods/portforward",
                    ],
                ),
                r(&["create"], "", &["pods/eviction"]),
                r(
                    READ_WRITE,
                    "",
                    &[
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "serviceaccounts",
                        "services",
                        "services/proxy",
                        "persistentvolumeclaims",
                        "configmaps",
                        "secrets",
                        "events",
                    ],
                ),
                r(&["create"], "", &["serviceaccounts/token"]),
                r(
                    WRITE,
                    "apps",
                    &[
                        "daemonsets",
                        "deployments",
                        "deployments/rollback",
                        "deployments/scale",
                        "replicasets",
                        "replicasets/scale",
                        "statefulsets",
                        "statefulsets/scale",
                    ],
                ),
                r(WRITE, "autoscaling", &["horizontalpodautoscalers"]),
                r(WRITE, "batch", &["cronjobs", "jobs"]),
                r(WRITE, "policy", &["poddisruptionbudgets"]),
                r(
                    WRITE,
                    "networking.k8s.io",
                    &["ingresses", "networkpolicies"],
                ),
                r(READ_WRITE, "coordination.k8s.io", &["leases"]),
            ],
        ),
        cluster_role(
            "system:aggregate-to-view",
            &[(&format!("{AGG}view"), "true")],
            vec![
                r(
                    READ,
                    "",
                    &[
                        "pods",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "serviceaccounts",
                        "services",
                        "services/status",
                        "endpoints",
                        "persistentvolumeclaims",
                        "persistentvolumeclaims/status",
                        "configmaps",
                    ],
                ),
                r(
                    READ,
                    "",
                    &[
                        "limitranges",
                        "resourcequotas",
                        "bindings",
                        "events",
                        "pods/status",
                        "resourcequotas/status",
                        "namespaces/status",
                        "replicationcontrollers/status",
                        "pods/log",
                    ],
                ),
                r(READ, "", &["namespaces"]),
                r(READ, "discovery.k8s.io", &["endpointslices"]),
                r(
                    READ,
                    "apps",
                    &[
                        "controllerrevisions",
                        "daemonsets",
                        "daemonsets/status",
                        "deployments",
                        "deployments/scale",
                        "deployments/status",
                        "replicasets",
                        "replicasets/scale",
                        "replicasets/status",
                        "statefulsets",
                        "statefulsets/scale",
                        "statefulsets/status",
                    ],
                ),
                r(
                    READ,
                    "autoscaling",
                    &[
                        "horizontalpodautoscalers",
                        "horizontalpodautoscalers/status",
                    ],
                ),
                r(
                    READ,
                    "batch",
                    &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
                ),
                r(
                    READ,
                    "policy",
                    &["poddisruptionbudgets", "poddisruptionbudgets/status"],
                ),
                r(
                    READ,
                    "networking.k8s.io",
                    &["ingresses", "ingresses/status", "networkpolicies"],
                ),
            ],
        ),
        cluster_role(
            "system:auth-delegator",
            &[],
            vec![
                r(&["create"], "authentication.k8s.io", &["tokenreviews"]),
                r(
                    &["create"],
                    "authorization.k8s.io",
                    &["subjectaccessreviews"],
                ),
            ],
        ),
        cluster_role(
            "system:node",
            &[],
            vec![
                r(&["create"], "authentication.k8s.io", &["tokenreviews"]),
                r(
                    &["create"],
                    "authorization.k8s.io",
                    &["subjectaccessreviews", "localsubjectaccessreviews"],
                ),
                r(READ, "", &["services"]),
                r(&["create", "get", "list", "watch"], "", &["nodes"]),
                r(&["patch", "update"], "", &["nodes/status"]),
                r(&["patch", "update"], "", &["nodes"]),
                r(&["create", "patch", "update"], "", &["events"]),
                r(&["create", "patch", "update"], "events.k8s.io", &["events"]),
                r(READ, "", &["pods"]),
                r(&["create", "delete"], "", &["pods"]),
                r(&["patch", "update"], "", &["pods/status"]),
                r(&["create"], "", &["pods/eviction"]),
                r(&["get"], "", &["secrets", "configmaps"]),
                r(
                    &["get"],
                    "",
                    &["persistentvolumeclaims", "persistentvolumes"],
                ),
                r(&["get"], "", &["endpoints"]),
                r(
                    &["create", "get", "list", "watch"],
                    "certificates.k8s.io",
                    &["certificatesigningrequests"],
                ),
                r(
                    &["create", "delete", "get", "patch", "update"],
                    "coordination.k8s.io",
                    &["leases"],
                ),
                r(&["get"], "storage.k8s.io", &["volumeattachments"]),
                r(&["create"], "", &["serviceaccounts/token"]),
                r(
                    &["get", "update", "patch"],
                    "",
                    &["persistentvolumeclaims/status"],
                ),
                r(READ, "storage.k8s.io", &["csidrivers"]),
                r(READ_WRITE, "storage.k8s.io", &["csinodes"]),
                r(READ, "node.k8s.io", &["runtimeclasses"]),
            ],
        ),
        cluster_role(
            "system:node-proxier",
            &[],
            vec![
                r(&["list", "watch"], "", &["services", "endpoints"]),
                r(READ, "", &["nodes"]),
                r(&["create", "patch", "update"], "", &["events"]),
                r(&["create", "patch", "update"], "events.k8s.io", &["events"]),
                r(&["list", "watch"], "discovery.k8s.io", &["endpointslices"]),
            ],
        ),
        cluster_role(
            "system:kube-scheduler",
            &[],
            vec![
                r(&["create", "patch", "update"], "", &["events"]),
                r(&["create", "patch", "update"], "events.k8s.io", &["events"]),
                r(&["create"], "coordination.k8s.io", &["leases"]),
                named(
                    &["get", "update"],
                    "coordination.k8s.io",
                    &["leases"],
                    &["kube-scheduler"],
                ),
                r(&["create"], "", &["endpoints"]),
                named(&["get", "update"], "", &["endpoints"], &["kube-scheduler"]),
                r(READ, "", &["nodes"]),
                r(&["delete", "get", "list", "watch"], "", &["pods"]),
                r(&["create"], "", &["bindings", "pods/binding"]),
                r(&["patch", "update"], "", &["pods/status"]),
                r(READ, "", &["replicationcontrollers", "services"]),
                r(READ, "apps", &["replicasets", "statefulsets"]),
                r(READ, "policy", &["poddisruptionbudgets"]),
                r(READ, "", &["persistentvolumeclaims", "persistentvolumes"]),
                r(&["create"], "authentication.k8s.io", &["tokenreviews"]),
                r(
                    &["create"],
                    "authorization.k8s.io",
                    &["subjectaccessreviews"],
                ),
                r(
                    READ,
                    "storage.k8s.io",
                    &[
                        "csinodes",
                        "csidrivers",
                        "csistoragecapacities",
                        "storageclasses",
                    ],
                ),
                r(READ, "", &["namespaces"]),
            ],
        ),
        cluster_role(
            "system:volume-scheduler",
            &[],
            vec![
                r(
                    &["get", "list", "patch", "update", "watch"],
                    "",
                    &["persistentvolumes"],
                ),
                r(READ, "storage.k8s.io", &["storageclasses"]),
                r(
                    &["get", "list", "patch", "update", "watch"],
                    "",
                    &["persistentvolumeclaims"],
                ),
            ],
        ),
        cluster_role(
            "system:kube-controller-manager",
            &[],
            vec![
                r(&["create", "patch", "update"], "", &["events"]),
                r(&["create", "patch", "update"], "events.k8s.io", &["events"]),
                r(&["create"], "coordination.k8s.io", &["leases"]),
                named(
                    &["get", "update"],
                    "coordination.k8s.io",
                    &["leases"],
                    &["kube-controller-manager"],
                ),
                r(&["create"], "", &["endpoints"]),
                named(
                    &["get", "update"],
                    "",
                    &["endpoints"],
                    &["kube-controller-manager"],
                ),
                r(&["create"], "", &["secrets", "serviceaccounts"]),
                r(&["delete"], "", &["secrets"]),
                r(
                    &["get"],
                    "",
                    &["configmaps", "namespaces", "secrets", "serviceaccounts"],
                ),
                r(&["update"], "", &["secrets", "serviceaccounts"]),
                r(&["create"], "authentication.k8s.io", &["tokenreviews"]),
                r(
                    &["create"],
                    "authorization.k8s.io",
                    &["subjectaccessreviews"],
                ),
                r(&["list", "watch"], "*", &["*"]),
                r(&["create"], "", &["serviceaccounts/token"]),
            ],
        ),
        // rk3s' own: upstream's kube-controller-manager runs each loop as a service account
        // (`--use-service-account-credentials`, which K3s sets) bound to a
        // `system:controller:<loop>` role; rk3s-controller runs every loop as
        // `system:kube-controller-manager`, so that user gets the union of those roles for the
        // loops it runs (deployment, replicaset, replication, generic-garbage-collector,
        // endpoint, endpointslice, service-account).
        cluster_role(
            "rk3s:kube-controller-manager",
            &[],
            vec![
                // generic-garbage-collector: reads and edits (owner references, finalizers) and
                // deletes any object, subresources included.
                r(
                    &["get", "list", "watch", "patch", "update", "delete"],
                    "*",
                    &["*"],
                ),
                r(&["create"], "", &["pods", "serviceaccounts", "endpoints"]),
                r(&["create"], "", &["endpoints/restricted"]),
                r(&["create"], "apps", &["replicasets"]),
                r(&["create"], "discovery.k8s.io", &["endpointslices"]),
                r(&["create", "patch", "update"], "", &["events"]),
                r(&["create", "patch", "update"], "events.k8s.io", &["events"]),
            ],
        ),
        cluster_role(
            "system:kube-dns",
            &[],
            vec![
                r(&["list", "watch"], "", &["endpoints", "services"]),
                r(&["list", "watch"], "discovery.k8s.io", &["endpointslices"]),
            ],
        ),
        cluster_role(
            "system:node-bootstrapper",
            &[],
            vec![r(
                &["create", "get", "list", "watch"],
                "certificates.k8s.io",
                &["certificatesigningrequests"],
            )],
        ),
        cluster_role(
            "system:service-account-issuer-discovery",
            &[],
            vec![urls(
                &["get"],
                &[
                    "/.well-known/openid-configuration",
                    "/.well-known/openid-configuration/",
                    "/openid/v1/jwks",
                    "/openid/v1/jwks/",
                ],
            )],
        ),
    ]
}

/// Upstream's default ClusterRoleBindings.
pub(crate) fn cluster_role_bindings() -> Vec<Value> {
    vec![
        binding(
            "cluster-admin",
            "cluster-admin",
            &[("Group", "system:masters")],
        ),
        binding(
            "system:monitoring",
            "system:monitoring",
            &[("Group", "system:monitoring")],
        ),
        binding(
            "system:discovery",
            "system:discovery",
            &[("Group", "system:authenticated")],
        ),
        binding(
            "system:basic-user",
            "system:basic-user",
            &[("Group", "system:authenticated")],
        ),
        binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            &[
                ("Group", "system:authenticated"),
                ("Group", "system:unauthenticated"),
            ],
        ),
        binding(
            "system:node-proxier",
            "system:node-proxier",
            &[("User", "system:kube-proxy")],
        ),
        binding(
            "system:kube-controller-manager",
            "system:kube-controller-manager",
            &[("User", "system:kube-controller-manager")],
        ),
        binding(
            "rk3s:kube-controller-manager",
            "rk3s:kube-controller-manager",
            &[("User", "system:kube-controller-manager")],
        ),
        binding(
            "system:kube-dns",
            "system:kube-dns",
            &[("ServiceAccount", "kube-system/kube-dns")],
        ),
        binding(
            "system:kube-scheduler",
            "system:kube-scheduler",
            &[("User", "system:kube-scheduler")],
        ),
        binding(
            "system:volume-scheduler",
            "system:volume-scheduler",
            &[("User", "system:kube-scheduler")],
        ),
        // As upstream: no subjects; kubelets are authorized by the node authorizer.
        binding("system:node", "system:node", &[]),
        binding(
            "system:service-account-issuer-discovery",
            "system:service-account-issuer-discovery",
            &[("Group", "system:serviceaccounts")],
        ),
    ]
}

/// Creates missing bootstrap objects and adds missing rules/subjects to those that allow it.
pub(crate) async fn reconcile(state: &AppState) -> Result<()> {
    let sets = [
        ("clusterroles", cluster_roles(), "rules"),
        ("clusterrolebindings", cluster_role_bindings(), "subjects"),
    ];
    for (plural, objects, list_field) in sets {
        let info = super::rbac::rbac_info(plural)
            .ok_or_else(|| Error::Bootstrap("RBAC is not registered".into()))?;
        for obj in objects {
            let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
            let want = obj[list_field].clone();
            match crate::rest::create_object(
                state,
                info,
                None,
                obj.clone(),
                false,
                FieldValidation::Strict,
            )
            .await
            {
                Ok(_) => continue,
                Err(e) if e.reason == "AlreadyExists" => {}
                Err(e) => return Err(Error::Bootstrap(format!("{plural} {name}: {}", e.message))),
            }
            let key = info.key(None, &name);
            let res = crate::rest::guaranteed_update(state, info, &key, &name, false, |old| {
                let mut new = old.clone();
                if old["metadata"]["annotations"][AUTOUPDATE] == "false" {
                    return Ok(new);
                }
                // Aggregated roles' rules belong to the aggregation loop.
                if old.get("aggregationRule").is_some_and(|a| !a.is_null()) {
                    return Ok(new);
                }
                let mut have = old[list_field].as_array().cloned().unwrap_or_default();
                for item in want.as_array().into_iter().flatten() {
                    if !have.contains(item) {
                        have.push(item.clone());
                    }
                }
                new[list_field] = Value::Array(have);
                Ok(new)
            })
            .await;
            if let Err(e) = res {
                return Err(Error::Bootstrap(format!("{plural} {name}: {}", e.message)));
            }
        }
    }
    Ok(())
}
