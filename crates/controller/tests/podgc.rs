//! The pod garbage collector against a real in-process apiserver (the kubelet stand-in is
//! off: the tests set the pods' phases themselves).

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{TestCluster, eventually};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

async fn start(threshold: u32) -> TestCluster {
    let t = TestCluster::start_with(rk3s_controller::Config {
        controllers: vec!["pod-garbage-collector".into()],
        loops: rk3s_controller::LoopConfig {
            terminated_pod_gc_threshold: threshold,
            pod_gc_period: 1,
            pod_gc_quarantine: 2,
            ..rk3s_controller::LoopConfig::default()
        },
        ..rk3s_controller::Config::default()
    })
    .await;
    t.kubelet_ready.store(false, Ordering::SeqCst);
    t
}

async fn node(client: &kube::Client, name: &str) {
    Api::<Node>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]}}))
            .unwrap(),
        )
        .await
        .unwrap();
}

async fn pod(client: &kube::Client, name: &str, node: Option<&str>, phase: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": phase}})),
    )
    .await
    .unwrap();
}

async fn names(pods: &Api<Pod>) -> Vec<String> {
    let mut v: Vec<String> = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_pods_beyond_the_threshold_go_oldest_first() {
    let t = start(2).await;
    let pods: Api<Pod> = Api::namespaced(t.client.clone(), "default");
    node(&t.client, "n1").await;
    // Creation timestamps have a resolution of a second: space the pods out.
    for (i, phase) in ["Succeeded", "Failed", "Succeeded", "Failed"]
        .iter()
        .enumerate()
    {
        pod(&t.client, &format!("done-{i}"), Some("n1"), phase).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    pod(&t.client, "running", Some("n1"), "Running").await;
    eventually(30, "two oldest terminated pods collected", || async {
        (names(&pods).await == ["done-2", "done-3", "running"]).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphaned_and_unscheduled_terminating_pods() {
    // Threshold 0: the terminated-pod part is off, the terminated pod below stays.
    let t = start(0).await;
    let pods: Api<Pod> = Api::namespaced(t.client.clone(), "default");
    node(&t.client, "n1").await;
    pod(&t.client, "kept", Some("n1"), "Running").await;
    pod(&t.client, "finished", Some("n1"), "Succeeded").await;
    // Watch the orphan on its way out: Failed with DisruptionTarget before it is deleted.
    let seen = tokio::spawn({
        let pods = pods.clone();
        async move {
            let mut w = watcher(
                pods,
                watcher::Config::default().fields("metadata.name=orphan"),
            )
            .boxed();
            while let Some(ev) = w.next().await {
                if let Ok(watcher::Event::Apply(p)) = ev {
                    let s = p.status.clone().unwrap_or_default();
                    let cond = s
                        .conditions
                        .iter()
                        .flatten()
                        .find(|c| c.type_ == "DisruptionTarget")
                        .cloned();
                    if let Some(c) = cond {
                        return (s.phase, c);
                    }
                }
            }
            panic!("watch ended");
        }
    });
    pod(&t.client, "orphan", Some("gone"), "Running").await;
    let (phase, cond) = tokio::time::timeout(Duration::from_secs(30), seen)
        .await
        .expect("orphan marked")
        .unwrap();
    assert_eq!(phase.as_deref(), Some("Failed"));
    assert_eq!(cond.status, "True");
    assert_eq!(cond.reason.as_deref(), Some("DeletionByPodGC"));
    assert_eq!(
        cond.message.as_deref(),
        Some("PodGC: node no longer exists")
    );
    eventually(30, "orphan deleted", || async {
        pods.get_opt("orphan").await.ok()?.is_none().then_some(())
    })
    .await;

    // An unscheduled pod being deleted (a finalizer holds it) is failed and force-deleted.
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "unscheduled", "finalizers": ["example.com/hold"]},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    pods.delete("unscheduled", &DeleteParams::default())
        .await
        .unwrap();
    eventually(30, "unscheduled terminating pod failed", || async {
        let p = pods.get("unscheduled").await.ok()?;
        (p.status?.phase.as_deref() == Some("Failed")).then_some(())
    })
    .await;
    pods.patch(
        "unscheduled",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    eventually(30, "unscheduled pod gone", || async {
        pods.get_opt("unscheduled")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    // Pods on the existing node are untouched.
    assert_eq!(names(&pods).await, ["finished", "kept"]);
    let kept = pods.get("kept").await.unwrap();
    assert_eq!(kept.status.unwrap().phase.as_deref(), Some("Running"));
}
