//! Resources served under two group versions from one storage: `events.k8s.io/v1` Events
//! (stored as core `v1` Events) and `autoscaling/v1` HorizontalPodAutoscalers (stored as
//! `autoscaling/v2`), through kube-rs (its event `Recorder`) and kubectl; and ResourceQuota
//! admission under concurrent creates.

mod common;

use common::TestServer;
use k8s_openapi::api::autoscaling::v1 as hpa_v1;
use k8s_openapi::api::autoscaling::v2 as hpa_v2;
use k8s_openapi::api::core::v1::{ConfigMap, Event as CoreEvent, Pod, ResourceQuota};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::events::{Event as RecorderEvent, EventType, Recorder, Reporter};
use serde_json::json;

async fn configmap(client: &kube::Client, name: &str) -> ConfigMap {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": name}})).expect("configmap"),
    )
    .await
    .expect("configmap created")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_recorder_events_are_readable_through_both_apis() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let cm = configmap(&client, "subject").await;
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "rk3s-test-controller".into(),
            instance: Some("test-1".into()),
        },
    );
    let reference = kube::Resource::object_ref(&cm, &());
    let ev = RecorderEvent {
        type_: EventType::Normal,
        reason: "Tested".into(),
        note: Some("the subject was tested".into()),
        action: "Testing".into(),
        secondary: None,
    };
    recorder
        .publish(&ev, &reference)
        .await
        .expect("the recorder publishes through events.k8s.io/v1");
    // The same event again: kube-rs patches its series.
    recorder
        .publish(&ev, &reference)
        .await
        .expect("the recorder updates the series");

    let v1: Api<Event> = Api::namespaced(client.clone(), "default");
    let listed = v1
        .list(&ListParams::default().fields("regarding.name=subject"))
        .await
        .expect("events.k8s.io list with a regarding.* field selector");
    assert_eq!(listed.items.len(), 1, "{listed:?}");
    let e = &listed.items[0];
    assert_eq!(e.note.as_deref(), Some("the subject was tested"));
    assert_eq!(
        e.reporting_controller.as_deref(),
        Some("rk3s-test-controller")
    );
    assert_eq!(e.reporting_instance.as_deref(), Some("test-1"));
    assert_eq!(e.series.as_ref().map(|s| s.count), Some(2));
    assert_eq!(
        e.regarding.as_ref().and_then(|r| r.kind.as_deref()),
        Some("ConfigMap")
    );
    assert!(e.event_time.is_some());
    let none = v1
        .list(&ListParams::default().fields("regarding.name=other"))
        .await
        .expect("list");
    assert!(none.items.is_empty());
    let by_controller = v1
        .list(&ListParams::default().fields("reportingController=rk3s-test-controller"))
        .await
        .expect("list by reportingController");
    assert_eq!(by_controller.items.len(), 1);
    // The core field label is not one of events.k8s.io's.
    let err = v1
        .list(&ListParams::default().fields("involvedObject.name=subject"))
        .await
        .expect_err("involvedObject is not an events.k8s.io field");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 400),
        "{err:?}"
    );

    // events.k8s.io/v1 creates are strict (core v1 ones are not).
    let sloppy: Event = serde_json::from_value(json!({
        "metadata": {"name": "sloppy", "namespace": "default"},
        "regarding": {"kind": "ConfigMap", "name": "subject", "namespace": "default"},
        "reason": "Tested", "note": "no reporter", "type": "Normal",
        "eventTime": "2026-01-01T00:00:00.000000Z",
    }))
    .expect("event");
    match v1.create(&PostParams::default(), &sloppy).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422);
            // Upstream's legacy rules also check the empty controller as a qualified name.
            assert!(
                s.message.starts_with(
                    "Event \"sloppy\" is invalid: [reportingController: Required value, \
                     reportingController: Invalid value: \"\": name part must be non-empty, "
                ),
                "{}",
                s.message
            );
            assert!(
                s.message
                    .ends_with(", reportingInstance: Required value, action: Required value]"),
                "{}",
                s.message
            );
        }
        other => panic!("must be refused: {other:?}"),
    }

    // The same object through core v1.
    let core: Api<CoreEvent> = Api::namespaced(client.clone(), "default");
    let listed = core
        .list(
            &ListParams::default()
                .fields("involvedObject.name=subject,involvedObject.kind=ConfigMap"),
        )
        .await
        .expect("core list");
    assert_eq!(listed.items.len(), 1);
    let c = &listed.items[0];
    assert_eq!(c.metadata.name, e.metadata.name);
    assert_eq!(c.metadata.resource_version, e.metadata.resource_version);
    assert_eq!(c.message.as_deref(), Some("the subject was tested"));
    assert_eq!(c.reason.as_deref(), Some("Tested"));
    assert_eq!(
        c.reporting_component.as_deref(),
        Some("rk3s-test-controller")
    );
    assert_eq!(c.reporting_instance.as_deref(), Some("test-1"));
    assert_eq!(c.involved_object.name.as_deref(), Some("subject"));
    assert_eq!(c.series.as_ref().and_then(|s| s.count), Some(2));

    // A core event written the legacy way is an events.k8s.io event too, also on a watch.
    let rv = v1
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("list resourceVersion");
    let mut stream = Box::pin(
        v1.watch(&WatchParams::default().fields("regarding.name=legacy"), &rv)
            .await
            .expect("watch events.k8s.io"),
    );
    let legacy: CoreEvent = serde_json::from_value(json!({
        "metadata": {"name": "legacy.1", "namespace": "default"},
        "involvedObject": {"kind": "Pod", "name": "legacy", "namespace": "default"},
        "reason": "Pulled", "message": "image pulled", "type": "Normal", "count": 3,
        "source": {"component": "kubelet", "host": "node-1"},
        "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:00:05Z",
    }))
    .expect("event");
    core.create(&PostParams::default(), &legacy)
        .await
        .expect("core event created");
    use futures::StreamExt as _;
    let seen = loop {
        match stream.next().await {
            Some(Ok(WatchEvent::Added(ev))) => break ev,
            Some(Ok(WatchEvent::Bookmark(_))) => continue,
            other => panic!("unexpected watch event {other:?}"),
        }
    };
    assert_eq!(seen.note.as_deref(), Some("image pulled"));
    assert_eq!(seen.deprecated_count, Some(3));
    assert_eq!(
        seen.deprecated_source
            .as_ref()
            .and_then(|s| s.host.as_deref()),
        Some("node-1")
    );

    // An update through events.k8s.io shows through core; there, as upstream's
    // `ValidateEventUpdate`, only the series and metadata may change.
    let mut fetched = v1.get("legacy.1").await.expect("get through events.k8s.io");
    let mut changed = fetched.clone();
    changed.note = Some("image pulled again".into());
    let err = v1
        .replace("legacy.1", &PostParams::default(), &changed)
        .await
        .expect_err("the note is immutable through events.k8s.io");
    assert_eq!(
        common::invalid_causes(err),
        ["message: Invalid value: \"image pulled again\": field is immutable"]
    );
    fetched.metadata.labels = Some([("seen".to_string(), "again".to_string())].into());
    v1.replace("legacy.1", &PostParams::default(), &fetched)
        .await
        .expect("replace through events.k8s.io");
    let again = core.get("legacy.1").await.expect("core get");
    assert_eq!(
        again
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("seen"))
            .map(String::as_str),
        Some("again")
    );
    assert_eq!(again.message.as_deref(), Some("image pulled"));
    assert_eq!(again.count, Some(3));

    // kubectl: the default `events` resource, the events.k8s.io one, and `kubectl events`.
    let out = t.kubectl_ok(&["get", "events", "-n", "default"]).await;
    assert!(
        out.contains("Tested") && out.contains("configmap/subject"),
        "{out}"
    );
    let out = t
        .kubectl_ok(&["get", "events.v1.events.k8s.io", "-n", "default"])
        .await;
    assert!(
        out.contains("Pulled") && out.contains("pod/legacy"),
        "{out}"
    );
    let out = t
        .kubectl_ok(&["events", "-n", "default", "--for", "configmap/subject"])
        .await;
    assert!(out.contains("the subject was tested"), "{out}");
    let out = t
        .kubectl_ok(&["api-resources", "--api-group=events.k8s.io"])
        .await;
    assert!(out.contains("events.k8s.io/v1"), "{out}");
    let out = t
        .kubectl_ok(&[
            "explain",
            "events.reportingController",
            "--api-version=events.k8s.io/v1",
        ])
        .await;
    assert!(
        out.contains("events.k8s.io") && out.contains("reportingController"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscaling_v1_round_trips_through_v2_storage() {
    let t = TestServer::start().await;
    let client = t.client().await;
    t.kubectl_ok(&["create", "deployment", "web", "--image=busybox"])
        .await;
    t.kubectl_ok(&[
        "autoscale",
        "deployment",
        "web",
        "--cpu-percent=60",
        "--min=2",
        "--max=5",
    ])
    .await;
    let v2: Api<hpa_v2::HorizontalPodAutoscaler> = Api::namespaced(client.clone(), "default");
    let stored = v2.get("web").await.expect("the HPA through autoscaling/v2");
    let spec = stored.spec.clone().expect("spec");
    assert_eq!(spec.min_replicas, Some(2));
    assert_eq!(spec.max_replicas, 5);
    let metric = &spec.metrics.clone().expect("metrics")[0];
    assert_eq!(metric.type_, "Resource");
    let resource = metric.resource.as_ref().expect("resource metric");
    assert_eq!(resource.name, "cpu");
    assert_eq!(resource.target.average_utilization, Some(60));

    // A second metric and a status through v2; v1 shows CPU in its own fields and the rest
    // in the round-trip annotations, and an update through v1 keeps them.
    let patch = json!({"spec": {"metrics": [
        {"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": 60}}},
        {"type": "Resource", "resource": {"name": "memory",
            "target": {"type": "AverageValue", "averageValue": "100Mi"}}},
    ]}});
    v2.patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("v2 patch");
    let status = json!({"status": {"currentReplicas": 2, "desiredReplicas": 3,
        "currentMetrics": [{"type": "Resource", "resource": {"name": "cpu",
            "current": {"averageUtilization": 75, "averageValue": "150m"}}}]}});
    v2.patch_status("web", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("v2 status");

    let v1: Api<hpa_v1::HorizontalPodAutoscaler> = Api::namespaced(client.clone(), "default");
    let mut h = v1.get("web").await.expect("the HPA through autoscaling/v1");
    let v1_spec = h.spec.clone().expect("spec");
    assert_eq!(v1_spec.target_cpu_utilization_percentage, Some(60));
    assert_eq!(
        h.status
            .as_ref()
            .and_then(|s| s.current_cpu_utilization_percentage),
        Some(75)
    );
    let annotations = h.metadata.annotations.clone().unwrap_or_default();
    let metrics = annotations
        .get("autoscaling.alpha.kubernetes.io/metrics")
        .expect("the memory metric in the round-trip annotation");
    assert!(
        metrics.contains("memory") && metrics.contains("100Mi"),
        "{metrics}"
    );

    if let Some(spec) = h.spec.as_mut() {
        spec.max_replicas = 7;
        spec.target_cpu_utilization_percentage = Some(50);
    }
    v1.replace("web", &PostParams::default(), &h)
        .await
        .expect("v1 replace");
    let after = v2.get("web").await.expect("v2 get");
    let spec = after.spec.expect("spec");
    assert_eq!(spec.max_replicas, 7);
    let metrics = spec.metrics.expect("metrics");
    assert_eq!(metrics.len(), 2, "{metrics:?}");
    assert_eq!(
        metrics[0]
            .resource
            .as_ref()
            .and_then(|r| r.target.average_utilization),
        Some(50)
    );
    assert_eq!(
        metrics[1].resource.as_ref().map(|r| r.name.as_str()),
        Some("memory")
    );
    assert!(
        after
            .metadata
            .annotations
            .unwrap_or_default()
            .keys()
            .all(|k| !k.starts_with("autoscaling.alpha.kubernetes.io/")),
        "round-trip annotations are not stored"
    );

    // kubectl's default version is v2; v1 is asked for by name.
    let out = t
        .kubectl_ok(&[
            "get",
            "horizontalpodautoscalers.v1.autoscaling",
            "web",
            "-o",
            "jsonpath={.spec.targetCPUUtilizationPercentage}",
        ])
        .await;
    assert_eq!(out, "50");
    let out = t
        .kubectl_ok(&[
            "explain",
            "hpa.spec.targetCPUUtilizationPercentage",
            "--api-version=autoscaling/v1",
        ])
        .await;
    assert!(out.contains("targetCPUUtilizationPercentage"), "{out}");
    // Without --cpu-percent: upstream's default metric, 80% cpu, in both versions.
    t.kubectl_ok(&["autoscale", "deployment", "web", "--max=3", "--name=plain"])
        .await;
    let plain = v2.get("plain").await.expect("v2 get");
    let metrics = plain.spec.and_then(|s| s.metrics).expect("default metrics");
    assert_eq!(
        metrics[0]
            .resource
            .as_ref()
            .and_then(|r| r.target.average_utilization),
        Some(80)
    );
    let plain = v1.get("plain").await.expect("v1 get");
    assert_eq!(
        plain.spec.and_then(|s| s.target_cpu_utilization_percentage),
        Some(80)
    );
    let out = t.kubectl_ok(&["get", "hpa"]).await;
    assert!(out.contains("Deployment/web") && out.contains("7"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_admission_is_consistent_under_concurrent_creates() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), "default");
    quotas
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "q"},
                "spec": {"hard": {"pods": "3", "requests.cpu": "1"}}}))
            .expect("quota"),
        )
        .await
        .expect("quota created");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod = |name: &str, cpu: &str| -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"containers": [
            {"name": "c", "image": "busybox", "resources": {"requests": {"cpu": cpu}}}]}}))
        .expect("pod")
    };
    // No status yet (no controller here): refused as upstream refuses.
    let err = pods
        .create(&PostParams::default(), &pod("early", "100m"))
        .await
        .expect_err("quota status unknown");
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 403);
            assert_eq!(
                s.message,
                "pods \"early\" is forbidden: status unknown for quota: q, resources: pods,requests.cpu"
            );
        }
        other => panic!("{other:?}"),
    }
    // What the resourcequota controller would write.
    quotas
        .patch_status(
            "q",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "hard": {"pods": "3", "requests.cpu": "1"},
                "used": {"pods": "0", "requests.cpu": "0"}}})),
        )
        .await
        .expect("status");
    // A pod without a cpu request cannot be admitted against a requests.cpu quota.
    let bare: Pod = serde_json::from_value(json!({"metadata": {"name": "bare"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}}))
    .expect("pod");
    let err = pods
        .create(&PostParams::default(), &bare)
        .await
        .expect_err("no request");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.message == "pods \"bare\" is forbidden: failed quota: q: must specify requests.cpu"),
        "{err:?}"
    );

    // Eight concurrent creates against room for three.
    let results = futures::future::join_all((0..8).map(|i| {
        let pods = pods.clone();
        let p = pod(&format!("p{i}"), "100m");
        async move { pods.create(&PostParams::default(), &p).await }
    }))
    .await;
    let created = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(created, 3, "{results:?}");
    for r in results {
        if let Err(kube::Error::Api(s)) = r {
            assert_eq!(s.code, 403);
            assert!(
                s.message.ends_with(
                    "is forbidden: exceeded quota: q, requested: pods=1, used: pods=3, limited: pods=3"
                ),
                "{}",
                s.message
            );
        }
    }
    let q = quotas.get("q").await.expect("quota");
    let used = q.status.and_then(|s| s.used).expect("used");
    assert_eq!(used["pods"].0, "3");
    assert_eq!(used["requests.cpu"].0, "300m");
    // A dry run is checked but not charged.
    quotas
        .patch_status(
            "q",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"used": {"pods": "0"}}})),
        )
        .await
        .expect("status");
    pods.create(
        &PostParams {
            dry_run: true,
            ..PostParams::default()
        },
        &pod("dry", "100m"),
    )
    .await
    .expect("dry run admitted");
    let q = quotas.get("q").await.expect("quota");
    assert_eq!(q.status.and_then(|s| s.used).expect("used")["pods"].0, "0");
    // Over requests.cpu.
    let err = pods
        .create(&PostParams::default(), &pod("big", "2"))
        .await
        .expect_err("too much cpu");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.message == "pods \"big\" is forbidden: exceeded quota: q, requested: requests.cpu=2, used: requests.cpu=300m, limited: requests.cpu=1"),
        "{err:?}"
    );
}
