//! Upstream v1.33's validation of built-in objects (`ValidateObjectMeta`, `ValidatePod`,
//! `ValidatePodUpdate`, ConfigMaps and Secrets) through kubectl (its stderr, as users see it)
//! and kube-rs (422 `Invalid` with upstream's causes); typical manifests are still accepted.

mod common;

use common::{TestServer, invalid_causes};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

fn stderr(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "kubectl succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const GOOD_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web, app.kubernetes.io/part-of: shop}
  annotations: {example.com/owner: team-a}
spec:
  initContainers:
  - name: init
    image: busybox:1.36
    command: [sh, -c, "true"]
  containers:
  - name: web
    image: nginx:1.27
    args: [--port, "80"]
    ports:
    - {name: http, containerPort: 80}
    - {containerPort: 9090, protocol: UDP}
    env:
    - {name: MODE, value: prod}
    - name: POD_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
    - name: SETTING
      valueFrom: {configMapKeyRef: {name: settings, key: setting.value, optional: true}}
    envFrom:
    - configMapRef: {name: settings, optional: true}
    volumeMounts:
    - {name: data, mountPath: /data}
    - {name: config, mountPath: /etc/config, readOnly: true}
    resources:
      requests: {cpu: 100m, memory: 64Mi}
      limits: {cpu: "1", memory: 128Mi}
    livenessProbe:
      httpGet: {path: /healthz, port: http}
    readinessProbe:
      tcpSocket: {port: 80}
      periodSeconds: 5
    lifecycle:
      preStop:
        exec: {command: [sleep, "1"]}
  volumes:
  - name: data
    emptyDir: {}
  - name: config
    configMap: {name: settings, optional: true}
  nodeSelector: {kubernetes.io/os: linux}
  tolerations:
  - {key: dedicated, operator: Equal, value: web, effect: NoSchedule}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_pods_are_refused_as_upstream() {
    let t = TestServer::start().await;
    let pods: Api<Pod> = Api::namespaced(t.client().await, "default");

    // The task's example: a container named C_bad with no image.
    let bad: Pod = serde_json::from_value(json!({
        "metadata": {"name": "bad"},
        "spec": {"containers": [{"name": "C_bad", "image": ""}]},
    }))
    .expect("pod");
    let got = invalid_causes(
        pods.create(&PostParams::default(), &bad)
            .await
            .expect_err("refused"),
    );
    assert_eq!(
        got,
        [
            "spec.containers[0].name: Invalid value: \"C_bad\": a lowercase RFC 1123 label must \
             consist of lower case alphanumeric characters or '-', and must start and end with \
             an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for \
             validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
            "spec.containers[0].image: Required value",
        ]
    );

    // Ports, env, mounts, resources, probes, volumes, policies, tolerations.
    let bad: Pod = serde_json::from_value(json!({
        "metadata": {"name": "bad"},
        "spec": {
            "containers": [{
                "name": "a", "image": "x",
                "ports": [{"containerPort": 0}, {"name": "http", "containerPort": 80, "protocol": "HTTP"}],
                "env": [{"name": "A=B", "value": "1"}],
                "volumeMounts": [{"name": "missing", "mountPath": "/m"}],
                "resources": {"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}},
                "livenessProbe": {"exec": {"command": ["true"]}, "httpGet": {"port": 80}},
                "imagePullPolicy": "Sometimes",
            }, {"name": "a", "image": "x"}],
            "volumes": [{"name": "v", "emptyDir": {}, "hostPath": {"path": "/v"}}],
            "restartPolicy": "Sometimes",
            "tolerations": [{"key": "k", "operator": "Exists", "value": "v"}],
        },
    }))
    .expect("pod");
    let got = invalid_causes(
        pods.create(&PostParams::default(), &bad)
            .await
            .expect_err("refused"),
    );
    let want = [
        "spec.volumes[0].hostPath: Forbidden: may not specify more than 1 volume type",
        "spec.containers[0].ports[0].containerPort: Required value",
        "spec.containers[0].ports[1].protocol: Unsupported value: \"HTTP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
        "spec.containers[0].env[0].name: Invalid value: \"A=B\": a valid environment variable name must consist only of printable ASCII characters other than '='",
        "spec.containers[0].volumeMounts[0].name: Not found: \"missing\"",
        "spec.containers[0].imagePullPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"IfNotPresent\", \"Never\"",
        "spec.containers[0].resources.requests: Invalid value: \"2Gi\": must be less than or equal to memory limit of 1Gi",
        "spec.containers[0].livenessProbe.httpGet: Forbidden: may not specify more than 1 handler type",
        "spec.containers[1].name: Duplicate value: \"a\"",
        "spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\"",
    ];
    for w in want {
        assert!(got.iter().any(|g| g == w), "missing {w:?} in {got:#?}");
    }
    assert!(
        got.iter().any(
            |g| g.starts_with("spec.tolerations[0].operator: Invalid value: ")
                && g.ends_with("value must be empty when `operator` is 'Exists'")
        ),
        "{got:#?}"
    );

    // kubectl shows the message as upstream's: a bad label on a pod.
    let out = t
        .kubectl_stdin(
            &["apply", "-f", "-"],
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: labelled\n  labels: {\"bad label\": x}\n\
             spec:\n  containers:\n  - {name: c, image: nginx}\n",
        )
        .await;
    let err = stderr(&out);
    assert!(
        err.contains(
            "The Pod \"labelled\" is invalid: metadata.labels: Invalid value: \"bad label\": \
             name part must consist of alphanumeric characters, '-', '_' or '.', and must start \
             and end with an alphanumeric character"
        ),
        "{err}"
    );

    // A typical pod manifest is accepted, and nothing was created by the refusals.
    let out = t.kubectl_stdin(&["apply", "-f", "-"], GOOD_POD).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names: Vec<String> = pods
        .list(&Default::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(names, ["web"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_updates_may_change_only_what_upstream_allows() {
    let t = TestServer::start().await;
    let pods: Api<Pod> = Api::namespaced(t.client().await, "default");
    // Without tolerations in the manifest: kubectl apply replaces the whole list (no merge
    // key) with the manifest's, dropping the ones admission added, which upstream refuses too.
    let manifest = GOOD_POD.replace(
        "  tolerations:\n  - {key: dedicated, operator: Equal, value: web, effect: NoSchedule}\n",
        "",
    );
    let out = t.kubectl_stdin(&["apply", "-f", "-"], &manifest).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A changed image, a new label and a deadline are allowed.
    let changed = manifest
        .replace("image: nginx:1.27", "image: nginx:1.28")
        .replace("app: web,", "app: web, tier: front,")
        .replace(
            "  nodeSelector:",
            "  activeDeadlineSeconds: 600\n  nodeSelector:",
        );
    let out = t.kubectl_stdin(&["apply", "-f", "-"], &changed).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut pod = pods.get("web").await.expect("get");
    let spec = pod.spec.as_mut().expect("spec");
    assert_eq!(spec.containers[0].image.as_deref(), Some("nginx:1.28"));
    assert_eq!(spec.active_deadline_seconds, Some(600));
    // An added toleration (kubectl apply replaces the list, dropping the ones admission
    // added: refused, as upstream), and a changed `tolerationSeconds`.
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for tol in tolerations.iter_mut() {
        if tol.toleration_seconds.is_some() {
            tol.toleration_seconds = Some(60);
        }
    }
    tolerations.push(
        serde_json::from_value(json!({"key": "extra", "operator": "Exists"})).expect("toleration"),
    );
    pods.replace("web", &PostParams::default(), &pod)
        .await
        .expect("toleration added");

    // Changed args: upstream's Forbidden on `spec`, as kubectl prints it.
    let args = changed.replace("args: [--port, \"80\"]", "args: [--port, \"81\"]");
    let err = stderr(&t.kubectl_stdin(&["apply", "-f", "-"], &args).await);
    assert!(
        err.contains(
            "The Pod \"web\" is invalid: spec: Forbidden: pod updates may not change fields \
             other than `spec.containers[*].image`,`spec.initContainers[*].image`,\
             `spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing \
             tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it \
             was previously negative)"
        ),
        "{err}"
    );

    // A raised deadline, a removed container, an emptied image (kube-rs, JSON merge patch).
    let patch = |v: serde_json::Value| Patch::Merge(v);
    let got = invalid_causes(
        pods.patch(
            "web",
            &PatchParams::default(),
            &patch(json!({"spec": {"activeDeadlineSeconds": 900}})),
        )
        .await
        .expect_err("raised deadline"),
    );
    assert_eq!(
        got,
        [
            "spec.activeDeadlineSeconds: Invalid value: 900: must be less than or equal to previous value"
        ]
    );
    let got = invalid_causes(
        pods.patch(
            "web",
            &PatchParams::default(),
            &patch(json!({"spec": {"containers": [{"name": "web", "image": "nginx"}, {"name": "two", "image": "x"}]}})),
        )
        .await
        .expect_err("added container"),
    );
    assert_eq!(
        got,
        ["spec.containers: Forbidden: pod updates may not add or remove containers"]
    );
    // Removing a toleration.
    let got = invalid_causes(
        pods.patch(
            "web",
            &PatchParams::default(),
            &patch(json!({"spec": {"tolerations": []}})),
        )
        .await
        .expect_err("removed toleration"),
    );
    assert_eq!(
        got,
        [
            "spec.tolerations: Forbidden: existing toleration can not be modified except its tolerationSeconds"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_metadata_is_validated_on_every_built_in_object() {
    let t = TestServer::start().await;
    let cms: Api<ConfigMap> = Api::namespaced(t.client().await, "default");
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {
            "name": "meta",
            "labels": {"ok": "bad value!"},
            "annotations": {"a b": "x"},
            "finalizers": ["example.com/bad finalizer"],
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "o", "uid": ""}],
        },
    }))
    .expect("configmap");
    let got = invalid_causes(
        cms.create(&PostParams::default(), &cm)
            .await
            .expect_err("refused"),
    );
    // The finalizer's name twice: apimachinery's check, then core's per-index one.
    assert_eq!(got.len(), 5, "{got:#?}");
    assert!(got[4].starts_with(
        "metadata.finalizers[0]: Invalid value: \"example.com/bad finalizer\": name part must"
    ));
    assert!(got[0].starts_with(
        "metadata.labels: Invalid value: \"bad value!\": a valid label must be an empty string"
    ));
    assert!(
        got[1].starts_with("metadata.annotations: Invalid value: \"a b\": name part must consist")
    );
    assert_eq!(
        got[2],
        "metadata.ownerReferences.uid: Invalid value: \"\": uid must not be empty"
    );
    assert!(got[3].starts_with(
        "metadata.finalizers: Invalid value: \"example.com/bad finalizer\": name part must consist"
    ));

    // Too many annotation bytes.
    let big = "x".repeat(256 * 1024);
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "big", "annotations": {"a": big}},
    }))
    .expect("configmap");
    let got = invalid_causes(
        cms.create(&PostParams::default(), &cm)
            .await
            .expect_err("too big"),
    );
    assert_eq!(
        got,
        ["metadata.annotations: Too long: may not be more than 262144 bytes"]
    );

    // No new finalizers on an object being deleted.
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "held", "finalizers": ["example.com/hold"]},
    }))
    .expect("configmap");
    cms.create(&PostParams::default(), &cm)
        .await
        .expect("created");
    cms.delete("held", &DeleteParams::default())
        .await
        .expect("deleting");
    let got = invalid_causes(
        cms.patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"finalizers": ["example.com/hold", "example.com/more"]}}),
            ),
        )
        .await
        .expect_err("new finalizer"),
    );
    assert_eq!(
        got,
        [
            "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{\"example.com/more\"}"
        ]
    );
    // Removing it is fine (and deletes the object).
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("finalizer removed");

    // Managed fields a client writes are checked once the field manager has kept them.
    t.kubectl_ok(&["create", "configmap", "plain-mf", "--from-literal=k=v"])
        .await;
    let got = invalid_causes(
        cms.patch(
            "plain-mf",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"managedFields": [{
                "manager": "m".repeat(129),
                "operation": "Update",
                "apiVersion": "v1",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:data": {"f:k": {}}},
            }]}})),
        )
        .await
        .expect_err("long manager"),
    );
    assert_eq!(
        got,
        ["metadata.managedFields[0].manager: Too long: may not be more than 128 bytes"]
    );

    // A label patched in with kubectl (its `label` command checks keys itself).
    t.kubectl_ok(&["create", "configmap", "plain"]).await;
    let err = stderr(
        &t.kubectl(&[
            "patch",
            "configmap",
            "plain",
            "--type=merge",
            "-p",
            r#"{"metadata":{"labels":{"a/b/c":"x"}}}"#,
        ])
        .await,
    );
    assert!(
        err.contains("metadata.labels: Invalid value: \"a/b/c\""),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_maps_and_secrets_are_validated_as_upstream() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client, "default");

    // A bad data key through kubectl apply (kubectl create configmap checks keys itself).
    let err = stderr(
        &t.kubectl_stdin(
            &["apply", "-f", "-"],
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: keys}\ndata: {\"bad key!\": v}\n",
        )
        .await,
    );
    assert!(
        err.contains(
            "The ConfigMap \"keys\" is invalid: data[bad key!]: Invalid value: \"bad key!\": a \
             valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. \
             'key.name',  or 'KEY_NAME',  or 'key_name', regex used for validation is \
             '[-._a-zA-Z0-9]+')"
        ),
        "{err}"
    );
    // A key in both data and binaryData.
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "both"}, "data": {"k": "v"}, "binaryData": {"k": "dg=="},
    }))
    .expect("configmap");
    assert_eq!(
        invalid_causes(
            cms.create(&PostParams::default(), &cm)
                .await
                .expect_err("both")
        ),
        [
            "data[k]: Invalid value: \"k\": duplicate of key present in binaryData",
            "binaryData[k]: Invalid value: \"k\": duplicate of key present in data",
        ]
    );

    // Immutable ConfigMaps keep their data and stay immutable.
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "frozen"}, "data": {"k": "v"}, "immutable": true,
    }))
    .expect("configmap");
    cms.create(&PostParams::default(), &cm)
        .await
        .expect("created");
    assert_eq!(
        invalid_causes(
            cms.patch(
                "frozen",
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {"k": "w"}}))
            )
            .await
            .expect_err("changed data"),
        ),
        ["data: Forbidden: field is immutable when `immutable` is set"]
    );
    let err = stderr(
        &t.kubectl(&[
            "patch",
            "configmap",
            "frozen",
            "-p",
            r#"{"immutable":false}"#,
        ])
        .await,
    );
    assert!(
        err.contains("immutable: Forbidden: field is immutable when `immutable` is set"),
        "{err}"
    );
    // Labels may still change.
    cms.patch(
        "frozen",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
    )
    .await
    .expect("labels change");

    // Secret types.
    let secret = |v: serde_json::Value| -> Secret { serde_json::from_value(v).expect("secret") };
    assert_eq!(
        invalid_causes(
            secrets
                .create(
                    &PostParams::default(),
                    &secret(
                        json!({"metadata": {"name": "tls"}, "type": "kubernetes.io/tls",
                                   "data": {"tls.crt": ""}})
                    ),
                )
                .await
                .expect_err("no key"),
        ),
        ["data[tls.key]: Required value"]
    );
    let err = stderr(
        &t.kubectl(&[
            "create",
            "secret",
            "generic",
            "docker",
            "--type=kubernetes.io/dockerconfigjson",
            "--from-literal=.dockerconfigjson=[1]",
        ])
        .await,
    );
    assert!(
        err.contains(
            "data[.dockerconfigjson]: Invalid value: \"<secret contents redacted>\": json: \
             cannot unmarshal array into Go value of type map[string]interface {}"
        ),
        "{err}"
    );
    assert_eq!(
        invalid_causes(
            secrets
                .create(
                    &PostParams::default(),
                    &secret(
                        json!({"metadata": {"name": "basic"}, "type": "kubernetes.io/basic-auth"})
                    ),
                )
                .await
                .expect_err("no user"),
        ),
        [
            "data[username]: Required value",
            "data[password]: Required value"
        ]
    );
    // The type never changes.
    secrets
        .create(
            &PostParams::default(),
            &secret(json!({"metadata": {"name": "plain"}, "stringData": {"a": "b"}})),
        )
        .await
        .expect("created");
    assert_eq!(
        invalid_causes(
            secrets
                .patch(
                    "plain",
                    &PatchParams::default(),
                    &Patch::Merge(
                        json!({"type": "kubernetes.io/basic-auth", "data": {"username": "dQ=="}})
                    ),
                )
                .await
                .expect_err("type changed"),
        ),
        ["type: Invalid value: \"kubernetes.io/basic-auth\": field is immutable"]
    );
    // Typical ones pass.
    t.kubectl_ok(&[
        "create",
        "secret",
        "docker-registry",
        "regcred",
        "--docker-server=r.example.com",
        "--docker-username=u",
        "--docker-password=p",
    ])
    .await;
    t.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "g",
        "--from-literal=user.name=x",
    ])
    .await;
    t.kubectl_ok(&[
        "create",
        "configmap",
        "c",
        "--from-literal=a.b=1",
        "--from-literal=C_D=2",
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_namespaces_and_pod_templates_are_validated() {
    let t = TestServer::start().await;
    // A claim without access modes or a storage request.
    let err = stderr(
        &t.kubectl_stdin(
            &["apply", "-f", "-"],
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\nspec: {}\n",
        )
        .await,
    );
    assert!(
        err.contains(
            "The PersistentVolumeClaim \"data\" is invalid: \n* spec.accessModes: Required \
             value: at least 1 access mode is required\n* spec.resources[storage]: Required value"
        ),
        "{err}"
    );
    t.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\nspec:\n  \
         accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n",
    )
    .await;
    t.kubectl_ok(&["get", "pvc", "data"]).await;

    // A namespace finalizer that is neither standard nor qualified.
    let err = stderr(
        &t.kubectl_stdin(
            &["apply", "-f", "-"],
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: fin}\nspec: {finalizers: [custom]}\n",
        )
        .await,
    );
    assert!(
        err.contains(
            "spec.finalizers: Invalid value: \"custom\": name is neither a standard finalizer \
             name nor is it fully qualified"
        ),
        "{err}"
    );

    // A replication controller's template: the pod spec rules, restartPolicy Always.
    let err = stderr(
        &t.kubectl_stdin(
            &["apply", "-f", "-"],
            "apiVersion: v1\nkind: ReplicationController\nmetadata: {name: rc}\nspec:\n  \
             selector: {app: rc}\n  template:\n    metadata: {labels: {app: rc}}\n    spec:\n      \
             restartPolicy: OnFailure\n      containers: [{name: C_bad, image: nginx}]\n",
        )
        .await,
    );
    assert!(
        err.contains("spec.template.spec.containers[0].name: Invalid value: \"C_bad\""),
        "{err}"
    );
    assert!(
        err.contains(
            "spec.template.spec.restartPolicy: Unsupported value: \"OnFailure\": supported \
             values: \"Always\""
        ),
        "{err}"
    );
    let err = stderr(
        &t.kubectl_stdin(
            &["apply", "-f", "-"],
            "apiVersion: v1\nkind: PodTemplate\nmetadata: {name: pt}\ntemplate:\n  spec:\n    \
             containers: [{name: c, image: \"\"}]\n",
        )
        .await,
    );
    assert!(
        err.contains(
            "The PodTemplate \"pt\" is invalid: template.spec.containers[0].image: Required value"
        ),
        "{err}"
    );
}

