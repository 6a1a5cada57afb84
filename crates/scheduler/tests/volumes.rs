//! VolumeBinding against a real in-process apiserver, with the real PV binder of
//! rk3s-controller (a dev-dependency: the binder finishes what the scheduler pre-binds, as
//! upstream's pair does). The scheduler runs as `system:kube-scheduler`, so its RBAC
//! (`system:kube-scheduler` + `system:volume-scheduler`) is exercised too.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// Fields drop in order: the scheduler and the binder stop before the apiserver.
struct Cluster {
    c: kube::Client,
    _scheduler: RunningScheduler,
    _binder: RunningScheduler,
    _t: TestServer,
}

/// Apiserver, nodes (`name`, labels), the scheduler as `system:kube-scheduler` and the PV
/// binder.
async fn start(nodes: &[(&str, Value)]) -> Cluster {
    let t = TestServer::start().await;
    let c = t.client().await;
    for (name, labels) in nodes {
        make_node(&c, name, "4", labels.clone(), json!([])).await;
    }
    let sched_client = t
        .apiserver
        .client_as("system:kube-scheduler", &[])
        .await
        .unwrap();
    let scheduler = start_scheduler(&sched_client);
    let config = rk3s_controller::Config {
        controllers: vec!["persistentvolume-binder".into()],
        leader_elect: false,
        secure_port: 0,
        ..rk3s_controller::Config::default()
    };
    let cc = c.clone();
    let binder = RunningScheduler::spawn(async move {
        rk3s_controller::run(config, cc, std::future::pending())
            .await
            .unwrap();
    });
    Cluster {
        c,
        _scheduler: scheduler,
        _binder: binder,
        _t: t,
    }
}

fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

async fn make_pv(c: &kube::Client, name: &str, size: &str, extra: Value) {
    let mut v = json!({
        "metadata": {"name": name},
        "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
                 "hostPath": {"path": "/mnt/disks/vol"}},
    });
    merge(&mut v, extra);
    let pv: PersistentVolume = serde_json::from_value(v).unwrap();
    let api = Api::<PersistentVolume>::all(c.clone());
    api.create(&PostParams::default(), &pv).await.unwrap();
    // A new volume is `Pending` until the binder has seen it (then `Available`, or `Bound`
    // when pre-bound or taken at once); the scheduler matches only `Available` ones, as
    // upstream's, so the tests wait for the binder as upstream's do.
    eventually(&format!("volume {name} seen by the binder"), || async {
        let phase = api.get(name).await.ok()?.status?.phase?;
        (phase != "Pending").then_some(())
    })
    .await;
}

async fn make_pvc(c: &kube::Client, name: &str, size: &str, extra: Value) {
    let mut v = json!({
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}},
    });
    merge(&mut v, extra);
    let pvc: PersistentVolumeClaim = serde_json::from_value(v).unwrap();
    Api::<PersistentVolumeClaim>::namespaced(c.clone(), "default")
        .create(&PostParams::default(), &pvc)
        .await
        .unwrap();
}

async fn make_class(c: &kube::Client, name: &str, provisioner: &str, mode: &str) {
    let sc: StorageClass = serde_json::from_value(json!({
        "metadata": {"name": name}, "provisioner": provisioner, "volumeBindingMode": mode,
    }))
    .unwrap();
    Api::<StorageClass>::all(c.clone())
        .create(&PostParams::default(), &sc)
        .await
        .unwrap();
}

/// A required node affinity on `key In [value]`.
fn affinity(key: &str, value: &str) -> Value {
    json!({"spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
        {"key": key, "operator": "In", "values": [value]}]}]}}}})
}

fn on_host(node: &str) -> Value {
    affinity("kubernetes.io/hostname", node)
}

async fn claim_pod(c: &kube::Client, name: &str, claims: &[&str], extra: Value) {
    let vols: Vec<Value> = claims
        .iter()
        .map(|n| json!({"name": n, "persistentVolumeClaim": {"claimName": n}}))
        .collect();
    let mut spec = json!({"volumes": vols});
    merge(&mut spec, extra);
    make_pod(c, name, json!({}), spec).await;
}

async fn claim(c: &kube::Client, name: &str) -> PersistentVolumeClaim {
    Api::<PersistentVolumeClaim>::namespaced(c.clone(), "default")
        .get(name)
        .await
        .unwrap()
}

