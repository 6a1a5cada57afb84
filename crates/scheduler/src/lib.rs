//! The rk3s pod scheduler: binds pending pods to nodes as upstream kube-scheduler does.
//!
//! A client of the apiserver only: nodes, pods, namespaces and the volume objects (PVs, PVCs,
//! StorageClasses) come from watches into an in-memory [`cache`], pending pods wait in the
//! [`queue`], the [`plugins`] filter and score nodes, [`preemption`] makes room for important
//! pods, claims are pre-bound or given a node for their provisioner (VolumeBinding's PreBind),
//! and bindings go through `POST pods/<name>/binding`. [`leader`] elects one active scheduler through a Lease.

// Unit tests may unwrap.
#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::future::Future;

pub mod cache;
pub mod config;
pub mod labels;
pub mod plugins;
pub mod preemption;
pub mod quantity;
pub mod queue;
pub mod resources;
pub mod scheduler;

pub use config::Config;
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
    #[error("watch of {what} failed: {source}")]
    Watch {
        what: &'static str,
        source: kube::runtime::watcher::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs the scheduler until `shutdown` completes: elects a leader first if configured, then
/// schedules; if the lease is lost, stops scheduling and campaigns again.
pub async fn run(
    config: Config,
    client: kube::Client,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    config.validate()?;
    if !config.leader_elect {
        return scheduler::Scheduler::new(config, client)
            .run(shutdown)
            .await;
    }
    let mut elector = leader::LeaderElector::new(client.clone(), config.lease_config());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            () = elector.acquire() => {}
        }
        tracing::info!(identity = elector.identity(), "became leader; scheduling");
        let sched = scheduler::Scheduler::new(config.clone(), client.clone());
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
