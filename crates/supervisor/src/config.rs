//! `rk3s server` settings: the flags ([`ServerArgs`]), the merged configuration
//! ([`ServerConfig`]) and how they are loaded ([`load_config`]).
//!
//! Precedence, as in K3s: defaults < the `--config` YAML file < the environment (`RK3S_<FLAG>`,
//! plus K3s' `K3S_TOKEN`, `K3S_DATASTORE_ENDPOINT`, `K3S_URL`) < flags. The YAML keys are the
//! long flag names. An unknown key or a bad value is an error naming the key and its source.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Yaml};
use serde::{Deserialize, Deserializer, Serialize};

/// The config file read when `--config` is not given (only if it exists).
pub const DEFAULT_CONFIG_FILE: &str = "/etc/rk3s/config.yaml";
/// Where the admin kubeconfig is written by default.
pub const DEFAULT_KUBECONFIG: &str = "/etc/rk3s/rk3s.yaml";

/// Flags of `rk3s server`. Every value is optional here: what is not given comes from the
/// environment, the config file or the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, Serialize)]
#[command(
    after_help = "Settings come from, lowest first: defaults, the --config YAML file \
(keys are the long flag names), the environment (RK3S_<FLAG>, e.g. RK3S_HTTPS_LISTEN_PORT; \
K3s' K3S_TOKEN, K3S_DATASTORE_ENDPOINT and K3S_URL too), flags."
)]
#[serde(rename_all = "kebab-case")]
pub struct ServerArgs {
    /// YAML file keyed by the long flag names [default: /etc/rk3s/config.yaml, if present]
    #[arg(short = 'c', long, value_name = "FILE", env = "RK3S_CONFIG_FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Directory of rk3s state [default: /var/lib/rk3s]
    #[arg(short = 'd', long, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,

    /// sqlite:///path, postgres://user:pass@host:5432/db, mysql://user:pass@tcp(host:3306)/db
    /// or http(s)://host:2379[,host:2379] [default: SQLite at <data-dir>/server/db/state.db]
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

    /// Also serve the etcd v3 API over the datastore on this address (e.g. 127.0.0.1:2379)
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datastore_listen: Option<SocketAddr>,

    /// HTTPS port of the Kubernetes API [default: 6443]
    #[arg(long, value_name = "PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub https_listen_port: Option<u16>,

    /// Address the API listens on [default: 127.0.0.1]
    #[arg(long, value_name = "IP")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind_address: Option<IpAddr>,

    /// Write the admin kubeconfig to this file [default: /etc/rk3s/rk3s.yaml]
    #[arg(short = 'o', long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_kubeconfig: Option<PathBuf>,

    /// Mode of the kubeconfig file, in octal, e.g. 0644 [default: 0600]
    #[arg(long, value_name = "MODE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_kubeconfig_mode: Option<String>,

    /// IPv4 range of Service cluster IPs [default: 10.43.0.0/16]
    #[arg(long, value_name = "CIDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_cidr: Option<String>,

    /// IPv4 range of pod IPs [default: 10.42.0.0/16]
    #[arg(long, value_name = "CIDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_cidr: Option<String>,

    /// Cluster DNS service IP [default: the 10th address of the service CIDR, 10.43.0.10]
    #[arg(long, value_name = "IP")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_dns: Option<IpAddr>,

    /// Cluster domain [default: cluster.local]
    #[arg(long, value_name = "DOMAIN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_domain: Option<String>,

    /// Node name [default: the hostname]
    #[arg(long, value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,

    /// Add an additional hostname or IP as a Subject Alternative Name of the serving
    /// certificate (repeatable)
    #[arg(long = "tls-san", value_name = "NAME")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tls_san: Vec<String>,

    /// The cluster's token: agents join with it, and the CAs the servers of one datastore share
    /// are encrypted with its secret. K10<ca hash>::server:<secret> or <secret> [default:
    /// <data-dir>/server/token, created on first start]
    #[arg(short = 't', long, value_name = "TOKEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,

    /// Shared secret agents join with, but not servers (K3S_AGENT_TOKEN): K10<ca
    /// hash>::node:<secret> or <secret> [default: <data-dir>/server/agent-token if an earlier
    /// start wrote one; else agents use the server token]
    #[arg(long, value_name = "TOKEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_token: Option<String>,

    /// A flag for the Kubernetes API server, `key=value` (repeatable), as K3s'
    /// --kube-apiserver-arg: audit-log-path, audit-policy-file, audit-log-maxage,
    /// audit-log-maxbackup, audit-log-maxsize, token-auth-file, service-account-issuer,
    /// api-audiences, requestheader-allowed-names
    #[arg(long = "kube-apiserver-arg", value_name = "KEY=VALUE")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kube_apiserver_arg: Vec<String>,

