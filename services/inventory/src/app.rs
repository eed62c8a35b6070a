//! Wiring: configuration, NATS, the local store, the projection, the outbox, HTTP.

use std::path::PathBuf;
use std::sync::Arc;

use meridian_kit::CancellationToken;
use meridian_kit::bus::{self, Publisher};
use meridian_kit::config::{HumanDuration, Secret, admin_key};
use meridian_kit::http::{self, ApiKey, ReadyCheck};
use meridian_kit::metrics::Metrics;
use meridian_kit::projection::{self, ConsumerKind, Progress, ProjectionSpec, Runner};
use meridian_kit::store::{Db, StoreError, Tree};
use meridian_schemas::streams;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;

use crate::adapters::{outbox, public, store};
use crate::api;

/// Environment prefix of the configuration.
pub const ENV_PREFIX: &str = "MERIDIAN_INVENTORY__";

/// Configuration (`MERIDIAN_INVENTORY__<FIELD>`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// NATS server URL. Default: `nats://127.0.0.1:4222`.
    #[serde(default = "meridian_kit::config::default_nats_url")]
    pub nats_url: String,
    /// Address the standalone HTTP server binds. Default: `127.0.0.1:8082`.
    #[serde(default = "default_http_addr")]
    pub http_addr: String,
    /// Where the repository (the local store) lives.
    /// Default: `.meridian/inventory`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Admin key; defaults to `MERIDIAN_API_KEY`.
    pub api_key: Option<Secret>,
    /// Most `SYNC` messages applied per transaction. Default: `1024`.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// How long the public stream `MERIDIAN_EVENTS` keeps events.
    /// Default: `30d`.
    #[serde(default = "default_events_retention")]
    pub events_retention: HumanDuration,
}

fn default_http_addr() -> String {
    "127.0.0.1:8082".into()
}
fn default_data_dir() -> PathBuf {
    ".meridian/inventory".into()
}
fn default_batch() -> usize {
    1024
}
fn default_events_retention() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(30 * 86_400))
}

impl Config {
    /// Defaults with the given NATS URL and data directory (for the launcher
    /// and tests).
    pub fn new(nats_url: &str, data_dir: PathBuf, api_key: &str) -> Self {
        Self {
            nats_url: nats_url.to_owned(),
            http_addr: "127.0.0.1:0".into(),
            data_dir,
            api_key: Some(Secret::new(api_key)),
            batch: default_batch(),
            events_retention: default_events_retention(),
        }
    }
}

