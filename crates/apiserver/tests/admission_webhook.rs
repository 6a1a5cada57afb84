//! Admission webhooks (`admissionregistration.k8s.io/v1` Mutating/ValidatingWebhookConfiguration)
//! seen from kubectl and kube-rs: denials with the webhook's message and code, JSON patches
//! applied and stored, warnings, rules and selectors that do not match, failure policies with
//! the webhook down, dry runs and side effects, deletes with the old object, subresource
//! rules, equivalent versions, and a webhook reached through a Service.

mod common;

use std::time::Duration;

use common::{TestServer, TestWebhook};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Namespace, Pod, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// Polling deadline: configurations reach the apiserver through its watch cache.
const DEADLINE: Duration = Duration::from_secs(20);

/// An allowing answer to `review`, with `extra` merged into `response`.
fn answer(review: &Value, extra: Value) -> Value {
    let mut response = json!({"uid": review["request"]["uid"], "allowed": true});
    if let (Some(r), Some(e)) = (response.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            r.insert(k.clone(), v.clone());
        }
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
}

/// A webhook entry calling `url` for `rules`, with `extra` fields.
fn hook(name: &str, client_config: Value, rules: Value, extra: Value) -> Value {
    let mut h = json!({
        "name": name,
        "clientConfig": client_config,
        "rules": rules,
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
    });
    if let (Some(o), Some(e)) = (h.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            o.insert(k.clone(), v.clone());
        }
    }
    h
}

fn url_config(w: &TestWebhook, path: &str) -> Value {
    json!({"url": w.url(path), "caBundle": w.ca_bundle})
}

fn configmap_rules(ops: &[&str]) -> Value {
    json!([{"operations": ops, "apiGroups": [""], "apiVersions": ["v1"],
            "resources": ["configmaps"]}])
}

async fn validating(client: &kube::Client, name: &str, webhooks: Vec<Value>) {
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let config = serde_json::from_value(json!({
        "metadata": {"name": name}, "webhooks": webhooks
    }))
    .expect("configuration");
    api.create(&PostParams::default(), &config)
        .await
        .expect("validating configuration created");
}

async fn mutating(client: &kube::Client, name: &str, webhooks: Vec<Value>) {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let config = serde_json::from_value(json!({
        "metadata": {"name": name}, "webhooks": webhooks
    }))
    .expect("configuration");
    api.create(&PostParams::default(), &config)
        .await
        .expect("mutating configuration created");
}

fn configmap(name: &str, labels: Value) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels},
        "data": {"k": "v"}}))
    .expect("configmap")
}