/// RBAC objects as upstream validates them: rules need verbs, groups and resources (or
/// non-resource URLs, cluster-wide only); bindings a valid role reference that never changes,
/// and subjects of the known kinds (a user's or group's `apiGroup` is defaulted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_objects_are_validated_as_upstream() {
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let t = TestServer::start().await;
    let client = t.client().await;
    let roles: Api<Role> = Api::namespaced(client.clone(), "default");
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "bad"},
        "rules": [{"apiGroups": [""], "resources": ["pods"]},
                  {"verbs": ["get"], "nonResourceURLs": ["/healthz"]}],
    }))
    .expect("role");
    let err = roles
        .create(&PostParams::default(), &role)
        .await
        .expect_err("invalid role");
    assert_eq!(
        invalid_causes(err),
        [
            "rules[0].verbs: Required value: verbs must contain at least one value",
            "rules[1].nonResourceURLs: Invalid value: []string{\"/healthz\"}: namespaced rules cannot apply to non-resource URLs",
        ]
    );

    // A binding written as people write them (no apiGroup on the user) is accepted...
    let binding = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: readers, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}
subjects:
- {kind: User, name: alice}
- {kind: ServiceAccount, name: default, namespace: default}
"#;
    let out = t.kubectl_stdin(&["apply", "-f", "-"], binding).await;
    assert!(out.status.success(), "{out:?}");
    let bindings: Api<RoleBinding> = Api::namespaced(client, "default");
    let stored = bindings.get("readers").await.expect("stored");
    let subjects = stored.subjects.expect("subjects");
    assert_eq!(
        subjects[0].api_group.as_deref(),
        Some("rbac.authorization.k8s.io")
    );
    // ...and its role reference never changes, as kubectl users see it.
    let out = t
        .kubectl_stdin(
            &["apply", "-f", "-"],
            &binding.replace("name: view}", "name: edit}"),
        )
        .await;
    assert!(
        stderr(&out).contains(
            "roleRef: Invalid value: rbac.RoleRef{APIGroup:\"rbac.authorization.k8s.io\", Kind:\"ClusterRole\", Name:\"edit\"}: cannot change roleRef"
        ),
        "{}",
        stderr(&out)
    );
}

