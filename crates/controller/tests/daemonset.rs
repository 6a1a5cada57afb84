//! The DaemonSet controller against a real in-process apiserver, with kubectl's rollout
//! commands.
//!
//! Nodes are plain Node objects (no kubelet runs). Upstream, the scheduler binds daemon pods
//! to the node their `metadata.name` affinity names; rk3s-scheduler is not a dependency of the
//! controller, so a stand-in here does the scheduler's part (binds each pod through
//! `pods/binding` to the node its affinity names) and the kubelet's part (marks bound pods
//! Running and Ready, and finishes graceful deletions as a kubelet would). The harness's own
//! kubelet stand-in is switched off.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use common::{TestCluster, eventually, expect_event};
use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::{Value, json};

async fn start() -> TestCluster {
    // PodGC collects the pods of deleted nodes (as upstream, the DaemonSet controller leaves
    // bound ones to it): a short period and quarantine keep the test quick.
    let t = TestCluster::start_with(rk3s_controller::Config {
        loops: rk3s_controller::LoopConfig {
            pod_gc_period: 1,
            pod_gc_quarantine: 2,
            ..rk3s_controller::LoopConfig::default()
        },
        ..rk3s_controller::Config::default()
    })
    .await;
    t.kubelet_ready.store(false, Ordering::SeqCst);
    tokio::spawn(scheduler_and_kubelet(t.client.clone()));
    t
}

/// Binds unbound pods to the node their required affinity names (the scheduler's part), marks
/// bound pods Running and Ready and deletes pods whose graceful deletion started (the
/// kubelet's part).
async fn scheduler_and_kubelet(client: kube::Client) {
    let all: Api<Pod> = Api::all(client.clone());
    // With backoff: once the test's apiserver is gone, the watch must not spin (a task that
    // never yields would hold up the test runtime's shutdown).
    let mut events = watcher(all, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(ev) = events.next().await {
        let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = ev else {
            continue;
        };
        let api: Api<Pod> = Api::namespaced(client.clone(), &p.namespace().unwrap());
        let name = p.name_any();
        let spec = p.spec.clone().unwrap();
        if p.metadata.deletion_timestamp.is_some() {
            let _ = api
                .delete(&name, &DeleteParams::default().grace_period(0))
                .await;
            continue;
        }
        match spec.node_name {
            None => {
                let Some(node) = affinity_node(&p) else {
                    continue;
                };
                let binding = json!({"apiVersion": "v1", "kind": "Binding",
                    "metadata": {"name": name}, "target": {"kind": "Node", "name": node}});
                let _ = api
                    .create_subresource::<_, Value>(
                        "binding",
                        &name,
                        &PostParams::default(),
                        &binding,
                    )
                    .await;
            }
            Some(_) if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending") => {
                let now = k8s_openapi::jiff::Timestamp::now().to_string();
                let _ = api
                    .patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": {"phase": "Running", "conditions": [
                            {"type": "Ready", "status": "True", "lastTransitionTime": now}]}})),
                    )
                    .await;
            }
            Some(_) => {}
        }
    }
}

/// Waits for the DaemonSet event `reason` with `message` (type, component, object checked).
async fn ds_event(t: &TestCluster, ds: &str, type_: &str, reason: &str, message: &str) {
    expect_event(
        &t.client,
        "default",
        ("DaemonSet", ds),
        (type_, reason, message),
        "daemonset-controller",
    )
    .await;
}

fn affinity_node(p: &Pod) -> Option<String> {
    let terms = &p
        .spec
        .as_ref()?
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    let f = &terms.first()?.match_fields.as_ref()?[0];
    (f.key == "metadata.name" && f.operator == "In").then(|| f.values.as_ref()?.first().cloned())?
}

async fn add_node(client: &kube::Client, name: &str, labels: Value, taints: Value) {
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": taints}
    }))
    .unwrap();
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .unwrap();
}

