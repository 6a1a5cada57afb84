//! CustomResourceDefinitions through kube-rs: a `#[derive(CustomResource)]` type served by the
//! in-process apiserver — CRD status, CRUD, selectors, watch, status and scale subresources,
//! validation/pruning/defaulting, several versions, deletion, discovery and OpenAPI, and CRDs
//! shared by two apiservers on one datastore.

#![recursion_limit = "256"]

mod common;

use std::time::Duration;

use common::{TestServer, api_status};
use futures::StreamExt as _;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{CustomResource, CustomResourceExt as _, ResourceExt as _};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema, PartialEq)]
#[kube(
    group = "stable.example.com",
    version = "v1",
    kind = "CronTab",
    namespaced,
    status = "CronTabStatus",
    shortname = "ct",
    category = "all",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.labelSelector"
    ),
    printcolumn(name = "Spec", type_ = "string", json_path = ".spec.cronSpec"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas")
)]
#[serde(rename_all = "camelCase")]
pub struct CronTabSpec {
    cron_spec: String,
    #[serde(default)]
    replicas: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    image: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CronTabStatus {
    replicas: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    label_selector: Option<String>,
}

/// Creates a CRD and waits until its custom resources are served.
async fn install(
    client: &kube::Client,
    crd: &CustomResourceDefinition,
) -> CustomResourceDefinition {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), crd)
        .await
        .expect("create CRD");
    let name = crd.metadata.name.clone().expect("name");
    let established = kube::runtime::wait::await_condition(
        crds.clone(),
        &name,
        kube::runtime::conditions::is_crd_established(),
    );
    tokio::time::timeout(Duration::from_secs(20), established)
        .await
        .expect("CRD established in time")
        .expect("wait")
        .expect("CRD exists")
}

/// Waits until `f` holds (polling).
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

