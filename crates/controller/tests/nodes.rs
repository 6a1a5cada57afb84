//! Node lifecycle (heartbeats, Ready=Unknown, taints), NoExecute taint eviction and node IPAM.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{TestCluster, eventually, expect_event};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// Controllers with a 2 s grace period checked every second.
fn fast() -> rk3s_controller::Config {
    let mut c = rk3s_controller::Config::default();
    c.nodes.node_monitor_period = 1;
    c.nodes.node_monitor_grace_period = 2;
    c
}

async fn register(t: &TestCluster, name: &str) {
    let now = Timestamp::now().to_string();
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name},
        "status": {"conditions": [
            {"type": "Ready", "status": "True", "reason": "KubeletReady",
             "lastHeartbeatTime": now, "lastTransitionTime": now},
            {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory",
             "lastHeartbeatTime": now, "lastTransitionTime": now},
        ]}
    }))
    .unwrap();
    Api::<Node>::all(t.client.clone())
        .create(&PostParams::default(), &node)
        .await
        .unwrap();
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": micro_now()}
    }))
    .unwrap();
    Api::<Lease>::namespaced(t.client.clone(), "kube-node-lease")
        .create(&PostParams::default(), &lease)
        .await
        .unwrap();
}

fn micro_now() -> String {
    Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

/// What a kubelet does every few seconds: renew its Lease.
async fn renew(client: &kube::Client, name: &str) {
    Api::<Lease>::namespaced(client.clone(), "kube-node-lease")
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"renewTime": micro_now()}})),
        )
        .await
        .unwrap();
}

fn heartbeat_forever(client: kube::Client, name: &'static str) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            renew(&client, name).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}

async fn pod_on(t: &TestCluster, name: &str, node: &str, tolerations: serde_json::Value) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"nodeName": node, "tolerations": tolerations,
            "containers": [{"name": "c", "image": "busybox"}]}
    }))
    .unwrap();
    Api::<Pod>::namespaced(t.client.clone(), "default")
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
}

fn taints(n: &Node) -> Vec<Taint> {
    n.spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
}

fn has(n: &Node, key: &str, effect: &str) -> bool {
    taints(n).iter().any(|t| t.key == key && t.effect == effect)
}

fn ready(p: &Pod) -> Option<String> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone())
}

