//! `cargo xtask bench scheduler [--nodes N] [--pods M]`: upstream's SchedulingBasic workload
//! on hollow nodes. An in-process apiserver (SQLite in a temp dir) and the scheduler share this
//! process; N nodes are registered through the API (create + status, as a kubelet does, no
//! containers), then M pods are created, and the figure is pods/s from the first create to the
//! last pod seen bound through a watch.

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

    let sched_config = rk3s_scheduler::Config {
        leader_elect: false,
        ..rk3s_scheduler::Config::default()
    };
    let sched_client = client.clone();
    let scheduler = tokio::spawn(async move {
        rk3s_scheduler::run(sched_config, sched_client, std::future::pending()).await
    });

    // Count bound pods through a watch.
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Instant>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let watch_api = pod_api.clone();
    tokio::spawn(async move {
        let mut bound = HashSet::new();
        let mut stream = watcher::watcher(watch_api, watcher::Config::default()).boxed();
        let mut ready = Some(ready_tx);
        let mut done = Some(done_tx);
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
                    if bound.len() == n_pods
                        && let Some(d) = done.take()
                    {
                        let _ = d.send(Instant::now());
                    }
                }
                _ => {}
            }
        }
    });
    ready_rx.await?;
    // Let the scheduler list the nodes before the clock starts.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"generateName": "pod-"},
        "spec": {"containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10",
            "resources": {"requests": {"cpu": "100m", "memory": "500Mi"}}}]}
    }))?;
    let start = Instant::now();
    futures::stream::iter(0..n_pods)
        .map(|_| {
            let api = pod_api.clone();
            let pod = pod.clone();
            async move { api.create(&PostParams::default(), &pod).await.map(|_| ()) }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<()>()
        .await?;
    let created = start.elapsed();
    let end = tokio::time::timeout(Duration::from_secs(1800), done_rx).await??;
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
    scheduler.abort();
    server.stop().await;
    Ok(())
}
