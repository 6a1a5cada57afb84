//! The watch cache through kube-rs: fan-out to many watchers, replay from a cached
//! resourceVersion, 410 for one the cache no longer has, slow watchers, many resource types,
//! lists and gets served from it, watches of one node's pods, custom resources' caches
//! stopped with their CRD.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::TestServer;
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Resource, ResourceExt as _};
use serde::de::DeserializeOwned;

fn cm(name: &str, value: &str) -> ConfigMap {
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("v".to_string(), value.to_string())])),
        ..Default::default()
    }
}

/// (type, name, resourceVersion) of a watch event; bookmarks are skipped by the callers.
fn summary<K: Resource>(ev: &WatchEvent<K>) -> (String, String, String) {
    let (kind, obj) = match ev {
        WatchEvent::Added(o) => ("ADDED", o),
        WatchEvent::Modified(o) => ("MODIFIED", o),
        WatchEvent::Deleted(o) => ("DELETED", o),
        other => panic!("unexpected event {:?}", std::mem::discriminant(other)),
    };
    (
        kind.to_string(),
        obj.meta().name.clone().unwrap_or_default(),
        obj.meta().resource_version.clone().unwrap_or_default(),
    )
}

/// Collects `n` change events from a watch (bookmarks skipped), with a deadline.
async fn collect<K>(
    stream: impl futures::Stream<Item = kube::Result<WatchEvent<K>>>,
    n: usize,
) -> Vec<(String, String, String)>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut stream = std::pin::pin!(stream);
    let mut out = Vec::new();
    let fut = async {
        while out.len() < n {
            match stream.try_next().await.expect("watch event") {
                Some(WatchEvent::Bookmark(_)) => {}
                Some(WatchEvent::Error(e)) => panic!("watch error {e:?}"),
                Some(ev) => out.push(summary(&ev)),
                None => panic!("watch ended after {} of {n} events", out.len()),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), fut)
        .await
        .expect("events in time");
    out
}