/// Creates config maps `probe-<n>` until `done` says the webhooks are in effect (the
/// configuration reaches the apiserver through its watch cache, as upstream's informer).
async fn wait_for(
    api: &Api<ConfigMap>,
    done: impl Fn(&Result<ConfigMap, kube::Error>) -> bool,
) -> Result<ConfigMap, kube::Error> {
    let start = tokio::time::Instant::now();
    for n in 0.. {
        let r = api
            .create(
                &PostParams::default(),
                &configmap(&format!("probe-{n}"), json!({})),
            )
            .await;
        if done(&r) {
            return r;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "webhook never took effect: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    unreachable!()
}

fn seen_for(w: &TestWebhook, name: &str) -> Vec<Value> {
    w.seen
        .lock()
        .expect("lock")
        .iter()
        .map(|(_, r)| r.clone())
        .filter(|r| r["request"]["name"] == name)
        .collect()
}

/// (code, reason, message) of a refused request.
fn api_error(r: Result<impl std::fmt::Debug, kube::Error>) -> (u16, String, String) {
    match r {
        Err(kube::Error::Api(e)) => (e.code, e.reason.clone(), e.message.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validating_webhook_denies_with_its_message_and_code_and_warns() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let w = TestWebhook::start(&[], |_, review| {
        let obj = &review["request"]["object"];
        if obj["metadata"]["labels"]["deny"] == "yes" {
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "response": {"uid": review["request"]["uid"], "allowed": false,
                    "status": {"code": 403, "message": "configmaps labelled deny are refused"}}})
        } else {
            answer(review, json!({"warnings": ["this config map is watched"]}))
        }
    })
    .await;
    validating(
        &client,
        "deny-labelled",
        vec![hook(
            "deny.example.com",
            url_config(&w, "/validate"),
            configmap_rules(&["CREATE", "UPDATE"]),
            json!({}),
        )],
    )
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    wait_for(&cms, |_| !w.seen.lock().expect("lock").is_empty())
        .await
        .expect("allowed");

    // kube-rs: the webhook's code and message.
    let (code, _, message) = api_error(
        cms.create(
            &PostParams::default(),
            &configmap("refused", json!({"deny": "yes"})),
        )
        .await,
    );
    assert_eq!(code, 403);
    assert_eq!(
        message,
        "admission webhook \"deny.example.com\" denied the request: configmaps labelled deny \
         are refused"
    );
    assert!(cms.get_opt("refused").await.expect("get").is_none());

    // A generated name is drawn before validating webhooks see the object, and kept.
    let generated = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"generateName": "gen-"}}))
                .expect("configmap"),
        )
        .await
        .expect("created")
        .metadata
        .name
        .expect("name");
    let sent = w
        .seen
        .lock()
        .expect("lock")
        .iter()
        .map(|(_, r)| r["request"].clone())
        .find(|r| r["object"]["metadata"]["generateName"] == "gen-")
        .expect("sent");
    assert_eq!(sent["object"]["metadata"]["name"], generated.as_str());
    assert!(sent.get("name").is_none(), "{sent}");

    // kubectl: the same on stderr; an allowed create shows the webhook's warning.
    let out = t
        .kubectl(&["create", "configmap", "ok-one", "--from-literal=a=b"])
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Warning: this config map is watched"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = t
        .kubectl(&["label", "configmap", "ok-one", "deny=yes"])
        .await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "admission webhook \"deny.example.com\" denied the request: configmaps labelled \
             deny are refused"
        ),
        "{stderr}"
    );

    // What the webhook was sent for the create and the update.
    let create = &seen_for(&w, "ok-one")[0];
    assert_eq!(create["apiVersion"], "admission.k8s.io/v1");
    let r = &create["request"];
    assert_eq!(r["operation"], "CREATE");
    assert_eq!(
        r["kind"],
        json!({"group": "", "version": "v1", "kind": "ConfigMap"})
    );
    assert_eq!(
        r["resource"],
        json!({"group": "", "version": "v1", "resource": "configmaps"})
    );
    assert_eq!(r["requestKind"], r["kind"]);
    assert_eq!(r["namespace"], "default");
    assert_eq!(r["userInfo"]["username"], "system:admin");
    assert_eq!(r["object"]["data"], json!({"a": "b"}));
    assert_eq!(r["oldObject"], Value::Null);
    assert_eq!(r["dryRun"], false);
    assert_eq!(r["options"]["kind"], "CreateOptions");
    assert!(r["uid"].as_str().is_some_and(|u| !u.is_empty()));
    let update = seen_for(&w, "ok-one")
        .into_iter()
        .find(|r| r["request"]["operation"] == "UPDATE")
        .expect("update reviewed");
    assert_eq!(update["request"]["oldObject"]["metadata"]["name"], "ok-one");
    assert_eq!(
        update["request"]["object"]["metadata"]["labels"]["deny"],
        "yes"
    );
    assert_eq!(update["request"]["options"]["kind"], "PatchOptions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutating_webhook_patches_are_applied_and_stored() {
    use base64::Engine as _;
    let t = TestServer::start().await;
    let client = t.client().await;
    let patch = |ops: Value| {
        base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&ops).expect("json"))
    };
    let w = TestWebhook::start(&[], move |path, review| {
        let add = if path.starts_with("/first") {
            json!([{"op": "add", "path": "/metadata/labels", "value": {"stamped": "first"}}])
        } else {
            // The second webhook sees the first one's change.
            let first = &review["request"]["object"]["metadata"]["labels"]["stamped"];
            json!([{"op": "add", "path": "/data/second-saw", "value": first}])
        };
        answer(
            review,
            json!({"patchType": "JSONPatch", "patch": patch(add)}),
        )
    })
    .await;
    // Configurations run in name order.
    mutating(
        &client,
        "b-second",
        vec![hook(
            "second.example.com",
            url_config(&w, "/second"),
            configmap_rules(&["CREATE"]),
            json!({}),
        )],
    )
    .await;
    mutating(
        &client,
        "a-first",
        vec![hook(
            "first.example.com",
            url_config(&w, "/first"),
            configmap_rules(&["CREATE"]),
            json!({}),
        )],
    )
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    wait_for(&cms, |r| {
        r.as_ref().is_ok_and(|c| {
            c.data
                .as_ref()
                .is_some_and(|d| d.contains_key("second-saw"))
        })
    })
    .await
    .expect("probe");
    t.kubectl_ok(&["create", "configmap", "stamped", "--from-literal=a=b"])
        .await;
    let stored = cms.get("stamped").await.expect("stored");
    assert_eq!(stored.metadata.labels.expect("labels")["stamped"], "first");
    let data = stored.data.expect("data");
    assert_eq!(data["second-saw"], "first");
    assert_eq!(data["a"], "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_and_selectors_that_do_not_match_do_not_call() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let w = TestWebhook::start(&[], |_, review| answer(review, json!({}))).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for (name, env) in [("prod", "prod"), ("dev", "dev")] {
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(
                    json!({"metadata": {"name": name, "labels": {"env": env}}}),
                )
                .expect("namespace"),
            )
            .await
            .expect("namespace created");
    }
    validating(
        &client,
        "selective",
        vec![
            // Only namespaces labelled env=prod, only objects labelled watched=yes.
            hook(
                "selected.example.com",
                url_config(&w, "/selected"),
                configmap_rules(&["CREATE"]),
                json!({
                    "namespaceSelector": {"matchLabels": {"env": "prod"}},
                    "objectSelector": {"matchExpressions": [
                        {"key": "watched", "operator": "In", "values": ["yes"]}]},
                }),
            ),
            // Only secrets.
            hook(
                "secrets.example.com",
                url_config(&w, "/secrets"),
                json!([{"operations": ["*"], "apiGroups": [""], "apiVersions": ["v1"],
                        "resources": ["secrets"]}]),
                json!({}),
            ),
            // Only deletes.
            hook(
                "deletes.example.com",
                url_config(&w, "/deletes"),
                configmap_rules(&["DELETE"]),
                json!({}),
            ),
        ],
    )
    .await;
    let prod: Api<ConfigMap> = Api::namespaced(client.clone(), "prod");
    let dev: Api<ConfigMap> = Api::namespaced(client.clone(), "dev");
    let start = tokio::time::Instant::now();
    loop {
        let name = format!("watched-{}", start.elapsed().as_micros());
        prod.create(
            &PostParams::default(),
            &configmap(&name, json!({"watched": "yes"})),
        )
        .await
        .expect("created");
        if !seen_for(&w, &name).is_empty() {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "the webhook was never called");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (api, name, labels) in [
        (&dev, "dev-watched", json!({"watched": "yes"})),
        (&prod, "prod-unwatched", json!({"watched": "no"})),
        (&prod, "prod-unlabelled", json!({})),
    ] {
        api.create(&PostParams::default(), &configmap(name, labels))
            .await
            .expect("created");
        assert!(
            seen_for(&w, name).is_empty(),
            "{name} was sent to a webhook"
        );
    }
    let paths: Vec<String> = w
        .seen
        .lock()
        .expect("lock")
        .iter()
        .map(|(p, _)| p.clone())
        .collect();
    assert!(
        paths.iter().all(|p| p.starts_with("/selected?timeout=10s")),
        "{paths:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_policy_decides_when_the_webhook_is_down() {
    let t = TestServer::start().await;
    let client = t.client().await;
    // A port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let down = json!({"url": format!("https://127.0.0.1:{port}/down")});
    validating(
        &client,
        "down",
        vec![
            hook(
                "ignored.example.com",
                down.clone(),
                configmap_rules(&["CREATE"]),
                json!({"failurePolicy": "Ignore"}),
            ),
            hook(
                "failing.example.com",
                down,
                json!([{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                        "resources": ["secrets"]}]),
                json!({"failurePolicy": "Fail", "timeoutSeconds": 5}),
            ),
        ],
    )
    .await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), "default");
    let start = tokio::time::Instant::now();
    let e = loop {
        let r = secrets
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"generateName": "s-"}}))
                    .expect("secret"),
            )
            .await;
        if let Err(kube::Error::Api(e)) = r {
            break e;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the webhook never failed a create"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((e.code, e.reason.as_str()), (500, "InternalError"));
    assert_eq!(
        e.message.as_str(),
        format!(
            "Internal error occurred: failed calling webhook \"failing.example.com\": failed to \
             call webhook: Post \"https://127.0.0.1:{port}/down?timeout=5s\": dial tcp \
             127.0.0.1:{port}: connect: connection refused"
        )
    );
    // A webhook slower than its timeoutSeconds fails the call the same way.
    let slow = TestWebhook::start(&[], |_, review| {
        std::thread::sleep(Duration::from_secs(3));
        answer(review, json!({}))
    })
    .await;
    validating(
        &client,
        "slow",
        vec![hook(
            "slow.example.com",
            url_config(&slow, "/slow"),
            json!([{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                    "resources": ["serviceaccounts"]}]),
            json!({"timeoutSeconds": 1}),
        )],
    )
    .await;
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), "default");
    let start = tokio::time::Instant::now();
    let message = loop {
        let r = accounts
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"generateName": "sa-"}}))
                    .expect("service account"),
            )
            .await;
        if r.is_err() {
            break api_error(r).2;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the slow webhook never failed a create"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        message,
        format!(
            "Internal error occurred: failed calling webhook \"slow.example.com\": failed to call \
             webhook: Post \"{}?timeout=1s\": context deadline exceeded",
            slow.url("/slow")
        )
    );
    // Ignore: the create goes on.
    let out = t
        .kubectl(&["create", "configmap", "despite", "--from-literal=a=b"])
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = t
        .kubectl(&[
            "create",
            "secret",
            "generic",
            "blocked",
            "--from-literal=a=b",
        ])
        .await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Internal error occurred: failed calling webhook \"failing.example.com\""),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_runs_reach_only_webhooks_without_side_effects() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let w = TestWebhook::start(&[], |_, review| answer(review, json!({}))).await;
    // Webhooks with side effects are refused by v1's validation (upstream's
    // `ValidateValidatingWebhookConfiguration`): only `None`/`NoneOnDryRun` can be created.
    let configs: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let effects = serde_json::from_value(json!({"metadata": {"name": "effects"}, "webhooks": [
        hook(
            "effects.example.com",
            url_config(&w, "/effects"),
            configmap_rules(&["CREATE"]),
            json!({"sideEffects": "Some"}),
        ),
    ]}))
    .expect("configuration");
    let e = configs
        .create(&PostParams::default(), &effects)
        .await
        .expect_err("refused");
    assert_eq!(
        common::invalid_causes(e),
        vec![
            "webhooks[0].sideEffects: Unsupported value: \"Some\": supported values: \"None\", \"NoneOnDryRun\""
        ]
    );
    validating(
        &client,
        "dry",
        vec![hook(
            "pure.example.com",
            url_config(&w, "/pure"),
            configmap_rules(&["CREATE"]),
            json!({"sideEffects": "None"}),
        )],
    )
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    wait_for(&cms, |_| !w.seen.lock().expect("lock").is_empty())
        .await
        .expect("probe");
    t.kubectl_ok(&[
        "create",
        "configmap",
        "dry-cm",
        "--from-literal=a=b",
        "--dry-run=server",
    ])
    .await;
    let seen = seen_for(&w, "dry-cm");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["request"]["dryRun"], true);
    assert_eq!(seen[0]["request"]["options"]["dryRun"], json!(["All"]));
    assert!(cms.get_opt("dry-cm").await.expect("get").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_send_the_old_object_and_can_be_denied() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let w = TestWebhook::start(&[], |_, review| {
        let old = &review["request"]["oldObject"];
        if old["metadata"]["labels"]["keep"] == "yes" {
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "response": {"uid": review["request"]["uid"], "allowed": false,
                    "status": {"message": "kept"}}})
        } else {
            answer(review, json!({}))
        }
    })
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(
        &PostParams::default(),
        &configmap("kept", json!({"keep": "yes"})),
    )
    .await
    .expect("created");
    cms.create(&PostParams::default(), &configmap("gone", json!({})))
        .await
        .expect("created");
    validating(
        &client,
        "deletes",
        vec![hook(
            "deletes.example.com",
            url_config(&w, "/deletes"),
            configmap_rules(&["DELETE"]),
            json!({}),
        )],
    )
    .await;
    // Until the configuration takes effect, deletes go through: try with fresh kept ones.
    let start = tokio::time::Instant::now();
    let mut n = 0;
    let (code, reason, message) = loop {
        let name = format!("kept-{n}");
        n += 1;
        cms.create(
            &PostParams::default(),
            &configmap(&name, json!({"keep": "yes"})),
        )
        .await
        .expect("created");
        match cms.delete(&name, &DeleteParams::default()).await {
            Err(kube::Error::Api(e)) => break (e.code, e.reason.clone(), e.message.clone()),
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the webhook never refused a delete"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((code, reason.as_str()), (400, ""));
    assert_eq!(
        message,
        "admission webhook \"deletes.example.com\" denied the request: kept"
    );
    let out = t.kubectl(&["delete", "configmap", "gone"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = seen_for(&w, "gone");
    assert_eq!(seen.len(), 1);
    let r = &seen[0]["request"];
    assert_eq!(r["operation"], "DELETE");
    assert_eq!(r["object"], Value::Null);
    assert_eq!(r["oldObject"]["metadata"]["name"], "gone");
    assert_eq!(r["options"]["kind"], "DeleteOptions");
    let refused = format!("kept-{}", n - 1);
    assert!(cms.get_opt(&refused).await.expect("get").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subresource_rules_match_only_their_subresource() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let w = TestWebhook::start(&[], |_, review| answer(review, json!({}))).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}))
        .expect("pod"),
    )
    .await
    .expect("pod created");
    validating(
        &client,
        "status-only",
        vec![hook(
            "status.example.com",
            url_config(&w, "/status"),
            json!([{"operations": ["UPDATE"], "apiGroups": [""], "apiVersions": ["v1"],
                    "resources": ["pods/status"], "scope": "Namespaced"}]),
            json!({}),
        )],
    )
    .await;
    let start = tokio::time::Instant::now();
    let mut n = 0;
    while seen_for(&w, "p").is_empty() {
        n += 1;
        pods.patch_status(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"message": format!("try {n}")}})),
        )
        .await
        .expect("status patched");
        assert!(start.elapsed() < DEADLINE, "the webhook was never called");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = &seen_for(&w, "p")[0]["request"];
    assert_eq!(r["subResource"], "status");
    assert_eq!(r["requestSubResource"], "status");
    assert_eq!(r["kind"]["kind"], "Pod");
    assert_eq!(r["operation"], "UPDATE");
    let before = seen_for(&w, "p").len();
    pods.patch(
        "p",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
    )
    .await
    .expect("pod patched");
    assert_eq!(
        seen_for(&w, "p").len(),
        before,
        "a main-resource update was sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_configurations_are_never_intercepted() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let w = TestWebhook::start(&[], |_, review| {
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "response": {"uid": review["request"]["uid"], "allowed": false}})
    })
    .await;
    validating(
        &client,
        "deny-all",
        vec![hook(
            "everything.example.com",
            url_config(&w, "/all"),
            json!([{"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"],
                    "resources": ["*/*"]}]),
            json!({}),
        )],
    )
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let (code, _, message) = api_error(wait_for(&cms, |r| r.is_err()).await);
    assert_eq!(code, 400);
    assert_eq!(
        message,
        "admission webhook \"everything.example.com\" denied the request without explanation"
    );
    // The configurations themselves can still be written and deleted.
    mutating(&client, "another", vec![]).await;
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    api.delete("deny-all", &DeleteParams::default())
        .await
        .expect("configuration deleted");
    assert!(
        w.seen
            .lock()
            .expect("lock")
            .iter()
            .all(|(_, r)| r["request"]["kind"]["group"] != "admissionregistration.k8s.io")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equivalent_versions_are_sent_in_the_version_the_rules_name() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let w = TestWebhook::start(&[], |_, review| answer(review, json!({}))).await;
    validating(
        &client,
        "hpa-v2",
        vec![hook(
            "hpa.example.com",
            url_config(&w, "/hpa"),
            json!([{"operations": ["CREATE"], "apiGroups": ["autoscaling"],
                    "apiVersions": ["v2"], "resources": ["horizontalpodautoscalers"]}]),
            json!({}),
        )],
    )
    .await;
    let hpa = json!({
        "apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "NAME"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                 "maxReplicas": 3, "targetCPUUtilizationPercentage": 50}
    })
    .to_string();
    let start = tokio::time::Instant::now();
    let mut n = 0;
    let name = loop {
        n += 1;
        let name = format!("hpa-{n}");
        t.kubectl_stdin(&["create", "-f", "-"], &hpa.replace("NAME", &name))
            .await;
        if !seen_for(&w, &name).is_empty() {
            break name;
        }
        assert!(start.elapsed() < DEADLINE, "the webhook was never called");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let r = &seen_for(&w, &name)[0]["request"];
    assert_eq!(
        r["kind"],
        json!({"group": "autoscaling", "version": "v2", "kind": "HorizontalPodAutoscaler"})
    );
    assert_eq!(
        r["requestKind"],
        json!({"group": "autoscaling", "version": "v1", "kind": "HorizontalPodAutoscaler"})
    );
    assert_eq!(r["object"]["apiVersion"], "autoscaling/v2");
    assert_eq!(
        r["object"]["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
        50
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_behind_a_service_is_reached_through_its_endpoints() {
    let t = TestServer::start_configured(|a| a.proxy_to_loopback(true)).await;
    let client = t.client().await;
    let w = TestWebhook::start(&["guard.webhooks.svc"], |_, review| {
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "response": {"uid": review["request"]["uid"], "allowed": false,
                "status": {"code": 422, "reason": "Invalid", "message": "through the service"}}})
    })
    .await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "webhooks"}})).expect("ns"),
        )
        .await
        .expect("namespace");
    let services: Api<Service> = Api::namespaced(client.clone(), "webhooks");
    services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "guard"},
                "spec": {"ports": [{"name": "https", "port": 443,
                                    "targetPort": w.addr.port()}]}}))
            .expect("service"),
        )
        .await
        .expect("service");
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), "webhooks");
    endpoints
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "guard"},
                "subsets": [{"addresses": [{"ip": "127.0.0.1"}],
                             "ports": [{"name": "https", "port": w.addr.port()}]}]}))
            .expect("endpoints"),
        )
        .await
        .expect("endpoints");
    validating(
        &client,
        "by-service",
        vec![hook(
            "service.example.com",
            json!({"service": {"namespace": "webhooks", "name": "guard", "path": "/check"},
                   "caBundle": w.ca_bundle}),
            configmap_rules(&["CREATE"]),
            json!({}),
        )],
    )
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let (code, reason, message) = api_error(wait_for(&cms, |r| r.is_err()).await);
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    assert_eq!(
        message,
        "admission webhook \"service.example.com\" denied the request: through the service"
    );
    let paths: Vec<String> = w
        .seen
        .lock()
        .expect("lock")
        .iter()
        .map(|(p, _)| p.clone())
        .collect();
    assert!(paths.iter().all(|p| p == "/check?timeout=10s"), "{paths:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn match_conditions_decide_which_requests_are_sent() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let w = TestWebhook::start(&[], |_, review| {
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "response": {"uid": review["request"]["uid"], "allowed": false,
                "status": {"message": "checked"}}})
    })
    .await;
    validating(
        &client,
        "conditional",
        vec![
            hook(
                "checked.example.com",
                url_config(&w, "/checked"),
                configmap_rules(&["CREATE"]),
                json!({"matchConditions": [
                    {"name": "labelled", "expression":
                        "has(object.metadata.labels) && 'check' in object.metadata.labels"},
                    {"name": "not-admin-namespace", "expression":
                        "request.namespace != 'kube-system'"},
                ]}),
            ),
            hook(
                "broken-condition.example.com",
                url_config(&w, "/broken"),
                json!([{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                        "resources": ["secrets"]}]),
                json!({"matchConditions": [
                    {"name": "broken", "expression": "object.nothing.here == 'x'"}]}),
            ),
        ],
    )
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let start = tokio::time::Instant::now();
    let mut n = 0;
    let message = loop {
        n += 1;
        let r = cms
            .create(
                &PostParams::default(),
                &configmap(&format!("labelled-{n}"), json!({"check": "yes"})),
            )
            .await;
        if r.is_err() {
            break api_error(r).2;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the webhook never refused a create"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        message,
        "admission webhook \"checked.example.com\" denied the request: checked"
    );
    // Conditions false: not sent.
    cms.create(&PostParams::default(), &configmap("plain", json!({})))
        .await
        .expect("created");
    let system: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    system
        .create(
            &PostParams::default(),
            &configmap("system", json!({"check": "yes"})),
        )
        .await
        .expect("created");
    assert!(seen_for(&w, "plain").is_empty() && seen_for(&w, "system").is_empty());
    // A condition that cannot be evaluated: failurePolicy (Fail).
    let out = t
        .kubectl(&["create", "secret", "generic", "s", "--from-literal=a=b"])
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "Internal error occurred: failed calling webhook \"broken-condition.example.com\": \
             expression 'object.nothing.here == 'x'' resulted in error: "
        ),
        "{stderr}"
    );
    assert!(seen_for(&w, "s").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_needed_webhooks_are_reinvoked_after_a_later_change() {
    use base64::Engine as _;
    let t = TestServer::start().await;
    let client = t.client().await;
    let w = TestWebhook::start(&[], move |path, review| {
        let obj = &review["request"]["object"];
        let mut labels = obj["metadata"]["labels"].clone();
        if !labels.is_object() {
            labels = json!({});
        }
        if path.starts_with("/first") {
            let saw = obj["metadata"]["labels"]["second"].as_str().unwrap_or("no");
            labels["first-saw-second"] = json!(saw);
        } else {
            labels["second"] = json!("yes");
        }
        let patch = json!([{"op": "add", "path": "/metadata/labels", "value": labels}]);
        let patch = base64::engine::general_purpose::STANDARD
            .encode(serde_json::to_vec(&patch).expect("json"));
        answer(review, json!({"patchType": "JSONPatch", "patch": patch}))
    })
    .await;
    mutating(
        &client,
        "a-first",
        vec![hook(
            "first.example.com",
            url_config(&w, "/first"),
            configmap_rules(&["CREATE"]),
            json!({"reinvocationPolicy": "IfNeeded"}),
        )],
    )
    .await;
    mutating(
        &client,
        "b-second",
        vec![hook(
            "second.example.com",
            url_config(&w, "/second"),
            configmap_rules(&["CREATE"]),
            json!({}),
        )],
    )
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let probe = wait_for(&cms, |r| {
        r.as_ref().is_ok_and(|c| {
            c.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key("second") && l.contains_key("first-saw-second"))
        })
    })
    .await
    .expect("probe");
    let labels = probe.metadata.labels.expect("labels");
    assert_eq!(labels["first-saw-second"], "yes", "{labels:?}");
    let name = probe.metadata.name.expect("name");
    let calls: Vec<String> = w
        .seen
        .lock()
        .expect("lock")
        .iter()
        .filter(|(_, r)| r["request"]["object"]["metadata"]["name"] == name.as_str())
        .map(|(p, _)| p.split('?').next().unwrap_or("").to_string())
        .collect();
    assert_eq!(calls, ["/first", "/second", "/first"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_versions_and_answers_are_checked_as_upstream() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let w = TestWebhook::start(&[], |path, _| {
        if path.starts_with("/beta") {
            // v1beta1 answers need neither uid nor kind.
            json!({"response": {"allowed": true}})
        } else {
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "response": {"uid": "not-the-request's", "allowed": true}})
        }
    })
    .await;
    validating(
        &client,
        "versions",
        vec![
            hook(
                "beta.example.com",
                url_config(&w, "/beta"),
                configmap_rules(&["CREATE"]),
                json!({"admissionReviewVersions": ["v1beta1", "v1"]}),
            ),
            hook(
                "wrong-uid.example.com",
                url_config(&w, "/uid"),
                json!([{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                        "resources": ["secrets"]}]),
                json!({}),
            ),
        ],
    )
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    wait_for(&cms, |_| !w.seen.lock().expect("lock").is_empty())
        .await
        .expect("allowed");
    let beta = w.seen.lock().expect("lock")[0].1.clone();
    assert_eq!(beta["apiVersion"], "admission.k8s.io/v1beta1");
    assert_eq!(beta["request"]["operation"], "CREATE");
    let out = t
        .kubectl(&["create", "secret", "generic", "s", "--from-literal=a=b"])
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let uid = seen_for(&w, "s")[0]["request"]["uid"]
        .as_str()
        .expect("uid")
        .to_string();
    assert!(
        stderr.contains(&format!(
            "Internal error occurred: failed calling webhook \"wrong-uid.example.com\": received \
             invalid webhook response: expected response.uid=\"{uid}\", got \"not-the-request's\""
        )),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evictions_are_sent_as_eviction_creates() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let w = TestWebhook::start(&[], |_, review| {
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "response": {"uid": review["request"]["uid"], "allowed": false,
                "status": {"code": 403, "reason": "Forbidden", "message": "not now"}}})
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}))
        .expect("pod"),
    )
    .await
    .expect("pod created");
    validating(
        &client,
        "evictions",
        vec![hook(
            "evictions.example.com",
            url_config(&w, "/evictions"),
            json!([{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                    "resources": ["pods/eviction"]}]),
            json!({}),
        )],
    )
    .await;
    let start = tokio::time::Instant::now();
    let (code, reason, message) = loop {
        // Until the configuration takes effect the eviction deletes the pod: recreate it.
        if pods.get_opt("p").await.expect("get").is_none() {
            pods.create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": "p"},
                    "spec": {"containers": [{"name": "c", "image": "busybox"}]}}))
                .expect("pod"),
            )
            .await
            .expect("pod created");
        }
        let r = pods
            .evict(
                "p",
                &kube::api::EvictParams {
                    delete_options: Some(DeleteParams {
                        grace_period_seconds: Some(0),
                        ..DeleteParams::default()
                    }),
                    ..kube::api::EvictParams::default()
                },
            )
            .await;
        if r.is_err() {
            break api_error(r);
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the webhook never refused an eviction"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((code, reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        message,
        "admission webhook \"evictions.example.com\" denied the request: not now"
    );
    assert!(pods.get_opt("p").await.expect("get").is_some());
    let r = &seen_for(&w, "p")[0]["request"];
    assert_eq!(
        r["kind"],
        json!({"group": "policy", "version": "v1", "kind": "Eviction"})
    );
    assert_eq!(
        r["resource"],
        json!({"group": "", "version": "v1", "resource": "pods"})
    );
    assert_eq!(r["subResource"], "eviction");
    assert_eq!(r["operation"], "CREATE");
    assert_eq!(r["object"]["kind"], "Eviction");
    // The pod's own deletion by an eviction is not a DELETE admission of its own: only the
    // eviction was sent.
    assert!(
        w.seen
            .lock()
            .expect("lock")
            .iter()
            .all(|(_, r)| r["request"]["operation"] == "CREATE")
    );
}

