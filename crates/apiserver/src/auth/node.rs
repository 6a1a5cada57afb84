//! The node authorizer (basics): a kubelet — `system:node:<name>` in `system:nodes` — may read
//! only the secrets, configmaps, persistent volume claims (and their volumes) and service
//! account tokens that pods bound to its node use, and write only its own Node, its own Lease,
//! and the status of pods on its node. Everything else it may do is the `system:node`
//! ClusterRole's rules. As upstream, this runs before RBAC and only ever allows; a request it
//! does not allow still goes to RBAC.
//!
//! Upstream keeps a graph of pods → objects; here the pods of the namespace are read from the
//! store on each such request (a kubelet's reads of secrets and configmaps are rare).

use serde_json::Value;

use super::{Attributes, UserInfo};
use crate::pki::SYSTEM_NODES;
use crate::registry::REGISTRY;
use crate::server::AppState;

/// The node a kubelet user stands for.
pub(crate) fn node_of(user: &UserInfo) -> Option<&str> {
    if !user.groups.iter().any(|g| g == SYSTEM_NODES) {
        return None;
    }
    user.name
        .strip_prefix("system:node:")
        .filter(|n| !n.is_empty())
}

/// Whether the node authorizer allows `a` for `node`.
pub(crate) async fn allows(state: &AppState, node: &str, a: &Attributes) -> bool {
    let rules_allow = || state.auth.rbac.cluster_role_allows("system:node", a);
    if !a.resource_request {
        return rules_allow();
    }
    let ns = a.namespace.as_str();
    match (
        a.api_group.as_str(),
        a.resource.as_str(),
        a.subresource.as_str(),
    ) {
        ("", kind @ ("secrets" | "configmaps" | "persistentvolumeclaims"), "") => {
            a.verb == "get"
                && !a.name.is_empty()
                && pods_on_node(state, ns, node)
                    .await
                    .iter()
                    .any(|p| references(p, kind).contains(&a.name))
        }
        ("", "persistentvolumes", "") => {
            if a.verb != "get" || a.name.is_empty() {
                return false;
            }
            // A volume bound to a claim a pod on the node uses.
            let claims: Vec<(String, String)> = pods_on_node(state, "", node)
                .await
                .iter()
                .flat_map(|p| {
                    let ns = p["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or("")
                        .to_string();
                    references(p, "persistentvolumeclaims")
                        .into_iter()
                        .map(move |c| (ns.clone(), c))
                })
                .collect();
            for (ns, claim) in claims {
                if let Some(pvc) = read(state, "persistentvolumeclaims", &ns, &claim).await
                    && pvc["spec"]["volumeName"].as_str() == Some(a.name.as_str())
                {
                    return true;
                }
            }
            false
        }
        ("", "serviceaccounts", "token") => {
            a.verb == "create"
                && pods_on_node(state, ns, node).await.iter().any(|p| {
                    p["spec"]["serviceAccountName"]
                        .as_str()
                        .unwrap_or("default")
                        == a.name
                })
        }
        ("", "nodes", _) => {
            let own = a.name == node;
            rules_allow() && (own || matches!(a.verb.as_str(), "get" | "list" | "watch" | "create"))
        }
        ("coordination.k8s.io", "leases", "") => {
            ns == "kube-node-lease" && (a.verb == "create" || a.name == node) && rules_allow()
        }
        ("", "pods", "status") => {
            rules_allow()
                && read(state, "pods", ns, &a.name)
                    .await
                    .is_some_and(|p| p["spec"]["nodeName"].as_str() == Some(node))
        }
        _ => rules_allow(),
    }
}

async fn read(state: &AppState, plural: &str, ns: &str, name: &str) -> Option<Value> {
    let info = REGISTRY.find("", "v1", plural)?;
    let (_, kv) = state.store.get(&info.key(Some(ns), name), 0).await.ok()?;
    crate::rest::decode_stored(&kv?).ok()
}

/// The pods bound to `node` in `ns` (every namespace when empty).
async fn pods_on_node(state: &AppState, ns: &str, node: &str) -> Vec<Value> {
    let Some(info) = REGISTRY.find("", "v1", "pods") else {
        return Vec::new();
    };
    let prefix = info.prefix((!ns.is_empty()).then_some(ns));
    let Ok(list) = state
        .store
        .list(&prefix, rk3s_datastore::ListOptions::default())
        .await
    else {
        return Vec::new();
    };
    list.kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
        .filter(|p| p["spec"]["nodeName"].as_str() == Some(node))
        .collect()
}

/// The names of the objects of `kind` (`secrets`, `configmaps`, `persistentvolumeclaims`) a pod
/// uses: volumes (also projected and ephemeral), env and envFrom, image pull secrets.
pub(crate) fn references(pod: &Value, kind: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut push = |v: &Value| {
        if let Some(n) = v.as_str().filter(|n| !n.is_empty()) {
            out.push(n.to_string());
        }
    };
    let spec = &pod["spec"];
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    for vol in list(&spec["volumes"]) {
        match kind {
            "secrets" => push(&vol["secret"]["secretName"]),
            "configmaps" => push(&vol["configMap"]["name"]),
            _ => {
                push(&vol["persistentVolumeClaim"]["claimName"]);
                if vol["ephemeral"].is_object() {
                    let pod_name = pod["metadata"]["name"].as_str().unwrap_or("");
                    let vol_name = vol["name"].as_str().unwrap_or("");
                    push(&Value::String(format!("{pod_name}-{vol_name}")));
                }
            }
        }
        for source in list(&vol["projected"]["sources"]) {
            match kind {
                "secrets" => push(&source["secret"]["name"]),
                "configmaps" => push(&source["configMap"]["name"]),
                _ => {}
            }
        }
    }
    if kind == "secrets" {
        for s in list(&spec["imagePullSecrets"]) {
            push(&s["name"]);
        }
    }
    for field in ["containers", "initContainers", "ephemeralContainers"] {
        for c in list(&spec[field]) {
            for env in list(&c["env"]) {
                match kind {
                    "secrets" => push(&env["valueFrom"]["secretKeyRef"]["name"]),
                    "configmaps" => push(&env["valueFrom"]["configMapKeyRef"]["name"]),
                    _ => {}
                }
            }
            for from in list(&c["envFrom"]) {
                match kind {
                    "secrets" => push(&from["secretRef"]["name"]),
                    "configmaps" => push(&from["configMapRef"]["name"]),
                    _ => {}
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_references() {
        let pod = serde_json::json!({
            "metadata": { "name": "p" },
            "spec": {
                "volumes": [
                    { "name": "a", "secret": { "secretName": "s1" } },
                    { "name": "b", "configMap": { "name": "c1" } },
                    { "name": "c", "projected": { "sources": [{ "secret": { "name": "s2" } }] } },
                    { "name": "d", "persistentVolumeClaim": { "claimName": "claim" } },
                    { "name": "e", "ephemeral": {} },
                ],
                "imagePullSecrets": [{ "name": "pull" }],
                "containers": [{
                    "name": "x",
                    "env": [{ "name": "A", "valueFrom": { "secretKeyRef": { "name": "s3", "key": "k" } } }],
                    "envFrom": [{ "configMapRef": { "name": "c2" } }],
                }],
            },
        });
        assert_eq!(references(&pod, "secrets"), ["s1", "s2", "pull", "s3"]);
        assert_eq!(references(&pod, "configmaps"), ["c1", "c2"]);
        assert_eq!(references(&pod, "persistentvolumeclaims"), ["claim", "p-e"]);
        let kubelet = UserInfo::new("system:node:n1", vec!["system:nodes".into()]);
        assert_eq!(node_of(&kubelet), Some("n1"));
        assert_eq!(node_of(&UserInfo::new("system:node:n1", vec![])), None);
    }
}
