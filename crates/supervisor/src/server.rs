//! `rk3s server`: the control plane in one process.
//!
//! The datastore is an in-process [`rk3s_datastore::Store`]; the apiserver and, with
//! `--datastore-listen`, the etcd v3 endpoint over the same store run as supervised components
//! ([`crate::supervise`]). Once `/readyz` answers, the admin kubeconfig is written and one line
//! says so, and the scheduler and the controller manager start as supervised components too,
//! each a client of the apiserver over loopback HTTPS with its own identity
//! (`system:kube-scheduler`, `system:kube-controller-manager`; their kubeconfigs are in
//! `<data-dir>/server/cred/`). Both take their Lease before working, so several servers on one
//! datastore run one of each. The node half (kubelet, containerd, networking) is not built yet.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rk3s_apiserver::{Apiserver, Pki, PkiOptions, ServiceCidr};
use rk3s_datastore::Store;

use crate::bootstrap;
use crate::config::{ComponentArgs, ConfigError, ServerConfig};
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
    /// The CAs shared through the datastore cannot be read or stored.
    #[error(transparent)]
    Bootstrap(#[from] bootstrap::BootstrapError),
    /// The join token (`--token`, `<data-dir>/server/token`) is unusable.
    #[error("token: {0}")]
    Token(#[from] rk3s_apiserver::JoinTokenError),
    /// `--secrets-encryption`: the configuration cannot be read or created.
    #[error("secrets encryption: {0}")]
    Encryption(String),
}

/// The kubeconfig of the scheduler, under [`ServerConfig::cred_dir`] (K3s' name).
pub const SCHEDULER_KUBECONFIG: &str = "scheduler.kubeconfig";
/// The kubeconfig of the controller manager, under [`ServerConfig::cred_dir`] (K3s' name).
pub const CONTROLLER_KUBECONFIG: &str = "controller.kubeconfig";

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
    if config.disable_scheduler {
        tracing::info!("--disable-scheduler: not running the scheduler");
    }
    if config.disable_controller_manager {
        tracing::info!("--disable-controller-manager: not running the controller manager");
    }
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
    // The cluster's secret (`--token`, else the token file of an earlier start) encrypts the
    // CAs the servers of one datastore share.
    let server_dir = config.data_dir.join("server");
    let secret = cluster_secret(config.token.as_deref(), &server_dir)?;
    let pki = match &secret {
        None => {
            bootstrap::refuse_if_present(&store).await?;
            load_pki(tls_dir.clone(), opts).await?
        }
        Some(secret) => shared_pki(&store, secret, tls_dir.clone(), opts).await?,
    };
    let encryption = encryption(config)?;
    let ca_pem = pki.server_ca.cert_pem.clone();
    // The join token agents present (`<data-dir>/server/token`, created on first start).
    let token =
        rk3s_apiserver::load_or_create_join_token(&server_dir, &ca_pem, config.token.as_deref())?;
    // `--agent-token`: agents only (`<data-dir>/server/agent-token`).
    let agent_token =
        rk3s_apiserver::load_agent_token(&server_dir, &ca_pem, config.agent_token.as_deref())?;
    let mut extra = config.apiserver_args()?;
    // The controller manager runs each loop as its own service account, so its identity gets
    // upstream's `system:kube-controller-manager` role only (a leftover union binding is
    // deleted); with `--disable-controller-manager` an external rk3s-controller may still run
    // every loop on its own identity.
    extra.auth.controller_manager_union_role = config.disable_controller_manager;
    if secret.is_none() {
        // A token made just now: the CAs go to the datastore for the servers that join with it.
        if bootstrap::store(&store, &token.password, &tls_dir).await? {
            tracing::info!(
                "stored the cluster's certificate authorities in the datastore, encrypted with \
                 the token"
            );
        }
    }
    let admin_kubeconfig = pki.admin_kubeconfig(&config.api_url());
    let api_url = config.api_url();
    let cred = config.cred_dir();
    let scheduler_kubeconfig = rk3s_apiserver::kubeconfig(&api_url, &ca_pem, &pki.scheduler);
    let controller_kubeconfig = rk3s_apiserver::kubeconfig(&api_url, &ca_pem, &pki.controller);
    kubeconfig::write(
        &cred.join(SCHEDULER_KUBECONFIG),
        &scheduler_kubeconfig,
        0o600,
    )?;
    kubeconfig::write(
        &cred.join(CONTROLLER_KUBECONFIG),
        &controller_kubeconfig,
        0o600,
    )?;

    let mut components = Vec::new();
    if let Some(addr) = config.datastore_listen {
        components.push(etcd_endpoint(store.clone(), addr));
    }
    // `--secrets-encryption`: the configuration is shared with the other servers of the
    // datastore, sealed with the token, next to the CAs' bootstrap data.
    let shared_encryption = rk3s_apiserver::secrets_encrypt::SharedEncryption {
        key: format!("{}/secrets-encryption", bootstrap::key(&token.password)),
        secret: token.password.clone(),
        server: node_name(config),
    };
    // The scheduler's and controller manager's state, as their supervisor reports it, for
    // `kubectl get componentstatuses`.
    let component_health = rk3s_apiserver::ComponentHealth::new();
    components.push(apiserver(ApiserverSettings {
        component_health: component_health.clone(),
        store,
        pki,
        token,
        shared_encryption,
        agent_token,
        encryption,
        extra,
        cidr,
        listen: config.listen_addr(),
        local: config.local_api_addr(),
    }));
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

    // The API clients start once the API answers, so that their first requests succeed.
    let identity = leader_identity(config);
    let mut clients = Vec::new();
    if !config.disable_scheduler {
        clients.push(scheduler(
            scheduler_kubeconfig,
            identity.clone(),
            config.scheduler_args()?,
        ));
    }
    if !config.disable_controller_manager {
        clients.push(controller(
            controller_kubeconfig,
            identity,
            &tls_dir,
            config.controller_manager_args()?,
        ));
    }
    let clients = tokio::select! {
        started = Supervisor::start_reporting(
            clients,
            Backoff::default(),
            std::sync::Arc::new(move |name, health| component_health.report(name, health)),
        ) => started,
        _ = &mut shutdown => {
            supervisor.shutdown().await;
            return Ok(());
        }
    };
    let clients = match clients {
        Ok(clients) => clients,
        Err(err) => {
            supervisor.shutdown().await;
            return Err(err.into());
        }
    };

    // systemd (`Type=notify`): ready once the API answers and its clients run.
    rk3s_common::notify::ready(&format!("serving the API on {}", config.api_url()));
    shutdown.await;
    tracing::info!("shutting down: finishing in-flight requests");
    clients.shutdown().await;
    supervisor.shutdown().await;
    Ok(())
}

