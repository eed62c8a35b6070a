//! `meridian-portal-sync`: the developer portal's providers, Products,
//! Plans, apps and provisioning.

use clap::Parser;
use meridian_kit::{config, shutdown, telemetry};
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
    telemetry::init("meridian-portal-sync");
    let config: Config = config::from_env_or_exit(ENV_PREFIX);
    let http = tokio::net::TcpListener::bind(&config.http_addr).await?;
    tracing::info!(http = %http.local_addr()?, "portal-sync listening");
    let app = match App::build(config, &meridian_kit::metrics::Metrics::new()).await {
        Ok(app) => app,
        Err(meridian_portal_sync::app::AppError::Config(e)) => {
            eprintln!("{e}");
            std::process::exit(config::EXIT_BAD_CONFIG);
        }
        Err(e) => return Err(e.into()),
    };
    app.serve(http, shutdown::on_signal()).await?;
    telemetry::shutdown();
    Ok(())
}
