//! The StatefulSet controller against a real in-process apiserver, with kubectl's rollout
//! commands.
//!
//! No kubelet exists in these tests: the harness's kubelet stand-in marks pods Running and
//! Ready, or, where the point is *when* a pod becomes ready, the stand-in is off and the test
//! itself plays the kubelet by patching the pod's status. No scheduler runs either: the pods
//! stay unbound, which the StatefulSet controller does not care about.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use common::{TestCluster, eventually, expect_event};
use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::ResourceExt as _;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::{Value, json};

fn sts(name: &str, replicas: i32, image: &str, extra_spec: Value) -> StatefulSet {
    let mut spec = json!({
        "replicas": replicas,
        "serviceName": name,
        "selector": {"matchLabels": {"app": name}},
        "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {"containers": [{"name": "c", "image": image}]}
        }
    });
    for (k, v) in extra_spec.as_object().unwrap() {
        spec[k] = v.clone();
    }
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

/// Waits for the StatefulSet event `reason` with `message` (type, component, object checked).
async fn set_event(t: &TestCluster, set: &str, type_: &str, reason: &str, message: &str) {
    expect_event(
        &t.client,
        "default",
        ("StatefulSet", set),
        (type_, reason, message),
        "statefulset-controller",
    )
    .await;
}

fn claim_template() -> Value {
    json!([{
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }])
}

fn ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn image_of(p: &Pod) -> String {
    p.spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap_or_default()
}

/// What a watch of the set's pods saw, in order.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Added(String),
    Ready(String),
    Terminating(String),
    Deleted(String),
}

/// Records every pod event with label `app=<app>` from now on (returns once the watch has
/// listed what exists).
async fn record(
    client: &kube::Client,
    app: &str,
) -> (Arc<Mutex<Vec<Seen>>>, tokio::task::JoinHandle<()>) {
    let log: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let (init_tx, init_rx) = tokio::sync::oneshot::channel::<()>();
    let mut init_tx = Some(init_tx);
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let cfg = watcher::Config::default().labels(&format!("app={app}"));
    let l = log.clone();
    let h = tokio::spawn(async move {
        let mut known: std::collections::HashMap<String, (bool, bool)> = Default::default();
        let mut events = watcher(pods, cfg).default_backoff().boxed();
        while let Some(ev) = events.next().await {
            let mut log = l.lock().unwrap();
            match ev {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                    let name = p.name_any();
                    let entry = known.entry(name.clone()).or_insert_with(|| {
                        log.push(Seen::Added(name.clone()));
                        (false, false)
                    });
                    if ready(&p) && !entry.0 {
                        entry.0 = true;
                        log.push(Seen::Ready(name.clone()));
                    }
                    if p.metadata.deletion_timestamp.is_some() && !entry.1 {
                        entry.1 = true;
                        log.push(Seen::Terminating(name.clone()));
                    }
                }
                Ok(watcher::Event::Delete(p)) => {
                    known.remove(&p.name_any());
                    log.push(Seen::Deleted(p.name_any()));
                }
                Ok(watcher::Event::InitDone) => {
                    if let Some(tx) = init_tx.take() {
                        let _ = tx.send(());
                    }
                }
                _ => {}
            }
        }
    });
    init_rx.await.expect("pod watch starts");
    (log, h)
}

fn position(log: &[Seen], what: &Seen) -> usize {
    log.iter()
        .position(|s| s == what)
        .unwrap_or_else(|| panic!("{what:?} never seen in {log:?}"))
}

/// The first event that starts the removal of `name` (terminating or deleted).
fn removal_starts(log: &[Seen], name: &str) -> usize {
    log.iter()
        .position(|s| matches!(s, Seen::Terminating(n) | Seen::Deleted(n) if n == name))
        .unwrap_or_else(|| panic!("{name} never removed in {log:?}"))
}

async fn settled(sets: &Api<StatefulSet>, name: &str, replicas: i32) -> StatefulSet {
    eventually(60, "statefulset settled", || async {
        let s = sets.get(name).await.ok()?;
        let st = s.status.clone()?;
        (st.observed_generation == s.metadata.generation
            && st.replicas == replicas
            && st.ready_replicas.unwrap_or(0) == replicas
            && st.updated_replicas.unwrap_or(0) == replicas
            && st.current_replicas.unwrap_or(0) == replicas
            && st.current_revision.is_some()
            && st.current_revision == st.update_revision)
            .then_some(s)
    })
    .await
}

