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

/// A rule over several API groups.
fn rg(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Value {
    json!({ "verbs": verbs, "apiGroups": groups, "resources": resources })
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
        // rk3s' own, only while `AuthConfig::controller_manager_union_role` is on: upstream's
        // kube-controller-manager runs each loop as a service account
        // (`--use-service-account-credentials`, which K3s and `rk3s server` set) bound to a
        // `system:controller:<loop>` role; an rk3s-controller without that flag runs every
        // loop as `system:kube-controller-manager`, so that user gets the union of those roles
        // for the loops it runs (deployment, replicaset, replication, statefulset, daemon-set, job,
        // cronjob, ttl-after-finished, resourcequota, disruption, generic-garbage-collector,
        // endpoint, endpointslice, service-account, persistent-volume-binder,
        // pvc-protection, pv-protection, pod-garbage-collector, horizontal-pod-autoscaler:
        // the last five need nothing beyond the rules below — updates of volumes, claims,
        // their and HPAs' status and of `*/scale`, pod status patches and deletions are
        // the garbage collector's `*` rule).
        cluster_role(
            UNION_ROLE,
            &[],
            vec![
                // generic-garbage-collector: reads and edits (owner references, finalizers) and
                // deletes any object, subresources included.
                r(
                    &[
                        "get",
                        "list",
                        "watch",
                        "patch",
                        "update",
                        "delete",
                        "deletecollection",
                    ],
                    "*",
                    &["*"],
                ),
                r(
                    &["create"],
                    "",
                    &[
                        "pods",
                        "serviceaccounts",
                        "endpoints",
                        "persistentvolumeclaims",
                    ],
                ),
                r(&["create"], "", &["endpoints/restricted", "pods/binding"]),
                r(&["create"], "apps", &["replicasets", "controllerrevisions"]),
                // cronjob creates Jobs.
                r(&["create"], "batch", &["jobs"]),
                // csrapproving asks whether the requester may have its CSR approved.
                r(
                    &["create"],
                    "authorization.k8s.io",
                    &["subjectaccessreviews"],
                ),
                // csrapproving and csrsigning act for the signers they handle.
                r(&["approve", "sign"], "certificates.k8s.io", &["signers"]),
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
        // What the CSR approver checks with a SubjectAccessReview before approving a
        // kubelet's client certificate (bound by the cluster's installer, not by default).
        cluster_role(
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            &[],
            vec![r(
                &["create"],
                "certificates.k8s.io",
                &["certificatesigningrequests/nodeclient"],
            )],
        ),
        cluster_role(
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            &[],
            vec![r(
                &["create"],
                "certificates.k8s.io",
                &["certificatesigningrequests/selfnodeclient"],
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
    .into_iter()
    .chain(
        controller_roles().into_iter().map(|(name, rules)| {
            cluster_role(&format!("{CONTROLLER_ROLE_PREFIX}{name}"), &[], rules)
        }),
    )
    .chain(
        rk3s_controller_roles()
            .into_iter()
            .map(|(name, rules)| cluster_role(&format!("{RK3S_ROLE_PREFIX}{name}"), &[], rules)),
    )
    .collect()
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
            UNION_ROLE,
            UNION_ROLE,
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
    .into_iter()
    .chain(controller_roles().into_iter().map(|(name, _)| {
        let role = format!("{CONTROLLER_ROLE_PREFIX}{name}");
        binding(
            &role,
            &role,
            &[("ServiceAccount", &format!("kube-system/{name}"))],
        )
    }))
    .chain(rk3s_controller_roles().into_iter().map(|(name, _)| {
        let role = format!("{RK3S_ROLE_PREFIX}{name}");
        binding(
            &role,
            &role,
            &[("ServiceAccount", &format!("kube-system/{name}"))],
        )
    }))
    .collect()
}

/// rk3s' union role for a controller manager that runs every loop on its own identity; exists
/// only while [`crate::AuthConfig::controller_manager_union_role`] is on.
pub(crate) const UNION_ROLE: &str = "rk3s:kube-controller-manager";

/// The prefix of rk3s' supplements to the per-controller roles (bound to the same service
/// accounts), for what rk3s-controller's loops do beyond upstream's roles.
pub(crate) const RK3S_ROLE_PREFIX: &str = "rk3s:controller:";

/// Supplements to upstream's per-controller roles, each bound to `kube-system/<name>`: where
/// an rk3s-controller loop, running as its service account
/// (`--use-service-account-credentials`), does more than upstream's controller (which reads
/// through the manager's shared informers and writes status with PUT) — kept minimal, each
/// rule with why. Also the role of rk3s' own `node-password-controller` (K3s' node-password
/// controller; K3s runs it on its own identity).
pub(crate) fn rk3s_controller_roles() -> Vec<(&'static str, Vec<Value>)> {
    vec![
        // Status is written with merge patches (upstream: PUT).
        (
            "daemon-set-controller",
            vec![r(&["patch"], "apps", &["daemonsets/status"])],
        ),
        // Status with merge patches; the newest revision annotation with a merge patch of the
        // Deployment (upstream: PUT).
        (
            "deployment-controller",
            vec![r(
                &["patch"],
                "apps",
                &["deployments", "deployments/status"],
            )],
        ),
        (
            "replicaset-controller",
            vec![r(&["patch"], "apps", &["replicasets/status"])],
        ),
        (
            "replication-controller",
            vec![r(&["patch"], "", &["replicationcontrollers/status"])],
        ),
        // Status, and the claims' owner references (retention policy), with merge patches
        // (upstream: PUT).
        (
            "statefulset-controller",
            vec![
                r(&["patch"], "apps", &["statefulsets/status"]),
                r(&["patch"], "", &["persistentvolumeclaims"]),
            ],
        ),
        // The Terminating phase and conditions with merge patches (upstream: PUT).
        (
            "namespace-controller",
            vec![r(&["patch"], "", &["namespaces/status"])],
        ),
        // Watches and lists the pods its budgets select (upstream: the shared informer).
        (
            "disruption-controller",
            vec![r(&["list", "watch"], "", &["pods"])],
        ),
        // Reads the quota afresh before writing its status (upstream: the informer's copy).
        (
            "resourcequota-controller",
            vec![r(&["get"], "", &["resourcequotas"])],
        ),
        // Watches namespaces and service accounts, and reads `default` before creating it
        // (upstream: shared informers).
        (
            "service-account-controller",
            vec![
                r(&["list", "watch"], "", &["namespaces"]),
                r(READ, "", &["serviceaccounts"]),
            ],
        ),
        // Watches the nodes' heartbeat Leases (upstream: the shared informer).
        (
            "node-controller",
            vec![r(&["list", "watch"], "coordination.k8s.io", &["leases"])],
        ),
        // Lists the token Secrets, reads their service accounts and lists the pods that may
        // mount them (upstream: shared informers).
        (
            "legacy-service-account-token-cleaner",
            vec![
                r(&["list"], "", &["secrets", "pods"]),
                r(&["get"], "", &["serviceaccounts"]),
            ],
        ),
        // rk3s' node-password controller: watches Nodes; edits the password Secrets in
        // `kube-system` (its Role in `namespaced_roles`).
        (
            "node-password-controller",
            vec![r(&["list", "watch"], "", &["nodes"])],
        ),
    ]
}

/// Upstream's namespaced bootstrap Roles and RoleBindings (`namespace_policy.go`, those for
/// loops rk3s runs) and rk3s' own: `(namespace, name, rules, service account)`, the binding
/// named as the role and bound to `kube-system/<service account>`.
#[allow(clippy::type_complexity)]
pub(crate) fn namespaced_roles() -> Vec<(&'static str, String, Vec<Value>, &'static str)> {
    let events = || {
        rg(
            &["create", "update", "patch"],
            &["", "events.k8s.io"],
            &["events"],
        )
    };
    vec![
        (
            "kube-system",
            format!("{CONTROLLER_ROLE_PREFIX}token-cleaner"),
            vec![
                r(&["get", "list", "watch", "delete"], "", &["secrets"]),
                events(),
            ],
            "token-cleaner",
        ),
        (
            "kube-system",
            format!("{RK3S_ROLE_PREFIX}node-password-controller"),
            // Reads a node's password Secret and patches its owner reference to the Node.
            vec![r(&["get", "patch"], "", &["secrets"])],
            "node-password-controller",
        ),
    ]
}

/// [`namespaced_roles`] as `Role` and `RoleBinding` objects.
fn roles_and_bindings() -> (Vec<Value>, Vec<Value>) {
    let mut roles = Vec::new();
    let mut bindings = Vec::new();
    for (ns, name, rules, sa) in namespaced_roles() {
        let mut role = cluster_role(&name, &[], rules);
        role["kind"] = json!("Role");
        role["metadata"]["namespace"] = json!(ns);
        roles.push(role);
        let mut b = binding(
            &name,
            &name,
            &[("ServiceAccount", &format!("kube-system/{sa}"))],
        );
        b["kind"] = json!("RoleBinding");
        b["metadata"]["namespace"] = json!(ns);
        b["roleRef"]["kind"] = json!("Role");
        bindings.push(b);
    }
    (roles, bindings)
}

/// The prefix of the per-controller roles; each is bound to the service account
/// `kube-system/<name>` (upstream's `--use-service-account-credentials`).
pub(crate) const CONTROLLER_ROLE_PREFIX: &str = "system:controller:";

/// Upstream's per-controller ClusterRoles (`controller_policy.go`, v1.33, the controllers whose
/// resources rk3s serves), least privilege for each controller loop.
pub(crate) fn controller_roles() -> Vec<(&'static str, Vec<Value>)> {
    const EXT_APPS: &[&str] = &["extensions", "apps"];
    let events = || {
        rg(
            &["create", "update", "patch"],
            &["", "events.k8s.io"],
            &["events"],
        )
    };
    vec![
        (
            "attachdetach-controller",
            vec![
                r(
                    &["list", "watch"],
                    "",
                    &["persistentvolumes", "persistentvolumeclaims"],
                ),
                r(READ, "", &["nodes"]),
                r(&["patch", "update"], "", &["nodes/status"]),
                r(&["list", "watch"], "", &["pods"]),
                events(),
                r(
                    &["get", "create", "delete", "list", "watch"],
                    "storage.k8s.io",
                    &["volumeattachments"],
                ),
                r(&["get", "watch", "list"], "storage.k8s.io", &["csidrivers"]),
                r(&["get", "watch", "list"], "storage.k8s.io", &["csinodes"]),
            ],
        ),
        (
            "clusterrole-aggregation-controller",
            vec![r(
                &["escalate", "get", "list", "watch", "update", "patch"],
                "rbac.authorization.k8s.io",
                &["clusterroles"],
            )],
        ),
        (
            "cronjob-controller",
            vec![
                r(&["get", "list", "watch", "update"], "batch", &["cronjobs"]),
                r(
                    &[
                        "get", "list", "watch", "create", "update", "delete", "patch",
                    ],
                    "batch",
                    &["jobs"],
                ),
                r(&["update"], "batch", &["cronjobs/status"]),
                r(&["update"], "batch", &["cronjobs/finalizers"]),
                r(&["list", "watch", "delete"], "", &["pods"]),
                events(),
            ],
        ),
        (
            "daemon-set-controller",
            vec![
                rg(READ, EXT_APPS, &["daemonsets"]),
                rg(&["update"], EXT_APPS, &["daemonsets/status"]),
                rg(&["update"], EXT_APPS, &["daemonsets/finalizers"]),
                r(&["list", "watch"], "", &["nodes"]),
                r(
                    &["list", "watch", "create", "delete", "patch"],
                    "",
                    &["pods"],
                ),
                r(&["create"], "", &["pods/binding"]),
                r(
                    &[
                        "get", "list", "watch", "create", "delete", "update", "patch",
                    ],
                    "apps",
                    &["controllerrevisions"],
                ),
                events(),
            ],
        ),
        (
            "deployment-controller",
            vec![
                rg(
                    &["get", "list", "watch", "update"],
                    EXT_APPS,
                    &["deployments"],
                ),
                rg(&["update"], EXT_APPS, &["deployments/status"]),
                rg(&["update"], EXT_APPS, &["deployments/finalizers"]),
                rg(
                    &[
                        "get", "list", "watch", "create", "update", "patch", "delete",
                    ],
                    &["apps", "extensions"],
                    &["replicasets"],
                ),
                r(&["get", "list", "watch", "update"], "", &["pods"]),
                events(),
            ],
        ),
        (
            "disruption-controller",
            vec![
                rg(READ, EXT_APPS, &["deployments"]),
                rg(READ, &["apps", "extensions"], &["replicasets"]),
                r(READ, "", &["replicationcontrollers"]),
                r(READ, "policy", &["poddisruptionbudgets"]),
                r(READ, "apps", &["statefulsets"]),
                r(&["update"], "policy", &["poddisruptionbudgets/status"]),
                r(&["patch", "update"], "", &["pods/status"]),
                r(&["get"], "*", &["*/scale"]),
                events(),
            ],
        ),
        (
            "endpoint-controller",
            vec![
                r(READ, "", &["services", "pods"]),
                r(
                    &["get", "list", "watch", "create", "update", "delete"],
                    "",
                    &["endpoints"],
                ),
                r(&["create"], "", &["endpoints/restricted"]),
                events(),
            ],
        ),
        (
            "endpointslice-controller",
            vec![
                r(READ, "", &["services", "pods", "nodes"]),
                r(&["update"], "", &["services/finalizers"]),
                r(
                    &["get", "list", "watch", "create", "update", "delete"],
                    "discovery.k8s.io",
                    &["endpointslices"],
                ),
                events(),
            ],
        ),
        (
            "endpointslicemirroring-controller",
            vec![
                r(READ, "", &["services", "endpoints"]),
                r(&["update"], "", &["services/finalizers"]),
                r(&["update"], "", &["endpoints/finalizers"]),
                r(
                    &["get", "list", "watch", "create", "update", "delete"],
                    "discovery.k8s.io",
                    &["endpointslices"],
                ),
                events(),
            ],
        ),
        (
            "expand-controller",
            vec![
                r(
                    &["get", "list", "watch", "update", "patch"],
                    "",
                    &["persistentvolumes"],
                ),
                r(&["update", "patch"], "", &["persistentvolumeclaims/status"]),
                r(READ, "", &["persistentvolumeclaims"]),
                events(),
                r(&["get"], "", &["services"]),
            ],
        ),
        (
            "ephemeral-volume-controller",
            vec![
                r(READ, "", &["pods"]),
                r(&["update"], "", &["pods/finalizers"]),
                r(
                    &["get", "list", "watch", "create"],
                    "",
                    &["persistentvolumeclaims"],
                ),
                events(),
            ],
        ),
        (
            "generic-garbage-collector",
            vec![
                r(
                    &["get", "list", "watch", "patch", "update", "delete"],
                    "*",
                    &["*"],
                ),
                events(),
            ],
        ),
        (
            "horizontal-pod-autoscaler",
            vec![
                r(READ, "autoscaling", &["horizontalpodautoscalers"]),
                r(
                    &["update"],
                    "autoscaling",
                    &["horizontalpodautoscalers/status"],
                ),
                r(&["get", "update"], "*", &["*/scale"]),
                r(&["list", "watch"], "", &["pods"]),
                r(&["list", "watch"], "metrics.k8s.io", &["pods"]),
                r(READ, "custom.metrics.k8s.io", &["*"]),
                r(READ, "external.metrics.k8s.io", &["*"]),
                events(),
            ],
        ),
        (
            "job-controller",
            vec![
                r(
                    &["get", "list", "watch", "update", "patch"],
                    "batch",
                    &["jobs"],
                ),
                r(&["update"], "batch", &["jobs/status"]),
                r(&["update"], "batch", &["jobs/finalizers"]),
                r(
                    &["list", "watch", "create", "delete", "patch"],
                    "",
                    &["pods"],
                ),
                events(),
            ],
        ),
        (
            "namespace-controller",
            vec![
                r(&["get", "list", "watch", "delete"], "", &["namespaces"]),
                r(
                    &["update"],
                    "",
                    &["namespaces/finalize", "namespaces/status"],
                ),
                r(
                    &["get", "list", "watch", "delete", "deletecollection"],
                    "*",
                    &["*"],
                ),
            ],
        ),
        (
            "node-controller",
            vec![
                r(
                    &["get", "list", "watch", "update", "delete", "patch"],
                    "",
                    &["nodes"],
                ),
                r(&["patch", "update"], "", &["nodes/status"]),
                r(&["patch", "update"], "", &["pods/status"]),
                r(&["list", "watch", "get", "delete"], "", &["pods"]),
                events(),
            ],
        ),
        (
            "persistent-volume-binder",
            vec![
                r(
                    &["get", "list", "watch", "update", "create", "delete"],
                    "",
                    &["persistentvolumes"],
                ),
                r(&["update"], "", &["persistentvolumes/status"]),
                r(
                    &["get", "list", "watch", "update"],
                    "",
                    &["persistentvolumeclaims"],
                ),
                r(&["update"], "", &["persistentvolumeclaims/status"]),
                r(&["list", "watch", "get", "create", "delete"], "", &["pods"]),
                r(READ, "storage.k8s.io", &["storageclasses"]),
                r(&["list", "watch"], "", &["nodes"]),
                events(),
                r(&["watch"], "", &["events"]),
                r(&["get"], "", &["services"]),
            ],
        ),
        (
            "pod-garbage-collector",
            vec![
                r(&["list", "watch", "delete"], "", &["pods"]),
                r(READ, "", &["nodes"]),
                r(&["patch"], "", &["pods/status"]),
            ],
        ),
        (
            "replicaset-controller",
            vec![
                rg(
                    &["get", "list", "watch", "update"],
                    &["apps", "extensions"],
                    &["replicasets"],
                ),
                rg(
                    &["update"],
                    &["apps", "extensions"],
                    &["replicasets/status"],
                ),
                rg(
                    &["update"],
                    &["apps", "extensions"],
                    &["replicasets/finalizers"],
                ),
                r(
                    &["list", "watch", "patch", "create", "delete"],
                    "",
                    &["pods"],
                ),
                events(),
            ],
        ),
        (
            "replication-controller",
            vec![
                r(
                    &["get", "list", "watch", "update"],
                    "",
                    &["replicationcontrollers"],
                ),
                r(&["update"], "", &["replicationcontrollers/status"]),
                r(&["update"], "", &["replicationcontrollers/finalizers"]),
                r(
                    &["list", "watch", "patch", "create", "delete"],
                    "",
                    &["pods"],
                ),
                events(),
            ],
        ),
        (
            "resourcequota-controller",
            vec![
                r(&["list", "watch"], "*", &["*"]),
                r(&["update"], "", &["resourcequotas/status"]),
                events(),
            ],
        ),
        (
            "route-controller",
            vec![
                r(&["list", "watch"], "", &["nodes"]),
                r(&["patch"], "", &["nodes/status"]),
                events(),
            ],
        ),
        (
            "service-account-controller",
            vec![r(&["create"], "", &["serviceaccounts"]), events()],
        ),
        (
            "service-controller",
            vec![
                r(READ, "", &["services"]),
                r(&["patch", "update"], "", &["services/status"]),
                r(&["list", "watch"], "", &["nodes"]),
                events(),
            ],
        ),
        (
            "statefulset-controller",
            vec![
                r(&["list", "watch"], "", &["pods"]),
                r(READ, "apps", &["statefulsets"]),
                r(&["update"], "apps", &["statefulsets/status"]),
                r(&["update"], "apps", &["statefulsets/finalizers"]),
                r(
                    &["get", "create", "delete", "update", "patch"],
                    "",
                    &["pods"],
                ),
                r(
                    &[
                        "get", "create", "delete", "update", "patch", "list", "watch",
                    ],
                    "apps",
                    &["controllerrevisions"],
                ),
                r(
                    &["get", "create", "list", "watch"],
                    "",
                    &["persistentvolumeclaims"],
                ),
                r(&["update", "delete"], "", &["persistentvolumeclaims"]),
                r(&["update"], "", &["pods/finalizers"]),
                events(),
            ],
        ),
        (
            "ttl-controller",
            vec![
                r(&["update", "patch", "list", "watch"], "", &["nodes"]),
                events(),
            ],
        ),
        (
            "certificate-controller",
            vec![
                r(
                    &["get", "list", "watch", "delete"],
                    "certificates.k8s.io",
                    &["certificatesigningrequests"],
                ),
                r(
                    &["update"],
                    "certificates.k8s.io",
                    &[
                        "certificatesigningrequests/status",
                        "certificatesigningrequests/approval",
                    ],
                ),
                named(
                    &["approve"],
                    "certificates.k8s.io",
                    &["signers"],
                    &["kubernetes.io/kube-apiserver-client-kubelet"],
                ),
                named(
                    &["sign"],
                    "certificates.k8s.io",
                    &["signers"],
                    &[
                        "kubernetes.io/legacy-unknown",
                        "kubernetes.io/kube-apiserver-client",
                        "kubernetes.io/kube-apiserver-client-kubelet",
                        "kubernetes.io/kubelet-serving",
                    ],
                ),
                r(
                    &["create"],
                    "authorization.k8s.io",
                    &["subjectaccessreviews"],
                ),
                events(),
            ],
        ),
        (
            "pvc-protection-controller",
            vec![
                r(
                    &["get", "list", "watch", "update"],
                    "",
                    &["persistentvolumeclaims"],
                ),
                r(&["list", "watch", "get"], "", &["pods"]),
                events(),
            ],
        ),
        (
            "pv-protection-controller",
            vec![
                r(
                    &["get", "list", "watch", "update"],
                    "",
                    &["persistentvolumes"],
                ),
                events(),
            ],
        ),
        (
            "ttl-after-finished-controller",
            vec![
                r(&["get", "list", "watch", "delete"], "batch", &["jobs"]),
                events(),
            ],
        ),
        (
            "root-ca-cert-publisher",
            vec![r(&["create", "update"], "", &["configmaps"]), events()],
        ),
        (
            "validatingadmissionpolicy-status-controller",
            vec![
                r(
                    READ,
                    "admissionregistration.k8s.io",
                    &["validatingadmissionpolicies"],
                ),
                r(
                    &["get", "patch", "update"],
                    "admissionregistration.k8s.io",
                    &["validatingadmissionpolicies/status"],
                ),
                events(),
            ],
        ),
        (
            "legacy-service-account-token-cleaner",
            vec![
                named(
                    &["get"],
                    "",
                    &["configmaps"],
                    &["kube-apiserver-legacy-service-account-token-tracking"],
                ),
                r(&["patch", "delete"], "", &["secrets"]),
            ],
        ),
    ]
}

/// Creates missing bootstrap objects and adds missing rules/subjects to those that allow it.
/// Without [`crate::AuthConfig::controller_manager_union_role`] the union role and its binding
/// are left out, and deleted when an earlier start created them.
pub(crate) async fn reconcile(state: &AppState) -> Result<()> {
    let union = state.auth.controller_manager_union_role;
    let keep = |objects: Vec<Value>| -> Vec<Value> {
        objects
            .into_iter()
            .filter(|o| union || o["metadata"]["name"] != UNION_ROLE)
            .collect()
    };
    let (roles, role_bindings) = roles_and_bindings();
    let sets = [
        ("clusterroles", keep(cluster_roles()), "rules"),
        (
            "clusterrolebindings",
            keep(cluster_role_bindings()),
            "subjects",
        ),
        ("roles", roles, "rules"),
        ("rolebindings", role_bindings, "subjects"),
    ];
    if !union {
        for plural in ["clusterrolebindings", "clusterroles"] {
            let info = super::rbac::rbac_info(plural)
                .ok_or_else(|| Error::Bootstrap("RBAC is not registered".into()))?;
            let opts = crate::rest::DeleteOptions::default();
            match crate::rest::delete_object(state, info, None, UNION_ROLE, &opts).await {
                Ok(_) => tracing::info!(
                    "deleted {plural} {UNION_ROLE}: the controllers use their own service accounts"
                ),
                Err(e) if e.code == 404 => {}
                Err(e) => {
                    return Err(Error::Bootstrap(format!(
                        "{plural} {UNION_ROLE}: {}",
                        e.message
                    )));
                }
            }
        }
    }
    for (plural, objects, list_field) in sets {
        let info = super::rbac::rbac_info(plural)
            .ok_or_else(|| Error::Bootstrap("RBAC is not registered".into()))?;
        for obj in objects {
            let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
            let ns = obj["metadata"]["namespace"].as_str().map(str::to_string);
            let want = obj[list_field].clone();
            match crate::rest::create_object(
                state,
                info,
                ns.as_deref(),
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
            let key = info.key(ns.as_deref(), &name);
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
