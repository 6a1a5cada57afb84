//! Serving: the HTTPS listener (HTTP/1.1 and HTTP/2 by ALPN), the router, and the embeddable
//! [`Apiserver`] entry point.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{any, get};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rk3s_datastore::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::auth::{Auth, AuthConfig, PeerCert};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::pki::{Pki, PkiOptions};
use crate::services::ServiceCidr;

/// Largest request body accepted, as upstream (3 MiB).
pub(crate) const MAX_BODY: usize = 3 * 1024 * 1024;
/// How long open connections get to finish on shutdown.
const DRAIN: Duration = Duration::from_secs(5);
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What every request handler shares.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    /// The datastore, with encryption at rest.
    pub(crate) store: crate::storage::Store,
    pub(crate) metrics: Arc<Metrics>,
    /// Flips to `true` on shutdown; long requests (watches) end.
    pub(crate) shutdown: watch::Receiver<bool>,
    /// `host:port` clients reach this server at (for `/api`'s serverAddressByClientCIDRs).
    pub(crate) server_address: String,
    pub(crate) service_cidr: ServiceCidr,
    /// The served custom resources (CRDs), kept current by [`crate::crd::spawn`].
    pub(crate) crds: Arc<crate::crd::CustomRegistry>,
    /// Authentication and authorization.
    pub(crate) auth: Arc<Auth>,
    /// The audit log, if configured.
    pub(crate) audit: Option<Arc<crate::audit::Audit>>,
    /// Serves every watch (one datastore watch per watched storage prefix).
    pub(crate) watch_cache: Arc<crate::watch_cache::WatchCaches>,
    /// TLS towards kubelets (logs, exec, attach, port-forward, node proxy): see
    /// [`Pki::kubelet_client_config`].
    pub(crate) kubelet_tls: Arc<rustls::ClientConfig>,
    /// The join endpoints' PKI and token (`crate::join`).
    pub(crate) join: Arc<crate::join::JoinState>,
    /// `pods/proxy` and `services/proxy` may dial loopback pod IPs (stand-in pods in tests;
    /// upstream refuses them: see [`Apiserver::proxy_to_loopback`]).
    pub(crate) proxy_loopback: bool,
    /// Where componentstatuses learns the components' health: the embedder's reports, or
    /// probes of their secure ports.
    pub(crate) components: crate::rest::components::Components,
    bootstrapped: Arc<AtomicBool>,
}

impl AppState {
    pub(crate) fn bootstrapped(&self) -> bool {
        self.bootstrapped.load(Ordering::Acquire)
    }
}

fn router(state: AppState) -> Router {
    Router::new()
        // go-restful serves these roots with and without the trailing slash (the Python
        // client asks for `/version/`, `/api/`, `/apis/`).
        .route("/version", get(crate::health::version))
        .route("/version/", get(crate::health::version))
        .route("/healthz", get(crate::health::healthz))
        .route("/healthz/{*check}", get(crate::health::healthz_check))
        .route("/livez", get(crate::health::livez))
        .route("/livez/{*check}", get(crate::health::livez_check))
        .route("/readyz", get(crate::health::readyz))
        .route("/readyz/{*check}", get(crate::health::readyz_check))
        .route("/metrics", get(crate::health::metrics))
        .route(
            crate::auth::serviceaccount::OPENID_CONFIG_PATH,
            get(crate::auth::serviceaccount::discovery),
        )
        .route(
            crate::auth::serviceaccount::JWKS_PATH,
            get(crate::auth::serviceaccount::discovery),
        )
        .route("/openapi/v2", get(crate::openapi::v2))
        .route("/openapi/v3", get(crate::openapi::index))
        .route("/openapi/v3/{*path}", get(crate::openapi::group_version))
        .route("/api", any(crate::rest::serve))
        .route("/api/", any(crate::rest::serve))
        .route("/api/{*rest}", any(crate::rest::serve))
        .route("/apis", any(crate::rest::serve))
        .route("/apis/", any(crate::rest::serve))
        .route("/apis/{*rest}", any(crate::rest::serve))
        .fallback(|| async {
            (
                axum::http::StatusCode::NOT_FOUND,
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; charset=utf-8",
                )],
                "404 page not found\n",
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::middleware,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::audit::middleware,
        ))
        // K3s' join endpoints authenticate on their own (join token, node password).
        .merge(crate::join::routes())
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(
            tower_http::compression::CompressionLayer::new()
                .gzip(true)
                .compress_when(LargeResponses),
        )
        .with_state(state)
}

