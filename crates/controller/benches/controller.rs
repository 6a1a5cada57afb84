//! `cargo xtask bench controller [--deployments N] [--replicas M]`: issue #5's controller
//! workload — the time the controller manager takes to create the pods of N Deployments of M
//! replicas (default 100 × 100 = 10k pods). An in-process apiserver (SQLite in a temp dir) and
//! the controller share this process; the clock runs from the first Deployment create to the
//! last pod seen through a watch. No scheduler and no kubelet: pods stay Pending, which is all
//! the ReplicaSet controller needs to count them.

use std::time::{Duration, Instant};

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use serde_json::json;

/// kube-controller-manager's default client rate limit (`--kube-api-qps`), which bounds the
/// pod creation rate of an upstream controller manager with default flags.
const UPSTREAM_QPS: f64 = 20.0;
const CONCURRENCY: usize = 16;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let deployments = arg("--deployments", 100);
    let replicas = arg("--replicas", 100);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench(deployments, replicas))
}

async fn bench(n_deployments: usize, replicas: usize) -> anyhow::Result<()> {
    let n_pods = n_deployments * replicas;
    // The embedded apiserver: SQLite in a temp dir, loopback, a fresh PKI, the admin's client.
    let mut server = rk3s_apiserver::EmbeddedApiserver::start().await?;
    let client = server.client().await?;
    // Pods need their namespace's default ServiceAccount (the controller's serviceaccount
    // controller would make it; creating it first keeps that race out of the figure).
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "default"}}))?;
    Api::<ServiceAccount>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &sa)
        .await?;

    let controller_config = rk3s_controller::Config {
        leader_elect: false,
        secure_port: 0,
        ..rk3s_controller::Config::default()
    };
    let controller_client = client.clone();
    let controller = tokio::spawn(async move {
        rk3s_controller::run(controller_config, controller_client, std::future::pending()).await
    });

    // Count pods through a watch.
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Instant>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut seen = std::collections::HashSet::new();
        let mut stream = watcher::watcher(pod_api, watcher::Config::default()).boxed();
        let mut ready = Some(ready_tx);
        let mut done = Some(done_tx);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::InitDone) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                    seen.insert(p.metadata.name.unwrap_or_default());
                    if seen.len() == n_pods
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
    // Let the controllers list and watch before the clock starts.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let deploy_api: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let start = Instant::now();
    futures::stream::iter(0..n_deployments)
        .map(|i| {
            let api = deploy_api.clone();
            async move {
                let name = format!("bench-{i}");
                let d: Deployment = serde_json::from_value(json!({
                    "metadata": {"name": name},
                    "spec": {
                        "replicas": replicas,
                        "selector": {"matchLabels": {"app": name}},
                        "template": {
                            "metadata": {"labels": {"app": name}},
                            "spec": {"containers": [{"name": "pause",
                                "image": "registry.k8s.io/pause:3.10"}]},
                        },
                    },
                }))?;
                api.create(&PostParams::default(), &d).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<()>()
        .await?;
    let created = start.elapsed();
    let end = tokio::time::timeout(Duration::from_secs(1800), done_rx).await??;
    let total = end.duration_since(start).as_secs_f64();
    println!(
        "created {n_deployments} Deployments of {replicas} replicas in {:.1} s",
        created.as_secs_f64()
    );
    println!(
        "controller: {n_pods} pods of {n_deployments} Deployments in {total:.1} s: {:.0} pods/s \
         (first Deployment create to last pod); upstream kube-controller-manager with its \
         default --kube-api-qps={UPSTREAM_QPS:.0} is bounded near {UPSTREAM_QPS:.0} creates/s \
         ({:.0} s for {n_pods} pods): ratio {:.1}x",
        n_pods as f64 / total,
        n_pods as f64 / UPSTREAM_QPS,
        (n_pods as f64 / total) / UPSTREAM_QPS,
    );
    controller.abort();
    server.stop().await;
    Ok(())
}
