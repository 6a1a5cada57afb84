//! `rk3s server`: the control plane in one process.
//!
//! The datastore is an in-process [`rk3s_datastore::Store`]; the apiserver and, with
//! `--datastore-listen`, the etcd v3 endpoint over the same store run as supervised components
//! ([`crate::supervise`]). Once `/readyz` answers, the admin kubeconfig is written and one line
//! says so. The scheduler and controller (issue #5) and the node half (kubelet, containerd,
//! networking) are not built yet.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use rk3s_apiserver::{Apiserver, Pki, PkiOptions, ServiceCidr};
use rk3s_datastore::Store;

use crate::config::{ConfigError, ServerConfig};
use crate::kubeconfig;
use crate::supervise::{Backoff, BoxError, Component, Running, StartError, Stop, Supervisor};

/// How long the API may take to answer `/readyz` after it started listening.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the supervisor asks the running apiserver's `/livez`.
const LIVENESS_PERIOD: Duration = Duration::from_secs(10);
/// Failed `/livez` answers in a row after which the apiserver is restarted.
const LIVENESS_FAILURES: u32 = 3;

/// Why `rk3s server` could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The datastore cannot be reached (the message names the endpoint, password hidden).
    #[error(transparent)]
    Datastore(#[from] rk3s_datastore::Error),
    /// The serving certificate cannot be loaded or created.
    #[error("apiserver certificates: {0}")]
    Tls(rk3s_apiserver::Error),
    /// A component failed to start (port taken, ...).
    #[error(transparent)]
    Start(#[from] StartError),
    /// The API never answered `/readyz` with `ok`.
    #[error("the API at {url} did not become ready within {timeout:?}: {last}")]
    NotReady {
        url: String,
        timeout: Duration,
        last: String,
    },
    #[error(transparent)]
    Kubeconfig(#[from] kubeconfig::WriteError),
    /// The join token (`--token`, `<data-dir>/server/token`) is unusable.
    #[error("token: {0}")]
    Token(#[from] rk3s_apiserver::JoinTokenError),
    /// `--secrets-encryption`: the configuration cannot be read or created.
    #[error("secrets encryption: {0}")]
    Encryption(String),
}

/// Runs the control plane until `shutdown` completes, then stops the components (in-flight
/// requests are finished) and closes the datastore. A failure to start is an error; a component
/// that fails later is restarted with backoff.
pub async fn run_server(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    config.validate()?;
    let datastore = config.datastore();
    let endpoint = datastore.validate().map_err(|e| ConfigError::Invalid {
        key: "datastore-endpoint",
        reason: e.to_string(),
    })?;
    tracing::info!(
        data_dir = %config.data_dir.display(),
        datastore = %endpoint,
        listen = %config.listen_addr(),
        "starting rk3s server"
    );
    announce_missing_parts(&config);

    tokio::pin!(shutdown);
    let store = tokio::select! {
        store = rk3s_datastore::connect(&datastore) => store?,
        _ = &mut shutdown => {
            tracing::info!("stopped before the datastore was connected");
            return Ok(());
        }
    };
    let result = run_with_store(&config, store.clone(), shutdown).await;
    store.close().await;
    if result.is_ok() {
        tracing::info!("rk3s server stopped");
    }
    result
}

/// Says once what this server does not run yet.
fn announce_missing_parts(config: &ServerConfig) {
    if config.disable_agent {
        tracing::info!(
            "--disable-agent: running the control plane only (the node half of rk3s server — \
             kubelet, containerd, networking — is not built yet anyway)"
        );
    } else {
        tracing::info!(
            "the node half of rk3s server (kubelet, containerd, networking) is not built yet: \
             this server runs the control plane only, as with --disable-agent"
        );
    }
    tracing::info!(
        "the scheduler and controller-manager are not built yet (issue #5): pods stay pending \
         and no controllers run"
    );
}

async fn run_with_store(
    config: &ServerConfig,
    store: Store,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let cidr: ServiceCidr =
        config
            .service_cidr
            .parse()
            .map_err(|reason: String| ConfigError::Invalid {
                key: "service-cidr",
                reason,
            })?;
    let tls_dir = config.tls_dir();
    let opts = PkiOptions {
        node_name: config.node_name.clone(),
        node_ips: vec![config.bind_address],
        tls_sans: config.tls_san.clone(),
        service_ip: std::net::IpAddr::V4(cidr.first()),
    };
    let pki = tokio::task::spawn_blocking(move || Pki::load_or_create(&tls_dir, &opts))
        .await
        .map_err(|e| {
            ServerError::Tls(rk3s_apiserver::Error::Tls(format!(
                "certificate task failed: {e}"
            )))
        })?
        .map_err(ServerError::Tls)?;
    let encryption = encryption(config)?;
    let ca_pem = pki.server_ca.cert_pem.clone();
    // The join token agents present (`<data-dir>/server/token`, created on first start).
    let token = rk3s_apiserver::load_or_create_join_token(
        &config.data_dir.join("server"),
        &ca_pem,
        config.token.as_deref(),
    )?;
    let admin_kubeconfig = pki.admin_kubeconfig(&config.api_url());

    let mut components = Vec::new();
    if let Some(addr) = config.datastore_listen {
        components.push(etcd_endpoint(store.clone(), addr));
    }
    components.push(apiserver(
        store,
        pki,
        token,
        encryption,
        cidr,
        config.listen_addr(),
        config.local_api_addr(),
    ));
    let supervisor = Supervisor::start(components, Backoff::default()).await?;

    tokio::pin!(shutdown);
    let ready = tokio::select! {
        ready = wait_ready(config, &ca_pem) => ready,
        _ = &mut shutdown => {
            tracing::info!("shutting down before the API was ready");
            supervisor.shutdown().await;
            return Ok(());
        }
    };
    let written = ready.and_then(|()| {
        kubeconfig::write(
            &config.write_kubeconfig,
            &admin_kubeconfig,
            config.write_kubeconfig_mode,
        )
        .map_err(ServerError::from)
    });
    if let Err(err) = written {
        supervisor.shutdown().await;
        return Err(err);
    }
    tracing::info!(
        "rk3s server ready: kubeconfig {}, API {}",
        config.write_kubeconfig.display(),
        config.api_url()
    );

    shutdown.await;
    tracing::info!("shutting down: finishing in-flight requests");
    supervisor.shutdown().await;
    Ok(())
}

/// `--secrets-encryption`: the configuration in `<data-dir>/server/cred` (generated on first
/// start). Without the flag nothing is encrypted, as K3s (a datastore with encrypted Secrets
/// then answers them with an error).
fn encryption(config: &ServerConfig) -> Result<rk3s_apiserver::Transformer, ServerError> {
    let path = crate::secrets_encrypt::config_path(&config.data_dir);
    if !config.secrets_encryption {
        if path.exists() {
            tracing::warn!(
                path = %path.display(),
                "an encryption configuration exists but --secrets-encryption is off: \
                 encrypted Secrets cannot be read"
            );
        }
        return Ok(rk3s_apiserver::Transformer::identity());
    }
    crate::secrets_encrypt::load_or_create(&config.data_dir)
        .and_then(|c| rk3s_apiserver::Transformer::new(&c).map_err(anyhow::Error::from))
        .map_err(|e| ServerError::Encryption(format!("{e:#}")))
}

/// Polls `/readyz` until it answers `ok`.
async fn wait_ready(config: &ServerConfig, ca_pem: &str) -> Result<(), ServerError> {
    let addr = config.local_api_addr();
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    let mut delay = Duration::from_millis(20);
    loop {
        let last = match kubeconfig::readyz(addr, ca_pem).await {
            Ok(()) => return Ok(()),
            Err(err) => err.to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(ServerError::NotReady {
                url: config.api_url(),
                timeout: READY_TIMEOUT,
                last,
            });
        }
        tracing::debug!(%last, "API not ready yet");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

/// The apiserver on the shared store. While it runs, its `/livez` is asked every
/// [`LIVENESS_PERIOD`]: a server that stops answering is reported and restarted.
fn apiserver(
    store: Store,
    pki: Pki,
    token: rk3s_apiserver::JoinToken,
    encryption: rk3s_apiserver::Transformer,
    cidr: ServiceCidr,
    listen: SocketAddr,
    local: SocketAddr,
) -> Component {
    Component::new("apiserver", move |stop: Stop| {
        let ca_pem = pki.server_ca.cert_pem.clone();
        let server = Apiserver::new(store.clone())
            .pki(pki.clone())
            .join_token(token.clone())
            .encryption(encryption.clone())
            .service_cidr(cidr);
        async move {
            let running = server.serve(listen).await.map_err(BoxError::from)?;
            let run: Running = Box::pin(async move {
                let mut failures = 0;
                let stopped = stop.stopped();
                tokio::pin!(stopped);
                loop {
                    tokio::select! {
                        _ = &mut stopped => break,
                        _ = tokio::time::sleep(LIVENESS_PERIOD) => {}
                    }
                    match kubeconfig::health(local, &ca_pem, "/livez").await {
                        Ok(()) => failures = 0,
                        Err(err) => {
                            failures += 1;
                            tracing::warn!(%err, failures, "apiserver /livez failed");
                            if failures >= LIVENESS_FAILURES {
                                running.shutdown().await;
                                return Err(format!(
                                    "/livez failed {failures} times in a row: {err}"
                                )
                                .into());
                            }
                        }
                    }
                }
                running.shutdown().await;
                Ok(())
            });
            Ok(run)
        }
    })
}

/// The etcd v3 endpoint over the shared store (`--datastore-listen`).
fn etcd_endpoint(store: Store, addr: SocketAddr) -> Component {
    Component::new("etcd-endpoint", move |stop: Stop| {
        let store = store.clone();
        async move {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| BoxError::from(format!("cannot listen on {addr}: {e}")))?;
            tracing::info!(listen = %addr, "serving the etcd v3 API over the datastore");
            let run: Running = Box::pin(async move {
                rk3s_datastore::server::serve(store, listener, stop.stopped())
                    .await
                    .map_err(BoxError::from)
            });
            Ok(run)
        }
    })
}
