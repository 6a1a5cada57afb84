//! Leader election and surviving an apiserver restart.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::time::Duration;

use common::{TestCluster, eventually};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

fn rs(name: &str, replicas: i32) -> ReplicaSet {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}
    }))
    .unwrap()
}

async fn ready_replicas(rss: &Api<ReplicaSet>, name: &str, n: i32, secs: u64) {
    eventually(secs, "ready replicas", || async {
        let s = rss.get(name).await.ok()?.status?;
        (s.ready_replicas == Some(n)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controllers_survive_an_apiserver_restart() {
    let mut t = TestCluster::start().await;
    let rss: Api<ReplicaSet> = Api::namespaced(t.client.clone(), "default");
    rss.create(&PostParams::default(), &rs("web", 2))
        .await
        .unwrap();
    ready_replicas(&rss, "web", 2, 20).await;

    t.restart_apiserver(Duration::from_secs(3)).await;
    // The watches reconnect (with backoff) and the controllers carry on.
    rss.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 3}})),
    )
    .await
    .unwrap();
    ready_replicas(&rss, "web", 3, 60).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_runs_controllers() {
    let mut t = TestCluster::start_with(rk3s_controller::Config {
        identity: Some("first".into()),
        ..rk3s_controller::Config::default()
    })
    .await;
    let leases: Api<Lease> = Api::namespaced(t.client.clone(), "kube-system");
    let holder = |leases: Api<Lease>| async move {
        leases
            .get_opt("kube-controller-manager")
            .await
            .ok()??
            .spec?
            .holder_identity
    };
    eventually(20, "first holds the lease", || async {
        (holder(leases.clone()).await.as_deref() == Some("first")).then_some(())
    })
    .await;
    let (stop_second, second) = t
        .spawn_controller_manager(rk3s_controller::Config {
            identity: Some("second".into()),
            ..rk3s_controller::Config::default()
        })
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(holder(leases.clone()).await.as_deref(), Some("first"));

    // The first stops and hands the lease back; the second takes over and does the work.
    t.stop_controllers().await;
    eventually(20, "second holds the lease", || async {
        (holder(leases.clone()).await.as_deref() == Some("second")).then_some(())
    })
    .await;
    let lease = leases.get("kube-controller-manager").await.unwrap();
    assert_eq!(lease.spec.unwrap().lease_transitions, Some(1));
    let rss: Api<ReplicaSet> = Api::namespaced(t.client.clone(), "default");
    rss.create(&PostParams::default(), &rs("after", 1))
        .await
        .unwrap();
    ready_replicas(&rss, "after", 1, 20).await;
    let _ = stop_second.send(());
    second.await.unwrap();
}