    /// A flag for the scheduler, `key=value` (repeatable), as K3s' --kube-scheduler-arg:
    /// secure-port (default 10259, 0: no health/metrics port), bind-address (default
    /// 127.0.0.1)
    #[arg(long = "kube-scheduler-arg", value_name = "KEY=VALUE")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kube_scheduler_arg: Vec<String>,

    /// A flag for the controller manager, `key=value` (repeatable), as K3s'
    /// --kube-controller-manager-arg: secure-port (default 10257, 0: no health/metrics port),
    /// bind-address (default 127.0.0.1)
    #[arg(long = "kube-controller-manager-arg", value_name = "KEY=VALUE")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kube_controller_manager_arg: Vec<String>,

    /// Server to join as another server (K3S_URL; refused: embedded-datastore HA is not built —
    /// HA servers share an external --datastore-endpoint and --token; nodes join with
    /// `rk3s agent`)
    #[arg(short = 's', long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,

    /// Encrypt Secrets at rest (AES-CBC key in <data-dir>/server/cred/encryption-config.json)
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub secrets_encryption: bool,

    /// Run the control plane only (the node half is not built yet: this is what the server does
    /// anyway for now)
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub disable_agent: bool,

    /// Do not run the scheduler
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub disable_scheduler: bool,

    /// Do not run the controller manager
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub disable_controller_manager: bool,
}

/// The merged settings of `rk3s server`, keyed by the long flag names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub datastore_endpoint: Option<String>,
    pub datastore_cafile: Option<PathBuf>,
    pub datastore_certfile: Option<PathBuf>,
    pub datastore_keyfile: Option<PathBuf>,
    pub datastore_listen: Option<SocketAddr>,
    pub https_listen_port: u16,
    pub bind_address: IpAddr,
    pub write_kubeconfig: PathBuf,
    /// The mode as a number (0o600); read from an octal string or number ("0644", 644).
    #[serde(
        deserialize_with = "deserialize_mode",
        serialize_with = "serialize_mode"
    )]
    pub write_kubeconfig_mode: u32,
    pub service_cidr: String,
    pub cluster_cidr: String,
    pub cluster_dns: Option<IpAddr>,
    pub cluster_domain: String,
    pub node_name: Option<String>,
    /// A list, or (from the environment) one comma-separated string.
    #[serde(deserialize_with = "deserialize_list")]
    pub tls_san: Vec<String>,
    pub token: Option<String>,
    pub agent_token: Option<String>,
    /// A list, or (from the environment) one comma-separated string.
    #[serde(deserialize_with = "deserialize_list")]
    pub kube_apiserver_arg: Vec<String>,
    /// A list, or (from the environment) one comma-separated string.
    #[serde(deserialize_with = "deserialize_list")]
    pub kube_scheduler_arg: Vec<String>,
    /// A list, or (from the environment) one comma-separated string.
    #[serde(deserialize_with = "deserialize_list")]
    pub kube_controller_manager_arg: Vec<String>,
    pub server: Option<String>,
    pub secrets_encryption: bool,
    pub disable_agent: bool,
    pub disable_scheduler: bool,
    pub disable_controller_manager: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: PathBuf::from("/var/lib/rk3s"),
            datastore_endpoint: None,
            datastore_cafile: None,
            datastore_certfile: None,
            datastore_keyfile: None,
            datastore_listen: None,
            https_listen_port: 6443,
            bind_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            write_kubeconfig: PathBuf::from(DEFAULT_KUBECONFIG),
            write_kubeconfig_mode: 0o600,
            service_cidr: "10.43.0.0/16".into(),
            cluster_cidr: "10.42.0.0/16".into(),
            cluster_dns: None,
            cluster_domain: "cluster.local".into(),
            node_name: None,
            tls_san: Vec::new(),
            token: None,
            agent_token: None,
            kube_apiserver_arg: Vec::new(),
            kube_scheduler_arg: Vec::new(),
            kube_controller_manager_arg: Vec::new(),
            server: None,
            secrets_encryption: false,
            disable_agent: false,
            disable_scheduler: false,
            disable_controller_manager: false,
        }
    }
}

/// The keys the environment may set as `RK3S_<KEY>` (upper case, `_` for `-`).
const KEYS: &[&str] = &[
    "data-dir",
    "datastore-endpoint",
    "datastore-cafile",
    "datastore-certfile",
    "datastore-keyfile",
    "datastore-listen",
    "https-listen-port",
    "bind-address",
    "write-kubeconfig",
    "write-kubeconfig-mode",
    "service-cidr",
    "cluster-cidr",
    "cluster-dns",
    "cluster-domain",
    "node-name",
    "tls-san",
    "token",
    "agent-token",
    "kube-apiserver-arg",
    "kube-scheduler-arg",
    "kube-controller-manager-arg",
    "server",
    "secrets-encryption",
    "disable-agent",
    "disable-scheduler",
    "disable-controller-manager",
];

