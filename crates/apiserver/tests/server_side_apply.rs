//! Server-side apply and managedFields, with kube-rs and kubectl against an in-process
//! apiserver.

mod common;

use common::{TestServer, api_status};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

fn deployment(replicas: i32, containers: Value) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": containers},
            },
        },
    })
}

/// The managedFields entry of `manager`, as JSON.
fn entry(obj: &impl serde::Serialize, manager: &str) -> Option<Value> {
    let v = serde_json::to_value(obj).expect("serializes");
    v["metadata"]["managedFields"]
        .as_array()?
        .iter()
        .find(|e| e["manager"] == manager)
        .cloned()
}

fn container_names(d: &Deployment) -> Vec<String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_creates_updates_conflicts_and_forces() {
    let t = TestServer::start().await;
    let deploys: Api<Deployment> = Api::namespaced(t.client().await, "default");

    // Apply on a missing object creates it, owned by the applier.
    let created = deploys
        .patch(
            "web",
            &PatchParams::apply("alice"),
            &Patch::Apply(deployment(2, json!([{"name": "app", "image": "nginx:1"}]))),
        )
        .await
        .expect("apply creates");
    assert_eq!(created.spec.as_ref().and_then(|s| s.replicas), Some(2));
    let alice = entry(&created, "alice").expect("alice's entry");
    assert_eq!(alice["operation"], "Apply");
    assert_eq!(alice["apiVersion"], "apps/v1");
    assert_eq!(alice["fieldsType"], "FieldsV1");
    assert_eq!(alice["fieldsV1"]["f:spec"]["f:replicas"], json!({}));
    assert_eq!(
        alice["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"app\"}"]
            ["f:image"],
        json!({})
    );
    // Defaults are the server's, not the applier's.
    assert!(alice["fieldsV1"]["f:spec"].get("f:strategy").is_none());
    assert!(
        created
            .spec
            .as_ref()
            .and_then(|s| s.strategy.as_ref())
            .is_some()
    );

    // Applying the same configuration again changes nothing, not even the resourceVersion.
    let again = deploys
        .patch(
            "web",
            &PatchParams::apply("alice"),
            &Patch::Apply(deployment(2, json!([{"name": "app", "image": "nginx:1"}]))),
        )
        .await
        .expect("re-apply");
    assert_eq!(
        again.metadata.resource_version,
        created.metadata.resource_version
    );

    // Another manager setting replicas to another value conflicts, with one cause per field.
    let err = deploys
        .patch(
            "web",
            &PatchParams::apply("bob"),
            &Patch::Apply(json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web"},
                "spec": {"replicas": 5},
            })),
        )
        .await
        .map(|_| ())
        .map_err(api_status)
        .expect_err("conflict");
    assert_eq!(err.code, 409);
    assert_eq!(err.reason, "Conflict");
    assert_eq!(
        err.message,
        "Apply failed with 1 conflict: conflict with \"alice\": .spec.replicas"
    );
    let causes = err.details.expect("details").causes;
    assert_eq!(causes.len(), 1);
    assert_eq!(causes[0].reason, "FieldManagerConflict");
    assert_eq!(causes[0].message, "conflict with \"alice\"");
    assert_eq!(causes[0].field, ".spec.replicas");

    // Forced, bob takes replicas over.
    let forced = deploys
        .patch(
            "web",
            &PatchParams::apply("bob").force(),
            &Patch::Apply(json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web"},
                "spec": {"replicas": 5},
            })),
        )
        .await
        .expect("forced apply");
    assert_eq!(forced.spec.as_ref().and_then(|s| s.replicas), Some(5));
    assert_eq!(
        entry(&forced, "bob").expect("bob")["fieldsV1"],
        json!({"f:spec": {"f:replicas": {}}})
    );
    assert!(
        entry(&forced, "alice").expect("alice")["fieldsV1"]["f:spec"]
            .get("f:replicas")
            .is_none()
    );
    assert_eq!(forced.metadata.generation, Some(2));

    // Alice no longer sets replicas: bob's value stays.
    let kept = deploys
        .patch(
            "web",
            &PatchParams::apply("alice"),
            &Patch::Apply(json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web"},
                "spec": {
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "app", "image": "nginx:1"}]},
                    },
                },
            })),
        )
        .await
        .expect("apply without replicas");
    assert_eq!(kept.spec.as_ref().and_then(|s| s.replicas), Some(5));

    // The scale subresource records its writer on the deployment, and applies conflict with it.
    deploys
        .patch_scale(
            "web",
            &PatchParams {
                field_manager: Some("scaler".into()),
                ..Default::default()
            },
            &Patch::Merge(json!({"spec": {"replicas": 7}})),
        )
        .await
        .expect("scale");
    let scaled = deploys.get("web").await.expect("get");
    let scaler = entry(&scaled, "scaler").expect("scaler entry");
    assert_eq!(scaler["subresource"], "scale");
    assert_eq!(scaler["apiVersion"], "apps/v1");
    assert_eq!(scaler["fieldsV1"], json!({"f:spec": {"f:replicas": {}}}));
    assert!(entry(&scaled, "bob").is_none(), "bob owned only replicas");
    let err = deploys
        .patch(
            "web",
            &PatchParams::apply("alice"),
            &Patch::Apply(deployment(2, json!([{"name": "app", "image": "nginx:1"}]))),
        )
        .await
        .map(|_| ())
        .map_err(api_status)
        .expect_err("conflict with the scaler");
    assert!(
        err.message.starts_with(
            "Apply failed with 1 conflict: conflict with \"scaler\" with subresource \"scale\" using apps/v1 at "
        ),
        "{}",
        err.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_fields_go_and_containers_merge_by_name() {
    let t = TestServer::start().await;
    let deploys: Api<Deployment> = Api::namespaced(t.client().await, "default");
    let mut with_label = deployment(1, json!([{"name": "app", "image": "nginx:1"}]));
    with_label["metadata"]["labels"] = json!({"team": "a", "tier": "web"});
    deploys
        .patch(
            "web",
            &PatchParams::apply("alice"),
            &Patch::Apply(&with_label),
        )
        .await
        .expect("create");

    // A second manager adds a sidecar: the list merges by container name.
    let sidecar = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"template": {"spec": {"containers": [{"name": "log", "image": "busybox"}]}}},
    });
    let merged = deploys
        .patch(
            "web",
            &PatchParams::apply("sidecar"),
            &Patch::Apply(&sidecar),
        )
        .await
        .expect("sidecar");
    assert_eq!(container_names(&merged), ["app", "log"]);
    let side = entry(&merged, "sidecar").expect("sidecar entry");
    assert_eq!(
        side["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"log\"}"]
            ["."],
        json!({})
    );

    // Alice drops a label and changes her container: only her fields change.
    let mut fewer = deployment(1, json!([{"name": "app", "image": "nginx:2"}]));
    fewer["metadata"]["labels"] = json!({"team": "a"});
    let after = deploys
        .patch("web", &PatchParams::apply("alice"), &Patch::Apply(&fewer))
        .await
        .expect("alice again");
    let labels = after.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("team").map(String::as_str), Some("a"));
    assert!(!labels.contains_key("tier"), "{labels:?}");
    assert_eq!(container_names(&after), ["app", "log"]);

    // The sidecar manager removes its container: it goes, alice's stays.
    let none = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
    });
    let gone = deploys
        .patch("web", &PatchParams::apply("sidecar"), &Patch::Apply(&none))
        .await
        .expect("sidecar leaves");
    assert_eq!(container_names(&gone), ["app"]);
    assert!(
        entry(&gone, "sidecar").is_none(),
        "{:?}",
        entry(&gone, "sidecar")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_options_are_checked_like_upstream() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}});

    // No fieldManager: 422 naming the PatchOptions field.
    let err = cms
        .patch("c", &PatchParams::default(), &Patch::Apply(&cm))
        .await
        .map(|_| ())
        .map_err(api_status)
        .expect_err("fieldManager required");
    assert_eq!(err.code, 422);
    assert_eq!(
        err.message,
        "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"
    );

    // force on a merge patch: 422 (kube-rs refuses to send it, so by hand).
    let req = axum::http::Request::patch("/api/v1/namespaces/default/configmaps/c?force=true")
        .header("Content-Type", "application/merge-patch+json")
        .body(br#"{"data":{"b":"2"}}"#.to_vec())
        .expect("request");
    let err = client
        .request::<ConfigMap>(req)
        .await
        .map(|_| ())
        .map_err(api_status)
        .expect_err("force forbidden");
    assert_eq!(err.code, 422);
    assert_eq!(
        err.message,
        "PatchOptions.meta.k8s.io \"\" is invalid: force: Forbidden: may not be specified for non-apply patch"
    );

    // dryRun creates nothing.
    let dry = cms
        .patch("c", &PatchParams::apply("m").dry_run(), &Patch::Apply(&cm))
        .await
        .expect("dry run");
    assert!(entry(&dry, "m").is_some());
    assert!(cms.get_opt("c").await.expect("get").is_none());

    // Strict field validation refuses unknown fields.
    let mut unknown = cm.clone();
    unknown["bogus"] = json!(1);
    let mut strict = PatchParams::apply("m");
    strict.field_validation = Some(kube::api::ValidationDirective::Strict);
    let err = cms
        .patch("c", &strict, &Patch::Apply(&unknown))
        .await
        .map(|_| ())
        .map_err(api_status)
        .expect_err("strict");
    assert_eq!(err.code, 400);
    assert!(
        err.message.contains("unknown field \"bogus\""),
        "{}",
        err.message
    );

    // The applied configuration may not carry managedFields.
    let mut with_managed = cm.clone();
    with_managed["metadata"]["managedFields"] = json!([{"manager": "x"}]);
    let err = cms
        .patch("c", &PatchParams::apply("m"), &Patch::Apply(&with_managed))
        .await
        .map(|_| ())
        .map_err(api_status)
        .expect_err("managedFields in the config");
    assert_eq!(err.code, 400);
    assert_eq!(err.message, "metadata.managedFields must be nil");

    // A YAML body (what kubectl and client-go send).
    let req =
        axum::http::Request::patch("/api/v1/namespaces/default/configmaps/y?fieldManager=yaml")
            .header("Content-Type", "application/apply-patch+yaml")
            .body(
                b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: y\ndata:\n  k: v\n".to_vec(),
            )
            .expect("request");
    let created: ConfigMap = client.request(req).await.expect("yaml apply");
    assert_eq!(
        created
            .data
            .unwrap_or_default()
            .get("k")
            .map(String::as_str),
        Some("v")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_writes_record_update_managers() {
    let t = TestServer::start().await;
    let cms: Api<ConfigMap> = Api::namespaced(t.client().await, "default");
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("c".into());
    cm.data = Some([("a".to_string(), "1".to_string())].into());
    let created = cms
        .create(
            &PostParams {
                field_manager: Some("maker".into()),
                ..Default::default()
            },
            &cm,
        )
        .await
        .expect("create");
    let maker = entry(&created, "maker").expect("maker entry");
    assert_eq!(maker["operation"], "Update");
    assert_eq!(maker["apiVersion"], "v1");
    assert_eq!(maker["fieldsV1"], json!({"f:data": {".": {}, "f:a": {}}}));

    // A merge patch by another manager takes the field it changes.
    let patched = cms
        .patch(
            "c",
            &PatchParams {
                field_manager: Some("patcher".into()),
                ..Default::default()
            },
            &Patch::Merge(json!({"data": {"a": "2", "b": "3"}})),
        )
        .await
        .expect("patch");
    let patcher = entry(&patched, "patcher").expect("patcher entry");
    assert_eq!(
        patcher["fieldsV1"],
        json!({"f:data": {"f:a": {}, "f:b": {}}})
    );
    // The creator keeps the map it added, not the key another manager changed.
    assert_eq!(
        entry(&patched, "maker").expect("maker")["fieldsV1"],
        json!({"f:data": {}})
    );

    // An applier wanting data.a now conflicts with the patcher, named with its version.
    let err = cms
        .patch(
            "c",
            &PatchParams::apply("applier"),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "c"}, "data": {"a": "9"}})),
        )
        .await
        .map(|_| ())
        .map_err(api_status)
        .expect_err("conflict with an updater");
    assert!(
        err.message
            .starts_with("Apply failed with 1 conflict: conflict with \"patcher\" using v1 at "),
        "{}",
        err.message
    );

    // Clients clear managedFields with [{}].
    let cleared = cms
        .patch(
            "c",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"managedFields": [{}]}})),
        )
        .await
        .expect("clear");
    assert!(cleared.metadata.managed_fields.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_server_side_apply_and_show_managed_fields() {
    let t = TestServer::start().await;
    let manifest = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: default\nspec:\n  replicas: 2\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      containers:\n      - name: app\n        image: nginx:1\n        ports:\n        - containerPort: 80\n";
    let first = t
        .kubectl_stdin(&["apply", "--server-side", "-f", "-"], manifest)
        .await;
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&first.stdout).trim(),
        "deployment.apps/web serverside-applied"
    );
    let second = t
        .kubectl_stdin(&["apply", "--server-side", "-f", "-"], manifest)
        .await;
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );

    // Hidden by default, shown with --show-managed-fields.
    let plain = t.kubectl_ok(&["get", "deploy", "web", "-o", "yaml"]).await;
    assert!(!plain.contains("managedFields"), "{plain}");
    let shown = t
        .kubectl_ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "json",
            "--show-managed-fields",
        ])
        .await;
    let obj: Value = serde_json::from_str(&shown).expect("json");
    let e = entry(&obj, "kubectl").expect("kubectl's entry");
    assert_eq!(e["operation"], "Apply");
    assert_eq!(
        e["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"app\"}"]["f:ports"]
            ["k:{\"containerPort\":80,\"protocol\":\"TCP\"}"]["f:containerPort"],
        json!({})
    );

    // A client-side edit of replicas by kubectl scale-like patch, then a conflicting apply.
    let patched = t
        .kubectl(&[
            "patch",
            "deploy",
            "web",
            "--type=merge",
            "-p",
            "{\"spec\":{\"replicas\":4}}",
        ])
        .await;
    assert!(
        patched.status.success(),
        "{}",
        String::from_utf8_lossy(&patched.stderr)
    );
    let conflict = t
        .kubectl_stdin(&["apply", "--server-side", "-f", "-"], manifest)
        .await;
    assert!(!conflict.status.success());
    let stderr = String::from_utf8_lossy(&conflict.stderr);
    assert!(
        stderr.contains("conflict with \"kubectl-patch\""),
        "{stderr}"
    );
    assert!(stderr.contains(".spec.replicas"), "{stderr}");
    let forced = t
        .kubectl_stdin(
            &["apply", "--server-side", "--force-conflicts", "-f", "-"],
            manifest,
        )
        .await;
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    let replicas = t
        .kubectl_ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"])
        .await;
    assert_eq!(replicas.trim(), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_apply_is_its_own_manager() {
    let t = TestServer::start().await;
    let deploys: Api<Deployment> = Api::namespaced(t.client().await, "default");
    deploys
        .patch(
            "web",
            &PatchParams::apply("alice"),
            &Patch::Apply(deployment(1, json!([{"name": "app", "image": "nginx:1"}]))),
        )
        .await
        .expect("create");
    let status = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"replicas": 9},
        "status": {"replicas": 1, "observedGeneration": 1},
    });
    let after = deploys
        .patch_status("web", &PatchParams::apply("ctrl"), &Patch::Apply(&status))
        .await
        .expect("status apply");
    // Only the status changed, and only the status is the controller's.
    assert_eq!(after.spec.as_ref().and_then(|s| s.replicas), Some(1));
    assert_eq!(after.status.as_ref().and_then(|s| s.replicas), Some(1));
    let ctrl = entry(&after, "ctrl").expect("ctrl entry");
    assert_eq!(ctrl["operation"], "Apply");
    assert_eq!(ctrl["subresource"], "status");
    assert_eq!(
        ctrl["fieldsV1"],
        json!({"f:status": {"f:observedGeneration": {}, "f:replicas": {}}})
    );
    // The main resource ignores status in an applied configuration.
    let main = deploys
        .patch(
            "web",
            &PatchParams::apply("alice"),
            &Patch::Apply(json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web"},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "app", "image": "nginx:1"}]},
                    },
                },
                "status": {"replicas": 5},
            })),
        )
        .await
        .expect("main apply");
    assert_eq!(main.status.as_ref().and_then(|s| s.replicas), Some(1));
    assert!(
        entry(&main, "alice").expect("alice")["fieldsV1"]
            .get("f:status")
            .is_none()
    );
}

