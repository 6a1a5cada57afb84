//! kube-rs against an in-process apiserver: typed CRUD, pagination, watches.

mod common;

use std::collections::BTreeMap;

use common::{TestServer, api_status};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher;

fn cm(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_crud_with_optimistic_concurrency() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    let created = cms
        .create(&PostParams::default(), &cm("a", &[("k", "1")]))
        .await
        .expect("create");
    let meta = &created.metadata;
    assert!(meta.uid.as_ref().is_some_and(|u| u.len() == 36));
    assert!(meta.creation_timestamp.is_some());
    let rv1: i64 = meta
        .resource_version
        .as_deref()
        .expect("rv")
        .parse()
        .expect("numeric rv");
    assert!(rv1 > 0);

    let got = cms.get("a").await.expect("get");
    assert_eq!(got.data, created.data);
    assert_eq!(
        got.metadata.resource_version,
        created.metadata.resource_version
    );

    let mut updated = got.clone();
    updated.data = Some([("k".to_string(), "2".to_string())].into());
    let updated = cms
        .replace("a", &PostParams::default(), &updated)
        .await
        .expect("replace");
    let rv2: i64 = updated
        .metadata
        .resource_version
        .as_deref()
        .expect("rv")
        .parse()
        .expect("rv");
    assert!(rv2 > rv1);
    assert_eq!(
        updated.metadata.uid, created.metadata.uid,
        "uid survives updates"
    );

    // The stale copy is refused with upstream's Conflict.
    let status = api_status(
        cms.replace("a", &PostParams::default(), &got)
            .await
            .expect_err("stale"),
    );
    assert_eq!(status.code, 409);
    assert_eq!(status.reason, "Conflict");
    assert_eq!(
        status.message,
        "Operation cannot be fulfilled on configmaps \"a\": the object has been modified; please apply your changes to the latest version and try again"
    );

    let patched = cms
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .expect("merge patch");
    assert_eq!(
        patched
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("x"))
            .map(String::as_str),
        Some("y")
    );
    assert_eq!(patched.data, updated.data);

    let status = api_status(
        cms.create(&PostParams::default(), &cm("a", &[]))
            .await
            .expect_err("dup"),
    );
    assert_eq!(
        (status.code, status.reason.as_str()),
        (409, "AlreadyExists")
    );

    cms.delete("a", &DeleteParams::default())
        .await
        .expect("delete");
    let status = api_status(cms.get("a").await.expect_err("gone"));
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
    assert_eq!(status.message, "configmaps \"a\" not found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_name_and_generation() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut gen_cm = cm("", &[]);
    gen_cm.metadata.name = None;
    gen_cm.metadata.generate_name = Some("web-".into());
    let made = cms
        .create(&PostParams::default(), &gen_cm)
        .await
        .expect("generateName");
    let name = made.metadata.name.expect("name");
    assert!(name.starts_with("web-") && name.len() == 9, "{name}");

    let deploys: Api<Deployment> = Api::namespaced(client, "default");
    let d: Deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "d"}},
                 "template": {"metadata": {"labels": {"app": "d"}},
                              "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
    }))
    .expect("deployment");
    let d = deploys
        .create(&PostParams::default(), &d)
        .await
        .expect("create deployment");
    assert_eq!(d.metadata.generation, Some(1));
    let scaled = deploys
        .patch(
            "d",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 3}})),
        )
        .await
        .expect("patch spec");
    assert_eq!(
        scaled.metadata.generation,
        Some(2),
        "a spec change bumps generation"
    );
    let labelled = deploys
        .patch(
            "d",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await
        .expect("patch labels");
    assert_eq!(
        labelled.metadata.generation,
        Some(2),
        "a metadata change does not"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_with_continue_tokens() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for i in 0..7 {
        cms.create(&PostParams::default(), &cm(&format!("p{i}"), &[]))
            .await
            .expect("create");
    }
    let mut names = Vec::new();
    let mut params = ListParams::default().limit(3);
    let mut pages = 0;
    let first = cms.list(&params).await.expect("page 1");
    let first_rv = first.metadata.resource_version.clone();
    let mut page = first;
    loop {
        pages += 1;
        names.extend(page.items.iter().filter_map(|c| c.metadata.name.clone()));
        // Every page of one list is read at the same revision.
        assert_eq!(page.metadata.resource_version, first_rv);
        match page.metadata.continue_.clone().filter(|c| !c.is_empty()) {
            Some(token) => {
                // A write between pages does not show up in this list.
                if pages == 1 {
                    cms.create(&PostParams::default(), &cm("p99", &[]))
                        .await
                        .expect("create");
                }
                params = params.continue_token(&token);
                page = cms.list(&params).await.expect("next page");
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(names, ["p0", "p1", "p2", "p3", "p4", "p5", "p6"]);

    // Label and field selectors.
    cms.patch(
        "p3",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"labels": {"sel": "yes"}}})),
    )
    .await
    .expect("label");
    let sel = cms
        .list(&ListParams::default().labels("sel=yes"))
        .await
        .expect("label selector");
    assert_eq!(sel.items.len(), 1);
    let by_name = cms
        .list(&ListParams::default().fields("metadata.name=p5"))
        .await
        .expect("field selector");
    assert_eq!(
        by_name
            .items
            .iter()
            .filter_map(|c| c.metadata.name.as_deref())
            .collect::<Vec<_>>(),
        ["p5"]
    );
    let status = api_status(
        cms.list(&ListParams::default().fields("spec.nodeName=x"))
            .await
            .expect_err("unknown field"),
    );
    assert_eq!(
        (status.code, status.message.as_str()),
        (400, "field label not supported: spec.nodeName")
    );

    // Cluster-wide list of a namespaced resource: this test's 8 and the apiserver's own
    // (the legacy token tracking ConfigMap in kube-system, as upstream's bootstrap).
    let all: Api<ConfigMap> = Api::all(client);
    let mut names: Vec<String> = all
        .list(&ListParams::default())
        .await
        .expect("all")
        .items
        .iter()
        .map(|c| {
            format!(
                "{}/{}",
                c.metadata.namespace.as_deref().unwrap_or_default(),
                c.metadata.name.as_deref().unwrap_or_default()
            )
        })
        .collect();
    names.sort();
    assert_eq!(names.len(), 9, "{names:?}");
    assert!(
        names.contains(
            &"kube-system/kube-apiserver-legacy-service-account-token-tracking".to_string()
        ),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_continue_token_and_watch_after_compaction() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    for i in 0..4 {
        cms.create(&PostParams::default(), &cm(&format!("e{i}"), &[]))
            .await
            .expect("create");
    }
    let page = cms
        .list(&ListParams::default().limit(2))
        .await
        .expect("page");
    let token = page.metadata.continue_.clone().expect("continue token");
    let old_rv = page.metadata.resource_version.clone().expect("rv");
    // Two writes, so that compacting at the newest leaves the watch's start (old_rv + 1)
    // below the compact revision.
    cms.create(&PostParams::default(), &cm("later", &[]))
        .await
        .expect("create");
    cms.create(&PostParams::default(), &cm("later2", &[]))
        .await
        .expect("create");
    let now = t.store.current_revision().await.expect("revision");
    t.store.compact(now).await.expect("compact");

    let status = api_status(
        cms.list(&ListParams::default().limit(2).continue_token(&token))
            .await
            .expect_err("expired"),
    );
    assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
    assert!(
        status
            .message
            .starts_with("The provided continue parameter is too old"),
        "{}",
        status.message
    );

    // The watch cache (started by the first list) still replays what it saw after old_rv, as
    // upstream's does; a revision before it started is gone from the cache and the store.
    let before: i64 = old_rv.parse().expect("numeric rv");
    let mut stream = cms
        .watch(&WatchParams::default(), &(before - 1).to_string())
        .await
        .expect("watch")
        .boxed();
    match stream.try_next().await.expect("watch event") {
        Some(WatchEvent::Error(e)) => {
            assert_eq!((e.code, e.reason.as_str()), (410, "Expired"), "{e:?}");
        }
        other => panic!("expected a 410 error event, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_resource_version_and_watcher() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(&PostParams::default(), &cm("before", &[]))
        .await
        .expect("create");
    let rv = cms
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");

    let mut stream = cms
        .watch(&WatchParams::default().timeout(30), &rv)
        .await
        .expect("watch")
        .boxed();
    cms.create(&PostParams::default(), &cm("after", &[("a", "1")]))
        .await
        .expect("create");
    cms.patch(
        "after",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"data": {"a": "2"}})),
    )
    .await
    .expect("patch");
    cms.delete("after", &DeleteParams::default())
        .await
        .expect("delete");
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match stream.try_next().await.expect("event") {
            Some(WatchEvent::Added(c)) => seen.push(("ADDED", c.metadata.name, c.data)),
            Some(WatchEvent::Modified(c)) => seen.push(("MODIFIED", c.metadata.name, c.data)),
            Some(WatchEvent::Deleted(c)) => seen.push(("DELETED", c.metadata.name, c.data)),
            other => panic!("unexpected {other:?}"),
        }
    }
    let kinds: Vec<(&str, Option<&str>)> =
        seen.iter().map(|(k, n, _)| (*k, n.as_deref())).collect();
    assert_eq!(
        kinds,
        [
            ("ADDED", Some("after")),
            ("MODIFIED", Some("after")),
            ("DELETED", Some("after"))
        ]
    );
    assert_eq!(
        seen[1]
            .2
            .as_ref()
            .and_then(|d| d.get("a"))
            .map(String::as_str),
        Some("2")
    );

    // kube-runtime's watcher: initial list, then live events; namespaces are cluster-scoped.
    let nss: Api<Namespace> = Api::all(client);
    let mut w = watcher(nss.clone(), watcher::Config::default()).boxed();
    let mut initial = Vec::new();
    loop {
        match w.try_next().await.expect("watcher event") {
            Some(watcher::Event::Init) => {}
            Some(watcher::Event::InitApply(ns)) => initial.extend(ns.metadata.name),
            Some(watcher::Event::InitDone) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    initial.sort();
    assert_eq!(
        initial,
        ["default", "kube-node-lease", "kube-public", "kube-system"]
    );
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "fresh"}})).expect("ns");
    nss.create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    match w.try_next().await.expect("watcher event") {
        Some(watcher::Event::Apply(ns)) => {
            assert_eq!(ns.metadata.name.as_deref(), Some("fresh"));
            let phase = ns.status.and_then(|s| s.phase);
            assert_eq!(phase.as_deref(), Some("Active"));
            let finalizers = ns.spec.and_then(|s| s.finalizers);
            assert_eq!(finalizers, Some(vec!["kubernetes".to_string()]));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_get_unique_cluster_ips_and_defaults() {
    use k8s_openapi::api::core::v1::{Endpoints, Service};
    let t = TestServer::start().await;
    let client = t.client().await;
    let default_svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let kubernetes = default_svcs
        .get("kubernetes")
        .await
        .expect("kubernetes service");
    let spec = kubernetes.spec.expect("spec");
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.43.0.1"));
    assert_eq!(spec.ports.expect("ports")[0].port, 443);
    let eps: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    let subsets = eps
        .get("kubernetes")
        .await
        .expect("endpoints")
        .subsets
        .expect("subsets");
    let port = subsets[0].ports.as_ref().expect("ports")[0].port;
    assert_eq!(port, i32::from(t.server.local_addr().port()));

    let svc = |name: &str, ip: Option<&str>| -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"clusterIP": ip, "selector": {"app": name}, "ports": [{"port": 80}]},
        }))
        .expect("service")
    };
    let mut ips = std::collections::BTreeSet::new();
    for i in 0..5 {
        let s = default_svcs
            .create(&PostParams::default(), &svc(&format!("s{i}"), None))
            .await
            .expect("create");
        let spec = s.spec.expect("spec");
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"), "defaulted");
        assert_eq!(
            spec.ports.as_ref().expect("ports")[0].protocol.as_deref(),
            Some("TCP")
        );
        let ip = spec.cluster_ip.expect("allocated");
        assert!(ip.starts_with("10.43.") && ip != "10.43.0.1", "{ip}");
        assert_eq!(spec.cluster_ips, Some(vec![ip.clone()]));
        assert!(ips.insert(ip), "duplicate cluster IP");
    }
    // Asking for a taken IP is refused; once its service is gone, the IP is free again.
    let taken = default_svcs
        .get("s0")
        .await
        .expect("s0")
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("ip");
    let status = api_status(
        default_svcs
            .create(&PostParams::default(), &svc("dup", Some(&taken)))
            .await
            .expect_err("taken"),
    );
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert!(
        status.message.contains("provided IP is already allocated"),
        "{}",
        status.message
    );
    default_svcs
        .delete("s0", &DeleteParams::default())
        .await
        .expect("delete");
    let reused = default_svcs
        .create(&PostParams::default(), &svc("dup", Some(&taken)))
        .await
        .expect("IP released");
    assert_eq!(reused.spec.and_then(|s| s.cluster_ip), Some(taken.clone()));
    // The cluster IP is immutable, and kept when an update leaves it out.
    let mut changed = default_svcs.get("dup").await.expect("get");
    if let Some(spec) = changed.spec.as_mut() {
        spec.cluster_ip = None;
        spec.cluster_ips = None;
    }
    let kept = default_svcs
        .replace("dup", &PostParams::default(), &changed)
        .await
        .expect("replace");
    assert_eq!(kept.spec.and_then(|s| s.cluster_ip), Some(taken));
    let status = api_status(
        default_svcs
            .patch(
                "dup",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"clusterIP": "10.43.9.9"}})),
            )
            .await
            .expect_err("immutable"),
    );
    assert_eq!(status.code, 422);
    // Node ports: allocated per port from 30000-32767, unique, released on delete.
    let np: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "np"},
        "spec": {"type": "NodePort", "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81}]},
    }))
    .expect("service");
    let np = default_svcs
        .create(&PostParams::default(), &np)
        .await
        .expect("NodePort service");
    let ports: Vec<i32> = np
        .spec
        .and_then(|s| s.ports)
        .expect("ports")
        .iter()
        .filter_map(|p| p.node_port)
        .collect();
    assert_eq!(ports.len(), 2);
    assert!(
        ports.iter().all(|p| (30000..=32767).contains(p)) && ports[0] != ports[1],
        "{ports:?}"
    );
    let clash: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "clash"},
        "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": ports[1]}]},
    }))
    .expect("service");
    let status = api_status(
        default_svcs
            .create(&PostParams::default(), &clash)
            .await
            .expect_err("port taken"),
    );
    assert_eq!(status.code, 422);
    assert!(
        status.message.contains("spec.ports[0].nodePort"),
        "{}",
        status.message
    );
    default_svcs
        .delete("np", &DeleteParams::default())
        .await
        .expect("delete");
    default_svcs
        .create(&PostParams::default(), &clash)
        .await
        .expect("port released");

    let headless = default_svcs
        .create(&PostParams::default(), &svc("headless", Some("None")))
        .await
        .expect("headless");
    assert_eq!(
        headless.spec.and_then(|s| s.cluster_ip).as_deref(),
        Some("None")
    );
}