/// K3s' environment names accepted as aliases (below the `RK3S_` ones).
const K3S_ALIASES: &[(&str, &str)] = &[
    ("K3S_TOKEN", "token"),
    ("K3S_AGENT_TOKEN", "agent-token"),
    ("K3S_DATASTORE_ENDPOINT", "datastore-endpoint"),
    ("K3S_URL", "server"),
];

/// A configuration that cannot be used; the message names the key and its source.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// An explicitly named config file does not exist.
    #[error("config file {}: no such file", .0.display())]
    MissingFile(PathBuf),
    /// A key is unknown or has a value of the wrong type (figment names key and source).
    #[error("invalid configuration: {0}")]
    Figment(Box<figment::Error>),
    /// A value has the right type but is not acceptable.
    #[error("invalid configuration: {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
    /// [`ConfigError::Invalid`], with where the value came from.
    #[error("invalid configuration: {key} ({origin}): {reason}")]
    InvalidFrom {
        key: &'static str,
        origin: String,
        reason: String,
    },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// Where a merged value came from, for error messages: the file, the environment, the flags.
fn origin(figment: &Figment, key: &str) -> Option<String> {
    let metadata = figment.find_metadata(key)?;
    if let Some(figment::Source::File(path)) = &metadata.source {
        return Some(format!("in {}", path.display()));
    }
    let name = metadata.name.as_ref();
    Some(if name.contains("ServerArgs") {
        "from the command line".to_string()
    } else if name.contains("ServerConfig") {
        "the default".to_string()
    } else {
        format!("from {name}")
    })
}

/// Merges defaults, the config file, the environment and the flags, and validates the result.
/// Touches nothing.
pub fn load_config(args: &ServerArgs) -> Result<ServerConfig, ConfigError> {
    let figment = figment(args)?;
    let config: ServerConfig = figment
        .extract()
        .map_err(|e| ConfigError::Figment(Box::new(e)))?;
    match config.validate() {
        Err(ConfigError::Invalid { key, reason }) => match origin(&figment, key) {
            Some(origin) => Err(ConfigError::InvalidFrom {
                key,
                origin,
                reason,
            }),
            None => Err(ConfigError::Invalid { key, reason }),
        },
        other => other.map(|()| config),
    }
}

/// The merged providers, for [`load_config`] and for `rk3s kubectl` (which only needs the
/// kubeconfig path).
pub(crate) fn figment(args: &ServerArgs) -> Result<Figment, ConfigError> {
    let mut figment = Figment::from(Serialized::defaults(ServerConfig::default()));
    match &args.config {
        Some(path) if !path.is_file() => return Err(ConfigError::MissingFile(path.clone())),
        Some(path) => figment = figment.merge(Yaml::file_exact(path)),
        None => {
            let default = Path::new(DEFAULT_CONFIG_FILE);
            if default.is_file() {
                figment = figment.merge(Yaml::file_exact(default));
            }
        }
    }
    for (var, key) in K3S_ALIASES {
        figment = figment.merge(Env::raw().only(&[var]).map(move |_| (*key).into()));
    }
    Ok(figment
        .merge(Env::prefixed("RK3S_").filter_map(|key| {
            let key = key.as_str().to_ascii_lowercase().replace('_', "-");
            KEYS.contains(&key.as_str()).then(|| key.into())
        }))
        .merge(Serialized::defaults(args)))
}

impl ServerConfig {
    /// The datastore's configuration.
    pub fn datastore(&self) -> rk3s_datastore::Config {
        rk3s_datastore::Config {
            data_dir: self.data_dir.clone(),
            datastore_endpoint: self
                .datastore_endpoint
                .clone()
                .filter(|e| !e.trim().is_empty()),
            datastore_cafile: self.datastore_cafile.clone(),
            datastore_certfile: self.datastore_certfile.clone(),
            datastore_keyfile: self.datastore_keyfile.clone(),
            ..rk3s_datastore::Config::default()
        }
    }

