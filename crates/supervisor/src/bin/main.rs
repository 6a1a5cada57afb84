//! `rk3s`: the single rk3s binary.

use std::io::IsTerminal as _;

use anyhow::Context as _;
use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = rk3s::Cli::parse();
    if let rk3s::Command::Kubectl(args) = cli.command {
        // No runtime and no logging: kubectl replaces this process.
        return rk3s::kubectl::exec(args).context("rk3s kubectl");
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(rk3s::run(cli))
}
