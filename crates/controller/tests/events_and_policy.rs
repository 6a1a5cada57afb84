//! Events recorded by the controllers, the resourcequota controller with the apiserver's quota
//! admission, and the disruption controller with the apiserver's eviction — against a real
//! in-process apiserver (one test binary: they share its build).

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use common::{TestCluster, eventually};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Event, Pod, ResourceQuota};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
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
                "spec": {"containers": [{"name": "c", "image": "busybox",
                    "resources": {"requests": {"cpu": "100m"}}}]}
            }
        }
    }))
    .unwrap()
}

async fn events_about(client: &kube::Client, kind: &str, name: &str) -> Vec<Event> {
    Api::<Event>::namespaced(client.clone(), "default")
        .list(&ListParams::default().fields(&format!(
            "involvedObject.kind={kind},involvedObject.name={name}"
        )))
        .await
        .unwrap()
        .items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_and_replicaset_events_show_in_describe() {
    let t = TestCluster::start().await;
    let deploys: Api<Deployment> = Api::namespaced(t.client.clone(), "default");
    deploys
        .create(&PostParams::default(), &deployment("web", 2))
        .await
        .unwrap();
    let rs_name = eventually(20, "the ReplicaSet", || async {
        let rss = Api::<ReplicaSet>::namespaced(t.client.clone(), "default")
            .list(&ListParams::default())
            .await
            .ok()?;
        rss.items.first().and_then(|r| r.metadata.name.clone())
    })
    .await;
    let scaled = eventually(20, "a ScalingReplicaSet event", || async {
        let evs = events_about(&t.client, "Deployment", "web").await;
        evs.into_iter()
            .find(|e| e.reason.as_deref() == Some("ScalingReplicaSet"))
    })
    .await;
    assert_eq!(
        scaled.message.as_deref(),
        Some(format!("Scaled up replica set {rs_name} from 0 to 2").as_str())
    );
    assert_eq!(scaled.type_.as_deref(), Some("Normal"));
    assert_eq!(
        scaled.source.as_ref().and_then(|s| s.component.as_deref()),
        Some("deployment-controller")
    );
    let created = eventually(20, "two SuccessfulCreate events", || async {
        let evs: Vec<Event> = events_about(&t.client, "ReplicaSet", &rs_name)
            .await
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("SuccessfulCreate"))
            .collect();
        (evs.len() == 2).then_some(evs)
    })
    .await;
    for e in &created {
        let msg = e.message.as_deref().unwrap_or("");
        assert!(
            msg.starts_with(&format!("Created pod: {rs_name}-")),
            "{msg}"
        );
        assert_eq!(
            e.source.as_ref().and_then(|s| s.component.as_deref()),
            Some("replicaset-controller")
        );
    }

    // Scaling down: the Deployment scales its ReplicaSet, which deletes a pod.
    deploys
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .unwrap();
    eventually(20, "a SuccessfulDelete event", || async {
        events_about(&t.client, "ReplicaSet", &rs_name)
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("SuccessfulDelete"))
    })
    .await;
    let out = t.kubectl_ok(&["describe", "deployment", "web"]).await;
    assert!(
        out.contains("ScalingReplicaSet")
            && out.contains(&format!("Scaled up replica set {rs_name} from 0 to 2"))
            && out.contains(&format!("Scaled down replica set {rs_name} from 2 to 1"))
            && out.contains("deployment-controller"),
        "{out}"
    );
    let out = t.kubectl_ok(&["describe", "replicaset", &rs_name]).await;
    assert!(
        out.contains("SuccessfulCreate") && out.contains("SuccessfulDelete"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_status_and_admission_with_failed_create_events() {
    let t = TestCluster::start().await;
    let quotas: Api<ResourceQuota> = Api::namespaced(t.client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(t.client.clone(), "default");
    quotas
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "compute"},
                "spec": {"hard": {"pods": "2", "requests.cpu": "1", "count/deployments.apps": "5",
                                   "configmaps": "10"}}}))
            .unwrap(),
        )
        .await
        .unwrap();
    // The controller fills in hard and used (the namespace's root CA configmap may count).
    let status = eventually(20, "quota status", || async {
        quotas.get("compute").await.ok()?.status?.used
    })
    .await;
    assert_eq!(status["pods"].0, "0");
    assert_eq!(status["requests.cpu"].0, "0");
    assert_eq!(status["count/deployments.apps"].0, "0");

    // A Deployment of 3 pods against a quota of 2: two are admitted, the third refused with
    // upstream's message, recorded as a FailedCreate event whose count goes up with retries.
    Api::<Deployment>::namespaced(t.client.clone(), "default")
        .create(&PostParams::default(), &deployment("web", 3))
        .await
        .unwrap();
    let failed = eventually(30, "a repeated FailedCreate event", || async {
        let rss = Api::<ReplicaSet>::namespaced(t.client.clone(), "default")
            .list(&ListParams::default())
            .await
            .ok()?;
        let rs = rss.items.first()?.metadata.name.clone()?;
        events_about(&t.client, "ReplicaSet", &rs)
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("FailedCreate") && e.count.unwrap_or(0) >= 2)
    })
    .await;
    let msg = failed.message.unwrap_or_default();
    assert!(
        msg.starts_with("Error creating: pods \"web-")
            && msg.ends_with(
                "is forbidden: exceeded quota: compute, requested: pods=1, used: pods=2, limited: pods=2"
            ),
        "{msg}"
    );
    assert_eq!(failed.type_.as_deref(), Some("Warning"));
    let used = eventually(20, "used pods=2, cpu=200m, deployments=1", || async {
        let used = quotas.get("compute").await.ok()?.status?.used?;
        (used["pods"].0 == "2"
            && used["requests.cpu"].0 == "200m"
            && used["count/deployments.apps"].0 == "1")
            .then_some(used)
    })
    .await;
    assert!(used.contains_key("configmaps"));
    // The quota held: never more than two pods.
    assert_eq!(
        pods.list(&ListParams::default()).await.unwrap().items.len(),
        2
    );

    // A pod going away gives its share back (the ReplicaSet then takes it again).
    let victim = pods.list(&ListParams::default()).await.unwrap().items[0]
        .metadata
        .name
        .clone()
        .unwrap();
    pods.delete(&victim, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    eventually(20, "the replacement pod admitted", || async {
        let live = pods.list(&ListParams::default()).await.ok()?.items;
        (live.len() == 2
            && live
                .iter()
                .all(|p| p.metadata.name.as_deref() != Some(victim.as_str())))
        .then_some(())
    })
    .await;
    let used = eventually(20, "used pods=2 again", || async {
        let used = quotas.get("compute").await.ok()?.status?.used?;
        (used["pods"].0 == "2").then_some(used)
    })
    .await;
    assert_eq!(used["requests.cpu"].0, "200m");
    let out = t.kubectl_ok(&["describe", "quota", "compute"]).await;
    assert!(out.contains("pods") && out.contains("2     2"), "{out}");
}

