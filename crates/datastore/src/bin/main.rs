//! `rk3s-datastore`: serves the etcd v3 API over a SQLite, Postgres, MySQL or etcd datastore.

use anyhow::Context;
use clap::Parser;
use rk3s_datastore::server::{Args, run};

/// The rk3s datastore: the etcd v3 API over SQLite, Postgres, MySQL or etcd.
#[derive(Debug, Parser)]
#[command(name = "rk3s-datastore", version, about)]
struct Cli {
    #[command(flatten)]
    args: Args,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    rk3s_common::cli::init_logging();
    let shutdown =
        rk3s_common::signal::shutdown_signal().context("installing the signal handlers")?;
    run(cli.args, shutdown, |listen| {
        rk3s_common::notify::ready(&format!("serving the etcd v3 API on {listen}"));
    })
    .await
    .context("rk3s-datastore")?;
    Ok(())
}
