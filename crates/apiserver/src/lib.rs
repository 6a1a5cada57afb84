//! The Kubernetes REST API server of rk3s.
//!
//! Every request is authenticated (client certificates of the client CA, bearer tokens,
//! service-account tokens; anonymous only for the health endpoints and `/version`) and
//! authorized by RBAC (`auth`), and kubelets' writes pass NodeRestriction. The PKI lives in
//! `<data-dir>/server/tls/` (`pki`), the join token in `<data-dir>/server/token`; K3s' join
//! endpoints (`/cacerts`, `/v1-k3s/...`, `join`) issue kubelet certificates to agents.
//!
//! - [`Config`] and [`run`]: the component entry point (K3s flag names; runs until shutdown).
//! - [`Apiserver::start`]: an apiserver on a [`rk3s_datastore::Store`] in this process, on any
//!   address (127.0.0.1:0 in tests); [`RunningApiserver`] gives its URL and CA.
//! - [`EmbeddedApiserver::start`]: the whole thing for tests of kube-rs controllers (what envtest
//!   is to Go): a temporary SQLite store, a free loopback port, a ready admin `kube::Client`,
//!   in milliseconds and without root. `examples/embedded.rs` shows a controller loop on it.
//!
//! Inside: [`registry`](crate) lists the served resources (from k8s-openapi types), `rest`
//! serves every verb generically over JSON objects in the store, `discovery` the discovery
//! documents, `health` the health and metrics endpoints.
//! See `ARCHITECTURE.md` in this crate for the invariants.

mod admission;
mod admission_policy;
mod admission_webhook;
mod apply;
pub mod audit;
mod auth;
mod bootstrap;
mod certificates;
mod config;
mod conversion;
mod crd;
mod defaults;
mod discovery;
mod embedded;
pub mod encryption;
mod error;
mod health;
mod join;
mod join_token;
mod metrics;
mod node_restriction;
mod openapi;
mod patch_meta;
mod pki;
mod protobuf;
mod quantity;
mod quota;
mod registry;
mod rest;
pub mod sealed;
pub mod secrets_encrypt;
mod selectors;
mod server;
mod services;
mod status;
mod storage;
mod time;
mod validation;
mod watch_cache;
mod webhook;

use std::future::Future;

pub use auth::bootstrap as bootstrap_token;
pub use auth::{AuthConfig, DEFAULT_ISSUER};
pub use config::Config;
pub use embedded::{EmbeddedApiserver, EmbeddedBuilder, EmbeddedError};
pub use encryption::{EncryptionConfiguration, Transformer};
pub use error::{Error, Result};
pub use health::GIT_VERSION;
pub use join_token::{
    JoinToken, JoinTokenError, ca_hash, load_agent_token,
    load_or_create as load_or_create_join_token,
};
pub use pki::{
    CertKey, Pki, PkiOptions, RENEW_BEFORE, SYSTEM_MASTERS, SYSTEM_NODES, kubeconfig,
    new_key_and_csr,
};
pub use rest::components::ComponentHealth;
pub use server::{Apiserver, RunningApiserver};
pub use services::ServiceCidr;
pub use storage::{Reencrypted, reencrypt};

/// Name of the component, as its binary and log lines call it.
pub const COMPONENT: &str = "rk3s-apiserver";

/// Runs the apiserver until `shutdown` completes: connects the datastore, loads or creates
/// the serving certificate in `<data-dir>/server/tls/`, creates the system namespaces, serves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    run_with(config, shutdown, |_| {}).await
}

/// [`run`], calling `serving` once the server is ready: it listens, the bootstrap objects
/// exist (`/readyz` is ok) and the kubeconfigs are written. The `rk3s-apiserver` binary tells
/// systemd `READY=1` there.
#[tracing::instrument(name = "apiserver", skip_all, fields(listen = %config.listen_addr()))]
pub async fn run_with(
    config: Config,
    shutdown: impl Future<Output = ()>,
    serving: impl FnOnce(&RunningApiserver),
) -> Result<()> {
    config.validate()?;
    let store = rk3s_datastore::connect(&config.datastore).await?;
    let service_cidr: ServiceCidr = config.service_cidr.parse().map_err(Error::InvalidConfig)?;
    let pki = Pki::load_or_create(&config.tls_dir(), &config.pki_options(&service_cidr))?;
    let token = load_or_create_join_token(
        &config.server_dir(),
        &pki.server_ca.cert_pem,
        config.token.as_deref(),
    )
    .map_err(|e| Error::InvalidConfig(format!("token: {e}")))?;
    let encryption = config.encryption()?;
    let audit = audit::Audit::from_config(&config.audit_config())
        .map_err(|e| Error::InvalidConfig(e.to_string()))?;
    let running = Apiserver::new(store.clone())
        .pki(pki)
        .join_token(token)
        .encryption(encryption)
        .audit(audit)
        .auth(config.auth_config()?)
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
    if let Err(e) = write_credentials(&config, &running) {
        running.shutdown().await;
        store.close().await;
        return Err(e);
    }
    serving(&running);
    shutdown.await;
    tracing::info!("shutting down");
    running.shutdown().await;
    store.close().await;
    Ok(())
}

/// Writes `<data-dir>/server/cred/{admin,controller,scheduler}.kubeconfig` (mode 0600), as K3s
/// does: what `rk3s-scheduler` and `rk3s-controller` run with when the components run as their
/// own processes (`--kubeconfig`), each with its own client certificate
/// (`system:kube-scheduler`, `system:kube-controller-manager`), and the admin's.
fn write_credentials(config: &Config, running: &RunningApiserver) -> Result<()> {
    let dir = config.cred_dir();
    std::fs::create_dir_all(&dir).map_err(|source| Error::File {
        path: dir.clone(),
        source,
    })?;
    let mut host = config.bind_address;
    if host.is_unspecified() {
        host = std::net::Ipv4Addr::LOCALHOST.into();
    }
    let url = format!(
        "https://{}",
        std::net::SocketAddr::new(host, running.local_addr().port())
    );
    let pki = running.pki();
    for (name, cert) in [
        ("admin", &pki.admin),
        ("controller", &pki.controller),
        ("scheduler", &pki.scheduler),
    ] {
        let path = dir.join(format!("{name}.kubeconfig"));
        pki::write_file(
            &path,
            &kubeconfig(&url, &pki.server_ca.cert_pem, cert),
            0o600,
        )?;
    }
    tracing::info!(dir = %dir.display(), "kubeconfigs written");
    Ok(())
}
