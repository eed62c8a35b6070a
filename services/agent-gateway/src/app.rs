//! Wiring: configuration, NATS, the registry projection, gRPC and HTTP.

use std::sync::Arc;

use meridian_kit::writer::Lock;
use std::time::Duration;

use meridian_kit::CancellationToken;
use meridian_kit::bus::{self, Publisher};
use meridian_kit::config::{ConfigError, HumanDuration, Secret, admin_key};
use meridian_kit::http::{self, ApiKey, ReadyCheck};
use meridian_kit::metrics::Metrics;
use meridian_kit::projection::{self, ConsumerKind, InMemory, Progress, ProjectionSpec, Runner};
use meridian_kit::store::{Db, StoreError};
use meridian_schemas::agents::{AgentStatus, Heartbeat};
use meridian_schemas::proto::agent_hub_server::AgentHubServer;
use meridian_schemas::streams;
use serde::Deserialize;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use utoipa_axum::router::OpenApiRouter;

use crate::adapters::grpc::{Hub, Settings};
use crate::adapters::orphans;
use crate::adapters::registry::{Registry, RegistryProjection};
use crate::adapters::tokens::{MIN_SECRET_BYTES, Tokens};
use crate::api;
use crate::domain::orphans::OpenRuns;

/// HTTP/2 flow-control window per gRPC stream (the connection gets four).
const GRPC_STREAM_WINDOW: u32 = 1 << 20;

/// Environment prefix of the configuration.
pub const ENV_PREFIX: &str = "MERIDIAN_AGENT_GATEWAY__";

/// Configuration (`MERIDIAN_AGENT_GATEWAY__<FIELD>`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// NATS server URL. Default: `nats://127.0.0.1:4222`.
    #[serde(default = "meridian_kit::config::default_nats_url")]
    pub nats_url: String,
    /// Address of the standalone REST server. Default: `127.0.0.1:8081`.
    #[serde(default = "default_http_addr")]
    pub http_addr: String,
    /// Address of the agents' gRPC endpoint. Default: `127.0.0.1:50051`.
    #[serde(default = "default_grpc_addr")]
    pub grpc_addr: String,
    /// Admin key; defaults to `MERIDIAN_API_KEY`.
    pub api_key: Option<Secret>,
    /// Secret that signs agent tokens (at least 32 bytes). Required.
    pub jwt_secret: Option<Secret>,
    /// Lifetime of issued tokens. Default: `30d`.
    #[serde(default = "default_token_ttl")]
    pub token_ttl: HumanDuration,
    /// How often agents send heartbeats. Default: `10s`.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_interval: HumanDuration,
    /// Missed heartbeats before an agent is `INACTIVE`. Default: `3`.
    #[serde(default = "default_missed")]
    pub missed_heartbeats: u32,
    /// Largest API definition accepted from an agent, in bytes.
    /// Default: `1000000`.
    #[serde(default = "default_max_api_bytes")]
    pub max_api_bytes: usize,
    /// PEM certificate chain for TLS on the gRPC endpoint (with `TLS_KEY`).
    /// Default: none (plain gRPC).
    #[serde(default)]
    pub tls_cert: Option<String>,
    /// PEM private key of `TLS_CERT`. Default: none.
    #[serde(default)]
    pub tls_key: Option<String>,
    /// PEM CA bundle: when set, agents must present a client certificate
    /// signed by it (mTLS). Needs `TLS_CERT`.
    /// Default: none (no client certificates).
    #[serde(default)]
    pub tls_client_ca: Option<String>,
    /// How often runs open for longer than this are checked for a live
    /// sync stream holding them; those nobody holds are failed. Default: `30s`.
    #[serde(default = "default_run_check")]
    pub run_check_interval: HumanDuration,
}

fn default_http_addr() -> String {
    "127.0.0.1:8081".into()
}
fn default_grpc_addr() -> String {
    "127.0.0.1:50051".into()
}
fn default_token_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(30 * 86_400))
}
fn default_heartbeat() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_missed() -> u32 {
    3
}
fn default_max_api_bytes() -> usize {
    1_000_000
}
fn default_run_check() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