async fn list_rv<K>(api: &Api<K>) -> String
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    api.list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_watchers_receive_every_event_in_order() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let rv = list_rv(&cms).await;
    const EVENTS: usize = 30;
    let mut watchers = Vec::new();
    for _ in 0..200 {
        let stream = cms
            .watch(&WatchParams::default().timeout(120), &rv)
            .await
            .expect("watch");
        watchers.push(tokio::spawn(collect(stream, EVENTS)));
    }
    // 10 creates, 10 updates, 10 deletes: every watcher must see all 30, in this order.
    let mut expected = Vec::new();
    for i in 0..10 {
        let c = cms
            .create(&PostParams::default(), &cm(&format!("c{i}"), "1"))
            .await
            .expect("create");
        expected.push((
            "ADDED".to_string(),
            c.name_any(),
            c.resource_version().unwrap_or_default(),
        ));
    }
    for i in 0..10 {
        let c = cms
            .patch(
                &format!("c{i}"),
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"data": {"v": "2"}})),
            )
            .await
            .expect("patch");
        expected.push((
            "MODIFIED".to_string(),
            c.name_any(),
            c.resource_version().unwrap_or_default(),
        ));
    }
    for i in 0..10 {
        cms.delete(&format!("c{i}"), &DeleteParams::default())
            .await
            .expect("delete");
    }
    for w in watchers {
        let got = w.await.expect("watcher task");
        assert_eq!(got[..20], expected[..], "creates and updates, in order");
        let deletes: Vec<_> = got[20..]
            .iter()
            .map(|e| (e.0.as_str(), e.1.clone()))
            .collect();
        let want: Vec<_> = (0..10).map(|i| ("DELETED", format!("c{i}"))).collect();
        assert_eq!(deletes, want);
        // Revisions strictly increase: nothing reordered or repeated.
        let revs: Vec<i64> = got
            .iter()
            .map(|e| e.2.parse().expect("numeric rv"))
            .collect();
        assert!(revs.windows(2).all(|w| w[0] < w[1]), "{revs:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_a_cached_resource_version_replays_even_after_compaction() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let rv0 = list_rv(&cms).await;
    // A first watch starts the cache at rv0.
    let first = cms
        .watch(&WatchParams::default().timeout(60), &rv0)
        .await
        .expect("watch");
    let a = cms
        .create(&PostParams::default(), &cm("a", "1"))
        .await
        .expect("create");
    let rv_a = a.resource_version().expect("rv");
    cms.create(&PostParams::default(), &cm("b", "1"))
        .await
        .expect("create");
    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"data": {"v": "2"}})),
    )
    .await
    .expect("patch");
    assert_eq!(collect(first, 3).await.len(), 3);
    // The datastore can no longer replay from rv_a; the cache's ring still can.
    let now = t.store.current_revision().await.expect("revision");
    t.store.compact(now).await.expect("compact");
    let replay = cms
        .watch(&WatchParams::default().timeout(60), &rv_a)
        .await
        .expect("watch");
    let got: Vec<(String, String)> = collect(replay, 2)
        .await
        .into_iter()
        .map(|e| (e.0, e.1))
        .collect();
    assert_eq!(
        got,
        [
            ("ADDED".to_string(), "b".to_string()),
            ("MODIFIED".to_string(), "a".to_string())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_version_older_than_the_cache_is_410_gone() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    // No list before the first watch: a list would start the cache (lists are served by it).
    let old = cms
        .create(&PostParams::default(), &cm("old", "1"))
        .await
        .expect("create");
    let rv_old = old.resource_version().expect("rv");
    let newer = cms
        .create(&PostParams::default(), &cm("newer", "1"))
        .await
        .expect("create");
    let rv_new = newer.resource_version().expect("rv");
    // The cache starts at rv_new: rv_old is before anything it holds (upstream's cacher
    // answers 410 there too, although the datastore still has the history).
    let _first = cms
        .watch(&WatchParams::default().timeout(60), &rv_new)
        .await
        .expect("watch");
    let mut stream = cms
        .watch(&WatchParams::default().timeout(60), &rv_old)
        .await
        .expect("watch")
        .boxed();
    match stream.try_next().await.expect("watch event") {
        Some(WatchEvent::Error(e)) => {
            assert_eq!((e.code, e.reason.as_str()), (410, "Expired"), "{e:?}");
            assert_eq!(
                e.message,
                format!("too old resource version: {rv_old} ({rv_new})")
            );
        }
        other => panic!("expected a 410 error event, got {other:?}"),
    }
    assert!(stream.try_next().await.expect("end").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watcher_is_terminated_without_delaying_others() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let rv = list_rv(&cms).await;
    // Never read until the end: its buffers (socket, HTTP, its cache channel) fill up.
    let slow = cms
        .watch(&WatchParams::default().timeout(300), &rv)
        .await
        .expect("watch");
    const EVENTS: usize = 300;
    let fast = tokio::spawn(collect(
        cms.watch(&WatchParams::default().timeout(300), &rv)
            .await
            .expect("watch"),
        EVENTS,
    ));
    let big = "x".repeat(100 * 1024);
    for i in 0..EVENTS {
        cms.create(&PostParams::default(), &cm(&format!("big{i}"), &big))
            .await
            .expect("create");
    }
    let got = fast.await.expect("fast watcher");
    assert_eq!(got.len(), EVENTS);
    // The slow one was cut off: it ends early, without an error, and its client would watch
    // again from its last resourceVersion.
    let mut slow = std::pin::pin!(slow);
    let mut seen = 0;
    let drained = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(ev) = slow.try_next().await.expect("slow watch event") {
            match ev {
                WatchEvent::Added(_) => seen += 1,
                // Due every 30 s: a slow machine gets one before the end.
                WatchEvent::Bookmark(_) => {}
                other => panic!("unexpected event {other:?}"),
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the slow watch was not terminated");
    assert!(seen < EVENTS, "the slow watcher got everything ({seen})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_of_many_resource_types_each_see_their_own_events() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let other_ns: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    let all_cms: Api<ConfigMap> = Api::all(client.clone());
    let rv = list_rv(&all_cms).await;
    const N: usize = 5;
    let wp = WatchParams::default().timeout(120);
    let w_cms = tokio::spawn(collect(cms.watch(&wp, &rv).await.expect("watch"), N));
    let w_secrets = tokio::spawn(collect(secrets.watch(&wp, &rv).await.expect("watch"), N));
    let w_sas = tokio::spawn(collect(sas.watch(&wp, &rv).await.expect("watch"), N));
    let w_leases = tokio::spawn(collect(leases.watch(&wp, &rv).await.expect("watch"), N));
    let w_other = tokio::spawn(collect(other_ns.watch(&wp, &rv).await.expect("watch"), N));
    let w_all = tokio::spawn(collect(
        all_cms.watch(&wp, &rv).await.expect("watch"),
        2 * N,
    ));
    let named = |name: String| kube::api::ObjectMeta {
        name: Some(name),
        ..Default::default()
    };
    for i in 0..N {
        cms.create(&PostParams::default(), &cm(&format!("cm{i}"), "1"))
            .await
            .expect("cm");
        other_ns
            .create(&PostParams::default(), &cm(&format!("sys{i}"), "1"))
            .await
            .expect("cm");
        secrets
            .create(
                &PostParams::default(),
                &Secret {
                    metadata: named(format!("s{i}")),
                    ..Default::default()
                },
            )
            .await
            .expect("secret");
        sas.create(
            &PostParams::default(),
            &ServiceAccount {
                metadata: named(format!("sa{i}")),
                ..Default::default()
            },
        )
        .await
        .expect("sa");
        leases
            .create(
                &PostParams::default(),
                &Lease {
                    metadata: named(format!("l{i}")),
                    ..Default::default()
                },
            )
            .await
            .expect("lease");
    }
    let names = |evs: Vec<(String, String, String)>| -> Vec<String> {
        evs.into_iter()
            .map(|e| {
                assert_eq!(e.0, "ADDED");
                e.1
            })
            .collect()
    };
    let want = |prefix: &str| -> Vec<String> { (0..N).map(|i| format!("{prefix}{i}")).collect() };
    assert_eq!(names(w_cms.await.expect("cms")), want("cm"));
    assert_eq!(names(w_other.await.expect("kube-system")), want("sys"));
    assert_eq!(names(w_secrets.await.expect("secrets")), want("s"));
    assert_eq!(names(w_sas.await.expect("sas")), want("sa"));
    assert_eq!(names(w_leases.await.expect("leases")), want("l"));
    let all: Vec<String> = names(w_all.await.expect("all"));
    let interleaved: Vec<String> = (0..N)
        .flat_map(|i| [format!("cm{i}"), format!("sys{i}")])
        .collect();
    assert_eq!(all, interleaved);
}

/// GET `path` as the admin: status, `Retry-After`, JSON body.
async fn get_raw(client: &kube::Client, path: &str) -> (u16, Option<String>, serde_json::Value) {
    let req = http::Request::get(path)
        .body(kube::client::Body::empty())
        .expect("request");
    let resp = client.send(req).await.expect("response");
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp.into_body().collect_bytes().await.expect("body");
    let json = serde_json::from_slice(&body).expect("JSON body");
    (status, retry, json)
}

fn names_of(list: &serde_json::Value) -> Vec<String> {
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_are_served_from_the_watch_cache_as_upstream() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let sys: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    for i in 0..5 {
        let mut c = cm(&format!("c{i}"), "1");
        c.metadata.labels = Some(BTreeMap::from([(
            "app".to_string(),
            if i % 2 == 0 { "even" } else { "odd" }.to_string(),
        )]));
        cms.create(&PostParams::default(), &c)
            .await
            .expect("create");
    }
    sys.create(&PostParams::default(), &cm("other", "1"))
        .await
        .expect("create");
    // A watch from the current state: once its five ADDED events are in, the cache of
    // configmaps is listed and serving.
    let watch = cms
        .watch(&WatchParams::default().timeout(60), "0")
        .await
        .expect("watch");
    assert_eq!(collect(watch, 5).await.len(), 5);
    let base = "/api/v1/namespaces/default/configmaps";
    let all: Vec<String> = (0..5).map(|i| format!("c{i}")).collect();

    // resourceVersion=0: whatever the cache has, and upstream's cache ignores `limit` there.
    let (code, _, list) = get_raw(&client, &format!("{base}?resourceVersion=0&limit=2")).await;
    assert_eq!(code, 200, "{list}");
    assert_eq!(names_of(&list), all);
    assert!(list["metadata"].get("continue").is_none(), "{list}");
    assert_eq!(list["kind"], "ConfigMapList");
    assert!(
        list["items"][0].get("kind").is_none(),
        "typed list items carry no kind"
    );

    // A consistent list (no resourceVersion) pages: 2 + 2 + 1, in key order, the later pages
    // at the first one's revision (read from the store), the remaining count as upstream.
    let (code, _, page) = get_raw(&client, &format!("{base}?limit=2")).await;
    assert_eq!(code, 200, "{page}");
    assert_eq!(names_of(&page), ["c0", "c1"]);
    assert_eq!(page["metadata"]["remainingItemCount"], 3);
    let rv = page["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    // A change between pages does not show in them.
    cms.create(&PostParams::default(), &cm("c5", "1"))
        .await
        .expect("create");
    let mut names = names_of(&page);
    let mut token = page["metadata"]["continue"].as_str().map(str::to_string);
    while let Some(t) = token {
        let (code, _, page) = get_raw(&client, &format!("{base}?limit=2&continue={t}")).await;
        assert_eq!(code, 200, "{page}");
        assert_eq!(page["metadata"]["resourceVersion"], rv.as_str());
        names.extend(names_of(&page));
        token = page["metadata"]["continue"].as_str().map(str::to_string);
    }
    assert_eq!(names, all);
    // A consistent list sees every write that finished before it: c5 at once.
    let after = cms.list(&ListParams::default()).await.expect("list");
    let latest: Vec<String> = after.items.iter().map(|c| c.name_any()).collect();
    assert_eq!(latest.len(), 6, "{latest:?}");
    let latest_rv: i64 = after
        .metadata
        .resource_version
        .as_deref()
        .expect("rv")
        .parse()
        .expect("numeric");

    // Selectors, on a cache-served list.
    let (_, _, even) = get_raw(
        &client,
        &format!("{base}?resourceVersion=0&labelSelector=app%3Deven"),
    )
    .await;
    assert_eq!(names_of(&even), ["c0", "c2", "c4"]);
    let (_, _, one) = get_raw(
        &client,
        &format!("{base}?resourceVersion=0&fieldSelector=metadata.name%3Dc3"),
    )
    .await;
    assert_eq!(names_of(&one), ["c3"]);
    // A consistent paged list with a selector: pages of matches, no remaining count.
    let (_, _, odd) = get_raw(&client, &format!("{base}?labelSelector=app%3Dodd&limit=1")).await;
    assert_eq!(names_of(&odd), ["c1"]);
    assert!(odd["metadata"]["continue"].is_string(), "{odd}");
    assert!(odd["metadata"].get("remainingItemCount").is_none(), "{odd}");
    // Across namespaces.
    let (_, _, every) = get_raw(&client, "/api/v1/configmaps?resourceVersion=0").await;
    let every = names_of(&every);
    assert!(every.contains(&"other".to_string()) && every.contains(&"c5".to_string()));

    // resourceVersionMatch=NotOlderThan (and a bare resourceVersion): at least that revision.
    for q in [
        format!("resourceVersion={latest_rv}&resourceVersionMatch=NotOlderThan"),
        format!("resourceVersion={latest_rv}"),
    ] {
        let (code, _, list) = get_raw(&client, &format!("{base}?{q}")).await;
        assert_eq!(code, 200, "{q}: {list}");
        let at: i64 = list["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .expect("rv");
        assert!(at >= latest_rv, "{q}: {at} < {latest_rv}");
        assert_eq!(names_of(&list).len(), 6, "{q}");
    }
    // resourceVersionMatch=Exact: the state at that revision, from the store.
    let (code, _, exact) = get_raw(
        &client,
        &format!("{base}?resourceVersion={rv}&resourceVersionMatch=Exact"),
    )
    .await;
    assert_eq!(code, 200, "{exact}");
    assert_eq!(names_of(&exact), all);
    assert_eq!(exact["metadata"]["resourceVersion"], rv.as_str());

    // A revision the server has not reached: the cache waits (3 s, as upstream), then 504
    // with upstream's cause and retry hint. kube-rs' default client retries a 504 (15 times,
    // honouring Retry-After), so the server's own answer is read with a client that does not.
    let future = latest_rv + 1000;
    let mut once = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&t.kubeconfig).expect("kubeconfig"),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("kube config");
    once.default_retry = false;
    let once = kube::Client::try_from(once).expect("kube client");
    let (code, retry, status) = get_raw(
        &once,
        &format!("{base}?resourceVersion={future}&resourceVersionMatch=NotOlderThan"),
    )
    .await;
    assert_eq!(code, 504, "{status}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert_eq!(status["reason"], "Timeout");
    let message = status["message"].as_str().expect("message");
    assert!(
        message.starts_with(&format!(
            "Timeout: Too large resource version: {future}, current: "
        )),
        "{message}"
    );
    assert_eq!(
        status["details"],
        serde_json::json!({
            "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
            "retryAfterSeconds": 1,
        })
    );

    // Upstream's list option validation.
    let (code, _, status) = get_raw(
        &client,
        &format!("{base}?resourceVersion=0&resourceVersionMatch=Exact"),
    )
    .await;
    assert_eq!(code, 422, "{status}");
    assert_eq!(
        status["message"],
        "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: \
         resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\""
    );
    let (code, _, status) = get_raw(
        &client,
        &format!("{base}?resourceVersionMatch=NotOlderThan"),
    )
    .await;
    assert_eq!(code, 422, "{status}");
    assert_eq!(
        status["details"]["causes"][0]["message"],
        "Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided"
    );
    let (code, _, status) = get_raw(
        &client,
        &format!("{base}?limit=1&resourceVersion=5&continue=abc"),
    )
    .await;
    assert_eq!(code, 400, "{status}");
    assert_eq!(
        status["message"],
        "specifying resource version is not allowed when using continue"
    );
}

/// `spec.nodeName=<node>` watches (a kubelet's): a pod bound to the node is ADDED, one that
/// leaves it (moved by a write straight to the datastore, as nothing in the API moves a pod)
/// or is deleted is DELETED, and other nodes' pods are never seen. The cache offers each
/// change only to the watchers of the pod's old and new node (`watch_cache`'s unit tests
/// count that); this checks that those watchers get what upstream sends them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_name_watches_see_the_pods_of_their_node() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let all: Api<Pod> = Api::all(client.clone());
    let pod = |name: &str, node: Option<&str>| -> Pod {
        let mut spec = serde_json::json!({"containers": [{"name": "c", "image": "busybox"}]});
        if let Some(node) = node {
            spec["nodeName"] = serde_json::json!(node);
        }
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "spec": spec}))
            .expect("pod")
    };
    // Already on n1 before the watches: its initial ADDED.
    pods.create(&PostParams::default(), &pod("early", Some("n1")))
        .await
        .expect("create");
    let rv = list_rv(&all).await;
    let wp = |node: &str| {
        WatchParams::default()
            .fields(&format!("spec.nodeName={node}"))
            .timeout(120)
    };
    let n1 = tokio::spawn(collect(all.watch(&wp("n1"), &rv).await.expect("watch"), 4));
    let n2 = tokio::spawn(collect(all.watch(&wp("n2"), &rv).await.expect("watch"), 2));
    let initial = tokio::spawn(collect(all.watch(&wp("n1"), "0").await.expect("watch"), 1));
    // Another kubelet's watches: they must see none of this (checked at the end).
    let n3 = all.watch(&wp("n3"), &rv).await.expect("watch");

    pods.create(&PostParams::default(), &pod("a", Some("n1")))
        .await
        .expect("create a");
    // Created unscheduled, then bound to n1 (what the scheduler does).
    pods.create(&PostParams::default(), &pod("b", None))
        .await
        .expect("create b");
    let binding = serde_json::json!({
        "apiVersion": "v1", "kind": "Binding", "metadata": {"name": "b"},
        "target": {"kind": "Node", "name": "n1"},
    });
    let _: serde_json::Value = pods
        .create_subresource("binding", "b", &PostParams::default(), &binding)
        .await
        .expect("bind b");
    pods.create(&PostParams::default(), &pod("c", Some("n2")))
        .await
        .expect("create c");
    // b moves from n1 to n2.
    let key = b"/registry/pods/default/b";
    let (_, kv) = t.store.get(key, 0).await.expect("get b");
    let kv = kv.expect("b stored");
    let mut moved: serde_json::Value = serde_json::from_slice(&kv.value).expect("stored json");
    moved["spec"]["nodeName"] = serde_json::json!("n2");
    t.store
        .update(
            key,
            serde_json::to_vec(&moved).expect("json"),
            kv.mod_revision,
            0,
        )
        .await
        .expect("move b");
    pods.delete("a", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete a");
    let kinds = |evs: Vec<(String, String, String)>| -> Vec<(String, String)> {
        evs.into_iter().map(|e| (e.0, e.1)).collect()
    };
    let ev = |kind: &str, name: &str| (kind.to_string(), name.to_string());
    assert_eq!(
        kinds(n1.await.expect("n1")),
        [
            ev("ADDED", "a"),
            ev("ADDED", "b"),
            ev("DELETED", "b"),
            ev("DELETED", "a"),
        ]
    );
    assert_eq!(
        kinds(n2.await.expect("n2")),
        [ev("ADDED", "c"), ev("ADDED", "b")]
    );
    assert_eq!(
        kinds(initial.await.expect("initial")),
        [ev("ADDED", "early")]
    );
    // The lists of one node (read from the cache's index).
    for (node, want) in [
        ("n1", vec!["early"]),
        ("n2", vec!["b", "c"]),
        ("n3", vec![]),
    ] {
        let (code, _, list) = get_raw(
            &client,
            &format!("/api/v1/pods?resourceVersion=0&fieldSelector=spec.nodeName%3D{node}"),
        )
        .await;
        assert_eq!(code, 200, "{list}");
        assert_eq!(names_of(&list), want, "{node}");
    }
    // n3's kubelet saw nothing: a change on its node now is the first thing it gets.
    pods.create(&PostParams::default(), &pod("d", Some("n3")))
        .await
        .expect("create d");
    assert_eq!(kinds(collect(n3, 1).await), [ev("ADDED", "d")]);
}

/// A client that does not retry (kube-rs' default client retries 5xx answers), to read the
/// server's own answer.
async fn client_without_retries(t: &TestServer) -> kube::Client {
    let mut config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&t.kubeconfig).expect("kubeconfig"),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("kube config");
    config.default_retry = false;
    kube::Client::try_from(config).expect("kube client")
}

/// A get with a resourceVersion is answered by the type's watch cache once it is at least
/// that fresh (upstream's `Cacher.Get`); without one it reads the store. A value written
/// straight to the datastore that cannot be decoded shows which answered: the store fails on
/// it, the cache skipped it and still has the object's last readable state (or, for a key it
/// never had, answers 404).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gets_with_a_resource_version_are_served_from_the_watch_cache() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let once = client_without_retries(&t).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let created = cms
        .create(&PostParams::default(), &cm("g", "1"))
        .await
        .expect("create");
    let base = "/api/v1/namespaces/default/configmaps";
    // No cache yet: a get with a resourceVersion reads the store (and starts nothing).
    let (code, _, obj) = get_raw(&once, &format!("{base}/g?resourceVersion=0")).await;
    assert_eq!((code, obj["data"]["v"].as_str()), (200, Some("1")), "{obj}");
    // A watch starts the cache; once its ADDED is in, the cache is serving.
    let watch = cms
        .watch(&WatchParams::default().timeout(60), "0")
        .await
        .expect("watch");
    assert_eq!(collect(watch, 1).await.len(), 1);

    // Unreadable values for g and for a key the cache never had.
    let key = b"/registry/configmaps/default/g";
    let (_, kv) = t.store.get(key, 0).await.expect("get g");
    let kv = kv.expect("g stored");
    t.store
        .update(key, b"not json".to_vec(), kv.mod_revision, 0)
        .await
        .expect("garble g");
    t.store
        .create(
            b"/registry/configmaps/default/ghost",
            b"not json".to_vec(),
            0,
        )
        .await
        .expect("garble ghost");
    let garbled = t.store.current_revision().await.expect("revision");

    // The store: an unreadable value is a 500.
    let (code, _, status) = get_raw(&once, &format!("{base}/g")).await;
    assert_eq!(code, 500, "{status}");
    let (code, _, status) = get_raw(&once, &format!("{base}/ghost")).await;
    assert_eq!(code, 500, "{status}");
    // The cache: "0" (whatever it has) and a revision it has reached (it waits for it).
    for rv in ["0".to_string(), garbled.to_string()] {
        let (code, _, obj) = get_raw(&once, &format!("{base}/g?resourceVersion={rv}")).await;
        assert_eq!(code, 200, "{rv}: {obj}");
        assert_eq!(obj["kind"], "ConfigMap");
        assert_eq!(obj["apiVersion"], "v1");
        assert_eq!(obj["data"]["v"], "1", "{obj}");
        assert_eq!(
            obj["metadata"]["resourceVersion"].as_str(),
            created.resource_version().as_deref()
        );
        let (code, _, status) = get_raw(&once, &format!("{base}/ghost?resourceVersion={rv}")).await;
        assert_eq!(code, 404, "{rv}: {status}");
        assert_eq!(status["reason"], "NotFound");
        assert_eq!(status["message"], "configmaps \"ghost\" not found");
    }
    // Through kube-rs' "any" get (resourceVersion=0).
    let any = cms
        .get_with("g", &kube::api::GetParams::any())
        .await
        .expect("get from the cache");
    assert_eq!(
        any.data.and_then(|d| d.get("v").cloned()).as_deref(),
        Some("1")
    );

    // A revision the cache does not reach: 504 after its wait, as a list.
    let future = garbled + 1000;
    let (code, retry, status) = get_raw(&once, &format!("{base}/g?resourceVersion={future}")).await;
    assert_eq!(code, 504, "{status}");
    assert_eq!(retry.as_deref(), Some("1"));
    let message = status["message"].as_str().expect("message");
    assert!(
        message.starts_with(&format!(
            "Timeout: Too large resource version: {future}, current: "
        )),
        "{message}"
    );
    // A resourceVersion that is not one.
    let (code, _, status) = get_raw(&once, &format!("{base}/g?resourceVersion=abc")).await;
    assert_eq!(code, 400, "{status}");
}

/// The CRD of `widgets.wc.example.com` with `spec.properties` as its spec's schema.
fn widget_crd(properties: serde_json::Value) -> CustomResourceDefinition {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.wc.example.com"},
        "spec": {
            "group": "wc.example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget",
                      "listKind": "WidgetList"},
            "versions": [{"name": "v1", "served": true, "storage": true, "schema": {
                "openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": properties}}}}}],
        },
    }))
    .expect("CRD")
}