const UNREACHABLE: &str = "node.kubernetes.io/unreachable";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_heartbeating_is_tainted_and_its_pods_evicted() {
    let t = TestCluster::start_with(fast()).await;
    let nodes: Api<Node> = Api::all(t.client.clone());
    let pods: Api<Pod> = Api::namespaced(t.client.clone(), "default");
    register(&t, "alive").await;
    register(&t, "dead").await;
    let beat = heartbeat_forever(t.client.clone(), "alive");
    // On the node that will stop: a pod tolerating unreachable for 2 s, one with the
    // admission's default 300 s, one tolerating it forever. On the healthy node: one pod.
    let tol = |secs: Option<i64>| {
        let mut t = json!({"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute"});
        if let Some(s) = secs {
            t["tolerationSeconds"] = json!(s);
        }
        json!([t])
    };
    pod_on(&t, "short", "dead", tol(Some(2))).await;
    pod_on(&t, "default", "dead", json!([])).await;
    pod_on(&t, "forever", "dead", tol(None)).await;
    pod_on(&t, "elsewhere", "alive", json!([])).await;
    let d = pods.get("default").await.unwrap();
    assert!(
        d.spec
            .unwrap()
            .tolerations
            .unwrap()
            .iter()
            .any(|t| t.key.as_deref() == Some(UNREACHABLE) && t.toleration_seconds == Some(300)),
        "DefaultTolerationSeconds admission"
    );
    eventually(30, "pods ready (kubelet stand-in)", || async {
        let all = pods.list(&Default::default()).await.ok()?.items;
        (all.len() == 4 && all.iter().all(|p| ready(p).as_deref() == Some("True"))).then_some(())
    })
    .await;

    // "dead" never renews: after the grace period it is Unknown and tainted.
    let dead = eventually(30, "dead node tainted unreachable", || async {
        let n = nodes.get("dead").await.ok()?;
        (has(&n, UNREACHABLE, "NoExecute") && has(&n, UNREACHABLE, "NoSchedule")).then_some(n)
    })
    .await;
    let cond = |n: &Node, ty: &str| {
        n.status
            .as_ref()
            .unwrap()
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == ty)
            .cloned()
            .unwrap()
    };
    let r = cond(&dead, "Ready");
    assert_eq!(r.status, "Unknown");
    assert_eq!(r.reason.as_deref(), Some("NodeStatusUnknown"));
    assert_eq!(
        r.message.as_deref(),
        Some("Kubelet stopped posting node status.")
    );
    assert_eq!(cond(&dead, "MemoryPressure").status, "Unknown");
    let tainted_at = taints(&dead)
        .into_iter()
        .find(|t| t.key == UNREACHABLE && t.effect == "NoExecute")
        .unwrap()
        .time_added
        .expect("NoExecute taints carry timeAdded")
        .0;

    // The pod tolerating 2 s is evicted, with the taint manager's condition, not before 2 s.
    let short = eventually(30, "short-toleration pod evicted", || async {
        let p = pods.get("short").await.ok()?;
        p.metadata.deletion_timestamp.is_some().then_some(p)
    })
    .await;
    let disruption = short
        .status
        .as_ref()
        .unwrap()
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == "DisruptionTarget")
        .cloned()
        .expect("DisruptionTarget condition");
    assert_eq!(disruption.reason.as_deref(), Some("DeletionByTaintManager"));
    let evicted_at = disruption.last_transition_time.unwrap().0;
    assert!(
        evicted_at.duration_since(tainted_at).as_secs() >= 2,
        "evicted at {evicted_at}, tainted at {tainted_at}"
    );
    // The others stay: 300 s and forever have not run out, and the healthy node's pod is
    // untouched. Pods on the dead node are not Ready any more.
    for name in ["default", "forever"] {
        let p = pods.get(name).await.unwrap();
        assert!(p.metadata.deletion_timestamp.is_none(), "{name} evicted");
    }
    eventually(30, "pods on the dead node not ready", || async {
        let f = pods.get("forever").await.ok()?;
        (ready(&f).as_deref() == Some("False")).then_some(())
    })
    .await;
    let elsewhere = pods.get("elsewhere").await.unwrap();
    assert!(elsewhere.metadata.deletion_timestamp.is_none());
    assert_eq!(ready(&elsewhere).as_deref(), Some("True"));
    let alive = nodes.get("alive").await.unwrap();
    assert!(taints(&alive).is_empty(), "{:?}", taints(&alive));
    assert_eq!(cond(&alive, "Ready").status, "True");

    // The kubelet comes back (Ready again, heartbeats): the taints go.
    let _beat_dead = heartbeat_forever(t.client.clone(), "dead");
    let now = Timestamp::now().to_string();
    nodes
        .patch_status(
            "dead",
            &PatchParams::default(),
            &Patch::Strategic(json!({"status": {"conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady",
                 "lastHeartbeatTime": now, "lastTransitionTime": now}]}})),
        )
        .await
        .unwrap();
    eventually(30, "taints removed from the recovered node", || async {
        let n = nodes.get("dead").await.ok()?;
        taints(&n).is_empty().then_some(())
    })
    .await;
    let p = pods.get("default").await.unwrap();
    assert!(p.metadata.deletion_timestamp.is_none());

    // Upstream's events: on the Node (namespace default, as for every cluster-scoped object)
    // and on the pods.
    let node_uid = nodes.get("dead").await.unwrap().metadata.uid;
    let ev = expect_event(
        &t.client,
        "default",
        ("Node", "dead"),
        (
            "Normal",
            "RegisteredNode",
            "Node dead event: Registered Node dead in Controller",
        ),
        "node-controller",
    )
    .await;
    assert_eq!(ev.involved_object.uid, node_uid);
    assert_eq!(ev.involved_object.namespace, None);
    expect_event(
        &t.client,
        "default",
        ("Node", "dead"),
        (
            "Normal",
            "NodeNotReady",
            "Node dead status is now: NodeNotReady",
        ),
        "node-controller",
    )
    .await;
    let ev = expect_event(
        &t.client,
        "default",
        ("Pod", "forever"),
        ("Warning", "NodeNotReady", "Node is not ready"),
        "node-controller",
    )
    .await;
    assert_eq!(ev.involved_object.namespace.as_deref(), Some("default"));
    expect_event(
        &t.client,
        "default",
        ("Pod", "short"),
        (
            "Normal",
            "TaintManagerEviction",
            "Marking for deletion Pod default/short",
        ),
        "taint-eviction-controller",
    )
    .await;
    // The 300 s eviction waiting for "default" was called off when the taint went.
    expect_event(
        &t.client,
        "default",
        ("Pod", "default"),
        (
            "Normal",
            "TaintManagerEviction",
            "Cancelling deletion of Pod default/default",
        ),
        "taint-eviction-controller",
    )
    .await;
    let out = t.kubectl_ok(&["describe", "node", "dead"]).await;
    assert!(
        out.contains("RegisteredNode") && out.contains("NodeNotReady"),
        "{out}"
    );

    // A node that goes away: RemovingNode.
    nodes
        .delete("dead", &DeleteParams::default())
        .await
        .unwrap();
    expect_event(
        &t.client,
        "default",
        ("Node", "dead"),
        (
            "Normal",
            "RemovingNode",
            "Node dead event: Removing Node dead from Controller",
        ),
        "node-controller",
    )
    .await;
    beat.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_execute_taint_evicts_pods_that_do_not_tolerate_it_at_once() {
    let t = TestCluster::start_with(fast()).await;
    let nodes: Api<Node> = Api::all(t.client.clone());
    let pods: Api<Pod> = Api::namespaced(t.client.clone(), "default");
    register(&t, "n1").await;
    let _beat = heartbeat_forever(t.client.clone(), "n1");
    pod_on(&t, "intolerant", "n1", json!([])).await;
    pod_on(
        &t,
        "tolerant",
        "n1",
        json!([{"key": "example.com/maintenance", "operator": "Exists", "effect": "NoExecute"}]),
    )
    .await;
    nodes
        .patch(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": [
                {"key": "example.com/maintenance", "effect": "NoExecute"}]}})),
        )
        .await
        .unwrap();
    eventually(30, "intolerant pod evicted", || async {
        let p = pods.get("intolerant").await.ok()?;
        p.metadata.deletion_timestamp.is_some().then_some(())
    })
    .await;
    let p = pods.get("tolerant").await.unwrap();
    assert!(p.metadata.deletion_timestamp.is_none());
    // A healthy node keeps the test's taint and gets none of the controller's.
    let n = nodes.get("n1").await.unwrap();
    let keys: Vec<String> = taints(&n).into_iter().map(|t| t.key).collect();
    assert_eq!(keys, ["example.com/maintenance"]);
    // An unschedulable node gets the unschedulable NoSchedule taint.
    nodes
        .patch(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": true}})),
        )
        .await
        .unwrap();
    eventually(30, "unschedulable taint", || async {
        let n = nodes.get("n1").await.ok()?;
        has(&n, "node.kubernetes.io/unschedulable", "NoSchedule").then_some(())
    })
    .await;
}

