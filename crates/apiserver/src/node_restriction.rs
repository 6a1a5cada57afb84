//! The NodeRestriction admission plugin: what a kubelet (`system:node:<name>` in
//! `system:nodes`) may write, beyond what the node authorizer (`auth::node`) lets through.
//! Upstream v1.33's rules and messages:
//!
//! - nodes: only its own Node; on create no `configSource` and no labels outside the kubelet's
//!   set; on update no new `configSource`, no change of taints, and no change of labels under
//!   `node-restriction.kubernetes.io/` or of `kubernetes.io`/`k8s.io` labels outside the
//!   kubelet's set (`kubernetes.io/hostname`, `kubernetes.io/os|arch`, zone/region/instance
//!   type, and the `kubelet.kubernetes.io/`, `node.kubernetes.io/` namespaces);
//! - pods: create only mirror pods (`kubernetes.io/config.mirror`) bound to itself, owned by
//!   its Node (one controller reference, with its uid — checked by [`admit_mirror_pod_owner`]
//!   — no blockOwnerDeletion) and referencing no
//!   service account, secret, configmap, cluster trust bundle or claim; delete only pods bound
//!   to itself; no other writes of the pod itself; `status` only of pods bound to itself and
//!   without label changes; `eviction` only of pods bound to itself; no other subresource;
//! - leases: only in `kube-node-lease`, only the one named after the node;
//! - `serviceaccounts/token`: only bound to a pod (by name and uid) on the node.
//!
//! Each check returns upstream's 403 (`<resource> "<name>" is forbidden: <why>`).

use serde_json::Value;

use crate::registry::{REGISTRY, ResourceInfo};
use crate::server::AppState;
use crate::status::ApiError;

const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
const NODE_RESTRICTION_NAMESPACE: &str = "node-restriction.kubernetes.io";
/// Labels a kubelet may set on its Node (`k8s.io/kubelet/pkg/apis`).
const KUBELET_LABELS: &[&str] = &[
    "kubernetes.io/hostname",
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/region",
    "node.kubernetes.io/instance-type",
    "beta.kubernetes.io/instance-type",
    "kubernetes.io/os",
    "kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/arch",
];
/// Label namespaces whose labels a kubelet may set.
const KUBELET_LABEL_NAMESPACES: &[&str] = &["kubelet.kubernetes.io", "node.kubernetes.io"];

/// What NodeRestriction sees of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    Create,
    Update,
    Delete,
}

fn forbidden(info: &ResourceInfo, name: &str, why: String) -> ApiError {
    if name.is_empty() {
        let mut e = ApiError::forbidden(info, "", &why);
        e.message = format!("{} is forbidden: {why}", crate::status::qualified(info));
        e
    } else {
        ApiError::forbidden(info, name, &why)
    }
}

fn meta<'v>(obj: &'v Value, field: &str) -> &'v Value {
    &obj["metadata"][field]
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// Admits (or refuses) a write by the kubelet of `node`. `old` is the stored object (update,
/// delete), `new` the object as it would be stored (create, update).
pub(crate) fn admit(
    node: &str,
    info: &ResourceInfo,
    subresource: &str,
    op: Operation,
    namespace: &str,
    old: Option<&Value>,
    new: Option<&Value>,
) -> Result<(), ApiError> {
    let name = new.or(old).map(|o| str_of(meta(o, "name"))).unwrap_or("");
    match (info.group, info.plural) {
        ("", "pods") => admit_pod(node, info, subresource, op, name, old, new),
        ("", "nodes") => admit_node(node, info, op, name, old, new),
        ("coordination.k8s.io", "leases") => {
            if namespace != NODE_LEASE_NAMESPACE {
                return Err(forbidden(
                    info,
                    name,
                    format!(
                        "can only access leases in the {NODE_LEASE_NAMESPACE:?} system namespace"
                    ),
                ));
            }
            if name != node {
                return Err(forbidden(
                    info,
                    name,
                    "can only access node lease with the same name as the requesting node".into(),
                ));
            }
            Ok(())
        }
        ("storage.k8s.io", "csinodes") if name != node => Err(forbidden(
            info,
            name,
            "can only access CSINode with the same name as the requesting node".into(),
        )),
        ("", "persistentvolumeclaims") if subresource != "status" => {
            Err(forbidden(info, name, "may only update PVC status".into()))
        }
        _ => Ok(()),
    }
}