/// `--secrets-encryption`: the configuration file in `<data-dir>/server/cred` (generated on
/// first start), which the apiserver loads and `rk3s secrets-encrypt` manages through it.
/// Without the flag nothing is encrypted, as K3s (a datastore with encrypted Secrets then
/// answers them with an error).
fn encryption(config: &ServerConfig) -> Result<Option<PathBuf>, ServerError> {
    let path = crate::secrets_encrypt::config_path(&config.data_dir);
    if !config.secrets_encryption {
        if path.exists() {
            tracing::warn!(
                path = %path.display(),
                "an encryption configuration exists but --secrets-encryption is off: \
                 encrypted Secrets cannot be read"
            );
        }
        return Ok(None);
    }
    crate::secrets_encrypt::load_or_create(&config.data_dir)
        .map_err(|e| ServerError::Encryption(format!("{e:#}")))?;
    Ok(Some(path))
}

/// The holder identity this server's scheduler and controller manager put in their Leases:
/// `<node name>_<random>`, as upstream's `<hostname>_<uuid>`.
fn leader_identity(config: &ServerConfig) -> String {
    format!("{}_{:016x}", node_name(config), rand::random::<u64>())
}

/// `--node-name`, else the host name.
fn node_name(config: &ServerConfig) -> String {
    config.node_name.clone().unwrap_or_else(|| {
        hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "rk3s".into())
    })
}

