//! Strategic merge patch as kubectl uses it: `kubectl apply` (three-way patches computed from
//! our OpenAPI v3 patch metadata), `kubectl patch --type strategic`, `kubectl set env`, and
//! `/openapi/v2`.

mod common;

use common::TestServer;
use serde_json::{Value, json};

fn deployment(containers: Value) -> String {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": containers},
            },
        },
    })
    .to_string()
}

async fn get_json(t: &TestServer, args: &[&str]) -> Value {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&t.kubectl_ok(&all).await).expect("JSON")
}

/// Names and values of a container's env, in order.
fn env(c: &Value) -> Vec<(String, String)> {
    c["env"]
        .as_array()
        .map(|e| {
            e.iter()
                .map(|v| {
                    (
                        v["name"].as_str().unwrap_or("").to_string(),
                        v["value"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn ports(c: &Value) -> Vec<i64> {
    c["ports"]
        .as_array()
        .map(|p| {
            p.iter()
                .filter_map(|p| p["containerPort"].as_i64())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_twice_changes_image_env_ports_and_containers() {
    let t = TestServer::start().await;
    let first = deployment(json!([
        {"name": "a", "image": "nginx:1", "env": [{"name": "E1", "value": "1"}],
         "ports": [{"containerPort": 80}, {"containerPort": 443}]},
        {"name": "b", "image": "busybox:1", "command": ["sleep", "1000"]},
    ]));
    let out = t.kubectl_stdin(&["apply", "-f", "-"], &first).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Someone else adds an env var: apply must keep it (three-way merge).
    t.kubectl_ok(&["set", "env", "deployment/web", "-c", "a", "EXTRA=x"])
        .await;

    let second = deployment(json!([
        {"name": "a", "image": "nginx:2",
         "env": [{"name": "E1", "value": "1"}, {"name": "E2", "value": "2"}],
         "ports": [{"containerPort": 80}]},
    ]));
    // -v=6 logs the requests: kubectl must have read our OpenAPI v3 for apps/v1 and sent a
    // strategic merge patch computed from it.
    let out = t
        .kubectl_stdin(&["apply", "-f", "-", "-v=6"], &second)
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("/openapi/v3/apis/apps/v1"), "{stderr}");
    assert!(
        !stderr.contains("error calculating patch"),
        "kubectl could not use our metadata: {stderr}"
    );
    assert!(
        !stderr.contains("OpenAPI V3 path"),
        "kubectl did not find strategic merge patch support in our OpenAPI v3: {stderr}"
    );
    assert!(stderr.contains(r#"verb="PATCH""#), "{stderr}");

    let d = get_json(&t, &["deployment", "web"]).await;
    let containers = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    assert_eq!(containers.len(), 1, "b was removed: {containers:?}");
    let a = &containers[0];
    assert_eq!(a["name"], "a");
    assert_eq!(a["image"], "nginx:2");
    assert_eq!(
        env(a),
        [
            ("E1".to_string(), "1".to_string()),
            ("E2".to_string(), "2".to_string()),
            ("EXTRA".to_string(), "x".to_string()),
        ]
    );
    assert_eq!(ports(a), [80]);
    assert_eq!(d["metadata"]["generation"], 3);

    // Third apply: drop E1, add a container between, reorder nothing else.
    let third = deployment(json!([
        {"name": "a", "image": "nginx:2", "env": [{"name": "E2", "value": "2"}],
         "ports": [{"containerPort": 80}, {"containerPort": 8080, "name": "alt"}]},
        {"name": "c", "image": "redis:7"},
    ]));
    let out = t.kubectl_stdin(&["apply", "-f", "-"], &third).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = get_json(&t, &["deployment", "web"]).await;
    let containers = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    let names: Vec<&str> = containers
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["a", "c"]);
    assert_eq!(
        env(&containers[0]),
        [
            ("E2".to_string(), "2".to_string()),
            ("EXTRA".to_string(), "x".to_string()),
        ]
    );
    assert_eq!(ports(&containers[0]), [80, 8080]);
    // Defaults still apply to the merged container.
    assert_eq!(containers[1]["imagePullPolicy"], "IfNotPresent");

    // Applying the same manifest again changes nothing. (kubectl still sends a patch, only
    // `$setElementOrder/env`, because of the out-of-band EXTRA, and says "configured", as
    // against upstream.)
    let out = t.kubectl_stdin(&["apply", "-f", "-"], &third).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = get_json(&t, &["deployment", "web"]).await;
    assert_eq!(
        again["metadata"]["resourceVersion"],
        d["metadata"]["resourceVersion"]
    );
    assert_eq!(again["spec"], d["spec"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_patch_strategic_on_pods_and_services() {
    let t = TestServer::start().await;
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {"containers": [
            {"name": "a", "image": "nginx:1"},
            {"name": "b", "image": "busybox:1"},
        ]},
    });
    let out = t
        .kubectl_stdin(&["create", "-f", "-"], &pod.to_string())
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Strategic is kubectl patch's default type.
    t.kubectl_ok(&[
        "patch",
        "pod",
        "p",
        "-p",
        r#"{"spec":{"containers":[{"name":"b","image":"busybox:2"}]}}"#,
    ])
    .await;
    let p = get_json(&t, &["pod", "p"]).await;
    let images: Vec<(&str, &str)> = p["spec"]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or(""),
                c["image"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(images, [("a", "nginx:1"), ("b", "busybox:2")]);

    // Finalizers are a set; $deleteFromPrimitiveList removes one.
    for f in ["example.com/a", "example.com/b", "example.com/a"] {
        t.kubectl_ok(&[
            "patch",
            "pod",
            "p",
            "--type",
            "strategic",
            "-p",
            &json!({"metadata": {"finalizers": [f]}}).to_string(),
        ])
        .await;
    }
    // Upstream puts items the live list does not have yet first (no $setElementOrder).
    let p = get_json(&t, &["pod", "p"]).await;
    assert_eq!(
        p["metadata"]["finalizers"],
        json!(["example.com/b", "example.com/a"])
    );
    t.kubectl_ok(&[
        "patch",
        "pod",
        "p",
        "-p",
        r#"{"metadata":{"$deleteFromPrimitiveList/finalizers":["example.com/a","example.com/b"]}}"#,
    ])
    .await;
    // (Upstream omits the emptied list; rk3s's typed round trip keeps `[]`.)
    let p = get_json(&t, &["pod", "p"]).await;
    assert!(
        p["metadata"]
            .get("finalizers")
            .is_none_or(|f| f.as_array().is_some_and(Vec::is_empty)),
        "{p}"
    );

    // A list item without its merge key: upstream's error, as upstream words it.
    let out = t
        .kubectl(&[
            "patch",
            "pod",
            "p",
            "-p",
            r#"{"spec":{"containers":[{"image":"x"}]}}"#,
        ])
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("map: map[image:x] does not contain declared merge key: name"),
        "{stderr}"
    );
    // A malformed directive is a 400.
    let out = t
        .kubectl(&[
            "patch",
            "pod",
            "p",
            "-p",
            r#"{"spec":{"$setElementOrder":[]}}"#,
        ])
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("(BadRequest)")
            && stderr.contains("invalid patch format of setElementOrder list"),
        "{stderr}"
    );

    // Service ports merge on port; $patch: delete removes one.
    let svc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "s", "namespace": "default"},
        "spec": {"selector": {"app": "x"}, "ports": [
            {"name": "http", "port": 80},
            {"name": "https", "port": 443},
        ]},
    });
    let out = t
        .kubectl_stdin(&["create", "-f", "-"], &svc.to_string())
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.kubectl_ok(&[
        "patch",
        "service",
        "s",
        "-p",
        r#"{"spec":{"ports":[{"port":443,"$patch":"delete"},{"name":"metrics","port":9090}]}}"#,
    ])
    .await;
    let s = get_json(&t, &["service", "s"]).await;
    let ports: Vec<(&str, i64)> = s["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or(""),
                p["port"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(ports, [("metrics", 9090), ("http", 80)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_v2_is_swagger_with_patch_metadata() {
    let t = TestServer::start().await;
    let doc: Value =
        serde_json::from_str(&t.kubectl_ok(&["get", "--raw", "/openapi/v2"]).await).expect("JSON");
    assert_eq!(doc["swagger"], "2.0");
    let deploy = &doc["definitions"]["io.k8s.api.apps.v1.Deployment"];
    assert_eq!(
        deploy["x-kubernetes-group-version-kind"],
        json!([{"group": "apps", "version": "v1", "kind": "Deployment"}])
    );
    let ports = &doc["definitions"]["io.k8s.api.core.v1.ServiceSpec"]["properties"]["ports"];
    assert_eq!(ports["x-kubernetes-patch-merge-key"], "port");
    assert_eq!(
        ports["x-kubernetes-list-map-keys"],
        json!(["port", "protocol"])
    );
    assert_eq!(
        doc["definitions"]["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]["items"]["$ref"],
        "#/definitions/io.k8s.api.core.v1.Container"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_edit_changes_one_container_of_a_deployment() {
    let t = TestServer::start().await;
    let d = deployment(json!([
        {"name": "a", "image": "nginx:1", "env": [{"name": "E1", "value": "1"}]},
        {"name": "b", "image": "busybox:1"},
    ]));
    let out = t.kubectl_stdin(&["create", "-f", "-"], &d).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // kubectl edit sends a two-way strategic merge patch of what the "editor" changed.
    let mut cmd = t.kubectl_cmd(&["edit", "deployment", "web", "-o", "json"]);
    cmd.env(
        "KUBE_EDITOR",
        r#"sed -i -e 's/"nginx:1"/"nginx:3"/' -e 's/"value": "1"/"value": "one"/'"#,
    );
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("kubectl edit runs"))
        .await
        .expect("thread");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let d = get_json(&t, &["deployment", "web"]).await;
    let containers = &d["spec"]["template"]["spec"]["containers"];
    assert_eq!(containers[0]["image"], "nginx:3");
    assert_eq!(env(&containers[0]), [("E1".to_string(), "one".to_string())]);
    assert_eq!(containers[1]["image"], "busybox:1");
    assert_eq!(containers.as_array().map(Vec::len), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_switches_union_members_with_retain_keys() {
    let t = TestServer::start().await;
    let manifest = |strategy: Value, volume: Value| {
        let mut d: Value = serde_json::from_str(&deployment(json!([
            {"name": "a", "image": "nginx:1", "volumeMounts": [{"name": "v", "mountPath": "/v"}]},
        ])))
        .expect("JSON");
        d["spec"]["strategy"] = strategy;
        d["spec"]["template"]["spec"]["volumes"] = json!([volume]);
        d.to_string()
    };
    let first = manifest(
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 2}}),
        json!({"name": "v", "emptyDir": {}}),
    );
    let out = t.kubectl_stdin(&["apply", "-f", "-"], &first).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Switch the strategy to Recreate and the volume to a ConfigMap: kubectl sends
    // `$retainKeys`, which clears rollingUpdate and emptyDir.
    let second = manifest(
        json!({"type": "Recreate"}),
        json!({"name": "v", "configMap": {"name": "cm"}}),
    );
    let out = t
        .kubectl_stdin(&["apply", "-f", "-", "-v=9"], &second)
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("$retainKeys"), "{stderr}");
    let d = get_json(&t, &["deployment", "web"]).await;
    assert_eq!(d["spec"]["strategy"], json!({"type": "Recreate"}));
    let volumes = &d["spec"]["template"]["spec"]["volumes"];
    assert_eq!(volumes.as_array().map(Vec::len), Some(1), "{volumes}");
    assert_eq!(volumes[0]["name"], "v");
    assert_eq!(volumes[0]["configMap"]["name"], "cm");
    assert!(volumes[0].get("emptyDir").is_none(), "{volumes}");
}
