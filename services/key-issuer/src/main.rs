//! `meridian-key-issuer`: keys, policies, organisation sessions and OAuth
//! clients behind the Tyk Gateway API.

use clap::Parser;
use meridian_key_issuer::{App, Config, app::ENV_PREFIX};
use meridian_kit::{config, shutdown, telemetry};

/// Key-issuer: keys, policies, organisation quotas and OAuth clients (Tyk Gateway API).
#[derive(Parser)]
#[command(version, about, after_help = config::variables_help::<Config>(ENV_PREFIX))]
struct Cli {}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    Cli::parse();
    telemetry::init("meridian-key-issuer");
    let config: Config = config::from_env_or_exit(ENV_PREFIX);
    let http = tokio::net::TcpListener::bind(&config.http_addr).await?;
    tracing::info!(http = %http.local_addr()?, "key-issuer listening");
    let app = match App::build(config, &meridian_kit::metrics::Metrics::new()).await {
        Ok(app) => app,
        Err(meridian_key_issuer::app::AppError::Config(e)) => {
            eprintln!("{e}");
            std::process::exit(config::EXIT_BAD_CONFIG);
        }
        Err(e) => return Err(e.into()),
    };
    app.serve(http, shutdown::on_signal()).await?;
    telemetry::shutdown();
    Ok(())
}
