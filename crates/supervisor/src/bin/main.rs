//! `rk3s`: the single rk3s binary.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = rk3s::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    rk3s::run(cli).await
}
