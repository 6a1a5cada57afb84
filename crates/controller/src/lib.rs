//! The rk3s controller manager (`rk3s-controller`): upstream kube-controller-manager's loops,
//! as a client of the apiserver only.
//!
//! [`run`] takes a [`kube::Client`], waits for the `kube-system/kube-controller-manager` Lease
//! (unless leader election is off) and runs the enabled controllers until `shutdown`
//! completes. Each controller is watch-driven (kube-runtime's `Controller` or the garbage
//! collector's own graph), reconciles one object at a time per key, requeues failures with
//! per-object exponential backoff (5 ms doubling up to 1000 s, as upstream's work queues) and
//! writes status only when it changes. Watches reconnect with backoff, so the controllers
//! survive the apiserver going away and coming back.
//!
//! See `ARCHITECTURE.md` (the `crates/controller` section) for the code map.

use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use kube::Client;
use tokio::sync::watch;

mod config;
mod cronjob;
mod csr;
mod daemonset;
mod deployment;
mod disruption;
mod endpoints;
mod events;
mod expectations;
mod gc;
mod history;
mod hpa;
mod informer;
mod job;
mod namespace;
mod nodeipam;
mod nodelifecycle;
mod nodepassword;
mod podgc;
mod pv;
mod replicaset;
mod resourcequota;
mod serviceaccount;
mod settings;
mod statefulset;
mod tokencleaner;
mod ttl;
mod util;

pub use config::{CONTROLLERS, Config, ConfigError, NodeConfig};
pub use settings::LoopConfig;
pub use util::{Clock, SystemClock};

/// Name of the component, as its binary and log lines call it.
pub const COMPONENT: &str = "rk3s-controller";

/// What stops the controller manager.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration does not validate.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// A reconcile that failed; the object is requeued with backoff.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReconcileError {
    /// The apiserver refused or could not be reached.
    #[error("apiserver: {0}")]
    Kube(#[from] kube::Error),
    /// A selector that cannot be evaluated.
    #[error("invalid selector: {0}")]
    Selector(String),
    /// An object the controller cannot work with.
    #[error("{0}")]
    Invalid(String),
}

/// Runs the enabled controllers until `shutdown` completes. With leader election on, the
/// controllers run only while this process holds the Lease; when it loses the Lease it stops
/// them and becomes a candidate again.
pub async fn run(
    config: Config,
    client: Client,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    run_with_clock(config, client, shutdown, Arc::new(SystemClock)).await
}

/// [`run`] with the time-driven controllers (Job, CronJob, TTL-after-finished) reading the
/// time from `clock` (tests move it to reach schedules without waiting).
pub async fn run_with_clock(
    config: Config,
    client: Client,
    shutdown: impl Future<Output = ()> + Send,
    clock: Arc<dyn Clock>,
) -> Result<(), Error> {
    config.validate()?;
    let identity = config
        .identity
        .clone()
        .unwrap_or_else(rk3s_common::leader::default_identity);
    tracing::info!(component = COMPONENT, %identity, "starting");
    let mut elector = config.leader_elect.then(|| {
        rk3s_common::leader::LeaderElector::new(client.clone(), config.lease_config(identity))
    });
    tokio::pin!(shutdown);
    loop {
        if let Some(elector) = &mut elector {
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                () = elector.acquire() => {}
            }
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let controllers = start_controllers(&config, &client, &stop_rx, &clock);
        let lost = async {
            match &mut elector {
                Some(e) => e.keep().await,
                None => std::future::pending().await,
            }
        };
        let done = tokio::select! {
            _ = &mut shutdown => true,
            () = lost => {
                tracing::warn!("leader election lost; stopping the controllers");
                false
            }
        };
        let _ = stop_tx.send(true);
        futures::future::join_all(controllers).await;
        if let Some(elector) = &mut elector {
            elector.release().await;
        }
        if done {
            tracing::info!(component = COMPONENT, "stopped");
            return Ok(());
        }
    }
}

