//! Command line and configuration of the etcd endpoint process (`rk3s-datastore`, and
//! `rk3s datastore` in the supervisor, which nests the same [`Args`]).
//!
//! Precedence: defaults < the `--config` YAML file < environment (`RK3S_<FLAG>`, and
//! `K3S_DATASTORE_ENDPOINT`) < flags. The YAML keys are the long flag names.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Yaml};
use serde::{Deserialize, Serialize};

use crate::Config;

/// The default address of the etcd endpoint.
pub const DEFAULT_LISTEN_ADDRESS: &str = "127.0.0.1:2379";

/// Flags of the etcd endpoint process. Every value is optional here: what is not given comes
/// from the environment, the config file or the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Args {
    /// Address of the etcd v3 gRPC endpoint [default: 127.0.0.1:2379]
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen_address: Option<SocketAddr>,

    /// Directory of rk3s state; the default SQLite file is server/db/state.db in it
    /// [default: /var/lib/rk3s]
    #[arg(long, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,

    /// sqlite:///path, postgres://user:pass@host:5432/db, mysql://user:pass@tcp(host:3306)/db
    /// or http(s)://host:2379[,host:2379] [default: SQLite in the data dir]
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datastore_endpoint: Option<String>,

    /// CA bundle to verify an etcd datastore's certificate
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datastore_cafile: Option<PathBuf>,

    /// Client certificate for an etcd datastore
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datastore_certfile: Option<PathBuf>,

    /// Client key for an etcd datastore
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datastore_keyfile: Option<PathBuf>,

    /// Seconds between automatic compactions of a SQL datastore; 0 turns them off [default: 300]
    #[arg(long, value_name = "SECONDS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datastore_compact_interval: Option<u64>,

    /// Revisions of history an automatic compaction keeps [default: 1000]
    #[arg(long, value_name = "REVISIONS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datastore_compact_retention: Option<i64>,

    /// Revisions removed per compaction transaction [default: 1000]
    #[arg(long, value_name = "REVISIONS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datastore_compact_batch: Option<i64>,

    /// Milliseconds between looks for writes made by other servers on a shared SQLite or
    /// MySQL datastore [default: 5]
    #[arg(long, value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datastore_poll_interval: Option<u64>,

    /// YAML file with any of the settings above, keyed by their long flag names
    #[arg(long, value_name = "FILE", env = "RK3S_CONFIG_FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
}

/// The settings of the etcd endpoint process, merged from every source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub listen_address: SocketAddr,
    pub datastore: Config,
}

/// The flat form of [`ServerConfig`], as in the YAML file: the long flag names as keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
struct FlatConfig {
    listen_address: SocketAddr,
    data_dir: PathBuf,
    datastore_endpoint: Option<String>,
    datastore_cafile: Option<PathBuf>,
    datastore_certfile: Option<PathBuf>,
    datastore_keyfile: Option<PathBuf>,
    datastore_compact_interval: u64,
    datastore_compact_retention: i64,
    datastore_compact_batch: i64,
    datastore_poll_interval: u64,
}

/// The keys of [`FlatConfig`], which the environment may set as `RK3S_<KEY>`.
const KEYS: &[&str] = &[
    "listen-address",
    "data-dir",
    "datastore-endpoint",
    "datastore-cafile",
    "datastore-certfile",
    "datastore-keyfile",
    "datastore-compact-interval",
    "datastore-compact-retention",
    "datastore-compact-batch",
    "datastore-poll-interval",
];

impl Default for FlatConfig {
    fn default() -> Self {
        let c = Config::default();
        FlatConfig {
            listen_address: SocketAddr::from(([127, 0, 0, 1], 2379)),
            data_dir: c.data_dir,
            datastore_endpoint: c.datastore_endpoint,
            datastore_cafile: c.datastore_cafile,
            datastore_certfile: c.datastore_certfile,
            datastore_keyfile: c.datastore_keyfile,
            datastore_compact_interval: c.datastore_compact_interval,
            datastore_compact_retention: c.datastore_compact_retention,
            datastore_compact_batch: c.datastore_compact_batch,
            datastore_poll_interval: c.datastore_poll_interval,
        }
    }
}

impl From<FlatConfig> for ServerConfig {
    fn from(f: FlatConfig) -> Self {
        ServerConfig {
            listen_address: f.listen_address,
            datastore: Config {
                data_dir: f.data_dir,
                datastore_endpoint: f.datastore_endpoint,
                datastore_cafile: f.datastore_cafile,
                datastore_certfile: f.datastore_certfile,
                datastore_keyfile: f.datastore_keyfile,
                datastore_compact_interval: f.datastore_compact_interval,
                datastore_compact_retention: f.datastore_compact_retention,
                datastore_compact_batch: f.datastore_compact_batch,
                datastore_poll_interval: f.datastore_poll_interval,
            },
        }
    }
}