/// A Service deleted when its last finalizer goes releases its cluster IP and node ports, as a
/// plain delete does; a Service that becomes `ClusterIP` from `ExternalName` gets a cluster IP,
/// and gives it back when it becomes `ExternalName` again (upstream's service REST).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_release_on_finalizer_removal_and_follow_external_name_changes() {
    use k8s_openapi::api::core::v1::Service;
    let t = TestServer::start().await;
    let client = t.client().await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let service =
        |value: serde_json::Value| -> Service { serde_json::from_value(value).expect("service") };
    let held = svcs
        .create(
            &PostParams::default(),
            &service(serde_json::json!({
                "metadata": {"name": "held", "finalizers": ["example.com/hold"]},
                "spec": {"type": "NodePort", "ports": [{"port": 80}]},
            })),
        )
        .await
        .expect("create");
    let spec = held.spec.expect("spec");
    let ip = spec.cluster_ip.expect("cluster IP");
    let node_port = spec.ports.expect("ports")[0].node_port.expect("node port");
    let wants = |name: &str| {
        service(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"type": "NodePort", "clusterIP": ip,
                     "ports": [{"port": 80, "nodePort": node_port}]},
        }))
    };
    svcs.delete("held", &DeleteParams::default())
        .await
        .expect("delete");
    // Being deleted, it still holds both.
    let status = api_status(
        svcs.create(&PostParams::default(), &wants("again"))
            .await
            .expect_err("still held"),
    );
    assert_eq!(status.code, 422);
    assert!(
        status.message.contains("provided IP is already allocated"),
        "{}",
        status.message
    );
    svcs.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("remove the finalizer");
    assert_eq!(
        api_status(svcs.get("held").await.expect_err("gone")).code,
        404
    );
    let again = svcs
        .create(&PostParams::default(), &wants("again"))
        .await
        .expect("the IP and the node port were released");
    assert_eq!(again.spec.and_then(|s| s.cluster_ip), Some(ip.clone()));

    // ExternalName → ClusterIP: a cluster IP is allocated and held.
    let ext = svcs
        .create(
            &PostParams::default(),
            &service(serde_json::json!({
                "metadata": {"name": "ext"},
                "spec": {"type": "ExternalName", "externalName": "example.com",
                         "ports": [{"port": 80}]},
            })),
        )
        .await
        .expect("ExternalName service");
    assert_eq!(ext.spec.and_then(|s| s.cluster_ip), None);
    let ext = svcs
        .patch(
            "ext",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"type": "ClusterIP", "externalName": null}})),
        )
        .await
        .expect("to ClusterIP");
    let spec = ext.spec.expect("spec");
    let ext_ip = spec.cluster_ip.expect("a cluster IP is allocated");
    assert!(ext_ip.starts_with("10.43.") && ext_ip != ip, "{ext_ip}");
    assert_eq!(spec.cluster_ips, Some(vec![ext_ip.clone()]));
    assert_eq!(spec.ip_families, Some(vec!["IPv4".to_string()]));
    let asks_for = |name: &str| {
        service(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"clusterIP": ext_ip, "ports": [{"port": 80}]},
        }))
    };
    let status = api_status(
        svcs.create(&PostParams::default(), &asks_for("other"))
            .await
            .expect_err("held by ext"),
    );
    assert_eq!(status.code, 422, "{}", status.message);
    // ClusterIP → ExternalName: the IP fields it kept are dropped, and the IP released.
    let ext = svcs
        .patch(
            "ext",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"spec": {"type": "ExternalName", "externalName": "example.org"}}),
            ),
        )
        .await
        .expect("to ExternalName");
    let spec = ext.spec.expect("spec");
    assert_eq!(
        (spec.cluster_ip, spec.cluster_ips, spec.ip_families),
        (None, None, None)
    );
    svcs.create(&PostParams::default(), &asks_for("other"))
        .await
        .expect("the IP was released");
    // An ExternalName service may not carry a cluster IP of its own.
    let status = api_status(
        svcs.patch(
            "ext",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"clusterIP": "10.43.7.7"}})),
        )
        .await
        .expect_err("forbidden"),
    );
    assert_eq!(status.code, 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_list_watch_with_initial_events_and_bookmarks() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "kube-public");
    for i in 0..3 {
        cms.create(&PostParams::default(), &cm(&format!("s{i}"), &[]))
            .await
            .expect("create");
    }
    // sendInitialEvents=true: ADDED for what exists, then a BOOKMARK marking the end.
    let mut w = watcher(cms.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut initial = Vec::new();
    loop {
        match w.try_next().await.expect("watcher event") {
            Some(watcher::Event::Init) => {}
            Some(watcher::Event::InitApply(c)) => initial.extend(c.metadata.name),
            Some(watcher::Event::InitDone) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(initial, ["s0", "s1", "s2"]);
    cms.delete("s1", &DeleteParams::default())
        .await
        .expect("delete");
    match w.try_next().await.expect("watcher event") {
        Some(watcher::Event::Delete(c)) => assert_eq!(c.metadata.name.as_deref(), Some("s1")),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalizers_defer_deletion_until_removed() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let mut held = cm("held", &[]);
    held.metadata.finalizers = Some(vec!["example.com/keep".into()]);
    cms.create(&PostParams::default(), &held)
        .await
        .expect("create");

    // Deleting marks it; it stays until its finalizers are gone.
    let marked = cms
        .delete("held", &DeleteParams::default())
        .await
        .expect("delete");
    let marked = marked.left().expect("a deferred delete returns the object");
    assert!(marked.metadata.deletion_timestamp.is_some());
    let still = cms.get("held").await.expect("still there");
    assert!(still.metadata.deletion_timestamp.is_some());

    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Json::<()>(
            serde_json::from_value(serde_json::json!([
                {"op": "remove", "path": "/metadata/finalizers"}
            ]))
            .expect("json patch"),
        ),
    )
    .await
    .expect("remove finalizers");
    let status = api_status(cms.get("held").await.expect_err("gone"));
    assert_eq!(status.code, 404);
}

/// A pod bound to a node is deleted gracefully; a second DELETE may only shorten the pending
/// grace period (the deletion timestamp moves with it, from the first request's time), a
/// longer or equal one changes nothing, and the kubelet's grace 0 removes the pod — upstream's
/// `BeforeDelete`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_graceful_pod_deletion_may_only_be_shortened() {
    use k8s_openapi::api::core::v1::Pod;
    let t = TestServer::start().await;
    let client = t.client().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "slow"},
        "spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 60,
                 "containers": [{"name": "c", "image": "busybox"}]},
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create");
    let pending = |g: Option<u32>| DeleteParams {
        grace_period_seconds: g,
        ..DeleteParams::default()
    };
    let meta = |p: Pod| {
        let ts = p.metadata.deletion_timestamp.expect("deleting").0;
        (ts, p.metadata.deletion_grace_period_seconds)
    };
    pods.delete("slow", &pending(None)).await.expect("delete");
    let (first, grace) = meta(pods.get("slow").await.expect("still there"));
    assert_eq!(grace, Some(60));
    // Longer or equal: nothing changes.
    for g in [90, 60] {
        pods.delete("slow", &pending(Some(g)))
            .await
            .expect("delete");
        assert_eq!(
            meta(pods.get("slow").await.expect("there")),
            (first, Some(60))
        );
    }
    // Shorter: the timestamp moves 50 s earlier.
    pods.delete("slow", &pending(Some(10)))
        .await
        .expect("delete");
    let (moved, grace) = meta(pods.get("slow").await.expect("there"));
    assert_eq!(grace, Some(10));
    assert_eq!(
        first.duration_since(moved),
        k8s_openapi::jiff::SignedDuration::from_secs(50)
    );
    // The kubelet's final delete.
    pods.delete("slow", &pending(Some(0)))
        .await
        .expect("delete");
    let status = api_status(pods.get("slow").await.expect_err("gone"));
    assert_eq!(status.code, 404);
}