fn crontab(name: &str, cron: &str, replicas: i32) -> CronTab {
    let mut ct = CronTab::new(
        name,
        CronTabSpec {
            cron_spec: cron.into(),
            replicas,
            image: None,
        },
    );
    ct.metadata.labels = Some([("app".to_string(), name.to_string())].into());
    ct
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crd_status_and_custom_resource_crud() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let crd = install(&client, &CronTab::crd()).await;
    let status = crd.status.expect("status");
    let names = status.accepted_names.expect("acceptedNames");
    assert_eq!(names.plural, "crontabs");
    assert_eq!(names.kind, "CronTab");
    assert_eq!(names.short_names, Some(vec!["ct".to_string()]));
    assert_eq!(status.stored_versions, Some(vec!["v1".to_string()]));
    let conditions = status.conditions.expect("conditions");
    let named = |kind: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == kind)
            .unwrap_or_else(|| panic!("{kind} condition"))
    };
    assert_eq!(named("NamesAccepted").status, "True");
    assert_eq!(
        named("NamesAccepted").reason.as_deref(),
        Some("NoConflicts")
    );
    assert_eq!(
        named("Established").reason.as_deref(),
        Some("InitialNamesAccepted")
    );

    let cts: Api<CronTab> = Api::namespaced(client.clone(), "default");
    let a = cts
        .create(&PostParams::default(), &crontab("a", "* * * * */5", 1))
        .await
        .expect("create a");
    assert_eq!(a.metadata.generation, Some(1));
    assert!(a.metadata.uid.is_some());
    cts.create(&PostParams::default(), &crontab("b", "0 * * * *", 2))
        .await
        .expect("create b");
    let dup = cts
        .create(&PostParams::default(), &crontab("a", "x", 1))
        .await
        .expect_err("exists");
    let dup = api_status(dup);
    assert_eq!((dup.code, dup.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(
        dup.message,
        "crontabs.stable.example.com \"a\" already exists"
    );

    let got = cts.get("a").await.expect("get");
    assert_eq!(got.spec.cron_spec, "* * * * */5");
    let list = cts
        .list(&ListParams::default().labels("app=b"))
        .await
        .expect("label selector");
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].name_any(), "b");
    let list = cts
        .list(&ListParams::default().fields("metadata.name=a"))
        .await
        .expect("field selector");
    assert_eq!(list.items.len(), 1);
    let all: Api<CronTab> = Api::all(client.clone());
    assert_eq!(
        all.list(&ListParams::default())
            .await
            .expect("all")
            .items
            .len(),
        2
    );
    let bad = all
        .list(&ListParams::default().fields("spec.cronSpec=x"))
        .await
        .expect_err("unknown field selector");
    assert_eq!(api_status(bad).code, 400);

    // Replace: spec change bumps the generation.
    let mut changed = got.clone();
    changed.spec.image = Some("busybox".into());
    let replaced = cts
        .replace("a", &PostParams::default(), &changed)
        .await
        .expect("replace");
    assert_eq!(replaced.metadata.generation, Some(2));
    assert_eq!(replaced.spec.image.as_deref(), Some("busybox"));

    // Merge patch and JSON patch work; strategic merge patch is refused as upstream.
    let merged = cts
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"cronSpec": "1 * * * *"}})),
        )
        .await
        .expect("merge patch");
    assert_eq!(merged.spec.cron_spec, "1 * * * *");
    let jp = http::Request::patch("/apis/stable.example.com/v1/namespaces/default/crontabs/a")
        .header("Content-Type", "application/json-patch+json")
        .body(
            serde_json::to_vec(&json!([{"op": "replace", "path": "/spec/replicas", "value": 4}]))
                .expect("json"),
        )
        .expect("request");
    let patched: CronTab = client.request(jp).await.expect("json patch");
    assert_eq!(patched.spec.replicas, 4);
    let smp = cts
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"replicas": 5}})),
        )
        .await
        .expect_err("strategic merge patch");
    let smp = api_status(smp);
    assert_eq!(
        (smp.code, smp.reason.as_str()),
        (415, "UnsupportedMediaType")
    );

    // An invalid status on the main resource is ignored, not validated.
    let mut bad_status = serde_json::to_value(cts.get("a").await.expect("get")).expect("json");
    bad_status["status"] = json!({"replicas": "many"});
    let req = http::Request::put("/apis/stable.example.com/v1/namespaces/default/crontabs/a")
        .header("Content-Type", "application/json")
        .body(serde_json::to_vec(&bad_status).expect("json"))
        .expect("request");
    let kept: CronTab = client.request(req).await.expect("status ignored");
    assert_eq!(kept.status, None);

    // Status subresource: the main resource ignores status, /status changes only status and
    // does not bump the generation.
    let mut with_status = cts.get("a").await.expect("get");
    let generation = with_status.metadata.generation;
    with_status.status = Some(CronTabStatus {
        replicas: 3,
        label_selector: Some("app=a".into()),
    });
    let ignored = cts
        .replace("a", &PostParams::default(), &with_status)
        .await
        .expect("replace with status");
    assert_eq!(
        ignored.status, None,
        "main resource keeps the stored status"
    );
    with_status.metadata.resource_version = ignored.metadata.resource_version.clone();
    with_status.spec.cron_spec = "ignored".into();
    let st = cts
        .replace_status("a", &PostParams::default(), &with_status)
        .await
        .expect("replace status");
    assert_eq!(st.status.as_ref().map(|s| s.replicas), Some(3));
    assert_eq!(st.spec.cron_spec, "1 * * * *", "/status keeps the spec");
    assert_eq!(st.metadata.generation, generation);

    // Scale subresource through the CRD's paths.
    let scale = cts.get_scale("a").await.expect("get scale");
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(4));
    let scale_status = scale.status.expect("scale status");
    assert_eq!(scale_status.replicas, 3);
    assert_eq!(scale_status.selector.as_deref(), Some("app=a"));
    cts.patch_scale(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 7}})),
    )
    .await
    .expect("patch scale");
    assert_eq!(cts.get("a").await.expect("get").spec.replicas, 7);

    // Delete.
    cts.delete("b", &DeleteParams::default())
        .await
        .expect("delete");
    let gone = api_status(cts.get("b").await.expect_err("gone"));
    assert_eq!(gone.code, 404);
    assert_eq!(gone.message, "crontabs.stable.example.com \"b\" not found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_custom_resources() {
    let t = TestServer::start().await;
    let client = t.client().await;
    install(&client, &CronTab::crd()).await;
    let cts: Api<CronTab> = Api::namespaced(client.clone(), "default");
    let created = cts
        .create(&PostParams::default(), &crontab("w", "* * * * *", 1))
        .await
        .expect("create");
    let rv = created.metadata.resource_version.clone().expect("rv");
    let mut events = cts
        .watch(&WatchParams::default().labels("app=w").timeout(10), &rv)
        .await
        .expect("watch")
        .boxed();
    cts.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 2}})),
    )
    .await
    .expect("patch");
    cts.delete("w", &DeleteParams::default())
        .await
        .expect("delete");
    let mut seen = Vec::new();
    while let Some(ev) = events.next().await {
        match ev.expect("event") {
            WatchEvent::Modified(o) => seen.push(("MODIFIED", o.spec.replicas)),
            WatchEvent::Deleted(o) => {
                seen.push(("DELETED", o.spec.replicas));
                break;
            }
            WatchEvent::Added(o) => seen.push(("ADDED", o.spec.replicas)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, [("MODIFIED", 2), ("DELETED", 2)]);
}

/// A CRD with a hand-written schema exercising validation, pruning and defaults, two served
/// versions, cluster scope.
fn widget_crd() -> CustomResourceDefinition {
    let schema = json!({
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "required": ["size"],
                "properties": {
                    "replicas": {"type": "integer", "minimum": 1, "maximum": 10, "default": 1},
                    "size": {"type": "string", "enum": ["S", "M", "L"]},
                    "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 8},
                    "tags": {"type": "array", "maxItems": 2, "items": {"type": "string"}},
                    "port": {"x-kubernetes-int-or-string": true},
                    "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                },
            },
            "status": {"type": "object", "properties": {"ok": {"type": "boolean"}}},
        },
    });
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.org"},
        "spec": {
            "group": "example.org",
            "scope": "Cluster",
            "names": {"plural": "widgets", "kind": "Widget", "categories": ["toys"]},
            "versions": [
                {"name": "v1", "served": true, "storage": true,
                 "selectableFields": [{"jsonPath": ".spec.size"}],
                 "schema": {"openAPIV3Schema": schema.clone()}},
                {"name": "v1beta1", "served": true, "storage": false,
                 "schema": {"openAPIV3Schema": schema}},
            ],
        },
    }))
    .expect("CRD")
}

fn widgets(client: &kube::Client, version: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("example.org", version, "Widget");
    Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(&gvk, "widgets"),
    )
}