/// Responses worth compressing, as upstream's `APIResponseCompression`: complete bodies of at
/// least 128 KiB, when the client accepts gzip. Streams (watches) are never compressed, so
/// that each event reaches the client at once.
#[derive(Debug, Clone, Copy)]
struct LargeResponses;

impl tower_http::compression::Predicate for LargeResponses {
    fn should_compress<B>(&self, response: &axum::http::Response<B>) -> bool
    where
        B: axum::body::HttpBody,
    {
        response
            .body()
            .size_hint()
            .exact()
            .is_some_and(|n| n >= 128 * 1024)
    }
}

/// The apiserver as a library: run it on a [`Store`] in this process.
///
/// ```no_run
/// # async fn demo(store: rk3s_datastore::Store) -> rk3s_apiserver::Result<()> {
/// let running = rk3s_apiserver::Apiserver::new(store)
///     .serve("127.0.0.1:0".parse().expect("address"))
///     .await?;
/// println!("{} trusts {}", running.url(), running.ca_pem());
/// std::fs::write("admin.kubeconfig", running.admin_kubeconfig()).expect("written");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Apiserver {
    store: Store,
    pki: Option<Pki>,
    service_cidr: ServiceCidr,
    auth: AuthConfig,
    join_token: Option<crate::JoinToken>,
    agent_token: Option<crate::JoinToken>,
    encryption: Arc<crate::encryption::Transformer>,
    encryption_file: Option<std::path::PathBuf>,
    shared_encryption: Option<crate::secrets_encrypt::SharedEncryption>,
    audit: Option<Arc<crate::audit::Audit>>,
    proxy_loopback: bool,
    components: crate::rest::components::Components,
}