/// Ingresses as upstream validates them, as a kubectl user sees it; a typical one passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingresses_are_validated_as_upstream() {
    let t = TestServer::start().await;
    let good = r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web, namespace: default}
spec:
  ingressClassName: traefik
  tls: [{hosts: [web.example.com], secretName: web-tls}]
  rules:
  - host: web.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
"#;
    let out = t.kubectl_stdin(&["apply", "-f", "-"], good).await;
    assert!(out.status.success(), "{out:?}");
    let bad = good
        .replace("host: web.example.com", "host: 10.0.0.1")
        .replace("path: /, pathType: Prefix,", "path: /,")
        .replace("name: web, namespace", "name: bad, namespace");
    let out = t.kubectl_stdin(&["apply", "-f", "-"], &bad).await;
    let err = stderr(&out);
    assert!(
        err.contains(
            "The Ingress \"bad\" is invalid: \n\
             * spec.rules[0].host: Invalid value: \"10.0.0.1\": must be a DNS name, not an IP address\n\
             * spec.rules[0].http.paths[0].pathType: Required value: pathType must be specified"
        ),
        "{err}"
    );
}

/// A pod from a JSON spec (named `name`).
fn pod(name: &str, spec: serde_json::Value) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).expect("pod")
}

/// The causes of creating `p`, which must be refused with 422.
async fn refused(pods: &Api<Pod>, p: &Pod) -> Vec<String> {
    invalid_causes(
        pods.create(&PostParams::default(), p)
            .await
            .expect_err("refused"),
    )
}

