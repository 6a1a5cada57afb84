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