/// A running apiserver. Dropping it stops it too, without waiting.
#[derive(Debug)]
pub struct RunningApiserver {
    addr: SocketAddr,
    pki: Pki,
    shutdown: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Apiserver {
    /// Starts an apiserver on `listen` (use port 0 for any free port) with a fresh, in-memory
    /// PKI (see [`RunningApiserver::admin_kubeconfig`]) and the default service CIDR. Creates the system namespaces
    /// and the `kubernetes` Service if missing.
    pub async fn start(store: Store, listen: SocketAddr) -> Result<RunningApiserver> {
        Self::new(store).serve(listen).await
    }

    /// An apiserver on `store`, to configure and [`serve`](Apiserver::serve).
    pub fn new(store: Store) -> Self {
        Apiserver {
            store,
            pki: None,
            service_cidr: ServiceCidr::default(),
            auth: AuthConfig::default(),
            join_token: None,
            agent_token: None,
            encryption: Arc::default(),
            encryption_file: None,
            shared_encryption: None,
            audit: None,
            proxy_loopback: false,
            components: crate::rest::components::Components::default(),
        }
    }

    /// The health of the components that run beside this server (the scheduler and the
    /// controller manager of `rk3s server`), which `/api/v1/componentstatuses` lists with the
    /// datastore; the embedder keeps reporting into it.
    pub fn component_health(mut self, health: crate::ComponentHealth) -> Self {
        self.components = crate::rest::components::Components::Reported(health);
        self
    }

    /// Without [`component_health`](Apiserver::component_health), componentstatuses probes
    /// `https://<addr>/healthz` of each named component, as upstream does; by default the
    /// scheduler on 127.0.0.1:10259 and the controller manager on 127.0.0.1:10257. This sets
    /// other names and addresses (tests).
    pub fn component_probes(mut self, probes: Vec<(String, SocketAddr)>) -> Self {
        self.components = crate::rest::components::Components::Probed(probes);
        self
    }

    /// Let `pods/proxy` and `services/proxy` reach pods whose IP is a loopback address
    /// (default: refused with 400 `address not allowed`, as upstream, which dials only global
    /// unicast pod IPs). For tests and embedding, where stand-in "pods" listen on 127.0.0.x.
    pub fn proxy_to_loopback(mut self, allow: bool) -> Self {
        self.proxy_loopback = allow;
        self
    }

    /// Write an audit log (default: none; see [`crate::audit::Audit::from_config`]).
    pub fn audit(mut self, audit: Option<crate::audit::Audit>) -> Self {
        self.audit = audit.map(Arc::new);
        self
    }

    /// Encrypt the resources `transformer` covers at rest (default: nothing is encrypted;
    /// see [`crate::EncryptionConfiguration`]).
    pub fn encryption(mut self, transformer: crate::Transformer) -> Self {
        self.encryption = Arc::new(transformer);
        self
    }

    /// Encrypt at rest as the configuration file at `path` says (K3s' `--secrets-encryption`
    /// file), and let the server token manage it through `/v1-k3s/encrypt/*`
    /// ([`crate::secrets_encrypt`]), reloading it while serving.
    pub fn encryption_config_file(mut self, path: std::path::PathBuf) -> Result<Self> {
        let config = crate::EncryptionConfiguration::load(&path)
            .map_err(|e| Error::Encryption(e.to_string()))?;
        let transformer =
            crate::Transformer::new(&config).map_err(|e| Error::Encryption(e.to_string()))?;
        self.encryption = Arc::new(transformer);
        self.encryption_file = Some(path);
        Ok(self)
    }

    /// Share the [`encryption_config_file`](Apiserver::encryption_config_file)'s configuration
    /// with the other servers of the datastore, sealed with their common token (K3s' bootstrap
    /// data): at start the datastore's copy wins over the file, and a change made through any
    /// server reaches this one's file and transformer while it serves
    /// ([`crate::secrets_encrypt`]). Without a configuration file this does nothing.
    pub fn shared_encryption(mut self, shared: crate::secrets_encrypt::SharedEncryption) -> Self {
        self.shared_encryption = Some(shared);
        self
    }

    /// Also accept this agent token (`--agent-token`) on the join endpoints, for agents only
    /// (user `node`); the server token keeps working for both.
    pub fn agent_token(mut self, token: crate::JoinToken) -> Self {
        self.agent_token = Some(token);
        self
    }

    /// Accept this join token on K3s' join endpoints (`/v1-k3s/...`: kubelet certificates for
    /// joining agents). Without one, only nodes that already hold a kubelet certificate can use
    /// them. See [`crate::load_or_create_join_token`].
    pub fn join_token(mut self, token: crate::JoinToken) -> Self {
        self.join_token = Some(token);
        self
    }

    /// Serve with this PKI (default: a fresh one in memory, for the listen address).
    pub fn pki(mut self, pki: Pki) -> Self {
        self.pki = Some(pki);
        self
    }

    /// Authentication settings: static tokens, service-account token issuer and audiences.
    pub fn auth(mut self, auth: AuthConfig) -> Self {
        self.auth = auth;
        self
    }

    /// Allocate Service cluster IPs from this range (default 10.43.0.0/16).
    pub fn service_cidr(mut self, cidr: ServiceCidr) -> Self {
        self.service_cidr = cidr;
        self
    }

    /// Binds `listen`, bootstraps, and serves until [`RunningApiserver::shutdown`].
    pub async fn serve(self, listen: SocketAddr) -> Result<RunningApiserver> {
        let pki = match self.pki {
            Some(p) => p,
            None => Pki::generate(&PkiOptions {
                node_ips: vec![listen.ip()],
                service_ip: std::net::IpAddr::V4(self.service_cidr.first()),
                ..PkiOptions::default()
            })?,
        };
        let mut encryption = self.encryption;
        let shared = match (&self.encryption_file, self.shared_encryption) {
            (Some(path), Some(settings)) => {
                let shared = Arc::new(crate::secrets_encrypt::Shared::new(settings));
                let (config, revision) = shared
                    .start(&self.store, path)
                    .await
                    .map_err(|e| Error::Encryption(e.to_string()))?;
                encryption = Arc::new(
                    crate::Transformer::new(&config)
                        .map_err(|e| Error::Encryption(e.to_string()))?,
                );
                shared.report(&self.store, &config.hash()).await;
                Some((shared, revision))
            }
            _ => None,
        };
        let store = crate::storage::Store::new(
            self.store,
            crate::storage::SharedTransformer::new(encryption),
        );
        let acceptor = TlsAcceptor::from(pki.server_config()?);
        let proxy_issuer = Arc::new(pki.request_header_subject());
        let auth = Arc::new(Auth::new(&self.auth, &pki, store.clone())?);
        let kubelet_tls = pki.kubelet_client_config()?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| Error::Bind {
                addr: listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: listen,
            source,
        })?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let watch_cache = Arc::new(crate::watch_cache::WatchCaches::new(
            store.clone(),
            shutdown_rx.clone(),
        ));
        let state = AppState {
            store,
            metrics: Arc::new(Metrics::default()),
            shutdown: shutdown_rx.clone(),
            server_address: addr.to_string(),
            service_cidr: self.service_cidr,
            crds: Arc::default(),
            auth,
            audit: self.audit,
            watch_cache,
            kubelet_tls,
            join: Arc::new(crate::join::JoinState {
                pki: pki.clone(),
                token: self.join_token,
                agent_token: self.agent_token,
                encryption: self.encryption_file.clone().map(|path| {
                    crate::secrets_encrypt::SecretsEncryption::new(
                        path,
                        shared.as_ref().map(|(s, _)| s.clone()),
                    )
                }),
            }),
            proxy_loopback: self.proxy_loopback,
            components: self.components,
            bootstrapped: Arc::new(AtomicBool::new(false)),
        };
        crate::bootstrap::run(&state, addr).await?;
        crate::auth::rbac::start(&state).await?;
        crate::crd::initial_load(&state)
            .await
            .map_err(|e| Error::Bootstrap(e.message))?;
        crate::crd::spawn(state.clone());
        crate::services::spawn_cidr_controller(state.clone());
        if let (Some((shared, revision)), Some(path)) = (shared, self.encryption_file) {
            shared.spawn(state.store.clone(), path, revision, shutdown_rx.clone());
        }
        state.bootstrapped.store(true, Ordering::Release);
        tracing::info!(%addr, "apiserver listening");
        let app = router(state);
        let task = tokio::spawn(accept_loop(
            listener,
            acceptor,
            proxy_issuer,
            app,
            shutdown_rx,
        ));
        Ok(RunningApiserver {
            addr,
            pki,
            shutdown: shutdown_tx,
            task: Some(task),
        })
    }
}