fn assert_has(got: &[String], want: &[&str]) {
    for w in want {
        assert!(got.iter().any(|g| g == w), "missing {w:?} in {got:#?}");
    }
}

/// The restricted Pod Security profile's pod: every security field set as the profile asks.
const RESTRICTED_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: restricted}
spec:
  securityContext:
    runAsNonRoot: true
    runAsUser: 1000
    runAsGroup: 3000
    fsGroup: 2000
    fsGroupChangePolicy: OnRootMismatch
    supplementalGroups: [4000]
    seccompProfile: {type: RuntimeDefault}
    sysctls:
    - {name: net.ipv4.ip_unprivileged_port_start, value: "0"}
  containers:
  - name: app
    image: nginx:1.27
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}
      seccompProfile: {type: RuntimeDefault}
      appArmorProfile: {type: RuntimeDefault}
"#;

/// Pod and container security contexts, sysctls, `hostUsers` and `os` as upstream checks them;
/// the restricted profile's pod is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_security_contexts_are_validated_as_upstream() {
    let t = TestServer::start().await;
    let pods: Api<Pod> = Api::namespaced(t.client().await, "default");
    let bad = pod(
        "bad",
        json!({
            "hostNetwork": true,
            "securityContext": {
                "runAsUser": -1,
                "fsGroupChangePolicy": "Sometimes",
                "supplementalGroupsPolicy": "Loose",
                "seccompProfile": {"type": "Localhost"},
                "sysctls": [{"name": "net.core.somaxconn", "value": "1"},
                            {"name": "kernel.msgmax", "value": "1"},
                            {"name": "kernel.msgmax", "value": "2"}],
            },
            "containers": [{
                "name": "c", "image": "nginx",
                "securityContext": {
                    "allowPrivilegeEscalation": false, "privileged": true,
                    "procMount": "Unmasked",
                    "appArmorProfile": {"type": "Custom"},
                },
            }],
            "os": {"name": "plan9"},
        }),
    );
    let got = refused(&pods, &bad).await;
    assert_has(
        &got,
        &[
            "spec.securityContext.runAsUser: Invalid value: -1: must be between 0 and 2147483647, inclusive",
            "spec.securityContext.sysctls[0].name: Invalid value: \"net.core.somaxconn\": may not be specified when 'hostNetwork' is true",
            "spec.securityContext.sysctls[2].name: Duplicate value: \"kernel.msgmax\"",
            "spec.securityContext.fsGroupChangePolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnRootMismatch\"",
            "spec.securityContext.supplementalGroupsPolicy: Unsupported value: \"Loose\": supported values: \"Merge\", \"Strict\"",
            "spec.securityContext.seccompProfile.localhostProfile: Required value: must be set when seccomp type is Localhost",
            "spec.containers[0].securityContext.procMount: Invalid value: \"Unmasked\": `hostUsers` must be false to use `Unmasked`",
            "spec.containers[0].securityContext.appArmorProfile.type: Unsupported value: \"Custom\": supported values: \"Localhost\", \"RuntimeDefault\", \"Unconfined\"",
            "spec.os: Unsupported value: \"plan9\": supported values: \"linux\", \"windows\"",
        ],
    );
    assert!(
        got.iter().any(
            |g| g.starts_with("spec.containers[0].securityContext: Invalid value: ")
                && g.ends_with(
                    ": cannot set `allowPrivilegeEscalation` to false and `privileged` to true"
                )
        ),
        "{got:#?}"
    );

    // A Windows pod may not set Linux fields; kubectl shows upstream's message.
    let windows = RESTRICTED_POD
        .replace("name: restricted", "name: win")
        .replace(
            "  securityContext:\n    runAsNonRoot",
            "  os: {name: windows}\n  securityContext:\n    runAsNonRoot",
        );
    let out = t.kubectl_stdin(&["apply", "-f", "-"], &windows).await;
    let err = stderr(&out);
    for line in [
        "spec.securityContext.seccompProfile: Forbidden: cannot be set for a windows pod",
        "spec.securityContext.runAsUser: Forbidden: cannot be set for a windows pod",
        "spec.containers[0].securityContext.capabilities: Forbidden: cannot be set for a windows pod",
    ] {
        assert!(err.contains(line), "{line} not in {err}");
    }

    let out = t.kubectl_stdin(&["apply", "-f", "-"], RESTRICTED_POD).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Affinity and topology spread constraints as upstream checks them; the documentation's
