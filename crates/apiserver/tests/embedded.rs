//! `EmbeddedApiserver`: the in-process API for kube-rs controller tests serves a kube-rs client
//! (CRUD, watch, discovery), enforces RBAC for other users, survives a restart, keeps its state
//! in a given directory and cleans up its temporary one.

use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use rk3s_apiserver::{EmbeddedApiserver, EmbeddedError};

fn configmap(name: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "data": {"k": "v"},
    }))
    .expect("configmap")
}

#[tokio::test]
async fn serves_a_kube_client() {
    let apiserver = EmbeddedApiserver::start()
        .await
        .expect("embedded apiserver");
    assert!(apiserver.url().starts_with("https://127.0.0.1:"));
    assert_ne!(apiserver.local_addr().port(), 0);
    let client = apiserver.client().await.expect("client");

    // Discovery and the bootstrap namespaces.
    let version = client.apiserver_version().await.expect("/version");
    assert_eq!(version.major, "1");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let names: Vec<String> = namespaces
        .list(&ListParams::default())
        .await
        .expect("list namespaces")
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(names.iter().any(|n| n == ns), "{ns} in {names:?}");
    }

    // A watch sees a create made through the same client.
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let list = configmaps
        .list(&ListParams::default())
        .await
        .expect("list configmaps");
    let rv = list
        .metadata
        .resource_version
        .expect("list resourceVersion");
    let mut watch = configmaps
        .watch(&WatchParams::default().timeout(30), &rv)
        .await
        .expect("watch")
        .boxed();
    let created = configmaps
        .create(&PostParams::default(), &configmap("first"))
        .await
        .expect("create");
    assert!(created.metadata.uid.is_some());
    let event = tokio::time::timeout(Duration::from_secs(20), watch.try_next())
        .await
        .expect("a watch event in time")
        .expect("watch stream")
        .expect("an event");
    match event {
        WatchEvent::Added(cm) => assert_eq!(cm.metadata.name.as_deref(), Some("first")),
        other => panic!("expected ADDED, got {other:?}"),
    }

    // kubectl can use the written kubeconfig.
    let kubeconfig = std::fs::read_to_string(apiserver.kubeconfig_path()).expect("kubeconfig");
    assert!(kubeconfig.contains(&apiserver.url()));
    let dir = apiserver.data_dir().to_path_buf();
    assert!(dir.join("state.db").is_file());
    drop(watch);
    apiserver.shutdown().await;
    assert!(!dir.exists(), "the temporary directory is removed");
}

#[tokio::test]
async fn other_users_go_through_rbac() {
    let apiserver = EmbeddedApiserver::start()
        .await
        .expect("embedded apiserver");
    let alice = apiserver
        .client_as("alice", &["developers"])
        .await
        .expect("client as alice");
    let err = Api::<ConfigMap>::namespaced(alice, "default")
        .list(&ListParams::default())
        .await
        .expect_err("alice has no role");
    match err {
        kube::Error::Api(status) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("expected 403, got {other}"),
    }
}

#[tokio::test]
async fn restart_keeps_objects_and_address() {
    let mut apiserver = EmbeddedApiserver::start()
        .await
        .expect("embedded apiserver");
    let addr = apiserver.local_addr();
    let client = apiserver.client().await.expect("client");
    Api::<ConfigMap>::namespaced(client, "default")
        .create(&PostParams::default(), &configmap("kept"))
        .await
        .expect("create");
    apiserver.stop().await;
    assert!(matches!(
        apiserver.client().await,
        Err(EmbeddedError::NotServing)
    ));
    apiserver
        .restart(Duration::from_millis(0))
        .await
        .expect("restart");
    assert_eq!(apiserver.local_addr(), addr);
    let client = apiserver.client().await.expect("client after restart");
    let cm = Api::<ConfigMap>::namespaced(client, "default")
        .get("kept")
        .await
        .expect("object kept");
    assert_eq!(
        cm.data.and_then(|d| d.get("k").cloned()).as_deref(),
        Some("v")
    );
}

#[tokio::test]
async fn a_data_dir_outlives_the_apiserver() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = EmbeddedApiserver::builder()
        .data_dir(dir.path())
        .persistent_pki(true)
        .start()
        .await
        .expect("first apiserver");
    let client = first.client().await.expect("client");
    Api::<ConfigMap>::namespaced(client, "default")
        .create(&PostParams::default(), &configmap("durable"))
        .await
        .expect("create");
    let ca = first.ca_pem().to_string();
    first.shutdown().await;
    assert!(
        dir.path().join("state.db").is_file(),
        "the directory is left"
    );

    let second = EmbeddedApiserver::builder()
        .data_dir(dir.path())
        .persistent_pki(true)
        .start()
        .await
        .expect("second apiserver");
    assert_eq!(second.ca_pem(), ca, "the same CA from tls/");
    let client = second.client().await.expect("client");
    Api::<ConfigMap>::namespaced(client, "default")
        .get("durable")
        .await
        .expect("object from the first apiserver");
}
