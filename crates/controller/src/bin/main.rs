//! `rk3s-controller`: the controller manager of rk3s, alone.

use std::path::PathBuf;

use anyhow::Context as _;

/// Flags, as upstream kube-controller-manager names them. Unset flags fall back to the config
/// file, then the environment (`RK3S_*`), then the defaults.
#[derive(Debug, clap::Parser, serde::Serialize)]
#[command(
    name = "rk3s-controller",
    version,
    about = "The controller manager of rk3s"
)]
struct Args {
    /// YAML config file with the same keys as the flags (its own file: the server's
    /// `config.yaml` has keys this binary does not know).
    #[arg(long, default_value = "/etc/rk3s/controller.yaml")]
    #[serde(skip)]
    config: PathBuf,
    /// Kubeconfig of the apiserver (default: $KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long)]
    #[serde(skip)]
    kubeconfig: Option<PathBuf>,
    /// Controllers to run: `*`, a name, or `-name` to leave one out; comma separated.
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    controllers: Option<Vec<String>>,
    /// Take the kube-system/kube-controller-manager Lease before running.
    #[arg(long)]
    #[serde(rename = "leader-elect", skip_serializing_if = "Option::is_none")]
    leader_elect: Option<bool>,
    /// Run each controller loop as its own service account (kube-system/<account>) with a
    /// token from the TokenRequest API, instead of on this process's identity.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(
        rename = "use-service-account-credentials",
        skip_serializing_if = "Option::is_none"
    )]
    use_service_account_credentials: Option<bool>,
    /// Objects each controller reconciles at once.
    #[arg(long)]
    #[serde(rename = "concurrent-syncs", skip_serializing_if = "Option::is_none")]
    concurrent_syncs: Option<u16>,
    /// Seconds without a node heartbeat before the node is marked Ready=Unknown.
    #[arg(long)]
    #[serde(
        rename = "node-monitor-grace-period",
        skip_serializing_if = "Option::is_none"
    )]
    node_monitor_grace_period: Option<u64>,
    /// Give nodes pod CIDRs from --cluster-cidr.
    #[arg(long)]
    #[serde(
        rename = "allocate-node-cidrs",
        skip_serializing_if = "Option::is_none"
    )]
    allocate_node_cidrs: Option<bool>,
    /// The pod network (IPv4, IPv6, or both separated by a comma).
    #[arg(long)]
    #[serde(rename = "cluster-cidr", skip_serializing_if = "Option::is_none")]
    cluster_cidr: Option<String>,
    /// CA certificate the CSR signer signs with.
    #[arg(long)]
    #[serde(
        rename = "cluster-signing-cert-file",
        skip_serializing_if = "Option::is_none"
    )]
    cluster_signing_cert_file: Option<PathBuf>,
    /// The CA's private key.
    #[arg(long)]
    #[serde(
        rename = "cluster-signing-key-file",
        skip_serializing_if = "Option::is_none"
    )]
    cluster_signing_key_file: Option<PathBuf>,
    /// PEM key the serviceaccount-token controller signs legacy Secret-based tokens with
    /// (the controller runs only with it).
    #[arg(long)]
    #[serde(
        rename = "service-account-private-key-file",
        skip_serializing_if = "Option::is_none"
    )]
    service_account_private_key_file: Option<PathBuf>,
    /// CA bundle put in service-account token Secrets as ca.crt.
    #[arg(long)]
    #[serde(rename = "root-ca-file", skip_serializing_if = "Option::is_none")]
    root_ca_file: Option<PathBuf>,
    /// Terminated pods kept before PodGC deletes the oldest (0: never).
    #[arg(long)]
    #[serde(
        rename = "terminated-pod-gc-threshold",
        skip_serializing_if = "Option::is_none"
    )]
    terminated_pod_gc_threshold: Option<u32>,
    /// Seconds between syncs of unbound claims and volumes.
    #[arg(long)]
    #[serde(
        rename = "pvclaimbinder-sync-period",
        skip_serializing_if = "Option::is_none"
    )]
    pvclaimbinder_sync_period: Option<u64>,
    /// Seconds between syncs of each HorizontalPodAutoscaler.
    #[arg(long)]
    #[serde(
        rename = "horizontal-pod-autoscaler-sync-period",
        skip_serializing_if = "Option::is_none"
    )]
    horizontal_pod_autoscaler_sync_period: Option<u64>,
    /// HTTPS port of /healthz, /livez, /readyz and /metrics [default: 10257; 0: none].
    #[arg(long)]
    #[serde(rename = "secure-port", skip_serializing_if = "Option::is_none")]
    secure_port: Option<u16>,
    /// Address the secure port listens on [default: 127.0.0.1].
    #[arg(long)]
    #[serde(rename = "bind-address", skip_serializing_if = "Option::is_none")]
    bind_address: Option<std::net::IpAddr>,
    /// The secure port's certificate, PEM [default: a self-signed one made at start].
    #[arg(long)]
    #[serde(rename = "tls-cert-file", skip_serializing_if = "Option::is_none")]
    tls_cert_file: Option<PathBuf>,
    /// The key of --tls-cert-file, PEM.
    #[arg(long)]
    #[serde(
        rename = "tls-private-key-file",
        skip_serializing_if = "Option::is_none"
    )]
    tls_private_key_file: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    rk3s_common::cli::init_logging();
    let cli = rk3s_common::cli::parse::<Args>();
    let args = &cli.args;
    let config: rk3s_controller::Config =
        rk3s_common::cli::load(&cli, &["kubeconfig"]).context("reading the configuration")?;
    config.validate().context("checking the configuration")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let shutdown =
            rk3s_common::signal::shutdown_signal().context("installing the signal handlers")?;
        let connection = connection(args.kubeconfig.as_deref()).await?;
        let started = rk3s_controller::start(config)
            .await
            .context("starting the controller manager")?;
        rk3s_common::notify::ready("running (leader election first)");
        started
            .run(connection, shutdown)
            .await
            .context("running the controller manager")
    })
}

async fn connection(
    kubeconfig: Option<&std::path::Path>,
) -> anyhow::Result<rk3s_controller::Connection> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .context("loading the kubeconfig")?
        }
        None => kube::Config::infer()
            .await
            .context("finding a kubeconfig (use --kubeconfig)")?,
    };
    rk3s_controller::Connection::new(config).context("building the API client")
}
