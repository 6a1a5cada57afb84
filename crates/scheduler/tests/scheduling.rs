//! The scheduler against a real in-process apiserver: nodes are API objects, pods are bound
//! through `pods/binding`, failures are reported on the pod and in events.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use common::*;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

fn count(nodes: &[String], zone_of: impl Fn(&str) -> &'static str) -> HashMap<&'static str, usize> {
    let mut m = HashMap::new();
    for n in nodes {
        *m.entry(zone_of(n)).or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binds_pods_and_records_scheduled_events() {
    let t = TestServer::start().await;
    let c = t.client().await;
    make_node(&c, "n1", "4", json!({}), json!([])).await;
    let _s = start_scheduler(&c);
    make_pod(&c, "p", json!({}), json!({})).await;
    assert_eq!(wait_bound(&c, &["p"]).await, vec!["n1"]);
    let events = eventually("Scheduled event", || async {
        let ev = events_for(&c, "p").await;
        ev.into_iter()
            .find(|e| e.reason.as_deref() == Some("Scheduled"))
    })
    .await;
    assert_eq!(
        events.message.as_deref(),
        Some("Successfully assigned default/p to n1")
    );
    assert_eq!(
        events.reporting_component.as_deref(),
        Some("default-scheduler")
    );
    assert_eq!(events.type_.as_deref(), Some("Normal"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spreads_by_topology() {
    let t = TestServer::start().await;
    let c = t.client().await;
    for (n, z) in [("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b")] {
        make_node(
            &c,
            n,
            "4",
            json!({"topology.kubernetes.io/zone": z}),
            json!([]),
        )
        .await;
    }
    let _s = start_scheduler(&c);
    let spec = json!({"topologySpreadConstraints": [{
        "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
        "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": {"app": "web"}}
    }]});
    let names = ["w0", "w1", "w2", "w3"];
    for n in names {
        make_pod(&c, n, json!({"app": "web"}), spec.clone()).await;
    }
    let nodes = wait_bound(&c, &names).await;
    let zones = count(&nodes, |n| if n.starts_with('a') { "a" } else { "b" });
    // Three nodes in zone a, one in b: a plain scheduler would put most pods in a.
    assert_eq!(zones.get("a"), Some(&2), "{nodes:?}");
    assert_eq!(zones.get("b"), Some(&2), "{nodes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honours_pod_affinity_and_anti_affinity() {
    let t = TestServer::start().await;
    let c = t.client().await;
    for (n, z) in [("a1", "a"), ("b1", "b"), ("c1", "c")] {
        make_node(&c, n, "4", json!({"zone": z}), json!([])).await;
    }
    let _s = start_scheduler(&c);
    make_pod(&c, "db", json!({"app": "db"}), json!({})).await;
    let db_node = wait_bound(&c, &["db"]).await.remove(0);

    let near_db = json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "zone", "labelSelector": {"matchLabels": {"app": "db"}}}]}}});
    make_pod(&c, "cache", json!({}), near_db).await;
    assert_eq!(wait_bound(&c, &["cache"]).await, vec![db_node.clone()]);

    let apart = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "web"}}}]}}});
    for n in ["web0", "web1", "web2"] {
        make_pod(&c, n, json!({"app": "web"}), apart.clone()).await;
    }
    let mut nodes = wait_bound(&c, &["web0", "web1", "web2"]).await;
    nodes.sort();
    assert_eq!(nodes, vec!["a1", "b1", "c1"]);
    // A fourth replica has nowhere to go.
    make_pod(&c, "web3", json!({"app": "web"}), apart).await;
    let msg = unschedulable_message(&c, "web3").await;
    assert!(
        msg.starts_with("0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules."),
        "{msg}"
    );
}