fn ds(name: &str, image: &str, extra_template_spec: Value, extra_spec: Value) -> DaemonSet {
    let mut tspec = json!({"containers": [{"name": "c", "image": image}]});
    for (k, v) in extra_template_spec.as_object().unwrap() {
        tspec[k] = v.clone();
    }
    let mut spec = json!({
        "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name}}, "spec": tspec}
    });
    for (k, v) in extra_spec.as_object().unwrap() {
        spec[k] = v.clone();
    }
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

fn ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Node → names of the live daemon pods of `app` bound there.
async fn placement(pods: &Api<Pod>, app: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in pods
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
    {
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_else(|| affinity_node(&p).unwrap_or_default());
        out.entry(node).or_default().push(p.name_any());
    }
    out
}

fn nodes_of(m: &BTreeMap<String, Vec<String>>) -> Vec<&str> {
    m.keys().map(String::as_str).collect()
}

/// Waits for the status to say `desired` pods are scheduled, updated, ready and available.
async fn rolled_out(sets: &Api<DaemonSet>, name: &str, desired: i32) -> DaemonSet {
    eventually(60, "daemonset rolled out", || async {
        let d = sets.get(name).await.ok()?;
        let s = d.status.clone()?;
        (s.observed_generation == d.metadata.generation
            && s.desired_number_scheduled == desired
            && s.current_number_scheduled == desired
            && s.number_ready == desired
            && s.number_available.unwrap_or(0) == desired
            && s.updated_number_scheduled.unwrap_or(0) == desired
            && s.number_misscheduled == 0)
            .then_some(d)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follows_nodes_joining_leaving_and_relabelled() {
    let t = start().await;
    let sets: Api<DaemonSet> = Api::default_namespaced(t.client.clone());
    let pods: Api<Pod> = Api::default_namespaced(t.client.clone());
    let nodes: Api<Node> = Api::all(t.client.clone());
    add_node(&t.client, "n1", json!({"role": "edge"}), json!([])).await;
    add_node(&t.client, "n2", json!({}), json!([])).await;

    sets.create(
        &PostParams::default(),
        &ds("agent", "busybox:1", json!({}), json!({})),
    )
    .await
    .unwrap();
    sets.create(
        &PostParams::default(),
        &ds(
            "edge",
            "busybox:1",
            json!({"nodeSelector": {"role": "edge"}}),
            json!({}),
        ),
    )
    .await
    .unwrap();
    let d = rolled_out(&sets, "agent", 2).await;
    rolled_out(&sets, "edge", 1).await;
    assert_eq!(nodes_of(&placement(&pods, "agent").await), ["n1", "n2"]);
    let edge_on_n1 = placement(&pods, "edge").await;
    assert_eq!(nodes_of(&edge_on_n1), ["n1"]);
    for names in placement(&pods, "agent").await.values() {
        for n in names {
            ds_event(
                &t,
                "agent",
                "Normal",
                "SuccessfulCreate",
                &format!("Created pod: {n}"),
            )
            .await;
        }
    }

    // Each pod: pinned by affinity, the daemon tolerations, the revision and generation labels.
    let revs: Api<ControllerRevision> = Api::default_namespaced(t.client.clone());
    let rev = revs
        .list(&ListParams::default().labels("app=agent"))
        .await
        .unwrap()
        .items;
    assert_eq!(rev.len(), 1);
    assert_eq!(rev[0].revision, 1);
    let hash = rev[0].labels()["controller-revision-hash"].clone();
    assert_eq!(rev[0].name_any(), format!("agent-{hash}"));
    for p in pods
        .list(&ListParams::default().labels("app=agent"))
        .await
        .unwrap()
        .items
    {
        assert_eq!(p.labels()["controller-revision-hash"], hash);
        assert_eq!(
            p.labels()["pod-template-generation"],
            d.metadata.generation.unwrap().to_string()
        );
        assert_eq!(p.metadata.generate_name.as_deref(), Some("agent-"));
        let tol: Vec<(String, String)> = p
            .spec
            .as_ref()
            .unwrap()
            .tolerations
            .clone()
            .unwrap()
            .into_iter()
            .map(|t| (t.key.unwrap_or_default(), t.effect.unwrap_or_default()))
            .collect();
        for (k, e) in [
            ("node.kubernetes.io/not-ready", "NoExecute"),
            ("node.kubernetes.io/unreachable", "NoExecute"),
            ("node.kubernetes.io/disk-pressure", "NoSchedule"),
            ("node.kubernetes.io/memory-pressure", "NoSchedule"),
            ("node.kubernetes.io/pid-pressure", "NoSchedule"),
            ("node.kubernetes.io/unschedulable", "NoSchedule"),
        ] {
            assert!(
                tol.contains(&(k.into(), e.into())),
                "{k} missing in {tol:?}"
            );
        }
        assert!(
            affinity_node(&p).is_some(),
            "pinned by metadata.name affinity"
        );
    }

    // A node joins: it gets a pod. A node leaves: its pod goes (PodGC's orphan collection).
    add_node(&t.client, "n3", json!({}), json!([])).await;
    rolled_out(&sets, "agent", 3).await;
    assert_eq!(
        nodes_of(&placement(&pods, "agent").await),
        ["n1", "n2", "n3"]
    );
    nodes.delete("n2", &DeleteParams::default()).await.unwrap();
    rolled_out(&sets, "agent", 2).await;
    eventually(30, "pod of n2 gone", || async {
        (nodes_of(&placement(&pods, "agent").await) == ["n1", "n3"]).then_some(())
    })
    .await;

    // Labels move the nodeSelector's DaemonSet.
    nodes
        .patch(
            "n3",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"role": "edge"}}})),
        )
        .await
        .unwrap();
    nodes
        .patch(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"role": null}}})),
        )
        .await
        .unwrap();
    rolled_out(&sets, "edge", 1).await;
    eventually(30, "edge pod moved to n3", || async {
        (nodes_of(&placement(&pods, "edge").await) == ["n3"]).then_some(())
    })
    .await;
    ds_event(
        &t,
        "edge",
        "Normal",
        "SuccessfulDelete",
        &format!("Deleted pod: {}", edge_on_n1["n1"][0]),
    )
    .await;

    // A failed daemon pod is deleted (and replaced), with upstream's FailedDaemonPod event.
    let failed = placement(&pods, "agent").await["n1"][0].clone();
    pods.patch_status(
        &failed,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Failed"}})),
    )
    .await
    .unwrap();
    ds_event(
        &t,
        "agent",
        "Warning",
        "FailedDaemonPod",
        &format!("Found failed daemon pod default/{failed} on node n1, will try to kill it"),
    )
    .await;
    ds_event(
        &t,
        "agent",
        "Normal",
        "SuccessfulDelete",
        &format!("Deleted pod: {failed}"),
    )
    .await;
    let out = t.kubectl_ok(&["describe", "daemonset", "agent"]).await;
    assert!(
        out.contains("FailedDaemonPod") && out.contains("daemonset-controller"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn taints_and_tolerations_are_respected() {
    let t = start().await;
    let sets: Api<DaemonSet> = Api::default_namespaced(t.client.clone());
    let pods: Api<Pod> = Api::default_namespaced(t.client.clone());
    let nodes: Api<Node> = Api::all(t.client.clone());
    add_node(&t.client, "plain", json!({}), json!([])).await;
    add_node(
        &t.client,
        "infra",
        json!({}),
        json!([{"key": "dedicated", "value": "infra", "effect": "NoSchedule"}]),
    )
    .await;
    // A cordoned node: daemon pods tolerate the unschedulable taint.
    add_node(
        &t.client,
        "cordoned",
        json!({}),
        json!([{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]),
    )
    .await;

    sets.create(
        &PostParams::default(),
        &ds("plain", "busybox:1", json!({}), json!({})),
    )
    .await
    .unwrap();
    sets.create(
        &PostParams::default(),
        &ds(
            "tolerant",
            "busybox:1",
            json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}]}),
            json!({}),
        ),
    )
    .await
    .unwrap();
    rolled_out(&sets, "plain", 2).await;
    rolled_out(&sets, "tolerant", 3).await;
    assert_eq!(
        nodes_of(&placement(&pods, "plain").await),
        ["cordoned", "plain"]
    );
    assert_eq!(
        nodes_of(&placement(&pods, "tolerant").await),
        ["cordoned", "infra", "plain"]
    );

    // A new NoSchedule taint keeps running pods (they are counted as misscheduled); a
    // NoExecute taint removes them.
    nodes
        .patch(
            "cordoned",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": [
                {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
                {"key": "extra", "effect": "NoSchedule"}]}})),
        )
        .await
        .unwrap();
    nodes
        .patch(
            "plain",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": [{"key": "evict", "value": "now", "effect": "NoExecute"}]}})),
        )
        .await
        .unwrap();
    let d = eventually(30, "status after taints", || async {
        let d = sets.get("plain").await.ok()?;
        let s = d.status.clone()?;
        (s.desired_number_scheduled == 0
            && s.number_misscheduled == 1
            && s.current_number_scheduled == 0)
            .then_some(d)
    })
    .await;
    assert_eq!(d.status.unwrap().number_misscheduled, 1);
    eventually(30, "evicted from the NoExecute node", || async {
        (nodes_of(&placement(&pods, "plain").await) == ["cordoned"]
            && nodes_of(&placement(&pods, "tolerant").await) == ["cordoned", "infra"])
        .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_update_within_max_unavailable_then_surge_and_undo() {
    let t = start().await;
    let sets: Api<DaemonSet> = Api::default_namespaced(t.client.clone());
    let pods: Api<Pod> = Api::default_namespaced(t.client.clone());
    let revs: Api<ControllerRevision> = Api::default_namespaced(t.client.clone());
    for n in ["n1", "n2", "n3"] {
        add_node(&t.client, n, json!({}), json!([])).await;
    }
    sets.create(
        &PostParams::default(),
        &ds("agent", "busybox:1", json!({}), json!({})),
    )
    .await
    .unwrap();
    rolled_out(&sets, "agent", 3).await;
    let rev1 = revs
        .list(&ListParams::default().labels("app=agent"))
        .await
        .unwrap()
        .items[0]
        .name_any();

    // Watch every pod change: nodes with a ready pod never drop below 3 - maxUnavailable (1),
    // and no node ever has two pods without surge.
    let low = Arc::new(Mutex::new((usize::MAX, 0usize)));
    // What the watcher has seen so far (pod name → ready), to know when it has caught up.
    let seen: Arc<Mutex<BTreeMap<String, bool>>> = Arc::default();
    let watch = {
        let low = low.clone();
        let seen = seen.clone();
        let pods = pods.clone();
        tokio::spawn(async move {
            let mut state: BTreeMap<String, Pod> = BTreeMap::new();
            let mut events = watcher(pods, watcher::Config::default().labels("app=agent"))
                .default_backoff()
                .boxed();
            let mut listed = false;
            while let Some(ev) = events.next().await {
                match ev {
                    Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                        state.insert(p.name_any(), p);
                    }
                    Ok(watcher::Event::Delete(p)) => {
                        state.remove(&p.name_any());
                    }
                    Ok(watcher::Event::InitDone) => listed = true,
                    _ => {}
                }
                if !listed {
                    continue;
                }
                let mut ready_nodes = std::collections::BTreeSet::new();
                let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
                for p in state.values() {
                    let node = p
                        .spec
                        .as_ref()
                        .and_then(|s| s.node_name.clone())
                        .unwrap_or_else(|| affinity_node(p).unwrap_or_default());
                    if p.metadata.deletion_timestamp.is_none() {
                        *per_node.entry(node.clone()).or_default() += 1;
                    }
                    if ready(p) {
                        ready_nodes.insert(node);
                    }
                }
                *seen.lock().unwrap() = state.iter().map(|(n, p)| (n.clone(), ready(p))).collect();
                let mut l = low.lock().unwrap();
                l.0 = l.0.min(ready_nodes.len());
                l.1 = l.1.max(per_node.values().copied().max().unwrap_or(0));
            }
        })
    };
    let image = |i: &str| json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": i}]}}}});
    sets.patch(
        "agent",
        &PatchParams::default(),
        &Patch::Strategic(image("busybox:2")),
    )
    .await
    .unwrap();
    let d = rolled_out(&sets, "agent", 3).await;
    let out = t
        .kubectl_ok(&["rollout", "status", "daemonset/agent", "--timeout=30s"])
        .await;
    assert!(out.contains("successfully rolled out"), "{out}");
    let list = pods
        .list(&ListParams::default().labels("app=agent"))
        .await
        .unwrap()
        .items;
    assert_eq!(list.len(), 3);
    let rev2 = format!("agent-{}", list[0].labels()["controller-revision-hash"]);
    assert_ne!(rev2, rev1);
    for p in &list {
        assert_eq!(
            p.spec.as_ref().unwrap().containers[0].image.as_deref(),
            Some("busybox:2")
        );
        assert_eq!(
            p.labels()["pod-template-generation"],
            d.metadata.generation.unwrap().to_string()
        );
    }
    {
        let l = low.lock().unwrap();
        assert!(
            l.0 >= 2,
            "ready nodes dropped to {} (maxUnavailable 1)",
            l.0
        );
        assert_eq!(l.1, 1, "two pods on one node without surge");
    }
    let hist = t
        .kubectl_ok(&["rollout", "history", "daemonset/agent"])
        .await;
    assert!(hist.contains('1') && hist.contains('2'), "{hist}");

    // Undo: revision 1's template comes back, as revision 3.
    t.kubectl_ok(&["rollout", "undo", "daemonset/agent"]).await;
    eventually(60, "rolled back", || async {
        let list = pods
            .list(&ListParams::default().labels("app=agent"))
            .await
            .ok()?
            .items;
        (list.len() == 3
            && list.iter().all(|p| {
                ready(p)
                    && p.spec.as_ref().unwrap().containers[0].image.as_deref() == Some("busybox:1")
            }))
        .then_some(())
    })
    .await;
    rolled_out(&sets, "agent", 3).await;
    assert_eq!(revs.get(&rev1).await.unwrap().revision, 3);

    // With maxSurge 1 and maxUnavailable 0, a new pod starts beside the old one, and every
    // node keeps a ready pod throughout. The watcher must have caught up with the rollback
    // first, or its late events would count against the surge rollout.
    eventually(60, "the watcher saw the rollback", || async {
        let list = pods
            .list(&ListParams::default().labels("app=agent"))
            .await
            .ok()?
            .items;
        let now: BTreeMap<String, bool> = list.iter().map(|p| (p.name_any(), ready(p))).collect();
        (*seen.lock().unwrap() == now).then_some(())
    })
    .await;
    *low.lock().unwrap() = (usize::MAX, 0);
    sets.patch(
        "agent",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"updateStrategy": {"type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}}})),
    )
    .await
    .unwrap();
    sets.patch(
        "agent",
        &PatchParams::default(),
        &Patch::Strategic(image("busybox:3")),
    )
    .await
    .unwrap();
    rolled_out(&sets, "agent", 3).await;
    eventually(60, "surge rollout done", || async {
        let list = pods
            .list(&ListParams::default().labels("app=agent"))
            .await
            .ok()?
            .items;
        (list.len() == 3
            && list.iter().all(|p| {
                p.spec.as_ref().unwrap().containers[0].image.as_deref() == Some("busybox:3")
            }))
        .then_some(())
    })
    .await;
    {
        let l = low.lock().unwrap();
        assert_eq!(l.0, 3, "a node lost its ready pod during a surge rollout");
        assert_eq!(l.1, 2, "surge never put a second pod on a node");
    }
    watch.abort();
}