impl Config {
    /// Defaults with the given NATS URL and secrets (launcher and tests).
    pub fn new(nats_url: &str, api_key: &str, jwt_secret: &str) -> Self {
        Self {
            nats_url: nats_url.to_owned(),
            http_addr: "127.0.0.1:0".into(),
            grpc_addr: "127.0.0.1:0".into(),
            api_key: Some(Secret::new(api_key)),
            jwt_secret: Some(Secret::new(jwt_secret)),
            token_ttl: default_token_ttl(),
            heartbeat_interval: default_heartbeat(),
            missed_heartbeats: default_missed(),
            max_api_bytes: default_max_api_bytes(),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            run_check_interval: default_run_check(),
        }
    }

    /// The gRPC endpoint's TLS settings, read from the configured files.
    pub fn grpc_tls(&self) -> Result<Option<ServerTlsConfig>, ConfigError> {
        let bad = |var: &str, why: String| ConfigError {
            message: format!("{ENV_PREFIX}{var}: {why}"),
        };
        let read = |var: &str, path: &str| {
            std::fs::read(path).map_err(|e| bad(var, format!("cannot read {path}: {e}")))
        };
        let (cert, key) = match (&self.tls_cert, &self.tls_key) {
            (None, None) if self.tls_client_ca.is_some() => {
                return Err(bad(
                    "TLS_CLIENT_CA",
                    "client certificates need TLS: set TLS_CERT and TLS_KEY too".into(),
                ));
            }
            (None, None) => return Ok(None),
            (Some(c), Some(k)) => (read("TLS_CERT", c)?, read("TLS_KEY", k)?),
            (Some(_), None) => return Err(bad("TLS_KEY", "is required with TLS_CERT".into())),
            (None, Some(_)) => return Err(bad("TLS_CERT", "is required with TLS_KEY".into())),
        };
        if !String::from_utf8_lossy(&cert).contains("-----BEGIN CERTIFICATE-----") {
            return Err(bad("TLS_CERT", "holds no PEM certificate".into()));
        }
        if !String::from_utf8_lossy(&key).contains("PRIVATE KEY-----") {
            return Err(bad("TLS_KEY", "holds no PEM private key".into()));
        }
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
        if let Some(path) = &self.tls_client_ca {
            let ca = read("TLS_CLIENT_CA", path)?;
            if !String::from_utf8_lossy(&ca).contains("-----BEGIN CERTIFICATE-----") {
                return Err(bad("TLS_CLIENT_CA", "holds no PEM certificate".into()));
            }
            tls = tls.client_ca_root(Certificate::from_pem(ca));
        }
        Ok(Some(tls))
    }
}

/// `meridian_agents{status}`, from the registry and the latest heartbeats
/// when scraped.
fn count_agents_at_scrape(metrics: &Metrics, registry: Registry, client: async_nats::Client) {
    let agents = metrics.gauges(
        "meridian_agents",
        "Registered agents, by status (ACTIVE, INACTIVE)",
    );
    let gauge = |status: &str| agents.get_or_create_owned(&vec![("status", status.to_owned())]);
    let (active, inactive) = (gauge("ACTIVE"), gauge("INACTIVE"));
    metrics.on_scrape(Arc::new(move || {
        let (registry, js) = (registry.clone(), async_nats::jetstream::new(client.clone()));
        let (active, inactive) = (active.clone(), inactive.clone());
        Box::pin(async move {
            let now = meridian_kit::time::now_ms();
            let (mut up, mut down) = (0, 0);
            for agent in registry.list() {
                let subject = streams::heartbeat_subject(agent.id);
                let beat = http::read_last::<Heartbeat>(&js, &subject)
                    .await
                    .ok()
                    .flatten();
                match AgentStatus::at(beat.as_ref(), now) {
                    AgentStatus::Active => up += 1,
                    AgentStatus::Inactive => down += 1,
                }
            }
            active.set(up);
            inactive.set(down);
        })
    }))
}