/// Custom resources merge as their structural schema says: a `map` list by its keys, a `set`
/// by value, an atomic list as a whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resources_apply_by_their_schemas_list_types() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::DynamicObject;
    use kube::core::{ApiResource, GroupVersionKind};

    let t = TestServer::start().await;
    let client = t.client().await;
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "gateways.net.example.com"},
        "spec": {
            "group": "net.example.com",
            "scope": "Namespaced",
            "names": {"plural": "gateways", "singular": "gateway", "kind": "Gateway"},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {"spec": {
                        "type": "object",
                        "properties": {
                            "listeners": {
                                "type": "array",
                                "x-kubernetes-list-type": "map",
                                "x-kubernetes-list-map-keys": ["name"],
                                "items": {"type": "object", "required": ["name"], "properties": {
                                    "name": {"type": "string"},
                                    "port": {"type": "integer"}
                                }}
                            },
                            "hosts": {
                                "type": "array",
                                "x-kubernetes-list-type": "set",
                                "items": {"type": "string"}
                            },
                            "args": {"type": "array", "items": {"type": "string"}}
                        }
                    }}
                }}
            }]
        }
    }))
    .expect("CRD");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &crd)
        .await
        .expect("create CRD");
    let gvk = GroupVersionKind::gvk("net.example.com", "v1", "Gateway");
    let gateways: Api<DynamicObject> = Api::namespaced_with(
        client,
        "default",
        &ApiResource::from_gvk_with_plural(&gvk, "gateways"),
    );
    let gateway = |spec: Value| {
        json!({
            "apiVersion": "net.example.com/v1", "kind": "Gateway",
            "metadata": {"name": "gw"}, "spec": spec,
        })
    };
    let mut applied = None;
    for _ in 0..200 {
        match gateways
            .patch(
                "gw",
                &PatchParams::apply("alice"),
                &Patch::Apply(gateway(json!({
                    "listeners": [{"name": "http", "port": 80}],
                    "hosts": ["a.example.com"],
                    "args": ["--alice"],
                }))),
            )
            .await
        {
            Ok(o) => {
                applied = Some(o);
                break;
            }
            // The CRD is not served yet.
            Err(kube::Error::Api(s)) if s.code == 404 => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("alice applies: {e}"),
        }
    }
    let first = serde_json::to_value(applied.expect("served in time")).expect("json");
    assert_eq!(
        first["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"]["f:listeners"]["k:{\"name\":\"http\"}"]
            ["f:port"],
        json!({}),
        "{first}"
    );

    // Bob adds a listener and a host: merged with alice's, not replacing them.
    let merged = gateways
        .patch(
            "gw",
            &PatchParams::apply("bob"),
            &Patch::Apply(gateway(json!({
                "listeners": [{"name": "https", "port": 443}],
                "hosts": ["b.example.com"],
            }))),
        )
        .await
        .expect("bob applies");
    let spec = &merged.data["spec"];
    assert_eq!(
        spec["listeners"],
        json!([{"name": "http", "port": 80}, {"name": "https", "port": 443}]),
        "{spec}"
    );
    assert_eq!(spec["hosts"], json!(["a.example.com", "b.example.com"]));

    // An atomic list is one field: bob's different args conflict with alice's.
    let err = gateways
        .patch(
            "gw",
            &PatchParams::apply("bob"),
            &Patch::Apply(gateway(json!({"args": ["--bob"]}))),
        )
        .await
        .expect_err("args conflict");
    let status = api_status(err);
    assert_eq!(status.code, 409, "{status:?}");
    assert!(status.message.contains(".spec.args"), "{}", status.message);

    // Bob changing alice's listener's port conflicts on that item's field only.
    let err = gateways
        .patch(
            "gw",
            &PatchParams::apply("bob"),
            &Patch::Apply(gateway(json!({
                "listeners": [{"name": "https", "port": 443}, {"name": "http", "port": 8080}],
            }))),
        )
        .await
        .expect_err("port conflict");
    let status = api_status(err);
    assert_eq!(status.code, 409, "{status:?}");
    assert!(
        status
            .message
            .contains(".spec.listeners[name=\"http\"].port"),
        "{}",
        status.message
    );
}
