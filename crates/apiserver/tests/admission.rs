//! Admission seen from kubectl: LimitRange defaults and limits, the ServiceAccount plugin's
//! projected credentials, ResourceQuota on updates, Service node ports on updates.

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

/// `status.used` of the quota `q`.
async fn quota_used(t: &TestServer) -> Value {
    let q: Value = serde_json::from_str(
        &t.kubectl_ok(&["get", "resourcequota", "q", "-o", "json"])
            .await,
    )
    .expect("json");
    q["status"]["used"].clone()
}

/// `kubectl <args>`'s error output (the command must fail).
async fn kubectl_err(t: &TestServer, args: &[&str]) -> String {
    let out = t.kubectl(args).await;
    assert!(!out.status.success(), "kubectl {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_quota_charges_what_updates_add() {
    let t = TestServer::start().await;
    let hard = json!({"services.nodeports": "2", "services.loadbalancers": "0", "requests.storage": "5Gi"});
    let quota = json!({"apiVersion": "v1", "kind": "ResourceQuota",
        "metadata": {"name": "q", "namespace": "default"}, "spec": {"hard": hard}});
    let out = t
        .kubectl_stdin(&["create", "-f", "-"], &quota.to_string())
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // What the resourcequota controller would write (there is none here).
    let status = json!({"status": {"hard": hard, "used":
        {"services.nodeports": "0", "services.loadbalancers": "0", "requests.storage": "0"}}});
    t.kubectl_ok(&[
        "patch",
        "resourcequota",
        "q",
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ])
    .await;

    // Services: a ClusterIP service uses no node ports; turning it into a NodePort service
    // charges its two ports, a second one no longer fits, nor does a load balancer.
    t.kubectl_ok(&[
        "create",
        "service",
        "clusterip",
        "a",
        "--tcp=80:80",
        "--tcp=81:81",
    ])
    .await;
    t.kubectl_ok(&["create", "service", "clusterip", "b", "--tcp=80:80"])
        .await;
    t.kubectl_ok(&[
        "patch",
        "service",
        "a",
        "-p",
        r#"{"spec":{"type":"NodePort"}}"#,
    ])
    .await;
    assert_eq!(quota_used(&t).await["services.nodeports"], "2");
    assert_eq!(
        kubectl_err(
            &t,
            &[
                "patch",
                "service",
                "b",
                "-p",
                r#"{"spec":{"type":"NodePort"}}"#
            ]
        )
        .await,
        "Error from server (Forbidden): services \"b\" is forbidden: exceeded quota: q, requested: services.nodeports=1, used: services.nodeports=2, limited: services.nodeports=2"
    );
    assert_eq!(
        kubectl_err(
            &t,
            &[
                "patch",
                "service",
                "b",
                "-p",
                r#"{"spec":{"type":"LoadBalancer","allocateLoadBalancerNodePorts":false}}"#
            ]
        )
        .await,
        "Error from server (Forbidden): services \"b\" is forbidden: exceeded quota: q, requested: services.loadbalancers=1, used: services.loadbalancers=0, limited: services.loadbalancers=0"
    );
    // Changes that add nothing are not charged (nor refused): a label, the type back.
    t.kubectl_ok(&["label", "service", "a", "x=y"]).await;
    t.kubectl_ok(&[
        "patch",
        "service",
        "a",
        "-p",
        r#"{"spec":{"type":"ClusterIP"}}"#,
    ])
    .await;
    assert_eq!(quota_used(&t).await["services.nodeports"], "2");

    // Claims: a resize is charged what it grows by.
    let claim = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data", "namespace": "default"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}});
    let out = t
        .kubectl_stdin(&["create", "-f", "-"], &claim.to_string())
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Only a bound claim may grow (upstream's `ValidatePersistentVolumeClaimUpdate`).
    t.kubectl_ok(&[
        "patch",
        "pvc",
        "data",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Bound","capacity":{"storage":"1Gi"}}}"#,
    ])
    .await;
    let resize =
        |size: &str| json!({"spec": {"resources": {"requests": {"storage": size}}}}).to_string();
    t.kubectl_ok(&["patch", "pvc", "data", "-p", &resize("3Gi")])
        .await;
    assert_eq!(quota_used(&t).await["requests.storage"], "3Gi");
    assert_eq!(
        kubectl_err(&t, &["patch", "pvc", "data", "-p", &resize("6Gi")]).await,
        "Error from server (Forbidden): persistentvolumeclaims \"data\" is forbidden: exceeded quota: q, requested: requests.storage=3Gi, used: requests.storage=3Gi, limited: requests.storage=5Gi"
    );
    // A dry run is checked but not charged.
    t.kubectl_ok(&[
        "patch",
        "pvc",
        "data",
        "--dry-run=server",
        "-p",
        &resize("5Gi"),
    ])
    .await;
    assert_eq!(quota_used(&t).await["requests.storage"], "3Gi");
    let pvc: Value =
        serde_json::from_str(&t.kubectl_ok(&["get", "pvc", "data", "-o", "json"]).await)
            .expect("json");
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "3Gi");
}

/// The node ports of service `name`, in port order (0: none).
async fn node_ports(t: &TestServer, name: &str) -> Vec<i64> {
    let s: Value =
        serde_json::from_str(&t.kubectl_ok(&["get", "service", name, "-o", "json"]).await)
            .expect("json");
    s["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| p["nodePort"].as_i64().unwrap_or(0))
        .collect()
}

/// Creates a NodePort service `name` asking for `port`; whether that worked.
async fn take_node_port(t: &TestServer, name: &str, port: i64) -> std::process::Output {
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
        "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": port}]}});
    t.kubectl_stdin(&["create", "-f", "-"], &svc.to_string())
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ports_follow_service_updates() {
    let t = TestServer::start().await;
    let web = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"ports": [{"name": "http", "port": 80}, {"name": "metrics", "port": 9090}]}});
    let out = t
        .kubectl_stdin(&["create", "-f", "-"], &web.to_string())
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A ClusterIP service may not name node ports.
    let bad = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bad"},
        "spec": {"ports": [{"port": 80, "nodePort": 30100}]}});
    let out = t
        .kubectl_stdin(&["create", "-f", "-"], &bad.to_string())
        .await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "Service \"bad\" is invalid: spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"
        ),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Becoming a NodePort service allocates one per port.
    t.kubectl_ok(&[
        "patch",
        "service",
        "web",
        "-p",
        r#"{"spec":{"type":"NodePort"}}"#,
    ])
    .await;
    let first = node_ports(&t, "web").await;
    assert!(
        first.iter().all(|p| (30000..=32767).contains(p)) && first[0] != first[1],
        "{first:?}"
    );
    assert!(!take_node_port(&t, "thief", first[0]).await.status.success());
    // Ports left out of an update keep theirs, by name (here in the other order).
    let reordered = json!({"spec": {"ports": [
        {"name": "metrics", "port": 9090}, {"name": "http", "port": 80}]}});
    t.kubectl_ok(&[
        "patch",
        "service",
        "web",
        "--type=merge",
        "-p",
        &reordered.to_string(),
    ])
    .await;
    assert_eq!(node_ports(&t, "web").await, vec![first[1], first[0]]);

    // A port added gets one; a port asked for that another service holds is refused.
    let held = 30123;
    let out = take_node_port(&t, "other", held).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let add = |node_port: i64| {
        json!([{"op": "add", "path": "/spec/ports/-",
            "value": {"name": "extra", "port": 8080, "nodePort": node_port}}])
        .to_string()
    };
    let out = t
        .kubectl(&["patch", "service", "web", "--type=json", "-p", &add(held)])
        .await;
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        format!(
            "The Service \"web\" is invalid: spec.ports[2].nodePort: Invalid value: {held}: provided port is already allocated"
        )
    );
    let out = t
        .kubectl(&[
            "patch",
            "service",
            "web",
            "--type=json",
            "-p",
            &add(first[0]),
        ])
        .await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "spec.ports[2].nodePort: Duplicate value: {}",
            first[0]
        )),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = t
        .kubectl(&["patch", "service", "web", "--type=json", "-p", &add(29999)])
        .await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "spec.ports[2].nodePort: Invalid value: 29999: provided port is not in the valid range. The range of valid ports is 30000-32767"
        ),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same port for TCP and UDP is one allocation.
    let udp = json!([{"op": "add", "path": "/spec/ports/-",
        "value": {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": first[0]}}]);
    t.kubectl_ok(&[
        "patch",
        "service",
        "web",
        "--type=json",
        "-p",
        &udp.to_string(),
    ])
    .await;
    assert_eq!(
        node_ports(&t, "web").await,
        vec![first[1], first[0], first[0]]
    );

    // Changing a node port releases the old one.
    let moved = json!([{"op": "replace", "path": "/spec/ports/0/nodePort", "value": 30124}]);
    t.kubectl_ok(&[
        "patch",
        "service",
        "web",
        "--type=json",
        "-p",
        &moved.to_string(),
    ])
    .await;
    let out = take_node_port(&t, "reuse", first[1]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Back to ClusterIP: the node ports go, and are free again.
    t.kubectl_ok(&[
        "patch",
        "service",
        "web",
        "-p",
        r#"{"spec":{"type":"ClusterIP"}}"#,
    ])
    .await;
    assert_eq!(node_ports(&t, "web").await, vec![0, 0, 0]);
    for (name, port) in [("again1", 30124), ("again2", first[0])] {
        let out = take_node_port(&t, name, port).await;
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_nothing_holds_is_terminating_until_deleted_again() {
    let t = TestServer::start().await;
    t.kubectl_ok(&["create", "namespace", "loose"]).await;
    // Let go of the `kubernetes` finalizer while active (what only /finalize can do).
    let finalize = json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "loose"}, "spec": {"finalizers": []}});
    let client = t.client().await;
    let request = http::Request::put("/api/v1/namespaces/loose/finalize")
        .header("content-type", "application/json")
        .body(finalize.to_string().into_bytes())
        .expect("request");
    let ns: Value = client.request(request).await.expect("finalized");
    assert_eq!(ns["spec"], json!({}));
    // The first DELETE marks it, as upstream's namespace REST always does.
    t.kubectl_ok(&["delete", "namespace", "loose", "--wait=false"])
        .await;
    let ns: Value = serde_json::from_str(
        &t.kubectl_ok(&["get", "namespace", "loose", "-o", "json"])
            .await,
    )
    .expect("json");
    assert_eq!(ns["status"]["phase"], "Terminating");
    assert!(ns["metadata"]["deletionTimestamp"].is_string(), "{ns}");
    // Nothing holds it: the next DELETE removes it.
    t.kubectl_ok(&["delete", "namespace", "loose"]).await;
    let out = t.kubectl(&["get", "namespace", "loose"]).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "Error from server (NotFound): namespaces \"loose\" not found"
    );
}