/// Waits until the binder has bound the claim; returns its volume.
async fn bound_volume(c: &kube::Client, name: &str) -> String {
    eventually(&format!("claim {name} bound"), || async {
        let pvc = claim(c, name).await;
        let phase = pvc.status.as_ref()?.phase.as_deref()?;
        (phase == "Bound").then(|| pvc.spec?.volume_name)?
    })
    .await
}

fn annotation(meta: &kube::core::ObjectMeta, key: &str) -> Option<String> {
    meta.annotations.as_ref()?.get(key).cloned()
}

const NOT_HELPFUL: &str = "Preemption is not helpful for scheduling.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_local_volume_pins_the_pod_to_its_node() {
    let k = start(&[("n1", json!({})), ("n2", json!({}))]).await;
    let c = &k.c;
    // Immediate binding (no class): the binder binds the claims before any pod exists.
    make_pv(c, "local-n2", "1Gi", on_host("n2")).await;
    make_pvc(c, "data", "1Gi", json!({})).await;
    assert_eq!(bound_volume(c, "data").await, "local-n2");
    claim_pod(c, "p", &["data"], json!({})).await;
    assert_eq!(wait_bound(c, &["p"]).await, vec!["n2"]);

    // The volume's node cannot take the pod: the other nodes are not even looked at
    // (upstream's PreFilterResult), and the message says so.
    make_node(
        c,
        "n3",
        "4",
        json!({}),
        json!([{"key": "k", "value": "v", "effect": "NoSchedule"}]),
    )
    .await;
    make_pv(c, "local-n3", "1Gi", on_host("n3")).await;
    make_pvc(c, "data3", "1Gi", json!({})).await;
    assert_eq!(bound_volume(c, "data3").await, "local-n3");
    claim_pod(c, "q", &["data3"], json!({})).await;
    wait_unschedulable(
        c,
        "q",
        &format!(
            "0/3 nodes are available: 1 node(s) had untolerated taint {{k: v}}, \
             2 node(s) didn't satisfy plugin(s) [VolumeBinding]. preemption: 0/3 nodes are \
             available: 3 {NOT_HELPFUL}"
        ),
    )
    .await;
    assert_eq!(node_of(c, "q").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_node_affinity_conflict_then_the_node_is_uncordoned() {
    let k = start(&[
        ("a1", json!({"topology.kubernetes.io/zone": "a"})),
        ("a2", json!({"topology.kubernetes.io/zone": "a"})),
    ])
    .await;
    let c = &k.c;
    make_node_with_spec(
        c,
        "b1",
        "4",
        json!({"topology.kubernetes.io/zone": "b"}),
        json!({"unschedulable": true}),
    )
    .await;
    make_pv(
        c,
        "zonal",
        "1Gi",
        affinity("topology.kubernetes.io/zone", "b"),
    )
    .await;
    make_pvc(c, "data", "1Gi", json!({})).await;
    assert_eq!(bound_volume(c, "data").await, "zonal");
    claim_pod(c, "p", &["data"], json!({})).await;
    let msg = format!(
        "0/3 nodes are available: 1 node(s) were unschedulable, 2 node(s) had volume node \
         affinity conflict. preemption: 0/3 nodes are available: 3 {NOT_HELPFUL}"
    );
    wait_unschedulable(c, "p", &msg).await;
    eventually("FailedScheduling event", || async {
        events_for(c, "p").await.into_iter().find(|e| {
            e.reason.as_deref() == Some("FailedScheduling")
                && e.message.as_deref() == Some(msg.as_str())
        })
    })
    .await;
    // Uncordoned: the zone's node takes it.
    Api::<Node>::all(c.clone())
        .patch(
            "b1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": false}})),
        )
        .await
        .unwrap();
    assert_eq!(wait_bound(c, &["p"]).await, vec!["b1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_first_consumer_static_volumes_are_bound_through_the_scheduler() {
    let k = start(&[("n1", json!({})), ("n2", json!({}))]).await;
    let c = &k.c;
    make_class(
        c,
        "local",
        "kubernetes.io/no-provisioner",
        "WaitForFirstConsumer",
    )
    .await;
    let local = |node: &str| {
        let mut v = on_host(node);
        merge(&mut v, json!({"spec": {"storageClassName": "local"}}));
        v
    };
    make_pv(c, "small-n1", "1Gi", local("n1")).await;
    make_pv(c, "big-n2", "5Gi", local("n2")).await;
    make_pv(c, "huge-n2", "50Gi", local("n2")).await;
    let wffc = json!({"spec": {"storageClassName": "local"}});
    // Only n2 has a volume big enough; of its two, the smaller is taken.
    make_pvc(c, "web", "2Gi", wffc.clone()).await;
    claim_pod(c, "p", &["web"], json!({})).await;
    assert_eq!(wait_bound(c, &["p"]).await, vec!["n2"]);
    // The pod is bound only once the binder has bound the claim (PreBind waits for it).
    let pvc = claim(c, "web").await;
    assert_eq!(
        pvc.spec.as_ref().unwrap().volume_name.as_deref(),
        Some("big-n2")
    );
    assert_eq!(
        annotation(&pvc.metadata, "pv.kubernetes.io/bind-completed").as_deref(),
        Some("yes")
    );
    let pv = Api::<PersistentVolume>::all(c.clone())
        .get("big-n2")
        .await
        .unwrap();
    let r = pv.spec.as_ref().unwrap().claim_ref.as_ref().unwrap();
    assert_eq!(r.name.as_deref(), Some("web"));
    assert_eq!(r.uid, pvc.metadata.uid);
    assert_eq!(
        annotation(&pv.metadata, "pv.kubernetes.io/bound-by-controller").as_deref(),
        Some("yes")
    );
    // A claim too big for every volume left, with a class that cannot provision.
    make_pvc(c, "too-big", "100Gi", wffc.clone()).await;
    claim_pod(c, "q", &["too-big"], json!({})).await;
    wait_unschedulable(
        c,
        "q",
        &format!(
            "0/2 nodes are available: 2 node(s) didn't find available persistent volumes to \
             bind. preemption: 0/2 nodes are available: 2 {NOT_HELPFUL}"
        ),
    )
    .await;
    // The binder leaves it alone: it waits for its consumer to be scheduled.
    assert_eq!(
        claim(c, "too-big").await.spec.and_then(|s| s.volume_name),
        None
    );
    // A volume that fits appears: the waiting pod is tried again and gets it.
    make_pv(c, "new-n1", "100Gi", local("n1")).await;
    assert_eq!(wait_bound(c, &["q"]).await, vec!["n1"]);
    assert_eq!(bound_volume(c, "too-big").await, "new-n1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_provisioning_selects_the_node_then_waits_for_the_volume() {
    let k = start(&[("n1", json!({})), ("n2", json!({"disk": "ssd"}))]).await;
    let c = &k.c;
    make_class(
        c,
        "local-path",
        "rancher.io/local-path",
        "WaitForFirstConsumer",
    )
    .await;
    make_pvc(
        c,
        "cache",
        "1Gi",
        json!({"spec": {"storageClassName": "local-path"}}),
    )
    .await;
    claim_pod(c, "p", &["cache"], json!({"nodeSelector": {"disk": "ssd"}})).await;
    // The scheduler picks n2 for the claim; the binder hands it to the external provisioner.
    let pvc = eventually("provisioner annotation", || async {
        let pvc = claim(c, "cache").await;
        annotation(&pvc.metadata, "volume.kubernetes.io/storage-provisioner").map(|_| pvc)
    })
    .await;
    assert_eq!(
        annotation(&pvc.metadata, "volume.kubernetes.io/selected-node").as_deref(),
        Some("n2")
    );
    // Nothing provisioned yet: the pod is not bound (PreBind is waiting).
    assert_eq!(node_of(c, "p").await, None);
    // The provisioner's volume, pre-bound to the claim: the binder binds it, then the pod.
    let mut extra = on_host("n2");
    merge(
        &mut extra,
        json!({"metadata": {"annotations": {"pv.kubernetes.io/provisioned-by": "rancher.io/local-path"}},
               "spec": {"storageClassName": "local-path", "persistentVolumeReclaimPolicy": "Delete",
                        "claimRef": {"namespace": "default", "name": "cache", "uid": pvc.metadata.uid}}}),
    );
    make_pv(c, "pvc-cache", "1Gi", extra).await;
    assert_eq!(wait_bound(c, &["p"]).await, vec!["n2"]);
    assert_eq!(bound_volume(c, "cache").await, "pvc-cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_unbound_immediate_claims_keep_the_pod_pending_until_bound() {
    let k = start(&[("n1", json!({}))]).await;
    let c = &k.c;
    // A claim that does not exist.
    claim_pod(c, "p", &["nope"], json!({})).await;
    wait_unschedulable(
        c,
        "p",
        &format!(
            "0/1 nodes are available: persistentvolumeclaim \"nope\" not found. preemption: \
             0/1 nodes are available: 1 {NOT_HELPFUL}"
        ),
    )
    .await;
    // An Immediate class with no volume to bind to.
    make_class(c, "standard", "example.com/none", "Immediate").await;
    make_pvc(
        c,
        "slow",
        "1Gi",
        json!({"spec": {"storageClassName": "standard"}}),
    )
    .await;
    claim_pod(c, "q", &["slow"], json!({})).await;
    wait_unschedulable(
        c,
        "q",
        &format!(
            "0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims. \
             preemption: 0/1 nodes are available: 1 {NOT_HELPFUL}"
        ),
    )
    .await;
    assert_eq!(node_of(c, "q").await, None);
    // The binder binds it once a volume exists; the claim's update brings the pod back.
    make_pv(
        c,
        "std",
        "1Gi",
        json!({"spec": {"storageClassName": "standard"}}),
    )
    .await;
    assert_eq!(bound_volume(c, "slow").await, "std");
    assert_eq!(wait_bound(c, &["q"]).await, vec!["n1"]);
    // The missing claim appears (and is bound): the first pod is scheduled too.
    make_pv(c, "plain", "1Gi", json!({})).await;
    make_pvc(c, "nope", "1Gi", json!({})).await;
    assert_eq!(bound_volume(c, "nope").await, "plain");
    assert_eq!(wait_bound(c, &["p"]).await, vec!["n1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_zone_labels_must_match_the_nodes_zone() {
    let k = start(&[
        ("a1", json!({"topology.kubernetes.io/zone": "a"})),
        ("b1", json!({"topology.kubernetes.io/zone": "b"})),
    ])
    .await;
    let c = &k.c;
    // Zone labels on the volume, no node affinity: VolumeZone decides.
    let zone = |z: &str| json!({"metadata": {"labels": {"topology.kubernetes.io/zone": z}}});
    make_pv(c, "in-b", "1Gi", zone("b")).await;
    make_pvc(c, "data-b", "1Gi", json!({"spec": {"volumeName": "in-b"}})).await;
    assert_eq!(bound_volume(c, "data-b").await, "in-b");
    claim_pod(c, "p", &["data-b"], json!({})).await;
    assert_eq!(wait_bound(c, &["p"]).await, vec!["b1"]);
    make_pv(c, "in-c", "1Gi", zone("c")).await;
    make_pvc(c, "data-c", "1Gi", json!({"spec": {"volumeName": "in-c"}})).await;
    assert_eq!(bound_volume(c, "data-c").await, "in-c");
    claim_pod(c, "q", &["data-c"], json!({})).await;
    wait_unschedulable(
        c,
        "q",
        &format!(
            "0/2 nodes are available: 2 node(s) had no available volume zone. preemption: \
             0/2 nodes are available: 2 {NOT_HELPFUL}"
        ),
    )
    .await;
}

/// The pod's `PodScheduled` condition as (status, reason, message).
async fn scheduled_condition(c: &kube::Client, pod: &str) -> Option<(String, String, String)> {
    let p = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(c.clone(), "default")
        .get(pod)
        .await
        .ok()?;
    let cond = p
        .status?
        .conditions?
        .into_iter()
        .find(|c| c.type_ == "PodScheduled")?;
    Some((cond.status, cond.reason?, cond.message?))
}

async fn priority_class(c: &kube::Client, name: &str, value: i32) {
    let class: k8s_openapi::api::scheduling::v1::PriorityClass =
        serde_json::from_value(json!({"metadata": {"name": name}, "value": value})).unwrap();
    Api::<k8s_openapi::api::scheduling::v1::PriorityClass>::all(c.clone())
        .create(&PostParams::default(), &class)
        .await
        .unwrap();
}

async fn gone(c: &kube::Client, pod: &str) {
    eventually(&format!("pod {pod} deleted"), || async {
        Api::<k8s_openapi::api::core::v1::Pod>::namespaced(c.clone(), "default")
            .get_opt(pod)
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_write_once_pod_claim_serves_one_pod_until_a_higher_priority_one_preempts_it() {
    let k = start(&[("n1", json!({})), ("n2", json!({}))]).await;
    let c = &k.c;
    let _kubelet = start_kubelet_standin(c);
    let rwop = json!({"spec": {"accessModes": ["ReadWriteOncePod"]}});
    make_pv(c, "solo", "1Gi", rwop.clone()).await;
    make_pvc(c, "solo", "1Gi", rwop).await;
    assert_eq!(bound_volume(c, "solo").await, "solo");
    claim_pod(c, "holder", &["solo"], json!({})).await;
    let held = wait_bound(c, &["holder"]).await.remove(0);
    // Another pod of the same priority: every node refuses it, and preemption cannot help.
    claim_pod(c, "second", &["solo"], json!({})).await;
    wait_unschedulable(
        c,
        "second",
        "0/2 nodes are available: 2 node has pod using PersistentVolumeClaim with the same \
         name and ReadWriteOncePod access mode. preemption: 0/2 nodes are available: 2 No \
         preemption victims found for incoming pod.",
    )
    .await;
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(c.clone(), "default")
        .delete("second", &Default::default())
        .await
        .unwrap();
    gone(c, "second").await;
    // A higher-priority pod evicts the holder (on the holder's node only) and takes the claim.
    priority_class(c, "p1000", 1000).await;
    claim_pod(c, "vip", &["solo"], json!({"priorityClassName": "p1000"})).await;
    gone(c, "holder").await;
    wait_bound(c, &["vip"]).await;
    let vip = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(c.clone(), "default")
        .get("vip")
        .await
        .unwrap();
    assert_eq!(
        vip.status.and_then(|s| s.nominated_node_name),
        Some(held),
        "nominated where the holder was"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_inline_disk_is_not_mounted_twice_on_a_node() {
    let k = start(&[("n1", json!({})), ("n2", json!({}))]).await;
    let c = &k.c;
    let gce = |ro: bool| json!({"volumes": [{"name": "d", "gcePersistentDisk": {"pdName": "pd-1", "readOnly": ro}}]});
    make_pod(c, "a", json!({}), gce(false)).await;
    let a = wait_bound(c, &["a"]).await.remove(0);
    // Read-only here, but read-write there: not on a's node.
    make_pod(c, "b", json!({}), gce(true)).await;
    let b = wait_bound(c, &["b"]).await.remove(0);
    assert_ne!(a, b);
    // Read-write: neither node.
    make_pod(c, "c", json!({}), gce(false)).await;
    wait_unschedulable(
        c,
        "c",
        "0/2 nodes are available: 2 node(s) had no available disk. preemption: 0/2 nodes are \
         available: 2 No preemption victims found for incoming pod.",
    )
    .await;
    // Read-only: where it is read-only already.
    make_pod(c, "d", json!({}), gce(true)).await;
    assert_eq!(wait_bound(c, &["d"]).await, vec![b]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csi_volumes_per_node_stay_within_the_csinode_count() {
    use k8s_openapi::api::storage::v1::CSINode;
    let k = start(&[("n1", json!({}))]).await;
    let c = &k.c;
    let csi_node = |count: i32| -> CSINode {
        serde_json::from_value(json!({
            "metadata": {"name": "n1"},
            "spec": {"drivers": [{"name": "disk.csi.example.com", "nodeID": "n1",
                                  "allocatable": {"count": count}}]},
        }))
        .unwrap()
    };
    let csinodes: Api<CSINode> = Api::all(c.clone());
    csinodes
        .create(&PostParams::default(), &csi_node(1))
        .await
        .unwrap();
    for v in ["a", "b"] {
        make_pv(
            c,
            v,
            "1Gi",
            json!({"spec": {"hostPath": null,
                            "csi": {"driver": "disk.csi.example.com", "volumeHandle": v}}}),
        )
        .await;
        make_pvc(c, v, "1Gi", json!({"spec": {"volumeName": v}})).await;
        assert_eq!(bound_volume(c, v).await, v);
    }
    claim_pod(c, "p", &["a"], json!({})).await;
    wait_bound(c, &["p"]).await;
    claim_pod(c, "q", &["b"], json!({})).await;
    wait_unschedulable(
        c,
        "q",
        "0/1 nodes are available: 1 node(s) exceed max volume count. preemption: 0/1 nodes \
         are available: 1 No preemption victims found for incoming pod.",
    )
    .await;
    // The volume already attached there counts once.
    claim_pod(c, "r", &["a"], json!({})).await;
    wait_bound(c, &["r"]).await;
    // A higher count on the CSINode brings the waiting pod in.
    csinodes
        .patch(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"drivers": [{"name": "disk.csi.example.com",
                "nodeID": "n1", "allocatable": {"count": 2}}]}})),
        )
        .await
        .unwrap();
    assert_eq!(wait_bound(c, &["q"]).await, vec!["n1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_prebind_sets_pod_scheduled_false_with_a_scheduler_error() {
    let k = start(&[("n1", json!({}))]).await;
    let c = &k.c;
    make_class(
        c,
        "local-path",
        "rancher.io/local-path",
        "WaitForFirstConsumer",
    )
    .await;
    make_pvc(
        c,
        "cache",
        "1Gi",
        json!({"spec": {"storageClassName": "local-path"}}),
    )
    .await;
    claim_pod(c, "p", &["cache"], json!({})).await;
    eventually("selected node", || async {
        annotation(
            &claim(c, "cache").await.metadata,
            "volume.kubernetes.io/selected-node",
        )
    })
    .await;
    // The provisioner gives up: it drops the selected node, so PreBind fails.
    Api::<PersistentVolumeClaim>::namespaced(c.clone(), "default")
        .patch(
            "cache",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations":
                {"volume.kubernetes.io/selected-node": null}}})),
        )
        .await
        .unwrap();
    let message = "running PreBind plugin \"VolumeBinding\": binding volumes: provisioning \
                   failed for PVC \"cache\"";
    let cond = eventually("PodScheduled=False from PreBind", || async {
        scheduled_condition(c, "p")
            .await
            .filter(|(_, _, m)| m == message)
    })
    .await;
    assert_eq!(
        cond,
        ("False".into(), "SchedulerError".into(), message.into())
    );
    eventually("FailedScheduling event", || async {
        events_for(c, "p").await.into_iter().find(|e| {
            e.reason.as_deref() == Some("FailedScheduling") && e.message.as_deref() == Some(message)
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_prebind_frees_the_node_for_the_pods_waiting_on_it() {
    let k = start(&[("n1", json!({}))]).await;
    let c = &k.c;
    make_class(
        c,
        "local-path",
        "rancher.io/local-path",
        "WaitForFirstConsumer",
    )
    .await;
    make_pvc(
        c,
        "cache",
        "1Gi",
        json!({"spec": {"storageClassName": "local-path"}}),
    )
    .await;
    let cpu =
        |n: &str| json!([{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": n}}}]);
    // Assumed on n1 with 3 of its 4 CPUs while PreBind waits for the provisioner.
    claim_pod(c, "big", &["cache"], json!({"containers": cpu("3")})).await;
    eventually("selected node", || async {
        annotation(
            &claim(c, "cache").await.metadata,
            "volume.kubernetes.io/selected-node",
        )
    })
    .await;
    make_pod(c, "other", json!({}), json!({"containers": cpu("2")})).await;
    wait_unschedulable(
        c,
        "other",
        "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: 1 \
         No preemption victims found for incoming pod.",
    )
    .await;
    // Without its class the claim cannot wait for a consumer any more (big stays pending);
    // the provisioner gives up, PreBind fails and big's CPUs are free again.
    Api::<StorageClass>::all(c.clone())
        .delete("local-path", &Default::default())
        .await
        .unwrap();
    Api::<PersistentVolumeClaim>::namespaced(c.clone(), "default")
        .patch(
            "cache",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations":
                {"volume.kubernetes.io/selected-node": null}}})),
        )
        .await
        .unwrap();
    // The waiting pod is tried again at once (not after the 5 min flush).
    assert_eq!(wait_bound(c, &["other"]).await, vec!["n1"]);
    assert_eq!(node_of(c, "big").await, None);
}
