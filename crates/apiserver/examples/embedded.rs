//! A kube-rs controller tested against an apiserver embedded in the same process.
//!
//! `cargo run -p rk3s-apiserver --example embedded`
//!
//! The controller answers ConfigMaps labelled `example.rk3s.io/greet=true`: it writes
//! `data.greeting = "hello, <data.name>"`. The program starts an [`EmbeddedApiserver`] (a
//! temporary SQLite store, a free loopback port, no root), runs the controller on a kube-rs
//! client of it, creates a ConfigMap, waits for the controller's answer, changes the name and
//! waits again. This is how a controller's tests can run against a real Kubernetes API without
//! a cluster.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use rk3s_apiserver::EmbeddedApiserver;

const LABEL: &str = "example.rk3s.io/greet";

#[derive(Debug, thiserror::Error)]
#[error("patch {name}: {source}")]
struct ReconcileError {
    name: String,
    #[source]
    source: kube::Error,
}

/// Makes `data.greeting` match `data.name`; writes only when it does not.
async fn reconcile(
    cm: Arc<ConfigMap>,
    client: Arc<kube::Client>,
) -> Result<Action, ReconcileError> {
    let name = cm.metadata.name.clone().unwrap_or_default();
    let ns = cm.metadata.namespace.clone().unwrap_or_default();
    let data = cm.data.clone().unwrap_or_default();
    let who = data.get("name").map(String::as_str).unwrap_or("world");
    let greeting = format!("hello, {who}");
    if data.get("greeting") != Some(&greeting) {
        let patch = serde_json::json!({"data": {"greeting": greeting}});
        Api::<ConfigMap>::namespaced((*client).clone(), &ns)
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|source| ReconcileError {
                name: format!("{ns}/{name}"),
                source,
            })?;
        println!("controller: {ns}/{name} greeting = {greeting:?}");
    }
    Ok(Action::await_change())
}

fn error_policy(_: Arc<ConfigMap>, err: &ReconcileError, _: Arc<kube::Client>) -> Action {
    eprintln!("controller: {err}");
    Action::requeue(Duration::from_secs(1))
}

/// Waits until the ConfigMap's greeting is `want`.
async fn wait_for_greeting(api: &Api<ConfigMap>, name: &str, want: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let cm = api.get(name).await?;
        if cm.data.and_then(|d| d.get("greeting").cloned()).as_deref() == Some(want) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "no greeting {want:?} after 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let apiserver = EmbeddedApiserver::start().await?;
    let client = apiserver.client().await?;
    println!(
        "embedded apiserver at {} in {} ms (kubectl: KUBECONFIG={})",
        apiserver.url(),
        started.elapsed().as_millis(),
        apiserver.kubeconfig_path().display()
    );

    // The controller under test, as it would run against a real cluster.
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let controller = Controller::new(
        configmaps.clone(),
        watcher::Config::default().labels(&format!("{LABEL}=true")),
    )
    .run(reconcile, error_policy, Arc::new(client.clone()))
    .for_each(|_| async {});
    let controller = tokio::spawn(controller);

    // The test: create, expect the answer; change, expect the new answer.
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "demo", "labels": {LABEL: "true"}},
        "data": {"name": "rk3s"},
    }))?;
    configmaps.create(&PostParams::default(), &cm).await?;
    wait_for_greeting(&configmaps, "demo", "hello, rk3s").await?;
    let patch = serde_json::json!({"data": {"name": "kube-rs"}});
    configmaps
        .patch("demo", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    wait_for_greeting(&configmaps, "demo", "hello, kube-rs").await?;
    println!("done in {} ms", started.elapsed().as_millis());

    controller.abort();
    apiserver.shutdown().await;
    Ok(())
}
