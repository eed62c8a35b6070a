//! Wiring: configuration, NATS, the three folds, the firing loop and HTTP.

use std::time::Duration;

use meridian_kit::CancellationToken;
use meridian_kit::bus::{self, Publisher};
use meridian_kit::config::{ConfigError, HumanDuration, Secret, admin_key};
use meridian_kit::http::{self, ApiKey, ReadyCheck};
use meridian_kit::metrics::Metrics;
use meridian_kit::projection::{InMemory, Progress, ProjectionError, ProjectionSpec, Runner};
use meridian_schemas::streams;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;

use crate::adapters::firing::Firer;
use crate::adapters::folds::State;
use crate::api;
use crate::domain::{Agents, Jobs, Runs};

/// Environment prefix of the configuration.
pub const ENV_PREFIX: &str = "MERIDIAN_SCHEDULER__";

/// Configuration (`MERIDIAN_SCHEDULER__<FIELD>`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// NATS server URL. Default: `nats://127.0.0.1:4222`.
    #[serde(default = "meridian_kit::config::default_nats_url")]
    pub nats_url: String,
    /// Address of the standalone REST server. Default: `127.0.0.1:8083`.
    #[serde(default = "default_http_addr")]
    pub http_addr: String,
    /// Admin key; defaults to `MERIDIAN_API_KEY`.
    pub api_key: Option<Secret>,
    /// Shortest `repeat_every` a job may have. Default: `1m`.
    #[serde(default = "default_min_interval")]
    pub min_interval: HumanDuration,
    /// This replica's name in the run history (default: `HOSTNAME`, which is
    /// the pod name on Kubernetes).
    pub replica: Option<String>,
    /// How long to wait for agent-gateway to answer a sync request before
    /// reporting the agent offline. Default: `5s`.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: HumanDuration,
}

fn default_http_addr() -> String {
    "127.0.0.1:8083".into()
}
fn default_min_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_request_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

impl Config {
    /// Defaults with the given NATS URL and admin key (launcher and tests).
    pub fn new(nats_url: &str, api_key: &str) -> Self {
        Self {
            nats_url: nats_url.to_owned(),
            http_addr: "127.0.0.1:0".into(),
            api_key: Some(Secret::new(api_key)),
            min_interval: default_min_interval(),
            replica: None,
            request_timeout: default_request_timeout(),
        }
    }
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
    /// A fold stopped.
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    /// A fold halted on a message it could not apply.
    #[error("the scheduler's state halted: {0}")]
    Halted(String),
    /// The folds did not catch up with the log in time.
    #[error("the scheduler's state did not catch up with the log within {0:?}")]
    NotCaughtUp(Duration),
    /// HTTP server.
    #[error("HTTP server: {0}")]
    Http(#[from] std::io::Error),
}

meridian_kit::config_failure!(AppError);

/// A built scheduler, ready to run.
pub struct App {
    client: async_nats::Client,
    state: State,
    runners: Runners,
    progress: [Progress; 3],
    firer: Firer,
    min_interval: Duration,
    api_key: ApiKey,
    metrics: Metrics,
}

struct Runners {
    jobs: Runner<InMemory<Jobs>>,
    agents: Runner<InMemory<Agents>>,
    runs: Runner<InMemory<Runs>>,
}

impl App {
    /// Checks configuration, connects, creates streams. Its series go to
    /// `metrics` (one per service instance; the hub shares one).
    pub async fn build(config: Config, metrics: &Metrics) -> Result<Self, AppError> {
        let api_key =
            ApiKey::new(admin_key(config.api_key.clone(), "MERIDIAN_SCHEDULER__API_KEY")?.expose());
        if config.min_interval.0 < Duration::from_secs(1) {
            return Err(ConfigError {
                message: format!("{ENV_PREFIX}MIN_INTERVAL must be at least 1s"),
            }
            .into());
        }
        let replica = meridian_kit::config::replica_name(config.replica.as_deref(), "scheduler");
        let client = bus::connect(
            &config.nats_url,
            "meridian-scheduler",
            Duration::from_secs(30),
            metrics,
        )
        .await?;
        let js = async_nats::jetstream::new(client.clone());
        bus::ensure_streams(&js, &[streams::AGENTS, streams::SYNC, streams::SCHEDULE]).await?;
        // All three folds are small and every replica needs all of them:
        // rebuilt in memory from the log at every start.
        let state = State::default();
        let (jobs, jobs_progress) = Runner::in_memory(
            js.clone(),
            state.jobs.clone(),
            ProjectionSpec::ordered("scheduler-jobs", streams::SCHEDULE),
            metrics,
        );
        let (agents, agents_progress) = Runner::in_memory(
            js.clone(),
            state.agents.clone(),
            ProjectionSpec::ordered("scheduler-agents", streams::AGENTS),
            metrics,
        );
        let (runs, runs_progress) = Runner::in_memory(
            js.clone(),
            state.runs.clone(),
            ProjectionSpec::ordered("scheduler-runs", streams::SYNC)
                .filtered(Some(streams::SYNC_RUN_EVENTS)),
            metrics,
        );
        let firer = Firer {
            state: state.clone(),
            jobs_progress: jobs_progress.clone(),
            publisher: Publisher::new(js, metrics),
            client: client.clone(),
            replica,
            request_patience: config.request_timeout.0,
        };
        Ok(Self {
            client,
            state,
            runners: Runners { jobs, agents, runs },
            progress: [jobs_progress, agents_progress, runs_progress],
            firer,
            min_interval: config.min_interval.0,
            api_key,
            metrics: metrics.clone(),
        })
    }