fn admit_pod(
    node: &str,
    info: &ResourceInfo,
    subresource: &str,
    op: Operation,
    name: &str,
    old: Option<&Value>,
    new: Option<&Value>,
) -> Result<(), ApiError> {
    let bound_here = |p: Option<&Value>| p.is_some_and(|p| str_of(&p["spec"]["nodeName"]) == node);
    match (subresource, op) {
        ("", Operation::Create) => admit_mirror_pod(node, info, name, new.unwrap_or(&Value::Null)),
        ("", Operation::Delete) if bound_here(old) => Ok(()),
        ("", Operation::Delete) => Err(forbidden(
            info,
            name,
            format!("node {node:?} can only delete pods with spec.nodeName set to itself"),
        )),
        ("", Operation::Update) => Err(forbidden(
            info,
            name,
            format!(
                "unexpected operation \"UPDATE\", node {node:?} can only create and delete mirror pods"
            ),
        )),
        ("status", Operation::Update) => {
            if !bound_here(old) {
                return Err(forbidden(
                    info,
                    name,
                    format!(
                        "node {node:?} can only update pod status for pods with spec.nodeName set to itself"
                    ),
                ));
            }
            let labels = |p: Option<&Value>| {
                p.map(|p| meta(p, "labels").clone())
                    .filter(|l| l.as_object().is_some_and(|m| !m.is_empty()))
                    .unwrap_or(Value::Null)
            };
            if labels(old) != labels(new) {
                return Err(forbidden(
                    info,
                    name,
                    format!("node {node:?} cannot update labels through pod status"),
                ));
            }
            if old.map(|p| &p["status"]["resourceClaimStatuses"])
                != new.map(|p| &p["status"]["resourceClaimStatuses"])
            {
                return Err(forbidden(
                    info,
                    name,
                    format!("node {node:?} cannot update resource claim statues"),
                ));
            }
            Ok(())
        }
        ("status", _) => Err(forbidden(
            info,
            name,
            format!("unexpected operation {:?}", op_name(op)),
        )),
        ("eviction", Operation::Create) if bound_here(old) => Ok(()),
        ("eviction", Operation::Create) => Err(forbidden(
            info,
            name,
            format!("node {node} can only evict pods with spec.nodeName set to itself"),
        )),
        (sub, _) => Err(forbidden(
            info,
            name,
            format!("unexpected pod subresource {sub:?}, only 'status' and 'eviction' are allowed"),
        )),
    }
}

fn op_name(op: Operation) -> &'static str {
    match op {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
    }
}

fn admit_mirror_pod(
    node: &str,
    info: &ResourceInfo,
    name: &str,
    pod: &Value,
) -> Result<(), ApiError> {
    let deny = |why: String| Err(forbidden(info, name, why));
    if meta(pod, "annotations").get(MIRROR_ANNOTATION).is_none() {
        return deny(format!(
            "pod does not have {MIRROR_ANNOTATION:?} annotation, node {node:?} can only create mirror pods"
        ));
    }
    if str_of(&pod["spec"]["nodeName"]) != node {
        return deny(format!(
            "node {node:?} can only create pods with spec.nodeName set to itself"
        ));
    }
    let owners = meta(pod, "ownerReferences")
        .as_array()
        .cloned()
        .unwrap_or_default();
    match owners.as_slice() {
        [] => {
            return deny(format!(
                "node {node:?} can only create pods with an owner reference set to itself"
            ));
        }
        [owner] => {
            if str_of(&owner["apiVersion"]) != "v1"
                || str_of(&owner["kind"]) != "Node"
                || str_of(&owner["name"]) != node
            {
                return deny(format!(
                    "node {node:?} can only create pods with an owner reference set to itself"
                ));
            }
            if owner["controller"].as_bool() != Some(true) {
                return deny(format!(
                    "node {node:?} can only create pods with a controller owner reference set to itself"
                ));
            }
            if owner["blockOwnerDeletion"].as_bool() == Some(true) {
                return deny(format!(
                    "node {node:?} must not set blockOwnerDeletion on an owner reference"
                ));
            }
        }
        _ => {
            return deny(format!(
                "node {node:?} can only create pods with a single owner reference set to itself"
            ));
        }
    }
    if !str_of(&pod["spec"]["serviceAccountName"]).is_empty() {
        return deny(format!(
            "node {node:?} can not create pods that reference a service account"
        ));
    }
    if !crate::auth::node::references(pod, "secrets").is_empty() {
        return deny(format!(
            "node {node:?} can not create pods that reference secrets"
        ));
    }
    if !crate::auth::node::references(pod, "configmaps").is_empty() {
        return deny(format!(
            "node {node:?} can not create pods that reference configmaps"
        ));
    }
    let volumes = pod["spec"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let trust_bundle = volumes.iter().any(|v| {
        v["projected"]["sources"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s.get("clusterTrustBundle").is_some()))
    });
    if trust_bundle {
        return deny(format!(
            "node {node:?} can not create pods that reference clustertrustbundles"
        ));
    }
    if volumes
        .iter()
        .any(|v| v.get("persistentVolumeClaim").is_some())
    {
        return deny(format!(
            "node {node:?} can not create pods that reference persistentvolumeclaims"
        ));
    }
    Ok(())
}