fn widget(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "example.org/v1", "kind": "Widget",
        "metadata": {"name": name}, "spec": spec,
    }))
    .expect("widget")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_validation_pruning_defaults_and_versions() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let crd = install(&client, &widget_crd()).await;
    assert_eq!(
        crd.spec.names.singular.as_deref(),
        Some("widget"),
        "singular defaulted"
    );
    assert_eq!(crd.spec.names.list_kind.as_deref(), Some("WidgetList"));
    let v1 = widgets(&client, "v1");

    // A type error reads as upstream's.
    let err = v1
        .create(
            &PostParams::default(),
            &widget("bad", json!({"size": "S", "replicas": "three"})),
        )
        .await
        .expect_err("type error");
    let status = api_status(err);
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        status.message,
        "Widget.example.org \"bad\" is invalid: spec.replicas: Invalid value: \"string\": \
         spec.replicas in body must be of type integer: \"string\""
    );
    let details = status.details.expect("details");
    assert_eq!(details.group, "example.org");
    let causes = details.causes;
    assert_eq!(causes.len(), 1);
    assert_eq!(causes[0].reason, "FieldValueTypeInvalid");
    assert_eq!(causes[0].field, "spec.replicas");

    // Several problems at once: enum, maximum, pattern, maxItems, required.
    let err = v1
        .create(
            &PostParams::default(),
            &widget(
                "bad",
                json!({"size": "XL", "replicas": 11, "name": "Nope", "tags": ["a", "b", "c"]}),
            ),
        )
        .await
        .expect_err("invalid");
    let causes = api_status(err).details.expect("details").causes;
    let fields: Vec<(&str, &str)> = causes
        .iter()
        .map(|c| (c.field.as_str(), c.reason.as_str()))
        .collect();
    assert!(
        fields.contains(&("spec.size", "FieldValueNotSupported")),
        "{fields:?}"
    );
    assert!(
        fields.contains(&("spec.replicas", "FieldValueInvalid")),
        "{fields:?}"
    );
    assert!(
        fields.contains(&("spec.name", "FieldValueInvalid")),
        "{fields:?}"
    );
    assert!(
        fields.contains(&("spec.tags", "FieldValueTooMany")),
        "{fields:?}"
    );
    let missing = api_status(
        v1.create(&PostParams::default(), &widget("bad", json!({})))
            .await
            .expect_err("required"),
    );
    assert_eq!(
        missing.details.expect("details").causes[0].message,
        "Required value"
    );

    // Unknown fields are pruned (and refused under Strict); defaults are applied; fields under
    // x-kubernetes-preserve-unknown-fields are kept; int-or-string takes both.
    let created = v1
        .create(
            &PostParams::default(),
            &widget(
                "w1",
                json!({"size": "M", "bogus": true, "port": "http",
                       "extra": {"anything": {"goes": 1}}}),
            ),
        )
        .await
        .expect("create");
    let spec = &created.data["spec"];
    assert!(spec.get("bogus").is_none(), "pruned: {spec}");
    assert_eq!(spec["replicas"], 1, "defaulted");
    assert_eq!(spec["extra"]["anything"]["goes"], 1);
    assert_eq!(created.metadata.generation, Some(1));
    let strict = http::Request::post("/apis/example.org/v1/widgets?fieldValidation=Strict")
        .header("Content-Type", "application/json")
        .body(serde_json::to_vec(&widget("w2", json!({"size": "M", "bogus": true}))).expect("json"))
        .expect("request");
    let err = client
        .request::<DynamicObject>(strict)
        .await
        .expect_err("strict");
    let err = api_status(err);
    assert_eq!(err.code, 400);
    assert!(
        err.message.contains("unknown field \"spec.bogus\""),
        "{}",
        err.message
    );

    // selectableFields are field selectors of that version.
    v1.create(&PostParams::default(), &widget("w3", json!({"size": "L"})))
        .await
        .expect("create w3");
    let by_size = v1
        .list(&ListParams::default().fields("spec.size=L"))
        .await
        .expect("selectable field");
    let names: Vec<String> = by_size.items.iter().map(|w| w.name_any()).collect();
    assert_eq!(names, ["w3"]);
    v1.delete("w3", &DeleteParams::default())
        .await
        .expect("delete w3");

    // Another served version: same object, apiVersion rewritten (conversion None).
    let beta = widgets(&client, "v1beta1");
    let through_beta = beta.get("w1").await.expect("get via v1beta1");
    assert_eq!(
        through_beta.types.expect("types").api_version,
        "example.org/v1beta1"
    );
    let list = beta
        .list(&ListParams::default())
        .await
        .expect("list v1beta1");
    assert_eq!(list.items.len(), 1);
    // Written through v1beta1, stored in the storage version (v1).
    beta.patch(
        "w1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"via": "beta"}}})),
    )
    .await
    .expect("patch via v1beta1");
    let (_, kv) = t
        .store
        .get(b"/registry/example.org/widgets/w1", 0)
        .await
        .expect("store get");
    let stored: Value = serde_json::from_slice(&kv.expect("stored").value).expect("json");
    assert_eq!(stored["apiVersion"], "example.org/v1");
    assert_eq!(stored["metadata"]["labels"]["via"], "beta");

    // Without a status subresource, a status change bumps the generation too.
    let bumped = v1
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"ok": true}})),
        )
        .await
        .expect("patch status field");
    assert_eq!(bumped.metadata.generation, Some(2));
    assert_eq!(bumped.data["status"]["ok"], true);
    let pruned = v1
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"unknown": 1}})),
        )
        .await
        .expect("patch unknown status field");
    assert!(pruned.data["status"].get("unknown").is_none());
    assert_eq!(pruned.metadata.generation, Some(2), "nothing changed");

    // A CRD update reaches the registry: v1beta1 no longer served.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "widgets.example.org",
        &PatchParams::default(),
        &Patch::Json::<()>(
            serde_json::from_value(json!([
                {"op": "replace", "path": "/spec/versions/1/served", "value": false}
            ]))
            .expect("patch"),
        ),
    )
    .await
    .expect("stop serving v1beta1");
    eventually("v1beta1 not served", || {
        let beta = beta.clone();
        async move {
            matches!(beta.list(&ListParams::default()).await, Err(kube::Error::Api(s)) if s.code == 404)
        }
    })
    .await;
    assert!(v1.get("w1").await.is_ok(), "v1 still served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_conflicts_are_not_accepted() {
    let t = TestServer::start().await;
    let client = t.client().await;
    install(&client, &CronTab::crd()).await;
    let mut other: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": "crontabbers.stable.example.com"},
        "spec": {
            "group": "stable.example.com", "scope": "Namespaced",
            "names": {"plural": "crontabbers", "kind": "CronTabber", "shortNames": ["ct"]},
            "versions": [{"name": "v1", "served": true, "storage": true,
                          "schema": {"openAPIV3Schema": {"type": "object",
                              "x-kubernetes-preserve-unknown-fields": true}}}],
        },
    }))
    .expect("CRD");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &other)
        .await
        .expect("create");
    let name = "crontabbers.stable.example.com";
    let condition = || {
        let crds = crds.clone();
        async move {
            let crd = crds.get(name).await.expect("get");
            crd.status
                .and_then(|s| s.conditions)
                .and_then(|cs| cs.into_iter().find(|c| c.type_ == "NamesAccepted"))
        }
    };
    eventually("NamesAccepted False", || async {
        condition().await.is_some_and(|c| c.status == "False")
    })
    .await;
    let cond = condition().await.expect("condition");
    assert_eq!(cond.reason.as_deref(), Some("NameConflict"));
    assert_eq!(cond.message.as_deref(), Some("\"ct\" is already in use"));
    let dynamic = Api::<DynamicObject>::namespaced_with(
        client.clone(),
        "default",
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("stable.example.com", "v1", "CronTabber"),
            "crontabbers",
        ),
    );
    let err = dynamic
        .list(&ListParams::default())
        .await
        .expect_err("not served");
    assert_eq!(api_status(err).code, 404);

    // A CRD whose name is not <plural>.<group> is refused.
    other.metadata.name = Some("wrong.stable.example.com".into());
    other.spec.names.short_names = None;
    let err = api_status(
        crds.create(&PostParams::default(), &other)
            .await
            .expect_err("invalid"),
    );
    assert_eq!(err.code, 422);
    assert!(err.message.contains("metadata.name"), "{}", err.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_crd_deletes_its_custom_resources() {
    let t = TestServer::start().await;
    let client = t.client().await;
    install(&client, &CronTab::crd()).await;
    let cts: Api<CronTab> = Api::namespaced(client.clone(), "default");
    for n in ["x", "y"] {
        cts.create(&PostParams::default(), &crontab(n, "* * * * *", 1))
            .await
            .expect("create");
    }
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.delete("crontabs.stable.example.com", &DeleteParams::default())
        .await
        .expect("delete CRD");
    eventually("CRD gone", || {
        let crds = crds.clone();
        async move {
            crds.get_opt("crontabs.stable.example.com")
                .await
                .expect("get")
                .is_none()
        }
    })
    .await;
    let left = t
        .store
        .list(
            b"/registry/stable.example.com/crontabs/",
            rk3s_datastore::ListOptions::default(),
        )
        .await
        .expect("list store");
    assert!(
        left.kvs.is_empty(),
        "custom resources deleted with their CRD"
    );
    eventually("no longer served", || {
        let cts = cts.clone();
        async move { cts.list(&ListParams::default()).await.is_err() }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crd_deletion_passes_through_terminating() {
    let t = TestServer::start().await;
    let client = t.client().await;
    install(&client, &CronTab::crd()).await;
    let cts: Api<CronTab> = Api::namespaced(client.clone(), "default");
    // A finalizer on a custom resource holds the CRD in Terminating.
    let mut held = crontab("held", "* * * * *", 1);
    held.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    cts.create(&PostParams::default(), &held)
        .await
        .expect("create");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let deleted = crds
        .delete("crontabs.stable.example.com", &DeleteParams::default())
        .await
        .expect("delete CRD");
    let crd = deleted.left().expect("the CRD, marked for deletion");
    assert!(crd.metadata.deletion_timestamp.is_some());
    assert!(
        crd.metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"customresourcecleanup.apiextensions.k8s.io".to_string())
    );
    let terminating = crd
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Terminating")
        .expect("Terminating condition");
    assert_eq!(terminating.status, "True");
    // No new custom resources while terminating. The create handler reads the CRD from the
    // apiserver's CRD cache, which follows the store's watch (as upstream's crdHandler reads
    // its informer's lister): right after the DELETE it may not know yet, so this polls until
    // the refusal (a custom resource created in that window is removed by the cleanup).
    let mut attempt = 0;
    let refused = loop {
        attempt += 1;
        match cts
            .create(
                &PostParams::default(),
                &crontab(&format!("late-{attempt}"), "* * * * *", 1),
            )
            .await
        {
            Err(e) => break api_status(e),
            Ok(_) if attempt < 100 => tokio::time::sleep(Duration::from_millis(50)).await,
            Ok(created) => panic!("create while terminating: {created:?}"),
        }
    };
    assert_eq!(refused.code, 405, "{refused:?}");
    // The held custom resource is marked for deletion and keeps the CRD alive.
    eventually("custom resource marked for deletion", || {
        let cts = cts.clone();
        async move {
            cts.get("held")
                .await
                .is_ok_and(|c| c.metadata.deletion_timestamp.is_some())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        crds.get_opt("crontabs.stable.example.com")
            .await
            .expect("get")
            .is_some(),
        "the CRD waits for its custom resources"
    );
    cts.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("drop the finalizer");
    eventually("CRD gone", || {
        let crds = crds.clone();
        async move {
            crds.get_opt("crontabs.stable.example.com")
                .await
                .expect("get")
                .is_none()
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_and_openapi_describe_custom_resources() {
    let t = TestServer::start().await;
    let client = t.client().await;
    install(&client, &CronTab::crd()).await;
    install(&client, &widget_crd()).await;
    let discovery = kube::discovery::Discovery::new(client.clone())
        .run()
        .await
        .expect("discovery");
    let group = discovery
        .groups()
        .find(|g| g.name() == "example.org")
        .expect("example.org discovered");
    assert_eq!(group.preferred_version(), Some("v1"));
    assert_eq!(group.versions().collect::<Vec<_>>(), ["v1", "v1beta1"]);
    let (ar, caps) = discovery
        .resolve_gvk(&GroupVersionKind::gvk(
            "stable.example.com",
            "v1",
            "CronTab",
        ))
        .expect("CronTab discovered");
    assert_eq!(ar.plural, "crontabs");
    assert!(
        caps.subresources
            .iter()
            .any(|(s, _)| s.plural == "crontabs/scale" || s.plural == "scale"),
        "{:?}",
        caps.subresources
    );

    let req = |path: &str| {
        http::Request::get(path)
            .header("Accept", "application/json")
            .body(Vec::new())
            .expect("request")
    };
    let list: Value = client
        .request(req("/apis/stable.example.com/v1"))
        .await
        .expect("resource list");
    let entry = list["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .find(|r| r["name"] == "crontabs")
        .expect("crontabs")
        .clone();
    assert_eq!(entry["shortNames"], json!(["ct"]));
    assert_eq!(entry["categories"], json!(["all"]));
    assert_eq!(entry["namespaced"], true);
    let index: Value = client.request(req("/openapi/v3")).await.expect("index");
    assert!(
        index["paths"]["apis/stable.example.com/v1"].is_object(),
        "{index}"
    );
    let doc: Value = client
        .request(req("/openapi/v3/apis/stable.example.com/v1"))
        .await
        .expect("document");
    let schema = &doc["components"]["schemas"]["com.example.stable.v1.CronTab"];
    assert_eq!(
        schema["x-kubernetes-group-version-kind"][0]["kind"],
        "CronTab"
    );
    assert!(schema["properties"]["spec"]["properties"]["cronSpec"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crds_are_shared_by_apiservers_on_one_datastore() {
    let t = TestServer::start().await;
    let client = t.client().await;
    install(&client, &CronTab::crd()).await;
    // A second apiserver on the same store, started after the CRD exists, serves it at once.
    let second =
        rk3s_apiserver::Apiserver::start(t.store.clone(), "127.0.0.1:0".parse().expect("address"))
            .await
            .expect("second apiserver");
    let second_client = client_for(&second, &t).await;
    let cts2: Api<CronTab> = Api::namespaced(second_client.clone(), "default");
    cts2.create(&PostParams::default(), &crontab("via-b", "* * * * *", 1))
        .await
        .expect("create through the second apiserver");
    // A CRD created through the first apiserver later reaches the second through its watch.
    install(&client, &widget_crd()).await;
    let w2 = widgets(&second_client, "v1");
    eventually("widgets served by the second apiserver", || {
        let w2 = w2.clone();
        async move { w2.list(&ListParams::default()).await.is_ok() }
    })
    .await;
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_warn_and_namespace_deletion_waits_for_its_finalizer() {
    let t = TestServer::start().await;
    let client = t.client().await;
    install(&client, &CronTab::crd()).await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "team"}})).expect("ns"),
        )
        .await
        .expect("namespace");
    // fieldValidation=Warn (the default): created, pruned, and a Warning header names the field.
    let body = json!({
        "apiVersion": "stable.example.com/v1", "kind": "CronTab",
        "metadata": {"name": "warned"},
        "spec": {"cronSpec": "* * * * *", "bogus": 1},
    });
    let req = http::Request::post("/apis/stable.example.com/v1/namespaces/team/crontabs")
        .header("Content-Type", "application/json")
        .body(kube::client::Body::from(
            serde_json::to_vec(&body).expect("json"),
        ))
        .expect("request");
    let resp = client.send(req).await.expect("create");
    assert_eq!(resp.status(), 201);
    let warnings: Vec<String> = resp
        .headers()
        .get_all("warning")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    assert_eq!(warnings, ["299 - \"unknown field \\\"spec.bogus\\\"\""]);
    let cts: Api<CronTab> = Api::namespaced(client.clone(), "team");
    assert_eq!(
        cts.get("warned").await.expect("get").spec.cron_spec,
        "* * * * *"
    );

    // Deleting the namespace marks it Terminating; emptying it is the namespace controller's
    // work (rk3s-controller), so its custom resources are still there.
    let deleted = namespaces
        .delete("team", &DeleteParams::default())
        .await
        .expect("delete namespace");
    let ns = deleted.left().expect("the namespace, not a Status");
    assert!(ns.metadata.deletion_timestamp.is_some());
    assert_eq!(
        ns.status.and_then(|s| s.phase).as_deref(),
        Some("Terminating")
    );
    assert_eq!(
        ns.spec.and_then(|s| s.finalizers).unwrap_or_default(),
        ["kubernetes"]
    );
    let left = t
        .store
        .list(
            b"/registry/stable.example.com/crontabs/team/",
            rk3s_datastore::ListOptions::default(),
        )
        .await
        .expect("list store");
    assert_eq!(
        left.kvs.len(),
        1,
        "content stays until the controller removes it"
    );
    // No new content in a terminating namespace.
    let refused = cts
        .create(
            &PostParams::default(),
            &CronTab::new(
                "late",
                CronTabSpec {
                    cron_spec: "* * * * *".into(),
                    replicas: 1,
                    image: None,
                },
            ),
        )
        .await
        .expect_err("create in a terminating namespace");
    assert!(
        matches!(&refused, kube::Error::Api(s) if s.code == 403
            && s.message.contains("because it is being terminated")),
        "{refused}"
    );
    // A second DELETE while the `kubernetes` finalizer holds it: upstream's 409.
    let again = namespaces
        .delete("team", &DeleteParams::default())
        .await
        .expect_err("second delete");
    assert!(
        matches!(&again, kube::Error::Api(s) if s.code == 409
            && s.message.contains("The system is ensuring all content is removed")),
        "{again}"
    );
    // Spec changes through the main resource keep spec.finalizers.
    let mut current = namespaces.get("team").await.expect("get");
    current.spec = Some(Default::default());
    let kept = namespaces
        .replace("team", &PostParams::default(), &current)
        .await
        .expect("replace");
    assert_eq!(
        kept.spec.and_then(|s| s.finalizers).unwrap_or_default(),
        ["kubernetes"]
    );
    // What the controller does when the namespace is empty: PUT /finalize without its
    // finalizer. Then nothing holds the namespace and it goes.
    let mut finalize = namespaces.get("team").await.expect("get");
    finalize.spec = Some(k8s_openapi::api::core::v1::NamespaceSpec {
        finalizers: Some(vec![]),
    });
    namespaces
        .replace_subresource("finalize", "team", &PostParams::default(), &finalize)
        .await
        .expect("finalize");
    assert!(namespaces.get_opt("team").await.expect("get").is_none());
}

/// A client for another apiserver of the test (same CA-less kubeconfig shape as the harness).
async fn client_for(server: &rk3s_apiserver::RunningApiserver, t: &TestServer) -> kube::Client {
    // The second apiserver has its own PKI: its own admin credentials.
    let path = t.dir.path().join("kubeconfig-second");
    std::fs::write(&path, server.admin_kubeconfig()).expect("kubeconfig");
    t.client_from(&path).await
}

/// A CRD exercising every rule family of the structural schema and CEL.
fn gizmo_crd() -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "gizmos.example.io"},
        "spec": {
            "group": "example.io",
            "scope": "Namespaced",
            "names": {"plural": "gizmos", "kind": "Gizmo"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {
                    "metadata": {"type": "object",
                                 "properties": {"name": {"type": "string", "maxLength": 10}}},
                    "spec": {
                        "type": "object",
                        "anyOf": [{"required": ["email"]}, {"required": ["phone"]}],
                        "oneOf": [{"required": ["small"]}, {"required": ["large"]}],
                        "not": {"required": ["forbidden"]},
                        "allOf": [{"properties": {"level": {"minimum": 1}}},
                                  {"properties": {"level": {"maximum": 5}}}],
                        "x-kubernetes-validations": [
                            {"rule": "self.min <= self.max", "message": "min must not exceed max"},
                            {"rule": "!has(self.email) || self.email.endsWith('@example.io')",
                             "fieldPath": ".email", "reason": "FieldValueForbidden"},
                            {"rule": "self.level >= oldSelf.level",
                             "messageExpression": "'level may not go down from ' + string(oldSelf.level)"},
                        ],
                        "properties": {
                            "email": {"type": "string", "format": "email"},
                            "phone": {"type": "string"},
                            "small": {"type": "boolean"},
                            "large": {"type": "boolean"},
                            "forbidden": {"type": "string"},
                            "level": {"type": "integer", "default": 1},
                            "min": {"type": "integer", "default": 0},
                            "max": {"type": "integer", "default": 10},
                            "since": {"type": "string", "format": "date-time"},
                            "id": {"type": "string", "format": "uuid"},
                            "tags": {"type": "array", "x-kubernetes-list-type": "set",
                                     "items": {"type": "string"}},
                            "ports": {"type": "array", "x-kubernetes-list-type": "map",
                                      "x-kubernetes-list-map-keys": ["name", "protocol"],
                                      "items": {"type": "object", "required": ["name", "protocol"],
                                                "properties": {"name": {"type": "string"},
                                                               "protocol": {"type": "string"},
                                                               "port": {"type": "integer"}}}},
                            "template": {"type": "object", "x-kubernetes-embedded-resource": true,
                                         "x-kubernetes-preserve-unknown-fields": true},
                        },
                    },
                    "status": {"type": "object",
                               "x-kubernetes-validations": [{"rule": "self.ready == true || !has(self.reason) || self.reason != 'forced'",
                                                             "message": "a forced status must be ready"}],
                               "properties": {"ready": {"type": "boolean"}, "reason": {"type": "string"}}},
                },
            }}}],
        },
    }))
    .expect("CRD")
}

fn gizmos(client: &kube::Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("example.io", "v1", "Gizmo");
    Api::namespaced_with(
        client.clone(),
        "default",
        &ApiResource::from_gvk_with_plural(&gvk, "gizmos"),
    )
}

fn gizmo(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "example.io/v1", "kind": "Gizmo",
        "metadata": {"name": name}, "spec": spec,
    }))
    .expect("gizmo")
}