fn pod_cidr(n: &Node) -> Option<String> {
    n.spec.as_ref()?.pod_cidr.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ipam_gives_distinct_cidrs_rebuilt_from_existing_nodes() {
    // The first controller manager runs without nodeipam: nodes that already carry CIDRs
    // exist before the allocator starts.
    let config = rk3s_controller::Config {
        controllers: vec!["*".into(), "-nodeipam".into()],
        ..Default::default()
    };
    let t = TestCluster::start_with(config).await;
    let nodes: Api<Node> = Api::all(t.client.clone());
    for (name, cidr) in [("pre0", "10.42.0.0/24"), ("pre1", "10.42.1.0/24")] {
        let n: Node = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"podCIDR": cidr, "podCIDRs": [cidr]}
        }))
        .unwrap();
        nodes.create(&PostParams::default(), &n).await.unwrap();
    }
    let ipam = rk3s_controller::Config {
        controllers: vec!["nodeipam".into()],
        leader_elect: false,
        ..Default::default()
    };
    let (_stop, _ipam) = t.spawn_controller_manager(ipam).await;
    for name in ["a", "b", "c"] {
        let n: Node = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        nodes.create(&PostParams::default(), &n).await.unwrap();
    }
    let got = eventually(30, "pod CIDRs for a, b, c", || async {
        let mut out = Vec::new();
        for name in ["a", "b", "c"] {
            let n = nodes.get(name).await.ok()?;
            let c = pod_cidr(&n)?;
            assert_eq!(
                n.spec.as_ref()?.pod_cidrs.as_deref()?,
                std::slice::from_ref(&c)
            );
            out.push(c);
        }
        Some(out)
    })
    .await;
    let all: BTreeSet<String> = got
        .iter()
        .cloned()
        .chain(["10.42.0.0/24".to_string(), "10.42.1.0/24".to_string()])
        .collect();
    assert_eq!(all.len(), 5, "distinct: {got:?}");
    for c in &got {
        assert!(c.starts_with("10.42.") && c.ends_with(".0/24"), "{c}");
    }

    // Another node after a deletion: still distinct from every CIDR in use.
    nodes.delete("a", &DeleteParams::default()).await.unwrap();
    let d: Node = serde_json::from_value(json!({"metadata": {"name": "d"}})).unwrap();
    nodes.create(&PostParams::default(), &d).await.unwrap();
    let d_cidr = eventually(30, "pod CIDR for d", || async {
        pod_cidr(&nodes.get("d").await.ok()?)
    })
    .await;
    let in_use = [
        got[1].as_str(),
        got[2].as_str(),
        "10.42.0.0/24",
        "10.42.1.0/24",
    ];
    assert!(!in_use.contains(&d_cidr.as_str()), "{d_cidr} in {in_use:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_no_node_is_ready_nothing_is_evicted() {
    // The only node stops heartbeating: upstream's "master disruption mode" assumes the
    // controller itself is cut off, so the node is marked and NoSchedule-tainted, but no
    // NoExecute taint is added and nothing is evicted.
    let t = TestCluster::start_with(fast()).await;
    let nodes: Api<Node> = Api::all(t.client.clone());
    let pods: Api<Pod> = Api::namespaced(t.client.clone(), "default");
    register(&t, "only").await;
    pod_on(
        &t,
        "p",
        "only",
        json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute",
                "tolerationSeconds": 0}]),
    )
    .await;
    eventually(
        30,
        "pod marked not ready on the unreachable node",
        || async {
            let n = nodes.get("only").await.ok()?;
            let p = pods.get("p").await.ok()?;
            (has(&n, UNREACHABLE, "NoSchedule") && ready(&p).as_deref() == Some("False"))
                .then_some(())
        },
    )
    .await;
    // Two more monitor passes: a NoExecute taint would have come by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let n = nodes.get("only").await.unwrap();
    assert!(!has(&n, UNREACHABLE, "NoExecute"), "{:?}", taints(&n));
    let p = pods.get("p").await.unwrap();
    assert!(p.metadata.deletion_timestamp.is_none());
}
