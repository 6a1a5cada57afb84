//! `rk3s`: the single rk3s binary.

use anyhow::Context as _;
use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = rk3s::Cli::parse();
    if let rk3s::Command::Kubectl(args) = cli.command {
        // No runtime and no logging: kubectl replaces this process.
        return rk3s::kubectl::exec(args).context("rk3s kubectl");
    }
    rk3s_common::cli::init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(rk3s::run(cli))
}
