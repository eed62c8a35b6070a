//! `meridian`: run the hub for development, or talk to a running hub.

use clap::{Parser, Subcommand};
use meridian::cli::{self, AgentsCmd, ApisCmd, Client};
use meridian::up::{self, UpArgs};

#[derive(Parser)]
#[command(version, about = "Meridian: a federated API governance hub")]
struct Cli {
    /// The hub's REST URL.
    #[arg(
        long,
        global = true,
        env = "MERIDIAN_HUB_URL",
        default_value = "http://127.0.0.1:8000"
    )]
    hub: String,
    /// The admin key.
    #[arg(
        long,
        global = true,
        env = "MERIDIAN_API_KEY",
        hide_env_values = true,
        default_value = ""
    )]
    api_key: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run NATS, every hub service, a demo provider and a demo agent.
    Up(UpArgs),
    /// Manage agents and their tokens.
    #[command(subcommand)]
    Agents(AgentsCmd),
    /// Browse the API Repository.
    #[command(subcommand)]
    Apis(ApisCmd),
    /// Providers with API counts, agent status and last sync.
    Providers,
    /// Scheduled syncs of an agent's providers.
    #[command(subcommand)]
    Jobs(cli::JobsCmd),
    /// Follow the public events (API lifecycle, agent status).
    #[command(subcommand)]
    Events(meridian::events::EventsCmd),
    /// Rebuild the API Repository from the log (stop the hub first).
    Rebuild {
        /// NATS URL.
        #[arg(
            long,
            env = "MERIDIAN_NATS_URL",
            default_value = "nats://127.0.0.1:4222"
        )]
        nats_url: String,
        /// The hub's data directory.
        #[arg(long, default_value = ".meridian")]
        data_dir: std::path::PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The launcher logs what the hub does; the other commands print answers.
    let level = if matches!(cli.command, Command::Up(_)) {
        "info"
    } else {
        "warn"
    };
    meridian_kit::telemetry::init_at("meridian", level);
    let client = || {
        if cli.api_key.is_empty() {
            anyhow::bail!("set MERIDIAN_API_KEY (or pass --api-key) to the hub's admin key");
        }
        Ok(Client::new(&cli.hub, &cli.api_key))
    };
    match cli.command {
        Command::Up(args) => up::up(args).await,
        Command::Agents(cmd) => cli::agents(&client()?, cmd).await,
        Command::Apis(cmd) => cli::apis(&client()?, cmd).await,
        Command::Providers => cli::providers(&client()?).await,
        Command::Jobs(cmd) => cli::jobs(&client()?, cmd).await,
        Command::Events(cmd) => meridian::events::run(cmd).await,
        Command::Rebuild {
            ref nats_url,
            ref data_dir,
        } => {
            let config = meridian_inventory::Config::new(
                nats_url,
                data_dir.join("inventory"),
                "unused-for-rebuild",
            );
            let report = meridian_inventory::rebuild(config).await?;
            println!(
                "rebuilt repository to SYNC sequence {} in {:.2}s\ndigest {}",
                report.position, report.seconds, report.digest
            );
            Ok(())
        }
    }
}
