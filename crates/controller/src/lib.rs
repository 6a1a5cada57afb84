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
//! The secure port (`secure-port`, 10257) serves `/healthz`, `/livez`, `/readyz` (checks `ping`
//! and, with leader election, `leaderElection`) and `/metrics`
//! (`leader_election_master_status{name="kube-controller-manager"}`).
//!
//! See `ARCHITECTURE.md` (the `crates/controller` section) for the code map.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use futures::future::BoxFuture;
use kube::Client;
use tokio::sync::watch;

mod config;
mod credentials;
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
mod tokens;
mod ttl;
mod util;

pub use config::{CONTROLLERS, Config, ConfigError, DEFAULT_SECURE_PORT, NodeConfig};
pub use credentials::{Account, account_of};
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
    /// The secure port cannot be bound (the message names the address) or its certificate
    /// cannot be made.
    #[error(transparent)]
    Serve(#[from] rk3s_common::serving::ServeError),
    /// `use-service-account-credentials` without the manager's kube config (a [`Connection`]
    /// made from a bare client).
    #[error(
        "use-service-account-credentials needs the manager's kubeconfig (server and CA): \
         start the controller manager with a Connection made from a kube::Config"
    )]
    NoKubeConfig,
}

/// How the controller manager reaches the apiserver: its own client, and (to build the
/// per-loop clients of `use-service-account-credentials`) the kube config it was made from.
#[derive(Clone)]
pub struct Connection {
    client: Client,
    config: Option<kube::Config>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("server", &self.config.as_ref().map(|c| &c.cluster_url))
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// A client of `config` (the manager's identity), keeping `config` for the per-loop
    /// clients.
    pub fn new(config: kube::Config) -> Result<Self, kube::Error> {
        Ok(Connection {
            client: Client::try_from(config.clone())?,
            config: Some(config),
        })
    }

    /// The manager's own client.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

impl From<Client> for Connection {
    /// A bare client: every loop runs on it (no `use-service-account-credentials`).
    fn from(client: Client) -> Self {
        Connection {
            client,
            config: None,
        }
    }
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
    connection: impl Into<Connection>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    run_with_clock(config, connection, shutdown, Arc::new(SystemClock)).await
}

/// [`run`] with the time-driven controllers (Job, CronJob, TTL-after-finished) reading the
/// time from `clock` (tests move it to reach schedules without waiting).
pub async fn run_with_clock(
    config: Config,
    connection: impl Into<Connection>,
    shutdown: impl Future<Output = ()> + Send,
    clock: Arc<dyn Clock>,
) -> Result<(), Error> {
    start(config)
        .await?
        .run_with_clock(connection, shutdown, clock)
        .await
}

/// Checks the configuration and binds the secure port (unless `secure-port` is 0), so that a
/// taken port is an error before anything runs.
pub async fn start(config: Config) -> Result<Started, Error> {
    config.validate()?;
    let serving = rk3s_common::serving::SecureServing::bind(&config.serving()).await?;
    Ok(Started {
        config,
        serving,
        metrics: rk3s_common::metrics::Registry::new(),
    })
}

/// A controller manager whose secure port is bound, not running yet.
#[derive(Debug)]
pub struct Started {
    config: Config,
    serving: Option<rk3s_common::serving::SecureServing>,
    metrics: rk3s_common::metrics::Registry,
}

impl Started {
    /// Where the secure port listens, if it does.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.serving
            .as_ref()
            .map(rk3s_common::serving::SecureServing::local_addr)
    }

    /// Serves the secure port and runs the enabled controllers until `shutdown` completes
    /// (see [`run`]).
    pub async fn run(
        self,
        connection: impl Into<Connection>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), Error> {
        self.run_with_clock(connection, shutdown, Arc::new(SystemClock))
            .await
    }

    /// [`Started::run`] with the time-driven controllers reading `clock`.
    pub async fn run_with_clock(
        self,
        connection: impl Into<Connection>,
        shutdown: impl Future<Output = ()> + Send,
        clock: Arc<dyn Clock>,
    ) -> Result<(), Error> {
        let Started {
            config,
            serving,
            metrics,
        } = self;
        run_started(config, serving, metrics, connection.into(), shutdown, clock).await
    }
}