/// pod with node affinity, pod anti-affinity and a spread constraint is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affinity_and_spread_constraints_are_validated_as_upstream() {
    let t = TestServer::start().await;
    let pods: Api<Pod> = Api::namespaced(t.client().await, "default");
    let bad = pod(
        "bad",
        json!({
            "containers": [{"name": "c", "image": "nginx"}],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{
                        "matchExpressions": [{"key": "zone", "operator": "In"},
                                             {"key": "cores", "operator": "Gt", "values": ["1", "2"]}],
                        "matchFields": [{"key": "metadata.labels", "operator": "In", "values": ["n1"]}],
                    }]},
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {"weight": 101, "preference": {"matchExpressions": [
                            {"key": "disk", "operator": "Exists"}]}}],
                },
                "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": ""}]},
            },
            "topologySpreadConstraints": [
                {"maxSkew": 0, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway",
                 "minDomains": 2},
                {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway",
                 "labelSelector": {"matchLabels": {"app": "web"}}},
                {"maxSkew": 1, "topologyKey": "", "whenUnsatisfiable": "Never",
                 "nodeTaintsPolicy": "Sometimes"},
            ],
        }),
    );
    let got = refused(&pods, &bad).await;
    let term = "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0]";
    let tsc = "spec.topologySpreadConstraints";
    assert_has(
        &got,
        &[
            &format!(
                "{term}.matchExpressions[0].values: Required value: must be specified when `operator` is 'In' or 'NotIn'"
            ),
            &format!(
                "{term}.matchExpressions[1].values: Required value: must be specified single value when `operator` is 'Lt' or 'Gt'"
            ),
            &format!(
                "{term}.matchFields[0].key: Invalid value: \"metadata.labels\": not a valid field selector key"
            ),
            "spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight: Invalid value: 101: must be in the range 1-100",
            "spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey: Required value: can not be empty",
            &format!("{tsc}[0].maxSkew: Invalid value: 0: must be greater than zero"),
            &format!(
                "{tsc}[0].{{topologyKey, whenUnsatisfiable}}: Duplicate value: \"{{zone, ScheduleAnyway}}\""
            ),
            &format!(
                "{tsc}[0].minDomains: Invalid value: 2: can only use minDomains if whenUnsatisfiable=DoNotSchedule, not ScheduleAnyway"
            ),
            &format!("{tsc}[2].topologyKey: Required value: can not be empty"),
            &format!(
                "{tsc}[2].whenUnsatisfiable: Unsupported value: \"Never\": supported values: \"DoNotSchedule\", \"ScheduleAnyway\""
            ),
            &format!(
                "{tsc}[2].nodeTaintsPolicy: Unsupported value: \"Sometimes\": supported values: \"Honor\", \"Ignore\""
            ),
        ],
    );

    let good = r#"
