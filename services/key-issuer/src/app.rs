//! Wiring: configuration, NATS, the fold of `KEYS`, the writer, the public
//! relay, the token-record responder and HTTP.

use std::sync::Arc;

use meridian_kit::writer::Lock;
use std::time::Duration;

use meridian_kit::CancellationToken;
use meridian_kit::bus::{self, Publisher};
use meridian_kit::config::{ConfigError, Secret};
use meridian_kit::http::DigestView;
use meridian_kit::http::{self, ApiKey, ReadyCheck};
use meridian_kit::metrics::Metrics;
use meridian_kit::projection::{InMemory, Progress, ProjectionError, ProjectionSpec, Runner};
use meridian_kit::tyk;
use meridian_schemas::streams;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::adapters::apis::{GatewayApis, SharedApis};
use crate::adapters::fold::Shared;
use crate::adapters::writer::Writer;
use crate::adapters::{relay, tokens};
use crate::api;
use crate::domain::KeysState;

/// Environment prefix of the configuration.
pub const ENV_PREFIX: &str = "MERIDIAN_KEY_ISSUER__";

/// Shortest Gateway API secret accepted, in bytes.
pub use meridian_kit::tyk::MIN_SECRET_BYTES;

/// Configuration (`MERIDIAN_KEY_ISSUER__<FIELD>`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// NATS server URL. Default: `nats://127.0.0.1:4222`.
    #[serde(default = "meridian_kit::config::default_nats_url")]
    pub nats_url: String,
    /// Address of the standalone REST server. Default: `127.0.0.1:8084`.
    #[serde(default = "default_http_addr")]
    pub http_addr: String,
    /// The Gateway API secret (`x-tyk-authorization`); required, at least
    /// 16 bytes.
    pub secret: Option<Secret>,
    /// Answers carry `key_hash`, and `GET /tyk/keys` lists only when
    /// `ENABLE_HASHED_KEYS_LISTING` is on. Keys are stored hashed either way.
    /// Default: `true`.
    #[serde(default = "yes")]
    pub hash_keys: bool,
    /// `GET /tyk/keys` lists key hashes. Default: `false`.
    #[serde(default)]
    pub enable_hashed_keys_listing: bool,
    /// Shortest custom key accepted (`POST /tyk/keys/{keyID}`).
    /// Default: `3` (Tyk's).
    #[serde(default = "default_min_key_length")]
    pub min_key_length: usize,
}

fn default_http_addr() -> String {
    "127.0.0.1:8084".into()
}
fn yes() -> bool {
    true
}
/// Tyk's default `min_token_length`.
fn default_min_key_length() -> usize {
    3
}

