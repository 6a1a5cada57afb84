//! `cargo xtask bench scheduler [--nodes N] [--pods M]`: upstream's SchedulingBasic workload
//! on hollow nodes. An in-process apiserver (SQLite in a temp dir) and the scheduler share this
//! process; N nodes are registered through the API (create + status, as a kubelet does, no
//! containers), then M pods are created, and the figure is pods/s from the first create to the
//! last pod seen bound through a watch. Then the scheduler is stopped, M more pods are created,
//! and a scheduler started cold binds that backlog: pods/s from its start to the last bound
//! (the scheduler alone, where the first figure can be bounded by the API's create rate).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

/// Upstream's scheduler_perf threshold for SchedulingBasic 5000 nodes / 10k pods.
const UPSTREAM_THRESHOLD: f64 = 680.0;
const CONCURRENCY: usize = 64;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let nodes = arg("--nodes", 5000);
    let pods = arg("--pods", 10_000);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench(nodes, pods))
}

async fn bench(n_nodes: usize, n_pods: usize) -> anyhow::Result<()> {
    // The embedded apiserver: SQLite in a temp dir, loopback, a fresh PKI, the admin's client.
    let mut server = rk3s_apiserver::EmbeddedApiserver::start().await?;
    let client = server.client().await?;

    let t = Instant::now();
    let node_api: Api<Node> = Api::all(client.clone());
    futures::stream::iter(0..n_nodes)
        .map(|i| {
            let api = node_api.clone();
            async move {
                let name = format!("hollow-{i}");
                let node: Node = serde_json::from_value(json!({"metadata": {"name": name,
                    "labels": {"kubernetes.io/hostname": name}}}))?;
                api.create(&PostParams::default(), &node).await?;
                let status = json!({"status": {
                    "capacity": {"cpu": "4", "memory": "32Gi", "pods": "110"},
                    "allocatable": {"cpu": "4", "memory": "32Gi", "pods": "110"},
                    "conditions": [{"type": "Ready", "status": "True"}]}});
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<()>()
        .await?;
    println!(
        "registered {n_nodes} hollow nodes in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // Count bound pods through a watch.
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let (count_tx, count_rx) = tokio::sync::watch::channel(0usize);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let watch_api = pod_api.clone();
    tokio::spawn(async move {
        let mut bound = HashSet::new();
        let mut stream = watcher::watcher(watch_api, watcher::Config::default()).boxed();
        let mut ready = Some(ready_tx);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::InitDone) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p))
                    if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some() =>
                {
                    bound.insert(p.metadata.name.unwrap_or_default());
                    count_tx.send_replace(bound.len());
                }
                _ => {}
            }
        }
    });
    ready_rx.await?;
    let bound = |n: usize| {
        let mut rx = count_rx.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(1800), rx.wait_for(|c| *c >= n)).await??;
            anyhow::Ok(Instant::now())
        }
    };

    // 1. Pods created while the scheduler runs (upstream's SchedulingBasic measures this).
    let scheduler = Scheduler::start(&client);
    // Let the scheduler list the nodes before the clock starts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let start = Instant::now();
    let created = create_pods(&pod_api, n_pods).await?;
    let end = bound(n_pods).await?;
    let total = end.duration_since(start).as_secs_f64();
    println!(
        "created {n_pods} pods in {:.1} s ({:.0} creates/s)",
        created.as_secs_f64(),
        n_pods as f64 / created.as_secs_f64()
    );
    println!(
        "scheduler: {n_pods} pods onto {n_nodes} nodes in {total:.1} s: {:.0} pods/s \
         (first create to last bound); upstream SchedulingBasic 5000 nodes/10k pods threshold: \
         {UPSTREAM_THRESHOLD:.0} pods/s",
        n_pods as f64 / total
    );
    scheduler.stop().await?;

    // 2. A backlog: as many pods again, created while no scheduler runs, then a scheduler
    // started cold (its lists of nodes and pods included). This measures the scheduler alone,
    // where phase 1 can be bounded by the rate the API takes creates.
    create_pods(&pod_api, n_pods).await?;
    let start = Instant::now();
    let scheduler = Scheduler::start(&client);
    let end = bound(2 * n_pods).await?;
    let total = end.duration_since(start).as_secs_f64();
    println!(
        "scheduler, cold start on a backlog: {n_pods} pods onto {n_nodes} nodes (holding \
         {n_pods} already) in {total:.1} s: {:.0} pods/s (scheduler start to last bound)",
        n_pods as f64 / total
    );
    scheduler.stop().await?;
    server.stop().await;
    Ok(())
}

/// Creates `n` pods of upstream's SchedulingBasic template; returns how long it took.
async fn create_pods(api: &Api<Pod>, n: usize) -> anyhow::Result<Duration> {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"generateName": "pod-"},
        "spec": {"containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10",
            "resources": {"requests": {"cpu": "100m", "memory": "500Mi"}}}]}
    }))?;
    let start = Instant::now();
    futures::stream::iter(0..n)
        .map(|_| {
            let api = api.clone();
            let pod = pod.clone();
            async move { api.create(&PostParams::default(), &pod).await.map(|_| ()) }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<()>()
        .await?;
    Ok(start.elapsed())
}

/// The scheduler as a task, stopped through its shutdown future (so that none of its own tasks
/// outlives it).
struct Scheduler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), rk3s_scheduler::Error>>,
}

impl Scheduler {
    fn start(client: &kube::Client) -> Scheduler {
        let config = rk3s_scheduler::Config {
            leader_elect: false,
            secure_port: 0,
            ..rk3s_scheduler::Config::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let client = client.clone();
        let task = tokio::spawn(async move {
            rk3s_scheduler::run(config, client, async {
                let _ = stopped.await;
            })
            .await
        });
        Scheduler { stop, task }
    }

    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await??;
        Ok(())
    }
}
