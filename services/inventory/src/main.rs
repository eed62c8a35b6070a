//! `meridian-inventory`: serve the API Repository, or rebuild it from the log.

use clap::{Parser, Subcommand};
use meridian_inventory::{App, Config, app::ENV_PREFIX};
use meridian_kit::{config, shutdown, telemetry};

/// The API Repository: serves it, or rebuilds it from the log.
#[derive(Parser)]
#[command(version, about, after_help = config::variables_help::<Config>(ENV_PREFIX))]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the repository (the default).
    Serve,
    /// Wipe the local repository and replay the SYNC stream from the start;
    /// prints the digest. Stop the service first.
    Rebuild,
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init("meridian-inventory");
    let config: Config = config::from_env_or_exit(ENV_PREFIX);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let listener = tokio::net::TcpListener::bind(&config.http_addr).await?;
            tracing::info!(addr = %listener.local_addr()?, "inventory listening");
            let app = match App::build(config, &meridian_kit::metrics::Metrics::new()).await {
                Ok(app) => app,
                Err(meridian_inventory::app::AppError::Config(e)) => {
                    eprintln!("{e}");
                    std::process::exit(config::EXIT_BAD_CONFIG);
                }
                Err(e) => return Err(e.into()),
            };
            app.serve(listener, shutdown::on_signal()).await?;
        }
        Command::Rebuild => {
            let report = meridian_inventory::rebuild(config).await?;
            println!("{report}");
        }
    }
    meridian_kit::telemetry::shutdown();
    Ok(())
}