impl Config {
    /// Defaults with the given NATS URL and secret (launcher and tests).
    pub fn new(nats_url: &str, secret: &str) -> Self {
        Self {
            nats_url: nats_url.to_owned(),
            http_addr: "127.0.0.1:0".into(),
            secret: Some(Secret::new(secret)),
            hash_keys: true,
            enable_hashed_keys_listing: false,
            min_key_length: default_min_key_length(),
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
    /// The fold stopped.
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    /// The token-record responder could not subscribe.
    #[error("cannot answer token records: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    /// HTTP server.
    #[error("HTTP server: {0}")]
    Http(#[from] std::io::Error),
}

meridian_kit::config_failure!(AppError);

/// A built key-issuer, ready to run.
pub struct App {
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    runner: Runner<InMemory<KeysState>>,
    progress: Progress,
    apis_runner: Runner<InMemory<GatewayApis>>,
    apis: SharedApis,
    apis_progress: Progress,
    writer: Writer,
    counters: async_nats::jetstream::kv::Store,
    secret: ApiKey,
    config: Config,
    metrics: Metrics,
}

impl App {
    /// Checks configuration, connects, creates the streams. Series go to
    /// `metrics` (one per service instance; the hub shares one).
    pub async fn build(config: Config, metrics: &Metrics) -> Result<Self, AppError> {
        let secret = tyk::secret_from_config(config.secret.as_ref(), ENV_PREFIX)?;
        let client = bus::connect(
            &config.nats_url,
            "meridian-key-issuer",
            Duration::from_secs(30),
            metrics,
        )
        .await?;
        let js = async_nats::jetstream::new(client.clone());
        bus::ensure_streams(&js, &[streams::KEYS, streams::APIS]).await?;
        bus::ensure_public_stream(&js).await?;
        let counters = bus::ensure_bucket(
            &js,
            streams::LIMITS_BUCKET,
            "Rate-limit and quota counters the gateway replicas share",
        )
        .await?;
        let state: Shared = Arc::new(Lock::new(KeysState::default()));
        let (runner, progress) = Runner::in_memory(
            js.clone(),
            state.clone(),
            ProjectionSpec::ordered("key-issuer-keys", streams::KEYS),
            metrics,
        );
        let gateway_apis = Arc::new(Lock::new(GatewayApis::default()));
        let (apis_runner, apis_progress) = Runner::in_memory(
            js.clone(),
            gateway_apis.clone(),
            ProjectionSpec::ordered("key-issuer-apis", streams::APIS),
            metrics,
        );
        let apis = SharedApis::new(gateway_apis, apis_progress.clone());
        let writer = Writer::new(Publisher::new(js.clone(), metrics), state, progress.clone());
        Ok(Self {
            client,
            js,
            runner,
            progress,
            apis_runner,
            apis,
            apis_progress,
            writer,
            counters,
            secret,
            config,
            metrics: metrics.clone(),
        })
    }

    /// The fold: keys, policies, organisations, clients and tokens, with
    /// each key's effective session (what the proxy reads).
    pub fn state(&self) -> Shared {
        self.writer.state().clone()
    }

    /// Its progress through `KEYS`.
    pub fn progress(&self) -> Progress {
        self.progress.clone()
    }

    /// Folds `KEYS`, relays public events and records tokens until `stop`.
    pub async fn run_until_stopped(self, stop: CancellationToken) -> Result<(), AppError> {
        let relay = tokio::spawn(meridian_kit::relay::relay_until_stopped(
            self.js.clone(),
            relay::SPEC,
            relay::map,
            stop.clone(),
        ));
        let responder = tokio::spawn(tokens::serve_until_stopped(
            self.client.clone(),
            self.writer.clone(),
            stop.clone(),
        ));
        let (folded, apis_folded) = tokio::join!(
            self.runner.run_until_stopped(stop.clone()),
            self.apis_runner.run_until_stopped(stop.clone()),
        );
        stop.cancel();
        apis_folded?;
        let _ = relay.await;
        let answered = responder.await.unwrap_or(Ok(()));
        folded?;
        answered?;
        Ok(())
    }

    /// Standalone: REST (with health, metrics and OpenAPI) on `http`.
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
    const TITLE: &'static str = "Meridian key-issuer";

    /// The `/tyk/...` routes and `/api/keys/digest`, behind the Gateway API
    /// secret, with their OpenAPI description.
    fn api(&self) -> OpenApiRouter {
        let state = api::ApiState {
            writer: self.writer.clone(),
            hash_keys: self.config.hash_keys,
            hashed_listing: self.config.enable_hashed_keys_listing,
            min_key_length: self.config.min_key_length,
            apis: self.apis.clone(),
            counters: self.counters.clone(),
        };
        let digest = OpenApiRouter::new()
            .routes(routes!(digest))
            .with_state(self.writer.clone());
        tyk::with_secret(api::router(state).merge(digest), self.secret.clone())
    }

    /// Ready when NATS is connected and the fold caught up.
    fn ready_checks(&self) -> Vec<ReadyCheck> {
        vec![
            http::nats_ready(self.client.clone()),
            http::projection_ready("keys", self.progress.clone()),
            http::projection_ready("gateway apis", self.apis_progress.clone()),
        ]
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// The digest of this replica's view, after catching up with the log.
#[utoipa::path(get, path = "/api/keys/digest", tag = "keys", security(("tyk_secret" = [])),
    responses((status = 200, body = DigestView)))]
async fn digest(
    axum::extract::State(writer): axum::extract::State<Writer>,
) -> axum::Json<DigestView> {
    axum::Json(writer.digest_view().await)
}

/// Folds `KEYS` from its first message into a fresh view, as a restarted
/// replica does, and returns its digest and position: what `/api/keys/digest`
/// answers on a live replica that read as far.
pub async fn rebuild(nats_url: &str) -> Result<DigestView, AppError> {
    meridian_kit::projection::rebuild_in_memory::<KeysState, _>(
        nats_url,
        "key-issuer",
        streams::KEYS,
    )
    .await
}