/// A pod its finalizer holds, as upstream's store: the update removing the finalizer within
/// the pod's grace period leaves it terminating (the kubelet's final grace-0 DELETE deletes
/// it); a grace-0 DELETE while the finalizer is still there records the grace 0, and then the
/// finalizer's removal deletes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_held_by_a_finalizer_waits_for_the_kubelets_final_delete() {
    use k8s_openapi::api::core::v1::Pod;
    let t = TestServer::start().await;
    let pods: Api<Pod> = Api::namespaced(t.client().await, "default");
    let held = |name: &str| -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "finalizers": ["example.com/hold"]},
            "spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 60,
                     "containers": [{"name": "c", "image": "busybox"}]},
        }))
        .expect("pod")
    };
    let grace = |g: u32| DeleteParams {
        grace_period_seconds: Some(g),
        ..DeleteParams::default()
    };
    let release = Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}}));

    // Graceful delete, finalizer removed within the grace period: still there, terminating.
    pods.create(&PostParams::default(), &held("first"))
        .await
        .expect("create");
    pods.delete("first", &DeleteParams::default())
        .await
        .expect("graceful delete");
    pods.patch("first", &PatchParams::default(), &release)
        .await
        .expect("finalizer removed");
    let p = pods.get("first").await.expect("still there");
    assert!(p.metadata.deletion_timestamp.is_some());
    assert_eq!(p.metadata.deletion_grace_period_seconds, Some(60));
    assert_eq!(p.metadata.finalizers, None);
    // The kubelet's final delete.
    pods.delete("first", &grace(0)).await.expect("delete");
    assert_eq!(
        api_status(pods.get("first").await.expect_err("gone")).code,
        404
    );

    // The other order: grace 0 while the finalizer holds the pod is recorded...
    pods.create(&PostParams::default(), &held("second"))
        .await
        .expect("create");
    pods.delete("second", &DeleteParams::default())
        .await
        .expect("graceful delete");
    pods.delete("second", &grace(0)).await.expect("delete");
    let p = pods.get("second").await.expect("held by its finalizer");
    assert_eq!(p.metadata.deletion_grace_period_seconds, Some(0));
    // ...and the finalizer's removal deletes it.
    pods.patch("second", &PatchParams::default(), &release)
        .await
        .expect("finalizer removed");
    assert_eq!(
        api_status(pods.get("second").await.expect_err("gone")).code,
        404
    );
}

