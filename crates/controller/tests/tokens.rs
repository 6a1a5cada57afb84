//! The token cleaner (expired bootstrap tokens) and the node-password controller (a node's
//! password Secret owned by its Node, so collected with it), end to end.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use common::{TestCluster, eventually};
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

fn bootstrap_token(id: &str, expiration: Option<&str>, ty: &str) -> Secret {
    let mut data = json!({
        "token-id": id,
        "token-secret": "0123456789abcdef",
        "usage-bootstrap-authentication": "true",
    });
    if let Some(e) = expiration {
        data["expiration"] = e.into();
    }
    serde_json::from_value(json!({
        "metadata": {"name": format!("bootstrap-token-{id}"), "namespace": "kube-system"},
        "type": ty,
        "stringData": data,
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_bootstrap_tokens_are_deleted_and_node_passwords_go_with_their_node() {
    let t = TestCluster::start().await;
    let secrets: Api<Secret> = Api::namespaced(t.client.clone(), "kube-system");
    let pp = PostParams::default();
    for s in [
        bootstrap_token(
            "valid1",
            Some("2099-01-01T00:00:00Z"),
            "bootstrap.kubernetes.io/token",
        ),
        bootstrap_token("forevr", None, "bootstrap.kubernetes.io/token"),
        bootstrap_token("opaque", Some("2020-01-01T00:00:00Z"), "Opaque"),
        bootstrap_token(
            "expird",
            Some("2020-01-01T00:00:00Z"),
            "bootstrap.kubernetes.io/token",
        ),
    ] {
        secrets.create(&pp, &s).await.unwrap();
    }
    eventually(30, "the expired token deleted", || async {
        secrets
            .get_opt("bootstrap-token-expird")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    for kept in ["valid1", "forevr", "opaque"] {
        assert!(
            secrets
                .get_opt(&format!("bootstrap-token-{kept}"))
                .await
                .unwrap()
                .is_some(),
            "{kept} must stay"
        );
    }

    // A node's password Secret (as the join endpoints write it) becomes the Node's, and is
    // deleted with it; one whose Node does not exist is left alone.
    for node in ["n9", "ghost"] {
        let s: Secret = serde_json::from_value(json!({
            "metadata": {"name": format!("{node}.node-password.k3s"), "namespace": "kube-system"},
            "immutable": true,
            "stringData": {"hash": "$1:00:15:8:1:x"},
        }))
        .unwrap();
        secrets.create(&pp, &s).await.unwrap();
    }
    let nodes: Api<Node> = Api::all(t.client.clone());
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "n9"}})).unwrap();
    let node = nodes.create(&pp, &node).await.unwrap();
    eventually(30, "the owner reference", || async {
        let s = secrets.get("n9.node-password.k3s").await.ok()?;
        let refs = s.metadata.owner_references?;
        (refs.len() == 1
            && refs[0].kind == "Node"
            && refs[0].name == "n9"
            && Some(&refs[0].uid) == node.metadata.uid.as_ref())
        .then_some(())
    })
    .await;
    nodes.delete("n9", &DeleteParams::default()).await.unwrap();
    eventually(30, "the password secret collected", || async {
        secrets
            .get_opt("n9.node-password.k3s")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let ghost = secrets.get("ghost.node-password.k3s").await.unwrap();
    assert!(ghost.metadata.owner_references.is_none());
}
