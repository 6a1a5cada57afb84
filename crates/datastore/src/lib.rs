//! The rk3s datastore: a revisioned key-value log with the etcd v3 semantics (the kine idea),
//! on SQLite, Postgres or MySQL through sqlx, or on a real etcd.
//!
//! - [`Store`] is the handle the rest of rk3s uses: get, list, guarded create/update/delete,
//!   watch, compaction; [`Backend`] is the trait each backend implements.
//! - [`connect`] picks the backend from a [`Config`] (the `--datastore-endpoint` K3s URL forms).
//! - [`server`] serves the etcd v3 gRPC API over any backend, so that etcd clients (etcdctl,
//!   kube-apiserver, the `rk3s-apiserver` in another process) can use the SQL backends.
//!
//! Every write gets the next revision of one cluster-wide sequence; watches see every change
//! once and in order. See `ARCHITECTURE.md` for how the SQL backends keep that promise.

mod backend;
mod endpoint;
mod error;
mod sql;
mod store;
mod types;
mod watch;

pub mod testing;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use backend::Backend;
pub use endpoint::Endpoint;
pub use error::{Error, Result};
pub use store::{ListOptions, Store, WriteOutcome};
pub use types::*;
pub use watch::Watch;

/// Configuration of the datastore, with the names of the K3s flags.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Config {
    /// Where rk3s keeps its state; the default SQLite file is `server/db/state.db` in it.
    pub data_dir: PathBuf,
    /// `sqlite:///path`, `postgres://...`, `mysql://...` or `http(s)://host:2379[,...]`;
    /// empty means SQLite in the data dir.
    pub datastore_endpoint: Option<String>,
    /// CA bundle to verify an etcd server's certificate.
    pub datastore_cafile: Option<PathBuf>,
    /// Client certificate for etcd.
    pub datastore_certfile: Option<PathBuf>,
    /// Client key for etcd.
    pub datastore_keyfile: Option<PathBuf>,
    /// Seconds between automatic compactions of the SQL log; 0 turns them off.
    pub datastore_compact_interval: u64,
    /// Revisions of history an automatic compaction keeps.
    pub datastore_compact_retention: i64,
    /// Revisions removed per compaction transaction, to keep each one short.
    pub datastore_compact_batch: i64,
    /// Milliseconds between looks for writes made by other servers on a shared SQLite file or
    /// MySQL database (Postgres tells us with LISTEN/NOTIFY; writes through this process wake
    /// watchers at once on every backend).
    pub datastore_poll_interval: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("/var/lib/rk3s"),
            datastore_endpoint: None,
            datastore_cafile: None,
            datastore_certfile: None,
            datastore_keyfile: None,
            datastore_compact_interval: 300,
            datastore_compact_retention: 1000,
            datastore_compact_batch: 1000,
            datastore_poll_interval: 5,
        }
    }
}

impl Config {
    /// A config for the given endpoint, everything else default.
    pub fn for_endpoint(endpoint: impl Into<String>) -> Self {
        Config {
            datastore_endpoint: Some(endpoint.into()),
            ..Config::default()
        }
    }

    /// Checks the values without touching anything.
    pub fn validate(&self) -> Result<Endpoint> {
        let endpoint = Endpoint::parse(self.datastore_endpoint.as_deref(), &self.data_dir)?;
        let bad = |key: &str, reason: &str| Error::InvalidRequest(format!("{key}: {reason}"));
        if self.datastore_compact_retention < 0 {
            return Err(bad("datastore-compact-retention", "must not be negative"));
        }
        if self.datastore_compact_batch <= 0 {
            return Err(bad("datastore-compact-batch", "must be positive"));
        }
        if self.datastore_poll_interval == 0 {
            return Err(bad("datastore-poll-interval", "must be at least 1 ms"));
        }
        let tls_files = [
            &self.datastore_cafile,
            &self.datastore_certfile,
            &self.datastore_keyfile,
        ];
        if !matches!(endpoint, Endpoint::Etcd { .. }) && tls_files.iter().any(|f| f.is_some()) {
            return Err(bad(
                "datastore-cafile/certfile/keyfile",
                "TLS files are only used with an etcd endpoint",
            ));
        }
        if self.datastore_certfile.is_some() != self.datastore_keyfile.is_some() {
            return Err(bad(
                "datastore-certfile/keyfile",
                "a client certificate needs its key, and a key its certificate",
            ));
        }
        Ok(endpoint)
    }

    pub(crate) fn compact_interval(&self) -> Option<Duration> {
        (self.datastore_compact_interval > 0)
            .then(|| Duration::from_secs(self.datastore_compact_interval))
    }

    pub(crate) fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.datastore_poll_interval.max(1))
    }
}

/// Connects to the configured backend, creating or migrating its schema, and starts its
/// background work (watch fan-out, compaction, lease expiry). An unreachable endpoint is an
/// [`Error::Connect`] naming it.
#[tracing::instrument(skip_all, fields(endpoint))]
pub async fn connect(config: &Config) -> Result<Store> {
    let endpoint = config.validate()?;
    tracing::Span::current().record("endpoint", tracing::field::display(&endpoint));
    let backend: Arc<dyn Backend> = match &endpoint {
        Endpoint::Etcd { .. } => etcd::connect(&endpoint, config).await?,
        _ => Arc::new(sql::SqlBackend::connect(&endpoint, config).await?),
    };
    Ok(Store::new(backend))
}

mod etcd;
pub mod server;