apiVersion: v1
kind: Pod
metadata: {name: with-affinity, labels: {app: web}}
spec:
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms:
        - matchExpressions:
          - {key: topology.kubernetes.io/zone, operator: In, values: [antarctica-east1, antarctica-west1]}
      preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 1
        preference:
          matchExpressions:
          - {key: another-node-label-key, operator: In, values: [another-node-label-value]}
    podAntiAffinity:
      preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          labelSelector:
            matchExpressions:
            - {key: app, operator: In, values: [web]}
          topologyKey: kubernetes.io/hostname
  topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: DoNotSchedule
    minDomains: 2
    nodeAffinityPolicy: Honor
    labelSelector: {matchLabels: {app: web}}
  containers:
  - {name: web, image: registry.k8s.io/pause:3.8}
"#;
    let out = t.kubectl_stdin(&["apply", "-f", "-"], good).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // kubectl shows the refusal as upstream words it.
    let out = t
        .kubectl_stdin(
            &["apply", "-f", "-"],
            &good
                .replace("name: with-affinity", "name: bad-weight")
                .replace("weight: 100", "weight: 0"),
        )
        .await;
    let err = stderr(&out);
    assert!(
        err.contains(
            "The Pod \"bad-weight\" is invalid: spec.affinity.podAntiAffinity.\
             preferredDuringSchedulingIgnoredDuringExecution[0].weight: Invalid value: 0: \
             must be in the range 1-100"
        ),
        "{err}"
    );
}