impl RunningApiserver {
    /// `https://<addr>`, the server URL for a kubeconfig.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The CA certificate (PEM) that signed the serving certificate.
    pub fn ca_pem(&self) -> &str {
        &self.pki.server_ca.cert_pem
    }

    /// The PKI this server uses (to issue more client certificates).
    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    /// A kubeconfig for this server as `system:admin` (in `system:masters`).
    pub fn admin_kubeconfig(&self) -> String {
        self.pki.admin_kubeconfig(&self.url())
    }

    /// Stops accepting, ends watches, and waits for open requests to finish (at most a few
    /// seconds).
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for RunningApiserver {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    proxy_issuer: Arc<Option<Vec<u8>>>,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                conns.spawn(serve_connection(tcp, peer, acceptor.clone(), proxy_issuer.clone(), app.clone(), shutdown.clone()));
            }
        }
    }
    drop(listener);
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN + Duration::from_secs(1), drain)
        .await
        .is_err()
    {
        conns.abort_all();
    }
    tracing::info!("apiserver stopped");
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    proxy_issuer: Arc<Option<Vec<u8>>>,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    // The client certificate, if one was offered: rustls verified it against the client CA
    // or the request-header CA (a front proxy's).
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first());
    let peer_cert = PeerCert(
        leaf.and_then(|der| crate::pki::cert_identity(der)),
        leaf.zip(proxy_issuer.as_ref().as_ref())
            .is_some_and(|(der, subject)| crate::pki::issued_by(der, subject)),
    );
    let app = tower::Layer::layer(&axum::Extension(peer_cert), app);
    let app = tower::Layer::layer(&axum::Extension(crate::audit::PeerAddr(peer)), app);
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn =
        builder.serve_connection_with_upgrades(TokioIo::new(tls), TowerToHyperService::new(app));
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN, conn.as_mut()).await;
        }
    }
}
