//! Wiring: the configured providers, TLS towards the hub, the Lease elector,
//! the probe, and the session, run until the stop signal.

use std::sync::Arc;
use std::time::Duration;

use meridian_kit::CancellationToken;
use meridian_kit::metrics::Metrics;
use tokio::sync::watch;

use crate::config::{AgentConfig, ConfigError, LogLevel, ProviderSettings};
use crate::election::{Elector, Role, Timings};
use crate::providers::tyk::{MeridianGateway, TykDashboard};
use crate::providers::{ProviderConfig, Source, aws::AwsApiGateway};
use crate::{probe, session, tls};

/// Why the agent cannot start with its configuration (it exits with
/// code 64, naming the key).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A TLS file is unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The HTTP client for the providers cannot be built.
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    /// Leader election is on, but the Kubernetes API is out of reach.
    #[error(
        "leaderElection.enabled: cannot reach the Kubernetes API (in-cluster or KUBECONFIG): {0}"
    )]
    Kubernetes(#[from] kube::Error),
    /// The probe port cannot be bound.
    #[error("healthProbe.server.port {port}: {source}")]
    Probe {
        /// The port.
        port: u16,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The log level a configuration asks for.
pub fn log_level(config: &AgentConfig) -> &'static str {
    match config.log_level {
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    }
}

/// A configured agent, ready to run.
pub struct App {
    session: session::SessionConfig,
    elector: Option<Elector>,
    probe: tokio::net::TcpListener,
    metrics: Metrics,
}

impl App {
    /// Checks what the configuration names (providers, TLS files, the
    /// Kubernetes API when electing) and binds the probe port.
    pub async fn build(config: &AgentConfig) -> Result<Self, StartError> {
        let providers = providers(config)?;
        let tls = tls_config(config)?;
        let hub = hub_url(config);
        let elector = elector(config).await?;
        let port = config.health_probe.server.port;
        let probe = tokio::net::TcpListener::bind(("0.0.0.0", port))
            .await
            .map_err(|source| StartError::Probe { port, source })?;
        // Port 0 takes a free one: this line says which.
        let addr = probe
            .local_addr()
            .map_err(|source| StartError::Probe { port, source })?;
        tracing::info!(%addr, "health probe listening");
        let metrics = Metrics::new();
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
        tracing::info!(
            %hub,
            tls = session.tls.is_some(),
            providers = session.providers.len(),
            probe_port = port,
            electing = elector.is_some(),
            "agent starting"
        );
        Ok(Self {
            session,
            elector,
            probe,
            metrics,
        })
    }

    /// Runs the probe, the election (when on) and the session until `stop`.
    pub async fn run_until_stopped(self, stop: CancellationToken) -> std::io::Result<()> {
        let (link_tx, link_rx) = watch::channel(false);
        let (role_tx, role_rx) = watch::channel(Role::NotElecting);
        let probe = probe::router(
            probe::ProbeState {
                link: link_rx,
                role: role_rx.clone(),
            },
            &self.metrics,
        );
        let probe = tokio::spawn(meridian_kit::http::serve(self.probe, probe, stop.clone()));
        let election = self
            .elector
            .map(|e| tokio::spawn(e.run(role_tx, stop.clone())));
        session::run_reporting(self.session, stop.clone(), link_tx, role_rx).await;
        stop.cancel();
        if let Some(election) = election {
            election.await.map_err(std::io::Error::other)?;
        }
        probe.await.map_err(std::io::Error::other)?
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
async fn elector(config: &AgentConfig) -> Result<Option<Elector>, StartError> {
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
    let client = kube::Client::try_default().await?;
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
fn providers(config: &AgentConfig) -> Result<Vec<ProviderConfig>, StartError> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    config
        .instances
        .iter()
        .enumerate()
        .map(|(i, instance)| {
            let source: Arc<dyn Source> = match ProviderSettings::parse(i, instance)? {
                ProviderSettings::Tyk(t) => Arc::new(TykDashboard {
                    host: t.host,
                    key: t.auth.expose().to_owned(),
                    http: http.clone(),
                }),
                ProviderSettings::Meridian(m) => Arc::new(MeridianGateway {
                    url: m.url,
                    secret: m.secret.expose().to_owned(),
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
