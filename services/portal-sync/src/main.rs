//! `meridian-portal-sync`: the developer portal's providers, Products,
//! Plans, apps and provisioning.

use clap::Parser;
use meridian_kit::{config, service};
use meridian_portal_sync::{App, Config, app::ENV_PREFIX};

/// Portal-sync: provider policies become portal Products and Plans; approvals become credentials.
#[derive(Parser)]
#[command(version, about, after_help = config::variables_help::<Config>(ENV_PREFIX))]
struct Cli {}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    Cli::parse();
    service::main(
        "meridian-portal-sync",
        ENV_PREFIX,
        |config: Config, metrics, stop| async move {
            let http = tokio::net::TcpListener::bind(&config.http_addr).await?;
            tracing::info!(http = %http.local_addr()?, "portal-sync listening");
            App::build(config, &metrics).await?.serve(http, stop).await
        },
    )
    .await?;
    Ok(())
}
