//! [`EmbeddedApiserver`]: a real Kubernetes API inside this process, for tests of kube-rs
//! controllers (what envtest is to Go), in milliseconds, with no root, no containers and no
//! network beyond loopback.
//!
//! It is the same apiserver as `rk3s server` runs (authentication, RBAC, admission, watch
//! cache), over a SQLite datastore in a temporary directory (removed on drop), on
//! `127.0.0.1:<free port>`, with a fresh PKI. [`EmbeddedApiserver::client`] is a `kube::Client`
//! as `system:admin` (group `system:masters`); [`EmbeddedApiserver::client_as`] one for any
//! user, through RBAC. Nothing runs but the API: no scheduler, no controllers, no kubelet, so a
//! Deployment gets no pods unless the code under test makes them.
//!
//! ```no_run
//! # async fn demo() -> Result<(), rk3s_apiserver::EmbeddedError> {
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use kube::api::{Api, PostParams};
//!
//! let apiserver = rk3s_apiserver::EmbeddedApiserver::start().await?;
//! let client = apiserver.client().await?;
//! let configmaps: Api<ConfigMap> = Api::namespaced(client, "default");
//! let mut cm = ConfigMap::default();
//! cm.metadata.name = Some("hello".into());
//! configmaps.create(&PostParams::default(), &cm).await.expect("created");
//! // kubectl works too: KUBECONFIG=<apiserver.kubeconfig_path()> kubectl get cm
//! # Ok(()) }
//! ```

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rk3s_datastore::Store;

use crate::{Apiserver, AuthConfig, Pki, PkiOptions, RunningApiserver, ServiceCidr};

/// Why an embedded apiserver could not start, or a client could not be made for it.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// The apiserver (or its datastore) failed to start.
    #[error("embedded apiserver: {0}")]
    Start(#[from] crate::Error),
    /// A file or directory of the embedded apiserver.
    #[error("embedded apiserver: {what} {}: {source}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The kubeconfig did not make a kube-rs client.
    #[error("embedded apiserver: kube client: {0}")]
    Client(String),
    /// The apiserver was stopped ([`EmbeddedApiserver::stop`]) and not restarted.
    #[error("embedded apiserver: not serving")]
    NotServing,
}

/// Settings of an [`EmbeddedApiserver`]; [`EmbeddedApiserver::builder`] makes one.
#[derive(Debug, Clone)]
pub struct EmbeddedBuilder {
    data_dir: Option<PathBuf>,
    listen: SocketAddr,
    auth: AuthConfig,
    service_cidr: ServiceCidr,
    persistent_pki: bool,
}

impl EmbeddedBuilder {
    /// Keep the state (`state.db`, `tls/`, `kubeconfig`) in this directory, which must exist
    /// and is left in place, instead of a temporary one. An apiserver started again on the same
    /// directory sees the same objects.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Listen here instead of `127.0.0.1:0`.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Authentication settings (static token file, service-account issuer and audiences).
    pub fn auth(mut self, auth: AuthConfig) -> Self {
        self.auth = auth;
        self
    }

    /// Service cluster IPs from this range (default 10.43.0.0/16).
    pub fn service_cidr(mut self, cidr: ServiceCidr) -> Self {
        self.service_cidr = cidr;
        self
    }

    /// Keep the certificates in `<dir>/tls` (load them if there) instead of memory only, so
    /// that clients made before a restart on another data dir's server still trust it.
    pub fn persistent_pki(mut self, yes: bool) -> Self {
        self.persistent_pki = yes;
        self
    }

    /// Connects the datastore, starts the apiserver and writes the admin kubeconfig; returns
    /// once the API answers.
    pub async fn start(self) -> Result<EmbeddedApiserver, EmbeddedError> {
        let (dir, temp) = match self.data_dir {
            Some(dir) => (dir, None),
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("rk3s-embedded-")
                    .tempdir()
                    .map_err(|source| EmbeddedError::File {
                        what: "temp dir",
                        path: std::env::temp_dir(),
                        source,
                    })?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        let db = dir.join("state.db");
        let store = rk3s_datastore::connect(&rk3s_datastore::Config {
            data_dir: dir.clone(),
            ..rk3s_datastore::Config::for_endpoint(format!("sqlite://{}", db.display()))
        })
        .await
        .map_err(crate::Error::from)?;
        let mut node_ips = vec![self.listen.ip()];
        if !node_ips.contains(&Ipv4Addr::LOCALHOST.into()) {
            node_ips.push(Ipv4Addr::LOCALHOST.into());
        }
        let options = PkiOptions {
            node_ips,
            service_ip: self.service_cidr.first().into(),
            ..PkiOptions::default()
        };
        let pki = match self.persistent_pki {
            true => Pki::load_or_create(&dir.join("tls"), &options),
            false => Pki::generate(&options),
        };
        let pki = match pki {
            Ok(pki) => pki,
            Err(e) => {
                store.close().await;
                return Err(e.into());
            }
        };
        let mut embedded = EmbeddedApiserver {
            server: None,
            store,
            addr: self.listen,
            pki,
            auth: self.auth,
            service_cidr: self.service_cidr,
            kubeconfig: dir.join("kubeconfig"),
            dir,
            _temp: temp,
        };
        embedded.serve().await?;
        Ok(embedded)
    }
}

/// An apiserver serving on loopback inside this process; see the [module](self) docs.
/// Dropping it stops serving (without waiting) and removes its temporary directory.
#[derive(Debug)]
pub struct EmbeddedApiserver {
    server: Option<RunningApiserver>,
    store: Store,
    /// The requested address until the first start, then the bound one (kept on restarts).
    addr: SocketAddr,
    pki: Pki,
    auth: AuthConfig,
    service_cidr: ServiceCidr,
    kubeconfig: PathBuf,
    dir: PathBuf,
    // Last: removed after everything else is dropped.
    _temp: Option<tempfile::TempDir>,
}

impl EmbeddedApiserver {
    /// An apiserver with the defaults: temporary SQLite store, `127.0.0.1:0`, in-memory PKI.
    pub async fn start() -> Result<EmbeddedApiserver, EmbeddedError> {
        Self::builder().start().await
    }