/// The update that removes the last finalizer of an object being deleted deletes it: a watch
/// sees exactly one DELETED event (with the object's last stored state, at the deletion's
/// resourceVersion), and no MODIFIED for that write, as upstream's `deleteWithoutFinalizers`;
/// the client still gets the object it sent back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_last_finalizer_is_one_deleted_event() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    for (name, finalizers) in [
        ("one", vec!["example.com/a"]),
        ("two", vec!["example.com/a", "example.com/b"]),
    ] {
        let mut held = cm(name, &[("k", "v")]);
        held.metadata.finalizers = Some(finalizers.into_iter().map(String::from).collect());
        cms.create(&PostParams::default(), &held)
            .await
            .expect("create");
        cms.delete(name, &DeleteParams::default())
            .await
            .expect("delete");
    }
    let marked = cms.get("two").await.expect("marked");
    let from = marked.metadata.resource_version.clone().expect("rv");
    let mut events = cms
        .watch(&WatchParams::default(), &from)
        .await
        .expect("watch")
        .boxed();

    // Removing one of two finalizers is an update (MODIFIED); removing the last, a delete.
    let kept = cms
        .patch(
            "two",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"finalizers": ["example.com/b"]}})),
        )
        .await
        .expect("remove one finalizer");
    assert!(kept.metadata.deletion_timestamp.is_some());
    match events.try_next().await.expect("event") {
        Some(WatchEvent::Modified(c)) => {
            assert_eq!(c.metadata.name.as_deref(), Some("two"));
            assert_eq!(
                c.metadata.finalizers,
                Some(vec!["example.com/b".to_string()])
            );
        }
        other => panic!("expected MODIFIED, got {other:?}"),
    }
    let mut last = cms.get("two").await.expect("get");
    last.metadata.finalizers = None;
    let answered = cms
        .replace("two", &PostParams::default(), &last)
        .await
        .expect("PUT without the last finalizer");
    assert_eq!(answered.metadata.finalizers, None);
    assert!(answered.metadata.deletion_timestamp.is_some());
    let deleted_rv = match events.try_next().await.expect("event") {
        Some(WatchEvent::Deleted(c)) => {
            assert_eq!(c.metadata.name.as_deref(), Some("two"));
            // The last state stored: the finalizer the delete found still there.
            assert_eq!(
                c.metadata.finalizers,
                Some(vec!["example.com/b".to_string()])
            );
            c.metadata.resource_version.expect("rv")
        }
        other => panic!("expected DELETED and nothing before it, got {other:?}"),
    };
    assert!(
        deleted_rv.parse::<i64>().expect("rv")
            > kept
                .metadata
                .resource_version
                .as_deref()
                .expect("rv")
                .parse::<i64>()
                .expect("rv")
    );
    assert_eq!(
        api_status(cms.get("two").await.expect_err("gone")).code,
        404
    );
    // A JSON patch removing the only finalizer: the next event is its DELETED.
    cms.patch(
        "one",
        &PatchParams::default(),
        &Patch::Json::<()>(
            serde_json::from_value(serde_json::json!([
                {"op": "remove", "path": "/metadata/finalizers"}
            ]))
            .expect("json patch"),
        ),
    )
    .await
    .expect("remove the finalizer");
    match events.try_next().await.expect("event") {
        Some(WatchEvent::Deleted(c)) => assert_eq!(c.metadata.name.as_deref(), Some("one")),
        other => panic!("expected DELETED of one, got {other:?}"),
    }
    // A dry run removing it deletes nothing.
    let mut dry = cm("dry", &[]);
    dry.metadata.finalizers = Some(vec!["example.com/a".into()]);
    cms.create(&PostParams::default(), &dry)
        .await
        .expect("create");
    cms.delete("dry", &DeleteParams::default())
        .await
        .expect("delete");
    cms.patch(
        "dry",
        &PatchParams {
            dry_run: true,
            ..PatchParams::default()
        },
        &Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("dry run");
    assert!(cms.get("dry").await.is_ok());
}

