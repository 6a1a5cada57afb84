//! The HorizontalPodAutoscaler controller against a real in-process apiserver, which serves
//! no metrics API: bounds are enforced without metrics, and the metric failure is reported
//! with upstream's conditions and events. The controller manager runs as
//! `system:kube-controller-manager` (its RBAC roles must cover the scale subresource).

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::time::Duration;

use common::{TestCluster, eventually};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::{
    HorizontalPodAutoscaler, HorizontalPodAutoscalerCondition,
};
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

struct Cluster {
    t: TestCluster,
    manager: tokio::task::JoinHandle<()>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.manager.abort();
    }
}

async fn start() -> Cluster {
    // The workload controllers in the harness's manager; the HPA controller in a second one
    // (no leader election, a short sync period), also on its own service account.
    let t = TestCluster::start_with(rk3s_controller::Config {
        controllers: vec!["deployment".into(), "replicaset".into()],
        ..rk3s_controller::Config::default()
    })
    .await;
    let config = rk3s_controller::Config {
        controllers: vec!["horizontal-pod-autoscaling".into()],
        leader_elect: false,
        loops: rk3s_controller::LoopConfig {
            horizontal_pod_autoscaler_sync_period: 1,
            ..rk3s_controller::LoopConfig::default()
        },
        ..rk3s_controller::Config::default()
    };
    let connection = common::manager_connection(&t.apiserver).await;
    let config = common::manager_config(config);
    let manager = tokio::spawn(async move {
        rk3s_controller::run(config, connection, std::future::pending())
            .await
            .unwrap();
    });
    Cluster { t, manager }
}

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

fn hpa(name: &str, target: &str, min: i32, max: i32) -> HorizontalPodAutoscaler {
    serde_json::from_value(json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
            "minReplicas": min, "maxReplicas": max,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 50}}}],
        }
    }))
    .unwrap()
}

fn condition(h: &HorizontalPodAutoscaler, type_: &str) -> Option<HorizontalPodAutoscalerCondition> {
    h.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .cloned()
}

