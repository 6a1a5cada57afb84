//! The Kubernetes REST API server of rk3s.
//!
//! **Security: until issue #4 (PKI, authentication, RBAC) lands, this API is served without
//! authentication or authorization.** Anyone who can reach the listener controls the cluster.
//! The listener binds 127.0.0.1 by default for that reason; the server logs a warning at start.
//!
//! - [`Config`] and [`run`]: the component entry point (K3s flag names; runs until shutdown).
//! - [`Apiserver::start`]: an apiserver on a [`rk3s_datastore::Store`] in this process, on any
//!   address (127.0.0.1:0 in tests); [`RunningApiserver`] gives its URL and CA.
//!
//! Inside: [`registry`](crate) lists the served resources (from k8s-openapi types), `rest`
//! serves every verb generically over JSON objects in the store, `discovery` the discovery
//! documents, `health` the health and metrics endpoints, `tls` the serving certificate.
//! See `ARCHITECTURE.md` in this crate for the invariants.

mod bootstrap;
mod config;
mod defaults;
mod discovery;
mod error;
mod health;
mod metrics;
mod openapi;
mod patch_meta;
mod protobuf;
mod registry;
mod rest;
mod selectors;
mod server;
mod services;
mod status;
mod time;
mod tls;
mod validation;
mod watch_cache;

use std::future::Future;

pub use config::Config;
pub use error::{Error, Result};
pub use health::GIT_VERSION;
pub use server::{Apiserver, RunningApiserver};
pub use services::ServiceCidr;
pub use tls::TlsMaterial;

/// Name of the component, as its binary and log lines call it.
pub const COMPONENT: &str = "rk3s-apiserver";

/// Runs the apiserver until `shutdown` completes: connects the datastore, loads or creates
/// the serving certificate in `<data-dir>/server/tls/`, creates the system namespaces, serves.
#[tracing::instrument(name = "apiserver", skip_all, fields(listen = %config.listen_addr()))]
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    config.validate()?;
    let store = rk3s_datastore::connect(&config.datastore).await?;
    let tls = TlsMaterial::load_or_create(&config.tls_dir(), &[config.bind_address])?;
    let service_cidr = config.service_cidr.parse().map_err(Error::InvalidConfig)?;
    let running = Apiserver::new(store.clone())
        .tls(tls)
        .service_cidr(service_cidr)
        .serve(config.listen_addr())
        .await;
    let running = match running {
        Ok(r) => r,
        Err(e) => {
            store.close().await;
            return Err(e);
        }
    };
    shutdown.await;
    tracing::info!("shutting down");
    running.shutdown().await;
    store.close().await;
    Ok(())
}
