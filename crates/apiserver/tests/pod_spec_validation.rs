//! The parts of upstream v1.33's pod spec validation and core/v1 defaulting that the other
//! validation tests leave out, over HTTPS against a real apiserver: `volumeDevices`,
//! `resizePolicy`, what ephemeral containers may not set, pod-level `resources` (dropped:
//! `PodLevelResources` is off in v1.33), ReplicationControllers (selector and labels from the
//! template, `activeDeadlineSeconds` forbidden), Endpoints port protocols and volumes without
//! a source — through raw requests (422 causes, the stored objects) and kubectl.

mod common;

use common::{TestServer, invalid_causes};
use k8s_openapi::api::core::v1::{Endpoints, Pod, ReplicationController};
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

/// A `POST` of `body` to `path` as JSON, so fields reach the server as written.
async fn post(client: &kube::Client, path: &str, body: Value) -> Result<Value, kube::Error> {
    let request = http::Request::post(path)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).expect("body"))
        .expect("request");
    client.request::<Value>(request).await
}

const PODS: &str = "/api/v1/namespaces/default/pods";

/// A pod named `name` with `spec` (restartPolicy and the rest defaulted by the server).
fn pod(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})
}

async fn refused(client: &kube::Client, path: &str, body: Value) -> Vec<String> {
    invalid_causes(post(client, path, body).await.expect_err("refused"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_devices_are_validated_as_upstream() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let volumes = json!([
        {"name": "block", "persistentVolumeClaim": {"claimName": "block"}},
        {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {
            "accessModes": ["ReadWriteOnce"], "volumeMode": "Block",
            "resources": {"requests": {"storage": "1Gi"}}}}}},
        {"name": "cache", "emptyDir": {}},
    ]);
    let got = refused(
        &client,
        PODS,
        pod(
            "devices",
            json!({"volumes": volumes, "containers": [{"name": "app", "image": "busybox:1.36",
            "volumeMounts": [{"name": "cache", "mountPath": "/dev/xvdc"}],
            "volumeDevices": [
                {"name": "block", "devicePath": "/dev/xvda"},
                {"name": "block", "devicePath": "/dev/xvda"},
                {"name": "cache", "devicePath": "/dev/xvdc"},
                {"name": "missing", "devicePath": "/dev/../xvdd"},
                {"name": "scratch"},
            ]}]}),
        ),
    )
    .await;
    let p = "spec.containers[0]";
    assert_eq!(
        got,
        [
            format!(
                "{p}.volumeMounts[0].name: Invalid value: \"cache\": must not already exist in volumeDevices"
            ),
            format!(
                "{p}.volumeMounts[0].mountPath: Invalid value: \"/dev/xvdc\": must not already exist as a path in volumeDevices"
            ),
            format!("{p}.volumeDevices[1].name: Invalid value: \"block\": must be unique"),
            format!(
                "{p}.volumeDevices[1].devicePath: Invalid value: \"/dev/xvda\": must be unique"
            ),
            format!(
                "{p}.volumeDevices[2].name: Invalid value: \"cache\": can only use volume source type of PersistentVolumeClaim or Ephemeral for block mode"
            ),
            format!(
                "{p}.volumeDevices[2].name: Invalid value: \"cache\": must not already exist in volumeMounts"
            ),
            format!(
                "{p}.volumeDevices[2].devicePath: Invalid value: \"/dev/xvdc\": must not already exist as a path in volumeMounts"
            ),
            format!("{p}.volumeDevices[3].name: Not found: \"missing\""),
            format!(
                "{p}.volumeDevices[3].devicePath: Invalid value: \"/dev/../xvdd\": can not contain backsteps ('..')"
            ),
            format!("{p}.volumeDevices[4].devicePath: Required value"),
        ]
    );

    // Claim-backed devices (the claims need not exist yet) are accepted, as kubectl sends them.
    let out = t
        .kubectl_stdin(
            &["create", "-f", "-"],
            "apiVersion: v1\nkind: Pod\nmetadata: {name: block}\nspec:\n\
             \x20 containers:\n  - name: app\n    image: busybox:1.36\n\
             \x20   volumeDevices:\n    - {name: block, devicePath: /dev/xvda}\n\
             \x20   - {name: scratch, devicePath: /dev/xvdb}\n\
             \x20   volumeMounts:\n    - {name: cache, mountPath: /cache}\n\
             \x20 volumes:\n  - name: block\n    persistentVolumeClaim: {claimName: block}\n\
             \x20 - name: scratch\n    ephemeral:\n      volumeClaimTemplate:\n\
             \x20       spec: {accessModes: [ReadWriteOnce], volumeMode: Block,\n\
             \x20         resources: {requests: {storage: 1Gi}}}\n\
             \x20 - name: cache\n",
        )
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A volume without a source is an emptyDir (`SetDefaults_Volume`).
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let stored = serde_json::to_value(pods.get("block").await.expect("pod")).expect("json");
    assert_eq!(
        stored["spec"]["volumes"][2],
        json!({"name": "cache", "emptyDir": {}})
    );
    assert_eq!(
        stored["spec"]["volumes"][1]["ephemeral"]["volumeClaimTemplate"]["spec"]["volumeMode"],
        "Block"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resize_policies_are_validated_as_upstream() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let got = refused(
        &client,
        PODS,
        pod(
            "resize",
            json!({"restartPolicy": "Never", "containers": [{"name": "app", "image": "busybox:1.36",
            "resizePolicy": [
                {"resourceName": "cpu", "restartPolicy": "NotRequired"},
                {"resourceName": "cpu", "restartPolicy": "RestartContainer"},
                {"resourceName": "storage", "restartPolicy": "Sometimes"},
            ]}]}),
        ),
    )
    .await;
    let p = "spec.containers[0].resizePolicy";
    assert_eq!(
        got,
        [
            format!("{p}[1]: Duplicate value: \"cpu\""),
            format!(
                "{p}: Invalid value: \"RestartContainer\": must be 'NotRequired' when `restartPolicy` is 'Never'"
            ),
            format!("{p}: Unsupported value: \"storage\": supported values: \"cpu\", \"memory\""),
            format!(
                "{p}: Unsupported value: \"Sometimes\": supported values: \"NotRequired\", \"RestartContainer\""
            ),
            format!(
                "{p}: Invalid value: \"Sometimes\": must be 'NotRequired' when `restartPolicy` is 'Never'"
            ),
        ]
    );

    // With the default restartPolicy (Always) both policies are fine, and init containers —
    // sidecars or not — may have one (`InPlacePodVerticalScaling` is on in v1.33).
    let ok = pod(
        "resize",
        json!({"initContainers": [
                {"name": "init", "image": "busybox:1.36",
                 "resizePolicy": [{"resourceName": "memory", "restartPolicy": "NotRequired"}]},
                {"name": "sidecar", "image": "busybox:1.36", "restartPolicy": "Always",
                 "resizePolicy": [{"resourceName": "cpu", "restartPolicy": "RestartContainer"}]}],
            "containers": [{"name": "app", "image": "busybox:1.36",
                "resizePolicy": [{"resourceName": "cpu", "restartPolicy": "NotRequired"},
                                 {"resourceName": "memory", "restartPolicy": "RestartContainer"}]}]}),
    );
    let created = post(&client, PODS, ok)
        .await
        .expect("valid resize policies");
    assert_eq!(
        created["spec"]["containers"][0]["resizePolicy"][1]["restartPolicy"],
        "RestartContainer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_containers_may_not_set_workload_fields() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let got = refused(
        &client,
        PODS,
        pod(
            "debugged",
            json!({"containers": [{"name": "app", "image": "nginx:1.27 "}],
                "volumes": [{"name": "data", "emptyDir": {}}],
                "ephemeralContainers": [{"name": "debug", "image": "busybox:1.36",
                    "targetContainerName": "gone", "stdin": true, "tty": true,
                    "ports": [{"containerPort": 8080}],
                    "resources": {"limits": {"cpu": "100m"}},
                    "restartPolicy": "Always",
                    "readinessProbe": {"tcpSocket": {"port": 8080}},
                    "lifecycle": {"preStop": {"exec": {"command": ["true"]}}},
                    "volumeMounts": [{"name": "data", "mountPath": "/data", "subPath": "x"}]},
                    {"name": "app", "image": "busybox:1.36"}]}),
        ),
    )
    .await;
    let e = "spec.ephemeralContainers";
    let msg = "Forbidden: cannot be set for an Ephemeral Container";
    assert_eq!(
        got,
        [
            format!("{e}[0].targetContainerName: Not found: \"gone\""),
            format!("{e}[0].ports: {msg}"),
            format!("{e}[0].resources: {msg}"),
            format!("{e}[0].restartPolicy: {msg}"),
            format!("{e}[0].readinessProbe: {msg}"),
            format!("{e}[0].lifecycle: {msg}"),
            format!("{e}[0].volumeMounts[0].subPath: {msg}"),
            format!("{e}[1].name: Duplicate value: \"app\""),
            "spec.containers[0].image: Invalid value: \"nginx:1.27 \": must not have leading or trailing whitespace".to_string(),
            format!("{e}: Forbidden: cannot be set on create"),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_level_resources_are_dropped_with_v1_33_default_gates() {
    let t = TestServer::start().await;
    let client = t.client().await;
    // Invalid as pod-level resources would be (limit below the container's), and yet
    // accepted: the field is dropped before validation, as upstream does with the gate off.
    let created = post(
        &client,
        PODS,
        pod(
            "pod-resources",
            json!({"resources": {"limits": {"cpu": "100m"}, "claims": [{"name": "gpu"}]},
                "containers": [{"name": "app", "image": "busybox:1.36",
                    "resources": {"limits": {"cpu": "1"}}}]}),
        ),
    )
    .await
    .expect("created");
    assert!(created["spec"].get("resources").is_none(), "{created}");
    assert_eq!(
        created["spec"]["containers"][0]["resources"]["requests"]["cpu"],
        "1"
    );
    // Updates drop it too, and pod templates never keep it.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let patched = pods
        .patch(
            "pod-resources",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"resources": {"limits": {"cpu": "2"}}}})),
        )
        .await
        .expect("patched");
    assert!(patched.spec.expect("spec").resources.is_none());
    let out = t
        .kubectl_stdin(
            &["create", "-f", "-", "-o", "json"],
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n\
             \x20 selector: {matchLabels: {app: web}}\n  template:\n\
             \x20   metadata: {labels: {app: web}}\n    spec:\n\
             \x20     resources: {limits: {cpu: 500m}}\n\
             \x20     containers: [{name: web, image: nginx:1.27}]\n",
        )
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d: Value = serde_json::from_slice(&out.stdout).expect("json");
    let spec = &d["spec"]["template"]["spec"];
    assert!(spec.get("resources").is_none(), "{spec}");
    // `enableServiceLinks` is a pod's default, not a template's.
    assert!(spec.get("enableServiceLinks").is_none(), "{spec}");
    assert_eq!(created["spec"]["enableServiceLinks"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_controllers_and_endpoints_are_defaulted_as_upstream() {
    let t = TestServer::start().await;
    let client = t.client().await;
    // The template's labels become the selector and the controller's labels.
    let out = t
        .kubectl_stdin(
            &["create", "-f", "-"],
            "apiVersion: v1\nkind: ReplicationController\nmetadata: {name: web}\nspec:\n\
             \x20 replicas: 0\n  template:\n    metadata: {labels: {app: web, tier: front}}\n\
             \x20   spec: {containers: [{name: web, image: nginx:1.27}]}\n",
        )
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rcs: Api<ReplicationController> = Api::namespaced(client.clone(), "default");
    let rc = serde_json::to_value(rcs.get("web").await.expect("rc")).expect("json");
    assert_eq!(
        rc["spec"]["selector"],
        json!({"app": "web", "tier": "front"})
    );
    assert_eq!(
        rc["metadata"]["labels"],
        json!({"app": "web", "tier": "front"})
    );
    assert!(rc["spec"].get("minReadySeconds").is_none(), "{rc}");

    // activeDeadlineSeconds is Forbidden in a controller's template.
    let got = refused(
        &client,
        "/api/v1/namespaces/default/replicationcontrollers",
        json!({"apiVersion": "v1", "kind": "ReplicationController", "metadata": {"name": "ads"},
            "spec": {"replicas": 0, "template": {"metadata": {"labels": {"app": "ads"}},
                "spec": {"activeDeadlineSeconds": 30,
                    "containers": [{"name": "c", "image": "busybox:1.36"}]}}}}),
    )
    .await;
    assert_eq!(
        got,
        [
            "spec.template.spec.activeDeadlineSeconds: Forbidden: activeDeadlineSeconds in ReplicationController is not Supported"
        ]
    );
    let status = common::api_status(
        post(
            &client,
            "/api/v1/namespaces/default/replicationcontrollers",
            json!({"apiVersion": "v1", "kind": "ReplicationController", "metadata": {"name": "ads"},
                "spec": {"template": {"metadata": {"labels": {"app": "ads"}},
                    "spec": {"activeDeadlineSeconds": 30,
                        "containers": [{"name": "c", "image": "busybox:1.36"}]}}}}),
        )
        .await
        .expect_err("refused"),
    );
    let details = status.details.expect("details");
    assert_eq!(details.causes[0].reason, "FieldValueForbidden");

    // Endpoints ports without a protocol are TCP.
    let created = post(
        &client,
        "/api/v1/namespaces/default/endpoints",
        json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "ext"},
            "subsets": [{"addresses": [{"ip": "10.1.2.3"}],
                "ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]}]}),
    )
    .await
    .expect("endpoints");
    assert_eq!(created["subsets"][0]["ports"][0]["protocol"], "TCP");
    let eps: Api<Endpoints> = Api::namespaced(client, "default");
    let stored = eps.get("ext").await.expect("endpoints");
    let ports = stored.subsets.expect("subsets")[0]
        .ports
        .clone()
        .expect("ports");
    assert_eq!(ports[0].protocol.as_deref(), Some("TCP"));
    assert_eq!(ports[1].protocol.as_deref(), Some("UDP"));
}
