//! `meridian-agent-gateway`: the agents' gRPC endpoint and the registry's REST API.

use clap::Parser;
use meridian_agent_gateway::{App, Config, app::ENV_PREFIX};
use meridian_kit::{config, shutdown, telemetry};

/// Agent gateway: the agents' gRPC endpoint and the registry's REST API.
#[derive(Parser)]
#[command(version, about, after_help = config::variables_help::<Config>(ENV_PREFIX))]
struct Cli {}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    Cli::parse();
    telemetry::init("meridian-agent-gateway");
    let config: Config = config::from_env_or_exit(ENV_PREFIX);
    let http = tokio::net::TcpListener::bind(&config.http_addr).await?;
    let grpc = tokio::net::TcpListener::bind(&config.grpc_addr).await?;
    tracing::info!(http = %http.local_addr()?, grpc = %grpc.local_addr()?, "agent-gateway listening");
    let app = match App::build(config, &meridian_kit::metrics::Metrics::new()).await {
        Ok(app) => app,
        Err(meridian_agent_gateway::app::AppError::Config(e)) => {
            eprintln!("{e}");
            std::process::exit(config::EXIT_BAD_CONFIG);
        }
        Err(e) => return Err(e.into()),
    };
    app.serve(http, grpc, shutdown::on_signal()).await?;
    meridian_kit::telemetry::shutdown();
    Ok(())
}
