//! The garbage collector and the apiserver's propagationPolicy handling, end to end.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use common::{TestCluster, eventually};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}
            }
        }
    }))
    .unwrap()
}

async fn count<K>(api: &Api<K>) -> usize
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.list(&ListParams::default()).await.unwrap().items.len()
}

async fn running(t: &TestCluster, name: &str, replicas: i32) {
    let deps: Api<Deployment> = Api::namespaced(t.client.clone(), "default");
    eventually(30, "deployment available", || async {
        let s = deps.get(name).await.ok()?.status?;
        (s.available_replicas == Some(replicas)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_deletion_removes_dependents() {
    let t = TestCluster::start().await;
    let deps: Api<Deployment> = Api::namespaced(t.client.clone(), "default");
    let rss: Api<ReplicaSet> = Api::namespaced(t.client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(t.client.clone(), "default");
    deps.create(&PostParams::default(), &deployment("bg", 3))
        .await
        .unwrap();
    running(&t, "bg", 3).await;
    // kubectl's default cascade is background: the Deployment goes at once, then the GC
    // deletes its ReplicaSet, and then the ReplicaSet's pods.
    t.kubectl_ok(&["delete", "deployment", "bg"]).await;
    assert!(deps.get_opt("bg").await.unwrap().is_none());
    eventually(30, "replica sets and pods collected", || async {
        (count(&rss).await == 0 && count(&pods).await == 0).then_some(())
    })
    .await;

    // A dependent whose owner is already gone when it is created is collected too.
    let orphan: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "dangling", "ownerReferences": [{
            "apiVersion": "v1", "kind": "ConfigMap", "name": "nobody",
            "uid": "00000000-0000-0000-0000-000000000001"}]}
    }))
    .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(t.client.clone(), "default");
    cms.create(&PostParams::default(), &orphan).await.unwrap();
    eventually(30, "dangling config map collected", || async {
        cms.get_opt("dangling").await.ok()?.is_none().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreground_deletion_waits_for_dependents() {
    let t = TestCluster::start().await;
    let deps: Api<Deployment> = Api::namespaced(t.client.clone(), "default");
    let rss: Api<ReplicaSet> = Api::namespaced(t.client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(t.client.clone(), "default");
    let mut d = deployment("fg", 2);
    d.spec
        .as_mut()
        .unwrap()
        .template
        .metadata
        .as_mut()
        .unwrap()
        .finalizers = Some(vec!["example.com/hold".into()]);
    deps.create(&PostParams::default(), &d).await.unwrap();
    running(&t, "fg", 2).await;

    // The pods carry a finalizer of the test's, so they linger while being deleted: the
    // Deployment (and its ReplicaSet, deleted in the foreground too) must wait for them.
    t.kubectl_ok(&[
        "delete",
        "deployment",
        "fg",
        "--cascade=foreground",
        "--wait=false",
    ])
    .await;
    eventually(30, "pods marked for deletion", || async {
        let items = pods.list(&ListParams::default()).await.ok()?.items;
        (items.len() == 2
            && items
                .iter()
                .all(|p| p.metadata.deletion_timestamp.is_some()))
        .then_some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let d = deps.get("fg").await.unwrap();
    assert!(d.metadata.deletion_timestamp.is_some());
    assert_eq!(d.metadata.finalizers.unwrap(), ["foregroundDeletion"]);
    let rs = &rss.list(&ListParams::default()).await.unwrap().items[0];
    assert!(rs.metadata.deletion_timestamp.is_some());
    assert_eq!(
        rs.metadata.finalizers.clone().unwrap(),
        ["foregroundDeletion"]
    );

    // Release the pods: then the ReplicaSet, then the Deployment go.
    for p in pods.list(&ListParams::default()).await.unwrap().items {
        pods.patch(
            p.metadata.name.as_deref().unwrap(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    }
    eventually(30, "everything gone", || async {
        (deps.get_opt("fg").await.ok()?.is_none()
            && count(&rss).await == 0
            && count(&pods).await == 0)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_deletion_keeps_dependents_without_owner_refs() {
    let t = TestCluster::start().await;
    let deps: Api<Deployment> = Api::namespaced(t.client.clone(), "default");
    let rss: Api<ReplicaSet> = Api::namespaced(t.client.clone(), "default");
    deps.create(&PostParams::default(), &deployment("or", 1))
        .await
        .unwrap();
    running(&t, "or", 1).await;
    deps.delete("or", &DeleteParams::orphan()).await.unwrap();
    eventually(30, "deployment gone", || async {
        deps.get_opt("or").await.ok()?.is_none().then_some(())
    })
    .await;
    let left = rss.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(left.len(), 1);
    assert!(
        left[0]
            .metadata
            .owner_references
            .as_ref()
            .is_none_or(|r| r.is_empty()),
        "{:?}",
        left[0].metadata.owner_references
    );
    // And the orphaned ReplicaSet keeps its pod.
    let pods: Api<Pod> = Api::namespaced(t.client.clone(), "default");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(count(&pods).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_propagation_policy_is_refused() {
    let t = TestCluster::start().await;
    let cms: Api<ConfigMap> = Api::namespaced(t.client.clone(), "default");
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let out = t
        .kubectl(&[
            "delete",
            "--raw",
            "/api/v1/namespaces/default/configmaps/x?propagationPolicy=Sideways",
        ])
        .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Unsupported value: \"Sideways\""), "{err}");
    assert!(cms.get_opt("x").await.unwrap().is_some());
}