/// DNS config, host aliases, gates, env downward API references and volume sources as
/// upstream checks them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_gates_env_references_and_volumes_are_validated_as_upstream() {
    let t = TestServer::start().await;
    let pods: Api<Pod> = Api::namespaced(t.client().await, "default");
    let got = refused(
        &pods,
        &pod(
            "dns",
            json!({"dnsPolicy": "None", "containers": [{"name": "c", "image": "nginx"}]}),
        ),
    )
    .await;
    assert_eq!(
        got,
        ["spec.dnsConfig: Required value: must provide `dnsConfig` when `dnsPolicy` is None"]
    );
    let bad = pod(
        "bad",
        json!({
            "nodeName": "node-1",
            "dnsConfig": {"nameservers": ["1.1.1.1", "8.8.8.8", "9.9.9.9", "nope"],
                          "options": [{"value": "2"}]},
            "hostAliases": [{"ip": "10.0.0.256", "hostnames": ["web.local"]}],
            "readinessGates": [{"conditionType": "bad type"}],
            "schedulingGates": [{"name": "example.com/wait"}, {"name": "example.com/wait"}],
            "containers": [{
                "name": "c", "image": "nginx",
                "env": [
                    {"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels"}}},
                    {"name": "B", "valueFrom": {"fieldRef": {"fieldPath": "spec.bogus"}}},
                    {"name": "C", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1Mi"}}},
                ],
            }],
            "volumes": [
                {"name": "host", "hostPath": {"path": "/var/../etc", "type": "Dir"}},
                {"name": "cm", "configMap": {"name": "c", "items": [{"key": "k", "path": "/abs"}]}},
                {"name": "nfs", "nfs": {"server": "nfs", "path": "exports"}},
                {"name": "token", "projected": {"sources": [
                    {"serviceAccountToken": {"path": "token", "expirationSeconds": 60}}]}},
                {"name": "api", "downwardAPI": {"items": [
                    {"path": "phase", "fieldRef": {"fieldPath": "status.phase"}}]}},
            ],
        }),
    );
    let got = refused(&pods, &bad).await;
    assert_has(
        &got,
        &[
            "spec.dnsConfig.nameservers: Invalid value: []string{\"1.1.1.1\", \"8.8.8.8\", \"9.9.9.9\", \"nope\"}: must not have more than 3 nameservers",
            "spec.dnsConfig.nameservers[3]: Invalid value: \"nope\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            "spec.dnsConfig.options[0]: Required value: must not be empty",
            "spec.hostAliases[0].ip: Invalid value: \"10.0.0.256\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            "spec.schedulingGates[1]: Duplicate value: \"example.com/wait\"",
            "spec.nodeName: Forbidden: cannot be set until all schedulingGates have been cleared",
            "spec.containers[0].env[0].valueFrom.fieldRef.fieldPath: Unsupported value: \"metadata.labels\": supported values: \"metadata.name\", \"metadata.namespace\", \"metadata.uid\", \"spec.nodeName\", \"spec.serviceAccountName\", \"status.hostIP\", \"status.hostIPs\", \"status.podIP\", \"status.podIPs\"",
            "spec.containers[0].env[1].valueFrom.fieldRef.fieldPath: Invalid value: \"spec.bogus\": error converting fieldPath: field label not supported: spec.bogus",
            "spec.containers[0].env[2].valueFrom.resourceFieldRef.divisor: Invalid value: \"limits.cpu\": only divisor's values 1m and 1 are supported with the cpu resource",
            "spec.volumes[0].hostPath.path: Invalid value: \"/var/../etc\": must not contain '..'",
            "spec.volumes[0].hostPath.type: Unsupported value: \"Dir\": supported values: \"\", \"BlockDevice\", \"CharDevice\", \"Directory\", \"DirectoryOrCreate\", \"File\", \"FileOrCreate\", \"Socket\"",
            "spec.volumes[1].configMap.items[0].path: Invalid value: \"/abs\": must be a relative path",
            "spec.volumes[2].nfs.path: Invalid value: \"exports\": must be an absolute path",
            "spec.volumes[3].projected.sources[0].serviceAccountToken.expirationSeconds: Invalid value: 60: may not specify a duration less than 10 minutes",
            "spec.volumes[4].downwardAPI.fieldRef.fieldPath: Unsupported value: \"status.phase\": supported values: \"metadata.annotations\", \"metadata.labels\", \"metadata.name\", \"metadata.namespace\", \"metadata.uid\"",
        ],
    );
    assert!(
        got.iter().any(|g| g.starts_with(
            "spec.readinessGates[0].conditionType: Invalid value: \"bad type\": name part must consist of"
        )),
        "{got:#?}"
    );

    // The same kinds of fields, valid, are accepted (with their defaults filled in).
    let good = r#"
