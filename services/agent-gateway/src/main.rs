//! `meridian-agent-gateway`: the agents' gRPC endpoint and the registry's REST API.

use clap::Parser;
use meridian_agent_gateway::{App, Config, app::ENV_PREFIX};
use meridian_kit::{config, service};

/// Agent gateway: the agents' gRPC endpoint and the registry's REST API.
#[derive(Parser)]
#[command(version, about, after_help = config::variables_help::<Config>(ENV_PREFIX))]
struct Cli {}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    Cli::parse();
    service::main("meridian-agent-gateway", ENV_PREFIX, |config: Config, metrics, stop| async move {
        let http = tokio::net::TcpListener::bind(&config.http_addr).await?;
        let grpc = tokio::net::TcpListener::bind(&config.grpc_addr).await?;
        tracing::info!(http = %http.local_addr()?, grpc = %grpc.local_addr()?, "agent-gateway listening");
        App::build(config, &metrics).await?.serve(http, grpc, stop).await
    })
    .await?;
    Ok(())
}
