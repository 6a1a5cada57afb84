//! `rk3s-scheduler`: the rk3s pod scheduler, alone.

use std::path::PathBuf;

use anyhow::Context as _;

/// Flags, as kube-scheduler names them. Unset flags fall back to the config file, then the
/// environment (`RK3S_*`), then the defaults.
#[derive(Debug, clap::Parser, serde::Serialize)]
#[command(name = "rk3s-scheduler", version, about = "The rk3s pod scheduler")]
struct Args {
    /// YAML config file with the same keys as the flags.
    #[arg(long, default_value = "/etc/rk3s/scheduler.yaml")]
    #[serde(skip)]
    config: PathBuf,
    /// Kubeconfig to reach the apiserver (default: $KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long)]
    #[serde(skip)]
    kubeconfig: Option<PathBuf>,
    /// Pods with this `spec.schedulerName` are scheduled.
    #[arg(long)]
    #[serde(rename = "scheduler-name", skip_serializing_if = "Option::is_none")]
    scheduler_name: Option<String>,
    /// Take the `kube-system/kube-scheduler` Lease before scheduling.
    #[arg(long)]
    #[serde(rename = "leader-elect", skip_serializing_if = "Option::is_none")]
    leader_elect: Option<bool>,
    /// Share of nodes to find feasible before scoring (0: adaptive, as upstream).
    #[arg(long)]
    #[serde(
        rename = "percentage-of-nodes-to-score",
        skip_serializing_if = "Option::is_none"
    )]
    percentage_of_nodes_to_score: Option<u32>,
    /// Bindings in flight at once.
    #[arg(long)]
    #[serde(rename = "parallel-binds", skip_serializing_if = "Option::is_none")]
    parallel_binds: Option<usize>,
    /// HTTPS port of /healthz, /livez, /readyz and /metrics [default: 10259; 0: none].
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
    let config: rk3s_scheduler::Config =
        rk3s_common::cli::load(&cli, &["kubeconfig"]).context("reading the configuration")?;
    config.validate().context("checking the configuration")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let shutdown =
            rk3s_common::signal::shutdown_signal().context("installing the signal handlers")?;
        let kube_config = match &args.kubeconfig {
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kc, &Default::default())
                    .await
                    .context("loading the kubeconfig")?
            }
            None => kube::Config::infer()
                .await
                .context("finding a kubeconfig")?,
        };
        let client = kube::Client::try_from(kube_config).context("building the API client")?;
        let started = rk3s_scheduler::start(config)
            .await
            .context("starting the scheduler")?;
        rk3s_common::notify::ready("running (leader election first)");
        started
            .run(client, shutdown)
            .await
            .context("running the scheduler")
    })
}