async fn pod_names(pods: &Api<Pod>, app: &str) -> Vec<String> {
    let mut names: Vec<String> = pods
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ordered_creation_identity_claims_and_reverse_scale_down() {
    let t = TestCluster::start().await;
    let sets: Api<StatefulSet> = Api::default_namespaced(t.client.clone());
    let pods: Api<Pod> = Api::default_namespaced(t.client.clone());
    let claims: Api<PersistentVolumeClaim> = Api::default_namespaced(t.client.clone());
    let (log, watch) = record(&t.client, "web").await;

    sets.create(
        &PostParams::default(),
        &sts(
            "web",
            3,
            "busybox:1",
            json!({"volumeClaimTemplates": claim_template()}),
        ),
    )
    .await
    .unwrap();
    let s = settled(&sets, "web", 3).await;
    let revision = s.status.unwrap().update_revision.unwrap();
    assert!(revision.starts_with("web-"), "{revision}");
    assert_eq!(pod_names(&pods, "web").await, ["web-0", "web-1", "web-2"]);

    // Each pod was created only after its predecessor was seen ready (OrderedReady).
    {
        let log = log.lock().unwrap();
        for k in 1..3 {
            let added = position(&log, &Seen::Added(format!("web-{k}")));
            let prev_ready = position(&log, &Seen::Ready(format!("web-{}", k - 1)));
            assert!(
                prev_ready < added,
                "web-{k} created before web-{} was ready: {log:?}",
                k - 1
            );
        }
    }

    // Stable identity, revision label, and a claim per pod.
    for k in 0..3 {
        let p = pods.get(&format!("web-{k}")).await.unwrap();
        let l = p.labels();
        assert_eq!(l["statefulset.kubernetes.io/pod-name"], format!("web-{k}"));
        assert_eq!(l["apps.kubernetes.io/pod-index"], k.to_string());
        assert_eq!(l["controller-revision-hash"], revision);
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.hostname.as_deref(), Some(format!("web-{k}").as_str()));
        assert_eq!(spec.subdomain.as_deref(), Some("web"));
        let vol = spec
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "data")
            .unwrap();
        assert_eq!(
            vol.persistent_volume_claim.as_ref().unwrap().claim_name,
            format!("data-web-{k}")
        );
        let owner = p.owner_references()[0].clone();
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("StatefulSet", Some(true))
        );
        let c = claims.get(&format!("data-web-{k}")).await.unwrap();
        assert_eq!(c.labels()["app"], "web");
        assert!(c.owner_references().is_empty(), "Retain policy: no owners");
    }
    // The revision exists, owned by the set, labelled for the set's selector.
    let revs: Api<ControllerRevision> = Api::default_namespaced(t.client.clone());
    let rev = revs.get(&revision).await.unwrap();
    assert_eq!(rev.revision, 1);
    assert_eq!(rev.labels()["app"], "web");

    // Scale down through kubectl: highest ordinal first, one at a time.
    t.kubectl_ok(&["scale", "statefulset/web", "--replicas=1"])
        .await;
    settled(&sets, "web", 1).await;
    eventually(30, "pods gone", || async {
        (pod_names(&pods, "web").await == ["web-0"]).then_some(())
    })
    .await;
    {
        let log = log.lock().unwrap();
        let gone2 = position(&log, &Seen::Deleted("web-2".into()));
        assert!(
            gone2 < removal_starts(&log, "web-1"),
            "web-1 removed before web-2 was gone: {log:?}"
        );
    }
    // Retained claims survive the scale-down and are reused on the way back up.
    claims.get("data-web-2").await.unwrap();
    t.kubectl_ok(&["scale", "statefulset/web", "--replicas=3"])
        .await;
    settled(&sets, "web", 3).await;
    let p2 = pods.get("web-2").await.unwrap();
    let vol = p2.spec.unwrap().volumes.unwrap();
    assert!(vol.iter().any(|v| {
        v.persistent_volume_claim
            .as_ref()
            .is_some_and(|c| c.claim_name == "data-web-2")
    }));
    watch.abort();

    // Upstream's events, as `kubectl describe statefulset` lists them.
    for k in 0..3 {
        set_event(
            &t,
            "web",
            "Normal",
            "SuccessfulCreate",
            &format!("create Claim data-web-{k} Pod web-{k} in StatefulSet web success"),
        )
        .await;
        set_event(
            &t,
            "web",
            "Normal",
            "SuccessfulCreate",
            &format!("create Pod web-{k} in StatefulSet web successful"),
        )
        .await;
    }
    for k in 1..3 {
        set_event(
            &t,
            "web",
            "Normal",
            "SuccessfulDelete",
            &format!("delete Pod web-{k} in StatefulSet web successful"),
        )
        .await;
    }
    let out = t.kubectl_ok(&["describe", "statefulset", "web"]).await;
    assert!(
        out.contains("create Pod web-2 in StatefulSet web successful")
            && out.contains("statefulset-controller"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ordered_ready_waits_and_parallel_does_not() {
    let t = TestCluster::start().await;
    // The stand-in is off: this test is the kubelet and decides when pods are ready.
    t.kubelet_ready.store(false, Ordering::SeqCst);
    let sets: Api<StatefulSet> = Api::default_namespaced(t.client.clone());
    let pods: Api<Pod> = Api::default_namespaced(t.client.clone());

    sets.create(
        &PostParams::default(),
        &sts("ord", 3, "busybox:1", json!({})),
    )
    .await
    .unwrap();
    eventually(30, "ord-0", || async {
        pods.get_opt("ord-0").await.unwrap()
    })
    .await;
    // A Parallel set makes all its pods at once, none of them ready.
    sets.create(
        &PostParams::default(),
        &sts(
            "par",
            3,
            "busybox:1",
            json!({"podManagementPolicy": "Parallel"}),
        ),
    )
    .await
    .unwrap();
    eventually(30, "all parallel pods", || async {
        (pod_names(&pods, "par").await.len() == 3).then_some(())
    })
    .await;
    // Meanwhile the OrderedReady set still waits for ord-0 to become ready.
    assert_eq!(pod_names(&pods, "ord").await, ["ord-0"]);
    let s = sets.get("ord").await.unwrap().status.unwrap();
    assert_eq!((s.replicas, s.ready_replicas.unwrap_or(0)), (1, 0));

    // The kubelet's part: ord-0 runs and is ready; then ord-1 comes.
    mark_ready(&pods, "ord-0").await;
    eventually(30, "ord-1", || async {
        pods.get_opt("ord-1").await.unwrap()
    })
    .await;
    assert!(
        pods.get_opt("ord-2").await.unwrap().is_none(),
        "ord-2 before ord-1 is ready"
    );
    mark_ready(&pods, "ord-1").await;
    eventually(30, "ord-2", || async {
        pods.get_opt("ord-2").await.unwrap()
    })
    .await;
}

async fn mark_ready(pods: &Api<Pod>, name: &str) {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": now}]}})),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_update_with_partition_then_rollback() {
    let t = TestCluster::start().await;
    let sets: Api<StatefulSet> = Api::default_namespaced(t.client.clone());
    let pods: Api<Pod> = Api::default_namespaced(t.client.clone());
    let revs: Api<ControllerRevision> = Api::default_namespaced(t.client.clone());
    sets.create(
        &PostParams::default(),
        &sts(
            "web",
            3,
            "busybox:1",
            json!({"updateStrategy": {
            "type": "RollingUpdate", "rollingUpdate": {"partition": 2}}}),
        ),
    )
    .await
    .unwrap();
    let rev1 = settled(&sets, "web", 3)
        .await
        .status
        .unwrap()
        .update_revision
        .unwrap();
    let (log, watch) = record(&t.client, "web").await;

    // A new image with partition 2: only web-2 is updated; the current revision stays.
    let image = |i: &str| json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": i}]}}}});
    sets.patch(
        "web",
        &PatchParams::default(),
        &Patch::Strategic(image("busybox:2")),
    )
    .await
    .unwrap();
    let s = eventually(60, "partitioned update", || async {
        let s = sets.get("web").await.ok()?;
        let st = s.status.clone()?;
        (st.observed_generation == s.metadata.generation
            && st.updated_replicas == Some(1)
            && st.ready_replicas == Some(3))
        .then_some(st)
    })
    .await;
    let rev2 = s.update_revision.unwrap();
    assert_ne!(rev2, rev1);
    assert_eq!(s.current_revision.as_deref(), Some(rev1.as_str()));
    assert_eq!(s.current_replicas, Some(2));
    let images: Vec<String> = {
        let mut v = Vec::new();
        for k in 0..3 {
            v.push(image_of(&pods.get(&format!("web-{k}")).await.unwrap()));
        }
        v
    };
    assert_eq!(images, ["busybox:1", "busybox:1", "busybox:2"]);
    let out = t
        .kubectl_ok(&["rollout", "status", "statefulset/web", "--timeout=30s"])
        .await;
    assert!(
        out.contains("partitioned roll out complete: 1 new pods have been updated"),
        "{out}"
    );

    // Partition 0: the rest follows, highest ordinal first; the update becomes current.
    sets.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"updateStrategy": {"rollingUpdate": {"partition": 0}}}})),
    )
    .await
    .unwrap();
    let s = settled(&sets, "web", 3).await.status.unwrap();
    assert_eq!(s.current_revision.as_deref(), Some(rev2.as_str()));
    for k in 0..3 {
        assert_eq!(
            image_of(&pods.get(&format!("web-{k}")).await.unwrap()),
            "busybox:2"
        );
    }
    {
        let log = log.lock().unwrap();
        assert!(
            removal_starts(&log, "web-2") < removal_starts(&log, "web-1"),
            "{log:?}"
        );
        // web-0 goes only after the new web-1 is ready.
        let gone1 = position(&log, &Seen::Deleted("web-1".into()));
        let ready1 = log
            .iter()
            .enumerate()
            .position(|(i, s)| i > gone1 && *s == Seen::Ready("web-1".into()))
            .unwrap();
        assert!(ready1 < removal_starts(&log, "web-0"), "{log:?}");
    }
    let out = t
        .kubectl_ok(&["rollout", "status", "statefulset/web", "--timeout=30s"])
        .await;
    assert!(
        out.contains("partitioned roll out complete: 3 new pods"),
        "{out}"
    );
    let hist = t
        .kubectl_ok(&["rollout", "history", "statefulset/web"])
        .await;
    assert!(hist.contains('1') && hist.contains('2'), "{hist}");
    // kubectl shows a revision's template by applying the revision's patch.
    let one = t
        .kubectl_ok(&["rollout", "history", "statefulset/web", "--revision=1"])
        .await;
    assert!(
        one.contains("busybox:1") && !one.contains("busybox:2"),
        "{one}"
    );

    // kubectl rollout undo puts revision 1's template back; that revision becomes number 3.
    t.kubectl_ok(&["rollout", "undo", "statefulset/web"]).await;
    let s = eventually(60, "rolled back", || async {
        let s = sets.get("web").await.ok()?;
        let st = s.status.clone()?;
        (st.observed_generation == s.metadata.generation
            && st.update_revision.as_deref() == Some(rev1.as_str())
            && st.current_revision.as_deref() == Some(rev1.as_str())
            && st.ready_replicas == Some(3)
            && st.updated_replicas == Some(3))
        .then_some(st)
    })
    .await;
    assert_eq!(s.current_replicas, Some(3));
    for k in 0..3 {
        assert_eq!(
            image_of(&pods.get(&format!("web-{k}")).await.unwrap()),
            "busybox:1"
        );
    }
    assert_eq!(revs.get(&rev1).await.unwrap().revision, 3);
    assert_eq!(revs.get(&rev2).await.unwrap().revision, 2);
    let hist = t
        .kubectl_ok(&["rollout", "history", "statefulset/web"])
        .await;
    assert!(hist.contains('2') && hist.contains('3'), "{hist}");
    watch.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_follow_the_retention_policy() {
    let t = TestCluster::start().await;
    let sets: Api<StatefulSet> = Api::default_namespaced(t.client.clone());
    let claims: Api<PersistentVolumeClaim> = Api::default_namespaced(t.client.clone());
    sets.create(
        &PostParams::default(),
        &sts("db", 3, "busybox:1", json!({
            "volumeClaimTemplates": claim_template(),
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Delete"}
        })),
    )
    .await
    .unwrap();
    let s = settled(&sets, "db", 3).await;
    let set_uid = s.uid().unwrap();
    // whenDeleted=Delete: each claim is controlled by the set.
    for k in 0..3 {
        let name = format!("data-db-{k}");
        eventually(30, "claim owned by the set", || async {
            let c = claims.get(&name).await.ok()?;
            c.owner_references()
                .iter()
                .any(|r| r.uid == set_uid && r.controller == Some(true))
                .then_some(())
        })
        .await;
    }
    // whenScaled=Delete: claims of removed pods go (the garbage collector follows the pod).
    sets.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await
    .unwrap();
    for k in [1, 2] {
        let name = format!("data-db-{k}");
        eventually(60, "scaled-away claim deleted", || async {
            claims.get_opt(&name).await.unwrap().is_none().then_some(())
        })
        .await;
    }
    let c0 = claims.get("data-db-0").await.unwrap();
    assert!(c0.owner_references().iter().any(|r| r.uid == set_uid));
    // Deleting the set deletes the remaining claim.
    t.kubectl_ok(&["delete", "statefulset/db"]).await;
    eventually(60, "claim deleted with the set", || async {
        claims
            .get_opt("data-db-0")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    // The garbage collector takes the set's pods and revisions.
    let pods: Api<Pod> = Api::default_namespaced(t.client.clone());
    let revs: Api<ControllerRevision> = Api::default_namespaced(t.client.clone());
    eventually(60, "pods and revisions collected", || async {
        let p = pods
            .list(&ListParams::default().labels("app=db"))
            .await
            .ok()?;
        let r = revs
            .list(&ListParams::default().labels("app=db"))
            .await
            .ok()?;
        (p.items.is_empty() && r.items.is_empty()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_delete_updates_only_deleted_pods_and_failed_pods_are_remade() {
    let t = TestCluster::start().await;
    let sets: Api<StatefulSet> = Api::default_namespaced(t.client.clone());
    let pods: Api<Pod> = Api::default_namespaced(t.client.clone());
    sets.create(
        &PostParams::default(),
        &sts(
            "od",
            2,
            "busybox:1",
            json!({"updateStrategy": {"type": "OnDelete"}}),
        ),
    )
    .await
    .unwrap();
    settled(&sets, "od", 2).await;
    let image = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox:2"}]}}}});
    sets.patch("od", &PatchParams::default(), &Patch::Strategic(image))
        .await
        .unwrap();
    let st = eventually(30, "new update revision", || async {
        let s = sets.get("od").await.ok()?;
        let st = s.status.clone()?;
        (st.observed_generation == s.metadata.generation
            && st.update_revision != st.current_revision)
            .then_some(st)
    })
    .await;
    assert_eq!(
        (st.updated_replicas.unwrap_or(0), st.current_replicas),
        (0, Some(2))
    );
    // OnDelete: nothing is replaced until someone deletes a pod.
    for k in 0..2 {
        assert_eq!(
            image_of(&pods.get(&format!("od-{k}")).await.unwrap()),
            "busybox:1"
        );
    }
    let old_uid = pods.get("od-1").await.unwrap().uid();
    pods.delete("od-1", &Default::default()).await.unwrap();
    let p = eventually(30, "od-1 remade at the update revision", || async {
        let p = pods.get_opt("od-1").await.ok()??;
        (p.uid() != old_uid && ready(&p)).then_some(p)
    })
    .await;
    assert_eq!(image_of(&p), "busybox:2");
    assert_eq!(image_of(&pods.get("od-0").await.unwrap()), "busybox:1");

    // A member that failed is deleted and made again (upstream's RecreatingFailedPod).
    let old_uid = pods.get("od-0").await.unwrap().uid();
    pods.patch_status(
        "od-0",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Failed"}})),
    )
    .await
    .unwrap();
    eventually(30, "failed od-0 remade", || async {
        let p = pods.get_opt("od-0").await.ok()??;
        (p.uid() != old_uid && ready(&p)).then_some(())
    })
    .await;
    set_event(
        &t,
        "od",
        "Warning",
        "RecreatingFailedPod",
        "StatefulSet default/od is recreating failed Pod od-0",
    )
    .await;
    set_event(
        &t,
        "od",
        "Normal",
        "SuccessfulDelete",
        "delete Pod od-0 in StatefulSet od successful",
    )
    .await;
}