fn admit_node(
    node: &str,
    info: &ResourceInfo,
    op: Operation,
    name: &str,
    old: Option<&Value>,
    new: Option<&Value>,
) -> Result<(), ApiError> {
    if name != node {
        return Err(forbidden(
            info,
            name,
            format!("node {node:?} is not allowed to modify node {name:?}"),
        ));
    }
    let Some(new) = new else { return Ok(()) };
    let config_source = &new["spec"]["configSource"];
    match op {
        Operation::Create => {
            if !config_source.is_null() {
                return Err(forbidden(
                    info,
                    name,
                    format!(
                        "node {node:?} is not allowed to create pods with a non-nil configSource"
                    ),
                ));
            }
            let forbidden_labels =
                forbidden_labels(&modified_labels(meta(new, "labels"), &Value::Null));
            if !forbidden_labels.is_empty() {
                return Err(forbidden(
                    info,
                    name,
                    format!(
                        "node {node:?} is not allowed to set the following labels: {}",
                        forbidden_labels.join(", ")
                    ),
                ));
            }
        }
        Operation::Update => {
            let old = old.unwrap_or(&Value::Null);
            if !config_source.is_null() && *config_source != old["spec"]["configSource"] {
                return Err(forbidden(
                    info,
                    name,
                    format!(
                        "node {node:?} is not allowed to update configSource to a new non-nil configSource"
                    ),
                ));
            }
            let taints = |n: &Value| {
                n["spec"]["taints"]
                    .as_array()
                    .filter(|t| !t.is_empty())
                    .cloned()
            };
            if taints(new) != taints(old) {
                return Err(forbidden(
                    info,
                    name,
                    format!("node {node:?} is not allowed to modify taints"),
                ));
            }
            let forbidden_labels =
                forbidden_labels(&modified_labels(meta(new, "labels"), meta(old, "labels")));
            if !forbidden_labels.is_empty() {
                return Err(forbidden(
                    info,
                    name,
                    format!(
                        "is not allowed to modify labels: {}",
                        forbidden_labels.join(", ")
                    ),
                ));
            }
        }
        Operation::Delete => {}
    }
    Ok(())
}