async fn run_started(
    config: Config,
    serving: Option<rk3s_common::serving::SecureServing>,
    metrics: rk3s_common::metrics::Registry,
    connection: Connection,
    shutdown: impl Future<Output = ()> + Send,
    clock: Arc<dyn Clock>,
) -> Result<(), Error> {
    let Connection {
        client,
        config: kube_config,
    } = connection;
    if config.use_service_account_credentials && kube_config.is_none() {
        return Err(Error::NoKubeConfig);
    }
    let identity = config
        .identity
        .clone()
        .unwrap_or_else(rk3s_common::leader::default_identity);
    tracing::info!(component = COMPONENT, %identity, "starting");
    let lease = config.lease_config(identity);
    let status = rk3s_common::leader::LeaderStatus::default();
    let checks = rk3s_common::health::Checks::new();
    if config.leader_elect {
        let (check, checked) = (status.clone(), lease.clone());
        checks.add("leaderElection", move || {
            check.check(&checked, rk3s_common::leader::HEALTH_TOLERANCE)
        });
        let gauge = metrics.gauge(
            "leader_election_master_status",
            "[ALPHA] 1 while this process holds the leader-election lease 'name', else 0.",
            &["name"],
        );
        let (status, name) = (status.clone(), lease.name.clone());
        gauge.set(&[&name], 0.0);
        metrics.on_render(move || {
            gauge.set(&[&name], if status.is_leader() { 1.0 } else { 0.0 });
        });
    }
    // Stops serving when dropped, however this returns.
    let _serving = serving.map(|s| s.serve(checks, metrics.clone()));
    let mut elector = config.leader_elect.then(|| {
        rk3s_common::leader::LeaderElector::new(client.clone(), lease).with_status(status)
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
        let credentials = kube_config
            .as_ref()
            .filter(|_| config.use_service_account_credentials)
            .map(|kc| {
                Arc::new(credentials::Credentials::new(
                    client.clone(),
                    kc,
                    stop_rx.clone(),
                ))
            });
        let controllers =
            start_controllers(&config, &client, credentials.as_ref(), &stop_rx, &clock);
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
    credentials: Option<&Arc<credentials::Credentials>>,
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
    let mut tasks: Vec<(&'static str, LoopFn)> = Vec::new();
    // One pod watch for the controllers that read the shared pod cache, on the manager's
    // client (as upstream's shared informers; "pod-cache" has no account of its own).
    if config.enabled("replicaset") || config.enabled("replicationcontroller") {
        tasks.push(("pod-cache", {
            let client = client.clone();
            boxed(move |s, st| s.pods.clone().run(client, st))
        }));
    }
    if config.enabled("replicaset") {
        tasks.push(("replicaset", boxed(replicaset::run_replicasets)));
    }
    if config.enabled("replicationcontroller") {
        tasks.push((
            "replicationcontroller",
            boxed(replicaset::run_replication_controllers),
        ));
    }
    if config.enabled("deployment") {
        tasks.push(("deployment", boxed(deployment::run)));
    }
    if config.enabled("garbagecollector") {
        tasks.push(("garbagecollector", boxed(gc::run)));
    }
    if config.enabled("endpoints") {
        tasks.push(("endpoints", boxed(endpoints::run_endpoints)));
    }
    if config.enabled("endpointslice") {
        tasks.push(("endpointslice", boxed(endpoints::run_slices)));
    }
    if config.enabled("statefulset") {
        tasks.push(("statefulset", boxed(statefulset::run)));
    }
    if config.enabled("daemonset") {
        tasks.push(("daemonset", boxed(daemonset::run)));
    }
    if config.enabled("job") {
        tasks.push(("job", boxed(job::run)));
    }
    if config.enabled("cronjob") {
        tasks.push(("cronjob", boxed(cronjob::run)));
    }
    if config.enabled("ttl-after-finished") {
        tasks.push(("ttl-after-finished", boxed(ttl::run)));
    }
    if config.enabled("resourcequota") {
        tasks.push(("resourcequota", boxed(resourcequota::run)));
    }
    if config.enabled("disruption") {
        tasks.push(("disruption", boxed(disruption::run)));
    }
    if config.enabled("serviceaccount") {
        tasks.push(("serviceaccount", boxed(serviceaccount::run)));
    }
    if config.enabled("namespace") {
        tasks.push(("namespace", boxed(namespace::run)));
    }
    if config.enabled("nodelifecycle") {
        tasks.push(("nodelifecycle", {
            let nodes = config.nodes.clone();
            boxed(move |s, st| nodelifecycle::run(s, nodes, st))
        }));
    }
    if config.enabled("taint-eviction-controller") {
        tasks.push((
            "taint-eviction-controller",
            boxed(nodelifecycle::run_taint_eviction),
        ));
    }
    if config.enabled("nodeipam") && config.nodes.allocate_node_cidrs {
        tasks.push(("nodeipam", {
            let nodes = config.nodes.clone();
            boxed(move |s, st| nodeipam::run(s, nodes, st))
        }));
    }
    if config.enabled("csrapproving") {
        tasks.push(("csrapproving", boxed(csr::run_approving)));
    }
    if config.enabled("csrsigning") {
        tasks.push(("csrsigning", {
            let nodes = config.nodes.clone();
            boxed(move |s, st| csr::run_signing(s, nodes, st))
        }));
    }
    if config.enabled("persistentvolume-binder") {
        tasks.push(("persistentvolume-binder", {
            let loops = config.loops.clone();
            boxed(move |s, st| pv::run_binder(s, loops, st))
        }));
    }
    if config.enabled("pvc-protection") {
        tasks.push(("pvc-protection", boxed(pv::run_pvc_protection)));
    }
    if config.enabled("pv-protection") {
        tasks.push(("pv-protection", boxed(pv::run_pv_protection)));
    }
    if config.enabled("pod-garbage-collector") {
        tasks.push(("pod-garbage-collector", {
            let loops = config.loops.clone();
            boxed(move |s, st| podgc::run(s, loops, st))
        }));
    }
    if config.enabled("horizontal-pod-autoscaling") {
        tasks.push(("horizontal-pod-autoscaling", {
            let loops = config.loops.clone();
            boxed(move |s, st| hpa::run(s, loops, st))
        }));
    }
    if config.enabled("nodepassword") {
        tasks.push(("nodepassword", boxed(nodepassword::run)));
    }
    if config.enabled("tokencleaner") {
        tasks.push(("tokencleaner", boxed(tokencleaner::run)));
    }
    if config.enabled("serviceaccount-token")
        && let Some(key) = &config.service_account_private_key_file
    {
        tasks.push(("serviceaccount-token", {
            let (key, root_ca) = (key.clone(), config.root_ca_file.clone());
            boxed(move |s, st| tokens::run(s, key, root_ca, st))
        }));
    }
    if config.enabled("legacy-serviceaccount-token-cleaner") {
        tasks.push(("legacy-serviceaccount-token-cleaner", {
            let loops = config.loops.clone();
            boxed(move |s, st| tokens::run_cleaner(s, loops, st))
        }));
    }
    tasks
        .into_iter()
        .map(|(name, run)| {
            tracing::info!(controller = name, "starting controller");
            let (shared, stop) = (shared.clone(), stop.clone());
            let credentials = credentials.cloned();
            tokio::spawn(async move {
                let shared = match (&credentials, credentials::account_of(name)) {
                    (Some(c), Some(credentials::Account::ServiceAccount(account))) => {
                        match c.client(account).await {
                            Some(client) => Arc::new(shared.with_client(client)),
                            None => return,
                        }
                    }
                    _ => shared,
                };
                run(shared, stop).await;
                tracing::info!(controller = name, "controller stopped");
            })
        })
        .collect()
}

/// How a controller loop is started: with its context and the term's stop signal.
type LoopFn =
    Box<dyn FnOnce(Arc<util::Shared>, watch::Receiver<bool>) -> BoxFuture<'static, ()> + Send>;

fn boxed<F, Fut>(f: F) -> LoopFn
where
    F: FnOnce(Arc<util::Shared>, watch::Receiver<bool>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Box::new(move |s, st| Box::pin(f(s, st)))
}
