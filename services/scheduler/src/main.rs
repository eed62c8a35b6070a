//! `meridian-scheduler`: sync jobs, fired once per due time.

use clap::Parser;
use meridian_kit::{config, service};
use meridian_scheduler::{App, Config, app::ENV_PREFIX};

/// Scheduler: sync jobs, fired once per due time.
#[derive(Parser)]
#[command(version, about, after_help = config::variables_help::<Config>(ENV_PREFIX))]
struct Cli {}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    Cli::parse();
    service::main(
        "meridian-scheduler",
        ENV_PREFIX,
        |config: Config, metrics, stop| async move {
            let http = tokio::net::TcpListener::bind(&config.http_addr).await?;
            tracing::info!(http = %http.local_addr()?, "scheduler listening");
            App::build(config, &metrics).await?.serve(http, stop).await
        },
    )
    .await?;
    Ok(())
}
