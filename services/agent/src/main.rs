//! `meridian-agent --config agent-config.yaml`: the governance agent.

use clap::Parser;
use meridian_agent::app::{self, App};
use meridian_agent::config;
use meridian_kit::shutdown;

/// The governance agent. Settings come from the YAML file and from
/// MERIDIAN_AGENT_* variables (or their documented TYK_AGENT_* aliases),
/// for example MERIDIAN_AGENT_GOVERNANCEDASHBOARD_SERVER_URL.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The configuration file (optional when every setting comes from the environment).
    #[arg(long, short, env = config::CONFIG_PATH_VAR)]
    config: Option<std::path::PathBuf>,
}

/// Prints why the configuration is unusable and exits with code 64.
fn refuse(message: impl std::fmt::Display) -> ! {
    eprintln!("{message}");
    std::process::exit(meridian_kit::config::EXIT_BAD_CONFIG);
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = config::load(cli.config.as_deref()).unwrap_or_else(|e| refuse(e));
    meridian_kit::telemetry::init_at("meridian-agent", app::log_level(&config));
    // One crypto backend for every TLS client in the process (hub, providers, Kubernetes).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let app = App::build(&config).await.unwrap_or_else(|e| refuse(e));
    app.run_until_stopped(shutdown::on_signal()).await?;
    tracing::info!("agent stopped");
    meridian_kit::telemetry::shutdown();
    Ok(())
}
