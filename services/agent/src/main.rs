//! `meridian-agent --config agent-config.yaml`: the governance agent.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use meridian_agent::config::{self, AgentConfig, LogLevel, ProviderSettings};
use meridian_agent::providers::{ProviderConfig, aws::AwsApiGateway, tyk::TykDashboard};
use meridian_agent::{probe, session};
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

/// Exit code for bad configuration (as every Meridian binary).
const EXIT_BAD_CONFIG: i32 = meridian_kit::config::EXIT_BAD_CONFIG;

fn refuse(message: String) -> ! {
    eprintln!("{message}");
    std::process::exit(EXIT_BAD_CONFIG);
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = config::load(cli.config.as_deref()).unwrap_or_else(|e| refuse(e.to_string()));
    meridian_kit::telemetry::init_at("meridian-agent", level(config.log_level));
    let providers = providers(&config).unwrap_or_else(|e| refuse(e));
    let hub = hub_url(&config);

    let (link_tx, link_rx) = tokio::sync::watch::channel(false);
    let (_role_tx, role_rx) = tokio::sync::watch::channel("not electing");
    let port = config.health_probe.server.port;
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
        .await
        .map_err(|e| anyhow::anyhow!("healthProbe.server.port {port}: {e}"))?;
    let stop = shutdown::on_signal();
    let probe = probe::router(probe::ProbeState {
        link: link_rx,
        role: role_rx,
    });
    let probe_stop = stop.clone();
    let probe_task = tokio::spawn(async move {
        axum::serve(listener, probe)
            .with_graceful_shutdown(async move { probe_stop.cancelled().await })
            .await
    });
    tracing::info!(%hub, providers = providers.len(), probe_port = port, "agent starting");
    let mut session = session::SessionConfig::new(
        &hub,
        config.governance_dashboard.auth.token.expose(),
        providers,
    );
    let k = &config.rpc.keepalive;
    session.keepalive = k.enabled.then_some(session::Keepalive {
        time: k.time.0,
        timeout: k.timeout.0,
        permit_without_stream: k.permit_without_stream,
    });
    session::run_reporting(session, stop.clone(), link_tx).await;
    stop.cancel();
    probe_task.await??;
    tracing::info!("agent stopped");
    Ok(())
}

fn level(l: LogLevel) -> &'static str {
    match l {
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    }
}

/// `host:port` becomes `http://host:port`; a URL is kept.
fn hub_url(config: &AgentConfig) -> String {
    let url = config.governance_dashboard.server.url.trim();
    if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    }
}

/// The configured providers, or why the agent cannot serve one yet.
fn providers(config: &AgentConfig) -> Result<Vec<ProviderConfig>, String> {
    if config.governance_dashboard.server.tls.enabled {
        return Err("governanceDashboard.server.tls.enabled: TLS towards the hub is not supported by this build yet".into());
    }
    if config.leader_election.enabled {
        return Err("leaderElection.enabled: leader election is not supported by this build yet; run one replica".into());
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    config
        .instances
        .iter()
        .enumerate()
        .map(|(i, instance)| {
            let source: Arc<dyn meridian_agent::providers::Source> =
                match ProviderSettings::parse(i, instance).map_err(|e| e.to_string())? {
                    ProviderSettings::Tyk(t) => Arc::new(TykDashboard {
                        host: t.host,
                        key: t.auth.expose().to_owned(),
                        http: http.clone(),
                    }),
                    ProviderSettings::Aws(a) => Arc::new(AwsApiGateway::new(
                        &a.region,
                        &a.access_key_id,
                        a.access_key_secret.expose(),
                        a.session_token.map(|t| t.expose().to_owned()),
                        a.endpoint,
                        http.clone(),
                    )),
                };
            Ok(ProviderConfig {
                name: instance.name.clone(),
                provider_type: instance.provider_type.clone(),
                source,
            })
        })
        .collect()
}