/// The `field: message` of every cause of a refused write.
async fn refused(api: &Api<DynamicObject>, obj: &DynamicObject) -> Vec<String> {
    let status = api_status(
        api.create(&PostParams::default(), obj)
            .await
            .expect_err("refused"),
    );
    assert_eq!(
        (status.code, status.reason.as_str()),
        (422, "Invalid"),
        "{status:?}"
    );
    status
        .details
        .expect("details")
        .causes
        .iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_junctors_formats_list_types_and_cel_rules() {
    let t = TestServer::start().await;
    let client = t.client().await;
    install(&client, &gizmo_crd()).await;
    let api = gizmos(&client);
    let good = json!({"email": "a@example.io", "small": true, "level": 2,
        "since": "2024-02-29T12:00:00Z", "id": "123e4567-e89b-12d3-a456-426614174000",
        "tags": ["a", "b"],
        "ports": [{"name": "http", "protocol": "TCP", "port": 80},
                  {"name": "http", "protocol": "UDP", "port": 80}],
        "template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}});
    let created = api
        .create(&PostParams::default(), &gizmo("g1", good.clone()))
        .await
        .expect("a valid gizmo");
    assert_eq!(
        created.data["spec"]["max"], 10,
        "defaults applied before the rules"
    );

    // anyOf / oneOf / not / allOf.
    let mut bad = good.clone();
    bad.as_object_mut().expect("spec").remove("email");
    bad["large"] = json!(true);
    bad["forbidden"] = json!("x");
    bad["level"] = json!(9);
    let got = refused(&api, &gizmo("g2", bad)).await;
    for want in [
        "<nil>: Invalid value: \"\": \"spec\" must validate at least one schema (anyOf)",
        "spec.email: Required value",
        "<nil>: Invalid value: \"\": \"spec\" must validate one and only one schema (oneOf). Found 2 valid alternatives",
        "<nil>: Invalid value: \"\": \"spec\" must not validate the schema (not)",
        "spec.level: Invalid value: 9: spec.level in body should be less than or equal to 5",
        "<nil>: Invalid value: \"\": \"spec\" must validate all the schemas (allOf)",
    ] {
        assert!(got.iter().any(|g| g == want), "{want} not in {got:?}");
    }

    // formats.
    let mut bad = good.clone();
    bad["since"] = json!("yesterday");
    bad["id"] = json!("not-a-uuid");
    bad["email"] = json!("nobody");
    let got = refused(&api, &gizmo("g2", bad)).await;
    for want in [
        "spec.since: Invalid value: \"yesterday\": spec.since in body must be of type date-time: \"yesterday\"",
        "spec.id: Invalid value: \"not-a-uuid\": spec.id in body must be of type uuid: \"not-a-uuid\"",
        "spec.email: Invalid value: \"nobody\": spec.email in body must be of type email: \"nobody\"",
    ] {
        assert!(got.iter().any(|g| g == want), "{want} not in {got:?}");
    }

    // list-type set and map uniqueness.
    let mut bad = good.clone();
    bad["tags"] = json!(["a", "b", "a"]);
    bad["ports"] = json!([{"name": "http", "protocol": "TCP"}, {"name": "http", "protocol": "TCP", "port": 1}]);
    let mut got = refused(&api, &gizmo("g2", bad)).await;
    got.sort();
    assert_eq!(
        got,
        [
            "spec.ports[1]: Duplicate value: map[string]interface {}{\"name\":\"http\", \"protocol\":\"TCP\"}",
            "spec.tags[2]: Duplicate value: \"a\"",
        ]
    );

    // Embedded resources need apiVersion and kind; the CR's own name follows the schema.
    let mut bad = good.clone();
    bad["template"] = json!({"kind": "Not A Kind", "metadata": {"name": "a/b"}});
    let got = refused(&api, &gizmo("much-too-long-name", bad)).await;
    for want in [
        "spec.template.apiVersion: Required value: must not be empty",
        "spec.template.metadata.name: Invalid value: \"a/b\": may not contain '/'",
        "metadata.name: Too long: may not be more than 10 bytes",
    ] {
        assert!(got.iter().any(|g| g == want), "{want} not in {got:?}");
    }
    assert!(
        got.iter().any(|g| g.starts_with("spec.template.kind: Invalid value: \"Not A Kind\": may have mixed case, but should otherwise match: a DNS-1035 label")),
        "{got:?}"
    );

    // CEL: message, fieldPath + reason.
    let mut bad = good.clone();
    bad["min"] = json!(11);
    bad["email"] = json!("a@elsewhere.io");
    let got = refused(&api, &gizmo("g2", bad)).await;
    assert_eq!(
        got,
        [
            "spec: Invalid value: \"object\": min must not exceed max",
            "spec.email: Forbidden: failed rule: !has(self.email) || self.email.endsWith('@example.io')",
        ]
    );

    // CEL transition rule on update and patch: `oldSelf` is the stored object's spec.
    let err = api
        .patch(
            "g1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"level": 1}})),
        )
        .await
        .expect_err("level went down");
    let status = api_status(err);
    assert_eq!(
        status.message,
        "Gizmo.example.io \"g1\" is invalid: spec: Invalid value: \"object\": level may not go down from 2"
    );
    api.patch(
        "g1",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"level": 3}})),
    )
    .await
    .expect("level went up");
    let mut current = api.get("g1").await.expect("get");
    current.data["spec"]["level"] = json!(2);
    let err = api
        .replace("g1", &PostParams::default(), &current)
        .await
        .expect_err("update refused too");
    assert_eq!(api_status(err).code, 422);
    let applied = api
        .patch(
            "g1",
            &PatchParams::apply("test").force(),
            &Patch::Apply(json!({"apiVersion": "example.io/v1", "kind": "Gizmo",
                "metadata": {"name": "g1"}, "spec": {"email": "a@example.io", "small": true, "level": 0}})),
        )
        .await
        .expect_err("apply refused too");
    assert_eq!(api_status(applied).code, 422);

    // Rules on the status are checked through /status.
    let err = api
        .patch_status(
            "g1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"ready": false, "reason": "forced"}})),
        )
        .await
        .expect_err("status rule");
    assert_eq!(
        api_status(err).message,
        "Gizmo.example.io \"g1\" is invalid: status: Invalid value: \"object\": a forced status must be ready"
    );
    api.patch_status(
        "g1",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"ready": true, "reason": "forced"}})),
    )
    .await
    .expect("status accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crd_specs_are_validated_as_upstream() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let refuse = |crd: Value| {
        let crds = crds.clone();
        async move {
            let crd: CustomResourceDefinition = serde_json::from_value(crd).expect("CRD");
            let status = api_status(
                crds.create(&PostParams::default(), &crd)
                    .await
                    .expect_err("refused"),
            );
            assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
            status
                .details
                .expect("details")
                .causes
                .iter()
                .map(|c| format!("{}: {}", c.field, c.message))
                .collect::<Vec<_>>()
        }
    };
    let base = serde_json::to_value(gizmo_crd()).expect("json");
    let schema_at = "spec.versions[0].schema.openAPIV3Schema";

    let mut c = base.clone();
    c["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["phone"] =
        json!({"description": "no type"});
    let got = refuse(c).await;
    assert_eq!(
        got,
        [format!(
            "{schema_at}.properties[spec].properties[phone].type: Required value: must not be empty for specified object fields"
        )]
    );

    let mut c = base.clone();
    c["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["tags"]
        ["uniqueItems"] = json!(true);
    c["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["additionalProperties"] =
        json!({"type": "string"});
    let got = refuse(c).await;
    for want in [
        format!(
            "{schema_at}.properties[spec].properties[tags].uniqueItems: Forbidden: uniqueItems cannot be set to true since the runtime complexity becomes quadratic"
        ),
        format!(
            "{schema_at}.properties[status].additionalProperties: Forbidden: additionalProperties and properties are mutual exclusive"
        ),
    ] {
        assert!(got.contains(&want), "{want} not in {got:?}");
    }

    let mut c = base.clone();
    c["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"] =
        json!([{"rule": "self.min <="}, {"rule": "nosuch > 1"}]);
    let got = refuse(c).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got[0].starts_with(&format!("{schema_at}.properties[spec].x-kubernetes-validations[0].rule: Invalid value: apiextensions.ValidationRule{{Rule:\"self.min <=\"")), "{got:?}");
    assert!(
        got[0].contains("compilation failed: ERROR: <input>:1:"),
        "{got:?}"
    );
    assert!(got[1].ends_with("compilation failed: ERROR: <input>:1:1: undeclared reference to 'nosuch' (in container '')\n | nosuch > 1\n | ^"), "{got:?}");

    let mut c = base.clone();
    c["spec"]["versions"] = json!([
        {"name": "V1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object"}}},
        {"name": "v2", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object"}}},
    ]);
    c["spec"]["names"]["listKind"] = json!("Gizmo");
    c["spec"]["conversion"] =
        json!({"strategy": "None", "webhook": {"conversionReviewVersions": ["v1"]}});
    let got = refuse(c).await;
    for want in [
        "spec.versions[0].name: Invalid value: \"V1\": a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')",
        "spec.names.listKind: Invalid value: \"Gizmo\": kind and listKind may not be the same",
        "spec.conversion.webhook: Forbidden: should not be set when strategy is not set to Webhook",
    ] {
        assert!(got.iter().any(|g| g == want), "{want} not in {got:?}");
    }
    assert!(
        got.iter()
            .any(|g| g.starts_with("spec.versions: Invalid value: ")
                && g.ends_with("must have exactly one version marked as storage version")),
        "{got:?}"
    );

    // The group and plural of a stored CRD do not change.
    install(&client, &gizmo_crd()).await;
    let mut current = crds.get("gizmos.example.io").await.expect("get");
    current.spec.group = "example.com".into();
    let status = api_status(
        crds.replace("gizmos.example.io", &PostParams::default(), &current)
            .await
            .expect_err("immutable"),
    );
    assert!(
        status
            .message
            .contains("spec.group: Invalid value: \"example.com\": field is immutable"),
        "{}",
        status.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_ratchets_values_an_update_does_not_change() {
    let t = TestServer::start().await;
    let client = t.client().await;
    install(&client, &gizmo_crd()).await;
    let api = gizmos(&client);
    let spec = json!({"phone": "12345", "small": true, "level": 1});
    api.create(&PostParams::default(), &gizmo("g1", spec.clone()))
        .await
        .expect("created");
    // Tighten the schema: phone numbers of at most 3 characters.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "gizmos.example.io",
        &PatchParams::default(),
        &Patch::Json::<()>(
            serde_json::from_value(json!([{"op": "add",
                "path": "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/phone/maxLength",
                "value": 3}]))
            .expect("json patch"),
        ),
    )
    .await
    .expect("CRD updated");
    let served = || {
        let api = api.clone();
        let spec = spec.clone();
        async move {
            api.create(
                &PostParams {
                    dry_run: true,
                    ..Default::default()
                },
                &gizmo("g2", spec),
            )
            .await
            .is_err()
        }
    };
    eventually("the tightened schema served", served).await;
    // An update that leaves the now invalid phone alone passes; one that changes it does not.
    api.patch(
        "g1",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"level": 2}})),
    )
    .await
    .expect("unchanged invalid value ratchets");
    let err = api
        .patch(
            "g1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"phone": "123456"}})),
        )
        .await
        .expect_err("changed value validated");
    assert_eq!(
        api_status(err).message,
        "Gizmo.example.io \"g1\" is invalid: [spec.phone: Too long: may not be more than 3 bytes, \
         <nil>: Invalid value: \"null\": some validation rules were not checked because the \
         object was invalid; correct the existing errors to complete validation]"
    );
    // A type error blocks the CEL rules, as upstream says.
    let got = refused(
        &api,
        &gizmo("g3", json!({"phone": "1", "small": true, "level": "high"})),
    )
    .await;
    assert_eq!(
        got,
        [
            "spec.level: Invalid value: \"string\": spec.level in body must be of type integer: \"string\"",
            "<nil>: Invalid value: \"null\": some validation rules were not checked because the object was invalid; correct the existing errors to complete validation",
        ]
    );
}
