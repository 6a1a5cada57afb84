//! The Deployment controller (with the ReplicaSet controller under it) against a real
//! in-process apiserver, and kubectl's rollout commands.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{TestCluster, eventually};
use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

fn deployment(name: &str, replicas: i32, image: &str, strategy: serde_json::Value) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": strategy,
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": image}]}
            }
        }
    }))
    .unwrap()
}

fn image_of(p: &Pod) -> String {
    p.spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap_or_default()
}

fn ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn rollout_done(deps: &Api<Deployment>, name: &str, replicas: i32) {
    eventually(60, "rollout complete", || async {
        let d = deps.get(name).await.ok()?;
        let s = d.status?;
        (s.observed_generation == d.metadata.generation
            && s.updated_replicas == Some(replicas)
            && s.replicas == Some(replicas)
            && s.available_replicas == Some(replicas))
        .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_respects_max_unavailable_and_rolls_back() {
    let t = TestCluster::start().await;
    let deps: Api<Deployment> = Api::namespaced(t.client.clone(), "default");
    let rss: Api<ReplicaSet> = Api::namespaced(t.client.clone(), "default");
    let strategy =
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}});
    deps.create(
        &PostParams::default(),
        &deployment("web", 4, "busybox:1", strategy),
    )
    .await
    .unwrap();
    rollout_done(&deps, "web", 4).await;
    let d = deps.get("web").await.unwrap();
    assert_eq!(
        d.metadata.annotations.as_ref().unwrap()["deployment.kubernetes.io/revision"],
        "1"
    );
    let conds = d.status.as_ref().unwrap().conditions.clone().unwrap();
    let progressing = conds.iter().find(|c| c.type_ == "Progressing").unwrap();
    assert_eq!(
        progressing.reason.as_deref(),
        Some("NewReplicaSetAvailable")
    );
    let available = conds.iter().find(|c| c.type_ == "Available").unwrap();
    assert_eq!(
        (available.status.as_str(), available.reason.as_deref()),
        ("True", Some("MinimumReplicasAvailable"))
    );
    let rs1 = rss.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(rs1.len(), 1);
    let hash = rs1[0].metadata.labels.as_ref().unwrap()["pod-template-hash"].clone();
    assert_eq!(
        rs1[0].metadata.name.as_deref().unwrap(),
        format!("web-{hash}")
    );

    // Watch every pod change during the rollout: ready pods never drop below 4 - 1, and
    // pods never exceed 4 + 1.
    let violation = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (v, client, peak_w) = (violation.clone(), t.client.clone(), peak.clone());
    let checker = tokio::spawn(async move {
        let pods: Api<Pod> = Api::namespaced(client, "default");
        let (store, writer) = kube::runtime::reflector::store::<Pod>();
        let mut s =
            kube::runtime::reflector(writer, watcher(pods, watcher::Config::default())).boxed();
        let mut listed = false;
        while let Some(ev) = s.next().await {
            // Judge only complete states: after the initial list.
            listed |= matches!(ev, Ok(watcher::Event::InitDone));
            if !listed {
                continue;
            }
            let state = store.state();
            let live: Vec<_> = state
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            let r = live.iter().filter(|p| ready(p)).count();
            peak_w.fetch_max(live.len(), Ordering::SeqCst);
            if r < 3 || live.len() > 5 {
                eprintln!("violation: ready {r}, total {}", live.len());
                v.store(true, Ordering::SeqCst);
            }
        }
    });
    // The stand-in marks pods ready after a short delay, so the rollout proceeds in steps.
    deps.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox:2"}]}}}})),
    )
    .await
    .unwrap();
    rollout_done(&deps, "web", 4).await;
    let pods: Api<Pod> = Api::namespaced(t.client.clone(), "default");
    let images: Vec<String> = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(image_of)
        .collect();
    assert_eq!(images, vec!["busybox:2"; 4]);
    let d = deps.get("web").await.unwrap();
    assert_eq!(
        d.metadata.annotations.as_ref().unwrap()["deployment.kubernetes.io/revision"],
        "2"
    );
    checker.abort();
    assert!(
        !violation.load(Ordering::SeqCst),
        "maxUnavailable/maxSurge violated"
    );
    // The surge was used: the checker saw the intermediate states, not just the end.
    assert_eq!(peak.load(Ordering::SeqCst), 5);

    // kubectl rollout status finishes; kubectl rollout undo goes back to revision 1's
    // ReplicaSet, which becomes revision 3.
    let out = t
        .kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=30s"])
        .await;
    assert!(out.contains("successfully rolled out"), "{out}");
    t.kubectl_ok(&["rollout", "undo", "deployment/web"]).await;
    rollout_done(&deps, "web", 4).await;
    eventually(30, "old pods gone after undo", || async {
        let items = pods.list(&ListParams::default()).await.ok()?.items;
        let live: Vec<_> = items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        (live.len() == 4 && live.iter().all(|p| image_of(p) == "busybox:1")).then_some(())
    })
    .await;
    let rs = rss.get(&format!("web-{hash}")).await.unwrap();
    let ann = rs.metadata.annotations.unwrap();
    assert_eq!(ann["deployment.kubernetes.io/revision"], "3");
    assert_eq!(ann["deployment.kubernetes.io/revision-history"], "1");
    assert_eq!(
        rss.list(&ListParams::default()).await.unwrap().items.len(),
        2
    );
    let history = t
        .kubectl_ok(&["rollout", "history", "deployment/web"])
        .await;
    assert!(history.contains('2') && history.contains('3'), "{history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_recreate_pause_and_history_limit() {
    let t = TestCluster::start().await;
    let deps: Api<Deployment> = Api::namespaced(t.client.clone(), "default");
    let rss: Api<ReplicaSet> = Api::namespaced(t.client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(t.client.clone(), "default");
    let mut d = deployment("rec", 2, "busybox:1", json!({"type": "Recreate"}));
    d.spec.as_mut().unwrap().revision_history_limit = Some(1);
    deps.create(&PostParams::default(), &d).await.unwrap();
    rollout_done(&deps, "rec", 2).await;

    // Scale up and down through kubectl (the scale subresource).
    t.kubectl_ok(&["scale", "deployment/rec", "--replicas=5"])
        .await;
    rollout_done(&deps, "rec", 5).await;
    t.kubectl_ok(&["scale", "deployment/rec", "--replicas=1"])
        .await;
    rollout_done(&deps, "rec", 1).await;
    eventually(20, "1 pod", || async {
        let n = pods.list(&ListParams::default()).await.ok()?.items.len();
        (n == 1).then_some(())
    })
    .await;

    // Recreate: the new ReplicaSet starts only when no old pod is left.
    for image in ["busybox:2", "busybox:3"] {
        deps.patch(
            "rec",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": image}]}}}})),
        )
        .await
        .unwrap();
        rollout_done(&deps, "rec", 1).await;
    }
    // revisionHistoryLimit 1: the newest ReplicaSet and one old one remain.
    eventually(20, "history cleaned up", || async {
        let items = rss.list(&ListParams::default()).await.ok()?.items;
        let revs: BTreeMap<String, i32> = items
            .iter()
            .map(|rs| {
                (
                    rs.metadata.annotations.as_ref().unwrap()["deployment.kubernetes.io/revision"]
                        .clone(),
                    rs.spec.as_ref().unwrap().replicas.unwrap(),
                )
            })
            .collect();
        (revs.len() == 2 && revs.get("3") == Some(&1) && revs.get("2") == Some(&0)).then_some(())
    })
    .await;

    // Pause: template changes do not roll out; resume rolls out.
    t.kubectl_ok(&["rollout", "pause", "deployment/rec"]).await;
    deps.patch(
        "rec",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox:4"}]}}}})),
    )
    .await
    .unwrap();
    eventually(20, "paused condition", || async {
        let d = deps.get("rec").await.ok()?;
        let c = d.status?.conditions?;
        c.iter()
            .any(|c| c.type_ == "Progressing" && c.reason.as_deref() == Some("DeploymentPaused"))
            .then_some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let images: Vec<String> = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(image_of)
        .collect();
    assert_eq!(images, ["busybox:3"]);
    t.kubectl_ok(&["rollout", "resume", "deployment/rec"]).await;
    rollout_done(&deps, "rec", 1).await;
    eventually(20, "busybox:4 running", || async {
        let items = pods.list(&ListParams::default()).await.ok()?.items;
        (items.len() == 1 && image_of(&items[0]) == "busybox:4").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_deadline_is_reported_and_recovers() {
    let t = TestCluster::start().await;
    let deps: Api<Deployment> = Api::namespaced(t.client.clone(), "default");
    // Pods never become ready while the stand-in is off.
    t.kubelet_ready.store(false, Ordering::SeqCst);
    let mut d = deployment("slow", 2, "busybox:1", json!({"type": "RollingUpdate"}));
    d.spec.as_mut().unwrap().progress_deadline_seconds = Some(2);
    deps.create(&PostParams::default(), &d).await.unwrap();
    let reason = |d: Deployment| {
        d.status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "Progressing")
            .map(|c| (c.status, c.reason.unwrap_or_default()))
    };
    eventually(20, "ProgressDeadlineExceeded", || async {
        let r = reason(deps.get("slow").await.ok()?)?;
        (r == ("False".to_string(), "ProgressDeadlineExceeded".to_string())).then_some(())
    })
    .await;
    let out = t
        .kubectl(&["rollout", "status", "deployment/slow", "--timeout=10s"])
        .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exceeded its progress deadline"), "{err}");

    // Pods become ready: the rollout completes and the condition says so.
    t.kubelet_ready.store(true, Ordering::SeqCst);
    eventually(20, "NewReplicaSetAvailable", || async {
        let r = reason(deps.get("slow").await.ok()?)?;
        (r == ("True".to_string(), "NewReplicaSetAvailable".to_string())).then_some(())
    })
    .await;
    t.kubectl_ok(&["rollout", "status", "deployment/slow", "--timeout=10s"])
        .await;
}