/// A client of the API from a kubeconfig `rk3s server` rendered (loopback HTTPS, the server
/// CA only, a client certificate).
async fn client(kubeconfig: &str) -> Result<kube::Client, BoxError> {
    Ok(kube::Client::try_from(kube_config(kubeconfig).await?)?)
}

/// The kube config of a kubeconfig `rk3s server` rendered.
async fn kube_config(kubeconfig: &str) -> Result<kube::Config, BoxError> {
    let kc = kube::config::Kubeconfig::from_yaml(kubeconfig)?;
    Ok(
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?,
    )
}

/// The scheduler, as `system:kube-scheduler`, electing a leader through
/// `kube-system/kube-scheduler`; its secure port (10259 on 127.0.0.1 unless
/// `--kube-scheduler-arg` says otherwise) is bound when it starts, so a taken port is a
/// startup error.
fn scheduler(kubeconfig: String, identity: String, args: ComponentArgs) -> Component {
    Component::new("scheduler", move |stop: Stop| {
        let kubeconfig = kubeconfig.clone();
        let defaults = rk3s_scheduler::Config::default();
        let config = rk3s_scheduler::Config {
            leader_elect_identity: Some(identity.clone()),
            secure_port: args.secure_port.unwrap_or(defaults.secure_port),
            bind_address: args.bind_address.unwrap_or(defaults.bind_address),
            ..defaults
        };
        async move {
            let started = rk3s_scheduler::start(config).await?;
            let client = client(&kubeconfig).await?;
            let run: Running = Box::pin(async move {
                started
                    .run(client, stop.stopped())
                    .await
                    .map_err(BoxError::from)
            });
            Ok(run)
        }
    })
}

/// The controller manager, as `system:kube-controller-manager`, electing a leader through
/// `kube-system/kube-controller-manager` (its secure port, 10257 on 127.0.0.1 unless
/// `--kube-controller-manager-arg` says otherwise, bound when it starts); each loop runs as its own service account
/// (`--use-service-account-credentials`, which K3s sets). As K3s: legacy service-account
/// tokens are signed with `server/tls/service.key` and carry `server/tls/server-ca.crt`.
fn controller(
    kubeconfig: String,
    identity: String,
    tls_dir: &std::path::Path,
    args: ComponentArgs,
) -> Component {
    let key = tls_dir.join("service.key");
    let root_ca = tls_dir.join("server-ca.crt");
    Component::new("controller-manager", move |stop: Stop| {
        let kubeconfig = kubeconfig.clone();
        let defaults = rk3s_controller::Config::default();
        let config = rk3s_controller::Config {
            identity: Some(identity.clone()),
            use_service_account_credentials: true,
            service_account_private_key_file: Some(key.clone()),
            root_ca_file: Some(root_ca.clone()),
            secure_port: args.secure_port.unwrap_or(defaults.secure_port),
            bind_address: args.bind_address.unwrap_or(defaults.bind_address),
            ..defaults
        };
        async move {
            let started = rk3s_controller::start(config).await?;
            let connection = rk3s_controller::Connection::new(kube_config(&kubeconfig).await?)?;
            let run: Running = Box::pin(async move {
                started
                    .run(connection, stop.stopped())
                    .await
                    .map_err(BoxError::from)
            });
            Ok(run)
        }
    })
}

/// Loads or creates the PKI in `tls_dir` (a blocking task: key generation takes a while).
async fn load_pki(tls_dir: PathBuf, opts: PkiOptions) -> Result<Pki, ServerError> {
    tokio::task::spawn_blocking(move || Pki::load_or_create(&tls_dir, &opts))
        .await
        .map_err(|e| {
            ServerError::Tls(rk3s_apiserver::Error::Tls(format!(
                "certificate task failed: {e}"
            )))
        })?
        .map_err(ServerError::Tls)
}

