//! `meridian-agent --config agent-config.yaml`: the governance agent.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use meridian_agent::config::{self, AgentConfig, LogLevel, ProviderSettings};
use meridian_agent::election::{Elector, Role, Timings};
use meridian_agent::providers::{ProviderConfig, aws::AwsApiGateway, tyk::TykDashboard};
use meridian_agent::{probe, session, tls};
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

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = config::load(cli.config.as_deref()).unwrap_or_else(|e| refuse(e.to_string()));
    meridian_kit::telemetry::init_at("meridian-agent", level(config.log_level));
    // One crypto backend for every TLS client in the process (hub, providers, Kubernetes).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let providers = providers(&config).unwrap_or_else(|e| refuse(e));
    let tls = tls_config(&config).unwrap_or_else(|e| refuse(e.to_string()));
    let hub = hub_url(&config);
    let elector = elector(&config).await.unwrap_or_else(|e| refuse(e));

    let (link_tx, link_rx) = tokio::sync::watch::channel(false);
    let (role_tx, role_rx) = tokio::sync::watch::channel(Role::NotElecting);
    let port = config.health_probe.server.port;
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
        .await
        .map_err(|e| anyhow::anyhow!("healthProbe.server.port {port}: {e}"))?;
    let stop = shutdown::on_signal();
    let metrics = meridian_kit::metrics::Metrics::new();
    let probe = probe::router(
        probe::ProbeState {
            link: link_rx,
            role: role_rx.clone(),
        },
        &metrics,
    );
    let probe_stop = stop.clone();
    let probe_task = tokio::spawn(async move {
        axum::serve(listener, probe)
            .with_graceful_shutdown(async move { probe_stop.cancelled().await })
            .await
    });
    tracing::info!(%hub, tls = tls.is_some(), providers = providers.len(), probe_port = port, electing = elector.is_some(), "agent starting");
    let election = elector.map(|e| tokio::spawn(e.run(role_tx, stop.clone())));
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
    session.tls = tls;
    session.counters = session::RunCounters::new(&metrics);
    session::run_reporting(session, stop.clone(), link_tx, role_rx).await;
    stop.cancel();
    if let Some(election) = election {
        election.await?;
    }
    probe_task.await??;
    tracing::info!("agent stopped");
    meridian_kit::telemetry::shutdown();
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

/// `host:port` becomes `http://host:port` (`https://` with TLS); a URL is kept.
fn hub_url(config: &AgentConfig) -> String {
    let url = config.governance_dashboard.server.url.trim();
    if url.contains("://") {
        url.to_owned()
    } else if config.governance_dashboard.server.tls.enabled {
        format!("https://{url}")
    } else {
        format!("http://{url}")
    }
}

/// The TLS client configuration, when `tls.enabled`.
fn tls_config(config: &AgentConfig) -> Result<Option<Arc<rustls::ClientConfig>>, tls::TlsError> {
    let t = &config.governance_dashboard.server.tls;
    if !t.enabled {
        return Ok(None);
    }
    if t.insecure_skip_verify {
        tracing::warn!(
            "governanceDashboard.server.tls.insecureSkipVerify is on: the hub's certificate is not checked"
        );
    }
    let files = tls::TlsFiles {
        ca_cert: t.ca_cert_path.clone(),
        client: t.client_cert_path.clone().zip(t.client_key_path.clone()),
        insecure_skip_verify: t.insecure_skip_verify,
    };
    tls::client_config(&files).map(Some)
}

/// The Lease elector, when `leaderElection.enabled` (the configuration
/// check has made sure `POD_NAME` and `POD_NAMESPACE` are set).
async fn elector(config: &AgentConfig) -> Result<Option<Elector>, String> {
    let le = &config.leader_election;
    if !le.enabled {
        return Ok(None);
    }
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let identity = var("POD_NAME");
    let namespace = if le.lease_namespace.is_empty() {
        var("POD_NAMESPACE")
    } else {
        le.lease_namespace.clone()
    };
    let client = kube::Client::try_default().await.map_err(|e| {
        format!("leaderElection.enabled: cannot reach the Kubernetes API (in-cluster or KUBECONFIG): {e}")
    })?;
    tracing::info!(lease = %le.lease_name, %namespace, %identity, "leader election on");
    Ok(Some(Elector::new(
        client,
        &namespace,
        &le.lease_name,
        &identity,
        Timings {
            lease_duration: le.lease_duration.0,
            renew_deadline: le.renew_deadline.0,
            retry_period: le.retry_period.0,
        },
    )))
}

/// The configured providers.
fn providers(config: &AgentConfig) -> Result<Vec<ProviderConfig>, String> {
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
