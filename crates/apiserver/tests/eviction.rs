//! `pods/eviction` against PodDisruptionBudgets, with kube-rs and with `kubectl drain`.
//!
//! No kubelet exists yet: the tests play its part by writing pod status (phase, Ready) and the
//! disruption controller's by writing the budgets' status.

mod common;

use common::{TestServer, api_status};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

/// A client that reports 429 instead of retrying it (kube-rs retries 429 by default, as the
/// refused evictions answer).
async fn client(t: &TestServer) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(&t.kubeconfig).expect("kubeconfig");
    let mut config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("kube config");
    config.default_retry = false;
    kube::Client::try_from(config).expect("kube client")
}

/// Evicts a pod with immediate deletion (there is no kubelet to finish a graceful one).
/// kube-core 5's `Api::evict` writes `delete_options`, a field upstream ignores as well, so
/// the Eviction is posted by hand.
async fn evict(client: &kube::Client, name: &str) -> Result<kube::core::Status, kube::Error> {
    let body = json!({
        "apiVersion": "policy/v1", "kind": "Eviction",
        "metadata": {"name": name, "namespace": "default"},
        "deleteOptions": {"gracePeriodSeconds": 0},
    });
    let req = axum::http::Request::post(format!("/api/v1/namespaces/default/pods/{name}/eviction"))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).expect("json"))
        .expect("request");
    client.request(req).await
}

/// A pod bound to `node`, Running and Ready (as its kubelet would report it).
async fn running_pod(pods: &Api<Pod>, name: &str, node: &str, app: &str) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    let status = json!({"status": {"phase": "Running", "conditions": [
        {"type": "Ready", "status": "True"}]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("pod status");
}

async fn pdb(api: &Api<PodDisruptionBudget>, name: &str, app: &str) {
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": app}}},
    }))
    .expect("pdb");
    api.create(&PostParams::default(), &pdb)
        .await
        .expect("create pdb");
}

/// What the disruption controller would write.
async fn pdb_status(api: &Api<PodDisruptionBudget>, name: &str, allowed: i32, healthy: i32) {
    let status = json!({"status": {"observedGeneration": 1, "disruptionsAllowed": allowed,
        "currentHealthy": healthy, "desiredHealthy": 1, "expectedPods": healthy}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("pdb status");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evictions_respect_disruption_budgets() {
    let t = TestServer::start().await;
    let client = client(&t).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "default");

    // No budget covers the pod: evicted.
    running_pod(&pods, "free", "n1", "free").await;
    let done = evict(&client, "free").await.expect("evicted");
    assert_eq!(
        (done.code, done.status),
        (201, Some(kube::core::response::StatusSummary::Success))
    );
    assert!(pods.get_opt("free").await.expect("get").is_none());

    running_pod(&pods, "web-a", "n1", "web").await;
    running_pod(&pods, "web-b", "n1", "web").await;
    pdb(&pdbs, "web", "web").await;

    // The budget has not been processed by a disruption controller yet.
    let s = api_status(evict(&client, "web-a").await.expect_err("refused"));
    assert_eq!((s.code, s.reason.as_str()), (429, "TooManyRequests"));
    assert_eq!(
        s.message,
        "Cannot evict pod as it would violate the pod's disruption budget."
    );
    let cause = &s.details.expect("details").causes[0];
    assert_eq!(cause.reason, "DisruptionBudget");
    assert_eq!(
        cause.message,
        "The disruption budget web is still being processed by the server."
    );

    // One disruption allowed: the first eviction takes it, the second is refused.
    pdb_status(&pdbs, "web", 1, 2).await;
    evict(&client, "web-a").await.expect("evicted");
    assert!(pods.get_opt("web-a").await.expect("get").is_none());
    let status = pdbs.get("web").await.expect("pdb").status.expect("status");
    assert_eq!(status.disruptions_allowed, 0);
    assert!(
        status
            .disrupted_pods
            .is_some_and(|d| d.contains_key("web-a"))
    );
    let s = api_status(evict(&client, "web-b").await.expect_err("refused"));
    assert_eq!(s.code, 429);
    assert_eq!(
        s.details.expect("details").causes[0].message,
        "The disruption budget web needs 1 healthy pods and has 2 currently"
    );
    assert!(pods.get_opt("web-b").await.expect("get").is_some());

    // A pod that is not running disrupts nothing: no budget is consulted.
    let pending: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-pending", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pending)
        .await
        .expect("create");
    evict(&client, "web-pending").await.expect("evicted");

    // Two budgets over one pod: upstream refuses.
    pdb(&pdbs, "web-2", "web").await;
    pdb_status(&pdbs, "web", 1, 2).await;
    let s = api_status(evict(&client, "web-b").await.expect_err("refused"));
    assert_eq!((s.code, s.reason.as_str()), (500, "InternalError"));
    assert!(
        s.message.contains("more than one PodDisruptionBudget"),
        "{}",
        s.message
    );

    // Missing pod: 404.
    let s = api_status(evict(&client, "nope").await.expect_err("missing"));
    assert_eq!(s.code, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_drain_cordons_and_evicts() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1"}})).expect("node");
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("node");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    running_pod(&pods, "a", "n1", "a").await;
    running_pod(&pods, "b", "n1", "b").await;
    running_pod(&pods, "elsewhere", "n2", "c").await;

    let out = t
        .kubectl_ok(&[
            "drain",
            "n1",
            "--force",
            "--grace-period=0",
            "--timeout=60s",
        ])
        .await;
    assert!(out.contains("node/n1 cordoned"), "{out}");
    assert!(out.contains("pod/a evicted"), "{out}");
    assert!(out.contains("node/n1 drained"), "{out}");
    let unschedulable = nodes
        .get("n1")
        .await
        .expect("node")
        .spec
        .and_then(|s| s.unschedulable);
    assert_eq!(unschedulable, Some(true));
    let left: Vec<String> = pods
        .list(&Default::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(left, ["elsewhere"]);
}