/// Completes when `stop` turns true (or its sender is gone).
pub(crate) async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn start_controllers(
    config: &Config,
    client: &Client,
    stop: &watch::Receiver<bool>,
    clock: &Arc<dyn Clock>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let shared = Arc::new(util::Shared {
        client: client.clone(),
        concurrency: config.concurrent_syncs,
        clock: clock.clone(),
        events: events::Recorder::new(client.clone()),
        pods: Arc::default(),
    });
    let mut tasks: Vec<(&str, BoxFuture<'static, ()>)> = Vec::new();
    // One pod watch for the controllers that read the shared pod cache, on the manager's client.
    if config.enabled("replicaset") || config.enabled("replicationcontroller") {
        tasks.push((
            "pod-cache",
            Box::pin(shared.pods.clone().run(client.clone(), stop.clone())),
        ));
    }
    if config.enabled("replicaset") {
        tasks.push((
            "replicaset",
            Box::pin(replicaset::run_replicasets(shared.clone(), stop.clone())),
        ));
    }
    if config.enabled("replicationcontroller") {
        tasks.push((
            "replicationcontroller",
            Box::pin(replicaset::run_replication_controllers(
                shared.clone(),
                stop.clone(),
            )),
        ));
    }
    if config.enabled("deployment") {
        tasks.push((
            "deployment",
            Box::pin(deployment::run(shared.clone(), stop.clone())),
        ));
    }
    if config.enabled("garbagecollector") {
        tasks.push((
            "garbagecollector",
            Box::pin(gc::run(shared.clone(), stop.clone())),
        ));
    }
    if config.enabled("endpoints") {
        tasks.push((
            "endpoints",
            Box::pin(endpoints::run_endpoints(shared.clone(), stop.clone())),
        ));
    }
    if config.enabled("endpointslice") {
        tasks.push((
            "endpointslice",
            Box::pin(endpoints::run_slices(shared.clone(), stop.clone())),
        ));
    }
    if config.enabled("statefulset") {
        tasks.push((
            "statefulset",
            Box::pin(statefulset::run(shared.clone(), stop.clone())),
        ));
    }
    if config.enabled("daemonset") {
        tasks.push((
            "daemonset",
            Box::pin(daemonset::run(shared.clone(), stop.clone())),
        ));
    }
    if config.enabled("job") {
        tasks.push(("job", Box::pin(job::run(shared.clone(), stop.clone()))));
    }
    if config.enabled("cronjob") {
        tasks.push((
            "cronjob",
            Box::pin(cronjob::run(shared.clone(), stop.clone())),
        ));
    }
    if config.enabled("ttl-after-finished") {
        tasks.push((
            "ttl-after-finished",
            Box::pin(ttl::run(shared.clone(), stop.clone())),
        ));
    }
    if config.enabled("resourcequota") {
        tasks.push((
            "resourcequota",
            Box::pin(resourcequota::run(shared.clone(), stop.clone())),
        ));
    }
    if config.enabled("disruption") {
        tasks.push((
            "disruption",
            Box::pin(disruption::run(shared.clone(), stop.clone())),
        ));
    }
    if config.enabled("serviceaccount") {
        tasks.push((
            "serviceaccount",
            Box::pin(serviceaccount::run(shared.clone(), stop.clone())),
        ));
    }
    if config.enabled("namespace") {
        tasks.push((
            "namespace",
            Box::pin(namespace::run(shared.clone(), stop.clone())),
        ));
    }
    if config.enabled("nodelifecycle") {
        tasks.push((
            "nodelifecycle",
            Box::pin(nodelifecycle::run(
                shared.clone(),
                config.nodes.clone(),
                stop.clone(),
            )),
        ));
    }
    if config.enabled("taint-eviction-controller") {
        tasks.push((
            "taint-eviction-controller",
            Box::pin(nodelifecycle::run_taint_eviction(
                shared.clone(),
                stop.clone(),
            )),
        ));
    }
    if config.enabled("nodeipam") && config.nodes.allocate_node_cidrs {
        tasks.push((
            "nodeipam",
            Box::pin(nodeipam::run(
                shared.clone(),
                config.nodes.clone(),
                stop.clone(),
            )),
        ));
    }
    if config.enabled("csrapproving") {
        tasks.push((
            "csrapproving",
            Box::pin(csr::run_approving(shared.clone(), stop.clone())),
        ));
    }
    if config.enabled("csrsigning") {
        tasks.push((
            "csrsigning",
            Box::pin(csr::run_signing(
                shared.clone(),
                config.nodes.clone(),
                stop.clone(),
            )),
        ));
    }
    if config.enabled("persistentvolume-binder") {
        tasks.push((
            "persistentvolume-binder",
            Box::pin(pv::run_binder(
                shared.clone(),
                config.loops.clone(),
                stop.clone(),
            )),
        ));
    }
    if config.enabled("pvc-protection") {
        tasks.push((
            "pvc-protection",
            Box::pin(pv::run_pvc_protection(shared.clone(), stop.clone())),
        ));
    }
    if config.enabled("pv-protection") {
        tasks.push((
            "pv-protection",
            Box::pin(pv::run_pv_protection(shared.clone(), stop.clone())),
        ));
    }
    if config.enabled("pod-garbage-collector") {
        tasks.push((
            "pod-garbage-collector",
            Box::pin(podgc::run(
                shared.clone(),
                config.loops.clone(),
                stop.clone(),
            )),
        ));
    }
    if config.enabled("horizontal-pod-autoscaling") {
        tasks.push((
            "horizontal-pod-autoscaling",
            Box::pin(hpa::run(shared.clone(), config.loops.clone(), stop.clone())),
        ));
    }
    if config.enabled("nodepassword") {
        tasks.push((
            "nodepassword",
            Box::pin(nodepassword::run(shared.clone(), stop.clone())),
        ));
    }
    if config.enabled("tokencleaner") {
        tasks.push((
            "tokencleaner",
            Box::pin(tokencleaner::run(shared.clone(), stop.clone())),
        ));
    }
    tasks
        .into_iter()
        .map(|(name, fut)| {
            tracing::info!(controller = name, "starting controller");
            tokio::spawn(async move {
                fut.await;
                tracing::info!(controller = name, "controller stopped");
            })
        })
        .collect()
}