/// A refusing answer to `review` with `message` and `code`.
fn refusal(review: &Value, code: u16, message: &str) -> Value {
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "response": {"uid": review["request"]["uid"], "allowed": false,
            "status": {"code": code, "message": message}}})
}

/// A `POST` of `body` to `path` through kube-rs: the answer, or the API error.
async fn post(client: &kube::Client, path: &str, body: Value) -> Result<Value, kube::Error> {
    let request = http::Request::post(path)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).expect("body"))
        .expect("request");
    client.request::<Value>(request).await
}

fn requests_of(w: &TestWebhook, operation: &str) -> Vec<Value> {
    w.seen
        .lock()
        .expect("lock")
        .iter()
        .map(|(_, r)| r["request"].clone())
        .filter(|r| r["operation"] == operation)
        .collect()
}

async fn create_pod(client: &kube::Client, name: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}))
        .expect("pod"),
    )
    .await
    .expect("pod created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scales_are_sent_as_scale_updates_and_can_be_denied() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let w = TestWebhook::start(&[], |_, review| refusal(review, 403, "scaling is frozen")).await;
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), "default");
    deployments
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "d"}, "spec": {"replicas": 1,
                "selector": {"matchLabels": {"app": "d"}},
                "template": {"metadata": {"labels": {"app": "d"}},
                    "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}))
            .expect("deployment"),
        )
        .await
        .expect("deployment created");
    validating(
        &client,
        "frozen",
        vec![hook(
            "frozen.example.com",
            url_config(&w, "/scale"),
            json!([{"operations": ["UPDATE"], "apiGroups": ["apps"], "apiVersions": ["v1"],
                    "resources": ["deployments/scale"]}]),
            json!({}),
        )],
    )
    .await;
    // kubectl scale (a patch of the Scale) until the configuration takes effect.
    let start = tokio::time::Instant::now();
    let stderr = loop {
        let out = t
            .kubectl(&["scale", "deployment", "d", "-n", "default", "--replicas=3"])
            .await;
        if !out.status.success() {
            break String::from_utf8_lossy(&out.stderr).into_owned();
        }
        // Back to one replica while the webhook is not called yet.
        t.kubectl_ok(&["scale", "deployment", "d", "-n", "default", "--replicas=1"])
            .await;
        assert!(
            start.elapsed() < DEADLINE,
            "the webhook never refused a scale"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        stderr.contains(
            "admission webhook \"frozen.example.com\" denied the request: scaling is frozen"
        ),
        "{stderr}"
    );
    let d = deployments.get("d").await.expect("deployment");
    assert_eq!(d.spec.expect("spec").replicas, Some(1));
    let r = requests_of(&w, "UPDATE").pop().expect("sent");
    assert_eq!(
        r["kind"],
        json!({"group": "autoscaling", "version": "v1", "kind": "Scale"})
    );
    assert_eq!(r["requestKind"], r["kind"]);
    assert_eq!(
        r["resource"],
        json!({"group": "apps", "version": "v1", "resource": "deployments"})
    );
    assert_eq!(r["subResource"], "scale");
    assert_eq!(r["name"], "d");
    assert_eq!(r["object"]["kind"], "Scale");
    assert_eq!(r["object"]["apiVersion"], "autoscaling/v1");
    assert_eq!(r["object"]["spec"]["replicas"], 3);
    assert_eq!(r["oldObject"]["spec"]["replicas"], 1);
    assert_eq!(r["options"]["kind"], "PatchOptions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_and_token_requests_are_sent_as_creates() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let w = TestWebhook::start(&[], |_, review| {
        let kind = review["request"]["kind"]["kind"]
            .as_str()
            .unwrap_or("")
            .to_string();
        refusal(review, 403, &format!("no {kind} today"))
    })
    .await;
    create_pod(&client, "p").await;
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), "default");
    sas.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "sa"}})).expect("sa"),
    )
    .await
    .expect("service account created");
    validating(
        &client,
        "creates",
        vec![hook(
            "creates.example.com",
            url_config(&w, "/creates"),
            json!([{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                    "resources": ["pods/binding", "serviceaccounts/token"]}]),
            json!({}),
        )],
    )
    .await;
    // Token requests (harmless when allowed) until the configuration takes effect.
    let token_path = "/api/v1/namespaces/default/serviceaccounts/sa/token";
    let start = tokio::time::Instant::now();
    let (code, _, message) = loop {
        let r = post(&client, token_path, json!({"spec": {"audiences": ["a"]}})).await;
        if r.is_err() {
            break api_error(r);
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the webhook never refused a token"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(code, 403);
    assert_eq!(
        message,
        "admission webhook \"creates.example.com\" denied the request: no TokenRequest today"
    );
    let r = requests_of(&w, "CREATE").pop().expect("sent");
    assert_eq!(
        r["kind"],
        json!({"group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest"})
    );
    assert_eq!(
        r["resource"],
        json!({"group": "", "version": "v1", "resource": "serviceaccounts"})
    );
    assert_eq!(
        (r["subResource"].as_str(), r["name"].as_str()),
        (Some("token"), Some("sa"))
    );
    assert_eq!(r["object"]["kind"], "TokenRequest");
    assert_eq!(r["object"]["spec"]["audiences"], json!(["a"]));
    assert_eq!(r["object"]["spec"]["expirationSeconds"], 3600);

    // The binding is refused with the webhook's message, and the pod stays unbound.
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"},
        "target": {"apiVersion": "v1", "kind": "Node", "name": "n1"}});
    let (code, _, message) = api_error(
        post(
            &client,
            "/api/v1/namespaces/default/pods/p/binding",
            binding,
        )
        .await,
    );
    assert_eq!(code, 403);
    assert_eq!(
        message,
        "admission webhook \"creates.example.com\" denied the request: no Binding today"
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod = pods.get("p").await.expect("pod");
    assert_eq!(pod.spec.expect("spec").node_name, None);
    let r = requests_of(&w, "CREATE").pop().expect("sent");
    assert_eq!(
        r["kind"],
        json!({"group": "", "version": "v1", "kind": "Binding"})
    );
    assert_eq!(
        (r["subResource"].as_str(), r["name"].as_str()),
        (Some("binding"), Some("p"))
    );
    assert_eq!(r["object"]["target"]["name"], "n1");
    assert_eq!(r["object"]["metadata"]["namespace"], "default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_connects_are_sent_and_can_be_denied() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let w = TestWebhook::start(&[], |_, review| {
        refusal(review, 403, "no shells in production")
    })
    .await;
    create_pod(&client, "p").await;
    validating(
        &client,
        "no-exec",
        vec![hook(
            "no-exec.example.com",
            url_config(&w, "/connect"),
            json!([{"operations": ["CONNECT"], "apiGroups": [""], "apiVersions": ["v1"],
                    "resources": ["pods/*"]}]),
            json!({}),
        )],
    )
    .await;
    // Without a kubelet the exec fails anyway: until the configuration takes effect, with
    // another message.
    let denial = "admission webhook \"no-exec.example.com\" denied the request: no shells in \
                  production";
    let start = tokio::time::Instant::now();
    loop {
        let out = t
            .kubectl(&["exec", "p", "-n", "default", "--", "ls", "-l"])
            .await;
        assert!(!out.status.success());
        if String::from_utf8_lossy(&out.stderr).contains(denial) {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the webhook never refused the exec: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = requests_of(&w, "CONNECT").pop().expect("sent");
    assert_eq!(
        r["kind"],
        json!({"group": "", "version": "v1", "kind": "PodExecOptions"})
    );
    assert_eq!(
        r["resource"],
        json!({"group": "", "version": "v1", "resource": "pods"})
    );
    assert_eq!(
        (r["subResource"].as_str(), r["name"].as_str()),
        (Some("exec"), Some("p"))
    );
    assert_eq!(r["namespace"], "default");
    assert_eq!(r["object"]["kind"], "PodExecOptions");
    assert_eq!(r["object"]["command"], json!(["ls", "-l"]));
    assert_eq!(r["object"]["container"], "c");
    assert_eq!(r["object"]["stdout"], true);
    assert_eq!(r["oldObject"], Value::Null);
    assert_eq!(r["options"], Value::Null);

    // kube-rs sees the webhook's code and message on a port-forward's CONNECT too.
    let path = "/api/v1/namespaces/default/pods/p/portforward?ports=8080";
    let (code, _, message) = api_error(post(&client, path, json!({})).await);
    assert_eq!(code, 403);
    assert!(message.ends_with("no shells in production"), "{message}");
    let r = requests_of(&w, "CONNECT").pop().expect("sent");
    assert_eq!(r["object"]["kind"], "PodPortForwardOptions");
    assert_eq!(r["object"]["ports"], json!([8080]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_calls_are_counted_in_metrics() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let w = TestWebhook::start(&[], |_, review| {
        let obj = &review["request"]["object"];
        if obj["metadata"]["labels"]["deny"] == "yes" {
            refusal(review, 403, "denied")
        } else {
            answer(review, json!({}))
        }
    })
    .await;
    validating(
        &client,
        "counted",
        vec![hook(
            "counted.example.com",
            url_config(&w, "/count"),
            configmap_rules(&["CREATE"]),
            json!({}),
        )],
    )
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    wait_for(&cms, |_| !w.seen.lock().expect("lock").is_empty())
        .await
        .expect("allowed");
    let r = cms
        .create(
            &PostParams::default(),
            &configmap("refused", json!({"deny": "yes"})),
        )
        .await;
    assert_eq!(api_error(r).0, 403);
    let text = t.kubectl_ok(&["get", "--raw", "/metrics"]).await;
    let has = |prefix: &str| text.lines().any(|l| l.starts_with(prefix));
    let labels = "name=\"counted.example.com\",operation=\"CREATE\"";
    for line in [
        "# TYPE apiserver_admission_webhook_admission_duration_seconds histogram".to_string(),
        format!(
            "apiserver_admission_webhook_request_total{{code=\"200\",{labels},rejected=\"false\",type=\"validating\"}} "
        ),
        format!(
            "apiserver_admission_webhook_request_total{{code=\"403\",{labels},rejected=\"true\",type=\"validating\"}} 1"
        ),
        format!(
            "apiserver_admission_webhook_rejection_count{{error_type=\"no_error\",{labels},rejection_code=\"403\",type=\"validating\"}} 1"
        ),
        format!(
            "apiserver_admission_webhook_admission_duration_seconds_count{{{labels},rejected=\"true\",type=\"validating\"}} 1"
        ),
        format!(
            "apiserver_admission_webhook_admission_duration_seconds_bucket{{{labels},rejected=\"true\",type=\"validating\",le=\"+Inf\"}} 1"
        ),
    ] {
        assert!(has(&line), "{line} not in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_to_a_webhook_are_reused() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let w = TestWebhook::start(&[], |_, review| answer(review, json!({}))).await;
    validating(
        &client,
        "pooled",
        vec![hook(
            "pooled.example.com",
            url_config(&w, "/pooled"),
            configmap_rules(&["CREATE"]),
            json!({}),
        )],
    )
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    wait_for(&cms, |_| !w.seen.lock().expect("lock").is_empty())
        .await
        .expect("allowed");
    let connections = || w.connections.load(std::sync::atomic::Ordering::SeqCst);
    let (calls, dialled) = (w.seen.lock().expect("lock").len(), connections());
    for n in 0..10 {
        cms.create(
            &PostParams::default(),
            &configmap(&format!("pooled-{n}"), json!({})),
        )
        .await
        .expect("created");
    }
    assert_eq!(w.seen.lock().expect("lock").len(), calls + 10);
    // Ten calls in a row on the connection of the first (at most one new one).
    assert!(
        connections() <= dialled + 1,
        "{} connections for 10 calls",
        connections() - dialled
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_annotations_of_answers_reach_the_audit_log() {
    let t = TestServer::start_audited().await;
    let client = t.client().await;
    let w = TestWebhook::start(&[], |path, review| {
        let note = if path.starts_with("/m") {
            "mutated"
        } else {
            "checked"
        };
        answer(review, json!({"auditAnnotations": {"verdict": note}}))
    })
    .await;
    mutating(
        &client,
        "annotating-m",
        vec![hook(
            "m.example.com",
            url_config(&w, "/m"),
            configmap_rules(&["CREATE"]),
            json!({}),
        )],
    )
    .await;
    validating(
        &client,
        "annotating-v",
        vec![hook(
            "v.example.com",
            url_config(&w, "/v"),
            configmap_rules(&["CREATE"]),
            json!({}),
        )],
    )
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    wait_for(&cms, |_| {
        let seen = w.seen.lock().expect("lock");
        seen.iter().any(|(p, _)| p.starts_with("/m"))
            && seen.iter().any(|(p, _)| p.starts_with("/v"))
    })
    .await
    .expect("allowed");
    cms.create(&PostParams::default(), &configmap("noted", json!({})))
        .await
        .expect("created");
    let event = t.audit_event("create", "noted");
    let notes = &event["annotations"];
    assert_eq!(notes["m.example.com/verdict"], "mutated", "{event}");
    assert_eq!(notes["v.example.com/verdict"], "checked", "{event}");
    assert_eq!(
        notes["mutation.webhook.admission.k8s.io/round_0_index_0"],
        "{\"configuration\":\"annotating-m\",\"webhook\":\"m.example.com\",\"mutated\":false}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutating_webhooks_patch_the_scale() {
    use base64::Engine as _;
    let t = TestServer::start().await;
    let client = t.client().await;
    // At most two replicas: a JSON patch of the Scale.
    let w = TestWebhook::start(&[], |_, review| {
        let patch = json!([{"op": "replace", "path": "/spec/replicas", "value": 2}]);
        answer(
            review,
            json!({"patchType": "JSONPatch", "patch":
                base64::engine::general_purpose::STANDARD.encode(patch.to_string())}),
        )
    })
    .await;
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), "default");
    deployments
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "d"}, "spec": {"replicas": 1,
                "selector": {"matchLabels": {"app": "d"}},
                "template": {"metadata": {"labels": {"app": "d"}},
                    "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}))
            .expect("deployment"),
        )
        .await
        .expect("deployment created");
    mutating(
        &client,
        "capped",
        vec![hook(
            "capped.example.com",
            url_config(&w, "/cap"),
            json!([{"operations": ["UPDATE"], "apiGroups": ["apps"], "apiVersions": ["v1"],
                    "resources": ["deployments/*"]}]),
            json!({}),
        )],
    )
    .await;
    let start = tokio::time::Instant::now();
    loop {
        t.kubectl_ok(&["scale", "deployment", "d", "-n", "default", "--replicas=5"])
            .await;
        let d = deployments.get("d").await.expect("deployment");
        if d.spec.expect("spec").replicas == Some(2) {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the webhook never capped a scale"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = requests_of(&w, "UPDATE").pop().expect("sent");
    assert_eq!(r["kind"]["kind"], "Scale");
    assert_eq!(r["object"]["spec"]["replicas"], 5);
}