    /// Where the API listens.
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind_address, self.https_listen_port)
    }

    /// The address local clients (the kubeconfig, the readiness check) reach the API at:
    /// 127.0.0.1 when the API listens on every address or on loopback.
    pub fn local_api_addr(&self) -> SocketAddr {
        let ip = if self.bind_address.is_unspecified() || self.bind_address.is_loopback() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            self.bind_address
        };
        SocketAddr::new(ip, self.https_listen_port)
    }

    /// `https://<local api addr>`.
    pub fn api_url(&self) -> String {
        format!("https://{}", self.local_api_addr())
    }

    /// Where the TLS files of the apiserver live.
    pub fn tls_dir(&self) -> PathBuf {
        self.data_dir.join("server").join("tls")
    }

    /// Where the components' kubeconfigs are written (`<data-dir>/server/cred`, as K3s).
    pub fn cred_dir(&self) -> PathBuf {
        self.data_dir.join("server").join("cred")
    }

    /// The cluster DNS IP: the configured one, or the 10th address of the service CIDR.
    pub fn cluster_dns(&self) -> Result<IpAddr, ConfigError> {
        if let Some(ip) = self.cluster_dns {
            return Ok(ip);
        }
        let (base, _) = parse_cidr("service-cidr", &self.service_cidr)?;
        Ok(IpAddr::V4(Ipv4Addr::from(u32::from(base) + 10)))
    }

    /// Checks every value without touching anything.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data-dir", "must not be empty"));
        }
        self.datastore()
            .validate()
            .map_err(|e| invalid("datastore-endpoint", e.to_string()))?;
        if self.https_listen_port == 0 {
            return Err(invalid("https-listen-port", "must not be 0"));
        }
        if self.write_kubeconfig.as_os_str().is_empty() {
            return Err(invalid("write-kubeconfig", "must not be empty"));
        }
        if self.write_kubeconfig_mode > 0o777 {
            return Err(invalid(
                "write-kubeconfig-mode",
                format!("{:o} is not a file mode", self.write_kubeconfig_mode),
            ));
        }
        self.service_cidr
            .parse::<rk3s_apiserver::ServiceCidr>()
            .map_err(|e| invalid("service-cidr", e))?;
        parse_cidr("cluster-cidr", &self.cluster_cidr)?;
        self.cluster_dns()?;
        self.scheduler_args()?;
        self.controller_manager_args()?;
        if !is_dns_subdomain(&self.cluster_domain) {
            return Err(invalid(
                "cluster-domain",
                format!("{:?} is not a DNS domain", self.cluster_domain),
            ));
        }
        if let Some(name) = &self.node_name
            && !is_dns_subdomain(name)
        {
            return Err(invalid(
                "node-name",
                format!("{name:?} is not a lowercase DNS-1123 subdomain"),
            ));
        }
        self.apiserver_args()?;
        if let Some(server) = &self.server
            && !server.trim().is_empty()
        {
            return Err(invalid(
                "server",
                format!(
                    "joining {server} as another server is not built (HA servers share \
                     an external --datastore-endpoint and --token instead); join nodes \
                     with `rk3s agent --server ... --token ...`, or unset --server / K3S_URL \
                     to start a new cluster"
                ),
            ));
        }
        Ok(())
    }
}

/// What `--kube-apiserver-arg` sets: the apiserver's audit and authentication settings.
#[derive(Debug, Clone, Default)]
pub struct ApiserverArgs {
    pub audit: rk3s_apiserver::audit::AuditConfig,
    pub auth: rk3s_apiserver::AuthConfig,
}

impl ServerConfig {
    /// The `--kube-apiserver-arg` values (`key=value`, an optional leading `--`) applied to
    /// the apiserver's defaults. A key rk3s-apiserver does not have, or a bad value, is an
    /// error naming it (K3s' kube-apiserver would refuse to start too).
    pub fn apiserver_args(&self) -> Result<ApiserverArgs, ConfigError> {
        const KEY: &str = "kube-apiserver-arg";
        let mut out = ApiserverArgs::default();
        let mut audiences = Vec::new();
        for arg in &self.kube_apiserver_arg {
            let arg = arg.trim().trim_start_matches("--");
            let Some((key, value)) = arg.split_once('=') else {
                return Err(invalid(KEY, format!("{arg:?} is not key=value")));
            };
            let number = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| invalid(KEY, format!("{key}: {v:?} is not a number")))
            };
            match key {
                "audit-log-path" => out.audit.log_path = Some(PathBuf::from(value)),
                "audit-policy-file" => out.audit.policy_file = Some(PathBuf::from(value)),
                "audit-log-maxage" => out.audit.max_age_days = number(value)?,
                "audit-log-maxbackup" => {
                    out.audit.max_backups = usize::try_from(number(value)?).unwrap_or(usize::MAX)
                }
                "audit-log-maxsize" => out.audit.max_size_mb = number(value)?,
                "token-auth-file" => out.auth.token_auth_file = Some(PathBuf::from(value)),
                "service-account-issuer" => out.auth.service_account_issuer = value.to_string(),
                "api-audiences" => audiences.extend(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|a| !a.is_empty())
                        .map(str::to_string),
                ),
                "requestheader-allowed-names" => {
                    out.auth.requestheader_allowed_names = value
                        .split(',')
                        .map(str::trim)
                        .filter(|a| !a.is_empty())
                        .map(str::to_string)
                        .collect()
                }
                other => {
                    return Err(invalid(
                        KEY,
                        format!(
                            "{other:?} is not a flag rk3s' apiserver has (it has audit-log-path, \
                             audit-policy-file, audit-log-maxage, audit-log-maxbackup, \
                             audit-log-maxsize, token-auth-file, service-account-issuer, \
                             api-audiences, requestheader-allowed-names)"
                        ),
                    ));
                }
            }
        }
        out.auth.api_audiences = audiences;
        Ok(out)
    }
}