async fn unschedulable_message(c: &kube::Client, pod: &str) -> String {
    eventually("PodScheduled=False", || async {
        let p = Api::<Pod>::namespaced(c.clone(), "default")
            .get(pod)
            .await
            .ok()?;
        let cond = p
            .status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "PodScheduled")?;
        assert_eq!(cond.status, "False");
        assert_eq!(cond.reason.as_deref(), Some("Unschedulable"));
        cond.message
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_unschedulable_like_upstream_and_retries_on_new_nodes() {
    let t = TestServer::start().await;
    let c = t.client().await;
    make_node(
        &c,
        "tainted",
        "8",
        json!({}),
        json!([{"key": "k", "value": "v", "effect": "NoSchedule"}]),
    )
    .await;
    make_node(&c, "small1", "1", json!({}), json!([])).await;
    make_node(&c, "small2", "1", json!({}), json!([])).await;
    let _s = start_scheduler(&c);
    make_pod(
        &c,
        "big",
        json!({}),
        json!({"containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": "2"}}}]}),
    )
    .await;
    let msg = unschedulable_message(&c, "big").await;
    assert_eq!(
        msg,
        "0/3 nodes are available: 1 node(s) had untolerated taint {k: v}, 2 Insufficient cpu. \
         preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
    );
    let ev = eventually("FailedScheduling event", || async {
        events_for(&c, "big")
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("FailedScheduling"))
    })
    .await;
    assert_eq!(ev.message.as_deref(), Some(msg.as_str()));
    assert_eq!(ev.type_.as_deref(), Some("Warning"));

    // A node that fits is a cluster event: the pod is retried and bound.
    make_node(&c, "large", "4", json!({}), json!([])).await;
    assert_eq!(wait_bound(&c, &["big"]).await, vec!["large"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn respects_scheduler_name_and_scheduling_gates() {
    let t = TestServer::start().await;
    let c = t.client().await;
    make_node(&c, "n1", "4", json!({}), json!([])).await;
    let _s = start_scheduler(&c);
    make_pod(
        &c,
        "other",
        json!({}),
        json!({"schedulerName": "someone-else"}),
    )
    .await;
    make_pod(
        &c,
        "gated",
        json!({}),
        json!({"schedulingGates": [{"name": "example.com/wait"}]}),
    )
    .await;
    make_pod(&c, "plain", json!({}), json!({})).await;
    wait_bound(&c, &["plain"]).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(node_of(&c, "other").await, None);
    assert_eq!(node_of(&c, "gated").await, None);
    Api::<Pod>::namespaced(c.clone(), "default")
        .patch(
            "gated",
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(json!([
                    {"op": "remove", "path": "/spec/schedulingGates"}
                ]))
                .unwrap(),
            ),
        )
        .await
        .expect("gates removed");
    assert_eq!(wait_bound(&c, &["gated"]).await, vec!["n1"]);
    assert_eq!(node_of(&c, "other").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preempts_a_lower_priority_pod() {
    let t = TestServer::start().await;
    let c = t.client().await;
    make_node(&c, "n1", "2", json!({}), json!([])).await;
    let _s = start_scheduler(&c);
    let _k = start_kubelet_standin(&c);
    // Priorities come from PriorityClasses, as the apiserver's Priority admission requires.
    priority_class(&c, "p100", 100).await;
    priority_class(&c, "p1000", 1000).await;
    let req = |p: i32| {
        let mut spec = json!({"containers": [{"name": "c", "image": "busybox",
            "resources": {"requests": {"cpu": "1500m"}}}]});
        if p != 0 {
            spec["priorityClassName"] = json!(format!("p{p}"));
        }
        spec
    };
    make_pod(&c, "low", json!({}), req(0)).await;
    wait_bound(&c, &["low"]).await;
    make_pod(&c, "high", json!({}), req(1000)).await;
    // The victim goes, the preemptor is nominated and then bound.
    eventually("victim deleted", || async {
        Api::<Pod>::namespaced(c.clone(), "default")
            .get_opt("low")
            .await
            .expect("get")
            .is_none()
            .then_some(())
    })
    .await;
    assert_eq!(wait_bound(&c, &["high"]).await, vec!["n1"]);
    let high = Api::<Pod>::namespaced(c.clone(), "default")
        .get("high")
        .await
        .unwrap();
    assert_eq!(
        high.status.and_then(|s| s.nominated_node_name).as_deref(),
        Some("n1")
    );
    let preempted = events_for(&c, "low").await;
    assert!(
        preempted
            .iter()
            .any(|e| e.reason.as_deref() == Some("Preempted")),
        "{preempted:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn does_not_preempt_equal_or_higher_priority() {
    let t = TestServer::start().await;
    let c = t.client().await;
    make_node(&c, "n1", "2", json!({}), json!([])).await;
    let _s = start_scheduler(&c);
    // Priorities come from PriorityClasses, as the apiserver's Priority admission requires.
    priority_class(&c, "p100", 100).await;
    priority_class(&c, "p1000", 1000).await;
    let req = |p: i32| {
        let mut spec = json!({"containers": [{"name": "c", "image": "busybox",
            "resources": {"requests": {"cpu": "1500m"}}}]});
        if p != 0 {
            spec["priorityClassName"] = json!(format!("p{p}"));
        }
        spec
    };
    make_pod(&c, "first", json!({}), req(100)).await;
    wait_bound(&c, &["first"]).await;
    make_pod(&c, "second", json!({}), req(100)).await;
    let msg = unschedulable_message(&c, "second").await;
    assert_eq!(
        msg,
        "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: \
         1 No preemption victims found for incoming pod."
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_shows_the_node_and_the_scheduling_events() {
    let t = TestServer::start().await;
    let c = t.client().await;
    make_node(&c, "n1", "1", json!({}), json!([])).await;
    let _s = start_scheduler(&c);
    make_pod(&c, "ok", json!({}), json!({})).await;
    make_pod(
        &c,
        "huge",
        json!({}),
        json!({"containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"memory": "100Gi"}}}]}),
    )
    .await;
    wait_bound(&c, &["ok"]).await;
    unschedulable_message(&c, "huge").await;
    let wide = kubectl(&t, &["get", "pod", "ok", "-o", "wide"]).await;
    assert!(
        wide.lines().nth(1).is_some_and(|l| l.contains(" n1 ")),
        "{wide}"
    );
    let describe = eventually("events in describe", || async {
        let d = kubectl(&t, &["describe", "pod", "huge"]).await;
        d.contains("FailedScheduling").then_some(d)
    })
    .await;
    assert!(
        describe.contains("default-scheduler")
            && describe.contains("0/1 nodes are available: 1 Insufficient memory."),
        "{describe}"
    );
    let describe = kubectl(&t, &["describe", "pod", "ok"]).await;
    assert!(
        describe.contains("Successfully assigned default/ok to n1"),
        "{describe}"
    );
}

/// A PriorityClass of `value`.
async fn priority_class(c: &kube::Client, name: &str, value: i32) {
    let class: k8s_openapi::api::scheduling::v1::PriorityClass =
        serde_json::from_value(json!({"metadata": {"name": name}, "value": value}))
            .expect("priority class");
    kube::Api::<k8s_openapi::api::scheduling::v1::PriorityClass>::all(c.clone())
        .create(&kube::api::PostParams::default(), &class)
        .await
        .expect("create priority class");
}
