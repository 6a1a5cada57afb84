//! The rk3s supervisor: the one binary, `rk3s`, that runs rk3s' components as tasks of one
//! process. For now it runs the datastore's etcd v3 endpoint (`rk3s datastore`); `rk3s server`
//! and `rk3s agent` arrive with later issues.

use anyhow::Context;

pub use rk3s_datastore::server::Args as DatastoreArgs;

/// The `rk3s` command line.
#[derive(Debug, clap::Parser)]
#[command(
    name = "rk3s",
    version,
    about = "rk3s: a lightweight Kubernetes distribution",
    after_help = "The `server` and `agent` subcommands arrive with later issues."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands of `rk3s`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Serve the etcd v3 API over a SQLite, Postgres, MySQL or etcd datastore
    Datastore(DatastoreArgs),
}

/// Runs a parsed command line until SIGINT or SIGTERM.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Datastore(args) => run_datastore(args).await,
    }
}

/// `rk3s datastore`: the same entry point as the `rk3s-datastore` binary.
pub async fn run_datastore(args: DatastoreArgs) -> anyhow::Result<()> {
    rk3s_datastore::server::run(args, rk3s_datastore::server::shutdown_signal())
        .await
        .context("rk3s datastore")
}