/// What `--kube-scheduler-arg` and `--kube-controller-manager-arg` set: the component's
/// secure port and its address (unset: the component's defaults).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ComponentArgs {
    pub secure_port: Option<u16>,
    pub bind_address: Option<IpAddr>,
}

impl ServerConfig {
    /// `--kube-scheduler-arg`, checked.
    pub fn scheduler_args(&self) -> Result<ComponentArgs, ConfigError> {
        component_args("kube-scheduler-arg", "scheduler", &self.kube_scheduler_arg)
    }

    /// `--kube-controller-manager-arg`, checked.
    pub fn controller_manager_args(&self) -> Result<ComponentArgs, ConfigError> {
        component_args(
            "kube-controller-manager-arg",
            "controller manager",
            &self.kube_controller_manager_arg,
        )
    }
}

/// `key=value` values (an optional leading `--`) of a component flag list; a key rk3s' component
/// does not have, or a bad value, is an error naming it.
fn component_args(
    key: &'static str,
    component: &str,
    args: &[String],
) -> Result<ComponentArgs, ConfigError> {
    let mut out = ComponentArgs::default();
    for arg in args {
        let arg = arg.trim().trim_start_matches("--");
        let Some((name, value)) = arg.split_once('=') else {
            return Err(invalid(key, format!("{arg:?} is not key=value")));
        };
        match name {
            "secure-port" => {
                out.secure_port = Some(value.parse().map_err(|_| {
                    invalid(key, format!("secure-port: {value:?} is not a port number"))
                })?)
            }
            "bind-address" => {
                out.bind_address = Some(value.parse().map_err(|_| {
                    invalid(key, format!("bind-address: {value:?} is not an IP address"))
                })?)
            }
            other => {
                return Err(invalid(
                    key,
                    format!(
                        "{other:?} is not a flag rk3s' {component} takes from rk3s server (it \
                         takes secure-port, bind-address)"
                    ),
                ));
            }
        }
    }
    Ok(out)
}

/// An IPv4 CIDR: the network address and prefix length.
fn parse_cidr(key: &'static str, s: &str) -> Result<(Ipv4Addr, u8), ConfigError> {
    let bad = || invalid(key, format!("{s:?} is not an IPv4 CIDR like 10.42.0.0/16"));
    let (ip, prefix) = s.split_once('/').ok_or_else(bad)?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| (1..=30).contains(p))
        .ok_or_else(bad)?;
    let mask = u32::MAX << (32 - prefix);
    Ok((Ipv4Addr::from(u32::from(ip) & mask), prefix))
}

/// A lowercase DNS-1123 subdomain (what Kubernetes accepts as a node name or domain).
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Reads a file mode written in octal, as K3s takes it: `"0644"`, `"644"`, or a YAML number
/// whose digits are read as octal (`0644` is the number 644 in YAML 1.2).
fn deserialize_mode<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Mode {
        Num(u64),
        Text(String),
    }
    let text = match Mode::deserialize(d)? {
        Mode::Num(n) => n.to_string(),
        Mode::Text(s) => s,
    };
    parse_mode(&text).map_err(serde::de::Error::custom)
}

/// Parses an octal file mode (`0600`, `644`, `0o640`).
pub fn parse_mode(text: &str) -> Result<u32, String> {
    let t = text.trim();
    let digits = t.strip_prefix("0o").unwrap_or(t);
    let mode = u32::from_str_radix(digits, 8)
        .map_err(|_| format!("{text:?} is not an octal file mode like 0600"))?;
    if mode > 0o777 {
        return Err(format!("{text:?} is not a file mode (at most 0777)"));
    }
    Ok(mode)
}

/// A list of strings, given as a list or as one comma-separated string (`RK3S_TLS_SAN=a,b`).
fn deserialize_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum List {
        Many(Vec<String>),
        One(String),
    }
    Ok(match List::deserialize(d)? {
        List::Many(v) => v,
        List::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
    })
}

fn serialize_mode<S: serde::Serializer>(mode: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{mode:04o}"))
}