/// A client that reports 429 instead of retrying it.
async fn no_retry_client(t: &TestCluster) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(&t.kubeconfig).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    config.default_retry = false;
    kube::Client::try_from(config).unwrap()
}

async fn evict(client: &kube::Client, name: &str) -> Result<(), kube::Error> {
    let body = json!({
        "apiVersion": "policy/v1", "kind": "Eviction",
        "metadata": {"name": name, "namespace": "default"},
        "deleteOptions": {"gracePeriodSeconds": 0},
    });
    Api::<Pod>::namespaced(client.clone(), "default")
        .create_subresource::<_, kube::core::Status>(
            "eviction",
            name,
            &PostParams::default(),
            &body,
        )
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pdb_status_is_computed_and_evictions_respect_it() {
    let t = TestCluster::start().await;
    let client = no_retry_client(&t).await;
    Api::<Deployment>::namespaced(t.client.clone(), "default")
        .create(&PostParams::default(), &deployment("web", 4))
        .await
        .unwrap();
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(t.client.clone(), "default");
    pdbs.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "web"},
            "spec": {"maxUnavailable": "25%", "selector": {"matchLabels": {"app": "web"}}}}))
        .unwrap(),
    )
    .await
    .unwrap();
    // 4 replicas, at most 25% (rounded up: 1) unavailable: 3 desired healthy.
    let status = eventually(30, "pdb status with 4 healthy pods", || async {
        let s = pdbs.get("web").await.ok()?.status?;
        (s.current_healthy == 4).then_some(s)
    })
    .await;
    assert_eq!(status.expected_pods, 4);
    assert_eq!(status.desired_healthy, 3);
    assert_eq!(status.disruptions_allowed, 1);
    assert_eq!(status.observed_generation, Some(1));
    let cond = status
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "DisruptionAllowed")
        .unwrap();
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_str()),
        ("True", "SufficientPods")
    );

    // Hold the replacements back, so that the budget is spent.
    t.kubelet_ready
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let pods: Api<Pod> = Api::namespaced(t.client.clone(), "default");
    let names: Vec<String> = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    evict(&client, &names[0])
        .await
        .expect("first eviction allowed");
    let status = eventually(30, "the budget spent", || async {
        let s = pdbs.get("web").await.ok()?.status?;
        (s.current_healthy == 3 && s.disruptions_allowed == 0).then_some(s)
    })
    .await;
    let cond = status
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "DisruptionAllowed")
        .unwrap();
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_str()),
        ("False", "InsufficientPods")
    );
    match evict(&client, &names[1]).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 429, "{s:?}");
            assert_eq!(s.reason, "TooManyRequests");
        }
        other => panic!("second eviction must be refused: {other:?}"),
    }
    // The replacement becomes ready: the budget allows one disruption again.
    t.kubelet_ready
        .store(true, std::sync::atomic::Ordering::SeqCst);
    eventually(30, "disruptions allowed again", || async {
        let s = pdbs.get("web").await.ok()?.status?;
        (s.current_healthy == 4 && s.disruptions_allowed == 1).then_some(())
    })
    .await;
    evict(&client, &names[1]).await.expect("allowed again");

    // A budget over pods without a controller: the fail-safe status.
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(
            json!({"metadata": {"name": "lone", "labels": {"app": "lone"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    pdbs.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "lone"},
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "lone"}}}}))
        .unwrap(),
    )
    .await
    .unwrap();
    let cond = eventually(30, "SyncFailed", || async {
        let s = pdbs.get("lone").await.ok()?.status?;
        s.conditions?
            .into_iter()
            .find(|c| c.type_ == "DisruptionAllowed" && c.reason == "SyncFailed")
    })
    .await;
    assert_eq!(cond.status, "False");
    assert!(
        cond.message.contains("found no controllers"),
        "{}",
        cond.message
    );
    let out = t.kubectl_ok(&["get", "pdb", "web"]).await;
    assert!(out.contains("25%"), "{out}");
}