/// The secret part of the cluster's token: `--token` (either form), else the token file an
/// earlier start wrote; `None` on a first start without a token.
fn cluster_secret(
    configured: Option<&str>,
    server_dir: &std::path::Path,
) -> Result<Option<String>, ServerError> {
    let text = match configured.map(str::trim).filter(|t| !t.is_empty()) {
        Some(t) => t.to_string(),
        None => match std::fs::read_to_string(server_dir.join("token")) {
            Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
            _ => return Ok(None),
        },
    };
    let token = rk3s_apiserver::JoinToken::parse(&text)?;
    if token.is_bootstrap() {
        return Err(rk3s_apiserver::JoinTokenError::Bootstrap.into());
    }
    Ok(Some(token.password))
}

/// The PKI with the CAs every server of the datastore shares ([`bootstrap`]): fetched if a
/// server stored them for this token, else ours, stored for the next servers.
async fn shared_pki(
    store: &Store,
    token: &str,
    tls_dir: PathBuf,
    opts: PkiOptions,
) -> Result<Pki, ServerError> {
    if bootstrap::fetch(store, token, &tls_dir).await? == bootstrap::Fetched::Written {
        tracing::info!("using the cluster's certificate authorities from the datastore");
        return load_pki(tls_dir, opts).await;
    }
    let pki = load_pki(tls_dir.clone(), opts.clone()).await?;
    if bootstrap::store(store, token, &tls_dir).await? {
        tracing::info!(
            key = bootstrap::key(token),
            "stored the cluster's certificate authorities in the datastore, encrypted with the token"
        );
        return Ok(pki);
    }
    // Another server stored its CAs first: use those.
    bootstrap::fetch(store, token, &tls_dir).await?;
    tracing::info!("using the cluster's certificate authorities from the datastore");
    load_pki(tls_dir, opts).await
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

/// What the apiserver component is made of.
struct ApiserverSettings {
    store: Store,
    pki: Pki,
    token: rk3s_apiserver::JoinToken,
    agent_token: Option<rk3s_apiserver::JoinToken>,
    /// `--secrets-encryption`'s configuration file.
    encryption: Option<PathBuf>,
    /// How that configuration is shared with the other servers.
    shared_encryption: rk3s_apiserver::secrets_encrypt::SharedEncryption,
    /// `--kube-apiserver-arg`.
    extra: crate::config::ApiserverArgs,
    cidr: ServiceCidr,
    listen: SocketAddr,
    local: SocketAddr,
    /// The other components' health, for componentstatuses.
    component_health: rk3s_apiserver::ComponentHealth,
}

/// The apiserver on the shared store. While it runs, its `/livez` is asked every
/// [`LIVENESS_PERIOD`]: a server that stops answering is reported and restarted.
fn apiserver(settings: ApiserverSettings) -> Component {
    let ApiserverSettings {
        store,
        pki,
        token,
        shared_encryption,
        agent_token,
        encryption,
        extra,
        cidr,
        listen,
        local,
        component_health,
    } = settings;
    Component::new("apiserver", move |stop: Stop| {
        let ca_pem = pki.server_ca.cert_pem.clone();
        let mut server = Apiserver::new(store.clone())
            .pki(pki.clone())
            .join_token(token.clone())
            .auth(extra.auth.clone())
            .service_cidr(cidr)
            .component_health(component_health.clone());
        if let Some(agent) = &agent_token {
            server = server.agent_token(agent.clone());
        }
        let (encryption, audit) = (encryption.clone(), extra.audit.clone());
        let shared_encryption = shared_encryption.clone();
        async move {
            let server = match encryption {
                // Read again at every start: `rk3s secrets-encrypt` may have changed it.
                Some(path) => server
                    .encryption_config_file(path)
                    .map_err(BoxError::from)?
                    .shared_encryption(shared_encryption),
                None => server,
            };
            let audit = rk3s_apiserver::audit::Audit::from_config(&audit)
                .map_err(|e| BoxError::from(format!("audit log: {e}")))?;
            let running = server
                .audit(audit)
                .serve(listen)
                .await
                .map_err(BoxError::from)?;
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