/// A failure to start or run.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// NATS.
    #[error(transparent)]
    Bus(#[from] bus::BusError),
    /// The registry's local store.
    #[error("registry storage: {0}")]
    Storage(#[from] StoreError),
    /// The registry projection stopped.
    #[error(transparent)]
    Projection(#[from] projection::ProjectionError),
    /// The registry did not catch up with the log in time.
    #[error("the agent registry did not catch up with the AGENTS stream within {0:?}")]
    NotCaughtUp(Duration),
    /// gRPC server.
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// HTTP server.
    #[error("HTTP server: {0}")]
    Http(#[from] std::io::Error),
}

meridian_kit::config_failure!(AppError);

/// A built agent-gateway, ready to run.
pub struct App {
    client: async_nats::Client,
    registry: Registry,
    runner: Runner<projection::Stored<RegistryProjection>>,
    progress: Progress,
    /// The open runs of `SYNC`, and what the sweeper needs.
    open_runs: Arc<Lock<OpenRuns>>,
    open_runs_runner: Runner<InMemory<OpenRuns>>,
    publisher: Publisher,
    run_check_interval: Duration,
    hub: Hub,
    tokens: Tokens,
    token_ttl: Duration,
    max_api_bytes: usize,
    grpc_tls: Option<ServerTlsConfig>,
    api_key: ApiKey,
    metrics: Metrics,
    _db: Db,
}

impl App {
    /// Checks configuration, connects, creates streams. Its series go to
    /// `metrics` (one per service instance; the hub shares one).
    pub async fn build(config: Config, metrics: &Metrics) -> Result<Self, AppError> {
        let api_key = ApiKey::new(
            admin_key(config.api_key.clone(), "MERIDIAN_AGENT_GATEWAY__API_KEY")?.expose(),
        );
        let secret = config.jwt_secret.as_ref().ok_or_else(|| ConfigError {
            message: format!("set {ENV_PREFIX}JWT_SECRET (at least {MIN_SECRET_BYTES} bytes): it signs agent tokens"),
        })?;
        let tokens = Tokens::new(secret.expose().as_bytes()).map_err(|m| ConfigError {
            message: format!("{ENV_PREFIX}JWT_SECRET: {m}"),
        })?;
        if config.missed_heartbeats == 0 {
            return Err(ConfigError {
                message: format!("{ENV_PREFIX}MISSED_HEARTBEATS must be at least 1"),
            }
            .into());
        }
        if config.run_check_interval.0 < Duration::from_secs(1) {
            return Err(ConfigError {
                message: format!("{ENV_PREFIX}RUN_CHECK_INTERVAL must be at least 1s"),
            }
            .into());
        }
        if config.heartbeat_interval.0 < Duration::from_secs(1) {
            return Err(ConfigError {
                message: format!("{ENV_PREFIX}HEARTBEAT_INTERVAL must be at least 1s"),
            }
            .into());
        }
        let grpc_tls = config.grpc_tls()?;
        let client = bus::connect(
            &config.nats_url,
            "meridian-agent-gateway",
            Duration::from_secs(30),
            metrics,
        )
        .await?;
        let js = async_nats::jetstream::new(client.clone());
        bus::ensure_streams(
            &js,
            &[streams::AGENTS, streams::AGENT_HEARTBEATS, streams::SYNC],
        )
        .await?;
        // The registry is small and every replica needs all of it: rebuild it
        // in memory from the log at every start.
        let db = Db::temporary()?;
        let tree = db.open_tree("registry")?;
        let spec = ProjectionSpec {
            id: "agent-gateway-registry".into(),
            stream: streams::AGENTS,
            consumer: ConsumerKind::Ordered,
            batch: 256,
            batch_bytes: usize::MAX,
            filter_subject: None,
        };
        let (runner, progress) = Runner::new(
            js.clone(),
            tree.clone(),
            Arc::new(RegistryProjection),
            spec,
            metrics,
        );
        let open_runs = Arc::new(Lock::new(OpenRuns::default()));
        let (open_runs_runner, _) = Runner::in_memory(
            js.clone(),
            open_runs.clone(),
            ProjectionSpec {
                id: "agent-gateway-open-runs".into(),
                stream: streams::SYNC,
                consumer: ConsumerKind::Ordered,
                batch: 256,
                batch_bytes: usize::MAX,
                filter_subject: Some(streams::SYNC_RUN_EVENTS),
            },
            metrics,
        );
        let publisher = Publisher::new(js, metrics);
        let registry = Registry::new(tree, publisher.clone(), progress.clone());
        let settings = Settings {
            heartbeat_interval: config.heartbeat_interval.0,
            missed_heartbeats: config.missed_heartbeats,
            max_api_bytes: config.max_api_bytes,
            // Chunks of up to 64 APIs: some 2-8 MB in flight.
            publish_window: 16,
            chunk_linger: Duration::from_millis(5),
        };
        count_agents_at_scrape(metrics, registry.clone(), client.clone());
        let hub = Hub::new(
            registry.clone(),
            tokens.clone(),
            publisher.clone(),
            client.clone(),
            settings,
            metrics,
        );
        Ok(Self {
            client,
            registry,
            runner,
            progress,
            open_runs,
            open_runs_runner,
            publisher,
            run_check_interval: config.run_check_interval.0,
            hub,
            tokens,
            token_ttl: config.token_ttl.0,
            max_api_bytes: config.max_api_bytes,
            grpc_tls,
            api_key,
            metrics: metrics.clone(),
            _db: db,
        })
    }

    /// Follows the registry and serves agents on `grpc` until `stop`. Agents
    /// are accepted only once the registry has caught up, so no valid token
    /// is refused for want of history.
    pub async fn run_until_stopped(
        self,
        grpc: tokio::net::TcpListener,
        stop: CancellationToken,
    ) -> Result<(), AppError> {
        let runner = tokio::spawn(self.runner.run_until_stopped(stop.clone()));
        let open_runs = tokio::spawn(self.open_runs_runner.run_until_stopped(stop.clone()));
        let sweeper = tokio::spawn(orphans::sweep_until_stopped(
            self.open_runs,
            self.client.clone(),
            self.publisher,
            self.run_check_interval,
            stop.clone(),
        ));
        let patience = Duration::from_secs(60);
        let deadline = tokio::time::Instant::now() + patience;
        while !self.progress.caught_up() {
            if tokio::time::Instant::now() > deadline || runner.is_finished() {
                stop.cancel();
                return match runner.await {
                    Ok(Err(e)) => Err(e.into()),
                    _ => Err(AppError::NotCaughtUp(patience)),
                };
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let service = AgentHubServer::new(self.hub)
            .max_decoding_message_size(self.max_api_bytes + (64 << 10))
            .max_encoding_message_size(1 << 20);
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc);
        let stop_grpc = stop.clone();
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = self.grpc_tls {
            tracing::info!("gRPC endpoint serves TLS");
            server = server.tls_config(tls)?;
        }
        let served = server
            // Agents stream thousands of ~2 KB messages per sync; the
            // HTTP/2 default of 64 KiB per stream would make the agent wait
            // for a window update every few dozen.
            .initial_stream_window_size(Some(GRPC_STREAM_WINDOW))
            .initial_connection_window_size(Some(GRPC_STREAM_WINDOW * 4))
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async move { stop_grpc.cancelled().await })
            .await;
        stop.cancel();
        let _ = tokio::join!(open_runs, sweeper);
        let projected = runner
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        served?;
        projected.map_err(AppError::from)
    }

    /// Standalone: REST (with health and OpenAPI) on `http`, gRPC on `grpc`.
    pub async fn serve(
        self,
        http_listener: tokio::net::TcpListener,
        grpc: tokio::net::TcpListener,
        stop: CancellationToken,
    ) -> Result<(), AppError> {
        http::serve_service(self, http_listener, stop, |app, stop| {
            app.run_until_stopped(grpc, stop)
        })
        .await
    }
}

impl http::Surface for App {
    const TITLE: &'static str = "Meridian agent-gateway";

    /// The REST routes (admin key required) with their OpenAPI description.
    fn api(&self) -> OpenApiRouter {
        let state = api::ApiState {
            registry: self.registry.clone(),
            tokens: self.tokens.clone(),
            token_ttl: self.token_ttl,
            client: self.client.clone(),
        };
        http::with_api_key(api::router(state), self.api_key.clone())
    }

    /// Ready when NATS is connected and the registry caught up.
    fn ready_checks(&self) -> Vec<ReadyCheck> {
        vec![
            http::nats_ready(self.client.clone()),
            http::projection_ready("agent registry", self.progress.clone()),
        ]
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}