    /// Follows the log and fires due jobs until `stop`. Firing starts only
    /// once every fold caught up, so no replica fires from a partial view.
    pub async fn run_until_stopped(self, stop: CancellationToken) -> Result<(), AppError> {
        let Runners { jobs, agents, runs } = self.runners;
        let mut folds = tokio::task::JoinSet::new();
        folds.spawn(jobs.run_until_stopped(stop.clone()));
        folds.spawn(agents.run_until_stopped(stop.clone()));
        folds.spawn(runs.run_until_stopped(stop.clone()));
        let patience = Duration::from_secs(60);
        let deadline = tokio::time::Instant::now() + patience;
        while !self.progress.iter().all(Progress::caught_up) {
            if tokio::time::Instant::now() > deadline {
                stop.cancel();
                return Err(AppError::NotCaughtUp(patience));
            }
            if let Some(halted) = self.progress.iter().find_map(Progress::halted) {
                stop.cancel();
                return Err(AppError::Halted(halted));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let firing = tokio::spawn(self.firer.run_until_stopped(stop.clone()));
        let mut result = Ok(());
        while let Some(ended) = folds.join_next().await {
            if let Ok(Err(e)) = ended {
                stop.cancel();
                result = Err(e.into());
            }
        }
        stop.cancel();
        let _ = firing.await;
        result
    }

    /// Standalone: REST (with health and OpenAPI) on `http`.
    pub async fn serve(
        self,
        http_listener: tokio::net::TcpListener,
        stop: CancellationToken,
    ) -> Result<(), AppError> {
        http::serve_service(self, http_listener, stop, |app, stop| {
            app.run_until_stopped(stop)
        })
        .await
    }
}

impl http::Surface for App {
    const TITLE: &'static str = "Meridian scheduler";

    /// The REST routes (admin key required) with their OpenAPI description.
    fn api(&self) -> OpenApiRouter {
        let state = api::ApiState {
            folds: self.state.clone(),
            jobs_progress: self.progress[0].clone(),
            agents_progress: self.progress[1].clone(),
            publisher: self.firer.publisher.clone(),
            min_interval: self.min_interval,
        };
        http::with_api_key(api::router(state), self.api_key.clone())
    }

    /// Ready when NATS is connected and every fold caught up.
    fn ready_checks(&self) -> Vec<ReadyCheck> {
        let [jobs, agents, runs] = self.progress.clone();
        vec![
            http::nats_ready(self.client.clone()),
            http::projection_ready("sync jobs", jobs),
            http::projection_ready("agent registry", agents),
            http::projection_ready("sync runs", runs),
        ]
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}
