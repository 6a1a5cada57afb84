//! Admission seen from kubectl: LimitRange defaults and limits, the ServiceAccount plugin's
//! projected credentials.

mod common;

use common::TestServer;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_ranges_default_and_bound_container_resources() {
    let t = TestServer::start().await;
    let limits = r#"
apiVersion: v1
kind: LimitRange
metadata: {name: cpu-mem}
spec:
  limits:
  - type: Container
    max: {cpu: "1", memory: 1Gi}
    defaultRequest: {cpu: 100m}
"#;
    let out = t.kubectl_stdin(&["apply", "-f", "-"], limits).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The LimitRange's own defaulting: default limits from max.
    let lr: Value = serde_json::from_str(
        &t.kubectl_ok(&["get", "limits", "cpu-mem", "-o", "json"])
            .await,
    )
    .expect("json");
    assert_eq!(
        lr["spec"]["limits"][0]["default"],
        json!({"cpu": "1", "memory": "1Gi"})
    );

    t.kubectl_ok(&["run", "plain", "--image=busybox"]).await;
    let pod: Value =
        serde_json::from_str(&t.kubectl_ok(&["get", "pod", "plain", "-o", "json"]).await)
            .expect("json");
    let resources = &pod["spec"]["containers"][0]["resources"];
    assert_eq!(resources["limits"], json!({"cpu": "1", "memory": "1Gi"}));
    assert_eq!(
        resources["requests"],
        json!({"cpu": "100m", "memory": "1Gi"})
    );
    assert_eq!(
        pod["metadata"]["annotations"]["kubernetes.io/limit-ranger"],
        "LimitRanger plugin set: cpu, memory request for container plain; cpu, memory limit \
         for container plain"
    );
    // The ServiceAccount plugin's projected credentials.
    let mount = &pod["spec"]["containers"][0]["volumeMounts"][0];
    assert_eq!(
        mount["mountPath"],
        "/var/run/secrets/kubernetes.io/serviceaccount"
    );
    assert!(
        mount["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("kube-api-access-"))
    );

    let big = r#"
apiVersion: v1
kind: Pod
metadata: {name: big}
spec:
  containers:
  - name: c
    image: busybox
    resources: {limits: {cpu: "2", memory: 2Gi}}
"#;
    let out = t.kubectl_stdin(&["apply", "-f", "-"], big).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "pods \"big\" is forbidden: [maximum cpu usage per Container is 1, but limit is 2, \
             maximum memory usage per Container is 1Gi, but limit is 2Gi]"
        ),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_classes_set_pod_priority() {
    let t = TestServer::start().await;
    let pod = |name: &str, extra: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers: [{{name: c, image: busybox}}]\n{extra}"
        )
    };
    let out = t
        .kubectl_stdin(
            &["apply", "-f", "-"],
            &pod("critical", "  priorityClassName: system-cluster-critical\n"),
        )
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p: Value = serde_json::from_str(
        &t.kubectl_ok(&["get", "pod", "critical", "-o", "json"])
            .await,
    )
    .expect("json");
    assert_eq!(p["spec"]["priority"], 2_000_000_000);
    assert_eq!(p["spec"]["preemptionPolicy"], "PreemptLowerPriority");

    let out = t
        .kubectl_stdin(
            &["apply", "-f", "-"],
            &pod("lost", "  priorityClassName: nope\n"),
        )
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("pods \"lost\" is forbidden: no PriorityClass with name nope was found"),
        "{stderr}"
    );
    let out = t
        .kubectl_stdin(
            &["apply", "-f", "-"],
            &pod("sneaky", "  priority: 1000000\n"),
        )
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "the integer value of priority (1000000) must not be provided in pod spec; priority \
             admission controller computed 0 from the given PriorityClass name"
        ),
        "{stderr}"
    );
    // A global default class applies to pods that name none.
    let class = "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: normal}\nvalue: 10\nglobalDefault: true\n";
    let out = t.kubectl_stdin(&["apply", "-f", "-"], class).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.kubectl_ok(&["run", "plain", "--image=busybox"]).await;
    let p: Value =
        serde_json::from_str(&t.kubectl_ok(&["get", "pod", "plain", "-o", "json"]).await)
            .expect("json");
    assert_eq!(
        (&p["spec"]["priority"], &p["spec"]["priorityClassName"]),
        (&json!(10), &json!("normal"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_keep_the_status_they_are_registered_with() {
    let t = TestServer::start().await;
    let node = "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nstatus:\n  capacity: {cpu: \"4\", pods: \"110\"}\n";
    let out = t.kubectl_stdin(&["create", "-f", "-"], node).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n: Value = serde_json::from_str(&t.kubectl_ok(&["get", "node", "n1", "-o", "json"]).await)
        .expect("json");
    assert_eq!(n["status"]["capacity"], json!({"cpu": "4", "pods": "110"}));
}
