//! The namespace controller with the apiserver's namespace deletion: everything inside goes,
//! custom resources included, then the namespace.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use common::{TestCluster, eventually};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

fn widgets() -> ApiResource {
    ApiResource {
        group: "example.com".into(),
        version: "v1".into(),
        api_version: "example.com/v1".into(),
        kind: "Widget".into(),
        plural: "widgets".into(),
    }
}

async fn install_widgets(t: &TestCluster) {
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object",
                    "x-kubernetes-preserve-unknown-fields": true}}}]
        }
    }))
    .unwrap();
    Api::<CustomResourceDefinition>::all(t.client.clone())
        .create(&PostParams::default(), &crd)
        .await
        .unwrap();
    let api: Api<DynamicObject> = Api::namespaced_with(t.client.clone(), "default", &widgets());
    eventually(30, "widgets served", || async {
        api.list(&ListParams::default()).await.ok().map(|_| ())
    })
    .await;
}

async fn create<K>(api: &Api<K>, obj: serde_json::Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(obj).unwrap();
    api.create(&PostParams::default(), &obj).await.unwrap();
}

fn condition(ns: &Namespace, type_: &str) -> Option<(String, String, String)> {
    let c = ns
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)?;
    Some((
        c.status.clone(),
        c.reason.clone().unwrap_or_default(),
        c.message.clone().unwrap_or_default(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_namespace_removes_everything_then_the_namespace() {
    let t = TestCluster::start().await;
    install_widgets(&t).await;
    let c = t.client.clone();
    let namespaces: Api<Namespace> = Api::all(c.clone());
    create(&namespaces, json!({"metadata": {"name": "doomed"}})).await;
    let ns = namespaces.get("doomed").await.unwrap();
    assert_eq!(ns.spec.unwrap().finalizers.unwrap(), ["kubernetes"]);

    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "doomed");
    let secrets: Api<Secret> = Api::namespaced(c.clone(), "doomed");
    let services: Api<Service> = Api::namespaced(c.clone(), "doomed");
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), "doomed");
    let pods: Api<Pod> = Api::namespaced(c.clone(), "doomed");
    let ws: Api<DynamicObject> = Api::namespaced_with(c.clone(), "doomed", &widgets());
    create(
        &cms,
        json!({"metadata": {"name": "cm"}, "data": {"a": "b"}}),
    )
    .await;
    create(
        &secrets,
        json!({"metadata": {"name": "s"}, "stringData": {"a": "b"}}),
    )
    .await;
    create(
        &services,
        json!({"metadata": {"name": "svc"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}),
    )
    .await;
    create(
        &deployments,
        json!({"metadata": {"name": "web"}, "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}),
    )
    .await;
    create(
        &ws,
        json!({"apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "free"}, "spec": {"size": 1}}),
    )
    .await;
    // This one is held by a finalizer of the test's: the namespace must wait for it.
    create(
        &ws,
        json!({"apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "held", "finalizers": ["example.com/hold"]}, "spec": {"size": 2}}),
    )
    .await;
    eventually(30, "deployment pods", || async {
        (pods.list(&ListParams::default()).await.ok()?.items.len() == 2).then_some(())
    })
    .await;

    t.kubectl_ok(&["delete", "ns", "doomed", "--wait=false"])
        .await;
    let ns = namespaces.get("doomed").await.unwrap();
    assert_eq!(
        ns.status.as_ref().unwrap().phase.as_deref(),
        Some("Terminating")
    );

    // Everything but the held widget goes; the conditions say what holds the namespace.
    let ns = eventually(60, "content removed but the held widget", || async {
        let ns = namespaces.get("doomed").await.ok()?;
        let remaining = condition(&ns, "NamespaceContentRemaining")?;
        (remaining.0 == "True").then_some(ns)
    })
    .await;
    assert_eq!(
        condition(&ns, "NamespaceContentRemaining").unwrap(),
        (
            "True".into(),
            "SomeResourcesRemain".into(),
            "Some resources are remaining: widgets.example.com has 1 resource instances".into()
        )
    );
    assert_eq!(
        condition(&ns, "NamespaceFinalizersRemaining").unwrap(),
        (
            "True".into(),
            "SomeFinalizersRemain".into(),
            "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances".into()
        )
    );
    assert_eq!(
        condition(&ns, "NamespaceDeletionDiscoveryFailure").unwrap(),
        (
            "False".into(),
            "ResourcesDiscovered".into(),
            "All resources successfully discovered".into()
        )
    );
    assert_eq!(
        condition(&ns, "NamespaceDeletionContentFailure").unwrap().0,
        "False"
    );
    assert_eq!(
        condition(&ns, "NamespaceDeletionGroupVersionParsingFailure")
            .unwrap()
            .1,
        "ParsedGroupVersions"
    );
    assert_eq!(ns.spec.unwrap().finalizers.unwrap(), ["kubernetes"]);
    assert_eq!(
        cms.list(&ListParams::default()).await.unwrap().items.len(),
        0
    );
    assert_eq!(
        secrets
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        0
    );
    assert_eq!(
        services
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        0
    );
    assert_eq!(
        deployments
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        0
    );
    let left = ws.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].metadata.name.as_deref(), Some("held"));
    assert!(left[0].metadata.deletion_timestamp.is_some());
    // Pods are deleted with their grace period: gone, or terminating.
    for p in pods.list(&ListParams::default()).await.unwrap().items {
        assert!(
            p.metadata.deletion_timestamp.is_some(),
            "{:?}",
            p.metadata.name
        );
    }

    // Release the widget: then the namespace goes.
    ws.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    // Pods on no node were deleted at once; a finalized namespace disappears.
    eventually(60, "namespace gone", || async {
        namespaces
            .get_opt("doomed")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_delete_namespace_waits_until_it_is_gone() {
    let t = TestCluster::start().await;
    let namespaces: Api<Namespace> = Api::all(t.client.clone());
    create(&namespaces, json!({"metadata": {"name": "quick"}})).await;
    let cms: Api<ConfigMap> = Api::namespaced(t.client.clone(), "quick");
    create(&cms, json!({"metadata": {"name": "cm"}})).await;
    let out = t
        .kubectl_ok(&["delete", "ns", "quick", "--timeout=60s"])
        .await;
    assert_eq!(out.trim(), r#"namespace "quick" deleted"#);
    // kubectl returned, so the namespace is gone, not just terminating.
    assert!(namespaces.get_opt("quick").await.unwrap().is_none());
    let gone = t.kubectl(&["get", "ns", "quick"]).await;
    assert!(!gone.status.success());
    // The name can be used again, with nothing left over inside.
    create(&namespaces, json!({"metadata": {"name": "quick"}})).await;
    assert!(
        cms.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}
