//! `meridian-proxy`: the gateway's data plane and its admin API.

use clap::Parser;
use meridian_kit::{config, listen, service};
use meridian_proxy::{App, Config, app::ENV_PREFIX};

/// Proxy: Meridian's gateway (data plane, API definitions, hot reload).
#[derive(Parser)]
#[command(version, about, after_help = config::variables_help::<Config>(ENV_PREFIX))]
struct Cli {}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    Cli::parse();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    service::main("meridian-proxy", ENV_PREFIX, |config: Config, metrics, stop| async move {
        listen::raise_open_files();
        let gateway = listen::bind(&config.listen, config.listen_backlog).await?;
        let admin = tokio::net::TcpListener::bind(&config.http_addr).await?;
        tracing::info!(gateway = %gateway.local_addr()?, admin = %admin.local_addr()?, "proxy listening");
        App::build(config, &metrics).await?.serve(gateway, admin, stop).await
    })
    .await?;
    Ok(())
}