/// Polls `f` until it holds (generous deadline).
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..1200 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A deleted CRD stops its custom resources' watch cache (upstream tears down its storage):
/// the watches of the old type end after the deletions of its objects, and a CRD re-created
/// with another schema is served by a new cache, started from the store — the old objects
/// are not resurrected, and a watch from a resourceVersion of the old cache's history is too
/// old for the new one (410).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_crd_stops_its_watch_cache_and_a_recreated_one_starts_fresh() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let gvk = GroupVersionKind::gvk("wc.example.com", "v1", "Widget");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "widgets");
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource);
    let widget = |name: &str, spec: serde_json::Value| -> DynamicObject {
        let mut w = DynamicObject::new(name, &resource);
        w.data = serde_json::json!({ "spec": spec });
        w
    };
    let install = |crd: CustomResourceDefinition| {
        let crds = crds.clone();
        let widgets = widgets.clone();
        async move {
            crds.create(&PostParams::default(), &crd)
                .await
                .expect("create CRD");
            eventually("widgets served", || {
                let widgets = widgets.clone();
                async move { widgets.list(&ListParams::default()).await.is_ok() }
            })
            .await;
        }
    };
    install(widget_crd(serde_json::json!({"size": {"type": "integer"}}))).await;
    for (name, size) in [("w1", 1), ("w2", 2)] {
        widgets
            .create(
                &PostParams::default(),
                &widget(name, serde_json::json!({ "size": size })),
            )
            .await
            .expect("create widget");
    }
    // A list starts the cache at its revision; a watch from it is served by the cache.
    let rv = list_rv(&widgets).await;
    let mut old_watch = widgets
        .watch(&WatchParams::default().timeout(600), &rv)
        .await
        .expect("watch")
        .boxed();
    // The cache is serving: a list at the latest revision is answered.
    widgets
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"size": 10}})),
        )
        .await
        .expect("patch");
    let first = tokio::time::timeout(Duration::from_secs(120), old_watch.try_next())
        .await
        .expect("an event in time")
        .expect("watch event");
    assert!(
        matches!(&first, Some(WatchEvent::Modified(w)) if w.name_any() == "w1"),
        "{first:?}"
    );

    crds.delete("widgets.wc.example.com", &DeleteParams::default())
        .await
        .expect("delete CRD");
    // The old watch gets the deletions of the widgets, then its stream ends (long before its
    // 600 s timeout): its cache stopped.
    let mut deleted = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(ev) = old_watch.try_next().await.expect("watch event") {
            match ev {
                WatchEvent::Deleted(w) => deleted.push(w.name_any()),
                WatchEvent::Bookmark(_) => {}
                other => panic!("unexpected event {other:?}"),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the old type's watch did not end");
    deleted.sort();
    assert_eq!(deleted, ["w1", "w2"]);
    eventually("CRD gone", || {
        let crds = crds.clone();
        async move {
            crds.get_opt("widgets.wc.example.com")
                .await
                .expect("get")
                .is_none()
        }
    })
    .await;

    // Re-created with another schema.
    install(widget_crd(serde_json::json!({"color": {"type": "string"}}))).await;
    let (code, _, list) = get_raw(
        &client,
        "/apis/wc.example.com/v1/namespaces/default/widgets?resourceVersion=0",
    )
    .await;
    assert_eq!(code, 200, "{list}");
    assert!(names_of(&list).is_empty(), "{list}");
    let w3 = widgets
        .create(
            &PostParams::default(),
            &widget("w3", serde_json::json!({"color": "red"})),
        )
        .await
        .expect("create under the new schema");
    let mut new_watch = widgets
        .watch(&WatchParams::default().timeout(60), "0")
        .await
        .expect("watch")
        .boxed();
    let added = tokio::time::timeout(Duration::from_secs(120), new_watch.try_next())
        .await
        .expect("an event in time")
        .expect("watch event");
    match added {
        Some(WatchEvent::Added(w)) => {
            assert_eq!(w.name_any(), "w3");
            assert_eq!(w.data["spec"], serde_json::json!({"color": "red"}));
        }
        other => panic!("expected w3's ADDED, got {other:?}"),
    }
    let (code, _, list) = get_raw(
        &client,
        "/apis/wc.example.com/v1/namespaces/default/widgets?resourceVersion=0",
    )
    .await;
    assert_eq!(code, 200, "{list}");
    assert_eq!(names_of(&list), ["w3"]);
    // The old cache's history is not the new cache's: a watch from before the re-creation
    // is too old.
    let mut stale = widgets
        .watch(&WatchParams::default().timeout(60), &rv)
        .await
        .expect("watch")
        .boxed();
    match stale.try_next().await.expect("watch event") {
        Some(WatchEvent::Error(e)) => {
            assert_eq!((e.code, e.reason.as_str()), (410, "Expired"), "{e:?}");
        }
        other => panic!("expected a 410 error event, got {other:?}"),
    }
    drop(w3);
}
