//! The rk3s supervisor: the one binary, `rk3s`, that runs rk3s' components as tasks of one
//! process.
//!
//! - `rk3s server` ([`server::run_server`]): the control plane — the datastore in process, the
//!   apiserver and optionally the etcd v3 endpoint as supervised tasks ([`supervise`]); writes
//!   the admin kubeconfig when the API is ready, then runs the scheduler and the controller
//!   manager as API clients with their own identities. Servers on one datastore share the CAs
//!   ([`bootstrap`]). Settings: [`config`].
//! - `rk3s kubectl ...` ([`kubectl`]): the system kubectl with the admin kubeconfig.
//! - `rk3s datastore`: the etcd v3 endpoint alone, as `rk3s-datastore`.
//! - `rk3s secrets-encrypt` ([`secrets_encrypt`]), `rk3s token` ([`token`]): K3s' tools,
//!   clients of the running server.
//! - `rk3s agent` ([`agent`]): joins a server with its token and fetches the kubelet's
//!   credentials (the node half that would use them is not built yet).
//!
//! The node half (kubelet, containerd, networking) of both commands is not built yet.

pub mod agent;
pub mod bootstrap;
pub mod config;
pub mod kubeconfig;
pub mod kubectl;
pub mod secrets_encrypt;
pub mod server;
pub mod supervise;
pub mod token;

use anyhow::Context;

pub use config::{ServerArgs, ServerConfig, load_config};
pub use rk3s_common::{notify, signal::shutdown_signal};
pub use rk3s_datastore::server::Args as DatastoreArgs;

/// The `rk3s` command line.
#[derive(Debug, clap::Parser)]
#[command(
    name = "rk3s",
    version,
    about = "rk3s: a lightweight Kubernetes distribution",
    after_help = "The node half of `rk3s server` and `rk3s agent` (kubelet, containerd, networking) \
arrives with later issues."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands of `rk3s`.
#[derive(Debug, clap::Subcommand)]
// Parsed once per process: the size of `ServerArgs` does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run the control plane: datastore, Kubernetes API, scheduler and controller manager (the
    /// node half is not built yet)
    Server(ServerArgs),
    /// Join a server as a node: verify its CA against the token, obtain the kubelet
    /// certificates (the kubelet itself is not built yet)
    Agent(agent::AgentArgs),
    /// Run the system kubectl with the admin kubeconfig
    Kubectl(kubectl::KubectlArgs),
    /// Serve the etcd v3 API over a SQLite, Postgres, MySQL or etcd datastore
    Datastore(DatastoreArgs),
    /// Control secrets encryption on the running server: status, enable, disable, prepare,
    /// rotate, reencrypt, rotate-keys
    SecretsEncrypt(secrets_encrypt::SecretsEncryptArgs),
    /// Manage bootstrap tokens: create, list, delete, generate
    Token(token::TokenArgs),
}

/// Runs a parsed command line until SIGINT or SIGTERM (`rk3s kubectl` replaces the process).
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Server(args) => {
            // Handlers first: a SIGTERM while the configuration loads is not lost.
            let shutdown = shutdown_signal().context("installing the signal handlers")?;
            let config = load_config(&args).context("rk3s server")?;
            server::run_server(config, shutdown)
                .await
                .context("rk3s server")
        }
        Command::Agent(args) => {
            let config = agent::load_agent_config(&args).context("rk3s agent")?;
            let shutdown = shutdown_signal().context("installing the signal handlers")?;
            agent::run_agent(config, shutdown)
                .await
                .context("rk3s agent")
        }
        Command::Kubectl(args) => kubectl::exec(args).context("rk3s kubectl"),
        Command::Datastore(args) => run_datastore(args).await,
        Command::SecretsEncrypt(args) => secrets_encrypt::run(args)
            .await
            .context("rk3s secrets-encrypt"),
        Command::Token(args) => token::run(args).await.context("rk3s token"),
    }
}

/// `rk3s datastore`: the same entry point as the `rk3s-datastore` binary.
pub async fn run_datastore(args: DatastoreArgs) -> anyhow::Result<()> {
    let shutdown = shutdown_signal().context("installing the signal handlers")?;
    rk3s_datastore::server::run(args, shutdown, |listen| {
        notify::ready(&format!("serving the etcd v3 API on {listen}"));
    })
    .await
    .context("rk3s datastore")
}