async fn events(client: &kube::Client, name: &str, reason: &str) -> Vec<Event> {
    Api::<Event>::namespaced(client.clone(), "default")
        .list(&ListParams::default().fields(&format!(
            "involvedObject.kind=HorizontalPodAutoscaler,involvedObject.name={name}"
        )))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

const METRIC_ERROR: &str = "failed to get cpu utilization: unable to get metrics for resource cpu: \
    unable to fetch metrics from resource metrics API: the server could not find the requested \
    resource (get pods.metrics.k8s.io)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounds_are_enforced_without_metrics_and_the_failure_is_reported() {
    let c = start().await;
    let client = c.t.client.clone();
    let deps: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();
    deps.create(&pp, &deployment("web", 1)).await.unwrap();
    hpas.create(&pp, &hpa("web", "web", 2, 5)).await.unwrap();

    // Below minReplicas: scaled up to it, metrics or not.
    eventually(30, "scaled to minReplicas", || async {
        (deps.get("web").await.ok()?.spec?.replicas == Some(2)).then_some(())
    })
    .await;
    let e = eventually(30, "SuccessfulRescale", || async {
        events(&client, "web", "SuccessfulRescale")
            .await
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(
        e.message.as_deref(),
        Some("New size: 2; reason: Current number of replicas below Spec.MinReplicas")
    );
    assert_eq!(
        e.source.and_then(|s| s.component).as_deref(),
        Some("horizontal-pod-autoscaler")
    );

    // Then the metric cannot be read: ScalingActive=False with upstream's reason and message.
    let h = eventually(30, "ScalingActive=False", || async {
        let h = hpas.get("web").await.ok()?;
        let c = condition(&h, "ScalingActive")?;
        (c.status == "False" && h.status.as_ref()?.current_replicas == Some(2)).then_some(h)
    })
    .await;
    let active = condition(&h, "ScalingActive").unwrap();
    assert_eq!(active.reason.as_deref(), Some("FailedGetResourceMetric"));
    assert_eq!(
        active.message.as_deref(),
        Some(format!("the HPA was unable to compute the replica count: {METRIC_ERROR}").as_str())
    );
    let able = condition(&h, "AbleToScale").unwrap();
    assert_eq!(
        (able.status.as_str(), able.reason.as_deref()),
        ("True", Some("SucceededGetScale"))
    );
    let status = h.status.as_ref().unwrap();
    assert_eq!(status.desired_replicas, 2);
    assert!(status.last_scale_time.is_some());
    let e = eventually(30, "FailedGetResourceMetric event", || async {
        events(&client, "web", "FailedGetResourceMetric")
            .await
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(e.message.as_deref(), Some(METRIC_ERROR));
    assert_eq!(e.type_.as_deref(), Some("Warning"));
    let e = eventually(30, "FailedComputeMetricsReplicas event", || async {
        events(&client, "web", "FailedComputeMetricsReplicas")
            .await
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(
        e.message.as_deref(),
        Some(
            format!(
                "invalid metrics (1 invalid out of 1), first error is: failed to get cpu resource metric value: {METRIC_ERROR}"
            )
            .as_str()
        )
    );
    let out = c.t.kubectl_ok(&["get", "hpa", "web"]).await;
    assert!(out.contains("<unknown>/50%"), "{out}");

    // Nothing changes between syncs (1 s apart): the status is not rewritten.
    let rv = hpas.get("web").await.unwrap().metadata.resource_version;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let h = hpas.get("web").await.unwrap();
    assert_eq!(
        h.metadata.resource_version, rv,
        "status rewritten without a change"
    );
    assert_eq!(
        deps.get("web").await.unwrap().spec.unwrap().replicas,
        Some(2)
    );

    // Above maxReplicas: scaled down to it.
    deps.patch(
        "web",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"spec": {"replicas": 8}})),
    )
    .await
    .unwrap();
    eventually(30, "scaled to maxReplicas", || async {
        (deps.get("web").await.ok()?.spec?.replicas == Some(5)).then_some(())
    })
    .await;
    eventually(30, "scale-down event", || async {
        events(&client, "web", "SuccessfulRescale")
            .await
            .into_iter()
            .find(|e| {
                e.message.as_deref()
                    == Some(
                        "New size: 5; reason: Current number of replicas above Spec.MaxReplicas",
                    )
            })
    })
    .await;

    // Replicas 0: autoscaling is off.
    deps.patch(
        "web",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"spec": {"replicas": 0}})),
    )
    .await
    .unwrap();
    eventually(30, "ScalingDisabled", || async {
        let h = hpas.get("web").await.ok()?;
        (condition(&h, "ScalingActive")?.reason.as_deref() == Some("ScalingDisabled")).then_some(())
    })
    .await;
    assert_eq!(
        deps.get("web").await.unwrap().spec.unwrap().replicas,
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_target_is_reported() {
    let c = start().await;
    let client = c.t.client.clone();
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), "default");
    hpas.create(&PostParams::default(), &hpa("ghost", "nothing", 1, 3))
        .await
        .unwrap();
    let h = eventually(30, "AbleToScale=False", || async {
        let h = hpas.get("ghost").await.ok()?;
        let c = condition(&h, "AbleToScale")?;
        (c.status == "False").then_some(h)
    })
    .await;
    let able = condition(&h, "AbleToScale").unwrap();
    assert_eq!(able.reason.as_deref(), Some("FailedGetScale"));
    let msg = able.message.unwrap();
    assert!(
        msg.starts_with("the HPA controller was unable to get the target's current scale: ")
            && msg.contains("\"nothing\" not found"),
        "{msg}"
    );
    let e = eventually(30, "FailedGetScale event", || async {
        events(&client, "ghost", "FailedGetScale")
            .await
            .into_iter()
            .next()
    })
    .await;
    assert!(e.message.unwrap().contains("\"nothing\" not found"));
}