/// Why the endpoint process could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The config file is missing.
    #[error("config file {}: {reason}", path.display())]
    ConfigFile { path: PathBuf, reason: String },
    /// A setting has a wrong value or an unknown key (the message names it and its source).
    #[error("invalid configuration: {0}")]
    Config(#[from] Box<figment::Error>),
    /// The datastore settings are wrong, or the datastore cannot be reached.
    #[error(transparent)]
    Datastore(#[from] crate::Error),
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Serve(#[from] super::ServeError),
}

/// Merges defaults, the config file, the environment and the flags.
pub fn load_config(args: &Args) -> Result<ServerConfig, RunError> {
    let mut figment = Figment::from(Serialized::defaults(FlatConfig::default()));
    if let Some(path) = &args.config {
        if !path.is_file() {
            return Err(RunError::ConfigFile {
                path: path.clone(),
                reason: "no such file".to_string(),
            });
        }
        figment = figment.merge(Yaml::file_exact(path));
    }
    let flat: FlatConfig = figment
        // K3s' name of the endpoint variable, below rk3s' own.
        .merge(
            Env::raw()
                .only(&["K3S_DATASTORE_ENDPOINT"])
                .map(|_| "datastore-endpoint".into()),
        )
        .merge(Env::prefixed("RK3S_").filter_map(|key| {
            let key = key.as_str().to_ascii_lowercase().replace('_', "-");
            KEYS.contains(&key.as_str()).then(|| key.into())
        }))
        .merge(Serialized::defaults(args))
        .extract()
        .map_err(Box::new)?;
    Ok(flat.into())
}

/// Runs the etcd endpoint process: loads the configuration, listens, connects to the
/// datastore, calls `serving` with the address it listens on, and serves until `shutdown`,
/// then closes the datastore. The binaries tell systemd `READY=1` in `serving`.
pub async fn run(
    args: Args,
    shutdown: impl Future<Output = ()> + Send + 'static,
    serving: impl FnOnce(SocketAddr),
) -> Result<(), RunError> {
    let config = load_config(&args)?;
    let endpoint = config.datastore.validate()?;
    let addr = config.listen_address;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind { addr, source })?;
    let store = crate::connect(&config.datastore).await?;
    let listen = listener.local_addr().unwrap_or(addr);
    tracing::info!(%listen, datastore = %endpoint, "serving the etcd v3 API");
    serving(listen);
    let result = super::serve(store.clone(), listener, shutdown).await;
    store.close().await;
    tracing::info!("etcd endpoint stopped");
    Ok(result?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &std::path::Path, body: &str) -> PathBuf {
        let path = dir.join("config.yaml");
        std::fs::write(&path, body).expect("write config");
        path
    }

    #[test]
    fn file_sets_values_and_flags_win() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(
            dir.path(),
            "listen-address: 127.0.0.1:12379\ndatastore-endpoint: sqlite:///tmp/a.db\ndatastore-compact-batch: 7\n",
        );
        let args = Args {
            config: Some(path),
            datastore_endpoint: Some("sqlite:///tmp/b.db".into()),
            ..Args::default()
        };
        let config = load_config(&args).expect("config");
        assert_eq!(
            config.listen_address,
            "127.0.0.1:12379".parse().expect("addr")
        );
        assert_eq!(
            config.datastore.datastore_endpoint.as_deref(),
            Some("sqlite:///tmp/b.db")
        );
        assert_eq!(config.datastore.datastore_compact_batch, 7);
        assert_eq!(
            config.datastore.datastore_compact_retention, 1000,
            "default kept"
        );
    }

    #[test]
    fn unknown_key_in_file_names_key_and_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(dir.path(), "datastore-endpiont: sqlite:///tmp/a.db\n");
        let args = Args {
            config: Some(path.clone()),
            ..Args::default()
        };
        let err = load_config(&args).expect_err("unknown key").to_string();
        assert!(err.contains("datastore-endpiont"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
    }

    #[test]
    fn missing_file_is_an_error() {
        let args = Args {
            config: Some(PathBuf::from("/nonexistent/rk3s.yaml")),
            ..Args::default()
        };
        let err = load_config(&args).expect_err("missing file").to_string();
        assert!(err.contains("/nonexistent/rk3s.yaml"), "{err}");
    }

    #[test]
    fn defaults() {
        let config = load_config(&Args::default()).expect("config");
        assert_eq!(config.listen_address.to_string(), DEFAULT_LISTEN_ADDRESS);
        assert_eq!(config.datastore, Config::default());
    }
}
