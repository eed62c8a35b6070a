//! `meridian-scheduler`: sync jobs, fired once per due time.

use clap::Parser;
use meridian_kit::{config, shutdown, telemetry};
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
    telemetry::init("meridian-scheduler");
    let config: Config = config::from_env_or_exit(ENV_PREFIX);
    let http = tokio::net::TcpListener::bind(&config.http_addr).await?;
    tracing::info!(http = %http.local_addr()?, "scheduler listening");
    let app = match App::build(config, &meridian_kit::metrics::Metrics::new()).await {
        Ok(app) => app,
        Err(meridian_scheduler::app::AppError::Config(e)) => {
            eprintln!("{e}");
            std::process::exit(config::EXIT_BAD_CONFIG);
        }
        Err(e) => return Err(e.into()),
    };
    app.serve(http, shutdown::on_signal()).await?;
    meridian_kit::telemetry::shutdown();
    Ok(())
}