/// The keys whose values differ between two label maps (added, removed or changed), sorted.
fn modified_labels(a: &Value, b: &Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let (a, b) = (
        a.as_object().unwrap_or(&empty),
        b.as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<String> = a
        .iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .chain(b.iter().filter(|(k, v)| a.get(*k) != Some(v)))
        .map(|(k, _)| k.clone())
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

fn label_namespace(key: &str) -> &str {
    key.split_once('/').map(|(ns, _)| ns).unwrap_or("")
}

fn in_namespace(ns: &str, domain: &str) -> bool {
    ns == domain || ns.strip_suffix(domain).is_some_and(|p| p.ends_with('.'))
}

fn is_kubelet_label(key: &str) -> bool {
    KUBELET_LABELS.contains(&key)
        || KUBELET_LABEL_NAMESPACES
            .iter()
            .any(|d| in_namespace(label_namespace(key), d))
}

fn forbidden_labels(modified: &[String]) -> Vec<String> {
    modified
        .iter()
        .filter(|key| {
            let ns = label_namespace(key);
            in_namespace(ns, NODE_RESTRICTION_NAMESPACE)
                || ((in_namespace(ns, "kubernetes.io") || in_namespace(ns, "k8s.io"))
                    && !is_kubelet_label(key))
        })
        .cloned()
        .collect()
}

/// The rest of NodeRestriction on a mirror pod the kubelet of `node` creates (after
/// [`admit`]): its owner reference must carry the uid of the node's Node object.
pub(crate) async fn admit_mirror_pod_owner(
    state: &AppState,
    node: &str,
    info: &ResourceInfo,
    pod: &Value,
) -> Result<(), ApiError> {
    if !(info.group.is_empty() && info.plural == "pods") {
        return Ok(());
    }
    let nodes = REGISTRY
        .find("", "v1", "nodes")
        .ok_or_else(|| ApiError::internal("nodes are not registered"))?;
    let Some(stored_node) = stored(state, nodes, None, node).await? else {
        return Err(ApiError::not_found(nodes, node));
    };
    let owner_uid = str_of(&meta(pod, "ownerReferences")[0]["uid"]);
    let node_uid = str_of(meta(&stored_node, "uid"));
    if owner_uid != node_uid {
        return Err(forbidden(
            info,
            str_of(meta(pod, "name")),
            format!("node {node} UID mismatch: expected {owner_uid} got {node_uid}"),
        ));
    }
    Ok(())
}

/// A stored object, for the checks that need the existing one (delete, eviction).
pub(crate) async fn stored(
    state: &AppState,
    info: &ResourceInfo,
    namespace: Option<&str>,
    name: &str,
) -> Result<Option<Value>, ApiError> {
    let (_, kv) = state.store.get(&info.key(namespace, name), 0).await?;
    kv.map(|kv| crate::rest::decode_stored(&kv)).transpose()
}

/// NodeRestriction for `serviceaccounts/<name>/token` requested by the kubelet of `node`: the
/// token must be bound to a pod on that node (by name and uid).
pub(crate) async fn admit_token_request(
    state: &AppState,
    node: &str,
    namespace: &str,
    name: &str,
    request: &Value,
) -> Result<(), ApiError> {
    let sa = REGISTRY
        .find("", "v1", "serviceaccounts")
        .ok_or_else(|| ApiError::internal("serviceaccounts are not registered"))?;
    let deny = |why: &str| Err(forbidden(sa, name, why.to_string()));
    let r = &request["spec"]["boundObjectRef"];
    if str_of(&r["apiVersion"]) != "v1"
        || str_of(&r["kind"]) != "Pod"
        || str_of(&r["name"]).is_empty()
    {
        return deny("node requested token not bound to a pod");
    }
    if str_of(&r["uid"]).is_empty() {
        return deny("node requested token with a pod binding without a uid");
    }
    let pods = REGISTRY
        .find("", "v1", "pods")
        .ok_or_else(|| ApiError::internal("pods are not registered"))?;
    let Some(pod) = stored(state, pods, Some(namespace), str_of(&r["name"])).await? else {
        return Err(ApiError::not_found(pods, str_of(&r["name"])));
    };
    if str_of(meta(&pod, "uid")) != str_of(&r["uid"]) {
        return deny(&format!(
            "the UID in the bound object reference ({}) does not match the UID in record. The object might have been deleted and then recreated",
            str_of(&r["uid"])
        ));
    }
    if str_of(&pod["spec"]["nodeName"]) != node {
        return deny("node requested token bound to a pod scheduled on a different node");
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn info(group: &str, plural: &str) -> &'static ResourceInfo {
        REGISTRY.find(group, "v1", plural).expect("registered")
    }

    #[test]
    fn node_labels() {
        let nodes = info("", "nodes");
        let n = |labels: Value| json!({ "metadata": { "name": "n1", "labels": labels } });
        let ok = n(json!({
            "kubernetes.io/hostname": "n1",
            "kubernetes.io/os": "linux",
            "node.kubernetes.io/exclude-from-external-load-balancers": "true",
            "example.com/team": "a",
        }));
        assert!(admit("n1", nodes, "", Operation::Create, "", None, Some(&ok)).is_ok());
        let bad =
            n(json!({ "node-restriction.kubernetes.io/x": "y", "kubernetes.io/role": "master" }));
        let err = admit("n1", nodes, "", Operation::Create, "", None, Some(&bad)).unwrap_err();
        assert_eq!(
            err.message,
            "nodes \"n1\" is forbidden: node \"n1\" is not allowed to set the following labels: kubernetes.io/role, node-restriction.kubernetes.io/x"
        );
        // Update: only changed labels count; an existing forbidden label may stay.
        let with = n(json!({ "a.node-restriction.kubernetes.io/x": "y", "team": "a" }));
        let changed = n(json!({ "a.node-restriction.kubernetes.io/x": "y", "team": "b" }));
        assert!(
            admit(
                "n1",
                nodes,
                "",
                Operation::Update,
                "",
                Some(&with),
                Some(&changed)
            )
            .is_ok()
        );
        let removed = n(json!({ "team": "a" }));
        let err = admit(
            "n1",
            nodes,
            "",
            Operation::Update,
            "",
            Some(&with),
            Some(&removed),
        )
        .unwrap_err();
        assert!(
            err.message
                .ends_with("is not allowed to modify labels: a.node-restriction.kubernetes.io/x"),
            "{}",
            err.message
        );
        // Another node, taints.
        let other = json!({ "metadata": { "name": "n2" } });
        let err = admit(
            "n1",
            nodes,
            "",
            Operation::Update,
            "",
            Some(&other),
            Some(&other),
        )
        .unwrap_err();
        assert_eq!(
            err.message,
            "nodes \"n2\" is forbidden: node \"n1\" is not allowed to modify node \"n2\""
        );
        let tainted = json!({ "metadata": { "name": "n1" }, "spec": { "taints": [{ "key": "k", "effect": "NoSchedule" }] } });
        let plain = json!({ "metadata": { "name": "n1" }, "spec": {} });
        assert!(
            admit(
                "n1",
                nodes,
                "",
                Operation::Update,
                "",
                Some(&tainted),
                Some(&plain)
            )
            .is_err()
        );
        assert!(
            admit(
                "n1",
                nodes,
                "status",
                Operation::Update,
                "",
                Some(&plain),
                Some(&plain)
            )
            .is_ok()
        );
    }

    #[test]
    fn pods_and_leases() {
        let pods = info("", "pods");
        let mirror = json!({
            "metadata": {
                "name": "static-n1",
                "annotations": { "kubernetes.io/config.mirror": "abc" },
                "ownerReferences": [{ "apiVersion": "v1", "kind": "Node", "name": "n1", "uid": "u", "controller": true }],
            },
            "spec": { "nodeName": "n1", "containers": [{ "name": "c", "image": "i" }] },
        });
        assert!(
            admit(
                "n1",
                pods,
                "",
                Operation::Create,
                "default",
                None,
                Some(&mirror)
            )
            .is_ok()
        );
        let mut plain = mirror.clone();
        plain["metadata"]["annotations"] = json!({});
        let err = admit(
            "n1",
            pods,
            "",
            Operation::Create,
            "default",
            None,
            Some(&plain),
        )
        .unwrap_err();
        assert!(
            err.message.contains("can only create mirror pods"),
            "{}",
            err.message
        );
        let mut elsewhere = mirror.clone();
        elsewhere["spec"]["nodeName"] = json!("n2");
        assert!(
            admit(
                "n1",
                pods,
                "",
                Operation::Create,
                "default",
                None,
                Some(&elsewhere)
            )
            .is_err()
        );
        let mut secret = mirror.clone();
        secret["spec"]["volumes"] = json!([{ "name": "s", "secret": { "secretName": "x" } }]);
        let err = admit(
            "n1",
            pods,
            "",
            Operation::Create,
            "default",
            None,
            Some(&secret),
        )
        .unwrap_err();
        assert!(
            err.message
                .ends_with("can not create pods that reference secrets"),
            "{}",
            err.message
        );
        // Delete and status only on its own node; no updates of the pod itself.
        let theirs = json!({ "metadata": { "name": "p" }, "spec": { "nodeName": "n2" } });
        assert!(
            admit(
                "n1",
                pods,
                "",
                Operation::Delete,
                "default",
                Some(&mirror),
                None
            )
            .is_ok()
        );
        assert!(
            admit(
                "n1",
                pods,
                "",
                Operation::Delete,
                "default",
                Some(&theirs),
                None
            )
            .is_err()
        );
        assert!(
            admit(
                "n1",
                pods,
                "status",
                Operation::Update,
                "default",
                Some(&theirs),
                Some(&theirs)
            )
            .is_err()
        );
        assert!(
            admit(
                "n1",
                pods,
                "status",
                Operation::Update,
                "default",
                Some(&mirror),
                Some(&mirror)
            )
            .is_ok()
        );
        assert!(
            admit(
                "n1",
                pods,
                "",
                Operation::Update,
                "default",
                Some(&mirror),
                Some(&mirror)
            )
            .is_err()
        );
        assert!(
            admit(
                "n1",
                pods,
                "eviction",
                Operation::Create,
                "default",
                Some(&theirs),
                None
            )
            .is_err()
        );

        let leases = info("coordination.k8s.io", "leases");
        let lease = |name: &str| json!({ "metadata": { "name": name } });
        assert!(
            admit(
                "n1",
                leases,
                "",
                Operation::Create,
                "kube-node-lease",
                None,
                Some(&lease("n1"))
            )
            .is_ok()
        );
        assert!(
            admit(
                "n1",
                leases,
                "",
                Operation::Create,
                "kube-node-lease",
                None,
                Some(&lease("n2"))
            )
            .is_err()
        );
        let err = admit(
            "n1",
            leases,
            "",
            Operation::Update,
            "default",
            Some(&lease("n1")),
            Some(&lease("n1")),
        )
        .unwrap_err();
        assert_eq!(
            err.message,
            "leases.coordination.k8s.io \"n1\" is forbidden: can only access leases in the \"kube-node-lease\" system namespace"
        );
    }
}