/// A failure to start or run.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] meridian_kit::config::ConfigError),
    /// NATS.
    #[error(transparent)]
    Bus(#[from] bus::BusError),
    /// The local store.
    #[error("repository at {path}: {source}")]
    Storage {
        /// The directory.
        path: String,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// The projection stopped.
    #[error(transparent)]
    Projection(#[from] projection::ProjectionError),
    /// The newest lifecycle event could not be read.
    #[error("reading the lifecycle stream's newest event: {0}")]
    Lifecycle(#[from] crate::adapters::RelayError),
    /// HTTP.
    #[error("HTTP server: {0}")]
    Http(#[from] std::io::Error),
}

meridian_kit::config_failure!(AppError);

const TREE: &str = "repository";

/// `meridian_repository_apis{status}`, counted when scraped.
fn count_at_scrape(metrics: &Metrics, queries: store::Queries) {
    let apis = metrics.gauges(
        "meridian_repository_apis",
        "APIs in the repository, by status",
    );
    let gauge = |status: &str| apis.get_or_create_owned(&vec![("status", status.to_owned())]);
    let (active, deleted) = (gauge("active"), gauge("deleted"));
    metrics.on_scrape(Arc::new(move || {
        let (queries, active, deleted) = (queries.clone(), active.clone(), deleted.clone());
        Box::pin(async move {
            let counted = tokio::task::spawn_blocking(move || queries.counts()).await;
            if let Ok(Ok((a, d))) = counted {
                active.set(i64::try_from(a).unwrap_or(i64::MAX));
                deleted.set(i64::try_from(d).unwrap_or(i64::MAX));
            }
        })
    }))
}

/// Opens the repository. Another process (or a previous instance still
/// shutting down) may hold the directory lock for a moment: wait up to
/// ten seconds for it before giving up.
async fn open_tree(data_dir: &std::path::Path) -> Result<(Db, Tree), AppError> {
    let storage = |source| AppError::Storage {
        path: data_dir.display().to_string(),
        source,
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let db = loop {
        match Db::open(data_dir) {
            Ok(db) => break db,
            Err(StoreError::Locked) => {
                if tokio::time::Instant::now() > deadline {
                    return Err(storage(StoreError::Io(std::io::Error::other(
                        "the directory stayed locked for 10 s; is another inventory (or a rebuild) using it?",
                    ))));
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => return Err(storage(e)),
        }
    };
    let tree = db.open_tree(TREE).map_err(storage)?;
    if let Some(found) = projection::ensure_format(&tree, store::FORMAT).map_err(storage)? {
        tracing::warn!(
            found,
            current = store::FORMAT,
            "the repository was written in another layout; replaying the SYNC log to rebuild it"
        );
    }
    Ok((db, tree))
}

fn spec(config: &Config, consumer: ConsumerKind) -> ProjectionSpec {
    ProjectionSpec {
        id: store::PROJECTION_ID.into(),
        stream: streams::SYNC,
        consumer,
        batch: config.batch.max(1),
        // About 2,000 APIs of 2 KB: 32 chunks, or 1,024 version 1 messages.
        batch_bytes: 4 << 20,
        filter_subject: None,
    }
}

/// A built inventory, ready to run.
pub struct App {
    client: async_nats::Client,
    publisher: Publisher,
    _db: Db,
    metrics: Metrics,
    tree: Tree,
    runner: Runner<projection::Stored<store::Repository>>,
    progress: Progress,
    api_key: ApiKey,
}

impl App {
    /// Connects, creates streams, opens the repository. Its series go to
    /// `metrics` (one per service instance; the hub shares one).
    pub async fn build(config: Config, metrics: &Metrics) -> Result<Self, AppError> {
        let api_key =
            ApiKey::new(admin_key(config.api_key.clone(), "MERIDIAN_INVENTORY__API_KEY")?.expose());
        let client = bus::connect(
            &config.nats_url,
            "meridian-inventory",
            std::time::Duration::from_secs(30),
            metrics,
        )
        .await?;
        let js = async_nats::jetstream::new(client.clone());
        bus::ensure_streams(
            &js,
            &[
                streams::SYNC,
                streams::API_LIFECYCLE,
                streams::AGENT_HEARTBEATS,
            ],
        )
        .await?;
        if config.events_retention.0 < std::time::Duration::from_secs(60) {
            return Err(meridian_kit::config::ConfigError {
                message: format!("{ENV_PREFIX}EVENTS_RETENTION must be at least 1m"),
            }
            .into());
        }
        js.create_or_update_stream(public::stream_config(config.events_retention.0))
            .await
            .map_err(|e| bus::BusError::Stream {
                stream: meridian_schemas::streams::EVENTS.into(),
                message: e.to_string(),
            })?;
        let published = published(&js).await?;
        let (db, tree) = open_tree(&config.data_dir).await?;
        count_at_scrape(metrics, store::Queries::new(tree.clone()));
        let (runner, progress) = Runner::new(
            js.clone(),
            tree.clone(),
            Arc::new(store::Repository::after(published)),
            spec(&config, ConsumerKind::Durable),
            metrics,
        );
        Ok(Self {
            client,
            publisher: Publisher::new(js, metrics),
            _db: db,
            metrics: metrics.clone(),
            tree,
            runner,
            progress,
            api_key,
        })
    }

    /// Runs the projection, the lifecycle publisher, the public relay and the
    /// agent status watcher until `stop`.
    pub async fn run_until_stopped(self, stop: CancellationToken) -> Result<(), AppError> {
        let outbox = tokio::spawn(outbox::run_until_stopped(
            self.tree.clone(),
            self.publisher.clone(),
            self.progress.clone(),
            stop.clone(),
        ));
        let js = self.publisher.context().clone();
        let relay = tokio::spawn(public::relay_until_stopped(js.clone(), stop.clone()));
        let status = tokio::spawn(public::watch_status_until_stopped(js, stop.clone()));
        let result = self.runner.run_until_stopped(stop.clone()).await;
        stop.cancel();
        let _ = tokio::join!(outbox, relay, status);
        let tree = self.tree.clone();
        tokio::task::spawn_blocking(move || tree.flush())
            .await
            .unwrap_or_else(|e| Err(StoreError::Io(std::io::Error::other(e))))
            .map_err(|source| AppError::Storage {
                path: TREE.into(),
                source,
            })?;
        result.map_err(AppError::from)
    }

    /// Standalone: serves the API, `/healthz`, `/readyz`, `/api/openapi.json`
    /// and `/api/docs` on `listener`, and runs until `stop`.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        stop: CancellationToken,
    ) -> Result<(), AppError> {
        http::serve_service(self, listener, stop, |app, stop| {
            app.run_until_stopped(stop)
        })
        .await
    }
}

impl http::Surface for App {
    const TITLE: &'static str = "Meridian inventory";

    /// The REST routes (admin key required) with their OpenAPI description.
    fn api(&self) -> OpenApiRouter {
        let state = api::ApiState {
            queries: store::Queries::new(self.tree.clone()),
            js: self.publisher.context().clone(),
            progress: self.progress.clone(),
        };
        http::with_api_key(api::router(state), self.api_key.clone())
    }

    /// Ready when NATS is connected and the repository caught up.
    fn ready_checks(&self) -> Vec<ReadyCheck> {
        vec![
            http::nats_ready(self.client.clone()),
            http::projection_ready("repository", self.progress.clone()),
        ]
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// The newest lifecycle event in the stream (see [`store::Repository`]).
async fn published(
    js: &async_nats::jetstream::Context,
) -> Result<Option<store::OutboxMark>, AppError> {
    Ok(outbox::high_water(js).await?)
}

/// What `rebuild` did.
#[derive(Debug, Clone)]
pub struct RebuildReport {
    /// Last `SYNC` sequence applied.
    pub position: u64,
    /// Digest of the rebuilt repository.
    pub digest: String,
    /// Seconds it took, all told.
    pub seconds: f64,
    /// Of which replaying the log into the store (the rest: connecting,
    /// clearing, and the digest, which reads the whole repository).
    pub replay_seconds: f64,
}

impl std::fmt::Display for RebuildReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rebuilt repository to SYNC sequence {} in {:.2}s (replay {:.2}s)\ndigest {}",
            self.position, self.seconds, self.replay_seconds, self.digest
        )
    }
}

/// Wipes the repository in `config.data_dir` and replays `SYNC` from the
/// start. The service must be stopped (the store locks the directory). Lifecycle
/// events are not re-emitted: those already in the stream are not written to
/// the outbox again.
pub async fn rebuild(config: Config) -> Result<RebuildReport, AppError> {
    let started = std::time::Instant::now();
    let metrics = Metrics::new();
    let client = bus::connect(
        &config.nats_url,
        "meridian-inventory-rebuild",
        std::time::Duration::from_secs(10),
        &metrics,
    )
    .await?;
    let js = async_nats::jetstream::new(client);
    bus::ensure_streams(&js, &[streams::SYNC, streams::API_LIFECYCLE]).await?;
    let published = published(&js).await?;
    let (_db, tree) = open_tree(&config.data_dir).await?;
    let storage = |source| AppError::Storage {
        path: config.data_dir.display().to_string(),
        source,
    };
    tree.clear().map_err(storage)?;
    projection::ensure_format(&tree, store::FORMAT).map_err(storage)?;
    let (runner, _) = Runner::new(
        js,
        tree.clone(),
        Arc::new(store::Repository::after(published)),
        spec(&config, ConsumerKind::Ordered),
        &metrics,
    );
    let replay = std::time::Instant::now();
    let position = runner.run_until_caught_up().await?;
    let replay_seconds = replay.elapsed().as_secs_f64();
    let digest = projection::digest(&tree).map_err(storage)?;
    Ok(RebuildReport {
        position,
        digest,
        seconds: started.elapsed().as_secs_f64(),
        replay_seconds,
    })
}