apiVersion: v1
kind: Pod
metadata: {name: dns-and-volumes, labels: {app: web}}
spec:
  dnsPolicy: None
  dnsConfig:
    nameservers: [10.43.0.10]
    searches: [default.svc.cluster.local, svc.cluster.local., _srv.example.com]
    options: [{name: ndots, value: "2"}]
  hostAliases: [{ip: 127.0.0.1, hostnames: [foo.local, bar.local]}]
  readinessGates: [{conditionType: example.com/feature-1}]
  schedulingGates: [{name: example.com/quota}]
  containers:
  - name: c
    image: nginx
    env:
    - name: APP
      valueFrom: {fieldRef: {fieldPath: "metadata.labels['app']"}}
    - name: MEM
      valueFrom: {resourceFieldRef: {containerName: c, resource: limits.memory, divisor: 1Mi}}
    volumeMounts:
    - {name: info, mountPath: /etc/podinfo}
    - {name: token, mountPath: /var/run/token}
    - {name: host, mountPath: /host/log, readOnly: true, recursiveReadOnly: Enabled}
  volumes:
  - name: info
    downwardAPI:
      items:
      - {path: labels, fieldRef: {fieldPath: metadata.labels}}
      - {path: cpu, resourceFieldRef: {containerName: c, resource: requests.cpu, divisor: 1m}}
  - name: token
    projected:
      sources:
      - serviceAccountToken: {audience: vault, path: vault-token}
      - configMap: {name: ca, items: [{key: ca.crt, path: ca.crt}]}
  - name: host
    hostPath: {path: /var/log, type: Directory}
"#;
    let out = t.kubectl_stdin(&["apply", "-f", "-"], good).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stored = pods.get("dns-and-volumes").await.expect("get");
    let volumes = stored.spec.expect("spec").volumes.expect("volumes");
    let token = volumes[1]
        .projected
        .as_ref()
        .expect("projected")
        .sources
        .as_ref()
        .expect("sources");
    assert_eq!(
        token[0]
            .service_account_token
            .as_ref()
            .and_then(|t| t.expiration_seconds),
        Some(3600)
    );
}

/// The pod defaults upstream applies before its strict checks: a host-network pod's ports
/// get `hostPort = containerPort`, and `httpGet` handlers get path `/` and scheme `HTTP`;
/// a host port that differs from the container port is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_network_ports_and_http_probes_are_defaulted_then_checked() {
    let t = TestServer::start().await;
    let pods: Api<Pod> = Api::namespaced(t.client().await, "default");
    let manifest = r#"
apiVersion: v1
kind: Pod
metadata: {name: host-net}
spec:
  hostNetwork: true
  containers:
  - name: c
    image: nginx
    ports: [{containerPort: 8080}]
    livenessProbe:
      httpGet: {port: 8080}
    lifecycle:
      preStop:
        httpGet: {port: 8080, path: /quit}
"#;
    let out = t.kubectl_stdin(&["apply", "-f", "-"], manifest).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = pods
        .get("host-net")
        .await
        .expect("get")
        .spec
        .expect("spec")
        .containers
        .remove(0);
    let ports = c.ports.expect("ports");
    assert_eq!(ports[0].host_port, Some(8080));
    let probe = c.liveness_probe.expect("probe").http_get.expect("httpGet");
    assert_eq!(
        (probe.path.as_deref(), probe.scheme.as_deref()),
        (Some("/"), Some("HTTP"))
    );
    let hook = c
        .lifecycle
        .expect("lifecycle")
        .pre_stop
        .expect("preStop")
        .http_get
        .expect("httpGet");
    assert_eq!(
        (hook.path.as_deref(), hook.scheme.as_deref()),
        (Some("/quit"), Some("HTTP"))
    );

    let bad = pod(
        "bad",
        json!({"hostNetwork": true, "containers": [{
            "name": "c", "image": "nginx",
            "ports": [{"containerPort": 8080, "hostPort": 9090}],
            "readinessProbe": {"httpGet": {"port": 8080, "scheme": "FTP"}},
        }]}),
    );
    let got = refused(&pods, &bad).await;
    assert_eq!(
        got,
        [
            "spec.containers[0].readinessProbe.httpGet.scheme: Unsupported value: \"FTP\": supported values: \"HTTP\", \"HTTPS\"",
            "spec.containers[0].ports[0].hostPort: Invalid value: 9090: must match `containerPort` when `hostNetwork` is true",
        ]
    );
}
