//! `meridian-inventory`: serve the API Repository, or rebuild it from the log.

use clap::{Parser, Subcommand};
use meridian_inventory::{App, Config, app::ENV_PREFIX};
use meridian_kit::{config, service};

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
    service::main(
        "meridian-inventory",
        ENV_PREFIX,
        |config: Config, metrics, stop| async move {
            match cli.command.unwrap_or(Command::Serve) {
                Command::Serve => {
                    let http = tokio::net::TcpListener::bind(&config.http_addr).await?;
                    tracing::info!(addr = %http.local_addr()?, "inventory listening");
                    App::build(config, &metrics).await?.serve(http, stop).await
                }
                Command::Rebuild => {
                    println!("{}", meridian_inventory::rebuild(config).await?);
                    Ok(())
                }
            }
        },
    )
    .await?;
    Ok(())
}
