//! Test harness: the embedded apiserver (in this process, 127.0.0.1:0, SQLite in a temp dir),
//! a kube client for it, and helpers to make nodes (API objects only: no kubelet) and
//! pods and to run a scheduler against them.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use rk3s_apiserver::EmbeddedApiserver;
use serde_json::{Value, json};

pub struct TestServer {
    pub apiserver: EmbeddedApiserver,
    pub kubeconfig: std::path::PathBuf,
}

impl TestServer {
    /// The embedded apiserver (`rk3s_apiserver::EmbeddedApiserver`: SQLite in a temp dir,
    /// 127.0.0.1:0, admin kubeconfig written).
    pub async fn start() -> TestServer {
        let apiserver = EmbeddedApiserver::start()
            .await
            .expect("embedded apiserver starts");
        let kubeconfig = apiserver.kubeconfig_path().to_path_buf();
        TestServer {
            apiserver,
            kubeconfig,
        }
    }

    /// The one place clients are built, with the admin credentials.
    pub async fn client(&self) -> kube::Client {
        self.apiserver.client().await.expect("kube client")
    }
}

/// Registers a node (create, then its status, as a kubelet does) with `cpu` CPUs, 8 GiB,
/// 110 pods, the given labels and taints.
pub async fn make_node(client: &kube::Client, name: &str, cpu: &str, labels: Value, taints: Value) {
    make_node_with_spec(client, name, cpu, labels, json!({"taints": taints})).await;
}

/// [`make_node`] with the whole node spec given (`unschedulable`, `taints`, ...).
pub async fn make_node_with_spec(
    client: &kube::Client,
    name: &str,
    cpu: &str,
    labels: Value,
    spec: Value,
) {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut labels = labels;
    labels["kubernetes.io/hostname"] = json!(name);
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
    }))
    .expect("node");
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("node created");
    let status = json!({"status": {
        "capacity": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
        "allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True"}]
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("node status");
}

/// Creates a pod in `default` from a spec (a container is added if none is given).
pub async fn make_pod(client: &kube::Client, name: &str, labels: Value, spec: Value) -> Pod {
    let mut spec = spec;
    if spec.get("containers").is_none() {
        spec["containers"] = json!([{"name": "c", "image": "busybox"}]);
    }
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
    }))
    .expect("pod");
    Api::<Pod>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &pod)
        .await
        .expect("pod created")
}

/// A scheduler on its own task, without leader election; aborted on drop.
pub struct RunningScheduler(tokio::task::JoinHandle<()>);

impl RunningScheduler {
    /// Any task, aborted on drop.
    pub fn spawn(task: impl std::future::Future<Output = ()> + Send + 'static) -> Self {
        RunningScheduler(tokio::spawn(task))
    }
}

impl Drop for RunningScheduler {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub fn start_scheduler(client: &kube::Client) -> RunningScheduler {
    let config = rk3s_scheduler::Config {
        leader_elect: false,
        // Tests run in parallel: no secure port (tests/serving.rs serves one).
        secure_port: 0,
        ..rk3s_scheduler::Config::default()
    };
    let client = client.clone();
    RunningScheduler(tokio::spawn(async move {
        if let Err(e) = rk3s_scheduler::run(config, client, std::future::pending()).await {
            panic!("scheduler failed: {e}");
        }
    }))
}

/// Stands in for kubelets: pods marked for deletion are removed for good at once.
pub fn start_kubelet_standin(client: &kube::Client) -> RunningScheduler {
    let api: Api<Pod> = Api::all(client.clone());
    RunningScheduler(tokio::spawn(async move {
        let mut stream = watcher::watcher(api.clone(), watcher::Config::default()).boxed();
        while let Some(ev) = stream.next().await {
            let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = ev else {
                continue;
            };
            if p.metadata.deletion_timestamp.is_some() {
                let ns = p.metadata.namespace.clone().unwrap_or_default();
                let name = p.metadata.name.clone().unwrap_or_default();
                let _ = Api::<Pod>::namespaced(api.clone().into_client(), &ns)
                    .delete(&name, &DeleteParams::default().grace_period(0))
                    .await;
            }
        }
    }))
}

/// Polls until `f` returns `Some`, for up to 20 s.
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..200 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Waits until the pod's `PodScheduled=False` condition says `expected` (earlier attempts may
/// have seen less of the cluster); panics with the last message seen.
pub async fn wait_unschedulable(client: &kube::Client, pod: &str, expected: &str) {
    let api = Api::<Pod>::namespaced(client.clone(), "default");
    let mut last = None;
    for _ in 0..200 {
        last = api.get(pod).await.ok().and_then(|p| {
            p.status?
                .conditions?
                .into_iter()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False")?
                .message
        });
        if last.as_deref() == Some(expected) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("pod {pod}: PodScheduled=False with {expected:?} never came; last: {last:?}");
}

pub async fn node_of(client: &kube::Client, name: &str) -> Option<String> {
    Api::<Pod>::namespaced(client.clone(), "default")
        .get_opt(name)
        .await
        .expect("get pod")
        .and_then(|p| p.spec.and_then(|s| s.node_name))
}

/// Waits until the pods are bound; returns their nodes in order.
pub async fn wait_bound(client: &kube::Client, names: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for n in names {
        let node = eventually(&format!("pod {n} bound"), || node_of(client, n)).await;
        out.push(node);
    }
    out
}

pub async fn events_for(
    client: &kube::Client,
    pod: &str,
) -> Vec<k8s_openapi::api::core::v1::Event> {
    Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), "default")
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(pod))
        .collect()
}

/// Runs /usr/bin/kubectl (or $RK3S_KUBECTL) against the server; returns stdout, fails on error.
pub async fn kubectl(t: &TestServer, args: &[&str]) -> String {
    let bin = std::env::var("RK3S_KUBECTL").unwrap_or_else(|_| "/usr/bin/kubectl".into());
    let mut cmd = std::process::Command::new(bin);
    cmd.env("KUBECONFIG", &t.kubeconfig)
        .env("HOME", t.apiserver.data_dir())
        .args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("kubectl thread")
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
