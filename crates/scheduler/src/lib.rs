//! The rk3s pod scheduler: binds pending pods to nodes as upstream kube-scheduler does.
//!
//! A client of the apiserver only: nodes, pods, namespaces and the volume objects (PVs, PVCs,
//! StorageClasses) come from watches into an in-memory [`cache`], pending pods wait in the
//! [`queue`], the [`plugins`] filter and score nodes, [`preemption`] makes room for important
//! pods, claims are pre-bound or given a node for their provisioner (VolumeBinding's PreBind),
//! and bindings go through `POST pods/<name>/binding`. [`leader`] elects one active scheduler through a Lease.
//! The secure port (`secure-port`, 10259) serves `/healthz`, `/livez`, `/readyz` (checks
//! `ping` and, with leader election, `leaderElection`) and `/metrics` ([`metrics`]).

// Unit tests may unwrap.
#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::future::Future;
use std::net::SocketAddr;

use rk3s_common::health::Checks;
use rk3s_common::serving::SecureServing;

pub mod cache;
pub mod config;
pub mod labels;
pub mod metrics;
pub mod plugins;
pub mod preemption;
pub mod quantity;
pub mod queue;
pub mod resources;
pub mod scheduler;

pub use config::Config;
pub use metrics::Metrics;
/// Lease leader election, shared with the controller manager (`rk3s-common`).
pub use rk3s_common::leader;

/// Name of the component, as its binary and log lines call it.
pub const COMPONENT: &str = "rk3s-scheduler";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The secure port cannot be bound (the message names the address) or its certificate
    /// cannot be made.
    #[error(transparent)]
    Serve(#[from] rk3s_common::serving::ServeError),
    #[error("watch of {what} failed: {source}")]
    Watch {
        what: &'static str,
        source: kube::runtime::watcher::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs the scheduler until `shutdown` completes: [`start`], then [`Started::run`].
pub async fn run(
    config: Config,
    client: kube::Client,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    start(config).await?.run(client, shutdown).await
}

/// Checks the configuration and binds the secure port (unless `secure-port` is 0), so that a
/// taken port is an error before anything runs.
pub async fn start(config: Config) -> Result<Started> {
    config.validate()?;
    let serving = SecureServing::bind(&config.serving()).await?;
    Ok(Started {
        config,
        serving,
        metrics: Metrics::new(),
    })
}

/// A scheduler whose secure port is bound, not running yet.
#[derive(Debug)]
pub struct Started {
    config: Config,
    serving: Option<SecureServing>,
    metrics: Metrics,
}

impl Started {
    /// Where the secure port listens, if it does.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.serving.as_ref().map(SecureServing::local_addr)
    }

    /// What `/metrics` serves.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Serves the secure port and runs the scheduler until `shutdown` completes: elects a
    /// leader first if configured, then schedules; if the lease is lost, stops scheduling and
    /// campaigns again.
    pub async fn run(self, client: kube::Client, shutdown: impl Future<Output = ()>) -> Result<()> {
        let Started {
            config,
            serving,
            metrics,
        } = self;
        let checks = Checks::new();
        let status = leader::LeaderStatus::default();
        if config.leader_elect {
            let lease = config.lease_config();
            let check = status.clone();
            checks.add("leaderElection", move || {
                check.check(&lease, leader::HEALTH_TOLERANCE)
            });
            metrics.follow_leader(&config.leader_elect_resource_name, status.clone());
        }
        // Stops serving when dropped, however this returns.
        let _serving = serving.map(|s| s.serve(checks, metrics.registry().clone()));
        let scheduler = |config: Config| {
            scheduler::Scheduler::new(config, client.clone()).with_metrics(metrics.clone())
        };
        if !config.leader_elect {
            return scheduler(config).run(shutdown).await;
        }
        let mut elector =
            leader::LeaderElector::new(client.clone(), config.lease_config()).with_status(status);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                () = elector.acquire() => {}
            }
            tracing::info!(identity = elector.identity(), "became leader; scheduling");
            let sched = scheduler(config.clone());
            tokio::select! {
                _ = &mut shutdown => {
                    elector.release().await;
                    return Ok(());
                }
                () = elector.keep() => {
                    tracing::warn!("lost the lease; stopped scheduling");
                }
                r = sched.run(std::future::pending::<()>()) => return r,
            }
        }
    }
}
