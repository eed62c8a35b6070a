//! `meridian-key-issuer`: keys, policies, organisation sessions and OAuth
//! clients behind the Tyk Gateway API.

use clap::Parser;
use meridian_key_issuer::{App, Config, app::ENV_PREFIX};
use meridian_kit::{config, service};

/// Key-issuer: keys, policies, organisation quotas and OAuth clients (Tyk Gateway API).
#[derive(Parser)]
#[command(version, about, after_help = config::variables_help::<Config>(ENV_PREFIX))]
struct Cli {}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    Cli::parse();
    service::main(
        "meridian-key-issuer",
        ENV_PREFIX,
        |config: Config, metrics, stop| async move {
            let http = tokio::net::TcpListener::bind(&config.http_addr).await?;
            tracing::info!(http = %http.local_addr()?, "key-issuer listening");
            App::build(config, &metrics).await?.serve(http, stop).await
        },
    )
    .await?;
    Ok(())
}