/// Response headers of a GET through curl, asking for gzip.
async fn curl_headers(t: &TestServer, path: &str) -> String {
    let ca = t.dir.path().join("ca.crt");
    std::fs::write(&ca, t.server.ca_pem()).expect("CA written");
    let (cert, key) = t.admin_cert_files();
    let out = tokio::process::Command::new("curl")
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .args([
            "-s",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-H",
            "Accept-Encoding: gzip",
            "--cacert",
        ])
        .arg(&ca)
        .arg(format!("{}{path}", t.server.url()))
        .output()
        .await
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout).to_ascii_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_lists_are_gzipped_and_watches_are_not() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let blob = "x".repeat(1024);
    let small = curl_headers(&t, "/api/v1/namespaces/default/configmaps").await;
    assert!(small.starts_with("http/"), "{small}");
    assert!(
        !small.contains("content-encoding"),
        "small answers stay plain:\n{small}"
    );
    for i in 0..140 {
        cms.create(
            &PostParams::default(),
            &cm(&format!("big{i}"), &[("blob", &blob)]),
        )
        .await
        .expect("create");
    }
    let big = curl_headers(&t, "/api/v1/namespaces/default/configmaps").await;
    assert!(big.contains("content-encoding: gzip"), "{big}");
    let watch = curl_headers(
        &t,
        "/api/v1/namespaces/default/configmaps?watch=1&timeoutSeconds=1",
    )
    .await;
    assert!(!watch.contains("content-encoding"), "{watch}");
    // A client that does not ask for gzip (kube-rs here) gets the list plain.
    assert_eq!(
        cms.list(&ListParams::default())
            .await
            .expect("list")
            .items
            .len(),
        140
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_assigns_a_pod_to_a_node_once() {
    use k8s_openapi::api::core::v1::Pod;
    let t = TestServer::start().await;
    let client = t.client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]},
    }))
    .expect("pod");
    let created = pods
        .create(&PostParams::default(), &pod)
        .await
        .expect("create");
    let spec = created.spec.expect("spec");
    assert_eq!(spec.restart_policy.as_deref(), Some("Always"), "defaulted");
    assert_eq!(spec.service_account_name.as_deref(), Some("default"));
    assert_eq!(
        spec.containers[0].image_pull_policy.as_deref(),
        Some("IfNotPresent")
    );
    assert_eq!(
        created.status.and_then(|s| s.phase).as_deref(),
        Some("Pending")
    );

    let binding = serde_json::json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": "p"},
        "target": {"apiVersion": "v1", "kind": "Node", "name": "n1"},
    });
    let req = http_request("/api/v1/namespaces/default/pods/p/binding", &binding);
    let status: kube::core::Status = client.request(req).await.expect("bind");
    assert_eq!(status.code, 201);
    let bound = pods.get("p").await.expect("get");
    assert_eq!(bound.spec.and_then(|s| s.node_name).as_deref(), Some("n1"));
    let conditions = bound.status.and_then(|s| s.conditions).expect("conditions");
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "PodScheduled" && c.status == "True")
    );

    let again = http_request("/api/v1/namespaces/default/pods/p/binding", &binding);
    let err = client
        .request::<kube::core::Status>(again)
        .await
        .expect_err("already bound");
    let status = api_status(err);
    assert_eq!(status.code, 409);
    assert!(
        status
            .message
            .contains("is already assigned to node \"n1\""),
        "{}",
        status.message
    );
}

fn http_request(path: &str, body: &serde_json::Value) -> axum::http::Request<Vec<u8>> {
    axum::http::Request::post(path)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body).expect("json"))
        .expect("request")
}