    /// Settings to change before [`EmbeddedBuilder::start`].
    pub fn builder() -> EmbeddedBuilder {
        EmbeddedBuilder {
            data_dir: None,
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            auth: AuthConfig::default(),
            service_cidr: ServiceCidr::default(),
            persistent_pki: false,
        }
    }

    async fn serve(&mut self) -> Result<(), EmbeddedError> {
        let server = Apiserver::new(self.store.clone())
            .pki(self.pki.clone())
            .auth(self.auth.clone())
            .service_cidr(self.service_cidr)
            .serve(self.addr)
            .await?;
        self.addr = server.local_addr();
        let kubeconfig = server.admin_kubeconfig();
        std::fs::write(&self.kubeconfig, kubeconfig).map_err(|source| EmbeddedError::File {
            what: "kubeconfig",
            path: self.kubeconfig.clone(),
            source,
        })?;
        self.server = Some(server);
        Ok(())
    }

    /// A kube-rs client as `system:admin` (group `system:masters`: every permission).
    pub async fn client(&self) -> Result<kube::Client, EmbeddedError> {
        self.client_from_yaml(&self.pki.admin_kubeconfig(&self.url()))
            .await
    }

    /// A kube-rs client as `user` in `groups` (a client certificate of this server's client
    /// CA), subject to RBAC.
    pub async fn client_as(
        &self,
        user: &str,
        groups: &[&str],
    ) -> Result<kube::Client, EmbeddedError> {
        let cert = self.pki.issue_client_cert(user, groups)?;
        let yaml = crate::kubeconfig(&self.url(), &self.pki.server_ca.cert_pem, &cert);
        self.client_from_yaml(&yaml).await
    }

    async fn client_from_yaml(&self, yaml: &str) -> Result<kube::Client, EmbeddedError> {
        if self.server.is_none() {
            return Err(EmbeddedError::NotServing);
        }
        let kubeconfig = kube::config::Kubeconfig::from_yaml(yaml)
            .map_err(|e| EmbeddedError::Client(e.to_string()))?;
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .map_err(|e| EmbeddedError::Client(e.to_string()))?;
        kube::Client::try_from(config).map_err(|e| EmbeddedError::Client(e.to_string()))
    }

    /// The admin kubeconfig file (for kubectl: `KUBECONFIG=<this>`).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The admin kubeconfig (YAML).
    pub fn admin_kubeconfig(&self) -> String {
        self.pki.admin_kubeconfig(&self.url())
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The address it serves on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The CA certificate (PEM) clients trust.
    pub fn ca_pem(&self) -> &str {
        &self.pki.server_ca.cert_pem
    }

    /// Its PKI (CAs, client certificates; [`Pki::issue_client_cert`] for more users).
    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    /// The datastore under it (to look at what the API stored, or to share it).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The directory of its state (a temporary one unless [`EmbeddedBuilder::data_dir`]).
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// The running server, `None` after [`stop`](Self::stop).
    pub fn server(&self) -> Option<&RunningApiserver> {
        self.server.as_ref()
    }

    /// Stops serving (open requests finish, watches end); the store and the state stay, and
    /// [`restart`](Self::restart) serves again.
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }

    /// Stops serving, waits `down`, and serves again on the same address, store and PKI —
    /// what clients see of an apiserver restart.
    pub async fn restart(&mut self, down: Duration) -> Result<(), EmbeddedError> {
        self.stop().await;
        tokio::time::sleep(down).await;
        self.serve().await
    }

    /// Stops serving and closes the datastore.
    pub async fn shutdown(mut self) {
        self.stop().await;
        self.store.close().await;
    }
}
