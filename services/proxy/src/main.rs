//! `meridian-proxy`: the gateway's data plane and its admin API.

use clap::Parser;
use meridian_kit::{config, shutdown, telemetry};
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
    telemetry::init("meridian-proxy");
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config: Config = config::from_env_or_exit(ENV_PREFIX);
    meridian_kit::listen::raise_open_files();
    let gateway = meridian_kit::listen::bind(&config.listen, config.listen_backlog).await?;
    let admin = tokio::net::TcpListener::bind(&config.http_addr).await?;
    tracing::info!(gateway = %gateway.local_addr()?, admin = %admin.local_addr()?, "proxy listening");
    let app = match App::build(config, &meridian_kit::metrics::Metrics::new()).await {
        Ok(app) => app,
        Err(meridian_proxy::app::AppError::Config(e)) => {
            eprintln!("{e}");
            std::process::exit(config::EXIT_BAD_CONFIG);
        }
        Err(e) => return Err(e.into()),
    };
    app.serve(gateway, admin, shutdown::on_signal()).await?;
    telemetry::shutdown();
    Ok(())
}
