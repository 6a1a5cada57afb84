//! The node-password controller (K3s' `pkg/nodepassword` controller): a joining agent's
//! password hash is kept in `kube-system/<node>.node-password.k3s` (written by the apiserver's
//! join endpoints before the Node exists); once the Node exists this controller gives the
//! Secret an owner reference to it, so that the garbage collector deletes the Secret when the
//! Node is deleted and the name can join again with another password.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use serde_json::json;
use tokio::sync::watch;

use crate::ReconcileError;
use crate::util::{self, Shared};

const NAMESPACE: &str = "kube-system";

pub(crate) async fn run(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let controller = Controller::new(
        Api::<Node>::all(shared.client.clone()),
        watcher::Config::default(),
    );
    util::run_controller(
        "nodepassword",
        shared,
        controller,
        stop,
        |node, shared| async move { sync(&node, &shared).await },
    )
    .await;
}

/// The owner reference a node's password Secret should carry.
fn owner(node: &Node) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: node.metadata.name.clone()?,
        uid: node.metadata.uid.clone()?,
        ..OwnerReference::default()
    })
}

#[tracing::instrument(skip_all, fields(node = %util::key_of(&node.metadata)))]
async fn sync(node: &Node, shared: &Shared) -> Result<Action, ReconcileError> {
    if node.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let Some(owner) = owner(node) else {
        return Ok(Action::await_change());
    };
    let secrets: Api<Secret> = Api::namespaced(shared.client.clone(), NAMESPACE);
    let name = format!("{}.node-password.k3s", owner.name);
    let Some(secret) = secrets.get_opt(&name).await? else {
        return Ok(Action::await_change());
    };
    let mut refs = secret.metadata.owner_references.clone().unwrap_or_default();
    if refs.iter().any(|r| r.uid == owner.uid) {
        return Ok(Action::await_change());
    }
    refs.push(owner);
    // Guarded by the resourceVersion read: a concurrent change is retried, not overwritten.
    let patch = json!({
        "metadata": {
            "resourceVersion": secret.metadata.resource_version,
            "ownerReferences": refs,
        }
    });
    match secrets
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            tracing::info!(secret = %name, "added the node's owner reference to its password secret");
            Ok(Action::await_change())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn owner_reference_names_the_node() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1", "uid": "u-1"}
        }))
        .unwrap();
        let r = owner(&node).unwrap();
        assert_eq!(
            (r.kind.as_str(), r.name.as_str(), r.uid.as_str()),
            ("Node", "n1", "u-1")
        );
        let unnamed: Node = serde_json::from_value(json!({"metadata": {}})).unwrap();
        assert!(owner(&unnamed).is_none());
    }
}
