//! The ReplicaSet controller against a real in-process apiserver.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use common::{TestCluster, eventually};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

fn rs(name: &str, replicas: i32) -> ReplicaSet {
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

async fn owned_pods(pods: &Api<Pod>, uid: &str) -> Vec<Pod> {
    pods.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| {
            p.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|r| r.uid == uid && r.controller == Some(true))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicaset_creates_scales_and_reports_status() {
    let t = TestCluster::start().await;
    let rss: Api<ReplicaSet> = Api::namespaced(t.client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(t.client.clone(), "default");
    let created = rss
        .create(&PostParams::default(), &rs("web", 3))
        .await
        .unwrap();
    let uid = created.metadata.uid.clone().unwrap();

    let status = eventually(20, "3 ready replicas", || async {
        let s = rss.get("web").await.ok()?.status?;
        (s.ready_replicas == Some(3) && s.available_replicas == Some(3)).then_some(s)
    })
    .await;
    assert_eq!(status.replicas, 3);
    assert_eq!(status.fully_labeled_replicas, Some(3));
    assert_eq!(status.observed_generation, Some(1));
    let owned = owned_pods(&pods, &uid).await;
    assert_eq!(owned.len(), 3);
    for p in &owned {
        assert!(p.metadata.name.as_deref().unwrap().starts_with("web-"));
        let r = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((r.kind.as_str(), r.name.as_str()), ("ReplicaSet", "web"));
        assert_eq!(r.block_owner_deletion, Some(true));
    }

    // Scale up, then down; observedGeneration follows.
    rss.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 5}})),
    )
    .await
    .unwrap();
    eventually(20, "5 pods", || async {
        let s = rss.get("web").await.ok()?.status?;
        (s.ready_replicas == Some(5) && s.observed_generation == Some(2)).then_some(())
    })
    .await;
    assert_eq!(owned_pods(&pods, &uid).await.len(), 5);
    rss.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await
    .unwrap();
    eventually(20, "1 pod", || async {
        let s = rss.get("web").await.ok()?.status?;
        (s.replicas == 1 && s.observed_generation == Some(3)).then_some(())
    })
    .await;
    assert_eq!(owned_pods(&pods, &uid).await.len(), 1);

    // A deleted pod is replaced.
    let victim = owned_pods(&pods, &uid).await[0]
        .metadata
        .name
        .clone()
        .unwrap();
    pods.delete(&victim, &Default::default()).await.unwrap();
    eventually(20, "a replacement pod", || async {
        let now = owned_pods(&pods, &uid).await;
        (now.len() == 1 && now[0].metadata.name.as_deref() != Some(&victim)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicaset_adopts_orphans_and_releases_non_matching_pods() {
    let t = TestCluster::start().await;
    let rss: Api<ReplicaSet> = Api::namespaced(t.client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(t.client.clone(), "default");
    // Two orphans with the labels exist before the ReplicaSet.
    for name in ["orphan-1", "orphan-2"] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": "adopt"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    let created = rss
        .create(&PostParams::default(), &rs("adopt", 3))
        .await
        .unwrap();
    let uid = created.metadata.uid.clone().unwrap();
    eventually(20, "3 owned pods", || async {
        (owned_pods(&pods, &uid).await.len() == 3
            && rss.get("adopt").await.ok()?.status?.ready_replicas == Some(3))
        .then_some(())
    })
    .await;
    let names: Vec<_> = owned_pods(&pods, &uid)
        .await
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert!(names.contains(&"orphan-1".to_string()), "{names:?}");
    assert!(names.contains(&"orphan-2".to_string()), "{names:?}");

    // A pod relabelled out of the selector is released and replaced.
    pods.patch(
        "orphan-1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "other"}}})),
    )
    .await
    .unwrap();
    eventually(20, "orphan-1 released and replaced", || async {
        let p = pods.get("orphan-1").await.ok()?;
        let released = p
            .metadata
            .owner_references
            .as_ref()
            .is_none_or(|r| r.is_empty());
        (released && owned_pods(&pods, &uid).await.len() == 3).then_some(())
    })
    .await;
}

/// Syncs forced again and again while a burst of creations is in flight (the ReplicaSet is
/// touched repeatedly, its pods' events lag the creations) never make more pods than
/// replicas: the controller's expectations hold it back until its cache saw the burst. A pod
/// watch counts the owned pods that exist at every moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicaset_never_creates_more_than_replicas_while_synced_during_a_burst() {
    use futures::StreamExt as _;
    use kube::runtime::watcher;
    use std::collections::HashSet;

    const REPLICAS: usize = 40;
    let t = TestCluster::start().await;
    let rss: Api<ReplicaSet> = Api::namespaced(t.client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(t.client.clone(), "default");
    let mut watch = watcher(pods.clone(), watcher::Config::default()).boxed();
    // The watch is established (its initial list done) before the ReplicaSet exists.
    while let Some(ev) = watch.next().await {
        if matches!(ev, Ok(watcher::Event::InitDone)) {
            break;
        }
    }
    let created = rss
        .create(&PostParams::default(), &rs("burst", REPLICAS as i32))
        .await
        .unwrap();
    let uid = created.metadata.uid.clone().unwrap();
    // Touch the ReplicaSet 30 times while it creates: each touch is a sync.
    let toucher = {
        let rss = rss.clone();
        tokio::spawn(async move {
            for i in 0..30 {
                rss.patch(
                    "burst",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"annotations": {"touch": i.to_string()}}})),
                )
                .await
                .unwrap();
            }
        })
    };
    let mut existing: HashSet<String> = HashSet::new();
    let mut most = 0;
    let mut count = |ev: Option<Result<watcher::Event<Pod>, watcher::Error>>| {
        match ev {
            Some(Ok(watcher::Event::Apply(p))) => {
                let ours = p
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|r| r.uid == uid);
                if ours && p.metadata.deletion_timestamp.is_none() {
                    existing.insert(p.metadata.name.clone().unwrap());
                } else {
                    existing.remove(&p.metadata.name.clone().unwrap());
                }
            }
            Some(Ok(watcher::Event::Delete(p))) => {
                existing.remove(&p.metadata.name.clone().unwrap());
            }
            _ => {}
        }
        most = most.max(existing.len());
        existing.len()
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while count(watch.next().await) < REPLICAS {}
    })
    .await
    .expect("the ReplicaSet's pods appear");
    toucher.await.unwrap();
    // Settled: the status reports exactly the replicas ...
    eventually(20, "40 ready replicas", || async {
        let s = rss.get("burst").await.ok()?.status?;
        (s.ready_replicas == Some(REPLICAS as i32)).then_some(())
    })
    .await;
    // ... and no pod beyond them ever existed (the events so far, all read).
    while let Some(ev) = futures::FutureExt::now_or_never(watch.next()) {
        count(ev);
    }
    assert_eq!(owned_pods(&pods, &uid).await.len(), REPLICAS);
    assert_eq!(most, REPLICAS, "more pods than replicas existed at once");
}