#[cfg(test)]
// figment::Jail's closures return figment's (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0600"), Ok(0o600));
        assert_eq!(parse_mode("644"), Ok(0o644));
        assert!(parse_mode("999").is_err());
        assert!(parse_mode("01777").is_err());
        assert!(parse_mode("rw").is_err());
    }

    #[test]
    fn yaml_modes_are_octal_whether_quoted_or_not() {
        for (yaml, want) in [
            ("write-kubeconfig-mode: 0644", 0o644),
            ("write-kubeconfig-mode: \"0640\"", 0o640),
            ("write-kubeconfig-mode: 600", 0o600),
        ] {
            let c: ServerConfig = Figment::from(Serialized::defaults(ServerConfig::default()))
                .merge(Yaml::string(yaml))
                .extract()
                .expect(yaml);
            assert_eq!(c.write_kubeconfig_mode, want, "{yaml}");
        }
        let err = Figment::from(Serialized::defaults(ServerConfig::default()))
            .merge(Yaml::string("write-kubeconfig-mode: 0999"))
            .extract::<ServerConfig>()
            .expect_err("not octal")
            .to_string();
        assert!(err.contains("write-kubeconfig-mode"), "{err}");
    }

    #[test]
    fn kube_apiserver_args_map_to_the_apiserver_settings() {
        let c = ServerConfig {
            kube_apiserver_arg: vec![
                "audit-log-path=/var/log/a.log".into(),
                "--audit-policy-file=/etc/p.yaml".into(),
                "audit-log-maxsize=10".into(),
                "api-audiences=a,b".into(),
            ],
            ..ServerConfig::default()
        };
        let a = c.apiserver_args().expect("valid");
        assert_eq!(
            a.audit.log_path.as_deref(),
            Some(Path::new("/var/log/a.log"))
        );
        assert_eq!(
            a.audit.policy_file.as_deref(),
            Some(Path::new("/etc/p.yaml"))
        );
        assert_eq!(a.audit.max_size_mb, 10);
        assert_eq!(a.auth.api_audiences, ["a", "b"]);
        for bad in ["no-such-flag=1", "audit-log-maxsize=ten", "audit-log-path"] {
            let c = ServerConfig {
                kube_apiserver_arg: vec![bad.into()],
                ..ServerConfig::default()
            };
            let err = c.validate().expect_err(bad).to_string();
            assert!(err.contains("kube-apiserver-arg"), "{bad}: {err}");
        }
    }

    #[test]
    fn kube_scheduler_and_controller_manager_args_set_the_secure_ports() {
        let c = ServerConfig {
            kube_scheduler_arg: vec!["secure-port=0".into(), "--bind-address=0.0.0.0".into()],
            kube_controller_manager_arg: vec!["secure-port=20257".into()],
            ..ServerConfig::default()
        };
        c.validate().expect("valid");
        assert_eq!(
            c.scheduler_args().expect("valid"),
            ComponentArgs {
                secure_port: Some(0),
                bind_address: Some("0.0.0.0".parse().expect("IP")),
            }
        );
        assert_eq!(
            c.controller_manager_args().expect("valid"),
            ComponentArgs {
                secure_port: Some(20257),
                bind_address: None,
            }
        );
        for (bad, named) in [
            ("profiling=false", "\"profiling\" is not a flag"),
            (
                "secure-port=many",
                "secure-port: \"many\" is not a port number",
            ),
            ("bind-address=here", "bind-address: \"here\""),
            ("secure-port", "is not key=value"),
        ] {
            let c = ServerConfig {
                kube_scheduler_arg: vec![bad.into()],
                ..ServerConfig::default()
            };
            let err = c.validate().expect_err(bad).to_string();
            assert!(
                err.contains("kube-scheduler-arg") && err.contains(named),
                "{bad}: {err}"
            );
            let c = ServerConfig {
                kube_controller_manager_arg: vec![bad.into()],
                ..ServerConfig::default()
            };
            let err = c.validate().expect_err(bad).to_string();
            assert!(
                err.contains("kube-controller-manager-arg") && err.contains(named),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn defaults_validate_and_cluster_dns_is_derived() {
        let c = ServerConfig::default();
        c.validate().expect("defaults valid");
        assert_eq!(c.cluster_dns().expect("dns").to_string(), "10.43.0.10");
        assert_eq!(c.api_url(), "https://127.0.0.1:6443");
        let c = ServerConfig {
            service_cidr: "10.96.0.0/12".into(),
            bind_address: "0.0.0.0".parse().expect("ip"),
            ..ServerConfig::default()
        };
        assert_eq!(c.cluster_dns().expect("dns").to_string(), "10.96.0.10");
        assert_eq!(c.api_url(), "https://127.0.0.1:6443");
    }

    /// `rk3s server` + `args`, parsed as the binary does.
    fn args(args: &[&str]) -> ServerArgs {
        use clap::Parser as _;
        let cli =
            crate::Cli::try_parse_from(["rk3s", "server"].iter().chain(args)).expect("flags parse");
        match cli.command {
            crate::Command::Server(a) => a,
            other => panic!("not server: {other:?}"),
        }
    }

    /// Every key of `ServerArgs`, from the file, then the environment over it, then a flag
    /// over both: the highest source wins, each time.
    #[test]
    fn every_key_from_file_env_and_flag() {
        type Get = fn(&ServerConfig) -> String;
        fn p(v: &Path) -> String {
            v.display().to_string()
        }
        fn o<T: ToString>(v: &Option<T>) -> String {
            v.as_ref().map(T::to_string).unwrap_or_default()
        }
        fn op(v: &Option<PathBuf>) -> String {
            v.as_deref().map(p).unwrap_or_default()
        }
        // key, then (YAML value, environment value, flag value), then what the merged config
        // shows for each, and how to read it.
        let cases: &[(&str, [&str; 3], [&str; 3], Get)] = &[
            ("data-dir", ["/f", "/e", "/g"], ["/f", "/e", "/g"], |c| {
                p(&c.data_dir)
            }),
            (
                "datastore-endpoint",
                ["sqlite:///f.db", "sqlite:///e.db", "sqlite:///g.db"],
                ["sqlite:///f.db", "sqlite:///e.db", "sqlite:///g.db"],
                |c| o(&c.datastore_endpoint),
            ),
            (
                "datastore-cafile",
                ["/f", "/e", "/g"],
                ["/f", "/e", "/g"],
                |c| op(&c.datastore_cafile),
            ),
            (
                "datastore-certfile",
                ["/f", "/e", "/g"],
                ["/f", "/e", "/g"],
                |c| op(&c.datastore_certfile),
            ),
            (
                "datastore-keyfile",
                ["/f", "/e", "/g"],
                ["/f", "/e", "/g"],
                |c| op(&c.datastore_keyfile),
            ),
            (
                "datastore-listen",
                ["127.0.0.1:2001", "127.0.0.1:2002", "127.0.0.1:2003"],
                ["127.0.0.1:2001", "127.0.0.1:2002", "127.0.0.1:2003"],
                |c| o(&c.datastore_listen),
            ),
            (
                "https-listen-port",
                ["1001", "1002", "1003"],
                ["1001", "1002", "1003"],
                |c| c.https_listen_port.to_string(),
            ),
            (
                "bind-address",
                ["127.0.0.2", "127.0.0.3", "127.0.0.4"],
                ["127.0.0.2", "127.0.0.3", "127.0.0.4"],
                |c| c.bind_address.to_string(),
            ),
            (
                "write-kubeconfig",
                ["/f.yaml", "/e.yaml", "/g.yaml"],
                ["/f.yaml", "/e.yaml", "/g.yaml"],
                |c| p(&c.write_kubeconfig),
            ),
            (
                "write-kubeconfig-mode",
                ["\"0640\"", "0604", "0600"],
                ["640", "604", "600"],
                |c| format!("{:o}", c.write_kubeconfig_mode),
            ),
            (
                "service-cidr",
                ["10.43.0.0/16", "10.44.0.0/16", "10.45.0.0/16"],
                ["10.43.0.0/16", "10.44.0.0/16", "10.45.0.0/16"],
                |c| c.service_cidr.clone(),
            ),
            (
                "cluster-cidr",
                ["10.46.0.0/16", "10.47.0.0/16", "10.48.0.0/16"],
                ["10.46.0.0/16", "10.47.0.0/16", "10.48.0.0/16"],
                |c| c.cluster_cidr.clone(),
            ),
            (
                "cluster-dns",
                ["10.43.0.11", "10.43.0.12", "10.43.0.13"],
                ["10.43.0.11", "10.43.0.12", "10.43.0.13"],
                |c| o(&c.cluster_dns),
            ),
            (
                "cluster-domain",
                ["f.local", "e.local", "g.local"],
                ["f.local", "e.local", "g.local"],
                |c| c.cluster_domain.clone(),
            ),
            ("node-name", ["f", "e", "g"], ["f", "e", "g"], |c| {
                o(&c.node_name)
            }),
            (
                "tls-san",
                ["[f1, f2]", "e1,e2", "g1"],
                ["f1 f2", "e1 e2", "g1"],
                |c| c.tls_san.join(" "),
            ),
            ("token", ["f", "e", "g"], ["f", "e", "g"], |c| o(&c.token)),
            ("agent-token", ["f", "e", "g"], ["f", "e", "g"], |c| {
                o(&c.agent_token)
            }),
            (
                "kube-apiserver-arg",
                [
                    "audit-log-maxage=1",
                    "audit-log-maxage=2",
                    "audit-log-maxage=3",
                ],
                [
                    "audit-log-maxage=1",
                    "audit-log-maxage=2",
                    "audit-log-maxage=3",
                ],
                |c| c.kube_apiserver_arg.join(","),
            ),
            (
                "kube-scheduler-arg",
                ["secure-port=1", "secure-port=2", "secure-port=3"],
                ["secure-port=1", "secure-port=2", "secure-port=3"],
                |c| c.kube_scheduler_arg.join(","),
            ),
            (
                "kube-controller-manager-arg",
                ["secure-port=1", "secure-port=2", "secure-port=3"],
                ["secure-port=1", "secure-port=2", "secure-port=3"],
                |c| c.kube_controller_manager_arg.join(","),
            ),
        ];
        for (key, [file, env, flag], want, get) in cases {
            let var = format!("RK3S_{}", key.to_uppercase().replace('-', "_"));
            figment::Jail::expect_with(|jail| {
                jail.clear_env();
                // TLS files of the datastore go with an etcd endpoint only.
                let etcd = match *key {
                    "datastore-cafile" => "datastore-endpoint: http://127.0.0.1:2379\n",
                    "datastore-certfile" => {
                        "datastore-endpoint: http://127.0.0.1:2379\ndatastore-keyfile: /k\n"
                    }
                    "datastore-keyfile" => {
                        "datastore-endpoint: http://127.0.0.1:2379\ndatastore-certfile: /c\n"
                    }
                    _ => "",
                };
                jail.create_file("c.yaml", &format!("{etcd}{key}: {file}\n"))?;
                let config = |extra: &[&str]| {
                    let mut all = vec!["--config", "c.yaml"];
                    all.extend(extra);
                    load_config(&args(&all)).map_err(|e| e.to_string())
                };
                assert_eq!(get(&config(&[])?), want[0], "{key} from the file");
                jail.set_env(&var, env);
                assert_eq!(get(&config(&[])?), want[1], "{key}: environment over file");
                let flag = format!("--{key}={flag}");
                assert_eq!(
                    get(&config(&[&flag])?),
                    want[2],
                    "{key}: flag over environment"
                );
                Ok(())
            });
        }
        // Every settable key is covered.
        let covered: Vec<&str> = cases.iter().map(|c| c.0).collect();
        for key in KEYS {
            assert!(
                covered.contains(key)
                    || key.starts_with("disable-")
                    || *key == "server"
                    || *key == "secrets-encryption",
                "{key} untested"
            );
        }
    }

    /// The boolean switches: file < environment < flag (a flag can only turn one on).
    #[test]
    fn switches_from_file_env_and_flag() {
        for key in [
            "disable-agent",
            "disable-scheduler",
            "disable-controller-manager",
            "secrets-encryption",
        ] {
            let var = format!("RK3S_{}", key.to_uppercase().replace('-', "_"));
            let get = |c: &ServerConfig| match key {
                "disable-agent" => c.disable_agent,
                "disable-scheduler" => c.disable_scheduler,
                "secrets-encryption" => c.secrets_encryption,
                _ => c.disable_controller_manager,
            };
            figment::Jail::expect_with(|jail| {
                jail.clear_env();
                jail.create_file("c.yaml", &format!("{key}: true\n"))?;
                let config = |extra: &[&str]| {
                    let mut all = vec!["--config", "c.yaml"];
                    all.extend(extra);
                    load_config(&args(&all)).map_err(|e| e.to_string())
                };
                assert!(get(&config(&[])?), "{key} from the file");
                jail.set_env(&var, "false");
                assert!(!get(&config(&[])?), "{key}: environment over file");
                let flag = format!("--{key}");
                assert!(get(&config(&[&flag])?), "{key}: flag over environment");
                Ok(())
            });
        }
    }

    /// K3s' variable names count, below rk3s' own; `server` is refused naming its source.
    #[test]
    fn k3s_aliases_and_refused_server() {
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file("c.yaml", "token: f\n")?;
            let config = || load_config(&args(&["--config", "c.yaml"]));
            jail.set_env("K3S_TOKEN", "k3s");
            jail.set_env("K3S_DATASTORE_ENDPOINT", "sqlite:///k3s.db");
            let c = config().map_err(|e| e.to_string())?;
            assert_eq!(c.token.as_deref(), Some("k3s"));
            assert_eq!(c.datastore_endpoint.as_deref(), Some("sqlite:///k3s.db"));
            jail.set_env("RK3S_TOKEN", "rk3s");
            assert_eq!(
                config().map_err(|e| e.to_string())?.token.as_deref(),
                Some("rk3s")
            );
            jail.set_env("K3S_URL", "https://10.0.0.1:6443");
            let err = config().expect_err("joining is refused").to_string();
            assert!(err.contains("server") && err.contains("K3S_URL"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn bad_values_name_their_key() {
        for (c, key) in [
            (
                ServerConfig {
                    cluster_cidr: "10.42.0.0".into(),
                    ..ServerConfig::default()
                },
                "cluster-cidr",
            ),
            (
                ServerConfig {
                    node_name: Some("Node_1".into()),
                    ..ServerConfig::default()
                },
                "node-name",
            ),
            (
                ServerConfig {
                    server: Some("https://10.0.0.1:6443".into()),
                    ..ServerConfig::default()
                },
                "server",
            ),
            (
                ServerConfig {
                    datastore_endpoint: Some("ftp://x".into()),
                    ..ServerConfig::default()
                },
                "datastore-endpoint",
            ),
        ] {
            let err = c.validate().expect_err(key).to_string();
            assert!(err.contains(key), "{err}");
        }
    }
}
