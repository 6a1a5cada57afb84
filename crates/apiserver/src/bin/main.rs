//! `rk3s-apiserver`: the Kubernetes API server of rk3s, alone.

use std::path::PathBuf;

use anyhow::Context as _;

/// Flags, as K3s names them. Unset flags fall back to the config file, then the environment
/// (`RK3S_*`), then the defaults.
#[derive(Debug, clap::Parser, serde::Serialize)]
#[command(
    name = "rk3s-apiserver",
    version,
    about = "The Kubernetes API server of rk3s"
)]
struct Args {
    /// YAML config file with the same keys as the flags.
    #[arg(long, default_value = "/etc/rk3s/apiserver.yaml")]
    #[serde(skip)]
    config: PathBuf,
    /// Address to listen on (127.0.0.1 by default).
    #[arg(long)]
    #[serde(rename = "bind-address", skip_serializing_if = "Option::is_none")]
    bind_address: Option<std::net::IpAddr>,
    /// HTTPS port.
    #[arg(long)]
    #[serde(rename = "https-listen-port", skip_serializing_if = "Option::is_none")]
    https_listen_port: Option<u16>,
    /// Data directory (`server/tls`, `server/db` live here).
    #[arg(long)]
    #[serde(rename = "data-dir", skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    /// IPv4 range Service cluster IPs come from.
    #[arg(long)]
    #[serde(rename = "service-cidr", skip_serializing_if = "Option::is_none")]
    service_cidr: Option<String>,
    /// This node's name (a SAN of the serving certificate).
    #[arg(long)]
    #[serde(rename = "node-name", skip_serializing_if = "Option::is_none")]
    node_name: Option<String>,
    /// Extra name or address of the serving certificate (repeatable).
    #[arg(long = "tls-san")]
    #[serde(rename = "tls-san", skip_serializing_if = "Vec::is_empty")]
    tls_san: Vec<String>,
    /// Static bearer tokens, CSV `token,user,uid,"group1,group2"`.
    #[arg(long)]
    #[serde(rename = "token-auth-file", skip_serializing_if = "Option::is_none")]
    token_auth_file: Option<PathBuf>,
    /// Join token (K10<ca hash>::server:<secret> or <secret>) [default: <data-dir>/server/token,
    /// created on first start]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    /// Issuer of service-account tokens.
    #[arg(long)]
    #[serde(
        rename = "service-account-issuer",
        skip_serializing_if = "Option::is_none"
    )]
    service_account_issuer: Option<String>,
    /// CN a front proxy's certificate (signed by the request-header CA) may have (repeatable).
    #[arg(long = "requestheader-allowed-names")]
    #[serde(
        rename = "requestheader-allowed-names",
        skip_serializing_if = "Vec::is_empty"
    )]
    requestheader_allowed_names: Vec<String>,
    /// Upstream EncryptionConfiguration file: the resources it lists are encrypted at rest.
    #[arg(long)]
    #[serde(
        rename = "encryption-provider-config",
        skip_serializing_if = "Option::is_none"
    )]
    encryption_provider_config: Option<PathBuf>,
    /// Audit policy file (audit.k8s.io/v1 Policy); with --audit-log-path turns auditing on.
    #[arg(long)]
    #[serde(rename = "audit-policy-file", skip_serializing_if = "Option::is_none")]
    audit_policy_file: Option<PathBuf>,
    /// Audit log file ("-": standard output).
    #[arg(long)]
    #[serde(rename = "audit-log-path", skip_serializing_if = "Option::is_none")]
    audit_log_path: Option<PathBuf>,
    /// Days to keep rotated audit logs (0: no limit).
    #[arg(long)]
    #[serde(rename = "audit-log-maxage", skip_serializing_if = "Option::is_none")]
    audit_log_maxage: Option<u64>,
    /// Rotated audit logs to keep (0: no limit).
    #[arg(long)]
    #[serde(
        rename = "audit-log-maxbackup",
        skip_serializing_if = "Option::is_none"
    )]
    audit_log_maxbackup: Option<usize>,
    /// Megabytes of audit log before it is rotated (0: never).
    #[arg(long)]
    #[serde(rename = "audit-log-maxsize", skip_serializing_if = "Option::is_none")]
    audit_log_maxsize: Option<u64>,
    /// Datastore URL: sqlite://, postgres://, mysql:// or http(s):// for etcd.
    #[arg(long)]
    #[serde(rename = "datastore-endpoint", skip_serializing_if = "Option::is_none")]
    datastore_endpoint: Option<String>,
}

fn main() -> anyhow::Result<()> {
    rk3s_common::cli::init_logging();
    let cli = rk3s_common::cli::parse::<Args>();
    let config: rk3s_apiserver::Config =
        rk3s_common::cli::load(&cli, &[]).context("reading the configuration")?;
    config.validate().context("checking the configuration")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let shutdown =
            rk3s_common::signal::shutdown_signal().context("installing the signal handlers")?;
        rk3s_apiserver::run_with(config, shutdown, |running| {
            rk3s_common::notify::ready(&format!("serving the API on {}", running.url()));
        })
        .await
        .context("running the apiserver")
    })
}
