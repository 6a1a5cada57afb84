//! The Endpoints, EndpointSlice and ServiceAccount controllers against a real apiserver.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use common::{TestCluster, eventually};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Endpoints, Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

fn ready_ips(ep: &Endpoints) -> (Vec<String>, Vec<String>, Vec<i32>) {
    let mut ready = Vec::new();
    let mut not_ready = Vec::new();
    let mut ports = Vec::new();
    for s in ep.subsets.iter().flatten() {
        ready.extend(s.addresses.iter().flatten().map(|a| a.ip.clone()));
        not_ready.extend(s.not_ready_addresses.iter().flatten().map(|a| a.ip.clone()));
        ports.extend(s.ports.iter().flatten().map(|p| p.port));
    }
    ready.sort();
    not_ready.sort();
    (ready, not_ready, ports)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_and_slices_follow_ready_pods() {
    let t = TestCluster::start().await;
    let client = t.client.clone();
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let eps: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");

    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "labels": {"team": "a"}},
        "spec": {"selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": "web-port"}]}
    }))
    .unwrap();
    svcs.create(&PostParams::default(), &svc).await.unwrap();
    // Nothing selected yet: empty Endpoints, one empty placeholder slice.
    eventually(20, "placeholder slice", || async {
        let l = slices.list(&ListParams::default()).await.ok()?.items;
        (l.len() == 1 && l[0].endpoints.is_empty()).then_some(())
    })
    .await;

    let rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "busybox",
                    "ports": [{"name": "web-port", "containerPort": 8080}]}]}}}
    }))
    .unwrap();
    rss.create(&PostParams::default(), &rs).await.unwrap();
    let ep = eventually(20, "2 ready addresses", || async {
        let ep = eps.get_opt("web").await.ok()??;
        (ready_ips(&ep).0.len() == 2).then_some(ep)
    })
    .await;
    let (ready, _, ports) = ready_ips(&ep);
    assert_eq!(
        ports,
        [8080],
        "the named target port resolves to the container port"
    );
    let labels = ep.metadata.labels.clone().unwrap();
    assert_eq!(
        labels["endpoints.kubernetes.io/managed-by"],
        "endpoint-controller"
    );
    assert_eq!(labels["team"], "a");
    let slice = eventually(20, "slice with 2 endpoints", || async {
        let l = slices.list(&ListParams::default()).await.ok()?.items;
        (l.len() == 1 && l[0].endpoints.len() == 2).then(|| l[0].clone())
    })
    .await;
    let sl = slice.metadata.labels.clone().unwrap();
    assert_eq!(sl["kubernetes.io/service-name"], "web");
    assert_eq!(
        sl["endpointslice.kubernetes.io/managed-by"],
        "endpointslice-controller.k8s.io"
    );
    assert_eq!(slice.address_type, "IPv4");
    assert_eq!(slice.ports.as_ref().unwrap()[0].port, Some(8080));
    assert_eq!(
        slice.ports.as_ref().unwrap()[0].name.as_deref(),
        Some("http")
    );
    let owner = &slice.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Service", "web")
    );

    // One pod stops being ready: it moves to notReadyAddresses and its slice endpoint is
    // neither ready nor serving.
    let pod = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_deref()) == Some(ready[0].as_str()))
        .unwrap();
    let name = pod.metadata.name.clone().unwrap();
    pods.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}})),
    )
    .await
    .unwrap();
    eventually(20, "not-ready address", || async {
        let ep = eps.get("web").await.ok()?;
        let (r, nr, _) = ready_ips(&ep);
        (r.len() == 1 && nr == [ready[0].clone()]).then_some(())
    })
    .await;
    eventually(20, "not-ready slice endpoint", || async {
        let l = slices.list(&ListParams::default()).await.ok()?.items;
        let e = l
            .first()?
            .endpoints
            .iter()
            .find(|e| e.addresses[0] == ready[0])?
            .clone();
        let c = e.conditions?;
        (c.ready == Some(false) && c.serving == Some(false) && c.terminating == Some(false))
            .then_some(())
    })
    .await;

    // The Service goes: its Endpoints are deleted and its slices collected.
    svcs.delete("web", &Default::default()).await.unwrap();
    eventually(30, "endpoints and slices gone", || async {
        (eps.get_opt("web").await.ok()?.is_none()
            && slices
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .is_empty())
        .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_namespace_gets_a_default_service_account() {
    let t = TestCluster::start().await;
    let nss: Api<Namespace> = Api::all(t.client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "team-a"}})).unwrap();
    nss.create(&PostParams::default(), &ns).await.unwrap();
    let sas: Api<ServiceAccount> = Api::namespaced(t.client.clone(), "team-a");
    eventually(20, "default service account", || async {
        sas.get_opt("default").await.ok()?.map(|_| ())
    })
    .await;
    // Deleted, it comes back.
    sas.delete("default", &Default::default()).await.unwrap();
    eventually(20, "default service account recreated", || async {
        let sa = sas.get_opt("default").await.ok()??;
        Some(sa)
    })
    .await;
}
